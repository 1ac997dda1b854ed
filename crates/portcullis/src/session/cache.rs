//! The in-process session cache.
//!
//! Serves recently used sessions without a store round-trip. Entries live at most the
//! configured TTL (the staleness bound when an invalidation is lost) and are dropped on every
//! local write and every invalidation the store announces.
//!
//! A read that misses fetches from the store and fills the cache. If an invalidation lands
//! while that fetch is in flight, the fetched record may already be stale, so fills are
//! guarded by an epoch: every invalidation bumps it, and a fill whose epoch changed since the
//! fetch began is dropped. Without this, a back-channel logout racing a cache fill could
//! resurrect a deleted session for a whole TTL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use super::manager::ActiveSession;

#[derive(Clone)]
pub(crate) struct SessionCache {
    entries: Cache<String, Arc<ActiveSession>>,
    epoch: Arc<AtomicU64>,
}

/// Taken before a store read; proves which invalidations the read may have missed.
#[derive(Clone, Copy)]
pub(crate) struct Epoch(u64);

impl SessionCache {
    pub(crate) fn new(ttl: Duration, capacity: u64) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Option<Arc<ActiveSession>> {
        self.entries.get(key).await
    }

    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::SeqCst))
    }

    /// Fills the cache unless an invalidation happened since `before` was taken.
    pub(crate) async fn fill(&self, session: &Arc<ActiveSession>, before: Epoch) {
        if self.epoch.load(Ordering::SeqCst) == before.0 {
            self.entries
                .insert(session.record.key.clone(), session.clone())
                .await;
            // An invalidation may have slipped in between the check and the insert.
            if self.epoch.load(Ordering::SeqCst) != before.0 {
                self.entries.invalidate(&session.record.key).await;
            }
        }
    }

    pub(crate) async fn invalidate(&self, key: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(key).await;
    }

    pub(crate) fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Claim, Ticket};
    use portcullis_session::SessionRecord;

    fn session(key: &str) -> Arc<ActiveSession> {
        let tokens: portcullis_token::UserTokens = serde_json::from_value(serde_json::json!({
            "access_token": {"value": "at", "token_type": "Bearer", "expires_at": null, "scope": null},
            "refresh_token": null, "id_token": null, "by_resource": {}
        }))
        .unwrap();
        Arc::new(ActiveSession {
            record: SessionRecord {
                key: key.into(),
                partition: "p".into(),
                sub: "alice".into(),
                sid: None,
                created: 0,
                renewed: 0,
                expires: i64::MAX,
                version: 1,
                ticket: vec![],
            },
            ticket: Ticket {
                sub: "alice".into(),
                sid: None,
                claims: vec![Claim {
                    kind: "sub".into(),
                    value: "alice".into(),
                }],
                session_state: None,
                tokens,
            },
        })
    }

    #[tokio::test]
    async fn a_fill_racing_an_invalidation_is_dropped() {
        let cache = SessionCache::new(Duration::from_secs(60), 10);
        let before = cache.epoch();
        // The store read is in flight when a back-channel logout invalidates the key.
        cache.invalidate("k").await;
        cache.fill(&session("k"), before).await;
        assert!(cache.get("k").await.is_none(), "stale record resurrected");
        // A fill that saw no invalidation is kept.
        let before = cache.epoch();
        cache.fill(&session("k"), before).await;
        assert!(cache.get("k").await.is_some());
        cache.invalidate_all();
        cache.entries.run_pending_tasks().await;
        assert!(cache.get("k").await.is_none());
    }
}
