//! Intervals of auto events and registry health checks (`10s`, `1m30s`): any text is an
//! interval or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = outpost_contracts::metadata::parse_interval(text);
    }
});
