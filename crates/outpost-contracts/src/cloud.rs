//! A cloud node's operator API: enrolling edges (and the identity bundle an edge's export
//! service sends with), the fleet of edges, and what they sent. What an edge sends is in
//! [`crate::export`].

use serde::{Deserialize, Serialize};

use crate::common::{BaseResponse, BaseWithTotalCountResponse};
use crate::export::Alert;

/// `POST /api/v3/edge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollEdgeRequest {
    pub name: String,
}

/// The identity an edge gets at enrollment: everything it needs to send to the cloud node
/// (the answer to [`EnrollEdgeRequest`], kept by the edge as a file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeBundle {
    pub edge: String,
    pub url: String,
    /// The CA that issued the cloud's certificate (and the edge's).
    pub ca: String,
    pub cert: String,
    pub key: String,
    /// The certificate's fingerprint, for the operator; an edge does not need it, so a
    /// bundle without one is still usable.
    #[serde(default)]
    pub fingerprint: String,
}

/// An enrolled (or revoked) edge, as the fleet view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub name: String,
    pub fingerprint: String,
    pub enrolled_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    pub last_address: Option<String>,
    pub backlog: EdgeBacklog,
    pub received: i64,
    pub duplicates: i64,
    pub rejected: i64,
}

/// The backlog an edge reported with its last batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeBacklog {
    pub items: i64,
    pub bytes: i64,
    pub oldest_ms: Option<i64>,
}

/// `GET /api/v3/edge/all`, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgesResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub total_count: usize,
    pub edges: Vec<Edge>,
}

/// `GET /api/v3/edge/name/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub edge: Edge,
}

/// A reading an edge sent, as the cloud node stored it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeReading {
    pub edge: String,
    pub device_name: String,
    pub resource_name: String,
    pub profile_name: String,
    pub origin: i64,
    pub value_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub units: String,
    pub value: String,
    /// When the cloud node stored it, milliseconds since the Unix epoch.
    pub received_ms: i64,
}

/// `GET /api/v3/reading/edge/{edge}`, newest origin first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeReadingsResponse {
    #[serde(flatten)]
    pub page: BaseWithTotalCountResponse,
    pub readings: Vec<EdgeReading>,
}

/// `GET /api/v3/event/count/edge/{edge}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeEventCountResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    #[serde(rename = "Count")]
    pub count: u64,
}

/// `GET /api/v3/alert/edge/{edge}`, newest origin first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeAlertsResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub alerts: Vec<Alert>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_list_keeps_its_field_order() {
        let edges = EdgesResponse {
            base: BaseResponse::new(200),
            total_count: 1,
            edges: vec![Edge {
                name: "e1".into(),
                fingerprint: "ab".into(),
                enrolled_ms: 1,
                revoked_ms: None,
                last_seen_ms: Some(2),
                last_address: None,
                backlog: EdgeBacklog {
                    items: 3,
                    bytes: 4,
                    oldest_ms: None,
                },
                received: 5,
                duplicates: 6,
                rejected: 7,
            }],
        };
        assert_eq!(
            serde_json::to_string(&edges).unwrap(),
            r#"{"apiVersion":"v3","statusCode":200,"totalCount":1,"edges":[{"name":"e1","fingerprint":"ab","enrolledMs":1,"lastSeenMs":2,"lastAddress":null,"backlog":{"items":3,"bytes":4,"oldestMs":null},"received":5,"duplicates":6,"rejected":7}]}"#
        );
        let back: EdgesResponse =
            serde_json::from_str(&serde_json::to_string(&edges).unwrap()).unwrap();
        assert_eq!(back, edges);
    }

    #[test]
    fn the_event_count_keeps_its_capital_key() {
        let count = EdgeEventCountResponse {
            base: BaseResponse::new(200),
            count: 3,
        };
        assert_eq!(
            serde_json::to_value(&count).unwrap(),
            serde_json::json!({"apiVersion": "v3", "statusCode": 200, "Count": 3})
        );
    }

    #[test]
    fn a_bundle_without_a_fingerprint_is_still_an_identity() {
        let b: EdgeBundle = serde_json::from_str(
            r#"{"edge": "e1", "url": "https://cloud", "ca": "C", "cert": "X", "key": "K"}"#,
        )
        .unwrap();
        assert_eq!((b.edge.as_str(), b.fingerprint.as_str()), ("e1", ""));
    }
}
