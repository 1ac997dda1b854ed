//! Server-side session storage (work in progress).
pub mod store;

pub use store::{CasOutcome, SessionFilter, SessionRecord, SessionStore, StoreError};
