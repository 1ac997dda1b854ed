//! Client authentication at the token and revocation endpoints (RFC 6749 §2.3, RFC 7523,
//! OIDC Core §9).
//!
//! - [`ClientAuth::ClientSecretBasic`]: `Authorization: Basic` with the form-urlencoded client
//!   id and secret (RFC 6749 §2.3.1 requires the encoding; many clients forget it).
//! - [`ClientAuth::ClientSecretPost`]: `client_id` and `client_secret` form fields.
//! - [`ClientAuth::PrivateKeyJwt`]: a signed assertion per request: `iss` = `sub` = client id,
//!   `aud` = token endpoint URL, a fresh random `jti`, `iat` = now, `exp` = now + 60 s.
//! - [`ClientAuth::None`]: public client, `client_id` only.
//!
//! Keys are read from PEM (PKCS#8 for EC and Ed25519; PKCS#1 or PKCS#8 for RSA) or from a
//! private JWK, and checked at construction by signing a test assertion, so a bad key fails at
//! start-up, not at the first refresh.
//!
//! ```no_run
//! # fn main() -> Result<(), portcullis_token::ClientAuthError> {
//! use portcullis_token::{ClientAuth, PrivateKeyJwt, SigningAlg};
//! let pem = std::fs::read_to_string("client-key.pem").unwrap_or_default();
//! let auth = ClientAuth::PrivateKeyJwt(PrivateKeyJwt::from_pem(SigningAlg::ES256, &pem)?.with_kid("key-1"));
//! # Ok(()) }
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::{Secret, TokenError};

/// How the client proves its identity to the token endpoint.
#[derive(Clone)]
pub enum ClientAuth {
    /// `client_secret_basic` (RFC 6749 §2.3.1): HTTP Basic with the form-urlencoded `client_id`
    /// and secret.
    ClientSecretBasic(Secret),
    /// `client_secret_post` (RFC 6749 §2.3.1): `client_id` and `client_secret` in the form body.
    ClientSecretPost(Secret),
    /// `private_key_jwt` (OIDC Core §9, RFC 7523): a signed assertion in `client_assertion`.
    PrivateKeyJwt(PrivateKeyJwt),
    /// A public client: only `client_id` in the form body.
    None,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientSecretBasic(_) => f.write_str("ClientSecretBasic([redacted])"),
            Self::ClientSecretPost(_) => f.write_str("ClientSecretPost([redacted])"),
            Self::PrivateKeyJwt(k) => f.debug_tuple("PrivateKeyJwt").field(k).finish(),
            Self::None => f.write_str("None"),
        }
    }
}

/// Errors reading a client-authentication key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientAuthError {
    #[error("unsupported signing algorithm {0:?} (use ES256, RS256, PS256 or EdDSA)")]
    /// The algorithm is not one of ES256, RS256, PS256 or EdDSA.
    UnsupportedAlgorithm(String),
    #[error("invalid private key: {0}")]
    /// The key cannot be read (not PEM/JWK, wrong type for the algorithm, private part missing,
    /// ...). The message never contains key material.
    InvalidKey(String),
}

/// Signing algorithms accepted for `private_key_jwt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256 (EC key).
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RSA key).
    RS256,
    /// RSASSA-PSS with SHA-256 (RSA key).
    PS256,
    /// Ed25519 (OKP key).
    EdDSA,
}

impl SigningAlg {
    fn algorithm(self) -> Algorithm {
        match self {
            Self::ES256 => Algorithm::ES256,
            Self::RS256 => Algorithm::RS256,
            Self::PS256 => Algorithm::PS256,
            Self::EdDSA => Algorithm::EdDSA,
        }
    }
}

impl std::str::FromStr for SigningAlg {
    type Err = ClientAuthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ES256" => Ok(Self::ES256),
            "RS256" => Ok(Self::RS256),
            "PS256" => Ok(Self::PS256),
            "EdDSA" => Ok(Self::EdDSA),
            other => Err(ClientAuthError::UnsupportedAlgorithm(other.to_owned())),
        }
    }
}

/// A private key for `private_key_jwt` client authentication.
#[derive(Clone)]
pub struct PrivateKeyJwt {
    alg: SigningAlg,
    kid: Option<String>,
    key: EncodingKey,
}

impl std::fmt::Debug for PrivateKeyJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKeyJwt")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: i64,
    exp: i64,
}

/// Lifetime of a client assertion.
const ASSERTION_LIFETIME_SECS: i64 = 60;

impl PrivateKeyJwt {
    /// A key from PEM file contents.
    pub fn from_pem(alg: SigningAlg, pem: &str) -> Result<Self, ClientAuthError> {
        let pem = pem.as_bytes();
        let key = match alg {
            SigningAlg::ES256 => EncodingKey::from_ec_pem(pem),
            SigningAlg::RS256 | SigningAlg::PS256 => EncodingKey::from_rsa_pem(pem),
            SigningAlg::EdDSA => EncodingKey::from_ed_pem(pem),
        }
        .map_err(|e| ClientAuthError::InvalidKey(e.to_string()))?;
        Self::checked(alg, None, key)
    }

    /// A key from the contents of a private JWK (`kty` EC/P-256, RSA with CRT parameters, or
    /// OKP/Ed25519). `alg` and `kid` are taken from the JWK; without `alg`, RSA keys sign RS256.
    pub fn from_jwk(jwk: &str) -> Result<Self, ClientAuthError> {
        let jwk: PrivateJwk = serde_json::from_str(jwk)
            .map_err(|e| ClientAuthError::InvalidKey(format!("JWK: {}", e.classify_str())))?;
        let (default_alg, der) = jwk.to_der()?;
        let alg = match &jwk.alg {
            Some(a) => a.parse()?,
            None => default_alg,
        };
        let key = match (alg, default_alg) {
            (SigningAlg::ES256, SigningAlg::ES256) => EncodingKey::from_ec_der(&der),
            (SigningAlg::RS256 | SigningAlg::PS256, SigningAlg::RS256) => {
                EncodingKey::from_rsa_der(&der)
            }
            (SigningAlg::EdDSA, SigningAlg::EdDSA) => EncodingKey::from_ed_der(&der),
            (alg, _) => {
                return Err(ClientAuthError::InvalidKey(format!(
                    "alg {alg:?} does not fit kty {}",
                    jwk.kty
                )));
            }
        };
        Self::checked(alg, jwk.kid.clone(), key)
    }

    /// Set the `kid` header of the assertions.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The signing algorithm of the assertions.
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// The `kid` header of the assertions, if set.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    fn checked(
        alg: SigningAlg,
        kid: Option<String>,
        key: EncodingKey,
    ) -> Result<Self, ClientAuthError> {
        let this = Self { alg, kid, key };
        this.sign("check", "https://check.invalid/", 0)
            .map_err(|e| ClientAuthError::InvalidKey(format!("cannot sign with this key: {e}")))?;
        Ok(this)
    }

    fn sign(
        &self,
        client_id: &str,
        audience: &str,
        now: i64,
    ) -> Result<Secret, jsonwebtoken::errors::Error> {
        let mut header = Header::new(self.alg.algorithm());
        header.kid = self.kid.clone();
        let claims = AssertionClaims {
            iss: client_id,
            sub: client_id,
            aud: audience,
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map(Secret::new)
    }

    /// A fresh client assertion for `audience` (the token endpoint URL).
    pub(crate) fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: i64,
    ) -> Result<Secret, TokenError> {
        self.sign(client_id, audience, now)
            // The key was test-signed at construction; a failure here is not the caller's input.
            .map_err(|e| TokenError::InvalidParams(format!("cannot sign client assertion: {e}")))
    }
}

trait ClassifyStr {
    fn classify_str(&self) -> String;
}
impl ClassifyStr for serde_json::Error {
    // serde_json messages can quote input values; a private key's parts must never appear in
    // an error message, so report the position only.
    fn classify_str(&self) -> String {
        format!(
            "{:?} error at line {} column {}",
            self.classify(),
            self.line(),
            self.column()
        )
    }
}

/// The private members of a JWK that we understand.
#[derive(Deserialize)]
pub(crate) struct PrivateJwk {
    kty: String,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    pub(crate) alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    d: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    p: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    dp: Option<String>,
    #[serde(default)]
    dq: Option<String>,
    #[serde(default)]
    qi: Option<String>,
}

impl PrivateJwk {
    fn member(&self, name: &'static str, v: &Option<String>) -> Result<Vec<u8>, ClientAuthError> {
        let v = v
            .as_deref()
            .ok_or_else(|| ClientAuthError::InvalidKey(format!("JWK lacks \"{name}\"")))?;
        URL_SAFE_NO_PAD
            .decode(v.trim_end_matches('='))
            .map_err(|_| ClientAuthError::InvalidKey(format!("JWK \"{name}\" is not base64url")))
    }

    /// The key in the DER form ring expects (PKCS#8 for EC/Ed25519, PKCS#1 for RSA), with the
    /// algorithm family's default algorithm.
    pub(crate) fn to_der(&self) -> Result<(SigningAlg, Vec<u8>), ClientAuthError> {
        match (self.kty.as_str(), self.crv.as_deref()) {
            ("EC", Some("P-256")) => {
                let d = fixed::<32>("d", self.member("d", &self.d)?)?;
                let x = fixed::<32>("x", self.member("x", &self.x)?)?;
                let y = fixed::<32>("y", self.member("y", &self.y)?)?;
                Ok((SigningAlg::ES256, der::ec_p256_pkcs8(&d, &x, &y)))
            }
            ("OKP", Some("Ed25519")) => {
                let d = fixed::<32>("d", self.member("d", &self.d)?)?;
                Ok((SigningAlg::EdDSA, der::ed25519_pkcs8(&d)))
            }
            ("RSA", _) => {
                let parts = [
                    self.member("n", &self.n)?,
                    self.member("e", &self.e)?,
                    self.member("d", &self.d)?,
                    self.member("p", &self.p)?,
                    self.member("q", &self.q)?,
                    self.member("dp", &self.dp)?,
                    self.member("dq", &self.dq)?,
                    self.member("qi", &self.qi)?,
                ];
                Ok((SigningAlg::RS256, der::rsa_pkcs1(&parts)))
            }
            (kty, crv) => Err(ClientAuthError::InvalidKey(format!(
                "unsupported JWK kty {kty} crv {crv:?}"
            ))),
        }
    }
}

/// Left-pad a big-endian integer to N bytes (JWK encoders may drop leading zeros).
fn fixed<const N: usize>(name: &str, v: Vec<u8>) -> Result<[u8; N], ClientAuthError> {
    if v.len() > N {
        return Err(ClientAuthError::InvalidKey(format!(
            "JWK \"{name}\" is too long"
        )));
    }
    let mut out = [0u8; N];
    out[N - v.len()..].copy_from_slice(&v);
    Ok(out)
}

/// Just enough DER to turn JWK members into the key documents ring parses.
mod der {
    fn len(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes = n.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        len(&mut out, content.len());
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    /// A non-negative INTEGER from big-endian magnitude bytes.
    fn uint(bytes: &[u8]) -> Vec<u8> {
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let mut v = bytes[skip..].to_vec();
        if v.first().is_none_or(|b| b & 0x80 != 0) {
            v.insert(0, 0);
        }
        tlv(0x02, &v)
    }

    const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

    /// PKCS#8 v1 with an RFC 5915 ECPrivateKey that includes the public key (ring needs it).
    pub(super) fn ec_p256_pkcs8(d: &[u8; 32], x: &[u8; 32], y: &[u8; 32]) -> Vec<u8> {
        let point = [&[0x00, 0x04][..], x, y].concat();
        let ec_private_key = seq(&[uint(&[1]), tlv(0x04, d), tlv(0xa1, &tlv(0x03, &point))]);
        seq(&[
            uint(&[0]),
            seq(&[OID_EC_PUBLIC_KEY.to_vec(), OID_P256.to_vec()]),
            tlv(0x04, &ec_private_key),
        ])
    }

    /// PKCS#8 v1 for Ed25519 (RFC 8410).
    pub(super) fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
        seq(&[
            uint(&[0]),
            seq(&[OID_ED25519.to_vec()]),
            tlv(0x04, &tlv(0x04, seed)),
        ])
    }

    /// PKCS#1 RSAPrivateKey from n, e, d, p, q, dp, dq, qi.
    pub(super) fn rsa_pkcs1(parts: &[Vec<u8>; 8]) -> Vec<u8> {
        let mut all = vec![uint(&[0])];
        all.extend(parts.iter().map(|p| uint(p)));
        seq(&all)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};

    const EC_PEM: &str = include_str!("../tests/keys/ec-p256.pem");
    const EC_PUB: &str = include_str!("../tests/keys/ec-p256.pub.pem");
    const RSA_PEM: &str = include_str!("../tests/keys/rsa-2048.pem");
    const RSA_PUB: &str = include_str!("../tests/keys/rsa-2048.pub.pem");
    const ED_PEM: &str = include_str!("../tests/keys/ed25519.pem");
    const ED_PUB: &str = include_str!("../tests/keys/ed25519.pub.pem");
    const EC_JWK: &str = include_str!("../tests/keys/ec-p256.jwk.json");
    const RSA_JWK: &str = include_str!("../tests/keys/rsa-2048.jwk.json");
    const ED_JWK: &str = include_str!("../tests/keys/ed25519.jwk.json");

    #[derive(Deserialize)]
    struct Claims {
        iss: String,
        sub: String,
        aud: String,
        jti: String,
        iat: i64,
        exp: i64,
    }

    fn decoding_key(alg: SigningAlg) -> DecodingKey {
        match alg {
            SigningAlg::ES256 => DecodingKey::from_ec_pem(EC_PUB.as_bytes()),
            SigningAlg::RS256 | SigningAlg::PS256 => DecodingKey::from_rsa_pem(RSA_PUB.as_bytes()),
            SigningAlg::EdDSA => DecodingKey::from_ed_pem(ED_PUB.as_bytes()),
        }
        .unwrap()
    }

    fn verify(key: &PrivateKeyJwt) -> (Claims, Option<String>) {
        let now = 1_700_000_000;
        let aud = "https://idp.example/token";
        let jwt = key.assertion("client-1", aud, now).unwrap();
        let header = decode_header(jwt.expose_secret()).unwrap();
        assert_eq!(header.alg, key.alg.algorithm());
        let mut v = Validation::new(key.alg.algorithm());
        v.set_audience(&[aud]);
        v.validate_exp = false; // fixed `now` in the past
        let claims = decode::<Claims>(jwt.expose_secret(), &decoding_key(key.alg), &v)
            .unwrap()
            .claims;
        assert_eq!(
            (
                claims.iss.as_str(),
                claims.sub.as_str(),
                claims.aud.as_str()
            ),
            ("client-1", "client-1", aud)
        );
        assert_eq!((claims.iat, claims.exp), (now, now + 60));
        (claims, header.kid)
    }

    #[test]
    fn private_key_jwt_assertions_verify_with_the_public_key_from_pem() {
        for (alg, pem) in [
            (SigningAlg::ES256, EC_PEM),
            (SigningAlg::RS256, RSA_PEM),
            (SigningAlg::PS256, RSA_PEM),
            (SigningAlg::EdDSA, ED_PEM),
        ] {
            let key = PrivateKeyJwt::from_pem(alg, pem).unwrap().with_kid("k1");
            let (_, kid) = verify(&key);
            assert_eq!(kid.as_deref(), Some("k1"), "{alg:?}");
        }
    }

    #[test]
    fn private_key_jwt_assertions_verify_with_the_public_key_from_jwk() {
        for (jwk, alg, kid) in [
            (EC_JWK, SigningAlg::ES256, "ec-test"),
            (RSA_JWK, SigningAlg::PS256, "rsa-test"),
            (ED_JWK, SigningAlg::EdDSA, "ed-test"),
        ] {
            let key = PrivateKeyJwt::from_jwk(jwk).unwrap();
            assert_eq!(key.alg(), alg);
            let (_, got_kid) = verify(&key);
            assert_eq!(got_kid.as_deref(), Some(kid));
        }
    }

    #[test]
    fn every_assertion_has_a_fresh_jti() {
        let key = PrivateKeyJwt::from_pem(SigningAlg::ES256, EC_PEM).unwrap();
        let jtis: std::collections::HashSet<String> = (0..20).map(|_| verify(&key).0.jti).collect();
        assert_eq!(jtis.len(), 20);
    }

    #[test]
    fn bad_keys_fail_at_construction() {
        assert!(PrivateKeyJwt::from_pem(SigningAlg::ES256, "not a pem").is_err());
        assert!(PrivateKeyJwt::from_pem(SigningAlg::ES256, RSA_PEM).is_err());
        assert!(PrivateKeyJwt::from_pem(SigningAlg::EdDSA, EC_PEM).is_err());
        assert!(PrivateKeyJwt::from_jwk(r#"{"kty":"EC","crv":"P-384","d":"AA"}"#).is_err());
        assert!(PrivateKeyJwt::from_jwk(r#"{"kty":"oct","k":"AA"}"#).is_err());
        let ec_as_rs = EC_JWK.replace("ES256", "RS256");
        assert!(PrivateKeyJwt::from_jwk(&ec_as_rs).is_err());
        // wrong private scalar for the public point: ring's consistency check catches it
        let mut jwk: serde_json::Value = serde_json::from_str(EC_JWK).unwrap();
        jwk["d"] = serde_json::Value::String(URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert!(PrivateKeyJwt::from_jwk(&jwk.to_string()).is_err());
    }

    #[test]
    fn debug_never_shows_key_material_or_secrets() {
        let key = PrivateKeyJwt::from_jwk(EC_JWK).unwrap();
        let d = serde_json::from_str::<serde_json::Value>(EC_JWK).unwrap()["d"]
            .as_str()
            .unwrap()
            .to_owned();
        for auth in [
            ClientAuth::PrivateKeyJwt(key),
            ClientAuth::ClientSecretBasic(Secret::new("s3cr3t")),
        ] {
            let dbg = format!("{auth:?}");
            assert!(!dbg.contains(&d) && !dbg.contains("s3cr3t"), "{dbg}");
        }
    }
}
