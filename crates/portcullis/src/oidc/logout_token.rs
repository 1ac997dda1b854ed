//! Back-channel logout token validation (OIDC Back-Channel Logout 1.0 §2.4, §2.6).
//!
//! Accepted as IdPs send them in practice:
//! - JOSE `typ` absent, `JWT`, `logout+jwt` or `application/logout+jwt` (case-insensitive).
//!   Explicit typing is only recommended (§2.4); what keeps an ID token from passing as a
//!   logout token is the required `events` member and the forbidden `nonce`.
//! - `exp` may be missing (IdPs older than the errata that made it required): `iat` must be
//!   inside the window anyway, and the `jti` (always required) is remembered for the whole
//!   time the token would be accepted ([`LogoutClaims::replay_until`]), so it cannot be
//!   replayed.
//!
//! Refused (the caller answers 400): a `crit` header, a `sub` or `sid` that is not a non-empty
//! JSON string, a token with neither, and every rule of §2.6.

use serde_json::{Map, Value};

use super::jwt::{self, JwtError};
use super::Provider;
use crate::error::GatewayError;

/// The `events` member a logout token must carry.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Seconds the replay record outlives the acceptance window (instances' clocks differ).
const REPLAY_MARGIN: i64 = 60;

/// The validated content of a logout token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutClaims {
    /// The subject whose sessions end (a non-empty string when present).
    pub sub: Option<String>,
    /// The IdP session that ends (a non-empty string when present).
    pub sid: Option<String>,
    /// The token's id, for replay detection.
    pub jti: String,
    /// Unix seconds.
    pub iat: i64,
    /// Unix seconds; `None` when the IdP sent no `exp`.
    pub exp: Option<i64>,
    /// Unix seconds until which the `jti` must be remembered: past the last moment this token
    /// passes validation (the earlier of `exp` + skew and `iat` + max age + skew), plus a
    /// margin. Never more than `now` + max age + 2 × skew + 60 s, whatever `exp` says.
    pub replay_until: i64,
}

/// What a logout token must match. All times are whole seconds; `now` is a Unix timestamp,
/// the others are durations.
///
/// A token is accepted when `now - max_age - skew <= iat <= now + skew` and, if it has an
/// `exp`, `exp + skew > now` (OIDC Back-Channel Logout 1.0 §2.6).
#[derive(Debug)]
pub struct Expectations<'a> {
    /// Our `client_id`: must be in `aud`.
    pub client_id: &'a str,
    /// Now, seconds since the Unix epoch (from the injected clock).
    pub now: i64,
    /// Allowed clock skew in seconds, applied to both `iat` and `exp`; negative values count
    /// as 0.
    pub skew: i64,
    /// How old `iat` may be, in seconds (before skew).
    pub max_age: i64,
}

/// Verifies the signature, the JOSE header and the claims of a logout token.
///
/// Signature and header as in [`jwt::verify`] plus [`check_header`]; claims as in
/// [`check_claims`], against the provider's issuer.
///
/// # Errors
///
/// The result is nested so the two failures cannot be confused:
///
/// - `Ok(Err(JwtError))`: the token is refused (bad signature, header or claims): answer 400.
/// - `Err(GatewayError)`: the IdP's keys cannot be fetched: answer 503; the token was not
///   judged and the IdP may retry.
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
    if let Err(e) = check_header(&verified.header_json) {
        return Ok(Err(e));
    }
    Ok(check_claims(&verified.claims, provider.issuer(), expect))
}

/// The JOSE header rules: `typ` absent or (case-insensitively) `JWT`, `application/jwt`,
/// `logout+jwt` or `application/logout+jwt`.
///
/// # Errors
///
/// [`JwtError::Claim`] for any other `typ`, or a `typ` that is not a string.
pub fn check_header(header: &Map<String, Value>) -> Result<(), JwtError> {
    match header.get("typ") {
        None => Ok(()),
        Some(Value::String(typ)) => {
            let t = typ.to_ascii_lowercase();
            if matches!(
                t.as_str(),
                "jwt" | "logout+jwt" | "application/logout+jwt" | "application/jwt"
            ) {
                Ok(())
            } else {
                Err(JwtError::Claim("typ is not JWT or logout+jwt".into()))
            }
        }
        Some(_) => Err(JwtError::Claim("typ is not a string".into())),
    }
}

/// A claim that, when present, must be a non-empty string.
fn optional_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(JwtError::Claim(format!("{name} is not a non-empty string"))),
    }
}

/// The claim rules of §2.6 (time from `expect`), separate from the signature so they can be
/// tested as a table.
///
/// # Errors
///
/// [`JwtError::Claim`] naming the first failed rule: `iss` differs from `issuer`, `aud`
/// lacks `client_id`, `iat` missing or outside the window, expired or non-numeric `exp`, no
/// back-channel logout event in `events`, a `nonce`, neither `sub` nor `sid`, a `sub`/`sid`
/// that is not a non-empty string, or a missing or empty `jti`.
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
    let now = expect.now;
    let skew = expect.skew.max(0);
    let Some(iat) = jwt::num(claims, "iat") else {
        return fail("iat missing");
    };
    let oldest = now.saturating_sub(expect.max_age).saturating_sub(skew);
    if iat > now.saturating_add(skew) || iat < oldest {
        return fail("iat outside the accepted window");
    }
    let exp = match claims.get("exp") {
        None => None,
        Some(_) => match jwt::num(claims, "exp") {
            Some(exp) if exp.saturating_add(skew) > now => Some(exp),
            Some(_) => return fail("expired"),
            None => return fail("exp is not a number"),
        },
    };
    match claims.get("events") {
        Some(Value::Object(events))
            if matches!(events.get(BACKCHANNEL_EVENT), Some(Value::Object(_))) => {}
        _ => return fail("events does not contain the back-channel logout event"),
    }
    if claims.contains_key("nonce") {
        return fail("nonce must not be present");
    }
    let sub = optional_string(claims, "sub")?;
    let sid = optional_string(claims, "sid")?;
    if sub.is_none() && sid.is_none() {
        return fail("neither sub nor sid present");
    }
    let Some(jti) = jwt::string(claims, "jti").filter(|j| !j.is_empty()) else {
        return fail(if exp.is_none() {
            "exp and jti missing"
        } else {
            "jti missing"
        });
    };
    // The last second the iat rule accepts this token; exp can only shorten that.
    let iat_window_end = iat
        .saturating_add(expect.max_age)
        .saturating_add(skew)
        .saturating_add(1);
    let accepted_until = match exp {
        Some(exp) => exp.saturating_add(skew).min(iat_window_end),
        None => iat_window_end,
    };
    Ok(LogoutClaims {
        sub,
        sid,
        jti: jti.to_owned(),
        iat,
        exp,
        replay_until: accepted_until.max(now).saturating_add(REPLAY_MARGIN),
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
            (
                "no exp, fresh iat and a jti",
                |c| {
                    c.remove("exp");
                },
                true,
            ),
            (
                "no exp and no jti",
                |c| {
                    c.remove("exp");
                    c.remove("jti");
                },
                false,
            ),
            (
                "no exp, iat too old",
                |c| {
                    c.remove("exp");
                    c.insert("iat".into(), json!(600));
                },
                false,
            ),
            (
                "exp not a number",
                |c| {
                    c.insert("exp".into(), json!("1120"));
                },
                false,
            ),
            (
                "exp near i64::MAX",
                |c| {
                    c.insert("exp".into(), json!(i64::MAX));
                },
                true,
            ),
            (
                "sid not a string",
                |c| {
                    c.insert("sid".into(), json!(12));
                },
                false,
            ),
            (
                "sub not a string, sid fine",
                |c| {
                    c.insert("sub".into(), json!({"id": "alice"}));
                },
                false,
            ),
            (
                "sid empty",
                |c| {
                    c.insert("sid".into(), json!(""));
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

    fn expect() -> Expectations<'static> {
        Expectations {
            client_id: "spa",
            now: 1000,
            skew: 30,
            max_age: 300,
        }
    }

    #[test]
    fn logout_token_exp_near_i64_max_keeps_replay_protection() {
        for exp in [
            json!(i64::MAX),
            json!(i64::MAX - 1),
            json!(1e300),
            json!(u64::MAX),
        ] {
            let mut c = base();
            c.insert("exp".into(), exp.clone());
            let claims = check_claims(&c, "https://idp", &expect()).expect("valid");
            // remembered past the last second the iat rule accepts the token, and capped
            assert!(claims.replay_until > 1000 + 300 + 30, "{exp}");
            assert!(claims.replay_until <= 1000 + 300 + 2 * 30 + 61, "{exp}");
        }
    }

    #[test]
    fn replay_window_covers_the_whole_acceptance_window() {
        let e = expect();
        for (iat, exp) in [
            (1000, Some(1120)),
            (800, None),
            (1030, None),
            (701, Some(5000)),
        ] {
            let mut c = base();
            c.insert("iat".into(), json!(iat));
            match exp {
                Some(x) => c.insert("exp".into(), json!(x)),
                None => c.remove("exp"),
            };
            let claims = check_claims(&c, "https://idp", &e).expect("valid");
            // at every later second where the token still validates, the jti is remembered
            for later in 1000..2000 {
                let at = Expectations {
                    now: later,
                    ..expect()
                };
                if check_claims(&c, "https://idp", &at).is_ok() {
                    assert!(
                        claims.replay_until > later,
                        "iat {iat} exp {exp:?} at {later}"
                    );
                }
            }
        }
    }

    #[test]
    fn logout_token_typ_jwt_is_accepted() {
        let header = |typ: Value| {
            let mut m = Map::new();
            m.insert("alg".into(), json!("RS256"));
            if !typ.is_null() {
                m.insert("typ".into(), typ);
            }
            m
        };
        for ok in [
            Value::Null,
            json!("JWT"),
            json!("jwt"),
            json!("logout+jwt"),
            json!("application/logout+jwt"),
            json!("Application/Logout+JWT"),
        ] {
            assert!(check_header(&header(ok.clone())).is_ok(), "{ok}");
        }
        for bad in [
            json!("at+jwt"),
            json!("id_token+jwt"),
            json!(""),
            json!(1),
            json!(["JWT"]),
        ] {
            assert!(check_header(&header(bad.clone())).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn signed_logout_tokens_follow_the_header_rules() {
        use crate::oidc::test_idp::{ed_jwk, sign, TestIdp};
        let idp = TestIdp::start(vec![ed_jwk("k")]).await;
        let provider = idp.provider(&portcullis_token::ManualClock::new(1_000));
        let mut claims = Value::Object(base());
        claims["iss"] = json!(idp.issuer);
        let run = |header: Value, claims: Value| {
            let provider = &provider;
            async move {
                let token = sign(header, &claims);
                validate(provider, &token, &[], &expect()).await.unwrap()
            }
        };
        for typ in ["JWT", "logout+jwt", "application/logout+jwt"] {
            assert!(
                run(json!({"kid": "k", "typ": typ}), claims.clone())
                    .await
                    .is_ok(),
                "{typ}"
            );
        }
        assert!(run(json!({"kid": "k"}), claims.clone()).await.is_ok());
        assert!(run(json!({"kid": "k", "typ": "at+jwt"}), claims.clone())
            .await
            .is_err());
        assert_eq!(
            run(
                json!({"kid": "k", "crit": ["exp"], "exp": 1}),
                claims.clone()
            )
            .await,
            Err(JwtError::CriticalHeader)
        );
        let mut odd = claims.clone();
        odd["sid"] = json!(["s1"]);
        assert!(run(json!({"kid": "k"}), odd).await.is_err());
    }
}
