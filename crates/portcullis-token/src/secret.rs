//! Secret newtypes: they redact themselves in `Debug`, have no `Display`, and give their
//! value only through an explicit accessor, so a token cannot slip into a log line by accident.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A secret string (token, client secret). `Debug` prints a redaction marker only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value (token, client secret, key text).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret value. Call sites are easy to grep for.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
    /// A short, non-reversible fingerprint for log correlation (first 8 hex chars of SHA-256).
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}
impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("eyJhbGciOi.super-secret");
        assert!(!format!("{s:?}").contains("super-secret"));
        assert_eq!(s.fingerprint().len(), 8);
    }
}
