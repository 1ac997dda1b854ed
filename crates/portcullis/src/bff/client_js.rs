//! `GET {base}/client.js`: the browser client `@portcullis/bff-client` (`clients/js/`),
//! compiled into the binary, so that a page without a build step can
//! `import { createBffClient } from "/bff/client.js"`.
//!
//! The path never changes between releases, so the answer is revalidated on every use
//! (`Cache-Control: no-cache`) against a strong `ETag` (a hash of the file): an upgraded
//! gateway serves its own client at once, and an unchanged one costs a `304`.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The module's source (`clients/js/src/index.js`), an ES module without dependencies.
pub const CLIENT_JS: &str = include_str!("../../../../clients/js/src/index.js");

/// The `ETag` of [`CLIENT_JS`]: the first 16 bytes of its SHA-256, hex, quoted.
static ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let digest = Sha256::digest(CLIENT_JS.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
});

/// Whether `If-None-Match` (RFC 9110 §13.1.2: a list of entity tags or `*`, weak comparison)
/// matches [`ETAG`].
fn not_modified(headers: &HeaderMap) -> bool {
    let ours = ETAG.to_str().unwrap_or_default();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.trim_start_matches("W/") == ours)
}

/// Handler of `GET {base}/client.js` (and `HEAD`): the module as `text/javascript`
/// (RFC 9239) with `ETag`, `Cache-Control: no-cache` and `X-Content-Type-Options: nosniff`;
/// `304 Not Modified` when `If-None-Match` names the current `ETag`. No anti-forgery header
/// is needed: the file is public and holds nothing of the user.
pub async fn client_js(headers: HeaderMap) -> Response {
    let mut r = if not_modified(&headers) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = CLIENT_JS.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        r
    };
    let h = r.headers_mut();
    h.insert(header::ETAG, ETAG.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http_body_util::BodyExt;

    async fn get(if_none_match: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut headers = HeaderMap::new();
        if let Some(v) = if_none_match {
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
        }
        let r = client_js(headers).await;
        let (parts, body) = r.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn serves_the_module_with_validators() {
        let (status, h, body) = get(None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(body.contains("export function createBffClient"));
        let etag = h[header::ETAG].to_str().unwrap().to_owned();
        assert_eq!(etag.len(), 34, "quoted 32 hex digits: {etag}");
    }

    #[tokio::test]
    async fn if_none_match_with_the_current_etag_is_304_without_a_body() {
        let etag = ETAG.to_str().unwrap().to_owned();
        for inm in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"old\", {etag}"),
            "*".to_owned(),
        ] {
            let (status, h, body) = get(Some(&inm)).await;
            assert_eq!(status, StatusCode::NOT_MODIFIED, "{inm}");
            assert!(body.is_empty());
            assert_eq!(h[header::ETAG], etag.as_str());
        }
        let (status, _, body) = get(Some("\"some-older-release\"")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.is_empty());
    }
}
