//! Router tests (the service built as the node builds it, driven without sockets), and
//! jobs running for real: REST calls to a receiver, messages on mosquitto, records across
//! a restart.

use std::time::Duration;

use axum::http::StatusCode;
use outpost_testkit::postgres::Backend;
use outpost_testkit::webhook::Webhook;
use outpost_testkit::{Drive, Mosquitto, Service, WAIT, context, until};
use serde_json::{Value, json};

use crate::schedule::now_ms;
use crate::{Config, SupportScheduler};

outpost_testkit::on_both_backends!(
    jobs_are_added_checked_patched_listed_and_deleted_as_edgex_does,
    an_interval_job_calls_its_receiver_and_every_run_is_recorded,
    runs_missed_while_the_service_was_down_are_recorded_and_the_job_runs_once,
    the_default_job_is_made_once_and_stays_removed,
    a_message_bus_action_publishes_its_payload_in_an_envelope,
);

const JOB: &str = "/api/v3/job";
const REC: &str = "/api/v3/scheduleactionrecord";

fn config(b: Backend) -> Config {
    let mut c = Config {
        storage: b.storage(),
        ..Config::default()
    };
    c.default_jobs.enabled = false;
    c.action_timeout_ms = 2_000;
    c
}

async fn service(cfg: Config) -> Service {
    Service::build_in::<SupportScheduler>(context(crate::SERVICE, &[]).off_bus(), cfg).await
}

fn rest(port: u16, path: &str) -> Value {
    json!({"type": "REST", "address": format!("http://127.0.0.1:{port}{path}"), "method": "POST",
        "payload": {"value": 999}})
}

fn job(name: &str, definition: Value, actions: Value) -> Value {
    json!({"apiVersion": "v3", "scheduleJob": {"name": name, "definition": definition,
        "actions": actions, "labels": ["INTERVAL", "REST"]}})
}

fn every(interval: &str) -> Value {
    json!({"type": "INTERVAL", "interval": interval})
}

async fn statuses(svc: &Service, path: &str, body: Value, want: StatusCode) -> Vec<u64> {
    let out = svc
        .expect(
            path.split(' ').next().unwrap_or("POST"),
            path.split(' ').nth(1).unwrap_or(JOB),
            Some(body),
            want,
        )
        .await;
    out.as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["statusCode"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

async fn total(svc: &Service, path: &str) -> u64 {
    svc.expect("GET", path, None, StatusCode::OK).await["totalCount"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

async fn jobs_are_added_checked_patched_listed_and_deleted_as_edgex_does(b: Backend) {
    let svc = service(config(b)).await;
    let a = [rest(9, "/x")];
    let made = statuses(
        &svc,
        "POST /api/v3/job",
        json!([
            job("a", every("20s"), json!(a)),
            job(
                "b",
                json!({"type": "CRON", "crontab": "*/30 * * * * *"}),
                json!(a)
            ),
            job("a", every("20s"), json!(a))
        ]),
        StatusCode::MULTI_STATUS,
    )
    .await;
    assert_eq!(made, vec![201, 201, 409]);
    for bad in [
        json!({"name": ""}),
        json!({"definition": {"type": ""}}),
        json!({"definition": {"type": "INTERVAL", "interval": ""}}),
        json!({"definition": {"type": "INVALID"}}),
        json!({"definition": {"type": "CRON", "crontab": "61 * * * *"}}),
        json!({"actions": [{"type": ""}]}),
        json!({"actions": [{"type": "INVALID"}]}),
        json!({"actions": []}),
        json!({"adminState": "INVALID"}),
        json!({"definition": {"type": "INTERVAL", "interval": "1s", "startTimestamp": now_ms() + 1000, "endTimestamp": now_ms() - 60_000}}),
    ] {
        let mut j = job("fine", every("20s"), json!(a));
        if let (Some(into), Some(from)) = (j["scheduleJob"].as_object_mut(), bad.as_object()) {
            into.extend(from.clone());
        }
        svc.expect("POST", JOB, Some(json!([j])), StatusCode::BAD_REQUEST)
            .await;
    }
    assert_eq!(total(&svc, &format!("{JOB}/all")).await, 2);
    assert_eq!(
        total(&svc, &format!("{JOB}/all?labels=INTERVAL,REST")).await,
        2
    );
    assert_eq!(total(&svc, &format!("{JOB}/all?labels=CRON")).await, 0);
    svc.expect(
        "GET",
        &format!("{JOB}/all?offset=3"),
        None,
        StatusCode::RANGE_NOT_SATISFIABLE,
    )
    .await;
    svc.expect(
        "GET",
        &format!("{JOB}/all?limit=2000"),
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let one = svc
        .expect("GET", &format!("{JOB}/name/b"), None, StatusCode::OK)
        .await;
    let b = &one["scheduleJob"];
    assert_eq!(b["adminState"], "UNLOCKED");
    assert_eq!(b["properties"], json!({}));
    // The payload goes out as base64 of the JSON it came as.
    assert_eq!(b["actions"][0]["payload"], "eyJ2YWx1ZSI6OTk5fQ==");
    svc.expect(
        "GET",
        &format!("{JOB}/name/none"),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;

    let patch = |j: Value| json!({"apiVersion": "v3", "scheduleJob": j});
    let out = statuses(
        &svc,
        "PATCH /api/v3/job",
        json!([
            patch(json!({"name": "a", "definition": {"type": "CRON", "crontab": "CRON_TZ=UTC 0 0 2 2 *"}})),
            patch(json!({"name": "nobody", "adminState": "LOCKED"})),
            patch(json!({"id": made_id(&svc, "b").await, "name": "renamed"})),
            patch(json!({"name": "b", "actions": [{"type": "EDGEXMESSAGEBUS", "topic": "edgex/job_test", "payload": "{\"value\": 1234}"}]})),
        ]),
        StatusCode::MULTI_STATUS,
    )
    .await;
    assert_eq!(out, vec![200, 404, 400, 200]);
    let a = svc
        .expect("GET", &format!("{JOB}/name/a"), None, StatusCode::OK)
        .await;
    assert_eq!(
        a["scheduleJob"]["definition"],
        json!({"type": "CRON", "crontab": "CRON_TZ=UTC 0 0 2 2 *"})
    );
    let b = svc
        .expect("GET", &format!("{JOB}/name/b"), None, StatusCode::OK)
        .await;
    assert_eq!(b["scheduleJob"]["actions"][0]["type"], "EDGEXMESSAGEBUS");
    svc.expect(
        "PATCH",
        JOB,
        Some(json!([patch(
            json!({"name": "a", "definition": {"type": "CRON", "crontab": ""}})
        )])),
        StatusCode::BAD_REQUEST,
    )
    .await;

    svc.expect("DELETE", &format!("{JOB}/name/a"), None, StatusCode::OK)
        .await;
    svc.expect(
        "DELETE",
        &format!("{JOB}/name/a"),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    svc.expect(
        "POST",
        &format!("{JOB}/trigger/name/a"),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    svc.expect(
        "GET",
        &format!("{REC}/latest/job/name/a"),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
}

async fn made_id(svc: &Service, name: &str) -> String {
    svc.expect("GET", &format!("{JOB}/name/{name}"), None, StatusCode::OK)
        .await["scheduleJob"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn an_interval_job_calls_its_receiver_and_every_run_is_recorded(b: Backend) {
    let svc = service(config(b)).await;
    let port = outpost_testkit::free_port();
    let hook = Webhook::start(port, 1).await;
    let down = outpost_testkit::free_port();
    svc.expect(
        "POST",
        JOB,
        Some(json!([
            job("tick", every("200ms"), json!([rest(port, "/tick")])),
            job("broken", every("200ms"), json!([rest(down, "/x")])),
        ])),
        StatusCode::MULTI_STATUS,
    )
    .await;
    until("three calls arrive", WAIT, async || {
        (hook.got().len() >= 3).then_some(())
    })
    .await;
    let (path, body) = hook.got()[0].clone();
    assert_eq!((path.as_str(), body.as_str()), ("/tick", "{\"value\":999}"));
    until("records are written", WAIT, async || {
        (total(&svc, &format!("{REC}/job/name/tick/status/SUCCEEDED")).await >= 3).then_some(())
    })
    .await;
    // The first call was refused (503): FAILED.
    assert!(total(&svc, &format!("{REC}/job/name/tick/status/FAILED")).await >= 1);
    assert!(total(&svc, &format!("{REC}/job/name/broken/status/FAILED")).await >= 1);
    assert_eq!(
        total(&svc, &format!("{REC}/job/name/broken/status/SUCCEEDED")).await,
        0
    );
    let latest = svc
        .expect(
            "GET",
            &format!("{REC}/latest/job/name/tick"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(latest["totalCount"], 1);
    let r = &latest["scheduleActionRecords"][0];
    assert_eq!(r["jobName"], "tick");
    assert!(
        r["action"].get("payload").is_none(),
        "records carry no payload: {r}"
    );
    assert!(r["scheduledAt"].as_i64().unwrap_or(0) > 0);
    // The window and paging.
    let later = now_ms() + 60_000;
    assert_eq!(
        total(&svc, &format!("{REC}/all?start={later}&end={}", later + 1)).await,
        0
    );
    svc.expect(
        "GET",
        &format!("{REC}/all?start=5&end=4"),
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    svc.expect(
        "GET",
        &format!("{REC}/all?start=x"),
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let page = svc
        .expect("GET", &format!("{REC}/all?limit=2"), None, StatusCode::OK)
        .await;
    assert_eq!(
        page["scheduleActionRecords"].as_array().map(Vec::len),
        Some(2)
    );
    // Locked: no more runs; a trigger still runs it, and its record is there with the 202.
    svc.expect(
        "PATCH",
        JOB,
        Some(
            json!([{"apiVersion": "v3", "scheduleJob": {"name": "tick", "adminState": "LOCKED"}}]),
        ),
        StatusCode::MULTI_STATUS,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = hook.got().len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hook.got().len(), before, "a locked job ran");
    let records = total(&svc, &format!("{REC}/job/name/tick")).await;
    svc.expect(
        "POST",
        &format!("{JOB}/trigger/name/tick"),
        None,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(
        total(&svc, &format!("{REC}/job/name/tick")).await,
        records + 1
    );
    assert_eq!(hook.got().len(), before + 1);
}

async fn runs_missed_while_the_service_was_down_are_recorded_and_the_job_runs_once(b: Backend) {
    let cfg = config(b);
    let svc = service(cfg.clone()).await;
    let port = outpost_testkit::free_port();
    let hook = Webhook::start(port, 0).await;
    let mut j = job("daily-ish", every("1s"), json!([rest(port, "/run")]));
    j["scheduleJob"]["autoTriggerMissedRecords"] = true.into();
    svc.expect("POST", JOB, Some(json!([j])), StatusCode::MULTI_STATUS)
        .await;
    until("a first run", WAIT, async || {
        (!hook.got().is_empty()).then_some(())
    })
    .await;
    until("its record", WAIT, async || {
        (total(&svc, &format!("{REC}/job/name/daily-ish")).await >= 1).then_some(())
    })
    .await;
    let test = svc.stop().await;
    let runs = hook.got().len();
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    let restarted = now_ms();
    let svc = Service::build_in::<SupportScheduler>(test, cfg).await;
    let missed = total(&svc, &format!("{REC}/job/name/daily-ish/status/MISSED")).await;
    assert!((2..=4).contains(&missed), "missed runs recorded: {missed}");
    // Run once at start for them (and then on schedule).
    until("the catch-up run", WAIT, async || {
        (hook.got().len() > runs).then_some(())
    })
    .await;
    let after = svc
        .expect(
            "GET",
            &format!("{REC}/job/name/daily-ish/status/SUCCEEDED?start={restarted}"),
            None,
            StatusCode::OK,
        )
        .await;
    assert!(after["totalCount"].as_u64().unwrap_or(0) >= 1, "{after}");
}

async fn the_default_job_is_made_once_and_stays_removed(b: Backend) {
    let mut cfg = config(b);
    cfg.default_jobs.enabled = true;
    let svc = service(cfg.clone()).await;
    let j = svc
        .expect(
            "GET",
            &format!("{JOB}/name/scrub-aged-events"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        j["scheduleJob"]["actions"][0]["address"],
        "http://core-data/api/v3/event/age/604800000000000"
    );
    svc.expect(
        "DELETE",
        &format!("{JOB}/name/scrub-aged-events"),
        None,
        StatusCode::OK,
    )
    .await;
    let test = svc.stop().await;
    let svc = Service::build_in::<SupportScheduler>(test, cfg).await;
    svc.expect(
        "GET",
        &format!("{JOB}/name/scrub-aged-events"),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
}

async fn a_message_bus_action_publishes_its_payload_in_an_envelope(b: Backend) {
    let broker = Mosquitto::start();
    let watcher = outpost_testkit::bus::Client::connect(&broker.url(), "watcher").await;
    let mut rx = watcher.subscribe("edgex/job_test").await;
    let svc = Service::build_in::<SupportScheduler>(
        context(crate::SERVICE, &[]).with_bus(&broker.url()),
        config(b),
    )
    .await;
    let start = now_ms() + 600_000;
    svc.expect(
        "POST",
        JOB,
        Some(json!([job("bus", json!({"type": "INTERVAL", "interval": "1h", "startTimestamp": start}),
            json!([{"type": "EDGEXMESSAGEBUS", "topic": "edgex/job_test", "payload": "{\"value\": 999}"}]))])),
        StatusCode::MULTI_STATUS,
    )
    .await;
    // Not started yet; triggered anyway.
    svc.expect(
        "POST",
        &format!("{JOB}/trigger/name/bus"),
        None,
        StatusCode::ACCEPTED,
    )
    .await;
    let d = outpost_testkit::bus::next(&mut rx, "the job's message").await;
    let envelope: Value = serde_json::from_slice(&d.payload).expect("an envelope");
    let text = envelope.to_string();
    assert!(text.contains("999"), "{text}");
    assert_eq!(
        total(&svc, &format!("{REC}/job/name/bus/status/SUCCEEDED")).await,
        1
    );
}

/// On PostgreSQL, what a job does (its targets) and the secrets' values reach the
/// database's rows sealed; names and labels, which lists select on, do not.
#[tokio::test]
async fn jobs_and_secrets_reach_postgresql_sealed() {
    use crate::store::{SchedulerStore as _, StoredJob};
    let server = outpost_testkit::postgres::server();
    let database = server.database();
    let secrets = tempfile::tempdir().unwrap();
    let store = crate::postgres::PgStore::open(&database.storage(), secrets.path())
        .await
        .unwrap();
    let job: crate::model::ScheduleJob = serde_json::from_value(json!({
        "id": "0b5b1d8e-0000-4000-8000-000000000001", "name": "canary-job",
        "definition": {"type": "INTERVAL", "interval": "1h"}, "adminState": "UNLOCKED",
        "labels": ["site-canary"],
        "actions": [{"type": "REST", "address": "http://canary-host-7f3a/run", "method": "POST"}]
    }))
    .unwrap();
    store
        .add_job(StoredJob {
            job,
            action_ids: vec!["a1".into()],
        })
        .await
        .unwrap();
    let password = "canary-password-5c1e";
    store
        .put_secret("smtp".into(), vec![("password".into(), password.into())])
        .await
        .unwrap();
    let hex_of = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let rows = server.psql_in(
        &database.name,
        "SELECT name, labels, encode(body, 'hex') FROM support_scheduler.jobs",
    );
    assert!(
        rows.contains("canary-job") && rows.contains("site-canary"),
        "{rows}"
    );
    assert!(
        !rows.contains(&hex_of("canary-host-7f3a")),
        "a target in plaintext: {rows}"
    );
    let rows = server.psql_in(
        &database.name,
        "SELECT name, key, encode(value, 'hex') FROM support_scheduler.secrets",
    );
    assert!(rows.contains("smtp"), "{rows}");
    assert!(
        !rows.contains(&hex_of(password)),
        "a secret in plaintext: {rows}"
    );
    let back = store.job("canary-job").await.unwrap().unwrap();
    assert_eq!(back.job.actions.len(), 1);
}

/// The `scheduledAt` of every record of `job`, oldest first, as `svc` lists them.
async fn scheduled_runs(svc: &Service, job: &str) -> Vec<i64> {
    outpost_testkit::scheduled_times(
        &svc.expect(
            "GET",
            &format!("{REC}/job/name/{job}?limit=1000"),
            None,
            StatusCode::OK,
        )
        .await,
    )
}

#[tokio::test]
async fn two_instances_on_one_store_run_each_job_once_and_follow_each_others_changes() {
    // Two instances sharing one PostgreSQL database and its values key.
    let keys = tempfile::tempdir().expect("tempdir");
    let key_file = outpost_testkit::postgres::values_key_file(keys.path());
    let mut cfg = config(Backend::Postgres);
    cfg.storage.key_file = Some(key_file);
    let a = service(cfg.clone()).await;
    let b = service(cfg).await;

    // A job added through the instance that does not run the jobs: the other one takes it
    // in and runs it.
    let port = outpost_testkit::free_port();
    let hook = Webhook::start(port, 0).await;
    b.expect(
        "POST",
        JOB,
        Some(json!([job(
            "tick",
            every("1s"),
            json!([rest(port, "/tick")])
        )])),
        StatusCode::MULTI_STATUS,
    )
    .await;
    until("three runs", WAIT, async || {
        (hook.got().len() >= 3).then_some(())
    })
    .await;
    // Both know it, and one instance runs it.
    for svc in [&a, &b] {
        svc.expect("GET", &format!("{JOB}/name/tick"), None, StatusCode::OK)
            .await;
    }
    outpost_testkit::one_runner(&scheduled_runs(&a, "tick").await, 1_000, 3);

    // The job changed through one instance is changed in the other's memory: locked, it
    // stops running wherever the runner is.
    let patch =
        json!([{"apiVersion": "v3", "scheduleJob": {"name": "tick", "adminState": "LOCKED"}}]);
    b.expect("PATCH", JOB, Some(patch), StatusCode::MULTI_STATUS)
        .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let locked_at = hook.got().len();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(hook.got().len(), locked_at, "a locked job ran");
    let patch =
        json!([{"apiVersion": "v3", "scheduleJob": {"name": "tick", "adminState": "UNLOCKED"}}]);
    a.expect("PATCH", JOB, Some(patch), StatusCode::MULTI_STATUS)
        .await;
    until("runs again", WAIT, async || {
        (hook.got().len() > locked_at).then_some(())
    })
    .await;

    // The runner stops: the other instance takes over at once and the job goes on.
    let _a = a.stop().await;
    let before = hook.got().len();
    until("runs on the other instance", WAIT, async || {
        (hook.got().len() >= before + 2).then_some(())
    })
    .await;
    outpost_testkit::one_runner(&scheduled_runs(&b, "tick").await, 1_000, 3);
}
