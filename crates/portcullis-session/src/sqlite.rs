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
//! # Changes made by other processes
//!
//! `portcullis sessions end` runs in its own process, and a gateway's in-process cache must
//! not go on serving a session it ended. Triggers write the key of every updated, replaced
//! or (live) deleted record to a change log table (`portcullis_changes`, the last
//! 10,000 entries kept); [`SessionStore::poll_changes`] returns the keys logged since the
//! previous call. The gateway calls it before every cache hit, so an end takes effect on the
//! very next request. Cheap when nothing changed, and no query then:
//!
//! - On Linux, an inotify watch on the database's directory reports every write to the
//!   database file and its write-ahead log (and their creation, removal or renaming); the
//!   call drains it with one non-blocking `read` and reads the log only after such an event.
//!   That `read` is what makes the next request see the write: a watch registered with a
//!   tokio runtime's I/O driver instead would only see events that driver has taken, which
//!   the runtime that connected the store (the gateway's main runtime, while requests are
//!   served by connection workers) does only when one of its threads is idle in `epoll_wait`.
//! - Elsewhere (or when inotify cannot be set up), the call compares the length and
//!   modification time of both files with those seen at the last log read (two `stat` calls)
//!   and reads the log when they differ.
//!
//! Equal metadata, or no event, does not prove "no change" for a moment after a write: an
//! event is queued when the log frames are written, a moment before the commit is visible to
//! readers, and a modification time has clock-tick granularity (a second write in the same
//! tick that does not change a file's length keeps both). So for a while after a write (1 s
//! after an event, 3 s after a modification time) the log is also read again, at most every
//! 100 ms: such a change is seen within 100 ms, every other one on the next call.
//!
//! Caveats: one host only. Several processes on the same file work (SQLite locks), several
//! hosts on a network file system do not.

use crate::store::{
    CasOutcome, Invalidation, SessionFilter, SessionRecord, SessionStore, StoreError,
};
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
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
    // 2: the change log other processes read (see "Changes made by other processes")
    r"
    CREATE TABLE IF NOT EXISTS portcullis_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL
    );
    CREATE TRIGGER IF NOT EXISTS portcullis_sessions_changed_update
        AFTER UPDATE ON portcullis_sessions
        BEGIN INSERT INTO portcullis_changes (key) VALUES (OLD.key); END;
    -- Deleting an expired record changes nothing a reader could serve (readers check expiry).
    CREATE TRIGGER IF NOT EXISTS portcullis_sessions_changed_delete
        AFTER DELETE ON portcullis_sessions
        WHEN OLD.expires > CAST(strftime('%s', 'now') AS INTEGER)
        BEGIN INSERT INTO portcullis_changes (key) VALUES (OLD.key); END;
    -- INSERT OR REPLACE deletes without firing delete triggers: log what it will replace.
    CREATE TRIGGER IF NOT EXISTS portcullis_sessions_changed_replace
        BEFORE INSERT ON portcullis_sessions
        BEGIN
            INSERT INTO portcullis_changes (key)
            SELECT key FROM portcullis_sessions
            WHERE key = NEW.key
               OR (NEW.sid IS NOT NULL AND partition = NEW.partition AND sub = NEW.sub
                   AND sid = NEW.sid);
        END;
    ",
];

/// Change-log rows kept for slow readers; a reader that fell further behind drops its
/// whole cache.
const CHANGES_KEPT: i64 = 10_000;
/// A file modified less than this long ago may be modified again without its modification
/// time changing (timestamp granularity: a clock tick, or whole seconds on some file
/// systems), so its metadata does not prove "no change" yet.
const MTIME_MARGIN: Duration = Duration::from_secs(3);
/// While the files are inside [`MTIME_MARGIN`] and their metadata is unchanged, the change log
/// is read again at most this often (a gateway under load with sessions sliding writes the
/// file every few seconds; reading the log on every request cost a query per request).
const UNSETTLED_RECHECK: Duration = Duration::from_millis(100);
/// How long after an inotify event the files count as "just written" (the commit that
/// caused it may become visible to readers a moment after the event).
#[cfg(target_os = "linux")]
const EVENT_MARGIN: Duration = Duration::from_secs(1);

const COLUMNS: &str = "key, partition, sub, sid, created, renewed, expires, version, ticket";

/// Session store on a SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Change detection for a file database (`None` in memory: one process only).
    watch: Option<Arc<ChangeWatch>>,
}

/// What [`SessionStore::poll_changes`] needs: the files to watch and the log position.
#[derive(Debug)]
struct ChangeWatch {
    /// The database file and its write-ahead log.
    files: [PathBuf; 2],
    state: tokio::sync::Mutex<WatchState>,
}

#[derive(Debug)]
struct WatchState {
    /// How a poll learns that the files may have changed.
    detector: Detector,
    /// Whether the log was read since the last failed read (the first poll always reads).
    primed: bool,
    /// When the change signal was taken before the last log read.
    read_at: std::time::Instant,
    /// Highest change-log `seq` seen.
    cursor: i64,
}

/// The change signal of [`SessionStore::poll_changes`].
enum Detector {
    /// inotify on the database's directory: one non-blocking `read` per poll.
    #[cfg(target_os = "linux")]
    Events {
        inotify: inotify::Inotify,
        /// File names that count: the database and its write-ahead log.
        names: [std::ffi::OsString; 2],
        /// When the last event that counts was drained.
        last_event: Option<std::time::Instant>,
    },
    /// Length and modification time of both files (two `stat` calls per poll).
    Metadata {
        /// Metadata taken just before the last successful log read.
        baseline: Option<Fingerprint>,
        /// Metadata taken by the current poll, kept as `baseline` once the log is read.
        pending: Option<Fingerprint>,
    },
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            #[cfg(target_os = "linux")]
            Self::Events { .. } => f.write_str("Detector::Events"),
            Self::Metadata { .. } => f.write_str("Detector::Metadata"),
        }
    }
}

/// What a poll saw.
struct Signal {
    /// Something was written since the last observation.
    changed: bool,
    /// Nothing was written lately, so "no change" can be trusted.
    quiet: bool,
}

impl Detector {
    /// inotify on the directory of `files[0]` when available, file metadata otherwise.
    fn new(files: &[PathBuf; 2]) -> Self {
        #[cfg(target_os = "linux")]
        {
            let dir = match files[0].parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let names = files
                .each_ref()
                .map(|f| f.file_name().map(ToOwned::to_owned).unwrap_or_default());
            let mask = inotify::WatchMask::MODIFY
                | inotify::WatchMask::CREATE
                | inotify::WatchMask::DELETE
                | inotify::WatchMask::MOVED_FROM
                | inotify::WatchMask::MOVED_TO
                | inotify::WatchMask::DELETE_SELF
                | inotify::WatchMask::MOVE_SELF;
            match inotify::Inotify::init().and_then(|i| {
                i.watches().add(&dir, mask)?;
                Ok(i)
            }) {
                Ok(inotify) => {
                    return Self::Events {
                        inotify,
                        names,
                        last_event: None,
                    }
                }
                Err(e) => tracing::info!(
                    error = %e,
                    dir = %dir.display(),
                    "no inotify watch on the session database; polling file metadata instead"
                ),
            }
        }
        Self::Metadata {
            baseline: None,
            pending: None,
        }
    }

    fn observe(&mut self, files: &[PathBuf; 2]) -> Signal {
        match self {
            #[cfg(target_os = "linux")]
            Self::Events {
                inotify,
                names,
                last_event,
            } => {
                let mut changed = false;
                let mut lost = false;
                let mut buffer = [0u8; 4096];
                loop {
                    match inotify.read_events(&mut buffer) {
                        Ok(events) => {
                            for event in events {
                                let mask = event.mask;
                                if mask.intersects(
                                    inotify::EventMask::IGNORED
                                        | inotify::EventMask::DELETE_SELF
                                        | inotify::EventMask::MOVE_SELF
                                        | inotify::EventMask::UNMOUNT,
                                ) {
                                    lost = true;
                                }
                                changed |= mask.contains(inotify::EventMask::Q_OVERFLOW)
                                    || event.name.is_some_and(|n| names.iter().any(|m| m == n));
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            lost = true;
                            break;
                        }
                    }
                }
                if lost {
                    // The directory went away or the watch broke: metadata from now on.
                    tracing::warn!(
                        "inotify watch on the session database lost; polling file metadata instead"
                    );
                    *self = Self::Metadata {
                        baseline: None,
                        pending: None,
                    };
                    return self.observe(files);
                }
                let now = std::time::Instant::now();
                if changed {
                    *last_event = Some(now);
                }
                Signal {
                    changed,
                    quiet: last_event.is_none_or(|t| now.duration_since(t) >= EVENT_MARGIN),
                }
            }
            Self::Metadata { baseline, pending } => {
                let fp = fingerprint(files);
                let signal = Signal {
                    changed: baseline.as_ref() != Some(&fp),
                    quiet: settled(&fp),
                };
                *pending = Some(fp);
                signal
            }
        }
    }

    /// The log was read after the last [`Detector::observe`].
    fn read(&mut self) {
        if let Self::Metadata { baseline, pending } = self {
            *baseline = pending.take();
        }
    }
}

/// Length and modification time of each watched file (`None`: missing).
type Fingerprint = [Option<(u64, SystemTime)>; 2];

fn fingerprint(files: &[PathBuf; 2]) -> Fingerprint {
    files.each_ref().map(|f| {
        std::fs::metadata(f)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)))
    })
}

/// Whether every file of `fp` was last modified long enough ago that a later write must
/// change its modification time.
fn settled(fp: &Fingerprint) -> bool {
    let now = SystemTime::now();
    fp.iter().flatten().all(|(_, mtime)| {
        now.duration_since(*mtime)
            .is_ok_and(|age| age >= MTIME_MARGIN)
    })
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
        let file = options.get_filename().to_path_buf();
        let pool = pool.connect_with(options).await.map_err(map_err)?;
        let mut store = Self { pool, watch: None };
        store.migrate().await?;
        if !in_memory {
            let mut wal = file.clone().into_os_string();
            wal.push("-wal");
            let cursor: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM portcullis_changes")
                .fetch_one(&store.pool)
                .await
                .map_err(map_err)?;
            let files = [file, PathBuf::from(wal)];
            store.watch = Some(Arc::new(ChangeWatch {
                state: tokio::sync::Mutex::new(WatchState {
                    detector: Detector::new(&files),
                    primed: false,
                    read_at: std::time::Instant::now(),
                    cursor: cursor.unwrap_or(0),
                }),
                files,
            }));
        }
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
            sqlx::query(
                "DELETE FROM portcullis_changes \
                 WHERE seq <= (SELECT MAX(seq) FROM portcullis_changes) - ?",
            )
            .bind(CHANGES_KEPT)
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

    fn polls_changes(&self) -> bool {
        self.watch.is_some()
    }

    async fn poll_changes(&self) -> Result<Vec<Invalidation>, StoreError> {
        let Some(watch) = &self.watch else {
            return Ok(Vec::new());
        };
        let mut state = watch.state.lock().await;
        // The signal first, the log second: a write after this point signals again, so the
        // next poll reads the log again.
        let signal = state.detector.observe(&watch.files);
        let taken = std::time::Instant::now();
        if state.primed
            && !signal.changed
            && (signal.quiet || taken.duration_since(state.read_at) < UNSETTLED_RECHECK)
        {
            return Ok(Vec::new());
        }
        // Until this read succeeds, every poll reads (the drained signal is gone).
        state.primed = false;
        let cursor = state.cursor;
        let (changes, new_cursor) = bounded(async {
            let (low, high): (Option<i64>, Option<i64>) =
                sqlx::query_as("SELECT MIN(seq), MAX(seq) FROM portcullis_changes")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?;
            let high = high.unwrap_or(cursor).max(cursor);
            if high == cursor {
                return Ok((Vec::new(), cursor));
            }
            if low.is_some_and(|low| low > cursor + 1) || high - cursor > CHANGES_KEPT {
                // Fell behind the pruned log: some changes are unknown.
                return Ok((vec![Invalidation::All], high));
            }
            let keys: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT key FROM portcullis_changes WHERE seq > ? AND seq <= ?",
            )
            .bind(cursor)
            .bind(high)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
            Ok((keys.into_iter().map(Invalidation::Key).collect(), high))
        })
        .await?;
        state.cursor = new_cursor;
        state.detector.read();
        state.primed = true;
        state.read_at = taken;
        Ok(changes)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failure report

    use super::*;

    fn record(key: &str, version: u64) -> SessionRecord {
        let now = now_secs();
        SessionRecord {
            key: key.to_owned(),
            partition: "p".into(),
            sub: "alice".into(),
            sid: None,
            created: now,
            renewed: now,
            expires: now + 3600,
            version,
            ticket: vec![version as u8],
        }
    }

    /// Updates record `k` through `cli` to each of `versions` (from `versions.start - 1`);
    /// after each, `gateway`'s next poll must report `k`.
    async fn each_update_is_seen_by_the_next_poll(
        gateway: &SqliteStore,
        cli: &SqliteStore,
        versions: std::ops::Range<u64>,
        context: &str,
    ) {
        for version in versions {
            let outcome = cli
                .update(&record("k", version), version - 1)
                .await
                .unwrap();
            assert_eq!(outcome, CasOutcome::Updated);
            assert_eq!(
                gateway.poll_changes().await.unwrap(),
                vec![Invalidation::Key("k".into())],
                "write {version} seen by the next poll ({context})"
            );
        }
    }

    /// Every write of another connection (another process: `portcullis sessions end`) is
    /// reported by the very next poll, write after write with no pause between them, by both
    /// change signals; a poll right after one that read the log does not read it again.
    async fn every_write_is_reported_by_the_next_poll(metadata: bool) {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-sqlite-signal-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let url = format!("sqlite://{}", dir.join("sessions.db").display());
        let gateway = SqliteStore::connect(&url).await.unwrap();
        let cli = SqliteStore::connect(&url).await.unwrap();
        let watch = gateway.watch.clone().unwrap();
        if metadata {
            watch.state.lock().await.detector = Detector::Metadata {
                baseline: None,
                pending: None,
            };
        } else {
            assert!(
                matches!(watch.state.lock().await.detector, Detector::Events { .. }),
                "inotify is available on Linux"
            );
        }
        gateway.create(&record("k", 1)).await.unwrap();
        let _ = gateway.poll_changes().await.unwrap();
        let read_at = watch.state.lock().await.read_at;
        assert!(gateway.poll_changes().await.unwrap().is_empty());
        assert_eq!(
            watch.state.lock().await.read_at,
            read_at,
            "no write, no log read"
        );
        each_update_is_seen_by_the_next_poll(
            &gateway,
            &cli,
            2..12,
            &format!("metadata: {metadata}"),
        )
        .await;
        assert!(cli.delete("k").await.unwrap().is_some());
        assert_eq!(
            gateway.poll_changes().await.unwrap(),
            vec![Invalidation::Key("k".into())]
        );
        drop((gateway, cli));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn inotify_signal_reports_every_write_of_another_process() {
        every_write_is_reported_by_the_next_poll(false).await;
    }

    /// A write of another process is reported by the very next poll, whatever the runtime
    /// that connected the store is doing meanwhile: here, a setup runtime that no thread
    /// drives any more, or whose only thread is busy (the gateway's main runtime serving a
    /// reload while a connection worker serves the request). Nothing but that runtime would
    /// take the write's inotify event if the watch waited for its I/O driver.
    fn a_write_is_seen_by_the_next_poll_while_the_connecting_runtime(busy: bool) {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-sqlite-idle-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let url = format!("sqlite://{}", dir.join("sessions.db").display());
        let setup = if busy {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let gateway = setup.block_on(SqliteStore::connect(&url)).unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        if busy {
            // Holds the runtime's only worker thread until the end of the test.
            setup.spawn(async move {
                started.send(()).unwrap();
                let _ = released.recv();
            });
            running.recv().unwrap();
        }
        let serving = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        serving.block_on(async {
            let cli = SqliteStore::connect(&url).await.unwrap();
            cli.create(&record("k", 1)).await.unwrap();
            let _ = gateway.poll_changes().await.unwrap();
            each_update_is_seen_by_the_next_poll(&gateway, &cli, 2..5, &format!("busy: {busy}"))
                .await;
        });
        drop(release);
        drop(gateway);
        drop(setup);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_write_is_seen_by_the_next_poll_while_the_connecting_runtime_is_not_driven() {
        a_write_is_seen_by_the_next_poll_while_the_connecting_runtime(false);
    }

    #[test]
    fn a_write_is_seen_by_the_next_poll_while_the_connecting_runtime_is_busy() {
        a_write_is_seen_by_the_next_poll_while_the_connecting_runtime(true);
    }

    #[tokio::test]
    async fn metadata_signal_reports_every_write_of_another_process() {
        every_write_is_reported_by_the_next_poll(true).await;
    }
}
