//! Rollouts (operators, through the gateway) and the device protocol (devices, with their
//! own credential).
//!
//! Operators: `POST /api/v3/rollout`, `GET /api/v3/rollout/all`,
//! `GET /api/v3/rollout/name/{name}`, `POST /api/v3/rollout/name/{name}/{pause|resume|cancel}`,
//! `GET /api/v3/rollout/name/{name}/device/{device}` (that device's history).
//!
//! Devices (docs/ota.md), authenticated by `X-Outpost-Device-Token: <device secret>`
//! (checked with core-metadata): `GET /api/v3/ddi/{device}` (poll, with `ETag` and
//! `If-None-Match`), `POST /api/v3/ddi/{device}/action/{rollout}/feedback`,
//! `GET /api/v3/ddi/{device}/action/{rollout}/payload` (ranges as for any payload).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outpost_bus::metadata::{CREDENTIAL_GRACE, Credential, Lookup, Verdict};
use outpost_kit::ApiError;
use outpost_kit::error::Path;
use outpost_storage::StorageError;
use outpost_storage::rusqlite::{self, params};
use serde::Deserialize;

use crate::rollout::{DeviceState, Policy, Rollout, RolloutState};
use crate::{App, now_ms};

pub const MIGRATION: outpost_storage::Migration = outpost_storage::Migration {
    version: 2,
    description: "rollouts, their devices and the devices' histories",
    sql: "CREATE TABLE rollouts (
              name TEXT PRIMARY KEY,
              artifact_name TEXT NOT NULL,
              artifact_version TEXT NOT NULL,
              policy TEXT NOT NULL,
              state TEXT NOT NULL,
              open_phase INTEGER NOT NULL,
              failures_before INTEGER NOT NULL,
              started_before INTEGER NOT NULL,
              created_ms INTEGER NOT NULL
          );
          CREATE TABLE rollout_devices (
              rollout TEXT NOT NULL,
              device TEXT NOT NULL,
              position INTEGER NOT NULL,
              phase INTEGER NOT NULL,
              state TEXT NOT NULL,
              updated_ms INTEGER NOT NULL,
              PRIMARY KEY (rollout, device)
          ) WITHOUT ROWID;
          CREATE TABLE action_history (
              id INTEGER PRIMARY KEY,
              rollout TEXT NOT NULL,
              device TEXT NOT NULL,
              at_ms INTEGER NOT NULL,
              status TEXT NOT NULL,
              details TEXT NOT NULL
          );
          CREATE INDEX action_history_by_device ON action_history (rollout, device, id);",
};

/// Entries kept per device and rollout.
const HISTORY: i64 = 20;

/// A rollout and what it rolls out.
pub struct Entry {
    pub rollout: Rollout,
    pub artifact: (String, String),
    pub created_ms: i64,
}

/// Rollouts in memory (persisted on every change).
#[derive(Default)]
pub struct Fleet {
    pub rollouts: tokio::sync::Mutex<Vec<(String, Entry)>>,
}

fn state_name(s: DeviceState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn parse_state(s: &str) -> DeviceState {
    serde_json::from_value(serde_json::Value::String(s.to_string())).unwrap_or(DeviceState::Waiting)
}

/// Loads every rollout.
pub async fn load(db: &outpost_storage::Db) -> Result<Vec<(String, Entry)>, StorageError> {
    db.read(|c| {
        let mut st = c.prepare(
            "SELECT name, artifact_name, artifact_version, policy, state, open_phase, failures_before,
                    started_before, created_ms FROM rollouts ORDER BY created_ms",
        )?;
        type Row = (String, String, String, String, String, i64, i64, i64, i64);
        let heads: Vec<Row> = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for (name, an, av, policy, state, open, fb, sb, created) in heads {
            let mut st = c.prepare_cached(
                "SELECT device, phase, state FROM rollout_devices WHERE rollout = ?1 ORDER BY position",
            )?;
            let devices = st
                .query_map([&name], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize, r.get::<_, String>(2)?))
                })?
                .map(|r| r.map(|(d, p, s)| (d, p, parse_state(&s))))
                .collect::<Result<Vec<_>, _>>()?;
            let (Ok(policy), Ok(state)) = (
                serde_json::from_str::<Policy>(&policy),
                serde_json::from_str::<RolloutState>(&state),
            ) else {
                tracing::error!(rollout = name, "unreadable rollout in the database; skipped");
                continue;
            };
            let rollout =
                Rollout::restore(policy, devices, open as usize, state, fb as u32, sb as u32);
            out.push((
                name,
                Entry {
                    rollout,
                    artifact: (an, av),
                    created_ms: created,
                },
            ));
        }
        Ok(out)
    })
    .await
}

/// Writes a rollout's head and the devices whose state changed since `before`.
fn persist(
    c: &mut rusqlite::Connection,
    name: &str,
    e: &Entry,
    before: &HashMap<String, DeviceState>,
    history: &[(String, String, String)],
    create: bool,
) -> Result<(), StorageError> {
    let tx = c.transaction()?;
    let (fb, sb) = e.rollout.baseline();
    let state = serde_json::to_string(&e.rollout.state).unwrap_or_default();
    if create {
        tx.execute(
            "INSERT INTO rollouts (name, artifact_name, artifact_version, policy, state, open_phase,
                 failures_before, started_before, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                name,
                e.artifact.0,
                e.artifact.1,
                serde_json::to_string(&e.rollout.policy).unwrap_or_default(),
                state,
                e.rollout.open_phase() as i64,
                fb,
                sb,
                e.created_ms
            ],
        )?;
    } else {
        tx.execute(
            "UPDATE rollouts SET state = ?2, open_phase = ?3, failures_before = ?4, started_before = ?5
             WHERE name = ?1",
            params![name, state, e.rollout.open_phase() as i64, fb, sb],
        )?;
    }
    let now = now_ms();
    {
        let mut up = tx.prepare_cached(
            "INSERT INTO rollout_devices (rollout, device, position, phase, state, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (rollout, device) DO UPDATE SET state = ?5, updated_ms = ?6",
        )?;
        for (i, (d, phase, s)) in e.rollout.devices().enumerate() {
            if before.get(d) != Some(&s) {
                up.execute(params![name, d, i as i64, phase as i64, state_name(s), now])?;
            }
        }
        let mut h = tx.prepare_cached(
            "INSERT INTO action_history (rollout, device, at_ms, status, details) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut trim = tx.prepare_cached(
            "DELETE FROM action_history WHERE rollout = ?1 AND device = ?2 AND id NOT IN
                 (SELECT id FROM action_history WHERE rollout = ?1 AND device = ?2 ORDER BY id DESC LIMIT ?3)",
        )?;
        for (device, status, details) in history {
            h.execute(params![name, device, now, status, details])?;
            trim.execute(params![name, device, HISTORY])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn snapshot(r: &Rollout) -> HashMap<String, DeviceState> {
    r.devices().map(|(d, _, s)| (d.to_string(), s)).collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Target {
    #[serde(default)]
    devices: Vec<String>,
    /// Devices carrying every one of these labels.
    #[serde(default)]
    labels: Vec<String>,
    /// The members of a group (its label selector, worked out now).
    #[serde(default)]
    group: Option<String>,
}

/// 1 to 128 letters, digits, '-', '_' or '.'.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ArtifactRef {
    name: String,
    version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewRollout {
    name: String,
    artifact: ArtifactRef,
    target: Target,
    #[serde(default)]
    policy: Policy,
}

fn view(name: &str, e: &Entry) -> serde_json::Value {
    let (all, per) = e.rollout.counts();
    let counts = |m: &HashMap<DeviceState, u32>| {
        DeviceState::ALL
            .iter()
            .map(|s| {
                (
                    state_name(*s),
                    serde_json::Value::from(m.get(s).copied().unwrap_or(0)),
                )
            })
            .collect::<serde_json::Map<String, serde_json::Value>>()
    };
    serde_json::json!({
        "name": name,
        "artifact": {"name": e.artifact.0, "version": e.artifact.1},
        "status": e.rollout.state,
        "policy": e.rollout.policy,
        "openPhase": e.rollout.open_phase(),
        "devices": all.values().sum::<u32>(),
        "counts": counts(&all),
        "phases": per.iter().enumerate().map(|(i, m)| serde_json::json!({
            "phase": i, "percent": e.rollout.policy.phases.get(i), "devices": m.values().sum::<u32>(), "counts": counts(m)
        })).collect::<Vec<_>>(),
        "createdMs": e.created_ms,
    })
}

pub async fn create(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let req: NewRollout = outpost_kit::error::parse_json(&body)?;
    if !valid_name(&req.name) {
        return Err(ApiError::bad_request(
            "a rollout name is 1 to 128 letters, digits, '-', '_' or '.'",
        ));
    }
    req.policy.check().map_err(ApiError::bad_request)?;
    if req.target.devices.is_empty() && req.target.labels.is_empty() && req.target.group.is_none() {
        return Err(ApiError::bad_request(
            "target needs devices, labels or a group",
        ));
    }
    let artifact = crate::find(
        &app,
        req.artifact.name.clone(),
        req.artifact.version.clone(),
    )
    .await?;
    // The devices: named ones, or all that carry the labels; only compatible ones.
    let mut candidates = Vec::new();
    if req.target.labels.is_empty() && req.target.group.is_none() {
        for d in &req.target.devices {
            match app
                .view
                .client()
                .device(d)
                .await
                .map_err(|e| e.to_api_error())?
            {
                Some(dev) => candidates.push(dev),
                None => return Err(ApiError::not_found(format!("no device {d}"))),
            }
        }
    } else {
        let (mut labels, mut profile) = (req.target.labels.clone(), String::new());
        if let Some(g) = &req.target.group {
            let (l, p) = crate::inventory::group_selector(&app, g).await?;
            labels.extend(l);
            profile = p;
        }
        candidates.extend(
            crate::inventory::select(&app, &labels, &profile)
                .await?
                .into_iter()
                .filter(|d| req.target.devices.is_empty() || req.target.devices.contains(&d.name)),
        );
    }
    let compatible = &artifact.manifest.compatible;
    let (fit, misfit): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|d| compatible.contains(&d.profile_name));
    if fit.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the rollout targets no device that may install {} {} (compatible: {}; {} targeted devices are not)",
                artifact.manifest.name,
                artifact.manifest.version,
                compatible.join(", "),
                misfit.len()
            ),
        ));
    }
    let mut devices: Vec<String> = fit.into_iter().map(|d| d.name).collect();
    devices.sort();
    devices.dedup();
    let rollout = Rollout::new(req.policy, devices).map_err(ApiError::bad_request)?;
    let entry = Entry {
        rollout,
        artifact: (
            artifact.manifest.name.clone(),
            artifact.manifest.version.clone(),
        ),
        created_ms: now_ms(),
    };
    let mut rollouts = app.fleet.rollouts.lock().await;
    if rollouts.iter().any(|(n, _)| *n == req.name) {
        return Err(ApiError::conflict(format!("rollout {} exists", req.name)));
    }
    let name = req.name.clone();
    let before = HashMap::new();
    let body = view(&name, &entry);
    {
        let e = &entry;
        let (n, snapshot_entry) = (
            name.clone(),
            (e.rollout.clone(), e.artifact.clone(), e.created_ms),
        );
        app.db
            .write(move |c| {
                let e = Entry {
                    rollout: snapshot_entry.0,
                    artifact: snapshot_entry.1,
                    created_ms: snapshot_entry.2,
                };
                persist(c, &n, &e, &before, &[], true)
            })
            .await
            .map_err(ApiError::internal)?;
    }
    tell(&app, &name, newly_offered(&HashMap::new(), &entry.rollout));
    rollouts.push((name.clone(), entry));
    tracing::info!(rollout = name, misfits = misfit.len(), "rollout created");
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn all(State(app): State<Arc<App>>) -> Response {
    let rollouts = app.fleet.rollouts.lock().await;
    let list: Vec<_> = rollouts.iter().map(|(n, e)| view(n, e)).collect();
    Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200, "totalCount": list.len(), "rollouts": list}))
        .into_response()
}

pub async fn one(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let rollouts = app.fleet.rollouts.lock().await;
    let (n, e) = rollouts
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| ApiError::not_found(format!("no rollout {name}")))?;
    let mut v = view(n, e);
    v["apiVersion"] = "v3".into();
    v["statusCode"] = 200.into();
    Ok(Json(v).into_response())
}

/// pause, resume or cancel.
pub async fn control(
    State(app): State<Arc<App>>,
    Path((name, verb)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let mut rollouts = app.fleet.rollouts.lock().await;
    let (_, e) = rollouts
        .iter_mut()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| ApiError::not_found(format!("no rollout {name}")))?;
    let before = snapshot(&e.rollout);
    let saved = e.rollout.clone();
    let done = match verb.as_str() {
        "pause" => e.rollout.pause(),
        "resume" => e.rollout.resume(),
        "cancel" => e.rollout.cancel(),
        other => {
            return Err(ApiError::not_found(format!(
                "no action {other} (pause, resume, cancel)"
            )));
        }
    };
    if !done {
        return Err(ApiError::conflict(format!(
            "rollout {name} cannot {verb} now ({:?})",
            e.rollout.state
        )));
    }
    let copy = Entry {
        rollout: e.rollout.clone(),
        artifact: e.artifact.clone(),
        created_ms: e.created_ms,
    };
    let n = name.clone();
    if let Err(err) = app
        .db
        .write(move |c| persist(c, &n, &copy, &before, &[], false))
        .await
    {
        e.rollout = saved;
        return Err(ApiError::internal(err));
    }
    if verb == "resume" {
        tell(&app, &name, newly_offered(&HashMap::new(), &e.rollout));
    }
    tracing::info!(rollout = name, action = verb, "rollout {verb}");
    let mut v = view(&name, e);
    v["apiVersion"] = "v3".into();
    v["statusCode"] = 200.into();
    Ok(Json(v).into_response())
}

pub async fn device_history(
    State(app): State<Arc<App>>,
    Path((name, device)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let state = {
        let rollouts = app.fleet.rollouts.lock().await;
        let (_, e) = rollouts
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| ApiError::not_found(format!("no rollout {name}")))?;
        e.rollout.state_of(&device).ok_or_else(|| {
            ApiError::not_found(format!("device {device} is not in rollout {name}"))
        })?
    };
    let (n, d) = (name.clone(), device.clone());
    let history = app
        .db
        .read(move |c| {
            let mut st = c.prepare(
                "SELECT at_ms, status, details FROM action_history WHERE rollout = ?1 AND device = ?2 ORDER BY id",
            )?;
            let rows = st
                .query_map(params![n, d], |r| {
                    Ok(serde_json::json!({"atMs": r.get::<_, i64>(0)?, "status": r.get::<_, String>(1)?, "details": r.get::<_, String>(2)?}))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, StorageError>(rows)
        })
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({
        "apiVersion": "v3", "statusCode": 200, "rollout": name, "device": device,
        "state": state_name(state), "history": history
    }))
    .into_response())
}

// ---- the device protocol ----

/// Checks the device's credential through the metadata view (which forgets what it knows
/// of a device whenever core-metadata announces a change to it, such as a rotation or
/// revocation): its secret as
/// `X-Outpost-Device-Token`, or the client certificate it presented to the gateway, which
/// the gateway passes as `X-Outpost-Client-Cert`.
pub(crate) async fn authenticate(
    app: &App,
    device: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
    };
    let (credential, is_cert) = match (header("x-outpost-device-token"), app.vouched(headers)) {
        (Some(t), _) => (t, false),
        (None, Some(c)) => (c, true),
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the device's credential is missing (X-Outpost-Device-Token, or a client certificate)",
            ));
        }
    };
    let credential = if is_cert {
        Credential::Certificate(credential)
    } else {
        Credential::Secret(credential)
    };
    // The view's policy: a credential verified before is honoured for a while when
    // core-metadata cannot be asked.
    match app.view.verify(device, credential).await {
        Lookup::Found(Verdict::Pending) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("device {device} is waiting for an operator's approval"),
        )),
        Lookup::Missing => {
            tracing::warn!(
                device,
                certificate = is_cert,
                "a device credential was refused"
            );
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the device's credential is not valid",
            ))
        }
        found @ (Lookup::Found(_) | Lookup::Stale { .. }) => match found.within(CREDENTIAL_GRACE) {
            Some(_) => {
                app.inventory.seen(device);
                Ok(())
            }
            None => Err(ApiError::unavailable(
                "cannot check the device's credential: core-metadata has been unreachable too long",
            )),
        },
        Lookup::Unavailable(e) => Err(ApiError::unavailable(format!(
            "cannot check the device's credential: {e}"
        ))),
    }
}

/// Devices offered the update now that were not in `before`.
fn newly_offered(before: &HashMap<String, DeviceState>, r: &Rollout) -> Vec<String> {
    r.devices()
        .filter(|(d, _, s)| {
            *s == DeviceState::Offered && before.get(*d) != Some(&DeviceState::Offered)
        })
        .map(|(d, _, _)| d.to_string())
        .collect()
}

/// Tells online devices to poll now: a message on `<their command topic>/ota` on the
/// node's broker (QoS 1, not retained), which a device subscribed with its own credential
/// receives. Best effort: a device that misses it finds the update at its next poll.
fn tell(app: &Arc<App>, rollout: &str, devices: Vec<String>) {
    if devices.is_empty() {
        return;
    }
    let Some(bus) = app.bus.get().cloned() else {
        return;
    };
    let (app2, rollout) = (Arc::clone(app), rollout.to_string());
    app.tasks.spawn_child(async move {
        let app = app2;
        let body = serde_json::json!({"poll": true, "rollout": rollout}).to_string();
        for name in devices {
            let topic = match app.view.device(&name).await.within(CREDENTIAL_GRACE) {
                Some(d) => outpost_contracts::topics::device::DeviceTopics::of(&d).command + "/ota",
                _ => continue,
            };
            if let Err(e) = bus.publish_raw(&topic, body.clone().into_bytes()).await {
                tracing::debug!(device = name, error = %e, "cannot tell the device to poll");
            }
        }
    });
}

/// The action offered to `device`, newest rollout first.
fn action_for<'a>(rollouts: &'a [(String, Entry)], device: &str) -> Option<&'a (String, Entry)> {
    rollouts
        .iter()
        .rev()
        .find(|(_, e)| e.rollout.offers(device))
}

pub async fn poll(
    State(app): State<Arc<App>>,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&app, &device, &headers).await?;
    let action = {
        let rollouts = app.fleet.rollouts.lock().await;
        action_for(&rollouts, &device)
            .map(|(n, e)| (n.clone(), e.artifact.clone(), e.rollout.state_of(&device)))
    };
    let action = match action {
        Some((rollout, (name, version), state)) => {
            let a = crate::find(&app, name.clone(), version.clone()).await?;
            Some(serde_json::json!({
                "id": rollout,
                "state": state.map(state_name),
                "artifact": {
                    "name": name, "version": version, "size": a.manifest.size, "sha256": a.manifest.sha256,
                    "payloadType": a.manifest.payload_type,
                    "manifestBase64": a.manifest_base64, "signature": a.signature, "keyId": a.key_id,
                },
                "download": format!("/api/v3/ddi/{device}/action/{rollout}/payload"),
                "feedback": format!("/api/v3/ddi/{device}/action/{rollout}/feedback"),
            }))
        }
        None => None,
    };
    let body = serde_json::json!({"pollSeconds": app.poll_seconds, "action": action});
    let text = serde_json::to_vec(&body).map_err(ApiError::internal)?;
    let etag = format!(
        "\"{}\"",
        hex::encode(&ring::digest::digest(&ring::digest::SHA256, &text).as_ref()[..12])
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == etag)
    {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            r.headers_mut().insert(header::ETAG, v);
        }
        return Ok(r);
    }
    let mut r = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Ok(r)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Feedback {
    status: DeviceState,
    #[serde(default)]
    details: String,
}

pub async fn feedback(
    State(app): State<Arc<App>>,
    Path((device, rollout)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authenticate(&app, &device, &headers).await?;
    let fb: Feedback = outpost_kit::error::parse_json(&body)?;
    let details: String = fb.details.chars().take(1000).collect();
    let mut rollouts = app.fleet.rollouts.lock().await;
    let (_, e) = rollouts
        .iter_mut()
        .find(|(n, _)| *n == rollout)
        .ok_or_else(|| ApiError::not_found(format!("no action {rollout}")))?;
    let before = snapshot(&e.rollout);
    let saved = e.rollout.clone();
    e.rollout
        .report(&device, fb.status)
        .map_err(|err| match err {
            crate::rollout::ReportError::UnknownDevice(_)
            | crate::rollout::ReportError::NotOffered(_) => {
                ApiError::not_found(format!("device {device} has no action {rollout}"))
            }
            other => ApiError::conflict(other.to_string()),
        })?;
    let was = e.rollout.state.clone();
    let copy = Entry {
        rollout: e.rollout.clone(),
        artifact: e.artifact.clone(),
        created_ms: e.created_ms,
    };
    let history = vec![(device.clone(), state_name(fb.status), details)];
    let opened = newly_offered(&before, &e.rollout);
    let n = rollout.clone();
    if let Err(err) = app
        .db
        .write(move |c| persist(c, &n, &copy, &before, &history, false))
        .await
    {
        e.rollout = saved;
        return Err(ApiError::internal(err));
    }
    if let RolloutState::Paused {
        reason,
        automatic: true,
    } = &was
        && saved.state == RolloutState::Running
    {
        tracing::warn!(rollout, reason, "rollout paused by itself");
    }
    tell(&app, &rollout, opened);
    Ok(Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200})).into_response())
}

pub async fn payload(
    State(app): State<Arc<App>>,
    Path((device, rollout)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&app, &device, &headers).await?;
    let artifact = {
        let rollouts = app.fleet.rollouts.lock().await;
        let (_, e) = rollouts
            .iter()
            .find(|(n, _)| *n == rollout)
            .ok_or_else(|| ApiError::not_found(format!("no action {rollout}")))?;
        if !e.rollout.offers(&device) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("device {device} has no open action {rollout}"),
            ));
        }
        e.artifact.clone()
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info!(device, rollout, range, "device download");
    crate::serve_payload(&app, artifact.0, artifact.1, &headers).await
}
