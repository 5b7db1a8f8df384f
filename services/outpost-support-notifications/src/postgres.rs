//! The PostgreSQL implementation of [`NotificationStore`]
//! (`[support_notifications.storage] backend = "postgres"`).
//!
//! The tables of [`crate::store`], in the schema `support_notifications`. What a
//! notification says, where a subscription delivers (webhook URLs, e-mail addresses,
//! brokers) and what each transmission answered are sealed with the service's values key
//! before they are sent, as are the secrets' values; what lists select and order on (ids,
//! names, categories, labels, status, times) stays in columns.
//!
//! **Several instances share the deliveries**: an instance takes the transmissions it is
//! about to attempt with `FOR UPDATE SKIP LOCKED` and marks them taken for
//! [`CLAIM_MS`] on the database's clock; the others pass them over, so each attempt is
//! made by one instance. An attempt recorded ends the claim. A claim whose instance died
//! (or could not record its attempt) runs out, and an instance makes the attempt then (a
//! delivery may reach its receiver twice if the instance died after sending and before
//! recording, as after a crash of one instance). Retention passes take turns by the lease
//! `retention`.

use std::collections::HashSet;

use outpost_kit::pg::{self, Migration, StorageConfig, tokio_postgres};

use crate::model::{Notification, Subscription, Transmission, status};
use crate::store::{
    Attempt, Due, NotificationFilter, NotificationStore, Page, StoreError, SubscriptionFilter,
    TransmissionFilter,
};

/// The schema support-notifications' tables live in.
pub const SCHEMA: &str = "support_notifications";

/// How long an instance's claim on a transmission it attempts lasts: longer than any
/// attempt (sends time out after seconds), short enough that a dead instance's deliveries
/// are taken up soon.
pub const CLAIM_MS: i64 = 120_000;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "notifications, subscriptions, transmissions and secrets, bodies sealed",
    sql: "CREATE TABLE notifications (
              id TEXT PRIMARY KEY,
              created BIGINT NOT NULL,
              category TEXT NOT NULL,
              labels TEXT[] NOT NULL,
              status TEXT NOT NULL,
              acknowledged BOOLEAN NOT NULL,
              body BYTEA NOT NULL
          );
          CREATE INDEX notifications_created ON notifications (created);
          CREATE TABLE subscriptions (
              id TEXT PRIMARY KEY,
              name TEXT NOT NULL UNIQUE,
              receiver TEXT NOT NULL,
              categories TEXT[] NOT NULL,
              labels TEXT[] NOT NULL,
              body BYTEA NOT NULL
          );
          CREATE TABLE transmissions (
              id TEXT PRIMARY KEY,
              notification_id TEXT NOT NULL,
              subscription_name TEXT NOT NULL,
              created BIGINT NOT NULL,
              status TEXT NOT NULL,
              due BIGINT,
              claimed_until BIGINT,
              body BYTEA NOT NULL
          );
          CREATE INDEX transmissions_notification ON transmissions (notification_id);
          CREATE INDEX transmissions_created ON transmissions (created);
          CREATE INDEX transmissions_due ON transmissions (due) WHERE due IS NOT NULL;
          CREATE TABLE secrets (
              name TEXT NOT NULL,
              key TEXT NOT NULL,
              value BYTEA NOT NULL,
              PRIMARY KEY (name, key)
          );",
}];

/// The database's time in milliseconds: claims run on it, so instances' clocks need not
/// agree (when an attempt is due is each instance's own reckoning, as on SQLite).
const DB_NOW_MS: &str = "(extract(epoch FROM now()) * 1000)::bigint";

/// The order of EdgeX's listings of notifications and transmissions.
const NEWEST_FIRST: &str = "created DESC, id COLLATE \"C\"";

/// support-notifications' store in PostgreSQL.
pub struct PgStore {
    db: pg::Database,
}

/// What a sealed body is bound to: its table and row.
fn aad(table: &str, id: &str) -> Vec<u8> {
    format!("{table}\u{0}{id}").into_bytes()
}

impl PgStore {
    /// Connects and migrates the schema.
    pub async fn open(cfg: &StorageConfig, secrets: &std::path::Path) -> Result<Self, pg::PgError> {
        Ok(Self {
            db: pg::Database::open(cfg, secrets, crate::SERVICE, SCHEMA, MIGRATIONS).await?,
        })
    }

    fn seal<T: serde::Serialize>(
        &self,
        table: &str,
        id: &str,
        v: &T,
    ) -> Result<Vec<u8>, StoreError> {
        Ok(self.db.seal_json(&aad(table, id), v)?)
    }

    fn open_body<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        id: &str,
        sealed: &[u8],
    ) -> Result<T, StoreError> {
        Ok(self.db.open_json(&aad(table, id), sealed)?)
    }

    /// The page of `table`'s rows `w` selects, in `order`, their bodies opened.
    async fn listing<T: serde::de::DeserializeOwned>(
        &self,
        w: &pg::Filter,
        table: &str,
        order: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Page<T>, StoreError> {
        let client = self.db.storage_client().await?;
        let (total, rows) = w
            .page(&client, table, "id, body", order, offset, limit)
            .await
            .map_err(pg::task)?;
        Ok((total, self.bodies(table, &rows)?))
    }

    /// Rows of (id, body) of `table`, opened.
    fn bodies<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        rows: &[tokio_postgres::Row],
    ) -> Result<Vec<T>, StoreError> {
        rows.iter()
            .map(|r| self.open_body(table, r.get(0), r.get(1)))
            .collect()
    }

    /// The body of `table`'s row whose `column` is `key`.
    async fn one<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        column: &str,
        key: &str,
        extra: &str,
    ) -> Result<Option<T>, StoreError> {
        let row = self
            .db
            .row_by(
                &format!("SELECT id, body FROM {table} WHERE {column} = $1 {extra}"),
                key,
            )
            .await?;
        row.map(|r| self.open_body(table, r.get(0), r.get(1)))
            .transpose()
    }

    async fn insert_notification(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        n: &Notification,
    ) -> Result<bool, StoreError> {
        pg::storable("notification id", &n.id)?;
        pg::storable("category", &n.category)?;
        for l in &n.labels {
            pg::storable("label", l)?;
        }
        let body = self.seal("notifications", &n.id, n)?;
        let done = tx
            .execute(
                "INSERT INTO notifications (id, created, category, labels, status, acknowledged, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                &[&n.id, &n.created, &n.category, &n.labels, &n.status, &n.acknowledged, &body],
            )
            .await
            .map_err(pg::task)?;
        Ok(done > 0)
    }

    async fn insert_transmission(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        t: &Transmission,
        due: i64,
    ) -> Result<(), StoreError> {
        let body = self.seal("transmissions", &t.id, t)?;
        tx.execute(
            "INSERT INTO transmissions (id, notification_id, subscription_name, created, status, due, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&t.id, &t.notification_id, &t.subscription_name, &t.created, &t.status, &due, &body],
        )
        .await
        .map_err(pg::task)?;
        Ok(())
    }

    /// Deletes the notifications `ids_sql` selects (given `params`) and their
    /// transmissions; how many notifications.
    async fn delete_with_transmissions(
        &self,
        ids_sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let mut client = self.db.storage_client().await?;
        let tx = client.transaction().await.map_err(pg::task)?;
        let ids: Vec<String> = tx
            .query(ids_sql, params)
            .await
            .map_err(pg::task)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute(
            "DELETE FROM transmissions WHERE notification_id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(pg::task)?;
        let n = tx
            .execute("DELETE FROM notifications WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(pg::task)?;
        tx.commit().await.map_err(pg::task)?;
        Ok(n)
    }
}

#[async_trait::async_trait]
impl NotificationStore for PgStore {
    async fn add_notifications(
        &self,
        batch: Vec<(Notification, Vec<Transmission>)>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut client = self.db.storage_client().await?;
        let tx = client.transaction().await.map_err(pg::task)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for (n, owed) in &batch {
            if self.insert_notification(&tx, n).await? {
                for t in owed {
                    self.insert_transmission(&tx, t, n.created).await?;
                }
                outcomes.push(Ok(()));
            } else {
                outcomes.push(Err(StoreError::Duplicate(format!(
                    "notification id {}",
                    n.id
                ))));
            }
        }
        tx.commit().await.map_err(pg::task)?;
        Ok(outcomes)
    }

    async fn notification(&self, id: &str) -> Result<Option<Notification>, StoreError> {
        self.one("notifications", "id", id, "").await
    }

    async fn notifications(
        &self,
        f: NotificationFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Notification>, StoreError> {
        let mut w = pg::Filter::default();
        let by_category = (!f.categories.is_empty())
            .then(|| format!("category = ANY({})", w.arg(f.categories.clone())));
        let by_label =
            (!f.labels.is_empty()).then(|| format!("labels && {}", w.arg(f.labels.clone())));
        match (by_category, by_label) {
            (Some(c), Some(l)) if f.either => w.and(format!("({c} OR {l})")),
            (c, l) => {
                for cond in [c, l].into_iter().flatten() {
                    w.and(cond);
                }
            }
        }
        w.eq("status", f.status);
        w.between("created", f.created);
        w.eq("acknowledged", f.acknowledged);
        self.listing(&w, "notifications", NEWEST_FIRST, offset, limit)
            .await
    }

    async fn acknowledge(&self, ids: Vec<String>, ack: bool, now: i64) -> Result<(), StoreError> {
        let mut client = self.db.storage_client().await?;
        let tx = client.transaction().await.map_err(pg::task)?;
        for id in &ids {
            let row = tx
                .query_opt(
                    "SELECT body FROM notifications WHERE id = $1 FOR UPDATE",
                    &[id],
                )
                .await
                .map_err(pg::task)?;
            let Some(row) = row else {
                return Err(StoreError::NotFound(format!(
                    "no notification with id {id}"
                )));
            };
            let mut n: Notification = self.open_body("notifications", id, row.get(0))?;
            n.acknowledged = ack;
            n.modified = now;
            let body = self.seal("notifications", id, &n)?;
            tx.execute(
                "UPDATE notifications SET acknowledged = $2, body = $3 WHERE id = $1",
                &[id, &ack, &body],
            )
            .await
            .map_err(pg::task)?;
        }
        tx.commit().await.map_err(pg::task)?;
        Ok(())
    }

    async fn delete_notifications(&self, ids: Vec<String>) -> Result<bool, StoreError> {
        let n = self
            .delete_with_transmissions("SELECT id FROM notifications WHERE id = ANY($1)", &[&ids])
            .await?;
        Ok(n > 0)
    }

    async fn delete_notifications_before(
        &self,
        before: i64,
        processed_only: bool,
    ) -> Result<u64, StoreError> {
        let ids = if processed_only {
            "SELECT id FROM notifications WHERE created < $1 AND status = 'PROCESSED'"
        } else {
            "SELECT id FROM notifications WHERE created < $1"
        };
        self.delete_with_transmissions(ids, &[&before]).await
    }

    async fn trim_notifications(&self, max: u64, min: u64) -> Result<u64, StoreError> {
        let total: i64 = self
            .db
            .storage_client()
            .await?
            .query_one("SELECT count(*) FROM notifications", &[])
            .await
            .map_err(pg::task)?
            .get(0);
        let total = u64::try_from(total).unwrap_or(0);
        if total < max {
            return Ok(0);
        }
        let excess = pg::bound(total - min.min(total));
        self.delete_with_transmissions(
            "SELECT id FROM notifications ORDER BY created, id COLLATE \"C\" LIMIT $1",
            &[&excess],
        )
        .await
    }

    async fn add_subscription(&self, s: Subscription) -> Result<(), StoreError> {
        pg::storable("subscription name", &s.name)?;
        pg::storable("receiver", &s.receiver)?;
        for v in s.categories.iter().chain(&s.labels) {
            pg::storable("category or label", v)?;
        }
        let body = self.seal("subscriptions", &s.id, &s)?;
        let done = self
            .db
            .execute(
                "INSERT INTO subscriptions (id, name, receiver, categories, labels, body)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[&s.id, &s.name, &s.receiver, &s.categories, &s.labels, &body],
            )
            .await?;
        if done == 0 {
            return Err(StoreError::Duplicate(format!("subscription {}", s.name)));
        }
        Ok(())
    }

    async fn subscription(&self, name: &str) -> Result<Option<Subscription>, StoreError> {
        self.one("subscriptions", "name", name, "").await
    }

    async fn subscription_by_id(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        self.one("subscriptions", "id", id, "").await
    }

    async fn subscriptions(
        &self,
        f: SubscriptionFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Subscription>, StoreError> {
        let mut w = pg::Filter::default();
        for (v, column) in [(f.category, "categories"), (f.label, "labels")] {
            if let Some(v) = v {
                let v = w.arg(v);
                w.and(format!("{v} = ANY({column})"));
            }
        }
        w.eq("receiver", f.receiver);
        self.listing(&w, "subscriptions", "name COLLATE \"C\"", offset, limit)
            .await
    }

    async fn all_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT id, body FROM subscriptions ORDER BY name COLLATE \"C\"",
                &[],
            )
            .await?;
        self.bodies("subscriptions", &rows)
    }

    async fn update_subscription(&self, s: Subscription) -> Result<(), StoreError> {
        pg::storable("receiver", &s.receiver)?;
        for v in s.categories.iter().chain(&s.labels) {
            pg::storable("category or label", v)?;
        }
        let body = self.seal("subscriptions", &s.id, &s)?;
        let n = self
            .db
            .execute(
                "UPDATE subscriptions SET receiver = $2, categories = $3, labels = $4, body = $5
                 WHERE id = $1",
                &[&s.id, &s.receiver, &s.categories, &s.labels, &body],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no subscription {}", s.name)));
        }
        Ok(())
    }

    async fn delete_subscription(&self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .db
            .execute("DELETE FROM subscriptions WHERE name = $1", &[&name])
            .await?;
        Ok(n > 0)
    }

    async fn transmission(&self, id: &str) -> Result<Option<Transmission>, StoreError> {
        self.one("transmissions", "id", id, "AND status <> 'QUEUED'")
            .await
    }

    async fn transmissions(
        &self,
        f: TransmissionFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Transmission>, StoreError> {
        let mut w = pg::Filter::default();
        let queued = w.arg(status::QUEUED.to_string());
        w.and(format!("status <> {queued}"));
        w.eq("status", f.status);
        w.between("created", f.created);
        w.eq("subscription_name", f.subscription);
        w.eq("notification_id", f.notification_id);
        self.listing(&w, "transmissions", NEWEST_FIRST, offset, limit)
            .await
    }

    async fn delete_transmissions_before(&self, before: i64) -> Result<u64, StoreError> {
        Ok(self
            .db
            .execute(
                "DELETE FROM transmissions
                 WHERE created < $1 AND status IN ('SENT', 'ACKNOWLEDGED', 'ESCALATED')",
                &[&before],
            )
            .await?)
    }

    async fn due(
        &self,
        now: i64,
        limit: usize,
        busy: HashSet<String>,
    ) -> Result<Vec<Due>, StoreError> {
        let busy: Vec<String> = busy.into_iter().collect();
        let take = i64::try_from(limit).unwrap_or(i64::MAX);
        // Taken by this instance for its attempts: others skip them while the claim lasts.
        let rows = self
            .db
            .storage_client()
            .await?
            .query(
                &format!(
                    "WITH taken AS (
                     SELECT id FROM transmissions
                     WHERE due IS NOT NULL AND due <= $1
                       AND (claimed_until IS NULL OR claimed_until < {DB_NOW_MS})
                       AND NOT (id = ANY($2))
                     ORDER BY due, id COLLATE \"C\" LIMIT $3
                     FOR UPDATE SKIP LOCKED
                 )
                 UPDATE transmissions t SET claimed_until = {DB_NOW_MS} + $4
                 FROM taken, notifications n
                 WHERE t.id = taken.id AND n.id = t.notification_id
                 RETURNING t.id, t.body, n.id, n.body, t.due"
                ),
                &[&now, &busy, &take, &CLAIM_MS],
            )
            .await
            .map_err(pg::task)?;
        let mut due = rows
            .iter()
            .map(|r| {
                let d = Due {
                    transmission: self.open_body("transmissions", r.get(0), r.get(1))?,
                    notification: self.open_body("notifications", r.get(2), r.get(3))?,
                };
                // The row's notification is the one the sealed transmission names: a row
                // pointed at another notification does not send that one's content.
                if d.transmission.notification_id != d.notification.id {
                    return Err(StoreError::Storage(pg::task(format!(
                        "transmission {} does not belong to notification {}",
                        d.transmission.id, d.notification.id
                    ))));
                }
                Ok((r.get::<_, i64>(4), d))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        due.sort_by(|a, b| (a.0, &a.1.transmission.id).cmp(&(b.0, &b.1.transmission.id)));
        Ok(due.into_iter().map(|(_, d)| d).collect())
    }

    async fn next_due(&self, busy: HashSet<String>) -> Result<Option<i64>, StoreError> {
        let busy: Vec<String> = busy.into_iter().collect();
        let row = self
            .db
            .storage_client()
            .await?
            .query_one(
                &format!(
                    "SELECT min(due) FROM transmissions
                     WHERE due IS NOT NULL AND NOT (id = ANY($1))
                       AND (claimed_until IS NULL OR claimed_until < {DB_NOW_MS})"
                ),
                &[&busy],
            )
            .await
            .map_err(pg::task)?;
        Ok(row.get(0))
    }

    async fn record(&self, attempts: Vec<Attempt>) -> Result<(), StoreError> {
        let mut client = self.db.storage_client().await?;
        let tx = client.transaction().await.map_err(pg::task)?;
        for a in attempts {
            let row = tx
                .query_opt(
                    "SELECT body FROM transmissions WHERE id = $1 FOR UPDATE",
                    &[&a.id],
                )
                .await
                .map_err(pg::task)?;
            // Gone when its notification was deleted meanwhile: nothing to record.
            let Some(row) = row else { continue };
            let mut t: Transmission = self.open_body("transmissions", &a.id, row.get(0))?;
            t.records.push(a.record);
            t.status = a.status;
            t.resend_count = a.resend_count;
            let body = self.seal("transmissions", &a.id, &t)?;
            tx.execute(
                "UPDATE transmissions SET status = $2, due = $3, claimed_until = NULL, body = $4
                 WHERE id = $1",
                &[&a.id, &t.status, &a.due, &body],
            )
            .await
            .map_err(pg::task)?;
            if let Some((n, owed)) = a.escalation
                && self.insert_notification(&tx, &n).await?
            {
                for t in &owed {
                    self.insert_transmission(&tx, t, n.created).await?;
                }
            }
        }
        tx.commit().await.map_err(pg::task)?;
        Ok(())
    }

    async fn owed(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .db
            .storage_client()
            .await?
            .query_one(
                "SELECT count(*) FROM transmissions WHERE due IS NOT NULL",
                &[],
            )
            .await
            .map_err(pg::task)?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn put_secret(
        &self,
        name: String,
        data: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        Ok(self.db.put_secret(&name, &data).await?)
    }

    async fn secret(&self, name: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self.db.secret(name).await?)
    }

    async fn lease(&self, name: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        Ok(self.db.lease(name, ttl).await.map_err(pg::task)?)
    }
}
