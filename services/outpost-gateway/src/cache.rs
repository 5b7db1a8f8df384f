//! Response cache for GETs of relatively static objects (core-metadata's profiles, devices,
//! device services, provision watchers, units of measure).
//!
//! A fresh entry (younger than `cache_ttl_s`) is served without asking the backend. Every
//! metadata change (a system event on the bus) empties the cache, so a fresh hit never shows
//! an object older than the last change the gateway heard of. When the backend is down,
//! times out or answers 5xx, an entry up to `cache_stale_s` old is served instead, marked
//! with `Warning: 110 - "Response is Stale"` and `Age` (as nginx's `proxy_cache_use_stale`);
//! stale entries are kept through invalidations for exactly that purpose, but never served
//! as fresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;

/// Largest response body kept.
pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Entry {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored: Instant,
    /// Emptied by an invalidation: may only be served stale.
    pub invalidated: bool,
}

#[derive(Debug)]
pub struct Cache {
    ttl: Duration,
    stale: Duration,
    max: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

/// Whether `service` + `path` is a cacheable object read.
pub fn cacheable(service: &str, path: &str) -> bool {
    const PREFIXES: [&str; 5] = [
        "/api/v3/deviceprofile/",
        "/api/v3/device/",
        "/api/v3/deviceservice/",
        "/api/v3/provisionwatcher/",
        "/api/v3/uom",
    ];
    service == "core-metadata" && PREFIXES.iter().any(|p| path.starts_with(p))
}

impl Cache {
    pub fn new(ttl: Duration, stale: Duration, max: usize) -> Self {
        Self {
            ttl,
            stale,
            max: max.max(1),
            entries: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh entry for `key`.
    pub fn fresh(&self, key: &str) -> Option<Entry> {
        let m = self.map();
        let e = m.get(key)?;
        (!e.invalidated && e.stored.elapsed() < self.ttl).then(|| e.clone())
    }

    /// Any entry young enough to be served stale.
    pub fn stale(&self, key: &str) -> Option<Entry> {
        let m = self.map();
        let e = m.get(key)?;
        (e.stored.elapsed() < self.stale).then(|| e.clone())
    }

    pub fn put(&self, key: String, status: http::StatusCode, headers: HeaderMap, body: Bytes) {
        let mut m = self.map();
        if m.len() >= self.max && !m.contains_key(&key) {
            // Drop the oldest tenth: simple, and rare with a sensible bound.
            let mut ages: Vec<(Instant, String)> =
                m.iter().map(|(k, e)| (e.stored, k.clone())).collect();
            ages.sort();
            for (_, k) in ages.into_iter().take(self.max / 10 + 1) {
                m.remove(&k);
            }
        }
        m.insert(
            key,
            Entry {
                status,
                headers,
                body,
                stored: Instant::now(),
                invalidated: false,
            },
        );
    }

    /// Metadata changed: nothing may be served fresh any more.
    pub fn invalidate(&self) {
        let stale = self.stale;
        let mut m = self.map();
        m.retain(|_, e| e.stored.elapsed() < stale);
        for e in m.values_mut() {
            e.invalidated = true;
        }
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_stale_and_invalidation() {
        let c = Cache::new(Duration::from_secs(60), Duration::from_secs(3600), 10);
        c.put(
            "/p".into(),
            http::StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(b"x"),
        );
        assert!(c.fresh("/p").is_some());
        c.invalidate();
        assert!(c.fresh("/p").is_none(), "never fresh after a change");
        assert!(c.stale("/p").is_some(), "still there for outages");
        assert!(cacheable("core-metadata", "/api/v3/deviceprofile/name/x"));
        assert!(!cacheable("core-data", "/api/v3/event/all"));
        assert!(!cacheable("core-metadata", "/api/v3/ping"));
    }

    #[test]
    fn bounded() {
        let c = Cache::new(Duration::from_secs(60), Duration::from_secs(3600), 10);
        for i in 0..50 {
            c.put(
                format!("/{i}"),
                http::StatusCode::OK,
                HeaderMap::new(),
                Bytes::new(),
            );
        }
        assert!(c.len() <= 10);
    }
}
