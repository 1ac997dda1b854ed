//! An injectable clock.
//!
//! Everything that compares against "now" (token expiry, session timeouts, ID-token
//! `exp`/`iat`) asks a [`Clock`] instead of the ambient system time, so tests move time
//! instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Source of the current time, in whole seconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time, whole seconds since the Unix epoch.
    fn now_unix(&self) -> i64;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            // A clock before 1970 is a broken host; treat it as the epoch rather than panic.
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to. For tests.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock standing at `now_unix` (seconds since the Unix epoch) until moved.
    pub fn new(now_unix: i64) -> Self {
        Self(Arc::new(AtomicI64::new(now_unix)))
    }
    /// Moves the clock by `secs` seconds (negative moves it back).
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    /// Sets the clock to `now_unix` (seconds since the Unix epoch).
    pub fn set(&self, now_unix: i64) {
        self.0.store(now_unix, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;
