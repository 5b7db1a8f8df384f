//! The EdgeX DTOs of support-notifications and how each is validated.
//!
//! Field names, optional fields and enumerations are EdgeX 4's (go-mod-core-contracts):
//! a body any EdgeX client sends parses here, and what is answered parses there. Missing
//! required fields and bad values are reported all at once, one message per field.

use serde::{Deserialize, Serialize};

use outpost_contracts::names;

pub const SEVERITIES: &[&str] = &["MINOR", "NORMAL", "CRITICAL"];
pub const CRITICAL: &str = "CRITICAL";
pub const NOTIFICATION_STATUSES: &[&str] = &["NEW", "PROCESSED", "ESCALATED"];
pub const PROCESSED: &str = "PROCESSED";
pub const ESCALATED: &str = "ESCALATED";
pub const ADMIN_STATES: &[&str] = &["LOCKED", "UNLOCKED"];
pub const LOCKED: &str = "LOCKED";

/// The subscription an escalated notification goes to (EdgeX's `ESCALATION`).
pub const ESCALATION_SUBSCRIPTION: &str = "ESCALATION";
/// What an escalated notification's content starts with.
pub const ESCALATED_NOTICE: &str = "This notification is escalated by the transmission";

/// Transmission statuses.
pub mod status {
    pub const SENT: &str = "SENT";
    pub const FAILED: &str = "FAILED";
    pub const RESENDING: &str = "RESENDING";
    pub const ESCALATED: &str = "ESCALATED";
    pub const ACKNOWLEDGED: &str = "ACKNOWLEDGED";
    /// Accepted and not attempted yet: kept internally, never listed (EdgeX has a
    /// transmission only once it was attempted).
    pub const QUEUED: &str = "QUEUED";
    pub const ALL: &[&str] = &[SENT, FAILED, RESENDING, ESCALATED, ACKNOWLEDGED];
}

/// Channel types.
pub mod channel {
    pub const REST: &str = "REST";
    pub const EMAIL: &str = "EMAIL";
    pub const MQTT: &str = "MQTT";
    pub const ZEROMQ: &str = "ZeroMQ";
}

const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "TRACE", "CONNECT",
];

fn is_empty(s: &str) -> bool {
    s.is_empty()
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Notification {
    #[serde(skip_serializing_if = "is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub category: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    pub content: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub content_type: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub description: String,
    pub sender: String,
    pub severity: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub status: String,
    pub acknowledged: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub created: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub modified: i64,
}

/// Where a subscription's notifications go: one flat object whose `type` says which of
/// the fields apply (EdgeX's `Address`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Address {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub scheme: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub host: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub port: i64,
    // REST
    #[serde(skip_serializing_if = "is_empty")]
    pub path: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub http_method: String,
    #[serde(rename = "injectEdgeXAuth", skip_serializing_if = "is_false")]
    pub inject_edgex_auth: bool,
    // EMAIL
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    // MQTT
    #[serde(skip_serializing_if = "is_empty")]
    pub publisher: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub topic: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub qos: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub keep_alive: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub retained: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub auto_reconnect: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub connect_timeout: i64,
    #[serde(skip_serializing_if = "is_empty")]
    pub secret_path: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub auth_mode: String,
    #[serde(skip_serializing_if = "is_false")]
    pub skip_cert_verify: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Subscription {
    #[serde(skip_serializing_if = "is_empty")]
    pub id: String,
    pub name: String,
    pub channels: Vec<Address>,
    pub receiver: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(skip_serializing_if = "is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub resend_limit: i64,
    #[serde(skip_serializing_if = "is_empty")]
    pub resend_interval: String,
    pub admin_state: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub created: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub modified: i64,
}

/// A PATCH of a subscription: what is present replaces what is stored (lists whole).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateSubscription {
    pub id: Option<String>,
    pub name: Option<String>,
    pub channels: Option<Vec<Address>>,
    pub receiver: Option<String>,
    pub categories: Option<Vec<String>>,
    pub labels: Option<Vec<String>>,
    pub description: Option<String>,
    pub resend_limit: Option<i64>,
    pub resend_interval: Option<String>,
    pub admin_state: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TransmissionRecord {
    #[serde(skip_serializing_if = "is_empty")]
    pub status: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub response: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub sent: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Transmission {
    pub id: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub created: i64,
    pub channel: Address,
    pub notification_id: String,
    pub subscription_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<TransmissionRecord>,
    #[serde(skip_serializing_if = "is_zero")]
    pub resend_count: i64,
    pub status: String,
}

outpost_contracts::edgex_request! {
    read_only
    pub struct AddNotificationRequest {
        pub notification: Option<Notification>,
    }
}

outpost_contracts::edgex_request! {
    read_only
    pub struct AddSubscriptionRequest {
        pub subscription: Option<Subscription>,
    }
}

outpost_contracts::edgex_request! {
    read_only
    pub struct UpdateSubscriptionRequest {
        pub subscription: Option<UpdateSubscription>,
    }
}

outpost_contracts::edgex_request! {
    read_only
    /// The body of `GET /api/v3/notification`.
    pub struct QueryNotificationRequest {
        pub query_condition: Option<QueryCondition>,
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueryCondition {
    pub category: Vec<String>,
    pub start: i64,
    pub end: i64,
}

/// Problems found in one request body, reported together.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

    fn result(r: Result<(), String>, into: &mut Self) {
        if let Err(e) = r {
            into.push(e);
        }
    }

    /// Runs `validate` into a fresh list: every problem it found, as one message.
    pub fn of(validate: impl FnOnce(&mut Self)) -> Result<(), String> {
        let mut p = Self::default();
        validate(&mut p);
        p.into_result()
    }

    pub fn into_result(self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0.join("; "))
        }
    }
}

/// EdgeX's `edgex-dto-rfc3986-unreserved-chars` (v4): letters, digits and `-_~:;=`.
pub fn check_unreserved(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} is required"));
    }
    if value.len() > names::MAX_LEN {
        return Err(format!("{field} is longer than {} bytes", names::MAX_LEN));
    }
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '~' | ':' | ';' | '=')))
    {
        Some(c) => Err(format!(
            "{field} may only contain letters, digits and -_~:;= (not {c:?})"
        )),
        None => Ok(()),
    }
}

/// Printable text without line breaks (it becomes a header of a mail or a request).
fn check_header_text(field: &str, value: &str, p: &mut Problems) {
    if value.len() > 255 || value.chars().any(char::is_control) {
        p.push(format!(
            "{field} must be at most 255 characters without control characters"
        ));
    }
}

fn check_list(field: &str, values: &[String], p: &mut Problems) {
    for v in values {
        Problems::result(check_unreserved(field, v), p);
    }
}

fn one_of(field: &str, value: &str, allowed: &[&str], p: &mut Problems) {
    if !allowed.contains(&value) {
        p.push(format!(
            "{field} '{value}' should be one of {}",
            allowed.join(" ")
        ));
    }
}

/// An e-mail address as a recipient: `local@domain`, nothing that could end a header or
/// an SMTP command.
pub fn check_email(value: &str) -> Result<(), String> {
    let ok = match value.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && value.len() <= 254
                && !value.chars().any(|c| {
                    c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | ',' | '"')
                })
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("recipient '{value}' is not an e-mail address"))
    }
}

/// Parses a Go duration ("5s", "1m30s") as EdgeX's `edgex-dto-duration` does.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    outpost_contracts::metadata::parse_interval(s)
}

impl Notification {
    /// What EdgeX's DTO validation demands of a new notification.
    pub fn validate(&self, p: &mut Problems) {
        if !self.id.is_empty() && uuid::Uuid::parse_str(&self.id).is_err() {
            p.push(format!("notification.id '{}' is not a UUID", self.id));
        }
        if self.category.is_empty() && self.labels.is_empty() {
            p.push("notification.category is required if notification.labels is not present");
        }
        if !self.category.is_empty() {
            Problems::result(check_unreserved("notification.category", &self.category), p);
        }
        check_list("notification.labels", &self.labels, p);
        if self.content.trim().is_empty() {
            p.push("notification.content is required");
        }
        check_header_text("notification.contentType", &self.content_type, p);
        Problems::result(check_unreserved("notification.sender", &self.sender), p);
        one_of("notification.severity", &self.severity, SEVERITIES, p);
        if !self.status.is_empty() {
            one_of(
                "notification.status",
                &self.status,
                NOTIFICATION_STATUSES,
                p,
            );
        }
    }
}

impl Address {
    pub fn validate(&self, p: &mut Problems) {
        let port_ok = (1..=65535).contains(&self.port);
        match self.kind.as_str() {
            channel::REST => {
                if self.host.trim().is_empty() {
                    p.push("channel host is required");
                }
                check_header_text("channel host", &self.host, p);
                if !port_ok {
                    p.push("channel port must be between 1 and 65535");
                }
                one_of("channel httpMethod", &self.http_method, HTTP_METHODS, p);
                if !self.path.is_empty() && !self.path.starts_with('/') {
                    p.push("channel path must start with '/'");
                }
                check_header_text("channel path", &self.path, p);
                if !matches!(self.scheme.to_ascii_lowercase().as_str(), "" | "http" | "https") {
                    p.push(format!("channel scheme '{}' is not http or https", self.scheme));
                }
            }
            channel::EMAIL => {
                if self.recipients.is_empty() {
                    p.push("channel recipients must not be empty");
                }
                for r in &self.recipients {
                    Problems::result(check_email(r), p);
                }
            }
            channel::MQTT => {
                if self.host.trim().is_empty() {
                    p.push("channel host is required");
                } else {
                    Problems::result(names::check_host("channel host", &self.host), p);
                }
                if !port_ok {
                    p.push("channel port must be between 1 and 65535");
                }
                if self.publisher.trim().is_empty() {
                    p.push("channel publisher is required");
                }
                check_header_text("channel publisher", &self.publisher, p);
                if self.topic.is_empty()
                    || self.topic.contains(['#', '+'])
                    || self.topic.chars().any(char::is_control)
                {
                    p.push("channel topic is required and may not hold wildcards");
                }
                if !(0..=2).contains(&self.qos) {
                    p.push("channel qos must be 0, 1 or 2");
                }
                if !matches!(
                    self.scheme.to_ascii_lowercase().as_str(),
                    "" | "tcp" | "mqtt" | "ssl" | "tls" | "mqtts"
                ) {
                    p.push(format!(
                        "channel scheme '{}' is not tcp, mqtt, ssl, tls or mqtts",
                        self.scheme
                    ));
                }
                if !matches!(self.auth_mode.as_str(), "" | "none" | "usernamepassword") {
                    p.push(format!(
                        "channel authMode '{}' should be one of none usernamepassword",
                        self.auth_mode
                    ));
                }
                if self.auth_mode == "usernamepassword" && self.secret_path.is_empty() {
                    p.push("channel secretPath is required with authMode usernamepassword");
                }
            }
            channel::ZEROMQ => p.push(
                "ZeroMQ channels are not supported: use REST, EMAIL or MQTT (see docs/decisions.md)",
            ),
            other => p.push(format!("{other} is not valid type for Channel")),
        }
    }
}

fn check_channels(channels: &[Address], p: &mut Problems) {
    if channels.is_empty() {
        p.push("subscription.channels must not be empty");
    }
    for c in channels {
        c.validate(p);
    }
}

impl Subscription {
    pub fn validate(&self, p: &mut Problems) {
        if !self.id.is_empty() && uuid::Uuid::parse_str(&self.id).is_err() {
            p.push(format!("subscription.id '{}' is not a UUID", self.id));
        }
        Problems::result(names::check("subscription.name", &self.name), p);
        check_channels(&self.channels, p);
        Problems::result(check_unreserved("subscription.receiver", &self.receiver), p);
        if self.categories.is_empty() && self.labels.is_empty() {
            p.push("subscription.categories is required if subscription.labels is not present");
        }
        check_list("subscription.categories", &self.categories, p);
        check_list("subscription.labels", &self.labels, p);
        if self.resend_limit < 0 {
            p.push("subscription.resendLimit must not be negative");
        }
        if !self.resend_interval.is_empty() && parse_duration(&self.resend_interval).is_err() {
            p.push(format!(
                "subscription.resendInterval '{}' is not a duration such as \"5s\"",
                self.resend_interval
            ));
        }
        one_of(
            "subscription.adminState",
            &self.admin_state,
            ADMIN_STATES,
            p,
        );
    }
}

impl UpdateSubscription {
    pub fn validate(&self, p: &mut Problems) {
        match (&self.id, &self.name) {
            (None, None) => {
                p.push("subscription.id is required if subscription.name is not present")
            }
            (Some(id), _) if !id.is_empty() && uuid::Uuid::parse_str(id).is_err() => {
                p.push(format!("subscription.id '{id}' is not a UUID"));
            }
            _ => {}
        }
        if let Some(name) = &self.name {
            Problems::result(names::check("subscription.name", name), p);
        }
        if let Some(c) = &self.channels {
            check_channels(c, p);
        }
        if let Some(r) = &self.receiver {
            Problems::result(check_unreserved("subscription.receiver", r), p);
        }
        if let (Some(c), Some(l)) = (&self.categories, &self.labels)
            && c.is_empty()
            && l.is_empty()
        {
            p.push("categories and labels can not be both empty");
        }
        if let Some(c) = &self.categories {
            check_list("subscription.categories", c, p);
        }
        if let Some(l) = &self.labels {
            check_list("subscription.labels", l, p);
        }
        if self.resend_limit.is_some_and(|n| n < 0) {
            p.push("subscription.resendLimit must not be negative");
        }
        if let Some(i) = &self.resend_interval
            && parse_duration(i).is_err()
        {
            p.push(format!(
                "subscription.resendInterval '{i}' is not a duration such as \"5s\""
            ));
        }
        if let Some(s) = &self.admin_state {
            one_of("subscription.adminState", s, ADMIN_STATES, p);
        }
    }

    /// `stored` with this update applied (the name is the stored one).
    pub fn apply(&self, stored: &Subscription) -> Subscription {
        let mut s = stored.clone();
        if let Some(v) = &self.channels {
            s.channels.clone_from(v);
        }
        if let Some(v) = &self.receiver {
            s.receiver.clone_from(v);
        }
        if let Some(v) = &self.categories {
            s.categories.clone_from(v);
        }
        if let Some(v) = &self.labels {
            s.labels.clone_from(v);
        }
        if let Some(v) = &self.description {
            s.description.clone_from(v);
        }
        if let Some(v) = self.resend_limit {
            s.resend_limit = v;
        }
        if let Some(v) = &self.resend_interval {
            s.resend_interval.clone_from(v);
        }
        if let Some(v) = &self.admin_state {
            s.admin_state.clone_from(v);
        }
        s
    }
}

impl Subscription {
    /// Whether this subscription receives `n`: its categories hold the notification's
    /// category (when it has one) and its labels all of the notification's labels (EdgeX's
    /// rule for distribution).
    pub fn receives(&self, n: &Notification) -> bool {
        (n.category.is_empty() || self.categories.contains(&n.category))
            && n.labels.iter().all(|l| self.labels.contains(l))
    }

    /// Whether `n` concerns this subscription in the looser sense of
    /// `GET /notification/subscription/name/{name}`: its category or any of its labels.
    pub fn relates_to(&self, n: &Notification) -> bool {
        (!n.category.is_empty() && self.categories.contains(&n.category))
            || n.labels.iter().any(|l| self.labels.contains(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest() -> Address {
        Address {
            kind: "REST".into(),
            host: "localhost".into(),
            port: 8080,
            http_method: "POST".into(),
            ..Address::default()
        }
    }

    fn problems(f: impl FnOnce(&mut Problems)) -> Result<(), String> {
        let mut p = Problems::default();
        f(&mut p);
        p.into_result()
    }

    #[test]
    fn a_notification_needs_content_sender_severity_and_a_category_or_labels() {
        let n = Notification {
            labels: vec!["simple".into()],
            content: "hi".into(),
            sender: "taf-admin".into(),
            severity: "NORMAL".into(),
            ..Notification::default()
        };
        assert!(problems(|p| n.validate(p)).is_ok());
        let bad = Notification {
            labels: Vec::new(),
            sender: "test@123".into(),
            severity: "LOUD".into(),
            status: "Invalid".into(),
            content: " ".into(),
            ..n
        };
        let e = problems(|p| bad.validate(p)).unwrap_err();
        for want in [
            "category is required",
            "sender may only",
            "severity 'LOUD'",
            "status 'Invalid'",
            "content is required",
        ] {
            assert!(e.contains(want), "{want} not in {e}");
        }
    }

    #[test]
    fn channels_are_checked_by_type() {
        assert!(problems(|p| rest().validate(p)).is_ok());
        for (bad, want) in [
            (
                Address {
                    host: String::new(),
                    ..rest()
                },
                "host is required",
            ),
            (Address { port: 0, ..rest() }, "port"),
            (
                Address {
                    http_method: "post".into(),
                    ..rest()
                },
                "httpMethod",
            ),
            (
                Address {
                    kind: "rest".into(),
                    ..rest()
                },
                "not valid type",
            ),
            (
                Address {
                    kind: "ZeroMQ".into(),
                    ..rest()
                },
                "not supported",
            ),
            (
                Address {
                    kind: "EMAIL".into(),
                    recipients: vec!["a@b.c\r\nRCPT TO:<x@y.z>".into()],
                    ..Address::default()
                },
                "not an e-mail address",
            ),
            (
                Address {
                    kind: "EMAIL".into(),
                    ..Address::default()
                },
                "recipients",
            ),
        ] {
            let e = problems(|p| bad.validate(p)).unwrap_err();
            assert!(e.contains(want), "{want} not in {e}");
        }
    }

    #[test]
    fn distribution_needs_the_category_and_every_label_while_the_query_needs_either() {
        let sub = Subscription {
            categories: vec!["health-check".into()],
            labels: vec!["simple".into()],
            ..Subscription::default()
        };
        let n = |c: &str, l: &[&str]| Notification {
            category: c.into(),
            labels: l.iter().map(|s| s.to_string()).collect(),
            ..Notification::default()
        };
        assert!(sub.receives(&n("health-check", &["simple"])));
        assert!(sub.receives(&n("", &["simple"])));
        assert!(sub.receives(&n("health-check", &[])));
        assert!(!sub.receives(&n("no-subscription", &["simple"])));
        assert!(!sub.receives(&n("health-check", &["simple", "other"])));
        assert!(sub.relates_to(&n("no-subscription", &["simple"])));
        assert!(!sub.relates_to(&n("other", &["other"])));
    }

    #[test]
    fn a_patch_replaces_lists_whole_and_keeps_the_rest() {
        let stored = Subscription {
            name: "s".into(),
            categories: vec!["a".into(), "b".into()],
            labels: vec!["x".into()],
            receiver: "r".into(),
            ..Subscription::default()
        };
        let u: UpdateSubscription =
            serde_json::from_value(serde_json::json!({"name": "s", "categories": ["c"]})).unwrap();
        let s = u.apply(&stored);
        assert_eq!(s.categories, vec!["c".to_string()]);
        assert_eq!(s.labels, vec!["x".to_string()]);
        assert_eq!(s.receiver, "r");
    }
}
