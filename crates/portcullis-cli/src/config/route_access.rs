//! `[[routes]]` (and `[[frontends.routes]]`) access rules: `require_claims`, `require_acr`,
//! `max_auth_age` (see `portcullis::access`).
//!
//! ```toml
//! [[routes]]
//! path = "/api/admin"
//! upstream = "https://admin.internal"
//! require_claims = { role = ["admin", "ops"], tenant = "acme" }   # every claim, any value
//! require_acr = ["urn:example:mfa"]                               # else a step-up challenge
//! max_auth_age = "10m"                                            # since auth_time
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis::access::{
    is_valid_acr, ClaimRule, RouteAccess, MAX_ACR_VALUES, MAX_ACR_VALUES_LEN, MAX_MAX_AGE,
};
use portcullis::oidc::id_token::PROTOCOL_CLAIMS;
use serde::Deserialize;

/// A claim's accepted values: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The raw keys of one route.
pub(super) struct RawAccess {
    pub require_claims: Option<BTreeMap<String, OneOrMany>>,
    pub require_acr: Option<Vec<String>>,
    pub max_auth_age: Option<String>,
}

/// Validates a route's access rules; every problem goes to `errors` (prefixed with `ctx`,
/// e.g. `routes[2]`), doubtful but valid choices to `warnings`.
pub(super) fn route_access(
    raw: RawAccess,
    ctx: &str,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> RouteAccess {
    let mut access = RouteAccess::default();
    for (claim, values) in raw.require_claims.unwrap_or_default() {
        let name = format!("{ctx}.require_claims.{claim}");
        if claim.is_empty() || claim.len() > 255 || claim.chars().any(char::is_control) {
            errors.push(format!(
                "{ctx}.require_claims: claim names must be 1 to 255 characters without control characters"
            ));
            continue;
        }
        if PROTOCOL_CLAIMS.contains(&claim.as_str()) {
            errors.push(format!(
                "{name}: {claim} describes the ID token, not the user; it is not kept in the session and could never match"
            ));
            continue;
        }
        if claim == "acr" {
            warnings.push(format!(
                "{name}: a session without this acr gets 403; require_acr answers with a step-up challenge (RFC 9470) the application can act on"
            ));
        }
        let values = match values {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        };
        if values.is_empty() {
            errors.push(format!(
                "{name} must list at least one accepted value (an empty list would refuse everyone)"
            ));
            continue;
        }
        if values
            .iter()
            .any(|v| v.is_empty() || v.chars().any(char::is_control))
        {
            errors.push(format!(
                "{name}: values must be non-empty and without control characters"
            ));
            continue;
        }
        access.require_claims.push(ClaimRule { claim, values });
    }
    if let Some(acr) = raw.require_acr {
        if acr.is_empty() {
            errors.push(format!(
                "{ctx}.require_acr must list at least one acr value (leave it out for none)"
            ));
        } else if acr.len() > MAX_ACR_VALUES || acr.join(" ").len() > MAX_ACR_VALUES_LEN {
            errors.push(format!(
                "{ctx}.require_acr lists more than {MAX_ACR_VALUES} values or {MAX_ACR_VALUES_LEN} characters (the challenge's login_url must be accepted by /login)"
            ));
        } else if let Some(bad) = acr.iter().find(|a| !is_valid_acr(a)) {
            errors.push(format!(
                "{ctx}.require_acr value {bad:?} must be 1 to 255 printable ASCII characters without spaces, quotes or backslashes"
            ));
        } else {
            access.require_acr = acr;
        }
    }
    if let Some(age) = raw.max_auth_age {
        let name = format!("{ctx}.max_auth_age");
        match humantime::parse_duration(&age) {
            Ok(d) if d < Duration::from_secs(1) => {
                errors.push(format!("{name} {age:?} must be at least 1s"))
            }
            Ok(d) if d.subsec_nanos() != 0 => errors.push(format!(
                "{name} {age:?} must be whole seconds (it is sent as max_age)"
            )),
            Ok(d) if d.as_secs() > MAX_MAX_AGE => {
                errors.push(format!("{name} {age:?} is longer than ten years"))
            }
            Ok(d) => access.max_auth_age = Some(d),
            Err(_) => errors.push(format!(
                "{name} {age:?} is not a duration like \"30s\", \"10m\" or \"8h\""
            )),
        }
    }
    access
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::parse;

    const BASE: &str = r#"
[server]
public_url = "https://app.example.com"
[oidc]
issuer = "https://idp.example.com"
client_id = "spa-bff"
client_secret = "s3cret"
[[routes]]
path = "/api"
upstream = "https://api.internal/v1"
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn route_access_rules_are_read_for_routes_and_frontend_routes() {
        let text = format!(
            "{BASE}require_claims = {{ role = [\"admin\", \"ops\"], tenant = \"acme\" }}\nrequire_acr = [\"urn:example:mfa\"]\nmax_auth_age = \"10m\"\ntoken = \"none\"\n\n[[frontends]]\nname = \"admin\"\nmatch_path = \"/admin\"\n[[frontends.routes]]\npath = \"/api\"\nupstream = \"https://admin.internal\"\nrequire_claims = {{ role = [\"admin\"] }}\n"
        );
        let c = parse(&text, Path::new("/etc/portcullis"), &no_env).unwrap();
        let a = &c.gateway.routes[0].access;
        let claims: Vec<(&str, Vec<&str>)> = a
            .require_claims
            .iter()
            .map(|r| {
                (
                    r.claim.as_str(),
                    r.values.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            claims,
            vec![("role", vec!["admin", "ops"]), ("tenant", vec!["acme"])]
        );
        assert_eq!(a.require_acr, vec!["urn:example:mfa".to_owned()]);
        assert_eq!(a.max_auth_age, Some(std::time::Duration::from_secs(600)));
        let fe = &c.frontends[0].settings.settings.routes[0].access;
        assert_eq!(fe.require_claims[0].claim, "role");
        // Without the keys: no rule.
        let c = parse(BASE, Path::new("/etc/portcullis"), &no_env).unwrap();
        assert!(c.gateway.routes[0].access.is_empty());
    }

    #[test]
    fn check_lists_every_bad_route_access_rule_at_once() {
        let text = format!(
            "{BASE}require_claims = {{ role = [], aud = [\"x\"], \"\" = [\"y\"], tenant = [\"\"] }}\nrequire_acr = [\"has space\"]\nmax_auth_age = \"500ms\"\n[[routes]]\npath = \"/api2\"\nupstream = \"https://api.internal/v2\"\nrequire_acr = []\nmax_auth_age = \"soon\"\n"
        );
        let errors = parse(&text, Path::new("/etc/portcullis"), &no_env).unwrap_err();
        for want in [
            "routes[0].require_claims.role must list at least one accepted value",
            "routes[0].require_claims.aud: aud describes the ID token",
            "routes[0].require_claims: claim names must be 1 to 255 characters",
            "routes[0].require_claims.tenant: values must be non-empty",
            "routes[0].require_acr value \"has space\"",
            "routes[0].max_auth_age \"500ms\" must be at least 1s",
            "routes[1].require_acr must list at least one acr value",
            "routes[1].max_auth_age \"soon\" is not a duration",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "missing {want:?} in {errors:#?}"
            );
        }
        let text = format!("{BASE}max_auth_age = \"1500ms\"\n");
        let errors = parse(&text, Path::new("/etc/portcullis"), &no_env).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains("must be whole seconds")),
            "{errors:?}"
        );
    }

    #[test]
    fn acr_in_require_claims_is_allowed_with_a_warning() {
        let text = format!("{BASE}require_claims = {{ acr = [\"mfa\"] }}\n");
        let c = parse(&text, Path::new("/etc/portcullis"), &no_env).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("require_acr answers")),
            "{:?}",
            c.warnings
        );
    }
}
