//! support-scheduler (port 59863): EdgeX 4's schedule jobs.
//!
//! A job has a definition (an interval, or a crontab evaluated in UTC, between optional
//! start and end times) and actions: a REST call (to a service of the node by name, or
//! anywhere), a message on the bus, or a device command through core-command. Each run
//! of each action leaves a record (SUCCEEDED, FAILED; MISSED for runs the service was
//! down for). Jobs are stored, so they run again after a restart ([`schedule`] says how
//! missed runs are handled). On the first start the default job `scrub-aged-events` is
//! made: core-data removes events older than a week, daily.
//!
//! Modules, lowest first: [`cron`] (when a job runs), [`model`] (the DTOs and their
//! validation), [`config`], [`store`], [`actions`] (one action), [`schedule`] (the jobs
//! running), [`routes`] (the API).

pub mod actions;
pub mod config;
pub mod cron;
pub mod model;
pub mod postgres;
pub mod routes;
pub mod schedule;
pub mod store;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use outpost_kit::client::ServiceClient;
use outpost_kit::{Info, Parts, Stage, Start, StartError, Storage};

pub use config::Config;

/// The service's registry ID.
pub const SERVICE: &str = "support-scheduler";

/// How much longer than a retention interval the retention lease lasts: its holder renews
/// it every pass; another instance takes it once its holder missed a pass.
const RETENTION_LEASE_MARGIN: Duration = Duration::from_secs(60);

/// The fact that says the default jobs were made.
const DEFAULT_JOBS_MADE: &str = "default-jobs";

/// The service, as the node runs it.
pub struct SupportScheduler;

impl outpost_kit::Service for SupportScheduler {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "support_scheduler");

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
        cfg.storage.sandbox(files, SERVICE)
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let store = start
            .store::<dyn store::SchedulerStore>(
                &cfg.storage,
                "jobs, records and secrets",
                async |c, secrets| Ok(Arc::new(postgres::PgStore::open(c, secrets).await?) as _),
                |db| Arc::new(store::SqliteStore::new(db)),
            )
            .await?;
        let timeout = Duration::from_millis(cfg.action_timeout_ms);
        let runner = actions::Runner::new(
            ServiceClient::new(ctx.registry.clone(), timeout),
            outpost_bus::Link::start(ctx),
            timeout,
        );
        let scheduler = Arc::new(schedule::Scheduler::new(
            Arc::clone(&store),
            runner,
            ctx.tasks.clone(),
            schedule::Metrics::new(ctx),
        ));
        make_default_jobs(store.as_ref(), cfg)
            .await
            .map_err(StartError::other)?;
        scheduler.load().await.map_err(StartError::other)?;
        {
            let scheduler = Arc::clone(&scheduler);
            ctx.tasks.spawn("schedule", Stage::Background, move |stop| {
                scheduler.run(stop)
            });
        }
        if cfg.retention.enabled {
            let (store, r) = (Arc::clone(&store), cfg.retention.clone());
            ctx.tasks
                .spawn("retention", Stage::Background, move |stop| async move {
                    let every = Duration::from_millis(r.interval_ms);
                    let mut tick =
                        tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            () = stop.wait() => return,
                            _ = tick.tick() => {}
                        }
                        // Instances sharing a store take turns: each pass counts, then
                        // deletes, so two at once would delete twice.
                        match store
                            .lease("retention", every + RETENTION_LEASE_MARGIN)
                            .await
                        {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot take the retention lease");
                                continue;
                            }
                        }
                        match store.trim_records(r.max_cap, r.min_cap).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(
                                removed = n,
                                "retention removed the oldest action records"
                            ),
                            Err(e) => tracing::warn!(error = %e, "retention could not run"),
                        }
                    }
                });
        }
        let app = Arc::new(routes::App {
            store,
            scheduler,
            max_result_count: cfg.max_result_count,
        });
        Ok(Parts::new(routes::router(app)))
    }
}

/// Makes the default jobs, once in the life of the database.
async fn make_default_jobs(
    store: &dyn store::SchedulerStore,
    cfg: &Config,
) -> Result<(), store::StoreError> {
    if !cfg.default_jobs.enabled || store.fact(DEFAULT_JOBS_MADE).await?.is_some() {
        return Ok(());
    }
    let age_ns = model::parse_duration(&cfg.default_jobs.event_age)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let now = schedule::now_ms();
    let job = model::ScheduleJob {
        id: uuid::Uuid::new_v4().to_string(),
        created: now,
        modified: now,
        name: "scrub-aged-events".into(),
        definition: model::ScheduleDef {
            kind: model::INTERVAL.into(),
            interval: cfg.default_jobs.interval.clone(),
            ..model::ScheduleDef::default()
        },
        actions: vec![model::ScheduleAction {
            kind: model::action::REST.into(),
            address: format!("http://core-data/api/v3/event/age/{age_ns}"),
            method: "DELETE".into(),
            ..model::ScheduleAction::default()
        }],
        admin_state: model::UNLOCKED.into(),
        labels: vec!["default".into()],
        ..model::ScheduleJob::default()
    };
    match store
        .add_job(store::StoredJob {
            action_ids: vec![uuid::Uuid::new_v4().to_string()],
            job,
        })
        .await
    {
        Ok(()) | Err(store::StoreError::Duplicate(_)) => {}
        Err(e) => return Err(e),
    }
    store.set_fact(DEFAULT_JOBS_MADE, "1").await
}
