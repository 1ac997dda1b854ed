//! [`OAuthClient`]: one OAuth 2.0 client talking to one token endpoint.
//!
//! Grants: authorization code with PKCE (RFC 6749 §4.1, RFC 7636), refresh (§6), client
//! credentials (§4.4), token exchange (RFC 8693); plus revocation (RFC 7009).
//!
//! Every request is form-encoded with `Accept: application/json`, carries the client
//! authentication of [`ClientAuth`], and has its own timeout (default 10 s). Nothing is retried
//! here: a refresh token may be one-time, so resending a refresh whose answer was lost would
//! burn it. Callers decide (the managers back off instead).
//!
//! ```no_run
//! # async fn demo() -> Result<(), portcullis_token::TokenError> {
//! use std::sync::Arc;
//! use portcullis_token::*;
//! let config = OAuthClientConfig::new(
//!     "my-client",
//!     ClientAuth::ClientSecretBasic(Secret::new("s3cret")),
//!     url::Url::parse("https://idp.example/oauth/token").map_err(|e| TokenError::InvalidParams(e.to_string()))?,
//! );
//! let http = OAuthClient::default_http_client().map_err(|e| TokenError::InvalidParams(e.to_string()))?;
//! let client = OAuthClient::new(config, http, Arc::new(SystemClock));
//! let tokens = client.client_credentials(&TokenParams::default().with_scope("api")).await?;
//! # let _ = tokens; Ok(()) }
//! ```
//!
//! Caveats:
//! - The `reqwest::Client` should not follow redirects (a token endpoint that redirects is
//!   misconfigured, and a 302 turns the POST into a GET that drops the form);
//!   [`OAuthClient::default_http_client`] builds one that does not.
//! - Plain `http://` endpoints are refused unless the host is a loopback address or
//!   [`OAuthClientConfig::insecure_allow_http`] is set: credentials and tokens would travel in clear text.
//! - Responses are read up to 1 MiB.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{ACCEPT, AUTHORIZATION};
use http::HeaderValue;
use tracing::Instrument as _;
use url::Url;

use crate::dpop::{Dpop, DPOP_HEADER, USE_DPOP_NONCE};
use crate::{metrics, ClientAuth, Secret, SharedClock, TokenError, TokenParams, TokenResponse};

/// Largest response body read from a token or revocation endpoint.
const MAX_BODY: usize = 1024 * 1024;

/// Form fields that the grant and client authentication own; `TokenParams::extra` may not set them.
const RESERVED: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "scope",
    "resource",
    "subject_token",
    "subject_token_type",
    "token",
    "token_type_hint",
];

/// Configuration of an [`OAuthClient`].
#[derive(Debug, Clone)]
pub struct OAuthClientConfig {
    /// `client_id` (RFC 6749 §2.2), sent with every request.
    pub client_id: String,
    /// How the client authenticates (RFC 6749 §2.3, OIDC Core §9).
    pub auth: ClientAuth,
    /// The token endpoint (RFC 6749 §3.2); must be https unless the host is loopback or
    /// [`insecure_allow_http`](Self::insecure_allow_http) is set.
    pub token_endpoint: Url,
    /// The revocation endpoint (RFC 7009 §2), if the IdP has one; without it
    /// [`OAuthClient::revoke`] answers [`TokenError::NotSupported`].
    pub revocation_endpoint: Option<Url>,
    /// Per-request timeout (connect + response). Default 10 s.
    pub timeout: Duration,
    /// Allow `http://` endpoints on non-loopback hosts. Only for test set-ups.
    pub insecure_allow_http: bool,
}

impl OAuthClientConfig {
    /// A configuration with no revocation endpoint, a 10 s timeout and https required.
    pub fn new(client_id: impl Into<String>, auth: ClientAuth, token_endpoint: Url) -> Self {
        Self {
            client_id: client_id.into(),
            auth,
            token_endpoint,
            revocation_endpoint: None,
            timeout: Duration::from_secs(10),
            insecure_allow_http: false,
        }
    }

    /// Endpoints from discovered provider metadata.
    pub fn from_metadata(
        client_id: impl Into<String>,
        auth: ClientAuth,
        metadata: &crate::ProviderMetadata,
    ) -> Self {
        let mut config = Self::new(client_id, auth, metadata.token_endpoint.clone());
        config.revocation_endpoint = metadata.revocation_endpoint.clone();
        config
    }

    /// Sets the RFC 7009 revocation endpoint.
    pub fn with_revocation_endpoint(mut self, url: Url) -> Self {
        self.revocation_endpoint = Some(url);
        self
    }

    /// Sets the per-request timeout (connect + response).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The `token_type_hint` of a revocation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTypeHint {
    /// `refresh_token`.
    RefreshToken,
    /// `access_token`.
    AccessToken,
}

impl TokenTypeHint {
    fn as_str(self) -> &'static str {
        match self {
            Self::RefreshToken => "refresh_token",
            Self::AccessToken => "access_token",
        }
    }
}

/// An OAuth 2.0 client bound to one token endpoint.
pub struct OAuthClient {
    client_id: String,
    auth: ClientAuth,
    token_endpoint: Url,
    revocation_endpoint: Option<Url>,
    timeout: Duration,
    insecure_allow_http: bool,
    http: reqwest::Client,
    clock: SharedClock,
    dpop: Option<Dpop>,
    assertion_audience: Option<String>,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .field("token_endpoint", &self.token_endpoint.as_str())
            .field(
                "revocation_endpoint",
                &self.revocation_endpoint.as_ref().map(Url::as_str),
            )
            .field("timeout", &self.timeout)
            .field("dpop", &self.dpop)
            .finish_non_exhaustive()
    }
}

type Form = Vec<(String, String)>;

fn field(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

impl OAuthClient {
    /// Builds the client from its configuration, a shared `reqwest::Client` and a clock (for
    /// `private_key_jwt` assertion times). Does no I/O.
    pub fn new(config: OAuthClientConfig, http: reqwest::Client, clock: SharedClock) -> Self {
        Self {
            client_id: config.client_id,
            auth: config.auth,
            token_endpoint: config.token_endpoint,
            revocation_endpoint: config.revocation_endpoint,
            timeout: config.timeout,
            insecure_allow_http: config.insecure_allow_http,
            http,
            clock,
            dpop: None,
            assertion_audience: None,
        }
    }

    /// The `aud` of `private_key_jwt` assertions: the issuer identifier instead of the
    /// endpoint URL (FAPI 2.0 §5.3.2.1 and the OAuth JWT client-authentication update ask
    /// for the issuer; default: the URL of the endpoint the assertion is sent to).
    pub fn with_assertion_audience(mut self, audience: impl Into<String>) -> Self {
        self.assertion_audience = Some(audience.into());
        self
    }

    /// Sender-constrains this client's tokens (RFC 9449): every token request carries a
    /// fresh DPoP proof, a `use_dpop_nonce` answer is retried once with the server's nonce
    /// (and a fresh client assertion), and the tokens it hands out sign their own proofs
    /// ([`ManagedToken::dpop_proof`](crate::ManagedToken::dpop_proof)).
    pub fn with_dpop(mut self, dpop: Dpop) -> Self {
        self.dpop = Some(dpop);
        self
    }

    /// The DPoP signer, when [`with_dpop`](Self::with_dpop) was used.
    pub fn dpop(&self) -> Option<&Dpop> {
        self.dpop.as_ref()
    }

    /// A `reqwest::Client` suited for token endpoints: rustls, no redirects, 10 s connect timeout.
    pub fn default_http_client() -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()
    }

    /// The configured `client_id`.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> &Url {
        &self.token_endpoint
    }

    /// The revocation endpoint, if configured.
    pub fn revocation_endpoint(&self) -> Option<&Url> {
        self.revocation_endpoint.as_ref()
    }

    /// Authorization code grant with PKCE (RFC 6749 §4.1.3, RFC 7636 §4.5). `params` adds
    /// `resource` (RFC 8707 §2.2: the resource the access token is for, usually the one of the
    /// authorization request), `scope` and extra fields; `TokenParams::default()` for none.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        pkce_verifier: &str,
        params: &TokenParams,
    ) -> Result<TokenResponse, TokenError> {
        self.exchange_code_with_dpop(code, redirect_uri, pkce_verifier, params, self.dpop())
            .await
    }

    /// [`exchange_code`](Self::exchange_code) with the proof signed by `dpop` instead of the
    /// client's own signer (`None`: no proof). For a key per session: the key whose thumbprint
    /// was the authorization request's `dpop_jkt` (RFC 9449 §10) must sign this proof.
    pub async fn exchange_code_with_dpop(
        &self,
        code: &str,
        redirect_uri: &str,
        pkce_verifier: &str,
        params: &TokenParams,
        dpop: Option<&Dpop>,
    ) -> Result<TokenResponse, TokenError> {
        let mut form = vec![
            field("code", code.to_owned()),
            field("redirect_uri", redirect_uri.to_owned()),
            field("code_verifier", pkce_verifier.to_owned()),
        ];
        add_params(&mut form, params)?;
        self.token_request("authorization_code", form, dpop).await
    }

    /// Refresh token grant; `params` adds `resource`, `scope` and extra fields (for
    /// per-resource tokens or down-scoping).
    ///
    /// Errors are classified by what they mean for the refresh token: `invalid_grant`
    /// ([`TokenError::InvalidGrant`]) and every other 4xx but 429, whatever its body
    /// ([`TokenError::RefreshRefused`]), end the session; 5xx, 429, `temporarily_unavailable`,
    /// connection failures and timeouts are transient.
    pub async fn refresh(
        &self,
        refresh_token: &Secret,
        params: &TokenParams,
    ) -> Result<TokenResponse, TokenError> {
        self.refresh_with_dpop(refresh_token, params, self.dpop())
            .await
    }

    /// [`refresh`](Self::refresh) with the proof signed by `dpop` instead of the client's own
    /// signer (`None`: no proof). A server that binds refresh tokens to a key (RFC 9449 §5)
    /// honours them only with a proof of that key, so a session with its own key refreshes
    /// with it.
    pub async fn refresh_with_dpop(
        &self,
        refresh_token: &Secret,
        params: &TokenParams,
        dpop: Option<&Dpop>,
    ) -> Result<TokenResponse, TokenError> {
        let mut form = vec![field(
            "refresh_token",
            refresh_token.expose_secret().to_owned(),
        )];
        add_params(&mut form, params)?;
        tracing::debug!(refresh_token = %refresh_token.fingerprint(), "refreshing");
        self.token_request("refresh_token", form, dpop)
            .await
            .map_err(TokenError::for_refresh)
    }

    /// Client credentials grant.
    pub async fn client_credentials(
        &self,
        params: &TokenParams,
    ) -> Result<TokenResponse, TokenError> {
        let mut form = Vec::new();
        add_params(&mut form, params)?;
        self.token_request("client_credentials", form, self.dpop())
            .await
    }

    /// RFC 8693 token exchange with `subject_token` of `subject_token_type`
    /// (e.g. `urn:ietf:params:oauth:token-type:access_token`).
    pub async fn token_exchange(
        &self,
        subject_token: &Secret,
        subject_token_type: &str,
        params: &TokenParams,
    ) -> Result<TokenResponse, TokenError> {
        self.token_exchange_with_dpop(subject_token, subject_token_type, params, self.dpop())
            .await
    }

    /// [`token_exchange`](Self::token_exchange) with the proof signed by `dpop` instead of the
    /// client's own signer (`None`: no proof): the exchanged token is then bound to that key.
    pub async fn token_exchange_with_dpop(
        &self,
        subject_token: &Secret,
        subject_token_type: &str,
        params: &TokenParams,
        dpop: Option<&Dpop>,
    ) -> Result<TokenResponse, TokenError> {
        let mut form = vec![
            field("subject_token", subject_token.expose_secret().to_owned()),
            field("subject_token_type", subject_token_type.to_owned()),
        ];
        add_params(&mut form, params)?;
        self.token_request(
            "urn:ietf:params:oauth:grant-type:token-exchange",
            form,
            dpop,
        )
        .await
    }

    /// RFC 9126 pushed authorization request: POSTs the authorization request `params` to
    /// `endpoint` with this client's authentication; returns the `request_uri` and its
    /// `expires_in` (seconds). The DPoP key binding travels as the `dpop_jkt` parameter
    /// (RFC 9449 §10), so no proof is sent here.
    ///
    /// # Errors
    ///
    /// As for token requests: [`TokenError::Rejected`] for an OAuth error answer (the IdP's
    /// `error` and description), transport errors as [`TokenError::Unavailable`]/[`TokenError::Timeout`],
    /// [`TokenError::Malformed`] for a 2xx without `request_uri`.
    pub async fn push_authorization_request(
        &self,
        endpoint: &Url,
        params: &[(String, String)],
    ) -> Result<(String, i64), TokenError> {
        #[derive(serde::Deserialize)]
        struct ParResponse {
            request_uri: String,
            #[serde(default)]
            expires_in: Option<i64>,
        }
        // RFC 9126 §2.1 wants `client_id` in the body; every authentication but Basic adds it.
        let auth_adds_client_id = !matches!(self.auth, ClientAuth::ClientSecretBasic(_));
        let form: Form = params
            .iter()
            .filter(|(k, _)| !(auth_adds_client_id && k == "client_id"))
            .cloned()
            .collect();
        let span = tracing::debug_span!(
            "pushed_authorization_request",
            otel.kind = "client",
            server.address = endpoint.host_str(),
            client_id = %self.client_id,
            endpoint = %endpoint_label(endpoint),
            http.response.status_code = tracing::field::Empty,
        );
        async {
            metrics::token_request("pushed_authorization");
            let (status, body) = self.post(endpoint, form, None).await?;
            tracing::Span::current().record("http.response.status_code", status);
            if !(200..300).contains(&status) {
                return Err(TokenError::from_error_response(status, &body));
            }
            let resp: ParResponse = serde_json::from_slice(&body).map_err(|e| {
                TokenError::Malformed(format!("PAR response: {:?} error", e.classify()))
            })?;
            if resp.request_uri.is_empty() {
                return Err(TokenError::Malformed(
                    "PAR response: empty request_uri".into(),
                ));
            }
            Ok((resp.request_uri, resp.expires_in.unwrap_or(60)))
        }
        .instrument(span)
        .await
    }

    /// RFC 7009 revocation. `Err(NotSupported)` when no revocation endpoint is configured:
    /// the caller decides whether that matters.
    pub async fn revoke(&self, token: &Secret, hint: TokenTypeHint) -> Result<(), TokenError> {
        let Some(endpoint) = self.revocation_endpoint.clone() else {
            return Err(TokenError::NotSupported(
                "no revocation endpoint configured",
            ));
        };
        let form = vec![
            field("token", token.expose_secret().to_owned()),
            field("token_type_hint", hint.as_str().to_owned()),
        ];
        let span = tracing::debug_span!(
            "token_revocation",
            otel.kind = "client",
            server.address = endpoint.host_str(),
            client_id = %self.client_id,
            endpoint = %endpoint_label(&endpoint),
            token = %token.fingerprint(),
            hint = hint.as_str(),
            http.response.status_code = tracing::field::Empty,
        );
        async {
            metrics::token_request("revocation");
            let (status, body) = self.post(&endpoint, form, None).await?;
            tracing::Span::current().record("http.response.status_code", status);
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(TokenError::from_error_response(status, &body))
            }
        }
        .instrument(span)
        .await
    }

    async fn token_request(
        &self,
        grant_type: &'static str,
        mut form: Form,
        dpop: Option<&Dpop>,
    ) -> Result<TokenResponse, TokenError> {
        form.insert(0, field("grant_type", grant_type));
        let span = tracing::debug_span!(
            "token_request",
            otel.kind = "client",
            server.address = self.token_endpoint.host_str(),
            grant_type,
            client_id = %self.client_id,
            endpoint = %endpoint_label(&self.token_endpoint),
            http.response.status_code = tracing::field::Empty,
            access_token = tracing::field::Empty,
        );
        async {
            metrics::token_request(grant_label(grant_type));
            let started = std::time::Instant::now();
            let result = self
                .post(&self.token_endpoint, form, dpop)
                .await
                .and_then(|(status, body)| {
                    tracing::Span::current().record("http.response.status_code", status);
                    if (200..300).contains(&status) {
                        parse_token_response(&body)
                    } else {
                        Err(TokenError::from_error_response(status, &body))
                    }
                });
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match &result {
                Ok(resp) => {
                    tracing::Span::current()
                        .record("access_token", resp.access_token.fingerprint());
                    if dpop.is_some() && resp.token_type != crate::TokenType::DPoP {
                        // RFC 9449 §5: an AS that does not support DPoP answers with a Bearer
                        // token; it works, but is not sender-constrained. Counted, not refused.
                        metrics::dpop_not_bound(grant_label(grant_type));
                        tracing::warn!(
                            token_type = resp.token_type.as_str(),
                            "DPoP proof sent but the token endpoint issued a token that is not DPoP-bound"
                        );
                    }
                    tracing::debug!(
                        elapsed_ms,
                        expires_in = resp.expires_in,
                        "token endpoint answered"
                    );
                }
                Err(e) => tracing::debug!(elapsed_ms, error = %e, "token request failed"),
            }
            result
        }
        .instrument(span)
        .await
    }

    /// POST a form with client authentication (and, for token requests of a DPoP client, a
    /// proof); returns status and (bounded) body. A DPoP `use_dpop_nonce` answer that came
    /// with a nonce is retried once (RFC 9449 §8): the form is rebuilt, so a client assertion
    /// is fresh too.
    async fn post(
        &self,
        endpoint: &Url,
        form: Form,
        dpop: Option<&Dpop>,
    ) -> Result<(u16, Vec<u8>), TokenError> {
        let (status, body, nonce) = self.post_once(endpoint, form.clone(), dpop).await?;
        if status == 400 && nonce && error_code(&body).as_deref() == Some(USE_DPOP_NONCE) {
            tracing::debug!(endpoint = %endpoint_label(endpoint), "token endpoint asked for a DPoP nonce; retrying once");
            let (status, body, _) = self.post_once(endpoint, form, dpop).await?;
            return Ok((status, body));
        }
        Ok((status, body))
    }

    async fn post_once(
        &self,
        endpoint: &Url,
        mut form: Form,
        dpop: Option<&Dpop>,
    ) -> Result<(u16, Vec<u8>, bool), TokenError> {
        self.check_transport(endpoint)?;
        let mut request = self
            .http
            .post(endpoint.clone())
            .timeout(self.timeout)
            .header(ACCEPT, "application/json")
            .headers(crate::trace_context::headers());
        match &self.auth {
            ClientAuth::ClientSecretBasic(secret) => {
                // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
                let user: String =
                    url::form_urlencoded::byte_serialize(self.client_id.as_bytes()).collect();
                let pass: String =
                    url::form_urlencoded::byte_serialize(secret.expose_secret().as_bytes())
                        .collect();
                let mut value = HeaderValue::from_str(&format!(
                    "Basic {}",
                    STANDARD.encode(format!("{user}:{pass}"))
                ))
                .map_err(|_| {
                    TokenError::InvalidParams("client credentials are not header-safe".into())
                })?;
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
            ClientAuth::ClientSecretPost(secret) => {
                form.push(field("client_id", self.client_id.clone()));
                form.push(field("client_secret", secret.expose_secret().to_owned()));
            }
            ClientAuth::PrivateKeyJwt(key) => {
                let audience = match &self.assertion_audience {
                    Some(aud) => aud.as_str(),
                    None => endpoint.as_str(),
                };
                let assertion = key.assertion(&self.client_id, audience, self.clock.now_unix())?;
                form.push(field("client_id", self.client_id.clone()));
                form.push(field(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                form.push(field(
                    "client_assertion",
                    assertion.expose_secret().to_owned(),
                ));
            }
            ClientAuth::None => form.push(field("client_id", self.client_id.clone())),
        }
        if let Some(dpop) = dpop {
            request = request.header(DPOP_HEADER, dpop.proof("POST", endpoint, None)?);
        }
        let mut response = request
            .form(&form)
            .send()
            .await
            .map_err(TokenError::from_reqwest)?;
        let status = response.status().as_u16();
        let nonce = dpop.and_then(|d| d.remember_nonce(endpoint, response.headers()));
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(TokenError::from_reqwest)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(TokenError::Malformed(
                    "response body larger than 1 MiB".into(),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body, nonce.is_some()))
    }

    fn check_transport(&self, endpoint: &Url) -> Result<(), TokenError> {
        if endpoint.scheme() == "https" || self.insecure_allow_http || is_loopback(endpoint) {
            Ok(())
        } else {
            Err(TokenError::NotSupported(
                "plain-http token endpoint on a non-loopback host (set insecure_allow_http for tests)",
            ))
        }
    }
}

/// Short metric label for a grant type.
fn grant_label(grant_type: &'static str) -> &'static str {
    match grant_type {
        "urn:ietf:params:oauth:grant-type:token-exchange" => "token_exchange",
        other => other,
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Origin (scheme, host and any non-default port) and path of an endpoint, for logs. No
/// query or fragment (they could carry anything), no userinfo.
pub(crate) fn endpoint_label(url: &Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

fn add_params(form: &mut Form, params: &TokenParams) -> Result<(), TokenError> {
    if let Some(resource) = &params.resource {
        form.push(field("resource", resource.clone()));
    }
    if let Some(scope) = &params.scope {
        form.push(field("scope", scope.clone()));
    }
    for (name, value) in &params.extra {
        if RESERVED.contains(&name.as_str()) {
            return Err(TokenError::InvalidParams(format!(
                "extra parameter {name:?} is reserved"
            )));
        }
        form.push(field(name, value.clone()));
    }
    Ok(())
}

/// The RFC 6749 §5.2 `error` member of an error body, if it is one.
fn error_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error)
}

fn parse_token_response(body: &[u8]) -> Result<TokenResponse, TokenError> {
    let resp: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        // serde_json can quote input values in its messages; report only where it failed.
        TokenError::Malformed(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    resp.validate()?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn endpoint_label_keeps_the_port_and_drops_query_and_userinfo() {
        let cases = [
            (
                "http://127.0.0.1:55461/api/oidc/token",
                "http://127.0.0.1:55461/api/oidc/token",
            ),
            ("https://idp.example/token", "https://idp.example/token"),
            ("https://idp.example:443/token", "https://idp.example/token"),
            (
                "https://idp.example:8443/t?client_secret=x#frag",
                "https://idp.example:8443/t",
            ),
            ("https://user:pw@idp.example/t", "https://idp.example/t"),
            ("http://[::1]:8080/token", "http://[::1]:8080/token"),
        ];
        for (url, label) in cases {
            assert_eq!(endpoint_label(&Url::parse(url).unwrap()), label, "{url}");
        }
    }
}
