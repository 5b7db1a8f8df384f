//! What core-data needs from storage.
//!
//! [`EventStore`] is the contract; [`crate::sqlite::SqliteEventStore`] implements it on the
//! service's encrypted SQLite database. A PostgreSQL implementation would implement the same
//! trait; nothing above this module knows which one runs.

use std::sync::Arc;

use outpost_contracts::event::{Event, Reading, ReadingValue};
use outpost_contracts::value::ValueType;
use outpost_storage::StorageError;

/// An event ready to store: validated, with each reading's numeric view.
#[derive(Debug, Clone)]
pub struct IngestEvent {
    pub event: Event,
    pub nums: Vec<Option<f64>>,
}

/// What happened to one appended event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Stored,
    /// An event with this id is already stored (a redelivery or a client retry).
    Duplicate,
    /// The database refused this event alone (the others of the batch were stored).
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot take writes now (disk full, I/O error); retrying later can help.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<outpost_storage::rusqlite::Error> for StoreError {
    fn from(e: outpost_storage::rusqlite::Error) -> Self {
        Self::Storage(StorageError::Sqlite(e))
    }
}

/// Which readings or events a query selects.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub device: Option<String>,
    pub resource: Option<String>,
    /// Any of these resources (EdgeX's multi-resource query); with `resource`, either.
    pub resources: Vec<String>,
    /// Origin range, nanoseconds, inclusive.
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub offset: u64,
    pub limit: u64,
    /// Compute the total count (EdgeX's `offset=-1` skips it).
    pub count_total: bool,
}

/// SQL-side aggregation of reading values (EdgeX `aggregateFunc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Min,
    Max,
    Count,
    Sum,
    Avg,
}

impl Aggregate {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "MIN" => Self::Min,
            "MAX" => Self::Max,
            "COUNT" => Self::Count,
            "SUM" => Self::Sum,
            "AVG" => Self::Avg,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Min => "MIN",
            Self::Max => "MAX",
            Self::Count => "COUNT",
            Self::Sum => "SUM",
            Self::Avg => "AVG",
        }
    }
}

/// One series' aggregate, as the stores compute it: the function's value (`None` when
/// no reading of the series is numeric, except for `Count`), how many readings are numeric,
/// the smallest and largest value type code among them, the newest origin.
#[derive(Debug, Clone)]
pub struct SeriesAggregate {
    pub device: String,
    pub resource: String,
    pub profile: String,
    pub value: Option<f64>,
    pub numeric: i64,
    pub type_codes: (i64, i64),
    pub origin: i64,
}

impl SeriesAggregate {
    /// The reading EdgeX answers for it: `Count` as Int64; of integer types, Int64 (but
    /// `Avg`); otherwise Float64; a series without numbers, an empty String.
    pub fn reading(self, f: Aggregate) -> Reading {
        let integral = is_integer_type(self.type_codes.0) && is_integer_type(self.type_codes.1);
        let (value_type, value) = match (f, self.value) {
            (Aggregate::Count, Some(v)) => (ValueType::Int64, format!("{}", v as i64)),
            (_, Some(v)) if self.numeric > 0 => {
                if integral && f != Aggregate::Avg {
                    (ValueType::Int64, format!("{}", v as i64))
                } else {
                    (ValueType::Float64, format!("{v}"))
                }
            }
            _ => (ValueType::String, String::new()),
        };
        Reading {
            origin: self.origin,
            device_name: self.device,
            resource_name: self.resource,
            profile_name: self.profile,
            value_type,
            value: ReadingValue::Simple(value),
            ..Reading::default()
        }
    }
}

fn is_integer_type(code: i64) -> bool {
    u8::try_from(code)
        .ok()
        .and_then(ValueType::from_code)
        .is_some_and(|t| {
            matches!(
                t,
                ValueType::Uint8
                    | ValueType::Uint16
                    | ValueType::Uint32
                    | ValueType::Uint64
                    | ValueType::Int8
                    | ValueType::Int16
                    | ValueType::Int32
                    | ValueType::Int64
            )
        })
}

/// What one deletion removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub events: u64,
    pub readings: u64,
}

/// Counts kept by the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub events: u64,
    pub readings: u64,
}

/// What is stored of one device: its counts and its newest event's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    pub device: String,
    pub totals: Totals,
    /// The newest origin among its events, nanoseconds (as the events give it).
    pub last_origin: i64,
}

#[async_trait::async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Stores events atomically per event; outcomes are in input order. An `Err` means
    /// nothing of the call was stored and the caller may retry it.
    async fn append(&self, events: Arc<[IngestEvent]>) -> Result<Vec<Outcome>, StoreError>;
    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError>;
    /// Events matching `q` (device and origin range), newest origin first.
    async fn events(&self, q: Query) -> Result<(u64, Vec<Event>), StoreError>;
    /// Readings matching `q`, newest origin first.
    async fn readings(&self, q: Query) -> Result<(u64, Vec<Reading>), StoreError>;
    /// One aggregated reading per device and resource matching `q`.
    async fn aggregate(&self, q: Query, f: Aggregate) -> Result<Vec<Reading>, StoreError>;
    /// Totals over everything, or one device's.
    async fn totals(&self, device: Option<String>) -> Result<Totals, StoreError>;
    /// Every device with stored events: counts and newest origin (from the kept counts and
    /// the device-and-origin index, so one index probe per device).
    async fn device_summaries(&self) -> Result<Vec<DeviceSummary>, StoreError>;
    /// What the stored data takes on disk, bytes (SQLite: the database's pages, its
    /// write-ahead log aside; PostgreSQL: the tables with their indexes).
    async fn stored_bytes(&self) -> Result<u64, StoreError>;
    async fn delete_event(&self, id: uuid::Uuid) -> Result<bool, StoreError>;
    /// Deletes a device's events and readings; returns readings deleted.
    async fn delete_device(&self, device: String) -> Result<u64, StoreError>;
    /// Deletes, in one transaction, the oldest events whose origin is before `cutoff`, at
    /// most about `chunk` readings' worth (whole events); nothing deleted means none is left.
    async fn delete_before(&self, cutoff: i64, chunk: u64) -> Result<Deleted, StoreError>;
    /// Deletes, in one transaction, the events that arrived first while more than `keep`
    /// readings are stored, at most about `chunk` readings' worth (whole events); nothing
    /// deleted means at most `keep` remain.
    async fn trim(&self, keep: u64, chunk: u64) -> Result<Deleted, StoreError>;
    /// Readings of events whose origin is before `cutoff`.
    async fn readings_before(&self, cutoff: i64) -> Result<u64, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
    /// Whether this instance may do now, for `ttl`, work that must happen once among the
    /// instances sharing the store (a periodic retention pass). A store of one instance
    /// always may.
    async fn lease(&self, _name: &str, _ttl: std::time::Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Whether writes currently succeed (the last commit did, and the writer runs).
    fn writer_health(&self) -> Result<(), String>;
}
