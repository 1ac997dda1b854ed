//! `GET {base}/logout?sid=…&returnUrl=…` and the signed-out callback.
//!
//! With a session: `sid` must match (else 400, still logged in), the refresh token is revoked
//! (RFC 7009), the session deleted and the cookie cleared, then the browser goes to the IdP's
//! `end_session_endpoint` with `id_token_hint` so the IdP session ends too. Without a session
//! (already logged out, or ended by back-channel logout) it still goes to the IdP: logging
//! out twice is fine. The return URL travels through the IdP sealed inside `state`.
//!
//! The refresh token revoked is the one in the store at that moment, read under the session's
//! refresh lock and lease ([`TokenService::end_session`](crate::token::TokenService::end_session)),
//! not the one the (possibly cached) lookup saw: a refresh that rotated it just before would
//! otherwise leave the new refresh token live at the IdP.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{parse_params, redirect, return_url_param};
use crate::error::GatewayError;
use crate::frontend::Frontend;
use crate::oidc::authorize::validate_return_url;
use crate::session::Lookup;

const LOGOUT_AAD: &[u8] = b"portcullis.logout-state.v1";

#[derive(Serialize, Deserialize)]
struct LogoutState {
    return_url: String,
    exp: i64,
}

/// Handler of `GET {base}/logout?sid=…&returnUrl=…` (see the module docs).
///
/// # Errors
///
/// 400 for duplicated or malformed parameters, a non-local `returnUrl`, or a `sid` that does
/// not match the session; 503 when the store is unavailable.
pub async fn logout(
    State(gw): State<Frontend>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let params = parse_params(
        query.as_deref().unwrap_or("").as_bytes(),
        &["sid", "returnUrl"],
    )?;
    let return_url = return_url_param(&params, gw.home())?;
    let lookup = gw.sessions().lookup(&headers).await?;
    let mut id_token_hint = None;
    if let Lookup::Active(session) = &lookup {
        if let Some(sid) = &session.ticket.sid {
            if params.get("sid") != Some(sid) {
                return Err(GatewayError::bad_param(
                    "sid",
                    "sid does not match the current session",
                ));
            }
        }
        let revoke = gw.settings().oidc.revoke_refresh_token_on_logout;
        let ended = gw.tokens().end_session(session.key(), revoke).await?;
        // The freshest ID token: a refresh may have replaced the one the lookup saw.
        id_token_hint = match ended {
            Some(ticket) => ticket.tokens.id_token,
            None => session.ticket.tokens.id_token.clone(),
        };
        tracing::info!("session ended by user logout");
    }

    let destination = match gw.provider().metadata().await {
        Ok(m) => m.end_session_endpoint.clone(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach the identity provider for logout; ending the local session only");
            None
        }
    };
    let location = match destination {
        Some(endpoint) => {
            let mut url = url::Url::parse(&endpoint).map_err(|_| {
                GatewayError::IdpUnavailable("end_session_endpoint is not a URL".into())
            })?;
            let state = LogoutState {
                return_url,
                exp: gw.now() + gw.login_timeout_secs(),
            };
            let sealed = gw.sessions().keys().seal(
                &serde_json::to_vec(&state).map_err(|e| GatewayError::Internal(e.to_string()))?,
                LOGOUT_AAD,
            );
            {
                let mut q = url.query_pairs_mut();
                if let Some(hint) = &id_token_hint {
                    q.append_pair("id_token_hint", hint.expose_secret());
                }
                q.append_pair("client_id", &gw.settings().oidc.client_id)
                    .append_pair("post_logout_redirect_uri", gw.signed_out_uri())
                    .append_pair("state", &URL_SAFE_NO_PAD.encode(sealed));
            }
            url.to_string()
        }
        None => return_url,
    };
    let mut r = redirect(&location);
    if !matches!(lookup, Lookup::Anonymous) {
        r.headers_mut().append(
            header::SET_COOKIE,
            gw.sessions().cookies().clear_session_cookie(),
        );
    }
    Ok(r)
}

/// The IdP comes back here after ending its session; continue to the sealed return URL.
pub async fn signed_out(State(gw): State<Frontend>, RawQuery(query): RawQuery) -> Response {
    let params =
        parse_params(query.as_deref().unwrap_or("").as_bytes(), &["state"]).unwrap_or_default();
    let target = params
        .get("state")
        .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .and_then(|sealed| gw.sessions().keys().open(&sealed, LOGOUT_AAD).ok())
        .and_then(|plain| serde_json::from_slice::<LogoutState>(&plain).ok())
        .filter(|s| s.exp > gw.now())
        .and_then(|s| validate_return_url(&s.return_url).ok().map(str::to_owned));
    redirect(target.as_deref().unwrap_or(gw.home()))
}
