//! Refresh answers classified by what they mean, end to end against the npm `oidc-provider`
//! and the real binary: a refresh response whose ID token names another `sub`/`iss` or
//! changes `auth_time` is not used (502, session kept, nothing stored, an `error` line); a 4xx
//! refusal without an RFC 6749 body ends the session; 429 is transient; `/bff/user` never
//! reports a session that can get no more tokens; logout revokes the refresh token a
//! concurrent refresh just stored; a login as another user in the same browser ends the
//! previous session; the code exchange sends `oidc.resource`; token-endpoint log lines keep
//! the port.
//!
//! Access tokens live 2 s here: the tests wait real seconds for expiry (the unit tests in
//! `portcullis-token` move a manual clock instead).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use reqwest::header::{COOKIE, LOCATION};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Access-token lifetime at the IdP, and a wait after which the login's token has expired.
const TTL: u64 = 2;
const PAST_EXPIRY: Duration = Duration::from_millis(2300);

async fn short_lived(extra_config: &str) -> Stack {
    Stack::start_with(
        IdpOptions {
            access_token_ttl: TTL,
            ..Default::default()
        },
        extra_config,
    )
    .await
}

/// A stack whose `[oidc]` section gets `oidc_lines` (the default configuration has one).
async fn short_lived_with_oidc(idp_opts: IdpOptions, oidc_lines: &str) -> Stack {
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let idp = Idp::start(&[origin], idp_opts).await;
    let api = Api::start(&idp.issuer).await;
    let config = default_config(port, &idp.issuer, &api.url, "").replacen(
        "\n[session]",
        &format!("{oidc_lines}\n\n[session]"),
        1,
    );
    assert!(config.contains(oidc_lines));
    let gw = Gateway::start(port, &config).await;
    Stack { idp, api, gw }
}

async fn whoami(b: &Browser, gw: &Gateway) -> (StatusCode, Value) {
    let r = b.get_csrf(&gw.url("/api/whoami")).await;
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `/bff/user` for an explicit cookie header, outside any jar: a cleared cookie in the jar
/// must not be what makes the answer 401.
async fn user_status_with(gw: &Gateway, cookie: &str) -> StatusCode {
    reqwest::Client::new()
        .get(gw.url("/bff/user"))
        .header("x-csrf", "1")
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .status()
}

fn logs(gw: &Gateway) -> Vec<String> {
    gw.proc.as_ref().unwrap().output.lock().unwrap().clone()
}

/// Claims of a JWT's payload (no verification: the test reads what the gateway sent).
fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Logs out and returns the `id_token_hint` the gateway sent to the IdP.
async fn logout_hint(b: &Browser, gw: &Gateway) -> String {
    let claims = b.user(gw).await.expect("logged in");
    let logout_url = claim(&claims, "bff:logout_url").unwrap().as_str().unwrap();
    let r = b.get(&gw.url(logout_url)).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let location = r.headers()[LOCATION].to_str().unwrap().to_owned();
    query_param(&location, "id_token_hint").expect("id_token_hint on the logout redirect")
}

/// A refresh response with a validly signed ID token whose claims were altered by `patch` is
/// not used: 502, the session is kept, the stored ID token stays the login's, and an `error`
/// line says why.
async fn refresh_with_altered_id_token_is_not_used(patch: Value, why: &str, oidc_lines: &str) {
    let stack = short_lived_with_oidc(
        IdpOptions {
            access_token_ttl: TTL,
            ..Default::default()
        },
        oidc_lines,
    )
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    let (status, body) = whoami(&b, gw).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refreshes = stack.idp.token_requests("refresh_token").await;

    stack.idp.control("refresh-id-token", patch).await;
    tokio::time::sleep(PAST_EXPIRY).await;
    let (status, body) = whoami(&b, gw).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        stack.idp.token_requests("refresh_token").await,
        refreshes + 1,
        "the IdP did answer the refresh"
    );
    let error_lines: Vec<String> = logs(gw)
        .into_iter()
        .filter(|l| l.contains("ERROR") && l.contains("refresh response refused"))
        .collect();
    assert!(
        error_lines.iter().any(|l| l.contains(why)),
        "an error line says why ({why}): {error_lines:#?}"
    );
    // Kept: the SPA still sees the session.
    assert!(b.user(gw).await.is_some(), "session kept");
    // Nothing stored: the ID token the gateway still holds (sent as id_token_hint) is the
    // login's.
    let hint = jwt_claims(&logout_hint(&b, gw).await);
    assert_eq!(hint["sub"], "alice");
    assert_eq!(hint["iss"], stack.idp.issuer.as_str());
}

#[tokio::test]
async fn refresh_id_token_with_other_sub_is_not_used() {
    refresh_with_altered_id_token_is_not_used(json!({"sub": "mallory"}), "another subject", "")
        .await;
}

#[tokio::test]
async fn refresh_id_token_with_other_iss_is_not_used() {
    refresh_with_altered_id_token_is_not_used(json!({"iss": "http://evil.example"}), "iss", "")
        .await;
}

#[tokio::test]
async fn refresh_id_token_auth_time_change_is_refused() {
    // max_age makes oidc-provider put auth_time into every ID token of the grant.
    refresh_with_altered_id_token_is_not_used(
        json!({"auth_time": 1_000_000}),
        "auth_time",
        "extra_authorize_params = { max_age = \"86400\" }",
    )
    .await;
}

#[tokio::test]
async fn refresh_id_token_of_the_same_user_is_used() {
    // The control for the three tests above: an unaltered refreshed ID token is accepted and
    // stored (so "nothing stored" there is the validation's doing).
    let stack = short_lived_with_oidc(
        IdpOptions {
            access_token_ttl: TTL,
            ..Default::default()
        },
        "extra_authorize_params = { max_age = \"86400\" }",
    )
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    let logged_in_at = now_unix();
    b.login(gw, "alice").await;
    let claims = b.user(gw).await.unwrap();
    let auth_time = claim(&claims, "auth_time")
        .expect("auth_time at login")
        .clone();
    let (_, first) = whoami(&b, gw).await;
    tokio::time::sleep(PAST_EXPIRY).await;
    let (status, second) = whoami(&b, gw).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(first["token_jti"], second["token_jti"], "refreshed");
    let hint = jwt_claims(&logout_hint(&b, gw).await);
    assert_eq!(hint["sub"], "alice");
    assert_eq!(hint["auth_time"], auth_time);
    assert!(
        hint["iat"].as_i64().unwrap() >= logged_in_at + 2,
        "the stored ID token is the refreshed one: {hint}"
    );
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn refresh_400_without_error_member_ends_session() {
    let stack = short_lived("").await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    assert_eq!(whoami(&b, gw).await.0, StatusCode::OK);
    let cookie = b.cookie_header(&gw.origin);
    assert!(!cookie.is_empty());

    // Glewlwyd answers a revoked refresh token like this: 400, empty body.
    stack
        .idp
        .control(
            "token-endpoint-fault",
            json!({"status": 400, "body": "", "count": -1}),
        )
        .await;
    tokio::time::sleep(PAST_EXPIRY).await;
    let r = b.get_csrf(&gw.url("/api/whoami")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("bff-auth=;") && c.contains("Max-Age=0")),
        "cookie cleared: {:?}",
        set_cookies(&r)
    );
    assert_eq!(
        stack.idp.stats().await["token_errors"]["http_400"],
        1,
        "one refusal seen"
    );
    // Ended exactly as for invalid_grant: the old cookie finds nothing, and the dead refresh
    // token is not tried again.
    assert_eq!(
        user_status_with(gw, &cookie).await,
        StatusCode::UNAUTHORIZED
    );
    let r = reqwest::Client::new()
        .get(gw.url("/api/whoami"))
        .header("x-csrf", "1")
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(stack.idp.stats().await["token_errors"]["http_400"], 1);
}

#[tokio::test]
async fn refresh_429_is_transient() {
    let stack = short_lived("").await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    assert_eq!(whoami(&b, gw).await.0, StatusCode::OK);
    stack
        .idp
        .control(
            "token-endpoint-fault",
            json!({"status": 429, "body": "slow down", "count": -1}),
        )
        .await;
    tokio::time::sleep(PAST_EXPIRY).await;
    let (status, _) = whoami(&b, gw).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "rate limiting is no logout"
    );
    assert!(b.user(gw).await.is_some(), "session kept");
    stack
        .idp
        .control("token-endpoint-fault", json!({"status": 0}))
        .await;
    // After the short back-off the same session refreshes, without a new login.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = whoami(&b, gw).await;
        if status == StatusCode::OK {
            assert_eq!(body["sub"], "alice");
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(std::time::Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(stack.idp.token_requests("authorization_code").await, 1);
}

#[tokio::test]
async fn user_endpoint_never_reports_dead_session() {
    // The failure is met on a `user_or_none` route, which forwards without a token instead
    // of answering 401: the session must end all the same.
    let stack = short_lived("").await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    assert_eq!(whoami(&b, gw).await.0, StatusCode::OK);
    let cookie = b.cookie_header(&gw.origin);
    assert_eq!(user_status_with(gw, &cookie).await, StatusCode::OK);
    stack
        .idp
        .control(
            "token-endpoint-fault",
            json!({"status": 401, "body": "{\"error\":\"invalid_client\"}", "count": -1}),
        )
        .await;
    tokio::time::sleep(PAST_EXPIRY).await;
    // Whole-second expiry: the first call after login may already have refreshed.
    let refreshes_before = stack.idp.token_requests("refresh_token").await;
    let r = b.get_csrf(&gw.url("/api-optional/whoami")).await;
    assert!(
        r.status() != StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        r.status()
    );
    assert_eq!(
        stack.idp.token_requests("refresh_token").await,
        refreshes_before + 1,
        "the refresh was tried"
    );
    assert_eq!(
        user_status_with(gw, &cookie).await,
        StatusCode::UNAUTHORIZED,
        "/bff/user must not report a session that can get no more tokens"
    );
    assert_eq!(
        reqwest::Client::new()
            .get(gw.url("/api/whoami"))
            .header("x-csrf", "1")
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Issue 7.11, the corner without a refresh token: once the access token has expired, a
/// session that has no refresh token can get no token for its `user` routes (they would answer
/// 401 and end it). `/bff/user` ends it at once instead of reporting it until an API call.
#[tokio::test]
async fn user_endpoint_ends_session_whose_token_expired_without_refresh_token() {
    let stack = Stack::start_with(
        IdpOptions {
            access_token_ttl: TTL,
            refresh_tokens: false,
            ..Default::default()
        },
        "",
    )
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    assert_eq!(whoami(&b, gw).await.0, StatusCode::OK);
    let cookie = b.cookie_header(&gw.origin);
    assert_eq!(
        user_status_with(gw, &cookie).await,
        StatusCode::OK,
        "an unexpired token without a refresh token is a live session"
    );
    tokio::time::sleep(PAST_EXPIRY).await;
    let r = reqwest::Client::new()
        .get(gw.url("/bff/user"))
        .header("x-csrf", "1")
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "/bff/user must not report a session that can get no more tokens"
    );
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("bff-auth=;") && c.contains("Max-Age=0")),
        "cookie cleared: {:?}",
        set_cookies(&r)
    );
    // Ended, not only hidden: the old cookie gets no API call either.
    let r = reqwest::Client::new()
        .get(gw.url("/api/whoami"))
        .header("x-csrf", "1")
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        stack.idp.token_requests("refresh_token").await,
        0,
        "no refresh token was issued, none was tried"
    );
}

#[tokio::test]
async fn token_endpoint_log_keeps_port() {
    let stack = Stack::start().await;
    let b = Browser::new();
    b.login(&stack.gw, "alice").await;
    let want = format!("endpoint=http://127.0.0.1:{}/token", stack.idp.port);
    let lines = logs(&stack.gw);
    assert!(
        lines.iter().any(|l| l.contains(&want)),
        "no log line with {want}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("endpoint=http://127.0.0.1/")),
        "a log line dropped the port"
    );
}

#[tokio::test]
async fn logout_revokes_the_freshest_refresh_token() {
    let stack = Stack::start_with(
        IdpOptions {
            access_token_ttl: TTL,
            rotate_refresh_token: true,
            ..Default::default()
        },
        "",
    )
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    assert_eq!(whoami(&b, gw).await.0, StatusCode::OK);
    assert_eq!(stack.idp.active_refresh_tokens("alice").await, 1);
    let claims = b.user(gw).await.unwrap();
    let logout_url = gw.url(claim(&claims, "bff:logout_url").unwrap().as_str().unwrap());

    // The IdP rotates the refresh token at once but answers 1.5 s later: the logout below
    // arrives while the gateway holds the spent token and the IdP the new one.
    stack
        .idp
        .control("token-endpoint-delay", json!({"ms": 1500, "after": true}))
        .await;
    tokio::time::sleep(PAST_EXPIRY).await;
    // Expiry is judged in whole seconds, so the first call after login may already have
    // refreshed (a login just before a second boundary): count from here.
    let refreshes_before = stack.idp.token_requests("refresh_token").await;
    let refreshing = {
        let (b, url) = (b.clone(), gw.url("/api/whoami"));
        tokio::spawn(async move { b.get_csrf(&url).await.status() })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = b.get(&logout_url).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let refreshed = refreshing.await.unwrap();
    stack
        .idp
        .control("token-endpoint-delay", json!({"ms": 0}))
        .await;
    assert_eq!(refreshed, StatusCode::OK, "the refresh itself went through");
    assert_eq!(
        stack.idp.token_requests("refresh_token").await,
        refreshes_before + 1,
        "exactly one refresh during the logout"
    );
    assert_eq!(
        stack.idp.active_refresh_tokens("alice").await,
        0,
        "the rotated refresh token was revoked, not only the spent one"
    );
    assert!(b.user(gw).await.is_none());
}

/// Logs in through `/bff/login?prompt=login` (the IdP asks for credentials even with an IdP
/// session) and calls the callback, all in `b`; returns the callback's response.
async fn login_with_prompt(b: &Browser, gw: &Gateway, user: &str) -> reqwest::Response {
    let start = gw.url("/bff/login?returnUrl=%2F&prompt=login");
    let r = b.get(&start).await;
    assert_eq!(
        r.status(),
        StatusCode::FOUND,
        "login must redirect to the IdP"
    );
    let mut url = resolve(&start, r.headers()[LOCATION].to_str().unwrap());
    let callback = gw.url("/signin-oidc");
    for _ in 0..20 {
        if url.starts_with(&callback) {
            return b.get(&url).await;
        }
        let r = b.get(&url).await;
        if r.status().is_redirection() {
            url = resolve(&url, r.headers()[LOCATION].to_str().unwrap());
            continue;
        }
        assert_eq!(r.status(), StatusCode::OK, "unexpected status at {url}");
        let html = r.text().await.unwrap();
        let action = resolve(&url, &form_action(&html).expect("a form"));
        // oidc-provider signs the previous account out of the IdP session first (its
        // end-session confirmation form), then asks for the new one's credentials.
        let r = if action.contains("/session/end/confirm") {
            b.http.post(&action).form(&form_inputs(&html)).send().await
        } else {
            b.http
                .post(&action)
                .form(&[("login", user), ("password", user)])
                .send()
                .await
        }
        .unwrap();
        assert!(r.status().is_redirection());
        url = resolve(&action, r.headers()[LOCATION].to_str().unwrap());
    }
    panic!("login did not reach the callback");
}

#[tokio::test]
async fn login_as_another_user_ends_previous_session() {
    let stack = Stack::start().await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    let alice_cookie = b.cookie_header(&gw.origin);
    assert_eq!(whoami(&b, gw).await.1["sub"], "alice");
    assert_eq!(stack.idp.active_refresh_tokens("alice").await, 1);

    // Same browser, alice's session cookie still valid: log in as bob.
    let r = login_with_prompt(&b, gw, "bob").await;
    assert_eq!(r.status(), StatusCode::FOUND, "{:?}", r.headers());
    assert_eq!(whoami(&b, gw).await.1["sub"], "bob");
    assert_ne!(b.cookie_header(&gw.origin), alice_cookie);

    assert_eq!(
        user_status_with(gw, &alice_cookie).await,
        StatusCode::UNAUTHORIZED,
        "alice's session ended"
    );
    assert_eq!(
        stack.idp.active_refresh_tokens("alice").await,
        0,
        "alice's refresh token revoked"
    );
    assert_eq!(stack.idp.active_refresh_tokens("bob").await, 1);
    assert_eq!(
        user_status_with(gw, &b.cookie_header(&gw.origin)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn code_exchange_sends_resource() {
    let stack = short_lived_with_oidc(
        IdpOptions {
            access_token_ttl: TTL,
            ..Default::default()
        },
        "resource = \"urn:portcullis:api\"",
    )
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    let resources = &stack.idp.stats().await["token_resources"];
    assert_eq!(
        resources["authorization_code"],
        json!(["urn:portcullis:api"]),
        "RFC 8707 §2.2: the code exchange names the resource"
    );
    assert_eq!(whoami(&b, gw).await.0, StatusCode::OK);
    tokio::time::sleep(PAST_EXPIRY).await;
    let (status, body) = whoami(&b, gw).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        stack.idp.stats().await["token_resources"]["refresh_token"],
        json!(["urn:portcullis:api"]),
        "and the refresh of the session's token keeps it"
    );
}
