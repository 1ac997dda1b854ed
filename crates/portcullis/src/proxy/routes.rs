//! The route table (longest matching prefix wins, matched on segment boundaries), the
//! path rule that keeps a forwarded path below its upstream's base path, and the method
//! rule of proxied routes.

use std::borrow::Cow;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Uri};

use crate::error::GatewayError;
use crate::settings::RouteSettings;

/// One configured route: a path prefix in front of a fixed upstream URL.
#[derive(Debug)]
pub struct Route {
    /// The route's configuration (prefix, upstream, token policy, ...).
    pub settings: RouteSettings,
    /// The upstream's scheme and authority, parsed once (`None`: the upstream URL has none
    /// that `http` accepts, and every request is refused).
    target: Option<(Scheme, Authority)>,
    /// The upstream's path without its trailing `/`.
    base_path: String,
    /// `Host` for the upstream (its authority).
    host: Option<HeaderValue>,
    /// `X-Forwarded-Prefix`: the route prefix.
    prefix: Option<HeaderValue>,
    /// Other routes of the table whose upstream lies strictly below this route's upstream and
    /// that have access rules of their own ([`RouteTable::new`] fills it in).
    guards: Vec<Guard>,
}

/// Another route's access rules that also hold for a request of this route when the
/// forwarded URL reaches that route's upstream (see [`Route::guards_for`]).
#[derive(Debug, Clone)]
pub struct Guard {
    /// The other route's prefix (for the log).
    pub route_path: String,
    /// The other route's rules.
    pub access: crate::access::RouteAccess,
    /// The other route's upstream as [`upstream_key`] spells it.
    key: String,
}

impl Route {
    /// A route over `settings`; the per-request parts of the upstream URL are prepared once.
    pub fn new(settings: RouteSettings) -> Self {
        let base = &settings.upstream;
        let authority = match base.port() {
            Some(port) => format!("{}:{port}", base.host_str().unwrap_or_default()),
            None => base.host_str().unwrap_or_default().to_owned(),
        };
        let target = Scheme::try_from(base.scheme())
            .ok()
            .zip(Authority::try_from(authority.as_str()).ok());
        let host = target
            .as_ref()
            .and_then(|(_, a)| HeaderValue::from_str(a.as_str()).ok());
        Self {
            base_path: base.path().trim_end_matches('/').to_owned(),
            prefix: HeaderValue::from_str(&settings.path).ok(),
            target,
            host,
            settings,
            guards: Vec::new(),
        }
    }

    /// The access rules of other routes that a request for `path` (the raw request path,
    /// below this route's prefix) reaches as well: those whose upstream lies below this
    /// route's upstream and contains the forwarded URL once it is normalised the way upstream
    /// servers normalise paths ([`canonical_path`]: percent-decoding, `;` parameters, empty
    /// segments, trailing dots, ASCII case).
    ///
    /// Without this, `/api/%61dmin/x` on a route `/api` → `https://up/api` reaches
    /// `https://up/api/admin/x`, which a route `/api/admin` → `https://up/api/admin` protects
    /// with `require_claims`, without those claims: the gateway matches the raw path, the
    /// upstream the decoded one. Empty (and nothing computed) for a route without guards.
    pub fn guards_for(&self, path: &str) -> Vec<&Guard> {
        if self.guards.is_empty() {
            return Vec::new();
        }
        let rest = path
            .strip_prefix(self.settings.path.as_str())
            .unwrap_or(path);
        let target = upstream_key(&self.settings.upstream, rest);
        self.guards
            .iter()
            .filter(|g| is_below(&target, &g.key))
            .collect()
    }

    /// The `Host` header value for the upstream.
    pub(crate) fn host_header(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }

    /// The `X-Forwarded-Prefix` header value (the route prefix).
    pub(crate) fn prefix_header(&self) -> Option<&HeaderValue> {
        self.prefix.as_ref()
    }

    /// The upstream URI for a request path below this route's prefix.
    ///
    /// `path` is the raw (still percent-encoded) request path, `query` the raw query. The
    /// prefix is replaced by the upstream's path; the rest is forwarded byte for byte after
    /// [`check_path`] accepted it.
    ///
    /// # Errors
    /// [`GatewayError::NotFound`] when `path` is not below the prefix;
    /// [`GatewayError::BadParameter`] (`path`, 400) when [`check_path`] refuses the rest or
    /// the result is not a valid URI.
    pub fn upstream_uri(&self, path: &str, query: Option<&str>) -> Result<Uri, GatewayError> {
        let rest = path
            .strip_prefix(self.settings.path.as_str())
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .ok_or(GatewayError::NotFound)?;
        check_path(rest).map_err(|refusal| GatewayError::bad_param("path", refusal.message()))?;
        let unforwardable =
            || GatewayError::bad_param("path", "the request path cannot be forwarded");
        let (scheme, authority) = self.target.clone().ok_or_else(unforwardable)?;
        let mut target = String::with_capacity(
            self.base_path.len() + rest.len() + 2 + query.map_or(0, str::len),
        );
        target.push_str(&self.base_path);
        target.push_str(rest);
        if target.is_empty() {
            target.push('/');
        }
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme);
        parts.authority = Some(authority);
        parts.path_and_query = Some(PathAndQuery::try_from(target).map_err(|_| unforwardable())?);
        Uri::from_parts(parts).map_err(|_| unforwardable())
    }
}

/// Methods a proxied route refuses with `405`: `CONNECT` would turn the gateway into a
/// tunnel (and a `2xx` answer to it switches hyper's connection to raw bytes); `TRACE` and
/// IIS's `TRACK` make the upstream echo the request, including the access token the gateway
/// attached, back to the browser.
pub const REFUSED_METHODS: [&str; 3] = ["CONNECT", "TRACE", "TRACK"];

/// The method rule of proxied routes: every method is forwarded except
/// [`REFUSED_METHODS`].
///
/// # Errors
/// [`GatewayError::MethodNotAllowed`] (405, origin browser) for a refused method.
pub fn check_method(method: &Method) -> Result<(), GatewayError> {
    if REFUSED_METHODS.contains(&method.as_str()) {
        return Err(GatewayError::MethodNotAllowed {
            allow: "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        });
    }
    Ok(())
}

/// Why [`check_path`] refused a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// A `%` not followed by two hex digits, or an IIS `%uXXXX` escape.
    MalformedEscape,
    /// A `\` (raw or percent-encoded at any depth) or a fullwidth `/`/`\` lookalike: IIS and
    /// ASP.NET treat `\` as a separator.
    Backslash,
    /// A `/` that only appears after percent-decoding (`%2f`, `%252f`): the upstream would
    /// see other segments than the gateway checked.
    EncodedSlash,
    /// A segment that is, or may be normalised to, `.` or `..`.
    DotSegment,
    /// A control character (raw or encoded), or decoded bytes that are not UTF-8 (overlong
    /// encodings such as `%c0%ae`).
    BadCharacter,
    /// Still changing after [`MAX_DECODE_ROUNDS`] rounds of percent-decoding.
    TooDeeplyEncoded,
}

impl PathRefusal {
    /// The message shown in the 400 problem body (never echoes the path).
    pub fn message(self) -> &'static str {
        match self {
            Self::MalformedEscape => "the API path has a malformed percent-escape",
            Self::Backslash => "backslashes are not allowed in API paths",
            Self::EncodedSlash => "encoded slashes are not allowed in API paths",
            Self::DotSegment => "dot segments are not allowed in API paths",
            Self::BadCharacter => "the API path has control characters or invalid UTF-8",
            Self::TooDeeplyEncoded => "the API path is percent-encoded too many times",
        }
    }
}

/// How many rounds of percent-decoding [`check_path`] follows (servers that decode twice
/// exist; no legitimate path is encoded four times).
pub const MAX_DECODE_ROUNDS: usize = 4;

/// Decides whether the rest of a request path (after the route prefix, still
/// percent-encoded) may be forwarded: nothing an upstream server may normalise can climb out
/// of the route's upstream base path.
///
/// The raw path and every form obtained by percent-decoding it again and again (up to
/// [`MAX_DECODE_ROUNDS`] rounds; a double-decoding server sees `%252e` as `.`) are checked;
/// the path is refused when any form has
/// - a segment that, with its path parameters (everything from the first `;`, which Tomcat,
///   Jetty and Spring drop) removed, is made only of dots and spaces (`.`, `..`, `...`,
///   `.. `; Windows drops trailing dots and spaces) or of their Unicode lookalikes that NFKC
///   turns into dots (`．` U+FF0E, `․` U+2024, `‥` U+2025, `﹒` U+FE52);
/// - a `\` or a fullwidth `／` `＼` (U+FF0F, U+FF3C);
/// - more `/` than the raw path (an encoded slash changes the segments the upstream sees);
/// - a control character, or (after decoding) bytes that are not UTF-8;
/// - an IIS `%uXXXX` escape;
///
/// and the raw path is refused when a `%` is not followed by two hex digits. Path parameters
/// that do not hide a dot segment (`/items;v=2`) and encoded dots inside a name (`a%2eb`)
/// are forwarded unchanged.
///
/// # Errors
/// The first [`PathRefusal`] found.
pub fn check_path(rest: &str) -> Result<(), PathRefusal> {
    let raw = rest.as_bytes();
    if !escapes_well_formed(raw) {
        return Err(PathRefusal::MalformedEscape);
    }
    let slashes = count(raw, b'/');
    let mut form: Cow<'_, [u8]> = Cow::Borrowed(raw);
    for round in 0..=MAX_DECODE_ROUNDS {
        check_form(&form, slashes)?;
        if !form.contains(&b'%') {
            // Nothing left to decode (the common case): no copy.
            return Ok(());
        }
        let next: Vec<u8> = percent_encoding::percent_decode(&form).collect();
        if next.as_slice() == &*form {
            return Ok(());
        }
        if round == MAX_DECODE_ROUNDS {
            break;
        }
        form = Cow::Owned(next);
    }
    Err(PathRefusal::TooDeeplyEncoded)
}

/// One form of the path (raw or decoded `n` times).
fn check_form(form: &[u8], raw_slashes: usize) -> Result<(), PathRefusal> {
    let Ok(text) = std::str::from_utf8(form) else {
        return Err(PathRefusal::BadCharacter);
    };
    if text.chars().any(char::is_control) {
        return Err(PathRefusal::BadCharacter);
    }
    if text.contains(['\\', '\u{FF0F}', '\u{FF3C}']) {
        return Err(PathRefusal::Backslash);
    }
    if count(form, b'/') != raw_slashes {
        return Err(PathRefusal::EncodedSlash);
    }
    if has_iis_unicode_escape(form) {
        return Err(PathRefusal::MalformedEscape);
    }
    for segment in text.split('/') {
        let name = segment.split(';').next().unwrap_or_default();
        if is_dot_like(name) {
            return Err(PathRefusal::DotSegment);
        }
    }
    Ok(())
}

/// Only dots (or their NFKC lookalikes) and spaces, with at least one dot.
fn is_dot_like(name: &str) -> bool {
    const DOTS: [char; 5] = ['.', '\u{FF0E}', '\u{2024}', '\u{2025}', '\u{FE52}'];
    name.contains(DOTS) && name.chars().all(|c| DOTS.contains(&c) || c == ' ')
}

fn count(bytes: &[u8], b: u8) -> usize {
    bytes.iter().filter(|&&x| x == b).count()
}

/// Every `%` is followed by two hex digits (RFC 3986 §2.1).
fn escapes_well_formed(raw: &[u8]) -> bool {
    raw.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || (raw.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && raw.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// `%u` followed by four hex digits: IIS decodes `%u002e` to `.`.
fn has_iis_unicode_escape(form: &[u8]) -> bool {
    form.windows(6).any(|w| {
        w[0] == b'%' && (w[1] == b'u' || w[1] == b'U') && w[2..].iter().all(u8::is_ascii_hexdigit)
    })
}

/// `scheme://host:port` and [`canonical_path`] of `upstream`'s path followed by `rest`: the
/// form in which two upstream URLs are compared for [`Route::guards_for`].
fn upstream_key(upstream: &url::Url, rest: &str) -> String {
    let base = upstream.path().trim_end_matches('/');
    format!(
        "{}://{}:{}{}",
        upstream.scheme(),
        upstream.host_str().unwrap_or_default().to_ascii_lowercase(),
        upstream.port_or_known_default().unwrap_or_default(),
        canonical_path(&format!("{base}{rest}"))
    )
}

/// `key` is `base` or below it, on segment boundaries.
fn is_below(key: &str, base: &str) -> bool {
    key.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A path as the most lenient common upstream server may read it, for comparing where a
/// request lands: percent-decoded (up to [`MAX_DECODE_ROUNDS`] rounds: servers that decode
/// twice exist), `;` parameters dropped from each segment (Tomcat, Jetty, Spring), trailing
/// dots and spaces dropped (Windows), empty segments dropped (`//` merged: nginx, Spring), and
/// ASCII lower case (ASP.NET Core and Express route case-insensitively). Never forwarded:
/// only compared.
pub fn canonical_path(path: &str) -> String {
    let mut form: Cow<'_, str> = Cow::Borrowed(path);
    for _ in 0..MAX_DECODE_ROUNDS {
        if !form.contains('%') {
            break;
        }
        let next = percent_encoding::percent_decode_str(&form)
            .decode_utf8_lossy()
            .into_owned();
        if next == form {
            break;
        }
        form = Cow::Owned(next);
    }
    let mut out = String::with_capacity(form.len());
    for segment in form.split(['/', '\\']) {
        let name = segment
            .split(';')
            .next()
            .unwrap_or_default()
            .trim_end_matches(['.', ' ']);
        if !name.is_empty() {
            out.push('/');
            out.push_str(&name.to_ascii_lowercase());
        }
    }
    out
}

/// Every configured route, longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// A table over `settings` (prefixes already normalised by the settings parser). Each
    /// route learns its guards: the routes with other access rules whose upstream lies
    /// strictly below its own (see [`Route::guards_for`]).
    pub fn new(mut settings: Vec<RouteSettings>) -> Self {
        settings.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        let keys: Vec<String> = settings
            .iter()
            .map(|s| upstream_key(&s.upstream, ""))
            .collect();
        let mut routes: Vec<Route> = settings.iter().cloned().map(Route::new).collect();
        for (i, route) in routes.iter_mut().enumerate() {
            for (j, other) in settings.iter().enumerate() {
                if i != j
                    && !other.access.is_empty()
                    && other.access != route.settings.access
                    && keys[j] != keys[i]
                    && is_below(&keys[j], &keys[i])
                {
                    route.guards.push(Guard {
                        route_path: other.path.clone(),
                        access: other.access.clone(),
                        key: keys[j].clone(),
                    });
                }
            }
        }
        Self {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// The routes, longest prefix first.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Longest prefix match on a segment boundary.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| {
            path.strip_prefix(r.settings.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// Applies a route's body limit ([`RouteSettings::max_body`]): a declared `Content-Length`
/// over `limit` is refused at once; any other body is cut at `limit` (reading past it fails,
/// and the forwarder answers 413 then). A request without a body passes untouched.
///
/// # Errors
/// [`GatewayError::PayloadTooLarge`] (413) for a declared length over the limit.
pub fn limit_body(
    request: axum::extract::Request,
    limit: Option<u64>,
) -> Result<axum::extract::Request, GatewayError> {
    use http_body::Body as _;
    let Some(limit) = limit else {
        return Ok(request);
    };
    if request.body().is_end_stream() {
        return Ok(request);
    }
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(request.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::TokenPolicy;
    use std::time::Duration;

    fn route(path: &str, upstream: &str) -> RouteSettings {
        RouteSettings {
            path: path.into(),
            upstream: upstream.parse().unwrap(),
            token: TokenPolicy::User,
            anti_forgery: true,
            resource: None,
            scope: None,
            audience: None,
            refresh_before_expiry: None,
            client: None,
            timeout: Duration::from_secs(30),
            access: Default::default(),
            max_body: None,
        }
    }

    #[test]
    fn prefix_is_replaced_by_the_upstream_path() {
        let table = RouteTable::new(vec![
            route("/api", "http://127.0.0.1:9000"),
            route("/api/orders", "https://orders.internal/v1"),
        ]);
        let cases = [
            (
                "/api/orders/7",
                Some("x=1"),
                "https://orders.internal/v1/7?x=1",
            ),
            ("/api/orders", None, "https://orders.internal/v1"),
            ("/api/ordersx", None, "http://127.0.0.1:9000/ordersx"),
            ("/api", None, "http://127.0.0.1:9000/"),
            ("/api/a/b", Some("q=%20"), "http://127.0.0.1:9000/a/b?q=%20"),
        ];
        for (path, q, want) in cases {
            let r = table.find(path).unwrap();
            assert_eq!(r.upstream_uri(path, q).unwrap().to_string(), want, "{path}");
        }
        assert!(table.find("/apix").is_none());
        assert!(table.find("/other").is_none());
    }

    #[test]
    fn dot_segments_cannot_climb_out() {
        let table = RouteTable::new(vec![route("/api", "https://api.internal/v1")]);
        for path in [
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/api/%2E%2e/x",
            "/api/a/..\\..\\x",
            "/api/./x",
            "/api/..%2fadmin",
        ] {
            let r = table.find(path).unwrap();
            assert!(r.upstream_uri(path, None).is_err(), "{path}");
        }
        assert!(table
            .find("/api/a..b")
            .unwrap()
            .upstream_uri("/api/a..b", None)
            .is_ok());
    }

    /// Regression for issue 12.1: `..;` (Tomcat/Jetty/Spring path parameters) and every
    /// other spelling a common server normalises to `.`/`..` or to another segment boundary.
    #[test]
    fn semicolon_and_encoded_dot_segments_are_refused() {
        use PathRefusal::*;
        let cases: &[(&str, PathRefusal)] = &[
            ("/..;/secret", DotSegment),
            ("/..;jsessionid=x/secret", DotSegment),
            ("/a/.;/b", DotSegment),
            ("/.;x", DotSegment),
            ("/%2e%2e%3b/secret", DotSegment),
            ("/%2E%2E;/secret", DotSegment),
            ("/%2e%2e;x=1/y", DotSegment),
            ("/..%3bx/y", DotSegment),
            ("/%252e%252e/secret", DotSegment),
            ("/%25252e%25252e/secret", DotSegment),
            ("/%252%65%252e/x", DotSegment),
            ("/.../x", DotSegment),
            ("/..%20/x", DotSegment),
            ("/%ef%bc%8e%ef%bc%8e/x", DotSegment),
            ("/%e2%80%a5/x", DotSegment),
            ("/..", DotSegment),
            ("/.", DotSegment),
            ("/a/..\\secret", Backslash),
            ("/..%5csecret", Backslash),
            ("/..%5Csecret", Backslash),
            ("/..%255csecret", Backslash),
            ("/%ef%bc%8f", Backslash),
            ("/..%2fsecret", EncodedSlash),
            ("/a%2Fb", EncodedSlash),
            ("/a%252fb", EncodedSlash),
            ("/%c0%ae%c0%ae/x", BadCharacter),
            ("/%e0%80%ae/x", BadCharacter),
            ("/a%00b", BadCharacter),
            ("/a%0d%0ab", BadCharacter),
            ("/a%250ab", BadCharacter),
            ("/%%32%65%%32%65/x", MalformedEscape),
            ("/%u002e%u002e/x", MalformedEscape),
            ("/%25u002e%25u002e/x", MalformedEscape),
            ("/a%zz", MalformedEscape),
            ("/a%2", MalformedEscape),
            ("/%2525252525252e", TooDeeplyEncoded),
        ];
        for (rest, want) in cases {
            assert_eq!(check_path(rest), Err(*want), "{rest}");
        }
    }

    /// What the path rule must not break: names with dots, matrix parameters, encoded
    /// characters other than separators and dots, a literal `%`.
    #[test]
    fn ordinary_paths_are_forwarded_unchanged() {
        let table = RouteTable::new(vec![route("/open", "http://up.internal/up/none")]);
        for (rest, want) in [
            ("", "/up/none"),
            ("/", "/up/none/"),
            (
                "/a..b/.well-known/x.json",
                "/up/none/a..b/.well-known/x.json",
            ),
            ("/items;v=2/7", "/up/none/items;v=2/7"),
            ("/a;b;c/..x", "/up/none/a;b;c/..x"),
            ("/a%2eb", "/up/none/a%2eb"),
            ("/caf%C3%A9/%20x", "/up/none/caf%C3%A9/%20x"),
            ("/100%25", "/up/none/100%25"),
            ("/a//b", "/up/none/a//b"),
            ("/.hidden", "/up/none/.hidden"),
        ] {
            let path = format!("/open{rest}");
            let uri = table.find(&path).unwrap().upstream_uri(&path, None);
            assert_eq!(uri.unwrap().path(), want, "{path}");
        }
    }

    /// Regression: a route without rules reached a nested route's upstream through another
    /// spelling of the path (percent-encoded, case-changed, `;` parameters, `//`, trailing
    /// dot), so the nested route's `require_claims` never ran. Such a request now carries the
    /// nested route's rules as guards; other paths of the outer route carry none.
    #[test]
    fn encoded_path_to_a_nested_routes_upstream_is_guarded_by_its_rules() {
        let admin_rules = crate::access::RouteAccess {
            require_claims: vec![crate::access::ClaimRule {
                claim: "role".into(),
                values: vec!["admin".into()],
            }],
            ..Default::default()
        };
        let mut admin = route("/api/admin", "https://up.internal/v1/admin");
        admin.access = admin_rules.clone();
        // Another gateway prefix, the same upstream subtree: guarded too.
        let reports = route("/reports", "https://UP.internal:443/v1");
        // The same rules below: nothing to add.
        let mut same = route("/admin2", "https://up.internal/v1/admin/more");
        same.access = admin_rules.clone();
        let table = RouteTable::new(vec![
            route("/api", "https://up.internal/v1/"),
            admin,
            reports,
            same,
            route("/other", "https://other.internal/v1"),
        ]);
        let api = table.find("/api/x").unwrap();
        for path in [
            "/api/admin",
            "/api/%61dmin/x",
            "/api/%2561dmin/x",
            "/api/ADMIN/x",
            "/api/admin;v=1/x",
            "/api//admin/x",
            "/api/admin./x",
            "/api/admin%20/x",
        ] {
            let guards = api.guards_for(path);
            assert_eq!(guards.len(), 1, "{path}");
            assert_eq!(guards[0].route_path, "/api/admin");
            assert_eq!(guards[0].access, admin_rules);
        }
        for path in ["/api", "/api/administrators", "/api/x/admin", "/api/adminx"] {
            assert!(api.guards_for(path).is_empty(), "{path}");
        }
        let reports = table.find("/reports/admin/7").unwrap();
        assert_eq!(reports.guards_for("/reports/admin/7").len(), 1);
        assert!(reports.guards_for("/reports/orders").is_empty());
        for own in ["/api/admin/x", "/admin2/x", "/other/admin/x"] {
            let r = table.find(own).unwrap();
            assert!(r.guards_for(own).is_empty(), "{own}");
        }
        assert_eq!(canonical_path("/A/%2561;x/B./"), "/a/a/b");
    }

    #[test]
    fn connect_trace_and_track_are_refused_every_other_method_passes() {
        for m in ["CONNECT", "TRACE", "TRACK"] {
            let err = check_method(&Method::from_bytes(m.as_bytes()).unwrap()).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::METHOD_NOT_ALLOWED, "{m}");
        }
        for m in [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND",
        ] {
            assert!(check_method(&Method::from_bytes(m.as_bytes()).unwrap()).is_ok());
        }
    }

    /// Independent model of what upstream servers do with a path, for the property below.
    mod normalise {
        use percent_encoding::percent_decode_str;

        pub fn decode(s: &str) -> String {
            percent_decode_str(s).decode_utf8_lossy().into_owned()
        }

        /// Tomcat/Jetty/Spring: drop `;parameters` from every segment.
        pub fn strip_params(s: &str) -> String {
            s.split('/')
                .map(|seg| seg.split(';').next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("/")
        }

        /// IIS/ASP.NET: `\` is a separator.
        pub fn backslash(s: &str) -> String {
            s.replace('\\', "/")
        }

        /// RFC 3986 §5.2.4 for an absolute path.
        pub fn remove_dot_segments(path: &str) -> String {
            let segs: Vec<&str> = path.split('/').skip(1).collect();
            let mut out: Vec<&str> = Vec::new();
            for (i, seg) in segs.iter().enumerate() {
                let last = i + 1 == segs.len();
                match *seg {
                    "." => {}
                    ".." => {
                        out.pop();
                    }
                    s => {
                        out.push(s);
                        continue;
                    }
                }
                if last {
                    out.push("");
                }
            }
            format!("/{}", out.join("/"))
        }

        /// Every sequence of up to `depth` operations out of decode, strip, backslash.
        pub fn variants(path: &str, depth: usize) -> Vec<String> {
            let mut all = vec![path.to_owned()];
            let mut frontier = all.clone();
            for _ in 0..depth {
                let mut next = Vec::new();
                for p in &frontier {
                    next.push(decode(p));
                    next.push(strip_params(p));
                    next.push(backslash(p));
                }
                all.extend(next.iter().cloned());
                frontier = next;
            }
            all
        }
    }

    #[test]
    fn the_model_climbs_out_where_servers_do() {
        use normalise::*;
        assert_eq!(remove_dot_segments("/up/none/../secret"), "/up/secret");
        assert_eq!(remove_dot_segments("/up/none/a/.."), "/up/none/");
        assert_eq!(remove_dot_segments("/.."), "/");
        let escapes = |p: &str| {
            variants(p, 3)
                .iter()
                .any(|v| !remove_dot_segments(v).starts_with("/up/none"))
        };
        assert!(escapes("/up/none/..;/secret"));
        assert!(escapes("/up/none/%252e%252e/secret"));
        assert!(escapes("/up/none/..%5csecret"));
        assert!(!escapes("/up/none/a;x/b"));
    }

    const PIECES: &[&str] = &[
        ".", "..", ";", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", "%25", "%3b", "%32", "%65",
        "/", "a", "b", "e", "2", "x=1", "%c0%ae", "%20",
    ];

    proptest::proptest! {
        #![proptest_config(crate::properties::cases(2000))]

        /// Issue 12.1: whatever the gateway forwards stays below the route's upstream prefix
        /// under every common normalisation (RFC 3986 dot-segment removal after any sequence
        /// of up to three steps of: percent-decoding, `;`-parameter stripping, `\` → `/`).
        #[test]
        fn forwarded_path_never_leaves_upstream_prefix(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..14)
        ) {
            use normalise::*;
            let table = RouteTable::new(vec![route("/open", "http://up.internal/up/none")]);
            let path = format!("/open/{}", pieces.concat());
            let Some(r) = table.find(&path) else {
                return Ok(());
            };
            let Ok(uri) = r.upstream_uri(&path, None) else {
                return Ok(());
            };
            for v in variants(uri.path(), 3) {
                let n = remove_dot_segments(&v);
                proptest::prop_assert!(
                    n == "/up/none" || n.starts_with("/up/none/"),
                    "{path} was forwarded as {} and normalises to {n} (via {v})",
                    uri.path()
                );
            }
        }
    }
}
