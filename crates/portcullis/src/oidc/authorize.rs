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
    /// Local path (already validated) to send the browser to after login.
    pub return_url: String,
    /// `prompt=none`: the flow ends at the silent-login callback.
    pub silent: bool,
    /// When the transaction was created, seconds since the Unix epoch.
    pub created: i64,
}

impl std::fmt::Debug for LoginTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginTransaction")
            .field("return_url", &self.return_url)
            .field("silent", &self.silent)
            .field("created", &self.created)
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
            return_url,
            silent,
            created: now,
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
}

/// Builds the authorization URL (code flow, PKCE S256, state, nonce).
///
/// Adds `response_type=code`, `client_id`, `redirect_uri`, `scope`, `state`, `nonce`,
/// `code_challenge` + `code_challenge_method=S256`, `response_mode`, then `prompt`,
/// `resource` and the extra parameters when set (OIDC Core §3.1.2.1, RFC 7636 §4.3,
/// RFC 8707 §2).
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
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", req.client_id)
            .append_pair("redirect_uri", req.redirect_uri)
            .append_pair("scope", &req.scopes.join(" "))
            .append_pair("state", &tx.state)
            .append_pair("nonce", &tx.nonce)
            .append_pair("code_challenge", &tx.pkce_challenge())
            .append_pair("code_challenge_method", "S256")
            .append_pair("response_mode", req.response_mode);
        if let Some(p) = req.prompt {
            q.append_pair("prompt", p);
        }
        if let Some(r) = req.resource {
            q.append_pair("resource", r);
        }
        for (k, v) in req.extra {
            q.append_pair(k, v);
        }
    }
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
        assert_ne!(tx.state, tx.nonce);
    }
}
