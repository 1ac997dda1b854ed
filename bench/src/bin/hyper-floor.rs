//! `hyper-floor`: the smallest reverse proxy on the gateway's HTTP stack, as a reference point
//! for `proxy-bench --vs-nginx --floor`. hyper's HTTP/1.1 server in front of `hyper_util`'s
//! pooled client (what the gateway uses, with the same runtime shapes), and nothing else: no
//! cookie, no session, no token look-up, no header hygiene, no span, no metric. It strips the
//! route prefix, sets one `Authorization` header, reads the upstream's body whole and answers
//! with it (`Content-Length`). A path under no route (or a route's bare prefix) gets 404; an
//! upstream failure, 502. For `GET` only: a request body is not forwarded, and there is no
//! timeout; enough for the benchmark, not a proxy to use.
//!
//! ```text
//! hyper-floor --route /cl=127.0.0.1:UP [--route /x=ADDR ...] [--listen 127.0.0.1:0]
//!             [--authorization 'Bearer …'] [--threads N]
//! ```
//!
//! `--threads 0` runs one current-thread runtime (the shape of the gateway's
//! `server.workers = 1`, its default on a 2-CPU machine); `N` > 0, a work-stealing runtime
//! with `N` threads (the shape of `server.workers = 0` on an `N`-CPU machine). Prints
//! `READY {"port":N}` once listening.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// (path prefix, upstream address).
type Routes = Arc<Vec<(String, SocketAddr)>>;
type Upstream = Client<HttpConnector, Empty<Bytes>>;

struct Options {
    listen: SocketAddr,
    routes: Routes,
    authorization: HeaderValue,
    threads: usize,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("hyper-floor: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let o = options(std::env::args().skip(1))?;
    let rt = if o.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(o.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(serve(o))
}

fn options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        routes: Arc::new(Vec::new()),
        authorization: HeaderValue::from_static("Bearer floor-token"),
        threads: 2,
    };
    let mut routes = Vec::new();
    while let Some(name) = args.next() {
        let value = args.next().ok_or_else(|| format!("{name} needs a value"))?;
        match name.as_str() {
            "--listen" => o.listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            "--route" => {
                let (prefix, addr) = value
                    .split_once('=')
                    .ok_or("--route takes PREFIX=ADDRESS")?;
                let addr = addr.parse().map_err(|e| format!("--route: {e}"))?;
                routes.push((prefix.trim_end_matches('/').to_owned(), addr));
            }
            "--authorization" => {
                o.authorization =
                    HeaderValue::from_str(&value).map_err(|e| format!("--authorization: {e}"))?;
            }
            "--threads" => o.threads = value.parse().map_err(|e| format!("--threads: {e}"))?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if routes.is_empty() {
        return Err("at least one --route PREFIX=ADDRESS".into());
    }
    o.routes = Arc::new(routes);
    Ok(o)
}

async fn serve(o: Options) -> Result<(), String> {
    let listener = TcpListener::bind(o.listen)
        .await
        .map_err(|e| format!("{}: {e}", o.listen))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    println!("READY {{\"port\":{port}}}");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, routes, authorization) =
            (client.clone(), o.routes.clone(), o.authorization.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (client, routes, authorization) =
                    (client.clone(), routes.clone(), authorization.clone());
                async move {
                    Ok::<_, Infallible>(forward(&client, &routes, authorization, request).await)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: &Upstream,
    routes: &[(String, SocketAddr)],
    authorization: HeaderValue,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (mut parts, _) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let found = routes.iter().find_map(|(prefix, addr)| {
        target
            .strip_prefix(prefix.as_str())
            .filter(|rest| rest.starts_with('/'))
            .map(|rest| format!("http://{addr}{rest}"))
    });
    let Some(Ok(uri)) = found.map(Uri::try_from) else {
        return status(StatusCode::NOT_FOUND);
    };
    parts.uri = uri;
    parts.headers.insert(header::AUTHORIZATION, authorization);
    let Ok(response) = client
        .request(Request::from_parts(parts, Empty::new()))
        .await
    else {
        return status(StatusCode::BAD_GATEWAY);
    };
    let (mut parts, body) = response.into_parts();
    let Ok(body) = body.collect().await else {
        return status(StatusCode::BAD_GATEWAY);
    };
    parts.headers.remove(header::TRANSFER_ENCODING);
    Response::from_parts(parts, Full::new(body.to_bytes()))
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

#[cfg(test)]
mod tests {
    use super::options;

    fn args(a: &[&str]) -> impl Iterator<Item = String> {
        a.iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn options_need_a_route_and_reject_unknown_flags() {
        assert!(options(args(&[])).is_err());
        assert!(options(args(&["--route", "/cl"])).is_err());
        assert!(options(args(&["--route", "/cl=127.0.0.1:1", "--bogus", "1"])).is_err());
        let o = options(args(&["--route", "/cl/=127.0.0.1:9", "--threads", "0"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.routes[0].0, "/cl");
        assert_eq!(o.threads, 0);
    }
}
