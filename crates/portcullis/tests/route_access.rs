//! Per-route access rules in process (a manual clock, the memory store, a counting upstream):
//! every token policy enforces `require_claims` before any token is fetched, `max_auth_age`
//! follows the gateway's clock to the second, and a frontend's challenge names its own login
//! endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use portcullis::access::{ClaimRule, RouteAccess};
use portcullis::session::{Claim, Ticket};
use portcullis::settings::SessionSettings;
use portcullis::{FrontendSettings, FrontendSpec, Gateway};
use serde_json::{json, Value};
use support::*;

fn claim(kind: &str, value: Value) -> Claim {
    Claim {
        kind: kind.into(),
        value,
    }
}

/// A session of alice with these claims (its own IdP session: a new `sid` each time, so
/// that no session replaces another); returns the `Cookie` header value.
async fn session_with(sessions: &portcullis::session::Sessions, claims: Vec<Claim>) -> String {
    static SID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let sid = SID.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let ticket = Ticket {
        sub: "alice".into(),
        sid: Some(format!("sid-{sid}")),
        claims,
        session_state: None,
        tokens: tokens(3600, true),
    };
    let (id, _) = sessions.create(ticket).await.unwrap();
    format!("{}={}", sessions.cookies().session_name(), id.as_str())
}

#[tokio::test]
async fn every_token_policy_checks_claims_before_fetching_a_token_or_forwarding() {
    let idp = MockIdp::start().await;
    let upstream = Upstream::start().await;
    let mut routes = routes_for_every_policy(&upstream.url);
    for r in &mut routes {
        r.access = RouteAccess {
            require_claims: vec![ClaimRule {
                claim: "role".into(),
                values: vec!["admin".into()],
            }],
            ..RouteAccess::default()
        };
    }
    let (gw, _clock) = gateway(settings(&idp.issuer, routes, SessionSettings::default())).await;
    let app = gw.router(None);
    let plain = session_with(&gw.sessions(), vec![claim("role", json!("user"))]).await;
    let admin = session_with(
        &gw.sessions(),
        vec![claim("role", json!("user")), claim("role", json!("admin"))],
    )
    .await;
    let stale = stale_cookie(&gw);
    for policy in POLICIES {
        let path = format!("/p/{}/x", policy_name(policy));
        let before = upstream.hits();
        let anonymous = call(&app, "GET", &path, &[("x-csrf", "1")], "").await;
        assert_eq!(
            anonymous.status,
            StatusCode::UNAUTHORIZED,
            "{path} anonymous"
        );
        let gone = call(
            &app,
            "GET",
            &path,
            &[("x-csrf", "1"), ("cookie", &stale)],
            "",
        )
        .await;
        assert_eq!(gone.status, StatusCode::UNAUTHORIZED, "{path} stale");
        assert!(
            gone.clears_session_cookie(&gw),
            "{path}: stale cookie cleared"
        );
        let refused = call(
            &app,
            "GET",
            &path,
            &[("x-csrf", "1"), ("cookie", &plain)],
            "",
        )
        .await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{path} without the role"
        );
        assert!(refused.body.is_empty());
        assert_eq!(upstream.hits(), before, "{path}: nothing forwarded");
        let ok = call(
            &app,
            "GET",
            &path,
            &[("x-csrf", "1"), ("cookie", &admin)],
            "",
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{path} with the role");
        assert_eq!(upstream.hits(), before + 1);
    }
    // The refused calls fetched no client-credentials or exchanged token: only the two
    // allowed calls of `client` and `exchange` did (user_or_client has a session: user token).
    assert_eq!(idp.calls(CLIENT_CREDENTIALS), 1);
    assert_eq!(idp.calls(EXCHANGE), 1);
}

#[tokio::test]
async fn max_auth_age_is_judged_by_the_gateways_clock_to_the_second() {
    let idp = MockIdp::start().await;
    let upstream = Upstream::start().await;
    let mut routes = routes_for_every_policy(&upstream.url);
    routes.retain(|r| r.path == "/p/user");
    routes[0].access.max_auth_age = Some(Duration::from_secs(600));
    routes[0].access.require_acr = vec!["urn:example:mfa".into()];
    let (gw, clock) = gateway(settings(&idp.issuer, routes, SessionSettings::default())).await;
    let app = gw.router(None);
    let cookie = session_with(
        &gw.sessions(),
        vec![
            claim("acr", json!("urn:example:mfa")),
            claim("auth_time", json!(T0)),
        ],
    )
    .await;
    let headers = [("x-csrf", "1"), ("cookie", cookie.as_str())];
    clock.advance(600);
    assert_eq!(
        call(&app, "GET", "/p/user", &headers, "").await.status,
        StatusCode::OK
    );
    clock.advance(1);
    let before = upstream.hits();
    let r = call(&app, "GET", "/p/user", &headers, "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer error=\"insufficient_user_authentication\", error_description=\"More recent authentication is required\", acr_values=\"urn:example:mfa\", max_age=600"
    );
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(
        r.json(),
        json!({
            "error": "insufficient_user_authentication",
            "error_description": "More recent authentication is required",
            "acr_values": "urn:example:mfa",
            "max_age": 600,
            "login_url": "/bff/login?acr_values=urn%3Aexample%3Amfa&max_age=600",
        })
    );
    assert!(!r.clears_session_cookie(&gw), "the session is kept");
    assert_eq!(upstream.hits(), before, "nothing forwarded");
    // A browser navigation to the route gets a page, with the same status and challenge.
    let page = call(
        &app,
        "GET",
        "/p/user",
        &[
            ("x-csrf", "1"),
            ("cookie", cookie.as_str()),
            ("sec-fetch-mode", "navigate"),
        ],
        "",
    )
    .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(
        page.body.contains("A stronger sign-in is needed"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn a_frontends_step_up_challenge_names_its_own_login_endpoint() {
    let idp = MockIdp::start().await;
    let upstream = Upstream::start().await;
    let default = settings(&idp.issuer, Vec::new(), SessionSettings::default());
    let mut routes = routes_for_every_policy(&upstream.url);
    routes.retain(|r| r.path == "/p/user");
    routes[0].access.require_acr = vec!["urn:example:mfa".into()];
    let mut admin = settings(
        &idp.issuer,
        routes,
        SessionSettings {
            partition: "admin".into(),
            ..SessionSettings::default()
        },
    );
    admin.base_path = "/auth".into();
    admin.cookies = portcullis::cookie::CookieSettings::for_public_url(
        &admin.public_url,
        Some("bff-auth-admin"),
        portcullis::cookie::SameSite::Strict,
    )
    .unwrap();
    let store = portcullis_session::connect("memory").await.unwrap();
    let keys = portcullis::session::KeyRing::new(vec![portcullis::session::Key::parse(
        &portcullis::session::Key::generate_spec("t"),
    )
    .unwrap()])
    .unwrap();
    let gw = Gateway::with_frontends(
        default,
        vec![FrontendSpec {
            settings: FrontendSettings {
                name: "admin".into(),
                match_host: None,
                match_path: Some("/admin".into()),
                settings: admin,
            },
            fallback: None,
        }],
        store,
        keys,
        std::sync::Arc::new(portcullis_token::ManualClock::new(T0)),
    )
    .unwrap();
    let app = gw.router(None);
    let fe = gw.frontend("admin").unwrap();
    let cookie = session_with(fe.sessions(), vec![claim("acr", json!("pwd"))]).await;
    let r = call(
        &app,
        "GET",
        "/admin/p/user/x",
        &[("x-csrf", "1"), ("cookie", cookie.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json()["login_url"],
        "/admin/auth/login?acr_values=urn%3Aexample%3Amfa"
    );
}

/// Regression: `require_claims` on a nested route (`/p/admin` → `<up>/up/admin`) was bypassed
/// through the route above it (`/p/open` → `<up>/up`) by spelling the path so that the
/// gateway's raw prefix match missed the nested route while the upstream, which decodes and
/// normalises paths, still served it: `/p/open/%61dmin/x` arrived as `/up/%61dmin/x`, which
/// ASP.NET Core, Spring, Go and nginx read as `/up/admin/x`. Such a request is now held to the
/// nested route's rules as well.
#[tokio::test]
async fn encoded_path_through_an_outer_route_cannot_skip_a_nested_routes_claims() {
    let idp = MockIdp::start().await;
    let upstream = Upstream::start().await;
    let mut routes = routes_for_every_policy(&upstream.url);
    routes.retain(|r| matches!(r.path.as_str(), "/p/none" | "/p/user"));
    for r in &mut routes {
        if r.path == "/p/none" {
            r.path = "/p/open".into();
            r.upstream = format!("{}/up", upstream.url).parse().unwrap();
        } else {
            r.path = "/p/admin".into();
            r.upstream = format!("{}/up/admin", upstream.url).parse().unwrap();
            r.access.require_claims = vec![ClaimRule {
                claim: "role".into(),
                values: vec!["admin".into()],
            }];
        }
    }
    let (gw, _clock) = gateway(settings(&idp.issuer, routes, SessionSettings::default())).await;
    let app = gw.router(None);
    let plain = session_with(&gw.sessions(), vec![claim("role", json!("user"))]).await;
    let admin = session_with(&gw.sessions(), vec![claim("role", json!("admin"))]).await;
    let spellings = [
        "/p/open/%61dmin/x",
        "/p/open/%2561dmin/x",
        "/p/open/ADMIN/x",
        "/p/open/Admin",
        "/p/open/admin;jsessionid=1/x",
        "/p/open//admin/x",
        "/p/open/admin./x",
        "/p/open/admin%20/x",
        "/p/open/admin",
    ];
    for path in spellings {
        let before = upstream.hits();
        let refused = call(
            &app,
            "GET",
            path,
            &[("x-csrf", "1"), ("cookie", &plain)],
            "",
        )
        .await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{path} without the role"
        );
        let anonymous = call(&app, "GET", path, &[("x-csrf", "1")], "").await;
        assert_eq!(
            anonymous.status,
            StatusCode::UNAUTHORIZED,
            "{path} anonymous"
        );
        assert_eq!(upstream.hits(), before, "{path}: nothing forwarded");
        let ok = call(
            &app,
            "GET",
            path,
            &[("x-csrf", "1"), ("cookie", &admin)],
            "",
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{path} with the role");
        assert_eq!(upstream.hits(), before + 1);
    }
    // Paths of the outer route that do not reach the nested upstream keep its rules (none).
    for path in [
        "/p/open/administrators",
        "/p/open/x/admin",
        "/p/open/adminx",
        "/p/open",
    ] {
        let r = call(&app, "GET", path, &[("x-csrf", "1")], "").await;
        assert_eq!(r.status, StatusCode::OK, "{path} anonymous");
    }
}
