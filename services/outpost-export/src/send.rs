//! The sender of one destination: sends its queue batch after batch, high priority first;
//! consumes a batch once delivered, retries transient failures with backoff and jitter,
//! and keeps what the receiver refuses for good as dead letters.

use std::sync::Arc;
use std::time::Duration;

use outpost_contracts::export::Backlog;
use outpost_kit::Shutdown;

use crate::dest::{Dest, Metrics, now_ms};
use crate::sink::SendError;
use crate::store::DeadLetterStore;

/// Sends one destination's queue, batch after batch.
pub async fn run(
    d: Arc<Dest>,
    letters: Arc<dyn DeadLetterStore>,
    names: Metrics,
    shutdown: Shutdown,
) {
    let mut backoff = outpost_kit::backoff::Backoff::new(
        Duration::from_millis(d.cfg.retry_initial_ms),
        Duration::from_millis(d.cfg.retry_max_ms),
    );
    let name = d.cfg.name.clone();
    let mut idle = true;
    loop {
        if shutdown.is_triggered() {
            return;
        }
        if idle && d.cfg.linger_ms > 0 {
            // The first item after a quiet spell: let the batch fill a little.
            tokio::time::sleep(Duration::from_millis(d.cfg.linger_ms)).await;
        }
        let peeked = {
            let d = Arc::clone(&d);
            tokio::task::spawn_blocking(move || {
                let mut q = d.queue();
                let batch = q.peek(d.cfg.batch_max_items, d.cfg.batch_max_bytes, now_ms());
                let stats = q.stats();
                (batch, stats)
            })
            .await
        };
        let (batch, stats) = match peeked {
            Ok((Ok(b), s)) => (b, s),
            Ok((Err(e), _)) => {
                tracing::error!(destination = name, error = %e, "cannot read the queue");
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Err(_) => return,
        };
        let Some(batch) = batch else {
            idle = true;
            tokio::select! {
                () = shutdown.wait() => return,
                () = d.wake.notified() => {}
                // TTL expiry and gauges move even when nothing arrives.
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        idle = false;
        // What waits besides this batch.
        let backlog = Backlog {
            items: stats
                .priorities
                .iter()
                .map(|p| p.items)
                .sum::<u64>()
                .saturating_sub(batch.items.len() as u64),
            bytes: stats.bytes,
            oldest_ms: stats.priorities.iter().filter_map(|p| p.oldest_ms).min(),
        };
        let result = tokio::select! {
            () = shutdown.wait() => return,
            r = d.sink.send(&batch, d.incarnation, backlog) => r,
        };
        let n = batch.items.len() as u64;
        match result {
            Ok(delivered) => {
                let mut dead = 0;
                if !delivered.rejected.is_empty() {
                    let items: Vec<_> = delivered
                        .rejected
                        .iter()
                        .filter_map(|r| {
                            batch
                                .items
                                .iter()
                                .find(|i| i.seq == r.seq)
                                .map(|i| (i.clone(), r.reason.clone()))
                        })
                        .collect();
                    dead = items.len() as u64;
                    if !keep_dead(letters.as_ref(), &name, batch.priority, items).await {
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                }
                consume(&d, batch, "the sent batch; it may be sent again").await;
                backoff.reset();
                let mut s = d.state();
                if !s.connected && s.consecutive_failures > 0 {
                    tracing::info!(
                        destination = name,
                        after_failures = s.consecutive_failures,
                        "destination reachable again; draining the queue"
                    );
                }
                s.connected = true;
                s.consecutive_failures = 0;
                s.next_retry_ms = None;
                s.last_success_ms = Some(now_ms());
                s.sent_items += n - dead;
                s.sent_batches += 1;
                s.wire_bytes += delivered.wire_bytes as u64;
                s.duplicates += delivered.duplicates;
                s.dead_lettered += dead;
                drop(s);
                metrics::counter!(names.sent, "destination" => name.clone()).increment(n - dead);
                metrics::counter!(names.wire, "destination" => name.clone())
                    .increment(delivered.wire_bytes as u64);
                if dead > 0 {
                    metrics::counter!(names.dead, "destination" => name.clone()).increment(dead);
                    tracing::warn!(
                        destination = name,
                        items = dead,
                        "the receiver rejected items; kept as dead letters"
                    );
                }
            }
            Err(SendError::Permanent(reason)) => {
                let items: Vec<_> = batch
                    .items
                    .iter()
                    .map(|i| (i.clone(), reason.clone()))
                    .collect();
                if !keep_dead(letters.as_ref(), &name, batch.priority, items).await {
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
                consume(&d, batch, "the dead-lettered batch").await;
                tracing::error!(
                    destination = name,
                    items = n,
                    reason,
                    "the receiver refused a batch for good; kept as dead letters"
                );
                let mut s = d.state();
                s.permanent_failures += 1;
                s.dead_lettered += n;
                s.last_error = Some(reason);
                s.last_error_ms = Some(now_ms());
                drop(s);
                metrics::counter!(names.failures, "destination" => name.clone(), "kind" => "permanent").increment(1);
                metrics::counter!(names.dead, "destination" => name.clone()).increment(n);
            }
            Err(SendError::Transient(reason)) => {
                let delay = backoff.next_delay();
                {
                    let mut s = d.state();
                    if s.consecutive_failures == 0 {
                        tracing::warn!(
                            destination = name,
                            error = reason,
                            "cannot send; keeping the data and retrying"
                        );
                    } else {
                        tracing::debug!(
                            destination = name,
                            error = reason,
                            failures = s.consecutive_failures,
                            "still cannot send"
                        );
                    }
                    s.connected = false;
                    s.consecutive_failures += 1;
                    s.transient_failures += 1;
                    s.last_error = Some(reason);
                    s.last_error_ms = Some(now_ms());
                    s.next_retry_ms = Some(now_ms() + delay.as_millis() as u64);
                }
                metrics::counter!(names.failures, "destination" => name.clone(), "kind" => "transient").increment(1);
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Keeps `items` as dead letters of `dest`; `false` when they could not be stored (the
/// batch then stays in the queue and is tried again).
async fn keep_dead(
    letters: &dyn DeadLetterStore,
    dest: &str,
    priority: outpost_queue::Priority,
    items: Vec<(outpost_queue::Item, String)>,
) -> bool {
    match letters.put(dest, priority, items, now_ms()).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(destination = dest, error = %e, "cannot store dead letters; retrying the batch");
            false
        }
    }
}

/// Consumes `batch` from the destination's queue (off the runtime); `what` names it in the
/// log if that fails.
async fn consume(d: &Arc<Dest>, batch: outpost_queue::Batch, what: &str) {
    let acked = {
        let d = Arc::clone(d);
        tokio::task::spawn_blocking(move || d.queue().ack(&batch)).await
    };
    if let Ok(Err(e)) = acked {
        tracing::error!(destination = %d.cfg.name, error = %e, "cannot record {what}");
    }
}
