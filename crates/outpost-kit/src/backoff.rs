//! Exponential backoff with jitter, for reconnects, re-registrations and restarts.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: base·2ⁿ capped at max, with ±25 % jitter so that many clients
    /// retrying together spread out.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        let capped = exp.min(self.max);
        let jitter = 0.75 + 0.5 * unit_random();
        capped.mul_f64(jitter)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// A uniform number in [0, 1) from the OS generator behind UUIDs (jitter only).
fn unit_random() -> f64 {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(75) && first <= Duration::from_millis(125));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late <= Duration::from_millis(1250) && late >= Duration::from_millis(750));
        b.reset();
        assert_eq!(b.attempts(), 0);
    }
}
