//! Discovery and JWKS cache.
//!
//! Both documents come from a party we do not control, so they are read leniently (RFC 7517
//! §5, OpenID Connect Discovery 1.0 §3): a member of an unexpected JSON type, an unknown member
//! or a key the JOSE library cannot model is ignored (logged once), never a failed login. Only
//! what the gateway cannot work without is required: `issuer`, `authorization_endpoint`,
//! `token_endpoint` and `jwks_uri` in the discovery document, one usable key that matches the
//! token in the JWKS. Every body is read up to [`MAX_IDP_BODY`] bytes.
//!
//! JWKS refetch policy (the IdP rotates keys; an attacker sends tokens with random `kid`s):
//! - a `kid` not in the cached set triggers a refetch at once; concurrent requests share one
//!   fetch (single-flight: a request that arrived before a fetch started uses that fetch);
//! - fetches for unknown `kid`s are at least [`JWKS_MIN_INTERVAL`] apart: a request that finds
//!   the slot taken *waits* for it (a rotation never fails a login, it may wait up to that long);
//! - a `kid` still unknown after a fetch made for it is remembered for [`UNKNOWN_KID_TTL`]
//!   and fails at once without asking the IdP again;
//! - the set is also refetched when older than [`JWKS_MAX_AGE`]; if that fails, the stale set
//!   is used.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use crate::error::GatewayError;
use portcullis_token::SharedClock;

/// Largest body read from the IdP's discovery, JWKS and UserInfo endpoints (1 MiB, as for the
/// token endpoint). A larger answer is an [`GatewayError::IdpUnavailable`].
pub const MAX_IDP_BODY: usize = 1024 * 1024;

/// Minimum time between two JWKS fetches caused by unknown `kid`s.
pub const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How long a `kid` that a fresh JWKS did not contain fails without a refetch.
pub const UNKNOWN_KID_TTL: Duration = Duration::from_secs(60);

/// Age after which the cached JWKS is refetched even when every `kid` is known.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);

/// Most remembered unknown `kid`s (and warned-about keys): random `kid`s cannot grow memory.
const MAX_REMEMBERED_KIDS: usize = 1024;

/// The parts of the discovery document the gateway uses (OpenID Connect Discovery 1.0 §3).
///
/// Deserialising is lenient: the four required members must be strings; an optional member of
/// the wrong JSON type (or an endpoint that is not an absolute URL) reads as absent, and array
/// members keep only their string items, so an odd document never breaks a working login.
#[derive(Debug, Clone, Default)]
pub struct ProviderMetadata {
    /// The issuer identifier; must equal the configured one byte for byte.
    pub issuer: String,
    /// `authorization_endpoint` (required; OAuth 2.0 RFC 6749 §3.1): where the browser is sent to
    /// log in.
    pub authorization_endpoint: String,
    /// `token_endpoint` (required; RFC 6749 §3.2): code exchange, refresh, client credentials,
    /// token exchange.
    pub token_endpoint: String,
    /// `jwks_uri` (required; RFC 7517): the IdP's signing keys for ID and logout tokens.
    pub jwks_uri: String,
    /// `userinfo_endpoint` (OIDC Core §5.3), if advertised and an absolute URL.
    pub userinfo_endpoint: Option<String>,
    /// `end_session_endpoint` (OIDC RP-Initiated Logout 1.0), if advertised; without it logout
    /// ends only the local session.
    pub end_session_endpoint: Option<String>,
    /// `revocation_endpoint` (RFC 7009, advertised per RFC 8414), if any; without it the refresh
    /// token is not revoked at logout.
    pub revocation_endpoint: Option<String>,
    /// Signature algorithms of ID tokens (`RS256`, ...); empty when not advertised.
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// `prompt` values the IdP supports (e.g. `none` for silent login); `None` when not
    /// advertised.
    pub prompt_values_supported: Option<Vec<String>>,
    /// RFC 9207: the IdP sends `iss` on authorization responses.
    pub authorization_response_iss_parameter_supported: bool,
    /// RFC 8414 §2 / RFC 7636: PKCE methods; `None` when not advertised (many IdPs omit it).
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// `backchannel_logout_supported` (OIDC Back-Channel Logout 1.0 §2.1); `false` when absent.
    pub backchannel_logout_supported: bool,
    /// `pushed_authorization_request_endpoint` (RFC 9126 §5), if advertised.
    pub pushed_authorization_request_endpoint: Option<String>,
    /// `require_pushed_authorization_requests` (RFC 9126 §5): the IdP accepts authorization
    /// requests only through PAR; `false` when absent.
    pub require_pushed_authorization_requests: bool,
    /// `dpop_signing_alg_values_supported` (RFC 9449 §5.1), `None` when not advertised.
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
    /// `acr_values_supported` (OIDC Discovery §3): the authentication context classes the
    /// IdP can deliver; `None` when not advertised (then any `acr_values` is sent as asked).
    pub acr_values_supported: Option<Vec<String>>,
}

impl ProviderMetadata {
    /// Reads the document from parsed JSON. Errors name the first missing required member.
    pub fn from_json(doc: &Map<String, Value>) -> Result<Self, String> {
        let required = |name: &str| -> Result<String, String> {
            match doc.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(_) => Err(format!("member {name} is not a non-empty string")),
                None => Err(format!("member {name} is missing")),
            }
        };
        let endpoint = |name: &str| -> Option<String> {
            let s = doc.get(name)?.as_str()?;
            match url::Url::parse(s) {
                Ok(u) if u.has_host() => Some(s.to_owned()),
                _ => {
                    tracing::warn!(member = name, "discovery member is not a URL; ignored");
                    None
                }
            }
        };
        let strings = |name: &str| -> Option<Vec<String>> {
            match doc.get(name)? {
                Value::Array(items) => Some(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                ),
                _ => None,
            }
        };
        let flag = |name: &str| doc.get(name).and_then(Value::as_bool).unwrap_or(false);
        Ok(Self {
            issuer: required("issuer")?,
            authorization_endpoint: required("authorization_endpoint")?,
            token_endpoint: required("token_endpoint")?,
            jwks_uri: required("jwks_uri")?,
            userinfo_endpoint: endpoint("userinfo_endpoint"),
            end_session_endpoint: endpoint("end_session_endpoint"),
            revocation_endpoint: endpoint("revocation_endpoint"),
            id_token_signing_alg_values_supported: strings("id_token_signing_alg_values_supported")
                .unwrap_or_default(),
            prompt_values_supported: strings("prompt_values_supported"),
            authorization_response_iss_parameter_supported: flag(
                "authorization_response_iss_parameter_supported",
            ),
            code_challenge_methods_supported: strings("code_challenge_methods_supported"),
            backchannel_logout_supported: flag("backchannel_logout_supported"),
            pushed_authorization_request_endpoint: endpoint(
                "pushed_authorization_request_endpoint",
            ),
            require_pushed_authorization_requests: flag("require_pushed_authorization_requests"),
            dpop_signing_alg_values_supported: strings("dpop_signing_alg_values_supported"),
            acr_values_supported: strings("acr_values_supported"),
        })
    }
}

impl<'de> Deserialize<'de> for ProviderMetadata {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let doc = Map::<String, Value>::deserialize(d)?;
        Self::from_json(&doc).map_err(serde::de::Error::custom)
    }
}

/// One JWKS key the gateway can verify with.
#[derive(Clone)]
pub struct UsableKey {
    /// The parsed JWK (for its `kid`, `alg`, `use` and key type).
    pub jwk: Jwk,
    /// The verification key made from it.
    pub key: DecodingKey,
}

/// The usable keys of a JWKS document, in document order. Keys the gateway cannot use were
/// skipped while parsing (RFC 7517 §5).
#[derive(Clone, Default)]
pub struct KeySet {
    /// The usable keys, in document order.
    pub keys: Vec<UsableKey>,
}

impl KeySet {
    /// The keys with this `kid`.
    pub fn with_kid<'a>(&'a self, kid: &'a str) -> impl Iterator<Item = &'a UsableKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.jwk.common.key_id.as_deref() == Some(kid))
    }

    fn has(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(k) => self.with_kid(k).next().is_some(),
            None => !self.keys.is_empty(),
        }
    }

    /// Parses a JWKS document key by key. Returns the set and, for each key that was skipped,
    /// a label (its `kid`, or its position) with the reason. Fails only when the document is
    /// not a JSON object with a `keys` array.
    pub fn parse(body: &[u8]) -> Result<(KeySet, Vec<(String, String)>), String> {
        let doc: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
        let Some(items) = doc.get("keys").and_then(Value::as_array) else {
            return Err("no keys array".into());
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let label = item
                .get("kid")
                .and_then(Value::as_str)
                .map(|k| format!("kid {}", bounded(k)))
                .unwrap_or_else(|| format!("key #{i} (no kid)"));
            match usable(item) {
                Ok(k) => keys.push(k),
                Err(why) => skipped.push((label, why)),
            }
        }
        Ok((KeySet { keys }, skipped))
    }
}

/// At most 64 characters of an IdP-supplied label, for log lines.
fn bounded(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn usable(item: &Value) -> Result<UsableKey, String> {
    let jwk: Jwk = serde_json::from_value(item.clone()).map_err(|_| {
        let kty = item.get("kty").and_then(Value::as_str).unwrap_or("?");
        format!(
            "key type or parameters not supported (kty {})",
            bounded(kty)
        )
    })?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err("not a signature key (use)".into());
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) | AlgorithmParameters::OctetKeyPair(_) => {}
        AlgorithmParameters::EllipticCurve(ec)
            if matches!(ec.curve, EllipticCurve::P256 | EllipticCurve::P384) => {}
        AlgorithmParameters::EllipticCurve(_) => return Err("curve not supported".into()),
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are never used".into()),
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "key material unusable".to_owned())?;
    Ok(UsableKey { jwk, key })
}

struct Cached<T> {
    value: Arc<T>,
    fetched_at: i64,
}

struct CachedKeys {
    set: Arc<KeySet>,
    /// When the fetch that produced this set started.
    started: Instant,
    /// Its number in `Provider::jwks_fetches_started`.
    seq: u64,
}

/// Refetch bookkeeping, behind the single-flight lock.
#[derive(Default)]
struct Refetch {
    /// Start of the last fetch caused by an unknown `kid`.
    last_unknown_kid_fetch: Option<Instant>,
}

/// The identity provider: discovery document and keys, fetched lazily and cached.
pub struct Provider {
    issuer: String,
    http: reqwest::Client,
    clock: SharedClock,
    metadata: RwLock<Option<Cached<ProviderMetadata>>>,
    jwks: RwLock<Option<CachedKeys>>,
    /// Single-flight: one JWKS fetch at a time; waiting requests reuse its result.
    jwks_refetch: Mutex<Refetch>,
    /// JWKS fetches started so far: a request that arrived when this was `n` is answered by
    /// any fetch numbered above `n`.
    jwks_fetches_started: std::sync::atomic::AtomicU64,
    /// `kid`s a fresh fetch did not contain, until when they fail without a refetch.
    unknown_kids: std::sync::Mutex<HashMap<String, Instant>>,
    /// Skipped keys already logged (one `warn` per key, not per fetch).
    warned: std::sync::Mutex<HashSet<String>>,
    metadata_ttl: i64,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// A provider for `issuer` (compared byte for byte with discovery and tokens). Nothing is
    /// fetched until first use.
    pub fn new(issuer: String, http: reqwest::Client, clock: SharedClock) -> Self {
        Self {
            issuer,
            http,
            clock,
            metadata: RwLock::new(None),
            jwks: RwLock::new(None),
            jwks_refetch: Mutex::new(Refetch::default()),
            jwks_fetches_started: std::sync::atomic::AtomicU64::new(0),
            unknown_kids: std::sync::Mutex::new(HashMap::new()),
            warned: std::sync::Mutex::new(HashSet::new()),
            metadata_ttl: 3600,
        }
    }

    /// The configured issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The discovery document: cached for an hour; if a refresh fails, the stale copy is
    /// used (an IdP blip must not break logins in progress).
    ///
    /// Errors: [`GatewayError::IdpUnavailable`] / [`GatewayError::IdpTimeout`] when there is
    /// no cached copy and the fetch fails, the body is over [`MAX_IDP_BODY`], a required member
    /// is missing or the document names another issuer.
    pub async fn metadata(&self) -> Result<Arc<ProviderMetadata>, GatewayError> {
        let now = self.clock.now_unix();
        if let Some(c) = self.metadata.read().await.as_ref() {
            if now.saturating_sub(c.fetched_at) < self.metadata_ttl {
                return Ok(c.value.clone());
            }
        }
        let mut guard = self.metadata.write().await;
        if let Some(c) = guard.as_ref() {
            if now.saturating_sub(c.fetched_at) < self.metadata_ttl {
                return Ok(c.value.clone());
            }
        }
        match self.fetch_metadata().await {
            Ok(m) => {
                let value = Arc::new(m);
                *guard = Some(Cached {
                    value: value.clone(),
                    fetched_at: now,
                });
                Ok(value)
            }
            Err(e) => match guard.as_ref() {
                Some(c) => {
                    tracing::warn!(error = %e, "discovery refresh failed; using the cached document");
                    Ok(c.value.clone())
                }
                None => Err(e),
            },
        }
    }

    async fn fetch_metadata(&self) -> Result<ProviderMetadata, GatewayError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let body = self.get(&url, "discovery").await?;
        let doc: Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
            GatewayError::IdpUnavailable(format!("discovery document: invalid JSON: {e}"))
        })?;
        let m = ProviderMetadata::from_json(&doc)
            .map_err(|e| GatewayError::IdpUnavailable(format!("discovery document: {e}")))?;
        if m.issuer != self.issuer {
            return Err(GatewayError::IdpUnavailable(format!(
                "discovery document names issuer {:?}, configured {:?}",
                bounded(&m.issuer),
                self.issuer
            )));
        }
        check_pkce_support(&m);
        Ok(m)
    }

    /// GET `url` and read the body (at most [`MAX_IDP_BODY`]); non-2xx is an error.
    async fn get(&self, url: &str, what: &str) -> Result<Vec<u8>, GatewayError> {
        let span = tracing::debug_span!(
            "idp_fetch",
            otel.name = %format_args!("idp.{}", what.to_ascii_lowercase()),
            otel.kind = "client",
            server.address = url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)),
            http.response.status_code = tracing::field::Empty,
        );
        let resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .headers(span.in_scope(portcullis_token::trace_context::headers))
            .send()
            .instrument(span.clone())
            .await
            .map_err(map_reqwest)?;
        span.record("http.response.status_code", resp.status().as_u16());
        if !resp.status().is_success() {
            return Err(GatewayError::IdpUnavailable(format!(
                "{what} ({url}) answered {}",
                resp.status()
            )));
        }
        read_capped(resp, MAX_IDP_BODY, what).await
    }

    /// The usable keys, refetched when `kid` is not among them (see the module docs for the
    /// throttling). Callers pick the keys with the token's `kid`; an unknown `kid` that stays
    /// unknown yields a set without it (the caller's "no matching key").
    ///
    /// Errors: the IdP errors of [`Provider::metadata`] and of the JWKS fetch, when a fetch was
    /// needed and there is no usable cached set.
    pub async fn jwks_for(&self, kid: Option<&str>) -> Result<Arc<KeySet>, GatewayError> {
        let arrived = Instant::now();
        let arrived_seq = self.jwks_fetches_started.load(Ordering::SeqCst);
        if let Some(c) = self.jwks.read().await.as_ref() {
            let fresh = arrived.saturating_duration_since(c.started) < JWKS_MAX_AGE;
            if fresh && c.set.has(kid) {
                return Ok(c.set.clone());
            }
            if fresh && kid.is_some_and(|k| self.known_unknown(k, arrived)) {
                return Ok(c.set.clone());
            }
        }
        let mut refetch = self.jwks_refetch.lock().await;
        let now = Instant::now();
        let (stale, unknown_kid) = match self.jwks.read().await.as_ref() {
            Some(c) => {
                if c.set.has(kid) && now.saturating_duration_since(c.started) < JWKS_MAX_AGE {
                    return Ok(c.set.clone());
                }
                if c.seq > arrived_seq {
                    // A fetch that started after this request arrived did not have the kid.
                    if let Some(k) = kid {
                        self.remember_unknown(k, now);
                    }
                    return Ok(c.set.clone());
                }
                (Some(c.set.clone()), !c.set.has(kid))
            }
            None => (None, true),
        };
        if unknown_kid {
            if let Some(last) = refetch.last_unknown_kid_fetch {
                let next = last + JWKS_MIN_INTERVAL;
                if next > now {
                    tokio::time::sleep_until(next).await;
                }
            }
        }
        let started = Instant::now();
        let seq = self.jwks_fetches_started.fetch_add(1, Ordering::SeqCst) + 1;
        if unknown_kid {
            refetch.last_unknown_kid_fetch = Some(started);
        }
        let fetched = self.fetch_jwks().await;
        let set = match (fetched, stale) {
            (Ok(set), _) => {
                let set = Arc::new(set);
                *self.jwks.write().await = Some(CachedKeys {
                    set: set.clone(),
                    started,
                    seq,
                });
                set
            }
            (Err(e), Some(stale)) if !unknown_kid => {
                tracing::warn!(error = %e, "JWKS refresh failed; using the cached keys");
                stale
            }
            (Err(e), _) => return Err(e),
        };
        if let Some(k) = kid {
            if !set.has(Some(k)) {
                self.remember_unknown(k, Instant::now());
            }
        }
        Ok(set)
    }

    async fn fetch_jwks(&self) -> Result<KeySet, GatewayError> {
        let metadata = self.metadata().await?;
        let body = self.get(&metadata.jwks_uri, "JWKS").await?;
        let (set, skipped) = KeySet::parse(&body).map_err(|e| {
            GatewayError::IdpUnavailable(format!("JWKS ({}): {e}", metadata.jwks_uri))
        })?;
        if !skipped.is_empty() {
            let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
            for (label, why) in skipped {
                if warned.len() < MAX_REMEMBERED_KIDS && warned.insert(label.clone()) {
                    tracing::warn!(key = %label, reason = %why, "JWKS key skipped (RFC 7517 §5: keys we cannot use are ignored)");
                }
            }
        }
        tracing::debug!(keys = set.keys.len(), "JWKS fetched");
        Ok(set)
    }

    fn known_unknown(&self, kid: &str, now: Instant) -> bool {
        let map = self.unknown_kids.lock().unwrap_or_else(|p| p.into_inner());
        map.get(kid).is_some_and(|until| *until > now)
    }

    fn remember_unknown(&self, kid: &str, now: Instant) {
        let mut map = self.unknown_kids.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_REMEMBERED_KIDS {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_REMEMBERED_KIDS {
                map.clear();
            }
        }
        map.insert(kid.to_owned(), now + UNKNOWN_KID_TTL);
    }
}

/// RFC 7636 / RFC 9700 §2.1.1: the gateway always sends S256. An IdP that advertises PKCE
/// methods without S256 may ignore the challenge, which silently drops that protection: say so
/// at `error` level on every discovery fetch (once an hour). An IdP that advertises nothing is
/// fine (many omit the member).
fn check_pkce_support(m: &ProviderMetadata) {
    if let Some(methods) = &m.code_challenge_methods_supported {
        if !methods.iter().any(|x| x == "S256") {
            tracing::error!(
                advertised = ?methods.iter().map(|s| bounded(s)).collect::<Vec<_>>(),
                "the identity provider does not advertise PKCE S256 (code_challenge_methods_supported); \
                 logins go on with S256, but the IdP may not enforce it"
            );
        }
    }
}

/// Reads a response body of at most `limit` bytes, chunk by chunk (a body that is larger is
/// refused as soon as it passes the limit, whatever its `Content-Length` says).
///
/// Errors: [`GatewayError::IdpUnavailable`] naming `what` when the body is too large or the
/// connection fails, [`GatewayError::IdpTimeout`] on a timeout.
pub async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, GatewayError> {
    let too_large =
        || GatewayError::IdpUnavailable(format!("{what}: response body larger than {limit} bytes"));
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(map_reqwest)? {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Maps a reqwest error from an IdP call: a timeout is [`GatewayError::IdpTimeout`], anything
/// else [`GatewayError::IdpUnavailable`] (without the URL, which may carry parameters).
pub fn map_reqwest(e: reqwest::Error) -> GatewayError {
    if e.is_timeout() {
        GatewayError::IdpTimeout
    } else {
        GatewayError::IdpUnavailable(e.without_url().to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::oidc::test_idp::{ed_jwk, odd_keys, TestIdp};
    use portcullis_token::ManualClock;
    use serde_json::json;

    #[test]
    fn jwks_with_unmodelable_keys_keeps_the_usable_ones() {
        let mut keys = odd_keys();
        keys.insert(3, ed_jwk("good"));
        let body = serde_json::to_vec(&json!({ "keys": keys, "odd": {"x": 1} })).unwrap();
        let (set, skipped) = KeySet::parse(&body).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.with_kid("good").count(), 1);
        assert_eq!(skipped.len(), odd_keys().len());
        assert!(skipped.iter().any(|(label, _)| label == "kid p521"));
        assert!(KeySet::parse(b"{\"keys\": 5}").is_err());
        assert!(KeySet::parse(b"[]").is_err());
    }

    #[test]
    fn discovery_document_with_odd_optional_members_still_parses() {
        let doc = json!({
            "issuer": "https://idp", "authorization_endpoint": "https://idp/a",
            "token_endpoint": "https://idp/t", "jwks_uri": "https://idp/k",
            "userinfo_endpoint": 42, "end_session_endpoint": "not a url",
            "revocation_endpoint": "https://idp/r",
            "id_token_signing_alg_values_supported": "RS256",
            "prompt_values_supported": ["none", 3, "login"],
            "authorization_response_iss_parameter_supported": "true",
            "code_challenge_methods_supported": {"S256": true},
            "backchannel_logout_supported": true,
            "mtls_endpoint_aliases": [1, 2], "unknown": null
        });
        let m: ProviderMetadata = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(m.userinfo_endpoint, None);
        assert_eq!(m.end_session_endpoint, None);
        assert_eq!(m.revocation_endpoint.as_deref(), Some("https://idp/r"));
        assert!(m.id_token_signing_alg_values_supported.is_empty());
        assert_eq!(
            m.prompt_values_supported,
            Some(vec!["none".into(), "login".into()])
        );
        assert!(!m.authorization_response_iss_parameter_supported);
        assert_eq!(m.code_challenge_methods_supported, None);
        assert!(m.backchannel_logout_supported);
        for required in [
            "issuer",
            "authorization_endpoint",
            "token_endpoint",
            "jwks_uri",
        ] {
            let mut d = doc.clone();
            d.as_object_mut().unwrap().remove(required);
            let e = serde_json::from_value::<ProviderMetadata>(d).unwrap_err();
            assert!(e.to_string().contains(required), "{e}");
            let mut d = doc.clone();
            d[required] = json!(["x"]);
            assert!(serde_json::from_value::<ProviderMetadata>(d).is_err());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn key_rotation_within_throttle_window_does_not_fail_login() {
        let idp = TestIdp::start(vec![ed_jwk("a")]).await;
        let provider = idp.provider(&ManualClock::new(1_000));
        assert_eq!(provider.jwks_for(Some("a")).await.unwrap().keys.len(), 1);
        assert_eq!(idp.jwks_fetches(), 1);
        // rotation: "a" is gone, "b" is new; the next token names "b" right away
        idp.set_keys(vec![ed_jwk("b")]);
        let set = provider.jwks_for(Some("b")).await.unwrap();
        assert_eq!(set.with_kid("b").count(), 1);
        assert_eq!(idp.jwks_fetches(), 2);
        // and again at once: waits for the throttle slot instead of failing
        idp.set_keys(vec![ed_jwk("c")]);
        let before = Instant::now();
        let set = provider.jwks_for(Some("c")).await.unwrap();
        assert_eq!(set.with_kid("c").count(), 1);
        assert!(before.elapsed() <= JWKS_MIN_INTERVAL);
        assert_eq!(idp.jwks_fetches(), 3);
        // known kids never fetch
        provider.jwks_for(Some("c")).await.unwrap();
        assert_eq!(idp.jwks_fetches(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn random_kids_do_not_hammer_jwks() {
        let idp = TestIdp::start(vec![ed_jwk("a")]).await;
        let provider = Arc::new(idp.provider(&ManualClock::new(1_000)));
        provider.jwks_for(Some("a")).await.unwrap();
        assert_eq!(idp.jwks_fetches(), 1);
        // 50 concurrent requests with random kids share a few fetches (single-flight)
        let started = Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let p = provider.clone();
                tokio::spawn(async move { p.jwks_for(Some(&format!("random-{i}"))).await })
            })
            .collect();
        for t in tasks {
            let set = t.await.unwrap().unwrap();
            assert_eq!(set.keys.len(), 1);
        }
        let after_burst = idp.jwks_fetches();
        let slots = started.elapsed().as_secs() as usize + 2;
        assert!(
            after_burst - 1 <= slots,
            "{after_burst} fetches for 50 random kids in {:?}",
            started.elapsed()
        );
        // the same unknown kid again and again: no fetch until UNKNOWN_KID_TTL has passed
        for _ in 0..20 {
            provider.jwks_for(Some("random-7")).await.unwrap();
        }
        assert_eq!(idp.jwks_fetches(), after_burst);
        tokio::time::advance(UNKNOWN_KID_TTL + Duration::from_secs(1)).await;
        provider.jwks_for(Some("random-7")).await.unwrap();
        assert_eq!(idp.jwks_fetches(), after_burst + 1);
        // sequential distinct random kids: at most one fetch per JWKS_MIN_INTERVAL
        let started = Instant::now();
        let before = idp.jwks_fetches();
        for i in 0..10 {
            provider.jwks_for(Some(&format!("seq-{i}"))).await.unwrap();
        }
        let fetched = idp.jwks_fetches() - before;
        assert!(
            started.elapsed() >= JWKS_MIN_INTERVAL * (fetched as u32 - 1),
            "{fetched} fetches in {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jwks_older_than_max_age_is_refetched() {
        let idp = TestIdp::start(vec![ed_jwk("a")]).await;
        let provider = idp.provider(&ManualClock::new(1_000));
        provider.jwks_for(Some("a")).await.unwrap();
        tokio::time::advance(JWKS_MAX_AGE + Duration::from_secs(1)).await;
        idp.set_keys(vec![json!("garbage")]);
        // the refetch finds no usable key: the IdP removed "a", so "a" is no longer trusted
        let set = provider.jwks_for(Some("a")).await.unwrap();
        assert_eq!(set.with_kid("a").count(), 0);
        assert_eq!(idp.jwks_fetches(), 2);
    }

    #[tokio::test]
    async fn discovery_with_odd_members_and_no_s256_still_works() {
        let idp = TestIdp::start(vec![ed_jwk("a")]).await;
        idp.set_discovery_extra(json!({
            "userinfo_endpoint": {"url": "x"},
            "code_challenge_methods_supported": ["plain"],
            "backchannel_logout_supported": "yes",
            "request_uri_parameter_supported": 1,
        }));
        let provider = idp.provider(&ManualClock::new(1_000));
        let m = provider.metadata().await.unwrap();
        assert_eq!(m.userinfo_endpoint, None);
        assert!(!m.backchannel_logout_supported);
        assert_eq!(
            m.code_challenge_methods_supported,
            Some(vec!["plain".into()])
        );
        assert_eq!(provider.jwks_for(Some("a")).await.unwrap().keys.len(), 1);
    }

    #[tokio::test]
    async fn idp_bodies_are_capped() {
        use axum::routing::get;
        let big = "x".repeat(MAX_IDP_BODY + 1);
        let app = axum::Router::new()
            .route("/big", get(move || async move { big.clone() }))
            .route(
                "/stream",
                get(|| async {
                    let chunks = (0..1100).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024]));
                    axum::body::Body::from_stream(futures_util::stream::iter(chunks))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        for path in ["/big", "/stream"] {
            let resp = http.get(format!("{base}{path}")).send().await.unwrap();
            let e = read_capped(resp, MAX_IDP_BODY, "JWKS").await.unwrap_err();
            assert!(e.to_string().contains("larger than"), "{path}: {e}");
        }
    }
}
