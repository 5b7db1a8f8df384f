//! The broker as the node builds it: its MQTT listener with the node's authentication,
//! devices checked against the real core-metadata (which runs on this broker's bus), its
//! health, and what it counts. Devices are played by mosquitto's command-line clients
//! (Debian package `mosquitto-clients`).

use std::process::{Command, Output};

use axum::http::StatusCode;
use outpost_broker::{Broker, Config};
use outpost_kit::config::BusConfig;
use outpost_testkit::{
    Drive, Served, Service, WAIT, bus, context, free_port, metadata, until, within,
};
use serde_json::json;

const SECRET: &str = "press-1-secret-0001";
const ROTATED: &str = "press-1-rotated-0002";
const FAILURES: &str = "outpost_mqtt_broker_auth_failures_total";
const TELEMETRY: &str = "incoming/data/press-1/Cycles";

/// The broker on a free port, with core-metadata (on its bus) holding device `press-1` of
/// device-mqtt with its secret.
struct Node {
    broker: Service,
    broker_at: Served,
    mqtt: u16,
    /// The bus as the node's services use it.
    bus: BusConfig,
    md: Service,
    /// Taken when core-metadata is stopped.
    md_at: Option<Served>,
}

async fn start() -> Node {
    let mqtt = free_port();
    let url = format!("mqtt://127.0.0.1:{mqtt}");
    let md_port = free_port();
    // The broker knows where core-metadata will be; until it answers, devices are refused.
    let test = context(
        "mqtt-broker",
        &[("core-metadata", format!("http://127.0.0.1:{md_port}"))],
    )
    .with_bus(&url);
    let cfg = Config {
        listen: ([127, 0, 0, 1], mqtt).into(),
        tls_listen: Some(([127, 0, 0, 1], free_port()).into()),
        port: free_port(),
        ..Config::default()
    };
    let broker = within("the broker builds", Service::build_in::<Broker>(test, cfg)).await;
    let broker_at = broker.serve_at(([127, 0, 0, 1], 0).into()).await;
    // core-metadata and the watcher log in as the node's services do.
    let node_dir = broker.test.dir.path().to_path_buf();
    let md_test = context("core-metadata", &[])
        .with_bus(&url)
        .with_bus_token_of(&node_dir);
    let (md, md_at) = metadata::serve_in(md_test, md_port).await;
    metadata::add_profile_yaml(&md, metadata::THERMOSTAT, None).await;
    metadata::add_device_service(&md, "device-mqtt", "http://127.0.0.1:1").await;
    let device = metadata::device("press-1", "device-mqtt").protocols(json!({"mqtt": {}}));
    metadata::add_device(&md, &device).await;
    metadata::set_secret(&md, "press-1", SECRET).await;
    Node {
        broker,
        broker_at,
        mqtt,
        bus: md.test.ctx.common.bus.clone(),
        md,
        md_at: Some(md_at),
    }
}

impl Node {
    /// `mosquitto_pub` of `message` on `topic` at QoS 1 with MQTT 5, with `extra` arguments.
    fn publish(&self, topic: &str, message: &str, extra: &[&str]) -> Output {
        let port = self.mqtt.to_string();
        let args = ["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1"];
        Command::new("mosquitto_pub")
            .args(args)
            .args(["-t", topic, "-m", message])
            .args(extra)
            .output()
            .expect("mosquitto_pub (Debian package mosquitto-clients)")
    }

    /// A publish as press-1 with `secret`, from client ID `p1`.
    fn as_device(&self, topic: &str, message: &str, secret: &str) -> Output {
        let extra = ["-u", "press-1", "-P", secret, "-i", "p1"];
        self.publish(topic, message, &extra)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_use_their_own_topics_with_their_own_secret_and_nothing_else() {
    let n = start().await;
    let watcher = bus::Client::connect_with(n.bus.clone(), "watcher").await;
    let mut seen = watcher.subscribe("incoming/data/#").await;

    // The device's own telemetry passes, once core-metadata answers for it.
    until("press-1 is let in", WAIT, async || {
        n.as_device(TELEMETRY, "1", SECRET)
            .status
            .success()
            .then_some(())
    })
    .await;
    let first = bus::next(&mut seen, "press-1's telemetry").await;
    assert_eq!(first.topic, TELEMETRY);

    // Speaking for another device, or anonymously on device topics, is dropped: the next
    // message the watcher sees is the device's own marker.
    n.as_device("incoming/data/press-2/Cycles", "forged", SECRET);
    n.publish(TELEMETRY, "anonymous", &[]);
    let marker = n.as_device(TELEMETRY, "2", SECRET);
    assert!(marker.status.success(), "{marker:?}");
    let next = bus::next(&mut seen, "press-1's marker").await;
    assert_eq!(
        (next.topic.as_str(), &next.payload[..]),
        (TELEMETRY, &b"2"[..])
    );

    // A wrong secret, or an unknown device, cannot connect; both are counted.
    let before = n.broker.metric(FAILURES).await;
    let wrong = n.as_device(TELEMETRY, "3", "not-the-secret-0000");
    assert!(!wrong.status.success(), "{wrong:?}");
    let ghost = n.publish(
        "incoming/data/ghost/Cycles",
        "4",
        &["-u", "ghost", "-P", SECRET],
    );
    assert!(!ghost.status.success(), "{ghost:?}");
    assert!(n.broker.metric(FAILURES).await >= before + 2);

    // The client ID press-1 used is its own: another client asking for it is refused.
    let taken = n.publish(TELEMETRY, "5", &["-i", "p1"]);
    assert!(!taken.status.success(), "{taken:?}");

    // A rotated secret: the old one no longer connects, the new one does.
    metadata::set_secret(&n.md, "press-1", ROTATED).await;
    until("the old secret is refused", WAIT, async || {
        (!n.as_device(TELEMETRY, "6", SECRET).status.success()).then_some(())
    })
    .await;
    let rotated = n.as_device(TELEMETRY, "7", ROTATED);
    assert!(rotated.status.success(), "{rotated:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_covers_the_mqtt_listener_and_core_metadata() {
    let mut n = start().await;
    let health = until("the broker is healthy", WAIT, async || {
        let (s, body) = n.broker.call("GET", "/api/v3/health", None).await;
        (s == StatusCode::OK).then_some(body)
    })
    .await;
    let names: Vec<&str> = health["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        names.contains(&"mqtt-listener") && names.contains(&"metadata"),
        "{health}"
    );

    // Without core-metadata, devices cannot be checked: the next device that tries makes
    // health say so.
    if let Some(md_at) = n.md_at.take() {
        md_at.stop().await;
    }
    let down = until(
        "health reports core-metadata unreachable",
        WAIT,
        async || {
            n.publish(TELEMETRY, "x", &["-u", "press-9", "-P", SECRET]);
            let (s, body) = n.broker.call("GET", "/api/v3/health", None).await;
            (s == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
        },
    )
    .await;
    assert_eq!(down["status"], "DOWN", "{down}");
    n.broker_at.stop().await;
    n.broker.stop().await;
}

/// A broker that knows the durable consumer `late-consumer` of `filters` before it ever
/// connected, and the bus of a node's service on it.
async fn knowing_a_late_consumer(
    filters: &[&str],
) -> (Service, Served, outpost_testkit::TestContext, BusConfig) {
    let mqtt = free_port();
    let url = format!("mqtt://127.0.0.1:{mqtt}");
    let test = context("mqtt-broker", &[]).with_bus(&url);
    let cfg = Config {
        listen: ([127, 0, 0, 1], mqtt).into(),
        tls_listen: None,
        port: free_port(),
        durable_consumers: vec![outpost_broker::config::DurableConsumer {
            client: "late-consumer".into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        }],
        ..Config::default()
    };
    let broker = within("the broker builds", Service::build_in::<Broker>(test, cfg)).await;
    let at = broker.serve_at(([127, 0, 0, 1], 0).into()).await;
    let node_dir = broker.test.dir.path().to_path_buf();
    let node = context("core-data", &[])
        .with_bus(&url)
        .with_bus_token_of(&node_dir);
    let mut bus = node.ctx.common.bus.clone();
    bus.journal = true;
    (broker, at, node, bus)
}

/// `late-consumer` connecting for the first time, consuming `filter`.
async fn late_consumer(
    node: &outpost_testkit::TestContext,
    bus: &BusConfig,
    filter: &str,
    stop: &outpost_kit::Shutdown,
) -> outpost_bus::Consumer {
    within(
        "the consumer connects",
        outpost_bus::Consumer::connect(
            bus,
            &node.ctx.data_dir,
            "core-data",
            outpost_bus::Options::durable("late-consumer", 16),
            &[filter.to_string()],
            stop,
        ),
    )
    .await
    .expect("consumer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_published_before_a_known_consumer_first_connects_waits_for_it() {
    // Services started together (containers): a publisher is up before the consumer of
    // what it publishes ever subscribed. The broker knows that consumer from its
    // configuration, as it knows core-data's.
    let (_broker, _at, node, bus) = knowing_a_late_consumer(&["late/#"]).await;
    // Acknowledged to its publisher while nobody subscribes to it.
    let publisher = outpost_testkit::bus::Client::connect_with(bus.clone(), "early").await;
    publisher.publish("late/1", b"before anyone listened").await;
    // The consumer's first connection: the message is delivered to it.
    let stop = outpost_kit::Shutdown::new();
    let mut consumer = late_consumer(&node, &bus, "late/#", &stop).await;
    let got = within("the early message", consumer.recv(&stop))
        .await
        .expect("a delivery");
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("late/1", &b"before anyone listened"[..])
    );
    stop.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_known_by_wider_filters_is_not_waited_for_on_what_it_does_not_consume() {
    // Known by a filter wider than the one it consumes: what only the wider one matches
    // must not wait for its confirmation for ever (the journal would never move past it).
    let (broker, _at, node, bus) = knowing_a_late_consumer(&["wide/#"]).await;
    let publisher = outpost_testkit::bus::Client::connect_with(bus.clone(), "early").await;
    publisher.publish("wide/other/1", b"not for it").await;
    let journaled = broker
        .metric("outpost_mqtt_broker_journal_appended_total")
        .await;
    assert_eq!(journaled, 1, "journaled for the known consumer");
    assert_eq!(
        broker
            .metric("outpost_mqtt_broker_journal_released_total")
            .await,
        0
    );
    let stop = outpost_kit::Shutdown::new();
    let _consumer = late_consumer(&node, &bus, "wide/mine/#", &stop).await;
    until("the journal to release it", WAIT, async || {
        (broker
            .metric("outpost_mqtt_broker_journal_released_total")
            .await
            >= 1)
            .then_some(())
    })
    .await;
    stop.trigger();
}
