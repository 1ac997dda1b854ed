//! `index_html_url`: the SPA's `index.html` from a CDN, transformed, cached and served by the
//! gateway; the CDN serves the other assets directly.
//!
//! ```text
//! navigation ─▶ cached copy fresh (younger than cache_for)? ─yes─▶ 200 / 304 (our ETag)
//!                     │ no
//!                     ▶ one fetch at a time (others keep the stale copy meanwhile):
//!                       GET url  [If-None-Match: the CDN's ETag]
//!                         200 ─▶ transform ─▶ new copy     304 ─▶ same copy, fresh again
//!                         failure ─▶ last good copy (warn), next try after a back-off;
//!                                    no copy ever: 502 page
//! ```
//!
//! Which requests get it: `/`, `/index.html` and navigations to client-side routes (as for
//! `dir`); anything else is 404 (assets come from the CDN), the gateway's own paths are 404,
//! methods other than GET/HEAD are 405. The answer carries `Cache-Control: no-cache` and an
//! `ETag` of the transformed page, so browsers revalidate on every load.
//!
//! The transformer runs once per fetched version, not per request: the result is served to
//! every visitor, so it must hold no per-user or per-request data (the SPA asks `/bff/user`
//! for that).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use super::{check_request, is_client_route, reserved_paths, IndexHtmlUrl, Reserved};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::log_safe::untrusted;

/// Largest `index.html` accepted from the CDN.
const MAX_INDEX_HTML_BYTES: usize = 2 * 1024 * 1024;
/// Longest wait between two attempts while the CDN fails.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// What a transformer knows about the page it transforms.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IndexHtmlContext {
    /// Where the page was fetched from.
    pub url: Url,
}

/// A transformer failed: the new version is not used (the last good copy is kept).
#[derive(Debug, thiserror::Error)]
#[error("index.html transformer: {0}")]
pub struct TransformError(pub String);

/// Changes `index.html` before the gateway serves it (Duende.BFF's `IIndexHtmlTransformer`).
///
/// Async, so that a transformer may fetch what it injects; it runs once per fetched version
/// of the page (when the CDN answers 200), never per request, and its result is served to
/// every visitor. A synchronous transformation simply does not await. A failure keeps the
/// last good copy, as a CDN failure does.
///
/// ```
/// use portcullis::spa::{IndexHtmlContext, IndexHtmlTransformer, TransformError};
/// struct Banner;
/// #[async_trait::async_trait]
/// impl IndexHtmlTransformer for Banner {
///     async fn transform(&self, html: String, _: &IndexHtmlContext) -> Result<String, TransformError> {
///         Ok(html.replace("<body>", "<body><p>staging</p>"))
///     }
/// }
/// ```
#[async_trait]
pub trait IndexHtmlTransformer: Send + Sync + 'static {
    /// The page to serve, from the page as fetched.
    ///
    /// # Errors
    /// [`TransformError`] when the page cannot be transformed; the last good copy is kept.
    async fn transform(
        &self,
        html: String,
        ctx: &IndexHtmlContext,
    ) -> Result<String, TransformError>;
}

/// The `index_html_url` service (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct IndexHtml {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IndexHtml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexHtml")
            .field("url", &self.inner.settings.url.as_str())
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: IndexHtmlUrl,
    http: reqwest::Client,
    transformer: Box<dyn IndexHtmlTransformer>,
    reserved: Reserved,
    state: Mutex<State>,
    /// The last good copy, readable while a fetch holds `state`.
    current: std::sync::RwLock<Option<Arc<Copy>>>,
}

#[derive(Default)]
struct State {
    /// Do not ask the CDN again before this instant.
    next_fetch: Option<Instant>,
    /// Consecutive failures (for the back-off).
    failures: u32,
}

/// One transformed version of the page.
struct Copy {
    body: Bytes,
    /// Our validator: a hash of the transformed page.
    etag: HeaderValue,
    /// The CDN's validator of the version it came from, for `If-None-Match`.
    cdn_etag: Option<HeaderValue>,
}

enum Fetched {
    New(Copy),
    NotModified,
}

impl IndexHtml {
    /// Serves `settings.url` through `transformer`; the gateway's own paths are reserved.
    ///
    /// # Errors
    /// A message when the HTTP client cannot be built.
    pub fn for_gateway(
        settings: IndexHtmlUrl,
        transformer: impl IndexHtmlTransformer,
        gateway: &Gateway,
    ) -> Result<Self, String> {
        Self::for_settings(settings, transformer, &gateway.settings())
    }

    /// Serves `settings.url` for a frontend with these settings (paths relative to the
    /// frontend): reserves what [`for_gateway`](Self::for_gateway) reserves.
    ///
    /// # Errors
    /// A message when the HTTP client cannot be built.
    pub fn for_settings(
        settings: IndexHtmlUrl,
        transformer: impl IndexHtmlTransformer,
        frontend: &crate::settings::GatewaySettings,
    ) -> Result<Self, String> {
        Self::with_reserved(settings, transformer, reserved_paths(frontend))
    }

    /// Serves `settings.url` through `transformer`; `reserved` path prefixes answer 404.
    ///
    /// # Errors
    /// A message when the HTTP client cannot be built.
    pub fn with_reserved(
        settings: IndexHtmlUrl,
        transformer: impl IndexHtmlTransformer,
        reserved: Vec<String>,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                http,
                transformer: Box::new(transformer),
                reserved: Reserved::new(reserved),
                state: Mutex::new(State::default()),
                current: std::sync::RwLock::new(None),
            }),
        })
    }

    /// A router that answers every request with [`IndexHtml::serve`] (use it as the fallback).
    pub fn router(self) -> Router {
        Router::new().fallback(move |request: Request| {
            let this = self.clone();
            async move { this.serve(request).await }
        })
    }

    /// Answers one request (see the module docs).
    pub async fn serve(&self, request: Request) -> Response {
        let (parts, _body) = request.into_parts();
        match self.try_serve(&parts).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }

    async fn try_serve(&self, request: &http::request::Parts) -> Result<Response, GatewayError> {
        check_request(&request.method, &request.uri, &self.inner.reserved)?;
        let path = request.uri.path();
        let decoded = percent_encoding::percent_decode_str(path).collect::<Vec<u8>>();
        let wanted =
            path == "/" || path == "/index.html" || is_client_route(&request.headers, &decoded);
        if !wanted {
            return Err(GatewayError::NotFound);
        }
        let copy = self.page().await?;
        Ok(answer(
            &copy,
            &request.headers,
            request.method == http::Method::HEAD,
        ))
    }

    /// The copy to serve now, fetching or revalidating it when it is due.
    async fn page(&self) -> Result<Arc<Copy>, GatewayError> {
        let current = self.current();
        let mut state = match self.inner.state.try_lock() {
            Ok(state) => state,
            // Another request is fetching: serve the copy there is, or wait for the fetch.
            Err(_) => match current {
                Some(copy) => return Ok(copy),
                None => self.inner.state.lock().await,
            },
        };
        let now = Instant::now();
        let current = self.current();
        if state.next_fetch.is_some_and(|at| now < at) {
            return current.ok_or_else(|| {
                GatewayError::SpaUnavailable("index.html has not been fetched yet".into())
            });
        }
        let cdn_etag = current.as_ref().and_then(|c| c.cdn_etag.clone());
        match self.fetch(cdn_etag).await {
            Ok(fetched) => {
                state.failures = 0;
                state.next_fetch = Some(now + self.inner.settings.cache_for);
                match fetched {
                    Fetched::New(copy) => {
                        let copy = Arc::new(copy);
                        self.set_current(copy.clone());
                        Ok(copy)
                    }
                    Fetched::NotModified => current.ok_or_else(|| {
                        GatewayError::SpaUnavailable("the CDN answered 304 to a first fetch".into())
                    }),
                }
            }
            Err(reason) => {
                state.failures = state.failures.saturating_add(1);
                let back_off = Duration::from_secs(1u64 << state.failures.min(4))
                    .min(MAX_RETRY_AFTER)
                    .min(self.inner.settings.cache_for.max(Duration::from_secs(1)));
                state.next_fetch = Some(now + back_off);
                match current {
                    Some(copy) => {
                        tracing::warn!(url = %self.inner.settings.url, error = %untrusted(&reason), retry_in_s = back_off.as_secs(), "index.html could not be fetched; serving the last good copy");
                        Ok(copy)
                    }
                    None => Err(GatewayError::SpaUnavailable(reason)),
                }
            }
        }
    }

    fn current(&self) -> Option<Arc<Copy>> {
        match self.inner.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_current(&self, copy: Arc<Copy>) {
        match self.inner.current.write() {
            Ok(mut c) => *c = Some(copy),
            Err(poisoned) => *poisoned.into_inner() = Some(copy),
        }
    }

    /// One conditional GET of the page, transformed when it changed. `Err` says why it failed.
    async fn fetch(&self, cdn_etag: Option<HeaderValue>) -> Result<Fetched, String> {
        let url = &self.inner.settings.url;
        let mut request = self
            .inner
            .http
            .get(url.clone())
            .header(header::ACCEPT, "text/html");
        if let Some(etag) = &cdn_etag {
            request = request.header(header::IF_NONE_MATCH, etag.clone());
        }
        let response = request.send().await.map_err(|e| describe(&e))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED && cdn_etag.is_some() {
            tracing::debug!(%url, "index.html not modified");
            return Ok(Fetched::NotModified);
        }
        if status != StatusCode::OK {
            return Err(format!("the CDN answered {status}"));
        }
        let new_etag = response.headers().get(header::ETAG).cloned();
        if response
            .content_length()
            .is_some_and(|l| l > MAX_INDEX_HTML_BYTES as u64)
        {
            return Err("index.html is larger than 2 MiB".into());
        }
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
            if body.len() + chunk.len() > MAX_INDEX_HTML_BYTES {
                return Err("index.html is larger than 2 MiB".into());
            }
            body.extend_from_slice(&chunk);
        }
        let html = String::from_utf8(body).map_err(|_| "index.html is not UTF-8".to_owned())?;
        let ctx = IndexHtmlContext { url: url.clone() };
        let html = self
            .inner
            .transformer
            .transform(html, &ctx)
            .await
            .map_err(|e| e.to_string())?;
        let digest = Sha256::digest(html.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let etag = HeaderValue::from_str(&format!("\"{hex}\""))
            .map_err(|_| "cannot build an ETag".to_owned())?;
        tracing::info!(%url, "index.html fetched");
        Ok(Fetched::New(Copy {
            body: Bytes::from(html),
            etag,
            cdn_etag: new_etag,
        }))
    }
}

/// The page (or 304) with the headers `index.html` always gets.
fn answer(copy: &Copy, request: &HeaderMap, head: bool) -> Response {
    let not_modified = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t.as_bytes() == copy.etag.as_bytes());
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if head {
        let mut r = Response::new(Body::empty());
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(copy.body.len()));
        r
    } else {
        Response::new(Body::from(copy.body.clone()))
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, copy.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !not_modified {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    response
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A library user's transformer: marks the page, refuses pages that say "broken".
    struct Marker;

    #[async_trait]
    impl IndexHtmlTransformer for Marker {
        async fn transform(
            &self,
            html: String,
            ctx: &IndexHtmlContext,
        ) -> Result<String, TransformError> {
            if html.contains("broken") {
                return Err(TransformError("refused".into()));
            }
            Ok(html.replace("</body>", &format!("<p>{}</p></body>", ctx.url.path())))
        }
    }

    /// A CDN on a loopback port serving whatever `page` holds, counting requests.
    async fn cdn(page: Arc<std::sync::Mutex<String>>, hits: Arc<AtomicUsize>) -> Url {
        let app = Router::new().route(
            "/index.html",
            axum::routing::get(move || {
                let page = page.lock().unwrap().clone();
                hits.fetch_add(1, Ordering::SeqCst);
                async move { page }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/index.html").parse().unwrap()
    }

    async fn body(service: &IndexHtml, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .uri(path)
            .header(header::ACCEPT, "text/html")
            .body(Body::empty())
            .unwrap();
        let r = service.serve(req).await;
        let status = r.status();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_library_transformer_is_applied_and_its_failure_keeps_the_last_copy() {
        let page = Arc::new(std::sync::Mutex::new("<body>v1</body>".to_owned()));
        let hits = Arc::new(AtomicUsize::new(0));
        let url = cdn(page.clone(), hits.clone()).await;
        let mut settings = IndexHtmlUrl::new(url);
        settings.cache_for = Duration::ZERO;
        let service = IndexHtml::with_reserved(settings, Marker, vec!["/bff".into()]).unwrap();

        assert_eq!(
            body(&service, "/").await,
            (StatusCode::OK, "<body>v1<p>/index.html</p></body>".into())
        );
        assert_eq!(body(&service, "/bff/x").await.0, StatusCode::NOT_FOUND);
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        // A version the transformer refuses is not served; the last good copy is.
        *page.lock().unwrap() = "<body>broken</body>".into();
        let (status, text) = body(&service, "/client/route").await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::OK, "<body>v1<p>/index.html</p></body>")
        );
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }
}
