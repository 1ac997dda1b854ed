//! `dir`: the single-page app's static files, and `index.html` for its client-side routes.
//!
//! Mounted as the gateway's fallback (`Gateway::router(Some(Spa::for_gateway(dir, &gw).router()))`),
//! so it only sees requests that no management endpoint and no API route took. For those:
//!
//! | request | answer |
//! |---|---|
//! | target not a path (`GET x`, `GET host:80`, `OPTIONS *`) | 400 |
//! | target over 8 KiB | 414 |
//! | under the management base path, a callback path or a route prefix | 404 (never `index.html`) |
//! | not GET/HEAD | 405 |
//! | `/`, or a file that exists | the file: `ETag`, `Last-Modified`, a `.br`/`.gz` sibling when accepted |
//! | a navigation to a client-side route: GET/HEAD, `Accept` lists `text/html`, last segment without an extension | `index.html` |
//! | anything else (`/app.js.map`, `/missing.css`, `fetch('/nope')`) | 404 |
//!
//! HTML documents are sent with `Cache-Control: no-cache` (the browser revalidates the app's
//! entry point on every load, so a deployment is seen at once); other files carry validators
//! only. `ETag` is derived from the file's modification time, length and encoding (as nginx
//! does); `If-None-Match` wins over `If-Modified-Since` (RFC 9110 §13.1.3), and
//! `If-Modified-Since` matches when it equals `Last-Modified` exactly (nginx's default).
//!
//! Caveats: names the file system cannot hold (a segment over 255 bytes, a path over
//! 1 KiB) are never looked up on disk; a last segment with a dot (`/users/john.doe`) counts as
//! a file name, so such client-side routes need the SPA to avoid dots or a server-side route.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sha2::{Digest, Sha256};
use tower_http::services::ServeDir;

use super::{can_name_a_file, is_client_route, reserved_paths, Reserved, MAX_TARGET_BYTES};
use crate::error::GatewayError;
use crate::gateway::Gateway;

/// The SPA service: static files from one directory plus the client-route fallback.
#[derive(Clone, Debug)]
pub struct Spa {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    files: ServeDir,
    /// Path prefixes that belong to the gateway: never served from the SPA directory.
    reserved: Reserved,
}

impl Spa {
    /// Serves `dir` (which should hold `index.html`), reserving nothing.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_reserved(dir.into(), Vec::new())
    }

    /// Serves `dir` for `gateway`: the management base path (unless it is `/`), both
    /// callback paths and every route prefix are reserved (404, never `index.html`).
    pub fn for_gateway(dir: impl AsRef<Path>, gateway: &Gateway) -> Self {
        Self::for_settings(dir, &gateway.settings())
    }

    /// Serves `dir` for a frontend with these settings (paths relative to the frontend):
    /// reserves what [`for_gateway`](Self::for_gateway) reserves.
    pub fn for_settings(dir: impl AsRef<Path>, s: &crate::settings::GatewaySettings) -> Self {
        Self::with_reserved(dir.as_ref().to_path_buf(), reserved_paths(s))
    }

    /// Serves `dir`; `reserved` path prefixes answer 404.
    pub fn with_reserved(dir: PathBuf, reserved: Vec<String>) -> Self {
        let files = ServeDir::new(dir)
            .append_index_html_on_directories(false)
            .precompressed_br()
            .precompressed_gzip();
        Self {
            inner: Arc::new(Inner {
                files,
                reserved: Reserved::new(reserved),
            }),
        }
    }

    /// A router that answers every request with [`Spa::serve`] (use it as the fallback).
    pub fn router(self) -> Router {
        Router::new().fallback(move |request: Request| {
            let spa = self.clone();
            async move { spa.serve(request).await }
        })
    }

    /// Answers one request (see the module docs for the rules).
    pub async fn serve(&self, request: Request) -> Response {
        match self.try_serve(request).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }

    async fn try_serve(&self, request: Request) -> Result<Response, GatewayError> {
        let uri = request.uri();
        let path = uri.path();
        if !path.starts_with('/') {
            return Err(GatewayError::BadRequestTarget);
        }
        let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        if target_len > MAX_TARGET_BYTES {
            return Err(GatewayError::UriTooLong);
        }
        if self.inner.reserved.contains(path) {
            return Err(GatewayError::NotFound);
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Err(GatewayError::MethodNotAllowed { allow: "GET, HEAD" });
        }
        if path == "/" {
            return self.file(request, Some("/index.html")).await;
        }
        let decoded = percent_encoding::percent_decode_str(path).collect::<Vec<u8>>();
        if can_name_a_file(&decoded) {
            let navigation = is_client_route(request.headers(), &decoded);
            let (parts, body) = request.into_parts();
            let retry = navigation.then(|| Request::from_parts(parts.clone(), Body::empty()));
            let found = self.file(Request::from_parts(parts, body), None).await;
            return match (found, retry) {
                (Err(GatewayError::NotFound), Some(retry)) => {
                    self.file(retry, Some("/index.html")).await
                }
                (result, _) => result,
            };
        }
        if is_client_route(request.headers(), &decoded) {
            return self.file(request, Some("/index.html")).await;
        }
        Err(GatewayError::NotFound)
    }

    /// Serves one file (`rewrite` replaces the request's path), adding validators and
    /// answering conditional requests.
    async fn file(
        &self,
        mut request: Request,
        rewrite: Option<&'static str>,
    ) -> Result<Response, GatewayError> {
        if let Some(to) = rewrite {
            *request.uri_mut() = Uri::from_static(to);
        }
        let conditions = Conditions::take(request.headers_mut());
        let mut files = self.inner.files.clone();
        let response = match files.try_call(request).await {
            Ok(r) => r,
            Err(e) => return Err(GatewayError::Internal(format!("static file: {}", e.kind()))),
        };
        let (mut parts, body) = response.into_parts();
        if parts.status == StatusCode::NOT_FOUND {
            return Err(GatewayError::NotFound);
        }
        let h = &mut parts.headers;
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        let html = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"));
        if html {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        if parts.status != StatusCode::OK {
            return Ok(Response::from_parts(parts, Body::new(body)));
        }
        let etag = etag(h);
        if let Some(etag) = &etag {
            h.insert(header::ETAG, etag.clone());
        }
        if conditions.not_modified(etag.as_ref(), h.get(header::LAST_MODIFIED)) {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            for name in [
                header::ETAG,
                header::LAST_MODIFIED,
                header::CACHE_CONTROL,
                header::VARY,
            ] {
                for v in h.get_all(&name) {
                    r.headers_mut().append(name.clone(), v.clone());
                }
            }
            return Ok(r);
        }
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// `"<16 hex>"` from `Last-Modified`, `Content-Length` and `Content-Encoding`: a new file
/// version or another precompressed variant gets another tag.
fn etag(headers: &HeaderMap) -> Option<HeaderValue> {
    let modified = headers.get(header::LAST_MODIFIED)?;
    let length = headers.get(header::CONTENT_LENGTH)?;
    let mut hash = Sha256::new();
    hash.update(modified.as_bytes());
    hash.update(b"|");
    hash.update(length.as_bytes());
    hash.update(b"|");
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        hash.update(encoding.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).ok()
}

/// The conditional headers, taken off the request so that the validators of a full answer
/// decide (tower-http's `ServeDir` knows no `ETag`).
struct Conditions {
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
}

impl Conditions {
    fn take(headers: &mut HeaderMap) -> Self {
        // `If-Range` cannot be checked against an `ETag` by `ServeDir`: a full answer is
        // always a correct one.
        if headers.remove(header::IF_RANGE).is_some() {
            headers.remove(header::RANGE);
        }
        Self {
            if_none_match: headers.remove(header::IF_NONE_MATCH),
            if_modified_since: headers.remove(header::IF_MODIFIED_SINCE),
        }
    }

    fn not_modified(&self, etag: Option<&HeaderValue>, modified: Option<&HeaderValue>) -> bool {
        if let Some(inm) = &self.if_none_match {
            let Some(etag) = etag.and_then(|e| e.to_str().ok()) else {
                return false;
            };
            let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
            return inm
                .to_str()
                .map(|v| {
                    v.split(',')
                        .any(|t| t.trim() == "*" || opaque(t) == opaque(etag))
                })
                .unwrap_or(false);
        }
        match (&self.if_modified_since, modified) {
            (Some(since), Some(modified)) => since.as_bytes() == modified.as_bytes(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http_body_util::BodyExt;

    const INDEX: &str = "<!doctype html><title>spa</title>";

    fn spa_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-spa-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("index.html"), INDEX).unwrap();
        std::fs::write(dir.join("app.js"), "console.log('app')").unwrap();
        std::fs::write(dir.join("app.js.gz"), b"\x1f\x8bgz").unwrap();
        std::fs::write(dir.join("app.js.br"), b"br-bytes").unwrap();
        std::fs::write(dir.join("assets/logo.svg"), "<svg/>").unwrap();
        dir
    }

    fn spa() -> Spa {
        Spa::with_reserved(
            spa_dir(),
            vec!["/bff".into(), "/api-prefix".into(), "/signin-oidc".into()],
        )
    }

    async fn get(
        spa: &Spa,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = spa.serve(req.body(Body::empty()).unwrap()).await;
        let (parts, body) = r.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        (parts.status, parts.headers, body)
    }

    type Headers<'a> = &'a [(&'a str, &'a str)];
    /// (method, path, request headers, status, answered with index.html)
    type Case<'a> = (&'a str, &'a str, Headers<'a>, u16, bool);

    const NAV: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

    #[tokio::test]
    async fn spa_fallback_only_for_client_routes() {
        let spa = spa();
        let cases: &[Case] = &[
            // (method, path, headers, status, is index.html)
            ("GET", "/", &[], 200, true),
            ("GET", "/some/client/route", &[NAV], 200, true),
            ("HEAD", "/some/client/route", &[NAV], 200, false),
            ("GET", "/some/client/route", &[], 404, false),
            (
                "GET",
                "/some/client/route",
                &[("accept", "application/json")],
                404,
                false,
            ),
            (
                "GET",
                "/some/client/route",
                &[("accept", "*/*")],
                404,
                false,
            ),
            ("GET", "/bff/nope", &[NAV], 404, false),
            ("GET", "/bff", &[NAV], 404, false),
            ("GET", "/api-prefix/unknown", &[NAV], 404, false),
            ("GET", "/api-prefixed-but-not-the-route", &[NAV], 200, true),
            ("GET", "/signin-oidc/x", &[NAV], 404, false),
            ("GET", "/app.js.map", &[NAV], 404, false),
            ("GET", "/missing.css", &[NAV], 404, false),
            ("GET", "/missing.css", &[], 404, false),
            ("GET", "/assets", &[NAV], 200, true),
            ("GET", "/assets/", &[NAV], 200, true),
            ("GET", "/assets/", &[], 404, false),
            ("GET", "/assets/logo.svg", &[], 200, false),
            ("GET", "/app.js", &[], 200, false),
            ("POST", "/some/client/route", &[NAV], 405, false),
        ];
        for (method, path, headers, status, index) in cases {
            let (got, h, body) = get(&spa, method, path, headers).await;
            assert_eq!(got.as_u16(), *status, "{method} {path} {headers:?}");
            assert_eq!(
                body == INDEX.as_bytes(),
                *index,
                "{method} {path}: {:?}",
                String::from_utf8_lossy(&body)
            );
            if *index {
                assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{path}");
            }
        }
    }

    #[tokio::test]
    async fn static_files_have_validators_and_precompressed() {
        let spa = spa();
        let (status, h, body) = get(&spa, "GET", "/app.js", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(body, b"console.log('app')");
        let etag = h[header::ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        let modified = h[header::LAST_MODIFIED].to_str().unwrap().to_owned();
        assert!(
            h.get(header::CACHE_CONTROL).is_none(),
            "assets carry validators only"
        );
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");

        // Conditional requests: the ETag (also weak), and Last-Modified without an ETag.
        for cond in [
            ("if-none-match", etag.clone()),
            ("if-none-match", format!("\"other\", W/{etag}")),
            ("if-modified-since", modified.clone()),
        ] {
            let (status, h, body) = get(&spa, "GET", "/app.js", &[(cond.0, &cond.1)]).await;
            assert_eq!(status, 304, "{cond:?}");
            assert!(body.is_empty());
            assert_eq!(h[header::ETAG].to_str().unwrap(), etag);
            assert_eq!(h[header::LAST_MODIFIED].to_str().unwrap(), modified);
        }
        // If-None-Match wins over If-Modified-Since.
        let (status, _, _) = get(
            &spa,
            "GET",
            "/app.js",
            &[
                ("if-none-match", "\"stale\""),
                ("if-modified-since", &modified),
            ],
        )
        .await;
        assert_eq!(status, 200);

        // Precompressed siblings, each with its own ETag.
        let (status, h, body) = get(&spa, "GET", "/app.js", &[("accept-encoding", "gzip")]).await;
        assert_eq!(status, 200);
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert_eq!(body, b"\x1f\x8bgz");
        assert!(h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .contains("javascript"));
        assert_ne!(h[header::ETAG].to_str().unwrap(), etag);
        assert!(h
            .get_all(header::VARY)
            .iter()
            .any(|v| v == "Accept-Encoding"));
        let (_, h, body) = get(&spa, "GET", "/app.js", &[("accept-encoding", "gzip, br")]).await;
        assert_eq!(h[header::CONTENT_ENCODING], "br");
        assert_eq!(body, b"br-bytes");

        // index.html: validators and no-cache, also when it answers a client route.
        for path in ["/", "/index.html", "/client/route"] {
            let (status, h, _) = get(&spa, "GET", path, &[NAV]).await;
            assert_eq!(status, 200, "{path}");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{path}");
            assert!(
                h.contains_key(header::ETAG) && h.contains_key(header::LAST_MODIFIED),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn names_the_file_system_cannot_hold_are_not_500() {
        let spa = spa();
        let long_segment = format!("/{}", "a".repeat(300));
        let long_path = "/abc".repeat(1500);
        let huge = format!("/{}", "b".repeat(MAX_TARGET_BYTES + 1));
        let cases: &[(&str, Headers, u16)] = &[
            (&long_segment, &[], 404),
            (&long_segment, &[NAV], 200),
            (&format!("{long_segment}.js"), &[NAV], 404),
            (&long_path, &[], 404),
            (&huge, &[NAV], 414),
            ("/%00", &[], 404),
            ("/a/%2e%2e/%2e%2e/etc/passwd", &[], 404),
            ("/..%2f..%2fetc%2fpasswd", &[], 404),
        ];
        for (path, headers, status) in cases {
            let (got, _, _) = get(&spa, "GET", path, headers).await;
            assert_eq!(got.as_u16(), *status, "{}", &path[..path.len().min(80)]);
        }
        // Targets that are not paths.
        for target in ["x", "api", "example.com:80", "*"] {
            let uri: Uri = target.parse().unwrap();
            let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
            assert_eq!(spa.serve(req).await.status(), 400, "{target}");
        }
        // The absolute form is a path on this site (RFC 9112 §3.2.2).
        let req = Request::builder()
            .uri("http://example.com/")
            .body(Body::empty())
            .unwrap();
        assert_eq!(spa.serve(req).await.status(), 200);
    }
}

#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    /// Request targets as a hostile client writes them: path-ish pieces, dots, encodings,
    /// separators, very long segments, authority- and asterisk-forms.
    fn target() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2f".to_owned()),
            Just("%5c".to_owned()),
            Just("%00".to_owned()),
            Just("%ff".to_owned()),
            Just("%".to_owned()),
            Just(";".to_owned()),
            Just(":80".to_owned()),
            Just("*".to_owned()),
            Just("?q=1".to_owned()),
            Just("index.html".to_owned()),
            Just("app.js".to_owned()),
            Just("bff".to_owned()),
            Just("api".to_owned()),
            "[a-z]{1,8}",
            (250usize..700).prop_map(|n| "a".repeat(n)),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(crate::properties::cases(400))]

        #[test]
        fn generated_targets_never_answer_5xx(
            t in target(),
            leading_slash in any::<bool>(),
            html in any::<bool>(),
            head in any::<bool>(),
        ) {
            let raw = if leading_slash { format!("/{t}") } else { t };
            // Only what `http` (and so hyper) accepts as a request target reaches the service.
            let Ok(uri) = raw.parse::<Uri>() else { return Ok(()); };
            let spa = spa_for_properties();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut req = Request::builder()
                .method(if head { Method::HEAD } else { Method::GET })
                .uri(uri);
            if html {
                req = req.header(header::ACCEPT, "text/html");
            }
            let status = rt.block_on(spa.serve(req.body(Body::empty()).unwrap())).status();
            prop_assert!(!status.is_server_error(), "{raw:?} answered {status}");
            prop_assert!(
                [200, 304, 400, 404, 414].contains(&status.as_u16()),
                "{raw:?} answered {status}"
            );
            let reserved = raw.starts_with("/bff/") || raw == "/bff" || raw.starts_with("/api/") || raw == "/api";
            if reserved {
                prop_assert_eq!(status.as_u16(), 404, "{:?} is the gateway's", raw);
            }
        }
    }

    fn spa_for_properties() -> Spa {
        static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        let dir = DIR.get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("portcullis-spa-prop-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("index.html"), "<!doctype html>").unwrap();
            std::fs::write(dir.join("app.js"), "1").unwrap();
            dir
        });
        Spa::with_reserved(dir.clone(), vec!["/bff".into(), "/api".into()])
    }
}
