//! Test harness: real processes on loopback.
//!
//! - the identity provider: the npm `oidc-provider` configured by `testing/idp/server.mjs`;
//! - the upstream API: `examples/api/server.mjs`, which verifies the JWT it receives against
//!   the IdP's JWKS;
//! - the gateway: the real `portcullis` binary with a generated TOML file;
//! - the "browser": a reqwest client with a cookie jar that follows no redirect by itself.
//!
//! Every child is killed when its handle drops. Nothing listens beyond 127.0.0.1.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, LOCATION};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const CLIENT_ID: &str = "spa-bff";
pub const CLIENT_SECRET: &str = "secret-for-tests-only-0123456789";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-test-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    t ^ (N.fetch_add(1, Ordering::SeqCst) << 32)
}

/// A free loopback port (bind, read, release). The port is released before a child binds
/// it, so another process may take it in between: start children that need it through
/// [`on_free_port`], which retries on a new port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The child could not bind the port it was given (someone took it after [`free_port`]).
#[derive(Debug)]
pub struct PortTaken;

/// Runs `start` with a fresh [`free_port`] until it does not answer [`PortTaken`] (at most
/// five attempts). Used for the gateway, whose configuration (public URL, the IdP's redirect
/// URIs) needs its port before it starts; children that can report their port (IdP, API)
/// bind port 0 instead.
pub async fn on_free_port<T, F, Fut>(mut start: F) -> T
where
    F: FnMut(u16) -> Fut,
    Fut: std::future::Future<Output = Result<T, PortTaken>>,
{
    for attempt in 1..=5 {
        let port = free_port();
        match start(port).await {
            Ok(v) => return v,
            Err(PortTaken) => eprintln!("port {port} was taken before the child bound it (attempt {attempt}); retrying on another"),
        }
    }
    panic!("five free ports in a row were taken before the child could bind them");
}

/// Whether a child's output says it could not bind its listening port.
pub fn bind_failed(output: &[String]) -> bool {
    output.iter().any(|l| {
        l.contains("Address already in use")
            || l.contains("os error 98")
            || l.contains("EADDRINUSE")
    })
}

fn check_node_modules() {
    let root = repo_root();
    assert!(
        root.join("node_modules/oidc-provider").exists(),
        "node_modules missing: run `bash scripts/install-test-deps.sh` (the test command does this)"
    );
}

/// A child process that is killed on drop, with its output forwarded to the test log.
pub struct Proc {
    pub child: Child,
    pub ready: Value,
    name: String,
    /// Every line the process printed (stdout and stderr), for assertions on logs.
    pub output: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    pub async fn spawn(name: &str, cmd: Command) -> Proc {
        Self::try_spawn(name, cmd).await.unwrap_or_else(|output| {
            panic!("{name} exited before it was ready:\n{}", output.join("\n"))
        })
    }

    /// Starts the child and waits for its `READY` line; `Err` holds everything it printed
    /// when it exited before that (e.g. a port that is already taken).
    pub async fn try_spawn(name: &str, mut cmd: Command) -> Result<Proc, Vec<String>> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<Value>();
        let output = Arc::new(std::sync::Mutex::new(Vec::new()));
        let label = name.to_owned();
        let out = output.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("READY ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(serde_json::from_str(rest).unwrap_or(Value::Null));
                        continue;
                    }
                }
                eprintln!("[{label}] {line}");
                out.lock().unwrap().push(line);
            }
        });
        let label = name.to_owned();
        let out = output.clone();
        let stderr_done = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{label}] {line}");
                out.lock().unwrap().push(line);
            }
        });
        let ready = tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .unwrap_or_else(|_| panic!("{name} did not become ready within 60 s"));
        let Ok(ready) = ready else {
            // Exited: let the stderr reader drain what the child said about why.
            let _ = child.wait().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), stderr_done).await;
            let lines = output.lock().unwrap().clone();
            return Err(lines);
        };
        Ok(Proc {
            child,
            ready,
            name: name.to_owned(),
            output,
        })
    }

    /// Everything the process printed so far, one line per entry.
    pub fn logs(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }

    /// SIGSTOP / SIGCONT: a hung process (connections accepted by the kernel, never answered).
    pub fn pause(&self, on: bool) {
        if let Some(pid) = self.child.id() {
            let sig = if on { "-STOP" } else { "-CONT" };
            let _ = std::process::Command::new("kill")
                .arg(sig)
                .arg(pid.to_string())
                .status();
        }
    }
}

/// Options for the test IdP.
#[derive(Clone)]
pub struct IdpOptions {
    pub access_token_ttl: u64,
    pub rotate_refresh_token: bool,
    pub state_file: Option<PathBuf>,
    pub port: u16,
    /// Whether the gateway's client may use the `refresh_token` grant (the IdP then issues
    /// refresh tokens to it); `false` for sessions without a refresh token.
    pub refresh_tokens: bool,
}

impl Default for IdpOptions {
    fn default() -> Self {
        Self {
            access_token_ttl: 300,
            rotate_refresh_token: false,
            state_file: None,
            port: 0,
            refresh_tokens: true,
        }
    }
}

pub struct Idp {
    pub proc: Option<Proc>,
    pub issuer: String,
    pub port: u16,
    config_path: PathBuf,
    http: Client,
}

impl Idp {
    pub async fn start(gateway_origins: &[String], opts: IdpOptions) -> Idp {
        Self::start_clients(vec![Self::default_client(gateway_origins)], opts).await
    }

    /// The gateway's client (`spa-bff`) registered for these gateway origins.
    pub fn default_client(gateway_origins: &[String]) -> Value {
        json!({
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": gateway_origins.iter().map(|o| format!("{o}/signin-oidc")).collect::<Vec<_>>(),
            "post_logout_redirect_uris": gateway_origins.iter().map(|o| format!("{o}/signout-callback-oidc")).collect::<Vec<_>>(),
            "backchannel_logout_uri": format!("{}/bff/backchannel", gateway_origins[0]),
            "backchannel_logout_session_required": true,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "scope": "openid profile email offline_access api api.read api.write",
        })
    }

    /// An IdP holding these clients (oidc-provider client metadata, see testing/idp/README.md).
    pub async fn start_clients(mut clients: Vec<Value>, opts: IdpOptions) -> Idp {
        check_node_modules();
        if !opts.refresh_tokens {
            // No client may use the refresh-token grant (the IdP then issues none).
            for c in &mut clients {
                if let Some(Value::Array(grants)) = c.get_mut("grant_types") {
                    grants.retain(|g| g != "refresh_token");
                }
            }
        }
        let dir = temp_dir("idp");
        let mut config = json!({
            "clients": clients,
            "access_token_ttl": opts.access_token_ttl,
            "id_token_ttl": 300,
            "rotate_refresh_token": opts.rotate_refresh_token,
        });
        if let Some(f) = &opts.state_file {
            config["state_file"] = json!(f);
        }
        let config_path = dir.join("idp.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let proc = Self::spawn(opts.port, &config_path).await;
        let issuer = proc.ready["issuer"]
            .as_str()
            .expect("issuer in READY")
            .to_owned();
        let port = proc.ready["port"].as_u64().expect("port in READY") as u16;
        Idp {
            proc: Some(proc),
            issuer,
            port,
            config_path,
            http: Client::new(),
        }
    }

    /// Starts the IdP with this configuration as is (clients and options of
    /// testing/idp/README.md), on a free port.
    pub async fn start_raw(config: &Value) -> Idp {
        check_node_modules();
        let config_path = temp_dir("idp").join("idp.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let proc = Self::spawn(0, &config_path).await;
        let issuer = proc.ready["issuer"].as_str().expect("issuer").to_owned();
        let port = proc.ready["port"].as_u64().expect("port") as u16;
        Idp {
            proc: Some(proc),
            issuer,
            port,
            config_path,
            http: Client::new(),
        }
    }

    async fn spawn(port: u16, config: &Path) -> Proc {
        let mut cmd = Command::new("node");
        cmd.current_dir(repo_root())
            .arg("testing/idp/server.mjs")
            .arg("--port")
            .arg(port.to_string())
            .arg("--config")
            .arg(config);
        Proc::spawn("idp", cmd).await
    }

    pub async fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.stop().await;
        }
    }

    /// Restart on the same port with the same configuration.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.proc = Some(Self::spawn(self.port, &self.config_path).await);
    }

    pub async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/__test/stats", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every secret value the IdP handed out (`GET /__test/issued`).
    pub async fn issued(&self) -> Issued {
        let v: Value = self
            .http
            .get(format!("{}/__test/issued", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let list = |k: &str| -> Vec<String> {
            v[k].as_array()
                .unwrap_or_else(|| panic!("/__test/issued lacks {k}: {v}"))
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect()
        };
        Issued {
            authorization_codes: list("authorization_codes"),
            access_tokens: list("access_tokens"),
            refresh_tokens: list("refresh_tokens"),
            id_tokens: list("id_tokens"),
            logout_tokens: list("logout_tokens"),
        }
    }

    /// Token requests of this grant type since start (or reset); 0 when none was made.
    pub async fn token_requests(&self, grant: &str) -> u64 {
        let stats = self.stats().await;
        let by_grant = stats["token_requests"]
            .as_object()
            .unwrap_or_else(|| panic!("IdP stats without token_requests: {stats}"));
        by_grant
            .get(grant)
            .map_or(0, |n| n.as_u64().expect("a count"))
    }

    pub async fn control(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/__test/{path}", self.issuer))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "IdP control {path} answered {}",
            r.status()
        );
        r.json().await.unwrap_or(Value::Null)
    }

    pub async fn active_refresh_tokens(&self, sub: &str) -> u64 {
        let v: Value = self
            .http
            .get(format!("{}/__test/refresh-tokens?sub={sub}", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["active"].as_u64().unwrap()
    }

    pub async fn sign(&self, claims: Value, header: Value) -> String {
        let v = self
            .control(
                "sign",
                json!({"claims": claims, "header": header, "alg": "RS256"}),
            )
            .await;
        v["jwt"].as_str().unwrap().to_owned()
    }
}

pub struct Api {
    pub proc: Proc,
    pub url: String,
}

impl Api {
    pub async fn start(issuer: &str) -> Api {
        Self::start_for(issuer, "urn:portcullis:api").await
    }

    /// An API that accepts only access tokens for `audience`.
    pub async fn start_for(issuer: &str, audience: &str) -> Api {
        check_node_modules();
        let mut cmd = Command::new("node");
        cmd.current_dir(repo_root()).args([
            "examples/api/server.mjs",
            "--port",
            "0",
            "--issuer",
            issuer,
            "--audience",
            audience,
        ]);
        let proc = Proc::spawn("api", cmd).await;
        let port = proc.ready["port"].as_u64().expect("port in READY");
        Api {
            proc,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub async fn requests(&self) -> u64 {
        let v: Value = Client::new()
            .get(format!("{}/stats", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["requests"].as_u64().unwrap()
    }
}

/// The gateway binary with a generated configuration.
pub struct Gateway {
    pub proc: Option<Proc>,
    pub origin: String,
    pub port: u16,
    pub dir: PathBuf,
    pub config_path: PathBuf,
}

pub fn gateway_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portcullis"))
}

/// A configuration with `/api` → API (user token), `/api-none`, `/api-optional`, `/api-client`.
pub fn default_config(port: u16, issuer: &str, api: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
data_dir = "data"

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email", "offline_access", "api", "api.read"]

[session]
idle_timeout = "1h"
absolute_timeout = "1d"

[[routes]]
path = "/api"
upstream = "{api}"
token = "user"

[[routes]]
path = "/api-none"
upstream = "{api}"
token = "none"

[[routes]]
path = "/api-optional"
upstream = "{api}"
token = "user_or_none"

[[routes]]
path = "/api-client"
upstream = "{api}"
token = "client"
scope = "api.read"

[[routes]]
path = "/api-either"
upstream = "{api}"
token = "user_or_client"
scope = "api.read"
{extra}
"#,
        extra = extra.replace("API_URL", api)
    )
}

impl Gateway {
    pub async fn start(port: u16, config: &str) -> Gateway {
        let dir = temp_dir("gw");
        Self::start_in(dir, port, config).await
    }

    pub async fn start_in(dir: PathBuf, port: u16, config: &str) -> Gateway {
        Self::try_start_in(dir, port, config)
            .await
            .unwrap_or_else(|PortTaken| panic!("gateway port {port} is taken"))
    }

    /// Like [`Gateway::start`], but [`PortTaken`] when the port went to someone else after
    /// [`free_port`] (for [`on_free_port`]); any other start-up failure panics.
    pub async fn try_start(port: u16, config: &str) -> Result<Gateway, PortTaken> {
        Self::try_start_in(temp_dir("gw"), port, config).await
    }

    pub async fn try_start_in(dir: PathBuf, port: u16, config: &str) -> Result<Gateway, PortTaken> {
        let config_path = dir.join("portcullis.toml");
        std::fs::write(&config_path, config).unwrap();
        let proc = Self::try_spawn(&config_path).await?;
        Ok(Gateway {
            proc: Some(proc),
            origin: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            config_path,
        })
    }

    async fn spawn(config_path: &Path) -> Proc {
        Self::try_spawn(config_path)
            .await
            .unwrap_or_else(|PortTaken| panic!("gateway port is taken"))
    }

    async fn try_spawn(config_path: &Path) -> Result<Proc, PortTaken> {
        let mut cmd = Command::new(gateway_binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(config_path)
            .env("RUST_LOG", "info,portcullis=debug");
        match Proc::try_spawn("gateway", cmd).await {
            Ok(p) => Ok(p),
            Err(output) if bind_failed(&output) => Err(PortTaken),
            Err(output) => panic!("gateway exited before it was ready:\n{}", output.join("\n")),
        }
    }

    /// Everything the gateway printed so far (its logs), one line per entry.
    pub fn logs(&self) -> Vec<String> {
        self.proc.as_ref().map(Proc::logs).unwrap_or_default()
    }

    pub async fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.stop().await;
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.proc = Some(Self::spawn(&self.config_path).await);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }
}

/// IdP + API + gateway with the default configuration.
pub struct Stack {
    pub idp: Idp,
    pub api: Api,
    pub gw: Gateway,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(IdpOptions::default(), "").await
    }

    pub async fn start_with(idp_opts: IdpOptions, extra_config: &str) -> Stack {
        Self::start_config(idp_opts, |port, idp, api| {
            default_config(port, &idp.issuer, &api.url, extra_config)
        })
        .await
    }

    /// IdP + API + gateway; `edit` changes the default configuration text.
    pub async fn start_edited(idp_opts: IdpOptions, edit: impl Fn(String) -> String) -> Stack {
        Self::start_config(idp_opts, |port, idp, api| {
            edit(default_config(port, &idp.issuer, &api.url, ""))
        })
        .await
    }

    /// IdP + API + gateway with the configuration `config(port, idp, api)` makes. Retries on
    /// another port when the gateway's port was taken before it could bind it.
    pub async fn start_config(
        idp_opts: IdpOptions,
        config: impl Fn(u16, &Idp, &Api) -> String,
    ) -> Stack {
        let config = &config;
        on_free_port(|port| {
            let idp_opts = idp_opts.clone();
            async move {
                let idp = Idp::start(&[format!("http://127.0.0.1:{port}")], idp_opts).await;
                let api = Api::start(&idp.issuer).await;
                let gw = Gateway::try_start(port, &config(port, &idp, &api)).await?;
                Ok(Stack { idp, api, gw })
            }
        })
        .await
    }
}

/// A browser-like HTTP client: a cookie jar, no automatic redirects. Every response that
/// goes through [`Browser::get`], [`Browser::get_csrf`] or [`Browser::send`] is recorded
/// (URL, headers, and the body as the test reads it) in [`Browser::seen`], for leak checks.
#[derive(Clone)]
pub struct Browser {
    pub http: Client,
    pub jar: Arc<reqwest::cookie::Jar>,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
}

/// One response a [`Browser`] received.
#[derive(Debug, Clone)]
pub struct SeenResponse {
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The body bytes the test read (all of it, unless the test stopped reading early).
    pub body: Vec<u8>,
}

#[derive(Clone)]
struct Seen {
    url: String,
    headers: Vec<(String, String)>,
    body: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

pub fn csrf() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-csrf", HeaderValue::from_static("1"));
    h
}

impl Browser {
    pub fn new() -> Browser {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let http = Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self::with_client(http, jar)
    }

    /// A browser over a client the test built (e.g. one that trusts a test CA); `http` must
    /// use `jar` as its cookie store.
    pub fn with_client(http: Client, jar: Arc<reqwest::cookie::Jar>) -> Browser {
        Browser {
            http,
            jar,
            seen: Arc::default(),
        }
    }

    pub async fn get(&self, url: &str) -> Response {
        self.send(self.http.get(url)).await
    }

    pub async fn get_csrf(&self, url: &str) -> Response {
        self.send(self.http.get(url).headers(csrf())).await
    }

    /// Sends a request built on [`Browser::http`] and records the response as it is read
    /// (the body is teed while the test consumes it, so streaming stays streaming).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Response {
        use futures_util::StreamExt;
        let r = req.send().await.unwrap();
        let body = Arc::new(std::sync::Mutex::new(Vec::new()));
        self.seen.lock().unwrap().push(Seen {
            url: r.url().to_string(),
            headers: r
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.clone(),
        });
        let mut builder = http::Response::builder()
            .status(r.status())
            .version(r.version());
        for (n, v) in r.headers() {
            builder = builder.header(n, v);
        }
        let stream = r.bytes_stream().inspect(move |chunk| {
            if let Ok(c) = chunk {
                body.lock().unwrap().extend_from_slice(c);
            }
        });
        Response::from(builder.body(reqwest::Body::wrap_stream(stream)).unwrap())
    }

    /// Every response recorded so far.
    pub fn seen(&self) -> Vec<SeenResponse> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| SeenResponse {
                url: s.url.clone(),
                headers: s.headers.clone(),
                body: s.body.lock().unwrap().clone(),
            })
            .collect()
    }

    /// Follows redirects like a browser (GET after 302/303), at most `max` hops; returns the
    /// last response and its URL.
    pub async fn follow(&self, mut url: String, max: usize) -> (Response, String) {
        for _ in 0..max {
            let r = self.get(&url).await;
            if !r.status().is_redirection() {
                return (r, url);
            }
            url = resolve(&url, r.headers().get(LOCATION).unwrap().to_str().unwrap());
        }
        panic!("too many redirects from {url}");
    }

    /// Follows redirects starting from a response.
    pub async fn follow_from(&self, r: Response, from: &str, max: usize) -> (Response, String) {
        if !r.status().is_redirection() {
            return (r, from.to_owned());
        }
        let next = resolve(from, r.headers().get(LOCATION).unwrap().to_str().unwrap());
        self.follow(next, max).await
    }

    /// Starts a login at the gateway and stops at the gateway's callback URL, without
    /// calling it: returns that URL (with `code`, `state`, `iss`).
    pub async fn login_until_callback(&self, gw: &Gateway, user: &str, return_url: &str) -> String {
        let start = gw.url(&format!("/bff/login?returnUrl={}", urlencode(return_url)));
        let r = self.get(&start).await;
        assert_eq!(
            r.status(),
            StatusCode::FOUND,
            "login must redirect to the IdP"
        );
        let mut url = resolve(&start, r.headers()[LOCATION].to_str().unwrap());
        let callback_prefix = gw.url("/signin-oidc");
        for _ in 0..20 {
            if url.starts_with(&callback_prefix) {
                return url;
            }
            let r = self.get(&url).await;
            if r.status().is_redirection() {
                url = resolve(&url, r.headers()[LOCATION].to_str().unwrap());
                continue;
            }
            assert_eq!(r.status(), StatusCode::OK, "unexpected status at {url}");
            let html = r.text().await.unwrap();
            let action = form_action(&html).unwrap_or_else(|| panic!("no form at {url}: {html}"));
            let action = resolve(&url, &action);
            let r = self
                .send(
                    self.http
                        .post(&action)
                        .form(&[("login", user), ("password", user)]),
                )
                .await;
            assert!(
                r.status().is_redirection(),
                "login form POST answered {}",
                r.status()
            );
            url = resolve(&action, r.headers()[LOCATION].to_str().unwrap());
        }
        panic!("login did not reach the callback");
    }

    /// Full login; returns the callback's response (302 to the return URL).
    pub async fn login(&self, gw: &Gateway, user: &str) -> Response {
        let callback = self.login_until_callback(gw, user, "/").await;
        let r = self.get(&callback).await;
        assert_eq!(
            r.status(),
            StatusCode::FOUND,
            "callback must redirect: {:?}",
            r.headers()
        );
        r
    }

    /// `/bff/user` claims as (type, value) pairs.
    pub async fn user(&self, gw: &Gateway) -> Option<Vec<(String, Value)>> {
        let r = self.get_csrf(&gw.url("/bff/user")).await;
        if r.status() == StatusCode::UNAUTHORIZED {
            return None;
        }
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        Some(
            v.as_array()
                .unwrap()
                .iter()
                .map(|c| (c["type"].as_str().unwrap().to_owned(), c["value"].clone()))
                .collect(),
        )
    }

    pub fn cookie_header(&self, url: &str) -> String {
        use reqwest::cookie::CookieStore;
        self.jar
            .cookies(&url.parse().unwrap())
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

pub fn claim<'a>(claims: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    claims.iter().find(|(t, _)| t == name).map(|(_, v)| v)
}

pub fn resolve(base: &str, location: &str) -> String {
    url::Url::parse(base)
        .unwrap()
        .join(location)
        .unwrap()
        .to_string()
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The `action` of the first form in an HTML page.
pub fn form_action(html: &str) -> Option<String> {
    let i = html.find("<form")?;
    let rest = &html[i..];
    let a = rest.find("action=\"")? + 8;
    let end = rest[a..].find('"')?;
    Some(rest[a..a + end].replace("&amp;", "&"))
}

/// Hidden inputs of the first form: (name, value).
pub fn form_inputs(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("<input") {
        rest = &rest[i + 6..];
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        let attr = |name: &str| {
            let key = format!("{name}=\"");
            tag.find(&key).map(|p| {
                let s = &tag[p + key.len()..];
                s[..s.find('"').unwrap_or(s.len())].to_owned()
            })
        };
        if let Some(n) = attr("name") {
            out.push((n, attr("value").unwrap_or_default()));
        }
    }
    out
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub fn set_cookies(r: &Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// Sends raw bytes to the gateway and returns the response head (status line + headers).
pub async fn raw_request(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read_head = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read_head).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

/// Sends a `POST {path}` that declares a 1000-byte body and sends 10 bytes of it, then waits
/// (at most 8 s) for the gateway to answer and close: what it answered, and how long after
/// the head it did.
pub async fn trickled_body(port: u16, path: &str) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\nonly ten b"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), tcp.read_to_end(&mut answer)).await;
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

/// Every secret value the test IdP handed out (`GET /__test/issued`).
#[derive(Debug, Clone, Default)]
pub struct Issued {
    pub authorization_codes: Vec<String>,
    pub access_tokens: Vec<String>,
    pub refresh_tokens: Vec<String>,
    pub id_tokens: Vec<String>,
    pub logout_tokens: Vec<String>,
}

impl Issued {
    /// (kind, value) for every value.
    pub fn all(&self) -> Vec<(&'static str, &str)> {
        let kinds: [(&'static str, &Vec<String>); 5] = [
            ("authorization code", &self.authorization_codes),
            ("access token", &self.access_tokens),
            ("refresh token", &self.refresh_tokens),
            ("ID token", &self.id_tokens),
            ("logout token", &self.logout_tokens),
        ];
        kinds
            .into_iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k, v.as_str())))
            .collect()
    }
}

/// Session cookie values (`bff-auth` / `__Host-bff-auth`) the gateway set in responses the
/// browser recorded.
pub fn session_cookie_values(seen: &[SeenResponse]) -> Vec<String> {
    seen.iter()
        .flat_map(|r| r.headers.iter())
        .filter(|(n, _)| n == "set-cookie")
        .filter_map(|(_, v)| {
            let (name, rest) = v.split_once('=')?;
            let value = rest.split(';').next()?;
            (name.ends_with("bff-auth") && !value.is_empty()).then(|| value.to_owned())
        })
        .collect()
}

/// Asserts that no secret reached the gateway's logs or the browser:
/// - `gateway_logs` hold none of the values the IdP issued (authorization codes, access,
///   refresh, ID and logout tokens) and no session cookie value;
/// - the responses in `browser_seen` that did not come from the IdP (i.e. the gateway's) hold
///   no code, access, refresh or logout token in any header or body; an ID token only in a
///   `Location` to the IdP (`id_token_hint` on the end-session redirect, OpenID Connect
///   RP-Initiated Logout 1.0 §2, which needs it in the browser); a session cookie value only
///   in `Set-Cookie`.
///
/// Compares the real values, not JWT-shaped text, so opaque codes and refresh tokens count.
/// So that it cannot pass vacuously, it requires at least one code, access, refresh and ID
/// token from the IdP and one session cookie in `browser_seen` (call it after a login).
pub async fn assert_no_secret_leaks(
    idp: &Idp,
    gateway_logs: &[String],
    browser_seen: &[SeenResponse],
) {
    let issued = idp.issued().await;
    if let Err(e) = check_no_secret_leaks(&issued, &idp.issuer, gateway_logs, browser_seen) {
        panic!("{e}");
    }
}

/// The check behind [`assert_no_secret_leaks`], on values already fetched: `Err` names the
/// first leak (without the secret).
pub fn check_no_secret_leaks(
    issued: &Issued,
    idp_issuer: &str,
    gateway_logs: &[String],
    browser_seen: &[SeenResponse],
) -> Result<(), String> {
    for (kind, values) in [
        ("authorization codes", &issued.authorization_codes),
        ("access tokens", &issued.access_tokens),
        ("refresh tokens", &issued.refresh_tokens),
        ("ID tokens", &issued.id_tokens),
    ] {
        assert!(
            !values.is_empty(),
            "the IdP reports no issued {kind}: the leak check would check nothing"
        );
    }
    let cookies = session_cookie_values(browser_seen);
    assert!(
        !cookies.is_empty(),
        "no session cookie among the recorded responses: the leak check would check nothing"
    );
    assert!(!gateway_logs.is_empty(), "no gateway logs captured");

    let logs = gateway_logs.join("\n");
    for (kind, value) in issued.all() {
        if logs.contains(value) {
            return Err(format!(
                "an issued {kind} reached the gateway's logs: {}",
                gateway_logs
                    .iter()
                    .find(|l| l.contains(value))
                    .map(|l| l.replace(value, "<SECRET>"))
                    .unwrap_or_default()
            ));
        }
    }
    if cookies.iter().any(|c| logs.contains(c.as_str())) {
        return Err("a session id reached the gateway's logs".into());
    }

    let mut checked = 0;
    for r in browser_seen
        .iter()
        .filter(|r| !r.url.starts_with(idp_issuer))
    {
        checked += 1;
        let body = String::from_utf8_lossy(&r.body);
        for (kind, value) in issued.all() {
            if body.contains(value) {
                return Err(format!(
                    "an issued {kind} reached the browser in the body of {}",
                    r.url
                ));
            }
            for (name, v) in &r.headers {
                let allowed = kind == "ID token" && name == "location" && v.starts_with(idp_issuer);
                if !allowed && v.contains(value) {
                    return Err(format!(
                        "an issued {kind} reached the browser in the {name} header of {}",
                        r.url
                    ));
                }
            }
        }
        for cookie in &cookies {
            if body.contains(cookie.as_str()) {
                return Err(format!(
                    "a session id reached the browser in the body of {}",
                    r.url
                ));
            }
            for (name, v) in &r.headers {
                if name != "set-cookie" && v.contains(cookie.as_str()) {
                    return Err(format!(
                        "a session id reached the browser in the {name} header of {}",
                        r.url
                    ));
                }
            }
        }
    }
    assert!(checked > 0, "no gateway response was recorded");
    Ok(())
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throw-away CA (`ca.pem`) and a leaf for 127.0.0.1 (`cert.pem`, `key.pem`) in `dir`.
pub fn make_certificates(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=portcullis test CA",
    ]);
    openssl(&ca, dir);
    let mut csr = vec!["req", "-new"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&csr, dir);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
        dir,
    );
}

/// A Node upstream of another stack (`testing/upstream/framing.mjs`, plain `node:http`)
/// started with `options` (`--framing`, `--body`, `--end-delay-ms`, ...); returns the process
/// and its URL.
pub async fn framing_upstream(options: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new("node");
    cmd.current_dir(repo_root())
        .args(["testing/upstream/framing.mjs", "--port", "0"])
        .args(options);
    let proc = Proc::spawn("upstream", cmd).await;
    let port = proc.ready["port"].as_u64().expect("port in READY");
    (proc, format!("http://127.0.0.1:{port}"))
}

/// The DPoP-verifying resource server (`testing/upstream/dpop-api.mjs`): checks the proof
/// (signature, `htm`, `htu`, `ath`, `jti` replay), the `cnf.jkt` binding, and demands a nonce;
/// `stats()` is what it saw.
pub struct DpopApi {
    _proc: Proc,
    pub url: String,
}

impl DpopApi {
    pub async fn start(issuer: &str) -> DpopApi {
        Self::start_with(issuer, &[]).await
    }

    /// With extra command-line options (`--broken-challenge`, `--no-nonce`).
    pub async fn start_with(issuer: &str, options: &[&str]) -> DpopApi {
        let mut cmd = Command::new("node");
        cmd.current_dir(repo_root())
            .args([
                "testing/upstream/dpop-api.mjs",
                "--port",
                "0",
                "--issuer",
                issuer,
            ])
            .args(options);
        let proc = Proc::spawn("dpop-api", cmd).await;
        let port = proc.ready["port"].as_u64().unwrap();
        DpopApi {
            _proc: proc,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/__stats", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// `portcullis check --config <config>`: its exit code and standard error.
pub fn run_check(config: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(gateway_binary())
        .arg("check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
