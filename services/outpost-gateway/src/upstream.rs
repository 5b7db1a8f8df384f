//! Upstream selection: every instance of a service from the registry (never a hard-coded
//! address), power-of-two-choices on outstanding requests, passive health (an instance that
//! refuses connections or times out is left out for `eject_ms`), the registry's DOWN state
//! honoured, and a retry budget for idempotent requests.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use outpost_contracts::registry::ServiceStatus;
use outpost_kit::Registry;

/// One instance as the balancer sees it.
#[derive(Debug, Default)]
struct InstanceState {
    outstanding: AtomicUsize,
    ejected_until: Mutex<Option<Instant>>,
}

/// A chosen instance; dropping it ends the outstanding request.
pub struct Lease {
    pub service_id: Arc<str>,
    /// `host:port`.
    pub authority: Arc<str>,
    state: Arc<InstanceState>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An instance a request may go to.
struct Instance {
    id: Arc<str>,
    authority: Arc<str>,
    state: Arc<InstanceState>,
}

/// What routing needs from one registry view, made once per view (not per request).
#[derive(Default)]
struct Table {
    generation: u64,
    /// Services with at least one registration, in any state.
    known: HashSet<String>,
    /// Usable instances (UP or not yet checked) by service, sorted by ID.
    usable: HashMap<String, Vec<Instance>>,
}

/// Retries may add at most `ratio` of requests, plus `min_per_s`, over a ten-second window
/// (as linkerd's retry budget): a failing service is not hit with a retry storm.
#[derive(Debug)]
struct Budget {
    ratio: f64,
    min_per_s: f64,
    window_start: Instant,
    /// Requests in the window before the last check ([`Upstreams::count_request`] counts
    /// new ones without a lock).
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

pub struct Upstreams {
    registry: Registry,
    /// Balancing state by instance ID; outlives registry views.
    states: Mutex<HashMap<String, Arc<InstanceState>>>,
    table: RwLock<Arc<Table>>,
    eject: Duration,
    budget: Mutex<Budget>,
    /// Requests since the budget last looked.
    requests: AtomicU64,
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
            table: RwLock::default(),
            eject,
            budget: Mutex::new(Budget {
                ratio: retry_ratio,
                min_per_s: retry_min_per_s,
                window_start: Instant::now(),
                requests: 0.0,
                retries: 0.0,
            }),
            requests: AtomicU64::new(0),
        }
    }

    /// The routing table of the current registry view, rebuilt when the view changed.
    fn table(&self) -> Arc<Table> {
        let generation = self.registry.generation();
        {
            let t = self
                .table
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if t.generation == generation && generation != 0 {
                return Arc::clone(&t);
            }
        }
        let mut known = HashSet::new();
        let mut usable: HashMap<String, Vec<Instance>> = HashMap::new();
        for r in self.registry.snapshot() {
            let service = outpost_kit::registry::service_of(&r.service_id).to_string();
            if matches!(r.status, ServiceStatus::Up | ServiceStatus::Unknown) {
                let authority: Arc<str> = crate::pool::authority(&r.base_url()).into();
                usable.entry(service.clone()).or_default().push(Instance {
                    state: self.state(&r.service_id),
                    id: r.service_id.into(),
                    authority,
                });
            }
            known.insert(service);
        }
        // `snapshot` is sorted by ID, so each service's list is too.
        let t = Arc::new(Table {
            generation,
            known,
            usable,
        });
        if generation != 0 {
            *self
                .table
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&t);
        }
        t
    }

    /// Whether any instance of `service` is registered (in any state).
    pub fn known(&self, service: &str) -> bool {
        self.table().known.contains(service)
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
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn allow_retry(&self) -> bool {
        let mut b = self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        b.requests += self.requests.swap(0, Ordering::Relaxed) as f64;
        b.allow_retry(Instant::now())
    }

    /// Picks an instance of `service` not in `tried`: two at random, the one with fewer
    /// outstanding requests; ejected instances only when nothing else is left.
    pub fn pick(&self, service: &str, tried: &[Arc<str>]) -> Option<Lease> {
        let table = self.table();
        let Some(all) = table.usable.get(service) else {
            if !self.registry.loaded() {
                // Before the first registry view: the node's configured address.
                let url = self.registry.fallback(service)?;
                if tried.iter().any(|t| &**t == service) {
                    return None;
                }
                let state = self.state(service);
                state.outstanding.fetch_add(1, Ordering::Relaxed);
                return Some(Lease {
                    service_id: service.into(),
                    authority: crate::pool::authority(url).into(),
                    state,
                });
            }
            return None;
        };
        let open = |i: &&Instance| !tried.contains(&i.id);
        let healthy = |now: Instant| {
            move |i: &&Instance| {
                i.state
                    .ejected_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .is_none_or(|t| t <= now)
            }
        };
        // The common case, one instance, allocates nothing.
        let chosen = if let [only] = all.as_slice() {
            Some(only).filter(open)?
        } else {
            let untried: Vec<&Instance> = all.iter().filter(open).collect();
            let up: Vec<&Instance> = untried
                .iter()
                .copied()
                .filter(healthy(Instant::now()))
                .collect();
            let pool = if up.is_empty() { untried } else { up };
            match pool.len() {
                0 => return None,
                1 => pool[0],
                n => {
                    let a = fastrand::usize(..n);
                    let mut b = fastrand::usize(..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let load = |i: usize| pool[i].state.outstanding.load(Ordering::Relaxed);
                    if load(b) < load(a) { pool[b] } else { pool[a] }
                }
            }
        };
        chosen.state.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            service_id: Arc::clone(&chosen.id),
            authority: Arc::clone(&chosen.authority),
            state: Arc::clone(&chosen.state),
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
