//! `proxy-bench --vs-nginx`: the `portcullis` binary beside nginx, each a separate process in
//! front of the same two upstreams, measured in the same run.
//!
//! ```text
//!                       ┌─▶ nginx (1 worker, keep-alive upstream pool) ─┐
//! load generator ──32──┤                                               ├─▶ /cl      in-process axum upstream, Content-Length
//! (this process)        └─▶ portcullis serve (cookie → session → token) ┘   /chunked Node `http`, Transfer-Encoding: chunked
//! ```
//!
//! - The gateway serves `GET /cl/hello` and `GET /chunked/hello` as `token = "user"` routes:
//!   session cookie + `X-CSRF: 1` in, `Authorization: Bearer …` out. Its sessions are
//!   created by this process in a SQLite file the gateway opens with the same key
//!   (`session.cache_ttl` = 10 s, the default).
//! - nginx (`daemon off`, `master_process off`, so the one process that does the work is the
//!   one measured; `worker_processes 1`; `proxy_http_version 1.1`, `Connection ""` and
//!   `keepalive 32` to the upstream) forwards the same requests without any check: the plain
//!   reverse-proxy baseline.
//! - The Node upstream answers with `res.writeHead(200)` + `res.end(body)`, i.e. chunked; it
//!   answers 401 to a wrong token. The in-process upstream counts requests with and without
//!   the session's token.
//! - With `--floor`, `hyper-floor` (`src/bin/hyper-floor.rs`) stands beside them twice (two
//!   work-stealing threads, one current thread): the gateway's HTTP stack with none of its
//!   checks, forwarding the session's token.
//!
//! Per round, for each framing, nginx, the floors, then the gateway: 32 connections (closed
//! loop; this process's load generator, or `wrk` with `--wrk`) for the warm-up + measured
//! window, then one connection for a short sequential window (the latency a single browser
//! sees, where a Nagle stall shows as ~40 ms). `cpu_us_per_req` is the CPU
//! time (user + system, from `/proc/<pid>/stat`) of the proxy process only, per request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use portcullis::session::{Key, KeyRing};
use portcullis::Gateway;
use portcullis_token::SystemClock;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use url::Url;

use crate::load::{self, Measured, RequestTemplate};
use crate::servers::{self, Idp, Upstream, UPSTREAM_BODY};
use crate::{access_token_value, check_upstream, create_sessions, spread, template, Args};

/// Requests of the sequential (one connection) window; bounded by time as well.
const SEQUENTIAL_WINDOW: Duration = Duration::from_secs(1);
const SEQUENTIAL_WARMUP: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Framing {
    Length,
    Chunked,
}

impl Framing {
    fn name(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Chunked => "chunked",
        }
    }
    fn path(self) -> &'static str {
        match self {
            Self::Length => "/cl/hello",
            Self::Chunked => "/chunked/hello",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Proxy {
    Nginx,
    /// `hyper-floor`, work-stealing runtime with two threads (the shape of `workers = 0`).
    Floor,
    /// `hyper-floor --threads 0`: one current-thread runtime (the shape of `workers = 1`).
    FloorOne,
    Gateway,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::Floor => "floor",
            Self::FloorOne => "floor-1",
            Self::Gateway => "gateway",
        }
    }
    /// Whether it sends the session's token upstream.
    fn sends_token(self) -> bool {
        self != Self::Nginx
    }
}

/// A child process killed when dropped.
pub(crate) struct Spawned {
    child: Child,
    pub(crate) pid: u32,
}

impl Spawned {
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

/// `cmd`, under `taskset -c cpus` when pinning.
fn command(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Spawns `cmd` and waits (at most 60 s) for a `READY {json}` line on its stdout; the rest of
/// its output goes to `log`.
pub(crate) async fn spawn_ready(
    name: &str,
    mut cmd: Command,
    log: &Path,
) -> Result<(Spawned, serde_json::Value), String> {
    let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.stdout(Stdio::piped())
        .stderr(log_file)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let pid = child.id().ok_or_else(|| format!("{name} exited at once"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| format!("{name}: no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("READY ") {
                return Ok(serde_json::from_str(rest).unwrap_or(serde_json::Value::Null));
            }
        }
        Err(format!(
            "{name} exited before it was ready (log: {})",
            log.display()
        ))
    })
    .await
    .map_err(|_| format!("{name} was not ready within 60 s (log: {})", log.display()))??;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((Spawned { child, pid }, ready))
}

/// Waits until something accepts connections on `addr` (at most 10 s).
async fn wait_listening(addr: SocketAddr, name: &str, child: &mut Child) -> Result<(), String> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{name} exited: {status}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{name} did not listen on {addr} within 10 s"))
}

pub(crate) fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// CPU sets: (proxy, everything else) when pinning on a machine with at least two CPUs.
fn cpu_sets(pin: bool) -> Result<(Option<String>, Option<String>), String> {
    if !pin {
        return Ok((None, None));
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n < 2 {
        return Err("--pin needs at least two CPUs".into());
    }
    let last = n - 1;
    let others = if last == 1 {
        "0".to_owned()
    } else {
        format!("0-{}", last - 1)
    };
    Ok((Some(last.to_string()), Some(others)))
}

fn nginx_config(dir: &Path, port: u16, cl: SocketAddr, chunked: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"# Generated by proxy-bench --vs-nginx: a plain keep-alive reverse proxy.
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-client-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream cl {{ server {cl}; keepalive 32; keepalive_requests 10000000; }}
    upstream chunked {{ server {chunked}; keepalive 32; keepalive_requests 10000000; }}
    server {{
        listen 127.0.0.1:{port};
        location /cl/ {{
            proxy_pass http://cl/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location /chunked/ {{
            proxy_pass http://chunked/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

#[allow(clippy::too_many_arguments)]
fn gateway_config(
    dir: &Path,
    port: u16,
    issuer: &str,
    key_spec: &str,
    partition: &str,
    cl: SocketAddr,
    chunked: SocketAddr,
    workers: Option<usize>,
) -> String {
    let d = dir.display();
    let workers = workers.map_or(String::new(), |n| format!("workers = {n}\n"));
    format!(
        r#"# Generated by proxy-bench --vs-nginx.
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
data_dir = "{d}/data"
{workers}
[oidc]
issuer = "{issuer}"
client_id = "bench"
client_secret = "bench-secret"
scopes = ["openid", "offline_access", "api"]

[session]
store = "sqlite://{d}/sessions.db"
keys = ["{key_spec}"]
partition = "{partition}"
cache_ttl = "10s"

[[routes]]
path = "/cl"
upstream = "http://{cl}/"
token = "user"

[[routes]]
path = "/chunked"
upstream = "http://{chunked}/"
token = "user"
"#
    )
}

/// One measured scenario of one round.
struct Row {
    round: usize,
    framing: Framing,
    proxy: Proxy,
    /// 32 connections (or `--concurrency`), closed loop.
    load: Measured,
    /// One connection, one request at a time.
    sequential: Measured,
}

struct Setup {
    upstream: Arc<Upstream>,
    gateway_addr: SocketAddr,
    gateway_pid: u32,
    nginx_addr: SocketAddr,
    nginx_pid: u32,
    /// `hyper-floor` with two threads and with one (address, pid), with `--floor`.
    floors: Option<[(SocketAddr, u32); 2]>,
    cookies: Vec<HeaderValue>,
    /// CPUs for everything but the proxy, with `--pin`.
    other_cpus: Option<String>,
    /// With `--wrk`: its Lua script, each request with the next session's cookie.
    wrk_script: Option<std::path::PathBuf>,
}

/// Runs the comparison; returns `Ok(false)` when a check failed after measuring.
pub async fn run(args: &Args, lines: &mut Vec<String>) -> Result<bool, String> {
    let (proxy_cpus, other_cpus) = cpu_sets(args.pin)?;
    if let Some(c) = &other_cpus {
        // This process: load generator and the in-process upstream.
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", c, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("taskset: {e}"))?;
        if !status.success() {
            return Err("taskset could not pin this process".into());
        }
    }
    let dir = std::env::temp_dir().join(format!(
        "proxy-bench-vs-nginx-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run_in(args, lines, &dir, proxy_cpus, other_cpus).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("proxy-bench: logs kept in {}", dir.display());
    }
    result
}

async fn run_in(
    args: &Args,
    lines: &mut Vec<String>,
    dir: &Path,
    proxy_cpus: Option<String>,
    other_cpus: Option<String>,
) -> Result<bool, String> {
    let token = access_token_value();
    let bearer = format!("Bearer {token}");
    let upstream = Arc::new(Upstream {
        expected_authorization: HeaderValue::from_str(&bearer).map_err(|e| e.to_string())?,
        with_token: 0.into(),
        without_token: 0.into(),
    });
    let (cl_addr, _cl) = servers::serve(servers::upstream_router(upstream.clone()))
        .await
        .map_err(|e| format!("upstream: {e}"))?;

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let node_script = repo.join("testing/upstream/framing.mjs");
    let mut node = command(Path::new(&args.node_bin), other_cpus.as_deref());
    node.arg(&node_script)
        .args([
            "--port",
            "0",
            "--framing",
            "chunked",
            "--body",
            UPSTREAM_BODY,
        ])
        .arg("--expect-authorization")
        .arg(&bearer);
    let (node, ready) = spawn_ready("node upstream", node, &dir.join("node.log")).await?;
    let node_port = ready["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or("node upstream: no port in READY")?;
    let chunked_addr = SocketAddr::from(([127, 0, 0, 1], node_port));

    let idp_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("idp: {e}"))?;
    let idp_addr = idp_listener.local_addr().map_err(|e| e.to_string())?;
    let idp = Arc::new(Idp {
        issuer: format!("http://{idp_addr}"),
        ..Idp::default()
    });
    let _idp = servers::serve_on(idp_listener, servers::idp_router(idp.clone()));

    // Sessions in a SQLite file, created here with the key the gateway process will use.
    let gateway_port = free_port()?;
    let public_url =
        Url::parse(&format!("http://127.0.0.1:{gateway_port}")).map_err(|e| e.to_string())?;
    let key_spec = Key::generate_spec("bench");
    let partition = format!("bench-vs-nginx-{}", std::process::id());
    let store_url = format!("sqlite://{}", dir.join("sessions.db").display());
    let (cookies, ticket_bytes) = {
        let store = portcullis_session::connect(&store_url)
            .await
            .map_err(|e| format!("session store: {e}"))?;
        let settings = crate::gateway_settings(
            public_url,
            idp.issuer.clone(),
            Url::parse(&format!("http://{cl_addr}/")).map_err(|e| e.to_string())?,
            Duration::from_secs(10),
            partition.clone(),
        )?;
        let keys = KeyRing::new(vec![Key::parse(&key_spec)?])?;
        let gw = Gateway::new(settings, store, keys, Arc::new(SystemClock))?;
        let (cookies, _keys, bytes) =
            create_sessions(&gw, &gw.sessions(), &idp.issuer, &token, args.concurrency).await?;
        (cookies, bytes)
    };

    let config_path = dir.join("portcullis.toml");
    std::fs::write(
        &config_path,
        gateway_config(
            dir,
            gateway_port,
            &idp.issuer,
            &key_spec,
            &partition,
            cl_addr,
            chunked_addr,
            args.gateway_workers,
        ),
    )
    .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let bin = match &args.portcullis_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("portcullis"),
    };
    let mut gw_cmd = command(&bin, proxy_cpus.as_deref());
    gw_cmd
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "info");
    let (gateway, _) = spawn_ready(
        &format!("gateway ({})", bin.display()),
        gw_cmd,
        &dir.join("gateway.log"),
    )
    .await?;

    let nginx_port = free_port()?;
    let nginx_conf = dir.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        nginx_config(dir, nginx_port, cl_addr, chunked_addr),
    )
    .map_err(|e| format!("{}: {e}", nginx_conf.display()))?;
    let mut nginx_cmd = command(&args.nginx_bin, proxy_cpus.as_deref());
    nginx_cmd
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&nginx_conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut nginx_child = nginx_cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args.nginx_bin.display()))?;
    let nginx_pid = nginx_child.id().ok_or("nginx exited at once")?;
    let nginx_addr = SocketAddr::from(([127, 0, 0, 1], nginx_port));
    wait_listening(nginx_addr, "nginx", &mut nginx_child).await?;
    let nginx = Spawned {
        child: nginx_child,
        pid: nginx_pid,
    };

    let mut floor_procs = Vec::new();
    let mut floors = Vec::new();
    if args.floor {
        let floor_bin = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("hyper-floor");
        for threads in ["2", "0"] {
            let mut cmd = command(&floor_bin, proxy_cpus.as_deref());
            cmd.args(["--listen", "127.0.0.1:0", "--threads", threads])
                .arg("--route")
                .arg(format!("/cl={cl_addr}"))
                .arg("--route")
                .arg(format!("/chunked={chunked_addr}"))
                .arg("--authorization")
                .arg(&bearer);
            let (proc, ready) = spawn_ready(
                &format!("hyper-floor --threads {threads} ({})", floor_bin.display()),
                cmd,
                &dir.join(format!("floor-{threads}.log")),
            )
            .await?;
            let port = ready["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or("hyper-floor: no port in READY")?;
            floors.push((SocketAddr::from(([127, 0, 0, 1], port)), proc.pid));
            floor_procs.push(proc);
        }
    }

    lines.push(format!(
        "# proxy-bench --vs-nginx load={} concurrency={} duration={} warmup={} rounds={} cores={} pin={} upstream_body_bytes={} sealed_ticket_bytes={ticket_bytes}",
        args.wrk.as_ref().map_or_else(|| "in-process".to_owned(), |w| format!("wrk ({})", w.display())),
        args.concurrency,
        humantime::format_duration(args.duration),
        humantime::format_duration(args.warmup),
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        proxy_cpus.as_deref().map_or_else(|| "off".to_owned(), |c| format!("proxy on cpu {c}, rest on {}", other_cpus.as_deref().unwrap_or("?"))),
        UPSTREAM_BODY.len(),
    ));
    lines.push(format!(
        "# nginx: {} (pid {nginx_pid}); gateway: {} (pid {}); node: {}",
        nginx_version(&args.nginx_bin),
        bin.display(),
        gateway.pid,
        node_version(&args.node_bin),
    ));

    let setup = Setup {
        upstream,
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], gateway_port)),
        gateway_pid: gateway.pid,
        nginx_addr,
        nginx_pid: nginx.pid,
        floors: floors.try_into().ok(),
        cookies,
        other_cpus: other_cpus.clone(),
        wrk_script: args.wrk.as_ref().map(|_| dir.join("sessions.lua")),
    };
    if let Some(script) = &setup.wrk_script {
        let source = load::wrk_cookie_script(&setup.cookies)
            .ok_or("no session cookie that a wrk script can carry")?;
        std::fs::write(script, source).map_err(|e| format!("{}: {e}", script.display()))?;
    }
    let proxies: &[Proxy] = if setup.floors.is_some() {
        &[Proxy::Nginx, Proxy::Floor, Proxy::FloorOne, Proxy::Gateway]
    } else {
        &[Proxy::Nginx, Proxy::Gateway]
    };
    let mut rows = Vec::new();
    let mut outcome = Ok(());
    'rounds: for round in 1..=args.rounds {
        for framing in [Framing::Length, Framing::Chunked] {
            for &proxy in proxies {
                match scenario(args, &setup, round, framing, proxy).await {
                    Ok(row) => {
                        lines.push(row_line(&row));
                        rows.push(row);
                    }
                    Err(e) => {
                        outcome = Err(e);
                        break 'rounds;
                    }
                }
            }
        }
    }
    let direct = if outcome.is_ok() {
        direct_latency(&setup, cl_addr, chunked_addr).await
    } else {
        Ok(BTreeMap::new())
    };
    gateway.stop().await;
    nginx.stop().await;
    for f in floor_procs {
        f.stop().await;
    }
    node.stop().await;
    outcome?;
    let direct = direct?;
    summarize(lines, &rows, &direct, args.rounds);
    let token_calls = idp.token_calls.load(std::sync::atomic::Ordering::SeqCst);
    lines.push(format!("idp token_endpoint_calls={token_calls}"));
    if token_calls != 0 {
        lines.push("FAILED: the token endpoint was called during the run".into());
        return Ok(false);
    }
    Ok(true)
}

fn nginx_version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_else(|| "nginx (version unknown)".into())
}

fn node_version(bin: &str) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn templates(
    addr: SocketAddr,
    path: &str,
    cookies: &[HeaderValue],
    n: usize,
) -> Result<Vec<RequestTemplate>, String> {
    (0..n)
        .map(|i| template(addr, path, Some(&cookies[i % cookies.len()])))
        .collect()
}

async fn scenario(
    args: &Args,
    s: &Setup,
    round: usize,
    framing: Framing,
    proxy: Proxy,
) -> Result<Row, String> {
    let (addr, pid) = match proxy {
        Proxy::Nginx => (s.nginx_addr, s.nginx_pid),
        Proxy::Floor => s.floors.ok_or("no hyper-floor")?[0],
        Proxy::FloorOne => s.floors.ok_or("no hyper-floor")?[1],
        Proxy::Gateway => (s.gateway_addr, s.gateway_pid),
    };
    eprintln!(
        "proxy-bench: round {round}: framing={} proxy={}",
        framing.name(),
        proxy.name()
    );
    let path = framing.path();
    let load = match &args.wrk {
        None => {
            load::run_measuring(
                addr,
                templates(addr, path, &s.cookies, args.concurrency)?,
                UPSTREAM_BODY,
                args.warmup,
                args.duration,
                Some(pid),
            )
            .await
        }
        Some(wrk) => {
            // wrk does not read bodies: the Content-Length upstream's own count proves every
            // request counted reached it (checked below).
            let _ = s.upstream.take_counts();
            load::run_wrk(
                wrk,
                addr,
                path,
                &[
                    ("Accept", "application/json".into()),
                    ("X-CSRF", "1".into()),
                ],
                s.wrk_script.as_deref(),
                args.concurrency,
                args.warmup,
                args.duration,
                Some(pid),
                s.other_cpus.as_deref(),
            )
            .await
        }
    }
    .map_err(|e| format!("{} {}: {e}", proxy.name(), framing.name()))?;
    if args.wrk.is_some() && framing == Framing::Length {
        let (with, without) = s.upstream.take_counts();
        let seen = if proxy.sends_token() { with } else { without };
        if seen < load.requests {
            return Err(format!(
                "{} {}: wrk counted {} answers but the upstream saw {seen} such requests ({with} with the session token, {without} without)",
                proxy.name(),
                framing.name(),
                load.requests
            ));
        }
    }
    let sequential = load::run_measuring(
        addr,
        templates(addr, path, &s.cookies, 1)?,
        UPSTREAM_BODY,
        SEQUENTIAL_WARMUP,
        SEQUENTIAL_WINDOW,
        Some(pid),
    )
    .await
    .map_err(|e| format!("{} {} sequential: {e}", proxy.name(), framing.name()))?;
    if framing == Framing::Length {
        check_upstream(
            &s.upstream,
            proxy.sends_token(),
            &format!("{} {}", proxy.name(), framing.name()),
        )?;
    }
    Ok(Row {
        round,
        framing,
        proxy,
        load,
        sequential,
    })
}

/// Sequential latency straight to each upstream (no proxy), for reference.
async fn direct_latency(
    s: &Setup,
    cl: SocketAddr,
    chunked: SocketAddr,
) -> Result<BTreeMap<Framing, Measured>, String> {
    let mut out = BTreeMap::new();
    for (framing, addr) in [(Framing::Length, cl), (Framing::Chunked, chunked)] {
        eprintln!(
            "proxy-bench: framing={} direct (no proxy), one connection",
            framing.name()
        );
        let m = load::run(
            addr,
            templates(addr, "/hello", &s.cookies, 1)?,
            UPSTREAM_BODY,
            SEQUENTIAL_WARMUP,
            SEQUENTIAL_WINDOW,
        )
        .await?;
        out.insert(framing, m);
    }
    // The direct requests carried no token.
    let _ = s.upstream.take_counts();
    Ok(out)
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.1}"))
}

fn row_line(r: &Row) -> String {
    format!(
        "round={} framing={:<7} proxy={:<7} rps={:.0} p50_us={} p99_us={} requests={} cpu_us_per_req={} steal_pct={} seq_p50_us={} seq_p99_us={} seq_requests={}",
        r.round,
        r.framing.name(),
        r.proxy.name(),
        r.load.rps,
        r.load.p50_us,
        r.load.p99_us,
        r.load.requests,
        opt(r.load.cpu_us_per_req),
        opt(r.load.steal_pct),
        r.sequential.p50_us,
        r.sequential.p99_us,
        r.sequential.requests,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    spread(&mut v).0
}

/// Medians over the rounds, per framing and proxy, and the gateway's ratios to nginx
/// (per round, then the median).
fn summarize(
    lines: &mut Vec<String>,
    rows: &[Row],
    direct: &BTreeMap<Framing, Measured>,
    rounds: usize,
) {
    lines.push(String::new());
    lines.push(format!(
        "summary: medians over {rounds} round(s); cpu = proxy process only; ratios = proxy / nginx in the same round"
    ));
    lines.push(format!(
        "{:<8} {:<8} {:>8} {:>8} {:>8} {:>11} {:>12} {:>11} {:>11}",
        "framing",
        "proxy",
        "req/s",
        "p50_us",
        "p99_us",
        "cpu_us/req",
        "seq_p50_us",
        "rps_ratio",
        "cpu_ratio"
    ));
    for framing in [Framing::Length, Framing::Chunked] {
        for proxy in [Proxy::Nginx, Proxy::Floor, Proxy::FloorOne, Proxy::Gateway] {
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|r| r.framing == framing && r.proxy == proxy)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let m = |f: &dyn Fn(&Row) -> f64| median(mine.iter().map(|r| f(r)).collect());
            let cpu: Vec<f64> = mine.iter().filter_map(|r| r.load.cpu_us_per_req).collect();
            let cpu = (!cpu.is_empty()).then(|| median(cpu));
            let (rps_ratio, cpu_ratio) = if proxy != Proxy::Nginx {
                let mut rr = Vec::new();
                let mut cr = Vec::new();
                for r in &mine {
                    if let Some(n) = rows.iter().find(|n| {
                        n.round == r.round && n.framing == framing && n.proxy == Proxy::Nginx
                    }) {
                        rr.push(r.load.rps / n.load.rps);
                        if let (Some(a), Some(b)) = (r.load.cpu_us_per_req, n.load.cpu_us_per_req) {
                            cr.push(a / b);
                        }
                    }
                }
                (
                    (!rr.is_empty()).then(|| format!("{:.2}", median(rr))),
                    (!cr.is_empty()).then(|| format!("{:.2}", median(cr))),
                )
            } else {
                (Some("1.00".into()), Some("1.00".into()))
            };
            lines.push(format!(
                "{:<8} {:<8} {:>8.0} {:>8.0} {:>8.0} {:>11} {:>12.0} {:>11} {:>11}",
                framing.name(),
                proxy.name(),
                m(&|r| r.load.rps),
                m(&|r| r.load.p50_us as f64),
                m(&|r| r.load.p99_us as f64),
                opt(cpu),
                m(&|r| r.sequential.p50_us as f64),
                rps_ratio.unwrap_or_else(|| "n/a".into()),
                cpu_ratio.unwrap_or_else(|| "n/a".into()),
            ));
        }
        if let Some(d) = direct.get(&framing) {
            lines.push(format!(
                "{:<8} {:<8} {:>8} {:>8} {:>8} {:>11} {:>12} {:>11} {:>11}",
                framing.name(),
                "direct",
                "-",
                "-",
                "-",
                "-",
                d.p50_us,
                "-",
                "-"
            ));
        }
    }
}
