//! [`TokenClient`]: call an API with a managed token (the counterpart of Duende's
//! `AddClientCredentialsTokenHandler` / `AddUserAccessTokenHttpClient`).
//!
//! The token is set on each request, never as a default header of the `reqwest::Client`, so one
//! pooled client can serve every user without ever sending one user's token on another user's
//! request (a published advisory against a peer). Any `Authorization` or `DPoP` header already
//! on the request is replaced.
//!
//! On a 401 answer the token is renewed once (single-flighted by the managers) and the request
//! is sent again at once, with no back-off sleep, but only if its body can be replayed
//! (`reqwest::Request::try_clone` is `Some`; streaming bodies cannot). Otherwise the 401 is
//! returned as is; so it is when the renewal fails transiently. A renewal that shows the session
//! is over (`invalid_grant`, ...) is returned as `Err(TokenClientError::Token(_))`.
//!
//! A DPoP-bound token (RFC 9449) gets a fresh proof on each request (`htu` = the request URL
//! without query and fragment, `ath`, the origin's last nonce); a 401 `use_dpop_nonce` with a
//! `DPoP-Nonce` is answered by one retry with that nonce, again only for replayable bodies.
//! The key is the token's: a client-credentials token is proven with its client's key (one
//! key per client, see [`ClientCredentialsManager`]), a user token with the session's own key
//! when it has one ([`UserTokens::dpop_key`](crate::UserTokens::dpop_key)), else with the
//! client's.
//!
//! ```no_run
//! # async fn demo(cc: std::sync::Arc<portcullis_token::ClientCredentialsManager>) -> Result<(), portcullis_token::TokenClientError> {
//! use portcullis_token::{TokenClient, TokenParams, TokenSource};
//! let http = reqwest::Client::new();
//! let api = TokenClient::new(http.clone(), TokenSource::Client { manager: cc, name: "orders".into(), params: TokenParams::default() });
//! let request = http.get("https://orders.example/v1/orders").build()?;
//! let response = api.send(request).await?;
//! # let _ = response; Ok(()) }
//! ```

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderName, StatusCode};

use crate::{
    ClientCredentialsManager, ManagedToken, TokenError, TokenParams, UserTokenManager,
    UserTokenStore,
};

/// Where a [`TokenClient`] gets its tokens.
#[derive(Clone)]
pub enum TokenSource {
    /// A client-credentials token of a named client.
    Client {
        /// The client-credentials manager (caches and renews tokens).
        manager: Arc<ClientCredentialsManager>,
        /// Name of the client registered in `manager`.
        name: String,
        /// Resource/scope/extra parameters of the token.
        params: TokenParams,
    },
    /// The token of one user session (create one `TokenClient` per session; they are cheap).
    User {
        /// The user-token manager (refreshes tokens, one refresh at a time per session).
        manager: Arc<UserTokenManager>,
        /// Where the session's tokens are stored.
        store: Arc<dyn UserTokenStore>,
        /// The session's key in `store`.
        session: String,
        /// Resource/scope/extra parameters of the token.
        params: TokenParams,
    },
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client { name, params, .. } => f
                .debug_struct("Client")
                .field("name", name)
                .field("params", params)
                .finish_non_exhaustive(),
            // The session id is a credential: never printed.
            Self::User { params, .. } => f
                .debug_struct("User")
                .field("params", params)
                .finish_non_exhaustive(),
        }
    }
}

impl TokenSource {
    /// A current token.
    pub async fn token(&self) -> Result<ManagedToken, TokenError> {
        match self {
            Self::Client {
                manager,
                name,
                params,
            } => manager.get_token(name, params).await,
            Self::User {
                manager,
                store,
                session,
                params,
            } => {
                manager
                    .get_access_token(store.as_ref(), session, params, None)
                    .await
            }
        }
    }

    /// A replacement for `stale`, which an API rejected.
    pub async fn renew(&self, stale: &ManagedToken) -> Result<ManagedToken, TokenError> {
        match self {
            Self::Client {
                manager,
                name,
                params,
            } => manager.renew(name, params, stale).await,
            Self::User {
                manager,
                store,
                session,
                params,
            } => manager.renew(store.as_ref(), session, params, stale).await,
        }
    }
}

/// Failure of [`TokenClient::send`].
#[derive(Debug, thiserror::Error)]
pub enum TokenClientError {
    /// No token could be obtained; the request was not sent.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The request itself failed.
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
}

/// A `reqwest::Client` plus a token source.
#[derive(Clone, Debug)]
pub struct TokenClient {
    http: reqwest::Client,
    source: TokenSource,
}

impl TokenClient {
    /// Wraps `http`; every request sent through [`send`](Self::send) gets a token from `source`.
    pub fn new(http: reqwest::Client, source: TokenSource) -> Self {
        Self { http, source }
    }

    /// Where this client gets its tokens.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// Send `request` with a current token; on 401, renew once and resend if the body is replayable.
    pub async fn send(
        &self,
        mut request: reqwest::Request,
    ) -> Result<reqwest::Response, TokenClientError> {
        let token = self.source.token().await?;
        set_token(&mut request, &token)?;
        let retry = request.try_clone();
        let nonce_retry = request.try_clone();
        let url = request.url().clone();
        let mut response = self.http.execute(request).await?;
        let (Some(mut retry), Some(mut again)) = (retry, nonce_retry) else {
            token.remember_dpop_nonce(&url, response.headers());
            return Ok(response);
        };
        if token
            .remember_dpop_nonce(&url, response.headers())
            .is_some()
            && crate::dpop::is_nonce_challenge(response.status(), response.headers())
        {
            // RFC 9449 §9: the resource server wants a nonce; one retry with it.
            set_token(&mut again, &token)?;
            drop(response);
            response = self.http.execute(again).await?;
            token.remember_dpop_nonce(&url, response.headers());
        }
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let renewed = match self.source.renew(&token).await {
            Ok(renewed) if !renewed.same_token(token.access_token()) => renewed,
            Ok(_) => return Ok(response),
            // The session is over: say so rather than hand back an unexplained 401.
            Err(e) if e.ends_session() => return Err(e.into()),
            Err(e) => {
                tracing::debug!(error = %e, token = %token.fingerprint(), "renewal after 401 failed");
                return Ok(response);
            }
        };
        tracing::debug!(stale = %token.fingerprint(), renewed = %renewed.fingerprint(), "retrying after 401");
        drop(response);
        set_token(&mut retry, &renewed)?;
        let response = self.http.execute(retry).await?;
        renewed.remember_dpop_nonce(&url, response.headers());
        Ok(response)
    }
}

/// `Authorization` with the token's scheme and, for a DPoP-bound token, a fresh proof for
/// this request's method and URL; any `DPoP` header already set is replaced.
fn set_token(request: &mut reqwest::Request, token: &ManagedToken) -> Result<(), TokenError> {
    let proof = token.dpop_proof(request.method().as_str(), request.url())?;
    let headers = request.headers_mut();
    headers.remove(HeaderName::from_static("dpop"));
    headers.insert(AUTHORIZATION, token.authorization_header());
    if let Some(proof) = proof {
        headers.insert(HeaderName::from_static("dpop"), proof);
    }
    Ok(())
}
