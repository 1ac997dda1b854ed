//! End-to-end regressions for the proxy findings of issue 12 (path escape through `..;`,
//! forwarding headers, mis-attributed body errors, `CONNECT`, duplicated `Origin`), against
//! the real binary, the real IdP and the echoing example API. Requests an HTTP client library
//! would normalise or refuse are written to the socket by hand.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

/// `/open` → the API below `/up/none`, no token: what the issue's reviewer used.
const OPEN_ROUTE: &str = r#"
[[routes]]
path = "/open"
upstream = "API_URL/up/none"
token = "none"
"#;

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nConnection: close\r\n\r\n")
}

/// Requests the API has seen, not counting this call to `/stats` itself.
async fn api_requests(api: &Api) -> u64 {
    api.requests().await
}

/// Asserts that `send` reached the upstream `forwarded` times (`/stats` calls excluded).
async fn upstream_hits<F: std::future::Future<Output = ()>>(api: &Api, send: F) -> u64 {
    let before = api_requests(api).await;
    send.await;
    let after = api_requests(api).await;
    after - before - 1
}

#[tokio::test]
async fn semicolon_dot_dot_does_not_escape_route_base() {
    let stack = Stack::start_with(IdpOptions::default(), OPEN_ROUTE).await;
    let (gw, api) = (&stack.gw, &stack.api);
    let refused = [
        "/open/..;/secret",
        "/open/..;jsessionid=x/secret",
        "/open/%2e%2e%3b/secret",
        "/open/%2E%2E;/secret",
        "/open/a/.;/..;/secret",
        "/open/..\\secret",
        "/open/..%5csecret",
        "/open/..%5Csecret",
        "/open/..%2fsecret",
        "/open/a%2F..%2F..%2Fsecret",
        "/open/%252e%252e/secret",
        "/open/%252e%252e%253b/secret",
        "/open/%c0%ae%c0%ae/secret",
        "/open/%u002e%u002e/secret",
        "/open/..%00/secret",
        "/open/.../secret",
    ];
    let hits = upstream_hits(api, async {
        for path in refused {
            let head = raw_request(gw.port, &get(path)).await;
            assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
        }
    })
    .await;
    assert_eq!(hits, 0, "a refused path reached the upstream");
    // Path parameters and dots inside names still pass, unchanged.
    let b = Browser::new();
    for (path, echoed) in [
        ("/open/items;v=2/7", "/up/none/items;v=2/7"),
        ("/open/a..b/.well-known", "/up/none/a..b/.well-known"),
    ] {
        let r = b.get_csrf(&gw.url(path)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["path"], echoed);
    }
}

#[tokio::test]
async fn client_forwarding_headers_are_stripped_when_untrusted() {
    let stack = Stack::start_with(IdpOptions::default(), OPEN_ROUTE).await;
    let gw = &stack.gw;
    let claims = [
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("cf-connecting-ip", "6.6.6.6"),
        ("x-client-ip", "6.6.6.6"),
        ("x-cluster-client-ip", "6.6.6.6"),
        ("fastly-client-ip", "6.6.6.6"),
        ("x-original-forwarded-for", "6.6.6.6"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-server", "evil"),
        ("x-forwarded-ssl", "on"),
        ("x-forwarded-scheme", "https"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-prefix", "/admin"),
        ("forwarded", "for=6.6.6.6;proto=https"),
        ("x-host", "evil.example"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-http-method-override", "DELETE"),
        ("x-method-override", "DELETE"),
    ];
    let mut req = Browser::new()
        .http
        .get(gw.url("/open/echo"))
        .header("x-csrf", "1")
        .header("x-request-id", "kept");
    for (n, v) in claims {
        req = req.header(n, v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let got = &v["headers"];
    for (n, _) in claims {
        if [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-prefix",
        ]
        .contains(&n)
        {
            continue;
        }
        assert!(got.get(n).is_none(), "{n} reached the upstream: {got}");
    }
    // The gateway's own values, not the client's.
    assert_eq!(got["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got["x-forwarded-proto"], "http");
    assert_eq!(got["x-forwarded-host"], format!("127.0.0.1:{}", gw.port));
    assert_eq!(got["x-forwarded-prefix"], "/open");
    assert_eq!(got["x-request-id"], "kept");
    assert_eq!(v["method"], "GET");
}

#[tokio::test]
async fn malformed_chunked_body_is_browser_400_not_502() {
    let stack = Stack::start_with(IdpOptions::default(), OPEN_ROUTE).await;
    let gw = &stack.gw;
    let request = "POST /open/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\n\
                   Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                   5\r\nhello\r\nZZZ-not-a-chunk-size\r\n\r\n";
    let head = raw_request(gw.port, request).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // The log line is read from the child's stderr asynchronously: wait for it (bounded).
    let browser_line =
        |l: &String| l.contains("request rejected") && l.contains("browser") && l.contains("body");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let logs = loop {
        let logs = gw.proc.as_ref().unwrap().output.lock().unwrap().clone();
        if logs.iter().any(browser_line) || std::time::Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        logs.iter().any(browser_line),
        "no browser-origin log line: {logs:#?}"
    );
    assert!(
        !logs.iter().any(|l| l.contains("upstream failure")),
        "logged as an upstream failure: {logs:#?}"
    );
    // A well-formed chunked body still streams through.
    let ok = "POST /open/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let head = raw_request(gw.port, ok).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn connect_on_route_is_405() {
    let stack = Stack::start_with(IdpOptions::default(), OPEN_ROUTE).await;
    let (gw, api) = (&stack.gw, &stack.api);
    let hits = upstream_hits(api, async {
        for method in ["CONNECT", "TRACE", "TRACK"] {
            for path in ["/open/x", "/open", "/api-none/x"] {
                let head = raw_request(
                    gw.port,
                    &format!(
                        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nConnection: close\r\n\r\n"
                    ),
                )
                .await;
                assert!(head.starts_with("HTTP/1.1 405"), "{method} {path}: {head}");
                assert!(head.to_ascii_lowercase().contains("\r\nallow: "), "{head}");
            }
        }
        // A method override cannot smuggle TRACE past the rule.
        let v: Value = Browser::new()
            .http
            .get(gw.url("/open/echo"))
            .header("x-csrf", "1")
            .header("x-http-method-override", "TRACE")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v["headers"].get("x-http-method-override").is_none());
    })
    .await;
    assert_eq!(
        hits, 1,
        "only the GET with the override header may reach the API"
    );
}

#[tokio::test]
async fn websocket_with_two_origin_headers_is_refused() {
    let stack = Stack::start().await;
    let (gw, api) = (&stack.gw, &stack.api);
    let handshake = |origins: &[&str]| {
        let mut h = format!(
            "GET /api-none/ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            gw.port
        );
        for o in origins {
            h.push_str(&format!("Origin: {o}\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    let hits = upstream_hits(api, async {
        for origins in [
            [gw.origin.as_str(), "http://evil.example"],
            ["http://evil.example", gw.origin.as_str()],
            [gw.origin.as_str(), gw.origin.as_str()],
        ] {
            let head = raw_request(gw.port, &handshake(&origins)).await;
            assert!(head.starts_with("HTTP/1.1 401"), "{origins:?}: {head}");
        }
    })
    .await;
    assert_eq!(hits, 0, "a refused handshake reached the upstream");
    // One origin, ours: the tunnel opens.
    let head = raw_request(gw.port, &handshake(&[gw.origin.as_str()])).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}
