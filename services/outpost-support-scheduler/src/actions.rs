//! Running one action of a job: a REST call, a message on the bus, or a device command
//! through core-command. Each answers `Ok` or why it failed (the record says which).

use std::time::Duration;

use outpost_kit::client::ServiceClient;
use reqwest::Method;

use crate::model::{ScheduleAction, action};

pub struct Runner {
    /// The node's services: the node's identity presented, only the node CA trusted.
    internal: reqwest::Client,
    /// Anything else.
    external: reqwest::Client,
    services: ServiceClient,
    bus: outpost_bus::Link,
    timeout: Duration,
}

impl Runner {
    pub fn new(services: ServiceClient, bus: outpost_bus::Link, timeout: Duration) -> Self {
        Self {
            internal: outpost_kit::http::client(timeout),
            external: outpost_kit::http::external_client(timeout),
            services,
            bus,
            timeout,
        }
    }

    pub async fn run(&self, a: &ScheduleAction) -> Result<(), String> {
        match a.kind.as_str() {
            action::REST => self.rest(a).await,
            action::MESSAGE_BUS => self.publish(a).await,
            action::DEVICE_CONTROL => self.device_control(a).await,
            other => Err(format!("unknown action type {other}")),
        }
    }

    /// Where a REST action goes, and with which client: an address whose host names a
    /// service of the node (`http://core-data/...`, or EdgeX's `edgex-core-data`) goes to
    /// that service as the registry knows it; one on this host's loopback goes there with
    /// the node's identity; anything else goes out as it is.
    fn target(&self, address: &str) -> Result<(reqwest::Url, &reqwest::Client), String> {
        let url =
            reqwest::Url::parse(address).map_err(|e| format!("{address} is not a URL: {e}"))?;
        let host = url.host_str().unwrap_or("").to_string();
        let service = host.strip_prefix("edgex-").unwrap_or(&host);
        if let Some(base) = self.services.registry().resolve(service) {
            let mut to =
                reqwest::Url::parse(&base).map_err(|e| format!("registry URL {base}: {e}"))?;
            to.set_path(url.path());
            to.set_query(url.query());
            return Ok((to, &self.internal));
        }
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        Ok((
            url,
            if loopback {
                &self.internal
            } else {
                &self.external
            },
        ))
    }

    async fn rest(&self, a: &ScheduleAction) -> Result<(), String> {
        let (url, client) = self.target(&a.address)?;
        let method = Method::from_bytes(a.method.as_bytes())
            .map_err(|_| format!("{} is not an HTTP method", a.method))?;
        let mut rb = client.request(method, url.clone());
        if !a.payload.0.is_empty() {
            let ct = if a.content_type.is_empty() {
                "application/json"
            } else {
                a.content_type.as_str()
            };
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, ct)
                .body(a.payload.0.clone());
        }
        let resp = outpost_kit::http::correlated(rb)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        if status.as_u16() >= 400 {
            let body = resp.text().await.unwrap_or_default();
            let body: String = body.chars().take(512).collect();
            return Err(format!("{url} answered {}: {body}", status.as_u16()));
        }
        Ok(())
    }

    async fn publish(&self, a: &ScheduleAction) -> Result<(), String> {
        let bus = tokio::time::timeout(self.timeout, self.bus.connected())
            .await
            .map_err(|_| "the bus is not connected".to_string())?;
        let sent = if a.use_raw_payload {
            bus.publish_raw(&a.topic, a.payload.0.clone()).await
        } else {
            // EdgeX's envelope: the payload as JSON when it is JSON, else as text.
            let payload =
                serde_json::from_slice::<serde_json::Value>(&a.payload.0).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&a.payload.0).into_owned())
                });
            bus.publish(&a.topic, payload).await
        };
        sent.map_err(|e| format!("publish to {}: {e}", a.topic))
    }

    async fn device_control(&self, a: &ScheduleAction) -> Result<(), String> {
        let body: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&a.payload.0)
            .map_err(|_| {
                "a DEVICECONTROL payload must be a JSON object of resource values".to_string()
            })?;
        self.services
            .call_raw(
                "core-command",
                Method::PUT,
                &[
                    "api",
                    "v3",
                    "device",
                    "name",
                    &a.device_name,
                    &a.source_name,
                ],
                &[],
                Some(&body),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
