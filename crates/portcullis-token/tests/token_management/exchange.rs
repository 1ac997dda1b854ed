//! RFC 8693 token exchange with a cache keyed by the whole subject token and every parameter.

use std::sync::Arc;
use std::time::Duration;

use portcullis_token::{
    ClientCredentialsManager, ManagedToken, ManualClock, TokenError, TokenExchangeManager,
    TokenParams,
};

use crate::idp::{Behaviour, MockIdp};

const T0: i64 = 1_700_000_000;

/// A subject token (any managed token will do) and an exchange manager on the same IdP.
async fn setup(
    behaviour: Behaviour,
) -> (
    MockIdp,
    ManualClock,
    ClientCredentialsManager,
    TokenExchangeManager,
) {
    let idp = MockIdp::with(behaviour).await;
    let clock = ManualClock::new(T0);
    let mut cc = ClientCredentialsManager::new(Arc::new(clock.clone()), Duration::from_secs(60));
    cc.add_client("subject", idp.client(&clock), TokenParams::default());
    let ex = TokenExchangeManager::new(
        idp.client(&clock),
        Arc::new(clock.clone()),
        Duration::from_secs(60),
    );
    (idp, clock, cc, ex)
}

fn value(t: &ManagedToken) -> String {
    t.access_token().expose_secret().to_owned()
}

fn audience(a: &str) -> TokenParams {
    TokenParams::default().with_extra("audience", a)
}

#[tokio::test]
async fn exchanged_tokens_are_cached_per_subject_and_audience() {
    let (idp, clock, cc, ex) = setup(Behaviour::default()).await;
    let alice = cc
        .get_token("subject", &TokenParams::default().with_scope("alice"))
        .await
        .unwrap();
    let bob = cc
        .get_token("subject", &TokenParams::default().with_scope("bob"))
        .await
        .unwrap();
    let calls = idp.token_calls();

    let a1 = ex.exchange(&alice, &audience("orders")).await.unwrap();
    let a2 = ex.exchange(&alice, &audience("orders")).await.unwrap();
    assert_eq!(value(&a1), value(&a2), "cached");
    assert_eq!(idp.token_calls(), calls + 1);
    let last = idp.last_request();
    assert_eq!(
        last.get("grant_type"),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(last.get("subject_token"), Some(value(&alice).as_str()));
    assert_eq!(
        last.get("subject_token_type"),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(last.get("audience"), Some("orders"));

    // Another user's subject token or another audience never shares the cached token.
    let b1 = ex.exchange(&bob, &audience("orders")).await.unwrap();
    assert_ne!(value(&b1), value(&a1));
    let a3 = ex.exchange(&alice, &audience("billing")).await.unwrap();
    assert_ne!(value(&a3), value(&a1));
    assert_eq!(idp.token_calls(), calls + 3);

    // Near expiry, a new exchange.
    clock.advance(3600 - 30);
    let a4 = ex.exchange(&alice, &audience("orders")).await.unwrap();
    assert_ne!(value(&a4), value(&a1));
}

#[tokio::test]
async fn concurrent_exchanges_make_one_request_and_failures_are_not_cached() {
    let (idp, _clock, cc, ex) = setup(Behaviour {
        delay: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let subject = cc
        .get_token("subject", &TokenParams::default())
        .await
        .unwrap();
    let ex = Arc::new(ex);
    let calls = idp.token_calls();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (ex, subject) = (ex.clone(), subject.clone());
            tokio::spawn(async move {
                ex.exchange(&subject, &audience("orders"))
                    .await
                    .map(|t| value(&t))
            })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        seen.insert(t.await.unwrap().unwrap());
    }
    assert_eq!(seen.len(), 1);
    assert_eq!(idp.token_calls(), calls + 1);

    idp.set(|b| b.fail_with = Some((400, r#"{"error":"invalid_target"}"#.into())));
    let err = ex
        .exchange(&subject, &audience("other"))
        .await
        .expect_err("the IdP refused this exchange");
    assert!(
        matches!(&err, TokenError::Rejected { status: 400, error, .. } if error == "invalid_target"),
        "{err:?}"
    );
    idp.set(|b| b.fail_with = None);
    assert!(
        ex.exchange(&subject, &audience("other")).await.is_ok(),
        "the failure was not cached"
    );
}
