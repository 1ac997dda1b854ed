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
const NONCE_LEN: usize = 24;

/// A 256-bit key with its id. `Debug` never shows the key.
#[derive(Clone)]
pub struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// `id` is 1–64 characters of `[A-Za-z0-9._-]`; `material` is 32 bytes.
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
        Ok(Self {
            id: id.to_owned(),
            cipher,
        })
    }

    /// Parses `id:base64(32 bytes)`.
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

    pub fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed data is malformed")]
    Malformed,
    #[error("sealed with unknown key {0:?}")]
    UnknownKey(String),
    #[error("sealed data failed authentication")]
    Forged,
}

/// Current key first; all keys decrypt.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    /// The first key is the current one. Duplicate ids are refused.
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

    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

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
