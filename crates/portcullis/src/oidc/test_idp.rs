//! An in-process identity provider for the oidc module's unit tests: discovery and a JWKS
//! whose content the test sets, with a fetch counter, plus an Ed25519 signer that can put
//! anything in the JOSE header. Listens on 127.0.0.1 only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use super::Provider;
use portcullis_token::ManualClock;

/// A test-only Ed25519 key (generated for these tests; never used anywhere else).
const ED_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIOlEqFI+MPS7ebGx58ebNMYr7Pme9szmC0qs88321HR8
-----END PRIVATE KEY-----
";
const ED_X: &str = "j7m6BFewavItcalwKkSxZ5A5nByr8uKqAKjMDl2wl-8";

/// The public JWK of the test key under `kid`.
pub fn ed_jwk(kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": kid, "alg": "EdDSA", "use": "sig"})
}

/// Keys the `jsonwebtoken` crate cannot model or the gateway cannot use (RFC 7517 §5 says to
/// ignore them), as real IdPs publish them.
pub fn odd_keys() -> Vec<Value> {
    vec![
        json!({"kty": "EC", "crv": "P-521", "alg": "ES512", "use": "sig", "kid": "p521",
               "x": "AekpBQ8ST8a8VcfVOTNl353vSrDCLLJXmPk06wTjxrrjcBpXp5EOnYG_NjFZ6OvLFV1jSfS9tsz4qUxcWceqwQGk",
               "y": "ADSmRA43Z1DSNx_RvcLI87cdL07l6jQyyBXMoxVg_l2Th-x3S1WDhjDly79ajL4Kkd0AZMaZmh9ubmf63e3kyMj2"}),
        json!({"kty": "OKP", "crv": "X25519", "use": "enc", "kid": "x25519",
               "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}),
        json!({"kty": "ML-DSA", "alg": "ML-DSA-65", "kid": "pq", "pub": "AAAA"}),
        json!({"kty": "RSA", "use": "enc", "alg": "RSA-OAEP-256", "kid": "rsa-enc",
               "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
               "e": "AQAB"}),
        json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}),
        json!({"kty": "RSA", "kid": "broken-rsa", "n": 17, "e": "AQAB"}),
        json!({"kid": "no-kty"}),
        json!("not an object"),
    ]
}

/// Signs `claims` with the test key; `header` members are added to `{"alg":"EdDSA"}`.
pub fn sign(header: Value, claims: &Value) -> String {
    let mut h = json!({"alg": "EdDSA"});
    for (k, v) in header.as_object().cloned().unwrap_or_default() {
        h[k] = v;
    }
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let message = format!("{}.{}", b64(&h), b64(claims));
    let key = EncodingKey::from_ed_pem(ED_PEM.as_bytes()).unwrap();
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::EdDSA).unwrap();
    format!("{message}.{sig}")
}

#[derive(Clone)]
struct Shared {
    issuer: Arc<Mutex<String>>,
    jwks: Arc<Mutex<Value>>,
    discovery_extra: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

/// The running test IdP.
pub struct TestIdp {
    pub issuer: String,
    shared: Shared,
}

impl TestIdp {
    /// Starts serving `keys` (a list of JWK values) as the JWKS.
    pub async fn start(keys: Vec<Value>) -> TestIdp {
        let shared = Shared {
            issuer: Arc::new(Mutex::new(String::new())),
            jwks: Arc::new(Mutex::new(json!({ "keys": keys }))),
            discovery_extra: Arc::new(Mutex::new(json!({}))),
            fetches: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(s): State<Shared>| async move {
                    let issuer = s.issuer.lock().unwrap().clone();
                    let mut doc = json!({
                        "issuer": issuer,
                        "authorization_endpoint": format!("{issuer}/auth"),
                        "token_endpoint": format!("{issuer}/token"),
                        "jwks_uri": format!("{issuer}/jwks"),
                    });
                    for (k, v) in s.discovery_extra.lock().unwrap().as_object().unwrap() {
                        doc[k] = v.clone();
                    }
                    Json(doc)
                }),
            )
            .route(
                "/jwks",
                get(|State(s): State<Shared>| async move {
                    s.fetches.fetch_add(1, Ordering::SeqCst);
                    Json(s.jwks.lock().unwrap().clone())
                }),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        *shared.issuer.lock().unwrap() = issuer.clone();
        tokio::spawn(async move { axum::serve(listener, app).await });
        TestIdp { issuer, shared }
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.shared.jwks.lock().unwrap() = json!({ "keys": keys });
    }

    /// Members added to (or replacing those of) the discovery document.
    pub fn set_discovery_extra(&self, extra: Value) {
        *self.shared.discovery_extra.lock().unwrap() = extra;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    pub fn provider(&self, clock: &ManualClock) -> Provider {
        Provider::new(
            self.issuer.clone(),
            reqwest::Client::new(),
            Arc::new(clock.clone()),
        )
    }
}
