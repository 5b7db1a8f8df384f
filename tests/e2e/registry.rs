//! The registry: heartbeats stop -> DOWN -> removed; a clean stop deregisters at once;
//! the registry's changes can be watched.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn silent_service_goes_down_then_is_removed_then_comes_back() {
    let node = Node::start("").await;
    let pid = node.pid("core-metadata");
    // Each instance says its version and when it started (for a console's uptime).
    let before = registration(&node, "core-metadata").await;
    assert_eq!(before["version"], env!("CARGO_PKG_VERSION"), "{before}");
    let started = before["started"].as_i64().expect("started");
    assert!(
        started > 0 && started <= before["created"].as_i64().expect("created"),
        "{before}"
    );
    // Freeze the process: it stops heartbeating but its socket stays open.
    let frozen = Paused::new(pid);
    eventually("core-metadata to be DOWN", WAIT, || async {
        node.status_of("core-metadata").await.as_deref() == Some("DOWN")
    })
    .await;
    eventually("core-metadata to be removed", WAIT, || async {
        node.status_of("core-metadata").await.is_none()
    })
    .await;
    let (_, all) = node
        .get(&format!(
            "{}/api/v3/registry/all?deregistered=true",
            node.keeper()
        ))
        .await;
    assert!(
        !all["registrations"]
            .as_array()
            .expect("list")
            .iter()
            .any(|r| r["serviceId"] == "core-metadata"),
        "removed means gone, not halted: {all}"
    );
    // Thawed, it heartbeats, learns it was forgotten, and registers again.
    drop(frozen);
    eventually("core-metadata to be UP again", WAIT, || async {
        node.status_of("core-metadata").await.as_deref() == Some("UP")
    })
    .await;
    assert_eq!(
        node.pid("core-metadata"),
        pid,
        "the same process came back, no restart"
    );
    let again = registration(&node, "core-metadata").await;
    assert_eq!(
        again["started"], started,
        "registered again, still the process that started then: {again}"
    );
}

/// The registry's entry for `service`.
async fn registration(node: &Node, service: &str) -> Value {
    let (_, all) = node
        .get(&format!("{}/api/v3/registry/all", node.keeper()))
        .await;
    all["registrations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["serviceId"] == service)
        .cloned()
        .unwrap_or_else(|| panic!("{service} in the registry: {all}"))
}

/// The registry's watch, attached: core-keeper subscribes to changes before it answers
/// with the stream's headers, so every change after this returns is on the stream.
async fn watch(node: &Node) -> reqwest::Response {
    node.http
        .get(format!("{}/api/v3/registry/watch", node.keeper()))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("watch")
}

/// Reads server-sent events from a watch until `want` matches one.
async fn watch_for(
    mut resp: reqwest::Response,
    timeout: Duration,
    want: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut buf = String::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let Ok(Some(chunk)) = resp.chunk().await else {
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data:")
                    && let Ok(v) = serde_json::from_str::<Value>(data.trim())
                {
                    let done = want(&v);
                    seen.push(v);
                    if done {
                        return seen;
                    }
                }
            }
        }
    }
    panic!("watch ended without the expected change; saw {seen:?}");
}

#[tokio::test]
async fn clean_stop_deregisters_at_once() {
    // Slow heartbeats and a long TTL: a deregistration cannot come from an expiry, which
    // would mark the service DOWN, not HALT.
    let node = Node::start("[registry]\nheartbeat_interval_ms = 10000\n").await;
    let pid = node.pid("core-data");
    let stream = watch(&node).await;
    signal(pid, "TERM");
    let seen = watch_for(stream, Duration::from_secs(15), |c| {
        c["serviceId"] == "core-data" && c["action"] == "deregistered"
    })
    .await;
    assert_eq!(seen.last().expect("a change")["status"], "HALT");
    // The supervisor brings it back, and it registers again.
    eventually("core-data to be UP again", WAIT, || async {
        node.status_of("core-data").await.as_deref() == Some("UP")
    })
    .await;
}

#[tokio::test]
async fn registry_long_poll_and_restart_survival() {
    let mut node = Node::start("").await;
    let keeper = node.keeper();
    let (_, first) = node.get(&format!("{keeper}/api/v3/registry/all")).await;
    let index = first["index"].as_u64().expect("index");
    let url = format!("{keeper}/api/v3/registry/all?waitIndex={index}&waitMs=20000");
    // Every service of the node keeps a long-poll of its own open on the registry: this
    // one is waiting once there is one more.
    let waiting = || {
        node.metric(
            &keeper,
            "outpost_core_keeper_long_polls_waiting{on=\"registry\"}",
        )
    };
    let others = waiting().await;
    let http = node.http.clone();
    let poll = tokio::spawn(async move {
        http.get(url)
            .send()
            .await
            .expect("poll")
            .json::<Value>()
            .await
            .expect("json")
    });
    // Once the poll waits in core-keeper, any change answers it: stop core-metadata.
    eventually("the long-poll to wait", WAIT, || async {
        waiting().await > others
    })
    .await;
    signal(node.pid("core-metadata"), "TERM");
    let changed = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("long-poll answered on change")
        .expect("poll task");
    assert!(changed["index"].as_u64().expect("index") > index);
    // A key/value written before a node restart is there after it.
    let (s, _) = {
        let r = node
            .http
            .put(format!("{keeper}/api/v3/kvs/key/outpost/e2e/setting"))
            .json(&serde_json::json!({"value": "kept"}))
            .send()
            .await
            .expect("PUT");
        (r.status().as_u16(), ())
    };
    assert_eq!(s, 200);
    node.stop();
    node.launch().await;
    let (_, kv) = node
        .get(&format!(
            "{}/api/v3/kvs/key/outpost/e2e/setting?plaintext=true",
            node.keeper()
        ))
        .await;
    assert_eq!(kv["response"][0]["value"], "kept");
    node.stop();
}
