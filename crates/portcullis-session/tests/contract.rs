//! The `SessionStore` contract, run against every backend.
//!
//! Each test gets a fresh store and unique partitions, so tests run in parallel against a
//! shared PostgreSQL, Redis and Redis Cluster, which must be reachable (see `common`): to run
//! without them, filter these tests out (`scripts/test.sh` does for
//! `PORTCULLIS_SKIP_EXTERNAL_STORES=1`), so they show as skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{now, record, sleep_past, uid, Backend};
use portcullis_session::{CasOutcome, SessionFilter, SessionRecord, StoreError};
use std::collections::BTreeSet;
use std::time::Duration;

/// Runs every contract test against one backend.
macro_rules! backend {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if let Some(b) = crate::common::$backend().await {
                        crate::$test(b).await;
                    }
                }
            )*
        }
    };
}

macro_rules! contract {
    ($($backend:ident),*) => {
        $(
            backend!($backend:
                get_unknown_or_expired_is_none,
                create_then_get_round_trips,
                create_same_sub_and_sid_replaces_old_session,
                create_same_sub_other_sid_keeps_both,
                create_existing_key_overwrites,
                concurrent_creates_of_same_sub_and_sid_leave_one_session,
                partitions_are_isolated,
                update_is_compare_and_set,
                update_keeps_identity_and_extends_expiry,
                concurrent_updates_exactly_one_wins,
                delete_returns_record,
                concurrent_deletes_exactly_one_gets_record,
                find_and_delete_matching_by_sub_sid_and_both,
                empty_filter_is_invalid,
                cleanup_removes_only_expired,
                get_during_cleanup_never_errors,
                claim_once_until_expiry,
                lease_holder_renew_release_expire,
                ping_succeeds,
            );
        )*
    };
}

contract!(memory, sqlite, postgres, redis, redis_cluster);

fn filter(partition: &str, sub: Option<&str>, sid: Option<&str>) -> SessionFilter {
    SessionFilter {
        partition: partition.to_owned(),
        sub: sub.map(str::to_owned),
        sid: sid.map(str::to_owned),
    }
}

fn keys(records: &[SessionRecord]) -> BTreeSet<String> {
    records.iter().map(|r| r.key.clone()).collect()
}

fn set<const N: usize>(items: [&SessionRecord; N]) -> BTreeSet<String> {
    items.iter().map(|r| r.key.clone()).collect()
}

async fn get_unknown_or_expired_is_none(b: Backend) {
    let s = &b.store;
    let p = uid();
    assert_eq!(s.get(&uid(), now()).await.unwrap(), None);

    let live = record(&p, "alice", Some("sid-1"));
    s.create(&live).await.unwrap();
    assert!(s.get(&live.key, now()).await.unwrap().is_some());
    // Expired from the caller's point of view.
    assert_eq!(s.get(&live.key, live.expires).await.unwrap(), None);
    assert_eq!(s.get(&live.key, live.expires + 10).await.unwrap(), None);

    let mut dead = record(&p, "bob", None);
    dead.expires = now() - 10;
    s.create(&dead).await.unwrap();
    assert_eq!(s.get(&dead.key, now()).await.unwrap(), None);
}

async fn create_then_get_round_trips(b: Backend) {
    let s = &b.store;
    let p = uid();
    for sid in [Some("sid:with{odd}%chars"), None] {
        let r = record(&p, "user:with{braces}", sid);
        s.create(&r).await.unwrap();
        assert_eq!(s.get(&r.key, now()).await.unwrap(), Some(r));
    }
}

async fn create_same_sub_and_sid_replaces_old_session(b: Backend) {
    let s = &b.store;
    let p = uid();
    let old = record(&p, "alice", Some("sid-1"));
    s.create(&old).await.unwrap();
    let new = record(&p, "alice", Some("sid-1"));
    s.create(&new).await.unwrap();

    assert_eq!(s.get(&old.key, now()).await.unwrap(), None, "old key gone");
    assert_eq!(s.get(&new.key, now()).await.unwrap(), Some(new.clone()));
    let found = s
        .find(&filter(&p, Some("alice"), None), now())
        .await
        .unwrap();
    assert_eq!(found, vec![new.clone()]);
    let by_sid = s
        .find(&filter(&p, None, Some("sid-1")), now())
        .await
        .unwrap();
    assert_eq!(by_sid, vec![new]);
}

async fn create_same_sub_other_sid_keeps_both(b: Backend) {
    let s = &b.store;
    let p = uid();
    let a = record(&p, "alice", Some("sid-1"));
    let b2 = record(&p, "alice", Some("sid-2"));
    let c = record(&p, "alice", None);
    let d = record(&p, "alice", None);
    for r in [&a, &b2, &c, &d] {
        s.create(r).await.unwrap();
    }
    let found = s
        .find(&filter(&p, Some("alice"), None), now())
        .await
        .unwrap();
    assert_eq!(keys(&found), set([&a, &b2, &c, &d]));
}

async fn create_existing_key_overwrites(b: Backend) {
    let s = &b.store;
    let p = uid();
    let first = record(&p, "alice", Some("sid-1"));
    s.create(&first).await.unwrap();
    let mut second = record(&p, "bob", Some("sid-2"));
    second.key = first.key.clone();
    s.create(&second).await.unwrap();

    assert_eq!(
        s.get(&first.key, now()).await.unwrap(),
        Some(second.clone())
    );
    let alice = s
        .find(&filter(&p, Some("alice"), None), now())
        .await
        .unwrap();
    assert!(alice.is_empty(), "{alice:?}");
    let sid1 = s
        .find(&filter(&p, None, Some("sid-1")), now())
        .await
        .unwrap();
    assert!(sid1.is_empty(), "{sid1:?}");

    // Same key, same sub, sid dropped.
    let mut third = record(&p, "bob", None);
    third.key = first.key.clone();
    s.create(&third).await.unwrap();
    assert_eq!(s.get(&first.key, now()).await.unwrap(), Some(third));
    assert!(s
        .find(&filter(&p, None, Some("sid-2")), now())
        .await
        .unwrap()
        .is_empty());
}

/// Pitfall: duplicate-key errors when the same user logs in twice at once.
async fn concurrent_creates_of_same_sub_and_sid_leave_one_session(b: Backend) {
    let p = uid();
    let records: Vec<SessionRecord> = (0..20)
        .map(|_| record(&p, "alice", Some("sid-1")))
        .collect();
    let tasks: Vec<_> = records
        .iter()
        .cloned()
        .map(|r| {
            let s = b.store.clone();
            tokio::spawn(async move { s.create(&r).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("no create may fail");
    }
    let found = b
        .store
        .find(&filter(&p, Some("alice"), None), now())
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let mut live = 0;
    for r in &records {
        if b.store.get(&r.key, now()).await.unwrap().is_some() {
            live += 1;
        }
    }
    assert_eq!(live, 1);

    // The same key twenty times over (one browser retrying).
    let same = record(&p, "bob", Some("sid-2"));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = b.store.clone();
            let r = same.clone();
            tokio::spawn(async move { s.create(&r).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("no create may fail");
    }
    let found = b
        .store
        .find(&filter(&p, Some("bob"), None), now())
        .await
        .unwrap();
    assert_eq!(found, vec![same]);
}

async fn partitions_are_isolated(b: Backend) {
    let s = &b.store;
    let (p1, p2) = (uid(), uid());
    let a = record(&p1, "alice", Some("sid-1"));
    let b2 = record(&p2, "alice", Some("sid-1"));
    s.create(&a).await.unwrap();
    s.create(&b2).await.unwrap();
    assert!(
        s.get(&a.key, now()).await.unwrap().is_some(),
        "not replaced"
    );
    assert!(s.get(&b2.key, now()).await.unwrap().is_some());

    assert_eq!(
        s.find(&filter(&p1, Some("alice"), None), now())
            .await
            .unwrap(),
        vec![a.clone()]
    );
    assert_eq!(
        s.find(&filter(&p1, None, Some("sid-1")), now())
            .await
            .unwrap(),
        vec![a.clone()]
    );
    let deleted = s
        .delete_matching(&filter(&p1, Some("alice"), None))
        .await
        .unwrap();
    assert_eq!(deleted, vec![a]);
    assert_eq!(s.get(&b2.key, now()).await.unwrap(), Some(b2));
}

async fn update_is_compare_and_set(b: Backend) {
    let s = &b.store;
    let p = uid();
    let r = record(&p, "alice", Some("sid-1"));
    s.create(&r).await.unwrap();

    let mut v2 = r.clone();
    v2.version = 2;
    v2.ticket = b"refreshed".to_vec();
    v2.renewed += 5;
    assert_eq!(s.update(&v2, 1).await.unwrap(), CasOutcome::Updated);
    assert_eq!(s.get(&r.key, now()).await.unwrap(), Some(v2.clone()));

    // A writer that read version 1 lost the race.
    let mut stale = r.clone();
    stale.version = 2;
    stale.ticket = b"stale".to_vec();
    assert_eq!(s.update(&stale, 1).await.unwrap(), CasOutcome::Conflict);
    assert_eq!(s.get(&r.key, now()).await.unwrap(), Some(v2.clone()));

    // The new record must carry expected + 1.
    let mut wrong = v2.clone();
    wrong.version = 7;
    assert!(matches!(
        s.update(&wrong, 2).await,
        Err(StoreError::Config(_))
    ));

    s.delete(&r.key).await.unwrap();
    let mut v3 = v2.clone();
    v3.version = 3;
    assert_eq!(s.update(&v3, 2).await.unwrap(), CasOutcome::Missing);
    let mut unknown = record(&p, "bob", None);
    unknown.version = 2;
    assert_eq!(s.update(&unknown, 1).await.unwrap(), CasOutcome::Missing);
}

async fn update_keeps_identity_and_extends_expiry(b: Backend) {
    let s = &b.store;
    let p = uid();
    let mut r = record(&p, "alice", Some("sid-1"));
    r.expires = now() + 60;
    s.create(&r).await.unwrap();

    let mut next = r.clone();
    next.version = 2;
    next.expires = now() + 7200;
    next.sub = "mallory".into();
    next.sid = Some("other".into());
    next.created = 1;
    assert_eq!(s.update(&next, 1).await.unwrap(), CasOutcome::Updated);

    let stored = s
        .get(&r.key, now() + 3600)
        .await
        .unwrap()
        .expect("extended");
    assert_eq!(
        (stored.sub.as_str(), stored.sid.as_deref(), stored.created),
        ("alice", Some("sid-1"), r.created)
    );
    assert_eq!(stored.expires, next.expires);
    // Still found through both indexes, past the old expiry.
    let by_sub = s
        .find(&filter(&p, Some("alice"), None), now() + 3600)
        .await
        .unwrap();
    assert_eq!(keys(&by_sub), set([&r]));
    let by_sid = s
        .find(&filter(&p, None, Some("sid-1")), now() + 3600)
        .await
        .unwrap();
    assert_eq!(keys(&by_sid), set([&r]));
    assert!(s
        .find(&filter(&p, Some("mallory"), None), now())
        .await
        .unwrap()
        .is_empty());
}

async fn concurrent_updates_exactly_one_wins(b: Backend) {
    let p = uid();
    let r = record(&p, "alice", Some("sid-1"));
    b.store.create(&r).await.unwrap();
    let tasks: Vec<_> = (0..10u8)
        .map(|i| {
            let s = b.store.clone();
            let mut next = r.clone();
            next.version = 2;
            next.ticket = vec![i];
            tokio::spawn(async move { s.update(&next, 1).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().unwrap());
    }
    let updated = outcomes
        .iter()
        .filter(|o| **o == CasOutcome::Updated)
        .count();
    let conflicts = outcomes
        .iter()
        .filter(|o| **o == CasOutcome::Conflict)
        .count();
    assert_eq!((updated, conflicts), (1, 9), "{outcomes:?}");
    assert_eq!(
        b.store.get(&r.key, now()).await.unwrap().unwrap().version,
        2
    );
}

async fn delete_returns_record(b: Backend) {
    let s = &b.store;
    let p = uid();
    let r = record(&p, "alice", Some("sid-1"));
    s.create(&r).await.unwrap();
    assert_eq!(s.delete(&r.key).await.unwrap(), Some(r.clone()));
    assert_eq!(s.delete(&r.key).await.unwrap(), None);
    assert_eq!(s.get(&r.key, now()).await.unwrap(), None);
    assert!(s
        .find(&filter(&p, None, Some("sid-1")), now())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.delete(&uid()).await.unwrap(), None);
}

async fn concurrent_deletes_exactly_one_gets_record(b: Backend) {
    let p = uid();
    let r = record(&p, "alice", Some("sid-1"));
    b.store.create(&r).await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let s = b.store.clone();
            let key = r.key.clone();
            tokio::spawn(async move { s.delete(&key).await })
        })
        .collect();
    let mut got = 0;
    for t in tasks {
        if t.await.unwrap().unwrap().is_some() {
            got += 1;
        }
    }
    assert_eq!(got, 1);
}

/// Pitfall: back-channel logout deleting nothing when the token carries only `sid` or `sub`.
async fn find_and_delete_matching_by_sub_sid_and_both(b: Backend) {
    let s = &b.store;
    let (p, other) = (uid(), uid());
    let a = record(&p, "alice", Some("s1"));
    let b2 = record(&p, "alice", Some("s2"));
    let c = record(&p, "alice", None);
    let d = record(&p, "bob", Some("s1"));
    let e = record(&other, "alice", Some("s1"));
    let mut dead = record(&p, "alice", Some("s3"));
    dead.expires = now() + 5;
    for r in [&a, &b2, &c, &d, &e, &dead] {
        s.create(r).await.unwrap();
    }
    let t = now();
    let find = |sub: Option<&'static str>, sid: Option<&'static str>, at: i64| {
        let f = filter(&p, sub, sid);
        async move { keys(&s.find(&f, at).await.unwrap()) }
    };
    assert_eq!(
        find(Some("alice"), None, t).await,
        set([&a, &b2, &c, &dead])
    );
    assert_eq!(find(Some("alice"), None, t + 10).await, set([&a, &b2, &c]));
    assert_eq!(find(None, Some("s1"), t).await, set([&a, &d]));
    assert_eq!(find(Some("alice"), Some("s1"), t).await, set([&a]));
    assert_eq!(find(None, Some("s3"), t + 10).await, BTreeSet::new());
    assert_eq!(find(Some("carol"), None, t).await, BTreeSet::new());

    let gone = s
        .delete_matching(&filter(&p, None, Some("s1")))
        .await
        .unwrap();
    assert_eq!(keys(&gone), set([&a, &d]));
    assert_eq!(
        gone.iter().find(|r| r.key == a.key),
        Some(&a),
        "full records"
    );
    let gone = s
        .delete_matching(&filter(&p, Some("alice"), Some("s2")))
        .await
        .unwrap();
    assert_eq!(gone, vec![b2.clone()]);
    let gone = s
        .delete_matching(&filter(&p, Some("alice"), None))
        .await
        .unwrap();
    assert_eq!(keys(&gone), set([&c, &dead]));
    assert_eq!(find(Some("alice"), None, t).await, BTreeSet::new());
    assert!(s
        .delete_matching(&filter(&p, Some("alice"), None))
        .await
        .unwrap()
        .is_empty());
    // The other partition is untouched.
    assert_eq!(s.get(&e.key, t).await.unwrap(), Some(e));
}

async fn empty_filter_is_invalid(b: Backend) {
    let f = filter(&uid(), None, None);
    assert!(matches!(
        b.store.find(&f, now()).await,
        Err(StoreError::InvalidFilter)
    ));
    assert!(matches!(
        b.store.delete_matching(&f).await,
        Err(StoreError::InvalidFilter)
    ));
}

async fn cleanup_removes_only_expired(b: Backend) {
    let s = &b.store;
    let p = uid();
    let t = now();
    let mut expired = Vec::new();
    for i in 0..5 {
        let mut r = record(&p, "alice", Some(&format!("old-{i}")));
        r.expires = t - 5;
        s.create(&r).await.unwrap();
        expired.push(r);
    }
    let live: Vec<_> = (0..3).map(|_| record(&p, "alice", None)).collect();
    for r in &live {
        s.create(r).await.unwrap();
    }
    let removed = s.cleanup_expired(t).await.unwrap();
    if b.exclusive {
        assert_eq!(removed, 5);
    }
    // Shared servers: other tests clean up concurrently, so only the effect is checked.
    let _ = b.native_ttl;
    for r in &expired {
        // Asked with a clock before its expiry: it must really be gone.
        assert_eq!(s.get(&r.key, t - 100).await.unwrap(), None);
    }
    for r in &live {
        assert!(s.get(&r.key, t).await.unwrap().is_some());
    }
    let found = s
        .find(&filter(&p, Some("alice"), None), t - 100)
        .await
        .unwrap();
    assert_eq!(keys(&found), live.iter().map(|r| r.key.clone()).collect());
}

async fn get_during_cleanup_never_errors(b: Backend) {
    let p = uid();
    let t = now();
    for i in 0..300 {
        let mut r = record(&p, &format!("user-{i}"), Some("s"));
        r.expires = t - 1;
        b.store.create(&r).await.unwrap();
    }
    let live: Vec<_> = (0..10)
        .map(|i| record(&p, &format!("live-{i}"), None))
        .collect();
    for r in &live {
        b.store.create(r).await.unwrap();
    }
    let cleaner = {
        let s = b.store.clone();
        tokio::spawn(async move { s.cleanup_expired(t).await })
    };
    for _ in 0..20 {
        for r in &live {
            let got = b.store.get(&r.key, t).await.expect("get during cleanup");
            assert!(got.is_some());
        }
    }
    cleaner.await.unwrap().unwrap();
}

async fn claim_once_until_expiry(b: Backend) {
    let s = &b.store;
    let id = uid();
    // Two seconds, not one: expiry is judged in whole seconds, and a one-second claim made
    // just before a second boundary is already expired at the next call.
    let until = now() + 2;
    assert!(s.claim_once(&id, until).await.unwrap());
    assert!(!s.claim_once(&id, until).await.unwrap());
    assert!(!s.claim_once(&id, until + 60).await.unwrap());
    sleep_past(until).await;
    assert!(s.claim_once(&id, now() + 60).await.unwrap());
    assert!(!s.claim_once(&id, now() + 60).await.unwrap());
    // Already expired: nothing to remember.
    assert!(s.claim_once(&uid(), now() - 1).await.unwrap());
}

async fn lease_holder_renew_release_expire(b: Backend) {
    let s = &b.store;
    let name = format!("refresh:{}", uid());
    let long = Duration::from_secs(30);
    assert!(s.try_lease(&name, "A", long).await.unwrap());
    assert!(!s.try_lease(&name, "B", long).await.unwrap());
    assert!(s.try_lease(&name, "A", long).await.unwrap(), "renew");
    s.release_lease(&name, "B").await.unwrap();
    assert!(
        !s.try_lease(&name, "B", long).await.unwrap(),
        "B cannot release A's lease"
    );
    s.release_lease(&name, "A").await.unwrap();
    assert!(s
        .try_lease(&name, "B", Duration::from_millis(300))
        .await
        .unwrap());
    assert!(!s.try_lease(&name, "A", long).await.unwrap());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        s.try_lease(&name, "A", long).await.unwrap(),
        "expired by TTL"
    );
    assert!(!s.try_lease(&name, "B", long).await.unwrap());
    s.release_lease(&name, "A").await.unwrap();
}

async fn ping_succeeds(b: Backend) {
    b.store.ping().await.unwrap();
    assert!(!b.store.kind().is_empty());
}
