//! DPoP key choices end to end (RFC 9449): a key per session (`[oidc.dpop] per_session`) and a
//! key per named client-credentials client (`[[tokens.clients]] dpop`), against the real
//! oidc-provider (DPoP with required nonces) and a resource server that verifies DPoP itself
//! (testing/upstream/dpop-api.mjs: proof signature, `htm`, `htu`, `ath`, `jti` replay,
//! `cnf.jkt`, and its own nonce).
//!
//! The test re-creates each session's key the way the gateway does (from the session key ring
//! in the data directory and the login's `state`), so it knows the private key and can look
//! for it in logs, browser responses and the session store.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const DPOP_CLIENT: &str = "dpop-bff";
const MACHINE_CLIENT: &str = "dpop-machine";

fn idp_config(origin: &str, access_token_ttl: u64) -> Value {
    let client = |id: &str| {
        json!({
            "client_id": id,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [format!("{origin}/signin-oidc")],
            "post_logout_redirect_uris": [format!("{origin}/signout-callback-oidc")],
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "scope": "openid profile email offline_access api api.read",
            "dpop_bound_access_tokens": true,
        })
    };
    json!({
        "clients": [client(DPOP_CLIENT), client(MACHINE_CLIENT)],
        "access_token_ttl": access_token_ttl,
        "id_token_ttl": 300,
        "dpop": { "require_nonce": true },
    })
}

struct KeysStack {
    idp: Idp,
    api: DpopApi,
    gw: Gateway,
}

/// The gateway configuration; `dpop` is the body of `[oidc.dpop]`.
fn config(port: u16, issuer: &str, api: &str, dpop: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
data_dir = "data"

[oidc]
issuer = "{issuer}"
client_id = "{DPOP_CLIENT}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email", "offline_access", "api", "api.read"]

[oidc.dpop]
{dpop}

[session]
idle_timeout = "1h"
absolute_timeout = "1d"

[[tokens.clients]]
name = "machine"
client_id = "{MACHINE_CLIENT}"
client_secret = "{CLIENT_SECRET}"
dpop = {{ enabled = true }}

[[routes]]
path = "/orders"
upstream = "{api}/v1/base"
token = "user"

[[routes]]
path = "/machine"
upstream = "{api}/v1/machine"
token = "client"
client = "machine"
scope = "api.read"

[[routes]]
path = "/gateway-client"
upstream = "{api}/v1/gateway"
token = "client"
scope = "api.read"
"#
    )
}

async fn stack(access_token_ttl: u64, dpop: &str) -> KeysStack {
    on_free_port(|port| async move {
        let origin = format!("http://127.0.0.1:{port}");
        let idp = Idp::start_raw(&idp_config(&origin, access_token_ttl)).await;
        let api = DpopApi::start(&idp.issuer).await;
        let gw = Gateway::try_start(port, &config(port, &idp.issuer, &api.url, dpop)).await?;
        Ok(KeysStack { idp, api, gw })
    })
    .await
}

/// A key file's thumbprint and private `d`.
fn key_file(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let key = portcullis_token::DpopKey::from_jwk(&text).unwrap();
    let jwk: Value = serde_json::from_str(&text).unwrap();
    (
        key.thumbprint().to_owned(),
        jwk["d"].as_str().unwrap().to_owned(),
    )
}

/// The `dpop_jkt` of the browser's last authorization redirect, and the session key the
/// gateway made for that login (thumbprint, private `d`, algorithm), made again as the callback makes
/// it: the login cookie opened with the session key ring from the gateway's data directory
/// (associated data `portcullis.login-tx.v1`), then `portcullis::token::session_key`.
fn last_login(
    browser: &Browser,
    gw: &Gateway,
) -> (String, String, String, portcullis_token::SigningAlg) {
    use base64::Engine as _;
    let login = browser
        .seen()
        .into_iter()
        .rev()
        .find(|r| r.url.contains("/bff/login"))
        .expect("a login redirect");
    let location = &login
        .headers
        .iter()
        .find(|(n, _)| n == "location")
        .unwrap()
        .1;
    let dpop_jkt = query_param(location, "dpop_jkt").expect("dpop_jkt");
    let ring_text = std::fs::read_to_string(gw.dir.join("data/keys")).unwrap();
    let ring = portcullis::session::KeyRing::new(
        ring_text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| portcullis::session::Key::parse(l).unwrap())
            .collect(),
    )
    .unwrap();
    let tx: portcullis::oidc::authorize::LoginTransaction = login
        .headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .filter_map(|(_, v)| {
            let value = v.split(';').next()?.split_once('=')?.1;
            let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(value)
                .ok()?;
            let plain = ring.open(&sealed, b"portcullis.login-tx.v1").ok()?;
            serde_json::from_slice(&plain).ok()
        })
        .next()
        .expect("the login-transaction cookie");
    assert!(
        tx.dpop_key.is_some(),
        "the login recorded which key made its key"
    );
    let key = portcullis::token::session_key::for_callback(&ring, &tx)
        .unwrap()
        .unwrap();
    let jwk: Value = serde_json::from_str(key.private_jwk().expose_secret()).unwrap();
    (
        dpop_jkt,
        key.thumbprint().to_owned(),
        jwk["d"].as_str().unwrap().to_owned(),
        key.alg(),
    )
}

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// No private DPoP key (`d`) in the gateway's logs, in anything the browser received, or in
/// clear in the session store (the SQLite database and its journal); and no JWK at all in
/// those places (`"kty"`), whatever its key.
fn assert_no_key_leaks(private_ds: &[&str], gw: &Gateway, seen: &[SeenResponse]) {
    let logs = gw.logs().join("\n");
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
    for d in private_ds {
        assert!(!logs.contains(d), "a DPoP private key reached the logs");
        assert!(
            !store.contains(d),
            "a DPoP private key is in the store in clear"
        );
        for r in seen {
            assert!(
                !String::from_utf8_lossy(&r.body).contains(d),
                "a DPoP private key reached the browser in {}",
                r.url
            );
            assert!(
                !r.headers.iter().any(|(_, v)| v.contains(d)),
                "a DPoP private key reached the browser in a header of {}",
                r.url
            );
        }
    }
    for (place, text) in [("logs", &*logs), ("store", &*store)] {
        assert!(!text.contains("\"kty\""), "a JWK in clear in the {place}");
        assert!(
            !text.contains("\\\"kty\\\""),
            "a JWK in clear in the {place}"
        );
    }
    for r in seen {
        assert!(
            !String::from_utf8_lossy(&r.body).contains("\"kty\""),
            "a JWK reached the browser from {}",
            r.url
        );
        assert!(
            !r.headers.iter().any(|(n, _)| n == "dpop"),
            "a DPoP proof reached the browser from {}",
            r.url
        );
    }
}

#[tokio::test]
async fn per_session_keys_bind_each_session_to_its_own_key_through_login_refresh_and_proxied_calls()
{
    let s = stack(4, "per_session = true").await;
    let (gateway_jkt, gateway_d) = key_file(&s.gw.dir.join("data/dpop.jwk"));

    let mut sessions = Vec::new();
    for user in ["alice", "bob"] {
        let browser = Browser::new();
        browser.login(&s.gw, user).await;
        let (dpop_jkt, jkt, d, alg) = last_login(&browser, &s.gw);
        assert_eq!(
            alg,
            portcullis_token::SigningAlg::ES256,
            "key_alg's default"
        );
        assert_eq!(
            dpop_jkt, jkt,
            "{user}: the authorization request named the login's own key"
        );
        // The resource server checked the proof and that cnf.jkt is the proof's key.
        let body = json_of(browser.get_csrf(&s.gw.url("/orders/items")).await).await;
        assert_eq!(
            body["jkt"],
            jkt.as_str(),
            "{user}: token bound to the session key"
        );
        assert_eq!(body["sub"], user);
        sessions.push((browser, jkt, d));
    }
    let (alice_jkt, bob_jkt) = (&sessions[0].1, &sessions[1].1);
    assert_ne!(alice_jkt, bob_jkt, "two sessions, two keys");
    assert_ne!(*alice_jkt, gateway_jkt);
    assert_ne!(*bob_jkt, gateway_jkt);

    // Refresh (tokens live 4 s; refreshed within the capped buffer of 2 s): the same key.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (browser, jkt, _) in &sessions {
        let body = json_of(browser.get_csrf(&s.gw.url("/orders/after-refresh")).await).await;
        assert_eq!(body["jkt"], jkt.as_str(), "a refreshed token, the same key");
    }
    assert!(s.idp.token_requests("refresh_token").await >= 2);

    // A named client with its own key: its tokens and proofs use that key; the gateway's own
    // client keeps the gateway key.
    let (machine_jkt, machine_d) = key_file(&s.gw.dir.join("data/dpop-client-machine.jwk"));
    let browser = &sessions[0].0;
    let body = json_of(browser.get_csrf(&s.gw.url("/machine/status")).await).await;
    assert_eq!(body["jkt"], machine_jkt.as_str());
    assert_eq!(body["client_id"], MACHINE_CLIENT);
    let body = json_of(browser.get_csrf(&s.gw.url("/gateway-client/status")).await).await;
    assert_eq!(body["jkt"], gateway_jkt.as_str());
    assert_eq!(body["client_id"], DPOP_CLIENT);

    // The IdP saw proofs of each session's key for its code exchange and its refresh, of the
    // named client's key for its client credentials; accepted proofs carried its nonce.
    let idp = s.idp.stats().await;
    let proofs = idp["dpop_token_requests"].as_array().unwrap();
    let saw = |grant: &str, jkt: &str| {
        proofs.iter().any(|p| {
            p["grant"] == grant
                && p["jkt"] == jkt
                && p["status"] == 200
                && p["token_type"] == "DPoP"
        })
    };
    for jkt in [alice_jkt, bob_jkt] {
        assert!(saw("authorization_code", jkt), "{idp}");
        assert!(
            saw("refresh_token", jkt),
            "refreshed with the session key: {idp}"
        );
    }
    assert!(saw("client_credentials", &machine_jkt), "{idp}");
    assert!(saw("client_credentials", &gateway_jkt), "{idp}");
    assert!(
        proofs
            .iter()
            .all(|p| p["status"] != 200 || p["nonce"] == true),
        "{idp}"
    );
    assert_eq!(s.api.stats().await["failures"], json!([]));

    let mut seen = Vec::new();
    for (browser, _, _) in &sessions {
        seen.extend(browser.seen());
    }
    let logs = s.gw.logs();
    assert_no_secret_leaks(&s.idp, &logs, &seen).await;
    assert_no_key_leaks(
        &[&gateway_d, &machine_d, &sessions[0].2, &sessions[1].2],
        &s.gw,
        &seen,
    );
}

/// Switching `per_session` on keeps the sessions made before working (their tickets have no
/// key: they go on with the gateway key they are bound to), and logins after the switch get
/// their own keys; switching it off again keeps those sessions on their own keys.
#[tokio::test]
async fn sessions_from_before_the_switch_keep_their_key_both_ways() {
    let mut s = stack(300, "enabled = true").await;
    let (gateway_jkt, _) = key_file(&s.gw.dir.join("data/dpop.jwk"));
    let before = Browser::new();
    before.login(&s.gw, "alice").await;
    let body = json_of(before.get_csrf(&s.gw.url("/orders/x")).await).await;
    assert_eq!(body["jkt"], gateway_jkt.as_str());

    let edit = |gw: &Gateway, from: &str, to: &str| {
        let text = std::fs::read_to_string(&gw.config_path).unwrap();
        assert_eq!(text.matches(from).count(), 1, "{from}");
        std::fs::write(&gw.config_path, text.replace(from, to)).unwrap();
    };
    let one_key = "[oidc.dpop]\nenabled = true";
    let per_session = "[oidc.dpop]\nper_session = true\nkey_alg = \"EdDSA\"";
    edit(&s.gw, one_key, per_session);
    s.gw.restart().await;
    let body = json_of(before.get_csrf(&s.gw.url("/orders/still")).await).await;
    assert_eq!(
        body["jkt"],
        gateway_jkt.as_str(),
        "an old session keeps the gateway key"
    );

    let after = Browser::new();
    after.login(&s.gw, "bob").await;
    let (dpop_jkt, jkt, _, alg) = last_login(&after, &s.gw);
    assert_eq!(alg, portcullis_token::SigningAlg::EdDSA);
    assert_eq!(dpop_jkt, jkt);
    let body = json_of(after.get_csrf(&s.gw.url("/orders/new")).await).await;
    assert_eq!(
        body["jkt"],
        jkt.as_str(),
        "a new session has its own (EdDSA) key"
    );

    edit(&s.gw, per_session, one_key);
    s.gw.restart().await;
    let body = json_of(after.get_csrf(&s.gw.url("/orders/off-again")).await).await;
    assert_eq!(body["jkt"], jkt.as_str(), "its key is in its ticket");
    let body = json_of(before.get_csrf(&s.gw.url("/orders/old")).await).await;
    assert_eq!(body["jkt"], gateway_jkt.as_str());
    assert_eq!(s.api.stats().await["failures"], json!([]));
}
