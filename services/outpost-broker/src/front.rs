//! MQTT over TLS (`broker.tls_listen`, 8883): the broker's TLS front.
//!
//! The front terminates TLS with the broker's service certificate from the node CA and asks
//! clients for a certificate, which is optional (a device may instead give its secret
//! inside TLS). A certificate presented must chain to the node CA or to a manufacturer CA
//! (`enrollment.manufacturer_ca`); expired ones and those of other CAs fail the handshake.
//! Each connection then goes straight to the broker's own connection handler, in this
//! process (no second hop, nothing in clear text on any socket), under an address of its
//! own from `100::/64` (a prefix reserved for discarding, RFC 6666), with an authentication
//! of its own ([`FrontAuth`]). The front remembers who is behind each such address
//! ([`Peer`]): the client's real address and what its certificate proves; [`FrontAuth`]
//! takes it when the client's CONNECT arrives and has the broker's authentication
//! ([`crate::auth`]) decide with it, so the MQTT identity is bound to the certificate:
//! - a certificate of one of the node's services or of its administrator
//!   ([`outpost_pki::internal::identity`], issued by the node CA itself) is the node's
//!   internal user;
//! - any other certificate is a device's, named by its common name, and core-metadata
//!   decides whether it is that device's (as for the gateway); the device then has exactly
//!   the topics its secret would give it, and cannot name another device as its user.
//!
//! Clients of the plain listener are authenticated by [`crate::auth::NodeAuth`] directly,
//! which never looks at the front's table: whatever address such a client has (even one
//! from `100::/64`), it is a plain client that must give credentials.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use std::future::Future;
use std::pin::Pin;

use mqtt5::broker::auth::{AuthProvider, AuthResult};
use mqtt5::broker::client_handler::ClientHandler;
use mqtt5::broker::config::BrokerConfig;
use mqtt5::broker::resource_monitor::ResourceMonitor;
use mqtt5::broker::router::MessageRouter;
use mqtt5::broker::storage::DynamicStorage;
use mqtt5::broker::sys_topics::BrokerStats;
use mqtt5::broker::tls_acceptor::TlsStreamWrapper;
use mqtt5::broker::transport::BrokerTransport;
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::protocol::v5::reason_codes::ReasonCode;
use outpost_kit::Shutdown;
use outpost_kit::internal::Identity;

/// What the client's certificate proves, if it presented one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// One of the node's services, or its administrator.
    Node(Identity),
    /// A device certificate: its common name and the certificate (DER, base64), for
    /// core-metadata to say whether it is that device's.
    Device { name: String, cert: String },
}

/// A client of the front, as the broker's authentication sees it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's own address.
    pub addr: SocketAddr,
    pub presented: Option<Presented>,
}

/// The front's clients, by the address the broker knows them by.
#[derive(Debug, Default, Clone)]
pub struct Peers {
    map: Arc<Mutex<HashMap<SocketAddr, Peer>>>,
    next: Arc<AtomicU64>,
}

impl Peers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Peer>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client the broker knows as `addr` (taken: a connection authenticates once).
    pub fn take(&self, addr: SocketAddr) -> Option<Peer> {
        self.map().remove(&addr)
    }

    /// Gives `peer` an address of its own in `100::/64`, never used twice.
    fn admit(&self, peer: Peer) -> SocketAddr {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // 64 bits of the counter: the host part's last three segments and the port.
        let seg = |shift: u32| u16::try_from((n >> shift) & 0xffff).unwrap_or(0);
        let addr = SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x100, 0, 0, 0, 0, seg(48), seg(32), seg(16))),
            seg(0),
        );
        self.map().insert(addr, peer);
        addr
    }

    fn remove(&self, addr: SocketAddr) {
        self.map().remove(&addr);
    }

    /// Clients whose CONNECT the broker has not looked at yet.
    pub fn pending(&self) -> usize {
        self.map().len()
    }
}

/// The authentication of the front's connections: the broker's, told what each client's
/// certificate proves.
pub struct FrontAuth {
    pub node: Arc<crate::auth::NodeAuth>,
    pub peers: Peers,
}

impl AuthProvider for FrontAuth {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        client_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = mqtt5::Result<AuthResult>> + Send + 'a>> {
        Box::pin(async move {
            Ok(match self.peers.take(client_addr) {
                Some(peer) => {
                    self.node
                        .authenticate_connect(connect, peer.addr, peer.presented.as_ref())
                        .await
                }
                // Already authenticated once (or never admitted): nothing to go on.
                None => AuthResult::fail(ReasonCode::NotAuthorized),
            })
        })
    }

    fn authorize_publish<'a>(
        &'a self,
        client_id: &str,
        user_id: Option<&'a str>,
        topic: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        self.node.authorize_publish(client_id, user_id, topic)
    }

    fn authorize_subscribe<'a>(
        &'a self,
        client_id: &str,
        user_id: Option<&'a str>,
        topic_filter: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        self.node
            .authorize_subscribe(client_id, user_id, topic_filter)
    }
}

/// What the front needs of the broker to hand it connections.
pub struct Broker {
    pub config: Arc<BrokerConfig>,
    pub router: Arc<MessageRouter>,
    pub auth: Arc<crate::auth::NodeAuth>,
    pub storage: Option<Arc<DynamicStorage>>,
    pub stats: Arc<BrokerStats>,
    pub monitor: Arc<ResourceMonitor>,
}

/// The front, listening.
pub struct Front {
    pub listener: tokio::net::TcpListener,
    pub tls: Arc<rustls::ServerConfig>,
    /// The node CA (PEM): a certificate it issued may be a service's.
    pub node_ca: String,
    pub peers: Peers,
}

/// How long a client has for its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

impl Front {
    /// Serves until `stop`; then the connections it handed the broker are closed.
    pub async fn run(self, broker: Broker, stop: Shutdown) {
        let Self {
            listener,
            tls,
            node_ca,
            peers,
        } = self;
        let node_ca: Arc<str> = node_ca.into();
        let auth: Arc<dyn AuthProvider> = Arc::new(FrontAuth {
            node: Arc::clone(&broker.auth),
            peers: peers.clone(),
        });
        let broker = Arc::new(broker);
        let (closing, _) = tokio::sync::broadcast::channel::<()>(1);
        let closing2 = closing.clone();
        outpost_kit::tls::accept_loop(
            listener,
            tokio_rustls::TlsAcceptor::from(tls),
            HANDSHAKE,
            stop.wait(),
            move |tls, addr, _watcher| {
                let (peers, node_ca, broker, auth) = (
                    peers.clone(),
                    Arc::clone(&node_ca),
                    Arc::clone(&broker),
                    Arc::clone(&auth),
                );
                let closed = closing2.subscribe();
                async move {
                    if !broker.monitor.can_accept_connection(addr.ip()).await {
                        tracing::warn!(peer = %addr, "MQTT over TLS connection refused: resource limits");
                        return;
                    }
                    let presented = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| presented(c.as_ref(), &node_ca));
                    let known_as = peers.admit(Peer { addr, presented });
                    let handler = ClientHandler::new(
                        BrokerTransport::tls(TlsStreamWrapper::new(tls)),
                        known_as,
                        Arc::clone(&broker.config),
                        Arc::clone(&broker.router),
                        auth,
                        broker.storage.clone(),
                        Arc::clone(&broker.stats),
                        Arc::clone(&broker.monitor),
                        closed,
                    );
                    if let Err(e) = handler.run().await
                        && !e.is_normal_disconnect()
                    {
                        tracing::debug!(peer = %addr, error = %e, "MQTT over TLS connection ended");
                    }
                    peers.remove(known_as);
                }
            },
        )
        .await;
        let _ = closing.send(());
    }
}

/// What a certificate the handshake verified proves.
fn presented(der: &[u8], node_ca: &str) -> Option<Presented> {
    // A manufacturer CA could put any unit in what it signs: only the node CA's own
    // certificates can be the node's.
    if let Some(id) = outpost_pki::internal::identity(der)
        && outpost_pki::verify_client(der, node_ca).is_ok()
    {
        return Some(Presented::Node(id));
    }
    let info = outpost_pki::inspect(der).ok()?;
    Some(Presented::Device {
        name: info.common_name?,
        cert: base64::engine::general_purpose::STANDARD.encode(der),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_proves_the_node_only_when_the_node_ca_issued_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let holder = outpost_pki::internal::ensure_service_cert(
            dir.path(),
            "core-data",
            &["localhost".into()],
        )
        .expect("service cert");
        let node_ca = outpost_pki::internal::node_ca_pem(dir.path()).expect("CA");
        let der = |pem: &str| {
            use rustls::pki_types::pem::PemObject as _;
            rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
                .next()
                .expect("a certificate")
                .expect("PEM")
                .to_vec()
        };
        let service = der(&std::fs::read_to_string(&holder.cert).expect("cert"));
        assert_eq!(
            presented(&service, &node_ca),
            Some(Presented::Node(Identity::Service("core-data".into())))
        );
        // The same subject from another CA (a manufacturer's) is a device's at most.
        let other = tempfile::tempdir().expect("tempdir");
        let foreign = outpost_pki::internal::ensure_service_cert(
            other.path(),
            "core-data",
            &["localhost".into()],
        )
        .expect("foreign cert");
        let foreign = der(&std::fs::read_to_string(&foreign.cert).expect("cert"));
        assert!(matches!(
            presented(&foreign, &node_ca),
            Some(Presented::Device { name, .. }) if name == "core-data"
        ));
        let device = outpost_pki::issue_client_cert(&outpost_pki::Paths::new(dir.path()), "m1", 1)
            .expect("device cert");
        assert!(matches!(
            presented(&der(&device.cert_pem), &node_ca),
            Some(Presented::Device { name, .. }) if name == "m1"
        ));
    }
}
