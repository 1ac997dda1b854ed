//! Pooled upstream connections that the upstream closes: a server closes an idle keep-alive
//! connection when its own timeout passes (Node.js 5 s, gunicorn 2 s), and a request the
//! gateway sends on it at that moment meets a closed connection. An idempotent request
//! without a body is sent again on a fresh connection; anything else gets 502 (it may have
//! reached the upstream, and a retry could apply it twice).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers the first request of each connection and closes the connection
/// when the second one arrives, without answering (the race of an expiring keep-alive
/// connection, made certain). Counts connections and answered requests.
struct ClosingUpstream {
    url: String,
    connections: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

impl ClosingUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (c, a) = (connections.clone(), answered.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp, a.clone()));
            }
        });
        Self {
            url,
            connections,
            answered,
        }
    }
}

async fn serve(mut tcp: TcpStream, answered: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The first request: read its head and its Content-Length body, answer, keep alive.
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    answered.fetch_add(1, Ordering::SeqCst);
    let body = "first";
    let _ = tcp
        .write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await;
    // The second request: close as soon as any of it arrives.
    let _ = tcp.read(&mut chunk).await;
}

#[tokio::test]
async fn idempotent_request_on_a_connection_the_upstream_closed_is_sent_again_and_a_post_is_not() {
    let upstream = ClosingUpstream::start().await;
    let route = format!(
        "\n[[routes]]\npath = \"/closing\"\nupstream = \"{}\"\ntoken = \"none\"\n",
        upstream.url
    );
    let stack = Stack::start_with(IdpOptions::default(), &route).await;
    let gw = &stack.gw;
    // One connection to the gateway, so every request is served by the same worker and
    // finds the pooled upstream connection of the request before it.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();

    let r = http
        .get(gw.url("/closing/one"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);

    // The pooled connection is closed under the GET: sent again on a new connection.
    let r = http
        .get(gw.url("/closing/two"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a GET on a connection the upstream closed must be retried"
    );
    assert_eq!(r.text().await.unwrap(), "first");
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    assert_eq!(upstream.answered.load(Ordering::SeqCst), 2);

    // A POST with a body in the same situation is not sent again: 502.
    let r = http
        .post(gw.url("/closing/three"))
        .header("x-csrf", "1")
        .body("change something")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        2,
        "a POST must not be retried on a new connection"
    );
    assert_eq!(upstream.answered.load(Ordering::SeqCst), 2);
}
