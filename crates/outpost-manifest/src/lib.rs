//! Artifact manifests and their Ed25519 signatures (docs/ota.md): what the OTA service
//! checks at upload and what a device agent checks before installing.
//!
//! A manifest is a JSON object (see [`Manifest`]); what is signed is the exact bytes of the
//! manifest as sent, so no canonical form is needed: the server and the agents verify the
//! same bytes they store and hand out. A signature is the 64-byte Ed25519 signature of those
//! bytes. A public key is 32 bytes, written as `ed25519:<base64>`; its id is the first 8
//! bytes of its SHA-256, hex.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{self, KeyPair as _};
use serde::{Deserialize, Serialize};

/// What an artifact is and which devices may install it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// Device types (profile names) that may install it.
    pub compatible: Vec<String>,
    /// Payload size, bytes.
    pub size: u64,
    /// SHA-256 of the payload, hex.
    pub sha256: String,
    /// What the payload is, for the agent (`file`, `tar`, ...).
    pub payload_type: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the manifest is not valid: {0}")]
    Invalid(String),
    #[error("the signature does not verify against any trusted key")]
    Untrusted,
    #[error("the signature is not 64 bytes of base64")]
    BadSignature,
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
}

impl Manifest {
    /// Parses and checks manifest bytes (not the signature).
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid(e.to_string()))?;
        if !valid_part(&m.name) || !valid_part(&m.version) {
            return Err(ManifestError::Invalid(
                "name and version are 1 to 128 letters, digits, '-', '_', '.' or '+'".into(),
            ));
        }
        if m.sha256.len() != 64 || !m.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ManifestError::Invalid(
                "sha256 must be 64 hex digits".into(),
            ));
        }
        if m.compatible.is_empty() {
            return Err(ManifestError::Invalid(
                "compatible must name at least one device type".into(),
            ));
        }
        if m.payload_type.is_empty() {
            return Err(ManifestError::Invalid(
                "payloadType must not be empty".into(),
            ));
        }
        Ok(Self {
            sha256: m.sha256.to_ascii_lowercase(),
            ..m
        })
    }
}

/// A trusted public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; 32],
}

impl PublicKey {
    /// Parses `ed25519:<base64>` (or the bare base64).
    pub fn parse(s: &str) -> Result<Self, String> {
        let b64 = s.trim().strip_prefix("ed25519:").unwrap_or(s.trim());
        let raw = B64.decode(b64).map_err(|e| format!("not base64: {e}"))?;
        let bytes: [u8; 32] = raw
            .try_into()
            .map_err(|_| "an Ed25519 public key is 32 bytes".to_string())?;
        Ok(Self { bytes })
    }

    pub fn id(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.bytes);
        hex::encode(&d.as_ref()[..8])
    }

    pub fn encoded(&self) -> String {
        format!("ed25519:{}", B64.encode(self.bytes))
    }

    fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.bytes)
            .verify(message, sig)
            .is_ok()
    }
}

/// Verifies `signature_b64` over `manifest` against `keys`; returns the id of the key that
/// signed it.
pub fn verify(
    manifest: &[u8],
    signature_b64: &str,
    keys: &[PublicKey],
) -> Result<String, ManifestError> {
    let sig = B64
        .decode(signature_b64.trim())
        .map_err(|_| ManifestError::BadSignature)?;
    if sig.len() != 64 {
        return Err(ManifestError::BadSignature);
    }
    keys.iter()
        .find(|k| k.verifies(manifest, &sig))
        .map(PublicKey::id)
        .ok_or(ManifestError::Untrusted)
}

/// A signing key (PKCS#8, as `outpost ota keygen` writes it).
pub struct SigningKey(signature::Ed25519KeyPair);

impl SigningKey {
    /// A new key: returns it and its PKCS#8 document (what to store, secretly).
    pub fn generate() -> Result<(Self, Vec<u8>), String> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "no randomness for a key".to_string())?;
        let key = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(Self)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))
    }

    pub fn public(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.0.public_key().as_ref());
        PublicKey { bytes }
    }

    /// The base64 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        B64.encode(self.0.sign(message).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "name": "fw", "version": "1.2.3", "compatible": ["Thermostat"], "size": 3,
            "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "payloadType": "file"
        }))
        .expect("json")
    }

    #[test]
    fn a_signature_verifies_only_with_its_key_and_its_bytes() {
        let (key, pkcs8) = SigningKey::generate().expect("key");
        let again = SigningKey::from_pkcs8(&pkcs8).expect("reload");
        assert_eq!(key.public(), again.public());
        let m = manifest();
        let sig = key.sign(&m);
        let (other, _) = SigningKey::generate().expect("key");
        let keys = [other.public(), key.public()];
        assert_eq!(verify(&m, &sig, &keys), Ok(key.public().id()));
        assert_eq!(verify(&m, &sig, &keys[..1]), Err(ManifestError::Untrusted));
        let mut tampered = m.clone();
        let at = tampered.len() - 3;
        tampered[at] ^= 1;
        assert_eq!(
            verify(&tampered, &sig, &keys),
            Err(ManifestError::Untrusted)
        );
        assert_eq!(verify(&m, "AAAA", &keys), Err(ManifestError::BadSignature));
        assert_eq!(PublicKey::parse(&key.public().encoded()), Ok(key.public()));
        let parsed = Manifest::parse(&m).expect("manifest");
        assert_eq!(parsed.version, "1.2.3");
        assert!(Manifest::parse(b"{\"name\":\"x\"}").is_err());
    }
}
