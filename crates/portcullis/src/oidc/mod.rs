//! OpenID Connect: the identity provider as the gateway sees it.
//!
//! - [`Provider`]: discovery (cached, stale-while-failing, read leniently) and the JWKS
//!   (parsed key by key, refetched at once on an unknown `kid`, single-flight, throttled per
//!   `kid` so forged tokens cannot make us hammer the IdP). IdP bodies are capped at 1 MiB.
//! - [`jwt`]: signature verification with an algorithm allow-list (asymmetric only: `none`
//!   and HMAC can never be selected, so an HMAC-with-the-public-key forgery cannot verify).
//! - [`id_token`] and [`logout_token`]: the claim rules of OIDC Core §3.1.3.7 and OIDC
//!   Back-Channel Logout §2.6, with time taken from the injected clock.
//! - [`authorize`]: the login transaction (state, nonce, PKCE S256 verifier, returnUrl) and
//!   the authorization request URL.

pub mod authorize;
pub mod id_token;
pub mod jwt;
pub mod logout_token;
mod provider;
#[cfg(test)]
pub(crate) mod test_idp;

pub use provider::{
    map_reqwest as provider_error, read_capped, KeySet, Provider, ProviderMetadata, UsableKey,
    JWKS_MAX_AGE, JWKS_MIN_INTERVAL, MAX_IDP_BODY, UNKNOWN_KID_TTL,
};
