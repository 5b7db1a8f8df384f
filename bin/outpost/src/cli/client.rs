//! HTTP access to the node's services for the CLI: through the gateway (with the session's
//! token, renewed once when refused) or, when the node runs without one, directly.

use std::time::Duration;

use anyhow::{Context as _, bail};
use outpost_contracts::common::{BaseWithIdResponse, ErrorResponse};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::NodeConfig;
use crate::session::Gateway;

/// HTTP access to the node's services: through the gateway (see [`crate::session`]), or
/// directly when the node runs without one.
pub struct Client {
    http: reqwest::Client,
    pub(crate) cfg: NodeConfig,
    gateway: Option<Gateway>,
}

impl Client {
    pub fn new(cfg: NodeConfig, gateway: Option<Gateway>) -> Self {
        Self {
            http: outpost_kit::http::client(Duration::from_secs(10)),
            cfg,
            gateway,
        }
    }

    /// The URL of `path` of the service named `svc`.
    fn url(&self, svc: &str, path: &str) -> String {
        match &self.gateway {
            Some(g) => format!("{}/{svc}/api/v3{path}", g.base),
            None => format!("{}/api/v3{path}", self.cfg.url_of(svc).unwrap_or_default()),
        }
    }

    pub(crate) fn request(
        &self,
        method: reqwest::Method,
        svc: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let http = self.gateway.as_ref().map_or(&self.http, |g| &g.http);
        http.request(method, self.url(svc, path))
    }

    /// The gateway, for the commands that only it serves (users, API keys).
    pub fn gateway(&self) -> anyhow::Result<&Gateway> {
        self.gateway.as_ref().context(
            "users and API keys live in the gateway, which this node's configuration disables \
             (gateway.enabled); use --gateway URL for a node that has one",
        )
    }

    async fn exec(
        &self,
        svc: &str,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let resp = outpost_kit::http::correlated(req).send().await;
        let resp = match (resp, &self.gateway) {
            (Ok(r), _) => r,
            (Err(e), Some(g)) => return Err(crate::session::unreachable(&g.base, &e)),
            (Err(_), None) => bail!("{svc} is not reachable; is the node up (outpost up)?"),
        };
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
        if status == reqwest::StatusCode::NOT_FOUND
            && message(&json)
                .is_some_and(|m| m == format!("no service '{svc}' behind this gateway"))
        {
            return Err(NotFound(self.not_behind_gateway(svc)).into());
        }
        Ok((status, json))
    }

    /// What a gateway without `svc` behind it means: off in this node's configuration
    /// (what to set), or on but not registered (not running).
    fn not_behind_gateway(&self, svc: &str) -> String {
        let this_node = self.gateway.as_ref().is_some_and(|g| g.is_this_nodes());
        let entry = crate::services::by_name(svc);
        match entry {
            Some(e) if this_node && e.section(&self.cfg).enabled() => format!(
                "{svc} is enabled but not registered with the node: is it running? (outpost \
                 services, and the node's log)"
            ),
            Some(e) if this_node => {
                let also = if svc == outpost_ota::SERVICE {
                    " and the keys it trusts, trusted_keys = [...] (outpost ota keygen)"
                } else {
                    ""
                };
                format!(
                    "{svc} is not enabled on this node: its configuration needs [{}] enabled \
                     = true{also}; see `outpost config default`",
                    e.section_name
                )
            }
            _ => format!("{svc} is not enabled or not running on the node behind this gateway"),
        }
    }

    /// Sends with the gateway's token; a refused token is renewed once.
    async fn send_as(
        &self,
        svc: &str,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let Some(g) = &self.gateway else {
            return self.exec(svc, req).await;
        };
        let retry = req.try_clone();
        let (status, body) = self.exec(svc, req.bearer_auth(g.token().await?)).await?;
        if status == reqwest::StatusCode::UNAUTHORIZED
            && let Some(again) = retry
        {
            let token = g.renew().await?;
            return self.exec(svc, again.bearer_auth(token)).await;
        }
        Ok((status, body))
    }

    pub(crate) async fn send(
        &self,
        svc: &str,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        self.send_as(svc, req).await
    }

    /// A call to the gateway's own API (`/api/v3/...`).
    pub async fn own(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let g = self.gateway()?;
        let mut req = g.http.request(method, format!("{}/api/v3{path}", g.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        let (status, body) = self.send_as("gateway", req).await?;
        ok_or_message(status, body)
    }

    /// POSTs a streamed body of `len` bytes with extra headers (artifact uploads); no
    /// overall timeout, since a large upload takes as long as the link needs.
    pub async fn upload(
        &self,
        svc: &str,
        path: &str,
        headers: &[(&str, String)],
        body: reqwest::Body,
        len: u64,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .request(reqwest::Method::POST, svc, path)
            .timeout(Duration::from_secs(24 * 3600))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let (status, body) = self.send(svc, req.body(body)).await?;
        ok_or_message(status, body)
    }

    pub async fn get(&self, svc: &str, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .send(svc, self.request(reqwest::Method::GET, svc, path))
            .await?;
        ok_or_message(status, body)
    }

    /// Sends `body` as JSON: the answer and its status, for the caller to judge (a 207
    /// carries a status per item).
    pub(crate) async fn send_json(
        &self,
        method: reqwest::Method,
        svc: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        self.send(svc, self.request(method, svc, path).json(body))
            .await
    }

    /// Sends `body` as JSON: the answer, or the service's error as an error.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        svc: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<Value> {
        let (status, answer) = self.send_json(method, svc, path, body).await?;
        ok_or_message(status, answer)
    }

    pub(crate) async fn delete(&self, svc: &str, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .send(svc, self.request(reqwest::Method::DELETE, svc, path))
            .await?;
        ok_or_message(status, body)
    }
}

/// An answer read as its type from outpost-contracts.
pub(crate) fn decode<T: DeserializeOwned>(answer: Value) -> anyhow::Result<T> {
    serde_json::from_value(answer).with_context(|| {
        format!(
            "the node's answer is not what this CLI expects ({})",
            std::any::type_name::<T>()
        )
    })
}

/// The message of an EdgeX error body, if it has one.
fn message(body: &Value) -> Option<String> {
    serde_json::from_value::<ErrorResponse>(body.clone())
        .ok()
        .map(|e| e.message)
        .filter(|m| !m.is_empty())
}

pub(crate) fn ok_or_message(status: reqwest::StatusCode, body: Value) -> anyhow::Result<Value> {
    if status.is_success() {
        return Ok(body);
    }
    let msg = message(&body).unwrap_or_else(|| body.to_string());
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(NotFound(format!("404 {msg}")).into());
    }
    bail!("{} {msg}", status.as_u16())
}

/// What a command was asked about does not exist (a 404, or a name the node does not
/// know): the CLI exits with [`NotFound::EXIT`], so scripts can tell it from a failure.
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

impl NotFound {
    /// The exit status (1 is any other error, 2 a usage or configuration error).
    pub const EXIT: u8 = 4;
}

/// The single entry of a 207 answer, as a result.
pub(crate) fn multi_status_entry(
    status: reqwest::StatusCode,
    body: &Value,
) -> Result<BaseWithIdResponse, (u64, String)> {
    if status != reqwest::StatusCode::MULTI_STATUS {
        return Err((
            u64::from(status.as_u16()),
            message(body).unwrap_or_default(),
        ));
    }
    let entry = serde_json::from_value::<Vec<BaseWithIdResponse>>(body.clone())
        .ok()
        .and_then(|entries| entries.into_iter().next())
        .unwrap_or_default();
    let code = entry.base.status_code;
    if (200..300).contains(&code) {
        Ok(entry)
    } else {
        Err((u64::from(code), entry.base.message))
    }
}

/// Percent-encodes a path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
