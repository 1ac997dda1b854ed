//! Limits against hostile traffic (issue 11), against the real binary: clients that
//! misbehave on raw sockets (heads that never end, 100 kB of cookies, bodies over the limit,
//! idle connections beyond the connection limit, a flood of HTTP/2 resets). Each test checks
//! the status the abuser gets, that a well-behaved client is served meanwhile (its latency
//! is printed), and that the gateway neither panics nor dies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway (with IdP and API) whose `[server]` section gets `limits` and whose routes get
/// `routes` (`API_URL` is replaced by the API's address).
async fn stack(limits: &str, routes: &str) -> Stack {
    let limits = limits.to_owned();
    let routes = routes.to_owned();
    Stack::start_config(IdpOptions::default(), move |port, idp, api| {
        default_config(port, &idp.issuer, &api.url, &routes).replace(
            "data_dir = \"data\"",
            &format!("data_dir = \"data\"\n{limits}"),
        )
    })
    .await
}

/// A well-behaved client: one proxied `GET` every 50 ms on a kept-alive connection while the
/// abuse goes on. [`GoodClient::report`] prints its latencies and asserts it was served.
struct GoodClient {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Duration>, Vec<String>)>,
}

impl GoodClient {
    fn start(gw: &Gateway) -> GoodClient {
        Self::start_with(gw, reqwest::Client::new())
    }

    fn start_with(gw: &Gateway, http: reqwest::Client) -> GoodClient {
        let stop = Arc::new(AtomicBool::new(false));
        let url = gw.url("/api-none/echo/good");
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let started = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    http.get(&url).header("x-csrf", "1").send(),
                )
                .await;
                match r {
                    Ok(Ok(r)) if r.status() == StatusCode::OK => {
                        let _ = r.bytes().await;
                        latencies.push(started.elapsed());
                    }
                    Ok(Ok(r)) => failures.push(format!("status {}", r.status())),
                    Ok(Err(e)) => failures.push(format!("error {e}")),
                    Err(_) => failures.push("no answer within 10 s".into()),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (latencies, failures)
        });
        GoodClient { stop, task }
    }

    /// Stops the client, prints its latency figures and asserts that every request was
    /// served, none slower than `max`.
    async fn report(self, abuse: &str, max: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut latencies, failures) = self.task.await.unwrap();
        latencies.sort();
        let pct = |p: usize| latencies[(latencies.len() - 1) * p / 100];
        assert!(
            !latencies.is_empty(),
            "{abuse}: the well-behaved client got no answer"
        );
        println!(
            "LATENCY during {abuse}: well-behaved client {} requests, p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms, {} failed",
            latencies.len(),
            pct(50).as_secs_f64() * 1e3,
            pct(95).as_secs_f64() * 1e3,
            pct(100).as_secs_f64() * 1e3,
            failures.len()
        );
        assert!(
            failures.is_empty(),
            "{abuse}: well-behaved client failed: {failures:?}"
        );
        assert!(
            pct(100) < max,
            "{abuse}: a well-behaved request took {:?}",
            pct(100)
        );
    }
}

/// The gateway is alive and logged no panic.
async fn assert_alive(gw: &Gateway) {
    let r = reqwest::get(gw.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let logs = gw.logs();
    assert!(
        !logs.iter().any(|l| l.contains("panicked")),
        "the gateway panicked: {:?}",
        logs.iter()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
    );
}

/// Status code of an HTTP/1 response head.
fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Writes `head` then `filler` bytes forever (until the gateway stops reading) while reading
/// the answer; returns the answer's head (empty if the connection closed without one).
async fn endless_head(port: u16, head: &str) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = head.to_owned();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'a'; 4096];
        loop {
            wr.write_all(&chunk).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writer.abort();
    String::from_utf8_lossy(&buf)
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn oversized_heads_get_431_every_time_and_slow_heads_are_cut() {
    let stack = stack("header_read_timeout = \"1s\"", "").await;
    let gw = &stack.gw;
    let good = GoodClient::start(gw);

    // Under the limit (64 KiB by default), a big cookie reaches the gateway: 401 (no session).
    let http = reqwest::Client::new();
    let cookie = |size: usize| format!("junk={}", "c".repeat(size));
    let r = http
        .get(gw.url("/bff/user"))
        .header("x-csrf", "1")
        .header("cookie", cookie(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "20 kB cookie");

    // Over it: 431 every time, from a client library that writes the whole request before
    // it reads (the lingering close keeps the answer from being destroyed by a reset)...
    for size in [70_000, 100_000, 1_000_000] {
        for path in ["/bff/user", "/api/echo/x", "/healthz"] {
            let r = http
                .get(gw.url(path))
                .header("x-csrf", "1")
                .header("cookie", cookie(size))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{size} B cookie on {path}: no answer: {e}"));
            assert_eq!(
                r.status(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "{size} B cookie on {path}"
            );
        }
    }
    // ... from 100 kB of cookies spread over many Cookie headers ...
    let many: String = (0..100)
        .map(|i| format!("Cookie: c{i}={}\r\n", "v".repeat(1000)))
        .collect();
    let head = raw_request(
        gw.port,
        &format!("GET /bff/user HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\n{many}\r\n"),
    )
    .await;
    assert_eq!(status_of(&head), 431, "100 Cookie headers of 1 kB: {head}");
    // ... and from a header that never ends.
    let head = endless_head(
        gw.port,
        "GET /bff/user HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: x=",
    )
    .await;
    assert_eq!(status_of(&head), 431, "endless header: {head:?}");

    // HTTP/2 (prior knowledge): the header list limit answers 431 too.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(gw.url("/bff/user"))
        .header("x-csrf", "1")
        .header("cookie", cookie(100_000))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(
            r.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "h2"
        ),
        // The client may refuse itself once it knows the gateway's limit.
        Err(e) => println!("h2 client refused the 100 kB header itself: {e}"),
    }
    let r = h2.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::OK);

    // Slowloris: a head sent one byte every 200 ms is cut at header_read_timeout (1 s) with
    // a 408; a connection that sends nothing is closed after the same time.
    let mut slow = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let (mut rd, mut wr) = slow.into_split();
    let dribble = tokio::spawn(async move {
        while wr.write_all(b"z").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut answer)).await;
    let cut_after = started.elapsed();
    dribble.abort();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "slow head: {answer:?}");
    assert!(
        cut_after >= Duration::from_millis(900) && cut_after < Duration::from_secs(3),
        "slow head cut after {cut_after:?}"
    );
    let mut silent = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "a silent connection stayed open for 5 s");
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "silent connection closed after {closed_after:?}"
    );
    println!("slow head cut after {cut_after:?}; silent connection closed after {closed_after:?}");

    good.report("oversized and slow heads", Duration::from_secs(3))
        .await;
    assert_alive(gw).await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_others_pass() {
    let routes = r#"
[[routes]]
path = "/small"
upstream = "API_URL"
token = "none"
max_body = "16KiB"

[[routes]]
path = "/big"
upstream = "API_URL"
token = "none"
max_body = "4MiB"
"#;
    let stack = stack("max_request_body = \"256KiB\"", routes).await;
    let gw = &stack.gw;
    let good = GoodClient::start(gw);
    let http = reqwest::Client::new();
    let upload = |path: &str, body: reqwest::Body| {
        http.post(gw.url(path))
            .header("x-csrf", "1")
            .body(body)
            .send()
    };
    let bytes = |n: usize| reqwest::Body::from(vec![b'b'; n]);
    // Chunked: no Content-Length, the limit cuts the stream.
    let chunked = |n: usize| {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..n / 1000).map(|_| Ok(vec![b'c'; 1000])).collect();
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    };

    for (path, size, expected) in [
        ("/small/upload", 10_000, 200),
        ("/small/upload", 20_000, 413),
        ("/api-none/upload", 200_000, 200),
        ("/api-none/upload", 300_000, 413),
        ("/big/upload", 3_000_000, 200),
        ("/big/upload", 5_000_000, 413),
    ] {
        for (kind, body) in [("content-length", bytes(size)), ("chunked", chunked(size))] {
            let r = upload(path, body)
                .await
                .unwrap_or_else(|e| panic!("{path} {size} B {kind}: no answer: {e}"));
            assert_eq!(r.status().as_u16(), expected, "{path} {size} B {kind}");
            if expected == 200 {
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["bytes"], size, "{path} {size} B {kind}");
            }
        }
    }
    // The gateway's own endpoints follow the global limit.
    let r = http
        .post(gw.url("/bff/backchannel"))
        .form(&[("logout_token", "x".repeat(300_000))])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "back-channel logout"
    );
    // A declared length over the limit is answered at once, before any body byte is sent.
    let started = Instant::now();
    let head = raw_request(
        gw.port,
        "POST /small/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nContent-Length: 10000000\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 413, "{head}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );

    good.report("bodies over the limit", Duration::from_secs(3))
        .await;
    assert_alive(gw).await;
}

/// A request body that trickles in (nginx's `client_body_timeout`): answered 408 with
/// `Connection: close` when the route's `timeout` runs out while the gateway waits for the
/// browser, not a 504 blamed on the upstream; an upstream that is slow to answer is still
/// 504, and a whole body still passes.
#[tokio::test]
async fn body_that_trickles_gets_408_not_a_504_blamed_on_the_upstream() {
    let routes = r#"
[[routes]]
path = "/quick"
upstream = "API_URL"
token = "none"
timeout = "1s"
"#;
    let stack = stack("", routes).await;
    let gw = &stack.gw;
    let good = GoodClient::start(gw);
    let (answer, waited) = trickled_body(gw.port, "/quick/upload").await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "answered after {waited:?}; the route timeout is 1 s"
    );
    let http = reqwest::Client::new();
    // The upstream's own slowness is still the upstream's: 504.
    let r = http
        .get(gw.url("/quick/slow?ms=3000"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    // A whole body passes.
    let r = http
        .post(gw.url("/quick/upload"))
        .header("x-csrf", "1")
        .body(vec![b'x'; 50_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["bytes"], 50_000);
    good.report("a body that trickles", Duration::from_secs(3))
        .await;
    assert_alive(gw).await;
}

#[tokio::test]
async fn idle_connections_beyond_the_limit_wait_while_open_ones_keep_working() {
    let stack = stack(
        "max_connections = 8\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"",
        "",
    )
    .await;
    let gw = &stack.gw;
    // The well-behaved client's connection is open before the abuse starts.
    let good_http = reqwest::Client::new();
    let r = good_http
        .get(gw.url("/api-none/echo/first"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let good = GoodClient::start_with(gw, good_http);

    // 24 connections that never send a byte: 7 take the free slots, the others wait.
    let mut idle = Vec::new();
    for _ in 0..24 {
        idle.push(TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new client waits for a slot: idle connections are closed after header_read_timeout
    // (no first request within 1 s), in waves of 7.
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(12), reqwest::get(gw.url("/healthz")))
        .await
        .expect("a new client was never served")
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), StatusCode::OK);
    println!("a new connection behind 24 idle ones was served after {waited:?}");
    assert!(
        waited > Duration::from_millis(500),
        "the new client was served at once ({waited:?}): the connection limit did not apply"
    );
    // Every idle connection was closed by the gateway.
    for (i, mut s) in idle.into_iter().enumerate() {
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "idle connection {i} is still open");
    }
    // A kept-alive connection with no request in flight is closed after idle_timeout (2 s).
    let mut keep = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), keep.read_to_end(&mut all)).await;
    let idle_closed = started.elapsed();
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    assert!(
        idle_closed > Duration::from_millis(1800) && idle_closed < Duration::from_secs(4),
        "idle keep-alive connection closed after {idle_closed:?}"
    );
    println!("an idle keep-alive connection was closed after {idle_closed:?}");

    good.report("idle connections beyond the limit", Duration::from_secs(3))
        .await;
    assert_alive(gw).await;
}

// ---------------------------------------------------------------------------------------
// HTTP/2 by hand (RFC 9113): frames and a minimal HPACK encoding (RFC 7541, literals only).
// ---------------------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET path` with `x-csrf: 1`, as an HPACK block of indexed fields and literals.
fn get_block(path: &str) -> Vec<u8> {
    let literal = |out: &mut Vec<u8>, s: &str| {
        assert!(s.len() < 127);
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    };
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
    b.push(0x04); // :path, literal without indexing
    literal(&mut b, path);
    b.push(0x01); // :authority
    literal(&mut b, "127.0.0.1");
    b.push(0x00); // x-csrf: 1
    literal(&mut b, "x-csrf");
    literal(&mut b, "1");
    b
}

struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame(rd: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Frame> {
    let mut head = [0u8; 9];
    rd.read_exact(&mut head).await?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: head[3],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

fn code(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        payload[at],
        payload[at + 1],
        payload[at + 2],
        payload[at + 3],
    ])
}

/// An h2c connection past the SETTINGS exchange; also returns the gateway's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`.
async fn h2_connect(port: u16) -> (TcpStream, Option<u32>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut max_streams = None;
    loop {
        let f = read_frame(&mut s).await.unwrap();
        if f.kind == SETTINGS && f.payload.len() % 6 == 0 && !f.payload.is_empty() {
            for p in f.payload.chunks(6) {
                if u16::from_be_bytes([p[0], p[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS {
                    max_streams = Some(code(p, 2));
                }
            }
            s.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
            return (s, max_streams);
        }
        if f.kind == SETTINGS {
            // An empty SETTINGS (no parameter changed) still needs its ACK.
            s.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
            return (s, max_streams);
        }
    }
}

#[tokio::test]
async fn http2_reset_flood_gets_goaway_and_streams_beyond_the_limit_are_refused() {
    let stack = stack("http2_max_concurrent_streams = 50", "").await;
    let gw = &stack.gw;
    let good = GoodClient::start(gw);
    let good_h2 = GoodClient::start_with(
        gw,
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap(),
    );

    // Streams beyond SETTINGS_MAX_CONCURRENT_STREAMS are refused (RST_STREAM REFUSED_STREAM).
    let (s, max_streams) = h2_connect(gw.port).await;
    assert_eq!(max_streams, Some(50), "SETTINGS_MAX_CONCURRENT_STREAMS");
    let (mut rd, mut wr) = s.into_split();
    let block = get_block("/api-none/slow?ms=1500");
    let mut burst = Vec::new();
    for i in 0..80u32 {
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block));
    }
    wr.write_all(&burst).await.unwrap();
    let mut refused = 0;
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(f) = read_frame(&mut rd).await {
            if f.kind == RST_STREAM && code(&f.payload, 0) == REFUSED_STREAM {
                refused += 1;
                if refused == 30 {
                    break;
                }
            }
        }
    })
    .await;
    assert!(refused >= 1, "no stream beyond the limit of 50 was refused");
    println!("{refused} of 80 concurrent streams refused (limit 50)");
    drop((rd, wr));

    // Rapid reset (CVE-2023-44487): HEADERS + RST_STREAM pairs as fast as the socket takes
    // them, on one connection after the other for 3 s. Each connection gets GOAWAY
    // ENHANCE_YOUR_CALM and is closed.
    let block = get_block("/api-none/echo/reset");
    let started = Instant::now();
    let (mut attacks, mut sent) = (0u32, 0u32);
    while started.elapsed() < Duration::from_secs(3) {
        let (goaway, pairs) = rapid_reset(gw.port, &block).await;
        assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "GOAWAY error code");
        attacks += 1;
        sent += pairs;
    }
    println!(
        "rapid reset: {attacks} connections, {sent} HEADERS+RST_STREAM pairs written in {:?}, each connection ended by GOAWAY ENHANCE_YOUR_CALM",
        started.elapsed()
    );

    good.report(
        "an HTTP/2 reset flood (HTTP/1.1 client)",
        Duration::from_secs(3),
    )
    .await;
    good_h2
        .report(
            "an HTTP/2 reset flood (HTTP/2 client)",
            Duration::from_secs(3),
        )
        .await;
    assert_alive(gw).await;
}

/// One rapid-reset connection: floods until the gateway's GOAWAY (or 5 s); returns the
/// GOAWAY error code and the number of pairs written.
async fn rapid_reset(port: u16, block: &[u8]) -> (Option<u32>, u32) {
    let (s, _) = h2_connect(port).await;
    let (mut rd, mut wr) = s.into_split();
    let goaway = Arc::new(Mutex::new(None::<u32>));
    let seen = goaway.clone();
    let reader = tokio::spawn(async move {
        while let Ok(f) = read_frame(&mut rd).await {
            if f.kind == GOAWAY && f.stream == 0 {
                *seen.lock().unwrap() = Some(code(&f.payload, 4));
            }
        }
    });
    let started = Instant::now();
    let mut sent = 0u32;
    for batch in 0..200u32 {
        let mut buf = Vec::new();
        for i in 0..100u32 {
            let id = 2 * (batch * 100 + i) + 1;
            buf.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, block));
            buf.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        if wr.write_all(&buf).await.is_err()
            || goaway.lock().unwrap().is_some()
            || started.elapsed() > Duration::from_secs(5)
        {
            break;
        }
        sent += 100;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    let code = *goaway.lock().unwrap();
    (code, sent)
}

#[tokio::test]
async fn admin_listener_has_the_same_head_limits_as_the_public_one() {
    let admin_port = free_port();
    let stack = Stack::start_config(IdpOptions::default(), move |port, idp, api| {
        format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"admin-token-for-tests-0123456789\"\n",
            default_config(port, &idp.issuer, &api.url, "").replace(
                "data_dir = \"data\"",
                "data_dir = \"data\"\nheader_read_timeout = \"1s\"\nmax_header_size = \"16KiB\"",
            )
        )
    })
    .await;
    let http = reqwest::Client::new();
    let metrics = format!("http://127.0.0.1:{admin_port}/metrics");
    // Served at all (the limits did not break the admin listener).
    let r = http
        .get(&metrics)
        .bearer_auth("admin-token-for-tests-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A head over max_header_size: 431, as on the public listener.
    let r = http
        .get(&metrics)
        .header("cookie", format!("junk={}", "c".repeat(40_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // A head that dribbles is cut at header_read_timeout with a 408.
    let slow = TcpStream::connect(("127.0.0.1", admin_port)).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = slow.into_split();
    let dribble = tokio::spawn(async move {
        let _ = wr
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await;
        while wr.write_all(b"z").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut answer)).await;
    let cut_after = started.elapsed();
    dribble.abort();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "slow head on admin: {answer:?}"
    );
    assert!(
        cut_after < Duration::from_secs(3),
        "slow head on admin cut after {cut_after:?}"
    );
    assert_alive(&stack.gw).await;
}

/// A TLS client session to the gateway (trusting `ca.pem` in `dir`), after the handshake.
async fn tls_connect(
    port: u16,
    dir: &std::path::Path,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(dir.join("ca.pem")).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

#[tokio::test]
async fn limits_hold_over_tls_too() {
    let port = free_port();
    let origin = format!("https://127.0.0.1:{port}");
    let idp = Idp::start(std::slice::from_ref(&origin), IdpOptions::default()).await;
    let api = Api::start(&idp.issuer).await;
    let dir = temp_dir("gw-tls-limits");
    make_certificates(&dir);
    let config = default_config(port, &idp.issuer, &api.url, "")
        .replace(
            &format!("public_url = \"http://127.0.0.1:{port}\""),
            &format!("public_url = \"{origin}\""),
        )
        .replacen(
            "data_dir = \"data\"\n",
            "data_dir = \"data\"\nheader_read_timeout = \"1s\"\nmax_request_body = 1000\n\n[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
            1,
        );
    let mut gw = Gateway::start_in(dir.clone(), port, &config).await;
    gw.origin = origin;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .http1_only()
        .build()
        .unwrap();

    // A well-behaved client over TLS.
    let r = http.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Head over the limit: 431, over HTTP/1.1 and over HTTP/2 (ALPN h2).
    let r = http
        .get(gw.url("/bff/user"))
        .header("x-csrf", "1")
        .header("cookie", format!("junk={}", "c".repeat(100_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "TLS h1"
    );
    let h2 = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = h2.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN chose h2");
    match h2
        .get(gw.url("/bff/user"))
        .header("x-csrf", "1")
        .header("cookie", format!("junk={}", "c".repeat(100_000)))
        .send()
        .await
    {
        Ok(r) => assert_eq!(
            r.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "TLS h2"
        ),
        Err(e) => println!("h2 client refused the 100 kB header itself: {e}"),
    }
    // Body over max_request_body: 413.
    let r = http
        .post(gw.url("/api-none/echo/x"))
        .header("x-csrf", "1")
        .body(vec![b'x'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "TLS body");

    // A connection that never starts its handshake is closed at header_read_timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "a silent TLS connection stayed open for 5 s");
    let closed_after = started.elapsed();
    assert!(
        closed_after < Duration::from_secs(3),
        "silent TLS connection closed after {closed_after:?}"
    );
    // A head dribbled inside TLS is cut at header_read_timeout.
    let tls = tls_connect(port, &dir).await;
    let started = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let dribble = tokio::spawn(async move {
        let _ = wr
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await;
        let _ = wr.flush().await;
        loop {
            if wr.write_all(b"z").await.is_err() || wr.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut answer)).await;
    let cut_after = started.elapsed();
    dribble.abort();
    assert!(
        cut_after < Duration::from_secs(3),
        "a slow head over TLS was cut after {cut_after:?}"
    );
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "a slow head over TLS was served"
    );
    println!(
        "TLS: silent connection closed after {closed_after:?}; slow head cut after {cut_after:?}"
    );
    let r = http.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "still serving over TLS");
    gw.stop().await;
}

#[tokio::test]
async fn frontend_routes_apply_their_own_max_body_above_and_below_the_default() {
    // A path frontend with one route below the default limit and one above it; a host
    // frontend with the same route path and no max_body (the default applies there).
    let routes = r#"
[[frontends]]
name = "shop"
match_path = "/shop"
[[frontends.routes]]
path = "/small"
upstream = "API_URL"
token = "none"
max_body = "16KiB"
[[frontends.routes]]
path = "/big"
upstream = "API_URL"
token = "none"
max_body = "1MiB"

[[frontends]]
name = "other"
match_host = "other.localhost"
[[frontends.routes]]
path = "/big"
upstream = "API_URL"
token = "none"
"#;
    let stack = stack("max_request_body = \"256KiB\"", routes).await;
    let gw = &stack.gw;
    let http = reqwest::Client::new();
    let chunked = |n: usize| {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..n / 1000).map(|_| Ok(vec![b'c'; 1000])).collect();
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    };
    for (host, path, size, expected) in [
        (None, "/shop/small/upload", 10_000, 200),
        (None, "/shop/small/upload", 20_000, 413),
        (None, "/shop/big/upload", 800_000, 200),
        (None, "/shop/big/upload", 1_200_000, 413),
        // The host frontend's /big has no max_body of its own: the default (256 KiB).
        (Some("other.localhost"), "/big/upload", 200_000, 200),
        (Some("other.localhost"), "/big/upload", 800_000, 413),
    ] {
        for kind in ["content-length", "chunked"] {
            let body = match kind {
                "chunked" => chunked(size),
                _ => reqwest::Body::from(vec![b'b'; size]),
            };
            let mut req = http.post(gw.url(path)).header("x-csrf", "1").body(body);
            if let Some(h) = host {
                req = req.header("host", format!("{h}:{}", gw.port));
            }
            let r = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{host:?} {path} {size} B {kind}: no answer: {e}"));
            assert_eq!(
                r.status().as_u16(),
                expected,
                "{host:?} {path} {size} B {kind}"
            );
            if expected == 200 {
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["bytes"], size, "{path} {size} B {kind}");
            }
        }
    }
    assert_alive(gw).await;
}
