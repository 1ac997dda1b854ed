//! The one place where failures become HTTP responses.
//!
//! Every handler returns `Result<Response, GatewayError>`. A [`GatewayError`] says where the
//! failure came from ([`Origin`]): the browser sent something bad (4xx, logged at `debug`),
//! the identity provider or an upstream API failed (502/503/504, `warn`), the session store is
//! unreachable (503, `warn`), or a bug (500, `error`). Messages shown to the browser never echo
//! secrets or another session's identifiers.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Where a failure came from; decides the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Browser,
    Idp,
    Upstream,
    Store,
    Internal,
}

impl Origin {
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

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A bad parameter: 400 with a problem body naming it.
    #[error("bad request: {param}: {message}")]
    BadParameter {
        param: &'static str,
        message: String,
    },
    /// A bad request that is shown as a small HTML page (browser navigations).
    #[error("bad request: {0}")]
    BadNavigation(String),
    /// No (valid) session, or anti-forgery failed: 401 with an empty body.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// An authorization rule failed: 403, empty body.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    /// The session store cannot be reached. Never treated as "logged out".
    #[error("session store unavailable: {0}")]
    StoreUnavailable(String),
    /// The identity provider is down, slow or answered garbage.
    #[error("identity provider unavailable: {0}")]
    IdpUnavailable(String),
    #[error("identity provider timed out")]
    IdpTimeout,
    /// The identity provider answered, but with something that must not be used (e.g. a
    /// refresh response whose ID token names another user, OIDC Core §12.2): 502. The session
    /// is kept; nothing of the answer was stored.
    #[error("identity provider answered unusably: {0}")]
    IdpBadResponse(String),
    /// The IdP's answer failed validation during login (bad ID token, wrong issuer, ...).
    #[error("login failed: {0}")]
    LoginRejected(String),
    #[error("upstream unreachable: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    pub fn bad_param(param: &'static str, message: impl Into<String>) -> Self {
        Self::BadParameter {
            param,
            message: message.into(),
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            Self::BadParameter { .. }
            | Self::BadNavigation(_)
            | Self::Unauthorized(_)
            | Self::Forbidden(_)
            | Self::NotFound => Origin::Browser,
            Self::StoreUnavailable(_) => Origin::Store,
            Self::IdpUnavailable(_)
            | Self::IdpTimeout
            | Self::IdpBadResponse(_)
            | Self::LoginRejected(_) => Origin::Idp,
            Self::UpstreamUnavailable(_) | Self::UpstreamTimeout => Origin::Upstream,
            Self::Internal(_) => Origin::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadParameter { .. } | Self::BadNavigation(_) | Self::LoginRejected(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::StoreUnavailable(_) | Self::IdpUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::IdpTimeout | Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamUnavailable(_) | Self::IdpBadResponse(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn log(&self) {
        metrics::counter!("portcullis_errors_total", "origin" => self.origin().as_str(), "status" => self.status().as_str().to_owned()).increment(1);
        match self.origin() {
            Origin::Browser => {
                tracing::info!(origin = "browser", error = %self, "request rejected")
            }
            Origin::Idp => {
                tracing::warn!(origin = "idp", error = %self, "identity provider failure")
            }
            Origin::Upstream => {
                tracing::warn!(origin = "upstream", error = %self, "upstream failure")
            }
            Origin::Store => {
                tracing::warn!(origin = "store", error = %self, "session store failure")
            }
            Origin::Internal => {
                tracing::error!(origin = "internal", error = %self, "internal error")
            }
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
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
            Self::BadNavigation(message) | Self::LoginRejected(message) => {
                html_page(status, "Sign-in could not be completed", message)
            }
            Self::Unauthorized(_) | Self::Forbidden(_) | Self::NotFound => status.into_response(),
            Self::StoreUnavailable(_)
            | Self::IdpUnavailable(_)
            | Self::IdpTimeout
            | Self::IdpBadResponse(_)
            | Self::UpstreamUnavailable(_)
            | Self::UpstreamTimeout
            | Self::Internal(_) => status.into_response(),
        };
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// A minimal HTML page for errors met during browser navigations (login callback).
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

    #[test]
    fn statuses_follow_the_origin() {
        let cases = [
            (GatewayError::bad_param("returnUrl", "x"), 400),
            (GatewayError::Unauthorized("csrf"), 401),
            (GatewayError::Forbidden("rule"), 403),
            (GatewayError::StoreUnavailable("down".into()), 503),
            (GatewayError::IdpUnavailable("down".into()), 503),
            (GatewayError::IdpTimeout, 504),
            (GatewayError::IdpBadResponse("foreign sub".into()), 502),
            (GatewayError::UpstreamUnavailable("refused".into()), 502),
            (GatewayError::UpstreamTimeout, 504),
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
}
