//! [`EventStore`] on PostgreSQL (`[core_data.storage] backend = "postgres"`), for several
//! core-data instances sharing one database.
//!
//! Tables live in the schema `core_data`. What identifies and orders a reading (ids,
//! device, resource and profile names, origin, value type, units) is in columns, indexed as
//! the queries need them; the value itself (simple, binary or object), its numeric view and
//! its tags, and each event's tags, are sealed by [`outpost_kit::pg::Sealer`] with the
//! node's key before they are sent, bound to their event and position: PostgreSQL, its
//! files and its backups hold no plaintext sensor value. Aggregates are therefore computed
//! here, over the opened values of the selected readings.
//!
//! An append is one transaction: the events are inserted with `ON CONFLICT (id) DO
//! NOTHING`, so an event already stored (a redelivery, possibly to another instance) comes
//! back as a duplicate and is stored once; a batch with an event the database refuses is
//! stored event by event, so only that event is refused. Counts per device and per series
//! are kept in the same transactions, as the SQLite store keeps them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use outpost_contracts::event::{Event, Reading, ReadingValue, Tags};
use outpost_contracts::value::ValueType;
use outpost_kit::pg::{self, Migration, StorageConfig, tokio_postgres};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;

use crate::store::{
    Aggregate, Deleted, DeviceSummary, EventStore, IngestEvent, Outcome, Query, SeriesAggregate,
    StoreError, Totals,
};

/// The schema core-data's tables live in.
pub const SCHEMA: &str = "core_data";

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "events and readings, values sealed",
    sql: "CREATE TABLE events (
              seq BIGSERIAL PRIMARY KEY,
              id UUID NOT NULL UNIQUE,
              device TEXT NOT NULL,
              profile TEXT NOT NULL,
              source TEXT NOT NULL,
              origin BIGINT NOT NULL,
              tags BYTEA,
              readings INTEGER NOT NULL
          );
          CREATE INDEX events_origin_id ON events (origin, id);
          CREATE INDEX events_device_origin ON events (device, origin, seq);
          CREATE TABLE readings (
              event_seq BIGINT NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
              ord INTEGER NOT NULL,
              id UUID NOT NULL,
              origin BIGINT NOT NULL,
              device TEXT NOT NULL,
              resource TEXT NOT NULL,
              profile TEXT NOT NULL,
              value_type SMALLINT NOT NULL,
              units TEXT NOT NULL,
              body BYTEA NOT NULL,
              PRIMARY KEY (event_seq, ord)
          );
          CREATE INDEX readings_resource_origin ON readings (resource, origin, event_seq, ord);
          CREATE TABLE device_stats (
              device TEXT PRIMARY KEY,
              events BIGINT NOT NULL,
              readings BIGINT NOT NULL
          );
          CREATE TABLE series_stats (
              device TEXT NOT NULL,
              resource TEXT NOT NULL,
              readings BIGINT NOT NULL,
              PRIMARY KEY (device, resource)
          );",
}];

/// What is sealed of a reading.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Body {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    b: Option<serde_bytes_vec::Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<f64>,
}

/// Binary values as CBOR byte strings, not arrays of numbers.
mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Debug, Default)]
    pub struct Bytes(pub Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

fn tags_text(tags: &Option<Tags>) -> Option<String> {
    tags.as_ref()
        .filter(|t| !t.is_empty())
        .and_then(|t| serde_json::to_string(t).ok())
}

fn parse_tags(s: Option<String>) -> Option<Tags> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

/// Associated data of a reading's sealed body: its event and position.
fn reading_aad(event: &uuid::Uuid, ord: i32) -> Vec<u8> {
    let mut a = Vec::with_capacity(21);
    a.push(b'r');
    a.extend_from_slice(event.as_bytes());
    a.extend_from_slice(&ord.to_be_bytes());
    a
}

/// Associated data of an event's sealed tags.
fn event_aad(event: &uuid::Uuid) -> Vec<u8> {
    let mut a = Vec::with_capacity(17);
    a.push(b'e');
    a.extend_from_slice(event.as_bytes());
    a
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// core-data's events in PostgreSQL.
pub struct PgEventStore {
    db: pg::Database,
    failing: Mutex<Option<String>>,
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn refs(p: &Params) -> Vec<&(dyn ToSql + Sync)> {
    p.iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// The events of an append, column by column (for one `INSERT ... SELECT FROM unnest`).
#[derive(Default)]
struct EventColumns {
    id: Vec<uuid::Uuid>,
    device: Vec<String>,
    profile: Vec<String>,
    source: Vec<String>,
    origin: Vec<i64>,
    tags: Vec<Option<Vec<u8>>>,
    readings: Vec<i32>,
}

/// The readings of an append, column by column.
#[derive(Default)]
struct ReadingColumns {
    event_seq: Vec<i64>,
    ord: Vec<i32>,
    id: Vec<uuid::Uuid>,
    origin: Vec<i64>,
    device: Vec<String>,
    resource: Vec<String>,
    profile: Vec<String>,
    value_type: Vec<i16>,
    units: Vec<String>,
    body: Vec<Vec<u8>>,
}

/// A selected event row: (seq, device, readings).
type EventRow = (i64, String, i32);

impl PgEventStore {
    /// Connects, migrates the schema, and is ready to serve.
    pub async fn open(cfg: &StorageConfig, secrets: &std::path::Path) -> Result<Self, pg::PgError> {
        Ok(Self {
            db: pg::Database::open(cfg, secrets, crate::SERVICE, SCHEMA, MIGRATIONS).await?,
            failing: Mutex::new(None),
        })
    }

    async fn client(&self) -> Result<pg::Object, StoreError> {
        self.db.client().await.map_err(unavailable)
    }

    fn set_failing(&self, why: Option<String>) {
        *self.failing.lock().unwrap_or_else(PoisonError::into_inner) = why;
    }

    fn seal_reading(&self, event: &uuid::Uuid, ord: i32, r: &Reading, num: Option<f64>) -> Vec<u8> {
        let mut body = Body {
            t: tags_text(&r.tags),
            n: num,
            ..Body::default()
        };
        match &r.value {
            ReadingValue::Simple(v) => body.s = Some(v.clone()),
            ReadingValue::Binary { data, media_type } => {
                body.b = Some(serde_bytes_vec::Bytes(data.clone()));
                body.m = Some(media_type.clone());
            }
            ReadingValue::Object(o) => body.o = Some(o.to_string()),
            ReadingValue::Null => {}
        }
        let mut plain = Vec::new();
        // Writing CBOR into memory fails only if serialising fails, which plain strings,
        // bytes and numbers do not.
        let _ = ciborium::into_writer(&body, &mut plain);
        self.db.sealer.seal(&reading_aad(event, ord), &plain)
    }

    fn open_body(&self, event: &uuid::Uuid, ord: i32, sealed: &[u8]) -> Result<Body, StoreError> {
        let plain = self
            .db
            .sealer
            .open(&reading_aad(event, ord), sealed)
            .map_err(unavailable)?;
        ciborium::from_reader(plain.as_slice())
            .map_err(|e| unavailable(format!("a stored reading does not decode: {e}")))
    }

    /// One transaction storing `events`; a data error fails it whole.
    async fn append_tx(
        &self,
        client: &mut pg::Object,
        events: &[&IngestEvent],
    ) -> Result<Vec<Outcome>, tokio_postgres::Error> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        let mut ids = Vec::new();
        let mut first_of: HashMap<uuid::Uuid, usize> = HashMap::new();
        for (i, ie) in events.iter().enumerate() {
            match uuid::Uuid::parse_str(&ie.event.id) {
                Err(_) => {
                    outcomes[i] = Some(Outcome::Refused(format!(
                        "event id '{}' is not a UUID",
                        ie.event.id
                    )))
                }
                Ok(id) if first_of.contains_key(&id) => outcomes[i] = Some(Outcome::Duplicate),
                Ok(id) => {
                    first_of.insert(id, i);
                    ids.push((i, id));
                }
            }
        }
        let tx = client.transaction().await?;
        let mut e = EventColumns::default();
        for (i, id) in &ids {
            let ev = &events[*i].event;
            e.id.push(*id);
            e.device.push(ev.device_name.clone());
            e.profile.push(ev.profile_name.clone());
            e.source.push(ev.source_name.clone());
            e.origin.push(ev.origin);
            e.tags.push(
                tags_text(&ev.tags).map(|t| self.db.sealer.seal(&event_aad(id), t.as_bytes())),
            );
            e.readings
                .push(i32::try_from(ev.readings.len()).unwrap_or(i32::MAX));
        }
        let inserted = tx
            .query(
                "INSERT INTO events (id, device, profile, source, origin, tags, readings)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[],
                                      $5::int8[], $6::bytea[], $7::int4[])
                 ON CONFLICT (id) DO NOTHING RETURNING id, seq",
                &[
                    &e.id,
                    &e.device,
                    &e.profile,
                    &e.source,
                    &e.origin,
                    &e.tags,
                    &e.readings,
                ],
            )
            .await?;
        let seqs: HashMap<uuid::Uuid, i64> = inserted
            .iter()
            .map(|r| (r.get::<_, uuid::Uuid>(0), r.get::<_, i64>(1)))
            .collect();
        let mut rc = ReadingColumns::default();
        let mut devices: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        let mut series: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (i, id) in &ids {
            let Some(seq) = seqs.get(id) else {
                outcomes[*i] = Some(Outcome::Duplicate);
                continue;
            };
            let ie = events[*i];
            let ev = &ie.event;
            for (k, r) in ev.readings.iter().enumerate() {
                let ord = i32::try_from(k).unwrap_or(i32::MAX);
                rc.event_seq.push(*seq);
                rc.ord.push(ord);
                rc.id
                    .push(uuid::Uuid::parse_str(&r.id).unwrap_or_else(|_| uuid::Uuid::new_v4()));
                rc.origin.push(r.origin);
                rc.device.push(ev.device_name.clone());
                rc.resource.push(r.resource_name.clone());
                rc.profile.push(r.profile_name.clone());
                rc.value_type.push(i16::from(r.value_type.code()));
                rc.units.push(r.units.clone());
                rc.body
                    .push(self.seal_reading(id, ord, r, ie.nums.get(k).copied().flatten()));
                *series
                    .entry((ev.device_name.as_str(), r.resource_name.as_str()))
                    .or_default() += 1;
            }
            let d = devices.entry(ev.device_name.as_str()).or_default();
            d.0 += 1;
            d.1 += ev.readings.len() as i64;
            outcomes[*i] = Some(Outcome::Stored);
        }
        if !rc.event_seq.is_empty() {
            tx.execute(
                "INSERT INTO readings (event_seq, ord, id, origin, device, resource, profile,
                                       value_type, units, body)
                 SELECT * FROM unnest($1::int8[], $2::int4[], $3::uuid[], $4::int8[],
                                      $5::text[], $6::text[], $7::text[], $8::int2[],
                                      $9::text[], $10::bytea[])",
                &[
                    &rc.event_seq,
                    &rc.ord,
                    &rc.id,
                    &rc.origin,
                    &rc.device,
                    &rc.resource,
                    &rc.profile,
                    &rc.value_type,
                    &rc.units,
                    &rc.body,
                ],
            )
            .await?;
        }
        write_stats(&tx, &devices, &series).await?;
        tx.commit().await?;
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Duplicate))
            .collect())
    }

    /// Events with their readings, in the order of `rows`.
    async fn assemble(
        &self,
        client: &pg::Object,
        rows: Vec<tokio_postgres::Row>,
    ) -> Result<Vec<Event>, StoreError> {
        let seqs: Vec<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
        let mut readings: HashMap<i64, Vec<Reading>> = HashMap::new();
        if !seqs.is_empty() {
            let rs = client
                .query(
                    &format!(
                        "SELECT {READING_COLUMNS} FROM readings r JOIN events e ON e.seq = r.event_seq
                         WHERE r.event_seq = ANY($1) ORDER BY r.event_seq, r.ord"
                    ),
                    &[&seqs],
                )
                .await
                .map_err(unavailable)?;
            for r in rs {
                let seq: i64 = r.get(10);
                readings.entry(seq).or_default().push(self.reading(&r)?);
            }
        }
        rows.into_iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let id: uuid::Uuid = r.get(1);
                let tags: Option<Vec<u8>> = r.get(6);
                let tags = match tags {
                    Some(sealed) => {
                        let plain = self
                            .db
                            .sealer
                            .open(&event_aad(&id), &sealed)
                            .map_err(unavailable)?;
                        parse_tags(String::from_utf8(plain).ok())
                    }
                    None => None,
                };
                Ok(Event {
                    api_version: outpost_contracts::API_VERSION.to_string(),
                    id: id.to_string(),
                    device_name: r.get(2),
                    profile_name: r.get(3),
                    source_name: r.get(4),
                    origin: r.get(5),
                    tags,
                    readings: readings.remove(&seq).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// A reading from a row of [`READING_COLUMNS`].
    fn reading(&self, r: &tokio_postgres::Row) -> Result<Reading, StoreError> {
        let event: uuid::Uuid = r.get(8);
        let ord: i32 = r.get(9);
        let sealed: Vec<u8> = r.get(7);
        let body = self.open_body(&event, ord, &sealed)?;
        let code: i16 = r.get(5);
        let value = match body {
            Body { s: Some(v), .. } => ReadingValue::Simple(v),
            Body {
                b: Some(data), m, ..
            } => ReadingValue::Binary {
                data: data.0,
                media_type: m.unwrap_or_default(),
            },
            Body { o: Some(o), .. } => {
                ReadingValue::Object(serde_json::from_str(&o).unwrap_or(serde_json::Value::Null))
            }
            _ => ReadingValue::Null,
        };
        Ok(Reading {
            id: r.get::<_, uuid::Uuid>(0).to_string(),
            origin: r.get(1),
            device_name: r.get(2),
            resource_name: r.get(3),
            profile_name: r.get(4),
            value_type: u8::try_from(code)
                .ok()
                .and_then(ValueType::from_code)
                .unwrap_or(ValueType::String),
            units: r.get(6),
            tags: parse_tags(body.t),
            value,
        })
    }

    /// Deletes the events of `rows` with their readings, and keeps the counts right.
    async fn delete_rows(&self, rows: Vec<EventRow>) -> Result<Deleted, StoreError> {
        if rows.is_empty() {
            return Ok(Deleted::default());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let per_series = tx
            .query(
                "WITH gone AS (DELETE FROM readings WHERE event_seq = ANY($1)
                               RETURNING device, resource)
                 SELECT device, resource, count(*) FROM gone GROUP BY device, resource",
                &[&seqs],
            )
            .await
            .map_err(unavailable)?;
        let per_device = tx
            .query(
                "WITH gone AS (DELETE FROM events WHERE seq = ANY($1) RETURNING device, readings)
                 SELECT device, count(*), COALESCE(sum(readings), 0)::int8 FROM gone GROUP BY device",
                &[&seqs],
            )
            .await
            .map_err(unavailable)?;
        let series_rows: Vec<(String, String, i64)> = per_series
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let device_rows: Vec<(String, i64, i64)> = per_device
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let mut deleted = Deleted::default();
        let mut devices: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for (d, e, r) in &device_rows {
            devices.insert(d, (-e, -r));
            deleted.events += u64::try_from(*e).unwrap_or(0);
            deleted.readings += u64::try_from(*r).unwrap_or(0);
        }
        let series: BTreeMap<(&str, &str), i64> = series_rows
            .iter()
            .map(|(d, r, n)| ((d.as_str(), r.as_str()), -n))
            .collect();
        write_stats(&tx, &devices, &series)
            .await
            .map_err(unavailable)?;
        tx.batch_execute(
            "DELETE FROM device_stats WHERE events <= 0;
             DELETE FROM series_stats WHERE readings <= 0;",
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(deleted)
    }

    /// Deletes the events `sql` selects, within `budget` readings; if another instance
    /// deleted all of them first, selects again: nothing deleted means nothing is selected.
    async fn delete_selected(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        budget: u64,
    ) -> Result<Deleted, StoreError> {
        loop {
            let rows = self.select(sql, params, budget).await?;
            if rows.is_empty() {
                return Ok(Deleted::default());
            }
            let d = self.delete_rows(rows).await?;
            if d.events > 0 {
                return Ok(d);
            }
        }
    }

    /// Events selected by `sql` (seq, device, readings), within `budget` readings (at least
    /// one event).
    async fn select(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        budget: u64,
    ) -> Result<Vec<EventRow>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(sql, params).await.map_err(unavailable)?;
        let mut out = Vec::new();
        let mut sum = 0u64;
        for r in rows {
            let row: EventRow = (r.get(0), r.get(1), r.get(2));
            let n = u64::try_from(row.2).unwrap_or(0);
            if !out.is_empty() && sum + n > budget {
                break;
            }
            sum += n;
            out.push(row);
        }
        Ok(out)
    }

    async fn device_totals(&self, device: Option<&str>) -> Result<Totals, StoreError> {
        let client = self.client().await?;
        let row = match device {
            None => client
                .query_one(
                    "SELECT COALESCE(sum(events), 0)::int8, COALESCE(sum(readings), 0)::int8
                     FROM device_stats",
                    &[],
                )
                .await
                .map_err(unavailable)?,
            Some(d) => client
                .query_one(
                    "SELECT COALESCE(sum(events), 0)::int8, COALESCE(sum(readings), 0)::int8
                     FROM device_stats WHERE device = $1",
                    &[&d],
                )
                .await
                .map_err(unavailable)?,
        };
        Ok(Totals {
            events: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            readings: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
        })
    }
}

/// Adds count changes, rows in key order (so concurrent transactions lock them in one
/// order and cannot deadlock).
async fn write_stats(
    tx: &tokio_postgres::Transaction<'_>,
    devices: &BTreeMap<&str, (i64, i64)>,
    series: &BTreeMap<(&str, &str), i64>,
) -> Result<(), tokio_postgres::Error> {
    if !devices.is_empty() {
        let names: Vec<&str> = devices.keys().copied().collect();
        let events: Vec<i64> = devices.values().map(|v| v.0).collect();
        let readings: Vec<i64> = devices.values().map(|v| v.1).collect();
        tx.execute(
            "INSERT INTO device_stats (device, events, readings)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[])
             ON CONFLICT (device) DO UPDATE SET events = device_stats.events + EXCLUDED.events,
                                                readings = device_stats.readings + EXCLUDED.readings",
            &[&names, &events, &readings],
        )
        .await?;
    }
    if !series.is_empty() {
        let devices: Vec<&str> = series.keys().map(|k| k.0).collect();
        let resources: Vec<&str> = series.keys().map(|k| k.1).collect();
        let readings: Vec<i64> = series.values().copied().collect();
        tx.execute(
            "INSERT INTO series_stats (device, resource, readings)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
             ON CONFLICT (device, resource) DO UPDATE
                 SET readings = series_stats.readings + EXCLUDED.readings",
            &[&devices, &resources, &readings],
        )
        .await?;
    }
    Ok(())
}

/// The columns [`PgEventStore::reading`] reads (readings `r`, their events `e`).
const READING_COLUMNS: &str = "r.id, r.origin, r.device, r.resource, r.profile, r.value_type, \
     r.units, r.body, e.id, r.ord, r.event_seq";

const EVENT_COLUMNS: &str = "e.seq, e.id, e.device, e.profile, e.source, e.origin, e.tags";

/// How a query reaches its rows, as SQL over events `e` and readings `r`.
struct Plan {
    /// A resource without a device: the readings' `(resource, origin)` index.
    by_resource: bool,
    by_device: bool,
    clause: String,
    params: Params,
}

fn plan(q: &Query, readings: bool) -> Plan {
    let mut params: Params = Vec::new();
    let mut conds = Vec::new();
    let resource = q.resource.as_ref().filter(|_| readings);
    let any_of = if readings {
        q.resources.clone()
    } else {
        Vec::new()
    };
    let by_resource = readings && q.device.is_none() && resource.is_some() && any_of.is_empty();
    let t = if by_resource { "r" } else { "e" };
    if let Some(d) = &q.device {
        params.push(Box::new(d.clone()));
        conds.push(format!("e.device = ${}", params.len()));
    }
    if let Some(r) = resource {
        params.push(Box::new(r.clone()));
        conds.push(format!("r.resource = ${}", params.len()));
    }
    if !any_of.is_empty() {
        params.push(Box::new(any_of));
        conds.push(format!("r.resource = ANY(${})", params.len()));
    }
    if let Some(s) = q.start {
        params.push(Box::new(s));
        conds.push(format!("{t}.origin >= ${}", params.len()));
    }
    if let Some(e) = q.end {
        params.push(Box::new(e));
        conds.push(format!("{t}.origin <= ${}", params.len()));
    }
    Plan {
        by_resource,
        by_device: q.device.is_some(),
        clause: if conds.is_empty() {
            "TRUE".into()
        } else {
            conds.join(" AND ")
        },
        params,
    }
}

/// Newest first, as the SQLite store orders them.
fn event_order(by_device: bool) -> &'static str {
    if by_device {
        "e.origin DESC, e.seq DESC"
    } else {
        "e.origin DESC, e.id DESC"
    }
}

fn limit(q: &Query, params: &mut Params) -> String {
    params.push(Box::new(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    params.push(Box::new(i64::try_from(q.offset).unwrap_or(i64::MAX)));
    format!("LIMIT ${} OFFSET ${}", params.len() - 1, params.len())
}

/// One series' aggregate as it is computed.
#[derive(Debug, Default)]
struct Acc {
    profile: String,
    all: i64,
    numeric: i64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
    tmin: i16,
    tmax: i16,
    origin: i64,
}

#[async_trait::async_trait]
impl EventStore for PgEventStore {
    async fn append(&self, events: Arc<[IngestEvent]>) -> Result<Vec<Outcome>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let all: Vec<&IngestEvent> = events.iter().collect();
        // Two instances inserting the same events at once (a redelivery) may lock their
        // rows in opposite orders: PostgreSQL aborts one of them, which is tried again.
        let mut first = self.append_tx(&mut client, &all).await;
        for _ in 0..3 {
            match &first {
                Err(e) if pg::is_retryable(e) => first = self.append_tx(&mut client, &all).await,
                _ => break,
            }
        }
        match first {
            Ok(out) => {
                self.set_failing(None);
                Ok(out)
            }
            Err(e) if pg::is_data_error(&e) => {
                // Something in the batch cannot be stored: event by event, so one bad event
                // cannot hold back the others; if the database fails meanwhile the call
                // fails and is retried, and what was stored by then comes back duplicate.
                tracing::warn!(error = %e, "a batch failed; storing its events one by one");
                let mut outs = Vec::with_capacity(all.len());
                for ie in all {
                    match self.append_tx(&mut client, &[ie]).await {
                        Ok(mut o) => outs.push(o.pop().unwrap_or(Outcome::Duplicate)),
                        Err(e) if pg::is_data_error(&e) => outs.push(Outcome::Refused(
                            e.as_db_error()
                                .map_or_else(|| e.to_string(), |d| d.message().to_string()),
                        )),
                        Err(e) => {
                            self.set_failing(Some(e.to_string()));
                            return Err(unavailable(e));
                        }
                    }
                }
                self.set_failing(None);
                Ok(outs)
            }
            Err(e) => {
                self.set_failing(Some(e.to_string()));
                tracing::error!(error = %e, events = events.len(), "cannot store events; they will be retried");
                Err(unavailable(e))
            }
        }
    }

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.id = $1"),
                &[&id],
            )
            .await
            .map_err(unavailable)?;
        Ok(self.assemble(&client, rows).await?.pop())
    }

    async fn events(&self, q: Query) -> Result<(u64, Vec<Event>), StoreError> {
        let p = plan(&q, false);
        let total = if !q.count_total {
            0
        } else if q.start.is_none() && q.end.is_none() {
            self.device_totals(q.device.as_deref()).await?.events
        } else {
            self.count(
                &format!("SELECT count(*) FROM events e WHERE {}", p.clause),
                &p.params,
            )
            .await?
        };
        self.events_page(q, p, total).await
    }

    async fn readings(&self, q: Query) -> Result<(u64, Vec<Reading>), StoreError> {
        let p = plan(&q, true);
        let (from, order) = if p.by_resource {
            (
                "readings r JOIN events e ON e.seq = r.event_seq",
                "r.origin DESC, r.event_seq DESC, r.ord DESC".to_string(),
            )
        } else {
            (
                "events e JOIN readings r ON r.event_seq = e.seq",
                format!("{}, r.ord", event_order(p.by_device)),
            )
        };
        let total = if !q.count_total {
            0
        } else if let Some(t) = self.reading_total(&q).await? {
            t
        } else {
            self.count(
                &format!("SELECT count(*) FROM {from} WHERE {}", p.clause),
                &p.params,
            )
            .await?
        };
        self.readings_page(&q, p, from, &order, total).await
    }

    async fn aggregate(&self, q: Query, f: Aggregate) -> Result<Vec<Reading>, StoreError> {
        let p = plan(&q, true);
        let from = if p.by_resource {
            "readings r JOIN events e ON e.seq = r.event_seq"
        } else {
            "events e JOIN readings r ON r.event_seq = e.seq"
        };
        let client = self.client().await?;
        // Streamed and folded row by row: however many readings are selected, only the
        // groups are held.
        let rows = client
            .query_raw(
                &format!("SELECT {READING_COLUMNS} FROM {from} WHERE {}", p.clause),
                refs(&p.params),
            )
            .await
            .map_err(unavailable)?;
        let mut rows = std::pin::pin!(rows);
        let mut groups: BTreeMap<(String, String), Acc> = BTreeMap::new();
        while let Some(r) = futures_util::StreamExt::next(&mut rows).await {
            let r = r.map_err(unavailable)?;
            let event: uuid::Uuid = r.get(8);
            let ord: i32 = r.get(9);
            let sealed: Vec<u8> = r.get(7);
            let num = self.open_body(&event, ord, &sealed)?.n;
            let code: i16 = r.get(5);
            let origin: i64 = r.get(1);
            let a = groups.entry((r.get(2), r.get(3))).or_insert_with(|| Acc {
                tmin: code,
                tmax: code,
                origin,
                ..Acc::default()
            });
            a.profile = r.get(4);
            a.all += 1;
            a.tmin = a.tmin.min(code);
            a.tmax = a.tmax.max(code);
            a.origin = a.origin.max(origin);
            if let Some(n) = num {
                a.numeric += 1;
                a.sum += n;
                a.min = Some(a.min.map_or(n, |m| m.min(n)));
                a.max = Some(a.max.map_or(n, |m| m.max(n)));
            }
        }
        Ok(groups
            .into_iter()
            .map(|((device, resource), a)| {
                let value = match f {
                    Aggregate::Count => Some(a.all as f64),
                    Aggregate::Min => a.min,
                    Aggregate::Max => a.max,
                    Aggregate::Sum => (a.numeric > 0).then_some(a.sum),
                    Aggregate::Avg => (a.numeric > 0).then(|| a.sum / a.numeric as f64),
                };
                SeriesAggregate {
                    device,
                    resource,
                    profile: a.profile,
                    value,
                    numeric: a.numeric,
                    type_codes: (i64::from(a.tmin), i64::from(a.tmax)),
                    origin: a.origin,
                }
                .reading(f)
            })
            .collect())
    }

    async fn device_summaries(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT s.device, s.events, s.readings,
                        (SELECT max(origin) FROM events e WHERE e.device = s.device)
                 FROM device_stats s ORDER BY s.device",
                &[],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| DeviceSummary {
                device: r.get(0),
                totals: Totals {
                    events: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                    readings: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                },
                last_origin: r.get::<_, Option<i64>>(3).unwrap_or(0),
            })
            .collect())
    }

    async fn stored_bytes(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (pg_total_relation_size('events') + pg_total_relation_size('readings')
                         + pg_total_relation_size('device_stats')
                         + pg_total_relation_size('series_stats'))::int8",
                &[],
            )
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn totals(&self, device: Option<String>) -> Result<Totals, StoreError> {
        self.device_totals(device.as_deref()).await
    }

    async fn delete_event(&self, id: uuid::Uuid) -> Result<bool, StoreError> {
        let rows = self
            .select(
                "SELECT seq, device, readings FROM events WHERE id = $1",
                &[&id],
                u64::MAX,
            )
            .await?;
        Ok(self.delete_rows(rows).await?.events > 0)
    }

    async fn delete_device(&self, device: String) -> Result<u64, StoreError> {
        let mut readings = 0;
        loop {
            let rows = self
                .select(
                    "SELECT seq, device, readings FROM events WHERE device = $1
                     ORDER BY seq LIMIT 1000",
                    &[&device],
                    50_000,
                )
                .await?;
            // Selected rows another instance deleted meanwhile are gone all the same: the
            // loop ends only when nothing is selected.
            if rows.is_empty() {
                return Ok(readings);
            }
            readings += self.delete_rows(rows).await?.readings;
        }
    }

    async fn delete_before(&self, cutoff: i64, chunk: u64) -> Result<Deleted, StoreError> {
        self.delete_selected(
            "SELECT seq, device, readings FROM events WHERE origin < $1
             ORDER BY origin LIMIT 1000",
            &[&cutoff],
            chunk,
        )
        .await
    }

    async fn trim(&self, keep: u64, chunk: u64) -> Result<Deleted, StoreError> {
        let total = self.device_totals(None).await?.readings;
        if total <= keep {
            return Ok(Deleted::default());
        }
        self.delete_selected(
            "SELECT seq, device, readings FROM events ORDER BY seq LIMIT 1000",
            &[],
            (total - keep).min(chunk),
        )
        .await
    }

    async fn readings_before(&self, cutoff: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COALESCE(sum(readings), 0)::int8 FROM events WHERE origin < $1",
                &[&cutoff],
            )
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn lease(&self, name: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        self.db.lease(name, ttl).await.map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(unavailable)?;
        Ok(())
    }

    fn writer_health(&self) -> Result<(), String> {
        match &*self.failing.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(why) => Err(format!("the last commit failed: {why}")),
            None => Ok(()),
        }
    }
}

impl PgEventStore {
    async fn count(&self, sql: &str, params: &Params) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(sql, &refs(params))
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Readings matching `q` without a time range, from the kept counts.
    async fn reading_total(&self, q: &Query) -> Result<Option<u64>, StoreError> {
        if q.start.is_some() || q.end.is_some() || !q.resources.is_empty() {
            return Ok(None);
        }
        let mut params: Params = Vec::new();
        let sql = match (&q.device, &q.resource) {
            (_, None) => {
                return Ok(Some(
                    self.device_totals(q.device.as_deref()).await?.readings,
                ));
            }
            (Some(d), Some(r)) => {
                params.push(Box::new(d.clone()));
                params.push(Box::new(r.clone()));
                "SELECT COALESCE(sum(readings), 0)::int8 FROM series_stats
                 WHERE device = $1 AND resource = $2"
            }
            (None, Some(r)) => {
                params.push(Box::new(r.clone()));
                "SELECT COALESCE(sum(readings), 0)::int8 FROM series_stats WHERE resource = $1"
            }
        };
        self.count(sql, &params).await.map(Some)
    }

    async fn events_page(
        &self,
        q: Query,
        mut p: Plan,
        total: u64,
    ) -> Result<(u64, Vec<Event>), StoreError> {
        let lim = limit(&q, &mut p.params);
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events e WHERE {} ORDER BY {} {lim}",
                    p.clause,
                    event_order(p.by_device)
                ),
                &refs(&p.params),
            )
            .await
            .map_err(unavailable)?;
        Ok((total, self.assemble(&client, rows).await?))
    }

    async fn readings_page(
        &self,
        q: &Query,
        mut p: Plan,
        from: &str,
        order: &str,
        total: u64,
    ) -> Result<(u64, Vec<Reading>), StoreError> {
        let lim = limit(q, &mut p.params);
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {READING_COLUMNS} FROM {from} WHERE {} ORDER BY {order} {lim}",
                    p.clause
                ),
                &refs(&p.params),
            )
            .await
            .map_err(unavailable)?;
        let readings = rows
            .iter()
            .map(|r| self.reading(r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((total, readings))
    }
}
