//! OpenTelemetry end to end: the real binary exports traces over OTLP/HTTP (protobuf) to a
//! receiver started by the test, which decodes them with the official protobuf definitions
//! (`opentelemetry-proto`, prost). Asserted: the span tree of a login's callback and of a
//! proxied call that refreshes its token, the `traceparent` the upstream (the Node example
//! API) received naming the gateway's upstream span, the one the IdP's token endpoint
//! received naming the refresh's `token_request` span, a browser's `traceparent` ignored by
//! default and continued when `trust_incoming_trace_context = true`, and no attribute or
//! event holding a secret (every value the IdP issued, the client secret, the session
//! cookie).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;
use serde_json::Value;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
    /// Attribute values of the span's events (log lines inside the span), with their names.
    event_values: Vec<String>,
}

/// An OTLP/HTTP trace receiver on 127.0.0.1 (`POST /v1/traces`, protobuf).
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<Mutex<u64>>,
    _server: tokio::task::JoinHandle<()>,
}

fn text(v: &KeyValue) -> String {
    match v.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let requests: Arc<Mutex<u64>> = Arc::default();
        let (s, r) = (spans.clone(), requests.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let (spans, requests) = (s.clone(), r.clone());
                async move {
                    assert_eq!(
                        headers[axum::http::header::CONTENT_TYPE],
                        "application/x-protobuf"
                    );
                    let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    *requests.lock().unwrap() += 1;
                    let mut out = spans.lock().unwrap();
                    for rs in export.resource_spans {
                        for ss in rs.scope_spans {
                            for sp in ss.spans {
                                out.push(Span {
                                    trace_id: hex(&sp.trace_id),
                                    span_id: hex(&sp.span_id),
                                    parent: hex(&sp.parent_span_id),
                                    name: sp.name.clone(),
                                    attributes: sp
                                        .attributes
                                        .iter()
                                        .map(|kv| (kv.key.clone(), text(kv)))
                                        .collect(),
                                    event_values: sp
                                        .events
                                        .iter()
                                        .flat_map(|e| {
                                            std::iter::once(e.name.clone())
                                                .chain(e.attributes.iter().map(text))
                                        })
                                        .collect(),
                                });
                            }
                        }
                    }
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url,
            spans,
            requests,
            _server: server,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until a span matches `pred`; returns it.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Span) -> bool) -> Span {
        for _ in 0..100 {
            if let Some(s) = self.spans().into_iter().find(&pred) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no exported span {what}; got {} export requests with spans {:#?}",
            self.requests.lock().unwrap(),
            self.spans()
                .iter()
                .map(|s| (&s.name, &s.attributes))
                .collect::<Vec<_>>()
        );
    }

    /// Every span below `root` (same trace, reachable through parents).
    fn descendants(&self, root: &Span) -> Vec<Span> {
        let all: Vec<Span> = self
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == root.trace_id)
            .collect();
        let mut found = vec![root.span_id.clone()];
        let mut out = Vec::new();
        loop {
            let next: Vec<Span> = all
                .iter()
                .filter(|s| found.contains(&s.parent) && !found.contains(&s.span_id))
                .cloned()
                .collect();
            if next.is_empty() {
                return out;
            }
            found.extend(next.iter().map(|s| s.span_id.clone()));
            out.extend(next);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr<'a>(s: &'a Span, key: &str) -> &'a str {
    s.attributes
        .get(key)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("span {} has no {key}: {:?}", s.name, s.attributes))
}

fn child<'a>(spans: &'a [Span], parent: &Span, name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.parent == parent.span_id && s.name == name)
        .unwrap_or_else(|| {
            panic!(
                "span {} has no child {name}; children: {:?}",
                parent.name,
                spans
                    .iter()
                    .filter(|s| s.parent == parent.span_id)
                    .map(|s| &s.name)
                    .collect::<Vec<_>>()
            )
        })
}

async fn traced_stack(receiver: &Receiver, trust_incoming: bool, ttl: u64) -> Stack {
    // Export every 100 ms instead of every 5 s (standard variable, read by the batch
    // processor of the gateway this test process spawns).
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    Stack::start_with(
        IdpOptions {
            access_token_ttl: ttl,
            ..Default::default()
        },
        &format!(
            "\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"portcullis-e2e\"\nsampling_ratio = 1.0\ntrust_incoming_trace_context = {trust_incoming}\n",
            receiver.url
        ),
    )
    .await
}

#[tokio::test]
async fn login_and_refreshing_api_call_export_span_trees_with_trace_context_and_no_secret() {
    let receiver = Receiver::start().await;
    let stack = traced_stack(&receiver, false, 2).await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;

    // The callback: code exchange at the IdP and the ID token's keys, under the request span.
    let callback = receiver
        .wait_for("for the callback", |s| {
            s.attributes.get("url.path").map(String::as_str) == Some("/signin-oidc")
                && s.attributes.contains_key("http.response.status_code")
        })
        .await;
    assert_eq!(attr(&callback, "http.route"), "/signin-oidc");
    assert_eq!(attr(&callback, "url.path"), "/signin-oidc");
    assert_eq!(attr(&callback, "http.request.method"), "GET");
    assert_eq!(attr(&callback, "http.response.status_code"), "302");
    assert_eq!(
        attr(&callback, "server.address"),
        gw.origin.trim_start_matches("http://")
    );
    let below = receiver.descendants(&callback);
    let exchange = below
        .iter()
        .find(|s| s.name == "token_request")
        .unwrap_or_else(|| panic!("callback without token_request: {below:#?}"));
    assert_eq!(attr(exchange, "grant_type"), "authorization_code");
    assert_eq!(attr(exchange, "server.address"), "127.0.0.1");
    assert!(
        below.iter().any(|s| s.name == "idp.jwks"),
        "the first login fetches the JWKS inside the callback: {below:#?}"
    );

    // A proxied call after the access token expired: session, token (refresh at the IdP),
    // upstream; the upstream sees our trace context, not the browser's.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let browser_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = b
        .send(
            b.http
                .get(gw.url("/api/echo/orders?secret-query=1"))
                .header("x-csrf", "1")
                .header("traceparent", browser_trace)
                .header("tracestate", "browser=1"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let echoed: Value = r.json().await.unwrap();
    let seen_traceparent = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the upstream got no traceparent: {echoed}"))
        .to_owned();
    assert!(
        echoed["headers"].get("tracestate").is_none(),
        "the browser's tracestate reached the upstream: {echoed}"
    );
    let api = receiver
        .wait_for("for the API call", |s| {
            s.attributes.get("url.path").map(String::as_str) == Some("/api/echo/orders")
                && s.attributes.contains_key("http.response.status_code")
        })
        .await;
    // The request span opens before frontend selection, when the route is not known yet:
    // its name is the method alone (OpenTelemetry HTTP conventions: "{method}" without a
    // route) and `http.route` is recorded once the frontend's router matched.
    assert_eq!(api.name, "GET");
    assert_eq!(attr(&api, "http.route"), "/api/{*rest}");
    assert_eq!(attr(&api, "http.response.status_code"), "200");
    assert_ne!(
        api.trace_id, "0af7651916cd43dd8448eb211c80319c",
        "an untrusted browser traceparent was continued"
    );
    receiver
        .wait_for("upstream", |s| {
            s.name == "upstream" && s.trace_id == api.trace_id
        })
        .await;
    let spans = receiver.spans();
    let session = child(&spans, &api, "session.lookup");
    assert!(
        ["hit", "miss"].contains(&attr(session, "session.cache")),
        "{session:?}"
    );
    let token = child(&spans, &api, "token");
    assert_eq!(attr(token, "token.cache"), "miss");
    let refresh = receiver
        .descendants(token)
        .into_iter()
        .find(|s| s.name == "user_token_refresh")
        .expect("the expired token is refreshed under the token span");
    let refresh_call = child(&spans, &refresh, "token_request");
    assert_eq!(attr(refresh_call, "grant_type"), "refresh_token");
    let at_idp = stack.idp.stats().await["token_traceparents"].clone();
    let expected = format!("00-{}-{}-01", api.trace_id, refresh_call.span_id);
    assert!(
        at_idp
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str() == Some(expected.as_str())),
        "the IdP's token endpoint did not see the refresh's traceparent {expected}: {at_idp}"
    );
    let upstream = child(&spans, &api, "upstream");
    assert_eq!(attr(upstream, "http.response.status_code"), "200");
    assert_eq!(attr(upstream, "server.address"), "127.0.0.1");
    assert_eq!(
        seen_traceparent,
        format!("00-{}-{}-01", api.trace_id, upstream.span_id),
        "the upstream's traceparent names the gateway's upstream span"
    );

    // No secret in any attribute or event of any span.
    let issued = stack.idp.issued().await;
    let cookie = b.cookie_header(&gw.url("/"));
    let cookie_values: Vec<String> = cookie
        .split("; ")
        .filter_map(|c| c.split_once('=').map(|(_, v)| v.to_owned()))
        .filter(|v| v.len() >= 16)
        .collect();
    assert!(
        !cookie_values.is_empty(),
        "the browser holds a session cookie"
    );
    let secrets: Vec<&String> = issued
        .authorization_codes
        .iter()
        .chain(&issued.access_tokens)
        .chain(&issued.refresh_tokens)
        .chain(&issued.id_tokens)
        .chain(&cookie_values)
        .collect();
    assert!(
        issued.access_tokens.len() >= 2 && !issued.authorization_codes.is_empty(),
        "the check covers a refresh and a code: {issued:?}"
    );
    let spans = receiver.spans();
    let mut checked = 0;
    for s in &spans {
        for v in s.attributes.values().chain(&s.event_values) {
            checked += 1;
            assert!(
                !v.contains(CLIENT_SECRET),
                "client secret in span {}",
                s.name
            );
            assert!(
                !v.contains("secret-query"),
                "query string in span {}",
                s.name
            );
            for secret in &secrets {
                assert!(
                    !v.contains(secret.as_str()),
                    "a secret issued by the IdP or the session cookie in span {}: {v}",
                    s.name
                );
            }
        }
    }
    assert!(checked > 50, "only {checked} values checked");
    let mut stack = stack;
    stack.gw.stop().await;
}

#[tokio::test]
async fn browser_traceparent_is_continued_only_when_trusted() {
    let receiver = Receiver::start().await;
    let stack = traced_stack(&receiver, true, 300).await;
    let gw = &stack.gw;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = reqwest::Client::new()
        .get(gw.url("/api-none/echo/trusted"))
        .header("x-csrf", "1")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echoed: Value = r.json().await.unwrap();
    let seen = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    let api = receiver
        .wait_for("for the API call", |s| {
            s.attributes.get("url.path").map(String::as_str) == Some("/api-none/echo/trusted")
        })
        .await;
    assert_eq!(api.trace_id, trace, "the browser's trace is continued");
    assert_eq!(api.parent, "00f067aa0ba902b7");
    assert!(
        seen.starts_with(&format!("00-{trace}-")) && !seen.contains("00f067aa0ba902b7"),
        "the upstream is a child of the gateway's span in the browser's trace: {seen}"
    );
    let mut stack = stack;
    stack.gw.stop().await;
}
