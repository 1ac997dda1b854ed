//! ClientCredentialsManager: cache keys, lifetimes, single-flight, failures.

use std::sync::Arc;
use std::time::Duration;

use portcullis_token::*;

use crate::idp::{Behaviour, MockIdp};

const T0: i64 = 1_700_000_000;

async fn manager(
    behaviour: Behaviour,
    defaults: TokenParams,
) -> (MockIdp, ManualClock, Arc<ClientCredentialsManager>) {
    let idp = MockIdp::with(behaviour).await;
    let clock = ManualClock::new(T0);
    let mut m = ClientCredentialsManager::new(Arc::new(clock.clone()), Duration::from_secs(60));
    m.add_client("orders", idp.client(&clock), defaults);
    (idp, clock, Arc::new(m))
}

fn value(t: &ManagedToken) -> String {
    t.access_token().expose_secret().to_owned()
}

fn scope(s: &str) -> TokenParams {
    TokenParams::default().with_scope(s)
}

#[tokio::test]
async fn cc_cache_keys_by_scope_regression_cve() {
    let (idp, _clock, m) = manager(
        Behaviour {
            delay: Duration::from_millis(50),
            ..Default::default()
        },
        TokenParams::default(),
    )
    .await;
    let (read, write) = (scope("orders.read"), scope("orders.write"));
    let (a, b) = tokio::join!(m.get_token("orders", &read), m.get_token("orders", &write));
    let (a, b) = (value(&a.unwrap()), value(&b.unwrap()));
    assert_ne!(a, b);
    assert!(a.ends_with("-s:orders.read"), "{a}");
    assert!(b.ends_with("-s:orders.write"), "{b}");
    assert_eq!(idp.token_calls(), 2);
    // and each is cached under its own key
    assert_eq!(
        value(&m.get_token("orders", &scope("orders.read")).await.unwrap()),
        a
    );
    assert_eq!(
        value(&m.get_token("orders", &scope("orders.write")).await.unwrap()),
        b
    );
    assert_eq!(idp.token_calls(), 2);
}

#[tokio::test]
async fn cc_cache_keys_by_resource_and_extra_parameters() {
    let (idp, _clock, m) = manager(Behaviour::default(), TokenParams::default()).await;
    let variants = [
        TokenParams::default(),
        TokenParams::default().with_resource("urn:a"),
        TokenParams::default().with_resource("urn:b"),
        TokenParams::default().with_extra("tenant", "1"),
        TokenParams::default().with_extra("tenant", "2"),
    ];
    let mut seen = std::collections::HashSet::new();
    for p in &variants {
        assert!(seen.insert(value(&m.get_token("orders", p).await.unwrap())));
    }
    assert_eq!(idp.token_calls(), variants.len());
    assert_eq!(idp.requests()[3].get("tenant"), Some("1"));
}

#[tokio::test]
async fn cc_hundred_concurrent_callers_cause_one_request() {
    let (idp, _clock, m) = manager(
        Behaviour {
            delay: Duration::from_millis(50),
            ..Default::default()
        },
        scope("api"),
    )
    .await;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.get_token("orders", &TokenParams::default()).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(value(&t.await.unwrap().unwrap()), "at-1-s:api");
    }
    assert_eq!(idp.token_calls(), 1);
}

#[tokio::test]
async fn cc_defaults_are_merged_under_the_call_params() {
    let defaults = TokenParams::default()
        .with_scope("api")
        .with_resource("urn:api")
        .with_extra("a", "1");
    let (idp, _clock, m) = manager(Behaviour::default(), defaults).await;
    m.get_token("orders", &TokenParams::default().with_scope("api.admin"))
        .await
        .unwrap();
    let req = idp.last_request();
    assert_eq!(req.get("grant_type"), Some("client_credentials"));
    assert_eq!(req.get("scope"), Some("api.admin"));
    assert_eq!(req.get("resource"), Some("urn:api"));
    assert_eq!(req.get("a"), Some("1"));
    // explicitly passing the defaults is the same cache entry as passing nothing
    m.get_token("orders", &TokenParams::default())
        .await
        .unwrap();
    m.get_token("orders", &TokenParams::default().with_scope("api"))
        .await
        .unwrap();
    assert_eq!(idp.token_calls(), 2);
}

#[tokio::test]
async fn cc_token_is_cached_until_lifetime_minus_buffer() {
    let (idp, clock, m) = manager(Behaviour::default(), TokenParams::default()).await;
    let p = TokenParams::default();
    assert_eq!(value(&m.get_token("orders", &p).await.unwrap()), "at-1");
    clock.advance(3539);
    assert_eq!(value(&m.get_token("orders", &p).await.unwrap()), "at-1");
    clock.advance(1);
    assert_eq!(value(&m.get_token("orders", &p).await.unwrap()), "at-2");
    assert_eq!(idp.token_calls(), 2);
}

#[tokio::test]
async fn cc_short_lived_token_is_cached_for_half_its_life() {
    let (idp, clock, m) = manager(
        Behaviour {
            expires_in: Some(30),
            ..Default::default()
        },
        TokenParams::default(),
    )
    .await;
    let p = TokenParams::default();
    for _ in 0..10 {
        assert_eq!(value(&m.get_token("orders", &p).await.unwrap()), "at-1");
    }
    clock.advance(14);
    assert_eq!(value(&m.get_token("orders", &p).await.unwrap()), "at-1");
    clock.advance(1);
    assert_eq!(value(&m.get_token("orders", &p).await.unwrap()), "at-2");
    assert_eq!(idp.token_calls(), 2);
}

#[tokio::test]
async fn cc_failures_are_not_cached() {
    let (idp, _clock, m) = manager(Behaviour::default(), TokenParams::default()).await;
    idp.set(|b| b.fail_with = Some((503, String::new())));
    let err = m
        .get_token("orders", &TokenParams::default())
        .await
        .unwrap_err();
    assert!(err.is_transient());
    idp.set(|b| b.fail_with = Some((401, r#"{"error":"invalid_client"}"#.into())));
    let err = m
        .get_token("orders", &TokenParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TokenError::Rejected { status: 401, ref error, .. } if error == "invalid_client"),
        "{err:?}"
    );
    idp.set(|b| b.fail_with = None);
    assert_eq!(
        value(
            &m.get_token("orders", &TokenParams::default())
                .await
                .unwrap()
        ),
        "at-1"
    );
    assert_eq!(idp.token_calls(), 3);
}

#[tokio::test]
async fn cc_concurrent_callers_share_one_failure() {
    let (idp, _clock, m) = manager(
        Behaviour {
            delay: Duration::from_millis(50),
            fail_with: Some((503, String::new())),
            ..Default::default()
        },
        TokenParams::default(),
    )
    .await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.get_token("orders", &TokenParams::default()).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap_err().is_transient());
    }
    assert_eq!(idp.token_calls(), 1);
}

#[tokio::test]
async fn cc_renew_replaces_only_the_stale_token() {
    let (idp, _clock, m) = manager(Behaviour::default(), TokenParams::default()).await;
    let p = TokenParams::default();
    let stale = m.get_token("orders", &p).await.unwrap();
    let fresh = m.renew("orders", &p, &stale).await.unwrap();
    assert_eq!(value(&fresh), "at-2");
    // a second caller renewing the same stale token gets the fresh one, no new request
    assert_eq!(value(&m.renew("orders", &p, &stale).await.unwrap()), "at-2");
    assert_eq!(idp.token_calls(), 2);
    m.invalidate("orders", &p).await;
    assert_eq!(value(&m.get_token("orders", &p).await.unwrap()), "at-3");
}

#[tokio::test]
async fn cc_unknown_client_is_a_configuration_error() {
    let (_idp, _clock, m) = manager(Behaviour::default(), TokenParams::default()).await;
    let err = m
        .get_token("nope", &TokenParams::default())
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::InvalidParams(_)));
}
