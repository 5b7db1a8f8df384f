//! A device profile as core-metadata takes it (YAML upload or JSON), then its validation.
#![no_main]

use outpost_contracts::metadata::DeviceProfile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = DeviceProfile::from_yaml(text) {
        let _ = p.validate(None);
    }
    if let Ok(p) = serde_json::from_slice::<DeviceProfile>(data) {
        let _ = p.validate(None);
    }
});
