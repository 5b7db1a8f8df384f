//! The rules of core-metadata: validation, references between objects, and announcements.
//!
//! Writes are serialized by one lock, so a reference check and the write it guards are
//! atomic: a device can never be added for a profile that is being deleted, and a profile
//! in use can never be deleted. Reads are not serialized.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use outpost_contracts::common::BaseRequest;
use outpost_contracts::metadata::{
    AddDeviceRequest, Device, DeviceCommand, DeviceProfile, DeviceResource, DeviceService,
    ProvisionWatcher, UnitsOfMeasure, UpdateDevice, UpdateDeviceCommand,
    UpdateDeviceProfileBasicInfo, UpdateDeviceResource, UpdateDeviceService,
    UpdateProvisionWatcher, UpdateTags,
};
use outpost_contracts::system_event::{
    ACTION_ADD, ACTION_DELETE, ACTION_UPDATE, TYPE_DEVICE, TYPE_DEVICE_PROFILE,
    TYPE_DEVICE_SERVICE, TYPE_PROVISION_WATCHER,
};
use outpost_contracts::{names, now_millis};
use outpost_kit::ApiError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::config::{Config, Writable};
use crate::enrollment::Enrollment;
use crate::events::Announcer;
use crate::store::{Doc, Filter, Kind, Refs, Store, StoreError};
use outpost_kit::writable::Live;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate(..) => ApiError::conflict(e.to_string()),
            StoreError::Missing(..) => ApiError::not_found(e.to_string()),
            StoreError::Storage(s) => ApiError::internal(s),
        }
    }
}

/// A metadata object and how it is stored and announced.
pub trait Object: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const KIND: Kind;
    const EVENT_TYPE: &'static str;
    fn id(&self) -> &str;
    fn name(&self) -> &str;
    fn created(&self) -> i64;
    fn stamp(&mut self, id: String, created: i64, modified: i64);
    fn refs(&self) -> Refs;
    /// Owner and optional profile segment of the system event topic.
    fn topic(&self) -> (String, Option<String>);
    /// Identifying fields for pithy system events.
    fn brief(&self) -> serde_json::Value;
}

macro_rules! stamp_fields {
    () => {
        fn id(&self) -> &str {
            &self.id
        }
        fn name(&self) -> &str {
            &self.name
        }
        fn created(&self) -> i64 {
            self.created
        }
        fn stamp(&mut self, id: String, created: i64, modified: i64) {
            self.id = id;
            self.created = created;
            self.modified = modified;
            self.api_version.clear();
        }
    };
}

impl Object for Device {
    const KIND: Kind = Kind::Device;
    const EVENT_TYPE: &'static str = TYPE_DEVICE;
    stamp_fields!();
    fn refs(&self) -> Refs {
        Refs {
            service: self.service_name.clone(),
            profile: self.profile_name.clone(),
            parent: self.parent.clone(),
            labels: self.labels.clone(),
            ..Refs::default()
        }
    }
    fn topic(&self) -> (String, Option<String>) {
        (self.service_name.clone(), Some(self.profile_name.clone()))
    }
    fn brief(&self) -> serde_json::Value {
        json!({"id": self.id, "name": self.name, "serviceName": self.service_name, "profileName": self.profile_name})
    }
}

impl Object for DeviceProfile {
    const KIND: Kind = Kind::Profile;
    const EVENT_TYPE: &'static str = TYPE_DEVICE_PROFILE;
    stamp_fields!();
    fn refs(&self) -> Refs {
        Refs {
            manufacturer: self.manufacturer.clone(),
            model: self.model.clone(),
            labels: self.labels.clone(),
            ..Refs::default()
        }
    }
    fn topic(&self) -> (String, Option<String>) {
        (crate::SERVICE.to_string(), Some(self.name.clone()))
    }
    fn brief(&self) -> serde_json::Value {
        json!({"id": self.id, "name": self.name})
    }
}

impl Object for DeviceService {
    const KIND: Kind = Kind::Service;
    const EVENT_TYPE: &'static str = TYPE_DEVICE_SERVICE;
    stamp_fields!();
    fn refs(&self) -> Refs {
        Refs {
            labels: self.labels.clone(),
            ..Refs::default()
        }
    }
    fn topic(&self) -> (String, Option<String>) {
        (self.name.clone(), None)
    }
    fn brief(&self) -> serde_json::Value {
        json!({"id": self.id, "name": self.name})
    }
}

impl Object for ProvisionWatcher {
    const KIND: Kind = Kind::Watcher;
    const EVENT_TYPE: &'static str = TYPE_PROVISION_WATCHER;
    stamp_fields!();
    fn refs(&self) -> Refs {
        Refs {
            service: self.service_name.clone(),
            profile: self.discovered_device.profile_name.clone(),
            labels: self.labels.clone(),
            ..Refs::default()
        }
    }
    fn topic(&self) -> (String, Option<String>) {
        (
            self.service_name.clone(),
            Some(self.discovered_device.profile_name.clone()),
        )
    }
    fn brief(&self) -> serde_json::Value {
        json!({"id": self.id, "name": self.name, "serviceName": self.service_name})
    }
}

fn to_doc<T: Object>(obj: &T) -> Result<Doc, ApiError> {
    Ok(Doc {
        id: obj.id().to_string(),
        name: obj.name().to_string(),
        modified: now_millis(),
        refs: obj.refs(),
        body: serde_json::to_string(obj).map_err(ApiError::internal)?,
    })
}

fn from_doc<T: Object>(doc: Doc) -> Result<T, ApiError> {
    serde_json::from_str(&doc.body).map_err(ApiError::internal)
}

/// How an object to update is identified: by id if given, else by name.
fn identify(
    id: &Option<String>,
    name: &Option<String>,
) -> Result<(Option<String>, Option<String>), ApiError> {
    match (
        id.as_deref().filter(|s| !s.is_empty()),
        name.as_deref().filter(|s| !s.is_empty()),
    ) {
        (None, None) => Err(ApiError::bad_request("either id or name is required")),
        (id, name) => Ok((id.map(str::to_string), name.map(str::to_string))),
    }
}

pub struct Metadata {
    pub(crate) store: Arc<dyn Store>,
    uom: UnitsOfMeasure,
    announcer: Announcer,
    /// Serializes writes (see the module documentation).
    pub(crate) lock: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    pub(crate) enrollment: Enrollment,
    /// The settings core-keeper can change while it runs.
    live: Live<Writable>,
}

impl Metadata {
    pub fn new(
        store: Arc<dyn Store>,
        cfg: Config,
        uom: UnitsOfMeasure,
        announcer: Announcer,
    ) -> Self {
        let http =
            outpost_kit::http::client(Duration::from_millis(cfg.device_validation_timeout_ms));
        Self {
            store,
            live: Live::fixed(Writable::from(&cfg)),
            uom,
            announcer,
            lock: tokio::sync::Mutex::new(()),
            http,
            enrollment: Enrollment::default(),
        }
    }

    /// Follows the writable settings core-keeper holds instead of the configuration's.
    pub fn with_writable(mut self, live: Live<Writable>) -> Self {
        self.live = live;
        self
    }

    /// Enables certificates and zero-touch enrollment.
    pub fn with_enrollment(mut self, e: Enrollment) -> Self {
        self.enrollment = e;
        self
    }

    pub fn uom(&self) -> &UnitsOfMeasure {
        &self.uom
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    // ---- generic object access ----

    pub async fn get<T: Object>(&self, name: &str) -> Result<T, ApiError> {
        match self.store.by_name(T::KIND, name).await? {
            Some(doc) => from_doc(doc),
            None => Err(ApiError::not_found(format!(
                "{} '{name}' does not exist{}",
                T::KIND.label(),
                self.nearest(T::KIND, name).await
            ))),
        }
    }

    /// " (did you mean 'x'?)" for a `kind` named `name` that does not exist, or nothing;
    /// looks at the 1,000 most recently changed names at most.
    async fn nearest(&self, kind: Kind, name: &str) -> String {
        match self.store.names(kind, 1000).await {
            Ok(names) => outpost_kit::edgex::did_you_mean(name, names.iter().map(String::as_str)),
            Err(_) => String::new(),
        }
    }

    pub(crate) async fn find<T: Object>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.store.by_name(T::KIND, name).await? {
            Some(doc) => from_doc(doc).map(Some),
            None => Ok(None),
        }
    }

    pub async fn get_by_id<T: Object>(&self, id: &str) -> Result<T, ApiError> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(ApiError::bad_request(format!("id '{id}' is not a UUID")));
        }
        match self.store.by_id(T::KIND, id).await? {
            Some(doc) => from_doc(doc),
            None => Err(ApiError::not_found(format!(
                "{} with id '{id}' does not exist",
                T::KIND.label()
            ))),
        }
    }

    pub(crate) async fn get_for_update<T: Object>(
        &self,
        id: &Option<String>,
        name: &Option<String>,
    ) -> Result<T, ApiError> {
        let (id, name) = identify(id, name)?;
        match (id, name) {
            (Some(id), _) => self.get_by_id(&id).await,
            (None, Some(name)) => self.get(&name).await,
            (None, None) => Err(ApiError::bad_request("either id or name is required")),
        }
    }

    pub async fn list<T: Object>(
        &self,
        filter: Filter,
        offset: u64,
        limit: u64,
    ) -> Result<(u64, Vec<T>), ApiError> {
        let (total, docs) = self.store.list(T::KIND, filter, offset, limit).await?;
        if outpost_contracts::common::Paging::out_of_range(offset, total) {
            return Err(ApiError::range_not_satisfiable(offset, total));
        }
        let items = docs
            .into_iter()
            .map(from_doc)
            .collect::<Result<Vec<T>, _>>()?;
        Ok((total, items))
    }

    pub(crate) async fn insert<T: Object>(&self, mut obj: T) -> Result<T, ApiError> {
        let now = now_millis();
        obj.stamp(uuid::Uuid::new_v4().to_string(), now, now);
        self.store.insert(T::KIND, to_doc(&obj)?).await?;
        self.announce(ACTION_ADD, &obj);
        Ok(obj)
    }

    /// Stores `obj` over `old` (same id and creation time).
    pub(crate) async fn replace<T: Object>(&self, old: &T, mut obj: T) -> Result<T, ApiError> {
        obj.stamp(old.id().to_string(), old.created(), now_millis());
        self.store.replace(T::KIND, to_doc(&obj)?).await?;
        self.announce(ACTION_UPDATE, &obj);
        if T::KIND == Kind::Profile {
            // Device services cache the profiles of their devices and listen under their
            // own name: each one using this profile hears of the change there too.
            match self.store.services_using_profile(obj.name()).await {
                Ok(services) => {
                    for service in services {
                        self.announce_to(ACTION_UPDATE, &obj, &service, Some(obj.name()));
                    }
                }
                Err(e) => {
                    tracing::error!(profile = obj.name(), error = %e, "cannot tell device services of a profile update");
                }
            }
        }
        Ok(obj)
    }

    pub(crate) fn announce<T: Object>(&self, action: &str, obj: &T) {
        let (owner, profile) = obj.topic();
        self.announce_to(action, obj, &owner, profile.as_deref());
    }

    fn announce_to<T: Object>(&self, action: &str, obj: &T, owner: &str, profile: Option<&str>) {
        self.announcer
            .announce(T::EVENT_TYPE, action, owner, profile, obj.brief(), || {
                serde_json::to_value(obj).unwrap_or_default()
            });
    }

    async fn count(&self, kind: Kind, filter: Filter) -> Result<u64, ApiError> {
        Ok(self.store.count(kind, filter).await?)
    }

    // ---- device services ----

    pub async fn add_service(&self, s: DeviceService) -> Result<String, ApiError> {
        s.validate().map_err(ApiError::bad_request)?;
        let _w = self.lock.lock().await;
        Ok(self.insert(s).await?.id)
    }

    pub async fn update_service(&self, u: UpdateDeviceService) -> Result<(), ApiError> {
        let _w = self.lock.lock().await;
        let old: DeviceService = self.get_for_update(&u.id, &u.name).await?;
        // With both, the id finds it and the name must be its own (EdgeX: 400, no rename).
        if let Some(name) = u.name.as_deref().filter(|n| !n.is_empty())
            && name != old.name
        {
            return Err(ApiError::bad_request(format!(
                "device service name '{name}' does not match '{}', the name of its id",
                old.name
            )));
        }
        let mut new = old.clone();
        u.apply(&mut new);
        new.validate().map_err(ApiError::bad_request)?;
        if new.name != old.name {
            self.ensure_service_unused(&old.name).await?;
        }
        self.replace(&old, new).await?;
        Ok(())
    }

    async fn ensure_service_unused(&self, name: &str) -> Result<(), ApiError> {
        let by_service = Filter {
            service: Some(name.to_string()),
            ..Filter::default()
        };
        let devices = self.count(Kind::Device, by_service.clone()).await?;
        let watchers = self.count(Kind::Watcher, by_service).await?;
        if devices + watchers > 0 {
            return Err(ApiError::conflict(format!(
                "device service '{name}' is in use by {devices} device(s) and {watchers} provision watcher(s)"
            )));
        }
        Ok(())
    }

    pub async fn delete_service(&self, name: &str) -> Result<(), ApiError> {
        let _w = self.lock.lock().await;
        let old: DeviceService = self.get(name).await?;
        self.ensure_service_unused(name).await?;
        self.store.delete(Kind::Service, name).await?;
        self.announce(ACTION_DELETE, &old);
        Ok(())
    }

    // ---- device profiles ----

    fn validate_profile(&self, p: &DeviceProfile) -> Result<(), ApiError> {
        let known = |u: &str| self.uom.contains(u);
        let units: Option<&dyn Fn(&str) -> bool> = if self.live.get().uom.validation {
            Some(&known)
        } else {
            None
        };
        p.validate(units).map_err(ApiError::bad_request)?;
        for w in p.warnings() {
            tracing::warn!(profile = p.name, "{w}; stored as EdgeX does");
        }
        Ok(())
    }

    async fn devices_of_profile(&self, profile: &str) -> Result<Vec<Device>, ApiError> {
        let filter = Filter {
            profile: Some(profile.to_string()),
            ..Filter::default()
        };
        Ok(self.list::<Device>(filter, 0, u64::MAX).await?.1)
    }

    async fn profile_in_use(&self, name: &str) -> Result<(u64, u64), ApiError> {
        let by_profile = Filter {
            profile: Some(name.to_string()),
            ..Filter::default()
        };
        Ok((
            self.count(Kind::Device, by_profile.clone()).await?,
            self.count(Kind::Watcher, by_profile).await?,
        ))
    }

    /// Refuses replacing a profile or removing from it while profiles are locked
    /// (`StrictDeviceProfileChanges`, EdgeX: 423).
    fn ensure_changes_allowed(&self) -> Result<(), ApiError> {
        if self.live.get().profile_change.strict_device_profile_changes {
            return Err(ApiError::locked(
                "profile change is not allowed while StrictDeviceProfileChanges is on",
            ));
        }
        Ok(())
    }

    /// Refuses removing a resource or command from a profile devices use (EdgeX: 409).
    async fn ensure_no_devices(&self, profile: &str, what: &str) -> Result<(), ApiError> {
        let (devices, _) = self.profile_in_use(profile).await?;
        if devices > 0 {
            return Err(ApiError::conflict(format!(
                "{what} cannot be removed: device profile '{profile}' is used by {devices} device(s)"
            )));
        }
        Ok(())
    }

    /// Every source its devices' auto events name must still exist in the new profile.
    async fn ensure_sources_kept(&self, new: &DeviceProfile) -> Result<(), ApiError> {
        for d in self.devices_of_profile(&new.name).await? {
            for ae in &d.auto_events {
                if new.resource(&ae.source_name).is_none() && new.command(&ae.source_name).is_none()
                {
                    return Err(ApiError::conflict(format!(
                        "device '{}' reads '{}' in an autoEvent; the profile must keep it",
                        d.name, ae.source_name
                    )));
                }
            }
        }
        Ok(())
    }

    pub async fn add_profile(&self, p: DeviceProfile) -> Result<String, ApiError> {
        self.validate_profile(&p)?;
        let _w = self.lock.lock().await;
        let mut p = p;
        p.linked_device_count = None;
        Ok(self.insert(p).await?.id)
    }

    /// Replaces a whole profile (PUT), identified by id if given, else by name.
    pub async fn update_profile(&self, p: DeviceProfile) -> Result<(), ApiError> {
        self.validate_profile(&p)?;
        let _w = self.lock.lock().await;
        let id = (!p.id.is_empty()).then(|| p.id.clone());
        let old: DeviceProfile = self.get_for_update(&id, &Some(p.name.clone())).await?;
        self.ensure_changes_allowed()?;
        if p.name != old.name {
            let (devices, watchers) = self.profile_in_use(&old.name).await?;
            if devices + watchers > 0 {
                return Err(ApiError::conflict(format!(
                    "device profile '{}' is in use; it cannot be renamed",
                    old.name
                )));
            }
        }
        self.ensure_sources_kept(&p).await?;
        let mut p = p;
        p.linked_device_count = None;
        self.replace(&old, p).await?;
        Ok(())
    }

    pub async fn profile(&self, name: &str) -> Result<DeviceProfile, ApiError> {
        let mut p: DeviceProfile = self.get(name).await?;
        let (devices, _) = self.profile_in_use(name).await?;
        p.linked_device_count = Some(devices);
        Ok(p)
    }

    pub async fn profiles(
        &self,
        filter: Filter,
        offset: u64,
        limit: u64,
    ) -> Result<(u64, Vec<DeviceProfile>), ApiError> {
        let (total, mut list) = self.list::<DeviceProfile>(filter, offset, limit).await?;
        let counts = self
            .store
            .devices_per_profile(list.iter().map(|p| p.name.clone()).collect())
            .await?;
        for (p, (_, n)) in list.iter_mut().zip(counts) {
            p.linked_device_count = Some(n);
        }
        Ok((total, list))
    }

    pub async fn delete_profile(&self, name: &str) -> Result<(), ApiError> {
        let _w = self.lock.lock().await;
        let old: DeviceProfile = self.get(name).await?;
        if self.live.get().profile_change.strict_device_profile_deletes {
            return Err(ApiError::locked(
                "profile deletion is not allowed while StrictDeviceProfileDeletes is on",
            ));
        }
        let (devices, watchers) = self.profile_in_use(name).await?;
        if devices + watchers > 0 {
            return Err(ApiError::conflict(format!(
                "device profile '{name}' is in use by {devices} device(s) and {watchers} provision watcher(s)"
            )));
        }
        self.store.delete(Kind::Profile, name).await?;
        self.announce(ACTION_DELETE, &old);
        Ok(())
    }

    pub async fn update_basic_info(&self, u: UpdateDeviceProfileBasicInfo) -> Result<(), ApiError> {
        let _w = self.lock.lock().await;
        let old: DeviceProfile = self.get_for_update(&u.id, &u.name).await?;
        let mut new = old.clone();
        if let (Some(name), Some(_)) = (&u.name, &u.id)
            && name != &old.name
        {
            names::check("name", name).map_err(ApiError::bad_request)?;
            let (devices, watchers) = self.profile_in_use(&old.name).await?;
            if devices + watchers > 0 {
                return Err(ApiError::conflict(format!(
                    "device profile '{}' is in use; it cannot be renamed",
                    old.name
                )));
            }
            new.name = name.clone();
        }
        if let Some(v) = u.description {
            new.description = v;
        }
        if let Some(v) = u.manufacturer {
            new.manufacturer = v;
        }
        if let Some(v) = u.model {
            new.model = v;
        }
        if let Some(v) = u.labels {
            new.labels = v;
        }
        self.replace(&old, new).await?;
        Ok(())
    }

    /// Edits a profile in place; `edit` validates and changes it.
    async fn edit_profile(
        &self,
        name: &str,
        edit: impl FnOnce(&mut DeviceProfile) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let _w = self.lock.lock().await;
        let old: DeviceProfile = self.get(name).await?;
        let mut new = old.clone();
        edit(&mut new)?;
        self.validate_profile(&new)?;
        self.ensure_sources_kept(&new).await?;
        self.replace(&old, new).await?;
        Ok(())
    }

    pub async fn update_tags(
        &self,
        name: &str,
        resources: Vec<UpdateTags>,
        commands: Vec<UpdateTags>,
    ) -> Result<(), ApiError> {
        self.edit_profile(name, |p| {
            for t in resources {
                let r = p
                    .device_resources
                    .iter_mut()
                    .find(|r| r.name == t.name)
                    .ok_or_else(|| {
                        ApiError::not_found(format!("device resource '{}' does not exist", t.name))
                    })?;
                r.tags.get_or_insert_with(Default::default).extend(t.tags);
            }
            for t in commands {
                let c = p
                    .device_commands
                    .iter_mut()
                    .find(|c| c.name == t.name)
                    .ok_or_else(|| {
                        ApiError::not_found(format!("device command '{}' does not exist", t.name))
                    })?;
                c.tags.get_or_insert_with(Default::default).extend(t.tags);
            }
            Ok(())
        })
        .await
    }

    pub async fn add_resource(&self, profile: &str, r: DeviceResource) -> Result<(), ApiError> {
        self.edit_profile(profile, |p| {
            if p.resource(&r.name).is_some() || p.command(&r.name).is_some() {
                // A duplicate name fails the profile's validation (EdgeX: 400).
                return Err(ApiError::bad_request(format!(
                    "device profile '{}' already has a resource or command '{}'",
                    p.name, r.name
                )));
            }
            p.device_resources.push(r);
            Ok(())
        })
        .await
    }

    pub async fn update_resource(
        &self,
        profile: &str,
        u: UpdateDeviceResource,
    ) -> Result<(), ApiError> {
        self.edit_profile(profile, |p| {
            let r = p
                .device_resources
                .iter_mut()
                .find(|r| r.name == u.name)
                .ok_or_else(|| {
                    ApiError::not_found(format!("device resource '{}' does not exist", u.name))
                })?;
            if let Some(d) = u.description {
                r.description = d;
            }
            if let Some(h) = u.is_hidden {
                r.is_hidden = h;
            }
            Ok(())
        })
        .await
    }

    pub async fn delete_resource(&self, profile: &str, resource: &str) -> Result<(), ApiError> {
        self.ensure_changes_allowed()?;
        self.ensure_no_devices(profile, &format!("device resource '{resource}'"))
            .await?;
        self.edit_profile(profile, |p| {
            let before = p.device_resources.len();
            p.device_resources.retain(|r| r.name != resource);
            if p.device_resources.len() == before {
                return Err(ApiError::not_found(format!(
                    "device resource '{resource}' does not exist"
                )));
            }
            if let Some(c) = p.device_commands.iter().find(|c| {
                c.resource_operations
                    .iter()
                    .any(|op| op.device_resource == resource)
            }) {
                return Err(ApiError::conflict(format!(
                    "device resource '{resource}' is used by device command '{}'",
                    c.name
                )));
            }
            Ok(())
        })
        .await
    }

    pub async fn resource(
        &self,
        profile: &str,
        resource: &str,
    ) -> Result<DeviceResource, ApiError> {
        let p: DeviceProfile = self.get(profile).await?;
        p.resource(resource).cloned().ok_or_else(|| {
            ApiError::not_found(format!(
                "device resource '{resource}' does not exist in profile '{profile}'"
            ))
        })
    }

    pub async fn add_command(&self, profile: &str, c: DeviceCommand) -> Result<(), ApiError> {
        self.edit_profile(profile, |p| {
            if p.resource(&c.name).is_some() || p.command(&c.name).is_some() {
                // A duplicate name fails the profile's validation (EdgeX: 400).
                return Err(ApiError::bad_request(format!(
                    "device profile '{}' already has a resource or command '{}'",
                    p.name, c.name
                )));
            }
            p.device_commands.push(c);
            Ok(())
        })
        .await
    }

    pub async fn update_command(
        &self,
        profile: &str,
        u: UpdateDeviceCommand,
    ) -> Result<(), ApiError> {
        self.edit_profile(profile, |p| {
            let c = p
                .device_commands
                .iter_mut()
                .find(|c| c.name == u.name)
                .ok_or_else(|| {
                    ApiError::not_found(format!("device command '{}' does not exist", u.name))
                })?;
            if let Some(h) = u.is_hidden {
                c.is_hidden = h;
            }
            Ok(())
        })
        .await
    }

    pub async fn delete_command(&self, profile: &str, command: &str) -> Result<(), ApiError> {
        self.ensure_changes_allowed()?;
        self.ensure_no_devices(profile, &format!("device command '{command}'"))
            .await?;
        self.edit_profile(profile, |p| {
            let before = p.device_commands.len();
            p.device_commands.retain(|c| c.name != command);
            if p.device_commands.len() == before {
                return Err(ApiError::not_found(format!(
                    "device command '{command}' does not exist"
                )));
            }
            Ok(())
        })
        .await
    }

    // ---- devices ----

    /// Checks a device's references: its service, profile, auto event sources and parent.
    pub(crate) async fn check_device_refs(
        &self,
        d: &Device,
    ) -> Result<Option<DeviceService>, ApiError> {
        d.validate().map_err(ApiError::bad_request)?;
        let service: Option<DeviceService> = self.find(&d.service_name).await?;
        let Some(service) = service else {
            // A reference to nothing is a bad request (EdgeX: 400), not a missing route.
            return Err(ApiError::bad_request(format!(
                "device service '{}' does not exist{}",
                d.service_name,
                self.nearest(Kind::Service, &d.service_name).await
            )));
        };
        if !d.profile_name.is_empty() {
            let profile: Option<DeviceProfile> = self.find(&d.profile_name).await?;
            let Some(profile) = profile else {
                return Err(ApiError::bad_request(format!(
                    "device profile '{}' does not exist{}",
                    d.profile_name,
                    self.nearest(Kind::Profile, &d.profile_name).await
                )));
            };
            for ae in &d.auto_events {
                if profile.resource(&ae.source_name).is_none()
                    && profile.command(&ae.source_name).is_none()
                {
                    return Err(ApiError::bad_request(format!(
                        "autoEvent source '{}' is not a resource or command of profile '{}'",
                        ae.source_name, profile.name
                    )));
                }
            }
        } else if !d.auto_events.is_empty() {
            return Err(ApiError::bad_request("autoEvents need a profileName"));
        }
        if !d.parent.is_empty() {
            // Walk up: the parent must exist and the chain must not come back to this device.
            let mut seen = HashSet::from([d.name.clone()]);
            let mut cur = d.parent.clone();
            while !cur.is_empty() {
                if !seen.insert(cur.clone()) {
                    return Err(ApiError::bad_request(format!(
                        "parent '{}' would create a cycle",
                        d.parent
                    )));
                }
                let p: Option<Device> = self.find(&cur).await?;
                match p {
                    Some(p) => cur = p.parent,
                    None => {
                        return Err(ApiError::not_found(format!(
                            "parent device '{cur}' does not exist"
                        )));
                    }
                }
            }
        }
        Ok(Some(service))
    }

    /// Asks the device service to validate the device's protocol properties (EdgeX's
    /// callback). A service that cannot answer (not reachable, 503, or without the
    /// endpoint: 404/405) does not block provisioning, since devices may be added before
    /// their service starts: then the answer is why the device was not validated. Any other
    /// refusal rejects the device with the service's reason.
    async fn validate_with_service(
        &self,
        service: &DeviceService,
        d: &Device,
    ) -> Result<Option<String>, ApiError> {
        let not_validated = |why: String| {
            Ok(Some(format!(
                "not validated: device service '{}' {why}; the device is checked when the \
                 service serves it",
                service.name
            )))
        };
        let url = format!(
            "{}/api/v3/validate/device",
            service.base_address.trim_end_matches('/')
        );
        let body = AddDeviceRequest {
            base: BaseRequest::new(),
            device: d.clone(),
        };
        let resp = match outpost_kit::http::correlated(self.http.post(&url))
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(service = %service.name, device = %d.name, error = %e, "device service unreachable; device not validated");
                return not_validated(format!("is not reachable at {}", service.base_address));
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(None);
        }
        if matches!(status.as_u16(), 404 | 405 | 503) {
            tracing::warn!(service = %service.name, device = %d.name, status = status.as_u16(), "device validation not available; device not validated");
            return not_validated(format!("cannot validate devices now ({status})"));
        }
        // EdgeX device services answer a failed validation with an error body; a 5xx
        // without one is a broken service, not a verdict on the device.
        let message = resp
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_string));
        match message {
            Some(msg) => Err(ApiError::bad_request(format!(
                "device service '{}' rejected device '{}': {msg}",
                service.name, d.name
            ))),
            None if status.is_client_error() => Err(ApiError::bad_request(format!(
                "device service '{}' rejected device '{}' ({status})",
                service.name, d.name
            ))),
            None => {
                tracing::warn!(service = %service.name, device = %d.name, status = status.as_u16(), "device service failed to validate; device not validated");
                not_validated(format!("failed to validate ({status})"))
            }
        }
    }

    pub async fn add_device(
        &self,
        d: Device,
        force: bool,
        bypass_validation: bool,
    ) -> Result<(String, Option<String>), ApiError> {
        let _w = self.lock.lock().await;
        let service = self.check_device_refs(&d).await?;
        let existing: Option<Device> = self.find(&d.name).await?;
        if existing.is_some() && !force {
            return Err(ApiError::conflict(format!(
                "device '{}' already exists",
                d.name
            )));
        }
        let mut unvalidated = None;
        if !bypass_validation && let Some(s) = &service {
            unvalidated = self.validate_with_service(s, &d).await?;
        }
        let stored = match existing {
            Some(old) => self.replace(&old, d).await?,
            None => self.insert(d).await?,
        };
        Ok((stored.id, unvalidated))
    }

    pub async fn update_device(
        &self,
        u: UpdateDevice,
        bypass_validation: bool,
    ) -> Result<(), ApiError> {
        let _w = self.lock.lock().await;
        let old: Device = self.get_for_update(&u.id, &u.name).await?;
        let mut new = old.clone();
        u.apply(&mut new);
        let service = self.check_device_refs(&new).await?;
        if new.name != old.name {
            self.ensure_no_children(&old.name).await?;
        }
        if !bypass_validation
            && let Some(s) = &service
            && new.protocols != old.protocols
        {
            self.validate_with_service(s, &new).await?;
        }
        self.replace(&old, new).await?;
        Ok(())
    }

    async fn ensure_no_children(&self, name: &str) -> Result<(), ApiError> {
        let children = self
            .count(
                Kind::Device,
                Filter {
                    descendants_of: Some((name.to_string(), 1)),
                    ..Filter::default()
                },
            )
            .await?;
        if children > 0 {
            return Err(ApiError::conflict(format!(
                "device '{name}' is the parent of {children} device(s)"
            )));
        }
        Ok(())
    }

    pub async fn delete_device(&self, name: &str) -> Result<(), ApiError> {
        let _w = self.lock.lock().await;
        let old: Device = self.get(name).await?;
        self.ensure_no_children(name).await?;
        self.store.delete(Kind::Device, name).await?;
        self.announce(ACTION_DELETE, &old);
        Ok(())
    }

    // ---- provision watchers ----

    async fn check_watcher_refs(&self, w: &ProvisionWatcher) -> Result<(), ApiError> {
        w.validate().map_err(ApiError::bad_request)?;
        // A watcher may name a device service that registers later (EdgeX accepts it: the
        // watcher waits for its service).
        let profile = &w.discovered_device.profile_name;
        if !profile.is_empty() {
            let p: Option<DeviceProfile> = self.find(profile).await?;
            if p.is_none() {
                return Err(ApiError::not_found(format!(
                    "device profile '{profile}' does not exist"
                )));
            }
        }
        Ok(())
    }

    pub async fn add_watcher(&self, w: ProvisionWatcher) -> Result<String, ApiError> {
        let _w = self.lock.lock().await;
        self.check_watcher_refs(&w).await?;
        Ok(self.insert(w).await?.id)
    }

    pub async fn update_watcher(&self, u: UpdateProvisionWatcher) -> Result<(), ApiError> {
        let _w = self.lock.lock().await;
        let old: ProvisionWatcher = self.get_for_update(&u.id, &u.name).await?;
        let mut new = old.clone();
        u.apply(&mut new);
        self.check_watcher_refs(&new).await?;
        self.replace(&old, new).await?;
        Ok(())
    }

    pub async fn delete_watcher(&self, name: &str) -> Result<(), ApiError> {
        let _w = self.lock.lock().await;
        let old: ProvisionWatcher = self.get(name).await?;
        self.store.delete(Kind::Watcher, name).await?;
        self.announce(ACTION_DELETE, &old);
        Ok(())
    }
}
