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
//!
//! Rollouts are held in memory and written through the store on every change; a change
//! the store refuses is undone in memory too. Instances sharing one database (PostgreSQL)
//! each hold the rollouts: a change is stored only over the revision it was made from, and
//! one made from an older revision is made again from the stored rollout (`Fleet::change`),
//! so a report that opens a phase opens it once, on the instance that stored it. Each
//! instance follows the others' changes within a second ([`Fleet::follow`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outpost_bus::metadata::CREDENTIAL_GRACE;
use outpost_contracts::common::{BaseResponse, BaseWithTotalCountResponse, SortedKeys};
use outpost_contracts::ddi;
use outpost_contracts::now_millis as now_ms;
use outpost_contracts::ota::{
    ArtifactRef, Counts, DeviceHistoryResponse, MultiRolloutsResponse, NewRollout, PhaseView,
    RolloutResponse, RolloutView,
};
use outpost_kit::error::Path;
use outpost_kit::{ApiError, Tasks};

use crate::artifacts::Artifacts;
use crate::devices::{Devices, valid_name};
use crate::rollout::{DeviceState, ReportError, Rollout, RolloutState};
use crate::store::{Report, RolloutDevice, RolloutHead, Store, StoredRollout};

/// A rollout and what it rolls out.
pub struct Entry {
    pub rollout: Rollout,
    /// The artifact's name and version.
    pub artifact: (String, String),
    pub created_ms: i64,
    /// The stored revision this entry is (see [`RolloutHead::revision`]).
    pub revision: i64,
}

impl Entry {
    fn restore(s: StoredRollout) -> (String, Self) {
        let h = s.head;
        let devices = s
            .devices
            .into_iter()
            .map(|d| (d.device, d.phase, d.state))
            .collect();
        let rollout = Rollout::restore(
            h.policy,
            devices,
            h.open_phase,
            h.state,
            h.failures_before,
            h.started_before,
        );
        (
            h.name,
            Self {
                rollout,
                artifact: h.artifact,
                created_ms: h.created_ms,
                revision: h.revision,
            },
        )
    }

    fn head(&self, name: &str) -> RolloutHead {
        let (failures_before, started_before) = self.rollout.baseline();
        RolloutHead {
            name: name.to_string(),
            artifact: self.artifact.clone(),
            policy: self.rollout.policy.clone(),
            state: self.rollout.state.clone(),
            open_phase: self.rollout.open_phase(),
            failures_before,
            started_before,
            created_ms: self.created_ms,
            revision: self.revision,
        }
    }

    /// The devices whose state is not what it was in `before`.
    fn changed(&self, before: &HashMap<String, DeviceState>) -> Vec<RolloutDevice> {
        self.rollout
            .devices()
            .enumerate()
            .filter(|(_, (d, _, s))| before.get(*d) != Some(s))
            .map(|(position, (d, phase, state))| RolloutDevice {
                device: d.to_string(),
                position,
                phase,
                state,
            })
            .collect()
    }
}

/// Rollouts and the devices' side of them.
pub struct Fleet {
    store: Arc<dyn Store>,
    artifacts: Arc<Artifacts>,
    devices: Arc<Devices>,
    /// The node's bus: devices are told to poll over it.
    bus: outpost_bus::Link,
    /// Messages to devices go out as tasks of the service.
    tasks: Tasks,
    /// How often devices are told to poll, seconds.
    poll_seconds: u64,
    /// Every rollout, oldest first (persisted on every change).
    rollouts: tokio::sync::Mutex<Vec<(String, Entry)>>,
}

impl Fleet {
    /// The fleet, with the rollouts the store held (`stored`).
    pub fn new(
        store: Arc<dyn Store>,
        artifacts: Arc<Artifacts>,
        devices: Arc<Devices>,
        bus: outpost_bus::Link,
        tasks: Tasks,
        poll_seconds: u64,
        stored: Vec<StoredRollout>,
    ) -> Self {
        Self {
            store,
            artifacts,
            devices,
            bus,
            tasks,
            poll_seconds,
            rollouts: tokio::sync::Mutex::new(stored.into_iter().map(Entry::restore).collect()),
        }
    }

    /// Tells online devices to poll now: a message on `<their command topic>/ota` on the
    /// node's broker (QoS 1, not retained), which a device subscribed with its own
    /// credential receives. Best effort: a device that misses it finds the update at its
    /// next poll.
    fn tell(&self, rollout: &str, devices: Vec<String>) {
        if devices.is_empty() {
            return;
        }
        let Some(bus) = self.bus.get().cloned() else {
            return;
        };
        let (view, rollout) = (self.devices.view().clone(), rollout.to_string());
        self.tasks.spawn_child(async move {
            let body = serde_json::json!({"poll": true, "rollout": rollout}).to_string();
            for name in devices {
                let topic = match view.device(&name).await.within(CREDENTIAL_GRACE) {
                    Some(d) => {
                        outpost_contracts::topics::device::DeviceTopics::of(&d).command + "/ota"
                    }
                    _ => continue,
                };
                if let Err(e) = bus.publish_raw(&topic, body.clone().into_bytes()).await {
                    tracing::debug!(device = name, error = %e, "cannot tell the device to poll");
                }
            }
        });
    }
}

impl Fleet {
    /// Makes `change` to rollout `name` and stores it with the reports it returns. When
    /// another instance stored a change since this one read the rollout (or `change` is
    /// refused by a state that may be old), the rollout is read again and `change` made
    /// over what is stored now. What the devices were before, and what `change` returned.
    async fn change<T>(
        &self,
        rollouts: &mut Vec<(String, Entry)>,
        name: &str,
        mut change: impl FnMut(&mut Entry) -> Result<(Vec<Report>, T), ApiError>,
    ) -> Result<(HashMap<String, DeviceState>, T), ApiError> {
        for _ in 0..16 {
            if entry(rollouts, name).is_err() && !self.reload(rollouts, name).await? {
                return Err(ApiError::not_found(format!("no rollout {name}")));
            }
            let e = entry(rollouts, name)?;
            let before = snapshot(&e.rollout);
            let saved = e.rollout.clone();
            let (reports, out) = match change(e) {
                Ok(done) => done,
                Err(err) => {
                    e.rollout = saved;
                    if self.reload(rollouts, name).await? {
                        continue;
                    }
                    return Err(err);
                }
            };
            match self
                .store
                .update_rollout(e.head(name), e.changed(&before), reports)
                .await
            {
                Ok(true) => {
                    e.revision += 1;
                    return Ok((before, out));
                }
                Ok(false) => {
                    e.rollout = saved;
                    self.reload(rollouts, name).await?;
                }
                Err(err) => {
                    e.rollout = saved;
                    return Err(ApiError::internal(err));
                }
            }
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "rollout {name} is changed by other instances faster than this one can; try again"
            ),
        ))
    }

    /// Reads rollout `name` again if the stored one is not the one held: whether it was.
    async fn reload(
        &self,
        rollouts: &mut Vec<(String, Entry)>,
        name: &str,
    ) -> Result<bool, ApiError> {
        let stored = self
            .store
            .rollout(name.to_string())
            .await
            .map_err(ApiError::internal)?;
        Ok(replace(rollouts, name, stored))
    }

    /// Follows what other instances sharing the database change: every second, rollouts
    /// whose stored revision is not the one held are read again, new ones added.
    pub async fn follow(self: Arc<Self>, stop: outpost_kit::Shutdown) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.wait() => return,
                _ = tick.tick() => {}
            }
            let stored = match self.store.revisions().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the rollouts' revisions");
                    continue;
                }
            };
            let stale: Vec<String> = {
                let rollouts = self.rollouts.lock().await;
                stored
                    .into_iter()
                    .filter(|(n, rev)| !rollouts.iter().any(|(m, e)| m == n && e.revision == *rev))
                    .map(|(n, _)| n)
                    .collect()
            };
            for name in stale {
                match self.store.rollout(name.clone()).await {
                    Ok(stored) => {
                        replace(&mut *self.rollouts.lock().await, &name, stored);
                    }
                    Err(e) => tracing::debug!(rollout = name, error = %e, "cannot read a rollout"),
                }
            }
        }
    }
}

/// The entry of rollout `name`.
fn entry<'a>(rollouts: &'a mut [(String, Entry)], name: &str) -> Result<&'a mut Entry, ApiError> {
    rollouts
        .iter_mut()
        .find(|(n, _)| n == name)
        .map(|(_, e)| e)
        .ok_or_else(|| ApiError::not_found(format!("no rollout {name}")))
}

/// Puts `stored` in place of rollout `name` (added, oldest first, if it was not held):
/// whether what is held changed.
fn replace(rollouts: &mut Vec<(String, Entry)>, name: &str, stored: Option<StoredRollout>) -> bool {
    let held = rollouts.iter().position(|(n, _)| n == name);
    match (held, stored) {
        (Some(i), Some(s)) if rollouts[i].1.revision == s.head.revision => false,
        (Some(i), Some(s)) => {
            rollouts[i] = Entry::restore(s);
            true
        }
        (None, Some(s)) => {
            let at = rollouts
                .iter()
                .position(|(_, e)| e.created_ms > s.head.created_ms)
                .unwrap_or(rollouts.len());
            rollouts.insert(at, Entry::restore(s));
            true
        }
        (Some(i), None) => {
            rollouts.remove(i);
            true
        }
        (None, None) => false,
    }
}

fn snapshot(r: &Rollout) -> HashMap<String, DeviceState> {
    r.devices().map(|(d, _, s)| (d.to_string(), s)).collect()
}

/// A rollout as the API shows it: every state counted, overall and per phase.
fn view(name: &str, e: &Entry) -> RolloutView {
    let (all, per) = e.rollout.counts();
    let counts = |m: &HashMap<DeviceState, u32>| -> Counts {
        DeviceState::ALL
            .iter()
            .map(|s| (*s, m.get(s).copied().unwrap_or(0)))
            .collect()
    };
    RolloutView {
        name: name.to_string(),
        artifact: ArtifactRef {
            name: e.artifact.0.clone(),
            version: e.artifact.1.clone(),
        },
        status: e.rollout.state.clone(),
        policy: e.rollout.policy.clone(),
        open_phase: e.rollout.open_phase(),
        devices: all.values().sum(),
        counts: counts(&all),
        phases: per
            .iter()
            .enumerate()
            .map(|(i, m)| PhaseView {
                phase: i,
                percent: e.rollout.policy.phases.get(i).copied(),
                devices: m.values().sum(),
                counts: counts(m),
            })
            .collect(),
        created_ms: e.created_ms,
    }
}

/// A rollout as `GET /rollout/name/{name}` and the actions answer it.
fn response(name: &str, e: &Entry) -> SortedKeys<RolloutResponse> {
    SortedKeys(RolloutResponse {
        base: BaseResponse::new(200),
        rollout: view(name, e),
    })
}

pub async fn create(State(app): State<Arc<Fleet>>, body: Bytes) -> Result<Response, ApiError> {
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
    let artifact = app
        .artifacts
        .find(req.artifact.name.clone(), req.artifact.version.clone())
        .await?;
    // The devices: named ones, or all that carry the labels; only compatible ones.
    let mut candidates = Vec::new();
    if req.target.labels.is_empty() && req.target.group.is_none() {
        for d in &req.target.devices {
            match app.devices.device(d).await.map_err(|e| e.to_api_error())? {
                Some(dev) => candidates.push(dev),
                None => return Err(ApiError::not_found(format!("no device {d}"))),
            }
        }
    } else {
        let (mut labels, mut profile) = (req.target.labels.clone(), String::new());
        if let Some(g) = &req.target.group {
            let group = app.devices.group(g).await?;
            labels.extend(group.labels);
            profile = group.profile;
        }
        candidates.extend(
            app.devices
                .select(&labels, &profile)
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
        revision: 0,
    };
    let mut rollouts = app.rollouts.lock().await;
    app.reload(&mut rollouts, &req.name).await?;
    if rollouts.iter().any(|(n, _)| *n == req.name) {
        return Err(ApiError::conflict(format!("rollout {} exists", req.name)));
    }
    let name = req.name.clone();
    let body = SortedKeys(view(&name, &entry));
    app.store
        .add_rollout(StoredRollout {
            head: entry.head(&name),
            devices: entry.changed(&HashMap::new()),
        })
        .await
        .map_err(ApiError::internal)?;
    app.tell(&name, newly_offered(&HashMap::new(), &entry.rollout));
    rollouts.push((name.clone(), entry));
    tracing::info!(rollout = name, misfits = misfit.len(), "rollout created");
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn all(State(app): State<Arc<Fleet>>) -> Response {
    let rollouts = app.rollouts.lock().await;
    let list: Vec<_> = rollouts.iter().map(|(n, e)| view(n, e)).collect();
    Json(SortedKeys(MultiRolloutsResponse {
        page: BaseWithTotalCountResponse::new(list.len() as u64),
        rollouts: list,
    }))
    .into_response()
}

pub async fn one(
    State(app): State<Arc<Fleet>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let rollouts = app.rollouts.lock().await;
    let (n, e) = rollouts
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| ApiError::not_found(format!("no rollout {name}")))?;
    Ok(Json(response(n, e)).into_response())
}

/// pause, resume or cancel.
pub async fn control(
    State(app): State<Arc<Fleet>>,
    Path((name, verb)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !matches!(verb.as_str(), "pause" | "resume" | "cancel") {
        return Err(ApiError::not_found(format!(
            "no action {verb} (pause, resume, cancel)"
        )));
    }
    let mut rollouts = app.rollouts.lock().await;
    app.change(&mut rollouts, &name, |e| {
        let done = match verb.as_str() {
            "pause" => e.rollout.pause(),
            "resume" => e.rollout.resume(),
            _ => e.rollout.cancel(),
        };
        if done {
            Ok((Vec::new(), ()))
        } else {
            Err(ApiError::conflict(format!(
                "rollout {name} cannot {verb} now ({:?})",
                e.rollout.state
            )))
        }
    })
    .await?;
    let e = entry(&mut rollouts, &name)?;
    if verb == "resume" {
        app.tell(&name, newly_offered(&HashMap::new(), &e.rollout));
    }
    tracing::info!(rollout = name, action = verb, "rollout {verb}");
    Ok(Json(response(&name, e)).into_response())
}

pub async fn device_history(
    State(app): State<Arc<Fleet>>,
    Path((name, device)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let state = {
        let rollouts = app.rollouts.lock().await;
        let (_, e) = rollouts
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| ApiError::not_found(format!("no rollout {name}")))?;
        e.rollout.state_of(&device).ok_or_else(|| {
            ApiError::not_found(format!("device {device} is not in rollout {name}"))
        })?
    };
    let history = app
        .store
        .history(name.clone(), device.clone())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(SortedKeys(DeviceHistoryResponse {
        base: BaseResponse::new(200),
        rollout: name,
        device,
        state,
        history,
    }))
    .into_response())
}

// ---- the device protocol ----

/// Devices offered the update now that were not in `before`.
fn newly_offered(before: &HashMap<String, DeviceState>, r: &Rollout) -> Vec<String> {
    r.devices()
        .filter(|(d, _, s)| {
            *s == DeviceState::Offered && before.get(*d) != Some(&DeviceState::Offered)
        })
        .map(|(d, _, _)| d.to_string())
        .collect()
}

/// The action offered to `device`, newest rollout first.
fn action_for<'a>(rollouts: &'a [(String, Entry)], device: &str) -> Option<&'a (String, Entry)> {
    rollouts
        .iter()
        .rev()
        .find(|(_, e)| e.rollout.offers(device))
}

pub async fn poll(
    State(app): State<Arc<Fleet>>,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.devices.authenticate(&device, &headers).await?;
    let action = {
        let rollouts = app.rollouts.lock().await;
        action_for(&rollouts, &device)
            .map(|(n, e)| (n.clone(), e.artifact.clone(), e.rollout.state_of(&device)))
    };
    let action = match action {
        Some((rollout, (name, version), state)) => {
            let a = app.artifacts.find(name.clone(), version.clone()).await?;
            Some(ddi::Action {
                state: state.map(DeviceState::name),
                artifact: ddi::ActionArtifact {
                    name,
                    version,
                    size: a.manifest.size,
                    sha256: a.manifest.sha256,
                    payload_type: a.manifest.payload_type,
                    manifest_base64: a.manifest_base64,
                    signature: a.signature,
                    key_id: a.key_id,
                },
                download: format!("/api/v3/ddi/{device}/action/{rollout}/payload"),
                feedback: format!("/api/v3/ddi/{device}/action/{rollout}/feedback"),
                id: rollout,
            })
        }
        None => None,
    };
    let body = ddi::Poll {
        poll_seconds: app.poll_seconds,
        action,
    };
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

pub async fn feedback(
    State(app): State<Arc<Fleet>>,
    Path((device, rollout)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    app.devices.authenticate(&device, &headers).await?;
    let fb = ddi::Feedback::parse(&body).map_err(ApiError::bad_request)?;
    let mut rollouts = app.rollouts.lock().await;
    let (before, (saved, was)) = app
        .change(&mut rollouts, &rollout, |e| {
            let saved = e.rollout.state.clone();
            e.rollout
                .report(&device, fb.status)
                .map_err(|err| match err {
                    ReportError::UnknownDevice(_) | ReportError::NotOffered(_) => {
                        ApiError::not_found(format!("device {device} has no action {rollout}"))
                    }
                    other => ApiError::conflict(other.to_string()),
                })?;
            let reports = vec![Report {
                device: device.clone(),
                status: fb.status.name(),
                details: fb.details.clone(),
            }];
            Ok((reports, (saved, e.rollout.state.clone())))
        })
        .await
        .map_err(|e| {
            if e.status == StatusCode::NOT_FOUND && e.message.starts_with("no rollout") {
                ApiError::not_found(format!("no action {rollout}"))
            } else {
                e
            }
        })?;
    let opened = newly_offered(&before, &entry(&mut rollouts, &rollout)?.rollout);
    drop(rollouts);
    if let RolloutState::Paused {
        reason,
        automatic: true,
    } = &was
        && saved == RolloutState::Running
    {
        tracing::warn!(rollout, reason, "rollout paused by itself");
    }
    app.tell(&rollout, opened);
    Ok(Json(BaseResponse::new(200)).into_response())
}

pub async fn payload(
    State(app): State<Arc<Fleet>>,
    Path((device, rollout)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.devices.authenticate(&device, &headers).await?;
    let artifact = {
        let mut rollouts = app.rollouts.lock().await;
        // What is held may be a second older than what another instance stored (a phase
        // it just opened): read again before refusing.
        let offered = |rollouts: &mut Vec<(String, Entry)>| {
            entry(rollouts, &rollout)
                .ok()
                .filter(|e| e.rollout.offers(&device))
                .map(|e| e.artifact.clone())
        };
        match offered(&mut rollouts) {
            Some(a) => a,
            None => {
                app.reload(&mut rollouts, &rollout).await?;
                if entry(&mut rollouts, &rollout).is_err() {
                    return Err(ApiError::not_found(format!("no action {rollout}")));
                }
                offered(&mut rollouts).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!("device {device} has no open action {rollout}"),
                    )
                })?
            }
        }
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info!(device, rollout, range, "device download");
    app.artifacts
        .serve_payload(artifact.0, artifact.1, &headers)
        .await
}
