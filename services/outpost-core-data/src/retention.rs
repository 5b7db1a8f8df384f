//! Retention: keeps the store within its configured bounds.
//!
//! Every `interval_ms`: events older than `max_age_s` are removed; then, if more than
//! `max_cap` readings are stored, the oldest events are removed until at most `min_cap`
//! readings remain (EdgeX's MaxCap/MinCap). Deletions run in chunks on the writer between
//! appends, so ingest keeps flowing while a large purge runs.
//!
//! A run can also be asked for over the API (`POST /api/v3/retention/run`, an Outpost
//! extension), optionally with an age of its own; it reports its progress chunk by chunk
//! (`GET /api/v3/retention`). One run at a time: the periodic pass skips its turn while
//! one asked for runs. Instances sharing a store (PostgreSQL) run the periodic pass where
//! the lease `retention` is held: on one of them at a time.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use outpost_contracts::event::{
    RetentionRun as Run, RetentionState as State, RetentionTrigger as Trigger,
};
use outpost_kit::Shutdown;

use crate::config::RetentionConfig;
use crate::store::{EventStore, StoreError};

/// The service's retention: its bounds, the one-at-a-time gate, and the last run.
pub struct Retention {
    store: Arc<dyn EventStore>,
    cfg: RetentionConfig,
    deleted_metric: String,
    gate: Arc<tokio::sync::Mutex<()>>,
    last: Mutex<Option<Run>>,
}

impl Retention {
    pub fn new(store: Arc<dyn EventStore>, cfg: RetentionConfig, deleted_metric: String) -> Self {
        Self {
            store,
            cfg,
            deleted_metric,
            gate: Arc::new(tokio::sync::Mutex::new(())),
            last: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &RetentionConfig {
        &self.cfg
    }

    /// The running run, or the last one that removed anything, failed or was asked for.
    pub fn last(&self) -> Option<Run> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, run: &Run) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(run.clone());
    }

    /// Runs the periodic pass every `interval_ms` until `stop`.
    pub async fn keep(self: Arc<Self>, stop: Shutdown) {
        if !self.cfg.enabled {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.wait() => return,
                _ = tick.tick() => {}
            }
            // A run asked for is under way: it does at least what this pass would.
            let Ok(_turn) = self.gate.try_lock() else {
                continue;
            };
            // Instances sharing a store take turns by lease: one runs the passes while it
            // lives, another once its lease ran out.
            match self.lease().await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the retention lease; will retry");
                    continue;
                }
            }
            let run = self.run(Trigger::Interval, self.cfg.max_age_s).await;
            match (&run.error, run.removed_readings) {
                (Some(e), _) => tracing::warn!(error = %e, "retention pass failed; will retry"),
                (None, 0) => {}
                (None, n) => tracing::info!(readings = n, "retention removed old readings"),
            }
        }
    }

    /// Takes or renews the lease `retention`: whether this instance may run retention now
    /// (always, on a store of one instance). A run renews it between chunks.
    pub async fn lease(&self) -> Result<bool, StoreError> {
        let ttl = Duration::from_millis(self.cfg.interval_ms.saturating_mul(3))
            .max(Duration::from_secs(30));
        self.store.lease("retention", ttl).await
    }

    /// Starts a run now, with `max_age_s` instead of the configured age when given; the
    /// run goes on after the answer. `Err` holds the run already under way.
    pub fn start(
        self: &Arc<Self>,
        max_age_s: Option<u64>,
        tasks: &outpost_kit::Tasks,
    ) -> Result<Run, Box<Run>> {
        let Ok(turn) = Arc::clone(&self.gate).try_lock_owned() else {
            // The periodic pass or another request: whichever it is, it is the one to follow.
            let running = self.last().filter(|r| r.state == State::Running);
            return Err(Box::new(running.unwrap_or_else(|| {
                self.fresh(Trigger::Interval, self.cfg.max_age_s)
            })));
        };
        let run = self.fresh(Trigger::Request, max_age_s.unwrap_or(self.cfg.max_age_s));
        self.publish(&run);
        let (this, first) = (Arc::clone(self), run.clone());
        tasks.spawn_child(async move {
            let _turn = turn;
            let run = this.go(first).await;
            match &run.error {
                Some(e) => tracing::warn!(error = %e, "retention run failed"),
                None => tracing::info!(
                    readings = run.removed_readings,
                    "retention run asked for is done"
                ),
            }
        });
        Ok(run)
    }

    fn fresh(&self, trigger: Trigger, max_age_s: u64) -> Run {
        Run {
            id: uuid::Uuid::new_v4(),
            trigger,
            state: State::Running,
            started: outpost_contracts::now_nanos(),
            finished: None,
            max_age_seconds: max_age_s,
            removed_readings: 0,
            removed_events: 0,
            to_remove: 0,
            error: None,
        }
    }

    async fn run(&self, trigger: Trigger, max_age_s: u64) -> Run {
        self.go(self.fresh(trigger, max_age_s)).await
    }

    /// Carries `run` out, publishing its progress after every chunk (the periodic pass
    /// once it removed something).
    async fn go(&self, mut run: Run) -> Run {
        let counted = run.trigger == Trigger::Request;
        let outcome = self.chunks(&mut run, counted).await;
        run.finished = Some(outpost_contracts::now_nanos());
        match outcome {
            Ok(()) => run.state = State::Done,
            Err(e) => {
                run.state = State::Failed;
                run.error = Some(e.to_string());
            }
        }
        if counted || run.removed_readings > 0 || run.error.is_some() {
            self.publish(&run);
        }
        run
    }

    async fn chunks(&self, run: &mut Run, counted: bool) -> Result<(), StoreError> {
        let store = self.store.as_ref();
        let chunk = self.cfg.chunk_readings;
        let cutoff = (run.max_age_seconds > 0).then(|| {
            let age_ns = i64::try_from(run.max_age_seconds.saturating_mul(1_000_000_000))
                .unwrap_or(i64::MAX);
            outpost_contracts::now_nanos().saturating_sub(age_ns)
        });
        if counted {
            let old = match cutoff {
                Some(c) => store.readings_before(c).await?,
                None => 0,
            };
            let stored = store.totals(None).await?.readings;
            let left = stored.saturating_sub(old);
            let over = if left > self.cfg.max_cap {
                left - self.cfg.min_cap
            } else {
                0
            };
            run.to_remove = old + over;
            self.publish(run);
        }
        let step = |run: &mut Run, d: crate::store::Deleted| {
            run.removed_readings += d.readings;
            run.removed_events += d.events;
            metrics::counter!(self.deleted_metric.clone()).increment(d.readings);
            if counted || run.removed_readings > 0 {
                self.publish(run);
            }
            d.events > 0
        };
        // Each chunk only while this instance still holds the lease (it renews it): a run
        // longer than the lease does not overlap another instance's.
        if let Some(cutoff) = cutoff {
            while self.lease().await? && step(run, store.delete_before(cutoff, chunk).await?) {}
        }
        if store.totals(None).await?.readings > self.cfg.max_cap {
            while self.lease().await? && step(run, store.trim(self.cfg.min_cap, chunk).await?) {}
        }
        Ok(())
    }
}

/// Deletes every event whose origin is before `cutoff`, chunk by chunk; returns readings
/// deleted.
pub async fn delete_before(
    store: &dyn EventStore,
    cutoff: i64,
    chunk: u64,
) -> Result<u64, StoreError> {
    let mut readings = 0;
    loop {
        let d = store.delete_before(cutoff, chunk).await?;
        if d.events == 0 {
            return Ok(readings);
        }
        readings += d.readings;
    }
}

/// One pass with the configured bounds; returns readings removed.
#[cfg(test)]
pub(crate) async fn run_once(
    store: Arc<dyn EventStore>,
    cfg: &RetentionConfig,
) -> Result<u64, String> {
    let r = Retention::new(
        store,
        cfg.clone(),
        "retention_deleted_readings_total".into(),
    );
    let run = r.run(Trigger::Interval, cfg.max_age_s).await;
    match run.error {
        Some(e) => Err(e),
        None => Ok(run.removed_readings),
    }
}
