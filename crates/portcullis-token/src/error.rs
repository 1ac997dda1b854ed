//! The one error type of token management, and how token-endpoint error responses map to it.
//!
//! Callers mostly need two answers, not the variant: [`TokenError::ends_session`] (the user
//! must log in again: `invalid_grant` or any other 4xx but 429 to a refresh, no refresh token,
//! session gone) and
//! [`TokenError::is_transient`] (the IdP or the store is down or slow: keep the session, answer
//! 503/504, try again later). Everything else is a configuration or protocol problem that
//! neither ends the session nor goes away by retrying.
//!
//! Error texts never contain token values: bodies of token responses are never echoed, only
//! the `error`/`error_description` fields of RFC 6749 §5.2 error responses (bounded in length).

use serde::Deserialize;

/// Why a token could not be obtained, refreshed or revoked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The grant (refresh token, code) is invalid, expired or revoked. Ends the user session.
    #[error("token endpoint answered invalid_grant ({})", description.as_deref().unwrap_or("no description"))]
    InvalidGrant {
        /// The IdP's `error_description` (control characters removed, at most 256
        /// characters), if any.
        description: Option<String>,
    },
    /// Any other OAuth error response (`invalid_client`, `invalid_scope`, `unauthorized_client`,
    /// ...) or a 3xx/4xx answer without an OAuth error body (`error` is then `http_<status>`).
    #[error("token endpoint rejected the request: HTTP {status}, {error} ({})", description.as_deref().unwrap_or("no description"))]
    Rejected {
        /// HTTP status code of the answer.
        status: u16,
        /// The RFC 6749 §5.2 `error` code (at most 64 characters), or `http_<status>` when
        /// the body carries none.
        error: String,
        /// The IdP's `error_description` (control characters removed, at most 256
        /// characters), if any.
        description: Option<String>,
    },
    /// The token endpoint refused a refresh with a 4xx other than 429 (`invalid_client`,
    /// `unauthorized_client`, `invalid_request`, ..., or no RFC 6749 error body at all, as
    /// Glewlwyd answers a revoked refresh token with `400` and an empty body). Whatever the
    /// body says, the refresh token cannot get tokens any more: ends the user session, as
    /// `invalid_grant` does. Only the refresh path produces it ([`OAuthClient::refresh`](crate::OAuthClient::refresh)).
    #[error("token endpoint refused the refresh: HTTP {status}, {error} ({})", description.as_deref().unwrap_or("no description"))]
    RefreshRefused {
        /// HTTP status code of the answer.
        status: u16,
        /// The RFC 6749 §5.2 `error` code (at most 64 characters), or `http_<status>` when
        /// the body carries none.
        error: String,
        /// The IdP's `error_description` (control characters removed, at most 256
        /// characters), if any.
        description: Option<String>,
    },
    /// A 2xx refresh response that the [`RefreshValidator`](crate::RefreshValidator) refused
    /// (e.g. an ID token of another `iss`/`sub`, OIDC Core §12.2). Nothing of it was used or
    /// stored; the session is kept. An IdP answering like this is broken or hostile: neither
    /// transient (retrying soon will not help) nor a reason to log the user out.
    #[error("refresh response refused: {0}")]
    InvalidRefreshResponse(String),
    /// Connection failure, 5xx, 429 or `temporarily_unavailable`. Transient.
    #[error("token endpoint unavailable: {0}")]
    Unavailable(String),
    /// The token endpoint did not answer in time. Transient.
    #[error("token endpoint timed out")]
    Timeout,
    /// A 2xx answer that is not a valid token response.
    #[error("malformed token endpoint response: {0}")]
    Malformed(String),
    /// The access token expired and there is no refresh token. Ends the user session.
    #[error("access token expired and the session has no refresh token")]
    NoRefreshToken,
    /// The token store has no such session (any more). Ends the user session.
    #[error("no tokens stored for this session")]
    SessionNotFound,
    /// The operation is not available with this configuration (no revocation endpoint, ...).
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// The caller asked for something that cannot be sent (reserved extra parameter, unknown
    /// client name, ...). A programming or configuration error.
    #[error("invalid token request: {0}")]
    InvalidParams(String),
    /// The [`UserTokenStore`](crate::UserTokenStore) failed. Transient.
    #[error("token store failed: {0}")]
    Store(String),
}

impl TokenError {
    /// The user session cannot get tokens any more; the caller should end it.
    pub fn ends_session(&self) -> bool {
        matches!(
            self,
            Self::InvalidGrant { .. }
                | Self::RefreshRefused { .. }
                | Self::NoRefreshToken
                | Self::SessionNotFound
        )
    }

    /// Retrying later may succeed; the session must stay.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Timeout | Self::Store(_))
    }

    /// A stable, low-cardinality name of the variant, for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidGrant { .. } => "invalid_grant",
            Self::Rejected { .. } => "rejected",
            Self::RefreshRefused { .. } => "refresh_refused",
            Self::InvalidRefreshResponse(_) => "invalid_refresh_response",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout => "timeout",
            Self::Malformed(_) => "malformed",
            Self::NoRefreshToken => "no_refresh_token",
            Self::SessionNotFound => "session_not_found",
            Self::NotSupported(_) => "not_supported",
            Self::InvalidParams(_) => "invalid_params",
            Self::Store(_) => "store",
        }
    }

    /// Classify a non-2xx answer of a token or revocation endpoint (RFC 6749 §5.2).
    pub(crate) fn from_error_response(status: u16, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct ErrorBody {
            error: String,
            #[serde(default)]
            error_description: Option<String>,
        }
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
        let error = parsed.as_ref().map(|b| bounded(&b.error, 64));
        let description = parsed
            .and_then(|b| b.error_description)
            .map(|d| bounded(&d, 256));

        if status == 429 || status >= 500 || error.as_deref() == Some("temporarily_unavailable") {
            let code = error.map(|e| format!(", {e}")).unwrap_or_default();
            return Self::Unavailable(format!("HTTP {status}{code}"));
        }
        match error {
            Some(e) if e == "invalid_grant" => Self::InvalidGrant { description },
            Some(error) => Self::Rejected {
                status,
                error,
                description,
            },
            None => Self::Rejected {
                status,
                error: format!("http_{status}"),
                description: None,
            },
        }
    }

    /// The meaning of a failed refresh: a 4xx other than 429 (already [`Self::Unavailable`])
    /// says the refresh token is unusable, whether or not the body names an RFC 6749 error.
    pub(crate) fn for_refresh(self) -> Self {
        match self {
            Self::Rejected {
                status,
                error,
                description,
            } if (400..500).contains(&status) => Self::RefreshRefused {
                status,
                error,
                description,
            },
            other => other,
        }
    }

    /// Map a transport error of `reqwest`. The URL is stripped (the span carries the endpoint).
    pub(crate) fn from_reqwest(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            return Self::Timeout;
        }
        let err = err.without_url();
        let mut msg = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        Self::Unavailable(msg)
    }
}

/// IdP-provided text is untrusted: keep printable characters only and bound the length, so it
/// cannot flood or forge log lines.
fn bounded(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_are_classified_per_rfc6749() {
        let cases: &[(u16, &str, &str)] = &[
            (
                400,
                r#"{"error":"invalid_grant","error_description":"expired"}"#,
                "invalid_grant",
            ),
            (400, r#"{"error":"invalid_scope"}"#, "rejected"),
            (401, r#"{"error":"invalid_client"}"#, "rejected"),
            (400, r#"{"error":"temporarily_unavailable"}"#, "unavailable"),
            (500, r#"{"error":"server_error"}"#, "unavailable"),
            (503, "<html>down</html>", "unavailable"),
            (429, "", "unavailable"),
            // a 5xx carrying invalid_grant is still the IdP failing, not a dead grant
            (502, r#"{"error":"invalid_grant"}"#, "unavailable"),
            (404, "not found", "rejected"),
            (302, "", "rejected"),
        ];
        for (status, body, kind) in cases {
            let e = TokenError::from_error_response(*status, body.as_bytes());
            assert_eq!(e.kind(), *kind, "{status} {body}");
        }
    }

    #[test]
    fn invalid_grant_keeps_description_and_ends_session() {
        let e = TokenError::from_error_response(
            400,
            br#"{"error":"invalid_grant","error_description":"gone"}"#,
        );
        assert_eq!(
            e,
            TokenError::InvalidGrant {
                description: Some("gone".into())
            }
        );
        assert!(e.ends_session());
        assert!(!e.is_transient());
    }

    #[test]
    fn idp_text_is_bounded_and_stripped_of_control_characters() {
        let long = "x".repeat(10_000);
        let body = format!(r#"{{"error":"invalid_scope","error_description":"a\nb{long}"}}"#);
        let TokenError::Rejected {
            description: Some(d),
            ..
        } = TokenError::from_error_response(400, body.as_bytes())
        else {
            panic!("expected Rejected with description");
        };
        assert!(!d.contains('\n'));
        assert_eq!(d.chars().count(), 256);
    }

    #[test]
    fn every_4xx_but_429_to_a_refresh_is_final_whatever_the_body() {
        let cases: &[(u16, &str, &str)] = &[
            (400, r#"{"error":"invalid_grant"}"#, "invalid_grant"),
            (400, "", "refresh_refused"),
            (400, "<html>Bad Request</html>", "refresh_refused"),
            (400, r#"{"message":"revoked"}"#, "refresh_refused"),
            (400, r#"{"error":"invalid_request"}"#, "refresh_refused"),
            (401, r#"{"error":"invalid_client"}"#, "refresh_refused"),
            (401, "", "refresh_refused"),
            (403, "forbidden", "refresh_refused"),
            (404, "", "refresh_refused"),
            (429, "", "unavailable"),
            (400, r#"{"error":"temporarily_unavailable"}"#, "unavailable"),
            (500, "", "unavailable"),
            (503, r#"{"error":"invalid_grant"}"#, "unavailable"),
            // a redirecting token endpoint is misconfigured, not a verdict on the grant
            (302, "", "rejected"),
        ];
        for (status, body, kind) in cases {
            let e = TokenError::from_error_response(*status, body.as_bytes()).for_refresh();
            assert_eq!(e.kind(), *kind, "{status} {body:?}");
            assert_eq!(
                e.ends_session(),
                matches!(*kind, "invalid_grant" | "refresh_refused"),
                "{status} {body:?}"
            );
        }
    }

    #[test]
    fn session_and_transient_classification() {
        let table: &[(TokenError, bool, bool)] = &[
            (TokenError::InvalidGrant { description: None }, true, false),
            (TokenError::NoRefreshToken, true, false),
            (
                TokenError::RefreshRefused {
                    status: 400,
                    error: "http_400".into(),
                    description: None,
                },
                true,
                false,
            ),
            (TokenError::InvalidRefreshResponse("x".into()), false, false),
            (TokenError::SessionNotFound, true, false),
            (TokenError::Unavailable("x".into()), false, true),
            (TokenError::Timeout, false, true),
            (TokenError::Store("x".into()), false, true),
            (TokenError::Malformed("x".into()), false, false),
            (
                TokenError::Rejected {
                    status: 401,
                    error: "invalid_client".into(),
                    description: None,
                },
                false,
                false,
            ),
            (TokenError::NotSupported("x"), false, false),
            (TokenError::InvalidParams("x".into()), false, false),
        ];
        for (e, ends, transient) in table {
            assert_eq!(e.ends_session(), *ends, "{e:?}");
            assert_eq!(e.is_transient(), *transient, "{e:?}");
        }
    }
}
