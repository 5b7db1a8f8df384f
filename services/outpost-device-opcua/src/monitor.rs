//! AutoEvents served by OPC UA subscriptions: an `onChange` autoEvent whose resources are
//! all variables becomes monitored items (sampled at the autoEvent's interval, with an
//! absolute deadband of its `onChangeThreshold`), so changes arrive without polling.
//!
//! - One `Monitor` per endpoint with such items: a task that holds one subscription on
//!   the endpoint's session. When the session is lost it counts a failure for each device
//!   there (DOWN after `allowed_fails`, as a failed read would), connects again with
//!   backoff, and makes the subscription afresh; when the wanted items change it replaces
//!   the subscription. No other code makes subscriptions, so there is never a second one.
//! - The subscription's callback hands each notification message, whole, to a bounded
//!   channel (a full channel drops it and counts
//!   `outpost_device_opcua_notifications_dropped_total`); `deliver` turns it into one
//!   event per (device, autoEvent source), dated by the values' source timestamps.
//! - A value equal to the last one published for its item, with the same source timestamp,
//!   is not published again: a new subscription's first values after a reconnect to a
//!   server that kept running are what was already sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore, Session};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeNotification, DataChangeTrigger, DataValue,
    DeadbandType, ExtensionObject, MonitoredItemCreateRequest, MonitoringMode,
    MonitoringParameters, NotificationMessage, ReadValueId, TimestampsToReturn, Variant,
};
use outpost_contracts::metadata::{AutoEvent, parse_interval};
use outpost_device_sdk::command::resolve;
use outpost_device_sdk::{DeviceRef, PushError, Sdk};
use outpost_kit::Shutdown;
use tokio::sync::{mpsc, watch};

use crate::address::{self, NodeRef, Target};
use crate::endpoint::Endpoint;
use crate::{Links, convert};

/// Notification messages waiting to be turned into events, across every endpoint.
pub(crate) const QUEUE: usize = 1024;

/// The fastest publishing interval asked of a server.
const MIN_PUBLISH: Duration = Duration::from_millis(50);

/// One monitored item a device's autoEvent wants.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub device: String,
    /// The autoEvent's source: the resource, or the command the resource belongs to.
    pub source: String,
    pub resource: String,
    pub node: NodeRef,
    pub sampling: Duration,
    /// Absolute deadband (`onChangeThreshold`); 0 publishes every change.
    pub deadband: f64,
}

/// The items `ae` of `d` becomes, or `None` when it stays a periodic read by the SDK: it is
/// not `onChange`, its interval is unusable, or one of its resources is a method.
pub fn items(d: &DeviceRef, ae: &AutoEvent) -> Option<Vec<Item>> {
    if !ae.on_change {
        return None;
    }
    let sampling = parse_interval(&ae.interval).ok().filter(|i| !i.is_zero())?;
    let (targets, rw) = resolve(d, &ae.source_name)?;
    if !rw.readable() || targets.is_empty() {
        return None;
    }
    targets
        .iter()
        .map(|t| {
            let r = outpost_device_sdk::ResourceRef {
                resource: Arc::clone(&t.resource),
            };
            match address::target(&r).ok()? {
                Target::Variable(node) => Some(Item {
                    device: d.device.name.clone(),
                    source: ae.source_name.clone(),
                    resource: r.name().to_string(),
                    node,
                    sampling,
                    deadband: ae.on_change_threshold.unwrap_or(0.0).max(0.0),
                }),
                Target::Method { .. } => None,
            }
        })
        .collect()
}

/// The task keeping one endpoint's subscription. Dropped, the task deletes the
/// subscription and ends (a session other devices still read through stays open).
pub(crate) struct Monitor {
    wanted: watch::Sender<Arc<Vec<Item>>>,
}

impl Monitor {
    pub(crate) fn start(
        links: Arc<Links>,
        endpoint: Endpoint,
        items: Vec<Item>,
        sdk: Sdk,
        sink: mpsc::Sender<Batch>,
    ) -> Self {
        let (wanted, rx) = watch::channel(Arc::new(items));
        tokio::spawn(keep(links, endpoint, rx, sdk, sink));
        Self { wanted }
    }

    /// Replaces the wanted items (the subscription is made again only when they differ).
    pub(crate) fn want(&self, items: Vec<Item>) {
        self.wanted.send_if_modified(|w| {
            if **w == items {
                return false;
            }
            *w = Arc::new(items);
            true
        });
    }
}

/// One notification message's data changes: (index into `items`, value).
pub(crate) struct Batch {
    items: Arc<Vec<Item>>,
    values: Vec<(usize, DataValue)>,
}

/// The subscription's callback: every message, whole, onto the channel.
struct Notify {
    items: Arc<Vec<Item>>,
    sink: mpsc::Sender<Batch>,
}

impl OnSubscriptionNotificationCore for Notify {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let mut values = Vec::new();
        for data in notification.notification_data.into_iter().flatten() {
            let Some(changes) = data.inner_as::<DataChangeNotification>() else {
                continue;
            };
            for n in changes.monitored_items.iter().flatten() {
                // Client handles are the items' positions plus one.
                let Some(i) = (n.client_handle as usize).checked_sub(1) else {
                    continue;
                };
                if i < self.items.len() {
                    values.push((i, n.value.clone()));
                }
            }
        }
        if values.is_empty() {
            return;
        }
        metrics::counter!("outpost_device_opcua_data_changes_total").increment(values.len() as u64);
        let batch = Batch {
            items: Arc::clone(&self.items),
            values,
        };
        if self.sink.try_send(batch).is_err() {
            metrics::counter!("outpost_device_opcua_notifications_dropped_total").increment(1);
        }
    }
}

/// Keeps a subscription to the wanted items on the endpoint's session, through session
/// losses and changes of what is wanted, until aborted or the service stops.
async fn keep(
    links: Arc<Links>,
    endpoint: Endpoint,
    mut wanted: watch::Receiver<Arc<Vec<Item>>>,
    sdk: Sdk,
    sink: mpsc::Sender<Batch>,
) {
    let stop = sdk.context().shutdown.clone();
    let mut backoff = outpost_kit::backoff::Backoff::new(
        Duration::from_millis(250),
        Duration::from_millis(links.cfg.reconnect_max_ms),
    );
    loop {
        let items = Arc::clone(&wanted.borrow_and_update());
        let devices: BTreeSet<&str> = items.iter().map(|i| i.device.as_str()).collect();
        let made = match links.session(&endpoint).await {
            Ok((session, lost)) => subscribe(&links, &session, &items, &sdk, &sink)
                .await
                .map(|id| (session, lost, id)),
            Err(e) => Err(e.to_string()),
        };
        let (session, lost, id) = match made {
            Ok(made) => made,
            Err(why) => {
                for d in &devices {
                    sdk.device_unreachable(d, &why).await;
                }
                tokio::select! {
                    () = stop.wait() => return,
                    changed = wanted.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
                continue;
            }
        };
        backoff.reset();
        let live = metrics::gauge!("outpost_device_opcua_subscriptions");
        live.increment(1.0);
        for d in &devices {
            sdk.device_reachable(d).await;
        }
        let ended = tokio::select! {
            () = stop.wait() => None,
            changed = wanted.changed() => {
                let _ = session.delete_subscription(id).await;
                changed.ok()
            }
            () = lost.wait() => {
                tracing::warn!(endpoint = %endpoint.url, "session lost; subscribing again once it is back");
                for d in &devices {
                    sdk.device_unreachable(d, "the session was lost").await;
                }
                Some(())
            }
        };
        live.decrement(1.0);
        if ended.is_none() {
            return;
        }
    }
}

/// Makes one subscription with `items` on `session`; items the server refuses (a node it
/// does not have) are logged and counted, the others kept.
async fn subscribe(
    links: &Links,
    session: &Arc<Session>,
    items: &Arc<Vec<Item>>,
    sdk: &Sdk,
    sink: &mpsc::Sender<Batch>,
) -> Result<u32, String> {
    let publish = items
        .iter()
        .map(|i| i.sampling)
        .min()
        .unwrap_or(Duration::from_secs(1))
        .max(MIN_PUBLISH);
    // Keep-alives every ~10 s whatever the interval; the server drops the subscription
    // after three missed.
    let keep_alive = u32::try_from((10_000 / publish.as_millis().max(1)).max(1)).unwrap_or(1);
    let mut requests = Vec::with_capacity(items.len());
    let mut placed = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let node_id = match links.node(session, &item.node).await {
            Ok(n) => n,
            Err(e) => {
                sdk.reject(&item.device, "bad_node", &format!("{}: {e}", item.resource));
                continue;
            }
        };
        let filter = DataChangeFilter {
            trigger: DataChangeTrigger::StatusValue,
            deadband_type: if item.deadband > 0.0 {
                DeadbandType::Absolute as u32
            } else {
                DeadbandType::None as u32
            },
            deadband_value: item.deadband,
        };
        requests.push(MonitoredItemCreateRequest {
            item_to_monitor: ReadValueId {
                node_id,
                attribute_id: AttributeId::Value as u32,
                ..Default::default()
            },
            monitoring_mode: MonitoringMode::Reporting,
            requested_parameters: MonitoringParameters {
                client_handle: u32::try_from(i + 1).unwrap_or(u32::MAX),
                sampling_interval: item.sampling.as_secs_f64() * 1000.0,
                filter: ExtensionObject::from_message(filter),
                queue_size: links.cfg.queue_size,
                discard_oldest: true,
            },
        });
        placed.push(i);
    }
    let notify = Notify {
        items: Arc::clone(items),
        sink: sink.clone(),
    };
    let id = session
        .create_subscription(publish, keep_alive * 3, keep_alive, 0, 0, true, notify)
        .await
        .map_err(|e| format!("cannot subscribe: {e}"))?;
    let created = session
        .create_monitored_items(id, TimestampsToReturn::Both, requests)
        .await
        .map_err(|e| format!("cannot monitor items: {e}"))?;
    for (i, c) in placed.iter().zip(&created) {
        if c.result.status_code.is_bad() {
            let item = &items[*i];
            sdk.reject(
                &item.device,
                "bad_node",
                &format!("resource '{}': {}", item.resource, c.result.status_code),
            );
        }
    }
    Ok(id)
}

/// When a value was taken: its source timestamp, else the server's, else now (nanoseconds).
fn origin(dv: &DataValue) -> Option<i64> {
    dv.source_timestamp
        .or(dv.server_timestamp)
        .and_then(|t| t.as_chrono().timestamp_nanos_opt())
}

/// One event being gathered: its values, and the newest origin among them.
type Pending = (Vec<(String, outpost_device_sdk::CommandValue)>, Option<i64>);

/// Turns notifications into events until the channel closes: one event per (device,
/// source) per message, each published before the next message is taken (a bus error is
/// retried with backoff until the service stops).
pub(crate) async fn deliver(sdk: Sdk, mut rx: mpsc::Receiver<Batch>) {
    let stop = sdk.context().shutdown.clone();
    // The last value published per (device, resource), with its source timestamp.
    let mut last: HashMap<(String, String), (Option<i64>, Variant)> = HashMap::new();
    while let Some(batch) = rx.recv().await {
        let mut events: BTreeMap<(&str, &str), Pending> = BTreeMap::new();
        for (i, dv) in &batch.values {
            let Some(item) = batch.items.get(*i) else {
                continue;
            };
            if let Some(status) = dv.status
                && status.is_bad()
            {
                sdk.reject(
                    &item.device,
                    "bad_status",
                    &format!("resource '{}': {status}", item.resource),
                );
                continue;
            }
            let Some(variant) = dv.value.as_ref() else {
                continue;
            };
            let Some(value) = convert::from_variant(variant) else {
                sdk.reject(
                    &item.device,
                    "bad_value",
                    &format!(
                        "resource '{}': a value of an unsupported type",
                        item.resource
                    ),
                );
                continue;
            };
            let at = origin(dv);
            let key = (item.device.clone(), item.resource.clone());
            if last.get(&key) == Some(&(at, variant.clone())) {
                continue;
            }
            last.insert(key, (at, variant.clone()));
            let e = events
                .entry((item.device.as_str(), item.source.as_str()))
                .or_default();
            e.0.push((item.resource.clone(), value));
            e.1 = e.1.max(at);
        }
        for ((device, source), (values, at)) in events {
            push(&sdk, &stop, device, source, values, at).await;
        }
    }
}

async fn push(
    sdk: &Sdk,
    stop: &Shutdown,
    device: &str,
    source: &str,
    values: Vec<(String, outpost_device_sdk::CommandValue)>,
    at: Option<i64>,
) {
    let mut delay = Duration::from_millis(50);
    loop {
        match sdk.push(device, source, values.clone(), at).await {
            Ok(_) => return,
            Err(e @ PushError::Bus(_)) => {
                tracing::warn!(device, error = %e, "cannot publish a data change; retrying");
                tokio::select! {
                    () = stop.wait() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                sdk.reject(device, e.reason(), &format!("{source}: {e}"));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_contracts::metadata::{Device, DeviceProfile};

    fn device(profile: serde_json::Value) -> DeviceRef {
        let profile: DeviceProfile = serde_json::from_value(profile).expect("profile");
        let device: Device = serde_json::from_value(serde_json::json!({
            "name": "d1", "profileName": profile.name, "serviceName": "device-opcua",
            "protocols": {"opcua": {"Endpoint": "opc.tcp://127.0.0.1:4840"}}
        }))
        .expect("device");
        DeviceRef {
            device: Arc::new(device),
            profile: Arc::new(profile),
        }
    }

    fn ae(source: &str, on_change: bool, threshold: Option<f64>) -> AutoEvent {
        serde_json::from_value(serde_json::json!({
            "sourceName": source, "interval": "250ms", "onChange": on_change,
            "onChangeThreshold": threshold
        }))
        .expect("autoEvent")
    }

    fn profile() -> serde_json::Value {
        serde_json::json!({
            "name": "p", "deviceResources": [
                {"name": "T", "properties": {"valueType": "Float64", "readWrite": "R"},
                 "attributes": {"nodeId": "ns=2;s=T"}},
                {"name": "P", "properties": {"valueType": "Float64", "readWrite": "R"},
                 "attributes": {"namespace": "2", "symbol": "P"}},
                {"name": "Add", "properties": {"valueType": "Int32", "readWrite": "R"},
                 "attributes": {"methodId": "ns=2;s=Add", "objectId": "ns=2;s=Obj"}}
            ],
            "deviceCommands": [
                {"name": "Both", "readWrite": "R", "resourceOperations": [
                    {"deviceResource": "T"}, {"deviceResource": "P"}]},
                {"name": "WithMethod", "readWrite": "R", "resourceOperations": [
                    {"deviceResource": "T"}, {"deviceResource": "Add"}]}
            ]
        })
    }

    #[test]
    fn on_change_autoevents_of_variables_become_items() {
        let d = device(profile());
        let got = items(&d, &ae("T", true, Some(0.5))).expect("subscribed");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].resource, "T");
        assert_eq!(got[0].source, "T");
        assert_eq!(got[0].sampling, Duration::from_millis(250));
        assert!((got[0].deadband - 0.5).abs() < f64::EPSILON);
        let both = items(&d, &ae("Both", true, None)).expect("subscribed");
        assert_eq!(
            both.iter().map(|i| i.resource.as_str()).collect::<Vec<_>>(),
            ["T", "P"]
        );
        assert!(both.iter().all(|i| i.source == "Both" && i.deadband == 0.0));
    }

    #[test]
    fn periodic_methods_and_unknown_sources_stay_reads() {
        let d = device(profile());
        assert!(items(&d, &ae("T", false, None)).is_none(), "not onChange");
        assert!(items(&d, &ae("Add", true, None)).is_none(), "a method");
        assert!(
            items(&d, &ae("WithMethod", true, None)).is_none(),
            "a command with a method"
        );
        assert!(items(&d, &ae("Nope", true, None)).is_none(), "unknown");
    }
}
