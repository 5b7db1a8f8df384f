//! The PostgreSQL implementation of [`SchedulerStore`]
//! (`[support_scheduler.storage] backend = "postgres"`).
//!
//! The tables of [`crate::store`], in the schema `support_scheduler`. What a job or a record
//! is (its EdgeX JSON: targets, payloads, results) and the secrets' values are sealed with
//! the service's values key before they are sent; what lists select and order on (names,
//! ids, labels, status, times) stays in columns.
//!
//! Several instances may share the store: each keeps every job in memory and follows the
//! others' changes by the jobs' version (a trigger moves it with every change), and the
//! one holding the lease `scheduler` runs them ([`crate::schedule`]).

use outpost_kit::pg::{self, Migration, StorageConfig};

use crate::model::{ScheduleActionRecord, ScheduleJob};
use crate::store::{NewRecord, Page, RecordFilter, SchedulerStore, StoreError, StoredJob};

/// The schema the scheduler's tables live in.
pub const SCHEMA: &str = "support_scheduler";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "jobs, their action records, facts and secrets, bodies sealed",
        sql: "CREATE TABLE jobs (
              id TEXT PRIMARY KEY,
              name TEXT NOT NULL UNIQUE,
              created BIGINT NOT NULL,
              labels TEXT[] NOT NULL,
              body BYTEA NOT NULL
          );
          CREATE TABLE records (
              id TEXT PRIMARY KEY,
              job_name TEXT NOT NULL,
              action_id TEXT NOT NULL,
              status TEXT NOT NULL,
              scheduled_at BIGINT NOT NULL,
              created BIGINT NOT NULL,
              body BYTEA NOT NULL
          );
          CREATE INDEX records_created ON records (created);
          CREATE INDEX records_job ON records (job_name, action_id, created);
          CREATE TABLE facts (key TEXT PRIMARY KEY, value TEXT NOT NULL);
          CREATE TABLE secrets (
              name TEXT NOT NULL,
              key TEXT NOT NULL,
              value BYTEA NOT NULL,
              PRIMARY KEY (name, key)
          );",
    },
    Migration {
        version: 2,
        description: "a version of the jobs, moved by every change, for the instances to follow",
        sql: "CREATE TABLE jobs_version (
              only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
              n BIGINT NOT NULL
          );
          INSERT INTO jobs_version (n) VALUES (0);
          CREATE FUNCTION bump_jobs_version() RETURNS trigger LANGUAGE plpgsql
              SET search_path = support_scheduler, pg_temp AS $$
              BEGIN
                  UPDATE jobs_version SET n = n + 1;
                  RETURN NULL;
              END $$;
          CREATE TRIGGER jobs_changed AFTER INSERT OR UPDATE OR DELETE ON jobs
              FOR EACH STATEMENT EXECUTE FUNCTION bump_jobs_version();",
    },
];

/// The scheduler's store in PostgreSQL.
pub struct PgStore {
    db: pg::Database,
}

impl PgStore {
    /// Connects and migrates the schema.
    pub async fn open(cfg: &StorageConfig, secrets: &std::path::Path) -> Result<Self, pg::PgError> {
        Ok(Self {
            db: pg::Database::open(cfg, secrets, crate::SERVICE, SCHEMA, MIGRATIONS).await?,
        })
    }

    fn seal<T: serde::Serialize>(&self, aad: &[u8], v: &T) -> Result<Vec<u8>, StoreError> {
        Ok(self.db.seal_json(aad, v)?)
    }

    fn open_body<T: serde::de::DeserializeOwned>(
        &self,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<T, StoreError> {
        Ok(self.db.open_json(aad, sealed)?)
    }

    async fn one(&self, column: &'static str, key: &str) -> Result<Option<StoredJob>, StoreError> {
        let row = self
            .db
            .row_by(
                &format!("SELECT id, body FROM jobs WHERE {column} = $1"),
                key,
            )
            .await?;
        row.map(|r| self.open_body(&job_aad(r.get(0)), r.get(1)))
            .transpose()
    }
}

/// What a sealed body is bound to: its table and row (moved to another row, it does not open).
fn job_aad(id: &str) -> Vec<u8> {
    format!("job\u{0}{id}").into_bytes()
}

fn record_aad(id: &str) -> Vec<u8> {
    format!("record\u{0}{id}").into_bytes()
}

#[async_trait::async_trait]
impl SchedulerStore for PgStore {
    async fn lease(&self, name: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        Ok(self.db.lease(name, ttl).await.map_err(pg::task)?)
    }

    async fn release(&self, name: &str) -> Result<(), StoreError> {
        Ok(self.db.release(name).await.map_err(pg::task)?)
    }

    async fn jobs_version(&self) -> Result<Option<i64>, StoreError> {
        let row = self
            .db
            .storage_client()
            .await?
            .query_one("SELECT n FROM jobs_version", &[])
            .await
            .map_err(pg::task)?;
        Ok(Some(row.get(0)))
    }

    async fn add_job(&self, j: StoredJob) -> Result<(), StoreError> {
        pg::storable("job name", &j.job.name)?;
        for l in &j.job.labels {
            pg::storable("label", l)?;
        }
        let body = self.seal(&job_aad(&j.job.id), &j)?;
        let n = self
            .db
            .execute(
                "INSERT INTO jobs (id, name, created, labels, body) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
                &[&j.job.id, &j.job.name, &j.job.created, &j.job.labels, &body],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Duplicate(format!(
                "schedule job {}",
                j.job.name
            )));
        }
        Ok(())
    }

    async fn job(&self, name: &str) -> Result<Option<StoredJob>, StoreError> {
        self.one("name", name).await
    }

    async fn job_by_id(&self, id: &str) -> Result<Option<StoredJob>, StoreError> {
        self.one("id", id).await
    }

    async fn jobs(
        &self,
        labels: Vec<String>,
        offset: u64,
        limit: u64,
    ) -> Result<Page<ScheduleJob>, StoreError> {
        let client = self.db.storage_client().await?;
        let total: i64 = client
            .query_one("SELECT count(*) FROM jobs WHERE labels @> $1", &[&labels])
            .await
            .map_err(pg::task)?
            .get(0);
        let rows = client
            .query(
                "SELECT id, body FROM jobs WHERE labels @> $1
                 ORDER BY created, name COLLATE \"C\" LIMIT $2 OFFSET $3",
                &[&labels, &pg::bound(limit), &pg::bound(offset)],
            )
            .await
            .map_err(pg::task)?;
        let jobs = rows
            .iter()
            .map(|r| {
                self.open_body::<StoredJob>(&job_aad(r.get(0)), r.get(1))
                    .map(|s| s.job)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((u64::try_from(total).unwrap_or(0), jobs))
    }

    async fn all_jobs(&self) -> Result<Vec<StoredJob>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT id, body FROM jobs ORDER BY created, name COLLATE \"C\"",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| self.open_body(&job_aad(r.get(0)), r.get(1)))
            .collect()
    }

    async fn update_job(&self, j: StoredJob) -> Result<(), StoreError> {
        for l in &j.job.labels {
            pg::storable("label", l)?;
        }
        let body = self.seal(&job_aad(&j.job.id), &j)?;
        self.db
            .execute(
                "UPDATE jobs SET labels = $2, body = $3 WHERE id = $1",
                &[&j.job.id, &j.job.labels, &body],
            )
            .await?;
        Ok(())
    }

    async fn delete_job(&self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .db
            .execute("DELETE FROM jobs WHERE name = $1", &[&name])
            .await?;
        Ok(n > 0)
    }

    async fn add_records(&self, records: Vec<NewRecord>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut client = self.db.storage_client().await?;
        let tx = client.transaction().await.map_err(pg::task)?;
        let st = tx
            .prepare(
                "INSERT INTO records (id, job_name, action_id, status, scheduled_at, created, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await
            .map_err(pg::task)?;
        for r in &records {
            let body = self.seal(&record_aad(&r.record.id), &r.record)?;
            tx.execute(
                &st,
                &[
                    &r.record.id,
                    &r.record.job_name,
                    &r.action_id,
                    &r.record.status,
                    &r.record.scheduled_at,
                    &r.record.created,
                    &body,
                ],
            )
            .await
            .map_err(pg::task)?;
        }
        tx.commit().await.map_err(pg::task)?;
        Ok(())
    }

    async fn records(
        &self,
        f: RecordFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<ScheduleActionRecord>, StoreError> {
        let mut w = pg::Filter::default();
        w.between("created", Some(f.created));
        w.eq("job_name", f.job);
        w.eq("status", f.status);
        let client = self.db.storage_client().await?;
        let (total, rows) = w
            .page(
                &client,
                "records",
                "id, body",
                "created DESC, id COLLATE \"C\"",
                offset,
                limit,
            )
            .await
            .map_err(pg::task)?;
        let records = rows
            .iter()
            .map(|r| self.open_body(&record_aad(r.get(0)), r.get(1)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((total, records))
    }

    async fn latest(&self, job: &str) -> Result<Vec<NewRecord>, StoreError> {
        let rows = self
            .db
            .storage_client()
            .await?
            .query(
                "SELECT action_id, id, body FROM (
                     SELECT DISTINCT ON (action_id) action_id, id, body, created FROM records
                     WHERE job_name = $1
                     ORDER BY action_id, created DESC, scheduled_at DESC, id COLLATE \"C\"
                 ) latest ORDER BY created DESC",
                &[&job],
            )
            .await
            .map_err(pg::task)?;
        rows.iter()
            .map(|r| {
                Ok(NewRecord {
                    action_id: r.get(0),
                    record: self.open_body(&record_aad(r.get(1)), r.get(2))?,
                })
            })
            .collect()
    }

    async fn trim_records(&self, max: u64, min: u64) -> Result<u64, StoreError> {
        let client = self.db.storage_client().await?;
        let total: i64 = client
            .query_one("SELECT count(*) FROM records", &[])
            .await
            .map_err(pg::task)?
            .get(0);
        let total = u64::try_from(total).unwrap_or(0);
        if total < max {
            return Ok(0);
        }
        let n = client
            .execute(
                "DELETE FROM records WHERE id IN
                     (SELECT id FROM records ORDER BY created, id COLLATE \"C\" LIMIT $1)",
                &[&pg::bound(total - min.min(total))],
            )
            .await
            .map_err(pg::task)?;
        Ok(n)
    }

    async fn fact(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .db
            .storage_client()
            .await?
            .query_opt("SELECT value FROM facts WHERE key = $1", &[&key])
            .await
            .map_err(pg::task)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn set_fact(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO facts (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .await?;
        Ok(())
    }

    async fn put_secret(
        &self,
        name: String,
        data: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        Ok(self.db.put_secret(&name, &data).await?)
    }
}
