//! Cookies the gateway sets: the session cookie and the per-login transaction cookies.
//!
//! The session cookie holds only an opaque random id (256 bits, base64url); everything else
//! lives server-side. Defaults follow the `__Host-` prefix rules (`Secure`, `Path=/`, no
//! `Domain`) and `SameSite=Strict`. Login-transaction cookies are separate and `SameSite=Lax`,
//! because the browser must send them on the top-level navigation back from a cross-site
//! IdP; one exists per pending login (keyed by `state`), so tabs do not overwrite each other,
//! and their number is capped so they never pile up into a `431`.
//!
//! Caveat: on plain `http://` (allowed for loopback development only) the `__Host-`/`__Secure-`
//! prefixes and the `Secure` attribute are dropped, with a warning at start-up.

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use url::Url;

/// `SameSite` attribute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`: never sent on cross-site requests.
    Strict,
    /// `SameSite=Lax`: sent on top-level cross-site navigations (GET).
    Lax,
    /// `SameSite=None`: sent on every request; requires `Secure`.
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "Strict",
            Self::Lax => "Lax",
            Self::None => "None",
        }
    }
}

/// Validated cookie settings: names already obey the prefix rules for the public URL.
#[derive(Debug, Clone)]
pub struct CookieSettings {
    session_name: String,
    login_prefix: String,
    secure: bool,
    same_site: SameSite,
    login_same_site: SameSite,
}

impl CookieSettings {
    /// Builds the settings for a public URL. `name` defaults to `__Host-bff-auth`.
    ///
    /// On `http://` (only accepted for loopback hosts) prefixes and `Secure` are dropped.
    /// Errors list every rule the combination breaks.
    pub fn for_public_url(
        public_url: &Url,
        name: Option<&str>,
        same_site: SameSite,
    ) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let https = public_url.scheme() == "https";
        if !https && !is_loopback_url(public_url) {
            errors.push(format!(
                "public_url {public_url} uses http:// for a non-loopback host; only https:// is allowed there"
            ));
        }
        let requested = name.unwrap_or("__Host-bff-auth");
        if requested.is_empty() || !requested.bytes().all(is_cookie_name_byte) {
            errors.push(format!(
                "cookie name {requested:?} has characters a cookie name cannot have"
            ));
        }
        let session_name = if https {
            requested.to_owned()
        } else {
            strip_prefix(requested).to_owned()
        };
        if same_site == SameSite::None && !https {
            errors.push("SameSite=None needs https".into());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let login_prefix = if https {
            "__Host-bff-login."
        } else {
            "bff-login."
        }
        .to_owned();
        Ok(Self {
            session_name,
            login_prefix,
            secure: https,
            same_site,
            login_same_site: SameSite::Lax,
        })
    }

    /// Login-transaction cookies with `SameSite=None`, for `response_mode=form_post`: a
    /// cross-site IdP returns with a POST, on which browsers do not send `Lax` cookies.
    /// Needs https (`SameSite=None` requires `Secure`).
    pub fn with_cross_site_login_cookies(mut self) -> Result<Self, String> {
        if !self.secure {
            return Err("response_mode = \"form_post\" needs an https public_url (SameSite=None cookies must be Secure)".into());
        }
        self.login_same_site = SameSite::None;
        Ok(self)
    }

    /// The same settings for a named (non-default) frontend: its login-transaction cookies
    /// get their own prefix (`__Host-bff-login.{frontend}.`), so one frontend's logins never
    /// count against, clear or complete another's. The session cookie name is kept as given
    /// (the configuration derives a distinct one per frontend).
    pub fn for_frontend(mut self, frontend: &str) -> Self {
        self.login_prefix = format!("{}{frontend}.", self.login_prefix);
        self
    }

    /// Prefix of this frontend's login-transaction cookie names.
    pub fn login_prefix(&self) -> &str {
        &self.login_prefix
    }

    /// Name of the session cookie.
    pub fn session_name(&self) -> &str {
        &self.session_name
    }
    /// Whether cookies carry `Secure` (the public URL is https).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// `Set-Cookie` for a session id, persistent for `max_age_secs` (the remaining absolute
    /// lifetime). Validity is decided server-side; the cookie only carries the id.
    pub fn session_cookie(&self, session_id: &SessionId, max_age_secs: i64) -> HeaderValue {
        self.build(
            &self.session_name,
            session_id.as_str(),
            self.same_site,
            Some(max_age_secs),
        )
    }

    /// `Set-Cookie` that deletes the session cookie (empty value, `Max-Age=0`).
    pub fn clear_session_cookie(&self) -> HeaderValue {
        self.build(&self.session_name, "", self.same_site, Some(0))
    }

    /// Name of the transaction cookie for a login `state`.
    pub fn login_cookie_name(&self, state: &str) -> String {
        let digest = Sha256::digest(state.as_bytes());
        format!(
            "{}{}",
            self.login_prefix,
            &URL_SAFE_NO_PAD.encode(digest)[..16]
        )
    }

    /// `Set-Cookie` for a login-transaction cookie `name` (see
    /// [`login_cookie_name`](Self::login_cookie_name)) holding the sealed transaction `value`,
    /// for `max_age_secs` seconds. Uses the login `SameSite` (`None` with `form_post`).
    pub fn login_cookie(&self, name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
        self.build(name, value, self.login_same_site, Some(max_age_secs))
    }

    /// `Set-Cookie` that deletes the login-transaction cookie `name`.
    pub fn clear_cookie_named(&self, name: &str) -> HeaderValue {
        self.build(name, "", self.login_same_site, Some(0))
    }

    /// All login-transaction cookies the browser sent: `(name, value)`.
    pub fn login_cookies<'a>(&self, headers: &'a HeaderMap) -> Vec<(&'a str, &'a str)> {
        // Another frontend's prefix extends this one with its name and a dot
        // (`__Host-bff-login.` + `admin.`): a remainder with a dot is never ours. Anything else
        // under our prefix is ours, valid or junk (so junk is cleaned up, a bounded part per
        // login).
        request_cookies(headers)
            .filter(|(n, _)| {
                n.strip_prefix(self.login_prefix.as_str())
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains('.'))
            })
            .collect()
    }

    /// The session id from the request, if the cookie is present and well-formed.
    /// `Err(())` means a cookie was present but malformed (clear it).
    pub fn session_id(&self, headers: &HeaderMap) -> Option<Result<SessionId, ()>> {
        let (_, value) = request_cookies(headers).find(|(n, _)| *n == self.session_name)?;
        Some(SessionId::parse(value).ok_or(()))
    }

    fn build(
        &self,
        name: &str,
        value: &str,
        same_site: SameSite,
        max_age: Option<i64>,
    ) -> HeaderValue {
        let mut s = format!(
            "{name}={value}; Path=/; HttpOnly; SameSite={}",
            same_site.as_str()
        );
        if self.secure {
            s.push_str("; Secure");
        }
        if let Some(age) = max_age {
            s.push_str(&format!("; Max-Age={}", age.max(0)));
        }
        // Names and values are validated or base64url, so this cannot fail; fall back to an
        // expiring empty cookie rather than panic.
        HeaderValue::from_str(&s)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
    }
}

/// Iterates over `name=value` pairs of every `Cookie` header. Pairs are split on the bytes,
/// so one pair that is not UTF-8 (another application's cookie on the same host) is skipped
/// alone instead of hiding every other cookie of its header.
pub fn request_cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let (n, v) = std::str::from_utf8(pair).ok()?.trim().split_once('=')?;
            Some((n.trim(), v.trim()))
        })
}

fn strip_prefix(name: &str) -> &str {
    name.strip_prefix("__Host-")
        .or_else(|| name.strip_prefix("__Secure-"))
        .unwrap_or(name)
}

fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether the URL's host is a loopback address or `localhost`.
pub fn is_loopback_url(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The opaque session id held by the browser: 32 random bytes, base64url without padding.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh random session id (256 bits from the OS-seeded RNG).
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Accepts only the exact shape the gateway issues.
    pub fn parse(value: &str) -> Option<Self> {
        (value.len() == 43
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Self(value.to_owned()))
    }

    /// The id as sent in the cookie (43 base64url characters).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The store key: base64url(SHA-256(id)). A leaked store never yields usable cookies.
    pub fn store_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn login_cookies_of_other_frontends_are_never_read_or_cleared() {
        let base =
            CookieSettings::for_public_url(&url("https://app.example"), None, SameSite::Strict)
                .unwrap();
        let default = base.clone();
        let a = base.clone().for_frontend("a");
        let ab = base.for_frontend("a.b");
        let name = |c: &CookieSettings| c.login_cookie_name("some-state");
        let mut headers = HeaderMap::new();
        let cookie = format!(
            "{}=1; {}=2; {}=3; __Host-bff-login.junk=4",
            name(&default),
            name(&a),
            name(&ab)
        );
        headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        let seen = |c: &CookieSettings| -> Vec<String> {
            c.login_cookies(&headers)
                .iter()
                .map(|(_, v)| v.to_string())
                .collect()
        };
        assert_eq!(
            seen(&default),
            ["1", "4"],
            "its own and junk, not a's or a.b's"
        );
        assert_eq!(seen(&a), ["2"]);
        assert_eq!(seen(&ab), ["3"]);
    }

    #[test]
    fn https_keeps_host_prefix_and_secure() {
        let c =
            CookieSettings::for_public_url(&url("https://app.example.com"), None, SameSite::Strict)
                .unwrap();
        assert_eq!(c.session_name(), "__Host-bff-auth");
        let v = c.session_cookie(&SessionId::generate(), 60);
        let v = v.to_str().unwrap();
        for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(v.contains(part), "{v} lacks {part}");
        }
        assert!(!v.contains("Domain"));
    }

    #[test]
    fn loopback_http_drops_prefix_and_secure() {
        let c =
            CookieSettings::for_public_url(&url("http://127.0.0.1:8080"), None, SameSite::Strict)
                .unwrap();
        assert_eq!(c.session_name(), "bff-auth");
        assert!(!c
            .clear_session_cookie()
            .to_str()
            .unwrap()
            .contains("Secure"));
    }

    #[test]
    fn http_for_a_public_host_is_refused() {
        assert!(CookieSettings::for_public_url(
            &url("http://app.example.com"),
            None,
            SameSite::Strict
        )
        .is_err());
    }

    #[test]
    fn login_cookies_are_lax_and_keyed_by_state() {
        let c =
            CookieSettings::for_public_url(&url("https://app.example.com"), None, SameSite::Strict)
                .unwrap();
        let a = c.login_cookie_name("state-a");
        assert_ne!(a, c.login_cookie_name("state-b"));
        assert!(a.starts_with("__Host-bff-login."));
        assert!(c
            .login_cookie(&a, "v", 600)
            .to_str()
            .unwrap()
            .contains("SameSite=Lax"));
    }

    #[test]
    fn form_post_login_cookies_are_samesite_none_and_need_https() {
        let https =
            CookieSettings::for_public_url(&url("https://app.example.com"), None, SameSite::Strict)
                .unwrap();
        let c = https.with_cross_site_login_cookies().unwrap();
        let v = c.login_cookie("__Host-bff-login.x", "v", 600);
        assert!(
            v.to_str().unwrap().contains("SameSite=None; Secure"),
            "{v:?}"
        );
        assert!(c
            .session_cookie(&SessionId::generate(), 60)
            .to_str()
            .unwrap()
            .contains("SameSite=Strict"));
        let http =
            CookieSettings::for_public_url(&url("http://127.0.0.1:8080"), None, SameSite::Strict)
                .unwrap();
        assert!(http.with_cross_site_login_cookies().is_err());
    }

    #[test]
    fn session_id_parse_accepts_only_our_shape() {
        let id = SessionId::generate();
        assert!(SessionId::parse(id.as_str()).is_some());
        for bad in [
            "",
            "short",
            "../../etc/passwd",
            &"a".repeat(44),
            &format!("{}=", &id.as_str()[..42]),
        ] {
            assert!(SessionId::parse(bad).is_none(), "{bad}");
        }
        assert_ne!(id.store_key(), id.as_str());
    }
}
