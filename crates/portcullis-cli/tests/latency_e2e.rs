//! Latency end-to-end: what a proxied request costs in wall-clock time when nothing else is
//! going on. One browser, one keep-alive connection, one request at a time, through the real
//! binary, to a real Node upstream that streams its answer with `Transfer-Encoding: chunked`
//! (`testing/upstream/framing.mjs --framing streamed`: `res.writeHead(200)` + `res.write(body)`,
//! then `res.end()` 15 ms later).
//!
//! A gateway socket with Nagle's algorithm on holds back the last small write of a streamed
//! body (the terminating chunk) until the browser ACKs the previous segment, which a browser
//! delays by ~40 ms: every such response then takes ~55 ms instead of ~16 ms. The median over
//! 20 sequential requests must stay far below that. (A body that ends within ~2 ms of its
//! head is sent whole, in one write, by `portcullis::proxy`'s coalescing: the upstream ends
//! its body 15 ms late here so that the gateway really streams it. A gateway thread
//! descheduled for longer than that on a loaded machine finds the whole body and rightly
//! sends it whole; such answers are not timed, and at least 15 of the 20 must be streamed.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

/// Far below the upstream's 15 ms plus the ~40 ms delayed-ACK timer, far above the 15 ms plus
/// a loopback round trip through the gateway on a busy debug build.
const MEDIAN_LIMIT: Duration = Duration::from_millis(32);
const REQUESTS: usize = 20;
/// Answers of the 20 that must have been streamed (chunked) for the test to mean anything.
const STREAMED_AT_LEAST: usize = 15;
const BODY: &str = r#"{"message":"chunked hello","items":[1,2,3]}"#;

/// The Node upstream streaming `BODY`: the data at once, the terminating chunk 15 ms later.
async fn streamed_upstream() -> (Proc, String) {
    framing_upstream(&[
        "--framing",
        "streamed",
        "--end-delay-ms",
        "15",
        "--body",
        BODY,
    ])
    .await
}

/// Sequential authenticated GETs on the browser's one keep-alive connection; returns the
/// median and the largest latency of the streamed (chunked) answers. Every answer must be
/// the upstream's body, and at least `STREAMED_AT_LEAST` of them streamed.
async fn sequential_latency(b: &Browser, url: &str) -> (Duration, Duration) {
    // Warm up: connection, session cache, upstream pool.
    for _ in 0..3 {
        let r = b.get_csrf(url).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.bytes().await.unwrap();
    }
    let mut times = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let start = Instant::now();
        let r = b.get_csrf(url).await;
        assert_eq!(r.status(), StatusCode::OK);
        let streamed = r
            .headers()
            .get("transfer-encoding")
            .and_then(|v| v.to_str().ok())
            == Some("chunked");
        let body = r.bytes().await.unwrap();
        let elapsed = start.elapsed();
        assert_eq!(body, BODY.as_bytes());
        if streamed {
            times.push(elapsed);
        }
    }
    assert!(
        times.len() >= STREAMED_AT_LEAST,
        "only {} of {REQUESTS} answers were streamed (chunked); the test needs at least \
         {STREAMED_AT_LEAST} to mean anything",
        times.len()
    );
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

/// A client that keeps at most one idle connection: every request reuses the same one.
fn one_connection_client(
    jar: std::sync::Arc<reqwest::cookie::Jar>,
    ca: Option<reqwest::Certificate>,
) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .cookie_provider(jar)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1)
        .http1_only()
        .timeout(Duration::from_secs(30));
    if let Some(ca) = ca {
        builder = builder.add_root_certificate(ca);
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn chunked_upstream_adds_no_nagle_delay() {
    let port = free_port();
    let idp = Idp::start(&[format!("http://127.0.0.1:{port}")], IdpOptions::default()).await;
    let (_upstream, upstream_url) = streamed_upstream().await;
    let mut gw = Gateway::start(port, &default_config(port, &idp.issuer, &upstream_url, "")).await;

    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let b = Browser::with_client(one_connection_client(jar.clone(), None), jar);
    b.login(&gw, "alice").await;
    let (median, max) = sequential_latency(&b, &gw.url("/api/hello")).await;
    eprintln!("chunked through the gateway (plain): median {median:?}, max {max:?}");
    assert!(
        median < MEDIAN_LIMIT,
        "median latency {median:?} (max {max:?}) over {REQUESTS} sequential requests: a \
         gateway socket waits on Nagle's algorithm"
    );
    gw.stop().await;
}

#[tokio::test]
async fn chunked_upstream_adds_no_nagle_delay_over_tls() {
    let port = free_port();
    let origin = format!("https://127.0.0.1:{port}");
    let idp = Idp::start(std::slice::from_ref(&origin), IdpOptions::default()).await;
    let (_upstream, upstream_url) = streamed_upstream().await;
    let dir = temp_dir("gw-tls-latency");
    make_certificates(&dir);
    let config = default_config(port, &idp.issuer, &upstream_url, "")
        .replace(
            &format!("public_url = \"http://127.0.0.1:{port}\""),
            &format!("public_url = \"{origin}\""),
        )
        .replacen(
            "data_dir = \"data\"\n",
            "data_dir = \"data\"\n\n[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
            1,
        );
    let mut gw = Gateway::start_in(dir.clone(), port, &config).await;
    gw.origin = origin;

    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let b = Browser::with_client(one_connection_client(jar.clone(), Some(ca)), jar);
    b.login(&gw, "alice").await;
    let (median, max) = sequential_latency(&b, &gw.url("/api/hello")).await;
    eprintln!("chunked through the gateway (TLS): median {median:?}, max {max:?}");
    assert!(
        median < MEDIAN_LIMIT,
        "median latency {median:?} (max {max:?}) over {REQUESTS} sequential requests over TLS: \
         a gateway socket waits on Nagle's algorithm"
    );
    gw.stop().await;
}
