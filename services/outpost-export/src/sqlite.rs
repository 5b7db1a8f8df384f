//! [`DeadLetterStore`] in the service's encrypted SQLite database.

use outpost_queue::{Item, Priority};
use outpost_storage::rusqlite::params;
use outpost_storage::{Db, Migration, StorageError};

use crate::store::{DeadLetter, DeadLetterStore, MAX_PER_DESTINATION, Taken};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "dead letters",
    sql: "CREATE TABLE dead_letters (
              id INTEGER PRIMARY KEY,
              destination TEXT NOT NULL,
              priority INTEGER NOT NULL,
              seq INTEGER NOT NULL,
              enqueued_ms INTEGER NOT NULL,
              failed_ms INTEGER NOT NULL,
              reason TEXT NOT NULL,
              data BLOB NOT NULL
          );
          CREATE INDEX dead_letters_by_destination ON dead_letters (destination, id);",
}];

#[derive(Clone)]
pub struct SqliteDeadLetters {
    db: Db,
}

impl SqliteDeadLetters {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl DeadLetterStore for SqliteDeadLetters {
    async fn put(
        &self,
        dest: &str,
        priority: Priority,
        items: Vec<(Item, String)>,
        failed_ms: u64,
    ) -> Result<(), StorageError> {
        let dest = dest.to_string();
        let now = failed_ms as i64;
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                {
                    let mut st = tx.prepare_cached(
                        "INSERT INTO dead_letters (destination, priority, seq, enqueued_ms, failed_ms, reason, data)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?;
                    for (item, reason) in &items {
                        st.execute(params![dest, priority as u8, item.seq as i64, item.enqueued_ms as i64, now, reason, item.data])?;
                    }
                }
                let over: i64 = tx.query_row(
                    "SELECT COUNT(*) - ?2 FROM dead_letters WHERE destination = ?1",
                    params![dest, MAX_PER_DESTINATION],
                    |r| r.get(0),
                )?;
                if over > 0 {
                    tx.execute(
                        "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters WHERE destination = ?1 ORDER BY id LIMIT ?2)",
                        params![dest, over],
                    )?;
                    tracing::warn!(destination = dest, removed = over, "dead-letter store full: removed the oldest");
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }

    async fn list(&self, dest: &str, limit: u64) -> Result<(u64, Vec<DeadLetter>), StorageError> {
        let dest = dest.to_string();
        self.db
            .read(move |c| {
                let total: i64 = c.query_row(
                    "SELECT COUNT(*) FROM dead_letters WHERE destination = ?1",
                    [&dest],
                    |r| r.get(0),
                )?;
                let mut st = c.prepare(
                    "SELECT priority, seq, enqueued_ms, failed_ms, reason, data FROM dead_letters
                     WHERE destination = ?1 ORDER BY id DESC LIMIT ?2",
                )?;
                let rows = st
                    .query_map(params![dest, limit as i64], |r| {
                        let data: Vec<u8> = r.get(5)?;
                        Ok(DeadLetter {
                            priority: if r.get::<_, i64>(0)? == 0 {
                                Priority::High
                            } else {
                                Priority::Normal
                            }
                            .as_str()
                            .to_string(),
                            seq: r.get::<_, i64>(1)? as u64,
                            enqueued_ms: r.get::<_, i64>(2)? as u64,
                            failed_ms: r.get::<_, i64>(3)? as u64,
                            reason: r.get(4)?,
                            data: serde_json::from_slice(&data).unwrap_or_else(|_| {
                                serde_json::Value::String(
                                    String::from_utf8_lossy(&data).into_owned(),
                                )
                            }),
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((total as u64, rows))
            })
            .await
    }

    async fn take_all(&self, dest: &str) -> Result<Taken, StorageError> {
        let dest = dest.to_string();
        self.db
            .read(move |c| {
                let mut st = c.prepare(
                    "SELECT id, priority, data FROM dead_letters WHERE destination = ?1 ORDER BY id",
                )?;
                let mut high = Vec::new();
                let mut normal = Vec::new();
                let mut max_id = 0;
                for row in st.query_map([&dest], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?))
                })? {
                    let (id, p, data) = row?;
                    max_id = max_id.max(id);
                    if p == 0 {
                        high.push(data)
                    } else {
                        normal.push(data)
                    }
                }
                Ok((vec![(Priority::High, high), (Priority::Normal, normal)], max_id))
            })
            .await
    }

    async fn purge_upto(&self, dest: &str, max_id: i64) -> Result<u64, StorageError> {
        let dest = dest.to_string();
        self.db
            .write(move |c| {
                Ok(c.execute(
                    "DELETE FROM dead_letters WHERE destination = ?1 AND id <= ?2",
                    params![dest, max_id],
                )? as u64)
            })
            .await
    }

    async fn purge(&self, dest: &str) -> Result<u64, StorageError> {
        let dest = dest.to_string();
        self.db
            .write(move |c| {
                Ok(c.execute("DELETE FROM dead_letters WHERE destination = ?1", [dest])? as u64)
            })
            .await
    }
}
