//! Tokens for proxied calls: the bridge between sessions and `portcullis-token`.
//!
//! The gateway's sessions are a [`UserTokenStore`]: tokens live inside the encrypted ticket
//! and are written back with compare-and-set on the record version, so concurrent refreshes
//! (or a refresh racing a sliding renewal) never lose an update. Single-flight, expiry
//! buffers, back-off and client-credentials caching are the token crate's job; this module
//! only decides which token a route gets ([`TokenPolicy`](crate::settings::TokenPolicy)) and what a failure means for the
//! session:
//!
//! | failure | API answer | session |
//! |---|---|---|
//! | `invalid_grant`, any other 4xx but 429 (whatever the body), no refresh token | 401 | ended here, at once, cookie cleared |
//! | IdP down / 5xx / 429 | 503 | kept |
//! | IdP timeout | 504 | kept |
//! | refresh response refused (its ID token fails validation or names another `iss`/`sub`/`auth_time`, OIDC Core §12.2), or not a token response | 502 | kept, nothing stored |
//!
//! A session that can no longer get tokens is deleted by this module as soon as that is known,
//! whatever the route's policy, so `/bff/user` never reports it.
//!
//! Ending a session on purpose goes through [`TokenService::end_session`]: under the session's
//! refresh lock and lease, read fresh, revoke the refresh token found, delete. That is what
//! logout and [`TokenService::end_replaced_session`] (a login in a browser that still carries
//! another session) use.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::HeaderMap;
use portcullis_session::CasOutcome;
use portcullis_token::{
    ClientAuth, ClientCredentialsManager, Dpop, DpopKey, ManagedToken, OAuthClient,
    OAuthClientConfig, PrivateKeyJwt, RefreshValidator, Secret, SharedClock, TokenError,
    TokenExchangeManager, TokenParams, TokenResponse, TokenTypeHint, UserTokenManager,
    UserTokenOptions, UserTokenStore, UserTokens,
};
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

pub mod session_key;

use crate::error::GatewayError;
use crate::oidc::id_token::{self, Expectations};
use crate::oidc::Provider;
use crate::session::{ActiveSession, Lookup, Sessions, Ticket};
use crate::settings::{ClientAuthSettings, GatewaySettings, RouteSettings, SecurityProfile};

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
    /// The session cannot get tokens any more (`invalid_grant`, another 4xx to the refresh, no
    /// refresh token). [`TokenService`] has already deleted it; the caller answers 401 and
    /// clears the cookie.
    SessionEnded(String),
    /// Not the user's fault and not final: answer with this error (503/504, or 502 for a
    /// refresh response that was refused), keep the session.
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
        } else if matches!(
            e,
            TokenError::InvalidRefreshResponse(_) | TokenError::Malformed(_)
        ) {
            Self::Unavailable(GatewayError::IdpBadResponse(e.to_string()))
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
    /// Builds the token service. Does no I/O: clients are built on first use from discovery.
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
                let mut oauth = OAuthClient::new(
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
                );
                if let Some(dpop) = &oidc.dpop {
                    oauth = oauth.with_dpop(Dpop::new(dpop.key.clone(), self.clock.clone()));
                }
                if oidc.profile == SecurityProfile::Fapi2 {
                    oauth = oauth.with_assertion_audience(oidc.issuer.clone());
                }
                let oauth = Arc::new(oauth);
                let users = UserTokenManager::new(
                    oauth.clone(),
                    UserTokenOptions {
                        refresh_before_expiry: self.settings.tokens.refresh_before_expiry,
                        resource: oidc.resource.clone(),
                        ..UserTokenOptions::default()
                    },
                    self.clock.clone(),
                )
                .with_refresh_validator(Arc::new(RefreshIdTokenValidator {
                    provider: self.provider.clone(),
                    settings: self.settings.clone(),
                    sessions: self.sessions.clone(),
                    clock: self.clock.clone(),
                }));
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
                    let mut client = OAuthClient::new(
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
                    );
                    if let Some(key) = &named.dpop_key {
                        // Its own key; nonces are the servers', shared with the gateway's.
                        let dpop = match oauth.dpop() {
                            Some(gateway) => gateway.with_key(key.clone()),
                            None => Dpop::new(key.clone(), self.clock.clone()),
                        };
                        client = client.with_dpop(dpop);
                    }
                    let client = Arc::new(client);
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

    /// The code exchange of a login (RFC 6749 §4.1.3 with PKCE), with `oidc.resource` as the
    /// RFC 8707 `resource` when configured (§2.2: the token request names the resource too).
    /// The DPoP proof is signed by `session_key` (the login's own key, whose thumbprint was
    /// the authorization request's `dpop_jkt`) or else by the gateway key, if any.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        session_key: Option<Arc<DpopKey>>,
    ) -> Result<TokenResponse, GatewayError> {
        let clients = self.clients().await?;
        let params = TokenParams {
            resource: self.settings.oidc.resource.clone(),
            ..TokenParams::default()
        };
        let dpop = self.signer(clients, session_key);
        clients
            .oauth
            .exchange_code_with_dpop(code, redirect_uri, verifier, &params, dpop.as_ref())
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

    /// Pushes an authorization request (RFC 9126) to `endpoint` with the gateway's client
    /// authentication; returns the `request_uri` for the browser redirect.
    ///
    /// # Errors
    ///
    /// [`GatewayError::IdpRefusedLogin`] when the IdP refuses the request (an error page and an
    /// `error` log line), [`GatewayError::IdpUnavailable`]/[`GatewayError::IdpTimeout`] when it
    /// cannot be reached.
    pub async fn push_authorization_request(
        &self,
        endpoint: &str,
        params: &[(String, String)],
    ) -> Result<String, GatewayError> {
        let clients = self.clients().await?;
        let endpoint = parse_url(endpoint, "pushed_authorization_request_endpoint")?;
        match clients
            .oauth
            .push_authorization_request(&endpoint, params)
            .await
        {
            Ok((request_uri, _expires_in)) => Ok(request_uri),
            Err(TokenError::Rejected {
                error, description, ..
            }) => Err(GatewayError::IdpRefusedLogin {
                code: error,
                description,
            }),
            Err(e) => Err(match TokenFailure::from_error(e) {
                TokenFailure::Unavailable(g) => g,
                TokenFailure::SessionEnded(m) | TokenFailure::Rejected(m) => {
                    GatewayError::IdpUnavailable(format!("pushed authorization request: {m}"))
                }
            }),
        }
    }

    /// Turns a token-endpoint response into the tokens stored in a session (expiry computed from
    /// `expires_in` and the clock).
    ///
    /// # Errors
    ///
    /// [`GatewayError::LoginRejected`] if the response is unusable (see
    /// [`UserTokens::from_response`]).
    pub fn user_tokens_from(&self, response: TokenResponse) -> Result<UserTokens, GatewayError> {
        UserTokens::from_response(response, self.clock.now_unix()).map_err(|e| {
            GatewayError::LoginRejected(format!("The token response is unusable: {e}"))
        })
    }

    /// The DPoP signer for a login: its own key (nonces shared with the gateway's signer), or
    /// the gateway's signer, or none.
    fn signer(&self, clients: &Clients, session_key: Option<Arc<DpopKey>>) -> Option<Dpop> {
        match (session_key, clients.oauth.dpop()) {
            (Some(key), Some(gateway)) => Some(gateway.with_key(key)),
            (Some(key), None) => Some(Dpop::new(key, self.clock.clone())),
            (None, gateway) => gateway.cloned(),
        }
    }

    /// Claims from the UserInfo endpoint, called with the access token of the code exchange
    /// `response`: a DPoP-bound token (`token_type` DPoP, any case) as `Authorization: DPoP`
    /// with a proof of `session_key` or the gateway key (RFC 9449 §7; a `use_dpop_nonce`
    /// answer gets one retry with the server's nonce), never as Bearer; a Bearer token as
    /// Bearer.
    pub async fn userinfo(
        &self,
        endpoint: &str,
        response: &TokenResponse,
        session_key: Option<Arc<DpopKey>>,
    ) -> Result<Map<String, Value>, GatewayError> {
        let clients = self.clients().await?;
        let bound = response.token_type == portcullis_token::TokenType::DPoP;
        let dpop = if bound {
            self.signer(clients, session_key)
        } else {
            None
        };
        let url = url::Url::parse(endpoint)
            .map_err(|_| GatewayError::IdpUnavailable("userinfo_endpoint is not a URL".into()))?;
        let token = &response.access_token;
        let mut resp = self
            .userinfo_call(&url, token, bound, dpop.as_ref())
            .await?;
        if let Some(dpop) = &dpop {
            dpop.remember_nonce(&url, resp.headers());
            if portcullis_token::dpop::is_nonce_challenge(resp.status(), resp.headers()) {
                resp = self.userinfo_call(&url, token, bound, Some(dpop)).await?;
            }
        }
        let resp = resp;
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

    async fn userinfo_call(
        &self,
        url: &url::Url,
        token: &Secret,
        bound: bool,
        dpop: Option<&Dpop>,
    ) -> Result<reqwest::Response, GatewayError> {
        let scheme = if bound { "DPoP" } else { "Bearer" };
        let mut authorization =
            reqwest::header::HeaderValue::from_str(&format!("{scheme} {}", token.expose_secret()))
                .map_err(|_| {
                    GatewayError::IdpBadResponse("the access token is not a header value".into())
                })?;
        authorization.set_sensitive(true);
        let mut request = self
            .http
            .get(url.clone())
            .header(reqwest::header::AUTHORIZATION, authorization)
            .timeout(self.settings.oidc.http_timeout)
            .headers(portcullis_token::trace_context::headers());
        if let Some(dpop) = dpop {
            let proof = dpop
                .proof("GET", url, Some(token))
                .map_err(|e| GatewayError::Internal(format!("DPoP proof: {e}")))?;
            request = request.header(portcullis_token::dpop::DPOP_HEADER, proof);
        }
        request.send().await.map_err(crate::oidc::provider_error)
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
        let result = clients
            .users
            .get_access_token(&store, session.key(), &params, route.refresh_before_expiry)
            .await;
        match result {
            Ok(token) => Ok(token),
            // Boxed: the failure path (which may end the session) stays out of the future
            // every proxied request builds.
            Err(e) => Box::pin(self.failed_user_token(session, Err(e))).await,
        }
    }

    /// Maps a user-token failure and, when it is final, deletes the session at once, whatever
    /// the route's policy: a session that cannot get tokens must not live on (and be reported
    /// by `/bff/user`) until its idle timeout.
    async fn failed_user_token(
        &self,
        session: &ActiveSession,
        result: Result<ManagedToken, TokenError>,
    ) -> Result<ManagedToken, TokenFailure> {
        let error = match result {
            Ok(token) => return Ok(token),
            Err(error) => error,
        };
        if error.ends_session() {
            tracing::info!(error = %error, "the session can get no more tokens; ending it");
            if let Err(e) = self.sessions.end(session.key()).await {
                return Err(TokenFailure::Unavailable(e));
            }
        }
        Err(TokenFailure::from_error(error))
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
            .await;
        let subject = self.failed_user_token(session, subject).await?;
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

    /// Ends the session stored under `key` for good: under its refresh lock and lease (so no
    /// refresh can rotate the refresh token in between), reads it fresh from the store,
    /// revokes the refresh token found there when `revoke` (RFC 7009, best effort) and deletes
    /// it. Returns the ticket it had (its ID token is the freshest, for `id_token_hint`), or
    /// `None` when it was already gone.
    ///
    /// Errors: the store failed (503); the session may then still exist.
    pub async fn end_session(
        &self,
        key: &str,
        revoke: bool,
    ) -> Result<Option<Ticket>, GatewayError> {
        let store = SessionTokenStore::fresh(&self.sessions);
        let end = move || async move {
            let ticket = match self.sessions.lookup_key_fresh(key).await? {
                Lookup::Active(session) => Some(session.ticket.clone()),
                Lookup::Stale | Lookup::Anonymous => None,
            };
            if revoke {
                if let Some(ticket) = &ticket {
                    self.revoke_user_tokens(&ticket.tokens).await;
                }
            }
            self.sessions.end(key).await?;
            Ok::<_, GatewayError>(ticket)
        };
        match self.clients().await {
            Ok(clients) => clients.users.with_refresh_lock(&store, key, end).await,
            // Without the IdP's metadata no refresh can be running either.
            Err(_) => end().await,
        }
    }

    /// A login completed in a browser that still carries the cookie of another, live session
    /// (typically: logging in as another user without logging out). The cookie is about to be
    /// replaced, so that session could never be used or logged out again: end it and revoke
    /// its refresh token, as a logout would.
    ///
    /// `new` is the ticket of the session about to be created. When it continues the same
    /// IdP session (same `sub` and the same, present `sid`), the old session is deleted
    /// without revocation: an IdP may revoke the whole grant with one refresh token (many do,
    /// by default), and that grant is the new session's too.
    ///
    /// Never fails the login: a store error is logged and the old session then expires on its
    /// own. Called by the callback just before it creates the new session.
    pub async fn end_replaced_session(&self, headers: &HeaderMap, new: &Ticket) {
        let previous = match self.sessions.lookup(headers).await {
            Ok(Lookup::Active(previous)) => previous,
            Ok(Lookup::Stale | Lookup::Anonymous) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not look up the session this login replaces");
                return;
            }
        };
        let same_idp_session = previous.ticket.sub == new.sub
            && previous.ticket.sid.is_some()
            && previous.ticket.sid == new.sid;
        let revoke = self.settings.oidc.revoke_refresh_token_on_logout && !same_idp_session;
        match self.end_session(previous.key(), revoke).await {
            Ok(_) => tracing::info!(
                same_user = previous.ticket.sub == new.sub,
                revoked = revoke,
                "a new login replaced this browser's session; the previous session was ended"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not end the session this login replaces")
            }
        }
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

    /// Every `load` goes to the store.
    fn fresh(sessions: &'a Sessions) -> Self {
        Self {
            sessions,
            prefetched: std::sync::Mutex::new(None),
        }
    }
}

/// Checks the ID token of a refresh response (OpenID Connect Core 1.0 §12.2): validated as at
/// login (signature against the IdP's JWKS, `iss`, `aud`, `azp`, `exp`, `iat`; the nonce is
/// not checked again), and it must name the session's user: `sub` equal to the session's,
/// `iss` the session's issuer (the one configured, checked by the validation), and an
/// `auth_time` present both at login and now unchanged. A response without an ID token passes
/// (the stored one is kept).
struct RefreshIdTokenValidator {
    provider: Arc<Provider>,
    settings: Arc<GatewaySettings>,
    sessions: Sessions,
    clock: SharedClock,
}

#[async_trait]
impl RefreshValidator for RefreshIdTokenValidator {
    async fn validate(
        &self,
        session: &str,
        _previous: &UserTokens,
        response: &TokenResponse,
    ) -> Result<(), TokenError> {
        let Some(id_token) = response
            .id_token
            .as_ref()
            .filter(|t| !t.expose_secret().is_empty())
        else {
            return Ok(());
        };
        let metadata = self.provider.metadata().await.map_err(check_failed)?;
        let oidc = &self.settings.oidc;
        let claims = id_token::validate(
            &self.provider,
            id_token.expose_secret(),
            &oidc.id_token_algs(&metadata.id_token_signing_alg_values_supported),
            &Expectations {
                client_id: &oidc.client_id,
                trusted_audiences: &oidc.trusted_audiences,
                nonce: None,
                now: self.clock.now_unix(),
                skew: i64::try_from(oidc.clock_skew.as_secs()).unwrap_or(300),
            },
        )
        .await
        .map_err(|e| match e {
            GatewayError::LoginRejected(reason) => {
                TokenError::InvalidRefreshResponse(format!("refreshed {reason}"))
            }
            other => check_failed(other),
        })?;
        // The session's identity is its ticket (from the login's validated ID token), read
        // fresh: the manager holds the refresh lock, so nothing else changes it meanwhile.
        let ticket = match self.sessions.lookup_key_fresh(session).await {
            Ok(Lookup::Active(s)) => s.ticket.clone(),
            // Ended meanwhile (logout, back-channel): nothing to compare with, and nothing
            // will be stored either: the compare-and-set that follows finds no session.
            Ok(Lookup::Stale | Lookup::Anonymous) => return Ok(()),
            Err(e) => return Err(TokenError::Store(e.to_string())),
        };
        same_user(&claims, &ticket).map_err(TokenError::InvalidRefreshResponse)
    }
}

/// A check that could not run (the IdP's metadata or keys unreachable) is transient, not a
/// verdict on the response.
fn check_failed(e: GatewayError) -> TokenError {
    match e {
        GatewayError::IdpTimeout => TokenError::Timeout,
        other => TokenError::Unavailable(other.to_string()),
    }
}

/// The OIDC Core §12.2 identity rules between a refreshed ID token's (validated) claims and
/// the session: the same `sub`; `auth_time` unchanged when both carry it. (`iss` is the
/// configured issuer for both: the validation checked it.)
fn same_user(claims: &Map<String, Value>, ticket: &Ticket) -> Result<(), String> {
    if claims.get("sub").and_then(Value::as_str) != Some(ticket.sub.as_str()) {
        return Err("refreshed ID token names another subject than the session".into());
    }
    let before = ticket
        .claims
        .iter()
        .find(|c| c.kind == "auth_time")
        .map(|c| &c.value);
    if let (Some(before), Some(now)) = (before, claims.get("auth_time")) {
        if before != now {
            return Err("refreshed ID token changes auth_time".into());
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::session::Claim;
    use portcullis_token::{AccessToken, TokenType};
    use serde_json::json;

    fn ticket(sub: &str, auth_time: Option<i64>) -> Ticket {
        let mut claims = vec![Claim {
            kind: "name".into(),
            value: json!("Alice"),
        }];
        if let Some(t) = auth_time {
            claims.push(Claim {
                kind: "auth_time".into(),
                value: json!(t),
            });
        }
        Ticket {
            sub: sub.into(),
            sid: Some("sid-1".into()),
            claims,
            session_state: None,
            tokens: UserTokens {
                access_token: AccessToken {
                    value: Secret::new("at"),
                    token_type: TokenType::Bearer,
                    expires_at: None,
                    scope: None,
                    issued_at: None,
                },
                refresh_token: None,
                id_token: None,
                by_resource: Default::default(),
                dpop_key: None,
            },
        }
    }

    #[test]
    fn refreshed_id_token_must_name_the_sessions_user_oidc_core_12_2() {
        let cases: &[(&str, Value, Option<i64>, bool)] = &[
            ("same sub", json!({"sub": "alice"}), None, true),
            (
                "same sub and auth_time",
                json!({"sub": "alice", "auth_time": 100}),
                Some(100),
                true,
            ),
            ("other sub", json!({"sub": "mallory"}), None, false),
            ("sub missing", json!({}), None, false),
            ("sub not a string", json!({"sub": 7}), None, false),
            (
                "auth_time changed",
                json!({"sub": "alice", "auth_time": 101}),
                Some(100),
                false,
            ),
            (
                "auth_time only now",
                json!({"sub": "alice", "auth_time": 101}),
                None,
                true,
            ),
            (
                "auth_time only at login",
                json!({"sub": "alice"}),
                Some(100),
                true,
            ),
        ];
        for (name, claims, login_auth_time, ok) in cases {
            let claims = claims.as_object().unwrap();
            let result = same_user(claims, &ticket("alice", *login_auth_time));
            assert_eq!(result.is_ok(), *ok, "{name}: {result:?}");
        }
    }

    #[test]
    fn refused_refresh_responses_answer_502_and_keep_the_session() {
        for e in [
            TokenError::InvalidRefreshResponse("other sub".into()),
            TokenError::Malformed("not JSON".into()),
        ] {
            match TokenFailure::from_error(e) {
                TokenFailure::Unavailable(g) => {
                    assert_eq!(g.status().as_u16(), 502);
                    assert_eq!(g.origin(), crate::error::Origin::Idp);
                }
                other => panic!("{other:?}"),
            }
        }
        let refused = TokenError::RefreshRefused {
            status: 400,
            error: "http_400".into(),
            description: None,
        };
        assert!(matches!(
            TokenFailure::from_error(refused),
            TokenFailure::SessionEnded(_)
        ));
    }
}
