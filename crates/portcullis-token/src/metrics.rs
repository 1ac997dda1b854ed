//! Metric names and the few places that increment them (via the `metrics` facade; install any
//! recorder, e.g. a Prometheus exporter, in the binary).
//!
//! | name | labels | counts |
//! |---|---|---|
//! | `portcullis_token_requests_total` | `grant_type` | calls to the token endpoint (`revocation` for RFC 7009 calls) |
//! | `portcullis_token_refresh_total` | | user-token refreshes attempted at the IdP |
//! | `portcullis_token_refresh_failures_total` | `kind` ([`TokenError::kind`](crate::TokenError::kind)) | failed user-token refreshes |
//! | `portcullis_client_token_cache_total` | `result` = `hit` / `miss` | client-credentials cache look-ups |
//! | `portcullis_dpop_unbound_tokens_total` | `grant_type` | tokens a DPoP client received that are not DPoP-bound (the IdP ignored the proof) |
//!
//! Labels are low-cardinality by construction: never a session id, client id or token.

/// Counter of requests to the token and revocation endpoints; label `grant_type`
/// (`revocation` for RFC 7009 calls).
pub const TOKEN_REQUESTS_TOTAL: &str = "portcullis_token_requests_total";
/// Counter of user-token refreshes attempted at the IdP; no labels.
pub const TOKEN_REFRESH_TOTAL: &str = "portcullis_token_refresh_total";
/// Counter of failed user-token refreshes; label `kind` = [`TokenError::kind`](crate::TokenError::kind).
pub const TOKEN_REFRESH_FAILURES_TOTAL: &str = "portcullis_token_refresh_failures_total";
/// Counter of client-credentials cache look-ups; label `result` = `hit` or `miss`.
pub const CLIENT_TOKEN_CACHE_TOTAL: &str = "portcullis_client_token_cache_total";

/// Counter of tokens that a DPoP client received with another `token_type` than `DPoP`
/// (the IdP ignored the proof, RFC 9449 §5); label `grant_type`.
pub const DPOP_UNBOUND_TOKENS_TOTAL: &str = "portcullis_dpop_unbound_tokens_total";

/// Register descriptions with the installed recorder (optional).
pub fn describe_metrics() {
    metrics::describe_counter!(
        TOKEN_REQUESTS_TOTAL,
        "Requests sent to the OAuth token and revocation endpoints"
    );
    metrics::describe_counter!(TOKEN_REFRESH_TOTAL, "User access token refreshes attempted");
    metrics::describe_counter!(
        TOKEN_REFRESH_FAILURES_TOTAL,
        "User access token refreshes that failed, by kind"
    );
    metrics::describe_counter!(
        CLIENT_TOKEN_CACHE_TOTAL,
        "Client-credentials token cache look-ups, by result"
    );
    metrics::describe_counter!(
        DPOP_UNBOUND_TOKENS_TOTAL,
        "Tokens a DPoP client received that are not DPoP-bound, by grant type"
    );
}

pub(crate) fn dpop_not_bound(grant_type: &'static str) {
    metrics::counter!(DPOP_UNBOUND_TOKENS_TOTAL, "grant_type" => grant_type).increment(1);
}

pub(crate) fn token_request(grant_type: &'static str) {
    metrics::counter!(TOKEN_REQUESTS_TOTAL, "grant_type" => grant_type).increment(1);
}

pub(crate) fn refresh_attempt() {
    metrics::counter!(TOKEN_REFRESH_TOTAL).increment(1);
}

pub(crate) fn refresh_failure(kind: &'static str) {
    metrics::counter!(TOKEN_REFRESH_FAILURES_TOTAL, "kind" => kind).increment(1);
}

pub(crate) fn client_cache(hit: bool) {
    metrics::counter!(CLIENT_TOKEN_CACHE_TOTAL, "result" => if hit { "hit" } else { "miss" })
        .increment(1);
}
