//! Server-side sessions: from the cookie's opaque id to a decrypted ticket.
//!
//! ```text
//! cookie: session id (random, 256 bit) ──SHA-256──▶ store key ──get──▶ SessionRecord
//!                                                                      │ open(keyring, aad = key)
//!                                                                      ▼
//!                                                        Ticket { claims, sid, tokens }
//! ```
//! Storage is pluggable ([`portcullis_session::SessionStore`]); this module owns lifetimes
//! (idle and absolute timeouts), ticket encryption and the rules for what an unreadable or
//! missing session means:
//! - cookie present but its session is gone, expired or unreadable → anonymous, clear cookie;
//! - store unreachable → 503, the cookie is kept (a hiccup must not log anyone out).

mod cache;
mod keys;
mod manager;
mod ticket;

pub use keys::{Key, KeyRing, SealError};
pub use manager::{ActiveSession, Lookup, Sessions, TUNNEL_RECHECK};
pub use ticket::{Claim, Ticket};
