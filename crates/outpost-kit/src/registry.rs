//! Client side of the service registry (core-keeper).
//!
//! - [`Registry`] calls the registry API and keeps the last view of all registrations. The
//!   view is refreshed by a long-poll watch; when the registry is unreachable the last view
//!   stays in use, so a registry outage does not stop traffic between services. Before the
//!   first successful refresh, addresses come from a fallback table built from the node's
//!   configuration.
//! - [`spawn_agent`] registers a service, heartbeats it, re-registers it when the registry
//!   forgot it (a registry restart, or a pause long enough to be removed), and deregisters it
//!   at shutdown.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use outpost_contracts::common::BaseRequest;
use outpost_contracts::registry::{
    AddRegistrationRequest, MultiRegistrationsResponse, Registration, ServiceStatus,
};
use reqwest::StatusCode;

use crate::backoff::Backoff;
use crate::http;
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry unreachable: {0}")]
    Unreachable(String),
    #[error("registry answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("service '{0}' is not registered")]
    NotRegistered(String),
}

impl From<reqwest::Error> for RegistryError {
    fn from(e: reqwest::Error) -> Self {
        Self::Unreachable(e.to_string())
    }
}

#[derive(Default)]
struct View {
    index: u64,
    services: HashMap<String, Registration>,
    loaded: bool,
}

struct Inner {
    url: String,
    http: reqwest::Client,
    view: RwLock<View>,
    /// Bumped every time the view is replaced: lets callers keep what they derive from it
    /// until it changes.
    generation: std::sync::atomic::AtomicU64,
    fallback: HashMap<String, String>,
    watch_wait_ms: u64,
}

/// A handle on the registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.inner.url)
            .finish()
    }
}

impl Registry {
    /// `url` is core-keeper's base URL; `fallback` maps service IDs to base URLs used until
    /// the first view arrives.
    pub fn new(
        url: impl Into<String>,
        request_timeout: Duration,
        watch_wait_ms: u64,
        fallback: HashMap<String, String>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                url: url.into().trim_end_matches('/').to_string(),
                http: http::client(request_timeout),
                view: RwLock::default(),
                generation: std::sync::atomic::AtomicU64::new(0),
                fallback,
                watch_wait_ms,
            }),
        }
    }

    pub fn url(&self) -> &str {
        &self.inner.url
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/v3{path}", self.inner.url)
    }

    /// Registers `reg`, updating it if the registry already knows the service.
    pub async fn register(&self, reg: &Registration) -> Result<(), RegistryError> {
        let body = AddRegistrationRequest {
            base: BaseRequest::new(),
            registration: reg.clone(),
        };
        let resp = http::correlated(self.inner.http.post(self.api("/registry")))
            .json(&body)
            .send()
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::CONFLICT => {
                let resp = http::correlated(self.inner.http.put(self.api("/registry")))
                    .json(&body)
                    .send()
                    .await?;
                check(resp).await
            }
            _ => check(resp).await,
        }
    }

    /// Reports that `service_id` is alive.
    pub async fn heartbeat(&self, service_id: &str) -> Result<(), RegistryError> {
        let resp = http::correlated(
            self.inner
                .http
                .put(self.api(&format!("/registry/serviceId/{service_id}/heartbeat"))),
        )
        .send()
        .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotRegistered(service_id.to_string()));
        }
        check(resp).await
    }

    /// Deregisters `service_id`.
    pub async fn deregister(&self, service_id: &str) -> Result<(), RegistryError> {
        let resp = http::correlated(
            self.inner
                .http
                .delete(self.api(&format!("/registry/serviceId/{service_id}"))),
        )
        .send()
        .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        check(resp).await
    }

    /// Fetches all registrations (and refreshes the view).
    pub async fn all(&self) -> Result<Vec<Registration>, RegistryError> {
        let resp = http::correlated(self.inner.http.get(self.api("/registry/all")))
            .send()
            .await?;
        let resp = ok(resp).await?;
        let list: MultiRegistrationsResponse = resp
            .json()
            .await
            .map_err(|e| RegistryError::Unreachable(e.to_string()))?;
        self.store(list.index.unwrap_or(0), &list.registrations);
        Ok(list.registrations)
    }

    fn store(&self, index: u64, regs: &[Registration]) {
        let mut v = self
            .inner
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.index = index;
        v.services = regs
            .iter()
            .map(|r| (r.service_id.clone(), r.clone()))
            .collect();
        v.loaded = true;
        self.inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Changes whenever the view does (0 before the first view).
    pub fn generation(&self) -> u64 {
        self.inner
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Base URL of `service_id` from the last view: a registered instance that is not
    /// DOWN (the exact ID first, then any other instance `service_id@...`), else the
    /// configured fallback.
    pub fn resolve(&self, service_id: &str) -> Option<String> {
        let v = self
            .inner
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let usable =
            |r: &Registration| matches!(r.status, ServiceStatus::Up | ServiceStatus::Unknown);
        if let Some(r) = v.services.get(service_id)
            && usable(r)
        {
            return Some(r.base_url());
        }
        if let Some(r) = v
            .services
            .values()
            .find(|r| service_of(&r.service_id) == service_id && usable(r))
        {
            return Some(r.base_url());
        }
        if v.loaded && v.services.contains_key(service_id) {
            // Known but DOWN or halted: still the best address we have.
            return v.services.get(service_id).map(Registration::base_url);
        }
        self.inner.fallback.get(service_id).cloned()
    }

    /// Every registered instance of `service` (`service` itself and `service@...`) that is
    /// not DOWN, from the last view; the fallback address before the first view.
    pub fn instances(&self, service: &str) -> Vec<Registration> {
        let v = self
            .inner
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !v.loaded {
            return Vec::new();
        }
        let mut out: Vec<Registration> = v
            .services
            .values()
            .filter(|r| service_of(&r.service_id) == service)
            .filter(|r| matches!(r.status, ServiceStatus::Up | ServiceStatus::Unknown))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.service_id.cmp(&b.service_id));
        out
    }

    /// The fallback base URL of `service` (from the node's configuration), if any.
    pub fn fallback(&self, service: &str) -> Option<&str> {
        self.inner.fallback.get(service).map(String::as_str)
    }

    /// Whether a view of the registry has been loaded.
    pub fn loaded(&self) -> bool {
        self.inner
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .loaded
    }

    /// The last view of every registration.
    pub fn snapshot(&self) -> Vec<Registration> {
        let v = self
            .inner
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<_> = v.services.values().cloned().collect();
        out.sort_by(|a, b| a.service_id.cmp(&b.service_id));
        out
    }

    /// Keeps the view fresh with long-polls until shutdown.
    pub async fn watch(self, shutdown: Shutdown) {
        let me = self;
        {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
            // The long-poll outlives the normal request timeout.
            let client = http::client(Duration::from_millis(me.inner.watch_wait_ms + 5_000));
            loop {
                let index = me.inner.view.read().map(|v| v.index).unwrap_or_default();
                let req = http::correlated(client.get(me.api("/registry/all"))).query(&[
                    ("waitIndex", index.to_string()),
                    ("waitMs", me.inner.watch_wait_ms.to_string()),
                ]);
                let result = tokio::select! {
                    () = shutdown.wait() => return,
                    r = req.send() => r,
                };
                let ok = match result {
                    Ok(resp) if resp.status().is_success() => {
                        match resp.json::<MultiRegistrationsResponse>().await {
                            Ok(list) => {
                                me.store(list.index.unwrap_or(0), &list.registrations);
                                true
                            }
                            Err(_) => false,
                        }
                    }
                    _ => false,
                };
                if ok {
                    backoff.reset();
                } else {
                    let delay = backoff.next_delay();
                    tracing::debug!(?delay, "registry watch failed; keeping the last view");
                    tokio::select! {
                        () = shutdown.wait() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

async fn ok(resp: reqwest::Response) -> Result<reqwest::Response, RegistryError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    Err(RegistryError::Status { status, body })
}

async fn check(resp: reqwest::Response) -> Result<(), RegistryError> {
    ok(resp).await.map(|_| ())
}

/// Registers `me`, heartbeats every `interval` until shutdown, then deregisters.
///
/// Await the handle after the service stopped serving: it returns once the deregistration
/// was sent (or timed out), so a clean stop disappears from the registry at once.
pub fn spawn_agent(
    registry: Registry,
    me: Registration,
    interval: Duration,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let id = me.service_id.clone();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut registered = false;
        let mut warned = false;
        loop {
            let step = if registered {
                registry.heartbeat(&id).await
            } else {
                registry.register(&me).await
            };
            let delay = match step {
                Ok(()) => {
                    if !registered {
                        tracing::info!(service = %id, registry = %registry.url(), "registered");
                    }
                    registered = true;
                    warned = false;
                    backoff.reset();
                    interval
                }
                Err(RegistryError::NotRegistered(_)) => {
                    tracing::info!(service = %id, "registry forgot this service; registering again");
                    registered = false;
                    Duration::ZERO
                }
                Err(e) => {
                    // The registry may simply not be up yet when the node starts.
                    if !warned && backoff.attempts() >= 5 {
                        tracing::warn!(service = %id, error = %e, "registry call failed; retrying");
                        warned = true;
                    }
                    backoff.next_delay().min(interval)
                }
            };
            tokio::select! {
                () = shutdown.wait() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        match tokio::time::timeout(Duration::from_secs(2), registry.deregister(&id)).await {
            Ok(Ok(())) => tracing::info!(service = %id, "deregistered"),
            Ok(Err(e)) => tracing::warn!(service = %id, error = %e, "deregistration failed"),
            Err(_) => tracing::warn!(service = %id, "deregistration timed out"),
        }
    })
}

/// The registry ID of an instance: `service`, or `service@instance`.
pub fn instance_id(service: &str, instance: &str) -> String {
    if instance.is_empty() {
        service.to_string()
    } else {
        format!("{service}@{instance}")
    }
}

/// The service an instance ID belongs to (`core-data@b` → `core-data`).
pub fn service_of(service_id: &str) -> &str {
    service_id.split_once('@').map_or(service_id, |(s, _)| s)
}
