//! System events: every metadata change is announced on the bus, in commit order.
//!
//! Changes are queued (bounded) and published by one task, so an API call never waits for
//! the bus and a bus outage never fails a metadata change; announcements made while the bus
//! is down are published once it is back, and only a queue overflow drops one, counted and
//! logged.

use std::sync::Arc;

use outpost_bus::Bus;
use outpost_contracts::system_event::SystemEvent;
use outpost_contracts::topics;
use outpost_kit::request_id;
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
    /// An announcer that publishes through the bus returned by `connect`.
    pub fn spawn<F>(
        connect: F,
        full_details: bool,
        dropped_metric: String,
        published_metric: String,
    ) -> Self
    where
        F: std::future::Future<Output = Option<Bus>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Pending>(QUEUE);
        tokio::spawn(async move {
            let Some(bus) = connect.await else {
                return;
            };
            while let Some(p) = rx.recv().await {
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
                    let sent = request_id::scope(
                        Arc::clone(&p.correlation),
                        bus.publish(&topic, &p.event),
                    )
                    .await;
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
