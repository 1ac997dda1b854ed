//! `GET {base}/diagnostics`: development aid, `404` unless enabled. Unlike Duende's, it never
//! shows token values, only fingerprints and expiry times.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::GatewayError;
use crate::frontend::Frontend;
use crate::session::Lookup;

/// Handler of `GET {base}/diagnostics`: session metadata and token fingerprints/expiry as
/// JSON, never token values.
///
/// # Errors
///
/// 404 unless [`GatewaySettings::diagnostics`](crate::settings::GatewaySettings::diagnostics)
/// is on; otherwise the usual session errors (e.g. 503 when the store is unavailable).
pub async fn diagnostics(
    State(gw): State<Frontend>,
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
