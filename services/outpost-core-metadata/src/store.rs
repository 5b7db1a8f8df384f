//! Persistence of metadata objects.
//!
//! Every object (profile, device, device service, provision watcher) is a document: its
//! EdgeX JSON body plus the fields queries filter on (service, profile, parent,
//! manufacturer, model, labels). [`Store`] is that document store; [`SqliteStore`] keeps it
//! in one table of the service's encrypted database, [`crate::postgres::PgStore`] in
//! PostgreSQL with each body sealed.

use outpost_storage::rusqlite::types::Value as SqlValue;
use outpost_storage::rusqlite::{self, OptionalExtension as _, params, params_from_iter};
use outpost_storage::{Db, Migration, StorageError};

/// The kinds of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Profile,
    Device,
    Service,
    Watcher,
}

impl Kind {
    fn code(self) -> i64 {
        match self {
            Self::Profile => 1,
            Self::Device => 2,
            Self::Service => 3,
            Self::Watcher => 4,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Profile => "device profile",
            Self::Device => "device",
            Self::Service => "device service",
            Self::Watcher => "provision watcher",
        }
    }
}

/// Fields of an object that queries filter on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refs {
    pub service: String,
    pub profile: String,
    pub parent: String,
    pub manufacturer: String,
    pub model: String,
    pub labels: Vec<String>,
}

/// A stored object.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub id: String,
    pub name: String,
    pub modified: i64,
    pub refs: Refs,
    /// The object's JSON.
    pub body: String,
}

/// Which objects a list or count selects; unset fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub service: Option<String>,
    pub profile: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// Objects carrying any of these labels.
    pub labels: Vec<String>,
    /// Devices below this one in the parent hierarchy, up to `levels` deep (0 = all).
    pub descendants_of: Option<(String, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} '{name}' already exists", kind = .0.label(), name = .1)]
    Duplicate(Kind, String),
    #[error("{kind} '{name}' does not exist", kind = .0.label(), name = .1)]
    Missing(Kind, String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Storage(StorageError::Sqlite(e))
    }
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Adds a new object; a name or id already in use is [`StoreError::Duplicate`].
    async fn insert(&self, kind: Kind, doc: Doc) -> Result<(), StoreError>;
    /// Replaces the object with `doc.id` (its name may change, to one not in use).
    async fn replace(&self, kind: Kind, doc: Doc) -> Result<(), StoreError>;
    async fn by_name(&self, kind: Kind, name: &str) -> Result<Option<Doc>, StoreError>;
    async fn by_id(&self, kind: Kind, id: &str) -> Result<Option<Doc>, StoreError>;
    /// A page of objects, most recently modified first, and the total count.
    async fn list(
        &self,
        kind: Kind,
        filter: Filter,
        offset: u64,
        limit: u64,
    ) -> Result<(u64, Vec<Doc>), StoreError>;
    async fn count(&self, kind: Kind, filter: Filter) -> Result<u64, StoreError>;
    /// The names of `kind`, most recently modified first, at most `limit`.
    async fn names(&self, kind: Kind, limit: u64) -> Result<Vec<String>, StoreError>;
    /// Number of devices per profile name, for `linkedDeviceCount`.
    async fn devices_per_profile(
        &self,
        profiles: Vec<String>,
    ) -> Result<Vec<(String, u64)>, StoreError>;
    /// Names of the device services owning devices of `profile`, sorted.
    async fn services_using_profile(&self, profile: &str) -> Result<Vec<String>, StoreError>;
    /// Deletes by name; false if there was nothing to delete.
    async fn delete(&self, kind: Kind, name: &str) -> Result<bool, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
    /// Sets (or with `None` removes) the credential of the device with `device_id`.
    async fn set_secret(
        &self,
        device_id: &str,
        secret: Option<StoredSecret>,
    ) -> Result<(), StoreError>;
    /// The credential of the device with `device_id`.
    async fn secret(&self, device_id: &str) -> Result<Option<StoredSecret>, StoreError>;
    /// Records a certificate of the device with `device_id` (replacing one with the same
    /// fingerprint).
    async fn put_cert(&self, device_id: &str, cert: CertRecord) -> Result<(), StoreError>;
    /// The certificates of the device with `device_id`, oldest first.
    async fn certs(&self, device_id: &str) -> Result<Vec<CertRecord>, StoreError>;
    /// The certificate with `fingerprint` and the id of the device it was recorded for
    /// (which may no longer exist: revoked certificates outlive their device).
    async fn cert_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<(String, CertRecord)>, StoreError>;
    /// Moves the device's certificates in status `from` (any status when `None`) to `to`;
    /// how many moved.
    async fn set_cert_status(
        &self,
        device_id: &str,
        from: Option<CertStatus>,
        to: CertStatus,
    ) -> Result<u64, StoreError>;
}

/// Where a device certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertIssuer {
    /// The node CA, through `outpost device enroll --cert`.
    Node,
    /// A configured manufacturer CA (zero-touch).
    Manufacturer,
}

/// Whether a device certificate lets the device in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    Active,
    /// Zero-touch, waiting for an operator's approval.
    Pending,
    Revoked,
}

impl CertStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Pending => "pending",
            Self::Revoked => "revoked",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "active" => Self::Active,
            "pending" => Self::Pending,
            _ => Self::Revoked,
        }
    }
}

/// A device certificate as recorded (the certificate itself is not kept: its SHA-256 is
/// what recognises it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertRecord {
    pub fingerprint: String,
    pub issuer: CertIssuer,
    pub status: CertStatus,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    /// Milliseconds since the Unix epoch.
    pub created: i64,
}

/// A device credential as stored: a random salt and the SHA-256 of salt and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "metadata objects",
        sql: "CREATE TABLE objects (
              kind INTEGER NOT NULL,
              id TEXT NOT NULL,
              name TEXT NOT NULL,
              modified INTEGER NOT NULL,
              service TEXT NOT NULL DEFAULT '',
              profile TEXT NOT NULL DEFAULT '',
              parent TEXT NOT NULL DEFAULT '',
              manufacturer TEXT NOT NULL DEFAULT '',
              model TEXT NOT NULL DEFAULT '',
              labels TEXT NOT NULL DEFAULT '[]',
              body TEXT NOT NULL,
              PRIMARY KEY (kind, id),
              UNIQUE (kind, name)
          );
          CREATE INDEX objects_service ON objects (kind, service);
          CREATE INDEX objects_profile ON objects (kind, profile);
          CREATE INDEX objects_parent ON objects (kind, parent);
          CREATE INDEX objects_modified ON objects (kind, modified);",
    },
    Migration {
        version: 2,
        description: "device credentials",
        // A device's credential goes with the device.
        sql: "CREATE TABLE device_secrets (
                  device_id TEXT PRIMARY KEY,
                  salt BLOB NOT NULL,
                  hash BLOB NOT NULL
              );
              CREATE TRIGGER device_secrets_gone AFTER DELETE ON objects WHEN old.kind = 2
              BEGIN
                  DELETE FROM device_secrets WHERE device_id = old.id;
              END;",
    },
    Migration {
        version: 3,
        description: "device certificates",
        sql: "CREATE TABLE device_certs (
                  fingerprint TEXT PRIMARY KEY,
                  device_id TEXT NOT NULL,
                  issuer TEXT NOT NULL,
                  status TEXT NOT NULL,
                  not_after INTEGER NOT NULL,
                  created INTEGER NOT NULL
              );
              CREATE INDEX device_certs_device ON device_certs (device_id);
              -- Revoked certificates stay on record: a deleted device's revoked
              -- certificate must not enroll it again.
              CREATE TRIGGER device_certs_gone AFTER DELETE ON objects WHEN old.kind = 2
              BEGIN
                  DELETE FROM device_certs WHERE device_id = old.id AND status <> 'revoked';
              END;",
    },
];

/// A `device_certs` row selected as fingerprint, issuer, status, not_after, created.
fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertRecord> {
    Ok(CertRecord {
        fingerprint: r.get(0)?,
        issuer: if r.get::<_, String>(1)? == "node" {
            CertIssuer::Node
        } else {
            CertIssuer::Manufacturer
        },
        status: CertStatus::parse(&r.get::<_, String>(2)?),
        not_after: r.get(3)?,
        created: r.get(4)?,
    })
}

pub struct SqliteStore {
    db: Db,
}

impl SqliteStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The object of `kind` whose `column` (a unique one: `id` or `name`) is `value`.
    async fn one_by(
        &self,
        kind: Kind,
        column: &'static str,
        value: &str,
    ) -> Result<Option<Doc>, StoreError> {
        let value = value.to_string();
        self.db
            .read(move |c| {
                c.query_row(
                    &format!("SELECT {COLUMNS} FROM objects WHERE kind = ?1 AND {column} = ?2"),
                    params![kind.code(), value],
                    row_to_doc,
                )
                .optional()
                .map_err(StoreError::from)
            })
            .await
    }
}

const COLUMNS: &str =
    "id, name, modified, service, profile, parent, manufacturer, model, labels, body";

fn row_to_doc(r: &rusqlite::Row<'_>) -> rusqlite::Result<Doc> {
    let labels: String = r.get(8)?;
    Ok(Doc {
        id: r.get(0)?,
        name: r.get(1)?,
        modified: r.get(2)?,
        refs: Refs {
            service: r.get(3)?,
            profile: r.get(4)?,
            parent: r.get(5)?,
            manufacturer: r.get(6)?,
            model: r.get(7)?,
            labels: serde_json::from_str(&labels).unwrap_or_default(),
        },
        body: r.get(9)?,
    })
}

/// `WHERE` clause and parameters for a filter (parameter 1 is always the kind).
fn where_clause(kind: Kind, f: &Filter) -> (String, Vec<SqlValue>) {
    let mut sql = String::from("kind = ?1");
    let mut params = vec![SqlValue::Integer(kind.code())];
    let add = |col: &str, v: &Option<String>, sql: &mut String, params: &mut Vec<SqlValue>| {
        if let Some(v) = v {
            params.push(SqlValue::Text(v.clone()));
            sql.push_str(&format!(" AND {col} = ?{}", params.len()));
        }
    };
    add("service", &f.service, &mut sql, &mut params);
    add("profile", &f.profile, &mut sql, &mut params);
    add("manufacturer", &f.manufacturer, &mut sql, &mut params);
    add("model", &f.model, &mut sql, &mut params);
    if !f.labels.is_empty() {
        let mut slots = Vec::new();
        for l in &f.labels {
            params.push(SqlValue::Text(l.clone()));
            slots.push(format!("?{}", params.len()));
        }
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM json_each(objects.labels) WHERE json_each.value IN ({}))",
            slots.join(", ")
        ));
    }
    if let Some((root, levels)) = &f.descendants_of {
        params.push(SqlValue::Text(root.clone()));
        let root_slot = params.len();
        params.push(SqlValue::Integer(i64::from(*levels)));
        let levels_slot = params.len();
        sql.push_str(&format!(
            " AND name IN (
                WITH RECURSIVE tree(name, lvl) AS (
                    SELECT name, 1 FROM objects WHERE kind = ?1 AND parent = ?{root_slot}
                    UNION ALL
                    SELECT o.name, t.lvl + 1 FROM objects o JOIN tree t ON o.parent = t.name
                    WHERE o.kind = ?1 AND (?{levels_slot} = 0 OR t.lvl < ?{levels_slot})
                ) SELECT name FROM tree)"
        ));
    }
    (sql, params)
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation
    )
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert(&self, kind: Kind, doc: Doc) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                let labels = serde_json::to_string(&doc.refs.labels).unwrap_or_else(|_| "[]".into());
                let r = c.execute(
                    &format!("INSERT INTO objects (kind, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                    params![
                        kind.code(), doc.id, doc.name, doc.modified, doc.refs.service, doc.refs.profile,
                        doc.refs.parent, doc.refs.manufacturer, doc.refs.model, labels, doc.body
                    ],
                );
                match r {
                    Ok(_) => Ok(()),
                    Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate(kind, doc.name)),
                    Err(e) => Err(e.into()),
                }
            })
            .await
    }

    async fn replace(&self, kind: Kind, doc: Doc) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                let labels = serde_json::to_string(&doc.refs.labels).unwrap_or_else(|_| "[]".into());
                let r = c.execute(
                    "UPDATE objects SET name = ?3, modified = ?4, service = ?5, profile = ?6, parent = ?7,
                         manufacturer = ?8, model = ?9, labels = ?10, body = ?11
                     WHERE kind = ?1 AND id = ?2",
                    params![
                        kind.code(), doc.id, doc.name, doc.modified, doc.refs.service, doc.refs.profile,
                        doc.refs.parent, doc.refs.manufacturer, doc.refs.model, labels, doc.body
                    ],
                );
                match r {
                    Ok(0) => Err(StoreError::Missing(kind, doc.name)),
                    Ok(_) => Ok(()),
                    Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate(kind, doc.name)),
                    Err(e) => Err(e.into()),
                }
            })
            .await
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
        filter: Filter,
        offset: u64,
        limit: u64,
    ) -> Result<(u64, Vec<Doc>), StoreError> {
        self.db
            .read(move |c| {
                let (clause, mut params) = where_clause(kind, &filter);
                let total: i64 = c.query_row(
                    &format!("SELECT count(*) FROM objects WHERE {clause}"),
                    params_from_iter(params.iter()),
                    |r| r.get(0),
                )?;
                params.push(SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
                params.push(SqlValue::Integer(i64::try_from(offset).unwrap_or(i64::MAX)));
                let n = params.len();
                let mut st = c.prepare(&format!(
                    "SELECT {COLUMNS} FROM objects WHERE {clause}
                     ORDER BY modified DESC, name LIMIT ?{} OFFSET ?{n}",
                    n - 1
                ))?;
                let docs = st
                    .query_map(params_from_iter(params.iter()), row_to_doc)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((u64::try_from(total).unwrap_or(0), docs))
            })
            .await
    }

    async fn names(&self, kind: Kind, limit: u64) -> Result<Vec<String>, StoreError> {
        self.db
            .read(move |c| {
                let (clause, mut params) = where_clause(kind, &Filter::default());
                params.push(SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
                let n = params.len();
                let mut st = c.prepare(&format!(
                    "SELECT name FROM objects WHERE {clause} ORDER BY modified DESC, name LIMIT ?{n}"
                ))?;
                let names = st
                    .query_map(params_from_iter(params.iter()), |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                Ok(names)
            })
            .await
    }

    async fn count(&self, kind: Kind, filter: Filter) -> Result<u64, StoreError> {
        self.db
            .read(move |c| {
                let (clause, params) = where_clause(kind, &filter);
                let n: i64 = c.query_row(
                    &format!("SELECT count(*) FROM objects WHERE {clause}"),
                    params_from_iter(params.iter()),
                    |r| r.get(0),
                )?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
            .await
    }

    async fn devices_per_profile(
        &self,
        profiles: Vec<String>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.db
            .read(move |c| {
                let mut st =
                    c.prepare("SELECT count(*) FROM objects WHERE kind = ?1 AND profile = ?2")?;
                let mut out = Vec::with_capacity(profiles.len());
                for p in profiles {
                    let n: i64 = st.query_row(params![Kind::Device.code(), p], |r| r.get(0))?;
                    out.push((p, u64::try_from(n).unwrap_or(0)));
                }
                Ok(out)
            })
            .await
    }

    async fn services_using_profile(&self, profile: &str) -> Result<Vec<String>, StoreError> {
        let profile = profile.to_string();
        self.db
            .read(move |c| {
                let mut st = c.prepare(
                    "SELECT DISTINCT service FROM objects WHERE kind = ?1 AND profile = ?2
                     ORDER BY service",
                )?;
                let rows = st.query_map(params![Kind::Device.code(), profile], |r| r.get(0))?;
                Ok(rows.collect::<Result<Vec<String>, _>>()?)
            })
            .await
    }

    async fn delete(&self, kind: Kind, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.db
            .write(move |c| {
                let n = c.execute(
                    "DELETE FROM objects WHERE kind = ?1 AND name = ?2",
                    params![kind.code(), name],
                )?;
                Ok(n > 0)
            })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(StoreError::from)
    }

    async fn set_secret(
        &self,
        device_id: &str,
        secret: Option<StoredSecret>,
    ) -> Result<(), StoreError> {
        let id = device_id.to_string();
        self.db
            .write(move |c| {
                match secret {
                    Some(s) => c.execute(
                        "INSERT INTO device_secrets (device_id, salt, hash) VALUES (?1, ?2, ?3)
                         ON CONFLICT (device_id) DO UPDATE SET salt = ?2, hash = ?3",
                        params![id, s.salt, s.hash],
                    )?,
                    None => c.execute(
                        "DELETE FROM device_secrets WHERE device_id = ?1",
                        params![id],
                    )?,
                };
                Ok(())
            })
            .await
    }

    async fn secret(&self, device_id: &str) -> Result<Option<StoredSecret>, StoreError> {
        let id = device_id.to_string();
        self.db
            .read(move |c| {
                c.query_row(
                    "SELECT salt, hash FROM device_secrets WHERE device_id = ?1",
                    params![id],
                    |r| {
                        Ok(StoredSecret {
                            salt: r.get(0)?,
                            hash: r.get(1)?,
                        })
                    },
                )
                .optional()
                .map_err(StoreError::from)
            })
            .await
    }

    async fn put_cert(&self, device_id: &str, cert: CertRecord) -> Result<(), StoreError> {
        let id = device_id.to_string();
        self.db
            .write(move |c| {
                let issuer = match cert.issuer {
                    CertIssuer::Node => "node",
                    CertIssuer::Manufacturer => "manufacturer",
                };
                c.execute(
                    "INSERT INTO device_certs (fingerprint, device_id, issuer, status, not_after, created)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (fingerprint) DO UPDATE SET device_id = ?2, issuer = ?3, status = ?4,
                         not_after = ?5, created = ?6",
                    params![cert.fingerprint, id, issuer, cert.status.as_str(), cert.not_after, cert.created],
                )?;
                Ok(())
            })
            .await
    }

    async fn certs(&self, device_id: &str) -> Result<Vec<CertRecord>, StoreError> {
        let id = device_id.to_string();
        self.db
            .read(move |c| {
                let mut st = c.prepare_cached(
                    "SELECT fingerprint, issuer, status, not_after, created FROM device_certs
                     WHERE device_id = ?1 ORDER BY created, fingerprint",
                )?;
                let rows = st
                    .query_map(params![id], cert_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }

    async fn cert_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<(String, CertRecord)>, StoreError> {
        let fp = fingerprint.to_string();
        self.db
            .read(move |c| {
                c.query_row(
                    "SELECT fingerprint, issuer, status, not_after, created, device_id
                     FROM device_certs WHERE fingerprint = ?1",
                    params![fp],
                    |r| Ok((r.get::<_, String>(5)?, cert_row(r)?)),
                )
                .optional()
                .map_err(StoreError::from)
            })
            .await
    }

    async fn set_cert_status(
        &self,
        device_id: &str,
        from: Option<CertStatus>,
        to: CertStatus,
    ) -> Result<u64, StoreError> {
        let id = device_id.to_string();
        self.db
            .write(move |c| {
                let n = match from {
                    Some(f) => c.execute(
                        "UPDATE device_certs SET status = ?3 WHERE device_id = ?1 AND status = ?2",
                        params![id, f.as_str(), to.as_str()],
                    )?,
                    None => c.execute(
                        "UPDATE device_certs SET status = ?2 WHERE device_id = ?1",
                        params![id, to.as_str()],
                    )?,
                };
                Ok(n as u64)
            })
            .await
    }
}
