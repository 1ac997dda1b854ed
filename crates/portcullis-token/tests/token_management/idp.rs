//! An in-test identity provider (token + revocation endpoints) and API, on 127.0.0.1:0.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use portcullis_token::*;
use url::Url;

/// What the token endpoint does.
#[derive(Clone, Debug)]
pub struct Behaviour {
    pub expires_in: Option<i64>,
    pub token_type: &'static str,
    pub rotate_refresh_tokens: bool,
    /// Refresh tokens are valid only once and must be known (issued or seeded).
    pub one_time_refresh_tokens: bool,
    pub id_token_on_refresh: bool,
    pub delay: Duration,
    /// Answer every token request with this status and body.
    pub fail_with: Option<(u16, String)>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            expires_in: Some(3600),
            token_type: "Bearer",
            rotate_refresh_tokens: true,
            one_time_refresh_tokens: true,
            id_token_on_refresh: false,
            delay: Duration::ZERO,
            fail_with: None,
        }
    }
}

/// One received request: form fields in order, and the headers.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub form: Vec<(String, String)>,
    pub headers: HeaderMap,
}

impl Recorded {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub struct IdpState {
    pub token_calls: AtomicUsize,
    pub revoke_calls: AtomicUsize,
    pub issued: AtomicUsize,
    pub behaviour: Mutex<Behaviour>,
    pub requests: Mutex<Vec<Recorded>>,
    pub revocations: Mutex<Vec<Recorded>>,
    pub valid_refresh_tokens: Mutex<HashSet<String>>,
    /// Access tokens the API answers 401 for.
    pub api_rejects: Mutex<HashSet<String>>,
    pub api_calls: AtomicUsize,
}

pub struct MockIdp {
    pub base: Url,
    pub state: Arc<IdpState>,
}

impl MockIdp {
    pub async fn start() -> Self {
        Self::with(Behaviour::default()).await
    }

    pub async fn with(behaviour: Behaviour) -> Self {
        let state = Arc::new(IdpState {
            behaviour: Mutex::new(behaviour),
            ..Default::default()
        });
        let app = Router::new()
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/api", get(api).post(api))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base: Url::parse(&format!("http://{addr}/")).unwrap(),
            state,
        }
    }

    pub fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap()
    }

    pub fn token_calls(&self) -> usize {
        self.state.token_calls.load(Ordering::SeqCst)
    }

    pub fn api_calls(&self) -> usize {
        self.state.api_calls.load(Ordering::SeqCst)
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.state.behaviour.lock().unwrap());
    }

    pub fn seed_refresh_token(&self, rt: &str) {
        self.state
            .valid_refresh_tokens
            .lock()
            .unwrap()
            .insert(rt.to_owned());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn last_request(&self) -> Recorded {
        self.requests().last().cloned().expect("a token request")
    }

    pub fn config(&self) -> OAuthClientConfig {
        OAuthClientConfig::new(
            "bff",
            ClientAuth::ClientSecretBasic(Secret::new("s3cret")),
            self.url("token"),
        )
        .with_revocation_endpoint(self.url("revoke"))
    }

    pub fn client(&self, clock: &ManualClock) -> Arc<OAuthClient> {
        self.client_with(self.config(), clock)
    }

    pub fn client_with(&self, config: OAuthClientConfig, clock: &ManualClock) -> Arc<OAuthClient> {
        Arc::new(OAuthClient::new(
            config,
            reqwest::Client::new(),
            Arc::new(clock.clone()),
        ))
    }
}

fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

async fn token(State(st): State<Arc<IdpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let rec = Recorded {
        form: parse_form(&body),
        headers,
    };
    st.token_calls.fetch_add(1, Ordering::SeqCst);
    st.requests.lock().unwrap().push(rec.clone());
    let b = st.behaviour.lock().unwrap().clone();
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    if let Some((status, body)) = b.fail_with {
        return (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response();
    }
    let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let mut resp = serde_json::Map::new();
    let mut issue_rt = false;
    match rec.get("grant_type") {
        Some("refresh_token") => {
            let rt = rec.get("refresh_token").unwrap_or_default().to_owned();
            if b.one_time_refresh_tokens && !st.valid_refresh_tokens.lock().unwrap().remove(&rt) {
                return invalid_grant();
            }
            if b.rotate_refresh_tokens {
                issue_rt = true;
            } else if b.one_time_refresh_tokens {
                st.valid_refresh_tokens.lock().unwrap().insert(rt);
            }
            if b.id_token_on_refresh {
                resp.insert("id_token".into(), format!("id-{n}").into());
            }
        }
        Some("authorization_code") => {
            issue_rt = true;
            resp.insert("id_token".into(), format!("id-{n}").into());
        }
        _ => {}
    }
    if issue_rt {
        let rt = format!("rt-{n}");
        st.valid_refresh_tokens.lock().unwrap().insert(rt.clone());
        resp.insert("refresh_token".into(), rt.into());
    }
    // The access token names what it was issued for, so tests can check who got what.
    let mut at = format!("at-{n}");
    if let Some(scope) = rec.get("scope") {
        at.push_str(&format!("-s:{}", scope.replace(' ', "+")));
        resp.insert("scope".into(), scope.into());
    }
    if let Some(resource) = rec.get("resource") {
        at.push_str(&format!("-r:{}", resource.replace(' ', "+")));
    }
    resp.insert("access_token".into(), at.into());
    resp.insert("token_type".into(), b.token_type.into());
    if let Some(e) = b.expires_in {
        resp.insert("expires_in".into(), e.into());
    }
    axum::Json(serde_json::Value::Object(resp)).into_response()
}

fn invalid_grant() -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({"error": "invalid_grant", "error_description": "unknown refresh token"})))
        .into_response()
}

async fn revoke(State(st): State<Arc<IdpState>>, headers: HeaderMap, body: Bytes) -> Response {
    st.revoke_calls.fetch_add(1, Ordering::SeqCst);
    let rec = Recorded {
        form: parse_form(&body),
        headers,
    };
    if let Some(t) = rec.get("token") {
        st.valid_refresh_tokens.lock().unwrap().remove(t);
    }
    st.revocations.lock().unwrap().push(rec);
    StatusCode::OK.into_response()
}

/// Echoes the Authorization header; 401 for rejected tokens.
async fn api(State(st): State<Arc<IdpState>>, headers: HeaderMap) -> Response {
    st.api_calls.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let token = auth
        .split_once(' ')
        .map(|(_, t)| t.to_owned())
        .unwrap_or_default();
    if token.is_empty() || st.api_rejects.lock().unwrap().contains(&token) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    auth.into_response()
}

/// Tokens of a session that logged in at `now` with an access token living `lifetime` seconds.
pub fn session_tokens(
    access: &str,
    refresh: Option<&str>,
    now: i64,
    lifetime: Option<i64>,
) -> UserTokens {
    UserTokens {
        access_token: AccessToken {
            value: Secret::new(access),
            token_type: TokenType::Bearer,
            expires_at: lifetime.map(|l| now + l),
            scope: Some("openid api".into()),
            issued_at: Some(now),
        },
        refresh_token: refresh.map(Secret::new),
        id_token: Some(Secret::new("id-0")),
        by_resource: Default::default(),
        dpop_key: None,
    }
}
