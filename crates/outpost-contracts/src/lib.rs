//! Every wire format Outpost speaks, defined exactly once.
//!
//! - EdgeX v3 REST DTOs (as served by EdgeX 4.0): events and readings, device profiles, devices,
//!   device services, provision watchers, registry registrations and key/values, and the common
//!   request/response envelopes with EdgeX's error body.
//! - The message bus: EdgeX topic scheme ([`topics`]) and message envelope ([`envelope`]), in
//!   JSON (EdgeX-compatible, the default) or CBOR (compact).
//! - Value types and the checks a reading value must pass ([`value`]).
//! - Outpost's own APIs, as the CLI and scripts use them: ota ([`ota`], and [`ddi`] for
//!   what devices and the agent exchange with it), the cloud node
//!   ([`cloud`]) and export ([`export`], with what an edge sends a cloud node).
//!
//! This crate has no I/O and no async: services, the bus and the CLI all build on it.

pub mod cloud;
pub mod common;
pub mod compact;
pub mod ddi;
pub mod envelope;
pub mod event;
pub mod export;
pub mod json;
pub mod metadata;
pub mod names;
pub mod ota;
pub mod registry;
pub mod system_event;
pub mod topics;
pub mod value;

/// The EdgeX API version every DTO carries.
pub const API_VERSION: &str = "v3";

/// The EdgeX release whose API Outpost serves, reported as `version` by every service's
/// `/api/v3/version` (Outpost's own version is `outpostVersion`).
pub const EDGEX_RELEASE: &str = "4.0.2";

/// Nanoseconds since the Unix epoch, as EdgeX uses for `origin`.
pub fn now_nanos() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch, as EdgeX uses for `created`/`modified`.
pub fn now_millis() -> i64 {
    now_nanos() / 1_000_000
}
