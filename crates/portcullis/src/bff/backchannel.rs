//! `POST {base}/backchannel`: OIDC Back-Channel Logout 1.0.
//!
//! The IdP posts a signed logout token (`Content-Type: application/x-www-form-urlencoded`,
//! parameters such as `charset` allowed; the media type is parsed, not prefix-matched).
//! Invalid → `400`, empty body. Valid → the matching sessions (by `sid`, or every session of
//! `sub` when the token has only `sub` or when configured) are deleted in the shared store, so
//! every instance sees it, and their refresh tokens revoked.
//!
//! Replay: the `jti` is recorded in the shared store (until
//! [`LogoutClaims::replay_until`](crate::oidc::logout_token::LogoutClaims::replay_until),
//! a window capped whatever `exp` says) only *after* the deletion succeeded. A store failure
//! answers 503 with nothing recorded, so the IdP's retry works; deletion is idempotent, so a
//! token that arrives twice ends nothing more than the first time did, and the second arrival
//! is answered 400 (replayed).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::parse_params;
use crate::error::GatewayError;
use crate::frontend::Frontend;
use crate::oidc::logout_token::{self, Expectations};

/// Handler of `POST {base}/backchannel` (OIDC Back-Channel Logout 1.0 §2.5): `200` when the
/// logout token is valid and its sessions ended, `400` with an empty body when it is
/// invalid; other failures (store or IdP unavailable) keep their usual status, typically
/// `503`, so the IdP may retry.
pub async fn backchannel(State(gw): State<Frontend>, headers: HeaderMap, body: Bytes) -> Response {
    let mut r = match handle(&gw, &headers, &body).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) if e.status() == StatusCode::BAD_REQUEST => {
            tracing::info!(error = %e, "back-channel logout rejected");
            StatusCode::BAD_REQUEST.into_response()
        }
        Err(e) => e.into_response(),
    };
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

async fn handle(gw: &Frontend, headers: &HeaderMap, body: &[u8]) -> Result<(), GatewayError> {
    let mut content_types = headers.get_all(header::CONTENT_TYPE).iter();
    let is_form = match (content_types.next(), content_types.next()) {
        (Some(v), None) => v.to_str().is_ok_and(is_form_media_type),
        _ => false,
    };
    if !is_form {
        return Err(GatewayError::bad_param(
            "logout_token",
            "expected a form post",
        ));
    }
    let params = parse_params(body, &["logout_token"])?;
    let token = params
        .get("logout_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| GatewayError::bad_param("logout_token", "missing"))?;
    let metadata = gw.provider().metadata().await?;
    let settings = gw.settings();
    let now = gw.now();
    let claims = logout_token::validate(
        gw.provider(),
        token,
        &metadata.id_token_signing_alg_values_supported,
        &Expectations {
            client_id: &settings.oidc.client_id,
            now,
            skew: i64::try_from(settings.oidc.clock_skew.as_secs()).unwrap_or(300),
            max_age: 300,
        },
    )
    .await?
    .map_err(|e| GatewayError::bad_param("logout_token", e.to_string()))?;

    // Every session of the user when configured (and possible); else the one IdP session
    // named by `sid` (narrowed by `sub` when given); a token with only `sub` ends them all.
    let sid = match (settings.oidc.backchannel_logout_all_sessions, &claims.sub) {
        (true, Some(_)) => None,
        _ => claims.sid.as_deref(),
    };
    let ended = gw
        .sessions()
        .end_matching(claims.sub.as_deref(), sid)
        .await?;
    tracing::info!(sessions = ended.len(), "back-channel logout ended sessions");
    for ticket in ended {
        let gw = gw.clone();
        tokio::spawn(async move { gw.tokens().revoke_user_tokens(&ticket.tokens).await });
    }
    // Recorded only now: had the deletion failed, the IdP's retry must not be a "replay".
    let first = gw
        .sessions()
        .store()
        .claim_once(
            &format!("bcl:{}:{}", gw.provider().issuer(), claims.jti),
            claims.replay_until,
        )
        .await?;
    if !first {
        return Err(GatewayError::bad_param("logout_token", "replayed jti"));
    }
    Ok(())
}

/// `application/x-www-form-urlencoded`, case-insensitive, optionally followed by parameters
/// (`; charset=UTF-8`). RFC 9110 §8.3.1: the type and subtype end at `;` or whitespace.
fn is_form_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default();
    essence
        .trim_matches(|c| c == ' ' || c == '\t')
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

#[cfg(test)]
mod tests {
    use super::is_form_media_type;

    #[test]
    fn backchannel_content_type_is_parsed() {
        for ok in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded",
            "application/x-www-form-urlencoded; charset=UTF-8",
            "application/x-www-form-urlencoded;charset=utf-8",
            "application/x-www-form-urlencoded ; charset=utf-8",
        ] {
            assert!(is_form_media_type(ok), "{ok}");
        }
        for bad in [
            "application/x-www-form-urlencodedX",
            "application/x-www-form-urlencoded-evil; charset=utf-8",
            "application/json",
            "multipart/form-data",
            "",
            "x application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded,application/json",
        ] {
            assert!(!is_form_media_type(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod store_failure_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use portcullis_session::{
        CasOutcome, Invalidation, MemoryStore, SessionFilter, SessionRecord, SessionStore,
        StoreError,
    };
    use portcullis_token::{ManualClock, Secret, UserTokens};
    use serde_json::json;
    use tower::ServiceExt;

    use crate::cookie::{CookieSettings, SameSite};
    use crate::csrf::AntiForgery;
    use crate::gateway::Gateway;
    use crate::oidc::logout_token::BACKCHANNEL_EVENT;
    use crate::oidc::test_idp::{ed_jwk, sign, TestIdp};
    use crate::session::{Key, KeyRing, Ticket};
    use crate::settings::{
        ClientAuthSettings, GatewaySettings, OidcSettings, ResponseMode, SessionSettings,
        TokenSettings,
    };

    /// A memory store whose `delete_matching` fails while `fail_deletes` > 0.
    struct Flaky {
        inner: MemoryStore,
        fail_deletes: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl SessionStore for Flaky {
        fn kind(&self) -> &'static str {
            "flaky"
        }
        async fn get(&self, key: &str, now: i64) -> Result<Option<SessionRecord>, StoreError> {
            self.inner.get(key, now).await
        }
        async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
            self.inner.create(record).await
        }
        async fn update(&self, r: &SessionRecord, v: u64) -> Result<CasOutcome, StoreError> {
            self.inner.update(r, v).await
        }
        async fn delete(&self, key: &str) -> Result<Option<SessionRecord>, StoreError> {
            self.inner.delete(key).await
        }
        async fn find(
            &self,
            f: &SessionFilter,
            now: i64,
        ) -> Result<Vec<SessionRecord>, StoreError> {
            self.inner.find(f, now).await
        }
        async fn delete_matching(
            &self,
            f: &SessionFilter,
        ) -> Result<Vec<SessionRecord>, StoreError> {
            let failing = self
                .fail_deletes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(StoreError::Unavailable("injected outage".into()));
            }
            self.inner.delete_matching(f).await
        }
        async fn cleanup_expired(&self, now: i64) -> Result<u64, StoreError> {
            self.inner.cleanup_expired(now).await
        }
        async fn claim_once(&self, id: &str, expires: i64) -> Result<bool, StoreError> {
            self.inner.claim_once(id, expires).await
        }
        async fn try_lease(&self, n: &str, h: &str, ttl: Duration) -> Result<bool, StoreError> {
            self.inner.try_lease(n, h, ttl).await
        }
        async fn release_lease(&self, n: &str, h: &str) -> Result<(), StoreError> {
            self.inner.release_lease(n, h).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.inner.ping().await
        }
        fn subscribe_invalidations(
            &self,
        ) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
            None
        }
    }

    fn settings(issuer: &str) -> GatewaySettings {
        let public_url: url::Url = "http://127.0.0.1:8080".parse().unwrap();
        GatewaySettings {
            cookies: CookieSettings::for_public_url(&public_url, None, SameSite::Strict).unwrap(),
            public_url,
            base_path: "/bff".into(),
            callback_path: "/signin-oidc".into(),
            signed_out_callback_path: "/signout-callback-oidc".into(),
            oidc: OidcSettings {
                issuer: issuer.into(),
                client_id: "spa".into(),
                client_auth: ClientAuthSettings::ClientSecretBasic(Secret::new("s")),
                scopes: vec!["openid".into()],
                extra_authorize_params: Vec::new(),
                response_mode: ResponseMode::Query,
                resource: None,
                revoke_refresh_token_on_logout: false,
                clock_skew: Duration::from_secs(60),
                fetch_userinfo: false,
                backchannel_logout_all_sessions: false,
                trusted_audiences: Vec::new(),
                http_timeout: Duration::from_secs(5),
                dpop: None,
                par: Default::default(),
                profile: Default::default(),
            },
            session: SessionSettings::default(),
            anti_forgery: AntiForgery::default(),
            routes: Vec::new(),
            tokens: TokenSettings::default(),
            diagnostics: false,
            trust_forwarded_headers: false,
            websocket_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            cors: None,
        }
    }

    #[tokio::test]
    async fn backchannel_store_failure_does_not_burn_jti() {
        let idp = TestIdp::start(vec![ed_jwk("k")]).await;
        let fail_deletes = Arc::new(AtomicUsize::new(0));
        let store = Arc::new(Flaky {
            inner: MemoryStore::new(),
            fail_deletes: fail_deletes.clone(),
        });
        // The memory store's replay records use the wall clock: the gateway's clock must agree.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let keys = KeyRing::new(vec![Key::parse(&Key::generate_spec("t")).unwrap()]).unwrap();
        let gw = Gateway::new(
            settings(&idp.issuer),
            store.clone(),
            keys,
            Arc::new(ManualClock::new(now)),
        )
        .unwrap();
        let tokens: UserTokens = serde_json::from_value(json!({
            "access_token": {"value": "at", "token_type": "Bearer", "expires_at": null, "scope": null},
            "refresh_token": null, "id_token": null, "by_resource": {}
        }))
        .unwrap();
        gw.sessions()
            .create(Ticket {
                sub: "alice".into(),
                sid: Some("s1".into()),
                claims: Vec::new(),
                session_state: None,
                tokens,
            })
            .await
            .unwrap();
        let sessions = || async {
            let filter = SessionFilter {
                partition: "default".into(),
                sub: Some("alice".into()),
                sid: None,
            };
            store.find(&filter, now).await.unwrap().len()
        };
        assert_eq!(sessions().await, 1);

        let token = sign(
            json!({"kid": "k", "typ": "logout+jwt"}),
            &json!({"iss": idp.issuer, "aud": "spa", "iat": now, "exp": now + 120,
                    "jti": "jti-1", "sid": "s1", "events": {BACKCHANNEL_EVENT: {}}}),
        );
        let app = gw.router(None);
        let post = || {
            let app = app.clone();
            let body = format!("logout_token={token}");
            async move {
                let req = Request::post("/bff/backchannel")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Body::from(body))
                    .unwrap();
                app.oneshot(req).await.unwrap().status()
            }
        };
        // The store fails while deleting: 503, nothing ended, nothing recorded.
        fail_deletes.store(1, Ordering::SeqCst);
        assert_eq!(post().await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(sessions().await, 1);
        // The IdP retries the same token: accepted, the session ends.
        assert_eq!(post().await, StatusCode::OK);
        assert_eq!(sessions().await, 0);
        // A later replay is still refused.
        assert_eq!(post().await, StatusCode::BAD_REQUEST);
    }
}
