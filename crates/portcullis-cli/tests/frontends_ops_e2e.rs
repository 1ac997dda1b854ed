//! Operating several frontends, against the real binary: split-origin CORS per frontend (and
//! its reload), a configuration reloaded again and again (`SIGHUP`) under a steady stream of
//! authenticated API calls, and session administration of one frontend (admin listener
//! `?frontend=`, `portcullis sessions --frontend`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

/// Nothing listens here: the IdP and upstream of the tests that need neither.
const NOWHERE: &str = "http://127.0.0.1:9";
const APP: &str = "https://app.example.com";
const APP2: &str = "https://app2.example.com";
const LOCAL_APP: &str = "https://local-app.example.com";
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// Waits until the gateway logged `needle` after its first `seen_before` lines.
async fn wait_for_log(gw: &Gateway, needle: &str, seen_before: usize) {
    for _ in 0..200 {
        if gw
            .logs()
            .iter()
            .skip(seen_before)
            .any(|l| l.contains(needle))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway never logged {needle:?}:\n{}", gw.logs().join("\n"));
}

/// Writes `config` and sends `SIGHUP`; returns once the gateway logged the outcome.
async fn reload(gw: &Gateway, config: &str) {
    std::fs::write(&gw.config_path, config).unwrap();
    let before = gw.logs().len();
    let pid = gw.proc.as_ref().unwrap().child.id().unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
    wait_for_log(gw, "configuration reloaded", before).await;
}

// ---------------------------------------------------------------------------------------
// CORS per frontend

/// Default frontend + path frontend `admin` + host frontend `localhost` (its own CORS list)
/// + path frontend `plain` (CORS off); `[server.cors]` lists `top_origin`.
fn cors_config(port: u16, top_origin: &str, local_override: bool) -> String {
    let local_cors = if local_override {
        format!("[frontends.cors]\nallowed_origins = [\"{LOCAL_APP}\"]\n")
    } else {
        String::new()
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
data_dir = "data"
[server.cors]
allowed_origins = ["{top_origin}"]

[oidc]
issuer = "{NOWHERE}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"

[[routes]]
path = "/api"
upstream = "{NOWHERE}"

[[frontends]]
name = "admin"
match_path = "/admin"
[[frontends.routes]]
path = "/api"
upstream = "{NOWHERE}"

[[frontends]]
name = "local"
match_host = "localhost"
{local_cors}
[[frontends.routes]]
path = "/api"
upstream = "{NOWHERE}"
token = "none"

[[frontends]]
name = "plain"
match_path = "/plain"
[frontends.cors]
allowed_origins = []
[[frontends.routes]]
path = "/api"
upstream = "{NOWHERE}"
"#
    )
}

/// A preflight for `GET path` with `X-CSRF` from `origin`, naming `host` (default: the
/// gateway's address): (status, `Access-Control-Allow-Origin`). Checks the other CORS headers
/// of an accepted preflight and `Vary: Origin`.
async fn preflight(gw: &Gateway, host: Option<&str>, path: &str, origin: &str) -> (u16, String) {
    let mut req = Client::new()
        .request(Method::OPTIONS, gw.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "x-csrf");
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let r = req.send().await.unwrap();
    let acao = r
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    if r.status() == StatusCode::OK {
        let allowed = r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap();
        assert!(allowed.contains("x-csrf"), "{path}: {allowed}");
        assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    }
    let varies = r
        .headers()
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().to_ascii_lowercase().contains("origin"));
    // Every answer of a frontend with CORS varies on `Origin` (`plain` has none).
    assert!(
        varies || path.starts_with("/plain/"),
        "{host:?} {path} {origin}: no Vary: Origin"
    );
    (r.status().as_u16(), acao)
}

/// `[server.cors]` applies to every frontend (paths relative to each), `[frontends.cors]`
/// replaces it for one, and a reload replaces both.
#[tokio::test]
async fn cors_applies_to_every_frontend_and_follows_a_reload() {
    let gw = on_free_port(|port| async move {
        Gateway::try_start(port, &cors_config(port, APP, true)).await
    })
    .await;
    let local = format!("localhost:{}", gw.port);
    let local = Some(local.as_str());
    let ok = |origin: &str| (200, origin.to_owned());
    // Unlisted: no CORS header; the preflight falls through to the route (401, anti-forgery)
    // or endpoint (405, GET only).
    let refused = |(status, acao): (u16, String)| acao.is_empty() && [401, 405].contains(&status);

    for (host, path) in [
        (None, "/api/x"),
        (None, "/bff/user"),
        (None, "/admin/api/x"),
        (None, "/admin/bff/user"),
    ] {
        assert_eq!(preflight(&gw, host, path, APP).await, ok(APP), "{path}");
        let r = preflight(&gw, host, path, "https://evil.example").await;
        assert!(refused(r.clone()), "{path}: {r:?}");
    }
    // The host frontend has its own list, which replaces the top-level one.
    for path in ["/api/x", "/bff/user"] {
        assert_eq!(preflight(&gw, local, path, LOCAL_APP).await, ok(LOCAL_APP));
        let r = preflight(&gw, local, path, APP).await;
        assert!(refused(r.clone()), "{path}: {r:?}");
    }
    // `allowed_origins = []`: no CORS for that frontend.
    let r = preflight(&gw, None, "/plain/api/x", APP).await;
    assert!(refused(r.clone()), "{r:?}");
    // A listed origin of one frontend gets nothing from another on the same host.
    let r = preflight(&gw, None, "/admin/api/x", LOCAL_APP).await;
    assert!(refused(r.clone()), "{r:?}");

    // A host frontend keeps its own origin for WebSocket upgrades when CORS is on (its
    // default allow-list is its origin, not the public URL's): the upgrade passes the origin
    // check and reaches the (absent) upstream.
    for (origin, want) in [
        (format!("http://localhost:{}", gw.port), "HTTP/1.1 502"),
        (LOCAL_APP.to_owned(), "HTTP/1.1 502"),
        (format!("http://127.0.0.1:{}", gw.port), "HTTP/1.1 401"),
        ("https://evil.example".to_owned(), "HTTP/1.1 401"),
    ] {
        let head = raw_request(
            gw.port,
            &format!(
                "GET /api/ws HTTP/1.1\r\nHost: localhost:{}\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n",
                gw.port
            ),
        )
        .await;
        assert!(head.starts_with(want), "{origin}: {head}");
    }

    // Reload: the top-level list changes and the host frontend's override is gone.
    reload(&gw, &cors_config(gw.port, APP2, false)).await;
    for path in ["/api/x", "/admin/api/x", "/admin/bff/user"] {
        assert_eq!(preflight(&gw, None, path, APP2).await, ok(APP2), "{path}");
        let r = preflight(&gw, None, path, APP).await;
        assert!(refused(r.clone()), "{path} after reload: {r:?}");
    }
    assert_eq!(preflight(&gw, local, "/api/x", APP2).await, ok(APP2));
    let r = preflight(&gw, local, "/api/x", LOCAL_APP).await;
    assert!(refused(r.clone()), "{r:?}");
    let r = preflight(&gw, None, "/plain/api/x", APP2).await;
    assert!(refused(r.clone()), "{r:?}");

    // A reload that also changes a restart-only setting applies the rest and names it.
    let before = gw.logs().len();
    let with_limit = cors_config(gw.port, APP, false).replace(
        "data_dir = \"data\"\n",
        "data_dir = \"data\"\nmax_request_body = \"1MiB\"\n",
    );
    reload(&gw, &with_limit).await;
    let logs = gw.logs()[before..].join("\n");
    assert!(
        logs.contains("take effect only after a restart") && logs.contains("server limits"),
        "{logs}"
    );
    assert_eq!(preflight(&gw, None, "/admin/api/x", APP).await, ok(APP));
}

/// `X-Forwarded-Host` selects a frontend (and is checked against the known hosts) only with
/// `trust_forwarded_headers = true`; otherwise `Host` alone counts. (The frontend that
/// answered shows in its CORS answer: only `local` lists `LOCAL_APP`.)
#[tokio::test]
async fn forwarded_host_selects_a_frontend_only_when_trusted() {
    for trusted in [false, true] {
        let gw = on_free_port(|port| async move {
            let config = cors_config(port, APP, true).replace(
                "data_dir = \"data\"\n",
                &format!("data_dir = \"data\"\ntrust_forwarded_headers = {trusted}\n"),
            );
            Gateway::try_start(port, &config).await
        })
        .await;
        let ask = |forwarded: &'static str| {
            Client::new()
                .request(Method::OPTIONS, gw.url("/api/x"))
                .header("x-forwarded-host", forwarded)
                .header("origin", LOCAL_APP)
                .header("access-control-request-method", "GET")
                .send()
        };
        let r = ask("localhost").await.unwrap();
        let local_answered = r.headers().contains_key("access-control-allow-origin");
        assert_eq!(
            local_answered,
            trusted,
            "trusted={trusted}: {:?}",
            r.headers()
        );
        // An unknown forwarded host is refused only when it counts.
        let r = ask("evil.example").await.unwrap();
        assert_eq!(
            r.status() == StatusCode::MISDIRECTED_REQUEST,
            trusted,
            "trusted={trusted}: {}",
            r.status()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Reload under load

/// Calls per connection at most, and the time limit of the whole stream.
const MAX_CALLS_PER_CONNECTION: u64 = 5_000;
const STREAM_LIMIT: Duration = Duration::from_secs(90);
const CONNECTIONS: usize = 4;
const RELOADS: usize = 6;

/// The default configuration with a path frontend `stay` (unchanged by the reloads) and,
/// when `with_extra`, a frontend `extra` (added and removed by them).
fn load_config(port: u16, issuer: &str, api: &str, with_extra: bool, round: usize) -> String {
    let mut c = default_config(
        port,
        issuer,
        api,
        &format!(
            r#"
[[frontends]]
name = "stay"
match_path = "/stay"
[[frontends.routes]]
path = "/api"
upstream = "{api}"
"#
        ),
    );
    if with_extra {
        c.push_str(&format!(
            r#"
[[frontends]]
name = "extra"
match_path = "/extra{round}"
[[frontends.routes]]
path = "/api"
upstream = "{api}"
"#
        ));
    }
    c
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Connections that closed, or could not send, before the stream ended.
    dropped: AtomicU64,
}

/// One keep-alive HTTP/1.1 connection sending `GET path` with `cookie` and the anti-forgery
/// header, one at a time, until `stop` (or the call/time bound). Every answer must be a 200
/// whose body names `alice`; anything else is counted as a failure, and a connection that
/// ends early as dropped.
async fn stream(port: u16, path: String, cookie: String, stop: Arc<AtomicBool>, c: Arc<Counts>) {
    use http_body_util::{BodyExt, Empty};
    let deadline = Instant::now() + STREAM_LIMIT;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<hyper::body::Bytes>>(
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    for _ in 0..MAX_CALLS_PER_CONNECTION {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        if sender.ready().await.is_err() {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let request = http::Request::get(path.as_str())
            .header("host", format!("127.0.0.1:{port}"))
            .header("cookie", cookie.as_str())
            .header("x-csrf", "1")
            .body(Empty::new())
            .unwrap();
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{path}: connection dropped: {e}");
                c.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let status = response.status();
        let body = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                eprintln!("{path}: body cut off: {e}");
                c.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let who: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status == 200 && who["sub"] == "alice" {
            c.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            eprintln!("{path}: {status} {}", String::from_utf8_lossy(&body));
            c.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
}

/// `RELOADS` reloads (`SIGHUP`) that add and remove a frontend while `CONNECTIONS`
/// keep-alive connections call the default frontend's and an unchanged path frontend's API
/// with alice's sessions there (the real IdP, the JWT-checking API): no call fails, no
/// connection is dropped, and calls complete between every two reloads.
#[tokio::test]
async fn reload_under_load_drops_no_request_and_no_connection() {
    let stack = on_free_port(|port| async move {
        let root = format!("http://127.0.0.1:{port}");
        let idp = Idp::start(
            &[root.clone(), format!("{root}/stay")],
            IdpOptions::default(),
        )
        .await;
        let api = Api::start(&idp.issuer).await;
        let gw =
            Gateway::try_start(port, &load_config(port, &idp.issuer, &api.url, false, 0)).await?;
        Ok(Stack { idp, api, gw })
    })
    .await;
    let (gw, idp, api) = (&stack.gw, &stack.idp, &stack.api);
    // alice on the default frontend and on the path frontend `stay` (one browser, two
    // sessions, two cookies).
    let b = Browser::new();
    b.login(gw, "alice").await;
    let stay_view = Gateway {
        proc: None,
        origin: gw.url("/stay"),
        port: gw.port,
        dir: gw.dir.clone(),
        config_path: gw.config_path.clone(),
    };
    b.login(&stay_view, "alice").await;
    let cookie = b.cookie_header(&gw.url("/"));
    assert!(
        cookie.contains("bff-auth=") && cookie.contains("bff-auth-stay="),
        "{cookie}"
    );
    for path in ["/api/whoami", "/stay/api/whoami"] {
        assert_eq!(b.get_csrf(&gw.url(path)).await.status(), StatusCode::OK);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            // Half the connections call the default frontend, half the path frontend.
            let path = if i % 2 == 0 {
                "/api/whoami"
            } else {
                "/stay/api/whoami"
            };
            tokio::spawn(stream(
                gw.port,
                path.to_owned(),
                cookie.clone(),
                stop.clone(),
                counts.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    let mut between = Vec::new();
    for round in 1..=RELOADS {
        let before = counts.ok.load(Ordering::Relaxed);
        // Let calls flow before each reload (bounded: at most 5 s).
        for _ in 0..100 {
            if counts.ok.load(Ordering::Relaxed) >= before + 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        between.push(counts.ok.load(Ordering::Relaxed) - before);
        let with_extra = round % 2 == 1;
        reload(
            gw,
            &load_config(gw.port, &idp.issuer, &api.url, with_extra, round),
        )
        .await;
        let status = b
            .get_csrf(&gw.url(&format!("/extra{round}/bff/user")))
            .await
            .status();
        let want = if with_extra {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(status, want, "round {round}: extra frontend added/removed");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();
    let (ok, failed, dropped) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.dropped.load(Ordering::Relaxed),
    );
    eprintln!(
        "reload under load: {RELOADS} reloads, {ok} calls ({:.0}/s), {failed} failed, {dropped} connections dropped; calls before each reload: {between:?}",
        ok as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        (failed, dropped),
        (0, 0),
        "failed calls, dropped connections"
    );
    assert!(
        between.iter().all(|&n| n > 0),
        "calls completed between reloads: {between:?}"
    );
    // Both sessions are still there.
    for path in ["/bff/user", "/stay/bff/user"] {
        assert_eq!(b.get_csrf(&gw.url(path)).await.status(), StatusCode::OK);
    }
    assert!(
        !gw.logs().iter().any(|l| l.contains("reload refused")),
        "every reload was accepted"
    );
}

// ---------------------------------------------------------------------------------------
// Session administration per frontend

/// Runs `portcullis sessions <args> --config <gateway's config>`: (success, stdout JSON or
/// stderr text).
fn cli(gw: &Gateway, args: &[&str]) -> (bool, Value) {
    let out = std::process::Command::new(gateway_binary())
        .arg("sessions")
        .args(args)
        .arg("--config")
        .arg(&gw.config_path)
        .output()
        .unwrap();
    if out.status.success() {
        (true, serde_json::from_slice(&out.stdout).unwrap())
    } else {
        (
            false,
            Value::String(String::from_utf8_lossy(&out.stderr).into_owned()),
        )
    }
}

/// The admin listener's `?frontend=` and `portcullis sessions --frontend` see and end one
/// frontend's sessions only: alice logged in on the default frontend and on `admin` is two
/// sessions, one per frontend; ending the `admin` one leaves the other.
#[tokio::test]
async fn session_administration_works_on_one_frontend() {
    let admin_port = free_port();
    let stack = on_free_port(|port| async move {
        let root = format!("http://127.0.0.1:{port}");
        let idp = Idp::start(
            &[root.clone(), format!("{root}/admin")],
            IdpOptions::default(),
        )
        .await;
        let api = Api::start(&idp.issuer).await;
        let config = default_config(
            port,
            &idp.issuer,
            &api.url,
            &format!(
                "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
                 [[frontends]]\nname = \"admin\"\nmatch_path = \"/admin\"\n\
                 [[frontends.routes]]\npath = \"/api\"\nupstream = \"API_URL\"\n"
            ),
        );
        let gw = Gateway::try_start(port, &config).await?;
        Ok(Stack { idp, api, gw })
    })
    .await;
    let gw = &stack.gw;
    // The `admin` frontend seen as a gateway of its own (origin + prefix), for the helpers.
    let admin_view = Gateway {
        proc: None,
        origin: gw.url("/admin"),
        port: gw.port,
        dir: gw.dir.clone(),
        config_path: gw.config_path.clone(),
    };
    let (on_default, on_admin) = (Browser::new(), Browser::new());
    on_default.login(gw, "alice").await;
    on_admin.login(&admin_view, "alice").await;
    assert!(on_default.user(gw).await.is_some());
    assert!(on_admin.user(&admin_view).await.is_some());
    assert!(on_admin.user(gw).await.is_none(), "admin session only");

    let admin = Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{admin_port}{p}");
    let list = |q: &'static str| {
        let r = admin
            .get(url(&format!("/sessions?{q}")))
            .bearer_auth(ADMIN_TOKEN);
        async move {
            let r = r.send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let count = |v: &Value| v["sessions"].as_array().map_or(0, Vec::len);
    let (s, v) = list("sub=alice").await;
    assert_eq!((s, count(&v)), (StatusCode::OK, 1), "default frontend: {v}");
    let (s, v) = list("sub=alice&frontend=admin").await;
    assert_eq!((s, count(&v)), (StatusCode::OK, 1), "admin frontend: {v}");
    let (s, _) = list("sub=alice&frontend=nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "unknown frontend");
    let default_key = list("sub=alice").await.1["sessions"][0]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another frontend's session key is "not found" through this frontend.
    let r = admin
        .delete(url(&format!("/sessions/{default_key}?frontend=admin")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(on_default.user(gw).await.is_some());

    // The CLI: list per frontend, end the admin one.
    let (ok, v) = cli(gw, &["list", "--sub", "alice", "--frontend", "admin"]);
    assert!(ok, "{v}");
    assert_eq!(count(&v), 1, "{v}");
    let (ok, v) = cli(gw, &["list", "--sub", "alice", "--frontend", "nope"]);
    assert!(!ok && v.as_str().unwrap().contains("no frontend"), "{v}");
    let (ok, v) = cli(gw, &["end", "--sub", "alice", "--frontend", "admin"]);
    assert!(ok, "{v}");
    assert_eq!(v["ended"], 1, "{v}");
    assert!(on_admin.user(&admin_view).await.is_none(), "admin ended");
    assert!(on_default.user(gw).await.is_some(), "default kept");
    let (_, v) = list("sub=alice&frontend=admin").await;
    assert_eq!(count(&v), 0, "{v}");

    // And through the admin listener: end the default frontend's, by `?frontend=default`.
    let r = admin
        .delete(url("/sessions?sub=alice&frontend=default"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(on_default.user(gw).await.is_none(), "default ended");
}
