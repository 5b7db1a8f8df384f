//! A destination as the service runs it ([`Dest`]): its durable queue, its sink and how
//! sending goes; appending to its queue; the metric names every part reports under.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use outpost_contracts::export::SendState;
use outpost_kit::Check;
use outpost_queue::{Counters, Priority, Queue, QueueError};

use crate::config::{self, Destination, topic_matches};
use crate::sink::{Sink, SinkError};

/// Milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> u64 {
    u64::try_from(outpost_contracts::now_millis()).unwrap_or(0)
}

outpost_kit::metric_names! {
    /// The service's metric names (`outpost_export_*`), by destination.
    pub struct Metrics {
        /// Items in the queue.
        items = "queue_items",
        /// Bytes the queue holds.
        bytes = "queue_bytes",
        oldest = "queue_oldest_age_seconds",
        appended = "items_queued_total",
        sent = "items_sent_total",
        /// Bytes sent, compressed.
        wire = "wire_bytes_total",
        /// Failed sends, by kind (transient, permanent).
        failures = "send_failures_total",
        /// Items dropped, by cause (overflow, ttl, too-large).
        dropped = "items_dropped_total",
        dead = "items_dead_lettered_total",
    }
}

/// Why a destination could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the queue of destination {name}")]
    Queue {
        name: String,
        #[source]
        source: QueueError,
    },
    #[error("the task opening the queue of destination {name} failed")]
    Task {
        name: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("destination {name}")]
    Sink {
        name: String,
        #[source]
        source: SinkError,
    },
}

/// One destination: its queue, its sink and how sending goes.
pub struct Dest {
    pub cfg: Destination,
    queue: Mutex<Queue>,
    /// The queue's incarnation, sent with every batch.
    pub incarnation: u64,
    /// Woken when items were appended.
    pub wake: tokio::sync::Notify,
    pub sink: Sink,
    state: Mutex<SendState>,
    /// Queue counters already turned into metrics.
    reported: Mutex<Counters>,
}

impl Dest {
    /// Opens the queue of `d` under `queue_root` (off the runtime) and makes its sink.
    pub async fn open(
        d: &Destination,
        queue_root: &Path,
        key: [u8; 32],
    ) -> Result<Self, OpenError> {
        let dir = queue_root.join(&d.name);
        let qc = queue_config(d);
        let queue = tokio::task::spawn_blocking(move || Queue::open(&dir, &key, qc))
            .await
            .map_err(|source| OpenError::Task {
                name: d.name.clone(),
                source,
            })?
            .map_err(|source| OpenError::Queue {
                name: d.name.clone(),
                source,
            })?;
        let c = queue.counters();
        if c.corrupt_records > 0 || c.truncated_bytes > 0 {
            tracing::warn!(
                destination = d.name,
                corrupt_records = c.corrupt_records,
                corrupt_bytes = c.corrupt_bytes,
                truncated_bytes = c.truncated_bytes,
                "queue opened with damage skipped"
            );
        }
        let sink = Sink::new(d).map_err(|source| OpenError::Sink {
            name: d.name.clone(),
            source,
        })?;
        tracing::info!(
            destination = d.name,
            url = sink.url(),
            items = queue.len(),
            bytes = queue.bytes(),
            "destination ready"
        );
        Ok(Self {
            incarnation: queue.incarnation(),
            queue: Mutex::new(queue),
            cfg: d.clone(),
            wake: tokio::sync::Notify::new(),
            sink,
            state: Mutex::new(SendState::default()),
            reported: Mutex::new(Counters::default()),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, SendState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `now` as the queue counters turned into metrics; returns those recorded
    /// before.
    pub fn report_counters(&self, now: Counters) -> Counters {
        let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *reported, now)
    }

    /// The priority of a message on `topic`.
    pub fn priority_of(&self, topic: &str) -> Priority {
        if self
            .cfg
            .high_priority
            .iter()
            .any(|f| topic_matches(f, topic))
        {
            Priority::High
        } else {
            Priority::Normal
        }
    }

    /// Whether this destination takes messages on `topic`.
    pub fn takes(&self, topic: &str) -> bool {
        self.cfg.sources.iter().any(|f| topic_matches(f, topic))
    }

    /// The health check: failed while sends fail.
    pub fn check(&self) -> Check {
        let s = self.state();
        if s.consecutive_failures > 0 {
            Check::failed(
                "destination",
                format!(
                    "{}: {}",
                    self.cfg.name,
                    s.last_error.clone().unwrap_or_default()
                ),
            )
        } else {
            Check::ok("destination")
        }
    }
}

fn queue_config(d: &Destination) -> outpost_queue::Config {
    outpost_queue::Config {
        max_bytes: d.max_bytes,
        segment_bytes: 0,
        max_item_bytes: 1024 * 1024,
        ttl: (d.ttl_s > 0).then(|| Duration::from_secs(d.ttl_s)),
        overflow: match d.overflow {
            config::Overflow::DropOldest => outpost_queue::Overflow::DropOldest,
            config::Overflow::RefuseNew => outpost_queue::Overflow::RefuseNew,
        },
        sync: match d.sync {
            config::Sync::Batch => outpost_queue::SyncPolicy::Batch,
            config::Sync::None => outpost_queue::SyncPolicy::None,
        },
    }
}

/// Appends items to one destination's queue, off the runtime, and wakes its sender;
/// returns how many items were dropped to make room.
pub async fn append(
    d: &Arc<Dest>,
    priority: Priority,
    items: Vec<Vec<u8>>,
) -> Result<u64, QueueError> {
    let dest = Arc::clone(d);
    let r = tokio::task::spawn_blocking(move || dest.queue().append(priority, &items, now_ms()))
        .await
        .map_err(|e| QueueError::Io {
            dir: Default::default(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let appended = r?;
    d.wake.notify_one();
    Ok(appended.dropped)
}

/// Warns about each queue under `queue_root` whose destination is no longer configured.
///
/// A destination taken out of the configuration keeps its queue: nothing is dropped because
/// a configuration changed. Say so, with what it holds.
pub fn warn_orphaned_queues(queue_root: &Path, destinations: &[Destination]) {
    let Ok(entries) = std::fs::read_dir(queue_root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() && !destinations.iter().any(|d| d.name == name) {
            let bytes = dir_bytes(&e.path());
            tracing::warn!(
                destination = name,
                bytes,
                "a queue of a destination no longer configured is kept; configure the destination again to send it, or remove the directory"
            );
        }
    }
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_bytes(&p)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
