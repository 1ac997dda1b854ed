//! A map of per-key async mutexes that removes a key's entry as soon as nobody holds or waits
//! for it, so the map never grows beyond the number of keys in flight.
//!
//! Used for in-process single-flight: the first caller for a key does the work while holding
//! the lock; later callers wait on the same mutex and, once inside, re-read shared state (the
//! store) to find the first caller's result instead of repeating the work.
//!
//! Cancellation-safe: a waiter whose future is dropped (the client went away) still cleans up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Debug, Default)]
pub(crate) struct FlightMap {
    entries: Mutex<HashMap<String, Slot>>,
}

#[derive(Debug, Default)]
struct Slot {
    mutex: Arc<AsyncMutex<()>>,
    /// Holders plus waiters. Counted explicitly rather than through `Arc::strong_count`, so the
    /// clean-up does not depend on the order in which a cancelled future drops its parts.
    users: usize,
}

/// Holding this means holding the key's lock. The mutex guard drops before the user count.
pub(crate) struct FlightGuard<'a> {
    _guard: OwnedMutexGuard<()>,
    _user: User<'a>,
}

/// One counted user of a key; dropping the last one removes the key.
struct User<'a> {
    map: &'a FlightMap,
    key: String,
}

impl Drop for User<'_> {
    fn drop(&mut self) {
        let mut entries = self.map.lock_entries();
        if let Some(slot) = entries.get_mut(&self.key) {
            slot.users = slot.users.saturating_sub(1);
            if slot.users == 0 {
                entries.remove(&self.key);
            }
        }
    }
}

impl FlightMap {
    fn lock_entries(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding this lock cannot leave the map inconsistent (single insert,
        // update or remove), so a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wait for and take the lock of `key`.
    pub(crate) async fn lock(&self, key: &str) -> FlightGuard<'_> {
        let mutex = {
            let mut entries = self.lock_entries();
            let slot = entries.entry(key.to_owned()).or_default();
            slot.users += 1;
            slot.mutex.clone()
        };
        // Registered before the await: if this future is dropped while waiting, `user` still
        // decrements the count.
        let user = User {
            map: self,
            key: key.to_owned(),
        };
        let guard = mutex.lock_owned().await;
        FlightGuard {
            _guard: guard,
            _user: user,
        }
    }

    /// Keys currently held or waited for.
    pub(crate) fn len(&self) -> usize {
        self.lock_entries().len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_is_serialized_and_the_map_is_emptied_afterwards() {
        let map = Arc::new(FlightMap::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let max_inside = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (map, inside, max_inside) = (map.clone(), inside.clone(), max_inside.clone());
                tokio::spawn(async move {
                    let _g = map.lock("session-1").await;
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max_inside.fetch_max(n, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max_inside.load(Ordering::SeqCst), 1);
        assert_eq!(map.len(), 0);
    }

    #[tokio::test]
    async fn different_keys_do_not_block_each_other() {
        let map = FlightMap::default();
        let _a = map.lock("a").await;
        let b = tokio::time::timeout(Duration::from_secs(5), map.lock("b")).await;
        assert!(b.is_ok());
        assert_eq!(map.len(), 2);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_leak_its_entry() {
        let map = FlightMap::default();
        let held = map.lock("k").await;
        // A waiter that gives up (timeout = the client disconnected).
        let waited = tokio::time::timeout(Duration::from_millis(10), map.lock("k")).await;
        assert!(waited.is_err());
        drop(held);
        assert_eq!(map.len(), 0);
    }
}
