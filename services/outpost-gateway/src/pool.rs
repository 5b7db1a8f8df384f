//! Upstream connections: each event loop keeps its own HTTP/1.1 keep-alive connections per
//! instance address and drives them on its own runtime, so a proxied request never hands
//! off to another thread. A connection is lent to one request at a time and comes back
//! once its response has been read; idle ones are closed after `IDLE_TICKS` housekeeping
//! ticks (one a second), at most `MAX_IDLE` are kept per instance.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// Idle connections kept per instance and event loop.
const MAX_IDLE: usize = 64;
/// Housekeeping ticks (seconds) an idle connection is kept.
const IDLE_TICKS: u64 = 30;
/// A dead instance on loopback refuses at once; a lost host must not take the whole
/// request timeout before the next instance is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

struct Idle {
    tx: SendRequest<Body>,
    tick: u64,
}

thread_local! {
    static IDLE: RefCell<HashMap<Arc<str>, Vec<Idle>>> = RefCell::new(HashMap::new());
    static TICK: Cell<u64> = const { Cell::new(0) };
}

/// A connection lent to one request: back to its event loop's pool when dropped, once the
/// response on it is complete (a connection whose response was abandoned is closed).
pub struct Conn {
    authority: Arc<str>,
    tx: Option<SendRequest<Body>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(mut tx) = self.tx.take() else {
            return;
        };
        if tx.is_ready() {
            put(&self.authority, tx);
            return;
        }
        if tx.is_closed() {
            return;
        }
        // The connection has not finished with the response yet.
        let authority = Arc::clone(&self.authority);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if tx.ready().await.is_ok() {
                    put(&authority, tx);
                }
            });
        }
    }
}

fn put(authority: &Arc<str>, tx: SendRequest<Body>) {
    let tick = TICK.get();
    IDLE.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(list) = p.get_mut(&**authority) {
            if list.len() < MAX_IDLE {
                list.push(Idle { tx, tick });
            }
        } else {
            p.insert(Arc::clone(authority), vec![Idle { tx, tick }]);
        }
    });
}

/// The most recently used connection to `authority` that can take a request.
fn take(authority: &str) -> Option<SendRequest<Body>> {
    IDLE.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.get_mut(authority)?;
        while let Some(i) = list.pop() {
            if i.tx.is_ready() {
                return Some(i.tx);
            }
        }
        None
    })
}

/// Closes connections idle for longer than `IDLE_TICKS` and forgets closed ones; called
/// once a second by each event loop.
pub fn sweep() {
    let tick = TICK.get() + 1;
    TICK.set(tick);
    IDLE.with(|p| {
        let mut p = p.borrow_mut();
        for list in p.values_mut() {
            list.retain(|i| tick - i.tick <= IDLE_TICKS && !i.tx.is_closed());
        }
        p.retain(|_, list| !list.is_empty());
    });
}

/// With mutual TLS between services: the gateway's own identity, for HTTP/1.1 (the pool
/// speaks HTTP/1.1 to upstreams).
fn upstream_tls() -> Option<&'static tokio_rustls::TlsConnector> {
    static TLS: std::sync::OnceLock<Option<tokio_rustls::TlsConnector>> =
        std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        outpost_kit::internal::process().map(|identity| {
            let mut cfg = (*identity.client).clone();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
        })
    })
    .as_ref()
}

async fn connect(authority: &str) -> Result<SendRequest<Body>, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| format!("connecting to {authority} timed out"))?
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match upstream_tls() {
        Some(tls) => {
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| format!("{authority} is not a TLS name: {e}"))?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                .await
                .map_err(|_| format!("the TLS handshake with {authority} timed out"))?
                .map_err(|e| format!("TLS with {authority} failed: {e}"))?;
            handshake(authority, stream).await
        }
        None => handshake(authority, tcp).await,
    }
}

async fn handshake<S>(authority: &str, io: S) -> Result<SendRequest<Body>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("cannot talk HTTP to {authority}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(tx)
}

/// Sends `req` (origin-form URI) to `authority` (`host:port`) on a pooled connection or a
/// new one. A pooled connection the instance closed meanwhile refuses the request before
/// sending it; it then goes out on the next one.
pub async fn send(
    authority: &Arc<str>,
    mut req: http::Request<Body>,
) -> Result<(http::Response<Incoming>, Conn), String> {
    if !req.headers().contains_key(http::header::HOST)
        && let Ok(v) = http::HeaderValue::from_str(authority)
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
    loop {
        let (mut tx, pooled) = match take(authority) {
            Some(tx) => (tx, true),
            None => (connect(authority).await?, false),
        };
        match tx.try_send_request(req).await {
            Ok(resp) => {
                return Ok((
                    resp,
                    Conn {
                        authority: Arc::clone(authority),
                        tx: Some(tx),
                    },
                ));
            }
            Err(mut e) => match e.take_message() {
                Some(r) if pooled => req = r,
                _ => return Err(e.into_error().to_string()),
            },
        }
    }
}

/// `host:port` of an instance's base URL (`http://host:port`).
pub fn authority(base: &str) -> &str {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_of_base_urls() {
        assert_eq!(authority("http://127.0.0.1:59880"), "127.0.0.1:59880");
        assert_eq!(authority("http://[::1]:59880/"), "[::1]:59880");
        assert_eq!(authority("localhost:1"), "localhost:1");
    }
}
