//! The management endpoints, Duende.BFF-compatible (see `shared/guide/behaviour.md`).
//!
//! | endpoint | anti-forgery | module |
//! |---|---|---|
//! | `GET {base}/login` | no (navigation) | [`login`] |
//! | `GET {base}/silent-login` (Duende v3; v4 uses `login?prompt=none`) | no (iframe) | [`login`] |
//! | `GET/POST {callback}` | no | [`callback`] |
//! | `GET {base}/user` | **yes** | [`user`] |
//! | `GET {base}/logout?sid=` | no, `sid` must match | [`logout`] |
//! | `GET {signed-out callback}` | no | [`logout`] |
//! | `GET {base}/silent-login-callback` | no | [`silent`] |
//! | `POST {base}/backchannel` | no (server-to-server) | [`backchannel`] |
//! | `GET {base}/diagnostics` | no, 404 unless enabled | [`diagnostics`] |
//! | `GET {base}/client.js` | no (public file) | [`client_js`] |

pub mod backchannel;
pub mod callback;
pub mod client_js;
pub mod diagnostics;
pub mod login;
pub mod logout;
pub mod silent;
pub mod user;

use std::collections::HashMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::GatewayError;

/// The management endpoints' paths relative to the base path (`/bff` by default). With
/// `base_path = "/"` they sit at the root, so no route, SPA file or callback may use them.
pub const MANAGEMENT_ENDPOINTS: &[&str] = &[
    "/login",
    "/silent-login",
    "/silent-login-callback",
    "/user",
    "/logout",
    "/backchannel",
    "/diagnostics",
    "/client.js",
];

/// The query parameter that carries an IdP's user-resolvable `error` code (RFC 6749
/// §4.1.2.1: `access_denied`, `login_required`, `consent_required`, `interaction_required`,
/// `account_selection_required`) to the returnUrl after a failed login, e.g.
/// `/orders?bff_error=access_denied`.
pub const ERROR_PARAM: &str = "bff_error";

/// What must not appear raw in a `Location` URI: controls, space, `"<>\`` and (always, by
/// `utf8_percent_encode`) every non-ASCII byte. `%` stays as it is: already-encoded
/// sequences keep their meaning.
const LOCATION_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`');

/// A `302 Found` that no cache keeps. The location is made a valid (ASCII) URI reference:
/// a decoded `returnUrl` such as `/caf\u{e9}` is sent as `/caf%C3%A9`, not as raw UTF-8.
pub(crate) fn redirect(location: &str) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    let location = percent_encoding::utf8_percent_encode(location, LOCATION_ENCODE).to_string();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The validated `returnUrl` parameter (local paths only), or `default`.
pub(crate) fn return_url_param(
    params: &HashMap<String, String>,
    default: &str,
) -> Result<String, GatewayError> {
    match params.get("returnUrl") {
        Some(u) => crate::oidc::authorize::validate_return_url(u)
            .map(str::to_owned)
            .map_err(|e| GatewayError::bad_param("returnUrl", e.to_string())),
        None => Ok(default.to_owned()),
    }
}

/// Parses `application/x-www-form-urlencoded` parameters. A parameter listed in `singles`
/// that appears more than once is refused (no "first wins"/"last wins" ambiguity for
/// `state`, `code`, `logout_token`, ...).
pub(crate) fn parse_params(
    raw: &[u8],
    singles: &[&'static str],
) -> Result<HashMap<String, String>, GatewayError> {
    let mut out: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw) {
        if let Some(name) = singles.iter().find(|s| **s == k) {
            if out.contains_key(*name) {
                return Err(GatewayError::bad_param(
                    name,
                    format!("{name} must appear at most once"),
                ));
            }
        }
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_locations_are_ascii() {
        let location = |to: &str| {
            redirect(to).headers()[header::LOCATION]
                .to_str()
                .map(str::to_owned)
                .unwrap_or_else(|_| panic!("{to:?} gave a non-ASCII Location"))
        };
        assert_eq!(location("/caf\u{e9}?q=\u{fffd}"), "/caf%C3%A9?q=%EF%BF%BD");
        assert_eq!(location("/a b\"<>`"), "/a%20b%22%3C%3E%60");
        // Already-valid URIs are unchanged.
        for ok in [
            "/",
            "/x%20y?a=1&b=%2F#frag",
            "https://idp.example/authorize?x=%C3%A9",
        ] {
            assert_eq!(location(ok), ok);
        }
    }

    #[test]
    fn duplicated_protocol_parameters_are_refused() {
        assert!(parse_params(b"state=a&state=b", &["state"]).is_err());
        assert!(parse_params(b"code=a&code=a", &["code"]).is_err());
        let p = parse_params(b"state=a&x=1&x=2", &["state"]).unwrap();
        assert_eq!(p["state"], "a");
        assert_eq!(p["x"], "1");
    }
}
