//! Where pipelines added over the API are kept, so they run again after a restart.
//!
//! [`PipelineStore`] is what rules needs from storage; [`SqliteStore`] keeps the specs in
//! the service's encrypted SQLite database. Pipelines from the configuration file are not
//! stored: the file is their home.

use outpost_storage::rusqlite::params;
use outpost_storage::{Db, Migration, StorageError};

use crate::pipeline::PipelineSpec;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "pipelines added over the API",
    sql: "CREATE TABLE pipelines (name TEXT PRIMARY KEY, spec TEXT NOT NULL);",
}];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot encode pipeline {name}")]
    Encode {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl From<outpost_storage::rusqlite::Error> for StoreError {
    fn from(e: outpost_storage::rusqlite::Error) -> Self {
        Self::Storage(StorageError::Sqlite(e))
    }
}

#[async_trait::async_trait]
pub trait PipelineStore: Send + Sync + 'static {
    /// Every stored pipeline, by name. A spec this version cannot read is left out (and
    /// logged), so one bad row does not keep the others from running.
    async fn load(&self) -> Result<Vec<PipelineSpec>, StoreError>;
    /// Stores a new pipeline; storing a name already stored fails.
    async fn add(&self, spec: &PipelineSpec) -> Result<(), StoreError>;
    /// Removes a pipeline (nothing if it is not stored).
    async fn remove(&self, name: &str) -> Result<(), StoreError>;
}

pub struct SqliteStore {
    db: Db,
}

impl SqliteStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl PipelineStore for SqliteStore {
    async fn load(&self) -> Result<Vec<PipelineSpec>, StoreError> {
        let rows: Vec<(String, String)> = self
            .db
            .read(|c| {
                let mut st = c.prepare("SELECT name, spec FROM pipelines ORDER BY name")?;
                let rows = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, StoreError>(rows)
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, json)| match serde_json::from_str(&json) {
                Ok(spec) => Some(spec),
                Err(e) => {
                    tracing::warn!(pipeline = name, error = %e, "a stored pipeline cannot be read; it does not run");
                    None
                }
            })
            .collect())
    }

    async fn add(&self, spec: &PipelineSpec) -> Result<(), StoreError> {
        let json = serde_json::to_string(spec).map_err(|source| StoreError::Encode {
            name: spec.name.clone(),
            source,
        })?;
        let name = spec.name.clone();
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO pipelines (name, spec) VALUES (?1, ?2)",
                    params![name, json],
                )?;
                Ok(())
            })
            .await
    }

    async fn remove(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.db
            .write(move |c| {
                c.execute("DELETE FROM pipelines WHERE name = ?1", [name])?;
                Ok(())
            })
            .await
    }
}
