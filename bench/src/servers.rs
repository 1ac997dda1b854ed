//! The servers around the gateway: upstream API, fake identity provider, plain reverse proxy.
//! All listen on 127.0.0.1 with an OS-chosen port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

/// What the upstream answers to `GET /hello`: a small JSON document (~100 bytes).
pub const UPSTREAM_BODY: &str =
    r#"{"message":"hello from upstream","items":[1,2,3],"server":"portcullis-bench","ok":true}"#;

/// Serves `router` on 127.0.0.1:0 (with peer addresses, which the gateway's API routes need).
pub async fn serve(router: Router) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((addr, serve_on(listener, router)))
}

/// Serves `router` on `listener`, with `TCP_NODELAY` on every accepted connection (as the
/// gateway binary does).
pub fn serve_on(listener: tokio::net::TcpListener, router: Router) -> JoinHandle<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("server stopped: {e}");
        }
    })
}

/// The upstream API. Counts requests by the `Authorization` they carried, so every scenario
/// can check that the gateway attached the session's token (and the others did not).
#[derive(Debug)]
pub struct Upstream {
    /// `Authorization` the gateway must send for the benchmark session.
    pub expected_authorization: HeaderValue,
    pub with_token: AtomicU64,
    pub without_token: AtomicU64,
}

impl Upstream {
    /// Requests seen since the last call: (with the expected token, without any token).
    pub fn take_counts(&self) -> (u64, u64) {
        (
            self.with_token.swap(0, Ordering::SeqCst),
            self.without_token.swap(0, Ordering::SeqCst),
        )
    }
}

pub fn upstream_router(state: Arc<Upstream>) -> Router {
    Router::new().route("/hello", get(hello)).with_state(state)
}

async fn hello(State(up): State<Arc<Upstream>>, headers: HeaderMap) -> Response {
    match headers.get(header::AUTHORIZATION) {
        None => {
            up.without_token.fetch_add(1, Ordering::Relaxed);
        }
        Some(v) if v == up.expected_authorization => {
            up.with_token.fetch_add(1, Ordering::Relaxed);
        }
        // The same token, DPoP-bound: `DPoP <token>` with a proof (not verified here: the
        // benchmark measures the gateway's cost of signing it).
        Some(v)
            if headers.contains_key("dpop")
                && v.as_bytes().strip_prefix(b"DPoP ")
                    == up
                        .expected_authorization
                        .as_bytes()
                        .strip_prefix(b"Bearer ") =>
        {
            up.with_token.fetch_add(1, Ordering::Relaxed);
        }
        // A wrong token is a gateway bug: answer 401 so the load generator fails loudly.
        Some(_) => return StatusCode::UNAUTHORIZED.into_response(),
    }
    ([(header::CONTENT_TYPE, "application/json")], UPSTREAM_BODY).into_response()
}

/// The fake identity provider: discovery and an empty key set. The token endpoint must never
/// be called during a run (the sessions' access tokens are valid for an hour); it counts calls
/// and answers `invalid_grant`, which ends the session and makes the run fail loudly.
#[derive(Debug, Default)]
pub struct Idp {
    pub issuer: String,
    pub discovery_calls: AtomicU64,
    pub jwks_calls: AtomicU64,
    pub token_calls: AtomicU64,
}

pub fn idp_router(state: Arc<Idp>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .with_state(state)
}

async fn discovery(State(idp): State<Arc<Idp>>) -> Json<serde_json::Value> {
    idp.discovery_calls.fetch_add(1, Ordering::SeqCst);
    let i = &idp.issuer;
    Json(serde_json::json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "end_session_endpoint": format!("{i}/end-session"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn jwks(State(idp): State<Arc<Idp>>) -> Json<serde_json::Value> {
    idp.jwks_calls.fetch_add(1, Ordering::SeqCst);
    Json(serde_json::json!({ "keys": [] }))
}

async fn token(State(idp): State<Arc<Idp>>) -> Response {
    idp.token_calls.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": "invalid_grant" })),
    )
        .into_response()
}

/// The baseline: a plain reverse proxy. `/api/{rest}` goes to `http://upstream/{rest}` with a
/// pooled client and the response streams back; no session, no token, no header hygiene.
#[derive(Clone)]
pub struct Baseline {
    client: Client<HttpConnector, Body>,
    upstream: String,
}

pub fn baseline_router(upstream: SocketAddr) -> Router {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(http);
    let state = Baseline {
        client,
        upstream: upstream.to_string(),
    };
    Router::new()
        .route("/api/{*rest}", any(proxy))
        .with_state(state)
}

async fn proxy(State(b): State<Baseline>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let rest = parts
        .uri
        .path()
        .strip_prefix("/api")
        .unwrap_or_default()
        .to_owned();
    let target = match parts.uri.query() {
        Some(q) => format!("http://{}{rest}?{q}", b.upstream),
        None => format!("http://{}{rest}", b.upstream),
    };
    let Ok(uri) = target.parse::<Uri>() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    parts.uri = uri;
    // The client sets Host from the URI.
    parts.headers.remove(header::HOST);
    match b.client.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
