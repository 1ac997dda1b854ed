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

/// The ids of a request whose trace was dropped before any span existed (the sampler keeps
/// no new trace; see `portcullis::telemetry::set_drops_new_traces`): W3C Trace Context
/// §3.2.2.3 `trace-id` (16 bytes) and the request's `parent-id` (8 bytes), both non-zero.
/// Calls made inside [`UnsampledTrace::scope`] propagate them with flags `00`
/// (not sampled), written by hand: no OpenTelemetry context, span or propagator is involved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsampledTrace {
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

tokio::task_local! {
    static UNSAMPLED: UnsampledTrace;
}

impl UnsampledTrace {
    /// A trace that continues `trace_id` (an unsampled parent's) or, with `None` or an
    /// all-zero id, a new random one; the span id is always new and random.
    pub fn new(trace_id: Option<[u8; 16]>) -> Self {
        let trace_id = match trace_id {
            Some(id) if id != [0; 16] => id,
            _ => nonzero(rand::random()),
        };
        Self {
            trace_id,
            span_id: nonzero(rand::random()),
        }
    }

    /// The trace id (16 bytes).
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The request's span id (8 bytes), the `parent-id` upstreams receive.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// Runs `future` in this trace: [`inject`] and [`headers`] write its `traceparent`
    /// (flags `00`) and [`UnsampledTrace::current`] returns it, on every poll.
    pub fn scope<F: std::future::Future>(
        self,
        future: F,
    ) -> impl std::future::Future<Output = F::Output> {
        UNSAMPLED.scope(self, future)
    }

    /// Runs `f` in this trace (synchronously).
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        UNSAMPLED.sync_scope(self, f)
    }

    /// The dropped trace the current task runs in, if any. One thread-local read.
    pub fn current() -> Option<Self> {
        UNSAMPLED.try_with(|t| *t).ok()
    }

    /// `00-<trace-id>-<parent-id>-00` (W3C Trace Context §3.2).
    pub fn traceparent(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        let mut i = 3;
        for b in self.trace_id {
            out[i] = HEX[usize::from(b >> 4)];
            out[i + 1] = HEX[usize::from(b & 15)];
            i += 2;
        }
        out[i] = b'-';
        i += 1;
        for b in self.span_id {
            out[i] = HEX[usize::from(b >> 4)];
            out[i + 1] = HEX[usize::from(b & 15)];
            i += 2;
        }
        out[i..].copy_from_slice(b"-00");
        // Only hex digits and dashes: always a valid header value.
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// All-zero ids are invalid (W3C Trace Context §3.2.2.3); a random draw of zeros becomes 1.
fn nonzero<const N: usize>(mut bytes: [u8; N]) -> [u8; N] {
    if bytes.iter().all(|b| *b == 0) {
        bytes[N - 1] = 1;
    }
    bytes
}

/// Removes any `traceparent`/`tracestate` from `headers` and writes the current trace's:
/// inside an [`UnsampledTrace`] scope its `traceparent` (flags `00`); else, when the current
/// `tracing` span has a valid OpenTelemetry context, that context's headers (the receiver's
/// parent is the current span).
pub fn inject(headers: &mut HeaderMap) {
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    if let Some(dropped) = UnsampledTrace::current() {
        headers.insert(TRACEPARENT, dropped.traceparent());
        return;
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unsampled_traceparent_is_w3c_version_00_with_flags_00() {
        let t = UnsampledTrace {
            trace_id: [0xab; 16],
            span_id: [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
        };
        assert_eq!(
            t.traceparent().to_str().unwrap(),
            "00-abababababababababababababababab-0123456789abcdef-00"
        );
    }

    #[test]
    fn unsampled_trace_continues_a_parent_and_never_uses_zero_ids() {
        let kept = UnsampledTrace::new(Some([7; 16]));
        assert_eq!(kept.trace_id(), [7; 16]);
        assert_ne!(kept.span_id(), [0; 8]);
        let fresh = UnsampledTrace::new(Some([0; 16]));
        assert_ne!(fresh.trace_id(), [0; 16]);
        assert_ne!(UnsampledTrace::new(None).trace_id(), fresh.trace_id());
        assert_eq!(nonzero([0u8; 8]), [0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[tokio::test]
    async fn inject_inside_an_unsampled_scope_writes_its_traceparent_and_drops_tracestate() {
        let t = UnsampledTrace::new(None);
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-from-the-browser-01"),
        );
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        t.scope(async { inject(&mut headers) }).await;
        assert_eq!(headers.get(TRACEPARENT), Some(&t.traceparent()));
        assert!(headers.get(TRACESTATE).is_none());
        // Outside the scope (and without tracing) nothing is written.
        let mut outside = HeaderMap::new();
        inject(&mut outside);
        assert!(outside.is_empty());
        assert_eq!(UnsampledTrace::current(), None);
    }
}
