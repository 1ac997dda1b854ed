//! End-to-end checks of behaviours from `shared/guide/behaviour.md` and `pitfalls.md` that
//! the other end-to-end files do not cover: TLS termination, hostile input, key rotation,
//! silent login, the signed-out callback, diagnostics, `anonymous_user`,
//! `base_path = "/"`, form_post callbacks, IdP errors on the callback, lower-case
//! `token_type`, refresh answers without an ID token, and a login that replaces a lost
//! session.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::*;
use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

/// IdP + API + gateway; `edit` changes the default configuration text.
async fn stack_with(opts: IdpOptions, edit: impl Fn(String) -> String) -> Stack {
    Stack::start_edited(opts, edit).await
}

/// Adds lines to the `[server]` table of a default configuration.
fn with_server(config: String, lines: &str) -> String {
    let anchor = "data_dir = \"data\"\n";
    assert!(config.contains(anchor));
    config.replacen(anchor, &format!("{anchor}{lines}\n"), 1)
}

/// Adds lines to the `[session]` table of a default configuration.
fn with_session(config: String, lines: &str) -> String {
    assert!(config.contains("[session]\n"));
    config.replacen("[session]\n", &format!("[session]\n{lines}\n"), 1)
}

/// The value of the (http, loopback: un-prefixed) session cookie in the jar.
fn session_cookie(b: &Browser, gw: &Gateway) -> Option<String> {
    b.cookie_header(&gw.origin)
        .split("; ")
        .find_map(|c| c.strip_prefix("bff-auth="))
        .map(str::to_owned)
}

/// `/bff/user` with only the given session cookie (no jar).
async fn user_with_cookie(gw: &Gateway, path: &str, cookie: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(gw.url(path))
        .header("x-csrf", "1")
        .header("cookie", format!("bff-auth={cookie}"))
        .send()
        .await
        .unwrap()
}

fn clears_session_cookie(r: &reqwest::Response) -> bool {
    set_cookies(r)
        .iter()
        .any(|c| c.starts_with("bff-auth=;") && c.contains("Max-Age=0"))
}

fn sets_session_cookie(r: &reqwest::Response) -> bool {
    set_cookies(r)
        .iter()
        .any(|c| c.starts_with("bff-auth=") && !c.starts_with("bff-auth=;"))
}

/// Drives a login that starts at `start` (any login URL of the gateway) through the IdP's
/// pages up to the gateway's callback URL, without calling it.
async fn drive_to_callback(b: &Browser, gw: &Gateway, start: &str, user: &str) -> String {
    let r = b.get(start).await;
    assert_eq!(
        r.status(),
        StatusCode::FOUND,
        "login must redirect to the IdP"
    );
    let mut url = resolve(start, r.headers()[LOCATION].to_str().unwrap());
    let callback_prefix = gw.url("/signin-oidc");
    for _ in 0..20 {
        if url.starts_with(&callback_prefix) {
            return url;
        }
        let r = b.get(&url).await;
        if r.status().is_redirection() {
            url = resolve(&url, r.headers()[LOCATION].to_str().unwrap());
            continue;
        }
        assert_eq!(r.status(), StatusCode::OK, "unexpected status at {url}");
        let html = r.text().await.unwrap();
        let action = resolve(&url, &form_action(&html).expect("login form"));
        let r = b
            .http
            .post(&action)
            .form(&[("login", user), ("password", user)])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_redirection(), "login POST: {}", r.status());
        url = resolve(&action, r.headers()[LOCATION].to_str().unwrap());
    }
    panic!("login did not reach the callback");
}

fn claim_str(claims: &[(String, Value)], name: &str) -> String {
    claim(claims, name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("claim {name} missing: {claims:?}"))
        .to_owned()
}

/// `sha256-<base64>` of a string, via the `sha256sum` tool (no extra dev-dependency).
fn csp_hash(text: &str) -> String {
    let hex = sha256_hex(text);
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    format!("sha256-{}", STANDARD.encode(bytes))
}

/// Lower-case hex SHA-256 of a string, via the `sha256sum` tool.
fn sha256_hex(text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    hex.split_whitespace().next().unwrap().to_owned()
}

/// The script of the silent-login page, checked against the page's CSP hash.
async fn silent_page_script(r: reqwest::Response) -> String {
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "silent-login page is HTML"
    );
    let html = r.text().await.unwrap();
    let start = html.find("<script>").expect("script") + "<script>".len();
    let end = html.find("</script>").expect("end of script");
    let script = html[start..end].to_owned();
    let hash = csp_hash(&script);
    assert!(
        csp.contains(&format!("script-src '{hash}'")),
        "CSP {csp:?} does not allow exactly the page's script ({hash})"
    );
    assert!(csp.contains("default-src 'none'"), "{csp}");
    script
}

// ---------------------------------------------------------------------------------------
// 1. TLS termination
// ---------------------------------------------------------------------------------------

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn tls_termination_serves_over_https_with_host_prefixed_secure_cookies() {
    // A throw-away CA and a leaf for 127.0.0.1 signed by it.
    let dir = temp_dir("gw-tls");
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=portcullis test CA",
        ],
        &dir,
    );
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &dir,
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
        &dir,
    );

    let (_idp, _api, mut gw) = on_free_port(|port| {
        let dir = dir.clone();
        async move {
            let origin = format!("https://127.0.0.1:{port}");
            let idp = Idp::start(std::slice::from_ref(&origin), IdpOptions::default()).await;
            let api = Api::start(&idp.issuer).await;
            let config = default_config(port, &idp.issuer, &api.url, "")
                .replace(
                    &format!("public_url = \"http://127.0.0.1:{port}\""),
                    &format!("public_url = \"{origin}\""),
                )
                .replacen(
                    "data_dir = \"data\"\n",
                    "data_dir = \"data\"\n\n[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
                    1,
                );
            let mut gw = Gateway::try_start_in(dir, port, &config).await?;
            gw.origin = origin;
            Ok((idp, api, gw))
        }
    })
    .await;
    let (port, origin) = (gw.port, gw.origin.clone());

    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let b = Browser::with_client(
        reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .add_root_certificate(ca)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        jar,
    );

    let r = b.get(&gw.url("/healthz")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "ok");
    // Plain HTTP on the TLS port is not served: the port is reachable (not a refused or
    // timed-out connection, which would say nothing), but what answers is not HTTP, or
    // an HTTP error.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match plain {
        Ok(r) => assert!(
            r.status().is_client_error(),
            "plain http answered {} on the TLS port",
            r.status()
        ),
        Err(e) => assert!(
            !e.is_connect() && !e.is_timeout(),
            "the TLS port did not answer at all: {e}"
        ),
    }

    let r = b.get(&gw.url("/bff/login")).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let location = r.headers()[LOCATION].to_str().unwrap().to_owned();
    assert_eq!(
        query_param(&location, "redirect_uri").as_deref(),
        Some(format!("{origin}/signin-oidc").as_str()),
        "redirect URI derives from the https public URL"
    );
    let cookies = set_cookies(&r);
    let login_cookie = cookies
        .iter()
        .find(|c| c.starts_with("__Host-bff-login."))
        .unwrap_or_else(|| panic!("no __Host- login cookie: {cookies:?}"));
    for attr in ["Secure", "HttpOnly", "Path=/", "SameSite=Lax"] {
        assert!(login_cookie.contains(attr), "{login_cookie} lacks {attr}");
    }
    assert!(!login_cookie.contains("Domain"), "{login_cookie}");

    // A full login over TLS: the session cookie is __Host-, Secure, Strict.
    let callback = b.login_until_callback(&gw, "alice", "/").await;
    let r = b.get(&callback).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let cookies = set_cookies(&r);
    let session = cookies
        .iter()
        .find(|c| c.starts_with("__Host-bff-auth=") && !c.contains("Max-Age=0"))
        .unwrap_or_else(|| panic!("no __Host- session cookie: {cookies:?}"));
    for attr in ["Secure", "HttpOnly", "Path=/", "SameSite=Strict"] {
        assert!(session.contains(attr), "{session} lacks {attr}");
    }
    let claims = b.user(&gw).await.expect("logged in over TLS");
    assert_eq!(claim(&claims, "sub"), Some(&json!("alice")));
    let r = b.get_csrf(&gw.url("/api/echo")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 2. Oversized or malformed input
// ---------------------------------------------------------------------------------------

fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

async fn assert_healthy(gw: &Gateway) {
    let r = reqwest::Client::new()
        .get(gw.url("/healthz"))
        .send()
        .await
        .expect("gateway still answers");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn oversized_or_malformed_input_gets_a_4xx_never_a_5xx() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);

    // A 64 KiB Cookie header.
    let big_cookie = format!("bff-auth={}", "a".repeat(64 * 1024));
    for path in ["/bff/user", "/api/whoami", "/bff/login"] {
        let head = raw_request(
            gw.port,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nCookie: {big_cookie}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        let status = status_of(&head);
        if path == "/bff/login" {
            // Accepted (a login redirect) or refused as too large; never an error page.
            assert!(
                status == 302 || (400..500).contains(&status),
                "{path}: {head}"
            );
        } else {
            assert!((400..500).contains(&status), "{path}: {head}");
        }
    }
    assert_healthy(gw).await;

    // 200 header fields.
    let many: String = (0..200).map(|i| format!("X-Filler-{i}: {i}\r\n")).collect();
    let head = raw_request(
        gw.port,
        &format!("GET /bff/user HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\n{many}Connection: close\r\n\r\n"),
    )
    .await;
    assert!(
        (400..500).contains(&status_of(&head)),
        "200 headers: {head}"
    );
    assert_healthy(gw).await;

    // A 100 KB state on the callback: query (URI too long for the parser or unknown state)
    // and form_post body (unknown state: the 400 page).
    let b = Browser::new();
    let huge_state = "s".repeat(100_000);
    // (Raw: the URL is longer than an `http::Uri` may be, so a client library refuses it.)
    let head = raw_request(
        gw.port,
        &format!(
            "GET /signin-oidc?code=x&state={huge_state} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!((400..500).contains(&status_of(&head)), "GET: {head}");
    let state_50k = &huge_state[..50_000];
    let r = b
        .get(&gw.url(&format!("/signin-oidc?code=x&state={state_50k}")))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "GET, 50 KB state");
    let r = b
        .http
        .post(gw.url("/signin-oidc"))
        .form(&[("code", "x"), ("state", huge_state.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "form_post");
    let page = r.text().await.unwrap();
    assert!(
        !page.contains(&huge_state[..1000]),
        "the state is not echoed"
    );

    // Non-UTF-8 and percent garbage in returnUrl.
    for endpoint in ["/bff/login", "/bff/logout"] {
        for bad in [
            "%ff%fe",
            "%",
            "%zz",
            "%2f%2fevil.example",
            "%2F%5Cevil.example",
        ] {
            let r = b.get(&gw.url(&format!("{endpoint}?returnUrl={bad}"))).await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{endpoint} {bad}");
            let body: Value = r.json().await.unwrap();
            assert!(body["errors"]["returnUrl"].is_array(), "{body}");
        }
    }
    // Local paths with invalid UTF-8, percent garbage, spaces or non-ASCII are not errors;
    // the redirect after login stays on this origin and is a valid, ASCII-only URI
    // reference (raw UTF-8 in `Location` is not a URI; some proxies refuse it).
    for (odd, expected) in [
        ("/%ff%fe", Some("/%EF%BF%BD%EF%BF%BD")),
        ("/%zz%", Some("/%zz%")),
        ("/caf%C3%A9", Some("/caf%C3%A9")),
        ("/a%20b", Some("/a%20b")),
        ("/a%00b", None),
    ] {
        let b = Browser::new();
        let start = gw.url(&format!("/bff/login?returnUrl={odd}"));
        let r = b.get(&start).await;
        let Some(expected) = expected else {
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{odd}");
            continue;
        };
        assert_eq!(r.status(), StatusCode::FOUND, "{odd}");
        let callback = drive_to_callback(&b, gw, &start, "alice").await;
        let r = b.get(&callback).await;
        assert_eq!(r.status(), StatusCode::FOUND, "{odd}");
        let location = r
            .headers()
            .get(LOCATION)
            .unwrap_or_else(|| panic!("{odd}: 302 without Location"))
            .as_bytes()
            .to_vec();
        assert_eq!(
            String::from_utf8_lossy(&location),
            expected,
            "{odd}: Location must be this ASCII URI"
        );
    }

    // A 1 MB logout_token.
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"logout+jwt"}"#),
        "A".repeat(1_000_000),
        "B".repeat(342)
    );
    let r = reqwest::Client::new()
        .post(gw.url("/bff/backchannel"))
        .form(&[("logout_token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "1 MB logout token");
    assert_eq!(r.headers()["cache-control"], "no-cache, no-store");
    // No Content-Type on the back-channel POST; and a JSON body.
    let valid_looking = idp
        .sign(
            json!({"iss": idp.issuer, "aud": CLIENT_ID, "sub": "alice"}),
            json!({"typ": "logout+jwt"}),
        )
        .await;
    for content_type in [None, Some("application/json"), Some("text/plain")] {
        let mut req = reqwest::Client::new()
            .post(gw.url("/bff/backchannel"))
            .body(format!("logout_token={valid_looking}"));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{content_type:?}");
        assert_eq!(r.headers()["cache-control"], "no-cache, no-store");
        assert!(r.text().await.unwrap().is_empty());
    }
    assert_healthy(gw).await;
}

// ---------------------------------------------------------------------------------------
// 3. Key rotation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn key_rotation_keeps_sessions_and_a_ring_without_the_old_key_logs_out_cleanly() {
    let mut stack = Stack::start().await;
    let keyfile = stack.gw.dir.join("data/keys");
    let b = Browser::new();
    b.login(&stack.gw, "alice").await;
    assert!(b.user(&stack.gw).await.is_some());
    let first_key = std::fs::read_to_string(&keyfile).unwrap();
    assert_eq!(first_key.lines().count(), 1);

    stack.gw.stop().await;
    let out = std::process::Command::new(gateway_binary())
        .args(["keys", "rotate", "--file"])
        .arg(&keyfile)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys rotate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = std::fs::read_to_string(&keyfile).unwrap();
    let lines: Vec<&str> = rotated.lines().collect();
    assert_eq!(lines.len(), 2, "{} keys after one rotation", lines.len());
    assert_eq!(lines[1], first_key.trim(), "the old key is kept, second");
    assert_ne!(lines[0], lines[1]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&keyfile).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    stack.gw.restart().await;
    let gw = &stack.gw;
    assert!(
        b.user(gw).await.is_some(),
        "the old session opens with the old key"
    );
    assert_eq!(
        b.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::OK
    );
    let b2 = Browser::new();
    b2.login(gw, "bob").await;
    let claims = b2.user(gw).await.expect("a new login works");
    assert_eq!(claim(&claims, "sub"), Some(&json!("bob")));

    // A ring that lost the old key: alice's session is unreadable → logged out, not a 500.
    stack.gw.stop().await;
    std::fs::write(&keyfile, format!("{}\n", lines[0])).unwrap();
    stack.gw.restart().await;
    let gw = &stack.gw;
    let old = session_cookie(&b, gw).unwrap();
    let r = user_with_cookie(gw, "/bff/user", &old).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        clears_session_cookie(&r),
        "unreadable session's cookie cleared"
    );
    let r = user_with_cookie(gw, "/api/whoami", &old).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(clears_session_cookie(&r));
    assert!(
        b2.user(gw).await.is_some(),
        "bob's session was sealed with the current key"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Silent login
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn silent_login_reports_the_idp_session_on_the_silent_callback_page() {
    let stack = Stack::start().await;
    let gw = &stack.gw;

    // IdP session, but no gateway session: log in, then log out at the gateway only (the
    // browser does not go on to the IdP's end-session page).
    let b = Browser::new();
    b.login(gw, "alice").await;
    let claims = b.user(gw).await.unwrap();
    let r = b.get(&gw.url(&claim_str(&claims, "bff:logout_url"))).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(b.user(gw).await.is_none());

    let (r, url) = b.follow(gw.url("/bff/login?prompt=none"), 10).await;
    assert_eq!(url, gw.url("/bff/silent-login-callback"));
    let script = silent_page_script(r).await;
    assert!(script.contains("isLoggedIn:true"), "{script}");
    assert!(
        script.contains("window.location.origin"),
        "posts to its own origin only"
    );
    let claims = b.user(gw).await.expect("silent login created a session");
    assert_eq!(claim(&claims, "sub"), Some(&json!("alice")));

    // No IdP session: the IdP answers login_required; the flow still ends on the page.
    let anon = Browser::new();
    let start = gw.url("/bff/login?prompt=none&returnUrl=/somewhere");
    let r = anon.get(&start).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let authorize = r.headers()[LOCATION].to_str().unwrap().to_owned();
    assert_eq!(query_param(&authorize, "prompt").as_deref(), Some("none"));
    let r = anon.get(&authorize).await;
    assert!(r.status().is_redirection(), "IdP answers with a redirect");
    let callback = resolve(&authorize, r.headers()[LOCATION].to_str().unwrap());
    assert!(callback.starts_with(&gw.url("/signin-oidc")), "{callback}");
    assert_eq!(
        query_param(&callback, "error").as_deref(),
        Some("login_required")
    );
    let r = anon.get(&callback).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], "/bff/silent-login-callback");
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("bff-login.") && c.contains("Max-Age=0")),
        "login transaction cleaned up"
    );
    assert!(!sets_session_cookie(&r));
    let r = anon.get(&gw.url("/bff/silent-login-callback")).await;
    let script = silent_page_script(r).await;
    assert!(script.contains("isLoggedIn:false"), "{script}");
    assert!(anon.user(gw).await.is_none());
}

// ---------------------------------------------------------------------------------------
// 5. Signed-out callback
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn signed_out_callback_goes_home_unless_it_carries_our_sealed_state() {
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let b = Browser::new();
    let forged =
        URL_SAFE_NO_PAD.encode(br#"{"return_url":"https://evil.example","exp":9999999999}"#);
    for q in [
        String::new(),
        "?state=".into(),
        "?state=garbage".into(),
        "?state=%ff%fe".into(),
        format!("?state={forged}"),
        "?state=a&state=b".into(),
        format!("?state={}", "A".repeat(10_000)),
        "?returnUrl=https://evil.example".into(),
    ] {
        let r = b.get(&gw.url(&format!("/signout-callback-oidc{q}"))).await;
        assert_eq!(r.status(), StatusCode::FOUND, "{q}");
        assert_eq!(r.headers()[LOCATION], "/", "{q}");
    }
    // Our own state (from a logout with a returnUrl) leads back to that returnUrl.
    let r = b.get(&gw.url("/bff/logout?returnUrl=/bye%3Fx%3D1")).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let end_session = r.headers()[LOCATION].to_str().unwrap().to_owned();
    let state = query_param(&end_session, "state").expect("sealed state");
    let r = b
        .get(&gw.url(&format!(
            "/signout-callback-oidc?state={}",
            urlencode(&state)
        )))
        .await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], "/bye?x=1");
    // The same state with one byte changed is not ours any more.
    let mut tampered = state.into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let r = b
        .get(&gw.url(&format!("/signout-callback-oidc?state={tampered}")))
        .await;
    assert_eq!(r.headers()[LOCATION], "/");
}

// ---------------------------------------------------------------------------------------
// 6. Diagnostics
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn diagnostics_is_404_by_default() {
    let stack = Stack::start().await;
    let b = Browser::new();
    b.login(&stack.gw, "alice").await;
    let r = b.get(&stack.gw.url("/bff/diagnostics")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    r.bytes().await.unwrap();
    assert_no_secret_leaks(&stack.idp, &stack.gw.logs(), &b.seen()).await;
}

#[tokio::test]
async fn diagnostics_when_enabled_shows_no_token() {
    let stack = stack_with(IdpOptions::default(), |c| {
        with_server(c, "diagnostics = true")
    })
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    let r = b.get(&gw.url("/bff/diagnostics")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert!(v["session"].is_null(), "anonymous: {v}");

    b.login(gw, "alice").await;
    // An API call, so that the session holds tokens for sure.
    assert_eq!(
        b.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::OK
    );
    let r = b.get(&gw.url("/bff/diagnostics")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["session"]["sub"], "alice", "{v}");
    // A fingerprint (first 4 bytes of SHA-256) of the token the IdP issued, not the token.
    let fp = v["access_token"]["fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token fingerprint: {v}"));
    let issued = stack.idp.issued().await;
    assert!(
        issued
            .access_tokens
            .iter()
            .any(|t| sha256_hex(t).starts_with(fp) && fp.len() == 8),
        "{fp} is not the fingerprint of an issued access token"
    );
    assert_eq!(v["has_refresh_token"], true, "{v}");
    assert_no_secret_leaks(&stack.idp, &gw.logs(), &b.seen()).await;
}

// 7. slide=false: in process with a manual clock, crates/portcullis/tests/session_lifetime.rs
//    (user_with_slide_false_does_not_extend_the_session).

// ---------------------------------------------------------------------------------------
// 8. anonymous_user = "null"
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn anonymous_user_null_answers_200_null_but_still_needs_the_header() {
    let stack = stack_with(IdpOptions::default(), |c| {
        with_session(c, "anonymous_user = \"null\"")
    })
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    let r = b.get_csrf(&gw.url("/bff/user")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(r.text().await.unwrap(), "null");
    let r = b.get(&gw.url("/bff/user")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "no X-CSRF");
    assert!(r.text().await.unwrap().is_empty());
    // A stale cookie: null, and the cookie cleared.
    let r = user_with_cookie(
        gw,
        "/bff/user",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(clears_session_cookie(&r));
    assert_eq!(r.text().await.unwrap(), "null");
    // API routes still answer 401 to anonymous users.
    assert_eq!(
        b.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    b.login(gw, "alice").await;
    assert!(b.user(gw).await.is_some());
}

// ---------------------------------------------------------------------------------------
// 9. base_path = "/"
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn base_path_root_serves_management_endpoints_at_the_root() {
    let stack = stack_with(IdpOptions::default(), |c| {
        with_server(c, "base_path = \"/\"")
    })
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    assert_eq!(
        b.get(&gw.url("/bff/login")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        b.get_csrf(&gw.url("/user")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let callback = drive_to_callback(&b, gw, &gw.url("/login?returnUrl=/home"), "alice").await;
    let r = b.get(&callback).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], "/home");

    let r = b.get_csrf(&gw.url("/user")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let claims: Vec<(String, Value)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap().to_owned(), c["value"].clone()))
        .collect();
    let sid = claim_str(&claims, "sid");
    let logout_url = claim_str(&claims, "bff:logout_url");
    assert!(
        logout_url.starts_with("/logout?sid=") && !logout_url.starts_with("//"),
        "{logout_url}"
    );
    assert_eq!(
        logout_url,
        format!("/logout?sid={}", urlencode(&sid)).replace('+', "%20")
    );
    assert_eq!(
        b.get_csrf(&gw.url("/bff/user")).await.status(),
        StatusCode::NOT_FOUND
    );
    let r = b.get(&gw.url("/silent-login-callback")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = b.get(&gw.url(&logout_url)).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(clears_session_cookie(&r));
    let hint = query_param(r.headers()[LOCATION].to_str().unwrap(), "id_token_hint")
        .expect("id_token_hint on the end-session redirect");
    assert!(stack.idp.issued().await.id_tokens.contains(&hint));
    assert_eq!(
        b.get_csrf(&gw.url("/user")).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

// ---------------------------------------------------------------------------------------
// 10. form_post callback
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn callback_accepts_a_form_post_response() {
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let b = Browser::new();
    let callback = b.login_until_callback(gw, "alice", "/posted").await;
    let query = url::Url::parse(&callback)
        .unwrap()
        .query()
        .unwrap()
        .to_owned();
    let r = b
        .http
        .post(gw.url("/signin-oidc"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(query)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], "/posted");
    assert!(sets_session_cookie(&r));
    let claims = b.user(gw).await.expect("session from a form_post callback");
    assert_eq!(claim(&claims, "sub"), Some(&json!("alice")));
}

// ---------------------------------------------------------------------------------------
// 11. IdP error on the callback
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn idp_error_on_the_callback_returns_to_the_app_without_a_session() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    let b = Browser::new();
    let r = b.get(&gw.url("/bff/login?returnUrl=/after%3Fq%3D1")).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let authorize = r.headers()[LOCATION].to_str().unwrap().to_owned();
    let state = query_param(&authorize, "state").unwrap();
    let login_cookie = set_cookies(&r)
        .into_iter()
        .find(|c| c.starts_with("bff-login."))
        .unwrap();
    let login_cookie_name = login_cookie.split('=').next().unwrap().to_owned();

    let r = b
        .get(&gw.url(&format!(
            "/signin-oidc?error=access_denied&error_description=the+user+said+no&state={}&iss={}",
            urlencode(&state),
            urlencode(&idp.issuer)
        )))
        .await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(
        r.headers()[LOCATION],
        "/after?q=1&bff_error=access_denied",
        "the error code reaches the app"
    );
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with(&format!("{login_cookie_name}=;")) && c.contains("Max-Age=0")),
        "login cookie cleared: {:?}",
        set_cookies(&r)
    );
    assert!(!sets_session_cookie(&r));
    assert!(b.user(gw).await.is_none());
    assert!(
        !b.cookie_header(&gw.origin).contains(&login_cookie_name),
        "login cookie gone from the jar"
    );
    // The transaction is consumed: the same state again is an unknown one (400 page).
    let r = b
        .get(&gw.url(&format!("/signin-oidc?code=x&state={}", urlencode(&state))))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------------------
// 12. Lower-case token_type
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn lower_case_bearer_token_type_still_sends_a_bearer_header() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    idp.control("token-type", json!({"value": "bearer"})).await;
    let b = Browser::new();
    b.login(gw, "alice").await;
    let r = b.get_csrf(&gw.url("/api/whoami")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["sub"], "alice");
    let v: Value = b.get_csrf(&gw.url("/api/echo")).await.json().await.unwrap();
    let auth = v["headers"]["authorization"]
        .as_str()
        .unwrap_or_else(|| panic!("no Authorization reached the upstream: {v}"));
    let token = auth
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not the canonical Bearer scheme: {auth:.12}"));
    assert!(
        idp.issued().await.access_tokens.iter().any(|t| t == token),
        "the upstream got a token the IdP did not issue"
    );
    idp.control("token-type", json!({"value": null})).await;
}

// ---------------------------------------------------------------------------------------
// 13. Refresh without an id_token
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn refresh_without_an_id_token_keeps_the_stored_one_for_logout() {
    let stack = Stack::start_with(
        IdpOptions {
            access_token_ttl: 2,
            ..Default::default()
        },
        "",
    )
    .await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    idp.control("refresh-without-id-token", json!({"enabled": true}))
        .await;
    let b = Browser::new();
    b.login(gw, "alice").await;
    let claims = b.user(gw).await.unwrap();
    let before = idp.token_requests("refresh_token").await;
    // The token lives 2 s; the refresh buffer is capped at half its lifetime (1 s), so it is
    // due once the gateway's whole-second clock has moved on by one: 1.1 s later at most.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = b.get_csrf(&gw.url("/api/whoami")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        idp.token_requests("refresh_token").await > before,
        "the access token was refreshed"
    );
    let r = b.get(&gw.url(&claim_str(&claims, "bff:logout_url"))).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let end_session = r.headers()[LOCATION].to_str().unwrap().to_owned();
    let hint = query_param(&end_session, "id_token_hint")
        .expect("id_token_hint survives a refresh answer without an id_token");
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(hint.split('.').nth(1).expect("a JWT"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["sub"], "alice");
    assert_eq!(payload["aud"], CLIENT_ID);
    // The IdP accepts it: its logout confirmation page, not an error.
    let page = b.get(&end_session).await;
    assert_eq!(page.status(), StatusCode::OK);
    idp.control("refresh-without-id-token", json!({"enabled": false}))
        .await;
}

// ---------------------------------------------------------------------------------------
// 14. Logging in again after losing the cookie
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn login_after_losing_the_cookie_replaces_the_session_of_the_same_sub_and_sid() {
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    let first = session_cookie(&b, gw).unwrap();
    let sid1 = claim_str(&b.user(gw).await.unwrap(), "sid");
    assert_eq!(
        b.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::OK
    );

    // The browser loses the gateway cookie; the IdP session (and its sid) remains.
    b.jar
        .add_cookie_str("bff-auth=; Path=/; Max-Age=0", &gw.origin.parse().unwrap());
    assert!(session_cookie(&b, gw).is_none());
    let r = b.login(gw, "alice").await;
    assert_eq!(r.headers()[LOCATION], "/");
    let second = session_cookie(&b, gw).unwrap();
    assert_ne!(first, second);
    let sid2 = claim_str(&b.user(gw).await.unwrap(), "sid");
    assert_eq!(sid1, sid2, "same IdP session");
    assert_eq!(
        b.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::OK
    );

    // The first session was replaced, not duplicated: its cookie no longer works, on API
    // routes (which may answer from the in-process session cache) nor on /bff/user.
    let r = user_with_cookie(gw, "/api/whoami", &first).await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the replaced session still reaches the API"
    );
    assert!(clears_session_cookie(&r));
    let r = user_with_cookie(gw, "/bff/user", &first).await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "old session still valid"
    );
    assert!(clears_session_cookie(&r));
}
