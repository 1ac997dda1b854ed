//! End-to-end checks of what a browser sees when things are not the happy path: Duende v3's
//! silent-login endpoint, the SPA fallback rule, error pages for failed navigations, IdP
//! errors on the callback (the `bff_error` parameter, RFC 9207 on error responses), log
//! injection through callback parameters, junk login cookies, and malformed request targets.
//! Real processes: the `portcullis` binary, the npm `oidc-provider`, the sample API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use common::*;
use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::Value;

/// A small SPA directory: index.html, an asset, a precompressed asset.
fn spa_dir() -> std::path::PathBuf {
    let dir = temp_dir("spa");
    std::fs::write(
        dir.join("index.html"),
        "<!doctype html><title>the spa</title>",
    )
    .unwrap();
    std::fs::write(dir.join("app.js"), "console.log('app')").unwrap();
    std::fs::write(dir.join("app.js.gz"), b"\x1f\x8bnot-really-gzip").unwrap();
    dir
}

/// IdP + API + gateway serving an SPA; `edit` changes the configuration text.
async fn spa_stack(edit: impl FnOnce(String) -> String) -> Stack {
    let port = free_port();
    let idp = Idp::start(&[format!("http://127.0.0.1:{port}")], IdpOptions::default()).await;
    let api = Api::start(&idp.issuer).await;
    let spa = format!("\n[spa]\ndir = \"{}\"\n", spa_dir().display());
    let config = edit(default_config(port, &idp.issuer, &api.url, &spa));
    let gw = Gateway::start(port, &config).await;
    Stack { idp, api, gw }
}

const NAV_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

async fn navigate(b: &Browser, url: &str) -> reqwest::Response {
    b.http
        .get(url)
        .header("accept", NAV_ACCEPT)
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap()
}

/// A browser whose every request is a top-level navigation (as when following links).
fn navigating_browser() -> Browser {
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("accept", NAV_ACCEPT.parse().unwrap());
    headers.insert("sec-fetch-mode", "navigate".parse().unwrap());
    let http = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    Browser::with_client(http, jar)
}

/// Waits (bounded) until the gateway's output has a line containing `needle`.
async fn wait_for_log(gw: &Gateway, needle: &str) -> Vec<String> {
    let output = gw.proc.as_ref().unwrap().output.clone();
    for _ in 0..50 {
        {
            let lines = output.lock().unwrap();
            if lines.iter().any(|l| l.contains(needle)) {
                return lines.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no log line contains {needle:?}");
}

/// Starts a login and returns its `state` (the browser keeps the transaction cookie).
async fn start_login(b: &Browser, gw: &Gateway, path: &str) -> String {
    let r = b.get(&gw.url(path)).await;
    assert_eq!(r.status(), StatusCode::FOUND, "{path}");
    let authorize = r.headers()[LOCATION].to_str().unwrap().to_owned();
    query_param(&authorize, "state").expect("state on the authorization request")
}

// ---------------------------------------------------------------------------------------
// Duende v3's /bff/silent-login
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn duende_v3_silent_login_endpoint_exists() {
    let stack = Stack::start().await;
    let gw = &stack.gw;

    // The endpoint starts a prompt=none login (not the SPA, not a 404).
    let anon = Browser::new();
    let r = anon.get(&gw.url("/bff/silent-login")).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let authorize = r.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(authorize.starts_with(&stack.idp.issuer), "{authorize}");
    assert_eq!(query_param(&authorize, "prompt").as_deref(), Some("none"));

    // Without an IdP session: the page tells the parent "not logged in".
    let (r, url) = anon.follow(gw.url("/bff/silent-login"), 10).await;
    assert_eq!(url, gw.url("/bff/silent-login-callback"));
    let page = r.text().await.unwrap();
    assert!(page.contains("source:'bff-silent-login'"), "{page}");
    assert!(page.contains("isLoggedIn:false"), "{page}");
    assert!(anon.user(gw).await.is_none());

    // With a live IdP session (gateway session ended locally): "logged in", and a session.
    let b = Browser::new();
    b.login(gw, "alice").await;
    let claims = b.user(gw).await.unwrap();
    let logout = claim(&claims, "bff:logout_url")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(b.get(&gw.url(&logout)).await.status(), StatusCode::FOUND);
    assert!(b.user(gw).await.is_none());
    let (r, url) = b.follow(gw.url("/bff/silent-login"), 10).await;
    assert_eq!(url, gw.url("/bff/silent-login-callback"));
    let page = r.text().await.unwrap();
    assert!(page.contains("isLoggedIn:true"), "{page}");
    let claims = b.user(gw).await.expect("silent login created a session");
    assert_eq!(claim(&claims, "sub").and_then(Value::as_str), Some("alice"));
}

// ---------------------------------------------------------------------------------------
// SPA fallback and static files through the gateway
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn spa_fallback_only_for_client_routes() {
    let stack = spa_stack(|c| c).await;
    let gw = &stack.gw;
    let b = Browser::new();
    let is_index = |body: &str| body.contains("<title>the spa</title>");

    for path in ["/", "/some/client/route", "/orders/7"] {
        let r = navigate(&b, &gw.url(path)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-cache", "{path}");
        assert!(is_index(&r.text().await.unwrap()), "{path}");
    }
    // Not a navigation (fetch with */*), a missing asset, the management base path, a route
    // prefix: never index.html.
    let r = b.get(&gw.url("/some/client/route")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "fetch of a client route");
    for path in [
        "/bff/nope",
        "/bff",
        "/app.js.map",
        "/missing.css",
        "/signin-oidc/x",
    ] {
        let r = navigate(&b, &gw.url(path)).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(!is_index(&r.text().await.unwrap()), "{path}");
        let r = b.get(&gw.url(path)).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    for path in ["/api-none/unknown", "/api/unknown"] {
        let r = navigate(&b, &gw.url(path)).await;
        assert!(!is_index(&r.text().await.unwrap()), "{path}");
    }
}

#[tokio::test]
async fn static_files_have_validators_and_precompressed() {
    let stack = spa_stack(|c| c).await;
    let gw = &stack.gw;
    // reqwest without its decompression features sends no Accept-Encoding by itself.
    let http = reqwest::Client::new();
    let r = http.get(gw.url("/app.js")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let modified = r.headers()["last-modified"].to_str().unwrap().to_owned();
    assert_eq!(r.text().await.unwrap(), "console.log('app')");
    let r = http
        .get(gw.url("/app.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    let r = http
        .get(gw.url("/app.js"))
        .header("if-modified-since", &modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = http
        .get(gw.url("/app.js"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        b"\x1f\x8bnot-really-gzip"
    );
    let r = http.get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert!(r.headers().contains_key("etag"));
}

// ---------------------------------------------------------------------------------------
// Malformed request targets
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_request_targets_never_500() {
    let stack = spa_stack(|c| c).await;
    let gw = &stack.gw;
    let long_segment = format!("/{}", "a".repeat(300));
    let long_path = "/abcdefgh".repeat(600);
    let huge_path = format!("/{}", "c".repeat(12_000));
    let mut requests: Vec<String> = [
        "GET x",
        "GET api",
        "GET api-none",
        "GET example.com:80",
        "GET 127.0.0.1:1",
        "OPTIONS *",
        "GET *",
        "HEAD x",
        "POST x",
        "GET http://127.0.0.1/",
        "GET http://evil.example/app.js",
        "GET //",
        "GET /%00",
        "GET /..%2f..%2fetc%2fpasswd",
        "GET /a/%2e%2e/%2e%2e/etc/passwd",
        "GET /%ff%fe",
        "GET /bff/%00",
        "GET /x;jsessionid=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in [&long_segment, &long_path, &huge_path] {
        requests.push(format!("GET {p}"));
        requests.push(format!("GET {p}.js"));
        requests.push(format!("GET /bff{p}"));
    }
    for line in &requests {
        for accept in ["*/*", NAV_ACCEPT] {
            let head = raw_request(
                gw.port,
                &format!("{line} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"),
            )
            .await;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status for {:.80}: {head:?}", line));
            assert!(status < 500, "{:.100} ({accept}) answered {status}", line);
        }
    }
    let head = raw_request(
        gw.port,
        &format!("GET {huge_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 414"), "{head}");
    let head = raw_request(
        gw.port,
        "GET x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let r = reqwest::get(gw.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------------
// Failures on browser navigations
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn failed_navigation_gets_a_page_api_call_keeps_its_shape() {
    // The gateway is configured with http://localhost:<port>; the IdP's discovery document
    // names http://127.0.0.1:<port>: a misconfiguration an operator must see.
    let port = free_port();
    let idp = Idp::start(&[format!("http://127.0.0.1:{port}")], IdpOptions::default()).await;
    let api = Api::start(&idp.issuer).await;
    let wrong = idp.issuer.replace("127.0.0.1", "localhost");
    let gw = Gateway::start(port, &default_config(port, &wrong, &api.url, "")).await;

    let b = Browser::new();
    let r = navigate(&b, &gw.url("/bff/login")).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(r.headers()["content-security-policy"], "default-src 'none'");
    let page = r.text().await.unwrap();
    assert!(page.contains("identity provider"), "{page}");
    assert!(page.contains("names issuer"), "{page}");
    assert!(!page.contains(CLIENT_SECRET), "{page}");
    // The same failure for a non-navigation keeps today's empty body.
    let r = b.get(&gw.url("/bff/login")).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().await.unwrap().is_empty());
    // An API call (anti-forgery header) never gets HTML, even with Accept: text/html.
    let r = b
        .http
        .get(gw.url("/api/whoami"))
        .header("accept", NAV_ACCEPT)
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().is_empty());
    wait_for_log(&gw, "names issuer").await;
}

#[tokio::test]
async fn idp_errors_on_the_callback_return_to_the_app_or_show_a_page() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    let callback = |state: &str, error: &str, iss: Option<&str>| {
        let mut url = gw.url(&format!(
            "/signin-oidc?error={}&error_description=some+words&state={}",
            urlencode(error),
            urlencode(state)
        ));
        if let Some(iss) = iss {
            url.push_str(&format!("&iss={}", urlencode(iss)));
        }
        url
    };

    // Errors the user can resolve: back to the returnUrl with bff_error, whatever its shape.
    for (code, return_url, want) in [
        (
            "access_denied",
            "/after?q=1",
            "/after?q=1&bff_error=access_denied",
        ),
        ("login_required", "/", "/?bff_error=login_required"),
        (
            "consent_required",
            "/orders",
            "/orders?bff_error=consent_required",
        ),
        (
            "interaction_required",
            "/a?",
            "/a?bff_error=interaction_required",
        ),
        (
            "account_selection_required",
            "/x",
            "/x?bff_error=account_selection_required",
        ),
    ] {
        let b = Browser::new();
        let state = start_login(
            &b,
            gw,
            &format!("/bff/login?returnUrl={}", urlencode(return_url)),
        )
        .await;
        let r = b.get(&callback(&state, code, Some(&idp.issuer))).await;
        assert_eq!(r.status(), StatusCode::FOUND, "{code}");
        assert_eq!(r.headers()[LOCATION], want, "{code}");
        assert!(b.user(gw).await.is_none());
    }

    // A misconfiguration, refused by the real IdP: an invalid authorization parameter.
    let misconfigured = spa_stack(|c| {
        c.replace(
            "scopes = [",
            "extra_authorize_params = { max_age = \"not-a-number\" }\nscopes = [",
        )
    })
    .await;
    let b = navigating_browser();
    let start = misconfigured.gw.url("/bff/login?returnUrl=/after");
    let r = b.get(&start).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let authorize = r.headers()[LOCATION].to_str().unwrap().to_owned();
    let (r, url) = b.follow(authorize, 10).await;
    assert!(
        url.starts_with(&misconfigured.gw.url("/signin-oidc")),
        "{url}"
    );
    let code = query_param(&url, "error").unwrap();
    assert_eq!(code, "invalid_request");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "{code}");
    let page = r.text().await.unwrap();
    assert!(page.contains(&code), "{page}");
    assert!(page.contains("operator"), "{page}");
    let lines = wait_for_log(&misconfigured.gw, "refused the sign-in").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("refused the sign-in")),
        "an error log line: {lines:#?}"
    );

    // The same kinds, crafted: never a redirect, a page, for a normal login.
    for code in [
        "invalid_request",
        "unauthorized_client",
        "server_error",
        "made_up_error",
    ] {
        let b = Browser::new();
        let state = start_login(&b, gw, "/bff/login?returnUrl=/after").await;
        let r = navigate(&b, &callback(&state, code, Some(&idp.issuer))).await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "{code}");
        assert!(r.headers().get(LOCATION).is_none());
        assert!(r.text().await.unwrap().contains(code));
    }
    // For prompt=none: any error ends at the silent-login page.
    for code in ["login_required", "invalid_request"] {
        let b = Browser::new();
        let state = start_login(&b, gw, "/bff/login?prompt=none").await;
        let r = b.get(&callback(&state, code, Some(&idp.issuer))).await;
        assert_eq!(r.status(), StatusCode::FOUND, "{code}");
        assert_eq!(
            r.headers()[LOCATION],
            "/bff/silent-login-callback",
            "{code}"
        );
    }

    // RFC 9207 on error responses: the IdP advertises it, so a missing or foreign iss is a
    // 400 and the returnUrl is not followed.
    let discovery: Value = reqwest::get(format!("{}/.well-known/openid-configuration", idp.issuer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        discovery["authorization_response_iss_parameter_supported"],
        true
    );
    for iss in [None, Some("http://evil.example")] {
        let b = Browser::new();
        let state = start_login(&b, gw, "/bff/login?returnUrl=/after").await;
        let r = b.get(&callback(&state, "access_denied", iss)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{iss:?}");
        assert!(r.headers().get(LOCATION).is_none(), "{iss:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Log injection
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn callback_error_param_cannot_forge_log_lines() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    for (error, description) in [
        ("access_denied%0AFORGED LOG LINE level=ERROR", "x"),
        ("access_denied", "fine%0D%0AFORGED LOG LINE level=ERROR"),
        ("server_error%0D%0AFORGED LOG LINE level=ERROR", "x%1B[2J"),
    ] {
        let b = Browser::new();
        let state = start_login(&b, gw, "/bff/login?returnUrl=/after").await;
        let url = gw.url(&format!(
            "/signin-oidc?error={}&error_description={}&state={}&iss={}",
            error.replace(' ', "%20"),
            description.replace(' ', "%20"),
            urlencode(&state),
            urlencode(&idp.issuer)
        ));
        let r = b.get(&url).await;
        assert!(
            r.status().is_redirection() || r.status().is_client_error() || r.status() == 502,
            "{}",
            r.status()
        );
    }
    // Unknown state and a forged returnUrl/prompt reach log lines too.
    let b = Browser::new();
    b.get(&gw.url("/signin-oidc?state=x%0AFORGED%20LOG%20LINE&error=a%0AFORGED%20LOG%20LINE"))
        .await;
    b.get(&gw.url("/bff/login?returnUrl=%0AFORGED%20LOG%20LINE"))
        .await;
    b.get(&gw.url("/bff/login?prompt=%0AFORGED%20LOG%20LINE"))
        .await;

    wait_for_log(gw, "access_denied\\nFORGED LOG LINE").await;
    wait_for_log(gw, "fine\\r\\nFORGED LOG LINE").await;
    let lines = wait_for_log(gw, "server_error\\r\\nFORGED LOG LINE").await;
    for line in &lines {
        assert!(
            !line.trim_start().starts_with("FORGED"),
            "a forged log line: {line:?}\nall: {lines:#?}"
        );
        assert!(!line.contains('\u{1b}'), "raw ESC in the log: {line:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("access_denied\\nFORGED LOG LINE")),
        "the value is logged, escaped: {lines:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Amplification through junk login cookies
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn junk_login_cookies_do_not_amplify_set_cookie() {
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let junk: Vec<String> = (0..2000).map(|i| format!("bff-login.j{i}=x")).collect();
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(gw.url("/bff/login"))
        .header("cookie", junk.join("; "))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let cookies = set_cookies(&r);
    // Default cap: 5 pending logins; at most twice that many are read and cleared.
    assert!(cookies.len() <= 11, "{} Set-Cookie headers", cookies.len());
    assert!(
        cookies.iter().filter(|c| c.contains("Max-Age=0")).count() >= 1,
        "junk is still cleaned up, a bounded part per request"
    );
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("bff-login.") && !c.contains("Max-Age=0")),
        "the new login's cookie is set: {cookies:?}"
    );
}
