//! The cloud node's fleet queries on PostgreSQL with millions of readings.
//!
//! A private PostgreSQL server (the test kit's, TLS and a password as the cloud uses it)
//! receives `--readings` readings from `--edges` edges through the cloud store's own ingest
//! (each value sealed as in production, one transaction per batch), vacuumed and analysed as
//! autovacuum would, then the queries behind
//! `GET /api/v3/reading/edge/{edge}` are timed through the store: an edge's newest page, a
//! device's, one resource over the last hour, a deeper page, and a whole-day window.
//! **Reference**, in the same run on the same data: the same queries as the cloud wrote them
//! before migration 2 (one join sorted whole, and a row-by-row count for the total), sent
//! as SQL on a connection of the same pool; their rows are fetched but not unsealed.

use std::time::Instant;

use anyhow::{Context as _, bail};
use outpost_cloud::postgres::PgStore;
use outpost_cloud::store::{Incoming, ReadingQuery, Store as _};
use outpost_contracts::export::{Backlog, WireItem};
use serde_json::json;
use serde_json::value::RawValue;

use crate::{median, quantile};

#[derive(clap::Args, Clone)]
pub struct FleetArgs {
    /// Readings stored in all.
    #[arg(long, default_value_t = 3_000_000)]
    pub readings: u64,
    #[arg(long, default_value_t = 10)]
    pub edges: usize,
    /// Devices per edge.
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// Readings per event (one per resource).
    #[arg(long, default_value_t = 10)]
    pub resources: usize,
    /// Events per ingest batch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Times each query is run.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
}

/// A minute between an edge's ticks; every device of an edge reports once a tick.
const TICK_NS: i64 = 60_000_000_000;
const T0: i64 = 1_780_000_000_000_000_000;

pub async fn run(a: &FleetArgs) -> anyhow::Result<()> {
    if a.edges == 0 || a.devices == 0 || a.resources == 0 || a.batch == 0 {
        bail!("--edges, --devices, --resources and --batch must be above 0");
    }
    let server = tokio::task::spawn_blocking(outpost_testkit::postgres::Private::start)
        .await
        .context("start PostgreSQL")?;
    let database = server.database();
    let cfg = database.storage();
    let secrets = crate::TempDir::new("fleet-secrets")?;
    let store = PgStore::open(&cfg, &secrets.0)
        .await
        .map_err(|e| anyhow::anyhow!("open the cloud store: {e}"))?;
    for e in 0..a.edges {
        store
            .enroll(edge(e), format!("fp-{e}"), 0)
            .await
            .map_err(|e| anyhow::anyhow!("enroll: {e}"))?;
    }

    // Load: tick by tick, every device of every edge, in batches per edge.
    let events = a.readings / a.resources as u64;
    let ticks = events.div_ceil((a.edges * a.devices) as u64);
    let per_edge_batches = (a.devices * usize::try_from(ticks)?).div_ceil(a.batch);
    let started = Instant::now();
    let mut stored = 0u64;
    let mut seq = vec![0u64; a.edges];
    let mut next = vec![0usize; a.edges];
    for _ in 0..per_edge_batches {
        for e in 0..a.edges {
            let mut items = Vec::with_capacity(a.batch);
            while items.len() < a.batch && (next[e] as u64) < ticks * a.devices as u64 {
                let (tick, device) = (next[e] / a.devices, next[e] % a.devices);
                next[e] += 1;
                seq[e] += 1;
                items.push(item(a, e, device, tick as i64, seq[e])?);
            }
            if items.is_empty() {
                continue;
            }
            let n = items.len() as u64;
            let out = store
                .ingest(Incoming {
                    edge: edge(e),
                    address: "192.0.2.1:1".into(),
                    incarnation: 1,
                    priority: 1,
                    items,
                    backlog: Backlog::default(),
                })
                .await
                .map_err(|e| anyhow::anyhow!("ingest: {e}"))?;
            if out.accepted != n {
                bail!("stored {} of {n} events: {:?}", out.accepted, out.rejected);
            }
            stored += n * a.resources as u64;
        }
    }
    let load_s = started.elapsed().as_secs_f64();
    println!(
        "fleet: {stored} readings from {} edges x {} devices x {} resources ({ticks} minutes of data) \
         stored through the store in {load_s:.0} s: {:.0} readings/s",
        a.edges,
        a.devices,
        a.resources,
        stored as f64 / load_s
    );
    // What autovacuum does in a while after a load: statistics, and the visibility map
    // that lets a count read the index alone.
    let analyze = server.psql_in(&database.name, "VACUUM ANALYZE");
    if !analyze.trim().is_empty() {
        println!("  {}", analyze.trim());
    }

    let last = T0 + (ticks as i64 - 1) * TICK_NS;
    let hour = (3_600_000_000_000i64).min(last - T0);
    let day = (86_400_000_000_000i64).min(last - T0);
    let e0 = edge(a.edges / 2);
    let shapes: Vec<(&str, ReadingQuery)> = vec![
        ("edge, newest 20", query(&e0, None, None, None, 0, 20)),
        (
            "device, newest 20",
            query(&e0, Some(device(7 % a.devices)), None, None, 0, 20),
        ),
        (
            "resource, last hour, 100",
            query(
                &e0,
                Some(device(7 % a.devices)),
                Some(resource(3 % a.resources)),
                Some((last - hour, last)),
                0,
                100,
            ),
        ),
        (
            "edge, page at offset 1000",
            query(&e0, None, None, None, 1000, 20),
        ),
        (
            "edge, last day window, 20",
            query(&e0, None, None, Some((last - day, last)), 0, 20),
        ),
    ];
    let pool = outpost_kit::pg::connect(&cfg, outpost_cloud::postgres::SCHEMA)
        .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
    let raw = outpost_kit::pg::client(&pool, &cfg)
        .await
        .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
    println!("  query | now p50 / p95 | total | before (migration 1) p50 / p95");
    for (name, q) in shapes {
        let mut now = Vec::with_capacity(a.repeats);
        let mut total = 0;
        for _ in 0..a.repeats {
            let t = Instant::now();
            let (rows, n) = store
                .readings(q.clone())
                .await
                .map_err(|e| anyhow::anyhow!("readings: {e}"))?;
            now.push(t.elapsed().as_secs_f64() * 1e3);
            if rows.len() as u64 != q.limit.min(n.saturating_sub(q.offset)) {
                bail!("{name}: {} rows of {n}", rows.len());
            }
            total = n;
        }
        let mut before = Vec::with_capacity(a.repeats);
        let (count_sql, page_sql, params) = before_sql(&q);
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        for _ in 0..a.repeats {
            let t = Instant::now();
            let n: i64 = raw.query_one(&count_sql, &refs).await?.get(0);
            let rows = raw.query(&page_sql, &refs).await?;
            before.push(t.elapsed().as_secs_f64() * 1e3);
            if u64::try_from(n)? != total
                || rows.len() as u64 != q.limit.min(total.saturating_sub(q.offset))
            {
                bail!(
                    "{name}: the reference found {n} ({} rows), the store {total}",
                    rows.len()
                );
            }
        }
        println!(
            "  {name} | {:.1} / {:.1} ms | {total} | {:.1} / {:.1} ms",
            median(&mut now.clone()),
            quantile(&mut now, 0.95),
            median(&mut before.clone()),
            quantile(&mut before, 0.95)
        );
        println!(
            "RESULT {}",
            json!({"bench": "fleet", "query": name, "readings": stored, "total": total,
                "p50_ms": median(&mut now.clone()), "p95_ms": quantile(&mut now, 0.95),
                "before_p50_ms": median(&mut before.clone()), "before_p95_ms": quantile(&mut before, 0.95),
                "load_readings_per_s": stored as f64 / load_s})
        );
    }
    drop(raw);
    drop(store);
    drop(server);
    Ok(())
}

fn edge(e: usize) -> String {
    format!("site-{e:03}")
}

fn device(d: usize) -> String {
    format!("pump-{d:03}")
}

fn resource(r: usize) -> String {
    format!("sensor-{r:02}")
}

fn query(
    edge: &str,
    device: Option<String>,
    resource: Option<String>,
    range: Option<(i64, i64)>,
    offset: u64,
    limit: u64,
) -> ReadingQuery {
    ReadingQuery {
        edge: edge.to_string(),
        device,
        resource,
        start: range.map(|r| r.0),
        end: range.map(|r| r.1),
        offset,
        limit,
    }
}

/// One device's event at `tick`, as an edge's export queue sends it.
fn item(
    a: &FleetArgs,
    e: usize,
    d: usize,
    tick: i64,
    seq: u64,
) -> anyhow::Result<WireItem<Box<RawValue>>> {
    let origin = T0 + tick * TICK_NS + d as i64;
    let id = format!("{e}-{d}-{tick}");
    let readings: Vec<serde_json::Value> = (0..a.resources)
        .map(|r| {
            json!({"id": format!("{id}-{r}"), "origin": origin, "deviceName": device(d),
                "resourceName": resource(r), "profileName": "Pump", "valueType": "Float64",
                "units": "bar", "value": format!("{:.2}", (tick % 600) as f64 * 0.1 + r as f64)})
        })
        .collect();
    let data = json!({"kind": "event", "event": {"apiVersion": "v3", "id": id,
        "deviceName": device(d), "profileName": "Pump", "sourceName": "all",
        "origin": origin, "readings": readings}});
    Ok(WireItem {
        seq,
        enqueued_ms: 1,
        data: RawValue::from_string(data.to_string())?,
    })
}

type Params = Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>;

/// The count and the page as the cloud queried them before migration 2.
fn before_sql(q: &ReadingQuery) -> (String, String, Params) {
    let mut filter = String::from("s.edge = $1");
    let mut args: Params = vec![Box::new(q.edge.clone())];
    if let Some(d) = &q.device {
        args.push(Box::new(d.clone()));
        filter.push_str(&format!(" AND s.device = ${}", args.len()));
    }
    if let Some(r) = &q.resource {
        args.push(Box::new(r.clone()));
        filter.push_str(&format!(" AND s.resource = ${}", args.len()));
    }
    if let Some(s) = q.start {
        args.push(Box::new(s));
        filter.push_str(&format!(" AND r.origin >= ${}", args.len()));
    }
    if let Some(e) = q.end {
        args.push(Box::new(e));
        filter.push_str(&format!(" AND r.origin <= ${}", args.len()));
    }
    let count =
        format!("SELECT count(*) FROM readings r JOIN series s ON s.id = r.series WHERE {filter}");
    let page = format!(
        "SELECT s.edge, s.device, s.resource, s.profile, r.origin, s.value_type,
                s.units, r.value, e.received_ms, r.event, r.ord
         FROM readings r JOIN series s ON s.id = r.series JOIN events e ON e.seq = r.event
         WHERE {filter} ORDER BY r.origin DESC, r.seq DESC LIMIT {} OFFSET {}",
        q.limit, q.offset
    );
    (count, page, args)
}
