//! Token buckets keyed by client identity (the gateway's per client and route, login and
//! MQTT credential failures, device-service flood control), answering how long to wait when empty. Memory is bounded: when
//! the table grows past its bound, buckets that have refilled completely (clients that went
//! quiet) are dropped, since a new bucket starts full anyway.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Limiter {
    /// `rate` tokens per second up to `burst`; a rate of 0 admits everything.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate: rate.max(0.0),
            burst: burst.max(1.0),
            max_keys: 100_000,
            buckets: Mutex::default(),
        }
    }

    /// Takes a token from `key`'s bucket; when empty, how long until one is there.
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        self.take_at(key, Instant::now())
    }

    /// [`Limiter::take`] at `now`.
    pub fn take_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
        }
        // A known client (the common case) costs no allocation.
        if !buckets.contains_key(key) {
            buckets.insert(
                key.to_string(),
                Bucket {
                    tokens: self.burst,
                    last: now,
                },
            );
        }
        let Some(b) = buckets.get_mut(key) else {
            return Ok(());
        };
        b.tokens = (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * self.rate)
            .min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    /// Forgets `key`'s bucket (a removed client starts afresh).
    pub fn forget(&self, key: &str) {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// Returns a token taken from `key`'s bucket (up to the burst): for callers that take
    /// one before they know whether it should count.
    pub fn give_back(&self, key: &str) {
        if self.rate == 0.0 {
            return;
        }
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = buckets.get_mut(key) {
            b.tokens = (b.tokens + 1.0).min(self.burst);
        }
    }

    /// Only looks: whether `key` has a token now (the login limiter spends tokens on
    /// failures only).
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match buckets.get(key) {
            None => Ok(()),
            Some(b) => {
                let tokens = (b.tokens
                    + now.saturating_duration_since(b.last).as_secs_f64() * self.rate)
                    .min(self.burst);
                if tokens >= 1.0 || self.rate == 0.0 {
                    Ok(())
                } else {
                    Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
                }
            }
        }
    }
}

/// Whole seconds for `Retry-After`, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_then_recovery() {
        let l = Limiter::new(2.0, 3.0);
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.take_at("a", t0).is_ok()));
        let wait = l.take_at("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        assert!(l.take_at("b", t0).is_ok(), "other clients are not affected");
        assert!(l.take_at("a", t0 + Duration::from_millis(500)).is_ok());
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    }

    #[test]
    fn bounded_keys() {
        let mut l = Limiter::new(1000.0, 1.0);
        l.max_keys = 10;
        let t0 = Instant::now();
        for i in 0..100 {
            let _ = l.take_at(&i.to_string(), t0 + Duration::from_millis(i * 10));
        }
        assert!(l.buckets.lock().unwrap().len() <= 11);
    }
}
