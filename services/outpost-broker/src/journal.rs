//! The journal: what makes the broker's acknowledgement of a publish mean "on disk".
//!
//! ```text
//! publisher ──PUBLISH QoS 1/2──▶ on_client_publish ──append──▶ writer thread ──▶ journal (fsync)
//!                                       │ (waits for the group commit)
//!                                       ▼
//!                              route to subscribers ──▶ PUBACK / PUBREC to the publisher
//! consumer ──PUBACK, then `<base>/_journal/ack` (keys of handled messages)──▶ released
//! ```
//!
//! - **What is journaled**: a QoS 1 or 2 message whose topic matches a filter of a
//!   registered durable consumer (a service of the node consuming through
//!   `outpost_bus::Consumer`, which registers its filters on `<base>/_journal/consumer`).
//!   Anything else is routed from memory as before.
//! - **When the publisher hears back**: only after the message is in the journal, written
//!   and synced in a group commit with every other message that arrived meanwhile
//!   ([`outpost_queue`]: append-only segment files, each record encrypted and
//!   authenticated with the broker's journal key). While the journal is full or the disk
//!   cannot be written, publishers get no acknowledgement: they wait, and resend after a
//!   reconnect; nothing acknowledged is dropped to make room.
//! - **Released** once every consumer it was journaled for has confirmed it (by its
//!   [`outpost_bus::journal::key`]), or has gone for good (its persistent session ended).
//!   The journal is released from its head in order.
//! - **After a crash** (kill -9, power loss) the broker reads what the journal still holds
//!   before it accepts connections and queues each message again for every registered
//!   consumer whose filters match it; consumers drop what they had already handled (by
//!   event id). A message not confirmed within [`Config::redeliver_after`] (its
//!   confirmation lost with a connection, or dropped from the consumer's in-memory queue)
//!   is queued again for that consumer while it is connected.
//! - **Groups**: a consumer whose filters are all shared subscriptions of one group
//!   (`$share/<group>/...`, e.g. the instances of core-data) is journaled for as the group:
//!   the broker routes each message to one member, a confirmation from any member releases
//!   it, and what no member confirmed in time is queued again for a connected member (so a
//!   member that died leaves its messages to the others). After a crash, what the journal
//!   held is queued for every member (members drop what was already stored, by event id).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqtt5::QoS;
use mqtt5::broker::events::{BrokerEventHandler, ClientPublishEvent, PublishAction};
use mqtt5::broker::router::MessageRouter;
use mqtt5::broker::storage::{DynamicStorage, QueuedMessage, StorageBackend as _};
use mqtt5::packet::publish::PublishPacket;
use outpost_bus::journal::{KEY_LEN, Key, key};
use outpost_kit::Shutdown;
use outpost_kit::backoff::Backoff;
use outpost_queue::{Item, Overflow, Priority, Queue, QueueError, SyncPolicy};
use outpost_storage::Db;
use outpost_storage::rusqlite::params;
use tokio::sync::{mpsc, oneshot};

outpost_kit::metric_names! {
    /// The journal's metrics.
    pub struct Metrics {
        /// Messages written.
        appended = "journal_appended_total",
        /// Group commits (each one write and, with `storage.sync = "full"`, one fsync).
        commits = "journal_commits_total",
        /// Messages released after every consumer confirmed them.
        released = "journal_released_total",
        /// Appends that had to wait (journal full, disk not writable).
        waits = "journal_append_waits_total",
        /// Messages of durable consumers routed unjournaled while the journal was full.
        bypassed = "journal_bypassed_total",
        /// Messages delivered again because a consumer did not confirm them in time.
        redelivered = "journal_redelivered_total",
        /// Messages held.
        pending = "journal_pending",
        /// Bytes of the journal's files.
        bytes = "journal_bytes",
    }
}

/// How long a consumer may have neither a connection nor a session before the journal
/// stops keeping messages for it.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// How the journal is kept.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bound on the journal's files; beyond it publishers wait.
    pub max_bytes: u64,
    /// Largest message journaled (the broker's packet limit).
    pub max_message_bytes: u32,
    /// Sync every group commit (survives power loss); otherwise a process crash only.
    pub sync: bool,
    /// A message not confirmed by a connected consumer within this time is queued for it
    /// again.
    pub redeliver_after: Duration,
    pub metrics: Metrics,
}

/// Control topics and who may use them.
#[derive(Debug, Clone)]
pub struct Control {
    pub internal_user: String,
    pub consumer_topic: String,
    pub ack_topic: String,
}

/// The journal of one broker; see the module documentation.
pub struct Journal {
    state: Arc<Mutex<State>>,
    writer: mpsc::UnboundedSender<Request>,
    router: OnceLock<Arc<MessageRouter>>,
    db: Db,
    control: Control,
    redeliver_after: Duration,
    metrics: Metrics,
    ids: MessageIds,
    /// The number the first message journaled in this run gets.
    first_new: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Registered consumers and the filters they consume.
    consumers: HashMap<Arc<str>, Vec<String>>,
    /// Journaled messages not yet released, by sequence number.
    pending: BTreeMap<u64, Entry>,
    /// Which of a consumer's pending messages carry a key, oldest first.
    index: HashMap<(Arc<str>, Key), VecDeque<u64>>,
    /// Sequence number at the journal's head: everything before it is released.
    head: u64,
    /// Consumers known from the configuration that have no session yet: what waits for
    /// them is queued for them when they first register, since no session held it; with
    /// the sequence number their first subscription was made at, once it was (what came
    /// after it was routed to them as it came).
    expected: HashMap<Arc<str>, Option<u64>>,
    /// Where each client that subscribed before it registered did so: a group learns its
    /// member's first subscription only once the member registered.
    subscribed_at: HashMap<Arc<str>, u64>,
}

struct Entry {
    topic: Arc<str>,
    payload: Bytes,
    qos: QoS,
    key: Key,
    /// Its message id ([`MESSAGE_ID`]): the same on every delivery, redeliveries after a
    /// crash included, so consumers can tell a message they handled from a new one with
    /// the same content.
    id: Arc<str>,
    /// Consumers that have not confirmed it yet.
    waiting: Vec<Arc<str>>,
    /// For a gap in the sequence numbers (never written: numbers reserved and not used
    /// before a restart, or lost with a failed write), the first number after it.
    skip_to: u64,
    /// When it was last queued for them.
    since: Instant,
}

enum Request {
    Append {
        record: Vec<u8>,
        entry: Entry,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Releases this many messages from the head.
    Release(u64),
}

/// Why the journal cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the broker's journal")]
    Queue(#[from] QueueError),
    #[error("cannot read the broker's durable consumers")]
    Storage(#[from] outpost_storage::StorageError),
    #[error("cannot start the journal writer")]
    Thread(#[source] std::io::Error),
}

impl Journal {
    /// Opens the journal in `dir` with `key`, and the registered consumers from `db`; the
    /// messages it still holds are queued again by [`Journal::start`].
    pub fn open(
        dir: &Path,
        master_key: &[u8; 32],
        cfg: &Config,
        db: Db,
        control: Control,
    ) -> Result<(Arc<Self>, Vec<Item>), OpenError> {
        let mut queue = Queue::open(
            dir,
            master_key,
            outpost_queue::Config {
                max_bytes: cfg.max_bytes,
                segment_bytes: 0,
                max_item_bytes: cfg.max_message_bytes.saturating_add(8 * 1024),
                ttl: None,
                overflow: Overflow::RefuseNew,
                sync: if cfg.sync {
                    SyncPolicy::Batch
                } else {
                    SyncPolicy::None
                },
            },
        )?;
        let held = queue
            .peek(usize::MAX, usize::MAX, unix_ms())?
            .map(|b| b.items)
            .unwrap_or_default();
        let first_new = next_seq(&queue);
        let head = held.first().map_or(first_new, |i| i.seq);
        let consumers = load_consumers(&db)?;
        let state = Arc::new(Mutex::new(State {
            consumers,
            head,
            ..State::default()
        }));
        let (writer, rx) = mpsc::unbounded_channel();
        let for_writer = Arc::clone(&state);
        let m = cfg.metrics;
        std::thread::Builder::new()
            .name("broker-journal".into())
            .spawn(move || write(queue, rx, &for_writer, m))
            .map_err(OpenError::Thread)?;
        let journal = Arc::new(Self {
            state,
            writer,
            router: OnceLock::new(),
            db,
            control,
            redeliver_after: cfg.redeliver_after,
            metrics: cfg.metrics,
            ids: MessageIds::new(),
            first_new,
        });
        Ok((journal, held))
    }

    /// Queues what the journal held at start for the consumers it matches, before the
    /// broker accepts connections; from here on messages are redelivered through `router`.
    pub fn start(&self, router: Arc<MessageRouter>, held: Vec<Item>) {
        let now = Instant::now();
        let mut bad = 0u64;
        let mut st = self.lock();
        let mut next = st.head;
        for item in held {
            // Records skipped as corrupt leave gaps, as do numbers reserved before an
            // earlier restart and never used; the head moves over them.
            if item.seq > next {
                st.pending.insert(next, Entry::gap(item.seq));
            }
            next = item.seq + 1;
            let Some((topic, qos, id, payload)) = decode(&item.data) else {
                bad += 1;
                // Keeps the head moving past it.
                st.pending.insert(item.seq, Entry::released());
                continue;
            };
            let waiting = matching(&st.consumers, topic);
            let key = key(topic, payload);
            let entry = Entry {
                topic: Arc::from(topic),
                // A record written before message ids: one derived from its content.
                id: id.map_or_else(|| Arc::from(hex_of(&key)), Arc::from),
                key,
                payload: Bytes::copy_from_slice(payload),
                qos,
                waiting,
                skip_to: 0,
                since: now,
            };
            for w in &entry.waiting {
                // After a crash a group's message goes to every member's session: which of
                // them comes back is not known yet, and a member drops what another one
                // stored (by event id).
                for c in st.members(w) {
                    queue_for(&router, &c, &entry);
                }
            }
            st.insert(item.seq, entry);
        }
        // New messages are numbered from where the journal reserved on opening, past what
        // it holds: the head moves over the numbers in between.
        if self.first_new > next && !st.pending.is_empty() {
            st.pending.insert(next, Entry::gap(self.first_new));
        }
        drop(st);
        if bad > 0 {
            tracing::warn!(
                messages = bad,
                "journal records that cannot be read were skipped"
            );
        }
        tracing::info!(through = next, "journal replayed");
        let _ = self.router.set(router);
        self.advance();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Releases what every consumer confirmed, from the head in order.
    fn advance(&self) {
        let released = self.lock().release_front();
        if released > 0 {
            let _ = self.writer.send(Request::Release(released));
        }
    }

    /// Journals a message for `waiting`, waiting as long as the journal cannot take it.
    ///
    /// A durable consumer publishing what it made of a journaled message (rules' derived
    /// events) is not held: its connection also carries the acknowledgements and
    /// confirmations that free the journal, so holding it could wait forever. What it
    /// publishes then goes unjournaled (counted in `journal_bypassed_total`); it is not
    /// lost to a crash, because the consumer confirms its input only after its output was
    /// acknowledged, and the input is still in the journal. Returns the message's id.
    async fn append(&self, ev: &ClientPublishEvent, waiting: Vec<Arc<str>>) -> Arc<str> {
        let consumer = self.lock().consumers.contains_key(&*ev.client_id);
        let id: Arc<str> = Arc::from(self.ids.next());
        let record = encode(&ev.topic, ev.qos, &id, &ev.payload);
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        let mut warned = false;
        loop {
            let (reply, answer) = oneshot::channel();
            let entry = Entry {
                topic: Arc::clone(&ev.topic),
                payload: ev.payload.clone(),
                qos: ev.qos,
                key: key(&ev.topic, &ev.payload),
                id: Arc::clone(&id),
                waiting: waiting.clone(),
                skip_to: 0,
                since: Instant::now(),
            };
            // A send to a writer that is gone drops `reply`: answered below as `Err`.
            let _ = self.writer.send(Request::Append {
                record: record.clone(),
                entry,
                reply,
            });
            match answer.await {
                Ok(Ok(())) => return id,
                Ok(Err(why)) => {
                    if consumer {
                        metrics::counter!(self.metrics.bypassed).increment(1);
                        return id;
                    }
                    metrics::counter!(self.metrics.waits).increment(1);
                    if !warned {
                        tracing::warn!(
                            reason = why,
                            "the journal cannot take more; publishers wait for their acknowledgement"
                        );
                        warned = true;
                    }
                }
                // The writer is gone: the broker is stopping. Never acknowledge; the
                // connection ends with it and the publisher sends again.
                Err(_) => {}
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// A consumer's confirmation: `payload` is the keys of messages it handled.
    fn confirmed(&self, client: &str, payload: &[u8]) {
        {
            let mut st = self.lock();
            let Some(client) = st.waiter_of(client) else {
                return;
            };
            for k in payload.chunks_exact(KEY_LEN) {
                let mut key = [0u8; KEY_LEN];
                key.copy_from_slice(k);
                st.confirm(&client, key);
            }
        }
        self.advance();
    }

    /// A consumer known before it connects (`broker.durable_consumers`): journaled for
    /// from now on, unless it registered itself before (its own filters stand). Without a
    /// session (`has_session`), what waits for it is queued when it first registers.
    pub async fn expect(&self, client: &str, filters: &[String], has_session: bool) {
        // Its own filters stand, unless the configuration now has it consume as another
        // group (or as none): a registration from before such a change would have the
        // journal wait for a consumer nothing runs any more.
        let stale = {
            let st = self.lock();
            let configured = waiter(&Arc::from(client), filters);
            st.waiter_of(client).is_some_and(|w| w != configured)
        };
        if stale || !self.lock().consumers.contains_key(client) {
            match serde_json::to_vec(filters) {
                Ok(payload) => self.register(client, &payload).await,
                Err(e) => {
                    tracing::warn!(client, error = %e, "cannot register a durable consumer");
                    return;
                }
            }
        }
        if !has_session {
            let w = waiter(&Arc::from(client), filters);
            self.lock().expected.insert(w, None);
        }
    }

    /// A consumer's registration: `payload` is the JSON list of its filters.
    async fn register(&self, client: &str, payload: &[u8]) {
        let filters: Vec<String> = match serde_json::from_slice(payload) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(client, error = %e, "ignored a malformed journal registration");
                return;
            }
        };
        let (id, body) = (client.to_string(), serde_json::to_string(&filters));
        let Ok(body) = body else { return };
        let stored = self
            .db
            .write(move |c| {
                c.execute(
                    "INSERT INTO journal_consumers (client_id, filters) VALUES (?1, ?2)
                     ON CONFLICT (client_id) DO UPDATE SET filters = ?2",
                    params![id, body],
                )
                .map_err(outpost_storage::StorageError::from)
            })
            .await;
        if let Err(e) = stored {
            tracing::warn!(client, error = %e, "cannot store a durable consumer; its messages are journaled until the broker restarts");
        }
        tracing::info!(client, ?filters, "durable consumer registered");
        let client: Arc<str> = Arc::from(client);
        let mut st = self.lock();
        let before = st.waiter_of(&client);
        let changed = st
            .consumers
            .insert(Arc::clone(&client), filters.clone())
            .is_some_and(|before| before != filters);
        let w = waiter(&client, &filters);
        if changed && let Some(old) = before {
            // What it was journaled for under other filters (or as another group) and
            // no consumer of that name consumes any more would wait for ever: it no
            // longer waits for it.
            let State {
                pending,
                consumers,
                index,
                ..
            } = &mut *st;
            let mut dropped = Vec::new();
            for (seq, e) in pending.iter_mut() {
                if e.waiting.contains(&old) && !matching(consumers, &e.topic).contains(&old) {
                    e.waiting.retain(|x| *x != old);
                    dropped.push((*seq, e.key));
                }
            }
            for (seq, key) in dropped {
                let ik = (Arc::clone(&old), key);
                if let Some(seqs) = index.get_mut(&ik) {
                    seqs.retain(|s| *s != seq);
                    if seqs.is_empty() {
                        index.remove(&ik);
                    }
                }
            }
        }
        // Its (or its group's) first registration: what was journaled for it before it
        // subscribed is in no session's queue; it is queued now, in order.
        let first_subscribed = st.subscribed_at.remove(&client);
        if let Some(before) = st.expected.remove(&w)
            && let Some(router) = self.router.get()
        {
            let before = before.or(first_subscribed).unwrap_or(u64::MAX);
            let now = Instant::now();
            let mut queued = 0u64;
            for (_, e) in st.pending.range_mut(..before) {
                if e.waiting.contains(&w) {
                    queue_for(router, &client, e);
                    e.since = now;
                    queued += 1;
                }
            }
            if queued > 0 {
                tracing::info!(client = %client, messages = queued, "queued what was journaled before the consumer first subscribed");
            }
        }
        drop(st);
        if changed {
            self.advance();
        }
    }

    /// A client subscribed: for an expected consumer's first subscription, what is
    /// journaled from now on reaches it as it comes.
    pub fn subscribed(&self, client: &str) {
        let mut st = self.lock();
        let next = st.pending.keys().next_back().map_or(st.head, |s| s + 1);
        match st.waiter_of(client) {
            Some(w) => {
                if let Some(at) = st.expected.get_mut(&w)
                    && at.is_none()
                {
                    *at = Some(next);
                }
            }
            // Not registered yet: kept until it registers, when its waiter is known.
            None => {
                st.subscribed_at.entry(Arc::from(client)).or_insert(next);
            }
        }
    }

    /// Forgets consumers whose session ended and queues again what connected consumers
    /// did not confirm in time, until `stop`.
    pub async fn maintain(self: Arc<Self>, storage: Arc<DynamicStorage>, stop: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        // Since when each consumer has had neither a connection nor a stored session.
        let mut absent: HashMap<Arc<str>, Instant> = HashMap::new();
        loop {
            tokio::select! {
                () = stop.wait() => return,
                _ = tick.tick() => {}
            }
            let consumers: Vec<Arc<str>> = self.lock().consumers.keys().cloned().collect();
            let router = self.router.get();
            for c in consumers {
                let connected = match router {
                    Some(r) => r.is_connected(&c).await,
                    None => true,
                };
                if connected || !matches!(storage.get_session(&c).await, Ok(None)) {
                    absent.remove(&c);
                    continue;
                }
                // A session is briefly out of storage while it is restored or taken over;
                // only a consumer gone for longer than any restart is forgotten.
                let since = *absent.entry(Arc::clone(&c)).or_insert_with(Instant::now);
                if since.elapsed() >= FORGET_AFTER {
                    absent.remove(&c);
                    self.forget(&c).await;
                }
            }
            self.redeliver().await;
            self.advance();
            let st = self.lock();
            metrics::gauge!(self.metrics.pending).set(st.pending.len() as f64);
        }
    }

    /// A consumer whose session ended gets nothing more: what waited for it is released.
    async fn forget(&self, client: &Arc<str>) {
        tracing::info!(client = %client, "durable consumer's session ended; it is no longer journaled for");
        {
            let mut st = self.lock();
            let w = st.waiter_of(client);
            st.consumers.remove(client);
            st.subscribed_at.remove(client);
            // A group waits on while it has members.
            if let Some(w) = w.filter(|w| !is_group(w) || st.members(w).is_empty()) {
                st.expected.remove(&w);
                st.index.retain(|(c, _), _| *c != w);
                for e in st.pending.values_mut() {
                    e.waiting.retain(|x| *x != w);
                }
            }
        }
        let id = client.to_string();
        let _ = self
            .db
            .write(move |c| {
                c.execute(
                    "DELETE FROM journal_consumers WHERE client_id = ?1",
                    params![id],
                )
                .map_err(outpost_storage::StorageError::from)
            })
            .await;
    }

    async fn redeliver(&self) {
        let Some(router) = self.router.get() else {
            return;
        };
        let now = Instant::now();
        // Each due message with, per waiter, the consumers it may go to.
        let due: Vec<(u64, Vec<Vec<Arc<str>>>)> = {
            let st = self.lock();
            st.pending
                .iter()
                .filter(|(_, e)| {
                    !e.waiting.is_empty() && now.duration_since(e.since) >= self.redeliver_after
                })
                .take(10_000)
                .map(|(s, e)| (*s, e.waiting.iter().map(|w| st.members(w)).collect()))
                .collect()
        };
        let mut connected = HashMap::new();
        for (_, waiters) in &due {
            for c in waiters.iter().flatten() {
                if !connected.contains_key(c) {
                    connected.insert(Arc::clone(c), router.is_connected(c).await);
                }
            }
        }
        let mut st = self.lock();
        let mut n = 0u64;
        for (seq, waiters) in due {
            let Some(e) = st.pending.get_mut(&seq) else {
                continue;
            };
            for members in &waiters {
                // One connected consumer per waiter: a group's message goes to one member.
                if let Some(c) = members.iter().find(|c| connected.get(*c) == Some(&true)) {
                    queue_for(router, c, e);
                    n += 1;
                }
            }
            e.since = now;
        }
        if n > 0 {
            metrics::counter!(self.metrics.redelivered).increment(n);
            tracing::info!(
                messages = n,
                "queued again messages consumers did not confirm in time"
            );
        }
    }
}

impl State {
    /// The waiter of a registered consumer.
    fn waiter_of(&self, client: &str) -> Option<Arc<str>> {
        self.consumers
            .get_key_value(client)
            .map(|(c, filters)| waiter(c, filters))
    }

    /// The consumers messages waiting under `w` may be queued for: the group's members,
    /// or the consumer itself.
    fn members(&self, w: &Arc<str>) -> Vec<Arc<str>> {
        if !is_group(w) {
            return vec![Arc::clone(w)];
        }
        let mut m: Vec<Arc<str>> = self
            .consumers
            .iter()
            .filter(|(c, filters)| waiter(c, filters) == *w)
            .map(|(c, _)| Arc::clone(c))
            .collect();
        m.sort();
        m
    }

    fn insert(&mut self, seq: u64, entry: Entry) {
        for c in &entry.waiting {
            self.index
                .entry((Arc::clone(c), entry.key))
                .or_default()
                .push_back(seq);
        }
        self.pending.insert(seq, entry);
    }

    fn confirm(&mut self, client: &Arc<str>, key: Key) {
        let ik = (Arc::clone(client), key);
        let Some(seqs) = self.index.get_mut(&ik) else {
            return;
        };
        let seq = seqs.pop_front();
        if seqs.is_empty() {
            self.index.remove(&ik);
        }
        if let Some(e) = seq.and_then(|s| self.pending.get_mut(&s)) {
            e.waiting.retain(|w| w != client);
        }
    }

    /// Drops confirmed messages from the head; how many.
    /// Moves the head over what every consumer confirmed, and over gaps in the numbers
    /// in one step; returns how many messages it passed (gaps are not messages): the
    /// journal frees that many from its head.
    fn release_front(&mut self) -> u64 {
        let mut n = 0;
        while let Some(e) = self.pending.get(&self.head) {
            if !e.waiting.is_empty() {
                break;
            }
            let next = if e.skip_to > self.head {
                e.skip_to
            } else {
                n += 1;
                self.head + 1
            };
            self.pending.remove(&self.head);
            self.head = next;
        }
        n
    }
}

impl Entry {
    fn released() -> Self {
        Self {
            topic: Arc::from(""),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            key: [0; KEY_LEN],
            id: Arc::from(""),
            waiting: Vec::new(),
            skip_to: 0,
            since: Instant::now(),
        }
    }

    /// A gap from its sequence number up to `to` (excluded).
    fn gap(to: u64) -> Self {
        Self {
            skip_to: to,
            ..Self::released()
        }
    }
}

impl BrokerEventHandler for Journal {
    fn on_client_publish<'a>(
        &'a self,
        ev: ClientPublishEvent,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = PublishAction> + Send + 'a>> {
        Box::pin(async move {
            let internal = ev.user_id.as_deref() == Some(self.control.internal_user.as_str());
            if *ev.topic == *self.control.ack_topic {
                if internal {
                    self.confirmed(&ev.client_id, &ev.payload);
                }
                return PublishAction::Handled;
            }
            if *ev.topic == *self.control.consumer_topic {
                if internal {
                    self.register(&ev.client_id, &ev.payload).await;
                }
                return PublishAction::Handled;
            }
            if ev.qos == QoS::AtMostOnce {
                return PublishAction::Continue;
            }
            let waiting = matching(&self.lock().consumers, &ev.topic);
            if waiting.is_empty() {
                return PublishAction::Continue;
            }
            let id = self.append(&ev, waiting).await;
            // Routed with its message id, as every redelivery will be.
            let mut packet = PublishPacket::new(ev.topic.to_string(), ev.payload.clone(), ev.qos)
                .with_user_property(MESSAGE_ID.to_string(), id.to_string());
            packet.packet_id = ev.packet_id;
            packet.retain = ev.retain;
            if let Some(t) = &ev.response_topic {
                packet.properties.set_response_topic(t.to_string());
            }
            if let Some(c) = &ev.correlation_data {
                packet.properties.set_correlation_data(c.clone());
            }
            PublishAction::Transform(packet)
        })
    }
}

/// Who a message matching `topic` waits for: each matching consumer, or its group
/// ([`waiter`]), once.
fn matching(consumers: &HashMap<Arc<str>, Vec<String>>, topic: &str) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = Vec::new();
    for (c, filters) in consumers {
        let hit = filters.iter().any(|f| {
            let f = mqtt5::strip_shared_subscription_prefix(f);
            mqtt5::topic_matches_filter(topic, f)
        });
        if hit {
            let w = waiter(c, filters);
            if !out.contains(&w) {
                out.push(w);
            }
        }
    }
    out
}

/// The name messages wait under for consumer `client`: `$share/<group>` when every one of
/// its filters is a shared subscription of that group, else the client itself.
fn waiter(client: &Arc<str>, filters: &[String]) -> Arc<str> {
    let group = |f: &str| {
        f.strip_prefix("$share/")
            .and_then(|rest| rest.split_once('/'))
            .map(|(g, _)| g.to_string())
    };
    let mut groups = filters.iter().map(|f| group(f));
    match groups.next() {
        Some(Some(g)) if groups.all(|o| o.as_deref() == Some(g.as_str())) => {
            Arc::from(format!("$share/{g}"))
        }
        _ => Arc::clone(client),
    }
}

/// Whether `w` names a group.
fn is_group(w: &str) -> bool {
    w.starts_with("$share/")
}

fn queue_for(router: &MessageRouter, client: &str, e: &Entry) {
    let packet = PublishPacket::new(e.topic.to_string(), e.payload.clone(), e.qos)
        .with_user_property(MESSAGE_ID.to_string(), e.id.to_string());
    let queue = router.queue_handle(client);
    queue.push(QueuedMessage::new(packet, client.to_string(), e.qos, None));
    queue.notify();
}

/// What the writer takes in one round.
#[derive(Default)]
struct Group {
    records: Vec<Vec<u8>>,
    waiting: Vec<(Entry, oneshot::Sender<Result<(), String>>)>,
    bytes: usize,
    release: u64,
}

impl Group {
    const MAX: usize = 4096;
    const MAX_BYTES: usize = 16 * 1024 * 1024;

    fn take(&mut self, r: Request) {
        match r {
            Request::Append {
                record,
                entry,
                reply,
            } => {
                self.bytes += record.len();
                self.records.push(record);
                self.waiting.push((entry, reply));
            }
            Request::Release(n) => self.release += n,
        }
    }

    fn full(&self) -> bool {
        self.records.len() >= Self::MAX || self.bytes >= Self::MAX_BYTES
    }
}

/// The writer: appends what arrived meanwhile as one synced group, then answers each.
fn write(
    mut queue: Queue,
    mut rx: mpsc::UnboundedReceiver<Request>,
    state: &Mutex<State>,
    m: Metrics,
) {
    // Sequence numbers lost with a failed write are never used again: they are released
    // at once, or the head would wait for them forever.
    let mut next = next_seq(&queue);
    while let Some(first) = rx.blocking_recv() {
        let mut g = Group::default();
        g.take(first);
        while !g.full() {
            match rx.try_recv() {
                Ok(r) => g.take(r),
                Err(_) => break,
            }
        }
        if g.release > 0 {
            release_head(&mut queue, g.release, m);
        }
        if g.records.is_empty() {
            continue;
        }
        match queue.append(Priority::Normal, &g.records, unix_ms()) {
            Ok(appended) => {
                metrics::counter!(m.commits).increment(1);
                metrics::counter!(m.appended).increment(g.records.len() as u64);
                let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
                if appended.first_seq > next {
                    st.pending.insert(next, Entry::gap(appended.first_seq));
                }
                next = appended.first_seq + g.records.len() as u64;
                let mut replies = Vec::with_capacity(g.waiting.len());
                for (i, (entry, reply)) in g.waiting.into_iter().enumerate() {
                    st.insert(appended.first_seq + i as u64, entry);
                    replies.push(reply);
                }
                drop(st);
                for r in replies {
                    let _ = r.send(Ok(()));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for (_, reply) in g.waiting {
                    let _ = reply.send(Err(why.clone()));
                }
            }
        }
        metrics::gauge!(m.bytes).set(queue.bytes() as f64);
    }
}

fn next_seq(queue: &Queue) -> u64 {
    queue
        .stats()
        .priorities
        .iter()
        .find(|p| p.priority == Priority::Normal)
        .map_or(0, |p| p.next_seq)
}

/// Consumes `n` messages at the journal's head.
fn release_head(queue: &mut Queue, mut n: u64, m: Metrics) {
    while n > 0 {
        let want = usize::try_from(n).unwrap_or(usize::MAX);
        match queue.peek(want, usize::MAX, unix_ms()) {
            Ok(Some(batch)) => {
                let got = batch.items.len() as u64;
                if let Err(e) = queue.ack(&batch) {
                    tracing::warn!(error = %e, "cannot release journaled messages; retried with the next release");
                    return;
                }
                metrics::counter!(m.released).increment(got);
                n = n.saturating_sub(got);
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the journal's head");
                return;
            }
        }
    }
}

/// A journal record: version 2 is `2, qos, topic length (u16 BE), id length (u8), topic,
/// id, payload`; version 1 (before message ids) `1, qos, topic length, topic, payload`.
fn encode(topic: &str, qos: QoS, id: &str, payload: &[u8]) -> Vec<u8> {
    let t = topic.as_bytes();
    let len = u16::try_from(t.len()).unwrap_or(u16::MAX);
    let id = &id.as_bytes()[..id.len().min(255)];
    let mut out = Vec::with_capacity(5 + t.len() + id.len() + payload.len());
    out.push(2);
    out.push(qos as u8);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&t[..usize::from(len)]);
    out.extend_from_slice(id);
    out.extend_from_slice(payload);
    out
}

/// (topic, QoS, message id if the record has one, payload).
fn decode(record: &[u8]) -> Option<(&str, QoS, Option<&str>, &[u8])> {
    let (&[version, qos, l0, l1], rest) = record.split_first_chunk::<4>()?;
    let qos = match qos {
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return None,
    };
    let topic_len = usize::from(u16::from_be_bytes([l0, l1]));
    let (topic, id, payload) = match version {
        1 => {
            let (topic, payload) = rest.split_at_checked(topic_len)?;
            (topic, None, payload)
        }
        2 => {
            let (&id_len, rest) = rest.split_first()?;
            let (topic, rest) = rest.split_at_checked(topic_len)?;
            let (id, payload) = rest.split_at_checked(usize::from(id_len))?;
            (topic, Some(std::str::from_utf8(id).ok()?), payload)
        }
        _ => return None,
    };
    Some((std::str::from_utf8(topic).ok()?, qos, id, payload))
}

/// The MQTT user property carrying a journaled message's id to consumers
/// ([`outpost_bus::journal::MESSAGE_ID`]).
const MESSAGE_ID: &str = outpost_bus::journal::MESSAGE_ID;

fn hex_of(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Message ids unique across the broker's runs: its start time and a counter, and the time
/// the message arrived ([`outpost_bus::journal::message_id`]).
struct MessageIds {
    run: u128,
    next: std::sync::atomic::AtomicU64,
}

impl MessageIds {
    fn new() -> Self {
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            run,
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        outpost_bus::journal::message_id(self.run, n, now)
    }
}

fn load_consumers(
    db: &Db,
) -> Result<HashMap<Arc<str>, Vec<String>>, outpost_storage::StorageError> {
    db.write_blocking(|c| {
        let mut st = c.prepare("SELECT client_id, filters FROM journal_consumers")?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(c, f)| Some((Arc::from(c), serde_json::from_str(&f).ok()?)))
            .collect())
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let r = encode("edgex/events/a", QoS::ExactlyOnce, "m-1", b"payload");
        assert_eq!(
            decode(&r),
            Some((
                "edgex/events/a",
                QoS::ExactlyOnce,
                Some("m-1"),
                &b"payload"[..]
            ))
        );
        // Records from before message ids still read.
        assert_eq!(
            decode(&[1, 1, 0, 1, b't', b'p']),
            Some(("t", QoS::AtLeastOnce, None, &b"p"[..]))
        );
        assert_eq!(decode(&r[..5]), None);
        let ids = MessageIds::new();
        assert_ne!(ids.next(), ids.next());
        assert_eq!(decode(&[3, 1, 0, 0]), None);
        assert_eq!(decode(&[1, 0, 0, 0]), None, "QoS 0 is never journaled");
        assert_eq!(decode(&[1, 1, 0, 1, 0xff]), None, "topic not UTF-8");
    }

    #[test]
    fn the_head_moves_only_over_messages_every_consumer_confirmed() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut st = State {
            head: 10,
            ..State::default()
        };
        let entry = |k: u8, waiting: Vec<Arc<str>>| Entry {
            topic: Arc::from("t"),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            key: [k; KEY_LEN],
            id: Arc::from(format!("m-{k}")),
            waiting,
            skip_to: 0,
            since: Instant::now(),
        };
        st.insert(10, entry(1, vec![a.clone(), b.clone()]));
        st.insert(11, entry(2, vec![a.clone()]));
        // 12 is appended but not yet inserted: the head must not pass it.
        st.insert(13, entry(3, vec![b.clone()]));
        st.confirm(&a, [2; KEY_LEN]);
        assert_eq!(st.release_front(), 0, "10 still waits for a and b");
        st.confirm(&a, [1; KEY_LEN]);
        st.confirm(&b, [3; KEY_LEN]);
        assert_eq!(st.release_front(), 0, "10 still waits for b");
        st.confirm(&b, [1; KEY_LEN]);
        assert_eq!(st.release_front(), 2, "10 and 11");
        assert_eq!(st.head, 12);
        st.insert(12, entry(4, vec![]));
        assert_eq!(st.release_front(), 2, "12 (nobody waits) and 13");
        assert!(st.pending.is_empty() && st.index.is_empty());
        // A gap (numbers reserved before a restart, never used) is passed over in one step
        // and is not a message: freeing it would free an unconfirmed message instead.
        st.insert(14, Entry::gap(70_000));
        st.insert(70_000, entry(5, vec![a.clone()]));
        assert_eq!(st.release_front(), 0);
        assert_eq!(st.head, 70_000);
        st.confirm(&a, [5; KEY_LEN]);
        assert_eq!(st.release_front(), 1);
        // A confirmation of something unknown changes nothing.
        st.confirm(&a, [9; KEY_LEN]);
    }

    #[test]
    fn filters_match_plain_wildcard_and_shared() {
        let mut c = HashMap::new();
        c.insert(Arc::from("data"), vec!["edgex/events/device/#".to_string()]);
        c.insert(
            Arc::from("rules"),
            vec!["$share/g/edgex/events/+/x/#".to_string()],
        );
        let mut m = matching(&c, "edgex/events/device/y/p/d/s");
        m.sort();
        assert_eq!(m, vec![Arc::from("data")]);
        // A shared subscription's consumer waits as its group.
        let mut m = matching(&c, "edgex/events/core/x/p");
        m.sort();
        assert_eq!(m, vec![Arc::<str>::from("$share/g")]);
        assert!(matching(&c, "edgex/system-events/x").is_empty());
    }

    /// The instances of a service consuming as one group: a message waits for the group
    /// once, any member's confirmation releases it, and it keeps waiting while a member
    /// remains.
    #[test]
    fn a_group_waits_once_and_any_member_releases() {
        let group = |c: &str| {
            (
                Arc::<str>::from(c),
                vec!["$share/core-data/edgex/events/device/#".to_string()],
            )
        };
        let mut st = State::default();
        for c in ["data-a", "data-b"] {
            let (c, f) = group(c);
            st.consumers.insert(c, f);
        }
        st.consumers.insert(
            Arc::from("rules"),
            vec!["edgex/events/device/#".to_string()],
        );
        let w: Arc<str> = Arc::from("$share/core-data");
        assert_eq!(st.waiter_of("data-b"), Some(Arc::clone(&w)));
        assert_eq!(
            st.members(&w),
            vec![Arc::<str>::from("data-a"), Arc::from("data-b")]
        );
        let mut waiting = matching(&st.consumers, "edgex/events/device/s/p/d/r");
        waiting.sort();
        assert_eq!(waiting, vec![Arc::clone(&w), Arc::from("rules")]);
        let key = [7u8; KEY_LEN];
        st.insert(
            0,
            Entry {
                key,
                waiting,
                ..Entry::released()
            },
        );
        // Member b handled it (member a never saw it): the group is done, rules is not.
        let b = st.waiter_of("data-b").unwrap();
        st.confirm(&b, key);
        assert_eq!(st.pending[&0].waiting, vec![Arc::<str>::from("rules")]);
        assert_eq!(st.release_front(), 0);
        st.confirm(&Arc::from("rules"), key);
        assert_eq!(st.release_front(), 1);
    }
}
