//! OAuth 2.0 token management for Rust services: the counterpart of
//! Duende.AccessTokenManagement, used by the Portcullis gateway for every proxied call and
//! usable on its own.
//!
//! - [`OAuthClient`]: one client at one token endpoint (code exchange, refresh, client
//!   credentials, token exchange, revocation; `client_secret_basic`/`_post`, `private_key_jwt`).
//! - [`UserTokenManager`]: a current access token per user session, refreshed before expiry
//!   with single-flight in process and a lease across instances ([`UserTokenStore`]).
//! - [`ClientCredentialsManager`]: cached client-credentials tokens, keyed by client and every
//!   request parameter.
//! - [`TokenClient`]: attach a managed token to each `reqwest` request, renew once on 401.
//! - [`Dpop`]: DPoP (RFC 9449) proofs; an [`OAuthClient::with_dpop`] gets DPoP-bound tokens
//!   whose [`ManagedToken::dpop_proof`] signs the proof of each resource request.
//! - [`ManagedToken`]: the only way to get an `Authorization` header out of this crate, so a
//!   caller cannot skip the expiry check.
//!
//! ```no_run
//! use std::{sync::Arc, time::Duration};
//! use portcullis_token::*;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let clock: SharedClock = Arc::new(SystemClock);
//! let config = OAuthClientConfig::new(
//!     "bff",
//!     ClientAuth::ClientSecretBasic(Secret::new("s3cret")),
//!     "https://idp.example/token".parse()?,
//! );
//! let client = Arc::new(OAuthClient::new(config, OAuthClient::default_http_client()?, clock.clone()));
//!
//! // After login: store the code-exchange result under the session id.
//! let store = InMemoryUserTokenStore::new(clock.clone());
//! let response = client
//!     .exchange_code("code", "https://app.example/signin-oidc", "verifier", &TokenParams::default())
//!     .await?;
//! store.insert("session-1", UserTokens::from_response(response, clock.now_unix())?);
//!
//! // On every API call: a current token, refreshed at most once however many calls race.
//! let users = UserTokenManager::new(client, UserTokenOptions::default(), clock);
//! match users.get_access_token(&store, "session-1", &TokenParams::default(), None).await {
//!     Ok(token) => { let _header = token.authorization_header(); }
//!     Err(e) if e.ends_session() => { /* log the user out */ }
//!     Err(e) => { /* transient: answer 503, keep the session */ let _ = e; }
//! }
//! # Ok(()) }
//! ```
//!
//! Token values are [`Secret`]s: redacted in `Debug`, never logged (logs and spans carry
//! [`Secret::fingerprint`]s). Time comes from an injectable [`Clock`].

#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod client_credentials;
pub mod clock;
pub mod discovery;
pub mod dpop;
pub mod error;
pub mod exchange;
mod flight;
pub mod http;
pub mod managed;
pub mod metrics;
pub mod secret;
pub mod store;
pub mod trace_context;
pub mod types;
pub mod user;

pub use auth::{ClientAuth, ClientAuthError, PrivateKeyJwt, SigningAlg};
pub use client::{OAuthClient, OAuthClientConfig, TokenTypeHint};
pub use client_credentials::ClientCredentialsManager;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use discovery::{discover, ProviderMetadata};
pub use dpop::{Dpop, DpopKey};
pub use error::TokenError;
pub use exchange::{TokenExchangeManager, ACCESS_TOKEN_TYPE};
pub use http::{TokenClient, TokenClientError, TokenSource};
pub use managed::ManagedToken;
pub use secret::Secret;
pub use store::{InMemoryUserTokenStore, UserTokenStore};
pub use types::{AccessToken, TokenParams, TokenResponse, TokenType, UserTokens};
pub use user::{RefreshValidator, UserTokenManager, UserTokenOptions};
