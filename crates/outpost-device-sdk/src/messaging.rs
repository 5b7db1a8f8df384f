//! The device service on the bus: command requests in, responses out, and metadata's system
//! events followed so the catalog stays current without polling.
//!
//! Command requests arrive on `<base>/device/command/request/<service>/<device>/<command>/<get|set>`
//! with the request ID in the envelope, `ds-pushevent`/`ds-returnevent` in its query
//! parameters and, for a SET, the settings as payload. The answer goes to
//! `<base>/response/<service>/<requestId>`: an `EventResponse` or `BaseResponse` with
//! `errorCode` 0, or the error message with `errorCode` 1.

use std::collections::HashMap;

use base64::Engine as _;
use outpost_bus::metadata::Change;
use outpost_bus::{Bus, Delivery};
use outpost_contracts::common::BaseResponse;
use outpost_contracts::envelope::Envelope;
use outpost_contracts::event::{EventResponse, NumericMode};
use outpost_contracts::metadata::AdminState;
use outpost_contracts::system_event::{
    ACTION_DELETE, SystemEvent, TYPE_DEVICE, TYPE_DEVICE_PROFILE, TYPE_DEVICE_SERVICE,
    TYPE_PROVISION_WATCHER,
};
use outpost_contracts::topics;
use outpost_kit::{ApiError, Shutdown, Stage};
use tokio::sync::broadcast;

use crate::command;
use crate::command::get_options;
use crate::sdk::Sdk;

/// Subscribes to command requests and system events, and follows them in tasks of the
/// service.
pub(crate) async fn follow(sdk: &Sdk, bus: &Bus) {
    let base = bus.base_topic().to_string();
    let tasks = &sdk.context().tasks;
    match bus
        .subscribe(&topics::device_command_requests(&base, sdk.name()))
        .await
    {
        Ok(rx) => {
            let (sdk, bus) = (sdk.clone(), bus.clone());
            tasks.spawn("bus-commands", Stage::Background, move |stop| {
                serve_commands(sdk, bus, rx, stop)
            });
        }
        Err(e) => tracing::error!(error = %e, "cannot receive command requests from the bus"),
    }
    let (sdk, changes) = (sdk.clone(), sdk.view().changes());
    tasks.spawn("metadata-changes", Stage::Background, move |stop| {
        follow_metadata(sdk, changes, stop)
    });
}

async fn serve_commands(
    sdk: Sdk,
    bus: Bus,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Delivery>,
    stop: Shutdown,
) {
    loop {
        let d = tokio::select! {
            () = stop.wait() => return,
            d = rx.recv() => d,
        };
        let Some(d) = d else { return };
        let Some(env) = bus.decode::<serde_json::Value>(&d) else {
            continue;
        };
        let (sdk2, bus) = (sdk.clone(), bus.clone());
        // Each request runs on its own, so a slow device does not hold up the others.
        sdk.context().tasks.spawn_child(async move {
            let correlation = if env.correlation_id.is_empty() {
                env.request_id.clone()
            } else {
                env.correlation_id.clone()
            };
            outpost_kit::request_id::scope(correlation.as_str().into(), async move {
                answer(&sdk2, &bus, &d.topic, env, &correlation).await;
            })
            .await;
        });
    }
}

/// `<device>/<command>/<method>` of a request topic.
fn request_parts<'a>(topic: &'a str, prefix: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let rest = topic.strip_prefix(prefix)?;
    let mut it = rest.split('/');
    let (device, command, method) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || device.is_empty() || command.is_empty() {
        return None;
    }
    Some((device, command, method))
}

async fn answer(
    sdk: &Sdk,
    bus: &Bus,
    topic: &str,
    env: Envelope<serde_json::Value>,
    correlation: &str,
) {
    let prefix = format!(
        "{}/device/command/request/{}/",
        bus.base_topic(),
        sdk.name()
    );
    if env.request_id.is_empty() {
        bus.invalid(
            "no_request_id",
            topic,
            "command request without a requestID",
        );
        return;
    }
    let result = match request_parts(topic, &prefix) {
        None => Err(ApiError::bad_request(format!(
            "malformed command request topic '{topic}'"
        ))),
        Some((device, cmd, method)) => execute(sdk, device, cmd, method, &env).await,
    };
    let mut reply = match result {
        Ok(payload) => Envelope::new(payload, correlation, bus.encoding()),
        Err(e) => {
            let mut r = Envelope::new(
                serde_json::Value::String(e.message.clone()),
                correlation,
                bus.encoding(),
            );
            r.error_code = 1;
            r
        }
    };
    reply.request_id = env.request_id.clone();
    let response_topic = topics::response(bus.base_topic(), sdk.name(), &env.request_id);
    match reply.encode(bus.encoding()) {
        Ok(bytes) => {
            if let Err(e) = bus.publish_raw(&response_topic, bytes).await {
                tracing::warn!(error = %e, "cannot send a command response");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode a command response"),
    }
}

async fn execute(
    sdk: &Sdk,
    device: &str,
    cmd: &str,
    method: &str,
    env: &Envelope<serde_json::Value>,
) -> Result<serde_json::Value, ApiError> {
    let q: HashMap<String, String> = env
        .query_params
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match method {
        "get" => {
            let opts = get_options(&q)?;
            let event = command::get(sdk, device, cmd, opts).await?;
            if !opts.return_event {
                return Ok(serde_json::Value::Null);
            }
            serde_json::to_value(EventResponse {
                base: BaseResponse::new(200),
                event: event.to_json(NumericMode::Strings),
            })
            .map_err(ApiError::internal)
        }
        "set" => {
            let settings = settings_of(&env.payload)?;
            command::set(sdk, device, cmd, &settings).await?;
            Ok(serde_json::Value::Null)
        }
        other => Err(ApiError::bad_request(format!(
            "unknown command method '{other}' (get or set)"
        ))),
    }
}

/// The settings of a SET: a JSON object, or (older EdgeX publishers) base64 of one.
fn settings_of(
    payload: &serde_json::Value,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    match payload {
        serde_json::Value::Object(m) => Ok(m.clone()),
        serde_json::Value::String(s) => base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or_else(|| ApiError::bad_request("SET payload is not a JSON object")),
        _ => Err(ApiError::bad_request("SET payload is not a JSON object")),
    }
}

/// Applies metadata's changes to the catalog. One that cannot be applied now (metadata
/// unreachable), or changes that may have been missed, make the devices be loaded again
/// (one reload at a time).
async fn follow_metadata(sdk: Sdk, mut changes: broadcast::Receiver<Change>, stop: Shutdown) {
    let mut reload = tokio::task::JoinSet::new();
    loop {
        let change = tokio::select! {
            () = stop.wait() => return,
            c = changes.recv() => c,
        };
        while reload.try_join_next().is_some() {}
        let again = match change {
            Ok(Change::Event(ev)) => match apply(&sdk, &ev).await {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow a metadata change; reloading devices");
                    true
                }
            },
            Ok(Change::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => true,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if again && reload.is_empty() {
            let sdk = sdk.clone();
            reload.spawn(async move { reload_until_done(&sdk).await });
        }
    }
}

async fn reload_until_done(sdk: &Sdk) {
    let mut backoff = outpost_kit::backoff::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    );
    let shutdown = sdk.context().shutdown.clone();
    while sdk.load_all().await.is_err() {
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn apply(sdk: &Sdk, ev: &SystemEvent) -> Result<(), outpost_kit::client::CallError> {
    let Some(name) = ev.object_name() else {
        return Ok(());
    };
    let id = ev.details.get("id").and_then(|v| v.as_str()).unwrap_or("");
    match ev.kind.as_str() {
        TYPE_DEVICE => {
            // The device may have been renamed or moved to another service: whatever was
            // held under its id goes, then the current version is loaded if it is ours.
            let held = if id.is_empty() {
                None
            } else {
                sdk.catalog().name_of_id(id)
            };
            if let Some(old) = held.filter(|old| old != name) {
                sdk.drop_device(&old).await;
            }
            if ev.action == ACTION_DELETE {
                sdk.drop_device(name).await;
                return Ok(());
            }
            let ours = ev.owner == sdk.name() || sdk.device(name).is_some();
            if !ours {
                return Ok(());
            }
            match sdk.view().device(name).await.current()? {
                Some(device) => sdk.load_device((*device).clone()).await?,
                None => sdk.drop_device(name).await,
            }
        }
        TYPE_DEVICE_PROFILE if ev.action != ACTION_DELETE => {
            sdk.reload_profile(name).await?;
        }
        TYPE_DEVICE_SERVICE if name == sdk.name() => {
            if let Some(s) = sdk.metadata().device_service(name).await? {
                let locked = s.admin_state == AdminState::Locked;
                let mut c = sdk.catalog_mut();
                if c.service_locked != locked {
                    tracing::info!(locked, "device service admin state changed");
                }
                c.service_locked = locked;
            }
        }
        TYPE_PROVISION_WATCHER => {}
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics() {
        let p = "edgex/device/command/request/device-virtual/";
        assert_eq!(
            request_parts("edgex/device/command/request/device-virtual/d1/Int8/get", p),
            Some(("d1", "Int8", "get"))
        );
        assert_eq!(
            request_parts("edgex/device/command/request/device-virtual/d1/get", p),
            None
        );
        assert_eq!(
            request_parts("edgex/device/command/request/device-virtual/d1/a/b/get", p),
            None
        );
    }

    #[test]
    fn set_payloads() {
        let m = settings_of(&serde_json::json!({"a": "1"})).unwrap();
        assert_eq!(m.get("a"), Some(&serde_json::json!("1")));
        let b64 = base64::engine::general_purpose::STANDARD.encode(br#"{"a":"2"}"#);
        let m = settings_of(&serde_json::Value::String(b64)).unwrap();
        assert_eq!(m.get("a"), Some(&serde_json::json!("2")));
        assert!(settings_of(&serde_json::json!([1])).is_err());
    }
}
