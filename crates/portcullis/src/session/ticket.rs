//! The encrypted part of a session: claims and tokens.

use portcullis_token::UserTokens;
use serde::{Deserialize, Serialize};

/// One claim of the session, in the order the IdP gave them. Multi-valued claims repeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// The claim name (`type` in the serialized ticket, as in Duende.BFF's `/bff/user`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The claim value as the IdP sent it (string, number, boolean or JSON structure).
    pub value: serde_json::Value,
}

/// Everything the gateway knows about a logged-in user. Serialized, then sealed with the key
/// ring before it reaches the store.
///
/// # Stored format
///
/// The ticket is serialized as a JSON object (`serde_json`; field names as below, `kind`
/// as `type`) and sealed with [`KeyRing::seal`](super::KeyRing::seal) with associated data
/// `b"portcullis.ticket.v1:"` followed by the session key, so a ticket only opens under the
/// session key it was written for. The sealed bytes are the v1 blob documented on
/// [`KeyRing::seal`](super::KeyRing::seal): `0x01`, key-id length, key id, 24-byte nonce,
/// ciphertext with a 16-byte tag. Both layers are a compatibility surface: tickets written by
/// one version (or node) must open in the next. New fields need `#[serde(default)]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ticket {
    /// Subject: the `sub` claim of the ID token (OIDC Core §2).
    pub sub: String,
    /// The IdP session id: the `sid` claim of the ID token, if any (OIDC Front/Back-Channel
    /// Logout; back-channel logout may name a session by `sid` alone).
    pub sid: Option<String>,
    /// The user's claims, in IdP order; multi-valued claims repeat.
    pub claims: Vec<Claim>,
    /// OIDC Session Management `session_state`, if the IdP returned one.
    #[serde(default)]
    pub session_state: Option<String>,
    /// The user's access, refresh and ID tokens with their expiry.
    pub tokens: UserTokens,
}
