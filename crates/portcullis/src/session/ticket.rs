//! The encrypted part of a session: claims and tokens.

use portcullis_token::UserTokens;
use serde::{Deserialize, Serialize};

/// One claim of the session, in the order the IdP gave them. Multi-valued claims repeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: serde_json::Value,
}

/// Everything the gateway knows about a logged-in user. Serialized, then sealed with the key
/// ring before it reaches the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ticket {
    pub sub: String,
    pub sid: Option<String>,
    pub claims: Vec<Claim>,
    /// OIDC Session Management `session_state`, if the IdP returned one.
    #[serde(default)]
    pub session_state: Option<String>,
    pub tokens: UserTokens,
}
