//! DPoP (RFC 9449) in the token crate: proofs and the one nonce retry at a token endpoint and
//! at a resource server, against a small in-test server that behaves like both.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use portcullis_token::*;
use serde_json::{json, Value};
use url::Url;

const NONCE: &str = "server-nonce-1";

#[derive(Default)]
struct Seen {
    token_proofs: Vec<Value>,
    api_proofs: Vec<Value>,
    token_type: Option<&'static str>,
}

type Shared = Arc<Mutex<Seen>>;

fn claims(headers: &HeaderMap) -> Option<Value> {
    let proof = headers.get("dpop")?.to_str().ok()?;
    let payload = proof.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

async fn token(State(s): State<Shared>, headers: HeaderMap) -> axum::response::Response {
    let c = claims(&headers).unwrap_or(Value::Null);
    let mut seen = s.lock().unwrap();
    seen.token_proofs.push(c.clone());
    if c["nonce"] != NONCE {
        return (
            StatusCode::BAD_REQUEST,
            [("dpop-nonce", NONCE)],
            axum::Json(json!({"error": "use_dpop_nonce"})),
        )
            .into_response();
    }
    let token_type = seen.token_type.unwrap_or("DPoP");
    axum::Json(json!({"access_token": "at-1", "token_type": token_type, "expires_in": 300}))
        .into_response()
}

async fn api(State(s): State<Shared>, headers: HeaderMap) -> axum::response::Response {
    let c = claims(&headers).unwrap_or(Value::Null);
    s.lock().unwrap().api_proofs.push(c.clone());
    if c["nonce"] != NONCE {
        return (
            StatusCode::UNAUTHORIZED,
            [
                ("www-authenticate", r#"DPoP error="use_dpop_nonce""#),
                ("dpop-nonce", NONCE),
            ],
        )
            .into_response();
    }
    let auth = headers["authorization"].to_str().unwrap().to_owned();
    (StatusCode::OK, auth).into_response()
}

async fn server(token_type: Option<&'static str>) -> (Url, Shared) {
    let seen: Shared = Arc::new(Mutex::new(Seen {
        token_type,
        ..Seen::default()
    }));
    let app = Router::new()
        .route("/token", post(token))
        .route("/api/items", get(api).post(api))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (Url::parse(&format!("http://{addr}/")).unwrap(), seen)
}

fn client(base: &Url, clock: &ManualClock) -> (Arc<OAuthClient>, Dpop) {
    let dpop = Dpop::new(
        Arc::new(DpopKey::generate(SigningAlg::ES256).unwrap()),
        Arc::new(clock.clone()),
    );
    let config = OAuthClientConfig::new(
        "c1",
        ClientAuth::ClientSecretBasic(Secret::new("s")),
        base.join("token").unwrap(),
    );
    let oauth = OAuthClient::new(config, reqwest::Client::new(), Arc::new(clock.clone()))
        .with_dpop(dpop.clone());
    (Arc::new(oauth), dpop)
}

#[tokio::test]
async fn token_and_resource_nonce_challenges_are_each_answered_by_one_retry() {
    let (base, seen) = server(None).await;
    let clock = ManualClock::new(1_700_000_000);
    let (oauth, dpop) = client(&base, &clock);
    let mut machines =
        ClientCredentialsManager::new(Arc::new(clock.clone()), Duration::from_secs(30));
    machines.add_client("c1", oauth, TokenParams::default());
    let api = TokenClient::new(
        reqwest::Client::new(),
        TokenSource::Client {
            manager: Arc::new(machines),
            name: "c1".into(),
            params: TokenParams::default(),
        },
    );
    let url = base.join("api/items?page=2#top").unwrap();
    let request = reqwest::Client::new().post(url).body("{}").build().unwrap();
    let response = api.send(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "DPoP at-1");

    let seen = seen.lock().unwrap();
    // Token endpoint: refused without nonce, then one retry with it.
    assert_eq!(seen.token_proofs.len(), 2, "{:?}", seen.token_proofs);
    assert_eq!(seen.token_proofs[0]["htm"], "POST");
    assert_eq!(
        seen.token_proofs[0]["htu"],
        base.join("token").unwrap().as_str()
    );
    assert!(seen.token_proofs[0].get("ath").is_none());
    assert_eq!(seen.token_proofs[1]["nonce"], NONCE);
    assert_ne!(seen.token_proofs[0]["jti"], seen.token_proofs[1]["jti"]);
    // Resource server: the same origin, so its nonce was already known from the token
    // endpoint's answer: one call, no challenge.
    assert_eq!(seen.api_proofs.len(), 1, "{:?}", seen.api_proofs);
    let proof = &seen.api_proofs[0];
    assert_eq!(proof["htm"], "POST");
    assert_eq!(
        proof["htu"],
        base.join("api/items").unwrap().as_str(),
        "no query, no fragment"
    );
    assert_eq!(proof["iat"], 1_700_000_000);
    let ath = URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(b"at-1"));
    assert_eq!(proof["ath"], ath);
    assert!(dpop.nonces().get(&base).is_some());
}

#[tokio::test]
async fn a_resource_servers_nonce_challenge_gets_exactly_one_retry() {
    // Token endpoint and API on different origins: the API's nonce is unknown at first.
    let (idp, _) = server(None).await;
    let (rs, seen) = server(None).await;
    let clock = ManualClock::new(1_700_000_000);
    let (oauth, dpop) = client(&idp, &clock);
    let mut machines =
        ClientCredentialsManager::new(Arc::new(clock.clone()), Duration::from_secs(30));
    machines.add_client("c1", oauth, TokenParams::default());
    let api = TokenClient::new(
        reqwest::Client::new(),
        TokenSource::Client {
            manager: Arc::new(machines),
            name: "c1".into(),
            params: TokenParams::default(),
        },
    );
    assert!(dpop.nonces().get(&rs).is_none());
    let request = reqwest::Client::new()
        .get(rs.join("api/items").unwrap())
        .build()
        .unwrap();
    let response = api.send(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.api_proofs.len(),
        2,
        "exactly one retry: {:?}",
        seen.api_proofs
    );
    assert!(seen.api_proofs[0].get("nonce").is_none());
    assert_eq!(seen.api_proofs[1]["nonce"], NONCE);
    assert_ne!(seen.api_proofs[0]["jti"], seen.api_proofs[1]["jti"]);
    assert_eq!(dpop.nonces().get(&rs).as_deref(), Some(NONCE));
}

#[tokio::test]
async fn a_bearer_token_from_an_idp_that_ignored_the_proof_is_sent_as_bearer() {
    let (base, _seen) = server(Some("bearer")).await;
    let clock = ManualClock::new(1_700_000_000);
    let (oauth, _) = client(&base, &clock);
    let mut machines =
        ClientCredentialsManager::new(Arc::new(clock.clone()), Duration::from_secs(30));
    machines.add_client("c1", oauth, TokenParams::default());
    let token = machines
        .get_token("c1", &TokenParams::default())
        .await
        .unwrap();
    assert!(!token.is_dpop_bound());
    assert_eq!(
        token.authorization_header().to_str().unwrap(),
        "Bearer at-1"
    );
    assert!(token
        .dpop_proof("GET", &base.join("api/items").unwrap())
        .unwrap()
        .is_none());
}
