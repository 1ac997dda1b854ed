//! In-process test support: a [`Gateway`] on the memory store with a [`ManualClock`], a tiny
//! IdP (discovery + token endpoint, with injectable failures) and a counting upstream, both
//! axum servers on `127.0.0.1:0`; requests go through the real router with `oneshot`.
//!
//! Sessions are created through the public [`portcullis::session::Sessions`] API with tokens
//! in the ticket, so no login round trip (and no signed ID token) is needed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use portcullis::cookie::{CookieSettings, SameSite};
use portcullis::csrf::AntiForgery;
use portcullis::session::{Claim, Key, KeyRing, Ticket};
use portcullis::settings::{
    ClientAuthSettings, GatewaySettings, OidcSettings, ResponseMode, RouteSettings,
    SessionSettings, TokenPolicy, TokenSettings,
};
use portcullis::Gateway;
use portcullis_token::{ManualClock, Secret, UserTokens};
use serde_json::{json, Value};
use tower::ServiceExt;

/// The manual clock's start: every test begins at this instant.
pub const T0: i64 = 1_700_000_000;

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

// ---------------------------------------------------------------------------------------
// IdP

/// A minimal IdP: `/.well-known/openid-configuration`, `/jwks` (empty) and `/token`, which
/// answers every grant with a counter-numbered token (`at-N` for refreshes, `cc-N` for
/// client credentials, `ex-N` for exchanges) unless a failure is injected for that grant.
#[derive(Clone)]
pub struct MockIdp {
    pub issuer: String,
    state: Arc<IdpState>,
}

#[derive(Default)]
struct IdpState {
    issuer: Mutex<String>,
    issued: AtomicU64,
    calls: Mutex<HashMap<String, u64>>,
    faults: Mutex<HashMap<String, (u16, String)>>,
}

pub const REFRESH: &str = "refresh_token";
pub const CLIENT_CREDENTIALS: &str = "client_credentials";
pub const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

impl MockIdp {
    pub async fn start() -> MockIdp {
        let state = Arc::new(IdpState::default());
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(|| async { axum::Json(json!({"keys": []})) }))
            .route("/token", post(token))
            .with_state(state.clone());
        let addr = serve(router).await;
        let issuer = format!("http://{addr}");
        *state.issuer.lock().unwrap() = issuer.clone();
        MockIdp { issuer, state }
    }

    /// Token requests of this grant type so far.
    pub fn calls(&self, grant: &str) -> u64 {
        self.state
            .calls
            .lock()
            .unwrap()
            .get(grant)
            .copied()
            .unwrap_or(0)
    }

    /// Answer every request of this grant type with `status` and the JSON `body`.
    pub fn fail(&self, grant: &str, status: u16, body: Value) {
        self.state
            .faults
            .lock()
            .unwrap()
            .insert(grant.to_owned(), (status, body.to_string()));
    }

    pub fn heal(&self, grant: &str) {
        self.state.faults.lock().unwrap().remove(grant);
    }
}

async fn discovery(State(st): State<Arc<IdpState>>) -> axum::Json<Value> {
    let iss = st.issuer.lock().unwrap().clone();
    axum::Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/auth"),
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/jwks"),
        "end_session_endpoint": format!("{iss}/session/end"),
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn token(State(st): State<Arc<IdpState>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    *st.calls.lock().unwrap().entry(grant.clone()).or_default() += 1;
    if let Some((status, body)) = st.faults.lock().unwrap().get(&grant).cloned() {
        return (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response();
    }
    let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let prefix = match grant.as_str() {
        REFRESH => "at",
        CLIENT_CREDENTIALS => "cc",
        EXCHANGE => "ex",
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "unsupported_grant_type"})),
            )
                .into_response()
        }
    };
    let mut answer = json!({
        "access_token": format!("{prefix}-{n}"),
        "token_type": "Bearer",
        "expires_in": 300,
    });
    if grant == EXCHANGE {
        answer["issued_token_type"] = json!("urn:ietf:params:oauth:token-type:access_token");
    }
    axum::Json(answer).into_response()
}

// ---------------------------------------------------------------------------------------
// Upstream

/// An upstream that counts requests and answers `{"authorization": <header or null>}`.
#[derive(Clone)]
pub struct Upstream {
    pub url: String,
    hits: Arc<AtomicU64>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let router = Router::new().fallback(move |headers: HeaderMap| {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({
                    "authorization": headers.get("authorization").and_then(|v| v.to_str().ok()),
                }))
            }
        });
        let addr = serve(router).await;
        Upstream {
            url: format!("http://{addr}"),
            hits,
        }
    }

    /// Requests that reached the upstream so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------
// Gateway

pub fn policy_name(p: TokenPolicy) -> &'static str {
    match p {
        TokenPolicy::None => "none",
        TokenPolicy::User => "user",
        TokenPolicy::UserOrNone => "user_or_none",
        TokenPolicy::Client => "client",
        TokenPolicy::UserOrClient => "user_or_client",
        TokenPolicy::Exchange => "exchange",
    }
}

pub const POLICIES: [TokenPolicy; 6] = [
    TokenPolicy::None,
    TokenPolicy::User,
    TokenPolicy::Client,
    TokenPolicy::UserOrClient,
    TokenPolicy::UserOrNone,
    TokenPolicy::Exchange,
];

/// One route per token policy: `/p/<policy>` → `<upstream>/up/<policy>`.
pub fn routes_for_every_policy(upstream: &str) -> Vec<RouteSettings> {
    POLICIES
        .iter()
        .map(|&token| RouteSettings {
            path: format!("/p/{}", policy_name(token)),
            upstream: format!("{upstream}/up/{}", policy_name(token))
                .parse()
                .unwrap(),
            token,
            anti_forgery: true,
            resource: None,
            scope: None,
            audience: (token == TokenPolicy::Exchange).then(|| "urn:test:api".to_owned()),
            refresh_before_expiry: None,
            client: None,
            timeout: Duration::from_secs(5),
            access: Default::default(),
            max_body: None,
        })
        .collect()
}

pub fn settings(
    issuer: &str,
    routes: Vec<RouteSettings>,
    session: SessionSettings,
) -> GatewaySettings {
    let public_url: url::Url = "http://127.0.0.1:8080".parse().unwrap();
    GatewaySettings {
        cookies: CookieSettings::for_public_url(&public_url, None, SameSite::Strict).unwrap(),
        public_url,
        base_path: "/bff".into(),
        callback_path: "/signin-oidc".into(),
        signed_out_callback_path: "/signout-callback-oidc".into(),
        oidc: OidcSettings {
            issuer: issuer.to_owned(),
            client_id: "spa".into(),
            client_auth: ClientAuthSettings::ClientSecretBasic(Secret::new("s")),
            scopes: vec!["openid".into()],
            extra_authorize_params: Vec::new(),
            response_mode: ResponseMode::Query,
            resource: None,
            trusted_audiences: Vec::new(),
            revoke_refresh_token_on_logout: false,
            clock_skew: Duration::from_secs(60),
            fetch_userinfo: false,
            backchannel_logout_all_sessions: false,
            http_timeout: Duration::from_secs(2),
            dpop: None,
            par: Default::default(),
            profile: Default::default(),
        },
        session,
        anti_forgery: AntiForgery::default(),
        routes,
        tokens: TokenSettings::default(),
        diagnostics: false,
        trust_forwarded_headers: false,
        websocket_origins: Vec::new(),
        allowed_hosts: Vec::new(),
        cors: None,
    }
}

/// A gateway with the memory store and a manual clock at [`T0`].
pub async fn gateway(settings: GatewaySettings) -> (Gateway, ManualClock) {
    let store = portcullis_session::connect("memory").await.unwrap();
    let keys = KeyRing::new(vec![Key::parse(&Key::generate_spec("t")).unwrap()]).unwrap();
    let clock = ManualClock::new(T0);
    let gw = Gateway::new(settings, store, keys, Arc::new(clock.clone())).unwrap();
    (gw, clock)
}

/// Tokens of a fresh login at [`T0`]: access token `at-session` valid for `ttl` seconds,
/// refresh token `rt-session` (unless `refresh` is false), an ID token.
pub fn tokens(ttl: i64, refresh: bool) -> UserTokens {
    serde_json::from_value(json!({
        "access_token": {"value": "at-session", "token_type": "Bearer", "expires_at": T0 + ttl, "issued_at": T0},
        "refresh_token": if refresh { json!("rt-session") } else { Value::Null },
        "id_token": "id-session",
    }))
    .unwrap()
}

/// Creates a session for alice directly in the store; returns the `Cookie` header value.
pub async fn login(gw: &Gateway, tokens: UserTokens) -> String {
    let ticket = Ticket {
        sub: "alice".into(),
        sid: Some("sid-1".into()),
        claims: vec![Claim {
            kind: "sub".into(),
            value: "alice".into(),
        }],
        session_state: None,
        tokens,
    };
    let (id, _) = gw.sessions().create(ticket).await.unwrap();
    format!("{}={}", gw.sessions().cookies().session_name(), id.as_str())
}

/// A well-formed session cookie whose session does not exist.
pub fn stale_cookie(gw: &Gateway) -> String {
    format!(
        "{}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        gw.sessions().cookies().session_name()
    )
}

/// A response, read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Whether the answer clears the session cookie.
    pub fn clears_session_cookie(&self, gw: &Gateway) -> bool {
        let prefix = format!("{}=;", gw.sessions().cookies().session_name());
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|c| c.starts_with(&prefix) && c.contains("Max-Age=0"))
    }

    /// `bff:session_expires_in` of a `/bff/user` answer.
    pub fn expires_in(&self) -> i64 {
        self.json()
            .as_array()
            .expect("claims")
            .iter()
            .find(|c| c["type"] == "bff:session_expires_in")
            .and_then(|c| c["value"].as_i64())
            .unwrap_or_else(|| panic!("no bff:session_expires_in in {}", self.body))
    }
}

/// One request through the gateway's router (with a peer address, as `serve` would give).
pub async fn call(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let mut req = req.body(Body::from(body.to_owned())).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 50000))));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
