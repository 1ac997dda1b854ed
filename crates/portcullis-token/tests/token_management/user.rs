//! UserTokenManager: refresh timing, single-flight, failure semantics, stores and leases.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use portcullis_token::*;

use crate::idp::{session_tokens, Behaviour, MockIdp};

const T0: i64 = 1_700_000_000;
const S: &str = "session-1";

struct Fixture {
    idp: MockIdp,
    clock: ManualClock,
    store: Arc<InMemoryUserTokenStore>,
    manager: Arc<UserTokenManager>,
}

async fn fixture(behaviour: Behaviour, options: UserTokenOptions) -> Fixture {
    let idp = MockIdp::with(behaviour).await;
    let clock = ManualClock::new(T0);
    let store = Arc::new(InMemoryUserTokenStore::new(Arc::new(clock.clone())));
    let manager = Arc::new(UserTokenManager::new(
        idp.client(&clock),
        options,
        Arc::new(clock.clone()),
    ));
    idp.seed_refresh_token("rt-0");
    Fixture {
        idp,
        clock,
        store,
        manager,
    }
}

async fn logged_in(lifetime: Option<i64>) -> Fixture {
    let f = fixture(Behaviour::default(), UserTokenOptions::default()).await;
    f.store
        .insert(S, session_tokens("at-0", Some("rt-0"), T0, lifetime));
    f
}

impl Fixture {
    async fn get(&self) -> Result<ManagedToken, TokenError> {
        self.get_with(&TokenParams::default()).await
    }
    async fn get_with(&self, params: &TokenParams) -> Result<ManagedToken, TokenError> {
        self.manager
            .get_access_token(self.store.as_ref(), S, params, None)
            .await
    }
    fn stored(&self) -> UserTokens {
        self.store.get(S).unwrap()
    }
}

fn value(t: &ManagedToken) -> &str {
    t.access_token().expose_secret()
}

#[tokio::test]
async fn valid_token_is_served_from_the_store_without_an_idp_call() {
    let f = logged_in(Some(3600)).await;
    f.clock.advance(3600 - 61);
    let t = f.get().await.unwrap();
    assert_eq!(value(&t), "at-0");
    assert_eq!(t.authorization_header().to_str().unwrap(), "Bearer at-0");
    assert_eq!(f.idp.token_calls(), 0);
}

#[tokio::test]
async fn token_without_expiry_is_treated_as_valid() {
    let f = logged_in(None).await;
    f.clock.advance(365 * 24 * 3600);
    assert_eq!(value(&f.get().await.unwrap()), "at-0");
    assert_eq!(f.idp.token_calls(), 0);
}

#[tokio::test]
async fn token_inside_the_buffer_is_refreshed_and_stored() {
    let f = logged_in(Some(3600)).await;
    f.clock.advance(3600 - 60);
    let t = f.get().await.unwrap();
    assert_eq!(value(&t), "at-1");
    assert_eq!(t.expires_at(), Some(T0 + 3540 + 3600));
    let req = f.idp.last_request();
    assert_eq!(req.get("grant_type"), Some("refresh_token"));
    assert_eq!(req.get("refresh_token"), Some("rt-0"));
    assert_eq!(req.get("resource"), None);
    let stored = f.stored();
    assert_eq!(stored.access_token.value.expose_secret(), "at-1");
    assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt-1");
    // later calls use the stored token
    assert_eq!(value(&f.get().await.unwrap()), "at-1");
    assert_eq!(f.idp.token_calls(), 1);
}

#[tokio::test]
async fn per_call_buffer_overrides_the_default() {
    let f = logged_in(Some(3600)).await;
    f.clock.advance(3000);
    let t = f
        .manager
        .get_access_token(
            f.store.as_ref(),
            S,
            &TokenParams::default(),
            Some(Duration::from_secs(10)),
        )
        .await;
    assert_eq!(value(&t.unwrap()), "at-0");
    let t = f
        .manager
        .get_access_token(
            f.store.as_ref(),
            S,
            &TokenParams::default(),
            Some(Duration::from_secs(900)),
        )
        .await;
    assert_eq!(value(&t.unwrap()), "at-1");
}

#[tokio::test]
async fn lifetime_shorter_than_buffer_is_not_refreshed_every_call() {
    let f = fixture(
        Behaviour {
            expires_in: Some(30),
            ..Default::default()
        },
        UserTokenOptions::default(),
    )
    .await;
    f.store
        .insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(30)));
    for _ in 0..10 {
        assert_eq!(value(&f.get().await.unwrap()), "at-0");
    }
    f.clock.advance(14);
    assert_eq!(value(&f.get().await.unwrap()), "at-0");
    assert_eq!(f.idp.token_calls(), 0);
    f.clock.advance(1); // half of the 30 s lifetime
    assert_eq!(value(&f.get().await.unwrap()), "at-1");
    for _ in 0..10 {
        assert_eq!(value(&f.get().await.unwrap()), "at-1");
    }
    assert_eq!(f.idp.token_calls(), 1);
}

/// A store without lease support (the trait's default: always granted), as a single-instance
/// service would write it: only the in-process single-flight prevents duplicate refreshes.
struct NoLeaseStore(InMemoryUserTokenStore);

#[async_trait]
impl UserTokenStore for NoLeaseStore {
    async fn load(&self, session: &str) -> Result<Option<(UserTokens, u64)>, TokenError> {
        self.0.load(session).await
    }
    async fn compare_and_set(
        &self,
        session: &str,
        v: u64,
        tokens: &UserTokens,
    ) -> Result<bool, TokenError> {
        self.0.compare_and_set(session, v, tokens).await
    }
}

#[tokio::test]
async fn concurrent_refresh_calls_idp_once() {
    let f = fixture(
        Behaviour {
            delay: Duration::from_millis(100),
            ..Default::default()
        },
        UserTokenOptions::default(),
    )
    .await;
    let store = Arc::new(NoLeaseStore(InMemoryUserTokenStore::new(Arc::new(
        f.clock.clone(),
    ))));
    store
        .0
        .insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    f.clock.advance(60);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (m, store) = (f.manager.clone(), store.clone());
            tokio::spawn(async move {
                m.get_access_token(store.as_ref(), S, &TokenParams::default(), None)
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(value(&t.await.unwrap().unwrap()), "at-1");
    }
    // the IdP enforces one-time refresh tokens: a second refresh with rt-0 would have failed
    assert_eq!(f.idp.token_calls(), 1);
    assert_eq!(f.manager.sessions_in_flight(), 0);
}

#[tokio::test]
async fn late_arrival_holding_the_old_refresh_token_reuses_the_result() {
    let f = logged_in(Some(60)).await;
    f.clock.advance(60);
    assert_eq!(value(&f.get().await.unwrap()), "at-1");
    // A caller that decided to refresh on the old tokens (renew with the old token) gets the
    // stored result; the IdP never sees rt-0 again.
    let stale = {
        let other = logged_in(Some(60)).await;
        other.get().await.unwrap()
    };
    let t = f
        .manager
        .renew(f.store.as_ref(), S, &TokenParams::default(), &stale)
        .await
        .unwrap();
    assert_eq!(value(&t), "at-1");
    assert_eq!(f.idp.token_calls(), 1);
    assert!(
        f.idp
            .requests()
            .iter()
            .filter(|r| r.get("refresh_token") == Some("rt-0"))
            .count()
            == 1
    );
}

#[tokio::test]
async fn refresh_without_id_token_keeps_the_old_one() {
    let f = fixture(
        Behaviour {
            rotate_refresh_tokens: false,
            ..Default::default()
        },
        UserTokenOptions::default(),
    )
    .await;
    f.store
        .insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    f.clock.advance(60);
    f.get().await.unwrap();
    let stored = f.stored();
    assert_eq!(stored.access_token.value.expose_secret(), "at-1");
    assert_eq!(stored.id_token.unwrap().expose_secret(), "id-0");
    assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt-0");
}

#[tokio::test]
async fn refresh_with_id_token_replaces_it() {
    let f = fixture(
        Behaviour {
            id_token_on_refresh: true,
            ..Default::default()
        },
        UserTokenOptions::default(),
    )
    .await;
    f.store
        .insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    f.clock.advance(60);
    f.get().await.unwrap();
    assert_eq!(f.stored().id_token.unwrap().expose_secret(), "id-1");
}

#[tokio::test]
async fn invalid_grant_ends_the_session_and_keeps_stored_tokens() {
    let f = logged_in(Some(60)).await;
    f.idp.state.valid_refresh_tokens.lock().unwrap().clear(); // revoked at the IdP
    f.clock.advance(60);
    let before = f.stored();
    let err = f.get().await.unwrap_err();
    assert!(matches!(err, TokenError::InvalidGrant { .. }), "{err:?}");
    assert!(err.ends_session());
    assert_eq!(f.stored(), before);
    // not backed off: a session-ending error is the caller's to act on
    assert!(f.get().await.unwrap_err().ends_session());
    assert_eq!(f.idp.token_calls(), 2);
}

#[tokio::test]
async fn expired_token_without_refresh_token_ends_the_session() {
    let f = logged_in(Some(60)).await;
    f.store
        .insert(S, session_tokens("at-0", None, T0, Some(60)));
    f.clock.advance(59);
    // inside the buffer but unexpired: still served
    assert_eq!(value(&f.get().await.unwrap()), "at-0");
    f.clock.advance(1);
    let err = f.get().await.unwrap_err();
    assert_eq!(err, TokenError::NoRefreshToken);
    assert!(err.ends_session());
    assert_eq!(f.idp.token_calls(), 0);
}

#[tokio::test]
async fn missing_session_ends_the_session() {
    let f = logged_in(Some(60)).await;
    let err = f
        .manager
        .get_access_token(f.store.as_ref(), "nope", &TokenParams::default(), None)
        .await
        .unwrap_err();
    assert_eq!(err, TokenError::SessionNotFound);
    assert!(err.ends_session());
}

#[tokio::test]
async fn idp_down_keeps_tokens_and_backs_off() {
    let f = logged_in(Some(60)).await;
    f.idp.set(|b| b.fail_with = Some((503, "down".into())));
    f.clock.advance(60); // expired
    let before = f.stored();
    let err = f.get().await.unwrap_err();
    assert!(err.is_transient() && !err.ends_session(), "{err:?}");
    assert_eq!(f.idp.token_calls(), 1);
    // within the back-off: same error, fast, no IdP call
    f.clock.advance(1);
    for _ in 0..20 {
        assert_eq!(f.get().await.unwrap_err(), err);
    }
    assert_eq!(f.idp.token_calls(), 1);
    assert_eq!(f.stored(), before);
    // after the back-off: tried again; recovers once the IdP is back
    f.clock.advance(1);
    let again = f.get().await.expect_err("the IdP is still down");
    assert!(again.is_transient() && !again.ends_session(), "{again:?}");
    assert_eq!(f.idp.token_calls(), 2);
    f.idp.set(|b| b.fail_with = None);
    f.clock.advance(2);
    assert_eq!(value(&f.get().await.unwrap()), "at-1");
}

#[tokio::test]
async fn idp_down_serves_the_unexpired_token_meanwhile() {
    let f = logged_in(Some(3600)).await;
    f.idp
        .set(|b| b.fail_with = Some((500, r#"{"error":"server_error"}"#.into())));
    f.clock.advance(3600 - 30); // inside the buffer, not expired
    assert_eq!(value(&f.get().await.unwrap()), "at-0");
    assert_eq!(value(&f.get().await.unwrap()), "at-0");
    assert_eq!(f.idp.token_calls(), 1);
    f.clock.advance(30); // now expired: the error surfaces
    assert!(f.get().await.unwrap_err().is_transient());
}

#[tokio::test]
async fn idp_timeout_is_transient() {
    let idp = MockIdp::with(Behaviour {
        delay: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let clock = ManualClock::new(T0);
    let client = idp.client_with(
        idp.config().with_timeout(Duration::from_millis(200)),
        &clock,
    );
    let store = InMemoryUserTokenStore::new(Arc::new(clock.clone()));
    store.insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    let manager =
        UserTokenManager::new(client, UserTokenOptions::default(), Arc::new(clock.clone()));
    clock.advance(60);
    let err = manager
        .get_access_token(&store, S, &TokenParams::default(), None)
        .await
        .unwrap_err();
    assert_eq!(err, TokenError::Timeout);
    assert!(err.is_transient());
}

#[tokio::test]
async fn per_resource_token_is_stored_by_params_and_rotates_the_main_refresh_token() {
    let f = logged_in(Some(3600)).await;
    let params = TokenParams::default()
        .with_resource("urn:orders")
        .with_scope("orders.read");
    let t = f.get_with(&params).await.unwrap();
    assert_eq!(value(&t), "at-1-s:orders.read-r:urn:orders");
    let req = f.idp.last_request();
    assert_eq!(req.get("refresh_token"), Some("rt-0"));
    assert_eq!(req.get("resource"), Some("urn:orders"));
    assert_eq!(req.get("scope"), Some("orders.read"));
    let stored = f.stored();
    assert_eq!(stored.access_token.value.expose_secret(), "at-0");
    assert_eq!(
        stored.by_resource[&params.cache_key()]
            .value
            .expose_secret(),
        "at-1-s:orders.read-r:urn:orders"
    );
    assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt-1");
    // cached per params; the main token is untouched
    assert_eq!(
        value(&f.get_with(&params).await.unwrap()),
        "at-1-s:orders.read-r:urn:orders"
    );
    assert_eq!(value(&f.get().await.unwrap()), "at-0");
    assert_eq!(f.idp.token_calls(), 1);
    // the main token's refresh uses the rotated refresh token
    f.clock.advance(3600);
    assert_eq!(value(&f.get().await.unwrap()), "at-2");
    assert_eq!(f.idp.last_request().get("refresh_token"), Some("rt-1"));
}

#[tokio::test]
async fn concurrent_refreshes_of_different_resources_never_reuse_a_refresh_token() {
    let f = fixture(
        Behaviour {
            delay: Duration::from_millis(50),
            ..Default::default()
        },
        UserTokenOptions::default(),
    )
    .await;
    f.store
        .insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    f.clock.advance(60);
    let f = Arc::new(f);
    let tasks: Vec<_> = ["", "urn:a", "urn:b", "urn:c"]
        .into_iter()
        .map(|r| {
            let f = f.clone();
            let params = if r.is_empty() {
                TokenParams::default()
            } else {
                TokenParams::default().with_resource(r)
            };
            tokio::spawn(async move { f.get_with(&params).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap(); // a rotating IdP answers invalid_grant to a reused refresh token
    }
    assert_eq!(f.idp.token_calls(), 4);
    let used: std::collections::HashSet<_> = f
        .idp
        .requests()
        .iter()
        .map(|r| r.get("refresh_token").unwrap().to_owned())
        .collect();
    assert_eq!(used.len(), 4);
}

#[tokio::test]
async fn renew_after_401_refreshes_once_for_concurrent_callers() {
    let f = Arc::new(logged_in(Some(3600)).await);
    let stale = f.get().await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (f, stale) = (f.clone(), stale.clone());
            tokio::spawn(async move {
                f.manager
                    .renew(f.store.as_ref(), S, &TokenParams::default(), &stale)
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(value(&t.await.unwrap().unwrap()), "at-1");
    }
    assert_eq!(f.idp.token_calls(), 1);
}

#[tokio::test]
async fn renew_with_an_already_replaced_token_does_not_call_the_idp() {
    let f = logged_in(Some(3600)).await;
    let stale = f.get().await.unwrap();
    let fresh = f
        .manager
        .renew(f.store.as_ref(), S, &TokenParams::default(), &stale)
        .await
        .unwrap();
    let again = f
        .manager
        .renew(f.store.as_ref(), S, &TokenParams::default(), &stale)
        .await
        .unwrap();
    assert_eq!(value(&again), value(&fresh));
    assert_eq!(f.idp.token_calls(), 1);
}

#[tokio::test]
async fn revoke_refresh_token_calls_the_revocation_endpoint() {
    let f = logged_in(Some(3600)).await;
    f.manager.revoke_refresh_token(&f.stored()).await.unwrap();
    let rec = f.idp.state.revocations.lock().unwrap()[0].clone();
    assert_eq!(rec.get("token"), Some("rt-0"));
    assert_eq!(rec.get("token_type_hint"), Some("refresh_token"));
    // no refresh token: nothing to do
    f.manager
        .revoke_refresh_token(&session_tokens("a", None, T0, None))
        .await
        .unwrap();
    assert_eq!(f.idp.state.revoke_calls.load(Ordering::SeqCst), 1);
}

/// Wraps the in-memory store with fault injection and counters.
struct TestStore {
    inner: InMemoryUserTokenStore,
    /// Lease held by another instance until cleared.
    foreign_lease: Mutex<bool>,
    leases: AtomicUsize,
    /// Next N compare_and_set calls: bump the version first (unrelated write).
    touch_before_cas: AtomicUsize,
    /// Next N compare_and_set calls fail with a store error.
    fail_cas: AtomicUsize,
}

impl TestStore {
    fn new(clock: &ManualClock) -> Self {
        Self {
            inner: InMemoryUserTokenStore::new(Arc::new(clock.clone())),
            foreign_lease: Mutex::new(false),
            leases: AtomicUsize::new(0),
            touch_before_cas: AtomicUsize::new(0),
            fail_cas: AtomicUsize::new(0),
        }
    }
}

fn take(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl UserTokenStore for TestStore {
    async fn load(&self, session: &str) -> Result<Option<(UserTokens, u64)>, TokenError> {
        self.inner.load(session).await
    }
    async fn compare_and_set(
        &self,
        session: &str,
        v: u64,
        tokens: &UserTokens,
    ) -> Result<bool, TokenError> {
        if take(&self.fail_cas) {
            return Err(TokenError::Store("connection reset".into()));
        }
        if take(&self.touch_before_cas) {
            self.inner.touch(session);
        }
        self.inner.compare_and_set(session, v, tokens).await
    }
    async fn acquire_lease(
        &self,
        session: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, TokenError> {
        self.leases.fetch_add(1, Ordering::SeqCst);
        if *self.foreign_lease.lock().unwrap() {
            return Ok(false);
        }
        self.inner.acquire_lease(session, holder, ttl).await
    }
    async fn release_lease(&self, session: &str, holder: &str) -> Result<(), TokenError> {
        self.inner.release_lease(session, holder).await
    }
}

#[tokio::test]
async fn two_instances_sharing_a_store_refresh_once() {
    let idp = MockIdp::with(Behaviour {
        delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    idp.seed_refresh_token("rt-0");
    let clock = ManualClock::new(T0);
    let store = Arc::new(InMemoryUserTokenStore::new(Arc::new(clock.clone())));
    store.insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    let options = UserTokenOptions {
        lease_poll_interval: Duration::from_millis(10),
        ..Default::default()
    };
    let instances: Vec<_> = (0..2)
        .map(|_| {
            Arc::new(UserTokenManager::new(
                idp.client(&clock),
                options.clone(),
                Arc::new(clock.clone()),
            ))
        })
        .collect();
    clock.advance(60);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (m, store) = (instances[i % 2].clone(), store.clone());
            tokio::spawn(async move {
                m.get_access_token(store.as_ref(), S, &TokenParams::default(), None)
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(value(&t.await.unwrap().unwrap()), "at-1");
    }
    assert_eq!(idp.token_calls(), 1);
}

#[tokio::test]
async fn waiting_instance_rereads_the_store_instead_of_using_its_old_refresh_token() {
    let f = fixture(
        Behaviour::default(),
        UserTokenOptions {
            lease_poll_interval: Duration::from_millis(5),
            ..Default::default()
        },
    )
    .await;
    let store = Arc::new(TestStore::new(&f.clock));
    store
        .inner
        .insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    *store.foreign_lease.lock().unwrap() = true;
    f.clock.advance(60);
    let waiting = {
        let (m, store) = (f.manager.clone(), store.clone());
        tokio::spawn(async move {
            m.get_access_token(store.as_ref(), S, &TokenParams::default(), None)
                .await
        })
    };
    // Once the waiting request is polling the foreign lease (seen twice, not guessed from
    // a sleep), the other instance refreshes (rt-0 is spent at the IdP) and stores its result.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.leases.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the waiting request never tried the lease"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    f.idp.state.valid_refresh_tokens.lock().unwrap().clear();
    store.inner.insert(
        S,
        session_tokens("at-other", Some("rt-other"), T0 + 60, Some(3600)),
    );
    let t = waiting.await.unwrap().unwrap();
    assert_eq!(value(&t), "at-other");
    assert_eq!(f.idp.token_calls(), 0);
    assert!(store.leases.load(Ordering::SeqCst) >= 2, "polled the lease");
}

#[tokio::test]
async fn lease_held_elsewhere_for_too_long_is_transient() {
    let f = fixture(
        Behaviour::default(),
        UserTokenOptions {
            lease_poll_interval: Duration::from_millis(5),
            lease_wait: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .await;
    let store = TestStore::new(&f.clock);
    store
        .inner
        .insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    *store.foreign_lease.lock().unwrap() = true;
    f.clock.advance(60);
    let err = f
        .manager
        .get_access_token(&store, S, &TokenParams::default(), None)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(f.idp.token_calls(), 0);
    assert_eq!(
        store
            .inner
            .get(S)
            .unwrap()
            .access_token
            .value
            .expose_secret(),
        "at-0"
    );
}

#[tokio::test]
async fn lease_is_renewed_while_a_slow_idp_call_runs() {
    let f = fixture(
        Behaviour {
            delay: Duration::from_millis(800),
            ..Default::default()
        },
        UserTokenOptions {
            lease_ttl: Duration::from_millis(600),
            ..Default::default()
        },
    )
    .await;
    let store = TestStore::new(&f.clock);
    store
        .inner
        .insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    f.clock.advance(60);
    let t = f
        .manager
        .get_access_token(&store, S, &TokenParams::default(), None)
        .await
        .unwrap();
    assert_eq!(value(&t), "at-1");
    // one acquisition + renewals every 200 ms during the 800 ms call
    assert!(
        store.leases.load(Ordering::SeqCst) >= 3,
        "{}",
        store.leases.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn version_bump_by_an_unrelated_write_is_retried() {
    let f = logged_in(Some(60)).await;
    let store = TestStore::new(&f.clock);
    store
        .inner
        .insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    store.touch_before_cas.store(2, Ordering::SeqCst);
    f.clock.advance(60);
    let t = f
        .manager
        .get_access_token(&store, S, &TokenParams::default(), None)
        .await
        .unwrap();
    assert_eq!(value(&t), "at-1");
    let stored = store.inner.get(S).unwrap();
    assert_eq!(stored.access_token.value.expose_secret(), "at-1");
    assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt-1");
}

#[tokio::test]
async fn store_failure_after_refresh_keeps_the_rotated_tokens_in_memory() {
    let f = logged_in(Some(60)).await;
    let store = TestStore::new(&f.clock);
    store
        .inner
        .insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    store.fail_cas.store(1, Ordering::SeqCst);
    f.clock.advance(60);
    // the caller still gets the new token
    let t = f
        .manager
        .get_access_token(&store, S, &TokenParams::default(), None)
        .await
        .unwrap();
    assert_eq!(value(&t), "at-1");
    assert_eq!(
        store
            .inner
            .get(S)
            .unwrap()
            .refresh_token
            .unwrap()
            .expose_secret(),
        "rt-0"
    );
    // the next call writes them instead of spending the dead rt-0
    let t = f
        .manager
        .get_access_token(&store, S, &TokenParams::default(), None)
        .await
        .unwrap();
    assert_eq!(value(&t), "at-1");
    assert_eq!(
        store
            .inner
            .get(S)
            .unwrap()
            .refresh_token
            .unwrap()
            .expose_secret(),
        "rt-1"
    );
    assert_eq!(f.idp.token_calls(), 1);
}

#[tokio::test]
async fn store_down_is_transient() {
    struct Down;
    #[async_trait]
    impl UserTokenStore for Down {
        async fn load(&self, _: &str) -> Result<Option<(UserTokens, u64)>, TokenError> {
            Err(TokenError::Store("unreachable".into()))
        }
        async fn compare_and_set(
            &self,
            _: &str,
            _: u64,
            _: &UserTokens,
        ) -> Result<bool, TokenError> {
            Err(TokenError::Store("unreachable".into()))
        }
    }
    let f = logged_in(Some(60)).await;
    let err = f
        .manager
        .get_access_token(&Down, S, &TokenParams::default(), None)
        .await
        .unwrap_err();
    assert!(err.is_transient() && !err.ends_session());
}

#[tokio::test]
async fn lowercase_dpop_token_type_gives_a_dpop_header() {
    let f = fixture(
        Behaviour {
            token_type: "dpop",
            ..Default::default()
        },
        UserTokenOptions::default(),
    )
    .await;
    f.store
        .insert(S, session_tokens("at-0", Some("rt-0"), T0, Some(60)));
    f.clock.advance(60);
    let t = f.get().await.unwrap();
    assert_eq!(t.token_type(), &TokenType::DPoP);
    assert_eq!(t.authorization_header().to_str().unwrap(), "DPoP at-1");
}
