//! The embedded MQTT broker (service `mqtt-broker`): the node's message bus.
//!
//! A real MQTT 3.1.1/5 broker (the `mqtt5` crate's broker) run as one supervised service:
//! QoS 0/1/2, persistent sessions with queued messages for offline consumers, retained
//! messages, shared subscriptions. Queued messages live in memory only, so no message
//! payload ever reaches the disk unencrypted; a consumer that needs durability (core-data)
//! acknowledges each message only after committing it, and the broker redelivers what was not
//! acknowledged. Persistent sessions themselves (without messages) survive a crash: see
//! [`store`].
//!
//! Authentication: see [`auth`]. The client IDs devices hold and the persistent sessions
//! (without their messages) are kept in the broker's encrypted database ([`store`]). The
//! HTTP side serves the common routes, registers with the
//! registry, and exports the broker's statistics as metrics.

pub mod auth;
pub mod config;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use mqtt5::broker::config::{StorageBackend, StorageConfig};
use mqtt5::broker::{BrokerConfig, MqttBroker};
use outpost_kit::client::{Metadata, ServiceClient};
use outpost_kit::{Check, Context, health_probe};

pub use config::Config;

/// The service's registry ID.
pub const SERVICE: &str = "mqtt-broker";

/// Runs the broker until shutdown.
pub async fn run(ctx: Context, cfg: Config) -> anyhow::Result<()> {
    let token =
        outpost_storage::load_or_create_token(&ctx.secrets_dir(), outpost_bus::INTERNAL_SECRET)?;
    let mut bc = BrokerConfig::default().with_bind_addresses(vec![cfg.listen]);
    bc.max_clients = cfg.max_clients;
    // Bounds on what clients can make the broker hold: sessions of absent clients expire
    // after a week, retained messages are limited in number and size.
    bc.session_expiry_interval = Duration::from_secs(cfg.max_session_expiry_s);
    bc.max_retained_messages = cfg.max_retained_messages;
    bc.max_retained_message_size = cfg.max_packet_bytes;
    bc.max_packet_size = cfg.max_packet_bytes;
    bc.max_outbound_inflight = cfg.max_inflight_per_client;
    bc.sys_topics_enabled = cfg.sys_topics;
    bc.storage_config = StorageConfig {
        backend: StorageBackend::Memory,
        enable_persistence: true,
        max_queued_messages_per_client: cfg.max_queued_messages_per_client,
        max_queued_bytes_per_client: cfg.max_queued_bytes_per_client,
        ..StorageConfig::default()
    };
    let mut auth = auth::NodeAuth::new(
        outpost_bus::INTERNAL_USER.to_string(),
        token,
        cfg.allow_anonymous_loopback,
        ctx.metric("auth_failures_total"),
    )
    .with_failure_limits(
        cfg.auth_failure_burst,
        Duration::from_secs(cfg.auth_failure_refill_s),
    );
    let db = outpost_storage::Db::open(
        &ctx.storage_location(),
        &ctx.common.storage.open_options(),
        store::MIGRATIONS,
        1,
    )?;
    let mut claims_writer = None;
    if cfg.device_auth {
        let client = ServiceClient::new(ctx.registry.clone(), Duration::from_secs(3));
        let (log, rx) = tokio::sync::mpsc::channel(store::QUEUE);
        auth = auth
            .with_devices(
                Metadata::new(client),
                Duration::from_secs(cfg.device_auth_cache_s),
                &ctx.common.bus.base_topic,
            )
            .with_claims(store::load_claims(&db)?, log);
        claims_writer = Some(tokio::spawn(store::write_claims(
            db.clone(),
            rx,
            ctx.shutdown.clone(),
        )));
    }
    let auth = Arc::new(auth);
    let mut broker = MqttBroker::with_config(bc)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the MQTT broker on {}: {e}", cfg.listen))?
        .with_auth_provider(Arc::clone(&auth) as Arc<dyn mqtt5::broker::auth::AuthProvider>);
    let router = broker.router();
    // Before the broker runs: it recovers what is in its storage at start.
    let storage = broker.storage();
    let sessions_saver = match storage.clone() {
        Some(storage) => {
            auth.set_sessions(Arc::clone(&storage));
            let saved = store::restore_sessions(&db, &storage).await?;
            Some(tokio::spawn(store::save_sessions(
                db.clone(),
                storage,
                saved,
                ctx.metric("persistent_sessions_saved"),
                ctx.shutdown.clone(),
            )))
        }
        None => None,
    };
    let stop = broker.shutdown_handle();
    let stats = broker.stats();
    tracing::info!(listen = %cfg.listen, "MQTT broker listening");
    let broker_task = {
        // If the broker itself stops, the service must stop too (and be restarted), not
        // keep heartbeating an HTTP side with no bus behind it.
        let shutdown = ctx.shutdown.clone();
        tokio::spawn(async move {
            let r = broker.run().await;
            if !shutdown.is_triggered() {
                tracing::error!(result = ?r.as_ref().map(|_| ()), "the MQTT broker stopped");
                shutdown.trigger();
            }
            r
        })
    };

    if cfg.device_auth {
        let ctx = ctx.clone();
        tokio::spawn(async move { follow_devices(ctx, auth, router, storage).await });
    }

    let exporter = {
        let ctx = ctx.clone();
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let connected = ctx.metric("clients_connected");
            let received = ctx.metric("publish_received_total");
            let sent = ctx.metric("publish_sent_total");
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = ctx.shutdown.wait() => return,
                    _ = tick.tick() => {}
                }
                metrics::gauge!(connected.clone())
                    .set(stats.clients_connected.load(Ordering::Relaxed) as f64);
                metrics::counter!(received.clone())
                    .absolute(stats.publish_received.load(Ordering::Relaxed));
                metrics::counter!(sent.clone())
                    .absolute(stats.publish_sent.load(Ordering::Relaxed));
            }
        })
    };

    let listen = cfg.listen;
    let health = health_probe(move || async move {
        match tokio::net::TcpStream::connect(listen).await {
            Ok(_) => vec![Check::ok("mqtt-listener")],
            Err(e) => vec![Check::failed("mqtt-listener", e.to_string())],
        }
    });
    let router = ctx.router(Router::new(), health);
    let served = ctx.serve(router, cfg.port).await;

    // Services are stopped before the broker, so its queues are already drained.
    stop.shutdown();
    exporter.abort();
    match tokio::time::timeout(Duration::from_secs(5), broker_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "broker stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "broker task failed"),
        Err(_) => tracing::warn!("broker did not stop within 5 s"),
    }
    for w in [claims_writer, sessions_saver].into_iter().flatten() {
        if tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .is_err()
        {
            tracing::warn!("the broker's database not written within 5 s");
        }
    }
    served?;
    Ok(())
}

/// Follows core-metadata's device events: when a device's secret changed or was removed,
/// or the device was deleted, connections made with a secret that is no longer its own are
/// dropped from routing with their subscriptions, so they receive nothing more (publishing
/// is refused by the credential check already).
async fn follow_devices(
    ctx: Context,
    auth: Arc<auth::NodeAuth>,
    router: Arc<mqtt5::broker::router::MessageRouter>,
    storage: Option<Arc<mqtt5::broker::storage::DynamicStorage>>,
) {
    use mqtt5::broker::storage::StorageBackend as _;
    use outpost_contracts::system_event::{ACTION_DELETE, SystemEvent, TYPE_DEVICE};
    let Some((bus, mut rx)) = outpost_bus::metadata_events(
        &ctx,
        SERVICE,
        "connections made with a removed secret keep their subscriptions",
    )
    .await
    else {
        return;
    };
    loop {
        let d = tokio::select! {
            () = ctx.shutdown.wait() => return,
            d = rx.recv() => match d {
                Some(d) => d,
                None => {
                    tracing::error!("stopped following device changes: the subscription ended");
                    return;
                }
            },
        };
        let Some(env) = bus.decode::<SystemEvent>(&d) else {
            continue;
        };
        let ev = env.payload;
        if ev.kind != TYPE_DEVICE {
            continue;
        }
        let Some(name) = ev.object_name() else {
            continue;
        };
        for (client_id, fp) in auth.revoked(name, ev.action == ACTION_DELETE).await {
            // Reconnected with a valid secret meanwhile: that connection stays.
            if ev.action != ACTION_DELETE && !auth.still_made_with(&client_id, &fp) {
                continue;
            }
            if router.is_connected(&client_id).await {
                tracing::info!(
                    device = name,
                    client_id,
                    "device credential no longer valid; its connection gets nothing more"
                );
            }
            router.unregister_client(&client_id).await;
            // Its stored session goes too, or a restart of the broker would restore the
            // subscriptions just cut off.
            if let Some(storage) = &storage
                && let Err(e) = storage.remove_session(&client_id).await
            {
                tracing::warn!(client_id, error = %e, "cannot remove a revoked session");
            }
        }
    }
}
