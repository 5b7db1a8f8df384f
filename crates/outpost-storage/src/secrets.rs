//! Named secrets a service keeps in its encrypted database (EdgeX's `POST /secret`): a
//! name and its key/value pairs. A service that keeps them adds [`TABLE`] to its
//! migrations.

use crate::{Db, StorageError};

/// The table, for a service's migrations.
pub const TABLE: &str = "CREATE TABLE secrets (
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, key)
);";

/// Stores `name` with `data`, replacing what it held.
pub async fn put(db: &Db, name: String, data: Vec<(String, String)>) -> Result<(), StorageError> {
    db.write(move |c| {
        let tx = c.transaction()?;
        tx.execute("DELETE FROM secrets WHERE name = ?1", [&name])?;
        for (k, v) in &data {
            tx.execute(
                "INSERT OR REPLACE INTO secrets (name, key, value) VALUES (?1, ?2, ?3)",
                rusqlite::params![name, k, v],
            )?;
        }
        tx.commit()?;
        Ok(())
    })
    .await
}

/// The pairs of `name` (none when it is not stored).
pub async fn get(db: &Db, name: &str) -> Result<Vec<(String, String)>, StorageError> {
    let name = name.to_string();
    db.read(move |c| {
        let mut st = c.prepare("SELECT key, value FROM secrets WHERE name = ?1 ORDER BY key")?;
        let rows = st
            .query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    })
    .await
}
