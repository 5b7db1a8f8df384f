//! Encrypted embedded storage for Outpost services.
//!
//! Every service keeps its state in its own SQLite database encrypted with SQLCipher
//! (AES-256 page encryption with per-page HMAC): `<data>/db/<service>.db`, keyed by a random
//! 256-bit key in `<data>/secrets/<service>.key` (mode 0600) that the service creates on first
//! start. The raw key is handed to SQLCipher directly, so opening costs no key derivation. WAL
//! and rollback journals are encrypted too, and temporary tables stay in memory, so no
//! plaintext of a stored value is ever written under the data dir.
//!
//! This crate is the SQLite plumbing only: key files, opening and checking a database,
//! versioned migrations, and [`Db`], which runs blocking SQLite work off the async runtime.
//! Each service defines its own store trait over it, so another backend (PostgreSQL for
//! scale-out) is a second implementation of that trait, not a change to the service.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub mod documents;
pub mod protect;
pub mod secrets;
pub mod tpm;

pub use rusqlite;
use rusqlite::Connection;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error(
        "cannot open {path}: wrong key or not an Outpost database (the key in secrets/ must be the one it was created with)"
    )]
    WrongKey { path: PathBuf },
    #[error("database {path} has schema version {found}, newer than this build knows ({known})")]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("storage task failed: {0}")]
    Task(String),
}

impl StorageError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// A 256-bit database key. Never printed.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    pub fn generate() -> Result<Self, StorageError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| StorageError::Key {
            path: PathBuf::new(),
            why: format!("no randomness: {e}"),
        })?;
        Ok(Self(k))
    }

    /// A key from its 256 bits (as [`read_secret`] returns them).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Its 256 bits, for keying what is not SQLCipher (values sealed for PostgreSQL).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn pragma(&self) -> String {
        format!("x'{}'", hex::encode(self.0))
    }
}

/// Creates `dir` (and parents) with mode 0700 if missing. An existing directory keeps its
/// mode, but one that anyone may write to (`/tmp`, say) is refused: others could replace
/// the node's files there.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StorageError> {
    match fs::metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(StorageError::io(
                    format!("use {}", dir.display()),
                    std::io::Error::other("not a directory"),
                ));
            }
            if meta.permissions().mode() & 0o002 != 0 {
                return Err(StorageError::io(
                    format!("use {}", dir.display()),
                    std::io::Error::other(
                        "anyone may write to it; give the node a directory of its own",
                    ),
                ));
            }
            Ok(())
        }
        Err(_) => {
            fs::create_dir_all(dir)
                .map_err(|e| StorageError::io(format!("create {}", dir.display()), e))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| StorageError::io(format!("chmod {}", dir.display()), e))
        }
    }
}

/// Writes `contents` to a new file `path` with mode 0600, failing if it exists; the file and
/// its directory are synced so the secret survives power loss.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), StorageError> {
    let tmp = synced_temp(path, contents)?;
    // `link` fails if the target exists, so a concurrent creator cannot be overwritten.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    linked.map_err(|e| StorageError::io(format!("create {}", path.display()), e))?;
    sync_parent(path)
}

/// Writes `contents` to a new 0600 temporary file next to `path` (a name no other writer,
/// process or thread, uses) and syncs it; returns its path.
fn synced_temp(path: &Path, contents: &[u8]) -> Result<PathBuf, StorageError> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| StorageError::Key {
        path: path.to_path_buf(),
        why: format!("no randomness: {e}"),
    })?;
    let tmp = path.with_extension(format!("tmp-{}", hex::encode(nonce)));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| StorageError::io(format!("create {}", tmp.display()), e))?;
    if let Err(e) = f.write_all(contents).and_then(|()| f.sync_all()) {
        let _ = fs::remove_file(&tmp);
        return Err(StorageError::io(format!("write {}", tmp.display()), e));
    }
    Ok(tmp)
}

fn sync_parent(path: &Path) -> Result<(), StorageError> {
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io(format!("sync {}", dir.display()), e))?;
    }
    Ok(())
}

/// Writes `contents` to `path` with mode 0600, replacing the file atomically if it exists
/// (for secrets that are rotated: certificate keys, generated passwords); synced like
/// [`write_secret_file`].
pub fn replace_secret_file(path: &Path, contents: &[u8]) -> Result<(), StorageError> {
    let tmp = synced_temp(path, contents)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(StorageError::io(format!("write {}", path.display()), e));
    }
    sync_parent(path)
}

/// Loads the key `<secrets>/<name>.key`, creating it on first use; sealed by the TPM when
/// one protects the node ([`protect`]).
///
/// A key file that is readable by group or others is refused: the key is the only thing
/// protecting the data at rest.
pub fn load_or_create_key(secrets: &Path, name: &str) -> Result<Key, StorageError> {
    let path = secrets.join(format!("{name}.key"));
    load_or_create_secret(&path).map(Key)
}

/// Loads the random token `<secrets>/<name>.token` (hex), creating it on first use; used for
/// internal credentials such as the bus password. Tokens are plain files (mode 0600): local
/// tools read them, and a token only opens a running node's own APIs.
pub fn load_or_create_token(secrets: &Path, name: &str) -> Result<String, StorageError> {
    let path = secrets.join(format!("{name}.token"));
    load_or_create_hex(&path, false).map(hex::encode)
}

/// Reads a 256-bit secret key from `path`, creating it (mode 0600, race-free) if missing;
/// sealed by the TPM when one protects the node ([`protect`]).
pub fn load_or_create_secret(path: &Path) -> Result<[u8; 32], StorageError> {
    load_or_create_hex(path, true)
}

fn load_or_create_hex(path: &Path, protected: bool) -> Result<[u8; 32], StorageError> {
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir)?;
    }
    if !path.exists() {
        let key = Key::generate()?;
        let contents = hex::encode(key.0);
        let created = if protected {
            protect::create(path, contents.as_bytes())
        } else {
            write_secret_file(path, contents.as_bytes())
        };
        match created {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created secret");
                return Ok(key.0);
            }
            // Lost a creation race: read the winner's secret below.
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let text = if protected {
        protect::read(path)?
    } else {
        check_private_file(path)?;
        fs::read(path).map_err(|e| StorageError::io(format!("read {}", path.display()), e))?
    };
    parse_hex_secret(path, &text)
}

/// Reads an existing 256-bit secret key (sealed or not), refusing files others can read.
pub fn read_secret(path: &Path) -> Result<[u8; 32], StorageError> {
    parse_hex_secret(path, &protect::read(path)?)
}

/// The key `path` and the one replacing it (`outpost keys rotate`), created if there is
/// none yet (a rotation that stopped resumes with the same new key).
pub fn rotating_secret(path: &Path) -> Result<([u8; 32], [u8; 32]), StorageError> {
    let old = parse_hex_secret(path, &protect::read_rotating(path)?)?;
    let next = protect::pending(path);
    if !next.exists() {
        let key = Key::generate()?;
        match protect::create(&next, hex::encode(key.0).as_bytes()) {
            Ok(()) => {}
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let new = parse_hex_secret(&next, &protect::read_rotating(&next)?)?;
    Ok((old, new))
}

/// Puts the key replacing `path` in its place (atomically, synced): the end of its rotation.
pub fn finish_rotation(path: &Path) -> Result<(), StorageError> {
    let next = protect::pending(path);
    fs::rename(&next, path)
        .map_err(|e| StorageError::io(format!("rename {}", next.display()), e))?;
    sync_parent(path)
}

/// Reads an existing token file (hex, 256 bits), refusing files others can read.
pub fn read_token(path: &Path) -> Result<[u8; 32], StorageError> {
    check_private_file(path)?;
    let text =
        fs::read(path).map_err(|e| StorageError::io(format!("read {}", path.display()), e))?;
    parse_hex_secret(path, &text)
}

/// Refuses a secret file that group or others may read.
fn check_private_file(path: &Path) -> Result<(), StorageError> {
    let meta =
        fs::metadata(path).map_err(|e| StorageError::io(format!("stat {}", path.display()), e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(StorageError::Key {
            path: path.to_path_buf(),
            why: format!(
                "mode {:o} lets others read it; chmod 600 it",
                meta.permissions().mode() & 0o777
            ),
        });
    }
    Ok(())
}

fn parse_hex_secret(path: &Path, text: &[u8]) -> Result<[u8; 32], StorageError> {
    let bytes = std::str::from_utf8(text)
        .ok()
        .and_then(|t| hex::decode(t.trim()).ok())
        .ok_or_else(|| StorageError::Key {
            path: path.to_path_buf(),
            why: "not a hex secret".into(),
        })?;
    bytes.try_into().map_err(|_| StorageError::Key {
        path: path.to_path_buf(),
        why: "not a 256-bit secret".into(),
    })
}

/// Durability of commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fsync on every commit: a committed transaction survives power loss.
    #[default]
    Full,
    /// fsync at checkpoints only: survives a process crash; the last commits may be lost on
    /// power loss (never corrupted).
    Normal,
}

/// How a database is opened.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub sync: SyncMode,
    /// Page cache per connection, KiB.
    pub cache_kib: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            sync: SyncMode::Full,
            cache_kib: 8192,
        }
    }
}

/// Opens (creating if needed) the encrypted database at `path`.
pub fn open(path: &Path, key: &Key, opts: &OpenOptions) -> Result<Connection, StorageError> {
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir)?;
    }
    let conn = Connection::open(path)?;
    // The key must be the first statement on the connection.
    conn.execute_batch(&format!("PRAGMA key = \"{}\";", key.pragma()))?;
    conn.execute_batch("PRAGMA cipher_memory_security = OFF;")?;
    if conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .is_err()
    {
        return Err(StorageError::WrongKey {
            path: path.to_path_buf(),
        });
    }
    let sync = match opts.sync {
        SyncMode::Full => "FULL",
        SyncMode::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {sync};
         PRAGMA temp_store = MEMORY;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA cache_size = -{};",
        opts.cache_kib
    ))?;
    if let Ok(f) = fs::File::open(path) {
        let _ = f.set_permissions(fs::Permissions::from_mode(0o600));
    }
    Ok(conn)
}

/// Re-encrypts the database at `path` from key `old` to key `new`, atomically: the whole
/// database is exported into a new file under `new` (SQLCipher's `sqlcipher_export`),
/// synced, and renamed over the old one, so a crash at any point leaves it whole under one
/// of the two keys. Idempotent: a database already under `new` is left as it is. Returns
/// whether it re-encrypted.
pub fn rekey_db(path: &Path, old: &Key, new: &Key) -> Result<bool, StorageError> {
    let next = path.with_extension("db.rekey");
    for stale in ["db.rekey", "db.rekey-journal"] {
        let _ = fs::remove_file(path.with_extension(stale));
    }
    let opts = OpenOptions::default();
    let conn = match open(path, old, &opts) {
        Ok(c) => c,
        // Under the new key already (an earlier run stopped after its rename).
        Err(StorageError::WrongKey { .. }) if open(path, new, &opts).is_ok() => return Ok(false),
        Err(e) => return Err(e),
    };
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    // Every committed transaction into the database file, the WAL emptied: its files are
    // removed below. Busy (another connection) or incomplete is an error, not a loss.
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if busy != 0 || log != done {
        return Err(StorageError::Key {
            path: path.to_path_buf(),
            why: format!(
                "its WAL could not be emptied ({done} of {log} frames): is a service still using it?"
            ),
        });
    }
    let target = next.to_str().ok_or_else(|| StorageError::Key {
        path: next.clone(),
        why: "not a UTF-8 path".into(),
    })?;
    conn.execute(
        &format!("ATTACH DATABASE ?1 AS rekeyed KEY \"{}\"", new.pragma()),
        [target],
    )?;
    conn.execute_batch(&format!(
        "SELECT sqlcipher_export('rekeyed');
         PRAGMA rekeyed.user_version = {version};
         DETACH DATABASE rekeyed;"
    ))?;
    drop(conn);
    fs::File::open(&next)
        .and_then(|f| f.sync_all())
        .map_err(|e| StorageError::io(format!("sync {}", next.display()), e))?;
    // The old database's WAL is empty after the checkpoint; its files belong to the old
    // file and must not be read with the new one.
    for ext in ["db-wal", "db-shm"] {
        let _ = fs::remove_file(path.with_extension(ext));
    }
    fs::rename(&next, path)
        .map_err(|e| StorageError::io(format!("rename {}", next.display()), e))?;
    sync_parent(path)?;
    Ok(true)
}

/// One schema step. Versions start at 1 and increase by one.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Applies the migrations newer than the database's `user_version`, each in its own
/// transaction. A database newer than the code is refused rather than misread.
pub fn migrate(
    conn: &mut Connection,
    path: &Path,
    migrations: &[Migration],
) -> Result<u32, StorageError> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = migrations.last().map_or(0, |m| m.version);
    if current > known {
        return Err(StorageError::TooNew {
            path: path.to_path_buf(),
            found: current,
            known,
        });
    }
    for m in migrations.iter().filter(|m| m.version > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(m.sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {};", m.version))?;
        tx.commit()?;
        tracing::info!(path = %path.display(), version = m.version, description = m.description, "applied migration");
    }
    Ok(known.max(current))
}

/// Where a service's database and key live under the data dir.
#[derive(Debug, Clone)]
pub struct Location {
    pub db: PathBuf,
    pub secrets: PathBuf,
    pub name: String,
}

impl Location {
    pub fn new(data_dir: &Path, service: &str) -> Self {
        Self {
            db: data_dir.join("db").join(format!("{service}.db")),
            secrets: data_dir.join("secrets"),
            name: service.to_string(),
        }
    }
}

/// A database shared by async code: one writer connection and a few reader connections
/// (WAL lets readers proceed while a write commits), each used on the blocking pool.
#[derive(Clone)]
pub struct Db {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: Arc<std::sync::atomic::AtomicUsize>,
    path: PathBuf,
    /// The background checkpoint thread, if any; stopped and joined with the last clone.
    checkpointer: Arc<std::sync::OnceLock<Checkpointer>>,
}

/// A background thread that is stopped by dropping `stop` and joined before the owner is
/// gone. Fields drop in order: the stop signal first, then the join.
struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
    _thread: JoinOnDrop,
}

/// Joins a thread when dropped, so no thread of ours is still inside SQLite (or the crypto
/// library under it) when the process exits and tears those libraries down.
#[derive(Debug)]
pub struct JoinOnDrop(Option<std::thread::JoinHandle<()>>);

impl JoinOnDrop {
    pub fn new(handle: std::thread::JoinHandle<()>) -> Self {
        Self(Some(handle))
    }
}

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            // A thread dropping its own handle must not wait for itself.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens the service database at `loc`, creating key and file on first start, and
    /// migrates it.
    pub fn open(
        loc: &Location,
        opts: &OpenOptions,
        migrations: &[Migration],
        readers: usize,
    ) -> Result<Self, StorageError> {
        let key = load_or_create_key(&loc.secrets, &loc.name)?;
        let mut writer = open(&loc.db, &key, opts)?;
        migrate(&mut writer, &loc.db, migrations)?;
        let readers = (0..readers.max(1))
            .map(|_| open(&loc.db, &key, opts).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(readers),
            next_reader: Arc::default(),
            path: loc.db.clone(),
            checkpointer: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves WAL checkpoints off the writer: the writer stops checkpointing on commit, and a
    /// background thread with its own connection copies the WAL back into the database every
    /// `every` (passively: it never blocks the writer). For write-heavy databases, so commit
    /// latency does not include checkpoint work.
    pub fn checkpoint_in_background(
        &self,
        loc: &Location,
        opts: &OpenOptions,
        every: std::time::Duration,
    ) -> Result<(), StorageError> {
        let key = load_or_create_key(&loc.secrets, &loc.name)?;
        let conn = open(&loc.db, &key, opts)?;
        if self.checkpointer.get().is_some() {
            return Ok(());
        }
        self.write_blocking(|c| c.execute_batch("PRAGMA wal_autocheckpoint = 0;"))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("{}-checkpoint", loc.name))
            .spawn(move || {
                // Runs until the last clone of the database drops the sender.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "background checkpoint failed");
                    }
                }
            })
            .map_err(|e| StorageError::Task(e.to_string()))?;
        let _ = self.checkpointer.set(Checkpointer {
            _stop: stop,
            _thread: JoinOnDrop::new(thread),
        });
        Ok(())
    }

    /// Runs `f` with the writer connection on the blocking pool.
    pub async fn write<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let writer = Arc::clone(&self.writer);
        tokio::task::spawn_blocking(move || {
            let mut conn = writer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| E::from(StorageError::Task(e.to_string())))?
    }

    /// Runs `f` with a reader connection on the blocking pool.
    pub async fn read<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        let i = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % readers.len();
        tokio::task::spawn_blocking(move || {
            let conn = readers[i]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&conn)
        })
        .await
        .map_err(|e| E::from(StorageError::Task(e.to_string())))?
    }

    /// Runs `f` with the writer connection on the calling thread (for dedicated writer
    /// threads that must not hop through the blocking pool).
    pub fn write_blocking<R>(&self, f: impl FnOnce(&mut Connection) -> R) -> R {
        let mut conn = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut conn)
    }

    /// Checks that the database answers (for health endpoints).
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
                .map_err(StorageError::from)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[Migration] = &[
        Migration {
            version: 1,
            description: "things",
            sql: "CREATE TABLE things (id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
        },
        Migration {
            version: 2,
            description: "things.n",
            sql: "ALTER TABLE things ADD COLUMN n INTEGER NOT NULL DEFAULT 0;",
        },
    ];

    #[test]
    fn encrypted_round_trip_and_wrong_key_fails() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::new(dir.path(), "svc");
        let key = load_or_create_key(&loc.secrets, "svc").unwrap();
        {
            let mut c = open(&loc.db, &key, &OpenOptions::default()).unwrap();
            assert_eq!(migrate(&mut c, &loc.db, MIGRATIONS).unwrap(), 2);
            c.execute(
                "INSERT INTO things (v, n) VALUES ('plaintext-canary-123', 7)",
                [],
            )
            .unwrap();
        }
        // Same key again: the data is there.
        let key2 = load_or_create_key(&loc.secrets, "svc").unwrap();
        let c = open(&loc.db, &key2, &OpenOptions::default()).unwrap();
        let v: String = c
            .query_row("SELECT v FROM things", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, "plaintext-canary-123");
        drop(c);
        // No file under the dir holds the plaintext.
        for entry in walk(dir.path()) {
            let bytes = fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(20).any(|w| w == b"plaintext-canary-123"),
                "{} holds plaintext",
                entry.display()
            );
        }
        // Another key cannot open it.
        let other = Key::generate().unwrap();
        assert!(matches!(
            open(&loc.db, &other, &OpenOptions::default()),
            Err(StorageError::WrongKey { .. })
        ));
    }

    #[test]
    fn key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        let a = load_or_create_key(&secrets, "k").unwrap();
        let b = load_or_create_key(&secrets, "k").unwrap();
        assert_eq!(a.0, b.0);
        let mode = fs::metadata(secrets.join("k.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::set_permissions(secrets.join("k.key"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create_key(&secrets, "k").is_err());
        assert_eq!(format!("{a:?}"), "Key(<redacted>)");
    }

    #[test]
    fn concurrent_creators_agree_on_one_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let s = secrets.clone();
                std::thread::spawn(move || load_or_create_token(&s, "shared").unwrap())
            })
            .collect();
        let tokens: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(tokens.windows(2).all(|w| w[0] == w[1]), "{tokens:?}");
        let leftovers: Vec<_> = fs::read_dir(&secrets)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn world_writable_dirs_are_refused_and_existing_modes_kept() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(ensure_private_dir(&shared).is_err());
        let mine = dir.path().join("mine");
        fs::create_dir(&mine).unwrap();
        fs::set_permissions(&mine, fs::Permissions::from_mode(0o750)).unwrap();
        ensure_private_dir(&mine).unwrap();
        assert_eq!(
            fs::metadata(&mine).unwrap().permissions().mode() & 0o777,
            0o750
        );
        let new = dir.path().join("a/b");
        ensure_private_dir(&new).unwrap();
        assert_eq!(
            fs::metadata(&new).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_rekeyed_database_opens_with_the_new_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db").join("s.db");
        let (old, new) = (Key::generate().unwrap(), Key::generate().unwrap());
        let mut conn = open(&path, &old, &OpenOptions::default()).unwrap();
        let m = [Migration {
            version: 1,
            description: "t",
            sql: "CREATE TABLE t (v TEXT);",
        }];
        migrate(&mut conn, &path, &m).unwrap();
        conn.execute("INSERT INTO t VALUES ('kept')", []).unwrap();
        drop(conn);
        assert!(rekey_db(&path, &old, &new).unwrap());
        assert!(matches!(
            open(&path, &old, &OpenOptions::default()),
            Err(StorageError::WrongKey { .. })
        ));
        let conn = open(&path, &new, &OpenOptions::default()).unwrap();
        let v: String = conn.query_row("SELECT v FROM t", [], |r| r.get(0)).unwrap();
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!((v.as_str(), version), ("kept", 1));
        drop(conn);
        // Again: nothing to do.
        assert!(!rekey_db(&path, &old, &new).unwrap());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::new(dir.path(), "svc");
        let key = load_or_create_key(&loc.secrets, "svc").unwrap();
        let mut c = open(&loc.db, &key, &OpenOptions::default()).unwrap();
        migrate(&mut c, &loc.db, MIGRATIONS).unwrap();
        assert!(matches!(
            migrate(&mut c, &loc.db, &MIGRATIONS[..1]),
            Err(StorageError::TooNew {
                found: 2,
                known: 1,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn db_runs_work_off_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(
            &Location::new(dir.path(), "svc"),
            &OpenOptions::default(),
            MIGRATIONS,
            2,
        )
        .unwrap();
        db.write(|c| {
            c.execute("INSERT INTO things (v) VALUES ('a')", [])
                .map_err(StorageError::from)
        })
        .await
        .unwrap();
        let n: i64 = db
            .read(|c| {
                c.query_row("SELECT count(*) FROM things", [], |r| r.get(0))
                    .map_err(StorageError::from)
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
        db.ping().await.unwrap();
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
