//! DPoP: sender-constrained tokens (RFC 9449).
//!
//! A [`DpopKey`] is the client's proof-of-possession key pair; a [`Dpop`] adds the clock and
//! the server nonces and signs one proof JWT per HTTP request:
//!
//! - header: `typ` = `dpop+jwt`, `alg`, `jwk` = the public key only (RFC 9449 §4.2);
//! - claims: a fresh random `jti`, `htm` (the method), `htu` (the target URL without query and
//!   fragment), `iat` from the injected clock, `nonce` when the server gave one, and `ath`
//!   (base64url SHA-256 of the access token) on resource requests (§4.3, §7.1).
//!
//! Nonces (§8, §9) are remembered per server origin, from every response that carries
//! `DPoP-Nonce`; an answer `use_dpop_nonce` is met by one retry with the new nonce (the
//! [`OAuthClient`](crate::OAuthClient) does this at the token endpoint, the gateway and the
//! [`TokenClient`](crate::TokenClient) at resource servers).
//!
//! The authorization request binds the code to the key with `dpop_jkt` =
//! [`DpopKey::thumbprint`] (RFC 7638 SHA-256 JWK thumbprint, §10).
//!
//! Keys: ES256 (P-256) and EdDSA (Ed25519) keys can be generated; RS256/PS256 keys are read
//! from a private JWK. Signing uses `ring` with the key parsed once, so a proof costs one
//! signature (ES256: tens of microseconds). The private key never appears in `Debug`, logs or
//! errors; [`DpopKey::private_jwk`] is the one accessor, for persisting it.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use portcullis_token::{dpop::{Dpop, DpopKey}, SigningAlg, SystemClock};
//! let key = DpopKey::generate(SigningAlg::ES256)?;
//! let dpop = Dpop::new(Arc::new(key), Arc::new(SystemClock));
//! let url = url::Url::parse("https://api.example/orders?page=2")?;
//! let proof = dpop.proof("GET", &url, None)?;
//! assert_eq!(proof.to_str()?.split('.').count(), 3);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderValue;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use url::Url;

use crate::auth::PrivateJwk;
use crate::{ClientAuthError, Secret, SharedClock, SigningAlg, TokenError};

/// The `DPoP` request header (RFC 9449 §4.1).
pub const DPOP_HEADER: &str = "dpop";
/// The `DPoP-Nonce` response header (RFC 9449 §8.1).
pub const DPOP_NONCE_HEADER: &str = "dpop-nonce";
/// The error code of a server that wants (another) nonce (RFC 9449 §8, §9).
pub const USE_DPOP_NONCE: &str = "use_dpop_nonce";
/// Most server origins whose nonce is remembered; more is a misconfiguration, not a workload.
const MAX_NONCE_ORIGINS: usize = 1024;

enum Signer {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair, &'static dyn ring::signature::RsaEncoding),
}

/// A DPoP key pair with its precomputed public JWK header and RFC 7638 thumbprint.
pub struct DpopKey {
    alg: SigningAlg,
    signer: Signer,
    /// base64url of the JOSE header (`typ`, `alg`, `jwk`), the same for every proof.
    header_b64: String,
    thumbprint: String,
    private_jwk: Secret,
    rng: SystemRandom,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &self.alg)
            .field("jkt", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl DpopKey {
    /// A new random key: `ES256` (P-256) or `EdDSA` (Ed25519). RSA keys are not generated
    /// here (use [`from_jwk`](Self::from_jwk) with a key made by your key tooling).
    /// Costs one scalar multiplication and a test signature (ES256: well under a
    /// millisecond).
    ///
    /// # Errors
    ///
    /// [`ClientAuthError::UnsupportedAlgorithm`] for RS256/PS256.
    pub fn generate(alg: SigningAlg) -> Result<Self, ClientAuthError> {
        Self::from_seed(alg, &rand::random())
    }

    /// The key of `alg` determined by 32 secret bytes: the same seed always gives the same
    /// key. ES256: the seed is the P-256 private scalar (in the ~2^-32 case that it is zero
    /// or not below the group order, it is re-hashed with SHA-256 until it is); EdDSA: the
    /// seed is the Ed25519 seed (RFC 8032 §5.1.5).
    ///
    /// For keys that must be re-created rather than stored, e.g. the gateway's per-login key,
    /// derived from a server secret and the login's `state` and PKCE verifier so that it can
    /// be made again at the callback without the private key ever leaving the server. The
    /// seed is as secret as the key: use 256 bits from a CSPRNG or a PRF under a secret key.
    ///
    /// # Errors
    ///
    /// [`ClientAuthError::UnsupportedAlgorithm`] for RS256/PS256.
    pub fn from_seed(alg: SigningAlg, seed: &[u8; 32]) -> Result<Self, ClientAuthError> {
        let jwk = match alg {
            SigningAlg::ES256 => {
                let mut bytes = *seed;
                let secret = loop {
                    // Fails only for zero or a value ≥ the group order (probability ~2^-32).
                    if let Ok(k) = p256::SecretKey::from_slice(&bytes) {
                        break k;
                    }
                    bytes = Sha256::digest(bytes).into();
                };
                let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
                    &secret.public_key(),
                    false,
                );
                let (Some(x), Some(y)) = (point.x(), point.y()) else {
                    return Err(ClientAuthError::InvalidKey(
                        "P-256 point at infinity".into(),
                    ));
                };
                serde_json::json!({
                    "kty": "EC", "crv": "P-256", "alg": "ES256",
                    "x": b64(x), "y": b64(y), "d": b64(&secret.to_bytes()),
                })
            }
            SigningAlg::EdDSA => {
                let pair = Ed25519KeyPair::from_seed_unchecked(seed)
                    .map_err(|_| ClientAuthError::InvalidKey("Ed25519 seed refused".into()))?;
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
                    "x": b64(pair.public_key().as_ref()), "d": b64(seed),
                })
            }
            other => {
                return Err(ClientAuthError::UnsupportedAlgorithm(format!(
                    "{other:?} keys are not generated; give a key file"
                )))
            }
        };
        Self::from_jwk(&jwk.to_string())
    }

    /// A key from a private JWK (`EC`/P-256 → ES256, `OKP`/Ed25519 → EdDSA, `RSA` with CRT
    /// members → RS256, or PS256 when the JWK says `"alg": "PS256"`).
    ///
    /// # Errors
    ///
    /// [`ClientAuthError::InvalidKey`] (never quoting key material) or
    /// [`ClientAuthError::UnsupportedAlgorithm`].
    pub fn from_jwk(private_jwk: &str) -> Result<Self, ClientAuthError> {
        let jwk: PrivateJwk = serde_json::from_str(private_jwk).map_err(|e| {
            ClientAuthError::InvalidKey(format!(
                "DPoP JWK: {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let (family, der) = jwk.to_der()?;
        let alg = match &jwk.alg {
            Some(a) => a.parse()?,
            None => family,
        };
        let bad = |what: &str| ClientAuthError::InvalidKey(format!("DPoP key: {what}"));
        let rng = SystemRandom::new();
        let (signer, public) = match (alg, family) {
            (SigningAlg::ES256, SigningAlg::ES256) => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
                    .map_err(|_| bad("the EC key is inconsistent"))?;
                let point = pair.public_key().as_ref();
                // Uncompressed SEC1: 0x04 || x || y.
                if point.len() != 65 {
                    return Err(bad("unexpected EC public key"));
                }
                let public = format!(
                    r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                    b64(&point[1..33]),
                    b64(&point[33..65])
                );
                (Signer::Ec(pair), public)
            }
            (SigningAlg::EdDSA, SigningAlg::EdDSA) => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                    .map_err(|_| bad("the Ed25519 key is unusable"))?;
                let public = format!(
                    r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                    b64(pair.public_key().as_ref())
                );
                (Signer::Ed(pair), public)
            }
            (SigningAlg::RS256 | SigningAlg::PS256, SigningAlg::RS256) => {
                let pair =
                    RsaKeyPair::from_der(&der).map_err(|_| bad("the RSA key is unusable"))?;
                let parts: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
                let public = format!(
                    r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                    b64(&parts.e),
                    b64(&parts.n)
                );
                let encoding: &'static dyn ring::signature::RsaEncoding =
                    if alg == SigningAlg::PS256 {
                        &ring::signature::RSA_PSS_SHA256
                    } else {
                        &ring::signature::RSA_PKCS1_SHA256
                    };
                (Signer::Rsa(pair, encoding), public)
            }
            (alg, _) => return Err(bad(&format!("alg {alg:?} does not fit the key type"))),
        };
        // RFC 7638 §3: the required members, lexicographic order, no whitespace: `public` is
        // built in exactly that form.
        let thumbprint = b64(&Sha256::digest(public.as_bytes()));
        let alg_name = match alg {
            SigningAlg::ES256 => "ES256",
            SigningAlg::RS256 => "RS256",
            SigningAlg::PS256 => "PS256",
            SigningAlg::EdDSA => "EdDSA",
        };
        let header = format!(r#"{{"typ":"dpop+jwt","alg":"{alg_name}","jwk":{public}}}"#);
        let key = Self {
            alg,
            signer,
            header_b64: b64(header.as_bytes()),
            thumbprint,
            private_jwk: Secret::new(private_jwk.trim()),
            rng,
        };
        key.sign(b"check")
            .map_err(|_| bad("cannot sign with this key"))?;
        Ok(key)
    }

    /// The JWS algorithm of the proofs.
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// RFC 7638 SHA-256 thumbprint of the public key, base64url: the `dpop_jkt` of the
    /// authorization request and the `cnf.jkt` of the tokens bound to this key.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The private JWK, for persisting the key (a key file, a sealed session ticket).
    pub fn private_jwk(&self) -> &Secret {
        &self.private_jwk
    }

    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
        Ok(match &self.signer {
            Signer::Ec(k) => k.sign(&self.rng, input)?.as_ref().to_vec(),
            Signer::Ed(k) => k.sign(input).as_ref().to_vec(),
            Signer::Rsa(k, encoding) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(*encoding, &self.rng, input, &mut sig)?;
                sig
            }
        })
    }
}

#[derive(Serialize)]
struct ProofClaims<'a> {
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<&'a str>,
}

/// The `htu` of a request URL: scheme, authority and path, without query and fragment
/// (RFC 9449 §4.2).
pub fn htu(url: &Url) -> String {
    let end = url[..url::Position::AfterPath].len();
    url.as_str()[..end].to_owned()
}

/// The nonce store key of a URL: its origin.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Server nonces, per origin (RFC 9449 §8.2, §9).
#[derive(Debug, Default)]
pub struct DpopNonces {
    by_origin: Mutex<HashMap<String, String>>,
}

impl DpopNonces {
    /// The last nonce the server at `url`'s origin gave.
    pub fn get(&self, url: &Url) -> Option<String> {
        self.by_origin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&origin(url))
            .cloned()
    }

    /// Remembers `nonce` for `url`'s origin (values that cannot be a header are ignored).
    pub fn set(&self, url: &Url, nonce: &str) {
        if nonce.is_empty() || nonce.len() > 1024 || HeaderValue::from_str(nonce).is_err() {
            return;
        }
        let mut map = self
            .by_origin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_NONCE_ORIGINS && !map.contains_key(&origin(url)) {
            map.clear();
        }
        map.insert(origin(url), nonce.to_owned());
    }
}

/// A DPoP key with a clock and a nonce store: makes the proofs of one client.
#[derive(Clone)]
pub struct Dpop {
    key: Arc<DpopKey>,
    nonces: Arc<DpopNonces>,
    clock: SharedClock,
}

impl std::fmt::Debug for Dpop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dpop").field("key", &self.key).finish()
    }
}

impl Dpop {
    /// Proofs with `key`, `iat` from `clock`, an empty nonce store.
    pub fn new(key: Arc<DpopKey>, clock: SharedClock) -> Self {
        Self {
            key,
            nonces: Arc::default(),
            clock,
        }
    }

    /// Proofs with `key` sharing an existing nonce store: nonces belong to servers, not keys
    /// (RFC 9449 §8.2), so per-session or per-client keys that talk to the same servers share
    /// them.
    pub fn with_nonces(key: Arc<DpopKey>, nonces: Arc<DpopNonces>, clock: SharedClock) -> Self {
        Self { key, nonces, clock }
    }

    /// The same clock and nonce store with another key (for a session's own key).
    pub fn with_key(&self, key: Arc<DpopKey>) -> Self {
        Self {
            key,
            nonces: self.nonces.clone(),
            clock: self.clock.clone(),
        }
    }

    /// The key.
    pub fn key(&self) -> &DpopKey {
        &self.key
    }

    /// The key, shared.
    pub fn shared_key(&self) -> &Arc<DpopKey> {
        &self.key
    }

    /// The nonce store, shared (for [`with_nonces`](Self::with_nonces)).
    pub fn shared_nonces(&self) -> &Arc<DpopNonces> {
        &self.nonces
    }

    /// The nonce store (shared by clones).
    pub fn nonces(&self) -> &DpopNonces {
        &self.nonces
    }

    /// A proof for `method` on `url` with the nonce last seen from `url`'s origin; with
    /// `access_token`, its `ath`. The value is marked sensitive.
    ///
    /// # Errors
    ///
    /// [`TokenError::InvalidParams`] when signing fails (the key was test-signed when read).
    pub fn proof(
        &self,
        method: &str,
        url: &Url,
        access_token: Option<&Secret>,
    ) -> Result<HeaderValue, TokenError> {
        let nonce = self.nonces.get(url);
        self.proof_with_nonce(method, url, nonce.as_deref(), access_token)
    }

    /// As [`proof`](Self::proof), with an explicit `nonce`.
    ///
    /// # Errors
    ///
    /// [`TokenError::InvalidParams`] when signing fails.
    pub fn proof_with_nonce(
        &self,
        method: &str,
        url: &Url,
        nonce: Option<&str>,
        access_token: Option<&Secret>,
    ) -> Result<HeaderValue, TokenError> {
        let jti: [u8; 16] = rand::random();
        let jti = b64(&jti);
        let ath = access_token.map(|t| b64(&Sha256::digest(t.expose_secret().as_bytes())));
        let htu = htu(url);
        let claims = ProofClaims {
            jti: &jti,
            htm: method,
            htu: &htu,
            iat: self.clock.now_unix(),
            nonce,
            ath: ath.as_deref(),
        };
        let payload = serde_json::to_vec(&claims)
            .map_err(|e| TokenError::InvalidParams(format!("DPoP claims: {e}")))?;
        let mut jws = String::with_capacity(self.key.header_b64.len() + payload.len() * 2 + 100);
        jws.push_str(&self.key.header_b64);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut jws);
        let signature = self
            .key
            .sign(jws.as_bytes())
            .map_err(|_| TokenError::InvalidParams("cannot sign a DPoP proof".into()))?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
        let mut value = HeaderValue::from_str(&jws)
            .map_err(|_| TokenError::InvalidParams("DPoP proof is not a header value".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Remembers the `DPoP-Nonce` of a response from `url`, if it carries one. Returns the
    /// nonce.
    pub fn remember_nonce(&self, url: &Url, headers: &http::HeaderMap) -> Option<String> {
        let nonce = headers.get(DPOP_NONCE_HEADER)?.to_str().ok()?;
        self.nonces.set(url, nonce);
        Some(nonce.to_owned())
    }
}

/// True when a resource server's 401 asks for a (new) DPoP nonce: `WWW-Authenticate: DPoP
/// error="use_dpop_nonce"` (RFC 9449 §9).
pub fn is_nonce_challenge(status: http::StatusCode, headers: &http::HeaderMap) -> bool {
    status == http::StatusCode::UNAUTHORIZED
        && headers.contains_key(DPOP_NONCE_HEADER)
        && headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.trim_start()
                    .get(..4)
                    .is_some_and(|s| s.eq_ignore_ascii_case("dpop"))
                    && v.contains(USE_DPOP_NONCE)
            })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::ManualClock;
    use std::str::FromStr as _;

    fn parts(proof: &HeaderValue) -> (serde_json::Value, serde_json::Value) {
        let s = proof.to_str().unwrap();
        let mut it = s.split('.');
        let h = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
        let p = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
        (
            serde_json::from_slice(&h).unwrap(),
            serde_json::from_slice(&p).unwrap(),
        )
    }

    #[test]
    fn proof_has_the_rfc9449_header_and_claims() {
        let clock = Arc::new(ManualClock::new(1_700_000_000));
        let dpop = Dpop::new(
            Arc::new(DpopKey::generate(SigningAlg::ES256).unwrap()),
            clock,
        );
        let url = Url::parse("https://api.example:8443/base/orders?x=1#f").unwrap();
        let token = Secret::new("token-value");
        let proof = dpop
            .proof_with_nonce("POST", &url, Some("n1"), Some(&token))
            .unwrap();
        assert!(proof.is_sensitive());
        let (h, p) = parts(&proof);
        assert_eq!(h["typ"], "dpop+jwt");
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["jwk"]["kty"], "EC");
        assert!(h["jwk"].get("d").is_none(), "the private key stays out");
        assert_eq!(p["htm"], "POST");
        assert_eq!(p["htu"], "https://api.example:8443/base/orders");
        assert_eq!(p["iat"], 1_700_000_000);
        assert_eq!(p["nonce"], "n1");
        assert_eq!(p["ath"], b64(&Sha256::digest(b"token-value")));
        let (_, again) = parts(&dpop.proof("POST", &url, None).unwrap());
        assert_ne!(p["jti"], again["jti"], "every proof has a fresh jti");
        assert!(again.get("nonce").is_none() && again.get("ath").is_none());
    }

    #[test]
    fn proofs_verify_with_the_embedded_jwk_for_every_algorithm() {
        let rsa = include_str!("../tests/keys/rsa-2048.jwk.json");
        let mut ps = serde_json::from_str::<serde_json::Value>(rsa).unwrap();
        ps["alg"] = "PS256".into();
        let keys = [
            DpopKey::generate(SigningAlg::ES256).unwrap(),
            DpopKey::generate(SigningAlg::EdDSA).unwrap(),
            DpopKey::from_jwk(include_str!("../tests/keys/ec-p256.jwk.json")).unwrap(),
            DpopKey::from_jwk(rsa).unwrap(),
            DpopKey::from_jwk(&ps.to_string()).unwrap(),
        ];
        let url = Url::parse("https://api.example/x").unwrap();
        for key in keys {
            let alg = key.alg();
            let dpop = Dpop::new(Arc::new(key), Arc::new(ManualClock::new(5)));
            let proof = dpop.proof("GET", &url, None).unwrap();
            let (h, _) = parts(&proof);
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(h["jwk"].clone()).unwrap();
            let mut v = jsonwebtoken::Validation::new(
                jsonwebtoken::Algorithm::from_str(h["alg"].as_str().unwrap()).unwrap(),
            );
            v.required_spec_claims.clear();
            v.validate_exp = false;
            let got = jsonwebtoken::decode::<serde_json::Value>(
                proof.to_str().unwrap(),
                &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
                &v,
            );
            assert!(got.is_ok(), "{alg:?}: {got:?}");
        }
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // RFC 7638 §3.1 uses an RSA key; its public members give this thumbprint. The
        // construction is the same for EC keys, checked here against a known P-256 key
        // (thumbprint computed with `jose.calculateJwkThumbprint`).
        let jwk = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"}"#;
        let key = DpopKey::from_jwk(jwk).unwrap();
        assert_eq!(
            key.thumbprint(),
            "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U"
        );
    }

    #[test]
    fn generated_keys_round_trip_through_their_private_jwk() {
        for alg in [SigningAlg::ES256, SigningAlg::EdDSA] {
            let key = DpopKey::generate(alg).unwrap();
            let again = DpopKey::from_jwk(key.private_jwk().expose_secret()).unwrap();
            assert_eq!(key.thumbprint(), again.thumbprint());
            assert_eq!(again.alg(), alg);
        }
        assert!(DpopKey::generate(SigningAlg::RS256).is_err());
    }

    #[test]
    fn keys_from_one_seed_are_the_same_and_from_two_seeds_differ() {
        for alg in [SigningAlg::ES256, SigningAlg::EdDSA] {
            let a = DpopKey::from_seed(alg, &[7; 32]).unwrap();
            let b = DpopKey::from_seed(alg, &[7; 32]).unwrap();
            let c = DpopKey::from_seed(alg, &[8; 32]).unwrap();
            assert_eq!(a.thumbprint(), b.thumbprint(), "{alg:?}");
            assert_ne!(a.thumbprint(), c.thumbprint(), "{alg:?}");
            assert_eq!(a.alg(), alg);
        }
        // Zero is not a P-256 scalar: re-hashed, still deterministic.
        let z1 = DpopKey::from_seed(SigningAlg::ES256, &[0; 32]).unwrap();
        let z2 = DpopKey::from_seed(SigningAlg::ES256, &[0; 32]).unwrap();
        assert_eq!(z1.thumbprint(), z2.thumbprint());
        assert!(DpopKey::from_seed(SigningAlg::PS256, &[7; 32]).is_err());
    }

    #[test]
    fn with_key_shares_the_nonces_and_signs_with_the_new_key() {
        let base = Dpop::new(
            Arc::new(DpopKey::generate(SigningAlg::ES256).unwrap()),
            Arc::new(ManualClock::new(9)),
        );
        let url = Url::parse("https://idp.example/token").unwrap();
        base.nonces().set(&url, "n-1");
        let session = base.with_key(Arc::new(DpopKey::generate(SigningAlg::EdDSA).unwrap()));
        let (h, p) = parts(&session.proof("POST", &url, None).unwrap());
        assert_eq!(h["alg"], "EdDSA");
        assert_eq!(
            p["nonce"], "n-1",
            "nonces belong to the server, not the key"
        );
        assert_ne!(session.key().thumbprint(), base.key().thumbprint());
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = DpopKey::generate(SigningAlg::ES256).unwrap();
        let d = serde_json::from_str::<serde_json::Value>(key.private_jwk().expose_secret())
            .unwrap()["d"]
            .as_str()
            .unwrap()
            .to_owned();
        let dpop = Dpop::new(Arc::new(key), Arc::new(ManualClock::new(0)));
        assert!(!format!("{dpop:?}").contains(&d));
    }

    #[test]
    fn nonces_are_kept_per_origin() {
        let n = DpopNonces::default();
        let a = Url::parse("https://a.example/x").unwrap();
        let a2 = Url::parse("https://a.example/other?q").unwrap();
        let b = Url::parse("https://b.example/x").unwrap();
        n.set(&a, "one");
        assert_eq!(n.get(&a2).as_deref(), Some("one"));
        assert_eq!(n.get(&b), None);
        n.set(&a, "bad\nnonce");
        assert_eq!(n.get(&a).as_deref(), Some("one"));
    }

    #[test]
    fn nonce_challenge_needs_the_dpop_scheme_the_error_and_a_nonce() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"DPoP error="use_dpop_nonce", error_description="x""#),
        );
        assert!(!is_nonce_challenge(http::StatusCode::UNAUTHORIZED, &h));
        h.insert(DPOP_NONCE_HEADER, HeaderValue::from_static("n"));
        assert!(is_nonce_challenge(http::StatusCode::UNAUTHORIZED, &h));
        assert!(!is_nonce_challenge(http::StatusCode::FORBIDDEN, &h));
        h.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
        assert!(!is_nonce_challenge(http::StatusCode::UNAUTHORIZED, &h));
    }
}
