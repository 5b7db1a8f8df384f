//! `[support_notifications]`: the service's section of the node configuration.

use std::path::PathBuf;

use outpost_kit::config::{Problems, Validate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// HTTP port (EdgeX support-notifications' default).
    pub port: u16,
    /// Most items one list answer holds (`limit=-1` means this many).
    pub max_result_count: u64,
    /// Resends of a failed transmission when its subscription sets none (EdgeX
    /// `Writable.ResendLimit`).
    pub resend_limit: u32,
    /// Time between resends when the subscription sets none, as a Go duration ("5s")
    /// (EdgeX `Writable.ResendInterval`).
    pub resend_interval: String,
    /// Transmissions sent at once.
    pub concurrency: usize,
    /// Timeout of one REST or MQTT delivery, milliseconds.
    pub send_timeout_ms: u64,
    /// Raise a notification (category `rules-alert`) for every alert of a rules pipeline.
    pub rules_alerts: bool,
    pub smtp: Smtp,
    pub retention: Retention,
    /// Where notifications, subscriptions and transmissions are kept: the service's
    /// SQLite database (the default), or PostgreSQL for several instances.
    pub storage: outpost_kit::pg::StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            port: 59860,
            max_result_count: 1024,
            resend_limit: 2,
            resend_interval: "5s".into(),
            concurrency: 16,
            send_timeout_ms: 5_000,
            rules_alerts: true,
            smtp: Smtp::default(),
            retention: Retention::default(),
            storage: outpost_kit::pg::StorageConfig::default(),
        }
    }
}

/// How e-mail leaves the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// The SMTP server; empty means no e-mail (EMAIL transmissions fail and are recorded).
    pub host: String,
    pub port: u16,
    /// The envelope sender (MAIL FROM).
    pub sender: String,
    pub subject: String,
    /// `starttls` (when the server offers it; credentials are never sent in the clear),
    /// `required` (STARTTLS or no delivery), `tls` (TLS from the first byte, port 465),
    /// `none` (plain text; only for a relay on the same host).
    pub security: SmtpSecurity,
    /// A CA (PEM) the server's certificate is checked against instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The user to log in as; its password comes from `password_file` or the secret
    /// `smtp` stored with `POST /api/v3/secret` (keys `username`, `password`).
    pub username: String,
    pub password_file: Option<PathBuf>,
    /// Timeout of one delivery, milliseconds.
    pub timeout_ms: u64,
}

impl Default for Smtp {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 587,
            sender: "outpost@localhost".into(),
            subject: "EdgeX Notification".into(),
            security: SmtpSecurity::Starttls,
            ca_file: None,
            username: String::new(),
            password_file: None,
            timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    Starttls,
    Required,
    Tls,
    None,
}

/// Keeps the notifications bounded: when there are `max_cap`, the oldest are removed
/// (with their transmissions) until `min_cap` remain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub enabled: bool,
    pub interval_ms: u64,
    pub max_cap: u64,
    pub min_cap: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 30 * 60 * 1000,
            max_cap: 5000,
            min_cap: 4000,
        }
    }
}

outpost_kit::service_config!(Config, enabled);

impl Validate for Config {
    fn validate(&self, p: &mut Problems) {
        const S: &str = "support_notifications";
        for problem in self.storage.problems() {
            p.check(false, "support_notifications.storage", problem);
        }
        p.check(
            self.max_result_count >= 1,
            S,
            "max_result_count must be at least 1",
        );
        p.check(
            crate::model::parse_duration(&self.resend_interval).is_ok(),
            S,
            format!(
                "resend_interval '{}' is not a duration such as \"5s\"",
                self.resend_interval
            ),
        );
        p.check(
            (1..=1024).contains(&self.concurrency),
            S,
            "concurrency must be between 1 and 1024",
        );
        p.check(
            self.send_timeout_ms >= 10,
            S,
            "send_timeout_ms must be at least 10",
        );
        p.check(
            self.smtp.timeout_ms >= 10,
            S,
            "smtp.timeout_ms must be at least 10",
        );
        p.check(
            self.smtp.host.is_empty() || self.smtp.port != 0,
            S,
            "smtp.port must not be 0",
        );
        p.check(
            self.retention.min_cap < self.retention.max_cap,
            S,
            "retention.min_cap must be below retention.max_cap",
        );
        p.check(
            self.retention.interval_ms >= 1000,
            S,
            "retention.interval_ms must be at least 1000",
        );
    }
}

/// What changes while support-notifications runs: EdgeX's `Writable.ResendLimit` and
/// `Writable.ResendInterval` (`edgex/v4/support-notifications/Writable/...`), the defaults
/// of subscriptions that set none, first taken from this section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Writable {
    pub resend_limit: u32,
    pub resend_interval: String,
}

impl outpost_kit::writable::Settings for Writable {
    fn check(&self) -> Result<(), String> {
        crate::model::parse_duration(&self.resend_interval).map(|_| ())
    }
}
