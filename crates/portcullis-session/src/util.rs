//! Small helpers shared by the store implementations.

use crate::store::{SessionRecord, StoreError};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a networked store may take to establish a connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound for one store operation, however many round trips it needs. A hung network
/// turns into `Unavailable` (503) instead of a request that never finishes.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Wall clock in milliseconds since the epoch. Only for leases and claims, whose contract has
/// no `now` parameter; sessions always use the caller's clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A value unique to this call within this process and, in practice, across processes (pid,
/// time, counter): marks a claim so a retried call can recognise its own write.
pub(crate) fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn now_secs() -> i64 {
    now_ms() / 1000
}

pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Runs one store operation with [`OP_TIMEOUT`].
pub(crate) async fn bounded<T>(
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer within {} s",
            OP_TIMEOUT.as_secs()
        ))),
    }
}

/// The CAS contract: the new record carries `expected_version + 1`.
pub(crate) fn check_next_version(
    record: &SessionRecord,
    expected_version: u64,
) -> Result<(), StoreError> {
    if expected_version.checked_add(1) == Some(record.version) {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "update must carry version {} + 1, got {}",
            expected_version, record.version
        )))
    }
}

pub(crate) fn version_to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Config(format!("version {v} out of range")))
}

pub(crate) fn version_from_i64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative version {v}")))
}

/// Tasks (subscribers) that end with the store that started them.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Maps a sqlx error: anything about reaching or talking to the database is `Unavailable`
/// (503, keep the cookie), undecodable rows are `Corrupt`.
pub(crate) fn map_sqlx(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
        sqlx::Error::Configuration(_) => StoreError::Config(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}
