//! Discovery and JWKS cache.

use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use crate::error::GatewayError;
use portcullis_token::SharedClock;

/// The parts of the discovery document the gateway uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub prompt_values_supported: Option<Vec<String>>,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub backchannel_logout_supported: bool,
}

struct Cached<T> {
    value: Arc<T>,
    fetched_at: i64,
}

/// The identity provider: discovery document and keys, fetched lazily and cached.
pub struct Provider {
    issuer: String,
    http: reqwest::Client,
    clock: SharedClock,
    metadata: RwLock<Option<Cached<ProviderMetadata>>>,
    jwks: RwLock<Option<Cached<JwkSet>>>,
    /// Serialises refetches so a burst of unknown `kid`s makes one request.
    jwks_refetch: Mutex<()>,
    metadata_ttl: i64,
    jwks_min_refetch: i64,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Provider {
    pub fn new(issuer: String, http: reqwest::Client, clock: SharedClock) -> Self {
        Self {
            issuer,
            http,
            clock,
            metadata: RwLock::new(None),
            jwks: RwLock::new(None),
            jwks_refetch: Mutex::new(()),
            metadata_ttl: 3600,
            jwks_min_refetch: 10,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The discovery document: cached for an hour; if a refresh fails, the stale copy is
    /// used (an IdP blip must not break logins in progress).
    pub async fn metadata(&self) -> Result<Arc<ProviderMetadata>, GatewayError> {
        let now = self.clock.now_unix();
        if let Some(c) = self.metadata.read().await.as_ref() {
            if now - c.fetched_at < self.metadata_ttl {
                return Ok(c.value.clone());
            }
        }
        let mut guard = self.metadata.write().await;
        if let Some(c) = guard.as_ref() {
            if now - c.fetched_at < self.metadata_ttl {
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
        let m: ProviderMetadata = self.get_json(&url).await?;
        if m.issuer != self.issuer {
            return Err(GatewayError::IdpUnavailable(format!(
                "discovery document names issuer {:?}, configured {:?}",
                m.issuer, self.issuer
            )));
        }
        Ok(m)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, GatewayError> {
        let resp = self.http.get(url).send().await.map_err(map_reqwest)?;
        if !resp.status().is_success() {
            return Err(GatewayError::IdpUnavailable(format!(
                "{url} answered {}",
                resp.status()
            )));
        }
        resp.json::<T>()
            .await
            .map_err(|e| GatewayError::IdpUnavailable(format!("{url}: invalid JSON: {e}")))
    }

    /// The key set, refetched when `kid` is not in the cached one (at most every 10 s).
    pub async fn jwks_for(&self, kid: Option<&str>) -> Result<Arc<JwkSet>, GatewayError> {
        let has = |set: &JwkSet| match kid {
            Some(k) => set.find(k).is_some(),
            None => !set.keys.is_empty(),
        };
        if let Some(c) = self.jwks.read().await.as_ref() {
            if has(&c.value) {
                return Ok(c.value.clone());
            }
        }
        let _one_at_a_time = self.jwks_refetch.lock().await;
        let now = self.clock.now_unix();
        if let Some(c) = self.jwks.read().await.as_ref() {
            if has(&c.value) || now - c.fetched_at < self.jwks_min_refetch {
                return Ok(c.value.clone());
            }
        }
        let metadata = self.metadata().await?;
        let set: JwkSet = self.get_json(&metadata.jwks_uri).await?;
        let value = Arc::new(set);
        *self.jwks.write().await = Some(Cached {
            value: value.clone(),
            fetched_at: now,
        });
        Ok(value)
    }
}

pub fn map_reqwest(e: reqwest::Error) -> GatewayError {
    if e.is_timeout() {
        GatewayError::IdpTimeout
    } else {
        GatewayError::IdpUnavailable(e.without_url().to_string())
    }
}
