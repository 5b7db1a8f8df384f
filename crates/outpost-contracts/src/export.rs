//! What an edge's export service sends a cloud node and what the cloud answers; and the
//! export service's own API (the status of its destinations, dead letters).
//!
//! A batch holds items of one queue priority in sequence order. The cloud stores an item
//! only if its sequence number is above the highest it stored for (edge, incarnation,
//! priority), and an event only once per (edge, event id), so retried and redelivered
//! batches never duplicate data.

use serde::{Deserialize, Serialize};

use crate::common::{BaseResponse, BaseWithTotalCountResponse};
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

// ---- the export service's API ----

/// Where a destination sends (`kind` of an `[[export.destinations]]` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    /// An Outpost cloud node, over HTTPS with the client certificate from its enrollment.
    Cloud,
    /// Any HTTPS endpoint that takes a JSON batch.
    Webhook,
    /// An external MQTT broker (`mqtts://` for TLS): each batch is one QoS 1 message on
    /// `<topic>/<priority>`.
    Mqtt,
}

/// The answer to an event added over REST: the destinations that queued it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventQueued {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub id: String,
    pub destinations: Vec<String>,
}

/// How a destination's sender is doing.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendState {
    /// Whether the last attempt succeeded.
    pub connected: bool,
    pub last_success_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    pub consecutive_failures: u32,
    /// When the next retry goes, if it is backing off.
    pub next_retry_ms: Option<u64>,
    pub sent_items: u64,
    pub sent_batches: u64,
    pub wire_bytes: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub transient_failures: u64,
    pub permanent_failures: u64,
    /// Items refused because they can never fit in the queue.
    pub too_large: u64,
}

/// One priority of a destination's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriorityStatus {
    /// `high` or `normal`.
    pub priority: String,
    pub items: u64,
    pub bytes: u64,
    pub next_seq: u64,
}

/// A destination's queue: what it holds and what happened to items so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    pub incarnation: u64,
    pub items: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub oldest_age_ms: Option<u64>,
    pub priorities: Vec<PriorityStatus>,
    pub appended: u64,
    pub dropped_overflow: u64,
    pub expired: u64,
    pub refused: u64,
    pub disk_full: u64,
    pub corrupt_records: u64,
}

/// One destination: where it sends, its queue and its sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationStatus {
    pub name: String,
    pub kind: DestinationKind,
    pub url: String,
    /// The edge name the cloud knows this node by (`cloud` destinations).
    pub edge: Option<String>,
    pub queue: QueueStatus,
    pub sender: SendState,
}

/// `GET /api/v3/export/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportStatus {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub destinations: Vec<DestinationStatus>,
}

/// An item a destination refused for good, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// `high` or `normal`.
    pub priority: String,
    pub seq: u64,
    pub enqueued_ms: u64,
    pub failed_ms: u64,
    pub reason: String,
    /// The item as it was queued (JSON), or its bytes as text when it is not JSON.
    pub data: serde_json::Value,
}

/// `GET /api/v3/export/deadletter/{destination}`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLettersResponse {
    #[serde(flatten)]
    pub page: BaseWithTotalCountResponse,
    pub dead_letters: Vec<DeadLetter>,
}

/// `DELETE /api/v3/export/deadletter/{destination}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLettersRemoved {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub removed: u64,
}

/// `POST /api/v3/export/deadletter/{destination}/requeue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLettersRequeued {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub requeued: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::SortedKeys;

    #[test]
    fn the_status_goes_out_as_the_json_export_always_answered() {
        let status = ExportStatus {
            base: BaseResponse::new(200),
            destinations: vec![DestinationStatus {
                name: "cloud".into(),
                kind: DestinationKind::Cloud,
                url: "https://cloud/api/v3/ingest".into(),
                edge: Some("e1".into()),
                queue: QueueStatus {
                    incarnation: 9,
                    items: 2,
                    bytes: 300,
                    max_bytes: 1000,
                    oldest_age_ms: Some(5),
                    priorities: vec![PriorityStatus {
                        priority: "high".into(),
                        items: 2,
                        bytes: 300,
                        next_seq: 7,
                    }],
                    appended: 10,
                    dropped_overflow: 1,
                    expired: 0,
                    refused: 0,
                    disk_full: 0,
                    corrupt_records: 0,
                },
                sender: SendState {
                    consecutive_failures: 2,
                    last_error: Some("503".into()),
                    ..SendState::default()
                },
            }],
        };
        let queue = serde_json::json!({
            "incarnation": 9, "items": 2, "bytes": 300, "maxBytes": 1000, "oldestAgeMs": 5,
            "priorities": [{"priority": "high", "items": 2, "bytes": 300, "nextSeq": 7}],
            "appended": 10, "droppedOverflow": 1, "expired": 0, "refused": 0, "diskFull": 0,
            "corruptRecords": 0,
        });
        let sender = SendState {
            consecutive_failures: 2,
            last_error: Some("503".into()),
            ..SendState::default()
        };
        // The answer as the service assembled it as a JSON value: keys sorted everywhere.
        let before = serde_json::json!({"apiVersion": "v3", "statusCode": 200, "destinations": [{
            "name": "cloud", "kind": "cloud", "url": "https://cloud/api/v3/ingest", "edge": "e1",
            "queue": queue, "sender": sender,
        }]});
        let wire = serde_json::to_string(&SortedKeys(&status)).unwrap();
        assert_eq!(wire, before.to_string());
        let back: ExportStatus = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, status);
    }
}
