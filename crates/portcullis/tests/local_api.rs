//! Local API routes defined in code get the same anti-forgery and 401 rules as proxied routes
//! defined in configuration (regression for the peer advisory where anti-forgery depended on
//! how a route was defined). Tested with `oneshot` against the real router, no network.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use portcullis::cookie::{CookieSettings, SameSite};
use portcullis::csrf::AntiForgery;
use portcullis::local_api::CurrentUser;
use portcullis::session::{Claim, Key, KeyRing, Ticket};
use portcullis::settings::{
    ClientAuthSettings, GatewaySettings, OidcSettings, ResponseMode, SessionSettings, TokenSettings,
};
use portcullis::Gateway;
use portcullis_token::{Secret, UserTokens};
use tower::ServiceExt;

async fn gateway() -> Gateway {
    let public_url: url::Url = "http://127.0.0.1:8080".parse().unwrap();
    let settings = GatewaySettings {
        cookies: CookieSettings::for_public_url(&public_url, None, SameSite::Strict).unwrap(),
        public_url,
        base_path: "/bff".into(),
        callback_path: "/signin-oidc".into(),
        signed_out_callback_path: "/signout-callback-oidc".into(),
        oidc: OidcSettings {
            issuer: "http://127.0.0.1:1".into(),
            client_id: "spa".into(),
            client_auth: ClientAuthSettings::ClientSecretBasic(Secret::new("s")),
            scopes: vec!["openid".into()],
            extra_authorize_params: Vec::new(),
            response_mode: ResponseMode::Query,
            resource: None,
            revoke_refresh_token_on_logout: false,
            clock_skew: Duration::from_secs(60),
            fetch_userinfo: false,
            backchannel_logout_all_sessions: false,
            trusted_audiences: Vec::new(),
            http_timeout: Duration::from_secs(1),
            dpop: None,
            par: Default::default(),
            profile: Default::default(),
        },
        session: SessionSettings::default(),
        anti_forgery: AntiForgery::default(),
        routes: Vec::new(),
        tokens: TokenSettings::default(),
        diagnostics: false,
        trust_forwarded_headers: false,
        websocket_origins: Vec::new(),
        allowed_hosts: Vec::new(),
        cors: None,
    };
    let store = portcullis_session::connect("memory").await.unwrap();
    let keys = KeyRing::new(vec![Key::parse(&Key::generate_spec("t")).unwrap()]).unwrap();
    Gateway::new(
        settings,
        store,
        keys,
        Arc::new(portcullis_token::SystemClock),
    )
    .unwrap()
}

async fn login(gw: &Gateway) -> String {
    let tokens: UserTokens = serde_json::from_value(serde_json::json!({
        "access_token": {"value": "at", "token_type": "Bearer", "expires_at": null, "scope": null},
        "refresh_token": null, "id_token": null, "by_resource": {}
    }))
    .unwrap();
    let ticket = Ticket {
        sub: "alice".into(),
        sid: Some("s1".into()),
        claims: vec![Claim {
            kind: "name".into(),
            value: "Alice".into(),
        }],
        session_state: None,
        tokens,
    };
    let (id, _) = gw.sessions().create(ticket).await.unwrap();
    format!("bff-auth={}", id.as_str())
}

fn app(gw: &Gateway) -> Router {
    let local = Router::new()
        .route(
            "/me",
            get(|user: CurrentUser| async move { user.sub().to_owned() }),
        )
        .route("/public", get(|| async { "no session needed" }))
        .route(
            "/orders",
            post(|user: CurrentUser| async move { format!("created for {}", user.sub()) }),
        );
    gw.router_with_local_apis(None, vec![("/local".into(), local)])
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn local_api_routes_defined_in_code_require_anti_forgery_regression_advisory() {
    let gw = gateway().await;
    let cookie = login(&gw).await;
    let app = app(&gw);
    // Every local route, even one without a session requirement, needs the header.
    for (method, path) in [
        ("GET", "/local/me"),
        ("GET", "/local/public"),
        ("POST", "/local/orders"),
    ] {
        for headers in [
            vec![("cookie", cookie.as_str())],
            vec![("cookie", cookie.as_str()), ("x-csrf", "0")],
        ] {
            let (status, body) = call(&app, method, path, &headers).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {headers:?}"
            );
            assert!(body.is_empty());
        }
    }
    let (status, body) = call(
        &app,
        "GET",
        "/local/me",
        &[("cookie", &cookie), ("x-csrf", "1")],
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "alice"));
    let (status, _) = call(
        &app,
        "POST",
        "/local/orders",
        &[("cookie", &cookie), ("x-csrf", "1")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&app, "GET", "/local/public", &[("x-csrf", "1")]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn local_api_answers_401_not_a_redirect_without_a_session() {
    let gw = gateway().await;
    let app = app(&gw);
    for headers in [
        vec![("x-csrf", "1")],
        vec![
            ("x-csrf", "1"),
            (
                "cookie",
                "bff-auth=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ),
        ],
    ] {
        let (status, body) = call(&app, "GET", "/local/me", &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert!(body.is_empty());
    }
}
