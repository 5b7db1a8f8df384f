//! Router tests (the service built as the node builds it, driven without sockets) and
//! delivery to real peers: an HTTP receiver, mosquitto, and an SMTP server
//! (tests/peers/smtp_server.py, aiosmtpd) with STARTTLS.

use std::time::Duration;

use axum::http::StatusCode;
use outpost_testkit::postgres::Backend;
use outpost_testkit::{Drive, Mosquitto, Service, WAIT, context, until};
use serde_json::{Value, json};

use crate::{Config, SupportNotifications};

outpost_testkit::on_both_backends!(
    a_batch_with_one_invalid_item_is_refused_whole_and_nothing_is_stored,
    notifications_are_queried_paged_acknowledged_and_cleaned_up,
    subscriptions_are_added_patched_listed_and_deleted_as_edgex_does,
    a_webhook_gets_the_notification_after_resends_and_every_attempt_is_recorded,
    a_critical_notification_nobody_takes_is_escalated_once_and_others_fail,
    a_delivery_owed_when_the_service_stops_is_made_after_it_starts_again,
    field_names_match_in_any_case_as_edgex_reads_them,
);

const N: &str = "/api/v3/notification";
const S: &str = "/api/v3/subscription";

fn config(b: Backend) -> Config {
    Config {
        resend_interval: "200ms".into(),
        send_timeout_ms: 2_000,
        rules_alerts: false,
        storage: b.storage(),
        ..Config::default()
    }
}

async fn service(cfg: Config) -> Service {
    Service::build_in::<SupportNotifications>(context(crate::SERVICE, &[]).off_bus(), cfg).await
}

fn notification(category: &str, labels: &[&str], severity: &str, content: &str) -> Value {
    let mut n = json!({"content": content, "sender": "taf-admin", "severity": severity,
        "contentType": "text/plain", "labels": labels});
    if !category.is_empty() {
        n["category"] = category.into();
    }
    json!({"apiVersion": "v3", "notification": n})
}

fn rest_channel(port: u16, path: &str) -> Value {
    json!({"type": "REST", "host": "127.0.0.1", "port": port, "path": path, "httpMethod": "POST"})
}

fn subscription(name: &str, channels: Value, extra: Value) -> Value {
    let mut s = json!({"name": name, "channels": channels, "receiver": "tafuser",
        "categories": ["health-check"], "labels": ["simple"], "adminState": "UNLOCKED"});
    if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
        s.extend(extra.clone());
    }
    json!({"apiVersion": "v3", "subscription": s})
}

/// Posts `items` to `path` and answers each item's status code (and id).
async fn post(svc: &Service, path: &str, items: Vec<Value>) -> Vec<(u64, String)> {
    let body = svc
        .expect(
            "POST",
            path,
            Some(Value::Array(items)),
            StatusCode::MULTI_STATUS,
        )
        .await;
    body.as_array()
        .expect("a 207 answer is an array")
        .iter()
        .map(|e| {
            (
                e["statusCode"].as_u64().unwrap_or(0),
                e["id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn total(svc: &Service, path: &str) -> u64 {
    svc.expect("GET", path, None, StatusCode::OK).await["totalCount"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

async fn a_batch_with_one_invalid_item_is_refused_whole_and_nothing_is_stored(b: Backend) {
    let svc = service(config(b)).await;
    for bad in [
        json!({"content": "", "sender": "a", "severity": "NORMAL", "category": "c"}),
        json!({"content": "x", "sender": "test@123", "severity": "NORMAL", "category": "c"}),
        json!({"content": "x", "sender": "a", "severity": "LOUD", "category": "c"}),
        json!({"content": "x", "sender": "a", "severity": "NORMAL"}),
        json!({"content": "x", "sender": "a", "severity": "NORMAL", "category": "c", "status": "Invalid"}),
        json!({"content": 5, "sender": "a", "severity": "NORMAL", "category": "c"}),
    ] {
        let body = json!([notification("health-check", &[], "NORMAL", "fine"),
            {"apiVersion": "v3", "notification": bad}]);
        let e = svc
            .expect("POST", N, Some(body), StatusCode::BAD_REQUEST)
            .await;
        assert_eq!(e["statusCode"], 400, "{e}");
    }
    // Not a JSON array, an empty one, a wrong apiVersion.
    for body in [
        json!({"a": 1}),
        json!([]),
        json!([{"apiVersion": "v2", "notification": {}}]),
    ] {
        svc.expect("POST", N, Some(body), StatusCode::BAD_REQUEST)
            .await;
    }
    let all = format!("{N}/start/0/end/{}", i64::MAX);
    assert_eq!(total(&svc, &all).await, 0);
}

async fn notifications_are_queried_paged_acknowledged_and_cleaned_up(b: Backend) {
    let svc = service(config(b)).await;
    let made = post(
        &svc,
        N,
        vec![
            notification("health-check", &["simple"], "NORMAL", "one"),
            notification("health-check", &[], "MINOR", "two"),
            notification("", &["simple", "other"], "CRITICAL", "three"),
        ],
    )
    .await;
    assert!(
        made.iter().all(|(s, id)| *s == 201 && !id.is_empty()),
        "{made:?}"
    );
    let id = |i: usize| made[i].1.clone();
    assert_eq!(total(&svc, &format!("{N}/category/health-check")).await, 2);
    assert_eq!(total(&svc, &format!("{N}/label/simple")).await, 2);
    assert_eq!(total(&svc, &format!("{N}/label/other")).await, 1);
    // Distribution happened (with no subscription): every one is PROCESSED.
    assert_eq!(total(&svc, &format!("{N}/status/PROCESSED")).await, 3);
    svc.expect(
        "GET",
        &format!("{N}/status/DONE"),
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Paging: totalCount is every match, the page only what was asked.
    let page = svc
        .expect(
            "GET",
            &format!("{N}/label/simple?offset=1&limit=1"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(page["totalCount"], 2);
    assert_eq!(page["notifications"].as_array().map(Vec::len), Some(1));
    for (q, want) in [
        ("offset=4", StatusCode::RANGE_NOT_SATISFIABLE),
        ("offset=3", StatusCode::OK),
        ("limit=1025", StatusCode::BAD_REQUEST),
        ("limit=x", StatusCode::BAD_REQUEST),
        ("offset=-1", StatusCode::BAD_REQUEST),
        ("ack=maybe", StatusCode::BAD_REQUEST),
    ] {
        svc.expect(
            "GET",
            &format!("{N}/start/0/end/{}?{q}", i64::MAX),
            None,
            want,
        )
        .await;
    }
    svc.expect(
        "GET",
        &format!("{N}/start/10/end/5"),
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    svc.expect(
        "GET",
        &format!("{N}/start/x/end/5"),
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // The query by body.
    let q =
        json!({"apiVersion": "v3", "queryCondition": {"category": ["health-check"], "start": 0}});
    let found = svc.expect("GET", N, Some(q), StatusCode::OK).await;
    assert_eq!(found["totalCount"], 2);
    svc.expect("GET", N, None, StatusCode::BAD_REQUEST).await;

    // One by id; not a UUID is a 400, an unknown one a 404.
    let one = svc
        .expect("GET", &format!("{N}/id/{}", id(0)), None, StatusCode::OK)
        .await;
    assert_eq!(one["notification"]["content"], "one");
    assert_eq!(one["notification"]["acknowledged"], false);
    svc.expect(
        "GET",
        &format!("{N}/id/Invalid"),
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let unknown = uuid::Uuid::new_v4();
    svc.expect(
        "GET",
        &format!("{N}/id/{unknown}"),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;

    // Acknowledge two; an unknown id among them changes nothing.
    let ids = format!("{},{}", id(0), id(1));
    svc.expect(
        "PUT",
        &format!("{N}/acknowledge/ids/{},{unknown}", id(2)),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    svc.expect(
        "PUT",
        &format!("{N}/acknowledge/ids/{ids}"),
        None,
        StatusCode::OK,
    )
    .await;
    let all = format!("{N}/start/0/end/{}", i64::MAX);
    assert_eq!(total(&svc, &format!("{all}?ack=true")).await, 2);
    assert_eq!(total(&svc, &format!("{all}?ack=false")).await, 1);
    svc.expect(
        "PUT",
        &format!("{N}/unacknowledge/ids/{}", id(0)),
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(total(&svc, &format!("{all}?ack=true")).await, 1);

    // Deleting.
    svc.expect("DELETE", &format!("{N}/id/{}", id(0)), None, StatusCode::OK)
        .await;
    svc.expect(
        "DELETE",
        &format!("{N}/id/{}", id(0)),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    svc.expect(
        "DELETE",
        &format!("{N}/age/x"),
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    svc.expect(
        "DELETE",
        &format!("{N}/age/-5"),
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Nothing is a day old yet.
    svc.expect(
        "DELETE",
        "/api/v3/cleanup/age/86400000",
        None,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(total(&svc, &all).await, 2);
    svc.expect("DELETE", "/api/v3/cleanup", None, StatusCode::ACCEPTED)
        .await;
    assert_eq!(total(&svc, &all).await, 0);
}

async fn subscriptions_are_added_patched_listed_and_deleted_as_edgex_does(b: Backend) {
    let svc = service(config(b)).await;
    let email = json!([{"type": "EMAIL", "recipients": ["ops@example.com"]}]);
    let made = post(
        &svc,
        S,
        vec![
            subscription("sub-a", email.clone(), json!({})),
            subscription(
                "测试中文訂閱名称",
                email.clone(),
                json!({"categories": ["other"]}),
            ),
            subscription("sub-a", email.clone(), json!({})),
        ],
    )
    .await;
    assert_eq!(
        made.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![201, 201, 409]
    );
    let name = "%E6%B5%8B%E8%AF%95%E4%B8%AD%E6%96%87%E8%A8%82%E9%96%B1%E5%90%8D%E7%A7%B0";
    svc.expect("GET", &format!("{S}/name/{name}"), None, StatusCode::OK)
        .await;
    for bad in [
        json!({"name": ""}),
        json!({"channels": []}),
        json!({"receiver": ""}),
        json!({"categories": [], "labels": []}),
        json!({"resendInterval": "invalid"}),
        json!({"channels": [{"type": "REST", "host": "", "port": 80, "httpMethod": "POST"}]}),
        json!({"channels": [{"type": "REST", "host": "h", "httpMethod": "POST"}]}),
        json!({"channels": [{"type": "REST", "host": "h", "port": 80, "httpMethod": ""}]}),
        json!({"channels": [{"type": "SMS", "host": "h", "port": 80}]}),
        json!({"channels": [{"type": "EMAIL", "recipients": ["123", "456"]}]}),
        json!({"adminState": "invalid"}),
        json!({"name": "a/b"}),
        json!({"name": ".."}),
    ] {
        let body = json!([subscription("fine", email.clone(), bad.clone())]);
        svc.expect("POST", S, Some(body), StatusCode::BAD_REQUEST)
            .await;
    }
    assert_eq!(total(&svc, &format!("{S}/all")).await, 2);
    assert_eq!(total(&svc, &format!("{S}/category/health-check")).await, 1);
    assert_eq!(total(&svc, &format!("{S}/label/simple")).await, 2);
    assert_eq!(total(&svc, &format!("{S}/receiver/tafuser")).await, 2);

    // PATCH: what is present replaces what is stored; per-item outcomes in the 207.
    let patch = |s: Value| json!({"apiVersion": "v3", "subscription": s});
    let body = Value::Array(vec![
        patch(
            json!({"name": "sub-a", "resendLimit": 3, "resendInterval": "10h",
            "labels": ["x"], "channels": [{"type": "REST", "host": "localhost", "port": 8888, "httpMethod": "PUT"}]}),
        ),
        patch(json!({"name": "nobody", "description": "d"})),
        patch(json!({"id": made[0].1, "name": "renamed"})),
        patch(json!({"name": "测试中文訂閱名称", "categories": [], "labels": []})),
    ]);
    svc.expect("PATCH", S, Some(body), StatusCode::BAD_REQUEST)
        .await;
    let body = Value::Array(vec![
        patch(
            json!({"name": "sub-a", "resendLimit": 3, "resendInterval": "10h",
            "labels": ["x"], "channels": [{"type": "REST", "host": "localhost", "port": 8888, "httpMethod": "PUT"}]}),
        ),
        patch(json!({"name": "nobody", "description": "d"})),
        patch(json!({"id": made[0].1, "name": "renamed"})),
        patch(json!({"name": "测试中文訂閱名称", "labels": []})),
    ]);
    let out = svc
        .expect("PATCH", S, Some(body), StatusCode::MULTI_STATUS)
        .await;
    let codes: Vec<_> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["statusCode"].clone())
        .collect();
    assert_eq!(
        codes,
        vec![json!(200), json!(404), json!(400), json!(200)],
        "{out}"
    );
    let a = svc
        .expect("GET", &format!("{S}/name/sub-a"), None, StatusCode::OK)
        .await;
    let a = &a["subscription"];
    assert_eq!(
        (a["resendLimit"].clone(), a["resendInterval"].clone()),
        (json!(3), json!("10h"))
    );
    assert_eq!(a["labels"], json!(["x"]));
    assert_eq!(a["categories"], json!(["health-check"]));
    assert_eq!(a["channels"][0]["httpMethod"], "PUT");

    svc.expect("DELETE", &format!("{S}/name/sub-a"), None, StatusCode::OK)
        .await;
    svc.expect(
        "DELETE",
        &format!("{S}/name/sub-a"),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    svc.expect(
        "GET",
        &format!("{S}/name/sub-a"),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
}

use outpost_testkit::webhook::Webhook as Receiver;

async fn transmissions(svc: &Service, path: &str) -> Vec<Value> {
    svc.expect("GET", path, None, StatusCode::OK).await["transmissions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn a_webhook_gets_the_notification_after_resends_and_every_attempt_is_recorded(b: Backend) {
    let svc = service(config(b)).await;
    let port = outpost_testkit::free_port();
    let receiver = Receiver::start(port, 2).await;
    let made = post(
        &svc,
        S,
        vec![
            subscription(
                "hook",
                json!([rest_channel(port, "/hook")]),
                json!({"resendLimit": 3}),
            ),
            // Locked: matched, never sent.
            subscription(
                "locked",
                json!([rest_channel(port, "/locked")]),
                json!({"adminState": "LOCKED"}),
            ),
        ],
    )
    .await;
    assert!(made.iter().all(|m| m.0 == 201));
    let sent = post(
        &svc,
        N,
        vec![
            notification(
                "health-check",
                &["simple"],
                "NORMAL",
                "boiler pressure high",
            ),
            // Not for "hook": a label it does not have.
            notification("health-check", &["simple", "other"], "NORMAL", "not for it"),
        ],
    )
    .await;
    let t = until("the receiver gets the notification", WAIT, async || {
        let list = transmissions(&svc, "/api/v3/transmission/status/SENT").await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(
        receiver.got(),
        vec![("/hook".to_string(), "boiler pressure high".to_string())]
    );
    let t = &t[0];
    assert_eq!(t["notificationId"], sent[0].1.as_str());
    assert_eq!(t["subscriptionName"], "hook");
    assert_eq!(t["resendCount"], 2);
    let statuses: Vec<_> = t["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        vec![json!("FAILED"), json!("FAILED"), json!("SENT")]
    );
    assert!(
        t["records"][0]["response"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{t}"
    );
    assert_eq!(total(&svc, "/api/v3/transmission/all").await, 1);
    assert_eq!(
        total(
            &svc,
            &format!("/api/v3/transmission/notification/id/{}", sent[1].1)
        )
        .await,
        0
    );
    assert_eq!(
        total(&svc, "/api/v3/transmission/subscription/name/hook").await,
        1
    );
    svc.expect(
        "GET",
        "/api/v3/transmission/status/NOPE",
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Finished transmissions go by age; a day is more than their age.
    svc.expect(
        "DELETE",
        "/api/v3/transmission/age/86400000",
        None,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(total(&svc, "/api/v3/transmission/all").await, 1);
    svc.expect(
        "DELETE",
        "/api/v3/transmission/age/0",
        None,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(total(&svc, "/api/v3/transmission/all").await, 0);
}

async fn a_critical_notification_nobody_takes_is_escalated_once_and_others_fail(b: Backend) {
    let svc = service(config(b)).await;
    let (down, up) = (outpost_testkit::free_port(), outpost_testkit::free_port());
    let receiver = Receiver::start(up, 0).await;
    post(
        &svc,
        S,
        vec![
            subscription(
                "down",
                json!([rest_channel(down, "/x")]),
                json!({"resendLimit": 1, "resendInterval": "100ms"}),
            ),
            subscription(
                "ESCALATION",
                json!([rest_channel(up, "/escalated")]),
                json!({"categories": ["escalations-only"], "labels": []}),
            ),
        ],
    )
    .await;
    post(
        &svc,
        N,
        vec![
            notification("health-check", &["simple"], "CRITICAL", "tank overflow"),
            notification("health-check", &["simple"], "MINOR", "tank almost full"),
        ],
    )
    .await;
    until("the escalated copy arrives", WAIT, async || {
        (!receiver.got().is_empty()).then_some(())
    })
    .await;
    let (path, body) = receiver.got()[0].clone();
    assert_eq!(path, "/escalated");
    assert!(
        body.starts_with("[This notification is escalated by the transmission "),
        "{body}"
    );
    assert!(body.ends_with("] tank overflow"), "{body}");
    until("the other delivery fails for good", WAIT, async || {
        (total(&svc, "/api/v3/transmission/status/FAILED").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        total(&svc, "/api/v3/transmission/status/ESCALATED").await,
        1
    );
    assert_eq!(
        total(&svc, "/api/v3/notification/status/ESCALATED").await,
        1
    );
    assert_eq!(
        total(&svc, "/api/v3/notification/status/PROCESSED").await,
        2
    );
    let failed = transmissions(&svc, "/api/v3/transmission/status/FAILED").await;
    assert_eq!(failed[0]["resendCount"], 1);
    assert_eq!(failed[0]["records"].as_array().map(Vec::len), Some(2));
    // Once: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.got().len(), 1);
}

async fn a_delivery_owed_when_the_service_stops_is_made_after_it_starts_again(b: Backend) {
    let cfg = Config {
        resend_interval: "1s".into(),
        resend_limit: 30,
        ..config(b)
    };
    let svc = service(cfg.clone()).await;
    let port = outpost_testkit::free_port();
    post(
        &svc,
        S,
        vec![subscription(
            "hook",
            json!([rest_channel(port, "/hook")]),
            json!({}),
        )],
    )
    .await;
    post(
        &svc,
        N,
        vec![notification("health-check", &[], "NORMAL", "kept")],
    )
    .await;
    until("a first attempt fails", WAIT, async || {
        (total(&svc, "/api/v3/transmission/status/RESENDING").await == 1).then_some(())
    })
    .await;
    // Stopped in the middle of its resends; the receiver comes up meanwhile.
    let test = svc.stop().await;
    let receiver = Receiver::start(port, 0).await;
    let svc = Service::build_in::<SupportNotifications>(test, cfg).await;
    until("the delivery resumes", WAIT, async || {
        (receiver.got().len() == 1).then_some(())
    })
    .await;
    let t = until("the transmission is recorded as sent", WAIT, async || {
        let list = transmissions(&svc, "/api/v3/transmission/status/SENT").await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert!(t[0]["resendCount"].as_i64().unwrap_or(0) >= 1, "{}", t[0]);
    assert_eq!(receiver.got()[0].1, "kept");
}

#[tokio::test]
async fn an_mqtt_channel_publishes_the_notification_to_the_broker() {
    let broker = Mosquitto::start();
    let client = outpost_testkit::bus::Client::connect(&broker.url(), "watcher").await;
    let mut rx = client.subscribe("alerts/boiler").await;
    let svc = service(config(Backend::Sqlite)).await;
    let ch = json!([{"type": "MQTT", "host": "127.0.0.1", "port": broker.port,
        "publisher": "outpost-notifications", "topic": "alerts/boiler", "qos": 1}]);
    post(&svc, S, vec![subscription("mqtt", ch, json!({}))]).await;
    let made = post(
        &svc,
        N,
        vec![notification("health-check", &[], "NORMAL", "over MQTT")],
    )
    .await;
    let d = outpost_testkit::bus::next(&mut rx, "the notification on alerts/boiler").await;
    let v: Value = serde_json::from_slice(&d.payload).expect("JSON");
    assert_eq!(v["content"], "over MQTT");
    assert_eq!(v["id"], made[0].1.as_str());
    until("recorded as sent", WAIT, async || {
        (total(&svc, "/api/v3/transmission/status/SENT").await == 1).then_some(())
    })
    .await;
}

/// The SMTP server of the tests: aiosmtpd with STARTTLS and a login, writing each message
/// it accepts to a file.
struct SmtpServer {
    child: tokio::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    async fn start(ca_dir: &std::path::Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = outpost_testkit::free_port();
        let paths = outpost_pki::Paths::new(ca_dir);
        outpost_pki::ensure_ca(&paths).expect("a CA");
        outpost_pki::ensure_server_cert(&paths, &["localhost".into(), "127.0.0.1".into()])
            .expect("a server certificate");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/peers/smtp_server.py");
        let child = tokio::process::Command::new(outpost_testkit::peer("aiosmtpd/bin/python"))
            .arg(script)
            .args(["--port", &port.to_string(), "--cert"])
            .arg(&paths.cert)
            .arg("--key")
            .arg(&paths.key)
            .arg("--out")
            .arg(dir.path())
            .args(["--user", "mailer", "--password", "s3cret"])
            .kill_on_drop(true)
            .spawn()
            .expect("the SMTP server");
        until("the SMTP server listens", WAIT, async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self { child, port, dir }
    }

    fn messages(&self) -> Vec<String> {
        let mut out: Vec<_> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

#[tokio::test]
async fn e_mail_goes_out_over_starttls_with_the_stored_login() {
    let ca = tempfile::tempdir().expect("tempdir");
    let mut server = SmtpServer::start(ca.path()).await;
    let mut cfg = config(Backend::Sqlite);
    cfg.smtp.host = "localhost".into();
    cfg.smtp.port = server.port;
    cfg.smtp.sender = "outpost@example.com".into();
    cfg.smtp.ca_file = Some(outpost_pki::Paths::new(ca.path()).ca_cert);
    let svc = service(cfg).await;
    let email = json!([{"type": "EMAIL", "recipients": ["ops@example.com", "lead@example.com"]}]);
    post(
        &svc,
        S,
        vec![subscription(
            "mail",
            email,
            json!({"resendLimit": 1, "resendInterval": "3s"}),
        )],
    )
    .await;
    // Without the login the server refuses the message: recorded, then resent once the
    // secret is stored.
    post(
        &svc,
        N,
        vec![notification(
            "health-check",
            &[],
            "NORMAL",
            "line one\n.line two",
        )],
    )
    .await;
    until("the first attempt is refused", WAIT, async || {
        (total(&svc, "/api/v3/transmission/status/RESENDING").await == 1).then_some(())
    })
    .await;
    let secret = json!({"apiVersion": "v3", "secretName": "smtp",
        "secretData": [{"key": "username", "value": "mailer"}, {"key": "password", "value": "s3cret"}]});
    svc.expect("POST", "/api/v3/secret", Some(secret), StatusCode::CREATED)
        .await;
    svc.expect(
        "POST",
        "/api/v3/secret",
        Some(json!({"apiVersion": "v3", "secretName": ""})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    post(
        &svc,
        N,
        vec![notification("health-check", &[], "NORMAL", "second")],
    )
    .await;
    until("both messages arrive", WAIT, async || {
        (server.messages().len() == 2).then_some(())
    })
    .await;
    let all = server.messages().join("\n");
    assert!(
        all.contains("line one\n.line two") || all.contains("line one\r\n.line two"),
        "{all}"
    );
    assert!(
        all.contains("To: ops@example.com, lead@example.com"),
        "{all}"
    );
    assert!(all.contains("X-Peer-TLS: yes"), "{all}");
    assert!(all.contains("X-Peer-Login: mailer"), "{all}");
    let _ = server.child.kill().await;
}

#[tokio::test]
async fn a_rules_alert_becomes_one_notification_for_its_subscribers() {
    use outpost_contracts::envelope::{Encoding, Envelope};
    let broker = Mosquitto::start();
    let cfg = Config {
        rules_alerts: true,
        ..config(Backend::Sqlite)
    };
    let svc = Service::build_in::<SupportNotifications>(
        context(crate::SERVICE, &[]).with_bus(&broker.url()),
        cfg,
    )
    .await;
    let port = outpost_testkit::free_port();
    let hook = Receiver::start(port, 0).await;
    post(
        &svc,
        S,
        vec![subscription(
            "on-call",
            json!([rest_channel(port, "/alert")]),
            json!({"categories": ["rules-alert"], "labels": []}),
        )],
    )
    .await;
    let alert = outpost_contracts::export::Alert {
        id: uuid::Uuid::new_v4().to_string(),
        pipeline: "tank-1m".into(),
        device_name: "tank-7".into(),
        resource_name: "level".into(),
        value: "93.5".into(),
        condition: "value > 80".into(),
        severity: "critical".into(),
        origin: 1,
        message: "tank too full".into(),
    };
    let bytes = Envelope::new(&alert, "c0ffee", Encoding::Json)
        .encode(Encoding::Json)
        .expect("envelope");
    let publisher = outpost_testkit::bus::Client::connect(&broker.url(), "rules-like").await;
    let topic = outpost_contracts::topics::alert("edgex", "tank-1m", "tank-7");
    // Until the consumer subscribed, publish again (the same alert: stored once).
    until("the alert reaches the subscriber", WAIT, async || {
        publisher.publish(&topic, &bytes).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        (!hook.got().is_empty()).then_some(())
    })
    .await;
    publisher.publish(&topic, &bytes).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = svc
        .expect("GET", &format!("{N}/id/{}", alert.id), None, StatusCode::OK)
        .await;
    assert_eq!(n["notification"]["severity"], "CRITICAL");
    assert_eq!(
        n["notification"]["description"],
        "alert of rules pipeline tank-1m"
    );
    assert_eq!(total(&svc, &format!("{N}/category/rules-alert")).await, 1);
    assert_eq!(hook.got().len(), 1);
    assert!(
        hook.got()[0]
            .1
            .starts_with("tank too full (tank-7/level: value > 80"),
        "{:?}",
        hook.got()
    );
}

async fn field_names_match_in_any_case_as_edgex_reads_them(b: Backend) {
    let svc = service(config(b)).await;
    // EdgeX's own test data writes "AdminState"; Go matches it to adminState.
    let s = json!({"apiVersion": "v3", "subscription": {"Name": "loose", "RECEIVER": "tafuser",
        "channels": [{"Type": "EMAIL", "recipients": ["ops@example.com"]}],
        "Categories": ["health-check"], "AdminState": "UNLOCKED"}});
    assert_eq!(post(&svc, S, vec![s]).await[0].0, 201);
    let got = svc
        .expect("GET", &format!("{S}/name/loose"), None, StatusCode::OK)
        .await;
    assert_eq!(got["subscription"]["adminState"], "UNLOCKED");
    assert_eq!(got["subscription"]["channels"][0]["type"], "EMAIL");
}

/// On PostgreSQL, what a notification says, where a subscription delivers and the
/// secrets' values reach the database's rows sealed; what lists select on does not.
#[tokio::test]
async fn notifications_subscriptions_and_secrets_reach_postgresql_sealed() {
    let server = outpost_testkit::postgres::server();
    let database = server.database();
    let svc = service(Config {
        storage: database.storage(),
        ..config(Backend::Sqlite)
    })
    .await;
    post(
        &svc,
        S,
        vec![subscription("canary-sub", json!([{"type": "REST", "host": "canary-hook-9d2b.example", "port": 80, "path": "/notify", "httpMethod": "POST"}]), json!({}))],
    )
    .await;
    post(
        &svc,
        N,
        vec![notification(
            "health-check",
            &["simple"],
            "NORMAL",
            "canary-content-41e7",
        )],
    )
    .await;
    svc.expect(
        "POST",
        "/api/v3/secret",
        Some(json!({"apiVersion": "v3", "secretName": "smtp",
            "secretData": [{"key": "password", "value": "canary-password-2b8c"}]})),
        StatusCode::CREATED,
    )
    .await;
    let hex_of = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for (table, columns, clear) in [
        ("notifications", "category, labels", "health-check"),
        ("subscriptions", "name", "canary-sub"),
        ("transmissions", "subscription_name", "canary-sub"),
        ("secrets", "name, key", "smtp"),
    ] {
        let body = if table == "secrets" { "value" } else { "body" };
        let rows = server.psql_in(
            &database.name,
            &format!("SELECT {columns}, encode({body}, 'hex') FROM support_notifications.{table}"),
        );
        assert!(rows.contains(clear), "{table}: {rows}");
        for secret in [
            "canary-content-41e7",
            "canary-hook-9d2b",
            "canary-password-2b8c",
        ] {
            assert!(
                !rows.contains(&hex_of(secret)) && !rows.contains(secret),
                "{table} holds {secret} in plaintext: {rows}"
            );
        }
    }
}

/// Two instances sharing one PostgreSQL store share the deliveries: every notification
/// reaches the receiver once, and every failed attempt is resent once, by one of them.
#[tokio::test]
async fn two_instances_on_one_store_make_each_delivery_attempt_once() {
    let keys = tempfile::tempdir().expect("tempdir");
    let database = outpost_testkit::postgres::server().database();
    let mut cfg = config(Backend::Sqlite);
    cfg.storage = database.storage();
    cfg.storage.key_file = Some(outpost_testkit::postgres::values_key_file(keys.path()));
    let a = service(cfg.clone()).await;
    let b = service(cfg).await;
    // The receiver refuses its first 10 requests: those deliveries are resent.
    let port = outpost_testkit::free_port();
    let receiver = Receiver::start(port, 10).await;
    post(
        &a,
        S,
        vec![subscription(
            "hook",
            json!([rest_channel(port, "/hook")]),
            json!({"resendLimit": 5}),
        )],
    )
    .await;
    for i in 0..30 {
        let via = if i % 2 == 0 { &a } else { &b };
        post(
            via,
            N,
            vec![notification(
                "health-check",
                &["simple"],
                "NORMAL",
                &format!("n{i}"),
            )],
        )
        .await;
    }
    until("every notification delivered", WAIT, async || {
        (total(&a, "/api/v3/transmission/status/SENT").await == 30).then_some(())
    })
    .await;
    // Each notification taken once, and 40 attempts in all: 30 first ones and one resend
    // of each of the 10 refused.
    let mut contents: Vec<String> = receiver.got().into_iter().map(|(_, b)| b).collect();
    assert_eq!(contents.len(), 30, "{contents:?}");
    contents.sort();
    contents.dedup();
    assert_eq!(contents.len(), 30, "a notification delivered twice");
    let sent = transmissions(&b, "/api/v3/transmission/status/SENT?limit=100").await;
    let attempts: usize = sent
        .iter()
        .map(|t| t["records"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(attempts, 40, "{sent:?}");
}
