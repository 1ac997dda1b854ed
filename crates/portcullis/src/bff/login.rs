//! `GET {base}/login?returnUrl=/path&prompt=...`: starts authorization code + PKCE.
//! `GET {base}/silent-login` (Duende.BFF v3): the same with `prompt=none`; the flow ends on
//! the silent-login callback page, which posts the result to the parent window. Duende v4
//! pages use `{base}/login?prompt=none` for the same thing; both work.
//!
//! With pushed authorization requests (RFC 9126; `oidc.par`, or an IdP that requires them)
//! the request parameters go to the IdP's PAR endpoint over the back channel, authenticated
//! like a token request, and the browser is redirected with `client_id` and `request_uri`
//! only. With DPoP the request carries `dpop_jkt` (RFC 9449 §10): the thumbprint of the
//! gateway key, or with per-session keys of this login's own key.
//!
//! Step-up (RFC 9470): `acr_values` (space-separated, each one the IdP lists in
//! `acr_values_supported` when it advertises that) and `max_age` (seconds) are passed on to the
//! IdP and remembered in the login transaction; the callback then requires the ID token's
//! `acr` to be one of them and its `auth_time` to be within `max_age` (see
//! [`super::callback`]). The SPA gets both from a step-up challenge's `login_url`.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::{parse_params, redirect, return_url_param};
use crate::access;
use crate::error::GatewayError;
use crate::frontend::Frontend;
use crate::oidc::authorize::{
    authorization_params, authorization_url, pushed_authorization_url, AuthorizeRequest,
    LoginTransaction,
};
use crate::settings::ParMode;

pub(crate) const TX_AAD: &[u8] = b"portcullis.login-tx.v1";

/// At most this many login-transaction cookies of one request are opened (and cleared) per
/// login, whatever the request carries: a request with thousands of junk `bff-login.*`
/// cookies costs bounded work and gets a bounded answer. Twice the pending-login cap leaves
/// room to clear leftovers while the cap holds.
fn login_cookies_read(max_pending: usize) -> usize {
    max_pending.max(1).saturating_mul(2).min(40)
}

/// `GET {base}/login`: validates `returnUrl` (local paths only), `prompt` (only values
/// the IdP lists in `prompt_values_supported`), `acr_values` (printable values, only those the
/// IdP lists in `acr_values_supported` when it advertises it) and `max_age` (a non-negative
/// whole number of seconds); 400 otherwise. Then redirects to the IdP.
pub async fn login(
    State(gw): State<Frontend>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let params = parse_params(
        query.as_deref().unwrap_or("").as_bytes(),
        &["returnUrl", "prompt", "acr_values", "max_age"],
    )?;
    let return_url = return_url_param(&params, gw.home())?;
    let prompt = params.get("prompt").map(String::as_str);
    let step_up = StepUp {
        acr_values: params
            .get("acr_values")
            .map(|v| access::parse_acr_values(v))
            .transpose()
            .map_err(|m| GatewayError::bad_param("acr_values", m))?
            .unwrap_or_default(),
        max_age: params
            .get("max_age")
            .map(|v| access::parse_max_age(v))
            .transpose()
            .map_err(|m| GatewayError::bad_param("max_age", m))?,
    };
    start(&gw, return_url, prompt, step_up, &headers).await
}

/// What a step-up login asks of the IdP (both empty for an ordinary login).
#[derive(Debug, Default)]
struct StepUp {
    acr_values: Vec<String>,
    max_age: Option<u64>,
}

/// `GET {base}/silent-login` (Duende.BFF v3's endpoint, loaded in a hidden iframe): a
/// `prompt=none` login that ends on `{base}/silent-login-callback`. Parameters are ignored,
/// as in Duende.
pub async fn silent_login(
    State(gw): State<Frontend>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let home = gw.home().to_owned();
    start(&gw, home, Some("none"), StepUp::default(), &headers).await
}

async fn start(
    gw: &Frontend,
    return_url: String,
    prompt: Option<&str>,
    step_up: StepUp,
    headers: &HeaderMap,
) -> Result<Response, GatewayError> {
    let metadata = gw.provider().metadata().await?;
    if let Some(p) = prompt {
        let supported = metadata.prompt_values_supported.as_deref().unwrap_or(&[]);
        if !supported.iter().any(|s| s == p) {
            return Err(GatewayError::bad_param(
                "prompt",
                "this prompt value is not supported by the identity provider",
            ));
        }
    }
    if let Some(supported) = &metadata.acr_values_supported {
        if !step_up.acr_values.iter().all(|a| supported.contains(a)) {
            return Err(GatewayError::bad_param(
                "acr_values",
                "this authentication context class is not supported by the identity provider",
            ));
        }
    }
    let settings = gw.settings();
    let now = gw.now();
    let mut tx = LoginTransaction::new(return_url, prompt == Some("none"), now);
    tx.acr_values = step_up.acr_values;
    tx.max_age = step_up.max_age;
    let acr_values = (!tx.acr_values.is_empty()).then(|| tx.acr_values.join(" "));
    // `[oidc.dpop] per_session`: this login's own key (recorded in `tx` by reference only).
    let session_key =
        crate::token::session_key::for_login(settings, gw.sessions().keys(), &mut tx)?;
    let request = AuthorizeRequest {
        authorization_endpoint: &metadata.authorization_endpoint,
        client_id: &settings.oidc.client_id,
        redirect_uri: gw.redirect_uri(),
        scopes: &settings.oidc.scopes,
        prompt,
        resource: settings.oidc.resource.as_deref(),
        response_mode: settings.oidc.response_mode.as_str(),
        extra: &settings.oidc.extra_authorize_params,
        dpop_jkt: match &session_key {
            Some(key) => Some(key.thumbprint()),
            None => settings.oidc.dpop.as_ref().map(|d| d.key.thumbprint()),
        },
        acr_values: acr_values.as_deref(),
        max_age: tx.max_age,
    };
    let par_endpoint = metadata.pushed_authorization_request_endpoint.as_deref();
    let use_par = match settings.oidc.par {
        // An IdP that requires PAR of every client gets it even when it is off here.
        ParMode::Off => metadata.require_pushed_authorization_requests && par_endpoint.is_some(),
        ParMode::Auto => par_endpoint.is_some(),
        ParMode::Required => true,
    };
    let url = if use_par {
        let endpoint = par_endpoint.ok_or_else(|| {
            GatewayError::IdpUnavailable(
                "pushed authorization requests are required (oidc.par = \"required\") but the identity provider advertises no pushed_authorization_request_endpoint".into(),
            )
        })?;
        let request_uri = gw
            .tokens()
            .push_authorization_request(endpoint, &authorization_params(&request, &tx))
            .await?;
        pushed_authorization_url(
            &metadata.authorization_endpoint,
            &settings.oidc.client_id,
            &request_uri,
        )
    } else {
        authorization_url(&request, &tx)
    }
    .map_err(GatewayError::IdpUnavailable)?;

    let cookies = gw.sessions().cookies();
    let mut response = redirect(url.as_str());
    // Cap pending logins per browser: drop the oldest (and any unreadable or expired ones)
    // so several tabs work but cookies never pile up.
    let max = gw.sessions().settings().max_pending_logins.max(1);
    let timeout = gw.login_timeout_secs();
    let mut pending: Vec<(i64, &str)> = cookies
        .login_cookies(headers)
        .into_iter()
        .take(login_cookies_read(max))
        .map(|(name, value)| {
            let created = open_tx(gw, value)
                .map(|t| t.created)
                .filter(|c| now - c < timeout);
            (created.unwrap_or(i64::MIN), name)
        })
        .collect();
    pending.sort();
    let excess = (pending.len() + 1).saturating_sub(max);
    for (i, (created, name)) in pending.iter().enumerate() {
        if i < excess || *created == i64::MIN {
            response
                .headers_mut()
                .append(header::SET_COOKIE, cookies.clear_cookie_named(name));
        }
    }
    let sealed = gw.sessions().keys().seal(
        &serde_json::to_vec(&tx).map_err(|e| GatewayError::Internal(e.to_string()))?,
        TX_AAD,
    );
    let name = cookies.login_cookie_name(&tx.state);
    response.headers_mut().append(
        header::SET_COOKIE,
        cookies.login_cookie(&name, &URL_SAFE_NO_PAD.encode(sealed), timeout),
    );
    tracing::debug!(
        silent = tx.silent,
        step_up = !tx.acr_values.is_empty() || tx.max_age.is_some(),
        "login started"
    );
    Ok(response)
}

/// Opens a login-transaction cookie value.
pub(crate) fn open_tx(gw: &Frontend, value: &str) -> Option<LoginTransaction> {
    let sealed = URL_SAFE_NO_PAD.decode(value).ok()?;
    let plain = gw.sessions().keys().open(&sealed, TX_AAD).ok()?;
    serde_json::from_slice(&plain).ok()
}
