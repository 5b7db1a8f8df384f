//! What an edge's export service sends a cloud node, and what the cloud answers.
//!
//! A batch holds items of one queue priority in sequence order. The cloud stores an item
//! only if its sequence number is above the highest it stored for (edge, incarnation,
//! priority), and an event only once per (edge, event id), so retried and redelivered
//! batches never duplicate data.

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// An item of an export queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ExportItem {
    /// Device data: a raw event, or an aggregate made by a rules pipeline.
    Event { event: Event },
    /// A condition a rules pipeline raised.
    Alert { alert: Alert },
}

/// An alert raised by a rules pipeline.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Alert {
    pub id: String,
    pub pipeline: String,
    pub device_name: String,
    pub resource_name: String,
    /// What was observed, as text.
    pub value: String,
    /// The condition that fired, e.g. `value > 80` or `rate > 5/s`.
    pub condition: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// When it fired, nanoseconds since the Unix epoch.
    pub origin: i64,
    pub message: String,
}

/// One item on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireItem<T> {
    pub seq: u64,
    /// When the edge queued it, milliseconds since the Unix epoch.
    pub enqueued_ms: u64,
    pub data: T,
}

/// The edge's backlog as it reports it with every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Backlog {
    pub items: u64,
    pub bytes: u64,
    /// When the oldest queued item was queued, milliseconds since the Unix epoch.
    pub oldest_ms: Option<u64>,
}

/// `POST /api/v3/ingest` (JSON, optionally `Content-Encoding: zstd`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestBatch<T> {
    /// The edge queue's incarnation: its sequence numbers are unique within it.
    pub incarnation: u64,
    /// `high` or `normal`.
    pub priority: String,
    pub items: Vec<WireItem<T>>,
    #[serde(default)]
    pub backlog: Backlog,
}

/// An item the cloud will never accept (retrying cannot help).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejected {
    pub seq: u64,
    pub reason: String,
}

/// The cloud's answer to a batch it processed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IngestResponse {
    pub api_version: String,
    pub status_code: u16,
    /// Items stored now.
    pub accepted: u64,
    /// Items it had already (by sequence number or event id).
    pub duplicates: u64,
    pub rejected: Vec<Rejected>,
    /// The highest sequence number it has for this (edge, incarnation, priority).
    pub hwm: Option<u64>,
}
