//! Token values: what a token endpoint answers ([`TokenResponse`]), what a session stores
//! ([`UserTokens`], [`AccessToken`]) and what a token request asks for ([`TokenParams`]).
//!
//! [`UserTokens`] is serialized into the gateway's encrypted session ticket, so its serde form
//! is a compatibility surface: new fields are added with `#[serde(default)]`.
//!
//! Refresh timing lives here ([`AccessToken::needs_refresh`]) because it depends only on the
//! token: the refresh buffer is capped at half the token's issued lifetime, so a token that
//! lives 30 s with a 60 s buffer is refreshed after 15 s instead of on every call.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Secret, TokenError};

/// The `token_type` of an access token, parsed case-insensitively (IdPs answer `bearer`,
/// `Bearer`, `DPoP`, `dpop`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum TokenType {
    #[default]
    /// `Bearer` (RFC 6750). Also the reading of a missing or `null` `token_type`.
    Bearer,
    /// `DPoP` (RFC 9449): the token is sender-constrained and needs a DPoP proof.
    DPoP,
    /// Any other type, spelled as the IdP sent it.
    Other(String),
}

impl TokenType {
    /// Parses a `token_type` value case-insensitively; unknown values become [`Self::Other`].
    pub fn parse(s: &str) -> Self {
        if s.eq_ignore_ascii_case("bearer") {
            Self::Bearer
        } else if s.eq_ignore_ascii_case("dpop") {
            Self::DPoP
        } else {
            Self::Other(s.to_owned())
        }
    }

    /// The canonical spelling, as used in the `Authorization` header scheme.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Bearer => "Bearer",
            Self::DPoP => "DPoP",
            Self::Other(s) => s,
        }
    }
}

impl Serialize for TokenType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TokenType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A missing or null token_type is read as Bearer: RFC 6749 requires the field, but
        // rejecting a token for its absence would gain nothing.
        Ok(Option::<String>::deserialize(d)?.map_or(Self::Bearer, |s| Self::parse(&s)))
    }
}

/// An access token as stored in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessToken {
    /// The access token itself (redacted in `Debug`).
    pub value: Secret,
    #[serde(default)]
    /// Its `token_type` (`Bearer` when the IdP omitted it).
    pub token_type: TokenType,
    /// Unix seconds; `None` when the IdP gave no `expires_in` (treated as valid until an API
    /// answers 401).
    pub expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Granted `scope` (space-separated), when the IdP returned one or it was carried over from
    /// the request (RFC 6749 §5.1: omitted when equal to the requested scope).
    pub scope: Option<String>,
    /// Unix seconds when the token was received; with `expires_at` it gives the issued
    /// lifetime that caps the refresh buffer. `None` for tokens stored before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<i64>,
}

impl AccessToken {
    /// Build from a token response received at `now` (unix seconds).
    pub fn from_response(resp: &TokenResponse, now: i64) -> Self {
        Self {
            value: resp.access_token.clone(),
            token_type: resp.token_type.clone(),
            expires_at: resp.expires_in.map(|secs| now.saturating_add(secs.max(0))),
            scope: resp.scope.clone(),
            issued_at: Some(now),
        }
    }

    /// Issued lifetime in seconds, when known.
    pub fn lifetime(&self) -> Option<i64> {
        Some(self.expires_at? - self.issued_at?).map(|l| l.max(0))
    }

    /// The buffer actually applied: `buffer`, but at most half the issued lifetime.
    pub fn effective_buffer(&self, buffer: Duration) -> i64 {
        let buffer = i64::try_from(buffer.as_secs()).unwrap_or(i64::MAX);
        match self.lifetime() {
            Some(lifetime) => buffer.min(lifetime / 2),
            None => buffer,
        }
    }

    /// True when the token is expired or expires within the (capped) buffer.
    pub fn needs_refresh(&self, now: i64, buffer: Duration) -> bool {
        match self.expires_at {
            None => false,
            Some(exp) => now.saturating_add(self.effective_buffer(buffer)) >= exp,
        }
    }

    /// True when the token is past its expiry (no buffer).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|exp| now >= exp)
    }
}

/// The tokens of one user session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserTokens {
    /// The main access token (default resource and scope).
    pub access_token: AccessToken,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The refresh token (RFC 6749 §6), if the IdP issued one (empty values are dropped).
    pub refresh_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The OIDC ID token (compact JWS), kept as `id_token_hint` for logout.
    pub id_token: Option<Secret>,
    /// Per-resource/scope access tokens, keyed by [`TokenParams::cache_key`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_resource: BTreeMap<String, AccessToken>,
    /// The private JWK of the session's own DPoP key (RFC 9449), when it has one: its tokens
    /// are bound to it, its refreshes and resource requests are proven with it
    /// ([`UserTokenManager`](crate::UserTokenManager) uses it instead of the client's key).
    /// `None`: the client's key, if any (sessions stored before this field existed read as
    /// `None`). As secret as the tokens: the store must keep it encrypted (the gateway seals
    /// it in the session ticket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_key: Option<Secret>,
}

impl UserTokens {
    /// Tokens of a fresh session, from the code exchange received at `now`.
    pub fn from_response(resp: TokenResponse, now: i64) -> Result<Self, TokenError> {
        resp.validate()?;
        Ok(Self {
            access_token: AccessToken::from_response(&resp, now),
            refresh_token: non_empty(resp.refresh_token),
            id_token: non_empty(resp.id_token),
            by_resource: BTreeMap::new(),
            dpop_key: None,
        })
    }

    /// The same tokens, bound to the session's own DPoP `key` (kept as its private JWK).
    pub fn with_dpop_key(mut self, key: &crate::DpopKey) -> Self {
        self.dpop_key = Some(key.private_jwk().clone());
        self
    }

    /// The access token for `params`: the main one for default params, else the per-resource one.
    pub fn token_for(&self, params: &TokenParams) -> Option<&AccessToken> {
        if params.is_default() {
            Some(&self.access_token)
        } else {
            self.by_resource.get(&params.cache_key())
        }
    }

    /// Apply a refresh response obtained for `params`: the access token for `params` is
    /// replaced; refresh and ID tokens are replaced only when the response carries new ones.
    /// Returns the new access token.
    pub(crate) fn apply_refresh(
        &mut self,
        params: &TokenParams,
        resp: &TokenResponse,
        now: i64,
    ) -> AccessToken {
        let mut token = AccessToken::from_response(resp, now);
        if token.scope.is_none() {
            // RFC 6749 §5.1: scope is omitted when it equals the requested one.
            token.scope = match self.token_for(params) {
                Some(old) => old.scope.clone(),
                None => params.scope.clone(),
            };
        }
        if params.is_default() {
            self.access_token = token.clone();
        } else {
            self.by_resource.insert(params.cache_key(), token.clone());
        }
        if let Some(rt) = non_empty(resp.refresh_token.clone()) {
            self.refresh_token = Some(rt);
        }
        if let Some(id) = non_empty(resp.id_token.clone()) {
            self.id_token = Some(id);
        }
        token
    }
}

fn non_empty(s: Option<Secret>) -> Option<Secret> {
    s.filter(|s| !s.expose_secret().is_empty())
}

/// A successful token endpoint response (RFC 6749 §5.1, RFC 8693 §2.2.1).
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: Secret,
    #[serde(default)]
    /// `token_type` (`Bearer` when missing or `null`).
    pub token_type: TokenType,
    /// Seconds; accepted as a JSON number or numeric string (some IdPs send `"3600"`).
    #[serde(default, deserialize_with = "de_expires_in")]
    pub expires_in: Option<i64>,
    /// A refresh token (RFC 6749 §5.1, §6), if issued.
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// An OIDC ID token (OIDC Core §3.1.3.3), if issued.
    #[serde(default)]
    pub id_token: Option<Secret>,
    /// Granted `scope`; absent when equal to the requested one (RFC 6749 §5.1).
    #[serde(default)]
    pub scope: Option<String>,
    /// Every other member (`issued_token_type`, `refresh_expires_in`, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl TokenResponse {
    /// RFC 8693 `issued_token_type`, when present.
    pub fn issued_token_type(&self) -> Option<&str> {
        self.extra.get("issued_token_type").and_then(|v| v.as_str())
    }

    /// Checks that make the access token usable in an `Authorization` header.
    pub(crate) fn validate(&self) -> Result<(), TokenError> {
        let value = self.access_token.expose_secret();
        if value.is_empty() {
            return Err(TokenError::Malformed("empty access_token".into()));
        }
        if !is_header_safe(value) {
            return Err(TokenError::Malformed(
                "access_token contains characters not allowed in an HTTP header".into(),
            ));
        }
        if let TokenType::Other(t) = &self.token_type {
            if !is_header_safe(t) {
                return Err(TokenError::Malformed(
                    "token_type is not a valid auth scheme".into(),
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `extra` may carry anything an IdP chose to add: show its member names only.
        f.debug_struct("TokenResponse")
            .field("access_token", &self.access_token)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token)
            .field("id_token", &self.id_token)
            .field("scope", &self.scope)
            .field("extra", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Visible ASCII without spaces: safe in `Authorization: <scheme> <token>`.
pub(crate) fn is_header_safe(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn de_expires_in<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Float(f64),
        Str(String),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::Int(i)) => Some(i),
        // Truncation is intended: a fractional second does not matter for refresh timing.
        Some(Raw::Float(f)) if f.is_finite() => Some(f as i64),
        Some(Raw::Float(_)) => return Err(serde::de::Error::custom("expires_in is not finite")),
        Some(Raw::Str(s)) => Some(
            s.trim()
                .parse()
                .map_err(|_| serde::de::Error::custom("expires_in is not a number"))?,
        ),
    })
}

/// What to ask the token endpoint for, on top of the grant itself.
#[derive(Debug, Default, Clone, Hash, Eq, PartialEq, Serialize, Deserialize)]
pub struct TokenParams {
    /// RFC 8707 `resource` indicator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// `scope` to request (space-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Additional form fields. Protocol fields (`grant_type`, `client_id`, `scope`, ...) are
    /// rejected when a request is built.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl TokenParams {
    /// Sets the RFC 8707 `resource`.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }
    /// Sets the `scope`.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
    /// Adds an extra form field (protocol fields are refused when the request is built,
    /// with [`TokenError::InvalidParams`]).
    pub fn with_extra(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(name.into(), value.into());
        self
    }

    /// No resource, no scope, no extra parameters: the session's main access token.
    pub fn is_default(&self) -> bool {
        self.resource.is_none() && self.scope.is_none() && self.extra.is_empty()
    }

    /// A stable, unambiguous encoding of every field (length-prefixed, so no value can
    /// imitate a separator). Two params have the same key iff they are equal.
    pub fn cache_key(&self) -> String {
        fn field(out: &mut String, tag: char, value: Option<&str>) {
            match value {
                None => {
                    out.push(tag);
                    out.push('-');
                }
                Some(v) => {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "{tag}{}:{v}", v.len());
                }
            }
        }
        let mut out = String::new();
        field(&mut out, 'r', self.resource.as_deref());
        field(&mut out, 's', self.scope.as_deref());
        let _ = write!(out, "e{}:", self.extra.len());
        for (k, v) in &self.extra {
            let _ = write!(out, "{}:{k}{}:{v}", k.len(), v.len());
        }
        out
    }

    /// `self` over `defaults`: fields set here win; extra parameters are merged by name.
    pub fn merged_over(&self, defaults: &TokenParams) -> TokenParams {
        let mut extra = defaults.extra.clone();
        extra.extend(self.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        TokenParams {
            resource: self.resource.clone().or_else(|| defaults.resource.clone()),
            scope: self.scope.clone().or_else(|| defaults.scope.clone()),
            extra,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn resp(json: &str) -> TokenResponse {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn token_type_is_parsed_case_insensitively() {
        for (raw, want) in [
            ("bearer", TokenType::Bearer),
            ("BEARER", TokenType::Bearer),
            ("Bearer", TokenType::Bearer),
            ("dpop", TokenType::DPoP),
            ("DPoP", TokenType::DPoP),
            ("N_A", TokenType::Other("N_A".into())),
        ] {
            assert_eq!(TokenType::parse(raw), want, "{raw}");
            let r = resp(&format!(r#"{{"access_token":"a","token_type":"{raw}"}}"#));
            assert_eq!(r.token_type, want);
        }
        assert_eq!(
            resp(r#"{"access_token":"a"}"#).token_type,
            TokenType::Bearer
        );
    }

    #[test]
    fn expires_in_accepts_numbers_and_numeric_strings() {
        for (raw, want) in [
            ("3600", Some(3600)),
            ("\"3600\"", Some(3600)),
            ("3600.7", Some(3600)),
            ("null", None),
        ] {
            let r = resp(&format!(r#"{{"access_token":"a","expires_in":{raw}}}"#));
            assert_eq!(r.expires_in, want, "{raw}");
        }
        assert!(serde_json::from_str::<TokenResponse>(
            r#"{"access_token":"a","expires_in":"soon"}"#
        )
        .is_err());
    }

    #[test]
    fn response_debug_and_extra_never_show_values() {
        let r =
            resp(r#"{"access_token":"AT-SECRET","refresh_token":"RT-SECRET","custom":"X-SECRET"}"#);
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("SECRET"), "{dbg}");
        assert!(dbg.contains("custom"));
    }

    #[test]
    fn unusable_access_tokens_are_malformed() {
        for json in [
            r#"{"access_token":""}"#,
            r#"{"access_token":"a b"}"#,
            r#"{"access_token":"a\nb"}"#,
            r#"{"access_token":"a","token_type":"x y"}"#,
        ] {
            assert!(
                matches!(
                    UserTokens::from_response(resp(json), 0),
                    Err(TokenError::Malformed(_))
                ),
                "{json}"
            );
        }
    }

    #[test]
    fn lifetime_shorter_than_buffer_caps_the_buffer_at_half_the_lifetime() {
        let t = AccessToken::from_response(&resp(r#"{"access_token":"a","expires_in":30}"#), 1000);
        let buffer = Duration::from_secs(60);
        assert_eq!(t.effective_buffer(buffer), 15);
        assert!(!t.needs_refresh(1000, buffer));
        assert!(!t.needs_refresh(1014, buffer));
        assert!(t.needs_refresh(1015, buffer));
        // a long-lived token uses the full buffer
        let t = AccessToken::from_response(&resp(r#"{"access_token":"a","expires_in":3600}"#), 0);
        assert!(!t.needs_refresh(3539, buffer));
        assert!(t.needs_refresh(3540, buffer));
        // no expiry: valid
        let t = AccessToken::from_response(&resp(r#"{"access_token":"a"}"#), 0);
        assert!(!t.needs_refresh(i64::MAX / 2, buffer));
    }

    #[test]
    fn cache_key_is_unambiguous() {
        let p = |r: Option<&str>, s: Option<&str>, e: &[(&str, &str)]| TokenParams {
            resource: r.map(Into::into),
            scope: s.map(Into::into),
            extra: e
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let all = [
            p(None, None, &[]),
            p(Some(""), None, &[]),
            p(None, Some(""), &[]),
            p(Some("a"), None, &[]),
            p(None, Some("a"), &[]),
            p(Some("a s1:b"), None, &[]),
            p(Some("a"), Some("b"), &[]),
            p(None, None, &[("a", "b")]),
            p(None, None, &[("a", "b"), ("c", "d")]),
            p(None, None, &[("a", "b1:c1:d")]),
            p(None, None, &[("ab", "")]),
            p(None, None, &[("a", "b")]).merged_over(&p(None, Some("x"), &[])),
        ];
        let keys: std::collections::HashSet<_> = all.iter().map(TokenParams::cache_key).collect();
        assert_eq!(keys.len(), all.len());
        assert_eq!(
            p(None, None, &[]).cache_key(),
            TokenParams::default().cache_key()
        );
        assert!(TokenParams::default().is_default());
        assert!(!p(Some(""), None, &[]).is_default());
    }

    #[test]
    fn merged_params_prefer_the_call_over_defaults() {
        let defaults = TokenParams::default()
            .with_scope("api.read")
            .with_extra("a", "1")
            .with_extra("b", "1");
        let call = TokenParams::default()
            .with_resource("urn:r")
            .with_extra("b", "2");
        let m = call.merged_over(&defaults);
        assert_eq!(m.scope.as_deref(), Some("api.read"));
        assert_eq!(m.resource.as_deref(), Some("urn:r"));
        assert_eq!(m.extra.get("a").map(String::as_str), Some("1"));
        assert_eq!(m.extra.get("b").map(String::as_str), Some("2"));
    }

    #[test]
    fn user_tokens_round_trip_and_old_tickets_still_parse() {
        let t = UserTokens::from_response(
            resp(r#"{"access_token":"a","token_type":"bearer","expires_in":60,"refresh_token":"r","id_token":"i"}"#),
            100,
        )
        .unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<UserTokens>(&json).unwrap(), t);
        let old = r#"{"access_token":{"value":"a","token_type":"DPoP","expires_at":5}}"#;
        let t: UserTokens = serde_json::from_str(old).unwrap();
        assert_eq!(t.access_token.token_type, TokenType::DPoP);
        assert_eq!(t.access_token.issued_at, None);
        assert!(t.by_resource.is_empty());
    }

    #[test]
    fn refresh_without_id_or_refresh_token_keeps_the_old_ones() {
        let mut t = UserTokens::from_response(
            resp(r#"{"access_token":"a1","expires_in":60,"refresh_token":"r1","id_token":"i1","scope":"openid api"}"#),
            0,
        )
        .unwrap();
        t.apply_refresh(
            &TokenParams::default(),
            &resp(r#"{"access_token":"a2","expires_in":60,"refresh_token":""}"#),
            50,
        );
        assert_eq!(t.access_token.value.expose_secret(), "a2");
        assert_eq!(t.access_token.scope.as_deref(), Some("openid api"));
        assert_eq!(
            t.refresh_token.as_ref().map(Secret::expose_secret),
            Some("r1")
        );
        assert_eq!(t.id_token.as_ref().map(Secret::expose_secret), Some("i1"));

        let params = TokenParams::default().with_resource("urn:api2");
        t.apply_refresh(
            &params,
            &resp(r#"{"access_token":"b1","expires_in":60,"refresh_token":"r2"}"#),
            60,
        );
        assert_eq!(t.access_token.value.expose_secret(), "a2");
        assert_eq!(
            t.token_for(&params).map(|a| a.value.expose_secret()),
            Some("b1")
        );
        assert_eq!(
            t.refresh_token.as_ref().map(Secret::expose_secret),
            Some("r2")
        );
    }
}
