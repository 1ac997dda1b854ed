//! Back-channel logout token validation (OIDC Back-Channel Logout 1.0 §2.6).

use serde_json::{Map, Value};

use super::jwt::{self, JwtError};
use super::Provider;
use crate::error::GatewayError;

pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The validated content of a logout token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutClaims {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    pub exp: i64,
}

#[derive(Debug)]
pub struct Expectations<'a> {
    pub client_id: &'a str,
    pub now: i64,
    pub skew: i64,
    /// How old `iat` may be.
    pub max_age: i64,
}

pub async fn validate(
    provider: &Provider,
    token: &str,
    allowed_algs: &[String],
    expect: &Expectations<'_>,
) -> Result<Result<LogoutClaims, JwtError>, GatewayError> {
    let verified = match jwt::verify(provider, token, allowed_algs).await {
        Ok(v) => v,
        Err(Ok(e)) => return Ok(Err(e)),
        Err(Err(e)) => return Err(e),
    };
    if let Some(typ) = verified.header.typ.as_deref() {
        let t = typ.to_ascii_lowercase();
        if t != "logout+jwt" && t != "application/logout+jwt" {
            return Ok(Err(JwtError::Claim(format!("typ {typ} is not logout+jwt"))));
        }
    }
    Ok(check_claims(&verified.claims, provider.issuer(), expect))
}

pub fn check_claims(
    claims: &Map<String, Value>,
    issuer: &str,
    expect: &Expectations<'_>,
) -> Result<LogoutClaims, JwtError> {
    let fail = |m: &str| Err(JwtError::Claim(m.to_owned()));
    if jwt::string(claims, "iss") != Some(issuer) {
        return fail("iss does not match the issuer");
    }
    if !jwt::audiences(claims).contains(&expect.client_id) {
        return fail("aud does not contain our client id");
    }
    let Some(iat) = jwt::num(claims, "iat") else {
        return fail("iat missing");
    };
    if iat > expect.now + expect.skew || iat < expect.now - expect.max_age - expect.skew {
        return fail("iat outside the accepted window");
    }
    let Some(exp) = jwt::num(claims, "exp") else {
        return fail("exp missing");
    };
    if exp + expect.skew <= expect.now {
        return fail("expired");
    }
    match claims.get("events") {
        Some(Value::Object(events))
            if matches!(events.get(BACKCHANNEL_EVENT), Some(Value::Object(_))) => {}
        _ => return fail("events does not contain the back-channel logout event"),
    }
    if claims.contains_key("nonce") {
        return fail("nonce must not be present");
    }
    let sub = jwt::string(claims, "sub").map(str::to_owned);
    let sid = jwt::string(claims, "sid").map(str::to_owned);
    if sub.is_none() && sid.is_none() {
        return fail("neither sub nor sid present");
    }
    let Some(jti) = jwt::string(claims, "jti").filter(|j| !j.is_empty()) else {
        return fail("jti missing");
    };
    Ok(LogoutClaims {
        sub,
        sid,
        jti: jti.to_owned(),
        exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Map<String, Value> {
        json!({"iss": "https://idp", "aud": "spa", "iat": 1000, "exp": 1120, "jti": "j1",
               "sid": "s1", "events": {BACKCHANNEL_EVENT: {}}})
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn claim_rules() {
        let expect = Expectations {
            client_id: "spa",
            now: 1000,
            skew: 30,
            max_age: 300,
        };
        type Edit = fn(&mut Map<String, Value>);
        let cases: Vec<(&str, Edit, bool)> = vec![
            ("valid sid only", |_| {}, true),
            (
                "sub only",
                |c| {
                    c.remove("sid");
                    c.insert("sub".into(), json!("alice"));
                },
                true,
            ),
            (
                "neither sub nor sid",
                |c| {
                    c.remove("sid");
                },
                false,
            ),
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
                    c.insert("aud".into(), json!(["x"]));
                },
                false,
            ),
            (
                "nonce present",
                |c| {
                    c.insert("nonce".into(), json!("n"));
                },
                false,
            ),
            (
                "events missing",
                |c| {
                    c.remove("events");
                },
                false,
            ),
            (
                "events wrong",
                |c| {
                    c.insert("events".into(), json!({"x": {}}));
                },
                false,
            ),
            (
                "event not an object",
                |c| {
                    c.insert("events".into(), json!({BACKCHANNEL_EVENT: "x"}));
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
                "iat far past",
                |c| {
                    c.insert("iat".into(), json!(100));
                },
                false,
            ),
            (
                "iat future",
                |c| {
                    c.insert("iat".into(), json!(5000));
                },
                false,
            ),
            (
                "no jti",
                |c| {
                    c.remove("jti");
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
