//! Where pipelines added over the API are kept, so they run again after a restart, and
//! the state of every pipeline's chains (windows in progress, deadbands, alerts), so that
//! a restart or the next instance goes on where the last one checkpointed.
//!
//! [`PipelineStore`] is what rules needs from storage; [`SqliteStore`] keeps the specs and
//! the chains in the service's encrypted SQLite database. Pipelines from the configuration
//! file are not stored: the file is their home.

use outpost_storage::rusqlite::{OptionalExtension as _, params};
use outpost_storage::{Db, Migration, StorageError};

use crate::pipeline::PipelineSpec;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "pipelines added over the API",
        sql: "CREATE TABLE pipelines (name TEXT PRIMARY KEY, spec TEXT NOT NULL);",
    },
    Migration {
        version: 2,
        description: "the chains' checkpointed state",
        sql: "CREATE TABLE chains (
                  pipeline TEXT NOT NULL,
                  device TEXT NOT NULL,
                  profile TEXT NOT NULL,
                  resource TEXT NOT NULL,
                  spec TEXT NOT NULL,
                  state BLOB NOT NULL,
                  PRIMARY KEY (pipeline, device, profile, resource)
              ) WITHOUT ROWID;
              CREATE TABLE applied (id INTEGER PRIMARY KEY CHECK (id = 0), events BLOB NOT NULL);",
    },
];

/// The state of one chain as checkpointed: its pipeline, device, profile and resource, the
/// digest of the pipeline's spec it ran under (a changed spec starts afresh), and the
/// chain in CBOR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRow {
    pub pipeline: String,
    pub device: String,
    pub profile: String,
    pub resource: String,
    pub spec: String,
    pub state: Vec<u8>,
}

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
    /// Removes a pipeline (nothing if it is not stored) and its chains' state.
    async fn remove(&self, name: &str) -> Result<(), StoreError>;
    /// Writes the state of `chains` over what was stored of them, and `applied` (the IDs
    /// of the events whose effect is in that state and whose acknowledgement may not have
    /// reached the bus) over the last such list, in one transaction.
    async fn save_chains(
        &self,
        chains: Vec<ChainRow>,
        applied: Vec<String>,
    ) -> Result<(), StoreError>;
    /// Every chain's stored state, and the last list of applied events.
    async fn chains(&self) -> Result<(Vec<ChainRow>, Vec<String>), StoreError>;
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
                c.execute("DELETE FROM pipelines WHERE name = ?1", [&name])?;
                c.execute("DELETE FROM chains WHERE pipeline = ?1", [&name])?;
                Ok(())
            })
            .await
    }

    async fn save_chains(
        &self,
        chains: Vec<ChainRow>,
        applied: Vec<String>,
    ) -> Result<(), StoreError> {
        let mut events = Vec::new();
        ciborium::into_writer(&applied, &mut events)
            .map_err(|e| StoreError::Storage(outpost_storage::StorageError::Task(e.to_string())))?;
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                {
                    let mut st = tx.prepare_cached(
                        "INSERT OR REPLACE INTO chains (pipeline, device, profile, resource, spec, state)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?;
                    for r in &chains {
                        st.execute(params![
                            r.pipeline, r.device, r.profile, r.resource, r.spec, r.state
                        ])?;
                    }
                }
                tx.execute(
                    "INSERT OR REPLACE INTO applied (id, events) VALUES (0, ?1)",
                    [&events],
                )?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    async fn chains(&self) -> Result<(Vec<ChainRow>, Vec<String>), StoreError> {
        self.db
            .read(|c| {
                let mut st = c.prepare(
                    "SELECT pipeline, device, profile, resource, spec, state FROM chains",
                )?;
                let rows = st
                    .query_map([], |r| {
                        Ok(ChainRow {
                            pipeline: r.get(0)?,
                            device: r.get(1)?,
                            profile: r.get(2)?,
                            resource: r.get(3)?,
                            spec: r.get(4)?,
                            state: r.get(5)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let events: Option<Vec<u8>> = c
                    .query_row("SELECT events FROM applied WHERE id = 0", [], |r| r.get(0))
                    .optional()?;
                let applied = events
                    .and_then(|e| ciborium::from_reader::<Vec<String>, _>(e.as_slice()).ok())
                    .unwrap_or_default();
                Ok::<_, StoreError>((rows, applied))
            })
            .await
    }
}
