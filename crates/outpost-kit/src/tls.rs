//! A service's HTTP API, over TLS or plain: HTTP/1.1 or HTTP/2 by ALPN, the client
//! certificate of each connection handed to the routes as a [`Peer`], and a graceful stop.
//! The kit serves a service over TLS when its build returns a TLS configuration
//! ([`Parts::tls`](crate::service::Parts::tls)) or services talk mutual TLS, plain
//! otherwise; the gateway has its own listener, tuned for its traffic, with the same
//! [`http1_defaults`].
//!
//! HTTP/1.1 header names go out in canonical case (`Content-Type`), as EdgeX's Go servers
//! send them: legal either way, but EdgeX's test harness and some clients look them up
//! case-sensitively.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::ServiceExt as _;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// SHA-256 of the client certificate, if the client presented one (the handshake
    /// already checked it was issued by this node's CA).
    pub fingerprint: Option<String>,
}

/// A TLS connection a listener accepted, for its handler.
pub type Stream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// What every Outpost HTTP/1 server does: header names in canonical case, and a limit on
/// how long a request head may take.
pub fn http1_defaults(builder: &mut hyper_util::server::conn::auto::Builder<TokioExecutor>) {
    builder
        .http1()
        .title_case_headers(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
}

/// Accepts TCP connections on `listener` until `stop` resolves; each one completes its TLS
/// handshake within `handshake` on a task of its own and goes to `handle` with its peer
/// address and the watcher of the graceful stop (which the handler's connection future is
/// put under). Then lets open connections finish, up to 10 s. Handshake failures are
/// logged, never fatal; an accept error (out of descriptors) backs off briefly.
pub async fn accept_loop<H, Fut>(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake: Duration,
    stop: impl std::future::Future + Send,
    handle: H,
) where
    H: Fn(Stream, SocketAddr, hyper_util::server::graceful::Watcher) -> Fut
        + Clone
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let accept = move |tcp| acceptor.accept(tcp);
    accept_connections(listener, accept, handshake, stop, handle).await;
}

/// [`accept_loop`] for any first step on a connection (`open`: a TLS handshake, or none).
async fn accept_connections<S, O, OFut, H, Fut>(
    listener: tokio::net::TcpListener,
    open: O,
    handshake: Duration,
    stop: impl std::future::Future + Send,
    handle: H,
) where
    O: Fn(tokio::net::TcpStream) -> OFut + Clone + Send + 'static,
    OFut: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    S: Send + 'static,
    H: Fn(S, SocketAddr, hyper_util::server::graceful::Watcher) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::pin!(stop);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (open, handle, watcher) = (open.clone(), handle.clone(), graceful.watcher());
        tokio::spawn(async move {
            match tokio::time::timeout(handshake, open(tcp)).await {
                Ok(Ok(tls)) => handle(tls, peer, watcher).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; closing them");
    }
}

/// Serves `router` on `listener` over TLS until `stop` resolves (see [`accept_loop`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    stop: impl std::future::Future + Send,
) {
    let builder = server_builder();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    accept_loop(
        listener,
        acceptor,
        Duration::from_secs(10),
        stop,
        move |tls: Stream, addr: SocketAddr, watcher| {
            let (router, builder) = (router.clone(), Arc::clone(&builder));
            async move {
                let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                let fingerprint = cert.map(|c| outpost_pki::fingerprint(c.as_ref()));
                let caller = crate::internal::Caller(
                    cert.and_then(|c| outpost_pki::internal::identity(c.as_ref())),
                );
                let peer = Peer { addr, fingerprint };
                let extend = move |x: &mut http::Extensions| {
                    x.insert(peer.clone());
                    x.insert(caller.clone());
                };
                serve_connection(&builder, tls, addr, watcher, router, extend).await;
            }
        },
    )
    .await;
}

/// The HTTP server of a service's API: [`http1_defaults`], and HTTP/2 (over TLS) with a
/// bounded number of streams.
fn server_builder() -> Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http1_defaults(&mut builder);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    Arc::new(builder)
}

/// Serves `router` on `listener` without TLS until `stop` resolves: EdgeX's plaintext
/// internal API, when services do not talk mutual TLS.
pub async fn serve_plain(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: impl std::future::Future + Send,
) {
    let builder = server_builder();
    let open = |tcp: tokio::net::TcpStream| async move { Ok(tcp) };
    accept_connections(
        listener,
        open,
        Duration::from_secs(10),
        stop,
        move |tcp: tokio::net::TcpStream, addr: SocketAddr, watcher| {
            let (router, builder) = (router.clone(), Arc::clone(&builder));
            async move {
                serve_connection(&builder, tcp, addr, watcher, router, |_| {}).await;
            }
        },
    )
    .await;
}

/// Serves the requests of one connection with `router` until it closes, under the graceful
/// stop's `watcher`; each request carries its peer's address and what `extend` adds.
async fn serve_connection<S>(
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    io: S,
    addr: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
    router: Router,
    extend: impl Fn(&mut http::Extensions) + Clone + Send + Sync + 'static,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(addr));
        extend(req.extensions_mut());
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(crate::wire::EdgexWire::new(io)), svc);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
    }
}
