//! Split-origin deployments: CORS for an SPA served from another origin than the gateway
//! (Fetch Standard §3.2, "CORS protocol").
//!
//! Only needed when the SPA's pages come from another origin (`https://app.example.com`
//! calling `https://bff.example.com`); a gateway that serves the SPA itself, or sits behind
//! the same origin, needs none and should configure none. With it, the gateway answers for
//! the listed origins only, and only on its API paths (route prefixes, local APIs) and the
//! management endpoints (`/bff/*`):
//!
//! | request | answer |
//! |---|---|
//! | preflight (`OPTIONS` + `Access-Control-Request-Method`) from a listed origin | 200: `Access-Control-Allow-Origin: <that origin>`, `-Allow-Credentials: true`, `-Allow-Methods`, `-Allow-Headers` (the anti-forgery header, `Content-Type`, configured extras), `-Max-Age`, `Vary: Origin, …` |
//! | any other request from a listed origin | the gateway's answer, plus `Access-Control-Allow-Origin`, `-Allow-Credentials`, `Vary` |
//! | anything from an origin not listed, or without `Origin` | the gateway's answer with **no** `Access-Control-*` header (a preflight falls through to the route: 401 for want of the anti-forgery header, or 405), plus `Vary: Origin` |
//! | other paths (the SPA, callbacks, health) | untouched |
//!
//! Origins match exactly, byte for byte (scheme, host and port as a browser serializes them,
//! in lower case); there is no wildcard. On these paths the gateway is the only source of
//! CORS headers: an upstream's own `Access-Control-*` response headers are dropped.
//!
//! Configured per frontend ([`GatewaySettings::cors`], in the binary `[server.cors]` for every
//! frontend and `[frontends.cors]` to override it for one): the gateway applies it to each
//! frontend's router, with paths relative to the frontend's prefix, so a frontend's CORS covers
//! its own routes and endpoints only and a configuration reload replaces it with the rest.
//!
//! The header work is tower-http's [`CorsLayer`]; this module decides to whom and where it
//! applies (tower-http answers every `OPTIONS`, for every origin, with the allowed methods
//! and headers, which is more than an unlisted origin should see).
//!
//! What it costs: a listed origin is trusted like the gateway's own pages. Script on it can
//! call every API with the user's session and read the answers, so a cross-site scripting
//! flaw or a hostile takeover (a dangling DNS record) there is one on the gateway. The
//! session cookie stays `SameSite=Strict`, so the SPA's origin must be *same-site* with the
//! gateway (`app.example.com` and `bff.example.com`); from another site, browsers would not
//! send the cookie. WebSocket upgrades accept the listed origins as well (the binary adds them
//! to the WebSocket origin allow-list).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tower::{Layer, ServiceExt};
use tower_http::cors::{AllowCredentials, AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use crate::gateway::{join_path, Gateway};
use crate::settings::GatewaySettings;
use crate::spa::Reserved;

/// `[server.cors]`: which origins may call the gateway from script with credentials.
#[derive(Debug, Clone)]
pub struct CorsSettings {
    /// Serialized origins (`https://app.example.com`, no path, no trailing slash), exact match.
    pub allowed_origins: Vec<HeaderValue>,
    /// Request headers allowed besides the anti-forgery header and `Content-Type`.
    pub allowed_headers: Vec<HeaderName>,
    /// How long a browser may cache a preflight answer (`Access-Control-Max-Age`).
    pub max_age: Duration,
}

impl CorsSettings {
    /// Parses a configured origin: `scheme://host[:port]` exactly as a browser serializes it
    /// (lower case, no default port, no path, no trailing slash); `*` and `null` are refused.
    ///
    /// # Errors
    /// A message saying what is wrong, and the spelling to use when there is one.
    pub fn parse_origin(origin: &str) -> Result<HeaderValue, String> {
        let url = url::Url::parse(origin)
            .map_err(|_| format!("{origin:?} is not an origin like https://app.example.com"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!(
                "{origin:?} is not an http(s) origin like https://app.example.com"
            ));
        }
        let serialized = url.origin().ascii_serialization();
        if serialized != origin {
            return Err(format!(
                "{origin:?} is not a serialized origin (no path, no trailing slash, lower case, no default port): write {serialized:?}"
            ));
        }
        HeaderValue::from_str(&serialized).map_err(|_| format!("{origin:?} is not a header value"))
    }
}

/// The split-origin CORS layer for a gateway's router (see the module docs).
#[derive(Clone)]
pub struct Cors {
    inner: Arc<Inner>,
}

struct Inner {
    origins: Vec<HeaderValue>,
    scope: Reserved,
    layer: CorsLayer,
}

impl std::fmt::Debug for Cors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cors")
            .field("origins", &self.inner.origins)
            .finish_non_exhaustive()
    }
}

impl Cors {
    /// CORS for one frontend with these `settings` (its [`GatewaySettings::cors`]): its
    /// management endpoints and routes, plus `local_api_prefixes`; paths relative to the
    /// frontend's prefix. `None` when the settings list no origin.
    ///
    /// The gateway applies this to every frontend's router by itself (so it follows
    /// [`Gateway::reload`]); library users need it only for routers of their own.
    pub fn for_frontend(settings: &GatewaySettings, local_api_prefixes: &[String]) -> Option<Self> {
        let cors = settings
            .cors
            .as_ref()
            .filter(|c| !c.allowed_origins.is_empty())?;
        let mut scope: Vec<String> = settings.routes.iter().map(|r| r.path.clone()).collect();
        scope.extend(local_api_prefixes.iter().cloned());
        if settings.base_path.trim_end_matches('/').is_empty() {
            scope.extend(
                crate::bff::MANAGEMENT_ENDPOINTS
                    .iter()
                    .map(|p| join_path(&settings.base_path, p)),
            );
        } else {
            scope.push(settings.base_path.clone());
        }
        let mut headers = vec![
            settings.anti_forgery.header_name().clone(),
            header::CONTENT_TYPE,
        ];
        headers.extend(cors.allowed_headers.iter().cloned());
        Some(Self::new(cors, scope, headers))
    }

    /// CORS with `settings` for `gateway`'s default frontend, plus `local_api_prefixes`.
    ///
    /// Not needed when the default frontend's [`GatewaySettings::cors`] is set: the gateway
    /// then applies it itself (applying both would answer twice).
    pub fn for_gateway(
        settings: &CorsSettings,
        gateway: &Gateway,
        local_api_prefixes: &[String],
    ) -> Self {
        let mut s = (*gateway.settings()).clone();
        s.cors = Some(settings.clone());
        Self::for_frontend(&s, local_api_prefixes)
            .unwrap_or_else(|| Self::new(settings, Vec::new(), Vec::new()))
    }

    /// CORS on the `scope` path prefixes, allowing `allowed_headers` in requests.
    pub fn new(
        settings: &CorsSettings,
        scope: Vec<String>,
        allowed_headers: Vec<HeaderName>,
    ) -> Self {
        let layer = CorsLayer::new()
            .allow_origin(AllowOrigin::list(settings.allowed_origins.iter().cloned()))
            .allow_credentials(AllowCredentials::yes())
            .allow_methods(AllowMethods::list([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ]))
            .allow_headers(AllowHeaders::list(allowed_headers))
            .max_age(settings.max_age);
        Self {
            inner: Arc::new(Inner {
                origins: settings.allowed_origins.clone(),
                scope: Reserved::new(scope),
                layer,
            }),
        }
    }

    /// Whether `origin` is listed: byte for byte, as tower-http compares it (browsers
    /// serialize origins in lower case, and the configuration is checked to be so).
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        self.inner.origins.iter().any(|o| o == origin)
    }

    /// The middleware: `router.layer(axum::middleware::from_fn(move |r, n| cors.clone().handle(r, n)))`,
    /// or use [`Cors::apply`].
    pub async fn handle(self, request: Request, next: Next) -> Response {
        if !self.inner.scope.contains(request.uri().path()) {
            return next.run(request).await;
        }
        let mut origins = request.headers().get_all(header::ORIGIN).iter();
        let listed = match (origins.next(), origins.next()) {
            (Some(o), None) => self.allows(o),
            _ => false,
        };
        // An `OPTIONS` that is not a preflight is an ordinary request for the route.
        let plain_options = request.method() == Method::OPTIONS
            && !request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let mut response = if listed && !plain_options {
            // The answer behind the layer loses any `Access-Control-*` of its own; the layer
            // then sets the gateway's.
            let inner = tower::service_fn(move |request: Request| {
                let next = next.clone();
                async move {
                    let mut r = next.run(request).await;
                    remove_cors_headers(r.headers_mut());
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            match self.inner.layer.clone().layer(inner).oneshot(request).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        } else {
            let mut r = next.run(request).await;
            remove_cors_headers(r.headers_mut());
            r
        };
        let vary_origin = response
            .headers()
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case("origin"));
        if !vary_origin {
            response
                .headers_mut()
                .append(header::VARY, HeaderValue::from_static("origin"));
        }
        response
    }

    /// `router` with this CORS layer around it.
    pub fn apply(self, router: axum::Router) -> axum::Router {
        router.layer(axum::middleware::from_fn(move |request, next| {
            self.clone().handle(request, next)
        }))
    }
}

fn remove_cors_headers(headers: &mut axum::http::HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;

    /// An API that sets its own (too generous) CORS headers, and a page outside the scope.
    fn app() -> Router {
        let api = || async {
            (
                [
                    ("access-control-allow-origin", "*"),
                    ("access-control-expose-headers", "x-secret"),
                    ("vary", "accept-encoding"),
                ],
                "api",
            )
        };
        let router = Router::new()
            .route("/api/x", get(api))
            .route("/page", get(|| async { "page" }));
        let settings = CorsSettings {
            allowed_origins: vec![HeaderValue::from_static("https://app.example.com")],
            allowed_headers: vec![],
            max_age: Duration::from_secs(60),
        };
        Cors::new(
            &settings,
            vec!["/api".into()],
            vec![HeaderName::from_static("x-csrf")],
        )
        .apply(router)
    }

    async fn send(method: Method, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        app()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    /// The `access-control-*` headers, sorted.
    fn cors_headers(r: &Response) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("access-control-"))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        h.sort();
        h
    }

    fn vary(r: &Response) -> String {
        r.headers()
            .get_all(header::VARY)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(", ")
    }

    #[tokio::test]
    async fn only_listed_origins_get_cors_headers_and_only_in_scope() {
        const APP: &str = "https://app.example.com";
        let preflight = [
            ("origin", APP),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-csrf"),
        ];
        let r = send(Method::OPTIONS, "/api/x", &preflight).await;
        assert_eq!(r.status(), 200);
        let h = cors_headers(&r);
        assert!(
            h.contains(&("access-control-allow-origin".into(), APP.into())),
            "{h:?}"
        );
        assert!(h.contains(&("access-control-allow-credentials".into(), "true".into())));
        assert!(h.contains(&("access-control-allow-headers".into(), "x-csrf".into())));
        assert!(vary(&r).contains("origin"));

        // The actual call: the gateway's headers replace the API's own.
        let r = send(Method::GET, "/api/x", &[("origin", APP)]).await;
        let h = cors_headers(&r);
        assert_eq!(
            h,
            [
                (
                    "access-control-allow-credentials".to_owned(),
                    "true".to_owned()
                ),
                ("access-control-allow-origin".to_owned(), APP.to_owned()),
            ],
            "{h:?}"
        );
        assert!(
            vary(&r).contains("accept-encoding") && vary(&r).contains("origin"),
            "{}",
            vary(&r)
        );

        // Not listed, no Origin, two Origins: no CORS header at all, the API's dropped too,
        // and a preflight reaches the route (here: 405, GET only).
        for headers in [
            &[("origin", "https://evil.example")][..],
            &[][..],
            &[("origin", APP), ("origin", "https://evil.example")][..],
            &[("origin", "HTTPS://APP.EXAMPLE.COM")][..],
        ] {
            let r = send(Method::GET, "/api/x", headers).await;
            assert!(
                cors_headers(&r).is_empty(),
                "{headers:?}: {:?}",
                cors_headers(&r)
            );
            assert!(vary(&r).contains("origin"), "{headers:?}");
        }
        let r = send(
            Method::OPTIONS,
            "/api/x",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ],
        )
        .await;
        assert_eq!(r.status(), 405);
        assert!(cors_headers(&r).is_empty());

        // Outside the scope nothing changes, whoever asks.
        let r = send(Method::GET, "/page", &[("origin", APP)]).await;
        assert!(cors_headers(&r).is_empty());
        assert!(!vary(&r).contains("origin"));
    }
}
