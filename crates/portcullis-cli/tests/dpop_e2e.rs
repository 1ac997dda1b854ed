//! DPoP (RFC 9449), pushed authorization requests (RFC 9126) and the FAPI 2.0 preset, end to
//! end: the real oidc-provider (DPoP with required nonces, a PAR-required client, a FAPI 2.0
//! client with `private_key_jwt`) and a resource server that verifies DPoP itself
//! (testing/upstream/dpop-api.mjs: proof signature, `htm`, `htu`, `ath`, `jti` replay,
//! `cnf.jkt`, and a nonce it demands on the first call).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use common::*;
use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

const DPOP_CLIENT: &str = "dpop-bff";
const PAR_CLIENT: &str = "par-bff";
const FAPI_CLIENT: &str = "fapi-bff";

fn key_path(name: &str) -> String {
    repo_root()
        .join("crates/portcullis-token/tests/keys")
        .join(name)
        .display()
        .to_string()
}

/// The three test clients of this file (added to the IdP next to nothing else).
fn idp_config(origin: &str, access_token_ttl: u64) -> Value {
    let mut public: Value =
        serde_json::from_str(&std::fs::read_to_string(key_path("ec-p256.jwk.json")).unwrap())
            .unwrap();
    public.as_object_mut().unwrap().remove("d");
    let front = |id: &str| {
        json!({
            "client_id": id,
            "redirect_uris": [format!("{origin}/signin-oidc")],
            "post_logout_redirect_uris": [format!("{origin}/signout-callback-oidc")],
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "scope": "openid profile email offline_access api api.read",
        })
    };
    let mut dpop = front(DPOP_CLIENT);
    dpop["client_secret"] = json!(CLIENT_SECRET);
    dpop["dpop_bound_access_tokens"] = json!(true);
    let mut par = front(PAR_CLIENT);
    par["client_secret"] = json!(CLIENT_SECRET);
    par["require_pushed_authorization_requests"] = json!(true);
    let mut fapi = front(FAPI_CLIENT);
    fapi["token_endpoint_auth_method"] = json!("private_key_jwt");
    fapi["token_endpoint_auth_signing_alg"] = json!("ES256");
    fapi["jwks"] = json!({ "keys": [public] });
    fapi["dpop_bound_access_tokens"] = json!(true);
    fapi["require_pushed_authorization_requests"] = json!(true);
    fapi["id_token_signed_response_alg"] = json!("ES256");
    json!({
        "clients": [dpop, par, fapi],
        "access_token_ttl": access_token_ttl,
        "id_token_ttl": 300,
        "dpop": { "require_nonce": true },
        "fapi2_clients": [FAPI_CLIENT],
    })
}

struct DpopStack {
    idp: Idp,
    api: DpopApi,
    gw: Gateway,
}

/// IdP + DPoP API + gateway; `oidc` is the `[oidc]` body after `issuer`.
async fn stack(access_token_ttl: u64, oidc: &str) -> DpopStack {
    stack_with(access_token_ttl, oidc, &[]).await
}

/// [`stack`] with extra options for the DPoP API (`testing/upstream/dpop-api.mjs`).
async fn stack_with(access_token_ttl: u64, oidc: &str, api_options: &[&str]) -> DpopStack {
    on_free_port(|port| async move {
        let origin = format!("http://127.0.0.1:{port}");
        let idp = Idp::start_raw(&idp_config(&origin, access_token_ttl)).await;
        let api = DpopApi::start_with(&idp.issuer, api_options).await;
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "{origin}"
data_dir = "data"

[oidc]
issuer = "{issuer}"
scopes = ["openid", "profile", "email", "offline_access", "api", "api.read"]
{oidc}

[session]
idle_timeout = "1h"
absolute_timeout = "1d"

[[routes]]
path = "/orders"
upstream = "{api}/v1/base"
token = "user"

[[routes]]
path = "/machine"
upstream = "{api}/v1/machine"
token = "client"
scope = "api.read"

[[routes]]
path = "/machine-quick"
upstream = "{api}/v1/machine"
token = "client"
scope = "api.read"
timeout = "1s"
"#,
            issuer = idp.issuer,
            api = api.url,
        );
        let gw = Gateway::try_start(port, &config).await?;
        Ok(DpopStack { idp, api, gw })
    })
    .await
}

fn dpop_oidc() -> String {
    format!(
        r#"client_id = "{DPOP_CLIENT}"
client_secret = "{CLIENT_SECRET}"

[oidc.dpop]
enabled = true"#
    )
}

/// The gateway's DPoP key file (generated at first start in its data directory).
fn gateway_key(gw: &Gateway) -> (String, String) {
    let text = std::fs::read_to_string(gw.dir.join("data/dpop.jwk")).expect("dpop.jwk");
    let key = portcullis_token::DpopKey::from_jwk(&text).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    (
        key.thumbprint().to_owned(),
        d["d"].as_str().unwrap().to_owned(),
    )
}

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Proofs and key material never reach the browser or a log line.
fn assert_no_key_leaks(private_d: &str, logs: &[String], seen: &[SeenResponse]) {
    assert!(
        !logs.iter().any(|l| l.contains(private_d)),
        "the DPoP private key reached the gateway's logs"
    );
    for r in seen {
        assert!(
            !String::from_utf8_lossy(&r.body).contains(private_d),
            "the DPoP private key reached the browser in {}",
            r.url
        );
        for (name, v) in &r.headers {
            assert!(
                !v.contains(private_d),
                "DPoP private key in {name} of {}",
                r.url
            );
            assert_ne!(
                name, "dpop",
                "a DPoP proof reached the browser from {}",
                r.url
            );
        }
    }
}

/// The gateway key never goes into the session store (not even sealed: it lives only in its
/// key file), so store files hold neither its private `d` nor any JWK in clear.
fn assert_key_not_in_store(private_d: &str, gw: &Gateway) {
    let mut store = Vec::new();
    for entry in std::fs::read_dir(gw.dir.join("data")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("sessions.db"))
        {
            store.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(!store.is_empty(), "no session store found: nothing checked");
    let store = String::from_utf8_lossy(&store);
    assert!(
        !store.contains(private_d),
        "the DPoP private key is in the store"
    );
    assert!(!store.contains("\"kty\""), "a JWK in clear in the store");
}

#[tokio::test]
async fn dpop_bound_tokens_from_login_refresh_and_client_credentials_prove_the_key_on_every_call() {
    let s = stack(4, &dpop_oidc()).await;
    let (jkt, private_d) = gateway_key(&s.gw);
    let browser = Browser::new();
    browser.login(&s.gw, "alice").await;

    // The authorization request bound the code to our key (RFC 9449 §10).
    let to_idp = browser
        .seen()
        .into_iter()
        .find(|r| r.url.contains("/bff/login"))
        .and_then(|r| r.headers.into_iter().find(|(n, _)| n == "location"))
        .map(|(_, v)| v)
        .unwrap();
    assert_eq!(
        query_param(&to_idp, "dpop_jkt").as_deref(),
        Some(jkt.as_str())
    );

    // First call: the resource server demands a nonce; the gateway answers with one retry.
    let body = json_of(browser.get_csrf(&s.gw.url("/orders/items?page=2")).await).await;
    assert_eq!(body["jkt"], jkt.as_str(), "cnf.jkt is our key");
    assert_eq!(body["sub"], "alice");
    assert_eq!(body["query"], "?page=2");
    assert_eq!(s.api.stats().await["nonce_challenges"], 1);

    // POST with a body, then a GET: the nonce is remembered, no more challenges.
    let r = browser
        .send(
            browser
                .http
                .post(s.gw.url("/orders/items"))
                .headers(csrf())
                .header("content-type", "application/json")
                .body(r#"{"item":42}"#),
        )
        .await;
    let body = json_of(r).await;
    assert_eq!(body["method"], "POST");
    assert_eq!(body["body"], r#"{"item":42}"#);
    json_of(browser.get_csrf(&s.gw.url("/orders/again")).await).await;
    let stats = s.api.stats().await;
    assert_eq!(stats["nonce_challenges"], 1, "{stats}");
    assert_eq!(stats["failures"], json!([]), "{stats}");

    // A browser's own DPoP and Authorization headers never reach the upstream: the call
    // still carries the gateway's token and proof.
    let r = browser
        .send(
            browser
                .http
                .get(s.gw.url("/orders/spoof"))
                .headers(csrf())
                .header("dpop", "eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.AAAA")
                .header("authorization", "DPoP forged"),
        )
        .await;
    assert_eq!(json_of(r).await["jkt"], jkt.as_str());

    // Client credentials: bound to the same key.
    let body = json_of(browser.get_csrf(&s.gw.url("/machine/status")).await).await;
    assert_eq!(body["jkt"], jkt.as_str());
    assert_eq!(body["client_id"], DPOP_CLIENT);

    // Refresh (access tokens live 4 s; refreshed within the capped buffer of 2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let body = json_of(browser.get_csrf(&s.gw.url("/orders/after-refresh")).await).await;
    assert_eq!(body["jkt"], jkt.as_str());
    assert!(s.idp.token_requests("refresh_token").await >= 1);

    // The IdP saw a proof of our key on every token request, asked for a nonce, and got it.
    let idp = s.idp.stats().await;
    let proofs = idp["dpop_token_requests"].as_array().unwrap();
    for grant in ["authorization_code", "refresh_token", "client_credentials"] {
        assert!(
            proofs
                .iter()
                .any(|p| p["grant"] == grant && p["status"] == 200 && p["token_type"] == "DPoP"),
            "no DPoP-bound {grant} token: {idp}"
        );
    }
    assert!(proofs.iter().all(|p| p["jkt"] == jkt.as_str()), "{idp}");
    assert!(
        proofs
            .iter()
            .all(|p| p["status"] != 200 || p["nonce"] == true),
        "every accepted proof carried the IdP's nonce: {idp}"
    );
    assert!(
        idp["token_errors"]["use_dpop_nonce"].as_u64().unwrap_or(0) >= 1,
        "the IdP asked for a nonce at least once: {idp}"
    );

    let logs = s.gw.logs();
    assert_no_secret_leaks(&s.idp, &logs, &browser.seen()).await;
    assert_no_key_leaks(&private_d, &logs, &browser.seen());
    assert_key_not_in_store(&private_d, &s.gw);
}

/// The peer's published bug: a proof whose `htu` named the gateway-side path, or the
/// upstream's origin without its path prefix, is refused by every resource server that
/// checks `htu`. The `htu` must be the final upstream URL: `/machine/deep/path?q=1` on a
/// route to `{api}/v1/machine` is `{api}/v1/machine/deep/path`.
/// The fault: a DPoP route buffers the request body (so that a nonce challenge can be
/// answered with the same body) and waited for it without any bound, so a browser that
/// trickled its body held the connection and the buffer for ever. The buffering now ends at
/// the route's `timeout` with a 408.
#[tokio::test]
async fn dpop_route_body_that_trickles_gets_408_at_the_route_timeout() {
    let s = stack(300, &dpop_oidc()).await;
    // Warm up: the client token is fetched once (the IdP call is not part of the timing).
    let browser = Browser::new();
    let warm = browser.get_csrf(&s.gw.url("/machine-quick/warm")).await;
    assert_eq!(warm.status(), 200);
    let (answer, waited) = trickled_body(s.gw.port, "/machine-quick/upload").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(900)
            && waited < std::time::Duration::from_secs(5),
        "answered after {waited:?}, the route timeout is 1 s"
    );
    // A whole body on the same route still goes through, with its proof.
    let r = browser
        .send(
            browser
                .http
                .post(s.gw.url("/machine-quick/upload"))
                .header("x-csrf", "1")
                .body("a whole body"),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["body"], "a whole body");
    let stats = s.api.stats().await;
    assert_eq!(stats["failures"], json!([]), "{stats}");
}

/// The fault: a small upstream body without Content-Length is read before its head goes to
/// the browser, and one that breaks off then is a 502. A DPoP nonce challenge whose body
/// broke off became that 502, and the request was never sent again with the nonce. A nonce
/// challenge is answered by the retry, whatever its body.
#[tokio::test]
async fn dpop_nonce_challenge_whose_body_breaks_off_is_still_retried_with_the_nonce() {
    let s = stack_with(300, &dpop_oidc(), &["--broken-challenge"]).await;
    let browser = Browser::new();
    let r = browser
        .get_csrf(&s.gw.url("/machine/broken-challenge"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["ok"], true);
    let stats = s.api.stats().await;
    assert!(
        stats["nonce_challenges"].as_u64().unwrap() >= 1,
        "the API never challenged: {stats}"
    );
    assert_eq!(stats["failures"], json!([]), "{stats}");
}

#[tokio::test]
async fn dpop_htu_includes_the_upstream_path_prefix() {
    let s = stack(300, &dpop_oidc()).await;
    let browser = Browser::new();
    let body = json_of(
        browser
            .get_csrf(&s.gw.url("/machine/deep/path?q=1#frag"))
            .await,
    )
    .await;
    assert_eq!(
        body["htu"],
        format!("{}/v1/machine/deep/path", s.api.url),
        "{body}"
    );
    assert_eq!(body["path"], "/v1/machine/deep/path");
    let stats = s.api.stats().await;
    assert_eq!(stats["failures"], json!([]), "{stats}");
}

#[tokio::test]
async fn par_redirect_carries_only_client_id_and_request_uri_and_a_par_required_client_logs_in() {
    let oidc = format!(
        r#"client_id = "{PAR_CLIENT}"
client_secret = "{CLIENT_SECRET}"
par = "auto""#
    );
    let s = stack(300, &oidc).await;
    let browser = Browser::new();
    let r = browser.get(&s.gw.url("/bff/login?returnUrl=/home")).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let location = r.headers()[LOCATION].to_str().unwrap().to_owned();
    let url = url::Url::parse(&location).unwrap();
    let mut keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    keys.sort();
    assert_eq!(keys, ["client_id", "request_uri"], "{location}");
    assert_eq!(
        query_param(&location, "client_id").as_deref(),
        Some(PAR_CLIENT)
    );

    let pushed = s.idp.stats().await["par_requests"].clone();
    let last = pushed.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["client_id"], PAR_CLIENT, "{pushed}");
    assert_eq!(last["status"], 201, "{pushed}");
    for p in [
        "code_challenge",
        "code_challenge_method",
        "nonce",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
    ] {
        assert!(
            last["params"].as_array().unwrap().iter().any(|x| x == p),
            "{p} not pushed: {last}"
        );
    }

    let r = browser.login(&s.gw, "bob").await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let user = browser.user(&s.gw).await.expect("logged in");
    assert_eq!(claim(&user, "sub"), Some(&json!("bob")));
}

#[tokio::test]
async fn par_off_against_a_par_required_client_fails_with_a_clear_page_and_log_line() {
    let oidc = format!(
        r#"client_id = "{PAR_CLIENT}"
client_secret = "{CLIENT_SECRET}"
par = "off""#
    );
    let s = stack(300, &oidc).await;
    let browser = Browser::new();
    let r = browser.get(&s.gw.url("/bff/login")).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let location = r.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(query_param(&location, "request_uri").is_none());
    // Navigate like a browser (it asks for HTML) until the redirects end.
    let mut url = location;
    let r = loop {
        let r = browser
            .send(browser.http.get(&url).header("accept", "text/html"))
            .await;
        if !r.status().is_redirection() {
            break r;
        }
        url = resolve(&url, r.headers()[LOCATION].to_str().unwrap());
    };
    assert!(url.starts_with(&s.gw.url("/signin-oidc")), "ended at {url}");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let page = r.text().await.unwrap();
    assert!(page.contains("invalid_request"), "{page}");
    assert!(
        s.gw.logs()
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("invalid_request")),
        "no error log line"
    );
}

#[tokio::test]
async fn fapi2_login_end_to_end_with_private_key_jwt_par_and_dpop() {
    let oidc = format!(
        r#"client_id = "{FAPI_CLIENT}"
profile = "fapi2"
client_auth = "private_key_jwt"
private_key_file = "{key}"
private_key_alg = "ES256""#,
        key = key_path("ec-p256.pem")
    );
    let s = stack(300, &oidc).await;
    let (jkt, private_d) = gateway_key(&s.gw);
    let browser = Browser::new();
    let r = browser.get(&s.gw.url("/bff/login")).await;
    let location = r.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(
        query_param(&location, "request_uri").is_some(),
        "FAPI 2.0 uses PAR: {location}"
    );
    let r = browser.login(&s.gw, "alice").await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let body = json_of(browser.get_csrf(&s.gw.url("/orders/x")).await).await;
    assert_eq!(body["jkt"], jkt.as_str());
    let pushed = s.idp.stats().await["par_requests"].clone();
    assert!(
        pushed
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["client_id"] == FAPI_CLIENT && p["dpop_jkt"] == jkt.as_str()),
        "{pushed}"
    );
    let logs = s.gw.logs();
    assert_no_secret_leaks(&s.idp, &logs, &browser.seen()).await;
    assert_no_key_leaks(&private_d, &logs, &browser.seen());
    assert_key_not_in_store(&private_d, &s.gw);
}

#[tokio::test]
async fn fapi2_check_lists_every_conflict() {
    let dir = temp_dir("fapi-check");
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
profile = "fapi2"
par = "off"

[oidc.dpop]
enabled = false
"#,
    )
    .unwrap();
    let (code, stderr) = run_check(&config);
    assert_eq!(code, Some(64), "{stderr}");
    for conflict in [
        "requires pushed authorization requests",
        "forbids client secrets",
        "requires sender-constrained access tokens",
    ] {
        assert!(
            stderr.contains(conflict),
            "missing {conflict:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("3 errors"), "{stderr}");
}
