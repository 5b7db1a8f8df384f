//! Plain clients on a test broker: what devices, watchers and other services look like
//! from the bus.

use outpost_bus::{Bus, Delivery, Options};
use outpost_kit::Shutdown;
use outpost_kit::config::BusConfig;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::within;

/// A plain MQTT client (no durable session) on the broker at `url`, with its own data dir.
pub struct Client {
    pub bus: Bus,
    /// The bus's configuration, `url` with everything else as a node has it by default.
    pub cfg: BusConfig,
    _dir: tempfile::TempDir,
}

impl Client {
    /// Connects as `client_id`.
    pub async fn connect(url: &str, client_id: &str) -> Self {
        let cfg = BusConfig {
            url: url.to_string(),
            ..BusConfig::default()
        };
        Self::connect_with(cfg, client_id).await
    }

    /// Connects as `client_id` with the bus configuration `cfg` (its credentials, say).
    pub async fn connect_with(cfg: BusConfig, client_id: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = within(
            &format!("{client_id} connects"),
            Bus::connect(
                &cfg,
                dir.path(),
                "test",
                Options::plain(client_id),
                &Shutdown::new(),
            ),
        )
        .await
        .expect("the client connects");
        Self {
            bus,
            cfg,
            _dir: dir,
        }
    }

    /// Subscribes to `filter`; what arrives comes on the receiver.
    pub async fn subscribe(&self, filter: &str) -> UnboundedReceiver<Delivery> {
        within(
            &format!("the subscription to {filter}"),
            self.bus.subscribe(filter),
        )
        .await
        .expect("subscribed")
    }

    /// Publishes `payload` on `topic` as is.
    pub async fn publish(&self, topic: &str, payload: &[u8]) {
        within(
            &format!("a publish on {topic}"),
            self.bus.publish_raw(topic, payload.to_vec()),
        )
        .await
        .expect("published");
    }
}

/// The next delivery on `rx`, which must come within [`crate::WAIT`]; `what` names it.
pub async fn next(rx: &mut UnboundedReceiver<Delivery>, what: &str) -> Delivery {
    within(what, rx.recv())
        .await
        .expect("the subscription is open")
}
