//! The PostgreSQL implementation of [`Store`] (`[core_metadata.storage] backend =
//! "postgres"`), for several core-metadata instances on one database.
//!
//! The tables of [`crate::store`], in the schema `core_metadata`. An object's EdgeX JSON
//! (protocol properties included: addresses, and whatever a device's protocol carries) and
//! a device credential's salt and digest are sealed with the service's values key before
//! they are sent; what queries filter and order on (kind, id, name, time, service,
//! profile, parent, manufacturer, model, labels) stays in columns, as do certificate
//! fingerprints, which certificates are looked up by.
//!
//! Every answer comes from the database, so instances need nothing of each other: each
//! announces its own changes on the bus as one instance does. The walk down a device's
//! descendants stops at a cycle (`CYCLE`, PostgreSQL 14 or later), which instances
//! changing parents at the same moment could make.

use outpost_kit::pg::{self, Migration, StorageConfig, tokio_postgres};

use crate::store::{
    CertIssuer, CertRecord, CertStatus, Doc, Filter, Kind, Refs, Store, StoreError, StoredSecret,
};

/// The schema core-metadata's tables live in.
pub const SCHEMA: &str = "core_metadata";

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "metadata objects, device credentials and certificates, bodies sealed",
    sql: "CREATE TABLE objects (
              kind SMALLINT NOT NULL,
              id TEXT NOT NULL,
              name TEXT NOT NULL,
              modified BIGINT NOT NULL,
              service TEXT NOT NULL DEFAULT '',
              profile TEXT NOT NULL DEFAULT '',
              parent TEXT NOT NULL DEFAULT '',
              manufacturer TEXT NOT NULL DEFAULT '',
              model TEXT NOT NULL DEFAULT '',
              labels TEXT[] NOT NULL DEFAULT '{}',
              body BYTEA NOT NULL,
              PRIMARY KEY (kind, id),
              UNIQUE (kind, name)
          );
          CREATE INDEX objects_service ON objects (kind, service);
          CREATE INDEX objects_profile ON objects (kind, profile);
          CREATE INDEX objects_parent ON objects (kind, parent);
          CREATE INDEX objects_modified ON objects (kind, modified);
          CREATE TABLE device_secrets (
              device_id TEXT PRIMARY KEY,
              sealed BYTEA NOT NULL
          );
          CREATE TABLE device_certs (
              fingerprint TEXT PRIMARY KEY,
              device_id TEXT NOT NULL,
              issuer TEXT NOT NULL,
              status TEXT NOT NULL,
              not_after BIGINT NOT NULL,
              created BIGINT NOT NULL
          );
          CREATE INDEX device_certs_device ON device_certs (device_id);
          -- A device's credential goes with the device; its revoked certificates stay on
          -- record, so that a deleted device's revoked certificate cannot enroll it again.
          CREATE FUNCTION device_gone() RETURNS trigger LANGUAGE plpgsql
              SET search_path = core_metadata, pg_temp AS $$
              BEGIN
                  DELETE FROM device_secrets WHERE device_id = OLD.id;
                  DELETE FROM device_certs WHERE device_id = OLD.id AND status <> 'revoked';
                  RETURN NULL;
              END $$;
          CREATE TRIGGER device_gone AFTER DELETE ON objects
              FOR EACH ROW WHEN (OLD.kind = 2) EXECUTE FUNCTION device_gone();",
}];

const COLUMNS: &str =
    "id, name, modified, service, profile, parent, manufacturer, model, labels, body";

/// core-metadata's store in PostgreSQL.
pub struct PgStore {
    db: pg::Database,
}

fn code(kind: Kind) -> i16 {
    match kind {
        Kind::Profile => 1,
        Kind::Device => 2,
        Kind::Service => 3,
        Kind::Watcher => 4,
    }
}

/// What an object's sealed body is bound to: its kind and id.
fn object_aad(kind: Kind, id: &str) -> Vec<u8> {
    format!("object\u{0}{}\u{0}{id}", code(kind)).into_bytes()
}

fn secret_aad(device_id: &str) -> Vec<u8> {
    format!("device-secret\u{0}{device_id}").into_bytes()
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

fn task(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(pg::task(e))
}

/// A `device_certs` row selected as fingerprint, issuer, status, not_after, created.
fn cert_row(r: &tokio_postgres::Row) -> CertRecord {
    CertRecord {
        fingerprint: r.get(0),
        issuer: if r.get::<_, String>(1) == "node" {
            CertIssuer::Node
        } else {
            CertIssuer::Manufacturer
        },
        status: CertStatus::parse(&r.get::<_, String>(2)),
        not_after: r.get(3),
        created: r.get(4),
    }
}

/// The `WHERE` clause of `f` for `kind`.
fn filter(kind: Kind, f: &Filter) -> pg::Filter {
    let mut w = pg::Filter::default();
    let k = w.arg(code(kind));
    w.and(format!("kind = {k}"));
    // No column holds a NUL (PostgreSQL's text cannot): a value with one selects nothing.
    let given = [&f.service, &f.profile, &f.manufacturer, &f.model];
    if given
        .iter()
        .any(|v| v.as_deref().is_some_and(|v| v.contains('\0')))
        || f.labels.iter().any(|l| l.contains('\0'))
        || f.descendants_of
            .as_ref()
            .is_some_and(|(r, _)| r.contains('\0'))
    {
        w.and("FALSE".into());
        return w;
    }
    w.eq("service", f.service.clone());
    w.eq("profile", f.profile.clone());
    w.eq("manufacturer", f.manufacturer.clone());
    w.eq("model", f.model.clone());
    if !f.labels.is_empty() {
        let l = w.arg(f.labels.clone());
        w.and(format!("labels && {l}"));
    }
    if let Some((root, levels)) = &f.descendants_of {
        let (root, levels) = (w.arg(root.clone()), w.arg(i64::from(*levels)));
        w.and(format!(
            "name IN (
                WITH RECURSIVE tree(name, lvl) AS (
                    SELECT name, 1 FROM objects WHERE kind = {k} AND parent = {root}
                    UNION ALL
                    SELECT o.name, t.lvl + 1 FROM objects o JOIN tree t ON o.parent = t.name
                    WHERE o.kind = {k} AND ({levels}::bigint = 0 OR t.lvl < {levels}::bigint)
                ) CYCLE name SET is_cycle USING path
                SELECT name FROM tree)"
        ));
    }
    w
}

impl PgStore {
    /// Connects and migrates the schema.
    pub async fn open(cfg: &StorageConfig, secrets: &std::path::Path) -> Result<Self, pg::PgError> {
        Ok(Self {
            db: pg::Database::open(cfg, secrets, crate::SERVICE, SCHEMA, MIGRATIONS).await?,
        })
    }

    fn doc(&self, kind: Kind, r: &tokio_postgres::Row) -> Result<Doc, StoreError> {
        let id: String = r.get(0);
        let body = self
            .db
            .sealer
            .open(&object_aad(kind, &id), r.get(9))
            .map_err(task)?;
        Ok(Doc {
            name: r.get(1),
            modified: r.get(2),
            refs: Refs {
                service: r.get(3),
                profile: r.get(4),
                parent: r.get(5),
                manufacturer: r.get(6),
                model: r.get(7),
                labels: r.get(8),
            },
            body: String::from_utf8(body).map_err(task)?,
            id,
        })
    }

    async fn one_by(
        &self,
        kind: Kind,
        column: &'static str,
        value: &str,
    ) -> Result<Option<Doc>, StoreError> {
        // No name or id holds a NUL (PostgreSQL's text cannot): none such is found.
        if value.contains('\0') {
            return Ok(None);
        }
        let rows = self
            .db
            .query(
                &format!("SELECT {COLUMNS} FROM objects WHERE kind = $1 AND {column} = $2"),
                &[&code(kind), &value],
            )
            .await?;
        rows.first().map(|r| self.doc(kind, r)).transpose()
    }

    /// Runs `sql` (an insert or update) with `doc`'s row as its 11 parameters, the body
    /// sealed: the rows it changed, or the database's refusal.
    async fn write(
        &self,
        sql: &str,
        kind: Kind,
        doc: &Doc,
    ) -> Result<Result<u64, tokio_postgres::Error>, StoreError> {
        Self::storable(doc)?;
        let body = self
            .db
            .sealer
            .seal(&object_aad(kind, &doc.id), doc.body.as_bytes());
        let r = &doc.refs;
        let client = self.db.storage_client().await?;
        Ok(client
            .execute(
                sql,
                &[
                    &code(kind),
                    &doc.id,
                    &doc.name,
                    &doc.modified,
                    &r.service,
                    &r.profile,
                    &r.parent,
                    &r.manufacturer,
                    &r.model,
                    &r.labels,
                    &body,
                ],
            )
            .await)
    }

    /// The row's fields, checked for what PostgreSQL's text cannot hold.
    fn storable(doc: &Doc) -> Result<(), StoreError> {
        let r = &doc.refs;
        for (what, v) in [
            ("id", &doc.id),
            ("name", &doc.name),
            ("service", &r.service),
            ("profile", &r.profile),
            ("parent", &r.parent),
            ("manufacturer", &r.manufacturer),
            ("model", &r.model),
        ] {
            pg::storable(what, v)?;
        }
        for l in &r.labels {
            pg::storable("label", l)?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn insert(&self, kind: Kind, doc: Doc) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO objects (kind, {COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        );
        match self.write(&sql, kind, &doc).await? {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate(kind, doc.name)),
            Err(e) => Err(task(e)),
        }
    }

    async fn replace(&self, kind: Kind, doc: Doc) -> Result<(), StoreError> {
        let sql = "UPDATE objects SET name = $3, modified = $4, service = $5, profile = $6,
                       parent = $7, manufacturer = $8, model = $9, labels = $10, body = $11
                   WHERE kind = $1 AND id = $2";
        match self.write(sql, kind, &doc).await? {
            Ok(0) => Err(StoreError::Missing(kind, doc.name)),
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate(kind, doc.name)),
            Err(e) => Err(task(e)),
        }
    }

    async fn by_name(&self, kind: Kind, name: &str) -> Result<Option<Doc>, StoreError> {
        self.one_by(kind, "name", name).await
    }

    async fn by_id(&self, kind: Kind, id: &str) -> Result<Option<Doc>, StoreError> {
        self.one_by(kind, "id", id).await
    }

    async fn list(
        &self,
        kind: Kind,
        f: Filter,
        offset: u64,
        limit: u64,
    ) -> Result<(u64, Vec<Doc>), StoreError> {
        let client = self.db.storage_client().await?;
        let (total, rows) = filter(kind, &f)
            .page(
                &client,
                "objects",
                COLUMNS,
                "modified DESC, name COLLATE \"C\"",
                offset,
                limit,
            )
            .await
            .map_err(task)?;
        let docs = rows
            .iter()
            .map(|r| self.doc(kind, r))
            .collect::<Result<_, _>>()?;
        Ok((total, docs))
    }

    async fn count(&self, kind: Kind, f: Filter) -> Result<u64, StoreError> {
        let w = filter(kind, &f);
        let rows = self
            .db
            .query(
                &format!("SELECT count(*) FROM objects {}", w.sql()),
                &w.params(),
            )
            .await?;
        Ok(rows
            .first()
            .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    async fn names(&self, kind: Kind, limit: u64) -> Result<Vec<String>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT name FROM objects WHERE kind = $1
                 ORDER BY modified DESC, name COLLATE \"C\" LIMIT $2",
                &[&code(kind), &pg::bound(limit)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn devices_per_profile(
        &self,
        profiles: Vec<String>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT profile, count(*) FROM objects
                 WHERE kind = $1 AND profile = ANY($2) GROUP BY profile",
                &[&code(Kind::Device), &profiles],
            )
            .await?;
        let counts: std::collections::HashMap<String, i64> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(profiles
            .into_iter()
            .map(|p| {
                let n = counts.get(&p).copied().unwrap_or(0);
                (p, u64::try_from(n).unwrap_or(0))
            })
            .collect())
    }

    async fn services_using_profile(&self, profile: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT DISTINCT service FROM objects WHERE kind = $1 AND profile = $2
                 ORDER BY service COLLATE \"C\"",
                &[&code(Kind::Device), &profile],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn delete(&self, kind: Kind, name: &str) -> Result<bool, StoreError> {
        let n = self
            .db
            .execute(
                "DELETE FROM objects WHERE kind = $1 AND name = $2",
                &[&code(kind), &name],
            )
            .await?;
        Ok(n > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.query("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn set_secret(
        &self,
        device_id: &str,
        secret: Option<StoredSecret>,
    ) -> Result<(), StoreError> {
        match secret {
            Some(s) => {
                let mut plain = Vec::with_capacity(1 + s.salt.len() + s.hash.len());
                let salt_len = u8::try_from(s.salt.len()).map_err(task)?;
                plain.push(salt_len);
                plain.extend_from_slice(&s.salt);
                plain.extend_from_slice(&s.hash);
                let sealed = self.db.sealer.seal(&secret_aad(device_id), &plain);
                self.db
                    .execute(
                        "INSERT INTO device_secrets (device_id, sealed) VALUES ($1, $2)
                         ON CONFLICT (device_id) DO UPDATE SET sealed = EXCLUDED.sealed",
                        &[&device_id, &sealed],
                    )
                    .await?;
            }
            None => {
                self.db
                    .execute(
                        "DELETE FROM device_secrets WHERE device_id = $1",
                        &[&device_id],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn secret(&self, device_id: &str) -> Result<Option<StoredSecret>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT sealed FROM device_secrets WHERE device_id = $1",
                &[&device_id],
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let plain = self
            .db
            .sealer
            .open(&secret_aad(device_id), r.get(0))
            .map_err(task)?;
        let (&salt_len, rest) = plain
            .split_first()
            .ok_or_else(|| task("an empty device credential"))?;
        let salt_len = usize::from(salt_len);
        if rest.len() < salt_len {
            return Err(task("a device credential shorter than its salt"));
        }
        let (salt, hash) = rest.split_at(salt_len);
        Ok(Some(StoredSecret {
            salt: salt.to_vec(),
            hash: hash.to_vec(),
        }))
    }

    async fn put_cert(&self, device_id: &str, cert: CertRecord) -> Result<(), StoreError> {
        let issuer = match cert.issuer {
            CertIssuer::Node => "node",
            CertIssuer::Manufacturer => "manufacturer",
        };
        self.db
            .execute(
                "INSERT INTO device_certs (fingerprint, device_id, issuer, status, not_after, created)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (fingerprint) DO UPDATE SET device_id = EXCLUDED.device_id,
                     issuer = EXCLUDED.issuer, status = EXCLUDED.status,
                     not_after = EXCLUDED.not_after, created = EXCLUDED.created",
                &[
                    &cert.fingerprint,
                    &device_id,
                    &issuer,
                    &cert.status.as_str(),
                    &cert.not_after,
                    &cert.created,
                ],
            )
            .await?;
        Ok(())
    }

    async fn certs(&self, device_id: &str) -> Result<Vec<CertRecord>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT fingerprint, issuer, status, not_after, created FROM device_certs
                 WHERE device_id = $1 ORDER BY created, fingerprint COLLATE \"C\"",
                &[&device_id],
            )
            .await?;
        Ok(rows.iter().map(cert_row).collect())
    }

    async fn cert_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<(String, CertRecord)>, StoreError> {
        if fingerprint.contains('\0') {
            return Ok(None);
        }
        let rows = self
            .db
            .query(
                "SELECT fingerprint, issuer, status, not_after, created, device_id
                 FROM device_certs WHERE fingerprint = $1",
                &[&fingerprint],
            )
            .await?;
        Ok(rows.first().map(|r| (r.get(5), cert_row(r))))
    }

    async fn set_cert_status(
        &self,
        device_id: &str,
        from: Option<CertStatus>,
        to: CertStatus,
    ) -> Result<u64, StoreError> {
        let n = match from {
            Some(f) => {
                self.db
                    .execute(
                        "UPDATE device_certs SET status = $3 WHERE device_id = $1 AND status = $2",
                        &[&device_id, &f.as_str(), &to.as_str()],
                    )
                    .await?
            }
            None => {
                self.db
                    .execute(
                        "UPDATE device_certs SET status = $2 WHERE device_id = $1",
                        &[&device_id, &to.as_str()],
                    )
                    .await?
            }
        };
        Ok(n)
    }
}
