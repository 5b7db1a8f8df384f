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
//! Attributes are written when reported; check-in times are kept by [`Devices`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use outpost_contracts::common::{BaseResponse, BaseWithTotalCountResponse, SortedKeys};
use outpost_contracts::ddi::Reported;
use outpost_contracts::metadata::Device;
use outpost_contracts::now_millis as now_ms;
use outpost_contracts::ota::{
    CheckIn, GroupCreated, GroupResponse, GroupSummary, InventoryDevice, InventoryResponse,
    MultiGroupsResponse, MultiInventoryResponse,
};
use outpost_kit::ApiError;
use outpost_kit::error::Path;
use serde::Deserialize;

use crate::devices::{Devices, valid_name};
use crate::store::{Attributes, Group, Store};

/// The inventory and groups.
pub struct Inventory {
    store: Arc<dyn Store>,
    devices: Arc<Devices>,
    /// What each device reported last (a copy of what is stored).
    attributes: Mutex<HashMap<String, Attributes>>,
    /// A device not seen for this long is overdue.
    overdue_ms: i64,
}

impl Inventory {
    /// `attributes`: what devices reported before, as stored.
    pub fn new(
        store: Arc<dyn Store>,
        devices: Arc<Devices>,
        attributes: HashMap<String, Attributes>,
        overdue_ms: i64,
    ) -> Self {
        Self {
            store,
            devices,
            attributes: Mutex::new(attributes),
            overdue_ms,
        }
    }

    fn attributes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attributes>> {
        self.attributes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn view(&self, d: &Device) -> InventoryDevice {
        let seen = self.devices.last_seen(&d.name);
        let check_in = match seen {
            None => CheckIn::Never,
            Some(t) if now_ms() - t > self.overdue_ms => CheckIn::Overdue,
            Some(_) => CheckIn::Ok,
        };
        InventoryDevice {
            name: d.name.clone(),
            profile_name: d.profile_name.clone(),
            labels: d.labels.clone(),
            admin_state: d.admin_state,
            attributes: self.attributes().get(&d.name).cloned().unwrap_or_default(),
            last_seen_ms: seen,
            check_in,
            overdue: check_in == CheckIn::Overdue,
        }
    }
}

/// The device reports its attributes.
pub async fn put_attributes(
    State(app): State<Arc<Inventory>>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    app.devices.authenticate(&device, &headers).await?;
    let r = Reported::parse(&body).map_err(ApiError::bad_request)?;
    app.store
        .set_attributes(device.clone(), r.attributes.clone())
        .await
        .map_err(ApiError::internal)?;
    app.attributes().insert(device, r.attributes);
    Ok(Json(BaseResponse::new(200)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct Filter {
    labels: Option<String>,
    group: Option<String>,
}

pub async fn all(
    State(app): State<Arc<Inventory>>,
    Query(f): Query<Filter>,
) -> Result<Response, ApiError> {
    let (mut labels, mut profile) = (Vec::new(), String::new());
    if let Some(g) = &f.group {
        let group = app.devices.group(g).await?;
        (labels, profile) = (group.labels, group.profile);
    }
    if let Some(l) = &f.labels {
        labels.extend(l.split(',').filter(|s| !s.is_empty()).map(str::to_string));
    }
    let devices = app.devices.select(&labels, &profile).await?;
    let devices: Vec<_> = devices.iter().map(|d| app.view(d)).collect();
    Ok(Json(SortedKeys(MultiInventoryResponse {
        page: BaseWithTotalCountResponse::new(devices.len() as u64),
        devices,
    }))
    .into_response())
}

pub async fn one(
    State(app): State<Arc<Inventory>>,
    Path(device): Path<String>,
) -> Result<Response, ApiError> {
    let d = app
        .devices
        .device(&device)
        .await
        .map_err(|e| e.to_api_error())?
        .ok_or_else(|| ApiError::not_found(format!("no device {device}")))?;
    Ok(Json(SortedKeys(InventoryResponse {
        base: BaseResponse::new(200),
        device: app.view(&d),
    }))
    .into_response())
}

pub async fn group_create(
    State(app): State<Arc<Inventory>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let group: Group = outpost_kit::error::parse_json(&body)?;
    if !valid_name(&group.name) {
        return Err(ApiError::bad_request(
            "a group name is 1 to 128 letters, digits, '-', '_' or '.'",
        ));
    }
    if group.labels.is_empty() && group.profile.is_empty() {
        return Err(ApiError::bad_request(
            "a group selects by labels, a profile, or both",
        ));
    }
    let name = group.name.clone();
    let added = app
        .store
        .add_group(group, now_ms())
        .await
        .map_err(ApiError::internal)?;
    if !added {
        return Err(ApiError::conflict(format!("group {name} exists")));
    }
    let created = GroupCreated {
        base: BaseResponse::new(201),
        name,
    };
    Ok((StatusCode::CREATED, Json(SortedKeys(created))).into_response())
}

pub async fn group_all(State(app): State<Arc<Inventory>>) -> Result<Response, ApiError> {
    let rows = app.store.groups().await.map_err(ApiError::internal)?;
    let mut groups = Vec::new();
    for g in rows {
        let members = app.devices.select(&g.labels, &g.profile).await?.len();
        groups.push(GroupSummary {
            name: g.name,
            labels: g.labels,
            profile: g.profile,
            members,
        });
    }
    Ok(Json(SortedKeys(MultiGroupsResponse {
        page: BaseWithTotalCountResponse::new(groups.len() as u64),
        groups,
    }))
    .into_response())
}

pub async fn group_one(
    State(app): State<Arc<Inventory>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let Group {
        labels, profile, ..
    } = app.devices.group(&name).await?;
    let members: Vec<String> = app
        .devices
        .select(&labels, &profile)
        .await?
        .into_iter()
        .map(|d| d.name)
        .collect();
    Ok(Json(SortedKeys(GroupResponse {
        base: BaseResponse::new(200),
        name,
        labels,
        profile,
        members,
    }))
    .into_response())
}

pub async fn group_delete(
    State(app): State<Arc<Inventory>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let gone = app
        .store
        .delete_group(name.clone())
        .await
        .map_err(ApiError::internal)?;
    if !gone {
        return Err(ApiError::not_found(format!("no group {name}")));
    }
    Ok(Json(BaseResponse::new(200)).into_response())
}
