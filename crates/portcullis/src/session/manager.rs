//! Loading, creating, sliding and ending sessions.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use axum::http::HeaderMap;
use portcullis_session::{
    CasOutcome, Invalidation, SessionFilter, SessionRecord, SessionStore, StoreError,
};
use portcullis_token::SharedClock;

use super::cache::SessionCache;
use super::keys::KeyRing;
use super::ticket::Ticket;
use crate::cookie::{CookieSettings, SessionId};
use crate::error::GatewayError;
use crate::settings::SessionSettings;

/// A session found through the request's cookie.
#[derive(Debug, Clone)]
pub struct ActiveSession {
    /// The stored record (metadata and the sealed ticket).
    pub record: SessionRecord,
    /// The opened ticket: claims and tokens.
    pub ticket: Ticket,
}

impl ActiveSession {
    /// The store key: base64url(SHA-256(session id)), never the cookie value.
    pub fn key(&self) -> &str {
        &self.record.key
    }
}

/// What the request's cookie resolved to.
#[derive(Debug)]
pub enum Lookup {
    /// No session cookie.
    Anonymous,
    /// A cookie whose session is gone, expired, malformed or unreadable: clear it.
    Stale,
    /// Shared with the session cache: a cache hit copies a pointer, not the ticket.
    Active(Arc<ActiveSession>),
}

/// Session lifecycle over a [`SessionStore`].
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    keys: Arc<KeyRing>,
    clock: SharedClock,
    settings: SessionSettings,
    cookies: CookieSettings,
    /// Recently used sessions, so the hot path needs no store round-trip. Entries live at
    /// most `cache_ttl` (the staleness bound when no invalidation reaches us) and are dropped
    /// at once on every local write and on every invalidation the store announces.
    cache: Option<SessionCache>,
    /// Serialises [`SessionStore::poll_changes`] with applying its result, so no request
    /// serves a hit between a poll that found a change and the eviction.
    poll_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("store", &self.store.kind())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

const TICKET_AAD: &[u8] = b"portcullis.ticket.v1:";

/// How often a WebSocket tunnel looks whether its session still exists
/// ([`Sessions::wait_until_ended`]).
pub const TUNNEL_RECHECK: Duration = Duration::from_secs(2);

impl Sessions {
    /// Builds the session manager over a store, the ticket key ring, a clock and the session
    /// and cookie settings. Does no I/O.
    pub fn new(
        store: Arc<dyn SessionStore>,
        keys: Arc<KeyRing>,
        clock: SharedClock,
        settings: SessionSettings,
        cookies: CookieSettings,
    ) -> Self {
        let cache = (!settings.cache_ttl.is_zero())
            .then(|| SessionCache::new(settings.cache_ttl, settings.cache_capacity));
        Self {
            store,
            keys,
            clock,
            settings,
            cookies,
            cache,
            poll_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The same store, key ring, clock and cache for another frontend: its own session
    /// settings (partition, timeouts) and cookies. Sessions of other partitions are refused
    /// by every lookup.
    pub fn for_frontend(&self, settings: SessionSettings, cookies: CookieSettings) -> Self {
        Self {
            settings,
            cookies,
            ..self.clone()
        }
    }

    /// Listens to the store's change announcements (Redis pub/sub, PostgreSQL NOTIFY) and
    /// drops changed sessions from the cache. `None` when there is no cache or the store
    /// lives in this process only.
    pub fn spawn_invalidation_listener(&self) -> Option<tokio::task::JoinHandle<()>> {
        let cache = self.cache.clone()?;
        let mut rx = self.store.subscribe_invalidations()?;
        Some(tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match rx.recv().await {
                    Ok(Invalidation::Key(key)) => cache.invalidate(&key).await,
                    Ok(Invalidation::All) | Err(RecvError::Lagged(_)) => cache.invalidate_all(),
                    Err(RecvError::Closed) => {
                        // No more announcements: stop trusting the cache.
                        cache.invalidate_all();
                        tracing::warn!("session invalidation channel closed; cache entries now live at most cache_ttl");
                        break;
                    }
                }
            }
        }))
    }

    async fn forget(&self, key: &str) {
        if let Some(c) = &self.cache {
            c.invalidate(key).await;
        }
    }

    /// The underlying session store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }
    /// The key ring that seals tickets (and login/logout state).
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }
    /// Session and login cookie settings.
    pub fn cookies(&self) -> &CookieSettings {
        &self.cookies
    }
    /// Session lifetimes, partition and cache settings.
    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }
    /// Current time from the clock, seconds since the Unix epoch.
    pub fn now(&self) -> i64 {
        self.clock.now_unix()
    }

    /// Resolves the request's session cookie. Store failures are errors (503), never
    /// "anonymous".
    pub async fn lookup(&self, headers: &HeaderMap) -> Result<Lookup, GatewayError> {
        let id = match self.cookies.session_id(headers) {
            None => return Ok(Lookup::Anonymous),
            Some(Err(())) => {
                tracing::info!("malformed session cookie; clearing it");
                return Ok(Lookup::Stale);
            }
            Some(Ok(id)) => id,
        };
        self.lookup_key(&id.store_key()).await
    }

    /// Like [`Sessions::lookup`], but always asks the store (for the SPA's session check,
    /// which must reflect a logout on another instance at once).
    pub async fn lookup_uncached(&self, headers: &HeaderMap) -> Result<Lookup, GatewayError> {
        match self.cookies.session_id(headers) {
            None => Ok(Lookup::Anonymous),
            Some(Err(())) => Ok(Lookup::Stale),
            Some(Ok(id)) => self.lookup_key_fresh(&id.store_key()).await,
        }
    }

    /// Evicts what the store reports as changed by other processes (SQLite: a session
    /// ended with `portcullis sessions end`). A failed poll empties the cache.
    async fn apply_polled_changes(&self, cache: &SessionCache) {
        if !self.store.polls_changes() {
            return;
        }
        // Boxed: keeps this rarely large future out of every lookup's (see `lookup_key`).
        Box::pin(self.poll_and_apply(cache)).await;
    }

    async fn poll_and_apply(&self, cache: &SessionCache) {
        let _serial = self.poll_lock.lock().await;
        match self.store.poll_changes().await {
            Ok(changes) => {
                for change in changes {
                    match change {
                        Invalidation::Key(key) => cache.invalidate(&key).await,
                        Invalidation::All => cache.invalidate_all(),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "session change log unreadable; not trusting the session cache");
                cache.invalidate_all();
            }
        }
    }

    /// Loads a session by store key, from the cache when possible. A cached session is
    /// served only while its record's expiry (idle or absolute) is in the future by this
    /// gateway's clock, and only after changes other processes made are applied.
    pub async fn lookup_key(&self, key: &str) -> Result<Lookup, GatewayError> {
        if let Some(cache) = &self.cache {
            self.apply_polled_changes(cache).await;
            if let Some(hit) = cache.get(key).await {
                if hit.record.partition != self.settings.partition {
                    return Ok(self.other_partition());
                }
                if hit.record.expires > self.now() {
                    metrics::counter!("portcullis_session_cache_total", "result" => "hit")
                        .increment(1);
                    tracing::Span::current().record("session.cache", "hit");
                    return Ok(Lookup::Active(hit));
                }
                Box::pin(cache.invalidate(key)).await;
            }
        }
        if self.cache.is_some() {
            metrics::counter!("portcullis_session_cache_total", "result" => "miss").increment(1);
        }
        tracing::Span::current().record(
            "session.cache",
            if self.cache.is_some() { "miss" } else { "off" },
        );
        // Boxed: a store read is the cold path behind the cache, and its future is large;
        // inline, every request's future (and each copy of it) would carry its size.
        Box::pin(self.lookup_key_fresh(key)).await
    }

    /// Loads a session from the store, bypassing (and refreshing) the cache.
    pub async fn lookup_key_fresh(&self, key: &str) -> Result<Lookup, GatewayError> {
        let before = self.cache.as_ref().map(SessionCache::epoch);
        let now = self.now();
        let Some(record) = self
            .store
            .get(key, now)
            .instrument(tracing::debug_span!(
                "session.store",
                store = self.store.kind()
            ))
            .await?
        else {
            self.forget(key).await;
            return Ok(Lookup::Stale);
        };
        if record.expires <= now {
            return Ok(Lookup::Stale);
        }
        if record.partition != self.settings.partition {
            return Ok(self.other_partition());
        }
        match self.open(&record) {
            Ok(ticket) => {
                let active = Arc::new(ActiveSession { record, ticket });
                if let (Some(c), Some(before)) = (&self.cache, before) {
                    c.fill(&active, before).await;
                }
                Ok(Lookup::Active(active))
            }
            Err(e) => {
                tracing::warn!(error = %e, "session ticket cannot be opened (unknown key or tampered); treating as logged out");
                Ok(Lookup::Stale)
            }
        }
    }

    /// A cookie that names another frontend's session (copied between cookie names, or a
    /// custom cookie name shared by mistake): never accepted here.
    fn other_partition(&self) -> Lookup {
        tracing::info!(
            partition = %self.settings.partition,
            "session cookie names a session of another frontend; refused"
        );
        Lookup::Stale
    }

    /// Opens a record's sealed ticket (associated data: `portcullis.ticket.v1:` + store key) and
    /// parses its JSON.
    ///
    /// # Errors
    ///
    /// A message (no secrets) if the blob does not open ([`SealError`](super::SealError): unknown
    /// key, tampered, malformed, or copied from another record) or the JSON does not parse.
    pub fn open(&self, record: &SessionRecord) -> Result<Ticket, String> {
        let plain = self
            .keys
            .open(&record.ticket, &aad(&record.key))
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&plain).map_err(|e| format!("ticket does not parse: {e}"))
    }

    /// Serializes `ticket` as JSON and seals it for the record with store key `key` (see
    /// [`Ticket`] for the format).
    ///
    /// # Errors
    ///
    /// [`GatewayError::Internal`] if serialization fails.
    pub fn seal(&self, key: &str, ticket: &Ticket) -> Result<Vec<u8>, GatewayError> {
        let plain = serde_json::to_vec(ticket)
            .map_err(|e| GatewayError::Internal(format!("ticket serialization: {e}")))?;
        Ok(self.keys.seal(&plain, &aad(key)))
    }

    /// Creates a session for a fresh login. An earlier session of the same `sub` + `sid`
    /// is replaced by the store, not duplicated.
    pub async fn create(&self, ticket: Ticket) -> Result<(SessionId, SessionRecord), GatewayError> {
        let id = SessionId::generate();
        let key = id.store_key();
        let now = self.now();
        let record = SessionRecord {
            ticket: self.seal(&key, &ticket)?,
            key,
            partition: self.settings.partition.clone(),
            sub: ticket.sub.clone(),
            sid: ticket.sid.clone(),
            created: now,
            renewed: now,
            expires: self.expiry(now, now),
            version: 1,
        };
        // Logging in again after losing the cookie: the store replaces the earlier session of
        // this `sub` + `sid`. Stores without change announcements (SQLite, memory) would not
        // tell this instance's cache, where the replaced session would keep answering API
        // calls for its old cookie: find it first and forget it after the replacement.
        let replaced = match &record.sid {
            Some(sid) => {
                let filter = SessionFilter {
                    partition: record.partition.clone(),
                    sub: Some(record.sub.clone()),
                    sid: Some(sid.clone()),
                };
                self.store.find(&filter, now).await?
            }
            None => Vec::new(),
        };
        self.store.create(&record).await?;
        for old in replaced {
            self.forget(&old.key).await;
        }
        Ok((id, record))
    }

    fn expiry(&self, created: i64, now: i64) -> i64 {
        let idle = now.saturating_add(secs(self.settings.idle_timeout));
        let absolute = created.saturating_add(secs(self.settings.absolute_timeout));
        idle.min(absolute)
    }

    /// Seconds until the session ends if nothing extends it.
    pub fn expires_in(&self, record: &SessionRecord) -> i64 {
        (record.expires - self.now()).max(0)
    }

    /// Extends the idle timeout (never past the absolute limit). Writes only when enough
    /// time has passed since the last renewal, to keep the store quiet.
    pub async fn slide(&self, session: &mut Arc<ActiveSession>) -> Result<(), GatewayError> {
        let now = self.now();
        let min_gap = (secs(self.settings.idle_timeout) / 20).clamp(1, 60);
        let new_expiry = self.expiry(session.record.created, now);
        if now - session.record.renewed < min_gap || new_expiry <= session.record.expires {
            return Ok(());
        }
        let mut updated = session.record.clone();
        updated.renewed = now;
        updated.expires = new_expiry;
        updated.version = session.record.version + 1;
        // Boxed: the write is the rare case (rate-limited above); inline, its future would
        // make every request's larger.
        Box::pin(async move {
            match self.store.update(&updated, session.record.version).await? {
                CasOutcome::Updated => {
                    Arc::make_mut(session).record = updated;
                    // The next read refills the cache from the store.
                    self.forget(&session.record.key).await;
                }
                // Someone else wrote (a refresh, another request sliding): their write wins;
                // the next request slides again if still needed.
                CasOutcome::Conflict | CasOutcome::Missing => {
                    self.forget(&session.record.key).await;
                }
            }
            Ok(())
        })
        .await
    }

    /// Replaces the ticket of a session (compare-and-set on the version).
    pub async fn write_ticket(
        &self,
        record: &SessionRecord,
        ticket: &Ticket,
    ) -> Result<CasOutcome, StoreError> {
        let sealed = self
            .seal(&record.key, ticket)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut updated = record.clone();
        updated.ticket = sealed;
        updated.version = record.version + 1;
        let outcome = self.store.update(&updated, record.version).await;
        self.forget(&record.key).await;
        outcome
    }

    /// Deletes the session with store key `key` and drops it from the in-process cache. Returns
    /// the deleted record, `None` if there was none.
    ///
    /// # Errors
    ///
    /// [`GatewayError`] when the store is unavailable (the cache entry is dropped anyway).
    pub async fn end(&self, key: &str) -> Result<Option<SessionRecord>, GatewayError> {
        let deleted = self.store.delete(key).await;
        self.forget(key).await;
        Ok(deleted?)
    }

    /// Ends every session matching `sub` and/or `sid` in this gateway's partition and
    /// returns their tickets (for refresh-token revocation).
    pub async fn end_matching(
        &self,
        sub: Option<&str>,
        sid: Option<&str>,
    ) -> Result<Vec<Ticket>, GatewayError> {
        let filter = SessionFilter {
            partition: self.settings.partition.clone(),
            sub: sub.map(str::to_owned),
            sid: sid.map(str::to_owned),
        };
        let removed = self.store.delete_matching(&filter).await?;
        for r in &removed {
            self.forget(&r.key).await;
        }
        Ok(removed.iter().filter_map(|r| self.open(r).ok()).collect())
    }

    /// Resolves once the session with store key `key` has ended: deleted (logout,
    /// back-channel logout, an operator, a failed refresh), replaced, or past its idle or
    /// absolute expiry. Looks again every [`TUNNEL_RECHECK`] and at the expiry, through the
    /// cache (which evicts ended sessions at once on this instance and on announcement from
    /// others). A store that cannot be reached does not end it (a hiccup must not cut a
    /// connection); the next look decides. For WebSocket tunnels.
    pub async fn wait_until_ended(self, key: String) {
        loop {
            let left = match self.lookup_key(&key).await {
                Ok(Lookup::Active(s)) => s.record.expires.saturating_sub(self.now()),
                Ok(Lookup::Anonymous | Lookup::Stale) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "session re-check failed; keeping the tunnel for now");
                    secs(TUNNEL_RECHECK)
                }
            };
            if left <= 0 {
                return;
            }
            let left = Duration::from_secs(u64::try_from(left).unwrap_or(u64::MAX));
            tokio::time::sleep(TUNNEL_RECHECK.min(left)).await;
        }
    }

    /// Runs `cleanup_expired` every `cleanup_interval` until the returned task is aborted.
    pub fn spawn_cleanup(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.settings.cleanup_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match this.store.cleanup_expired(this.now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "expired sessions removed"),
                    Err(e) => tracing::warn!(error = %e, "session cleanup failed; will retry"),
                }
            }
        })
    }
}

fn aad(key: &str) -> Vec<u8> {
    let mut aad = TICKET_AAD.to_vec();
    aad.extend_from_slice(key.as_bytes());
    aad
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::cookie::SameSite;
    use crate::session::{Claim, Key};
    use portcullis_session::{MemoryStore, SqliteStore};
    use portcullis_token::ManualClock;

    const T0: i64 = 1_700_000_000;

    fn ticket(sub: &str) -> Ticket {
        let tokens: portcullis_token::UserTokens = serde_json::from_value(serde_json::json!({
            "access_token": {"value": "at", "token_type": "Bearer", "expires_at": null, "scope": null},
            "refresh_token": null, "id_token": null, "by_resource": {}
        }))
        .unwrap();
        Ticket {
            sub: sub.into(),
            sid: Some(format!("sid-{sub}")),
            claims: vec![Claim {
                kind: "sub".into(),
                value: sub.into(),
            }],
            session_state: None,
            tokens,
        }
    }

    fn sessions(
        store: Arc<dyn SessionStore>,
        clock: &ManualClock,
        settings: SessionSettings,
    ) -> Sessions {
        let keys = Arc::new(KeyRing::new(vec![Key::new("k1", &[7u8; 32]).unwrap()]).unwrap());
        let url = url::Url::parse("http://127.0.0.1:8080").unwrap();
        let cookies = CookieSettings::for_public_url(&url, None, SameSite::Lax).unwrap();
        Sessions::new(store, keys, Arc::new(clock.clone()), settings, cookies)
    }

    async fn is_active(s: &Sessions, key: &str) -> bool {
        matches!(s.lookup_key(key).await.unwrap(), Lookup::Active(_))
    }

    /// The cache holds entries for `cache_ttl` of wall time; the session's own expiry (idle
    /// or absolute, by the gateway's clock) must end it earlier, on every hit.
    #[tokio::test]
    async fn cached_session_is_not_served_past_expiry() {
        for (idle, absolute) in [(60, 3600), (3600, 60)] {
            let clock = ManualClock::new(T0);
            let settings = SessionSettings {
                idle_timeout: Duration::from_secs(idle),
                absolute_timeout: Duration::from_secs(absolute),
                cache_ttl: Duration::from_secs(3600),
                ..SessionSettings::default()
            };
            let s = sessions(Arc::new(MemoryStore::new()), &clock, settings);
            let (_, record) = s.create(ticket("alice")).await.unwrap();
            assert_eq!(record.expires, T0 + 60);
            assert!(is_active(&s, &record.key).await, "fills the cache");
            clock.set(T0 + 59);
            assert!(is_active(&s, &record.key).await, "served from the cache");
            clock.set(T0 + 60);
            assert!(
                !is_active(&s, &record.key).await,
                "idle {idle} s / absolute {absolute} s: served at its expiry"
            );
            clock.set(T0 + 61);
            assert!(!is_active(&s, &record.key).await, "served past its expiry");
        }
    }

    /// `portcullis sessions end` is another process on the same SQLite file: the next
    /// lookup after its delete must not come from the cache, whenever it happens.
    #[tokio::test]
    async fn sqlite_end_by_another_process_takes_effect_on_next_lookup() {
        let dir = std::env::temp_dir().join(format!("portcullis-mgr-{}", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}", dir.join("sessions.db").display());
        let gateway_store = Arc::new(SqliteStore::connect(&url).await.unwrap());
        let cli_store = SqliteStore::connect(&url).await.unwrap();
        let clock = ManualClock::new(wall());
        let s = sessions(gateway_store, &clock, SessionSettings::default());
        let (_, bob) = s.create(ticket("bob")).await.unwrap();
        for round in 0..2 {
            let (_, alice) = s.create(ticket("alice")).await.unwrap();
            for _ in 0..3 {
                assert!(is_active(&s, &alice.key).await);
                assert!(is_active(&s, &bob.key).await);
            }
            let filter = SessionFilter {
                partition: "default".into(),
                sub: Some("alice".into()),
                sid: None,
            };
            assert_eq!(cli_store.delete_matching(&filter).await.unwrap().len(), 1);
            assert!(
                !is_active(&s, &alice.key).await,
                "round {round}: ended elsewhere, still served"
            );
            assert!(
                is_active(&s, &bob.key).await,
                "round {round}: bob untouched"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The SQLite trigger compares expiry with the real clock: tests with SQLite use it.
    pub(super) fn wall() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .try_into()
            .unwrap()
    }
}
