//! `GET {base}/user`: the SPA's session check.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::parse_params;
use crate::error::GatewayError;
use crate::frontend::Frontend;
use crate::session::{ActiveSession, Lookup};
use crate::settings::TokenPolicy;

/// Everything but RFC 3986 unreserved characters is encoded.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Handler of `GET {base}/user`: the session's claims as a JSON array of `{type, value}`
/// (Duende.BFF shape), followed by `bff:logout_url`, `bff:session_expires_in` (seconds) and,
/// if present, `bff:session_state`. `?slide=false` checks without extending the idle
/// timeout. Anonymous: `401` (or `200 null` when configured), clearing a stale cookie. A
/// session that can get no user access token any more (expired, no refresh token) while a
/// route needs one is ended here and answered as anonymous.
///
/// # Errors
///
/// 400 without the anti-forgery header or with bad parameters; 503 when the store is
/// unavailable.
pub async fn user(
    State(gw): State<Frontend>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    gw.settings().anti_forgery.check(&headers)?;
    let params = parse_params(query.as_deref().unwrap_or("").as_bytes(), &["slide"])?;
    let slide = params
        .get("slide")
        .map(|s| !s.eq_ignore_ascii_case("false"))
        .unwrap_or(true);
    let mut session = match gw.sessions().lookup_uncached(&headers).await? {
        Lookup::Active(s) => s,
        other => return Ok(anonymous(&gw, matches!(other, Lookup::Stale))),
    };
    if !can_get_user_token(&gw, &session) {
        // Issue 7.11: such a session answers every `user` route with 401 and is ended by the
        // first one; it must not look logged in here until then.
        tracing::info!(
            "the session's access token has expired and there is no refresh token; ending it"
        );
        gw.sessions().end(session.key()).await?;
        return Ok(anonymous(&gw, true));
    }
    if slide {
        gw.sessions().slide(&mut session).await?;
    }
    let ticket = &session.ticket;
    let mut claims: Vec<Value> = ticket
        .claims
        .iter()
        .map(|c| json!({"type": c.kind, "value": c.value}))
        .collect();
    let logout_url = match &ticket.sid {
        Some(sid) => format!(
            "{}?sid={}",
            gw.logout_path(),
            percent_encoding::utf8_percent_encode(sid, UNRESERVED)
        ),
        None => gw.logout_path().to_owned(),
    };
    claims.push(json!({"type": "bff:logout_url", "value": logout_url}));
    claims.push(json!({"type": "bff:session_expires_in", "value": gw.sessions().expires_in(&session.record)}));
    if let Some(state) = &ticket.session_state {
        claims.push(json!({"type": "bff:session_state", "value": state}));
    }
    let mut r = axum::Json(Value::Array(claims)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// The anonymous answer: `401` (or `200 null` when configured), clearing the cookie of a
/// session that is gone (`stale`).
fn anonymous(gw: &Frontend, stale: bool) -> Response {
    let mut r = if gw.sessions().settings().anonymous_user_is_null {
        (StatusCode::OK, axum::Json(Value::Null)).into_response()
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    };
    if stale {
        r.headers_mut().append(
            header::SET_COOKIE,
            gw.sessions().cookies().clear_session_cookie(),
        );
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Whether the session can still get the user's access token that `user`, `user_or_none`,
/// `user_or_client` and `exchange` routes send: it holds a refresh token, or its access token
/// has not expired (judged like the token service does: no buffer, a token inside the refresh
/// buffer is still used when no refresh is possible). A gateway without such routes needs no
/// user token, so every session qualifies.
fn can_get_user_token(gw: &Frontend, session: &ActiveSession) -> bool {
    let needs_user_token = gw.settings().routes.iter().any(|r| {
        matches!(
            r.token,
            TokenPolicy::User
                | TokenPolicy::UserOrNone
                | TokenPolicy::UserOrClient
                | TokenPolicy::Exchange
        )
    });
    let tokens = &session.ticket.tokens;
    !needs_user_token || tokens.refresh_token.is_some() || !tokens.access_token.is_expired(gw.now())
}
