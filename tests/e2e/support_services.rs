//! support-notifications and support-scheduler in a running node, as an operator uses
//! them: through the CLI and the gateway, a rules alert reaching a webhook as a
//! notification, and a scheduled job calling core-data by name over the node's mutual TLS.

use std::time::Duration;

use outpost_testkit::webhook::Webhook;

use crate::support::{Node, eventually, free_port, publish_readings, rules_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_reaches_a_webhook_and_a_job_calls_core_data_by_name() {
    let node = Node::start(&rules_config(
        r#"name = "hot"
devices = ["boiler-*"]
steps = []
alerts = [{ above = 90.0, severity = "critical", message = "boiler too hot" }]"#,
    ))
    .await;
    let port = free_port();
    let hook = Webhook::start(port, 0).await;
    let url = format!("http://127.0.0.1:{port}/on-call");
    node.cli_ok(&[
        "notify",
        "subscribe",
        "on-call",
        "--category",
        "rules-alert",
        "--webhook",
        &url,
    ]);
    let subs = node.cli_ok(&["notify", "subscriptions"]);
    assert!(subs.contains("on-call") && subs.contains("REST"), "{subs}");
    // A reading above the threshold: rules raises an alert, support-notifications makes it
    // a notification for the subscription, delivered to the webhook.
    publish_readings(&node, "boiler-1", 1, "95.5");
    eventually(
        "the alert at the webhook",
        Duration::from_secs(30),
        || async { !hook.got().is_empty() },
    )
    .await;
    let (path, body) = hook.got()[0].clone();
    assert_eq!(path, "/on-call");
    assert!(
        body.starts_with("boiler too hot (boiler-1/Temperature"),
        "{body}"
    );
    eventually(
        "the delivery recorded as sent",
        Duration::from_secs(10),
        || async {
            node.cli_ok(&["notify", "transmissions", "--status", "SENT"])
                .contains("on-call")
        },
    )
    .await;
    // Notifications raised by hand, listed.
    let out = node.cli_ok(&[
        "notify",
        "send",
        "--category",
        "maintenance",
        "pump 3 serviced",
    ]);
    assert!(out.contains("accepted"), "{out}");
    let listed = node.cli_ok(&["notify", "list", "--category", "maintenance"]);
    assert!(listed.contains("pump 3 serviced"), "{listed}");
    // A bad one gets the service's reason.
    let (ok, _, err) = node.cli(&[
        "notify",
        "send",
        "--severity",
        "LOUD",
        "--category",
        "x",
        "y",
    ]);
    assert!(!ok && err.contains("severity"), "{err}");

    // A job calling core-data by its registry name: resolved and called over mutual TLS.
    node.cli_ok(&[
        "schedule",
        "add",
        "ping-data",
        "--every",
        "1s",
        "--rest",
        "GET",
        "http://core-data/api/v3/ping",
    ]);
    eventually(
        "the job's runs recorded",
        Duration::from_secs(20),
        || async {
            node.cli_ok(&[
                "schedule",
                "records",
                "--job",
                "ping-data",
                "--status",
                "SUCCEEDED",
            ])
            .contains("ping-data")
        },
    )
    .await;
    let failed = node.cli_ok(&[
        "schedule",
        "records",
        "--job",
        "ping-data",
        "--status",
        "FAILED",
    ]);
    assert!(!failed.contains("ping-data"), "{failed}");
    let jobs = node.cli_ok(&["schedule", "list"]);
    assert!(
        jobs.contains("ping-data") && jobs.contains("scrub-aged-events"),
        "{jobs}"
    );
    node.cli_ok(&["schedule", "lock", "ping-data"]);
    node.cli_ok(&["schedule", "trigger", "ping-data"]);
    node.cli_ok(&["schedule", "rm", "ping-data"]);
    let (ok, _, err) = node.cli(&["schedule", "show", "ping-data"]);
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, _, err) = node.cli(&[
        "schedule",
        "add",
        "--name",
        "bad",
        "--cron",
        "61 * * * *",
        "--publish",
        "t",
    ]);
    assert!(!ok && err.contains("crontab"), "{err}");
}
