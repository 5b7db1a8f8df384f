//! Where notifications, subscriptions, transmissions and secrets are kept.
//!
//! [`NotificationStore`] is what the service needs from storage; [`SqliteStore`] keeps
//! everything in the service's encrypted SQLite database. Each object is stored as its
//! EdgeX JSON beside the columns it is looked up by.
//!
//! The transmissions a notification owes are written in the same transaction as the
//! notification: once `POST /notification` answered, every delivery it causes is on disk
//! (status `QUEUED` until its first attempt, `due` set while an attempt is owed), so a
//! restart resumes them.

use std::collections::HashSet;

use outpost_storage::rusqlite::{
    self, OptionalExtension as _, params, params_from_iter, types::Value,
};
use outpost_storage::{Db, Migration, StorageError, documents};

use crate::model::{Notification, Subscription, Transmission, TransmissionRecord, status};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "notifications, subscriptions, transmissions",
        sql: "
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    category TEXT NOT NULL,
    labels TEXT NOT NULL,
    status TEXT NOT NULL,
    acknowledged INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX notifications_created ON notifications (created);
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    receiver TEXT NOT NULL,
    categories TEXT NOT NULL,
    labels TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE transmissions (
    id TEXT PRIMARY KEY,
    notification_id TEXT NOT NULL,
    subscription_name TEXT NOT NULL,
    created INTEGER NOT NULL,
    status TEXT NOT NULL,
    due INTEGER,
    body TEXT NOT NULL
);
CREATE INDEX transmissions_notification ON transmissions (notification_id);
CREATE INDEX transmissions_created ON transmissions (created);
CREATE INDEX transmissions_due ON transmissions (due) WHERE due IS NOT NULL;
",
    },
    Migration {
        version: 2,
        description: "secrets",
        sql: outpost_storage::secrets::TABLE,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("{0}")]
    NotFound(String),
    #[error("stored JSON cannot be read or written: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Storage(StorageError::Sqlite(e))
    }
}

/// Which notifications a list answer holds.
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    /// Any of these categories.
    pub categories: Vec<String>,
    /// Any of these labels.
    pub labels: Vec<String>,
    /// With both lists: a notification matching either (otherwise each that is given).
    pub either: bool,
    pub status: Option<String>,
    /// Created within `[start, end]`, milliseconds.
    pub created: Option<(i64, i64)>,
    pub acknowledged: Option<bool>,
}

/// Which subscriptions a list answer holds.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionFilter {
    pub category: Option<String>,
    pub label: Option<String>,
    pub receiver: Option<String>,
}

/// Which transmissions a list answer holds (the queued ones never).
#[derive(Debug, Clone, Default)]
pub struct TransmissionFilter {
    pub status: Option<String>,
    pub created: Option<(i64, i64)>,
    pub subscription: Option<String>,
    pub notification_id: Option<String>,
}

/// A delivery owed, with what it delivers.
#[derive(Debug, Clone)]
pub struct Due {
    pub transmission: Transmission,
    pub notification: Notification,
}

/// What one attempt changed.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: String,
    pub record: TransmissionRecord,
    pub status: String,
    pub resend_count: i64,
    /// When the next attempt is owed, if one is.
    pub due: Option<i64>,
    /// An escalated notification and what it owes, made with this outcome.
    pub escalation: Option<(Notification, Vec<Transmission>)>,
}

/// A page: the total count and the items of the page.
pub type Page<T> = (u64, Vec<T>);

#[async_trait::async_trait]
pub trait NotificationStore: Send + Sync + 'static {
    /// Stores each notification with the transmissions it owes, all in one commit; the
    /// outcome of each, in order (an id already used is `Duplicate`, and that one is not
    /// stored).
    async fn add_notifications(
        &self,
        batch: Vec<(Notification, Vec<Transmission>)>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError>;
    async fn notification(&self, id: &str) -> Result<Option<Notification>, StoreError>;
    /// Newest first.
    async fn notifications(
        &self,
        f: NotificationFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Notification>, StoreError>;
    /// Sets `acknowledged` on every id, or on none when one is unknown (`NotFound`).
    async fn acknowledge(&self, ids: Vec<String>, ack: bool, now: i64) -> Result<(), StoreError>;
    /// Deletes notifications and their transmissions; `false` when none of `ids` existed.
    async fn delete_notifications(&self, ids: Vec<String>) -> Result<bool, StoreError>;
    /// Deletes the notifications created before `before` (only `PROCESSED` ones with
    /// `processed_only`) and their transmissions; how many.
    async fn delete_notifications_before(
        &self,
        before: i64,
        processed_only: bool,
    ) -> Result<u64, StoreError>;
    /// When there are at least `max` notifications, deletes the oldest until `min` remain.
    async fn trim_notifications(&self, max: u64, min: u64) -> Result<u64, StoreError>;

    async fn add_subscription(&self, s: Subscription) -> Result<(), StoreError>;
    async fn subscription(&self, name: &str) -> Result<Option<Subscription>, StoreError>;
    async fn subscription_by_id(&self, id: &str) -> Result<Option<Subscription>, StoreError>;
    async fn subscriptions(
        &self,
        f: SubscriptionFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Subscription>, StoreError>;
    /// Every subscription (what a new notification is matched against).
    async fn all_subscriptions(&self) -> Result<Vec<Subscription>, StoreError>;
    async fn update_subscription(&self, s: Subscription) -> Result<(), StoreError>;
    async fn delete_subscription(&self, name: &str) -> Result<bool, StoreError>;

    async fn transmission(&self, id: &str) -> Result<Option<Transmission>, StoreError>;
    /// Newest first.
    async fn transmissions(
        &self,
        f: TransmissionFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Transmission>, StoreError>;
    /// Deletes finished transmissions (SENT, ACKNOWLEDGED, ESCALATED) created before
    /// `before`; how many.
    async fn delete_transmissions_before(&self, before: i64) -> Result<u64, StoreError>;
    /// Up to `limit` transmissions owed by `now`, earliest first, leaving out `busy`.
    async fn due(
        &self,
        now: i64,
        limit: usize,
        busy: HashSet<String>,
    ) -> Result<Vec<Due>, StoreError>;
    /// When the earliest owed attempt is due (leaving out `busy`).
    async fn next_due(&self, busy: HashSet<String>) -> Result<Option<i64>, StoreError>;
    /// Records attempts (and the escalations they caused), all in one commit.
    async fn record(&self, attempts: Vec<Attempt>) -> Result<(), StoreError>;
    /// Transmissions owed now (queued or resending), for the health and metrics.
    async fn owed(&self) -> Result<u64, StoreError>;

    async fn put_secret(&self, name: String, data: Vec<(String, String)>)
    -> Result<(), StoreError>;
    async fn secret(&self, name: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// Takes or renews the lease `name` for `ttl`: whether this instance holds it now. A
    /// store only this instance uses is always held.
    async fn lease(&self, _name: &str, _ttl: std::time::Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
}

pub struct SqliteStore {
    db: Db,
}

impl SqliteStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn insert_notification(c: &rusqlite::Transaction<'_>, n: &Notification) -> Result<(), StoreError> {
    let body = serde_json::to_string(n)?;
    let done = c.execute(
        "INSERT OR IGNORE INTO notifications (id, created, category, labels, status, acknowledged, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            n.id,
            n.created,
            n.category,
            json_list(&n.labels),
            n.status,
            n.acknowledged,
            body
        ],
    )?;
    if done == 0 {
        return Err(StoreError::Duplicate(format!("notification id {}", n.id)));
    }
    Ok(())
}

/// Writes one attempt onto its transmission (gone when its notification was deleted
/// meanwhile: nothing to record), with the escalation it caused.
fn record_attempt(tx: &rusqlite::Transaction<'_>, a: Attempt) -> Result<(), StoreError> {
    let body: Option<String> = tx
        .query_row(
            "SELECT body FROM transmissions WHERE id = ?1",
            [&a.id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(body) = body else {
        return Ok(());
    };
    let mut t: Transmission = serde_json::from_str(&body)?;
    t.records.push(a.record);
    t.status = a.status;
    t.resend_count = a.resend_count;
    tx.execute(
        "UPDATE transmissions SET status = ?2, due = ?3, body = ?4 WHERE id = ?1",
        params![a.id, t.status, a.due, serde_json::to_string(&t)?],
    )?;
    if let Some((n, owed)) = a.escalation {
        insert_notification(tx, &n)?;
        for t in &owed {
            insert_transmission(tx, t, n.created)?;
        }
    }
    Ok(())
}

fn insert_transmission(
    c: &rusqlite::Transaction<'_>,
    t: &Transmission,
    due: i64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO transmissions (id, notification_id, subscription_name, created, status, due, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            t.id,
            t.notification_id,
            t.subscription_name,
            t.created,
            t.status,
            due,
            serde_json::to_string(t)?
        ],
    )?;
    Ok(())
}

/// A `WHERE` clause and its parameters, built up.
#[derive(Default)]
struct Where {
    parts: Vec<String>,
    args: Vec<Value>,
}

impl Where {
    fn add(&mut self, sql: &str, args: impl IntoIterator<Item = Value>) {
        self.parts.push(sql.to_string());
        self.args.extend(args);
    }

    fn sql(&self) -> String {
        if self.parts.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.parts.join(" AND "))
        }
    }
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}

fn text(v: &[String]) -> impl Iterator<Item = Value> + '_ {
    v.iter().map(|s| Value::Text(s.clone()))
}

/// A counted page of JSON bodies, newest first.
fn page<T: serde::de::DeserializeOwned>(
    c: &rusqlite::Connection,
    table: &str,
    w: &Where,
    offset: u64,
    limit: u64,
) -> Result<Page<T>, StoreError> {
    let order = "created DESC, id";
    documents::page(c, table, &w.sql(), order, w.args.clone(), offset, limit)
}

fn delete_with_transmissions(
    c: &rusqlite::Transaction<'_>,
    ids_sql: &str,
    args: &[Value],
) -> Result<u64, StoreError> {
    c.execute(
        &format!("DELETE FROM transmissions WHERE notification_id IN ({ids_sql})"),
        params_from_iter(args.iter()),
    )?;
    let n = c.execute(
        &format!("DELETE FROM notifications WHERE id IN ({ids_sql})"),
        params_from_iter(args.iter()),
    )?;
    Ok(n as u64)
}

#[async_trait::async_trait]
impl NotificationStore for SqliteStore {
    async fn add_notifications(
        &self,
        batch: Vec<(Notification, Vec<Transmission>)>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                let mut outcomes = Vec::with_capacity(batch.len());
                for (n, owed) in &batch {
                    let outcome = match insert_notification(&tx, n) {
                        Ok(()) => Ok(()),
                        Err(e @ StoreError::Duplicate(_)) => Err(e),
                        // Anything else fails the whole commit.
                        Err(e) => return Err(e),
                    };
                    if outcome.is_ok() {
                        for t in owed {
                            insert_transmission(&tx, t, n.created)?;
                        }
                    }
                    outcomes.push(outcome);
                }
                tx.commit()?;
                Ok(outcomes)
            })
            .await
    }

    async fn notification(&self, id: &str) -> Result<Option<Notification>, StoreError> {
        let id = id.to_string();
        let body: Option<String> = self
            .db
            .read(move |c| {
                c.query_row("SELECT body FROM notifications WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(StoreError::from)
            })
            .await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn notifications(
        &self,
        f: NotificationFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Notification>, StoreError> {
        let mut w = Where::default();
        let by_category = (!f.categories.is_empty())
            .then(|| format!("category IN ({})", placeholders(f.categories.len())));
        let by_label = (!f.labels.is_empty()).then(|| {
            format!(
                "EXISTS (SELECT 1 FROM json_each(notifications.labels) WHERE value IN ({}))",
                placeholders(f.labels.len())
            )
        });
        match (by_category, by_label) {
            (Some(c), Some(l)) if f.either => w.add(
                &format!("({c} OR {l})"),
                text(&f.categories)
                    .chain(text(&f.labels))
                    .collect::<Vec<_>>(),
            ),
            (c, l) => {
                if let Some(c) = c {
                    w.add(&c, text(&f.categories).collect::<Vec<_>>());
                }
                if let Some(l) = l {
                    w.add(&l, text(&f.labels).collect::<Vec<_>>());
                }
            }
        }
        if let Some(s) = f.status {
            w.add("status = ?", [Value::Text(s)]);
        }
        if let Some((start, end)) = f.created {
            w.add(
                "created BETWEEN ? AND ?",
                [Value::Integer(start), Value::Integer(end)],
            );
        }
        if let Some(a) = f.acknowledged {
            w.add("acknowledged = ?", [Value::Integer(i64::from(a))]);
        }
        self.db
            .read(move |c| page(c, "notifications", &w, offset, limit))
            .await
    }

    async fn acknowledge(&self, ids: Vec<String>, ack: bool, now: i64) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                for id in &ids {
                    let body: Option<String> = tx
                        .query_row("SELECT body FROM notifications WHERE id = ?1", [id], |r| {
                            r.get(0)
                        })
                        .optional()?;
                    let Some(body) = body else {
                        return Err(StoreError::NotFound(format!(
                            "no notification with id {id}"
                        )));
                    };
                    let mut n: Notification = serde_json::from_str(&body)?;
                    n.acknowledged = ack;
                    n.modified = now;
                    tx.execute(
                        "UPDATE notifications SET acknowledged = ?2, body = ?3 WHERE id = ?1",
                        params![id, ack, serde_json::to_string(&n)?],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }

    async fn delete_notifications(&self, ids: Vec<String>) -> Result<bool, StoreError> {
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                let args: Vec<Value> = text(&ids).collect();
                let n = delete_with_transmissions(&tx, &placeholders(ids.len()), &args)?;
                tx.commit()?;
                Ok(n > 0)
            })
            .await
    }

    async fn delete_notifications_before(
        &self,
        before: i64,
        processed_only: bool,
    ) -> Result<u64, StoreError> {
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                let ids = if processed_only {
                    "SELECT id FROM notifications WHERE created < ? AND status = 'PROCESSED'"
                } else {
                    "SELECT id FROM notifications WHERE created < ?"
                };
                let n = delete_with_transmissions(&tx, ids, &[Value::Integer(before)])?;
                tx.commit()?;
                Ok(n)
            })
            .await
    }

    async fn trim_notifications(&self, max: u64, min: u64) -> Result<u64, StoreError> {
        self.db
            .write(move |c| {
                let total: i64 =
                    c.query_row("SELECT COUNT(*) FROM notifications", [], |r| r.get(0))?;
                let total = u64::try_from(total).unwrap_or(0);
                if total < max {
                    return Ok(0);
                }
                let excess = i64::try_from(total - min).unwrap_or(i64::MAX);
                let tx = c.transaction()?;
                let n = delete_with_transmissions(
                    &tx,
                    "SELECT id FROM notifications ORDER BY created, id LIMIT ?",
                    &[Value::Integer(excess)],
                )?;
                tx.commit()?;
                Ok(n)
            })
            .await
    }

    async fn add_subscription(&self, s: Subscription) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                let done = c.execute(
                    "INSERT OR IGNORE INTO subscriptions (id, name, receiver, categories, labels, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        s.id,
                        s.name,
                        s.receiver,
                        json_list(&s.categories),
                        json_list(&s.labels),
                        serde_json::to_string(&s)?
                    ],
                )?;
                if done == 0 {
                    return Err(StoreError::Duplicate(format!("subscription {}", s.name)));
                }
                Ok(())
            })
            .await
    }

    async fn subscription(&self, name: &str) -> Result<Option<Subscription>, StoreError> {
        one(
            &self.db,
            "SELECT body FROM subscriptions WHERE name = ?1",
            name,
        )
        .await
    }

    async fn subscription_by_id(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        one(&self.db, "SELECT body FROM subscriptions WHERE id = ?1", id).await
    }

    async fn subscriptions(
        &self,
        f: SubscriptionFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Subscription>, StoreError> {
        let mut w = Where::default();
        if let Some(c) = f.category {
            w.add(
                "EXISTS (SELECT 1 FROM json_each(subscriptions.categories) WHERE value = ?)",
                [Value::Text(c)],
            );
        }
        if let Some(l) = f.label {
            w.add(
                "EXISTS (SELECT 1 FROM json_each(subscriptions.labels) WHERE value = ?)",
                [Value::Text(l)],
            );
        }
        if let Some(r) = f.receiver {
            w.add("receiver = ?", [Value::Text(r)]);
        }
        // Subscriptions have no `created` column: they are listed by name.
        self.db
            .read(move |c| {
                let order = "name";
                documents::page(c, "subscriptions", &w.sql(), order, w.args, offset, limit)
            })
            .await
    }

    async fn all_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.db
            .read(|c| documents::all(c, "SELECT body FROM subscriptions ORDER BY name", &[]))
            .await
    }

    async fn update_subscription(&self, s: Subscription) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                let n = c.execute(
                    "UPDATE subscriptions SET receiver = ?2, categories = ?3, labels = ?4, body = ?5 WHERE id = ?1",
                    params![
                        s.id,
                        s.receiver,
                        json_list(&s.categories),
                        json_list(&s.labels),
                        serde_json::to_string(&s)?
                    ],
                )?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("no subscription {}", s.name)));
                }
                Ok(())
            })
            .await
    }

    async fn delete_subscription(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.db
            .write(move |c| Ok(c.execute("DELETE FROM subscriptions WHERE name = ?1", [name])? > 0))
            .await
    }

    async fn transmission(&self, id: &str) -> Result<Option<Transmission>, StoreError> {
        one(
            &self.db,
            "SELECT body FROM transmissions WHERE id = ?1 AND status <> 'QUEUED'",
            id,
        )
        .await
    }

    async fn transmissions(
        &self,
        f: TransmissionFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Transmission>, StoreError> {
        let mut w = Where::default();
        w.add("status <> ?", [Value::Text(status::QUEUED.into())]);
        if let Some(s) = f.status {
            w.add("status = ?", [Value::Text(s)]);
        }
        if let Some((start, end)) = f.created {
            w.add(
                "created BETWEEN ? AND ?",
                [Value::Integer(start), Value::Integer(end)],
            );
        }
        if let Some(s) = f.subscription {
            w.add("subscription_name = ?", [Value::Text(s)]);
        }
        if let Some(n) = f.notification_id {
            w.add("notification_id = ?", [Value::Text(n)]);
        }
        self.db
            .read(move |c| page(c, "transmissions", &w, offset, limit))
            .await
    }

    async fn delete_transmissions_before(&self, before: i64) -> Result<u64, StoreError> {
        self.db
            .write(move |c| {
                Ok(c.execute(
                    "DELETE FROM transmissions WHERE created < ?1 AND status IN ('SENT', 'ACKNOWLEDGED', 'ESCALATED')",
                    [before],
                )? as u64)
            })
            .await
    }

    async fn due(
        &self,
        now: i64,
        limit: usize,
        busy: HashSet<String>,
    ) -> Result<Vec<Due>, StoreError> {
        let rows: Vec<(String, String)> = self
            .db
            .read(move |c| {
                let mut st = c.prepare(
                    "SELECT t.id, t.body, n.body FROM transmissions t JOIN notifications n ON n.id = t.notification_id
                     WHERE t.due IS NOT NULL AND t.due <= ?1 ORDER BY t.due, t.id LIMIT ?2",
                )?;
                let take = i64::try_from(limit + busy.len()).unwrap_or(i64::MAX);
                let rows = st
                    .query_map(params![now, take], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, StoreError>(
                    rows.into_iter()
                        .filter(|(id, _, _)| !busy.contains(id))
                        .take(limit)
                        .map(|(_, t, n)| (t, n))
                        .collect(),
                )
            })
            .await?;
        rows.iter()
            .map(|(t, n)| {
                Ok(Due {
                    transmission: serde_json::from_str(t)?,
                    notification: serde_json::from_str(n)?,
                })
            })
            .collect()
    }

    async fn next_due(&self, busy: HashSet<String>) -> Result<Option<i64>, StoreError> {
        self.db
            .read(move |c| {
                let mut st = c.prepare(
                    "SELECT id, due FROM transmissions WHERE due IS NOT NULL ORDER BY due LIMIT ?1",
                )?;
                let take = i64::try_from(busy.len() + 1).unwrap_or(i64::MAX);
                let rows = st
                    .query_map([take], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows
                    .into_iter()
                    .find(|(id, _)| !busy.contains(id))
                    .map(|(_, due)| due))
            })
            .await
    }

    async fn record(&self, attempts: Vec<Attempt>) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                for a in attempts {
                    record_attempt(&tx, a)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }

    async fn owed(&self) -> Result<u64, StoreError> {
        self.db
            .read(|c| {
                let n: i64 = c.query_row(
                    "SELECT COUNT(*) FROM transmissions WHERE due IS NOT NULL",
                    [],
                    |r| r.get(0),
                )?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
            .await
    }

    async fn put_secret(
        &self,
        name: String,
        data: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        Ok(outpost_storage::secrets::put(&self.db, name, data).await?)
    }

    async fn secret(&self, name: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(outpost_storage::secrets::get(&self.db, name).await?)
    }
}

/// The JSON body `sql` selects for `key`, parsed.
async fn one<T: serde::de::DeserializeOwned + Send + 'static>(
    db: &Db,
    sql: &'static str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let key = key.to_string();
    let body: Option<String> = db
        .read(move |c| {
            c.query_row(sql, [key], |r| r.get(0))
                .optional()
                .map_err(StoreError::from)
        })
        .await?;
    Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
}
