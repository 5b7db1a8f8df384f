//! `outpost keys rotate`: re-encrypts everything the node stores under new keys, with the
//! node stopped.
//!
//! Each key in turn: a new key is made beside it (`<key>.next`, sealed like the others),
//! what the key protects is re-encrypted under the new one unit by unit (a database, a
//! queue segment, an artifact blob), each unit through a synced file renamed over the old
//! one, and the new key finally takes the old one's place. A unit is thus always whole
//! under one of the two keys; a key with a `.next` beside it is refused by every service
//! (so nothing opens data half re-encrypted), and running the command again finishes the
//! rotation with the same new key. The databases use SQLCipher's export into a new file;
//! queues and blobs their own formats' re-encryption (`outpost_queue::rekey`,
//! `outpost_ota::blob::rekey`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// What one key protects.
enum Protects {
    /// A service's database.
    Db(PathBuf),
    /// Queues (the broker's journal, export's destinations).
    Queues(Vec<PathBuf>),
    /// OTA's artifact blobs.
    Blobs(Vec<PathBuf>),
}

/// A key and what it protects (a service's database and, for some, its queues or blobs:
/// export's and OTA's keys are both).
struct Step {
    key: PathBuf,
    protects: Vec<Protects>,
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|it| it.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Every key of the node's data and what it protects, from what is on disk.
fn plan(data_dir: &Path) -> Vec<Step> {
    let secrets = data_dir.join("secrets");
    let mut steps: std::collections::BTreeMap<PathBuf, Vec<Protects>> = Default::default();
    for db in entries(&data_dir.join("db")) {
        if db.extension().is_some_and(|e| e == "db")
            && let Some(name) = db.file_stem().and_then(|n| n.to_str())
        {
            let key = secrets.join(format!("{name}.key"));
            if key.exists() {
                steps.entry(key).or_default().push(Protects::Db(db));
            }
        }
    }
    let dirs = |p: PathBuf| entries(&p).into_iter().filter(|d| d.is_dir()).collect();
    for (key, protects) in [
        (
            "broker-journal.key",
            Protects::Queues(vec![data_dir.join("journal")]),
        ),
        ("export.key", Protects::Queues(dirs(data_dir.join("queue")))),
        (
            "ota.key",
            Protects::Blobs(
                entries(&data_dir.join("ota/blobs"))
                    .into_iter()
                    .filter(|b| b.is_file() && b.extension().is_none_or(|e| e != "tmp"))
                    .collect(),
            ),
        ),
    ] {
        let key = secrets.join(key);
        if key.exists() {
            steps.entry(key).or_default().push(protects);
        }
    }
    steps
        .into_iter()
        .map(|(key, protects)| Step { key, protects })
        .collect()
}

/// Rotates every key of the node in `data_dir`, which must not be running.
pub fn rotate(data_dir: &Path) -> anyhow::Result<()> {
    let lock_path = data_dir.join("run/outpost.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| {
            format!(
                "cannot open {} (is this a node's data dir?)",
                lock_path.display()
            )
        })?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "the node on {} is running: stop it first (keys are rotated with the node stopped)",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).context("cannot lock the data dir");
        }
    }
    // Services run on their own (`outpost run`) hold their instance's lock: none may.
    let mut held = vec![lock];
    for path in entries(&data_dir.join("run")) {
        if path.extension().is_some_and(|e| e == "lock") && path != lock_path {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            match f.try_lock() {
                Ok(()) => held.push(f),
                Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                    "a service of the node is running ({} is held): stop it first",
                    path.display()
                ),
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                }
            }
        }
    }
    let steps = plan(data_dir);
    if steps.is_empty() {
        anyhow::bail!("no keys under {}", data_dir.join("secrets").display());
    }
    for (i, step) in steps.iter().enumerate() {
        let name = step.key.file_name().unwrap_or_default().to_string_lossy();
        let (old, new) = outpost_storage::rotating_secret(&step.key)
            .with_context(|| format!("cannot read {name} or make its successor"))?;
        let mut done = Vec::new();
        for protects in &step.protects {
            done.push(match protects {
                Protects::Db(db) => {
                    let (old, new) = (
                        outpost_storage::Key::from_bytes(old),
                        outpost_storage::Key::from_bytes(new),
                    );
                    outpost_storage::rekey_db(db, &old, &new)
                        .with_context(|| format!("cannot re-encrypt {}", db.display()))?;
                    db.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                }
                Protects::Queues(dirs) => {
                    let mut records = 0;
                    for dir in dirs {
                        records += outpost_queue::rekey(dir, &old, &new)
                            .with_context(|| format!("cannot re-encrypt {}", dir.display()))?;
                    }
                    format!("{} queue(s), {records} record(s)", dirs.len())
                }
                Protects::Blobs(blobs) => {
                    let mut damaged = 0;
                    for blob in blobs {
                        // A blob that opens under neither key is unreadable already: it
                        // must not hold the rotation (and so the node) back.
                        if let Err(e) = outpost_ota::blob::rekey(blob, &old, &new) {
                            eprintln!(
                                "warning: {} left as it is (damaged: {e}); OTA will refuse it",
                                blob.display()
                            );
                            damaged += 1;
                        }
                    }
                    format!("{} artifact(s) ({damaged} damaged)", blobs.len())
                }
            });
        }
        let done = done.join(", ");
        outpost_storage::finish_rotation(&step.key)
            .with_context(|| format!("cannot put the new {name} in place"))?;
        // A line per key as it is done: the progress of a rotation of many databases.
        println!(
            "[{}/{}] rotated {name}: {done} re-encrypted",
            i + 1,
            steps.len()
        );
    }
    println!(
        "Every key rotated ({}); the old keys are gone.",
        steps.len()
    );
    drop(held);
    Ok(())
}
