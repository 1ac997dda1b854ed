//! Where the SPA comes from, against the real binary: `index.html` from a CDN (a real static
//! server the test starts, `testing/cdn/server.mjs`, counting requests and honouring
//! `If-None-Match`), a development server proxied with a client-side route fallback, and
//! split-origin CORS with the real IdP and API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use common::*;
use reqwest::header::{HeaderMap, ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use reqwest::{Client, Method};
use serde_json::Value;
use tokio::process::Command;

const NAV: &str = "text/html,application/xhtml+xml,*/*;q=0.8";
/// Nothing listens here: the IdP and API of the tests that need neither.
const NOWHERE: &str = "http://127.0.0.1:9";
/// Just over the `index_html_cache = "2s"` of the CDN test: long enough for each step's
/// requests to fit in one cache period on a busy machine.
const CACHE_DUE: Duration = Duration::from_millis(2100);

struct Cdn {
    proc: Proc,
    url: String,
}

impl Cdn {
    async fn start(port: u16) -> Cdn {
        let mut cmd = Command::new("node");
        cmd.current_dir(repo_root())
            .args(["testing/cdn/server.mjs", "--port", &port.to_string()]);
        let proc = Proc::spawn("cdn", cmd).await;
        let port = proc.ready["port"].as_u64().expect("port in READY");
        Cdn {
            proc,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn stats(&self) -> Value {
        Client::new()
            .get(format!("{}/__test/stats", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn control(&self, path: &str, body: &str) {
        let r = Client::new()
            .post(format!("{}{path}", self.url))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{path}");
    }
}

async fn gateway(spa: &str) -> Gateway {
    on_free_port(|port| async move {
        Gateway::try_start(port, &default_config(port, NOWHERE, NOWHERE, spa)).await
    })
    .await
}

async fn get(url: &str, accept: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, String) {
    let mut req = Client::new().get(url).header(ACCEPT, accept);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

fn n(stats: &Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn cdn_index_html_is_transformed_cached_revalidated_and_served_stale() {
    let cdn = Cdn::start(0).await;
    let mut gw = gateway(&format!(
        r#"
[spa]
index_html_url = "{}/app/index.html"
index_html_cache = "2s"
[spa.index_html_inject]
apiBase = "/api"
evil = "</script><script>alert(1)</script><!--"
"#,
        cdn.url
    ))
    .await;

    // Transformed: the configuration before </head>, escaped; no <base> at the root.
    let (status, h, body) = get(&gw.url("/"), NAV, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h[CACHE_CONTROL], "no-cache");
    assert!(h[CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let script = r#"<script>window.__PORTCULLIS__ = {"apiBase":"/api","evil":"\u003c/script\u003e\u003cscript\u003ealert(1)\u003c/script\u003e\u003c!--"};</script></head>"#;
    assert!(body.contains(script), "{body}");
    assert!(body.contains("<title>cdn spa</title>"));
    assert!(!body.contains("<base"), "{body}");
    let etag = h[ETAG].to_str().unwrap().to_owned();

    // Cached: client-side routes and reloads do not reach the CDN within index_html_cache.
    for path in ["/", "/index.html", "/orders/7", "/deep/client/route"] {
        let (status, _, again) = get(&gw.url(path), NAV, &[]).await;
        assert_eq!((status, again == body), (200, true), "{path}");
    }
    let (status, _, empty) = get(&gw.url("/"), NAV, &[(IF_NONE_MATCH.as_str(), &etag)]).await;
    assert_eq!((status, empty.as_str()), (304, ""));
    // Assets are the CDN's, the gateway's own paths are the gateway's; neither reaches the CDN.
    for (path, accept, want) in [
        ("/main.js", "*/*", 404),
        ("/orders/7", "application/json", 404),
        ("/bff/nope", NAV, 404),
        ("/api/x", NAV, 401),
    ] {
        let (status, _, _) = get(&gw.url(path), accept, &[]).await;
        assert_eq!(status, want, "{path}");
    }
    let post = Client::new().post(gw.url("/")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    let s = cdn.stats().await;
    assert_eq!((n(&s, "requests"), n(&s, "full")), (1, 1), "{s}");
    assert_eq!(s["last_headers"]["accept"], "text/html");

    // Revalidated: after index_html_cache the gateway asks with If-None-Match, gets 304 and
    // serves the same page.
    tokio::time::sleep(CACHE_DUE).await;
    let (_, h, again) = get(&gw.url("/"), NAV, &[]).await;
    assert_eq!(again, body);
    assert_eq!(h[ETAG].to_str().unwrap(), etag);
    let s = cdn.stats().await;
    assert_eq!((n(&s, "requests"), n(&s, "not_modified")), (2, 1), "{s}");
    assert_eq!(s["last_headers"]["if-none-match"], "\"v1\"");

    // A new deployment is picked up (and transformed) once the cached copy is due.
    cdn.control(
        "/__test/page",
        "<html><head><title>v2</title></head><body></body></html>",
    )
    .await;
    tokio::time::sleep(CACHE_DUE).await;
    let (_, h, v2) = get(&gw.url("/"), NAV, &[]).await;
    assert!(
        v2.starts_with("<html><head><title>v2</title><script>window.__PORTCULLIS__"),
        "{v2}"
    );
    assert_ne!(h[ETAG].to_str().unwrap(), etag);
    assert_eq!(n(&cdn.stats().await, "full"), 2);
    // HEAD: the headers of the page, no body.
    let head = Client::new()
        .head(gw.url("/"))
        .header(ACCEPT, NAV)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], v2.len().to_string());
    assert_eq!(head.headers()[CACHE_CONTROL], "no-cache");
    assert!(head.text().await.unwrap().is_empty());

    // One fetch at a time: many navigations when the copy is due cause one CDN request.
    tokio::time::sleep(CACHE_DUE).await;
    let before = n(&cdn.stats().await, "requests");
    let pages = futures_util::future::join_all((0..20).map(|i| {
        let url = gw.url(&format!("/route/{i}"));
        async move { get(&url, NAV, &[]).await }
    }))
    .await;
    assert!(pages
        .iter()
        .all(|(status, _, page)| *status == 200 && *page == v2));
    assert_eq!(n(&cdn.stats().await, "requests"), before + 1);

    // Stale: a failing CDN (503), then a dead one; the last good copy is served, with a warning.
    cdn.control("/__test/fail?status=503", "").await;
    tokio::time::sleep(CACHE_DUE).await;
    let (status, _, stale) = get(&gw.url("/client/route"), NAV, &[]).await;
    assert_eq!((status, stale == v2), (200, true), "{stale}");
    let failed_at = n(&cdn.stats().await, "requests");
    assert_eq!(failed_at, 5, "the failed fetch reached the CDN");
    cdn.proc.stop().await;
    tokio::time::sleep(CACHE_DUE).await;
    for _ in 0..3 {
        let (status, _, stale) = get(&gw.url("/"), NAV, &[]).await;
        assert_eq!((status, stale == v2), (200, true));
    }
    let logs = gw.logs().join("\n");
    assert!(
        logs.contains("serving the last good copy") && logs.contains("503"),
        "{logs}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn cdn_that_never_answered_gives_a_502_page_then_recovers() {
    let cdn_port = free_port();
    let mut gw = gateway(&format!(
        "\n[spa]\nindex_html_url = \"http://127.0.0.1:{cdn_port}/app/index.html\"\nindex_html_cache = \"1s\"\n"
    ))
    .await;
    let (status, h, body) = get(&gw.url("/some/route"), NAV, &[]).await;
    assert_eq!(status, 502, "{body}");
    assert!(h[CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    assert!(
        body.contains("The application could not be loaded"),
        "{body}"
    );
    assert!(
        !body.contains(&cdn_port.to_string()),
        "no internal address on the page: {body}"
    );
    // A script's fetch of `/` keeps the API shape: 502, empty body.
    let (status, _, body) = get(&gw.url("/"), "*/*", &[("x-csrf", "1")]).await;
    assert_eq!((status, body.as_str()), (502, ""));

    let cdn = Cdn::start(cdn_port).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = get(&gw.url("/"), NAV, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<title>cdn spa</title>"));
    assert_eq!(n(&cdn.stats().await, "full"), 1);
    gw.stop().await;
}

#[tokio::test]
async fn dev_server_is_proxied_with_client_route_fallback() {
    let dev = Cdn::start(0).await;
    let mut gw = gateway(&format!("\n[spa]\nstatic_assets_url = \"{}/\"\n", dev.url)).await;

    let (status, _, js) = get(
        &gw.url("/src/main.js"),
        "*/*",
        &[("cookie", "bff-auth=secret-session")],
    )
    .await;
    assert_eq!((status, js.as_str()), (200, "console.log(\"dev\")"));
    let s = dev.stats().await;
    assert!(
        s["last_headers"].get("cookie").is_none(),
        "the browser's cookie reached the dev server: {s}"
    );
    assert_eq!(
        s["last_headers"]["x-forwarded-host"],
        format!("127.0.0.1:{}", gw.port)
    );

    // A client-side route the dev server does not know: its root instead.
    let (status, _, page) = get(&gw.url("/deep/client/route"), NAV, &[]).await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>cdn spa</title>"), "{page}");
    let s = dev.stats().await;
    assert_eq!(s["by_path"]["/deep/client/route"], 1);
    assert_eq!(s["by_path"]["/"], 1);
    // Not a navigation, or a file name: the dev server's 404 stands.
    for (path, accept) in [
        ("/missing.js", NAV),
        ("/deep/client/route", "application/json"),
    ] {
        let (status, _, _) = get(&gw.url(path), accept, &[]).await;
        assert_eq!(status, 404, "{path} {accept}");
    }
    // The gateway's paths and other methods never reach it.
    let before = n(&dev.stats().await, "requests");
    let (status, _, _) = get(&gw.url("/bff/nope"), NAV, &[]).await;
    assert_eq!(status, 404);
    let post = Client::new()
        .post(gw.url("/src/main.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(n(&dev.stats().await, "requests"), before);

    // The hot-module-replacement socket is tunnelled.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    s.write_all(
        format!(
            "GET /?token=x HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: vite-hmr\r\n\r\n",
            gw.port
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..read]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping-through-the-tunnel").await.unwrap();
    let mut echoed = vec![0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, b"ping-through-the-tunnel");

    // A dev server that is gone: the 502 page.
    drop(s);
    dev.proc.stop().await;
    let (status, _, body) = get(&gw.url("/deep/client/route"), NAV, &[]).await;
    assert_eq!(status, 502);
    assert!(
        body.contains("The application could not be loaded"),
        "{body}"
    );
    gw.stop().await;
}

fn access_control(h: &HeaderMap) -> Vec<String> {
    h.keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .map(|k| format!("{k}: {:?}", h[k]))
        .collect()
}

fn varies_on_origin(h: &HeaderMap) -> bool {
    h.get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("origin"))
}

#[tokio::test]
async fn cors_preflight_for_listed_and_unlisted_origins_and_a_credentialed_call() {
    const APP: &str = "https://app.example.com";
    const EVIL: &str = "https://evil.example";
    let stack = Stack::start_with(
        IdpOptions::default(),
        &format!(
            "\n[server.cors]\nallowed_origins = [\"{APP}\"]\nallowed_headers = [\"traceparent\"]\n"
        ),
    )
    .await;
    let (gw, api) = (&stack.gw, &stack.api);
    let http = Client::new();
    let preflight = |path: &str, origin: &str| {
        http.request(Method::OPTIONS, gw.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "x-csrf")
            .send()
    };

    let before = api.requests().await;
    for path in ["/api/whoami", "/bff/user"] {
        let r = preflight(path, APP).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], APP, "{path}");
        assert_eq!(h["access-control-allow-credentials"], "true");
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        assert!(
            allowed.contains("x-csrf") && allowed.contains("traceparent"),
            "{allowed}"
        );
        assert!(h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("GET"));
        assert!(h.contains_key("access-control-max-age"));
        assert!(varies_on_origin(h), "{path}: {h:?}");

        // Not listed: no CORS headers at all; the request falls through (no anti-forgery
        // header → 401 on the API; /bff/user answers GET only → 405).
        let r = preflight(path, EVIL).await.unwrap();
        assert!(
            access_control(r.headers()).is_empty(),
            "{path}: {:?}",
            access_control(r.headers())
        );
        assert!(
            [401, 405].contains(&r.status().as_u16()),
            "{path}: {}",
            r.status()
        );
        assert!(varies_on_origin(r.headers()));
    }
    // (The API counts the `/stats` request itself.)
    assert_eq!(
        api.requests().await,
        before + 1,
        "no preflight reached the upstream"
    );
    // Exact match only.
    for origin in [
        "https://app.example.com.evil.example",
        "http://app.example.com",
        "null",
    ] {
        let r = preflight("/api/whoami", origin).await.unwrap();
        assert!(access_control(r.headers()).is_empty(), "{origin}");
    }

    // An actual credentialed call from the listed origin: the session cookie, the
    // anti-forgery header, and the answer readable by that origin only.
    let browser = Browser::new();
    browser.login(gw, "alice").await;
    let call = |path: &str, origin: &str| {
        browser.send(
            browser
                .http
                .get(gw.url(path))
                .header("origin", origin)
                .header("x-csrf", "1"),
        )
    };
    let r = call("/api/whoami", APP).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], APP);
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    assert!(varies_on_origin(r.headers()));
    let who: Value = r.json().await.unwrap();
    assert_eq!(who["sub"], "alice", "{who}");
    let r = call("/bff/user", APP).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], APP);
    // From an origin not listed the gateway still answers (a browser would not let the page
    // read it), without any CORS header.
    let r = call("/api/whoami", EVIL).await;
    assert!(
        access_control(r.headers()).is_empty(),
        "{:?}",
        access_control(r.headers())
    );
    // Outside the API and management paths CORS does not apply.
    let r = call("/healthz", APP).await;
    assert!(access_control(r.headers()).is_empty());

    // The listed origin may open WebSockets through API routes (the default allow-list is
    // the public origin plus the CORS origins); others still may not.
    for (origin, want) in [(APP, "HTTP/1.1 101"), (EVIL, "HTTP/1.1 401")] {
        let head = raw_request(
            gw.port,
            &format!(
                "GET /api-none/ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n",
                gw.port
            ),
        )
        .await;
        assert!(head.starts_with(want), "{origin}: {head}");
    }
}

/// A reload keeps the `index.html` copy of every frontend whose SPA source and settings did
/// not change (a CDN that is down during the reload does not take them down), and drops the
/// copy of a frontend that changed.
#[tokio::test]
async fn reload_keeps_unchanged_frontends_index_html_while_the_cdn_is_down() {
    let cdn = Cdn::start(0).await;
    let config = |port: u16, admin_inject: &str, beta: bool| {
        let mut extra = format!(
            r#"
[spa]
index_html_url = "{cdn}/app/index.html"

[[frontends]]
name = "admin"
match_path = "/admin"
index_html_url = "{cdn}/app/index.html"
[frontends.index_html_inject]
who = "{admin_inject}"
"#,
            cdn = cdn.url
        );
        if beta {
            extra.push_str("\n[[frontends]]\nname = \"beta\"\nmatch_path = \"/beta\"\n");
        }
        default_config(port, NOWHERE, NOWHERE, &extra)
    };
    let gw = {
        let config = &config;
        on_free_port(
            |port| async move { Gateway::try_start(port, &config(port, "a", false)).await },
        )
        .await
    };
    let (s1, _, root) = get(&gw.url("/"), NAV, &[]).await;
    let (s2, _, admin) = get(&gw.url("/admin/"), NAV, &[]).await;
    assert_eq!((s1, s2), (200, 200), "{root}\n{admin}");
    assert!(admin.contains(r#""who":"a""#), "{admin}");
    assert_eq!(n(&cdn.stats().await, "full"), 2);

    // The CDN goes down; a reload adds a frontend: the others keep their pages.
    cdn.proc.stop().await;
    reload(&gw, config(gw.port, "a", true)).await;
    assert_eq!(
        get(&gw.url("/beta/bff/user"), "*/*", &[("x-csrf", "1")])
            .await
            .0,
        401,
        "beta exists"
    );
    let (s1, _, root_after) = get(&gw.url("/route"), NAV, &[]).await;
    let (s2, _, admin_after) = get(&gw.url("/admin/route"), NAV, &[]).await;
    assert_eq!((s1, s2), (200, 200), "{root_after}\n{admin_after}");
    assert_eq!((root_after, admin_after), (root, admin));

    // `admin` changes: its copy is dropped (and the CDN is down: 502), the default keeps its.
    reload(&gw, config(gw.port, "b", true)).await;
    assert_eq!(get(&gw.url("/admin/route"), NAV, &[]).await.0, 502);
    assert_eq!(get(&gw.url("/route"), NAV, &[]).await.0, 200);
}

/// Writes `text` as the gateway's configuration, sends `SIGHUP`, and waits for the reload.
async fn reload(gw: &Gateway, text: String) {
    std::fs::write(&gw.config_path, text).unwrap();
    let before = gw.logs().len();
    let pid = gw.proc.as_ref().unwrap().child.id().unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    for _ in 0..200 {
        if gw.logs()[before..]
            .iter()
            .any(|l| l.contains("configuration reloaded"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no reload:\n{}", gw.logs().join("\n"));
}
