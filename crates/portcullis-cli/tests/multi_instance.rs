//! Several gateways as one: two `portcullis` processes sharing Redis, and again PostgreSQL.
//! Log in through A, call through B; back-channel logout sent to A ends the session on B;
//! concurrent calls on an expired session spread over A and B refresh once at the IdP (with
//! refresh-token rotation); `kill -9` of one instance loses no session. Plus a Redis outage
//! in the middle of a session, and back-channel logout token validation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn shared_config(
    port: u16,
    issuer: &str,
    api: &str,
    store: &str,
    partition: &str,
    key: &str,
    extra: &str,
) -> String {
    default_config(port, issuer, api, "[tokens]\nrefresh_before_expiry = \"1s\"\n").replace(
        "[session]\n",
        &format!("[session]\nstore = \"{store}\"\npartition = \"{partition}\"\nkeys = [\"{key}\"]\n{extra}"),
    )
}

fn generate_key() -> String {
    let out = std::process::Command::new(gateway_binary())
        .args(["keys", "generate", "--id", "shared"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Pair {
    idp: Idp,
    _api: Api,
    a: Gateway,
    b: Gateway,
}

async fn start_pair(store: &str) -> Pair {
    let (pa, pb) = (free_port(), free_port());
    let origins = [
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    ];
    let idp = Idp::start(
        &origins,
        IdpOptions {
            access_token_ttl: 6,
            rotate_refresh_token: true,
            ..Default::default()
        },
    )
    .await;
    let api = Api::start(&idp.issuer).await;
    let partition = format!("p{}", free_port());
    let key = generate_key();
    let a = Gateway::start(
        pa,
        &shared_config(pa, &idp.issuer, &api.url, store, &partition, &key, ""),
    )
    .await;
    let b = Gateway::start(
        pb,
        &shared_config(pb, &idp.issuer, &api.url, store, &partition, &key, ""),
    )
    .await;
    Pair {
        idp,
        _api: api,
        a,
        b,
    }
}

async fn two_instances_behave_as_one(store: &str) {
    let mut p = start_pair(store).await;
    let browser = Browser::new();
    browser.login(&p.a, "alice").await;
    // The cookie jar ignores ports (as browsers do), so the same cookie reaches B.
    let claims = browser
        .user(&p.b)
        .await
        .expect("B sees the session created on A");
    assert_eq!(claim(&claims, "sub"), Some(&json!("alice")));
    let r = browser.get_csrf(&p.b.url("/api/whoami")).await;
    assert_eq!(r.status(), StatusCode::OK);

    // 200 concurrent calls on an expired session, spread over A and B: one refresh.
    // Access tokens live 6 s and are refreshed 1 s before expiry: after 5.2 s the token is
    // due, and the refreshed one stays fresh for the whole burst.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let before = p.idp.token_requests("refresh_token").await;
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let b = browser.clone();
            let url = if i % 2 == 0 {
                p.a.url("/api/whoami")
            } else {
                p.b.url("/api/whoami")
            };
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
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap().unwrap_or(StatusCode::IM_A_TEAPOT));
    }
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(
        p.idp.token_requests("refresh_token").await - before,
        1,
        "exactly one refresh across instances"
    );

    // kill -9 of A loses nothing: B carries on.
    p.a.stop().await;
    assert_eq!(
        browser.get_csrf(&p.b.url("/api/whoami")).await.status(),
        StatusCode::OK
    );
    p.a.restart().await;
    assert!(browser.user(&p.a).await.is_some());

    // Back-channel logout delivered to A ends the session on B at once. B's cache holds the
    // session (API calls fill it); the first call on B after the logout is an API call, so
    // only the cross-instance invalidation can make it fail (an uncached `/bff/user` first
    // would evict the entry by itself).
    for _ in 0..2 {
        assert_eq!(
            browser.get_csrf(&p.b.url("/api/whoami")).await.status(),
            StatusCode::OK,
            "B has the session cached"
        );
    }
    let sent = p
        .idp
        .control("backchannel-logout", json!({"sub": "alice"}))
        .await;
    assert!(
        sent["sent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["status"] == 200),
        "{sent}"
    );
    assert_eq!(
        browser.get_csrf(&p.b.url("/api/whoami")).await.status(),
        StatusCode::UNAUTHORIZED,
        "B's cache dropped the session ended on A: the next API call is refused"
    );
    assert!(
        browser.user(&p.b).await.is_none(),
        "B saw the logout within one request"
    );
    assert_eq!(
        p.idp.active_refresh_tokens("alice").await,
        0,
        "refresh token revoked"
    );
}

#[tokio::test]
async fn two_instances_sharing_redis() {
    let url = std::env::var("PORTCULLIS_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    two_instances_behave_as_one(&url).await;
}

#[tokio::test]
async fn two_instances_sharing_postgres() {
    let url = std::env::var("PORTCULLIS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".into());
    two_instances_behave_as_one(&url).await;
}

/// A private Redis that keeps its data across a restart (AOF), on its own port.
struct PrivateRedis {
    child: Option<std::process::Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    fn start(port: u16, dir: std::path::PathBuf) -> PrivateRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/ensure-services.sh)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateRedis {
            child: Some(child),
            port,
            dir,
        }
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn redis_outage_answers_503_keeps_the_cookie_and_recovers() {
    let mut redis = PrivateRedis::start(free_port(), temp_dir("redis"));
    let store = format!("redis://127.0.0.1:{}", redis.port);
    let port = free_port();
    let idp = Idp::start(&[format!("http://127.0.0.1:{port}")], IdpOptions::default()).await;
    let api = Api::start(&idp.issuer).await;
    let key = generate_key();
    let config = shared_config(
        port,
        &idp.issuer,
        &api.url,
        &store,
        "outage",
        &key,
        "cache_ttl = \"1s\"\n",
    );
    let gw = Gateway::start(port, &config).await;
    let b = Browser::new();
    b.login(&gw, "alice").await;
    assert_eq!(
        b.get_csrf(&gw.url("/api/whoami")).await.status(),
        StatusCode::OK
    );

    redis.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await; // past the cache's staleness bound
    for path in ["/api/whoami", "/bff/user"] {
        let r = b.get_csrf(&gw.url(path)).await;
        assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: a store outage is not a logout"
        );
        assert!(set_cookies(&r).is_empty(), "{path}: the cookie is kept");
    }
    assert_eq!(
        b.get(&gw.url("/readyz")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    let dir = redis.dir.clone();
    let _redis = PrivateRedis::start(redis.port, dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = b.get_csrf(&gw.url("/api/whoami")).await;
        if r.status() == StatusCode::OK {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["sub"], "alice", "the same cookie works again");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(b.get(&gw.url("/readyz")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn backchannel_logout_rejects_invalid_tokens_and_deletes_nothing() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    let b = Browser::new();
    b.login(gw, "alice").await;
    let claims = b.user(gw).await.unwrap();
    let sid = claim(&claims, "sid").unwrap().as_str().unwrap().to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let event = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
    let valid = || {
        json!({"iss": idp.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 120, "jti": format!("j{}", free_port()),
               "sid": sid, "sub": "alice", "events": event})
    };
    let post = |token: String| {
        let url = gw.url("/bff/backchannel");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .form(&[("logout_token", token)])
                .send()
                .await
                .unwrap();
            let cache = r
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status(), cache, r.text().await.unwrap())
        }
    };
    let header = json!({"typ": "logout+jwt"});
    let mut cases: Vec<(&str, String)> = Vec::new();
    let mut signed = idp.sign(valid(), header.clone()).await.into_bytes();
    let n = signed.len() - 5;
    signed[n] = if signed[n] == b'A' { b'B' } else { b'A' };
    cases.push(("bad signature", String::from_utf8(signed).unwrap()));
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut c = valid();
        f(&mut c);
        c
    };
    for (name, claims) in [
        (
            "wrong iss",
            edit(&|c| c["iss"] = json!("http://evil.example")),
        ),
        ("wrong aud", edit(&|c| c["aud"] = json!("other-client"))),
        ("nonce present", edit(&|c| c["nonce"] = json!("n"))),
        (
            "missing events",
            edit(&|c| {
                c.as_object_mut().unwrap().remove("events");
            }),
        ),
        (
            "neither sub nor sid",
            edit(&|c| {
                let o = c.as_object_mut().unwrap();
                o.remove("sub");
                o.remove("sid");
            }),
        ),
        (
            "expired",
            edit(&|c| {
                c["exp"] = json!(now - 600);
                c["iat"] = json!(now - 900);
            }),
        ),
    ] {
        cases.push((name, idp.sign(claims, header.clone()).await));
    }
    cases.push((
        "wrong typ",
        idp.sign(valid(), json!({"typ": "JWT+other"})).await,
    ));
    let none = idp
        .control("sign", json!({"claims": valid(), "alg": "none"}))
        .await;
    cases.push(("alg none", none["jwt"].as_str().unwrap().to_owned()));
    let hs = idp
        .control("sign", json!({"claims": valid(), "alg": "HS256"}))
        .await;
    cases.push((
        "HS256 with the public key",
        hs["jwt"].as_str().unwrap().to_owned(),
    ));
    cases.push(("garbage", "not-a-jwt".into()));
    for (name, token) in cases {
        let (status, cache, body) = post(token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(cache.as_deref(), Some("no-cache, no-store"), "{name}");
        assert!(body.is_empty(), "{name}");
        assert!(b.user(gw).await.is_some(), "{name}: nothing deleted");
    }
    // Duplicated parameter.
    let r = reqwest::Client::new()
        .post(gw.url("/bff/backchannel"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("logout_token=a&logout_token=b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A valid token ends the session; replaying it is refused.
    let token = idp.sign(valid(), header.clone()).await;
    let (status, cache, _) = post(token.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cache.as_deref(), Some("no-cache, no-store"));
    assert!(
        b.user(gw).await.is_none(),
        "session ended by back-channel logout"
    );
    let (status, _, _) = post(token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "replayed jti");

    // A token with only `sub` ends every session of the user.
    let (b1, b2) = (Browser::new(), Browser::new());
    b1.login(gw, "alice").await;
    b2.login(gw, "alice").await;
    let only_sub = edit(&|c| {
        c.as_object_mut().unwrap().remove("sid");
        c["jti"] = json!("only-sub");
    });
    let (status, _, _) = post(idp.sign(only_sub, header.clone()).await).await;
    assert_eq!(status, StatusCode::OK);
    assert!(b1.user(gw).await.is_none() && b2.user(gw).await.is_none());
    // Logging out at the gateway after a back-channel logout still works.
    let r = b1.get(&gw.url("/bff/logout")).await;
    assert_eq!(r.status(), StatusCode::FOUND);
}
