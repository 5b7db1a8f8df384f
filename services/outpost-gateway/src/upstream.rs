//! Upstream selection: every instance of a service from the registry (never a hard-coded
//! address), power-of-two-choices on outstanding requests, passive health (an instance that
//! refuses connections or times out is left out for `eject_ms`), the registry's DOWN state
//! honoured, and a retry budget for idempotent requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use outpost_kit::Registry;

/// One instance as the balancer sees it.
#[derive(Debug, Default)]
struct InstanceState {
    outstanding: AtomicUsize,
    ejected_until: Mutex<Option<Instant>>,
}

/// A chosen instance; dropping it ends the outstanding request.
pub struct Lease {
    pub service_id: String,
    pub base: String,
    state: Arc<InstanceState>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Retries may add at most `ratio` of requests, plus `min_per_s`, over a ten-second window
/// (as linkerd's retry budget): a failing service is not hit with a retry storm.
#[derive(Debug)]
struct Budget {
    ratio: f64,
    min_per_s: f64,
    window_start: Instant,
    requests: f64,
    retries: f64,
}

impl Budget {
    fn allow_retry(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window_start) > Duration::from_secs(10) {
            self.window_start = now;
            self.requests = 0.0;
            self.retries = 0.0;
        }
        let allowed = self.requests * self.ratio + self.min_per_s * 10.0;
        if self.retries + 1.0 <= allowed {
            self.retries += 1.0;
            true
        } else {
            false
        }
    }
}

/// An HTTP client for upstreams, one per thread: the gateway's event loops each keep
/// their own pool of upstream connections, driven by their own runtime (no hand-offs
/// between threads on the request path).
pub fn client() -> Client<HttpConnector, Body> {
    thread_local! {
        static CLIENT: Client<HttpConnector, Body> = {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            // A dead instance on loopback refuses at once; a lost host must not take the
            // whole request timeout before the next instance is tried.
            http.set_connect_timeout(Some(Duration::from_secs(1)));
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(64)
                .build(http)
        };
    }
    CLIENT.with(Client::clone)
}

pub struct Upstreams {
    registry: Registry,
    states: Mutex<HashMap<String, Arc<InstanceState>>>,
    eject: Duration,
    budget: Mutex<Budget>,
}

impl Upstreams {
    pub fn new(
        registry: Registry,
        eject: Duration,
        retry_ratio: f64,
        retry_min_per_s: f64,
    ) -> Self {
        Self {
            registry,
            states: Mutex::default(),
            eject,
            budget: Mutex::new(Budget {
                ratio: retry_ratio,
                min_per_s: retry_min_per_s,
                window_start: Instant::now(),
                requests: 0.0,
                retries: 0.0,
            }),
        }
    }

    /// Whether any instance of `service` is registered (in any state).
    pub fn known(&self, service: &str) -> bool {
        self.registry
            .snapshot()
            .iter()
            .any(|r| outpost_kit::registry::service_of(&r.service_id) == service)
            || (!self.registry.loaded() && self.registry.fallback(service).is_some())
    }

    fn state(&self, id: &str) -> Arc<InstanceState> {
        let mut m = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(m.entry(id.to_string()).or_default())
    }

    /// Counts a request for the retry budget.
    pub fn count_request(&self) {
        self.budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .requests += 1.0;
    }

    pub fn allow_retry(&self) -> bool {
        self.budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow_retry(Instant::now())
    }

    /// Picks an instance of `service` not in `tried`: two at random, the one with fewer
    /// outstanding requests; ejected instances only when nothing else is left.
    pub fn pick(&self, service: &str, tried: &[String]) -> Option<Lease> {
        let mut candidates: Vec<(String, String)> = self
            .registry
            .instances(service)
            .into_iter()
            .map(|r| (r.service_id.clone(), r.base_url()))
            .collect();
        if candidates.is_empty() && !self.registry.loaded() {
            // Before the first registry view: the node's configured address.
            if let Some(url) = self.registry.fallback(service) {
                candidates.push((service.to_string(), url.to_string()));
            }
        }
        candidates.retain(|(id, _)| !tried.contains(id));
        if candidates.is_empty() {
            return None;
        }
        let now = Instant::now();
        let with_state: Vec<_> = candidates
            .into_iter()
            .map(|(id, base)| {
                let st = self.state(&id);
                (id, base, st)
            })
            .collect();
        let healthy: Vec<&(String, String, Arc<InstanceState>)> = with_state
            .iter()
            .filter(|(_, _, st)| {
                st.ejected_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .is_none_or(|t| t <= now)
            })
            .collect();
        let pool: Vec<&(String, String, Arc<InstanceState>)> = if healthy.is_empty() {
            with_state.iter().collect()
        } else {
            healthy
        };
        let chosen = match pool.len() {
            1 => pool[0],
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let load = |i: usize| pool[i].2.outstanding.load(Ordering::Relaxed);
                if load(b) < load(a) { pool[b] } else { pool[a] }
            }
        };
        chosen.2.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            service_id: chosen.0.clone(),
            base: chosen.1.clone(),
            state: Arc::clone(&chosen.2),
        })
    }

    /// Leaves an instance out of balancing for a while after a connection failure or
    /// timeout.
    pub fn eject(&self, lease: &Lease) {
        *lease
            .state
            .ejected_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + self.eject);
        tracing::warn!(instance = %lease.service_id, eject_ms = self.eject.as_millis() as u64, "upstream failed; ejected");
    }

    /// An instance answered: it is back in balancing at once.
    pub fn healthy(&self, lease: &Lease) {
        let mut e = lease
            .state
            .ejected_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if e.is_some() {
            *e = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_a_share_of_requests() {
        let now = Instant::now();
        let mut b = Budget {
            ratio: 0.2,
            min_per_s: 0.0,
            window_start: now,
            requests: 10.0,
            retries: 0.0,
        };
        assert!(b.allow_retry(now));
        assert!(b.allow_retry(now));
        assert!(!b.allow_retry(now));
        // A new window starts empty.
        assert!(!b.allow_retry(now + Duration::from_secs(11)));
        b.min_per_s = 1.0;
        assert!(b.allow_retry(now + Duration::from_secs(11)));
    }
}
