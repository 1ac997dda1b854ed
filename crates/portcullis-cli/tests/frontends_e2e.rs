//! Several frontends behind one gateway, against the real `oidc-provider` holding two clients
//! and two JWT-checking APIs (one per audience):
//!
//! - `default`: the top-level configuration, client `spa-bff`, `/api` → API for
//!   `urn:portcullis:api`;
//! - `admin`: path frontend `/admin`, client `admin-bff` with other scopes and resource,
//!   `/admin/api` → API for `urn:portcullis:admin-api`;
//! - `local`: host frontend `localhost`, client `spa-bff`, its own cookie and partition.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::header::LOCATION;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const ADMIN_ID: &str = "admin-bff";
const ADMIN_SECRET: &str = "admin-secret-for-tests-only-0123456789";
const ADMIN_AUDIENCE: &str = "urn:portcullis:admin-api";

struct Multi {
    idp: Idp,
    _api: Api,
    _admin_api: Api,
    gw: Gateway,
    api_url: String,
    admin_api_url: String,
}

fn admin_client(port: u16) -> Value {
    admin_client_at(&format!("http://127.0.0.1:{port}/admin"))
}

fn admin_client_at(base: &str) -> Value {
    json!({
        "client_id": ADMIN_ID,
        "client_secret": ADMIN_SECRET,
        "redirect_uris": [format!("{base}/signin-oidc")],
        "post_logout_redirect_uris": [format!("{base}/signout-callback-oidc")],
        "backchannel_logout_uri": format!("{base}/bff/backchannel"),
        "backchannel_logout_session_required": true,
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["authorization_code", "refresh_token"],
        "scope": "openid profile offline_access api.read",
    })
}

fn frontends_config(
    port: u16,
    issuer: &str,
    api: &str,
    admin_api: &str,
    with_local: bool,
) -> String {
    let mut c = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
data_dir = "data"

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email", "offline_access", "api"]

[[routes]]
path = "/api"
upstream = "{api}"
token = "user"

[[frontends]]
name = "admin"
match_path = "/admin"
[frontends.oidc]
client_id = "{ADMIN_ID}"
client_secret = "{ADMIN_SECRET}"
scopes = ["openid", "profile", "offline_access", "api.read"]
resource = "{ADMIN_AUDIENCE}"
[[frontends.routes]]
path = "/api"
upstream = "{admin_api}"
token = "user"
"#
    );
    if with_local {
        c.push_str(&format!(
            r#"
[[frontends]]
name = "local"
match_host = "localhost"
[[frontends.routes]]
path = "/api"
upstream = "{api}"
token = "user"
"#
        ));
    }
    c
}

async fn start() -> Multi {
    let port = free_port();
    let origins = [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ];
    let idp = Idp::start_clients(
        vec![Idp::default_client(&origins), admin_client(port)],
        IdpOptions::default(),
    )
    .await;
    let api = Api::start(&idp.issuer).await;
    let admin_api = Api::start_for(&idp.issuer, ADMIN_AUDIENCE).await;
    let gw = Gateway::start(
        port,
        &frontends_config(port, &idp.issuer, &api.url, &admin_api.url, true),
    )
    .await;
    Multi {
        api_url: api.url.clone(),
        admin_api_url: admin_api.url.clone(),
        idp,
        _api: api,
        _admin_api: admin_api,
        gw,
    }
}

/// A browser whose `localhost` resolves to the gateway's loopback address only.
fn browser_for(port: u16) -> Browser {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let http = Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    Browser::with_client(http, jar)
}

/// Logs `user` in on the frontend at `base` (origin + path prefix); ends on the callback's
/// redirect home.
async fn login_at(b: &Browser, base: &str, user: &str) {
    let start = format!("{base}/bff/login");
    let r = b.get(&start).await;
    assert_eq!(r.status(), StatusCode::FOUND, "{start}");
    let mut url = resolve(&start, r.headers()[LOCATION].to_str().unwrap());
    let callback = format!("{base}/signin-oidc");
    for _ in 0..20 {
        if url.starts_with(&callback) {
            let r = b.get(&url).await;
            assert_eq!(r.status(), StatusCode::FOUND, "callback {url}");
            let home = r.headers()[LOCATION].to_str().unwrap().to_owned();
            let prefix = url::Url::parse(base)
                .unwrap()
                .path()
                .trim_end_matches('/')
                .to_owned();
            assert_eq!(
                home,
                format!("{prefix}/"),
                "login returns to the frontend's home"
            );
            return;
        }
        let r = b.get(&url).await;
        if r.status().is_redirection() {
            url = resolve(&url, r.headers()[LOCATION].to_str().unwrap());
            continue;
        }
        let html = r.text().await.unwrap();
        let action = html
            .split("action=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no form at {url}: {html}"))
            .replace("&amp;", "&");
        let action = resolve(&url, &action);
        let r = b
            .send(
                b.http
                    .post(&action)
                    .form(&[("login", user), ("password", user)]),
            )
            .await;
        assert!(r.status().is_redirection(), "login POST {}", r.status());
        url = resolve(&action, r.headers()[LOCATION].to_str().unwrap());
    }
    panic!("login at {base} did not reach {callback}");
}

async fn user_claims(b: &Browser, url: &str) -> Option<Vec<(String, Value)>> {
    let r = b.get_csrf(url).await;
    if r.status() == StatusCode::UNAUTHORIZED {
        return None;
    }
    assert_eq!(r.status(), StatusCode::OK, "{url}");
    let v: Value = r.json().await.unwrap();
    Some(
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| (c["type"].as_str().unwrap().to_owned(), c["value"].clone()))
            .collect(),
    )
}

async fn whoami(b: &Browser, url: &str) -> (StatusCode, Value) {
    let r = b.get_csrf(url).await;
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `name=value` of the cookie called `name` that the browser holds for `url`.
fn cookie_value(b: &Browser, url: &str, name: &str) -> String {
    b.cookie_header(url)
        .split("; ")
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no cookie {name} for {url}: {}", b.cookie_header(url)))
        .to_owned()
}

async fn status_with_cookie(url: &str, host: Option<&str>, cookie: &str) -> StatusCode {
    let mut req = Client::new()
        .get(url)
        .header("x-csrf", "1")
        .header("cookie", cookie);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    req.send().await.unwrap().status()
}

#[tokio::test]
async fn frontends_keep_users_tokens_cookies_and_logouts_apart() {
    let m = start().await;
    let port = m.gw.port;
    let root = m.gw.url("");
    let admin = m.gw.url("/admin");
    let local = format!("http://localhost:{port}");

    // alice on the default frontend, bob on the admin path frontend, alice on the host one.
    let a = browser_for(port);
    let b = browser_for(port);
    let c = browser_for(port);
    login_at(&a, &root, "alice").await;
    login_at(&b, &admin, "bob").await;
    login_at(&c, &local, "alice").await;

    let alice = user_claims(&a, &m.gw.url("/bff/user")).await.unwrap();
    assert_eq!(claim(&alice, "sub").unwrap(), "alice");
    let bob = user_claims(&b, &m.gw.url("/admin/bff/user")).await.unwrap();
    assert_eq!(claim(&bob, "sub").unwrap(), "bob");
    let logout_url = claim(&bob, "bff:logout_url").unwrap().as_str().unwrap();
    assert!(
        logout_url.starts_with("/admin/bff/logout?sid="),
        "{logout_url}"
    );
    assert_eq!(
        claim(
            &user_claims(&c, &format!("{local}/bff/user")).await.unwrap(),
            "sub"
        )
        .unwrap(),
        "alice"
    );
    // Not logged in on the frontends they did not use.
    assert!(user_claims(&a, &m.gw.url("/admin/bff/user"))
        .await
        .is_none());
    assert!(user_claims(&b, &m.gw.url("/bff/user")).await.is_none());
    assert!(user_claims(&c, &m.gw.url("/bff/user")).await.is_none());

    // Each API gets the right user's token, for its own audience and client.
    let (s, w) = whoami(&a, &m.gw.url("/api/whoami")).await;
    assert_eq!(s, StatusCode::OK, "{w}");
    assert_eq!(
        (w["sub"].as_str(), w["client_id"].as_str()),
        (Some("alice"), Some(CLIENT_ID))
    );
    assert_eq!(w["aud"], "urn:portcullis:api");
    let (s, w) = whoami(&b, &m.gw.url("/admin/api/whoami")).await;
    assert_eq!(s, StatusCode::OK, "{w}");
    assert_eq!(
        (w["sub"].as_str(), w["client_id"].as_str()),
        (Some("bob"), Some(ADMIN_ID))
    );
    assert_eq!(w["aud"], ADMIN_AUDIENCE);
    let scope = w["scope"].as_str().unwrap_or_default();
    assert!(
        scope.contains("api.read") && !scope.split(' ').any(|s| s == "api"),
        "{scope}"
    );
    let (s, w) = whoami(&c, &format!("{local}/api/whoami")).await;
    assert_eq!((s, w["sub"].as_str()), (StatusCode::OK, Some("alice")));
    // Without an admin session the admin route refuses the call (no token of another frontend).
    assert_eq!(
        whoami(&a, &m.gw.url("/admin/api/whoami")).await.0,
        StatusCode::UNAUTHORIZED
    );

    // A cookie of one frontend is refused on another, under either cookie name.
    let admin_cookie = cookie_value(&b, &root, "bff-auth-admin");
    let default_cookie = cookie_value(&a, &root, "bff-auth");
    for (url, host, cookie) in [
        (
            m.gw.url("/bff/user"),
            None,
            format!("bff-auth={admin_cookie}"),
        ),
        (
            m.gw.url("/api/whoami"),
            None,
            format!("bff-auth={admin_cookie}"),
        ),
        (
            m.gw.url("/admin/bff/user"),
            None,
            format!("bff-auth-admin={default_cookie}"),
        ),
        (
            m.gw.url("/admin/bff/user"),
            None,
            format!("bff-auth={default_cookie}"),
        ),
        (
            m.gw.url("/bff/user"),
            Some(format!("localhost:{port}")),
            format!("bff-auth-local={default_cookie}; bff-auth={default_cookie}"),
        ),
    ] {
        assert_eq!(
            status_with_cookie(&url, host.as_deref(), &cookie).await,
            StatusCode::UNAUTHORIZED,
            "{url} {host:?} {cookie}"
        );
    }
    // ... and accepted on its own (the same request shape works).
    assert_eq!(
        status_with_cookie(
            &m.gw.url("/admin/bff/user"),
            None,
            &format!("bff-auth-admin={admin_cookie}")
        )
        .await,
        StatusCode::OK
    );

    // Unknown hosts are refused before anything runs, API routes included.
    for path in ["/bff/user", "/api/whoami", "/admin/bff/login", "/"] {
        assert_eq!(
            status_with_cookie(
                &m.gw.url(path),
                Some("evil.example"),
                &format!("bff-auth={default_cookie}")
            )
            .await,
            StatusCode::MISDIRECTED_REQUEST,
            "{path}"
        );
    }

    // Back-channel logout for the admin client ends bob's admin session only.
    let sent = m
        .idp
        .control(
            "backchannel-logout",
            json!({"sub": "bob", "client_id": ADMIN_ID}),
        )
        .await;
    assert_eq!(sent["sent"][0]["client_id"], ADMIN_ID, "{sent}");
    assert_eq!(sent["sent"][0]["status"], 200, "{sent}");
    assert!(user_claims(&b, &m.gw.url("/admin/bff/user"))
        .await
        .is_none());
    assert!(user_claims(&a, &m.gw.url("/bff/user")).await.is_some());
    assert!(user_claims(&c, &format!("{local}/bff/user"))
        .await
        .is_some());
    // A logout token for the admin client is refused by the default frontend (wrong audience).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = m
        .idp
        .sign(
            json!({"iss": m.idp.issuer, "aud": ADMIN_ID, "iat": now, "exp": now + 120,
                   "jti": "fe-1", "sub": "alice",
                   "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
            json!({"typ": "logout+jwt"}),
        )
        .await;
    let r = Client::new()
        .post(m.gw.url("/bff/backchannel"))
        .form(&[("logout_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(user_claims(&a, &m.gw.url("/bff/user")).await.is_some());
    let _ = (&m.api_url, &m.admin_api_url);
}

async fn wait_for_log(gw: &Gateway, needle: &str, seen_before: usize) {
    for _ in 0..100 {
        if gw
            .logs()
            .iter()
            .skip(seen_before)
            .any(|l| l.contains(needle))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway never logged {needle:?}:\n{}", gw.logs().join("\n"));
}

fn hangup(gw: &Gateway) {
    let pid = gw.proc.as_ref().unwrap().child.id().unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test]
async fn reload_adds_and_removes_frontends_while_a_third_stays_logged_in() {
    let m = start().await;
    let port = m.gw.port;
    let a = browser_for(port);
    login_at(&a, &m.gw.url(""), "alice").await;
    let c = browser_for(port);
    let local = format!("http://localhost:{port}");
    login_at(&c, &local, "alice").await;
    assert_eq!(
        a.get_csrf(&m.gw.url("/beta/bff/user")).await.status(),
        StatusCode::NOT_FOUND,
        "no beta frontend yet"
    );

    // New file: `local` removed, `beta` added; the default frontend unchanged.
    let mut next = frontends_config(port, &m.idp.issuer, &m.api_url, &m.admin_api_url, false);
    next.push_str(
        r#"
[[frontends]]
name = "beta"
match_path = "/beta"
"#,
    );
    std::fs::write(&m.gw.config_path, &next).unwrap();
    let before = m.gw.logs().len();
    hangup(&m.gw);
    wait_for_log(&m.gw, "configuration reloaded", before).await;

    assert_eq!(
        a.get_csrf(&m.gw.url("/beta/bff/user")).await.status(),
        StatusCode::UNAUTHORIZED,
        "beta exists now (anonymous there)"
    );
    assert_eq!(
        c.get_csrf(&format!("{local}/bff/user")).await.status(),
        StatusCode::MISDIRECTED_REQUEST,
        "local is gone, and with it its host"
    );
    // The default frontend's session survived the reload.
    assert_eq!(
        claim(
            &user_claims(&a, &m.gw.url("/bff/user")).await.unwrap(),
            "sub"
        )
        .unwrap(),
        "alice"
    );
    let (s, w) = whoami(&a, &m.gw.url("/api/whoami")).await;
    assert_eq!((s, w["sub"].as_str()), (StatusCode::OK, Some("alice")));

    // An invalid file is refused, every error logged, and the running configuration stays.
    let broken = format!(
        "{next}\n[[frontends]]\nname = \"beta\"\nmatch_path = \"/beta\"\n[[frontends]]\nname = \"bad name\"\nmatch_host = \"x\"\n"
    );
    std::fs::write(&m.gw.config_path, broken).unwrap();
    let before = m.gw.logs().len();
    hangup(&m.gw);
    wait_for_log(
        &m.gw,
        "reload refused; the running configuration stays",
        before,
    )
    .await;
    let logs = m.gw.logs()[before..].join("\n");
    assert!(logs.contains("name is used twice"), "{logs}");
    assert!(logs.contains("name must be"), "{logs}");
    assert_eq!(
        a.get_csrf(&m.gw.url("/beta/bff/user")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (s, _) = whoami(&a, &m.gw.url("/api/whoami")).await;
    assert_eq!(s, StatusCode::OK);
}

/// One real headless Chromium, two SPAs on two path frontends (`/a`: client `spa-bff`,
/// `/b`: client `admin-bff`): log into both, each shows its own user and API result; log out
/// of one, the other stays logged in.
#[tokio::test]
async fn browser_two_spas_on_path_frontends_stay_apart() {
    let port = free_port();
    let a = format!("http://127.0.0.1:{port}/a");
    let mut spa_client = Idp::default_client(std::slice::from_ref(&a));
    spa_client["backchannel_logout_uri"] = json!(format!("{a}/bff/backchannel"));
    let idp = Idp::start_clients(
        vec![
            spa_client,
            admin_client_at(&format!("http://127.0.0.1:{port}/b")),
        ],
        IdpOptions::default(),
    )
    .await;
    let api = Api::start(&idp.issuer).await;
    let admin_api = Api::start_for(&idp.issuer, ADMIN_AUDIENCE).await;
    let spa = repo_root().join("examples/spa");
    let issuer = &idp.issuer;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
data_dir = "data"

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email", "offline_access", "api"]

[[frontends]]
name = "a"
match_path = "/a"
static_dir = "{spa}"
[[frontends.routes]]
path = "/api"
upstream = "{api}"

[[frontends]]
name = "b"
match_path = "/b"
static_dir = "{spa}"
[frontends.oidc]
client_id = "{ADMIN_ID}"
client_secret = "{ADMIN_SECRET}"
scopes = ["openid", "profile", "offline_access", "api.read"]
resource = "{ADMIN_AUDIENCE}"
[[frontends.routes]]
path = "/api"
upstream = "{admin_api}"
"#,
        spa = spa.display(),
        api = api.url,
        admin_api = admin_api.url,
    );
    let gw = Gateway::start(port, &config).await;
    let shot = gw.dir.join("failure.png");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .current_dir(repo_root())
            .arg("testing/browser/two-frontends.mjs")
            .arg("--gateway")
            .arg(&gw.origin)
            .arg("--screenshot")
            .arg(&shot)
            .output(),
    )
    .await
    .expect("browser run finished in time")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "browser run failed (screenshot: {}):\n{}",
        shot.display(),
        gw.logs().join("\n")
    );
    assert!(
        stdout.contains("ok - /a stays logged in, /b is anonymous"),
        "{stdout}"
    );
}
