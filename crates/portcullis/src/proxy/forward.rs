//! The upstream HTTP client and header hygiene.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_token::ManagedToken;

use super::coalesce::{self, Gathered};
use super::routes::Route;
use crate::error::GatewayError;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// How long an idle pooled upstream connection is kept.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A pooled HTTP/1.1 + HTTP/2 client for upstream APIs.
///
/// The connection pool is kept per thread: hyper runs each pooled connection as a task on
/// the runtime that opened it, so a request served by a single-threaded connection worker
/// finds idle upstream connections whose task runs on its own thread, and a request's
/// browser side and upstream side never wake each other across threads.
#[derive(Clone)]
pub struct Forwarder {
    connector: Connector,
    clients: Arc<thread_local::ThreadLocal<Client<Connector, Body>>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forwarder")
    }
}

/// Resolves when the session a WebSocket tunnel runs for has ended; see
/// [`Forwarder::forward_upgrade`].
pub type SessionEnd = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Facts about the incoming request that the upstream should know.
#[derive(Debug, Clone)]
pub struct ForwardContext<'a> {
    /// The browser's address as the gateway saw it (for `X-Forwarded-For`), if known.
    pub client_addr: Option<SocketAddr>,
    /// Scheme and host the browser used (from the public URL).
    pub public_proto: &'a str,
    /// Host (and port) the browser used, from the public URL.
    pub public_host: &'a str,
    /// Keep and extend client-supplied `X-Forwarded-*` (a trusted proxy is in front).
    pub trust_forwarded: bool,
    /// Cookie names of the gateway: an upstream may not overwrite them.
    pub own_cookie_names: &'a [String],
}

// Header names used on every request, parsed once (a `&str` name is parsed on every
// `HeaderMap` call).
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static DPOP: HeaderName = HeaderName::from_static("dpop");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// RFC 9110 §7.6.1's fixed hop-by-hop set, plus `Proxy-Connection` (non-standard, still sent).
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

impl Forwarder {
    /// Builds the upstream HTTP client: HTTP/1.1 and HTTP/2, https with the webpki root
    /// certificates, TCP_NODELAY, 5 s connect timeout.
    ///
    /// # Errors
    ///
    /// A message (`TLS setup failed: ...`) if the rustls configuration cannot be built.
    pub fn new() -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            connector: https,
            clients: Arc::new(thread_local::ThreadLocal::new()),
        })
    }

    /// Sends a request; when it fails after a connection was had (typically the upstream
    /// closed a pooled keep-alive connection as the request went out: Node's 5 s
    /// `keepAliveTimeout`, gunicorn's 2 s, any server's idle limit shorter than the pool's;
    /// also an upstream that drops the connection without answering), sends `replay` once
    /// more on a fresh one. Only requests that are idempotent (RFC 9110 §9.2.2), have no
    /// body and carry no DPoP proof get a `replay`, so a retry can never apply a change
    /// twice.
    async fn send(
        &self,
        request: Request<Body>,
        replay: Option<Replay>,
    ) -> Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        match self.client().request(request).await {
            Err(e) if !e.is_connect() => match replay {
                Some(r) => {
                    tracing::debug!(error = %describe(&e), "upstream connection failed under an idempotent request; sending it again");
                    let mut again = Request::new(Body::empty());
                    *again.method_mut() = r.method;
                    *again.uri_mut() = r.uri;
                    *again.headers_mut() = r.headers;
                    *again.version_mut() = http::Version::HTTP_11;
                    self.client().request(again).await
                }
                None => Err(e),
            },
            other => other,
        }
    }

    /// This thread's client (and connection pool).
    fn client(&self) -> &Client<Connector, Body> {
        self.clients.get_or(|| {
            Client::builder(TokioExecutor::new())
                // Below the shortest keep-alive timeout common upstream servers use
                // (Node.js 5 s): the gateway closes an idle connection before the upstream
                // does, so a request rarely meets a connection the upstream is closing.
                .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
                .pool_max_idle_per_host(64)
                .build(self.connector.clone())
        })
    }

    /// Sends `request` (already stripped of the route prefix's meaning) to the route's
    /// upstream and streams the answer back.
    pub async fn forward(
        &self,
        route: &Route,
        request: Request<Body>,
        token: Option<&ManagedToken>,
        ctx: &ForwardContext<'_>,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, body) = request.into_parts();
        let dpop_url = prepare(&mut parts, route, token, ctx)?;
        // A request that has ended (no body: most GETs) cannot fail while it is sent.
        let (body, body_state) = if http_body::Body::is_end_stream(&body) {
            (body, None)
        } else {
            let (body, state) = BrowserBody::wrap(body);
            (body, Some(state))
        };
        // An idempotent request without a body is sent again once, on a fresh connection,
        // when the upstream dropped the pooled connection under it (see `send`).
        // Not with a DPoP proof: its `jti` may not be used twice (RFC 9449 §11.1), and a
        // resource server that saw the first attempt would refuse the copy.
        let replay = (body_state.is_none() && parts.method.is_idempotent() && dpop_url.is_none())
            .then(|| Replay {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
            });
        let upstream_request = Request::from_parts(parts, body);
        let response =
            match tokio::time::timeout(route.settings.timeout, self.send(upstream_request, replay))
                .await
            {
                // A request body over the limit a layer in front set (`http_body_util::Limited`).
                Err(_) | Ok(Err(_))
                    if body_state
                        .as_ref()
                        .is_some_and(|b| b.too_large.load(Ordering::Relaxed)) =>
                {
                    return Err(GatewayError::PayloadTooLarge)
                }
                // A request body the browser broke (malformed chunking, cut off) fails the
                // upstream call too: it is the browser's fault, not the upstream's.
                Err(_) | Ok(Err(_))
                    if body_state
                        .as_ref()
                        .is_some_and(|b| b.failed.load(Ordering::Relaxed)) =>
                {
                    return Err(GatewayError::bad_param(
                        "body",
                        "the request body is malformed or was cut off",
                    ))
                }
                // Time ran out while the gateway waited for more of the browser's body
                // (nginx's `client_body_timeout`): the browser's fault, not the upstream's.
                // An upstream that stopped reading leaves the body unpolled, not waiting.
                Err(_)
                    if body_state.as_ref().is_some_and(|b| {
                        !b.complete.load(Ordering::Relaxed) && b.waiting.load(Ordering::Relaxed)
                    }) =>
                {
                    return Err(GatewayError::RequestTimeout)
                }
                Err(_) => return Err(GatewayError::UpstreamTimeout),
                Ok(Err(e)) => return Err(GatewayError::UpstreamUnavailable(describe(&e))),
                Ok(Ok(r)) => r,
            };
        let (mut parts, body) = response.into_parts();
        if let (Some(url), Some(token)) = (&dpop_url, token) {
            token.remember_dpop_nonce(url, &parts.headers);
        }
        // Both framings in one answer: the chunked one is the body's real length (RFC 9112
        // §6.3: a proxy removes the Content-Length), else the browser would be told a length
        // the body does not have.
        if parts.headers.contains_key(header::TRANSFER_ENCODING) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        strip_hop_by_hop(&mut parts.headers);
        strip_own_cookies(&mut parts.headers, ctx.own_cookie_names);
        // The browser's connection has its own protocol version (an HTTP/1.0 upstream's
        // status line is not passed on).
        parts.version = http::Version::HTTP_11;
        // A DPoP nonce challenge is answered by sending the request again, whatever its body.
        let nonce_challenge = dpop_url.is_some()
            && portcullis_token::dpop::is_nonce_challenge(parts.status, &parts.headers);
        if nonce_challenge
            || !coalesce::worth_gathering(
                parts.status,
                &parts.headers,
                http_body::Body::is_end_stream(&body),
            )
        {
            return Ok(Response::from_parts(parts, Body::new(body)));
        }
        // A small streamed body that is already here goes out with its head, whole.
        let body = match coalesce::gather(body).await {
            Ok(Gathered::Whole(bytes)) => {
                coalesce::set_length(&mut parts.headers, bytes.len());
                Body::from(bytes)
            }
            Ok(Gathered::Streamed(body)) => Body::new(body),
            // Nothing went to the browser yet: a clean 502 instead of a cut response.
            Err(e) => {
                return Err(GatewayError::UpstreamUnavailable(format!(
                    "the response body broke off: {e}"
                )))
            }
        };
        Ok(Response::from_parts(parts, body))
    }
}

impl Forwarder {
    /// Forwards a WebSocket upgrade (the caller has checked the `Origin` allow-list). On a
    /// `101` from the upstream, both connections are upgraded and bytes are copied both ways
    /// until either side closes; frames are not parsed. Any other answer is passed back as
    /// an ordinary response.
    ///
    /// `session_end`, when given, resolves when the session the tunnel runs for has ended
    /// (logout, expiry, an operator ending it): the tunnel is then closed, both sides.
    pub async fn forward_upgrade(
        &self,
        route: &Route,
        mut request: Request<Body>,
        token: Option<&ManagedToken>,
        ctx: &ForwardContext<'_>,
        session_end: Option<SessionEnd>,
    ) -> Result<Response<Body>, GatewayError> {
        let client_side = hyper::upgrade::on(&mut request);
        let (mut parts, _body) = request.into_parts();
        prepare(&mut parts, route, token, ctx)?;
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let upstream_request = Request::from_parts(parts, Body::empty());
        let mut response = match tokio::time::timeout(
            route.settings.timeout,
            self.client().request(upstream_request),
        )
        .await
        {
            Err(_) => return Err(GatewayError::UpstreamTimeout),
            Ok(Err(e)) => return Err(GatewayError::UpstreamUnavailable(describe(&e))),
            Ok(Ok(r)) => r,
        };
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            strip_own_cookies(&mut parts.headers, ctx.own_cookie_names);
            return Ok(Response::from_parts(parts, Body::new(body)));
        }
        let upstream_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::join!(client_side, upstream_side) {
                (Ok(client), Ok(upstream)) => {
                    let mut client = hyper_util::rt::TokioIo::new(client);
                    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                    let ended = async {
                        match session_end {
                            Some(end) => end.await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                            if let Err(e) = copied {
                                tracing::debug!(error = %e, "websocket tunnel closed with an error");
                            }
                        }
                        () = ended => {
                            // Dropping both upgraded connections closes them.
                            tracing::info!("websocket tunnel closed: its session ended");
                        }
                    }
                }
                (Err(e), _) | (_, Err(e)) => tracing::info!(error = %e, "websocket upgrade failed"),
            }
        });
        let (mut parts, _) = response.into_parts();
        strip_own_cookies(&mut parts.headers, ctx.own_cookie_names);
        Ok(Response::from_parts(parts, Body::empty()))
    }
}

/// Points a browser request at the route's upstream: target URI, header hygiene, `Host`,
/// and this request's own `Authorization` (never a client default) and, for a DPoP-bound
/// token, its `DPoP` proof; then returns the upstream URL the proof names.
fn prepare(
    parts: &mut http::request::Parts,
    route: &Route,
    token: Option<&ManagedToken>,
    ctx: &ForwardContext<'_>,
) -> Result<Option<url::Url>, GatewayError> {
    let uri = route.upstream_uri(parts.uri.path(), parts.uri.query())?;
    sanitize_headers(&mut parts.headers, ctx, route.prefix_header());
    // The browser's trace context never reaches an upstream; ours does when tracing is on.
    crate::telemetry::inject(&mut parts.headers);
    if let Some(host) = route.host_header() {
        parts.headers.insert(header::HOST, host.clone());
    }
    let mut dpop_url = None;
    if let Some(token) = token {
        parts
            .headers
            .insert(header::AUTHORIZATION, token.authorization_header());
        if token.is_dpop_bound() {
            let (url, proof) = super::dpop::proof(token, &parts.method, &uri)?;
            parts.headers.insert(super::dpop::DPOP, proof);
            dpop_url = Some(url);
        }
    }
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    Ok(dpop_url)
}

/// What it takes to send a bodyless request again.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
}

/// The browser's request body on its way upstream, recording whether reading it failed
/// (hyper reports a malformed chunked body, or a browser that went away mid-upload, as a
/// body error) and whether it was read to its end, so that a failed or timed-out upstream
/// call it causes is attributed to the browser.
struct BrowserBody {
    inner: Body,
    state: Arc<BodyState>,
}

/// What became of a [`BrowserBody`].
#[derive(Default)]
struct BodyState {
    /// Reading it failed.
    failed: AtomicBool,
    /// A length limit cut it.
    too_large: AtomicBool,
    /// It was read to its end.
    complete: AtomicBool,
    /// The last read found no data yet: the gateway waits for the browser.
    waiting: AtomicBool,
}

impl BrowserBody {
    fn wrap(inner: Body) -> (Body, Arc<BodyState>) {
        let state = Arc::new(BodyState::default());
        let body = Body::new(Self {
            inner,
            state: state.clone(),
        });
        (body, state)
    }
}

/// Whether `e` (or an error it wraps) is `http_body_util`'s length-limit error.
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = err.source();
    }
    false
}

impl http_body::Body for BrowserBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.state
            .waiting
            .store(polled.is_pending(), Ordering::Relaxed);
        match &polled {
            Poll::Ready(Some(Err(e))) => {
                if is_length_limit(e) {
                    self.state.too_large.store(true, Ordering::Relaxed);
                }
                self.state.failed.store(true, Ordering::Relaxed);
            }
            Poll::Ready(None) => self.state.complete.store(true, Ordering::Relaxed),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => {
                self.state.complete.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Headers through which a client claims an address, host, scheme or port, which an
/// upstream may believe (rate limits, audit logs, allow-lists, absolute URLs). Removed unless
/// a trusted proxy in front of the gateway set them. Every `X-Forwarded-*` header is part of
/// the family too (matched by [`FORWARDED_PREFIX`]).
pub const CLIENT_CLAIM_HEADERS: [&str; 19] = [
    "forwarded",
    "forwarded-for",
    "x-forwarded",
    "x-real-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "x-client-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "client-ip",
    "x-original-forwarded-for",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-proxyuser-ip",
    "x-envoy-external-address",
    "x-host",
    "x-original-host",
];

/// The `X-Forwarded-*` family (`-For`, `-Proto`, `-Host`, `-Prefix` set by the gateway; `-Port`,
/// `-Server`, `-Ssl`, `-Scheme`, ... never forwarded from an untrusted client).
pub const FORWARDED_PREFIX: &str = "x-forwarded-";

/// Headers that make an upstream act on another path or method than the request line says
/// (IIS/Symfony/Zend URL rewrites, method overrides). Always removed, trusted proxy or not:
/// the gateway's path and method rules must judge what the upstream acts on, and a browser
/// can send the real method through the gateway.
pub const REWRITE_HEADERS: [&str; 6] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Removes what must not reach an upstream and sets the `X-Forwarded-*` headers.
///
/// Always removed: hop-by-hop headers, `Cookie`, `Authorization`, `DPoP`, `Host`,
/// [`REWRITE_HEADERS`]. Without `ctx.trust_forwarded`, also [`CLIENT_CLAIM_HEADERS`] and every
/// `X-Forwarded-*`, after which `X-Forwarded-For` (the peer address), `-Proto`, `-Host`
/// (the public URL's) and `-Prefix` (the route prefix) are set. With it, those headers are
/// kept, `X-Forwarded-For` and `Forwarded` (RFC 7239) are extended with the peer address, and
/// missing `-Proto`/`-Host`/`-Prefix` are set.
///
/// `prefix` is the route prefix as a ready header value (`None`: no `X-Forwarded-Prefix`).
fn sanitize_headers(
    headers: &mut HeaderMap,
    ctx: &ForwardContext<'_>,
    prefix: Option<&HeaderValue>,
) {
    strip_hop_by_hop(headers);
    headers.remove(header::COOKIE);
    headers.remove(header::AUTHORIZATION);
    headers.remove(&DPOP);
    headers.remove(header::HOST);
    // Names are compared with `_` folded to `-`: CGI-style servers (PHP-FPM, Rack, older
    // gunicorn) read `X_Real_IP` as `X-Real-IP`. A spelling with `_` is never one a trusted
    // proxy sets, so it goes even when the proxy in front is trusted.
    let trusted = ctx.trust_forwarded;
    let refused: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let raw = n.as_str();
            let underscore = raw.contains('_');
            // Only the rare underscore spelling pays for a folded copy.
            let folded = if underscore {
                std::borrow::Cow::Owned(raw.replace('_', "-"))
            } else {
                std::borrow::Cow::Borrowed(raw)
            };
            let claim = folded.starts_with(FORWARDED_PREFIX)
                || CLIENT_CLAIM_HEADERS.contains(&folded.as_ref());
            REWRITE_HEADERS.contains(&folded.as_ref()) || (claim && (!trusted || underscore))
        })
        .cloned()
        .collect();
    for name in refused {
        headers.remove(name);
    }
    let client_ip = ctx.client_addr.map(|a| a.ip());
    if trusted {
        extend_forwarded_chain(headers, client_ip);
    } else if let Some(ip) = client_ip {
        if let Ok(v) = HeaderValue::try_from(ip.to_string()) {
            headers.insert(&X_FORWARDED_FOR, v);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = match ctx.public_proto {
            "https" => Some(HeaderValue::from_static("https")),
            "http" => Some(HeaderValue::from_static("http")),
            other => HeaderValue::from_str(other).ok(),
        };
        if let Some(v) = proto {
            headers.insert(&X_FORWARDED_PROTO, v);
        }
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        set(headers, &X_FORWARDED_HOST, ctx.public_host);
    }
    if let Some(prefix) = prefix {
        if !headers.contains_key(&X_FORWARDED_PREFIX) {
            headers.insert(&X_FORWARDED_PREFIX, prefix.clone());
        }
    }
}

fn set(headers: &mut HeaderMap, name: &'static HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// A trusted proxy in front: append the peer to `X-Forwarded-For` and, when present,
/// `Forwarded` (RFC 7239 §4, §6: IPv6 quoted and bracketed). Several header lines are
/// joined into one list.
fn extend_forwarded_chain(headers: &mut HeaderMap, client_ip: Option<std::net::IpAddr>) {
    let joined = |headers: &HeaderMap, name: &HeaderName| -> Option<String> {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let xff = joined(headers, &X_FORWARDED_FOR);
    match (xff, client_ip) {
        (Some(prev), Some(ip)) => set(headers, &X_FORWARDED_FOR, &format!("{prev}, {ip}")),
        (Some(prev), None) => set(headers, &X_FORWARDED_FOR, &prev),
        (None, Some(ip)) => set(headers, &X_FORWARDED_FOR, &ip.to_string()),
        (None, None) => {}
    }
    if let (Some(prev), Some(ip)) = (joined(headers, &FORWARDED), client_ip) {
        let node = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        set(headers, &FORWARDED, &format!("{prev}, for={node}"));
    }
}

/// RFC 9110 §7.6.1: the fixed hop-by-hop set plus every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        for name in &HOP_BY_HOP[1..] {
            headers.remove(*name);
        }
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// An upstream must not set or clear the gateway's own cookies.
pub(crate) fn strip_own_cookies(headers: &mut HeaderMap, own: &[String]) {
    if own.is_empty() || !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            // On the bytes: a value that is not visible ASCII must not get a cookie past.
            let name = v
                .as_bytes()
                .split(|b| *b == b'=')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            !(own.iter().any(|o| name == o.as_bytes())
                || name.starts_with(b"__Host-bff-login.")
                || name.starts_with(b"bff-login."))
        })
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sanitize_request_headers(headers: &mut HeaderMap, ctx: &ForwardContext<'_>, prefix: &str) {
        sanitize_headers(headers, ctx, HeaderValue::from_str(prefix).ok().as_ref());
    }

    fn ctx(trust: bool) -> ForwardContext<'static> {
        ForwardContext {
            client_addr: Some("10.1.2.3:5555".parse().unwrap()),
            public_proto: "https",
            public_host: "app.example.com",
            trust_forwarded: trust,
            own_cookie_names: &[],
        }
    }

    fn browser_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("cookie", "__Host-bff-auth=secret; other=1"),
            ("authorization", "Bearer stolen"),
            ("dpop", "proof"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-csrf", "1"),
            ("accept", "application/json"),
            ("host", "app.example.com"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn request_hygiene_regression_cookie_and_authorization_never_forwarded() {
        let mut h = browser_headers();
        sanitize_request_headers(&mut h, &ctx(false), "/api");
        for gone in [
            "cookie",
            "authorization",
            "dpop",
            "connection",
            "x-private",
            "keep-alive",
            "te",
            "host",
        ] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-prefix"], "/api");
        assert_eq!(h["x-csrf"], "1");
        assert_eq!(h["accept"], "application/json");
    }

    #[test]
    fn trusted_proxy_keeps_and_extends_forwarded_headers() {
        let mut h = browser_headers();
        sanitize_request_headers(&mut h, &ctx(true), "/api");
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.1.2.3");
        assert_eq!(h["x-forwarded-host"], "evil.example");
    }

    /// Issue 12.5: every client-IP/forwarding claim of an untrusted client is dropped, the
    /// rewrite family always is.
    fn claims() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("x-real-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("x-client-ip", "6.6.6.6"),
            ("x-cluster-client-ip", "6.6.6.6"),
            ("fastly-client-ip", "6.6.6.6"),
            ("client-ip", "6.6.6.6"),
            ("x-original-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-server", "evil"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-scheme", "https"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-prefix", "/admin"),
            ("forwarded", "for=6.6.6.6;host=evil.example"),
            ("x-host", "evil.example"),
            ("x-original-host", "evil.example"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "TRACE"),
            ("x-method-override", "PUT"),
            ("x-request-id", "kept"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn client_forwarding_headers_are_stripped_when_untrusted() {
        let mut h = claims();
        sanitize_request_headers(&mut h, &ctx(false), "/api");
        for name in CLIENT_CLAIM_HEADERS.iter().chain(REWRITE_HEADERS.iter()) {
            assert!(!h.contains_key(*name), "{name} was forwarded");
        }
        for name in [
            "x-forwarded-port",
            "x-forwarded-server",
            "x-forwarded-ssl",
            "x-forwarded-scheme",
        ] {
            assert!(!h.contains_key(name), "{name} was forwarded");
        }
        let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["10.1.2.3"]);
        assert_eq!(h["x-forwarded-prefix"], "/api");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-request-id"], "kept");
        // No peer address known: no X-Forwarded-For at all, never the client's.
        let mut h = claims();
        let mut c = ctx(false);
        c.client_addr = None;
        sanitize_request_headers(&mut h, &c, "/api");
        assert!(!h.contains_key("x-forwarded-for"));
    }

    #[test]
    fn trusted_proxy_claims_are_kept_and_extended_rewrites_are_not() {
        let mut h = claims();
        sanitize_request_headers(&mut h, &ctx(true), "/api");
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 7.7.7.7, 10.1.2.3");
        assert_eq!(
            h["forwarded"],
            "for=6.6.6.6;host=evil.example, for=10.1.2.3"
        );
        assert_eq!(h["x-real-ip"], "6.6.6.6");
        assert_eq!(h["x-forwarded-port"], "443");
        assert_eq!(h["x-forwarded-prefix"], "/admin");
        for name in REWRITE_HEADERS {
            assert!(!h.contains_key(name), "{name} was forwarded");
        }
        let mut h = HeaderMap::new();
        h.insert("forwarded", HeaderValue::from_static("for=1.1.1.1"));
        let mut c = ctx(true);
        c.client_addr = Some("[::1]:80".parse().unwrap());
        sanitize_request_headers(&mut h, &c, "/api");
        assert_eq!(h["forwarded"], "for=1.1.1.1, for=\"[::1]\"");
    }

    #[test]
    fn upstream_cannot_set_gateway_cookies() {
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("__Host-bff-auth=x; Path=/"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("__Host-bff-login.abc=x; Path=/"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("pref=dark; Path=/"),
        );
        strip_own_cookies(&mut h, &["__Host-bff-auth".to_owned()]);
        let left: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(left, vec![HeaderValue::from_static("pref=dark; Path=/")]);
    }

    #[test]
    fn underscore_spellings_of_forwarding_headers_are_stripped_even_when_trusted() {
        for trusted in [false, true] {
            let mut h = HeaderMap::new();
            for name in [
                "x_real_ip",
                "x_forwarded_for",
                "true_client_ip",
                "x_original_url",
                "x-forwarded_host",
                "x_http_method_override",
            ] {
                h.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static("6.6.6.6"),
                );
            }
            sanitize_request_headers(&mut h, &ctx(trusted), "/api");
            let left: Vec<&str> = h
                .keys()
                .map(HeaderName::as_str)
                .filter(|n| n.contains('_'))
                .collect();
            assert!(
                left.is_empty(),
                "trusted={trusted}: {left:?} were forwarded"
            );
        }
        // Bare `X-Forwarded` and `Forwarded-For` (read by e.g. npm request-ip) are claims too.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        sanitize_request_headers(&mut h, &ctx(false), "/api");
        assert!(!h.contains_key("x-forwarded") && !h.contains_key("forwarded-for"));
        assert!(
            !h.contains_key("proxy-connection"),
            "non-standard hop-by-hop header"
        );
    }
}
