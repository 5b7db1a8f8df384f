//! The broker's database (encrypted like every other):
//! - the client IDs devices hold ([`Claims`]), so a restart of the broker does not hand
//!   them to whichever device asks first;
//! - persistent sessions without their messages (client ID, subscriptions, expiry, ...), so
//!   after a crash the broker queues messages for a durable consumer such as core-data from
//!   its first second up, instead of dropping them until the consumer has reconnected and
//!   subscribed again (what they queue is in the [`crate::journal`]);
//! - the durable consumers the journal keeps messages for, and their filters;
//! - retained messages ([`Retained`]): a retained publish with QoS 1 or 2 is acknowledged
//!   only once it is committed here, so what a publisher saw acknowledged is what a
//!   subscriber gets after any crash.
//!
//! Claims and sessions are written by background tasks in small batches, off the CONNECT
//! path: a claim made just before a crash may be lost, which leaves that ID as it was
//! before the claim; sessions are saved once a second, and at once after a subscription.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mqtt5::QoS;
use mqtt5::broker::events::ClientPublishEvent;
use mqtt5::broker::storage::{ClientSession, DynamicStorage, RetainedMessage, StorageBackend as _};
use mqtt5::packet::publish::PublishPacket;
use outpost_kit::backoff::Backoff;
use outpost_storage::rusqlite::params;
use outpost_storage::{Db, Migration, StorageError};
use tokio::sync::{Notify, mpsc};

use crate::auth::{ClaimChange, Claims};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "client ID claims, persistent sessions",
        sql: "CREATE TABLE claims (
              client_id TEXT PRIMARY KEY,
              device TEXT NOT NULL,
              used INTEGER NOT NULL
          ) WITHOUT ROWID;
          CREATE INDEX claims_device ON claims (device);
          CREATE TABLE sessions (
              client_id TEXT PRIMARY KEY,
              body TEXT NOT NULL
          ) WITHOUT ROWID;",
    },
    Migration {
        version: 2,
        description: "durable consumers the journal keeps messages for",
        sql: "CREATE TABLE journal_consumers (
              client_id TEXT PRIMARY KEY,
              filters TEXT NOT NULL
          ) WITHOUT ROWID;",
    },
    Migration {
        version: 3,
        description: "retained messages",
        sql: "CREATE TABLE retained (
              topic TEXT PRIMARY KEY,
              body TEXT NOT NULL
          ) WITHOUT ROWID;",
    },
];

/// How often persistent sessions are saved.
pub const SESSION_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Changes waiting to be written, at most; beyond that a change is logged and dropped.
pub const QUEUE: usize = 4_096;

/// Changes written per transaction, at most.
const BATCH: usize = 512;

/// Every stored claim.
pub fn load_claims(db: &Db) -> Result<Claims, StorageError> {
    let rows = db.write_blocking(|c| {
        let mut st = c.prepare("SELECT client_id, device, used FROM claims")?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, StorageError>(rows)
    })?;
    Ok(Claims::load(rows))
}

/// Writes changes as they come until shutdown (then what is queued) or until every sender
/// is gone.
pub async fn write_claims(
    db: Db,
    mut rx: mpsc::Receiver<ClaimChange>,
    shutdown: outpost_kit::Shutdown,
) {
    loop {
        let (first, last) = tokio::select! {
            c = rx.recv() => match c {
                Some(c) => (c, false),
                None => return,
            },
            () = shutdown.wait() => match rx.try_recv() {
                Ok(c) => (c, true),
                Err(_) => return,
            },
        };
        let mut batch = vec![first];
        while last || batch.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let n = batch.len();
        if let Err(e) = db.write(move |c| apply(c, &batch)).await {
            tracing::warn!(error = %e, changes = n, "cannot store client ID claims");
        }
        if last {
            return;
        }
    }
}

fn apply(
    c: &mut outpost_storage::rusqlite::Connection,
    batch: &[ClaimChange],
) -> Result<(), StorageError> {
    let tx = c.transaction()?;
    for change in batch {
        match change {
            ClaimChange::Claimed {
                client_id,
                device,
                used,
            } => {
                tx.prepare_cached(
                    "INSERT INTO claims (client_id, device, used) VALUES (?1, ?2, ?3)
                     ON CONFLICT (client_id) DO UPDATE SET device = ?2, used = ?3",
                )?
                .execute(params![
                    client_id,
                    device,
                    i64::try_from(*used).unwrap_or(i64::MAX)
                ])?;
            }
            ClaimChange::Released(ids) => {
                let mut st = tx.prepare_cached("DELETE FROM claims WHERE client_id = ?1")?;
                for id in ids {
                    st.execute([id])?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// Saved sessions: (client ID, session as JSON).
fn saved_sessions(db: &Db) -> Result<HashMap<String, String>, StorageError> {
    db.write_blocking(|c| {
        let mut st = c.prepare("SELECT client_id, body FROM sessions")?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<HashMap<_, _>, _>>()?;
        Ok::<_, StorageError>(rows)
    })
}

/// Puts the saved persistent sessions into the broker's (empty) storage before it runs, so
/// it recovers them as if it had never stopped: their subscriptions route from the start,
/// and messages for them are queued until they reconnect. Returns what was saved, for
/// [`save_sessions`] to start from.
pub async fn restore_sessions(
    db: &Db,
    storage: &DynamicStorage,
) -> Result<HashMap<String, String>, StorageError> {
    let saved = saved_sessions(db)?;
    let mut restored = 0;
    for (client_id, body) in &saved {
        match serde_json::from_str::<ClientSession>(body) {
            Ok(session) if session.client_id == *client_id => {
                if let Err(e) = storage.store_session(session).await {
                    tracing::warn!(client_id, error = %e, "cannot restore a session");
                } else {
                    restored += 1;
                }
            }
            Ok(_) | Err(_) => {
                tracing::warn!(client_id, "a saved session cannot be read; it is dropped");
            }
        }
    }
    if restored > 0 {
        tracing::info!(sessions = restored, "restored persistent sessions");
    }
    Ok(saved)
}

/// The persistent sessions in the broker now, as JSON.
async fn persistent_sessions(storage: &DynamicStorage) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(ids) = storage.session_client_ids().await else {
        return out;
    };
    for id in ids {
        let Ok(Some(session)) = storage.get_session(&id).await else {
            continue;
        };
        if !session.persistent || session.expiry_interval.unwrap_or(0) == 0 {
            continue;
        }
        if let Ok(body) = serde_json::to_string(&session) {
            out.insert(id, body);
        }
    }
    out
}

/// Saves the broker's persistent sessions every [`SESSION_SAVE_INTERVAL`] and whenever
/// `now` is notified (a client subscribed): what changed since the last save, in one
/// transaction; once more at shutdown.
pub async fn save_sessions(
    db: Db,
    storage: Arc<DynamicStorage>,
    mut saved: HashMap<String, String>,
    saved_metric: String,
    now: Arc<Notify>,
    shutdown: outpost_kit::Shutdown,
) {
    let mut tick = tokio::time::interval(SESSION_SAVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            () = shutdown.wait() => true,
            _ = tick.tick() => false,
            () = now.notified() => false,
        };
        let now = persistent_sessions(&storage).await;
        let upserts: Vec<(String, String)> = now
            .iter()
            .filter(|(id, body)| saved.get(*id) != Some(*body))
            .map(|(id, body)| (id.clone(), body.clone()))
            .collect();
        let gone: Vec<String> = saved
            .keys()
            .filter(|id| !now.contains_key(*id))
            .cloned()
            .collect();
        if !upserts.is_empty() || !gone.is_empty() {
            let written = db
                .write(move |c| {
                    let tx = c.transaction()?;
                    for (id, body) in &upserts {
                        tx.prepare_cached(
                            "INSERT INTO sessions (client_id, body) VALUES (?1, ?2)
                             ON CONFLICT (client_id) DO UPDATE SET body = ?2",
                        )?
                        .execute(params![id, body])?;
                    }
                    for id in &gone {
                        tx.prepare_cached("DELETE FROM sessions WHERE client_id = ?1")?
                            .execute([id])?;
                    }
                    tx.commit()?;
                    Ok::<_, StorageError>(())
                })
                .await;
            match written {
                Ok(()) => saved = now,
                Err(e) => tracing::warn!(error = %e, "cannot save persistent sessions"),
            }
        }
        metrics::gauge!(saved_metric.clone()).set(saved.len() as f64);
        if last {
            return;
        }
    }
}

/// Puts every stored retained message into the broker's (empty) storage before it runs,
/// where it finds its retained messages at start; how many.
pub async fn restore_retained(db: &Db, storage: &DynamicStorage) -> Result<usize, StorageError> {
    let rows = db.write_blocking(|c| {
        let mut st = c.prepare("SELECT topic, body FROM retained")?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, StorageError>(rows)
    })?;
    let mut restored = 0;
    for (topic, body) in rows {
        match serde_json::from_str::<RetainedMessage>(&body) {
            Ok(mut m) if m.topic == topic => {
                m.recompute_expiry();
                match storage.store_retained_message(&topic, m).await {
                    Ok(()) => restored += 1,
                    Err(e) => {
                        tracing::warn!(topic, error = %e, "cannot restore a retained message")
                    }
                }
            }
            Ok(_) | Err(_) => {
                tracing::warn!(
                    topic,
                    "a stored retained message cannot be read; it is dropped"
                );
            }
        }
    }
    if restored > 0 {
        tracing::info!(messages = restored, "restored retained messages");
    }
    Ok(restored)
}

/// Retained messages on disk: [`Retained::keep`] runs before the broker routes (and
/// acknowledges) a retained publish; [`restore_retained`] brings them back at start.
///
/// What is kept of a message is what the broker's publish hook sees: topic, payload, QoS,
/// response topic and correlation data (as for journaled messages); its other properties
/// (content type, user properties, expiry) are not kept across a restart.
pub struct Retained {
    db: Db,
}

impl Retained {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Stores (or, for an empty payload, removes) the retained message `ev` sets, and
    /// returns once it is committed. While the database cannot be written (a full disk),
    /// the publisher waits, as for the journal: nothing is acknowledged that is not kept.
    /// QoS 0 retained messages are stored the same way (one commit each), so the order of
    /// a topic's retained messages on disk is the order they arrived on a connection.
    pub async fn keep(&self, ev: &ClientPublishEvent) {
        let topic = ev.topic.to_string();
        let body = if ev.payload.is_empty() {
            None
        } else {
            let mut packet = PublishPacket::new(topic.clone(), ev.payload.clone(), ev.qos);
            packet.retain = true;
            if let Some(t) = &ev.response_topic {
                packet.properties.set_response_topic(t.to_string());
            }
            if let Some(c) = &ev.correlation_data {
                packet.properties.set_correlation_data(c.clone());
            }
            match serde_json::to_string(&RetainedMessage::new(packet)) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(topic, error = %e, "cannot encode a retained message");
                    return;
                }
            }
        };
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            let (at, body) = (topic.clone(), body.clone());
            let written = self
                .db
                .write(move |c| {
                    match &body {
                        Some(b) => c
                            .prepare_cached(
                                "INSERT INTO retained (topic, body) VALUES (?1, ?2)
                                 ON CONFLICT (topic) DO UPDATE SET body = ?2",
                            )?
                            .execute(params![at, b])?,
                        None => c
                            .prepare_cached("DELETE FROM retained WHERE topic = ?1")?
                            .execute([&at])?,
                    };
                    Ok::<_, StorageError>(())
                })
                .await;
            match written {
                Ok(()) => return,
                Err(e) if ev.qos == QoS::AtMostOnce => {
                    // Nothing was promised for it: not worth holding the connection.
                    tracing::warn!(topic, error = %e, "cannot store a QoS 0 retained message");
                    return;
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    if backoff.attempts() == 1 {
                        tracing::warn!(topic, error = %e, "cannot store a retained message; the publisher waits");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
