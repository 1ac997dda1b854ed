//! Session administration for operators, on a listener of its own.
//!
//! Never mount this router on the public listener: it lists and ends anyone's sessions. The
//! binary binds it to `[admin] listen` (an internal address) and requires a bearer token.
//!
//! | endpoint | purpose |
//! |---|---|
//! | `GET /sessions?sub=…[&sid=…][&frontend=…]` | a user's sessions (metadata only, never tokens) |
//! | `DELETE /sessions?sub=…[&sid=…][&frontend=…]` | end them; their refresh tokens are revoked |
//! | `DELETE /sessions/{key}[?frontend=…]` | end one session by its store key |
//!
//! Every operation works on one frontend's sessions (its partition): `frontend` names it, the
//! default (top-level) frontend when absent; an unknown name is a 404.
//! | `GET /metrics` | Prometheus text, when the binary installed a recorder |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use portcullis_session::SessionFilter;
use portcullis_token::Secret;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::error::GatewayError;
use crate::frontend::{Frontend, DEFAULT_FRONTEND};
use crate::Gateway;

/// Renders the current metrics (Prometheus text format).
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    gateway: Gateway,
    token: Secret,
    metrics: Option<MetricsRender>,
}

#[derive(Debug, Deserialize)]
struct Selector {
    sub: Option<String>,
    sid: Option<String>,
    frontend: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FrontendParam {
    frontend: Option<String>,
}

/// The frontend named `name` (the default one for `None`); 404 when there is none.
///
/// # Errors
///
/// [`GatewayError::NotFound`] for an unknown name.
pub fn frontend(gw: &Gateway, name: Option<&str>) -> Result<Frontend, GatewayError> {
    gw.frontend(name.unwrap_or(DEFAULT_FRONTEND))
        .ok_or(GatewayError::NotFound)
}

/// The admin router. Every request needs `Authorization: Bearer <token>`.
pub fn router(gateway: Gateway, token: Secret, metrics: Option<MetricsRender>) -> Router {
    Router::new()
        .route("/sessions", get(list).delete(end_matching))
        .route("/sessions/{key}", axum::routing::delete(end_one))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState {
            gateway,
            token,
            metrics,
        })
}

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), GatewayError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = state.token.expose_secret().as_bytes();
    if !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected)) {
        Ok(())
    } else {
        Err(GatewayError::Unauthorized("admin token missing or wrong"))
    }
}

/// The operations behind the endpoints, shared with the `portcullis sessions` subcommand.
///
/// Sessions of `sub` and/or `sid` in this gateway's partition: metadata only, never tickets.
pub async fn list_sessions(
    gw: &Frontend,
    sub: Option<String>,
    sid: Option<String>,
) -> Result<serde_json::Value, GatewayError> {
    let records = gw
        .sessions()
        .store()
        .find(&filter(gw, sub, sid)?, gw.now())
        .await?;
    let sessions: Vec<_> = records
        .iter()
        .map(|r| {
            json!({"key": r.key, "sub": r.sub, "sid": r.sid, "created": r.created,
                   "renewed": r.renewed, "expires": r.expires})
        })
        .collect();
    Ok(json!({ "sessions": sessions }))
}

/// Ends the sessions of `sub` and/or `sid` and revokes their refresh tokens; returns how many.
pub async fn end_sessions(
    gw: &Frontend,
    sub: Option<String>,
    sid: Option<String>,
) -> Result<usize, GatewayError> {
    let f = filter(gw, sub, sid)?;
    let ended = gw
        .sessions()
        .end_matching(f.sub.as_deref(), f.sid.as_deref())
        .await?;
    for ticket in &ended {
        gw.tokens().revoke_user_tokens(&ticket.tokens).await;
    }
    tracing::info!(sessions = ended.len(), "sessions ended by an operator");
    Ok(ended.len())
}

/// Ends one session by store key and revokes its refresh token; `false` if it did not exist.
pub async fn end_session(gw: &Frontend, key: &str) -> Result<bool, GatewayError> {
    // Only a session of this frontend: another frontend's key is "not found" here.
    match gw.sessions().store().get(key, gw.now()).await? {
        Some(r) if r.partition == gw.sessions().settings().partition => {}
        _ => return Ok(false),
    }
    let Some(record) = gw.sessions().end(key).await? else {
        return Ok(false);
    };
    if let Ok(ticket) = gw.sessions().open(&record) {
        gw.tokens().revoke_user_tokens(&ticket.tokens).await;
    }
    tracing::info!("session ended by an operator");
    Ok(true)
}

fn filter(
    gw: &Frontend,
    sub: Option<String>,
    sid: Option<String>,
) -> Result<SessionFilter, GatewayError> {
    if sub.is_none() && sid.is_none() {
        return Err(GatewayError::bad_param("sub", "give sub and/or sid"));
    }
    Ok(SessionFilter {
        partition: gw.sessions().settings().partition.clone(),
        sub,
        sid,
    })
}

async fn list(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(sel): Query<Selector>,
) -> Result<Response, GatewayError> {
    authorize(&state, &headers)?;
    let fe = frontend(&state.gateway, sel.frontend.as_deref())?;
    Ok(axum::Json(list_sessions(&fe, sel.sub, sel.sid).await?).into_response())
}

async fn end_matching(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(sel): Query<Selector>,
) -> Result<Response, GatewayError> {
    authorize(&state, &headers)?;
    let fe = frontend(&state.gateway, sel.frontend.as_deref())?;
    let ended = end_sessions(&fe, sel.sub, sel.sid).await?;
    Ok(axum::Json(json!({ "ended": ended })).into_response())
}

async fn end_one(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(sel): Query<FrontendParam>,
) -> Result<Response, GatewayError> {
    authorize(&state, &headers)?;
    let fe = frontend(&state.gateway, sel.frontend.as_deref())?;
    match end_session(&fe, &key).await? {
        true => Ok(axum::Json(json!({ "ended": 1 })).into_response()),
        false => Err(GatewayError::NotFound),
    }
}

async fn metrics_text(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    authorize(&state, &headers)?;
    match &state.metrics {
        Some(render) => Ok((
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render(),
        )
            .into_response()),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}
