//! ID-token validation (OIDC Core §3.1.3.7).

use serde_json::{Map, Value};

use super::jwt::{self, JwtError};
use super::Provider;
use crate::error::GatewayError;

/// What the ID token must match.
#[derive(Debug)]
pub struct Expectations<'a> {
    /// Our `client_id`: must be in `aud`, and equal `azp` when `azp` is present.
    pub client_id: &'a str,
    /// Audiences besides ours that may appear in `aud` (`oidc.trusted_audiences`); any other
    /// extra audience is refused (OIDC Core §3.1.3.7 (3)).
    pub trusted_audiences: &'a [String],
    /// The login's `nonce`, which the ID token must carry. `None` for the ID token of a
    /// refresh response: the login's nonce is not kept, and OIDC Core §12.2 does not ask for
    /// it to be checked again.
    pub nonce: Option<&'a str>,
    /// Now, unix seconds (from the injected clock).
    pub now: i64,
    /// Allowed clock skew, seconds.
    pub skew: i64,
}

/// Verifies signature and claims; returns the claims in token order.
///
/// Errors: [`GatewayError::LoginRejected`] for a token that fails a rule (signature, `crit`,
/// claims); the IdP errors of [`Provider::jwks_for`] when the keys cannot be fetched.
pub async fn validate(
    provider: &Provider,
    token: &str,
    allowed_algs: &[String],
    expect: &Expectations<'_>,
) -> Result<Map<String, Value>, GatewayError> {
    let verified = jwt::verify(provider, token, allowed_algs)
        .await
        .map_err(|e| match e {
            Ok(jwt_error) => GatewayError::LoginRejected(format!("ID token rejected: {jwt_error}")),
            Err(gateway_error) => gateway_error,
        })?;
    check_claims(&verified.claims, provider.issuer(), expect)
        .map_err(|e| GatewayError::LoginRejected(format!("ID token rejected: {e}")))?;
    Ok(verified.claims)
}

/// The claim rules, separate from the signature so they can be tested as a table.
pub fn check_claims(
    claims: &Map<String, Value>,
    issuer: &str,
    expect: &Expectations<'_>,
) -> Result<(), JwtError> {
    let fail = |m: &str| Err(JwtError::Claim(m.to_owned()));
    if jwt::string(claims, "iss") != Some(issuer) {
        return fail("iss does not match the issuer");
    }
    let aud = jwt::audiences(claims);
    if !aud.contains(&expect.client_id) {
        return fail("aud does not contain our client id");
    }
    if claims
        .get("aud")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() != aud.len())
    {
        return fail("aud holds a member that is not a string");
    }
    if aud
        .iter()
        .any(|a| *a != expect.client_id && !expect.trusted_audiences.iter().any(|t| t == a))
    {
        return fail("aud contains an audience that is not trusted");
    }
    match jwt::string(claims, "azp") {
        Some(azp) if azp != expect.client_id => return fail("azp is not our client id"),
        None if aud.len() > 1 => return fail("azp missing with several audiences"),
        _ => {}
    }
    match jwt::num(claims, "exp") {
        Some(exp) if exp.saturating_add(expect.skew) > expect.now => {}
        Some(_) => return fail("expired"),
        None => return fail("exp missing"),
    }
    match jwt::num(claims, "iat") {
        Some(iat) if iat <= expect.now.saturating_add(expect.skew) => {}
        Some(_) => return fail("iat is in the future"),
        None => return fail("iat missing"),
    }
    if jwt::num(claims, "nbf").is_some_and(|nbf| nbf > expect.now.saturating_add(expect.skew)) {
        return fail("not yet valid");
    }
    if let Some(nonce) = expect.nonce {
        if jwt::string(claims, "nonce") != Some(nonce) {
            return fail("nonce does not match the login");
        }
    }
    match jwt::string(claims, "sub") {
        Some(s) if !s.is_empty() && s.len() <= 255 => {}
        _ => return fail("sub missing or invalid"),
    }
    Ok(())
}

/// Protocol claims that describe the token, not the user; not copied into the session's
/// claims (as ASP.NET's OIDC handler does).
pub const PROTOCOL_CLAIMS: [&str; 11] = [
    "nonce", "aud", "azp", "iss", "iat", "nbf", "exp", "at_hash", "c_hash", "s_hash", "jti",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Map<String, Value> {
        json!({"iss": "https://idp", "aud": "spa", "exp": 1100, "iat": 1000, "nonce": "n1", "sub": "alice"})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn claim_rules() {
        let trusted = vec!["api-gateway".to_owned()];
        let expect = Expectations {
            client_id: "spa",
            trusted_audiences: &trusted,
            nonce: Some("n1"),
            now: 1000,
            skew: 30,
        };
        type Edit = fn(&mut Map<String, Value>);
        let cases: Vec<(&str, Edit, bool)> = vec![
            ("valid", |_| {}, true),
            (
                "wrong iss",
                |c| {
                    c.insert("iss".into(), json!("https://evil"));
                },
                false,
            ),
            (
                "wrong aud",
                |c| {
                    c.insert("aud".into(), json!("other"));
                },
                false,
            ),
            (
                "aud array with a trusted extra audience and azp",
                |c| {
                    c.insert("aud".into(), json!(["spa", "api-gateway"]));
                    c.insert("azp".into(), json!("spa"));
                },
                true,
            ),
            (
                "extra_untrusted_audience_is_refused even with azp",
                |c| {
                    c.insert("aud".into(), json!(["spa", "someone-else"]));
                    c.insert("azp".into(), json!("spa"));
                },
                false,
            ),
            (
                "aud array of one with azp",
                |c| {
                    c.insert("aud".into(), json!(["spa"]));
                    c.insert("azp".into(), json!("spa"));
                },
                true,
            ),
            (
                "aud array without azp",
                |c| {
                    c.insert("aud".into(), json!(["spa", "api-gateway"]));
                },
                false,
            ),
            (
                "aud with a non-string member",
                |c| {
                    c.insert("aud".into(), json!(["spa", 7]));
                    c.insert("azp".into(), json!("spa"));
                },
                false,
            ),
            (
                "exp near i64::MAX does not overflow",
                |c| {
                    c.insert("exp".into(), json!(i64::MAX));
                },
                true,
            ),
            (
                "foreign azp",
                |c| {
                    c.insert("azp".into(), json!("other"));
                },
                false,
            ),
            (
                "expired",
                |c| {
                    c.insert("exp".into(), json!(900));
                },
                false,
            ),
            (
                "expired within skew",
                |c| {
                    c.insert("exp".into(), json!(990));
                },
                true,
            ),
            (
                "no exp",
                |c| {
                    c.remove("exp");
                },
                false,
            ),
            (
                "iat in future",
                |c| {
                    c.insert("iat".into(), json!(2000));
                },
                false,
            ),
            (
                "no iat",
                |c| {
                    c.remove("iat");
                },
                false,
            ),
            (
                "wrong nonce",
                |c| {
                    c.insert("nonce".into(), json!("n2"));
                },
                false,
            ),
            (
                "no nonce",
                |c| {
                    c.remove("nonce");
                },
                false,
            ),
            (
                "no sub",
                |c| {
                    c.remove("sub");
                },
                false,
            ),
        ];
        for (name, edit, ok) in cases {
            let mut c = base();
            edit(&mut c);
            assert_eq!(
                check_claims(&c, "https://idp", &expect).is_ok(),
                ok,
                "{name}"
            );
        }
    }
}
