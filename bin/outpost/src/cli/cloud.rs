//! `outpost export ...` (through the gateway) and `outpost cloud ...` (against a cloud
//! node, with its admin token and CA).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use outpost_contracts::cloud::{EdgeReadingsResponse, EdgesResponse, EnrollEdgeRequest};
use outpost_contracts::export::ExportStatus;
use serde_json::Value;

use super::client::{Client, enc, ok_or_message};
use super::table::{ago, bytes, cell, show, show_table, span, table, time_of};
use crate::config::NodeConfig;

/// `outpost export status [--watch]`: each destination's queue and sender; with `watch`,
/// again each time something changes, until interrupted.
pub async fn export_status(c: &Client, json: bool, watch: bool) -> anyhow::Result<()> {
    if !watch {
        let v = c.get(outpost_export::SERVICE, "/export/status").await?;
        return show_table(v, json, &EXPORT_HEADERS, export_rows);
    }
    let mut last = None;
    loop {
        // A moment without an answer (the service restarting) is said and waited out.
        match c.get(outpost_export::SERVICE, "/export/status").await {
            Ok(v) if last.as_ref() != Some(&v) => {
                if json {
                    println!("{}", serde_json::to_string(&v).unwrap_or_default());
                } else {
                    println!("{}", time_of(outpost_contracts::now_nanos()));
                    table(
                        &EXPORT_HEADERS,
                        &export_rows(super::client::decode(v.clone())?),
                    );
                    println!();
                }
                last = Some(v);
            }
            Ok(_) => {}
            Err(e) => eprintln!("outpost: {e:#} (trying again)"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

const EXPORT_HEADERS: [&str; 9] = [
    "DESTINATION",
    "KIND",
    "QUEUED",
    "SIZE",
    "OLDEST",
    "SENT",
    "DROPPED",
    "DEAD",
    "STATE",
];

/// The table of `export status`: items queued (and how many of them are high priority),
/// size against the bound, the oldest item's age, items sent, dropped (overflow and
/// expiry), dead-lettered, and the sender's state.
fn export_rows(status: ExportStatus) -> Vec<Vec<String>> {
    let now = outpost_contracts::now_millis();
    status
        .destinations
        .into_iter()
        .map(|d| {
            let (q, snd) = (&d.queue, &d.sender);
            let state = if snd.consecutive_failures > 0 {
                let retry = snd
                    .next_retry_ms
                    .and_then(|t| i64::try_from(t).ok())
                    .map(|t| format!(", retry in {}s", ((t - now).max(0) + 999) / 1000))
                    .unwrap_or_default();
                format!("failing ({}{retry})", cell(&snd.last_error))
            } else if snd.last_success_ms.is_none() {
                "idle".into()
            } else {
                "ok".into()
            };
            let high = q
                .priorities
                .iter()
                .filter(|p| p.priority == "high" && p.items > 0)
                .map(|p| format!(" ({} high)", p.items))
                .collect::<String>();
            vec![
                d.name.clone(),
                cell(&d.kind),
                format!("{}{high}", q.items),
                format!("{} / {}", bytes(q.bytes), bytes(q.max_bytes)),
                q.oldest_age_ms.map_or_else(|| "-".into(), span),
                snd.sent_items.to_string(),
                (q.dropped_overflow + q.expired).to_string(),
                snd.dead_lettered.to_string(),
                state,
            ]
        })
        .collect()
}

/// A cloud node as its operator reaches it.
pub struct Cloud {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Cloud {
    /// The cloud node at `url` (default: this machine's, on `cloud.port`), trusting `ca`
    /// (default `<data>/tls/cloud-ca.pem`), with `token` (default
    /// `<data>/secrets/cloud-admin.token`).
    pub fn resolve(
        cfg: &NodeConfig,
        data_dir: &Path,
        url: Option<String>,
        ca: Option<PathBuf>,
        token: Option<String>,
    ) -> anyhow::Result<Self> {
        let base = url
            .unwrap_or_else(|| format!("https://127.0.0.1:{}", cfg.cloud.port))
            .trim_end_matches('/')
            .to_string();
        let ca = ca.unwrap_or_else(|| data_dir.join("tls").join("cloud-ca.pem"));
        let ca_pem = std::fs::read_to_string(&ca).with_context(|| {
            format!(
                "cannot read the cloud CA {} (use --ca, or run on the cloud node)",
                ca.display()
            )
        })?;
        let token = match token {
            Some(t) => t,
            None => {
                let path = data_dir.join("secrets").join("cloud-admin.token");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!("cannot read the admin token {} (use --admin-token or OUTPOST_CLOUD_TOKEN, or run on the cloud node)", path.display())
                    })?
                    .trim()
                    .to_string()
            }
        };
        let tls = outpost_pki::client_config(&ca_pem, None)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()?;
        Ok(Self { base, token, http })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v3{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the cloud node at {}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        ok_or_message(status, body)
    }
}

pub async fn enroll(cloud: &Cloud, name: &str, out: Option<PathBuf>) -> anyhow::Result<()> {
    let request = EnrollEdgeRequest {
        name: name.to_string(),
    };
    // The bundle is kept as the cloud node sent it.
    let bundle = cloud
        .call(
            reqwest::Method::POST,
            "/edge",
            Some(serde_json::to_value(&request)?),
        )
        .await?;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}.identity.json")));
    if out.exists() {
        bail!(
            "{} exists; remove it or choose another --out",
            out.display()
        );
    }
    outpost_storage::write_secret_file(&out, &serde_json::to_vec_pretty(&bundle)?)?;
    println!(
        "enrolled edge {name}; its identity (keep it secret) is in {}",
        out.display()
    );
    println!();
    println!("On the edge, copy the file and add to its configuration:");
    println!();
    println!("  [export]");
    println!("  enabled = true");
    println!("  [[export.destinations]]");
    println!("  name = \"cloud\"");
    println!("  kind = \"cloud\"");
    println!(
        "  identity = \"/path/to/{}\"",
        out.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    );
    Ok(())
}

pub async fn edges(cloud: &Cloud, json: bool) -> anyhow::Result<()> {
    let v = cloud.call(reqwest::Method::GET, "/edge/all", None).await?;
    show_table(
        v,
        json,
        &[
            "EDGE",
            "STATE",
            "LAST SEEN",
            "BACKLOG",
            "RECEIVED",
            "DUPLICATES",
            "REJECTED",
        ],
        |all: EdgesResponse| {
            all.edges
                .into_iter()
                .map(|e| {
                    vec![
                        e.name,
                        if e.revoked_ms.is_none() {
                            "enrolled".into()
                        } else {
                            "revoked".into()
                        },
                        ago(e.last_seen_ms.unwrap_or(0)),
                        format!("{} items, {} KiB", e.backlog.items, e.backlog.bytes / 1024),
                        e.received.to_string(),
                        e.duplicates.to_string(),
                        e.rejected.to_string(),
                    ]
                })
                .collect()
        },
    )
}

pub async fn revoke(cloud: &Cloud, name: &str) -> anyhow::Result<()> {
    cloud
        .call(
            reqwest::Method::DELETE,
            &format!("/edge/name/{}", enc(name)),
            None,
        )
        .await?;
    println!("revoked edge {name}: its certificate no longer works; its data stays");
    Ok(())
}

pub async fn readings(
    cloud: &Cloud,
    edge: &str,
    device: Option<&str>,
    resource: Option<&str>,
    limit: u64,
    json: bool,
) -> anyhow::Result<()> {
    let mut path = format!("/reading/edge/{}?limit={limit}", enc(edge));
    if let Some(d) = device {
        path.push_str(&format!("&device={}", enc(d)));
    }
    if let Some(r) = resource {
        path.push_str(&format!("&resource={}", enc(r)));
    }
    let v = cloud.call(reqwest::Method::GET, &path, None).await?;
    show(v, json, |page: EdgeReadingsResponse| {
        let rows: Vec<Vec<String>> = page
            .readings
            .into_iter()
            .map(|r| {
                vec![
                    time_of(r.origin),
                    r.device_name,
                    r.resource_name,
                    format!(
                        "{} {}",
                        super::data::human_value(&r.value_type, &r.value),
                        r.units
                    )
                    .trim()
                    .to_string(),
                ]
            })
            .collect();
        table(&["TIME", "DEVICE", "RESOURCE", "VALUE"], &rows);
        println!("({} of {})", rows.len(), page.page.total_count);
        Ok(())
    })
}
