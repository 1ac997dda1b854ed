//! Per-route access rules: required claims, and step-up authentication (OAuth 2.0 Step Up
//! Authentication Challenge Protocol, RFC 9470).
//!
//! A proxied route may ask more of a session than "logged in":
//!
//! | rule | session fails it | answer |
//! |---|---|---|
//! | `require_claims = { role = ["admin"] }` | no `role` claim with one of the values | `403`, empty body |
//! | `require_acr = ["urn:example:mfa"]` | `acr` claim not one of the values | `401` RFC 9470 challenge |
//! | `max_auth_age = "10m"` | `auth_time` claim missing or older | `401` RFC 9470 challenge |
//!
//! Claims are checked first: a session that can never pass the route is not asked to
//! authenticate again. A route with any rule needs a session, whatever its token policy
//! (anonymous: `401`). Nothing is forwarded when a rule fails, and no token is fetched.
//!
//! The claims are the session's, taken from the login's validated ID token (and UserInfo,
//! when enabled), multi-valued claims repeated ([`Claim`]). `acr` and `auth_time` are the ID
//! token's (OpenID Connect Core §2); a refresh never changes them (its ID token must keep
//! `auth_time`, OIDC Core §12.2), so only a new login, the step-up, raises them.
//!
//! The challenge ([`StepUpChallenge`]) is what RFC 9470 §3 has a resource server send, plus a
//! JSON body the SPA can act on without parsing the header:
//!
//! ```text
//! HTTP/1.1 401 Unauthorized
//! WWW-Authenticate: Bearer error="insufficient_user_authentication",
//!   error_description="A different authentication level is required",
//!   acr_values="urn:example:mfa", max_age=600
//! Content-Type: application/json
//!
//! {"error":"insufficient_user_authentication",
//!  "error_description":"A different authentication level is required",
//!  "acr_values":"urn:example:mfa","max_age":600,
//!  "login_url":"/bff/login?acr_values=urn%3Aexample%3Amfa&max_age=600"}
//! ```
//!
//! An upstream API that answers a proxied call with its own RFC 9470 challenge (`Bearer` or
//! `DPoP` scheme, [`upstream_step_up`]) is answered with the same shape, built from the
//! upstream's `acr_values` and `max_age`, so the SPA handles one shape.
//!
//! ```
//! use portcullis::access::{ClaimRule, Denied, RouteAccess};
//! use portcullis::session::Claim;
//!
//! let route = RouteAccess {
//!     require_claims: vec![ClaimRule { claim: "role".into(), values: vec!["admin".into()] }],
//!     require_acr: vec!["urn:example:mfa".into()],
//!     max_auth_age: None,
//! };
//! let claim = |kind: &str, value: &str| Claim { kind: kind.into(), value: value.into() };
//! let password_only = [claim("role", "admin"), claim("acr", "urn:example:pwd")];
//! assert!(matches!(
//!     route.check(&password_only, 0),
//!     Err(Denied::StepUp { acr_failed: true, .. })
//! ));
//! let with_mfa = [claim("role", "admin"), claim("acr", "urn:example:mfa")];
//! assert_eq!(route.check(&with_mfa, 0), Ok(()));
//! ```
//!
//! A route's rules also hold for requests through another route whose forwarded URL lands on
//! its upstream once read the way upstream servers read paths (percent-decoded, case-folded,
//! `;` parameters and empty segments dropped): `/api/%61dmin/x` through `/api` → `https://up/v1`
//! reaches `https://up/v1/admin/x` of a route `/api/admin` → `https://up/v1/admin`, and is
//! checked against that route's rules as well ([`crate::proxy::Route::guards_for`]).
//!
//! Caveats: claim values are compared as strings (a number or boolean claim by its JSON
//! text, `42`, `true`); a space-separated string is one value, not several; claim names are
//! top-level names (URL-like names with dots, as Auth0 uses, are names, not paths).

mod challenge;

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use crate::error::GatewayError;
use crate::frontend::Frontend;
use crate::log_safe::untrusted;
use crate::proxy::Route;
use crate::session::Claim;

pub use challenge::{
    parse_www_authenticate, upstream_step_up, AuthChallenge, StepUpChallenge,
    INSUFFICIENT_USER_AUTHENTICATION,
};

/// One required claim: the session must hold `claim` with at least one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    /// The claim name, e.g. `role`.
    pub claim: String,
    /// Accepted values; any one suffices. Never empty (the configuration refuses it).
    pub values: Vec<String>,
}

/// A route's access rules (`[[routes]] require_claims`, `require_acr`, `max_auth_age`).
/// `Default`: no rule, the route's token policy alone decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteAccess {
    /// Every rule must hold (`403` otherwise).
    pub require_claims: Vec<ClaimRule>,
    /// Acceptable `acr` values (any one); empty: no requirement. Sent as the challenge's
    /// `acr_values`.
    pub require_acr: Vec<String>,
    /// Longest time since the user last authenticated (`auth_time`); whole seconds, at least
    /// one. Sent as the challenge's `max_age` (seconds).
    pub max_auth_age: Option<Duration>,
}

/// Why a session may not use a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// A required claim is missing or has none of the accepted values: `403`. Carries the
    /// claim's name (never the session's values) for the log.
    MissingClaim(String),
    /// The authentication is too weak or too old: `401` with an RFC 9470 challenge asking
    /// for these `acr_values` and `max_age` (seconds).
    StepUp {
        /// Every acceptable `acr` of the route (empty: the route has no `acr` rule).
        acr_values: Vec<String>,
        /// The route's `max_auth_age` in seconds, if it has one.
        max_age: Option<u64>,
        /// `true` when the `acr` rule failed (else only the age did): picks the description.
        acr_failed: bool,
    },
}

impl RouteAccess {
    /// No rule at all.
    pub fn is_empty(&self) -> bool {
        self.require_claims.is_empty() && self.require_acr.is_empty() && self.max_auth_age.is_none()
    }

    /// Checks a session's claims at `now` (Unix seconds, the gateway's clock). Claims first,
    /// then `acr` and `auth_time` together, so that one step-up login satisfies the route.
    ///
    /// `auth_time` counts when it is a JSON number (OIDC Core §2); an `auth_time` ahead of
    /// `now` (the IdP's clock runs ahead) counts as just now. No clock skew is added: the
    /// limit is the operator's, and the IdP's own check of `max_age` (at the step-up login)
    /// already allowed for skew.
    ///
    /// # Errors
    /// The first failed rule, as [`Denied`].
    pub fn check(&self, claims: &[Claim], now: i64) -> Result<(), Denied> {
        for rule in &self.require_claims {
            let held = claims.iter().any(|c| {
                c.kind == rule.claim && rule.values.iter().any(|v| value_matches(&c.value, v))
            });
            if !held {
                return Err(Denied::MissingClaim(rule.claim.clone()));
            }
        }
        let acr_ok = self.require_acr.is_empty()
            || claims.iter().any(|c| {
                c.kind == "acr" && self.require_acr.iter().any(|v| value_matches(&c.value, v))
            });
        let max_age = self.max_auth_age.map(|d| d.as_secs());
        let age_ok = max_age.is_none_or(|max| {
            auth_time(claims)
                .is_some_and(|t| now.saturating_sub(t) <= i64::try_from(max).unwrap_or(i64::MAX))
        });
        if acr_ok && age_ok {
            return Ok(());
        }
        Err(Denied::StepUp {
            acr_values: self.require_acr.clone(),
            max_age,
            acr_failed: !acr_ok,
        })
    }
}

/// Requests the access rules turned away, by `reason`: `claims` (403), `step_up` (a route's
/// `require_acr`/`max_auth_age`, 401) or `upstream_step_up` (an upstream's RFC 9470
/// challenge, 401).
pub const DENIED_METRIC: &str = "portcullis_access_denied_total";

/// Applies `route`'s rules to a session's claims (the gateway's request pipeline). A failure
/// is logged with the route and, for a missing claim, the claim's name (never the session's
/// values), and returned as the error to answer with: [`GatewayError::Forbidden`] (403) or
/// [`GatewayError::StepUpRequired`] (401 challenge).
///
/// # Errors
/// As above.
pub(crate) fn enforce(fe: &Frontend, route: &Route, claims: &[Claim]) -> Result<(), GatewayError> {
    enforce_rules(fe, &route.settings.path, &route.settings.access, claims)
}

/// [`enforce`] for the rules `access` of the route with prefix `route_path`: the request's own
/// route, or a route whose upstream the request reaches as well
/// ([`crate::proxy::Route::guards_for`]).
pub(crate) fn enforce_rules(
    fe: &Frontend,
    route_path: &str,
    access: &RouteAccess,
    claims: &[Claim],
) -> Result<(), GatewayError> {
    match access.check(claims, fe.now()) {
        Ok(()) => Ok(()),
        Err(Denied::MissingClaim(claim)) => {
            metrics::counter!(DENIED_METRIC, "reason" => "claims").increment(1);
            tracing::info!(
                route = %route_path,
                claim = %untrusted(&claim),
                "the session lacks a claim value this route requires; 403, nothing forwarded"
            );
            Err(GatewayError::Forbidden(
                "the session lacks a claim this route requires",
            ))
        }
        Err(Denied::StepUp {
            acr_values,
            max_age,
            acr_failed,
        }) => {
            metrics::counter!(DENIED_METRIC, "reason" => "step_up").increment(1);
            tracing::info!(
                route = %route_path,
                acr_failed,
                "the session's authentication is too weak or too old for this route; step-up challenge, nothing forwarded"
            );
            Err(GatewayError::StepUpRequired(Box::new(StepUpChallenge {
                acr_values,
                max_age,
                description: if acr_failed {
                    StepUpChallenge::ACR_DESCRIPTION
                } else {
                    StepUpChallenge::AGE_DESCRIPTION
                },
                login_path: fe.login_path().to_owned(),
            })))
        }
    }
}

/// Turns an upstream's `401` RFC 9470 challenge ([`upstream_step_up`]) into the gateway's
/// (the upstream's body and headers are dropped); any other response passes unchanged.
///
/// # Errors
/// [`GatewayError::StepUpRequired`] when the upstream asked for a step-up.
pub(crate) fn normalize_upstream_challenge(
    fe: &Frontend,
    route: &Route,
    response: Response,
) -> Result<Response, GatewayError> {
    if response.status() != StatusCode::UNAUTHORIZED {
        return Ok(response);
    }
    let Some((acr_values, max_age)) = upstream_step_up(response.headers()) else {
        return Ok(response);
    };
    metrics::counter!(DENIED_METRIC, "reason" => "upstream_step_up").increment(1);
    tracing::info!(
        route = %route.settings.path,
        "the upstream asked for step-up authentication (RFC 9470); answered with the gateway's challenge"
    );
    Err(GatewayError::StepUpRequired(Box::new(StepUpChallenge {
        acr_values,
        max_age,
        description: StepUpChallenge::UPSTREAM_DESCRIPTION,
        login_path: fe.login_path().to_owned(),
    })))
}

/// The session's `auth_time` (Unix seconds), when it is a JSON number.
pub fn auth_time(claims: &[Claim]) -> Option<i64> {
    claims
        .iter()
        .find(|c| c.kind == "auth_time")
        .and_then(|c| number_secs(&c.value))
}

/// A JSON number as whole seconds (fractions dropped), `None` for anything else.
pub(crate) fn number_secs(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && f.abs() < 9.0e15)
            // In range and finite (checked above): the cast cannot saturate.
            .map(|f| f.floor() as i64)
    })
}

/// Whether one claim value equals `wanted`: a string exactly; a number or boolean by its JSON
/// text (`42`, `true`). Objects, arrays and `null` never match.
pub fn value_matches(value: &Value, wanted: &str) -> bool {
    match value {
        Value::String(s) => s == wanted,
        Value::Number(n) => n.to_string() == wanted,
        Value::Bool(b) => (if *b { "true" } else { "false" }) == wanted,
        _ => false,
    }
}

/// Most `acr_values` one login or challenge may carry.
pub const MAX_ACR_VALUES: usize = 10;

/// Longest single `acr` value accepted (characters).
pub const MAX_ACR_LEN: usize = 255;

/// Longest `acr_values` list accepted, space-separated (characters). The list rides in the
/// sealed login-transaction cookie next to a `returnUrl` of up to 2 KiB; this bound keeps that
/// cookie under the 4 KiB browsers store (a larger one would be dropped silently and the
/// login would fail with an unknown `state`).
pub const MAX_ACR_VALUES_LEN: usize = 256;

/// Whether `v` can be one `acr` value in `acr_values` (a space-separated list, OIDC Core
/// §3.1.2.1) and in a quoted `WWW-Authenticate` parameter (RFC 9110 §11.2): 1 to
/// [`MAX_ACR_LEN`] visible ASCII characters other than `"` and `\` (URIs and the usual
/// names such as `urn:mace:incommon:iap:silver`, `1`, `mfa`).
pub fn is_valid_acr(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_ACR_LEN
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// Parses an `acr_values` parameter (space-separated; runs of spaces tolerated).
///
/// # Errors
/// A message for the 400 page: no value, more than [`MAX_ACR_VALUES`], or a value
/// [`is_valid_acr`] refuses.
pub fn parse_acr_values(raw: &str) -> Result<Vec<String>, &'static str> {
    let values: Vec<String> = raw
        .split(' ')
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    if values.is_empty() {
        return Err("acr_values must name at least one authentication context class");
    }
    if values.len() > MAX_ACR_VALUES || values.join(" ").len() > MAX_ACR_VALUES_LEN {
        return Err("acr_values names too many authentication context classes");
    }
    if !values.iter().all(|v| is_valid_acr(v)) {
        return Err("acr_values must be space-separated printable ASCII values");
    }
    Ok(values)
}

/// Largest `max_age` accepted (seconds): ten years. Larger values mean nothing to an IdP
/// and would overflow time arithmetic elsewhere.
pub const MAX_MAX_AGE: u64 = 10 * 365 * 24 * 3600;

/// Parses a `max_age` parameter (OIDC Core §3.1.2.1): a non-negative integer of seconds,
/// ASCII digits only (no sign, no fraction, no spaces), at most [`MAX_MAX_AGE`].
///
/// # Errors
/// A message for the 400 page.
pub fn parse_max_age(raw: &str) -> Result<u64, &'static str> {
    const MESSAGE: &str = "max_age must be a non-negative whole number of seconds";
    if raw.is_empty() || raw.len() > 12 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MESSAGE);
    }
    raw.parse::<u64>()
        .ok()
        .filter(|n| *n <= MAX_MAX_AGE)
        .ok_or(MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(pairs: &[(&str, Value)]) -> Vec<Claim> {
        pairs
            .iter()
            .map(|(k, v)| Claim {
                kind: (*k).to_owned(),
                value: v.clone(),
            })
            .collect()
    }

    fn rule(claim: &str, values: &[&str]) -> ClaimRule {
        ClaimRule {
            claim: claim.into(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn required_claims_need_every_claim_with_any_listed_value() {
        let access = RouteAccess {
            require_claims: vec![rule("role", &["admin", "ops"]), rule("tenant", &["acme"])],
            ..RouteAccess::default()
        };
        let cases: &[(&str, Vec<Claim>, Result<(), Denied>)] = &[
            (
                "both present",
                claims(&[("role", json!("admin")), ("tenant", json!("acme"))]),
                Ok(()),
            ),
            (
                "second listed value of role",
                claims(&[("role", json!("ops")), ("tenant", json!("acme"))]),
                Ok(()),
            ),
            (
                "multi-valued role, one value matches",
                claims(&[
                    ("role", json!("user")),
                    ("role", json!("admin")),
                    ("tenant", json!("acme")),
                ]),
                Ok(()),
            ),
            (
                "tenant missing",
                claims(&[("role", json!("admin"))]),
                Err(Denied::MissingClaim("tenant".into())),
            ),
            (
                "role has another value",
                claims(&[("role", json!("user")), ("tenant", json!("acme"))]),
                Err(Denied::MissingClaim("role".into())),
            ),
            (
                "case matters",
                claims(&[("role", json!("Admin")), ("tenant", json!("acme"))]),
                Err(Denied::MissingClaim("role".into())),
            ),
            (
                "a space-separated string is one value",
                claims(&[("role", json!("user admin")), ("tenant", json!("acme"))]),
                Err(Denied::MissingClaim("role".into())),
            ),
            (
                "an object never matches",
                claims(&[("role", json!({"admin": true})), ("tenant", json!("acme"))]),
                Err(Denied::MissingClaim("role".into())),
            ),
            (
                "no claims at all",
                vec![],
                Err(Denied::MissingClaim("role".into())),
            ),
        ];
        for (name, claims, want) in cases {
            assert_eq!(&access.check(claims, 0), want, "{name}");
        }
    }

    #[test]
    fn numbers_and_booleans_match_by_their_json_text() {
        assert!(value_matches(&json!(42), "42"));
        assert!(value_matches(&json!(true), "true"));
        assert!(!value_matches(&json!(true), "1"));
        assert!(!value_matches(&json!(null), "null"));
        assert!(!value_matches(&json!(["admin"]), "admin"));
    }

    #[test]
    fn acr_and_auth_age_failures_ask_for_everything_the_route_needs() {
        let access = RouteAccess {
            require_acr: vec!["urn:example:mfa".into(), "urn:example:hw".into()],
            max_auth_age: Some(Duration::from_secs(600)),
            ..RouteAccess::default()
        };
        let step_up = |acr_failed| {
            Err(Denied::StepUp {
                acr_values: vec!["urn:example:mfa".into(), "urn:example:hw".into()],
                max_age: Some(600),
                acr_failed,
            })
        };
        let now = 10_000;
        let cases: &[(&str, Vec<Claim>, Result<(), Denied>)] = &[
            (
                "strong and recent",
                claims(&[
                    ("acr", json!("urn:example:hw")),
                    ("auth_time", json!(now - 600)),
                ]),
                Ok(()),
            ),
            (
                "weak acr",
                claims(&[("acr", json!("urn:example:pwd")), ("auth_time", json!(now))]),
                step_up(true),
            ),
            (
                "no acr",
                claims(&[("auth_time", json!(now))]),
                step_up(true),
            ),
            (
                "too old by one second",
                claims(&[
                    ("acr", json!("urn:example:mfa")),
                    ("auth_time", json!(now - 601)),
                ]),
                step_up(false),
            ),
            (
                "no auth_time",
                claims(&[("acr", json!("urn:example:mfa"))]),
                step_up(false),
            ),
            (
                "auth_time as a string does not count",
                claims(&[
                    ("acr", json!("urn:example:mfa")),
                    ("auth_time", json!("10000")),
                ]),
                step_up(false),
            ),
            (
                "auth_time ahead of the gateway's clock",
                claims(&[
                    ("acr", json!("urn:example:mfa")),
                    ("auth_time", json!(now + 30)),
                ]),
                Ok(()),
            ),
            (
                "fractional auth_time",
                claims(&[
                    ("acr", json!("urn:example:mfa")),
                    ("auth_time", json!(9400.5)),
                ]),
                Ok(()),
            ),
        ];
        for (name, claims, want) in cases {
            assert_eq!(&access.check(claims, now), want, "{name}");
        }
    }

    #[test]
    fn claims_are_checked_before_step_up() {
        let access = RouteAccess {
            require_claims: vec![rule("role", &["admin"])],
            require_acr: vec!["mfa".into()],
            max_auth_age: None,
        };
        assert_eq!(
            access.check(&claims(&[("acr", json!("pwd"))]), 0),
            Err(Denied::MissingClaim("role".into()))
        );
        assert!(RouteAccess::default().is_empty());
        assert!(RouteAccess::default().check(&[], 0).is_ok());
        assert!(!access.is_empty());
    }

    #[test]
    fn acr_values_parameter_table() {
        assert_eq!(
            parse_acr_values("urn:example:mfa  1").unwrap(),
            vec!["urn:example:mfa".to_owned(), "1".to_owned()]
        );
        for bad in [
            "",
            "   ",
            "a\"b",
            "a\\b",
            "caf\u{e9}",
            "a\tb",
            "a\u{0}",
            &"x ".repeat(11),
            &"x".repeat(256),
            &format!("{} {}", "x".repeat(200), "y".repeat(56)),
        ] {
            assert!(parse_acr_values(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn max_age_parameter_table() {
        assert_eq!(parse_max_age("0"), Ok(0));
        assert_eq!(parse_max_age("600"), Ok(600));
        assert_eq!(parse_max_age("0600"), Ok(600));
        for bad in [
            "",
            "-1",
            "+1",
            "1.5",
            " 1",
            "1 ",
            "1e3",
            "abc",
            "315360001",
            "99999999999999",
        ] {
            assert!(parse_max_age(bad).is_err(), "{bad:?}");
        }
    }
}
