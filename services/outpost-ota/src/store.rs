//! What ota keeps in its database.
//!
//! [`Store`] is the contract: artifacts (their signed manifests; payloads are blobs on disk,
//! see [`crate::blob`]), rollouts with their devices' states and histories, the inventory
//! (device-reported attributes and check-in times) and groups.
//! [`crate::sqlite::SqliteStore`] implements it on the service's encrypted SQLite database;
//! another backend would implement the same trait, and nothing above this module knows
//! which one runs.

use outpost_storage::StorageError;

pub use outpost_contracts::ota::{Attributes, Group, HistoryEntry};

use crate::rollout::{DeviceState, Policy, RolloutState};

/// Why the store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot encode the {what} for storage")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl From<outpost_storage::rusqlite::Error> for StoreError {
    fn from(e: outpost_storage::rusqlite::Error) -> Self {
        Self::Storage(StorageError::Sqlite(e))
    }
}

/// A stored artifact: its manifest exactly as signed, and who signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredArtifact {
    pub manifest: Vec<u8>,
    /// Base64 Ed25519 signature of `manifest`.
    pub signature: String,
    pub key_id: String,
    pub uploaded_ms: i64,
}

/// A new artifact, with the manifest fields it is found by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArtifact {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub stored: StoredArtifact,
}

/// What a rollout is, apart from its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutHead {
    pub name: String,
    /// The artifact's name and version.
    pub artifact: (String, String),
    pub policy: Policy,
    pub state: RolloutState,
    pub open_phase: usize,
    /// The failure baseline (see [`crate::rollout::Rollout::baseline`]).
    pub failures_before: u32,
    pub started_before: u32,
    pub created_ms: i64,
    /// How many changes the stored rollout had when this head was read: a change is
    /// stored only over the revision it was made from (instances sharing one database
    /// do not overwrite each other's changes).
    pub revision: i64,
}

/// One device of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutDevice {
    pub device: String,
    /// Its place in rollout order.
    pub position: usize,
    pub phase: usize,
    pub state: DeviceState,
}

/// A rollout as stored: devices in rollout order.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRollout {
    pub head: RolloutHead,
    pub devices: Vec<RolloutDevice>,
}

/// What a device reported to a rollout, for its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub device: String,
    pub status: String,
    pub details: String,
}

/// Entries kept per device and rollout; older ones are dropped as new ones come.
pub const HISTORY: usize = 20;

/// What is stored of a device in the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryRow {
    pub device: String,
    pub attributes: Attributes,
    pub last_seen_ms: Option<i64>,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- artifacts ----

    /// Whether an artifact of this name and version exists.
    async fn artifact_exists(&self, name: String, version: String) -> Result<bool, StoreError>;
    /// Adds an artifact (fails when its name and version exist).
    async fn add_artifact(&self, artifact: NewArtifact) -> Result<(), StoreError>;
    /// Every artifact, by name, then oldest first.
    async fn artifacts(&self) -> Result<Vec<StoredArtifact>, StoreError>;
    async fn artifact(
        &self,
        name: String,
        version: String,
    ) -> Result<Option<StoredArtifact>, StoreError>;
    /// Deletes an artifact; answers whether another artifact still has the payload
    /// `sha256` (which must then stay on disk).
    async fn delete_artifact(
        &self,
        name: String,
        version: String,
        sha256: String,
    ) -> Result<bool, StoreError>;

    // ---- rollouts ----

    /// Every rollout, oldest first. A rollout that cannot be read is skipped (and logged).
    async fn rollouts(&self) -> Result<Vec<StoredRollout>, StoreError>;
    /// One rollout as stored now, if it is (and can be read).
    async fn rollout(&self, name: String) -> Result<Option<StoredRollout>, StoreError>;
    /// Every rollout's name and revision: what another instance changed since.
    async fn revisions(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Adds a rollout with all its devices.
    async fn add_rollout(&self, rollout: StoredRollout) -> Result<(), StoreError>;
    /// In one transaction: the rollout's new state, the devices whose state changed, and
    /// the reports to add to the devices' histories (each history kept to [`HISTORY`]),
    /// all only if the stored rollout is still at `head.revision` (it then goes one
    /// further). `false`, with nothing written, when another instance changed it since.
    async fn update_rollout(
        &self,
        head: RolloutHead,
        changed: Vec<RolloutDevice>,
        reports: Vec<Report>,
    ) -> Result<bool, StoreError>;
    /// A device's history in a rollout, oldest first.
    async fn history(
        &self,
        rollout: String,
        device: String,
    ) -> Result<Vec<HistoryEntry>, StoreError>;

    // ---- inventory ----

    /// Everything stored of devices.
    async fn inventory(&self) -> Result<Vec<InventoryRow>, StoreError>;
    /// Records check-in times (device, Unix milliseconds).
    async fn save_check_ins(&self, seen: Vec<(String, i64)>) -> Result<(), StoreError>;
    /// Replaces what a device reported about itself.
    async fn set_attributes(
        &self,
        device: String,
        attributes: Attributes,
    ) -> Result<(), StoreError>;

    // ---- groups ----

    /// Adds a group; `false` when one of that name exists.
    async fn add_group(&self, group: Group, created_ms: i64) -> Result<bool, StoreError>;
    /// Every group, by name.
    async fn groups(&self) -> Result<Vec<Group>, StoreError>;
    async fn group(&self, name: String) -> Result<Option<Group>, StoreError>;
    /// Deletes a group; `false` when there was none.
    async fn delete_group(&self, name: String) -> Result<bool, StoreError>;
}
