//! Confirmations to the embedded broker's journal.
//!
//! The embedded broker acknowledges a QoS 1/2 message on a topic that a durable consumer
//! of the node consumes only once it has written the message to its journal (see
//! `outpost-broker`'s `journal` module). It keeps the message there until every such
//! consumer has confirmed it handled it: a consumer tells it which filters it consumes
//! ([`topics::journal_consumer`]) and, after acknowledging messages, which ones
//! ([`topics::journal_ack`]), by their [`key`]. A confirmation that is lost (the
//! connection dropped) costs a redelivery, never a message: the broker delivers what was
//! not confirmed again, and consumers drop duplicates.
//!
//! Only the node's own broker understands these messages, so a consumer sends them only
//! when `bus.journal` says the broker is the embedded one.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use outpost_contracts::topics;
use tokio::sync::{mpsc, oneshot};

use crate::Bus;

/// Bytes of a message's key.
pub const KEY_LEN: usize = 16;

/// The MQTT user property with which the embedded broker delivers a journaled message:
/// its message id, the same on every delivery of that message (redeliveries after a
/// crash included) and different for two messages with the same content. A consumer that
/// derives new data from a message (device-mqtt's events from telemetry) derives its
/// identity from this id, so a redelivery yields the same event, which core-data stores
/// once.
pub const MESSAGE_ID: &str = "outpost-message-id";

/// A message id as the embedded broker makes them: `run` (its start, ns) and `n` (a
/// counter) make it unique across the broker's runs; `received_ns` says when the broker
/// first received the message (ns since the Unix epoch), see [`received_at`].
pub fn message_id(run: u128, n: u64, received_ns: i64) -> String {
    format!("{run:x}-{n:x}-{received_ns:x}")
}

/// When the broker first received the message `id` names (ns since the Unix epoch), for
/// ids made by [`message_id`]; the same on every redelivery. A consumer whose message
/// carries no time of its own dates what it derives from it so: the same message then
/// always yields the same event (id and origin), which core-data recognises however late
/// the redelivery comes.
pub fn received_at(id: &str) -> Option<i64> {
    let mut parts = id.split('-');
    let (_, _, t) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || t.is_empty() || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    i64::from_str_radix(t, 16).ok().filter(|t| *t > 0)
}

/// A message's identity in the journal: the first 16 bytes of SHA-256 over its topic, a
/// zero byte and its payload, computed alike by the broker and by consumers.
pub type Key = [u8; KEY_LEN];

/// The key of a message of `topic` carrying `payload`.
pub fn key(topic: &str, payload: &[u8]) -> Key {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(topic.as_bytes());
    ctx.update(&[0]);
    ctx.update(payload);
    let digest = ctx.finish();
    let mut k = [0u8; KEY_LEN];
    k.copy_from_slice(&digest.as_ref()[..KEY_LEN]);
    k
}

/// Confirmations are sent in messages of at most this many keys.
const MAX_KEYS: usize = 4096;

enum Msg {
    Key(Key),
    /// Answered once every key sent before it was published.
    Flush(oneshot::Sender<()>),
}

/// Where a consumer's deliveries report that they were handled; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Confirm {
    tx: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Key(_) => "Key",
            Msg::Flush(_) => "Flush",
        })
    }
}

impl Confirm {
    /// Starts sending the confirmations of `bus`'s consumer. The sending task ends when the
    /// consumer and every delivery it handed out are gone (the last sender dropped).
    ///
    /// It also registers `filters` again whenever the connection is re-established, so a
    /// broker that lost the registration (or forgot a consumer that was away for long)
    /// journals for it again.
    pub(crate) fn start(bus: Bus, filters: Arc<Mutex<Vec<String>>>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send(bus, rx, filters));
        Self { tx }
    }

    pub(crate) fn handled(&self, key: Key) {
        // The task outlives every sender, so this fails only while the runtime shuts down.
        let _ = self.tx.send(Msg::Key(key));
    }

    /// Waits (at most `within`) until every confirmation made so far was published: a
    /// consumer that stops calls it before closing its connection.
    pub(crate) async fn flush(&self, within: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(within, rx).await;
        }
    }
}

async fn send(bus: Bus, mut rx: mpsc::UnboundedReceiver<Msg>, filters: Arc<Mutex<Vec<String>>>) {
    let topic = topics::journal_ack(bus.base_topic());
    let mut msgs = Vec::with_capacity(MAX_KEYS);
    let mut flushes = Vec::new();
    let mut connections = bus.connections();
    connections.mark_unchanged();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut msgs, MAX_KEYS) => if n == 0 {
                return;
            },
            changed = connections.changed() => {
                if changed.is_ok() {
                    let f = filters.lock().unwrap_or_else(PoisonError::into_inner).clone();
                    if let Err(e) = register(&bus, &f).await {
                        tracing::debug!(error = %e, "cannot register with the broker's journal again");
                    }
                }
                continue;
            }
        }
        let mut payload = Vec::with_capacity(msgs.len() * KEY_LEN);
        for m in msgs.drain(..) {
            match m {
                Msg::Key(k) => payload.extend_from_slice(&k),
                Msg::Flush(done) => flushes.push(done),
            }
        }
        if !payload.is_empty()
            && let Err(e) = bus.publish_raw(&topic, payload).await
        {
            // The broker delivers what was not confirmed again; consumers drop duplicates.
            tracing::debug!(error = %e, "cannot confirm handled messages to the broker");
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Tells the broker which filters the consumer on `bus` consumes.
pub(crate) async fn register(bus: &Bus, filters: &[String]) -> Result<(), crate::BusError> {
    let body = serde_json::to_vec(filters).map_err(|e| crate::BusError::Publish {
        topic: topics::journal_consumer(bus.base_topic()),
        reason: e.to_string(),
    })?;
    bus.publish_raw(&topics::journal_consumer(bus.base_topic()), body)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_topic_and_payload_and_are_stable() {
        let a = key("edgex/events/a", b"x");
        assert_eq!(a, key("edgex/events/a", b"x"));
        assert_ne!(a, key("edgex/events/b", b"x"));
        assert_ne!(a, key("edgex/events/a", b"y"));
        // The separator keeps topic and payload apart.
        assert_ne!(key("ab", b"c"), key("a", b"bc"));
        assert_eq!(
            hex(&key("t", b"p")),
            hex(&ring::digest::digest(&ring::digest::SHA256, b"t\0p").as_ref()[..KEY_LEN])
        );
    }

    #[test]
    fn a_message_id_says_when_the_broker_received_the_message() {
        let id = message_id(0x1234_5678_9abc, 42, 1_764_950_000_123_456_789);
        assert_eq!(received_at(&id), Some(1_764_950_000_123_456_789));
        // Ids from before the time was part of them, and anything else, say nothing.
        for other in [
            "188f-2a", "", "a-b-", "a-b-+1f", "a-b-zz", "a-b-1-2", "a-b-0",
        ] {
            assert_eq!(received_at(other), None, "{other}");
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
