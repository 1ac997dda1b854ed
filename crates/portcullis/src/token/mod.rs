//! Tokens for proxied calls: the bridge between sessions and `portcullis-token`.
//!
//! The gateway's sessions are a [`UserTokenStore`]: tokens live inside the encrypted ticket
//! and are written back with compare-and-set on the record version, so concurrent refreshes
//! (or a refresh racing a sliding renewal) never lose an update. Single-flight, expiry
//! buffers, back-off and client-credentials caching are the token crate's job; this module
//! only decides which token a route gets ([`TokenPolicy`]) and what a failure means for the
//! session:
//!
//! | failure | API answer | session |
//! |---|---|---|
//! | `invalid_grant`, no refresh token | 401 | ended, cookie cleared |
//! | IdP down / 5xx | 503 | kept |
//! | IdP timeout | 504 | kept |

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use portcullis_session::CasOutcome;
use portcullis_token::{
    ClientAuth, ClientCredentialsManager, ManagedToken, OAuthClient, OAuthClientConfig,
    PrivateKeyJwt, Secret, SharedClock, TokenError, TokenExchangeManager, TokenParams,
    TokenResponse, TokenTypeHint, UserTokenManager, UserTokenOptions, UserTokenStore, UserTokens,
};
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use crate::error::GatewayError;
use crate::oidc::Provider;
use crate::session::{ActiveSession, Lookup, Sessions};
use crate::settings::{ClientAuthSettings, GatewaySettings, RouteSettings};

/// The default client-credentials client: the gateway's own OIDC client.
pub const DEFAULT_CLIENT: &str = "default";

/// Clients built once the IdP's metadata is known.
struct Clients {
    oauth: Arc<OAuthClient>,
    users: UserTokenManager,
    machines: ClientCredentialsManager,
    exchanges: TokenExchangeManager,
}

/// What went wrong getting a token for a proxied call.
#[derive(Debug)]
pub enum TokenFailure {
    /// The session cannot get tokens any more (`invalid_grant`, no refresh token): end it.
    SessionEnded(String),
    /// Not the user's fault and not final: 503/504, keep the session.
    Unavailable(GatewayError),
    /// The IdP refused a client-credentials request.
    Rejected(String),
}

impl TokenFailure {
    fn from_error(e: TokenError) -> Self {
        if e.ends_session() {
            Self::SessionEnded(e.to_string())
        } else if matches!(e, TokenError::Timeout) {
            Self::Unavailable(GatewayError::IdpTimeout)
        } else if e.is_transient() {
            Self::Unavailable(GatewayError::IdpUnavailable(e.to_string()))
        } else {
            Self::Rejected(e.to_string())
        }
    }
}

/// Token management for the gateway.
pub struct TokenService {
    provider: Arc<Provider>,
    settings: Arc<GatewaySettings>,
    sessions: Sessions,
    http: reqwest::Client,
    clock: SharedClock,
    clients: OnceCell<Clients>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenService")
    }
}

impl TokenService {
    pub fn new(
        provider: Arc<Provider>,
        settings: Arc<GatewaySettings>,
        sessions: Sessions,
        http: reqwest::Client,
        clock: SharedClock,
    ) -> Self {
        Self {
            provider,
            settings,
            sessions,
            http,
            clock,
            clients: OnceCell::new(),
        }
    }

    async fn clients(&self) -> Result<&Clients, GatewayError> {
        self.clients
            .get_or_try_init(|| async {
                let metadata = self.provider.metadata().await?;
                let oidc = &self.settings.oidc;
                let oauth = Arc::new(OAuthClient::new(
                    OAuthClientConfig {
                        client_id: oidc.client_id.clone(),
                        auth: client_auth(&oidc.client_auth)?,
                        token_endpoint: parse_url(&metadata.token_endpoint, "token_endpoint")?,
                        revocation_endpoint: metadata
                            .revocation_endpoint
                            .as_deref()
                            .map(|u| parse_url(u, "revocation_endpoint"))
                            .transpose()?,
                        timeout: oidc.http_timeout,
                        insecure_allow_http: false,
                    },
                    self.http.clone(),
                    self.clock.clone(),
                ));
                let users = UserTokenManager::new(
                    oauth.clone(),
                    UserTokenOptions {
                        refresh_before_expiry: self.settings.tokens.refresh_before_expiry,
                        ..UserTokenOptions::default()
                    },
                    self.clock.clone(),
                );
                let mut machines = ClientCredentialsManager::new(
                    self.clock.clone(),
                    self.settings.tokens.client_token_buffer,
                );
                machines.add_client(DEFAULT_CLIENT, oauth.clone(), TokenParams::default());
                for named in &self.settings.tokens.clients {
                    let endpoint = match &named.token_endpoint {
                        Some(u) => u.clone(),
                        None => parse_url(&metadata.token_endpoint, "token_endpoint")?,
                    };
                    let client = Arc::new(OAuthClient::new(
                        OAuthClientConfig {
                            client_id: named.client_id.clone(),
                            auth: client_auth(&named.client_auth)?,
                            token_endpoint: endpoint,
                            revocation_endpoint: None,
                            timeout: oidc.http_timeout,
                            insecure_allow_http: false,
                        },
                        self.http.clone(),
                        self.clock.clone(),
                    ));
                    let defaults = TokenParams {
                        resource: named.resource.clone(),
                        scope: named.scope.clone(),
                        extra: named.extra.iter().cloned().collect(),
                    };
                    machines.add_client(&named.name, client, defaults);
                }
                let exchanges = TokenExchangeManager::new(
                    oauth.clone(),
                    self.clock.clone(),
                    self.settings.tokens.client_token_buffer,
                );
                Ok::<_, GatewayError>(Clients {
                    oauth,
                    users,
                    machines,
                    exchanges,
                })
            })
            .await
    }

    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<TokenResponse, GatewayError> {
        let clients = self.clients().await?;
        clients
            .oauth
            .exchange_code(code, redirect_uri, verifier)
            .await
            .map_err(|e| match TokenFailure::from_error(e) {
                TokenFailure::Unavailable(g) => g,
                TokenFailure::SessionEnded(m) | TokenFailure::Rejected(m) => {
                    GatewayError::LoginRejected(format!(
                        "The identity provider refused the authorization code: {m}"
                    ))
                }
            })
    }

    pub fn user_tokens_from(&self, response: TokenResponse) -> Result<UserTokens, GatewayError> {
        UserTokens::from_response(response, self.clock.now_unix()).map_err(|e| {
            GatewayError::LoginRejected(format!("The token response is unusable: {e}"))
        })
    }

    /// Claims from the UserInfo endpoint.
    pub async fn userinfo(
        &self,
        endpoint: &str,
        access_token: &Secret,
    ) -> Result<Map<String, Value>, GatewayError> {
        let resp = self
            .http
            .get(endpoint)
            .bearer_auth(access_token.expose_secret())
            .timeout(self.settings.oidc.http_timeout)
            .send()
            .await
            .map_err(crate::oidc::provider_error)?;
        if !resp.status().is_success() {
            return Err(GatewayError::IdpUnavailable(format!(
                "userinfo answered {}",
                resp.status()
            )));
        }
        let body = crate::oidc::read_capped(resp, crate::oidc::MAX_IDP_BODY, "userinfo").await?;
        serde_json::from_slice(&body)
            .map_err(|e| GatewayError::IdpUnavailable(format!("userinfo: {e}")))
    }

    /// A current user access token for a route; refreshes (single-flight) when needed.
    /// `session` is the session the request resolved to (possibly from the cache): its tokens
    /// answer the first read, every later read inside a refresh goes to the store.
    pub async fn user_token(
        &self,
        session: &ActiveSession,
        route: &RouteSettings,
    ) -> Result<ManagedToken, TokenFailure> {
        let clients = self.clients().await.map_err(TokenFailure::Unavailable)?;
        let params = route_params(route);
        let store = SessionTokenStore::new(&self.sessions, session);
        clients
            .users
            .get_access_token(&store, session.key(), &params, route.refresh_before_expiry)
            .await
            .map_err(TokenFailure::from_error)
    }

    /// The session's user token exchanged (RFC 8693) for the route's audience, resource and
    /// scope. Cached per subject token and parameters by the token crate.
    pub async fn exchanged_token(
        &self,
        session: &ActiveSession,
        route: &RouteSettings,
    ) -> Result<ManagedToken, TokenFailure> {
        let clients = self.clients().await.map_err(TokenFailure::Unavailable)?;
        let store = SessionTokenStore::new(&self.sessions, session);
        let subject = clients
            .users
            .get_access_token(
                &store,
                session.key(),
                &TokenParams::default(),
                route.refresh_before_expiry,
            )
            .await
            .map_err(TokenFailure::from_error)?;
        let mut params = route_params(route);
        if let Some(audience) = &route.audience {
            params.extra.insert("audience".into(), audience.clone());
        }
        clients
            .exchanges
            .exchange(&subject, &params)
            .await
            .map_err(|e| {
                if e.is_transient() || matches!(e, TokenError::Timeout) {
                    TokenFailure::from_error(e)
                } else {
                    // The IdP refused this exchange; the session itself is fine.
                    TokenFailure::Rejected(e.to_string())
                }
            })
    }

    /// A client-credentials token for a route.
    pub async fn client_token(&self, route: &RouteSettings) -> Result<ManagedToken, TokenFailure> {
        let clients = self.clients().await.map_err(TokenFailure::Unavailable)?;
        let name = route.client.as_deref().unwrap_or(DEFAULT_CLIENT);
        clients
            .machines
            .get_token(name, &route_params(route))
            .await
            .map_err(TokenFailure::from_error)
    }

    /// Best-effort refresh-token revocation (logout paths). Failures are logged, not fatal:
    /// the session is deleted either way.
    pub async fn revoke_user_tokens(&self, tokens: &UserTokens) {
        let Some(refresh) = &tokens.refresh_token else {
            return;
        };
        match self.clients().await {
            Ok(c) => match c.oauth.revoke(refresh, TokenTypeHint::RefreshToken).await {
                Ok(()) => tracing::debug!(token = %refresh.fingerprint(), "refresh token revoked"),
                Err(TokenError::NotSupported(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, token = %refresh.fingerprint(), "refresh token revocation failed")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "refresh token not revoked: identity provider unavailable")
            }
        }
    }
}

fn route_params(route: &RouteSettings) -> TokenParams {
    TokenParams {
        resource: route.resource.clone(),
        scope: route.scope.clone(),
        ..TokenParams::default()
    }
}

fn parse_url(s: &str, what: &str) -> Result<url::Url, GatewayError> {
    url::Url::parse(s)
        .map_err(|_| GatewayError::IdpUnavailable(format!("{what} in discovery is not a URL")))
}

fn client_auth(settings: &ClientAuthSettings) -> Result<ClientAuth, GatewayError> {
    Ok(match settings {
        ClientAuthSettings::ClientSecretBasic(s) => ClientAuth::ClientSecretBasic(s.clone()),
        ClientAuthSettings::ClientSecretPost(s) => ClientAuth::ClientSecretPost(s.clone()),
        ClientAuthSettings::PrivateKeyJwt { key_pem, alg, kid } => {
            let alg = alg.parse().map_err(|_| {
                GatewayError::Internal(format!("private_key_jwt: unsupported algorithm {alg}"))
            })?;
            let mut key = PrivateKeyJwt::from_pem(alg, key_pem.expose_secret())
                .map_err(|e| GatewayError::Internal(format!("private_key_jwt key: {e}")))?;
            if let Some(kid) = kid {
                key = key.with_kid(kid.clone());
            }
            ClientAuth::PrivateKeyJwt(key)
        }
    })
}

/// Sessions as a token store: tokens live in the sealed ticket; writes are CAS on the
/// record version; leases go to the session store (shared by every instance).
///
/// The first `load` returns the tokens of the session the request already holds (no store
/// round-trip on the hot path). Every later `load` — the ones the token manager makes under
/// its single-flight lock and lease, to see another request's or instance's refresh — reads
/// the store directly, never the cache, so a refresh never starts from a stale refresh token.
struct SessionTokenStore<'a> {
    sessions: &'a Sessions,
    prefetched: std::sync::Mutex<Option<(UserTokens, u64)>>,
}

impl<'a> SessionTokenStore<'a> {
    fn new(sessions: &'a Sessions, session: &ActiveSession) -> Self {
        let first = (session.ticket.tokens.clone(), session.record.version);
        Self {
            sessions,
            prefetched: std::sync::Mutex::new(Some(first)),
        }
    }
}

#[async_trait]
impl UserTokenStore for SessionTokenStore<'_> {
    async fn load(&self, session: &str) -> Result<Option<(UserTokens, u64)>, TokenError> {
        // A poisoned lock only means another load panicked; the value is still usable.
        let first = self
            .prefetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(first) = first {
            return Ok(Some(first));
        }
        match self.sessions.lookup_key_fresh(session).await {
            Ok(Lookup::Active(s)) => Ok(Some((s.ticket.tokens.clone(), s.record.version))),
            Ok(_) => Ok(None),
            Err(e) => Err(TokenError::Store(e.to_string())),
        }
    }

    async fn compare_and_set(
        &self,
        session: &str,
        expected_version: u64,
        tokens: &UserTokens,
    ) -> Result<bool, TokenError> {
        let current = match self.sessions.lookup_key_fresh(session).await {
            Ok(Lookup::Active(s)) => s,
            Ok(_) => return Ok(false),
            Err(e) => return Err(TokenError::Store(e.to_string())),
        };
        if current.record.version != expected_version {
            return Ok(false);
        }
        let mut ticket = current.ticket.clone();
        ticket.tokens = tokens.clone();
        match self.sessions.write_ticket(&current.record, &ticket).await {
            Ok(CasOutcome::Updated) => Ok(true),
            Ok(CasOutcome::Conflict | CasOutcome::Missing) => Ok(false),
            Err(e) => Err(TokenError::Store(e.to_string())),
        }
    }

    async fn acquire_lease(
        &self,
        session: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, TokenError> {
        self.sessions
            .store()
            .try_lease(&format!("refresh:{session}"), holder, ttl)
            .await
            .map_err(|e| TokenError::Store(e.to_string()))
    }

    async fn release_lease(&self, session: &str, holder: &str) -> Result<(), TokenError> {
        self.sessions
            .store()
            .release_lease(&format!("refresh:{session}"), holder)
            .await
            .map_err(|e| TokenError::Store(e.to_string()))
    }
}
