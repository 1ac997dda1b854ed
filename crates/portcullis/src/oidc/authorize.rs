//! The start of a login: transaction, PKCE, authorization URL, local-only return URLs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A pending login. Sealed into a per-`state` cookie bound to the browser; lives minutes.
#[derive(Clone, Serialize, Deserialize)]
pub struct LoginTransaction {
    /// OAuth 2.0 `state` (RFC 6749 §10.12): 256 random bits, base64url; binds the callback to
    /// this transaction and names its cookie.
    pub state: String,
    /// OIDC `nonce` (OIDC Core §3.1.2.1): 256 random bits, base64url; must come back in the ID
    /// token.
    pub nonce: String,
    /// PKCE `code_verifier` (RFC 7636 §4.1): 256 random bits, base64url (43 characters).
    pub pkce_verifier: String,
    /// With per-session DPoP keys: which ring key and algorithm made this login's key (never
    /// the key itself; see [`crate::token::session_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_key: Option<crate::token::session_key::SessionKeyRef>,
    /// Local path (already validated) to send the browser to after login.
    pub return_url: String,
    /// `prompt=none`: the flow ends at the silent-login callback.
    pub silent: bool,
    /// When the transaction was created, seconds since the Unix epoch.
    pub created: i64,
    /// `acr_values` requested for a step-up (OIDC Core §3.1.2.1); the ID token's `acr` must
    /// be one of them. Empty for an ordinary login.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acr_values: Vec<String>,
    /// `max_age` requested (seconds); the ID token's `auth_time` must be within it (OIDC
    /// Core §3.1.3.7 (13)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
}

impl std::fmt::Debug for LoginTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginTransaction")
            .field("return_url", &self.return_url)
            .field("silent", &self.silent)
            .field("created", &self.created)
            .field("acr_values", &self.acr_values)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl LoginTransaction {
    /// A fresh transaction with random `state`, `nonce` and PKCE verifier; `now` is the current
    /// time in Unix seconds.
    pub fn new(return_url: String, silent: bool, now: i64) -> Self {
        Self {
            state: random_token(),
            nonce: random_token(),
            pkce_verifier: random_token(),
            dpop_key: None,
            return_url,
            silent,
            created: now,
            acr_values: Vec::new(),
            max_age: None,
        }
    }

    /// RFC 7636 S256 challenge of the verifier.
    pub fn pkce_challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.pkce_verifier.as_bytes()))
    }
}

/// 256 random bits, base64url.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Parameters of one authorization request.
#[derive(Debug)]
pub struct AuthorizeRequest<'a> {
    /// The IdP's `authorization_endpoint` from discovery (absolute URL).
    pub authorization_endpoint: &'a str,
    /// `client_id` (RFC 6749 §4.1.1).
    pub client_id: &'a str,
    /// `redirect_uri`: the gateway's callback URL.
    pub redirect_uri: &'a str,
    /// Scopes, space-joined into `scope`.
    pub scopes: &'a [String],
    /// `prompt` (OIDC Core §3.1.2.1), e.g. `none` for silent login.
    pub prompt: Option<&'a str>,
    /// RFC 8707 `resource` indicator.
    pub resource: Option<&'a str>,
    /// `response_mode`: `query` or `form_post`.
    pub response_mode: &'a str,
    /// Extra query parameters appended as given (e.g. `audience`).
    pub extra: &'a [(String, String)],
    /// RFC 9449 §10 `dpop_jkt`: the thumbprint of the DPoP key that will redeem the code.
    pub dpop_jkt: Option<&'a str>,
    /// `acr_values` (OIDC Core §3.1.2.1), space-separated, for a step-up login.
    pub acr_values: Option<&'a str>,
    /// `max_age` in seconds (OIDC Core §3.1.2.1).
    pub max_age: Option<u64>,
}

/// The parameters of an authorization request (code flow, PKCE S256, state, nonce), in
/// order: `response_type=code`, `client_id`, `redirect_uri`, `scope`, `state`, `nonce`,
/// `code_challenge` + `code_challenge_method=S256`, `response_mode`, then `prompt`,
/// `acr_values`, `max_age`, `resource`, `dpop_jkt` and the extra parameters when set (OIDC
/// Core §3.1.2.1, RFC 7636 §4.3, RFC 8707 §2, RFC 9449 §10); an extra parameter whose name is
/// already in the list is left out. The same list goes in the query string or, with PAR,
/// in the pushed request body (RFC 9126 §2.1).
pub fn authorization_params(
    req: &AuthorizeRequest<'_>,
    tx: &LoginTransaction,
) -> Vec<(String, String)> {
    let mut q: Vec<(String, String)> = [
        ("response_type", "code".to_owned()),
        ("client_id", req.client_id.to_owned()),
        ("redirect_uri", req.redirect_uri.to_owned()),
        ("scope", req.scopes.join(" ")),
        ("state", tx.state.clone()),
        ("nonce", tx.nonce.clone()),
        ("code_challenge", tx.pkce_challenge()),
        ("code_challenge_method", "S256".to_owned()),
        ("response_mode", req.response_mode.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(p) = req.prompt {
        q.push(("prompt".into(), p.to_owned()));
    }
    if let Some(acr) = req.acr_values {
        q.push(("acr_values".into(), acr.to_owned()));
    }
    if let Some(max_age) = req.max_age {
        q.push(("max_age".into(), max_age.to_string()));
    }
    if let Some(r) = req.resource {
        q.push(("resource".into(), r.to_owned()));
    }
    if let Some(jkt) = req.dpop_jkt {
        q.push(("dpop_jkt".into(), jkt.to_owned()));
    }
    // A parameter may appear only once (RFC 6749 §3.1; oidc-provider, Keycloak and others
    // refuse the request otherwise): an extra parameter the gateway already sets for this
    // login (a step-up's `acr_values`/`max_age`, a silent login's `prompt`, ...) gives way.
    for (name, value) in req.extra {
        if !q.iter().any(|(n, _)| n == name) {
            q.push((name.clone(), value.clone()));
        }
    }
    q
}

/// Builds the authorization URL: the endpoint with [`authorization_params`] added to its
/// query.
///
/// # Errors
///
/// A message if `authorization_endpoint` is not a URL.
pub fn authorization_url(
    req: &AuthorizeRequest<'_>,
    tx: &LoginTransaction,
) -> Result<url::Url, String> {
    let mut url = url::Url::parse(req.authorization_endpoint)
        .map_err(|e| format!("authorization_endpoint is not a URL: {e}"))?;
    url.query_pairs_mut()
        .extend_pairs(authorization_params(req, tx));
    Ok(url)
}

/// The front-channel URL after a pushed authorization request (RFC 9126 §4): the
/// authorization endpoint with `client_id` and `request_uri` only.
///
/// # Errors
///
/// A message if `authorization_endpoint` is not a URL.
pub fn pushed_authorization_url(
    authorization_endpoint: &str,
    client_id: &str,
    request_uri: &str,
) -> Result<url::Url, String> {
    let mut url = url::Url::parse(authorization_endpoint)
        .map_err(|e| format!("authorization_endpoint is not a URL: {e}"))?;
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("request_uri", request_uri);
    Ok(url)
}

/// Why a return URL was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReturnUrlError {
    #[error("returnUrl must be a local path starting with a single '/'")]
    /// Not a path starting with exactly one `/` (absolute URLs, `//host`, `/\host` are refused).
    NotLocal,
    #[error("returnUrl must not contain control characters")]
    /// Contains control characters, raw or percent-encoded.
    ControlCharacters,
    #[error("returnUrl is too long")]
    /// Longer than 2 KiB.
    TooLong,
}

/// Accepts only local paths: one leading `/`, not `//…` or `/\…`, no control characters
/// (raw or percent-encoded), at most 2 KiB. Browsers strip tabs and newlines and read `\`
/// as `/`, which is how `/\t/evil.example` or `/\evil.example` become open redirects.
pub fn validate_return_url(raw: &str) -> Result<&str, ReturnUrlError> {
    if raw.len() > 2048 {
        return Err(ReturnUrlError::TooLong);
    }
    let decoded = percent_encoding::percent_decode_str(raw).collect::<Vec<u8>>();
    if raw.chars().any(char::is_control) || decoded.iter().any(|b| b.is_ascii_control()) {
        return Err(ReturnUrlError::ControlCharacters);
    }
    let bytes = raw.as_bytes();
    match bytes {
        [b'/'] => Ok(raw),
        [b'/', second, ..] if *second != b'/' && *second != b'\\' => Ok(raw),
        _ => Err(ReturnUrlError::NotLocal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_url_table() {
        let cases = [
            ("/", true),
            ("/app/page?x=1#frag", true),
            ("/a/b\\c", true),
            ("//evil.example", false),
            ("/\\evil.example", false),
            ("https://evil.example", false),
            ("http:/evil", false),
            ("evil", false),
            ("", false),
            ("../x", false),
            ("/\t/evil.example", false),
            ("/%09/evil.example", false),
            ("/ok%0d%0aSet-Cookie:x", false),
            ("/\u{0}", false),
            ("/\u{85}x", false),
        ];
        for (url, ok) in cases {
            assert_eq!(validate_return_url(url).is_ok(), ok, "{url:?}");
        }
        assert_eq!(
            validate_return_url(&format!("/{}", "a".repeat(3000))),
            Err(ReturnUrlError::TooLong)
        );
    }

    #[test]
    fn authorization_url_has_pkce_state_nonce() {
        let tx = LoginTransaction::new("/".into(), false, 0);
        let scopes = vec!["openid".to_owned(), "profile".to_owned()];
        let url = authorization_url(
            &AuthorizeRequest {
                authorization_endpoint: "https://idp/auth?x=1",
                client_id: "spa",
                redirect_uri: "https://app/signin-oidc",
                scopes: &scopes,
                prompt: Some("login"),
                resource: None,
                response_mode: "query",
                extra: &[],
                dpop_jkt: Some("jkt"),
                acr_values: Some("urn:example:mfa 1"),
                max_age: Some(0),
            },
            &tx,
        )
        .unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["x"], "1");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["code_challenge"], tx.pkce_challenge());
        assert_eq!(q["state"], tx.state);
        assert_eq!(q["nonce"], tx.nonce);
        assert_eq!(q["scope"], "openid profile");
        assert_eq!(q["prompt"], "login");
        assert_eq!(q["dpop_jkt"], "jkt");
        assert_eq!(q["acr_values"], "urn:example:mfa 1");
        assert_eq!(q["max_age"], "0");
        assert_ne!(tx.state, tx.nonce);
    }

    /// Regression: `oidc.extra_authorize_params` that name a parameter the login sets itself
    /// (a baseline `acr_values` beside a step-up's, `prompt` beside a silent login's
    /// `prompt=none`, `state`) were sent twice, and IdPs refuse a repeated parameter
    /// (RFC 6749 §3.1), so every step-up or silent login failed. The login's own value wins.
    #[test]
    fn extra_authorize_params_never_repeat_a_parameter_the_login_sets() {
        let tx = LoginTransaction::new("/".into(), false, 0);
        let scopes = vec!["openid".to_owned()];
        let extra = [
            ("acr_values".to_owned(), "urn:example:pwd".to_owned()),
            ("prompt".to_owned(), "login".to_owned()),
            ("state".to_owned(), "planted".to_owned()),
            ("audience".to_owned(), "my-api".to_owned()),
        ];
        let request = |acr_values, prompt| AuthorizeRequest {
            authorization_endpoint: "https://idp/auth",
            client_id: "spa",
            redirect_uri: "https://app/signin-oidc",
            scopes: &scopes,
            prompt,
            resource: None,
            response_mode: "query",
            extra: &extra,
            dpop_jkt: None,
            acr_values,
            max_age: None,
        };
        let count = |params: &[(String, String)], name: &str| {
            params.iter().filter(|(n, _)| n == name).count()
        };
        let step_up = authorization_params(&request(Some("urn:example:mfa"), Some("none")), &tx);
        for name in ["acr_values", "prompt", "state", "audience"] {
            assert_eq!(count(&step_up, name), 1, "{name}: {step_up:?}");
        }
        let value = |params: &[(String, String)], name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(value(&step_up, "acr_values").unwrap(), "urn:example:mfa");
        assert_eq!(value(&step_up, "prompt").unwrap(), "none");
        assert_eq!(value(&step_up, "state").unwrap(), tx.state);
        // An ordinary login still sends the operator's extras.
        let plain = authorization_params(&request(None, None), &tx);
        assert_eq!(value(&plain, "acr_values").unwrap(), "urn:example:pwd");
        assert_eq!(value(&plain, "prompt").unwrap(), "login");
        assert_eq!(count(&plain, "state"), 1);
    }
}
