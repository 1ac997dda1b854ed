//! Pitfall: a session store hiccup treated as "no session" logs users out. An unreachable
//! store must be `Err(Unavailable)`, quickly, and the store must work again once the server
//! is back, without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{now, record, target, through_proxy, uid, Proxy};
use portcullis_session::{
    PostgresStore, RedisStore, SessionFilter, SessionRecord, SessionStore, StoreError,
};
use std::time::{Duration, Instant};

/// Connect plus one operation's bound, with slack for a loaded CI machine.
const QUICK: Duration = Duration::from_secs(8);

fn assert_unavailable<T: std::fmt::Debug>(what: &str, r: Result<T, StoreError>) {
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "{what}: expected Unavailable, got {r:?}"
    );
}

/// Every operation fails with `Unavailable` (never `Ok(None)` or `Ok(empty)`), each quickly.
/// They run concurrently: each may wait for its connect timeout.
async fn all_operations_unavailable(s: &dyn SessionStore, r: &SessionRecord) {
    let f = SessionFilter {
        partition: r.partition.clone(),
        sub: Some(r.sub.clone()),
        sid: None,
    };
    let mut next = r.clone();
    next.version = r.version + 1;
    async fn timed<T: std::fmt::Debug>(
        what: &'static str,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> (&'static str, Duration, String, bool) {
        let started = Instant::now();
        let r = op.await;
        let unavailable = matches!(r, Err(StoreError::Unavailable(_)));
        (what, started.elapsed(), format!("{r:?}"), unavailable)
    }
    let (claim_id, now) = (uid(), now());
    let all = tokio::join!(
        timed("get", s.get(&r.key, now)),
        timed("create", s.create(r)),
        timed("update", s.update(&next, r.version)),
        timed("delete", s.delete(&r.key)),
        timed("find", s.find(&f, now)),
        timed("delete_matching", s.delete_matching(&f)),
        timed("cleanup_expired", s.cleanup_expired(now)),
        timed("claim_once", s.claim_once(&claim_id, now + 60)),
        timed("try_lease", s.try_lease("l", "h", Duration::from_secs(1))),
        timed("release_lease", s.release_lease("l", "h")),
        timed("ping", s.ping()),
    );
    let all = [
        all.0, all.1, all.2, all.3, all.4, all.5, all.6, all.7, all.8, all.9, all.10,
    ];
    for (what, took, result, unavailable) in all {
        assert!(unavailable, "{what}: expected Unavailable, got {result}");
        assert!(took < QUICK, "{what} took {took:?}");
    }
}

async fn eventually_works(s: &dyn SessionStore, r: &SessionRecord) {
    let started = Instant::now();
    loop {
        match s.get(&r.key, now()).await {
            Ok(got) => {
                assert_eq!(got.as_ref(), Some(r), "data survives the outage");
                return;
            }
            Err(StoreError::Unavailable(e)) if started.elapsed() < Duration::from_secs(15) => {
                eprintln!("still unavailable: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("store did not recover: {e}"),
        }
    }
}

#[tokio::test]
async fn postgres_unreachable_at_connect_is_unavailable_quickly() {
    let started = Instant::now();
    let r = PostgresStore::connect("postgres://postgres@127.0.0.1:1/test").await;
    assert_unavailable("connect", r.map(|_| ()));
    assert!(started.elapsed() < QUICK, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn redis_unreachable_at_connect_is_unavailable_quickly() {
    let started = Instant::now();
    let r = RedisStore::connect("redis://127.0.0.1:1").await;
    assert_unavailable("connect", r.map(|_| ()));
    assert!(started.elapsed() < QUICK, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn redis_cluster_unreachable_at_connect_is_unavailable_quickly() {
    let started = Instant::now();
    let r = RedisStore::connect("redis+cluster://127.0.0.1:1,127.0.0.1:2").await;
    assert_unavailable("connect", r.map(|_| ()));
    assert!(started.elapsed() < QUICK, "took {:?}", started.elapsed());
}

/// TLS set-up (crypto provider, roots) must not panic; a plain server is just unreachable.
#[tokio::test]
async fn rediss_against_a_plain_server_is_unavailable() {
    let url = common::redis_url().replacen("redis://", "rediss://", 1);
    let started = Instant::now();
    let r = RedisStore::connect(&url).await;
    assert_unavailable("connect", r.map(|_| ()));
    assert!(started.elapsed() < QUICK, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn unknown_scheme_is_a_config_error() {
    for url in ["ftp://x", "mongodb://u:secret@h", "hunter2"] {
        match portcullis_session::connect(url).await {
            Err(StoreError::Config(msg)) => {
                assert!(!msg.contains("secret") && !msg.contains("hunter2"), "{msg}");
            }
            other => panic!("{url}: {:?}", other.map(|s| s.kind())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_unavailable_then_recovers() {
    let url = common::postgres_url();
    let mut proxy = Proxy::start(&target(&url, 5432)).await;
    let store = PostgresStore::connect(&through_proxy(&url, proxy.port))
        .await
        .expect("PostgreSQL through the proxy");
    let r = record(&uid(), "alice", Some("sid-1"));
    store.create(&r).await.unwrap();

    proxy.cut().await;
    all_operations_unavailable(&store, &r).await;

    proxy.resume().await;
    eventually_works(&store, &r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_unavailable_then_recovers() {
    let url = common::redis_url();
    let mut proxy = Proxy::start(&target(&url, 6379)).await;
    let store = RedisStore::connect(&through_proxy(&url, proxy.port))
        .await
        .expect("Redis through the proxy");
    let r = record(&uid(), "alice", Some("sid-1"));
    store.create(&r).await.unwrap();

    proxy.cut().await;
    all_operations_unavailable(&store, &r).await;

    proxy.resume().await;
    eventually_works(&store, &r).await;
    // And writes too.
    let r2 = record(&r.partition, "bob", None);
    store.create(&r2).await.unwrap();
    assert_eq!(store.get(&r2.key, now()).await.unwrap(), Some(r2));
}

/// Every operation, each run right after all of the store's connections were dropped (the
/// server stays reachable): each must succeed at once, retried on a fresh connection. Before
/// the retry, the first operation after a Redis restart failed with "broken pipe" (503).
async fn each_operation_survives_dropped_connections(s: &dyn SessionStore, proxy: &mut Proxy) {
    let r = record(&uid(), "alice", Some("sid-1"));
    let f = SessionFilter {
        partition: r.partition.clone(),
        sub: Some(r.sub.clone()),
        sid: None,
    };
    let mut next = r.clone();
    next.version = r.version + 1;
    let claim_id = uid();
    let lease = uid();
    let now = now();
    macro_rules! after_reset {
        ($what:literal, $op:expr) => {{
            proxy.reset().await;
            match $op.await {
                Ok(v) => v,
                Err(e) => panic!("{} after the connections dropped: {e}", $what),
            }
        }};
    }
    after_reset!("ping", s.ping());
    after_reset!("create", s.create(&r));
    assert_eq!(after_reset!("get", s.get(&r.key, now)), Some(r.clone()));
    assert_eq!(
        after_reset!("update", s.update(&next, r.version)),
        portcullis_session::CasOutcome::Updated
    );
    assert_eq!(after_reset!("find", s.find(&f, now)), vec![next.clone()]);
    assert!(after_reset!(
        "claim_once",
        s.claim_once(&claim_id, now + 60)
    ));
    assert!(
        !s.claim_once(&claim_id, now + 60).await.unwrap(),
        "a second claim of the same id is a replay"
    );
    assert!(after_reset!(
        "try_lease",
        s.try_lease(&lease, "h", Duration::from_secs(5))
    ));
    after_reset!("release_lease", s.release_lease(&lease, "h"));
    after_reset!("cleanup_expired", s.cleanup_expired(now));
    assert!(after_reset!("delete", s.delete(&r.key)).is_some());
    after_reset!("create", s.create(&r));
    assert_eq!(
        after_reset!("delete_matching", s.delete_matching(&f)).len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dropped_connection_is_retried_once_on_a_fresh_one() {
    let url = common::redis_url();
    let mut proxy = Proxy::start(&target(&url, 6379)).await;
    let store = RedisStore::connect(&through_proxy(&url, proxy.port))
        .await
        .expect("Redis through the proxy");
    each_operation_survives_dropped_connections(&store, &mut proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dropped_connections_are_retried_once_on_fresh_ones() {
    let url = common::postgres_url();
    let mut proxy = Proxy::start(&target(&url, 5432)).await;
    let store = PostgresStore::connect(&through_proxy(&url, proxy.port))
        .await
        .expect("PostgreSQL through the proxy");
    each_operation_survives_dropped_connections(&store, &mut proxy).await;
}
