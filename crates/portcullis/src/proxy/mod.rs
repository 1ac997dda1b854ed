//! Forwarding API calls to fixed upstreams.
//!
//! A route maps a path prefix to one upstream URL; the prefix is replaced by the upstream's
//! path (`/api/orders` → `https://orders/v1`: `/api/orders/7?x=1` → `https://orders/v1/7?x=1`).
//! The destination is never taken from the request, so the gateway is not an open proxy, and
//! [`check_path`] refuses every path a common upstream server could normalise out of the
//! upstream's base path (`..;`, `%2e%2e`, `%252e`, `\`, `%2f`, ...). [`check_method`] refuses
//! `CONNECT`, `TRACE` and `TRACK`.
//!
//! Request hygiene: the browser's `Cookie`, `Authorization` and `DPoP` headers, all
//! hop-by-hop headers and the path/method rewrite headers are removed; `Host` is the
//! upstream's; client-IP and forwarding claims (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`,
//! ...) are dropped and `X-Forwarded-*` set by us, unless a trusted proxy is configured.
//! Bodies stream in both directions; nothing is buffered, so server-sent events flow frame
//! by frame. A request body the browser breaks is the browser's fault (400), not the
//! upstream's (502).
//!
//! Each upstream request carries its own `Authorization` header built from a
//! [`portcullis_token::ManagedToken`] for exactly this request; the pooled client has no
//! default headers, so one user's token can never ride on another user's request.

mod coalesce;
pub mod dpop;
mod forward;
mod routes;

#[cfg(test)]
pub(crate) use forward::strip_own_cookies;
pub use forward::{ForwardContext, Forwarder, SessionEnd};
pub use routes::{
    canonical_path, check_method, check_path, limit_body, Guard, PathRefusal, Route, RouteTable,
    MAX_DECODE_ROUNDS, REFUSED_METHODS,
};
