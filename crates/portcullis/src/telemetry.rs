//! Request telemetry: the per-request span (OpenTelemetry HTTP semantic conventions), W3C
//! trace-context propagation and the request and stage duration histograms.
//!
//! The span tree of one request, as exported when the binary's `[telemetry]` is on (span
//! names on the left):
//!
//! ```text
//! GET /api/{*rest}             (server; http.request.method, url.path, http.route,
//! │                            server.address, server.port, http.response.status_code,
//! │                            error.type, portcullis.error.origin, portcullis.frontend)
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
//! IdP fetches (`idp.discovery`, `idp.jwks`), the code exchange (`token_request`),
//! pushed authorization requests (`pushed_authorization_request`) and revocation
//! (`token_revocation`) get client spans of their own. No attribute holds a token, code,
//! cookie, session id or client secret: paths are logged without the query, tokens and
//! session keys only as fingerprints (hash prefixes).
//!
//! Every child span is at `DEBUG` level: with the default `info` log filter and no
//! OpenTelemetry layer they are disabled at their call sites and cost nothing. The request
//! span is at `INFO` (it gives log lines their context). With the layer on, a request whose
//! trace the sampler dropped builds only its request span: the binary's export filter asks
//! [`in_unsampled_trace`] and keeps the children away from the layer.
//!
//! Metrics (Prometheus, through the `metrics` facade; nothing is recorded without a
//! recorder):
//! - `portcullis_request_duration_seconds{route, method, status}`: whole request, until the
//!   response head is ready;
//! - `portcullis_stage_duration_seconds{route, stage}`: `stage` = `session`, `token` or
//!   `upstream` (until the upstream's response head) for proxied routes.
//!
//! Their handles are made once per label set and cached (no label strings per request).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
use tracing::field::Empty;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::log_safe::untrusted;

pub use portcullis_token::trace_context::{inject, UnsampledTrace, TRACEPARENT, TRACESTATE};

/// Name of the request duration histogram (seconds).
pub const REQUEST_DURATION: &str = "portcullis_request_duration_seconds";
/// Name of the per-stage duration histogram (seconds).
pub const STAGE_DURATION: &str = "portcullis_stage_duration_seconds";
/// Bucket bounds (seconds) suggested for both histograms: 0.5 ms to 10 s.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

mod histograms;

pub(crate) use histograms::observe_stage;

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

static DROPS_NEW_TRACES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tells the request middleware that the sampler keeps no new trace (sampling ratio 0): a
/// request that does not continue a trusted, sampled parent is then decided as dropped
/// before its span exists, and runs in an unsampled trace context of its own (random ids,
/// flags `00`), which upstreams and the IdP still receive as `traceparent`. The
/// OpenTelemetry layer never sees such a request: no span data, ids or attributes are built
/// for it. The binary calls this when its sampling ratio is 0.
pub fn set_drops_new_traces(on: bool) {
    DROPS_NEW_TRACES.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn drops_new_traces() -> bool {
    DROPS_NEW_TRACES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the current task runs in a trace the sampler dropped: a request dropped before
/// its span existed (an [`UnsampledTrace`] scope, see [`set_drops_new_traces`]), or a
/// current OpenTelemetry context with a valid span context without the `sampled` flag.
///
/// For the OpenTelemetry layer's filter: spans and events inside a dropped trace are never
/// exported, so the layer need not see them. Filtering them out means no span data is
/// built, no field formatted, no event recorded for them. Costs two thread-local reads.
pub fn in_unsampled_trace() -> bool {
    UnsampledTrace::current().is_some()
        || opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let sc = span.span_context();
            sc.is_valid() && !sc.is_sampled()
        })
}

/// Whether no span can ever be exported: the sampler keeps no new trace (sampling ratio 0,
/// [`set_drops_new_traces`]) and no client's trace context is trusted, so no request can
/// have a sampled parent. The binary's export filter then disables every callsite once,
/// and tracing costs what it costs when off, plus the `traceparent` (flags `00`) written
/// for upstreams and the IdP.
pub fn exports_nothing(trust_incoming_trace_context: bool) -> bool {
    drops_new_traces() && !trust_incoming_trace_context
}

/// The route pattern a frontend's router matched and the frontend's name, carried out on the
/// response to the request middleware (which runs before frontend selection, so it cannot
/// see `MatchedPath` itself).
#[derive(Debug, Clone)]
pub(crate) struct MatchedRoute {
    route: Option<RouteLabel>,
    /// `None` for what no frontend serves (`/healthz`, `/readyz`).
    frontend: Option<Arc<str>>,
}

/// A route pattern (`http.route`): as axum's router matched it, or as the gateway's direct
/// dispatch of proxied routes names it (the same pattern the router would have matched).
/// No allocation per request.
#[derive(Debug, Clone)]
pub(crate) enum RouteLabel {
    Matched(MatchedPath),
    Pattern(Arc<str>),
    /// A fixed path of the gateway's own (`/healthz`, `/readyz`).
    Fixed(&'static str),
}

impl RouteLabel {
    fn as_str(&self) -> &str {
        match self {
            Self::Matched(m) => m.as_str(),
            Self::Pattern(p) => p,
            Self::Fixed(p) => p,
        }
    }
}

/// Puts the matched route pattern and the frontend's name on `response` for
/// [`RequestTelemetry::middleware`].
pub(crate) fn mark(response: &mut Response, route: Option<RouteLabel>, frontend: Arc<str>) {
    response.extensions_mut().insert(MatchedRoute {
        route,
        frontend: Some(frontend),
    });
}

/// Puts the route pattern of a request no frontend serves (`/healthz`, `/readyz`) on
/// `response`, as the router's `MatchedPath` gave it.
pub(crate) fn mark_unfronted(response: &mut Response, route: &'static str) {
    response.extensions_mut().insert(MatchedRoute {
        route: Some(RouteLabel::Fixed(route)),
        frontend: None,
    });
}

/// Inner middleware of each frontend's router: puts the matched route pattern and the
/// frontend's name on the response for [`RequestTelemetry::middleware`].
pub(crate) async fn mark_route(frontend: Arc<str>, request: Request, next: Next) -> Response {
    // `MatchedPath` is an `Arc<str>`: no allocation per request.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    mark(&mut response, route.map(RouteLabel::Matched), frontend);
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
    /// status and observes [`REQUEST_DURATION`]. Apply it with `Router::layer`, outside or
    /// inside frontend selection.
    ///
    /// The span is named `"{method} {route}"` (OpenTelemetry HTTP server span name, with
    /// `http.route` the pattern the frontend's router matched) or `"{method}"` when no
    /// route matched. Its attributes beyond what log lines need (`server.address`, the
    /// status, the late route, the name) are written only when the trace is sampled.
    pub async fn middleware(self, request: Request, next: Next) -> Response {
        self.around(request, |request| next.run(request)).await
    }

    /// [`RequestTelemetry::middleware`] around any handler: `inner` serves the request inside
    /// the request span (for servers that call the gateway without a router, see
    /// [`crate::Gateway::handle`]).
    pub async fn around<F, Fut>(self, request: Request, inner: F) -> Response
    where
        F: FnOnce(Request) -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        let started = Instant::now();
        let early_route = request.extensions().get::<MatchedPath>().cloned();
        let method = histograms::method_label(request.method());
        // Sampling ratio 0: unless a trusted parent was sampled, the trace is dropped here,
        // before the span exists; the request runs in an unsampled trace of its own
        // (`UnsampledTrace`), which keeps the OpenTelemetry layer away from it and its
        // children (`in_unsampled_trace`) and still reaches upstreams as `traceparent`.
        let dropped = (exporting() && drops_new_traces())
            .then(|| {
                if !self.trust_incoming_trace_context {
                    return Some(UnsampledTrace::new(None));
                }
                let parent = opentelemetry::global::get_text_map_propagator(|p| {
                    p.extract(&HeaderExtractor(request.headers()))
                });
                let parent = parent.span().span_context().clone();
                (!parent.is_sampled()).then(|| {
                    UnsampledTrace::new(parent.is_valid().then(|| parent.trace_id().to_bytes()))
                })
            })
            .flatten();
        // (In a block: the closure borrows the request, which must not live across an await.)
        let span = {
            let new_span = || {
                tracing::info_span!(
                    "request",
                    otel.kind = "server",
                    otel.status_code = Empty,
                    http.request.method = method,
                    http.request.method_original = Empty,
                    url.path = %untrusted(request.uri().path()),
                    http.route = early_route.as_ref().map(MatchedPath::as_str),
                    server.address = Empty,
                    server.port = Empty,
                    http.response.status_code = Empty,
                    error.type = Empty,
                    portcullis.error.origin = Empty,
                    portcullis.frontend = Empty,
                )
            };
            match dropped {
                Some(trace) => trace.sync_scope(new_span),
                None => new_span(),
            }
        };
        // The sampler decides when the OpenTelemetry span starts (here, after the parent is
        // set); an unsampled request skips everything below that only feeds the export.
        let sampled = dropped.is_none() && exporting() && !span.is_disabled() && {
            if self.trust_incoming_trace_context {
                let parent = opentelemetry::global::get_text_map_propagator(|p| {
                    p.extract(&HeaderExtractor(request.headers()))
                });
                let _ = span.set_parent(parent);
            }
            span.context().span().span_context().is_sampled()
        };
        let kept = if sampled {
            span.context().span().update_name(method);
            if method == "_OTHER" {
                span.record(
                    "http.request.method_original",
                    untrusted(request.method().as_str()).to_string(),
                );
            }
            // `server.address` and `server.port` from `Host` (HTTP conventions), or from the
            // URI's authority (HTTP/2 `:authority`).
            let authority = request
                .headers()
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
                .or_else(|| request.uri().authority().cloned());
            if let Some(a) = authority {
                span.record("server.address", untrusted(a.host()).to_string());
                if let Some(port) = a.port_u16() {
                    span.record("server.port", port);
                }
            }
            Some(span.clone())
        } else {
            None
        };
        let mut response = match dropped {
            Some(trace) => trace.scope(inner(request).instrument(span)).await,
            None => inner(request).instrument(span).await,
        };
        // Behind frontend selection the route is only known once the frontend's router ran.
        let marked = response.extensions_mut().remove::<MatchedRoute>();
        let late = early_route.is_none();
        let route = early_route
            .map(RouteLabel::Matched)
            .or_else(|| marked.as_ref().and_then(|m| m.route.clone()));
        let route = route.as_ref().map(RouteLabel::as_str);
        let status = response.status();
        if let Some(span) = kept {
            if late {
                span.record("http.route", route);
            }
            if let Some(frontend) = marked.as_ref().and_then(|m| m.frontend.as_deref()) {
                span.record("portcullis.frontend", frontend);
            }
            span.record("http.response.status_code", status.as_u16());
            if status.is_server_error() {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", status.as_str());
            }
            if let Some(route) = route {
                span.context()
                    .span()
                    .update_name(format!("{method} {route}"));
            }
        }
        histograms::observe_request(route, method, status.as_u16(), started.elapsed());
        response
    }
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
