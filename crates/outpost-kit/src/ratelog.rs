//! Rate-limited logging for bad input: the first occurrence of each kind is logged at once,
//! later ones at most once per interval with the number suppressed in between. A flood of
//! garbage then costs a counter increment, not a log line per message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimitedLog {
    interval: Duration,
    state: Mutex<HashMap<String, (Instant, u64)>>,
}

impl RateLimitedLog {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::default(),
        }
    }

    /// Returns `Some(suppressed)` when a line for `key` should be logged now.
    pub fn check(&self, key: &str) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        // Bound the map: keys are kinds of problems, but be safe against unbounded keys.
        if state.len() > 1024 {
            state.clear();
        }
        match state.get_mut(key) {
            Some((last, suppressed)) => {
                if now.duration_since(*last) >= self.interval {
                    let n = *suppressed;
                    *last = now;
                    *suppressed = 0;
                    Some(n)
                } else {
                    *suppressed += 1;
                    None
                }
            }
            None => {
                state.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_logs_then_suppresses() {
        let r = RateLimitedLog::new(Duration::from_secs(3600));
        assert_eq!(r.check("a"), Some(0));
        assert_eq!(r.check("a"), None);
        assert_eq!(r.check("a"), None);
        assert_eq!(r.check("b"), Some(0));
    }
}
