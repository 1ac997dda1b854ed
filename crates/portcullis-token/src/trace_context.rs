//! W3C Trace Context (`traceparent`, `tracestate`) on outgoing requests.
//!
//! The context is the current OpenTelemetry context, which `tracing-opentelemetry` (with its
//! default context activation) sets to the span behind the innermost entered `tracing` span
//! it knows, and is written with the process's global text-map propagator (the binary
//! installs `TraceContextPropagator` when tracing is configured). Without an OpenTelemetry
//! layer there is no valid context and nothing is written, so this costs one thread-local
//! read when tracing is off.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::Injector;
use opentelemetry::trace::TraceContextExt;

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
    // The OpenTelemetry context `tracing-opentelemetry` activated when it entered the nearest
    // span it knows, not the current `tracing` span's: with a debug log filter the current
    // span may be one the OpenTelemetry layer's filter kept away (every child span of a
    // trace the sampler dropped is), and it has no context of its own. This way an upstream
    // still receives the dropped trace's `traceparent` (flags `00`).
    opentelemetry::Context::map_current(|context| {
        if !context.span().span_context().is_valid() {
            return;
        }
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(context, &mut HeaderInjector(headers));
        });
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
