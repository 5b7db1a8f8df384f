//! `[gateway]`: the entry point's listener, certificates, tokens, limits and cache.

use std::net::SocketAddr;
use std::path::PathBuf;

use outpost_kit::config::{Problems, Validate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// The TLS listener: the node's one entry point from outside.
    pub listen: SocketAddr,
    /// Plain HTTP port on `node.bind` for health, metrics and the registry (like every
    /// service); never the way in from outside.
    pub port: u16,
    /// Operator-supplied certificate chain (PEM) and key; empty uses a certificate issued
    /// by the node's own CA. Either way the files are reloaded when they change.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Extra DNS names or addresses for the node-issued certificate (localhost, the host
    /// name and `node.advertise_host` are always in it).
    pub tls_names: Vec<String>,
    /// How often the certificate files are checked for changes, seconds.
    pub cert_reload_s: u64,
    /// Lifetime of access tokens (JWT), seconds.
    pub access_token_ttl_s: u64,
    /// Lifetime of refresh tokens, seconds.
    pub refresh_token_ttl_s: u64,
    /// Failed logins allowed in a burst per user name and client address (four times as
    /// many per address for any user, ten times as many per user name from addresses it
    /// never logged in from) before logins are refused with 429, and how fast that
    /// allowance refills.
    pub login_burst: u32,
    pub login_refill_s: u64,
    /// Requests per second and burst per client identity (user, API key or, before
    /// authentication, address); 0 turns the limit off.
    pub rate_per_s: f64,
    pub rate_burst: f64,
    /// Tighter limits for some routes (by path prefix), per client identity.
    pub route_limits: Vec<RouteLimit>,
    /// Longest wait for an upstream's response head, unless a route sets its own.
    pub upstream_timeout_ms: u64,
    /// Per-route upstream timeouts (by path prefix).
    pub route_timeouts: Vec<RouteTimeout>,
    /// How long an instance that failed is left out of load balancing.
    pub eject_ms: u64,
    /// Retries of idempotent requests allowed, as a share of requests (plus
    /// `retry_min_per_s` always available).
    pub retry_ratio: f64,
    pub retry_min_per_s: f64,
    /// A client must send a complete request head within this time.
    pub header_timeout_ms: u64,
    /// A client must send the whole request body within this time.
    pub body_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this time.
    pub idle_timeout_ms: u64,
    /// Largest request head, bytes.
    pub max_header_bytes: usize,
    /// Responses of GETs on metadata objects are cached this long, seconds (0: no cache).
    pub cache_ttl_s: u64,
    /// When an upstream fails, cached responses up to this old are served, marked stale.
    pub cache_stale_s: u64,
    /// Largest number of cached responses.
    pub cache_entries: usize,
    /// Directory of static files served under `/ui/` (the web dashboard); none by default.
    pub static_dir: Option<PathBuf>,
    /// Where users, API keys and tokens are kept: the gateway's SQLite database (the
    /// default), or PostgreSQL for several gateway instances.
    pub storage: outpost_kit::pg::StorageConfig,
    /// Event loops serving the TLS listener, each on its own thread; 0 = one per CPU core
    /// (at most 8).
    pub threads: usize,
    /// The access log (one JSON line per request): a file (relative paths are under the
    /// data dir), `-` for the node log, or empty for none.
    pub access_log: String,
    /// The access log file is rotated past this size, keeping this many old files.
    pub access_log_max_bytes: u64,
    pub access_log_keep: usize,
}

/// A rate limit for requests whose path starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimit {
    pub prefix: String,
    pub rate_per_s: f64,
    pub burst: f64,
}

/// An upstream timeout for requests whose path starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeout {
    pub prefix: String,
    pub timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            port: 59800,
            cert_file: None,
            key_file: None,
            tls_names: Vec::new(),
            cert_reload_s: 10,
            access_token_ttl_s: 900,
            refresh_token_ttl_s: 30 * 24 * 3600,
            login_burst: 5,
            login_refill_s: 12,
            rate_per_s: 500.0,
            rate_burst: 1000.0,
            route_limits: Vec::new(),
            upstream_timeout_ms: 30_000,
            route_timeouts: Vec::new(),
            eject_ms: 10_000,
            retry_ratio: 0.2,
            retry_min_per_s: 10.0,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 120_000,
            max_header_bytes: 16 * 1024,
            cache_ttl_s: 60,
            cache_stale_s: 24 * 3600,
            cache_entries: 10_000,
            static_dir: None,
            storage: outpost_kit::pg::StorageConfig::default(),
            threads: 0,
            access_log: "log/access.log".into(),
            access_log_max_bytes: 16 * 1024 * 1024,
            access_log_keep: 3,
        }
    }
}

impl Config {
    /// The number of event loops `threads` asks for.
    pub fn event_loops(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
            n => n,
        }
    }
}

outpost_kit::service_config!(Config, enabled, "https" => listen);

impl Validate for Config {
    fn validate(&self, p: &mut Problems) {
        const S: &str = "gateway";
        for problem in self.storage.problems() {
            p.check(false, "gateway.storage", problem);
        }
        p.check(
            self.listen.port() != 0,
            S,
            "listen needs a port other than 0",
        );
        p.check(
            self.cert_file.is_some() == self.key_file.is_some(),
            S,
            "cert_file and key_file go together",
        );
        p.check(
            self.cert_reload_s >= 1,
            S,
            "cert_reload_s must be at least 1",
        );
        p.check(
            self.access_token_ttl_s >= 10,
            S,
            "access_token_ttl_s must be at least 10",
        );
        p.check(
            self.refresh_token_ttl_s >= self.access_token_ttl_s,
            S,
            "refresh_token_ttl_s must not be shorter than access_token_ttl_s",
        );
        p.check(self.login_burst >= 1, S, "login_burst must be at least 1");
        p.check(
            self.login_refill_s >= 1,
            S,
            "login_refill_s must be at least 1",
        );
        p.check(
            self.rate_per_s >= 0.0 && self.rate_burst >= 0.0,
            S,
            "rate_per_s and rate_burst must not be negative",
        );
        p.check(
            self.rate_per_s == 0.0 || self.rate_burst >= 1.0,
            S,
            "rate_burst must be at least 1 when rate_per_s is set",
        );
        for l in &self.route_limits {
            p.check(
                l.prefix.starts_with('/') && l.rate_per_s > 0.0 && l.burst >= 1.0,
                S,
                format!(
                    "route limit '{}' needs a prefix starting with '/', rate_per_s > 0 and burst >= 1",
                    l.prefix
                ),
            );
        }
        for t in &self.route_timeouts {
            p.check(
                t.prefix.starts_with('/') && t.timeout_ms >= 10,
                S,
                format!(
                    "route timeout '{}' needs a prefix starting with '/' and timeout_ms >= 10",
                    t.prefix
                ),
            );
        }
        p.check(
            self.upstream_timeout_ms >= 10,
            S,
            "upstream_timeout_ms must be at least 10",
        );
        p.check(
            (0.0..=1.0).contains(&self.retry_ratio) && self.retry_min_per_s >= 0.0,
            S,
            "retry_ratio must be within 0..1 and retry_min_per_s not negative",
        );
        p.check(
            self.header_timeout_ms >= 100
                && self.body_timeout_ms >= 100
                && self.idle_timeout_ms >= 100,
            S,
            "header_timeout_ms, body_timeout_ms and idle_timeout_ms must be at least 100",
        );
        p.check(
            self.max_header_bytes >= 8192,
            S,
            "max_header_bytes must be at least 8192",
        );
        p.check(self.threads <= 64, S, "threads must be at most 64");
        p.check(
            self.access_log_max_bytes >= 64 * 1024,
            S,
            "access_log_max_bytes must be at least 65536",
        );
        p.check(
            self.cache_entries >= 1,
            S,
            "cache_entries must be at least 1",
        );
    }
}
