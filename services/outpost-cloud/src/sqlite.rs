//! The cloud node's store on its encrypted SQLite database.
//!
//! Layout:
//! - `edges`: one row per edge name: its certificate's fingerprint, when it was enrolled
//!   and revoked, when it was last seen and from where, the backlog it last reported and
//!   what it sent (received, duplicates, rejected).
//! - `streams(edge, incarnation, priority, hwm)`: the highest sequence number stored per
//!   stream of an edge's export queue; items at or below it are duplicates.
//! - `events`: one row per event, unique per (edge, id), so a resent event is stored once.
//! - `series`: one row per (edge, device, resource, profile, value type, units), so a
//!   reading row holds only its series, origin, event and value.
//! - `readings`: indexed by (series, origin) for queries and by event for retention.
//! - `alerts`: the alert as JSON, unique per (edge, id).
//! - `totals`: the running count of readings, kept in the transactions that change it, so
//!   retention and the `readings_stored` gauge never count the table.
//!
//! A batch is stored in one transaction with its stream's high-water mark and the edge's
//! counts. Series ids are cached; the cache is cleared when a transaction rolls back, since
//! the series it created are gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use outpost_contracts::cloud::{Edge, EdgeBacklog, EdgeReading};
use outpost_contracts::event::ReadingValue;
use outpost_contracts::export::{Alert, ExportItem, Rejected};
use outpost_storage::rusqlite::{self, OptionalExtension as _, params};
use outpost_storage::{Db, Migration};

use crate::store::{Incoming, ReadingQuery, Removed, Store, StoreError, Stored, admit};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "edges, streams, events, readings, alerts",
        sql: "CREATE TABLE edges (
              name TEXT PRIMARY KEY,
              fingerprint TEXT NOT NULL UNIQUE,
              enrolled_ms INTEGER NOT NULL,
              revoked_ms INTEGER,
              last_seen_ms INTEGER,
              last_address TEXT,
              backlog_items INTEGER NOT NULL DEFAULT 0,
              backlog_bytes INTEGER NOT NULL DEFAULT 0,
              backlog_oldest_ms INTEGER,
              received INTEGER NOT NULL DEFAULT 0,
              duplicates INTEGER NOT NULL DEFAULT 0,
              rejected INTEGER NOT NULL DEFAULT 0
          );
          CREATE TABLE streams (
              edge TEXT NOT NULL,
              incarnation INTEGER NOT NULL,
              priority INTEGER NOT NULL,
              hwm INTEGER NOT NULL,
              PRIMARY KEY (edge, incarnation, priority)
          ) WITHOUT ROWID;
          CREATE TABLE events (
              seq INTEGER PRIMARY KEY,
              edge TEXT NOT NULL,
              id TEXT NOT NULL,
              device TEXT NOT NULL,
              profile TEXT NOT NULL,
              source TEXT NOT NULL,
              origin INTEGER NOT NULL,
              received_ms INTEGER NOT NULL,
              UNIQUE (edge, id)
          );
          CREATE TABLE series (
              id INTEGER PRIMARY KEY,
              edge TEXT NOT NULL,
              device TEXT NOT NULL,
              resource TEXT NOT NULL,
              profile TEXT NOT NULL,
              value_type TEXT NOT NULL,
              units TEXT NOT NULL,
              UNIQUE (edge, device, resource, profile, value_type, units)
          );
          CREATE TABLE readings (
              seq INTEGER PRIMARY KEY,
              series INTEGER NOT NULL,
              origin INTEGER NOT NULL,
              event INTEGER NOT NULL,
              value TEXT NOT NULL
          );
          CREATE INDEX readings_by_series ON readings (series, origin);
          CREATE TABLE alerts (
              seq INTEGER PRIMARY KEY,
              edge TEXT NOT NULL,
              id TEXT NOT NULL,
              origin INTEGER NOT NULL,
              body TEXT NOT NULL,
              UNIQUE (edge, id)
          );",
    },
    Migration {
        version: 2,
        description: "retention: indexes by age and by event, a running reading count",
        sql: "CREATE INDEX events_origin ON events (origin);
          CREATE INDEX readings_event ON readings (event);
          CREATE INDEX alerts_origin ON alerts (origin);
          CREATE TABLE totals (
              id INTEGER PRIMARY KEY CHECK (id = 0),
              readings INTEGER NOT NULL
          );
          INSERT INTO totals (id, readings) SELECT 0, COUNT(*) FROM readings;",
    },
];

/// Readings one retention step removes at most (besides its bound in events), so a step
/// holds the writer only briefly however large the events are.
pub const STEP_READINGS: u64 = 50_000;

/// Deletes one event and its readings; returns the readings deleted.
fn remove_event(tx: &rusqlite::Transaction<'_>, seq: i64) -> rusqlite::Result<u64> {
    let n = tx
        .prepare_cached("DELETE FROM readings WHERE event = ?1")?
        .execute([seq])?;
    tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?
        .execute([seq])?;
    Ok(n as u64)
}

fn edge_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Edge> {
    Ok(Edge {
        name: r.get(0)?,
        fingerprint: r.get(1)?,
        enrolled_ms: r.get(2)?,
        revoked_ms: r.get(3)?,
        last_seen_ms: r.get(4)?,
        last_address: r.get(5)?,
        backlog: EdgeBacklog {
            items: r.get(6)?,
            bytes: r.get(7)?,
            oldest_ms: r.get(8)?,
        },
        received: r.get(9)?,
        duplicates: r.get(10)?,
        rejected: r.get(11)?,
    })
}

const EDGE_COLUMNS: &str = "name, fingerprint, enrolled_ms, revoked_ms, last_seen_ms, last_address, backlog_items, backlog_bytes, backlog_oldest_ms, received, duplicates, rejected";

fn text_value(v: &ReadingValue) -> String {
    match v {
        ReadingValue::Simple(s) => s.clone(),
        ReadingValue::Object(o) => o.to_string(),
        ReadingValue::Binary { data, .. } => format!("<{} bytes>", data.len()),
        ReadingValue::Null => String::new(),
    }
}

/// What identifies a series of readings: one resource of one device of one edge.
type SeriesKey = (String, String, String, String, &'static str, String);

pub struct SqliteStore {
    db: Db,
    /// Series ids already in the database, so a reading costs no lookup.
    series: Arc<Mutex<HashMap<SeriesKey, i64>>>,
}

fn series_id(
    tx: &rusqlite::Transaction<'_>,
    cache: &mut HashMap<SeriesKey, i64>,
    key: SeriesKey,
) -> rusqlite::Result<i64> {
    if let Some(id) = cache.get(&key) {
        return Ok(*id);
    }
    tx.prepare_cached(
        "INSERT OR IGNORE INTO series (edge, device, resource, profile, value_type, units)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![key.0, key.1, key.2, key.3, key.4, key.5])?;
    let id: i64 = tx
        .prepare_cached(
            "SELECT id FROM series WHERE edge = ?1 AND device = ?2 AND resource = ?3 AND profile = ?4
             AND value_type = ?5 AND units = ?6",
        )?
        .query_row(params![key.0, key.1, key.2, key.3, key.4, key.5], |r| r.get(0))?;
    cache.insert(key, id);
    Ok(id)
}

impl SqliteStore {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            series: Arc::default(),
        }
    }

    fn ingest_tx(
        c: &mut rusqlite::Connection,
        cache: &mut HashMap<SeriesKey, i64>,
        batch: Incoming,
    ) -> Result<Stored, StoreError> {
        let Incoming {
            edge,
            address,
            incarnation,
            priority,
            items,
            backlog,
        } = batch;
        let tx = c.transaction()?;
        // Received when the transaction that stores it runs.
        let now_ms = outpost_contracts::now_millis();
        let mut out = Stored::default();
        let hwm: Option<i64> = tx
            .query_row(
                "SELECT hwm FROM streams WHERE edge = ?1 AND incarnation = ?2 AND priority = ?3",
                params![edge, incarnation as i64, priority],
                |r| r.get(0),
            )
            .optional()?;
        let mut hwm = hwm.map(|h| h as u64);
        let mut readings_stored: i64 = 0;
        {
            let mut add_event = tx.prepare_cached(
                "INSERT OR IGNORE INTO events (edge, id, device, profile, source, origin, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut add_reading = tx.prepare_cached(
                "INSERT INTO readings (series, origin, event, value) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut add_alert = tx.prepare_cached(
                "INSERT OR IGNORE INTO alerts (edge, id, origin, body) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for item in items {
                if hwm.is_some_and(|h| item.seq <= h) {
                    out.duplicates += 1;
                    continue;
                }
                hwm = Some(item.seq);
                match admit(&item.data) {
                    Ok(ExportItem::Event { event }) => {
                        let n = add_event.execute(params![
                            edge,
                            event.id,
                            event.device_name,
                            event.profile_name,
                            event.source_name,
                            event.origin,
                            now_ms
                        ])?;
                        if n == 0 {
                            out.duplicates += 1;
                            continue;
                        }
                        let event_seq = tx.last_insert_rowid();
                        for r in &event.readings {
                            let series = series_id(
                                &tx,
                                cache,
                                (
                                    edge.clone(),
                                    r.device_name.clone(),
                                    r.resource_name.clone(),
                                    r.profile_name.clone(),
                                    r.value_type.as_str(),
                                    r.units.clone(),
                                ),
                            )?;
                            add_reading.execute(params![
                                series,
                                r.origin,
                                event_seq,
                                text_value(&r.value)
                            ])?;
                            readings_stored += 1;
                        }
                        out.accepted += 1;
                    }
                    Ok(ExportItem::Alert { alert }) => {
                        let body = serde_json::to_string(&alert).unwrap_or_default();
                        let n = add_alert.execute(params![edge, alert.id, alert.origin, body])?;
                        if n == 0 {
                            out.duplicates += 1;
                        } else {
                            out.accepted += 1;
                        }
                    }
                    Err(reason) => out.rejected.push(Rejected {
                        seq: item.seq,
                        reason,
                    }),
                }
            }
        }
        if let Some(h) = hwm {
            tx.execute(
                "INSERT INTO streams (edge, incarnation, priority, hwm) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (edge, incarnation, priority) DO UPDATE SET hwm = MAX(hwm, ?4)",
                params![edge, incarnation as i64, priority, h as i64],
            )?;
        }
        if readings_stored > 0 {
            tx.execute(
                "UPDATE totals SET readings = readings + ?1 WHERE id = 0",
                [readings_stored],
            )?;
        }
        tx.execute(
            "UPDATE edges SET last_seen_ms = ?2, last_address = ?3, backlog_items = ?4, backlog_bytes = ?5,
                 backlog_oldest_ms = ?6, received = received + ?7, duplicates = duplicates + ?8,
                 rejected = rejected + ?9
             WHERE name = ?1",
            params![
                edge,
                now_ms,
                address,
                backlog.items as i64,
                backlog.bytes as i64,
                backlog.oldest_ms.map(|m| m as i64),
                out.accepted as i64,
                out.duplicates as i64,
                out.rejected.len() as i64
            ],
        )?;
        tx.commit()?;
        out.hwm = hwm;
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.db.ping().await?)
    }

    async fn enroll(
        &self,
        name: String,
        fingerprint: String,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                let existing: Option<Option<i64>> = tx
                    .query_row("SELECT revoked_ms FROM edges WHERE name = ?1", [&name], |r| r.get(0))
                    .optional()?;
                if matches!(existing, Some(None)) {
                    return Ok(false);
                }
                tx.execute(
                    "INSERT INTO edges (name, fingerprint, enrolled_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET fingerprint = ?2, enrolled_ms = ?3, revoked_ms = NULL",
                    params![name, fingerprint, now_ms],
                )?;
                tx.commit()?;
                Ok(true)
            })
            .await
    }

    /// Revokes an edge; `false` if there is no such edge.
    async fn revoke(&self, name: String, now_ms: i64) -> Result<bool, StoreError> {
        self.db
            .write(move |c| {
                let n = c.execute(
                    "UPDATE edges SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE name = ?1",
                    params![name, now_ms],
                )?;
                Ok(n > 0)
            })
            .await
    }

    async fn edges(&self) -> Result<Vec<Edge>, StoreError> {
        self.db
            .read(|c| {
                let mut st =
                    c.prepare(&format!("SELECT {EDGE_COLUMNS} FROM edges ORDER BY name"))?;
                let rows = st.query_map([], edge_row)?.collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }

    async fn edge(&self, name: String) -> Result<Option<Edge>, StoreError> {
        self.db
            .read(move |c| {
                Ok(c.query_row(
                    &format!("SELECT {EDGE_COLUMNS} FROM edges WHERE name = ?1"),
                    [name],
                    edge_row,
                )
                .optional()?)
            })
            .await
    }

    /// The edge a certificate belongs to, if it is enrolled and not revoked.
    async fn edge_by_fingerprint(&self, fingerprint: String) -> Result<Option<String>, StoreError> {
        self.db
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT name FROM edges WHERE fingerprint = ?1 AND revoked_ms IS NULL",
                    [fingerprint],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await
    }

    /// Stores a batch in one transaction: items at or below the stream's high-water mark
    /// and events already stored (by id) are duplicates; items that can never be stored are
    /// rejected with the reason.
    async fn ingest(&self, batch: Incoming) -> Result<Stored, StoreError> {
        let series = Arc::clone(&self.series);
        self.db
            .write(move |c| {
                let mut cache = series
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let result = SqliteStore::ingest_tx(c, &mut cache, batch);
                if result.is_err() {
                    // Series created in a transaction that rolled back do not exist.
                    cache.clear();
                }
                result
            })
            .await
    }

    async fn readings(&self, q: ReadingQuery) -> Result<(Vec<EdgeReading>, u64), StoreError> {
        self.db
            .read(move |c| {
                let mut filter = String::from("s.edge = ?1");
                let mut args: Vec<rusqlite::types::Value> = vec![q.edge.clone().into()];
                if let Some(d) = &q.device {
                    args.push(d.clone().into());
                    filter.push_str(&format!(" AND s.device = ?{}", args.len()));
                }
                if let Some(r) = &q.resource {
                    args.push(r.clone().into());
                    filter.push_str(&format!(" AND s.resource = ?{}", args.len()));
                }
                if let Some(s) = q.start {
                    args.push(s.into());
                    filter.push_str(&format!(" AND r.origin >= ?{}", args.len()));
                }
                if let Some(e) = q.end {
                    args.push(e.into());
                    filter.push_str(&format!(" AND r.origin <= ?{}", args.len()));
                }
                let total: i64 = c.query_row(
                    &format!("SELECT COUNT(*) FROM readings r JOIN series s ON s.id = r.series WHERE {filter}"),
                    rusqlite::params_from_iter(args.iter()),
                    |r| r.get(0),
                )?;
                let mut st = c.prepare(&format!(
                    "SELECT s.edge, s.device, s.resource, s.profile, r.origin, s.value_type, s.units, r.value,
                         e.received_ms
                     FROM readings r JOIN series s ON s.id = r.series JOIN events e ON e.seq = r.event
                     WHERE {filter} ORDER BY r.origin DESC, r.seq DESC LIMIT {} OFFSET {}",
                    q.limit, q.offset
                ))?;
                let rows = st
                    .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                        Ok(EdgeReading {
                            edge: r.get(0)?,
                            device_name: r.get(1)?,
                            resource_name: r.get(2)?,
                            profile_name: r.get(3)?,
                            origin: r.get(4)?,
                            value_type: r.get(5)?,
                            units: r.get(6)?,
                            value: r.get(7)?,
                            received_ms: r.get(8)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((rows, total as u64))
            })
            .await
    }

    async fn alerts(&self, edge: String, limit: u64) -> Result<Vec<Alert>, StoreError> {
        self.db
            .read(move |c| {
                let mut st = c.prepare(
                    "SELECT body FROM alerts WHERE edge = ?1 ORDER BY origin DESC, seq DESC LIMIT ?2",
                )?;
                let rows = st
                    .query_map(params![edge, limit as i64], |r| r.get::<_, String>(0))?
                    .filter_map(|b| b.ok().and_then(|b| serde_json::from_str(&b).ok()))
                    .collect();
                Ok(rows)
            })
            .await
    }

    /// Readings stored, from every edge.
    async fn reading_total(&self) -> Result<u64, StoreError> {
        self.db
            .read(|c| {
                let n: i64 =
                    c.query_row("SELECT readings FROM totals WHERE id = 0", [], |r| r.get(0))?;
                Ok(n.max(0) as u64)
            })
            .await
    }

    /// One bounded retention step, in one transaction: removes up to `chunk` events (with
    /// their readings; no more events once [`STEP_READINGS`] readings went) whose origin is
    /// before `cutoff` (nanoseconds) and which arrived before it too, oldest first, and
    /// alerts whose origin is before it; then, while more than `max_readings` readings are
    /// stored (0: no bound), the oldest events. Nothing goes by age sooner than the age
    /// after it arrived: data an edge sends late, or with an origin in milliseconds or 0, is
    /// not removed as it lands. Returns what it removed; callers repeat it until it removes
    /// nothing, so ingest gets the database between steps.
    async fn remove_old(
        &self,
        cutoff: Option<i64>,
        max_readings: u64,
        chunk: u64,
    ) -> Result<Removed, StoreError> {
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                let mut removed = Removed::default();
                let limit = i64::try_from(chunk.max(1)).unwrap_or(i64::MAX);
                if let Some(cutoff) = cutoff {
                    let cutoff_ms = cutoff.div_euclid(1_000_000);
                    let old: Vec<i64> = tx
                        .prepare_cached(
                            "SELECT seq FROM events WHERE origin < ?1 AND received_ms < ?2
                             ORDER BY origin LIMIT ?3",
                        )?
                        .query_map(params![cutoff, cutoff_ms, limit], |r| r.get(0))?
                        .collect::<Result<_, _>>()?;
                    for seq in old {
                        if removed.readings >= STEP_READINGS {
                            break;
                        }
                        removed.readings += remove_event(&tx, seq)?;
                        removed.events += 1;
                    }
                    removed.alerts = tx.execute(
                        "DELETE FROM alerts WHERE seq IN
                             (SELECT seq FROM alerts WHERE origin < ?1 ORDER BY origin LIMIT ?2)",
                        params![cutoff, limit],
                    )? as u64;
                }
                let total: i64 =
                    tx.query_row("SELECT readings FROM totals WHERE id = 0", [], |r| r.get(0))?;
                let total = u64::try_from(total).unwrap_or(0);
                let stored = total.saturating_sub(removed.readings);
                if max_readings > 0
                    && stored > max_readings
                    && removed.events < chunk.max(1)
                    && removed.readings < STEP_READINGS
                {
                    let mut excess = stored - max_readings;
                    let room = i64::try_from(chunk.max(1) - removed.events).unwrap_or(i64::MAX);
                    let oldest: Vec<i64> = tx
                        .prepare_cached("SELECT seq FROM events ORDER BY origin LIMIT ?1")?
                        .query_map([room], |r| r.get(0))?
                        .collect::<Result<_, _>>()?;
                    for seq in oldest {
                        if excess == 0 || removed.readings >= STEP_READINGS {
                            break;
                        }
                        let n = remove_event(&tx, seq)?;
                        removed.readings += n;
                        removed.events += 1;
                        excess = excess.saturating_sub(n);
                    }
                }
                if removed.readings > 0 {
                    tx.execute(
                        "UPDATE totals SET readings = MAX(readings - ?1, 0) WHERE id = 0",
                        [i64::try_from(removed.readings).unwrap_or(i64::MAX)],
                    )?;
                }
                tx.commit()?;
                Ok(removed)
            })
            .await
    }

    /// Events stored per edge.
    async fn event_count(&self, edge: String) -> Result<u64, StoreError> {
        self.db
            .read(move |c| {
                let n: i64 =
                    c.query_row("SELECT COUNT(*) FROM events WHERE edge = ?1", [edge], |r| {
                        r.get(0)
                    })?;
                Ok(n as u64)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_contracts::export::{Backlog, WireItem};

    type Item = WireItem<Box<serde_json::value::RawValue>>;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let loc = outpost_storage::Location::new(dir.path(), "cloud");
        let db = Db::open(
            &loc,
            &outpost_storage::OpenOptions::default(),
            MIGRATIONS,
            1,
        )
        .unwrap();
        (dir, SqliteStore::new(db))
    }

    fn item(seq: u64, id: &str, origin: i64, readings: usize) -> Item {
        let readings: Vec<serde_json::Value> = (0..readings)
            .map(|i| {
                serde_json::json!({"id": format!("{id}-{i}"), "origin": origin, "deviceName": "d",
                "resourceName": format!("r{i}"), "profileName": "p", "valueType": "Int64", "value": "1"})
            })
            .collect();
        let data = serde_json::json!({"kind": "event", "event": {"apiVersion": "v3", "id": id,
            "deviceName": "d", "profileName": "p", "sourceName": "s", "origin": origin,
            "readings": readings}});
        WireItem {
            seq,
            enqueued_ms: 0,
            data: serde_json::value::to_raw_value(&data).unwrap(),
        }
    }

    async fn ingest(st: &SqliteStore, items: Vec<Item>) {
        st.enroll("e".into(), "fp".into(), 0).await.unwrap();
        let out = st
            .ingest(Incoming {
                edge: "e".into(),
                address: "a".into(),
                incarnation: 1,
                priority: 1,
                items,
                backlog: Backlog::default(),
            })
            .await
            .unwrap();
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    }

    #[tokio::test]
    async fn age_counts_from_arrival_too_and_the_bound_takes_the_oldest() {
        let (_dir, st) = store();
        let now = outpost_contracts::now_nanos();
        let hour = 3_600_000_000_000i64;
        // Origins two hours ago, in milliseconds, and an hour ahead; three readings each.
        ingest(
            &st,
            vec![
                item(1, "old", now - 2 * hour, 3),
                item(2, "millis", now / 1_000_000, 3),
                item(3, "new", now + hour, 3),
            ],
        )
        .await;
        assert_eq!(st.reading_total().await.unwrap(), 9);
        // An hour's age: everything arrived just now, so nothing goes yet.
        let none = st.remove_old(Some(now - hour), 0, 10).await.unwrap();
        assert_eq!(none, Removed::default());
        // A minute later (a cutoff past their arrival): the old origins go, the new one
        // stays.
        let later = st.remove_old(Some(now + hour / 60), 0, 10).await.unwrap();
        assert_eq!((later.events, later.readings), (2, 6));
        assert_eq!(st.event_count("e".into()).await.unwrap(), 1);
        assert_eq!(st.reading_total().await.unwrap(), 3);
        // A bound below what is stored removes whole events, oldest first.
        ingest(&st, vec![item(4, "newer", now + 2 * hour, 3)]).await;
        let trimmed = st.remove_old(None, 4, 10).await.unwrap();
        assert_eq!((trimmed.events, trimmed.readings), (1, 3));
        assert_eq!(st.reading_total().await.unwrap(), 3);
        assert_eq!(
            st.remove_old(None, 4, 10).await.unwrap(),
            Removed::default()
        );
    }
}
