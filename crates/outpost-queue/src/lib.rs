//! The store-and-forward queue of one export destination: durable, encrypted, bounded.
//!
//! A queue is a directory with one append-only log per [`Priority`]; each log is a series of
//! segment files of encrypted records (see `docs/queue.md` for the format, the invariants
//! and what survives which failure). In short:
//!
//! - [`Queue::append`] returns once the items are written and, with [`SyncPolicy::Batch`]
//!   (the default), synced: an item acknowledged to its producer survives power loss.
//! - Every item gets a sequence number, increasing per priority and never reused, even
//!   across restarts and lost writes. A receiver that remembers the highest number it stored
//!   per (queue incarnation, priority) drops every redelivery.
//! - [`Queue::peek`] reads a batch from the head without consuming it; [`Queue::ack`]
//!   consumes it. A batch that was not acknowledged is read again: delivery is
//!   at-least-once and in order per priority, high priority first.
//! - The queue never holds more than [`Config::max_bytes`] of segment files. When an append
//!   does not fit, [`Overflow`] says whether the oldest data goes (lowest priority first) or
//!   the append is refused; either way it is counted. Items older than the TTL are dropped
//!   and counted. Nothing is dropped for any other reason.
//! - A corrupt record is skipped and counted; an append cut short by a crash is cut on open.
//!   Neither stops the queue.

mod format;
mod head;
mod stream;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stream::{Cursor, Stream};

use format::SEGMENT_HEADER;

/// Priorities, highest first: each has its own log, sequence numbers and order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Alerts: sent before anything else, dropped last.
    High = 0,
    /// Telemetry and aggregates.
    Normal = 1,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::High, Priority::Normal];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What happens when an append does not fit in [`Config::max_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop the oldest segment of the lowest priority that has data (counted).
    #[default]
    DropOldest,
    /// Refuse the append (counted); the producer keeps the data.
    RefuseNew,
}

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Every append is synced before it returns: survives power loss.
    #[default]
    Batch,
    /// Left to the operating system: survives a crash of the process, not power loss.
    None,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Bound on the segment files of all priorities together.
    pub max_bytes: u64,
    /// Size at which a segment is closed and a new one started; 0 = an eighth of
    /// `max_bytes`, between 16 KiB and 16 MiB. Dropping for overflow frees whole segments.
    pub segment_bytes: u64,
    /// Largest item.
    pub max_item_bytes: u32,
    /// Items older than this are dropped (counted).
    pub ttl: Option<Duration>,
    pub overflow: Overflow,
    pub sync: SyncPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            segment_bytes: 0,
            max_item_bytes: 1024 * 1024,
            ttl: None,
            overflow: Overflow::DropOldest,
            sync: SyncPolicy::Batch,
        }
    }
}

impl Config {
    fn segment_bytes(&self) -> u64 {
        if self.segment_bytes > 0 {
            self.segment_bytes
        } else {
            (self.max_bytes / 8).clamp(16 * 1024, 16 * 1024 * 1024)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} of {size} bytes can never fit (limit {limit} bytes)")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("queue full: {needed} bytes needed, {free} free of {max} (overflow policy refuse-new)")]
    Full { needed: u64, free: u64, max: u64 },
    #[error("queue {dir}: {why}")]
    Meta { dir: PathBuf, why: String },
}

impl QueueError {
    /// Whether the disk (not the queue's own bound) ran out of space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, QueueError::Io { source, .. }
            if source.raw_os_error() == Some(28)
                || matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded))
    }
}

/// An item read from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub seq: u64,
    /// When it was appended (milliseconds since the Unix epoch, as given to `append`).
    pub enqueued_ms: u64,
    pub data: Vec<u8>,
}

/// Items read together from one priority, to be acknowledged together.
#[derive(Debug)]
pub struct Batch {
    pub priority: Priority,
    pub items: Vec<Item>,
    end: Cursor,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence number of the first item; the others follow without gaps.
    pub first_seq: u64,
    /// Items dropped to make room (overflow policy drop-oldest).
    pub dropped: u64,
}

/// Totals since the queue was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub appended: u64,
    pub acked: u64,
    /// Items dropped to make room for new ones.
    pub dropped_overflow: u64,
    /// Items dropped because they outlived the TTL.
    pub expired: u64,
    /// Appends refused because the queue was full (refuse-new).
    pub refused: u64,
    /// Corrupt regions skipped (each may have held one or more records) and their bytes.
    pub corrupt_records: u64,
    pub corrupt_bytes: u64,
    /// Bytes of appends cut short by a crash, cut when the queue was opened.
    pub truncated_bytes: u64,
    /// Appends that failed because the disk was full.
    pub disk_full: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityStats {
    pub priority: Priority,
    /// Items not yet consumed.
    pub items: u64,
    pub bytes: u64,
    /// When the oldest unconsumed item was appended.
    pub oldest_ms: Option<u64>,
    /// The next sequence number.
    pub next_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub incarnation: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub priorities: Vec<PriorityStats>,
    pub counters: Counters,
}

/// A durable queue; see the crate documentation.
#[derive(Debug)]
pub struct Queue {
    dir: PathBuf,
    config: Config,
    incarnation: u64,
    streams: Vec<Stream>,
    counters: Counters,
}

const META_MAGIC: &[u8; 8] = b"OPQMETA1";

impl Queue {
    /// Opens (or creates) the queue in `dir`, encrypted with `master_key`.
    pub fn open(dir: &Path, master_key: &[u8; 32], config: Config) -> Result<Self, QueueError> {
        let err = |source: io::Error| QueueError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        if config.max_bytes < 4 * (SEGMENT_HEADER as u64) {
            return Err(QueueError::Meta {
                dir: dir.to_path_buf(),
                why: format!("max_bytes {} is too small", config.max_bytes),
            });
        }
        fs::create_dir_all(dir).map_err(err)?;
        let incarnation = load_or_create_incarnation(dir, master_key)?;
        let mut counters = Counters::default();
        let mut streams = Vec::new();
        for p in Priority::ALL {
            let sub = dir.join(format!("p{}", p.index()));
            streams.push(
                Stream::open(
                    sub,
                    p as u8,
                    master_key,
                    config.max_item_bytes.saturating_add(format::TAG as u32),
                    config.sync,
                    &mut counters,
                )
                .map_err(err)?,
            );
        }
        let queue = Self {
            dir: dir.to_path_buf(),
            config,
            incarnation,
            streams,
            counters,
        };
        // A smaller bound than before drops nothing by itself: appends make room per the
        // overflow policy as usual.
        if queue.bytes() > queue.config.max_bytes {
            tracing::warn!(dir = %dir.display(), bytes = queue.bytes(), max_bytes = queue.config.max_bytes, "queue holds more than its bound; new items are taken per the overflow policy as it drains");
        }
        Ok(queue)
    }

    fn io(&self, source: io::Error) -> QueueError {
        QueueError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Identifies this queue's sequence numbers: a new queue (its directory lost or
    /// removed) starts again at 0 with a new incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Bytes of segment files.
    pub fn bytes(&self) -> u64 {
        self.streams.iter().map(Stream::bytes).sum()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Appends `items` as one unit; on return they are durable per the sync policy.
    pub fn append<T: AsRef<[u8]>>(
        &mut self,
        priority: Priority,
        items: &[T],
        now_ms: u64,
    ) -> Result<Appended, QueueError> {
        let max_item = u64::from(self.config.max_item_bytes);
        if let Some(big) = items
            .iter()
            .map(|i| i.as_ref().len() as u64)
            .find(|&l| l > max_item)
        {
            return Err(QueueError::TooLarge {
                what: "an item",
                size: big,
                limit: max_item,
            });
        }
        if items.is_empty() {
            let next_seq = self.streams[priority.index()].next_seq;
            return Ok(Appended {
                first_seq: next_seq,
                dropped: 0,
            });
        }
        self.expire(now_ms)?;
        let bytes: u64 = items
            .iter()
            .map(|i| format::frame_size(i.as_ref().len()))
            .sum();
        // Room for the items and, if the append opens a segment, its header.
        let needed = bytes + SEGMENT_HEADER as u64;
        if needed > self.config.max_bytes {
            return Err(QueueError::TooLarge {
                what: "an append",
                size: needed,
                limit: self.config.max_bytes,
            });
        }
        let dropped = self.make_room(needed)?;
        let segment_bytes = self.config.segment_bytes();
        let mut retried = false;
        loop {
            match self.streams[priority.index()].append(items, now_ms, segment_bytes) {
                Ok(first_seq) => {
                    self.counters.appended += items.len() as u64;
                    return Ok(Appended { first_seq, dropped });
                }
                Err(e) => {
                    let e = self.io(e);
                    // The disk is full before the bound is: with drop-oldest, make room on
                    // the disk too, once.
                    if e.is_disk_full() && self.config.overflow == Overflow::DropOldest && !retried
                    {
                        retried = true;
                        let freed = self.drop_oldest(needed, None)?;
                        if freed > 0 {
                            tracing::warn!(dir = %self.dir.display(), dropped = freed, "disk full: dropped the oldest queued items");
                            continue;
                        }
                    }
                    if e.is_disk_full() {
                        self.counters.disk_full += 1;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Makes `needed` bytes fit under the bound per the overflow policy.
    fn make_room(&mut self, needed: u64) -> Result<u64, QueueError> {
        let total = self.bytes();
        if total + needed <= self.config.max_bytes {
            return Ok(0);
        }
        match self.config.overflow {
            Overflow::RefuseNew => {
                self.counters.refused += 1;
                Err(QueueError::Full {
                    needed,
                    free: self.config.max_bytes.saturating_sub(total),
                    max: self.config.max_bytes,
                })
            }
            Overflow::DropOldest => {
                let over = total + needed - self.config.max_bytes;
                let dropped = self.drop_oldest(over, Some(needed))?;
                if self.bytes() + needed > self.config.max_bytes {
                    return Err(QueueError::TooLarge {
                        what: "an append",
                        size: needed,
                        limit: self.config.max_bytes,
                    });
                }
                Ok(dropped)
            }
        }
    }

    /// Drops oldest segments, lowest priority first, until `free` bytes were freed (or,
    /// with `needed`, until `needed` fits under the bound); returns the items dropped.
    fn drop_oldest(&mut self, free: u64, needed: Option<u64>) -> Result<u64, QueueError> {
        let start = self.bytes();
        let mut dropped = 0;
        loop {
            let now = self.bytes();
            let done = match needed {
                Some(n) => now + n <= self.config.max_bytes,
                None => start.saturating_sub(now) >= free,
            };
            if done {
                break;
            }
            let Some(victim) = (0..self.streams.len())
                .rev()
                .find(|&i| self.streams[i].droppable())
            else {
                break;
            };
            let n = self.streams[victim].drop_front().map_err(|e| self.io(e))?;
            dropped += n;
            self.counters.dropped_overflow += n;
            if n > 0 {
                tracing::warn!(dir = %self.dir.display(), priority = Priority::ALL[victim].as_str(), items = n, "queue full: dropped the oldest items (overflow policy drop-oldest)");
            }
        }
        Ok(dropped)
    }

    /// Drops items older than the TTL: whole segments at once, and single items at the head
    /// when they are read. Returns the items dropped here.
    pub fn expire(&mut self, now_ms: u64) -> Result<u64, QueueError> {
        let Some(cutoff) = self.cutoff(now_ms) else {
            return Ok(0);
        };
        let mut expired = 0;
        for i in 0..self.streams.len() {
            expired += self.streams[i]
                .expire_segments(cutoff)
                .map_err(|e| self.io(e))?;
        }
        self.counters.expired += expired;
        if expired > 0 {
            tracing::warn!(dir = %self.dir.display(), items = expired, "dropped queued items older than the TTL");
        }
        Ok(expired)
    }

    fn cutoff(&self, now_ms: u64) -> Option<u64> {
        self.config
            .ttl
            .map(|ttl| now_ms.saturating_sub(ttl.as_millis() as u64))
    }

    /// The next batch, highest priority first: up to `max_items` items and about
    /// `max_bytes` of data (always at least one item). Nothing is consumed until
    /// [`Queue::ack`].
    pub fn peek(
        &mut self,
        max_items: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<Option<Batch>, QueueError> {
        let cutoff = self.cutoff(now_ms);
        for (i, p) in Priority::ALL.into_iter().enumerate() {
            let before = self.counters.expired;
            let read =
                self.streams[i].read(max_items.max(1), max_bytes, cutoff, &mut self.counters);
            let (items, end) = read.map_err(|e| self.io(e))?;
            let expired = self.counters.expired - before;
            if expired > 0 {
                tracing::warn!(dir = %self.dir.display(), items = expired, "dropped queued items older than the TTL");
            }
            if !items.is_empty() {
                return Ok(Some(Batch {
                    priority: p,
                    items,
                    end,
                }));
            }
        }
        Ok(None)
    }

    /// Consumes a batch returned by [`Queue::peek`]: its items will not be read again.
    pub fn ack(&mut self, batch: &Batch) -> Result<(), QueueError> {
        let i = batch.priority.index();
        self.streams[i].advance(batch.end).map_err(|e| self.io(e))?;
        self.counters.acked += batch.items.len() as u64;
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        Stats {
            incarnation: self.incarnation,
            bytes: self.bytes(),
            max_bytes: self.config.max_bytes,
            priorities: self
                .streams
                .iter()
                .zip(Priority::ALL)
                .map(|(s, priority)| {
                    let items = s.items();
                    PriorityStats {
                        priority,
                        items,
                        bytes: s.bytes(),
                        oldest_ms: if items > 0 { s.head_ms() } else { None },
                        next_seq: s.next_seq,
                    }
                })
                .collect(),
            counters: self.counters,
        }
    }

    /// Unconsumed items of all priorities.
    pub fn len(&self) -> u64 {
        self.streams.iter().map(Stream::items).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Re-encrypts the queue in `dir`, which no process has open, from master key `old` to
/// `new`: every segment (each through a synced temporary file renamed over it), then the
/// key check. A crash at any point leaves each segment whole under one of the two keys and
/// the key check under the old one until every segment is done; running it again with the
/// same keys finishes. Returns the records re-encrypted.
pub fn rekey(dir: &Path, old: &[u8; 32], new: &[u8; 32]) -> Result<u64, QueueError> {
    let io_err = |source| QueueError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let meta = dir.join("meta");
    let b = match fs::read(&meta) {
        Ok(b) if b.len() == 32 && &b[..8] == META_MAGIC => b,
        Ok(_) => {
            return Err(QueueError::Meta {
                dir: dir.to_path_buf(),
                why: format!("{} is not a queue's meta file", meta.display()),
            });
        }
        // Never opened: nothing to re-encrypt.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(e)),
    };
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[8..16]);
    let incarnation = u64::from_le_bytes(w);
    if b[16..32] == key_check(new, incarnation) {
        return Ok(0);
    }
    if b[16..32] != key_check(old, incarnation) {
        return Err(QueueError::Meta {
            dir: dir.to_path_buf(),
            why: "the queue was written with another key than the one being replaced".into(),
        });
    }
    let mut records = 0;
    for p in Priority::ALL {
        let sub = dir.join(format!("p{}", p.index()));
        let entries = match fs::read_dir(&sub) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_err)?.path();
            if path.extension().is_some_and(|e| e == "seg") {
                records += stream::rekey_segment(&path, old, new)
                    .map_err(io_err)?
                    .unwrap_or(0);
            }
        }
    }
    write_meta(dir, incarnation, new)?;
    Ok(records)
}

/// Writes the queue's meta file (its incarnation and the key check of `master`) through a
/// synced temporary file renamed over it.
fn write_meta(dir: &Path, incarnation: u64, master: &[u8; 32]) -> Result<(), QueueError> {
    let io_err = |source| QueueError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let mut b = META_MAGIC.to_vec();
    b.extend_from_slice(&incarnation.to_le_bytes());
    b.extend_from_slice(&key_check(master, incarnation));
    let tmp = dir.join("meta.tmp");
    {
        use std::io::Write as _;
        let mut f = fs::File::create(&tmp).map_err(io_err)?;
        f.write_all(&b)
            .and_then(|()| f.sync_all())
            .map_err(io_err)?;
    }
    fs::rename(&tmp, dir.join("meta")).map_err(io_err)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err)
}

/// The key check stored with the incarnation: a wrong key is refused before any segment is
/// read (and, worse, cut as if its records were torn).
fn key_check(master: &[u8; 32], incarnation: u64) -> [u8; 16] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, master);
    let mut msg = b"outpost-queue key check".to_vec();
    msg.extend_from_slice(&incarnation.to_le_bytes());
    let tag = ring::hmac::sign(&key, &msg);
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag.as_ref()[..16]);
    out
}

fn load_or_create_incarnation(dir: &Path, master: &[u8; 32]) -> Result<u64, QueueError> {
    let path = dir.join("meta");
    let bad = |why: String| QueueError::Meta {
        dir: dir.to_path_buf(),
        why,
    };
    let io_err = |source| QueueError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    match fs::read(&path) {
        Ok(b) => {
            if b.len() != 32 || &b[..8] != META_MAGIC {
                return Err(bad(format!(
                    "{} is not a queue's meta file; move the directory away to start a new queue",
                    path.display()
                )));
            }
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[8..16]);
            let incarnation = u64::from_le_bytes(w);
            if b[16..32] != key_check(master, incarnation) {
                return Err(bad(
                    "the queue was written with another key (the key in secrets/ must be the one it was created with)"
                        .into(),
                ));
            }
            Ok(incarnation)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut w = [0u8; 8];
            getrandom::fill(&mut w).map_err(|e| bad(format!("no randomness: {e}")))?;
            let incarnation = u64::from_le_bytes(w) >> 1;
            write_meta(dir, incarnation, master)?;
            Ok(incarnation)
        }
        Err(e) => Err(io_err(e)),
    }
}
