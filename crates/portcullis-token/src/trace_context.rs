//! W3C Trace Context (`traceparent`, `tracestate`) on outgoing requests.
//!
//! The context is the OpenTelemetry span behind the current `tracing` span (set up by
//! `tracing-opentelemetry`) and is written with the process's global text-map propagator
//! (the binary installs `TraceContextPropagator` when tracing is configured). Without an
//! OpenTelemetry layer the current span has no valid context and nothing is written, so
//! this costs one span lookup when tracing is off.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::Injector;
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `traceparent` (W3C Trace Context §3.2).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context §3.3).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Removes any `traceparent`/`tracestate` from `headers` and, when the current `tracing`
/// span has a valid OpenTelemetry context, writes that context's headers (the receiver's
/// parent is the current span).
pub fn inject(headers: &mut HeaderMap) {
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// The trace-context headers for the current span (empty when there is none), for clients
/// that add headers by map (reqwest).
pub fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    inject(&mut headers);
    headers
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` says nothing (W3C Trace Context §3.3.1.1 allows omitting it).
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
