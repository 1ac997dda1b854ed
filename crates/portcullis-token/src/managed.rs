//! [`ManagedToken`]: proof that an access token went through token management.
//!
//! Only this crate can create one (private fields, crate-private constructor), so code that
//! attaches tokens to outgoing requests and accepts a `ManagedToken` cannot skip the
//! expiry check and refresh step: it does not compile without them.
//!
//! DPoP (RFC 9449): a token with `token_type` `DPoP` (any case) from a client with a
//! [`Dpop`] signer (or from a session with its own key) carries that signer: [`ManagedToken::dpop_proof`] makes the proof of each
//! request (`htm`, `htu`, `ath`, the server's nonce). A `DPoP` token without a signer (the
//! client sent no proof, yet the IdP said `DPoP`) still yields `DPoP <token>`, never `Bearer`;
//! the resource server will then refuse it.

use http::HeaderValue;
use url::Url;

use crate::dpop::Dpop;
use crate::{AccessToken, Secret, TokenError, TokenType};

/// A current access token, ready to be attached to a request.
#[derive(Clone)]
pub struct ManagedToken {
    value: Secret,
    token_type: TokenType,
    expires_at: Option<i64>,
    header: HeaderValue,
    dpop: Option<Dpop>,
}

impl ManagedToken {
    pub(crate) fn new(token: &AccessToken) -> Result<Self, TokenError> {
        let scheme = token.token_type.as_str();
        let mut header =
            HeaderValue::from_str(&format!("{scheme} {}", token.value.expose_secret())).map_err(
                |_| TokenError::Malformed("access token is not a valid header value".into()),
            )?;
        header.set_sensitive(true);
        Ok(Self {
            value: token.value.clone(),
            token_type: token.token_type.clone(),
            expires_at: token.expires_at,
            header,
            dpop: None,
        })
    }

    /// Attaches the client's DPoP signer to a `DPoP` token (a Bearer token stays Bearer).
    pub(crate) fn bind(mut self, dpop: Option<&Dpop>) -> Self {
        if self.token_type == TokenType::DPoP {
            self.dpop = dpop.cloned();
        }
        self
    }

    /// The DPoP signer of a bound token: the key its `cnf.jkt` names (the session's own key
    /// or the client's) with the shared nonce store. `None` for tokens that are not bound.
    pub fn dpop(&self) -> Option<&Dpop> {
        self.dpop.as_ref()
    }

    /// True when requests with this token need a DPoP proof and this token can make it.
    pub fn is_dpop_bound(&self) -> bool {
        self.dpop.is_some()
    }

    /// The `DPoP` header value for `method` on `url` (RFC 9449 §7.1: `ath` of this token, the
    /// nonce last seen from `url`'s origin); `None` for tokens that are not DPoP-bound.
    ///
    /// # Errors
    ///
    /// [`TokenError::InvalidParams`] when signing fails.
    pub fn dpop_proof(&self, method: &str, url: &Url) -> Result<Option<HeaderValue>, TokenError> {
        self.dpop
            .as_ref()
            .map(|d| d.proof(method, url, Some(&self.value)))
            .transpose()
    }

    /// Remembers the `DPoP-Nonce` a response from `url` carries (for the next proofs to that
    /// origin); returns it. Does nothing for tokens that are not DPoP-bound.
    pub fn remember_dpop_nonce(&self, url: &Url, headers: &http::HeaderMap) -> Option<String> {
        self.dpop.as_ref()?.remember_nonce(url, headers)
    }

    /// `Bearer <token>` (or `DPoP <token>`), marked sensitive so HTTP/2 never indexes it and
    /// header-logging layers that honour the flag redact it.
    pub fn authorization_header(&self) -> HeaderValue {
        self.header.clone()
    }

    /// Unix seconds, `None` if the IdP did not say.
    pub fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }

    /// The token's `token_type` (the `Authorization` scheme: `Bearer`, `DPoP`, ...).
    pub fn token_type(&self) -> &TokenType {
        &self.token_type
    }

    /// The raw token, e.g. as the `subject_token` of a token exchange.
    pub fn access_token(&self) -> &Secret {
        &self.value
    }

    /// Non-reversible fingerprint for log correlation.
    pub fn fingerprint(&self) -> String {
        self.value.fingerprint()
    }

    /// Same token value (used to detect "someone else already renewed this").
    pub(crate) fn same_token(&self, other: &Secret) -> bool {
        self.value == *other
    }
}

impl std::fmt::Debug for ManagedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedToken")
            .field("fingerprint", &self.fingerprint())
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("dpop_bound", &self.dpop.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn token(value: &str, token_type: TokenType) -> AccessToken {
        AccessToken {
            value: Secret::new(value),
            token_type,
            expires_at: Some(10),
            scope: None,
            issued_at: None,
        }
    }

    #[test]
    fn header_uses_the_canonical_scheme_and_is_sensitive() {
        for (tt, want) in [
            (TokenType::Bearer, "Bearer abc"),
            (TokenType::DPoP, "DPoP abc"),
        ] {
            let m = ManagedToken::new(&token("abc", tt)).unwrap();
            let h = m.authorization_header();
            assert_eq!(h.to_str().unwrap(), want);
            assert!(h.is_sensitive());
        }
    }

    #[test]
    fn debug_shows_a_fingerprint_not_the_token() {
        let m = ManagedToken::new(&token("top-secret-token", TokenType::Bearer)).unwrap();
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("top-secret"));
        assert!(dbg.contains(&m.fingerprint()));
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_malformed() {
        assert!(matches!(
            ManagedToken::new(&token("a\r\nb", TokenType::Bearer)),
            Err(TokenError::Malformed(_))
        ));
    }
}
