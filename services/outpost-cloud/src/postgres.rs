//! The cloud node's [`Store`] on PostgreSQL (`[cloud.storage] backend = "postgres"`), so
//! several cloud instances behind a load balancer share what the edges send.
//!
//! The layout is the SQLite store's ([`crate::sqlite`]), in the schema `cloud`, with three
//! differences. Reading values and alert bodies are sealed by
//! [`outpost_kit::pg::Sealer`] before they are sent (a value bound to its event and
//! position, an alert to its edge and id). Counts of readings are kept per edge
//! (`edge_totals`), so instances storing different edges' batches never wait on one row.
//! And a batch takes its stream's row with `SELECT ... FOR UPDATE` first: a retry of a
//! batch that lands on another instance while the first is still storing it waits, then
//! finds its items at or below the high-water mark; events and alerts are unique per
//! (edge, id) besides, so whatever the interleaving, each is stored once.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use outpost_contracts::cloud::{Edge, EdgeBacklog, EdgeReading};
use outpost_contracts::event::ReadingValue;
use outpost_contracts::export::{Alert, ExportItem, Rejected};
use outpost_kit::pg::{self, Migration, Object, StorageConfig, tokio_postgres};
use tokio_postgres::types::ToSql;

use crate::sqlite::STEP_READINGS;
use crate::store::{Incoming, ReadingQuery, Removed, Store, StoreError, Stored, admit};

/// The schema the cloud's tables live in.
pub const SCHEMA: &str = "cloud";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "edges, streams, events, series, readings and alerts, values sealed",
        sql: "CREATE TABLE edges (
              name TEXT PRIMARY KEY,
              fingerprint TEXT NOT NULL UNIQUE,
              enrolled_ms BIGINT NOT NULL,
              revoked_ms BIGINT,
              last_seen_ms BIGINT,
              last_address TEXT,
              backlog_items BIGINT NOT NULL DEFAULT 0,
              backlog_bytes BIGINT NOT NULL DEFAULT 0,
              backlog_oldest_ms BIGINT,
              received BIGINT NOT NULL DEFAULT 0,
              duplicates BIGINT NOT NULL DEFAULT 0,
              rejected BIGINT NOT NULL DEFAULT 0
          );
          CREATE TABLE streams (
              edge TEXT NOT NULL,
              incarnation BIGINT NOT NULL,
              priority SMALLINT NOT NULL,
              hwm BIGINT NOT NULL,
              PRIMARY KEY (edge, incarnation, priority)
          );
          CREATE TABLE events (
              seq BIGSERIAL PRIMARY KEY,
              edge TEXT NOT NULL,
              id TEXT NOT NULL,
              device TEXT NOT NULL,
              profile TEXT NOT NULL,
              source TEXT NOT NULL,
              origin BIGINT NOT NULL,
              received_ms BIGINT NOT NULL,
              UNIQUE (edge, id)
          );
          CREATE INDEX events_origin ON events (origin);
          CREATE TABLE series (
              id BIGSERIAL PRIMARY KEY,
              edge TEXT NOT NULL,
              device TEXT NOT NULL,
              resource TEXT NOT NULL,
              profile TEXT NOT NULL,
              value_type TEXT NOT NULL,
              units TEXT NOT NULL,
              UNIQUE (edge, device, resource, profile, value_type, units)
          );
          CREATE TABLE readings (
              seq BIGSERIAL PRIMARY KEY,
              series BIGINT NOT NULL,
              origin BIGINT NOT NULL,
              event BIGINT NOT NULL,
              ord INTEGER NOT NULL,
              value BYTEA NOT NULL
          );
          CREATE INDEX readings_by_series ON readings (series, origin);
          CREATE INDEX readings_event ON readings (event);
          CREATE TABLE alerts (
              seq BIGSERIAL PRIMARY KEY,
              edge TEXT NOT NULL,
              id TEXT NOT NULL,
              origin BIGINT NOT NULL,
              body BYTEA NOT NULL,
              UNIQUE (edge, id)
          );
          CREATE INDEX alerts_origin ON alerts (origin);
          CREATE TABLE edge_totals (
              edge TEXT PRIMARY KEY,
              readings BIGINT NOT NULL
          );",
    },
    Migration {
        version: 2,
        description: "fleet queries: readings counted per series, newest first per series",
        // A page of an edge's newest readings merges the newest of each of its series
        // (one short index range each) instead of sorting all of them, and how many match
        // is the sum of the series' counts instead of a count of every row.
        sql: "ALTER TABLE series ADD COLUMN readings BIGINT NOT NULL DEFAULT 0;
          UPDATE series s SET readings = c.n
              FROM (SELECT series, count(*) AS n FROM readings GROUP BY series) c
              WHERE c.series = s.id;
          DROP INDEX readings_by_series;
          CREATE INDEX readings_by_series ON readings (series, origin, seq);",
    },
];

fn text_value(v: &ReadingValue) -> String {
    match v {
        ReadingValue::Simple(s) => s.clone(),
        ReadingValue::Object(o) => o.to_string(),
        ReadingValue::Binary { data, .. } => format!("<{} bytes>", data.len()),
        ReadingValue::Null => String::new(),
    }
}

/// An item PostgreSQL can hold as it is, or why not: its text columns cannot hold a NUL
/// character (SQLite's can), and an item that fails for its data would fail its whole
/// batch, and every resend of it, for ever; it is rejected, as [`admit`] rejects.
fn storable(item: ExportItem) -> Result<ExportItem, String> {
    let nul = |s: &str| s.contains('\0');
    let bad = match &item {
        ExportItem::Event { event } => {
            [
                &event.id,
                &event.device_name,
                &event.profile_name,
                &event.source_name,
            ]
            .iter()
            .any(|s| nul(s))
                || event.readings.iter().any(|r| {
                    [&r.device_name, &r.resource_name, &r.profile_name, &r.units]
                        .iter()
                        .any(|s| nul(s))
                })
        }
        ExportItem::Alert { alert } => nul(&alert.id),
    };
    if bad {
        Err("a name or id with a NUL character".into())
    } else {
        Ok(item)
    }
}

fn value_aad(event: i64, ord: i32) -> Vec<u8> {
    let mut a = Vec::with_capacity(13);
    a.push(b'v');
    a.extend_from_slice(&event.to_be_bytes());
    a.extend_from_slice(&ord.to_be_bytes());
    a
}

fn alert_aad(edge: &str, id: &str) -> Vec<u8> {
    format!("a\u{0}{edge}\u{0}{id}").into_bytes()
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(outpost_storage::StorageError::Task(e.to_string()))
}

/// What identifies a series of readings: one resource of one device of one edge.
type SeriesKey = (String, String, String, String, &'static str, String);

/// The cloud's data in PostgreSQL.
pub struct PgStore {
    db: pg::Database,
    /// Series ids already in the database.
    series: Mutex<HashMap<SeriesKey, i64>>,
}

const EDGE_COLUMNS: &str = "name, fingerprint, enrolled_ms, revoked_ms, last_seen_ms, \
     last_address, backlog_items, backlog_bytes, backlog_oldest_ms, received, duplicates, rejected";

fn edge_row(r: &tokio_postgres::Row) -> Edge {
    Edge {
        name: r.get(0),
        fingerprint: r.get(1),
        enrolled_ms: r.get(2),
        revoked_ms: r.get(3),
        last_seen_ms: r.get(4),
        last_address: r.get(5),
        backlog: EdgeBacklog {
            items: r.get(6),
            bytes: r.get(7),
            oldest_ms: r.get(8),
        },
        received: r.get(9),
        duplicates: r.get(10),
        rejected: r.get(11),
    }
}

impl PgStore {
    /// Connects and migrates the schema.
    pub async fn open(cfg: &StorageConfig, secrets: &std::path::Path) -> Result<Self, pg::PgError> {
        Ok(Self {
            db: pg::Database::open(cfg, secrets, crate::SERVICE, SCHEMA, MIGRATIONS).await?,
            series: Mutex::new(HashMap::new()),
        })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.db.client().await.map_err(failed)
    }

    /// The series' id; one made by this transaction goes to `made`, cached only once the
    /// transaction committed (another ingest must not use an id that may roll back).
    async fn series_id(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        made: &mut HashMap<SeriesKey, i64>,
        key: SeriesKey,
    ) -> Result<i64, tokio_postgres::Error> {
        if let Some(id) = made.get(&key).copied().or_else(|| {
            self.series
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .copied()
        }) {
            return Ok(id);
        }
        let params: [&(dyn ToSql + Sync); 6] = [&key.0, &key.1, &key.2, &key.3, &key.4, &key.5];
        let id = match tx
            .query_opt(
                "INSERT INTO series (edge, device, resource, profile, value_type, units)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING id",
                &params,
            )
            .await?
        {
            Some(row) => row.get(0),
            None => tx
                .query_one(
                    "SELECT id FROM series WHERE edge = $1 AND device = $2 AND resource = $3
                     AND profile = $4 AND value_type = $5 AND units = $6",
                    &params,
                )
                .await?
                .get(0),
        };
        made.insert(key, id);
        Ok(id)
    }

    /// Inserts a batch's new events in arrival order (ids already stored, or repeated in
    /// the batch, are duplicates), then all their readings, sealed, in one statement.
    /// Returns (events stored, duplicates, readings stored); counts each series' new
    /// readings into `per_series`.
    async fn insert_events(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        edge: &str,
        now_ms: i64,
        events: Vec<outpost_contracts::event::Event>,
        made: &mut HashMap<SeriesKey, i64>,
        per_series: &mut std::collections::BTreeMap<i64, i64>,
    ) -> Result<(u64, u64, i64), tokio_postgres::Error> {
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let devices: Vec<&str> = events.iter().map(|e| e.device_name.as_str()).collect();
        let profiles: Vec<&str> = events.iter().map(|e| e.profile_name.as_str()).collect();
        let sources: Vec<&str> = events.iter().map(|e| e.source_name.as_str()).collect();
        let origins: Vec<i64> = events.iter().map(|e| e.origin).collect();
        // ORDER BY the batch's order: sequence numbers follow arrival, which retention by
        // count relies on.
        let rows = tx
            .query(
                "INSERT INTO events (edge, id, device, profile, source, origin, received_ms)
                 SELECT $1, i, d, p, s, o, $7
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[])
                     WITH ORDINALITY AS x(i, d, p, s, o, n)
                 ORDER BY n
                 ON CONFLICT (edge, id) DO NOTHING RETURNING seq, id",
                &[
                    &edge, &ids, &devices, &profiles, &sources, &origins, &now_ms,
                ],
            )
            .await?;
        let mut new: HashMap<String, i64> = rows.iter().map(|r| (r.get(1), r.get(0))).collect();
        let (mut accepted, mut duplicates, mut readings) = (0u64, 0u64, 0i64);
        let (mut series, mut r_origins, mut seqs, mut ords, mut values) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for event in &events {
            // The first event of an id took its row; a repeat of it is a duplicate.
            let Some(seq) = new.remove(&event.id) else {
                duplicates += 1;
                continue;
            };
            for (i, r) in event.readings.iter().enumerate() {
                let ord = i32::try_from(i).unwrap_or(i32::MAX);
                let id = self
                    .series_id(
                        tx,
                        made,
                        (
                            edge.to_string(),
                            r.device_name.clone(),
                            r.resource_name.clone(),
                            r.profile_name.clone(),
                            r.value_type.as_str(),
                            r.units.clone(),
                        ),
                    )
                    .await?;
                *per_series.entry(id).or_default() += 1;
                series.push(id);
                r_origins.push(r.origin);
                seqs.push(seq);
                ords.push(ord);
                values.push(
                    self.db
                        .sealer
                        .seal(&value_aad(seq, ord), text_value(&r.value).as_bytes()),
                );
            }
            readings += event.readings.len() as i64;
            accepted += 1;
        }
        tx.execute(
            "INSERT INTO readings (series, origin, event, ord, value)
             SELECT s, o, e, n, v
             FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int4[], $5::bytea[])
                 AS x(s, o, e, n, v)",
            &[&series, &r_origins, &seqs, &ords, &values],
        )
        .await?;
        Ok((accepted, duplicates, readings))
    }

    async fn ingest_tx(
        &self,
        client: &mut Object,
        batch: Incoming,
    ) -> Result<Stored, tokio_postgres::Error> {
        let Incoming {
            edge,
            address,
            incarnation,
            priority,
            items,
            backlog,
        } = batch;
        let tx = client.transaction().await?;
        let now_ms = outpost_contracts::now_millis();
        let (inc, prio) = (incarnation as i64, i16::from(priority));
        // The stream's row, locked for this batch: another instance storing a retry of it
        // waits here.
        tx.execute(
            "INSERT INTO streams (edge, incarnation, priority, hwm) VALUES ($1, $2, $3, -1)
             ON CONFLICT DO NOTHING",
            &[&edge, &inc, &prio],
        )
        .await?;
        let hwm: i64 = tx
            .query_one(
                "SELECT hwm FROM streams WHERE edge = $1 AND incarnation = $2 AND priority = $3
                 FOR UPDATE",
                &[&edge, &inc, &prio],
            )
            .await?
            .get(0);
        let mut hwm = u64::try_from(hwm).ok();
        let mut out = Stored::default();
        let mut readings_stored: i64 = 0;
        let mut per_series: std::collections::BTreeMap<i64, i64> = Default::default();
        let mut made = HashMap::new();
        // Events are inserted together after the loop (two statements for the batch, not
        // two per event); alerts, rare, as they come.
        let mut events = Vec::new();
        for item in items {
            if hwm.is_some_and(|h| item.seq <= h) {
                out.duplicates += 1;
                continue;
            }
            hwm = Some(item.seq);
            match admit(&item.data).and_then(storable) {
                Ok(ExportItem::Event { event }) => events.push(event),
                Ok(ExportItem::Alert { alert }) => {
                    let body = serde_json::to_string(&alert).unwrap_or_default();
                    let sealed = self
                        .db
                        .sealer
                        .seal(&alert_aad(&edge, &alert.id), body.as_bytes());
                    let n = tx
                        .execute(
                            "INSERT INTO alerts (edge, id, origin, body) VALUES ($1, $2, $3, $4)
                             ON CONFLICT (edge, id) DO NOTHING",
                            &[&edge, &alert.id, &alert.origin, &sealed],
                        )
                        .await?;
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
        if !events.is_empty() {
            let stored = self
                .insert_events(&tx, &edge, now_ms, events, &mut made, &mut per_series)
                .await?;
            out.accepted += stored.0;
            out.duplicates += stored.1;
            readings_stored += stored.2;
        }
        if let Some(h) = hwm {
            tx.execute(
                "UPDATE streams SET hwm = GREATEST(hwm, $4)
                 WHERE edge = $1 AND incarnation = $2 AND priority = $3",
                &[&edge, &inc, &prio, &(h as i64)],
            )
            .await?;
        }
        Self::count_series(&tx, &per_series, 1).await?;
        if readings_stored > 0 {
            tx.execute(
                "INSERT INTO edge_totals (edge, readings) VALUES ($1, $2)
                 ON CONFLICT (edge) DO UPDATE SET readings = edge_totals.readings + $2",
                &[&edge, &readings_stored],
            )
            .await?;
        }
        tx.execute(
            "UPDATE edges SET last_seen_ms = $2, last_address = $3, backlog_items = $4,
                 backlog_bytes = $5, backlog_oldest_ms = $6, received = received + $7,
                 duplicates = duplicates + $8, rejected = rejected + $9
             WHERE name = $1",
            &[
                &edge,
                &now_ms,
                &address,
                &(backlog.items as i64),
                &(backlog.bytes as i64),
                &backlog.oldest_ms.map(|m| m as i64),
                &(out.accepted as i64),
                &(out.duplicates as i64),
                &(out.rejected.len() as i64),
            ],
        )
        .await?;
        tx.commit().await?;
        self.series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(made);
        out.hwm = hwm;
        Ok(out)
    }

    /// Adds `sign` × each count to its series' reading count. In id order, so two
    /// transactions counting the same series wait for each other instead of deadlocking.
    async fn count_series(
        tx: &tokio_postgres::Transaction<'_>,
        counts: &std::collections::BTreeMap<i64, i64>,
        sign: i64,
    ) -> Result<(), tokio_postgres::Error> {
        if counts.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = counts.keys().copied().collect();
        let ns: Vec<i64> = counts.values().map(|n| n * sign).collect();
        // An UPDATE locks rows in the order its plan meets them; this locks them in id order.
        tx.execute(
            "SELECT id FROM series WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .await?;
        tx.execute(
            "UPDATE series s SET readings = GREATEST(s.readings + c.n, 0)
             FROM (SELECT unnest($1::int8[]) AS id, unnest($2::int8[]) AS n) c
             WHERE s.id = c.id",
            &[&ids, &ns],
        )
        .await?;
        Ok(())
    }

    /// Deletes one event and its readings; the readings deleted. What it took from each
    /// series and edge goes to `gone`, applied once at the end of the step
    /// ([`Gone::apply`]): counts updated as they go would lock rows in no set order.
    async fn remove_event(
        tx: &tokio_postgres::Transaction<'_>,
        seq: i64,
        edge: String,
        gone: &mut Gone,
    ) -> Result<u64, tokio_postgres::Error> {
        let mut n = 0i64;
        for row in tx
            .query(
                "DELETE FROM readings WHERE event = $1 RETURNING series",
                &[&seq],
            )
            .await?
        {
            *gone.series.entry(row.get(0)).or_default() += 1;
            n += 1;
        }
        tx.execute("DELETE FROM events WHERE seq = $1", &[&seq])
            .await?;
        if n > 0 {
            *gone.edges.entry(edge).or_default() += n;
        }
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn remove_old_tx(
        client: &mut Object,
        cutoff: Option<i64>,
        max_readings: u64,
        chunk: u64,
    ) -> Result<Removed, tokio_postgres::Error> {
        let tx = client.transaction().await?;
        let mut removed = Removed::default();
        let mut gone = Gone::default();
        let limit = i64::try_from(chunk.max(1)).unwrap_or(i64::MAX);
        if let Some(cutoff) = cutoff {
            let cutoff_ms = cutoff.div_euclid(1_000_000);
            let old = tx
                .query(
                    "SELECT seq, edge FROM events WHERE origin < $1 AND received_ms < $2
                     ORDER BY origin LIMIT $3",
                    &[&cutoff, &cutoff_ms, &limit],
                )
                .await?;
            for row in old {
                if removed.readings >= STEP_READINGS {
                    break;
                }
                let (seq, edge): (i64, String) = (row.get(0), row.get(1));
                removed.readings += Self::remove_event(&tx, seq, edge, &mut gone).await?;
                removed.events += 1;
            }
            removed.alerts = tx
                .execute(
                    "DELETE FROM alerts WHERE seq IN
                         (SELECT seq FROM alerts WHERE origin < $1 ORDER BY origin LIMIT $2)",
                    &[&cutoff, &limit],
                )
                .await?;
        }
        let total: i64 = tx
            .query_one(
                "SELECT COALESCE(sum(readings), 0)::int8 FROM edge_totals",
                &[],
            )
            .await?
            .get(0);
        // The edges' counts are brought down at the end of the step.
        let stored = u64::try_from(total)
            .unwrap_or(0)
            .saturating_sub(removed.readings);
        if max_readings > 0
            && stored > max_readings
            && removed.events < chunk.max(1)
            && removed.readings < STEP_READINGS
        {
            let mut excess = stored - max_readings;
            let room = i64::try_from(chunk.max(1) - removed.events).unwrap_or(i64::MAX);
            let oldest = tx
                .query(
                    "SELECT seq, edge FROM events ORDER BY origin LIMIT $1",
                    &[&room],
                )
                .await?;
            for row in oldest {
                if excess == 0 || removed.readings >= STEP_READINGS {
                    break;
                }
                let (seq, edge): (i64, String) = (row.get(0), row.get(1));
                let n = Self::remove_event(&tx, seq, edge, &mut gone).await?;
                removed.readings += n;
                removed.events += 1;
                excess = excess.saturating_sub(n);
            }
        }
        gone.apply(&tx).await?;
        tx.commit().await?;
        Ok(removed)
    }
}

/// What a retention step took from each series and each edge.
#[derive(Default)]
struct Gone {
    series: std::collections::BTreeMap<i64, i64>,
    edges: std::collections::BTreeMap<String, i64>,
}

impl Gone {
    /// Brings the counts down: series first, then edges, each in key order, as ingest
    /// takes them, so a step and a batch wait for each other rather than deadlock.
    async fn apply(
        self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        PgStore::count_series(tx, &self.series, -1).await?;
        for (edge, n) in self.edges {
            tx.execute(
                "UPDATE edge_totals SET readings = GREATEST(readings - $2, 0) WHERE edge = $1",
                &[&edge, &n],
            )
            .await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn lease(&self, name: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        self.db.lease(name, ttl).await.map_err(failed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(failed)?;
        Ok(())
    }

    async fn enroll(
        &self,
        name: String,
        fingerprint: String,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(failed)?;
        let existing = tx
            .query_opt(
                "SELECT revoked_ms FROM edges WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await
            .map_err(failed)?;
        if existing.is_some_and(|r| r.get::<_, Option<i64>>(0).is_none()) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO edges (name, fingerprint, enrolled_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET fingerprint = $2, enrolled_ms = $3, revoked_ms = NULL",
            &[&name, &fingerprint, &now_ms],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(true)
    }

    async fn revoke(&self, name: String, now_ms: i64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE edges SET revoked_ms = COALESCE(revoked_ms, $2) WHERE name = $1",
                &[&name, &now_ms],
            )
            .await
            .map_err(failed)?;
        Ok(n > 0)
    }

    async fn edges(&self) -> Result<Vec<Edge>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {EDGE_COLUMNS} FROM edges ORDER BY name"),
                &[],
            )
            .await
            .map_err(failed)?;
        Ok(rows.iter().map(edge_row).collect())
    }

    async fn edge(&self, name: String) -> Result<Option<Edge>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {EDGE_COLUMNS} FROM edges WHERE name = $1"),
                &[&name],
            )
            .await
            .map_err(failed)?;
        Ok(row.as_ref().map(edge_row))
    }

    async fn edge_by_fingerprint(&self, fingerprint: String) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT name FROM edges WHERE fingerprint = $1 AND revoked_ms IS NULL",
                &[&fingerprint],
            )
            .await
            .map_err(failed)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn ingest(&self, batch: Incoming) -> Result<Stored, StoreError> {
        let mut client = self.client().await?;
        self.ingest_tx(&mut client, batch).await.map_err(failed)
    }

    async fn readings(&self, q: ReadingQuery) -> Result<(Vec<EdgeReading>, u64), StoreError> {
        // The series asked for, and the part of each asked for.
        let mut series = String::from("s.edge = $1");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(q.edge.clone())];
        if let Some(d) = &q.device {
            args.push(Box::new(d.clone()));
            series.push_str(&format!(" AND s.device = ${}", args.len()));
        }
        if let Some(r) = &q.resource {
            args.push(Box::new(r.clone()));
            series.push_str(&format!(" AND s.resource = ${}", args.len()));
        }
        let mut range = String::new();
        if let Some(s) = q.start {
            args.push(Box::new(s));
            range.push_str(&format!(" AND r.origin >= ${}", args.len()));
        }
        if let Some(e) = q.end {
            args.push(Box::new(e));
            range.push_str(&format!(" AND r.origin <= ${}", args.len()));
        }
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let client = self.client().await?;
        // How many series the filter selects, and how many readings match: without a time
        // range from the series' counts, with one counted from the index on (series, origin).
        let count = if range.is_empty() {
            format!(
                "SELECT count(*), COALESCE(sum(s.readings), 0)::int8 FROM series s WHERE {series}"
            )
        } else {
            format!(
                "SELECT (SELECT count(*) FROM series s WHERE {series}),
                        (SELECT count(*) FROM series s JOIN readings r ON r.series = s.id
                         WHERE {series}{range})"
            )
        };
        let counted = client.query_one(&count, &refs).await.map_err(failed)?;
        let (series_n, total): (i64, i64) = (counted.get(0), counted.get(1));
        let bound = |n: u64| n.min(i64::MAX as u64);
        let (offset, limit) = (bound(q.offset), bound(q.limit));
        let depth = bound(offset.saturating_add(limit));
        // The page. Usually: the newest `offset + limit` of each series (a short backward
        // range of its index), merged and cut, which reads series × depth rows however
        // many match. When that is more than match (a deep page over many series), the
        // matching rows sorted whole read fewer. Only the page's rows meet their events.
        let per_series = u64::try_from(series_n).unwrap_or(0).saturating_mul(depth);
        let candidates = if per_series <= u64::try_from(total).unwrap_or(0) {
            format!(
                "SELECT s.edge, s.device, s.resource, s.profile, s.value_type, s.units,
                        r.origin, r.seq, r.value, r.event, r.ord
                 FROM series s CROSS JOIN LATERAL (
                     SELECT r.origin, r.seq, r.value, r.event, r.ord FROM readings r
                     WHERE r.series = s.id{range}
                     ORDER BY r.origin DESC, r.seq DESC LIMIT {depth}
                 ) r
                 WHERE {series}"
            )
        } else {
            format!(
                "SELECT s.edge, s.device, s.resource, s.profile, s.value_type, s.units,
                        r.origin, r.seq, r.value, r.event, r.ord
                 FROM series s JOIN readings r ON r.series = s.id
                 WHERE {series}{range}"
            )
        };
        let rows = client
            .query(
                &format!(
                    "SELECT p.edge, p.device, p.resource, p.profile, p.origin, p.value_type,
                            p.units, p.value, e.received_ms, p.event, p.ord
                     FROM (
                         {candidates}
                         ORDER BY origin DESC, seq DESC LIMIT {limit} OFFSET {offset}
                     ) p JOIN events e ON e.seq = p.event
                     ORDER BY p.origin DESC, p.seq DESC"
                ),
                &refs,
            )
            .await
            .map_err(failed)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let sealed: Vec<u8> = r.get(7);
            let plain = self
                .db
                .sealer
                .open(&value_aad(r.get(9), r.get(10)), &sealed)
                .map_err(failed)?;
            out.push(EdgeReading {
                edge: r.get(0),
                device_name: r.get(1),
                resource_name: r.get(2),
                profile_name: r.get(3),
                origin: r.get(4),
                value_type: r.get(5),
                units: r.get(6),
                value: String::from_utf8_lossy(&plain).into_owned(),
                received_ms: r.get(8),
            });
        }
        Ok((out, u64::try_from(total).unwrap_or(0)))
    }

    async fn alerts(&self, edge: String, limit: u64) -> Result<Vec<Alert>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, body FROM alerts WHERE edge = $1 ORDER BY origin DESC, seq DESC LIMIT $2",
                &[&edge, &(i64::try_from(limit).unwrap_or(i64::MAX))],
            )
            .await
            .map_err(failed)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let id: String = r.get(0);
                let sealed: Vec<u8> = r.get(1);
                let plain = self.db.sealer.open(&alert_aad(&edge, &id), &sealed).ok()?;
                serde_json::from_slice(&plain).ok()
            })
            .collect())
    }

    async fn event_count(&self, edge: String) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one("SELECT count(*) FROM events WHERE edge = $1", &[&edge])
            .await
            .map_err(failed)?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn reading_total(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT COALESCE(sum(readings), 0)::int8 FROM edge_totals",
                &[],
            )
            .await
            .map_err(failed)?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn remove_old(
        &self,
        cutoff: Option<i64>,
        max_readings: u64,
        chunk: u64,
    ) -> Result<Removed, StoreError> {
        let mut client = self.client().await?;
        Self::remove_old_tx(&mut client, cutoff, max_readings, chunk)
            .await
            .map_err(failed)
    }
}
