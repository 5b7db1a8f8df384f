//! Inventory: what devices report about themselves (device-owned attributes such as the
//! firmware version or hardware revision), when each last checked in and whether it is
//! overdue, next to what operators own (labels and profile, in core-metadata); and groups,
//! named label selectors whose members are worked out when asked, so a new device carrying
//! the labels is in the group at once.
//!
//! - `PUT /api/v3/ddi/{device}/attributes` (the device): `{"attributes": {"k": "v"}}`,
//!   replacing what it reported before; at most 64 keys of 64 and values of 256 characters.
//! - `GET /api/v3/inventory/all[?labels=a,b][&group=g]`, `GET /api/v3/inventory/name/{d}`.
//! - `POST /api/v3/group` `{"name", "labels": [...], "profile"?}`, `GET /api/v3/group/all`,
//!   `GET /api/v3/group/name/{name}` (with its members), `DELETE /api/v3/group/name/{name}`.
//!
//! Last-seen times are kept in memory and written every few seconds (a poll costs no
//! write); attributes are written when reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use outpost_contracts::metadata::Device;
use outpost_kit::ApiError;
use outpost_kit::error::Path;
use outpost_storage::rusqlite::params;
use outpost_storage::{Db, Migration, StorageError};
use serde::Deserialize;

use crate::{App, now_ms};

pub const MIGRATION: Migration = Migration {
    version: 3,
    description: "inventory and groups",
    sql: "CREATE TABLE inventory (
              device TEXT PRIMARY KEY,
              attributes TEXT NOT NULL DEFAULT '{}',
              last_seen_ms INTEGER
          );
          CREATE TABLE groups (
              name TEXT PRIMARY KEY,
              labels TEXT NOT NULL,
              profile TEXT NOT NULL DEFAULT '',
              created_ms INTEGER NOT NULL
          );",
};

type Attributes = BTreeMap<String, String>;

/// What the service knows of devices between writes.
#[derive(Default)]
pub struct Inventory {
    seen: Mutex<HashMap<String, i64>>,
    unsaved: Mutex<HashSet<String>>,
    attributes: Mutex<HashMap<String, Attributes>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inventory {
    /// Loads what was saved.
    pub async fn load(db: &Db) -> Result<Self, StorageError> {
        let rows = db
            .read(|c| {
                let mut st = c.prepare("SELECT device, attributes, last_seen_ms FROM inventory")?;
                let rows = st
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<i64>>(2)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, StorageError>(rows)
            })
            .await?;
        let inv = Self::default();
        for (device, attrs, seen) in rows {
            if let Some(t) = seen {
                lock(&inv.seen).insert(device.clone(), t);
            }
            let attrs: Attributes = serde_json::from_str(&attrs).unwrap_or_default();
            lock(&inv.attributes).insert(device, attrs);
        }
        Ok(inv)
    }

    /// Notes that `device` checked in now.
    pub fn seen(&self, device: &str) {
        let now = now_ms();
        {
            let mut seen = lock(&self.seen);
            match seen.get_mut(device) {
                Some(t) => *t = now,
                None => {
                    seen.insert(device.to_string(), now);
                }
            }
        }
        let mut unsaved = lock(&self.unsaved);
        if !unsaved.contains(device) {
            unsaved.insert(device.to_string());
        }
    }

    /// Writes the check-in times noted since the last write.
    pub async fn save(&self, db: &Db) -> Result<(), StorageError> {
        let batch: Vec<(String, i64)> = {
            let names: Vec<String> = lock(&self.unsaved).drain().collect();
            let seen = lock(&self.seen);
            names
                .into_iter()
                .filter_map(|n| seen.get(&n).map(|t| (n, *t)))
                .collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        db.write(move |c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO inventory (device, last_seen_ms) VALUES (?1, ?2)
                     ON CONFLICT (device) DO UPDATE SET last_seen_ms = ?2",
                )?;
                for (d, t) in &batch {
                    st.execute(params![d, t])?;
                }
            }
            tx.commit()?;
            Ok::<_, StorageError>(())
        })
        .await
    }

    fn view(&self, d: &Device, overdue_ms: i64) -> serde_json::Value {
        let seen = lock(&self.seen).get(&d.name).copied();
        let check_in = match seen {
            None => "never",
            Some(t) if now_ms() - t > overdue_ms => "overdue",
            Some(_) => "ok",
        };
        serde_json::json!({
            "name": d.name,
            "profileName": d.profile_name,
            "labels": d.labels,
            "adminState": d.admin_state,
            "attributes": lock(&self.attributes).get(&d.name).cloned().unwrap_or_default(),
            "lastSeenMs": seen,
            "checkIn": check_in,
            "overdue": check_in == "overdue",
        })
    }
}

/// Writes check-in times every few seconds until shutdown (and once more then).
pub async fn keep_saving(app: Arc<App>, stopping: outpost_kit::Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let stop = tokio::select! {
            () = stopping.wait() => true,
            _ = tick.tick() => false,
        };
        if let Err(e) = app.inventory.save(&app.db).await {
            tracing::warn!(error = %e, "cannot save check-in times");
        }
        if stop {
            return;
        }
    }
}

/// Every device carrying all of `labels` (and of `profile`, if not empty).
pub async fn select(app: &App, labels: &[String], profile: &str) -> Result<Vec<Device>, ApiError> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (page, total) = app
            .view
            .client()
            .devices_page(offset, 1000)
            .await
            .map_err(|e| e.to_api_error())?;
        let n = page.len() as u64;
        out.extend(page.into_iter().filter(|d| {
            labels.iter().all(|l| d.labels.contains(l))
                && (profile.is_empty() || d.profile_name == profile)
        }));
        offset += n;
        if n == 0 || offset >= total {
            break;
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A group's selector.
pub async fn group_selector(app: &App, name: &str) -> Result<(Vec<String>, String), ApiError> {
    let n = name.to_string();
    let row = app
        .db
        .read(move |c| {
            use outpost_storage::rusqlite::OptionalExtension as _;
            c.query_row(
                "SELECT labels, profile FROM groups WHERE name = ?1",
                params![n],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(StorageError::from)
        })
        .await
        .map_err(ApiError::internal)?;
    let (labels, profile) = row.ok_or_else(|| ApiError::not_found(format!("no group {name}")))?;
    Ok((serde_json::from_str(&labels).unwrap_or_default(), profile))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reported {
    attributes: Attributes,
}

/// The device reports its attributes.
pub async fn put_attributes(
    State(app): State<Arc<App>>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    crate::fleet::authenticate(&app, &device, &headers).await?;
    let r: Reported = outpost_kit::error::parse_json(&body)?;
    if r.attributes.len() > 64
        || r.attributes
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 256)
    {
        return Err(ApiError::bad_request(
            "attributes: at most 64, keys of 1 to 64 characters, values up to 256",
        ));
    }
    let text = serde_json::to_string(&r.attributes).map_err(ApiError::internal)?;
    let d = device.clone();
    app.db
        .write(move |c| {
            c.execute(
                "INSERT INTO inventory (device, attributes) VALUES (?1, ?2)
                 ON CONFLICT (device) DO UPDATE SET attributes = ?2",
                params![d, text],
            )?;
            Ok::<_, StorageError>(())
        })
        .await
        .map_err(ApiError::internal)?;
    lock(&app.inventory.attributes).insert(device, r.attributes);
    Ok(Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200})).into_response())
}

#[derive(Debug, Deserialize)]
pub struct Filter {
    labels: Option<String>,
    group: Option<String>,
}

pub async fn all(
    State(app): State<Arc<App>>,
    Query(f): Query<Filter>,
) -> Result<Response, ApiError> {
    let (mut labels, mut profile) = (Vec::new(), String::new());
    if let Some(g) = &f.group {
        (labels, profile) = group_selector(&app, g).await?;
    }
    if let Some(l) = &f.labels {
        labels.extend(l.split(',').filter(|s| !s.is_empty()).map(str::to_string));
    }
    let devices = select(&app, &labels, &profile).await?;
    let list: Vec<_> = devices
        .iter()
        .map(|d| app.inventory.view(d, app.overdue_ms))
        .collect();
    Ok(Json(serde_json::json!({
        "apiVersion": "v3", "statusCode": 200, "totalCount": list.len(), "devices": list,
    }))
    .into_response())
}

pub async fn one(
    State(app): State<Arc<App>>,
    Path(device): Path<String>,
) -> Result<Response, ApiError> {
    let d = app
        .view
        .client()
        .device(&device)
        .await
        .map_err(|e| e.to_api_error())?
        .ok_or_else(|| ApiError::not_found(format!("no device {device}")))?;
    let mut v = app.inventory.view(&d, app.overdue_ms);
    v["apiVersion"] = "v3".into();
    v["statusCode"] = 200.into();
    Ok(Json(v).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    profile: String,
}

pub async fn group_create(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let g: NewGroup = outpost_kit::error::parse_json(&body)?;
    if !crate::fleet::valid_name(&g.name) {
        return Err(ApiError::bad_request(
            "a group name is 1 to 128 letters, digits, '-', '_' or '.'",
        ));
    }
    if g.labels.is_empty() && g.profile.is_empty() {
        return Err(ApiError::bad_request(
            "a group selects by labels, a profile, or both",
        ));
    }
    let labels = serde_json::to_string(&g.labels).map_err(ApiError::internal)?;
    let (name, profile) = (g.name.clone(), g.profile.clone());
    let added = app
        .db
        .write(move |c| {
            let n = c.execute(
                "INSERT INTO groups (name, labels, profile, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO NOTHING",
                params![name, labels, profile, now_ms()],
            )?;
            Ok::<_, StorageError>(n == 1)
        })
        .await
        .map_err(ApiError::internal)?;
    if !added {
        return Err(ApiError::conflict(format!("group {} exists", g.name)));
    }
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"apiVersion": "v3", "statusCode": 201, "name": g.name})),
    )
        .into_response())
}

pub async fn group_all(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let rows = app
        .db
        .read(|c| {
            let mut st = c.prepare("SELECT name, labels, profile FROM groups ORDER BY name")?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, StorageError>(rows)
        })
        .await
        .map_err(ApiError::internal)?;
    let mut groups = Vec::new();
    for (name, labels, profile) in rows {
        let labels: Vec<String> = serde_json::from_str(&labels).unwrap_or_default();
        let members = select(&app, &labels, &profile).await?.len();
        groups.push(serde_json::json!({
            "name": name, "labels": labels, "profile": profile, "members": members,
        }));
    }
    Ok(Json(serde_json::json!({
        "apiVersion": "v3", "statusCode": 200, "totalCount": groups.len(), "groups": groups,
    }))
    .into_response())
}

pub async fn group_one(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (labels, profile) = group_selector(&app, &name).await?;
    let members: Vec<String> = select(&app, &labels, &profile)
        .await?
        .into_iter()
        .map(|d| d.name)
        .collect();
    Ok(Json(serde_json::json!({
        "apiVersion": "v3", "statusCode": 200, "name": name, "labels": labels,
        "profile": profile, "members": members,
    }))
    .into_response())
}

pub async fn group_delete(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let n = name.clone();
    let gone = app
        .db
        .write(move |c| {
            Ok::<_, StorageError>(c.execute("DELETE FROM groups WHERE name = ?1", params![n])? == 1)
        })
        .await
        .map_err(ApiError::internal)?;
    if !gone {
        return Err(ApiError::not_found(format!("no group {name}")));
    }
    Ok(Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200})).into_response())
}
