//! Durable consumption: a persistent MQTT session whose messages are acknowledged only
//! after the consumer handled them.
//!
//! ```text
//! broker ──QoS 1──▶ Consumer::recv / batch ──▶ handle (commit, forward) ──▶ Delivery::ack
//!                                                   │ cannot, and stopping
//!                                                   ▼
//!                                        Delivery::abandon / drop: redelivered next session
//! ```
//!
//! Every durable consumer of the node (core-data, rules, export, device-mqtt) is one of
//! these, so the guarantees are written and tested once (`tests/guarantees.rs`):
//! - nothing is acknowledged that the consumer did not acknowledge: a crash, a stop or an
//!   error leaves unacknowledged messages with the broker, which delivers them again;
//! - the delivery callback is registered before the session resumes, so what the broker
//!   held while the consumer was away is delivered, not lost;
//! - the subscription is retried until it succeeds (or the consumer stops);
//! - messages of one topic arrive in the order they were published.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqtt5::{QoS, SubscribeOptions};
use outpost_kit::Shutdown;
use outpost_kit::backoff::Backoff;
use outpost_kit::config::BusConfig;
use tokio::sync::mpsc;

use crate::journal::{self, Confirm};
use crate::{Bus, BusError, Delivery, Options, build_client, connect_loop};

/// What [`Consumer::recv_within`] found.
#[derive(Debug)]
pub enum Received {
    Message(Delivery),
    /// Nothing arrived in the time given.
    Quiet,
    /// The connection's stream ended.
    Closed,
}

/// A durable consumer: a persistent session with deferred acknowledgement.
pub struct Consumer {
    bus: Bus,
    tx: mpsc::UnboundedSender<Delivery>,
    rx: mpsc::UnboundedReceiver<Delivery>,
    journal: Option<Journal>,
}

/// What a consumer of the embedded broker keeps for its journal.
#[derive(Clone, Debug)]
struct Journal {
    confirm: Confirm,
    /// The filters it consumes, told to the broker whenever they change.
    filters: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("bus", &self.bus).finish()
    }
}

impl Consumer {
    /// Connects the node's service `service` to the bus of `ctx` and subscribes `filters`
    /// on the persistent session `opts` names, retrying until the broker answers or `stop`
    /// fires.
    pub async fn of_service(
        ctx: &outpost_kit::Context,
        opts: Options,
        filters: &[String],
        stop: &Shutdown,
    ) -> Result<Self, BusError> {
        Self::connect(
            &ctx.common.bus,
            &ctx.data_dir,
            &ctx.name,
            opts,
            filters,
            stop,
        )
        .await
    }

    /// [`Consumer::of_service`] for a task of the service: `None` (the failure logged,
    /// unless the service is stopping) when it cannot subscribe.
    pub async fn start(
        ctx: &outpost_kit::Context,
        opts: Options,
        filters: &[String],
        stop: &Shutdown,
    ) -> Option<Self> {
        match Self::of_service(ctx, opts, filters, stop).await {
            Ok(c) => {
                tracing::info!(?filters, "consuming from the bus");
                Some(c)
            }
            Err(e) => {
                if !stop.is_triggered() {
                    tracing::error!(?filters, error = %e, "cannot subscribe to the bus");
                }
                None
            }
        }
    }

    /// Like [`Consumer::of_service`] on any broker (device-mqtt's device broker).
    ///
    /// `service` names the metrics (`outpost_<service>_bus_...`).
    pub async fn connect(
        cfg: &BusConfig,
        data_dir: &Path,
        service: &str,
        opts: Options,
        filters: &[String],
        stop: &Shutdown,
    ) -> Result<Self, BusError> {
        if !opts.deferred_ack {
            return Err(BusError::NotDurable {
                filters: filters.join(", "),
            });
        }
        if crate::nats::is_nats(&cfg.url) {
            // JetStream consumers, one per filter, on one connection.
            let bus = Bus::connect(cfg, data_dir, service, opts, stop).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            for filter in filters {
                bus.subscribe_deferred(filter, tx.clone(), None).await?;
            }
            return Ok(Self {
                bus,
                tx,
                rx,
                journal: None,
            });
        }
        let client = build_client(cfg, data_dir, &opts)?;
        let bus = Bus::wrap(client, cfg, service);
        bus.watch_connection().await;
        let (tx, rx) = mpsc::unbounded_channel();
        let journal = cfg.journal.then(|| {
            let filters = Arc::new(Mutex::new(filters.to_vec()));
            Journal {
                confirm: Confirm::start(bus.clone(), Arc::clone(&filters)),
                filters,
            }
        });
        // Registered before the session resumes: what the broker held for this consumer
        // is delivered as soon as the connection opens.
        let callback = bus.ack_callback(tx.clone(), journal.as_ref().map(|j| j.confirm.clone()));
        for filter in filters {
            bus.client
                .register_ack_callback(filter, callback.clone())
                .await
                .map_err(|source| BusError::Subscribe {
                    filter: filter.clone(),
                    source,
                })?;
        }
        connect_loop(&bus.client, cfg, data_dir, &opts, stop).await?;
        let sub = SubscribeOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        // Without the subscription nothing new arrives, so keep trying; the session's
        // queued messages reach the callback meanwhile and wait in `rx`.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut pending: Vec<&String> = filters.iter().collect();
        while let Some(filter) = pending.last() {
            match bus
                .client
                .subscribe_with_ack(filter.as_str(), sub.clone(), callback.clone())
                .await
            {
                Ok(_) => {
                    pending.pop();
                }
                Err(e) => {
                    if backoff.attempts() == 0 {
                        tracing::warn!(filter = %filter, error = %e, "cannot subscribe yet; retrying");
                    }
                    tokio::select! {
                        () = stop.wait() => {
                            // What arrived meanwhile stays with the broker.
                            bus.disconnect().await;
                            return Err(BusError::ShutDown);
                        }
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
        if journal.is_some() {
            // From here on the broker journals what these filters match before it
            // acknowledges it to publishers.
            if let Err(e) = journal::register(&bus, filters).await {
                // Dropped, the client would go on reconnecting under this session's ID
                // and take the session from the caller's next try.
                bus.disconnect().await;
                return Err(e);
            }
        }
        Ok(Self {
            bus,
            tx,
            rx,
            journal,
        })
    }

    /// The connection, for decoding and for publishing what handling a message produces.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// A handle that adds and removes subscriptions on this session while the consumer
    /// receives.
    pub fn subscriber(&self) -> Subscriber {
        Subscriber {
            bus: self.bus.clone(),
            tx: self.tx.clone(),
            journal: self.journal.clone(),
        }
    }

    /// The next message, or `None` once `stop` fires or the stream ends.
    pub async fn recv(&mut self, stop: &Shutdown) -> Option<Delivery> {
        tokio::select! {
            d = self.rx.recv() => d,
            () = stop.wait() => None,
        }
    }

    /// A message already received, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.rx.try_recv().ok()
    }

    /// Waits for the next message, then takes those already received, up to `max` in all;
    /// `None` once `stop` fires or the stream ends.
    pub async fn batch(&mut self, max: usize, stop: &Shutdown) -> Option<Vec<Delivery>> {
        let first = self.recv(stop).await?;
        let mut batch = Vec::with_capacity(max.clamp(1, 1024));
        batch.push(first);
        while batch.len() < max {
            match self.try_recv() {
                Some(d) => batch.push(d),
                None => break,
            }
        }
        Some(batch)
    }

    /// The next message if one arrives within `wait`: how a stopping consumer finds out
    /// that the broker has nothing more for it.
    pub async fn recv_within(&mut self, wait: Duration) -> Received {
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Some(d)) => Received::Message(d),
            Ok(None) => Received::Closed,
            Err(_) => Received::Quiet,
        }
    }

    /// Closes the session's connection cleanly (the broker keeps the session). Messages
    /// received and not acknowledged are left with the broker, which delivers them again
    /// on the next session.
    pub async fn close(self) {
        if let Some(j) = &self.journal {
            // Confirmations that do not reach the broker cost redeliveries.
            j.confirm.flush(Duration::from_secs(2)).await;
        }
        self.bus.disconnect().await;
    }

    /// The connection and the stream, for a consumer that spreads messages over workers.
    pub fn into_parts(self) -> (Bus, mpsc::UnboundedReceiver<Delivery>) {
        (self.bus, self.rx)
    }
}

/// Adds and removes subscriptions on a consumer's session; what they receive arrives on
/// the consumer's stream with deferred acknowledgement.
#[derive(Clone, Debug)]
pub struct Subscriber {
    bus: Bus,
    tx: mpsc::UnboundedSender<Delivery>,
    journal: Option<Journal>,
}

impl Subscriber {
    pub async fn subscribe(&self, filter: &str) -> Result<(), BusError> {
        let confirm = self.journal.as_ref().map(|j| j.confirm.clone());
        self.bus
            .subscribe_deferred(filter, self.tx.clone(), confirm)
            .await?;
        self.filters_changed(|f| {
            if !f.iter().any(|x| x == filter) {
                f.push(filter.to_string());
            }
        })
        .await
    }

    pub async fn unsubscribe(&self, filter: &str) -> Result<(), BusError> {
        self.bus.unsubscribe(filter).await?;
        self.filters_changed(|f| f.retain(|x| x != filter)).await
    }

    async fn filters_changed(&self, change: impl FnOnce(&mut Vec<String>)) -> Result<(), BusError> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        let filters = {
            let mut f = j
                .filters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            change(&mut f);
            f.clone()
        };
        journal::register(&self.bus, &filters).await
    }
}
