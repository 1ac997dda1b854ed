//! Shared test helpers: backends, records, a controllable TCP proxy.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use portcullis_session::{
    MemoryStore, PostgresStore, RedisStore, SessionRecord, SessionStore, SqliteStore,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub fn postgres_url() -> String {
    std::env::var("PORTCULLIS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// External stores are always required here: a test that silently passes without its
/// server proves nothing. To run without them, leave those tests out with a filter, so the
/// runner reports them as skipped: `scripts/test.sh` does that for
/// `PORTCULLIS_SKIP_EXTERNAL_STORES=1` (every test whose name says `postgres` or `redis`).
const HOW_TO_SKIP: &str = "start the stores with scripts/ensure-services.sh, or run \
     PORTCULLIS_SKIP_EXTERNAL_STORES=1 scripts/test.sh, which reports these tests as skipped";

pub struct Backend {
    pub store: Arc<dyn SessionStore>,
    /// The backend expires records by itself (Redis): an expired record is gone at once.
    pub native_ttl: bool,
    /// The store is this test's alone (not a shared server other tests clean up).
    pub exclusive: bool,
    /// Dropped after `store`: removes a SQLite test directory.
    pub _dir: Option<TempDir>,
}

/// Removes a test directory when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn memory() -> Option<Backend> {
    Some(Backend {
        store: Arc::new(MemoryStore::new()),
        native_ttl: false,
        exclusive: true,
        _dir: None,
    })
}

/// A SQLite URL in a fresh temp directory (with a missing `nested` level, to be created).
pub fn temp_sqlite() -> (String, TempDir) {
    let root = std::env::temp_dir().join(format!("portcullis-session-test-{}", uid()));
    let file = root.join("nested").join("sessions.db");
    (format!("sqlite://{}", file.display()), TempDir(root))
}

pub async fn sqlite() -> Option<Backend> {
    let (url, dir) = temp_sqlite();
    let store = SqliteStore::connect(&url).await.expect("SQLite store");
    Some(Backend {
        store: Arc::new(store),
        native_ttl: false,
        exclusive: true,
        _dir: Some(dir),
    })
}

pub async fn postgres_store() -> Option<PostgresStore> {
    let url = postgres_url();
    match PostgresStore::connect(&url).await {
        Ok(s) => Some(s),
        Err(e) => panic!(
            "PostgreSQL not reachable at {url} (PORTCULLIS_TEST_POSTGRES_URL): {e}; {HOW_TO_SKIP}"
        ),
    }
}

pub async fn postgres() -> Option<Backend> {
    Some(Backend {
        store: Arc::new(postgres_store().await?),
        native_ttl: false,
        exclusive: false,
        _dir: None,
    })
}

pub async fn redis_store() -> Option<RedisStore> {
    let url = redis_url();
    match RedisStore::connect(&url).await {
        Ok(s) => Some(s),
        Err(e) => {
            panic!("Redis not reachable at {url} (PORTCULLIS_TEST_REDIS_URL): {e}; {HOW_TO_SKIP}")
        }
    }
}

pub async fn redis() -> Option<Backend> {
    Some(Backend {
        store: Arc::new(redis_store().await?),
        native_ttl: true,
        exclusive: false,
        _dir: None,
    })
}

/// A Redis Cluster: `PORTCULLIS_TEST_REDIS_CLUSTER_URL=redis+cluster://h1:p1,h2:p2`, which
/// `scripts/ensure-services.sh` starts (three local nodes) and prints.
pub fn redis_cluster_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| panic!("PORTCULLIS_TEST_REDIS_CLUSTER_URL is not set; {HOW_TO_SKIP}"))
}

pub async fn redis_cluster() -> Option<Backend> {
    let url = redis_cluster_url();
    match RedisStore::connect(&url).await {
        Ok(s) => Some(Backend {
            store: Arc::new(s),
            native_ttl: true,
            exclusive: false,
            _dir: None,
        }),
        Err(e) => panic!("Redis Cluster not reachable at {url}: {e}; {HOW_TO_SKIP}"),
    }
}

pub fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// A live record (one hour left) with a binary ticket.
pub fn record(partition: &str, sub: &str, sid: Option<&str>) -> SessionRecord {
    let now = now();
    SessionRecord {
        key: uid(),
        partition: partition.to_owned(),
        sub: sub.to_owned(),
        sid: sid.map(str::to_owned),
        created: now,
        renewed: now,
        expires: now + 3600,
        version: 1,
        ticket: (0..=255u8).chain(sub.bytes()).collect(),
    }
}

/// Sleeps until the wall clock has passed `secs` (unix seconds) by a margin.
pub async fn sleep_past(secs: i64) {
    let target = Duration::from_millis(u64::try_from(secs).unwrap() * 1000 + 50);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    if let Some(wait) = target.checked_sub(now) {
        tokio::time::sleep(wait).await;
    }
}

/// A TCP forwarder that can be cut and restored, to simulate a store outage.
pub struct Proxy {
    pub port: u16,
    target: String,
    stop: Option<watch::Sender<bool>>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let mut p = Proxy {
            port: 0,
            target: target.to_owned(),
            stop: None,
        };
        p.resume().await;
        p
    }

    /// Accepts again on the same port.
    pub async fn resume(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.port = listener.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(false);
        self.stop = Some(tx);
        let target = self.target.clone();
        tokio::spawn(async move {
            let mut stop = rx.clone();
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { return };
                        let target = target.clone();
                        let mut stop = rx.clone();
                        tokio::spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                            tokio::select! {
                                _ = stop.changed() => {}
                                _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                            }
                        });
                    }
                }
            }
        });
    }

    /// Drops every forwarded connection and accepts again at once: what a restarted server
    /// or a firewall cutting idle connections looks like to a client.
    pub async fn reset(&mut self) {
        self.cut().await;
        self.resume().await;
    }

    /// Closes the listener and every forwarded connection.
    pub async fn cut(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        // Let the tasks see it and drop their sockets.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `host[:port]` as written in a test URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// `host:port` a test URL points at.
pub fn target(url: &str, default_port: u16) -> String {
    let hostport = authority(url);
    if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:{default_port}")
    }
}

/// The same URL, pointed at a local proxy port.
pub fn through_proxy(url: &str, port: u16) -> String {
    let hostport = authority(url);
    let at = url.find(hostport).unwrap();
    format!(
        "{}127.0.0.1:{port}{}",
        &url[..at],
        &url[at + hostport.len()..]
    )
}
