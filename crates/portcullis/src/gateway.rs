//! Assembling the gateway: frontend selection, the per-frontend routers, live reload.
//!
//! ```text
//! browser ──HTTP──▶ /healthz /readyz (any host)
//!                   known Host? (public URL, frontends' match_host, allowed_hosts) ── no ─▶ 421
//!                   select the frontend (host map, then path prefixes; else the default)
//!                   strip its path prefix ─▶ the frontend's router (state: its `Frontend`):
//!                    [its CORS, when it lists origins: preflights answered here]
//!                    ┌──────────────────────────────────────┐
//!                    │ {base}/login ──▶ IdP (302)           │
//!                    │ {callback}  ──▶ code exchange, ID token → session + cookie
//!                    │ {base}/user  [anti-forgery] ─▶ cookie → session → claims
//!                    │ {base}/logout, signed-out, silent-login(-callback), backchannel, diagnostics, client.js
//!                    │ route prefix [anti-forgery | WS origin]
//!                    │     └▶ cookie → session → access (claims, step-up) → token (policy, refresh) → proxy → upstream
//!                    │ fallback: the SPA (static files, index.html for client routes)
//!                    └───────────────────────────────────────┘
//!                      every failure of a browser navigation → HTML page (error.rs)
//! ```
//! A request under a route prefix goes straight to [`api`] ([`DirectRoutes`], the hot path;
//! the frontend's router would send it there too), everything else through the frontend's
//! router. [`Gateway::handle`] is the whole of it without a router around it, for the
//! binary's listener; [`Gateway::router`] the same as an axum `Router`.
//!
//! Every proxied route goes through [`api`], which checks anti-forgery before anything else;
//! the only way around it is a route whose settings say `anti_forgery: false`, which the
//! configuration calls out loudly.
//!
//! The frontends and their routers are compiled into an immutable snapshot held in an
//! [`ArcSwap`]: a request loads it once; [`Gateway::reload`] compiles a new one (keeping the
//! token caches of frontends that did not change and the providers of issuers still in use)
//! and swaps it in. Requests in flight finish on the snapshot they started with; sessions live
//! in the store and are untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use portcullis_session::SessionStore;
use portcullis_token::{ManagedToken, SharedClock};
use tower::ServiceExt;
use tracing::field::Empty;
use tracing::Instrument as _;

use crate::bff;
use crate::csrf;
use crate::error::GatewayError;
use crate::frontend::{Frontend, FrontendSettings, Selector, Shared, DEFAULT_FRONTEND};
use crate::log_safe::untrusted;
use crate::oidc::Provider;
use crate::proxy::{ForwardContext, Route};
use crate::session::{ActiveSession, KeyRing, Lookup, Sessions};
use crate::settings::{GatewaySettings, TokenPolicy};
use crate::token::{TokenFailure, TokenService};

/// The gateway: cheap to clone, shared by every connection. Holds the current configuration
/// snapshot (one [`Frontend`] per frontend) and what frontends share.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Shared,
    snapshot: ArcSwap<Snapshot>,
    /// The default frontend's fallback and local APIs, kept across reloads.
    extras: std::sync::Mutex<DefaultExtras>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct DefaultExtras {
    fallback: Option<Router>,
    local_apis: Vec<(String, Router)>,
}

/// A configured frontend and what serves its static files (the router every request of the
/// frontend that no management endpoint or route takes goes to; `None` answers 404).
#[derive(Debug)]
pub struct FrontendSpec {
    /// Selection criteria and settings.
    pub settings: FrontendSettings,
    /// The frontend's static part (paths relative to its prefix), e.g.
    /// [`Spa::router`](crate::spa::Spa::router).
    pub fallback: Option<Router>,
}

/// An immutable compiled configuration.
struct Snapshot {
    /// Index 0 is the default frontend.
    frontends: Vec<Compiled>,
    selector: Arc<Selector>,
    trust_forwarded: bool,
}

struct Compiled {
    frontend: Frontend,
    router: Router,
    fallback: Option<Router>,
    /// The frontend's proxied routes, served without its router (`None`: every request goes
    /// through the router; see [`DirectRoutes`]).
    direct: Option<Arc<DirectRoutes>>,
}

/// A frontend's proxied routes, dispatched without its axum router: the request a route
/// prefix takes goes straight to [`api`], with what the router's layers would add (the
/// navigation error page, the matched route for telemetry). Proxied calls are the hot path,
/// and the router's matching, boxed layers and handler adapters cost more per request than
/// the forwarding decisions themselves (`bench/RESULTS.md`, run 8).
///
/// It takes exactly the requests the router would send to a proxied route: a path equal to
/// a route prefix, or below it (`{prefix}/…`), longest prefix first, and never one of the
/// frontend's management endpoints (which the router matches first, being static paths). A
/// frontend with CORS or local APIs is left to its router.
struct DirectRoutes {
    frontend: Frontend,
    name: Arc<str>,
    anti_forgery_header: axum::http::HeaderName,
    matcher: PrefixMatcher,
    /// In the order of `matcher`'s prefixes.
    routes: Vec<DirectRoute>,
}

/// Matches a request path to a route prefix as the frontend's router matches the patterns
/// `{p}`, `{p}/` and `{p}/{*rest}` beside the management endpoints' exact paths: a static
/// path wins over a wildcard, and a longer prefix over a shorter one.
#[derive(Debug)]
struct PrefixMatcher {
    /// Exact paths of the management endpoints: left to the router.
    reserved: Vec<String>,
    /// Route prefixes, longest first.
    prefixes: Vec<String>,
}

impl PrefixMatcher {
    /// `prefixes` in any order; [`PrefixMatcher::find`] answers indexes into the sorted list
    /// ([`PrefixMatcher::prefixes`]).
    fn new(reserved: Vec<String>, mut prefixes: Vec<String>) -> Self {
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Self { reserved, prefixes }
    }

    /// `(prefix index, pattern index)`: 0 for `{p}`, 1 for `{p}/`, 2 for `{p}/{*rest}`.
    fn find(&self, path: &str) -> Option<(usize, usize)> {
        if self.reserved.iter().any(|r| r == path) {
            return None;
        }
        self.prefixes.iter().enumerate().find_map(|(i, p)| {
            let rest = path.strip_prefix(p.as_str())?;
            match rest.as_bytes() {
                [] => Some((i, 0)),
                [b'/'] => Some((i, 1)),
                [b'/', ..] => Some((i, 2)),
                _ => None,
            }
        })
    }
}

struct DirectRoute {
    route: Arc<Route>,
    /// The router's three patterns for the prefix: `{p}`, `{p}/`, `{p}/{*rest}` (the
    /// `http.route` of the request).
    patterns: [Arc<str>; 3],
}

impl DirectRoutes {
    fn new(fe: &Frontend, local_apis: &[(String, Router)]) -> Option<Self> {
        let s = fe.settings();
        let local_prefixes: Vec<String> = local_apis.iter().map(|(p, _)| p.clone()).collect();
        if !local_apis.is_empty() || crate::cors::Cors::for_frontend(s, &local_prefixes).is_some() {
            return None;
        }
        let all = fe.routes().routes();
        let matcher = PrefixMatcher::new(
            management_paths(s),
            all.iter().map(|r| r.settings.path.clone()).collect(),
        );
        let routes = matcher
            .prefixes
            .iter()
            .filter_map(|p| all.iter().find(|r| &r.settings.path == p))
            .map(|route| {
                let p = &route.settings.path;
                DirectRoute {
                    route: route.clone(),
                    patterns: [
                        Arc::from(p.as_str()),
                        Arc::from(format!("{p}/")),
                        Arc::from(format!("{p}/{{*rest}}")),
                    ],
                }
            })
            .collect();
        Some(Self {
            frontend: fe.clone(),
            name: fe.name().into(),
            anti_forgery_header: s.anti_forgery.header_name().clone(),
            matcher,
            routes,
        })
    }

    /// The route that takes `path` and the pattern it matched, as the router would match.
    fn find(&self, path: &str) -> Option<(&Arc<Route>, &Arc<str>)> {
        let (i, pattern) = self.matcher.find(path)?;
        let r = self.routes.get(i)?;
        Some((&r.route, &r.patterns[pattern]))
    }

    /// Serves a request [`DirectRoutes::find`] matched, as the router's layers would.
    async fn serve(&self, route: &Route, pattern: &Arc<str>, request: Request) -> Response {
        let navigation = crate::error::is_navigation(request.headers(), &self.anti_forgery_header);
        // Boxed once here: a proxied call's future is several KiB, and every layer above
        // (telemetry, the listener's service, hyper's dispatcher) would otherwise hold and
        // move a copy of it; `memmove` was the largest user-space cost (bench run 8).
        let response = Box::pin(api(&self.frontend, route, request)).await;
        let mut response = crate::error::render_if_navigation(navigation, response);
        crate::telemetry::mark(
            &mut response,
            Some(crate::telemetry::RouteLabel::Pattern(pattern.clone())),
            self.name.clone(),
        );
        response
    }
}

/// The exact paths of a frontend's management endpoints (relative to its prefix).
fn management_paths(s: &GatewaySettings) -> Vec<String> {
    let base = &s.base_path;
    let mut paths: Vec<String> = bff::MANAGEMENT_ENDPOINTS
        .iter()
        .map(|e| join_path(base, e))
        .collect();
    paths.push(s.callback_path.clone());
    paths.push(s.signed_out_callback_path.clone());
    paths
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snap = self.inner.snapshot.load();
        f.debug_struct("Gateway")
            .field(
                "frontends",
                &snap
                    .frontends
                    .iter()
                    .map(|c| c.frontend.name())
                    .collect::<Vec<_>>(),
            )
            .field("settings", &snap.frontends[0].frontend.settings())
            .finish_non_exhaustive()
    }
}

/// Joins a base path (`""` or `/bff`) and a path (`/login`).
pub fn join_path(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

impl Gateway {
    /// Builds a gateway with one (the default) frontend from validated settings, a session
    /// store, the ticket key ring and a clock. Does no I/O: the IdP's discovery document and
    /// keys are fetched lazily on first use, so a gateway can start while the IdP is down.
    ///
    /// Call [`router`](Self::router) to serve it and
    /// [`spawn_background_tasks`](Self::spawn_background_tasks) to start cleanup and cache
    /// invalidation.
    ///
    /// # Errors
    ///
    /// A message if an HTTP client cannot be built: the IdP client (`HTTP client: ...`) or the
    /// upstream forwarder's TLS setup (`TLS setup failed: ...`), e.g. when no root certificates
    /// can be loaded. Settings are not re-validated here.
    pub fn new(
        settings: GatewaySettings,
        store: Arc<dyn SessionStore>,
        keys: KeyRing,
        clock: SharedClock,
    ) -> Result<Self, String> {
        Self::with_frontends(settings, Vec::new(), store, keys, clock)
    }

    /// Like [`new`](Self::new), with more frontends besides the default one (see
    /// [`crate::frontend`]).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), and every problem [`crate::frontend::validate`] finds, joined
    /// by `"; "`.
    pub fn with_frontends(
        settings: GatewaySettings,
        frontends: Vec<FrontendSpec>,
        store: Arc<dyn SessionStore>,
        keys: KeyRing,
        clock: SharedClock,
    ) -> Result<Self, String> {
        let shared = Shared::new(store, keys, clock, &settings)?;
        let snapshot =
            compile(&shared, None, settings, None, &[], frontends).map_err(|e| e.join("; "))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                snapshot: ArcSwap::from_pointee(snapshot),
                extras: std::sync::Mutex::new(DefaultExtras::default()),
                reloading: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Replaces the configuration: the default frontend's settings, its fallback (`None`
    /// keeps the one given to [`router`](Self::router)) and the other frontends. Frontends
    /// whose settings did not change keep their token caches; sessions and connections are
    /// untouched. Store, key ring and clock stay those the gateway was built with.
    ///
    /// # Errors
    ///
    /// Every problem [`crate::frontend::validate`] finds; the running configuration is then
    /// kept as it was.
    pub async fn reload(
        &self,
        settings: GatewaySettings,
        default_fallback: Option<Router>,
        frontends: Vec<FrontendSpec>,
    ) -> Result<(), Vec<String>> {
        let _one = self.inner.reloading.lock().await;
        let previous = self.inner.snapshot.load_full();
        let (fallback, local_apis) = {
            let extras = self.extras();
            if default_fallback.is_some() {
                (default_fallback, extras.local_apis.clone())
            } else {
                (extras.fallback.clone(), extras.local_apis.clone())
            }
        };
        if let Some(f) = &fallback {
            self.extras().fallback = Some(f.clone());
        }
        let next = compile(
            &self.inner.shared,
            Some(&previous),
            settings,
            fallback,
            &local_apis,
            frontends,
        )?;
        let issuers: std::collections::HashSet<&str> = next
            .frontends
            .iter()
            .map(|c| c.frontend.settings().oidc.issuer.as_str())
            .collect();
        self.inner.shared.retain_providers(&issuers);
        tracing::info!(frontends = next.frontends.len(), "configuration reloaded");
        self.inner.snapshot.store(Arc::new(next));
        Ok(())
    }

    fn extras(&self) -> std::sync::MutexGuard<'_, DefaultExtras> {
        self.inner
            .extras
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The default (top-level) frontend of the current configuration.
    pub fn default_frontend(&self) -> Frontend {
        self.inner.snapshot.load().frontends[0].frontend.clone()
    }

    /// The frontend named `name` ([`DEFAULT_FRONTEND`] for the top-level one) in the current
    /// configuration.
    pub fn frontend(&self, name: &str) -> Option<Frontend> {
        self.inner
            .snapshot
            .load()
            .frontends
            .iter()
            .find(|c| c.frontend.name() == name)
            .map(|c| c.frontend.clone())
    }

    /// Every frontend of the current configuration, the default one first.
    pub fn frontends(&self) -> Vec<Frontend> {
        self.inner
            .snapshot
            .load()
            .frontends
            .iter()
            .map(|c| c.frontend.clone())
            .collect()
    }

    /// The default frontend's settings.
    pub fn settings(&self) -> Arc<GatewaySettings> {
        self.default_frontend().settings_arc()
    }
    /// The default frontend's session manager (store, key ring, cache).
    pub fn sessions(&self) -> Sessions {
        self.default_frontend().sessions().clone()
    }
    /// The default frontend's OpenID Provider client (discovery and JWKS, cached).
    pub fn provider(&self) -> Arc<Provider> {
        self.default_frontend().provider_arc()
    }
    /// The default frontend's token management.
    pub fn tokens(&self) -> Arc<TokenService> {
        self.default_frontend().tokens_arc()
    }
    /// Current time from the gateway's clock, seconds since the Unix epoch.
    pub fn now(&self) -> i64 {
        self.inner.shared.clock.now_unix()
    }

    /// Starts the background work a running gateway needs: periodic cleanup of expired
    /// sessions and, for shared stores, the listener that keeps the session cache coherent
    /// across instances. Abort the handles to stop them.
    pub fn spawn_background_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let sessions = &self.inner.shared.base_sessions;
        let mut tasks = vec![sessions.spawn_cleanup()];
        tasks.extend(sessions.spawn_invalidation_listener());
        tasks
    }

    /// The full router. `fallback` serves everything of the default frontend that is not a
    /// management endpoint or an API route (typically the SPA's static files); `None` answers
    /// 404. Other frontends bring their own (see [`FrontendSpec`]).
    pub fn router(&self, fallback: Option<Router>) -> Router {
        self.router_with_local_apis(fallback, Vec::new())
    }

    /// The full router plus local API routers of the default frontend (handlers in this
    /// process), each nested under its path prefix and protected like proxied routes:
    /// anti-forgery on every request, 401 (never a redirect) for anonymous callers that use
    /// [`crate::local_api::CurrentUser`].
    pub fn router_with_local_apis(
        &self,
        fallback: Option<Router>,
        local_apis: Vec<(String, Router)>,
    ) -> Router {
        self.set_default_fallback(fallback, local_apis);
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .fallback(|State(gw): State<Gateway>, request: Request| async move {
                dispatch(&gw, request).await
            })
            .with_state(self.clone())
    }

    /// Sets what [`Gateway::handle`] serves besides the management endpoints and routes on
    /// the default frontend: its fallback (typically the SPA) and its local APIs (see
    /// [`Gateway::router_with_local_apis`], which calls this). Kept across reloads.
    pub fn set_default_fallback(
        &self,
        fallback: Option<Router>,
        local_apis: Vec<(String, Router)>,
    ) {
        {
            let mut extras = self.extras();
            extras.fallback = fallback.clone();
            extras.local_apis = local_apis.clone();
        }
        // Rebuild the default frontend's router with its fallback and local APIs.
        let current = self.inner.snapshot.load_full();
        let default = &current.frontends[0];
        let mut frontends: Vec<Compiled> = current
            .frontends
            .iter()
            .map(|c| Compiled {
                frontend: c.frontend.clone(),
                router: c.router.clone(),
                fallback: c.fallback.clone(),
                direct: c.direct.clone(),
            })
            .collect();
        frontends[0] = Compiled {
            router: frontend_router(&default.frontend, fallback.clone(), &local_apis),
            direct: DirectRoutes::new(&default.frontend, &local_apis).map(Arc::new),
            frontend: default.frontend.clone(),
            fallback,
        };
        self.inner.snapshot.store(Arc::new(Snapshot {
            frontends,
            selector: current.selector.clone(),
            trust_forwarded: current.trust_forwarded,
        }));
    }

    /// Serves one request exactly as [`Gateway::router`]'s router does (`/healthz`,
    /// `/readyz`, then the known-host check, frontend selection and the frontend), without a
    /// router around it: for servers that call the gateway directly, as the binary's listener
    /// does. Set the default frontend's fallback first ([`Gateway::set_default_fallback`]).
    ///
    /// `/healthz` and `/readyz` answer `GET` and `HEAD`; other methods get 405 with
    /// `Allow: GET,HEAD`, as the router's would.
    ///
    /// A response to `HEAD` has its body removed (after `Content-Length` is set from a body
    /// that has bytes; an upstream's answer keeps the length it stated, or none), as
    /// the router's routes do: HTTP/1 drops it anyway, but HTTP/2 would send it as DATA,
    /// which a client takes for a protocol error (RFC 9113 §8.1.1).
    pub async fn handle(&self, request: Request) -> Response {
        let probe = match request.uri().path() {
            "/healthz" => Some("/healthz"),
            "/readyz" => Some("/readyz"),
            _ => None,
        };
        let head = request.method() == Method::HEAD;
        let mut response = match probe {
            None => dispatch(self, request).await,
            Some(_) if !matches!(*request.method(), Method::GET | Method::HEAD) => {
                let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
                r
            }
            Some("/healthz") => "ok".into_response(),
            Some(_) => readyz(State(self.clone())).await,
        };
        if let Some(route) = probe {
            // The router's `MatchedPath` for them: their own `http.route`, not "unmatched".
            crate::telemetry::mark_unfronted(&mut response, route);
        }
        if head {
            // Only from a body that has bytes: an upstream's answer to HEAD has none, and a
            // `Content-Length: 0` would misstate the length its GET has.
            if !response.headers().contains_key(header::CONTENT_LENGTH) {
                if let Some(len) = http_body::Body::size_hint(response.body())
                    .exact()
                    .filter(|&n| n > 0)
                {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                }
            }
            *response.body_mut() = Body::empty();
        }
        response
    }
}

/// Compiles a configuration into a snapshot, or lists every problem.
fn compile(
    shared: &Shared,
    previous: Option<&Snapshot>,
    default: GatewaySettings,
    default_fallback: Option<Router>,
    local_apis: &[(String, Router)],
    frontends: Vec<FrontendSpec>,
) -> Result<Snapshot, Vec<String>> {
    let settings: Vec<FrontendSettings> = frontends.iter().map(|f| f.settings.clone()).collect();
    let errors = crate::frontend::validate(&default, &settings);
    if !errors.is_empty() {
        return Err(errors);
    }
    let own_cookie_names: Arc<[String]> = std::iter::once(default.cookies.session_name())
        .chain(settings.iter().map(|f| f.settings.cookies.session_name()))
        .map(str::to_owned)
        .collect();
    let mut known_hosts: Vec<String> = default.allowed_hosts.clone();
    if let Some(h) = default.public_url.host_str() {
        known_hosts.push(h.to_owned());
    }
    let mut criteria = vec![(None, None)];
    criteria.extend(
        settings
            .iter()
            .map(|f| (f.match_host.clone(), f.match_path.clone())),
    );
    let selector = Arc::new(Selector::new(&criteria, 0, &known_hosts));
    let trust_forwarded = default.trust_forwarded_headers;
    let find_previous = |name: &str| {
        previous.and_then(|p| {
            p.frontends
                .iter()
                .find(|c| c.frontend.name() == name)
                .map(|c| &c.frontend)
        })
    };
    let default_frontend = Frontend::build(
        shared,
        DEFAULT_FRONTEND,
        None,
        None,
        default,
        own_cookie_names.clone(),
        find_previous(DEFAULT_FRONTEND),
    );
    let mut compiled = vec![Compiled {
        router: frontend_router(&default_frontend, default_fallback.clone(), local_apis),
        direct: DirectRoutes::new(&default_frontend, local_apis).map(Arc::new),
        frontend: default_frontend,
        fallback: default_fallback,
    }];
    for spec in frontends {
        let f = spec.settings;
        let frontend = Frontend::build(
            shared,
            &f.name,
            f.match_host.as_deref(),
            f.match_path.as_deref(),
            f.settings,
            own_cookie_names.clone(),
            find_previous(&f.name),
        );
        compiled.push(Compiled {
            router: frontend_router(&frontend, spec.fallback.clone(), &[]),
            direct: DirectRoutes::new(&frontend, &[]).map(Arc::new),
            frontend,
            fallback: spec.fallback,
        });
    }
    Ok(Snapshot {
        frontends: compiled,
        selector,
        trust_forwarded,
    })
}

/// One frontend's router: management endpoints, API routes, local APIs, fallback. Paths are
/// relative to the frontend's prefix (the dispatcher strips it).
fn frontend_router(
    fe: &Frontend,
    fallback: Option<Router>,
    local_apis: &[(String, Router)],
) -> Router {
    let s = fe.settings();
    let base = &s.base_path;
    // Every exact path here is in `bff::MANAGEMENT_ENDPOINTS` (or is the callback or
    // signed-out path), so that the direct dispatch of proxied routes leaves them to this
    // router.
    let mut router = Router::new()
        .route(&join_path(base, "/login"), get(bff::login::login))
        .route(
            &s.callback_path,
            get(bff::callback::callback_get).post(bff::callback::callback_post),
        )
        .route(&join_path(base, "/user"), get(bff::user::user))
        .route(&join_path(base, "/logout"), get(bff::logout::logout))
        .route(&s.signed_out_callback_path, get(bff::logout::signed_out))
        .route(
            &join_path(base, "/silent-login"),
            get(bff::login::silent_login),
        )
        .route(
            &join_path(base, "/silent-login-callback"),
            get(bff::silent::silent_login_callback),
        )
        .route(
            &join_path(base, "/backchannel"),
            axum::routing::post(bff::backchannel::backchannel),
        )
        .route(
            &join_path(base, "/diagnostics"),
            get(bff::diagnostics::diagnostics),
        )
        .route(
            &join_path(base, "/client.js"),
            get(bff::client_js::client_js),
        );
    for route in fe.routes().routes() {
        let path = &route.settings.path;
        // The prefix itself, the prefix with a trailing slash (`{*rest}` needs at least
        // one character) and everything below it.
        for pattern in [
            path.clone(),
            format!("{path}/"),
            format!("{path}/{{*rest}}"),
        ] {
            let r = route.clone();
            router = router.route(
                &pattern,
                any(move |State(fe): State<Frontend>, req: Request| {
                    let r = r.clone();
                    async move { api(&fe, &r, req).await }
                }),
            );
        }
    }
    let router = match fallback {
        Some(f) => router.fallback_service(f),
        None => router.fallback(|| async { StatusCode::NOT_FOUND }),
    };
    let mut router = router.with_state(fe.clone());
    for (prefix, local) in local_apis {
        router = router.nest(prefix, crate::local_api::protect(fe, local.clone()));
    }
    // The matched route and the frontend, for the request metrics and span outside frontend
    // selection.
    let frontend: Arc<str> = fe.name().into();
    let router = router.layer(axum::middleware::from_fn(move |request, next| {
        crate::telemetry::mark_route(frontend.clone(), request, next)
    }));
    // Failed browser navigations get an HTML page (see `error`), whoever failed.
    let anti_forgery_header = s.anti_forgery.header_name().clone();
    let router = router.layer(axum::middleware::from_fn(move |request, next| {
        crate::error::render_for_navigations(anti_forgery_header.clone(), request, next)
    }));
    // Split-origin CORS, outermost: a preflight is answered before anything else of the
    // frontend runs, and no inner layer can add `Access-Control-*` headers of its own.
    let local_prefixes: Vec<String> = local_apis.iter().map(|(p, _)| p.clone()).collect();
    match crate::cors::Cors::for_frontend(s, &local_prefixes) {
        Some(cors) => cors.apply(router),
        None => router,
    }
}

/// Known-host check, frontend selection and path mapping; then the frontend's router.
async fn dispatch(gw: &Gateway, mut request: Request) -> Response {
    // One reference to the snapshot for the whole request (its frontend's router is used
    // only when the direct dispatch does not take the request).
    let snap = gw.inner.snapshot.load_full();
    let (index, prefix_len) = {
        let headers = request.headers();
        let mut hosts = headers.get_all(header::HOST).iter();
        let (first, second) = (hosts.next(), hosts.next());
        if second.is_some() {
            // RFC 9112 §3.2: never let the gateway and an upstream pick different ones.
            return GatewayError::bad_param("Host", "more than one Host header").into_response();
        }
        let mut host = match first.map(HeaderValue::to_str) {
            Some(Ok(h)) => Some(h),
            Some(Err(_)) => {
                return GatewayError::bad_param("Host", "not a host name").into_response()
            }
            None => None,
        };
        if snap.trust_forwarded {
            // The nearest (trusted) proxy's value is the last one.
            if let Some(fwd) = headers
                .get_all("x-forwarded-host")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
            {
                host = Some(fwd);
            }
        }
        // HTTP/2 carries the host in `:authority`. A request naming no host at all cannot
        // come from a browser (the rebinding attack needs one); it gets the default frontend.
        let host = host.or_else(|| request.uri().authority().map(|a| a.as_str()));
        if let Some(h) = host {
            if !snap.selector.is_known(h) {
                tracing::info!(host = %untrusted(h), "request for an unknown host refused");
                return (StatusCode::MISDIRECTED_REQUEST, "unknown host").into_response();
            }
        }
        let (index, prefix) = snap.selector.select(host, request.uri().path());
        (index, prefix.map_or(0, str::len))
    };
    let compiled = &snap.frontends[index];
    if prefix_len > 0 {
        let uri = request.uri();
        let rest = &uri.path()[prefix_len..];
        if rest.is_empty() && matches!(*request.method(), Method::GET | Method::HEAD) {
            // `/admin` → `/admin/`, so the SPA's relative URLs resolve inside the frontend.
            let to = match uri.query() {
                Some(q) => format!("{}/?{q}", uri.path()),
                None => format!("{}/", uri.path()),
            };
            let mut r = StatusCode::PERMANENT_REDIRECT.into_response();
            if let Ok(v) = HeaderValue::from_str(&to) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        let rest = if rest.is_empty() { "/" } else { rest };
        let pq = match uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = match pq.parse() {
            Ok(pq) => Some(pq),
            Err(_) => return GatewayError::BadRequestTarget.into_response(),
        };
        match Uri::from_parts(parts) {
            Ok(u) => *request.uri_mut() = u,
            Err(_) => return GatewayError::BadRequestTarget.into_response(),
        }
    }
    if let Some(direct) = &compiled.direct {
        if let Some((route, pattern)) = direct.find(request.uri().path()) {
            return direct.serve(route, pattern, request).await;
        }
    }
    match compiled.router.clone().oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

async fn readyz(State(gw): State<Gateway>) -> Response {
    match gw.inner.shared.base_sessions.store().ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            tracing::warn!(error = %untrusted(&e.to_string()), "readiness check: session store unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "session store unavailable").into_response()
        }
    }
}

/// One proxied API call: method rule → anti-forgery → session → token → forward.
///
/// The peer address comes from `ConnectInfo` when the server provides it; a router served
/// without it (in-process, or by a library user's own server) still works, only without
/// `X-Forwarded-For`.
async fn api(gw: &Frontend, route: &Route, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0);
    match api_inner(gw, peer, route, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn api_inner(
    gw: &Frontend,
    peer: Option<SocketAddr>,
    route: &Route,
    request: Request,
) -> Result<Response, GatewayError> {
    crate::proxy::check_method(request.method())?;
    let request = crate::proxy::limit_body(request, route.settings.max_body)?;
    // RFC 9112 §3.2: a request with more than one Host is a 400; never let the gateway and
    // the upstream pick different ones.
    if request
        .headers()
        .get_all(header::HOST)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(GatewayError::bad_param("Host", "more than one Host header"));
    }
    let s = gw.settings();
    let headers = request.headers();
    // Browsers cannot add headers to a WebSocket handshake, so upgrades prove their origin
    // with `Origin` instead of the anti-forgery header. Every other request needs the header.
    let upgrade = csrf::is_websocket_upgrade(headers);
    if upgrade && route.settings.anti_forgery {
        // The configured origins, else the frontend's own; and the SPA origins CORS lists.
        let mut allowed = if s.websocket_origins.is_empty() {
            vec![gw.origin().to_owned()]
        } else {
            s.websocket_origins.clone()
        };
        if let Some(cors) = &s.cors {
            allowed.extend(
                cors.allowed_origins
                    .iter()
                    .filter_map(|o| o.to_str().ok().map(str::to_owned)),
            );
        }
        csrf::check_websocket_origin(headers, &allowed)?;
    } else if route.settings.anti_forgery {
        s.anti_forgery.check(headers)?;
    }

    let policy = route.settings.token;
    let access = &route.settings.access;
    // Other routes' rules this request is held to as well: its forwarded URL, read the way
    // upstream servers read paths (decoded, case-folded, ...), lands on their upstream.
    let guards = route.guards_for(request.uri().path());
    let ruled = !access.is_empty() || !guards.is_empty();
    let mut clear_cookie = false;
    let session = if matches!(policy, TokenPolicy::None | TokenPolicy::Client) && !ruled {
        None
    } else {
        let started = std::time::Instant::now();
        let looked_up = gw
            .sessions()
            .lookup(headers)
            .instrument(tracing::debug_span!(
                "session.lookup",
                session.cache = Empty
            ))
            .await;
        crate::telemetry::observe_stage(&route.settings.path, "session", started.elapsed());
        match looked_up? {
            Lookup::Active(mut session) => {
                // API activity counts as activity: extend the idle timeout (rate-limited).
                gw.sessions().slide(&mut session).await?;
                Some(session)
            }
            Lookup::Stale => {
                clear_cookie = true;
                None
            }
            Lookup::Anonymous => None,
        }
    };

    // Per-route claims and step-up (RFC 9470): before any token is fetched or anything sent.
    if ruled {
        let Some(session) = &session else {
            let r = GatewayError::Unauthorized("no session").into_response();
            return Ok(with_clear(gw, r, clear_cookie));
        };
        if let Err(denied) = crate::access::enforce(gw, route, &session.ticket.claims) {
            return Ok(with_clear(gw, denied.into_response(), clear_cookie));
        }
        for guard in guards {
            tracing::debug!(
                route = %route.settings.path,
                guarded_by = %guard.route_path,
                "the request reaches another route's upstream; its rules apply too"
            );
            let checked = crate::access::enforce_rules(
                gw,
                &guard.route_path,
                &guard.access,
                &session.ticket.claims,
            );
            if let Err(denied) = checked {
                return Ok(with_clear(gw, denied.into_response(), clear_cookie));
            }
        }
    }

    let started = std::time::Instant::now();
    let token_span = if policy == TokenPolicy::None {
        tracing::Span::none()
    } else {
        tracing::debug_span!("token", token.policy = ?policy, token.cache = Empty)
    };
    let token: Option<ManagedToken> = match (policy, &session) {
        (TokenPolicy::None, _) => None,
        (TokenPolicy::User | TokenPolicy::Exchange, None) => {
            let r = GatewayError::Unauthorized("no session").into_response();
            return Ok(with_clear(gw, r, clear_cookie));
        }
        (
            TokenPolicy::User | TokenPolicy::UserOrClient | TokenPolicy::UserOrNone,
            Some(session),
        ) => match gw
            .tokens()
            .user_token(session, &route.settings)
            .instrument(token_span.clone())
            .await
        {
            Ok(t) => Some(t),
            Err(TokenFailure::SessionEnded(reason)) if policy == TokenPolicy::UserOrNone => {
                // The token service has ended the session: forward anonymously, and tell the
                // browser its cookie is dead.
                tracing::info!(reason = %untrusted(&reason), "session ended; forwarding without a token");
                clear_cookie = true;
                None
            }
            Err(TokenFailure::SessionEnded(reason)) => {
                return Box::pin(end_session(gw, session, &reason)).await
            }
            Err(TokenFailure::Unavailable(_) | TokenFailure::Rejected(_))
                if policy == TokenPolicy::UserOrNone =>
            {
                None
            }
            Err(TokenFailure::Unavailable(e)) => return Err(e),
            Err(TokenFailure::Rejected(reason)) => {
                tracing::warn!(reason = %untrusted(&reason), "user token request rejected");
                return Err(GatewayError::Unauthorized("token request rejected"));
            }
        },
        (TokenPolicy::UserOrNone, None) => None,
        (TokenPolicy::Exchange, Some(session)) => {
            // Boxed (as below): keeps the less common policies' futures out of the size of
            // every proxied request's future.
            match Box::pin(
                gw.tokens()
                    .exchanged_token(session, &route.settings)
                    .instrument(token_span.clone()),
            )
            .await
            {
                Ok(t) => Some(t),
                Err(TokenFailure::SessionEnded(reason)) => {
                    return Box::pin(end_session(gw, session, &reason)).await
                }
                Err(TokenFailure::Unavailable(e)) => return Err(e),
                Err(TokenFailure::Rejected(reason)) => {
                    tracing::warn!(reason = %untrusted(&reason), "token exchange refused by the identity provider");
                    return Err(GatewayError::Forbidden("token exchange refused"));
                }
            }
        }
        (TokenPolicy::Client, _) | (TokenPolicy::UserOrClient, None) => {
            match Box::pin(
                gw.tokens()
                    .client_token(&route.settings)
                    .instrument(token_span.clone()),
            )
            .await
            {
                Ok(t) => Some(t),
                Err(TokenFailure::Unavailable(e)) => return Err(e),
                Err(TokenFailure::SessionEnded(reason) | TokenFailure::Rejected(reason)) => {
                    tracing::warn!(reason = %untrusted(&reason), "client credentials token request rejected");
                    return Err(GatewayError::Unauthorized("client token unavailable"));
                }
            }
        }
    };

    if token.is_some() {
        crate::telemetry::observe_stage(&route.settings.path, "token", started.elapsed());
    }

    let ctx = ForwardContext {
        client_addr: peer,
        public_proto: s.public_url.scheme(),
        public_host: gw.public_host(),
        trust_forwarded: s.trust_forwarded_headers,
        own_cookie_names: gw.own_cookie_names(),
    };
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(parts, Body::new(body));
    let forwarder = gw.forwarder();
    let upstream_span = upstream_span(route);
    let started = std::time::Instant::now();
    let response = if upgrade {
        // A tunnel lives no longer than its session.
        let session_end = session.as_ref().map(|s| {
            Box::pin(gw.sessions().clone().wait_until_ended(s.key().to_owned()))
                as crate::proxy::SessionEnd
        });
        Box::pin(
            forwarder
                .forward_upgrade(route, request, token.as_ref(), &ctx, session_end)
                .instrument(upstream_span.clone()),
        )
        .await?
    } else {
        // Boxed: the upstream call's future is the largest part of this one (see
        // `DirectRoutes::serve`).
        Box::pin(crate::proxy::dpop::forward(
            forwarder,
            route,
            request,
            token.as_ref(),
            &ctx,
        ))
        .instrument(upstream_span.clone())
        .await?
    };
    upstream_span.record("http.response.status_code", response.status().as_u16());
    crate::telemetry::observe_stage(&route.settings.path, "upstream", started.elapsed());
    // An upstream's own RFC 9470 challenge reaches the SPA in the gateway's shape.
    let response = match crate::access::normalize_upstream_challenge(gw, route, response) {
        Ok(r) => r,
        Err(challenge) => challenge.into_response(),
    };
    Ok(with_clear(gw, response, clear_cookie))
}

/// The client span of the upstream call (the upstream's `traceparent` names it as parent).
fn upstream_span(route: &Route) -> tracing::Span {
    let upstream = &route.settings.upstream;
    tracing::debug_span!(
        "upstream",
        otel.kind = "client",
        server.address = upstream.host_str(),
        server.port = upstream.port_or_known_default(),
        portcullis.route = %route.settings.path,
        http.response.status_code = Empty,
    )
}

/// The session can get no more tokens (`invalid_grant`, no refresh token): end it, 401, and
/// clear the cookie.
async fn end_session(
    gw: &Frontend,
    session: &ActiveSession,
    reason: &str,
) -> Result<Response, GatewayError> {
    tracing::info!(reason = %untrusted(reason), "token refresh failed for good; ending the session");
    gw.sessions().end(session.key()).await?;
    let r = GatewayError::Unauthorized("session ended").into_response();
    Ok(with_clear(gw, r, true))
}

fn with_clear(gw: &Frontend, mut r: Response, clear: bool) -> Response {
    if clear {
        r.headers_mut().append(
            header::SET_COOKIE,
            gw.sessions().cookies().clear_session_cookie(),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The direct dispatch must take exactly the requests the frontend's router sends to a
    /// proxied route, and with the same pattern: a request it took that the router would have
    /// given to a management endpoint, or the reverse, would change what the gateway does.
    /// Checked against axum's own router over nested, overlapping and look-alike prefixes and
    /// paths at every boundary.
    #[tokio::test]
    async fn direct_dispatch_matches_exactly_what_the_router_matches() {
        let prefixes = [
            "/api",
            "/api/admin",
            "/api/adminx",
            "/apix",
            "/v1.0",
            "/bff",
            "/a/b/c",
        ];
        let reserved = vec![
            "/bff/login".to_owned(),
            "/bff/user".to_owned(),
            "/signin-oidc".to_owned(),
        ];
        let matcher = PrefixMatcher::new(
            reserved.clone(),
            prefixes.iter().map(|p| (*p).to_owned()).collect(),
        );
        let mut router: Router = Router::new();
        for r in &reserved {
            router = router.route(r, any(|| async { "reserved" }));
        }
        for (i, p) in matcher.prefixes.iter().enumerate() {
            for (j, pattern) in [p.clone(), format!("{p}/"), format!("{p}/{{*rest}}")]
                .into_iter()
                .enumerate()
            {
                let body = format!("{i}:{j}");
                router = router.route(&pattern, any(move || async move { body }));
            }
        }
        let router = router.fallback(|| async { "fallback" });
        let suffixes = [
            "",
            "/",
            "//",
            "/x",
            "x",
            "/x/",
            "/x/y",
            "%2f",
            "/%2e%2e/",
            ";a",
            "/;a",
            "-",
            ".json",
            "/login",
            "/user",
            "/admin",
            "/adminx/1",
        ];
        let mut paths: Vec<String> = vec!["/".into(), "/signin-oidc".into(), "/other".into()];
        for p in prefixes.iter().chain(["/bff/login", "/b", "/a/b"].iter()) {
            for s in suffixes {
                paths.push(format!("{p}{s}"));
            }
        }
        for path in paths {
            let request = Request::builder().uri(&path).body(Body::empty()).unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let bytes = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            let routed = String::from_utf8(bytes.to_vec()).unwrap();
            let direct = matcher
                .find(&path)
                .map_or("router".to_owned(), |(i, j)| format!("{i}:{j}"));
            let expected = match routed.as_str() {
                "reserved" | "fallback" => "router",
                taken => taken,
            };
            assert_eq!(direct, expected, "path {path}");
        }
    }
}
