//! # Portcullis
//!
//! A Backend-for-Frontend (BFF) security gateway: single-page apps never hold OAuth tokens.
//! The gateway logs users in with OpenID Connect as a confidential client, keeps their
//! tokens in a server-side session, gives the browser only an opaque `HttpOnly` cookie,
//! refreshes tokens before they expire, and forwards API calls with the right access token.
//! Its browser contract is Duende.BFF's (`/bff/login`, `/bff/user`, `/bff/logout?sid=`,
//! `X-CSRF: 1`).
//!
//! The modules follow a request through the gateway:
//!
//! ```text
//! cookie ──▶ session ──▶ token ──▶ proxy
//! (cookie)   (session)   (token)   (proxy)
//!   │           │           │         └ fixed upstream, header hygiene, streaming
//!   │           │           └ policy per route, refresh single-flight (portcullis-token)
//!   │           └ store lookup (portcullis-session), sealed ticket, idle/absolute timeouts
//!   └ opaque 256-bit id, __Host- prefix, SameSite
//! ```
//! with [`csrf`] guarding every API route, [`oidc`] and [`bff`] for the login protocol and
//! the management endpoints, and [`error`] as the one place failures become responses.
//!
//! ## Example
//! ```no_run
//! # async fn run(settings: portcullis::settings::GatewaySettings, keys: portcullis::session::KeyRing) {
//! use std::sync::Arc;
//! let store = portcullis_session::connect("memory").await.unwrap();
//! let clock = Arc::new(portcullis_token::SystemClock);
//! let gateway = portcullis::Gateway::new(settings, store, keys, clock).unwrap();
//! let app = gateway.router(None);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap();
//! # }
//! ```
//!
//! The library reads no files and no environment; the `portcullis` binary does that.

#![warn(missing_docs)]

pub mod access;
pub mod admin;
pub mod bff;
pub mod cookie;
pub mod cors;
pub mod csrf;
pub mod error;
pub mod frontend;
mod gateway;
pub mod local_api;
pub mod log_safe;
pub mod oidc;
#[cfg(test)]
mod properties;
pub mod proxy;
pub mod session;
pub mod settings;
pub mod spa;
pub mod telemetry;
pub mod token;

pub use frontend::{Frontend, FrontendSettings};
pub use gateway::{join_path, FrontendSpec, Gateway};
pub use portcullis_session as store;
pub use portcullis_token as tokens;
