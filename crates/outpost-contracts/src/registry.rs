//! Service registry DTOs (EdgeX core-keeper v3) and Outpost's additions: push heartbeats and
//! change notifications.

use serde::{Deserialize, Serialize};

use crate::common::{BaseResponse, BaseWithTotalCountResponse};

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Health of a registered service instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ServiceStatus {
    Up,
    Down,
    #[default]
    Unknown,
    /// Deregistered (kept for `?deregistered=true` as core-keeper does).
    Halt,
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "UP",
            Self::Down => "DOWN",
            Self::Unknown => "UNKNOWN",
            Self::Halt => "HALT",
        }
    }
}

/// How the registry learns that an instance is alive.
///
/// `type` is `"http"` (the registry polls `path` every `interval`, EdgeX's way) or
/// `"heartbeat"` (the instance calls `PUT /registry/serviceId/{id}/heartbeat` at least every
/// `interval`; Outpost's services use this).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HealthCheck {
    pub interval: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
}

pub const HEALTH_HTTP: &str = "http";
pub const HEALTH_HEARTBEAT: &str = "heartbeat";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Registration {
    #[serde(skip_serializing_if = "is_zero")]
    pub created: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub modified: i64,
    pub service_id: String,
    pub status: ServiceStatus,
    pub host: String,
    pub port: u16,
    /// `HealthCheck` on the wire, as EdgeX writes it (its DTO's embedded struct keeps
    /// the Go field name); `healthCheck` is read too.
    #[serde(rename = "HealthCheck", alias = "healthCheck")]
    pub health_check: HealthCheck,
    #[serde(skip_serializing_if = "is_zero")]
    pub last_connected: i64,
    /// Outpost's addition: `https` when the instance serves its API over TLS (mutual TLS
    /// between services); empty or `http` for plaintext, EdgeX's way.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scheme: String,
    /// Outpost's addition: the instance's version (empty from EdgeX services).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Outpost's addition: when the instance started, ms since the Unix epoch (0: not
    /// said), so a console can show its uptime.
    #[serde(skip_serializing_if = "is_zero")]
    pub started: i64,
}

impl Registration {
    /// `http://host:port` or `https://host:port`.
    pub fn base_url(&self) -> String {
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = if self.scheme == "https" {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{host}:{}", self.port)
    }
}

crate::edgex_request! {
    #[derive(PartialEq)]
    pub struct AddRegistrationRequest {
        pub registration: Registration,
    }
}

pub type UpdateRegistrationRequest = AddRegistrationRequest;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub registration: Registration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultiRegistrationsResponse {
    #[serde(flatten)]
    pub page: BaseWithTotalCountResponse,
    pub registrations: Vec<Registration>,
    /// Outpost: the registry's change index, for long-polling with `?waitIndex=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

/// One change in the registry, as streamed by `GET /registry/watch` (server-sent events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryChange {
    pub index: u64,
    pub service_id: String,
    /// `registered`, `updated`, `status`, `deregistered` or `removed`.
    pub action: String,
    pub status: ServiceStatus,
}

/// A stored key/value (`GET /kvs/key/{key}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyValue {
    pub created: i64,
    pub modified: i64,
    pub key: String,
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KvRequest {
    pub value: serde_json::Value,
}

/// `{..., "response": [...]}`, core-keeper's answer for key lists and key/value lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KvResponse<T> {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub response: Vec<T>,
}
