//! The gateway's users, API keys and tokens in PostgreSQL (`[gateway.storage] backend =
//! "postgres"`), for several gateway instances behind one address.
//!
//! The tables of [`super::MIGRATIONS`], in the schema `gateway`. Password hashes and API
//! key digests are sealed with the gateway's values key before they are sent (an offline
//! guesser needs the key as well as the database); names, roles and times stay in columns.
//! Refresh tokens are kept by the SHA-256 of 32 random bytes, which no guess reaches.
//!
//! Every instance answers from its memory (users, keys, ended access tokens, known login
//! addresses) and follows the others' changes by a version row that triggers move with
//! every changed row, checked every [`FOLLOW_EVERY`]: a user removed or an access token
//! ended on one instance is refused by the others within that time. Every write takes the
//! version row first, so writes of several instances queue in one order and never
//! deadlock. A row that does not open (another key, or moved) is left out with a warning.

use std::net::IpAddr;
use std::time::Duration;

use outpost_kit::pg::{self, Migration, StorageConfig, tokio_postgres};

use super::{ApiKeyInfo, Role, State, User, UserError};

/// The schema the gateway's tables live in.
pub const SCHEMA: &str = "gateway";

/// How often an instance looks for the others' changes.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "users, API keys, refresh tokens, ended access tokens, login addresses",
    sql: "CREATE TABLE users (
              name TEXT PRIMARY KEY,
              hash BYTEA NOT NULL,
              role TEXT NOT NULL,
              created BIGINT NOT NULL,
              valid_after BIGINT NOT NULL
          );
          CREATE TABLE api_keys (
              id TEXT PRIMARY KEY,
              name TEXT NOT NULL,
              role TEXT NOT NULL,
              owner TEXT NOT NULL,
              hash BYTEA NOT NULL,
              created BIGINT NOT NULL,
              revoked BIGINT
          );
          CREATE TABLE refresh_tokens (
              id TEXT PRIMARY KEY,
              username TEXT NOT NULL,
              hash TEXT NOT NULL,
              expires BIGINT NOT NULL,
              used BIGINT
          );
          CREATE INDEX refresh_tokens_user ON refresh_tokens (username);
          CREATE TABLE revoked_tokens (jti TEXT PRIMARY KEY, expires BIGINT NOT NULL);
          CREATE TABLE login_addresses (
              username TEXT NOT NULL,
              address TEXT NOT NULL,
              last BIGINT NOT NULL,
              PRIMARY KEY (username, address)
          );
          CREATE TABLE version (
              only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
              n BIGINT NOT NULL
          );
          INSERT INTO version (n) VALUES (0);
          CREATE FUNCTION bump_version() RETURNS trigger LANGUAGE plpgsql
              SET search_path = gateway, pg_temp AS $$
              BEGIN
                  UPDATE version SET n = n + 1;
                  RETURN NULL;
              END $$;
          -- Per row: a statement that changes nothing moves nothing. A known address seen
          -- again (its time updated) is no change to what the gateways answer.
          CREATE TRIGGER users_changed AFTER INSERT OR UPDATE OR DELETE ON users
              FOR EACH ROW EXECUTE FUNCTION bump_version();
          CREATE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE ON api_keys
              FOR EACH ROW EXECUTE FUNCTION bump_version();
          CREATE TRIGGER revoked_changed AFTER INSERT OR DELETE ON revoked_tokens
              FOR EACH ROW EXECUTE FUNCTION bump_version();
          CREATE TRIGGER addresses_changed AFTER INSERT OR DELETE ON login_addresses
              FOR EACH ROW EXECUTE FUNCTION bump_version();",
}];

/// One statement of a write and its parameters.
type Statement<'a> = (&'a str, &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)]);

/// The gateway's users in PostgreSQL.
pub struct PgUsers {
    db: pg::Database,
}

fn user_aad(name: &str) -> Vec<u8> {
    format!("user\u{0}{name}").into_bytes()
}

fn key_aad(id: &str) -> Vec<u8> {
    format!("key\u{0}{id}").into_bytes()
}

impl PgUsers {
    /// Connects and migrates the schema.
    pub async fn open(cfg: &StorageConfig, secrets: &std::path::Path) -> Result<Self, pg::PgError> {
        Ok(Self {
            db: pg::Database::open(cfg, secrets, crate::SERVICE, SCHEMA, MIGRATIONS).await?,
        })
    }

    /// The version the others' changes move.
    pub async fn version(&self) -> Result<i64, UserError> {
        let rows = self.db.query("SELECT n FROM version", &[]).await?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// Everything the gateway answers from memory, as stored now.
    pub(super) async fn load(&self, now: i64) -> Result<State, UserError> {
        let mut st = State::default();
        for r in self
            .db
            .query(
                "SELECT name, hash, role, created, valid_after FROM users",
                &[],
            )
            .await?
        {
            let name: String = r.get(0);
            let Some(hash) = self.open_text(&user_aad(&name), r.get(1)) else {
                tracing::warn!(user = %name, "a user's row does not open with this key: left out");
                continue;
            };
            let role: String = r.get(2);
            st.users.insert(
                name,
                User {
                    hash,
                    role: Role::parse(&role).unwrap_or(Role::Viewer),
                    created: r.get(3),
                    valid_after: r.get(4),
                },
            );
        }
        for r in self
            .db
            .query(
                "SELECT id, name, role, owner, hash, created, revoked FROM api_keys",
                &[],
            )
            .await?
        {
            let id: String = r.get(0);
            let Some(digest) = self.open_text(&key_aad(&id), r.get(4)) else {
                tracing::warn!(key = %id, "an API key's row does not open with this key: left out");
                continue;
            };
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(&digest, &mut hash).is_err() {
                continue;
            }
            let role: String = r.get(2);
            st.keys.insert(
                id.clone(),
                ApiKeyInfo {
                    id,
                    name: r.get(1),
                    role: Role::parse(&role).unwrap_or(Role::Viewer),
                    owner: r.get(3),
                    created: r.get(5),
                    revoked: r.get(6),
                    hash,
                },
            );
        }
        for r in self
            .db
            .query(
                "SELECT jti, expires FROM revoked_tokens WHERE expires > $1",
                &[&now],
            )
            .await?
        {
            st.revoked.insert(r.get(0), r.get(1));
        }
        for r in self
            .db
            .query(
                "SELECT username, address FROM login_addresses
                 ORDER BY username, last, address",
                &[],
            )
            .await?
        {
            let address: String = r.get(1);
            if let Ok(ip) = address.parse::<IpAddr>() {
                st.known.entry(r.get(0)).or_default().push(ip);
            }
        }
        Ok(st)
    }

    fn open_text(&self, aad: &[u8], sealed: &[u8]) -> Option<String> {
        String::from_utf8(self.db.sealer.open(aad, sealed).ok()?).ok()
    }

    /// Runs `statements` in one transaction that takes the version row first: every write
    /// of every instance does, so writes queue in one order. The rows each changed.
    async fn transact(&self, statements: &[Statement<'_>]) -> Result<Vec<u64>, UserError> {
        let mut client = self.db.storage_client().await?;
        let tx = client.transaction().await.map_err(pg::task)?;
        tx.execute("SELECT n FROM version FOR UPDATE", &[])
            .await
            .map_err(pg::task)?;
        let mut changed = Vec::with_capacity(statements.len());
        for (sql, params) in statements {
            changed.push(tx.execute(*sql, params).await.map_err(pg::task)?);
        }
        tx.commit().await.map_err(pg::task)?;
        Ok(changed)
    }

    pub async fn add_user(
        &self,
        name: &str,
        hash: &str,
        role: Role,
        now: i64,
    ) -> Result<(), UserError> {
        let sealed = self.db.sealer.seal(&user_aad(name), hash.as_bytes());
        let n = self
            .transact(&[(
                "INSERT INTO users (name, hash, role, created, valid_after)
                 VALUES ($1, $2, $3, $4, 0) ON CONFLICT DO NOTHING",
                &[&name, &sealed, &role.as_str(), &now],
            )])
            .await?;
        if n.first() == Some(&0) {
            return Err(UserError::Exists(format!("user {name}")));
        }
        Ok(())
    }

    /// Removes a user, their refresh tokens and login addresses, and revokes their keys.
    pub async fn remove_user(&self, name: &str, now: i64) -> Result<(), UserError> {
        self.transact(&[
            ("DELETE FROM users WHERE name = $1", &[&name]),
            ("DELETE FROM refresh_tokens WHERE username = $1", &[&name]),
            ("DELETE FROM login_addresses WHERE username = $1", &[&name]),
            (
                "UPDATE api_keys SET revoked = $2 WHERE owner = $1 AND revoked IS NULL",
                &[&name, &now],
            ),
        ])
        .await?;
        Ok(())
    }

    /// A new password hash; refresh tokens of the user end.
    pub async fn set_password(
        &self,
        name: &str,
        hash: &str,
        valid_after: i64,
    ) -> Result<(), UserError> {
        let sealed = self.db.sealer.seal(&user_aad(name), hash.as_bytes());
        self.transact(&[
            (
                "UPDATE users SET hash = $2, valid_after = $3 WHERE name = $1",
                &[&name, &sealed, &valid_after],
            ),
            ("DELETE FROM refresh_tokens WHERE username = $1", &[&name]),
        ])
        .await?;
        Ok(())
    }

    pub async fn insert_refresh(
        &self,
        id: &str,
        user: &str,
        hash: &str,
        expires: i64,
        now: i64,
    ) -> Result<(), UserError> {
        self.db
            .execute(
                "INSERT INTO refresh_tokens (id, username, hash, expires) VALUES ($1, $2, $3, $4)",
                &[&id, &user, &hash, &expires],
            )
            .await?;
        // Expired tokens of this user go as new ones are issued.
        self.db
            .execute(
                "DELETE FROM refresh_tokens WHERE username = $1 AND expires < $2",
                &[&user, &now],
            )
            .await?;
        Ok(())
    }

    /// Marks the refresh token `id` used: its user. A token used before ends every refresh
    /// token of its user.
    pub async fn use_refresh(&self, id: &str, hash: &str, now: i64) -> Result<String, UserError> {
        let mut client = self.db.storage_client().await?;
        let tx = client.transaction().await.map_err(pg::task)?;
        let row = tx
            .query_opt(
                "SELECT username, hash, expires, used FROM refresh_tokens WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(pg::task)?;
        let Some(row) = row else {
            return Err(UserError::BadCredentials);
        };
        let (user, stored, expires, used): (String, String, i64, Option<i64>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if stored != hash {
            return Err(UserError::BadCredentials);
        }
        if used.is_some() {
            tx.execute("DELETE FROM refresh_tokens WHERE username = $1", &[&user])
                .await
                .map_err(pg::task)?;
            tx.commit().await.map_err(pg::task)?;
            tracing::warn!(user = %user, "a used refresh token was presented again; all of the user's refresh tokens are revoked");
            return Err(UserError::BadCredentials);
        }
        if expires <= now {
            return Err(UserError::BadCredentials);
        }
        tx.execute(
            "UPDATE refresh_tokens SET used = $2 WHERE id = $1",
            &[&id, &now],
        )
        .await
        .map_err(pg::task)?;
        tx.commit().await.map_err(pg::task)?;
        Ok(user)
    }

    pub async fn revoke_refresh(&self, id: &str, hash: &str) -> Result<(), UserError> {
        self.db
            .execute(
                "DELETE FROM refresh_tokens WHERE id = $1 AND hash = $2",
                &[&id, &hash],
            )
            .await?;
        Ok(())
    }

    pub async fn revoke_access(&self, jti: &str, expires: i64, now: i64) -> Result<(), UserError> {
        self.transact(&[
            ("DELETE FROM revoked_tokens WHERE expires <= $1", &[&now]),
            (
                "INSERT INTO revoked_tokens (jti, expires) VALUES ($1, $2)
                 ON CONFLICT (jti) DO UPDATE SET expires = EXCLUDED.expires",
                &[&jti, &expires],
            ),
        ])
        .await?;
        Ok(())
    }

    /// Remembers `ip` for `user` (while the user exists) and forgets `forgotten`.
    pub async fn remember_address(
        &self,
        user: &str,
        ip: IpAddr,
        now: i64,
        forgotten: &[IpAddr],
    ) -> Result<(), UserError> {
        let ip = ip.to_string();
        let old: Vec<String> = forgotten.iter().map(ToString::to_string).collect();
        self.transact(&[
            (
                "INSERT INTO login_addresses (username, address, last)
                 SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM users WHERE name = $1)
                 ON CONFLICT (username, address) DO UPDATE SET last = EXCLUDED.last",
                &[&user, &ip, &now],
            ),
            (
                "DELETE FROM login_addresses WHERE username = $1 AND address = ANY($2)",
                &[&user, &old],
            ),
        ])
        .await?;
        Ok(())
    }

    pub async fn create_key(&self, k: &ApiKeyInfo) -> Result<(), UserError> {
        let sealed = self
            .db
            .sealer
            .seal(&key_aad(&k.id), hex::encode(k.hash).as_bytes());
        self.transact(&[(
            "INSERT INTO api_keys (id, name, role, owner, hash, created)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &k.id,
                &k.name,
                &k.role.as_str(),
                &k.owner,
                &sealed,
                &k.created,
            ],
        )])
        .await?;
        Ok(())
    }

    pub async fn revoke_key(&self, id: &str, now: i64) -> Result<(), UserError> {
        self.transact(&[(
            "UPDATE api_keys SET revoked = $2 WHERE id = $1 AND revoked IS NULL",
            &[&id, &now],
        )])
        .await?;
        Ok(())
    }
}
