//! EdgeX error bodies for what the HTTP/1 server itself refuses.
//!
//! hyper answers some requests before any service code runs: a request line longer than it
//! accepts (414), a head larger than its buffer (431), a head it cannot parse (400). It
//! answers them with an empty body. [`EdgexWire`] wraps a connection and rewrites exactly
//! those answers (an error status with `content-length: 0`, which no Outpost handler
//! writes: every handler's refusal carries EdgeX's body, see [`crate::error::edgex_errors`])
//! into EdgeX's error body, keeping the status and headers. The kit's servers
//! ([`crate::tls`]) wrap every connection so.
//!
//! The wrapper reports itself as not supporting vectored writes, so hyper hands it each
//! response head in one buffer it can recognise.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose empty HTTP/1 error answers get EdgeX's error body.
pub struct EdgexWire<S> {
    inner: S,
    /// A rewritten answer not yet fully written, and how much of it was.
    pending: Option<(Vec<u8>, usize)>,
    /// Whether anything was written since the peer last sent bytes: only the first write
    /// after a read can be the server's refusal of what was read (a later one may be part
    /// of a body that happens to look like an answer head).
    wrote_since_read: bool,
}

impl<S> EdgexWire<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: None,
            wrote_since_read: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// The EdgeX form of `head` when it is a complete HTTP/1 error answer with an empty body.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    if !(head.starts_with(b"HTTP/1.1 4")
        || head.starts_with(b"HTTP/1.1 5")
        || head.starts_with(b"HTTP/1.0 4")
        || head.starts_with(b"HTTP/1.0 5"))
        || !head.ends_with(b"\r\n\r\n")
    {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text[..text.len() - 4].split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let (_, code, reason) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
    let code: u16 = code.parse().ok()?;
    let mut kept = Vec::new();
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            empty = value.trim() == "0";
        } else if !name.eq_ignore_ascii_case("content-type") {
            kept.push(line);
        }
    }
    if !empty {
        return None;
    }
    let message = match code {
        414 => "the request line is too long".to_string(),
        431 => "the request head is too large".to_string(),
        _ if reason.is_empty() => "the request was refused".to_string(),
        _ => reason.to_ascii_lowercase(),
    };
    let body =
        serde_json::json!({"apiVersion": "v3", "message": message, "statusCode": code}).to_string();
    let mut out = format!("{status_line}\r\n");
    for line in kept {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Content-Type: application/json\r\n");
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    out.push_str(&body);
    Some(out.into_bytes())
}

impl<S: AsyncWrite + Unpin> EdgexWire<S> {
    /// Writes what is left of a rewritten answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for EdgexWire<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.wrote_since_read = false;
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EdgexWire<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.drain(cx))?;
        let first = !std::mem::replace(&mut this.wrote_since_read, true);
        if let Some(out) = rewrite(buf).filter(|_| first) {
            // The caller's bytes count as written; ours go out in their place.
            this.pending = Some((out, 0));
            // Nothing more can be done now if the socket is full: flush drains the rest.
            if let Poll::Ready(Err(e)) = this.drain(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// What a served router answers to `request`, raw.
    async fn raw(request: Vec<u8>) -> String {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let app =
            axum::Router::new().route("/api/v3/ping", axum::routing::get(|| async { "pong" }));
        let server = tokio::spawn(crate::tls::serve_plain(
            tcp,
            app,
            std::future::pending::<()>(),
        ));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(&request).await.unwrap();
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), c.read_to_end(&mut out)).await;
        server.abort();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn what_hyper_refuses_gets_edgex_bodies_over_a_real_socket() {
        let long = format!(
            "GET /api/v3/{} HTTP/1.1\r\nhost: x\r\n\r\n",
            "a".repeat(70_000)
        );
        let answer = raw(long.into_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(body).expect("an EdgeX body");
        assert_eq!(v["statusCode"], 414);
        let garbage = raw(b"NOT HTTP AT ALL\r\n\r\n".to_vec()).await;
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        assert!(garbage.contains("\"statusCode\":400"), "{garbage}");
        // Ordinary answers pass untouched.
        let ok = raw(b"GET /api/v3/ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec())
            .await;
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("pong"),
            "{ok}"
        );
        // Header names in canonical case, as EdgeX's servers send them.
        assert!(
            ok.contains("\r\nContent-Type: text/plain") && ok.contains("\r\nContent-Length: 4"),
            "{ok}"
        );
    }

    #[test]
    fn only_empty_error_answers_are_rewritten() {
        let out = rewrite(
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 12:00:00 GMT\r\n\r\n",
        )
        .expect("rewritten");
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains("date: Sat"), "{head}");
        assert!(head.contains("Content-Type: application/json"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            (v["statusCode"].as_u64(), v["apiVersion"].as_str()),
            (Some(414), Some("v3"))
        );
        // A handler's answer (a body), a success, a partial head: left alone.
        for kept in [
            &b"HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"{\"apiVersion\":\"v3\"}",
        ] {
            assert!(rewrite(kept).is_none(), "{}", String::from_utf8_lossy(kept));
        }
    }
}
