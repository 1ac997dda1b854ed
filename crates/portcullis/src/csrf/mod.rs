//! Anti-forgery for API routes and `/bff/user`.
//!
//! Browsers cannot send a custom header cross-site without a CORS preflight, so requiring a
//! static header (`X-CSRF: 1` by default, as Duende.BFF does) proves the request came from
//! script running on our own origin. Every API route requires it *by construction*: the
//! router wraps every route in [`AntiForgery::check`] unless the route was built with the
//! explicitly named opt-out. A missing or wrong header is a `401` with an empty body and
//! nothing is forwarded.
//!
//! WebSocket upgrades cannot carry custom headers, so an upgrade request must instead carry
//! an `Origin` from the configured allow-list.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use subtle::ConstantTimeEq;

use crate::error::GatewayError;

/// The anti-forgery header requirement.
#[derive(Debug, Clone)]
pub struct AntiForgery {
    name: HeaderName,
    value: HeaderValue,
}

impl Default for AntiForgery {
    fn default() -> Self {
        Self {
            name: HeaderName::from_static("x-csrf"),
            value: HeaderValue::from_static("1"),
        }
    }
}

impl AntiForgery {
    /// A custom header name and value. Refuses names that browsers may send cross-site
    /// without a preflight (CORS-safelisted headers) and empty values.
    pub fn new(name: &str, value: &str) -> Result<Self, String> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("anti-forgery header name {name:?} is not a valid header name"))?;
        const SAFELISTED: [&str; 5] = [
            "accept",
            "accept-language",
            "content-language",
            "content-type",
            "range",
        ];
        if SAFELISTED.contains(&name.as_str()) {
            return Err(format!(
                "anti-forgery header {name} is CORS-safelisted and would not force a preflight"
            ));
        }
        if value.is_empty() {
            return Err("anti-forgery header value must not be empty".into());
        }
        let value = HeaderValue::from_str(value).map_err(|_| {
            format!("anti-forgery header value {value:?} is not a valid header value")
        })?;
        Ok(Self { name, value })
    }

    /// Name of the anti-forgery request header (default `X-CSRF`).
    pub fn header_name(&self) -> &HeaderName {
        &self.name
    }

    /// Exactly one header with exactly the configured value.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        let mut values = headers.get_all(&self.name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) if bool::from(v.as_bytes().ct_eq(self.value.as_bytes())) => Ok(()),
            _ => Err(GatewayError::Unauthorized(
                "anti-forgery header missing or wrong",
            )),
        }
    }
}

/// Whether the request asks for a WebSocket upgrade.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    upgrade && connection
}

/// WebSocket upgrades: exactly one `Origin` header, and it is one of `allowed` (exact, ASCII
/// case-insensitive). A browser sends one (RFC 6454 §7); several would let a check that reads
/// the first one and an upstream that reads another disagree, so they are refused as a bad
/// origin is.
///
/// # Errors
/// [`GatewayError::Unauthorized`] (401) for a missing, repeated or foreign `Origin`.
pub fn check_websocket_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), GatewayError> {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = match (origins.next(), origins.next()) {
        (Some(only), None) => only.to_str().ok(),
        _ => None,
    };
    match origin {
        Some(o) if allowed.iter().any(|a| a.eq_ignore_ascii_case(o)) => Ok(()),
        _ => Err(GatewayError::Unauthorized("websocket origin not allowed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn header_table() {
        let af = AntiForgery::default();
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("x-csrf", "1")], true),
            (&[("X-CSRF", "1")], true),
            (&[], false),
            (&[("x-csrf", "0")], false),
            (&[("x-csrf", "1 ")], false),
            (&[("x-csrf", "true")], false),
            (&[("x-csrf", "1"), ("x-csrf", "1")], false),
            (&[("x-xsrf", "1")], false),
        ];
        for (h, ok) in cases {
            assert_eq!(af.check(&headers(h)).is_ok(), *ok, "{h:?}");
        }
    }

    #[test]
    fn custom_header_must_force_a_preflight() {
        assert!(AntiForgery::new("content-type", "x").is_err());
        assert!(AntiForgery::new("x-requested-with", "").is_err());
        let af = AntiForgery::new("X-Requested-With", "XMLHttpRequest").unwrap();
        assert!(af
            .check(&headers(&[("x-requested-with", "XMLHttpRequest")]))
            .is_ok());
    }

    #[test]
    fn websocket_origin_allow_list() {
        let allowed = vec!["https://app.example.com".to_owned()];
        let up = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        assert!(is_websocket_upgrade(&headers(&up)));
        let mut ok = up.to_vec();
        ok.push(("origin", "https://app.example.com"));
        assert!(check_websocket_origin(&headers(&ok), &allowed).is_ok());
        let mut evil = up.to_vec();
        evil.push(("origin", "https://evil.example"));
        assert!(check_websocket_origin(&headers(&evil), &allowed).is_err());
        assert!(check_websocket_origin(&headers(&up), &allowed).is_err());
    }

    /// Issue 12.13: the allowed origin first and a foreign one second must not pass.
    #[test]
    fn websocket_with_two_origin_headers_is_refused() {
        let allowed = vec!["https://app.example.com".to_owned()];
        for pair in [
            ["https://app.example.com", "https://evil.example"],
            ["https://evil.example", "https://app.example.com"],
            ["https://app.example.com", "https://app.example.com"],
        ] {
            let h = headers(&[("origin", pair[0]), ("origin", pair[1])]);
            assert!(check_websocket_origin(&h, &allowed).is_err(), "{pair:?}");
        }
        let one = headers(&[("origin", "https://app.example.com")]);
        assert!(check_websocket_origin(&one, &allowed).is_ok());
    }
}
