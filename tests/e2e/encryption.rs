//! Encryption at rest: after ingesting known values, no file under the data dir contains
//! them (nor the device's name) in plaintext: not core-data's database, not the export
//! queue holding them for a cloud that is away, not the cloud node's database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::export::Cloud;
use crate::support::*;

/// Every file under `dir`; fails on a directory it cannot read (one that vanished while
/// walked, as a rotated WAL, is skipped).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("cannot list {}: {e}", d.display()),
        };
        for e in entries {
            let p = e.expect("directory entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The `(file, needle)` pairs for which a file under `dir` holds a needle in plaintext;
/// fails on a file it cannot read, so an unreadable file never counts as clean.
fn plaintext(dir: &Path, needles: &[&str]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for f in files_under(dir) {
        let bytes = match std::fs::read(&f) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("cannot read {}: {e}", f.display()),
        };
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                found.push((f.clone(), (*n).to_string()));
            }
        }
    }
    found
}

#[test]
fn the_plaintext_search_finds_what_is_there() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("db")).expect("dir");
    std::fs::write(dir.path().join("db/x.db"), b"\x00\x01canary-reading\x02").expect("write");
    assert_eq!(
        plaintext(dir.path(), &["canary-reading", "absent"]),
        vec![(dir.path().join("db/x.db"), "canary-reading".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_under_the_data_dir() {
    // A cloud that is away: the node's export queue holds everything meanwhile.
    let mut cloud = Cloud::start().await;
    let identity = cloud.enroll("edge-canary");
    cloud.stop();
    let mut node = Node::start(&cloud_export(
        &identity,
        "retry_initial_ms = 50\nretry_max_ms = 500",
    ))
    .await;
    let device = "canary-device-8c1f";
    provision(&node, &[device]);
    let value = "73519.0625";
    let text = "canary-reading-text-5e2a";
    let lines: Vec<String> = (0..50)
        .map(|i| {
            event_message(
                device,
                now_nanos() + i,
                &[
                    ("Temperature", "Float64", "100.125"),
                    ("Label", "String", text),
                ],
            )
            .1
        })
        .collect();
    let out = mosquitto_pub_lines(node.ports.mqtt, &event_topic(device), &lines, &[]);
    assert!(out.status.success());
    // And one over REST with a value that is only ever sent once.
    let (_, m) = event_message(
        device,
        now_nanos(),
        &[
            ("Temperature", "Float64", "99.9375"),
            ("Label", "String", value),
        ],
    );
    let body: serde_json::Value = serde_json::from_str(&m).expect("json");
    let (s, _) = node
        .post(
            &format!(
                "{}/api/v3/event/device-mqtt/Thermostat/{device}/Temperature",
                node.data()
            ),
            &body["payload"],
        )
        .await;
    assert_eq!(s, 201);
    let data = node.data();
    eventually("51 events", Duration::from_secs(20), || async {
        node.get(&format!("{data}/api/v3/event/count")).await.1["count"] == 51
    })
    .await;
    let export = node.url(node.ports.export);
    eventually(
        "51 events queued for the cloud",
        Duration::from_secs(20),
        || async {
            node.get(&format!("{export}/api/v3/export/status")).await.1["destinations"][0]["queue"]
                ["items"]
                == 51
        },
    )
    .await;
    let needles = [value, text, "100.125", device];
    // Check while running (WAL files present) and after a clean stop.
    let check = |dir: &Path, when: &str, must_have: &[&str]| {
        let files = files_under(dir);
        for m in must_have {
            assert!(
                files.iter().any(|f| f.to_string_lossy().contains(m)),
                "{when}: no {m} in {files:?}"
            );
        }
        let found = plaintext(dir, &needles);
        assert!(found.is_empty(), "{when}: plaintext in {found:?}");
    };
    let at_node = ["core-data.db", "/queue/"];
    check(&node.data_dir(), "running", &at_node);
    // The cloud comes back and takes the backlog: its database holds it, encrypted.
    cloud.launch().await;
    eventually(
        "the backlog in the cloud",
        Duration::from_secs(30),
        || async {
            cloud
                .values("edge-canary", device)
                .await
                .values()
                .sum::<u32>()
                == 102
        },
    )
    .await;
    check(&cloud.data_dir(), "cloud running", &[".db"]);
    node.stop();
    check(&node.data_dir(), "stopped", &at_node);
    cloud.stop();
    check(&cloud.data_dir(), "cloud stopped", &[".db"]);
    // Secrets are private to the node's user: files 0600, directories (the services' keys)
    // 0700, all the way down.
    use std::os::unix::fs::PermissionsExt as _;
    let mut dirs = vec![node.data_dir().join("secrets")];
    let mut files = 0;
    while let Some(dir) = dirs.pop() {
        for f in std::fs::read_dir(&dir).expect("secrets dir").flatten() {
            let meta = f.metadata().expect("meta");
            let mode = meta.permissions().mode() & 0o777;
            let want = if meta.is_dir() {
                dirs.push(f.path());
                0o700
            } else {
                files += 1;
                0o600
            };
            assert_eq!(mode, want, "{} has mode {mode:o}", f.path().display());
        }
    }
    assert!(
        files >= 3,
        "the node keeps its secrets there ({files} files)"
    );
}

/// core-data and core-keeper on PostgreSQL (one database, a schema each): events published
/// by a device are stored and queried as on SQLite, every service registers, and the
/// values never reach PostgreSQL's files in plaintext (the device and profile names, which
/// queries select on, do: the search finds what is there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_data_core_keeper_and_core_metadata_on_postgresql_keep_values_sealed() {
    let pg = outpost_testkit::postgres::server();
    let db = pg.database();
    let node = Node::start(&format!(
        "{}{}{}",
        db.storage_toml("core_data"),
        db.storage_toml("core_keeper"),
        db.storage_toml("core_metadata")
    ))
    .await;
    let device = "pg-canary-device-41d7";
    provision(&node, &[device]);
    let text = "pg-canary-reading-9b3e";
    let value = "97.9140625";
    let lines: Vec<String> = (0..40)
        .map(|i| {
            event_message(
                device,
                now_nanos() + i,
                &[("Temperature", "Float64", value), ("Label", "String", text)],
            )
            .1
        })
        .collect();
    let out = mosquitto_pub_lines(node.ports.mqtt, &event_topic(device), &lines, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = node.data();
    eventually(
        "40 events in PostgreSQL",
        Duration::from_secs(20),
        || async { node.get(&format!("{data}/api/v3/event/count")).await.1["count"] == 40 },
    )
    .await;
    let (s, r) = node
        .get(&format!(
            "{data}/api/v3/reading/device/name/{device}/resourceName/Label?limit=1"
        ))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["totalCount"].as_u64(), &r["readings"][0]["value"]),
        (Some(40), &serde_json::json!(text)),
        "{r}"
    );
    let (_, a) = node
        .get(&format!(
            "{data}/api/v3/reading/device/name/{device}/resourceName/Temperature?aggregateFunc=MAX"
        ))
        .await;
    assert_eq!(a["readings"][0]["value"], 97.9140625, "{a}");
    // The node's health says where events go and that writes succeed.
    let (_, h) = node.get(&format!("{data}/api/v3/health")).await;
    assert!(h.to_string().contains("writes"), "{h}");
    // Its rows, in its own schema of the test's database.
    let rows = pg.psql_in(
        &db.name,
        &format!("SELECT count(*) FROM core_data.readings WHERE device = '{device}'"),
    );
    assert_eq!(rows.trim(), "80", "40 events of 2 readings");
    // The device itself is core-metadata's row there, by name, its JSON sealed.
    let rows = pg.psql_in(
        &db.name,
        &format!("SELECT count(*) FROM core_metadata.objects WHERE kind = 2 AND name = '{device}'"),
    );
    assert_eq!(
        rows.trim(),
        "1",
        "the device in core-metadata's PostgreSQL rows"
    );
    // The registry's rows: the node's services registered there, and their configuration
    // seeded (core-metadata's writable settings).
    let count = |sql: &str| pg.psql_in(&db.name, sql).trim().parse::<u64>().unwrap_or(0);
    assert!(
        count("SELECT count(*) FROM core_keeper.registrations WHERE body LIKE '%core-data%'") >= 1,
        "core-data is not registered in PostgreSQL"
    );
    eventually(
        "core-metadata's settings in PostgreSQL",
        Duration::from_secs(20),
        || async {
            count("SELECT count(*) FROM core_keeper.kv WHERE key LIKE '%core-metadata/Writable/%'")
                >= 1
        },
    )
    .await;
    pg.psql("CHECKPOINT");
    // The test's database files and the write-ahead log, where rows land first.
    let oid = pg.psql(&format!(
        "SELECT oid FROM pg_database WHERE datname = '{}'",
        db.name
    ));
    let needles = [text, value, device, "Thermostat"];
    let mut found = plaintext(&pg.data_dir().join("base").join(oid.trim()), &needles);
    found.extend(plaintext(&pg.data_dir().join("pg_wal"), &needles));
    let names: Vec<&str> = found.iter().map(|(_, n)| n.as_str()).collect();
    assert!(
        names.contains(&device) && names.contains(&"Thermostat"),
        "the names are in PostgreSQL's files, found as they are: {found:?}"
    );
    assert!(
        !names.contains(&text) && !names.contains(&value),
        "a value in plaintext in PostgreSQL's files: {found:?}"
    );
}
