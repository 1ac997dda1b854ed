//! The route token-policy table, in process: every policy (`none`, `user`, `client`,
//! `user_or_client`, `user_or_none`, `exchange`) × (anonymous, logged in, stale cookie), and
//! the token-failure rows (`invalid_grant`, IdP down, exchange refused, client refused), each
//! pinned to its status, whether the upstream was reached, the `Authorization` it got, whether
//! the session cookie is cleared and whether the session survives. Time is a manual clock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use axum::http::StatusCode;
use portcullis::settings::{SessionSettings, TokenPolicy};
use serde_json::{json, Value};
use support::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    Anonymous,
    LoggedIn,
    StaleCookie,
}

/// What the upstream must see: nothing (not reached), or a request with this Authorization.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Forwarded {
    No,
    WithoutToken,
    /// `Bearer <prefix>...`
    Token(&'static str),
}

struct Row {
    policy: TokenPolicy,
    caller: Caller,
    status: u16,
    forwarded: Forwarded,
    clears_cookie: bool,
}

fn expected() -> Vec<Row> {
    use Caller::*;
    use Forwarded::*;
    use TokenPolicy as P;
    let row = |policy, caller, status, forwarded, clears_cookie| Row {
        policy,
        caller,
        status,
        forwarded,
        clears_cookie,
    };
    vec![
        // none: never looks at the session; forwarded without a token for everyone.
        row(P::None, Anonymous, 200, WithoutToken, false),
        row(P::None, LoggedIn, 200, WithoutToken, false),
        row(P::None, StaleCookie, 200, WithoutToken, false),
        // user: 401 without a session, never forwarded.
        row(P::User, Anonymous, 401, No, false),
        row(P::User, LoggedIn, 200, Token("Bearer at-session"), false),
        row(P::User, StaleCookie, 401, No, true),
        // client: the gateway's own token, whoever calls; sessions are not looked at.
        row(P::Client, Anonymous, 200, Token("Bearer cc-"), false),
        row(P::Client, LoggedIn, 200, Token("Bearer cc-"), false),
        row(P::Client, StaleCookie, 200, Token("Bearer cc-"), false),
        // user_or_client: the user's token when there is a session, else the client's.
        row(P::UserOrClient, Anonymous, 200, Token("Bearer cc-"), false),
        row(
            P::UserOrClient,
            LoggedIn,
            200,
            Token("Bearer at-session"),
            false,
        ),
        row(P::UserOrClient, StaleCookie, 200, Token("Bearer cc-"), true),
        // user_or_none: the user's token when there is a session, else none.
        row(P::UserOrNone, Anonymous, 200, WithoutToken, false),
        row(
            P::UserOrNone,
            LoggedIn,
            200,
            Token("Bearer at-session"),
            false,
        ),
        row(P::UserOrNone, StaleCookie, 200, WithoutToken, true),
        // exchange: the user's token traded at the IdP; 401 without a session.
        row(P::Exchange, Anonymous, 401, No, false),
        row(P::Exchange, LoggedIn, 200, Token("Bearer ex-"), false),
        row(P::Exchange, StaleCookie, 401, No, true),
    ]
}

#[tokio::test]
async fn every_token_policy_for_anonymous_logged_in_and_stale_callers() {
    let idp = MockIdp::start().await;
    let upstream = Upstream::start().await;
    let (gw, _clock) = gateway(settings(
        &idp.issuer,
        routes_for_every_policy(&upstream.url),
        SessionSettings::default(),
    ))
    .await;
    let app = gw.router(None);
    let session = login(&gw, tokens(3600, true)).await;
    let stale = stale_cookie(&gw);

    for row in expected() {
        let name = policy_name(row.policy);
        let what = format!("{name} / {:?}", row.caller);
        let mut headers = vec![("x-csrf", "1")];
        match row.caller {
            Caller::Anonymous => {}
            Caller::LoggedIn => headers.push(("cookie", &session)),
            Caller::StaleCookie => headers.push(("cookie", &stale)),
        }
        let before = upstream.hits();
        let a = call(&app, "GET", &format!("/p/{name}/x"), &headers, "").await;
        assert_eq!(a.status.as_u16(), row.status, "{what}: {}", a.body);
        assert_eq!(
            a.clears_session_cookie(&gw),
            row.clears_cookie,
            "{what}: cookie clearing"
        );
        match row.forwarded {
            Forwarded::No => {
                assert_eq!(upstream.hits(), before, "{what}: must not be forwarded");
                assert!(a.body.is_empty(), "{what}: 401 body must be empty");
            }
            Forwarded::WithoutToken => {
                assert_eq!(upstream.hits(), before + 1, "{what}: forwarded once");
                assert_eq!(a.json()["authorization"], Value::Null, "{what}");
            }
            Forwarded::Token(prefix) => {
                assert_eq!(upstream.hits(), before + 1, "{what}: forwarded once");
                let auth = a.json()["authorization"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: no Authorization upstream"))
                    .to_owned();
                assert!(auth.starts_with(prefix), "{what}: {auth}");
            }
        }
    }
    // The session is untouched by all of this.
    let a = call(
        &app,
        "GET",
        "/bff/user",
        &[("x-csrf", "1"), ("cookie", &session)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

/// A logged-in session whose access token expired at the manual clock, on a fresh gateway
/// (each failure row starts without the token manager's back-off state of another).
async fn expired_session(
    refresh: bool,
) -> (MockIdp, Upstream, portcullis::Gateway, axum::Router, String) {
    let idp = MockIdp::start().await;
    let upstream = Upstream::start().await;
    let (gw, clock) = gateway(settings(
        &idp.issuer,
        routes_for_every_policy(&upstream.url),
        SessionSettings::default(),
    ))
    .await;
    let app = gw.router(None);
    let cookie = login(&gw, tokens(60, refresh)).await;
    clock.advance(120);
    (idp, upstream, gw, app, cookie)
}

async fn session_alive(app: &axum::Router, cookie: &str) -> bool {
    let a = call(
        app,
        "GET",
        "/bff/user",
        &[("x-csrf", "1"), ("cookie", cookie)],
        "",
    )
    .await;
    match a.status {
        StatusCode::OK => true,
        StatusCode::UNAUTHORIZED => false,
        s => panic!("/bff/user answered {s}"),
    }
}

#[tokio::test]
async fn expired_access_token_is_refreshed_before_forwarding() {
    let (idp, upstream, _gw, app, cookie) = expired_session(true).await;
    let a = call(
        &app,
        "GET",
        "/p/user/x",
        &[("x-csrf", "1"), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["authorization"], "Bearer at-1");
    assert_eq!(idp.calls(REFRESH), 1);
    assert_eq!(upstream.hits(), 1);
    // The refreshed token was stored in the session: no second refresh.
    let a = call(
        &app,
        "GET",
        "/p/user/x",
        &[("x-csrf", "1"), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(a.json()["authorization"], "Bearer at-1");
    assert_eq!(idp.calls(REFRESH), 1);
}

#[tokio::test]
async fn access_token_is_refreshed_across_several_expiries_without_relogin() {
    let idp = MockIdp::start().await;
    let upstream = Upstream::start().await;
    let (gw, clock) = gateway(settings(
        &idp.issuer,
        routes_for_every_policy(&upstream.url),
        SessionSettings::default(),
    ))
    .await;
    let app = gw.router(None);
    let cookie = login(&gw, tokens(300, true)).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let a = call(
            &app,
            "GET",
            "/p/user/x",
            &[("x-csrf", "1"), ("cookie", &cookie)],
            "",
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        seen.push(a.json()["authorization"].as_str().unwrap().to_owned());
        clock.advance(301); // past the 300 s lifetime of every token the IdP gives
    }
    assert_eq!(
        seen,
        [
            "Bearer at-session",
            "Bearer at-1",
            "Bearer at-2",
            "Bearer at-3"
        ]
    );
    assert_eq!(idp.calls(REFRESH), 3, "one refresh per expiry");
}

#[tokio::test]
async fn invalid_grant_on_refresh_ends_the_session_with_401_and_is_not_retried() {
    for policy in ["user", "user_or_client", "exchange"] {
        let (idp, upstream, gw, app, cookie) = expired_session(true).await;
        idp.fail(REFRESH, 400, json!({"error": "invalid_grant"}));
        let a = call(
            &app,
            "GET",
            &format!("/p/{policy}/x"),
            &[("x-csrf", "1"), ("cookie", &cookie)],
            "",
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{policy}: {}", a.body);
        assert!(a.body.is_empty(), "{policy}");
        assert!(a.clears_session_cookie(&gw), "{policy}: cookie cleared");
        assert_eq!(upstream.hits(), 0, "{policy}: not forwarded");
        assert!(
            !session_alive(&app, &cookie).await,
            "{policy}: session ended"
        );
        // The dead refresh token is not tried again: the cookie is now a stale one (for
        // user_or_client that means the client's token, as for anyone without a session).
        let a = call(
            &app,
            "GET",
            &format!("/p/{policy}/x"),
            &[("x-csrf", "1"), ("cookie", &cookie)],
            "",
        )
        .await;
        if policy == "user_or_client" {
            assert_eq!(a.status, StatusCode::OK, "{policy}");
            assert!(a.json()["authorization"]
                .as_str()
                .unwrap()
                .starts_with("Bearer cc-"));
        } else {
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{policy}");
        }
        assert!(
            a.clears_session_cookie(&gw),
            "{policy}: stale cookie cleared"
        );
        assert_eq!(idp.calls(REFRESH), 1, "{policy}");
    }
}

#[tokio::test]
async fn expired_access_token_without_refresh_token_ends_the_session() {
    let (idp, upstream, gw, app, cookie) = expired_session(false).await;
    let a = call(
        &app,
        "GET",
        "/p/user/x",
        &[("x-csrf", "1"), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.clears_session_cookie(&gw));
    assert_eq!(upstream.hits(), 0);
    assert_eq!(idp.calls(REFRESH), 0);
    assert!(!session_alive(&app, &cookie).await);
}

#[tokio::test]
async fn user_or_none_forwards_without_a_token_when_the_user_token_is_unavailable() {
    // invalid_grant and an IdP outage alike: the route works without a token; invalid_grant
    // ends the session (and clears its cookie), an outage keeps it.
    for (status, error, ended) in [
        (400, "invalid_grant", true),
        (503, "temporarily_unavailable", false),
    ] {
        let (idp, upstream, gw, app, cookie) = expired_session(true).await;
        idp.fail(REFRESH, status, json!({"error": error}));
        let a = call(
            &app,
            "GET",
            "/p/user_or_none/x",
            &[("x-csrf", "1"), ("cookie", &cookie)],
            "",
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{error}");
        assert_eq!(a.json()["authorization"], Value::Null, "{error}");
        assert_eq!(a.clears_session_cookie(&gw), ended, "{error}");
        assert_eq!(upstream.hits(), 1, "{error}");
        assert_eq!(session_alive(&app, &cookie).await, !ended, "{error}");
    }
}

#[tokio::test]
async fn idp_outage_on_refresh_is_503_and_keeps_the_session() {
    for policy in ["user", "user_or_client", "exchange"] {
        let (idp, upstream, gw, app, cookie) = expired_session(true).await;
        idp.fail(REFRESH, 503, json!({"error": "temporarily_unavailable"}));
        let a = call(
            &app,
            "GET",
            &format!("/p/{policy}/x"),
            &[("x-csrf", "1"), ("cookie", &cookie)],
            "",
        )
        .await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{policy}");
        assert!(!a.clears_session_cookie(&gw), "{policy}");
        assert_eq!(upstream.hits(), 0, "{policy}");
        assert!(
            session_alive(&app, &cookie).await,
            "{policy}: IdP down is not a logout"
        );
    }
}

#[tokio::test]
async fn unreachable_idp_is_503_for_every_token_fetching_policy_and_keeps_the_session() {
    let upstream = Upstream::start().await;
    // Nothing listens on port 1: discovery and the token endpoint are unreachable.
    let (gw, _clock) = gateway(settings(
        "http://127.0.0.1:1",
        routes_for_every_policy(&upstream.url),
        SessionSettings::default(),
    ))
    .await;
    let app = gw.router(None);
    let cookie = login(&gw, tokens(3600, true)).await;
    for (policy, with_session) in [
        ("user", true),
        ("client", false),
        ("user_or_client", false),
        ("user_or_client", true),
        ("exchange", true),
    ] {
        let mut headers = vec![("x-csrf", "1")];
        if with_session {
            headers.push(("cookie", &cookie));
        }
        let a = call(&app, "GET", &format!("/p/{policy}/x"), &headers, "").await;
        assert_eq!(
            a.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{policy}, session: {with_session}"
        );
        assert!(!a.clears_session_cookie(&gw));
    }
    assert_eq!(upstream.hits(), 0);
    assert!(session_alive(&app, &cookie).await);
}

#[tokio::test]
async fn refused_token_exchange_is_403_and_keeps_the_session() {
    let idp = MockIdp::start().await;
    let upstream = Upstream::start().await;
    let (gw, _clock) = gateway(settings(
        &idp.issuer,
        routes_for_every_policy(&upstream.url),
        SessionSettings::default(),
    ))
    .await;
    let app = gw.router(None);
    let cookie = login(&gw, tokens(3600, true)).await;
    idp.fail(EXCHANGE, 400, json!({"error": "invalid_target"}));
    let a = call(
        &app,
        "GET",
        "/p/exchange/x",
        &[("x-csrf", "1"), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.body.is_empty());
    assert!(!a.clears_session_cookie(&gw));
    assert_eq!(upstream.hits(), 0);
    assert!(session_alive(&app, &cookie).await);
    // The refusal is not cached: once the IdP agrees, the route works.
    idp.heal(EXCHANGE);
    let a = call(
        &app,
        "GET",
        "/p/exchange/x",
        &[("x-csrf", "1"), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn refused_client_credentials_are_401_and_never_forwarded() {
    let idp = MockIdp::start().await;
    let upstream = Upstream::start().await;
    let (gw, _clock) = gateway(settings(
        &idp.issuer,
        routes_for_every_policy(&upstream.url),
        SessionSettings::default(),
    ))
    .await;
    let app = gw.router(None);
    idp.fail(CLIENT_CREDENTIALS, 401, json!({"error": "invalid_client"}));
    for policy in ["client", "user_or_client"] {
        let a = call(
            &app,
            "GET",
            &format!("/p/{policy}/x"),
            &[("x-csrf", "1")],
            "",
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{policy}");
        assert!(a.body.is_empty());
    }
    idp.fail(
        CLIENT_CREDENTIALS,
        503,
        json!({"error": "temporarily_unavailable"}),
    );
    let a = call(&app, "GET", "/p/client/x", &[("x-csrf", "1")], "").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.hits(), 0);
}
