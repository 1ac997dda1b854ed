//! Assembling the gateway: state shared by all handlers and the request pipeline.
//!
//! ```text
//!                    ┌─────────────── Router ───────────────┐
//! browser ──HTTP──▶  │ /healthz /readyz                     │
//!                    │ {base}/login ──▶ IdP (302)           │
//!                    │ {callback}  ──▶ code exchange, ID token → session + cookie
//!                    │ {base}/user  [anti-forgery] ─▶ cookie → session → claims
//!                    │ {base}/logout, signed-out, silent-login(-callback), backchannel, diagnostics
//!                    │ route prefix [anti-forgery | WS origin]
//!                    │     └▶ cookie → session → token (policy, refresh) → proxy → upstream
//!                    │ fallback: the SPA (static files, index.html for client routes)
//!                    └───────────────────────────────────────┘
//!                      every failure of a browser navigation → HTML page (error.rs)
//! ```
//! Every proxied route goes through [`api`], which checks anti-forgery before anything else;
//! the only way around it is a route whose settings say `anti_forgery: false`, which the
//! configuration calls out loudly.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use portcullis_session::SessionStore;
use portcullis_token::{ManagedToken, SharedClock};

use crate::bff;
use crate::csrf;
use crate::error::GatewayError;
use crate::log_safe::untrusted;
use crate::oidc::Provider;
use crate::proxy::{ForwardContext, Forwarder, Route, RouteTable};
use crate::session::{ActiveSession, KeyRing, Lookup, Sessions};
use crate::settings::{GatewaySettings, TokenPolicy};
use crate::token::{TokenFailure, TokenService};

/// The gateway: cheap to clone, shared by every handler.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<GatewaySettings>,
    sessions: Sessions,
    provider: Arc<Provider>,
    tokens: TokenService,
    forwarder: Forwarder,
    routes: RouteTable,
    clock: SharedClock,
    redirect_uri: String,
    signed_out_uri: String,
    home: String,
    logout_path: String,
    silent_callback_path: String,
    public_host: String,
    own_cookie_names: Vec<String>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// Joins a base path (`""` or `/bff`) and a path (`/login`).
pub fn join_path(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

impl Gateway {
    /// Builds a gateway from validated settings, a session store, the ticket key ring and a
    /// clock. Does no I/O: the IdP's discovery document and keys are fetched lazily on first
    /// use, so a gateway can start while the IdP is down.
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
        let settings = Arc::new(settings);
        let http = reqwest::Client::builder()
            .timeout(settings.oidc.http_timeout)
            .connect_timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let sessions = Sessions::new(
            store,
            Arc::new(keys),
            clock.clone(),
            settings.session.clone(),
            settings.cookies.clone(),
        );
        let provider = Arc::new(Provider::new(
            settings.oidc.issuer.clone(),
            http.clone(),
            clock.clone(),
        ));
        let tokens = TokenService::new(
            provider.clone(),
            settings.clone(),
            sessions.clone(),
            http,
            clock.clone(),
        );
        let public = &settings.public_url;
        let origin = public.origin().ascii_serialization();
        let public_host = match public.port() {
            Some(p) => format!("{}:{p}", public.host_str().unwrap_or_default()),
            None => public.host_str().unwrap_or_default().to_owned(),
        };
        let home = match public.path() {
            "" => "/".to_owned(),
            p => p.to_owned(),
        };
        let own_cookie_names = vec![settings.cookies.session_name().to_owned()];
        Ok(Self {
            inner: Arc::new(Inner {
                redirect_uri: format!("{origin}{}", settings.callback_path),
                signed_out_uri: format!("{origin}{}", settings.signed_out_callback_path),
                logout_path: join_path(&settings.base_path, "/logout"),
                silent_callback_path: join_path(&settings.base_path, "/silent-login-callback"),
                home,
                public_host,
                own_cookie_names,
                routes: RouteTable::new(settings.routes.clone()),
                forwarder: Forwarder::new()?,
                settings,
                sessions,
                provider,
                tokens,
                clock,
            }),
        })
    }

    /// The settings the gateway was built with.
    pub fn settings(&self) -> &GatewaySettings {
        &self.inner.settings
    }
    /// The session manager (store, key ring, cache).
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }
    /// The OpenID Provider client (discovery and JWKS, cached).
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
    /// The OIDC `redirect_uri`: public origin + [`GatewaySettings::callback_path`].
    pub fn redirect_uri(&self) -> &str {
        &self.inner.redirect_uri
    }
    /// The post-logout redirect URI: public origin + [`GatewaySettings::signed_out_callback_path`].
    pub fn signed_out_uri(&self) -> &str {
        &self.inner.signed_out_uri
    }
    /// Where the browser goes after login/logout by default: the path of the public URL (`/`
    /// when it has none).
    pub fn home(&self) -> &str {
        &self.inner.home
    }
    /// Path of the logout endpoint (`{base_path}/logout`).
    pub fn logout_path(&self) -> &str {
        &self.inner.logout_path
    }
    /// Path of the silent-login callback (`{base_path}/silent-login-callback`).
    pub fn silent_callback_path(&self) -> &str {
        &self.inner.silent_callback_path
    }
    /// Lifetime of a pending login in seconds ([`SessionSettings::login_timeout`](crate::settings::SessionSettings::login_timeout); 600 if it
    /// does not fit an `i64`).
    pub fn login_timeout_secs(&self) -> i64 {
        i64::try_from(self.inner.settings.session.login_timeout.as_secs()).unwrap_or(600)
    }

    /// Starts the background work a running gateway needs: periodic cleanup of expired
    /// sessions and, for shared stores, the listener that keeps the session cache coherent
    /// across instances. Abort the handles to stop them.
    pub fn spawn_background_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![self.sessions().spawn_cleanup()];
        tasks.extend(self.sessions().spawn_invalidation_listener());
        tasks
    }

    /// The full router. `fallback` serves everything that is not a management endpoint or
    /// an API route (typically the SPA's static files); `None` answers 404.
    pub fn router(&self, fallback: Option<Router>) -> Router {
        self.router_with_local_apis(fallback, Vec::new())
    }

    /// The full router plus local API routers (handlers in this process), each nested under
    /// its path prefix and protected like proxied routes: anti-forgery on every request,
    /// 401 (never a redirect) for anonymous callers that use [`crate::local_api::CurrentUser`].
    pub fn router_with_local_apis(
        &self,
        fallback: Option<Router>,
        local_apis: Vec<(String, Router)>,
    ) -> Router {
        let s = self.settings();
        let base = &s.base_path;
        let mut router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
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
            );
        for route in self.inner.routes.routes() {
            let path = &route.settings.path;
            // The prefix itself, the prefix with a trailing slash (`{*rest}` needs at least
            // one character) and everything below it.
            for pattern in [
                path.clone(),
                format!("{path}/"),
                format!("{path}/{{*rest}}"),
            ] {
                let r = route.clone();
                router = router.route(&pattern, any(move |state, req| api(state, r.clone(), req)));
            }
        }
        let router = match fallback {
            Some(f) => router.fallback_service(f),
            None => router.fallback(|| async { StatusCode::NOT_FOUND }),
        };
        let mut router = router.with_state(self.clone());
        for (prefix, local) in local_apis {
            router = router.nest(&prefix, crate::local_api::protect(self, local));
        }
        // Failed browser navigations get an HTML page (see `error`), whoever failed.
        let anti_forgery_header = s.anti_forgery.header_name().clone();
        router.layer(axum::middleware::from_fn(move |request, next| {
            crate::error::render_for_navigations(anti_forgery_header.clone(), request, next)
        }))
    }
}

async fn readyz(State(gw): State<Gateway>) -> Response {
    match gw.sessions().store().ping().await {
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
async fn api(State(gw): State<Gateway>, route: Arc<Route>, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0);
    match api_inner(&gw, peer, &route, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn api_inner(
    gw: &Gateway,
    peer: Option<SocketAddr>,
    route: &Route,
    request: Request,
) -> Result<Response, GatewayError> {
    crate::proxy::check_method(request.method())?;
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
        if s.websocket_origins.is_empty() {
            csrf::check_websocket_origin(headers, &[s.public_url.origin().ascii_serialization()])?;
        } else {
            csrf::check_websocket_origin(headers, &s.websocket_origins)?;
        }
    } else if route.settings.anti_forgery {
        s.anti_forgery.check(headers)?;
    }

    let policy = route.settings.token;
    let mut clear_cookie = false;
    let session = if matches!(policy, TokenPolicy::None | TokenPolicy::Client) {
        None
    } else {
        match gw.sessions().lookup(headers).await? {
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

    let token: Option<ManagedToken> = match (policy, &session) {
        (TokenPolicy::None, _) => None,
        (TokenPolicy::User | TokenPolicy::Exchange, None) => {
            let r = GatewayError::Unauthorized("no session").into_response();
            return Ok(with_clear(gw, r, clear_cookie));
        }
        (
            TokenPolicy::User | TokenPolicy::UserOrClient | TokenPolicy::UserOrNone,
            Some(session),
        ) => match gw.tokens().user_token(session, &route.settings).await {
            Ok(t) => Some(t),
            Err(TokenFailure::SessionEnded(reason)) if policy == TokenPolicy::UserOrNone => {
                // The token service has ended the session: forward anonymously, and tell the
                // browser its cookie is dead.
                tracing::info!(reason = %untrusted(&reason), "session ended; forwarding without a token");
                clear_cookie = true;
                None
            }
            Err(TokenFailure::SessionEnded(reason)) => {
                return end_session(gw, session, &reason).await
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
            match gw.tokens().exchanged_token(session, &route.settings).await {
                Ok(t) => Some(t),
                Err(TokenFailure::SessionEnded(reason)) => {
                    return end_session(gw, session, &reason).await
                }
                Err(TokenFailure::Unavailable(e)) => return Err(e),
                Err(TokenFailure::Rejected(reason)) => {
                    tracing::warn!(reason = %untrusted(&reason), "token exchange refused by the identity provider");
                    return Err(GatewayError::Forbidden("token exchange refused"));
                }
            }
        }
        (TokenPolicy::Client, _) | (TokenPolicy::UserOrClient, None) => {
            match gw.tokens().client_token(&route.settings).await {
                Ok(t) => Some(t),
                Err(TokenFailure::Unavailable(e)) => return Err(e),
                Err(TokenFailure::SessionEnded(reason) | TokenFailure::Rejected(reason)) => {
                    tracing::warn!(reason = %untrusted(&reason), "client credentials token request rejected");
                    return Err(GatewayError::Unauthorized("client token unavailable"));
                }
            }
        }
    };

    let ctx = ForwardContext {
        client_addr: peer,
        public_proto: s.public_url.scheme(),
        public_host: &gw.inner.public_host,
        trust_forwarded: s.trust_forwarded_headers,
        own_cookie_names: &gw.inner.own_cookie_names,
    };
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(parts, Body::new(body));
    let forwarder = &gw.inner.forwarder;
    let response = if upgrade {
        // A tunnel lives no longer than its session.
        let session_end = session.as_ref().map(|s| {
            Box::pin(gw.sessions().clone().wait_until_ended(s.key().to_owned()))
                as crate::proxy::SessionEnd
        });
        forwarder
            .forward_upgrade(route, request, token.as_ref(), &ctx, session_end)
            .await?
    } else {
        crate::proxy::dpop::forward(forwarder, route, request, token.as_ref(), &ctx).await?
    };
    Ok(with_clear(gw, response, clear_cookie))
}

/// The session can get no more tokens (`invalid_grant`, no refresh token): end it, 401, and
/// clear the cookie.
async fn end_session(
    gw: &Gateway,
    session: &ActiveSession,
    reason: &str,
) -> Result<Response, GatewayError> {
    tracing::info!(reason = %untrusted(reason), "token refresh failed for good; ending the session");
    gw.sessions().end(session.key()).await?;
    let r = GatewayError::Unauthorized("session ended").into_response();
    Ok(with_clear(gw, r, true))
}

fn with_clear(gw: &Gateway, mut r: Response, clear: bool) -> Response {
    if clear {
        r.headers_mut().append(
            header::SET_COOKIE,
            gw.sessions().cookies().clear_session_cookie(),
        );
    }
    r
}
