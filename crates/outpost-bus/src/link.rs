//! A service's own bus connection for what it publishes from its routes and tasks: opened
//! in the background (a service serves before the broker answers), reported in health, and
//! closed only after the service stopped serving, so a request in flight can still publish.

use std::sync::Arc;

use outpost_kit::{Check, Context, HealthProbe, Stage};
use tokio::sync::{Notify, OnceCell};

use crate::{Bus, Options};

/// Connections a link publishes over (see [`Options::publishers`]).
pub const LINK_PUBLISHERS: u16 = 8;

/// The connection, once open; cheap to clone.
#[derive(Clone, Default)]
pub struct Link(Arc<Inner>);

#[derive(Default)]
struct Inner {
    bus: OnceCell<Bus>,
    opened: Notify,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("connected", &self.0.bus.get().is_some())
            .finish()
    }
}

impl Link {
    /// Connects as `ctx`'s service (client ID `outpost-<service id>-link`, apart from the
    /// IDs of its durable sessions) in a task of the service that retries until the broker
    /// answers and disconnects after serving.
    pub fn start(ctx: &Context) -> Self {
        Self::start_as(ctx, format!("outpost-{}-link", ctx.service_id()))
    }

    /// Like [`Link::start`] with another client ID, for a second connection.
    pub fn start_as(ctx: &Context, client_id: String) -> Self {
        let link = Self::default();
        let slot = Arc::clone(&link.0);
        let (cfg, data_dir, name, shutdown) = (
            ctx.common.bus.clone(),
            ctx.data_dir.clone(),
            ctx.name.clone(),
            ctx.shutdown.clone(),
        );
        ctx.tasks
            .spawn("bus", Stage::AfterServing, move |stop| async move {
                // Routes and device services publish from many tasks at once.
                let opts = Options::plain(client_id).with_publishers(LINK_PUBLISHERS);
                // Connecting gives up when the service starts stopping: nothing more will
                // be published then.
                let bus = match Bus::connect(&cfg, &data_dir, &name, opts, &shutdown).await {
                    Ok(bus) => bus,
                    Err(e) => {
                        if !shutdown.is_triggered() {
                            tracing::error!(error = %e, "cannot connect to the bus");
                        }
                        return;
                    }
                };
                let _ = slot.bus.set(bus.clone());
                slot.opened.notify_waiters();
                stop.wait().await;
                bus.disconnect().await;
            });
        link
    }

    /// The connection, if it is open yet.
    pub fn get(&self) -> Option<&Bus> {
        self.0.bus.get()
    }

    /// Waits until the connection is open.
    pub async fn connected(&self) -> Bus {
        loop {
            let opened = self.0.opened.notified();
            if let Some(bus) = self.0.bus.get() {
                return bus.clone();
            }
            opened.await;
        }
    }

    /// The `bus` health check.
    pub async fn check(&self) -> Check {
        match self.0.bus.get() {
            Some(bus) if bus.is_connected().await => Check::ok("bus"),
            Some(_) => Check::failed("bus", "connection lost; reconnecting"),
            None => Check::failed("bus", "not connected yet"),
        }
    }

    /// [`Link::check`] as a health probe.
    pub fn probe(&self) -> HealthProbe {
        let link = self.clone();
        outpost_kit::health_probe(move || {
            let link = link.clone();
            async move { vec![link.check().await] }
        })
    }
}
