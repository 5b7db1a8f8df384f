//! A received message and its acknowledgement.
//!
//! For a durable consumer, a message carries a pending acknowledgement (the MQTT PUBACK the
//! broker waits for, or the JetStream acknowledgement of a NATS bus, see [`crate::nats`]). It is resolved in one of two ways:
//! - [`Delivery::ack`] / [`Ack::ack`]: the message is handled (committed, forwarded, or
//!   refused for good); the broker forgets it.
//! - [`Delivery::abandon`] / [`Ack::abandon`], and dropping either: the message is left
//!   with the broker, which delivers it again on the consumer's next session (after a
//!   restart or a reconnect). Nothing is ever answered with a failure acknowledgement,
//!   which would make the broker discard the message.
//!
//! PUBACKs leave the client in arrival order, so an abandoned message also holds back the
//! acknowledgements of every later message on that connection until it reconnects:
//! abandoning is for a consumer that stops (or cannot go on), not for skipping one message
//! while it runs. A message that can never be handled (malformed, invalid) is acknowledged,
//! and counted by the consumer.

use async_nats::jetstream::message::Acker;
use bytes::Bytes;
use mqtt5::AckToken;

use crate::journal::{Confirm, Key};

/// One received message.
pub struct Delivery {
    pub topic: String,
    pub payload: Bytes,
    /// The broker journal's id of this message ([`crate::journal::MESSAGE_ID`]), when the
    /// embedded broker journaled it.
    pub message_id: Option<String>,
    token: Option<AckToken>,
    /// Where to confirm the message to the broker's journal once handled.
    confirm: Option<(Confirm, Key)>,
    /// JetStream's acknowledgement of the message, on a NATS bus. Dropped unresolved, the
    /// message is delivered again after `bus.ack_wait_s`. Boxed: it is large, and most
    /// deliveries (MQTT) have none.
    acker: Option<Box<Acker>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("bytes", &self.payload.len())
            .field(
                "pending_ack",
                &(self.token.is_some() || self.acker.is_some()),
            )
            .finish()
    }
}

impl Delivery {
    pub(crate) fn new(topic: String, payload: Bytes, token: Option<AckToken>) -> Self {
        Self {
            topic,
            payload,
            message_id: None,
            token,
            confirm: None,
            acker: None,
        }
    }

    /// The same, acknowledged to JetStream by `acker`.
    pub(crate) fn acked_by(mut self, acker: Acker) -> Self {
        self.acker = Some(Box::new(acker));
        self
    }

    /// The same, with the message id `publish` carries.
    pub(crate) fn identified(mut self, publish: &mqtt5::packet::publish::PublishPacket) -> Self {
        self.message_id = publish
            .properties
            .get_user_property_value(crate::journal::MESSAGE_ID)
            .map(str::to_string);
        self
    }

    /// The same, confirmed to the broker's journal when acknowledged.
    pub(crate) fn confirmed(mut self, confirm: Option<&Confirm>) -> Self {
        self.confirm =
            confirm.map(|c| (c.clone(), crate::journal::key(&self.topic, &self.payload)));
        self
    }

    /// Acknowledges the message: the broker will not deliver it again.
    pub fn ack(mut self) {
        if let Some(t) = self.token.take() {
            t.ack();
        }
        if let Some((c, k)) = self.confirm.take() {
            c.handled(k);
        }
        jetstream_ack(self.acker.take());
    }

    /// Leaves the message with the broker, to be delivered again on the next session.
    pub fn abandon(self) {
        drop(self);
    }

    /// Splits off the acknowledgement, to resolve after the payload has been handled.
    pub fn into_parts(mut self) -> (String, Bytes, Ack) {
        let token = self.token.take();
        (
            std::mem::take(&mut self.topic),
            std::mem::take(&mut self.payload),
            Ack(token, self.confirm.take(), self.acker.take()),
        )
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        leave_with_broker(self.token.take());
    }
}

/// A pending acknowledgement.
pub struct Ack(Option<AckToken>, Option<(Confirm, Key)>, Option<Box<Acker>>);

impl Ack {
    /// Acknowledges the message: the broker will not deliver it again.
    pub fn ack(mut self) {
        if let Some(t) = self.0.take() {
            t.ack();
        }
        if let Some((c, k)) = self.1.take() {
            c.handled(k);
        }
        jetstream_ack(self.2.take());
    }

    /// Leaves the message with the broker, to be delivered again on the next session.
    pub fn abandon(self) {
        drop(self);
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        leave_with_broker(self.0.take());
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

/// Sends JetStream's acknowledgement without waiting for it: one that is lost makes the
/// message come again after `bus.ack_wait_s`, and consumers drop duplicates by event id.
fn jetstream_ack(acker: Option<Box<Acker>>) {
    if let Some(a) = acker {
        tokio::spawn(async move {
            if let Err(e) = a.ack().await {
                tracing::debug!(error = %e, "JetStream acknowledgement not sent");
            }
        });
    }
}

/// The one place an acknowledgement is left unanswered. The MQTT client answers a token
/// dropped unresolved with a failure acknowledgement, and a broker that receives one
/// discards the message (MQTT 5, 4.3.3), which would lose data the consumer never handled.
/// Forgetting the token instead leaves the message in flight: the broker keeps it and
/// delivers it again when the session resumes. What is forgotten is a sender handle (a
/// few bytes, once per abandoned message); no memory safety is involved.
fn leave_with_broker(token: Option<AckToken>) {
    if let Some(t) = token {
        std::mem::forget(t);
    }
}
