//! The EdgeX 4 DTOs of support-scheduler and how each is validated.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use outpost_contracts::names;

use crate::cron;

pub const INTERVAL: &str = "INTERVAL";
pub const CRON: &str = "CRON";
pub const LOCKED: &str = "LOCKED";
pub const UNLOCKED: &str = "UNLOCKED";

/// Action types.
pub mod action {
    pub const MESSAGE_BUS: &str = "EDGEXMESSAGEBUS";
    pub const REST: &str = "REST";
    pub const DEVICE_CONTROL: &str = "DEVICECONTROL";
}

/// Record statuses.
pub mod status {
    pub const SUCCEEDED: &str = "SUCCEEDED";
    pub const FAILED: &str = "FAILED";
    pub const MISSED: &str = "MISSED";
}

const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

fn is_empty(s: &str) -> bool {
    s.is_empty()
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Parses a Go duration (`"10s"`, `"1h30m"`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    outpost_contracts::metadata::parse_interval(s)
}

/// An action's payload: bytes, written as base64. Read as EdgeX reads it: a string that
/// is base64 is decoded (any other string is taken as it is), a JSON object or array is
/// taken as its JSON text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl Payload {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(Self::default()),
            Value::String(s) => Ok(Self(
                base64::engine::general_purpose::STANDARD
                    .decode(&s)
                    .unwrap_or_else(|_| s.into_bytes()),
            )),
            v @ (Value::Object(_) | Value::Array(_)) => Ok(Self(v.to_string().into_bytes())),
            other => Err(serde::de::Error::custom(format!(
                "payload must be a string or a JSON object, not {other}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScheduleDef {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub start_timestamp: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub end_timestamp: i64,
    #[serde(skip_serializing_if = "is_empty")]
    pub interval: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub crontab: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScheduleAction {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub content_type: String,
    #[serde(skip_serializing_if = "Payload::is_empty")]
    pub payload: Payload,
    // EDGEXMESSAGEBUS
    #[serde(skip_serializing_if = "is_empty")]
    pub topic: String,
    #[serde(skip_serializing_if = "is_false")]
    pub use_raw_payload: bool,
    // REST
    #[serde(skip_serializing_if = "is_empty")]
    pub address: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub method: String,
    #[serde(rename = "injectEdgeXAuth", skip_serializing_if = "is_false")]
    pub inject_edgex_auth: bool,
    // DEVICECONTROL
    #[serde(skip_serializing_if = "is_empty")]
    pub device_name: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub source_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScheduleJob {
    #[serde(skip_serializing_if = "is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub created: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub modified: i64,
    pub name: String,
    pub definition: ScheduleDef,
    #[serde(skip_serializing_if = "is_false")]
    pub auto_trigger_missed_records: bool,
    pub actions: Vec<ScheduleAction>,
    pub admin_state: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    pub properties: serde_json::Map<String, Value>,
}

/// A PATCH of a job: what is present replaces what is stored (lists and the definition
/// whole).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateScheduleJob {
    pub id: Option<String>,
    pub name: Option<String>,
    pub definition: Option<ScheduleDef>,
    pub auto_trigger_missed_records: Option<bool>,
    pub actions: Option<Vec<ScheduleAction>>,
    pub admin_state: Option<String>,
    pub labels: Option<Vec<String>>,
    pub properties: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScheduleActionRecord {
    pub id: String,
    pub job_name: String,
    /// The action, without its payload.
    pub action: ScheduleAction,
    pub status: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub scheduled_at: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub created: i64,
}

outpost_contracts::edgex_request! {
    read_only
    pub struct AddScheduleJobRequest {
        pub schedule_job: Option<ScheduleJob>,
    }
}

outpost_contracts::edgex_request! {
    read_only
    pub struct UpdateScheduleJobRequest {
        pub schedule_job: Option<UpdateScheduleJob>,
    }
}

impl ScheduleDef {
    /// Its schedule, or why it has none.
    pub fn schedule(&self) -> Result<cron::Schedule, String> {
        match self.kind.as_str() {
            INTERVAL => {
                if self.interval.is_empty() {
                    return Err("definition.interval is required for an INTERVAL job".into());
                }
                parse_duration(&self.interval)
                    .map(cron::Schedule::Every)
                    .map_err(|e| format!("definition.interval: {e}"))
            }
            CRON => {
                if self.crontab.trim().is_empty() {
                    return Err("definition.crontab is required for a CRON job".into());
                }
                cron::parse_cron(&self.crontab)
            }
            other => Err(format!(
                "definition.type '{other}' should be one of INTERVAL CRON"
            )),
        }
    }

    pub fn validate(&self, p: &mut Vec<String>) {
        if let Err(e) = self.schedule() {
            p.push(e);
        }
        if self.start_timestamp < 0 || self.end_timestamp < 0 {
            p.push("definition timestamps must not be negative".into());
        }
        if self.end_timestamp != 0 && self.end_timestamp < self.start_timestamp {
            p.push("definition.endTimestamp must be greater than startTimestamp".into());
        }
    }

    /// Keeps only the field of its type (EdgeX drops the other).
    pub fn normalized(mut self) -> Self {
        match self.kind.as_str() {
            INTERVAL => self.crontab.clear(),
            CRON => self.interval.clear(),
            _ => {}
        }
        self
    }
}

impl ScheduleAction {
    pub fn validate(&self, p: &mut Vec<String>) {
        let required = |p: &mut Vec<String>, field: &str, v: &str| {
            if v.trim().is_empty() {
                p.push(format!(
                    "action.{field} is required for a {} action",
                    self.kind
                ));
            }
        };
        match self.kind.as_str() {
            action::MESSAGE_BUS => {
                required(p, "topic", &self.topic);
                if self.topic.contains(['#', '+']) || self.topic.chars().any(char::is_control) {
                    p.push(format!(
                        "action.topic '{}' may not hold wildcards",
                        self.topic
                    ));
                }
            }
            action::REST => {
                required(p, "address", &self.address);
                let scheme_ok = ["http://", "https://"]
                    .iter()
                    .any(|s| self.address.to_ascii_lowercase().starts_with(s));
                if !self.address.is_empty() && !scheme_ok {
                    p.push(format!(
                        "action.address '{}' is not an http(s) URL",
                        self.address
                    ));
                }
                if !HTTP_METHODS.contains(&self.method.as_str()) {
                    p.push(format!(
                        "action.method '{}' should be one of {}",
                        self.method,
                        HTTP_METHODS.join(" ")
                    ));
                }
            }
            action::DEVICE_CONTROL => {
                required(p, "deviceName", &self.device_name);
                required(p, "sourceName", &self.source_name);
            }
            other => p.push(format!(
                "action.type '{other}' should be one of EDGEXMESSAGEBUS REST DEVICECONTROL"
            )),
        }
        if self.content_type.len() > 255 || self.content_type.chars().any(char::is_control) {
            p.push("action.contentType must be a media type".into());
        }
    }

    /// The action as a record shows it: without its payload.
    pub fn without_payload(&self) -> Self {
        Self {
            payload: Payload::default(),
            ..self.clone()
        }
    }
}

fn check_actions(actions: &[ScheduleAction], p: &mut Vec<String>) {
    if actions.is_empty() {
        p.push("actions must hold at least one action".into());
    }
    for a in actions {
        a.validate(p);
    }
}

fn check_admin_state(s: &str, p: &mut Vec<String>) {
    if !matches!(s, "" | LOCKED | UNLOCKED) {
        p.push(format!("adminState '{s}' should be one of LOCKED UNLOCKED"));
    }
}

impl ScheduleJob {
    pub fn validate(&self, p: &mut Vec<String>) {
        if !self.id.is_empty() && uuid::Uuid::parse_str(&self.id).is_err() {
            p.push(format!("id '{}' is not a UUID", self.id));
        }
        if let Err(e) = names::check("name", &self.name) {
            p.push(e);
        }
        self.definition.validate(p);
        check_actions(&self.actions, p);
        check_admin_state(&self.admin_state, p);
    }

    pub fn locked(&self) -> bool {
        self.admin_state == LOCKED
    }
}

impl UpdateScheduleJob {
    pub fn validate(&self, p: &mut Vec<String>) {
        match (&self.id, &self.name) {
            (None, None) => p.push("id is required if name is not present".into()),
            (Some(id), _) if !id.is_empty() && uuid::Uuid::parse_str(id).is_err() => {
                p.push(format!("id '{id}' is not a UUID"));
            }
            _ => {}
        }
        if let Some(name) = &self.name
            && let Err(e) = names::check("name", name)
        {
            p.push(e);
        }
        if let Some(d) = &self.definition {
            d.validate(p);
        }
        if let Some(a) = &self.actions {
            check_actions(a, p);
        }
        if let Some(s) = &self.admin_state {
            check_admin_state(s, p);
        }
    }

    /// `stored` with this update applied (the name is the stored one).
    pub fn apply(&self, stored: &ScheduleJob) -> ScheduleJob {
        let mut j = stored.clone();
        if let Some(d) = &self.definition {
            j.definition = d.clone().normalized();
        }
        if let Some(v) = self.auto_trigger_missed_records {
            j.auto_trigger_missed_records = v;
        }
        if let Some(a) = &self.actions {
            j.actions.clone_from(a);
        }
        if let Some(s) = &self.admin_state {
            j.admin_state = if s.is_empty() {
                UNLOCKED.into()
            } else {
                s.clone()
            };
        }
        if let Some(l) = &self.labels {
            j.labels.clone_from(l);
        }
        if let Some(p) = &self.properties {
            j.properties.clone_from(p);
        }
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(v: Value) -> Result<ScheduleJob, String> {
        let j: ScheduleJob = serde_json::from_value(v).map_err(|e| e.to_string())?;
        let mut p = Vec::new();
        j.validate(&mut p);
        if p.is_empty() {
            Ok(j)
        } else {
            Err(p.join("; "))
        }
    }

    fn base() -> Value {
        json!({"name": "job", "definition": {"type": "INTERVAL", "interval": "20s"},
            "actions": [{"type": "REST", "address": "http://core-data/api/v3/ping", "method": "GET"}]})
    }

    #[test]
    fn payloads_are_read_as_edgex_reads_them_and_written_as_base64() {
        let a = |p: Value| -> ScheduleAction {
            serde_json::from_value(json!({"type": "EDGEXMESSAGEBUS", "topic": "t", "payload": p}))
                .unwrap()
        };
        assert_eq!(a(json!("{\"value\": 999}")).payload.0, b"{\"value\": 999}");
        assert_eq!(a(json!("aGk=")).payload.0, b"hi");
        assert_eq!(a(json!({"value": 1})).payload.0, b"{\"value\":1}");
        assert_eq!(a(Value::Null).payload.0, b"");
        assert!(
            serde_json::from_value::<ScheduleAction>(json!({"type": "REST", "payload": 5}))
                .is_err()
        );
        let out = serde_json::to_value(a(json!("hi there"))).unwrap();
        assert_eq!(out["payload"], "aGkgdGhlcmU=");
    }

    #[test]
    fn jobs_are_checked_as_edgex_checks_them() {
        assert!(job(base()).is_ok());
        let with = |path: &[&str], v: Value| {
            let mut b = base();
            let mut at = &mut b;
            for (i, k) in path.iter().enumerate() {
                if i + 1 == path.len() {
                    at[*k] = v.clone();
                } else {
                    at = &mut at[*k];
                }
            }
            job(b)
        };
        for (path, v, want) in [
            (&["name"][..], json!(""), "name"),
            (&["definition", "type"][..], json!(""), "definition.type"),
            (
                &["definition", "type"][..],
                json!("INVALID"),
                "definition.type",
            ),
            (
                &["definition", "interval"][..],
                json!(""),
                "interval is required",
            ),
            (&["adminState"][..], json!("INVALID"), "adminState"),
            (&["actions"][..], json!([]), "at least one"),
            (&["actions"][..], json!([{"type": ""}]), "action.type"),
            (
                &["actions"][..],
                json!([{"type": "INVALID"}]),
                "action.type",
            ),
            (
                &["actions"][..],
                json!([{"type": "DEVICECONTROL", "deviceName": "d"}]),
                "sourceName",
            ),
            (
                &["actions"][..],
                json!([{"type": "REST", "address": "ftp://x", "method": "GET"}]),
                "http(s)",
            ),
            (
                &["definition"][..],
                json!({"type": "CRON", "crontab": "nope"}),
                "crontab",
            ),
            (
                &["definition"][..],
                json!({"type": "INTERVAL", "interval": "20s", "startTimestamp": 10, "endTimestamp": 5}),
                "endTimestamp",
            ),
        ] {
            let e = with(path, v).unwrap_err();
            assert!(e.contains(want), "{want} not in {e}");
        }
    }
}
