//! OpenTelemetry end to end: the real binary exports traces over OTLP/HTTP (protobuf) or
//! OTLP/gRPC to a receiver started by the test, which decodes them with the official protobuf
//! definitions (`opentelemetry-proto`, prost). Asserted: the span tree of a login (its
//! pushed authorization request and callback), of a proxied call that refreshes its token
//! and of a logout (revocation), request spans named `"{method} {route}"`, the `traceparent`
//! the upstream (the Node example API) received naming the gateway's upstream span, the one
//! the IdP's token endpoint received naming the refresh's `token_request` span, a browser's
//! `traceparent` ignored by default and continued when `trust_incoming_trace_context =
//! true`, nothing exported at sampling ratio 0 while the upstream still learns the decision,
//! and no attribute or event holding a secret (every value the IdP issued, the client
//! secret, every cookie the gateway set, the login's `state` and `nonce`).

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

/// Flattens the spans of one export request into `out`.
fn collect(export: ExportTraceServiceRequest, out: &Mutex<Vec<Span>>) {
    let mut out = out.lock().unwrap();
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
                            std::iter::once(e.name.clone()).chain(e.attributes.iter().map(text))
                        })
                        .collect(),
                });
            }
        }
    }
}

/// The OTLP/gRPC method (`opentelemetry/proto/collector/trace/v1/trace_service.proto`).
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// One gRPC call of the OTLP/gRPC receiver: the request's one length-prefixed message
/// (gRPC over HTTP/2, `PROTOCOL-HTTP2.md`: a compressed flag byte, a 4-byte big-endian
/// length, the protobuf), answered with an empty `ExportTraceServiceResponse` and
/// `grpc-status: 0` in the trailers.
async fn grpc_export(
    request: hyper::Request<hyper::body::Incoming>,
    spans: &Mutex<Vec<Span>>,
    requests: &Mutex<u64>,
) -> hyper::Response<
    http_body_util::StreamBody<
        futures_util::stream::Iter<
            std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>,
        >,
    >,
> {
    use http_body_util::BodyExt as _;
    let grpc_status = |status: &str, message: Vec<u8>| {
        let mut framed = vec![0u8];
        framed.extend((message.len() as u32).to_be_bytes());
        framed.extend(message);
        let mut trailers = axum::http::HeaderMap::new();
        trailers.insert("grpc-status", status.parse().unwrap());
        let frames = vec![
            Ok(hyper::body::Frame::data(Bytes::from(framed))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        hyper::Response::builder()
            .header(axum::http::header::CONTENT_TYPE, "application/grpc")
            .body(http_body_util::StreamBody::new(futures_util::stream::iter(
                frames,
            )))
            .unwrap()
    };
    let content_type = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if request.uri().path() != GRPC_EXPORT || !content_type.starts_with("application/grpc") {
        // UNIMPLEMENTED
        return grpc_status("12", Vec::new());
    }
    let body = request.into_body().collect().await.unwrap().to_bytes();
    assert!(body.len() >= 5 && body[0] == 0, "one uncompressed message");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    assert_eq!(body.len(), 5 + len, "one length-prefixed message");
    let export = ExportTraceServiceRequest::decode(&body[5..]).expect("OTLP protobuf");
    *requests.lock().unwrap() += 1;
    collect(export, spans);
    grpc_status("0", ExportTraceServiceResponse::default().encode_to_vec())
}

impl Receiver {
    /// OTLP/HTTP: `POST /v1/traces`, `application/x-protobuf`.
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
                    collect(export, &spans);
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

    /// OTLP/gRPC: HTTP/2 without TLS (prior knowledge), the `TraceService/Export` call.
    async fn start_grpc() -> Receiver {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let requests: Arc<Mutex<u64>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (s, r) = (spans.clone(), requests.clone());
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (s, r) = (s.clone(), r.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(grpc_export(request, &s, &r).await)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
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

/// How the gateway under test traces.
struct Tracing<'a> {
    protocol: &'a str,
    sampling_ratio: f64,
    trust_incoming: bool,
    /// Access token lifetime at the IdP (seconds).
    ttl: u64,
    /// Extra `[oidc]` lines.
    oidc: &'a str,
}

impl Default for Tracing<'_> {
    fn default() -> Self {
        Self {
            protocol: "http/protobuf",
            sampling_ratio: 1.0,
            trust_incoming: false,
            ttl: 300,
            oidc: "",
        }
    }
}

async fn traced_stack(receiver: &Receiver, t: Tracing<'_>) -> Stack {
    // Export every 100 ms instead of every 5 s (standard variable, read by the batch
    // processor of the gateway this test process spawns).
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let telemetry = format!(
        "\n[telemetry]\notlp_endpoint = \"{}\"\notlp_protocol = \"{}\"\nservice_name = \"portcullis-e2e\"\nsampling_ratio = {:?}\ntrust_incoming_trace_context = {}\n",
        receiver.url, t.protocol, t.sampling_ratio, t.trust_incoming
    );
    let oidc = t.oidc.to_owned();
    Stack::start_edited(
        IdpOptions {
            access_token_ttl: t.ttl,
            ..Default::default()
        },
        move |config| {
            assert!(config.contains("[oidc]\n"));
            config.replacen("[oidc]\n", &format!("[oidc]\n{oidc}"), 1) + &telemetry
        },
    )
    .await
}

#[tokio::test]
async fn login_and_refreshing_api_call_export_span_trees_with_trace_context_and_no_secret() {
    let receiver = Receiver::start().await;
    let stack = traced_stack(
        &receiver,
        Tracing {
            ttl: 2,
            oidc: "par = \"auto\"\n",
            ..Tracing::default()
        },
    )
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;

    // The login: its authorization request pushed to the IdP (RFC 9126) in a client span.
    let login = receiver
        .wait_for("for the login", |s| {
            s.attributes.get("url.path").map(String::as_str) == Some("/bff/login")
        })
        .await;
    assert_eq!(login.name, "GET /bff/login");
    let par = receiver
        .descendants(&login)
        .into_iter()
        .find(|s| s.name == "pushed_authorization_request")
        .unwrap_or_else(|| panic!("login without a pushed_authorization_request span"));
    assert_eq!(attr(&par, "server.address"), "127.0.0.1");
    assert_eq!(attr(&par, "http.response.status_code"), "201");

    // The callback: code exchange at the IdP and the ID token's keys, under the request span.
    let callback = receiver
        .wait_for("for the callback", |s| {
            s.attributes.get("url.path").map(String::as_str) == Some("/signin-oidc")
                && s.attributes.contains_key("http.response.status_code")
        })
        .await;
    assert_eq!(callback.name, "GET /signin-oidc");
    assert_eq!(attr(&callback, "http.route"), "/signin-oidc");
    assert_eq!(attr(&callback, "url.path"), "/signin-oidc");
    assert_eq!(attr(&callback, "http.request.method"), "GET");
    assert_eq!(attr(&callback, "http.response.status_code"), "302");
    let (host, port) = gw
        .origin
        .trim_start_matches("http://")
        .rsplit_once(':')
        .unwrap();
    assert_eq!(attr(&callback, "server.address"), host);
    assert_eq!(attr(&callback, "server.port"), port);
    assert_eq!(
        attr(&callback, "portcullis.frontend"),
        portcullis::frontend::DEFAULT_FRONTEND
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
    // The request span opens before frontend selection, when the route is not known yet;
    // once the frontend's router matched, `http.route` is recorded and the span renamed to
    // "{method} {route}" (OpenTelemetry HTTP server span name).
    assert_eq!(api.name, "GET /api/{*rest}");
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

    // Logout: the refresh token revoked at the IdP in a client span.
    let claims = b.user(gw).await.expect("logged in");
    let logout_url = claim(&claims, "bff:logout_url")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let r = b.get(&gw.url(&logout_url)).await;
    assert!(r.status().is_redirection(), "logout: {}", r.status());
    let revocation = receiver
        .wait_for("for the revocation", |s| s.name == "token_revocation")
        .await;
    assert_eq!(attr(&revocation, "http.response.status_code"), "200");
    let logout = receiver
        .wait_for("for the logout", |s| s.name == "GET /bff/logout")
        .await;
    assert_eq!(revocation.trace_id, logout.trace_id);

    // No secret in any attribute or event of any span: every value the IdP issued, every
    // cookie the gateway set (session and login transaction), the login's state and nonce.
    let issued = stack.idp.issued().await;
    let seen = b.seen();
    let mut cookie_values: Vec<String> = seen
        .iter()
        .flat_map(|r| r.headers.iter())
        .filter(|(n, _)| n == "set-cookie")
        .filter_map(|(_, v)| {
            v.split(';')
                .next()?
                .split_once('=')
                .map(|(_, v)| v.to_owned())
        })
        .filter(|v| v.len() >= 16)
        .collect();
    assert!(
        cookie_values.len() >= 2,
        "the gateway set a login-transaction and a session cookie: {cookie_values:?}"
    );
    for r in &seen {
        for (name, v) in &r.headers {
            if name == "location" {
                for key in ["state", "nonce"] {
                    if let Some(value) = url::Url::parse(v).ok().and_then(|u| {
                        u.query_pairs()
                            .find(|(k, _)| k == key)
                            .map(|(_, v)| v.into_owned())
                    }) {
                        cookie_values.push(value);
                    }
                }
            }
        }
    }
    let secrets: Vec<&str> = issued
        .all()
        .into_iter()
        .map(|(_, v)| v)
        .chain(cookie_values.iter().map(String::as_str))
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
                    !v.contains(secret),
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
    let stack = traced_stack(
        &receiver,
        Tracing {
            trust_incoming: true,
            ..Tracing::default()
        },
    )
    .await;
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

#[tokio::test]
async fn grpc_export_delivers_the_request_span_named_by_route() {
    let receiver = Receiver::start_grpc().await;
    let stack = traced_stack(
        &receiver,
        Tracing {
            protocol: "grpc",
            ..Tracing::default()
        },
    )
    .await;
    let gw = &stack.gw;
    let r = reqwest::Client::new()
        .get(gw.url("/api-none/echo/over-grpc"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let api = receiver
        .wait_for("for the API call, over gRPC", |s| {
            s.attributes.get("url.path").map(String::as_str) == Some("/api-none/echo/over-grpc")
        })
        .await;
    assert_eq!(api.name, "GET /api-none/{*rest}");
    assert_eq!(attr(&api, "http.response.status_code"), "200");
    receiver
        .wait_for("upstream under the request span", |s| {
            s.name == "upstream" && s.parent == api.span_id
        })
        .await;
    let mut stack = stack;
    stack.gw.stop().await;
}

#[tokio::test]
async fn sampling_ratio_zero_exports_nothing_and_still_tells_the_upstream() {
    let receiver = Receiver::start().await;
    let stack = traced_stack(
        &receiver,
        Tracing {
            sampling_ratio: 0.0,
            ..Tracing::default()
        },
    )
    .await;
    let gw = &stack.gw;
    let b = Browser::new();
    b.login(gw, "alice").await;
    for i in 0..5 {
        let r = b
            .get_csrf(&gw.url(&format!("/api/echo/unsampled-{i}")))
            .await;
        assert_eq!(r.status(), 200);
        let echoed: Value = r.json().await.unwrap();
        let tp = echoed["headers"]["traceparent"]
            .as_str()
            .unwrap_or_else(|| panic!("no traceparent at the upstream: {echoed}"));
        assert!(
            tp.starts_with("00-") && tp.ends_with("-00"),
            "the upstream learns the trace was not sampled: {tp}"
        );
    }
    // Ten batch intervals: anything built would have been exported by now.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        receiver.spans().is_empty(),
        "spans exported at sampling ratio 0: {:?}",
        receiver.spans().iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let mut stack = stack;
    stack.gw.stop().await;
}
