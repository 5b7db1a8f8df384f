//! ota's operator API: signed artifacts, rollouts and their policy, the devices' inventory
//! and groups (what the CLI and scripts send and read).
//!
//! The device protocol (`/api/v3/ddi/...`) is described in docs/ota.md; the artifact
//! manifest and its signature are [`outpost_manifest`]'s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::common::{BaseResponse, BaseWithTotalCountResponse};
use crate::metadata::AdminState;

pub use outpost_manifest::Manifest;

// ---- artifacts ----

/// The answer to an upload (`POST /api/v3/artifact`): what was stored and who signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactUploaded {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub key_id: String,
}

/// An artifact as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactView {
    pub manifest: Manifest,
    /// The signed bytes, base64: what an agent verifies.
    pub manifest_base64: String,
    pub signature: String,
    pub key_id: String,
    pub uploaded_ms: i64,
}

/// `GET /api/v3/artifact/name/{name}/version/{version}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub artifact: ArtifactView,
}

/// `GET /api/v3/artifact/all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultiArtifactsResponse {
    #[serde(flatten)]
    pub page: BaseWithTotalCountResponse,
    pub artifacts: Vec<ArtifactView>,
}

// ---- rollouts ----

/// How a rollout proceeds: what an operator asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    /// Cumulative percentages, increasing, the last 100.
    #[serde(default = "default_phases")]
    pub phases: Vec<f64>,
    /// Successes (percent of the devices of the open phases) that open the next phase.
    #[serde(default = "default_success")]
    pub success_percent: f64,
    /// Pause when this many devices failed since the last start or resume.
    #[serde(default = "default_failure_count")]
    pub failure_count: u32,
    /// Pause when this share of the devices that started failed...
    #[serde(default = "default_failure_percent")]
    pub failure_percent: f64,
    /// ...once at least this many started.
    #[serde(default = "default_min_sample")]
    pub min_sample: u32,
    /// When devices may start the update (daily, UTC); any time when absent. A device that
    /// has started finishes outside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

/// A daily maintenance window, `HH:MM` to `HH:MM` UTC; it may span midnight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub start: String,
    pub end: String,
}

fn minute_of_day(hhmm: &str) -> Option<u32> {
    let (h, m) = hhmm.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && hhmm.len() == 5).then_some(h * 60 + m)
}

impl Window {
    fn check(&self) -> Result<(), String> {
        match (minute_of_day(&self.start), minute_of_day(&self.end)) {
            (Some(a), Some(b)) if a != b => Ok(()),
            (Some(_), Some(_)) => Err("a window's start and end differ".into()),
            _ => Err("a window is start and end as HH:MM (UTC)".into()),
        }
    }

    /// Whether the instant `now_ms` (Unix milliseconds) falls in the window.
    pub fn contains(&self, now_ms: i64) -> bool {
        let (Some(a), Some(b)) = (minute_of_day(&self.start), minute_of_day(&self.end)) else {
            return true;
        };
        let m = (now_ms.rem_euclid(86_400_000) / 60_000) as u32;
        if a < b {
            a <= m && m < b
        } else {
            m >= a || m < b
        }
    }
}

fn default_phases() -> Vec<f64> {
    vec![1.0, 10.0, 100.0]
}
fn default_success() -> f64 {
    100.0
}
fn default_failure_count() -> u32 {
    3
}
fn default_failure_percent() -> f64 {
    20.0
}
fn default_min_sample() -> u32 {
    5
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            phases: default_phases(),
            success_percent: default_success(),
            failure_count: default_failure_count(),
            failure_percent: default_failure_percent(),
            min_sample: default_min_sample(),
            window: None,
        }
    }
}

impl Policy {
    pub fn check(&self) -> Result<(), String> {
        if self.phases.is_empty()
            || self.phases.windows(2).any(|w| w[0] >= w[1])
            || self.phases.iter().any(|p| !(*p > 0.0 && *p <= 100.0))
            || self.phases.last() != Some(&100.0)
        {
            return Err("phases must be increasing percentages in (0, 100], the last 100".into());
        }
        if !(0.0..=100.0).contains(&self.success_percent)
            || !(0.0..=100.0).contains(&self.failure_percent)
        {
            return Err("successPercent and failurePercent are percentages".into());
        }
        if self.failure_count == 0 {
            return Err("failureCount must be at least 1".into());
        }
        if let Some(w) = &self.window {
            w.check()?;
        }
        Ok(())
    }
}

/// Where one device is in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceState {
    /// Its phase has not opened.
    Waiting,
    /// Offered; the device has not answered yet.
    Offered,
    Downloading,
    Installing,
    Succeeded,
    Failed,
    /// Failed and went back to its previous version.
    RolledBack,
    Canceled,
}

impl DeviceState {
    pub const ALL: [DeviceState; 8] = [
        Self::Waiting,
        Self::Offered,
        Self::Downloading,
        Self::Installing,
        Self::Succeeded,
        Self::Failed,
        Self::RolledBack,
        Self::Canceled,
    ];

    /// Its name in the API and in storage (`offered`, `rolledBack`, ...).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The state named `name` (see [`DeviceState::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }

    pub fn terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::RolledBack | Self::Canceled
        )
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum RolloutState {
    Running,
    Paused {
        reason: String,
        automatic: bool,
    },
    /// Every device is done and enough of them succeeded (the policy's success percent).
    Finished,
    /// Every device is done, and too few succeeded.
    Failed {
        reason: String,
    },
    Canceled,
}

impl RolloutState {
    /// Its name in the API (`state`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused { .. } => "paused",
            Self::Finished => "finished",
            Self::Failed { .. } => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// Whether it is over (finished, failed or canceled).
    pub fn ended(&self) -> bool {
        matches!(self, Self::Finished | Self::Failed { .. } | Self::Canceled)
    }
}

/// An artifact by name and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ArtifactRef {
    pub name: String,
    pub version: String,
}

/// The devices a rollout is for: named ones, those carrying labels, or a group's members
/// (only those that may install the artifact).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Target {
    #[serde(default)]
    pub devices: Vec<String>,
    /// Devices carrying every one of these labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The members of a group (its label selector, worked out now).
    #[serde(default)]
    pub group: Option<String>,
}

/// `POST /api/v3/rollout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewRollout {
    pub name: String,
    pub artifact: ArtifactRef,
    pub target: Target,
    #[serde(default)]
    pub policy: Policy,
}

/// Devices per state.
pub type Counts = BTreeMap<DeviceState, u32>;

/// A rollout as the API shows it (the answer to its creation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    pub name: String,
    pub artifact: ArtifactRef,
    pub status: RolloutState,
    pub policy: Policy,
    /// Phases `0..=open_phase` are open.
    pub open_phase: usize,
    pub devices: u32,
    /// Every state, with the devices in it.
    pub counts: Counts,
    pub phases: Vec<PhaseView>,
    pub created_ms: i64,
}

/// One phase of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseView {
    pub phase: usize,
    /// The cumulative percentage of devices it reaches.
    pub percent: Option<f64>,
    pub devices: u32,
    pub counts: Counts,
}

/// `GET /api/v3/rollout/name/{name}` and the answer to pause, resume and cancel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    #[serde(flatten)]
    pub rollout: RolloutView,
}

/// `GET /api/v3/rollout/all`, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultiRolloutsResponse {
    #[serde(flatten)]
    pub page: BaseWithTotalCountResponse,
    pub rollouts: Vec<RolloutView>,
}

/// What a device reported to a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub at_ms: i64,
    pub status: String,
    pub details: String,
}

/// `GET /api/v3/rollout/name/{name}/device/{device}`: where the device is, and what it
/// reported, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceHistoryResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub rollout: String,
    pub device: String,
    pub state: DeviceState,
    pub history: Vec<HistoryEntry>,
}

// ---- inventory and groups ----

/// What a device reports about itself (`firmware`, `hardware`, ...).
pub type Attributes = BTreeMap<String, String>;

/// Whether a device checks in as often as it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckIn {
    /// It never did.
    Never,
    /// Not seen for longer than `ota.overdue_after_s`.
    Overdue,
    Ok,
}

/// A device in the inventory: what it reports next to what operators own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryDevice {
    pub name: String,
    pub profile_name: String,
    pub labels: Vec<String>,
    pub admin_state: AdminState,
    pub attributes: Attributes,
    pub last_seen_ms: Option<i64>,
    pub check_in: CheckIn,
    pub overdue: bool,
}

/// `GET /api/v3/inventory/name/{device}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    #[serde(flatten)]
    pub device: InventoryDevice,
}

/// `GET /api/v3/inventory/all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultiInventoryResponse {
    #[serde(flatten)]
    pub page: BaseWithTotalCountResponse,
    pub devices: Vec<InventoryDevice>,
}

/// A group: a named label selector (`POST /api/v3/group`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Only devices of this profile; any when empty.
    #[serde(default)]
    pub profile: String,
}

/// The answer to a new group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupCreated {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub name: String,
}

/// A group in the list, with how many devices it has now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupSummary {
    pub name: String,
    pub labels: Vec<String>,
    pub profile: String,
    pub members: usize,
}

/// `GET /api/v3/group/all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultiGroupsResponse {
    #[serde(flatten)]
    pub page: BaseWithTotalCountResponse,
    pub groups: Vec<GroupSummary>,
}

/// `GET /api/v3/group/name/{name}`, with the names of its members now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub name: String,
    pub labels: Vec<String>,
    pub profile: String,
    pub members: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::SortedKeys;

    fn counts(n: u32) -> Counts {
        DeviceState::ALL.iter().map(|s| (*s, n)).collect()
    }

    #[test]
    fn a_rollout_goes_out_as_the_json_ota_always_answered() {
        let rollout = RolloutResponse {
            base: BaseResponse::new(200),
            rollout: RolloutView {
                name: "wave".into(),
                artifact: ArtifactRef {
                    name: "fw".into(),
                    version: "1.2".into(),
                },
                status: RolloutState::Paused {
                    reason: "3 devices failed (limit 3)".into(),
                    automatic: true,
                },
                policy: Policy::default(),
                open_phase: 0,
                devices: 8,
                counts: counts(1),
                phases: vec![PhaseView {
                    phase: 0,
                    percent: Some(1.0),
                    devices: 8,
                    counts: counts(1),
                }],
                created_ms: 1_700_000_000_000,
            },
        };
        let one = serde_json::json!({"waiting": 1, "offered": 1, "downloading": 1,
            "installing": 1, "succeeded": 1, "failed": 1, "rolledBack": 1, "canceled": 1});
        // The answer as the service assembled it as a JSON value: keys sorted everywhere.
        let before = serde_json::json!({
            "name": "wave",
            "artifact": {"name": "fw", "version": "1.2"},
            "status": {"state": "paused", "reason": "3 devices failed (limit 3)", "automatic": true},
            "policy": Policy::default(),
            "openPhase": 0,
            "devices": 8,
            "counts": one,
            "phases": [{"phase": 0, "percent": 1.0, "devices": 8, "counts": one}],
            "createdMs": 1_700_000_000_000i64,
            "apiVersion": "v3",
            "statusCode": 200,
        });
        let wire = serde_json::to_string(&SortedKeys(&rollout)).unwrap();
        assert_eq!(wire, before.to_string());
        // The CLI reads it back, states as map keys included.
        let back: RolloutView = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, rollout.rollout);
    }

    #[test]
    fn state_names_are_the_wire_names() {
        for s in DeviceState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name().as_str());
        }
        for s in [
            RolloutState::Running,
            RolloutState::Paused {
                reason: String::new(),
                automatic: false,
            },
            RolloutState::Finished,
            RolloutState::Failed {
                reason: String::new(),
            },
            RolloutState::Canceled,
        ] {
            assert_eq!(serde_json::to_value(&s).unwrap()["state"], s.name());
        }
    }

    #[test]
    fn inventory_and_groups_go_out_as_before() {
        let device = InventoryDevice {
            name: "d1".into(),
            profile_name: "p".into(),
            labels: vec!["site-a".into()],
            admin_state: AdminState::Unlocked,
            attributes: [("firmware".to_string(), "1.0".to_string())].into(),
            last_seen_ms: None,
            check_in: CheckIn::Never,
            overdue: false,
        };
        let page = MultiInventoryResponse {
            page: BaseWithTotalCountResponse::new(1),
            devices: vec![device],
        };
        let before = serde_json::json!({
            "apiVersion": "v3", "statusCode": 200, "totalCount": 1, "devices": [{
                "name": "d1", "profileName": "p", "labels": ["site-a"], "adminState": "UNLOCKED",
                "attributes": {"firmware": "1.0"}, "lastSeenMs": null, "checkIn": "never",
                "overdue": false,
            }],
        });
        assert_eq!(
            serde_json::to_string(&SortedKeys(&page)).unwrap(),
            before.to_string()
        );
        let group: Group = serde_json::from_str(r#"{"name": "g"}"#).unwrap();
        assert_eq!((group.labels.len(), group.profile.as_str()), (0, ""));
        assert!(serde_json::from_str::<Group>(r#"{"name": "g", "x": 1}"#).is_err());
    }
}
