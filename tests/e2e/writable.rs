//! Runtime configuration as EdgeX clients change it: core-keeper's
//! `edgex/v4/<service>/Writable/...` keys, seeded by each service, applied while it runs,
//! bad values refused with the old value kept, and still in force after a restart.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// Sets `edgex/v4/<service>/Writable/<key>` in core-keeper.
async fn set(node: &Node, service: &str, key: &str, value: &str) {
    let url = format!(
        "{}/api/v3/kvs/key/edgex/v4/{service}/Writable/{key}",
        node.keeper()
    );
    let (s, body) = node.put(&url, &json!({ "value": value })).await;
    assert_eq!(s, 200, "{body}");
}

/// The `Writable` values `service` (at `base`) has in force.
async fn in_force(node: &Node, base: &str) -> Value {
    let (s, body) = node.get(&format!("{base}/api/v3/config")).await;
    assert_eq!(s, 200, "{body}");
    body["config"]["Writable"].clone()
}

async fn wait_in_force(node: &Node, base: &str, path: &[&str], want: Value) {
    eventually(
        &format!("{} = {want} in force at {base}", path.join("/")),
        Duration::from_secs(15),
        || async {
            let mut v = in_force(node, base).await;
            for p in path {
                v = v[*p].clone();
            }
            v == want
        },
    )
    .await;
}

async fn delete_status(node: &Node, url: &str) -> u16 {
    let r = node.http.delete(url).send().await.expect("DELETE");
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_settings_follow_core_keeper_live_and_across_a_restart() {
    let mut node = Node::start("[device_rest]\nenabled = true\n").await;
    let (md, data) = (node.metadata(), node.data());
    let rest = node.url(node.ports.rest);
    // Each service seeds its writable keys from the node's configuration.
    let seeded = format!(
        "{}/api/v3/kvs/key/edgex/v4/core-metadata/Writable?plaintext=true",
        node.keeper()
    );
    eventually(
        "core-metadata's writable keys seeded",
        Duration::from_secs(15),
        || async {
            let (s, body) = node.get(&seeded).await;
            let keys: Vec<_> = body["response"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|kv| kv["key"].as_str().map(str::to_string))
                .collect();
            s == 200
                && [
                    "LogLevel",
                    "ProfileChange/StrictDeviceProfileChanges",
                    "ProfileChange/StrictDeviceProfileDeletes",
                    "UoM/Validation",
                ]
                .iter()
                .all(|k| keys.contains(&format!("edgex/v4/core-metadata/Writable/{k}")))
        },
    )
    .await;

    // core-metadata: profile deletes locked and unlocked while it runs.
    node.add_profiles(&profile_request(
        "Spare",
        "S-1",
        json!([{"name": "Level", "properties": {"valueType": "Float64", "readWrite": "R"}}]),
    ))
    .await;
    set(
        &node,
        "core-metadata",
        "ProfileChange/StrictDeviceProfileDeletes",
        "true",
    )
    .await;
    let spare = format!("{md}/api/v3/deviceprofile/name/Spare");
    wait_in_force(
        &node,
        &md,
        &["ProfileChange", "StrictDeviceProfileDeletes"],
        json!(true),
    )
    .await;
    assert_eq!(delete_status(&node, &spare).await, 423);
    // A bad value is refused: the value in force stays (deletes still locked).
    set(
        &node,
        "core-metadata",
        "ProfileChange/StrictDeviceProfileDeletes",
        "perhaps",
    )
    .await;
    set(&node, "core-metadata", "UoM/Validation", "true").await;
    wait_in_force(&node, &md, &["UoM", "Validation"], json!(true)).await;
    let w = in_force(&node, &md).await;
    assert_eq!(
        w["ProfileChange"]["StrictDeviceProfileDeletes"], true,
        "{w}"
    );
    assert_eq!(delete_status(&node, &spare).await, 423);
    // With UoM validation on, a profile with an unknown unit is refused.
    let (_, r) = node
        .post(
            &format!("{md}/api/v3/deviceprofile"),
            &profile_request(
                "Odd",
                "O-1",
                json!([{"name": "L", "properties": {"valueType": "Float64", "readWrite": "R", "units": "furlongs"}}]),
            ),
        )
        .await;
    assert_eq!(r[0]["statusCode"], 400, "{r}");
    // What core-keeper holds is what a restart takes: a valid value again.
    set(
        &node,
        "core-metadata",
        "ProfileChange/StrictDeviceProfileDeletes",
        "TRUE",
    )
    .await;

    // core-data: MaxResultCount and PersistData.
    set(&node, "core-data", "MaxResultCount", "5").await;
    wait_in_force(&node, &data, &["MaxResultCount"], json!(5)).await;
    let (s, _) = node.get(&format!("{data}/api/v3/event/all?limit=6")).await;
    assert_eq!(s, 400);
    let (s, _) = node.get(&format!("{data}/api/v3/event/all?limit=5")).await;
    assert_eq!(s, 200);
    set(&node, "core-data", "MaxResultCount", "0").await;
    set(&node, "core-data", "PersistData", "false").await;
    wait_in_force(&node, &data, &["PersistData"], json!(false)).await;
    assert_eq!(
        in_force(&node, &data).await["MaxResultCount"],
        5,
        "0 refused"
    );
    provision(&node, &["w1"]);
    publish_readings(&node, "w1", 3, "1.5");
    set(&node, "core-data", "PersistData", "true").await;
    wait_in_force(&node, &data, &["PersistData"], json!(true)).await;
    publish_readings(&node, "w1", 2, "2.5");
    let count = format!("{data}/api/v3/event/count/device/name/w1");
    eventually(
        "the events sent while persisting",
        Duration::from_secs(20),
        || async { node.get(&count).await.1["count"] == 2 },
    )
    .await;
    // The bus keeps each device's order: the earlier three were seen, and not stored.
    let (_, page) = node
        .get(&format!("{data}/api/v3/reading/device/name/w1?limit=5"))
        .await;
    let values: Vec<f64> = page["readings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["value"].as_str()?.parse().ok())
        .collect();
    assert_eq!(values, [2.5, 2.5], "{page}");

    // Every service's log level; an invalid one is refused.
    set(&node, "core-data", "LogLevel", "DEBUG").await;
    wait_in_force(&node, &data, &["LogLevel"], json!("DEBUG")).await;
    set(&node, "core-data", "LogLevel", "x=bogus").await;
    set(&node, "core-data", "PersistData", "false").await;
    wait_in_force(&node, &data, &["PersistData"], json!(false)).await;
    assert_eq!(in_force(&node, &data).await["LogLevel"], "DEBUG");

    // A device service's discovery switched off and on.
    let discovery = format!("{rest}/api/v3/discovery");
    set(&node, "device-rest", "Discovery/Enabled", "false").await;
    wait_in_force(&node, &rest, &["Discovery", "Enabled"], json!(false)).await;
    assert_eq!(node.post(&discovery, &json!({})).await.0, 503);

    // core-keeper's values win over the configuration file after a restart.
    node.stop();
    node.launch().await;
    let w = in_force(&node, &data).await;
    assert_eq!(w["PersistData"], false, "{w}");
    // The 0 core-keeper holds is refused again: the configuration's value is in force.
    assert_eq!(w["MaxResultCount"], 1024, "{w}");
    assert_eq!(delete_status(&node, &spare).await, 423);
    assert_eq!(node.post(&discovery, &json!({})).await.0, 503);
    set(&node, "device-rest", "Discovery/Enabled", "true").await;
    eventually("discovery on", Duration::from_secs(15), || async {
        node.post(&discovery, &json!({})).await.0 == 202
    })
    .await;
    let log = node.log();
    assert!(
        log.contains("writable setting refused") && log.contains("perhaps"),
        "a refused value is reported"
    );
}
