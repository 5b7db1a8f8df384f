//! The embedded MQTT broker (service `mqtt-broker`): the node's message bus.
//!
//! A real MQTT 3.1.1/5 broker (the `mqtt5` crate's broker) run as one supervised service:
//! QoS 0/1/2, persistent sessions with queued messages for offline consumers, retained
//! messages, shared subscriptions. A QoS 1/2 message for one of the node's durable
//! consumers is acknowledged only once it is in the broker's encrypted [`journal`] on disk,
//! and delivered again after a crash; everything else is routed from memory. A retained
//! publish is acknowledged once it is committed to the broker's database. Persistent
//! sessions themselves survive a crash too: see [`store`]; what runs before a publish is
//! routed: [`hooks`].
//!
//! MQTT over TLS, with client certificates as identities: see [`front`]. Authentication:
//! see [`auth`]. The client IDs devices hold and the persistent sessions
//! (without their messages) are kept in the broker's encrypted database ([`store`]). The
//! HTTP side serves the common routes, registers with the
//! registry, and exports the broker's statistics as metrics.

pub mod auth;
pub mod config;
pub mod front;
pub mod hooks;
pub mod journal;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use mqtt5::broker::config::{StorageBackend, StorageConfig};
use mqtt5::broker::{BrokerConfig, MqttBroker};
use outpost_bus::metadata::{Change, MetadataView, ViewConfig};
use outpost_kit::{Check, Info, Parts, Shutdown, Stage, Start, StartError, Storage, health_probe};
use tokio::sync::broadcast;

pub use config::Config;

/// The service's registry ID.
pub const SERVICE: &str = "mqtt-broker";

/// The service, as the node runs it.
pub struct Broker;

/// Why the broker cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the MQTT broker on {listen}")]
    Start {
        listen: std::net::SocketAddr,
        #[source]
        source: mqtt5::error::MqttError,
    },
    #[error("the MQTT broker stopped")]
    Stopped(#[source] mqtt5::error::MqttError),
    #[error("the MQTT broker stopped by itself")]
    StoppedEarly,
    #[error("cannot listen for MQTT over TLS on {listen}")]
    TlsListen {
        listen: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl outpost_kit::Service for Broker {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "broker").worker_threads(2).bus();

    fn storage(_: &Config) -> Option<Storage> {
        Some(Storage::new(store::MIGRATIONS, 1))
    }

    fn sandbox(
        _: &Config,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_storage::StorageError> {
        files.own_dir("journal")?;
        files.secret("broker-journal.key")?;
        // The internal bus credential: made by the broker, read by the services.
        outpost_storage::load_or_create_token(&files.secrets_dir(), outpost_bus::INTERNAL_SECRET)?;
        Ok(())
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let db = start.db()?;
        let token =
            outpost_storage::load_or_create_token(&ctx.secrets_dir(), outpost_bus::INTERNAL_SECRET)
                .map_err(StartError::other)?;
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
        // Loopback is not a trust boundary once the node's services authenticate each other.
        let anonymous = cfg
            .allow_anonymous_loopback
            .unwrap_or(!ctx.common.security.internal_tls);
        let mut auth = auth::NodeAuth::new(
            outpost_bus::INTERNAL_USER.to_string(),
            token,
            anonymous,
            ctx.metric("auth_failures_total"),
        )
        .with_failure_limits(
            cfg.auth_failure_burst,
            Duration::from_secs(cfg.auth_failure_refill_s),
        );
        let view = cfg.device_auth.then(|| {
            MetadataView::start(
                ctx,
                ViewConfig {
                    credentials_for: Duration::from_secs(cfg.device_auth_cache_s),
                    timeout: Duration::from_secs(3),
                    ..ViewConfig::default()
                },
            )
        });
        if let Some(view) = &view {
            let (log, rx) = tokio::sync::mpsc::channel(store::QUEUE);
            auth = auth
                .with_devices(
                    view.clone(),
                    Duration::from_secs(cfg.device_auth_cache_s),
                    &ctx.common.bus.base_topic,
                )
                .with_claims(store::load_claims(&db).map_err(StartError::other)?, log);
            // Stops after the broker (declared before it): every claim made is written.
            let db = db.clone();
            ctx.tasks.spawn("claims", Stage::AfterServing, move |stop| {
                store::write_claims(db, rx, stop)
            });
        }
        let front = match cfg.tls_listen {
            Some(addr) => Some(tls_front(ctx, addr).await?),
            None => None,
        };
        let auth = Arc::new(auth);
        let journal = if cfg.journal {
            let key = outpost_storage::load_or_create_secret(
                &ctx.secrets_dir().join("broker-journal.key"),
            )
            .map_err(StartError::other)?;
            let base = &ctx.common.bus.base_topic;
            let metrics = journal::Metrics::new(ctx);
            outpost_kit::telemetry::zeroed_counters(&[
                metrics.appended,
                metrics.commits,
                metrics.released,
                metrics.waits,
                metrics.bypassed,
                metrics.redelivered,
            ]);
            let jc = journal::Config {
                max_bytes: cfg.journal_max_bytes,
                max_message_bytes: u32::try_from(cfg.max_packet_bytes).unwrap_or(u32::MAX),
                sync: ctx.common.storage.sync == outpost_storage::SyncMode::Full,
                redeliver_after: Duration::from_secs(cfg.journal_redeliver_s),
                metrics,
            };
            let control = journal::Control {
                internal_user: outpost_bus::INTERNAL_USER.to_string(),
                consumer_topic: outpost_contracts::topics::journal_consumer(base),
                ack_topic: outpost_contracts::topics::journal_ack(base),
            };
            let dir = ctx.data_dir.join("journal");
            outpost_storage::ensure_private_dir(&dir).map_err(StartError::other)?;
            let (db, at) = (db.clone(), dir.clone());
            let opened = tokio::task::spawn_blocking(move || {
                journal::Journal::open(&at, &key, &jc, db, control)
            })
            .await
            .map_err(StartError::other)?
            .map_err(StartError::other)?;
            Some(opened)
        } else {
            None
        };
        let subscribed = Arc::new(tokio::sync::Notify::new());
        bc = bc.with_event_handler(Arc::new(hooks::Hooks {
            retained: store::Retained::new(db.clone()),
            journal: journal.as_ref().map(|(j, _)| Arc::clone(j)),
            subscribed: Arc::clone(&subscribed),
        }) as Arc<dyn mqtt5::broker::BrokerEventHandler>);
        let broker_config = Arc::new(bc.clone());
        let mut broker = MqttBroker::with_config(bc)
            .await
            .map_err(|source| {
                StartError::other(Error::Start {
                    listen: cfg.listen,
                    source,
                })
            })?
            .with_auth_provider(Arc::clone(&auth) as Arc<dyn mqtt5::broker::auth::AuthProvider>);
        let router = broker.router();
        // Before the broker runs: it recovers what is in its storage at start.
        let storage = broker.storage();
        if let Some(storage) = storage.clone() {
            auth.set_sessions(Arc::clone(&storage));
            store::restore_retained(&db, &storage)
                .await
                .map_err(StartError::other)?;
            let saved = store::restore_sessions(&db, &storage)
                .await
                .map_err(StartError::other)?;
            let (db, metric) = (db.clone(), ctx.metric("persistent_sessions_saved"));
            // The last save happens as the service starts stopping, while the broker
            // still holds every session.
            ctx.tasks.spawn("sessions", Stage::Background, move |stop| {
                store::save_sessions(db, storage, saved, metric, subscribed, stop)
            });
        }
        if let Some((journal, held)) = journal {
            // The node's consumers, journaled for before they first connect.
            for c in &cfg.durable_consumers {
                let has_session = match &storage {
                    Some(s) => !matches!(
                        mqtt5::broker::storage::StorageBackend::get_session(&**s, &c.client).await,
                        Ok(None)
                    ),
                    None => false,
                };
                journal.expect(&c.client, &c.filters, has_session).await;
            }
            // Before the broker accepts connections: what the journal held is queued for
            // its consumers first.
            journal.start(Arc::clone(&router), held);
            if let Some(storage) = storage.clone() {
                ctx.tasks.spawn("journal", Stage::Background, move |stop| {
                    journal.maintain(storage, stop)
                });
            }
        }
        let stop_broker = broker.shutdown_handle();
        let stats = broker.stats();
        tracing::info!(listen = %cfg.listen, tls = ?cfg.tls_listen, "MQTT broker listening");
        let front = front.map(|front| {
            let parts = front::Broker {
                config: broker_config,
                router: Arc::clone(&router),
                auth: Arc::clone(&auth),
                storage: storage.clone(),
                stats: Arc::clone(&stats),
                monitor: broker.resource_monitor(),
            };
            (front, parts)
        });
        // If the broker itself stops, the service must stop too (and be restarted), not
        // keep heartbeating an HTTP side with no bus behind it: the task fails then.
        ctx.tasks
            .spawn("mqtt", Stage::AfterServing, move |stop| async move {
                let run = broker.run();
                tokio::pin!(run);
                tokio::select! {
                    r = &mut run => return match r {
                        Ok(()) => Err(Error::StoppedEarly),
                        Err(e) => Err(Error::Stopped(e)),
                    },
                    () = stop.wait() => {}
                }
                // Services are stopped before the broker, so its queues are already drained.
                stop_broker.shutdown();
                run.await.map_err(Error::Stopped)
            });
        // Declared after the broker, so it stops before it: no TLS client is left attached
        // to a broker that stopped.
        if let Some((front, parts)) = front {
            ctx.tasks
                .spawn("mqtt-tls", Stage::AfterServing, move |stop| {
                    front.run(parts, stop)
                });
        }
        let mut health = vec![];
        if let Some(view) = view {
            let auth = Arc::clone(&auth);
            health.push(view.probe());
            ctx.tasks
                .spawn("device-changes", Stage::Background, move |stop| {
                    follow_devices(view, auth, router, storage, stop)
                });
        }
        {
            let (connected, received, sent) = (
                ctx.gauge("clients_connected"),
                ctx.counter("publish_received_total"),
                ctx.counter("publish_sent_total"),
            );
            ctx.tasks
                .spawn("statistics", Stage::Background, move |stop| async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tokio::select! {
                            () = stop.wait() => return,
                            _ = tick.tick() => {}
                        }
                        connected.set(stats.clients_connected.load(Ordering::Relaxed) as f64);
                        received.absolute(stats.publish_received.load(Ordering::Relaxed));
                        sent.absolute(stats.publish_sent.load(Ordering::Relaxed));
                    }
                });
        }
        let listeners: Vec<_> = std::iter::once(("mqtt-listener", cfg.listen))
            .chain(cfg.tls_listen.map(|a| ("mqtts-listener", a)))
            .collect();
        let listener = health_probe(move || {
            let listeners = listeners.clone();
            async move {
                let mut checks = Vec::new();
                for (name, addr) in listeners {
                    checks.push(match tokio::net::TcpStream::connect(addr).await {
                        Ok(_) => Check::ok(name),
                        Err(e) => Check::failed(name, e.to_string()),
                    });
                }
                checks
            }
        });
        Ok(health
            .into_iter()
            .fold(Parts::new(Router::new()).health(listener), Parts::health))
    }
}

/// The TLS front on `addr`, with the broker's service certificate (the process's, or one
/// established here when the services do not use mutual TLS among themselves).
async fn tls_front(
    ctx: &outpost_kit::Context,
    addr: std::net::SocketAddr,
) -> Result<front::Front, StartError> {
    let creds = match outpost_kit::internal::process() {
        Some(c) => c,
        None => {
            let names = outpost_pki::default_names(&ctx.common.node.advertise_host, &[]);
            outpost_kit::internal::establish(
                &ctx.data_dir,
                &ctx.service_id(),
                &names,
                std::time::Duration::from_secs(ctx.common.security.service_cert_s),
                ctx.shutdown.clone(),
            )
            .map_err(StartError::other)?
        }
    };
    let node_ca = outpost_pki::internal::node_ca_pem(&ctx.data_dir).map_err(StartError::other)?;
    // Devices' certificates: the node CA's and the manufacturers' (zero-touch), as at the
    // gateway; whose each is, core-metadata decides.
    let mut device_cas = node_ca.clone();
    for f in &ctx.common.enrollment.manufacturer_ca {
        let pem = std::fs::read_to_string(f).map_err(|source| {
            StartError::other(outpost_pki::PkiError::Read {
                path: f.clone(),
                source,
            })
        })?;
        device_cas.push('\n');
        device_cas.push_str(&pem);
    }
    let mut tls = outpost_pki::server_config_with_clients(Arc::clone(&creds.resolver), &device_cas)
        .map_err(StartError::other)?;
    // MQTT clients may name their protocol ("mqtt") or nothing: either is fine.
    tls.alpn_protocols.clear();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| {
            StartError::other(Error::TlsListen {
                listen: addr,
                source,
            })
        })?;
    Ok(front::Front {
        listener,
        tls: Arc::new(tls),
        node_ca,
        peers: front::Peers::default(),
    })
}

/// Follows core-metadata's device events: when a device's secret changed or was removed,
/// or the device was deleted, connections made with a secret that is no longer its own are
/// dropped from routing with their subscriptions, so they receive nothing more (publishing
/// is refused by the credential check already).
async fn follow_devices(
    view: MetadataView,
    auth: Arc<auth::NodeAuth>,
    router: Arc<mqtt5::broker::router::MessageRouter>,
    storage: Option<Arc<mqtt5::broker::storage::DynamicStorage>>,
    stop: Shutdown,
) {
    use outpost_contracts::system_event::{ACTION_DELETE, TYPE_DEVICE};
    let mut changes = view.changes();
    loop {
        let change = tokio::select! {
            () = stop.wait() => return,
            c = changes.recv() => c,
        };
        // Which devices to check again, and whether they were deleted.
        let checks: Vec<(String, bool)> = match change {
            Ok(Change::Event(ev)) if ev.kind == TYPE_DEVICE => match ev.object_name() {
                Some(name) => vec![(name.to_string(), ev.action == ACTION_DELETE)],
                None => continue,
            },
            Ok(Change::Event(_)) => continue,
            // Changes may have been missed: every device with a connection is checked.
            Ok(Change::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => auth
                .granted_devices()
                .into_iter()
                .map(|d| (d, false))
                .collect(),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        for (name, deleted) in checks {
            cut_off(&auth, &router, storage.as_deref(), &name, deleted).await;
        }
    }
}

/// Drops the connections of `name` made with a secret that is no longer its own (all of
/// them when it was deleted) from routing, with their stored sessions.
async fn cut_off(
    auth: &auth::NodeAuth,
    router: &mqtt5::broker::router::MessageRouter,
    storage: Option<&mqtt5::broker::storage::DynamicStorage>,
    name: &str,
    deleted: bool,
) {
    use mqtt5::broker::storage::StorageBackend as _;
    for (client_id, fp) in auth.revoked(name, deleted).await {
        // Reconnected with a valid secret meanwhile: that connection stays.
        if !deleted && !auth.still_made_with(&client_id, &fp) {
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
