//! An OTA artifact as ota receives it on upload and the agent before installing: the
//! manifest JSON (checked), its signature, and trusted keys as configured. Nothing may
//! panic; a manifest that parses keeps its checks (64 lowercase hex digits of digest) and
//! no signature made of these bytes verifies against a key that did not sign it.
#![no_main]

use outpost_manifest::{Manifest, PublicKey, verify};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        assert_eq!(m.sha256.len(), 64);
        assert!(
            m.sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
    }
    let text = String::from_utf8_lossy(data);
    let key = PublicKey::parse(&text);
    if let Ok(k) = &key {
        assert_eq!(PublicKey::parse(&k.encoded()).as_ref(), Ok(k));
    }
    // The input as a signature over itself, against a key derived from it: only a real
    // Ed25519 signature by that key could verify, which random bytes are not.
    let keys: Vec<PublicKey> = key.into_iter().collect();
    let _ = verify(data, &text, &keys);
});
