//! The service: its settings (`[device_coap.driver]`) and its [`Driver`], which binds the
//! CoAP endpoint ([`crate::server`]) once the devices are known.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outpost_contracts::metadata::Device;
use outpost_device_sdk::{
    CommandValue, DeviceRef, Driver, DriverConfig, DriverError, ResourceRef, Sdk,
};
use outpost_kit::service::Listener;
use outpost_kit::tasks::Stage;
use serde::{Deserialize, Serialize};

use crate::server;

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "device-coap";

/// The protocol block of CoAP devices in core-metadata.
pub const PROTOCOL: &str = "coap";

/// `[device_coap.driver]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoapConfig {
    /// The address the CoAP endpoint listens on: devices are on the field network.
    pub bind: IpAddr,
    /// Plain CoAP's UDP port.
    pub coap_port: u16,
    /// Devices must present their secret (`?secret=`).
    pub require_secret: bool,
    /// How long a verified secret is trusted before core-metadata is asked again.
    pub secret_cache_s: u64,
    /// Largest payload, bytes, after block-wise transfer put it together.
    pub max_body_bytes: usize,
    /// How long an answer is kept for copies of its request, and a block-wise transfer
    /// waits for its next block (RFC 7252's EXCHANGE_LIFETIME).
    pub exchange_lifetime_s: u64,
    /// Answers kept for copies at most.
    pub dedupe_entries: usize,
    /// Requests handled at once; more are answered 5.03.
    pub max_in_flight: usize,
    /// Requests handled at once from one sender (address and port); more are answered 4.29.
    pub max_in_flight_per_source: usize,
    /// Block-wise transfers in progress at once.
    pub max_block_transfers: usize,
}

impl Default for CoapConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            coap_port: 5683,
            require_secret: true,
            secret_cache_s: 10,
            max_body_bytes: 64 * 1024,
            exchange_lifetime_s: 247,
            dedupe_entries: 10_000,
            max_in_flight: 1024,
            max_in_flight_per_source: 16,
            max_block_transfers: 256,
        }
    }
}

impl CoapConfig {
    /// Where the CoAP endpoint listens.
    pub fn coap_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.coap_port)
    }
}

impl DriverConfig for CoapConfig {
    const SERVICE: &'static str = SERVICE;
    const SECTION: &'static str = "device_coap";
    const PORT: u16 = 59988;
    const ENABLED: bool = false;

    fn driver(
        start: &outpost_kit::Start<Config>,
    ) -> Result<Arc<dyn outpost_device_sdk::Driver>, outpost_kit::StartError> {
        Ok(Arc::new(Coap {
            cfg: start.cfg.driver.clone(),
        }))
    }

    fn credentials_for(&self) -> Duration {
        Duration::from_secs(self.secret_cache_s)
    }

    fn listeners(&self) -> Vec<Listener> {
        vec![Listener {
            scheme: "coap",
            addr: self.coap_addr(),
        }]
    }

    fn validate(&self, p: &mut outpost_kit::config::Problems) {
        let s = "device_coap.driver";
        p.check(self.coap_port != 0, s, "coap_port must not be 0");
        p.check(
            self.secret_cache_s <= 3600,
            s,
            "secret_cache_s must be at most 3600",
        );
        p.check(
            (16..=16 * 1024 * 1024).contains(&self.max_body_bytes),
            s,
            "max_body_bytes must be between 16 and 16 MiB",
        );
        p.check(
            (1..=3600).contains(&self.exchange_lifetime_s),
            s,
            "exchange_lifetime_s must be between 1 and 3600",
        );
        p.check(
            self.max_in_flight >= 1 && self.max_in_flight_per_source >= 1,
            s,
            "max_in_flight and max_in_flight_per_source must be at least 1",
        );
        // Answers still being worked on are never dropped to make room (exchange.rs).
        p.check(
            self.dedupe_entries >= 2 * self.max_in_flight,
            s,
            "dedupe_entries must be at least twice max_in_flight",
        );
    }
}

pub type Config = outpost_device_sdk::Config<CoapConfig>;

/// The CoAP adapter.
pub struct Coap {
    cfg: CoapConfig,
}

#[async_trait]
impl Driver for Coap {
    async fn start(&self, sdk: Sdk) {
        let cfg = self.cfg.clone();
        let tasks = sdk.context().tasks.clone();
        // Bound once the devices are known, so a device's first request finds it. The
        // endpoint keeps answering while the HTTP server drains, and stops before the bus.
        tasks.spawn("coap", Stage::AfterServing, move |stop| async move {
            sdk.wait_loaded().await;
            let addr = cfg.coap_addr();
            let socket = tokio::net::UdpSocket::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on udp {addr}: {e}"))
            })?;
            tracing::info!(%addr, "taking CoAP requests");
            server::Server::new(sdk, cfg, socket).serve(stop).await
        });
    }

    async fn read(
        &self,
        _device: &DeviceRef,
        _resources: &[ResourceRef],
    ) -> Result<Vec<CommandValue>, DriverError> {
        Err(DriverError::Invalid(
            "device-coap takes what devices send; it does not send commands to them".into(),
        ))
    }

    async fn write(
        &self,
        _device: &DeviceRef,
        _values: &[(ResourceRef, CommandValue)],
    ) -> Result<(), DriverError> {
        Err(DriverError::Invalid(
            "device-coap takes what devices send; it does not send commands to them".into(),
        ))
    }

    fn validate(&self, device: &Device) -> Result<(), String> {
        // EdgeX device-coap keeps one plaintext key in device metadata; Outpost has
        // per-device secrets in core-metadata's credential store instead.
        if device
            .protocols
            .get(PROTOCOL)
            .is_some_and(|p| p.contains_key("ED_PskKey"))
        {
            return Err(
                "coap.ED_PskKey: a key is never kept in a device's document; the device presents its own secret"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The service, as the node runs it.
pub type DeviceCoap = outpost_device_sdk::Adapter<CoapConfig>;
