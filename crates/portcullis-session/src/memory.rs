//! [`MemoryStore`]: the reference implementation of the [`SessionStore`] contract.
//!
//! Everything lives in one `HashMap` behind a mutex, with secondary indexes by
//! (partition, sub), (partition, sid) and (partition, sub, sid). It is what the other stores
//! are compared against, and what a single-instance gateway can use when losing every session
//! on restart is acceptable.
//!
//! Caveat: one process only. Two gateway instances with a memory store each do not see each
//! other's sessions, claims or leases.

use crate::store::{CasOutcome, SessionFilter, SessionRecord, SessionStore, StoreError};
use crate::util::{check_next_version, now_secs};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// In-process session store.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: keys identify sessions.
        f.debug_struct("MemoryStore")
            .field("sessions", &self.lock().records.len())
            .finish_non_exhaustive()
    }
}

type PartSub = (String, String);
type PartSid = (String, String);
type PartSubSid = (String, String, String);

#[derive(Default)]
struct Inner {
    records: HashMap<String, SessionRecord>,
    by_sub: HashMap<PartSub, HashSet<String>>,
    by_sid: HashMap<PartSid, HashSet<String>>,
    by_sub_sid: HashMap<PartSubSid, String>,
    /// id -> expires (unix seconds)
    claims: HashMap<String, i64>,
    /// name -> (holder, until)
    leases: HashMap<String, (String, Instant)>,
}

impl Inner {
    fn insert(&mut self, record: SessionRecord) {
        let key = record.key.clone();
        self.by_sub
            .entry((record.partition.clone(), record.sub.clone()))
            .or_default()
            .insert(key.clone());
        if let Some(sid) = &record.sid {
            self.by_sid
                .entry((record.partition.clone(), sid.clone()))
                .or_default()
                .insert(key.clone());
            self.by_sub_sid.insert(
                (record.partition.clone(), record.sub.clone(), sid.clone()),
                key.clone(),
            );
        }
        self.records.insert(key, record);
    }

    fn remove(&mut self, key: &str) -> Option<SessionRecord> {
        let record = self.records.remove(key)?;
        let ps = (record.partition.clone(), record.sub.clone());
        if let Some(set) = self.by_sub.get_mut(&ps) {
            set.remove(key);
            if set.is_empty() {
                self.by_sub.remove(&ps);
            }
        }
        if let Some(sid) = &record.sid {
            let pd = (record.partition.clone(), sid.clone());
            if let Some(set) = self.by_sid.get_mut(&pd) {
                set.remove(key);
                if set.is_empty() {
                    self.by_sid.remove(&pd);
                }
            }
            let psd = (record.partition.clone(), record.sub.clone(), sid.clone());
            if self.by_sub_sid.get(&psd).map(String::as_str) == Some(key) {
                self.by_sub_sid.remove(&psd);
            }
        }
        Some(record)
    }

    fn matching_keys(&self, filter: &SessionFilter) -> Result<Vec<String>, StoreError> {
        let p = filter.partition.clone();
        let keys: Vec<String> = match (&filter.sub, &filter.sid) {
            (None, None) => return Err(StoreError::InvalidFilter),
            (Some(sub), Some(sid)) => self
                .by_sub_sid
                .get(&(p, sub.clone(), sid.clone()))
                .cloned()
                .into_iter()
                .collect(),
            (Some(sub), None) => self
                .by_sub
                .get(&(p, sub.clone()))
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            (None, Some(sid)) => self
                .by_sid
                .get(&(p, sid.clone()))
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
        };
        Ok(keys)
    }
}

impl MemoryStore {
    /// An empty in-process store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No operation panics half-way through an update of `Inner`, so a poisoned lock
        // still guards consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &str, now: i64) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .lock()
            .records
            .get(key)
            .filter(|r| r.expires > now)
            .cloned())
    }

    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.remove(&record.key);
        if let Some(sid) = &record.sid {
            let psd = (record.partition.clone(), record.sub.clone(), sid.clone());
            if let Some(old) = inner.by_sub_sid.get(&psd).cloned() {
                inner.remove(&old);
            }
        }
        inner.insert(record.clone());
        Ok(())
    }

    async fn update(
        &self,
        record: &SessionRecord,
        expected_version: u64,
    ) -> Result<CasOutcome, StoreError> {
        check_next_version(record, expected_version)?;
        let mut inner = self.lock();
        let Some(stored) = inner.records.get_mut(&record.key) else {
            return Ok(CasOutcome::Missing);
        };
        if stored.version != expected_version {
            return Ok(CasOutcome::Conflict);
        }
        stored.renewed = record.renewed;
        stored.expires = record.expires;
        stored.version = record.version;
        stored.ticket.clone_from(&record.ticket);
        Ok(CasOutcome::Updated)
    }

    async fn delete(&self, key: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.lock().remove(key))
    }

    async fn find(
        &self,
        filter: &SessionFilter,
        now: i64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let inner = self.lock();
        let keys = inner.matching_keys(filter)?;
        Ok(keys
            .iter()
            .filter_map(|k| inner.records.get(k))
            .filter(|r| r.expires > now)
            .cloned()
            .collect())
    }

    async fn delete_matching(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut inner = self.lock();
        let keys = inner.matching_keys(filter)?;
        Ok(keys.iter().filter_map(|k| inner.remove(k)).collect())
    }

    async fn cleanup_expired(&self, now: i64) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let expired: Vec<String> = inner
            .records
            .values()
            .filter(|r| r.expires <= now)
            .map(|r| r.key.clone())
            .collect();
        for key in &expired {
            inner.remove(key);
        }
        let wall = now_secs();
        inner.claims.retain(|_, expires| *expires > wall);
        let instant = Instant::now();
        inner.leases.retain(|_, (_, until)| *until > instant);
        Ok(expired.len() as u64)
    }

    async fn claim_once(&self, id: &str, expires: i64) -> Result<bool, StoreError> {
        let now = now_secs();
        if expires <= now {
            // Already expired: nothing to remember, and a replay of it is refused by the
            // caller's own expiry check.
            return Ok(true);
        }
        let mut inner = self.lock();
        match inner.claims.get(id) {
            Some(until) if *until > now => Ok(false),
            _ => {
                inner.claims.insert(id.to_owned(), expires);
                Ok(true)
            }
        }
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.leases.get(name) {
            Some((current, until)) if *until > now && current != holder => Ok(false),
            _ => {
                inner
                    .leases
                    .insert(name.to_owned(), (holder.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.leases.get(name).is_some_and(|(h, _)| h == holder) {
            inner.leases.remove(name);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
