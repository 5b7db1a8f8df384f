//! device-coap built as the node builds it, against the real core-metadata (on a socket,
//! announcing its changes on a real broker), with its events watched on that broker and a
//! CoAP device played by a UDP socket that writes its messages with coap-lite.

use std::net::SocketAddr;
use std::time::Duration;

use coap_lite::block_handler::BlockValue;
use coap_lite::option_value::OptionValueU32;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use outpost_contracts::value::ValueType;
use outpost_testkit::device::{DeviceNode, float, simple};
use outpost_testkit::{Drive as _, metadata};
use serde_json::json;
use tokio::net::UdpSocket;

use crate::server::{DROPPED, REQUESTS};
use crate::{CoapConfig, Config, DeviceCoap};

const T1_SECRET: &str = "t1-secret-0123456789";
const T2_SECRET: &str = "t2-secret-0123456789";
const REJECTED: &str = "outpost_device_coap_device_messages_rejected_total";

/// A broker, core-metadata with the Thermostat profile, and device-coap with `driver`, its
/// CoAP endpoint on a free UDP port of 127.0.0.1; devices t1 and t2 with their secrets.
async fn start(driver: CoapConfig) -> (DeviceNode, SocketAddr) {
    let coap_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port();
    let driver = CoapConfig {
        bind: [127, 0, 0, 1].into(),
        coap_port,
        ..driver
    };
    let at = driver.coap_addr();
    let node = DeviceNode::start::<DeviceCoap>(|port| Config {
        port,
        driver,
        ..Config::default()
    })
    .await;
    for (name, secret) in [("t1", T1_SECRET), ("t2", T2_SECRET)] {
        let device = metadata::device(name, "device-coap").protocols(json!({"other": {}}));
        metadata::add_device(&node.md, &device).await;
        metadata::set_secret(&node.md, name, secret).await;
        node.known(name).await;
    }
    (node, at)
}

/// A CoAP device: one UDP socket.
struct Device {
    socket: UdpSocket,
    server: SocketAddr,
    next_id: u16,
}

impl Device {
    async fn new(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        Self {
            socket,
            server,
            next_id: 100,
        }
    }

    /// A request with a fresh Message ID and token.
    fn request(
        &mut self,
        kind: MessageType,
        method: RequestType,
        path: &str,
        content_format: Option<u16>,
        payload: &[u8],
    ) -> Packet {
        self.next_id += 1;
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(kind);
        p.header.code = MessageClass::Request(method);
        p.header.message_id = self.next_id;
        p.set_token(self.next_id.to_be_bytes().to_vec());
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        for s in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        for q in query.split('&').filter(|q| !q.is_empty()) {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        if let Some(cf) = content_format {
            p.add_option(CoapOption::ContentFormat, OptionValueU32(cf.into()).into());
        }
        p.payload = payload.to_vec();
        p
    }

    /// A confirmable POST.
    fn post(&mut self, path: &str, content_format: Option<u16>, payload: &[u8]) -> Packet {
        self.request(
            MessageType::Confirmable,
            RequestType::Post,
            path,
            content_format,
            payload,
        )
    }

    async fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.expect("send");
    }

    /// The next datagram, if one comes within `wait`.
    async fn receive(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(wait, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .expect("receive");
        buf.truncate(n);
        Some(buf)
    }

    /// Sends `p` and returns the answer, which must match it.
    async fn exchange(&self, p: &Packet) -> Packet {
        self.send(&p.to_bytes().expect("frame")).await;
        let bytes = self
            .receive(Duration::from_secs(15))
            .await
            .expect("an answer within 15 s");
        let answer = Packet::from_bytes(&bytes).expect("a CoAP message");
        assert_eq!(answer.get_token(), p.get_token(), "the request's token");
        if p.header.get_type() == MessageType::Confirmable {
            assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
            assert_eq!(answer.header.message_id, p.header.message_id);
        } else {
            assert_eq!(answer.header.get_type(), MessageType::NonConfirmable);
        }
        answer
    }
}

fn code(p: &Packet) -> ResponseType {
    match p.header.code {
        MessageClass::Response(c) => c,
        other => panic!("not a response: {other:?}"),
    }
}

fn cbor(v: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("cbor");
    out
}

fn q(secret: &str) -> String {
    format!("?secret={secret}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_are_acknowledged_once_published_as_events_of_the_resource_type() {
    let (mut node, at) = start(CoapConfig::default()).await;
    let mut d = Device::new(at).await;

    // Text, confirmable: the ACK carries 2.04, the event the typed reading.
    let p = d.post(
        &format!("/t1/Temperature{}", q(T1_SECRET)),
        Some(0),
        b"21.5",
    );
    let answer = d.exchange(&p).await;
    assert_eq!(code(&answer), ResponseType::Changed);
    let ev = node.next_event_from("t1", "Temperature").await;
    let r = &ev.readings[0];
    assert_eq!((r.value_type, r.units.as_str()), (ValueType::Float64, "C"));
    assert!((float(&r.value) - 21.5).abs() < 1e-9, "{r:?}");

    // CBOR (an unsigned integer), with PUT.
    let body = cbor(&ciborium::Value::Integer(42.into()));
    let p = d.request(
        MessageType::Confirmable,
        RequestType::Put,
        &format!("/t1/Humidity{}", q(T1_SECRET)),
        Some(60),
        &body,
    );
    assert_eq!(code(&d.exchange(&p).await), ResponseType::Changed);
    let ev = node.next_event_from("t1", "Humidity").await;
    assert_eq!(ev.readings[0].value_type, ValueType::Uint8);
    assert_eq!(simple(&ev.readings[0].value), "42");

    // Several resources at once in JSON, with the device's own time (milliseconds).
    let body = json!({"Temperature": 20.25, "Humidity": 40, "timestamp": 1_700_000_000_000_i64});
    let p = d.post(
        &format!("/t1{}", q(T1_SECRET)),
        Some(50),
        body.to_string().as_bytes(),
    );
    assert_eq!(code(&d.exchange(&p).await), ResponseType::Changed);
    node.expect_climate_telemetry("t1", 1_700_000_000_000_000_000)
        .await;

    // The same in CBOR, to EdgeX device-coap's path, non-confirmable: a non-confirmable
    // answer.
    let body = cbor(&ciborium::Value::Map(vec![
        ("Temperature".into(), ciborium::Value::Float(20.25)),
        ("Humidity".into(), ciborium::Value::Integer(40.into())),
        (
            "timestamp".into(),
            ciborium::Value::Integer(1_700_000_001.into()),
        ),
    ]));
    let p = d.request(
        MessageType::NonConfirmable,
        RequestType::Post,
        &format!("/t1{}", q(T1_SECRET)),
        Some(60),
        &body,
    );
    assert_eq!(code(&d.exchange(&p).await), ResponseType::Changed);
    node.expect_climate_telemetry("t1", 1_700_000_001_000_000_000)
        .await;
    let p = d.post(&format!("/a1r/t1/Humidity{}", q(T1_SECRET)), None, b"17");
    assert_eq!(code(&d.exchange(&p).await), ResponseType::Changed);
    let ev = node.next_event_from("t1", "Humidity").await;
    assert_eq!(simple(&ev.readings[0].value), "17");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_message_gets_the_same_answer_and_publishes_nothing() {
    let (mut node, at) = start(CoapConfig::default()).await;
    let mut d = Device::new(at).await;
    let p = d.post(&format!("/t1/Humidity{}", q(T1_SECRET)), Some(0), b"1");
    let bytes = p.to_bytes().expect("frame");
    d.send(&bytes).await;
    let first = d.receive(Duration::from_secs(15)).await.expect("answered");
    assert_eq!(
        code(&Packet::from_bytes(&first).expect("coap")),
        ResponseType::Changed
    );
    // The device did not hear the ACK and sends the message again, twice.
    for _ in 0..2 {
        d.send(&bytes).await;
        let again = d.receive(Duration::from_secs(15)).await.expect("answered");
        assert_eq!(again, first, "a copy gets the very answer of the first");
    }
    assert!(node.metric(DROPPED, "duplicate").await >= 2);
    // The next event is the next message's: the copies published nothing.
    assert_eq!(
        simple(&node.next_event_from("t1", "Humidity").await.readings[0].value),
        "1"
    );
    let p = d.post(&format!("/t1/Humidity{}", q(T1_SECRET)), Some(0), b"2");
    assert_eq!(code(&d.exchange(&p).await), ResponseType::Changed);
    assert_eq!(
        simple(&node.next_event_from("t1", "Humidity").await.readings[0].value),
        "2"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_codes_garbage_is_counted_and_nothing_is_published() {
    let (mut node, at) = start(CoapConfig {
        max_body_bytes: 256,
        ..CoapConfig::default()
    })
    .await;
    let mut d = Device::new(at).await;
    let t1 = q(T1_SECRET);
    let bad_tokens = node.metric(REJECTED, "bad_token").await;
    let cases: Vec<(Packet, ResponseType)> = vec![
        (
            d.post("/t1/Temperature", Some(0), b"1"),
            ResponseType::Unauthorized,
        ),
        (
            d.post("/t1/Temperature?secret=wrong-secret", Some(0), b"1"),
            ResponseType::Unauthorized,
        ),
        // Another device's secret is no good for t1.
        (
            d.post(&format!("/t1/Temperature{}", q(T2_SECRET)), Some(0), b"1"),
            ResponseType::Unauthorized,
        ),
        (
            d.post(&format!("/t1/NoSuch{t1}"), Some(0), b"1"),
            ResponseType::NotFound,
        ),
        (
            d.post(&format!("/t1/Temperature{t1}"), Some(0), b"warm"),
            ResponseType::BadRequest,
        ),
        (
            d.post(&format!("/t1/Humidity{t1}"), Some(0), b"300"),
            ResponseType::BadRequest,
        ),
        (
            d.post(&format!("/t1/Temperature{t1}"), Some(41), b"<t/>"),
            ResponseType::UnsupportedContentFormat,
        ),
        (
            d.post(&format!("/t1{t1}"), Some(50), b"{\"Temperature\":"),
            ResponseType::BadRequest,
        ),
        (
            d.post(&format!("/t1{t1}"), Some(0), b"21"),
            ResponseType::BadRequest,
        ),
        (
            d.post(&format!("/t1{t1}"), Some(50), &[b' '; 300]),
            ResponseType::RequestEntityTooLarge,
        ),
        (
            d.request(
                MessageType::Confirmable,
                RequestType::Get,
                &format!("/t1/Temperature{t1}"),
                None,
                b"",
            ),
            ResponseType::MethodNotAllowed,
        ),
        (d.post("/", None, b"1"), ResponseType::NotFound),
    ];
    for (p, want) in &cases {
        let answer = d.exchange(p).await;
        assert_eq!(
            code(&answer),
            *want,
            "{:?}: {}",
            p.get_option(CoapOption::UriPath),
            String::from_utf8_lossy(&answer.payload)
        );
        if *want == ResponseType::RequestEntityTooLarge {
            let size1 = answer.get_first_option(CoapOption::Size1).expect("Size1");
            assert_eq!(
                size1.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)),
                256
            );
        }
    }
    // A critical option it does not know (Proxy-Uri).
    let mut p = d.post(&format!("/t1/Temperature{t1}"), Some(0), b"1");
    p.add_option(CoapOption::ProxyUri, b"coap://elsewhere/x".to_vec());
    assert_eq!(code(&d.exchange(&p).await), ResponseType::BadOption);
    assert_eq!(node.metric(REJECTED, "bad_token").await, bad_tokens + 2);

    // Garbage: a confirmable message whose token cannot be read gets a reset with its
    // Message ID; a datagram too short for a header gets nothing; a ping gets a reset.
    d.send(&[0x49, 0x02, 0x12, 0x34, 1, 2]).await;
    let rst = Packet::from_bytes(&d.receive(Duration::from_secs(15)).await.expect("a reset"))
        .expect("coap");
    assert_eq!(
        (rst.header.get_type(), rst.header.message_id),
        (MessageType::Reset, 0x1234)
    );
    d.send(&[0x40, 0x02]).await;
    d.send(&[0x40, 0x00, 0x00, 0x07]).await;
    let rst = Packet::from_bytes(&d.receive(Duration::from_secs(15)).await.expect("a reset"))
        .expect("coap");
    assert_eq!(
        (rst.header.get_type(), rst.header.message_id),
        (MessageType::Reset, 7)
    );
    assert!(node.metric(DROPPED, "malformed").await >= 2);

    // And the device that sends well is served: its event is the first of them all.
    let p = d.post(&format!("/t1/Humidity{t1}"), Some(0), b"5");
    assert_eq!(code(&d.exchange(&p).await), ResponseType::Changed);
    assert_eq!(
        simple(&node.next_event_from("t1", "Humidity").await.readings[0].value),
        "5"
    );
    assert!(
        node.ds
            .metric(&format!("{REQUESTS}{{code=\"4.01\"}}"))
            .await
            >= 3
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_in_blocks_is_published_whole_once_and_within_the_limit() {
    let (mut node, at) = start(CoapConfig {
        max_body_bytes: 256,
        ..CoapConfig::default()
    })
    .await;
    let mut d = Device::new(at).await;
    let path = format!("/t1{}", q(T1_SECRET));
    // 90 bytes of JSON in blocks of 32: 2.31 Continue twice, then 2.04 and one event.
    let mut body =
        r#"{"Temperature": 20.25, "Humidity": 40, "timestamp": 1700000000000"#.to_string();
    body.push_str(&" ".repeat(89 - body.len()));
    body.push('}');
    assert_eq!(body.len(), 90);
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(32).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let more = i + 1 < chunks.len();
        let mut p = d.post(&path, Some(50), chunk);
        p.add_option_as(
            CoapOption::Block1,
            BlockValue::new(i, more, 32).expect("block"),
        );
        let answer = d.exchange(&p).await;
        let want = if more {
            ResponseType::Continue
        } else {
            ResponseType::Changed
        };
        assert_eq!(
            code(&answer),
            want,
            "{}",
            String::from_utf8_lossy(&answer.payload)
        );
        let b1 = answer
            .get_first_option_as::<BlockValue>(CoapOption::Block1)
            .expect("Block1")
            .expect("a block value");
        assert_eq!((usize::from(b1.num), b1.more), (i, more));
    }
    node.expect_climate_telemetry("t1", 1_700_000_000_000_000_000)
        .await;

    // Beyond max_body_bytes: 4.13 with Size1, and nothing published.
    let mut last = None;
    for i in 0..5 {
        let mut p = d.post(&path, Some(50), &[b' '; 64]);
        p.add_option_as(
            CoapOption::Block1,
            BlockValue::new(i, true, 64).expect("block"),
        );
        last = Some(code(&d.exchange(&p).await));
        if last != Some(ResponseType::Continue) {
            break;
        }
    }
    assert_eq!(last, Some(ResponseType::RequestEntityTooLarge));
    // A block that does not follow the one before: 4.08.
    let mut p = d.post(&path, Some(50), &[b' '; 32]);
    p.add_option_as(
        CoapOption::Block1,
        BlockValue::new(3, true, 32).expect("block"),
    );
    assert_eq!(
        code(&d.exchange(&p).await),
        ResponseType::RequestEntityIncomplete
    );

    let p = d.post(&format!("/t1/Humidity{}", q(T1_SECRET)), Some(0), b"9");
    assert_eq!(code(&d.exchange(&p).await), ResponseType::Changed);
    assert_eq!(
        simple(&node.next_event_from("t1", "Humidity").await.readings[0].value),
        "9"
    );
    node.stop().await;
}
