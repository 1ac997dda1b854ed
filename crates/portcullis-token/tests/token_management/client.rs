//! OAuthClient: what goes over the wire and how answers are classified.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use portcullis_token::*;

use crate::idp::{Behaviour, MockIdp};

const T0: i64 = 1_700_000_000;

async fn idp_and_clock() -> (MockIdp, ManualClock) {
    (MockIdp::start().await, ManualClock::new(T0))
}

#[tokio::test]
async fn token_requests_are_form_encoded_and_accept_json() {
    let (idp, clock) = idp_and_clock().await;
    idp.client(&clock)
        .client_credentials(&TokenParams::default())
        .await
        .unwrap();
    let req = idp.last_request();
    assert_eq!(
        req.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(req.headers["accept"], "application/json");
    assert_eq!(req.get("grant_type"), Some("client_credentials"));
    assert_eq!(req.get("scope"), None);
    assert_eq!(req.get("resource"), None);
}

#[tokio::test]
async fn client_secret_basic_is_form_urlencoded_before_base64() {
    let (idp, clock) = idp_and_clock().await;
    let config = OAuthClientConfig::new(
        "my client",
        ClientAuth::ClientSecretBasic(Secret::new("p@ss:w/rd")),
        idp.url("token"),
    );
    idp.client_with(config, &clock)
        .client_credentials(&TokenParams::default())
        .await
        .unwrap();
    let req = idp.last_request();
    let auth = req.headers["authorization"].to_str().unwrap();
    let decoded = String::from_utf8(
        STANDARD
            .decode(auth.strip_prefix("Basic ").unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(decoded, "my+client:p%40ss%3Aw%2Frd");
    assert_eq!(req.get("client_secret"), None);
    assert_eq!(req.get("client_id"), None);
}

#[tokio::test]
async fn client_secret_post_and_public_clients_use_form_fields() {
    let (idp, clock) = idp_and_clock().await;
    let post = OAuthClientConfig::new(
        "c1",
        ClientAuth::ClientSecretPost(Secret::new("s1")),
        idp.url("token"),
    );
    idp.client_with(post, &clock)
        .client_credentials(&TokenParams::default())
        .await
        .unwrap();
    let req = idp.last_request();
    assert_eq!(
        (req.get("client_id"), req.get("client_secret")),
        (Some("c1"), Some("s1"))
    );
    assert!(!req.headers.contains_key("authorization"));

    let public = OAuthClientConfig::new("c2", ClientAuth::None, idp.url("token"));
    idp.client_with(public, &clock)
        .client_credentials(&TokenParams::default())
        .await
        .unwrap();
    let req = idp.last_request();
    assert_eq!(
        (req.get("client_id"), req.get("client_secret")),
        (Some("c2"), None)
    );
}

#[tokio::test]
async fn private_key_jwt_sends_a_verifiable_assertion_for_the_token_endpoint() {
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
    let (idp, clock) = idp_and_clock().await;
    let key =
        PrivateKeyJwt::from_pem(SigningAlg::ES256, include_str!("../keys/ec-p256.pem")).unwrap();
    let config = OAuthClientConfig::new("c1", ClientAuth::PrivateKeyJwt(key), idp.url("token"));
    let client = idp.client_with(config, &clock);
    client
        .client_credentials(&TokenParams::default())
        .await
        .unwrap();
    client
        .client_credentials(&TokenParams::default())
        .await
        .unwrap();
    let public = DecodingKey::from_ec_pem(include_bytes!("../keys/ec-p256.pub.pem")).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[idp.url("token").as_str()]);
    validation.validate_exp = false;
    let mut jtis = Vec::new();
    for req in idp.requests() {
        assert_eq!(req.get("client_id"), Some("c1"));
        assert_eq!(
            req.get("client_assertion_type"),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        let claims =
            decode::<serde_json::Value>(req.get("client_assertion").unwrap(), &public, &validation)
                .unwrap()
                .claims;
        assert_eq!(claims["iss"], "c1");
        assert_eq!(claims["sub"], "c1");
        assert_eq!(claims["exp"], T0 + 60);
        jtis.push(claims["jti"].as_str().unwrap().to_owned());
    }
    assert_ne!(jtis[0], jtis[1]);
}

#[tokio::test]
async fn resource_scope_and_extra_parameters_are_sent() {
    let (idp, clock) = idp_and_clock().await;
    let params = TokenParams::default()
        .with_resource("https://api.example/")
        .with_scope("a b")
        .with_extra("audience", "x");
    idp.seed_refresh_token("rt-0");
    idp.client(&clock)
        .refresh(&Secret::new("rt-0"), &params)
        .await
        .unwrap();
    let req = idp.last_request();
    assert_eq!(req.get("grant_type"), Some("refresh_token"));
    assert_eq!(req.get("resource"), Some("https://api.example/"));
    assert_eq!(req.get("scope"), Some("a b"));
    assert_eq!(req.get("audience"), Some("x"));
}

#[tokio::test]
async fn reserved_extra_parameters_are_rejected_before_sending() {
    let (idp, clock) = idp_and_clock().await;
    for name in [
        "grant_type",
        "client_id",
        "client_secret",
        "refresh_token",
        "scope",
        "client_assertion",
    ] {
        let params = TokenParams::default().with_extra(name, "x");
        let err = idp
            .client(&clock)
            .client_credentials(&params)
            .await
            .unwrap_err();
        assert!(
            matches!(err, TokenError::InvalidParams(_)),
            "{name}: {err:?}"
        );
    }
    assert_eq!(idp.token_calls(), 0);
}

#[tokio::test]
async fn code_exchange_sends_the_pkce_verifier() {
    let (idp, clock) = idp_and_clock().await;
    let resp = idp
        .client(&clock)
        .exchange_code(
            "c0de",
            "https://app/signin-oidc",
            "v3rifier",
            &TokenParams::default(),
        )
        .await
        .unwrap();
    let req = idp.last_request();
    assert_eq!(req.get("grant_type"), Some("authorization_code"));
    assert_eq!(req.get("code"), Some("c0de"));
    assert_eq!(req.get("redirect_uri"), Some("https://app/signin-oidc"));
    assert_eq!(req.get("code_verifier"), Some("v3rifier"));
    let tokens = UserTokens::from_response(resp, T0).unwrap();
    assert_eq!(tokens.access_token.expires_at, Some(T0 + 3600));
    assert_eq!(tokens.access_token.issued_at, Some(T0));
    assert!(tokens.refresh_token.is_some() && tokens.id_token.is_some());
}

#[tokio::test]
async fn code_exchange_sends_resource_rfc8707() {
    let (idp, clock) = idp_and_clock().await;
    idp.client(&clock)
        .exchange_code(
            "c0de",
            "https://app/signin-oidc",
            "v3rifier",
            &TokenParams::default().with_resource("urn:my-api"),
        )
        .await
        .unwrap();
    let req = idp.last_request();
    assert_eq!(req.get("grant_type"), Some("authorization_code"));
    assert_eq!(req.get("resource"), Some("urn:my-api"));
    assert_eq!(req.get("code_verifier"), Some("v3rifier"));
}

#[tokio::test]
async fn token_exchange_sends_rfc8693_fields() {
    let (idp, clock) = idp_and_clock().await;
    let subject = Secret::new("user-at");
    let params = TokenParams::default().with_resource("urn:downstream");
    idp.client(&clock)
        .token_exchange(
            &subject,
            "urn:ietf:params:oauth:token-type:access_token",
            &params,
        )
        .await
        .unwrap();
    let req = idp.last_request();
    assert_eq!(
        req.get("grant_type"),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(req.get("subject_token"), Some("user-at"));
    assert_eq!(
        req.get("subject_token_type"),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(req.get("resource"), Some("urn:downstream"));
}

#[tokio::test]
async fn error_responses_map_to_token_errors() {
    type Check = fn(&TokenError) -> bool;
    let cases: Vec<(u16, &str, Check)> = vec![
        (400, r#"{"error":"invalid_grant"}"#, |e| {
            matches!(e, TokenError::InvalidGrant { .. })
        }),
        (401, r#"{"error":"invalid_client"}"#, |e| {
            matches!(e, TokenError::Rejected { status: 401, .. })
        }),
        (
            400,
            r#"{"error":"invalid_scope","error_description":"nope"}"#,
            |e| matches!(e, TokenError::Rejected { error, description: Some(d), .. } if error == "invalid_scope" && d == "nope"),
        ),
        (503, "", |e| matches!(e, TokenError::Unavailable(_))),
        (429, "", |e| matches!(e, TokenError::Unavailable(_))),
        (200, "not json", |e| matches!(e, TokenError::Malformed(_))),
        (200, r#"{"token_type":"Bearer"}"#, |e| {
            matches!(e, TokenError::Malformed(_))
        }),
    ];
    let (idp, clock) = idp_and_clock().await;
    let client = idp.client(&clock);
    for (status, body, check) in cases {
        idp.set(|b| b.fail_with = Some((status, body.to_owned())));
        let err = client
            .client_credentials(&TokenParams::default())
            .await
            .unwrap_err();
        assert!(check(&err), "{status} {body}: {err:?}");
    }
}

#[tokio::test]
async fn malformed_success_body_is_never_echoed() {
    let (idp, clock) = idp_and_clock().await;
    idp.set(|b| {
        b.fail_with = Some((
            200,
            r#"{"access_token":"AT-SECRET","expires_in":"RT-SECRET"}"#.into(),
        ))
    });
    let err = idp
        .client(&clock)
        .client_credentials(&TokenParams::default())
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Malformed(_)));
    let text = format!("{err} {err:?}");
    assert!(!text.contains("SECRET"), "{text}");
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let clock = ManualClock::new(T0);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = url::Url::parse(&format!("http://{}/token", listener.local_addr().unwrap())).unwrap();
    drop(listener);
    let client = OAuthClient::new(
        OAuthClientConfig::new("c", ClientAuth::None, url),
        reqwest::Client::new(),
        Arc::new(clock),
    );
    let err = client
        .client_credentials(&TokenParams::default())
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn slow_token_endpoint_times_out() {
    let idp = MockIdp::with(Behaviour {
        delay: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let clock = ManualClock::new(T0);
    let client = idp.client_with(
        idp.config().with_timeout(Duration::from_millis(100)),
        &clock,
    );
    assert_eq!(
        client
            .client_credentials(&TokenParams::default())
            .await
            .unwrap_err(),
        TokenError::Timeout
    );
}

#[tokio::test]
async fn plain_http_to_a_non_loopback_host_is_refused() {
    let clock = ManualClock::new(T0);
    let url = url::Url::parse("http://idp.example/token").unwrap();
    let client = OAuthClient::new(
        OAuthClientConfig::new("c", ClientAuth::None, url),
        reqwest::Client::new(),
        Arc::new(clock),
    );
    let err = client
        .client_credentials(&TokenParams::default())
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::NotSupported(_)), "{err:?}");
}

#[tokio::test]
async fn revoke_sends_token_and_hint_with_client_auth() {
    let (idp, clock) = idp_and_clock().await;
    idp.client(&clock)
        .revoke(&Secret::new("at-9"), TokenTypeHint::AccessToken)
        .await
        .unwrap();
    let rec = idp.state.revocations.lock().unwrap()[0].clone();
    assert_eq!(rec.get("token"), Some("at-9"));
    assert_eq!(rec.get("token_type_hint"), Some("access_token"));
    assert!(rec.headers["authorization"]
        .to_str()
        .unwrap()
        .starts_with("Basic "));
}

#[tokio::test]
async fn revoke_without_an_endpoint_is_not_supported() {
    let (idp, clock) = idp_and_clock().await;
    let config = OAuthClientConfig::new("c", ClientAuth::None, idp.url("token"));
    let err = idp
        .client_with(config, &clock)
        .revoke(&Secret::new("x"), TokenTypeHint::RefreshToken)
        .await;
    assert!(matches!(err, Err(TokenError::NotSupported(_))));
}

#[tokio::test]
async fn discovery_reads_endpoints_and_checks_the_issuer() {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let good = serde_json::json!({
        "issuer": format!("{base}/realms/a"),
        "token_endpoint": format!("{base}/realms/a/token"),
        "revocation_endpoint": format!("{base}/realms/a/revoke"),
    });
    let evil = serde_json::json!({"issuer": "https://evil.example", "token_endpoint": "https://evil.example/token"});
    let app = axum::Router::new()
        .route(
            "/realms/a/.well-known/openid-configuration",
            get(move || async move { axum::Json(good) }),
        )
        .route(
            "/realms/b/.well-known/openid-configuration",
            get(move || async move { axum::Json(evil) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let issuer = url::Url::parse(&format!("{base}/realms/a")).unwrap();
    let meta = discover(&http, &issuer, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        meta.token_endpoint.as_str(),
        format!("{base}/realms/a/token")
    );
    let config = OAuthClientConfig::from_metadata("c", ClientAuth::None, &meta);
    assert_eq!(
        config.revocation_endpoint.unwrap().as_str(),
        format!("{base}/realms/a/revoke")
    );
    let other = url::Url::parse(&format!("{base}/realms/b")).unwrap();
    assert!(matches!(
        discover(&http, &other, Duration::from_secs(5)).await,
        Err(TokenError::Malformed(_))
    ));
}
