//! `GET {base}/silent-login-callback`: the page a `prompt=none` login ends on, inside a
//! hidden iframe. It tells the parent window (same origin only) whether a session exists.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::GatewayError;
use crate::frontend::Frontend;
use crate::session::Lookup;

/// Handler of the silent-login callback: a small HTML page whose script posts
/// `{source: 'bff-silent-login', isLoggedIn}` to the parent window on the same origin.
///
/// # Errors
///
/// [`GatewayError`] (503) when the session store is unavailable.
pub async fn silent_login_callback(
    State(gw): State<Frontend>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let logged_in = matches!(gw.sessions().lookup(&headers).await?, Lookup::Active(_));
    let script = format!(
        "window.parent.postMessage({{source:'bff-silent-login',isLoggedIn:{logged_in}}},window.location.origin);"
    );
    let hash = STANDARD.encode(Sha256::digest(script.as_bytes()));
    let body = format!("<!doctype html><html><body><script>{script}</script></body></html>");
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(csp) = HeaderValue::from_str(&format!(
        "default-src 'none'; script-src 'sha256-{hash}'; frame-ancestors 'self'"
    )) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    Ok(r)
}
