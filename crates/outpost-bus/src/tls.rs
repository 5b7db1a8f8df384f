//! MQTT over TLS (`mqtts://` bus URLs).
//!
//! To the node's embedded broker a service presents its own certificate from the node CA
//! ([`outpost_kit::internal`]) and trusts only the node CA; the broker's TLS front makes
//! that certificate its identity, so no password is sent. To an external broker the client
//! presents `bus.cert_file` if configured and trusts `bus.ca_file` (or the system's roots).
//! The files are read again every few minutes, so a renewed service certificate is the one
//! every reconnect presents.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mqtt5::MqttClient;
use outpost_kit::Shutdown;
use outpost_kit::config::BusConfig;

/// How often the certificate files are read again (service certificates are renewed with
/// twelve hours left).
const REREAD: Duration = Duration::from_secs(600);

/// What a client presents and trusts.
#[derive(Debug, Clone)]
pub(crate) struct Files {
    /// Certificate (PEM, with its chain) and key.
    identity: Option<(PathBuf, PathBuf)>,
    /// CA (PEM); `None`: the system's roots.
    ca: Option<PathBuf>,
}

impl Files {
    /// For `cfg`'s URL; `None` when it is not `mqtts://`.
    pub(crate) fn of(cfg: &BusConfig, data_dir: &Path) -> Option<Self> {
        if !cfg.url.starts_with("mqtts://") {
            return None;
        }
        // `journal` is set exactly when the URL is the node's embedded broker.
        let embedded = cfg.journal;
        let identity = match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ if embedded => outpost_kit::internal::process()
                .map(|c| (c.files.cert.clone(), c.files.key.clone())),
            _ => None,
        };
        let ca = cfg
            .ca_file
            .clone()
            .or_else(|| embedded.then(|| data_dir.join("tls/ca.pem")));
        Some(Self { identity, ca })
    }

    /// Whether the certificate presented is the node's own (no password needed then).
    pub(crate) fn is_node_identity(&self, cfg: &BusConfig) -> bool {
        cfg.journal && cfg.cert_file.is_none() && self.identity.is_some()
    }

    /// Gives `client` the current files (again after a failed connection attempt: they
    /// may have been missing or halfway through a renewal).
    pub(crate) async fn apply(&self, client: &MqttClient) -> std::io::Result<()> {
        let (cert, key) = match &self.identity {
            Some((c, k)) => (
                Some(tokio::fs::read(c).await?),
                Some(tokio::fs::read(k).await?),
            ),
            None => (None, None),
        };
        let ca = match &self.ca {
            Some(p) => Some(tokio::fs::read(p).await?),
            None => None,
        };
        client.set_tls_config(cert, key, ca).await;
        Ok(())
    }

    /// Gives `client` the files now, and again every [`REREAD`] until `shutdown`.
    pub(crate) async fn keep_applied(self, client: &MqttClient, shutdown: &Shutdown) {
        outpost_kit::http::install_tls_provider();
        if let Err(e) = self.apply(client).await {
            tracing::warn!(error = %e, files = ?self, "cannot read the bus TLS files");
        }
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(REREAD) => {}
                }
                if let Err(e) = self.apply(&client).await {
                    tracing::warn!(error = %e, "cannot read the bus TLS files again");
                }
            }
        });
    }
}
