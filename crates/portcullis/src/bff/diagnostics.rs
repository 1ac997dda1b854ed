//! `GET {base}/diagnostics`: development aid, `404` unless enabled. Unlike Duende's, it never
//! shows token values, only fingerprints and expiry times.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::session::Lookup;

pub async fn diagnostics(
    State(gw): State<Gateway>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    if !gw.settings().diagnostics {
        return Err(GatewayError::NotFound);
    }
    let body = match gw.sessions().lookup(&headers).await? {
        Lookup::Active(s) => {
            let t = &s.ticket.tokens;
            json!({
                "session": {"sub": s.ticket.sub, "sid": s.ticket.sid, "expires_in": gw.sessions().expires_in(&s.record), "version": s.record.version},
                "access_token": {"fingerprint": t.access_token.value.fingerprint(), "expires_at": t.access_token.expires_at},
                "has_refresh_token": t.refresh_token.is_some(),
                "resource_tokens": t.by_resource.keys().collect::<Vec<_>>(),
            })
        }
        _ => json!({"session": null}),
    };
    Ok(axum::Json(body).into_response())
}
