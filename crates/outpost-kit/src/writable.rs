//! Runtime configuration through core-keeper, as EdgeX's `Writable` sections.
//!
//! A service declares the settings it can change while it runs as one serializable struct
//! with EdgeX's names (`PersistData`, `ProfileChange/StrictDeviceProfileDeletes`, ...) and
//! asks for it with [`Start::writable`](crate::Start::writable); every service also has
//! `LogLevel`, which the kit applies itself. The kit keeps them in core-keeper under
//! `edgex/v4/<service>/Writable/`:
//!
//! 1. on start, the keys missing there are written from the node's configuration (a first
//!    start seeds them all; a setting added by an upgrade is added); from then on
//!    core-keeper's values win over the configuration file, as in EdgeX;
//! 2. the keys are watched by a long-poll on core-keeper's change index, and a change is
//!    applied at once: parsed as the type of the setting it names, checked by the
//!    service's own validation ([`Settings::check`]), then taken, or refused with a
//!    warning and the value in force kept. A bad value never stops the service;
//! 3. `GET /api/v3/config` shows the values in force under `Writable`.
//!
//! While core-keeper cannot be reached the values in force stay; the watch resumes when
//! it answers again.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_contracts::registry::{KeyValue, KvResponse};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::shutdown::Shutdown;

/// The key every service has: its log filter (`INFO`, `DEBUG`, or a filter such as
/// `info,outpost_core_data=debug`).
pub const LOG_LEVEL: &str = "LogLevel";

/// The header core-keeper puts its key/value change index in.
const INDEX_HEADER: &str = "x-outpost-kv-index";

/// How long one watch waits for a change before asking again.
const WAIT_MS: u64 = 30_000;

/// A service's writable settings.
pub trait Settings:
    Serialize + DeserializeOwned + Clone + PartialEq + Send + Sync + std::fmt::Debug + 'static
{
    /// Checks a candidate; an error refuses the change that made it.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The settings in force; cheap to clone.
#[derive(Clone, Debug)]
pub struct Live<W> {
    rx: watch::Receiver<W>,
}

impl<W: Clone> Live<W> {
    /// Settings that never change (tests, and services run without core-keeper).
    pub fn fixed(value: W) -> Self {
        Self {
            rx: watch::channel(value).1,
        }
    }

    /// The values in force now.
    pub fn get(&self) -> W {
        self.rx.borrow().clone()
    }

    /// A receiver that wakes on each change.
    pub fn subscribe(&self) -> watch::Receiver<W> {
        self.rx.clone()
    }
}

/// One service's section, without its type.
trait Section: Send + Sync {
    fn values(&self) -> Value;
    /// Takes `candidate` if it reads as the settings and passes their check.
    fn set(&self, candidate: Value) -> Result<(), String>;
}

struct Typed<W> {
    tx: watch::Sender<W>,
}

impl<W: Settings> Section for Typed<W> {
    fn values(&self) -> Value {
        serde_json::to_value(&*self.tx.borrow()).unwrap_or(Value::Null)
    }

    fn set(&self, candidate: Value) -> Result<(), String> {
        let w: W = serde_json::from_value(candidate).map_err(|e| e.to_string())?;
        w.check()?;
        self.tx.send_if_modified(|cur| {
            let changed = *cur != w;
            *cur = w;
            changed
        });
        Ok(())
    }
}

/// The writable settings of one process: the service's section, once it declared one.
#[derive(Clone, Default)]
pub struct Writable {
    section: Arc<Mutex<Option<Arc<dyn Section>>>>,
}

impl std::fmt::Debug for Writable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writable")
            .field("values", &self.values())
            .finish()
    }
}

impl Writable {
    /// Declares the service's section with the values of its configuration file.
    pub fn declare<W: Settings>(&self, initial: W) -> Live<W> {
        let (tx, rx) = watch::channel(initial);
        *self.lock() = Some(Arc::new(Typed { tx }));
        Live { rx }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<dyn Section>>> {
        self.section
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn own(&self) -> Option<Arc<dyn Section>> {
        self.lock().clone()
    }

    /// Every writable value in force, `LogLevel` included, as a JSON object.
    pub fn values(&self) -> Value {
        let mut values = match self.own().map(|s| s.values()) {
            Some(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let level = crate::telemetry::log_level();
        if !level.is_empty() {
            values.insert(LOG_LEVEL.into(), Value::String(level));
        }
        Value::Object(values)
    }

    /// Applies one stored value (`key` relative to `Writable/`, `text` as core-keeper
    /// keeps it). `Ok(true)` when it changed what is in force.
    pub fn apply(&self, key: &str, text: &str) -> Result<bool, String> {
        if key == LOG_LEVEL {
            return crate::telemetry::set_log_level(text);
        }
        let section = self
            .own()
            .ok_or_else(|| format!("'{key}' is not a writable setting of this service"))?;
        let mut candidate = section.values();
        let before = candidate.clone();
        let leaf = leaf_mut(&mut candidate, key)
            .ok_or_else(|| format!("'{key}' is not a writable setting of this service"))?;
        *leaf = typed_like(leaf, text)?;
        if candidate == before {
            return Ok(false);
        }
        section.set(candidate)?;
        Ok(true)
    }
}

/// The leaf at `a/b/c` in a JSON object, when there is one.
fn leaf_mut<'a>(value: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    let mut at = value;
    for part in key.split('/') {
        at = at.as_object_mut()?.get_mut(part)?;
    }
    (!at.is_object()).then_some(at)
}

/// `text` read as the type of `like`: EdgeX's stores keep every value as text.
fn typed_like(like: &Value, text: &str) -> Result<Value, String> {
    let t = text.trim();
    match like {
        Value::Bool(_) => match t.to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("'{text}' is not true or false")),
        },
        Value::Number(n) if n.is_u64() => t
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| format!("'{text}' is not a whole number of at least 0")),
        Value::Number(n) if n.is_i64() => t
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("'{text}' is not a whole number")),
        Value::Number(_) => t
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("'{text}' is not a number")),
        Value::String(_) => Ok(Value::String(text.to_string())),
        _ => serde_json::from_str(t).map_err(|e| format!("'{text}' is not JSON: {e}")),
    }
}

/// `value`'s leaves as `a/b/c` → text, as core-keeper keeps them.
fn flat(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}/{k}")
                };
                flat(&key, v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        Value::Null => {}
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Keeps a process's writable settings in step with core-keeper (see the module
/// documentation).
pub struct Watcher {
    writable: Writable,
    url: String,
    client: reqwest::Client,
    seeded: bool,
    /// core-keeper's change index last seen: the next read waits for a change after it.
    index: Option<u64>,
    /// What was said about a stored value, so a bad one is reported once, not per wake.
    reported: HashSet<(String, String)>,
}

impl Watcher {
    /// For `service` (its name, not an instance's), with core-keeper at `registry_url`.
    pub fn new(writable: Writable, registry_url: &str, service: &str) -> Self {
        Self {
            writable,
            url: format!("{registry_url}/api/v3/kvs/key/edgex/v4/{service}/Writable"),
            client: crate::http::client(Duration::from_millis(WAIT_MS + 10_000)),
            seeded: false,
            index: None,
            reported: HashSet::new(),
        }
    }

    /// One round: reads the stored values (after a change, once the first round is done),
    /// seeds what is missing on the first, applies what changed.
    pub async fn step(&mut self) -> Result<(), String> {
        let mut req =
            crate::http::correlated(self.client.get(&self.url)).query(&[("plaintext", "true")]);
        if let Some(i) = self.index {
            req = req.query(&[
                ("waitIndex", i.to_string()),
                ("waitMs", WAIT_MS.to_string()),
            ]);
        }
        let (index, stored) = read(req).await?;
        if !self.seeded {
            let mut missing = BTreeMap::new();
            flat("", &self.writable.values(), &mut missing);
            missing.retain(|k, _| !stored.contains_key(k));
            match seed(&self.client, &self.url, &missing).await {
                Ok(()) => self.seeded = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot seed the writable settings in core-keeper");
                }
            }
        }
        for (key, text) in &stored {
            match self.writable.apply(key, text) {
                Ok(true) => {
                    tracing::info!(setting = %format!("Writable/{key}"), value = %text, "writable setting applied");
                    // A bad value set again later is reported again.
                    self.reported.retain(|(k, _)| k != key);
                }
                Ok(false) => {}
                Err(e) => {
                    if self.reported.insert((key.clone(), text.clone())) {
                        tracing::warn!(setting = %format!("Writable/{key}"), value = %text, error = %e, "writable setting refused; the value in force stays");
                    }
                }
            }
        }
        if index.is_none() {
            // Without an index (not Outpost's core-keeper) read again after a wait instead.
            tokio::time::sleep(Duration::from_millis(WAIT_MS)).await;
        }
        self.index = index;
        Ok(())
    }

    /// Rounds until `stop`; while core-keeper cannot be reached the values in force stay.
    pub async fn run(mut self, stop: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let result = tokio::select! {
                () = stop.wait() => return,
                r = self.step() => r,
            };
            match result {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    let delay = backoff.next_delay();
                    if backoff.attempts() == 5 {
                        tracing::warn!(error = %e, "core-keeper unreachable; the writable settings in force stay");
                    }
                    tokio::select! {
                        () = stop.wait() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Reads the stored settings: the change index and `key below Writable/` → text.
async fn read(
    req: reqwest::RequestBuilder,
) -> Result<(Option<u64>, BTreeMap<String, String>), String> {
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let index = resp
        .headers()
        .get(INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok((index, BTreeMap::new()));
    }
    if !resp.status().is_success() {
        return Err(format!("core-keeper answered {}", resp.status()));
    }
    let body: KvResponse<KeyValue> = resp.json().await.map_err(|e| e.to_string())?;
    let stored = body
        .response
        .into_iter()
        .filter_map(|kv| {
            let (_, key) = kv.key.split_once("/Writable/")?;
            let text = match kv.value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            Some((key.to_string(), text))
        })
        .collect();
    Ok((index, stored))
}

/// Writes the settings core-keeper does not have yet.
async fn seed(
    client: &reqwest::Client,
    url: &str,
    missing: &BTreeMap<String, String>,
) -> Result<(), String> {
    for (key, text) in missing {
        let resp = crate::http::correlated(client.put(format!("{url}/{key}")))
            .json(&serde_json::json!({ "apiVersion": "v3", "value": text }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("core-keeper answered {} for {key}", resp.status()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Clone, PartialEq, Debug)]
    #[serde(rename_all = "PascalCase")]
    struct S {
        persist_data: bool,
        max_result_count: u64,
        interval: String,
        profile_change: Pc,
    }

    #[derive(Serialize, serde::Deserialize, Clone, PartialEq, Debug)]
    #[serde(rename_all = "PascalCase")]
    struct Pc {
        strict_device_profile_deletes: bool,
    }

    impl Settings for S {
        fn check(&self) -> Result<(), String> {
            if self.max_result_count == 0 {
                return Err("MaxResultCount must be at least 1".into());
            }
            outpost_contracts::metadata::parse_interval(&self.interval).map(|_| ())
        }
    }

    fn section() -> (Writable, Live<S>) {
        let w = Writable::default();
        let live = w.declare(S {
            persist_data: true,
            max_result_count: 1024,
            interval: "5s".into(),
            profile_change: Pc {
                strict_device_profile_deletes: false,
            },
        });
        (w, live)
    }

    #[test]
    fn values_are_applied_by_the_type_of_their_setting() {
        let (w, live) = section();
        assert_eq!(w.apply("PersistData", "FALSE"), Ok(true));
        assert_eq!(w.apply("MaxResultCount", " 50 "), Ok(true));
        assert_eq!(
            w.apply("ProfileChange/StrictDeviceProfileDeletes", "true"),
            Ok(true)
        );
        assert_eq!(w.apply("Interval", "1m"), Ok(true));
        assert_eq!(
            w.apply("Interval", "1m"),
            Ok(false),
            "unchanged is not a change"
        );
        let now = live.get();
        assert!(!now.persist_data);
        assert_eq!(now.max_result_count, 50);
        assert!(now.profile_change.strict_device_profile_deletes);
        assert_eq!(now.interval, "1m");
    }

    #[test]
    fn bad_values_are_refused_and_the_value_in_force_kept() {
        let (w, live) = section();
        let before = live.get();
        for (key, text) in [
            ("PersistData", "yes"),
            ("MaxResultCount", "-1"),
            ("MaxResultCount", "0"),
            ("MaxResultCount", "99999999999999999999999"),
            ("Interval", "99999999999999999999h"),
            ("Interval", "soon"),
            ("ProfileChange", "true"),
            ("NoSuchSetting", "1"),
        ] {
            assert!(w.apply(key, text).is_err(), "{key} = {text} taken");
        }
        assert_eq!(live.get(), before);
    }

    #[test]
    fn values_are_listed_flat_with_the_log_level() {
        let (w, _live) = section();
        let mut out = BTreeMap::new();
        flat("", &w.values(), &mut out);
        assert_eq!(out["PersistData"], "true");
        assert_eq!(out["MaxResultCount"], "1024");
        assert_eq!(out["ProfileChange/StrictDeviceProfileDeletes"], "false");
    }
}
