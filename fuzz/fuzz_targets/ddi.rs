//! The OTA device protocol bodies: a poll answer as the agent reads it, a progress report
//! and reported attributes as ota reads them. Nothing may panic, and what parses keeps its
//! bounds (paths on the same server, details and attributes within their limits).
#![no_main]

use outpost_contracts::ddi::{self, Feedback, Poll, Reported};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Poll::parse(data) {
        assert!((1..=ddi::MAX_POLL_SECONDS).contains(&p.poll_seconds));
        if let Some(a) = p.action {
            for path in [&a.download, &a.feedback] {
                assert!(
                    path.starts_with("/api/v3/ddi/") && !path.contains('@'),
                    "{path}"
                );
            }
        }
    }
    if let Ok(f) = Feedback::parse(data) {
        assert!(f.details.chars().count() <= ddi::MAX_DETAILS_CHARS);
    }
    if let Ok(r) = Reported::parse(data) {
        assert!(r.attributes.len() <= ddi::MAX_ATTRIBUTES);
    }
});
