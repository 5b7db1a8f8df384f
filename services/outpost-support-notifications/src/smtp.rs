//! E-mail: one message per delivery, over SMTP (RFC 5321) with STARTTLS (RFC 3207) and
//! AUTH PLAIN (RFC 4616).
//!
//! The server's certificate is verified (against the system's trust or `smtp.ca_file`),
//! and credentials are never sent before TLS is up: a server that offers no STARTTLS gets
//! mail only in `starttls` mode without credentials, or in `none` mode. Every reply is
//! read with a timeout and a bounded length, and what is sent can carry no line break a
//! field did not validate (recipients, sender, content type): the body is dot-stuffed and
//! its lines end in CRLF.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::config::{Smtp, SmtpSecurity};
use crate::model::Notification;

/// The secret (`POST /api/v3/secret`) holding `username` and `password`, as EdgeX names it.
pub const SECRET: &str = "smtp";

/// Longest reply line read from the server.
const MAX_LINE: usize = 4096;
/// Longest line of a message body before it is wrapped (RFC 5322 allows 998).
const MAX_BODY_LINE: usize = 998;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Mailer {
    cfg: Smtp,
    tls: Option<Arc<rustls::ClientConfig>>,
    password: Option<String>,
}

impl Mailer {
    pub fn new(cfg: &Smtp) -> Result<Self, String> {
        let tls = if cfg.host.is_empty() || cfg.security == SmtpSecurity::None {
            None
        } else {
            Some(Arc::new(tls_config(cfg)?))
        };
        let password = match &cfg.password_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read smtp.password_file {}: {e}", f.display()))?
                    .trim_end()
                    .to_string(),
            ),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            tls,
            password,
        })
    }

    /// Sends `n` to `recipients`; `secret` is the stored `smtp` secret, if any.
    pub async fn send(
        &self,
        n: &Notification,
        recipients: &[String],
        secret: &[(String, String)],
    ) -> Result<(), String> {
        if self.cfg.host.is_empty() {
            return Err("no SMTP server is configured (support_notifications.smtp.host)".into());
        }
        let get = |k: &str| {
            secret
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let user = match self.cfg.username.as_str() {
            "" => get("username").unwrap_or_default(),
            u => u.to_string(),
        };
        let password = self
            .password
            .clone()
            .or_else(|| get("password"))
            .unwrap_or_default();
        let credentials = (!user.is_empty() && !password.is_empty()).then_some((user, password));
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        tokio::time::timeout(timeout, self.session(n, recipients, credentials))
            .await
            .map_err(|_| format!("the SMTP server did not finish within {timeout:?}"))?
    }

    async fn session(
        &self,
        n: &Notification,
        recipients: &[String],
        credentials: Option<(String, String)>,
    ) -> Result<(), String> {
        let (host, port) = (self.cfg.host.as_str(), self.cfg.port);
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let mut secure = false;
        let mut io: Box<dyn Io> = if self.cfg.security == SmtpSecurity::Tls {
            secure = true;
            Box::new(self.handshake(tcp).await?)
        } else {
            Box::new(tcp)
        };
        let mut conn = Conn::new(io);
        conn.expect(220).await?;
        let mut caps = conn.ehlo().await?;
        if !secure && self.cfg.security != SmtpSecurity::None {
            if caps.iter().any(|c| c.eq_ignore_ascii_case("STARTTLS")) {
                conn.command("STARTTLS", 220).await?;
                io = conn.into_inner()?;
                let tls = self.upgrade(io).await?;
                conn = Conn::new(Box::new(tls));
                secure = true;
                caps = conn.ehlo().await?;
            } else if self.cfg.security == SmtpSecurity::Required {
                return Err(format!(
                    "{host} does not offer STARTTLS, which smtp.security requires"
                ));
            }
        }
        if let Some((user, password)) = credentials {
            if !secure {
                return Err(format!(
                    "{host} offers no TLS: credentials are not sent in the clear"
                ));
            }
            let plain = caps.iter().any(|c| {
                let mut words = c.split_whitespace();
                words.next().is_some_and(|w| w.eq_ignore_ascii_case("AUTH"))
                    && words.any(|m| m.eq_ignore_ascii_case("PLAIN"))
            });
            if !plain {
                return Err(format!("{host} does not offer AUTH PLAIN"));
            }
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            conn.command(&format!("AUTH PLAIN {token}"), 235)
                .await
                .map_err(|e| format!("login as {user} refused: {e}"))?;
        }
        conn.command(&format!("MAIL FROM:<{}>", self.cfg.sender), 250)
            .await?;
        for r in recipients {
            conn.command_any(&format!("RCPT TO:<{r}>"), &[250, 251])
                .await?;
        }
        conn.command("DATA", 354).await?;
        conn.write(&self.message(n, recipients)).await?;
        conn.expect(250).await?;
        let _ = conn.command("QUIT", 221).await;
        Ok(())
    }

    /// The message: headers, then the content with its lines ended by CRLF, wrapped at 998
    /// characters, dot-stuffed, and the final `.` line.
    fn message(&self, n: &Notification, recipients: &[String]) -> Vec<u8> {
        let mut m = format!(
            "Subject: {}\r\nFrom: {}\r\nTo: {}\r\nDate: {}\r\nMessage-ID: <{}@outpost>\r\n",
            one_line(&self.cfg.subject),
            one_line(&n.sender),
            recipients.join(", "),
            httpdate_now(),
            if n.id.is_empty() {
                "notification"
            } else {
                n.id.as_str()
            },
        );
        if !n.content_type.is_empty() {
            m.push_str(&format!(
                "MIME-Version: 1.0\r\nContent-Type: {}; charset=\"UTF-8\"\r\n",
                one_line(&n.content_type)
            ));
        }
        m.push_str("\r\n");
        for line in n.content.lines() {
            let chars: Vec<char> = line.chars().collect();
            let mut pieces = chars.chunks(MAX_BODY_LINE).peekable();
            if pieces.peek().is_none() {
                m.push_str("\r\n");
            }
            for piece in pieces {
                let piece: String = piece.iter().collect();
                if piece.starts_with('.') {
                    m.push('.');
                }
                m.push_str(&piece);
                m.push_str("\r\n");
            }
        }
        m.push_str(".\r\n");
        m.into_bytes()
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<impl Io + use<>, String> {
        self.upgrade(Box::new(tcp)).await
    }

    async fn upgrade(&self, io: Box<dyn Io>) -> Result<impl Io + use<>, String> {
        let cfg = self
            .tls
            .clone()
            .ok_or_else(|| "TLS is not configured".to_string())?;
        let name = rustls::pki_types::ServerName::try_from(self.cfg.host.clone())
            .map_err(|e| format!("{} is not a server name: {e}", self.cfg.host))?;
        tokio_rustls::TlsConnector::from(cfg)
            .connect(name, io)
            .await
            .map_err(|e| format!("TLS with {} failed: {e}", self.cfg.host))
    }
}

/// The header text with any line break taken out.
fn one_line(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// The date header: RFC 1123's form, which RFC 5322 accepts.
fn httpdate_now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

fn tls_config(cfg: &Smtp) -> Result<rustls::ClientConfig, String> {
    outpost_kit::http::install_tls_provider();
    let mut tls = match &cfg.ca_file {
        Some(f) => {
            let pem = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read smtp.ca_file {}: {e}", f.display()))?;
            outpost_pki::client_config(&pem, None).map_err(|e| format!("smtp.ca_file: {e}"))?
        }
        None => {
            use rustls_platform_verifier::ConfigVerifierExt as _;
            rustls::ClientConfig::with_platform_verifier()
                .map_err(|e| format!("the system's trust store cannot be used: {e}"))?
        }
    };
    tls.alpn_protocols.clear();
    Ok(tls)
}

/// A connection to the server, read a reply at a time.
struct Conn {
    io: BufReader<Box<dyn Io>>,
}

impl Conn {
    fn new(io: Box<dyn Io>) -> Self {
        Self {
            io: BufReader::new(io),
        }
    }

    /// The stream back, for STARTTLS (nothing may be buffered: the server waits for the
    /// handshake after its 220).
    fn into_inner(self) -> Result<Box<dyn Io>, String> {
        if !self.io.buffer().is_empty() {
            return Err("the server sent data before the TLS handshake".into());
        }
        Ok(self.io.into_inner())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let w = self.io.get_mut();
        w.write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        w.flush().await.map_err(|e| format!("write: {e}"))
    }

    /// Reads one reply (all its lines): its code and its lines' texts.
    async fn reply(&mut self) -> Result<(u16, Vec<String>), String> {
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = (&mut self.io)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| format!("not an SMTP reply: {line}"))?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Ok((code, lines));
            }
            if lines.len() > 100 {
                return Err("the server's reply is too long".into());
            }
        }
    }

    async fn expect(&mut self, want: u16) -> Result<Vec<String>, String> {
        self.expect_any(&[want]).await
    }

    async fn expect_any(&mut self, want: &[u16]) -> Result<Vec<String>, String> {
        let (code, lines) = self.reply().await?;
        if want.contains(&code) {
            Ok(lines)
        } else {
            Err(format!("{code} {}", lines.join(" ")))
        }
    }

    async fn command(&mut self, cmd: &str, want: u16) -> Result<Vec<String>, String> {
        self.command_any(cmd, &[want]).await
    }

    async fn command_any(&mut self, cmd: &str, want: &[u16]) -> Result<Vec<String>, String> {
        self.write(format!("{cmd}\r\n").as_bytes()).await?;
        let verb = cmd.split_whitespace().next().unwrap_or(cmd);
        self.expect_any(want)
            .await
            .map_err(|e| format!("{verb}: the server answered {e}"))
    }

    /// EHLO; the server's extensions.
    async fn ehlo(&mut self) -> Result<Vec<String>, String> {
        let lines = self.command("EHLO outpost", 250).await?;
        Ok(lines.into_iter().skip(1).collect())
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_dot_stuffed_wrapped_and_ends_in_crlf() {
        let m = Mailer::new(&Smtp::default()).unwrap();
        let n = Notification {
            sender: "taf-admin".into(),
            content: format!(".hidden\nline two\n\n{}", "x".repeat(1000)),
            content_type: "text/plain\r\nBcc: evil@example.com".into(),
            ..Notification::default()
        };
        let msg = String::from_utf8(m.message(&n, &["a@b.example".into()])).unwrap();
        let (head, body) = msg.split_once("\r\n\r\n").unwrap();
        assert!(!head.contains("\r\nBcc:"), "{head}");
        assert!(body.starts_with("..hidden\r\nline two\r\n\r\n"), "{body}");
        assert!(body.ends_with("\r\n.\r\n"));
        assert!(body.lines().all(|l| l.len() <= MAX_BODY_LINE));
        assert!(!body.replace("\r\n", "").contains('\n'));
    }
}
