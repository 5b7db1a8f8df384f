//! Per-device flood control: a token bucket per device, so a device that floods is slowed
//! down (its excess messages are refused and counted) while every other device is served.

use std::time::Instant;

use outpost_kit::limit::Limiter;

/// Token buckets keyed by device name.
#[derive(Debug)]
pub struct Throttle {
    buckets: Limiter,
}

impl Throttle {
    /// `rate` messages per second on average and `burst` above it per device; a rate of 0
    /// turns throttling off.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            buckets: Limiter::new(rate, f64::from(burst)),
        }
    }

    /// Takes one message's token from `device`'s bucket; false when the bucket is empty.
    pub fn admit(&self, device: &str) -> bool {
        self.admit_at(device, Instant::now())
    }

    fn admit_at(&self, device: &str, now: Instant) -> bool {
        self.buckets.take_at(device, now).is_ok()
    }

    /// Forgets a removed device.
    pub fn forget(&self, device: &str) {
        self.buckets.forget(device);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bursts_then_rate_per_device() {
        let t = Throttle::new(10.0, 5);
        let t0 = Instant::now();
        let admitted = (0..20).filter(|_| t.admit_at("flood", t0)).count();
        assert_eq!(admitted, 5, "the burst, then nothing");
        // Another device is not affected by the flood.
        assert!(t.admit_at("quiet", t0));
        // After 1 s, 10 more tokens (capped at the burst of 5).
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (0..20).filter(|_| t.admit_at("flood", t1)).count();
        assert_eq!(admitted, 5);
        let t2 = t1 + Duration::from_millis(200);
        let admitted = (0..20).filter(|_| t.admit_at("flood", t2)).count();
        assert_eq!(admitted, 2);
    }

    #[test]
    fn zero_rate_is_off() {
        let t = Throttle::new(0.0, 1);
        assert!((0..1000).all(|_| t.admit("d")));
    }
}
