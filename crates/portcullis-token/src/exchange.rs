//! RFC 8693 token exchange with a cache: a route (or a service) trades the user's access
//! token for one aimed at another audience, resource or scope.
//!
//! The cache key is the SHA-256 of the *whole* subject token plus every request parameter,
//! so one user's exchanged token can never be handed out for another user's subject token,
//! and two routes asking for different audiences never share a token. Concurrent misses for
//! the same key make one request; failures are not cached. An exchanged token is used until
//! it comes within the buffer of its expiry (capped at half its lifetime, as for user tokens),
//! and never past the subject token's own expiry bound by the IdP.
//!
//! DPoP (RFC 9449): the exchange request is proven with the subject token's key when it is
//! DPoP-bound (a session's own key), else with the client's; the exchanged token is bound to
//! that key.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use sha2::{Digest, Sha256};

use crate::{AccessToken, ManagedToken, OAuthClient, SharedClock, TokenError, TokenParams};

/// RFC 8693 §3 token type of an OAuth access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Exchanges subject tokens and caches the results.
pub struct TokenExchangeManager {
    client: Arc<OAuthClient>,
    clock: SharedClock,
    buffer: Duration,
    cache: Cache<String, AccessToken>,
}

impl std::fmt::Debug for TokenExchangeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchangeManager")
            .field("buffer", &self.buffer)
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl TokenExchangeManager {
    /// Builds an RFC 8693 token-exchange manager. Exchanged tokens are cached (in memory, up to
    /// 100 000 entries) and exchanged again when they expire within `buffer` (capped at half
    /// their lifetime).
    pub fn new(client: Arc<OAuthClient>, clock: SharedClock, buffer: Duration) -> Self {
        Self {
            client,
            clock,
            buffer,
            cache: Cache::builder()
                .max_capacity(100_000)
                // Entries are also checked against their own expiry on every read.
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    /// A token exchanged for `subject` with `params` (`audience` goes in `params.extra`).
    pub async fn exchange(
        &self,
        subject: &ManagedToken,
        params: &TokenParams,
    ) -> Result<ManagedToken, TokenError> {
        let digest = Sha256::digest(subject.access_token().expose_secret().as_bytes());
        let key = format!(
            "{}|{}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            params.cache_key()
        );
        // The exchanged token is bound to the subject token's key (a session's own key, or
        // the client's): one key per session stays one key per session.
        let dpop = subject.dpop().or(self.client.dpop());
        let now = self.clock.now_unix();
        if let Some(cached) = self.cache.get(&key).await {
            if !cached.needs_refresh(now, self.buffer) {
                return Ok(ManagedToken::new(&cached)?.bind(dpop));
            }
            self.cache.invalidate(&key).await;
        }
        let token = self
            .cache
            .try_get_with(key, async {
                let response = self
                    .client
                    .token_exchange_with_dpop(
                        subject.access_token(),
                        ACCESS_TOKEN_TYPE,
                        params,
                        dpop,
                    )
                    .await?;
                response.validate()?;
                Ok::<_, TokenError>(AccessToken::from_response(&response, self.clock.now_unix()))
            })
            .await
            .map_err(|e: Arc<TokenError>| (*e).clone())?;
        Ok(ManagedToken::new(&token)?.bind(dpop))
    }
}
