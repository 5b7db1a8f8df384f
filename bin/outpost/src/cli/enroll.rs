//! `outpost device enroll|rotate|revoke|approve|credentials`: device identities.
//!
//! Enrolling gives a device its own credential: a secret (its MQTT password, its device-rest
//! and OTA token) and, with `--cert`, a client certificate from the node CA. The key of the
//! certificate is made here and never sent: the node signs a request for it. What the device
//! needs is written to one directory (`--out`), secrets with mode 0600.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::client::{Client, enc, ok_or_message};
use super::devices::NewDevice;
use super::table::{print_json, table};

/// What `outpost device enroll` was given.
pub struct Enroll {
    pub name: String,
    pub profile: Option<String>,
    pub service: Option<String>,
    pub labels: Vec<String>,
    pub cert: bool,
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
    let path = format!("/device/name/{}/secret", enc(name));
    let body = serde_json::json!({"apiVersion": "v3"});
    let (status, resp) = c.put(outpost_core_metadata::SERVICE, &path, &body).await?;
    let resp = ok_or_message(status, resp)?;
    resp.get("secret")
        .and_then(Value::as_str)
        .map(str::to_string)
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
    let body = serde_json::json!({"apiVersion": "v3", "csr": csr, "replace": replace});
    let (status, resp) = c.post(outpost_core_metadata::SERVICE, &path, &body).await?;
    let resp = ok_or_message(status, resp)?;
    let cert = resp
        .get("certificate")
        .and_then(Value::as_str)
        .context("the node returned no certificate")?;
    Ok((cert.to_string(), key))
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
                file: None,
                name: Some(e.name.clone()),
                profile: Some(profile.clone()),
                service: Some(service.clone()),
                protocols: Vec::new(),
                labels: e.labels.clone(),
                auto_events: Vec::new(),
                description: None,
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
    let (status, body) = c
        .post(
            outpost_core_metadata::SERVICE,
            &format!("/device/name/{}/{action}", enc(name)),
            &serde_json::json!({}),
        )
        .await?;
    ok_or_message(status, body).map(|_| ())
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
    if json {
        print_json(&v);
        return Ok(());
    }
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
}

/// The strings of a JSON array, comma-separated.
fn joined(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn ago(ms: Option<i64>) -> String {
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
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let attrs = d["attributes"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let labels = joined(&d["labels"]);
            vec![
                d["name"].as_str().unwrap_or_default().to_string(),
                d["profileName"].as_str().unwrap_or_default().to_string(),
                labels,
                attrs,
                ago(d["lastSeenMs"].as_i64()),
                d["checkIn"].as_str().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "DEVICE",
            "PROFILE",
            "LABELS",
            "ATTRIBUTES",
            "LAST SEEN",
            "CHECK-IN",
        ],
        &rows,
    );
    Ok(())
}

pub async fn group_add(
    c: &Client,
    name: &str,
    labels: &[String],
    profile: Option<&str>,
) -> anyhow::Result<()> {
    let body =
        serde_json::json!({"name": name, "labels": labels, "profile": profile.unwrap_or_default()});
    let (status, v) = c.post(outpost_ota::SERVICE, "/group", &body).await?;
    ok_or_message(status, v)?;
    let g = c
        .get(outpost_ota::SERVICE, &format!("/group/name/{}", enc(name)))
        .await?;
    let n = g["members"].as_array().map_or(0, Vec::len);
    println!("created group {name} ({n} devices now)");
    Ok(())
}

pub async fn group_list(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.get(outpost_ota::SERVICE, "/group/all").await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            vec![
                g["name"].as_str().unwrap_or_default().to_string(),
                joined(&g["labels"]),
                g["profile"].as_str().unwrap_or_default().to_string(),
                g["members"].to_string(),
            ]
        })
        .collect();
    table(&["GROUP", "LABELS", "PROFILE", "DEVICES"], &rows);
    Ok(())
}

pub async fn group_show(c: &Client, name: &str) -> anyhow::Result<()> {
    let v = c
        .get(outpost_ota::SERVICE, &format!("/group/name/{}", enc(name)))
        .await?;
    for m in v["members"].as_array().into_iter().flatten() {
        println!("{}", m.as_str().unwrap_or_default());
    }
    Ok(())
}

pub async fn group_rm(c: &Client, name: &str) -> anyhow::Result<()> {
    c.delete(outpost_ota::SERVICE, &format!("/group/name/{}", enc(name)))
        .await?;
    println!("removed group {name}");
    Ok(())
}
