//! Verifying signed JWTs from the identity provider (RFC 7515, RFC 7519).
//!
//! Only the JWS compact form with an asymmetric algorithm from an allow-list is accepted. A
//! JOSE header with `crit` is refused: the gateway understands no JWS extension, and RFC 7515
//! §4.1.11 requires rejecting a token whose critical extensions are not understood.

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, KeyAlgorithm};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::provider::UsableKey;
use super::Provider;
use crate::error::GatewayError;

/// Asymmetric algorithms only. `none` does not exist in `jsonwebtoken`, and HMAC is never
/// listed, so a token "signed" with the IdP's public key as an HMAC secret cannot verify.
const ALLOWED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a token from the IdP was refused (the caller turns it into a 400 or a failed login).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts, or a header/payload that is not a JSON object.
    #[error("not a JWS compact token")]
    Malformed,
    /// The JOSE header carries `crit` (RFC 7515 §4.1.11): no extension is understood here.
    #[error("critical header extension not understood")]
    CriticalHeader,
    /// `alg` is not on the allow-list (or not advertised by the IdP).
    #[error("algorithm {0} is not allowed")]
    Algorithm(String),
    /// No usable key in the JWKS matches the token's `kid` and `alg`.
    #[error("no matching key")]
    NoKey,
    /// The signature does not verify with any candidate key.
    #[error("signature invalid")]
    Signature,
    /// A claim or header rule of the caller failed.
    #[error("claim check failed: {0}")]
    Claim(String),
}

/// The verified header and claims.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The JOSE header, typed (`alg`, `kid`, `typ`, ...).
    pub header: jsonwebtoken::Header,
    /// The JOSE header as sent (every member, for rules the typed header cannot express).
    pub header_json: Map<String, Value>,
    /// The payload's claims, unchecked apart from the signature (the caller validates
    /// `iss`, `aud`, `exp`, ...).
    pub claims: Map<String, Value>,
}

/// The JOSE header of a compact JWS as a JSON object, before any verification.
fn raw_header(token: &str) -> Result<Map<String, Value>, JwtError> {
    let first = token.split('.').next().ok_or(JwtError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first)
        .map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed),
    }
}

/// Verifies the signature of `token` against the IdP's JWKS. `allowed_algs` further narrows
/// the allow-list (from discovery); empty means "the default allow-list". Claims are not
/// checked here.
///
/// Steps (RFC 7515 §5.2): parse the JOSE header, refuse `crit` (§4.1.11), check `alg`
/// against the allow-list (RS/PS 256–512, ES256, ES384, EdDSA; never `none` or HMAC) and
/// `allowed_algs`, get the IdP's keys through [`Provider::jwks_for`] with the header's `kid`,
/// then try every usable key whose `kid` matches (every key when the token has no `kid`) and
/// whose type and declared `alg` fit. `exp`, `nbf`, `aud` and all other claims are left to
/// the caller.
///
/// # Errors
///
/// The error is a nested `Result` so the two kinds of failure cannot be confused:
///
/// - `Err(Ok(JwtError))`: the token is refused: it is malformed, carries `crit`, uses an
///   algorithm that is not allowed, no key matches, or the signature does not verify (the
///   error of the last key tried is reported). Answer 400 or fail the login; retrying will
///   not help.
/// - `Err(Err(GatewayError))`: the IdP failed to deliver its JWKS (network, status, parse).
///   The token was not judged; usually a 503, and the user may retry.
pub async fn verify(
    provider: &Provider,
    token: &str,
    allowed_algs: &[String],
) -> Result<Verified, Result<JwtError, GatewayError>> {
    let header_json = raw_header(token).map_err(Ok)?;
    if header_json.contains_key("crit") {
        return Err(Ok(JwtError::CriticalHeader));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| Ok(JwtError::Malformed))?;
    let alg = header.alg;
    let alg_name = format!("{alg:?}");
    if !ALLOWED.contains(&alg) || (!allowed_algs.is_empty() && !allowed_algs.contains(&alg_name)) {
        return Err(Ok(JwtError::Algorithm(alg_name)));
    }
    let jwks = provider
        .jwks_for(header.kid.as_deref())
        .await
        .map_err(Err)?;
    let candidates: Vec<&UsableKey> = match header.kid.as_deref() {
        Some(kid) => jwks.with_kid(kid).collect(),
        None => jwks.keys.iter().collect(),
    };
    let mut last = JwtError::NoKey;
    for candidate in candidates {
        if !key_fits(candidate, alg) {
            continue;
        }
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        match jsonwebtoken::decode::<Map<String, Value>>(token, &candidate.key, &validation) {
            Ok(data) => {
                return Ok(Verified {
                    header: data.header,
                    header_json,
                    claims: data.claims,
                })
            }
            Err(e) => {
                last = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => JwtError::Signature,
                    jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                        JwtError::Algorithm(format!("{alg:?}"))
                    }
                    _ => JwtError::Malformed,
                }
            }
        }
    }
    Err(Ok(last))
}

/// The key's type and declared `alg` must fit the token's algorithm (`use` was checked when
/// the JWKS was parsed).
fn key_fits(key: &UsableKey, alg: Algorithm) -> bool {
    let jwk = &key.jwk;
    if let Some(declared) = jwk.common.key_algorithm {
        if format!("{declared:?}") != format!("{alg:?}")
            && !matches!(declared, KeyAlgorithm::EdDSA if alg == Algorithm::EdDSA)
        {
            return false;
        }
    }
    matches!(
        (&jwk.algorithm, alg),
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (
            AlgorithmParameters::EllipticCurve(_),
            Algorithm::ES256 | Algorithm::ES384
        ) | (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
    )
}

/// Reads a numeric claim such as `exp`, `iat` or `nbf` (NumericDate: seconds since the Unix
/// epoch, RFC 7519 §2). Fractions are truncated; `None` when absent or not a number.
pub fn num(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    claims
        .get(name)
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

/// Reads a string claim; `None` when absent or of another JSON type.
pub fn string<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

/// `aud` as a list (a string or an array of strings).
pub fn audiences(claims: &Map<String, Value>) -> Vec<&str> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::oidc::test_idp::{ed_jwk, odd_keys, sign, TestIdp};
    use portcullis_token::ManualClock;
    use serde_json::json;

    fn err(r: Result<Verified, Result<JwtError, GatewayError>>) -> JwtError {
        match r {
            Err(Ok(e)) => e,
            Ok(_) => panic!("verified"),
            Err(Err(e)) => panic!("gateway error {e}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn jwks_with_unmodelable_keys_still_verifies() {
        let mut keys = odd_keys();
        keys.push(ed_jwk("good"));
        let idp = TestIdp::start(keys).await;
        let provider = idp.provider(&ManualClock::new(1_000));
        let claims = json!({"sub": "alice"});
        let v = verify(&provider, &sign(json!({"kid": "good"}), &claims), &[])
            .await
            .unwrap();
        assert_eq!(v.claims["sub"], "alice");
        // no kid: every usable key is tried
        assert!(verify(&provider, &sign(json!({}), &claims), &[])
            .await
            .is_ok());
        // a kid that names a key we cannot use is "no matching key", not an IdP failure
        for kid in ["p521", "x25519", "rsa-enc", "hmac", "pq"] {
            let t = sign(json!({ "kid": kid }), &claims);
            assert_eq!(
                err(verify(&provider, &t, &[]).await),
                JwtError::NoKey,
                "{kid}"
            );
        }
        // the algorithm allow-list from discovery still applies
        let t = sign(json!({"kid": "good"}), &claims);
        assert!(matches!(
            err(verify(&provider, &t, &["RS256".into()]).await),
            JwtError::Algorithm(_)
        ));
    }

    #[tokio::test]
    async fn crit_header_is_refused() {
        let idp = TestIdp::start(vec![ed_jwk("k")]).await;
        let provider = idp.provider(&ManualClock::new(1_000));
        let claims = json!({"sub": "alice"});
        for crit in [
            json!(["exp"]),
            json!(["b64"]),
            json!([]),
            json!("b64"),
            json!(null),
        ] {
            let t = sign(
                json!({"kid": "k", "crit": crit, "exp": 5, "b64": true}),
                &claims,
            );
            assert_eq!(
                err(verify(&provider, &t, &[]).await),
                JwtError::CriticalHeader,
                "{crit}"
            );
        }
        let t = sign(json!({"kid": "k", "exp": 5}), &claims);
        assert!(verify(&provider, &t, &[]).await.is_ok());
    }

    #[tokio::test]
    async fn tampered_and_malformed_tokens_are_refused() {
        let idp = TestIdp::start(vec![ed_jwk("k")]).await;
        let provider = idp.provider(&ManualClock::new(1_000));
        let t = sign(json!({"kid": "k"}), &json!({"sub": "alice"}));
        let (head, rest) = t.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = format!(
            "{head}.{}.{sig}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory"}"#)
        );
        assert_eq!(
            err(verify(&provider, &forged, &[]).await),
            JwtError::Signature
        );
        for junk in ["", "a.b.c", "e30.e30.", "W10.e30.sig"] {
            assert_eq!(
                err(verify(&provider, junk, &[]).await),
                JwtError::Malformed,
                "{junk}"
            );
        }
    }
}
