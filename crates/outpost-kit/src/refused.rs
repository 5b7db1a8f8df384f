//! Refused requests whose body the client is still sending.
//!
//! A service that refuses a request before reading its whole body (413 for a body over the
//! limit, 401 for an upload without credentials) would leave unread bytes in the socket;
//! closing it then resets the connection, and a client that sends the whole body before it
//! reads the answer sees "connection reset" or "broken pipe" instead of the status. So the
//! kit keeps hold of every request body: if the answer is an error and the body was not
//! read to its end, what is left is read and discarded first (at most [`DRAIN_BYTES`] for
//! at most [`DRAIN_TIME`]). Beyond that the HTTP/1 answer says `connection: close`: the
//! server closes the connection after it, and a client must not send its next request on
//! it (without the header a keep-alive client reuses a connection the server is closing,
//! and its next request fails with a reset or an unexpected end of TLS).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt as _;

/// The most of a refused body that is read before answering.
pub const DRAIN_BYTES: usize = 16 * 1024 * 1024;
/// The longest a refused body is read before answering.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

type Slot = Arc<Mutex<Option<Body>>>;

/// A request body that, when dropped before its end, leaves the rest in `slot`.
struct Returned {
    inner: Option<Body>,
    slot: Slot,
}

impl HttpBody for Returned {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        match self.inner.as_mut() {
            Some(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                if matches!(polled, Poll::Ready(None)) {
                    // Read to its end: nothing left to give back.
                    self.inner = None;
                }
                polled
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        if let Some(rest) = self.inner.take() {
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(rest);
        }
    }
}

/// Middleware: reads what is left of the body of a request answered with an error.
pub async fn finish_refused_bodies(req: Request, next: Next) -> Response {
    finishing(req, |req| next.run(req)).await
}

/// Answers `req` with `handler`; when the answer is an error and the handler left part of
/// the body unread, reads the rest first (see the module documentation).
pub async fn finishing<F, Fut>(req: Request, handler: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if req.body().is_end_stream() {
        // No body (most GETs): nothing to finish.
        return handler(req).await;
    }
    let http1 = req.version() < http::Version::HTTP_2;
    let slot: Slot = Arc::default();
    let req = req.map(|inner| {
        Body::new(Returned {
            inner: Some(inner),
            slot: Arc::clone(&slot),
        })
    });
    let mut resp = handler(req).await;
    if resp.status().is_client_error() || resp.status().is_server_error() {
        let rest = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(rest) = rest
            && !drain(rest).await
            && http1
        {
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
    }
    resp
}

/// Reads and discards `body`, within [`DRAIN_BYTES`] and [`DRAIN_TIME`]: whether it was
/// read to its end.
pub async fn drain(body: Body) -> bool {
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    tokio::time::timeout(DRAIN_TIME, async {
        while let Some(chunk) = stream.next().await {
            seen += chunk.map_err(drop)?.len();
            if seen > DRAIN_BYTES {
                return Err(());
            }
        }
        Ok(())
    })
    .await
    .is_ok_and(|r| r.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::post;

    #[tokio::test]
    async fn an_oversized_body_is_answered_413_after_the_client_sent_it() {
        let app = Router::new()
            .route("/", post(|_: Bytes| async { "ok" }))
            .layer(axum::extract::DefaultBodyLimit::max(1024))
            .layer(axum::middleware::from_fn(finish_refused_bodies));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        // A client that writes its whole 4 MiB body before it reads anything.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = vec![b'x'; 4 * 1024 * 1024];
        let head = format!(
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&body)
            .await
            .expect("the server reads the body");
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        server.abort();
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_is_left_alone() {
        let app = Router::new()
            .route("/", post(|b: Bytes| async move { b.len().to_string() }))
            .layer(axum::middleware::from_fn(finish_refused_bodies));
        let resp =
            tower::ServiceExt::oneshot(app, Request::post("/").body(Body::from("hello")).unwrap())
                .await
                .unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), 64).await.unwrap();
        assert_eq!(&bytes[..], b"5");
    }
}
