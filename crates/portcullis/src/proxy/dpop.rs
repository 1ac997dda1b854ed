//! DPoP on proxied calls (RFC 9449 §7): the proof of each upstream request, and the one retry
//! a resource server's nonce challenge earns.
//!
//! With a DPoP-bound token the upstream request carries `Authorization: DPoP <token>` and a
//! `DPoP` proof whose `htu` is the final upstream URL (scheme, authority and the full path,
//! the upstream's own path prefix included; no query, no fragment), `htm` the method and
//! `ath` the token's hash. The browser's own `DPoP` and `Authorization` headers were removed
//! before (see [`super`]).
//!
//! A `401` with `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a `DPoP-Nonce` (§9) is
//! retried once with that nonce when the request body can be sent again: requests without a
//! body and bodies that declare a length up to [`REPLAY_LIMIT`] are buffered for that.
//! Longer or chunked bodies stream as always and are not retried: the browser sees the
//! `401` (the nonce is remembered, so its next call succeeds). Nonces are remembered per
//! upstream origin from every response that carries one.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::BodyExt as _;
use portcullis_token::ManagedToken;

use super::forward::{ForwardContext, Forwarder};
use super::routes::Route;
use crate::error::GatewayError;

/// The `DPoP` request header.
pub const DPOP: HeaderName = HeaderName::from_static("dpop");

/// Largest request body buffered so that a nonce challenge can be answered (64 KiB).
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// The proof for `method` on the upstream `uri`, and the URL it names.
pub(super) fn proof(
    token: &ManagedToken,
    method: &Method,
    uri: &Uri,
) -> Result<(url::Url, HeaderValue), GatewayError> {
    let target = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or_default(),
        uri.path()
    );
    let url = url::Url::parse(&target)
        .map_err(|_| GatewayError::Internal("upstream URL is not a URL".into()))?;
    let proof = token
        .dpop_proof(method.as_str(), &url)
        .map_err(|e| GatewayError::Internal(format!("DPoP proof: {e}")))?
        .ok_or_else(|| GatewayError::Internal("DPoP proof for an unbound token".into()))?;
    Ok((url, proof))
}

/// Forwards `request`; for a DPoP-bound token, answers one nonce challenge by sending the
/// request again with a fresh proof (when its body is replayable, see the module docs).
///
/// # Errors
///
/// As [`Forwarder::forward`]; a body longer than it declared is refused as the browser's
/// fault (400); a buffered body not received within the route's `timeout` is a
/// [`GatewayError::RequestTimeout`] (408).
pub async fn forward(
    forwarder: &Forwarder,
    route: &Route,
    request: Request<Body>,
    token: Option<&ManagedToken>,
    ctx: &ForwardContext<'_>,
) -> Result<Response<Body>, GatewayError> {
    let Some(token) = token.filter(|t| t.is_dpop_bound()) else {
        return forwarder.forward(route, request, token, ctx).await;
    };
    // Boxed: with its buffering and second attempt, the DPoP path's future is several
    // times the plain one's, which every Bearer call would otherwise carry.
    Box::pin(forward_with_proof(forwarder, route, request, token, ctx)).await
}

/// [`forward`] with a DPoP-bound token.
async fn forward_with_proof(
    forwarder: &Forwarder,
    route: &Route,
    request: Request<Body>,
    token: &ManagedToken,
    ctx: &ForwardContext<'_>,
) -> Result<Response<Body>, GatewayError> {
    let replayable = http_body::Body::size_hint(request.body())
        .upper()
        .is_some_and(|n| n <= REPLAY_LIMIT);
    if !replayable {
        return forwarder.forward(route, request, Some(token), ctx).await;
    }
    let (parts, body) = request.into_parts();
    // Buffering waits for the browser: bounded by the route's timeout like the upstream
    // call, so a body that trickles in cannot hold the connection and the buffer (408).
    let collected = tokio::time::timeout(
        route.settings.timeout,
        http_body_util::Limited::new(body, REPLAY_LIMIT as usize).collect(),
    )
    .await
    .map_err(|_| GatewayError::RequestTimeout)?;
    let bytes = collected
        .map_err(|_| {
            GatewayError::bad_param("body", "the request body is malformed or was cut off")
        })?
        .to_bytes();
    let mut again = Request::new(Body::from(bytes.clone()));
    *again.method_mut() = parts.method.clone();
    *again.uri_mut() = parts.uri.clone();
    *again.version_mut() = parts.version;
    *again.headers_mut() = parts.headers.clone();
    let first = forwarder
        .forward(
            route,
            Request::from_parts(parts, Body::from(bytes)),
            Some(token),
            ctx,
        )
        .await?;
    if !portcullis_token::dpop::is_nonce_challenge(first.status(), first.headers()) {
        return Ok(first);
    }
    // The nonce was remembered by `forward`; the new proof carries it.
    tracing::debug!(route = %route.settings.path, "upstream asked for a DPoP nonce; retrying once");
    drop(first);
    forwarder.forward(route, again, Some(token), ctx).await
}
