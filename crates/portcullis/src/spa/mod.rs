//! Where a frontend's single-page app comes from, and how the gateway serves it.
//!
//! The SPA is the gateway's fallback: it only sees requests that no management endpoint and no
//! API route took. A frontend has one [`SpaSource`]:
//!
//! | source | the gateway serves | the browser loads the other assets from |
//! |---|---|---|
//! | [`SpaSource::Dir`] | files from a directory ([`Spa`], `index.html` for client-side routes) | the gateway |
//! | [`SpaSource::IndexHtmlUrl`] | `index.html` fetched from a CDN, transformed and cached ([`IndexHtml`]) | the CDN, directly (the page names them by absolute URL) |
//! | [`SpaSource::StaticAssetsUrl`] | everything, proxied to a development server such as Vite ([`DevServer`]) | the gateway (proxied) |
//! | [`SpaSource::None`] | nothing: 404 | elsewhere (split-origin deployments, see [`crate::cors`]) |
//!
//! Whatever the source, paths that belong to the gateway (the management base path, the
//! callback paths, every route prefix) answer 404 and never `index.html`, and `index.html`
//! is sent with `Cache-Control: no-cache` so a new deployment is seen on the next load.
//!
//! ```no_run
//! # fn f(gateway: &portcullis::Gateway) -> Result<(), String> {
//! use portcullis::spa::{IndexHtmlUrl, SpaSource};
//! let source = SpaSource::IndexHtmlUrl(IndexHtmlUrl::new(
//!     "https://cdn.example.com/app/index.html".parse().map_err(|_| "url")?,
//! ));
//! let fallback = source.router(gateway, "/")?;
//! let app = gateway.router(fallback);
//! # Ok(()) }
//! ```

mod dev_server;
mod index_html;
mod inject;
mod static_dir;

use std::path::PathBuf;
use std::time::Duration;

use axum::http::{HeaderMap, Method};
use axum::Router;
use url::Url;

pub use dev_server::DevServer;
pub use index_html::{IndexHtml, IndexHtmlContext, IndexHtmlTransformer, TransformError};
pub use inject::{script_json, InjectTransformer};
pub use static_dir::Spa;

use crate::error::{accepts_html, GatewayError};
use crate::gateway::{join_path, Gateway};
use crate::settings::GatewaySettings;

/// Request targets (path and query) longer than this are answered 414.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Longest file name looked up on disk (`NAME_MAX` on Linux and macOS).
const MAX_SEGMENT_BYTES: usize = 255;
/// Longest decoded path looked up on disk.
const MAX_FILE_PATH_BYTES: usize = 1024;

/// Where a frontend's single-page app comes from (configuration: the `[spa]` section; at most
/// one of `dir`, `index_html_url`, `static_assets_url`).
#[derive(Debug, Clone, Default)]
pub enum SpaSource {
    /// No SPA: everything that is not the gateway's answers 404.
    #[default]
    None,
    /// Static files from a directory that holds `index.html` (`[spa] dir`).
    Dir(PathBuf),
    /// `index.html` from a CDN; the other assets are served by the CDN directly
    /// (`[spa] index_html_url`).
    IndexHtmlUrl(IndexHtmlUrl),
    /// A development server (Vite, webpack-dev-server, ...) proxied for everything the
    /// gateway does not answer itself (`[spa] static_assets_url`). For development only.
    StaticAssetsUrl(Url),
}

/// `index.html` from a URL: where, for how long a copy is used, and what the built-in
/// transformer injects.
#[derive(Debug, Clone)]
pub struct IndexHtmlUrl {
    /// The page's URL (https; http only for loopback hosts).
    pub url: Url,
    /// How long a fetched copy is served before it is fetched (or revalidated) again
    /// (default 5 minutes, as Duende.BFF's `IndexHtmlDefaultCacheDuration`).
    pub cache_for: Duration,
    /// A JSON object exposed to the page as `window.__PORTCULLIS__` (see [`InjectTransformer`]);
    /// `None` injects no script.
    pub inject: Option<serde_json::Map<String, serde_json::Value>>,
}

impl IndexHtmlUrl {
    /// `url`, cached for 5 minutes, nothing injected.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            cache_for: Duration::from_secs(300),
            inject: None,
        }
    }
}

impl SpaSource {
    /// The fallback router that serves this source for `gateway`, `None` for
    /// [`SpaSource::None`]. `mount_path` is the path the frontend is served under (`/` for
    /// the default frontend, `/admin` for a path frontend): the built-in transformer adds a
    /// `<base href="/admin/">` to a CDN page for it.
    ///
    /// # Errors
    /// A message when an HTTP client cannot be built (no TLS roots).
    pub fn router(&self, gateway: &Gateway, mount_path: &str) -> Result<Option<Router>, String> {
        self.router_for(&gateway.settings(), mount_path)
    }

    /// As [`router`](Self::router), for a frontend with these settings (paths relative to
    /// the frontend's prefix), e.g. one of [`crate::FrontendSpec`].
    ///
    /// # Errors
    /// A message when an HTTP client cannot be built (no TLS roots).
    pub fn router_for(
        &self,
        settings: &GatewaySettings,
        mount_path: &str,
    ) -> Result<Option<Router>, String> {
        Ok(match self {
            Self::None => None,
            Self::Dir(dir) => Some(Spa::for_settings(dir, settings).router()),
            Self::IndexHtmlUrl(source) => {
                let transformer = InjectTransformer::new(source.inject.clone(), mount_path);
                Some(IndexHtml::for_settings(source.clone(), transformer, settings)?.router())
            }
            Self::StaticAssetsUrl(url) => {
                Some(DevServer::for_settings(url.clone(), settings)?.router())
            }
        })
    }
}

/// Path prefixes that belong to the gateway: never served by the SPA.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reserved(Vec<String>);

impl Reserved {
    pub(crate) fn new(prefixes: Vec<String>) -> Self {
        Self(
            prefixes
                .into_iter()
                .map(|p| p.trim_end_matches('/').to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
        )
    }

    /// `path` is one of the prefixes or below one (segment boundaries).
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|p| {
            path.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// The gateway's own paths: the management base path (each management endpoint when it is
/// `/`), both callback paths and every route prefix.
pub(crate) fn reserved_paths(s: &crate::settings::GatewaySettings) -> Vec<String> {
    let mut reserved = vec![s.callback_path.clone(), s.signed_out_callback_path.clone()];
    if !s.base_path.trim_end_matches('/').is_empty() {
        reserved.push(s.base_path.clone());
    } else {
        reserved.extend(
            crate::bff::MANAGEMENT_ENDPOINTS
                .iter()
                .map(|p| join_path(&s.base_path, p)),
        );
    }
    reserved.extend(s.routes.iter().map(|r| r.path.clone()));
    reserved
}

/// The checks every source makes first: the target is a path of bounded length, not the
/// gateway's, and the method is GET or HEAD.
pub(crate) fn check_request(
    method: &Method,
    uri: &axum::http::Uri,
    reserved: &Reserved,
) -> Result<(), GatewayError> {
    let path = uri.path();
    if !path.starts_with('/') {
        return Err(GatewayError::BadRequestTarget);
    }
    let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_TARGET_BYTES {
        return Err(GatewayError::UriTooLong);
    }
    if reserved.contains(path) {
        return Err(GatewayError::NotFound);
    }
    if method != Method::GET && method != Method::HEAD {
        return Err(GatewayError::MethodNotAllowed { allow: "GET, HEAD" });
    }
    Ok(())
}

/// Whether a decoded path can be looked up on disk at all.
pub(crate) fn can_name_a_file(decoded: &[u8]) -> bool {
    decoded.len() <= MAX_FILE_PATH_BYTES
        && decoded
            .split(|b| *b == b'/')
            .all(|seg| seg.len() <= MAX_SEGMENT_BYTES && !seg.contains(&0))
}

/// A navigation that looks like a client-side route: `Accept` lists `text/html` and the last
/// (decoded) segment has no file extension.
pub(crate) fn is_client_route(headers: &HeaderMap, decoded_path: &[u8]) -> bool {
    let last = decoded_path
        .rsplit(|b| *b == b'/')
        .next()
        .unwrap_or_default();
    let has_extension = last
        .iter()
        .rposition(|b| *b == b'.')
        .is_some_and(|i| i > 0 && i + 1 < last.len());
    !has_extension && accepts_html(headers)
}
