//! End-to-end: the real `portcullis` binary against the real `oidc-provider`, a JWT-checking
//! upstream API and a cookie-jar HTTP client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::*;
use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Completes RP-initiated logout at the IdP starting from the gateway's logout redirect and
/// returns the final URL the browser lands on.
async fn logout_via_idp(b: &Browser, gw: &Gateway, idp: &Idp, logout_url: &str) -> String {
    let r = b.get(&gw.url(logout_url)).await;
    assert_eq!(
        r.status(),
        StatusCode::FOUND,
        "logout must redirect to the IdP"
    );
    let cleared = set_cookies(&r);
    assert!(
        cleared.iter().any(|c| c.starts_with("bff-auth=;")),
        "session cookie cleared: {cleared:?}"
    );
    let end_session = r.headers()[LOCATION].to_str().unwrap().to_owned();
    let hint = query_param(&end_session, "id_token_hint").expect("id_token_hint sent");
    assert!(
        idp.issued().await.id_tokens.contains(&hint),
        "id_token_hint is an ID token the IdP issued"
    );
    assert_eq!(
        query_param(&end_session, "post_logout_redirect_uri").as_deref(),
        Some(gw.url("/signout-callback-oidc").as_str())
    );
    let page = b.get(&end_session).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let action = resolve(&end_session, &form_action(&html).expect("logout form"));
    let fields = form_inputs(&html);
    let r = b.http.post(&action).form(&fields).send().await.unwrap();
    assert!(
        r.status().is_redirection(),
        "IdP logout confirm answered {}",
        r.status()
    );
    let back = resolve(&action, r.headers()[LOCATION].to_str().unwrap());
    assert!(
        back.starts_with(&gw.url("/signout-callback-oidc")),
        "IdP returns to the signed-out callback: {back}"
    );
    let r = b.get(&back).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    resolve(&back, r.headers()[LOCATION].to_str().unwrap())
}

#[tokio::test]
async fn login_user_api_logout_against_a_real_idp() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    let b = Browser::new();

    assert!(b.user(gw).await.is_none(), "anonymous before login");
    let r = b.login(gw, "alice").await;
    assert_eq!(r.headers()[LOCATION], "/");
    let cookies = set_cookies(&r);
    let session_cookie = cookies
        .iter()
        .find(|c| c.starts_with("bff-auth="))
        .expect("session cookie set");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            session_cookie.contains(attr),
            "{session_cookie} lacks {attr}"
        );
    }
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("bff-login.") && c.contains("Max-Age=0")),
        "login cookie cleaned up"
    );

    let claims = b.user(gw).await.expect("logged in");
    assert_eq!(claim(&claims, "sub"), Some(&json!("alice")));
    assert_eq!(claim(&claims, "name"), Some(&json!("Alice Smith")));
    let sid = claim(&claims, "sid")
        .and_then(Value::as_str)
        .expect("sid claim")
        .to_owned();
    let logout_url = claim(&claims, "bff:logout_url")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    assert_eq!(
        logout_url,
        format!("/bff/logout?sid={}", urlencode(&sid)).replace('+', "%20")
    );
    let expires_in = claim(&claims, "bff:session_expires_in")
        .and_then(Value::as_i64)
        .unwrap();
    assert!(expires_in > 3500 && expires_in <= 3600, "{expires_in}");

    // API call: the upstream verified the JWT against the IdP's keys and saw alice.
    let r = b.get_csrf(&gw.url("/api/whoami?x=1")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["sub"], "alice");
    let seen = &body["received_headers"];
    assert!(
        seen.get("cookie").is_none(),
        "browser cookies reached the upstream: {seen}"
    );
    assert_eq!(seen["x-csrf"], "1");
    assert_eq!(seen["x-forwarded-prefix"], "/api");
    assert_eq!(seen["x-forwarded-host"], format!("127.0.0.1:{}", gw.port));

    assert!(idp.active_refresh_tokens("alice").await >= 1);
    let final_url = logout_via_idp(&b, gw, idp, &logout_url).await;
    assert_eq!(final_url, gw.url("/"));
    assert!(b.user(gw).await.is_none(), "logged out");
    assert_eq!(
        idp.active_refresh_tokens("alice").await,
        0,
        "refresh token revoked at the IdP"
    );
    assert!(idp.stats().await["revocations"].as_u64().unwrap() >= 1);
    let r = b.get_csrf(&gw.url("/api/whoami")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The gateway logged at debug level through all of this: none of the codes and tokens
    // the IdP issued, and no session id, in the logs or in what the browser received
    // (the /bff/user claims included).
    let logs = gw.logs();
    assert!(
        logs.iter().any(|l| l.contains("login completed")),
        "logs were captured"
    );
    // (`http.response.status_code=` is the IdP calls' status, not a code.)
    assert!(
        !logs
            .iter()
            .any(|l| l.replace("status_code=", "").contains("code=")),
        "an authorization code parameter reached the logs"
    );
    assert_no_secret_leaks(idp, &logs, &b.seen()).await;
}

/// Two pinned connection workers (`server.workers = 2`; the default is 1 up to two CPUs)
/// serve logins and proxied calls: several browsers, so their connections land on both
/// workers, each calling the API in turn on its keep-alive connection; a chunked answer (the
/// Node API's) goes through each worker's own upstream pool.
#[tokio::test]
async fn pinned_connection_workers_serve_logins_and_proxied_calls() {
    assert_eq!(serve_logins_and_calls_with_workers(2).await, 2);
}

/// `server.workers = 0`: the work-stealing runtime serves every connection (no worker thread
/// is started), logins and proxied calls alike.
#[tokio::test]
async fn work_stealing_runtime_serves_logins_and_proxied_calls_when_workers_is_0() {
    assert_eq!(serve_logins_and_calls_with_workers(0).await, 0);
}

/// Starts the stack with `server.workers = workers`, logs three browsers in and has each
/// call the API three times on its keep-alive connection; returns the number of connection
/// worker threads the gateway process runs.
async fn serve_logins_and_calls_with_workers(workers: usize) -> usize {
    let stack = Stack::start_edited(IdpOptions::default(), |config| {
        config.replacen(
            "data_dir = \"data\"\n",
            &format!("data_dir = \"data\"\nworkers = {workers}\n"),
            1,
        )
    })
    .await;
    let gw = &stack.gw;
    let browsers: Vec<(Browser, &str)> = ["alice", "bob", "alice"]
        .into_iter()
        .map(|user| (Browser::new(), user))
        .collect();
    for (b, user) in &browsers {
        b.login(gw, user).await;
    }
    for _ in 0..3 {
        for (b, user) in &browsers {
            let r = b.get_csrf(&gw.url("/api/whoami")).await;
            assert_eq!(r.status(), StatusCode::OK);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["sub"], *user);
        }
    }
    // Threads named after the workers (Linux shows the first 15 bytes of a name).
    let pid = gw.proc.as_ref().unwrap().child.id().unwrap();
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("portcullis-work"))
        .count()
}

/// Every secret the IdP hands out in a full session life (the authorization code, access
/// tokens of every route policy, a rotated refresh token, ID tokens, a code whose login
/// failed, a logout token) is compared, value by value, with the gateway's debug logs and
/// with every header and body the browser received from the gateway.
#[tokio::test]
async fn issued_tokens_and_codes_never_reach_logs_or_browser() {
    let stack = Stack::start_config(
        IdpOptions {
            access_token_ttl: 2,
            rotate_refresh_token: true,
            ..Default::default()
        },
        |port, idp, api| {
            default_config(
                port,
                &idp.issuer,
                &api.url,
                "[[routes]]\npath = \"/api-exchanged\"\nupstream = \"API_URL\"\ntoken = \"exchange\"\naudience = \"urn:portcullis:api\"\n",
            )
            .replacen("data_dir = \"data\"\n", "data_dir = \"data\"\ndiagnostics = true\n", 1)
        },
    )
    .await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    let b = Browser::new();
    b.login(gw, "alice").await;
    let claims = b.user(gw).await.expect("logged in");
    for path in [
        "/api/whoami",
        "/api-client/whoami",
        "/api-either/whoami",
        "/api-optional/whoami",
        "/api-exchanged/whoami",
        "/api-none/echo",
        "/bff/diagnostics",
    ] {
        let r = b.get_csrf(&gw.url(path)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.bytes().await.unwrap();
    }
    // Access tokens live 2 s and are refreshed 1 s before expiry: a refresh (with a rotated
    // refresh token) happens on the next call.
    let refreshes = idp.token_requests("refresh_token").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = b.get_csrf(&gw.url("/api/whoami")).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.unwrap();
    assert!(
        idp.token_requests("refresh_token").await > refreshes,
        "the scenario includes a refresh"
    );

    // A login that fails after the code exchange: the tokens were issued, the error page
    // and the logs must not show them.
    let failed = Browser::new();
    idp.control("tamper-next-id-token", json!({})).await;
    let callback = failed.login_until_callback(gw, "alice", "/").await;
    let r = failed.get(&callback).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    r.bytes().await.unwrap();
    // The same code again (replayed).
    let r = failed.get(&callback).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    r.bytes().await.unwrap();

    // bob is logged out through the back channel (a logout token), alice through the IdP.
    let bob = Browser::new();
    bob.login(gw, "bob").await;
    let sent = idp
        .control("backchannel-logout", json!({"sub": "bob"}))
        .await;
    assert_eq!(sent["sent"][0]["status"], 200, "{sent}");
    assert!(
        bob.user(gw).await.is_none(),
        "back-channel logout ended bob's session"
    );
    let logout_url = claim(&claims, "bff:logout_url")
        .and_then(Value::as_str)
        .expect("logout url")
        .to_owned();
    assert_eq!(logout_via_idp(&b, gw, idp, &logout_url).await, gw.url("/"));

    let issued = idp.issued().await;
    assert!(issued.authorization_codes.len() >= 3, "{issued:?}");
    assert!(
        issued.refresh_tokens.len() >= 3,
        "rotation issued new refresh tokens"
    );
    assert!(!issued.logout_tokens.is_empty(), "a logout token was sent");
    let mut seen = b.seen();
    seen.extend(failed.seen());
    seen.extend(bob.seen());
    let logs = gw.logs();
    assert_no_secret_leaks(idp, &logs, &seen).await;

    // The check is not a JWT-shape check: codes and refresh tokens are opaque here, and each
    // kind of issued value planted in a log line, a body or a header is caught.
    assert!(issued
        .authorization_codes
        .iter()
        .all(|c| !c.starts_with("eyJ")));
    assert!(issued.refresh_tokens.iter().all(|t| !t.starts_with("eyJ")));
    let gateway_response = seen
        .iter()
        .find(|r| r.url.starts_with(&gw.origin))
        .expect("a gateway response")
        .clone();
    for (kind, value) in issued.all() {
        let mut planted_log = logs.clone();
        planted_log.push(format!("DEBUG something value={value}"));
        let mut body = gateway_response.clone();
        body.body
            .extend_from_slice(format!("{{\"x\":\"{value}\"}}").as_bytes());
        let mut header = gateway_response.clone();
        header.headers.push(("x-debug".into(), value.to_owned()));
        for (what, logs, extra) in [
            ("log", &planted_log, None),
            ("body", &logs, Some(body)),
            ("header", &logs, Some(header)),
        ] {
            let mut seen = seen.clone();
            seen.extend(extra);
            assert!(
                check_no_secret_leaks(&issued, &idp.issuer, logs, &seen).is_err(),
                "a planted {kind} in a {what} went unnoticed"
            );
        }
    }
}

#[tokio::test]
async fn anti_forgery_is_enforced_on_user_and_every_api_route() {
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    let before = stack.api.requests().await;
    for path in [
        "/bff/user",
        "/api/whoami",
        "/api-none/echo",
        "/api-optional/echo",
        "/api-client/echo",
        "/api-either/echo",
    ] {
        for headers in [vec![], vec![("x-csrf", "0")], vec![("x-csrf", "")]] {
            let mut req = b.http.get(gw.url(path));
            for (n, v) in &headers {
                req = req.header(*n, *v);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} {headers:?}");
            assert!(r.text().await.unwrap().is_empty(), "401 body must be empty");
        }
        if path != "/bff/user" {
            let r = b.http.post(gw.url(path)).body("x").send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "POST {path}");
        }
    }
    // +1: the API counts the /stats request itself.
    assert_eq!(
        stack.api.requests().await,
        before + 1,
        "nothing was forwarded"
    );
}

#[tokio::test]
async fn bad_return_urls_are_refused_with_a_problem_body() {
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let b = Browser::new();
    for bad in [
        "//evil.example",
        "https://evil.example",
        "/\\evil.example",
        "/\t/evil.example",
        "/%09/x",
        "/ok\r\nx",
        "relative",
    ] {
        for endpoint in ["/bff/login", "/bff/logout"] {
            let r = b
                .get(&gw.url(&format!("{endpoint}?returnUrl={}", urlencode(bad))))
                .await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{endpoint} {bad:?}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["status"], 400);
            assert!(body["errors"]["returnUrl"].is_array(), "{body}");
        }
    }
    let r = b
        .get(&gw.url("/bff/login?returnUrl=/ok&returnUrl=/other"))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "duplicated returnUrl");
    let r = b.get(&gw.url("/bff/login?prompt=bogus")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "unsupported prompt");
    let r = b.get(&gw.url("/bff/login?returnUrl=%2Fapp%3Fx%3D1")).await;
    assert_eq!(r.status(), StatusCode::FOUND);
}

#[tokio::test]
async fn logout_with_a_wrong_sid_keeps_the_user_logged_in() {
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    for q in ["/bff/logout", "/bff/logout?sid=wrong", "/bff/logout?sid="] {
        let r = b.get(&gw.url(q)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
        let body: Value = r.json().await.unwrap();
        assert!(body["errors"]["sid"].is_array());
    }
    assert!(b.user(gw).await.is_some(), "still logged in");
    // Without a session, logout still goes to the IdP (logging out twice is fine).
    let anon = Browser::new();
    let r = anon.get(&gw.url("/bff/logout")).await;
    assert_eq!(r.status(), StatusCode::FOUND);
}

#[tokio::test]
async fn tampered_or_unknown_session_cookie_is_cleared_and_anonymous() {
    let stack = Stack::start().await;
    let gw = &stack.gw;
    for value in [
        "garbage",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "../../etc/passwd",
        &"x".repeat(5000),
    ] {
        let r = reqwest::Client::new()
            .get(gw.url("/bff/user"))
            .header("x-csrf", "1")
            .header("cookie", format!("bff-auth={value}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{value}");
        assert!(
            set_cookies(&r)
                .iter()
                .any(|c| c.starts_with("bff-auth=;") && c.contains("Max-Age=0")),
            "stale cookie cleared"
        );
    }
    // A real session id with one character changed.
    let b = Browser::new();
    b.login(gw, "alice").await;
    let header = b.cookie_header(&gw.origin);
    let id = header
        .split("; ")
        .find_map(|c| c.strip_prefix("bff-auth="))
        .unwrap()
        .to_owned();
    let mut forged = id.clone().into_bytes();
    forged[10] = if forged[10] == b'A' { b'B' } else { b'A' };
    let r = reqwest::Client::new()
        .get(gw.url("/bff/user"))
        .header("x-csrf", "1")
        .header(
            "cookie",
            format!("bff-auth={}", String::from_utf8(forged).unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn callback_rejects_replayed_unknown_state_wrong_iss_and_tampered_id_token() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);

    // Unknown state, no session: a clear 400 page, not a loop.
    let b = Browser::new();
    let r = b.get(&gw.url("/signin-oidc?code=x&state=unknown")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let r = b.get(&gw.url("/signin-oidc?code=x&state=a&state=b")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "duplicated state");

    // Wrong iss: 400, no session.
    let b = Browser::new();
    let callback = b.login_until_callback(gw, "alice", "/").await;
    let evil = callback.replace(&urlencode(&idp.issuer), &urlencode("http://evil.example"));
    assert_ne!(evil, callback);
    let r = b.get(&evil).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(!set_cookies(&r)
        .iter()
        .any(|c| c.starts_with("bff-auth=") && !c.contains("Max-Age=0")));
    assert!(b.user(gw).await.is_none());

    // Replayed state: the transaction was consumed by the first attempt.
    let r = b.get(&callback).await;
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "replayed state after a failed attempt"
    );

    // Tampered ID token signature.
    let b = Browser::new();
    idp.control("tamper-next-id-token", json!({})).await;
    let callback = b.login_until_callback(gw, "alice", "/").await;
    let r = b.get(&callback).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "tampered ID token");
    assert!(b.user(gw).await.is_none());

    // ID token with a wrong iss (validly signed).
    let b = Browser::new();
    idp.control("wrong-iss-next-id-token", json!({})).await;
    let callback = b.login_until_callback(gw, "alice", "/").await;
    let r = b.get(&callback).await;
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "ID token from another issuer"
    );
    assert!(b.user(gw).await.is_none());

    // Success, then a replay of the same callback while logged in: redirect home.
    let b = Browser::new();
    let callback = b.login_until_callback(gw, "alice", "/after").await;
    let r = b.get(&callback).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], "/after");
    let r = b.get(&callback).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], "/");
}

#[tokio::test]
async fn several_tabs_can_log_in_at_once_and_pending_logins_are_capped() {
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let b = Browser::new();
    // Two tabs start logging in; the second finishes first, then the first.
    let tab1 = b.login_until_callback(gw, "alice", "/one").await;
    let tab2 = b.login_until_callback(gw, "alice", "/two").await;
    let r2 = b.get(&tab2).await;
    assert_eq!(r2.headers()[LOCATION], "/two");
    let r1 = b.get(&tab1).await;
    assert_eq!(r1.headers()[LOCATION], "/one");
    assert!(b.user(gw).await.is_some());

    // Many abandoned logins: the jar never holds more than the cap (5).
    let b = Browser::new();
    for _ in 0..12 {
        let r = b.get(&gw.url("/bff/login")).await;
        assert_eq!(r.status(), StatusCode::FOUND);
    }
    let pending = b
        .cookie_header(&gw.origin)
        .split("; ")
        .filter(|c| c.starts_with("bff-login."))
        .count();
    // The newest five survive (not zero: the cap, not a login that sets no cookie).
    assert_eq!(pending, 5, "pending login cookies after 12 attempts, cap 5");
}

#[tokio::test]
async fn sessions_survive_a_gateway_restart_on_sqlite() {
    let mut stack = Stack::start().await;
    let b = Browser::new();
    b.login(&stack.gw, "alice").await;
    assert!(b.user(&stack.gw).await.is_some());
    stack.gw.restart().await;
    let claims = b
        .user(&stack.gw)
        .await
        .expect("session survived the restart");
    assert_eq!(claim(&claims, "sub"), Some(&json!("alice")));
    let r = b.get_csrf(&stack.gw.url("/api/whoami")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(stack.gw.dir.join("data/sessions.db").exists());
    let keyfile = stack.gw.dir.join("data/keys");
    assert!(keyfile.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(keyfile).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[tokio::test]
async fn token_policies_none_optional_client_and_either() {
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let anon = Browser::new();
    // The upstream echoed the request (so it was reached) and it carried no Authorization.
    async fn echoed_without_token(r: reqwest::Response) {
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        let headers = v["headers"]
            .as_object()
            .unwrap_or_else(|| panic!("not the upstream's echo: {v}"));
        assert!(
            headers.contains_key("x-csrf") && !headers.contains_key("authorization"),
            "{v}"
        );
    }
    // none: forwarded without a token, for anyone.
    echoed_without_token(anon.get_csrf(&gw.url("/api-none/echo")).await).await;
    // user: anonymous → 401, not forwarded.
    let before = stack.api.requests().await;
    assert_eq!(
        anon.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        stack.api.requests().await,
        before + 1,
        "only /stats reached the API"
    );
    // user_or_none: anonymous → forwarded without token.
    echoed_without_token(anon.get_csrf(&gw.url("/api-optional/echo")).await).await;
    // client: a client-credentials token, verified by the API.
    let r = anon.get_csrf(&gw.url("/api-client/whoami")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["client_id"], CLIENT_ID);
    assert!(
        v["sub"].is_null() || v["sub"] == CLIENT_ID,
        "client token has no user: {v}"
    );
    // user_or_client: anonymous → client token (the API verified it); logged in → user token.
    let r = anon.get_csrf(&gw.url("/api-either/whoami")).await;
    assert_eq!(r.status(), StatusCode::OK, "a client token was attached");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["client_id"], CLIENT_ID, "{v}");
    assert!(
        v["sub"].is_null() || v["sub"] == CLIENT_ID,
        "a client token, not a user's: {v}"
    );
    let b = Browser::new();
    b.login(gw, "alice").await;
    let v: Value = b
        .get_csrf(&gw.url("/api-either/whoami"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["sub"], "alice");
    let v: Value = b
        .get_csrf(&gw.url("/api-optional/whoami"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["sub"], "alice");
}

#[tokio::test]
async fn proxy_streams_and_maps_upstream_failures() {
    let stack = Stack::start_with(
        IdpOptions::default(),
        r#"
[[routes]]
path = "/api-slow"
upstream = "API_URL"
token = "none"
timeout = "1s"

[[routes]]
path = "/api-dead"
upstream = "http://127.0.0.1:1"
token = "none"
"#,
    )
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    // Timeout → 504; unreachable → 502.
    assert_eq!(
        b.get_csrf(&gw.url("/api-slow/slow?ms=3000")).await.status(),
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(
        b.get_csrf(&gw.url("/api-dead/x")).await.status(),
        StatusCode::BAD_GATEWAY
    );
    // Upstream statuses pass through.
    for code in [401u16, 403, 404, 418, 500] {
        let r = b
            .get_csrf(&gw.url(&format!("/api-none/status/{code}")))
            .await;
        assert_eq!(r.status().as_u16(), code);
    }
    // Dot segments cannot climb out of the upstream's base path.
    // (Raw requests: an HTTP client library would normalise these paths itself.)
    for path in [
        "/api-none/../admin",
        "/api-none/%2e%2e/admin",
        "/api-none/a/%2E%2E/%2e%2e/x",
        "/api-none/..%5cadmin",
    ] {
        let head = raw_request(
            gw.port,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
    }
    // Request bodies stream through unchanged.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = b
        .http
        .post(gw.url("/api-none/upload"))
        .header("x-csrf", "1")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["bytes"], body.len());
    // Server-sent events arrive frame by frame, not buffered until the end. The upstream
    // sends event 0 at once and event 2 two seconds later; no bound on how fast the machine
    // is: the first chunk the browser gets must not hold the last event (which did not exist
    // yet), and the last event must arrive well after the first (a buffering proxy delivers
    // both together).
    let mut r = b
        .get_csrf(&gw.url("/api-none/sse?count=3&interval_ms=1000"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let first = r.chunk().await.unwrap().expect("first event");
    let first_at = std::time::Instant::now();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.contains("data: 0"), "{first}");
    assert!(
        !first.contains("data: 2"),
        "the first SSE chunk held the last event: the stream was buffered"
    );
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert!(String::from_utf8_lossy(&rest).contains("data: 2"));
    assert!(
        first_at.elapsed() >= std::time::Duration::from_millis(1000),
        "the last event arrived {:?} after the first: held back",
        first_at.elapsed()
    );
    // Query strings (including repeated keys) are forwarded as they are.
    let v: Value = b
        .get_csrf(&gw.url("/api-none/echo/p?x=1&x=2&y=%20"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["query"], "x=1&x=2&y=%20");
    assert_eq!(v["path"], "/echo/p");
}

#[tokio::test]
async fn check_lists_every_config_error_and_exits_64() {
    let dir = temp_dir("check");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
public_url = "http://app.example.com"
[oidc]
client_id = "x"
[[routes]]
path = "/api"
upstream = "nope"
tokn = "user"
"#,
    )
    .unwrap();
    for cmd in ["check", "serve"] {
        let out = std::process::Command::new(gateway_binary())
            .args([cmd, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        for needle in ["public_url", "oidc.issuer", "tokn"] {
            assert!(err.contains(needle), "{cmd}: {needle} missing in {err}");
        }
    }
}

#[tokio::test]
async fn websocket_upgrades_pass_an_origin_allow_list_instead_of_the_header() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    let cookie = b.cookie_header(&gw.origin);
    let handshake = |origin: Option<&str>| {
        format!(
            "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {cookie}\r\n{}\r\n",
            gw.port,
            origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default()
        )
    };
    // Wrong or missing Origin: 401, nothing forwarded.
    for origin in [None, Some("http://evil.example")] {
        let head = raw_request(gw.port, &handshake(origin)).await;
        assert!(head.starts_with("HTTP/1.1 401"), "{origin:?}: {head}");
    }
    // Our own origin: 101, the upstream got the user's token but no cookie, bytes flow.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    s.write_all(handshake(Some(&gw.origin)).as_bytes())
        .await
        .unwrap();
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    if !head.starts_with("HTTP/1.1 101") {
        let mut body = vec![0u8; 199];
        let _ = reader.read(&mut body).await;
        panic!("{head}{}", String::from_utf8_lossy(&body));
    }
    let mut hello = String::new();
    reader.read_line(&mut hello).await.unwrap();
    let hello: Value = serde_json::from_str(&hello).unwrap();
    assert_eq!(hello, json!({"authorization": true, "cookie": false}));
    reader
        .get_mut()
        .write_all(b"ping-through-the-tunnel")
        .await
        .unwrap();
    let mut echo = vec![0u8; 23];
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        reader.read_exact(&mut echo),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(echo, b"ping-through-the-tunnel");
}

/// `free_port` releases the port before the gateway binds it: when someone else took it in
/// between, the harness notices the bind failure and starts again on another port.
#[tokio::test]
async fn harness_restarts_the_gateway_on_another_port_when_its_port_was_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let attempts = std::sync::atomic::AtomicUsize::new(0);
    let gw = on_free_port(|port| {
        let first = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        let port = if first { taken_port } else { port };
        async move {
            let config = default_config(port, "http://127.0.0.1:1", "http://127.0.0.1:1", "");
            Gateway::try_start(port, &config).await
        }
    })
    .await;
    assert_eq!(attempts.into_inner(), 2, "one failed attempt, then success");
    assert_ne!(gw.port, taken_port);
    let r = reqwest::get(gw.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    drop(taken);
}

/// HTTP/2 HEAD: a response to HEAD has no content (RFC 9110 §9.3.2), and an HTTP/2 client
/// treats DATA on a HEAD response as a stream error (RFC 9113 §8.1.1). The probes and a
/// proxied route's own error answers (anti-forgery refused here, as the navigation's HTML
/// page) must send none, as the router did by emptying HEAD bodies.
#[tokio::test]
async fn head_over_http2_gets_no_body_from_probes_or_proxied_route_errors() {
    let gw = on_free_port(|port| async move {
        let config = default_config(port, "http://127.0.0.1:1", "http://127.0.0.1:1", "");
        Gateway::try_start(port, &config).await
    })
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for path in ["/healthz", "/readyz", "/api/x", "/api"] {
        let r = h2
            .head(gw.url(path))
            .header("sec-fetch-mode", "navigate")
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "{path}");
        let status = r.status();
        let body = r.bytes().await;
        assert!(
            body.as_ref().is_ok_and(|b| b.is_empty()),
            "HEAD {path} ({status}) over HTTP/2: {body:?}"
        );
    }
}

/// `/healthz` and `/readyz` keep their own `route` label in the request metrics (and their
/// span name): they are routes, not "unmatched" requests.
#[tokio::test]
async fn probes_keep_their_route_label_in_request_metrics() {
    let admin_port = free_port();
    let token = "admin-token-for-tests-0123456789";
    let gw = on_free_port(|port| async move {
        let config = default_config(
            port,
            "http://127.0.0.1:1",
            "http://127.0.0.1:1",
            &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"{token}\"\n"),
        );
        Gateway::try_start(port, &config).await
    })
    .await;
    for path in ["/healthz", "/readyz"] {
        reqwest::get(gw.url(path)).await.unwrap();
    }
    let metrics = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for route in ["/healthz", "/readyz"] {
        assert!(
            metrics.lines().any(
                |l| l.starts_with("portcullis_request_duration_seconds_count{")
                    && l.contains(&format!("route=\"{route}\""))
            ),
            "no request metric with route={route}:\n{metrics}"
        );
    }
}
