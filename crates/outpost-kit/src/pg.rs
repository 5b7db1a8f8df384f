//! PostgreSQL as a service's store, chosen per service by configuration
//! (`[<service>.storage] backend = "postgres"`), so several instances of the service can
//! share one database.
//!
//! What this module gives a service: [`StorageConfig`] (the section), [`connect`] (a pool of
//! connections, TLS to the server verified against the configured CA, each connection in
//! the service's own schema), [`migrate`] (versioned migrations, safe when several
//! instances start at once) and [`Sealer`] (AEAD, so what the service stores as sensitive
//! reaches PostgreSQL, its files and its backups only encrypted).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead;
use serde::{Deserialize, Serialize};

pub use deadpool_postgres::{Object, Pool};
pub use tokio_postgres;

/// Which store a service keeps its data in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Its own encrypted SQLite file in the data dir (one instance).
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by its instances.
    Postgres,
}

/// `[<service>.storage]`: where a service that can use either keeps its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: Backend,
    /// `postgres://USER@HOST:PORT/DATABASE` (a password in it is taken, but
    /// `password_file` keeps it out of the configuration).
    pub url: String,
    /// A file whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// TLS to the server, its certificate verified against `ca` (PEM). Off only when
    /// set so, for a server on this host's loopback or socket.
    pub tls: bool,
    pub ca: Option<PathBuf>,
    /// Connections per instance.
    pub pool_size: usize,
    /// The 256-bit key (hex) values are sealed with before they reach the database; every
    /// instance sharing the database needs the same one. Default: the node's
    /// `<secrets>/<service>-values.key`, made on first use.
    pub key_file: Option<PathBuf>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            url: String::new(),
            password_file: None,
            tls: true,
            ca: None,
            pool_size: 8,
            key_file: None,
        }
    }
}

impl StorageConfig {
    pub fn is_postgres(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// What is wrong with it, for the configuration check (`section` names it).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.is_postgres() {
            return out;
        }
        match self.url.parse::<tokio_postgres::Config>() {
            Err(e) => out.push(format!(
                "url '{}' is not a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE): {e}",
                redact(&self.url)
            )),
            Ok(c) if c.get_dbname().is_none() => {
                out.push("url names no database (postgres://USER@HOST:PORT/DATABASE)".into())
            }
            Ok(_) => {}
        }
        if self.tls && self.ca.is_none() {
            out.push(
                "tls needs ca (the PEM of the CA that signed the server's certificate); \
                 tls = false only for a server on this host"
                    .into(),
            );
        }
        if self.pool_size == 0 {
            out.push("pool_size must be at least 1".into());
        }
        out
    }

    /// The files it reads (for the service's sandbox).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        [&self.password_file, &self.ca, &self.key_file]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    /// Opens `service`'s sandbox to what the PostgreSQL backend reads: the configured
    /// files, and the values key in the secrets directory unless `key_file` names one
    /// (made now, so the sandboxed service finds it). Nothing for SQLite.
    pub fn sandbox(
        &self,
        files: &mut crate::sandbox::Files,
        service: &str,
    ) -> Result<(), outpost_storage::StorageError> {
        if !self.is_postgres() {
            return Ok(());
        }
        for f in self.files() {
            files.config_file(Some(f));
        }
        if self.key_file.is_none() {
            files.secret(&format!("{service}-values.key"))?;
        }
        Ok(())
    }
}

/// The connection string without its password, for messages: a URL's user info and
/// `password` parameter, or the `password=` of the key/value form.
pub fn redact(url: &str) -> String {
    if !url.contains("://") {
        return url
            .split_whitespace()
            .map(|kv| {
                if kv.to_ascii_lowercase().starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let base = redact_userinfo(base);
    if query.is_empty() && !url.contains('?') {
        return base;
    }
    let q: Vec<&str> = query
        .split('&')
        .map(|kv| {
            if kv.to_ascii_lowercase().starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect();
    format!("{base}?{}", q.join("&"))
}

fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Why PostgreSQL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL configuration: {0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The whole chain of causes is in the message (so a log of it says it once).
    #[error("PostgreSQL at {url}: {}", why_not_connected(error))]
    Connect {
        url: String,
        error: deadpool_postgres::PoolError,
    },
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Key(#[from] outpost_storage::StorageError),
}

/// Why a connection could not be had, as an operator would want it: the server's own
/// words, and for a certificate the configuration's part in it.
fn why_not_connected(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text = format!("{text}: {c}");
                cause = c.source();
            }
            if text.contains("certificate") {
                format!(
                    "{text} (the server's certificate is not one the configured `ca` vouches for)"
                )
            } else {
                text
            }
        }
        deadpool_postgres::PoolError::Timeout(_) => {
            "no connection within the pool's wait (the server does not answer)".into()
        }
        other => other.to_string(),
    }
}

/// A pool of connections to the configured database; each connection's `search_path` is
/// `schema`, so a service's tables are its own even in a database shared with others.
pub fn connect(cfg: &StorageConfig, schema: &str) -> Result<Pool, PgError> {
    let mut pg: tokio_postgres::Config = cfg
        .url
        .parse()
        .map_err(|e| PgError::Config(format!("url {}: {e}", redact(&cfg.url))))?;
    if let Some(f) = &cfg.password_file {
        let text = std::fs::read_to_string(f).map_err(|source| PgError::File {
            path: f.clone(),
            source,
        })?;
        pg.password(text.lines().next().unwrap_or_default().trim_end());
    }
    pg.options(format!("-c search_path={schema}"));
    pg.application_name(format!("outpost-{schema}"));
    pg.connect_timeout(std::time::Duration::from_secs(10));
    let manager = deadpool_postgres::ManagerConfig {
        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
    };
    let manager = if cfg.tls {
        let ca = cfg
            .ca
            .as_ref()
            .ok_or_else(|| PgError::Config("tls needs ca".into()))?;
        let pem = std::fs::read_to_string(ca).map_err(|source| PgError::File {
            path: ca.clone(),
            source,
        })?;
        pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        let mut tls = outpost_pki::client_config(&pem, None)
            .map_err(|e| PgError::Config(format!("ca {}: {e}", ca.display())))?;
        // PostgreSQL 17 and later refuse a TLS handshake offering other protocols.
        tls.alpn_protocols = vec![b"postgresql".to_vec()];
        deadpool_postgres::Manager::from_config(
            pg,
            tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            manager,
        )
    } else {
        pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
        deadpool_postgres::Manager::from_config(pg, tokio_postgres::NoTls, manager)
    };
    Pool::builder(manager)
        .max_size(cfg.pool_size.max(1))
        .wait_timeout(Some(std::time::Duration::from_secs(30)))
        .create_timeout(Some(std::time::Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| PgError::Config(e.to_string()))
}

/// A connection from `pool`, with the URL in the error.
pub async fn client(pool: &Pool, cfg: &StorageConfig) -> Result<Object, PgError> {
    pool.get().await.map_err(|error| PgError::Connect {
        url: redact(&cfg.url),
        error,
    })
}

/// A service's database: its pool, the sealer of its values, and this instance's name as
/// a lease holder. What every PostgreSQL store of a service starts from.
pub struct Database {
    pub pool: Pool,
    pub cfg: StorageConfig,
    pub sealer: Sealer,
    holder: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &redact(&self.cfg.url))
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Connects, brings `schema` to the last of `migrations`, and loads `service`'s values
    /// key (from `secrets` unless `key_file` names one).
    pub async fn open(
        cfg: &StorageConfig,
        secrets: &Path,
        service: &str,
        schema: &str,
        migrations: &[Migration],
    ) -> Result<Self, PgError> {
        let pool = connect(cfg, schema)?;
        let sealer = Sealer::for_service(cfg, secrets, service)?;
        let mut c = client(&pool, cfg).await?;
        migrate(&mut c, schema, migrations).await?;
        check_key(&c, &sealer).await?;
        drop(c);
        let mut holder = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut holder)
            .map_err(|_| PgError::Config("no randomness for the instance's name".into()))?;
        Ok(Self {
            pool,
            cfg: cfg.clone(),
            sealer,
            holder: holder.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// A connection from the pool.
    pub async fn client(&self) -> Result<Object, PgError> {
        client(&self.pool, &self.cfg).await
    }

    /// A connection from the pool, failing as a store fails ([`task`]).
    pub async fn storage_client(&self) -> Result<Object, outpost_storage::StorageError> {
        self.client().await.map_err(task)
    }

    /// `v` as JSON, sealed for `row` (what it is bound to: its table and key).
    pub fn seal_json<T: Serialize>(
        &self,
        row: &[u8],
        v: &T,
    ) -> Result<Vec<u8>, outpost_storage::StorageError> {
        let plain = serde_json::to_vec(v).map_err(task)?;
        Ok(self.sealer.seal(row, &plain))
    }

    /// A JSON value sealed for `row` ([`Database::seal_json`]), opened and read.
    pub fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        row: &[u8],
        sealed: &[u8],
    ) -> Result<T, outpost_storage::StorageError> {
        let plain = self.sealer.open(row, sealed).map_err(task)?;
        serde_json::from_slice(&plain).map_err(task)
    }

    /// Runs one statement on a connection from the pool: the rows it changed.
    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, outpost_storage::StorageError> {
        self.storage_client()
            .await?
            .execute(sql, params)
            .await
            .map_err(task)
    }

    /// The row `sql` (one parameter, `$1`) selects for `key`, if any. A key holding a NUL
    /// selects nothing: no text column can hold one.
    pub async fn row_by(
        &self,
        sql: &str,
        key: &str,
    ) -> Result<Option<tokio_postgres::Row>, outpost_storage::StorageError> {
        if key.contains('\0') {
            return Ok(None);
        }
        self.storage_client()
            .await?
            .query_opt(sql, &[&key])
            .await
            .map_err(task)
    }

    /// Runs one query on a connection from the pool: its rows.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, outpost_storage::StorageError> {
        self.storage_client()
            .await?
            .query(sql, params)
            .await
            .map_err(task)
    }

    /// [`lease`] for this instance.
    pub async fn lease(&self, name: &str, ttl: std::time::Duration) -> Result<bool, PgError> {
        let c = self.client().await?;
        Ok(lease(&c, name, &self.holder, ttl).await?)
    }

    /// Gives up the lease `name` if this instance holds it (a clean stop), so another
    /// instance takes it at once rather than when it runs out.
    pub async fn release(&self, name: &str) -> Result<(), PgError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                &[&name, &self.holder],
            )
            .await?;
        Ok(())
    }
}

/// A PostgreSQL failure as a store reports it: what services answer 503 and log for an
/// outage or an error of the database.
pub fn task(e: impl std::fmt::Display) -> outpost_storage::StorageError {
    outpost_storage::StorageError::Task(e.to_string())
}

/// What the key check seals.
const KEY_CHECK: &[u8] = b"outpost values key";

/// Refuses a values key other than the one the database was first written with (an
/// instance started with its own key would write rows the others cannot open): the first
/// instance leaves a value sealed with its key; every later start must open it.
async fn check_key(c: &Object, sealer: &Sealer) -> Result<(), PgError> {
    c.execute(
        "INSERT INTO key_check (id, sealed) VALUES (0, $1) ON CONFLICT DO NOTHING",
        &[&sealer.seal(b"key_check", KEY_CHECK)],
    )
    .await?;
    let sealed: Vec<u8> = c
        .query_one("SELECT sealed FROM key_check WHERE id = 0", &[])
        .await?
        .get(0);
    match sealer.open(b"key_check", &sealed) {
        Ok(v) if v == KEY_CHECK => Ok(()),
        _ => Err(PgError::Config(
            "this database was written with another values key: every instance needs the \
             same one (copy the first instance's <data>/secrets/<service>-values.key, or \
             name one file in key_file)"
                .into(),
        )),
    }
}

/// One step of a schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Brings `schema` to the last of `migrations`, in one transaction under an advisory lock
/// so instances starting together migrate once. Refuses a database whose
/// schema is newer than this build knows.
pub async fn migrate(
    client: &mut Object,
    schema: &str,
    migrations: &[Migration],
) -> Result<(), PgError> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.migrations (
                 version INTEGER PRIMARY KEY,
                 description TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );
             CREATE TABLE IF NOT EXISTS {schema}.leases (
                 name TEXT PRIMARY KEY,
                 holder TEXT NOT NULL,
                 expires TIMESTAMPTZ NOT NULL
             );
             CREATE TABLE IF NOT EXISTS {schema}.key_check (
                 id INTEGER PRIMARY KEY CHECK (id = 0),
                 sealed BYTEA NOT NULL
             );"
        ))
        .await
        .or_else(|e| {
            // Two instances creating the schema at the same moment: one wins.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&schema])
        .await?;
    let found: Option<i32> = tx
        .query_one(
            &format!("SELECT max(version) FROM {schema}.migrations"),
            &[],
        )
        .await?
        .get(0);
    let found = found.unwrap_or(0);
    let known = migrations.last().map_or(0, |m| m.version);
    if found > known {
        return Err(PgError::Config(format!(
            "schema {schema} has version {found}, newer than this build knows ({known})"
        )));
    }
    for m in migrations.iter().filter(|m| m.version > found) {
        tx.batch_execute(m.sql).await?;
        tx.execute(
            &format!("INSERT INTO {schema}.migrations (version, description) VALUES ($1, $2)"),
            &[&m.version, &m.description],
        )
        .await?;
        tracing::info!(
            schema,
            version = m.version,
            what = m.description,
            "migrated"
        );
    }
    tx.commit().await?;
    Ok(())
}

/// Takes or renews the lease `name` for `holder` for `ttl`: whether `holder` holds it now.
/// Work that must happen once among a service's instances (a retention pass) runs only
/// where the lease is held; when its holder dies the lease runs out and another instance
/// takes it. Leases live in the service's schema (`leases`, made by [`migrate`]) and run on
/// the database's clock, so the instances' clocks need not agree.
pub async fn lease(
    client: &Object,
    name: &str,
    holder: &str,
    ttl: std::time::Duration,
) -> Result<bool, tokio_postgres::Error> {
    let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let row = client
        .query_opt(
            "INSERT INTO leases (name, holder, expires)
             VALUES ($1, $2, now() + $3 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires
             WHERE leases.holder = EXCLUDED.holder OR leases.expires < now()
             RETURNING holder",
            &[&name, &holder, &(ms as f64)],
        )
        .await?;
    Ok(row.is_some())
}

/// Whether `e` aborted a transaction that succeeds when tried again: a deadlock between
/// concurrent transactions, or a serialization failure.
pub fn is_retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// Whether `e` is about the data of a statement (it can never succeed as it is), not the
/// database being unable to take it now: SQLSTATE classes 22 (data exception) and 23
/// (integrity constraint violation).
pub fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// Seals values with AES-256-GCM before they are stored, each bound to the row it belongs
/// to (the associated data), so a value copied onto another row does not open.
///
/// Every sealer draws a random 128-bit salt when it is made and seals under a subkey
/// derived from the values key and that salt (HKDF-SHA256), with a 64-bit counter as the
/// nonce: a nonce is never used twice under one subkey, and two sealers (two starts, two
/// instances) share a subkey only if they drew the same 128-bit salt. A sealed value is
/// `salt (16) || nonce (12) || ciphertext || tag (16)`; opening derives the subkey of its
/// salt once and keeps it.
pub struct Sealer {
    master: [u8; 32],
    salt: [u8; SALT_LEN],
    key: aead::LessSafeKey,
    counter: AtomicU64,
    /// Subkeys of the salts seen when opening.
    opened: std::sync::Mutex<std::collections::HashMap<[u8; SALT_LEN], aead::LessSafeKey>>,
}

const SALT_LEN: usize = 16;

/// Subkeys kept for opening; past this many salts (restarts), the cache starts afresh.
const MAX_SUBKEYS: usize = 4096;

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

/// A sealed value that does not open: the wrong key, or not the row it was sealed for.
#[derive(Debug, thiserror::Error)]
#[error("a stored value does not open with this key (another key, or moved between rows)")]
pub struct Unsealable;

fn subkey(master: &[u8; 32], salt: &[u8; SALT_LEN]) -> aead::LessSafeKey {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(master);
    // `expand` fails only when more than 255 hash lengths are asked for; a key is one.
    let okm = prk
        .expand(&[b"outpost pg values"], &aead::AES_256_GCM)
        .unwrap_or_else(|_| unreachable!("a 32-byte HKDF output is always available"));
    aead::LessSafeKey::new(aead::UnboundKey::from(okm))
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Result<Self, PgError> {
        let mut salt = [0u8; SALT_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| PgError::Config("no randomness for the sealing salt".into()))?;
        Ok(Self {
            master: *key,
            salt,
            key: subkey(key, &salt),
            counter: AtomicU64::new(0),
            opened: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The configured key file, or the node's `<secrets>/<service>-values.key`.
    pub fn for_service(
        cfg: &StorageConfig,
        secrets: &Path,
        service: &str,
    ) -> Result<Self, PgError> {
        let key = match &cfg.key_file {
            Some(f) => outpost_storage::read_secret(f)?,
            None => {
                let k = outpost_storage::load_or_create_key(secrets, &format!("{service}-values"))?;
                *k.bytes()
            }
        };
        Self::new(&key)
    }

    /// `salt || nonce || ciphertext || tag`.
    pub fn seal(&self, row: &[u8], plain: &[u8]) -> Vec<u8> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; aead::NONCE_LEN];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        let mut body = plain.to_vec();
        // Sealing fails only for inputs longer than the algorithm allows (about 64 GB for
        // AES-GCM): no value stored here comes close.
        if self
            .key
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(row),
                &mut body,
            )
            .is_err()
        {
            body.clear();
        }
        let mut out = Vec::with_capacity(SALT_LEN + aead::NONCE_LEN + body.len());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out
    }

    pub fn open(&self, row: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Unsealable> {
        if sealed.len() < SALT_LEN + aead::NONCE_LEN {
            return Err(Unsealable);
        }
        let (salt, rest) = sealed.split_at(SALT_LEN);
        let (nonce, body) = rest.split_at(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealable)?;
        let mut body = body.to_vec();
        let open = |key: &aead::LessSafeKey, body: &mut Vec<u8>| {
            key.open_in_place(nonce, aead::Aad::from(row), body)
                .map(|p| p.len())
                .map_err(|_| Unsealable)
        };
        let n = if salt == self.salt {
            open(&self.key, &mut body)?
        } else {
            let mut salt_key = [0u8; SALT_LEN];
            salt_key.copy_from_slice(salt);
            let mut opened = self
                .opened
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if opened.len() >= MAX_SUBKEYS && !opened.contains_key(&salt_key) {
                opened.clear();
            }
            let key = opened
                .entry(salt_key)
                .or_insert_with(|| subkey(&self.master, &salt_key));
            open(key, &mut body)?
        };
        body.truncate(n);
        Ok(body)
    }
}

/// A `WHERE` clause built up with numbered parameters, for listings whose filters are
/// optional.
#[derive(Default)]
pub struct Filter {
    parts: Vec<String>,
    args: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
}

impl Filter {
    /// `v` as the next parameter: its placeholder (`$n`) for a condition.
    pub fn arg(&mut self, v: impl tokio_postgres::types::ToSql + Sync + Send + 'static) -> String {
        self.args.push(Box::new(v));
        format!("${}", self.args.len())
    }

    /// Adds a condition (its placeholders from [`Filter::arg`]).
    pub fn and(&mut self, condition: String) {
        self.parts.push(condition);
    }

    /// `column = v`, when `v` is given.
    pub fn eq(
        &mut self,
        column: &str,
        v: Option<impl tokio_postgres::types::ToSql + Sync + Send + 'static>,
    ) {
        if let Some(v) = v {
            let p = self.arg(v);
            self.and(format!("{column} = {p}"));
        }
    }

    /// `column BETWEEN start AND end`, when a range is given.
    pub fn between(&mut self, column: &str, range: Option<(i64, i64)>) {
        if let Some((start, end)) = range {
            let (start, end) = (self.arg(start), self.arg(end));
            self.and(format!("{column} BETWEEN {start} AND {end}"));
        }
    }

    /// `WHERE` and the conditions joined by `AND`, or nothing.
    pub fn sql(&self) -> String {
        if self.parts.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.parts.join(" AND "))
        }
    }

    /// The parameters, in order, as a query takes them.
    pub fn params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        self.args
            .iter()
            .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect()
    }

    /// The total of `table`'s rows this filter selects, and the page of them in `order`
    /// (`columns` selected): what an EdgeX listing answers.
    pub async fn page(
        &self,
        client: &Object,
        table: &str,
        columns: &str,
        order: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(u64, Vec<tokio_postgres::Row>), tokio_postgres::Error> {
        let (clause, params) = (self.sql(), self.params());
        let total: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table} {clause}"), &params)
            .await?
            .get(0);
        let rows = client
            .query(
                &format!(
                    "SELECT {columns} FROM {table} {clause} ORDER BY {order} LIMIT {} OFFSET {}",
                    bound(limit),
                    bound(offset)
                ),
                &params,
            )
            .await?;
        Ok((u64::try_from(total).unwrap_or(0), rows))
    }
}

/// A count or position as PostgreSQL's `BIGINT`.
pub fn bound(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// PostgreSQL's text cannot hold a NUL (SQLite's can): `what` (`s`) with one is refused as
/// a client's mistake rather than failing in the database.
pub fn storable(what: &str, s: &str) -> Result<(), outpost_storage::StorageError> {
    if s.contains('\0') {
        return Err(outpost_storage::StorageError::Task(format!(
            "{what} {s:?}: a NUL character cannot be stored"
        )));
    }
    Ok(())
}

fn secret_aad(name: &str, key: &str) -> Vec<u8> {
    format!("secret\u{0}{name}\u{0}{key}").into_bytes()
}

impl Database {
    /// Replaces the secret `name` with `data` (key, value pairs), values sealed.
    pub async fn put_secret(
        &self,
        name: &str,
        data: &[(String, String)],
    ) -> Result<(), outpost_storage::StorageError> {
        storable("secret name", name)?;
        for (k, _) in data {
            storable("secret key", k)?;
        }
        let mut client = self.storage_client().await?;
        let tx = client.transaction().await.map_err(task)?;
        tx.execute("DELETE FROM secrets WHERE name = $1", &[&name])
            .await
            .map_err(task)?;
        for (k, v) in data {
            let sealed = self.sealer.seal(&secret_aad(name, k), v.as_bytes());
            tx.execute(
                "INSERT INTO secrets (name, key, value) VALUES ($1, $2, $3)",
                &[&name, k, &sealed],
            )
            .await
            .map_err(task)?;
        }
        tx.commit().await.map_err(task)
    }

    /// The secret `name`'s key, value pairs, in key order (none when there is no such
    /// secret).
    pub async fn secret(
        &self,
        name: &str,
    ) -> Result<Vec<(String, String)>, outpost_storage::StorageError> {
        let rows = self
            .storage_client()
            .await?
            .query(
                "SELECT key, value FROM secrets WHERE name = $1 ORDER BY key COLLATE \"C\"",
                &[&name],
            )
            .await
            .map_err(task)?;
        rows.iter()
            .map(|r| {
                let key: String = r.get(0);
                let plain = self
                    .sealer
                    .open(&secret_aad(name, &key), r.get(1))
                    .map_err(task)?;
                let value = String::from_utf8(plain).map_err(task)?;
                Ok((key, value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_row_and_key() {
        let s = Sealer::new(&[7; 32]).unwrap();
        let a = s.seal(b"row-1", b"21.5");
        let b = s.seal(b"row-1", b"21.5");
        assert_ne!(a, b, "a fresh nonce each time");
        assert!(!a.windows(4).any(|w| w == b"21.5"), "no plaintext");
        assert_eq!(s.open(b"row-1", &a).unwrap(), b"21.5");
        assert!(s.open(b"row-2", &a).is_err(), "moved to another row");
        let other = Sealer::new(&[8; 32]).unwrap();
        assert!(other.open(b"row-1", &a).is_err(), "another key");
        // Another sealer of the same key (another start, another instance) opens it.
        let again = Sealer::new(&[7; 32]).unwrap();
        assert_eq!(again.open(b"row-1", &a).unwrap(), b"21.5");
        assert_ne!(&again.seal(b"row-1", b"x")[..16], &a[..16], "its own salt");
        let mut flipped = a.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(s.open(b"row-1", &flipped).is_err(), "tampered");
        assert!(s.open(b"row-1", &a[..5]).is_err(), "truncated");
    }

    #[test]
    fn configuration_problems_are_named() {
        let ok = StorageConfig {
            backend: Backend::Postgres,
            url: "postgres://outpost@db.example:5432/outpost".into(),
            ca: Some("/etc/outpost/pg-ca.pem".into()),
            ..StorageConfig::default()
        };
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        let no_ca = StorageConfig {
            ca: None,
            ..ok.clone()
        };
        assert!(no_ca.problems()[0].contains("tls needs ca"));
        let no_db = StorageConfig {
            url: "postgres://outpost@db.example:5432".into(),
            ..ok.clone()
        };
        assert!(no_db.problems()[0].contains("names no database"));
        let sqlite = StorageConfig::default();
        assert!(sqlite.problems().is_empty());
        assert_eq!(
            redact("postgres://u:secret@h:5432/d"),
            "postgres://u:***@h:5432/d"
        );
        assert_eq!(
            redact("postgres://u@h/d?sslmode=require&password=secret"),
            "postgres://u@h/d?sslmode=require&password=***"
        );
        assert_eq!(
            redact("host=h user=u password=secret dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
    }
}
