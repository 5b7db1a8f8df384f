//! `outpost device enroll|rotate|revoke|approve|credentials`: device identities.
//!
//! Enrolling gives a device its own credential: a secret (its MQTT password, its device-rest
//! and OTA token) and, with `--cert`, a client certificate from the node CA. The key of the
//! certificate is made here and never sent: the node signs a request for it. What the device
//! needs is written to one directory (`--out`), secrets with mode 0600.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use outpost_contracts::common::BaseRequest;
use outpost_contracts::metadata::{DeviceCertificateRequest, DeviceCertificateResponse};
use outpost_contracts::ota::{Group, GroupResponse, MultiGroupsResponse, MultiInventoryResponse};
use serde_json::Value;

use super::client::{Client, decode, enc, ok_or_message};
use super::devices::{NewDevice, put_secret};
use super::table::{cell, show, show_table, table};

/// What `outpost device enroll` was given.
#[derive(clap::Args)]
pub struct Enroll {
    /// The device.
    pub name: String,
    /// Its profile, to create the device when it does not exist.
    #[arg(long)]
    pub profile: Option<String>,
    /// Its device service, to create the device when it does not exist.
    #[arg(long)]
    pub service: Option<String>,
    /// A label for a created device (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Also issue a client certificate (needs --out).
    #[arg(long)]
    pub cert: bool,
    /// Write device.secret (and device.pem, device.key, ca.pem) into this directory
    /// instead of printing the secret.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

async fn exists(c: &Client, name: &str) -> anyhow::Result<bool> {
    let (status, body) = c
        .send(
            outpost_core_metadata::SERVICE,
            c.request(
                reqwest::Method::GET,
                outpost_core_metadata::SERVICE,
                &format!("/device/name/{}", enc(name)),
            ),
        )
        .await?;
    match status.as_u16() {
        200 => Ok(true),
        404 => Ok(false),
        _ => ok_or_message(status, body).map(|_| false),
    }
}

/// A new secret for `name` (the old one stops working).
async fn new_secret(c: &Client, name: &str) -> anyhow::Result<String> {
    put_secret(c, name, None)
        .await?
        .context("the node returned no secret")
}

/// A certificate for the key of `csr`; with `replace` the device's others are revoked.
/// Returns the chain and `key`.
async fn new_cert(
    c: &Client,
    name: &str,
    (csr, key): (String, String),
    replace: bool,
) -> anyhow::Result<(String, String)> {
    let path = format!("/device/name/{}/certificate", enc(name));
    let body = DeviceCertificateRequest {
        base: BaseRequest::new(),
        csr,
        replace,
    };
    let resp = c
        .call(
            reqwest::Method::POST,
            outpost_core_metadata::SERVICE,
            &path,
            &body,
        )
        .await?;
    let issued: DeviceCertificateResponse = decode(resp)?;
    Ok((issued.certificate, key))
}

/// Writes what the device needs into `dir`.
fn write_bundle(dir: &Path, secret: &str, cert: Option<&(String, String)>) -> anyhow::Result<()> {
    outpost_storage::ensure_private_dir(dir)?;
    outpost_storage::replace_secret_file(&dir.join("device.secret"), secret.as_bytes())?;
    if let Some((chain, key)) = cert {
        outpost_storage::replace_secret_file(&dir.join("device.key"), key.as_bytes())?;
        std::fs::write(dir.join("device.pem"), chain)
            .with_context(|| format!("cannot write {}", dir.join("device.pem").display()))?;
        // The chain ends with the node CA, which the device trusts for the gateway.
        if let Some(at) = chain.find("-----END CERTIFICATE-----") {
            let ca = chain[at + "-----END CERTIFICATE-----".len()..].trim_start();
            if !ca.is_empty() {
                std::fs::write(dir.join("ca.pem"), ca)
                    .with_context(|| format!("cannot write {}", dir.join("ca.pem").display()))?;
            }
        }
    }
    Ok(())
}

fn report(name: &str, secret: &str, cert: bool, out: Option<&Path>) {
    match out {
        Some(dir) => {
            let what = if cert {
                "device.secret, device.pem, device.key, ca.pem"
            } else {
                "device.secret"
            };
            println!(
                "credentials of {name} written to {} ({what})",
                dir.display()
            );
        }
        None => {
            eprintln!("secret of {name} (shown only now; the node keeps only a hash):");
            println!("{secret}");
        }
    }
}

/// Everything that can fail before the node is asked, done first: the old credentials are
/// only replaced once the new ones have somewhere to go.
fn prepare(name: &str, out: Option<&Path>, cert: bool) -> anyhow::Result<Option<(String, String)>> {
    if let Some(dir) = out {
        outpost_storage::ensure_private_dir(dir)?;
    }
    Ok(cert.then(|| outpost_pki::new_csr(name)).transpose()?)
}

/// Writes or prints what was issued, even when a later step failed.
fn deliver(
    name: &str,
    secret: &str,
    cert: Option<&(String, String)>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(dir) = out {
        write_bundle(dir, secret, cert)?;
    }
    report(name, secret, cert.is_some(), out);
    Ok(())
}

pub async fn enroll(c: &Client, e: Enroll) -> anyhow::Result<()> {
    if e.cert && e.out.is_none() {
        bail!("--cert needs --out DIR: the device's key is written there, never sent");
    }
    let request = prepare(&e.name, e.out.as_deref(), e.cert)?;
    if !exists(c, &e.name).await? {
        let (Some(profile), Some(service)) = (&e.profile, &e.service) else {
            bail!(
                "device {} does not exist: give --profile and --service to create it",
                e.name
            );
        };
        super::devices::device_add(
            c,
            NewDevice {
                name_flag: None,
                file: None,
                name: Some(e.name.clone()),
                profile: Some(profile.clone()),
                service: Some(service.clone()),
                protocols: Vec::new(),
                labels: e.labels.clone(),
                auto_events: Vec::new(),
                description: None,
                json: false,
            },
        )
        .await?;
    }
    let secret = new_secret(c, &e.name).await?;
    let cert = match request {
        Some(r) => match new_cert(c, &e.name, r, false).await {
            Ok(cert) => Some(cert),
            Err(err) => {
                deliver(&e.name, &secret, None, e.out.as_deref())?;
                return Err(err.context("the secret is set, but no certificate was issued"));
            }
        },
        None => None,
    };
    deliver(&e.name, &secret, cert.as_ref(), e.out.as_deref())
}

/// A new secret, and a new certificate if the device has one; the old ones stop working.
pub async fn rotate(c: &Client, name: &str, out: Option<&Path>) -> anyhow::Result<()> {
    let creds = c
        .get(
            outpost_core_metadata::SERVICE,
            &format!("/device/name/{}/credential", enc(name)),
        )
        .await?;
    let had_cert = creds["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["status"] == "active" && c["issuer"] == "node");
    if had_cert && out.is_none() {
        bail!("{name} has a certificate: give --out DIR for the new key");
    }
    let request = prepare(name, out, had_cert)?;
    let secret = new_secret(c, name).await?;
    let cert = match request {
        Some(r) => match new_cert(c, name, r, true).await {
            Ok(cert) => Some(cert),
            Err(err) => {
                deliver(name, &secret, None, out)?;
                return Err(err.context(
                    "the new secret is set, but no new certificate was issued (the old one still works)",
                ));
            }
        },
        None => None,
    };
    deliver(name, &secret, cert.as_ref(), out)
}

/// `POST /device/name/{name}/{action}` on core-metadata.
async fn device_action(c: &Client, name: &str, action: &str) -> anyhow::Result<()> {
    let path = format!("/device/name/{}/{action}", enc(name));
    c.call(
        reqwest::Method::POST,
        outpost_core_metadata::SERVICE,
        &path,
        &serde_json::json!({}),
    )
    .await?;
    Ok(())
}

pub async fn revoke(c: &Client, name: &str) -> anyhow::Result<()> {
    device_action(c, name, "revoke").await?;
    println!("revoked {name}: its credentials no longer work; its history is kept");
    Ok(())
}

pub async fn approve(c: &Client, name: &str) -> anyhow::Result<()> {
    device_action(c, name, "approve").await?;
    println!("approved {name}");
    Ok(())
}

pub async fn credentials(c: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let v = c
        .get(
            outpost_core_metadata::SERVICE,
            &format!("/device/name/{}/credential", enc(name)),
        )
        .await?;
    // core-metadata's credential answer has no contracts type yet: read as it is.
    show(v, json, |v: Value| {
        println!(
            "{name}: {} (secret: {})",
            v["status"].as_str().unwrap_or("?"),
            if v["secret"] == true { "set" } else { "none" }
        );
        let rows: Vec<Vec<String>> = v["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                vec![
                    s("fingerprint").chars().take(16).collect(),
                    s("issuer"),
                    s("status"),
                    c["notAfter"].as_i64().map_or_else(String::new, |t| {
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
                        )
                        .to_string()
                    }),
                ]
            })
            .collect();
        if !rows.is_empty() {
            table(&["CERTIFICATE", "ISSUER", "STATUS", "NOT AFTER"], &rows);
        }
        Ok(())
    })
}

/// Seconds since `ms`, or never.
fn seen(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let now = outpost_contracts::now_millis();
            format!("{}s ago", ((now - t).max(0)) / 1000)
        }
    }
}

pub async fn inventory(
    c: &Client,
    group: Option<&str>,
    labels: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let mut q = Vec::new();
    if let Some(g) = group {
        q.push(format!("group={}", enc(g)));
    }
    if !labels.is_empty() {
        q.push(format!("labels={}", enc(&labels.join(","))));
    }
    let path = if q.is_empty() {
        "/inventory/all".to_string()
    } else {
        format!("/inventory/all?{}", q.join("&"))
    };
    let v = c.get(outpost_ota::SERVICE, &path).await?;
    show_table(
        v,
        json,
        &[
            "DEVICE",
            "PROFILE",
            "LABELS",
            "ATTRIBUTES",
            "LAST SEEN",
            "CHECK-IN",
        ],
        |all: MultiInventoryResponse| {
            all.devices
                .into_iter()
                .map(|d| {
                    let attrs: Vec<String> = d
                        .attributes
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    vec![
                        d.name,
                        d.profile_name,
                        d.labels.join(","),
                        attrs.join(" "),
                        seen(d.last_seen_ms),
                        cell(&d.check_in),
                    ]
                })
                .collect()
        },
    )
}

pub async fn group_add(
    c: &Client,
    name: &str,
    labels: &[String],
    profile: Option<&str>,
) -> anyhow::Result<()> {
    let body = Group {
        name: name.to_string(),
        labels: labels.to_vec(),
        profile: profile.unwrap_or_default().to_string(),
    };
    c.call(reqwest::Method::POST, outpost_ota::SERVICE, "/group", &body)
        .await?;
    let g: GroupResponse = decode(
        c.get(outpost_ota::SERVICE, &format!("/group/name/{}", enc(name)))
            .await?,
    )?;
    println!("created group {name} ({} devices now)", g.members.len());
    Ok(())
}

pub async fn group_list(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.get(outpost_ota::SERVICE, "/group/all").await?;
    show_table(
        v,
        json,
        &["GROUP", "LABELS", "PROFILE", "DEVICES"],
        |all: MultiGroupsResponse| {
            all.groups
                .into_iter()
                .map(|g| vec![g.name, g.labels.join(","), g.profile, g.members.to_string()])
                .collect()
        },
    )
}

pub async fn group_show(c: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let v = c
        .get(outpost_ota::SERVICE, &format!("/group/name/{}", enc(name)))
        .await?;
    show(v, json, |g: GroupResponse| {
        for m in g.members {
            println!("{m}");
        }
        Ok(())
    })
}

pub async fn group_rm(c: &Client, name: &str) -> anyhow::Result<()> {
    c.delete(outpost_ota::SERVICE, &format!("/group/name/{}", enc(name)))
        .await?;
    println!("removed group {name}");
    Ok(())
}
