//! [`ClientCredentialsManager`]: cached client-credentials tokens for named clients.
//!
//! The cache key is the client name **and** every effective request parameter (the
//! [`TokenParams::cache_key`] of the call's params merged over the client's defaults). A
//! peer keyed its cache by client name only and handed a token with one scope to a caller
//! that asked for another (a published CVE); `cc_cache_keys_by_scope_regression_cve` pins
//! that we do not.
//!
//! A token is cached for its lifetime minus the buffer, but at least half its lifetime (a
//! token living 30 s with a 60 s buffer is cached 15 s, not 0 s). Tokens without `expires_in`
//! are cached for 5 minutes. Concurrent misses of one key cause one token request; all
//! waiters share its result, and failures are not cached.
//!
//! ```no_run
//! # async fn demo(client: std::sync::Arc<portcullis_token::OAuthClient>) -> Result<(), portcullis_token::TokenError> {
//! use std::{sync::Arc, time::Duration};
//! use portcullis_token::*;
//! let mut manager = ClientCredentialsManager::new(Arc::new(SystemClock), Duration::from_secs(60));
//! manager.add_client("orders", client, TokenParams::default().with_scope("orders.read"));
//! let token = manager.get_token("orders", &TokenParams::default()).await?;
//! # let _ = token; Ok(()) }
//! ```
//!
//! DPoP (RFC 9449): each client proves its own key. Give every [`OAuthClient`] its signer
//! with [`OAuthClient::with_dpop`] before registering it; its token requests then carry proofs
//! of that key, its tokens come back bound to it (`cnf.jkt`), and a
//! [`TokenClient`](crate::TokenClient) using the client sends `Authorization: DPoP` with a
//! proof of that key on every request. A client registered without a signer gets Bearer
//! tokens. Nonces belong to servers: share them between clients with
//! [`Dpop::with_key`](crate::Dpop::with_key).
//!
//! ```no_run
//! # fn demo(reports: portcullis_token::OAuthClient, orders: portcullis_token::OAuthClient) -> Result<(), Box<dyn std::error::Error>> {
//! use std::{sync::Arc, time::Duration};
//! use portcullis_token::*;
//! let clock: SharedClock = Arc::new(SystemClock);
//! let reports_dpop = Dpop::new(Arc::new(DpopKey::generate(SigningAlg::ES256)?), clock.clone());
//! // Another key, the same nonce store.
//! let orders_dpop = reports_dpop.with_key(Arc::new(DpopKey::generate(SigningAlg::EdDSA)?));
//! let mut manager = ClientCredentialsManager::new(clock, Duration::from_secs(60));
//! manager.add_client("reports", Arc::new(reports.with_dpop(reports_dpop)), TokenParams::default());
//! manager.add_client("orders", Arc::new(orders.with_dpop(orders_dpop)), TokenParams::default());
//! # Ok(()) }
//! ```
//!
//! Caveat: entries are evicted by moka in real time and judged fresh by the injected clock;
//! with the system clock both agree.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use tracing::Instrument as _;

use crate::{
    metrics, AccessToken, ManagedToken, OAuthClient, SharedClock, TokenError, TokenParams,
};

/// How long a token without `expires_in` is cached.
const NO_EXPIRY_CACHE_SECS: i64 = 300;

#[derive(Clone)]
struct Cached {
    /// Distinguishes entries of one key, so a stale entry is removed only if it is still there.
    id: u64,
    token: ManagedToken,
    /// Unix seconds (injected clock) after which the entry is not handed out.
    refresh_at: i64,
    cache_secs: u64,
}

struct CacheExpiry;

impl moka::Expiry<String, Cached> for CacheExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Cached,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(value.cache_secs))
    }
}

/// Client-credentials tokens for named clients, cached per client and parameters.
pub struct ClientCredentialsManager {
    clock: SharedClock,
    buffer: Duration,
    clients: HashMap<String, (Arc<OAuthClient>, TokenParams)>,
    cache: moka::future::Cache<String, Cached>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for ClientCredentialsManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentialsManager")
            .field("clients", &self.clients.keys().collect::<Vec<_>>())
            .field("buffer", &self.buffer)
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl ClientCredentialsManager {
    /// `buffer`: how long before expiry a cached token stops being handed out (usually 60 s).
    pub fn new(clock: SharedClock, buffer: Duration) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(10_000)
            .expire_after(CacheExpiry)
            .build();
        Self {
            clock,
            buffer,
            clients: HashMap::new(),
            cache,
            next_id: AtomicU64::new(0),
        }
    }

    /// Register a client under `name` with default parameters (scope, resource, ...).
    pub fn add_client(&mut self, name: &str, client: Arc<OAuthClient>, defaults: TokenParams) {
        self.clients.insert(name.to_owned(), (client, defaults));
    }

    /// A current token of client `client_name` for `params` merged over the client's defaults.
    pub async fn get_token(
        &self,
        client_name: &str,
        params: &TokenParams,
    ) -> Result<ManagedToken, TokenError> {
        let (client, effective, key) = self.resolve(client_name, params)?;
        let now = self.clock.now_unix();
        if let Some(cached) = self.cache.get(&key).await {
            if now < cached.refresh_at {
                metrics::client_cache(true);
                return Ok(cached.token);
            }
            self.remove_if_same(&key, cached.id).await;
        }
        metrics::client_cache(false);
        let span = tracing::debug_span!("client_credentials_token", client = client_name);
        let fetch = async {
            let response = client.client_credentials(&effective).await?;
            let now = self.clock.now_unix();
            let access = AccessToken::from_response(&response, now);
            let token = ManagedToken::new(&access)?.bind(client.dpop());
            let cache_secs = match access.lifetime() {
                Some(lifetime) => lifetime - access.effective_buffer(self.buffer),
                None => NO_EXPIRY_CACHE_SECS,
            }
            .max(0);
            tracing::debug!(client = client_name, token = %token.fingerprint(), cache_secs, "client token cached");
            Ok::<_, TokenError>(Cached {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                token,
                refresh_at: now + cache_secs,
                cache_secs: cache_secs.unsigned_abs(),
            })
        };
        let fetched = self
            .cache
            .try_get_with(key, fetch.instrument(span))
            .await
            .map_err(|e| (*e).clone())?;
        Ok(fetched.token)
    }

    /// A new token after an API rejected `stale` (401). If another caller already replaced
    /// `stale` in the cache, that token is returned without a new request.
    pub async fn renew(
        &self,
        client_name: &str,
        params: &TokenParams,
        stale: &ManagedToken,
    ) -> Result<ManagedToken, TokenError> {
        let (_, _, key) = self.resolve(client_name, params)?;
        self.cache
            .entry(key)
            .and_compute_with(|entry| {
                let op = match entry {
                    Some(e) if stale.same_token(e.value().token.access_token()) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        self.get_token(client_name, params).await
    }

    /// Drop the cached token of a client and params (e.g. after the API rejected it).
    pub async fn invalidate(&self, client_name: &str, params: &TokenParams) {
        if let Ok((_, _, key)) = self.resolve(client_name, params) {
            self.cache.invalidate(&key).await;
        }
    }

    fn resolve(
        &self,
        client_name: &str,
        params: &TokenParams,
    ) -> Result<(&Arc<OAuthClient>, TokenParams, String), TokenError> {
        let (client, defaults) = self.clients.get(client_name).ok_or_else(|| {
            TokenError::InvalidParams(format!("unknown client-credentials client {client_name:?}"))
        })?;
        let effective = params.merged_over(defaults);
        let key = format!(
            "{}:{client_name}{}",
            client_name.len(),
            effective.cache_key()
        );
        Ok((client, effective, key))
    }

    /// Remove the entry of `key` only if it is still entry `id` (a concurrent caller may have
    /// replaced it with a fresh one already).
    async fn remove_if_same(&self, key: &str, id: u64) {
        self.cache
            .entry(key.to_owned())
            .and_compute_with(|entry| {
                let op = match entry {
                    Some(e) if e.value().id == id => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }
}
