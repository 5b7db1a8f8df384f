//! The state of a CoAP endpoint that outlives one datagram (no I/O): which messages were
//! seen and what they were answered (RFC 7252 §4.5 deduplication), and payloads arriving
//! block by block (RFC 7959 Block1). Both are bounded in entries and in time, so no number
//! of peers can grow them without limit.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::ResponseType;
use coap_lite::block_handler::BlockValue;

use crate::route::Refusal;

/// A message: its sender and Message ID.
pub type Key = (SocketAddr, u16);

enum Seen {
    /// Being handled: a copy is dropped (the answer comes when the first is done).
    InFlight,
    /// Answered: a copy gets the same answer, and nothing is done again.
    Done(Arc<[u8]>),
}

/// What to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    New,
    InFlight,
    Answer(Arc<[u8]>),
}

/// Messages seen within the exchange lifetime (RFC 7252's EXCHANGE_LIFETIME, 247 s).
pub struct Exchanges {
    lifetime: Duration,
    capacity: usize,
    seen: HashMap<Key, Seen>,
    order: VecDeque<(Key, Instant)>,
}

impl Exchanges {
    pub fn new(lifetime: Duration, capacity: usize) -> Self {
        Self {
            lifetime,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records a message; a copy of one seen before is told apart.
    pub fn admit(&mut self, key: Key, now: Instant) -> Admit {
        self.expire(now);
        match self.seen.get(&key) {
            Some(Seen::InFlight) => Admit::InFlight,
            Some(Seen::Done(answer)) => Admit::Answer(Arc::clone(answer)),
            None => {
                self.seen.insert(key, Seen::InFlight);
                self.order.push_back((key, now));
                Admit::New
            }
        }
    }

    /// The answer a message got.
    pub fn done(&mut self, key: Key, answer: Arc<[u8]>) {
        if let Some(s) = self.seen.get_mut(&key) {
            *s = Seen::Done(answer);
        }
    }

    /// A message whose handling ended without an answer worth repeating: a copy is
    /// handled as new.
    pub fn forget(&mut self, key: Key) {
        self.seen.remove(&key);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Drops answers older than the lifetime, and the oldest answers beyond the capacity.
    /// A message still being handled is never dropped (they are bounded by the service's
    /// `max_in_flight`): it goes to the back.
    fn expire(&mut self, now: Instant) {
        for _ in 0..self.order.len() {
            let Some(&(key, at)) = self.order.front() else {
                break;
            };
            let old = now.saturating_duration_since(at) >= self.lifetime;
            if !old && self.seen.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            match self.seen.get(&key) {
                Some(Seen::InFlight) => self.order.push_back((key, now)),
                Some(Seen::Done(_)) => {
                    self.seen.remove(&key);
                }
                // Forgotten already.
                None => {}
            }
        }
    }
}

/// A payload in blocks: the sender and the request's path.
pub type Transfer = (SocketAddr, String);

/// What a block does to its payload.
#[derive(Debug, PartialEq)]
pub enum Block {
    /// More to come: answer 2.31 Continue with this Block1.
    Continue(BlockValue),
    /// The whole payload, and the Block1 for the final answer.
    Complete(Vec<u8>, BlockValue),
    Refused(Refusal),
}

struct Assembly {
    body: Vec<u8>,
    at: Instant,
}

/// Payloads being received block by block.
pub struct Assemblies {
    max_body: usize,
    capacity: usize,
    lifetime: Duration,
    open: HashMap<Transfer, Assembly>,
}

impl Assemblies {
    pub fn new(max_body: usize, capacity: usize, lifetime: Duration) -> Self {
        Self {
            max_body,
            capacity,
            lifetime,
            open: HashMap::new(),
        }
    }

    /// Takes block `b` of a transfer. Blocks come in order (a copy of one is answered by
    /// [`Exchanges`] before it gets here); each but the last is full.
    pub fn take(&mut self, t: Transfer, b: &BlockValue, payload: &[u8], now: Instant) -> Block {
        let refuse = |code, why: &str| Block::Refused(Refusal::new(code, why));
        if b.size_exponent > 6 {
            return refuse(
                ResponseType::BadRequest,
                "block size exponent 7 is reserved",
            );
        }
        let size = b.size();
        if b.more && payload.len() != size {
            return refuse(
                ResponseType::BadRequest,
                "a block before the last is as large as its size says",
            );
        }
        if payload.len() > size {
            return refuse(ResponseType::BadRequest, "a block larger than its size");
        }
        let lifetime = self.lifetime;
        self.open
            .retain(|_, a| now.saturating_duration_since(a.at) < lifetime);
        let offset = usize::from(b.num) * size;
        if b.num == 0 {
            if !self.open.contains_key(&t) && self.open.len() >= self.capacity {
                return refuse(
                    ResponseType::ServiceUnavailable,
                    "too many block-wise transfers at once",
                );
            }
            self.open.insert(
                t.clone(),
                Assembly {
                    body: Vec::new(),
                    at: now,
                },
            );
        }
        let Some(a) = self.open.get_mut(&t).filter(|a| a.body.len() == offset) else {
            self.open.remove(&t);
            return refuse(
                ResponseType::RequestEntityIncomplete,
                "blocks are sent in order from block 0",
            );
        };
        if offset + payload.len() > self.max_body {
            self.open.remove(&t);
            return refuse(
                ResponseType::RequestEntityTooLarge,
                "the payload is too large",
            );
        }
        a.body.extend_from_slice(payload);
        a.at = now;
        if b.more {
            return Block::Continue(b.clone());
        }
        let body = self.open.remove(&t).map(|a| a.body).unwrap_or_default();
        Block::Complete(body, b.clone())
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_copy_waits_for_the_first_then_gets_its_answer() {
        let now = Instant::now();
        let mut x = Exchanges::new(Duration::from_secs(247), 100);
        assert_eq!(x.admit((peer(1), 7), now), Admit::New);
        assert_eq!(x.admit((peer(1), 7), now), Admit::InFlight);
        // Another peer's message 7 is another message.
        assert_eq!(x.admit((peer(2), 7), now), Admit::New);
        let answer: Arc<[u8]> = Arc::from(&b"ack"[..]);
        x.done((peer(1), 7), Arc::clone(&answer));
        assert_eq!(x.admit((peer(1), 7), now), Admit::Answer(answer));
        x.forget((peer(2), 7));
        assert_eq!(x.admit((peer(2), 7), now), Admit::New);
    }

    #[test]
    fn answers_expire_and_are_bounded_but_work_in_hand_stays() {
        let t0 = Instant::now();
        let mut x = Exchanges::new(Duration::from_secs(10), 3);
        x.admit((peer(1), 1), t0);
        x.done((peer(1), 1), Arc::from(&b"a"[..]));
        x.admit((peer(1), 2), t0); // still in flight
        x.admit((peer(1), 3), t0);
        x.done((peer(1), 3), Arc::from(&b"c"[..]));
        // Full: the oldest answer goes, the one in flight stays.
        x.admit((peer(1), 4), t0);
        assert_eq!(x.len(), 3);
        assert_eq!(x.admit((peer(1), 2), t0), Admit::InFlight);
        assert_eq!(x.admit((peer(1), 1), t0), Admit::New);
        // After the lifetime only what is in flight is left.
        let later = t0 + Duration::from_secs(11);
        x.admit((peer(9), 9), later);
        assert!(matches!(x.admit((peer(1), 3), later), Admit::New));
        assert_eq!(x.admit((peer(1), 2), later), Admit::InFlight);
    }

    fn block(num: usize, more: bool, size: usize) -> BlockValue {
        BlockValue::new(num, more, size).expect("block")
    }

    #[test]
    fn blocks_make_one_payload_in_order_and_within_the_limit() {
        let now = Instant::now();
        let mut a = Assemblies::new(100, 2, Duration::from_secs(60));
        let t = (peer(1), "d/r".to_string());
        assert_eq!(
            a.take(t.clone(), &block(0, true, 32), &[1; 32], now),
            Block::Continue(block(0, true, 32))
        );
        assert_eq!(
            a.take(t.clone(), &block(1, true, 32), &[2; 32], now),
            Block::Continue(block(1, true, 32))
        );
        let Block::Complete(body, last) = a.take(t.clone(), &block(2, false, 32), &[3; 5], now)
        else {
            panic!("complete");
        };
        assert_eq!(body.len(), 69);
        assert_eq!((&body[..32], &body[64..]), (&[1u8; 32][..], &[3u8; 5][..]));
        assert_eq!(last, block(2, false, 32));
        assert!(a.is_empty());

        // Out of order, a short middle block, too large.
        let code = |b: Block| match b {
            Block::Refused(r) => r.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(a.take(t.clone(), &block(1, true, 32), &[0; 32], now)),
            ResponseType::RequestEntityIncomplete
        );
        assert_eq!(
            code(a.take(t.clone(), &block(0, true, 32), &[0; 31], now)),
            ResponseType::BadRequest
        );
        a.take(t.clone(), &block(0, true, 64), &[0; 64], now);
        assert_eq!(
            code(a.take(t.clone(), &block(1, true, 64), &[0; 64], now)),
            ResponseType::RequestEntityTooLarge
        );
        assert!(a.is_empty());

        // No more transfers at once than the capacity; stale ones make room.
        a.take((peer(1), "a".into()), &block(0, true, 16), &[0; 16], now);
        a.take((peer(2), "a".into()), &block(0, true, 16), &[0; 16], now);
        assert_eq!(
            code(a.take((peer(3), "a".into()), &block(0, true, 16), &[0; 16], now)),
            ResponseType::ServiceUnavailable
        );
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            a.take((peer(3), "a".into()), &block(0, true, 16), &[0; 16], later),
            Block::Continue(_)
        ));
        assert_eq!(a.len(), 1);
    }
}
