//! Commands over the bus: requests to core-command are forwarded to the device's service
//! and its answer is passed back under core-command's response topic.
//!
//! Unlike EdgeX, a request that times out or cannot be forwarded is answered (an error
//! envelope), so a requester never waits for nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use outpost_bus::{Bus, Delivery, Options};
use outpost_contracts::envelope::Envelope;
use outpost_contracts::metadata::AdminState;
use outpost_contracts::topics;
use outpost_kit::client::Metadata;
use outpost_kit::{ApiError, Context, Shutdown};
use tokio::sync::oneshot;

use crate::SERVICE;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Bytes>>>>;

/// Forwards command requests from the bus until `stop`; requests in progress are answered
/// or end with it.
pub async fn run(ctx: Context, metadata: Metadata, timeout: Duration, stop: Shutdown) {
    let opts = Options::plain(format!("outpost-{}", ctx.service_id()));
    let Ok(bus) = Bus::connect(&ctx.common.bus, &ctx.data_dir, SERVICE, opts, &stop).await else {
        return;
    };
    let base = bus.base_topic().to_string();
    let pending: Pending = Arc::default();
    let responses = match bus.subscribe(&topics::all_responses(&base)).await {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(error = %e, "cannot receive device service responses");
            return;
        }
    };
    // Everything this task starts is owned here and ends with it.
    let mut running = tokio::task::JoinSet::new();
    running.spawn(route_responses(
        bus.clone(),
        Arc::clone(&pending),
        responses,
    ));
    let mut requests = match bus.subscribe(&topics::core_command_requests(&base)).await {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(error = %e, "cannot receive command requests from the bus");
            return;
        }
    };
    tracing::info!("forwarding command requests from the bus");
    loop {
        let d = tokio::select! {
            () = stop.wait() => break,
            d = requests.recv() => d,
        };
        let Some(d) = d else { break };
        while running.try_join_next().is_some() {}
        let (bus, md, pending) = (bus.clone(), metadata.clone(), Arc::clone(&pending));
        running.spawn(async move { handle(&bus, &md, &pending, d, timeout).await });
    }
    bus.disconnect().await;
}

async fn route_responses(
    bus: Bus,
    pending: Pending,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Delivery>,
) {
    let own = topics::responses_prefix(bus.base_topic(), SERVICE);
    while let Some(d) = rx.recv().await {
        if d.topic.starts_with(&own) {
            continue;
        }
        let Some(rid) = d.topic.rsplit('/').next() else {
            continue;
        };
        let waiter = pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(rid);
        if let Some(tx) = waiter {
            let _ = tx.send(d.payload.clone());
        }
    }
}

async fn handle(bus: &Bus, md: &Metadata, pending: &Pending, d: Delivery, timeout: Duration) {
    let Some(env) = bus.decode::<serde_json::Value>(&d) else {
        return;
    };
    if env.request_id.is_empty() {
        bus.invalid(
            "no_request_id",
            &d.topic,
            "command request without a requestID",
        );
        return;
    }
    let reply_topic = topics::response(bus.base_topic(), SERVICE, &env.request_id);
    let answer = match forward(bus, md, pending, &d.topic, &env, timeout).await {
        Ok(bytes) => bytes.to_vec(),
        Err(e) => {
            let mut r = Envelope::new(
                serde_json::Value::String(e.message),
                env.correlation_id.clone(),
                bus.encoding(),
            );
            r.request_id = env.request_id.clone();
            r.error_code = 1;
            match r.encode(bus.encoding()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode an error response");
                    return;
                }
            }
        }
    };
    if let Err(e) = bus.publish_raw(&reply_topic, answer).await {
        tracing::warn!(error = %e, "cannot send a command response");
    }
}

async fn forward(
    bus: &Bus,
    md: &Metadata,
    pending: &Pending,
    topic: &str,
    env: &Envelope<serde_json::Value>,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let prefix = topics::core_command_requests_prefix(bus.base_topic());
    let parts: Vec<&str> = topic
        .strip_prefix(&prefix)
        .map(|r| r.split('/').collect())
        .unwrap_or_default();
    let [device, command, method] = parts[..] else {
        return Err(ApiError::bad_request(format!(
            "invalid request topic '{topic}': expected .../<device>/<command>/<get|set>"
        )));
    };
    let method = method.to_ascii_lowercase();
    if method != "get" && method != "set" {
        return Err(ApiError::bad_request(format!(
            "unknown command method '{method}' (get or set)"
        )));
    }
    let q: HashMap<String, String> = env.query_params.clone().into_iter().collect();
    crate::check_flags(&q)?;
    let dev = md
        .device(device)
        .await
        .map_err(|e| e.to_api_error())?
        .ok_or_else(|| ApiError::not_found(format!("device '{device}' not found")))?;
    if dev.admin_state == AdminState::Locked {
        return Err(ApiError::locked(format!("device '{device}' is locked")));
    }
    let out_topic = topics::command_request(
        bus.base_topic(),
        &dev.service_name,
        device,
        command,
        &method,
    );
    let bytes = env
        .encode(bus.encoding())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let (tx, rx) = oneshot::channel();
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(env.request_id.clone(), tx);
    let forget = || {
        pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&env.request_id);
    };
    if let Err(e) = bus.publish_raw(&out_topic, bytes).await {
        forget();
        return Err(ApiError::unavailable(e.to_string()));
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        _ => {
            forget();
            Err(ApiError::new(
                axum::http::StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "device service '{}' did not answer within {timeout:?}",
                    dev.service_name
                ),
            ))
        }
    }
}
