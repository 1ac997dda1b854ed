//! The public listener: accepts plain or TLS connections, serves them with hyper (HTTP/1.1
//! and HTTP/2) under the configured [`Limits`], and drains them on shutdown.
//!
//! Per connection:
//! - at most [`Limits::max_connections`] at once: the accept loop takes a permit before it
//!   accepts, so further clients wait in the kernel's accept queue, and served connections
//!   are not disturbed;
//! - the request head is bounded in size (hyper answers 431: HTTP/1 read buffer, HTTP/2
//!   `SETTINGS_MAX_HEADER_LIST_SIZE`) and in time ([`Limits::header_read_timeout`], enforced
//!   by [`GuardedIo`] on the socket: slow clients cannot hold a connection open);
//! - a connection with no request in flight is closed after [`Limits::idle_timeout`];
//! - a connection the gateway closes is drained for a moment before the socket is closed
//!   ("lingering close"): a client still sending an oversized head or body then reads the
//!   431/413 instead of a TCP reset that destroys it.
//!
//! Shutdown (SIGTERM or Ctrl-C): `/readyz` answers 503 at once; after
//! [`Limits::shutdown_delay`] the listener closes (new connections are refused), idle
//! connections close, in-flight requests and streams get [`Limits::shutdown_grace`] to
//! finish. A second signal ends the drain at once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::limits::{Admission, Limits, MIN_HEADER_SIZE};
use crate::workers::{Job, Workers};

/// How long a closed connection's unread input is drained, at most.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// How many bytes of a closed connection's unread input are drained, at most (a body a
/// little over a large route limit still gets its 413 read).
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// Set once shutdown began: `/readyz` answers 503 from then on (see
/// [`crate::limits::Admission`]).
#[derive(Clone, Debug, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether shutdown began.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the listener serves: an axum `Router`, or any other service from [`Request`] to
/// [`Response`] that cannot fail (the public listener calls `Gateway::handle` directly).
pub trait App:
    tower::Service<
        Request,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<
            Request,
            Response = Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `app` on `listener` until `signal` resolves, then drains (see the module docs).
/// `tls` terminates TLS (ALPN `h2`, `http/1.1`).
pub async fn serve<A: App>(
    listener: TcpListener,
    app: A,
    tls: Option<TlsAcceptor>,
    limits: &Limits,
    draining: Draining,
    signal: impl Future<Output = ()>,
) {
    let builder = Arc::new(builder(limits));
    let admission = Arc::new(Admission::new(limits, draining.clone()));
    let workers = match Workers::start(limits.workers) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "connection workers not started; the main runtime serves connections");
            Workers::none()
        }
    };
    tracing::debug!(workers = workers.len(), "connection workers");
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let delay = limits.shutdown_delay;
    let stop = async {
        signal.await;
        draining.start();
        tracing::info!(
            delay = ?delay,
            "shutting down: /readyz answers 503; the listener closes after the delay"
        );
        tokio::time::sleep(delay).await;
    };
    tokio::pin!(stop);
    let mut warned_full = None::<Instant>;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if warned_full.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: new connections wait until one closes"
                    );
                    warned_full = Some(Instant::now());
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut stop => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // TCP_NODELAY: with Nagle's algorithm on, the last small write of a streamed
        // response (the terminating chunk of a chunked body, a TLS record after the
        // headers) waits until the client ACKs the previous segment, which clients delay by
        // up to ~40 ms. Responses are written in whole frames already.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
        let conn = Connection {
            app: app.clone(),
            admission: admission.clone(),
            builder: builder.clone(),
            tls: tls.clone(),
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            peer,
        };
        let watcher = graceful.watcher();
        // Hand the connection to a worker (crate::workers): its socket is registered with
        // the worker's runtime, which serves it from here on.
        match tcp.into_std() {
            Ok(tcp) => {
                let job: Job = Box::new(move || match TcpStream::from_std(tcp) {
                    Ok(tcp) => {
                        tokio::spawn(conn.run(tcp, permit, watcher));
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot register an accepted connection"),
                });
                if let Err(job) = workers.run(job) {
                    job();
                }
            }
            Err(e) => tracing::debug!(error = %e, "accepted connection lost before it was served"),
        }
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        connections = open,
        grace = ?limits.shutdown_grace,
        "listener closed; draining open connections"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(limits.shutdown_grace) => tracing::warn!(
            grace = ?limits.shutdown_grace,
            "drain deadline passed; closing the remaining connections"
        ),
        () = crate::serve::shutdown_signal() => tracing::warn!(
            "second shutdown signal; closing the remaining connections"
        ),
    }
}

/// hyper's connection builder with the configured limits.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The whole head must fit the read buffer, else 431 (hyper's parser).
        .max_buf_size(limits.max_header_size.max(MIN_HEADER_SIZE))
        // Timeouts are GuardedIo's: hyper's would close idle keep-alive connections too.
        .header_read_timeout(None)
        .timer(TokioTimer::new());
    builder
        .http2()
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.http2_max_pending_reset_streams)
        .timer(TokioTimer::new());
    builder
}

/// What one accepted connection needs.
struct Connection<A> {
    app: A,
    admission: Arc<Admission>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    peer: SocketAddr,
}

impl<A: App> Connection<A> {
    async fn run(
        self,
        tcp: TcpStream,
        permit: OwnedSemaphorePermit,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(acceptor) => {
                match tokio::time::timeout(self.header_read_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, peer = %self.peer, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let state = Arc::new(ConnState::new());
        let io = GuardedIo::new(
            stream,
            state.clone(),
            self.header_read_timeout,
            self.idle_timeout,
            permit,
        );
        let app = self.app;
        let admission = self.admission;
        let peer = self.peer;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let guard = InFlight::enter(&state);
            request.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            let admitted = admission.admit(request);
            async move {
                let response = match admitted {
                    Ok(request) => app.oneshot(request).await.unwrap_or_else(|e| match e {}),
                    Err(refused) => refused,
                };
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    guard.upgraded();
                }
                // The request counts as in flight until its response body is done (or
                // dropped): streamed responses keep their connection from idling out.
                Ok::<_, std::convert::Infallible>(response.map(move |body| {
                    axum::body::Body::new(body.map_frame(move |frame| {
                        let _in_flight = &guard;
                        frame
                    }))
                }))
            }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
        }
    }
}

/// State shared between a connection's socket ([`GuardedIo`]) and its requests
/// ([`InFlight`]).
struct ConnState {
    in_flight: AtomicUsize,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// HTTP/1: bytes of a request head arrived and no request was dispatched since.
    head_pending: AtomicBool,
    /// The connection was upgraded (WebSocket): no timeouts from here on.
    upgraded: AtomicBool,
    /// When the last request finished.
    idle_since: Mutex<Instant>,
    /// The task that last read the socket, woken when the connection turns idle.
    reader: Mutex<Option<Waker>>,
}

impl ConnState {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            head_pending: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            reader: Mutex::new(None),
        }
    }
}

/// One request in flight on a connection; dropped when its response is done.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn enter(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        state.requests.fetch_add(1, Ordering::SeqCst);
        state.head_pending.store(false, Ordering::SeqCst);
        Self(state.clone())
    }
    fn upgraded(&self) {
        self.0.upgraded.store(true, Ordering::SeqCst);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Ok(mut since) = self.0.idle_since.lock() {
                *since = Instant::now();
            }
            // Re-poll the reader so that it arms the idle timer.
            if let Some(waker) = self.0.reader.lock().ok().and_then(|mut w| w.take()) {
                waker.wake();
            }
        }
    }
}

/// A plain or TLS socket.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    fn into_tcp(self) -> TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.into_inner().0,
        }
    }
}

/// The socket as hyper sees it, with the head and idle timeouts and the lingering close.
struct GuardedIo {
    stream: Option<Stream>,
    state: Arc<ConnState>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    accepted: Instant,
    head_started: Instant,
    /// `Some(true)` once the first bytes were the HTTP/2 preface.
    http2: Option<bool>,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    /// The gateway closed the connection for a timeout: no lingering.
    timed_out: bool,
    permit: Option<OwnedSemaphorePermit>,
}

impl GuardedIo {
    fn new(
        stream: Stream,
        state: Arc<ConnState>,
        header_read_timeout: Duration,
        idle_timeout: Duration,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let now = Instant::now();
        Self {
            stream: Some(stream),
            state,
            header_read_timeout,
            idle_timeout,
            accepted: now,
            head_started: now,
            http2: None,
            timer: Box::pin(tokio::time::sleep_until(now + header_read_timeout)),
            armed: None,
            timed_out: false,
            permit: Some(permit),
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut dyn AsyncReadWrite>> {
        match self.stream.as_mut() {
            Some(Stream::Plain(s)) => Ok(Pin::new(s)),
            Some(Stream::Tls(s)) => Ok(Pin::new(s.as_mut())),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// When the connection times out, if it is waiting for the client; `true` with a
    /// partial HTTP/1 head.
    fn deadline(&self) -> Option<(Instant, bool)> {
        let s = &self.state;
        if s.upgraded.load(Ordering::SeqCst) || s.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        if self.http2 != Some(true) && s.head_pending.load(Ordering::SeqCst) {
            return Some((self.head_started + self.header_read_timeout, true));
        }
        if s.requests.load(Ordering::SeqCst) == 0 {
            return Some((self.accepted + self.header_read_timeout, false));
        }
        let since = s.idle_since.lock().map_or(self.accepted, |t| *t);
        Some((since + self.idle_timeout, false))
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> AsyncReadWrite for T {}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match self.stream()?.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if !fresh.is_empty() {
                    if self.http2.is_none() {
                        self.http2 = Some(fresh.starts_with(b"PRI * HTTP/2"));
                    }
                    let s = &self.state;
                    if self.http2 == Some(false)
                        && s.in_flight.load(Ordering::SeqCst) == 0
                        && !s.head_pending.swap(true, Ordering::SeqCst)
                    {
                        self.head_started = Instant::now();
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Ok(mut reader) = self.state.reader.lock() {
                    *reader = Some(cx.waker().clone());
                }
                let Some((deadline, partial_head)) = self.deadline() else {
                    return Poll::Pending;
                };
                if self.armed != Some(deadline) {
                    self.timer.as_mut().reset(deadline);
                    self.armed = Some(deadline);
                }
                if self.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.timed_out = true;
                if partial_head {
                    // RFC 9110 §15.5.9; only where nothing else was written for this
                    // request (plain HTTP/1, head incomplete).
                    if let Some(Stream::Plain(tcp)) = &self.stream {
                        let _ = tcp.try_write(
                            b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                        );
                    }
                    tracing::debug!("request head not complete within header_read_timeout");
                    Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
                } else {
                    // End of input: hyper closes an idle connection quietly.
                    Poll::Ready(Ok(()))
                }
            }
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Some(Stream::Plain(s)) => s.is_write_vectored(),
            Some(Stream::Tls(s)) => s.is_write_vectored(),
            None => false,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream()?.poll_shutdown(cx)
    }
}

impl Drop for GuardedIo {
    fn drop(&mut self) {
        let (Some(stream), false) = (self.stream.take(), self.timed_out) else {
            return;
        };
        let permit = self.permit.take();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream.into_tcp(), permit));
        }
    }
}

/// Lingering close: send FIN, then read and discard what the client still sends (bounded
/// in time and bytes) before closing. Closing a socket with unread input makes the kernel
/// answer with a reset, and a client still writing its oversized request would lose the
/// 431/413 sent just before.
async fn linger(mut tcp: TcpStream, permit: Option<OwnedSemaphorePermit>) {
    let _ = tcp.shutdown().await;
    let mut buf = vec![0u8; 16 * 1024];
    let mut drained = 0usize;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while drained < LINGER_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    drop(permit);
}
