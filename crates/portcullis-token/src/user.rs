//! [`UserTokenManager`]: a current access token for a user session, refreshed with the
//! session's refresh token before it expires, exactly once however many requests need it.
//!
//! ```text
//! get_access_token ──► load ──► fresh? ──yes──► ManagedToken
//!                                 │no
//!                                 ▼
//!                  per-session lock (in process) ──► re-load ──► fresh now? ──► use it
//!                                 │still stale
//!                                 ▼
//!                  store lease (across instances) ──► re-load ──► fresh now? ──► use it
//!                                 │still stale                 (lease held elsewhere:
//!                                 ▼                               poll the store, bounded)
//!                  refresh at the IdP (lease renewed while in flight)
//!                                 ▼
//!                  compare_and_set ──► conflict: re-load, re-apply or use the winner's tokens
//! ```
//!
//! Why each step:
//! - The lock is per session, not per session and params: every per-resource token is
//!   obtained with the session's single refresh token, and two concurrent refreshes with the
//!   same one-time refresh token would make a rotating IdP answer `invalid_grant` (or revoke
//!   the whole token family).
//! - Re-loading after each wait is what makes late arrivals reuse the result: a caller never
//!   uses a refresh token it read before waiting.
//! - The store lease extends single-flight to several gateway instances. It is renewed at a
//!   third of its TTL while the IdP call runs, so a slow IdP cannot let a second instance in.
//!   `compare_and_set` fences what is written if a lease is lost anyway.
//!
//! Failures: `invalid_grant`, any other 4xx but 429 to the refresh (whatever its body), and
//! "expired, no refresh token" end the session ([`TokenError::ends_session`]). Transient
//! failures (IdP down, slow, 5xx, 429) keep the session and start a short back-off per session
//! and params (`failure_backoff`, measured with the injected clock, 1 s resolution) during
//! which calls fail fast with the same error; a token that is within the refresh buffer but
//! not yet expired is still handed out meanwhile. Failed refreshes never change the stored
//! tokens.
//!
//! Refresh responses are checked before anything of them is used: a [`RefreshValidator`]
//! (see [`UserTokenManager::with_refresh_validator`]; the gateway's validates the new ID
//! token as at login and requires the session's `iss`, `sub` and `auth_time`, OIDC Core
//! §12.2) can refuse one. A refused response is not stored and its tokens are not handed out
//! ([`TokenError::InvalidRefreshResponse`], logged at `error`); the session stays, and the
//! back-off applies as for a transient failure. Without a validator the ID token is stored as
//! received.
//!
//! Ending a session races with refreshing it: a logout that read the refresh token before a
//! concurrent refresh rotated it would revoke the dead one and leave the new one live.
//! [`UserTokenManager::with_refresh_lock`] runs the end of a session under the same lock and
//! lease as a refresh.
//!
//! DPoP (RFC 9449): a session whose [`UserTokens::dpop_key`] holds its own key refreshes with
//! proofs of that key, and its tokens sign their resource proofs with it; other sessions use
//! the client's key ([`OAuthClient::with_dpop`]), if any. Parsed session keys are kept in a
//! bounded in-memory cache keyed by a SHA-256 of the key, so a proof costs one signature, not
//! a key parse. Nonces are shared with the client's signer (they belong to servers).
//!
//! Caveats: if the store fails right after a successful refresh, the new tokens are kept in
//! memory (this instance) and written on the next call, so a rotated refresh token is not
//! lost to a store hiccup.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument as _;

use crate::dpop::{Dpop, DpopKey, DpopNonces};
use crate::flight::FlightMap;
use crate::{
    metrics, ManagedToken, OAuthClient, Secret, SharedClock, TokenError, TokenParams,
    TokenResponse, TokenTypeHint, UserTokenStore, UserTokens,
};

/// Tuning of the [`UserTokenManager`].
#[derive(Debug, Clone)]
pub struct UserTokenOptions {
    /// Refresh this long before expiry (capped at half the token's lifetime). Default 60 s.
    pub refresh_before_expiry: Duration,
    /// After a failed refresh (not ending the session), fail fast for this long. Default 2 s.
    pub failure_backoff: Duration,
    /// TTL of the cross-instance refresh lease; renewed while the IdP call runs. Default 15 s.
    pub lease_ttl: Duration,
    /// How often to look at the store while another instance holds the lease. Default 50 ms.
    pub lease_poll_interval: Duration,
    /// How long to wait for another instance's refresh before answering `Unavailable`.
    /// Default 15 s (longer than the default token request timeout of 10 s).
    pub lease_wait: Duration,
    /// RFC 8707 `resource` of the session's main access token (the one for
    /// `TokenParams::default()`), i.e. the resource of the login's authorization request and
    /// code exchange. Sent again when that token is refreshed, so the refreshed token is for
    /// the same resource. Default none.
    pub resource: Option<String>,
}

impl Default for UserTokenOptions {
    fn default() -> Self {
        Self {
            refresh_before_expiry: Duration::from_secs(60),
            failure_backoff: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(15),
            lease_poll_interval: Duration::from_millis(50),
            lease_wait: Duration::from_secs(15),
            resource: None,
        }
    }
}

/// Checks a successful refresh response before any of it is used or stored.
///
/// The token crate knows nothing of OpenID Connect; the gateway implements this with its ID
/// token validation (signature against the IdP's JWKS, `iss`, `aud`, `azp`, `exp`, and the
/// session's `iss`, `sub` and `auth_time`: OpenID Connect Core 1.0 §12.2).
#[async_trait]
pub trait RefreshValidator: Send + Sync {
    /// `session` is the session key, `previous` the tokens the refresh started from (read
    /// from the store under the refresh lock), `response` the token endpoint's 2xx answer.
    ///
    /// Any `Err` means nothing of the response is stored or handed out, and is what the
    /// caller gets. Refuse a response with [`TokenError::InvalidRefreshResponse`] (a reason
    /// free of token values); report a check that could not run with its own kind
    /// ([`TokenError::Unavailable`], [`TokenError::Timeout`], [`TokenError::Store`]: transient).
    async fn validate(
        &self,
        session: &str,
        previous: &UserTokens,
        response: &TokenResponse,
    ) -> Result<(), TokenError>;
}

/// Hands out current user access tokens, refreshing them with single-flight.
pub struct UserTokenManager {
    client: Arc<OAuthClient>,
    validator: Option<Arc<dyn RefreshValidator>>,
    options: UserTokenOptions,
    clock: SharedClock,
    flights: FlightMap,
    /// Recent failures per session+params, for the back-off. Bounded; entries outlive the
    /// back-off (real time) and are judged by the injected clock.
    failures: moka::sync::Cache<String, Failure>,
    /// Refreshed tokens the store failed to accept, per session.
    unstored: moka::sync::Cache<String, Unstored>,
    /// Prefix of lease holder ids, unique per manager (= per gateway instance).
    instance: String,
    /// Parsed per-session DPoP keys, by SHA-256 of their private JWK.
    session_keys: moka::sync::Cache<[u8; 32], Arc<DpopKey>>,
    /// Nonces for per-session keys when the client has no DPoP signer of its own.
    nonces: Arc<DpopNonces>,
}

#[derive(Clone)]
struct Failure {
    at: i64,
    error: TokenError,
}

#[derive(Clone)]
struct Unstored {
    base: UserTokens,
    updated: UserTokens,
}

enum Mode<'a> {
    IfNeeded { buffer: Duration },
    Renew { stale: &'a ManagedToken },
}

enum Plan {
    Use(ManagedToken),
    /// Refresh with this refresh token; if that fails without ending the session, `fallback`
    /// (a token inside the refresh buffer but unexpired) is still good enough.
    Refresh {
        refresh_token: Secret,
        fallback: Option<ManagedToken>,
    },
}

/// Most compare-and-set attempts after version conflicts that did not change the tokens.
const MAX_CAS_ATTEMPTS: usize = 3;

impl std::fmt::Debug for UserTokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTokenManager")
            .field("client", &self.client)
            .field("options", &self.options)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl UserTokenManager {
    /// Builds the manager for one OAuth client. Does no I/O; no refresh validator is set.
    pub fn new(client: Arc<OAuthClient>, options: UserTokenOptions, clock: SharedClock) -> Self {
        let failures = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(
                options
                    .failure_backoff
                    .saturating_mul(2)
                    .max(Duration::from_secs(10)),
            )
            .build();
        let unstored = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(600))
            .build();
        Self {
            client,
            validator: None,
            options,
            clock,
            flights: FlightMap::default(),
            failures,
            unstored,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            session_keys: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(1800))
                .build(),
            nonces: Arc::default(),
        }
    }

    /// The DPoP signer of a session: its own key ([`UserTokens::dpop_key`]) if it has one,
    /// else the client's signer, if any.
    ///
    /// # Errors
    ///
    /// [`TokenError::InvalidParams`] when the stored key cannot be read (never quoting it).
    pub fn dpop_for(&self, tokens: &UserTokens) -> Result<Option<Dpop>, TokenError> {
        let Some(jwk) = &tokens.dpop_key else {
            return Ok(self.client.dpop().cloned());
        };
        use sha2::Digest as _;
        let id: [u8; 32] = sha2::Sha256::digest(jwk.expose_secret().as_bytes()).into();
        let key = match self.session_keys.get(&id) {
            Some(key) => key,
            None => {
                let key = Arc::new(DpopKey::from_jwk(jwk.expose_secret()).map_err(|e| {
                    TokenError::InvalidParams(format!("the session's DPoP key: {e}"))
                })?);
                self.session_keys.insert(id, key.clone());
                key
            }
        };
        Ok(Some(match self.client.dpop() {
            Some(client) => client.with_key(key),
            None => Dpop::with_nonces(key, self.nonces.clone(), self.clock.clone()),
        }))
    }

    /// Check every refresh response with `validator` before using or storing it.
    pub fn with_refresh_validator(mut self, validator: Arc<dyn RefreshValidator>) -> Self {
        self.validator = Some(validator);
        self
    }

    /// The refresh options (buffer, back-off, ...).
    pub fn options(&self) -> &UserTokenOptions {
        &self.options
    }

    /// The OAuth client refreshes go to.
    pub fn client(&self) -> &Arc<OAuthClient> {
        &self.client
    }

    /// Sessions with a refresh in progress or queued (for a gauge; also shows the in-flight map
    /// is cleaned up).
    pub fn sessions_in_flight(&self) -> usize {
        self.flights.len()
    }

    /// A current access token for the session and params; refreshes if it expires within
    /// `refresh_before_expiry` (the option's value unless overridden for this call).
    pub async fn get_access_token(
        &self,
        store: &dyn UserTokenStore,
        session: &str,
        params: &TokenParams,
        refresh_before_expiry: Option<Duration>,
    ) -> Result<ManagedToken, TokenError> {
        let buffer = refresh_before_expiry.unwrap_or(self.options.refresh_before_expiry);
        let (tokens, _) = load(store, session).await?;
        if let Some(token) = tokens.token_for(params) {
            if !token.needs_refresh(self.clock.now_unix(), buffer) {
                // The caller's span (the gateway's `token` span) declares this field.
                tracing::Span::current().record("token.cache", "hit");
                return Ok(ManagedToken::new(token)?.bind(self.dpop_for(&tokens)?.as_ref()));
            }
        }
        tracing::Span::current().record("token.cache", "miss");
        // Boxed: the refresh (single flight, lease, IdP call) is the cold path and its
        // future is large; inline, every cache hit's future would carry its size.
        Box::pin(self.obtain(store, session, params, Mode::IfNeeded { buffer })).await
    }

    /// Force a refresh after an API answered 401 with `stale`. Single-flighted: if another
    /// caller already replaced `stale`, that token is returned without a new IdP call. No
    /// waiting: one immediate refresh (a failure back-off still fails fast).
    pub async fn renew(
        &self,
        store: &dyn UserTokenStore,
        session: &str,
        params: &TokenParams,
        stale: &ManagedToken,
    ) -> Result<ManagedToken, TokenError> {
        self.obtain(store, session, params, Mode::Renew { stale })
            .await
    }

    /// Run `f` while no refresh of `session` can run or store anything: under the session's
    /// in-process refresh lock and its store lease (the one refreshes take across instances).
    ///
    /// For ending a session: inside `f`, read the session fresh from the store, revoke the
    /// refresh token found there and delete the session. A refresh that was in flight has
    /// then stored its rotated refresh token (so that one is revoked, not its predecessor),
    /// and a refresh that waits for the lock finds the session gone.
    ///
    /// If another instance holds the lease for longer than `lease_wait`, or the store cannot
    /// grant it, `f` runs anyway after that wait (logged at `warn`): ending a session must
    /// not depend on the lease. The lease is released afterwards.
    pub async fn with_refresh_lock<F, Fut, T>(
        &self,
        store: &dyn UserTokenStore,
        session: &str,
        f: F,
    ) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let _flight = self
            .flights
            .lock(session)
            .instrument(tracing::debug_span!("token.single_flight_wait"))
            .await;
        let holder = format!("{}/{}", self.instance, uuid::Uuid::new_v4().simple());
        let give_up_at = tokio::time::Instant::now() + self.options.lease_wait;
        let leased = loop {
            match store
                .acquire_lease(session, &holder, self.options.lease_ttl)
                .await
            {
                Ok(true) => break true,
                Ok(false) if tokio::time::Instant::now() < give_up_at => {
                    tokio::time::sleep(self.options.lease_poll_interval).await;
                }
                Ok(false) => {
                    tracing::warn!("refresh lease still held elsewhere; going on without it");
                    break false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refresh lease unavailable; going on without it");
                    break false;
                }
            }
        };
        let result = f().await;
        if leased {
            if let Err(e) = store.release_lease(session, &holder).await {
                tracing::warn!(error = %e, "could not release the refresh lease (it will expire)");
            }
        }
        result
    }

    /// Revoke the session's refresh token (RFC 7009), e.g. at logout. `Ok(())` when the
    /// session has none; `Err(NotSupported)` when the IdP has no revocation endpoint.
    pub async fn revoke_refresh_token(&self, tokens: &UserTokens) -> Result<(), TokenError> {
        match &tokens.refresh_token {
            Some(rt) => self.client.revoke(rt, TokenTypeHint::RefreshToken).await,
            None => Ok(()),
        }
    }

    async fn obtain(
        &self,
        store: &dyn UserTokenStore,
        session: &str,
        params: &TokenParams,
        mode: Mode<'_>,
    ) -> Result<ManagedToken, TokenError> {
        let _flight = self.flights.lock(session).await;
        let holder = format!("{}/{}", self.instance, uuid::Uuid::new_v4().simple());
        let mut leased = false;
        let give_up_at = tokio::time::Instant::now() + self.options.lease_wait;
        let result = loop {
            let (tokens, version) = match load(store, session).await {
                Ok(loaded) => loaded,
                Err(e) => break Err(e),
            };
            match self
                .recover_unstored(store, session, &tokens, version)
                .await
            {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => break Err(e),
            }
            // The session's key never changes, but it is read with the tokens it binds.
            let dpop = match self.dpop_for(&tokens) {
                Ok(dpop) => dpop,
                Err(e) => break Err(e),
            };
            let (refresh_token, fallback) = match self.plan(session, &tokens, params, &mode) {
                Ok(Plan::Use(token)) => break Ok(token.bind(dpop.as_ref())),
                Ok(Plan::Refresh {
                    refresh_token,
                    fallback,
                }) => (refresh_token, fallback),
                Err(e) => break Err(e),
            };
            if !leased {
                match store
                    .acquire_lease(session, &holder, self.options.lease_ttl)
                    .await
                {
                    // Re-read under the lease: another instance may have refreshed meanwhile.
                    Ok(true) => {
                        leased = true;
                        continue;
                    }
                    Ok(false) if tokio::time::Instant::now() < give_up_at => {
                        tokio::time::sleep(self.options.lease_poll_interval)
                            .instrument(tracing::debug_span!("token.lease_wait"))
                            .await;
                        continue;
                    }
                    Ok(false) => {
                        break Err(TokenError::Unavailable(
                            "a refresh of this session is in progress on another instance".into(),
                        ))
                    }
                    Err(e) => break Err(e),
                }
            }
            break match self
                .refresh(
                    store,
                    session,
                    params,
                    &holder,
                    tokens,
                    version,
                    refresh_token,
                    dpop.as_ref(),
                )
                .await
            {
                Err(e) if !e.ends_session() && fallback.is_some() => {
                    tracing::debug!("refresh failed; using the unexpired token meanwhile");
                    fallback.ok_or(e)
                }
                result => result,
            }
            .map(|t| t.bind(dpop.as_ref()));
        };
        if leased {
            if let Err(e) = store.release_lease(session, &holder).await {
                tracing::warn!(error = %e, "could not release the refresh lease (it will expire)");
            }
        }
        result
    }

    fn plan(
        &self,
        session: &str,
        tokens: &UserTokens,
        params: &TokenParams,
        mode: &Mode<'_>,
    ) -> Result<Plan, TokenError> {
        let now = self.clock.now_unix();
        let current = tokens.token_for(params);
        let unexpired = current.filter(|t| !t.is_expired(now));
        match mode {
            Mode::IfNeeded { buffer } => {
                if let Some(t) = current.filter(|t| !t.needs_refresh(now, *buffer)) {
                    return Ok(Plan::Use(ManagedToken::new(t)?));
                }
            }
            Mode::Renew { stale } => {
                if let Some(t) = unexpired.filter(|t| !stale.same_token(&t.value)) {
                    return Ok(Plan::Use(ManagedToken::new(t)?));
                }
            }
        }
        // A token inside the refresh buffer is still good if no refresh can happen now; a token
        // an API just rejected is not.
        let fallback = match mode {
            Mode::IfNeeded { .. } => unexpired,
            Mode::Renew { .. } => None,
        };
        if let Some(failure) = self.failures.get(&failure_key(session, params)) {
            if (0..self.backoff_secs()).contains(&(now - failure.at)) {
                if let Some(t) = fallback {
                    tracing::debug!(token = %t.value.fingerprint(), "refresh backing off; using the unexpired token");
                    return Ok(Plan::Use(ManagedToken::new(t)?));
                }
                return Err(failure.error);
            }
        }
        match (&tokens.refresh_token, fallback) {
            (Some(rt), fallback) => Ok(Plan::Refresh {
                refresh_token: rt.clone(),
                fallback: fallback.map(ManagedToken::new).transpose()?,
            }),
            (None, Some(t)) => Ok(Plan::Use(ManagedToken::new(t)?)),
            (None, None) => Err(TokenError::NoRefreshToken),
        }
    }

    fn backoff_secs(&self) -> i64 {
        // The clock has 1 s resolution: round up, so a sub-second back-off is not zero.
        i64::try_from(self.options.failure_backoff.as_millis().div_ceil(1000)).unwrap_or(i64::MAX)
    }

    #[allow(clippy::too_many_arguments)] // one private call site; a struct would only rename them
    async fn refresh(
        &self,
        store: &dyn UserTokenStore,
        session: &str,
        params: &TokenParams,
        holder: &str,
        tokens: UserTokens,
        version: u64,
        refresh_token: Secret,
        dpop: Option<&Dpop>,
    ) -> Result<ManagedToken, TokenError> {
        let span = tracing::info_span!(
            "user_token_refresh",
            session = %Secret::new(session).fingerprint(),
            refresh_token = %refresh_token.fingerprint(),
            resource = params.resource.as_deref(),
            scope = params.scope.as_deref(),
        );
        async {
            metrics::refresh_attempt();
            let result = self
                .call_idp(store, session, holder, &refresh_token, params, dpop)
                .await;
            let now = self.clock.now_unix();
            let checked = match (result, &self.validator) {
                (Ok(response), Some(validator)) => validator
                    .validate(session, &tokens, &response)
                    .await
                    .map(|()| response),
                (result, _) => result,
            };
            let response = match checked {
                Ok(response) => response,
                Err(error) => {
                    return self
                        .refresh_failed(store, session, params, &refresh_token, error, now)
                        .await
                }
            };
            self.failures.invalidate(&failure_key(session, params));
            self.store_result(store, session, params, tokens, version, &response, now)
                .await
        }
        .instrument(span)
        .await
    }

    async fn refresh_failed(
        &self,
        store: &dyn UserTokenStore,
        session: &str,
        params: &TokenParams,
        used: &Secret,
        error: TokenError,
        now: i64,
    ) -> Result<ManagedToken, TokenError> {
        metrics::refresh_failure(error.kind());
        if matches!(
            error,
            TokenError::InvalidGrant { .. } | TokenError::RefreshRefused { .. }
        ) {
            // A writer that ignores the lease may have rotated the refresh token meanwhile:
            // then the session is fine and the stored token is the answer.
            if let Ok((latest, _)) = load(store, session).await {
                if latest.refresh_token.as_ref() != Some(used) {
                    if let Some(t) = latest.token_for(params).filter(|t| !t.is_expired(now)) {
                        tracing::info!(
                            "refresh token was rotated by another writer; using its result"
                        );
                        return ManagedToken::new(t);
                    }
                }
            }
        }
        if error.ends_session() {
            tracing::info!(error = %error, "refresh failed; the session cannot get tokens any more");
        } else {
            if let TokenError::InvalidRefreshResponse(reason) = &error {
                // Not a passing outage: the IdP answered with tokens that must not be used.
                tracing::error!(%reason, "refresh response refused; nothing of it is used or stored, the session is kept");
            } else {
                tracing::warn!(error = %error, "refresh failed; backing off");
            }
            self.failures.insert(
                failure_key(session, params),
                Failure {
                    at: now,
                    error: error.clone(),
                },
            );
        }
        Err(error)
    }

    /// The IdP call, renewing the store lease while it runs.
    async fn call_idp(
        &self,
        store: &dyn UserTokenStore,
        session: &str,
        holder: &str,
        refresh_token: &Secret,
        params: &TokenParams,
        dpop: Option<&Dpop>,
    ) -> Result<TokenResponse, TokenError> {
        // The main token keeps the resource it was issued for at login (RFC 8707 §2.2).
        let main;
        let wire = match &self.options.resource {
            Some(resource) if params.is_default() => {
                main = TokenParams::default().with_resource(resource.clone());
                &main
            }
            _ => params,
        };
        let request = self.client.refresh_with_dpop(refresh_token, wire, dpop);
        tokio::pin!(request);
        let period = (self.options.lease_ttl / 3).max(Duration::from_millis(100));
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                result = &mut request => return result,
                _ = renew.tick() => match store.acquire_lease(session, holder, self.options.lease_ttl).await {
                    Ok(true) => tracing::debug!("refresh lease renewed"),
                    Ok(false) => tracing::warn!("refresh lease lost during the IdP call; compare-and-set will arbitrate"),
                    Err(e) => tracing::warn!(error = %e, "could not renew the refresh lease"),
                },
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // one private call site
    async fn store_result(
        &self,
        store: &dyn UserTokenStore,
        session: &str,
        params: &TokenParams,
        mut base: UserTokens,
        mut version: u64,
        response: &TokenResponse,
        now: i64,
    ) -> Result<ManagedToken, TokenError> {
        let mut updated = base.clone();
        let mut token = ManagedToken::new(&updated.apply_refresh(params, response, now))?;
        for _ in 0..MAX_CAS_ATTEMPTS {
            match store.compare_and_set(session, version, &updated).await {
                Ok(true) => {
                    tracing::debug!(token = %token.fingerprint(), "refreshed tokens stored");
                    return Ok(token);
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(error = %error, "refreshed tokens could not be stored; keeping them in memory");
                    self.unstored
                        .insert(session.to_owned(), Unstored { base, updated });
                    return Ok(token);
                }
            }
            // Version conflict: see what changed.
            let (latest, latest_version) = match load(store, session).await {
                Ok(loaded) => loaded,
                Err(TokenError::SessionNotFound) => return Err(TokenError::SessionNotFound),
                Err(error) => {
                    tracing::warn!(error = %error, "refreshed tokens could not be stored; keeping them in memory");
                    self.unstored
                        .insert(session.to_owned(), Unstored { base, updated });
                    return Ok(token);
                }
            };
            if latest.refresh_token != base.refresh_token {
                // Another writer refreshed: its refresh token is the live one. Prefer its access
                // token too when usable, else ours (valid, just not stored).
                tracing::info!("another writer refreshed concurrently; keeping its tokens");
                return match latest.token_for(params).filter(|t| !t.is_expired(now)) {
                    Some(t) => ManagedToken::new(t),
                    None => Ok(token),
                };
            }
            // Something unrelated bumped the version (e.g. sliding expiry): apply on top of it.
            base = latest;
            version = latest_version;
            updated = base.clone();
            token = ManagedToken::new(&updated.apply_refresh(params, response, now))?;
        }
        tracing::warn!("gave up storing refreshed tokens after repeated version conflicts");
        Ok(token)
    }

    /// Write tokens that a failed store write left in memory, if the store still holds exactly
    /// the tokens they were derived from. `Ok(true)`: written, re-load.
    async fn recover_unstored(
        &self,
        store: &dyn UserTokenStore,
        session: &str,
        tokens: &UserTokens,
        version: u64,
    ) -> Result<bool, TokenError> {
        let Some(pending) = self.unstored.get(session) else {
            return Ok(false);
        };
        self.unstored.invalidate(session);
        if pending.base != *tokens {
            return Ok(false);
        }
        match store
            .compare_and_set(session, version, &pending.updated)
            .await
        {
            Ok(written) => {
                tracing::info!(written, "retried storing refreshed tokens");
                Ok(written)
            }
            Err(e) => {
                self.unstored.insert(session.to_owned(), pending);
                Err(e)
            }
        }
    }
}

async fn load(store: &dyn UserTokenStore, session: &str) -> Result<(UserTokens, u64), TokenError> {
    store
        .load(session)
        .await?
        .ok_or(TokenError::SessionNotFound)
}

/// Back-off key: session and every request parameter, length-prefixed.
fn failure_key(session: &str, params: &TokenParams) -> String {
    format!("{}:{session}{}", session.len(), params.cache_key())
}
