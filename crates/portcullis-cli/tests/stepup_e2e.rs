//! Per-route authorization and step-up authentication (RFC 9470), end to end: the real
//! oidc-provider (with `acr_values` it can deliver and a login form that picks the `acr`, see
//! testing/idp/README.md), the example API, a resource server that answers with its own
//! RFC 9470 challenge (testing/upstream/stepup-api.mjs) and the gateway binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use common::*;
use reqwest::header::{LOCATION, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::process::Command;

const PWD: &str = "urn:example:pwd";
const MFA: &str = "urn:example:mfa";

/// An `acr` as long as one may be (255 characters; `acr_values` may hold 256), which the IdP
/// also offers.
fn longest_acr() -> String {
    format!("urn:example:{}", "x".repeat(243))
}

/// IdP + example API + step-up API + gateway with the routes of this file.
struct StepStack {
    idp: Idp,
    api: Api,
    stepup_api: StepupApi,
    gw: Gateway,
}

/// testing/upstream/stepup-api.mjs.
struct StepupApi {
    _proc: Proc,
    url: String,
}

impl StepupApi {
    async fn start() -> StepupApi {
        let mut cmd = Command::new("node");
        cmd.current_dir(repo_root()).args([
            "testing/upstream/stepup-api.mjs",
            "--port",
            "0",
            "--quiet",
        ]);
        let proc = Proc::spawn("stepup-api", cmd).await;
        let port = proc.ready["port"].as_u64().expect("port in READY");
        StepupApi {
            _proc: proc,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn stats(&self) -> Value {
        reqwest::get(format!("{}/__stats", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Routes: `/admin-api` needs `role=admin` and `tenant=acme`; `/mfa-api` needs
/// `acr=urn:example:mfa`; `/recent-api` an authentication at most `max_auth_age` old;
/// `/rs` goes to the step-up API (no rule of the gateway's).
fn routes(api: &str, stepup_api: &str, max_auth_age: &str) -> String {
    format!(
        r#"
[[routes]]
path = "/admin-api"
upstream = "{api}"
token = "user"
require_claims = {{ role = ["admin"], tenant = ["acme"] }}

[[routes]]
path = "/mfa-api"
upstream = "{api}"
token = "user"
require_acr = ["{MFA}"]

[[routes]]
path = "/recent-api"
upstream = "{api}"
token = "user"
max_auth_age = "{max_auth_age}"

[[routes]]
path = "/rs"
upstream = "{stepup_api}"
token = "user"
"#
    )
}

impl StepStack {
    async fn start(max_auth_age: &str) -> StepStack {
        Self::start_with(max_auth_age, "").await
    }

    /// With `oidc_extra` lines added to `[oidc]` (e.g. `par = "required"`).
    async fn start_with(max_auth_age: &str, oidc_extra: &str) -> StepStack {
        on_free_port(|port| async move {
            let origin = format!("http://127.0.0.1:{port}");
            let idp = Idp::start_raw(&json!({
                "clients": [Idp::default_client(&[origin])],
                "acr_values": [PWD, MFA, longest_acr()],
                "profile_claims": ["role", "tenant"],
                "users": {
                    "carol": { "password": "carol", "claims": {
                        "name": "Carol Admin", "role": ["user", "admin"], "tenant": "acme" } },
                    "dave": { "password": "dave", "claims": {
                        "name": "Dave Elsewhere", "role": "admin", "tenant": "globex" } },
                },
            }))
            .await;
            let api = Api::start(&idp.issuer).await;
            let stepup_api = StepupApi::start().await;
            let config = default_config(
                port,
                &idp.issuer,
                &api.url,
                &routes(&api.url, &stepup_api.url, max_auth_age),
            )
            .replacen("\n[session]", &format!("{oidc_extra}\n\n[session]"), 1);
            let gw = Gateway::try_start(port, &config).await?;
            Ok(StepStack {
                idp,
                api,
                stepup_api,
                gw,
            })
        })
        .await
    }
}

/// A login started at `start_path` (e.g. a step-up challenge's `login_url`) as `user`, the
/// IdP's login form posted with `acr` when given (`None`: the form's default, a password-only
/// login). Returns the URL of the authorization request and the callback's response. When the
/// IdP does not ask for credentials (its session suffices), no form is posted.
async fn login_via(
    b: &Browser,
    gw: &Gateway,
    start_path: &str,
    user: &str,
    acr: Option<&str>,
) -> (String, Response) {
    let start = gw.url(start_path);
    let r = b.get(&start).await;
    assert_eq!(r.status(), StatusCode::FOUND, "{start_path} must redirect");
    let authorize = resolve(&start, r.headers()[LOCATION].to_str().unwrap());
    let mut url = authorize.clone();
    let callback = gw.url("/signin-oidc");
    for _ in 0..20 {
        if url.starts_with(&callback) {
            return (authorize, b.get(&url).await);
        }
        let r = b.get(&url).await;
        if r.status().is_redirection() {
            url = resolve(&url, r.headers()[LOCATION].to_str().unwrap());
            continue;
        }
        assert_eq!(r.status(), StatusCode::OK, "unexpected status at {url}");
        let html = r.text().await.unwrap();
        let action = resolve(
            &url,
            &form_action(&html).unwrap_or_else(|| panic!("no form at {url}: {html}")),
        );
        let r = if action.contains("/interaction/") {
            let mut form = vec![("login", user), ("password", user)];
            if let Some(acr) = acr {
                form.push(("acr", acr));
            }
            b.send(b.http.post(&action).form(&form)).await
        } else {
            // Another user signs in over the IdP session: oidc-provider first confirms the
            // end of the current one with its own form (hidden inputs only).
            b.send(b.http.post(&action).form(&form_inputs(&html))).await
        };
        assert!(r.status().is_redirection(), "login POST: {}", r.status());
        url = resolve(&action, r.headers()[LOCATION].to_str().unwrap());
    }
    panic!("the login did not reach the callback");
}

/// A full login that must succeed (302 from the callback).
async fn login_ok(b: &Browser, gw: &Gateway, start_path: &str, user: &str, acr: Option<&str>) {
    let (_, r) = login_via(b, gw, start_path, user, acr).await;
    assert_eq!(r.status(), StatusCode::FOUND, "callback: {:?}", r.headers());
}

/// The browser's current session cookie (`name=value`).
fn session_cookie(b: &Browser, gw: &Gateway) -> String {
    b.cookie_header(&gw.url("/"))
        .split("; ")
        .find(|c| c.starts_with("bff-auth="))
        .expect("a session cookie")
        .to_owned()
}

/// A request with exactly this cookie, outside the browser's jar.
async fn get_with_cookie(url: &str, cookie: &str) -> Response {
    reqwest::Client::new()
        .get(url)
        .header("x-csrf", "1")
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// Asserts the RFC 9470 shape and returns the JSON body.
async fn assert_step_up_challenge(r: Response, acr: Option<&str>, max_age: Option<u64>) -> Value {
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let header = r.headers()[WWW_AUTHENTICATE].to_str().unwrap().to_owned();
    assert!(
        header
            .starts_with("Bearer error=\"insufficient_user_authentication\", error_description=\""),
        "{header}"
    );
    assert_eq!(
        header.contains(&format!("acr_values=\"{}\"", acr.unwrap_or_default())),
        acr.is_some(),
        "{header}"
    );
    assert_eq!(header.contains("acr_values="), acr.is_some(), "{header}");
    match max_age {
        Some(n) => assert!(header.ends_with(&format!(", max_age={n}")), "{header}"),
        None => assert!(!header.contains("max_age"), "{header}"),
    }
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_user_authentication");
    assert_eq!(body["acr_values"].as_str(), acr);
    assert_eq!(body["max_age"].as_u64(), max_age);
    assert_eq!(
        body["login_url"].as_str().unwrap(),
        format!("/bff/login{}", login_query(acr, max_age)),
        "{body}"
    );
    body
}

/// `?acr_values=…&max_age=…` as the gateway encodes it (form encoding), `""` for neither.
fn login_query(acr: Option<&str>, max_age: Option<u64>) -> String {
    let mut q = Vec::new();
    if let Some(a) = acr {
        q.push(format!("acr_values={}", urlencode(a)));
    }
    if let Some(n) = max_age {
        q.push(format!("max_age={n}"));
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

#[tokio::test]
async fn route_claims_answer_403_without_them_and_forward_with_them() {
    let s = StepStack::start("1h").await;
    let url = s.gw.url("/admin-api/whoami");

    // Anonymous: 401, as for any route that needs a session.
    let anonymous = Browser::new();
    assert_eq!(
        anonymous.get_csrf(&url).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // alice has neither claim; dave has the role in another tenant: 403, empty, not forwarded.
    for user in ["alice", "dave"] {
        let b = Browser::new();
        b.login(&s.gw, user).await;
        let before = s.api.requests().await;
        let r = b.get_csrf(&url).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{user}");
        assert!(r.bytes().await.unwrap().is_empty(), "{user}: empty body");
        // +1: the API counts the /stats request itself.
        assert_eq!(
            s.api.requests().await,
            before + 1,
            "{user}: nothing forwarded"
        );
    }
    let logs = s.gw.logs().join("\n");
    assert!(
        logs.contains("lacks a claim value this route requires") && logs.contains("tenant"),
        "a log line names the route's missing claim:\n{logs}"
    );

    // carol holds role=["user","admin"] (multi-valued: one value suffices) and tenant=acme.
    let b = Browser::new();
    b.login(&s.gw, "carol").await;
    let r = b.get_csrf(&url).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["sub"], "carol");
    // The claims rule does not ask for step-up: routes without acr rules are unaffected.
    assert_eq!(
        b.get_csrf(&s.gw.url("/api/whoami")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn weak_login_gets_the_rfc9470_challenge_and_step_up_login_passes() {
    let s = StepStack::start("1h").await;
    let b = Browser::new();
    login_ok(&b, &s.gw, "/bff/login", "alice", None).await;
    let claims = b.user(&s.gw).await.unwrap();
    assert_eq!(claim(&claims, "acr"), Some(&json!(PWD)));
    let weak_cookie = session_cookie(&b, &s.gw);

    // The route needs MFA: challenge, nothing forwarded, no token fetched.
    let before = s.api.requests().await;
    let r = b.get_csrf(&s.gw.url("/mfa-api/whoami")).await;
    let body = assert_step_up_challenge(r, Some(MFA), None).await;
    assert_eq!(s.api.requests().await, before + 1, "nothing forwarded");
    // Ordinary routes keep working with the weak session.
    assert_eq!(
        b.get_csrf(&s.gw.url("/api/whoami")).await.status(),
        StatusCode::OK
    );

    // The SPA follows login_url (with its own returnUrl): the IdP asks for a login again
    // (its session's acr is too weak) and the user completes MFA.
    let login_url = format!(
        "{}&returnUrl=%2Forders",
        body["login_url"].as_str().unwrap()
    );
    let (authorize, r) = login_via(&b, &s.gw, &login_url, "alice", Some(MFA)).await;
    assert_eq!(query_param(&authorize, "acr_values").as_deref(), Some(MFA));
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], "/orders");

    // Same user, new acr, and the route passes.
    let claims = b.user(&s.gw).await.unwrap();
    assert_eq!(claim(&claims, "sub"), Some(&json!("alice")));
    assert_eq!(claim(&claims, "acr"), Some(&json!(MFA)));
    let r = b.get_csrf(&s.gw.url("/mfa-api/whoami")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["sub"], "alice");

    // The step-up created a new session id; the old one is dead (session fixation rule).
    let strong_cookie = session_cookie(&b, &s.gw);
    assert_ne!(strong_cookie, weak_cookie);
    let old = get_with_cookie(&s.gw.url("/api/whoami"), &weak_cookie).await;
    assert_eq!(
        old.status(),
        StatusCode::UNAUTHORIZED,
        "old session id ended"
    );

    let logs = s.gw.logs();
    assert_no_secret_leaks(&s.idp, &logs, &b.seen()).await;
}

#[tokio::test]
async fn step_up_login_that_does_not_deliver_the_acr_is_refused_and_keeps_the_old_session() {
    let s = StepStack::start("1h").await;
    let b = Browser::new();
    b.login(&s.gw, "alice").await;
    let cookie = session_cookie(&b, &s.gw);

    // The user signs in again but only with a password: the ID token's acr is not MFA.
    let login_url = format!("/bff/login?acr_values={}", urlencode(MFA));
    let (_, r) = login_via(&b, &s.gw, &login_url, "alice", Some(PWD)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let page = r.text().await.unwrap();
    assert!(page.contains("authentication level (acr)"), "{page}");
    let logs = s.gw.logs().join("\n");
    assert!(
        logs.contains("did not confirm the requested authentication level"),
        "a log line says why:\n{logs}"
    );

    // No new session: the earlier one still works, and the route still challenges.
    assert_eq!(session_cookie(&b, &s.gw), cookie);
    assert_eq!(
        b.get_csrf(&s.gw.url("/api/whoami")).await.status(),
        StatusCode::OK
    );
    let r = b.get_csrf(&s.gw.url("/mfa-api/whoami")).await;
    assert_step_up_challenge(r, Some(MFA), None).await;
}

#[tokio::test]
async fn login_refuses_unsupported_acr_values_and_malformed_max_age() {
    let s = StepStack::start("1h").await;
    let b = Browser::new();
    for (query, param) in [
        ("acr_values=urn%3Aexample%3Ahardware-key", "acr_values"),
        ("acr_values=urn%3Aexample%3Amfa+urn%3Aother", "acr_values"),
        ("acr_values=", "acr_values"),
        ("acr_values=a%22b", "acr_values"),
        ("max_age=-1", "max_age"),
        ("max_age=1.5", "max_age"),
        ("max_age=soon", "max_age"),
        ("max_age=1&max_age=2", "max_age"),
    ] {
        let r = b.get(&s.gw.url(&format!("/bff/login?{query}"))).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
        assert!(r.headers().get(LOCATION).is_none(), "{query}");
        let body: Value = r.json().await.unwrap();
        assert!(body["errors"][param].is_array(), "{query}: {body}");
    }
    // Supported values and max_age=0 go to the IdP, also through PAR-less redirects.
    let r = b
        .get(&s.gw.url(&format!(
            "/bff/login?acr_values={}+{}&max_age=0",
            urlencode(MFA),
            urlencode(PWD)
        )))
        .await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let to = r.headers()[LOCATION].to_str().unwrap();
    assert_eq!(
        query_param(to, "acr_values").as_deref(),
        Some(format!("{MFA} {PWD}").as_str())
    );
    assert_eq!(query_param(to, "max_age").as_deref(), Some("0"));
}

#[tokio::test]
async fn max_auth_age_expiry_challenges_again_and_a_fresh_login_passes() {
    let s = StepStack::start("2s").await;
    let b = Browser::new();
    b.login(&s.gw, "alice").await;
    let url = s.gw.url("/recent-api/whoami");
    assert_eq!(b.get_csrf(&url).await.status(), StatusCode::OK);

    // Bounded wait for the 2 s limit to pass (auth_time has whole seconds).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let before = s.api.requests().await;
    let body = assert_step_up_challenge(b.get_csrf(&url).await, None, Some(2)).await;
    assert_eq!(s.api.requests().await, before + 1, "nothing forwarded");

    // max_age=2 makes the IdP ask for the password again; the new auth_time passes.
    let (authorize, r) = login_via(
        &b,
        &s.gw,
        body["login_url"].as_str().unwrap(),
        "alice",
        None,
    )
    .await;
    assert_eq!(query_param(&authorize, "max_age").as_deref(), Some("2"));
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(b.get_csrf(&url).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn upstream_rfc9470_challenge_reaches_the_spa_in_the_gateways_shape() {
    let s = StepStack::start("1h").await;
    let b = Browser::new();
    b.login(&s.gw, "alice").await;

    let r = b
        .get_csrf(&s.gw.url(&format!(
            "/rs/orders/challenge?acr_values={}&max_age=300",
            urlencode(MFA)
        )))
        .await;
    let body = assert_step_up_challenge(r, Some(MFA), Some(300)).await;
    assert!(
        body.get("upstream_body").is_none(),
        "the upstream's body is dropped"
    );
    assert_eq!(
        body["error_description"],
        "The API requires a different or more recent authentication"
    );

    // The DPoP scheme too; a challenge without parameters asks for a fresh login (max_age=0).
    let r = b
        .get_csrf(&s.gw.url("/rs/challenge?scheme=DPoP&max_age=60"))
        .await;
    assert_step_up_challenge(r, None, Some(60)).await;
    let r = b.get_csrf(&s.gw.url("/rs/challenge")).await;
    assert_step_up_challenge(r, None, Some(0)).await;
    assert_eq!(s.stepup_api.stats().await["challenges"], 3);

    // Any other 401 passes through unchanged (the example API's own body and header).
    let r = b.get_csrf(&s.gw.url("/api-none/whoami")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "missing bearer token");
    // And success is untouched.
    let r = b.get_csrf(&s.gw.url("/rs/ok")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["authorization"], "Bearer");
}

#[tokio::test]
async fn step_up_as_another_user_inherits_nothing_from_the_first_session() {
    let s = StepStack::start("1h").await;
    let b = Browser::new();
    b.login(&s.gw, "carol").await;
    let carols = session_cookie(&b, &s.gw);
    assert_eq!(
        b.get_csrf(&s.gw.url("/admin-api/whoami")).await.status(),
        StatusCode::OK
    );

    // At the step-up prompt, alice signs in (with MFA) in carol's browser.
    let login_url = format!("/bff/login?acr_values={}", urlencode(MFA));
    login_ok(&b, &s.gw, &login_url, "alice", Some(MFA)).await;
    let claims = b.user(&s.gw).await.unwrap();
    assert_eq!(claim(&claims, "sub"), Some(&json!("alice")));
    assert_eq!(
        claim(&claims, "role"),
        None,
        "carol's claims are not inherited"
    );
    assert_eq!(
        b.get_csrf(&s.gw.url("/admin-api/whoami")).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        b.get_csrf(&s.gw.url("/mfa-api/whoami")).await.status(),
        StatusCode::OK
    );
    // Carol's session is over.
    let old = get_with_cookie(&s.gw.url("/admin-api/whoami"), &carols).await;
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn check_lists_every_bad_route_access_rule() {
    let dir = temp_dir("stepup-check");
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        r#"
[server]
public_url = "https://app.example"

[oidc]
issuer = "https://idp.example"
client_id = "bff"
client_secret = "a-client-secret-for-the-check"

[[routes]]
path = "/api"
upstream = "https://api.internal"
require_claims = { role = [], exp = ["1"] }
require_acr = []
max_auth_age = "250ms"
"#,
    )
    .unwrap();
    let (code, stderr) = run_check(&config);
    assert_eq!(code, Some(64), "{stderr}");
    for error in [
        "routes[0].require_claims.role must list at least one accepted value",
        "routes[0].require_claims.exp: exp describes the ID token",
        "routes[0].require_acr must list at least one acr value",
        "routes[0].max_auth_age \"250ms\" must be at least 1s",
    ] {
        assert!(stderr.contains(error), "missing {error:?} in:\n{stderr}");
    }
    assert!(stderr.contains("4 errors"), "{stderr}");
}

#[tokio::test]
async fn step_up_parameters_travel_in_the_pushed_request_with_par() {
    let s = StepStack::start_with("1h", "par = \"required\"").await;
    let b = Browser::new();
    b.login(&s.gw, "alice").await;
    let r = b.get_csrf(&s.gw.url("/mfa-api/whoami")).await;
    let body = assert_step_up_challenge(r, Some(MFA), None).await;

    let (authorize, r) = login_via(
        &b,
        &s.gw,
        body["login_url"].as_str().unwrap(),
        "alice",
        Some(MFA),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FOUND);
    // The front channel carries client_id and request_uri only; the IdP got acr_values pushed.
    let front: Vec<String> = url::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .map(|(k, _)| k.into_owned())
        .collect();
    assert_eq!(front, ["client_id", "request_uri"]);
    let stats = s.idp.stats().await;
    let pushed = stats["par_requests"].as_array().unwrap().last().unwrap();
    assert!(
        pushed["params"]
            .as_array()
            .unwrap()
            .contains(&json!("acr_values")),
        "{pushed}"
    );
    assert_eq!(
        b.get_csrf(&s.gw.url("/mfa-api/whoami")).await.status(),
        StatusCode::OK
    );
}

/// The pitfall of cookies over 4 KiB, which browsers drop silently: the longest step-up login
/// the gateway accepts (a 2 KiB returnUrl, 255 characters of acr_values, the largest max_age)
/// still fits its login-transaction cookie, and completes.
#[tokio::test]
async fn longest_step_up_login_still_fits_its_transaction_cookie() {
    let s = StepStack::start("1h").await;
    let b = Browser::new();
    let return_url = format!("/{}", "r".repeat(2047));
    let start = format!(
        "/bff/login?returnUrl={}&acr_values={}&max_age=315360000",
        urlencode(&return_url),
        urlencode(&longest_acr())
    );
    let r = b.get(&s.gw.url(&start)).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let login_cookie = set_cookies(&r)
        .into_iter()
        .find(|c| c.starts_with("bff-login."))
        .expect("a login-transaction cookie");
    let name_value = login_cookie.split(';').next().unwrap();
    assert!(
        name_value.len() <= 4096,
        "login cookie of {} bytes would be dropped by browsers",
        name_value.len()
    );
    // One character more of acr_values is refused up front, not lost in a dropped cookie.
    let too_long = format!("/bff/login?acr_values={}+x", urlencode(&longest_acr()));
    assert_eq!(
        b.get(&s.gw.url(&too_long)).await.status(),
        StatusCode::BAD_REQUEST
    );
    let acr = longest_acr();
    let (_, r) = login_via(&b, &s.gw, &start, "alice", Some(&acr)).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION].to_str().unwrap(), return_url);
}

/// Regression: `oidc.extra_authorize_params` naming a parameter a login sets itself (here a
/// baseline `acr_values`, as deployments that always ask for a minimum level configure) were
/// sent a second time beside the step-up's own, and the IdP refuses a repeated parameter
/// (RFC 6749 §3.1), so every step-up login failed. The login's own value now wins; an
/// ordinary login still sends the configured one.
#[tokio::test]
async fn step_up_login_beside_a_configured_acr_values_sends_it_once_and_passes() {
    let s = StepStack::start_with(
        "1h",
        &format!("extra_authorize_params = {{ acr_values = \"{PWD}\" }}"),
    )
    .await;
    let b = Browser::new();
    let (authorize, r) = login_via(&b, &s.gw, "/bff/login", "alice", None).await;
    assert_eq!(r.status(), StatusCode::FOUND, "ordinary login");
    assert_eq!(query_param(&authorize, "acr_values").as_deref(), Some(PWD));

    let r = b.get_csrf(&s.gw.url("/mfa-api/whoami")).await;
    let body = assert_step_up_challenge(r, Some(MFA), None).await;
    let (authorize, r) = login_via(
        &b,
        &s.gw,
        body["login_url"].as_str().unwrap(),
        "alice",
        Some(MFA),
    )
    .await;
    let acr_values: Vec<String> = url::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .filter(|(k, _)| k == "acr_values")
        .map(|(_, v)| v.into_owned())
        .collect();
    let status = r.status();
    let page = r.text().await.unwrap();
    assert_eq!(status, StatusCode::FOUND, "step-up login: {page}");
    assert_eq!(acr_values, [MFA], "{authorize}");
    assert_eq!(
        b.get_csrf(&s.gw.url("/mfa-api/whoami")).await.status(),
        StatusCode::OK
    );
}

/// A route whose `require_acr` names a value the IdP does not advertise can never be
/// stepped up to (the login refuses unsupported `acr_values`): the gateway says so at start,
/// once per such route, naming the route and the values; a route the IdP can satisfy gets
/// no warning.
#[tokio::test]
async fn route_requiring_an_acr_the_idp_does_not_advertise_is_warned_about_at_start() {
    let extra = r#"
[[routes]]
path = "/hw-api"
upstream = "http://127.0.0.1:9"
token = "user"
require_acr = ["urn:example:hardware-key", "urn:example:mfa"]
"#;
    let s = on_free_port(|port| async move {
        let origin = format!("http://127.0.0.1:{port}");
        let idp = Idp::start_raw(&json!({
            "clients": [Idp::default_client(&[origin])],
            "acr_values": [PWD, MFA],
        }))
        .await;
        let api = Api::start(&idp.issuer).await;
        let routes = format!("{}{extra}", routes(&api.url, "http://127.0.0.1:9", "1h"));
        let config = default_config(port, &idp.issuer, &api.url, &routes);
        let gw = Gateway::try_start(port, &config).await?;
        Ok((idp, api, gw))
    })
    .await;
    let gw = &s.2;
    // Checked in the background right after start: wait for it (bounded).
    let warned = || -> Vec<String> {
        gw.logs()
            .into_iter()
            .filter(|l| l.contains("does not advertise"))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while warned().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let warnings = warned();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("/hw-api"), "{}", warnings[0]);
    assert!(
        warnings[0].contains("urn:example:hardware-key"),
        "{}",
        warnings[0]
    );
    assert!(!warnings[0].contains("/mfa-api"), "{}", warnings[0]);
}
