//! One view of core-metadata per process: the typed client, a cache of what was asked,
//! and core-metadata's system events keeping it current.
//!
//! Every service that reads metadata goes through its [`MetadataView`]: the broker and OTA
//! for device credentials, the device SDK for its devices and profiles, core-data to
//! validate events, the gateway to know when its cached answers changed. The view:
//!
//! - answers from the cache while an entry is fresh ([`ViewConfig::fresh_for`], or
//!   [`ViewConfig::missing_for`] for "does not exist"), and asks core-metadata otherwise;
//! - follows `<base>/system-events/core-metadata/#` on a connection of its own: a change
//!   to a device or profile drops what the view holds of it before anyone is told
//!   ([`MetadataView::changes`]); once it first follows them, and after a reconnect
//!   (events may have been missed before or while it was away), everything held counts as
//!   old and [`Change::Resync`] is sent;
//! - has one policy when core-metadata cannot be asked: **serve the last view and say
//!   so**. A lookup then answers [`Lookup::Stale`] with the age of what it holds (the
//!   caller decides what an old answer is good for: device credentials are honoured for
//!   [`CREDENTIAL_GRACE`]), or [`Lookup::Unavailable`] when it holds nothing; the
//!   `metadata` health check fails with how long core-metadata has been away, and
//!   `outpost_<service>_metadata_reachable` is 0.
//!
//! An answer fetched while a change arrived is not kept (it may predate the change).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use outpost_contracts::metadata::{Device, DeviceProfile};
use outpost_contracts::system_event::{SystemEvent, TYPE_DEVICE, TYPE_DEVICE_PROFILE};
use outpost_contracts::topics;
use outpost_kit::client::{CallError, CertAuth, Metadata, ServiceClient};
use outpost_kit::{Check, Context, HealthProbe, Shutdown, Stage};
use tokio::sync::broadcast;

use crate::{Bus, Options};

/// How long a device credential verified before is honoured while core-metadata cannot
/// be asked: a restarting core-metadata must not cut every device off.
pub const CREDENTIAL_GRACE: Duration = Duration::from_secs(3600);

/// How a view keeps what it was told.
#[derive(Debug, Clone)]
pub struct ViewConfig {
    /// How long an object is used without asking again. Changes arrive as events, so this
    /// bounds only what a lost event can cost.
    pub fresh_for: Duration,
    /// How long a granted credential is used without asking again (it is also forgotten
    /// when its device changes).
    pub credentials_for: Duration,
    /// How long "does not exist" is remembered (a flood for an unknown device does not
    /// become a flood of lookups).
    pub missing_for: Duration,
    /// Entries kept per kind; beyond it the kind is emptied.
    pub max_entries: usize,
    /// Timeout of one call to core-metadata.
    pub timeout: Duration,
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self {
            fresh_for: Duration::from_secs(300),
            credentials_for: Duration::from_secs(60),
            missing_for: Duration::from_secs(2),
            max_entries: 100_000,
            timeout: Duration::from_secs(5),
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup<T> {
    /// core-metadata's answer, fresh.
    Found(T),
    /// core-metadata cannot be asked; this is what it said `age` ago.
    Stale { value: T, age: Duration },
    /// core-metadata says there is no such object (or the credential is refused).
    Missing,
    /// core-metadata cannot be asked and nothing is held.
    Unavailable(CallError),
}

impl<T> Lookup<T> {
    /// core-metadata's current answer: the object, `None` when it does not exist, an error
    /// when core-metadata cannot be asked (what is held may be old).
    pub fn current(self) -> Result<Option<T>, CallError> {
        match self {
            Self::Found(v) => Ok(Some(v)),
            Self::Missing => Ok(None),
            Self::Stale { age, .. } => Err(CallError::Unreachable {
                service: outpost_kit::client::CORE_METADATA.to_string(),
                reason: format!("only a view {} s old is held", age.as_secs()),
            }),
            Self::Unavailable(e) => Err(e),
        }
    }

    /// The value, fresh or not older than `max_age`.
    pub fn within(self, max_age: Duration) -> Option<T> {
        match self {
            Self::Found(v) => Some(v),
            Self::Stale { value, age } if age <= max_age => Some(value),
            _ => None,
        }
    }
}

/// A device credential to check.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    Secret(&'a str),
    /// A client certificate (DER, base64) the gateway vouched for.
    Certificate(&'a str),
}

/// What core-metadata says of a credential it accepts.
#[derive(Debug, Clone)]
pub enum Verdict {
    Granted(Arc<Device>),
    /// A zero-touch device waiting for an operator's approval (never cached).
    Pending,
}

/// What changed in metadata, told to the view's subscribers after the view itself
/// forgot what it held of it.
#[derive(Debug, Clone)]
pub enum Change {
    Event(Arc<SystemEvent>),
    /// Events may have been missed (the view's connection was away): anything may have
    /// changed.
    Resync,
}

struct Entry<T> {
    /// `None`: core-metadata said it does not exist.
    value: Option<T>,
    at: Instant,
}

struct Table<K, T> {
    entries: RwLock<HashMap<K, Entry<T>>>,
}

impl<K: Eq + Hash, T: Clone> Table<K, T> {
    fn new() -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<K, Entry<T>>> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<K, Entry<T>>> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every entry old: kept to serve while core-metadata is away, asked again
    /// otherwise.
    fn age_all(&self, by: Duration) {
        for e in self.write().values_mut() {
            e.at = e.at.checked_sub(by).unwrap_or(e.at);
        }
    }

    /// Makes one entry old (see [`Table::age_all`]).
    fn age(&self, key: &K, by: Duration) {
        if let Some(e) = self.write().get_mut(key) {
            e.at = e.at.checked_sub(by).unwrap_or(e.at);
        }
    }
}

type CredentialKey = (String, [u8; 32]);

struct Status {
    /// Since when core-metadata could not be asked, and why.
    unreachable: Option<(Instant, String)>,
    following: bool,
}

struct Inner {
    md: Metadata,
    cfg: ViewConfig,
    devices: Table<String, Arc<Device>>,
    profiles: Table<String, Arc<DeviceProfile>>,
    credentials: Table<CredentialKey, Arc<Device>>,
    /// Moves on every change: an answer fetched across a change is not kept.
    generation: AtomicU64,
    changes: broadcast::Sender<Change>,
    status: Mutex<Status>,
    lookups: &'static str,
    reachable: metrics::Gauge,
    changes_seen: metrics::Counter,
}

/// A process's view of core-metadata; cheap to clone.
#[derive(Clone)]
pub struct MetadataView(Arc<Inner>);

impl std::fmt::Debug for MetadataView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataView").finish_non_exhaustive()
    }
}

impl MetadataView {
    /// A view for `ctx`'s service, following metadata's changes in a task of the service.
    pub fn start(ctx: &Context, cfg: ViewConfig) -> Self {
        let view = Self::without_events(ctx, cfg);
        let (me, ctx2) = (view.clone(), ctx.clone());
        ctx.tasks
            .spawn("metadata-view", Stage::Background, move |stop| {
                me.follow(ctx2, stop)
            });
        view
    }

    /// A view that does not follow changes (it relies on `fresh_for` alone): for tests and
    /// tools.
    pub fn without_events(ctx: &Context, cfg: ViewConfig) -> Self {
        let md = Metadata::new(ServiceClient::new(ctx.registry.clone(), cfg.timeout));
        let reachable = ctx.gauge("metadata_reachable");
        reachable.set(1.0);
        Self(Arc::new(Inner {
            md,
            cfg,
            devices: Table::new(),
            profiles: Table::new(),
            credentials: Table::new(),
            generation: AtomicU64::new(0),
            changes: broadcast::channel(1024).0,
            status: Mutex::new(Status {
                unreachable: None,
                following: false,
            }),
            lookups: ctx.metric_static("metadata_lookups_total"),
            reachable,
            changes_seen: ctx.counter("metadata_changes_total"),
        }))
    }

    /// The client, for what is not cached: writes, lists.
    pub fn client(&self) -> &Metadata {
        &self.0.md
    }

    /// What changes from now on (after the view applied them).
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.0.changes.subscribe()
    }

    /// A device by name.
    pub async fn device(&self, name: &str) -> Lookup<Arc<Device>> {
        let md = &self.0.md;
        let fresh_for = self.0.cfg.fresh_for;
        self.lookup(
            "device",
            &self.0.devices,
            fresh_for,
            name.to_string(),
            || async { md.device(name).await.map(|d| d.map(Arc::new)) },
        )
        .await
    }

    /// A device profile by name.
    pub async fn profile(&self, name: &str) -> Lookup<Arc<DeviceProfile>> {
        let md = &self.0.md;
        let fresh_for = self.0.cfg.fresh_for;
        self.lookup(
            "profile",
            &self.0.profiles,
            fresh_for,
            name.to_string(),
            || async { md.profile(name).await.map(|p| p.map(Arc::new)) },
        )
        .await
    }

    /// Whether `credential` is device `name`'s. Granted credentials are remembered like
    /// objects (forgotten when the device changes); refusals and pending approvals are not.
    pub async fn verify(&self, name: &str, credential: Credential<'_>) -> Lookup<Verdict> {
        let (material, kind) = match credential {
            Credential::Secret(s) => (s, "secret"),
            Credential::Certificate(c) => (c, "certificate"),
        };
        // The kind is part of the key: a certificate (public) checked once must never pass
        // for the same bytes given as a secret.
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(kind.as_bytes());
        ctx.update(b"\0");
        ctx.update(material.as_bytes());
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ctx.finish().as_ref());
        let key = (name.to_string(), digest);
        let pending = std::sync::atomic::AtomicBool::new(false);
        let md = &self.0.md;
        let found = self
            .lookup(
                kind,
                &self.0.credentials,
                self.0.cfg.credentials_for,
                key.clone(),
                || async {
                    match credential {
                        Credential::Secret(s) => md
                            .authenticate_device(name, s)
                            .await
                            .map(|d| d.map(Arc::new)),
                        Credential::Certificate(c) => {
                            match md.authenticate_device_cert(name, c).await? {
                                CertAuth::Device(d) => Ok(Some(Arc::new(*d))),
                                CertAuth::Refused => Ok(None),
                                CertAuth::Pending => {
                                    pending.store(true, Ordering::Relaxed);
                                    Ok(None)
                                }
                            }
                        }
                    }
                },
            )
            .await;
        if pending.load(Ordering::Relaxed) {
            // Not a refusal: do not remember it as one.
            self.0.credentials.write().remove(&key);
            return Lookup::Found(Verdict::Pending);
        }
        match found {
            Lookup::Found(d) => Lookup::Found(Verdict::Granted(d)),
            Lookup::Stale { value, age } => Lookup::Stale {
                value: Verdict::Granted(value),
                age,
            },
            Lookup::Missing => {
                // A refused credential is asked again next time (a new secret may be set).
                self.0.credentials.write().remove(&key);
                Lookup::Missing
            }
            Lookup::Unavailable(e) => Lookup::Unavailable(e),
        }
    }

    async fn lookup<K, T, F, Fut>(
        &self,
        kind: &'static str,
        table: &Table<K, T>,
        fresh_for: Duration,
        key: K,
        fetch: F,
    ) -> Lookup<T>
    where
        K: Eq + Hash + Clone,
        T: Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, CallError>>,
    {
        let held = table.read().get(&key).map(|e| (e.value.clone(), e.at));
        if let Some((value, at)) = &held {
            let fresh_for = if value.is_some() {
                fresh_for
            } else {
                self.0.cfg.missing_for
            };
            if at.elapsed() < fresh_for {
                self.count(kind, "cached");
                return match value {
                    Some(v) => Lookup::Found(v.clone()),
                    None => Lookup::Missing,
                };
            }
        }
        let generation = self.0.generation.load(Ordering::Acquire);
        match fetch().await {
            Ok(value) => {
                self.reached(None);
                self.count(kind, if value.is_some() { "found" } else { "missing" });
                {
                    let mut entries = table.write();
                    if self.0.generation.load(Ordering::Acquire) == generation {
                        if entries.len() >= self.0.cfg.max_entries {
                            entries.clear();
                        }
                        entries.insert(
                            key,
                            Entry {
                                value: value.clone(),
                                at: Instant::now(),
                            },
                        );
                    }
                }
                match value {
                    Some(v) => Lookup::Found(v),
                    None => Lookup::Missing,
                }
            }
            Err(e) if e.is_not_found() => {
                self.count(kind, "missing");
                Lookup::Missing
            }
            Err(e) => {
                self.reached(Some(e.to_string()));
                match held {
                    Some((Some(value), at)) => {
                        self.count(kind, "stale");
                        Lookup::Stale {
                            value,
                            age: at.elapsed(),
                        }
                    }
                    _ => {
                        self.count(kind, "unavailable");
                        Lookup::Unavailable(e)
                    }
                }
            }
        }
    }

    fn count(&self, kind: &'static str, result: &'static str) {
        metrics::counter!(self.0.lookups, "kind" => kind, "result" => result).increment(1);
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.0.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records whether core-metadata answered (`None`) or not (why).
    fn reached(&self, failure: Option<String>) {
        let mut s = self.status();
        match failure {
            None => {
                if let Some((since, _)) = s.unreachable.take() {
                    tracing::info!(
                        after_s = since.elapsed().as_secs(),
                        "core-metadata answers again"
                    );
                    self.0.reachable.set(1.0);
                }
            }
            Some(why) => {
                if s.unreachable.is_none() {
                    tracing::warn!(error = %why, "core-metadata cannot be asked; serving the last view");
                    self.0.reachable.set(0.0);
                    s.unreachable = Some((Instant::now(), why));
                }
            }
        }
    }

    /// The `metadata` health check: failed while core-metadata cannot be asked (what is
    /// served then is the last view) or while changes are not followed.
    pub fn check(&self) -> Check {
        let s = self.status();
        match (&s.unreachable, s.following) {
            (Some((since, why)), _) => Check::failed(
                "metadata",
                format!(
                    "core-metadata unreachable for {} s ({why}); serving the last view",
                    since.elapsed().as_secs()
                ),
            ),
            (None, false) => Check::failed("metadata", "not following metadata changes yet"),
            (None, true) => Check::ok("metadata"),
        }
    }

    /// [`MetadataView::check`] as a health probe.
    pub fn probe(&self) -> HealthProbe {
        let view = self.clone();
        outpost_kit::health_probe(move || {
            let check = view.check();
            async move { vec![check] }
        })
    }

    /// Applies one change to what the view holds, then tells subscribers. A changed
    /// object counts as old (asked again, but still the last view while core-metadata is
    /// away); the credentials of a changed device are forgotten (a rotated or revoked
    /// secret must not be honoured from memory).
    pub fn apply(&self, change: Change) {
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        self.0.changes_seen.increment(1);
        let old = self
            .0
            .cfg
            .fresh_for
            .max(self.0.cfg.missing_for)
            .max(self.0.cfg.credentials_for);
        match &change {
            Change::Event(ev) => {
                if let Some(name) = ev.object_name() {
                    match ev.kind.as_str() {
                        TYPE_DEVICE => {
                            self.0.devices.age(&name.to_string(), old);
                            self.0.credentials.write().retain(|(d, _), _| d != name);
                        }
                        TYPE_DEVICE_PROFILE => self.0.profiles.age(&name.to_string(), old),
                        _ => {}
                    }
                }
            }
            Change::Resync => {
                self.0.devices.age_all(old);
                self.0.profiles.age_all(old);
                self.0.credentials.age_all(old);
            }
        }
        // Nobody listening is fine.
        let _ = self.0.changes.send(change);
    }

    /// Follows core-metadata's system events until `stop`, reconnecting as needed.
    async fn follow(self, ctx: Context, stop: Shutdown) {
        let opts = Options::plain(format!("outpost-{}-metadata", ctx.service_id()));
        let bus = match Bus::connect(&ctx.common.bus, &ctx.data_dir, &ctx.name, opts, &stop).await {
            Ok(bus) => bus,
            Err(e) => {
                if !stop.is_triggered() {
                    tracing::error!(error = %e, "cannot follow metadata changes");
                }
                return;
            }
        };
        let mut connections = bus.connections();
        connections.mark_unchanged();
        let mut rx = match bus
            .subscribe(&topics::metadata_events(bus.base_topic()))
            .await
        {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!(error = %e, "cannot follow metadata changes");
                bus.disconnect().await;
                return;
            }
        };
        // What changed before this subscription took effect was not seen: the service
        // may have loaded devices already (a device service registers and loads while
        // this connection is still being made), so everything held counts as old.
        self.apply(Change::Resync);
        self.status().following = true;
        loop {
            tokio::select! {
                () = stop.wait() => break,
                changed = connections.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Back after a loss: what was announced meanwhile is not replayed.
                    self.apply(Change::Resync);
                }
                d = rx.recv() => {
                    let Some(d) = d else { break };
                    if let Some(env) = bus.decode::<SystemEvent>(&d) {
                        self.apply(Change::Event(Arc::new(env.payload)));
                    }
                }
            }
        }
        self.status().following = false;
        bus.disconnect().await;
    }
}
