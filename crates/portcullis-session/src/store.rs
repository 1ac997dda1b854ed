//! The storage contract for server-side sessions.
//!
//! A [`SessionStore`] keeps [`SessionRecord`]s: opaque, encrypted tickets plus the few
//! plaintext columns needed to find a session again (partition, `sub`, `sid`, timestamps).
//! The store never sees a token in the clear and never sees the cookie value: the record key
//! is a SHA-256 digest of the session id the browser holds.
//!
//! Contract (checked by the shared contract test suite for every implementation):
//! - `get` returns `None` for unknown *and* for expired records (`expires <= now`).
//! - `create` inserts; a record with the same `partition` + `sub` + `sid` (when `sid` is
//!   `Some`) replaces the old one instead of duplicating it; an insert of an existing key
//!   overwrites it. Neither is an error.
//! - `update` is a compare-and-set on `version`: it writes only if the stored version equals
//!   `expected_version` and reports [`CasOutcome::Conflict`] otherwise (or `Missing`).
//! - `find` / `delete_matching` always act inside one partition; `delete_matching` returns
//!   the deleted records so their refresh tokens can be revoked.
//! - `cleanup_expired` removes records whose `expires <= now` and returns how many.
//! - An unreachable backend is an `Err(StoreError::Unavailable)`, never `Ok(None)`: the
//!   gateway answers 503 and keeps the cookie instead of logging the user out.
//!
//! Details every implementation follows (also pinned by the contract suite):
//! - `update` writes `renewed`, `expires`, `version` and `ticket`. The identity columns
//!   (`partition`, `sub`, `sid`, `created`) are fixed at `create`; a different value in the
//!   record passed to `update` is ignored. `update` has no clock, so it does not look at
//!   `expires`: the caller read the record with `get` just before. (Redis drops expired
//!   records by itself, so there an update of an expired record reports `Missing`.)
//!   A record that does not carry `expected_version + 1` is refused with
//!   [`StoreError::Config`] before the store is asked.
//! - `delete_matching` deletes expired records too (they are garbage anyway) and returns them.
//! - `cleanup_expired` counts removed sessions. Redis expires records by itself; there the
//!   number is how many stale index entries were pruned, which may be `0`.
//! - `claim_once` and the leases read the wall clock (leases on PostgreSQL and Redis use the
//!   server's clock, so instances with skewed clocks agree on them). A claim whose `expires`
//!   has already passed is not stored and returns `true`: the caller's own expiry check
//!   refuses such an id anyway.

use async_trait::async_trait;
use std::time::Duration;
use tokio::sync::broadcast;

/// One stored session.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Store key: base64url(SHA-256(session id)). Never the cookie value itself.
    pub key: String,
    /// The frontend (application) this session belongs to.
    pub partition: String,
    /// Subject (`sub` claim) of the user.
    pub sub: String,
    /// IdP session id (`sid` claim), if any.
    pub sid: Option<String>,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds of the last sliding renewal.
    pub renewed: i64,
    /// Unix seconds after which the session is dead (min of idle and absolute limit).
    pub expires: i64,
    /// Incremented by every successful `update`; starts at 1.
    pub version: u64,
    /// AEAD-encrypted ticket (claims and tokens). Opaque to the store.
    pub ticket: Vec<u8>,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("partition", &self.partition)
            .field("sub", &self.sub)
            .field("sid", &self.sid)
            .field("created", &self.created)
            .field("renewed", &self.renewed)
            .field("expires", &self.expires)
            .field("version", &self.version)
            .field("ticket_len", &self.ticket.len())
            .finish_non_exhaustive()
    }
}

/// Which sessions a look-up or delete addresses. At least one of `sub` / `sid` is set
/// (an empty filter is refused with [`StoreError::InvalidFilter`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// The partition (frontend) to search; filters never cross partitions.
    pub partition: String,
    /// Match sessions of this subject, if set.
    pub sub: Option<String>,
    /// Match sessions with this IdP session id, if set (with `sub` too, both must match).
    pub sid: Option<String>,
}

/// Result of a compare-and-set update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// The record was written; the stored version is now `record.version`.
    Updated,
    /// Someone else wrote first; re-read and retry.
    Conflict,
    /// The record is gone (deleted or expired).
    Missing,
}

#[derive(Debug, thiserror::Error)]
/// Why a store operation failed.
pub enum StoreError {
    /// The backend cannot be reached or answered with an error. Transient: 503.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// A filter with neither `sub` nor `sid`.
    #[error("a session filter needs sub or sid")]
    InvalidFilter,
    /// Stored data that cannot be read back (schema drift, corruption).
    #[error("corrupt session record: {0}")]
    Corrupt(String),
    /// The store cannot be set up as asked (unknown URL scheme, malformed URL, a record the
    /// contract refuses). Not transient: retrying does not help.
    #[error("session store configuration: {0}")]
    Config(String),
}

/// A change another instance (or this one) made to a shared store, for in-process caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The record with this key was updated, replaced or deleted: drop it from the cache.
    Key(String),
    /// Notifications may have been lost (the subscription was (re)established): drop the
    /// whole cache. Also sent once when a subscription starts.
    All,
}

#[async_trait]
/// The storage contract every backend implements (see the crate docs). Times are Unix
/// seconds; `now` parameters come from the caller's clock so tests can control expiry.
/// Every method can fail with [`StoreError::Unavailable`] (transient: answer 503, keep the
/// cookie); a store that is down is never reported as "no session".
pub trait SessionStore: Send + Sync + 'static {
    /// A short name for logs and metrics ("memory", "sqlite", ...).
    fn kind(&self) -> &'static str;

    /// The unexpired session with store key `key` at `now` (`expires > now`), or `None`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the backend fails; [`StoreError::Corrupt`] when the
    /// record cannot be read back.
    async fn get(&self, key: &str, now: i64) -> Result<Option<SessionRecord>, StoreError>;

    /// Inserts a new session. A session of the same partition, `sub` and `sid` is replaced
    /// (deleted), so a repeated login never fails on a duplicate.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the backend fails; [`StoreError::Config`] for a record
    /// the contract refuses.
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError>;

    /// Compare-and-set: writes `record` (whose `version` must be `expected_version + 1`)
    /// only if the stored version equals `expected_version`.
    async fn update(
        &self,
        record: &SessionRecord,
        expected_version: u64,
    ) -> Result<CasOutcome, StoreError>;

    /// Deletes one session; `Ok(None)` if it did not exist. Returns the deleted record.
    async fn delete(&self, key: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// The unexpired sessions (at `now`) in the filter's partition matching its `sub` and/or
    /// `sid`.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidFilter`] if neither `sub` nor `sid` is set;
    /// [`StoreError::Unavailable`] when the backend fails.
    async fn find(
        &self,
        filter: &SessionFilter,
        now: i64,
    ) -> Result<Vec<SessionRecord>, StoreError>;

    /// Deletes every session matching the filter and returns the deleted
    /// records. Used by back-channel logout.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidFilter`] if neither `sub` nor `sid` is set;
    /// [`StoreError::Unavailable`] when the backend fails.
    async fn delete_matching(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError>;

    /// Deletes sessions with `expires <= now`; returns how many were removed. Backends may
    /// also purge expired replay and lease records here.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the backend fails.
    async fn cleanup_expired(&self, now: i64) -> Result<u64, StoreError>;

    /// Records `id` as seen until `expires` (unix seconds). Returns `true` the first time,
    /// `false` if it was already recorded and not yet expired. Used for back-channel logout
    /// `jti` replay detection, shared by every instance on a shared store.
    async fn claim_once(&self, id: &str, expires: i64) -> Result<bool, StoreError>;

    /// Tries to take a named lease (cross-instance refresh single-flight) for `ttl`.
    /// Returns `true` if `holder` now owns it (also when it already did: that renews it).
    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Releases a lease if `holder` still owns it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Whether [`SessionStore::poll_changes`] can report anything; callers skip the call
    /// otherwise. `false` by default.
    fn polls_changes(&self) -> bool {
        false
    }

    /// Changes that no subscription announces, made since the previous call, by this or
    /// another process sharing the store (SQLite: `portcullis sessions end` runs in its own
    /// process). An in-process cache calls this before serving a hit, so it must be cheap
    /// when nothing changed; calls are meant for one consumer per store (they advance one
    /// cursor). Empty by default.
    ///
    /// Errors: [`StoreError::Unavailable`] if the change log cannot be read; the caller must
    /// then not trust its cache.
    async fn poll_changes(&self) -> Result<Vec<Invalidation>, StoreError> {
        Ok(Vec::new())
    }

    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Changes made through *any* instance sharing this store, for invalidating an
    /// in-process cache. `None` for stores that live in one process (memory, SQLite), where
    /// there is nothing to hear about. A receiver that lags (`RecvError::Lagged`) must treat
    /// it like [`Invalidation::All`].
    fn subscribe_invalidations(&self) -> Option<broadcast::Receiver<Invalidation>> {
        None
    }
}
