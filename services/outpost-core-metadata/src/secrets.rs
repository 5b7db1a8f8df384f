//! Device credentials: the secret a device presents to the broker (as its MQTT password)
//! and to device-rest (as its bearer token).
//!
//! Only a salted SHA-256 of a secret is stored. Secrets are tokens, not passwords people
//! choose: a generated one has 192 random bits, and a chosen one must be at least
//! [`MIN_SECRET_LEN`] characters, so a fast hash is enough. The salt keeps equal secrets
//! of two devices from having equal hashes.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::store::StoredSecret;

/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest secret accepted (an MQTT password and an HTTP header must carry it).
pub const MAX_SECRET_LEN: usize = 256;

/// Why a secret is not accepted; the message tells the client what is.
pub fn check(secret: &str) -> Result<(), String> {
    let len = secret.chars().count();
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&len) {
        return Err(format!(
            "a device secret has {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters, not {len}"
        ));
    }
    if !secret.chars().all(|c| c.is_ascii_graphic()) {
        return Err("a device secret is printable ASCII without spaces".into());
    }
    Ok(())
}

/// A new random secret: 24 bytes, base64url (32 characters).
pub fn generate() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// What is stored for `secret`.
pub fn seal(secret: &str) -> Result<StoredSecret, getrandom::Error> {
    let mut salt = vec![0u8; 16];
    getrandom::fill(&mut salt)?;
    let hash = digest(&salt, secret);
    Ok(StoredSecret { salt, hash })
}

/// Whether `secret` is the one `stored` was made from (in constant time).
pub fn matches(stored: &StoredSecret, secret: &str) -> bool {
    let h = digest(&stored.salt, secret);
    subtle::ConstantTimeEq::ct_eq(&h[..], &stored.hash[..]).into()
}

fn digest(salt: &[u8], secret: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_match() {
        let s = generate().unwrap();
        assert_eq!(s.len(), 32);
        assert!(check(&s).is_ok());
        let stored = seal(&s).unwrap();
        assert!(matches(&stored, &s));
        assert!(!matches(&stored, "another-secret-value"));
        // The same secret sealed twice gives different hashes.
        assert_ne!(seal(&s).unwrap().hash, stored.hash);
    }

    #[test]
    fn policy() {
        assert!(check("short").is_err());
        assert!(check("has a space in the middle").is_err());
        assert!(check(&"x".repeat(257)).is_err());
        assert!(check("0123456789abcdef").is_ok());
    }
}
