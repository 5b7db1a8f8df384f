//! The CoAP endpoint devices send readings to: one task reads the UDP socket, answers what
//! needs no device (pings, copies of messages, malformed and refused requests) at once, and
//! hands each new request to a task of its own, which answers once the event is on the bus.
//!
//! - **Acknowledged means published.** A confirmable request is answered with a
//!   piggybacked ACK only after [`Sdk::push`] returned, never with an empty ACK first
//!   (a device takes either as delivered). While the bus does not take the event the
//!   device gets no answer and retransmits; after the SDK's wait (10 s, well inside
//!   CoAP's 45 s MAX_TRANSMIT_SPAN) it gets 5.03 with Max-Age and tries again later.
//! - **Copies.** A copy of a message (same sender, same Message ID) is dropped while the
//!   first is handled and then gets the first's answer: nothing is published twice.
//! - **Limits.** Requests handled at once are bounded for the service (`max_in_flight`,
//!   then 5.03) and for each sender (`max_in_flight_per_source`, then 4.29); each device's
//!   rate is the SDK's (`device_messages_per_s`, 4.29). Malformed datagrams cost a counter
//!   and, at most once a minute per kind, a log line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use coap_lite::block_handler::BlockValue;
use coap_lite::option_value::OptionValueU32;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use outpost_device_sdk::payload::{Payload, body_value, decode, decode_as};
use outpost_device_sdk::{PushError, Sdk, SecretError};
use outpost_kit::ratelog::RateLimitedLog;
use outpost_kit::shutdown::Shutdown;
use tokio::net::UdpSocket;

use crate::CoapConfig;
use crate::exchange::{Admit, Assemblies, Block, Exchanges, Key};
use crate::route::{self, Encoding, Refusal, Route};

/// Requests by response code (`2.04`, `4.01`, ...).
pub const REQUESTS: &str = "outpost_device_coap_requests_total";
/// Datagrams not handled as requests, by reason (`malformed`, `duplicate`, `busy`, ...).
pub const DROPPED: &str = "outpost_device_coap_datagrams_dropped_total";

/// The largest diagnostic payload sent back.
const MAX_DIAGNOSTIC: usize = 200;

/// An answer before it is framed.
struct Answer {
    code: ResponseType,
    payload: Vec<u8>,
    options: Vec<(CoapOption, Vec<u8>)>,
}

impl Answer {
    fn new(code: ResponseType) -> Self {
        Self {
            code,
            payload: Vec::new(),
            options: Vec::new(),
        }
    }

    /// An error with its diagnostic text (RFC 7252 §5.5.2).
    fn refused(r: Refusal) -> Self {
        let mut payload = r.why.into_bytes();
        truncate_text(&mut payload, MAX_DIAGNOSTIC);
        Self {
            code: r.code,
            payload,
            options: Vec::new(),
        }
    }

    /// Tells the device how many seconds to wait before trying again.
    fn max_age(mut self, seconds: u32) -> Self {
        self.options
            .push((CoapOption::MaxAge, OptionValueU32(seconds).into()));
        self
    }

    fn block1(mut self, b: BlockValue) -> Self {
        self.options.push((CoapOption::Block1, b.into()));
        self
    }
}

/// What the request task and the socket task share.
struct State {
    exchanges: Exchanges,
    assemblies: Assemblies,
    /// Requests being handled, per sender.
    per_source: HashMap<SocketAddr, usize>,
    in_flight: usize,
}

/// The endpoint.
pub struct Server {
    sdk: Sdk,
    cfg: CoapConfig,
    socket: UdpSocket,
    state: Mutex<State>,
    /// Message IDs of non-confirmable answers.
    next_id: AtomicU16,
    log: RateLimitedLog,
}

impl Server {
    pub fn new(sdk: Sdk, cfg: CoapConfig, socket: UdpSocket) -> Arc<Self> {
        let lifetime = Duration::from_secs(cfg.exchange_lifetime_s);
        Arc::new(Self {
            state: Mutex::new(State {
                exchanges: Exchanges::new(lifetime, cfg.dedupe_entries),
                assemblies: Assemblies::new(cfg.max_body_bytes, cfg.max_block_transfers, lifetime),
                per_source: HashMap::new(),
                in_flight: 0,
            }),
            sdk,
            cfg,
            socket,
            next_id: AtomicU16::new(fastrand::u16(..)),
            log: RateLimitedLog::new(Duration::from_secs(60)),
        })
    }

    /// Reads datagrams until `stop`; requests in hand are answered by their own tasks.
    pub async fn serve(self: Arc<Self>, stop: Shutdown) -> std::io::Result<()> {
        // The largest UDP payload, so no datagram is cut short here.
        let mut buf = vec![0u8; 65_536];
        loop {
            let received = tokio::select! {
                () = stop.wait() => return Ok(()),
                r = self.socket.recv_from(&mut buf) => r,
            };
            match received {
                Ok((n, peer)) => {
                    if let Some(d) = buf.get(..n) {
                        Arc::clone(&self).datagram(d, peer);
                    }
                }
                // An ICMP error for an earlier answer (a device gone): not this socket's.
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn dropped(&self, reason: &'static str, peer: SocketAddr, detail: &str) {
        metrics::counter!(DROPPED, "reason" => reason).increment(1);
        if let Some(suppressed) = self.log.check(reason) {
            tracing::warn!(%peer, reason, suppressed, "CoAP datagram dropped: {detail}");
        }
    }

    /// One datagram, handled without waiting.
    fn datagram(self: Arc<Self>, d: &[u8], peer: SocketAddr) {
        let p = match Packet::from_bytes(d) {
            Ok(p) => p,
            Err(e) => {
                self.dropped("malformed", peer, &format!("{e:?}"));
                // A confirmable message that cannot be read is rejected with a reset
                // (RFC 7252 §4.2), when its header can be.
                if let [first, _, hi, lo, ..] = *d
                    && first >> 6 == 1
                    && (first >> 4) & 0b11 == 0
                {
                    self.reset(u16::from_be_bytes([hi, lo]), peer);
                }
                return;
            }
        };
        if p.header.get_version() != 1 {
            return self.dropped("malformed", peer, "CoAP version is not 1");
        }
        let confirmable = p.header.get_type() == MessageType::Confirmable;
        match (p.header.get_type(), p.header.code) {
            (MessageType::Confirmable | MessageType::NonConfirmable, MessageClass::Request(_)) => {}
            // A ping (an empty confirmable message) is answered with a reset.
            (MessageType::Confirmable, MessageClass::Empty) => {
                return self.reset(p.header.message_id, peer);
            }
            (_, MessageClass::Empty) => return,
            _ => {
                self.dropped("not_request", peer, "not a request");
                if confirmable {
                    self.reset(p.header.message_id, peer);
                }
                return;
            }
        }
        let key = (peer, p.header.message_id);
        match self.state().exchanges.admit(key, Instant::now()) {
            Admit::New => {}
            Admit::InFlight => {
                return self.dropped("duplicate", peer, "a copy of a request in hand");
            }
            Admit::Answer(bytes) => {
                metrics::counter!(DROPPED, "reason" => "duplicate").increment(1);
                return self.send_now(&bytes, peer);
            }
        }
        let route = match self.route(&p) {
            Ok(r) => r,
            Err(answer) => return self.answer_now(&p, d.len(), key, answer),
        };
        let (body, block) = match self.body(&p, &route, peer) {
            Ok(b) => b,
            Err(answer) => return self.answer_now(&p, d.len(), key, answer),
        };
        // Admission: bounded for the service and for each sender.
        {
            let mut st = self.state();
            let mine = st.per_source.get(&peer).copied().unwrap_or(0);
            let refusal = if mine >= self.cfg.max_in_flight_per_source {
                Some((
                    "source_busy",
                    ResponseType::TooManyRequests,
                    "too many requests from this address at once",
                ))
            } else if st.in_flight >= self.cfg.max_in_flight {
                Some(("busy", ResponseType::ServiceUnavailable, "busy; retry"))
            } else {
                None
            };
            if let Some((reason, code, why)) = refusal {
                drop(st);
                self.dropped(reason, peer, why);
                return self.answer_now(
                    &p,
                    d.len(),
                    key,
                    Answer::refused(Refusal::new(code, why)).max_age(1),
                );
            }
            *st.per_source.entry(peer).or_insert(0) += 1;
            st.in_flight += 1;
        }
        let work = Work {
            server: Arc::clone(&self),
            key,
        };
        let len = d.len();
        self.sdk.context().tasks.spawn_child(async move {
            let mut answer = work.server.handle(&route, &body).await;
            if let Some(b) = block {
                answer = answer.block1(b);
            }
            work.server.finish(&p, len, work.key, answer).await;
        });
    }

    /// The request's route, and that its method is one readings come by.
    fn route(&self, p: &Packet) -> Result<Route, Answer> {
        let route = route::parse(p).map_err(Answer::refused)?;
        match route.method {
            RequestType::Post | RequestType::Put => Ok(route),
            _ => Err(Answer::refused(Refusal::new(
                ResponseType::MethodNotAllowed,
                "devices POST or PUT readings",
            ))),
        }
    }

    /// The whole payload of a request: its own, or, with Block1, the blocks so far when
    /// this is the last (earlier blocks are answered 2.31 Continue).
    fn body(
        &self,
        p: &Packet,
        route: &Route,
        peer: SocketAddr,
    ) -> Result<(Vec<u8>, Option<BlockValue>), Answer> {
        let too_large = || {
            Answer::refused(Refusal::new(
                ResponseType::RequestEntityTooLarge,
                format!("payloads are at most {} bytes", self.cfg.max_body_bytes),
            ))
            .with_size1(self.cfg.max_body_bytes)
        };
        let Some(raw) = p.get_first_option(CoapOption::Block1) else {
            if p.payload.len() > self.cfg.max_body_bytes {
                return Err(too_large());
            }
            return Ok((p.payload.clone(), None));
        };
        let b = BlockValue::try_from(raw.clone()).map_err(|_| {
            Answer::refused(Refusal::new(ResponseType::BadOption, "Block1 is not valid"))
        })?;
        let transfer = (
            peer,
            format!(
                "{}/{}",
                route.device,
                route.resource.as_deref().unwrap_or_default()
            ),
        );
        let taken = self
            .state()
            .assemblies
            .take(transfer, &b, &p.payload, Instant::now());
        match taken {
            Block::Continue(b) => Err(Answer::new(ResponseType::Continue).block1(b)),
            Block::Complete(body, b) => Ok((body, Some(b))),
            Block::Refused(r) if r.code == ResponseType::RequestEntityTooLarge => Err(too_large()),
            Block::Refused(r) => Err(Answer::refused(r)),
        }
    }

    /// Publishes what a request carries; the answer says how that went.
    async fn handle(&self, route: &Route, body: &[u8]) -> Answer {
        let device = route.device.as_str();
        if self.cfg.require_secret {
            let Some(secret) = route.secret.as_deref().filter(|s| !s.is_empty()) else {
                return Answer::refused(Refusal::new(
                    ResponseType::Unauthorized,
                    "a device secret is required: ?secret=<device secret>",
                ));
            };
            match self.sdk.check_secret(device, secret).await {
                Ok(()) => {}
                Err(SecretError::Wrong) => {
                    return Answer::refused(Refusal::new(
                        ResponseType::Unauthorized,
                        "wrong secret for this device",
                    ));
                }
                Err(e @ SecretError::Unavailable) => {
                    return Answer::refused(Refusal::new(
                        ResponseType::ServiceUnavailable,
                        e.to_string(),
                    ))
                    .max_age(5);
                }
            }
        }
        let pushed = match self.values(route, body) {
            Ok((source, values, origin)) => self.sdk.push(device, &source, values, origin).await,
            Err(e) => Err(e),
        };
        match pushed {
            Ok(_) => Answer::new(ResponseType::Changed),
            Err(e) => {
                self.sdk.reject(device, e.reason(), &e.to_string());
                let answer = Answer::refused(Refusal::new(code_of(&e), e.to_string()));
                match e {
                    PushError::Throttled(_) => answer.max_age(1),
                    PushError::Bus(_) => answer.max_age(5),
                    _ => answer,
                }
            }
        }
    }

    /// The values a request carries, and the event's source and origin.
    #[allow(clippy::type_complexity)]
    fn values(
        &self,
        route: &Route,
        body: &[u8],
    ) -> Result<
        (
            String,
            Vec<(String, outpost_device_sdk::CommandValue)>,
            Option<i64>,
        ),
        PushError,
    > {
        let device = route.device.as_str();
        let d = self
            .sdk
            .device(device)
            .ok_or_else(|| PushError::UnknownDevice(device.to_string()))?;
        let bad = |why: String| {
            PushError::BadValue(outpost_device_sdk::value::ValueError::Invalid {
                resource: route.resource.clone().unwrap_or_else(|| device.to_string()),
                why,
            })
        };
        if let Some(resource) = &route.resource {
            let r = d
                .profile
                .resource(resource)
                .ok_or_else(|| PushError::UnknownResource {
                    device: device.to_string(),
                    resource: resource.clone(),
                })?;
            let v =
                body_value(r.properties.value_type, body, route.encoding.format()).map_err(bad)?;
            return Ok((resource.clone(), vec![(resource.clone(), v)], None));
        }
        let payload = match route.encoding {
            Encoding::Named(f) => decode_as(body, f, "timestamp"),
            Encoding::Unnamed | Encoding::Bytes => decode(body, "timestamp"),
        };
        match payload.map_err(|e| bad(e.to_string()))? {
            Payload::Object { values, origin } => Ok(("telemetry".into(), values, origin)),
            Payload::Value(_) => Err(bad(
                "to /<device> the payload is an object of resource → value; one value goes to /<device>/<resource>"
                    .into(),
            )),
        }
    }

    /// Answers a request that needs no device, now.
    fn answer_now(&self, request: &Packet, len: usize, key: Key, answer: Answer) {
        metrics::counter!(REQUESTS, "code" => answer.code_text()).increment(1);
        if let Some(bytes) = self.frame(request, len, answer) {
            self.send_now(&bytes, key.0);
            self.state().exchanges.done(key, bytes);
        } else {
            self.state().exchanges.forget(key);
        }
    }

    /// Answers a request handled by its own task.
    async fn finish(&self, request: &Packet, len: usize, key: Key, answer: Answer) {
        metrics::counter!(REQUESTS, "code" => answer.code_text()).increment(1);
        let Some(bytes) = self.frame(request, len, answer) else {
            self.state().exchanges.forget(key);
            return;
        };
        self.state().exchanges.done(key, Arc::clone(&bytes));
        if let Err(e) = self.socket.send_to(&bytes, key.0).await
            && let Some(suppressed) = self.log.check("send")
        {
            tracing::warn!(peer = %key.0, suppressed, error = %e, "cannot answer a CoAP request");
        }
    }

    /// The answer as a datagram: a piggybacked ACK to a confirmable request, a
    /// non-confirmable message to a non-confirmable one. Its diagnostic is no longer than
    /// the request (`len` bytes) was, so a forged sender address cannot make the endpoint
    /// send someone more than it was sent.
    fn frame(&self, request: &Packet, len: usize, mut answer: Answer) -> Option<Arc<[u8]>> {
        truncate_text(&mut answer.payload, len);
        let mut p = Packet::new();
        p.header.set_version(1);
        if request.header.get_type() == MessageType::Confirmable {
            p.header.set_type(MessageType::Acknowledgement);
            p.header.message_id = request.header.message_id;
        } else {
            p.header.set_type(MessageType::NonConfirmable);
            p.header.message_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        p.set_token(request.get_token().to_vec());
        p.header.code = MessageClass::Response(answer.code);
        for (o, v) in answer.options {
            p.add_option(o, v);
        }
        p.payload = answer.payload;
        match p.to_bytes() {
            Ok(b) => Some(b.into()),
            Err(e) => {
                tracing::warn!(error = ?e, "cannot frame a CoAP answer");
                None
            }
        }
    }

    fn reset(&self, message_id: u16, peer: SocketAddr) {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(MessageType::Reset);
        p.header.code = MessageClass::Empty;
        p.header.message_id = message_id;
        if let Ok(b) = p.to_bytes() {
            self.send_now(&b, peer);
        }
    }

    /// Sends without waiting: a full socket buffer drops the datagram, which the device's
    /// retransmission covers.
    fn send_now(&self, bytes: &[u8], peer: SocketAddr) {
        if self.socket.try_send_to(bytes, peer).is_err() {
            metrics::counter!(DROPPED, "reason" => "send").increment(1);
        }
    }
}

/// A request being handled: its place in the limits is given back however it ends.
struct Work {
    server: Arc<Server>,
    key: Key,
}

impl Drop for Work {
    fn drop(&mut self) {
        let mut st = self.server.state();
        st.in_flight = st.in_flight.saturating_sub(1);
        let peer = self.key.0;
        if let Some(n) = st.per_source.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.per_source.remove(&peer);
            }
        }
    }
}

impl Answer {
    fn code_text(&self) -> String {
        MessageClass::Response(self.code).to_string()
    }

    fn with_size1(mut self, bytes: usize) -> Self {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.options
            .push((CoapOption::Size1, OptionValueU32(n).into()));
        self
    }
}

/// Cuts UTF-8 text to at most `max` bytes, at a character's boundary.
fn truncate_text(text: &mut Vec<u8>, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    // A continuation byte is 0b10xx_xxxx: step back to the start of its character.
    while end > 0 && text.get(end).is_some_and(|b| b & 0xc0 == 0x80) {
        end -= 1;
    }
    text.truncate(end);
}

/// The response code for a push that failed.
fn code_of(e: &PushError) -> ResponseType {
    match e {
        PushError::UnknownDevice(_) | PushError::UnknownResource { .. } => ResponseType::NotFound,
        PushError::Locked(_) => ResponseType::Forbidden,
        PushError::NotReadable { .. } => ResponseType::MethodNotAllowed,
        PushError::BadValue(_) | PushError::Empty => ResponseType::BadRequest,
        PushError::Throttled(_) => ResponseType::TooManyRequests,
        PushError::Bus(_) => ResponseType::ServiceUnavailable,
    }
}

/// Errors a UDP socket reports for earlier datagrams (ICMP unreachable), not for itself.
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionReset | K::HostUnreachable | K::NetworkUnreachable
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        let mut t = "añb".as_bytes().to_vec(); // a, ñ (2 bytes), b
        truncate_text(&mut t, 2);
        assert_eq!(t, b"a");
        let mut t = "añb".as_bytes().to_vec();
        truncate_text(&mut t, 3);
        assert_eq!(t, "añ".as_bytes());
        let mut t = b"short".to_vec();
        truncate_text(&mut t, 200);
        assert_eq!(t, b"short");
    }
}
