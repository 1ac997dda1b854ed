//! `static_assets_url`: a development server (Vite, webpack-dev-server, ...) behind the
//! gateway, **for development only**.
//!
//! Every request no endpoint and no route took is proxied to the dev server, path and query
//! unchanged (`/src/main.ts?t=1` → `http://127.0.0.1:5173/src/main.ts?t=1`), through the same
//! client and header hygiene as API routes: the browser's `Cookie` and `Authorization` never
//! reach it, no token is attached, paths that could climb out are refused. GET and HEAD only
//! (405 otherwise); WebSocket upgrades (Vite's hot-module-replacement socket) are tunnelled.
//! When the dev server answers 404 to a navigation to a client-side route, the gateway asks
//! it for its root (`/`) instead, as Duende.BFF does, so deep links work with dev servers that
//! have no SPA fallback of their own. The gateway's own paths answer 404.
//!
//! Why only for development: the dev server is trusted with every page the browser loads
//! (scripts included), its answers are not cached, and it usually runs without TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use url::Url;

use super::{check_request, is_client_route, reserved_paths, Reserved};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::proxy::{ForwardContext, Forwarder, Route};
use crate::settings::{GatewaySettings, RouteSettings, TokenPolicy};

/// The `static_assets_url` service (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct DevServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    route: Route,
    forwarder: Forwarder,
    reserved: Reserved,
    public_proto: String,
    public_host: String,
    trust_forwarded: bool,
    own_cookie_names: Vec<String>,
}

impl DevServer {
    /// Proxies to `url` for `gateway` (its public URL, cookie names and reserved paths).
    ///
    /// # Errors
    /// A message when the upstream client cannot be built (TLS setup).
    pub fn for_gateway(url: Url, gateway: &Gateway) -> Result<Self, String> {
        Self::for_settings(url, &gateway.settings())
    }

    /// Proxies to `url` for a frontend with these settings (paths relative to the frontend).
    ///
    /// # Errors
    /// A message when the upstream client cannot be built (TLS setup).
    pub fn for_settings(url: Url, s: &GatewaySettings) -> Result<Self, String> {
        let public = &s.public_url;
        let public_host = match public.port() {
            Some(p) => format!("{}:{p}", public.host_str().unwrap_or_default()),
            None => public.host_str().unwrap_or_default().to_owned(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                route: Route::new(RouteSettings {
                    path: String::new(),
                    upstream: url,
                    token: TokenPolicy::None,
                    anti_forgery: false,
                    resource: None,
                    scope: None,
                    audience: None,
                    refresh_before_expiry: None,
                    client: None,
                    timeout: Duration::from_secs(30),
                    access: Default::default(),
                    max_body: None,
                }),
                forwarder: Forwarder::new()?,
                reserved: Reserved::new(reserved_paths(s)),
                public_proto: public.scheme().to_owned(),
                public_host,
                trust_forwarded: s.trust_forwarded_headers,
                own_cookie_names: vec![s.cookies.session_name().to_owned()],
            }),
        })
    }

    /// A router that answers every request with [`DevServer::serve`] (use it as the fallback).
    pub fn router(self) -> Router {
        Router::new().fallback(move |request: Request| {
            let this = self.clone();
            async move { this.serve(request).await }
        })
    }

    /// Answers one request (see the module docs).
    pub async fn serve(&self, request: Request) -> Response {
        match self.try_serve(request).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }

    async fn try_serve(&self, request: Request) -> Result<Response, GatewayError> {
        check_request(request.method(), request.uri(), &self.inner.reserved)?;
        let i = &self.inner;
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0);
        let ctx = ForwardContext {
            client_addr: peer,
            public_proto: &i.public_proto,
            public_host: &i.public_host,
            trust_forwarded: i.trust_forwarded,
            own_cookie_names: &i.own_cookie_names,
        };
        if crate::csrf::is_websocket_upgrade(request.headers()) {
            return i
                .forwarder
                .forward_upgrade(&i.route, request, None, &ctx, None)
                .await
                .map_err(unavailable);
        }
        let decoded =
            percent_encoding::percent_decode_str(request.uri().path()).collect::<Vec<u8>>();
        let (parts, body) = request.into_parts();
        // A client-side route the dev server does not know is asked again as `/`.
        let retry =
            (parts.uri.path() != "/" && is_client_route(&parts.headers, &decoded)).then(|| {
                let mut p = parts.clone();
                p.uri = http::Uri::from_static("/");
                p
            });
        let request = http::Request::from_parts(parts, Body::new(body));
        let response = i
            .forwarder
            .forward(&i.route, request, None, &ctx)
            .await
            .map_err(unavailable)?;
        match retry {
            Some(root) if response.status() == StatusCode::NOT_FOUND => i
                .forwarder
                .forward(
                    &i.route,
                    http::Request::from_parts(root, Body::empty()),
                    None,
                    &ctx,
                )
                .await
                .map_err(unavailable),
            _ => Ok(response),
        }
    }
}

/// A dev server that cannot be reached is the SPA being unavailable (a 502 page for
/// navigations), not an API failure.
fn unavailable(e: GatewayError) -> GatewayError {
    match e {
        GatewayError::UpstreamUnavailable(m) => GatewayError::SpaUnavailable(m),
        GatewayError::UpstreamTimeout => {
            GatewayError::SpaUnavailable("the development server did not answer in time".into())
        }
        other => other,
    }
}
