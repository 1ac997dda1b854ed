//! The key ring that encrypts session tickets and login transactions.
//!
//! XChaCha20-Poly1305 (192-bit random nonces, so random nonces are safe at any volume) under
//! a ring of 256-bit keys: the current key encrypts, every key in the ring decrypts, so keys
//! rotate without logging anyone out. Each sealed blob names its key id. The associated data
//! binds a blob to its purpose and record (a ticket copied onto another session key does not
//! open).
//!
//! Single node: the binary generates a key file on first start. Several nodes: every node
//! gets the same keys from configuration; rotation = add a new current key, keep the old ones
//! until every session sealed with them has expired.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const FORMAT_V1: u8 = 1;
/// Label of the derived PRF key (see [`KeyRing::derive`]).
const PRF_LABEL: &[u8] = b"portcullis.keyring.prf.v1";
const NONCE_LEN: usize = 24;

/// A 256-bit key with its id. `Debug` never shows the key.
#[derive(Clone)]
pub struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
    /// HMAC-SHA256 key for [`KeyRing::derive`], itself derived from the material, so the
    /// AEAD key is never used with a second primitive.
    prf: ring::hmac::Key,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Builds a key from its id and raw material.
    ///
    /// `id` is 1–64 characters of `[A-Za-z0-9._-]` (it is written into every sealed blob);
    /// `material` is 32 bytes.
    ///
    /// # Errors
    ///
    /// A human-readable message (naming the id, never the material) if the id or the
    /// material length is invalid.
    pub fn new(id: &str, material: &[u8]) -> Result<Self, String> {
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!(
                "key id {id:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"
            ));
        }
        if material.len() != 32 {
            return Err(format!(
                "key {id:?} must be 32 bytes, got {}",
                material.len()
            ));
        }
        let cipher = XChaCha20Poly1305::new_from_slice(material)
            .map_err(|_| format!("key {id:?} must be 32 bytes"))?;
        let prf = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, material),
            PRF_LABEL,
        );
        Ok(Self {
            id: id.to_owned(),
            cipher,
            prf: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, prf.as_ref()),
        })
    }

    /// Parses a key spec `id:base64(32 bytes)` (standard base64 alphabet, padded; surrounding
    /// whitespace after the colon is ignored).
    ///
    /// # Errors
    ///
    /// A message if there is no `:`, the base64 does not decode, or [`Key::new`] refuses the
    /// id or material.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (id, b64) = spec
            .split_once(':')
            .ok_or_else(|| "a key must look like <id>:<base64 of 32 bytes>".to_owned())?;
        let material = STANDARD
            .decode(b64.trim())
            .map_err(|_| format!("key {id:?} is not valid base64"))?;
        Self::new(id, &material)
    }

    /// A fresh random key spec `id:base64`, for `portcullis keys generate`.
    pub fn generate_spec(id: &str) -> String {
        let material: [u8; 32] = rand::random();
        format!("{id}:{}", STANDARD.encode(material))
    }

    /// The key id, as written into every blob this key seals.
    pub fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
/// Why [`KeyRing::open`] refused a sealed blob.
///
/// The gateway treats every variant the same way (the blob is unusable: a session ticket is
/// stale, a login transaction is refused); the variants exist for logs and tests.
pub enum SealError {
    #[error("sealed data is malformed")]
    /// The blob is not a v1 sealed blob: empty, wrong format byte, shorter than
    /// `2 + id_len + 24 + 16` bytes, or a key id that is not UTF-8.
    Malformed,
    #[error("sealed with unknown key {0:?}")]
    /// The blob names a key id that is not in the ring (the key was removed, or the blob was
    /// sealed by another deployment). Carries the id (never key material).
    UnknownKey(String),
    #[error("sealed data failed authentication")]
    /// The Poly1305 tag does not verify: the ciphertext, nonce or key id was altered, the key
    /// material differs, or the associated data does not match the one used to seal.
    Forged,
}

/// Current key first; all keys decrypt.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    /// The first key is the current one (it seals); all keys open.
    ///
    /// # Errors
    ///
    /// A message if `keys` is empty or two keys share an id.
    pub fn new(keys: Vec<Key>) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("the key ring needs at least one key".into());
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(format!("key id {:?} appears twice", k.id));
            }
        }
        Ok(Self { keys })
    }

    /// Id of the current key: the one [`seal`](Self::seal) uses.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// 256 bits that only holders of the ring can compute from `purpose` and `input`, and the
    /// id of the key that made them (the current one); [`derive_with`](Self::derive_with)
    /// makes the same bits again with that id, also after a rotation.
    ///
    /// HMAC-SHA256 (RFC 2104) of `purpose`, a zero byte and `input`, under a key derived
    /// from the ring key's material (HMAC-SHA256 of the material over a fixed label), never
    /// the AEAD key itself. `purpose` separates uses (e.g. `b"portcullis.dpop.session-key.v1"`).
    /// Used to re-create a secret at a later request without storing it or handing it to the
    /// browser, e.g. the DPoP key of a login between the authorization request and the
    /// callback.
    pub fn derive(&self, purpose: &[u8], input: &[u8]) -> (&str, [u8; 32]) {
        let key = &self.keys[0];
        (&key.id, prf(key, purpose, input))
    }

    /// [`derive`](Self::derive) with the ring key `key_id`; `None` when the ring no longer
    /// has it.
    pub fn derive_with(&self, key_id: &str, purpose: &[u8], input: &[u8]) -> Option<[u8; 32]> {
        let key = self.keys.iter().find(|k| k.id == key_id)?;
        Some(prf(key, purpose, input))
    }

    /// Encrypts `plaintext` under the current key with a fresh random 24-byte nonce, binding
    /// `aad` (associated data, authenticated but not stored in the blob).
    ///
    /// # Sealed blob format (v1)
    ///
    /// This byte layout is a compatibility surface: blobs are persisted in session stores and
    /// cookies, and every node in a deployment must read what the others wrote.
    ///
    /// | offset | length | content |
    /// |---|---|---|
    /// | 0 | 1 | format version, `0x01` |
    /// | 1 | 1 | `id_len`: length of the key id in bytes (1–64) |
    /// | 2 | `id_len` | key id, ASCII `[A-Za-z0-9._-]` |
    /// | 2 + `id_len` | 24 | XChaCha20 nonce (random) |
    /// | 26 + `id_len` | rest | XChaCha20-Poly1305 ciphertext of `plaintext`, followed by the 16-byte Poly1305 tag |
    ///
    /// The key id and nonce are not covered by the associated data, but a changed key id selects
    /// another key and a changed nonce breaks the tag, so either is detected by [`open`](Self::open).
    /// Callers pass a purpose-specific `aad` (for session tickets `b"portcullis.ticket.v1:"`
    /// followed by the session key; for login transactions and logout state a fixed purpose
    /// string), so a blob only opens for the purpose and record it was sealed for.
    ///
    /// Infallible in practice: encryption only fails for plaintexts over ~256 GiB, in which case
    /// the ciphertext part is empty and [`open`](Self::open) will report the blob as forged.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = XNonce::from_slice(&nonce_bytes);
        // Encryption with a valid key and nonce length only fails for inputs over ~256 GiB.
        let ciphertext = key
            .cipher
            .encrypt(
                nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(2 + key.id.len() + NONCE_LEN + ciphertext.len());
        out.push(FORMAT_V1);
        out.push(key.id.len() as u8);
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Decrypts a blob produced by [`seal`](Self::seal) (by this ring or any ring sharing the
    /// key named in the blob), checking it against `aad`. Returns the plaintext.
    ///
    /// # Errors
    ///
    /// - [`SealError::Malformed`] if the blob does not follow the v1 layout documented on
    ///   [`seal`](Self::seal);
    /// - [`SealError::UnknownKey`] if the named key id is not in the ring;
    /// - [`SealError::Forged`] if authentication fails (tampering, wrong key material, or a
    ///   different `aad`).
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&format, rest) = sealed.split_first().ok_or(SealError::Malformed)?;
        if format != FORMAT_V1 {
            return Err(SealError::Malformed);
        }
        let (&id_len, rest) = rest.split_first().ok_or(SealError::Malformed)?;
        let id_len = id_len as usize;
        if rest.len() < id_len + NONCE_LEN + 16 {
            return Err(SealError::Malformed);
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let id = std::str::from_utf8(id).map_err(|_| SealError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        key.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| SealError::Forged)
    }
}

fn prf(key: &Key, purpose: &[u8], input: &[u8]) -> [u8; 32] {
    let mut ctx = ring::hmac::Context::with_key(&key.prf);
    ctx.update(purpose);
    ctx.update(&[0]);
    ctx.update(input);
    let mut out = [0; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[&str]) -> KeyRing {
        KeyRing::new(
            ids.iter()
                .map(|id| Key::parse(&Key::generate_spec(id)).unwrap())
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_aad_binding() {
        let r = ring(&["k1"]);
        let sealed = r.seal(b"ticket", b"session-a");
        assert_eq!(r.open(&sealed, b"session-a").unwrap(), b"ticket");
        assert_eq!(r.open(&sealed, b"session-b"), Err(SealError::Forged));
    }

    #[test]
    fn tampering_is_detected() {
        let r = ring(&["k1"]);
        let mut sealed = r.seal(b"ticket", b"");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(r.open(&sealed, b""), Err(SealError::Forged));
        assert_eq!(r.open(&[], b""), Err(SealError::Malformed));
        assert_eq!(r.open(&[1, 200, 1], b""), Err(SealError::Malformed));
    }

    #[test]
    fn derived_secrets_repeat_per_key_and_input_and_survive_rotation() {
        let old = ring(&["k1"]);
        let (id, a) = old.derive(b"purpose", b"state-1");
        assert_eq!(id, "k1");
        assert_eq!(old.derive(b"purpose", b"state-1").1, a);
        assert_ne!(old.derive(b"purpose", b"state-2").1, a);
        assert_ne!(old.derive(b"other", b"state-1").1, a);
        // Purpose and input are separated: ("ab", "c") is not ("a", "bc").
        assert_ne!(old.derive(b"ab", b"c").1, old.derive(b"a", b"bc").1);
        let k2 = Key::parse(&Key::generate_spec("k2")).unwrap();
        let rotated = KeyRing::new(vec![k2, old.keys[0].clone()]).unwrap();
        assert_ne!(rotated.derive(b"purpose", b"state-1").1, a);
        assert_eq!(rotated.derive_with("k1", b"purpose", b"state-1"), Some(a));
        assert_eq!(rotated.derive_with("gone", b"purpose", b"state-1"), None);
        // Another deployment's ring with the same key id derives something else.
        assert_ne!(ring(&["k1"]).derive(b"purpose", b"state-1").1, a);
    }

    #[test]
    fn rotation_keeps_old_blobs_readable() {
        let old = ring(&["k1"]);
        let sealed = old.seal(b"t", b"");
        let k1 = old.keys[0].clone();
        let k2 = Key::parse(&Key::generate_spec("k2")).unwrap();
        let rotated = KeyRing::new(vec![k2, k1]).unwrap();
        assert_eq!(rotated.open(&sealed, b"").unwrap(), b"t");
        assert_eq!(rotated.current_id(), "k2");
        let other = ring(&["k3"]);
        assert!(matches!(
            other.open(&sealed, b""),
            Err(SealError::UnknownKey(_))
        ));
    }

    #[test]
    fn bad_key_specs_are_refused() {
        assert!(Key::parse("nokey").is_err());
        assert!(Key::parse("k1:not-base64!").is_err());
        assert!(Key::parse("k1:AAAA").is_err());
        assert!(Key::parse("bad id:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_err());
        assert!(KeyRing::new(vec![]).is_err());
        let k = Key::parse(&Key::generate_spec("k")).unwrap();
        assert!(KeyRing::new(vec![k.clone(), k]).is_err());
    }

    #[test]
    fn debug_hides_material() {
        let spec = Key::generate_spec("k1");
        let k = Key::parse(&spec).unwrap();
        let b64 = spec.split_once(':').unwrap().1;
        assert!(!format!("{k:?}").contains(b64));
    }
}
