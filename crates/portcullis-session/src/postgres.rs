//! [`PostgresStore`]: sessions in PostgreSQL, shared by every gateway instance.
//!
//! Tables are prefixed `portcullis_` so they can live in an application database. Times are
//! unix seconds in `BIGINT` columns (no time zones to get wrong). The schema is created or
//! migrated at [`connect`](PostgresStore::connect) and by [`migrate`](PostgresStore::migrate)
//! (behind `portcullis migrate`); concurrent migrations from several instances serialise on
//! an advisory lock, and `portcullis_schema_version` records what ran.
//!
//! A repeated login of the same `sub` + `sid` (two tabs, two instances, a lost cookie) is an
//! `INSERT ... ON CONFLICT (partition, sub, sid) DO UPDATE` on a partial unique index: one
//! row, never a duplicate-key error, whatever the interleaving.
//!
//! Cache invalidation: a trigger on the sessions table sends `pg_notify('portcullis_invalidate',
//! key)` for every updated, replaced or deleted row (not for `cleanup_expired`, whose records
//! are dead anyway); [`SessionStore::subscribe_invalidations`] listens with a dedicated
//! connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), portcullis_session::StoreError> {
//! use portcullis_session::PostgresStore;
//! let store = PostgresStore::connect("postgres://portcullis@db.internal/portcullis").await?;
//! # Ok(()) }
//! ```
//!
//! Caveats: `connect` fails with [`StoreError::Unavailable`] when the database is down (start-up
//! waits for it); afterwards outages surface per operation and the pool reconnects by itself.
//! Leases use the database clock; claims compare with this host's clock.

use crate::store::{
    CasOutcome, Invalidation, SessionFilter, SessionRecord, SessionStore, StoreError,
};
use crate::util::{
    bounded, check_next_version, map_sqlx as map_err, now_secs, ttl_ms, version_from_i64,
    version_to_i64, AbortOnDrop, CONNECT_TIMEOUT,
};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Row};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::broadcast;

/// The `NOTIFY` channel carrying invalidated keys.
pub const INVALIDATION_CHANNEL: &str = "portcullis_invalidate";
/// Serialises migrations of concurrently starting instances (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 8_098_443_434_508_119_399;
const CLEANUP_BATCH: i64 = 1000;
const MAX_CONNECTIONS: u32 = 16;
/// Server-side bound for one statement, below the client-side operation timeout.
const STATEMENT_TIMEOUT_MS: &str = "4000";

const COLUMNS: &str = "key, partition, sub, sid, created, renewed, expires, version, ticket";

/// Ordered migrations; `portcullis_schema_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: sessions, claims, leases, invalidation trigger
    r"
    CREATE TABLE IF NOT EXISTS portcullis_sessions (
        key       TEXT PRIMARY KEY,
        partition TEXT NOT NULL,
        sub       TEXT NOT NULL,
        sid       TEXT,
        created   BIGINT NOT NULL,
        renewed   BIGINT NOT NULL,
        expires   BIGINT NOT NULL,
        version   BIGINT NOT NULL,
        ticket    BYTEA NOT NULL
    );
    CREATE INDEX IF NOT EXISTS portcullis_sessions_sub ON portcullis_sessions (partition, sub);
    CREATE INDEX IF NOT EXISTS portcullis_sessions_sid ON portcullis_sessions (partition, sid);
    CREATE INDEX IF NOT EXISTS portcullis_sessions_expires ON portcullis_sessions (expires);
    CREATE UNIQUE INDEX IF NOT EXISTS portcullis_sessions_sub_sid
        ON portcullis_sessions (partition, sub, sid) WHERE sid IS NOT NULL;
    CREATE TABLE IF NOT EXISTS portcullis_claims (
        id      TEXT PRIMARY KEY,
        expires BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS portcullis_leases (
        name       TEXT PRIMARY KEY,
        holder     TEXT NOT NULL,
        expires_ms BIGINT NOT NULL
    );
    CREATE OR REPLACE FUNCTION portcullis_notify_invalidate() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF coalesce(current_setting('portcullis.quiet', true), '') <> 'on' THEN
            PERFORM pg_notify('portcullis_invalidate', OLD.key);
        END IF;
        RETURN NULL;
    END
    $$;
    DROP TRIGGER IF EXISTS portcullis_sessions_invalidate ON portcullis_sessions;
    CREATE TRIGGER portcullis_sessions_invalidate
        AFTER UPDATE OR DELETE ON portcullis_sessions
        FOR EACH ROW EXECUTE FUNCTION portcullis_notify_invalidate();
    ",
    // 2: claims remember which call made them, so a retried claim is not a replay
    r"
    ALTER TABLE portcullis_claims ADD COLUMN IF NOT EXISTS holder TEXT;
    ",
];

/// Session store on PostgreSQL.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not derived: the connect options hold the password.
        f.debug_struct("PostgresStore")
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

struct Shared {
    options: PgConnectOptions,
    runtime: tokio::runtime::Handle,
    invalidations: broadcast::Sender<Invalidation>,
    listener: OnceLock<AbortOnDrop>,
}

impl PostgresStore {
    /// Connects (`postgres://` or `postgresql://` URL, libpq-style parameters such as
    /// `sslmode` allowed) and migrates the schema. An unreachable server is
    /// [`StoreError::Unavailable`] after at most a few seconds.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("portcullis")
            .options([("statement_timeout", STATEMENT_TIMEOUT_MS)]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            // A pooled connection is pinged before use: one that died with a restarted
            // server is replaced instead of failing a request (the default, made explicit).
            .test_before_acquire(true)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(map_err)?;
        let (invalidations, _) = broadcast::channel(1024);
        let store = Self {
            pool,
            shared: Arc::new(Shared {
                options,
                runtime: tokio::runtime::Handle::current(),
                invalidations,
                listener: OnceLock::new(),
            }),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Creates or upgrades the schema; idempotent and safe to run from several instances at
    /// once. Returns the schema version.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS portcullis_schema_version (version BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM portcullis_schema_version")
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
        let current = usize::try_from(current.unwrap_or(0)).unwrap_or(0);
        if current > MIGRATIONS.len() {
            tracing::warn!(
                schema = current,
                known = MIGRATIONS.len(),
                "PostgreSQL session schema is newer than this build"
            );
        }
        for (version, migration) in (1_i64..).zip(MIGRATIONS.iter().copied()).skip(current) {
            // A plain `&str` runs as a simple query: several statements at once. (Not
            // `raw_sql`, whose future is not `Send` for every lifetime, so callers could not
            // spawn `migrate`.)
            (&mut *tx).execute(migration).await.map_err(map_err)?;
            sqlx::query("INSERT INTO portcullis_schema_version (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(current.max(MIGRATIONS.len()))
    }

    async fn select(
        &self,
        filter: &SessionFilter,
        now: Option<i64>,
        delete: bool,
        t: Attempt,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut cond = String::from("partition = $1");
        let mut n = 1;
        let mut next = || {
            n += 1;
            n
        };
        match (&filter.sub, &filter.sid) {
            (None, None) => return Err(StoreError::InvalidFilter),
            (Some(_), Some(_)) => {
                let (a, b) = (next(), next());
                cond.push_str(&format!(" AND sub = ${a} AND sid = ${b}"));
            }
            (Some(_), None) => cond.push_str(&format!(" AND sub = ${}", next())),
            (None, Some(_)) => cond.push_str(&format!(" AND sid = ${}", next())),
        }
        if now.is_some() {
            cond.push_str(&format!(" AND expires > ${}", next()));
        }
        let sql = if delete {
            format!("DELETE FROM portcullis_sessions WHERE {cond} RETURNING {COLUMNS}")
        } else {
            format!("SELECT {COLUMNS} FROM portcullis_sessions WHERE {cond}")
        };
        let mut q = sqlx::query(&sql).bind(&filter.partition);
        if let Some(sub) = &filter.sub {
            q = q.bind(sub);
        }
        if let Some(sid) = &filter.sid {
            q = q.bind(sid);
        }
        if let Some(now) = now {
            q = q.bind(now);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(|e| t.fail(e))?;
        rows.iter().map(from_row).collect()
    }

    /// Writes `record`, replacing any row with the same key or (when `sid` is set) the same
    /// partition + sub + sid.
    ///
    /// Two unique indexes can conflict, and `ON CONFLICT` arbitrates only one, so concurrent
    /// creates of one session (a browser retrying the callback) could fail on the other. The
    /// write therefore runs in one transaction that first takes transaction-scoped advisory
    /// locks on the identity and then on the key (always in that order, so two creates cannot
    /// deadlock), deletes what it replaces and inserts.
    async fn upsert(&self, record: &SessionRecord, version: i64) -> Result<(), sqlx::Error> {
        const INSERT: &str = "INSERT INTO portcullis_sessions \
             (key, partition, sub, sid, created, renewed, expires, version, ticket) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        let Some(sid) = &record.sid else {
            // Only the primary key can conflict: one statement arbitrates it.
            let sql = format!(
                "{INSERT} ON CONFLICT (key) DO UPDATE SET \
                 partition = EXCLUDED.partition, sub = EXCLUDED.sub, sid = EXCLUDED.sid, \
                 created = EXCLUDED.created, renewed = EXCLUDED.renewed, \
                 expires = EXCLUDED.expires, version = EXCLUDED.version, ticket = EXCLUDED.ticket"
            );
            bind_record(sqlx::query(&sql), record, version)
                .execute(&self.pool)
                .await?;
            return Ok(());
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT pg_advisory_xact_lock($1, hashtext($2 || chr(31) || $3 || chr(31) || $4))",
        )
        .bind(LOCK_CLASS_IDENTITY)
        .bind(&record.partition)
        .bind(&record.sub)
        .bind(sid)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_CLASS_KEY)
            .bind(&record.key)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM portcullis_sessions WHERE key = $1 \
             OR (partition = $2 AND sub = $3 AND sid = $4)",
        )
        .bind(&record.key)
        .bind(&record.partition)
        .bind(&record.sub)
        .bind(sid)
        .execute(&mut *tx)
        .await?;
        bind_record(sqlx::query(INSERT), record, version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
}

/// Binds the nine columns of `record` in table order.
fn bind_record<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    record: &'q SessionRecord,
    version: i64,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    q.bind(&record.key)
        .bind(&record.partition)
        .bind(&record.sub)
        .bind(&record.sid)
        .bind(record.created)
        .bind(record.renewed)
        .bind(record.expires)
        .bind(version)
        .bind(&record.ticket)
}

/// First key of the advisory locks `upsert` takes on a session identity (partition, sub, sid).
const LOCK_CLASS_IDENTITY: i32 = 0x5043_0001;
/// First key of the advisory locks `upsert` takes on a session key.
const LOCK_CLASS_KEY: i32 = 0x5043_0002;

fn from_row(row: &PgRow) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        key: row.try_get("key").map_err(map_err)?,
        partition: row.try_get("partition").map_err(map_err)?,
        sub: row.try_get("sub").map_err(map_err)?,
        sid: row.try_get("sid").map_err(map_err)?,
        created: row.try_get("created").map_err(map_err)?,
        renewed: row.try_get("renewed").map_err(map_err)?,
        expires: row.try_get("expires").map_err(map_err)?,
        version: version_from_i64(row.try_get("version").map_err(map_err)?)?,
        ticket: row.try_get("ticket").map_err(map_err)?,
    })
}

/// A failure of the connection rather than of the statement: I/O, TLS or protocol errors,
/// and the server's own "connection exception" (SQLSTATE class 08) and shutdown codes
/// (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now).
fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// One attempt of an operation: notes whether it failed because its connection broke.
#[derive(Clone, Default)]
struct Attempt(Arc<AtomicBool>);

impl Attempt {
    /// Maps the error (see [`map_err`]) and remembers whether a retry may help.
    fn fail(&self, e: sqlx::Error) -> StoreError {
        if is_connection_error(&e) {
            self.0.store(true, Ordering::Relaxed);
        }
        map_err(e)
    }
}

/// Runs `op`; if it failed because its connection broke (a restarted server, a pooled
/// connection that died), runs it once more: the pool hands out a tested or new connection.
/// Every operation of this store is safe to repeat: each is one statement or one
/// transaction (rolled back when its connection breaks), the writes are idempotent or
/// compare-and-set, and claims carry a per-call nonce. A second failure is returned.
async fn with_retry<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut(Attempt) -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let first = Attempt::default();
    match op(first.clone()).await {
        Err(e) if first.0.load(Ordering::Relaxed) => {
            tracing::info!(error = %e, "PostgreSQL connection broke; retrying once on a fresh connection");
            op(Attempt::default()).await
        }
        r => r,
    }
}

/// Forwards `NOTIFY portcullis_invalidate` to `tx` until aborted, reconnecting with backoff.
/// Sends `All` when listening starts and whenever notifications may have been lost.
async fn listen_loop(pool: PgPool, tx: broadcast::Sender<Invalidation>) {
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = Duration::from_millis(100);
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(INVALIDATION_CHANNEL).await {
                    tracing::warn!(error = %e, "session invalidation LISTEN failed");
                } else {
                    // Anything before this point was missed.
                    let _ = tx.send(Invalidation::All);
                    backoff = Duration::from_millis(100);
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(n)) => {
                                let _ = tx.send(Invalidation::Key(n.payload().to_owned()));
                            }
                            // Connection lost and re-established: notifications in between
                            // are gone.
                            Ok(None) => {
                                let _ = tx.send(Invalidation::All);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "session invalidation listener lost");
                                break;
                            }
                        }
                    }
                    let _ = tx.send(Invalidation::All);
                }
            }
            Err(e) => tracing::warn!(error = %e, "session invalidation listener cannot connect"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn get(&self, key: &str, now: i64) -> Result<Option<SessionRecord>, StoreError> {
        bounded(with_retry(|t| async move {
            let row = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM portcullis_sessions WHERE key = $1 AND expires > $2"
            ))
            .bind(key)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| t.fail(e))?;
            row.as_ref().map(from_row).transpose()
        }))
        .await
    }

    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let version = version_to_i64(record.version)?;
        bounded(with_retry(|t| async move {
            self.upsert(record, version).await.map_err(|e| t.fail(e))
        }))
        .await
    }

    async fn update(
        &self,
        record: &SessionRecord,
        expected_version: u64,
    ) -> Result<CasOutcome, StoreError> {
        check_next_version(record, expected_version)?;
        let new_version = version_to_i64(record.version)?;
        let expected = version_to_i64(expected_version)?;
        bounded(with_retry(|t| async move {
            let done = sqlx::query(
                "UPDATE portcullis_sessions SET renewed = $1, expires = $2, version = $3, ticket = $4 \
                 WHERE key = $5 AND version = $6",
            )
            .bind(record.renewed)
            .bind(record.expires)
            .bind(new_version)
            .bind(&record.ticket)
            .bind(&record.key)
            .bind(expected)
            .execute(&self.pool)
            .await
            .map_err(|e| t.fail(e))?;
            if done.rows_affected() == 1 {
                return Ok(CasOutcome::Updated);
            }
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM portcullis_sessions WHERE key = $1")
                    .bind(&record.key)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| t.fail(e))?;
            Ok(if exists.is_some() {
                CasOutcome::Conflict
            } else {
                CasOutcome::Missing
            })
        }))
        .await
    }

    async fn delete(&self, key: &str) -> Result<Option<SessionRecord>, StoreError> {
        bounded(with_retry(|t| async move {
            let row = sqlx::query(&format!(
                "DELETE FROM portcullis_sessions WHERE key = $1 RETURNING {COLUMNS}"
            ))
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| t.fail(e))?;
            row.as_ref().map(from_row).transpose()
        }))
        .await
    }

    async fn find(
        &self,
        filter: &SessionFilter,
        now: i64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        bounded(with_retry(|t| self.select(filter, Some(now), false, t))).await
    }

    async fn delete_matching(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        bounded(with_retry(|t| self.select(filter, None, true, t))).await
    }

    async fn cleanup_expired(&self, now: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = bounded(with_retry(|t| async move {
                let mut tx = self.pool.begin().await.map_err(|e| t.fail(e))?;
                // Expired records need no invalidation: caches check `expires` themselves.
                sqlx::query("SELECT set_config('portcullis.quiet', 'on', true)")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| t.fail(e))?;
                // SKIP LOCKED: instances cleaning up at the same time share the work.
                let done = sqlx::query(
                    "DELETE FROM portcullis_sessions WHERE key IN \
                     (SELECT key FROM portcullis_sessions WHERE expires <= $1 \
                      LIMIT $2 FOR UPDATE SKIP LOCKED)",
                )
                .bind(now)
                .bind(CLEANUP_BATCH)
                .execute(&mut *tx)
                .await
                .map_err(|e| t.fail(e))?;
                tx.commit().await.map_err(|e| t.fail(e))?;
                Ok(done.rows_affected())
            }))
            .await?;
            total += n;
            if n < CLEANUP_BATCH.unsigned_abs() {
                break;
            }
        }
        bounded(with_retry(|t| async move {
            sqlx::query("DELETE FROM portcullis_claims WHERE expires <= $1")
                .bind(now_secs())
                .execute(&self.pool)
                .await
                .map_err(|e| t.fail(e))?;
            sqlx::query(
                "DELETE FROM portcullis_leases \
                 WHERE expires_ms <= (extract(epoch from clock_timestamp()) * 1000)::bigint",
            )
            .execute(&self.pool)
            .await
            .map_err(|e| t.fail(e))?;
            Ok(())
        }))
        .await?;
        Ok(total)
    }

    async fn claim_once(&self, id: &str, expires: i64) -> Result<bool, StoreError> {
        let now = now_secs();
        if expires <= now {
            return Ok(true);
        }
        let nonce = crate::util::nonce();
        let nonce = &nonce;
        bounded(with_retry(|t| async move {
            // `holder` is this call's nonce: a retry after a lost reply finds its own claim
            // and reports `true` again instead of a replay.
            let done = sqlx::query(
                "INSERT INTO portcullis_claims (id, expires, holder) VALUES ($1, $2, $4) \
                 ON CONFLICT (id) DO UPDATE SET expires = EXCLUDED.expires, holder = EXCLUDED.holder \
                 WHERE portcullis_claims.expires <= $3 OR portcullis_claims.holder = $4",
            )
            .bind(id)
            .bind(expires)
            .bind(now)
            .bind(nonce)
            .execute(&self.pool)
            .await
            .map_err(|e| t.fail(e))?;
            Ok(done.rows_affected() == 1)
        }))
        .await
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        bounded(with_retry(|t| async move {
            let done = sqlx::query(
                "INSERT INTO portcullis_leases (name, holder, expires_ms) \
                 VALUES ($1, $2, (extract(epoch from clock_timestamp()) * 1000)::bigint + $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, \
                 expires_ms = EXCLUDED.expires_ms \
                 WHERE portcullis_leases.holder = EXCLUDED.holder \
                 OR portcullis_leases.expires_ms <= (extract(epoch from clock_timestamp()) * 1000)::bigint",
            )
            .bind(name)
            .bind(holder)
            .bind(ttl_ms(ttl))
            .execute(&self.pool)
            .await
            .map_err(|e| t.fail(e))?;
            Ok(done.rows_affected() == 1)
        }))
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        bounded(with_retry(|t| async move {
            sqlx::query("DELETE FROM portcullis_leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(&self.pool)
                .await
                .map_err(|e| t.fail(e))?;
            Ok(())
        }))
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        bounded(with_retry(|t| async move {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(|e| t.fail(e))?;
            Ok(())
        }))
        .await
    }

    fn subscribe_invalidations(&self) -> Option<broadcast::Receiver<Invalidation>> {
        // Subscribe before the listener starts, so its first `All` is not missed.
        let rx = self.shared.invalidations.subscribe();
        self.shared.listener.get_or_init(|| {
            // A pool of its own: the listener holds its connection for good.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_lazy_with(self.shared.options.clone());
            let task = self
                .shared
                .runtime
                .spawn(listen_loop(pool, self.shared.invalidations.clone()));
            AbortOnDrop(task.abort_handle())
        });
        Some(rx)
    }
}
