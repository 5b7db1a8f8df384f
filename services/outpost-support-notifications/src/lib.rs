//! support-notifications (port 59860): EdgeX 4's notification service.
//!
//! Notifications (category, labels, severity, content) are posted by anyone with the
//! right; subscriptions say who receives which (by category and labels) over which
//! channels: REST (a webhook), EMAIL (SMTP with STARTTLS) or MQTT (any broker). Each
//! delivery is a transmission with a record per attempt.
//!
//! Delivery is durable: the transmissions a notification owes are stored with it before
//! `POST /notification` answers, and the delivery loop resends failures on the
//! subscription's interval up to its limit, across restarts ([`deliver`]). Every
//! severity is resent; a CRITICAL notification whose resends are spent is ESCALATED (a
//! copy goes to the `ESCALATION` subscription), any other FAILED. Retention keeps the
//! number of notifications bounded. Alerts of rules pipelines become notifications of
//! category `rules-alert` ([`alerts`]).
//!
//! Modules, lowest first: [`model`] (the DTOs and their validation), [`config`],
//! [`store`] (SQLite) and [`postgres`] (several instances sharing the deliveries), [`smtp`]
//! and [`send`] (one attempt over one channel), [`deliver`] (accepting and the delivery
//! loop), [`routes`] (the API).

pub mod alerts;
pub mod config;
pub mod deliver;
pub mod model;
pub mod postgres;
pub mod routes;
pub mod send;
pub mod smtp;
pub mod store;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use outpost_kit::{Check, Info, Parts, Stage, Start, StartError, Storage, health_probe};

pub use config::Config;

/// The service's registry ID.
pub const SERVICE: &str = "support-notifications";

/// Keeps the delivery's resend defaults at the writable settings in force.
async fn follow_resend_defaults(
    live: outpost_kit::writable::Live<config::Writable>,
    delivery: Arc<deliver::Delivery>,
    stop: outpost_kit::Shutdown,
) {
    let mut settings = live.subscribe();
    loop {
        tokio::select! {
            () = stop.wait() => return,
            changed = settings.changed() => if changed.is_err() { return },
        }
        let w = settings.borrow_and_update().clone();
        // Checked when taken (config::Writable::check).
        if let Ok(interval) = model::parse_duration(&w.resend_interval) {
            delivery.set_defaults(deliver::Resend {
                limit: w.resend_limit,
                interval,
            });
        }
    }
}

/// The service, as the node runs it.
pub struct SupportNotifications;

impl outpost_kit::Service for SupportNotifications {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "support_notifications").no_registry_view();

    fn storage(cfg: &Config) -> Option<Storage> {
        if cfg.storage.is_postgres() {
            return None;
        }
        Some(Storage::new(store::MIGRATIONS, 2))
    }

    fn sandbox(
        cfg: &Config,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_storage::StorageError> {
        files
            .config_file(cfg.smtp.ca_file.as_deref())
            .config_file(cfg.smtp.password_file.as_deref());
        cfg.storage.sandbox(files, SERVICE)
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let store = start
            .store::<dyn store::NotificationStore>(
                &cfg.storage,
                "notifications, subscriptions and transmissions",
                async |c, secrets| Ok(Arc::new(postgres::PgStore::open(c, secrets).await?) as _),
                |db| Arc::new(store::SqliteStore::new(db)),
            )
            .await?;
        let senders = send::Senders::new(cfg, Arc::clone(&store)).map_err(StartError::other)?;
        let defaults = deliver::Resend {
            limit: cfg.resend_limit,
            interval: model::parse_duration(&cfg.resend_interval).map_err(StartError::other)?,
        };
        let delivery = Arc::new(deliver::Delivery::new(
            Arc::clone(&store),
            senders,
            defaults,
            cfg.concurrency,
            deliver::Metrics::new(ctx),
            &ctx.tasks,
        ));
        {
            let (delivery, tasks) = (Arc::clone(&delivery), ctx.tasks.clone());
            ctx.tasks.spawn("delivery", Stage::Background, move |stop| {
                delivery.run(tasks, stop)
            });
        }
        {
            let live = start.writable(config::Writable {
                resend_limit: cfg.resend_limit,
                resend_interval: cfg.resend_interval.clone(),
            });
            let delivery = Arc::clone(&delivery);
            ctx.tasks
                .spawn("resend-defaults", Stage::Background, move |stop| {
                    follow_resend_defaults(live, delivery, stop)
                });
        }
        if cfg.rules_alerts {
            let (ctx2, delivery) = (ctx.clone(), Arc::clone(&delivery));
            ctx.tasks
                .spawn("rules-alerts", Stage::AfterServing, move |stop| {
                    alerts::consume(ctx2, delivery, stop)
                });
        }
        if cfg.retention.enabled {
            let (store, r) = (Arc::clone(&store), cfg.retention.clone());
            ctx.tasks
                .spawn("retention", Stage::Background, move |stop| async move {
                    let every = Duration::from_millis(r.interval_ms);
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            () = stop.wait() => return,
                            _ = tick.tick() => {}
                        }
                        // Instances sharing a store take turns (a pass counts, then
                        // deletes); the lease outlasts a pass by a minute.
                        let ttl = every + Duration::from_secs(60);
                        match store.lease("retention", ttl).await {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot take the retention lease");
                                continue;
                            }
                        }
                        match store.trim_notifications(r.max_cap, r.min_cap).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(
                                removed = n,
                                "retention removed the oldest notifications"
                            ),
                            Err(e) => tracing::warn!(error = %e, "retention could not run"),
                        }
                    }
                });
        }
        let health = {
            let store = Arc::clone(&store);
            health_probe(move || {
                let store = Arc::clone(&store);
                async move {
                    match store.owed().await {
                        Ok(_) => vec![Check::ok("delivery")],
                        Err(e) => vec![Check::failed("delivery", e.to_string())],
                    }
                }
            })
        };
        let app = Arc::new(routes::App {
            store,
            delivery,
            max_result_count: cfg.max_result_count,
        });
        Ok(Parts::new(routes::router(app)).health(health))
    }
}
