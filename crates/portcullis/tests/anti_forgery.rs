//! Anti-forgery on `/bff/user` and on every API route whatever its token policy, in process:
//! a missing, wrong, empty or duplicated `X-CSRF` header is a 401 with an empty body, for
//! every method, with or without a session, and nothing reaches the upstream or the IdP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use axum::http::StatusCode;
use portcullis::settings::SessionSettings;
use support::*;

const BAD_HEADERS: [&[(&str, &str)]; 5] = [
    &[],
    &[("x-csrf", "0")],
    &[("x-csrf", "")],
    &[("x-csrf", "1 ")],
    &[("x-csrf", "1"), ("x-csrf", "1")],
];

#[tokio::test]
async fn missing_or_wrong_anti_forgery_header_is_401_empty_and_nothing_is_forwarded() {
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

    let mut paths: Vec<String> = POLICIES
        .iter()
        .map(|p| format!("/p/{}/x", policy_name(*p)))
        .collect();
    paths.push("/bff/user".into());
    for path in &paths {
        let methods: &[&str] = if path == "/bff/user" {
            &["GET"]
        } else {
            &["GET", "POST", "PUT", "DELETE", "PATCH"]
        };
        for method in methods {
            for with_session in [false, true] {
                for bad in BAD_HEADERS {
                    let mut headers = bad.to_vec();
                    if with_session {
                        headers.push(("cookie", &cookie));
                    }
                    let a = call(&app, method, path, &headers, "body").await;
                    assert_eq!(
                        a.status,
                        StatusCode::UNAUTHORIZED,
                        "{method} {path} {headers:?}"
                    );
                    assert!(a.body.is_empty(), "{method} {path}: 401 body must be empty");
                    assert!(
                        !a.clears_session_cookie(&gw),
                        "a forged request must not end the session"
                    );
                }
            }
        }
    }
    assert_eq!(upstream.hits(), 0, "nothing was forwarded");
    for grant in [REFRESH, CLIENT_CREDENTIALS, EXCHANGE] {
        assert_eq!(
            idp.calls(grant),
            0,
            "no token was fetched for a forged request ({grant})"
        );
    }

    // The same requests with the header pass: the 401s above were the header's doing.
    for path in &paths {
        let a = call(
            &app,
            "GET",
            path,
            &[("x-csrf", "1"), ("cookie", &cookie)],
            "",
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
    }
    assert_eq!(upstream.hits(), POLICIES.len() as u64);
}
