//! Request telemetry: the per-request span (OpenTelemetry HTTP semantic conventions), W3C
//! trace-context propagation and the request and stage duration histograms.
//!
//! The span tree of one request, as exported when the binary's `[telemetry]` is on:
//!
//! ```text
//! request                      GET /api/{*rest}  (server; http.request.method, url.path,
//! │                            http.route, server.address, http.response.status_code,
//! │                            error.type, portcullis.error.origin)
//! ├─ session.lookup            session.cache = hit | miss | off
//! │  └─ session.store          store = redis | postgres | sqlite | memory
//! ├─ token                     token.cache = hit | miss
//! │  ├─ token.single_flight_wait
//! │  ├─ token.lease_wait
//! │  └─ user_token_refresh
//! │     └─ token_request       (client; grant_type, server.address)  ── traceparent ──▶ IdP
//! └─ upstream                  (client; server.address, server.port, portcullis.route,
//!                              http.response.status_code)
//!                                                                  ── traceparent ──▶ API
//! ```
//!
//! IdP fetches (`idp.discovery`, `idp.jwks`), the code exchange (`token_request`) and
//! revocation (`token_revocation`) get client spans of their own. No attribute holds a
//! token, code, cookie, session id or client secret: paths are logged without the query,
//! tokens and session keys only as fingerprints (hash prefixes).
//!
//! Every child span is at `DEBUG` level: with the default `info` log filter and no
//! OpenTelemetry layer they are disabled at their call sites and cost nothing. The request
//! span is at `INFO` (it gives log lines their context).
//!
//! Metrics (Prometheus, through the `metrics` facade; nothing is recorded without a
//! recorder):
//! - `portcullis_request_duration_seconds{route, method, status}`: whole request, until the
//!   response head is ready;
//! - `portcullis_stage_duration_seconds{route, stage}`: `stage` = `session`, `token` or
//!   `upstream` (until the upstream's response head) for proxied routes.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::Extractor;
use tracing::field::Empty;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::log_safe::untrusted;

pub use portcullis_token::trace_context::{inject, TRACEPARENT, TRACESTATE};

/// Name of the request duration histogram (seconds).
pub const REQUEST_DURATION: &str = "portcullis_request_duration_seconds";
/// Name of the per-stage duration histogram (seconds).
pub const STAGE_DURATION: &str = "portcullis_stage_duration_seconds";
/// Bucket bounds (seconds) suggested for both histograms: 0.5 ms to 10 s.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tells the request middleware that spans are exported (the binary calls this when it
/// installs an OpenTelemetry layer). Without it the request span gets only what log lines
/// need, and a client's trace context is not even read.
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// The route pattern a frontend's router matched, carried out on the response to the request
/// middleware (which runs before frontend selection, so it cannot see `MatchedPath` itself).
#[derive(Debug, Clone)]
pub(crate) struct MatchedRoute(pub(crate) String);

/// Inner middleware of each frontend's router: puts the matched route pattern on the
/// response for [`RequestTelemetry::middleware`].
pub(crate) async fn mark_route(request: Request, next: Next) -> Response {
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| MatchedRoute(m.as_str().to_owned()));
    let mut response = next.run(request).await;
    if let Some(m) = matched {
        response.extensions_mut().insert(m);
    }
    response
}

/// How the request span treats a `traceparent` the client sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestTelemetry {
    /// Continue the client's trace (W3C `traceparent`/`tracestate` from the request). Off by
    /// default: a browser is not part of the operator's tracing system and could otherwise
    /// pick trace ids, force sampling, or make traces of unrelated users look connected.
    pub trust_incoming_trace_context: bool,
}

impl RequestTelemetry {
    /// The middleware (for `axum::middleware::from_fn`): opens the request span (parented
    /// to the client's trace context only when trusted), runs the request in it, records the
    /// status and observes [`REQUEST_DURATION`]. Apply it with `Router::layer` so the
    /// matched route is known.
    pub async fn middleware(self, request: Request, next: Next) -> Response {
        let started = Instant::now();
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_owned());
        let method = request.method().clone();
        let span = tracing::info_span!(
            "request",
            otel.name = Empty,
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = %method,
            url.path = %untrusted(request.uri().path()),
            http.route = route.as_deref(),
            server.address = Empty,
            http.response.status_code = Empty,
            error.type = Empty,
            portcullis.error.origin = Empty,
        );
        if exporting() && !span.is_disabled() {
            // Behind frontend selection the route is known only after the response (then
            // recorded as `http.route` below); the span name is fixed once the span is
            // entered, so it is the method alone (the HTTP conventions' name without a route).
            let name = format!("{method} {}", route.as_deref().unwrap_or(""));
            span.record("otel.name", name.trim_end());
            if let Some(host) = request
                .headers()
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
            {
                span.record("server.address", untrusted(host).to_string());
            }
            if self.trust_incoming_trace_context {
                let parent = opentelemetry::global::get_text_map_propagator(|p| {
                    p.extract(&HeaderExtractor(request.headers()))
                });
                let _ = span.set_parent(parent);
            }
        }
        let response = next.run(request).instrument(span.clone()).await;
        // Behind frontend selection the route is only known once the frontend's router ran.
        let late = route.is_none();
        let route = route.or_else(|| {
            response
                .extensions()
                .get::<MatchedRoute>()
                .map(|m| m.0.clone())
        });
        if late && exporting() && !span.is_disabled() {
            span.record("http.route", route.as_deref());
        }
        let status = response.status();
        if exporting() && !span.is_disabled() {
            span.record("http.response.status_code", status.as_u16());
            if status.is_server_error() {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", status.as_str());
            }
        }
        metrics::histogram!(
            REQUEST_DURATION,
            "route" => route_label(route.as_deref()),
            "method" => method.as_str().to_owned(),
            "status" => status.as_str().to_owned(),
        )
        .record(started.elapsed());
        response
    }
}

/// The route label of a matched path: a proxied route's three patterns (`/api`, `/api/`,
/// `/api/{*rest}`) are one route; no match is `unmatched`.
fn route_label(matched: Option<&str>) -> String {
    match matched {
        None => "unmatched".to_owned(),
        Some(p) => {
            let p = p.strip_suffix("/{*rest}").unwrap_or(p);
            match p.strip_suffix('/') {
                Some("") | None => p.to_owned(),
                Some(trimmed) => trimmed.to_owned(),
            }
        }
    }
}

/// Observes one stage of a proxied request in [`STAGE_DURATION`].
pub(crate) fn observe_stage(route: &str, stage: &'static str, elapsed: Duration) {
    metrics::histogram!(STAGE_DURATION, "route" => route.to_owned(), "stage" => stage)
        .record(elapsed);
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::route_label;

    #[test]
    fn route_label_folds_a_proxied_routes_three_patterns() {
        assert_eq!(route_label(Some("/api")), "/api");
        assert_eq!(route_label(Some("/api/")), "/api");
        assert_eq!(route_label(Some("/api/{*rest}")), "/api");
        assert_eq!(route_label(Some("/")), "/");
        assert_eq!(route_label(Some("/bff/login")), "/bff/login");
        assert_eq!(route_label(None), "unmatched");
    }
}
