//! Local API endpoints: handlers that run inside the gateway process (Rust services that use
//! Portcullis as a library), protected exactly like proxied routes.
//!
//! Anti-forgery is applied *by construction*: the only way to mount a local API is
//! [`Gateway::router_with_local_apis`](crate::Gateway::router_with_local_apis), which wraps
//! it in the same header check as every proxied route (peers had an advisory where
//! anti-forgery applied to routes defined one way but not another). Handlers get the caller
//! through the [`CurrentUser`] extractor, which answers 401 — never a redirect — when there
//! is no session.
//!
//! ```no_run
//! # fn demo(gateway: portcullis::Gateway) {
//! use axum::{routing::get, Json, Router};
//! use portcullis::local_api::CurrentUser;
//!
//! async fn me(user: CurrentUser) -> Json<String> {
//!     Json(user.sub().to_owned())
//! }
//! let local = Router::new().route("/me", get(me));
//! let app = gateway.router_with_local_apis(None, vec![("/local".into(), local)]);
//! # }
//! ```

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::error::GatewayError;
use crate::frontend::Frontend;
use crate::session::{ActiveSession, Claim, Lookup};

/// The logged-in user of a local API request.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    session: Arc<ActiveSession>,
}

impl CurrentUser {
    /// The user's `sub` (subject) claim.
    pub fn sub(&self) -> &str {
        &self.session.ticket.sub
    }
    /// The IdP session id (`sid` claim), if the IdP issued one.
    pub fn sid(&self) -> Option<&str> {
        self.session.ticket.sid.as_deref()
    }
    /// All the user's claims, in IdP order.
    pub fn claims(&self) -> &[Claim] {
        &self.session.ticket.claims
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let gw = parts.extensions.get::<Frontend>().cloned().ok_or_else(|| {
            GatewayError::Internal("CurrentUser used outside a local API".into()).into_response()
        })?;
        match gw
            .sessions()
            .lookup(&parts.headers)
            .await
            .map_err(IntoResponse::into_response)?
        {
            Lookup::Active(session) => Ok(Self { session }),
            Lookup::Anonymous | Lookup::Stale => {
                Err(GatewayError::Unauthorized("no session").into_response())
            }
        }
    }
}

/// Wraps a local API router: anti-forgery on every request, and the gateway available to
/// the [`CurrentUser`] extractor.
pub(crate) fn protect(gateway: &Frontend, router: Router) -> Router {
    let gw = gateway.clone();
    router.layer(axum::middleware::from_fn(
        move |mut req: Request, next: Next| {
            let gw = gw.clone();
            async move {
                if let Err(e) = gw.settings().anti_forgery.check(req.headers()) {
                    return e.into_response();
                }
                req.extensions_mut().insert(gw);
                next.run(req).await
            }
        },
    ))
}
