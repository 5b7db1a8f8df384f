//! The PostgreSQL implementation of [`Store`] (`[ota.storage] backend = "postgres"`).
//!
//! The tables of [`crate::sqlite`], in the schema `ota`. What devices report about
//! themselves (inventory attributes: serial numbers, addresses, whatever an agent sends) is
//! sealed with the service's values key before it is sent; manifests, rollouts and
//! histories are what operators and signers wrote and stay in columns. Payloads are not in
//! the database: they stay encrypted blobs in `<data>/ota/blobs`, which instances share
//! (a volume every instance mounts; blobs are named by their content and written once).
//! Instances change a rollout only over the revision they read ([`Store::update_rollout`]).

use outpost_contracts::now_millis as now_ms;
use outpost_kit::pg::{self, Migration, StorageConfig, tokio_postgres};

use crate::rollout::{DeviceState, Policy, RolloutState};
use crate::store::{
    Attributes, Group, HISTORY, HistoryEntry, InventoryRow, NewArtifact, Report, RolloutDevice,
    RolloutHead, Store, StoreError, StoredArtifact, StoredRollout,
};

/// The schema ota's tables live in.
pub const SCHEMA: &str = "ota";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "artifacts, rollouts, their devices and histories, inventory and groups",
        sql: "CREATE TABLE artifacts (
              name TEXT NOT NULL,
              version TEXT NOT NULL,
              sha256 TEXT NOT NULL,
              size BIGINT NOT NULL,
              manifest BYTEA NOT NULL,
              signature TEXT NOT NULL,
              key_id TEXT NOT NULL,
              uploaded_ms BIGINT NOT NULL,
              PRIMARY KEY (name, version)
          );
          CREATE INDEX artifacts_by_sha ON artifacts (sha256);
          CREATE TABLE rollouts (
              name TEXT PRIMARY KEY,
              artifact_name TEXT NOT NULL,
              artifact_version TEXT NOT NULL,
              policy TEXT NOT NULL,
              state TEXT NOT NULL,
              open_phase BIGINT NOT NULL,
              failures_before BIGINT NOT NULL,
              started_before BIGINT NOT NULL,
              created_ms BIGINT NOT NULL
          );
          CREATE TABLE rollout_devices (
              rollout TEXT NOT NULL,
              device TEXT NOT NULL,
              position BIGINT NOT NULL,
              phase BIGINT NOT NULL,
              state TEXT NOT NULL,
              updated_ms BIGINT NOT NULL,
              PRIMARY KEY (rollout, device)
          );
          CREATE TABLE action_history (
              id BIGSERIAL PRIMARY KEY,
              rollout TEXT NOT NULL,
              device TEXT NOT NULL,
              at_ms BIGINT NOT NULL,
              status TEXT NOT NULL,
              details TEXT NOT NULL
          );
          CREATE INDEX action_history_by_device ON action_history (rollout, device, id);
          CREATE TABLE inventory (
              device TEXT PRIMARY KEY,
              attributes BYTEA,
              last_seen_ms BIGINT
          );
          CREATE TABLE groups (
              name TEXT PRIMARY KEY,
              labels TEXT NOT NULL,
              profile TEXT NOT NULL DEFAULT '',
              created_ms BIGINT NOT NULL
          );",
    },
    Migration {
        version: 2,
        description: "rollout revisions",
        sql: "ALTER TABLE rollouts ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;",
    },
];

/// ota's store in PostgreSQL.
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

impl PgStore {
    /// The rollouts (all, or the one named `only`), oldest first, with their devices.
    async fn load_rollouts(&self, only: Option<&str>) -> Result<Vec<StoredRollout>, StoreError> {
        let client = self.db.storage_client().await?;
        let heads = client
            .query(
                "SELECT name, artifact_name, artifact_version, policy, state, open_phase,
                        failures_before, started_before, created_ms, revision
                 FROM rollouts WHERE $1::TEXT IS NULL OR name = $1 ORDER BY created_ms",
                &[&only],
            )
            .await
            .map_err(pg::task)?;
        let devices = client
            .query(
                "SELECT rollout, device, position, phase, state FROM rollout_devices
                 WHERE $1::TEXT IS NULL OR rollout = $1 ORDER BY rollout, position",
                &[&only],
            )
            .await
            .map_err(pg::task)?;
        let mut by_rollout: std::collections::HashMap<String, Vec<RolloutDevice>> =
            std::collections::HashMap::new();
        for r in &devices {
            by_rollout.entry(r.get(0)).or_default().push(RolloutDevice {
                device: r.get(1),
                position: usize::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                phase: usize::try_from(r.get::<_, i64>(3)).unwrap_or(0),
                state: DeviceState::from_name(r.get(4)).unwrap_or(DeviceState::Waiting),
            });
        }
        let mut out = Vec::with_capacity(heads.len());
        for h in &heads {
            let name: String = h.get(0);
            let (Ok(policy), Ok(state)) = (
                serde_json::from_str::<Policy>(h.get(3)),
                serde_json::from_str::<RolloutState>(h.get(4)),
            ) else {
                tracing::error!(
                    rollout = name,
                    "unreadable rollout in the database; skipped"
                );
                continue;
            };
            let devices = by_rollout.remove(&name).unwrap_or_default();
            out.push(StoredRollout {
                head: RolloutHead {
                    artifact: (h.get(1), h.get(2)),
                    policy,
                    state,
                    open_phase: usize::try_from(h.get::<_, i64>(5)).unwrap_or(0),
                    failures_before: u32::try_from(h.get::<_, i64>(6)).unwrap_or(0),
                    started_before: u32::try_from(h.get::<_, i64>(7)).unwrap_or(0),
                    created_ms: h.get(8),
                    revision: h.get(9),
                    name,
                },
                devices,
            });
        }
        Ok(out)
    }
}

fn encode<T: serde::Serialize>(what: &'static str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|source| StoreError::Encode { what, source })
}

/// What a device's sealed attributes are bound to: the device (copied onto another
/// device's row, they do not open).
fn attributes_aad(device: &str) -> Vec<u8> {
    format!("attributes\u{0}{device}").into_bytes()
}

fn artifact_row(r: &tokio_postgres::Row) -> StoredArtifact {
    StoredArtifact {
        manifest: r.get(0),
        signature: r.get(1),
        key_id: r.get(2),
        uploaded_ms: r.get(3),
    }
}

fn group_row(r: &tokio_postgres::Row) -> Group {
    let labels: String = r.get(1);
    Group {
        name: r.get(0),
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        profile: r.get(2),
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Upserts the rows of `devices` (their state and when it changed).
async fn write_devices(
    tx: &tokio_postgres::Transaction<'_>,
    rollout: &str,
    devices: &[RolloutDevice],
    now: i64,
) -> Result<(), tokio_postgres::Error> {
    if devices.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = devices.iter().map(|d| d.device.as_str()).collect();
    let positions: Vec<i64> = devices.iter().map(|d| count(d.position)).collect();
    let phases: Vec<i64> = devices.iter().map(|d| count(d.phase)).collect();
    let states: Vec<String> = devices.iter().map(|d| d.state.name()).collect();
    tx.execute(
        "INSERT INTO rollout_devices (rollout, device, position, phase, state, updated_ms)
         SELECT $1, d, p, f, s, $6
         FROM unnest($2::text[], $3::int8[], $4::int8[], $5::text[]) AS x(d, p, f, s)
         ON CONFLICT (rollout, device) DO UPDATE SET state = excluded.state,
             updated_ms = excluded.updated_ms",
        &[&rollout, &names, &positions, &phases, &states, &now],
    )
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn artifact_exists(&self, name: String, version: String) -> Result<bool, StoreError> {
        Ok(self
            .db
            .storage_client()
            .await?
            .query_opt(
                "SELECT 1 FROM artifacts WHERE name = $1 AND version = $2",
                &[&name, &version],
            )
            .await
            .map_err(pg::task)?
            .is_some())
    }

    async fn add_artifact(&self, a: NewArtifact) -> Result<(), StoreError> {
        self.db
            .storage_client()
            .await?
            .execute(
                "INSERT INTO artifacts (name, version, sha256, size, manifest, signature, key_id,
                     uploaded_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &a.name,
                    &a.version,
                    &a.sha256,
                    &i64::try_from(a.size).unwrap_or(i64::MAX),
                    &a.stored.manifest,
                    &a.stored.signature,
                    &a.stored.key_id,
                    &a.stored.uploaded_ms,
                ],
            )
            .await
            .map_err(pg::task)?;
        Ok(())
    }

    async fn artifacts(&self) -> Result<Vec<StoredArtifact>, StoreError> {
        let rows = self
            .db
            .storage_client()
            .await?
            .query(
                "SELECT manifest, signature, key_id, uploaded_ms FROM artifacts
                 ORDER BY name COLLATE \"C\", uploaded_ms",
                &[],
            )
            .await
            .map_err(pg::task)?;
        Ok(rows.iter().map(artifact_row).collect())
    }

    async fn artifact(
        &self,
        name: String,
        version: String,
    ) -> Result<Option<StoredArtifact>, StoreError> {
        let row = self
            .db
            .storage_client()
            .await?
            .query_opt(
                "SELECT manifest, signature, key_id, uploaded_ms FROM artifacts
                 WHERE name = $1 AND version = $2",
                &[&name, &version],
            )
            .await
            .map_err(pg::task)?;
        Ok(row.as_ref().map(artifact_row))
    }

    async fn delete_artifact(
        &self,
        name: String,
        version: String,
        sha256: String,
    ) -> Result<bool, StoreError> {
        let mut client = self.db.storage_client().await?;
        let tx = client.transaction().await.map_err(pg::task)?;
        tx.execute(
            "DELETE FROM artifacts WHERE name = $1 AND version = $2",
            &[&name, &version],
        )
        .await
        .map_err(pg::task)?;
        let others = tx
            .query_opt("SELECT 1 FROM artifacts WHERE sha256 = $1", &[&sha256])
            .await
            .map_err(pg::task)?
            .is_some();
        tx.commit().await.map_err(pg::task)?;
        Ok(others)
    }

    async fn rollouts(&self) -> Result<Vec<StoredRollout>, StoreError> {
        self.load_rollouts(None).await
    }

    async fn rollout(&self, name: String) -> Result<Option<StoredRollout>, StoreError> {
        if name.contains('\0') {
            return Ok(None);
        }
        Ok(self.load_rollouts(Some(&name)).await?.pop())
    }

    async fn revisions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(self
            .db
            .query("SELECT name, revision FROM rollouts", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn add_rollout(&self, r: StoredRollout) -> Result<(), StoreError> {
        let policy = encode("rollout policy", &r.head.policy)?;
        let state = encode("rollout state", &r.head.state)?;
        let mut client = self.db.storage_client().await?;
        let tx = client.transaction().await.map_err(pg::task)?;
        let h = &r.head;
        tx.execute(
            "INSERT INTO rollouts (name, artifact_name, artifact_version, policy, state,
                 open_phase, failures_before, started_before, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &h.name,
                &h.artifact.0,
                &h.artifact.1,
                &policy,
                &state,
                &count(h.open_phase),
                &i64::from(h.failures_before),
                &i64::from(h.started_before),
                &h.created_ms,
            ],
        )
        .await
        .map_err(pg::task)?;
        write_devices(&tx, &h.name, &r.devices, now_ms())
            .await
            .map_err(pg::task)?;
        tx.commit().await.map_err(pg::task)?;
        Ok(())
    }

    async fn update_rollout(
        &self,
        head: RolloutHead,
        changed: Vec<RolloutDevice>,
        reports: Vec<Report>,
    ) -> Result<bool, StoreError> {
        let state = encode("rollout state", &head.state)?;
        let mut client = self.db.storage_client().await?;
        let tx = client.transaction().await.map_err(pg::task)?;
        // Read committed: the row lock taken here waits out another instance's change to
        // the rollout, and the revision then tells whether this change was made from it.
        let updated = tx
            .execute(
                "UPDATE rollouts SET state = $2, open_phase = $3, failures_before = $4,
                     started_before = $5, revision = revision + 1
                 WHERE name = $1 AND revision = $6",
                &[
                    &head.name,
                    &state,
                    &count(head.open_phase),
                    &i64::from(head.failures_before),
                    &i64::from(head.started_before),
                    &head.revision,
                ],
            )
            .await
            .map_err(pg::task)?;
        if updated == 0 {
            return Ok(false);
        }
        let now = now_ms();
        write_devices(&tx, &head.name, &changed, now)
            .await
            .map_err(pg::task)?;
        for r in &reports {
            // A device's own words: PostgreSQL's text cannot hold a NUL, SQLite's can.
            let details = r.details.replace('\0', "\u{fffd}");
            tx.execute(
                "INSERT INTO action_history (rollout, device, at_ms, status, details)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&head.name, &r.device, &now, &r.status, &details],
            )
            .await
            .map_err(pg::task)?;
            tx.execute(
                "DELETE FROM action_history WHERE rollout = $1 AND device = $2 AND id NOT IN
                     (SELECT id FROM action_history WHERE rollout = $1 AND device = $2
                      ORDER BY id DESC LIMIT $3)",
                &[&head.name, &r.device, &count(HISTORY)],
            )
            .await
            .map_err(pg::task)?;
        }
        tx.commit().await.map_err(pg::task)?;
        Ok(true)
    }

    async fn history(
        &self,
        rollout: String,
        device: String,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = self
            .db
            .storage_client()
            .await?
            .query(
                "SELECT at_ms, status, details FROM action_history
                 WHERE rollout = $1 AND device = $2 ORDER BY id",
                &[&rollout, &device],
            )
            .await
            .map_err(pg::task)?;
        Ok(rows
            .iter()
            .map(|r| HistoryEntry {
                at_ms: r.get(0),
                status: r.get(1),
                details: r.get(2),
            })
            .collect())
    }

    async fn inventory(&self) -> Result<Vec<InventoryRow>, StoreError> {
        let rows = self
            .db
            .storage_client()
            .await?
            .query(
                "SELECT device, attributes, last_seen_ms FROM inventory",
                &[],
            )
            .await
            .map_err(pg::task)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let device: String = r.get(0);
            let sealed: Option<Vec<u8>> = r.get(1);
            let attributes = match sealed {
                None => Attributes::default(),
                Some(sealed) => {
                    let plain = self
                        .db
                        .sealer
                        .open(&attributes_aad(&device), &sealed)
                        .map_err(|e| pg::task(format!("device {device}: {e}")))?;
                    serde_json::from_slice::<Attributes>(&plain).unwrap_or_default()
                }
            };
            out.push(InventoryRow {
                device,
                attributes,
                last_seen_ms: r.get(2),
            });
        }
        Ok(out)
    }

    async fn save_check_ins(&self, seen: Vec<(String, i64)>) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let (devices, times): (Vec<String>, Vec<i64>) = seen.into_iter().unzip();
        self.db
            .storage_client()
            .await?
            .execute(
                "INSERT INTO inventory (device, last_seen_ms)
                 SELECT d, t FROM unnest($1::text[], $2::int8[]) AS x(d, t)
                 ON CONFLICT (device) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
                &[&devices, &times],
            )
            .await
            .map_err(pg::task)?;
        Ok(())
    }

    async fn set_attributes(
        &self,
        device: String,
        attributes: Attributes,
    ) -> Result<(), StoreError> {
        let text = encode("device attributes", &attributes)?;
        let sealed = self
            .db
            .sealer
            .seal(&attributes_aad(&device), text.as_bytes());
        self.db
            .storage_client()
            .await?
            .execute(
                "INSERT INTO inventory (device, attributes) VALUES ($1, $2)
                 ON CONFLICT (device) DO UPDATE SET attributes = excluded.attributes",
                &[&device, &sealed],
            )
            .await
            .map_err(pg::task)?;
        Ok(())
    }

    async fn add_group(&self, g: Group, created_ms: i64) -> Result<bool, StoreError> {
        let labels = encode("group labels", &g.labels)?;
        let n = self
            .db
            .storage_client()
            .await?
            .execute(
                "INSERT INTO groups (name, labels, profile, created_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING",
                &[&g.name, &labels, &g.profile, &created_ms],
            )
            .await
            .map_err(pg::task)?;
        Ok(n == 1)
    }

    async fn groups(&self) -> Result<Vec<Group>, StoreError> {
        let rows = self
            .db
            .storage_client()
            .await?
            .query(
                "SELECT name, labels, profile FROM groups ORDER BY name COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(pg::task)?;
        Ok(rows.iter().map(group_row).collect())
    }

    async fn group(&self, name: String) -> Result<Option<Group>, StoreError> {
        let row = self
            .db
            .storage_client()
            .await?
            .query_opt(
                "SELECT name, labels, profile FROM groups WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(pg::task)?;
        Ok(row.as_ref().map(group_row))
    }

    async fn delete_group(&self, name: String) -> Result<bool, StoreError> {
        let n = self
            .db
            .storage_client()
            .await?
            .execute("DELETE FROM groups WHERE name = $1", &[&name])
            .await
            .map_err(pg::task)?;
        Ok(n == 1)
    }
}
