//! Where user tokens live between requests: the [`UserTokenStore`] trait, and
//! [`InMemoryUserTokenStore`] for single-instance services and tests.
//!
//! The gateway implements the trait over its session store (tokens inside the encrypted
//! session ticket). The contract the [`UserTokenManager`](crate::UserTokenManager) relies on:
//!
//! - `load` returns the tokens with a version; `compare_and_set` writes only if the version is
//!   unchanged. Versions may also change for reasons unrelated to tokens (sliding expiry);
//!   the manager re-reads and retries in that case.
//! - `acquire_lease` is a short exclusive lease per session for refreshes across instances.
//!   **Calling it again with the same `holder` while the lease is held must succeed and extend
//!   it** (the manager renews a lease that way while an IdP call is in flight). With a single
//!   instance the default (always granted) is fine: the manager already single-flights in
//!   process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::{SharedClock, TokenError, UserTokens};

/// Storage of user tokens per session, with compare-and-set and an optional refresh lease.
#[async_trait]
pub trait UserTokenStore: Send + Sync {
    /// Current tokens of a session and an opaque version for compare-and-set. `Ok(None)` = session gone.
    async fn load(&self, session: &str) -> Result<Option<(UserTokens, u64)>, TokenError>;

    /// Store new tokens iff the version is still `expected_version`. `Ok(false)` = someone else wrote first.
    async fn compare_and_set(
        &self,
        session: &str,
        expected_version: u64,
        tokens: &UserTokens,
    ) -> Result<bool, TokenError>;

    /// Cross-instance refresh lease: `Ok(true)` if `holder` now holds the lease of `session`
    /// for `ttl` (also when it already held it: that renews it). Default: always granted.
    async fn acquire_lease(
        &self,
        _session: &str,
        _holder: &str,
        _ttl: Duration,
    ) -> Result<bool, TokenError> {
        Ok(true)
    }

    /// Give the lease up if `holder` holds it.
    async fn release_lease(&self, _session: &str, _holder: &str) -> Result<(), TokenError> {
        Ok(())
    }
}

/// An in-process [`UserTokenStore`] with real compare-and-set and leases (lease expiry uses
/// the injected clock). Several managers sharing one instance behave like several gateway
/// instances sharing one store.
#[derive(Debug)]
pub struct InMemoryUserTokenStore {
    clock: SharedClock,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, (UserTokens, u64)>,
    leases: HashMap<String, (String, i64)>,
    next_version: u64,
}

impl InMemoryUserTokenStore {
    /// An empty store; `clock` (Unix seconds) times refresh leases.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section is a single map operation; a poisoned lock holds consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Create or replace a session's tokens (e.g. after the code exchange).
    pub fn insert(&self, session: &str, tokens: UserTokens) {
        let mut inner = self.inner();
        inner.next_version += 1;
        let version = inner.next_version;
        inner.sessions.insert(session.to_owned(), (tokens, version));
    }

    /// Current tokens of a session.
    pub fn get(&self, session: &str) -> Option<UserTokens> {
        self.inner().sessions.get(session).map(|(t, _)| t.clone())
    }

    /// Delete a session.
    pub fn remove(&self, session: &str) -> Option<UserTokens> {
        let mut inner = self.inner();
        inner.leases.remove(session);
        inner.sessions.remove(session).map(|(t, _)| t)
    }

    /// Bump a session's version without changing its tokens, as an unrelated session write would.
    pub fn touch(&self, session: &str) {
        let mut inner = self.inner();
        inner.next_version += 1;
        let version = inner.next_version;
        if let Some(entry) = inner.sessions.get_mut(session) {
            entry.1 = version;
        }
    }

    /// Number of stored sessions.
    pub fn len(&self) -> usize {
        self.inner().sessions.len()
    }

    /// True when no session's tokens are stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl UserTokenStore for InMemoryUserTokenStore {
    async fn load(&self, session: &str) -> Result<Option<(UserTokens, u64)>, TokenError> {
        Ok(self.inner().sessions.get(session).cloned())
    }

    async fn compare_and_set(
        &self,
        session: &str,
        expected_version: u64,
        tokens: &UserTokens,
    ) -> Result<bool, TokenError> {
        let mut inner = self.inner();
        inner.next_version += 1;
        let version = inner.next_version;
        match inner.sessions.get_mut(session) {
            Some(entry) if entry.1 == expected_version => {
                *entry = (tokens.clone(), version);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn acquire_lease(
        &self,
        session: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, TokenError> {
        let now = self.clock.now_unix();
        let until = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1));
        let mut inner = self.inner();
        match inner.leases.get(session) {
            Some((other, expires)) if other != holder && *expires > now => Ok(false),
            _ => {
                inner
                    .leases
                    .insert(session.to_owned(), (holder.to_owned(), until));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, session: &str, holder: &str) -> Result<(), TokenError> {
        let mut inner = self.inner();
        if inner.leases.get(session).is_some_and(|(h, _)| h == holder) {
            inner.leases.remove(session);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::{AccessToken, ManualClock, Secret, TokenType};
    use std::sync::Arc;

    fn tokens(v: &str) -> UserTokens {
        UserTokens {
            access_token: AccessToken {
                value: Secret::new(v),
                token_type: TokenType::Bearer,
                expires_at: None,
                scope: None,
                issued_at: None,
            },
            refresh_token: None,
            id_token: None,
            by_resource: Default::default(),
            dpop_key: None,
        }
    }

    #[tokio::test]
    async fn compare_and_set_only_writes_the_expected_version() {
        let store = InMemoryUserTokenStore::new(Arc::new(ManualClock::new(0)));
        store.insert("s", tokens("a"));
        let (_, v) = store.load("s").await.unwrap().unwrap();
        assert!(store.compare_and_set("s", v, &tokens("b")).await.unwrap());
        assert!(!store.compare_and_set("s", v, &tokens("c")).await.unwrap());
        assert_eq!(store.get("s").unwrap(), tokens("b"));
        assert!(!store
            .compare_and_set("gone", 0, &tokens("c"))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn lease_is_exclusive_renewable_and_expires_with_the_clock() {
        let clock = ManualClock::new(100);
        let store = InMemoryUserTokenStore::new(Arc::new(clock.clone()));
        let ttl = Duration::from_secs(15);
        assert!(store.acquire_lease("s", "a", ttl).await.unwrap());
        assert!(!store.acquire_lease("s", "b", ttl).await.unwrap());
        clock.advance(10);
        assert!(store.acquire_lease("s", "a", ttl).await.unwrap()); // renew: now until 125
        clock.advance(10);
        assert!(!store.acquire_lease("s", "b", ttl).await.unwrap());
        clock.advance(5);
        assert!(store.acquire_lease("s", "b", ttl).await.unwrap()); // expired
        store.release_lease("s", "a").await.unwrap(); // not a's any more: no effect
        assert!(!store.acquire_lease("s", "a", ttl).await.unwrap());
        store.release_lease("s", "b").await.unwrap();
        assert!(store.acquire_lease("s", "a", ttl).await.unwrap());
    }
}
