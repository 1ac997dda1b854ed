//! Cross-instance cache invalidation: a second store instance on the same server hears about
//! every record updated, replaced or deleted through the first, and is told to drop
//! everything after its subscription was interrupted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{record, target, through_proxy, uid, Proxy};
use portcullis_session::{
    Invalidation, MemoryStore, PostgresStore, RedisStore, SessionFilter, SessionStore, SqliteStore,
};
use std::time::Duration;
use tokio::sync::broadcast::{error::RecvError, Receiver};

const WAIT: Duration = Duration::from_secs(10);

/// Waits for `want`, skipping other tests' keys (the channel is shared).
async fn expect(rx: &mut Receiver<Invalidation>, want: Invalidation) {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Ok(got) if got == want => return,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("invalidation channel closed"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {want:?} within {WAIT:?}");
}

/// Store `a` writes, store `b` listens.
async fn second_instance_hears_changes(a: &dyn SessionStore, b: &dyn SessionStore) {
    let mut rx = b.subscribe_invalidations().expect("shared stores publish");
    expect(&mut rx, Invalidation::All).await; // subscribed

    let p = uid();
    let r = record(&p, "alice", Some("sid-1"));
    a.create(&r).await.unwrap();
    let mut next = r.clone();
    next.version = 2;
    next.ticket = b"refreshed".to_vec();
    a.update(&next, 1).await.unwrap();
    expect(&mut rx, Invalidation::Key(r.key.clone())).await;

    a.delete(&r.key).await.unwrap();
    expect(&mut rx, Invalidation::Key(r.key.clone())).await;

    // Replaced by a second login of the same sub + sid.
    let first = record(&p, "bob", Some("sid-2"));
    a.create(&first).await.unwrap();
    let second = record(&p, "bob", Some("sid-2"));
    a.create(&second).await.unwrap();
    expect(&mut rx, Invalidation::Key(first.key.clone())).await;

    // Back-channel logout.
    let filter = SessionFilter {
        partition: p.clone(),
        sub: None,
        sid: Some("sid-2".into()),
    };
    assert_eq!(a.delete_matching(&filter).await.unwrap().len(), 1);
    expect(&mut rx, Invalidation::Key(second.key.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_second_instance_hears_changes() {
    let (Some(a), Some(b)) = (common::redis_store().await, common::redis_store().await) else {
        return;
    };
    second_instance_hears_changes(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_second_instance_hears_changes() {
    let (Some(a), Some(b)) = (common::redis_cluster().await, common::redis_cluster().await) else {
        return;
    };
    second_instance_hears_changes(&*a.store, &*b.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_second_instance_hears_changes() {
    let (Some(a), Some(b)) = (
        common::postgres_store().await,
        common::postgres_store().await,
    ) else {
        return;
    };
    second_instance_hears_changes(&a, &b).await;
}

#[tokio::test]
async fn single_process_stores_do_not_publish() {
    assert!(MemoryStore::new().subscribe_invalidations().is_none());
    let (url, _dir) = common::temp_sqlite();
    let sqlite = SqliteStore::connect(&url).await.unwrap();
    assert!(sqlite.subscribe_invalidations().is_none());
}

/// After the subscription is cut and restored: `All`, then keys again.
async fn resubscribes_after_outage(
    writer: &dyn SessionStore,
    listener: &dyn SessionStore,
    proxy: &mut Proxy,
) {
    let mut rx = listener.subscribe_invalidations().unwrap();
    expect(&mut rx, Invalidation::All).await;
    proxy.cut().await;
    expect(&mut rx, Invalidation::All).await; // lost
    proxy.resume().await;
    expect(&mut rx, Invalidation::All).await; // back: anything may have changed

    let r = record(&uid(), "alice", None);
    writer.create(&r).await.unwrap();
    writer.delete(&r.key).await.unwrap();
    expect(&mut rx, Invalidation::Key(r.key)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscriber_resubscribes_after_outage() {
    let url = common::redis_url();
    let mut proxy = Proxy::start(&target(&url, 6379)).await;
    let listener = RedisStore::connect(&through_proxy(&url, proxy.port))
        .await
        .unwrap();
    let writer = common::redis_store().await.unwrap();
    resubscribes_after_outage(&writer, &listener, &mut proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listener_resubscribes_after_outage() {
    let url = common::postgres_url();
    let mut proxy = Proxy::start(&target(&url, 5432)).await;
    let listener = PostgresStore::connect(&through_proxy(&url, proxy.port))
        .await
        .unwrap();
    let writer = common::postgres_store().await.unwrap();
    resubscribes_after_outage(&writer, &listener, &mut proxy).await;
}
