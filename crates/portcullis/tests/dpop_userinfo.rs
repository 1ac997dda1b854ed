//! The UserInfo call after a login (`oidc.fetch_userinfo`) with a DPoP-bound token: it was
//! sent as `Bearer`, which a DPoP-aware IdP refuses (RFC 9449 §7.1: a DPoP-bound token is
//! never presented as a bearer token). Now `Authorization: DPoP` plus a proof of the login's
//! key (the session's own key, or the gateway key), with one retry when the server asks for a
//! nonce; a Bearer token is still sent as Bearer, without a proof.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use portcullis::settings::{DpopSettings, SessionSettings};
use portcullis_token::{DpopKey, SigningAlg, TokenResponse};
use serde_json::{json, Value};
use support::*;

const NONCE: &str = "userinfo-nonce";

#[derive(Default)]
struct Seen {
    /// (Authorization scheme, proof header, proof claims) of each call.
    calls: Vec<(String, Option<Value>, Option<Value>)>,
}

fn part(proof: &str, i: usize) -> Value {
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(proof.split('.').nth(i).unwrap())
            .unwrap(),
    )
    .unwrap()
}

async fn userinfo(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let scheme = headers["authorization"]
        .to_str()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let proof = headers.get("dpop").map(|p| p.to_str().unwrap().to_owned());
    let (header, claims) = match &proof {
        Some(p) => (Some(part(p, 0)), Some(part(p, 1))),
        None => (None, None),
    };
    let nonce_ok = claims.as_ref().is_some_and(|c| c["nonce"] == NONCE);
    seen.lock()
        .unwrap()
        .calls
        .push((scheme.clone(), header, claims));
    if scheme == "DPoP" && !nonce_ok {
        return (
            StatusCode::UNAUTHORIZED,
            [
                ("www-authenticate", r#"DPoP error="use_dpop_nonce""#),
                ("dpop-nonce", NONCE),
            ],
        )
            .into_response();
    }
    axum::Json(json!({"sub": "alice", "email": "alice@example.com"})).into_response()
}

fn response(token_type: &str) -> TokenResponse {
    serde_json::from_value(json!({
        "access_token": "at-userinfo", "token_type": token_type, "expires_in": 300,
    }))
    .unwrap()
}

#[tokio::test]
async fn userinfo_with_a_dpop_bound_token_sends_dpop_and_a_proof_never_bearer() {
    let idp = MockIdp::start().await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/userinfo", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/userinfo", get(userinfo))
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let gateway_key = Arc::new(DpopKey::generate(SigningAlg::ES256).unwrap());
    let mut s = settings(&idp.issuer, Vec::new(), SessionSettings::default());
    s.oidc.dpop = Some(DpopSettings {
        key: gateway_key.clone(),
        session_key_alg: None,
    });
    let (gw, _clock) = gateway(s).await;
    let tokens = gw.tokens();
    let session_key = Arc::new(DpopKey::generate(SigningAlg::EdDSA).unwrap());
    let ath = URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(b"at-userinfo"));

    // lower-case `dpop` from the IdP is still DPoP (RFC 9449 §5: case-insensitive).
    for (token_type, key, alg) in [
        ("DPoP", None, "ES256"),
        ("dpop", Some(session_key.clone()), "EdDSA"),
    ] {
        seen.lock().unwrap().calls.clear();
        let claims = tokens
            .userinfo(&url, &response(token_type), key)
            .await
            .unwrap();
        assert_eq!(claims["sub"], "alice");
        let seen = seen.lock().unwrap();
        assert!(!seen.calls.is_empty());
        for (scheme, header, claims) in &seen.calls {
            assert_eq!(scheme, "DPoP", "{token_type}: never Bearer");
            let (header, claims) = (header.as_ref().unwrap(), claims.as_ref().unwrap());
            assert_eq!(header["alg"], alg);
            assert_eq!(claims["htm"], "GET");
            assert_eq!(claims["htu"], url.as_str());
            assert_eq!(claims["ath"], ath.as_str());
        }
        // At most one retry, with the server's nonce; the nonce is then remembered.
        assert!(seen.calls.len() <= 2, "{}", seen.calls.len());
        assert_eq!(
            seen.calls.last().unwrap().2.as_ref().unwrap()["nonce"],
            NONCE
        );
    }

    seen.lock().unwrap().calls.clear();
    let claims = tokens
        .userinfo(&url, &response("Bearer"), None)
        .await
        .unwrap();
    assert_eq!(claims["sub"], "alice");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.calls.len(), 1);
    assert_eq!(seen.calls[0].0, "Bearer");
    assert!(seen.calls[0].1.is_none(), "no proof with a Bearer token");
}
