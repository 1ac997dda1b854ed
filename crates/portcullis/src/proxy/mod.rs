//! Forwarding API calls to fixed upstreams.
//!
//! A route maps a path prefix to one upstream URL; the prefix is replaced by the upstream's
//! path (`/api/orders` → `https://orders/v1`: `/api/orders/7?x=1` → `https://orders/v1/7?x=1`).
//! The destination is never taken from the request, so the gateway is not an open proxy, and
//! dot segments (raw or percent-encoded) are refused so a path cannot climb out of the
//! upstream's base path.
//!
//! Request hygiene: the browser's `Cookie`, `Authorization` and `DPoP` headers and all
//! hop-by-hop headers are removed; `Host` is the upstream's; `X-Forwarded-*` are set by us
//! (client-supplied values are replaced unless a trusted proxy is configured). Bodies stream
//! in both directions; nothing is buffered, so server-sent events flow frame by frame.
//!
//! Each upstream request carries its own `Authorization` header built from a
//! [`portcullis_token::ManagedToken`] for exactly this request; the pooled client has no
//! default headers, so one user's token can never ride on another user's request.

mod forward;
mod routes;

pub use forward::{ForwardContext, Forwarder, SessionEnd};
pub use routes::{Route, RouteTable};
