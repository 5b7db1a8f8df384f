//! The registry's state machine.
//!
//! Invariants:
//! - Every instance is in exactly one status: UP, DOWN, UNKNOWN, or HALT (deregistered).
//! - A heartbeat-checked instance is UP from registration until it misses
//!   `missed_heartbeats` intervals, then DOWN; a heartbeat brings it back UP. An HTTP-checked
//!   instance (EdgeX's kind) starts UNKNOWN and follows the result of the registry's probes.
//! - An instance that stays DOWN or HALT for `remove_after` is removed.
//! - Every change bumps the change index and is broadcast, so watchers never miss one: a
//!   long-poll with the last index it saw returns as soon as the index moves.
//! - What is stored is always the latest in-memory state: writes are serialized and each
//!   writes the current record, never a stale copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use outpost_contracts::metadata::parse_interval;
use outpost_contracts::registry::{
    HEALTH_HEARTBEAT, HEALTH_HTTP, Registration, RegistryChange, ServiceStatus,
};
use outpost_contracts::{names, now_millis};
use outpost_storage::StorageError;
use tokio::sync::{broadcast, watch};

use crate::config::Config;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("service '{0}' is already registered")]
    Conflict(String),
    #[error("service '{0}' is not registered")]
    NotFound(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

struct Entry {
    reg: Registration,
    interval: Duration,
    last_seen: Instant,
    /// When the instance entered DOWN or HALT.
    since: Option<Instant>,
    next_probe: Instant,
    probing: bool,
}

impl Entry {
    fn heartbeat_checked(&self) -> bool {
        self.reg.health_check.kind == HEALTH_HEARTBEAT
    }
}

pub struct Registry {
    cfg: Config,
    store: Arc<dyn Store>,
    entries: Mutex<HashMap<String, Entry>>,
    write_lock: tokio::sync::Mutex<()>,
    index: watch::Sender<u64>,
    changes: broadcast::Sender<RegistryChange>,
    http: reqwest::Client,
}

impl Registry {
    /// Loads the stored registrations. Every instance gets a full heartbeat window from
    /// now, so a registry restart does not mark live services DOWN.
    pub async fn load(cfg: Config, store: Arc<dyn Store>) -> Result<Arc<Self>, StorageError> {
        let regs = store.load_registrations().await?;
        let now = Instant::now();
        let entries = regs
            .into_iter()
            .map(|reg| {
                let interval = interval_of(&reg);
                let since =
                    matches!(reg.status, ServiceStatus::Down | ServiceStatus::Halt).then_some(now);
                (
                    reg.service_id.clone(),
                    Entry {
                        reg,
                        interval,
                        last_seen: now,
                        since,
                        next_probe: now,
                        probing: false,
                    },
                )
            })
            .collect::<HashMap<_, _>>();
        tracing::info!(count = entries.len(), "loaded registrations");
        let timeout = Duration::from_millis(cfg.health_check_timeout_ms);
        Ok(Arc::new(Self {
            cfg,
            store,
            entries: Mutex::new(entries),
            write_lock: tokio::sync::Mutex::new(()),
            index: watch::channel(1).0,
            changes: broadcast::channel(1024).0,
            http: outpost_kit::http::client(timeout),
        }))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn index(&self) -> u64 {
        *self.index.borrow()
    }

    /// The registry's change index, to wait on.
    pub fn index_changes(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }

    pub fn subscribe_changes(&self) -> broadcast::Receiver<RegistryChange> {
        self.changes.subscribe()
    }

    fn notify(&self, service_id: &str, action: &str, status: ServiceStatus) {
        let mut index = 0;
        self.index.send_modify(|i| {
            *i += 1;
            index = *i;
        });
        let _ = self.changes.send(RegistryChange {
            index,
            service_id: service_id.to_string(),
            action: action.to_string(),
            status,
        });
        tracing::info!(
            service = service_id,
            action,
            status = status.as_str(),
            "registry change"
        );
    }

    /// Writes the current state of `service_id` (or its absence).
    async fn persist(&self, service_id: &str) -> Result<(), StorageError> {
        let _guard = self.write_lock.lock().await;
        let current = self.entries().get(service_id).map(|e| e.reg.clone());
        match current {
            Some(reg) => self.store.save_registration(reg).await,
            None => self.store.delete_registration(service_id.to_string()).await,
        }
    }

    fn validate(reg: &Registration) -> Result<(), RegistryError> {
        names::check_service_id("serviceId", &reg.service_id).map_err(RegistryError::Invalid)?;
        // EdgeX requires both (`validate:"required"`).
        if reg.host.is_empty() {
            return Err(RegistryError::Invalid("host is required".into()));
        }
        names::check_host("host", &reg.host).map_err(RegistryError::Invalid)?;
        if reg.health_check.interval.is_empty() {
            return Err(RegistryError::Invalid(
                "healthCheck.interval is required".into(),
            ));
        }
        if reg.port == 0 {
            return Err(RegistryError::Invalid(
                "port must be between 1 and 65535".into(),
            ));
        }
        // Outpost's additions, shown by consoles: a short printable version, a start time
        // that is a time (not before 1970, not more than a day ahead of this clock).
        if reg.version.len() > 64 || reg.version.chars().any(|c| c.is_control()) {
            return Err(RegistryError::Invalid(
                "version must be at most 64 printable characters".into(),
            ));
        }
        if reg.started < 0 || reg.started > outpost_contracts::now_millis() + 86_400_000 {
            return Err(RegistryError::Invalid(format!(
                "started must be a time in ms since 1970, got {}",
                reg.started
            )));
        }
        if !matches!(reg.scheme.as_str(), "" | "http" | "https") {
            return Err(RegistryError::Invalid(format!(
                "scheme must be 'http' or 'https', got '{}'",
                reg.scheme
            )));
        }
        match reg.health_check.kind.as_str() {
            HEALTH_HTTP => {
                if !reg.health_check.path.starts_with('/') {
                    return Err(RegistryError::Invalid(
                        "healthCheck.path must be an absolute path for type 'http'".into(),
                    ));
                }
            }
            HEALTH_HEARTBEAT => {}
            other => {
                return Err(RegistryError::Invalid(format!(
                    "healthCheck.type must be 'http' or 'heartbeat', got '{other}'"
                )));
            }
        }
        parse_interval(&reg.health_check.interval)
            .map_err(|e| RegistryError::Invalid(format!("healthCheck.interval: {e}")))?;
        if reg.status == ServiceStatus::Halt {
            return Err(RegistryError::Invalid(
                "status HALT cannot be registered".into(),
            ));
        }
        Ok(())
    }

    /// Adds a registration; a deregistered (HALT) one may register again.
    pub async fn register(&self, mut reg: Registration) -> Result<(), RegistryError> {
        Self::validate(&reg)?;
        let now = now_millis();
        {
            let mut entries = self.entries();
            if let Some(e) = entries.get(&reg.service_id)
                && e.reg.status != ServiceStatus::Halt
            {
                return Err(RegistryError::Conflict(reg.service_id));
            }
            reg.created = now;
            reg.modified = now;
            reg.last_connected = now;
            reg.status = if reg.health_check.kind == HEALTH_HEARTBEAT {
                ServiceStatus::Up
            } else {
                ServiceStatus::Unknown
            };
            let instant = Instant::now();
            entries.insert(
                reg.service_id.clone(),
                Entry {
                    interval: interval_of(&reg),
                    reg: reg.clone(),
                    last_seen: instant,
                    since: None,
                    next_probe: instant,
                    probing: false,
                },
            );
        }
        self.persist(&reg.service_id).await?;
        self.notify(&reg.service_id, "registered", reg.status);
        Ok(())
    }

    /// Replaces a registration's address and health check; an update to status HALT
    /// deregisters the instance.
    pub async fn update(&self, mut reg: Registration) -> Result<(), RegistryError> {
        if reg.status == ServiceStatus::Halt {
            return self.deregister(&reg.service_id).await;
        }
        Self::validate(&reg)?;
        let status = {
            let mut entries = self.entries();
            let Some(e) = entries.get_mut(&reg.service_id) else {
                return Err(RegistryError::NotFound(reg.service_id));
            };
            reg.created = e.reg.created;
            reg.modified = now_millis();
            reg.last_connected = now_millis();
            reg.status = if reg.health_check.kind == HEALTH_HEARTBEAT {
                ServiceStatus::Up
            } else if e.reg.status == ServiceStatus::Halt {
                ServiceStatus::Unknown
            } else {
                e.reg.status
            };
            e.interval = interval_of(&reg);
            e.reg = reg.clone();
            e.last_seen = Instant::now();
            e.since = None;
            e.next_probe = Instant::now();
            reg.status
        };
        self.persist(&reg.service_id).await?;
        self.notify(&reg.service_id, "updated", status);
        Ok(())
    }

    /// Records a heartbeat. Unknown and deregistered instances must register again.
    pub async fn heartbeat(&self, service_id: &str) -> Result<(), RegistryError> {
        let changed = {
            let mut entries = self.entries();
            let Some(e) = entries.get_mut(service_id) else {
                return Err(RegistryError::NotFound(service_id.to_string()));
            };
            if e.reg.status == ServiceStatus::Halt {
                return Err(RegistryError::NotFound(service_id.to_string()));
            }
            e.last_seen = Instant::now();
            e.reg.last_connected = now_millis();
            let changed = e.reg.status != ServiceStatus::Up;
            if changed {
                e.reg.status = ServiceStatus::Up;
                e.reg.modified = now_millis();
                e.since = None;
            }
            changed
        };
        if changed {
            self.persist(service_id).await?;
            self.notify(service_id, "status", ServiceStatus::Up);
        }
        Ok(())
    }

    /// Deregisters: the instance is HALT at once and hidden from the default listing.
    pub async fn deregister(&self, service_id: &str) -> Result<(), RegistryError> {
        {
            let mut entries = self.entries();
            let Some(e) = entries.get_mut(service_id) else {
                return Err(RegistryError::NotFound(service_id.to_string()));
            };
            if e.reg.status == ServiceStatus::Halt {
                return Err(RegistryError::NotFound(service_id.to_string()));
            }
            e.reg.status = ServiceStatus::Halt;
            e.reg.modified = now_millis();
            e.since = Some(Instant::now());
        }
        self.persist(service_id).await?;
        self.notify(service_id, "deregistered", ServiceStatus::Halt);
        Ok(())
    }

    pub fn get(&self, service_id: &str) -> Option<Registration> {
        self.entries()
            .get(service_id)
            .filter(|e| e.reg.status != ServiceStatus::Halt)
            .map(|e| e.reg.clone())
    }

    /// All registrations sorted by ID, with the change index they correspond to.
    pub fn list(&self, include_halted: bool) -> (u64, Vec<Registration>) {
        let entries = self.entries();
        let index = self.index();
        let mut regs: Vec<_> = entries
            .values()
            .filter(|e| include_halted || e.reg.status != ServiceStatus::Halt)
            .map(|e| e.reg.clone())
            .collect();
        regs.sort_by(|a, b| a.service_id.cmp(&b.service_id));
        (index, regs)
    }

    /// One pass of expiry and active checks; called periodically.
    /// Applies expiry and starts the active checks that are due (on `probes`, which the
    /// caller owns).
    pub async fn sweep(self: &Arc<Self>, probes_running: &mut tokio::task::JoinSet<()>) {
        let now = Instant::now();
        let remove_after =
            (self.cfg.remove_after_ms > 0).then(|| Duration::from_millis(self.cfg.remove_after_ms));
        let mut downs = Vec::new();
        let mut removals = Vec::new();
        let mut probes = Vec::new();
        {
            let mut entries = self.entries();
            for (id, e) in entries.iter_mut() {
                let status = e.reg.status;
                if matches!(status, ServiceStatus::Down | ServiceStatus::Halt) {
                    if let (Some(since), Some(after)) = (e.since, remove_after)
                        && now.duration_since(since) >= after
                    {
                        removals.push(id.clone());
                    }
                    if status == ServiceStatus::Halt || e.heartbeat_checked() {
                        continue;
                    }
                }
                if e.heartbeat_checked() {
                    let ttl = e.interval * self.cfg.missed_heartbeats;
                    if status != ServiceStatus::Down && now.duration_since(e.last_seen) > ttl {
                        e.reg.status = ServiceStatus::Down;
                        e.reg.modified = now_millis();
                        e.since = Some(now);
                        downs.push(id.clone());
                    }
                } else if !e.probing && now >= e.next_probe {
                    e.probing = true;
                    e.next_probe = now + e.interval;
                    probes.push((id.clone(), e.reg.base_url() + &e.reg.health_check.path));
                }
            }
            for id in &removals {
                entries.remove(id);
            }
        }
        for id in downs {
            tracing::warn!(service = %id, "missed its heartbeats: DOWN");
            if let Err(e) = self.persist(&id).await {
                tracing::error!(service = %id, error = %e, "cannot store status");
            }
            self.notify(&id, "status", ServiceStatus::Down);
        }
        for id in removals {
            if let Err(e) = self.persist(&id).await {
                tracing::error!(service = %id, error = %e, "cannot store removal");
            }
            self.notify(&id, "removed", ServiceStatus::Halt);
        }
        for (id, url) in probes {
            let me = Arc::clone(self);
            probes_running.spawn(async move { me.probe(id, url).await });
        }
    }

    /// Active HTTP health check of one instance.
    async fn probe(&self, id: String, url: String) {
        let ok = matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success());
        let changed = {
            let mut entries = self.entries();
            let Some(e) = entries.get_mut(&id) else {
                return;
            };
            e.probing = false;
            if e.reg.status == ServiceStatus::Halt {
                return;
            }
            let new = if ok {
                ServiceStatus::Up
            } else {
                ServiceStatus::Down
            };
            if ok {
                e.last_seen = Instant::now();
                e.reg.last_connected = now_millis();
            }
            let changed = e.reg.status != new;
            if changed {
                e.reg.status = new;
                e.reg.modified = now_millis();
                e.since = (!ok).then(Instant::now);
            }
            changed.then_some(new)
        };
        if let Some(status) = changed {
            if let Err(e) = self.persist(&id).await {
                tracing::error!(service = %id, error = %e, "cannot store status");
            }
            self.notify(&id, "status", status);
        }
    }

    /// Runs [`sweep`](Self::sweep) until `stop`; active checks in progress end with it.
    pub async fn keep_sweeping(self: Arc<Self>, stop: outpost_kit::Shutdown) {
        let every = Duration::from_millis(self.cfg.sweep_interval_ms);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probes = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                () = stop.wait() => return,
                _ = tick.tick() => self.sweep(&mut probes).await,
            }
            while probes.try_join_next().is_some() {}
        }
    }
}

/// The check interval of a registration (EdgeX's default, 10 s, when unset).
fn interval_of(reg: &Registration) -> Duration {
    parse_interval(&reg.health_check.interval).unwrap_or(Duration::from_secs(10))
}
