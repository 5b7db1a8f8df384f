//! The command-line client: talks HTTP to the node's services (and the bus for `events
//! tail`), prints tables for people and JSON for scripts.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use outpost_contracts::common::BaseRequest;
use outpost_contracts::event::NumericMode;
use outpost_contracts::metadata::{
    AddDeviceRequest, AddDeviceServiceRequest, AutoEvent, Device, DeviceProfile, DeviceService,
};
use serde_json::Value;

use crate::config::NodeConfig;
use crate::session::Gateway;

/// HTTP access to the node's services: through the gateway (see [`crate::session`]), or
/// directly when the node runs without one.
pub struct Client {
    http: reqwest::Client,
    cfg: NodeConfig,
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
        Ok((status, json))
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

    pub(crate) async fn post(
        &self,
        svc: &str,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        self.send(
            svc,
            self.request(reqwest::Method::POST, svc, path).json(body),
        )
        .await
    }

    pub(crate) async fn put(
        &self,
        svc: &str,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        self.send(
            svc,
            self.request(reqwest::Method::PUT, svc, path).json(body),
        )
        .await
    }

    pub(crate) async fn delete(&self, svc: &str, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .send(svc, self.request(reqwest::Method::DELETE, svc, path))
            .await?;
        ok_or_message(status, body)
    }
}

pub(crate) fn ok_or_message(status: reqwest::StatusCode, body: Value) -> anyhow::Result<Value> {
    if status.is_success() {
        return Ok(body);
    }
    let msg = body
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| body.to_string(), str::to_string);
    bail!("{} {msg}", status.as_u16())
}

/// The single entry of a 207 answer, as a result.
fn multi_status_entry(status: reqwest::StatusCode, body: &Value) -> Result<Value, (u64, String)> {
    if status != reqwest::StatusCode::MULTI_STATUS {
        let msg = body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        return Err((u64::from(status.as_u16()), msg));
    }
    let entry = body.get(0).cloned().unwrap_or(Value::Null);
    let code = entry.get("statusCode").and_then(Value::as_u64).unwrap_or(0);
    if (200..300).contains(&code) {
        Ok(entry)
    } else {
        Err((
            code,
            entry
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        ))
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

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints rows as an aligned table.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub(crate) fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

pub(crate) fn ago(millis: i64) -> String {
    if millis <= 0 {
        return "-".into();
    }
    let now = outpost_contracts::now_millis();
    let secs = (now - millis).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

pub(crate) fn time_of(nanos: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

// ---- commands ----

pub async fn services(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.get(outpost_core_keeper::SERVICE, "/registry/all").await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["registrations"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            vec![
                s(r, "serviceId"),
                s(r, "status"),
                format!("{}:{}", s(r, "host"), s(r, "port")),
                r["healthCheck"]["type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                ago(r["lastConnected"].as_i64().unwrap_or(0)),
            ]
        })
        .collect();
    table(
        &["SERVICE", "STATUS", "ADDRESS", "CHECK", "LAST SEEN"],
        &rows,
    );
    Ok(())
}

fn read_document(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub async fn profile_apply(c: &Client, file: &Path) -> anyhow::Result<()> {
    let text = read_document(file)?;
    let profile = DeviceProfile::from_yaml(&text).map_err(anyhow::Error::msg)?;
    let name = profile.name.clone();
    let body = serde_json::json!([{ "apiVersion": "v3", "profile": profile }]);
    let (status, resp) = c
        .post(outpost_core_metadata::SERVICE, "/deviceprofile", &body)
        .await?;
    match multi_status_entry(status, &resp) {
        Ok(_) => println!("created device profile {name}"),
        Err((409, _)) => {
            let (status, resp) = c
                .put(outpost_core_metadata::SERVICE, "/deviceprofile", &body)
                .await?;
            match multi_status_entry(status, &resp) {
                Ok(_) => println!("updated device profile {name}"),
                Err((code, msg)) => bail!("cannot update device profile {name}: {code} {msg}"),
            }
        }
        Err((code, msg)) => bail!("cannot create device profile {name}: {code} {msg}"),
    }
    Ok(())
}

pub async fn profile_list(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c
        .get(
            outpost_core_metadata::SERVICE,
            "/deviceprofile/all?limit=-1",
        )
        .await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["profiles"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            vec![
                s(p, "name"),
                s(p, "manufacturer"),
                s(p, "model"),
                p["deviceResources"]
                    .as_array()
                    .map_or(0, Vec::len)
                    .to_string(),
                s(p, "linkedDeviceCount"),
            ]
        })
        .collect();
    table(
        &["NAME", "MANUFACTURER", "MODEL", "RESOURCES", "DEVICES"],
        &rows,
    );
    Ok(())
}

/// What `outpost device add` was given.
pub struct NewDevice {
    pub file: Option<std::path::PathBuf>,
    pub name: Option<String>,
    pub profile: Option<String>,
    pub service: Option<String>,
    pub protocols: Vec<String>,
    pub labels: Vec<String>,
    pub auto_events: Vec<String>,
    pub description: Option<String>,
}

/// `protocol.key=value` pairs into EdgeX protocol properties.
fn parse_protocols(pairs: &[String]) -> anyhow::Result<outpost_contracts::metadata::Protocols> {
    let mut out = outpost_contracts::metadata::Protocols::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--protocol '{p}' must be protocol.key=value"))?;
        let (proto, key) = k
            .split_once('.')
            .with_context(|| format!("--protocol '{p}' must be protocol.key=value"))?;
        out.entry(proto.to_string())
            .or_default()
            .insert(key.to_string(), Value::String(v.to_string()));
    }
    Ok(out)
}

/// `interval:source[:onchange]` into an auto event.
fn parse_auto_event(s: &str) -> anyhow::Result<AutoEvent> {
    let mut parts = s.split(':');
    let (Some(interval), Some(source)) = (parts.next(), parts.next()) else {
        bail!("--auto-event '{s}' must be interval:source[:onchange]");
    };
    let on_change = match parts.next() {
        None => false,
        Some("onchange") => true,
        Some(other) => bail!("--auto-event '{s}': unknown flag '{other}'"),
    };
    Ok(AutoEvent {
        interval: interval.to_string(),
        source_name: source.to_string(),
        on_change,
        ..AutoEvent::default()
    })
}

pub async fn device_add(c: &Client, d: NewDevice) -> anyhow::Result<()> {
    let devices: Vec<Device> = match &d.file {
        Some(f) => {
            let text = read_document(f)?;
            match serde_norway::from_str::<Vec<Device>>(&text) {
                Ok(v) => v,
                Err(_) => vec![
                    serde_norway::from_str::<Device>(&text)
                        .with_context(|| format!("{} is not a device document", f.display()))?,
                ],
            }
        }
        None => {
            let name = d.name.context("--name is required (or -f FILE)")?;
            let service = d.service.context("--service is required (or -f FILE)")?;
            let mut protocols = parse_protocols(&d.protocols)?;
            if protocols.is_empty() {
                protocols.insert("other".into(), serde_json::Map::new());
            }
            vec![Device {
                name,
                profile_name: d.profile.unwrap_or_default(),
                service_name: service,
                labels: d.labels,
                protocols,
                auto_events: d
                    .auto_events
                    .iter()
                    .map(|a| parse_auto_event(a))
                    .collect::<anyhow::Result<_>>()?,
                description: d.description.unwrap_or_default(),
                operating_state: outpost_contracts::metadata::OperatingState::Up,
                ..Device::default()
            }]
        }
    };
    let body: Vec<AddDeviceRequest> = devices
        .into_iter()
        .map(|device| AddDeviceRequest {
            base: BaseRequest::new(),
            device,
        })
        .collect();
    let names: Vec<String> = body.iter().map(|r| r.device.name.clone()).collect();
    let (status, resp) = c
        .post(
            outpost_core_metadata::SERVICE,
            "/device",
            &serde_json::to_value(&body)?,
        )
        .await?;
    if status != reqwest::StatusCode::MULTI_STATUS {
        return ok_or_message(status, resp).map(|_| ());
    }
    let mut failed = 0;
    for (name, entry) in names
        .iter()
        .zip(resp.as_array().map(Vec::as_slice).unwrap_or_default())
    {
        let code = entry["statusCode"].as_u64().unwrap_or(0);
        if (200..300).contains(&code) {
            println!("added device {name} ({})", s(entry, "id"));
        } else {
            failed += 1;
            eprintln!("cannot add device {name}: {code} {}", s(entry, "message"));
        }
    }
    if failed > 0 {
        bail!("{failed} device(s) not added");
    }
    Ok(())
}

pub async fn device_list(
    c: &Client,
    service: Option<&str>,
    profile: Option<&str>,
    label: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let path = match (service, profile) {
        (Some(s), _) => format!("/device/service/name/{}?limit=-1", enc(s)),
        (None, Some(p)) => format!("/device/profile/name/{}?limit=-1", enc(p)),
        (None, None) => match label {
            Some(l) => format!("/device/all?limit=-1&labels={}", enc(l)),
            None => "/device/all?limit=-1".to_string(),
        },
    };
    let v = c.get(outpost_core_metadata::SERVICE, &path).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["devices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let labels = d["labels"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                s(d, "name"),
                s(d, "profileName"),
                s(d, "serviceName"),
                s(d, "adminState"),
                s(d, "operatingState"),
                labels,
            ]
        })
        .collect();
    table(
        &["NAME", "PROFILE", "SERVICE", "ADMIN", "STATE", "LABELS"],
        &rows,
    );
    Ok(())
}

pub async fn device_show(c: &Client, name: &str) -> anyhow::Result<()> {
    let v = c
        .get(
            outpost_core_metadata::SERVICE,
            &format!("/device/name/{}", enc(name)),
        )
        .await?;
    print_json(&v["device"]);
    Ok(())
}

pub async fn device_rm(c: &Client, name: &str) -> anyhow::Result<()> {
    c.delete(
        outpost_core_metadata::SERVICE,
        &format!("/device/name/{}", enc(name)),
    )
    .await?;
    println!("removed device {name}");
    Ok(())
}

pub async fn device_secret(
    c: &Client,
    name: &str,
    secret: Option<String>,
    remove: bool,
) -> anyhow::Result<()> {
    let path = format!("/device/name/{}/secret", enc(name));
    if remove {
        c.delete(outpost_core_metadata::SERVICE, &path).await?;
        println!("removed the secret of {name}: it can no longer connect");
        return Ok(());
    }
    let body = serde_json::json!({"apiVersion": "v3", "secret": secret});
    let (status, resp) = c.put(outpost_core_metadata::SERVICE, &path, &body).await?;
    let resp = ok_or_message(status, resp)?;
    match resp.get("secret").and_then(Value::as_str) {
        Some(s) => {
            eprintln!("secret of {name} (shown only now; the node keeps only a hash):");
            println!("{s}");
        }
        None => println!("set the secret of {name}"),
    }
    Ok(())
}

pub async fn device_discover(c: &Client, service: &str, wait: Duration) -> anyhow::Result<()> {
    let svc = crate::services::by_name(service)
        .filter(|s| service.starts_with("device-") && c.cfg.enabled(s))
        .map(|s| s.name())
        .with_context(|| {
            format!(
                "'{service}' is not a device service this node runs (enable [{}] first)",
                service.replace('-', "_")
            )
        })?;
    let names = |v: &Value| -> std::collections::BTreeSet<String> {
        v["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["name"].as_str().map(str::to_string))
            .collect()
    };
    let list_path = format!("/device/service/name/{}?limit=-1", enc(service));
    let before = names(&c.get(outpost_core_metadata::SERVICE, &list_path).await?);
    let (status, resp) = c.post(svc, "/discovery", &Value::Null).await?;
    ok_or_message(status, resp)?;
    eprintln!(
        "discovery started on {service}; waiting {}",
        humantime::format_duration(wait)
    );
    // Discovery runs in the background; what it adds shows up in metadata.
    tokio::time::sleep(wait).await;
    let now = names(&c.get(outpost_core_metadata::SERVICE, &list_path).await?);
    let found: Vec<&String> = now.difference(&before).collect();
    if found.is_empty() {
        println!("no new devices (a provision watcher must match what is found)");
    } else {
        for n in &found {
            println!("added {n}");
        }
    }
    Ok(())
}

pub async fn device_service_add(c: &Client, name: &str, base_address: &str) -> anyhow::Result<()> {
    let body = vec![AddDeviceServiceRequest {
        base: BaseRequest::new(),
        service: DeviceService {
            name: name.to_string(),
            base_address: base_address.to_string(),
            ..DeviceService::default()
        },
    }];
    let (status, resp) = c
        .post(
            outpost_core_metadata::SERVICE,
            "/deviceservice",
            &serde_json::to_value(&body)?,
        )
        .await?;
    match multi_status_entry(status, &resp) {
        Ok(e) => println!("added device service {name} ({})", s(&e, "id")),
        Err((code, msg)) => bail!("cannot add device service {name}: {code} {msg}"),
    }
    Ok(())
}

pub async fn device_service_list(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c
        .get(
            outpost_core_metadata::SERVICE,
            "/deviceservice/all?limit=-1",
        )
        .await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["services"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|d| vec![s(d, "name"), s(d, "baseAddress"), s(d, "adminState")])
        .collect();
    table(&["NAME", "BASE ADDRESS", "ADMIN"], &rows);
    Ok(())
}

pub async fn readings(
    c: &Client,
    device: &str,
    resource: Option<&str>,
    since: Option<Duration>,
    limit: i64,
    json: bool,
) -> anyhow::Result<()> {
    let mut path = format!("/reading/device/name/{}", enc(device));
    if let Some(r) = resource {
        path.push_str(&format!("/resourceName/{}", enc(r)));
    }
    if let Some(since) = since {
        let now = outpost_contracts::now_nanos();
        let start = now.saturating_sub(i64::try_from(since.as_nanos()).unwrap_or(i64::MAX));
        path.push_str(&format!("/start/{start}/end/{now}"));
    }
    path.push_str(&format!("?limit={limit}"));
    let v = c.get(outpost_core_data::SERVICE, &path).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let list = v["readings"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let value = reading_value(r);
            vec![
                time_of(r["origin"].as_i64().unwrap_or(0)),
                s(r, "resourceName"),
                s(r, "valueType"),
                value,
                s(r, "units"),
            ]
        })
        .collect();
    table(&["ORIGIN", "RESOURCE", "TYPE", "VALUE", "UNITS"], &rows);
    let total = v["totalCount"].as_u64().unwrap_or(0);
    if total as usize > list.len() {
        eprintln!("({} of {total} readings; use --limit)", list.len());
    }
    Ok(())
}

pub async fn events_tail(
    cfg: &NodeConfig,
    data_dir: &Path,
    device: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let shutdown = outpost_kit::Shutdown::new();
    shutdown.listen_for_signals(false);
    let mut opts = outpost_bus::Options::plain(format!("cli-{}", std::process::id()));
    opts.create_credentials = false;
    let connect = outpost_bus::Bus::connect(&cfg.bus, data_dir, "cli", opts, &shutdown);
    let bus = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot connect to the bus at {} (is the node up? run on the node, or pass its --data-dir)",
                cfg.bus.url
            )
        })??;
    let filter = format!("{}/events/#", cfg.bus.base_topic);
    let mut rx = bus.subscribe(&filter).await?;
    eprintln!("following {filter} on {} (Ctrl-C to stop)", cfg.bus.url);
    loop {
        let d = tokio::select! {
            () = shutdown.wait() => break,
            d = rx.recv() => d,
        };
        let Some(d) = d else { break };
        let Some(env) = bus.decode_event(&d) else {
            eprintln!(
                "{}: undecodable message ({} bytes)",
                d.topic,
                d.payload.len()
            );
            continue;
        };
        let ev = env.payload.event;
        if device.is_some_and(|want| want != ev.device_name) {
            continue;
        }
        if json {
            println!("{}", ev.to_json(NumericMode::Strings));
            continue;
        }
        let values: Vec<String> = ev
            .readings
            .iter()
            .map(|r| match r.to_json(NumericMode::Strings).get("value") {
                Some(Value::String(v)) => format!("{}={v}", r.resource_name),
                _ => format!("{}=<{}>", r.resource_name, r.value_type),
            })
            .collect();
        println!(
            "{} {} {} {}",
            time_of(ev.origin),
            ev.device_name,
            ev.source_name,
            values.join(" ")
        );
    }
    bus.disconnect().await;
    Ok(())
}

/// `outpost command DEVICE COMMAND [--set R=V ...]`: a read, or a write when values are
/// given, through core-command.
pub async fn command(
    c: &Client,
    device: &str,
    command: &str,
    settings: &[String],
    push: bool,
    json: bool,
) -> anyhow::Result<()> {
    let path = format!("/device/name/{}/{}", enc(device), enc(command));
    if settings.is_empty() {
        let v = c
            .get(
                outpost_core_command::SERVICE,
                &format!("{path}?ds-pushevent={push}&ds-returnevent=true"),
            )
            .await?;
        if json {
            print_json(&v);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = v["event"]["readings"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let value = reading_value(r);
                vec![
                    s(r, "resourceName"),
                    s(r, "valueType"),
                    value,
                    s(r, "units"),
                ]
            })
            .collect();
        table(&["RESOURCE", "TYPE", "VALUE", "UNITS"], &rows);
        return Ok(());
    }
    let mut body = serde_json::Map::new();
    for kv in settings {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--set takes RESOURCE=VALUE, got '{kv}'");
        };
        body.insert(k.to_string(), Value::String(v.to_string()));
    }
    let (status, v) = c
        .put(outpost_core_command::SERVICE, &path, &Value::Object(body))
        .await?;
    let v = ok_or_message(status, v)?;
    if json {
        print_json(&v);
    } else {
        println!("set {command} on {device}");
    }
    Ok(())
}

/// A reading's value for a table: the simple value, the object, or a binary marker.
fn reading_value(r: &Value) -> String {
    if r.get("binaryValue").is_some() {
        format!("<{} binary>", s(r, "mediaType"))
    } else if let Some(o) = r.get("objectValue") {
        o.to_string()
    } else {
        s(r, "value")
    }
}

// ---- users, API keys, sessions (the gateway) ----

pub async fn login(c: &Client, user: &str, password_stdin: bool) -> anyhow::Result<()> {
    let g = c.gateway()?;
    let password =
        crate::session::read_password(password_stdin, &format!("Password for {user}: "), false)?;
    let s = g.login(user, &password).await?;
    println!("logged in to {} as {} ({})", g.base, s.username, s.role);
    Ok(())
}

pub async fn logout(c: &Client) -> anyhow::Result<()> {
    let g = c.gateway()?;
    if g.logout().await? {
        println!("logged out of {}", g.base);
    } else {
        println!("not logged in to {}", g.base);
    }
    Ok(())
}

pub async fn whoami(c: &Client) -> anyhow::Result<()> {
    let v = c.own(reqwest::Method::GET, "/auth/whoami", None).await?;
    println!(
        "{} ({}) at {}",
        s(&v, "name"),
        s(&v, "role"),
        c.gateway()?.base
    );
    Ok(())
}

pub async fn user_add(
    c: &Client,
    name: &str,
    role: &str,
    password_stdin: bool,
    generate: bool,
) -> anyhow::Result<()> {
    let password = if generate {
        crate::session::generate_password()?
    } else {
        crate::session::read_password(password_stdin, &format!("Password for {name}: "), true)?
    };
    let body = serde_json::json!({"username": name, "password": password, "role": role});
    c.own(reqwest::Method::POST, "/auth/user", Some(&body))
        .await?;
    println!("added user {name} ({role})");
    if generate {
        println!("password: {password}");
        eprintln!("(shown once; the user changes it with PUT /api/v3/auth/password)");
    }
    Ok(())
}

pub async fn user_list(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.own(reqwest::Method::GET, "/auth/user", None).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["users"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|u| {
            vec![
                s(u, "username"),
                s(u, "role"),
                ago(u["created"].as_i64().unwrap_or(0) * 1000),
            ]
        })
        .collect();
    table(&["USER", "ROLE", "CREATED"], &rows);
    Ok(())
}

pub async fn user_rm(c: &Client, name: &str) -> anyhow::Result<()> {
    c.own(
        reqwest::Method::DELETE,
        &format!("/auth/user/{}", enc(name)),
        None,
    )
    .await?;
    println!("removed user {name}; their tokens no longer work");
    Ok(())
}

pub async fn user_password(c: &Client, name: &str, password_stdin: bool) -> anyhow::Result<()> {
    let password =
        crate::session::read_password(password_stdin, &format!("New password for {name}: "), true)?;
    let body = serde_json::json!({"password": password});
    c.own(
        reqwest::Method::PUT,
        &format!("/auth/user/{}/password", enc(name)),
        Some(&body),
    )
    .await?;
    println!("password of {name} set; their earlier tokens no longer work");
    Ok(())
}

pub async fn apikey_create(c: &Client, name: &str, role: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({"name": name, "role": role});
    let v = c
        .own(reqwest::Method::POST, "/auth/apikey", Some(&body))
        .await?;
    println!("API key {} ({name}, {role}):", s(&v, "id"));
    println!("{}", s(&v, "key"));
    eprintln!("(shown once; send it as X-API-Key or Authorization: Bearer)");
    Ok(())
}

pub async fn apikey_list(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.own(reqwest::Method::GET, "/auth/apikey", None).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["apiKeys"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|k| {
            vec![
                s(k, "id"),
                s(k, "name"),
                s(k, "role"),
                s(k, "owner"),
                ago(k["created"].as_i64().unwrap_or(0) * 1000),
                if k.get("revoked").is_some_and(|r| !r.is_null()) {
                    "revoked".into()
                } else {
                    "active".into()
                },
            ]
        })
        .collect();
    table(&["ID", "NAME", "ROLE", "OWNER", "CREATED", "STATE"], &rows);
    Ok(())
}

pub async fn apikey_revoke(c: &Client, id: &str) -> anyhow::Result<()> {
    c.own(
        reqwest::Method::DELETE,
        &format!("/auth/apikey/{}", enc(id)),
        None,
    )
    .await?;
    println!("revoked API key {id}");
    Ok(())
}
