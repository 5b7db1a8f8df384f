//! Firmware artifacts as the tests of OTA make them: payloads with a known pattern, and
//! manifests that describe them.

use serde_json::json;

/// `n` bytes of a pattern that depends on `seed`.
pub fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 31) as u8).wrapping_add(seed))
        .collect()
}

/// The SHA-256 of `b`, in hex.
pub fn sha256(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

/// The manifest (as JSON bytes, to be signed) of `data` as firmware `name` `version` for
/// Thermostats.
pub fn manifest(name: &str, version: &str, data: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "name": name, "version": version, "compatible": ["Thermostat"], "size": data.len(),
        "sha256": sha256(data), "payloadType": "file"
    }))
    .expect("json")
}
