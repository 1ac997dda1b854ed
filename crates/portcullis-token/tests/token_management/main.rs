//! Token management against an in-test identity provider. Time is a `ManualClock`: no test
//! sleeps to wait for a token to expire (the only real waits are simulated IdP latency).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod idp;

mod client;
mod client_credentials;
mod dpop;
mod exchange;
mod http_client;
mod refresh_checks;
mod user;
