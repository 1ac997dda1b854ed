//! Token management end to end, counted at the real IdP: a refresh after expiry, one refresh
//! for many concurrent calls with rotating refresh tokens, an IdP outage and recovery, and
//! client-credentials caching keyed by scope. Access tokens here live 2–6 s, so these tests
//! wait real seconds for expiry; everything that does not need the real IdP's processes is
//! tested with a manual clock instead: the token crate's own tests, and the gateway's policy
//! table in `crates/portcullis/tests/token_policy_matrix.rs` (several expiries in a row,
//! `invalid_grant` ending the session and never retried, outages, refused exchanges).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

async fn whoami(b: &Browser, gw: &Gateway) -> (StatusCode, Value) {
    let r = b.get_csrf(&gw.url("/api/whoami")).await;
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn session_keeps_working_after_the_access_token_is_due_at_a_real_idp() {
    let stack = Stack::start_with(
        IdpOptions {
            access_token_ttl: 2,
            rotate_refresh_token: true,
            ..Default::default()
        },
        "",
    )
    .await;
    let b = Browser::new();
    b.login(&stack.gw, "alice").await;
    let jti = || async {
        let (status, body) = whoami(&b, &stack.gw).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["sub"], "alice");
        body["token_jti"].as_str().unwrap().to_owned()
    };
    let first = jti().await;
    // 2 s tokens, refresh buffer capped at half the lifetime: due 1 s (of the gateway's
    // whole-second clock) after issue.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_ne!(
        jti().await,
        first,
        "a fresh access token once the first was due"
    );
    assert!(stack.idp.token_requests("refresh_token").await >= 1);
    assert_eq!(
        stack.idp.token_requests("authorization_code").await,
        1,
        "no re-login"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_calls_on_an_expired_session_refresh_once_with_rotation() {
    let stack = Stack::start_with(
        IdpOptions {
            access_token_ttl: 6,
            rotate_refresh_token: true,
            ..Default::default()
        },
        "[tokens]\nrefresh_before_expiry = \"1s\"\n",
    )
    .await;
    let b = Browser::new();
    b.login(&stack.gw, "alice").await;
    // Access tokens live 6 s and are refreshed 1 s before expiry: after 5.2 s the token is
    // due, and the refreshed one stays fresh for the whole burst.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let before = stack.idp.token_requests("refresh_token").await;
    let calls = (0..200).map(|_| {
        let b = b.clone();
        let url = stack.gw.url("/api/whoami");
        tokio::spawn(async move {
            b.http
                .get(url)
                .header("x-csrf", "1")
                .send()
                .await
                .map(|r| r.status())
        })
    });
    let results = futures_util_join(calls.collect()).await;
    let ok = results.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 200, "statuses: {results:?}");
    assert_eq!(
        stack.idp.token_requests("refresh_token").await - before,
        1,
        "exactly one refresh at the IdP"
    );
    let errors = stack.idp.stats().await["token_errors"].clone();
    assert!(
        errors.is_object() && errors.get("invalid_grant").is_none(),
        "no invalid_grant at the IdP: {errors}"
    );
    // Late arrivals after the flight reuse the stored result.
    let (status, _) = whoami(&b, &stack.gw).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stack.idp.token_requests("refresh_token").await - before, 1);
}

async fn futures_util_join(
    handles: Vec<tokio::task::JoinHandle<reqwest::Result<StatusCode>>>,
) -> Vec<StatusCode> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap().unwrap_or(StatusCode::IM_A_TEAPOT));
    }
    out
}

#[tokio::test]
async fn idp_outage_answers_503_keeps_the_session_and_recovers() {
    let dir = temp_dir("idp-state");
    let mut stack = Stack::start_with(
        IdpOptions {
            access_token_ttl: 2,
            state_file: Some(dir.join("state.json")),
            ..Default::default()
        },
        "",
    )
    .await;
    let b = Browser::new();
    b.login(&stack.gw, "alice").await;
    stack.idp.stop().await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, _) = whoami(&b, &stack.gw).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "IdP down is not a logout"
    );
    assert!(b.user(&stack.gw).await.is_some(), "session kept");
    stack.idp.restart().await;
    // The gateway backs off briefly after a failure; the call succeeds within a few seconds
    // and without a new login.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = whoami(&b, &stack.gw).await;
        if status == StatusCode::OK {
            assert_eq!(body["sub"], "alice");
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(std::time::Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn client_credentials_are_cached_per_scope_regression_for_the_peer_cve() {
    let stack = Stack::start_with(
        IdpOptions::default(),
        r#"
[[routes]]
path = "/api-write"
upstream = "API_URL"
token = "client"
scope = "api.write"
"#,
    )
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    // Two concurrent callers with different scopes get different tokens.
    let (read_url, write_url) = (gw.url("/api-client/whoami"), gw.url("/api-write/whoami"));
    let (read, write) = tokio::join!(b.get_csrf(&read_url), b.get_csrf(&write_url));
    let read: Value = read.json().await.unwrap();
    let write: Value = write.json().await.unwrap();
    assert_eq!(read["scope"], "api.read");
    assert_eq!(write["scope"], "api.write");
    let jti = |v: &Value| {
        v["token_jti"]
            .as_str()
            .unwrap_or_else(|| panic!("no token_jti: {v}"))
            .to_owned()
    };
    assert_ne!(jti(&read), jti(&write));
    // 100 concurrent callers with the same parameters: one token request (already cached).
    let before = stack.idp.token_requests("client_credentials").await;
    assert_eq!(before, 2);
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let b = b.clone();
            let url = gw.url("/api-client/whoami");
            tokio::spawn(async move {
                b.http
                    .get(url)
                    .header("x-csrf", "1")
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    let statuses = futures_util_join(calls).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(stack.idp.token_requests("client_credentials").await, 2);
}

#[tokio::test]
async fn exchange_route_trades_the_user_token_for_its_audience_rfc8693() {
    let stack = Stack::start_with(
        IdpOptions::default(),
        r#"
[[routes]]
path = "/api-exchanged"
upstream = "API_URL"
token = "exchange"
audience = "urn:portcullis:api"
scope = "api.read"
"#,
    )
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    assert_eq!(
        b.get_csrf(&gw.url("/api-exchanged/whoami")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    b.login(gw, "alice").await;
    let (status, user) = whoami(&b, gw).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    let user_jti = user["token_jti"].as_str().expect("token_jti").to_owned();
    let r = b.get_csrf(&gw.url("/api-exchanged/whoami")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let exchanged: Value = r.json().await.unwrap();
    assert_eq!(
        exchanged["sub"], "alice",
        "the exchanged token still names the user"
    );
    assert_eq!(exchanged["scope"], "api.read");
    assert_ne!(
        exchanged["token_jti"].as_str().expect("token_jti"),
        user_jti,
        "a different token than the session's"
    );
    let again: Value = b
        .get_csrf(&gw.url("/api-exchanged/whoami"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["token_jti"], exchanged["token_jti"], "cached");
    assert_eq!(
        stack
            .idp
            .token_requests("urn:ietf:params:oauth:grant-type:token-exchange")
            .await,
        1
    );
}
