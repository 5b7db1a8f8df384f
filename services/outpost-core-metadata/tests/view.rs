//! The metadata view (`outpost_bus::metadata`) against the real core-metadata, served on a
//! socket and announcing its changes on a real broker: a change reaches the view before
//! its subscribers are told, and while core-metadata is away the view serves what it last
//! saw and says so.

use std::time::Duration;

use outpost_bus::metadata::{Change, Credential, Lookup, MetadataView, Verdict, ViewConfig};
use outpost_core_metadata::{Config, CoreMetadata};
use outpost_testkit::{Mosquitto, Service, context};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

const PROFILE: &str = include_str!("../../../examples/thermostat.yaml");

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn device(labels: &[&str]) -> Value {
    json!([{"apiVersion": "v3", "device": {"name": "t1", "serviceName": "device-mqtt",
        "profileName": "Thermostat", "adminState": "UNLOCKED", "operatingState": "UP",
        "labels": labels, "protocols": {"mqtt": {}}}}])
}

/// The next update of device t1, as the view tells it.
async fn updated(
    changes: &mut tokio::sync::broadcast::Receiver<Change>,
) -> std::sync::Arc<outpost_contracts::system_event::SystemEvent> {
    tokio::time::timeout(WAIT, async {
        loop {
            match changes.recv().await {
                Ok(Change::Event(ev))
                    if ev.object_name() == Some("t1") && ev.action == "update" =>
                {
                    return ev;
                }
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the change is told")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_follows_changes_and_serves_the_last_view_while_core_metadata_is_away() {
    let broker = Mosquitto::start();
    let md = Service::build_in::<CoreMetadata>(
        context("core-metadata", &[]).with_bus(&broker.url()),
        Config::default(),
    )
    .await;
    let served = md.serve_at(([127, 0, 0, 1], 0).into()).await;
    let addr = served.addr;

    // A service's view: every lookup asks core-metadata (nothing is fresh), so what it
    // answers while core-metadata is away can only be the last view.
    let client = context("core-data", &[("core-metadata", served.url())]).with_bus(&broker.url());
    let view = MetadataView::start(
        &client.ctx,
        ViewConfig {
            fresh_for: Duration::ZERO,
            credentials_for: Duration::ZERO,
            missing_for: Duration::ZERO,
            ..ViewConfig::default()
        },
    );
    until("the view follows metadata changes", async || {
        view.check().ok.then_some(())
    })
    .await;
    let mut changes = view.changes();

    assert!(matches!(view.device("t1").await, Lookup::Missing));
    let service = json!([{"apiVersion": "v3", "service": {"name": "device-mqtt",
        "baseAddress": "http://127.0.0.1:1", "adminState": "UNLOCKED"}}]);
    let (s, b) = md
        .call("POST", "/api/v3/deviceservice", Some(service))
        .await;
    assert_eq!(
        (s.as_u16(), b[0]["statusCode"].as_u64()),
        (207, Some(201)),
        "{b}"
    );
    let profile: Value = serde_json::to_value(
        outpost_contracts::metadata::DeviceProfile::from_yaml(PROFILE).expect("profile"),
    )
    .expect("json");
    let body = json!([{"apiVersion": "v3", "profile": profile}]);
    let (_, b) = md.call("POST", "/api/v3/deviceprofile", Some(body)).await;
    assert_eq!(b[0]["statusCode"], 201, "{b}");
    let (_, b) = md
        .call("POST", "/api/v3/device", Some(device(&["a"])))
        .await;
    assert_eq!(b[0]["statusCode"], 201, "{b}");

    let found = until("the new device", async || match view.device("t1").await {
        Lookup::Found(d) => Some(d),
        _ => None,
    })
    .await;
    assert_eq!(found.labels, ["a"]);
    assert!(matches!(
        view.profile("Thermostat").await,
        Lookup::Found(p) if p.device_resources.len() == 3
    ));

    // A change is applied, then told, with what changed.
    let update = json!([{"apiVersion": "v3", "device": {"name": "t1", "labels": ["b"]}}]);
    let (_, b) = md.call("PATCH", "/api/v3/device", Some(update)).await;
    assert_eq!(b[0]["statusCode"], 200, "{b}");
    let told = updated(&mut changes).await;
    assert_eq!(told.kind, "device");
    assert!(matches!(view.device("t1").await, Lookup::Found(d) if d.labels == ["b"]));

    // A secret set on the device is granted; a wrong one is refused.
    let (s, b) = md
        .call(
            "PUT",
            "/api/v3/device/name/t1/secret",
            Some(json!({"apiVersion": "v3", "secret": "0123456789abcdef0123"})),
        )
        .await;
    assert!(s.is_success(), "{b}");
    // Setting a secret is a change of the device: its credentials are forgotten.
    updated(&mut changes).await;
    assert!(matches!(
        view.verify("t1", Credential::Secret("0123456789abcdef0123")).await,
        Lookup::Found(Verdict::Granted(d)) if d.name == "t1"
    ));
    assert!(matches!(
        view.verify("t1", Credential::Secret("not-the-secret-at-all"))
            .await,
        Lookup::Missing
    ));

    // core-metadata goes away: the last view is served, with its age, and health says so.
    served.stop().await;
    let stale = view.device("t1").await;
    assert!(
        matches!(&stale, Lookup::Stale { value, .. } if value.labels == ["b"]),
        "{stale:?}"
    );
    assert!(matches!(
        view.verify("t1", Credential::Secret("0123456789abcdef0123"))
            .await,
        Lookup::Stale {
            value: Verdict::Granted(_),
            ..
        }
    ));
    assert!(matches!(
        view.device("never-seen").await,
        Lookup::Unavailable(_)
    ));
    let check = view.check();
    assert!(
        !check.ok && check.detail.contains("unreachable"),
        "{check:?}"
    );

    // Back on the same address: fresh answers again, and healthy.
    let back = md.serve_at(addr).await;
    until("core-metadata answers again", async || {
        matches!(view.device("t1").await, Lookup::Found(_)).then_some(())
    })
    .await;
    assert!(view.check().ok);
    back.stop().await;
}
