//! System events: what core-metadata announces on the bus when metadata changes.
//!
//! Messages between services are pithy: by default `details` carries only the identifying
//! fields of the object (`id`, `name` and, for devices, `serviceName` and `profileName`), and
//! subscribers fetch the object by name when they need it. EdgeX device services expect the
//! whole object in `details`; core-metadata can be configured to send it.

use serde::{Deserialize, Serialize};

pub const TYPE_DEVICE: &str = "device";
pub const TYPE_DEVICE_PROFILE: &str = "deviceprofile";
pub const TYPE_DEVICE_SERVICE: &str = "deviceservice";
pub const TYPE_PROVISION_WATCHER: &str = "provisionwatcher";

pub const ACTION_ADD: &str = "add";
pub const ACTION_UPDATE: &str = "update";
pub const ACTION_DELETE: &str = "delete";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SystemEvent {
    pub api_version: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub action: String,
    pub source: String,
    pub owner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<std::collections::BTreeMap<String, String>>,
    pub details: serde_json::Value,
    pub timestamp: i64,
}

impl SystemEvent {
    pub fn new(
        kind: &str,
        action: &str,
        source: &str,
        owner: &str,
        details: serde_json::Value,
    ) -> Self {
        Self {
            api_version: crate::API_VERSION.to_string(),
            kind: kind.to_string(),
            action: action.to_string(),
            source: source.to_string(),
            owner: owner.to_string(),
            tags: None,
            details,
            timestamp: crate::now_nanos(),
        }
    }

    /// The `name` in `details`, present in both pithy and full forms.
    pub fn object_name(&self) -> Option<&str> {
        self.details.get("name").and_then(serde_json::Value::as_str)
    }
}
