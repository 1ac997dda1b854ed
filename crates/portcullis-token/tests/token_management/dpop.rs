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
    /// The `jwk.x` of each token-endpoint proof and each API proof.
    token_keys: Vec<String>,
    api_keys: Vec<String>,
    /// `grant_type` of each token request.
    grants: Vec<String>,
    token_type: Option<&'static str>,
}

type Shared = Arc<Mutex<Seen>>;

/// The public key (`jwk.x`) a proof carries.
fn proof_key(headers: &HeaderMap) -> String {
    (|| {
        let proof = headers.get("dpop")?.to_str().ok()?;
        let header = proof.split('.').next()?;
        let h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        Some(h["jwk"]["x"].as_str()?.to_owned())
    })()
    .unwrap_or_default()
}

fn jwk_x(key: &DpopKey) -> String {
    let jwk: Value = serde_json::from_str(key.private_jwk().expose_secret()).unwrap();
    jwk["x"].as_str().unwrap().to_owned()
}

fn claims(headers: &HeaderMap) -> Option<Value> {
    let proof = headers.get("dpop")?.to_str().ok()?;
    let payload = proof.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

async fn token(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let c = claims(&headers).unwrap_or(Value::Null);
    let mut seen = s.lock().unwrap();
    seen.token_proofs.push(c.clone());
    seen.token_keys.push(proof_key(&headers));
    let grant = url::form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    seen.grants.push(grant);
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
    s.lock().unwrap().api_keys.push(proof_key(&headers));
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

fn named_client(base: &Url, clock: &ManualClock, id: &str, key: Option<DpopKey>) -> OAuthClient {
    let config = OAuthClientConfig::new(
        id,
        ClientAuth::ClientSecretBasic(Secret::new("s")),
        base.join("token").unwrap(),
    );
    let oauth = OAuthClient::new(config, reqwest::Client::new(), Arc::new(clock.clone()));
    match key {
        Some(key) => oauth.with_dpop(Dpop::new(Arc::new(key), Arc::new(clock.clone()))),
        None => oauth,
    }
}

/// Each named client-credentials client proves its own key, at the token endpoint and at the
/// resource server; a client without a key sends no proof at all.
#[tokio::test]
async fn each_named_client_proves_its_own_dpop_key() {
    let (base, seen) = server(None).await;
    let clock = ManualClock::new(1_700_000_000);
    let reports = DpopKey::generate(SigningAlg::ES256).unwrap();
    let orders = DpopKey::generate(SigningAlg::EdDSA).unwrap();
    let (reports_x, orders_x) = (jwk_x(&reports), jwk_x(&orders));
    let mut machines =
        ClientCredentialsManager::new(Arc::new(clock.clone()), Duration::from_secs(30));
    machines.add_client(
        "reports",
        Arc::new(named_client(&base, &clock, "reports", Some(reports))),
        TokenParams::default(),
    );
    machines.add_client(
        "orders",
        Arc::new(named_client(&base, &clock, "orders", Some(orders))),
        TokenParams::default(),
    );
    let machines = Arc::new(machines);
    for (name, x) in [("reports", &reports_x), ("orders", &orders_x)] {
        let api = TokenClient::new(
            reqwest::Client::new(),
            TokenSource::Client {
                manager: machines.clone(),
                name: name.into(),
                params: TokenParams::default(),
            },
        );
        let request = reqwest::Client::new()
            .get(base.join("api/items").unwrap())
            .build()
            .unwrap();
        let response = api.send(request).await.unwrap();
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(response.text().await.unwrap(), "DPoP at-1");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.api_keys.last(), Some(x), "{name}: API proof key");
        assert!(
            seen.token_keys.iter().any(|k| k == x),
            "{name}: token request proof key"
        );
    }
    let seen = seen.lock().unwrap();
    assert_ne!(reports_x, orders_x);
    assert!(seen.api_keys.iter().all(|k| !k.is_empty()));
}

fn expired_session(key: Option<&DpopKey>) -> UserTokens {
    let tokens: UserTokens = serde_json::from_value(json!({
        "access_token": {"value": "at-0", "token_type": "DPoP", "expires_at": 1_699_999_000},
        "refresh_token": "rt-0",
    }))
    .unwrap();
    match key {
        Some(key) => tokens.with_dpop_key(key),
        None => tokens,
    }
}

/// A session with its own key refreshes with a proof of that key and its token signs resource
/// proofs with it; a session stored before per-session keys (no key) keeps using the client's.
#[tokio::test]
async fn a_session_with_its_own_key_refreshes_and_proves_with_it() {
    let (base, seen) = server(None).await;
    let clock = ManualClock::new(1_700_000_000);
    let (oauth, client_dpop) = client(&base, &clock);
    let client_x = jwk_x(client_dpop.key());
    let session_key = DpopKey::generate(SigningAlg::ES256).unwrap();
    let session_x = jwk_x(&session_key);
    let store = Arc::new(InMemoryUserTokenStore::new(Arc::new(clock.clone())));
    store.insert("with-key", expired_session(Some(&session_key)));
    store.insert("before-keys", expired_session(None));
    let users = Arc::new(UserTokenManager::new(
        oauth,
        UserTokenOptions::default(),
        Arc::new(clock.clone()),
    ));

    for (session, x) in [("with-key", &session_x), ("before-keys", &client_x)] {
        let token = users
            .get_access_token(store.as_ref(), session, &TokenParams::default(), None)
            .await
            .unwrap();
        assert!(token.is_dpop_bound());
        assert_eq!(
            jwk_x(token.dpop().unwrap().key()),
            *x,
            "{session}: bound to the right key"
        );
        {
            let seen = seen.lock().unwrap();
            assert_eq!(
                seen.grants.last().map(String::as_str),
                Some("refresh_token")
            );
            assert_eq!(
                seen.token_keys.last(),
                Some(x),
                "{session}: refresh proof key"
            );
        }
        let api = TokenClient::new(
            reqwest::Client::new(),
            TokenSource::User {
                manager: users.clone(),
                store: store.clone(),
                session: session.into(),
                params: TokenParams::default(),
            },
        );
        let request = reqwest::Client::new()
            .get(base.join("api/items").unwrap())
            .build()
            .unwrap();
        assert_eq!(api.send(request).await.unwrap().status(), 200);
        assert_eq!(seen.lock().unwrap().api_keys.last(), Some(x), "{session}");
    }
    // The key survives the refresh: it is part of the stored tokens.
    assert_eq!(
        store.get("with-key").unwrap().dpop_key.as_ref(),
        Some(session_key.private_jwk())
    );
}

/// Counts `portcullis_dpop_unbound_tokens_total` (a tiny recorder: only counters).
#[derive(Default)]
struct Counting(Arc<std::sync::atomic::AtomicU64>);

struct Count(Arc<std::sync::atomic::AtomicU64>);

impl ::metrics::CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0
            .fetch_add(value, std::sync::atomic::Ordering::Relaxed);
    }
    fn absolute(&self, _value: u64) {}
}

impl ::metrics::Recorder for Counting {
    fn describe_counter(
        &self,
        _: ::metrics::KeyName,
        _: Option<::metrics::Unit>,
        _: ::metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: ::metrics::KeyName,
        _: Option<::metrics::Unit>,
        _: ::metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: ::metrics::KeyName,
        _: Option<::metrics::Unit>,
        _: ::metrics::SharedString,
    ) {
    }
    fn register_counter(
        &self,
        key: &::metrics::Key,
        _: &::metrics::Metadata<'_>,
    ) -> ::metrics::Counter {
        if key.name() == portcullis_token::metrics::DPOP_UNBOUND_TOKENS_TOTAL {
            ::metrics::Counter::from_arc(Arc::new(Count(self.0.clone())))
        } else {
            ::metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, _: &::metrics::Key, _: &::metrics::Metadata<'_>) -> ::metrics::Gauge {
        ::metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &::metrics::Key,
        _: &::metrics::Metadata<'_>,
    ) -> ::metrics::Histogram {
        ::metrics::Histogram::noop()
    }
}

/// RFC 9449 §5: an IdP that ignores the proof answers Bearer. The token is used as Bearer
/// (never dressed up as DPoP), and the event is counted in
/// `portcullis_dpop_unbound_tokens_total`; a DPoP answer is not counted.
#[tokio::test(flavor = "current_thread")]
async fn a_bearer_answer_to_a_dpop_request_is_counted_in_the_unbound_metric() {
    let recorder = Counting::default();
    let count = recorder.0.clone();
    let _guard = ::metrics::set_default_local_recorder(&recorder);
    let clock = ManualClock::new(1_700_000_000);
    for (token_type, counted) in [("DPoP", 0), ("dpop", 0), ("Bearer", 1), ("bearer", 2)] {
        let (base, _seen) = server(Some(token_type)).await;
        let (oauth, _) = client(&base, &clock);
        let response = oauth
            .client_credentials(&TokenParams::default())
            .await
            .unwrap();
        assert_eq!(
            count.load(std::sync::atomic::Ordering::Relaxed),
            counted,
            "after a {token_type:?} answer"
        );
        let access = AccessToken::from_response(&response, clock.now_unix());
        let bound = !matches!(access.token_type, TokenType::Bearer);
        assert_eq!(bound, token_type.eq_ignore_ascii_case("dpop"));
    }
}
