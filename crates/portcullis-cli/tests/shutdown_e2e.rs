//! Graceful shutdown of the real binary (issue 11): on SIGTERM `/readyz` answers 503 at once,
//! the listener closes after `server.shutdown_delay` (new connections are refused), in-flight
//! requests, a long server-sent-events stream included, complete within
//! `server.shutdown_grace`, and the process exits 0. `--version` names the commit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

async fn stack(limits: &str) -> Stack {
    let limits = limits.to_owned();
    Stack::start_config(IdpOptions::default(), move |port, idp, api| {
        default_config(port, &idp.issuer, &api.url, "").replace(
            "data_dir = \"data\"",
            &format!("data_dir = \"data\"\n{limits}"),
        )
    })
    .await
}

fn sigterm(gw: &Gateway) {
    let pid = gw.proc.as_ref().unwrap().child.id().expect("gateway pid");
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

async fn exit_status(gw: &mut Gateway, within: Duration) -> std::process::ExitStatus {
    let child = &mut gw.proc.as_mut().unwrap().child;
    tokio::time::timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the gateway did not exit within {within:?}"))
        .unwrap()
}

/// Reads a streamed body to its end (or failure); returns what arrived.
async fn read_stream(mut r: reqwest::Response) -> (String, bool) {
    let mut text = String::new();
    loop {
        match r.chunk().await {
            Ok(Some(c)) => text.push_str(&String::from_utf8_lossy(&c)),
            Ok(None) => return (text, true),
            Err(_) => return (text, false),
        }
    }
}

#[tokio::test]
async fn sigterm_turns_readyz_503_refuses_new_connections_completes_streams_and_exits_0() {
    let mut stack = stack("shutdown_delay = \"1500ms\"\nshutdown_grace = \"10s\"").await;
    let gw = &mut stack.gw;
    let http = reqwest::Client::new();
    let r = http.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A stream of 8 events, one every 400 ms (about 3 s), started before the signal.
    let mut sse = http
        .get(gw.url("/api-none/sse?count=8&interval_ms=400"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    let first = sse.chunk().await.unwrap().expect("first event");
    assert!(String::from_utf8_lossy(&first).contains("data: 0"));

    sigterm(gw);
    let signalled = Instant::now();
    let stream = tokio::spawn(read_stream(sse));
    // At once: not ready (on a new connection, still accepted during shutdown_delay).
    let mut saw_503 = false;
    while signalled.elapsed() < Duration::from_secs(1) {
        let r = reqwest::Client::new()
            .get(gw.url("/readyz"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            saw_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_503, "/readyz did not turn 503 within 1 s of SIGTERM");
    println!(
        "/readyz answered 503 {:?} after SIGTERM",
        signalled.elapsed()
    );
    // After the delay: new connections are refused.
    let refused_at = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                break signalled.elapsed()
            }
            _ if signalled.elapsed() > Duration::from_secs(4) => {
                panic!("new connections were still accepted 4 s after SIGTERM")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(
        refused_at >= Duration::from_millis(1400),
        "refused after {refused_at:?}, before shutdown_delay"
    );
    println!("new connections refused {refused_at:?} after SIGTERM");
    // The stream started before the signal runs to its end.
    let (rest, complete) = stream.await.unwrap();
    assert!(complete, "the SSE stream was cut: {rest:?}");
    assert!(rest.contains("data: 7"), "last event missing: {rest:?}");
    let status = exit_status(gw, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "exit status");
    println!("exited 0 {:?} after SIGTERM", signalled.elapsed());
    let logs = gw.logs();
    assert!(
        logs.iter().any(|l| l.contains("all connections drained")),
        "{logs:?}"
    );
}

#[tokio::test]
async fn drain_deadline_ends_a_stream_that_outlives_it_and_still_exits_0() {
    let mut stack = stack("shutdown_grace = \"1s\"").await;
    let gw = &mut stack.gw;
    let http = reqwest::Client::new();
    // 100 events at 200 ms: 20 s, far beyond the 1 s grace.
    let mut sse = http
        .get(gw.url("/api-none/sse?count=100&interval_ms=200"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    sse.chunk().await.unwrap().expect("first event");
    sigterm(gw);
    let signalled = Instant::now();
    // No delay configured: the listener closes at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .expect_err("a new connection was accepted after SIGTERM");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let status = exit_status(gw, Duration::from_secs(5)).await;
    let exited = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status");
    assert!(
        exited >= Duration::from_millis(900) && exited < Duration::from_secs(3),
        "exited {exited:?} after SIGTERM with a 1 s grace"
    );
    let (rest, _) = tokio::time::timeout(Duration::from_secs(5), read_stream(sse))
        .await
        .expect("the stream did not end when the gateway exited");
    assert!(
        !rest.contains("data: 99"),
        "the 20 s stream cannot have completed"
    );
    assert!(
        gw.logs()
            .iter()
            .any(|l| l.contains("drain deadline passed")),
        "{:?}",
        gw.logs()
    );
    println!("a 20 s stream was cut at the 1 s drain deadline; exited 0 after {exited:?}");
}

#[test]
fn version_names_the_package_version_and_a_commit() {
    let out = std::process::Command::new(gateway_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let expected = format!("portcullis {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected), "{text}");
    let commit = text
        .trim()
        .trim_start_matches(&expected)
        .trim_end_matches(')');
    // The tests run from a git checkout (CI clones with git): a real abbreviated hash.
    if std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.git")
        .exists()
    {
        assert_eq!(commit.len(), 12, "{text}");
        assert!(commit.chars().all(|c| c.is_ascii_hexdigit()), "{text}");
    } else {
        assert!(!commit.is_empty(), "{text}");
    }
}
