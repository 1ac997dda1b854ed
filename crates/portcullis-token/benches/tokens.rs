//! Token management benchmark (plain `main`, bounded in count and time).
//!
//! Starts a local token endpoint on 127.0.0.1:0 (counts requests, 5 ms simulated latency for
//! the refresh runs) and prints:
//! - `cache_hits_per_sec`: client-credentials tokens served from the cache (1 s or 1,000,000
//!   iterations, whichever comes first);
//! - for N = 1, 100, 1000 concurrent callers on one expiring user session: wall time until all
//!   have a token and the number of token-endpoint calls (must be 1);
//! - `dpop_proof`: the cost of one DPoP proof (ES256, EdDSA) with an 800-byte access token;
//! - the baseline: one direct `OAuthClient::refresh` call, and the ratio of each run to it.
//!
//! `cargo bench -p portcullis-token --bench tokens`

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use portcullis_token::{
    AccessToken, ClientAuth, ClientCredentialsManager, InMemoryUserTokenStore, OAuthClient,
    OAuthClientConfig, Secret, SharedClock, SystemClock, TokenParams, TokenType, UserTokenManager,
    UserTokenOptions, UserTokens,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
struct Idp {
    calls: AtomicUsize,
    latency: AtomicBool,
}

async fn token(State(idp): State<Arc<Idp>>) -> axum::Json<serde_json::Value> {
    let n = idp.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if idp.latency.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    axum::Json(serde_json::json!({
        "access_token": format!("at-{n}"),
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": format!("rt-{n}"),
    }))
}

fn expired_session(now: i64) -> UserTokens {
    UserTokens {
        access_token: AccessToken {
            value: Secret::new("at-0"),
            token_type: TokenType::Bearer,
            expires_at: Some(now - 1),
            scope: None,
            issued_at: Some(now - 3601),
        },
        refresh_token: Some(Secret::new("rt-0")),
        id_token: None,
        by_resource: Default::default(),
        dpop_key: None,
    }
}

fn main() -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Error> {
    let idp = Arc::new(Idp::default());
    let app = Router::new()
        .route("/token", post(token))
        .with_state(idp.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/token", listener.local_addr()?).parse()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let clock: SharedClock = Arc::new(SystemClock);
    let config = OAuthClientConfig::new(
        "bench",
        ClientAuth::ClientSecretBasic(Secret::new("s")),
        url,
    );
    let client = Arc::new(OAuthClient::new(
        config,
        OAuthClient::default_http_client()?,
        clock.clone(),
    ));

    // (0) DPoP proofs (RFC 9449): one signed per proxied call, so its cost is per request.
    for alg in [
        portcullis_token::SigningAlg::ES256,
        portcullis_token::SigningAlg::EdDSA,
    ] {
        let key = Arc::new(portcullis_token::DpopKey::generate(alg)?);
        let dpop = portcullis_token::Dpop::new(key, clock.clone());
        let target: url::Url = "https://api.example/v1/orders/42".parse()?;
        let at = Secret::new("x".repeat(800));
        let started = Instant::now();
        let mut n = 0u32;
        while n < 200_000 && started.elapsed() < Duration::from_secs(1) {
            std::hint::black_box(dpop.proof("GET", &target, Some(&at))?);
            n += 1;
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        println!("dpop_proof alg={alg:?} us_per_proof={us:.1} proofs={n}");
    }

    // (a) client-credentials cache hits
    let mut cc = ClientCredentialsManager::new(clock.clone(), Duration::from_secs(60));
    cc.add_client(
        "bench",
        client.clone(),
        TokenParams::default().with_scope("api"),
    );
    cc.get_token("bench", &TokenParams::default()).await?;
    let calls_before = idp.calls.load(Ordering::SeqCst);
    let params = TokenParams::default();
    let started = Instant::now();
    let mut iterations = 0u64;
    while iterations < 1_000_000 && started.elapsed() < Duration::from_secs(1) {
        for _ in 0..1000 {
            std::hint::black_box(cc.get_token("bench", &params).await?);
        }
        iterations += 1000;
    }
    let elapsed = started.elapsed();
    println!(
        "cache_hits_per_sec={:.0} iterations={iterations} elapsed_ms={} token_requests_during_loop={}",
        iterations as f64 / elapsed.as_secs_f64(),
        elapsed.as_millis(),
        idp.calls.load(Ordering::SeqCst) - calls_before,
    );

    // (c) baseline: direct refresh calls with 5 ms simulated latency
    idp.latency.store(true, Ordering::SeqCst);
    client
        .refresh(&Secret::new("rt-warm"), &TokenParams::default())
        .await?; // warm the connection
    let rounds = 20u32;
    let started = Instant::now();
    for _ in 0..rounds {
        client
            .refresh(&Secret::new("rt-x"), &TokenParams::default())
            .await?;
    }
    let baseline = started.elapsed() / rounds;
    println!(
        "baseline_direct_refresh_ms={:.2} (mean of {rounds})",
        baseline.as_secs_f64() * 1000.0
    );

    // (b) N concurrent callers on one expiring session
    let store = Arc::new(InMemoryUserTokenStore::new(clock.clone()));
    let manager = Arc::new(UserTokenManager::new(
        client.clone(),
        UserTokenOptions::default(),
        clock.clone(),
    ));
    for n in [1usize, 100, 1000] {
        let session = format!("session-{n}");
        store.insert(&session, expired_session(clock.now_unix()));
        let calls_before = idp.calls.load(Ordering::SeqCst);
        let started = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (manager, store, session) = (manager.clone(), store.clone(), session.clone());
                tokio::spawn(async move {
                    manager
                        .get_access_token(store.as_ref(), &session, &TokenParams::default(), None)
                        .await
                })
            })
            .collect();
        let mut distinct = std::collections::HashSet::new();
        for task in tasks {
            distinct.insert(task.await??.fingerprint());
        }
        let wall = started.elapsed();
        let calls = idp.calls.load(Ordering::SeqCst) - calls_before;
        println!(
            "user_refresh n={n} wall_ms={:.2} token_endpoint_calls={calls} distinct_tokens={} ratio_to_direct_refresh={:.2}",
            wall.as_secs_f64() * 1000.0,
            distinct.len(),
            wall.as_secs_f64() / baseline.as_secs_f64(),
        );
        if calls != 1 || distinct.len() != 1 {
            return Err(format!("single-flight violated for n={n}: {calls} calls").into());
        }
    }
    Ok(())
}
