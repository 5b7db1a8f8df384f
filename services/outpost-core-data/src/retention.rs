//! Retention: keeps the store within its configured bounds.
//!
//! Every `interval_ms`: events older than `max_age_s` are removed; then, if more than
//! `max_cap` readings are stored, the oldest events are removed until at most `min_cap`
//! readings remain (EdgeX's MaxCap/MinCap). Deletions run in chunks on the writer between
//! appends, so ingest keeps flowing while a large purge runs.

use std::sync::Arc;
use std::time::Duration;

use outpost_kit::Shutdown;

use crate::config::RetentionConfig;
use crate::store::EventStore;

/// Runs a retention pass every `interval_ms` until `stop`.
pub async fn keep(
    store: Arc<dyn EventStore>,
    cfg: RetentionConfig,
    deleted_metric: String,
    stop: Shutdown,
) {
    if !cfg.enabled {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.wait() => return,
            _ = tick.tick() => {}
        }
        match run_once(store.as_ref(), &cfg).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!(deleted_metric.clone()).increment(n);
                tracing::info!(readings = n, "retention removed old readings");
            }
            Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
        }
    }
}

/// One retention pass; returns readings removed.
pub async fn run_once(
    store: &dyn EventStore,
    cfg: &RetentionConfig,
) -> Result<u64, crate::store::StoreError> {
    let mut removed = 0;
    if cfg.max_age_s > 0 {
        let age_ns = i64::try_from(cfg.max_age_s.saturating_mul(1_000_000_000)).unwrap_or(i64::MAX);
        let cutoff = outpost_contracts::now_nanos().saturating_sub(age_ns);
        removed += store.delete_before(cutoff, cfg.chunk_readings).await?;
    }
    let totals = store.totals(None).await?;
    if totals.readings > cfg.max_cap {
        removed += store.trim(cfg.min_cap, cfg.chunk_readings).await?;
    }
    Ok(removed)
}
