//! Durable delivery: accepting a notification, and the loop that sends what is owed.
//!
//! [`Delivery::accept`] stores a notification together with one queued transmission per
//! channel of every unlocked subscription that receives it, in one transaction; the loop
//! ([`Delivery::run`]) then sends every transmission that is due, at most `concurrency`
//! at once, and records each attempt. A failed attempt is tried again after the
//! subscription's resend interval until its resend limit is spent (its own or the
//! service's default); then a CRITICAL notification's transmission is ESCALATED (and an
//! escalated copy goes to the `ESCALATION` subscription, once), any other one FAILED.
//!
//! Everything owed is on disk, so a restart resumes it; an attempt whose outcome was not
//! recorded before the process died is made again (at-least-once).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use outpost_kit::group::Committer;
use outpost_kit::{Shutdown, Tasks};

use crate::model::{
    self, CRITICAL, ESCALATED, ESCALATED_NOTICE, ESCALATION_SUBSCRIPTION, LOCKED, Notification,
    PROCESSED, Transmission, TransmissionRecord, status,
};
use crate::send::Senders;
use crate::store::{Attempt, Due, NotificationStore, StoreError};

outpost_kit::metric_names! {
    /// What delivery counts.
    pub struct Metrics {
        /// Attempts, by outcome (`sent`, `failed`).
        attempts = "attempts_total",
        /// Transmissions queued or waiting for a resend.
        owed = "transmissions_owed",
    }
}

/// The resend policy of subscriptions that set none (live: a change applies to the next
/// decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resend {
    pub limit: u32,
    pub interval: Duration,
}

pub struct Delivery {
    store: Arc<dyn NotificationStore>,
    senders: Senders,
    defaults: RwLock<Resend>,
    concurrency: usize,
    wake: tokio::sync::Notify,
    busy: Mutex<HashSet<String>>,
    metrics: Metrics,
    /// Attempts recorded many to a commit (each attempt's task waits for its own).
    attempts: Committer<Attempt>,
}

/// Most attempts recorded in one commit.
const ATTEMPTS_PER_COMMIT: usize = 500;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Delivery {
    /// The delivery, with its attempts' writer started as a task of `tasks`.
    pub fn new(
        store: Arc<dyn NotificationStore>,
        senders: Senders,
        defaults: Resend,
        concurrency: usize,
        metrics: Metrics,
        tasks: &Tasks,
    ) -> Self {
        let writer = Arc::clone(&store);
        let attempts = Committer::start(tasks, "attempts", ATTEMPTS_PER_COMMIT, move |batch| {
            let writer = Arc::clone(&writer);
            async move { writer.record(batch).await.map_err(|e| e.to_string()) }
        });
        Self {
            attempts,
            store,
            senders,
            defaults: RwLock::new(defaults),
            concurrency: concurrency.max(1),
            wake: tokio::sync::Notify::new(),
            busy: Mutex::new(HashSet::new()),
            metrics,
        }
    }

    pub fn defaults(&self) -> Resend {
        *self
            .defaults
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_defaults(&self, r: Resend) {
        *self
            .defaults
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = r;
    }

    /// Stores `n` (given its id, times and status) and queues a transmission for each
    /// channel of each unlocked subscription that receives it.
    pub async fn accept(&self, n: Notification) -> Result<Notification, StoreError> {
        self.accept_all(vec![n])
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::NotFound("the notification's outcome".into())))
    }

    /// [`Delivery::accept`] for a batch, in one commit: each notification's outcome, in
    /// order.
    pub async fn accept_all(
        &self,
        batch: Vec<Notification>,
    ) -> Result<Vec<Result<Notification, StoreError>>, StoreError> {
        let now = now_ms();
        let subs = self.store.all_subscriptions().await?;
        let mut stored = Vec::with_capacity(batch.len());
        let mut accepted = Vec::with_capacity(batch.len());
        for mut n in batch {
            if n.id.is_empty() {
                n.id = uuid::Uuid::new_v4().to_string();
            }
            n.created = now;
            n.modified = now;
            n.status = PROCESSED.into();
            let owed = subs
                .iter()
                .filter(|s| s.admin_state != LOCKED && s.receives(&n))
                .flat_map(|s| queued(&n, &s.name, &s.channels, now))
                .collect();
            stored.push((n.clone(), owed));
            accepted.push(n);
        }
        let outcomes = self.store.add_notifications(stored).await?;
        self.wake.notify_one();
        Ok(accepted
            .into_iter()
            .zip(outcomes)
            .map(|(n, outcome)| outcome.map(|()| n))
            .collect())
    }

    /// Sends what is due until `stop`.
    pub async fn run(self: Arc<Self>, tasks: Tasks, stop: Shutdown) -> Result<(), StoreError> {
        let permits = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
        loop {
            if stop.is_triggered() {
                return Ok(());
            }
            let busy = self.busy_now();
            let free = permits.available_permits();
            let due = if free > 0 {
                match self.store.due(now_ms(), free, busy).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the transmissions owed; trying again");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            for d in due {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return Ok(());
                };
                let id = d.transmission.id.clone();
                self.busy
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id.clone());
                let me = Arc::clone(&self);
                tasks.spawn_child(async move {
                    me.attempt(d).await;
                    me.busy
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&id);
                    drop(permit);
                    me.wake.notify_one();
                });
            }
            if let Ok(n) = self.store.owed().await {
                metrics::gauge!(self.metrics.owed).set(n as f64);
            }
            let wait = match self.store.next_due(self.busy_now()).await {
                Ok(Some(t)) if permits.available_permits() > 0 => {
                    Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0))
                }
                _ => Duration::from_secs(30),
            }
            .min(Duration::from_secs(30));
            if wait.is_zero() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                () = stop.wait() => return Ok(()),
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn busy_now(&self) -> HashSet<String> {
        self.busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// One attempt, and what follows from it, recorded.
    async fn attempt(&self, d: Due) {
        let Due {
            transmission: t,
            notification: n,
        } = d;
        let result = self.senders.send(&t.channel, &n).await;
        let now = now_ms();
        let first = t.status == status::QUEUED;
        let resend_count = if first { 0 } else { t.resend_count + 1 };
        let record = |s: &str, response: String| TransmissionRecord {
            status: s.into(),
            response,
            sent: now,
        };
        let mut a = Attempt {
            id: t.id.clone(),
            record: record(status::SENT, String::new()),
            status: status::SENT.into(),
            resend_count,
            due: None,
            escalation: None,
        };
        match result {
            Ok(response) => {
                metrics::counter!(self.metrics.attempts, "outcome" => "sent").increment(1);
                a.record.response = response;
            }
            Err(reason) => {
                metrics::counter!(self.metrics.attempts, "outcome" => "failed").increment(1);
                tracing::warn!(
                    transmission = t.id,
                    subscription = t.subscription_name,
                    channel = t.channel.kind,
                    reason,
                    "a notification could not be delivered"
                );
                a.record = record(status::FAILED, reason);
                a.status = status::FAILED.into();
                // An escalated copy is sent once.
                if n.status != ESCALATED {
                    let policy = self.policy(&t.subscription_name).await;
                    if resend_count < i64::from(policy.limit) {
                        a.status = status::RESENDING.into();
                        a.due = Some(now.saturating_add(ms(policy.interval)));
                    } else if n.severity == CRITICAL {
                        a.status = status::ESCALATED.into();
                        a.escalation = self.escalation(&n, &t, now).await;
                    }
                }
            }
        }
        if let Err(e) = self.attempts.write(a).await {
            // Not recorded: the transmission is still due and will be attempted again.
            tracing::warn!(transmission = t.id, error = %e, "cannot record a delivery attempt");
        }
    }

    /// The resend policy of `subscription` (the defaults for what it leaves unset, or
    /// when it was deleted meanwhile).
    async fn policy(&self, subscription: &str) -> Resend {
        let mut p = self.defaults();
        if let Ok(Some(s)) = self.store.subscription(subscription).await {
            if s.resend_limit > 0 {
                p.limit = u32::try_from(s.resend_limit).unwrap_or(u32::MAX);
            }
            if let Ok(i) = model::parse_duration(&s.resend_interval) {
                p.interval = i;
            }
        }
        p
    }

    /// The escalated copy of `n` for the `ESCALATION` subscription, if there is one.
    async fn escalation(
        &self,
        n: &Notification,
        t: &Transmission,
        now: i64,
    ) -> Option<(Notification, Vec<Transmission>)> {
        let sub = match self.store.subscription(ESCALATION_SUBSCRIPTION).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::warn!(
                    transmission = t.id,
                    "a critical notification could not be delivered and there is no ESCALATION subscription"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the ESCALATION subscription");
                return None;
            }
        };
        let copy = Notification {
            id: uuid::Uuid::new_v4().to_string(),
            content: format!("[{ESCALATED_NOTICE} {}] {}", t.id, n.content),
            content_type: "text/plain".into(),
            status: ESCALATED.into(),
            acknowledged: false,
            created: now,
            modified: now,
            ..n.clone()
        };
        let owed = queued(&copy, &sub.name, &sub.channels, now);
        Some((copy, owed))
    }
}

/// A queued transmission of `n` per channel.
fn queued(
    n: &Notification,
    subscription: &str,
    channels: &[model::Address],
    now: i64,
) -> Vec<Transmission> {
    channels
        .iter()
        .map(|c| Transmission {
            id: uuid::Uuid::new_v4().to_string(),
            created: now,
            channel: c.clone(),
            notification_id: n.id.clone(),
            subscription_name: subscription.to_string(),
            records: Vec::new(),
            resend_count: 0,
            status: status::QUEUED.into(),
        })
        .collect()
}
