//! `--tracing`: the cost of OpenTelemetry tracing on the hot path. The gateway's user route
//! (memory store, cache on) runs with tracing off, on with sampling ratio 0, and on with
//! ratio 1 (spans exported over OTLP/HTTP to an in-process endpoint that discards them), in
//! the same run. All three have the binary's request middleware and a log formatter at
//! `info` writing to a sink, as `portcullis serve` has; only the OpenTelemetry layer differs.
//! The layer is swapped with a `reload` layer, so one process measures all three.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use axum::Router;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, Layer as _, Registry};

/// Tracing mode of one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Sample0,
    Sample1,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Sample0 => "sample0",
            Self::Sample1 => "sample1",
        }
    }
}

type OtelLayer = Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>;

struct State {
    handle: reload::Handle<Option<OtelLayer>, Registry>,
    endpoint: String,
    providers: std::sync::Mutex<Vec<SdkTracerProvider>>,
}

static STATE: OnceLock<State> = OnceLock::new();
static MIDDLEWARE: AtomicBool = AtomicBool::new(false);
static EXPORT_ON: AtomicBool = AtomicBool::new(false);
static EXPORTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static EXPORTED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// OTLP export requests and their protobuf bytes received so far.
pub fn exported() -> (u64, u64) {
    (
        EXPORTS.load(Ordering::Relaxed),
        EXPORTED_BYTES.load(Ordering::Relaxed),
    )
}

/// The static part of the binary's export filter (the gateway's spans down to DEBUG,
/// events from INFO) while tracing is on; nothing while it is off.
/// As the binary, nothing when nothing can be exported (sampling 0, no trusted client trace
/// context: `portcullis::telemetry::exports_nothing`).
fn export_wanted(meta: &tracing::Metadata<'_>) -> bool {
    if !EXPORT_ON.load(Ordering::SeqCst) || portcullis::telemetry::exports_nothing(false) {
        return false;
    }
    if meta.is_span() && meta.target().starts_with("portcullis") {
        *meta.level() <= tracing::Level::DEBUG
    } else {
        *meta.level() <= tracing::Level::INFO
    }
}

/// The binary's export filter (`portcullis-cli`'s `telemetry::ExportFilter`): the static
/// part, and nothing inside a trace the sampler dropped.
fn export_filter(meta: &tracing::Metadata<'_>) -> bool {
    export_wanted(meta) && !portcullis::telemetry::in_unsampled_trace()
}

/// Installs the subscriber (log formatter to a sink + reloadable OpenTelemetry layer) and
/// starts the discarding OTLP endpoint. Call once, inside the runtime.
pub async fn install() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let app = Router::new().route(
        "/v1/traces",
        axum::routing::post(|body: axum::body::Bytes| async move {
            EXPORTS.fetch_add(1, Ordering::Relaxed);
            EXPORTED_BYTES.fetch_add(body.len() as u64, Ordering::Relaxed);
            ""
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (layer, handle) = reload::Layer::new(None::<OtelLayer>);
    // A per-layer filter cannot be reloaded, so the filter sits around the reload layer and
    // follows the mode: off enables nothing (callsites are disabled, as without the layer).
    let filter = tracing_subscriber::filter::DynFilterFn::new(|meta, _| export_filter(meta))
        .with_callsite_filter(|meta| {
            if export_wanted(meta) {
                // Decided per call, as the binary's filter does (sampling).
                tracing_core::Interest::sometimes()
            } else {
                tracing_core::Interest::never()
            }
        });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::sink)
        .with_filter(tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .with(fmt)
        .init();
    MIDDLEWARE.store(true, Ordering::SeqCst);
    let _ = STATE.set(State {
        handle,
        endpoint,
        providers: std::sync::Mutex::default(),
    });
}

/// Switches the OpenTelemetry layer for the next scenario.
pub fn set(mode: Mode) {
    let state = STATE.get().expect("tracing_cost::install first");
    let layer = match mode {
        Mode::Off => None,
        Mode::Sample0 | Mode::Sample1 => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(state.endpoint.clone())
                .build()
                .expect("OTLP exporter");
            let ratio = if mode == Mode::Sample0 { 0.0 } else { 1.0 };
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    ratio,
                ))))
                .build();
            let tracer = provider.tracer("portcullis");
            state.providers.lock().unwrap().push(provider);
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_location(false)
                    .with_threads(false)
                    .with_tracked_inactivity(false)
                    .boxed(),
            )
        }
    };
    EXPORT_ON.store(layer.is_some(), Ordering::SeqCst);
    portcullis::telemetry::set_exporting(layer.is_some());
    portcullis::telemetry::set_drops_new_traces(mode == Mode::Sample0);
    if layer.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    state
        .handle
        .reload(layer)
        .expect("reload the tracing layer");
    tracing_core::callsite::rebuild_interest_cache();
}

/// The binary's request middleware (request span, histograms), when `--tracing` is on.
pub fn wrap(router: Router) -> Router {
    if !MIDDLEWARE.load(Ordering::SeqCst) {
        return router;
    }
    let telemetry = portcullis::telemetry::RequestTelemetry::default();
    router.layer(axum::middleware::from_fn(move |request, next| {
        telemetry.middleware(request, next)
    }))
}
