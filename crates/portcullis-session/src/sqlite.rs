//! [`SqliteStore`]: sessions in a local SQLite file.
//!
//! For a single gateway instance that should keep its sessions across restarts. The file (and
//! its parent directory) is created on first use; the schema is created or migrated at
//! connect. The database runs in WAL mode with a busy timeout, so readers never wait for the
//! writer and concurrent writers queue instead of failing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), portcullis_session::StoreError> {
//! use portcullis_session::SqliteStore;
//! let store = SqliteStore::connect("sqlite://./portcullis-data/sessions.db").await?;
//! # Ok(()) }
//! ```
//!
//! Caveats: one host only. Several processes on the same file work (SQLite locks), several
//! hosts on a network file system do not. Cross-instance cache invalidation is not offered.

use crate::store::{CasOutcome, SessionFilter, SessionRecord, SessionStore, StoreError};
use crate::util::{
    bounded, check_next_version, map_sqlx as map_err, now_ms, now_secs, ttl_ms, version_from_i64,
    version_to_i64,
};
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Executor, Row};
use std::str::FromStr;
use std::time::Duration;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows deleted per statement by `cleanup_expired`, so the write lock is held briefly.
const CLEANUP_BATCH: i64 = 1000;

/// Ordered migrations; `portcullis_schema_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: sessions, claims, leases
    r"
    CREATE TABLE IF NOT EXISTS portcullis_sessions (
        key       TEXT PRIMARY KEY NOT NULL,
        partition TEXT NOT NULL,
        sub       TEXT NOT NULL,
        sid       TEXT,
        created   INTEGER NOT NULL,
        renewed   INTEGER NOT NULL,
        expires   INTEGER NOT NULL,
        version   INTEGER NOT NULL,
        ticket    BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS portcullis_sessions_sub ON portcullis_sessions (partition, sub);
    CREATE INDEX IF NOT EXISTS portcullis_sessions_sid ON portcullis_sessions (partition, sid);
    CREATE INDEX IF NOT EXISTS portcullis_sessions_expires ON portcullis_sessions (expires);
    -- One session per partition + sub + sid: INSERT OR REPLACE removes the old one.
    CREATE UNIQUE INDEX IF NOT EXISTS portcullis_sessions_sub_sid
        ON portcullis_sessions (partition, sub, sid) WHERE sid IS NOT NULL;
    CREATE TABLE IF NOT EXISTS portcullis_claims (
        id      TEXT PRIMARY KEY NOT NULL,
        expires INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS portcullis_leases (
        name       TEXT PRIMARY KEY NOT NULL,
        holder     TEXT NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    ",
];

const COLUMNS: &str = "key, partition, sub, sid, created, renewed, expires, version, ticket";

/// Session store on a SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path/to/file.db`,
    /// `sqlite:path`, or `sqlite::memory:` for a throw-away database) and migrates it.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);
        if !in_memory {
            if let Some(dir) = options.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Unavailable(format!(
                            "cannot create directory {}: {e}",
                            dir.display()
                        ))
                    })?;
                }
            }
        }
        let mut pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT);
        if in_memory {
            // The database lives as long as one connection to it does.
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool.connect_with(options).await.map_err(map_err)?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Creates or upgrades the schema; idempotent. Returns the schema version.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        // IMMEDIATE: take the write lock up front so two processes migrating at once queue
        // instead of failing to upgrade a read lock.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS portcullis_schema_version (version INTEGER NOT NULL)",
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
                "SQLite session schema is newer than this build"
            );
        }
        for (version, migration) in (1_i64..).zip(MIGRATIONS.iter().copied()).skip(current) {
            // A plain `&str` runs as a simple query: several statements at once. (Not
            // `raw_sql`, whose future is not `Send` for every lifetime, so callers could not
            // spawn `migrate`.)
            (&mut *tx).execute(migration).await.map_err(map_err)?;
            sqlx::query("INSERT INTO portcullis_schema_version (version) VALUES (?)")
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
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut cond = String::from("partition = ?");
        match (&filter.sub, &filter.sid) {
            (None, None) => return Err(StoreError::InvalidFilter),
            (Some(_), Some(_)) => cond.push_str(" AND sub = ? AND sid = ?"),
            (Some(_), None) => cond.push_str(" AND sub = ?"),
            (None, Some(_)) => cond.push_str(" AND sid = ?"),
        }
        if now.is_some() {
            cond.push_str(" AND expires > ?");
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
        let rows = q.fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter().map(from_row).collect()
    }
}

fn from_row(row: &SqliteRow) -> Result<SessionRecord, StoreError> {
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

#[async_trait]
impl SessionStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn get(&self, key: &str, now: i64) -> Result<Option<SessionRecord>, StoreError> {
        bounded(async {
            let row = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM portcullis_sessions WHERE key = ? AND expires > ?"
            ))
            .bind(key)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
            row.as_ref().map(from_row).transpose()
        })
        .await
    }

    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let version = version_to_i64(record.version)?;
        bounded(async {
            // One statement, so atomic: REPLACE removes a row with the same key *and* the
            // row with the same partition + sub + sid (partial unique index).
            sqlx::query(&format!(
                "INSERT OR REPLACE INTO portcullis_sessions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .bind(&record.key)
            .bind(&record.partition)
            .bind(&record.sub)
            .bind(&record.sid)
            .bind(record.created)
            .bind(record.renewed)
            .bind(record.expires)
            .bind(version)
            .bind(&record.ticket)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
            Ok(())
        })
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
        bounded(async {
            let done = sqlx::query(
                "UPDATE portcullis_sessions SET renewed = ?, expires = ?, version = ?, ticket = ? \
                 WHERE key = ? AND version = ?",
            )
            .bind(record.renewed)
            .bind(record.expires)
            .bind(new_version)
            .bind(&record.ticket)
            .bind(&record.key)
            .bind(expected)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
            if done.rows_affected() == 1 {
                return Ok(CasOutcome::Updated);
            }
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM portcullis_sessions WHERE key = ?")
                    .bind(&record.key)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?;
            Ok(if exists.is_some() {
                CasOutcome::Conflict
            } else {
                CasOutcome::Missing
            })
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<Option<SessionRecord>, StoreError> {
        bounded(async {
            let row = sqlx::query(&format!(
                "DELETE FROM portcullis_sessions WHERE key = ? RETURNING {COLUMNS}"
            ))
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
            row.as_ref().map(from_row).transpose()
        })
        .await
    }

    async fn find(
        &self,
        filter: &SessionFilter,
        now: i64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        bounded(self.select(filter, Some(now), false)).await
    }

    async fn delete_matching(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        bounded(self.select(filter, None, true)).await
    }

    async fn cleanup_expired(&self, now: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = bounded(async {
                sqlx::query(
                    "DELETE FROM portcullis_sessions WHERE key IN \
                     (SELECT key FROM portcullis_sessions WHERE expires <= ? LIMIT ?)",
                )
                .bind(now)
                .bind(CLEANUP_BATCH)
                .execute(&self.pool)
                .await
                .map_err(map_err)
            })
            .await?
            .rows_affected();
            total += n;
            if n < CLEANUP_BATCH.unsigned_abs() {
                break;
            }
        }
        bounded(async {
            sqlx::query("DELETE FROM portcullis_claims WHERE expires <= ?")
                .bind(now_secs())
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
            sqlx::query("DELETE FROM portcullis_leases WHERE expires_ms <= ?")
                .bind(now_ms())
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
            Ok(())
        })
        .await?;
        Ok(total)
    }

    async fn claim_once(&self, id: &str, expires: i64) -> Result<bool, StoreError> {
        let now = now_secs();
        if expires <= now {
            return Ok(true);
        }
        bounded(async {
            let done = sqlx::query(
                "INSERT INTO portcullis_claims (id, expires) VALUES (?, ?) \
                 ON CONFLICT (id) DO UPDATE SET expires = excluded.expires \
                 WHERE portcullis_claims.expires <= ?",
            )
            .bind(id)
            .bind(expires)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_ms();
        bounded(async {
            let done = sqlx::query(
                "INSERT INTO portcullis_leases (name, holder, expires_ms) VALUES (?, ?, ?) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_ms = excluded.expires_ms \
                 WHERE portcullis_leases.holder = excluded.holder \
                 OR portcullis_leases.expires_ms <= ?",
            )
            .bind(name)
            .bind(holder)
            .bind(now.saturating_add(ttl_ms(ttl)))
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        bounded(async {
            sqlx::query("DELETE FROM portcullis_leases WHERE name = ? AND holder = ?")
                .bind(name)
                .bind(holder)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        bounded(async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }
}
