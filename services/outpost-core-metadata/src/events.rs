//! System events: every metadata change is announced on the bus, in commit order.
//!
//! Changes are queued (bounded) and published by one task, so an API call never waits for
//! the bus and a bus outage never fails a metadata change; announcements made while the bus
//! is down are published once it is back, and only a queue overflow drops one, counted and
//! logged.

use std::sync::Arc;

use outpost_bus::Link;
use outpost_contracts::system_event::SystemEvent;
use outpost_contracts::topics;
use outpost_kit::{Shutdown, Stage, Tasks, request_id};
use tokio::sync::mpsc;

const QUEUE: usize = 10_000;

struct Pending {
    topic_owner: String,
    profile: Option<String>,
    event: SystemEvent,
    correlation: Arc<str>,
}

#[derive(Clone)]
pub struct Announcer {
    tx: Option<mpsc::Sender<Pending>>,
    full_details: bool,
    dropped_metric: String,
}

impl Announcer {
    /// An announcer that publishes through `link`, in a task of the service that, when
    /// the service stops, publishes what is still queued before the link closes.
    pub fn start(
        tasks: &Tasks,
        link: Link,
        full_details: bool,
        dropped_metric: String,
        published_metric: String,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Pending>(QUEUE);
        tasks.spawn("system-events", Stage::AfterServing, move |stop| {
            publish_all(link, rx, published_metric, stop)
        });
        Self {
            tx: Some(tx),
            full_details,
            dropped_metric,
        }
    }

    /// An announcer that announces nothing (tests without a bus).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            full_details: false,
            dropped_metric: String::new(),
        }
    }

    /// Queues an announcement. `full` is the whole object; `brief` its identifying fields.
    pub fn announce(
        &self,
        kind: &str,
        action: &str,
        owner: &str,
        profile: Option<&str>,
        brief: serde_json::Value,
        full: impl FnOnce() -> serde_json::Value,
    ) {
        let Some(tx) = &self.tx else {
            return;
        };
        let details = if self.full_details { full() } else { brief };
        let event = SystemEvent::new(kind, action, crate::SERVICE, owner, details);
        let pending = Pending {
            topic_owner: owner.to_string(),
            profile: profile.map(str::to_string),
            event,
            correlation: request_id::current_or_mint(),
        };
        if tx.try_send(pending).is_err() {
            metrics::counter!(self.dropped_metric.clone()).increment(1);
            tracing::error!(
                kind,
                action,
                owner,
                "system event queue is full; announcement dropped"
            );
        }
    }
}

/// Publishes announcements in order until `stop`, then what is still queued (the stop
/// budget bounds that).
async fn publish_all(
    link: Link,
    mut rx: mpsc::Receiver<Pending>,
    published_metric: String,
    stop: Shutdown,
) {
    let bus = tokio::select! {
        bus = link.connected() => bus,
        () = stop.wait() => return,
    };
    loop {
        let p = if stop.is_triggered() {
            match rx.try_recv() {
                Ok(p) => p,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
                () = stop.wait() => continue,
            }
        };
        let topic = topics::system_event(
            bus.base_topic(),
            &p.event.source,
            &p.event.kind,
            &p.event.action,
            &p.topic_owner,
            p.profile.as_deref(),
        );
        let mut backoff = outpost_kit::backoff::Backoff::new(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(5),
        );
        loop {
            let sent =
                request_id::scope(Arc::clone(&p.correlation), bus.publish(&topic, &p.event)).await;
            match sent {
                Ok(()) => {
                    metrics::counter!(published_metric.clone()).increment(1);
                    break;
                }
                Err(e) => {
                    if backoff.attempts() == 0 {
                        tracing::warn!(topic, error = %e, "cannot announce a metadata change yet; retrying");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}
