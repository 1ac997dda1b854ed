//! Backend-specific behaviour the shared contract cannot see: files, schema, TTLs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{now, record, sleep_past, uid};
use portcullis_session::{SessionStore, SqliteStore};
use redis::AsyncCommands;

#[tokio::test]
async fn connect_picks_the_store_by_scheme() {
    assert_eq!(
        portcullis_session::connect("memory").await.unwrap().kind(),
        "memory"
    );
    assert_eq!(
        portcullis_session::connect("memory://")
            .await
            .unwrap()
            .kind(),
        "memory"
    );
    let (url, _dir) = common::temp_sqlite();
    assert_eq!(
        portcullis_session::connect(&url).await.unwrap().kind(),
        "sqlite"
    );
}

#[tokio::test]
async fn connect_picks_postgres_and_redis_by_scheme() {
    let pg = common::postgres_url();
    assert_eq!(
        portcullis_session::connect(&pg).await.unwrap().kind(),
        "postgres"
    );
    let pg = pg.replacen("postgres://", "postgresql://", 1);
    assert_eq!(
        portcullis_session::connect(&pg).await.unwrap().kind(),
        "postgres"
    );
    let redis = common::redis_url();
    assert_eq!(
        portcullis_session::connect(&redis).await.unwrap().kind(),
        "redis"
    );
    let cluster = common::redis_cluster_url();
    assert_eq!(
        portcullis_session::connect(&cluster).await.unwrap().kind(),
        "redis"
    );
}

/// Another process (the CLI) ending a session on the same SQLite file is reported by
/// `poll_changes`; nothing is reported when nothing changed, and the report comes once.
#[tokio::test]
async fn sqlite_poll_changes_reports_what_another_process_changed() {
    use portcullis_session::{Invalidation, SessionFilter};
    let (url, _dir) = common::temp_sqlite();
    let gateway = SqliteStore::connect(&url).await.unwrap();
    let cli = SqliteStore::connect(&url).await.unwrap();
    assert!(gateway.polls_changes());
    let (a, b) = (record("p", "alice", Some("s1")), record("p", "bob", None));
    gateway.create(&a).await.unwrap();
    gateway.create(&b).await.unwrap();
    let _ = gateway.poll_changes().await.unwrap();
    assert!(
        gateway.poll_changes().await.unwrap().is_empty(),
        "no change"
    );
    let filter = SessionFilter {
        partition: "p".into(),
        sub: Some("alice".into()),
        sid: None,
    };
    assert_eq!(cli.delete_matching(&filter).await.unwrap().len(), 1);
    assert_eq!(
        gateway.poll_changes().await.unwrap(),
        vec![Invalidation::Key(a.key.clone())]
    );
    assert!(
        gateway.poll_changes().await.unwrap().is_empty(),
        "reported once"
    );
    // A login replacing the same sub + sid elsewhere, and an update, are changes too.
    let mut b2 = b.clone();
    b2.version = 2;
    b2.ticket = vec![1];
    assert_eq!(
        cli.update(&b2, 1).await.unwrap(),
        portcullis_session::CasOutcome::Updated
    );
    let a2 = record("p", "alice", Some("s1"));
    gateway.create(&a).await.unwrap();
    let _ = gateway.poll_changes().await.unwrap();
    cli.create(&a2).await.unwrap();
    let changes = gateway.poll_changes().await.unwrap();
    assert!(
        changes.contains(&Invalidation::Key(a.key.clone())),
        "{changes:?}"
    );
    // In memory: one process only, nothing to poll.
    let mem = SqliteStore::connect("sqlite::memory:").await.unwrap();
    assert!(!mem.polls_changes());
}

#[tokio::test]
async fn sqlite_creates_directory_and_keeps_sessions_across_restarts() {
    let (url, _dir) = common::temp_sqlite();
    let path = url.trim_start_matches("sqlite://").to_owned();
    let r = record(&uid(), "alice", Some("sid-1"));
    {
        let store = SqliteStore::connect(&url).await.unwrap();
        store.create(&r).await.unwrap();
    }
    assert!(std::path::Path::new(&path).exists(), "{path} created");
    let store = SqliteStore::connect(&url).await.unwrap();
    assert_eq!(store.get(&r.key, now()).await.unwrap(), Some(r));
    assert_eq!(store.migrate().await.unwrap(), 2, "idempotent");

    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM portcullis_schema_version")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(versions, vec![1, 2]);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn sqlite_in_memory_keeps_data_while_open() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    let r = record(&uid(), "alice", None);
    store.create(&r).await.unwrap();
    assert_eq!(store.get(&r.key, now()).await.unwrap(), Some(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_migrations_are_safe() {
    let Some(store) = common::postgres_store().await else {
        return;
    };
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.migrate().await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 2);
    }
    let pool = sqlx::PgPool::connect(&common::postgres_url())
        .await
        .unwrap();
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM portcullis_schema_version WHERE version = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, 1);
}

async fn redis_con() -> Option<redis::aio::MultiplexedConnection> {
    common::redis_store().await?;
    let client = redis::Client::open(common::redis_url()).unwrap();
    Some(client.get_multiplexed_async_connection().await.unwrap())
}

/// Seconds left on `key` (-2: missing, -1: no TTL).
async fn ttl(con: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    con.ttl(key).await.unwrap()
}

/// Every key of a session carries a TTL that follows `expires`, also after an update, so
/// Redis itself enforces expiry and nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_expire_with_the_session() {
    let (Some(store), Some(mut con)) = (common::redis_store().await, redis_con().await) else {
        return;
    };
    let p = uid();
    let mut r = record(&p, "alice", Some("sid1"));
    r.expires = now() + 100;
    store.create(&r).await.unwrap();
    let keys = [
        format!("pc:{{u:{p}:alice}}:s:{}", r.key),
        format!("pc:{{u:{p}:alice}}:idx"),
        format!("pc:{{u:{p}:alice}}:sid:sid1"),
        format!("pc:{{d:{p}:sid1}}:idx"),
        format!("pc:k:{}", r.key),
    ];
    for k in &keys {
        let t = ttl(&mut con, k).await;
        assert!((95..=100).contains(&t), "{k}: ttl {t}");
    }
    let mut next = r.clone();
    next.version = 2;
    next.expires = now() + 1000;
    store.update(&next, 1).await.unwrap();
    for k in &keys {
        let t = ttl(&mut con, k).await;
        assert!((995..=1000).contains(&t), "{k}: ttl {t} after update");
    }
    store.delete(&r.key).await.unwrap();
    for k in &keys {
        assert_eq!(ttl(&mut con, k).await, -2, "{k} deleted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_expired_sessions_vanish_and_cleanup_prunes_indexes() {
    let (Some(store), Some(mut con)) = (common::redis_store().await, redis_con().await) else {
        return;
    };
    let p = uid();
    let live = record(&p, "alice", None);
    let mut short = record(&p, "alice", Some("sid1"));
    short.expires = now() + 1;
    store.create(&live).await.unwrap();
    store.create(&short).await.unwrap();
    let index = format!("pc:{{u:{p}:alice}}:idx");
    assert_eq!(con.zcard::<_, i64>(&index).await.unwrap(), 2);

    sleep_past(short.expires).await;
    let hash = format!("pc:{{u:{p}:alice}}:s:{}", short.key);
    assert!(
        !con.exists::<_, bool>(&hash).await.unwrap(),
        "Redis expired it"
    );
    assert!(store.get(&short.key, 0).await.unwrap().is_none());

    let pruned = store.cleanup_expired(now()).await.unwrap();
    assert!(pruned >= 1, "pruned {pruned}");
    assert_eq!(con.zcard::<_, i64>(&index).await.unwrap(), 1);
    assert!(store.get(&live.key, now()).await.unwrap().is_some());
}
