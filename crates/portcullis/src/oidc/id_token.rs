//! ID-token validation (OIDC Core §3.1.3.7).

use serde_json::{Map, Value};

use super::jwt::{self, JwtError};
use super::Provider;
use crate::error::GatewayError;

/// What the ID token must match.
#[derive(Debug)]
pub struct Expectations<'a> {
    pub client_id: &'a str,
    /// The login's `nonce`, which the ID token must carry. `None` for the ID token of a
    /// refresh response: the login's nonce is not kept, and OIDC Core §12.2 does not ask for
    /// it to be checked again.
    pub nonce: Option<&'a str>,
    pub now: i64,
    pub skew: i64,
}

/// Verifies signature and claims; returns the claims in token order.
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
    match jwt::string(claims, "azp") {
        Some(azp) if azp != expect.client_id => return fail("azp is not our client id"),
        None if aud.len() > 1 => return fail("azp missing with several audiences"),
        _ => {}
    }
    match jwt::num(claims, "exp") {
        Some(exp) if exp + expect.skew > expect.now => {}
        Some(_) => return fail("expired"),
        None => return fail("exp missing"),
    }
    match jwt::num(claims, "iat") {
        Some(iat) if iat <= expect.now + expect.skew => {}
        Some(_) => return fail("iat is in the future"),
        None => return fail("iat missing"),
    }
    if jwt::num(claims, "nbf").is_some_and(|nbf| nbf > expect.now + expect.skew) {
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
        let expect = Expectations {
            client_id: "spa",
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
                "aud array with azp",
                |c| {
                    c.insert("aud".into(), json!(["spa", "x"]));
                    c.insert("azp".into(), json!("spa"));
                },
                true,
            ),
            (
                "aud array without azp",
                |c| {
                    c.insert("aud".into(), json!(["spa", "x"]));
                },
                false,
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
