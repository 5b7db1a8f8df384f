//! Ingest from the bus: decode, validate, batch, commit, then acknowledge.
//!
//! ```text
//! broker ──QoS 1──▶ decode + validate ──batch──▶ committer ──commit──▶ ack (PUBACK)
//! ```
//!
//! Decoding and validation run on the async runtime while the previous batch commits on
//! the writer thread, so both cores work. A message is acknowledged only after the
//! transaction holding its event committed (or after it was found to be a duplicate or
//! invalid, which are counted). If the store cannot take writes, the batch is retried with
//! backoff and nothing is acknowledged meanwhile: the broker's in-flight window fills, and
//! the broker holds further events for core-data instead of losing them.
//!
//! On shutdown, core-data keeps consuming until the broker has nothing more for it (a quiet
//! period), commits and acknowledges all of it, and closes the connection. Anything not
//! committed by then is left unacknowledged ([`outpost_bus::delivery`]), so the broker
//! delivers it again; no acknowledgement for an uncommitted event can reach the broker.

use std::sync::Arc;
use std::time::Duration;

use outpost_bus::{Ack, Bus, Consumer, Delivery, Received};
use outpost_kit::Shutdown;
use outpost_kit::backoff::Backoff;
use outpost_kit::ratelog::RateLimitedLog;
use outpost_kit::writable::Live;
use tokio::sync::mpsc;

use crate::config::Writable;
use crate::store::{EventStore, IngestEvent, Outcome};
use crate::validate::{Rejection, Validator};

/// A stopping consumer waits this long without a message before it considers the broker
/// drained.
const DRAIN_QUIET: Duration = Duration::from_millis(300);
/// Longest drain when messages keep coming.
const DRAIN_MAX: Duration = Duration::from_secs(10);

outpost_kit::metric_names! {
    /// Metric names of the ingest path.
    pub struct IngestMetrics {
        events = "events_persisted_total",
        readings = "readings_persisted_total",
        duplicates = "events_duplicate_total",
        /// Events refused, by reason.
        rejected = "events_rejected_total",
    }
}

/// What ingest shares with the REST path.
pub struct Ingest {
    pub store: Arc<dyn EventStore>,
    pub validator: Arc<Validator>,
    pub metrics: IngestMetrics,
    /// `PersistData` and `MaxResultCount`, as core-keeper has them.
    pub live: Live<Writable>,
    log: RateLimitedLog,
}

impl Ingest {
    pub fn new(
        store: Arc<dyn EventStore>,
        validator: Arc<Validator>,
        metrics: IngestMetrics,
    ) -> Self {
        outpost_kit::telemetry::zeroed_counters(&[
            metrics.events,
            metrics.readings,
            metrics.duplicates,
        ]);
        Self {
            store,
            validator,
            metrics,
            live: Live::fixed(Writable {
                persist_data: true,
                max_result_count: 1024,
            }),
            log: RateLimitedLog::default(),
        }
    }

    /// Follows these writable settings.
    pub fn with_writable(mut self, live: Live<Writable>) -> Self {
        self.live = live;
        self
    }

    /// Whether events are stored now (`PersistData`).
    pub fn persisting(&self) -> bool {
        self.live.get().persist_data
    }

    /// Counts and logs (rate-limited) a refused event.
    pub fn rejected(&self, rej: &Rejection, origin: &str) {
        metrics::counter!(self.metrics.rejected, "reason" => rej.reason).increment(1);
        if let Some(suppressed) = self.log.check(rej.reason) {
            tracing::warn!(
                reason = rej.reason,
                origin,
                suppressed,
                "refused an event: {}",
                rej.message
            );
        }
    }

    /// Counts what a commit did.
    pub fn record(&self, events: &[IngestEvent], outcomes: &[Outcome]) {
        let mut stored = 0u64;
        let mut readings = 0u64;
        let mut dups = 0u64;
        for (ie, o) in events.iter().zip(outcomes) {
            match o {
                Outcome::Stored => {
                    stored += 1;
                    readings += ie.event.readings.len() as u64;
                }
                Outcome::Duplicate => dups += 1,
                Outcome::Refused(why) => {
                    let rej = Rejection {
                        status: axum::http::StatusCode::BAD_REQUEST,
                        reason: "unstorable",
                        message: why.clone(),
                    };
                    self.rejected(&rej, "store");
                }
            }
        }
        metrics::counter!(self.metrics.events).increment(stored);
        metrics::counter!(self.metrics.readings).increment(readings);
        if dups > 0 {
            metrics::counter!(self.metrics.duplicates).increment(dups);
        }
    }
}

#[derive(Default)]
struct Batch {
    events: Vec<IngestEvent>,
    acks: Vec<Ack>,
}

/// Consumes deliveries until `stop`, then drains what the broker still holds for
/// core-data (see the module documentation).
pub async fn run(ingest: Arc<Ingest>, consumer: &mut Consumer, max_batch: usize, stop: Shutdown) {
    let bus = consumer.bus().clone();
    let (commit_tx, commit_rx) = mpsc::channel::<Batch>(2);
    let pending = Arc::new(Pending::default());
    // Owned here: if this task is aborted, so is the committer.
    let mut committer = tokio::task::JoinSet::new();
    committer.spawn(commit_loop(
        Arc::clone(&ingest),
        commit_rx,
        Arc::clone(&pending),
        stop.clone(),
    ));
    let send = |batch: Batch| {
        let (tx, pending) = (commit_tx.clone(), Arc::clone(&pending));
        async move {
            pending.add();
            if let Err(refused) = tx.send(batch).await {
                // The committer is gone (it gave up while stopping): these stay with the
                // broker too (their acknowledgements go unanswered).
                pending.done();
                drop(refused.0.acks);
                return false;
            }
            true
        }
    };
    while let Some(first) = consumer.recv(&stop).await {
        let mut batch = Batch::default();
        take(&ingest, &bus, first, &mut batch).await;
        // What arrives while events are checked joins the batch: under load batches grow
        // to max_batch and commits (each an fsync) stay few per event.
        while batch.events.len() < max_batch {
            let Some(d) = consumer.try_recv() else { break };
            take(&ingest, &bus, d, &mut batch).await;
        }
        if !batch.events.is_empty() && !send(batch).await {
            break;
        }
    }
    // Keep consuming until the broker has delivered everything it held for core-data. A
    // quiet stream alone does not prove that: the broker also goes quiet while it waits for
    // acknowledgements. So the drain ends only when nothing arrived for DRAIN_QUIET *and*
    // every batch received has been committed and acknowledged (or DRAIN_MAX passed).
    let deadline = tokio::time::Instant::now() + DRAIN_MAX;
    let mut batch = Batch::default();
    loop {
        if tokio::time::Instant::now() > deadline {
            tracing::warn!("events kept arriving while stopping; the rest stays with the broker");
            break;
        }
        match consumer.recv_within(DRAIN_QUIET).await {
            Received::Message(d) => {
                take(&ingest, &bus, d, &mut batch).await;
                if batch.events.len() >= max_batch && !send(std::mem::take(&mut batch)).await {
                    break;
                }
            }
            Received::Closed => break,
            Received::Quiet => {
                let in_flight = !batch.events.is_empty() || pending.count() > 0;
                if !batch.events.is_empty() && !send(std::mem::take(&mut batch)).await {
                    break;
                }
                if !pending.wait_idle(deadline).await {
                    break;
                }
                if !in_flight {
                    // Quiet with nothing awaiting acknowledgement: the broker has no more.
                    break;
                }
                // Acknowledgements just went out: give the broker another quiet window to
                // send what it was holding back.
            }
        }
    }
    if !batch.events.is_empty() {
        send(batch).await;
    }
    drop(commit_tx);
    while committer.join_next().await.is_some() {}
}

/// Batches handed to the committer and not yet acknowledged.
#[derive(Default)]
struct Pending {
    count: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Pending {
    fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn add(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn done(&self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits until no batch is pending; false if `deadline` passed first.
    async fn wait_idle(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let changed = self.changed.notified();
            if self.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }
}

/// Decodes and validates one delivery into the batch; refused messages are acknowledged
/// at once (they would only be refused again).
async fn take(ingest: &Ingest, bus: &Bus, d: Delivery, batch: &mut Batch) {
    let Some(env) = bus.decode_event(&d) else {
        d.ack();
        return;
    };
    let (topic, _, ack) = d.into_parts();
    // The message's correlation ID goes with everything done for it (metadata lookups,
    // log lines).
    let correlation = outpost_kit::request_id::accept(&env.correlation_id)
        .map_or_else(outpost_kit::request_id::current_or_mint, Into::into);
    outpost_kit::request_id::scope(correlation, async {
        match ingest.validator.prepare(env.payload.event).await {
            Ok(ie) => {
                batch.events.push(ie);
                batch.acks.push(ack);
            }
            Err(rej) => {
                ingest.rejected(&rej, &topic);
                ack.ack();
            }
        }
    })
    .await;
}

async fn commit_loop(
    ingest: Arc<Ingest>,
    mut rx: mpsc::Receiver<Batch>,
    pending: Arc<Pending>,
    shutdown: Shutdown,
) {
    while let Some(batch) = rx.recv().await {
        if !ingest.persisting() {
            // Checked and not to be stored (PersistData off): done with.
            for ack in batch.acks {
                ack.ack();
            }
            pending.done();
            continue;
        }
        let events: Arc<[IngestEvent]> = batch.events.into();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            match ingest.store.append(Arc::clone(&events)).await {
                Ok(outcomes) => {
                    ingest.record(&events, &outcomes);
                    for ack in batch.acks {
                        ack.ack();
                    }
                    pending.done();
                    break;
                }
                Err(e) => {
                    if backoff.attempts() == 0 {
                        tracing::error!(error = %e, events = events.len(), "cannot commit events; holding them unacknowledged and retrying");
                    }
                    if shutdown.is_triggered() && backoff.attempts() >= 3 {
                        tracing::warn!(
                            events = events.len(),
                            "stopping with uncommitted events; the broker keeps them"
                        );
                        // Dropped unanswered: the broker keeps these for the next session.
                        drop(batch.acks);
                        pending.done();
                        rx.close();
                        while let Some(rest) = rx.recv().await {
                            drop(rest.acks);
                            pending.done();
                        }
                        return;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}
