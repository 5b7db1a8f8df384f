//! Where jobs, their action records and secrets are kept.
//!
//! [`SchedulerStore`] is what the service needs from storage; [`SqliteStore`] keeps it in
//! the service's encrypted SQLite database. A job is stored as its EdgeX JSON with the
//! internal ids of its actions (records and "latest" are per action).

use outpost_storage::rusqlite::{self, OptionalExtension as _, params, types::Value};
use outpost_storage::{Db, Migration, StorageError, documents};
use serde::{Deserialize, Serialize};

use crate::model::{ScheduleActionRecord, ScheduleJob};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "jobs and their action records",
        sql: "
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    labels TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE records (
    id TEXT PRIMARY KEY,
    job_name TEXT NOT NULL,
    action_id TEXT NOT NULL,
    status TEXT NOT NULL,
    scheduled_at INTEGER NOT NULL,
    created INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX records_created ON records (created);
CREATE INDEX records_job ON records (job_name, action_id, created);
CREATE TABLE facts (key TEXT PRIMARY KEY, value TEXT NOT NULL);
",
    },
    Migration {
        version: 2,
        description: "secrets",
        sql: outpost_storage::secrets::TABLE,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("stored JSON cannot be read or written: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Storage(StorageError::Sqlite(e))
    }
}

/// A job as stored: the job and the internal id of each of its actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredJob {
    pub job: ScheduleJob,
    pub action_ids: Vec<String>,
}

/// Which records a list answer holds.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    pub job: Option<String>,
    pub status: Option<String>,
    /// Created within `[start, end]`, milliseconds.
    pub created: (i64, i64),
}

/// A record and the action it is of.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub record: ScheduleActionRecord,
    pub action_id: String,
}

pub type Page<T> = (u64, Vec<T>);

#[async_trait::async_trait]
pub trait SchedulerStore: Send + Sync + 'static {
    /// Stores a new job; a name or id already used is `Duplicate`.
    async fn add_job(&self, j: StoredJob) -> Result<(), StoreError>;
    async fn job(&self, name: &str) -> Result<Option<StoredJob>, StoreError>;
    async fn job_by_id(&self, id: &str) -> Result<Option<StoredJob>, StoreError>;
    /// Jobs holding every one of `labels`, oldest first.
    async fn jobs(
        &self,
        labels: Vec<String>,
        offset: u64,
        limit: u64,
    ) -> Result<Page<ScheduleJob>, StoreError>;
    async fn all_jobs(&self) -> Result<Vec<StoredJob>, StoreError>;
    async fn update_job(&self, j: StoredJob) -> Result<(), StoreError>;
    async fn delete_job(&self, name: &str) -> Result<bool, StoreError>;

    async fn add_records(&self, r: Vec<NewRecord>) -> Result<(), StoreError>;
    /// Newest first.
    async fn records(
        &self,
        f: RecordFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<ScheduleActionRecord>, StoreError>;
    /// The newest record of each action of `job` (by internal action id), newest first.
    async fn latest(&self, job: &str) -> Result<Vec<NewRecord>, StoreError>;
    /// When there are at least `max` records, deletes the oldest until `min` remain.
    async fn trim_records(&self, max: u64, min: u64) -> Result<u64, StoreError>;

    /// A fact of the service's own (`default-jobs`: whether the default jobs were made).
    async fn fact(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn set_fact(&self, key: &str, value: &str) -> Result<(), StoreError>;

    async fn put_secret(&self, name: String, data: Vec<(String, String)>)
    -> Result<(), StoreError>;

    /// Takes or renews the lease `name` for `ttl`: whether this instance holds it now. A
    /// store only this instance uses is always held.
    async fn lease(&self, _name: &str, _ttl: std::time::Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Gives up the lease `name` (a clean stop), so another instance takes it at once.
    async fn release(&self, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// A number that changes whenever any instance adds, changes or deletes a job; `None`
    /// for a store only this instance writes (its memory is always up to date).
    async fn jobs_version(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }
}

pub struct SqliteStore {
    db: Db,
}

impl SqliteStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    async fn one(&self, sql: &'static str, key: &str) -> Result<Option<StoredJob>, StoreError> {
        let key = key.to_string();
        let body: Option<String> = self
            .db
            .read(move |c| {
                c.query_row(sql, [key], |r| r.get(0))
                    .optional()
                    .map_err(StoreError::from)
            })
            .await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }
}

fn labels_json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

#[async_trait::async_trait]
impl SchedulerStore for SqliteStore {
    async fn add_job(&self, j: StoredJob) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                let done = c.execute(
                    "INSERT OR IGNORE INTO jobs (id, name, created, labels, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![j.job.id, j.job.name, j.job.created, labels_json(&j.job.labels), serde_json::to_string(&j)?],
                )?;
                if done == 0 {
                    return Err(StoreError::Duplicate(format!("schedule job {}", j.job.name)));
                }
                Ok(())
            })
            .await
    }

    async fn job(&self, name: &str) -> Result<Option<StoredJob>, StoreError> {
        self.one("SELECT body FROM jobs WHERE name = ?1", name)
            .await
    }

    async fn job_by_id(&self, id: &str) -> Result<Option<StoredJob>, StoreError> {
        self.one("SELECT body FROM jobs WHERE id = ?1", id).await
    }

    async fn jobs(
        &self,
        labels: Vec<String>,
        offset: u64,
        limit: u64,
    ) -> Result<Page<ScheduleJob>, StoreError> {
        self.db
            .read(move |c| {
                let clause = labels
                    .iter()
                    .map(|_| "EXISTS (SELECT 1 FROM json_each(jobs.labels) WHERE value = ?)")
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let clause = if clause.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {clause}")
                };
                let args: Vec<Value> = labels.iter().map(|l| Value::Text(l.clone())).collect();
                let order = "created, name";
                let (total, stored) = documents::page::<StoredJob, StoreError>(
                    c, "jobs", &clause, order, args, offset, limit,
                )?;
                Ok((total, stored.into_iter().map(|s| s.job).collect()))
            })
            .await
    }

    async fn all_jobs(&self) -> Result<Vec<StoredJob>, StoreError> {
        self.db
            .read(|c| documents::all(c, "SELECT body FROM jobs ORDER BY created, name", &[]))
            .await
    }

    async fn update_job(&self, j: StoredJob) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                c.execute(
                    "UPDATE jobs SET labels = ?2, body = ?3 WHERE id = ?1",
                    params![
                        j.job.id,
                        labels_json(&j.job.labels),
                        serde_json::to_string(&j)?
                    ],
                )?;
                Ok(())
            })
            .await
    }

    async fn delete_job(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.db
            .write(move |c| Ok(c.execute("DELETE FROM jobs WHERE name = ?1", [name])? > 0))
            .await
    }

    async fn add_records(&self, records: Vec<NewRecord>) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                for r in &records {
                    tx.execute(
                        "INSERT INTO records (id, job_name, action_id, status, scheduled_at, created, body)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            r.record.id,
                            r.record.job_name,
                            r.action_id,
                            r.record.status,
                            r.record.scheduled_at,
                            r.record.created,
                            serde_json::to_string(&r.record)?
                        ],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }

    async fn records(
        &self,
        f: RecordFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<ScheduleActionRecord>, StoreError> {
        self.db
            .read(move |c| {
                let mut parts = vec!["created BETWEEN ? AND ?".to_string()];
                let mut args = vec![Value::Integer(f.created.0), Value::Integer(f.created.1)];
                if let Some(j) = f.job {
                    parts.push("job_name = ?".into());
                    args.push(Value::Text(j));
                }
                if let Some(s) = f.status {
                    parts.push("status = ?".into());
                    args.push(Value::Text(s));
                }
                let clause = format!("WHERE {}", parts.join(" AND "));
                let order = "created DESC, id";
                documents::page(c, "records", &clause, order, args, offset, limit)
            })
            .await
    }

    async fn latest(&self, job: &str) -> Result<Vec<NewRecord>, StoreError> {
        let job = job.to_string();
        self.db
            .read(move |c| {
                let mut st = c.prepare(
                    "SELECT r.action_id, r.body FROM records r
                     WHERE r.job_name = ?1 AND r.id = (
                         SELECT id FROM records WHERE job_name = r.job_name AND action_id = r.action_id
                         ORDER BY created DESC, scheduled_at DESC, id LIMIT 1)
                     ORDER BY r.created DESC",
                )?;
                let rows = st
                    .query_map([job], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                rows.into_iter()
                    .map(|(action_id, body)| {
                        Ok(NewRecord {
                            record: serde_json::from_str(&body)?,
                            action_id,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn trim_records(&self, max: u64, min: u64) -> Result<u64, StoreError> {
        self.db
            .write(move |c| {
                let total: i64 = c.query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))?;
                let total = u64::try_from(total).unwrap_or(0);
                if total < max {
                    return Ok(0);
                }
                let excess = i64::try_from(total - min).unwrap_or(i64::MAX);
                let n = c.execute(
                    "DELETE FROM records WHERE id IN (SELECT id FROM records ORDER BY created, id LIMIT ?1)",
                    [excess],
                )?;
                Ok(n as u64)
            })
            .await
    }

    async fn fact(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.db
            .read(move |c| {
                c.query_row("SELECT value FROM facts WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(StoreError::from)
            })
            .await
    }

    async fn set_fact(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT OR REPLACE INTO facts (key, value) VALUES (?1, ?2)",
                    [key, value],
                )?;
                Ok(())
            })
            .await
    }

    async fn put_secret(
        &self,
        name: String,
        data: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        Ok(outpost_storage::secrets::put(&self.db, name, data).await?)
    }
}
