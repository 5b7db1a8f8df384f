//! Users, API keys and refresh tokens, kept in the gateway's encrypted database and mirrored
//! in memory (the gateway is their only writer), so checking a request never waits on disk.
//!
//! - Passwords: Argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes), verified on the
//!   blocking pool. A login for an unknown user verifies against a dummy hash, so the answer
//!   takes as long as for a known one.
//! - API keys (`opk_<id>_<secret>`) and refresh tokens (`opr_<id>_<secret>`) carry 256 random
//!   bits; only their SHA-256 is stored. Refresh tokens are single-use: each refresh returns a
//!   new one, and presenting a used one again revokes every refresh token of that user (a
//!   stolen token was replayed).
//! - Removing a user or changing their password moves their `valid_after` forward: access
//!   tokens issued before it are refused at once, not only when they expire.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use outpost_storage::rusqlite::{OptionalExtension as _, params};
use outpost_storage::{Db, Migration, StorageError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "users, API keys, refresh tokens",
        sql: "CREATE TABLE users (
              name TEXT PRIMARY KEY,
              hash TEXT NOT NULL,
              role TEXT NOT NULL,
              created INTEGER NOT NULL,
              valid_after INTEGER NOT NULL
          );
          CREATE TABLE api_keys (
              id TEXT PRIMARY KEY,
              name TEXT NOT NULL,
              role TEXT NOT NULL,
              owner TEXT NOT NULL,
              hash TEXT NOT NULL,
              created INTEGER NOT NULL,
              revoked INTEGER
          );
          CREATE TABLE refresh_tokens (
              id TEXT PRIMARY KEY,
              user TEXT NOT NULL,
              hash TEXT NOT NULL,
              expires INTEGER NOT NULL,
              used INTEGER
          );
          CREATE INDEX refresh_tokens_user ON refresh_tokens (user);",
    },
    Migration {
        version: 2,
        description: "access tokens ended before they expire (logout)",
        sql: "CREATE TABLE revoked_tokens (
              jti TEXT PRIMARY KEY,
              expires INTEGER NOT NULL
          ) WITHOUT ROWID;",
    },
    Migration {
        version: 3,
        description: "addresses each account logged in from (login throttling)",
        sql: "CREATE TABLE login_addresses (
              user TEXT NOT NULL,
              address TEXT NOT NULL,
              last INTEGER NOT NULL,
              PRIMARY KEY (user, address)
          ) WITHOUT ROWID;",
    },
];

/// Addresses remembered per account: the most recent ones.
pub const KNOWN_ADDRESSES: usize = 16;

/// What a user or key may do; see `auth::allowed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid credentials")]
    BadCredentials,
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<outpost_storage::rusqlite::Error> for UserError {
    fn from(e: outpost_storage::rusqlite::Error) -> Self {
        Self::Storage(StorageError::from(e))
    }
}

#[derive(Debug, Clone)]
struct User {
    hash: String,
    role: Role,
    created: i64,
    valid_after: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub owner: String,
    pub created: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked: Option<i64>,
    #[serde(skip)]
    hash: [u8; 32],
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub username: String,
    pub role: Role,
    pub created: i64,
}

/// Who a request is made by.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `user:<name>` or `key:<id>`: the rate-limit and log identity.
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub role: Role,
}

#[derive(Default)]
struct State {
    users: HashMap<String, User>,
    keys: HashMap<String, ApiKeyInfo>,
    /// Access tokens ended before their expiry, by ID, with that expiry.
    revoked: HashMap<String, i64>,
    /// Addresses each account logged in from, oldest first (at most [`KNOWN_ADDRESSES`]).
    known: HashMap<String, Vec<IpAddr>>,
}

pub mod postgres;

/// Where the users are kept: the gateway's SQLite database, or PostgreSQL shared by
/// several gateway instances ([`postgres`]).
#[derive(Clone)]
enum Store {
    Sqlite(Db),
    Postgres(Arc<postgres::PgUsers>),
}

#[derive(Clone)]
pub struct Users {
    store: Store,
    state: Arc<Mutex<State>>,
    dummy_hash: Arc<str>,
    /// Changes this instance made to its memory: a reload that read the store while one
    /// was made does not replace memory with what it read (it reads again).
    local_changes: Arc<std::sync::atomic::AtomicU64>,
    /// When this instance's memory last matched the store (a shared store's reloads).
    synced: Arc<Mutex<std::time::Instant>>,
}

/// How long a gateway sharing its store may go without reloading before its health says
/// it may be answering with what other instances already ended.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn random_token(bytes: usize) -> String {
    use ring::rand::SecureRandom as _;
    let mut b = vec![0u8; bytes];
    // The system RNG only fails on exotic platforms without getrandom(2); a zeroed token
    // would be guessable, so such a failure must not go unnoticed.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        tracing::error!("no randomness from the operating system");
        std::process::abort();
    }
    B64.encode(b)
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn hash_password(password: &str) -> Result<String, UserError> {
    let mut bytes = [0u8; 16];
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| UserError::Invalid("no randomness from the operating system".into()))?;
    let salt =
        SaltString::encode_b64(&bytes).map_err(|e| UserError::Invalid(format!("salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Invalid(format!("cannot hash the password: {e}")))
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A user name: 1..=64 letters, digits, `.`, `-`, `_`, `@`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'@'))
}

fn check_password(password: &str) -> Result<(), UserError> {
    if password.chars().count() < 12 || password.len() > 1024 {
        return Err(UserError::Invalid(
            "a password needs 12 to 1024 characters".into(),
        ));
    }
    Ok(())
}

/// Splits `opk_<id>_<secret>` into its ID.
fn token_id<'a>(token: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = token.strip_prefix(prefix)?;
    let (id, secret) = rest.split_once('_')?;
    // IDs are hex (made by this module); anything else is no token of ours.
    (!id.is_empty()
        && id.len() <= 32
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && !secret.is_empty())
    .then_some(id)
}

impl Users {
    pub async fn open(db: Db) -> Result<Self, UserError> {
        let state = Self::load_sqlite(&db).await?;
        Self::with(Store::Sqlite(db), state).await
    }

    /// The users in PostgreSQL ([`postgres`]); [`Users::follow`] keeps this instance's
    /// memory in step with the others'.
    pub async fn open_pg(pg: postgres::PgUsers) -> Result<Self, UserError> {
        let state = pg.load(now_s()).await?;
        Self::with(Store::Postgres(Arc::new(pg)), state).await
    }

    async fn with(store: Store, state: State) -> Result<Self, UserError> {
        let dummy = tokio::task::spawn_blocking(|| hash_password("not a real password"))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))??;
        Ok(Self {
            store,
            state: Arc::new(Mutex::new(state)),
            dummy_hash: dummy.into(),
            local_changes: Arc::default(),
            synced: Arc::new(Mutex::new(std::time::Instant::now())),
        })
    }

    /// Follows the other instances' changes until `stop` (a store shared by several
    /// gateways; a store of its own has nothing to follow).
    pub async fn follow(&self, stop: outpost_kit::Shutdown) {
        let Store::Postgres(pg) = &self.store else {
            return;
        };
        let mut seen = None;
        loop {
            tokio::select! {
                () = stop.wait() => return,
                () = tokio::time::sleep(postgres::FOLLOW_EVERY) => {}
            }
            // The version first: a change made while loading moves it again, and is
            // loaded next time.
            let version = match pg.version().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the users' changes");
                    continue;
                }
            };
            if seen == Some(version) {
                *self.lock_synced() = std::time::Instant::now();
                continue;
            }
            let before = self.local_changes.load(std::sync::atomic::Ordering::SeqCst);
            match pg.load(now_s()).await {
                Ok(state) => {
                    let mut memory = self.state();
                    // A change of this instance's own landed meanwhile: what was read may
                    // lack it. Read again next time rather than undo it.
                    if self.local_changes.load(std::sync::atomic::Ordering::SeqCst) != before {
                        continue;
                    }
                    *memory = state;
                    drop(memory);
                    seen = Some(version);
                    *self.lock_synced() = std::time::Instant::now();
                }
                Err(e) => tracing::warn!(error = %e, "cannot load the users' changes"),
            }
        }
    }

    fn lock_synced(&self) -> std::sync::MutexGuard<'_, std::time::Instant> {
        self.synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the store answers and, when shared, this instance's memory follows it (the
    /// health check of a store in PostgreSQL).
    pub async fn reachable(&self) -> Result<(), UserError> {
        match &self.store {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(pg) => {
                pg.version().await?;
                let behind = self.lock_synced().elapsed();
                if behind > STALE_AFTER {
                    return Err(UserError::Storage(StorageError::Task(format!(
                        "the users were last reloaded {}s ago",
                        behind.as_secs()
                    ))));
                }
                Ok(())
            }
        }
    }

    async fn load_sqlite(db: &Db) -> Result<State, UserError> {
        db.read(|c| {
            let mut st = State::default();
            let mut q = c.prepare("SELECT name, hash, role, created, valid_after FROM users")?;
            let rows = q.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            for row in rows {
                let (name, hash, role, created, valid_after) = row?;
                let role = Role::parse(&role).unwrap_or(Role::Viewer);
                st.users.insert(
                    name,
                    User {
                        hash,
                        role,
                        created,
                        valid_after,
                    },
                );
            }
            let mut q =
                c.prepare("SELECT id, name, role, owner, hash, created, revoked FROM api_keys")?;
            let rows = q.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                ))
            })?;
            for row in rows {
                let (id, name, role, owner, hash, created, revoked) = row?;
                let mut h = [0u8; 32];
                if hex::decode_to_slice(&hash, &mut h).is_err() {
                    continue;
                }
                st.keys.insert(
                    id.clone(),
                    ApiKeyInfo {
                        id,
                        name,
                        role: Role::parse(&role).unwrap_or(Role::Viewer),
                        owner,
                        created,
                        revoked,
                        hash: h,
                    },
                );
            }
            let mut q = c.prepare("SELECT jti, expires FROM revoked_tokens WHERE expires > ?1")?;
            let rows = q.query_map(params![now_s()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (jti, expires) = row?;
                st.revoked.insert(jti, expires);
            }
            let mut q = c.prepare(
                "SELECT user, address FROM login_addresses ORDER BY user, last, address",
            )?;
            let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (user, address) = row?;
                if let Ok(ip) = address.parse::<IpAddr>() {
                    st.known.entry(user).or_default().push(ip);
                }
            }
            Ok::<_, UserError>(st)
        })
        .await
    }

    /// The memory, to change it: counted, so a reload running meanwhile does not undo it.
    fn state_mut(&self) -> std::sync::MutexGuard<'_, State> {
        let st = self.state();
        self.local_changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        st
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_empty(&self) -> bool {
        self.state().users.is_empty()
    }

    /// Creates the first admin with a random password, written to `path` (mode 0600), when
    /// there are no users at all. Never a default password.
    pub async fn ensure_admin(&self, path: &std::path::Path) -> Result<bool, UserError> {
        if !self.is_empty() {
            return Ok(false);
        }
        // Made before the gateway's sandbox closed, when there is one; made here otherwise.
        let made = std::fs::read_to_string(path)
            .ok()
            .map(|p| p.trim_end().to_string())
            .filter(|p| p.len() >= 16);
        let password = match made {
            Some(p) => p,
            None => {
                let p = random_token(18);
                outpost_storage::replace_secret_file(path, format!("{p}\n").as_bytes())?;
                p
            }
        };
        match self.add("admin", &password, Role::Admin).await {
            Ok(()) => {}
            // Another gateway on the same store made the first user meanwhile.
            Err(UserError::Exists(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        tracing::info!(file = %path.display(), "created user 'admin'; its password is in the file");
        Ok(true)
    }

    pub async fn add(&self, name: &str, password: &str, role: Role) -> Result<(), UserError> {
        if !valid_name(name) {
            return Err(UserError::Invalid(
                "a user name needs 1 to 64 letters, digits, '.', '-', '_' or '@'".into(),
            ));
        }
        check_password(password)?;
        if self.state().users.contains_key(name) {
            return Err(UserError::Exists(format!("user {name}")));
        }
        let pw = password.to_string();
        let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))??;
        let now = now_s();
        let (n, h) = (name.to_string(), hash.clone());
        let db = match &self.store {
            Store::Sqlite(db) => db,
            Store::Postgres(pg) => {
                pg.add_user(name, &hash, role, now).await?;
                self.state_mut().users.insert(
                    n,
                    User {
                        hash,
                        role,
                        created: now,
                        valid_after: 0,
                    },
                );
                return Ok(());
            }
        };
        db
            .write(move |c| {
                c.execute(
                    "INSERT INTO users (name, hash, role, created, valid_after) VALUES (?1, ?2, ?3, ?4, 0)",
                    params![n, h, role.as_str(), now],
                )
                .map_err(|e| match e.sqlite_error_code() {
                    Some(outpost_storage::rusqlite::ErrorCode::ConstraintViolation) => {
                        UserError::Exists(format!("user {n}"))
                    }
                    _ => UserError::from(e),
                })
            })
            .await?;
        self.state_mut().users.insert(
            name.to_string(),
            User {
                hash,
                role,
                created: now,
                valid_after: 0,
            },
        );
        Ok(())
    }

    pub fn list(&self) -> Vec<UserInfo> {
        let mut v: Vec<UserInfo> = self
            .state()
            .users
            .iter()
            .map(|(n, u)| UserInfo {
                username: n.clone(),
                role: u.role,
                created: u.created,
            })
            .collect();
        v.sort_by(|a, b| a.username.cmp(&b.username));
        v
    }

    /// Removes a user, their refresh tokens and their API keys. The last admin stays.
    pub async fn remove(&self, name: &str) -> Result<(), UserError> {
        {
            let st = self.state();
            let Some(u) = st.users.get(name) else {
                return Err(UserError::NotFound(format!("user {name}")));
            };
            let admins = st.users.values().filter(|u| u.role == Role::Admin).count();
            if u.role == Role::Admin && admins == 1 {
                return Err(UserError::Conflict(
                    "the last admin cannot be removed".into(),
                ));
            }
        }
        let (n, now) = (name.to_string(), now_s());
        match &self.store {
            Store::Postgres(pg) => pg.remove_user(name, now).await?,
            Store::Sqlite(db) => {
                db.write(move |c| {
                    let tx = c.transaction()?;
                    tx.execute("DELETE FROM users WHERE name = ?1", [&n])?;
                    tx.execute("DELETE FROM refresh_tokens WHERE user = ?1", [&n])?;
                    tx.execute("DELETE FROM login_addresses WHERE user = ?1", [&n])?;
                    tx.execute(
                        "UPDATE api_keys SET revoked = ?2 WHERE owner = ?1 AND revoked IS NULL",
                        params![n, now],
                    )?;
                    tx.commit()?;
                    Ok::<_, UserError>(())
                })
                .await?
            }
        }
        let mut st = self.state_mut();
        st.users.remove(name);
        st.known.remove(name);
        for k in st.keys.values_mut().filter(|k| k.owner == name) {
            k.revoked.get_or_insert(now);
        }
        Ok(())
    }

    /// Changes a password; tokens issued before are no longer accepted.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<(), UserError> {
        check_password(password)?;
        if !self.state().users.contains_key(name) {
            return Err(UserError::NotFound(format!("user {name}")));
        }
        let pw = password.to_string();
        let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))??;
        // Tokens carry whole seconds: a token issued in this very second is refused too.
        let valid_after = now_s() + 1;
        let (n, h) = (name.to_string(), hash.clone());
        match &self.store {
            Store::Postgres(pg) => pg.set_password(name, &hash, valid_after).await?,
            Store::Sqlite(db) => {
                db.write(move |c| {
                    let tx = c.transaction()?;
                    tx.execute(
                        "UPDATE users SET hash = ?2, valid_after = ?3 WHERE name = ?1",
                        params![n, h, valid_after],
                    )?;
                    tx.execute("DELETE FROM refresh_tokens WHERE user = ?1", [&n])?;
                    tx.commit()?;
                    Ok::<_, UserError>(())
                })
                .await?
            }
        }
        if let Some(u) = self.state_mut().users.get_mut(name) {
            u.hash = hash;
            u.valid_after = valid_after;
        }
        Ok(())
    }

    /// Checks a password; the role of the user on success.
    pub async fn login(&self, name: &str, password: &str) -> Result<Role, UserError> {
        let found = self
            .state()
            .users
            .get(name)
            .map(|u| (u.hash.clone(), u.role));
        let (hash, role) = match &found {
            Some((h, r)) => (h.clone(), Some(*r)),
            None => (self.dummy_hash.to_string(), None),
        };
        let pw = password.to_string();
        let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &pw))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?;
        match role {
            Some(r) if ok => Ok(r),
            _ => Err(UserError::BadCredentials),
        }
    }

    /// The first second whose tokens `name`'s are (0: any), if the user exists.
    pub fn valid_after(&self, name: &str) -> Option<i64> {
        self.state().users.get(name).map(|u| u.valid_after)
    }

    /// The current role of a token's user, if the token (issued at `iat`) is still good.
    pub fn token_role(&self, name: &str, iat: i64) -> Option<Role> {
        let st = self.state();
        let u = st.users.get(name)?;
        (iat >= u.valid_after).then_some(u.role)
    }

    pub async fn issue_refresh(&self, user: &str, ttl_s: u64) -> Result<String, UserError> {
        // Hex: the ID must not contain the `_` that ends it.
        let id = hex::encode(&sha256(&random_token(16))[..9]);
        let token = format!("opr_{id}_{}", random_token(32));
        let hash = hex::encode(sha256(&token));
        let (u, expires) = (user.to_string(), now_s() + ttl_s as i64);
        let db = match &self.store {
            Store::Sqlite(db) => db,
            Store::Postgres(pg) => {
                pg.insert_refresh(&id, user, &hash, expires, now_s())
                    .await?;
                return Ok(token);
            }
        };
        db.write(move |c| {
            c.execute(
                "INSERT INTO refresh_tokens (id, user, hash, expires) VALUES (?1, ?2, ?3, ?4)",
                params![id, u, hash, expires],
            )?;
            // Expired tokens of this user go as new ones are issued.
            c.execute(
                "DELETE FROM refresh_tokens WHERE user = ?1 AND expires < ?2",
                params![u, now_s()],
            )?;
            Ok::<_, UserError>(())
        })
        .await?;
        Ok(token)
    }

    /// Consumes a refresh token: the user it belongs to and their role. A token that was
    /// already used revokes every refresh token of its user.
    pub async fn use_refresh(&self, token: &str) -> Result<(String, Role), UserError> {
        let Some(id) = token_id(token, "opr_").map(str::to_string) else {
            return Err(UserError::BadCredentials);
        };
        let hash = hex::encode(sha256(token));
        let now = now_s();
        let db = match &self.store {
            Store::Sqlite(db) => db,
            Store::Postgres(pg) => {
                let user = pg.use_refresh(&id, &hash, now).await?;
                return self.role_of(user);
            }
        };
        let user = db
            .write(move |c| {
                let tx = c.transaction()?;
                let row: Option<(String, String, i64, Option<i64>)> = tx
                    .query_row(
                        "SELECT user, hash, expires, used FROM refresh_tokens WHERE id = ?1",
                        [&id],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .optional()?;
                let Some((user, stored, expires, used)) = row else {
                    return Err(UserError::BadCredentials);
                };
                if stored != hash {
                    return Err(UserError::BadCredentials);
                }
                if used.is_some() {
                    tx.execute("DELETE FROM refresh_tokens WHERE user = ?1", [&user])?;
                    tx.commit()?;
                    tracing::warn!(user = %user, "a used refresh token was presented again; all of the user's refresh tokens are revoked");
                    return Err(UserError::BadCredentials);
                }
                if expires <= now {
                    return Err(UserError::BadCredentials);
                }
                tx.execute(
                    "UPDATE refresh_tokens SET used = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
                tx.commit()?;
                Ok(user)
            })
            .await?;
        self.role_of(user)
    }

    /// `user` with their role now (a user removed meanwhile has none).
    fn role_of(&self, user: String) -> Result<(String, Role), UserError> {
        let role = self
            .state()
            .users
            .get(&user)
            .map(|u| u.role)
            .ok_or(UserError::BadCredentials)?;
        Ok((user, role))
    }

    /// Revokes a refresh token (logout). Unknown tokens are ignored.
    /// Ends the access token `jti` (valid until `expires`) now, for this gateway and after
    /// a restart.
    pub async fn revoke_access(&self, jti: &str, expires: i64) -> Result<(), UserError> {
        let now = now_s();
        {
            let mut st = self.state_mut();
            st.revoked.retain(|_, e| *e > now);
            st.revoked.insert(jti.to_string(), expires);
        }
        let db = match &self.store {
            Store::Sqlite(db) => db,
            Store::Postgres(pg) => return pg.revoke_access(jti, expires, now).await,
        };
        let jti = jti.to_string();
        db.write(move |c| {
            c.execute(
                "DELETE FROM revoked_tokens WHERE expires <= ?1",
                params![now],
            )?;
            c.execute(
                "INSERT OR REPLACE INTO revoked_tokens (jti, expires) VALUES (?1, ?2)",
                params![jti, expires],
            )?;
            Ok::<_, UserError>(())
        })
        .await
    }

    /// Whether `user` logged in from `ip` before (among its latest [`KNOWN_ADDRESSES`]),
    /// as remembered across restarts.
    pub fn known_address(&self, user: &str, ip: IpAddr) -> bool {
        self.state()
            .known
            .get(user)
            .is_some_and(|a| a.contains(&ip))
    }

    /// Remembers that `user` logged in from `ip` now; the oldest address beyond
    /// [`KNOWN_ADDRESSES`] is forgotten.
    pub async fn remember_address(&self, user: &str, ip: IpAddr) -> Result<(), UserError> {
        let forgotten = {
            let mut st = self.state_mut();
            let addrs = st.known.entry(user.to_string()).or_default();
            addrs.retain(|a| *a != ip);
            addrs.push(ip);
            let over = addrs.len().saturating_sub(KNOWN_ADDRESSES);
            addrs.drain(..over).collect::<Vec<_>>()
        };
        let db = match &self.store {
            Store::Sqlite(db) => db,
            Store::Postgres(pg) => {
                return pg.remember_address(user, ip, now_s(), &forgotten).await;
            }
        };
        let (user, now) = (user.to_string(), now_s());
        db.write(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                // Only while the user exists: a login racing the user's removal leaves
                // nothing for a later user of the same name.
                "INSERT OR REPLACE INTO login_addresses (user, address, last) \
                     SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM users WHERE name = ?1)",
                params![user, ip.to_string(), now],
            )?;
            for old in forgotten {
                tx.execute(
                    "DELETE FROM login_addresses WHERE user = ?1 AND address = ?2",
                    params![user, old.to_string()],
                )?;
            }
            tx.commit()?;
            Ok::<_, UserError>(())
        })
        .await
    }

    /// Whether the access token `jti` was ended before its expiry.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.state().revoked.contains_key(jti)
    }

    pub async fn revoke_refresh(&self, token: &str) -> Result<(), UserError> {
        let Some(id) = token_id(token, "opr_").map(str::to_string) else {
            return Ok(());
        };
        let hash = hex::encode(sha256(token));
        let db = match &self.store {
            Store::Sqlite(db) => db,
            Store::Postgres(pg) => return pg.revoke_refresh(&id, &hash).await,
        };
        db.write(move |c| {
            c.execute(
                "DELETE FROM refresh_tokens WHERE id = ?1 AND hash = ?2",
                params![id, hash],
            )?;
            Ok::<_, UserError>(())
        })
        .await
    }

    /// Creates an API key; the key itself is returned once and never stored.
    pub async fn create_key(
        &self,
        name: &str,
        role: Role,
        owner: &str,
    ) -> Result<(ApiKeyInfo, String), UserError> {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(UserError::Invalid(
                "a key name needs 1 to 128 printable characters".into(),
            ));
        }
        let id = hex::encode(&sha256(&random_token(16))[..6]);
        let key = format!("opk_{id}_{}", random_token(32));
        let hash = sha256(&key);
        let info = ApiKeyInfo {
            id: id.clone(),
            name: name.to_string(),
            role,
            owner: owner.to_string(),
            created: now_s(),
            revoked: None,
            hash,
        };
        let i = info.clone();
        match &self.store {
            Store::Postgres(pg) => pg.create_key(&info).await?,
            Store::Sqlite(db) => db
            .write(move |c| {
                c.execute(
                    "INSERT INTO api_keys (id, name, role, owner, hash, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![i.id, i.name, i.role.as_str(), i.owner, hex::encode(i.hash), i.created],
                )?;
                Ok::<_, UserError>(())
            })
            .await?,
        }
        self.state_mut().keys.insert(id, info.clone());
        Ok((info, key))
    }

    pub fn list_keys(&self) -> Vec<ApiKeyInfo> {
        let mut v: Vec<ApiKeyInfo> = self.state().keys.values().cloned().collect();
        v.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        v
    }

    pub async fn revoke_key(&self, id: &str) -> Result<(), UserError> {
        if !self.state().keys.contains_key(id) {
            return Err(UserError::NotFound(format!("API key {id}")));
        }
        let (i, now) = (id.to_string(), now_s());
        match &self.store {
            Store::Postgres(pg) => pg.revoke_key(id, now).await?,
            Store::Sqlite(db) => {
                db.write(move |c| {
                    c.execute(
                        "UPDATE api_keys SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
                        params![i, now],
                    )?;
                    Ok::<_, UserError>(())
                })
                .await?
            }
        }
        if let Some(k) = self.state_mut().keys.get_mut(id) {
            k.revoked.get_or_insert(now);
        }
        Ok(())
    }

    /// The identity of a valid, unrevoked API key.
    pub fn check_key(&self, key: &str) -> Option<Identity> {
        let id = token_id(key, "opk_")?;
        let hash = sha256(key);
        let st = self.state();
        let k = st.keys.get(id)?;
        // Compared in constant time (the digests are of secrets).
        let same: bool = subtle::ConstantTimeEq::ct_eq(&k.hash[..], &hash[..]).into();
        (same && k.revoked.is_none()).then(|| Identity {
            id: format!("key:{}", k.id).into(),
            name: k.name.as_str().into(),
            role: k.role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use outpost_testkit::postgres::Backend;

    outpost_testkit::on_both_backends!(fixture = store; users_keys_and_refresh_tokens);

    /// A store of users to open (again): SQLite in `dir`, or a PostgreSQL database with
    /// its values key in `dir`.
    struct Store {
        dir: tempfile::TempDir,
        pg: Option<outpost_kit::pg::StorageConfig>,
    }

    async fn store(b: Backend) -> Store {
        Store {
            dir: tempfile::tempdir().unwrap(),
            pg: (b == Backend::Postgres).then(|| b.storage()),
        }
    }

    impl Store {
        async fn users(&self) -> Users {
            if let Some(cfg) = &self.pg {
                let pg = postgres::PgUsers::open(cfg, self.dir.path()).await.unwrap();
                return Users::open_pg(pg).await.unwrap();
            }
            let loc = outpost_storage::Location::new(self.dir.path(), "gateway");
            let db = Db::open(
                &loc,
                &outpost_storage::OpenOptions::default(),
                MIGRATIONS,
                1,
            )
            .unwrap();
            Users::open(db).await.unwrap()
        }
    }

    async fn users_keys_and_refresh_tokens(store: Store) {
        let u = store.users().await;
        let cred = store.dir.path().join("admin-password");
        assert!(u.ensure_admin(&cred).await.unwrap());
        assert!(!u.ensure_admin(&cred).await.unwrap());
        let pw = std::fs::read_to_string(&cred).unwrap();
        assert_eq!(u.login("admin", pw.trim()).await.unwrap(), Role::Admin);
        assert!(matches!(
            u.login("admin", "wrong password!").await,
            Err(UserError::BadCredentials)
        ));
        assert!(matches!(
            u.login("nobody", "whatever it is").await,
            Err(UserError::BadCredentials)
        ));
        assert!(matches!(
            u.add("v", "short", Role::Viewer).await,
            Err(UserError::Invalid(_))
        ));
        u.add("vera", "a long enough password", Role::Viewer)
            .await
            .unwrap();
        assert!(matches!(
            u.add("vera", "a long enough password", Role::Viewer).await,
            Err(UserError::Exists(_))
        ));
        assert!(matches!(
            u.remove("admin").await,
            Err(UserError::Conflict(_))
        ));

        // Refresh tokens are single use; a replay revokes the user's others.
        let r1 = u.issue_refresh("vera", 60).await.unwrap();
        let r2 = u.issue_refresh("vera", 60).await.unwrap();
        assert_eq!(u.use_refresh(&r1).await.unwrap().0, "vera");
        assert!(u.use_refresh(&r1).await.is_err());
        assert!(u.use_refresh(&r2).await.is_err(), "revoked by the replay");
        assert!(u.use_refresh("opr_x_y").await.is_err());

        // Keys: checked by hash, revocable, survive a reopen.
        let (info, key) = u
            .create_key("script", Role::Operator, "admin")
            .await
            .unwrap();
        assert_eq!(u.check_key(&key).unwrap().role, Role::Operator);
        assert!(u.check_key(&format!("{key}x")).is_none());
        drop(u);
        let u = store.users().await;
        assert_eq!(&*u.check_key(&key).unwrap().id, format!("key:{}", info.id));
        u.revoke_key(&info.id).await.unwrap();
        assert!(u.check_key(&key).is_none());

        // A password change invalidates earlier tokens.
        assert_eq!(u.token_role("vera", now_s()), Some(Role::Viewer));
        u.set_password("vera", "another long password")
            .await
            .unwrap();
        assert_eq!(u.token_role("vera", now_s()), None);
        u.remove("vera").await.unwrap();
        assert_eq!(u.token_role("vera", now_s() + 10), None);
    }

    /// Two gateways on one PostgreSQL store: what one changes, the other answers within
    /// its follow interval (a user added or removed, an API key made or revoked, an access
    /// token ended).
    #[tokio::test]
    async fn instances_sharing_postgresql_follow_each_others_changes() {
        let store = store(Backend::Postgres).await;
        let a = store.users().await;
        let b = store.users().await;
        let stop = outpost_kit::Shutdown::new();
        let following = b.clone();
        let follow = tokio::spawn({
            let stop = stop.clone();
            async move { following.follow(stop).await }
        });
        let soon = async |what: &str, check: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !check() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        a.add("zoe", "a long enough password", Role::Operator)
            .await
            .unwrap();
        soon("b knows zoe", &|| {
            b.token_role("zoe", now_s()) == Some(Role::Operator)
        })
        .await;
        assert_eq!(
            b.login("zoe", "a long enough password").await.unwrap(),
            Role::Operator
        );
        let (info, key) = a.create_key("ci", Role::Viewer, "zoe").await.unwrap();
        soon("b takes the key", &|| b.check_key(&key).is_some()).await;
        a.revoke_key(&info.id).await.unwrap();
        soon("b refuses the revoked key", &|| b.check_key(&key).is_none()).await;
        a.revoke_access("jti-1", now_s() + 600).await.unwrap();
        soon("b refuses the ended token", &|| b.is_revoked("jti-1")).await;
        a.remember_address("zoe", "192.0.2.7".parse().unwrap())
            .await
            .unwrap();
        soon("b knows zoe's address", &|| {
            b.known_address("zoe", "192.0.2.7".parse().unwrap())
        })
        .await;
        a.remove("zoe").await.unwrap();
        soon("b forgets zoe", &|| b.token_role("zoe", now_s()).is_none()).await;
        // A refresh token issued by one is taken once, by either.
        a.add("yan", "a long enough password", Role::Viewer)
            .await
            .unwrap();
        soon("b knows yan", &|| b.token_role("yan", now_s()).is_some()).await;
        let r = a.issue_refresh("yan", 60).await.unwrap();
        assert_eq!(b.use_refresh(&r).await.unwrap().0, "yan");
        assert!(
            a.use_refresh(&r).await.is_err(),
            "used on the other instance"
        );
        stop.trigger();
        follow.await.unwrap();
    }

    /// On PostgreSQL, password hashes and API key digests reach the rows sealed: an
    /// offline guesser needs the gateway's values key as well as a copy of the database.
    #[tokio::test]
    async fn password_hashes_and_key_digests_reach_postgresql_sealed() {
        let server = outpost_testkit::postgres::server();
        let database = server.database();
        let dir = tempfile::tempdir().unwrap();
        let pg = postgres::PgUsers::open(&database.storage(), dir.path())
            .await
            .unwrap();
        let u = Users::open_pg(pg).await.unwrap();
        u.add("sealed-user", "a long enough password", Role::Admin)
            .await
            .unwrap();
        let (_, key) = u
            .create_key("k", Role::Viewer, "sealed-user")
            .await
            .unwrap();
        let hex_of = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let rows = server.psql_in(
            &database.name,
            "SELECT name, encode(hash, 'hex') FROM gateway.users",
        );
        assert!(rows.contains("sealed-user"), "{rows}");
        assert!(
            !rows.contains(&hex_of("$argon2")),
            "a password hash in clear: {rows}"
        );
        let rows = server.psql_in(
            &database.name,
            "SELECT encode(hash, 'hex') FROM gateway.api_keys",
        );
        let digest = hex::encode(sha256(&key));
        assert!(
            !rows.contains(&hex_of(&digest)) && !rows.contains(&digest),
            "a key digest in clear: {rows}"
        );
    }
}
