//! `[telemetry]`: OpenTelemetry trace export (OTLP over HTTP/protobuf or gRPC) and the
//! logging subscriber it joins.
//!
//! Tracing is on when `otlp_endpoint` is set or one of the standard variables
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` is, and
//! `OTEL_SDK_DISABLED` is not `true`. Values in the file win over the environment; what the
//! file leaves out comes from the standard variables (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_PROTOCOL` and its
//! `_TRACES_` form: `http/protobuf` or `grpc`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;
use url::Url;

/// The raw `[telemetry]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<String>,
    service_name: Option<String>,
    sampling_ratio: Option<f64>,
    trust_incoming_trace_context: Option<bool>,
}

/// The OTLP transport (OTLP specification §"OTLP/gRPC" and §"OTLP/HTTP"), named as
/// `OTEL_EXPORTER_OTLP_PROTOCOL` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`: `POST {endpoint}/v1/traces` with a protobuf body (default port 4318).
    HttpProtobuf,
    /// `grpc`: the `TraceService/Export` call over HTTP/2 (default port 4317).
    Grpc,
}

impl OtlpProtocol {
    /// The protocol a value of `otlp_protocol` or `OTEL_EXPORTER_OTLP_PROTOCOL` names;
    /// `None` for anything else (`http/json` included: not built in).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "http/protobuf" => Some(Self::HttpProtobuf),
            "grpc" => Some(Self::Grpc),
            _ => None,
        }
    }
}

/// Validated `[telemetry]` settings.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// Where traces go: the collector's base URL as configured (for OTLP/HTTP,
    /// `/v1/traces` is appended unless the path already ends with it: [`Self::traces_endpoint`]).
    /// `None`: the standard variables decide.
    pub otlp_endpoint: Option<String>,
    /// The transport; `None`: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` /
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf`.
    pub otlp_protocol: Option<OtlpProtocol>,
    /// `service.name`; `None`: `OTEL_SERVICE_NAME`, else `portcullis`.
    pub service_name: Option<String>,
    /// Head sampling ratio for new traces (0.0 to 1.0), parent-based; `None`:
    /// `OTEL_TRACES_SAMPLER`, else always on.
    pub sampling_ratio: Option<f64>,
    /// Continue a trace context the browser sent (default off).
    pub trust_incoming_trace_context: bool,
}

impl TelemetryConfig {
    /// Validates the raw table, pushing every problem to `errors`.
    pub fn from_raw(raw: RawTelemetry, errors: &mut Vec<String>) -> Self {
        let otlp_endpoint = raw.otlp_endpoint.and_then(|e| match Url::parse(&e) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                Some(u.as_str().trim_end_matches('/').to_owned())
            }
            _ => {
                errors.push(format!(
                    "telemetry.otlp_endpoint {e:?} must be an http(s) URL like \"http://127.0.0.1:4318\""
                ));
                None
            }
        });
        let otlp_protocol = raw.otlp_protocol.and_then(|p| {
            let parsed = OtlpProtocol::parse(&p);
            if parsed.is_none() {
                errors.push(format!(
                    "telemetry.otlp_protocol {p:?} must be \"http/protobuf\" or \"grpc\""
                ));
            }
            parsed
        });
        if let Some(r) = raw.sampling_ratio {
            if !(0.0..=1.0).contains(&r) {
                errors.push(format!(
                    "telemetry.sampling_ratio {r} must be between 0.0 and 1.0"
                ));
            }
        }
        if raw.service_name.as_deref().is_some_and(str::is_empty) {
            errors.push("telemetry.service_name must not be empty".into());
        }
        Self {
            otlp_endpoint,
            otlp_protocol,
            service_name: raw.service_name,
            sampling_ratio: raw.sampling_ratio,
            trust_incoming_trace_context: raw.trust_incoming_trace_context.unwrap_or(false),
        }
    }

    /// Whether traces are exported, given the environment.
    fn enabled(&self, env: &dyn Fn(&str) -> Option<String>) -> bool {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return false;
        }
        self.otlp_endpoint.is_some()
            || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some_and(|v| !v.is_empty())
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|v| !v.is_empty())
    }

    /// The transport: the file's `otlp_protocol`, else `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
    /// else `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf`.
    ///
    /// # Errors
    ///
    /// A message naming the variable when it holds another protocol (`http/json` included).
    pub fn protocol(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<OtlpProtocol, String> {
        if let Some(p) = self.otlp_protocol {
            return Ok(p);
        }
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
                return OtlpProtocol::parse(&v).ok_or_else(|| {
                    format!("{var}={v:?} is not supported: use \"http/protobuf\" or \"grpc\"")
                });
            }
        }
        Ok(OtlpProtocol::HttpProtobuf)
    }

    /// The configured endpoint for `protocol`: OTLP/HTTP gets `/v1/traces` (once), gRPC the
    /// base URL as is (the service path is fixed by the protocol). `None` without
    /// `otlp_endpoint` (the exporter reads the standard variables).
    pub fn traces_endpoint(&self, protocol: OtlpProtocol) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?;
        Some(match protocol {
            OtlpProtocol::HttpProtobuf => traces_url(base),
            OtlpProtocol::Grpc => base.to_owned(),
        })
    }

    /// The middleware settings for the request span.
    pub fn request(&self) -> portcullis::telemetry::RequestTelemetry {
        portcullis::telemetry::RequestTelemetry {
            trust_incoming_trace_context: self.trust_incoming_trace_context,
        }
    }
}

/// Whether the sampler keeps no new trace: `sampling_ratio = 0`, or without one the
/// standard `OTEL_TRACES_SAMPLER` (`always_off`, `parentbased_always_off`, or a
/// `traceidratio`/`parentbased_traceidratio` sampler whose `OTEL_TRACES_SAMPLER_ARG` is 0).
fn keeps_no_new_trace(ratio: Option<f64>) -> bool {
    if let Some(r) = ratio {
        return r <= 0.0;
    }
    let sampler = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
    let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
    match sampler.trim() {
        "always_off" | "parentbased_always_off" => true,
        "traceidratio" | "parentbased_traceidratio" => arg
            .and_then(|a| a.trim().parse::<f64>().ok())
            .is_some_and(|r| r <= 0.0),
        _ => false,
    }
}

/// `base` + `/v1/traces` (OTLP/HTTP §"OTLP/HTTP Request"), unless it already ends there.
fn traces_url(base: &str) -> String {
    let s = base.trim_end_matches('/');
    if s.ends_with("/v1/traces") {
        s.to_owned()
    } else {
        format!("{s}/v1/traces")
    }
}

/// Flushes and stops the exporter when dropped (at the end of `serve`), then the gRPC
/// exporter's runtime.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    /// OTLP/gRPC only: the one-thread runtime the exporter's channel lives on (the batch
    /// processor exports from its own thread; the gateway's runtime ends before the flush).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("portcullis: flushing traces failed: {e}");
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        }
    }
}

/// Installs the global subscriber: the log formatter (filtered by `RUST_LOG`, default
/// `info`) and, when tracing is on, the OpenTelemetry layer with its own filter (every
/// span of the gateway's crates down to `DEBUG`, events only from `INFO`, so debug-level
/// spans are enabled for export without turning on debug logs).
///
/// # Errors
///
/// A message when the OTLP exporter cannot be built (the logger is installed anyway).
pub fn init(json: bool, telemetry: &TelemetryConfig) -> Result<TelemetryGuard, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let env = |name: &str| std::env::var(name).ok();
    let (otel, provider, runtime, error) = if telemetry.enabled(&env) {
        match provider(telemetry, &env) {
            Ok((provider, runtime)) => {
                opentelemetry::global::set_text_map_propagator(
                    opentelemetry_sdk::propagation::TraceContextPropagator::new(),
                );
                portcullis::telemetry::set_exporting(true);
                let tracer = provider.tracer("portcullis");
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_location(false)
                    .with_threads(false)
                    .with_tracked_inactivity(false)
                    .with_filter(ExportFilter {
                        nothing: portcullis::telemetry::exports_nothing(
                            telemetry.trust_incoming_trace_context,
                        ),
                    });
                (Some(layer), Some(provider), runtime, None)
            }
            Err(e) => (None, None, None, Some(e)),
        }
    } else {
        (None, None, None, None)
    };
    tracing_subscriber::registry().with(fmt).with(otel).init();
    match error {
        Some(e) => Err(e),
        None => Ok(TelemetryGuard { provider, runtime }),
    }
}

/// What the OpenTelemetry layer sees: the gateway's spans down to `DEBUG` (including the
/// token crate's), other crates' spans from `INFO`, events from `INFO` (they become span
/// events, like log lines); and nothing inside a trace the sampler dropped
/// ([`portcullis::telemetry::in_unsampled_trace`]). When no span can ever be exported
/// (sampling ratio 0 and no trusted client trace context,
/// [`portcullis::telemetry::exports_nothing`]), every callsite is disabled once, so the
/// layer costs nothing per request.
///
/// `bench/src/tracing_cost.rs` mirrors it, so that `proxy-bench --tracing` measures it.
#[derive(Debug, Clone, Copy)]
struct ExportFilter {
    /// Nothing is ever exported: disable every callsite.
    nothing: bool,
}

impl ExportFilter {
    /// The static part: whether spans or events of this callsite are ever exported.
    fn wanted(meta: &Metadata<'_>) -> bool {
        let ours = meta.target().starts_with("portcullis");
        if meta.is_span() && ours {
            *meta.level() <= Level::DEBUG
        } else {
            *meta.level() <= Level::INFO
        }
    }
}

impl<S> Filter<S> for ExportFilter {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !self.nothing && Self::wanted(meta) && !portcullis::telemetry::in_unsampled_trace()
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // "Sometimes": the sampling part is decided per call.
        if !self.nothing && Self::wanted(meta) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(if self.nothing {
            LevelFilter::OFF
        } else {
            LevelFilter::DEBUG
        })
    }
}

/// The tracer provider and, for OTLP/gRPC, the runtime its exporter needs.
fn provider(
    telemetry: &TelemetryConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(SdkTracerProvider, Option<tokio::runtime::Runtime>), String> {
    let protocol = telemetry.protocol(env)?;
    let endpoint = telemetry.traces_endpoint(protocol);
    let (exporter, runtime) = match protocol {
        OtlpProtocol::HttpProtobuf => {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(endpoint) = endpoint {
                exporter = exporter.with_endpoint(endpoint);
            }
            (exporter.build(), None)
        }
        OtlpProtocol::Grpc => {
            // tonic's channel spawns its connection tasks on the runtime it is built in.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("portcullis-otlp")
                .enable_all()
                .build()
                .map_err(|e| format!("OTLP/gRPC exporter runtime: {e}"))?;
            let exporter = {
                let _in = runtime.enter();
                let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc);
                if let Some(endpoint) = endpoint {
                    exporter = exporter.with_endpoint(endpoint);
                }
                exporter.build()
            };
            (exporter, Some(runtime))
        }
    };
    let exporter = exporter.map_err(|e| format!("OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let env_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty());
    match (&telemetry.service_name, env_name) {
        (Some(name), _) => resource = resource.with_service_name(name.clone()),
        (None, Some(_)) => {} // the environment detector reads it
        (None, None) => resource = resource.with_service_name("portcullis"),
    }
    resource = resource.with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter);
    portcullis::telemetry::set_drops_new_traces(keeps_no_new_trace(telemetry.sampling_ratio));
    if let Some(ratio) = telemetry.sampling_ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    Ok((builder.build(), runtime))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;

    /// As `init` builds it: a log formatter at `info` beside the OpenTelemetry layer.
    fn subscriber(
        provider: &SdkTracerProvider,
        filter: ExportFilter,
    ) -> impl tracing::Subscriber + Send + Sync {
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::sink)
                    .with_filter(tracing_subscriber::EnvFilter::new("info")),
            )
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("test"))
                    .with_filter(filter),
            )
    }

    fn raw(endpoint: Option<&str>, ratio: Option<f64>) -> RawTelemetry {
        RawTelemetry {
            otlp_endpoint: endpoint.map(str::to_owned),
            otlp_protocol: None,
            service_name: None,
            sampling_ratio: ratio,
            trust_incoming_trace_context: None,
        }
    }

    /// The fault behind +9 % CPU at sampling ratio 0: every child span's OpenTelemetry data
    /// was built (fields formatted, ids drawn, events recorded) before the sampler dropped
    /// the trace. Inside an unsampled request the export filter now disables them.
    #[test]
    fn children_of_an_unsampled_request_are_never_built() {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        for (ratio, child_built) in [(0.0, false), (1.0, true)] {
            let provider = SdkTracerProvider::builder()
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    ratio,
                ))))
                .build();
            let subscriber = subscriber(&provider, ExportFilter { nothing: false });
            tracing::subscriber::with_default(subscriber, || {
                let request = tracing::info_span!(target: "portcullis::telemetry", "request");
                assert!(
                    !request.is_disabled(),
                    "the request span holds the decision"
                );
                let sampled = request.context().span().span_context().is_sampled();
                assert_eq!(sampled, child_built, "ratio {ratio}");
                request.in_scope(|| {
                    let child = tracing::debug_span!(target: "portcullis::gateway", "upstream");
                    // The OpenTelemetry layer built data for the child only when sampled.
                    let child_cx = child.context();
                    let child_sc = child_cx.span().span_context().clone();
                    assert_eq!(
                        child_sc.is_valid(),
                        child_built,
                        "ratio {ratio}: {child_sc:?}"
                    );
                    let mut headers = axum::http::HeaderMap::new();
                    opentelemetry::global::set_text_map_propagator(
                        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
                    );
                    child.in_scope(|| portcullis::telemetry::inject(&mut headers));
                    let flags = if child_built { "-01" } else { "-00" };
                    assert!(
                        headers[portcullis::telemetry::TRACEPARENT]
                            .to_str()
                            .unwrap()
                            .ends_with(flags),
                        "the upstream learns the decision: {headers:?}"
                    );
                });
            });
        }
    }

    /// What was left of sampling 0's cost: the request span itself was built by the
    /// OpenTelemetry layer (ids, attributes, parent lookup) and only then dropped by the
    /// sampler. With no new trace kept, the middleware now decides first, and the layer
    /// never sees the request; the upstream still learns the trace (flags `00`).
    #[test]
    fn request_of_a_trace_sampling_zero_drops_is_never_built() {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        portcullis::telemetry::set_exporting(true);
        // (middleware decides first, the filter knows nothing can be exported)
        for (decides_first, nothing) in [(false, false), (true, false), (true, true)] {
            portcullis::telemetry::set_drops_new_traces(decides_first);
            let provider = SdkTracerProvider::builder()
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    0.0,
                ))))
                .build();
            let subscriber = subscriber(&provider, ExportFilter { nothing });
            let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
            let app = {
                let seen = seen.clone();
                axum::Router::new()
                    .route(
                        "/x",
                        axum::routing::get(move || {
                            let seen = seen.clone();
                            async move {
                                let built = tracing::Span::current()
                                    .context()
                                    .span()
                                    .span_context()
                                    .is_valid();
                                let mut headers = axum::http::HeaderMap::new();
                                portcullis::telemetry::inject(&mut headers);
                                let tp = headers
                                    .get(portcullis::telemetry::TRACEPARENT)
                                    .map(|v| v.to_str().unwrap().to_owned());
                                *seen.lock().unwrap() = Some((built, tp));
                                "ok"
                            }
                        }),
                    )
                    .layer(axum::middleware::from_fn(move |request, next| {
                        portcullis::telemetry::RequestTelemetry::default().middleware(request, next)
                    }))
            };
            tracing::subscriber::with_default(subscriber, || {
                runtime.block_on(async {
                    use tower::ServiceExt as _;
                    let request = axum::http::Request::get("/x")
                        .body(axum::body::Body::empty())
                        .unwrap();
                    let r = app.oneshot(request).await.unwrap();
                    assert_eq!(r.status(), 200);
                });
            });
            let (built, traceparent) = seen.lock().unwrap().take().unwrap();
            assert_eq!(
                built, !decides_first,
                "the OpenTelemetry layer built the request span: {built}"
            );
            let traceparent = traceparent.expect("a traceparent for the upstream");
            assert!(traceparent.ends_with("-00"), "{traceparent}");
        }
    }

    /// Sampling ratio 0 with no trusted client trace context: nothing can ever be exported,
    /// so the filter disables every callsite once (the per-span cost of tracing off), while
    /// the sampling-0 middleware still gives upstreams a `traceparent` (flags `00`).
    #[test]
    fn a_layer_that_can_export_nothing_builds_no_span_at_all() {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOn)
            .build();
        let subscriber = subscriber(&provider, ExportFilter { nothing: true });
        tracing::subscriber::with_default(subscriber, || {
            // Even a sampler that keeps everything gets nothing: the layer never sees a span.
            let request = tracing::info_span!(target: "portcullis::telemetry", "request");
            assert!(!request.context().span().span_context().is_valid());
            // Debug spans of the gateway, wanted for export otherwise, are not even created.
            let child = tracing::debug_span!(target: "portcullis::gateway", "upstream");
            assert!(child.is_disabled());
        });
        // And with a filter that can export, the same spans are built.
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(ExportFilter { nothing: false }),
        );
        tracing::subscriber::with_default(subscriber, || {
            let child = tracing::debug_span!(target: "portcullis::gateway", "upstream");
            assert!(child.context().span().span_context().is_valid());
        });
    }

    #[test]
    fn otlp_endpoint_gets_the_traces_path_once() {
        let mut errors = Vec::new();
        for (given, want) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("https://c/otlp", "https://c/otlp/v1/traces"),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
        ] {
            let t = TelemetryConfig::from_raw(raw(Some(given), None), &mut errors);
            assert_eq!(
                t.traces_endpoint(OtlpProtocol::HttpProtobuf).as_deref(),
                Some(want)
            );
        }
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn grpc_endpoint_is_the_base_url_without_a_traces_path() {
        let t = TelemetryConfig::from_raw(raw(Some("http://c:4317/"), None), &mut Vec::new());
        assert_eq!(
            t.traces_endpoint(OtlpProtocol::Grpc).as_deref(),
            Some("http://c:4317")
        );
    }

    #[test]
    fn protocol_comes_from_the_file_then_the_traces_variable_then_the_general_one() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let none = TelemetryConfig::default();
        assert_eq!(none.protocol(&|_| None), Ok(OtlpProtocol::HttpProtobuf));
        assert_eq!(
            none.protocol(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])),
            Ok(OtlpProtocol::Grpc)
        );
        assert_eq!(
            none.protocol(&env(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ])),
            Ok(OtlpProtocol::HttpProtobuf)
        );
        let e = none
            .protocol(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]))
            .unwrap_err();
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && e.contains("grpc"),
            "{e}"
        );
        let mut file = raw(Some("http://c:4317"), None);
        file.otlp_protocol = Some("grpc".into());
        let file = TelemetryConfig::from_raw(file, &mut Vec::new());
        assert_eq!(
            file.protocol(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])),
            Ok(OtlpProtocol::Grpc),
            "the file wins"
        );
    }

    #[test]
    fn unknown_otlp_protocol_in_the_file_is_reported() {
        let mut errors = Vec::new();
        let mut r = raw(Some("http://c:4318"), None);
        r.otlp_protocol = Some("http/json".into());
        TelemetryConfig::from_raw(r, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("otlp_protocol"), "{errors:?}");
    }

    #[test]
    fn bad_endpoint_and_ratio_are_both_reported() {
        let mut errors = Vec::new();
        TelemetryConfig::from_raw(raw(Some("collector:4318"), Some(1.5)), &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("otlp_endpoint"));
        assert!(errors[1].contains("sampling_ratio"));
    }

    #[test]
    fn tracing_is_off_unless_an_endpoint_is_given_and_sdk_disabled_wins() {
        let off = TelemetryConfig::default();
        assert!(!off.enabled(&|_| None));
        assert!(
            off.enabled(&|k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4318".into()))
        );
        let on = TelemetryConfig::from_raw(raw(Some("http://c:4318"), None), &mut Vec::new());
        assert!(on.enabled(&|_| None));
        assert!(!on.enabled(&|k| (k == "OTEL_SDK_DISABLED").then(|| "true".into())));
        assert!(!on.trust_incoming_trace_context);
    }
}
