//! Typed gateway settings.
//!
//! These are already-validated values ("parse, don't validate"): the binary reads its TOML
//! file, collects every error at once, and only then builds a [`GatewaySettings`]. Library
//! users build them in code. Nothing here reads files or the environment.

use std::time::Duration;

use portcullis_token::Secret;
use url::Url;

use crate::cookie::CookieSettings;
use crate::csrf::AntiForgery;

/// Everything the gateway needs to run.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Origin (and optional base path) the browser uses. Redirect URIs derive from it.
    pub public_url: Url,
    /// Base path of the management endpoints (`/bff`, or empty for `/`).
    pub base_path: String,
    /// Path of the OIDC redirect URI (`redirect_uri` = public origin + this path), e.g.
    /// `/signin-oidc`.
    pub callback_path: String,
    /// Path of the post-logout redirect URI (public origin + this path), e.g.
    /// `/signout-callback-oidc`.
    pub signed_out_callback_path: String,
    /// The OpenID Provider and this client's registration with it.
    pub oidc: OidcSettings,
    /// Session lifetimes, partitioning and caching.
    pub session: SessionSettings,
    /// Session cookie name and attributes.
    pub cookies: CookieSettings,
    /// How API and management requests prove they come from the frontend (`X-CSRF: 1`).
    pub anti_forgery: AntiForgery,
    /// Proxied API routes, matched by path prefix.
    pub routes: Vec<RouteSettings>,
    /// Access-token refresh and client-credentials settings.
    pub tokens: TokenSettings,
    /// Serve `/bff/diagnostics` (token fingerprints and session metadata, never token values).
    pub diagnostics: bool,
    /// Trust `X-Forwarded-*` headers from the peer (only behind a proxy you run).
    pub trust_forwarded_headers: bool,
    /// Origins allowed to open WebSocket connections through API routes. Empty (default):
    /// the frontend's own origin. The origins [`cors`](Self::cors) lists are allowed as well.
    pub websocket_origins: Vec<String>,
    /// Host names (`host` or `host:port`) requests may name besides the public URL's host and
    /// the frontends' `match_host`; any other `Host` is answered 421 before anything runs (a
    /// DNS-rebinding defence). Empty by default.
    pub allowed_hosts: Vec<String>,
    /// Split-origin CORS (Fetch Standard §3.2) for this frontend's API routes and management
    /// endpoints: which other origins may call them from script with credentials (see
    /// [`crate::cors`]). `None` (default, and right for every same-origin deployment): the
    /// gateway sends no `Access-Control-*` header at all.
    pub cors: Option<crate::cors::CorsSettings>,
}

/// The OpenID Provider (issuer) and how this gateway authenticates to it as an OAuth 2.0
/// confidential client (OIDC Core; RFC 6749).
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// Issuer identifier exactly as the IdP spells it (compared byte for byte with the
    /// discovery document and the `iss` of every token).
    pub issuer: String,
    /// `client_id` registered at the IdP (RFC 6749 §2.2).
    pub client_id: String,
    /// How the gateway authenticates at the token, revocation and exchange endpoints.
    pub client_auth: ClientAuthSettings,
    /// Scopes requested at login (space-joined into `scope`); should include `openid`.
    pub scopes: Vec<String>,
    /// Extra parameters sent on the authorization request (e.g. `audience`).
    pub extra_authorize_params: Vec<(String, String)>,
    /// How the IdP returns the authorization response: `query` (default) or `form_post`.
    pub response_mode: ResponseMode,
    /// RFC 8707 resource sent on the authorization and code-exchange requests.
    pub resource: Option<String>,
    /// Revoke the refresh token at logout (RFC 7009). On by default.
    pub revoke_refresh_token_on_logout: bool,
    /// Allowed clock skew for ID-token and logout-token time checks.
    pub clock_skew: Duration,
    /// Fetch claims from the UserInfo endpoint after login.
    pub fetch_userinfo: bool,
    /// Back-channel logout: end every session of the `sub`, not only the one with the `sid`.
    pub backchannel_logout_all_sessions: bool,
    /// Audiences besides `client_id` an ID token's `aud` may name (OIDC Core §3.1.3.7 (3));
    /// an ID token naming any other is refused. Empty by default.
    pub trusted_audiences: Vec<String>,
    /// Timeout of calls to the IdP (discovery, token endpoint).
    pub http_timeout: Duration,
    /// DPoP (RFC 9449): sender-constrained access and refresh tokens. `None` (default): off.
    pub dpop: Option<DpopSettings>,
    /// Pushed authorization requests (RFC 9126). Default [`ParMode::Off`].
    pub par: ParMode,
    /// A security profile whose extra checks the gateway applies at run time. Default
    /// [`SecurityProfile::Default`].
    pub profile: SecurityProfile,
}

/// DPoP (RFC 9449) for the gateway's own client.
///
/// **One gateway key (default, `session_key_alg: None`).** `key` signs a proof for each token
/// request (code exchange, refresh, client credentials, token exchange) and for each proxied
/// call with a DPoP-bound token; its RFC 7638 thumbprint is the `dpop_jkt` of the
/// authorization request. The binary keeps it in a key file in the data directory (generated
/// at first start, mode 0600), never in the session store: one secret to protect, readable by
/// every instance that shares the data directory or is given the same file.
///
/// **A key per session (`session_key_alg: Some(alg)`, `per_session = true`).** Each login
/// makes a fresh key of `alg` (ES256 or EdDSA): its thumbprint is that login's `dpop_jkt`, it
/// proves the code exchange, every refresh and every proxied call of that session, and its
/// private JWK lives only in the session's sealed ticket
/// ([`UserTokens::dpop_key`](portcullis_token::UserTokens::dpop_key)). Between the
/// authorization request and the callback it is not stored anywhere: it is derived again from
/// the session key ring, the login's `state` and PKCE verifier
/// ([`crate::token::session_key`]). A leaked key (with its tokens) then binds one session
/// only; the price is making the key twice per login (well under a millisecond each), some
/// 200 bytes more per ticket, and private keys in the store (encrypted under the key ring, as
/// the refresh tokens are). `key` stays in use for client credentials and for sessions made
/// before the switch (no key in their ticket), which keep working unchanged.
///
/// **Why one key is the default.** It keeps the key out of the session store: whoever steals
/// the store and the session key ring gets every session's tokens, but without the key file
/// cannot use them. With per-session keys, key and tokens sit in the same sealed ticket, so
/// that theft yields both; what per-session keys limit instead is a leak of one session's
/// key and tokens, and a key file shared by (or copied between) many instances.
#[derive(Clone)]
pub struct DpopSettings {
    /// The gateway's proof-of-possession key.
    pub key: std::sync::Arc<portcullis_token::DpopKey>,
    /// `Some(alg)`: a fresh key of `alg` per session (see above). `None`: `key` for all.
    pub session_key_alg: Option<portcullis_token::SigningAlg>,
}

impl std::fmt::Debug for DpopSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopSettings")
            .field("alg", &self.key.alg())
            .field("jkt", &self.key.thumbprint())
            .field("session_key_alg", &self.session_key_alg)
            .finish()
    }
}

/// When to use pushed authorization requests (RFC 9126).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParMode {
    /// Never: the authorization request travels in the redirect's query string. Default, so
    /// existing deployments keep their front-channel request; an IdP that requires PAR (for
    /// all clients, per its discovery document) is used with PAR anyway.
    #[default]
    Off,
    /// When discovery advertises `pushed_authorization_request_endpoint`.
    Auto,
    /// Always; a login fails with a clear error if the IdP has no PAR endpoint.
    Required,
}

/// A security profile the gateway enforces at run time (the binary's `oidc.profile`; its
/// configuration checks refuse settings that contradict it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProfile {
    /// No profile beyond the gateway's own defaults.
    #[default]
    Default,
    /// FAPI 2.0 Security Profile (final, 2025): RFC 9207 `iss` required on every authorization
    /// response; ID tokens only PS256, ES256 or EdDSA; client assertions name the issuer
    /// identifier as their `aud`.
    Fapi2,
}

/// ID-token algorithms FAPI 2.0 §5.4.1 (5.4: cryptography) allows.
pub const FAPI2_ALGS: [&str; 3] = ["PS256", "ES256", "EdDSA"];

impl OidcSettings {
    /// The ID-token signature algorithms to accept given the IdP's advertised list
    /// (empty = the gateway's default allow-list): under FAPI 2.0 exactly [`FAPI2_ALGS`].
    pub fn id_token_algs(&self, advertised: &[String]) -> Vec<String> {
        match self.profile {
            SecurityProfile::Default => advertised.to_vec(),
            SecurityProfile::Fapi2 => FAPI2_ALGS.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

/// OAuth 2.0 response mode of the authorization request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// The IdP redirects the browser to the callback with the response in the query string.
    Query,
    /// The IdP POSTs the response to the callback; login cookies become `SameSite=None`.
    FormPost,
}

impl ResponseMode {
    /// The `response_mode` parameter value: `"query"` or `"form_post"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::FormPost => "form_post",
        }
    }
}

#[derive(Clone)]
/// Client authentication at the IdP's endpoints (RFC 6749 §2.3.1, OIDC Core §9). `Debug`
/// never shows secrets or keys.
pub enum ClientAuthSettings {
    /// `client_secret_basic`: the secret in an HTTP Basic `Authorization` header.
    ClientSecretBasic(Secret),
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    ClientSecretPost(Secret),
    /// PEM or JWK text of the private key, plus the algorithm and key id.
    /// `private_key_jwt`: a signed client assertion (RFC 7523) instead of a secret.
    PrivateKeyJwt {
        /// The private key, PEM or JWK text.
        key_pem: Secret,
        /// JWS algorithm of the assertion, e.g. `"RS256"` or `"ES256"`.
        alg: String,
        /// `kid` header of the assertion, if the IdP needs one to find the key.
        kid: Option<String>,
    },
}

impl std::fmt::Debug for ClientAuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientSecretBasic(_) => f.write_str("ClientSecretBasic([redacted])"),
            Self::ClientSecretPost(_) => f.write_str("ClientSecretPost([redacted])"),
            Self::PrivateKeyJwt { alg, kid, .. } => f
                .debug_struct("PrivateKeyJwt")
                .field("alg", alg)
                .field("kid", kid)
                .finish_non_exhaustive(),
        }
    }
}

#[derive(Debug, Clone)]
/// Session lifetimes, partitioning and caching. `Default` gives 8 h idle, 7 days absolute,
/// partition `"default"`, cleanup every 5 min, 5 pending logins of 10 min, a 10 s cache of
/// up to 100 000 sessions.
pub struct SessionSettings {
    /// Sliding (idle) timeout.
    pub idle_timeout: Duration,
    /// Hard limit from login; refreshes and activity never extend it.
    pub absolute_timeout: Duration,
    /// The frontend this gateway serves; sessions are partitioned by it.
    pub partition: String,
    /// `/bff/user` for anonymous users: `false` → 401 (default), `true` → 200 `null`.
    pub anonymous_user_is_null: bool,
    /// How often expired sessions are purged from the store.
    pub cleanup_interval: Duration,
    /// Maximum pending login transactions (tabs logging in at once) per browser.
    pub max_pending_logins: usize,
    /// Lifetime of a pending login.
    pub login_timeout: Duration,
    /// How long a session may be served from the in-process cache without asking the store
    /// (the staleness bound when invalidations are lost). Zero disables the cache.
    pub cache_ttl: Duration,
    /// Most sessions kept in the in-process cache.
    pub cache_capacity: u64,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(8 * 3600),
            absolute_timeout: Duration::from_secs(7 * 24 * 3600),
            partition: "default".into(),
            anonymous_user_is_null: false,
            cleanup_interval: Duration::from_secs(300),
            max_pending_logins: 5,
            login_timeout: Duration::from_secs(600),
            cache_ttl: Duration::from_secs(10),
            cache_capacity: 100_000,
        }
    }
}

/// The token a proxied route attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPolicy {
    /// No token: the request is forwarded without `Authorization`.
    None,
    /// The user's access token; anonymous requests are refused (401).
    User,
    /// The user's access token when logged in; anonymous requests are forwarded without one.
    UserOrNone,
    /// A client-credentials token (RFC 6749 §4.4) of the gateway or a named client.
    Client,
    /// The user's access token when logged in, otherwise a client-credentials token.
    UserOrClient,
    /// The user's token exchanged (RFC 8693) for this route's audience/resource/scope.
    Exchange,
}

impl TokenPolicy {
    /// Parses the configuration spelling: `none`, `user`, `user_or_none`, `client`,
    /// `user_or_client` or `exchange`. `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "user" => Self::User,
            "user_or_none" => Self::UserOrNone,
            "client" => Self::Client,
            "user_or_client" => Self::UserOrClient,
            "exchange" => Self::Exchange,
            _ => return None,
        })
    }
}

/// One proxied API route: a path prefix mapped to a fixed upstream.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// Normalised prefix: starts with `/`, no trailing slash (except `/` itself is refused).
    pub path: String,
    /// Upstream base URL the prefix maps to.
    pub upstream: Url,
    /// Which token is attached to forwarded requests.
    pub token: TokenPolicy,
    /// `false` only through the loudly named opt-out.
    pub anti_forgery: bool,
    /// RFC 8707 resource for this route's user/client token.
    pub resource: Option<String>,
    /// Scope requested for this route's token (client-credentials or exchange).
    pub scope: Option<String>,
    /// `audience` parameter for token exchange (RFC 8693).
    pub audience: Option<String>,
    /// Refresh this route's user token when it expires within this (overrides the global).
    pub refresh_before_expiry: Option<Duration>,
    /// Named client-credentials client for `client` / `user_or_client` (default: the gateway's).
    pub client: Option<String>,
    /// Time to wait for the upstream's response headers.
    pub timeout: Duration,
    /// Required claims and step-up rules (RFC 9470); `Default`: none.
    pub access: crate::access::RouteAccess,
    /// Largest request body in bytes this route forwards: a declared `Content-Length` over it
    /// is answered 413 before anything else of the route runs, and a body without one is cut
    /// there (413 as well). `None`: the route sets no limit of its own (a server in front
    /// may; the `portcullis` binary always sets one: `max_body`, else
    /// `server.max_request_body`).
    pub max_body: Option<u64>,
}

#[derive(Debug, Clone)]
/// Access-token timing and extra clients. `Default`: refresh 60 s before expiry, client
/// token buffer 60 s, no extra clients.
pub struct TokenSettings {
    /// Refresh a user's access token when it expires within this duration (per-route
    /// override: [`RouteSettings::refresh_before_expiry`]).
    pub refresh_before_expiry: Duration,
    /// A cached client-credentials token is renewed when it expires within this duration.
    pub client_token_buffer: Duration,
    /// Extra named client-credentials clients.
    pub clients: Vec<NamedClientSettings>,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            refresh_before_expiry: Duration::from_secs(60),
            client_token_buffer: Duration::from_secs(60),
            clients: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
/// An extra client-credentials client (RFC 6749 §4.4) that routes name in
/// [`RouteSettings::client`].
pub struct NamedClientSettings {
    /// Name routes refer to it by.
    pub name: String,
    /// Token endpoint; `None` = the OIDC issuer's.
    pub token_endpoint: Option<Url>,
    /// `client_id` at the token endpoint.
    pub client_id: String,
    /// How this client authenticates at the token endpoint.
    pub client_auth: ClientAuthSettings,
    /// `scope` requested, if any.
    pub scope: Option<String>,
    /// RFC 8707 `resource` requested, if any.
    pub resource: Option<String>,
    /// Extra form parameters sent on the token request (e.g. `audience`).
    pub extra: Vec<(String, String)>,
    /// This client's own DPoP key (RFC 9449), if it has one: its token requests carry proofs
    /// of it, its tokens are bound to it, and routes using this client prove it on every call
    /// (`Authorization: DPoP` + proof). `None`: no proofs (Bearer tokens).
    pub dpop_key: Option<std::sync::Arc<portcullis_token::DpopKey>>,
}
