//! Streamed upstream bodies (no `Content-Length`) through the real binary, from real Node
//! upstreams (`testing/upstream/framing.mjs`): a small body that arrives with its head is sent
//! to the browser whole, with `Content-Length`, in one write; a body that keeps coming, an
//! event stream and a large body stay streamed; a body that breaks off before its head went
//! out is a 502, one that breaks off later is a cut response, never a complete-looking one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str = r#"{"message":"streamed hello","items":[1,2,3]}"#;

/// `framing.mjs` answering `BODY`, with these options.
async fn node_upstream(options: &[&str]) -> (Proc, String) {
    framing_upstream(&[&["--body", BODY], options].concat()).await
}

/// A raw HTTP/1 upstream on 127.0.0.1: reads each request's head, writes `response` as given
/// and closes the connection. Returns its URL.
async fn raw_upstream(response: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = socket.write_all(response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

fn route(path: &str, upstream: &str) -> String {
    format!("\n[[routes]]\npath = \"{path}\"\nupstream = \"{upstream}\"\ntoken = \"none\"\n")
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn small_chunked_body_goes_out_whole_but_streams_stay_streams() {
    let port = free_port();
    let idp = Idp::start(&[format!("http://127.0.0.1:{port}")], IdpOptions::default()).await;
    let (_whole, whole) = node_upstream(&["--framing", "chunked"]).await;
    let (_slow, slow) = node_upstream(&["--framing", "streamed", "--end-delay-ms", "600"]).await;
    let (_sse, sse) = node_upstream(&[
        "--framing",
        "chunked",
        "--content-type",
        "text/event-stream",
    ])
    .await;
    // 45 bytes × 1000: well past the 16 KiB a body may hold to be sent whole.
    let (_large, large) = node_upstream(&["--framing", "chunked", "--repeat", "1000"]).await;
    let extra = [
        route("/whole", &whole),
        route("/slow", &slow),
        route("/sse", &sse),
        route("/large", &large),
    ]
    .concat();
    let mut gw = Gateway::start(port, &default_config(port, &idp.issuer, &whole, &extra)).await;
    let b = Browser::new();

    // Head, data and terminating chunk in one segment: sent whole, with Content-Length.
    for _ in 0..3 {
        let r = b.get_csrf(&gw.url("/whole/x")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-length"), Some(&*BODY.len().to_string()));
        assert_eq!(header(&r, "transfer-encoding"), None);
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(r.bytes().await.unwrap(), BODY.as_bytes());
    }

    // HEAD: nothing to gather, and no length the upstream did not state (a made-up
    // `Content-Length: 0` would misstate the GET's).
    let r = b
        .send(b.http.head(gw.url("/whole/x")).header("x-csrf", "1"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), None);

    // The terminating chunk comes 600 ms after the data: the data must not wait for it.
    let start = Instant::now();
    let mut r = b.get_csrf(&gw.url("/slow/x")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "transfer-encoding"), Some("chunked"));
    let first = r.chunk().await.unwrap().expect("a first chunk");
    let first_after = start.elapsed();
    assert!(
        first_after < Duration::from_millis(400),
        "the first chunk took {first_after:?}: a body that keeps coming was held back"
    );
    let mut got = first.to_vec();
    while let Some(more) = r.chunk().await.unwrap() {
        got.extend_from_slice(&more);
    }
    assert_eq!(got, BODY.as_bytes());
    assert!(start.elapsed() >= Duration::from_millis(550));

    // An event stream is never held, even when it ends at once.
    let r = b.get_csrf(&gw.url("/sse/x")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "transfer-encoding"), Some("chunked"));
    assert_eq!(header(&r, "content-length"), None);
    assert_eq!(r.bytes().await.unwrap(), BODY.as_bytes());

    // Past the limit: streamed, intact.
    let r = b.get_csrf(&gw.url("/large/x")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "transfer-encoding"), Some("chunked"));
    assert_eq!(r.bytes().await.unwrap(), BODY.repeat(1000).as_bytes());

    gw.stop().await;
}

#[tokio::test]
async fn upstream_body_that_breaks_off_is_502_before_the_head_and_a_cut_response_after() {
    let port = free_port();
    let idp = Idp::start(&[format!("http://127.0.0.1:{port}")], IdpOptions::default()).await;
    let (_early, early) = node_upstream(&["--framing", "broken", "--end-delay-ms", "0"]).await;
    let (_late, late) = node_upstream(&["--framing", "broken", "--end-delay-ms", "300"]).await;
    let extra = [route("/early", &early), route("/late", &late)].concat();
    let mut gw = Gateway::start(port, &default_config(port, &idp.issuer, &early, &extra)).await;
    let b = Browser::new();

    // Broken within the moment the gateway waits for a streamed body: nothing went out yet,
    // so the browser gets a 502. (The upstream closes right after its write; should the
    // machine stall it past that moment, the response is a cut one instead: never a
    // complete-looking one. One of five attempts must be the 502.)
    let mut bad_gateway = 0;
    for _ in 0..5 {
        let r = b.get_csrf(&gw.url("/early/x")).await;
        if r.status() == StatusCode::BAD_GATEWAY {
            bad_gateway += 1;
            let text = r.text().await.unwrap();
            assert!(!text.contains("streamed"), "{text}");
        } else {
            assert_eq!(r.status(), StatusCode::OK);
            assert!(r.bytes().await.is_err(), "a broken body looked complete");
        }
    }
    assert!(bad_gateway > 0, "no attempt got its 502");

    // Broken after the head went out: the browser must see a failed body, not a short one
    // that looks complete.
    let r = b.get_csrf(&gw.url("/late/x")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.bytes().await.is_err(),
        "a body the upstream broke off reached the browser as if complete"
    );

    let logs = gw.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("the response body broke off")),
        "no log line names the broken upstream body:\n{}",
        logs.join("\n")
    );
    gw.stop().await;
}

/// The faults: an upstream answer with both `Content-Length: 3` and `Transfer-Encoding:
/// chunked` reached the browser with `Content-Length: 3` and a body cut to 3 bytes (RFC 9112
/// §6.3: Transfer-Encoding wins and a proxy removes the Content-Length); an HTTP/1.0
/// upstream's status line was passed on to the browser.
#[tokio::test]
async fn upstream_framing_and_version_are_not_passed_on_to_the_browser() {
    let port = free_port();
    let idp = Idp::start(&[format!("http://127.0.0.1:{port}")], IdpOptions::default()).await;
    let both = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let old = raw_upstream(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold server").await;
    let extra = [route("/both", &both), route("/old", &old)].concat();
    let mut gw = Gateway::start(port, &default_config(port, &idp.issuer, &both, &extra)).await;
    let b = Browser::new();

    let r = b.get_csrf(&gw.url("/both/x")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), Some("5"));
    assert_eq!(header(&r, "transfer-encoding"), None);
    assert_eq!(r.bytes().await.unwrap(), &b"hello"[..]);

    let r = b.get_csrf(&gw.url("/old/x")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(header(&r, "content-length"), Some("10"));
    assert_eq!(r.bytes().await.unwrap(), &b"old server"[..]);

    gw.stop().await;
}
