//! Per-session DPoP keys (RFC 9449; `[oidc.dpop] per_session = true`).
//!
//! A login gets a fresh key: its RFC 7638 thumbprint is the authorization request's
//! `dpop_jkt` (§10), it proves the code exchange, and from then on its private JWK travels
//! only inside the session's sealed ticket ([`UserTokens::dpop_key`]), where the token
//! manager finds it for refreshes and proxied calls.
//!
//! Between the authorization request and the callback the key is *not kept*: the login
//! transaction (a cookie the browser holds) records only which ring key and algorithm made
//! it, and the callback makes the same key again:
//!
//! ```text
//! seed = HMAC-SHA256(prf key of ring key `kid`,
//!                    "portcullis.dpop.session-key.v1" ‖ 0 ‖ alg ‖ 0 ‖ state ‖ 0 ‖ code_verifier)
//! key  = DpopKey::from_seed(alg, seed)
//! ```
//!
//! So the private key is never in a cookie, a URL or a log line, and a callback on another
//! instance (same key ring) makes the same key. Computing it takes the ring key *and* the
//! PKCE verifier: the `state` alone travels in URLs (browser history, IdP logs), but the
//! verifier only inside the sealed login cookie and in the back-channel code exchange, so a
//! leaked ring key together with a logged `state` is not enough. A ring rotated between login
//! and callback still works
//! (the old key stays in the ring while its blobs live); a login whose ring key was removed
//! meanwhile fails with a clear page, as its transaction cookie would.

use portcullis_token::{DpopKey, SigningAlg, UserTokens};
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;
use crate::oidc::authorize::LoginTransaction;
use crate::session::KeyRing;
use crate::settings::GatewaySettings;

/// Purpose label of the key derivation (see the module docs).
const PURPOSE: &[u8] = b"portcullis.dpop.session-key.v1";

/// Which key a login's session key was derived with: recorded in the login transaction so
/// the callback can make the same key. Carries no key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionKeyRef {
    /// Id of the ring key whose PRF made the seed.
    pub kid: String,
    /// JWS algorithm of the key: `ES256` or `EdDSA`.
    pub alg: String,
}

fn alg_name(alg: SigningAlg) -> &'static str {
    match alg {
        SigningAlg::ES256 => "ES256",
        SigningAlg::EdDSA => "EdDSA",
        SigningAlg::RS256 => "RS256",
        SigningAlg::PS256 => "PS256",
    }
}

/// `alg ‖ 0 ‖ state ‖ 0 ‖ code_verifier` (none of them contains a zero byte).
fn input(alg: &str, tx: &LoginTransaction) -> Vec<u8> {
    [alg, tx.state.as_str(), tx.pkce_verifier.as_str()]
        .join("\0")
        .into_bytes()
}

/// The session key of a login that is starting, when per-session keys are on: made from
/// the ring, `tx.state` and `tx.pkce_verifier`, recorded in `tx` (as a [`SessionKeyRef`]).
/// `None` when the frontend uses one gateway key (or no DPoP).
///
/// # Errors
///
/// [`GatewayError::Internal`] when the configured algorithm cannot be generated (the
/// configuration check refuses RSA for per-session keys, so this does not happen).
pub fn for_login(
    settings: &GatewaySettings,
    keys: &KeyRing,
    tx: &mut LoginTransaction,
) -> Result<Option<DpopKey>, GatewayError> {
    make(session_key_alg(settings), keys, tx)
}

/// The algorithm of per-session keys, `None` when the frontend uses one gateway key.
pub fn session_key_alg(settings: &GatewaySettings) -> Option<SigningAlg> {
    settings.oidc.dpop.as_ref().and_then(|d| d.session_key_alg)
}

fn make(
    alg: Option<SigningAlg>,
    keys: &KeyRing,
    tx: &mut LoginTransaction,
) -> Result<Option<DpopKey>, GatewayError> {
    let Some(alg) = alg else {
        return Ok(None);
    };
    let name = alg_name(alg);
    let (kid, seed) = keys.derive(PURPOSE, &input(name, tx));
    let key = DpopKey::from_seed(alg, &seed)
        .map_err(|e| GatewayError::Internal(format!("per-session DPoP key: {e}")))?;
    tx.dpop_key = Some(SessionKeyRef {
        kid: kid.to_owned(),
        alg: name.to_owned(),
    });
    Ok(Some(key))
}

/// The session key of a login that comes back: the same key [`for_login`] made, or `None`
/// when the login had none (then the gateway key, if any, is used, whatever the settings say
/// now: the code is bound to the key of its authorization request).
///
/// # Errors
///
/// [`GatewayError::LoginRejected`] when the ring key that made it is gone (a clear page;
/// the user starts again) or the transaction names an algorithm that cannot be generated.
pub fn for_callback(
    keys: &KeyRing,
    tx: &LoginTransaction,
) -> Result<Option<DpopKey>, GatewayError> {
    let Some(reference) = &tx.dpop_key else {
        return Ok(None);
    };
    let gone = || {
        GatewayError::LoginRejected(
            "The sign-in attempt can no longer be completed (its key was rotated out). Please start again.".into(),
        )
    };
    let alg: SigningAlg = reference.alg.parse().map_err(|_| gone())?;
    let seed = keys
        .derive_with(&reference.kid, PURPOSE, &input(&reference.alg, tx))
        .ok_or_else(gone)?;
    DpopKey::from_seed(alg, &seed).map(Some).map_err(|_| gone())
}

/// The tokens of a new session, with its own key when it has one.
pub fn bind(tokens: UserTokens, key: Option<&DpopKey>) -> UserTokens {
    match key {
        Some(key) => tokens.with_dpop_key(key),
        None => tokens,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::session::Key;

    fn ring(ids: &[&str]) -> KeyRing {
        KeyRing::new(
            ids.iter()
                .map(|id| Key::parse(&Key::generate_spec(id)).unwrap())
                .collect(),
        )
        .unwrap()
    }

    fn for_login(
        alg: Option<SigningAlg>,
        keys: &KeyRing,
        tx: &mut LoginTransaction,
    ) -> Result<Option<DpopKey>, GatewayError> {
        make(alg, keys, tx)
    }

    #[test]
    fn the_callback_makes_the_key_the_login_made_and_logins_differ() {
        for alg in [SigningAlg::ES256, SigningAlg::EdDSA] {
            let keys = ring(&["k1"]);
            let s = Some(alg);
            let mut tx = LoginTransaction::new("/".into(), false, 0);
            let made = for_login(s, &keys, &mut tx).unwrap().unwrap();
            assert_eq!(made.alg(), alg);
            let again = for_callback(&keys, &tx).unwrap().unwrap();
            assert_eq!(made.thumbprint(), again.thumbprint());
            let mut other = LoginTransaction::new("/".into(), false, 0);
            let second = for_login(s, &keys, &mut other).unwrap().unwrap();
            assert_ne!(made.thumbprint(), second.thumbprint(), "a key per login");
        }
    }

    #[test]
    fn the_state_alone_does_not_determine_the_key() {
        let keys = ring(&["k1"]);
        let mut a = LoginTransaction::new("/".into(), false, 0);
        let mut b = a.clone();
        b.pkce_verifier = "another-verifier".into();
        let ka = for_login(Some(SigningAlg::ES256), &keys, &mut a)
            .unwrap()
            .unwrap();
        let kb = for_login(Some(SigningAlg::ES256), &keys, &mut b)
            .unwrap()
            .unwrap();
        assert_eq!(a.state, b.state);
        assert_ne!(ka.thumbprint(), kb.thumbprint());
    }

    #[test]
    fn the_transaction_carries_no_key_material() {
        let keys = ring(&["k1"]);
        let mut tx = LoginTransaction::new("/".into(), false, 0);
        let key = for_login(Some(SigningAlg::ES256), &keys, &mut tx)
            .unwrap()
            .unwrap();
        let jwk: serde_json::Value =
            serde_json::from_str(key.private_jwk().expose_secret()).unwrap();
        let d = jwk["d"].as_str().unwrap();
        let serialized = serde_json::to_string(&tx).unwrap();
        assert!(!serialized.contains(d));
        assert!(serialized.contains(r#""dpop_key":{"kid":"k1","alg":"ES256"}"#));
    }

    #[test]
    fn one_gateway_key_records_nothing() {
        let keys = ring(&["k1"]);
        let mut tx = LoginTransaction::new("/".into(), false, 0);
        assert!(for_login(None, &keys, &mut tx).unwrap().is_none());
        assert!(tx.dpop_key.is_none());
        assert!(for_callback(&keys, &tx).unwrap().is_none());
        // A transaction from before this field existed reads as "no session key".
        let old = r#"{"state":"s","nonce":"n","pkce_verifier":"v","return_url":"/","silent":false,"created":0}"#;
        let old: LoginTransaction = serde_json::from_str(old).unwrap();
        assert!(for_callback(&keys, &old).unwrap().is_none());
    }

    #[test]
    fn a_rotated_ring_still_completes_the_login_and_a_removed_key_fails_clearly() {
        let k1 = Key::generate_spec("k1");
        let keys = KeyRing::new(vec![Key::parse(&k1).unwrap()]).unwrap();
        let mut tx = LoginTransaction::new("/".into(), false, 0);
        let made = for_login(Some(SigningAlg::ES256), &keys, &mut tx)
            .unwrap()
            .unwrap();
        let rotated = KeyRing::new(vec![
            Key::parse(&Key::generate_spec("k2")).unwrap(),
            Key::parse(&k1).unwrap(),
        ])
        .unwrap();
        assert_eq!(
            for_callback(&rotated, &tx).unwrap().unwrap().thumbprint(),
            made.thumbprint()
        );
        let removed = ring(&["k2"]);
        assert!(matches!(
            for_callback(&removed, &tx),
            Err(GatewayError::LoginRejected(_))
        ));
    }
}
