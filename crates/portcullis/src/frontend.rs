//! Frontends: several single-page apps behind one gateway, each with its own OpenID Connect
//! client, cookie, session partition, API routes and static files (Duende.BFF v4's
//! multi-frontend model).
//!
//! A request is resolved to one frontend *before* anything else runs (see `Selector`); every
//! handler then works with that frontend's [`Frontend`] context only, so a session, login
//! transaction or token of one frontend can never serve another.
//!
//! The top-level settings are the implicit **default** frontend (named [`DEFAULT_FRONTEND`]):
//! a single-frontend configuration behaves exactly as before frontends existed. Extra
//! frontends are selected by host, path prefix or both:
//!
//! | request | frontends `a` (host `a.example`), `b` (path `/b`), `c` (host `a.example`, path `/c`) |
//! |---|---|
//! | `a.example/c/x` | `c` (host and longest path) |
//! | `a.example/x`, `a.example/b` | `a` (host only) |
//! | `app.example/b/x` | `b` (path only) |
//! | `app.example/x` | the default frontend |
//!
//! A path frontend sees paths relative to its prefix: for `/admin` the login endpoint is
//! `/admin/bff/login`, the redirect URI `…/admin/signin-oidc`, its routes and static files sit
//! under `/admin`, and `bff:logout_url` is `/admin/bff/logout?sid=…`.
//!
//! Isolation: each frontend has its own session partition (sessions record it; a session of
//! another partition is refused as stale even when its cookie value is replayed under this
//! frontend's cookie name), its own session cookie name, its own login-transaction cookie
//! prefix, its own token service (user-token refresh, client-credentials cache of its own
//! clients) and its own back-channel logout endpoint (a logout token for its client ends only
//! its sessions). OpenID Provider clients (discovery and JWKS caches) are shared per issuer.
//!
//! Cookies of path frontends keep `Path=/` and the `__Host-` prefix (which requires `Path=/`)
//! and differ by name only: the prefix protects them from being set by sibling subdomains,
//! which a `Path=/admin` cookie could not have. Browsers therefore send every frontend's
//! cookie to every frontend on the same host; each frontend reads only its own name, and the
//! proxy strips every frontend's cookies from upstream responses.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use portcullis_session::SessionStore;
use portcullis_token::SharedClock;
use sha2::{Digest, Sha256};

use crate::gateway::join_path;
use crate::oidc::Provider;
use crate::proxy::{Forwarder, RouteTable};
use crate::session::{KeyRing, Sessions};
use crate::settings::{ClientAuthSettings, GatewaySettings};
use crate::token::TokenService;

/// Name of the implicit frontend the top-level settings describe. Reserved: no configured
/// frontend may use it.
pub const DEFAULT_FRONTEND: &str = "default";

/// Paths the gateway answers for every host before selecting a frontend.
pub const GLOBAL_PATHS: &[&str] = &["/healthz", "/readyz"];

/// One configured frontend: how requests are matched to it, and its settings (already merged
/// with the top-level ones by whoever built them). Paths inside `settings` (`base_path`,
/// callbacks, route prefixes) are relative to `match_path`.
#[derive(Debug, Clone)]
pub struct FrontendSettings {
    /// Unique name, `[A-Za-z0-9_.+-]{1,64}`; also the default session partition and part of
    /// the login-cookie names.
    pub name: String,
    /// Host (`admin.example.com`) or `host:port` this frontend answers for; compared
    /// case-insensitively. A pattern without a port matches any port.
    pub match_host: Option<String>,
    /// Path prefix (`/admin`, no trailing slash) this frontend answers under, matched by whole
    /// segments (`/admin` and `/admin/x`, not `/administrator`), case-sensitively.
    pub match_path: Option<String>,
    /// The frontend's effective settings.
    pub settings: GatewaySettings,
}

/// Whether `name` is a valid frontend name: 1 to 64 of `[A-Za-z0-9_.+-]`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
}

/// Lower-cases a host pattern (`host` or `host:port`, no scheme, path or user info) and
/// checks its shape; `Err` says what is wrong. Used for `match_host` and `allowed_hosts`.
pub fn normalize_host(pattern: &str) -> Result<String, String> {
    let lower = pattern.trim().to_ascii_lowercase();
    let (host, port) = split_host_port(&lower);
    let valid_host = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
    let valid_port = port.is_none_or(|p| p.parse::<u16>().is_ok());
    if valid_host && valid_port {
        Ok(lower)
    } else {
        Err(format!(
            "{pattern:?} must be a host name or host:port (no scheme or path)"
        ))
    }
}

/// Splits `host:port` (`[v6]:port` too); the port is `None` when there is none.
fn split_host_port(hostport: &str) -> (&str, Option<&str>) {
    let after_bracket = hostport.rfind(']').map_or(0, |i| i + 1);
    match hostport[after_bracket..].rfind(':') {
        Some(i) => {
            let i = after_bracket + i;
            (&hostport[..i], Some(&hostport[i + 1..]))
        }
        None => (hostport, None),
    }
}

/// Every problem with a set of frontends, all at once (empty when valid): bad or duplicate
/// names, missing or duplicate selection criteria, malformed hosts and paths, a path that
/// shadows the default frontend's own endpoints, and session cookie names or partitions used
/// twice (the isolation between frontends rests on them).
pub fn validate(default: &GatewaySettings, frontends: &[FrontendSettings]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut names = HashSet::new();
    let mut criteria: HashMap<(Option<String>, Option<String>), &str> = HashMap::new();
    let mut cookies: HashMap<String, &str> = HashMap::new();
    let mut partitions: HashMap<String, &str> = HashMap::new();
    cookies.insert(
        default.cookies.session_name().to_ascii_lowercase(),
        DEFAULT_FRONTEND,
    );
    partitions.insert(default.session.partition.clone(), DEFAULT_FRONTEND);
    let mut default_paths: Vec<String> = vec![
        default.callback_path.clone(),
        default.signed_out_callback_path.clone(),
    ];
    if default.base_path.is_empty() {
        default_paths.extend(
            crate::bff::MANAGEMENT_ENDPOINTS
                .iter()
                .map(|p| join_path("", p)),
        );
    } else {
        default_paths.push(default.base_path.clone());
    }
    for f in frontends {
        let ctx = format!("frontend {:?}", f.name);
        if !is_valid_name(&f.name) {
            errors.push(format!(
                "{ctx}: name must be 1 to 64 characters of A-Z a-z 0-9 _ . + -"
            ));
        }
        if f.name == DEFAULT_FRONTEND {
            errors.push(format!(
                "{ctx}: the name \"{DEFAULT_FRONTEND}\" is reserved for the top-level configuration"
            ));
        }
        if !names.insert(f.name.as_str()) {
            errors.push(format!("{ctx}: name is used twice"));
        }
        let host = match f.match_host.as_deref().map(normalize_host) {
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => {
                errors.push(format!("{ctx}: match_host {e}"));
                None
            }
            None => None,
        };
        if let Some(p) = &f.match_path {
            let bad = !p.starts_with('/')
                || p == "/"
                || p.ends_with('/')
                || p.contains("//")
                || p.contains(['?', '#', '%', '{', '}', '*', ' ', '\\'])
                || p.split('/').any(|s| s == "." || s == "..");
            if bad {
                errors.push(format!(
                    "{ctx}: match_path {p:?} must be an absolute path like /admin (not /, no trailing slash)"
                ));
            }
            let under = |reserved: &str| {
                p == reserved
                    || p.starts_with(&format!("{reserved}/"))
                    || reserved.starts_with(&format!("{p}/"))
            };
            for g in GLOBAL_PATHS {
                if under(g) {
                    errors.push(format!("{ctx}: match_path {p} overlaps the gateway's {g}"));
                }
            }
            if host.is_none() {
                for d in &default_paths {
                    if under(d) {
                        errors.push(format!(
                            "{ctx}: match_path {p} overlaps the default frontend's endpoint {d}"
                        ));
                    }
                }
            }
        }
        if f.match_host.is_none() && f.match_path.is_none() {
            errors.push(format!(
                "{ctx}: needs match_host, match_path or both (without either it would be the default frontend)"
            ));
        } else if let Some(other) =
            criteria.insert((host.clone(), f.match_path.clone()), f.name.as_str())
        {
            errors.push(format!(
                "{ctx}: same match_host and match_path as frontend {other:?}"
            ));
        }
        let cookie = f.settings.cookies.session_name().to_ascii_lowercase();
        if let Some(other) = cookies.insert(cookie, f.name.as_str()) {
            errors.push(format!(
                "{ctx}: session cookie {:?} is also frontend {other:?}'s (cookie names compare case-insensitively)",
                f.settings.cookies.session_name()
            ));
        }
        if let Some(other) = partitions.insert(f.settings.session.partition.clone(), &f.name) {
            errors.push(format!(
                "{ctx}: session partition {:?} is also frontend {other:?}'s",
                f.settings.session.partition
            ));
        }
    }
    errors
}

/// Frontend selection, compiled once per configuration: a host map and path prefixes sorted
/// longest first, so a request costs a hash lookup and a few prefix compares.
///
/// Duende's rule: among the frontends whose host matches, the longest matching path prefix
/// wins, else the host-only frontend; with no host match, the longest path-only match; else
/// the default frontend.
#[derive(Debug, Default)]
pub(crate) struct Selector {
    /// Key: lower-case `host` or `host:port`.
    hosts: HashMap<String, HostEntry>,
    /// Some pattern names a port: try `host:port` before `host`.
    ports_in_patterns: bool,
    /// `(prefix, frontend index)`, longest prefix first.
    path_only: Vec<(String, usize)>,
    /// Known host names without port, and `host:port` pairs.
    known: HashSet<String>,
    default: usize,
}

#[derive(Debug, Default)]
struct HostEntry {
    host_only: Option<usize>,
    paths: Vec<(String, usize)>,
}

/// Whether `path` is `prefix` or below it by whole segments.
pub(crate) fn under_prefix(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/')
}

impl Selector {
    /// `criteria[i]` = (host, path) of frontend `i`; `default` is the default frontend's index;
    /// `known_hosts`: the public URL's host and `allowed_hosts` (any case, optional port).
    pub(crate) fn new(
        criteria: &[(Option<String>, Option<String>)],
        default: usize,
        known_hosts: &[String],
    ) -> Self {
        let mut s = Self {
            default,
            ..Self::default()
        };
        for (i, (host, path)) in criteria.iter().enumerate() {
            match (host, path) {
                (Some(h), p) => {
                    let h = h.to_ascii_lowercase();
                    s.ports_in_patterns |= split_host_port(&h).1.is_some();
                    s.known.insert(h.clone());
                    let e = s.hosts.entry(h).or_default();
                    match p {
                        Some(p) => e.paths.push((p.clone(), i)),
                        None => e.host_only = Some(i),
                    }
                }
                (None, Some(p)) => s.path_only.push((p.clone(), i)),
                (None, None) => {}
            }
        }
        for e in s.hosts.values_mut() {
            e.paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        }
        s.path_only.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        for h in known_hosts {
            s.known.insert(h.to_ascii_lowercase());
        }
        s
    }

    /// Whether `host` (a `Host` header value, any case) is one this gateway serves.
    pub(crate) fn is_known(&self, host: &str) -> bool {
        with_lowercase(host, |h| {
            self.known.contains(h) || self.known.contains(split_host_port(h).0)
        })
    }

    /// The frontend for a request: index and the matched path prefix (`None` for host-only
    /// and default matches). `host` is `None` when the request names none.
    pub(crate) fn select<'a>(&'a self, host: Option<&str>, path: &str) -> (usize, Option<&'a str>) {
        if let Some(host) = host.filter(|_| !self.hosts.is_empty()) {
            let hit = with_lowercase(host, |h| {
                let entry = if self.ports_in_patterns {
                    self.hosts.get(h)
                } else {
                    None
                }
                .or_else(|| self.hosts.get(split_host_port(h).0))?;
                entry
                    .paths
                    .iter()
                    .find(|(p, _)| under_prefix(path, p))
                    .map(|(p, i)| (*i, Some(p.as_str())))
                    .or(entry.host_only.map(|i| (i, None)))
            });
            if let Some(hit) = hit {
                return hit;
            }
        }
        self.path_only
            .iter()
            .find(|(p, _)| under_prefix(path, p))
            .map_or((self.default, None), |(p, i)| (*i, Some(p.as_str())))
    }
}

/// Calls `f` with `s` in lower case, allocating only when `s` has upper-case letters.
fn with_lowercase<T>(s: &str, f: impl FnOnce(&str) -> T) -> T {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        f(&s.to_ascii_lowercase())
    } else {
        f(s)
    }
}

/// What all frontends of one gateway share: the session store, key ring and cache, the
/// clock, the upstream connection pool, the IdP HTTP client and one [`Provider`] per issuer.
pub(crate) struct Shared {
    pub(crate) base_sessions: Sessions,
    pub(crate) clock: SharedClock,
    pub(crate) forwarder: Forwarder,
    pub(crate) http: reqwest::Client,
    providers: std::sync::Mutex<HashMap<String, Arc<Provider>>>,
}

impl Shared {
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        keys: KeyRing,
        clock: SharedClock,
        default: &GatewaySettings,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(default.oidc.http_timeout)
            .connect_timeout(std::time::Duration::from_secs(5))
            // Close idle IdP connections before the IdP does: Node's and Apache's default
            // keep-alive is 5 s, and a token request sent on a connection the server is just
            // closing fails with "connection reset" (seen as a failed login after 6 s idle).
            .pool_idle_timeout(std::time::Duration::from_secs(4))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let base_sessions = Sessions::new(
            store,
            Arc::new(keys),
            clock.clone(),
            default.session.clone(),
            default.cookies.clone(),
        );
        Ok(Self {
            base_sessions,
            clock,
            forwarder: Forwarder::new()?,
            http,
            providers: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The provider of `issuer`, shared by every frontend that names it.
    fn provider(&self, issuer: &str) -> Arc<Provider> {
        let mut map = self
            .providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(issuer.to_owned())
            .or_insert_with(|| {
                Arc::new(Provider::new(
                    issuer.to_owned(),
                    self.http.clone(),
                    self.clock.clone(),
                ))
            })
            .clone()
    }

    /// Drops providers no frontend uses any more (after a reload).
    pub(crate) fn retain_providers(&self, issuers: &HashSet<&str>) {
        self.providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|k, _| issuers.contains(k.as_str()));
    }
}

/// One frontend's context: everything a handler needs, resolved before the handler runs.
/// Cheap to clone.
#[derive(Clone)]
pub struct Frontend {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    fingerprint: [u8; 32],
    prefix: String,
    settings: Arc<GatewaySettings>,
    sessions: Sessions,
    provider: Arc<Provider>,
    tokens: Arc<TokenService>,
    forwarder: Forwarder,
    routes: RouteTable,
    clock: SharedClock,
    origin: String,
    redirect_uri: String,
    signed_out_uri: String,
    home: String,
    logout_path: String,
    login_path: String,
    silent_callback_path: String,
    public_host: String,
    own_cookie_names: Arc<[String]>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("name", &self.inner.name)
            .field("prefix", &self.inner.prefix)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// A digest of everything that defines a frontend, secrets included (their `Debug` is
/// redacted, so they are hashed separately): equal digests mean its caches may be kept.
fn fingerprint(name: &str, host: Option<&str>, prefix: &str, s: &GatewaySettings) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(format!("{name}\0{host:?}\0{prefix}\0{s:?}"));
    let mut secret = |a: &ClientAuthSettings| match a {
        ClientAuthSettings::ClientSecretBasic(s) | ClientAuthSettings::ClientSecretPost(s) => {
            h.update(s.expose_secret().as_bytes())
        }
        ClientAuthSettings::PrivateKeyJwt { key_pem, .. } => {
            h.update(key_pem.expose_secret().as_bytes())
        }
    };
    secret(&s.oidc.client_auth);
    for c in &s.tokens.clients {
        secret(&c.client_auth);
    }
    h.finalize().into()
}

impl Frontend {
    /// Builds a frontend's context. `previous` is the same-named frontend of the running
    /// configuration: its token service (refresh single-flight, client-credentials cache) is
    /// kept when nothing about the frontend changed.
    pub(crate) fn build(
        shared: &Shared,
        name: &str,
        host: Option<&str>,
        prefix: Option<&str>,
        settings: GatewaySettings,
        own_cookie_names: Arc<[String]>,
        previous: Option<&Frontend>,
    ) -> Self {
        let prefix = prefix.unwrap_or("").trim_end_matches('/').to_owned();
        let fingerprint = fingerprint(name, host, &prefix, &settings);
        let settings = Arc::new(settings);
        let cookies = if name == DEFAULT_FRONTEND {
            settings.cookies.clone()
        } else {
            settings.cookies.clone().for_frontend(name)
        };
        let sessions = shared
            .base_sessions
            .for_frontend(settings.session.clone(), cookies);
        let provider = shared.provider(&settings.oidc.issuer);
        let tokens = match previous.filter(|p| p.inner.fingerprint == fingerprint) {
            Some(p) => p.inner.tokens.clone(),
            None => Arc::new(TokenService::new(
                provider.clone(),
                settings.clone(),
                sessions.clone(),
                shared.http.clone(),
                shared.clock.clone(),
            )),
        };
        let public = &settings.public_url;
        let public_host = match (host, public.port()) {
            (Some(h), _) if split_host_port(h).1.is_some() => h.to_ascii_lowercase(),
            (Some(h), Some(p)) => format!("{}:{p}", h.to_ascii_lowercase()),
            (Some(h), None) => h.to_ascii_lowercase(),
            (None, Some(p)) => format!("{}:{p}", public.host_str().unwrap_or_default()),
            (None, None) => public.host_str().unwrap_or_default().to_owned(),
        };
        let origin = format!("{}://{public_host}", public.scheme());
        let home = if prefix.is_empty() {
            match public.path() {
                "" => "/".to_owned(),
                p => p.to_owned(),
            }
        } else {
            format!("{prefix}/")
        };
        let base = format!("{prefix}{}", settings.base_path);
        Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                fingerprint,
                redirect_uri: format!("{origin}{prefix}{}", settings.callback_path),
                signed_out_uri: format!("{origin}{prefix}{}", settings.signed_out_callback_path),
                logout_path: join_path(&base, "/logout"),
                login_path: join_path(&base, "/login"),
                silent_callback_path: join_path(&base, "/silent-login-callback"),
                home,
                public_host,
                origin,
                prefix,
                own_cookie_names,
                routes: RouteTable::new(settings.routes.clone()),
                forwarder: shared.forwarder.clone(),
                settings,
                sessions,
                provider,
                tokens,
                clock: shared.clock.clone(),
            }),
        }
    }

    /// The frontend's name ([`DEFAULT_FRONTEND`] for the top-level one).
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// The path prefix the frontend is mounted under (`""` when none).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }
    /// The frontend's effective settings (paths relative to its prefix).
    pub fn settings(&self) -> &GatewaySettings {
        &self.inner.settings
    }
    /// The session manager (store, key ring, cache) scoped to this frontend's partition and
    /// cookie.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }
    /// The OpenID Provider client (discovery and JWKS, cached, shared per issuer).
    pub fn provider(&self) -> &Provider {
        &self.inner.provider
    }
    /// Token management: user tokens (refresh), client-credentials and exchanged tokens.
    pub fn tokens(&self) -> &TokenService {
        &self.inner.tokens
    }
    /// Current time from the gateway's clock, seconds since the Unix epoch.
    pub fn now(&self) -> i64 {
        self.inner.clock.now_unix()
    }
    pub(crate) fn settings_arc(&self) -> Arc<GatewaySettings> {
        self.inner.settings.clone()
    }
    pub(crate) fn provider_arc(&self) -> Arc<Provider> {
        self.inner.provider.clone()
    }
    pub(crate) fn tokens_arc(&self) -> Arc<TokenService> {
        self.inner.tokens.clone()
    }
    /// The origin the browser uses for this frontend (`https://admin.example.com`).
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }
    /// The OIDC `redirect_uri`: origin + prefix + [`GatewaySettings::callback_path`].
    pub fn redirect_uri(&self) -> &str {
        &self.inner.redirect_uri
    }
    /// The post-logout redirect URI: origin + prefix +
    /// [`GatewaySettings::signed_out_callback_path`].
    pub fn signed_out_uri(&self) -> &str {
        &self.inner.signed_out_uri
    }
    /// Where the browser goes after login/logout by default: `{prefix}/`, or for the default
    /// frontend the path of the public URL (`/` when it has none).
    pub fn home(&self) -> &str {
        &self.inner.home
    }
    /// Path of the logout endpoint as the browser sees it (`{prefix}{base_path}/logout`).
    pub fn logout_path(&self) -> &str {
        &self.inner.logout_path
    }
    /// Path of the login endpoint as the browser sees it (`{prefix}{base_path}/login`).
    pub fn login_path(&self) -> &str {
        &self.inner.login_path
    }
    /// Path of the silent-login callback as the browser sees it.
    pub fn silent_callback_path(&self) -> &str {
        &self.inner.silent_callback_path
    }
    /// Lifetime of a pending login in seconds ([`SessionSettings::login_timeout`](crate::settings::SessionSettings::login_timeout); 600 if it
    /// does not fit an `i64`).
    pub fn login_timeout_secs(&self) -> i64 {
        i64::try_from(self.inner.settings.session.login_timeout.as_secs()).unwrap_or(600)
    }
    pub(crate) fn routes(&self) -> &RouteTable {
        &self.inner.routes
    }
    pub(crate) fn forwarder(&self) -> &Forwarder {
        &self.inner.forwarder
    }
    pub(crate) fn public_host(&self) -> &str {
        &self.inner.public_host
    }
    pub(crate) fn own_cookie_names(&self) -> &[String] {
        &self.inner.own_cookie_names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector() -> Selector {
        let c = |h: Option<&str>, p: Option<&str>| (h.map(str::to_owned), p.map(str::to_owned));
        Selector::new(
            &[
                c(None, None),                           // 0 default
                c(Some("a.example"), None),              // 1
                c(None, Some("/b")),                     // 2
                c(Some("a.example"), Some("/c")),        // 3
                c(Some("a.example"), Some("/c/deeper")), // 4
                c(Some("p.example:8443"), None),         // 5
                c(None, Some("/b/longer")),              // 6
            ],
            0,
            &["App.Example".to_owned()],
        )
    }

    #[test]
    fn selection_follows_duendes_rule() {
        let s = selector();
        let cases: &[(Option<&str>, &str, usize)] = &[
            (Some("a.example"), "/c/x", 3),
            (Some("A.Example:443"), "/c", 3),
            (Some("a.example"), "/c/deeper/x", 4),
            (Some("a.example"), "/cx", 1),
            (Some("a.example"), "/b/x", 1),
            (Some("app.example"), "/b/x", 2),
            (Some("app.example"), "/b/longer/x", 6),
            (Some("app.example"), "/bb", 0),
            (Some("app.example"), "/", 0),
            (None, "/b", 2),
            (Some("p.example:8443"), "/", 5),
            (Some("p.example:80"), "/", 0),
        ];
        for (host, path, want) in cases {
            assert_eq!(s.select(*host, path).0, *want, "{host:?} {path}");
        }
        assert_eq!(s.select(Some("a.example"), "/c/x").1, Some("/c"));
        assert_eq!(s.select(Some("a.example"), "/x").1, None);
    }

    #[test]
    fn known_hosts_ignore_case_and_port_unless_the_pattern_has_one() {
        let s = selector();
        for ok in [
            "app.example",
            "APP.example:8080",
            "a.example:1",
            "p.example:8443",
        ] {
            assert!(s.is_known(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "p.example",
            "p.example:1",
            "app.example.evil",
            "",
        ] {
            assert!(!s.is_known(bad), "{bad}");
        }
    }

    #[test]
    fn host_patterns_and_names_are_checked() {
        assert!(is_valid_name("admin.v2+x_y-z"));
        for bad in ["", "a b", "a/b", "ä", &"x".repeat(65)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert_eq!(
            normalize_host("Admin.Example.com:8443").unwrap(),
            "admin.example.com:8443"
        );
        assert_eq!(normalize_host("[::1]:80").unwrap(), "[::1]:80");
        for bad in ["https://a.example", "a.example/x", "a.example:x", "", "a@b"] {
            assert!(normalize_host(bad).is_err(), "{bad}");
        }
    }
}
