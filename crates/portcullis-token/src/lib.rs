//! Token management for OAuth 2.0 clients (work in progress).
pub mod clock;
pub mod secret;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use secret::Secret;
