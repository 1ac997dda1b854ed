//! What a refresh answer means and what may be done with it: a validator can refuse a refresh
//! response (nothing stored, session kept, lease released); every 4xx but 429 ends the session
//! whatever its body; the login's resource is kept on refresh; ending a session runs under the
//! refresh lock and lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use portcullis_token::*;

use crate::idp::{session_tokens, Behaviour, MockIdp};

const T0: i64 = 1_700_000_000;
const S: &str = "session-1";

/// What the validator was shown: session, previous refresh token, new ID token.
type Seen = (String, Option<String>, Option<String>);

/// Refuses responses whose `id_token` is in `refuse`; records what it was shown.
#[derive(Default)]
struct Checker {
    refuse: Mutex<Vec<String>>,
    seen: Mutex<Vec<Seen>>,
}

#[async_trait]
impl RefreshValidator for Checker {
    async fn validate(
        &self,
        session: &str,
        previous: &UserTokens,
        response: &TokenResponse,
    ) -> Result<(), TokenError> {
        let id = response
            .id_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned());
        self.seen.lock().unwrap().push((
            session.to_owned(),
            previous
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            id.clone(),
        ));
        match id {
            Some(id) if self.refuse.lock().unwrap().contains(&id) => Err(
                TokenError::InvalidRefreshResponse("ID token names another subject".into()),
            ),
            _ => Ok(()),
        }
    }
}

struct Fixture {
    idp: MockIdp,
    clock: ManualClock,
    store: Arc<InMemoryUserTokenStore>,
    manager: Arc<UserTokenManager>,
    checker: Arc<Checker>,
}

async fn fixture(behaviour: Behaviour, options: UserTokenOptions) -> Fixture {
    let idp = MockIdp::with(behaviour).await;
    idp.seed_refresh_token("rt-0");
    let clock = ManualClock::new(T0);
    let store = Arc::new(InMemoryUserTokenStore::new(Arc::new(clock.clone())));
    store.insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    let checker = Arc::new(Checker::default());
    let manager = Arc::new(
        UserTokenManager::new(idp.client(&clock), options, Arc::new(clock.clone()))
            .with_refresh_validator(checker.clone()),
    );
    Fixture {
        idp,
        clock,
        store,
        manager,
        checker,
    }
}

impl Fixture {
    async fn get(&self) -> Result<ManagedToken, TokenError> {
        self.manager
            .get_access_token(self.store.as_ref(), S, &TokenParams::default(), None)
            .await
    }
}

fn with_id_token_on_refresh() -> Behaviour {
    Behaviour {
        id_token_on_refresh: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn refused_refresh_response_is_not_stored_keeps_the_session_and_releases_the_lease() {
    let f = fixture(with_id_token_on_refresh(), UserTokenOptions::default()).await;
    // The mock numbers what it issues: the first refresh answers id-1.
    f.checker.refuse.lock().unwrap().push("id-1".into());
    f.clock.advance(60); // expired: no fallback token
    let before = f.store.get(S).unwrap();
    let err = f.get().await.unwrap_err();
    assert!(
        matches!(&err, TokenError::InvalidRefreshResponse(r) if r.contains("another subject")),
        "{err:?}"
    );
    assert!(!err.ends_session(), "a hostile IdP answer is no logout");
    assert!(!err.is_transient());
    assert_eq!(err.kind(), "invalid_refresh_response");
    assert_eq!(f.store.get(S).unwrap(), before, "nothing stored");
    assert_eq!(f.idp.token_calls(), 1);
    // The validator saw the tokens the refresh started from and the response.
    let seen = f.checker.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(
            S.to_owned(),
            Some("rt-0".to_owned()),
            Some("id-1".to_owned())
        )]
    );
    // The cross-instance lease was released: another holder gets it at once.
    assert!(f
        .store
        .acquire_lease(S, "other-instance", Duration::from_secs(15))
        .await
        .unwrap());
    f.store.release_lease(S, "other-instance").await.unwrap();
    // Backed off like a transient failure: no IdP call per API call.
    assert_eq!(f.get().await.unwrap_err(), err);
    assert_eq!(f.idp.token_calls(), 1);
}

#[tokio::test]
async fn refused_refresh_response_never_hands_out_its_access_token() {
    let f = fixture(with_id_token_on_refresh(), UserTokenOptions::default()).await;
    f.checker.refuse.lock().unwrap().push("id-1".into());
    // Inside the refresh buffer, still valid: the old token is served, never at-1.
    f.clock.advance(45);
    let t = f.get().await.unwrap();
    assert_eq!(t.access_token().expose_secret(), "at-0");
    assert_eq!(f.idp.token_calls(), 1);
    assert_eq!(
        f.store.get(S).unwrap().access_token.value.expose_secret(),
        "at-0"
    );
}

#[tokio::test]
async fn accepted_refresh_response_is_stored() {
    let f = fixture(with_id_token_on_refresh(), UserTokenOptions::default()).await;
    f.checker.refuse.lock().unwrap().push("id-99".into());
    f.clock.advance(60);
    assert_eq!(
        f.get().await.unwrap().access_token().expose_secret(),
        "at-1"
    );
    let stored = f.store.get(S).unwrap();
    assert_eq!(stored.id_token.unwrap().expose_secret(), "id-1");
    assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt-1");
}

#[tokio::test]
async fn refresh_refused_with_any_4xx_ends_the_session_whatever_the_body() {
    let cases: &[(u16, &str, bool)] = &[
        (400, "", true),
        (400, "<html><body>Bad Request</body></html>", true),
        (400, r#"{"message":"token revoked"}"#, true),
        (401, r#"{"error":"invalid_client"}"#, true),
        (401, "", true),
        (403, "", true),
        (429, "", false),
        (500, "", false),
        (503, r#"{"error":"invalid_grant"}"#, false),
    ];
    for (status, body, ends) in cases {
        let f = fixture(Behaviour::default(), UserTokenOptions::default()).await;
        f.idp
            .set(|b| b.fail_with = Some((*status, (*body).to_owned())));
        f.clock.advance(60);
        let before = f.store.get(S).unwrap();
        let err = f.get().await.unwrap_err();
        assert_eq!(err.ends_session(), *ends, "{status} {body:?}: {err:?}");
        assert_eq!(err.is_transient(), !*ends, "{status} {body:?}: {err:?}");
        assert_eq!(f.store.get(S).unwrap(), before, "{status}: nothing stored");
    }
}

#[tokio::test]
async fn main_token_refresh_keeps_the_login_resource_rfc8707() {
    let f = fixture(
        Behaviour::default(),
        UserTokenOptions {
            resource: Some("urn:my-api".into()),
            ..Default::default()
        },
    )
    .await;
    f.clock.advance(60);
    assert_eq!(
        f.get().await.unwrap().access_token().expose_secret(),
        "at-1-r:urn:my-api"
    );
    assert_eq!(f.idp.last_request().get("resource"), Some("urn:my-api"));
    let stored = f.store.get(S).unwrap();
    assert_eq!(
        stored.access_token.value.expose_secret(),
        "at-1-r:urn:my-api",
        "still the session's main token"
    );
    assert!(stored.by_resource.is_empty());
    // A route's own resource wins for its per-resource token.
    let params = TokenParams::default().with_resource("urn:orders");
    f.manager
        .get_access_token(f.store.as_ref(), S, &params, None)
        .await
        .unwrap();
    assert_eq!(f.idp.last_request().get("resource"), Some("urn:orders"));
}

#[tokio::test]
async fn with_refresh_lock_waits_for_an_in_flight_refresh_and_sees_its_rotated_token() {
    let f = fixture(
        Behaviour {
            delay: Duration::from_millis(300),
            ..Default::default()
        },
        UserTokenOptions::default(),
    )
    .await;
    f.clock.advance(60);
    let refreshing = {
        let f_manager = f.manager.clone();
        let store = f.store.clone();
        tokio::spawn(async move {
            f_manager
                .get_access_token(store.as_ref(), S, &TokenParams::default(), None)
                .await
        })
    };
    // Wait until the refresh is at the IdP (it holds the lock and the lease).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while f.idp.token_calls() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "refresh never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let store = f.store.clone();
    let read = f
        .manager
        .with_refresh_lock(f.store.as_ref(), S, || async move {
            store.get(S).unwrap().refresh_token.unwrap()
        })
        .await;
    assert_eq!(
        read.expose_secret(),
        "rt-1",
        "the end of a session sees the refresh token a concurrent refresh stored"
    );
    assert!(refreshing.await.unwrap().is_ok());
}

#[tokio::test]
async fn with_refresh_lock_holds_the_lease_and_releases_it() {
    let f = fixture(Behaviour::default(), UserTokenOptions::default()).await;
    let store = f.store.clone();
    let other_got_it = f
        .manager
        .with_refresh_lock(f.store.as_ref(), S, || async move {
            store
                .acquire_lease(S, "other-instance", Duration::from_secs(15))
                .await
                .unwrap()
        })
        .await;
    assert!(!other_got_it, "another instance cannot refresh meanwhile");
    assert!(f
        .store
        .acquire_lease(S, "other-instance", Duration::from_secs(15))
        .await
        .unwrap());
}

#[tokio::test]
async fn with_refresh_lock_goes_on_when_the_lease_stays_held_elsewhere() {
    let f = fixture(
        Behaviour::default(),
        UserTokenOptions {
            lease_poll_interval: Duration::from_millis(5),
            lease_wait: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .await;
    assert!(f
        .store
        .acquire_lease(S, "stuck-instance", Duration::from_secs(15))
        .await
        .unwrap());
    let ran = tokio::time::timeout(
        Duration::from_secs(5),
        f.manager
            .with_refresh_lock(f.store.as_ref(), S, || async { true }),
    )
    .await
    .unwrap();
    assert!(ran, "ending a session does not depend on the lease");
    // The stuck holder's lease is untouched.
    assert!(!f
        .store
        .acquire_lease(S, "other", Duration::from_secs(15))
        .await
        .unwrap());
}
