//! The TLS listener: handshake, HTTP/1.1 or HTTP/2 by ALPN, limits on slow clients, and a
//! graceful stop.
//!
//! Slow clients (slowloris): on HTTP/1.1 a request head must arrive complete within
//! `header_timeout_ms` of its first byte, or the client gets `408 Request Timeout` and the
//! connection is closed; a connection with nothing to do is closed after `idle_timeout_ms`;
//! a TLS handshake must finish within `header_timeout_ms`. Bodies have their own limit in
//! the proxy. Heads larger than `max_header_bytes` get 431 (hyper's own check).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

/// What the listener hands requests to: the gateway's front (implemented above this
/// module, so the listener knows nothing of routes, the proxy or metrics).
pub trait Dispatch: Clone + Send + Sync + 'static {
    /// The router for `path` when it is one of the gateway's own routes; `None` proxies it.
    fn own(&self, path: &str) -> Option<Router>;

    /// Proxies a request of `client`.
    fn proxy(
        &self,
        req: axum::extract::Request,
        client: Arc<Client>,
    ) -> impl Future<Output = axum::response::Response> + Send;

    /// The MAC with which the gateway vouches for a client certificate (DER, base64).
    fn vouch(&self, certificate_b64: &str) -> String;

    /// Once a second on each event loop, and when a loop stops: hand metrics over, close
    /// idle upstream connections.
    fn housekeeping(&self);
}

const TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 86\r\n\r\n{\"apiVersion\":\"v3\",\"message\":\"the request head was not sent in time\",\"statusCode\":408}";

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

enum Phase {
    /// Waiting for a request head; `started` once its first byte arrived.
    Head {
        started: Option<Instant>,
        tail: [u8; 3],
    },
    /// The head is complete; body and response are the handler's business.
    Past,
    /// Writing the 408 answer; then the connection ends.
    TimingOut { written: usize },
}

/// Wraps a connection to enforce the head deadline on HTTP/1.1.
pub struct Guarded<S> {
    inner: S,
    phase: Phase,
    active: bool,
    idle_since: Instant,
    sleep: Pin<Box<Sleep>>,
    limits: Limits,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, limits: Limits, active: bool) -> Self {
        let now = Instant::now();
        Self {
            inner,
            phase: Phase::Head {
                started: None,
                tail: [0; 3],
            },
            active,
            idle_since: now,
            sleep: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            limits,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Head {
                started: Some(t), ..
            } => Some(t + self.limits.header_timeout),
            Phase::Head { started: None, .. } => Some(self.idle_since + self.limits.idle_timeout),
            Phase::Past | Phase::TimingOut { .. } => None,
        }
    }
}

/// Whether `bytes`, following `tail`, complete a request head (`\r\n\r\n`); updates `tail`.
fn scan_head_end(tail: &mut [u8; 3], bytes: &[u8]) -> bool {
    // The byte `back` places before position `i` of `bytes`, reaching into `tail`.
    let before = |i: usize, back: usize| -> u8 {
        if i >= back {
            bytes[i - back]
        } else {
            tail[3 - (back - i)]
        }
    };
    // Only a `\n` can end a head: check the three bytes before each one.
    let mut from = 0;
    while let Some(off) = bytes[from..].iter().position(|&b| b == b'\n') {
        let i = from + off;
        if before(i, 1) == b'\r' && before(i, 2) == b'\n' && before(i, 3) == b'\r' {
            return true;
        }
        from = i + 1;
    }
    let mut next = [0; 3];
    for (k, slot) in next.iter_mut().enumerate() {
        // The last three bytes seen, oldest first.
        let back = 3 - k;
        *slot = if bytes.len() >= back {
            bytes[bytes.len() - back]
        } else {
            tail[3 - (back - bytes.len())]
        };
    }
    *tail = next;
    false
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.active {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        loop {
            if let Phase::TimingOut { written } = &mut this.phase {
                while *written < TIMEOUT_RESPONSE.len() {
                    let n = ready!(
                        Pin::new(&mut this.inner).poll_write(cx, &TIMEOUT_RESPONSE[*written..])
                    )?;
                    if n == 0 {
                        break;
                    }
                    *written += n;
                }
                ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not sent in time",
                )));
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    let new = &buf.filled()[before..];
                    if let Phase::Head { started, tail } = &mut this.phase
                        && !new.is_empty()
                    {
                        if started.is_none() {
                            *started = Some(Instant::now());
                        }
                        if scan_head_end(tail, new) {
                            this.phase = Phase::Past;
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            let Some(deadline) = this.deadline() else {
                return Poll::Pending;
            };
            // The timer is moved only when the deadline comes earlier; one that fires early
            // (the idle deadline moves later with every response) is set again then. That
            // keeps timer updates off the per-request path.
            if this.sleep.deadline() > deadline {
                this.sleep.as_mut().reset(deadline);
            }
            ready!(this.sleep.as_mut().poll(cx));
            if Instant::now() < deadline {
                this.sleep.as_mut().reset(deadline);
                continue;
            }
            match this.phase {
                Phase::Head {
                    started: Some(_), ..
                } => {
                    tracing::info!("client too slow sending a request head; 408");
                    this.phase = Phase::TimingOut { written: 0 };
                }
                // Idle keep-alive connection: end it quietly.
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<S> Guarded<S> {
    /// A response is going out: what is read next starts a new request head.
    fn responding(&mut self) {
        if self.active {
            self.idle_since = Instant::now();
            if matches!(self.phase, Phase::Past) {
                self.phase = Phase::Head {
                    started: None,
                    tail: [0; 3],
                };
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.responding();
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    // Passed through, so hyper hands head and body over as they are instead of first
    // copying them into one buffer.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.responding();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts TLS connections until `shutdown`, then lets open ones finish (up to 10 s).
pub async fn serve<D: Dispatch>(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    front: D,
    limits: Limits,
    shutdown: outpost_kit::Shutdown,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Canonical header case, as every Outpost server (outpost_kit::tls::http1_defaults).
        .title_case_headers(true)
        .timer(TokioTimer::new())
        // `Guarded` enforces the head deadline (and answers 408): no second timer per
        // request in hyper.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    outpost_kit::tls::accept_loop(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        limits.header_timeout,
        shutdown.wait(),
        move |tls: outpost_kit::tls::Stream, peer: SocketAddr, watcher| {
            let (builder, front) = (Arc::clone(&builder), front.clone());
            async move {
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| {
                        let b64 = base64::engine::general_purpose::STANDARD.encode(c);
                        let mac = front.vouch(&b64);
                        Some((
                            http::HeaderValue::from_str(&b64).ok()?,
                            http::HeaderValue::from_str(&mac).ok()?,
                        ))
                    });
                let client = Arc::new(Client::of(peer, cert));
                let io = TokioIo::new(Guarded::new(
                    outpost_kit::wire::EdgexWire::new(tls),
                    limits,
                    !h2,
                ));
                // Proxied requests go straight to the proxy; the gateway's own routes
                // through its router, which finds the connection in the request's
                // extensions.
                let svc = hyper::service::service_fn(
                    move |mut req: http::Request<hyper::body::Incoming>| {
                        let (front, client) = (front.clone(), Arc::clone(&client));
                        let router = front.own(req.uri().path());
                        if router.is_some() {
                            req.extensions_mut().insert(ConnectInfo(peer));
                            req.extensions_mut().insert(Arc::clone(&client));
                        }
                        let req = req.map(axum::body::Body::new);
                        async move {
                            match router {
                                Some(router) => router.oneshot(req).await,
                                None => Ok(front.proxy(req, client).await),
                            }
                        }
                    },
                );
                let conn = builder.serve_connection_with_upgrades(io, svc);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
        },
    )
    .await;
}

/// Binds `addr` once per event loop (`SO_REUSEPORT`, so the kernel spreads connections
/// over the loops) and runs each loop on its own thread with its own single-threaded
/// runtime, the way nginx runs a worker per core: a connection, its requests and its
/// upstream connections stay on one thread, with no hand-offs or wake-ups between threads.
/// Returns once every loop listens (or the first bind error); the handles end after
/// `shutdown`.
pub fn spawn_loops<D: Dispatch>(
    addr: SocketAddr,
    loops: usize,
    tls: Arc<rustls::ServerConfig>,
    front: D,
    limits: Limits,
    shutdown: outpost_kit::Shutdown,
) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut handles = Vec::with_capacity(loops);
    for i in 0..loops {
        let (tx, rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let (tls, front, shutdown) = (Arc::clone(&tls), front.clone(), shutdown.clone());
        let h = std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(4)
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match listen(addr) {
                        Ok(l) => {
                            let _ = tx.send(Ok(()));
                            l
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    // Ends with this loop's runtime.
                    tokio::spawn(housekeeping(front.clone()));
                    serve(listener, tls, front.clone(), limits, shutdown).await;
                    front.housekeeping();
                });
            })?;
        match rx.recv() {
            Ok(Ok(())) => handles.push(h),
            Ok(Err(e)) => {
                let _ = h.join();
                return Err(e);
            }
            Err(_) => return Err(io::Error::other("the gateway event loop did not start")),
        }
    }
    Ok(handles)
}

/// Every second: hands this event loop's metrics and access log lines over, closes its
/// idle upstream connections past their time, and gives memory it freed back to the system. The supervisor starts the gateway with a short
/// allocator purge delay (`MIMALLOC_PURGE_DELAY`), so pages freed and reused between
/// requests are not returned and faulted in again each time; an idle loop makes no allocator
/// calls that would act on the delay, hence this tick.
#[allow(unsafe_code)]
async fn housekeeping<D: Dispatch>(front: D) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        front.housekeeping();
        // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any
        // time; with `force = false` it only frees what the allocator already holds unused
        // (and purges what has passed its delay). Under a different global allocator it acts
        // on mimalloc's own, then empty, heap.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

fn listen(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The peer address of the connection that carried `SocketAddr`.
pub type Peer = ConnectInfo<SocketAddr>;

/// What the gateway knows of a connection, made once per connection and shared by its
/// requests: the peer address as the access log writes it and as `X-Forwarded-For`
/// carries it, and the client certificate the connection presented, if any.
#[derive(Debug)]
pub struct Client {
    pub addr: SocketAddr,
    pub text: Arc<str>,
    pub ip: http::HeaderValue,
    /// The certificate (DER, base64), verified against the node CA and the manufacturer
    /// CAs, and the gateway's MAC of it, as the headers that pass them upstream
    /// (`outpost_pki::vouch`), for the service to ask core-metadata whose it is.
    pub cert: Option<(http::HeaderValue, http::HeaderValue)>,
}

impl Client {
    fn of(addr: SocketAddr, cert: Option<(http::HeaderValue, http::HeaderValue)>) -> Self {
        let ip = addr.ip().to_string();
        Self {
            addr,
            text: addr.to_string().into(),
            ip: http::HeaderValue::from_str(&ip)
                .unwrap_or_else(|_| http::HeaderValue::from_static("unknown")),
            cert,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_across_reads() {
        let mut tail = [0; 3];
        assert!(!scan_head_end(
            &mut tail,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r"
        ));
        assert!(scan_head_end(&mut tail, b"\n"));
        let mut tail = [0; 3];
        assert!(scan_head_end(&mut tail, b"GET / HTTP/1.1\r\n\r\n"));
        let mut tail = [0; 3];
        assert!(!scan_head_end(&mut tail, b"GET / HTTP/1.1\r\n"));
        // The end split at every point, and byte by byte.
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..head.len() {
            let mut tail = [0; 3];
            let first = scan_head_end(&mut tail, &head[..cut]);
            assert!(
                first || scan_head_end(&mut tail, &head[cut..]),
                "cut at {cut}"
            );
        }
        let mut tail = [0; 3];
        let ends: Vec<bool> = head
            .iter()
            .map(|b| scan_head_end(&mut tail, std::slice::from_ref(b)))
            .collect();
        assert_eq!(ends.iter().filter(|e| **e).count(), 1);
        assert!(ends[head.len() - 1]);
        let mut tail = [0; 3];
        assert!(!scan_head_end(&mut tail, b"\r\n\n\r"));
        assert_eq!(
            TIMEOUT_RESPONSE.len()
                - TIMEOUT_RESPONSE
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .unwrap()
                - 4,
            86
        );
    }
}
