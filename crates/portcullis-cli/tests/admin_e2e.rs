//! Session administration: the admin listener (bearer token, list and end a user's
//! sessions, metrics) and the `portcullis sessions` subcommand.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

#[tokio::test]
async fn operators_list_and_end_a_users_sessions() {
    let admin_port = free_port();
    let stack = Stack::start_with(
        IdpOptions::default(),
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"{ADMIN_TOKEN}\"\n"),
    )
    .await;
    let gw = &stack.gw;
    let (alice1, alice2, bob) = (Browser::new(), Browser::new(), Browser::new());
    alice1.login(gw, "alice").await;
    alice2.login(gw, "alice").await;
    bob.login(gw, "bob").await;
    let admin = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{admin_port}{p}");

    // The admin listener is not the public one, and it needs the token.
    let public = alice1.get(&gw.url("/sessions?sub=alice")).await;
    assert!(
        !public.status().is_success(),
        "admin endpoints are not on the public listener"
    );
    for auth in [None, Some("Bearer wrong-token"), Some(ADMIN_TOKEN)] {
        let mut req = admin.get(url("/sessions?sub=alice"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(
            req.send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "{auth:?}"
        );
    }
    let r = admin
        .get(url("/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "a selector is required"
    );

    let r = admin
        .get(url("/sessions?sub=alice"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains("eyJ"), "no token in the listing");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["sessions"].as_array().unwrap().len(), 2);

    // End one by key, then all of alice's.
    let key = v["sessions"][0]["key"].as_str().unwrap().to_owned();
    let r = admin
        .delete(url(&format!("/sessions/{key}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = admin
        .delete(url(&format!("/sessions/{key}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = admin
        .delete(url("/sessions?sub=alice"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["ended"], 1);
    // API routes first (the session cache serves them), then the uncached session check.
    for b in [&alice1, &alice2] {
        assert_eq!(
            b.get_csrf(&gw.url("/api/whoami")).await.status(),
            StatusCode::UNAUTHORIZED,
            "ended sessions get no API call"
        );
    }
    assert!(alice1.user(gw).await.is_none() && alice2.user(gw).await.is_none());
    assert_eq!(
        bob.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::OK,
        "other users untouched"
    );
    assert!(bob.user(gw).await.is_some(), "other users untouched");
    assert_eq!(
        stack.idp.active_refresh_tokens("alice").await,
        0,
        "refresh tokens revoked"
    );

    let r = admin
        .get(url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let metrics = r.text().await.unwrap();
    assert!(metrics.contains("portcullis_"), "{metrics}");
    // Request and stage duration histograms (buckets, so the gateway's added latency can be
    // read per route and stage).
    let has = |name: &str, labels: &[&str]| {
        metrics
            .lines()
            .any(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
    };
    for (name, labels) in [
        (
            "portcullis_request_duration_seconds_bucket",
            &[
                "route=\"/api\"",
                "method=\"GET\"",
                "status=\"200\"",
                "le=\"0.005\"",
            ][..],
        ),
        (
            "portcullis_request_duration_seconds_count",
            &["route=\"/signin-oidc\"", "status=\"302\""][..],
        ),
        (
            "portcullis_stage_duration_seconds_bucket",
            &["route=\"/api\"", "stage=\"session\""][..],
        ),
        (
            "portcullis_stage_duration_seconds_bucket",
            &["route=\"/api\"", "stage=\"token\""][..],
        ),
        (
            "portcullis_stage_duration_seconds_bucket",
            &["route=\"/api\"", "stage=\"upstream\"", "le=\"+Inf\""][..],
        ),
    ] {
        assert!(
            has(name, labels),
            "no {name} with {labels:?} in:\n{metrics}"
        );
    }

    // The CLI reaches the same store (SQLite, concurrently with the running gateway).
    let cli = |args: &[&str]| cli(gw, args);
    let listed = cli(&["list", "--sub", "bob"]);
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1);
    let ended = cli(&["end", "--sub", "bob"]);
    assert_eq!(ended["ended"], 1);
    assert_eq!(
        bob.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::UNAUTHORIZED,
        "ended through the CLI, API routes included"
    );
    assert!(bob.user(gw).await.is_none(), "ended through the CLI");
}

/// Runs `portcullis sessions <args> --config <gateway's config>` and returns its JSON.
fn cli(gw: &Gateway, args: &[&str]) -> Value {
    let out = std::process::Command::new(gateway_binary())
        .arg("sessions")
        .args(args)
        .arg("--config")
        .arg(&gw.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()
}

/// Calls `/api/whoami` until the session cache certainly holds the session (two calls: the
/// first may fill it), asserting 200 each time.
async fn warm(b: &Browser, gw: &Gateway) {
    for _ in 0..2 {
        let r = b.get_csrf(&gw.url("/api/whoami")).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}

/// The CLI is another process on the same SQLite file: the running gateway's session cache
/// must not serve the ended session to the very next API call (it did, for `cache_ttl`).
#[tokio::test]
async fn cli_session_end_takes_effect_on_next_api_call() {
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let (alice, bob) = (Browser::new(), Browser::new());
    alice.login(gw, "alice").await;
    bob.login(gw, "bob").await;
    for round in 0..3 {
        // Several rounds: the change signal must work again after it was consumed, whether
        // the database files were modified a moment ago or long enough ago to be trusted.
        if round == 2 {
            tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
        }
        if round > 0 {
            alice.login(gw, "alice").await;
        }
        warm(&alice, gw).await;
        warm(&bob, gw).await;
        let ended = cli(gw, &["end", "--sub", "alice"]);
        assert_eq!(ended["ended"], 1, "round {round}");
        let r = alice.get_csrf(&gw.url("/api/whoami")).await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "round {round}: the next API call after `sessions end` is refused"
        );
        assert!(alice.user(gw).await.is_none(), "round {round}");
        assert_eq!(
            bob.get_csrf(&gw.url("/api/whoami")).await.status(),
            StatusCode::OK,
            "round {round}: bob untouched"
        );
    }
}

#[tokio::test]
async fn admin_api_end_takes_effect_on_next_api_call() {
    let admin_port = free_port();
    let stack = Stack::start_with(
        IdpOptions::default(),
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"{ADMIN_TOKEN}\"\n"),
    )
    .await;
    let gw = &stack.gw;
    let admin = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{admin_port}{p}");
    let (alice, bob) = (Browser::new(), Browser::new());
    alice.login(gw, "alice").await;
    bob.login(gw, "bob").await;

    // By user.
    warm(&alice, gw).await;
    warm(&bob, gw).await;
    let r = admin
        .delete(url("/sessions?sub=alice"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        alice.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        bob.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::OK
    );

    // By key.
    let listed: Value = admin
        .get(url("/sessions?sub=bob"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = listed["sessions"][0]["key"].as_str().unwrap().to_owned();
    warm(&bob, gw).await;
    let r = admin
        .delete(url(&format!("/sessions/{key}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        bob.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Opens a WebSocket tunnel through `/api/ws` and reads the upstream's greeting.
async fn open_tunnel(b: &Browser, gw: &Gateway) -> tokio::io::BufReader<tokio::net::TcpStream> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let cookie = b.cookie_header(&gw.origin);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let handshake = format!(
        "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {cookie}\r\n\
         Origin: {}\r\n\r\n",
        gw.port, gw.origin
    );
    s.write_all(handshake.as_bytes()).await.unwrap();
    let mut reader = tokio::io::BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut hello = String::new();
    reader.read_line(&mut hello).await.unwrap();
    assert!(hello.contains("\"authorization\":true"), "{hello}");
    reader
}

/// Waits (bounded) until the gateway closes the tunnel; the tunnel echoes until then.
async fn closes_within(reader: &mut tokio::io::BufReader<tokio::net::TcpStream>, limit_ms: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_millis(limit_ms);
    let mut buf = [0u8; 64];
    loop {
        // Keep talking: a tunnel that is open echoes.
        let _ = reader.get_mut().write_all(b"x").await;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "tunnel still open after {limit_ms} ms");
        let read = tokio::time::timeout(
            left.min(std::time::Duration::from_millis(500)),
            reader.read(&mut buf),
        )
        .await;
        // EOF or a reset: closed. Echoed bytes or no answer yet: look again.
        if let Ok(Ok(0) | Err(_)) = read {
            return;
        }
    }
}

#[tokio::test]
async fn websocket_tunnel_closes_when_session_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let (alice, bob) = (Browser::new(), Browser::new());
    alice.login(gw, "alice").await;
    bob.login(gw, "bob").await;
    let mut alice_tunnel = open_tunnel(&alice, gw).await;
    let mut bob_tunnel = open_tunnel(&bob, gw).await;

    // Ended from another process (the CLI): the tunnel closes within the re-check period.
    assert_eq!(cli(gw, &["end", "--sub", "alice"])["ended"], 1);
    let recheck_ms = 2000; // portcullis::session::TUNNEL_RECHECK
    closes_within(&mut alice_tunnel, recheck_ms + 2000).await;

    // Logout at the gateway closes the tunnel of that session too.
    let claims = bob.user(gw).await.unwrap();
    let logout_url = claim(&claims, "bff:logout_url")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let r = bob.get(&gw.url(&logout_url)).await;
    assert!(r.status().is_redirection(), "{}", r.status());
    closes_within(&mut bob_tunnel, recheck_ms + 2000).await;

    // A tunnel of a live session stays open and echoes.
    let carol = Browser::new();
    carol.login(gw, "alice").await;
    let mut carol_tunnel = open_tunnel(&carol, gw).await;
    tokio::time::sleep(std::time::Duration::from_millis(recheck_ms + 500)).await;
    carol_tunnel
        .get_mut()
        .write_all(b"still-open")
        .await
        .unwrap();
    let mut echo = [0u8; 10];
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        carol_tunnel.read_exact(&mut echo),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&echo, b"still-open");
}

/// A session past its idle timeout closes its tunnel, even while bytes flow.
#[tokio::test]
async fn websocket_tunnel_closes_when_session_expires() {
    let port = free_port();
    let idp = Idp::start(&[format!("http://127.0.0.1:{port}")], IdpOptions::default()).await;
    let api = Api::start(&idp.issuer).await;
    let config = default_config(port, &idp.issuer, &api.url, "")
        .replace("idle_timeout = \"1h\"", "idle_timeout = \"3s\"");
    let gw = Gateway::start(port, &config).await;
    let alice = Browser::new();
    alice.login(&gw, "alice").await;
    let mut tunnel = open_tunnel(&alice, &gw).await;
    // Expires 3 s after login; the tunnel must be gone within the re-check period after.
    closes_within(&mut tunnel, 3000 + 2000 + 1000).await;
    assert_eq!(
        alice.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
