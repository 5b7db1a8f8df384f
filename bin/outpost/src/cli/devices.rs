//! `outpost profile|device|device-service ...` and `outpost command`: device profiles,
//! devices, device services, discovery, and reading and writing devices.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use outpost_contracts::common::from_yaml_noting_unknown;
use outpost_contracts::common::{BaseRequest, BaseWithIdResponse};
use outpost_contracts::event::{Event, EventResponse};
use outpost_contracts::metadata::{
    AddDeviceProfileRequest, AddDeviceRequest, AddDeviceServiceRequest, AutoEvent, Device,
    DeviceProfile, DeviceSecretRequest, DeviceSecretResponse, DeviceService,
    MultiDeviceProfilesResponse, MultiDeviceServicesResponse, MultiDevicesResponse,
};
use serde_json::Value;

use super::client::{Client, decode, enc, multi_status_entry, ok_or_message};
use super::data::reading_value;
use super::table::{ago, cell, print_json, show, show_table, table, time_of};

fn read_document(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Keys of a file the node would ignore, as EdgeX does: said, since a misspelt key drops
/// what it holds.
fn warn_unknown(path: &Path, unknown: &[String]) {
    for note in unknown {
        eprintln!("warning: {}: {note}, ignored", path.display());
    }
}

pub async fn profile_apply(c: &Client, file: &Path, json: bool) -> anyhow::Result<()> {
    let text = read_document(file)?;
    let (profile, unknown) = from_yaml_noting_unknown::<DeviceProfile>(&text)
        .map_err(|e| anyhow::anyhow!("invalid device profile YAML: {e}"))?;
    warn_unknown(file, &unknown);
    let name = profile.name.clone();
    let body = [AddDeviceProfileRequest {
        base: BaseRequest::new(),
        profile,
    }];
    let (status, resp) = c
        .send_json(
            reqwest::Method::POST,
            outpost_core_metadata::SERVICE,
            "/deviceprofile",
            &body,
        )
        .await?;
    match multi_status_entry(status, &resp) {
        Ok(entry) => applied(&entry, &format!("created device profile {name}"), json),
        Err((409, _)) => {
            let (status, resp) = c
                .send_json(
                    reqwest::Method::PUT,
                    outpost_core_metadata::SERVICE,
                    "/deviceprofile",
                    &body,
                )
                .await?;
            match multi_status_entry(status, &resp) {
                Ok(entry) => applied(&entry, &format!("updated device profile {name}"), json),
                Err((code, msg)) => bail!("cannot update device profile {name}: {code} {msg}"),
            }
        }
        Err((code, msg)) => bail!("cannot create device profile {name}: {code} {msg}"),
    }
    Ok(())
}

/// What a command that changed something says: a line, or with --json the answer's entry.
fn applied(entry: &BaseWithIdResponse, line: &str, json: bool) {
    if json {
        print_json(&serde_json::to_value(entry).unwrap_or_default());
    } else {
        println!("{line}");
    }
}

pub async fn profile_list(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c
        .get(
            outpost_core_metadata::SERVICE,
            "/deviceprofile/all?limit=-1",
        )
        .await?;
    show_table(
        v,
        json,
        &["NAME", "MANUFACTURER", "MODEL", "RESOURCES", "DEVICES"],
        |all: MultiDeviceProfilesResponse| {
            all.profiles
                .into_iter()
                .map(|p| {
                    vec![
                        p.name,
                        p.manufacturer,
                        p.model,
                        p.device_resources.len().to_string(),
                        cell(&p.linked_device_count),
                    ]
                })
                .collect()
        },
    )
}

/// The devices of a file for `outpost device add -f`: one device, a list of them, or
/// EdgeX's `deviceList:` (device services' devices.yaml); and the keys it ignored.
fn read_devices(text: &str) -> anyhow::Result<(Vec<Device>, Vec<String>)> {
    #[derive(serde::Deserialize)]
    struct EdgeXList {
        #[serde(rename = "deviceList")]
        device_list: Vec<Device>,
    }
    let shape: serde_norway::Value = serde_norway::from_str(text)?;
    Ok(if shape.is_sequence() {
        from_yaml_noting_unknown::<Vec<Device>>(text)?
    } else if shape.get("deviceList").is_some() {
        let (list, unknown) = from_yaml_noting_unknown::<EdgeXList>(text)?;
        (list.device_list, unknown)
    } else {
        let (device, unknown) = from_yaml_noting_unknown::<Device>(text)?;
        (vec![device], unknown)
    })
}

/// What `outpost device add` was given.
#[derive(clap::Args)]
pub struct NewDevice {
    /// Devices from a file: an EdgeX device (YAML or JSON), a list of them, or EdgeX's `deviceList:` (see examples/devices.yaml).
    #[arg(short = 'f', long = "file", conflicts_with_all = ["name", "name_flag", "profile", "service"])]
    pub file: Option<std::path::PathBuf>,
    /// The device's name (unique; letters, digits and - _ . ~).
    pub name: Option<String>,
    /// The device's name (as `--name NAME`, the older form).
    #[arg(long = "name", hide = true, conflicts_with = "name")]
    pub name_flag: Option<String>,
    /// The device profile it follows (`outpost profile list`).
    #[arg(long)]
    pub profile: Option<String>,
    /// The device service that owns the device.
    #[arg(long)]
    pub service: Option<String>,
    /// Protocol property: `protocol.key=value` (repeatable), e.g. `modbus-tcp.Address=10.0.0.5`.
    #[arg(long = "protocol")]
    pub protocols: Vec<String>,
    /// A label (repeatable), e.g. `--label floor-2`.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Periodic read: `interval:source[:onchange]` (repeatable), e.g. `10s:Temperature:onchange`.
    #[arg(long = "auto-event")]
    pub auto_events: Vec<String>,
    /// A free text description.
    #[arg(long)]
    pub description: Option<String>,
    /// Print JSON (the API's answer) instead of lines.
    #[arg(long)]
    pub json: bool,
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
            let (devices, unknown) = read_devices(&text).with_context(|| {
                format!(
                    "{} is not a device document (a device, a list of devices, or EdgeX's \
                     deviceList; see examples/devices.yaml)",
                    f.display()
                )
            })?;
            warn_unknown(f, &unknown);
            devices
        }
        None => {
            let name = d
                .name
                .or(d.name_flag)
                .context("the device's name is required (or -f FILE)")?;
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
        .send_json(
            reqwest::Method::POST,
            outpost_core_metadata::SERVICE,
            "/device",
            &body,
        )
        .await?;
    if status != reqwest::StatusCode::MULTI_STATUS {
        return ok_or_message(status, resp).map(|_| ());
    }
    let mut failed = 0;
    if d.json {
        print_json(&resp);
    }
    let entries: Vec<BaseWithIdResponse> = decode(resp)?;
    for (name, entry) in names.iter().zip(entries) {
        let code = entry.base.status_code;
        if (200..300).contains(&code) {
            if !d.json {
                println!("added device {name} ({})", entry.id);
            }
            // Added, but its device service could not check it (not running, say).
            if !entry.base.message.is_empty() {
                eprintln!("warning: device {name}: {}", entry.base.message);
            }
        } else {
            failed += 1;
            eprintln!("cannot add device {name}: {code} {}", entry.base.message);
        }
    }
    if failed > 0 {
        bail!("{failed} device(s) not added");
    }
    Ok(())
}

/// Which devices `device list` shows.
pub struct DeviceFilter<'a> {
    pub service: Option<&'a str>,
    pub profile: Option<&'a str>,
    pub label: Option<&'a str>,
}

/// `device list`; `wide` adds each device's protocols, autoEvents and last change.
pub async fn device_list(
    c: &Client,
    filter: DeviceFilter<'_>,
    json: bool,
    wide: bool,
) -> anyhow::Result<()> {
    let path = match (filter.service, filter.profile) {
        (Some(s), _) => format!("/device/service/name/{}?limit=-1", enc(s)),
        (None, Some(p)) => format!("/device/profile/name/{}?limit=-1", enc(p)),
        (None, None) => match filter.label {
            Some(l) => format!("/device/all?limit=-1&labels={}", enc(l)),
            None => "/device/all?limit=-1".to_string(),
        },
    };
    let v = c.get(outpost_core_metadata::SERVICE, &path).await?;
    let mut headers = vec!["NAME", "PROFILE", "SERVICE", "ADMIN", "STATE", "LABELS"];
    if wide {
        headers.extend(["PROTOCOLS", "AUTO EVENTS", "CHANGED"]);
    }
    show_table(v, json, &headers, |all: MultiDevicesResponse| {
        all.devices
            .into_iter()
            .map(|d| {
                let mut row = vec![
                    d.name.clone(),
                    d.profile_name.clone(),
                    d.service_name.clone(),
                    cell(&d.admin_state),
                    cell(&d.operating_state),
                    d.labels.join(","),
                ];
                if wide {
                    let protocols = d
                        .protocols
                        .iter()
                        .map(|(p, props)| {
                            let props = props
                                .iter()
                                .map(|(k, v)| format!("{k}={}", cell(v)))
                                .collect::<Vec<_>>()
                                .join(",");
                            format!("{p}({props})")
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                    let auto_events = d
                        .auto_events
                        .iter()
                        .map(|a| format!("{}:{}", a.interval, a.source_name))
                        .collect::<Vec<_>>()
                        .join(",");
                    row.extend([protocols, auto_events, ago(d.modified)]);
                }
                row
            })
            .collect()
    })
}

/// One device: its facts, one per line (with --json, every field as core-metadata keeps
/// it).
pub async fn device_show(c: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let v = c
        .get(
            outpost_core_metadata::SERVICE,
            &format!("/device/name/{}", enc(name)),
        )
        .await?;
    if json {
        print_json(&v["device"]);
        return Ok(());
    }
    let d: Device = decode(v["device"].clone())?;
    let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let mut lines = vec![
        ("Name", d.name.clone()),
        ("Description", or_dash(d.description.clone())),
        ("Profile", d.profile_name.clone()),
        ("Service", d.service_name.clone()),
        ("Admin state", cell(&d.admin_state)),
        ("Operating state", cell(&d.operating_state)),
        ("Labels", or_dash(d.labels.join(", "))),
        ("Parent", or_dash(d.parent.clone())),
        ("Id", d.id.clone()),
        ("Created", time_of(d.created.saturating_mul(1_000_000))),
        ("Modified", time_of(d.modified.saturating_mul(1_000_000))),
    ];
    for (protocol, props) in &d.protocols {
        let props: Vec<String> = props
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_string)
                )
            })
            .collect();
        let shown = if props.is_empty() {
            protocol.clone()
        } else {
            format!("{protocol}: {}", props.join(" "))
        };
        lines.push(("Protocol", shown));
    }
    for a in &d.auto_events {
        let change = if a.on_change { ", on change" } else { "" };
        lines.push((
            "Auto event",
            format!("{} every {}{change}", a.source_name, a.interval),
        ));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in lines {
        println!("{k:<width$}  {v}");
    }
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

/// Sets the secret of `name` (the old one stops working), or has the node generate one
/// when `secret` is `None`: the generated secret, shown this once.
pub(crate) async fn put_secret(
    c: &Client,
    name: &str,
    secret: Option<String>,
) -> anyhow::Result<Option<String>> {
    let path = format!("/device/name/{}/secret", enc(name));
    let body = DeviceSecretRequest {
        base: BaseRequest::new(),
        secret,
    };
    let answer = c
        .call(
            reqwest::Method::PUT,
            outpost_core_metadata::SERVICE,
            &path,
            &body,
        )
        .await?;
    Ok(decode::<DeviceSecretResponse>(answer)?.secret)
}

pub async fn device_secret(
    c: &Client,
    name: &str,
    secret: Option<String>,
    remove: bool,
    json: bool,
) -> anyhow::Result<()> {
    if remove {
        let path = format!("/device/name/{}/secret", enc(name));
        c.delete(outpost_core_metadata::SERVICE, &path).await?;
        if json {
            print_json(&serde_json::json!({"device": name, "secret": null}));
        } else {
            println!("removed the secret of {name}: it can no longer connect");
        }
        return Ok(());
    }
    let generated = put_secret(c, name, secret).await?;
    if json {
        print_json(&serde_json::json!({"device": name, "secret": generated}));
        return Ok(());
    }
    match generated {
        Some(s) => {
            eprintln!("secret of {name} (shown only now; the node keeps only a hash):");
            println!("{s}");
        }
        None => println!("set the secret of {name}"),
    }
    Ok(())
}

/// `outpost device discover SERVICE`: runs discovery and lists the devices it added; with
/// `json`, `{"service": ..., "added": [device, ...]}` (each device as core-metadata has it).
pub async fn device_discover(
    c: &Client,
    service: &str,
    wait: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let svc = crate::services::by_name(service)
        .filter(|s| service.starts_with("device-") && c.cfg.enabled(s))
        .map(|s| s.name())
        .with_context(|| {
            format!(
                "'{service}' is not a device service this node runs (enable [{}] first)",
                service.replace('-', "_")
            )
        })?;
    let devices = |v: Value| -> Vec<Value> {
        match v {
            Value::Object(mut o) => match o.remove("devices") {
                Some(Value::Array(all)) => all,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    };
    let name = |d: &Value| d["name"].as_str().unwrap_or_default().to_owned();
    let list_path = format!("/device/service/name/{}?limit=-1", enc(service));
    let before: std::collections::BTreeSet<String> =
        devices(c.get(outpost_core_metadata::SERVICE, &list_path).await?)
            .iter()
            .map(name)
            .collect();
    c.call(reqwest::Method::POST, svc, "/discovery", &Value::Null)
        .await?;
    eprintln!(
        "discovery started on {service}; waiting {}",
        humantime::format_duration(wait)
    );
    // Discovery runs in the background; what it adds shows up in metadata.
    tokio::time::sleep(wait).await;
    let mut found: Vec<Value> = devices(c.get(outpost_core_metadata::SERVICE, &list_path).await?)
        .into_iter()
        .filter(|d| !before.contains(&name(d)))
        .collect();
    found.sort_by_key(name);
    if json {
        super::table::print_json(&serde_json::json!({ "service": service, "added": found }));
    } else if found.is_empty() {
        println!("no new devices (a provision watcher must match what is found)");
    } else {
        for d in &found {
            println!("added {}", name(d));
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
        .send_json(
            reqwest::Method::POST,
            outpost_core_metadata::SERVICE,
            "/deviceservice",
            &body,
        )
        .await?;
    match multi_status_entry(status, &resp) {
        Ok(e) => println!("added device service {name} ({})", e.id),
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
    show_table(
        v,
        json,
        &["NAME", "BASE ADDRESS", "ADMIN"],
        |all: MultiDeviceServicesResponse| {
            all.services
                .into_iter()
                .map(|d| vec![d.name, d.base_address, cell(&d.admin_state)])
                .collect()
        },
    )
}

/// `outpost device-service secret SERVICE NAME KEY=VALUE...`: EdgeX's `POST /api/v3/secret`
/// on the device service; a value `-` is a line read from standard input.
pub async fn device_service_secret(
    c: &Client,
    service: &str,
    name: &str,
    pairs: &[String],
) -> anyhow::Result<()> {
    let mut data = Vec::with_capacity(pairs.len());
    for p in pairs {
        let Some((key, value)) = p.split_once('=') else {
            bail!("'{p}' is not KEY=VALUE");
        };
        let value = if value == "-" {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the value from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        } else {
            value.to_string()
        };
        data.push(serde_json::json!({"key": key, "value": value}));
    }
    let body = serde_json::json!({"apiVersion": "v3", "secretName": name, "secretData": data});
    c.call(reqwest::Method::POST, service, "/secret", &body)
        .await
        .with_context(|| format!("cannot give {service} the secret {name}"))?;
    println!("{service} keeps the secret {name}");
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
        return show(v, json, |read: EventResponse| {
            let event: Event = decode(read.event)?;
            let rows: Vec<Vec<String>> = event
                .readings
                .iter()
                .map(|r| {
                    vec![
                        r.resource_name.clone(),
                        r.value_type.as_str().to_string(),
                        reading_value(r),
                        r.units.clone(),
                    ]
                })
                .collect();
            table(&["RESOURCE", "TYPE", "VALUE", "UNITS"], &rows);
            Ok(())
        });
    }
    let mut body = serde_json::Map::new();
    for kv in settings {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--set takes RESOURCE=VALUE, got '{kv}'");
        };
        body.insert(k.to_string(), Value::String(v.to_string()));
    }
    let v = c
        .call(
            reqwest::Method::PUT,
            outpost_core_command::SERVICE,
            &path,
            &body,
        )
        .await?;
    if json {
        print_json(&v);
    } else {
        println!("set {command} on {device}");
    }
    Ok(())
}
