//! The registry's registrations and the key/value store in PostgreSQL
//! (`[core_keeper.storage] backend = "postgres"`).
//!
//! The same [`Store`] as SQLite's, in the schema `core_keeper`. Registrations are kept as
//! the JSON body EdgeX's API carries (hosts, ports, health checks: nothing secret); key/value
//! values are sealed with the service's values key before they are sent (configuration may
//! hold what should not sit in a database's files and backups in plaintext), the key staying
//! in clear for the prefix queries.

use outpost_contracts::registry::Registration;
use outpost_kit::pg::{self, Migration, StorageConfig};
use outpost_storage::StorageError;

use crate::store::{Deleted, Store, StoredKv};

/// The schema core-keeper's tables live in.
pub const SCHEMA: &str = "core_keeper";

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "registrations and key/values, values sealed",
    sql: "CREATE TABLE registrations (
              service_id TEXT PRIMARY KEY,
              body TEXT NOT NULL
          );
          CREATE TABLE kv (
              key TEXT PRIMARY KEY COLLATE \"C\",
              value BYTEA NOT NULL,
              created BIGINT NOT NULL,
              modified BIGINT NOT NULL
          );",
}];

/// core-keeper's registrations and key/values in PostgreSQL.
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
}

/// What a sealed value is bound to: its key (a value copied onto another key does not open).
fn kv_aad(key: &str) -> Vec<u8> {
    format!("kv\u{0}{key}").into_bytes()
}

/// `LIKE` pattern matching every key below `key`.
fn below(key: &str) -> String {
    let escaped = key
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("{escaped}/%")
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn load_registrations(&self) -> Result<Vec<Registration>, StorageError> {
        let client = self.db.storage_client().await?;
        let rows = client
            .query("SELECT body FROM registrations", &[])
            .await
            .map_err(pg::task)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match serde_json::from_str::<Registration>(row.get(0)) {
                Ok(reg) => out.push(reg),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable registration"),
            }
        }
        Ok(out)
    }

    async fn save_registration(&self, reg: Registration) -> Result<(), StorageError> {
        let body = serde_json::to_string(&reg).map_err(pg::task)?;
        self.db
            .storage_client()
            .await?
            .execute(
                "INSERT INTO registrations (service_id, body) VALUES ($1, $2)
                 ON CONFLICT (service_id) DO UPDATE SET body = excluded.body",
                &[&reg.service_id, &body],
            )
            .await
            .map_err(pg::task)?;
        Ok(())
    }

    async fn delete_registration(&self, service_id: String) -> Result<(), StorageError> {
        self.db
            .storage_client()
            .await?
            .execute(
                "DELETE FROM registrations WHERE service_id = $1",
                &[&service_id],
            )
            .await
            .map_err(pg::task)?;
        Ok(())
    }

    async fn kv_get(&self, prefix: String) -> Result<Vec<StoredKv>, StorageError> {
        let rows = self
            .db
            .storage_client()
            .await?
            .query(
                "SELECT key, value, created, modified FROM kv
                 WHERE $1 = '' OR key = $1 OR key LIKE $2
                 ORDER BY key",
                &[&prefix, &below(&prefix)],
            )
            .await
            .map_err(pg::task)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let key: String = row.get(0);
            let sealed: Vec<u8> = row.get(1);
            let plain = self
                .db
                .sealer
                .open(&kv_aad(&key), &sealed)
                .map_err(|e| pg::task(format!("key {key}: {e}")))?;
            let text = String::from_utf8_lossy(&plain);
            let value = serde_json::from_str(&text)
                .unwrap_or_else(|_| serde_json::Value::String(text.into_owned()));
            out.push(StoredKv {
                key,
                value,
                created: row.get(2),
                modified: row.get(3),
            });
        }
        Ok(out)
    }

    async fn kv_put(
        &self,
        pairs: Vec<(String, serde_json::Value)>,
        now: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut client = self.db.storage_client().await?;
        let tx = client.transaction().await.map_err(pg::task)?;
        let st = tx
            .prepare(
                "INSERT INTO kv (key, value, created, modified) VALUES ($1, $2, $3, $3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, modified = excluded.modified",
            )
            .await
            .map_err(pg::task)?;
        let mut keys = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            if k.contains('\0') {
                return Err(StorageError::Task(format!(
                    "key {k:?}: a NUL character cannot be stored"
                )));
            }
            let sealed = self.db.sealer.seal(&kv_aad(&k), v.to_string().as_bytes());
            tx.execute(&st, &[&k, &sealed, &now])
                .await
                .map_err(pg::task)?;
            keys.push(k);
        }
        tx.commit().await.map_err(pg::task)?;
        Ok(keys)
    }

    async fn kv_delete(&self, key: String, prefix: bool) -> Result<Deleted, StorageError> {
        let mut client = self.db.storage_client().await?;
        let tx = client.transaction().await.map_err(pg::task)?;
        let like = below(&key);
        if !prefix {
            let children: i64 = tx
                .query_one("SELECT count(*) FROM kv WHERE key LIKE $1", &[&like])
                .await
                .map_err(pg::task)?
                .get(0);
            if children > 0 {
                return Ok(Deleted::HasChildren);
            }
        }
        let rows = tx
            .query(
                "DELETE FROM kv WHERE key = $1 OR ($3 AND key LIKE $2) RETURNING key",
                &[&key, &like, &prefix],
            )
            .await
            .map_err(pg::task)?;
        tx.commit().await.map_err(pg::task)?;
        let mut keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        keys.sort();
        Ok(Deleted::Keys(keys))
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.db
            .storage_client()
            .await?
            .simple_query("SELECT 1")
            .await
            .map_err(pg::task)?;
        Ok(())
    }
}
