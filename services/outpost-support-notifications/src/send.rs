//! One attempt to deliver a notification over one channel: REST, e-mail or MQTT.
//!
//! Each sender answers `Ok(response)` (what the receiver said, kept in the transmission's
//! record) or `Err(reason)` (recorded as a failed attempt); none of them retries: retries
//! are the delivery loop's ([`crate::deliver`]), durable across restarts.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::model::{Address, Notification, channel};
use crate::smtp;
use crate::store::NotificationStore;

/// The longest receiver answer kept in a record.
const MAX_RESPONSE: usize = 1024;

pub struct Senders {
    http: reqwest::Client,
    timeout: Duration,
    mail: smtp::Mailer,
    store: Arc<dyn NotificationStore>,
}

impl Senders {
    pub fn new(cfg: &Config, store: Arc<dyn NotificationStore>) -> Result<Self, String> {
        let timeout = Duration::from_millis(cfg.send_timeout_ms);
        Ok(Self {
            http: outpost_kit::http::external_client(timeout),
            timeout,
            mail: smtp::Mailer::new(&cfg.smtp)?,
            store,
        })
    }

    /// Delivers `n` over `ch` once.
    pub async fn send(&self, ch: &Address, n: &Notification) -> Result<String, String> {
        match ch.kind.as_str() {
            channel::REST => self.rest(ch, n).await,
            channel::EMAIL => {
                let secret = self.secret(smtp::SECRET).await?;
                self.mail
                    .send(n, &ch.recipients, &secret)
                    .await
                    .map(|()| String::new())
            }
            channel::MQTT => self.mqtt(ch, n).await,
            other => Err(format!("unsupported address type: {other}")),
        }
    }

    async fn secret(&self, name: &str) -> Result<Vec<(String, String)>, String> {
        self.store
            .secret(name)
            .await
            .map_err(|e| format!("cannot read secret {name}: {e}"))
    }

    async fn rest(&self, ch: &Address, n: &Notification) -> Result<String, String> {
        let scheme = match ch.scheme.to_ascii_lowercase().as_str() {
            "" => "http".to_string(),
            s => s.to_string(),
        };
        let host = if ch.host.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("[{}]", ch.host)
        } else {
            ch.host.clone()
        };
        let url = format!("{scheme}://{host}:{}{}", ch.port, ch.path);
        let method = reqwest::Method::from_bytes(ch.http_method.as_bytes())
            .map_err(|_| format!("{} is not an HTTP method", ch.http_method))?;
        let content_type = if n.content_type.is_empty() {
            "application/json"
        } else {
            n.content_type.as_str()
        };
        let rb = self
            .http
            .request(method, &url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(n.content.trim().to_string());
        let mut resp = outpost_kit::http::correlated(rb)
            .send()
            .await
            .map_err(|e| format!("fail to send the HTTP request to {url}: {e}"))?;
        let code = resp.status();
        let mut body = Vec::new();
        while body.len() < MAX_RESPONSE {
            match resp.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(MAX_RESPONSE);
        let text = String::from_utf8_lossy(&body).into_owned();
        if code.as_u16() >= 400 {
            return Err(format!(
                "request failed, status code: {}, err: {text}",
                code.as_u16()
            ));
        }
        Ok(text)
    }

    async fn mqtt(&self, ch: &Address, n: &Notification) -> Result<String, String> {
        use mqtt5::{ConnectOptions, MqttClient, PublishOptions, QoS};

        let tls = match ch.scheme.to_ascii_lowercase().as_str() {
            "" | "tcp" | "mqtt" => false,
            "ssl" | "tls" | "mqtts" => true,
            other => return Err(format!("unsupported MQTT scheme {other}")),
        };
        if ch.skip_cert_verify {
            return Err(
                "skipCertVerify is not supported: the broker's certificate is always verified"
                    .into(),
            );
        }
        let port =
            u16::try_from(ch.port).map_err(|_| format!("port {} is out of range", ch.port))?;
        let mut opts = ConnectOptions::new(ch.publisher.clone())
            .with_clean_start(true)
            .with_keep_alive(Duration::from_secs(30))
            .with_automatic_reconnect(false);
        if ch.auth_mode == "usernamepassword" {
            let secret = self.secret(&ch.secret_path).await?;
            let get = |k: &str| {
                secret
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            let user = get("username")
                .ok_or_else(|| format!("secret {} has no username", ch.secret_path))?;
            opts = opts.with_credentials(user, get("password").unwrap_or_default().as_bytes());
        }
        let client = MqttClient::with_options(opts.clone());
        let connect = async {
            if tls {
                let addr = tokio::net::lookup_host((ch.host.as_str(), port))
                    .await
                    .map_err(|e| format!("cannot resolve {}: {e}", ch.host))?
                    .next()
                    .ok_or_else(|| format!("{} has no address", ch.host))?;
                let tls = mqtt5::transport::tls::TlsConfig::new(addr, ch.host.clone())
                    .with_connect_timeout(self.timeout);
                client
                    .connect_with_tls_and_options(tls, opts)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("cannot connect to {}:{port}: {e}", ch.host))
            } else {
                client
                    .connect(&format!("mqtt://{}:{port}", ch.host))
                    .await
                    .map_err(|e| format!("cannot connect to {}:{port}: {e}", ch.host))
            }
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| format!("timed out connecting to {}:{port}", ch.host))??;
        let payload = serde_json::to_vec(n).map_err(|e| e.to_string())?;
        let mut p = PublishOptions {
            qos: match ch.qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            retain: ch.retained,
            ..PublishOptions::default()
        };
        p.properties.content_type = Some("application/json".into());
        let published = tokio::time::timeout(
            self.timeout,
            client.publish_with_options(&ch.topic, payload, p),
        )
        .await;
        let _ = client.disconnect().await;
        match published {
            Ok(Ok(_)) => Ok(String::new()),
            Ok(Err(e)) => Err(format!("publish to {} failed: {e}", ch.topic)),
            Err(_) => Err(format!("no acknowledgement for {} in time", ch.topic)),
        }
    }
}
