//! Devices as ota knows them, shared by the rollouts (`fleet`) and the inventory
//! (`inventory`): who a device is (its credential, checked with core-metadata
//! through the metadata view), when it last checked in, and which devices a label
//! selector or a group picks.
//!
//! Check-in times are kept in memory and written every few seconds (a poll costs no
//! write).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use outpost_bus::metadata::{CREDENTIAL_GRACE, Credential, Lookup, MetadataView, Verdict};
use outpost_contracts::metadata::Device;
use outpost_contracts::now_millis as now_ms;
use outpost_kit::ApiError;
use outpost_kit::client::CallError;

use crate::store::{Group, Store, StoreError};

/// 1 to 128 letters, digits, '-', '_' or '.' (rollout and group names).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Why a device's request is refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the device's credential is missing (X-Outpost-Device-Token, or a client certificate)")]
    Missing,
    #[error("device {0} is waiting for an operator's approval")]
    Pending(String),
    #[error("the device's credential is not valid")]
    Refused,
    #[error("cannot check the device's credential: core-metadata has been unreachable too long")]
    TooLongUnreachable,
    #[error("cannot check the device's credential: {0}")]
    Unavailable(#[source] CallError),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match e {
            AuthError::Missing | AuthError::Refused => StatusCode::UNAUTHORIZED,
            AuthError::Pending(_) => StatusCode::FORBIDDEN,
            AuthError::TooLongUnreachable | AuthError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError::new(status, e.to_string())
    }
}

/// Why devices could not be selected.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("no group {0}")]
    NoGroup(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Metadata(#[from] CallError),
}

impl From<SelectError> for ApiError {
    fn from(e: SelectError) -> Self {
        match e {
            SelectError::NoGroup(_) => ApiError::not_found(e.to_string()),
            SelectError::Store(e) => ApiError::internal(e),
            SelectError::Metadata(e) => e.to_api_error(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Devices: credentials, check-ins, selection.
pub struct Devices {
    /// core-metadata: devices, credentials.
    view: MetadataView,
    store: Arc<dyn Store>,
    /// Where the gateway's key for vouching client certificates lives, and the key once read.
    cert_mac_file: PathBuf,
    cert_mac_key: OnceLock<[u8; 32]>,
    /// Last check-in per device, and the devices whose check-in is not written yet.
    seen: Mutex<HashMap<String, i64>>,
    unsaved: Mutex<HashSet<String>>,
}

impl Devices {
    /// `seen`: the check-in times stored before.
    pub fn new(
        view: MetadataView,
        store: Arc<dyn Store>,
        cert_mac_file: PathBuf,
        seen: HashMap<String, i64>,
    ) -> Self {
        Self {
            view,
            store,
            cert_mac_file,
            cert_mac_key: OnceLock::new(),
            seen: Mutex::new(seen),
            unsaved: Mutex::new(HashSet::new()),
        }
    }

    pub fn view(&self) -> &MetadataView {
        &self.view
    }

    /// A client certificate the gateway vouches for: the certificate header when its MAC is
    /// valid (the key is the gateway's; read once it exists).
    fn vouched<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let cert = header_str(headers, outpost_pki::vouch::HEADER)?.trim();
        let mac = header_str(headers, outpost_pki::vouch::MAC_HEADER)?.trim();
        let key = match self.cert_mac_key.get() {
            Some(k) => k,
            None => {
                let k = outpost_storage::read_secret(&self.cert_mac_file).ok()?;
                self.cert_mac_key.get_or_init(|| k)
            }
        };
        outpost_pki::vouch::verify(key, cert, mac).then_some(cert)
    }

    /// Checks the device's credential through the metadata view (which forgets what it
    /// knows of a device whenever core-metadata announces a change to it, such as a
    /// rotation or revocation): its secret as `X-Outpost-Device-Token`, or the client
    /// certificate it presented to the gateway, which the gateway passes as
    /// `X-Outpost-Client-Cert`. A device that passes has checked in.
    pub async fn authenticate(&self, device: &str, headers: &HeaderMap) -> Result<(), AuthError> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|t| !t.is_empty())
        };
        let (credential, is_cert) = match (header("x-outpost-device-token"), self.vouched(headers))
        {
            (Some(t), _) => (Credential::Secret(t), false),
            (None, Some(c)) => (Credential::Certificate(c), true),
            (None, None) => return Err(AuthError::Missing),
        };
        // The view's policy: a credential verified before is honoured for a while when
        // core-metadata cannot be asked.
        match self.view.verify(device, credential).await {
            Lookup::Found(Verdict::Pending) => Err(AuthError::Pending(device.to_string())),
            Lookup::Missing => {
                tracing::warn!(
                    device,
                    certificate = is_cert,
                    "a device credential was refused"
                );
                Err(AuthError::Refused)
            }
            found @ (Lookup::Found(_) | Lookup::Stale { .. }) => {
                match found.within(CREDENTIAL_GRACE) {
                    Some(_) => {
                        self.seen(device);
                        Ok(())
                    }
                    None => Err(AuthError::TooLongUnreachable),
                }
            }
            Lookup::Unavailable(e) => Err(AuthError::Unavailable(e)),
        }
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

    /// When `device` last checked in (Unix milliseconds).
    pub fn last_seen(&self, device: &str) -> Option<i64> {
        lock(&self.seen).get(device).copied()
    }

    /// Writes the check-in times noted since the last write.
    pub async fn save_check_ins(&self) -> Result<(), StoreError> {
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
        self.store.save_check_ins(batch).await
    }

    /// Writes check-in times every few seconds until shutdown (and once more then).
    pub async fn keep_saving(self: Arc<Self>, stopping: outpost_kit::Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            let stop = tokio::select! {
                () = stopping.wait() => true,
                _ = tick.tick() => false,
            };
            if let Err(e) = self.save_check_ins().await {
                tracing::warn!(error = %e, "cannot save check-in times");
            }
            if stop {
                return;
            }
        }
    }

    /// A device by name, as core-metadata has it now.
    pub async fn device(&self, name: &str) -> Result<Option<Device>, CallError> {
        self.view.client().device(name).await
    }

    /// A group (a named label selector).
    pub async fn group(&self, name: &str) -> Result<Group, SelectError> {
        self.store
            .group(name.to_string())
            .await?
            .ok_or_else(|| SelectError::NoGroup(name.to_string()))
    }

    /// Every device carrying all of `labels` (and of `profile`, if not empty), by name.
    pub async fn select(
        &self,
        labels: &[String],
        profile: &str,
    ) -> Result<Vec<Device>, SelectError> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let (page, total) = self.view.client().devices_page(offset, 1000).await?;
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
}
