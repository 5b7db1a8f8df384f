//! The bus side: consumes the messages every destination takes (one durable session),
//! appends each to the queues that take it, and acknowledges a message to the broker only
//! once every such queue has it on disk.

use std::sync::Arc;
use std::time::Duration;

use outpost_bus::{Consumer, Options};
use outpost_contracts::export::{Alert, ExportItem};
use outpost_contracts::topics;
use outpost_kit::{Context, Shutdown};
use outpost_queue::{Priority, QueueError};

use crate::dest::{Dest, Metrics, append};

/// The bus side: appends each batch of messages to the queues that take them, then
/// acknowledges them.
///
/// `opts` are the durable session's; at most `max_append_batch` messages are appended (and
/// synced) together.
pub async fn run(
    ctx: Context,
    dests: Vec<Arc<Dest>>,
    names: Metrics,
    opts: Options,
    max_append_batch: usize,
    stop: Shutdown,
) {
    let mut filters: Vec<String> = dests
        .iter()
        .flat_map(|d| d.cfg.sources.iter().cloned())
        .collect();
    filters.sort();
    filters.dedup();
    let Some(mut consumer) = Consumer::start(&ctx, opts, &filters, &stop).await else {
        return;
    };
    let bus = consumer.bus().clone();
    let alerts_prefix = topics::alerts_prefix(&ctx.common.bus.base_topic);
    while let Some(batch) = consumer.batch(max_append_batch, &stop).await {
        // Per destination and priority, the items of this batch in arrival order.
        let mut groups: Vec<(usize, Priority, Vec<Vec<u8>>)> = Vec::new();
        for d in &batch {
            let item = if d.topic.starts_with(&alerts_prefix) {
                bus.decode::<Alert>(d)
                    .map(|env| ExportItem::Alert { alert: env.payload })
            } else {
                bus.decode_event(d).map(|env| ExportItem::Event {
                    event: env.payload.event,
                })
            };
            let Some(item) = item else { continue };
            let Ok(bytes) = serde_json::to_vec(&item) else {
                continue;
            };
            for (i, dest) in dests.iter().enumerate() {
                if !dest.takes(&d.topic) {
                    continue;
                }
                let p = dest.priority_of(&d.topic);
                match groups.iter_mut().find(|(gi, gp, _)| *gi == i && *gp == p) {
                    Some((_, _, items)) => items.push(bytes.clone()),
                    None => groups.push((i, p, vec![bytes.clone()])),
                }
            }
        }
        for (i, p, items) in groups {
            if !append_until_done(&dests[i], p, items, names, &stop).await {
                // Not acknowledged: the broker delivers these again after the restart.
                drop(batch);
                consumer.close().await;
                return;
            }
        }
        for d in batch {
            d.ack();
        }
    }
    consumer.close().await;
}

/// Appends, retrying while the queue is full (refuse-new) or the disk fails; `false` if
/// shutdown came first. Items that can never fit are counted and given up.
async fn append_until_done(
    d: &Arc<Dest>,
    p: Priority,
    items: Vec<Vec<u8>>,
    names: Metrics,
    shutdown: &Shutdown,
) -> bool {
    let mut backoff =
        outpost_kit::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let n = items.len() as u64;
    loop {
        match append(d, p, items.clone()).await {
            Ok(_) => {
                metrics::counter!(names.appended, "destination" => d.cfg.name.clone()).increment(n);
                return true;
            }
            Err(QueueError::TooLarge { what, size, limit }) => {
                d.state().too_large += n;
                metrics::counter!(names.dropped, "destination" => d.cfg.name.clone(), "cause" => "too-large").increment(n);
                tracing::error!(
                    destination = d.cfg.name,
                    what,
                    size,
                    limit,
                    "items can never fit in the queue; dropped"
                );
                return true;
            }
            Err(e) => {
                if backoff.attempts() == 0 {
                    tracing::warn!(destination = d.cfg.name, error = %e, "cannot queue; holding the messages and retrying");
                }
                tokio::select! {
                    () = shutdown.wait() => return false,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}
