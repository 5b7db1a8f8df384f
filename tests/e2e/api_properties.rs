//! API property tests: schemathesis, an independent client that generates requests from an
//! OpenAPI document (examples, boundary values, random and malformed data), against every
//! document the gateway serves, on a live node with every service enabled, through the
//! gateway over TLS as any client would. Each response must: not be a 5xx, match its
//! schema and content type in the document, and, when it refuses, carry EdgeX's error body
//! (`tests/api/edgex_checks.py`).
//!
//! The EdgeX documents are served with the corrections listed in
//! docs/openapi/edgex/CHANGES.md (where EdgeX's document disagrees with EdgeX).
//! `OUTPOST_TEST_SEED` picks the generation seed (fixed by default, so a failure replays);
//! `OUTPOST_API_EXAMPLES` the examples per operation (20 by default).

use std::path::PathBuf;
use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Node, https_client};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn schemathesis() -> PathBuf {
    outpost_testkit::peer("schemathesis/bin/schemathesis")
}

/// Services whose documents are served before the services exist (none now): their
/// documents are EdgeX's, kept so clients can be generated, and tested once the services
/// are built.
const NOT_BUILT: [&str; 0] = [];

#[tokio::test]
async fn every_served_api_document_holds_under_generated_requests() {
    let trusted = format!(
        "ed25519:{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32])
    );
    let node = Node::start(&format!(
        "[device_virtual]\nenabled = true\n[device_modbus]\nenabled = true\n\
         [device_mqtt]\nenabled = true\n[device_rest]\nenabled = true\n\
         [rules]\nenabled = true\n[export]\nenabled = true\n\
         [ota]\nenabled = true\ntrusted_keys = [\"{trusted}\"]\n"
    ))
    .await;
    let ca = node.data_dir().join("tls/ca.pem");
    let base = format!("https://localhost:{}", node.ports.gateway);
    let http = https_client(crate::support::trusting(&ca));
    let call = |m: Method, path: &str, token: Option<&str>, body: Option<Value>| {
        let mut rb = http.request(m, format!("{base}{path}"));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        rb.send()
    };

    // An admin API key for the run (an access token could expire during it).
    let password = std::fs::read_to_string(node.data_dir().join("secrets/admin-password"))
        .expect("admin password");
    let login: Value = call(
        Method::POST,
        "/api/v3/auth/login",
        None,
        Some(json!({"username": "admin", "password": password.trim()})),
    )
    .await
    .expect("login")
    .json()
    .await
    .expect("login JSON");
    let token = login["accessToken"].as_str().expect("an access token");
    let created: Value = call(
        Method::POST,
        "/api/v3/auth/apikey",
        Some(token),
        Some(json!({"name": "api-properties", "role": "admin"})),
    )
    .await
    .expect("create key")
    .json()
    .await
    .expect("key JSON");
    let key = created["key"].as_str().expect("an API key").to_string();

    let index: Value = call(Method::GET, "/api/v3/openapi", Some(&key), None)
        .await
        .expect("document index")
        .json()
        .await
        .expect("index JSON");
    let docs = index["documents"].as_array().expect("documents");
    // (document, the gateway routes it is tested at). core-keeper last: its registry
    // operations may register and remove services, which the other runs rely on.
    let mut runs: Vec<(String, Vec<String>)> = Vec::new();
    let mut skipped = Vec::new();
    for d in docs {
        let name = d["name"].as_str().expect("name").to_string();
        let services: Vec<String> = d["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        if services.iter().all(|s| NOT_BUILT.contains(&s.as_str())) {
            skipped.extend(services);
            continue;
        }
        let bases = services
            .iter()
            .map(|s| match s.as_str() {
                "gateway" => format!("{base}/api/v3"),
                s => format!("{base}/{s}/api/v3"),
            })
            .collect();
        runs.push((name, bases));
    }
    skipped.sort();
    assert_eq!(
        skipped, NOT_BUILT,
        "only the documents of services not built yet are left out"
    );
    assert!(runs.len() >= 9, "every other document is tested: {runs:?}");
    runs.sort_by_key(|(name, _)| name == "core-keeper.yaml");

    let seed = std::env::var("OUTPOST_TEST_SEED").unwrap_or_else(|_| "20261205".into());
    let examples = std::env::var("OUTPOST_API_EXAMPLES").unwrap_or_else(|_| "20".into());
    let work = crate::support::tempdir();
    let mut failed = Vec::new();
    for (name, bases) in &runs {
        let text = call(
            Method::GET,
            &format!("/api/v3/openapi/{name}"),
            Some(&key),
            None,
        )
        .await
        .expect("document")
        .text()
        .await
        .expect("document text");
        let file = work.path().join(name);
        std::fs::write(&file, text).expect("write document");
        for url in bases {
            let mut cmd = Command::new(schemathesis());
            cmd                .env("SCHEMATHESIS_HOOKS", "edgex_checks")
                .env("PYTHONPATH", root().join("tests/api"))
                .env("NO_COLOR", "1")
                .current_dir(work.path())
                .args(["run", file.to_str().expect("utf-8 path"), "--url", url])
                .args(["--tls-verify", ca.to_str().expect("utf-8 path")])
                .args(["-H", &format!("Authorization: Bearer {key}")])
                .args([
                    "--checks",
                    "not_a_server_error,content_type_conformance,response_schema_conformance,edgex_error_shape",
                ])
                .args(["--phases", "examples,coverage,fuzzing"])
                .args(["--max-examples", &examples, "--seed", &seed])
                .args(["--no-color"])
                // Hypothesis' health checks judge the generator (too many values filtered
                // out by a strict schema), not the API.
                .args(["--suppress-health-check", "all"]);
            if name == "gateway.yaml" {
                // What would end the run's own access: revoking its key, removing its user
                // (both covered by the gateway's tests; schemathesis reuses ids it has seen
                // in answers, such as the key's).
                cmd.args([
                    "--exclude-path-regex",
                    r"^/auth/(apikey/\{id\}|user/\{name\})$",
                ]);
            }
            let out = cmd.output().expect("run schemathesis");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let summary = stdout
                .lines()
                .filter(|l| l.contains("generated,"))
                .collect::<Vec<_>>()
                .join(" ");
            println!("{name} at {url}: {summary}");
            if !out.status.success() || !summary.contains("passed") {
                failed.push(format!(
                    "{name} at {url}:\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "API properties broken:\n{}",
        failed.join("\n")
    );
}
