//! The RFC 9470 challenge: building ours, reading an upstream's.

use axum::http::{header, HeaderMap};
use serde_json::{json, Value};

use super::{is_valid_acr, MAX_ACR_VALUES, MAX_ACR_VALUES_LEN, MAX_MAX_AGE};

/// The `error` code of RFC 9470 §3: the access token (here: the session) was issued for a
/// weaker or older authentication than the resource needs.
pub const INSUFFICIENT_USER_AUTHENTICATION: &str = "insufficient_user_authentication";

/// A step-up challenge for the browser: `401` with `WWW-Authenticate: Bearer
/// error="insufficient_user_authentication", error_description, acr_values, max_age`
/// (RFC 9470 §3) and a JSON body with the same members plus `login_url`, the gateway's login
/// endpoint with the parameters that satisfy it.
///
/// Built by the gateway for a route's rules, or from an upstream's own challenge
/// ([`upstream_step_up`]); turned into the response in [`crate::error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUpChallenge {
    /// Acceptable `acr` values (each [`is_valid_acr`]); empty: no `acr_values` parameter.
    pub acr_values: Vec<String>,
    /// Longest acceptable time since authentication, seconds; `None`: no `max_age` parameter.
    pub max_age: Option<u64>,
    /// `error_description`: fixed text of the gateway's, never an upstream's words.
    pub description: &'static str,
    /// The login endpoint as the browser sees it (`/bff/login`, under the frontend's prefix).
    pub login_path: String,
}

impl StepUpChallenge {
    /// RFC 9470's example wording when the `acr` falls short.
    pub const ACR_DESCRIPTION: &'static str = "A different authentication level is required";
    /// RFC 9470's example wording when `auth_time` is too old.
    pub const AGE_DESCRIPTION: &'static str = "More recent authentication is required";
    /// An upstream API asked for it.
    pub const UPSTREAM_DESCRIPTION: &'static str =
        "The API requires a different or more recent authentication";

    /// The `WWW-Authenticate` value (RFC 9470 §3; the parameters' syntax is RFC 9110
    /// §11.2: `acr_values` a quoted string, `max_age` a token).
    pub fn www_authenticate(&self) -> String {
        let mut v = format!(
            "Bearer error=\"{INSUFFICIENT_USER_AUTHENTICATION}\", error_description=\"{}\"",
            quote(self.description)
        );
        if !self.acr_values.is_empty() {
            v.push_str(&format!(
                ", acr_values=\"{}\"",
                quote(&self.acr_values.join(" "))
            ));
        }
        if let Some(max_age) = self.max_age {
            v.push_str(&format!(", max_age={max_age}"));
        }
        v
    }

    /// The gateway's login URL that answers the challenge: `login_path` with `acr_values`
    /// and `max_age` as query parameters (form-encoded). The SPA may append its own
    /// `returnUrl`.
    pub fn login_url(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if !self.acr_values.is_empty() {
            q.append_pair("acr_values", &self.acr_values.join(" "));
        }
        if let Some(max_age) = self.max_age {
            q.append_pair("max_age", &max_age.to_string());
        }
        let q = q.finish();
        if q.is_empty() {
            self.login_path.clone()
        } else {
            format!("{}?{q}", self.login_path)
        }
    }

    /// The JSON body: `error`, `error_description`, `acr_values` (space-separated, only when
    /// there are some), `max_age` (a number of seconds, only when set), `login_url`.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "error": INSUFFICIENT_USER_AUTHENTICATION,
            "error_description": self.description,
            "login_url": self.login_url(),
        });
        if !self.acr_values.is_empty() {
            body["acr_values"] = json!(self.acr_values.join(" "));
        }
        if let Some(max_age) = self.max_age {
            body["max_age"] = json!(max_age);
        }
        body
    }
}

/// Escapes `"` and `\` for an RFC 9110 quoted-string (values are checked not to hold them;
/// this is a second line).
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// One challenge of a `WWW-Authenticate` header (RFC 9110 §11.6.1): its scheme (as sent)
/// and its auth-params (names lower-cased, quoted values unescaped). A token68 is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthChallenge {
    /// The auth-scheme, e.g. `Bearer`, `DPoP`, `Basic`.
    pub scheme: String,
    /// `(name, value)` pairs in order; names lower-cased.
    pub params: Vec<(String, String)>,
}

impl AuthChallenge {
    /// The first value of parameter `name` (lower-case).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses one `WWW-Authenticate` field value into its challenges (RFC 9110 §11.6.1:
/// `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`, several challenges
/// comma-separated). Lenient where senders are sloppy (extra commas and spaces); stops at
/// the first byte that fits no rule, keeping what was read so far.
pub fn parse_www_authenticate(value: &str) -> Vec<AuthChallenge> {
    let b = value.as_bytes();
    let mut i = 0;
    let mut out: Vec<AuthChallenge> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if i == start {
            break;
        }
        let token = &value[start..i];
        let mut j = i;
        skip_ws(&mut j);
        if j < b.len() && b[j] == b'=' {
            // `name=value`, or a token68 ending in `=` padding.
            let mut k = j + 1;
            skip_ws(&mut k);
            if k >= b.len() || b[k] == b',' || b[k] == b'=' {
                // token68 (e.g. `abc==`): skip the padding.
                i = j;
                while i < b.len() && b[i] == b'=' {
                    i += 1;
                }
                continue;
            }
            let param_value = if b[k] == b'"' {
                let mut v = String::new();
                let mut m = k + 1;
                let mut closed = false;
                while m < b.len() {
                    match b[m] {
                        b'\\' if m + 1 < b.len() => {
                            v.push(char::from(b[m + 1]));
                            m += 2;
                        }
                        b'"' => {
                            closed = true;
                            m += 1;
                            break;
                        }
                        c => {
                            v.push(char::from(c));
                            m += 1;
                        }
                    }
                }
                if !closed {
                    break;
                }
                i = m;
                v
            } else {
                let vs = k;
                let mut m = k;
                while m < b.len() && is_tchar(b[m]) {
                    m += 1;
                }
                if m == vs {
                    break;
                }
                i = m;
                value[vs..m].to_owned()
            };
            match out.last_mut() {
                Some(ch) => ch.params.push((token.to_ascii_lowercase(), param_value)),
                None => break,
            }
        } else {
            out.push(AuthChallenge {
                scheme: token.to_owned(),
                params: Vec::new(),
            });
        }
    }
    out
}

/// What an upstream's RFC 9470 challenge asks for, when a `401` carries one: a
/// `WWW-Authenticate` challenge of scheme `Bearer` or `DPoP` (any case) whose `error` is
/// [`INSUFFICIENT_USER_AUTHENTICATION`]. Returns its `acr_values` (values [`is_valid_acr`]
/// refuses are dropped; at most [`MAX_ACR_VALUES`] values and [`MAX_ACR_VALUES_LEN`]
/// characters, so that the login URL it leads to is accepted) and `max_age` (ignored unless a whole
/// number of seconds up to [`MAX_MAX_AGE`]). When neither is usable, `max_age` is `0`: the
/// user must authenticate again now (OIDC Core §3.1.2.1), which is what any step-up needs.
pub fn upstream_step_up(headers: &HeaderMap) -> Option<(Vec<String>, Option<u64>)> {
    let challenge = headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_www_authenticate)
        .find(|c| {
            (c.scheme.eq_ignore_ascii_case("bearer") || c.scheme.eq_ignore_ascii_case("dpop"))
                && c.param("error") == Some(INSUFFICIENT_USER_AUTHENTICATION)
        })?;
    let mut len = 0;
    let acr_values: Vec<String> = challenge
        .param("acr_values")
        .unwrap_or_default()
        .split(' ')
        .filter(|v| is_valid_acr(v))
        .take(MAX_ACR_VALUES)
        .take_while(|v| {
            len += v.len() + usize::from(len > 0);
            len <= MAX_ACR_VALUES_LEN
        })
        .map(str::to_owned)
        .collect();
    let max_age = challenge
        .param("max_age")
        .and_then(|v| super::parse_max_age(v).ok())
        .filter(|n| *n <= MAX_MAX_AGE);
    if acr_values.is_empty() && max_age.is_none() {
        return Some((acr_values, Some(0)));
    }
    Some((acr_values, max_age))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn challenge(acr: &[&str], max_age: Option<u64>) -> StepUpChallenge {
        StepUpChallenge {
            acr_values: acr.iter().map(|s| (*s).to_owned()).collect(),
            max_age,
            description: StepUpChallenge::ACR_DESCRIPTION,
            login_path: "/admin/bff/login".into(),
        }
    }

    #[test]
    fn our_challenge_has_the_rfc9470_shape_and_a_login_url() {
        let c = challenge(&["urn:example:mfa", "urn:example:hw"], Some(600));
        assert_eq!(
            c.www_authenticate(),
            "Bearer error=\"insufficient_user_authentication\", error_description=\"A different authentication level is required\", acr_values=\"urn:example:mfa urn:example:hw\", max_age=600"
        );
        assert_eq!(
            c.login_url(),
            "/admin/bff/login?acr_values=urn%3Aexample%3Amfa+urn%3Aexample%3Ahw&max_age=600"
        );
        let body = c.body();
        assert_eq!(body["error"], "insufficient_user_authentication");
        assert_eq!(body["acr_values"], "urn:example:mfa urn:example:hw");
        assert_eq!(body["max_age"], 600);
        // Only what is asked for.
        let c = challenge(&[], Some(2));
        assert!(!c.www_authenticate().contains("acr_values"));
        assert!(c.body().get("acr_values").is_none());
        assert_eq!(c.login_url(), "/admin/bff/login?max_age=2");
        let c = challenge(&["mfa"], None);
        assert!(!c.www_authenticate().contains("max_age"));
        assert!(c.body().get("max_age").is_none());
    }

    #[test]
    fn www_authenticate_parsing_table() {
        let parsed = parse_www_authenticate(
            "Basic realm=\"x, y\", Bearer error=\"insufficient_user_authentication\",error_description=\"say \\\"hi\\\"\" , acr_values=\"a b\", max_age=5, Negotiate abc==, DPoP algs=\"ES256\"",
        );
        let schemes: Vec<&str> = parsed.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["Basic", "Bearer", "Negotiate", "DPoP"]);
        assert_eq!(parsed[0].param("realm"), Some("x, y"));
        assert_eq!(
            parsed[1].param("error"),
            Some("insufficient_user_authentication")
        );
        assert_eq!(parsed[1].param("error_description"), Some("say \"hi\""));
        assert_eq!(parsed[1].param("acr_values"), Some("a b"));
        assert_eq!(parsed[1].param("max_age"), Some("5"));
        assert!(parsed[2].params.is_empty());
        assert_eq!(parsed[3].param("algs"), Some("ES256"));
        // Broken input keeps what was read and never panics.
        for junk in [
            "",
            ",,,",
            "=",
            "Bearer error=\"unterminated",
            "Bearer =x",
            "Bearer error=",
            "\u{e9}",
            "Bearer error = \"spaced\"",
        ] {
            let _ = parse_www_authenticate(junk);
        }
        assert_eq!(
            parse_www_authenticate("Bearer error = \"spaced\"")[0].param("error"),
            Some("spaced")
        );
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::WWW_AUTHENTICATE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn upstream_challenges_are_recognised_in_bearer_and_dpop_schemes() {
        let got = upstream_step_up(&headers(&[
            "Basic realm=\"api\"",
            "Bearer error=\"insufficient_user_authentication\", acr_values=\"urn:example:mfa\", max_age=300",
        ]));
        assert_eq!(got, Some((vec!["urn:example:mfa".to_owned()], Some(300))));
        let got = upstream_step_up(&headers(&[
            "dpop algs=\"ES256\", error=\"insufficient_user_authentication\", max_age=60",
        ]));
        assert_eq!(got, Some((vec![], Some(60))));
        // Neither parameter: authenticate again now.
        let got = upstream_step_up(&headers(&[
            "Bearer error=\"insufficient_user_authentication\"",
        ]));
        assert_eq!(got, Some((vec![], Some(0))));
        // Unusable values are dropped, never echoed.
        let got = upstream_step_up(&headers(&[
            "Bearer error=\"insufficient_user_authentication\", acr_values=\"ok b\\\"ad\", max_age=-5",
        ]));
        assert_eq!(got, Some((vec!["ok".to_owned()], None)));
        // No more than the login endpoint accepts.
        let long = format!(
            "Bearer error=\"insufficient_user_authentication\", acr_values=\"{} {} {}\"",
            "a".repeat(200),
            "b".repeat(50),
            "c".repeat(10)
        );
        let (acr, _) = upstream_step_up(&headers(&[&long])).unwrap();
        assert_eq!(acr.len(), 2);
        assert!(super::super::parse_acr_values(&acr.join(" ")).is_ok());
        // Not a step-up challenge.
        for other in [
            "Bearer error=\"invalid_token\"",
            "Basic error=\"insufficient_user_authentication\"",
            "Bearer",
        ] {
            assert_eq!(upstream_step_up(&headers(&[other])), None, "{other}");
        }
        assert_eq!(upstream_step_up(&HeaderMap::new()), None);
    }
}
