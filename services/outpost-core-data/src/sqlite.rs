//! The SQLite (SQLCipher) event store.
//!
//! Layout:
//! - `names(id, name)`: device, profile, source, resource and unit names, stored once.
//! - `events(seq, id, device, profile, source, origin, tags, first_reading, readings)`: one
//!   row per event; its readings are the contiguous range `first_reading ..
//!   first_reading + readings` of `readings.seq`. Indexed by `(device, origin)` and, unique,
//!   by `(origin, id)`: a redelivered or retried event carries the same id and origin, so
//!   that index is the duplicate check.
//! - `event_ids(bucket, id, seq)`: finds an event by id alone. Keys are grouped in buckets of
//!   consecutive events (`seq >> 13`), so new ids land in one small, cached part of the
//!   index; a lookup probes the buckets newest first.
//! - `readings(seq, id, origin, device, resource, profile, value_type, units, value, num,
//!   blob, media_type, object, tags)`: `num` is the numeric view used by aggregates. Indexed
//!   by `(resource, origin)` only; queries by device or time go through the events.
//! - `device_stats(device, events, readings)`, `series_stats(device, resource, readings)`:
//!   counts kept in the same transactions as the rows, so totals never need a table scan.
//!
//! Why so few indexes: every index adds a B-tree insert per row, and, worse for an
//! encrypted database, every index page a commit touches is encrypted and written again.
//! Indexes whose new keys arrive in order (origins, sequence numbers) touch few pages; a
//! random key (a UUID) touches a page per row once the index outgrows the cache, which is
//! why ids are bucketed.
//!
//! One writer thread owns all writes. It merges queued appends into one transaction (one
//! fsync for many events), and runs deletions in bounded chunks between appends, so ingest
//! never waits long behind retention. Readers use their own connections (WAL), and a
//! background thread checkpoints the WAL so commits do not.
//!
//! Invariants: within a run, reading sequence numbers only grow (a rolled-back transaction
//! leaves a gap); after a restart numbering continues after the highest stored one, so numbers
//! of deleted newest events may come back, which is harmless because nothing outside the store
//! uses them. An event, its readings, its id entry and its counts are written and deleted in
//! one transaction; a name id is cached only after the transaction that created it committed.
//! Event ids are unique per origin (`(origin, id)`) and, for events stored close together,
//! per id alone (the same id in one `event_ids` bucket is a duplicate).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use outpost_contracts::event::{Event, Reading, ReadingValue, Tags};
use outpost_contracts::value::ValueType;
use outpost_storage::rusqlite::{
    self, Connection, ErrorCode, OptionalExtension as _, Transaction, params,
};
use outpost_storage::{Db, JoinOnDrop, Migration};
use tokio::sync::{mpsc, oneshot};

use crate::store::{
    Aggregate, Deleted, DeviceSummary, EventStore, IngestEvent, Outcome, Query, SeriesAggregate,
    StoreError, Totals,
};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "events and readings",
    sql: "CREATE TABLE names (
              id INTEGER PRIMARY KEY,
              name TEXT NOT NULL UNIQUE
          );
          CREATE TABLE events (
              seq INTEGER PRIMARY KEY,
              id BLOB NOT NULL,
              device INTEGER NOT NULL,
              profile INTEGER NOT NULL,
              source INTEGER NOT NULL,
              origin INTEGER NOT NULL,
              tags TEXT,
              first_reading INTEGER NOT NULL,
              readings INTEGER NOT NULL
          );
          CREATE UNIQUE INDEX events_origin_id ON events (origin, id);
          CREATE INDEX events_device_origin ON events (device, origin);
          CREATE TABLE event_ids (
              bucket INTEGER NOT NULL,
              id BLOB NOT NULL,
              seq INTEGER NOT NULL,
              PRIMARY KEY (bucket, id)
          ) WITHOUT ROWID;
          CREATE TABLE readings (
              seq INTEGER PRIMARY KEY,
              id BLOB NOT NULL,
              origin INTEGER NOT NULL,
              device INTEGER NOT NULL,
              resource INTEGER NOT NULL,
              profile INTEGER NOT NULL,
              value_type INTEGER NOT NULL,
              units INTEGER,
              value TEXT,
              num REAL,
              blob BLOB,
              media_type TEXT,
              object TEXT,
              tags TEXT
          );
          CREATE INDEX readings_resource_origin ON readings (resource, origin);
          CREATE TABLE device_stats (
              device INTEGER PRIMARY KEY,
              events INTEGER NOT NULL,
              readings INTEGER NOT NULL
          );
          CREATE TABLE series_stats (
              device INTEGER NOT NULL,
              resource INTEGER NOT NULL,
              readings INTEGER NOT NULL,
              PRIMARY KEY (device, resource)
          ) WITHOUT ROWID;",
}];

/// Events per `event_ids` bucket (as a shift of the event sequence number).
const BUCKET_SHIFT: i64 = 13;

/// Appends merged into one transaction at most.
const MAX_MERGED_EVENTS: usize = 4_000;

enum Job {
    Append {
        events: Arc<[IngestEvent]>,
        reply: oneshot::Sender<Result<Vec<Outcome>, StoreError>>,
    },
    Delete {
        what: Delete,
        reply: oneshot::Sender<Result<Deleted, StoreError>>,
    },
}

#[derive(Debug, Clone)]
enum Delete {
    Event(uuid::Uuid),
    DeviceChunk { device: String, chunk: u64 },
    BeforeChunk { cutoff: i64, chunk: u64 },
    TrimChunk { keep: u64, chunk: u64 },
}

pub struct SqliteEventStore {
    db: Db,
    jobs: mpsc::Sender<Job>,
    /// The last write failure, cleared by the next successful commit.
    failing: Arc<std::sync::Mutex<Option<String>>>,
    /// Declared after `jobs`, so dropping the store first closes the job queue (the writer
    /// finishes what it holds and returns) and then waits for the writer thread.
    _writer: JoinOnDrop,
}

outpost_kit::metric_names! {
    /// Metric names of the writer thread.
    pub struct WriterMetrics {
        /// Events per committed batch.
        batch_events = "commit_batch_events",
        commit_seconds = "commit_duration_seconds",
    }
}

impl SqliteEventStore {
    /// Starts the writer thread over `db`.
    pub fn start(db: Db, metrics: WriterMetrics) -> Result<Self, StoreError> {
        let next_seq = db.write_blocking(|c| {
            c.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM readings", [], |r| {
                r.get::<_, i64>(0)
            })
        })?;
        let (tx, rx) = mpsc::channel(256);
        let writer_db = db.clone();
        let failing: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let writer_failing = Arc::clone(&failing);
        let writer = std::thread::Builder::new()
            .name("core-data-writer".into())
            .spawn(move || {
                let mut w = Writer {
                    names: HashMap::new(),
                    pending_names: Vec::new(),
                    next_seq,
                    metrics,
                    failing: writer_failing,
                };
                w.run(&writer_db, rx);
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            db,
            jobs: tx,
            failing,
            _writer: JoinOnDrop::new(writer),
        })
    }

    async fn delete(&self, what: Delete) -> Result<Deleted, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Delete { what, reply })
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }

    /// Repeats a chunked deletion until it removes nothing; returns readings deleted.
    async fn delete_all(&self, make: impl Fn() -> Delete) -> Result<u64, StoreError> {
        let mut readings = 0;
        loop {
            let d = self.delete(make()).await?;
            if d.events == 0 {
                return Ok(readings);
            }
            readings += d.readings;
        }
    }
}

/// Errors caused by the data of one event (it can never be stored), as opposed to the
/// database being unable to take writes now. Anything not known to be about the data is
/// treated as the database's problem: the events are held and retried, never refused.
fn is_data_error(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch
        ),
        rusqlite::Error::ToSqlConversionFailure(_)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..)
        | rusqlite::Error::NulError(_) => true,
        _ => false,
    }
}

fn unavailable(e: &rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

struct Writer {
    names: HashMap<String, i64>,
    /// Names inserted by the open transaction: cached only once it commits.
    pending_names: Vec<(String, i64)>,
    next_seq: i64,
    metrics: WriterMetrics,
    failing: Arc<std::sync::Mutex<Option<String>>>,
}

type Pending = (
    Arc<[IngestEvent]>,
    oneshot::Sender<Result<Vec<Outcome>, StoreError>>,
);

impl Writer {
    fn run(&mut self, db: &Db, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.blocking_recv() {
            match job {
                Job::Append { events, reply } => {
                    let mut merged = events.len();
                    let mut batch = vec![(events, reply)];
                    let mut other = None;
                    while merged < MAX_MERGED_EVENTS {
                        match rx.try_recv() {
                            Ok(Job::Append { events, reply }) => {
                                merged += events.len();
                                batch.push((events, reply));
                            }
                            Ok(job) => {
                                other = Some(job);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    db.write_blocking(|c| self.append(c, batch));
                    if let Some(Job::Delete { what, reply }) = other {
                        let r = db.write_blocking(|c| self.delete(c, &what));
                        let _ = reply.send(r);
                    }
                }
                Job::Delete { what, reply } => {
                    let r = db.write_blocking(|c| self.delete(c, &what));
                    let _ = reply.send(r);
                }
            }
        }
        tracing::debug!("core-data writer stopped");
    }

    fn name_id(&mut self, tx: &Transaction<'_>, name: &str) -> rusqlite::Result<i64> {
        if let Some(id) = self.names.get(name) {
            return Ok(*id);
        }
        if let Some((_, id)) = self.pending_names.iter().find(|(n, _)| n == name) {
            return Ok(*id);
        }
        let existing: Option<i64> = tx
            .prepare_cached("SELECT id FROM names WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            self.names.insert(name.to_string(), id);
            return Ok(id);
        }
        tx.prepare_cached("INSERT INTO names (name) VALUES (?1)")?
            .execute([name])?;
        let id = tx.last_insert_rowid();
        self.pending_names.push((name.to_string(), id));
        Ok(id)
    }

    fn set_failing(&self, why: Option<String>) {
        *self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    fn committed(&mut self) {
        for (n, id) in self.pending_names.drain(..) {
            self.names.insert(n, id);
        }
        // Bound the cache: names are few in practice, but a flood of distinct names must
        // not grow memory without limit.
        if self.names.len() > 100_000 {
            self.names.clear();
        }
    }

    fn rolled_back(&mut self) {
        self.pending_names.clear();
    }

    fn append(&mut self, c: &mut Connection, batch: Vec<Pending>) {
        let started = Instant::now();
        let total: usize = batch.iter().map(|(e, _)| e.len()).sum();
        match self.append_all(c, &batch) {
            Ok(outcomes) => {
                self.committed();
                self.set_failing(None);
                metrics::histogram!(self.metrics.batch_events).record(total as f64);
                metrics::histogram!(self.metrics.commit_seconds)
                    .record(started.elapsed().as_secs_f64());
                for ((_, reply), out) in batch.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(out));
                }
            }
            Err(e) if !is_data_error(&e) => {
                self.rolled_back();
                self.set_failing(Some(e.to_string()));
                tracing::error!(error = %e, events = total, "cannot store events; they will be retried");
                for (_, reply) in batch {
                    let _ = reply.send(Err(unavailable(&e)));
                }
            }
            Err(e) => {
                // Something in the batch cannot be stored: store event by event so one bad
                // event cannot hold back the others. If the database fails meanwhile, the
                // whole call fails and is retried; events stored by then come back as
                // duplicates, which is safe.
                self.rolled_back();
                tracing::warn!(error = %e, "a batch failed; storing its events one by one");
                for (events, reply) in batch {
                    let mut outs = Vec::with_capacity(events.len());
                    let mut failed = None;
                    for ie in events.iter() {
                        match self.append_one(c, ie) {
                            Ok(o) => {
                                self.committed();
                                outs.push(o);
                            }
                            Err(e) if is_data_error(&e) => {
                                self.rolled_back();
                                outs.push(Outcome::Refused(e.to_string()));
                            }
                            Err(e) => {
                                self.rolled_back();
                                failed = Some(unavailable(&e));
                                break;
                            }
                        }
                    }
                    let _ = reply.send(match failed {
                        Some(err) => Err(err),
                        None => Ok(outs),
                    });
                }
            }
        }
    }

    fn append_all(
        &mut self,
        c: &mut Connection,
        batch: &[Pending],
    ) -> rusqlite::Result<Vec<Vec<Outcome>>> {
        let tx = c.transaction()?;
        let mut stats = Stats::default();
        let mut all = Vec::with_capacity(batch.len());
        for (events, _) in batch {
            let mut outs = Vec::with_capacity(events.len());
            for ie in events.iter() {
                outs.push(self.insert(&tx, ie, &mut stats)?);
            }
            all.push(outs);
        }
        write_stats(&tx, &stats)?;
        tx.commit()?;
        Ok(all)
    }

    fn append_one(&mut self, c: &mut Connection, ie: &IngestEvent) -> rusqlite::Result<Outcome> {
        let tx = c.transaction()?;
        let mut stats = Stats::default();
        let out = self.insert(&tx, ie, &mut stats)?;
        write_stats(&tx, &stats)?;
        tx.commit()?;
        Ok(out)
    }

    fn insert(
        &mut self,
        tx: &Transaction<'_>,
        ie: &IngestEvent,
        stats: &mut Stats,
    ) -> rusqlite::Result<Outcome> {
        let ev = &ie.event;
        let Ok(id) = uuid::Uuid::parse_str(&ev.id) else {
            return Ok(Outcome::Refused(format!(
                "event id '{}' is not a UUID",
                ev.id
            )));
        };
        let device = self.name_id(tx, &ev.device_name)?;
        let profile = self.name_id(tx, &ev.profile_name)?;
        let source = self.name_id(tx, &ev.source_name)?;
        let first = self.next_seq;
        let n = i64::try_from(ev.readings.len()).unwrap_or(i64::MAX);
        let inserted = tx
            .prepare_cached(
                "INSERT INTO events (id, device, profile, source, origin, tags, first_reading, readings)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(origin, id) DO NOTHING",
            )?
            .execute(params![id.as_bytes().as_slice(), device, profile, source, ev.origin, tags_json(&ev.tags), first, n])?;
        if inserted == 0 {
            return Ok(Outcome::Duplicate);
        }
        let seq = tx.last_insert_rowid();
        let indexed = tx
            .prepare_cached(
                "INSERT INTO event_ids (bucket, id, seq) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?
            .execute(params![seq >> BUCKET_SHIFT, id.as_bytes().as_slice(), seq])?;
        if indexed == 0 {
            // The same id was stored recently with another origin: still a duplicate.
            tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?
                .execute([seq])?;
            return Ok(Outcome::Duplicate);
        }
        let mut st = tx.prepare_cached(
            "INSERT INTO readings (seq, id, origin, device, resource, profile, value_type, units,
                                   value, num, blob, media_type, object, tags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        for (i, r) in ev.readings.iter().enumerate() {
            let rid = uuid::Uuid::parse_str(&r.id).unwrap_or_else(|_| uuid::Uuid::new_v4());
            let resource = self.name_id(tx, &r.resource_name)?;
            let units = if r.units.is_empty() {
                None
            } else {
                Some(self.name_id(tx, &r.units)?)
            };
            let num = ie.nums.get(i).copied().flatten();
            let cols = Columns::of(&r.value);
            st.execute(params![
                self.next_seq,
                rid.as_bytes().as_slice(),
                r.origin,
                device,
                resource,
                profile,
                i64::from(r.value_type.code()),
                units,
                cols.value,
                num,
                cols.blob,
                cols.media_type,
                cols.object,
                tags_json(&r.tags),
            ])?;
            self.next_seq += 1;
            *stats.series.entry((device, resource)).or_default() += 1;
        }
        let e = stats.devices.entry(device).or_default();
        e.0 += 1;
        e.1 += n;
        Ok(Outcome::Stored)
    }

    fn delete(&mut self, c: &mut Connection, what: &Delete) -> Result<Deleted, StoreError> {
        let tx = c.transaction()?;
        let deleted = match what {
            Delete::Event(id) => match find_event(&tx, id)? {
                None => Deleted::default(),
                Some(seq) => {
                    let ev: (i64, i64, i64, i64, Vec<u8>) = tx.query_row(
                        "SELECT seq, device, first_reading, readings, id FROM events WHERE seq = ?1",
                        [seq],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                    )?;
                    delete_events(&tx, &[ev])?
                }
            },
            Delete::DeviceChunk { device, chunk } => {
                let dev: Option<i64> = tx
                    .query_row("SELECT id FROM names WHERE name = ?1", [device], |r| {
                        r.get(0)
                    })
                    .optional()?;
                match dev {
                    None => Deleted::default(),
                    Some(dev) => {
                        let evs = select_events(
                            &tx,
                            "SELECT seq, device, first_reading, readings, id FROM events WHERE device = ?1 ORDER BY origin LIMIT 1000",
                            params![dev],
                            *chunk,
                        )?;
                        delete_events(&tx, &evs)?
                    }
                }
            }
            Delete::BeforeChunk { cutoff, chunk } => {
                let evs = select_events(
                    &tx,
                    "SELECT seq, device, first_reading, readings, id FROM events WHERE origin < ?1 ORDER BY origin LIMIT 1000",
                    params![cutoff],
                    *chunk,
                )?;
                delete_events(&tx, &evs)?
            }
            Delete::TrimChunk { keep, chunk } => {
                let total: i64 = tx.query_row(
                    "SELECT COALESCE(SUM(readings), 0) FROM device_stats",
                    [],
                    |r| r.get(0),
                )?;
                let total = u64::try_from(total).unwrap_or(0);
                if total <= *keep {
                    Deleted::default()
                } else {
                    let excess = (total - keep).min(*chunk);
                    let evs = select_events(
                        &tx,
                        "SELECT seq, device, first_reading, readings, id FROM events ORDER BY seq LIMIT 1000",
                        params![],
                        excess,
                    )?;
                    delete_events(&tx, &evs)?
                }
            }
        };
        tx.commit()?;
        Ok(deleted)
    }
}

/// The value columns of a reading row.
struct Columns<'a> {
    value: Option<&'a str>,
    blob: Option<&'a [u8]>,
    media_type: Option<&'a str>,
    object: Option<String>,
}

impl<'a> Columns<'a> {
    fn of(v: &'a ReadingValue) -> Self {
        let none = Self {
            value: None,
            blob: None,
            media_type: None,
            object: None,
        };
        match v {
            ReadingValue::Simple(s) => Self {
                value: Some(s),
                ..none
            },
            ReadingValue::Binary { data, media_type } => Self {
                blob: Some(data),
                media_type: Some(media_type),
                ..none
            },
            ReadingValue::Object(o) => Self {
                object: Some(o.to_string()),
                ..none
            },
            ReadingValue::Null => none,
        }
    }
}

/// A stored event as deletions see it: `(seq, device, first_reading, readings, id)`.
type EventRow = (i64, i64, i64, i64, Vec<u8>);

/// Events from `sql` until their readings reach `budget` (at least one event).
fn select_events(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    budget: u64,
) -> rusqlite::Result<Vec<EventRow>> {
    let mut st = tx.prepare_cached(sql)?;
    let rows = st.query_map(params, |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })?;
    let mut out = Vec::new();
    let mut sum = 0u64;
    for row in rows {
        let ev: EventRow = row?;
        let n = u64::try_from(ev.3).unwrap_or(0);
        if !out.is_empty() && sum + n > budget {
            break;
        }
        sum += n;
        out.push(ev);
    }
    Ok(out)
}

/// The sequence number of the event with `id`: its id entry, newest bucket first.
fn find_event(c: &Connection, id: &uuid::Uuid) -> rusqlite::Result<Option<i64>> {
    // Two subqueries: SQLite answers each MIN/MAX from the rowid alone, not by a scan.
    let (lo, hi): (Option<i64>, Option<i64>) = c.query_row(
        "SELECT (SELECT MIN(seq) FROM events), (SELECT MAX(seq) FROM events)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(None);
    };
    let mut st = c.prepare_cached("SELECT seq FROM event_ids WHERE bucket = ?1 AND id = ?2")?;
    let mut bucket = hi >> BUCKET_SHIFT;
    while bucket >= lo >> BUCKET_SHIFT {
        if let Some(seq) = st
            .query_row(params![bucket, id.as_bytes().as_slice()], |r| r.get(0))
            .optional()?
        {
            return Ok(Some(seq));
        }
        bucket -= 1;
    }
    Ok(None)
}

/// Deletes events with their readings and id entries, and keeps the counts right.
fn delete_events(tx: &Transaction<'_>, evs: &[EventRow]) -> rusqlite::Result<Deleted> {
    let mut stats = Stats::default();
    let mut deleted = Deleted::default();
    {
        let mut per_resource = tx.prepare_cached(
            "SELECT resource, count(*) FROM readings WHERE seq >= ?1 AND seq < ?2 GROUP BY resource",
        )?;
        let mut del_r = tx.prepare_cached("DELETE FROM readings WHERE seq >= ?1 AND seq < ?2")?;
        let mut del_e = tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
        let mut del_id =
            tx.prepare_cached("DELETE FROM event_ids WHERE bucket = ?1 AND id = ?2 AND seq = ?3")?;
        for (seq, device, first, n, id) in evs {
            let counts = per_resource
                .query_map(params![first, first + n], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            for (resource, count) in counts {
                *stats.series.entry((*device, resource)).or_default() -= count;
            }
            let gone = del_r.execute(params![first, first + n])?;
            del_e.execute([seq])?;
            del_id.execute(params![seq >> BUCKET_SHIFT, id, seq])?;
            let e = stats.devices.entry(*device).or_default();
            e.0 -= 1;
            e.1 -= i64::try_from(gone).unwrap_or(0);
            deleted.events += 1;
            deleted.readings += gone as u64;
        }
    }
    write_stats(tx, &stats)?;
    tx.execute("DELETE FROM device_stats WHERE events <= 0", [])?;
    tx.execute("DELETE FROM series_stats WHERE readings <= 0", [])?;
    Ok(deleted)
}

/// Count changes of one transaction.
#[derive(Debug, Default)]
struct Stats {
    /// Device to (events, readings).
    devices: HashMap<i64, (i64, i64)>,
    /// (device, resource) to readings.
    series: HashMap<(i64, i64), i64>,
}

fn write_stats(tx: &Transaction<'_>, stats: &Stats) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO device_stats (device, events, readings) VALUES (?1, ?2, ?3)
         ON CONFLICT(device) DO UPDATE SET events = events + excluded.events,
                                           readings = readings + excluded.readings",
    )?;
    for (device, (e, r)) in &stats.devices {
        st.execute(params![device, e, r])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO series_stats (device, resource, readings) VALUES (?1, ?2, ?3)
         ON CONFLICT(device, resource) DO UPDATE SET readings = readings + excluded.readings",
    )?;
    for ((device, resource), r) in &stats.series {
        st.execute(params![device, resource, r])?;
    }
    Ok(())
}

fn tags_json(tags: &Option<Tags>) -> Option<String> {
    tags.as_ref()
        .filter(|t| !t.is_empty())
        .and_then(|t| serde_json::to_string(t).ok())
}

fn parse_tags(s: Option<String>) -> Option<Tags> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn uuid_text(bytes: &[u8]) -> String {
    uuid::Uuid::from_slice(bytes)
        .map(|u| u.to_string())
        .unwrap_or_default()
}

// ---- reads ----

const READING_COLUMNS: &str = "r.id, r.origin, dn.name, rn.name, pn.name, r.value_type, un.name,
     r.value, r.blob, r.media_type, r.object, r.tags";
const READING_JOINS: &str = "JOIN names dn ON dn.id = r.device JOIN names rn ON rn.id = r.resource
     JOIN names pn ON pn.id = r.profile LEFT JOIN names un ON un.id = r.units";

fn row_to_reading(r: &rusqlite::Row<'_>) -> rusqlite::Result<Reading> {
    let id: Vec<u8> = r.get(0)?;
    let code: i64 = r.get(5)?;
    let value_type = u8::try_from(code)
        .ok()
        .and_then(ValueType::from_code)
        .unwrap_or(ValueType::String);
    let value: Option<String> = r.get(7)?;
    let blob: Option<Vec<u8>> = r.get(8)?;
    let media: Option<String> = r.get(9)?;
    let object: Option<String> = r.get(10)?;
    let value = match (value, blob, object) {
        (Some(v), _, _) => ReadingValue::Simple(v),
        (_, Some(data), _) => ReadingValue::Binary {
            data,
            media_type: media.unwrap_or_default(),
        },
        (_, _, Some(o)) => {
            ReadingValue::Object(serde_json::from_str(&o).unwrap_or(serde_json::Value::Null))
        }
        _ => ReadingValue::Null,
    };
    Ok(Reading {
        id: uuid_text(&id),
        origin: r.get(1)?,
        device_name: r.get(2)?,
        resource_name: r.get(3)?,
        profile_name: r.get(4)?,
        value_type,
        units: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
        tags: parse_tags(r.get(11)?),
        value,
    })
}

fn name_id(c: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    c.prepare_cached("SELECT id FROM names WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()
}

/// How a query reaches its rows.
enum Plan {
    /// Nothing can match (a named device or resource does not exist).
    Empty,
    /// Through the readings' `(resource, origin)` index: a resource without a device.
    ByResource { clause: String, params: Vec<i64> },
    /// Through the events (by device and/or origin), expanding each event's readings.
    ByEvents {
        clause: String,
        params: Vec<i64>,
        by_device: bool,
    },
}

/// Plans `q`: resolves names to ids and builds the `WHERE` clause (events alias `e`,
/// readings alias `r`) with positional parameters.
fn plan(c: &Connection, q: &Query, readings: bool) -> rusqlite::Result<Plan> {
    let mut params = Vec::new();
    let mut conds = Vec::new();
    let device = match &q.device {
        Some(d) => match name_id(c, d)? {
            Some(id) => Some(id),
            None => return Ok(Plan::Empty),
        },
        None => None,
    };
    let resource = match (&q.resource, readings) {
        (Some(r), true) => match name_id(c, r)? {
            Some(id) => Some(id),
            None => return Ok(Plan::Empty),
        },
        _ => None,
    };
    let mut any_of = Vec::new();
    if readings {
        for name in &q.resources {
            if let Some(id) = name_id(c, name)? {
                any_of.push(id);
            }
        }
        if !q.resources.is_empty() && any_of.is_empty() {
            return Ok(Plan::Empty);
        }
    }
    let by_resource = readings && device.is_none() && resource.is_some() && any_of.is_empty();
    let t = if by_resource { "r" } else { "e" };
    if let Some(d) = device {
        params.push(d);
        conds.push(format!("e.device = ?{}", params.len()));
    }
    if let Some(res) = resource {
        params.push(res);
        // Through the events, each event's readings are a rowid range; `+` keeps SQLite
        // from searching the resource index (all of that resource's readings) instead.
        let col = if by_resource {
            "r.resource"
        } else {
            "+r.resource"
        };
        conds.push(format!("{col} = ?{}", params.len()));
    }
    if !any_of.is_empty() {
        let mut slots = Vec::with_capacity(any_of.len());
        for id in any_of {
            params.push(id);
            slots.push(format!("?{}", params.len()));
        }
        conds.push(format!("+r.resource IN ({})", slots.join(", ")));
    }
    if let Some(s) = q.start {
        params.push(s);
        conds.push(format!("{t}.origin >= ?{}", params.len()));
    }
    if let Some(e) = q.end {
        params.push(e);
        conds.push(format!("{t}.origin <= ?{}", params.len()));
    }
    let clause = if conds.is_empty() {
        "1 = 1".to_string()
    } else {
        conds.join(" AND ")
    };
    Ok(if by_resource {
        Plan::ByResource { clause, params }
    } else {
        Plan::ByEvents {
            clause,
            params,
            by_device: device.is_some(),
        }
    })
}

/// Readings of the selected events, in event order (the outer loop is forced to the
/// events, so their index gives the order and nothing is sorted).
const EVENT_READINGS: &str = "events e CROSS JOIN readings r
     ON r.seq >= e.first_reading AND r.seq < e.first_reading + e.readings";

fn limit_params(params: &[i64], limit: u64, offset: u64) -> Vec<i64> {
    let mut p = params.to_vec();
    p.push(i64::try_from(limit).unwrap_or(i64::MAX));
    p.push(i64::try_from(offset).unwrap_or(i64::MAX));
    p
}

/// Newest first: the order the events' indexes deliver, so no sort is needed.
fn event_order(by_device: bool) -> &'static str {
    if by_device {
        "e.origin DESC, e.seq DESC"
    } else {
        "e.origin DESC, e.id DESC"
    }
}

fn count(c: &Connection, sql: &str, params: &[i64]) -> rusqlite::Result<u64> {
    let n: i64 = c.query_row(sql, rusqlite::params_from_iter(params.iter()), |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn totals_of(c: &Connection, device: Option<&str>) -> rusqlite::Result<Totals> {
    let (e, r): (i64, i64) = match device {
        None => c.query_row(
            "SELECT COALESCE(SUM(events), 0), COALESCE(SUM(readings), 0) FROM device_stats",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?,
        Some(d) => match name_id(c, d)? {
            None => (0, 0),
            Some(id) => c
                .query_row(
                    "SELECT events, readings FROM device_stats WHERE device = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .unwrap_or((0, 0)),
        },
    };
    Ok(Totals {
        events: u64::try_from(e).unwrap_or(0),
        readings: u64::try_from(r).unwrap_or(0),
    })
}

/// Readings matching `q` without a time range, from the kept counts.
fn reading_total(c: &Connection, q: &Query) -> rusqlite::Result<Option<u64>> {
    if q.start.is_some() || q.end.is_some() || !q.resources.is_empty() {
        return Ok(None);
    }
    let sum = |sql: &str, params: &[i64]| -> rusqlite::Result<u64> { count(c, sql, params) };
    let device = match &q.device {
        Some(d) => match name_id(c, d)? {
            Some(id) => Some(id),
            None => return Ok(Some(0)),
        },
        None => None,
    };
    let resource = match &q.resource {
        Some(r) => match name_id(c, r)? {
            Some(id) => Some(id),
            None => return Ok(Some(0)),
        },
        None => None,
    };
    Ok(Some(match (device, resource) {
        (None, None) => totals_of(c, None)?.readings,
        (Some(_), None) => totals_of(c, q.device.as_deref())?.readings,
        (Some(d), Some(r)) => sum(
            "SELECT COALESCE(SUM(readings), 0) FROM series_stats WHERE device = ?1 AND resource = ?2",
            &[d, r],
        )?,
        (None, Some(r)) => sum(
            "SELECT COALESCE(SUM(readings), 0) FROM series_stats WHERE resource = ?1",
            &[r],
        )?,
    }))
}

fn event_readings(c: &Connection, first: i64, n: i64) -> rusqlite::Result<Vec<Reading>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {READING_COLUMNS} FROM readings r {READING_JOINS} WHERE r.seq >= ?1 AND r.seq < ?2 ORDER BY r.seq"
    ))?;
    st.query_map(params![first, first + n], row_to_reading)?
        .collect()
}

const EVENT_COLUMNS: &str =
    "e.id, dn.name, pn.name, sn.name, e.origin, e.tags, e.first_reading, e.readings";
const EVENT_JOINS: &str = "JOIN names dn ON dn.id = e.device JOIN names pn ON pn.id = e.profile
     JOIN names sn ON sn.id = e.source";

fn row_to_event(c: &Connection, r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let id: Vec<u8> = r.get(0)?;
    let first: i64 = r.get(6)?;
    let n: i64 = r.get(7)?;
    Ok(Event {
        api_version: outpost_contracts::API_VERSION.to_string(),
        id: uuid_text(&id),
        device_name: r.get(1)?,
        profile_name: r.get(2)?,
        source_name: r.get(3)?,
        origin: r.get(4)?,
        tags: parse_tags(r.get(5)?),
        readings: event_readings(c, first, n)?,
    })
}

fn read_events(c: &Connection, q: &Query) -> rusqlite::Result<(u64, Vec<Event>)> {
    let (clause, params, by_device) = match plan(c, q, false)? {
        Plan::Empty => return Ok((0, Vec::new())),
        Plan::ByEvents {
            clause,
            params,
            by_device,
        } => (clause, params, by_device),
        Plan::ByResource { .. } => return Ok((0, Vec::new())),
    };
    let total = if !q.count_total {
        0
    } else if q.start.is_none() && q.end.is_none() {
        totals_of(c, q.device.as_deref())?.events
    } else {
        count(
            c,
            &format!("SELECT count(*) FROM events e WHERE {clause}"),
            &params,
        )?
    };
    let p = limit_params(&params, q.limit, q.offset);
    let n = p.len();
    let mut st = c.prepare(&format!(
        "SELECT {EVENT_COLUMNS} FROM events e {EVENT_JOINS} WHERE {clause}
         ORDER BY {} LIMIT ?{} OFFSET ?{n}",
        event_order(by_device),
        n - 1
    ))?;
    let events = st
        .query_map(rusqlite::params_from_iter(p.iter()), |r| row_to_event(c, r))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, events))
}

fn read_readings(c: &Connection, q: &Query) -> rusqlite::Result<(u64, Vec<Reading>)> {
    let (from, order, clause, params) = match plan(c, q, true)? {
        Plan::Empty => return Ok((0, Vec::new())),
        Plan::ByResource { clause, params } => (
            "readings r".to_string(),
            "r.origin DESC, r.seq DESC",
            clause,
            params,
        ),
        Plan::ByEvents {
            clause,
            params,
            by_device,
        } => (
            EVENT_READINGS.to_string(),
            event_order(by_device),
            clause,
            params,
        ),
    };
    let total = if !q.count_total {
        0
    } else if let Some(t) = reading_total(c, q)? {
        t
    } else {
        count(
            c,
            &format!("SELECT count(*) FROM {from} WHERE {clause}"),
            &params,
        )?
    };
    let p = limit_params(&params, q.limit, q.offset);
    let n = p.len();
    let mut st = c.prepare(&format!(
        "SELECT {READING_COLUMNS} FROM {from} {READING_JOINS} WHERE {clause}
         ORDER BY {order} LIMIT ?{} OFFSET ?{n}",
        n - 1
    ))?;
    let readings = st
        .query_map(rusqlite::params_from_iter(p.iter()), row_to_reading)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, readings))
}

fn read_aggregate(c: &Connection, q: &Query, f: Aggregate) -> rusqlite::Result<Vec<Reading>> {
    let (from, clause, params) = match plan(c, q, true)? {
        Plan::Empty => return Ok(Vec::new()),
        Plan::ByResource { clause, params } => ("readings r".to_string(), clause, params),
        Plan::ByEvents { clause, params, .. } => (EVENT_READINGS.to_string(), clause, params),
    };
    let expr = match f {
        Aggregate::Min => "MIN(r.num)",
        Aggregate::Max => "MAX(r.num)",
        Aggregate::Count => "COUNT(*)",
        Aggregate::Sum => "SUM(r.num)",
        Aggregate::Avg => "AVG(r.num)",
    };
    let mut st = c.prepare(&format!(
        "SELECT dn.name, rn.name, pn.name, {expr}, MIN(r.value_type), MAX(r.value_type),
                COUNT(r.num), MAX(r.origin)
         FROM {from} {READING_JOINS} WHERE {clause}
         GROUP BY r.device, r.resource ORDER BY dn.name, rn.name"
    ))?;
    let rows = st.query_map(rusqlite::params_from_iter(params.iter()), |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<f64>>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, i64>(7)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (device, resource, profile, value, tmin, tmax, numeric, origin) = row?;
        out.push(
            SeriesAggregate {
                device,
                resource,
                profile,
                value,
                numeric,
                type_codes: (tmin, tmax),
                origin,
            }
            .reading(f),
        );
    }
    Ok(out)
}

#[async_trait::async_trait]
impl EventStore for SqliteEventStore {
    async fn append(&self, events: Arc<[IngestEvent]>) -> Result<Vec<Outcome>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Append { events, reply })
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        self.db
            .read(move |c| {
                let Some(seq) = find_event(c, &id)? else {
                    return Ok(None);
                };
                let mut st = c.prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events e {EVENT_JOINS} WHERE e.seq = ?1"
                ))?;
                st.query_row([seq], |r| row_to_event(c, r))
                    .optional()
                    .map_err(StoreError::from)
            })
            .await
    }

    async fn events(&self, q: Query) -> Result<(u64, Vec<Event>), StoreError> {
        self.db
            .read(move |c| read_events(c, &q).map_err(StoreError::from))
            .await
    }

    async fn readings(&self, q: Query) -> Result<(u64, Vec<Reading>), StoreError> {
        self.db
            .read(move |c| read_readings(c, &q).map_err(StoreError::from))
            .await
    }

    async fn aggregate(&self, q: Query, f: Aggregate) -> Result<Vec<Reading>, StoreError> {
        self.db
            .read(move |c| read_aggregate(c, &q, f).map_err(StoreError::from))
            .await
    }

    async fn device_summaries(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        self.db
            .read(|c| {
                let mut st = c.prepare(
                    "SELECT n.name, s.events, s.readings,
                            (SELECT MAX(origin) FROM events e WHERE e.device = s.device)
                     FROM device_stats s JOIN names n ON n.id = s.device
                     ORDER BY n.name",
                )?;
                let rows = st.query_map([], |r| {
                    Ok(DeviceSummary {
                        device: r.get(0)?,
                        totals: Totals {
                            events: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                            readings: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                        },
                        last_origin: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(StoreError::from)
            })
            .await
    }

    async fn stored_bytes(&self) -> Result<u64, StoreError> {
        self.db
            .read(|c| {
                c.query_row(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(StoreError::from)
            })
            .await
    }

    async fn totals(&self, device: Option<String>) -> Result<Totals, StoreError> {
        self.db
            .read(move |c| totals_of(c, device.as_deref()).map_err(StoreError::from))
            .await
    }

    async fn delete_event(&self, id: uuid::Uuid) -> Result<bool, StoreError> {
        Ok(self.delete(Delete::Event(id)).await?.events > 0)
    }

    async fn delete_device(&self, device: String) -> Result<u64, StoreError> {
        self.delete_all(|| Delete::DeviceChunk {
            device: device.clone(),
            chunk: 50_000,
        })
        .await
    }

    async fn delete_before(&self, cutoff: i64, chunk: u64) -> Result<Deleted, StoreError> {
        self.delete(Delete::BeforeChunk { cutoff, chunk }).await
    }

    async fn trim(&self, keep: u64, chunk: u64) -> Result<Deleted, StoreError> {
        self.delete(Delete::TrimChunk { keep, chunk }).await
    }

    async fn readings_before(&self, cutoff: i64) -> Result<u64, StoreError> {
        self.db
            .read(move |c| {
                let n: i64 = c.query_row(
                    "SELECT COALESCE(SUM(readings), 0) FROM events WHERE origin < ?1",
                    [cutoff],
                    |r| r.get(0),
                )?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(StoreError::from)
    }

    fn writer_health(&self) -> Result<(), String> {
        if self.jobs.is_closed() {
            return Err("the writer stopped".into());
        }
        match &*self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some(why) => Err(format!("the last commit failed: {why}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queries ingest and the API depend on must use the indexes in their natural order:
    /// no full scans of the big tables and no sorting of whole result sets.
    #[test]
    fn query_plans_use_indexes_without_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let loc = outpost_storage::Location::new(dir.path(), "core-data");
        let db = Db::open(
            &loc,
            &outpost_storage::OpenOptions::default(),
            MIGRATIONS,
            1,
        )
        .unwrap();
        db.write_blocking(|c| {
            c.execute_batch("INSERT INTO names (id, name) VALUES (1, 'd'), (2, 'r'), (3, 'p');")
                .unwrap();
            let plan_of = |q: &Query, readings: bool| -> String {
                let (from, order, clause, params) = match plan(c, q, readings).unwrap() {
                    Plan::ByResource { clause, params } => {
                        ("readings r".to_string(), "r.origin DESC, r.seq DESC", clause, params)
                    }
                    Plan::ByEvents {
                        clause,
                        params,
                        by_device,
                    } => {
                        let from = if readings { EVENT_READINGS } else { "events e" };
                        (from.to_string(), event_order(by_device), clause, params)
                    }
                    Plan::Empty => panic!("names exist"),
                };
                let sql = format!(
                    "EXPLAIN QUERY PLAN SELECT * FROM {from} WHERE {clause} ORDER BY {order} LIMIT 20"
                );
                let mut st = c.prepare(&sql).unwrap();
                let rows = st
                    .query_map(rusqlite::params_from_iter(params.iter()), |r| r.get::<_, String>(3))
                    .unwrap();
                rows.map(Result::unwrap).collect::<Vec<_>>().join(" | ")
            };
            let device = Query {
                device: Some("d".into()),
                ..Query::default()
            };
            let device_resource = Query {
                device: Some("d".into()),
                resource: Some("r".into()),
                ..Query::default()
            };
            let resource = Query {
                resource: Some("r".into()),
                start: Some(1),
                end: Some(2),
                ..Query::default()
            };
            let range = Query {
                start: Some(1),
                end: Some(2),
                ..Query::default()
            };
            for (q, readings) in [
                (&device, true),
                (&device, false),
                (&device_resource, true),
                (&resource, true),
                (&range, true),
                (&range, false),
                (&Query::default(), true),
            ] {
                let p = plan_of(q, readings);
                assert!(!p.contains("TEMP B-TREE"), "sorts: {p}");
                assert!(!p.contains("SCAN r"), "scans the readings: {p}");
                if q.device.is_some() && readings {
                    assert!(p.contains("SEARCH r USING INTEGER PRIMARY KEY"), "not by event ranges: {p}");
                }
            }
        });
    }
}
