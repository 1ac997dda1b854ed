//! `[telemetry]`: OpenTelemetry trace export (OTLP over HTTP/protobuf) and the logging
//! subscriber it joins.
//!
//! Tracing is on when `otlp_endpoint` is set or one of the standard variables
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` is, and
//! `OTEL_SDK_DISABLED` is not `true`. Values in the file win over the environment; what the
//! file leaves out comes from the standard variables (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;
use url::Url;

/// The raw `[telemetry]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    sampling_ratio: Option<f64>,
    trust_incoming_trace_context: Option<bool>,
}

/// Validated `[telemetry]` settings.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// Where traces go: the OTLP/HTTP base URL (`/v1/traces` is appended unless the path
    /// already ends with it). `None`: the standard variables decide.
    pub otlp_endpoint: Option<String>,
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
                Some(traces_url(&u))
            }
            _ => {
                errors.push(format!(
                    "telemetry.otlp_endpoint {e:?} must be an http(s) URL like \"http://127.0.0.1:4318\""
                ));
                None
            }
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

    /// The middleware settings for the request span.
    pub fn request(&self) -> portcullis::telemetry::RequestTelemetry {
        portcullis::telemetry::RequestTelemetry {
            trust_incoming_trace_context: self.trust_incoming_trace_context,
        }
    }
}

/// `base` + `/v1/traces` (OTLP/HTTP §"OTLP/HTTP Request"), unless it already ends there.
fn traces_url(base: &Url) -> String {
    let s = base.as_str().trim_end_matches('/');
    if s.ends_with("/v1/traces") {
        s.to_owned()
    } else {
        format!("{s}/v1/traces")
    }
}

/// Flushes and stops the exporter when dropped (at the end of `serve`).
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("portcullis: flushing traces failed: {e}");
            }
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
    let (otel, provider, error) = if telemetry.enabled(&env) {
        match provider(telemetry) {
            Ok(provider) => {
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
                    .with_filter(tracing_subscriber::filter::filter_fn(export_filter));
                (Some(layer), Some(provider), None)
            }
            Err(e) => (None, None, Some(e)),
        }
    } else {
        (None, None, None)
    };
    tracing_subscriber::registry().with(fmt).with(otel).init();
    match error {
        Some(e) => Err(e),
        None => Ok(TelemetryGuard(provider)),
    }
}

/// What the OpenTelemetry layer sees: the gateway's spans down to `DEBUG` (including the
/// token crate's), other crates' spans from `INFO`, events from `INFO` (they become span
/// events, like log lines).
fn export_filter(meta: &tracing::Metadata<'_>) -> bool {
    let ours = meta.target().starts_with("portcullis");
    if meta.is_span() && ours {
        *meta.level() <= Level::DEBUG
    } else {
        *meta.level() <= Level::INFO
    }
}

fn provider(telemetry: &TelemetryConfig) -> Result<SdkTracerProvider, String> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    if let Some(endpoint) = &telemetry.otlp_endpoint {
        exporter = exporter.with_endpoint(endpoint.clone());
    }
    let exporter = exporter
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
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
    if let Some(ratio) = telemetry.sampling_ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn raw(endpoint: Option<&str>, ratio: Option<f64>) -> RawTelemetry {
        RawTelemetry {
            otlp_endpoint: endpoint.map(str::to_owned),
            service_name: None,
            sampling_ratio: ratio,
            trust_incoming_trace_context: None,
        }
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
            assert_eq!(t.otlp_endpoint.as_deref(), Some(want));
        }
        assert!(errors.is_empty(), "{errors:?}");
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
