//! Who may connect to the broker, and what they may do.
//!
//! - The node's own services authenticate as the internal user with the node's bus token.
//! - Clients on loopback may connect anonymously when `allow_anonymous_loopback` is set.
//! - Everyone else must present valid credentials; today that is only the internal user
//!   (per-device credentials come with device provisioning).
//!
//! Failed attempts are counted and logged at a limited rate; the reason given to the
//! client is the MQTT "bad user name or password" / "not authorized" code, nothing more.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use mqtt5::broker::auth::{AuthProvider, AuthResult};
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::protocol::v5::reason_codes::ReasonCode;
use outpost_kit::ratelog::RateLimitedLog;

pub struct NodeAuth {
    internal_user: String,
    internal_password: String,
    allow_anonymous_loopback: bool,
    failures_metric: String,
    log: RateLimitedLog,
}

impl NodeAuth {
    pub fn new(
        internal_user: String,
        internal_password: String,
        allow_anonymous_loopback: bool,
        failures_metric: String,
    ) -> Self {
        Self {
            internal_user,
            internal_password,
            allow_anonymous_loopback,
            failures_metric,
            log: RateLimitedLog::default(),
        }
    }

    /// Decides a CONNECT; pure so it can be tested without sockets.
    pub fn decide(&self, c: &Connect<'_>) -> Result<Option<String>, ReasonCode> {
        let loopback = c.addr.ip().to_canonical().is_loopback();
        let user = match (c.username, c.password) {
            // A wrong password for the internal user falls through to the last arm.
            (Some(u), Some(p))
                if u == self.internal_user
                    && constant_time_eq(p, self.internal_password.as_bytes()) =>
            {
                Some(u.to_string())
            }
            (None, None) if loopback && self.allow_anonymous_loopback => None,
            (None, _) => return Err(ReasonCode::NotAuthorized),
            _ => return Err(ReasonCode::BadUsernameOrPassword),
        };
        if user.is_none() {
            // The node's own clients' IDs are reserved: an anonymous client taking one over
            // would cut a service off the bus and discard its queued messages.
            if c.client_id.starts_with(RESERVED_CLIENT_PREFIX) {
                return Err(ReasonCode::ClientIdentifierNotValid);
            }
            // Sessions the broker keeps while a client is away cost memory; only clients
            // with credentials may have them.
            if c.persistent {
                return Err(ReasonCode::NotAuthorized);
            }
        }
        Ok(user)
    }
}

/// Client IDs only the node's own services may use.
pub const RESERVED_CLIENT_PREFIX: &str = "outpost-";

/// What [`NodeAuth::decide`] looks at in a CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub client_id: &'a str,
    /// Whether the client asks the broker to keep its session after it disconnects.
    pub persistent: bool,
    pub addr: SocketAddr,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AuthProvider for NodeAuth {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        client_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = mqtt5::Result<AuthResult>> + Send + 'a>> {
        Box::pin(async move {
            let persistent = if connect.protocol_version == 5 {
                connect
                    .properties
                    .get_session_expiry_interval()
                    .unwrap_or(0)
                    > 0
            } else {
                !connect.clean_start
            };
            let decision = self.decide(&Connect {
                username: connect.username.as_deref(),
                password: connect.password.as_deref(),
                client_id: &connect.client_id,
                persistent,
                addr: client_addr,
            });
            Ok(match decision {
                Ok(Some(user)) => AuthResult::success_with_user(user),
                Ok(None) => AuthResult::success(),
                Err(code) => {
                    metrics::counter!(self.failures_metric.clone()).increment(1);
                    if let Some(suppressed) = self.log.check("auth") {
                        tracing::warn!(
                            peer = %client_addr,
                            client_id = ?connect.client_id,
                            user = connect.username.as_deref().unwrap_or(""),
                            suppressed,
                            "refused an MQTT connection"
                        );
                    }
                    AuthResult::fail(code)
                }
            })
        })
    }

    fn authorize_publish<'a>(
        &'a self,
        _client_id: &str,
        _user_id: Option<&'a str>,
        _topic: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        // Only the internal user and trusted loopback clients can be connected.
        Box::pin(async { true })
    }

    fn authorize_subscribe<'a>(
        &'a self,
        _client_id: &str,
        _user_id: Option<&'a str>,
        _topic_filter: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async { true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> NodeAuth {
        NodeAuth::new("outpost".into(), "s3cret".into(), true, "m".into())
    }

    #[test]
    fn decisions() {
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lo6: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let c = |user: Option<&'static str>,
                 pw: Option<&'static [u8]>,
                 id: &'static str,
                 persistent: bool,
                 addr| Connect {
            username: user,
            password: pw,
            client_id: id,
            persistent,
            addr,
        };
        let a = auth();
        assert_eq!(a.decide(&c(None, None, "tool", false, lo)), Ok(None));
        assert_eq!(a.decide(&c(None, None, "tool", false, lo6)), Ok(None));
        assert_eq!(
            a.decide(&c(None, None, "tool", false, remote)),
            Err(ReasonCode::NotAuthorized)
        );
        assert_eq!(
            a.decide(&c(
                Some("outpost"),
                Some(b"s3cret"),
                "outpost-core-data",
                true,
                remote
            )),
            Ok(Some("outpost".into()))
        );
        assert_eq!(
            a.decide(&c(Some("outpost"), Some(b"wrong"), "x", false, lo)),
            Err(ReasonCode::BadUsernameOrPassword)
        );
        assert_eq!(
            a.decide(&c(Some("someone"), Some(b"x"), "x", false, lo)),
            Err(ReasonCode::BadUsernameOrPassword)
        );
        // Anonymous clients can neither take a service's identity nor keep sessions.
        assert_eq!(
            a.decide(&c(None, None, "outpost-core-data", false, lo)),
            Err(ReasonCode::ClientIdentifierNotValid)
        );
        assert_eq!(
            a.decide(&c(None, None, "tool", true, lo)),
            Err(ReasonCode::NotAuthorized)
        );
        let strict = NodeAuth::new("outpost".into(), "s3cret".into(), false, "m".into());
        assert_eq!(
            strict.decide(&c(None, None, "tool", false, lo)),
            Err(ReasonCode::NotAuthorized)
        );
    }
}
