//! The TOML configuration file: raw schema, then validation into typed settings.
//!
//! Every problem is collected (unknown keys, type errors per section, semantic errors) and
//! reported at once; a typo must never silently disable a security setting, so unknown keys
//! are errors. Secrets may come from the file, from a file next to it, or from the
//! environment, and never appear in `Debug` output or logs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::cookie::{CookieSettings, SameSite};
use portcullis::csrf::AntiForgery;
use portcullis::frontend::FrontendSettings;
use portcullis::settings::{
    ClientAuthSettings, GatewaySettings, NamedClientSettings, OidcSettings, ParMode, ResponseMode,
    RouteSettings, SecurityProfile, SessionSettings, TokenPolicy, TokenSettings,
};
use portcullis_token::Secret;
mod route_access;
mod spa;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::limits::{self, Limits, RawSize};

/// Environment variables the binary reads.
pub const ENV_CLIENT_SECRET: &str = "PORTCULLIS_OIDC_CLIENT_SECRET";
pub const ENV_SESSION_KEYS: &str = "PORTCULLIS_SESSION_KEYS";
pub const ENV_ADMIN_TOKEN: &str = "PORTCULLIS_ADMIN_TOKEN";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    public_url: Option<String>,
    data_dir: Option<PathBuf>,
    base_path: Option<String>,
    callback_path: Option<String>,
    signed_out_callback_path: Option<String>,
    trust_forwarded_headers: Option<bool>,
    diagnostics: Option<bool>,
    log_format: Option<String>,
    tls: Option<RawTls>,
    // Limits (crate::limits).
    max_header_size: Option<RawSize>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_request_body: Option<RawSize>,
    max_connections: Option<usize>,
    workers: Option<usize>,
    http2_max_concurrent_streams: Option<u32>,
    http2_max_pending_reset_streams: Option<usize>,
    shutdown_delay: Option<String>,
    shutdown_grace: Option<String>,
    cors: Option<spa::RawCors>,
    allowed_hosts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    client_auth: Option<String>,
    private_key_file: Option<PathBuf>,
    private_key_alg: Option<String>,
    private_key_kid: Option<String>,
    scopes: Option<Vec<String>>,
    resource: Option<String>,
    response_mode: Option<String>,
    extra_authorize_params: Option<BTreeMap<String, String>>,
    revoke_refresh_token_on_logout: Option<bool>,
    clock_skew: Option<String>,
    fetch_userinfo: Option<bool>,
    backchannel_logout_all_sessions: Option<bool>,
    trusted_audiences: Option<Vec<String>>,
    timeout: Option<String>,
    dpop: Option<RawDpop>,
    par: Option<String>,
    profile: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDpop {
    enabled: Option<bool>,
    key_file: Option<PathBuf>,
    key_alg: Option<String>,
    per_session: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    store: Option<String>,
    idle_timeout: Option<String>,
    absolute_timeout: Option<String>,
    cookie_name: Option<String>,
    same_site: Option<String>,
    anonymous_user: Option<String>,
    keys: Option<Vec<String>>,
    keys_file: Option<PathBuf>,
    cleanup_interval: Option<String>,
    max_pending_logins: Option<usize>,
    login_timeout: Option<String>,
    partition: Option<String>,
    cache_ttl: Option<String>,
    cache_capacity: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAntiForgery {
    header_name: Option<String>,
    header_value: Option<String>,
    websocket_origins: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    refresh_before_expiry: Option<String>,
    client_token_buffer: Option<String>,
    #[serde(default)]
    clients: Vec<RawNamedClient>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamedClient {
    name: String,
    client_id: String,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    client_auth: Option<String>,
    token_endpoint: Option<String>,
    scope: Option<String>,
    resource: Option<String>,
    #[serde(default)]
    extra: BTreeMap<String, String>,
    dpop: Option<RawClientDpop>,
}

/// `[[tokens.clients]] dpop = { enabled, key_file, key_alg }`: the client's own DPoP key.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientDpop {
    enabled: Option<bool>,
    key_file: Option<PathBuf>,
    key_alg: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: String,
    upstream: String,
    token: Option<String>,
    anti_forgery: Option<bool>,
    resource: Option<String>,
    scope: Option<String>,
    audience: Option<String>,
    refresh_before_expiry: Option<String>,
    client: Option<String>,
    timeout: Option<String>,
    max_body: Option<RawSize>,
    require_claims: Option<BTreeMap<String, route_access::OneOrMany>>,
    require_acr: Option<Vec<String>>,
    max_auth_age: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

/// Everything the binary needs besides the library settings.
#[derive(Debug)]
pub struct Config {
    pub gateway: GatewaySettings,
    /// `[[frontends]]`, each already merged with the top-level settings.
    pub frontends: Vec<FrontendConfig>,
    pub listen: SocketAddr,
    pub store_url: String,
    pub data_dir: PathBuf,
    pub keys: KeySource,
    /// Where the SPA comes from (`[spa]`).
    pub spa: portcullis::spa::SpaSource,
    /// The CSP hash of the script `[spa.index_html_inject]` adds, for `check` to print.
    pub spa_script_hash: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub log_json: bool,
    /// Limits of the public listener against hostile traffic.
    pub limits: Limits,
    /// The operators' listener: session administration and metrics.
    pub admin: Option<AdminConfig>,
    /// Warnings to log at start-up (insecure but allowed choices).
    pub warnings: Vec<String>,
    /// `[telemetry]`: OpenTelemetry trace export.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// The DPoP key file, when `[oidc.dpop]` is enabled (read or generated at start-up; the
    /// key then goes into `gateway.oidc.dpop`).
    pub dpop_key: Option<DpopKeyFile>,
    /// The DPoP key files of `[[tokens.clients]]` with `dpop` enabled, by client name (the
    /// keys go into `gateway.tokens.clients[..].dpop_key` at start-up).
    pub client_dpop_keys: Vec<(String, DpopKeyFile)>,
}

/// One `[[frontends]]` entry: selection, effective settings, and its static part (the same
/// value `[spa]` gives the default frontend).
#[derive(Debug)]
pub struct FrontendConfig {
    pub settings: FrontendSettings,
    /// Where the frontend's SPA comes from (`static_dir`, `index_html_url` or
    /// `static_assets_url`, read as the `[spa]` keys `dir`, `index_html_url`,
    /// `static_assets_url`).
    pub spa: portcullis::spa::SpaSource,
    /// The CSP hash of the script its `index_html_inject` adds, for `check` to print.
    pub spa_script_hash: Option<String>,
    /// Its DPoP key file, when its merged `[oidc.dpop]` is enabled.
    pub dpop_key: Option<DpopKeyFile>,
    /// Its named clients' DPoP key files, by client name.
    pub client_dpop_keys: Vec<(String, DpopKeyFile)>,
}

/// Where the gateway's DPoP key lives.
#[derive(Debug, Clone)]
pub struct DpopKeyFile {
    /// A private JWK file (mode 0600).
    pub path: PathBuf,
    /// Algorithm of a key generated when the file does not exist yet.
    pub alg: portcullis_token::SigningAlg,
    /// `false` when the operator named the file (`key_file`): it must exist.
    pub generate: bool,
    /// `[oidc.dpop] per_session = true`: the algorithm of the key made at each login (the
    /// file's key then serves client credentials and sessions from before the switch).
    /// `None`: the file's key for everything. Always `None` for named clients.
    pub session_key_alg: Option<portcullis_token::SigningAlg>,
}

/// The admin listener.
#[derive(Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Secret,
}

/// Where the session encryption keys come from.
#[derive(Debug)]
pub enum KeySource {
    /// `id:base64` specs from config or environment, current first.
    Inline(Vec<Secret>),
    /// A key file (one `id:base64` per line, current first); generated if missing.
    File(PathBuf),
}

/// Reads and validates a configuration file. `Err` lists every problem found.
pub fn load(path: &Path) -> Result<Config, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &base_dir, &|name| std::env::var(name).ok())
}

/// Parses configuration text. Relative paths are taken from `base_dir`.
pub fn parse(
    text: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<String>> {
    let mut table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return Err(vec![format!("not valid TOML: {e}")]),
    };
    let raw_frontends = table.remove("frontends");
    let top = parse_table(&table, base_dir, env);
    let top_errors: Vec<String> = top.as_ref().err().cloned().unwrap_or_default();
    let top_warnings: Vec<String> = top.as_ref().map(|c| c.warnings.clone()).unwrap_or_default();
    let mut errors = top_errors.clone();
    let mut warnings = Vec::new();
    let mut frontends = Vec::new();
    match raw_frontends {
        None => {}
        Some(toml::Value::Array(items)) => {
            if top.is_err() {
                // No frontend parses without a valid top level, so the checks between them
                // (`portcullis::frontend::validate`) cannot run: report the duplicates that
                // the raw entries already show, with the rest.
                errors.extend(crate::frontends::raw_duplicates(&items));
            }
            for (i, item) in items.into_iter().enumerate() {
                let parsed = crate::frontends::parse_frontend(
                    &table,
                    item,
                    i,
                    base_dir,
                    env,
                    &mut |e| {
                        if !top_errors.contains(&e.1) {
                            errors.push(format!("{}: {}", e.0, e.1));
                        }
                    },
                    &mut |w| {
                        if !top_warnings.contains(&w.1) {
                            warnings.push(format!("{}: {}", w.0, w.1));
                        }
                    },
                );
                if let Some(f) = parsed {
                    frontends.push(f);
                }
            }
        }
        Some(_) => errors.push("`frontends` must be an array of tables ([[frontends]])".into()),
    }
    let mut config = match top {
        Ok(c) => c,
        Err(_) => return Err(errors),
    };
    // Duplicates and clashes between the frontends that parsed, reported with the rest.
    let settings: Vec<FrontendSettings> = frontends
        .iter()
        .map(|f: &FrontendConfig| f.settings.clone())
        .collect();
    errors.extend(portcullis::frontend::validate(&config.gateway, &settings));
    if !errors.is_empty() {
        return Err(errors);
    }
    // The listener bounds bodies by path before frontend selection; a frontend route whose
    // `max_body` is above the default must get past it (the route itself then applies its
    // exact limit: RouteSettings::max_body).
    for f in &frontends {
        let prefix = f.settings.match_path.as_deref().unwrap_or("");
        for r in &f.settings.settings.routes {
            if let Some(limit) = r.max_body.filter(|l| *l > config.limits.max_request_body) {
                config
                    .limits
                    .route_body_limits
                    .push((format!("{prefix}{}", r.path), limit));
            }
        }
    }
    config.frontends = frontends;
    config.warnings.extend(warnings);
    Ok(config)
}

/// Routes that reach the same upstream URL with different access rules: a request through
/// the laxer route reaches everything the stricter one protects (rules guard routes whose
/// upstream lies *below* another route's, see `portcullis::proxy::Route::guards_for`, but two
/// equal upstreams cannot be told apart). One warning per pair.
fn same_upstream_different_rules(routes: &[RouteSettings]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (i, a) in routes.iter().enumerate() {
        for b in &routes[i + 1..] {
            let same = a.upstream.as_str().trim_end_matches('/')
                == b.upstream.as_str().trim_end_matches('/');
            if same && a.access != b.access {
                warnings.push(format!(
                    "routes {} and {} reach the same upstream {} with different require_claims/require_acr/max_auth_age: a request through either reaches what the other protects; give the protected API its own upstream URL (a path below the other's is guarded) or the same rules",
                    a.path, b.path, a.upstream
                ));
            }
        }
    }
    warnings
}

/// Parses one configuration table (the top level, or a frontend's merged view of it).
pub(crate) fn parse_table(
    table: &toml::Table,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<String>> {
    let mut errors = Vec::new();
    for key in table.keys() {
        if ![
            "server",
            "oidc",
            "session",
            "anti_forgery",
            "tokens",
            "routes",
            "spa",
            "admin",
            "telemetry",
        ]
        .contains(&key.as_str())
        {
            errors.push(format!("unknown key `{key}`"));
        }
    }
    let server: RawServer = section(table, "server", &mut errors).unwrap_or_default();
    let oidc: RawOidc = section(table, "oidc", &mut errors).unwrap_or_default();
    let session: RawSession = section(table, "session", &mut errors).unwrap_or_default();
    let af: RawAntiForgery = section(table, "anti_forgery", &mut errors).unwrap_or_default();
    let tokens: RawTokens = section(table, "tokens", &mut errors).unwrap_or_default();
    let spa: spa::RawSpa = section(table, "spa", &mut errors).unwrap_or_default();
    let raw_admin: Option<RawAdmin> = section(table, "admin", &mut errors);
    let raw_telemetry: crate::telemetry::RawTelemetry =
        section(table, "telemetry", &mut errors).unwrap_or_default();
    let telemetry = crate::telemetry::TelemetryConfig::from_raw(raw_telemetry, &mut errors);
    let mut raw_routes: Vec<RawRoute> = Vec::new();
    match table.get("routes") {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(r) = value(item.clone(), &format!("routes[{i}]"), &mut errors) {
                    raw_routes.push(r);
                }
            }
        }
        Some(_) => errors.push("`routes` must be an array of tables ([[routes]])".into()),
    }

    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }
    };
    let mut warnings = Vec::new();

    // [server]
    let listen = server
        .listen
        .as_deref()
        .unwrap_or("127.0.0.1:8080")
        .parse::<SocketAddr>()
        .map_err(|_| errors.push("server.listen must be an address like 127.0.0.1:8080".into()))
        .ok();
    let public_url = match server.public_url.as_deref() {
        None => {
            errors.push("server.public_url is required (the origin the browser uses)".into());
            None
        }
        Some(u) => match Url::parse(u) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host().is_some()
                    && url.query().is_none() =>
            {
                Some(url)
            }
            _ => {
                errors.push(format!(
                    "server.public_url {u:?} must be an http(s) URL without query"
                ));
                None
            }
        },
    };
    let base_path = normalize_base(
        server.base_path.as_deref().unwrap_or("/bff"),
        "server.base_path",
        &mut errors,
    );
    let callback_path = path_setting(
        server.callback_path.as_deref().unwrap_or("/signin-oidc"),
        "server.callback_path",
        &mut errors,
    );
    let signed_out_callback_path = path_setting(
        server
            .signed_out_callback_path
            .as_deref()
            .unwrap_or("/signout-callback-oidc"),
        "server.signed_out_callback_path",
        &mut errors,
    );
    let data_dir = resolve(
        server
            .data_dir
            .as_deref()
            .unwrap_or(Path::new("portcullis-data")),
    );
    let log_json = match server.log_format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            errors.push(format!(
                "server.log_format {other:?} must be \"text\" or \"json\""
            ));
            false
        }
    };
    let mut server_limits = server_limits(&server, &mut errors);
    let tls = server.tls.map(|t| (resolve(&t.cert), resolve(&t.key)));
    let cors = spa::cors(server.cors, &mut errors);
    if let (Some(url), Some(_)) = (&public_url, &tls) {
        if url.scheme() != "https" {
            warnings.push("server.tls is set but public_url is http://".into());
        }
    }

    // [oidc]
    let issuer = match oidc.issuer.as_deref() {
        None => {
            errors.push("oidc.issuer is required".into());
            None
        }
        Some(i) => {
            match Url::parse(i) {
                Ok(u)
                    if u.scheme() == "https"
                        || (u.scheme() == "http" && portcullis::cookie::is_loopback_url(&u)) =>
                {
                    if u.scheme() == "http" {
                        warnings.push(format!("oidc.issuer {i} uses plain http (allowed for loopback development only)"));
                    }
                    Some(i.to_owned())
                }
                _ => {
                    errors.push(format!(
                        "oidc.issuer {i:?} must be an https URL (http only for loopback hosts)"
                    ));
                    None
                }
            }
        }
    };
    let client_id = oidc.client_id.clone().filter(|c| !c.is_empty());
    if client_id.is_none() {
        errors.push("oidc.client_id is required".into());
    }
    let client_auth = client_auth_settings(
        "oidc",
        oidc.client_auth.as_deref(),
        oidc.client_secret.as_deref(),
        oidc.client_secret_file.as_deref().map(resolve),
        env(ENV_CLIENT_SECRET),
        oidc.private_key_file.as_deref().map(resolve),
        oidc.private_key_alg.as_deref(),
        oidc.private_key_kid.clone(),
        &mut errors,
    );
    let scopes = oidc
        .scopes
        .clone()
        .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "offline_access".into()]);
    if !scopes.iter().any(|s| s == "openid") {
        errors.push("oidc.scopes must contain \"openid\"".into());
    }
    if !scopes.iter().any(|s| s == "offline_access") {
        warnings.push("oidc.scopes lacks \"offline_access\": most IdPs will not issue refresh tokens, sessions end when the access token expires".into());
    }
    let clock_skew = duration(
        oidc.clock_skew.as_deref(),
        "oidc.clock_skew",
        Duration::from_secs(60),
        &mut errors,
    );
    let http_timeout = duration(
        oidc.timeout.as_deref(),
        "oidc.timeout",
        Duration::from_secs(10),
        &mut errors,
    );
    let (dpop_key, par, profile) = security_settings(
        &oidc,
        client_auth.as_ref(),
        &data_dir,
        &resolve,
        &mut errors,
    );

    // [session]
    let store_url = session
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("sessions.db").display()));
    let store_url = match store_url.strip_prefix("sqlite://") {
        Some(p) if !p.starts_with('/') && !p.starts_with(":memory:") => {
            format!("sqlite://{}", resolve(Path::new(p)).display())
        }
        _ => store_url,
    };
    let idle_timeout = duration(
        session.idle_timeout.as_deref(),
        "session.idle_timeout",
        Duration::from_secs(8 * 3600),
        &mut errors,
    );
    let absolute_timeout = duration(
        session.absolute_timeout.as_deref(),
        "session.absolute_timeout",
        Duration::from_secs(7 * 86400),
        &mut errors,
    );
    if idle_timeout > absolute_timeout {
        warnings.push(
            "session.idle_timeout is longer than session.absolute_timeout; the absolute limit wins"
                .into(),
        );
    }
    let same_site = match session
        .same_site
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("strict") => SameSite::Strict,
        Some("lax") => SameSite::Lax,
        Some("none") => SameSite::None,
        Some(other) => {
            errors.push(format!(
                "session.same_site {other:?} must be strict, lax or none"
            ));
            SameSite::Strict
        }
    };
    let anonymous_user_is_null = match session.anonymous_user.as_deref() {
        None | Some("401") | Some("unauthorized") => false,
        Some("null") => true,
        Some(other) => {
            errors.push(format!(
                "session.anonymous_user {other:?} must be \"401\" or \"null\""
            ));
            false
        }
    };
    let keys = match (env(ENV_SESSION_KEYS), session.keys, session.keys_file) {
        (Some(v), _, _) => KeySource::Inline(
            v.split(',')
                .map(|s| Secret::new(s.trim()))
                .filter(|s| !s.expose_secret().is_empty())
                .collect(),
        ),
        (None, Some(k), None) => KeySource::Inline(k.into_iter().map(Secret::new).collect()),
        (None, None, Some(f)) => KeySource::File(resolve(&f)),
        (None, None, None) => KeySource::File(data_dir.join("keys")),
        (None, Some(_), Some(_)) => {
            errors.push("session.keys and session.keys_file are mutually exclusive".into());
            KeySource::File(data_dir.join("keys"))
        }
    };
    if let KeySource::Inline(specs) = &keys {
        if specs.is_empty() {
            errors.push("session keys are configured but empty".into());
        }
        for spec in specs {
            if let Err(e) = portcullis::session::Key::parse(spec.expose_secret()) {
                errors.push(format!("session key: {e}"));
            }
        }
    }
    let session_settings = SessionSettings {
        idle_timeout,
        absolute_timeout,
        partition: session
            .partition
            .clone()
            .unwrap_or_else(|| "default".into()),
        anonymous_user_is_null,
        cleanup_interval: duration(
            session.cleanup_interval.as_deref(),
            "session.cleanup_interval",
            Duration::from_secs(300),
            &mut errors,
        ),
        max_pending_logins: session.max_pending_logins.unwrap_or(5).clamp(1, 20),
        login_timeout: duration(
            session.login_timeout.as_deref(),
            "session.login_timeout",
            Duration::from_secs(600),
            &mut errors,
        ),
        cache_ttl: duration(
            session.cache_ttl.as_deref(),
            "session.cache_ttl",
            Duration::from_secs(10),
            &mut errors,
        ),
        cache_capacity: session.cache_capacity.unwrap_or(100_000),
    };
    let response_mode = match oidc.response_mode.as_deref() {
        None | Some("query") => ResponseMode::Query,
        Some("form_post") => ResponseMode::FormPost,
        Some(other) => {
            errors.push(format!(
                "oidc.response_mode {other:?} must be \"query\" or \"form_post\""
            ));
            ResponseMode::Query
        }
    };
    let cookies = public_url.as_ref().and_then(|u| {
        let c = CookieSettings::for_public_url(u, session.cookie_name.as_deref(), same_site)
            .map_err(|es| errors.extend(es.into_iter().map(|e| format!("session cookie: {e}"))))
            .ok()?;
        if response_mode == ResponseMode::FormPost {
            return c
                .with_cross_site_login_cookies()
                .map_err(|e| errors.push(format!("oidc.response_mode: {e}")))
                .ok();
        }
        Some(c)
    });
    if let Some(u) = public_url.as_ref().filter(|u| u.scheme() == "https") {
        let name = session.cookie_name.as_deref().unwrap_or("__Host-bff-auth");
        if !name.starts_with("__Host-") && !name.starts_with("__Secure-") {
            warnings.push(format!(
                "session.cookie_name {name:?} has no __Host- prefix: on {} the browser lets other subdomains and plain-http pages set or shadow the session cookie. Prefer \"__Host-{name}\"",
                u.origin().ascii_serialization()
            ));
        }
        if same_site == SameSite::None {
            warnings.push(
                "session.same_site = \"none\": the session cookie is sent with cross-site requests, so the anti-forgery header is the only protection against cross-site request forgery. Prefer \"strict\" or \"lax\""
                    .into(),
            );
        }
    }
    if let Some(u) = &public_url {
        if u.scheme() == "http" && portcullis::cookie::is_loopback_url(u) {
            warnings.push(format!(
                "public_url {u} is plain http: cookies lose the __Host- prefix and Secure. Use this for local development only"
            ));
        }
    }

    let allowed_hosts: Vec<String> = server
        .allowed_hosts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|h| {
            portcullis::frontend::normalize_host(&h)
                .map_err(|e| errors.push(format!("server.allowed_hosts: {e}")))
                .ok()
        })
        .collect();

    // [anti_forgery]
    let anti_forgery = AntiForgery::new(
        af.header_name.as_deref().unwrap_or("X-CSRF"),
        af.header_value.as_deref().unwrap_or("1"),
    )
    .map_err(|e| errors.push(format!("anti_forgery: {e}")))
    .unwrap_or_default();

    // [tokens]
    let mut named_clients = Vec::new();
    let mut client_dpop_keys = Vec::new();
    for (i, c) in tokens.clients.into_iter().enumerate() {
        let ctx = format!("tokens.clients[{i}]");
        let auth = client_auth_settings(
            &ctx,
            c.client_auth.as_deref(),
            c.client_secret.as_deref(),
            c.client_secret_file.as_deref().map(resolve),
            None,
            None,
            None,
            None,
            &mut errors,
        );
        let token_endpoint = c.token_endpoint.as_deref().and_then(|u| {
            Url::parse(u)
                .map_err(|_| errors.push(format!("{ctx}.token_endpoint {u:?} is not a URL")))
                .ok()
        });
        if c.name == portcullis::token::DEFAULT_CLIENT {
            errors.push(format!(
                "{ctx}.name \"default\" is reserved for the gateway's own client"
            ));
        }
        if let Some(file) = client_dpop_key(
            &ctx,
            &c.name,
            c.dpop.as_ref(),
            &data_dir,
            &resolve,
            &mut errors,
        ) {
            client_dpop_keys.push((c.name.clone(), file));
        }
        if let Some(auth) = auth {
            named_clients.push(NamedClientSettings {
                name: c.name,
                token_endpoint,
                client_id: c.client_id,
                client_auth: auth,
                scope: c.scope,
                resource: c.resource,
                extra: c.extra.into_iter().collect(),
                // Set from `client_dpop_keys` at start-up (the file may not exist yet).
                dpop_key: None,
            });
        }
    }
    let token_settings = TokenSettings {
        refresh_before_expiry: duration(
            tokens.refresh_before_expiry.as_deref(),
            "tokens.refresh_before_expiry",
            Duration::from_secs(60),
            &mut errors,
        ),
        client_token_buffer: duration(
            tokens.client_token_buffer.as_deref(),
            "tokens.client_token_buffer",
            Duration::from_secs(60),
            &mut errors,
        ),
        clients: named_clients,
    };

    // Paths the gateway answers itself. With `base_path = "/"` the management endpoints sit
    // at the root one by one; otherwise the whole base path is the gateway's.
    let mut reserved_paths: Vec<String> = vec![
        callback_path.clone(),
        signed_out_callback_path.clone(),
        "/healthz".into(),
        "/readyz".into(),
    ];
    let management: Vec<String> = portcullis::bff::MANAGEMENT_ENDPOINTS
        .iter()
        .map(|p| portcullis::join_path(&base_path, p))
        .collect();
    if base_path.is_empty() {
        reserved_paths.extend(management.iter().cloned());
    } else {
        reserved_paths.push(base_path.clone());
    }
    for (name, path) in [
        ("server.callback_path", &callback_path),
        ("server.signed_out_callback_path", &signed_out_callback_path),
    ] {
        let taken = management
            .iter()
            .chain(["/healthz".to_owned(), "/readyz".to_owned()].iter())
            .any(|m| m == path);
        if taken {
            errors.push(format!(
                "{name} {path} is also a management endpoint of the gateway"
            ));
        }
    }
    if callback_path == signed_out_callback_path {
        errors.push(format!(
            "server.callback_path and server.signed_out_callback_path are both {callback_path}"
        ));
    }

    // [[routes]]
    let mut routes: Vec<RouteSettings> = Vec::new();
    for (i, r) in raw_routes.into_iter().enumerate() {
        let ctx = format!("routes[{i}]");
        let path = path_setting(
            r.path.trim_end_matches('/'),
            &format!("{ctx}.path"),
            &mut errors,
        );
        if path.is_empty() || path == "/" {
            errors.push(format!("{ctx}.path must not be the root"));
        }
        for reserved in &reserved_paths {
            let reserved = reserved.as_str();
            if reserved.is_empty() {
                continue;
            }
            if path == reserved
                || path.starts_with(&format!("{reserved}/"))
                || reserved.starts_with(&format!("{path}/"))
            {
                errors.push(format!(
                    "{ctx}.path {path} overlaps the gateway's own endpoint {reserved}"
                ));
            }
        }
        if routes.iter().any(|o| o.path == path) {
            errors.push(format!("{ctx}.path {path} is defined twice"));
        }
        let upstream = match Url::parse(&r.upstream) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none() =>
            {
                Some(u)
            }
            _ => {
                errors.push(format!(
                    "{ctx}.upstream {:?} must be an http(s) URL without query or fragment",
                    r.upstream
                ));
                None
            }
        };
        let token = match TokenPolicy::parse(r.token.as_deref().unwrap_or("user")) {
            Some(t) => t,
            None => {
                errors.push(format!(
                    "{ctx}.token must be one of none, user, user_or_none, client, user_or_client, exchange"
                ));
                TokenPolicy::User
            }
        };
        if let Some(client) = &r.client {
            if client != portcullis::token::DEFAULT_CLIENT
                && !token_settings.clients.iter().any(|c| &c.name == client)
            {
                errors.push(format!(
                    "{ctx}.client {client:?} is not defined in [[tokens.clients]]"
                ));
            }
        }
        let anti_forgery = r.anti_forgery.unwrap_or(true);
        if !anti_forgery {
            warnings.push(format!(
                "INSECURE: {ctx} ({path}) has anti_forgery = false: cross-site requests can reach this API with the user's session"
            ));
        }
        let refresh = r.refresh_before_expiry.as_deref().map(|d| {
            duration(
                Some(d),
                &format!("{ctx}.refresh_before_expiry"),
                Duration::ZERO,
                &mut errors,
            )
        });
        let timeout = duration(
            r.timeout.as_deref(),
            &format!("{ctx}.timeout"),
            Duration::from_secs(30),
            &mut errors,
        );
        let max_body = match &r.max_body {
            Some(max_body) => {
                let limit =
                    limits::size(Some(max_body), &format!("{ctx}.max_body"), 0, &mut errors);
                server_limits.route_body_limits.push((path.clone(), limit));
                limit
            }
            None => server_limits.max_request_body,
        };
        let access = route_access::route_access(
            route_access::RawAccess {
                require_claims: r.require_claims,
                require_acr: r.require_acr,
                max_auth_age: r.max_auth_age,
            },
            &ctx,
            &mut errors,
            &mut warnings,
        );
        if let Some(upstream) = upstream {
            routes.push(RouteSettings {
                path,
                upstream,
                token,
                anti_forgery,
                resource: r.resource,
                scope: r.scope,
                audience: r.audience,
                refresh_before_expiry: refresh,
                client: r.client,
                timeout,
                access,
                max_body: Some(max_body),
            });
        }
    }
    warnings.extend(same_upstream_different_rules(&routes));

    let spa = spa::spa_source(spa, "spa", &resolve, &mut errors, &mut warnings);
    let spa_script_hash = spa::injected_script_hash(&spa);

    let admin = raw_admin.and_then(|a| {
        let admin_listen = a
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:9090")
            .parse::<SocketAddr>()
            .map_err(|_| errors.push("admin.listen must be an address like 127.0.0.1:9090".into()))
            .ok()?;
        if Some(admin_listen) == listen {
            errors.push("admin.listen must differ from server.listen".into());
        }
        let token = match (env(ENV_ADMIN_TOKEN), a.token_file, a.token) {
            (Some(t), _, _) => t,
            (None, Some(f), _) => std::fs::read_to_string(resolve(&f))
                .map(|t| t.trim().to_owned())
                .map_err(|e| errors.push(format!("admin.token_file: {e}")))
                .ok()?,
            (None, None, Some(t)) => t,
            (None, None, None) => String::new(),
        };
        if token.len() < 16 {
            errors.push(format!("admin needs a token of at least 16 characters (admin.token, admin.token_file or {ENV_ADMIN_TOKEN})"));
            return None;
        }
        Some(AdminConfig { listen: admin_listen, token: Secret::new(token) })
    });

    // The gateway adds the frontend's own origin (when none is configured) and the CORS
    // origins at run time.
    let websocket_origins = af.websocket_origins.unwrap_or_default();
    if !errors.is_empty() {
        return Err(errors);
    }
    // All required values are present when no error was recorded.
    let (
        Some(public_url),
        Some(issuer),
        Some(client_id),
        Some(client_auth),
        Some(cookies),
        Some(listen),
    ) = (public_url, issuer, client_id, client_auth, cookies, listen)
    else {
        return Err(vec!["incomplete configuration".into()]);
    };
    Ok(Config {
        gateway: GatewaySettings {
            public_url,
            base_path,
            callback_path,
            signed_out_callback_path,
            oidc: OidcSettings {
                issuer,
                client_id,
                client_auth,
                scopes,
                extra_authorize_params: oidc
                    .extra_authorize_params
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                resource: oidc.resource,
                response_mode,
                revoke_refresh_token_on_logout: oidc.revoke_refresh_token_on_logout.unwrap_or(true),
                clock_skew,
                fetch_userinfo: oidc.fetch_userinfo.unwrap_or(false),
                backchannel_logout_all_sessions: oidc
                    .backchannel_logout_all_sessions
                    .unwrap_or(false),
                trusted_audiences: oidc.trusted_audiences.unwrap_or_default(),
                http_timeout,
                // Set from `dpop_key` at start-up (the file may not exist yet).
                dpop: None,
                par,
                profile,
            },
            session: session_settings,
            cookies,
            anti_forgery,
            routes,
            tokens: token_settings,
            diagnostics: server.diagnostics.unwrap_or(false),
            trust_forwarded_headers: server.trust_forwarded_headers.unwrap_or(false),
            websocket_origins,
            allowed_hosts,
            cors,
        },
        frontends: Vec::new(),
        listen,
        store_url,
        data_dir,
        keys,
        spa,
        spa_script_hash,
        tls,
        log_json,
        limits: server_limits,
        admin,
        warnings,
        telemetry,
        dpop_key,
        client_dpop_keys,
    })
}

/// `[[tokens.clients]] dpop`: the named client's key file, when enabled. Default file:
/// `<data_dir>/dpop-client-<name>.jwk` (generated at first start; ES256 unless `key_alg`).
fn client_dpop_key(
    ctx: &str,
    name: &str,
    raw: Option<&RawClientDpop>,
    data_dir: &Path,
    resolve: &dyn Fn(&Path) -> PathBuf,
    errors: &mut Vec<String>,
) -> Option<DpopKeyFile> {
    let raw = raw?;
    if raw.enabled == Some(false) {
        return None;
    }
    let alg = match raw.key_alg.as_deref() {
        None => portcullis_token::SigningAlg::ES256,
        Some(a) => match a.parse::<portcullis_token::SigningAlg>() {
            Ok(alg) => alg,
            Err(_) => {
                errors.push(format!(
                    "{ctx}.dpop.key_alg {a:?} must be ES256, PS256, RS256 or EdDSA"
                ));
                return None;
            }
        },
    };
    if let Some(path) = raw.key_file.as_deref().map(resolve) {
        return match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| portcullis_token::DpopKey::from_jwk(&t).map_err(|e| e.to_string()))
        {
            Ok(key) => Some(DpopKeyFile {
                path,
                alg: key.alg(),
                generate: false,
                session_key_alg: None,
            }),
            Err(e) => {
                errors.push(format!("{ctx}.dpop.key_file {}: {e}", path.display()));
                None
            }
        };
    }
    if matches!(
        alg,
        portcullis_token::SigningAlg::RS256 | portcullis_token::SigningAlg::PS256
    ) {
        errors.push(format!(
            "{ctx}.dpop.key_alg RS256/PS256 needs {ctx}.dpop.key_file (RSA keys are not generated)"
        ));
        return None;
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        || name.starts_with('.')
    {
        errors.push(format!(
            "{ctx}.dpop: the client name {name:?} cannot name a key file; give {ctx}.dpop.key_file"
        ));
        return None;
    }
    Some(DpopKeyFile {
        path: data_dir.join(format!("dpop-client-{name}.jwk")),
        alg,
        generate: true,
        session_key_alg: None,
    })
}

/// The `[server]` limits (see [`Limits`] for their meaning and defaults).
fn server_limits(server: &RawServer, errors: &mut Vec<String>) -> Limits {
    let d = Limits::default();
    let max_header_size = limits::size(
        server.max_header_size.as_ref(),
        "server.max_header_size",
        d.max_header_size as u64,
        errors,
    );
    if !(limits::MIN_HEADER_SIZE as u64..=16 * 1024 * 1024).contains(&max_header_size) {
        errors.push(format!(
            "server.max_header_size must be between {} bytes and 16MiB",
            limits::MIN_HEADER_SIZE
        ));
    }
    let positive = |v: Option<&str>, name: &str, default: Duration, errors: &mut Vec<String>| {
        let t = duration(v, name, default, errors);
        if t.is_zero() {
            errors.push(format!("{name} must be longer than zero"));
        }
        t
    };
    let limits = Limits {
        max_header_size: usize::try_from(max_header_size).unwrap_or(d.max_header_size),
        header_read_timeout: positive(
            server.header_read_timeout.as_deref(),
            "server.header_read_timeout",
            d.header_read_timeout,
            errors,
        ),
        idle_timeout: positive(
            server.idle_timeout.as_deref(),
            "server.idle_timeout",
            d.idle_timeout,
            errors,
        ),
        max_request_body: limits::size(
            server.max_request_body.as_ref(),
            "server.max_request_body",
            d.max_request_body,
            errors,
        ),
        route_body_limits: Vec::new(),
        max_connections: server.max_connections.unwrap_or(d.max_connections),
        http2_max_concurrent_streams: server
            .http2_max_concurrent_streams
            .unwrap_or(d.http2_max_concurrent_streams),
        http2_max_pending_reset_streams: server
            .http2_max_pending_reset_streams
            .unwrap_or(d.http2_max_pending_reset_streams),
        shutdown_delay: duration(
            server.shutdown_delay.as_deref(),
            "server.shutdown_delay",
            d.shutdown_delay,
            errors,
        ),
        shutdown_grace: duration(
            server.shutdown_grace.as_deref(),
            "server.shutdown_grace",
            d.shutdown_grace,
            errors,
        ),
        workers: server.workers.unwrap_or(d.workers),
    };
    for (name, value) in [
        ("server.max_connections", limits.max_connections),
        (
            "server.http2_max_concurrent_streams",
            limits.http2_max_concurrent_streams as usize,
        ),
        (
            "server.http2_max_pending_reset_streams",
            limits.http2_max_pending_reset_streams,
        ),
    ] {
        if value == 0 {
            errors.push(format!("{name} must be at least 1"));
        }
    }
    limits
}

/// `[oidc.dpop]`, `oidc.par` and `oidc.profile`, with every conflict the FAPI 2.0 preset
/// finds (FAPI 2.0 Security Profile §5.2, §5.3, §5.4).
fn security_settings(
    oidc: &RawOidc,
    client_auth: Option<&ClientAuthSettings>,
    data_dir: &Path,
    resolve: &dyn Fn(&Path) -> PathBuf,
    errors: &mut Vec<String>,
) -> (Option<DpopKeyFile>, ParMode, SecurityProfile) {
    let profile = match oidc.profile.as_deref() {
        None | Some("default") => SecurityProfile::Default,
        Some("fapi2") => SecurityProfile::Fapi2,
        Some(other) => {
            errors.push(format!(
                "oidc.profile {other:?} must be \"default\" or \"fapi2\""
            ));
            SecurityProfile::Default
        }
    };
    let fapi = profile == SecurityProfile::Fapi2;
    let par = match oidc.par.as_deref() {
        None if fapi => ParMode::Required,
        None | Some("off") => ParMode::Off,
        Some("auto") => ParMode::Auto,
        Some("required") => ParMode::Required,
        Some(other) => {
            errors.push(format!(
                "oidc.par {other:?} must be \"auto\", \"required\" or \"off\""
            ));
            ParMode::Off
        }
    };
    if fapi && par != ParMode::Required {
        errors.push(format!(
            "oidc.profile = \"fapi2\" requires pushed authorization requests, but oidc.par = {:?} (remove it or set \"required\")",
            oidc.par.as_deref().unwrap_or_default()
        ));
    }
    let raw = oidc.dpop.as_ref();
    let enabled = raw.and_then(|d| d.enabled).unwrap_or(fapi || raw.is_some());
    if fapi && !enabled {
        errors.push("oidc.profile = \"fapi2\" requires sender-constrained access tokens, but oidc.dpop.enabled = false".into());
    }
    let per_session = raw.and_then(|d| d.per_session) == Some(true);
    if per_session && !enabled {
        errors.push(
            "oidc.dpop.per_session = true needs DPoP: remove oidc.dpop.enabled = false".into(),
        );
    }
    let alg = match raw.and_then(|d| d.key_alg.as_deref()) {
        None => Some(portcullis_token::SigningAlg::ES256),
        Some(a) => match a.parse::<portcullis_token::SigningAlg>() {
            Ok(alg) => Some(alg),
            Err(_) => {
                errors.push(format!(
                    "oidc.dpop.key_alg {a:?} must be ES256, PS256, RS256 or EdDSA"
                ));
                None
            }
        },
    };
    let key_file = raw.and_then(|d| d.key_file.as_deref()).map(resolve);
    // Per-session keys are generated at each login: ES256 or EdDSA, `key_alg` (default ES256).
    let session_key_alg = match alg {
        Some(alg @ (portcullis_token::SigningAlg::ES256 | portcullis_token::SigningAlg::EdDSA))
            if per_session =>
        {
            Some(alg)
        }
        Some(alg) if per_session => {
            errors.push(format!("oidc.dpop.per_session = true generates a key at each login: key_alg must be ES256 or EdDSA, not {alg:?}"));
            None
        }
        _ => None,
    };
    let mut dpop_key = None;
    if let (true, Some(alg)) = (enabled, alg) {
        if fapi && alg == portcullis_token::SigningAlg::RS256 {
            errors.push("oidc.profile = \"fapi2\" allows PS256, ES256 or EdDSA DPoP keys, but oidc.dpop.key_alg = \"RS256\"".into());
        }
        match key_file {
            Some(path) => {
                match std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| {
                        portcullis_token::DpopKey::from_jwk(&t).map_err(|e| e.to_string())
                    }) {
                    Ok(key) => {
                        if fapi && key.alg() == portcullis_token::SigningAlg::RS256 {
                            errors.push("oidc.profile = \"fapi2\" allows PS256, ES256 or EdDSA DPoP keys, but oidc.dpop.key_file is an RS256 key".into());
                        }
                        dpop_key = Some(DpopKeyFile {
                            path,
                            alg: key.alg(),
                            generate: false,
                            session_key_alg,
                        });
                    }
                    Err(e) => errors.push(format!("oidc.dpop.key_file {}: {e}", path.display())),
                }
            }
            None => {
                if matches!(
                    alg,
                    portcullis_token::SigningAlg::RS256 | portcullis_token::SigningAlg::PS256
                ) && !per_session
                {
                    errors.push("oidc.dpop.key_alg RS256/PS256 needs oidc.dpop.key_file (RSA keys are not generated)".into());
                }
                dpop_key = Some(DpopKeyFile {
                    path: data_dir.join("dpop.jwk"),
                    alg,
                    generate: true,
                    session_key_alg,
                });
            }
        }
    }
    if fapi {
        match client_auth {
            Some(ClientAuthSettings::PrivateKeyJwt { alg, .. })
                if !portcullis::settings::FAPI2_ALGS.contains(&alg.as_str()) =>
            {
                errors.push(format!("oidc.profile = \"fapi2\" allows PS256, ES256 or EdDSA client assertions, but oidc.private_key_alg = {alg:?}"));
            }
            Some(ClientAuthSettings::PrivateKeyJwt { .. }) => {}
            Some(_) => errors.push("oidc.profile = \"fapi2\" forbids client secrets: use client_auth = \"private_key_jwt\" with oidc.private_key_file".into()),
            None => {}
        }
        if oidc.extra_authorize_params.as_ref().is_some_and(|p| {
            p.keys().any(|k| {
                ["response_type", "response_mode", "request", "request_uri"].contains(&k.as_str())
            })
        }) {
            errors.push("oidc.profile = \"fapi2\": oidc.extra_authorize_params may not set response_type, response_mode, request or request_uri".into());
        }
    }
    (dpop_key, par, profile)
}

/// Deserializes one top-level table, recording unknown keys and type errors.
fn section<T: DeserializeOwned>(
    table: &toml::Table,
    name: &str,
    errors: &mut Vec<String>,
) -> Option<T> {
    let v = table.get(name)?.clone();
    value(v, name, errors)
}

fn value<T: DeserializeOwned>(v: toml::Value, ctx: &str, errors: &mut Vec<String>) -> Option<T> {
    match T::deserialize(v) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(format!("{ctx}: {}", e.message().trim()));
            None
        }
    }
}

fn duration(v: Option<&str>, name: &str, default: Duration, errors: &mut Vec<String>) -> Duration {
    match v {
        None => default,
        Some(s) => humantime::parse_duration(s).unwrap_or_else(|_| {
            errors.push(format!(
                "{name} {s:?} is not a duration like \"30s\", \"8h\" or \"7d\""
            ));
            default
        }),
    }
}

fn path_setting(p: &str, name: &str, errors: &mut Vec<String>) -> String {
    if !p.starts_with('/')
        || p.contains("//")
        || p.contains(['?', '#', '{', '}', '*', ' '])
        || p.split('/').any(|s| s == "." || s == "..")
    {
        errors.push(format!("{name} {p:?} must be an absolute path like /api"));
    }
    p.to_owned()
}

/// `/bff` stays `/bff`; `/` and `/bff/` are tolerated (→ `` and `/bff`).
fn normalize_base(p: &str, name: &str, errors: &mut Vec<String>) -> String {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return String::new();
    }
    path_setting(trimmed, name, errors)
}

#[allow(clippy::too_many_arguments)]
fn client_auth_settings(
    ctx: &str,
    method: Option<&str>,
    secret: Option<&str>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    key_file: Option<PathBuf>,
    key_alg: Option<&str>,
    key_kid: Option<String>,
    errors: &mut Vec<String>,
) -> Option<ClientAuthSettings> {
    let method = method.unwrap_or(if key_file.is_some() {
        "private_key_jwt"
    } else {
        "client_secret_basic"
    });
    if method == "private_key_jwt" {
        let Some(file) = key_file else {
            errors.push(format!(
                "{ctx}.client_auth = private_key_jwt needs {ctx}.private_key_file"
            ));
            return None;
        };
        let pem = match std::fs::read_to_string(&file) {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("{ctx}.private_key_file {}: {e}", file.display()));
                return None;
            }
        };
        let alg = key_alg.unwrap_or("RS256");
        if !["RS256", "PS256", "ES256", "EdDSA"].contains(&alg) {
            errors.push(format!(
                "{ctx}.private_key_alg {alg:?} must be RS256, PS256, ES256 or EdDSA"
            ));
            return None;
        }
        return Some(ClientAuthSettings::PrivateKeyJwt {
            key_pem: Secret::new(pem),
            alg: alg.to_owned(),
            kid: key_kid,
        });
    }
    let secret = match (secret_env, secret_file, secret) {
        (Some(s), _, _) => Some(s),
        (None, Some(f), _) => match std::fs::read_to_string(&f) {
            Ok(s) => Some(s.trim().to_owned()),
            Err(e) => {
                errors.push(format!("{ctx}.client_secret_file {}: {e}", f.display()));
                return None;
            }
        },
        (None, None, Some(s)) => Some(s.to_owned()),
        (None, None, None) => None,
    };
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        errors.push(format!(
            "{ctx}.client_secret (or client_secret_file, or {ENV_CLIENT_SECRET}) is required"
        ));
        return None;
    };
    match method {
        "client_secret_basic" => Some(ClientAuthSettings::ClientSecretBasic(Secret::new(secret))),
        "client_secret_post" => Some(ClientAuthSettings::ClientSecretPost(Secret::new(secret))),
        other => {
            errors.push(format!("{ctx}.client_auth {other:?} must be client_secret_basic, client_secret_post or private_key_jwt"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
public_url = "https://app.example.com"
[oidc]
issuer = "https://idp.example.com"
client_id = "spa-bff"
client_secret = "s3cret"
scopes = ["openid", "profile", "offline_access", "api"]
[[routes]]
path = "/api"
upstream = "https://api.internal/v1"
token = "user"
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn dpop_par_and_profile_defaults_and_spellings() {
        let c = parse(MINIMAL, Path::new("/etc/portcullis"), &no_env).unwrap();
        assert!(c.dpop_key.is_none(), "DPoP is opt-in");
        assert_eq!(c.gateway.oidc.par, ParMode::Off);
        assert_eq!(c.gateway.oidc.profile, SecurityProfile::Default);

        // `[oidc.dpop]` must come before `[[routes]]`: insert it there.
        let with = MINIMAL
            .replace(
                "client_id = \"spa-bff\"",
                "client_id = \"spa-bff\"\npar = \"auto\"",
            )
            .replace("[[routes]]", "[oidc.dpop]\nkey_alg = \"EdDSA\"\n[[routes]]");
        let c = parse(&with, Path::new("/etc/portcullis"), &no_env).unwrap();
        assert_eq!(c.gateway.oidc.par, ParMode::Auto);
        let key = c.dpop_key.expect("a [oidc.dpop] table enables DPoP");
        assert_eq!(
            key.path,
            Path::new("/etc/portcullis/portcullis-data/dpop.jwk")
        );
        assert_eq!(key.alg, portcullis_token::SigningAlg::EdDSA);
        assert!(key.generate);

        let bad = MINIMAL.replace(
            "client_id = \"spa-bff\"",
            "client_id = \"spa-bff\"\npar = \"sometimes\"\nprofile = \"fapi3\"",
        );
        let errors = parse(&bad, Path::new("/etc/portcullis"), &no_env).unwrap_err();
        assert!(errors.iter().any(|e| e.contains("oidc.par")), "{errors:?}");
        assert!(
            errors.iter().any(|e| e.contains("oidc.profile")),
            "{errors:?}"
        );
    }

    #[test]
    fn dpop_per_session_and_per_client_keys() {
        let dir = Path::new("/etc/portcullis");
        // One gateway key is the default; per_session adds a key per login of key_alg.
        let with = |dpop: &str, clients: &str| {
            MINIMAL.replace(
                "[[routes]]",
                &format!("[oidc.dpop]\n{dpop}\n[tokens]\n{clients}\n[[routes]]"),
            )
        };
        let c = parse(&with("enabled = true", ""), dir, &no_env).unwrap();
        assert_eq!(c.dpop_key.unwrap().session_key_alg, None);
        let c = parse(
            &with("per_session = true\nkey_alg = \"EdDSA\"", ""),
            dir,
            &no_env,
        )
        .unwrap();
        let key = c.dpop_key.unwrap();
        assert_eq!(
            key.session_key_alg,
            Some(portcullis_token::SigningAlg::EdDSA)
        );
        assert_eq!(key.path, dir.join("portcullis-data/dpop.jwk"));
        for (dpop, error) in [
            (
                "per_session = true\nkey_alg = \"RS256\"",
                "key_alg must be ES256 or EdDSA",
            ),
            (
                "per_session = true\nenabled = false",
                "per_session = true needs DPoP",
            ),
        ] {
            let errors = parse(&with(dpop, ""), dir, &no_env).unwrap_err();
            assert!(
                errors.iter().any(|e| e.contains(error)),
                "{dpop}: {errors:?}"
            );
        }

        // Named clients: `dpop = { ... }` gives the client its own key file.
        let clients = r#"
[[tokens.clients]]
name = "reports"
client_id = "reports-client"
client_secret = "x"
dpop = { enabled = true }
[[tokens.clients]]
name = "orders"
client_id = "orders-client"
client_secret = "x"
dpop = { enabled = true, key_alg = "EdDSA" }
[[tokens.clients]]
name = "plain"
client_id = "plain-client"
client_secret = "x"
"#;
        let c = parse(&with("enabled = true", clients), dir, &no_env).unwrap();
        let files: Vec<_> = c
            .client_dpop_keys
            .iter()
            .map(|(n, f)| (n.as_str(), f.path.clone(), f.alg))
            .collect();
        assert_eq!(
            files,
            [
                (
                    "reports",
                    dir.join("portcullis-data/dpop-client-reports.jwk"),
                    portcullis_token::SigningAlg::ES256
                ),
                (
                    "orders",
                    dir.join("portcullis-data/dpop-client-orders.jwk"),
                    portcullis_token::SigningAlg::EdDSA
                ),
            ]
        );
        let bad = clients.replace(
            "dpop = { enabled = true }",
            "dpop = { enabled = true, key_alg = \"PS256\" }",
        );
        let errors = parse(&with("enabled = true", &bad), dir, &no_env).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("tokens.clients[0].dpop.key_alg RS256/PS256 needs")),
            "{errors:?}"
        );
        let missing = clients.replace(
            "dpop = { enabled = true }",
            "dpop = { enabled = true, key_file = \"/nonexistent/k.jwk\" }",
        );
        let errors = parse(&with("enabled = true", &missing), dir, &no_env).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("tokens.clients[0].dpop.key_file /nonexistent/k.jwk")),
            "{errors:?}"
        );
    }

    #[test]
    fn routes_with_the_same_upstream_and_different_rules_warn() {
        let text = MINIMAL.to_owned()
            + r#"
[[routes]]
path = "/open"
upstream = "https://api.example.com/"
token = "user"
[[routes]]
path = "/admin-api"
upstream = "https://api.example.com"
token = "user"
require_claims = { role = ["admin"] }
[[routes]]
path = "/admin-only"
upstream = "https://api.example.com/admin/"
token = "user"
require_claims = { role = ["admin"] }
"#;
        let c = parse(&text, Path::new("/"), &no_env).unwrap();
        let hits: Vec<_> = c
            .warnings
            .iter()
            .filter(|w| w.contains("reach the same upstream"))
            .collect();
        assert_eq!(hits.len(), 1, "{:?}", c.warnings);
        assert!(hits[0].contains("/open and /admin-api"), "{}", hits[0]);
    }

    #[test]
    fn minimal_config_parses_with_secure_defaults() {
        let c = parse(MINIMAL, Path::new("/etc/portcullis"), &no_env).unwrap();
        assert_eq!(c.gateway.cookies.session_name(), "__Host-bff-auth");
        assert!(c.gateway.cookies.is_secure());
        assert_eq!(c.gateway.base_path, "/bff");
        assert!(c.gateway.routes[0].anti_forgery);
        assert!(c.gateway.oidc.revoke_refresh_token_on_logout);
        assert_eq!(
            c.store_url,
            "sqlite:///etc/portcullis/portcullis-data/sessions.db"
        );
        assert!(!format!("{:?}", c.gateway).contains("s3cret"));
    }

    #[test]
    fn trusted_audiences_default_to_none_and_are_read() {
        let c = parse(MINIMAL, Path::new("/etc/portcullis"), &no_env).unwrap();
        assert!(c.gateway.oidc.trusted_audiences.is_empty());
        let text = MINIMAL.replacen("[oidc]\n", "[oidc]\ntrusted_audiences = [\"api-gw\"]\n", 1);
        assert_ne!(text, MINIMAL);
        let c = parse(&text, Path::new("/etc/portcullis"), &no_env).unwrap();
        assert_eq!(c.gateway.oidc.trusted_audiences, vec!["api-gw".to_owned()]);
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let text = r#"
typo_section = 1
[server]
public_url = "http://app.example.com"
listen = "nope"
[oidc]
issuer = "ftp://x"
client_id = "a"
scops = ["openid"]
[session]
idle_timeout = "forever"
[[routes]]
path = "/bff"
upstream = "not a url"
token = "admin"
"#;
        let errors = parse(text, Path::new("/"), &no_env).unwrap_err();
        let joined = errors.join("\n");
        for needle in [
            "typo_section",
            "listen",
            "oidc",
            "idle_timeout",
            "upstream",
            "token must be",
            "overlaps",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        assert!(errors.len() >= 6, "{errors:#?}");
    }

    #[test]
    fn unknown_keys_are_errors_not_ignored() {
        let text = MINIMAL.replace("token = \"user\"", "token = \"user\"\nanti_forgrey = false");
        let errors = parse(&text, Path::new("/"), &no_env).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains("anti_forgrey")),
            "{errors:?}"
        );
    }

    #[test]
    fn secret_from_environment_wins() {
        let text = MINIMAL.replace("client_secret = \"s3cret\"\n", "");
        assert!(parse(&text, Path::new("/"), &no_env).is_err());
        let env = |n: &str| (n == ENV_CLIENT_SECRET).then(|| "from-env".to_owned());
        let c = parse(&text, Path::new("/"), &env).unwrap();
        match c.gateway.oidc.client_auth {
            ClientAuthSettings::ClientSecretBasic(s) => assert_eq!(s.expose_secret(), "from-env"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn base_path_slash_and_trailing_slash_are_tolerated() {
        for (given, want) in [("/", ""), ("/bff/", "/bff"), ("/auth", "/auth")] {
            let text = MINIMAL.replace("[oidc]", &format!("base_path = \"{given}\"\n[oidc]"));
            assert_eq!(
                parse(&text, Path::new("/"), &no_env)
                    .unwrap()
                    .gateway
                    .base_path,
                want
            );
        }
    }

    #[test]
    fn form_post_needs_https_and_makes_login_cookies_samesite_none() {
        let text = MINIMAL.replace(
            "client_id = \"spa-bff\"",
            "client_id = \"spa-bff\"\nresponse_mode = \"form_post\"",
        );
        let c = parse(&text, Path::new("/"), &no_env).unwrap();
        assert_eq!(c.gateway.oidc.response_mode, ResponseMode::FormPost);
        let v = c
            .gateway
            .cookies
            .login_cookie("__Host-bff-login.x", "v", 60);
        assert!(v.to_str().unwrap().contains("SameSite=None"));
        let http = text.replace("https://app.example.com", "http://127.0.0.1:8080");
        let errors = parse(&http, Path::new("/"), &no_env).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains("response_mode")),
            "{errors:?}"
        );
    }

    #[test]
    fn route_overlapping_management_endpoint_is_error() {
        let with = |server: &str, routes: &str| {
            MINIMAL
                .replace("[oidc]", &format!("{server}\n[oidc]"))
                .replace(
                    "[[routes]]\npath = \"/api\"\nupstream = \"https://api.internal/v1\"\ntoken = \"user\"\n",
                    routes,
                )
        };
        let route = |path: &str| {
            format!("[[routes]]\npath = \"{path}\"\nupstream = \"https://api.internal/v1\"\n")
        };
        // base_path = "/" puts every management endpoint at the root.
        for endpoint in [
            "/user",
            "/login",
            "/logout",
            "/silent-login",
            "/backchannel",
            "/user/x",
        ] {
            let text = with("base_path = \"/\"", &route(endpoint));
            let errors = parse(&text, Path::new("/"), &no_env).unwrap_err();
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains("overlaps the gateway's own endpoint")),
                "{endpoint}: {errors:?}"
            );
        }
        // Not an overlap: another segment, or the default base path.
        for (server, path) in [
            ("base_path = \"/\"", "/users"),
            ("", "/user"),
            ("base_path = \"/\"", "/api"),
        ] {
            let text = with(server, &route(path));
            assert!(
                parse(&text, Path::new("/"), &no_env).is_ok(),
                "{server} {path}"
            );
        }
        // Callback paths, under the base path, twice the same route: every error at once.
        let text = with(
            "callback_path = \"/bff/user\"\nsigned_out_callback_path = \"/bff/user\"",
            &format!("{}{}{}", route("/bff/x"), route("/api"), route("/api/")),
        );
        let errors = parse(&text, Path::new("/"), &no_env).unwrap_err();
        let joined = errors.join("\n");
        for needle in [
            "server.callback_path /bff/user is also a management endpoint",
            "server.signed_out_callback_path /bff/user is also a management endpoint",
            "are both /bff/user",
            "routes[0].path /bff/x overlaps",
            "routes[2].path /api is defined twice",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn weakened_cookie_protections_warn() {
        let session =
            |lines: &str| MINIMAL.replace("[[routes]]", &format!("[session]\n{lines}\n[[routes]]"));
        let c = parse(MINIMAL, Path::new("/"), &no_env).unwrap();
        assert!(
            c.warnings.is_empty(),
            "defaults are quiet: {:?}",
            c.warnings
        );
        for ok in [
            "cookie_name = \"__Host-sid\"",
            "cookie_name = \"__Secure-sid\"",
            "same_site = \"lax\"",
        ] {
            let c = parse(&session(ok), Path::new("/"), &no_env).unwrap();
            assert!(c.warnings.is_empty(), "{ok}: {:?}", c.warnings);
        }
        let c = parse(
            &session("cookie_name = \"sid\"\nsame_site = \"none\""),
            Path::new("/"),
            &no_env,
        )
        .unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("\"sid\" has no __Host- prefix")),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("same_site = \"none\"")),
            "{:?}",
            c.warnings
        );
        // On loopback http the prefix cannot exist: no prefix warning there.
        let http = session("cookie_name = \"sid\"")
            .replace("https://app.example.com", "http://127.0.0.1:8080");
        let c = parse(&http, Path::new("/"), &no_env).unwrap();
        assert!(
            !c.warnings.iter().any(|w| w.contains("no __Host- prefix")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn anti_forgery_opt_out_warns_loudly() {
        let text = MINIMAL.replace("token = \"user\"", "token = \"user\"\nanti_forgery = false");
        let c = parse(&text, Path::new("/"), &no_env).unwrap();
        assert!(!c.gateway.routes[0].anti_forgery);
        assert!(c.warnings.iter().any(|w| w.starts_with("INSECURE")));
    }

    #[test]
    fn limits_default_when_absent_and_are_read_with_units() {
        let c = parse(MINIMAL, Path::new("/etc/portcullis"), &no_env).unwrap();
        assert_eq!(c.limits.max_header_size, 64 * 1024);
        assert_eq!(c.limits.max_request_body, 10 * 1024 * 1024);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
        assert!(c.limits.route_body_limits.is_empty());
        let text = MINIMAL.replace(
            "public_url = \"https://app.example.com\"",
            "public_url = \"https://app.example.com\"\nmax_header_size = \"16KiB\"\nmax_request_body = 1000\nheader_read_timeout = \"2s\"\nidle_timeout = \"5s\"\nmax_connections = 7\nhttp2_max_concurrent_streams = 9\nshutdown_grace = \"3s\"",
        ) + "max_body = \"1MiB\"\n";
        let c = parse(&text, Path::new("/etc/portcullis"), &no_env).unwrap();
        assert_eq!(c.limits.max_header_size, 16 * 1024);
        assert_eq!(c.limits.max_request_body, 1000);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.max_connections, 7);
        assert_eq!(c.limits.http2_max_concurrent_streams, 9);
        assert_eq!(c.limits.shutdown_grace, Duration::from_secs(3));
        assert_eq!(
            c.limits.route_body_limits,
            vec![("/api".to_owned(), 1024 * 1024)]
        );
    }

    #[test]
    fn bad_limits_are_each_reported() {
        let text = MINIMAL.replace(
            "public_url = \"https://app.example.com\"",
            "public_url = \"https://app.example.com\"\nmax_header_size = 100\nmax_request_body = \"lots\"\nheader_read_timeout = \"0s\"\nmax_connections = 0",
        ) + "max_body = \"1 parsec\"\n";
        let errors = parse(&text, Path::new("/etc/portcullis"), &no_env).unwrap_err();
        for needle in [
            "server.max_header_size",
            "server.max_request_body",
            "server.header_read_timeout",
            "server.max_connections",
            "routes[0].max_body",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(needle)),
                "{needle}: {errors:?}"
            );
        }
    }

    const ADMIN: &str = r#"
[[frontends]]
name = "admin"
match_path = "/admin"
[frontends.oidc]
client_id = "admin-spa"
client_secret = "admin-s3cret"
scopes = ["openid", "admin-api"]
[[frontends.routes]]
path = "/api"
upstream = "https://admin-api.internal/"
"#;

    #[test]
    fn frontend_overrides_oidc_fields_and_gets_its_own_cookie_partition_and_routes() {
        let env = |n: &str| (n == ENV_CLIENT_SECRET).then(|| "top-from-env".to_owned());
        let c = parse(
            &format!("{MINIMAL}{ADMIN}"),
            Path::new("/etc/portcullis"),
            &env,
        )
        .unwrap();
        assert_eq!(c.frontends.len(), 1);
        let f = &c.frontends[0].settings;
        assert_eq!(
            (f.name.as_str(), f.match_path.as_deref()),
            ("admin", Some("/admin"))
        );
        let s = &f.settings;
        assert_eq!(s.oidc.client_id, "admin-spa");
        assert_eq!(s.oidc.issuer, "https://idp.example.com", "inherited");
        assert_eq!(
            s.oidc.scopes,
            vec!["openid".to_owned(), "admin-api".to_owned()]
        );
        match &s.oidc.client_auth {
            ClientAuthSettings::ClientSecretBasic(x) => {
                assert_eq!(
                    x.expose_secret(),
                    "admin-s3cret",
                    "not the top-level (env) secret"
                )
            }
            other => panic!("{other:?}"),
        }
        match &c.gateway.oidc.client_auth {
            ClientAuthSettings::ClientSecretBasic(x) => {
                assert_eq!(x.expose_secret(), "top-from-env")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.cookies.session_name(), "__Host-bff-auth-admin");
        assert_eq!(s.session.partition, "admin");
        assert_eq!(c.gateway.session.partition, "default");
        assert_eq!(s.routes.len(), 1, "top-level routes are not inherited");
        assert_eq!(s.routes[0].upstream.as_str(), "https://admin-api.internal/");
        // Without a client of its own, a frontend keeps the top-level client and secret.
        let plain = "[[frontends]]\nname = \"b\"\nmatch_host = \"B.example.com\"\n";
        let c = parse(&format!("{MINIMAL}{plain}"), Path::new("/"), &env).unwrap();
        let s = &c.frontends[0].settings;
        assert_eq!(s.match_host.as_deref(), Some("b.example.com"));
        assert_eq!(s.settings.oidc.client_id, "spa-bff");
        assert!(s.settings.routes.is_empty());
    }

    #[test]
    fn check_reports_every_frontend_error_at_once() {
        let text = format!(
            r#"{MINIMAL}{ADMIN}
[[frontends]]
name = "admin"
match_path = "/admin"
[[frontends]]
name = "bad name!"
match_host = "x.example.com"
[[frontends]]
name = "nocriteria"
[[frontends]]
name = "two-sources"
match_host = "t.example.com"
static_dir = "/nonexistent"
index_html_url = "https://cdn.example.com/index.html"
[[frontends]]
name = "cookies"
match_host = "c.example.com"
typo = 1
[frontends.session]
cookie_name = "__host-sid"
store = "memory"
[[frontends]]
name = "dupcookie"
match_host = "d.example.com"
[frontends.session]
cookie_name = "__Host-bff-auth"
[[frontends]]
name = "default"
match_path = "/d"
[[frontends]]
name = "shadow"
match_path = "/bff/x"
[[frontends]]
name = "badcors"
match_path = "/bc"
[frontends.cors]
allowed_origins = ["https://app.example.com/"]
"#
        );
        let errors = parse(&text, Path::new("/"), &no_env).unwrap_err();
        let joined = errors.join("\n");
        for needle in [
            "frontend \"admin\": name is used twice",
            "same match_host and match_path as frontend \"admin\"",
            "(bad name!): name must be",
            "nocriteria\": needs match_host, match_path or both",
            "more than one static source (static_dir, index_html_url)",
            "spells the __Host- prefix in another case",
            "session.store is shared by all frontends",
            "unknown key `typo`",
            "session cookie \"__Host-bff-auth\" is also frontend \"default\"'s",
            "(default): name must be",
            "overlaps the default frontend's endpoint /bff",
            "(badcors): cors.allowed_origins: \"https://app.example.com/\" is not a serialized origin",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    /// `[server.cors]` reaches every frontend; `[frontends.cors]` replaces its keys for one
    /// (`allowed_origins = []` turns CORS off there).
    #[test]
    fn server_cors_applies_to_every_frontend_unless_it_overrides_a_key() {
        let text = MINIMAL.replace(
            "[oidc]",
            "[server.cors]\nallowed_origins = [\"https://spa.example.com\"]\nmax_age = \"1m\"\n[oidc]",
        ) + r#"
[[frontends]]
name = "inherits"
match_path = "/i"
[[frontends]]
name = "own"
match_path = "/o"
[frontends.cors]
allowed_origins = ["https://own.example.com"]
[[frontends]]
name = "off"
match_path = "/x"
[frontends.cors]
allowed_origins = []
"#;
        let c = parse(&text, Path::new("/"), &no_env).unwrap();
        let origins = |s: &GatewaySettings| {
            s.cors.as_ref().map(|c| {
                (
                    c.allowed_origins
                        .iter()
                        .map(|o| o.to_str().unwrap().to_owned())
                        .collect::<Vec<_>>(),
                    c.max_age,
                )
            })
        };
        let minute = Duration::from_secs(60);
        assert_eq!(
            origins(&c.gateway),
            Some((vec!["https://spa.example.com".to_owned()], minute))
        );
        assert_eq!(
            origins(&c.frontends[0].settings.settings),
            Some((vec!["https://spa.example.com".to_owned()], minute))
        );
        assert_eq!(
            origins(&c.frontends[1].settings.settings),
            Some((vec!["https://own.example.com".to_owned()], minute)),
            "own origins, the top-level max_age"
        );
        assert_eq!(origins(&c.frontends[2].settings.settings), None);
    }

    /// With an invalid top level no frontend parses; duplicate names and criteria are still
    /// reported with the other errors.
    #[test]
    fn frontend_duplicates_are_reported_even_when_the_top_level_is_invalid() {
        let text = r#"
[server]
public_url = "https://app.example.com"
[oidc]
client_id = "x"
client_secret = "y"
[[frontends]]
name = "a"
match_path = "/a"
[[frontends]]
name = "a"
match_path = "/a/"
[[frontends]]
name = "b"
match_host = "B.example.com"
[[frontends]]
name = "c"
match_host = "b.example.com"
"#;
        let joined = parse(text, Path::new("/"), &no_env).unwrap_err().join("\n");
        for needle in [
            "oidc.issuer is required",
            "frontend \"a\": name is used twice",
            "frontend \"a\": same match_host and match_path as frontend \"a\"",
            "frontend \"c\": same match_host and match_path as frontend \"b\"",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }
}
