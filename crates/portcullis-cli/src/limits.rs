//! Limits against hostile traffic (`[server]` and `[[routes]] max_body`): their typed form,
//! their parsing, and the request-body limit applied in front of the gateway's router.
//!
//! The connection-level limits (header size, timeouts, connection count, HTTP/2) are applied
//! by [`crate::listener`]; the per-request ones ([`Admission`]: head size, body size) are
//! checked by the listener before the router runs, and answer with the gateway's own error
//! shapes ([`portcullis::error::GatewayError::PayloadTooLarge`] and friends).

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use portcullis::error::GatewayError;
use serde::Deserialize;

/// Limits of the public listener. [`Limits::default`] holds the documented defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head in bytes (request line and headers; HTTP/2: the decoded header
    /// list, RFC 7541 §4.1 sizes). Beyond it: 431.
    pub max_header_size: usize,
    /// Time a client has to send a complete request head, counted from its first byte (and
    /// for a new connection, from the accept). Beyond it the connection is closed (408 when
    /// part of a head arrived on plain HTTP/1.1).
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Largest request body in bytes on routes without their own `max_body`, and on the
    /// gateway's own endpoints. Beyond it: 413.
    pub max_request_body: u64,
    /// `(route path prefix, max body in bytes)` for routes with `max_body`.
    pub route_body_limits: Vec<(String, u64)>,
    /// Connections served at once. Further connections wait in the kernel's accept queue
    /// until one closes; open connections keep being served.
    pub max_connections: usize,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 §6.5.2).
    pub http2_max_concurrent_streams: u32,
    /// Streams a client may open and reset before the gateway accepted them (the "rapid
    /// reset" attack, CVE-2023-44487); beyond it the connection gets `GOAWAY
    /// ENHANCE_YOUR_CALM`.
    pub http2_max_pending_reset_streams: usize,
    /// After SIGTERM, `/readyz` answers 503 for this long while new connections are still
    /// accepted (time for a load balancer to take the instance out); then the listener closes.
    pub shutdown_delay: Duration,
    /// After the listener closed, in-flight requests (streams included) get this long to
    /// finish; then the process exits anyway.
    pub shutdown_grace: Duration,
    /// Connection worker threads, each with a single-threaded runtime that serves its
    /// connections from accept to close (see [`crate::workers`]); default: 1 on hosts with up
    /// to two CPUs, else 0 ([`crate::workers::default_count`]); `0`: connections are served
    /// by the main (work-stealing) runtime.
    pub workers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_size: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_request_body: 10 * 1024 * 1024,
            route_body_limits: Vec::new(),
            max_connections: 4096,
            http2_max_concurrent_streams: 100,
            http2_max_pending_reset_streams: 20,
            shutdown_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(30),
            workers: crate::workers::default_count(),
        }
    }
}

/// Smallest `max_header_size` (the HTTP/1 parser's minimum buffer).
pub const MIN_HEADER_SIZE: usize = 8 * 1024;

/// A size in the configuration file: a number of bytes or a string with a unit
/// (`"64KiB"`, `"10MB"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    /// Bytes.
    Bytes(u64),
    /// A number and a unit: B, kB/KB (1000), KiB (1024), MB, MiB, GB, GiB.
    Text(String),
}

/// Parses a [`RawSize`]; `None` when the text is not a size.
pub fn parse_size(raw: &RawSize) -> Option<u64> {
    let text = match raw {
        RawSize::Bytes(n) => return Some(*n),
        RawSize::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" => 1024,
        "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// The size setting `name`, or `default` when absent; an unreadable value is recorded in
/// `errors`.
pub fn size(raw: Option<&RawSize>, name: &str, default: u64, errors: &mut Vec<String>) -> u64 {
    match raw {
        None => default,
        Some(r) => parse_size(r).unwrap_or_else(|| {
            errors.push(format!(
                "{name} {r:?} is not a size like 65536, \"64KiB\" or \"10MB\""
            ));
            default
        }),
    }
}

/// The size of a request head as the header-size limit counts it: the request line and each
/// field as `name: value\r\n` (HTTP/2 and HTTP/1 alike). hyper bounds the head first (HTTP/1
/// read buffer, HTTP/2 header list), but only roughly: [`Admission`] checks this exact size.
pub fn head_size<B>(request: &axum::http::Request<B>) -> usize {
    let line = request.method().as_str().len()
        + request
            .uri()
            .path_and_query()
            .map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len()
        + 1;
    request.headers().iter().fold(line, |n, (name, value)| {
        n + name.as_str().len() + value.len() + 4
    })
}

/// The per-request checks of the public listener, run before the gateway's router sees a
/// request: a draining `/readyz` (503), the head size (431) and the body limit (413).
#[derive(Debug, Clone)]
pub struct Admission {
    draining: crate::listener::Draining,
    max_header_size: usize,
    bodies: BodyLimits,
}

impl Admission {
    /// The checks for `limits`; `/readyz` answers 503 once `draining` is set.
    pub fn new(limits: &Limits, draining: crate::listener::Draining) -> Self {
        Self {
            draining,
            max_header_size: limits.max_header_size,
            bodies: BodyLimits::new(limits),
        }
    }

    /// The request to hand to the router (its body cut at the path's limit), or the answer
    /// that ends it here.
    ///
    /// - `GET /readyz` while draining: 503, so a load balancer stops sending new work while
    ///   in-flight requests finish;
    /// - a head over `max_header_size` ([`head_size`]): 431;
    /// - a declared `Content-Length` over the path's limit ([`BodyLimits::for_path`]): 413
    ///   at once; any other body is cut at the limit (the handler or the proxied upstream
    ///   call then fails with 413 as well). A request without a body is passed as it is.
    ///
    /// # Errors
    /// The response to send instead of routing the request.
    #[allow(clippy::result_large_err)]
    pub fn admit<B>(&self, request: axum::http::Request<B>) -> Result<Request, Response>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        if self.draining.is_set() && request.uri().path() == "/readyz" {
            return Err(
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response(),
            );
        }
        if head_size(&request) > self.max_header_size {
            return Err(GatewayError::HeaderFieldsTooLarge.into_response());
        }
        if request.body().is_end_stream() {
            return Ok(request.map(Body::new));
        }
        let limit = self.bodies.for_path(request.uri().path());
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(GatewayError::PayloadTooLarge.into_response());
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(request.map(|body| Body::new(http_body_util::Limited::new(body, limit))))
    }
}

/// The request-body limit for each path: the longest matching route's `max_body`, else the
/// global [`Limits::max_request_body`].
#[derive(Debug, Clone)]
pub struct BodyLimits {
    default: u64,
    /// Longest prefix first.
    routes: Vec<(String, u64)>,
}

impl BodyLimits {
    /// From the listener's limits.
    pub fn new(limits: &Limits) -> Self {
        // One entry per prefix, the largest limit (host frontends may share a prefix: the
        // route itself applies its exact limit), longest prefix first.
        let mut routes: Vec<(String, u64)> = Vec::new();
        for (prefix, limit) in &limits.route_body_limits {
            match routes.iter_mut().find(|(p, _)| p == prefix) {
                Some(entry) => entry.1 = entry.1.max(*limit),
                None => routes.push((prefix.clone(), *limit)),
            }
        }
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Self {
            default: limits.max_request_body,
            routes,
        }
    }

    /// The limit in bytes for a request to `path`.
    pub fn for_path(&self, path: &str) -> u64 {
        self.routes
            .iter()
            .find(|(prefix, _)| {
                path.strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .map_or(self.default, |(_, limit)| *limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units_parse_and_garbage_does_not() {
        let t = |s: &str| parse_size(&RawSize::Text(s.into()));
        assert_eq!(t("64KiB"), Some(65536));
        assert_eq!(t("64 kB"), Some(64000));
        assert_eq!(t("10MiB"), Some(10 * 1024 * 1024));
        assert_eq!(t("1gb"), Some(1_000_000_000));
        assert_eq!(t("512"), Some(512));
        assert_eq!(parse_size(&RawSize::Bytes(7)), Some(7));
        for bad in [
            "",
            "KiB",
            "-1",
            "1.5MiB",
            "10 parsecs",
            "99999999999999999999GiB",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn body_limit_is_the_longest_matching_route_prefix_else_the_default() {
        let limits = BodyLimits::new(&Limits {
            max_request_body: 100,
            route_body_limits: vec![("/api".into(), 10), ("/api/upload".into(), 1000)],
            ..Limits::default()
        });
        assert_eq!(limits.for_path("/api"), 10);
        assert_eq!(limits.for_path("/api/x"), 10);
        assert_eq!(limits.for_path("/api/upload/big"), 1000);
        assert_eq!(
            limits.for_path("/api-other/x"),
            100,
            "a prefix is matched on whole segments"
        );
        assert_eq!(limits.for_path("/bff/backchannel"), 100);
    }
}
