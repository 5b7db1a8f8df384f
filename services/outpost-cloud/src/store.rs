//! What the cloud node needs from storage.
//!
//! [`Store`] is the contract: enrolled edges, what each sent (deduplicated per stream and
//! per event id), the data itself, and bounded retention steps.
//! [`crate::sqlite::SqliteStore`] implements it on the node's encrypted SQLite database,
//! [`crate::postgres::PgStore`] on PostgreSQL shared by several instances. What an item must be to be
//! stored is decided here ([`admit`]), the same for every implementation.

use outpost_contracts::cloud::{Edge, EdgeReading};
use outpost_contracts::event::Event;
use outpost_contracts::export::{Alert, Backlog, ExportItem, Rejected, WireItem};
use outpost_storage::StorageError;
use serde_json::value::RawValue;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<outpost_storage::rusqlite::Error> for StoreError {
    fn from(e: outpost_storage::rusqlite::Error) -> Self {
        Self::Storage(StorageError::Sqlite(e))
    }
}

/// What one retention step removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub events: u64,
    pub readings: u64,
    pub alerts: u64,
}

/// A batch from an edge, as the ingest route hands it over. Items stay raw JSON until the
/// store decides they are new: an item at or below the high-water mark is never parsed.
#[derive(Debug)]
pub struct Incoming {
    pub edge: String,
    /// The peer address it came from.
    pub address: String,
    pub incarnation: u64,
    /// 0 = high, 1 = normal.
    pub priority: u8,
    pub items: Vec<WireItem<Box<RawValue>>>,
    pub backlog: Backlog,
}

/// What storing one batch did.
#[derive(Debug, Default)]
pub struct Stored {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: Vec<Rejected>,
    pub hwm: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct ReadingQuery {
    pub edge: String,
    pub device: Option<String>,
    pub resource: Option<String>,
    /// Origin range, nanoseconds, inclusive.
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub offset: u64,
    pub limit: u64,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), StoreError>;
    /// Whether this instance may do now, for `ttl`, work that must happen once among the
    /// instances sharing the store (a retention pass). A store of one instance always may.
    async fn lease(&self, _name: &str, _ttl: std::time::Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Enrolls `name` with the certificate `fingerprint` (a revoked edge is enrolled again
    /// with the new one); `false` if an edge of that name is enrolled and not revoked.
    async fn enroll(
        &self,
        name: String,
        fingerprint: String,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Revokes an edge (its data stays); `false` if there is no such edge.
    async fn revoke(&self, name: String, now_ms: i64) -> Result<bool, StoreError>;
    /// Every edge, by name.
    async fn edges(&self) -> Result<Vec<Edge>, StoreError>;
    async fn edge(&self, name: String) -> Result<Option<Edge>, StoreError>;
    /// The edge a certificate belongs to, if it is enrolled and not revoked.
    async fn edge_by_fingerprint(&self, fingerprint: String) -> Result<Option<String>, StoreError>;
    /// Stores a batch atomically: items at or below the stream's high-water mark and
    /// events already stored (by id) are duplicates; items [`admit`] refuses are rejected
    /// with the reason. Updates the edge's last seen, backlog and counts.
    async fn ingest(&self, batch: Incoming) -> Result<Stored, StoreError>;
    /// Readings of an edge matching `q`, newest origin first, and how many match.
    async fn readings(&self, q: ReadingQuery) -> Result<(Vec<EdgeReading>, u64), StoreError>;
    /// An edge's alerts, newest origin first.
    async fn alerts(&self, edge: String, limit: u64) -> Result<Vec<Alert>, StoreError>;
    /// Events stored for an edge.
    async fn event_count(&self, edge: String) -> Result<u64, StoreError>;
    /// Readings stored, from every edge.
    async fn reading_total(&self) -> Result<u64, StoreError>;
    /// One bounded retention step, in one transaction: removes up to `chunk` events (with
    /// their readings) whose origin is before `cutoff` (nanoseconds) and which arrived
    /// before it too, oldest first, and alerts whose origin is before it; then, while more
    /// than `max_readings` readings are stored (0: no bound), the oldest events. Returns
    /// what it removed; callers repeat it until it removes nothing, so ingest gets the
    /// database between steps.
    async fn remove_old(
        &self,
        cutoff: Option<i64>,
        max_readings: u64,
        chunk: u64,
    ) -> Result<Removed, StoreError>;
}

/// A new item as it will be stored, or why it never can be (retrying cannot help).
pub fn admit(raw: &RawValue) -> Result<ExportItem, String> {
    let item: ExportItem =
        serde_json::from_str(raw.get()).map_err(|e| format!("not an export item: {e}"))?;
    match &item {
        ExportItem::Event { event } => check_event(event)?,
        ExportItem::Alert { alert } if alert.id.is_empty() => {
            return Err("alert without an id".into());
        }
        ExportItem::Alert { .. } => {}
    }
    Ok(item)
}

fn check_event(e: &Event) -> Result<(), String> {
    if e.id.is_empty() {
        return Err("event without an id".into());
    }
    if e.device_name.is_empty() {
        return Err("event without a deviceName".into());
    }
    if e.readings.is_empty() {
        return Err("event without readings".into());
    }
    if e.readings.len() > 10_000 {
        return Err("event with more than 10000 readings".into());
    }
    Ok(())
}
