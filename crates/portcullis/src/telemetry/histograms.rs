//! Histogram handles prepared once per route, so that observing a request or a stage costs
//! a read lock and a short scan, with no label `String` built per request.
//!
//! `metrics::histogram!` with dynamic labels builds a `Key` (a label vector and one `String`
//! per owned value) on every call, and the recorder hashes it to find the histogram. Here
//! the handle for (route, method, status) or (route, stage) is made the first time that
//! combination is seen, with its labels built then, and kept for the life of the process.
//!
//! Caveat: a handle belongs to the recorder installed when it was made. The binary installs
//! its Prometheus recorder before it serves the first request, so every handle is bound to
//! it; a recorder installed later would not see combinations already observed.
//!
//! The cache is bounded by what can reach it: route patterns come from the configuration,
//! methods are folded to the nine standard ones plus `_OTHER` ([`method_label`]), statuses
//! are three-digit numbers, stages are three names.

use std::collections::HashMap;
use std::sync::{LazyLock, PoisonError, RwLock};
use std::time::Duration;

use metrics::Histogram;

use super::{REQUEST_DURATION, STAGE_DURATION};

/// Handles per route pattern (`""` for no match), each with its label values.
type Handles<K> = LazyLock<RwLock<HashMap<Box<str>, Vec<(K, Histogram)>>>>;

static REQUESTS: Handles<(&'static str, u16)> = LazyLock::new(RwLock::default);
static STAGES: Handles<&'static str> = LazyLock::new(RwLock::default);

/// Records `elapsed` in the handle for (`route`, `key`), making it with `make` the first time.
fn record<K: PartialEq + Copy>(
    handles: &Handles<K>,
    route: &str,
    key: K,
    make: impl FnOnce() -> Histogram,
    elapsed: Duration,
) {
    {
        let map = handles.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, h)) = map
            .get(route)
            .and_then(|v| v.iter().find(|(k, _)| *k == key))
        {
            h.record(elapsed);
            return;
        }
    }
    let h = make();
    h.record(elapsed);
    let mut map = handles.write().unwrap_or_else(PoisonError::into_inner);
    let entry = map.entry(route.into()).or_default();
    if !entry.iter().any(|(k, _)| *k == key) {
        entry.push((key, h));
    }
}

/// Observes one request in [`REQUEST_DURATION`]`{route, method, status}`; `matched` is the
/// route pattern the router matched (`None`: the `unmatched` label).
pub(super) fn observe_request(
    matched: Option<&str>,
    method: &'static str,
    status: u16,
    elapsed: Duration,
) {
    record(
        &REQUESTS,
        matched.unwrap_or(""),
        (method, status),
        || {
            metrics::histogram!(
                REQUEST_DURATION,
                "route" => route_label(matched),
                "method" => method,
                "status" => status.to_string(),
            )
        },
        elapsed,
    );
}

/// Observes one stage of a proxied request in [`STAGE_DURATION`]`{route, stage}`.
pub(crate) fn observe_stage(route: &str, stage: &'static str, elapsed: Duration) {
    record(
        &STAGES,
        route,
        stage,
        || metrics::histogram!(STAGE_DURATION, "route" => route.to_owned(), "stage" => stage),
        elapsed,
    );
}

/// The method as the OpenTelemetry HTTP conventions name it (`http.request.method`): one of
/// the nine methods of RFC 9110 §9 and RFC 5789, or `_OTHER`, so that a client inventing
/// methods cannot grow the metric labels or the span names without bound.
pub(crate) fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "_OTHER",
    }
}

/// The route label of a matched path: a proxied route's three patterns (`/api`, `/api/`,
/// `/api/{*rest}`) are one route; no match is `unmatched`.
pub(super) fn route_label(matched: Option<&str>) -> String {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn route_label_folds_a_proxied_routes_three_patterns() {
        assert_eq!(route_label(Some("/api")), "/api");
        assert_eq!(route_label(Some("/api/")), "/api");
        assert_eq!(route_label(Some("/api/{*rest}")), "/api");
        assert_eq!(route_label(Some("/")), "/");
        assert_eq!(route_label(Some("/bff/login")), "/bff/login");
        assert_eq!(route_label(None), "unmatched");
    }

    #[test]
    fn invented_methods_share_one_label() {
        use axum::http::Method;
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for m in ["FOO", "get", "PROPFIND"] {
            assert_eq!(
                method_label(&Method::from_bytes(m.as_bytes()).unwrap()),
                "_OTHER"
            );
        }
    }

    #[test]
    fn one_handle_per_route_method_and_status() {
        let route = "/histograms-test/{*rest}";
        for _ in 0..3 {
            observe_request(Some(route), "GET", 200, Duration::from_millis(1));
        }
        observe_request(Some(route), "GET", 404, Duration::from_millis(1));
        observe_request(Some(route), "_OTHER", 200, Duration::from_millis(1));
        let map = REQUESTS.read().unwrap();
        let keys: Vec<_> = map[route].iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [("GET", 200), ("GET", 404), ("_OTHER", 200)]);
    }
}
