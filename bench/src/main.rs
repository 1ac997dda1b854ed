//! `proxy-bench`: requests per second for an authenticated proxied `GET` through one
//! Portcullis gateway, per session store, with and without the in-process session cache,
//! beside a plain reverse proxy measured in the same run.
//!
//! Everything runs in this process on 127.0.0.1: an upstream answering `GET /hello` with ~100
//! bytes of JSON, a fake IdP (discovery and an empty JWKS; its token endpoint must not be
//! called), the baseline proxy, one gateway per scenario and the load generator (`C` workers,
//! one keep-alive HTTP/1.1 connection each, closed loop). Each scenario runs for a warm-up and
//! a measured window; any non-`200` response, or a body other than the upstream's, aborts the
//! run.
//!
//! ```text
//! cargo run --release -p portcullis-bench --bin proxy-bench -- --help
//! ```
//!
//! Scenarios, in order: baseline (start), gateway route with `token = "none"` on the memory
//! store (forwarding cost without session or token), then for each store the `token = "user"`
//! route with the cache on (`cache_ttl` = 10 s) and off (`cache_ttl` = 0), and the baseline
//! again (end). Before the store scenarios, frontend selection: the `user` route on a gateway
//! with 1 frontend and on one with 100 (requests selected by host, then by path; memory
//! store, cache on), comparable with each other in the same round (`--skip-frontends`). A DPoP scenario (memory store, cache on, a DPoP-bound token:
//! one ES256 proof signed per call; compare with the memory/cache-on Bearer row) runs too. `ratio_to_baseline` divides by the mean of the round's two baseline runs.
//! `--reload-under-load` instead runs the `portcullis` binary under load while its
//! configuration is reloaded (`SIGHUP`, adding and removing a frontend) and counts failed
//! requests and dropped connections (see `reload_load`).
//! `--rounds N` repeats the whole sequence and adds per-scenario median/min/max lines, which
//! is what to read on a small, shared machine.

// Benchmark setup: failing fast is the intent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod load;
mod reload_load;
mod servers;
mod tracing_cost;
mod vs_nginx;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use http::{header, HeaderMap, HeaderValue, Uri};
use portcullis::cookie::{CookieSettings, SameSite};
use portcullis::csrf::AntiForgery;
use portcullis::session::{Claim, Key, KeyRing, Ticket};
use portcullis::settings::{
    ClientAuthSettings, GatewaySettings, OidcSettings, ResponseMode, RouteSettings,
    SessionSettings, TokenPolicy, TokenSettings,
};
use portcullis::Gateway;
use portcullis_token::{Secret, SystemClock, TokenResponse, TokenType, UserTokens};
use tokio::task::JoinHandle;
use url::Url;

use load::{Measured, RequestTemplate};
use servers::{Idp, Upstream, UPSTREAM_BODY};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Memory,
    Sqlite,
    Redis,
    Postgres,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Sqlite => "sqlite",
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }
}

/// Throughput of an authenticated proxied GET through the gateway, per session store,
/// beside a plain reverse proxy.
#[derive(Debug, Parser)]
#[command(name = "proxy-bench")]
struct Args {
    /// Measured time per scenario (at most 60s).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up per scenario, not measured (at most 10s).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Repeat the whole sequence (baseline, scenarios, baseline) this many times (1..=10);
    /// with more than one round a summary gives median, lowest and highest figures.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Concurrent workers, one keep-alive connection each (1..=1024).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Logged-in sessions the workers share round-robin; 0 = one per worker (every worker
    /// is a different browser).
    #[arg(long, default_value_t = 0)]
    sessions: usize,
    /// Stores to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "memory,sqlite,redis,postgres"
    )]
    stores: Vec<StoreKind>,
    /// Skip the gateway route without session or token.
    #[arg(long)]
    skip_open_route: bool,
    /// Skip the frontend-selection scenarios (1 frontend, and 100 frontends selected by
    /// host and by path; memory store, cache on).
    #[arg(long)]
    skip_frontends: bool,
    /// Skip the DPoP scenarios (memory store, cache on, an ES256 proof per call; one gateway
    /// key, and a key per session).
    #[arg(long)]
    skip_dpop: bool,
    #[arg(
        long,
        env = "PORTCULLIS_TEST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    #[arg(
        long,
        env = "PORTCULLIS_TEST_POSTGRES_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/test",
        hide_env_values = true
    )]
    postgres_url: String,
    /// Worker threads of the async runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Instead of the store scenarios: the user route (memory store, cache on) with
    /// OpenTelemetry tracing off, on with sampling ratio 0, and on with ratio 1.
    #[arg(long)]
    tracing: bool,
    /// Instead of the store scenarios: the `portcullis` binary beside nginx, each a separate
    /// process, in front of a Content-Length (in-process) and a chunked (Node) upstream.
    #[arg(long)]
    vs_nginx: bool,
    /// Instead of the store scenarios: the `portcullis` binary under a steady stream of
    /// authenticated GETs while its configuration is reloaded (`SIGHUP`) `--reloads` times,
    /// each reload adding or removing a frontend; prints req/s, failed requests and dropped
    /// connections, and fails if there are any.
    #[arg(long)]
    reload_under_load: bool,
    /// Reloads during `--reload-under-load`'s measured window (1..=100).
    #[arg(long, default_value_t = 10)]
    reloads: usize,
    /// The gateway binary for `--vs-nginx` and `--reload-under-load` (default: `portcullis`
    /// next to this binary).
    #[arg(long)]
    portcullis_bin: Option<PathBuf>,
    /// nginx for `--vs-nginx`.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx_bin: PathBuf,
    /// Node.js for the chunked upstream of `--vs-nginx`.
    #[arg(long, default_value = "node")]
    node_bin: String,
    /// `--vs-nginx`: run the proxy (gateway or nginx) alone on the last CPU and everything
    /// else (load generator, upstreams) on the others (`taskset`).
    #[arg(long)]
    pin: bool,
    /// `--vs-nginx`: the gateway's `server.workers` (connection worker threads; 0 = the
    /// work-stealing runtime serves connections). Default: the gateway's default.
    #[arg(long)]
    gateway_workers: Option<usize>,
    /// `--vs-nginx`: also measure `hyper-floor` (next to this binary), the smallest proxy on
    /// the gateway's HTTP stack (hyper server, `hyper_util`'s pooled client, no checks), on a
    /// two-thread work-stealing runtime (`floor`) and on one current-thread runtime
    /// (`floor-1`): what the stack costs before the gateway does anything.
    #[arg(long)]
    floor: bool,
    /// `--vs-nginx`: drive the many-connection load with this `wrk` (a separate process,
    /// `-t1`, `--concurrency` connections, the sessions' cookies in turn, one per request)
    /// instead of this process's load generator. The one-connection latency window stays in process.
    #[arg(long)]
    wrk: Option<PathBuf>,
}

/// The access token every benchmark session holds: JWT-sized, so tickets and the forwarded
/// `Authorization` header have a realistic size.
fn access_token_value() -> String {
    let mut s = String::from("eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCJ9.");
    while s.len() < 800 {
        s.push_str("eyJzdWIiOiJiZW5jaC11c2VyIiwiYXVkIjoiYXBpIn0");
    }
    s.truncate(800);
    s
}

fn main() {
    let args = Args::parse();
    // Asks `getconf` once, before the clock starts.
    let _ = load::clock_ticks_per_sec();
    if let Err(e) = check_bounds(&args) {
        eprintln!("proxy-bench: {e}");
        std::process::exit(64);
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    let rt = rt.build().expect("tokio runtime");
    let code = rt.block_on(run(args));
    // Background tasks (cleanup, invalidation listeners, servers) end with the runtime.
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

fn check_bounds(a: &Args) -> Result<(), String> {
    if a.duration.is_zero() || a.duration > Duration::from_secs(60) {
        return Err("--duration must be in (0, 60s]".into());
    }
    if a.warmup > Duration::from_secs(10) {
        return Err("--warmup must be at most 10s".into());
    }
    if a.rounds == 0 || a.rounds > 10 {
        return Err("--rounds must be in 1..=10".into());
    }
    if a.concurrency == 0 || a.concurrency > 1024 {
        return Err("--concurrency must be in 1..=1024".into());
    }
    if a.reloads == 0 || a.reloads > 100 {
        return Err("--reloads must be in 1..=100".into());
    }
    if a.sessions > 1024 {
        return Err("--sessions must be at most 1024".into());
    }
    Ok(())
}

/// Output lines, printed at the end (progress goes to stderr while running).
#[derive(Default)]
struct Report {
    lines: Vec<String>,
}

impl Report {
    fn print(&self) {
        for l in &self.lines {
            println!("{l}");
        }
    }
}

/// One measured scenario of one round.
struct Row {
    /// `scenario=… store=… cache=…`, the same in every round.
    label: String,
    baseline: bool,
    measured: Measured,
}

/// Everything the rounds share: the servers around the gateway and the run's settings.
struct Bench<'a> {
    args: &'a Args,
    sessions_per_gateway: usize,
    token: String,
    upstream: Arc<Upstream>,
    upstream_addr: SocketAddr,
    idp: Arc<Idp>,
    baseline_addr: SocketAddr,
    run_id: String,
}

async fn run(args: Args) -> i32 {
    let mut report = Report::default();
    let outcome = if args.vs_nginx {
        vs_nginx::run(&args, &mut report.lines).await
    } else if args.reload_under_load {
        reload_load::run(&args, &mut report.lines).await
    } else {
        run_inner(&args, &mut report).await
    };
    match outcome {
        Ok(ok) => {
            report.print();
            if ok {
                0
            } else {
                1
            }
        }
        Err(e) => {
            report.print();
            println!("FAILED: {e}");
            1
        }
    }
}

async fn run_inner(args: &Args, report: &mut Report) -> Result<bool, String> {
    if args.tracing {
        tracing_cost::install().await;
    }
    let sessions_per_gateway = if args.sessions == 0 {
        args.concurrency
    } else {
        args.sessions
    };

    // Upstream, IdP, baseline.
    let token = access_token_value();
    let upstream = Arc::new(Upstream {
        expected_authorization: HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| e.to_string())?,
        with_token: 0.into(),
        without_token: 0.into(),
    });
    let (upstream_addr, _up) = servers::serve(servers::upstream_router(upstream.clone()))
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    let idp_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("idp: {e}"))?;
    let idp_addr = idp_listener.local_addr().map_err(|e| e.to_string())?;
    let idp = Arc::new(Idp {
        issuer: format!("http://{idp_addr}"),
        ..Idp::default()
    });
    let _idp = servers::serve_on(idp_listener, servers::idp_router(idp.clone()));
    let (baseline_addr, _baseline) = servers::serve(servers::baseline_router(upstream_addr))
        .await
        .map_err(|e| format!("baseline: {e}"))?;

    let run_id = format!(
        "bench-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    report.lines.push(format!(
        "# proxy-bench concurrency={} sessions={} duration={} warmup={} rounds={} cores={} upstream_body_bytes={}",
        args.concurrency,
        sessions_per_gateway,
        humantime::format_duration(args.duration),
        humantime::format_duration(args.warmup),
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        UPSTREAM_BODY.len(),
    ));
    let bench = Bench {
        args,
        sessions_per_gateway,
        token,
        upstream,
        upstream_addr,
        idp,
        baseline_addr,
        run_id,
    };

    let mut skipped: Vec<String> = Vec::new();
    let mut ticket_bytes = None;
    let mut rounds: Vec<Vec<Row>> = Vec::new();
    for round in 1..=args.rounds {
        let rows = match run_round(&bench, round, &mut skipped, &mut ticket_bytes).await {
            Ok(rows) => rows,
            Err(e) => {
                // Show what was measured before the failure.
                print_rounds(report, &rounds, args.rounds);
                return Err(e);
            }
        };
        rounds.push(rows);
    }

    if let Some(b) = ticket_bytes {
        report
            .lines
            .push(format!("# sealed ticket bytes per session: {b}"));
    }
    print_rounds(report, &rounds, args.rounds);
    report.lines.extend(skipped);
    if args.rounds > 1 {
        summarize(report, &rounds);
    }
    let token_calls = bench.idp.token_calls.load(Ordering::SeqCst);
    report.lines.push(format!(
        "idp token_endpoint_calls={token_calls} discovery_calls={} jwks_calls={}",
        bench.idp.discovery_calls.load(Ordering::SeqCst),
        bench.idp.jwks_calls.load(Ordering::SeqCst),
    ));
    if token_calls != 0 {
        report
            .lines
            .push("FAILED: the token endpoint was called during the run".into());
        return Ok(false);
    }
    Ok(true)
}

/// The mean of a round's baseline runs (start and end).
fn baseline_mean(rows: &[Row]) -> Option<f64> {
    let b: Vec<f64> = rows
        .iter()
        .filter(|r| r.baseline)
        .map(|r| r.measured.rps)
        .collect();
    (!b.is_empty()).then(|| b.iter().sum::<f64>() / b.len() as f64)
}

fn print_rounds(report: &mut Report, rounds: &[Vec<Row>], total: usize) {
    for (i, rows) in rounds.iter().enumerate() {
        let prefix = if total > 1 {
            format!("round={} ", i + 1)
        } else {
            String::new()
        };
        let base = baseline_mean(rows);
        let mut baselines = Vec::new();
        for (j, r) in rows.iter().enumerate() {
            let m = &r.measured;
            let opt = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.1}"));
            let (run, ratio) = match (r.baseline, base) {
                (true, _) => {
                    baselines.push(m.rps);
                    (
                        if j == 0 { " run=start" } else { " run=end  " },
                        String::new(),
                    )
                }
                (false, Some(b)) => ("", format!(" ratio_to_baseline={:.2}", m.rps / b)),
                (false, None) => ("", String::new()),
            };
            report.lines.push(format!(
                "{prefix}{}{run} rps={:.0} p50_us={} p99_us={} requests={} cpu_us_per_req={} steal_pct={}{ratio}",
                r.label,
                m.rps,
                m.p50_us,
                m.p99_us,
                m.requests,
                opt(m.cpu_us_per_req),
                opt(m.steal_pct),
            ));
        }
        if let (Some(b), [start, end]) = (base, baselines.as_slice()) {
            report.lines.push(format!(
                "{prefix}baseline_mean_rps={b:.0} drift_end_vs_start={:+.1}%",
                (end / start - 1.0) * 100.0
            ));
        }
    }
}

/// Per scenario across rounds: median, lowest and highest rps and ratio to the round's
/// baseline mean.
fn summarize(report: &mut Report, rounds: &[Vec<Row>]) {
    let mut labels: Vec<&str> = Vec::new();
    for r in rounds.iter().flatten() {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    for label in labels {
        let mut rps = Vec::new();
        let mut ratios = Vec::new();
        for rows in rounds {
            let base = baseline_mean(rows);
            for r in rows.iter().filter(|r| r.label == label) {
                rps.push(r.measured.rps);
                if let (false, Some(b)) = (r.baseline, base) {
                    ratios.push(r.measured.rps / b);
                }
            }
        }
        let (med, lo, hi) = spread(&mut rps);
        let mut line = format!(
            "summary {label} rounds={} rps_median={med:.0} rps_min={lo:.0} rps_max={hi:.0}",
            rounds.len()
        );
        if !ratios.is_empty() {
            let (med, lo, hi) = spread(&mut ratios);
            line.push_str(&format!(
                " ratio_median={med:.2} ratio_min={lo:.2} ratio_max={hi:.2}"
            ));
        }
        report.lines.push(line);
    }
}

/// Median (mean of the middle two for an even count), minimum, maximum.
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

/// One round: baseline, gateway scenarios, baseline.
async fn run_round(
    b: &Bench<'_>,
    round: usize,
    skipped: &mut Vec<String>,
    ticket_bytes: &mut Option<usize>,
) -> Result<Vec<Row>, String> {
    let args = b.args;
    let mut rows: Vec<Row> = Vec::new();
    let plain: Vec<RequestTemplate> = (0..args.concurrency)
        .map(|_| template(b.baseline_addr, "/api/hello", None))
        .collect::<Result<_, _>>()?;
    let baseline_row = |m| Row {
        label: "scenario=baseline".into(),
        baseline: true,
        measured: m,
    };

    progress(round, "scenario=baseline run=start");
    let m = load::run(
        b.baseline_addr,
        plain.clone(),
        UPSTREAM_BODY,
        args.warmup,
        args.duration,
    )
    .await?;
    check_upstream(&b.upstream, false, "baseline")?;
    rows.push(baseline_row(m));

    // The gateway's forwarding path without session or token.
    if !args.skip_open_route {
        let label = "scenario=gateway route=open store=memory cache=on ";
        progress(round, label);
        let gw = start_gateway(
            "memory",
            Duration::from_secs(10),
            &b.idp.issuer,
            b.upstream_addr,
            &format!("{}-{round}-open", b.run_id),
            &b.token,
            1,
            DpopMode::Off,
        )
        .await?;
        let t: Vec<_> = (0..args.concurrency)
            .map(|i| {
                template(
                    gw.addr,
                    "/open/hello",
                    Some(&gw.cookies[i % gw.cookies.len()]),
                )
            })
            .collect::<Result<_, _>>()?;
        let m = load::run(gw.addr, t, UPSTREAM_BODY, args.warmup, args.duration).await;
        gw.stop().await;
        let m = m?;
        check_upstream(&b.upstream, false, label)?;
        rows.push(Row {
            label: label.into(),
            baseline: false,
            measured: m,
        });
    }

    // Frontend selection: the same authenticated GET on a gateway with one frontend, and on
    // one with 100 (50 selected by host, 50 by path), the request going to the 50th of each.
    if !args.skip_frontends {
        for (label, frontends, target) in [
            (
                "scenario=gateway frontends=1   select=default store=memory cache=on ",
                0,
                Target::Default,
            ),
            (
                "scenario=gateway frontends=100 select=host    store=memory cache=on ",
                100,
                Target::Host(49),
            ),
            (
                "scenario=gateway frontends=100 select=path    store=memory cache=on ",
                100,
                Target::Path(49),
            ),
        ] {
            progress(round, label);
            let gw = start_gateway_with(
                "memory",
                Duration::from_secs(10),
                &b.idp.issuer,
                b.upstream_addr,
                &format!("{}-{round}-fe{frontends}", b.run_id),
                &b.token,
                b.sessions_per_gateway,
                frontends,
                target,
                DpopMode::Off,
            )
            .await?;
            let (host, path) = match target {
                Target::Default => (gw.addr.to_string(), "/api/hello".to_owned()),
                Target::Host(i) => (format!("h{i}.bench"), "/api/hello".to_owned()),
                Target::Path(i) => (gw.addr.to_string(), format!("/p{i}/api/hello")),
            };
            let t: Vec<_> = (0..args.concurrency)
                .map(|i| template_for(&host, &path, Some(&gw.cookies[i % gw.cookies.len()])))
                .collect::<Result<_, _>>()?;
            let m = load::run(gw.addr, t, UPSTREAM_BODY, args.warmup, args.duration).await;
            gw.stop().await;
            let m = m?;
            check_upstream(&b.upstream, true, label)?;
            rows.push(Row {
                label: label.into(),
                baseline: false,
                measured: m,
            });
        }
    }

    if args.tracing {
        tracing_rows(b, round, &mut rows).await?;
    }
    let tmp = std::env::temp_dir().join(format!("{}-{round}", b.run_id));
    let stores: &[StoreKind] = if args.tracing { &[] } else { &args.stores };
    for &kind in stores {
        for cache in [true, false] {
            let cache_label = if cache { "on " } else { "off" };
            let label = format!("scenario=gateway store={} cache={cache_label}", kind.name());
            let url = match kind {
                StoreKind::Memory => "memory".to_owned(),
                StoreKind::Sqlite => format!(
                    "sqlite://{}",
                    tmp.join(format!("cache-{}", cache_label.trim()))
                        .join("s.db")
                        .display()
                ),
                StoreKind::Redis => args.redis_url.clone(),
                StoreKind::Postgres => args.postgres_url.clone(),
            };
            progress(round, &label);
            let ttl = if cache {
                Duration::from_secs(10)
            } else {
                Duration::ZERO
            };
            let partition = format!(
                "{}-{round}-{}-{}",
                b.run_id,
                kind.name(),
                cache_label.trim()
            );
            let gw = match start_gateway(
                &url,
                ttl,
                &b.idp.issuer,
                b.upstream_addr,
                &partition,
                &b.token,
                b.sessions_per_gateway,
                DpopMode::Off,
            )
            .await
            {
                Ok(gw) => gw,
                Err(GatewayStartError::Store(reason)) => {
                    let line = format!("store={} skipped: {reason}", kind.name());
                    eprintln!("{line}");
                    if !skipped.contains(&line) {
                        skipped.push(line);
                    }
                    break;
                }
                Err(GatewayStartError::Other(e)) => return Err(e),
            };
            ticket_bytes.get_or_insert(gw.ticket_bytes);
            let t: Vec<_> = (0..args.concurrency)
                .map(|i| {
                    template(
                        gw.addr,
                        "/api/hello",
                        Some(&gw.cookies[i % gw.cookies.len()]),
                    )
                })
                .collect::<Result<_, _>>()?;
            let m = load::run(gw.addr, t, UPSTREAM_BODY, args.warmup, args.duration).await;
            gw.stop().await;
            let m = m?;
            check_upstream(&b.upstream, true, &label)?;
            rows.push(Row {
                label,
                baseline: false,
                measured: m,
            });
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);

    // DPoP (RFC 9449): the memory store with cache, like the Bearer row of the same store, but
    // the session's token is DPoP-bound and every call signs an ES256 proof: with the one
    // gateway key, and with each session's own key (found through its ticket on every call).
    for (mode, label, id) in [
        (
            DpopMode::GatewayKey,
            "scenario=gateway store=memory cache=on  token=dpop-es256",
            "dpop",
        ),
        (
            DpopMode::PerSession,
            "scenario=gateway store=memory cache=on  token=dpop-es256-per-session",
            "dpop-session",
        ),
    ] {
        if args.skip_dpop {
            break;
        }
        progress(round, label);
        let gw = start_gateway(
            "memory",
            Duration::from_secs(10),
            &b.idp.issuer,
            b.upstream_addr,
            &format!("{}-{round}-{id}", b.run_id),
            &b.token,
            b.sessions_per_gateway,
            mode,
        )
        .await
        .map_err(|e| match e {
            GatewayStartError::Store(m) | GatewayStartError::Other(m) => m,
        })?;
        let t: Vec<_> = (0..args.concurrency)
            .map(|i| {
                template(
                    gw.addr,
                    "/api/hello",
                    Some(&gw.cookies[i % gw.cookies.len()]),
                )
            })
            .collect::<Result<_, _>>()?;
        let m = load::run(gw.addr, t, UPSTREAM_BODY, args.warmup, args.duration).await;
        gw.stop().await;
        let m = m?;
        check_upstream(&b.upstream, true, label)?;
        rows.push(Row {
            label: label.into(),
            baseline: false,
            measured: m,
        });
    }

    progress(round, "scenario=baseline run=end");
    let m = load::run(
        b.baseline_addr,
        plain,
        UPSTREAM_BODY,
        args.warmup,
        args.duration,
    )
    .await?;
    check_upstream(&b.upstream, false, "baseline")?;
    rows.push(baseline_row(m));
    Ok(rows)
}

/// `--tracing`: the user route with tracing off, sampling 0 and sampling 1 (the order
/// rotates by round so drift does not favour one mode).
async fn tracing_rows(b: &Bench<'_>, round: usize, rows: &mut Vec<Row>) -> Result<(), String> {
    use tracing_cost::Mode;
    let mut modes = [Mode::Off, Mode::Sample0, Mode::Sample1];
    modes.rotate_left((round - 1) % 3);
    for mode in modes {
        let label = format!(
            "scenario=gateway store=memory cache=on tracing={:<7}",
            mode.name()
        );
        progress(round, &label);
        tracing_cost::set(mode);
        let gw = start_gateway(
            "memory",
            Duration::from_secs(10),
            &b.idp.issuer,
            b.upstream_addr,
            &format!("{}-{round}-{}", b.run_id, mode.name()),
            &b.token,
            b.sessions_per_gateway,
            DpopMode::Off,
        )
        .await
        .map_err(|e| match e {
            GatewayStartError::Store(e) | GatewayStartError::Other(e) => e,
        })?;
        let t: Vec<_> = (0..b.args.concurrency)
            .map(|i| {
                template(
                    gw.addr,
                    "/api/hello",
                    Some(&gw.cookies[i % gw.cookies.len()]),
                )
            })
            .collect::<Result<_, _>>()?;
        let m = load::run(gw.addr, t, UPSTREAM_BODY, b.args.warmup, b.args.duration).await;
        gw.stop().await;
        let m = m?;
        check_upstream(&b.upstream, true, &label)?;
        let (exports, bytes) = tracing_cost::exported();
        eprintln!("proxy-bench: OTLP exports so far: {exports} requests, {bytes} bytes");
        rows.push(Row {
            label,
            baseline: false,
            measured: m,
        });
    }
    tracing_cost::set(Mode::Off);
    Ok(())
}

fn progress(round: usize, what: &str) {
    eprintln!("proxy-bench: round {round}: {}", what.trim_end());
}

/// Every upstream request of the last scenario carried the session's token (`with_token`),
/// or none did.
fn check_upstream(up: &Upstream, with_token: bool, what: &str) -> Result<(), String> {
    let (with, without) = up.take_counts();
    let ok = if with_token {
        without == 0 && with > 0
    } else {
        with == 0 && without > 0
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what}: upstream saw {with} requests with the session token and {without} without"
        ))
    }
}

fn template(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&HeaderValue>,
) -> Result<RequestTemplate, String> {
    template_for(&addr.to_string(), path, cookie)
}

/// A request naming `host` in its `Host` header.
fn template_for(
    host: &str,
    path: &str,
    cookie: Option<&HeaderValue>,
) -> Result<RequestTemplate, String> {
    let mut headers = HeaderMap::new();
    let host = HeaderValue::from_str(host).map_err(|e| e.to_string())?;
    headers.insert(header::HOST, host);
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert("x-csrf", HeaderValue::from_static("1"));
    if let Some(c) = cookie {
        headers.insert(header::COOKIE, c.clone());
    }
    Ok(RequestTemplate {
        uri: path.parse::<Uri>().map_err(|e| e.to_string())?,
        headers,
    })
}

enum GatewayStartError {
    /// The session store could not be opened: the scenario is skipped.
    Store(String),
    Other(String),
}

impl From<String> for GatewayStartError {
    fn from(e: String) -> Self {
        Self::Other(e)
    }
}

impl From<GatewayStartError> for String {
    fn from(e: GatewayStartError) -> Self {
        match e {
            GatewayStartError::Store(s) | GatewayStartError::Other(s) => s,
        }
    }
}

struct RunningGateway {
    gateway: Gateway,
    addr: SocketAddr,
    /// `Cookie` header values, one per session.
    cookies: Vec<HeaderValue>,
    keys: Vec<String>,
    ticket_bytes: usize,
    tasks: Vec<JoinHandle<()>>,
    sqlite_dir: Option<PathBuf>,
}

impl RunningGateway {
    /// Ends the benchmark sessions (shared stores keep them otherwise) and stops the server
    /// and background tasks. Connections still open finish on their own.
    async fn stop(self) {
        for k in &self.keys {
            if let Err(e) = self.gateway.sessions().end(k).await {
                eprintln!("proxy-bench: could not delete a benchmark session: {e}");
            }
        }
        for t in &self.tasks {
            t.abort();
        }
        if let Some(d) = self.sqlite_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// DPoP of a scenario's gateway (RFC 9449).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DpopMode {
    /// Bearer tokens, no proofs.
    Off,
    /// DPoP-bound tokens, every proof signed with the one gateway key (ES256).
    GatewayKey,
    /// DPoP-bound tokens, each session's proofs signed with its own key from its ticket
    /// (`[oidc.dpop] per_session`, ES256).
    PerSession,
}

/// Which frontend the measured requests go to.
#[derive(Debug, Clone, Copy)]
enum Target {
    Default,
    /// `h{i}.bench`, selected by host.
    Host(usize),
    /// `/p{i}`, selected by path.
    Path(usize),
}

#[allow(clippy::too_many_arguments)] // one scenario's knobs, named at each call
async fn start_gateway(
    store_url: &str,
    cache_ttl: Duration,
    issuer: &str,
    upstream: SocketAddr,
    partition: &str,
    access_token: &str,
    sessions: usize,
    dpop: DpopMode,
) -> Result<RunningGateway, GatewayStartError> {
    start_gateway_with(
        store_url,
        cache_ttl,
        issuer,
        upstream,
        partition,
        access_token,
        sessions,
        0,
        Target::Default,
        dpop,
    )
    .await
}

/// A gateway with `frontends` extra frontends (half `h{i}.bench` by host, half `/p{i}` by
/// path, each with the default's routes), sessions created in `target`'s partition.
#[allow(clippy::too_many_arguments)]
async fn start_gateway_with(
    store_url: &str,
    cache_ttl: Duration,
    issuer: &str,
    upstream: SocketAddr,
    partition: &str,
    access_token: &str,
    sessions: usize,
    frontends: usize,
    target: Target,
    dpop: DpopMode,
) -> Result<RunningGateway, GatewayStartError> {
    let store = match tokio::time::timeout(
        Duration::from_secs(10),
        portcullis_session::connect(store_url),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(GatewayStartError::Store(e.to_string())),
        Err(_) => return Err(GatewayStartError::Store("no answer within 10 s".into())),
    };
    let sqlite_dir = store_url
        .strip_prefix("sqlite://")
        .and_then(|p| PathBuf::from(p).parent().map(PathBuf::from));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("gateway listener: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let public_url = Url::parse(&format!("http://{addr}")).map_err(|e| e.to_string())?;
    let upstream_url = Url::parse(&format!("http://{upstream}/")).map_err(|e| e.to_string())?;
    let mut settings = gateway_settings(
        public_url,
        issuer.to_owned(),
        upstream_url,
        cache_ttl,
        partition.to_owned(),
    )?;
    if dpop != DpopMode::Off {
        let key = portcullis_token::DpopKey::generate(portcullis_token::SigningAlg::ES256)
            .map_err(|e| format!("DPoP key: {e}"))?;
        settings.oidc.dpop = Some(portcullis::settings::DpopSettings {
            key: Arc::new(key),
            session_key_alg: (dpop == DpopMode::PerSession)
                .then_some(portcullis_token::SigningAlg::ES256),
        });
    }
    let keys = KeyRing::new(vec![Key::parse(&Key::generate_spec("bench"))?])?;
    let mut specs = Vec::with_capacity(frontends);
    for i in 0..frontends {
        let by_host = i < frontends / 2;
        let n = if by_host { i } else { i - frontends / 2 };
        let name = if by_host {
            format!("h{n}")
        } else {
            format!("p{n}")
        };
        let mut s = settings.clone();
        s.cookies = CookieSettings::for_public_url(
            &s.public_url,
            Some(&format!("bff-auth-{name}")),
            SameSite::Strict,
        )
        .map_err(|e| e.join("; "))?;
        s.session.partition = format!("{partition}-{name}");
        specs.push(portcullis::FrontendSpec {
            settings: portcullis::FrontendSettings {
                match_host: by_host.then(|| format!("h{n}.bench")),
                match_path: (!by_host).then(|| format!("/p{n}")),
                name,
                settings: s,
            },
            fallback: None,
        });
    }
    let gateway = Gateway::with_frontends(settings, specs, store, keys, Arc::new(SystemClock))?;
    let target_name = match target {
        Target::Default => portcullis::frontend::DEFAULT_FRONTEND.to_owned(),
        Target::Host(i) => format!("h{i}"),
        Target::Path(i) => format!("p{i}"),
    };
    let sessions_of = gateway
        .frontend(&target_name)
        .ok_or_else(|| format!("no frontend {target_name}"))?
        .sessions()
        .clone();

    let (cookies, store_keys, ticket_bytes) =
        create_sessions_of(&gateway, &sessions_of, issuer, access_token, sessions, dpop).await?;

    let mut tasks = gateway.spawn_background_tasks();
    tasks.push(servers::serve_on(
        listener,
        tracing_cost::wrap(gateway.router(None)),
    ));
    Ok(RunningGateway {
        gateway,
        addr,
        cookies,
        keys: store_keys,
        ticket_bytes,
        tasks,
        sqlite_dir,
    })
}

/// Logged-in sessions for the benchmark user(s), created directly in the gateway's store:
/// (`Cookie` header values, store keys, sealed ticket bytes of one session).
async fn create_sessions(
    gateway: &Gateway,
    sessions_of: &portcullis::session::Sessions,
    issuer: &str,
    access_token: &str,
    sessions: usize,
) -> Result<(Vec<HeaderValue>, Vec<String>, usize), GatewayStartError> {
    create_sessions_of(
        gateway,
        sessions_of,
        issuer,
        access_token,
        sessions,
        DpopMode::Off,
    )
    .await
}

/// As [`create_sessions`], with access tokens of `token_type`.
async fn create_sessions_of(
    gateway: &Gateway,
    sessions_of: &portcullis::session::Sessions,
    issuer: &str,
    access_token: &str,
    sessions: usize,
    dpop: DpopMode,
) -> Result<(Vec<HeaderValue>, Vec<String>, usize), GatewayStartError> {
    let now = gateway.now();
    let cookie_name = sessions_of.cookies().session_name().to_owned();
    let mut cookies = Vec::with_capacity(sessions);
    let mut store_keys = Vec::with_capacity(sessions);
    let mut ticket_bytes = 0;
    let token_type = match dpop {
        DpopMode::Off => TokenType::Bearer,
        DpopMode::GatewayKey | DpopMode::PerSession => TokenType::DPoP,
    };
    for i in 0..sessions {
        let tokens = UserTokens::from_response(
            TokenResponse {
                access_token: Secret::new(access_token),
                token_type: token_type.clone(),
                expires_in: Some(3600),
                refresh_token: Some(Secret::new(format!("bench-refresh-{i}"))),
                id_token: Some(Secret::new(format!("{access_token}.{i}"))),
                scope: Some("openid profile email offline_access api".into()),
                extra: serde_json::Map::new(),
            },
            now,
        )
        .map_err(|e| format!("tokens: {e}"))?;
        let tokens = if dpop == DpopMode::PerSession {
            // As a login with `per_session` leaves it: the session's own key in its ticket.
            tokens.with_dpop_key(
                &portcullis_token::DpopKey::generate(portcullis_token::SigningAlg::ES256)
                    .map_err(|e| format!("DPoP key: {e}"))?,
            )
        } else {
            tokens
        };
        let sub = format!("bench-user-{i}");
        let sid = format!("bench-sid-{i}");
        let claim = |kind: &str, value: serde_json::Value| Claim {
            kind: kind.into(),
            value,
        };
        let ticket = Ticket {
            claims: vec![
                claim("iss", issuer.into()),
                claim("sub", sub.clone().into()),
                claim("aud", "bench".into()),
                claim("sid", sid.clone().into()),
                claim("auth_time", now.into()),
                claim("amr", "pwd".into()),
                claim("name", format!("Bench User {i}").into()),
                claim("email", format!("bench{i}@example.com").into()),
                claim("email_verified", true.into()),
            ],
            sub,
            sid: Some(sid),
            session_state: None,
            tokens,
        };
        let (id, record) = match sessions_of.create(ticket).await {
            Ok(v) => v,
            // The store connected but cannot write: skip like an unreachable one.
            Err(e) => return Err(GatewayStartError::Store(format!("create session: {e}"))),
        };
        ticket_bytes = record.ticket.len();
        cookies.push(
            HeaderValue::from_str(&format!("{cookie_name}={}", id.as_str()))
                .map_err(|e| e.to_string())?,
        );
        store_keys.push(record.key);
    }
    Ok((cookies, store_keys, ticket_bytes))
}

fn gateway_settings(
    public_url: Url,
    issuer: String,
    upstream: Url,
    cache_ttl: Duration,
    partition: String,
) -> Result<GatewaySettings, String> {
    let cookies = CookieSettings::for_public_url(&public_url, None, SameSite::Strict)
        .map_err(|e| e.join("; "))?;
    let route = |path: &str, token: TokenPolicy| RouteSettings {
        path: path.into(),
        upstream: upstream.clone(),
        token,
        anti_forgery: true,
        resource: None,
        scope: None,
        audience: None,
        refresh_before_expiry: None,
        client: None,
        timeout: Duration::from_secs(30),
        access: Default::default(),
        max_body: None,
    };
    Ok(GatewaySettings {
        public_url,
        base_path: "/bff".into(),
        callback_path: "/signin-oidc".into(),
        signed_out_callback_path: "/signout-callback-oidc".into(),
        oidc: OidcSettings {
            issuer,
            client_id: "bench".into(),
            client_auth: ClientAuthSettings::ClientSecretBasic(Secret::new("bench-secret")),
            scopes: vec!["openid".into(), "offline_access".into(), "api".into()],
            extra_authorize_params: Vec::new(),
            resource: None,
            response_mode: ResponseMode::Query,
            revoke_refresh_token_on_logout: false,
            clock_skew: Duration::from_secs(60),
            fetch_userinfo: false,
            backchannel_logout_all_sessions: false,
            trusted_audiences: Vec::new(),
            http_timeout: Duration::from_secs(5),
            dpop: None,
            par: Default::default(),
            profile: Default::default(),
        },
        session: SessionSettings {
            partition,
            cache_ttl,
            ..SessionSettings::default()
        },
        cookies,
        anti_forgery: AntiForgery::default(),
        routes: vec![
            route("/api", TokenPolicy::User),
            route("/open", TokenPolicy::None),
        ],
        tokens: TokenSettings::default(),
        diagnostics: false,
        trust_forwarded_headers: false,
        websocket_origins: Vec::new(),
        allowed_hosts: Vec::new(),
        cors: None,
    })
}
