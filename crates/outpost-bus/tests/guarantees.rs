//! The bus's promises, against each real engine (mosquitto, and NATS JetStream with TLS and
//! a password): what a durable consumer has not acknowledged comes back, whether it
//! stopped, abandoned it or crashed; acknowledgements reach the server; a publish waits out
//! a server restart; one topic keeps its order.

use std::collections::BTreeSet;
use std::time::Duration;

use outpost_bus::{Bus, Consumer, Delivery, Options, Received};
use outpost_kit::Shutdown;
use outpost_kit::config::BusConfig;
use outpost_testkit::Mosquitto;
use outpost_testkit::nats::NatsServer;

const WAIT: Duration = Duration::from_secs(20);

/// Each test, once on each engine.
macro_rules! on_each_engine {
    ($($name:ident),* $(,)?) => {
        mod on_mosquitto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fixture::new(super::Engine::Mosquitto)).await
                }
            )*
        }
        mod on_nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fixture::new(super::Engine::Nats)).await
                }
            )*
        }
    };
}

on_each_engine!(
    acknowledgements_free_the_window_and_unacknowledged_messages_come_back,
    a_crashed_consumer_gets_back_everything_it_had_not_acknowledged,
    a_publish_waits_out_a_broker_restart_and_is_delivered,
    one_topic_keeps_its_order,
    clients_started_before_their_broker_connect_once_it_listens,
);

enum Engine {
    Mosquitto,
    Nats,
}

enum Server {
    Mosquitto(Mosquitto),
    Nats(NatsServer),
}

impl Server {
    fn stop(&mut self) {
        match self {
            Self::Mosquitto(m) => m.stop(),
            Self::Nats(n) => n.stop(),
        }
    }

    fn start_again(&mut self) {
        match self {
            Self::Mosquitto(m) => m.start_again(),
            Self::Nats(n) => n.start_again(),
        }
    }
}

struct Fixture {
    broker: Server,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(engine: Engine) -> Self {
        Self {
            broker: match engine {
                Engine::Mosquitto => Server::Mosquitto(Mosquitto::start()),
                Engine::Nats => Server::Nats(NatsServer::start()),
            },
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn cfg(&self) -> BusConfig {
        match &self.broker {
            Server::Mosquitto(m) => BusConfig {
                url: m.url(),
                ..BusConfig::default()
            },
            // The tests' topics (`t/...`) are the base topic's; what is not acknowledged
            // comes back after 2 s.
            Server::Nats(n) => BusConfig {
                base_topic: "t".into(),
                ack_wait_s: 2,
                ..n.bus_config()
            },
        }
    }

    async fn consumer(&self, session: &str, window: u16) -> Consumer {
        self.consumer_with(&self.cfg(), session, window).await
    }

    /// A durable consumer of `t/#` on the bus `cfg` names.
    async fn consumer_with(&self, cfg: &BusConfig, session: &str, window: u16) -> Consumer {
        let opts = Options::durable(session, window);
        tokio::time::timeout(
            WAIT,
            Consumer::connect(
                cfg,
                self.dir.path(),
                "test",
                opts,
                &["t/#".to_string()],
                &Shutdown::new(),
            ),
        )
        .await
        .expect("subscribed in time")
        .expect("subscribed")
    }

    async fn publisher(&self) -> Bus {
        self.publisher_with(&self.cfg()).await
    }

    /// A plain client of the bus `cfg` names.
    async fn publisher_with(&self, cfg: &BusConfig) -> Bus {
        let opts = Options::plain(format!("publisher-{}", uuid()));
        tokio::time::timeout(
            WAIT,
            Bus::connect(cfg, self.dir.path(), "test", opts, &Shutdown::new()),
        )
        .await
        .expect("connected in time")
        .expect("connected")
    }
}

fn uuid() -> u64 {
    fastrand::u64(..)
}

async fn publish(bus: &Bus, topic: &str, n: u32) {
    tokio::time::timeout(WAIT, bus.publish_raw(topic, n.to_string().into_bytes()))
        .await
        .expect("published in time")
        .expect("published");
}

fn number(d: &Delivery) -> u32 {
    std::str::from_utf8(&d.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("a number")
}

async fn next(c: &mut Consumer) -> Delivery {
    match c.recv_within(WAIT).await {
        Received::Message(d) => d,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn acknowledgements_free_the_window_and_unacknowledged_messages_come_back(f: Fixture) {
    let mut c = f.consumer("window", 5).await;
    let p = f.publisher().await;
    for n in 0..12 {
        publish(&p, "t/w", n).await;
    }
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next(&mut c).await);
    }
    // Five unacknowledged messages fill the window: the broker sends nothing more.
    assert!(
        matches!(
            c.recv_within(Duration::from_millis(500)).await,
            Received::Quiet
        ),
        "the broker sent beyond the receive maximum"
    );
    // Acknowledging two lets two more through: acknowledgements reach the broker.
    let mut held = held.into_iter();
    for d in held.by_ref().take(2) {
        assert!(number(&d) < 2);
        d.ack();
    }
    let more = [next(&mut c).await, next(&mut c).await];
    // The rest is abandoned, and the session closed.
    for d in held.chain(more) {
        d.abandon();
    }
    c.close().await;

    let mut c = f.consumer("window", 100).await;
    let mut seen = BTreeSet::new();
    while !(2..12).all(|n| seen.contains(&n)) {
        let d = next(&mut c).await;
        seen.insert(number(&d));
        d.ack();
    }
    assert!(seen.iter().all(|n| *n < 12), "{seen:?}");
    c.close().await;
}

async fn a_crashed_consumer_gets_back_everything_it_had_not_acknowledged(f: Fixture) {
    let cfg = f.cfg();
    let dir = f.dir.path().to_path_buf();
    let p = f.publisher().await;
    // The consumer runs on a runtime of its own, which then dies with its connection
    // (no DISCONNECT, deliveries dropped unanswered), as a killed process would.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (got_tx, got_rx) = std::sync::mpsc::channel::<u32>();
    let crashed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut c = Consumer::connect(
                &cfg,
                &dir,
                "test",
                Options::durable("crash", 100),
                &["t/#".to_string()],
                &Shutdown::new(),
            )
            .await
            .expect("subscribed");
            ready_tx.send(()).expect("ready");
            let mut kept = Vec::new();
            for _ in 0..5 {
                let d = next(&mut c).await;
                got_tx.send(number(&d)).expect("report");
                kept.push(d);
            }
            // Dies here holding every delivery.
            std::mem::forget(c);
            kept
        });
        drop(rt);
    });
    ready_rx
        .recv_timeout(WAIT)
        .expect("the consumer subscribed");
    for n in 0..5 {
        publish(&p, "t/c", n).await;
    }
    for _ in 0..5 {
        got_rx.recv_timeout(WAIT).expect("the consumer received");
    }
    crashed.join().expect("the consumer's thread");
    // Published while it is gone: queued in its session.
    for n in 5..10 {
        publish(&p, "t/c", n).await;
    }
    let mut c = f.consumer("crash", 100).await;
    let mut seen = BTreeSet::new();
    while seen.len() < 10 {
        let d = next(&mut c).await;
        seen.insert(number(&d));
        d.ack();
    }
    assert_eq!(seen, (0..10).collect::<BTreeSet<_>>());
    c.close().await;
}

async fn a_publish_waits_out_a_broker_restart_and_is_delivered(mut f: Fixture) {
    // A durable session that exists on the broker while its consumer is away.
    f.consumer("restart", 100).await.close().await;
    let p = f.publisher().await;
    f.broker.stop();
    let publishing =
        tokio::spawn(async move { p.publish_raw("t/r", b"42".to_vec()).await.map(|()| p) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    if publishing.is_finished() {
        panic!(
            "a publish with no broker must not count as published: {:?}",
            publishing.await.map(|r| r.map(drop))
        );
    }
    f.broker.start_again();
    let p = tokio::time::timeout(WAIT, publishing)
        .await
        .expect("published once the broker was back")
        .expect("the publishing task")
        .expect("published");
    let mut c = f.consumer("restart", 100).await;
    let d = next(&mut c).await;
    assert_eq!((d.topic.as_str(), number(&d)), ("t/r", 42));
    d.ack();
    c.close().await;
    p.disconnect().await;
}

async fn one_topic_keeps_its_order(f: Fixture) {
    let mut c = f.consumer("order", 1000).await;
    let p = f.publisher().await;
    let sending = tokio::spawn(async move {
        for n in 0..500 {
            publish(&p, "t/o", n).await;
        }
    });
    for want in 0..500 {
        let d = next(&mut c).await;
        assert_eq!(number(&d), want);
        d.ack();
    }
    sending.await.expect("publisher");
    c.close().await;
}

async fn clients_started_before_their_broker_connect_once_it_listens(mut f: Fixture) {
    // Services started together (containers, Kubernetes) often reach the broker before it
    // listens: their first attempts fail and the client's own reconnect starts.
    f.broker.stop();
    let (cfg, dir) = (f.cfg(), f.dir.path().to_path_buf());
    let consuming = tokio::spawn({
        let (cfg, dir) = (cfg.clone(), dir.clone());
        async move {
            let filters = ["t/#".to_string()];
            let opts = Options::durable("early", 100);
            Consumer::connect(&cfg, &dir, "test", opts, &filters, &Shutdown::new()).await
        }
    });
    let publishing = tokio::spawn(async move {
        let opts = Options::plain("early-publisher".to_string());
        Bus::connect(&cfg, &dir, "test", opts, &Shutdown::new()).await
    });
    // Several failed attempts, each also starting the client's reconnect.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !consuming.is_finished() && !publishing.is_finished(),
        "connected with no broker"
    );
    f.broker.start_again();
    let mut c = tokio::time::timeout(WAIT, consuming)
        .await
        .expect("the consumer connected once the broker listened")
        .expect("the consumer's task")
        .expect("the consumer");
    let p = tokio::time::timeout(WAIT, publishing)
        .await
        .expect("the publisher connected once the broker listened")
        .expect("the publisher's task")
        .expect("the publisher");
    publish(&p, "t/e", 7).await;
    let d = next(&mut c).await;
    assert_eq!((d.topic.as_str(), number(&d)), ("t/e", 7));
    d.ack();
    c.close().await;
    p.disconnect().await;
}

/// How connecting with `cfg` ends within `WAIT`: the error's text, or `None` when it
/// connected or was still trying.
async fn refusal(cfg: &BusConfig, dir: &std::path::Path) -> Option<String> {
    let opts = Options::plain(format!("refused-{}", uuid()));
    match tokio::time::timeout(WAIT, Bus::connect(cfg, dir, "test", opts, &Shutdown::new())).await {
        Ok(Err(e)) => Some(format!("{e:#}")),
        Ok(Ok(_)) | Err(_) => None,
    }
}

/// NATS refusing the node: a wrong password and a server whose certificate the configured
/// CA did not sign are each refused with a message that says so, not retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_refuses_a_wrong_password_and_an_untrusted_server_with_a_clear_error() {
    let f = Fixture::new(Engine::Nats);
    let wrong = f.dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password").expect("write");
    let cfg = BusConfig {
        password_file: Some(wrong),
        ..f.cfg()
    };
    let e = refusal(&cfg, f.dir.path())
        .await
        .expect("a wrong password is refused");
    assert!(e.contains("authorization"), "{e}");
    assert!(!e.contains("not-the-password"), "{e}");

    let other = outpost_pki::Paths::new(&f.dir.path().join("other-ca"));
    outpost_pki::ensure_server_cert(&other, &["127.0.0.1".into()]).expect("another CA");
    let cfg = BusConfig {
        ca_file: Some(other.ca_cert),
        ..f.cfg()
    };
    let e = refusal(&cfg, f.dir.path())
        .await
        .expect("an untrusted server is refused");
    assert!(e.contains("certificate"), "{e}");
}

/// A JetStream stream at its bound refuses new publishes (the publish fails, it is not
/// acknowledged), and everything it acknowledged before is still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_nats_stream_refuses_publishes_and_keeps_what_it_acknowledged() {
    let f = Fixture::new(Engine::Nats);
    let cfg = BusConfig {
        stream_max_bytes: 64 * 1024,
        ..f.cfg()
    };
    // The consumer exists (and so keeps what is published), then goes away.
    f.consumer_with(&cfg, "full", 64).await.close().await;
    let bus = f.publisher_with(&cfg).await;
    let body = vec![b'x'; 1000];
    let mut accepted = 0u32;
    let mut refused = None;
    for _ in 0..200 {
        match tokio::time::timeout(WAIT, bus.publish_raw("t/full", body.clone())).await {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(e)) => {
                refused = Some(e.to_string());
                break;
            }
            Err(_) => panic!("a publish to a full stream hangs"),
        }
    }
    let refused = refused.expect("the stream refuses once full");
    assert!(accepted > 10, "{accepted} accepted before: {refused}");
    eprintln!("{accepted} accepted, then: {refused}");
    // Everything acknowledged is there for the durable consumer.
    let mut consumer = f.consumer_with(&cfg, "full", 64).await;
    for _ in 0..accepted {
        next(&mut consumer).await.ack();
    }
}
