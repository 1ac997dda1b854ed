//! Hostile-input property (issue 12, items 10–13): generated malformed request targets,
//! odd methods and duplicated or junk headers, sent in-process with `oneshot` to the real
//! router, never produce a 5xx other than the documented upstream/IdP/store ones (502, 503,
//! 504; every upstream and the IdP here are deliberately unreachable) and never panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri};
use axum::Router;
use portcullis::cookie::{CookieSettings, SameSite};
use portcullis::csrf::AntiForgery;
use portcullis::session::{Claim, Key, KeyRing, Ticket};
use portcullis::settings::{
    ClientAuthSettings, GatewaySettings, OidcSettings, ResponseMode, RouteSettings,
    SessionSettings, TokenPolicy, TokenSettings,
};
use portcullis::Gateway;
use portcullis_token::{Secret, UserTokens};
use proptest::prelude::*;
use tower::ServiceExt;

/// Nothing listens on port 1: every upstream and the IdP are unreachable.
const DEAD: &str = "http://127.0.0.1:1";

fn route(path: &str, token: TokenPolicy) -> RouteSettings {
    RouteSettings {
        path: path.into(),
        upstream: format!("{DEAD}/up{path}").parse().unwrap(),
        token,
        anti_forgery: true,
        resource: None,
        scope: None,
        audience: None,
        refresh_before_expiry: None,
        client: None,
        timeout: Duration::from_secs(2),
        access: Default::default(),
        max_body: None,
    }
}

async fn gateway() -> (Gateway, String) {
    let public_url: url::Url = "http://127.0.0.1:8080".parse().unwrap();
    let settings = GatewaySettings {
        cookies: CookieSettings::for_public_url(&public_url, None, SameSite::Strict).unwrap(),
        public_url,
        base_path: "/bff".into(),
        callback_path: "/signin-oidc".into(),
        signed_out_callback_path: "/signout-callback-oidc".into(),
        oidc: OidcSettings {
            issuer: DEAD.into(),
            client_id: "spa".into(),
            client_auth: ClientAuthSettings::ClientSecretBasic(Secret::new("s")),
            scopes: vec!["openid".into()],
            extra_authorize_params: Vec::new(),
            response_mode: ResponseMode::Query,
            resource: None,
            trusted_audiences: Vec::new(),
            revoke_refresh_token_on_logout: false,
            clock_skew: Duration::from_secs(60),
            fetch_userinfo: false,
            backchannel_logout_all_sessions: false,
            http_timeout: Duration::from_secs(1),
            dpop: None,
            par: Default::default(),
            profile: Default::default(),
        },
        session: SessionSettings::default(),
        anti_forgery: AntiForgery::default(),
        routes: vec![
            route("/api", TokenPolicy::User),
            route("/api-none", TokenPolicy::None),
            route("/api-optional", TokenPolicy::UserOrNone),
        ],
        tokens: TokenSettings::default(),
        diagnostics: true,
        trust_forwarded_headers: false,
        websocket_origins: Vec::new(),
        allowed_hosts: Vec::new(),
        cors: None,
    };
    let store = portcullis_session::connect("memory").await.unwrap();
    let keys = KeyRing::new(vec![Key::parse(&Key::generate_spec("t")).unwrap()]).unwrap();
    let gw = Gateway::new(
        settings,
        store,
        keys,
        Arc::new(portcullis_token::SystemClock),
    )
    .unwrap();
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
    (gw, format!("bff-auth={}", id.as_str()))
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "TRACK",
    "PROPFIND", "M-SEARCH", "get", "X",
];

/// The API routes first (the generator favours them).
const PREFIXES: &[&str] = &[
    "/api",
    "/api-none",
    "/api-optional",
    "/bff/user",
    "/bff/login",
    "/bff/logout",
    "/bff/backchannel",
    "/bff/diagnostics",
    "/bff/silent-login-callback",
    "/signin-oidc",
    "/signout-callback-oidc",
    "/healthz",
    "/readyz",
    "/",
    "",
    "*",
    "x",
    "127.0.0.1:80",
    "http://evil.example",
];

const PIECES: &[&str] = &[
    "/",
    ".",
    "..",
    ";",
    "%2e",
    "%2E",
    "%2f",
    "%5c",
    "\\",
    "%25",
    "a",
    "%00",
    "%0a",
    "%7f",
    "%c0%ae",
    "%ff",
    "%",
    "%zz",
    "?",
    "?returnUrl=//evil",
    "?returnUrl=%0d%0a",
    "&sid=x",
    "?slide=false",
    "?code=x&state=y&iss=z",
    "?error=access_denied%0AFORGED",
    "#f",
    "\u{1}",
    "~",
    "'",
    "\"",
    "{",
    "|",
    "^",
    "`",
];

const HEADER_NAMES: &[&str] = &[
    "origin",
    "x-csrf",
    "cookie",
    "upgrade",
    "connection",
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "x-forwarded-for",
    "forwarded",
    "x-http-method-override",
    "x-original-url",
    "sec-websocket-key",
    "sec-websocket-version",
    "authorization",
    "accept",
    "te",
    "expect",
];

/// `SESSION` is replaced by a valid session cookie.
const HEADER_VALUES: &[&[u8]] = &[
    b"1",
    b"0",
    b"",
    b"websocket",
    b"upgrade",
    b"Upgrade, keep-alive, x-csrf",
    b"http://127.0.0.1:8080",
    b"http://evil.example",
    b"null",
    b"SESSION",
    b"bff-auth=junk",
    b"bff-auth=; bff-auth=x; __Host-bff-login.a=b",
    b"chunked",
    b"gzip, chunked",
    b"-1",
    b"99999999999999999999",
    b"application/x-www-form-urlencoded",
    b"text/html",
    b"\t",
    b"\x80\xff\xfe",
    b"TRACE",
    b"100-continue",
    b"Bearer x",
];

type Generated = (String, String, Vec<(String, Vec<u8>)>, Vec<u8>);

fn request() -> impl Strategy<Value = Generated> {
    (
        proptest::sample::select(METHODS),
        prop_oneof![
            3 => proptest::sample::select(&PREFIXES[..3]),
            2 => proptest::sample::select(PREFIXES),
        ],
        any::<bool>(),
        proptest::collection::vec(proptest::sample::select(PIECES), 0..8),
        // The anti-forgery header and a valid session, so that requests get past the
        // first refusals and reach the session, token and forwarding steps.
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(
            (
                proptest::sample::select(HEADER_NAMES),
                proptest::sample::select(HEADER_VALUES),
            ),
            0..6,
        ),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(method, prefix, slash, pieces, csrf, session, junk, body)| {
                let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
                if csrf {
                    headers.push(("x-csrf".into(), b"1".to_vec()));
                }
                if session {
                    headers.push(("cookie".into(), b"SESSION".to_vec()));
                }
                headers.extend(junk.into_iter().map(|(n, v)| (n.to_owned(), v.to_vec())));
                let sep = if slash { "/" } else { "" };
                (
                    method.to_owned(),
                    format!("{prefix}{sep}{}", pieces.concat()),
                    headers,
                    body,
                )
            },
        )
}

/// Builds what hyper would have handed to the router; `None` when hyper itself would have
/// refused the request line or a header (it answers 400 before the router runs).
fn build(
    method: &str,
    target: &str,
    headers: &[(String, Vec<u8>)],
    body: Vec<u8>,
    session: &str,
) -> Option<Request<Body>> {
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let uri: Uri = target.parse().ok()?;
    let mut req = Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        let v = if v == b"SESSION" {
            session.as_bytes()
        } else {
            v
        };
        req = req.header(
            HeaderName::from_bytes(n.as_bytes()).ok()?,
            HeaderValue::from_bytes(v).ok()?,
        );
    }
    req.body(Body::from(body)).ok()
}

async fn status_of(app: &Router, req: Request<Body>) -> u16 {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    // Drain the body too: a failure while streaming it is also an answer.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        axum::body::to_bytes(resp.into_body(), 1 << 20),
    )
    .await;
    status
}

#[test]
fn malformed_requests_never_answer_500() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (gw, session) = rt.block_on(gateway());
    let app = gw.router(None);
    let started = std::time::Instant::now();
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 600,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    });
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    runner
        .run(&request(), |(method, target, headers, body)| {
            let Some(req) = build(&method, &target, &headers, body, &session) else {
                return Ok(());
            };
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let status = rt.block_on(status_of(&app, req));
            *seen.lock().unwrap().entry(status).or_default() += 1;
            prop_assert!(
                status < 500 || matches!(status, 502..=504),
                "{method} {target} {headers:?} answered {status}"
            );
            Ok(())
        })
        .unwrap();
    let sent = sent.into_inner();
    let seen = seen.into_inner().unwrap();
    eprintln!("{sent} requests sent; statuses: {seen:?}");
    assert!(sent > 100, "only {sent} generated requests were valid HTTP");
    // The generator reaches the pipeline's refusals and the forwarding step.
    for status in [400, 401, 404, 405, 502] {
        assert!(seen.contains_key(&status), "no {status} among {seen:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// The known shapes behind the property, as plain regressions.
#[tokio::test]
async fn odd_requests_on_api_routes_are_4xx_or_upstream_failures() {
    let (gw, session) = gateway().await;
    let app = gw.router(None);
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case] = &[
        // 12.11: CONNECT and TRACE on a route prefix: 405, nothing forwarded.
        ("CONNECT", "/api-none/x", &[("x-csrf", "1")], 405),
        ("TRACE", "/api-none/x", &[("x-csrf", "1")], 405),
        ("TRACK", "/api", &[], 405),
        // 12.1: `..;` never reaches the (dead) upstream: 400, not 502.
        ("GET", "/api-none/..;/secret", &[("x-csrf", "1")], 400),
        ("GET", "/api-none/%2e%2e%3b/secret", &[("x-csrf", "1")], 400),
        // No ConnectInfo in-process: still forwarded (502 from the dead upstream), not 500.
        ("GET", "/api-none/x", &[("x-csrf", "1")], 502),
        // RFC 9112 §3.2: two Host headers are a 400, never forwarded with either.
        (
            "GET",
            "/api-none/x",
            &[
                ("x-csrf", "1"),
                ("host", "evil"),
                ("host", "127.0.0.1:8080"),
            ],
            400,
        ),
        // The prefix with a trailing slash is the route too, not a 404.
        ("GET", "/api-none/", &[("x-csrf", "1")], 502),
        (
            "GET",
            "/api-optional/x",
            &[("x-csrf", "1"), ("cookie", "SESSION")],
            502,
        ),
    ];
    for (method, path, headers, want) in cases {
        let headers: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        let req = build(method, path, &headers, Vec::new(), &session).unwrap();
        assert_eq!(status_of(&app, req).await, *want, "{method} {path}");
    }
}
