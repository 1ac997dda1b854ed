//! What real identity providers send, against the real binary and the npm `oidc-provider`
//! (issues "Meet the real world" §1, §3, §9, §10 and the security review §3, §8, §13):
//! key sets with keys the JOSE library cannot model, discovery documents with odd members,
//! key rotation, random `kid`s, extra audiences, logout tokens typed `JWT` or without `exp`,
//! `exp` near `i64::MAX`, `crit` headers, mistyped `sid`/`sub` and the back-channel media type.
//! (The store failure between deletion and `jti` record is pinned in-process:
//! `portcullis::bff::backchannel::store_failure_tests::backchannel_store_failure_does_not_burn_jti`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// IdP, then the `/__test/*` controls (before the gateway's first discovery or JWKS fetch),
/// then API and gateway; `oidc_lines` are added to the `[oidc]` table.
async fn stack_after(oidc_lines: &str, controls: &[(&str, Value)]) -> Stack {
    let port = free_port();
    let idp = Idp::start(&[format!("http://127.0.0.1:{port}")], IdpOptions::default()).await;
    for (path, body) in controls {
        idp.control(path, body.clone()).await;
    }
    let api = Api::start(&idp.issuer).await;
    let config = with_oidc(default_config(port, &idp.issuer, &api.url, ""), oidc_lines);
    let gw = Gateway::start(port, &config).await;
    Stack { idp, api, gw }
}

fn with_oidc(config: String, lines: &str) -> String {
    config.replacen("[oidc]\n", &format!("[oidc]\n{lines}\n"), 1)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jti() -> String {
    format!("jti-{}-{}", now(), free_port())
}

/// A logged-in browser and its IdP session id.
async fn logged_in(gw: &Gateway, user: &str) -> (Browser, String) {
    let b = Browser::new();
    b.login(gw, user).await;
    let claims = b.user(gw).await.expect("logged in");
    let sid = claim(&claims, "sid")
        .and_then(Value::as_str)
        .expect("sid claim")
        .to_owned();
    (b, sid)
}

fn logout_claims(idp: &Idp, sub: &str, sid: &str) -> Value {
    let now = now();
    json!({"iss": idp.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 120, "jti": jti(),
           "sub": sub, "sid": sid, "events": {EVENT: {}}})
}

async fn post_logout(gw: &Gateway, token: &str) -> StatusCode {
    post_logout_as(gw, token, "application/x-www-form-urlencoded").await
}

async fn post_logout_as(gw: &Gateway, token: &str, content_type: &str) -> StatusCode {
    reqwest::Client::new()
        .post(gw.url("/bff/backchannel"))
        .header("content-type", content_type)
        .body(format!("logout_token={}", urlencode(token)))
        .send()
        .await
        .unwrap()
        .status()
}

fn gateway_lines(gw: &Gateway, needle: &str) -> Vec<String> {
    gw.proc
        .as_ref()
        .unwrap()
        .output
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// Keys real IdPs publish that the `jsonwebtoken` crate has no variant for, or that are not
/// for signatures, plus keys with odd members.
fn odd_keys() -> Value {
    json!([
        {"kty": "EC", "crv": "P-521", "alg": "ES512", "use": "sig", "kid": "odd-p521",
         "x": "AekpBQ8ST8a8VcfVOTNl353vSrDCLLJXmPk06wTjxrrjcBpXp5EOnYG_NjFZ6OvLFV1jSfS9tsz4qUxcWceqwQGk",
         "y": "ADSmRA43Z1DSNx_RvcLI87cdL07l6jQyyBXMoxVg_l2Th-x3S1WDhjDly79ajL4Kkd0AZMaZmh9ubmf63e3kyMj2"},
        {"kty": "OKP", "crv": "X25519", "use": "enc", "kid": "odd-x25519",
         "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"},
        {"kty": "AKP", "alg": "ML-DSA-65", "kid": "odd-pq", "pub": "AAAA"},
        {"kty": "RSA", "kid": "odd-members", "n": 17, "e": ["AQAB"], "x5c": "not-a-list"},
        {"kid": "odd-no-kty"}
    ])
}

#[tokio::test]
async fn jwks_with_unmodelable_keys_still_verifies() {
    let stack = stack_after("", &[("jwks-extra", json!({ "keys": odd_keys() }))]).await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    // Login verifies the RS256 ID token among the odd keys.
    let (b, sid) = logged_in(gw, "alice").await;
    // A logout token with an unknown kid makes the gateway fetch the JWKS again ...
    let mut claims = logout_claims(idp, "alice", &sid);
    let forged = idp
        .sign(claims.clone(), json!({"kid": "rotated-away"}))
        .await;
    assert_eq!(post_logout(gw, &forged).await, StatusCode::BAD_REQUEST);
    // ... and a valid one ends the session.
    claims["jti"] = json!(jti());
    let token = idp.sign(claims, json!({"typ": "logout+jwt"})).await;
    assert_eq!(post_logout(gw, &token).await, StatusCode::OK);
    assert!(b.user(gw).await.is_none(), "back-channel logout ended it");
    // Each skipped key is logged once, with its kid, however often the JWKS was fetched.
    assert!(idp.stats().await["jwks_requests"].as_u64().unwrap() >= 2);
    for kid in [
        "odd-p521",
        "odd-x25519",
        "odd-pq",
        "odd-members",
        "odd-no-kty",
    ] {
        let lines = gateway_lines(gw, &format!("kid {kid}"));
        assert_eq!(lines.len(), 1, "{kid}: {lines:?}");
        assert!(lines[0].contains("WARN"), "{}", lines[0]);
    }
}

#[tokio::test]
async fn discovery_document_with_odd_members_still_logs_in() {
    let stack = stack_after(
        "",
        &[(
            "discovery-extra",
            json!({"members": {
                    "userinfo_endpoint": {"href": "http://127.0.0.1:1/userinfo"},
                    "backchannel_logout_supported": "yes",
                    "claims_parameter_supported": "false",
                    "request_object_signing_alg_values_supported": "RS256",
                    "prompt_values_supported": ["none", 7, "login"],
                    "code_challenge_methods_supported": ["plain"],
                    "x-vendor-extension": {"nested": [1, {"a": null}]}
            }}),
        )],
    )
    .await;
    let (b, _) = logged_in(&stack.gw, "alice").await;
    assert!(b.user(&stack.gw).await.is_some());
    // PKCE S256 not advertised: logins go on, an error line says so.
    let lines = gateway_lines(&stack.gw, "PKCE S256");
    assert!(
        lines.iter().any(|l| l.contains("ERROR")),
        "no error line about S256: {lines:?}"
    );
}

#[tokio::test]
async fn key_rotation_within_throttle_window_does_not_fail_login() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    let (alice, _) = logged_in(gw, "alice").await;
    let rotated = idp.control("rotate-keys", json!({})).await;
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    assert_ne!(rotated["previous_kid"], rotated["kid"]);
    // Right away (well inside any throttle window): the ID token names the new kid.
    let (bob, bob_sid) = logged_in(gw, "bob").await;
    let claims = bob.user(gw).await.unwrap();
    assert_eq!(claim(&claims, "sub").unwrap(), "bob");
    // And once more, at once: another rotation, another login.
    let again = idp.control("rotate-keys", json!({})).await;
    assert_ne!(again["kid"].as_str().unwrap(), new_kid);
    let (carol_like, _) = logged_in(gw, "alice").await;
    assert!(carol_like.user(gw).await.is_some());
    // Logout tokens signed with the newest key work too; the old session is untouched.
    let token = idp
        .sign(
            logout_claims(idp, "bob", &bob_sid),
            json!({"typ": "logout+jwt"}),
        )
        .await;
    assert_eq!(post_logout(gw, &token).await, StatusCode::OK);
    assert!(bob.user(gw).await.is_none());
    assert!(alice.user(gw).await.is_some());
}

#[tokio::test]
async fn random_kids_do_not_hammer_jwks() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    let (b, sid) = logged_in(gw, "alice").await;
    let before = idp.stats().await["jwks_requests"].as_u64().unwrap();
    let started = std::time::Instant::now();
    // 30 concurrent logout tokens, each with a kid nobody has seen.
    let mut tokens = Vec::new();
    for i in 0..30 {
        let claims = logout_claims(idp, "alice", &sid);
        tokens.push(
            idp.sign(claims, json!({"kid": format!("random-{i}")}))
                .await,
        );
    }
    let mut tasks = tokio::task::JoinSet::new();
    for t in tokens.clone() {
        let url = gw.url("/bff/backchannel");
        tasks.spawn(async move {
            reqwest::Client::new()
                .post(url)
                .form(&[("logout_token", t)])
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::BAD_REQUEST);
    }
    // The same unknown kid again and again.
    for _ in 0..10 {
        assert_eq!(post_logout(gw, &tokens[0]).await, StatusCode::BAD_REQUEST);
    }
    let fetched = idp.stats().await["jwks_requests"].as_u64().unwrap() - before;
    let elapsed = started.elapsed().as_secs();
    // single-flight + at most one fetch per second for unknown kids, none for a known-unknown
    assert!(
        fetched <= elapsed + 2,
        "{fetched} JWKS fetches for 40 tokens with random kids in {elapsed} s"
    );
    assert!(b.user(gw).await.is_some(), "nothing was ended");
}

#[tokio::test]
async fn extra_untrusted_audience_is_refused() {
    let mut stack = Stack::start().await;
    let extra = json!({"claims": {"aud": [CLIENT_ID, "someone-else"], "azp": CLIENT_ID}});
    stack
        .idp
        .control("mutate-next-id-token", extra.clone())
        .await;
    let b = Browser::new();
    let callback = b.login_until_callback(&stack.gw, "alice", "/").await;
    let r = b.get(&callback).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(b.user(&stack.gw).await.is_none());
    // The same token shape is fine once the operator trusts that audience.
    let config = std::fs::read_to_string(&stack.gw.config_path).unwrap();
    std::fs::write(
        &stack.gw.config_path,
        with_oidc(config, r#"trusted_audiences = ["someone-else"]"#),
    )
    .unwrap();
    stack.gw.restart().await;
    stack.idp.control("mutate-next-id-token", extra).await;
    let b = Browser::new();
    b.login(&stack.gw, "alice").await;
    assert!(b.user(&stack.gw).await.is_some());
    // A foreign azp is refused whatever is trusted.
    stack
        .idp
        .control(
            "mutate-next-id-token",
            json!({"claims": {"aud": [CLIENT_ID, "someone-else"], "azp": "someone-else"}}),
        )
        .await;
    let b = Browser::new();
    let callback = b.login_until_callback(&stack.gw, "alice", "/").await;
    assert_eq!(b.get(&callback).await.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn logout_token_typ_jwt_is_accepted() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    for header in [
        json!({"typ": "JWT"}),
        json!({}),
        json!({"typ": "logout+jwt"}),
        json!({"typ": "application/logout+jwt"}),
        json!({"typ": "Application/Logout+JWT"}),
    ] {
        let (b, sid) = logged_in(gw, "alice").await;
        let token = idp
            .sign(logout_claims(idp, "alice", &sid), header.clone())
            .await;
        assert_eq!(post_logout(gw, &token).await, StatusCode::OK, "{header}");
        assert!(b.user(gw).await.is_none(), "{header}");
    }
    let (b, sid) = logged_in(gw, "alice").await;
    for typ in ["at+jwt", "JWT+other", "secevent+jwt"] {
        let token = idp
            .sign(logout_claims(idp, "alice", &sid), json!({ "typ": typ }))
            .await;
        assert_eq!(
            post_logout(gw, &token).await,
            StatusCode::BAD_REQUEST,
            "{typ}"
        );
    }
    assert!(b.user(gw).await.is_some());
}

#[tokio::test]
async fn logout_token_without_exp_needs_fresh_iat_and_jti() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    let (b, sid) = logged_in(gw, "alice").await;
    let without = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = logout_claims(idp, "alice", &sid);
        let o = c.as_object_mut().unwrap();
        o.remove("exp");
        edit(o);
        c
    };
    let header = json!({"typ": "logout+jwt"});
    // no exp and no jti
    let t = idp
        .sign(
            without(&|o| {
                o.remove("jti");
            }),
            header.clone(),
        )
        .await;
    assert_eq!(post_logout(gw, &t).await, StatusCode::BAD_REQUEST);
    // no exp and an old iat
    let t = idp
        .sign(
            without(&|o| {
                o.insert("iat".into(), json!(now() - 3600));
            }),
            header.clone(),
        )
        .await;
    assert_eq!(post_logout(gw, &t).await, StatusCode::BAD_REQUEST);
    assert!(b.user(gw).await.is_some(), "nothing ended yet");
    // no exp, fresh iat, a jti: accepted, and its replay refused
    let t = idp.sign(without(&|_| {}), header).await;
    assert_eq!(post_logout(gw, &t).await, StatusCode::OK);
    assert!(b.user(gw).await.is_none());
    assert_eq!(post_logout(gw, &t).await, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn logout_token_exp_near_i64_max_keeps_replay_protection() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    for exp in [json!(i64::MAX), json!(1e300)] {
        let (b, sid) = logged_in(gw, "alice").await;
        let mut claims = logout_claims(idp, "alice", &sid);
        claims["exp"] = exp.clone();
        let token = idp.sign(claims, json!({"typ": "logout+jwt"})).await;
        assert_eq!(post_logout(gw, &token).await, StatusCode::OK, "{exp}");
        assert!(b.user(gw).await.is_none());
        assert_eq!(
            post_logout(gw, &token).await,
            StatusCode::BAD_REQUEST,
            "{exp}: replay refused"
        );
    }
    assert_eq!(
        reqwest::get(gw.url("/healthz")).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn crit_header_is_refused() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    // ID token
    idp.control(
        "mutate-next-id-token",
        json!({"claims": {}, "header": {"crit": ["urn:example:must-understand"],
                                         "urn:example:must-understand": true}}),
    )
    .await;
    let b = Browser::new();
    let callback = b.login_until_callback(gw, "alice", "/").await;
    assert_eq!(b.get(&callback).await.status(), StatusCode::BAD_REQUEST);
    assert!(b.user(gw).await.is_none());
    // logout token
    let (b, sid) = logged_in(gw, "alice").await;
    let token = idp
        .sign(
            logout_claims(idp, "alice", &sid),
            json!({"typ": "logout+jwt", "crit": ["urn:example:must-understand"],
                   "urn:example:must-understand": true}),
        )
        .await;
    assert_eq!(post_logout(gw, &token).await, StatusCode::BAD_REQUEST);
    assert!(b.user(gw).await.is_some());
}

#[tokio::test]
async fn logout_token_non_string_sid_is_400() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    let (b, sid) = logged_in(gw, "alice").await;
    let header = json!({"typ": "logout+jwt"});
    for (name, sub, sid_value) in [
        ("numeric sid", json!("alice"), json!(12345)),
        ("array sid", json!("alice"), json!([sid.clone()])),
        ("object sub", json!({"id": "alice"}), json!(sid.clone())),
        ("numeric sub, no sid", json!(7), Value::Null),
    ] {
        let mut claims = logout_claims(idp, "alice", &sid);
        claims["sub"] = sub;
        if sid_value.is_null() {
            claims.as_object_mut().unwrap().remove("sid");
        } else {
            claims["sid"] = sid_value;
        }
        let token = idp.sign(claims, header.clone()).await;
        assert_eq!(
            post_logout(gw, &token).await,
            StatusCode::BAD_REQUEST,
            "{name}"
        );
        assert!(b.user(gw).await.is_some(), "{name}: nothing ended");
    }
}

#[tokio::test]
async fn backchannel_content_type_is_parsed() {
    let stack = Stack::start().await;
    let (gw, idp) = (&stack.gw, &stack.idp);
    let (b, sid) = logged_in(gw, "alice").await;
    let header = json!({"typ": "logout+jwt"});
    for bad in [
        "application/x-www-form-urlencodedX",
        "application/x-www-form-urlencoded-foo; charset=UTF-8",
        "text/plain; x=application/x-www-form-urlencoded",
    ] {
        let token = idp
            .sign(logout_claims(idp, "alice", &sid), header.clone())
            .await;
        assert_eq!(
            post_logout_as(gw, &token, bad).await,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
        assert!(b.user(gw).await.is_some(), "{bad}: nothing ended");
    }
    let token = idp.sign(logout_claims(idp, "alice", &sid), header).await;
    assert_eq!(
        post_logout_as(
            gw,
            &token,
            "Application/X-WWW-Form-URLEncoded; charset=UTF-8"
        )
        .await,
        StatusCode::OK
    );
    assert!(b.user(gw).await.is_none());
}
