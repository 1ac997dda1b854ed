//! `POST {base}/backchannel`: OIDC Back-Channel Logout 1.0.
//!
//! The IdP posts a signed logout token. Invalid → `400`, empty body. Valid → the matching
//! sessions (by `sid`, or every session of `sub` when the token has only `sub` or when
//! configured) are deleted in the shared store, so every instance sees it, and their refresh
//! tokens revoked. `jti`s are remembered in the shared store until the token expires, so a
//! replayed token is refused on any instance.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::parse_params;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::oidc::logout_token::{self, Expectations};

pub async fn backchannel(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
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

async fn handle(gw: &Gateway, headers: &HeaderMap, body: &[u8]) -> Result<(), GatewayError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
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

    let replay_until = claims.exp.max(now) + 600;
    let first = gw
        .sessions()
        .store()
        .claim_once(
            &format!("bcl:{}:{}", gw.provider().issuer(), claims.jti),
            replay_until,
        )
        .await?;
    if !first {
        return Err(GatewayError::bad_param("logout_token", "replayed jti"));
    }
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
    Ok(())
}
