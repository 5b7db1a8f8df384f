//! The metadata view (`outpost_bus::metadata`) against the real core-metadata, served on a
//! socket and announcing its changes on a real broker: a change reaches the view before
//! its subscribers are told, and while core-metadata is away the view serves what it last
//! saw and says so.

use std::time::Duration;

use outpost_bus::metadata::{Change, Credential, Lookup, MetadataView, Verdict, ViewConfig};
use outpost_testkit::Drive;
use outpost_testkit::metadata::{self, THERMOSTAT};
use outpost_testkit::{Mosquitto, WAIT, context, until};
use serde_json::json;

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
    let (md, served) = metadata::serve(Some(&broker.url())).await;
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
    until("the view follows metadata changes", WAIT, async || {
        view.check().ok.then_some(())
    })
    .await;
    let mut changes = view.changes();

    assert!(matches!(view.device("t1").await, Lookup::Missing));
    metadata::add_device_service(&md, "device-mqtt", "http://127.0.0.1:1").await;
    metadata::add_profile_yaml(&md, THERMOSTAT, None).await;
    let t1 = metadata::device("t1", "device-mqtt").labels(&["a"]);
    metadata::add_device(&md, &t1.protocols(json!({"mqtt": {}}))).await;

    let found = until("the new device", WAIT, async || {
        match view.device("t1").await {
            Lookup::Found(d) => Some(d),
            _ => None,
        }
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
    metadata::set_secret(&md, "t1", "0123456789abcdef0123").await;
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
    until("core-metadata answers again", WAIT, async || {
        matches!(view.device("t1").await, Lookup::Found(_)).then_some(())
    })
    .await;
    assert!(view.check().ok);
    back.stop().await;
}
