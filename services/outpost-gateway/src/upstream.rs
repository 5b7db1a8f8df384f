//! Upstream selection: every instance of a service from the registry (never a hard-coded
//! address), power-of-two-choices on outstanding requests, passive health (an instance that
//! refuses connections or times out is left out for `eject_ms`), the registry's DOWN state
//! honoured, and a retry budget for idempotent requests.
//!
//! The request path shares as little memory between event loops as nginx's workers do:
//! each loop builds its own copy of the routing table per registry view, the retry budget's
//! request count is handed over every `COUNT_BATCH` requests, an instance's outstanding
//! count is kept only where there is a choice to make, and its ejection mark is read
//! without a lock. Memory that two cores write in turn costs a cache transfer per access.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use outpost_contracts::registry::ServiceStatus;
use outpost_kit::Registry;

/// Requests a loop counts before it adds them to the retry budget's shared count.
const COUNT_BATCH: u64 = 64;

/// One instance as the balancer sees it.
#[derive(Debug, Default)]
struct InstanceState {
    outstanding: AtomicUsize,
    /// Nanoseconds after [`epoch`] until which the instance is left out; 0: it is not.
    ejected_until: AtomicU64,
}

impl InstanceState {
    fn ejected_at(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > since_epoch(now)
    }
}

/// The instant ejection marks count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `t` as nanoseconds after [`epoch`], at least 1 (0 means "not ejected").
fn since_epoch(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A chosen instance; dropping it ends the outstanding request.
pub struct Lease {
    pub service_id: Arc<str>,
    /// `host:port`.
    pub authority: Arc<str>,
    /// Set when the instance was chosen among several: its outstanding count includes
    /// this request.
    counted: Option<Arc<InstanceState>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(state) = &self.counted {
            state.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// An instance a request may go to.
struct Instance {
    id: Arc<str>,
    authority: Arc<str>,
    state: Arc<InstanceState>,
}

/// What routing needs from one registry view, made once per view and event loop (not per
/// request).
#[derive(Default)]
struct Table {
    generation: u64,
    /// Services with at least one registration, in any state: name → name, shared.
    known: HashMap<String, Arc<str>>,
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
    /// Tells this set's routing tables apart from others' in a thread's [`TABLES`].
    id: u64,
    eject: Duration,
    budget: Mutex<Budget>,
    /// Requests since the budget last looked.
    requests: AtomicU64,
}

thread_local! {
    /// This thread's routing tables, by [`Upstreams::id`] (one in a running node).
    static TABLES: RefCell<Vec<(u64, Rc<Table>)>> = const { RefCell::new(Vec::new()) };
    /// Requests this thread counted and has not yet added to the budget.
    static PENDING: Cell<u64> = const { Cell::new(0) };
}

impl Upstreams {
    pub fn new(
        registry: Registry,
        eject: Duration,
        retry_ratio: f64,
        retry_min_per_s: f64,
    ) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            registry,
            states: Mutex::default(),
            id: IDS.fetch_add(1, Ordering::Relaxed),
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

    /// Runs `f` on this thread's routing table of the current registry view, rebuilt when
    /// the view changed.
    fn with_table<R>(&self, f: impl FnOnce(&Table) -> R) -> R {
        let generation = self.registry.generation();
        if generation == 0 {
            // No registry view yet: nothing worth keeping.
            return f(&self.build(0));
        }
        let table = TABLES.with(|t| {
            let mut t = t.borrow_mut();
            if let Some((_, table)) = t.iter().find(|(id, _)| *id == self.id)
                && table.generation == generation
            {
                return Rc::clone(table);
            }
            let table = Rc::new(self.build(generation));
            t.retain(|(id, _)| *id != self.id);
            if t.len() >= 8 {
                t.remove(0);
            }
            t.push((self.id, Rc::clone(&table)));
            table
        });
        f(&table)
    }

    fn build(&self, generation: u64) -> Table {
        let mut known = HashMap::new();
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
            let name: Arc<str> = service.as_str().into();
            known.insert(service, name);
        }
        // `snapshot` is sorted by ID, so each service's list is too.
        Table {
            generation,
            known,
            usable,
        }
    }

    /// Whether any instance of `service` is registered (in any state).
    /// The service's name as the routing table holds it, if any instance of it is
    /// registered (in any state).
    pub fn known(&self, service: &str) -> Option<Arc<str>> {
        if let Some(name) = self.with_table(|t| t.known.get(service).cloned()) {
            return Some(name);
        }
        (!self.registry.loaded() && self.registry.fallback(service).is_some())
            .then(|| service.into())
    }

    /// How many instances of `service` requests may go to now.
    pub fn choices(&self, service: &str) -> usize {
        self.with_table(|t| t.usable.get(service).map_or(0, Vec::len))
    }

    fn state(&self, id: &str) -> Arc<InstanceState> {
        let mut m = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(m.entry(id.to_string()).or_default())
    }

    /// Counts a request for the retry budget (added to the shared count in batches).
    pub fn count_request(&self) {
        let n = PENDING.get() + 1;
        if n >= COUNT_BATCH {
            self.requests.fetch_add(n, Ordering::Relaxed);
            PENDING.set(0);
        } else {
            PENDING.set(n);
        }
    }

    pub fn allow_retry(&self) -> bool {
        let mut b = self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        b.requests += (self.requests.swap(0, Ordering::Relaxed) + PENDING.take()) as f64;
        b.allow_retry(Instant::now())
    }

    /// Picks an instance of `service` not in `tried`: two at random, the one with fewer
    /// outstanding requests; ejected instances only when nothing else is left.
    pub fn pick(&self, service: &str, tried: &[Arc<str>]) -> Option<Lease> {
        if let Some(picked) =
            self.with_table(|t| t.usable.get(service).map(|all| Self::choose(all, tried)))
        {
            return picked;
        }
        if self.registry.loaded() {
            return None;
        }
        // Before the first registry view: the node's configured address.
        let url = self.registry.fallback(service)?;
        if tried.iter().any(|t| &**t == service) {
            return None;
        }
        Some(Lease {
            service_id: service.into(),
            authority: crate::pool::authority(url).into(),
            counted: None,
        })
    }

    fn choose(all: &[Instance], tried: &[Arc<str>]) -> Option<Lease> {
        let open = |i: &&Instance| !tried.contains(&i.id);
        // The common case, one instance, allocates nothing and writes no shared memory.
        if let [only] = all {
            let only = Some(only).filter(open)?;
            return Some(Lease {
                service_id: Arc::clone(&only.id),
                authority: Arc::clone(&only.authority),
                counted: None,
            });
        }
        let now = Instant::now();
        let untried: Vec<&Instance> = all.iter().filter(open).collect();
        let up: Vec<&Instance> = untried
            .iter()
            .copied()
            .filter(|i| !i.state.ejected_at(now))
            .collect();
        let pool = if up.is_empty() { untried } else { up };
        let chosen = match pool.len() {
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
        };
        chosen.state.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            service_id: Arc::clone(&chosen.id),
            authority: Arc::clone(&chosen.authority),
            counted: Some(Arc::clone(&chosen.state)),
        })
    }

    /// Leaves an instance out of balancing for a while after a connection failure or
    /// timeout.
    pub fn eject(&self, lease: &Lease) {
        let state = match &lease.counted {
            Some(s) => Arc::clone(s),
            None => self.state(&lease.service_id),
        };
        state
            .ejected_until
            .store(since_epoch(Instant::now() + self.eject), Ordering::Relaxed);
        tracing::warn!(instance = %lease.service_id, eject_ms = self.eject.as_millis() as u64, "upstream failed; ejected");
    }

    /// An instance answered: it is back in balancing at once. (An instance that was the
    /// only choice was not balanced: its mark simply runs out.)
    pub fn healthy(&self, lease: &Lease) {
        if let Some(state) = &lease.counted
            && state.ejected_until.load(Ordering::Relaxed) != 0
        {
            state.ejected_until.store(0, Ordering::Relaxed);
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
