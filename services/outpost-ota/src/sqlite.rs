//! The SQLite (SQLCipher) implementation of [`Store`].
//!
//! Tables:
//! - `artifacts(name, version, sha256, size, manifest, signature, key_id, uploaded_ms)`:
//!   the manifest as signed (bytes) and its signature; indexed by `sha256`, which names the
//!   payload's blob, so a payload shared by two artifacts is deleted with the last one.
//! - `rollouts(name, artifact_name, artifact_version, policy, state, open_phase,
//!   failures_before, started_before, created_ms)`: policy and state as JSON.
//! - `rollout_devices(rollout, device, position, phase, state, updated_ms)`: a row per
//!   device, written when its state changes.
//! - `action_history(id, rollout, device, at_ms, status, details)`: the last
//!   [`HISTORY`] reports of each device in each rollout.
//! - `inventory(device, attributes, last_seen_ms)`: attributes as a JSON object.
//! - `groups(name, labels, profile, created_ms)`: labels as a JSON array.

use outpost_contracts::now_millis as now_ms;
use outpost_storage::rusqlite::{OptionalExtension as _, params};
use outpost_storage::{Db, Migration};

use crate::rollout::{DeviceState, Policy, RolloutState};
use crate::store::{
    Attributes, Group, HISTORY, HistoryEntry, InventoryRow, NewArtifact, Report, RolloutDevice,
    RolloutHead, Store, StoreError, StoredArtifact, StoredRollout,
};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "artifacts",
        sql: "CREATE TABLE artifacts (
              name TEXT NOT NULL,
              version TEXT NOT NULL,
              sha256 TEXT NOT NULL,
              size INTEGER NOT NULL,
              manifest BLOB NOT NULL,
              signature TEXT NOT NULL,
              key_id TEXT NOT NULL,
              uploaded_ms INTEGER NOT NULL,
              PRIMARY KEY (name, version)
          );
          CREATE INDEX artifacts_by_sha ON artifacts (sha256);",
    },
    Migration {
        version: 2,
        description: "rollouts, their devices and the devices' histories",
        sql: "CREATE TABLE rollouts (
              name TEXT PRIMARY KEY,
              artifact_name TEXT NOT NULL,
              artifact_version TEXT NOT NULL,
              policy TEXT NOT NULL,
              state TEXT NOT NULL,
              open_phase INTEGER NOT NULL,
              failures_before INTEGER NOT NULL,
              started_before INTEGER NOT NULL,
              created_ms INTEGER NOT NULL
          );
          CREATE TABLE rollout_devices (
              rollout TEXT NOT NULL,
              device TEXT NOT NULL,
              position INTEGER NOT NULL,
              phase INTEGER NOT NULL,
              state TEXT NOT NULL,
              updated_ms INTEGER NOT NULL,
              PRIMARY KEY (rollout, device)
          ) WITHOUT ROWID;
          CREATE TABLE action_history (
              id INTEGER PRIMARY KEY,
              rollout TEXT NOT NULL,
              device TEXT NOT NULL,
              at_ms INTEGER NOT NULL,
              status TEXT NOT NULL,
              details TEXT NOT NULL
          );
          CREATE INDEX action_history_by_device ON action_history (rollout, device, id);",
    },
    Migration {
        version: 3,
        description: "inventory and groups",
        sql: "CREATE TABLE inventory (
              device TEXT PRIMARY KEY,
              attributes TEXT NOT NULL DEFAULT '{}',
              last_seen_ms INTEGER
          );
          CREATE TABLE groups (
              name TEXT PRIMARY KEY,
              labels TEXT NOT NULL,
              profile TEXT NOT NULL DEFAULT '',
              created_ms INTEGER NOT NULL
          );",
    },
    Migration {
        version: 4,
        description: "rollout revisions",
        sql: "ALTER TABLE rollouts ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;",
    },
];

/// Read connections beside the writer.
pub const READERS: usize = 2;

/// ota's store on its encrypted database (opened and migrated with [`MIGRATIONS`]).
pub struct SqliteStore {
    db: Db,
}

impl SqliteStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

/// The rollouts (all, or the one named `only`), oldest first, with their devices.
fn load_rollouts(
    c: &outpost_storage::rusqlite::Connection,
    only: Option<&str>,
) -> Result<Vec<StoredRollout>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT name, artifact_name, artifact_version, policy, state, open_phase, failures_before,
                started_before, created_ms, revision FROM rollouts
         WHERE ?1 IS NULL OR name = ?1 ORDER BY created_ms",
    )?;
    type Row = (
        String,
        String,
        String,
        String,
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
    );
    let heads: Vec<Row> = st
        .query_map([only], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (name, an, av, policy, state, open, fb, sb, created, revision) in heads {
        let mut st = c.prepare_cached(
            "SELECT device, position, phase, state FROM rollout_devices WHERE rollout = ?1 ORDER BY position",
        )?;
        let devices = st
            .query_map([&name], |r| {
                Ok(RolloutDevice {
                    device: r.get(0)?,
                    position: r.get::<_, i64>(1)? as usize,
                    phase: r.get::<_, i64>(2)? as usize,
                    state: DeviceState::from_name(&r.get::<_, String>(3)?)
                        .unwrap_or(DeviceState::Waiting),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let (Ok(policy), Ok(state)) = (
            serde_json::from_str::<Policy>(&policy),
            serde_json::from_str::<RolloutState>(&state),
        ) else {
            tracing::error!(
                rollout = name,
                "unreadable rollout in the database; skipped"
            );
            continue;
        };
        out.push(StoredRollout {
            head: RolloutHead {
                name,
                artifact: (an, av),
                policy,
                state,
                open_phase: open as usize,
                failures_before: fb as u32,
                started_before: sb as u32,
                created_ms: created,
                revision,
            },
            devices,
        });
    }
    Ok(out)
}

fn encode<T: serde::Serialize>(what: &'static str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|source| StoreError::Encode { what, source })
}

fn artifact_row(
    r: &outpost_storage::rusqlite::Row<'_>,
) -> outpost_storage::rusqlite::Result<StoredArtifact> {
    Ok(StoredArtifact {
        manifest: r.get(0)?,
        signature: r.get(1)?,
        key_id: r.get(2)?,
        uploaded_ms: r.get(3)?,
    })
}

/// Upserts the rows of `devices` (their state and when it changed).
fn write_devices(
    tx: &outpost_storage::rusqlite::Transaction<'_>,
    rollout: &str,
    devices: &[RolloutDevice],
    now: i64,
) -> Result<(), StoreError> {
    let mut up = tx.prepare_cached(
        "INSERT INTO rollout_devices (rollout, device, position, phase, state, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (rollout, device) DO UPDATE SET state = ?5, updated_ms = ?6",
    )?;
    for d in devices {
        up.execute(params![
            rollout,
            d.device,
            d.position as i64,
            d.phase as i64,
            d.state.name(),
            now
        ])?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn artifact_exists(&self, name: String, version: String) -> Result<bool, StoreError> {
        self.db
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT 1 FROM artifacts WHERE name = ?1 AND version = ?2",
                    params![name, version],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
            })
            .await
    }

    async fn add_artifact(&self, a: NewArtifact) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO artifacts (name, version, sha256, size, manifest, signature, key_id, uploaded_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        a.name,
                        a.version,
                        a.sha256,
                        a.size as i64,
                        a.stored.manifest,
                        a.stored.signature,
                        a.stored.key_id,
                        a.stored.uploaded_ms
                    ],
                )?;
                Ok(())
            })
            .await
    }

    async fn artifacts(&self) -> Result<Vec<StoredArtifact>, StoreError> {
        self.db
            .read(|c| {
                let mut st = c.prepare(
                    "SELECT manifest, signature, key_id, uploaded_ms FROM artifacts ORDER BY name, uploaded_ms",
                )?;
                let rows = st
                    .query_map([], artifact_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }

    async fn artifact(
        &self,
        name: String,
        version: String,
    ) -> Result<Option<StoredArtifact>, StoreError> {
        self.db
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT manifest, signature, key_id, uploaded_ms FROM artifacts WHERE name = ?1 AND version = ?2",
                    params![name, version],
                    artifact_row,
                )
                .optional()?)
            })
            .await
    }

    async fn delete_artifact(
        &self,
        name: String,
        version: String,
        sha256: String,
    ) -> Result<bool, StoreError> {
        self.db
            .write(move |c| {
                c.execute(
                    "DELETE FROM artifacts WHERE name = ?1 AND version = ?2",
                    params![name, version],
                )?;
                let n: i64 = c.query_row(
                    "SELECT COUNT(*) FROM artifacts WHERE sha256 = ?1",
                    [&sha256],
                    |r| r.get(0),
                )?;
                Ok(n > 0)
            })
            .await
    }

    async fn rollouts(&self) -> Result<Vec<StoredRollout>, StoreError> {
        self.db.read(|c| load_rollouts(c, None)).await
    }

    async fn rollout(&self, name: String) -> Result<Option<StoredRollout>, StoreError> {
        self.db
            .read(move |c| Ok(load_rollouts(c, Some(&name))?.pop()))
            .await
    }

    async fn revisions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.db
            .read(|c| {
                let mut st = c.prepare("SELECT name, revision FROM rollouts")?;
                let rows = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }

    async fn add_rollout(&self, r: StoredRollout) -> Result<(), StoreError> {
        let policy = encode("rollout policy", &r.head.policy)?;
        let state = encode("rollout state", &r.head.state)?;
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                let h = &r.head;
                tx.execute(
                    "INSERT INTO rollouts (name, artifact_name, artifact_version, policy, state, open_phase,
                         failures_before, started_before, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        h.name,
                        h.artifact.0,
                        h.artifact.1,
                        policy,
                        state,
                        h.open_phase as i64,
                        h.failures_before,
                        h.started_before,
                        h.created_ms
                    ],
                )?;
                write_devices(&tx, &h.name, &r.devices, now_ms())?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    async fn update_rollout(
        &self,
        head: RolloutHead,
        changed: Vec<RolloutDevice>,
        reports: Vec<Report>,
    ) -> Result<bool, StoreError> {
        let state = encode("rollout state", &head.state)?;
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                let updated = tx.execute(
                    "UPDATE rollouts SET state = ?2, open_phase = ?3, failures_before = ?4, started_before = ?5,
                         revision = revision + 1
                     WHERE name = ?1 AND revision = ?6",
                    params![
                        head.name,
                        state,
                        head.open_phase as i64,
                        head.failures_before,
                        head.started_before,
                        head.revision
                    ],
                )?;
                if updated == 0 {
                    return Ok(false);
                }
                let now = now_ms();
                write_devices(&tx, &head.name, &changed, now)?;
                {
                    let mut h = tx.prepare_cached(
                        "INSERT INTO action_history (rollout, device, at_ms, status, details) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?;
                    let mut trim = tx.prepare_cached(
                        "DELETE FROM action_history WHERE rollout = ?1 AND device = ?2 AND id NOT IN
                             (SELECT id FROM action_history WHERE rollout = ?1 AND device = ?2 ORDER BY id DESC LIMIT ?3)",
                    )?;
                    for r in &reports {
                        h.execute(params![head.name, r.device, now, r.status, r.details])?;
                        trim.execute(params![head.name, r.device, HISTORY as i64])?;
                    }
                }
                tx.commit()?;
                Ok(true)
            })
            .await
    }

    async fn history(
        &self,
        rollout: String,
        device: String,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        self.db
            .read(move |c| {
                let mut st = c.prepare(
                    "SELECT at_ms, status, details FROM action_history WHERE rollout = ?1 AND device = ?2 ORDER BY id",
                )?;
                let rows = st
                    .query_map(params![rollout, device], |r| {
                        Ok(HistoryEntry {
                            at_ms: r.get(0)?,
                            status: r.get(1)?,
                            details: r.get(2)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }

    async fn inventory(&self) -> Result<Vec<InventoryRow>, StoreError> {
        self.db
            .read(|c| {
                let mut st = c.prepare("SELECT device, attributes, last_seen_ms FROM inventory")?;
                let rows = st
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<i64>>(2)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows
                    .into_iter()
                    .map(|(device, attributes, last_seen_ms)| InventoryRow {
                        device,
                        attributes: serde_json::from_str::<Attributes>(&attributes)
                            .unwrap_or_default(),
                        last_seen_ms,
                    })
                    .collect())
            })
            .await
    }

    async fn save_check_ins(&self, seen: Vec<(String, i64)>) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                {
                    let mut st = tx.prepare_cached(
                        "INSERT INTO inventory (device, last_seen_ms) VALUES (?1, ?2)
                         ON CONFLICT (device) DO UPDATE SET last_seen_ms = ?2",
                    )?;
                    for (d, t) in &seen {
                        st.execute(params![d, t])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }

    async fn set_attributes(
        &self,
        device: String,
        attributes: Attributes,
    ) -> Result<(), StoreError> {
        let text = encode("device attributes", &attributes)?;
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO inventory (device, attributes) VALUES (?1, ?2)
                     ON CONFLICT (device) DO UPDATE SET attributes = ?2",
                    params![device, text],
                )?;
                Ok(())
            })
            .await
    }

    async fn add_group(&self, g: Group, created_ms: i64) -> Result<bool, StoreError> {
        let labels = encode("group labels", &g.labels)?;
        self.db
            .write(move |c| {
                let n = c.execute(
                    "INSERT INTO groups (name, labels, profile, created_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO NOTHING",
                    params![g.name, labels, g.profile, created_ms],
                )?;
                Ok(n == 1)
            })
            .await
    }

    async fn groups(&self) -> Result<Vec<Group>, StoreError> {
        self.db
            .read(|c| {
                let mut st = c.prepare("SELECT name, labels, profile FROM groups ORDER BY name")?;
                let rows = st
                    .query_map([], group_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }

    async fn group(&self, name: String) -> Result<Option<Group>, StoreError> {
        self.db
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT name, labels, profile FROM groups WHERE name = ?1",
                    params![name],
                    group_row,
                )
                .optional()?)
            })
            .await
    }

    async fn delete_group(&self, name: String) -> Result<bool, StoreError> {
        self.db
            .write(move |c| {
                Ok(c.execute("DELETE FROM groups WHERE name = ?1", params![name])? == 1)
            })
            .await
    }
}

fn group_row(r: &outpost_storage::rusqlite::Row<'_>) -> outpost_storage::rusqlite::Result<Group> {
    let labels: String = r.get(1)?;
    Ok(Group {
        name: r.get(0)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        profile: r.get(2)?,
    })
}
