//! Retention: keeps the store within `[cloud.retention]`.
//!
//! A pass every `interval_s`: bounded steps ([`Store::remove_old`]), each its own
//! transaction, repeated until one removes nothing, so ingest gets the database between
//! them. After a pass, the `readings_stored` gauge shows what is kept. Cloud instances
//! sharing PostgreSQL run passes where the lease `retention` is held: one at a time.

use std::sync::Arc;
use std::time::Duration;

use outpost_kit::Shutdown;

use crate::config::Retention;
use crate::store::{Removed, Store};

/// The names of retention's metrics.
pub struct Metrics {
    pub removed: String,
    pub stored: String,
    /// Passes finished.
    pub passes: String,
}

/// Runs a pass every `interval_s` until `stop`.
pub async fn keep(store: Arc<dyn Store>, cfg: Retention, metrics: Metrics, stop: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_s.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    metrics::counter!(metrics.passes.clone()).increment(0);
    loop {
        tokio::select! {
            () = stop.wait() => return,
            _ = tick.tick() => {}
        }
        // Instances sharing a store take turns by lease: one runs the passes.
        let ttl = Duration::from_secs(cfg.interval_s.max(1).saturating_mul(3))
            .max(Duration::from_secs(10));
        match store.lease("retention", ttl).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the retention lease; will retry");
                continue;
            }
        }
        let Some(pass) = pass(store.as_ref(), &cfg, &metrics, &stop).await else {
            return;
        };
        if pass != Removed::default() {
            tracing::info!(
                events = pass.events,
                readings = pass.readings,
                alerts = pass.alerts,
                "retention removed old data"
            );
        }
        if let Ok(n) = store.reading_total().await {
            metrics::gauge!(metrics.stored.clone()).set(n as f64);
        }
        metrics::counter!(metrics.passes.clone()).increment(1);
    }
}

/// One pass: steps until one removes nothing or fails (the next pass retries). `None`
/// when `stop` fired meanwhile.
async fn pass(
    store: &dyn Store,
    cfg: &Retention,
    metrics: &Metrics,
    stop: &Shutdown,
) -> Option<Removed> {
    let mut pass = Removed::default();
    loop {
        let cutoff = (cfg.max_age_s > 0).then(|| {
            let age =
                i64::try_from(cfg.max_age_s.saturating_mul(1_000_000_000)).unwrap_or(i64::MAX);
            outpost_contracts::now_nanos().saturating_sub(age)
        });
        match store
            .remove_old(cutoff, cfg.max_readings, cfg.chunk_events)
            .await
        {
            Ok(r) if r == Removed::default() => return Some(pass),
            Ok(r) => {
                pass.events += r.events;
                pass.readings += r.readings;
                pass.alerts += r.alerts;
                metrics::counter!(metrics.removed.clone()).increment(r.readings);
                if stop.is_triggered() {
                    return None;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention step failed; the next pass retries");
                return Some(pass);
            }
        }
    }
}
