//! TokenClient: per-request tokens and the 401 retry.

use std::sync::Arc;
use std::time::Duration;

use portcullis_token::*;

use crate::idp::{session_tokens, MockIdp};

const T0: i64 = 1_700_000_000;

struct Setup {
    idp: MockIdp,
    http: reqwest::Client,
    store: Arc<InMemoryUserTokenStore>,
    users: Arc<UserTokenManager>,
}

async fn setup() -> Setup {
    let idp = MockIdp::start().await;
    let clock = ManualClock::new(T0);
    let store = Arc::new(InMemoryUserTokenStore::new(Arc::new(clock.clone())));
    let users = Arc::new(UserTokenManager::new(
        idp.client(&clock),
        UserTokenOptions::default(),
        Arc::new(clock.clone()),
    ));
    Setup {
        idp,
        http: reqwest::Client::new(),
        store,
        users,
    }
}

impl Setup {
    fn user(&self, session: &str) -> TokenClient {
        TokenClient::new(
            self.http.clone(),
            TokenSource::User {
                manager: self.users.clone(),
                store: self.store.clone(),
                session: session.into(),
                params: TokenParams::default(),
            },
        )
    }
}

#[tokio::test]
async fn pooled_client_never_sends_one_users_token_for_another() {
    let s = setup().await;
    s.store
        .insert("alice", session_tokens("at-alice", None, T0, Some(3600)));
    s.store
        .insert("bob", session_tokens("at-bob", None, T0, Some(3600)));
    let api = s.idp.url("api");
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let who = if i % 2 == 0 { "alice" } else { "bob" };
            let client = s.user(who);
            let request = s.http.get(api.clone()).build().unwrap();
            tokio::spawn(async move {
                let body = client.send(request).await.unwrap().text().await.unwrap();
                (who, body)
            })
        })
        .collect();
    for t in tasks {
        let (who, body) = t.await.unwrap();
        assert_eq!(body, format!("Bearer at-{who}"));
    }
}

#[tokio::test]
async fn a_callers_authorization_header_is_replaced() {
    let s = setup().await;
    s.store
        .insert("alice", session_tokens("at-alice", None, T0, Some(3600)));
    let request = s
        .http
        .get(s.idp.url("api"))
        .bearer_auth("forged")
        .header("dpop", "x")
        .build()
        .unwrap();
    let body = s
        .user("alice")
        .send(request)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "Bearer at-alice");
}

#[tokio::test]
async fn api_401_renews_once_and_retries_immediately() {
    let s = setup().await;
    s.idp.seed_refresh_token("rt-0");
    s.store.insert(
        "alice",
        session_tokens("at-0", Some("rt-0"), T0, Some(3600)),
    );
    s.idp
        .state
        .api_rejects
        .lock()
        .unwrap()
        .insert("at-0".into());
    let started = std::time::Instant::now();
    let request = s
        .http
        .post(s.idp.url("api"))
        .body("replayable")
        .build()
        .unwrap();
    let response = s.user("alice").send(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "Bearer at-1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no back-off sleep"
    );
    assert_eq!(s.idp.token_calls(), 1);
    assert_eq!(s.idp.api_calls(), 2);
}

#[tokio::test]
async fn api_401_after_renewal_is_returned_not_retried_again() {
    let s = setup().await;
    s.idp.seed_refresh_token("rt-0");
    s.store.insert(
        "alice",
        session_tokens("at-0", Some("rt-0"), T0, Some(3600)),
    );
    s.idp
        .state
        .api_rejects
        .lock()
        .unwrap()
        .extend(["at-0".to_owned(), "at-1".to_owned()]);
    let request = s.http.get(s.idp.url("api")).build().unwrap();
    assert_eq!(s.user("alice").send(request).await.unwrap().status(), 401);
    assert_eq!(s.idp.api_calls(), 2);
    assert_eq!(s.idp.token_calls(), 1);
}

#[tokio::test]
async fn streaming_body_is_not_retried_after_401() {
    let s = setup().await;
    s.idp.seed_refresh_token("rt-0");
    s.store.insert(
        "alice",
        session_tokens("at-0", Some("rt-0"), T0, Some(3600)),
    );
    s.idp
        .state
        .api_rejects
        .lock()
        .unwrap()
        .insert("at-0".into());
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("a"), Ok("b")];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let request = s.http.post(s.idp.url("api")).body(body).build().unwrap();
    assert_eq!(s.user("alice").send(request).await.unwrap().status(), 401);
    assert_eq!(s.idp.api_calls(), 1);
    assert_eq!(s.idp.token_calls(), 0);
}

#[tokio::test]
async fn renewal_that_ends_the_session_is_an_error() {
    let s = setup().await; // rt-0 not seeded: the IdP answers invalid_grant
    s.store.insert(
        "alice",
        session_tokens("at-0", Some("rt-0"), T0, Some(3600)),
    );
    s.idp
        .state
        .api_rejects
        .lock()
        .unwrap()
        .insert("at-0".into());
    let request = s.http.get(s.idp.url("api")).build().unwrap();
    match s.user("alice").send(request).await {
        Err(TokenClientError::Token(e)) => assert!(e.ends_session()),
        other => panic!("expected a session-ending error, got {other:?}"),
    }
}

#[tokio::test]
async fn client_token_source_renews_after_401() {
    let s = setup().await;
    let clock = ManualClock::new(T0);
    let mut cc = ClientCredentialsManager::new(Arc::new(clock.clone()), Duration::from_secs(60));
    cc.add_client("svc", s.idp.client(&clock), TokenParams::default());
    let client = TokenClient::new(
        s.http.clone(),
        TokenSource::Client {
            manager: Arc::new(cc),
            name: "svc".into(),
            params: TokenParams::default(),
        },
    );
    s.idp
        .state
        .api_rejects
        .lock()
        .unwrap()
        .insert("at-1".into());
    let response = client
        .send(s.http.get(s.idp.url("api")).build().unwrap())
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "Bearer at-2");
    // the renewed token is cached
    let response = client
        .send(s.http.get(s.idp.url("api")).build().unwrap())
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "Bearer at-2");
    assert_eq!(s.idp.token_calls(), 2);
}
