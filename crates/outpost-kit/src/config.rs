//! Configuration shared by every service, and the loading rules for the node's TOML file.
//!
//! Precedence: built-in defaults < the TOML file (`--config`) < `OUTPOST_<SECTION>__<KEY>`
//! environment variables < command-line flags. Every section denies unknown keys, and
//! validation collects every problem before reporting, so one run shows all mistakes.

use std::net::IpAddr;
use std::path::PathBuf;

use outpost_contracts::envelope::Encoding;
use serde::{Deserialize, Serialize};

/// Sections every service reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommonConfig {
    pub node: NodeConfig,
    pub log: LogConfig,
    pub registry: RegistryConfig,
    pub bus: BusConfig,
    pub storage: StorageConfig,
    pub enrollment: EnrollmentConfig,
    pub security: SecurityConfig,
}

/// `[security]`: how the node's services trust each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Mutual TLS between services: every service serves its API over TLS with a
    /// certificate from the node CA (renewed daily) and presents it when it calls another;
    /// routes other than `ping` answer only callers holding a service's or a local
    /// administrator's certificate (`outpost_pki::internal`); the services use the bus
    /// over TLS with their certificates. On by default. Off: EdgeX's plaintext internal
    /// API, for EdgeX tools that call services directly.
    pub internal_tls: bool,
    /// Where the node's keys are sealed (`outpost_storage::protect`): `auto` (the kernel's
    /// TPM, `/dev/tpmrm0`, when there is one this user may open; key files otherwise), `off`
    /// (key files only), or a TPM in the TCG tools' syntax, required:
    /// `device:/dev/tpmrm0`, `swtpm:host=H,port=P`.
    pub tpm: String,
    /// How long a service instance's certificate lasts, in seconds (a day); it is reissued
    /// with half of that left and used for new connections at once.
    pub service_cert_s: u64,
    /// The system user the node runs as when started as root (`outpost up`, `outpost
    /// run`): created if missing (a system account without a login), given the data dir,
    /// and taken on before any service starts, with no capabilities left. Empty: stay the
    /// user that started the node (refused as root unless `allow_root` says so).
    pub user: String,
    /// Let the node run as root when `user` is empty (not recommended; the start line and
    /// `/health` say so).
    pub allow_root: bool,
    /// Each service process closes a filesystem sandbox (Landlock) around the files it
    /// needs and a system-call filter (seccomp) before it starts (`outpost_kit::sandbox`).
    pub sandbox: bool,
    /// Refuse to start when the sandbox cannot be fully enforced (no Landlock in the
    /// kernel, no service user) instead of warning at start and in `/health`.
    pub require_sandbox: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            internal_tls: true,
            tpm: "auto".into(),
            service_cert_s: 86_400,
            user: "outpost".into(),
            allow_root: false,
            sandbox: true,
            require_sandbox: false,
        }
    }
}

impl SecurityConfig {
    /// `tpm` parsed (checked by validation).
    pub fn tpm_setting(&self) -> Result<outpost_storage::protect::Setting, String> {
        outpost_storage::protect::Setting::parse(&self.tpm)
    }
}

/// `[enrollment]`: how devices get their identity. Every device can be enrolled by an
/// operator (`outpost device enroll`: a secret, and a client certificate from the node CA).
/// With `manufacturer_ca` set, a device presenting a certificate issued by one of those CAs
/// (its common name being the device name) is registered the first time it calls the
/// gateway (zero-touch), pending an operator's approval when `approval` is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentConfig {
    /// PEM files of the CAs whose device certificates are trusted for zero-touch enrollment.
    pub manufacturer_ca: Vec<PathBuf>,
    /// Whether a zero-touch device waits for `outpost device approve` before it may connect.
    pub approval: bool,
    /// The profile and device service a zero-touch device is registered with.
    pub profile: String,
    pub service: String,
    /// Labels a zero-touch device gets.
    pub labels: Vec<String>,
    /// Validity of the client certificates the node CA issues to devices, days.
    pub cert_days: u32,
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        Self {
            manufacturer_ca: Vec::new(),
            approval: true,
            profile: String::new(),
            service: String::new(),
            labels: Vec::new(),
            cert_days: 397,
        }
    }
}

/// `[node]`: where services listen and how they are reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Address every service binds its HTTP API to. Loopback keeps services private; the
    /// gateway is the entry point from outside.
    pub bind: IpAddr,
    /// Host name or address other services use to reach this node's services (what is
    /// registered in the registry).
    pub advertise_host: String,
    /// Largest request body any service accepts, bytes.
    pub max_body_bytes: usize,
    /// Largest number of items a list endpoint returns (EdgeX `MaxResultCount`).
    pub max_result_count: u64,
    /// Instance name when several instances of one service run (e.g. `b`): the service
    /// registers as `<service>@<instance>`, and the gateway and service-to-service calls
    /// spread requests over every instance of `<service>`. Empty for the only instance.
    pub instance: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([127, 0, 0, 1]),
            advertise_host: "127.0.0.1".into(),
            max_body_bytes: 4 * 1024 * 1024,
            max_result_count: 1024,
            instance: String::new(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Level or filter (`info`, `debug`, `info,outpost_core_data=debug`); `RUST_LOG` wins.
    pub level: String,
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `[registry]`: how services find and report to core-keeper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL of core-keeper; empty means this node's core-keeper.
    pub url: String,
    /// How often each service heartbeats; the registry marks it DOWN after three misses.
    pub heartbeat_interval_ms: u64,
    /// Timeout of one call to the registry.
    pub request_timeout_ms: u64,
    /// How long a registry watch request waits for a change before returning.
    pub watch_wait_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            heartbeat_interval_ms: 1000,
            request_timeout_ms: 2000,
            watch_wait_ms: 30_000,
        }
    }
}

/// `[bus]`: the MQTT message bus every service uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// Broker URL (`mqtt://host:port`, or `mqtts://host:port` for MQTT over TLS), or a
    /// NATS server with JetStream (`nats://host:port`, or `tls://host:port` for TLS); empty
    /// means this node's embedded broker (over TLS with the service's certificate when
    /// `security.internal_tls` is on).
    pub url: String,
    /// Payload encoding of messages this node publishes (`json` or `cbor`); both are read.
    pub encoding: Encoding,
    /// Topic prefix of the EdgeX topic scheme.
    pub base_topic: String,
    /// Username for an external broker; empty uses the node's internal credential.
    pub username: String,
    /// File holding the password for `username`.
    pub password_file: Option<PathBuf>,
    /// With `mqtts://` or `tls://`: the CA (PEM) the broker's certificate must chain to (default: the
    /// node CA for the embedded broker, the system's roots for another).
    pub ca_file: Option<PathBuf>,
    /// With `mqtts://` or `tls://`: a client certificate (PEM) and its key to present to an external
    /// broker (mosquitto `require_certificate`). The embedded broker gets the service's own.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Largest message accepted from the bus, bytes; larger ones are counted and dropped.
    pub max_payload_bytes: usize,
    /// Keep-alive interval, seconds.
    pub keep_alive_s: u16,
    /// NATS JetStream (`nats://` or `tls://` URLs): the most the node's stream holds,
    /// bytes. It keeps a message until every durable consumer acknowledged it; when it is
    /// full, publishes are refused (and not acknowledged) until consumers catch up.
    pub stream_max_bytes: u64,
    /// NATS JetStream: seconds a consumer has to acknowledge a message before it is
    /// delivered again (to another member of its group, if it has one).
    pub ack_wait_s: u32,
    /// The node's own durable consumers, as (client ID, filters): NATS JetStream keeps
    /// what they subscribe to from the stream's first start, as the embedded broker's
    /// journal does. Derived from the node's configuration, not set in files.
    #[serde(skip)]
    pub durable_consumers: Vec<(String, Vec<String>)>,
    /// Whether the broker is this node's embedded one, which journals what durable
    /// consumers consume before acknowledging it and takes their confirmations: derived
    /// from the node's configuration (`url` empty or the embedded broker's address), not
    /// set in files.
    #[serde(skip)]
    pub journal: bool,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            encoding: Encoding::Json,
            base_topic: "edgex".into(),
            username: String::new(),
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            max_payload_bytes: 1024 * 1024,
            keep_alive_s: 30,
            stream_max_bytes: 1 << 30,
            ack_wait_s: 30,
            durable_consumers: Vec::new(),
            journal: false,
        }
    }
}

/// `[storage]`: how services' embedded databases commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `full`: fsync every commit (survives power loss). `normal`: fsync at checkpoints.
    pub sync: outpost_storage::SyncMode,
    /// Page cache per database connection, KiB.
    pub cache_kib: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            sync: outpost_storage::SyncMode::Full,
            cache_kib: 8192,
        }
    }
}

impl StorageConfig {
    pub fn open_options(&self) -> outpost_storage::OpenOptions {
        outpost_storage::OpenOptions {
            sync: self.sync,
            cache_kib: self.cache_kib,
        }
    }
}

/// Collects validation errors of a configuration.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn push(&mut self, section: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("[{section}] {msg}"));
    }

    pub fn check(&mut self, ok: bool, section: &str, msg: impl std::fmt::Display) {
        if !ok {
            self.push(section, msg);
        }
    }

    pub fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }
}

/// A section that can check itself.
pub trait Validate {
    fn validate(&self, problems: &mut Problems);
}

impl Validate for CommonConfig {
    fn validate(&self, p: &mut Problems) {
        let e = &self.enrollment;
        for f in &e.manufacturer_ca {
            p.check(
                f.is_file(),
                "enrollment",
                format!("manufacturer_ca {} does not exist", f.display()),
            );
        }
        p.check(
            e.manufacturer_ca.is_empty() || (!e.profile.is_empty() && !e.service.is_empty()),
            "enrollment",
            "zero-touch enrollment (manufacturer_ca) needs the profile and service new devices get",
        );
        p.check(
            (1..=3650).contains(&e.cert_days),
            "enrollment",
            "cert_days must be 1 to 3650",
        );
        p.check(
            !self.node.advertise_host.is_empty(),
            "node",
            "advertise_host must not be empty",
        );
        p.check(
            self.node.max_body_bytes >= 1024,
            "node",
            "max_body_bytes must be at least 1024",
        );
        p.check(
            self.node.max_result_count >= 1,
            "node",
            "max_result_count must be at least 1",
        );
        p.check(
            self.node.instance.is_empty()
                || (self.node.instance.len() <= 32
                    && self
                        .node
                        .instance
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')),
            "node",
            "instance must be at most 32 letters, digits, '-' or '_'",
        );
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            p.push(
                "log",
                format!("level '{}' is not a valid filter: {e}", self.log.level),
            );
        }
        p.check(
            self.registry.heartbeat_interval_ms >= 50,
            "registry",
            "heartbeat_interval_ms must be at least 50",
        );
        p.check(
            self.registry.request_timeout_ms >= 10,
            "registry",
            "request_timeout_ms must be at least 10",
        );
        p.check(
            self.security.service_cert_s >= 10,
            "security",
            "service_cert_s must be at least 10",
        );
        p.check(
            self.security.user.is_empty()
                || self
                    .security
                    .user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)),
            "security",
            "user must be a system user name (letters, digits, '_', '-', '.')",
        );
        p.check(
            self.security.sandbox || !self.security.require_sandbox,
            "security",
            "require_sandbox needs sandbox = true",
        );
        if let Err(e) = self.security.tpm_setting() {
            p.push("security", format!("tpm: {e}"));
        }
        let scheme = if self.security.internal_tls {
            "https://"
        } else {
            "http://"
        };
        p.check(
            self.registry.url.is_empty() || self.registry.url.starts_with(scheme),
            "registry",
            format!(
                "url '{}' must be an {scheme} URL (security.internal_tls = {})",
                self.registry.url, self.security.internal_tls
            ),
        );
        let nats = self.bus.url.starts_with("nats://");
        let tls = self.bus.url.starts_with("mqtts://") || self.bus.url.starts_with("tls://");
        p.check(
            self.bus.url.is_empty() || self.bus.url.starts_with("mqtt://") || nats || tls,
            "bus",
            format!(
                "url '{}' must be mqtt://host:port or mqtts://host:port (MQTT), or \
                 nats://host:port or tls://host:port (NATS JetStream)",
                self.bus.url
            ),
        );
        p.check(
            self.bus.ack_wait_s > 0 && self.bus.stream_max_bytes > 0,
            "bus",
            "ack_wait_s and stream_max_bytes must be above 0",
        );
        p.check(
            self.bus.cert_file.is_some() == self.bus.key_file.is_some(),
            "bus",
            "cert_file and key_file go together",
        );
        p.check(
            tls || (self.bus.ca_file.is_none() && self.bus.cert_file.is_none()),
            "bus",
            "ca_file, cert_file and key_file need an mqtts:// or tls:// url",
        );
        p.check(
            !self.bus.base_topic.is_empty()
                && !self.bus.base_topic.contains(['#', '+'])
                && !self.bus.base_topic.ends_with('/'),
            "bus",
            "base_topic must be non-empty, without wildcards or a trailing '/'",
        );
        p.check(
            self.bus.username.is_empty() || self.bus.password_file.is_some(),
            "bus",
            "username needs password_file",
        );
        p.check(
            self.bus.max_payload_bytes >= 1024,
            "bus",
            "max_payload_bytes must be at least 1024",
        );
        p.check(
            self.storage.cache_kib >= 64,
            "storage",
            "cache_kib must be at least 64",
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// Applies `OUTPOST_<SECTION>__<KEY>[__<SUBKEY>]=value` variables onto a TOML tree.
///
/// Section and key names are lowercased (`CORE_DATA` is `core_data`). A value that parses as
/// a TOML value (number, boolean, array, quoted string) is used as such; anything else is
/// taken as a string, so a string that looks like a number must be quoted (`'"1234"'`).
/// Variables that are not valid UTF-8 are ignored; every bad variable is reported.
pub fn apply_env_overrides(
    root: &mut toml::Table,
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<Vec<String>, ConfigError> {
    let mut applied = Vec::new();
    let mut errors = Vec::new();
    for (name, raw) in vars {
        let (Some(name), Some(raw)) = (name.to_str(), raw.to_str()) else {
            continue;
        };
        let Some(rest) = name.strip_prefix("OUTPOST_") else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        match set_path(root, &path, raw) {
            Ok(()) => applied.push(name.to_string()),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(applied)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

/// Applies `section.key=value` overrides (the `--set` flag); every bad one is reported.
pub fn apply_overrides(root: &mut toml::Table, sets: &[String]) -> Result<(), ConfigError> {
    let mut errors = Vec::new();
    for set in sets {
        let Some((key, raw)) = set.split_once('=') else {
            errors.push(format!("--set {set}: expected section.key=value"));
            continue;
        };
        let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
        if let Err(e) = set_path(root, &path, raw.trim()) {
            errors.push(format!("--set {set}: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

fn set_path(root: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    if path.len() < 2 || path.iter().any(String::is_empty) {
        return Err("expected a section and a key".into());
    }
    let value = parse_env_value(raw);
    let mut table = &mut *root;
    for seg in &path[..path.len() - 1] {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("'{seg}' is not a section"))?;
    }
    if let Some(last) = path.last() {
        table.insert(last.clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Parses a TOML document into a table, naming the file in errors.
pub fn parse_toml(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Parse(format!("{origin}: {e}")))
}

/// Deserializes a typed config from a TOML tree.
pub fn from_table<T: serde::de::DeserializeOwned>(
    table: toml::Table,
    origin: &str,
) -> Result<T, ConfigError> {
    T::deserialize(toml::Value::Table(table))
        .map_err(|e| ConfigError::Parse(format!("{origin}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_nest_and_type() {
        let mut t = parse_toml("[core_data]\nport = 1\n", "test").unwrap();
        let vars = [
            ("OUTPOST_CORE_DATA__PORT", "59999"),
            ("OUTPOST_LOG__FORMAT", "json"),
            ("OUTPOST_BUS__ENCODING", "\"cbor\""),
            ("OUTPOST_DATA_DIR", "/ignored"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let applied = apply_env_overrides(&mut t, vars).unwrap();
        assert_eq!(applied.len(), 3);
        assert_eq!(t["core_data"]["port"].as_integer(), Some(59999));
        assert_eq!(t["log"]["format"].as_str(), Some("json"));
        assert_eq!(t["bus"]["encoding"].as_str(), Some("cbor"));
        apply_overrides(
            &mut t,
            &["core_data.port=1".into(), "log.level = \"debug\"".into()],
        )
        .unwrap();
        assert_eq!(t["core_data"]["port"].as_integer(), Some(1));
        assert_eq!(t["log"]["level"].as_str(), Some("debug"));
        match apply_overrides(&mut t, &["nonsense".into(), "log=1".into()]) {
            Err(ConfigError::Invalid(v)) => assert_eq!(v.len(), 2, "{v:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation_collects_every_problem() {
        let mut c = CommonConfig::default();
        c.node.advertise_host.clear();
        c.log.level = "[[[".into();
        c.bus.url = "http://nope".into();
        let mut p = Problems::default();
        c.validate(&mut p);
        match p.into_result() {
            Err(ConfigError::Invalid(v)) => assert_eq!(v.len(), 3, "{v:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let t = parse_toml("bind = \"127.0.0.1\"\nbnid = 1\n", "test").unwrap();
        assert!(from_table::<NodeConfig>(t, "test").is_err());
    }
}
