//! The one place where failures become HTTP responses.
//!
//! Every handler returns `Result<Response, GatewayError>`. A [`GatewayError`] says where the
//! failure came from ([`Origin`]): the browser sent something bad (4xx, logged at `info`),
//! the identity provider or an upstream API failed (502/503/504, `warn`), the session store is
//! unreachable (503, `warn`), or a bug (500, `error`). Messages shown to the browser never echo
//! secrets or another session's identifiers; every message reaches the log through
//! [`crate::log_safe::untrusted`], because parts of it may come from the network.
//!
//! Who reads the answer decides its shape:
//!
//! ```text
//! GatewayError ──into_response──▶ API shape: empty body, or a problem+json body (400 for a
//!      │                          bad parameter); the page text rides along in an extension
//!      └── render_for_navigations (a layer on the whole router)
//!             └ the request is a browser navigation ([`is_navigation`])?
//!                  → the same status and headers, with a small HTML page that says what
//!                    went wrong in words a user and an operator understand
//! ```
//!
//! A navigation is `Sec-Fetch-Mode: navigate`, or, from clients that do not send
//! `Sec-Fetch-*`, an `Accept` that includes `text/html` on a request without the
//! anti-forgery header (an SPA's API calls carry it).

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::log_safe::untrusted;

/// Where a failure came from; decides the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The browser (or another client) sent something the gateway refuses: 4xx.
    Browser,
    /// The identity provider is down, slow, misconfigured or answered something invalid.
    Idp,
    /// An upstream API behind a route could not be reached or timed out.
    Upstream,
    /// The session store cannot be reached.
    Store,
    /// A bug or a local resource failure in the gateway itself.
    Internal,
}

impl Origin {
    /// The label used in log lines and in `portcullis_errors_total{origin}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Browser => "browser",
            Self::Idp => "idp",
            Self::Upstream => "upstream",
            Self::Store => "store",
            Self::Internal => "internal",
        }
    }
}

/// Every failure a handler can answer with. Each variant fixes the status code (see
/// [`GatewayError::status`]) and the origin (see [`GatewayError::origin`]).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A bad parameter: 400 with a problem body naming it (an HTML page for navigations).
    #[error("bad request: {param}: {message}")]
    BadParameter {
        /// The parameter's name as the browser sent it (`returnUrl`, `prompt`, ...).
        param: &'static str,
        /// What is wrong with it; never echoes the value.
        message: String,
    },
    /// A bad request on a browser-only endpoint (the login callback): 400, always an HTML
    /// page.
    #[error("bad request: {0}")]
    BadNavigation(String),
    /// A request target that is not a path (`GET x`, authority- or asterisk-form): 400.
    #[error("bad request: the request target is not a path")]
    BadRequestTarget,
    /// A request target longer than the gateway serves: 414.
    #[error("request target too long")]
    UriTooLong,
    /// A request body larger than the route allows (`max_body`, `server.max_request_body`):
    /// 413 (RFC 9110 §15.5.14), with `Connection: close` since the rest of the body is not
    /// read.
    #[error("request body larger than the limit")]
    PayloadTooLarge,
    /// The browser did not send its whole request body within the route's `timeout`: 408
    /// (RFC 9110 §15.5.9), with `Connection: close` since the rest of the body is not read.
    /// nginx's `client_body_timeout` for the gateway.
    #[error("request body not received in time")]
    RequestTimeout,
    /// A request head (request line and headers) larger than `server.max_header_size`: 431
    /// (RFC 6585 §5), with `Connection: close`.
    #[error("request header fields larger than the limit")]
    HeaderFieldsTooLarge,
    /// No (valid) session, or anti-forgery failed: 401 with an empty body.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// An authorization rule failed: 403, empty body.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The session's authentication is too weak or too old for the route, or the upstream
    /// said so (RFC 9470): 401 with the step-up challenge in `WWW-Authenticate` and a JSON
    /// body with a `login_url` (see [`crate::access`]).
    #[error("step-up authentication required: {}", .0.description)]
    StepUpRequired(Box<crate::access::StepUpChallenge>),
    /// Nothing is served at this path: 404, empty body.
    #[error("not found")]
    NotFound,
    /// The method is not served here (`CONNECT`/`TRACE`/`TRACK` on proxied routes, anything
    /// but GET/HEAD on static files): 405 with an `Allow` header listing what is
    /// (RFC 9110 §15.5.6).
    #[error("method not allowed (allowed: {allow})")]
    MethodNotAllowed {
        /// The `Allow` header value.
        allow: &'static str,
    },
    /// The session store cannot be reached: 503. Never treated as "logged out".
    #[error("session store unavailable: {0}")]
    StoreUnavailable(String),
    /// The identity provider is down, slow or answered garbage: 503.
    #[error("identity provider unavailable: {0}")]
    IdpUnavailable(String),
    /// The identity provider did not answer in time: 504.
    #[error("identity provider timed out")]
    IdpTimeout,
    /// The identity provider answered, but with something that must not be used (e.g. a
    /// refresh response whose ID token names another user, OIDC Core §12.2): 502. The session
    /// is kept; nothing of the answer was stored.
    #[error("identity provider answered unusably: {0}")]
    IdpBadResponse(String),
    /// The IdP's answer failed validation during login (bad ID token, wrong issuer, ...): 400.
    #[error("login failed: {0}")]
    LoginRejected(String),
    /// The IdP answered the authorization request with an error no user can resolve
    /// (`invalid_request`, `unauthorized_client`, `invalid_scope`, `server_error`, unknown
    /// codes: RFC 6749 §4.1.2.1): 502, or 503 for `temporarily_unavailable`, and an `error`
    /// log line, because the gateway or the IdP is misconfigured.
    #[error("the identity provider refused the sign-in: {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    IdpRefusedLogin {
        /// The `error` parameter (RFC 6749 §4.1.2.1).
        code: String,
        /// The `error_description` parameter, if any.
        description: Option<String>,
    },
    /// The upstream API cannot be reached: 502.
    #[error("upstream unreachable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream API did not answer in time: 504.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The SPA's `index.html` (from `index_html_url`) or its development server cannot be
    /// reached and there is no earlier copy to serve: 502.
    #[error("single-page app unavailable: {0}")]
    SpaUnavailable(String),
    /// A bug or a local failure: 500.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The text of an error page; travels on the response (as an extension) from
/// [`GatewayError::into_response`] to [`render_for_navigations`].
#[derive(Debug, Clone)]
struct PageText {
    title: &'static str,
    message: String,
    /// Already an HTML page (browser-only endpoints): nothing to render.
    rendered: bool,
}

/// At most this many characters of a detail (e.g. the IdP's error description) on a page.
const PAGE_DETAIL_CHARS: usize = 300;

impl GatewayError {
    /// A [`GatewayError::BadParameter`].
    pub fn bad_param(param: &'static str, message: impl Into<String>) -> Self {
        Self::BadParameter {
            param,
            message: message.into(),
        }
    }

    /// Where the failure came from.
    pub fn origin(&self) -> Origin {
        match self {
            Self::BadParameter { .. }
            | Self::BadNavigation(_)
            | Self::BadRequestTarget
            | Self::UriTooLong
            | Self::PayloadTooLarge
            | Self::RequestTimeout
            | Self::HeaderFieldsTooLarge
            | Self::Unauthorized(_)
            | Self::Forbidden(_)
            | Self::StepUpRequired(_)
            | Self::NotFound
            | Self::MethodNotAllowed { .. } => Origin::Browser,
            Self::StoreUnavailable(_) => Origin::Store,
            Self::IdpUnavailable(_)
            | Self::IdpTimeout
            | Self::LoginRejected(_)
            | Self::IdpBadResponse(_)
            | Self::IdpRefusedLogin { .. } => Origin::Idp,
            Self::UpstreamUnavailable(_) | Self::UpstreamTimeout | Self::SpaUnavailable(_) => {
                Origin::Upstream
            }
            Self::Internal(_) => Origin::Internal,
        }
    }

    /// The HTTP status the failure is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadParameter { .. }
            | Self::BadNavigation(_)
            | Self::BadRequestTarget
            | Self::LoginRejected(_) => StatusCode::BAD_REQUEST,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::HeaderFieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unauthorized(_) | Self::StepUpRequired(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::IdpRefusedLogin { code, .. } if code == "temporarily_unavailable" => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::IdpRefusedLogin { .. } => StatusCode::BAD_GATEWAY,
            Self::StoreUnavailable(_) | Self::IdpUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::IdpTimeout | Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamUnavailable(_) | Self::IdpBadResponse(_) | Self::SpaUnavailable(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Logs the failure (level from the origin) and counts it in
    /// `portcullis_errors_total`, without answering: for failures that end in another
    /// response (e.g. a silent login that reports failure to its iframe page).
    pub(crate) fn report(&self) {
        metrics::counter!("portcullis_errors_total", "origin" => self.origin().as_str(), "status" => self.status().as_str().to_owned()).increment(1);
        // The request span (see `telemetry`) declares these; elsewhere this is a no-op.
        let span = tracing::Span::current();
        span.record("error.type", self.status().as_str());
        span.record("portcullis.error.origin", self.origin().as_str());
        // Parts of every message may come from the network (IdP error descriptions, parse
        // errors quoting input): escaped and bounded here, once for all.
        let text = self.to_string();
        let error = untrusted(&text);
        match self.origin() {
            Origin::Browser if matches!(self, Self::NotFound | Self::MethodNotAllowed { .. }) => {
                tracing::debug!(origin = "browser", %error, "not found")
            }
            Origin::Browser => {
                tracing::info!(origin = "browser", %error, "request rejected")
            }
            Origin::Idp if matches!(self, Self::IdpRefusedLogin { .. }) => {
                tracing::error!(origin = "idp", %error, "identity provider refused the sign-in; check the client registration and the gateway's oidc settings")
            }
            Origin::Idp => {
                tracing::warn!(origin = "idp", %error, "identity provider failure")
            }
            Origin::Upstream => {
                tracing::warn!(origin = "upstream", %error, "upstream failure")
            }
            Origin::Store => {
                tracing::warn!(origin = "store", %error, "session store failure")
            }
            Origin::Internal => {
                tracing::error!(origin = "internal", %error, "internal error")
            }
        }
    }

    /// Title and message of the HTML page a navigation gets: what went wrong, in words a user
    /// and an operator understand, with no secret (store and internal details stay in the
    /// log).
    fn page_text(&self) -> PageText {
        let page = |title, message: String| PageText {
            title,
            message,
            rendered: false,
        };
        match self {
            Self::BadParameter { param, message } => page(
                "The request could not be processed",
                format!("The parameter \u{201c}{param}\u{201d} is not acceptable: {message}"),
            ),
            Self::BadNavigation(m) | Self::LoginRejected(m) => PageText {
                title: "Sign-in could not be completed",
                message: m.clone(),
                rendered: true,
            },
            Self::BadRequestTarget => page(
                "Bad request",
                "The request target is not a path on this site.".into(),
            ),
            Self::UriTooLong => page(
                "Address too long",
                "The address is longer than this site serves.".into(),
            ),
            Self::PayloadTooLarge => page(
                "Request too large",
                "The request body is larger than this address accepts.".into(),
            ),
            Self::RequestTimeout => page(
                "Request timed out",
                "The request body did not arrive in time. Try again.".into(),
            ),
            Self::HeaderFieldsTooLarge => page(
                "Request headers too large",
                "The request carries more header data (often cookies) than this site accepts. Deleting this site's cookies usually helps."
                    .into(),
            ),
            Self::Unauthorized(_) => page(
                "You are not signed in",
                "This address needs a signed-in session. Go back to the application and sign in."
                    .into(),
            ),
            Self::Forbidden(_) => page(
                "Access denied",
                "Your session is not allowed to use this address.".into(),
            ),
            Self::StepUpRequired(_) => page(
                "A stronger sign-in is needed",
                "This address needs a stronger or more recent sign-in than your session has. Go back to the application and sign in again."
                    .into(),
            ),
            Self::NotFound => page(
                "Page not found",
                "Nothing is served at this address.".into(),
            ),
            Self::MethodNotAllowed { allow } => page(
                "Method not allowed",
                format!("This address answers only these methods: {allow}."),
            ),
            Self::StoreUnavailable(_) => page(
                "Service temporarily unavailable",
                "The gateway cannot reach its session store right now. Please try again in a moment; your session is kept."
                    .into(),
            ),
            Self::IdpUnavailable(detail) => page(
                "Sign-in is not available",
                format!(
                    "The gateway cannot use the identity provider right now: {}. Please try again later; if this persists, the operator should check the identity provider and the gateway's oidc settings.",
                    bounded(detail)
                ),
            ),
            Self::IdpBadResponse(_) => page(
                "Service unavailable",
                "The identity provider answered in a way the gateway cannot use. Your session is kept; the operator can find the details in the gateway's log."
                    .into(),
            ),
            Self::IdpTimeout => page(
                "Sign-in is not available",
                "The identity provider did not answer in time. Please try again in a moment."
                    .into(),
            ),
            Self::IdpRefusedLogin { code, description } => page(
                "Sign-in could not be completed",
                format!(
                    "The identity provider refused the sign-in request with the error \u{201c}{}\u{201d}{}. This is not something you can fix: the operator should compare the gateway's oidc settings with the client registration at the identity provider.",
                    bounded(code),
                    description
                        .as_deref()
                        .map(|d| format!(" ({})", bounded(d)))
                        .unwrap_or_default()
                ),
            ),
            Self::UpstreamUnavailable(_) | Self::UpstreamTimeout => page(
                "Service unavailable",
                "A service behind the gateway did not answer. Please try again in a moment."
                    .into(),
            ),
            Self::SpaUnavailable(_) => page(
                "The application could not be loaded",
                "The gateway could not fetch this application's start page from its content server. Please try again in a moment; if this persists, the operator can find the details in the gateway's log."
                    .into(),
            ),
            Self::Internal(_) => page(
                "Something went wrong",
                "An unexpected error occurred in the gateway. The operator can find the details in its log."
                    .into(),
            ),
        }
    }
}

/// Cuts a detail for a page and drops control characters.
fn bounded(s: &str) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(PAGE_DETAIL_CHARS)
        .collect();
    if s.chars().count() > PAGE_DETAIL_CHARS {
        out.push('…');
    }
    out
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        self.report();
        let status = self.status();
        let text = self.page_text();
        let mut response = match &self {
            Self::BadParameter { param, message } => {
                let body = json!({
                    "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
                    "title": "One or more validation errors occurred.",
                    "status": 400,
                    "errors": { *param: [message] },
                });
                let mut r = (status, axum::Json(body)).into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json"),
                );
                r
            }
            Self::BadNavigation(_) | Self::LoginRejected(_) => {
                html_page(status, text.title, &text.message)
            }
            Self::StepUpRequired(challenge) => {
                let mut r = (status, axum::Json(challenge.body())).into_response();
                if let Ok(v) = HeaderValue::from_str(&challenge.www_authenticate()) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                r
            }
            Self::MethodNotAllowed { allow } => {
                let mut r = status.into_response();
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            Self::PayloadTooLarge | Self::HeaderFieldsTooLarge | Self::RequestTimeout => {
                let mut r = status.into_response();
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                r
            }
            _ => status.into_response(),
        };
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response.extensions_mut().insert(text);
        response
    }
}

/// Whether a request is a browser navigation (see the module docs): `Sec-Fetch-Mode:
/// navigate`; without `Sec-Fetch-Mode`, an `Accept` that includes `text/html` and no
/// `anti_forgery_header`.
pub fn is_navigation(headers: &HeaderMap, anti_forgery_header: &HeaderName) -> bool {
    match headers.get("sec-fetch-mode") {
        Some(mode) => mode.as_bytes().eq_ignore_ascii_case(b"navigate"),
        None => accepts_html(headers) && !headers.contains_key(anti_forgery_header),
    }
}

/// Whether any `Accept` header lists `text/html` (with a non-zero quality).
pub fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("text/html") && !refused
        })
}

/// Middleware for the whole router: failed browser navigations get an HTML page instead of
/// the API shape (same status, same headers such as `Set-Cookie`). `anti_forgery_header` is
/// the configured anti-forgery header name (see [`is_navigation`]).
pub async fn render_for_navigations(
    anti_forgery_header: HeaderName,
    request: Request,
    next: Next,
) -> Response {
    let navigation = is_navigation(request.headers(), &anti_forgery_header);
    let response = next.run(request).await;
    render_if_navigation(navigation, response)
}

/// [`render_for_navigations`] without the middleware: for a request that `navigation` says
/// is a browser navigation ([`is_navigation`], decided before the request was consumed), a
/// failure's response becomes its HTML page; everything else is returned unchanged.
pub(crate) fn render_if_navigation(navigation: bool, response: Response) -> Response {
    if !navigation {
        return response;
    }
    let Some(text) = response.extensions().get::<PageText>().cloned() else {
        return response;
    };
    if text.rendered {
        return response;
    }
    let (mut parts, _api_body) = response.into_parts();
    let page = html_page(parts.status, text.title, &text.message);
    let (page_parts, body) = page.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for name in [header::CONTENT_TYPE, header::CONTENT_SECURITY_POLICY] {
        if let Some(v) = page_parts.headers.get(&name) {
            parts.headers.insert(name, v.clone());
        }
    }
    Response::from_parts(parts, body)
}

/// A minimal HTML page for errors met during browser navigations. Title and message are
/// HTML-escaped; the page runs no script (`Content-Security-Policy: default-src 'none'`).
pub(crate) fn html_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><h1>{t}</h1><p>{m}</p><p><a href=\"/\">Back to the application</a></p></body></html>",
        t = escape_html(title),
        m = escape_html(message)
    );
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl From<portcullis_session::StoreError> for GatewayError {
    fn from(e: portcullis_session::StoreError) -> Self {
        Self::StoreUnavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[test]
    fn statuses_follow_the_origin() {
        let cases = [
            (GatewayError::bad_param("returnUrl", "x"), 400),
            (GatewayError::BadRequestTarget, 400),
            (GatewayError::UriTooLong, 414),
            (GatewayError::Unauthorized("csrf"), 401),
            (GatewayError::Forbidden("rule"), 403),
            (GatewayError::MethodNotAllowed { allow: "GET" }, 405),
            (GatewayError::StoreUnavailable("down".into()), 503),
            (GatewayError::IdpUnavailable("down".into()), 503),
            (GatewayError::IdpTimeout, 504),
            (
                GatewayError::IdpRefusedLogin {
                    code: "invalid_scope".into(),
                    description: None,
                },
                502,
            ),
            (
                GatewayError::IdpRefusedLogin {
                    code: "temporarily_unavailable".into(),
                    description: None,
                },
                503,
            ),
            (GatewayError::IdpBadResponse("foreign sub".into()), 502),
            (GatewayError::UpstreamUnavailable("refused".into()), 502),
            (GatewayError::UpstreamTimeout, 504),
            (GatewayError::SpaUnavailable("cdn down".into()), 502),
        ];
        for (err, status) in cases {
            assert_eq!(err.into_response().status().as_u16(), status);
        }
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape_html("<a href='x'>&"),
            "&lt;a href=&#39;x&#39;&gt;&amp;"
        );
    }

    #[test]
    fn navigations_are_told_from_api_calls() {
        let csrf = HeaderName::from_static("x-csrf");
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("sec-fetch-mode", "navigate")], true),
            (&[("sec-fetch-mode", "navigate"), ("x-csrf", "1")], true),
            (
                &[("sec-fetch-mode", "cors"), ("accept", "text/html")],
                false,
            ),
            (
                &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
                true,
            ),
            (&[("accept", "TEXT/HTML; q=0.9")], true),
            (&[("accept", "text/html;q=0")], false),
            (&[("accept", "text/html"), ("x-csrf", "1")], false),
            (&[("accept", "application/json")], false),
            (&[("accept", "*/*")], false),
            (&[], false),
        ];
        for (headers, want) in cases {
            assert_eq!(is_navigation(&h(headers), &csrf), *want, "{headers:?}");
        }
    }

    async fn answer(
        err: fn() -> GatewayError,
        headers: &[(&'static str, &'static str)],
    ) -> (StatusCode, HeaderMap, String) {
        let app = Router::new()
            .route("/", get(move || async move { err() }))
            .layer(axum::middleware::from_fn(|req, next| {
                render_for_navigations(HeaderName::from_static("x-csrf"), req, next)
            }));
        let mut req = Request::builder().uri("/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = app
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = r.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn failed_navigations_get_a_page_and_api_calls_keep_their_shape() {
        let discovery = || {
            GatewayError::IdpUnavailable(
                "discovery document names issuer \"https://other.example/<x>\", configured \"https://idp.example\"".into(),
            )
        };
        let nav = [("accept", "text/html")];
        let (status, headers, body) = answer(discovery, &nav).await;
        assert_eq!(status, 503, "status as for API calls");
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            "default-src 'none'"
        );
        assert!(body.contains("names issuer"), "{body}");
        assert!(body.contains("&lt;x&gt;"), "escaped: {body}");
        assert!(!body.contains("<x>"), "{body}");

        let (status, headers, body) = answer(discovery, &[("x-csrf", "1")]).await;
        assert_eq!(status, 503);
        assert!(body.is_empty(), "API calls keep an empty body: {body}");
        assert!(headers.get(header::CONTENT_TYPE).is_none());

        // Store and internal details never reach the page.
        let store = || GatewayError::StoreUnavailable("redis://user:hunter2@db".into());
        let (_, _, body) = answer(store, &nav).await;
        assert!(!body.contains("hunter2"), "{body}");
        let internal = || GatewayError::Internal("secret detail".into());
        let (status, _, body) = answer(internal, &nav).await;
        assert_eq!(status, 500);
        assert!(!body.contains("secret detail"), "{body}");

        // A bad parameter: problem+json for API clients, a page for navigations.
        let bad = || GatewayError::bad_param("returnUrl", "must be local");
        let (_, headers, _) = answer(bad, &[]).await;
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        let (status, headers, body) = answer(bad, &[("sec-fetch-mode", "navigate")]).await;
        assert_eq!(status, 400);
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(
            body.contains("returnUrl") && body.contains("must be local"),
            "{body}"
        );
    }
}
