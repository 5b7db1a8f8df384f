//! Mutual TLS between services (`security.internal_tls = true`): the node works as before,
//! through the gateway and the CLI, while a caller on the node without a certificate of
//! its services or administrator can no longer use their APIs (the attacks of issue 19:
//! registering a fake instance, deleting events, adding device services), and nothing is
//! served in plaintext.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// With OTA on (its device routes are open to devices, which authenticate themselves).
fn with_mtls() -> String {
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);
    format!(
        "[security]\ninternal_tls = true\n[device_rest]\nenabled = true\n\
         [ota]\nenabled = true\ntrusted_keys = [\"ed25519:{key}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_only_the_nodes_services_and_administrator_use_internal_apis() {
    let node = Node::start(&with_mtls()).await;
    // Every service registered (each called core-keeper over mutual TLS) with scheme https.
    let regs = node.registrations().await;
    assert!(regs.len() >= 6, "{regs:?}");
    assert!(
        regs.iter().all(|r| r["scheme"] == "https"),
        "every instance registers as https: {regs:?}"
    );

    // The node works: the CLI provisions through the gateway, whose upstream connections
    // use the gateway's certificate; device-mqtt stores an event from the bus in core-data.
    provision(&node, &["m1"]);
    let (_, msg) = event_message("m1", now_nanos(), &[("Temperature", "Float64", "21.5")]);
    // Loopback is no way onto the bus without credentials any more: the bus token.
    let token =
        std::fs::read_to_string(node.data_dir().join("secrets/bus.token")).expect("bus token");
    let out = mosquitto_pub(
        node.ports.mqtt,
        &event_topic("m1"),
        &msg,
        &["-u", "outpost", "-P", token.trim()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = format!("{}/api/v3/event/count/device/name/m1", node.data());
    eventually("the event stored", outpost_testkit::WAIT, || async {
        node.get(&count).await.1["count"] == 1
    })
    .await;

    // The attacks, from a client on the node with no certificate: refused with 403 at
    // the API, whatever the route (ping stays open).
    let anonymous = node.tls_client(None);
    let attacks = [
        (
            reqwest::Method::POST,
            format!("{}/api/v3/registry", node.keeper()),
            json!({"apiVersion": "v3", "registration": {"serviceId": "core-command@evil",
                "host": "127.0.0.1", "port": 9, "healthCheck": {"interval": "10s",
                "path": "/api/v3/ping", "type": "heartbeat"}}}),
        ),
        (
            reqwest::Method::DELETE,
            format!("{}/api/v3/event/age/0", node.data()),
            Value::Null,
        ),
        (
            reqwest::Method::POST,
            format!("{}/api/v3/deviceservice", node.metadata()),
            json!([{"apiVersion": "v3", "service": {"name": "evil", "baseAddress": "http://127.0.0.1:9",
                "adminState": "UNLOCKED"}}]),
        ),
        (
            reqwest::Method::GET,
            format!("{}/api/v3/event/all", node.data()),
            Value::Null,
        ),
    ];
    for (method, url, body) in &attacks {
        let mut rb = anonymous.request(method.clone(), url);
        if !body.is_null() {
            rb = rb.json(body);
        }
        let r = rb.send().await.expect("an answer");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {url}");
        let v: Value = r.json().await.expect("EdgeX error body");
        assert_eq!(v["statusCode"], 403, "{v}");
    }
    let r = anonymous
        .get(format!("{}/api/v3/ping", node.data()))
        .send()
        .await
        .expect("ping");
    assert_eq!(r.status(), StatusCode::OK);
    // Nothing was registered, deleted or added.
    assert!(
        !node
            .registrations()
            .await
            .iter()
            .any(|r| r["serviceId"] == "core-command@evil")
    );
    assert_eq!(node.get(&count).await.1["count"], 1);

    // A device's certificate from the same CA, named like a service, is not a service's.
    let device = outpost_pki::issue_client_cert(
        &outpost_pki::Paths::new(&node.data_dir()),
        "core-command",
        1,
    )
    .expect("a device certificate");
    let as_device = node.tls_client(Some((&device.cert_pem, &device.key_pem)));
    let (method, url, body) = &attacks[0];
    let r = as_device
        .request(method.clone(), url)
        .json(body)
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A service registers only itself (a compromised one cannot take another's place).
    let svc = outpost_pki::internal::ensure_service_cert(
        &node.data_dir(),
        "rules@probe",
        &["localhost".to_string()],
    )
    .expect("a service certificate");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("certificate file");
    let as_service = node.tls_client(Some((&read(&svc.cert), &read(&svc.key))));
    let registration = |id: &str| {
        json!({"apiVersion": "v3", "registration": {"serviceId": id, "host": "127.0.0.1",
            "port": 9, "healthCheck": {"interval": "10s", "path": "/api/v3/ping",
            "type": "heartbeat"}}})
    };
    let registry = format!("{}/api/v3/registry", node.keeper());
    let r = as_service
        .post(&registry)
        .json(&registration("core-command@evil"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = as_service
        .post(&registry)
        .json(&registration("rules@probe"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = as_service
        .delete(format!(
            "{}/api/v3/registry/serviceId/rules@probe",
            node.keeper()
        ))
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Only core-command and the gateway drive devices: another service's certificate gets
    // 403 at a device service's command route, the administrator's is let through.
    let command = format!(
        "{}/api/v3/device/name/m1/Temperature",
        node.url(node.ports.rest)
    );
    let r = as_service.get(&command).send().await.expect("an answer");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = node.http.get(&command).send().await.expect("an answer");
    assert_ne!(r.status(), StatusCode::FORBIDDEN);

    // An expired certificate of the node CA fails the handshake.
    let expired =
        outpost_pki::issue_client_cert(&outpost_pki::Paths::new(&node.data_dir()), "m1", 0)
            .expect("a certificate valid until now");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let as_expired = node.tls_client(Some((&expired.cert_pem, &expired.key_pem)));
    assert!(
        as_expired
            .get(format!("{}/api/v3/ping", node.data()))
            .send()
            .await
            .is_err(),
        "an expired certificate is refused at the handshake"
    );

    // A certificate of another CA fails the handshake.
    let other = crate::support::tempdir();
    let foreign =
        outpost_pki::issue_client_cert(&outpost_pki::Paths::new(other.path()), "admin", 1)
            .expect("a foreign certificate");
    let as_foreign = node.tls_client(Some((&foreign.cert_pem, &foreign.key_pem)));
    assert!(
        as_foreign
            .get(format!("{}/api/v3/event/all", node.data()))
            .send()
            .await
            .is_err(),
        "a foreign certificate is refused at the handshake"
    );

    // Nothing is served in plaintext.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("client");
    for port in [node.ports.keeper, node.ports.data, node.ports.metadata] {
        let r = plain
            .get(format!("http://127.0.0.1:{port}/api/v3/ping"))
            .send()
            .await;
        assert!(
            r.is_err() || r.is_ok_and(|r| !r.status().is_success()),
            "port {port} answers plaintext"
        );
    }

    // device-rest's push route stays open to devices, which authenticate with their own
    // token: a caller without a certificate reaches it and is judged by its token.
    node.wait_device_service("device-rest").await;
    let r = anonymous
        .post(format!(
            "https://127.0.0.1:{}/api/v3/resource/m1/Temperature",
            node.ports.rest
        ))
        .bearer_auth("not-a-token")
        .body("21.5")
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // So do OTA's device routes (polls, downloads, reports), while its other routes are
    // internal.
    let ota = format!("https://127.0.0.1:{}/api/v3", node.ports.ota);
    let r = anonymous
        .get(format!("{ota}/ddi/m1"))
        .header("x-outpost-device-token", "not-a-token")
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = anonymous
        .get(format!("{ota}/rollout/all"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// The services' certificates (12 s long here, so reissued every 6 s or so) renewed while
/// readings come in over the bus and users call through the gateway: no request fails, no
/// reading is lost, and every service has served with more than one certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renewed_under_load_fail_no_request_and_lose_no_reading() {
    let mut node = Node::start("[security]\nservice_cert_s = 12\n").await;
    let device = "renewed-thermo";
    provision(&node, &[device]);
    // One directory a service instance.
    let certs = |node: &Node| -> BTreeMap<String, String> {
        std::fs::read_dir(node.data_dir().join("tls/services"))
            .expect("service certificates")
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .filter(|e| e.path().extension().is_some_and(|x| x == "pem"))
            .map(|e| {
                let pem = std::fs::read_to_string(e.path()).expect("certificate");
                (e.file_name().to_string_lossy().into_owned(), pem)
            })
            .collect()
    };
    let first = certs(&node);
    assert!(first.len() >= 5, "{:?}", first.keys());
    // A user of the gateway, which reaches core-data with its own service certificate.
    let ca = node.data_dir().join("tls/ca.pem");
    let gateway = https_client(trusting(&ca));
    let base = format!("https://127.0.0.1:{}", node.ports.gateway);
    let password = std::fs::read_to_string(node.data_dir().join("secrets/admin-password"))
        .expect("admin password");
    let login: Value = gateway
        .post(format!("{base}/api/v3/auth/login"))
        .json(&json!({"username": "admin", "password": password.trim()}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login JSON");
    let token = login["accessToken"].as_str().expect("a token").to_string();
    let count_url = format!("{base}/core-data/api/v3/event/count/device/name/{device}");

    let mut renewed: BTreeMap<String, usize> = BTreeMap::new();
    let mut last = first.clone();
    let (mut published, mut requests, mut failed) = (0i64, 0u32, Vec::new());
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        publish_readings(&node, device, 5, "19.5");
        published += 5;
        for _ in 0..5 {
            requests += 1;
            match gateway.get(&count_url).bearer_auth(&token).send().await {
                Ok(r) if r.status() == 200 => {}
                Ok(r) => failed.push(format!("{}", r.status())),
                Err(e) => failed.push(e.to_string()),
            }
        }
        let now = certs(&node);
        for (name, pem) in &now {
            if last.get(name).is_some_and(|p| p != pem) {
                *renewed.entry(name.clone()).or_default() += 1;
            }
        }
        last = now;
    }
    assert!(
        failed.is_empty(),
        "{} of {requests} failed: {failed:?}",
        failed.len()
    );
    // Every service that was there from the start was reissued its certificate at least
    // twice during the load.
    for name in first.keys() {
        let n = renewed.get(name).copied().unwrap_or(0);
        assert!(n >= 2, "{name} renewed {n} times: {renewed:?}");
    }
    let count = format!("{}/api/v3/event/count/device/name/{device}", node.data());
    eventually("every reading stored", Duration::from_secs(20), || async {
        node.get(&count).await.1["count"] == published
    })
    .await;
    eprintln!("{published} events, {requests} gateway requests, renewals {renewed:?}");
    node.stop();
}
