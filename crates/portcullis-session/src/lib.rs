//! Server-side session storage for Portcullis.
//!
//! The browser holds only an opaque session id; everything else (claims, tokens) lives
//! server-side in a [`SessionStore`], encrypted by the gateway before it gets here. This crate
//! defines the storage contract ([`store`]) and four implementations:
//!
//! | URL | store | for |
//! |-----|-------|-----|
//! | `memory` | [`MemoryStore`] | one instance, sessions lost on restart; tests |
//! | `sqlite://path/sessions.db` | [`SqliteStore`] | one instance, sessions survive restarts |
//! | `postgres://...`, `postgresql://...` | [`PostgresStore`] | several instances |
//! | `redis://...`, `rediss://...` | [`RedisStore`] | several instances |
//! | `redis+cluster://h1:p1,h2:p2`, `rediss+cluster://...` | [`RedisStore`] on Redis Cluster | several instances |
//!
//! Why a contract with several backends: the gateway must behave the same whatever the
//! deployment, and the hard parts (a repeated login replacing the old session instead of
//! failing on a duplicate key, compare-and-set updates for token refresh, "store down" being
//! an error and never "no session") are easy to get subtly wrong per backend. One contract
//! test suite (`tests/contract.rs`) runs against all four.
//!
//! ```no_run
//! # async fn demo() -> Result<(), portcullis_session::StoreError> {
//! use portcullis_session::{connect, SessionFilter};
//!
//! let store = connect("sqlite://./portcullis-data/sessions.db").await?;
//! let now = 1_700_000_000;
//! if let Some(session) = store.get("base64url-sha256-of-the-cookie", now).await? {
//!     println!("session of {} expires at {}", session.sub, session.expires);
//! }
//! // Back-channel logout carrying only a sid:
//! let filter = SessionFilter { partition: "spa".into(), sub: None, sid: Some("abc".into()) };
//! let ended = store.delete_matching(&filter).await?;
//! # let _ = ended; Ok(()) }
//! ```
//!
//! Caveats:
//! - Every method can fail with [`StoreError::Unavailable`]; callers answer 503 and keep the
//!   cookie. Networked stores bound each operation (a few seconds) so a hung network does not
//!   hang requests.
//! - [`PostgresStore`] and [`RedisStore`] publish invalidations for in-process caches
//!   ([`SessionStore::subscribe_invalidations`]); memory and SQLite do not need to.
//! - Redis Cluster works (every atomic step stays in one hash slot), with caveats listed in
//!   [`redis`].

#![warn(missing_docs)]

pub mod memory;
pub mod postgres;
pub mod redis;
pub mod sqlite;
pub mod store;
mod util;

pub use crate::memory::MemoryStore;
pub use crate::postgres::PostgresStore;
pub use crate::redis::RedisStore;
pub use crate::sqlite::SqliteStore;
pub use crate::store::{
    CasOutcome, Invalidation, SessionFilter, SessionRecord, SessionStore, StoreError,
};

use std::sync::Arc;

/// Opens the store a URL names, by scheme: `memory`, `sqlite:`, `postgres:` /
/// `postgresql:`, `redis:` / `rediss:` / `redis+cluster:` / `rediss+cluster:`. Schema
/// creation and migration happen here.
///
/// Errors: [`StoreError::Config`] for an unknown scheme or a malformed URL,
/// [`StoreError::Unavailable`] if the backend cannot be reached.
pub async fn connect(url: &str) -> Result<Arc<dyn SessionStore>, StoreError> {
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme)
        .or_else(|| url.eq_ignore_ascii_case("memory").then_some(url))
        .unwrap_or_default()
        .to_ascii_lowercase();
    Ok(match scheme.as_str() {
        "memory" => Arc::new(MemoryStore::new()),
        "sqlite" => Arc::new(SqliteStore::connect(url).await?),
        "postgres" | "postgresql" => Arc::new(PostgresStore::connect(url).await?),
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => {
            Arc::new(RedisStore::connect(url).await?)
        }
        other => {
            // Echo the scheme only if it looks like one: the rest may hold a password.
            let shown = if !other.is_empty()
                && other.len() <= 16
                && other
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            {
                format!("{other:?}")
            } else {
                "(none)".to_owned()
            };
            return Err(StoreError::Config(format!(
                "unknown session store scheme {shown} (expected memory, sqlite, postgres, \
                 postgresql, redis, rediss, redis+cluster or rediss+cluster)"
            )));
        }
    })
}
