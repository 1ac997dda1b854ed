//! Session time behaviour, in process with a manual clock instead of sleeps: the idle
//! timeout, the absolute timeout, sliding on activity (rate-limited to one store write per
//! idle/20, clamped to 1..=60 s) on `/bff/user` and API routes, and `/bff/user?slide=false`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use portcullis::settings::SessionSettings;
use portcullis::Gateway;
use portcullis_token::ManualClock;
use support::*;

const IDLE: i64 = 30 * 60;
const ABSOLUTE: i64 = 2 * 3600;
/// idle/20 clamped to 1..=60 s: activity within this of the last renewal does not slide.
const MIN_GAP: i64 = if IDLE / 20 > 60 { 60 } else { IDLE / 20 };

struct Fixture {
    gw: Gateway,
    app: Router,
    clock: ManualClock,
    cookie: String,
    upstream: Upstream,
}

async fn fixture() -> Fixture {
    let idp = MockIdp::start().await;
    let upstream = Upstream::start().await;
    let session = SessionSettings {
        idle_timeout: Duration::from_secs(IDLE as u64),
        absolute_timeout: Duration::from_secs(ABSOLUTE as u64),
        ..SessionSettings::default()
    };
    let (gw, clock) = gateway(settings(
        &idp.issuer,
        routes_for_every_policy(&upstream.url),
        session,
    ))
    .await;
    let app = gw.router(None);
    // The access token outlives every test here: no refresh gets in the way.
    let cookie = login(&gw, tokens(10 * 24 * 3600, true)).await;
    Fixture {
        gw,
        app,
        clock,
        cookie,
        upstream,
    }
}

impl Fixture {
    /// `/bff/user` (sliding unless `slide` is false): `Some(expires_in)` or `None` for 401.
    async fn user(&self, slide: bool) -> Option<i64> {
        let path = if slide {
            "/bff/user"
        } else {
            "/bff/user?slide=false"
        };
        let a = call(
            &self.app,
            "GET",
            path,
            &[("x-csrf", "1"), ("cookie", &self.cookie)],
            "",
        )
        .await;
        match a.status {
            StatusCode::OK => Some(a.expires_in()),
            StatusCode::UNAUTHORIZED => {
                assert!(
                    a.clears_session_cookie(&self.gw),
                    "an ended session's cookie is cleared"
                );
                None
            }
            s => panic!("/bff/user answered {s}: {}", a.body),
        }
    }

    /// An API call with the user's token: its status.
    async fn api(&self) -> StatusCode {
        call(
            &self.app,
            "GET",
            "/p/user/x",
            &[("x-csrf", "1"), ("cookie", &self.cookie)],
            "",
        )
        .await
        .status
    }
}

#[tokio::test]
async fn idle_session_ends_after_the_idle_timeout() {
    let f = fixture().await;
    assert_eq!(f.user(false).await, Some(IDLE));
    f.clock.advance(IDLE - 1);
    assert_eq!(
        f.user(false).await,
        Some(1),
        "alive one second before the idle timeout"
    );
    f.clock.advance(1);
    assert_eq!(f.user(false).await, None, "ended at the idle timeout");
}

#[tokio::test]
async fn idle_timeout_ends_the_session_on_api_routes_too_even_when_cached() {
    let f = fixture().await;
    assert_eq!(f.api().await, StatusCode::OK); // now in the session cache
    f.clock.advance(IDLE);
    let a = call(
        &f.app,
        "GET",
        "/p/user/x",
        &[("x-csrf", "1"), ("cookie", &f.cookie)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.clears_session_cookie(&f.gw));
    assert_eq!(f.upstream.hits(), 1, "only the first call was forwarded");
}

#[tokio::test]
async fn activity_slides_the_idle_timeout_at_most_once_per_rate_limit_gap() {
    let f = fixture().await;
    // Within the rate limit: nothing is written, the expiry keeps counting down.
    f.clock.advance(MIN_GAP - 1);
    assert_eq!(f.user(true).await, Some(IDLE - (MIN_GAP - 1)));
    // Past it: the idle timeout starts again from now.
    f.clock.advance(1);
    assert_eq!(f.user(true).await, Some(IDLE));
    // Sliding keeps a busy session alive well past one idle timeout.
    for _ in 0..3 {
        f.clock.advance(IDLE - 60);
        assert_eq!(f.user(true).await, Some(IDLE));
    }
}

#[tokio::test]
async fn api_calls_slide_the_session_like_user_calls() {
    let f = fixture().await;
    f.clock.advance(IDLE - 60);
    assert_eq!(f.api().await, StatusCode::OK);
    assert_eq!(
        f.user(false).await,
        Some(IDLE),
        "the API call renewed the session"
    );
    f.clock.advance(IDLE - 1);
    assert_eq!(f.user(false).await, Some(1));
}

#[tokio::test]
async fn absolute_timeout_ends_an_active_session() {
    let f = fixture().await;
    // Active every 20 minutes: sliding, but never past created + absolute.
    let mut t = 0;
    while t + 20 * 60 < ABSOLUTE {
        f.clock.advance(20 * 60);
        t += 20 * 60;
        let left = f.user(true).await.expect("alive while active");
        assert_eq!(left, IDLE.min(ABSOLUTE - t), "at {t} s");
    }
    f.clock.advance(ABSOLUTE - t);
    assert_eq!(
        f.user(true).await,
        None,
        "activity never extends the absolute limit"
    );
    assert_eq!(f.api().await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn user_with_slide_false_does_not_extend_the_session() {
    let f = fixture().await;
    f.clock.advance(10 * 60);
    assert_eq!(f.user(false).await, Some(IDLE - 10 * 60));
    f.clock.advance(10 * 60);
    assert_eq!(
        f.user(false).await,
        Some(IDLE - 20 * 60),
        "slide=false extended the session"
    );
    // A normal call slides; slide=false then sees the slid expiry, unchanged.
    assert_eq!(f.user(true).await, Some(IDLE));
    f.clock.advance(5);
    assert_eq!(f.user(false).await, Some(IDLE - 5));
    // Polling with slide=false alone lets the session run out.
    f.clock.advance(IDLE - 5);
    assert_eq!(f.user(false).await, None);
}

#[tokio::test]
async fn slide_false_is_case_insensitive_and_other_values_slide() {
    let f = fixture().await;
    f.clock.advance(10 * 60);
    let user = |q: &'static str| {
        let (app, cookie) = (f.app.clone(), f.cookie.clone());
        async move {
            call(
                &app,
                "GET",
                &format!("/bff/user?slide={q}"),
                &[("x-csrf", "1"), ("cookie", &cookie)],
                "",
            )
            .await
            .expires_in()
        }
    };
    assert_eq!(user("FALSE").await, IDLE - 10 * 60);
    assert_eq!(user("true").await, IDLE);
}
