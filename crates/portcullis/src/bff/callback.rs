//! The redirect URI: `GET ?code&state&iss` (or `POST` with `response_mode=form_post`).
//!
//! Order of checks: parameters well-formed and not duplicated → a pending login for this
//! `state` bound to this browser (cookie) and not expired → RFC 9207 `iss` (on error
//! responses too: a mix-up attacker's error must not steer the browser) → IdP `error` →
//! code exchange → ID token (signature, `iss`, `aud`, `azp`, `exp`, `iat`, `nonce`) → for a
//! step-up login, `acr` and `auth_time` ([`check_step_up`]). Only then is a session created.
//! The transaction cookie is removed on every outcome.
//!
//! A login in a browser that already has a session replaces it: the old session is ended
//! (its refresh token revoked unless the new login continues the same IdP session: same `sub`
//! and `sid`), a new session with a new id is created from the new ID token alone, and the
//! cookie now names the new one. This is how a step-up login "continues" the session: the
//! SPA keeps working with the new `acr`/`auth_time`, the old session id is dead (no session
//! fixation), and a login as another user inherits nothing.
//!
//! An IdP `error` (RFC 6749 §4.1.2.1, OpenID Connect Core §3.1.2.6):
//!
//! | error | normal login | `prompt=none` login |
//! |---|---|---|
//! | [`USER_RESOLVABLE`] (`access_denied`, `login_required`, ...) | 302 to the returnUrl with `bff_error=<code>` added ([`super::ERROR_PARAM`]) | 302 to the silent-login callback page (it reports `isLoggedIn:false`) |
//! | anything else (`invalid_request`, `invalid_scope`, `server_error`, unknown) | error page (502; 503 for `temporarily_unavailable`) and an `error` log line | `error` log line, then the silent-login callback page |

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::login::open_tx;
use super::{parse_params, redirect};
use crate::error::GatewayError;
use crate::frontend::Frontend;
use crate::log_safe::untrusted;
use crate::oidc::authorize::LoginTransaction;
use crate::oidc::id_token::{self, Expectations, PROTOCOL_CLAIMS};
use crate::session::{Claim, Lookup, Ticket};

/// IdP errors the user caused or can resolve: the browser goes back to the app, which learns
/// the code from [`super::ERROR_PARAM`].
pub const USER_RESOLVABLE: [&str; 5] = [
    "access_denied",
    "login_required",
    "consent_required",
    "interaction_required",
    "account_selection_required",
];

const SINGLES: [&str; 6] = [
    "state",
    "code",
    "iss",
    "error",
    "error_description",
    "session_state",
];

/// `GET` on the redirect URI (`response_mode=query`): finishes the login from the query
/// string. See the module docs for the order of checks. Errors become responses here.
pub async fn callback_get(
    State(gw): State<Frontend>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    finish(gw, query.unwrap_or_default().as_bytes(), headers).await
}

/// `POST` on the redirect URI (`response_mode=form_post`): finishes the login from the
/// `application/x-www-form-urlencoded` body.
pub async fn callback_post(
    State(gw): State<Frontend>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    finish(gw, &body, headers).await
}

async fn finish(gw: Frontend, raw: &[u8], headers: HeaderMap) -> Response {
    let params = match parse_params(raw, &SINGLES) {
        Ok(p) => p,
        Err(_) => {
            return GatewayError::BadNavigation("The sign-in response repeats a parameter.".into())
                .into_response()
        }
    };
    let Some(state) = params.get("state").filter(|s| !s.is_empty()) else {
        return GatewayError::BadNavigation("The sign-in response has no state.".into())
            .into_response();
    };
    let cookies = gw.sessions().cookies();
    let cookie_name = cookies.login_cookie_name(state);
    let tx = cookies
        .login_cookies(&headers)
        .into_iter()
        .find(|(n, _)| *n == cookie_name)
        .and_then(|(_, v)| open_tx(&gw, v))
        .filter(|tx| tx.state == *state && gw.now() - tx.created < gw.login_timeout_secs());
    let clear_tx = cookies.clear_cookie_named(&cookie_name);
    let with_clear = |mut r: Response| {
        r.headers_mut().append(header::SET_COOKIE, clear_tx.clone());
        r
    };

    let Some(tx) = tx else {
        // Unknown, replayed or expired state. Logged in already (e.g. a second tab finished
        // first, or the back button)? Go home; otherwise a clear page, never a loop.
        return match gw.sessions().lookup(&headers).await {
            Ok(Lookup::Active(_)) => with_clear(redirect(gw.home())),
            Ok(_) => with_clear(
                GatewayError::BadNavigation(
                    "This sign-in attempt is unknown or has expired. Please start again from the application.".into(),
                )
                .into_response(),
            ),
            Err(e) => with_clear(e.into_response()),
        };
    };
    let done = if tx.silent {
        gw.silent_callback_path().to_owned()
    } else {
        tx.return_url.clone()
    };

    if let Err(e) = check_issuer(&gw, &params).await {
        return with_clear(e.into_response());
    }

    if let Some(error) = params.get("error") {
        let description = params.get("error_description").map(String::as_str);
        if USER_RESOLVABLE.contains(&error.as_str()) {
            tracing::info!(
                idp_error = %untrusted(error),
                idp_error_description = %untrusted(description.unwrap_or("")),
                silent = tx.silent,
                "identity provider returned an error to the callback; back to the application"
            );
            let to = if tx.silent {
                done
            } else {
                append_query_param(&done, super::ERROR_PARAM, error)
            };
            return with_clear(redirect(&to));
        }
        let refused = GatewayError::IdpRefusedLogin {
            code: error.chars().take(64).collect(),
            description: description.map(|d| d.chars().take(256).collect()),
        };
        if tx.silent {
            // A page inside a hidden iframe helps nobody: log it, and let the silent-login
            // page tell the parent window that no session exists.
            refused.report();
            return with_clear(redirect(&done));
        }
        return with_clear(refused.into_response());
    }

    let session_key = match crate::token::session_key::for_callback(gw.sessions().keys(), &tx) {
        Ok(key) => key.map(std::sync::Arc::new),
        Err(e) => return with_clear(e.into_response()),
    };
    let ticket = match complete(&gw, &params, &tx, session_key).await {
        Ok(ticket) => ticket,
        Err(e) => return with_clear(e.into_response()),
    };
    gw.tokens().end_replaced_session(&headers, &ticket).await;
    match gw.sessions().create(ticket).await {
        Ok((id, _record)) => {
            let mut r = redirect(&done);
            let max_age = i64::try_from(gw.sessions().settings().absolute_timeout.as_secs())
                .unwrap_or(i64::MAX);
            r.headers_mut()
                .append(header::SET_COOKIE, cookies.session_cookie(&id, max_age));
            tracing::info!("login completed; session created");
            with_clear(r)
        }
        Err(e) => with_clear(e.into_response()),
    }
}

async fn complete(
    gw: &Frontend,
    params: &std::collections::HashMap<String, String>,
    tx: &LoginTransaction,
    session_key: Option<std::sync::Arc<portcullis_token::DpopKey>>,
) -> Result<Ticket, GatewayError> {
    let (nonce, verifier) = (tx.nonce.as_str(), tx.pkce_verifier.as_str());
    let metadata = gw.provider().metadata().await?;
    let code = params
        .get("code")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| GatewayError::BadNavigation("The sign-in response has no code.".into()))?;
    let response = gw
        .tokens()
        .exchange_code(code, gw.redirect_uri(), verifier, session_key.clone())
        .await?;
    let id_token = response.id_token.as_ref().ok_or_else(|| {
        GatewayError::LoginRejected("The identity provider returned no ID token.".into())
    })?;
    let settings = gw.settings();
    let claims = id_token::validate(
        gw.provider(),
        id_token.expose_secret(),
        &gw.settings()
            .oidc
            .id_token_algs(&metadata.id_token_signing_alg_values_supported),
        &Expectations {
            client_id: &settings.oidc.client_id,
            trusted_audiences: &settings.oidc.trusted_audiences,
            nonce: Some(nonce),
            now: gw.now(),
            skew: i64::try_from(settings.oidc.clock_skew.as_secs()).unwrap_or(300),
        },
    )
    .await?;
    check_step_up(tx, &claims, gw.now(), settings.oidc.clock_skew.as_secs())?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let sid = claims.get("sid").and_then(Value::as_str).map(str::to_owned);
    let mut session_claims = Vec::new();
    for (name, value) in &claims {
        if PROTOCOL_CLAIMS.contains(&name.as_str()) {
            continue;
        }
        push_claim(&mut session_claims, name, value);
    }
    if settings.oidc.fetch_userinfo {
        if let Some(endpoint) = &metadata.userinfo_endpoint {
            let extra = gw
                .tokens()
                .userinfo(endpoint, &response, session_key.clone())
                .await?;
            if extra.get("sub").and_then(Value::as_str) != Some(sub.as_str()) {
                return Err(GatewayError::LoginRejected(
                    "UserInfo belongs to another subject.".into(),
                ));
            }
            merge_userinfo(&mut session_claims, &extra);
        }
    }
    let tokens = crate::token::session_key::bind(
        gw.tokens().user_tokens_from(response)?,
        session_key.as_deref(),
    );
    Ok(Ticket {
        sub,
        sid,
        claims: session_claims,
        session_state: params.get("session_state").cloned(),
        tokens,
    })
}

/// A step-up login must deliver what it asked for. With `acr_values` requested, the ID
/// token's `acr` must be one of them: OIDC Core §3.1.2.1 makes `acr_values` a voluntary
/// request, but a step-up that did not happen must not look as if it had. With `max_age`
/// requested, `auth_time` must be present and no older than `max_age` plus `skew_secs` (OIDC
/// Core §3.1.3.7 (13)), and not in the future beyond the skew.
///
/// # Errors
/// [`GatewayError::LoginRejected`] (an error page and a log line) naming the rule.
pub fn check_step_up(
    tx: &LoginTransaction,
    claims: &serde_json::Map<String, Value>,
    now: i64,
    skew_secs: u64,
) -> Result<(), GatewayError> {
    let skew = i64::try_from(skew_secs).unwrap_or(300);
    if !tx.acr_values.is_empty() {
        let acr = claims.get("acr").and_then(Value::as_str);
        if !acr.is_some_and(|a| tx.acr_values.iter().any(|w| w == a)) {
            return Err(GatewayError::LoginRejected(
                "The identity provider did not confirm the requested authentication level (acr). Please try again; if this persists, the operator should check which authentication context classes the identity provider delivers.".into(),
            ));
        }
    }
    if let Some(max_age) = tx.max_age {
        let max_age = i64::try_from(max_age).unwrap_or(i64::MAX);
        let fresh = claims
            .get("auth_time")
            .and_then(crate::access::number_secs)
            .is_some_and(|t| {
                t <= now.saturating_add(skew)
                    && now.saturating_sub(t) <= max_age.saturating_add(skew)
            });
        if !fresh {
            return Err(GatewayError::LoginRejected(
                "The identity provider did not confirm a recent enough sign-in (auth_time). Please try again.".into(),
            ));
        }
    }
    Ok(())
}

/// RFC 9207 §2.4: the `iss` parameter, when present, must be our issuer; when the IdP
/// advertises `authorization_response_iss_parameter_supported`, it must be present. Checked
/// on success and error responses alike.
async fn check_issuer(
    gw: &Frontend,
    params: &std::collections::HashMap<String, String>,
) -> Result<(), GatewayError> {
    match params.get("iss") {
        Some(iss) if iss != gw.provider().issuer() => Err(GatewayError::LoginRejected(
            "The sign-in response came from an unexpected issuer.".into(),
        )),
        Some(_) => Ok(()),
        // FAPI 2.0 §5.3.2.2 (4): the RFC 9207 `iss` is required whatever discovery says.
        None if gw.settings().oidc.profile == crate::settings::SecurityProfile::Fapi2
            || gw
                .provider()
                .metadata()
                .await?
                .authorization_response_iss_parameter_supported =>
        {
            Err(GatewayError::LoginRejected(
                "The sign-in response lacks the issuer parameter.".into(),
            ))
        }
        None => Ok(()),
    }
}

/// Adds `name=value` to the query of a local URL, before any fragment:
/// `/a` → `/a?n=v`, `/a?x=1#top` → `/a?x=1&n=v#top`, `/a?` → `/a?n=v`.
pub(crate) fn append_query_param(url: &str, name: &str, value: &str) -> String {
    let (before, fragment) = match url.find('#') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let pair: String = form_urlencoded::Serializer::new(String::new())
        .append_pair(name, value)
        .finish();
    let (path, query) = match before.split_once('?') {
        Some((p, q)) => (p, q),
        None => (before, ""),
    };
    // A returnUrl may already carry the parameter (a crafted link): the IdP's answer replaces
    // it, so an SPA reading the first value never sees a planted one.
    let kept: Vec<&str> = query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .filter(|piece| {
            form_urlencoded::parse(piece.as_bytes())
                .next()
                .is_none_or(|(k, _)| k != name)
        })
        .collect();
    if kept.is_empty() {
        format!("{path}?{pair}{fragment}")
    } else {
        format!("{path}?{}&{pair}{fragment}", kept.join("&"))
    }
}

/// Claims only the ID token may give a session: what route rules judge the sign-in by
/// (`require_acr`, `max_auth_age`). UserInfo (OIDC Core §5.3) describes the user, not the
/// authentication event, and often carries profile attributes an administrator or the user
/// maintains; an `acr` or `auth_time` from there (when the ID token has none) would pass a
/// step-up rule without any step-up.
pub const ID_TOKEN_ONLY: [&str; 3] = ["acr", "amr", "auth_time"];

/// Adds UserInfo's claims to the session's: those the ID token did not already give, and
/// never one of [`ID_TOKEN_ONLY`] or a protocol claim.
fn merge_userinfo(session_claims: &mut Vec<Claim>, userinfo: &serde_json::Map<String, Value>) {
    for (name, value) in userinfo {
        if ID_TOKEN_ONLY.contains(&name.as_str()) || PROTOCOL_CLAIMS.contains(&name.as_str()) {
            continue;
        }
        if !session_claims.iter().any(|c| c.kind == *name) {
            push_claim(session_claims, name, value);
        }
    }
}

/// Arrays become repeated claims, as in a .NET `ClaimsPrincipal`.
fn push_claim(out: &mut Vec<Claim>, name: &str, value: &Value) {
    match value {
        Value::Array(items) => {
            for item in items {
                out.push(Claim {
                    kind: name.to_owned(),
                    value: item.clone(),
                });
            }
        }
        Value::Null => {}
        v => out.push(Claim {
            kind: name.to_owned(),
            value: v.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_parameter_replaces_any_planted_one_in_the_return_url() {
        let cases = [
            ("/", "/?bff_error=access_denied"),
            ("/orders", "/orders?bff_error=access_denied"),
            ("/orders?x=1", "/orders?x=1&bff_error=access_denied"),
            ("/orders?", "/orders?bff_error=access_denied"),
            ("/orders?x=1&", "/orders?x=1&bff_error=access_denied"),
            ("/orders#top", "/orders?bff_error=access_denied#top"),
            (
                "/o?x=1#frag?not=query",
                "/o?x=1&bff_error=access_denied#frag?not=query",
            ),
            // A planted value is replaced, not kept in front of the real one.
            ("/p?bff_error=fake", "/p?bff_error=access_denied"),
            (
                "/p?a=1&bff_error=fake&b=2&bff%5Ferror=x",
                "/p?a=1&b=2&bff_error=access_denied",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(
                append_query_param(url, ERROR_PARAM_FOR_TESTS, "access_denied"),
                want,
                "{url}"
            );
        }
    }

    const ERROR_PARAM_FOR_TESTS: &str = super::super::ERROR_PARAM;

    /// Regression: with `fetch_userinfo`, a UserInfo `acr` or `auth_time` the ID token lacked
    /// became a session claim, so `require_acr`/`max_auth_age` could pass on what UserInfo
    /// said (often a profile attribute) instead of the authentication the ID token vouches for.
    #[test]
    fn userinfo_cannot_supply_acr_or_auth_time_the_id_token_lacks() {
        let mut claims = vec![Claim {
            kind: "sub".into(),
            value: serde_json::json!("alice"),
        }];
        let userinfo = serde_json::json!({
            "sub": "alice",
            "acr": "urn:example:mfa",
            "amr": ["hwk"],
            "auth_time": 4_102_444_800_i64,
            "iss": "https://elsewhere",
            "email": "alice@example.com",
            "role": ["admin", "ops"],
        });
        merge_userinfo(&mut claims, userinfo.as_object().unwrap());
        let kinds: Vec<&str> = claims.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(kinds, ["sub", "email", "role", "role"]);
        let route = crate::access::RouteAccess {
            require_acr: vec!["urn:example:mfa".into()],
            ..Default::default()
        };
        assert!(route.check(&claims, 0).is_err());
    }

    #[test]
    fn step_up_login_must_deliver_the_requested_acr_and_a_fresh_auth_time() {
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        let mut tx = LoginTransaction::new("/".into(), false, 0);
        let now = 1_000_000;
        // An ordinary login asks nothing.
        assert!(check_step_up(&tx, &claims(serde_json::json!({})), now, 60).is_ok());
        tx.acr_values = vec!["urn:example:mfa".into(), "urn:example:hw".into()];
        let cases = [
            (serde_json::json!({"acr": "urn:example:hw"}), true),
            (serde_json::json!({"acr": "urn:example:pwd"}), false),
            (serde_json::json!({}), false),
            (serde_json::json!({"acr": ["urn:example:mfa"]}), false),
        ];
        for (c, ok) in cases {
            assert_eq!(
                check_step_up(&tx, &claims(c.clone()), now, 60).is_ok(),
                ok,
                "{c}"
            );
        }
        tx.acr_values.clear();
        tx.max_age = Some(300);
        let cases = [
            (serde_json::json!({"auth_time": now - 300}), true),
            (serde_json::json!({"auth_time": now - 360}), true),
            (serde_json::json!({"auth_time": now - 361}), false),
            (serde_json::json!({"auth_time": now + 60}), true),
            (serde_json::json!({"auth_time": now + 61}), false),
            (serde_json::json!({"auth_time": "1000000"}), false),
            (serde_json::json!({}), false),
        ];
        for (c, ok) in cases {
            assert_eq!(
                check_step_up(&tx, &claims(c.clone()), now, 60).is_ok(),
                ok,
                "{c}"
            );
        }
    }
}
