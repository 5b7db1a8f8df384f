//! Persistence of registrations and key/values.
//!
//! [`Store`] is what the registry needs from storage; [`SqliteStore`] keeps it in the
//! service's encrypted SQLite database. Heartbeats are not written (they change every
//! second); registrations are written when they are created, changed, change status or are
//! removed, so a restarted registry knows every instance it knew.

use outpost_contracts::registry::Registration;
use outpost_storage::rusqlite::{OptionalExtension as _, params};
use outpost_storage::{Db, Migration, StorageError};

/// What [`Store::kv_delete`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Deleted {
    /// The keys deleted (none if the key did not exist).
    Keys(Vec<String>),
    /// Nothing: the key has keys below it and no prefix match was asked for.
    HasChildren,
}

/// A stored key/value.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKv {
    pub key: String,
    pub value: serde_json::Value,
    pub created: i64,
    pub modified: i64,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn load_registrations(&self) -> Result<Vec<Registration>, StorageError>;
    async fn save_registration(&self, reg: Registration) -> Result<(), StorageError>;
    async fn delete_registration(&self, service_id: String) -> Result<(), StorageError>;
    /// Every key equal to `prefix` or below it (`prefix/...`); all keys for an empty prefix.
    async fn kv_get(&self, prefix: String) -> Result<Vec<StoredKv>, StorageError>;
    /// Stores all pairs in one transaction; returns the keys written.
    async fn kv_put(
        &self,
        pairs: Vec<(String, serde_json::Value)>,
        now: i64,
    ) -> Result<Vec<String>, StorageError>;
    /// Deletes `key` and, when `prefix`, every key below it. Without `prefix`, a key with
    /// keys below it is left alone.
    async fn kv_delete(&self, key: String, prefix: bool) -> Result<Deleted, StorageError>;
    async fn ping(&self) -> Result<(), StorageError>;
}

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "registrations and key/values",
    sql: "CREATE TABLE registrations (
              service_id TEXT PRIMARY KEY,
              body TEXT NOT NULL
          );
          CREATE TABLE kv (
              key TEXT PRIMARY KEY,
              value TEXT NOT NULL,
              created INTEGER NOT NULL,
              modified INTEGER NOT NULL
          );",
}];

pub struct SqliteStore {
    db: Db,
}

impl SqliteStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn to_json(value: &serde_json::Value) -> String {
    value.to_string()
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn load_registrations(&self) -> Result<Vec<Registration>, StorageError> {
        self.db
            .read(|c| {
                let mut st = c.prepare("SELECT body FROM registrations")?;
                let rows = st.query_map([], |r| r.get::<_, String>(0))?;
                let mut out = Vec::new();
                for body in rows {
                    match serde_json::from_str::<Registration>(&body?) {
                        Ok(reg) => out.push(reg),
                        Err(e) => tracing::warn!(error = %e, "skipping an unreadable registration"),
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn save_registration(&self, reg: Registration) -> Result<(), StorageError> {
        let body = serde_json::to_string(&reg).map_err(|e| StorageError::Task(e.to_string()))?;
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO registrations (service_id, body) VALUES (?1, ?2)
                     ON CONFLICT(service_id) DO UPDATE SET body = excluded.body",
                    params![reg.service_id, body],
                )?;
                Ok(())
            })
            .await
    }

    async fn delete_registration(&self, service_id: String) -> Result<(), StorageError> {
        self.db
            .write(move |c| {
                c.execute(
                    "DELETE FROM registrations WHERE service_id = ?1",
                    params![service_id],
                )?;
                Ok(())
            })
            .await
    }

    async fn kv_get(&self, prefix: String) -> Result<Vec<StoredKv>, StorageError> {
        self.db
            .read(move |c| {
                let like = format!("{}/%", escape_like(&prefix));
                let mut st = c.prepare(
                    "SELECT key, value, created, modified FROM kv
                     WHERE ?1 = '' OR key = ?1 OR key LIKE ?2 ESCAPE '\\' ORDER BY key",
                )?;
                let rows = st.query_map(params![prefix, like], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get(2)?,
                        r.get(3)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (key, value, created, modified) = row?;
                    let value =
                        serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
                    out.push(StoredKv {
                        key,
                        value,
                        created,
                        modified,
                    });
                }
                Ok(out)
            })
            .await
    }

    async fn kv_put(
        &self,
        pairs: Vec<(String, serde_json::Value)>,
        now: i64,
    ) -> Result<Vec<String>, StorageError> {
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                let mut keys = Vec::with_capacity(pairs.len());
                {
                    let mut st = tx.prepare(
                        "INSERT INTO kv (key, value, created, modified) VALUES (?1, ?2, ?3, ?3)
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value, modified = excluded.modified",
                    )?;
                    for (k, v) in pairs {
                        st.execute(params![k, to_json(&v), now])?;
                        keys.push(k);
                    }
                }
                tx.commit()?;
                Ok(keys)
            })
            .await
    }

    async fn kv_delete(&self, key: String, prefix: bool) -> Result<Deleted, StorageError> {
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                let like = format!("{}/%", escape_like(&key));
                if !prefix {
                    let children: i64 = tx.query_row(
                        "SELECT count(*) FROM kv WHERE key LIKE ?1 ESCAPE '\\'",
                        params![like],
                        |r| r.get(0),
                    )?;
                    if children > 0 {
                        return Ok(Deleted::HasChildren);
                    }
                }
                let keys: Vec<String> = {
                    let mut st = tx.prepare(
                        "SELECT key FROM kv WHERE key = ?1 OR (?3 AND key LIKE ?2 ESCAPE '\\')",
                    )?;
                    st.query_map(params![key, like, prefix], |r| r.get(0))?
                        .collect::<Result<_, _>>()?
                };
                for k in &keys {
                    tx.execute("DELETE FROM kv WHERE key = ?1", params![k])?;
                }
                tx.commit()?;
                Ok(Deleted::Keys(keys))
            })
            .await
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.db
            .read(|c| {
                c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                    .optional()
                    .map(|_| ())
                    .map_err(StorageError::from)
            })
            .await
    }
}
