//! OAuth 2.0 / OpenID Connect provider metadata discovery, for services that only know the
//! issuer (RFC 8414, OpenID Connect Discovery 1.0).
//!
//! Only the endpoints this crate uses are read. The `issuer` member must equal the issuer
//! asked for (RFC 8414 §3.3), so a metadata document cannot redirect tokens to another issuer's
//! endpoints. Caveat: the gateway does its own, fuller OIDC discovery; this is for library users.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::TokenError;

/// The endpoints of an authorization server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProviderMetadata {
    /// `issuer`; checked to equal the issuer that was asked for.
    pub issuer: Url,
    /// `token_endpoint` (RFC 6749 §3.2).
    pub token_endpoint: Url,
    #[serde(default)]
    /// `revocation_endpoint` (RFC 7009), if advertised.
    pub revocation_endpoint: Option<Url>,
}

/// Fetch `<issuer>/.well-known/openid-configuration` and check its `issuer`.
pub async fn discover(
    http: &reqwest::Client,
    issuer: &Url,
    timeout: Duration,
) -> Result<ProviderMetadata, TokenError> {
    let mut url = issuer.clone();
    let path = format!(
        "{}/.well-known/openid-configuration",
        issuer.path().trim_end_matches('/')
    );
    url.set_path(&path);
    let response = http
        .get(url)
        .timeout(timeout)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(TokenError::from_reqwest)?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(if status == 429 || status >= 500 {
            TokenError::Unavailable(format!("discovery answered HTTP {status}"))
        } else {
            TokenError::Rejected {
                status,
                error: format!("http_{status}"),
                description: Some("discovery failed".into()),
            }
        });
    }
    let body = response.bytes().await.map_err(TokenError::from_reqwest)?;
    let metadata: ProviderMetadata = serde_json::from_slice(&body).map_err(|e| {
        TokenError::Malformed(format!(
            "provider metadata: {:?} error at line {}",
            e.classify(),
            e.line()
        ))
    })?;
    if metadata.issuer != *issuer {
        return Err(TokenError::Malformed(format!(
            "provider metadata names issuer {} instead of {}",
            metadata.issuer, issuer
        )));
    }
    Ok(metadata)
}
