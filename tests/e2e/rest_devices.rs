//! device-rest with curl as the device: readings POSTed with the device's own token become
//! typed readings; every kind of bad request gets its status code and stores nothing; and
//! commands reach a real HTTP device (a small Python server) through core-command.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

const REST: &str = "[device_rest]\nenabled = true\ndevice_messages_per_s = 5.0\ndevice_messages_burst = 40\n[device_rest.driver]\nmax_body_bytes = 4096\n";

/// The resources of the Meter profile: one of each kind of value.
fn meter_resources() -> Value {
    json!([
        {"name": "Power", "properties": {"valueType": "Float64", "readWrite": "R", "units": "W",
            "minimum": 0, "maximum": 10000}},
        {"name": "Count", "properties": {"valueType": "Int16", "readWrite": "R"}},
        {"name": "Label", "properties": {"valueType": "String", "readWrite": "R"}},
        {"name": "Snapshot", "properties": {"valueType": "Binary", "readWrite": "R", "mediaType": "image/png"}},
        {"name": "Config", "properties": {"valueType": "Object", "readWrite": "R"}},
        {"name": "Limit", "properties": {"valueType": "Float64", "readWrite": "RW"}},
        {"name": "Reset", "properties": {"valueType": "Bool", "readWrite": "W"}}
    ])
}

/// A tiny HTTP device: GET /meter/<resource> answers the stored value, PUT stores it.
fn http_device(port: u16) -> Spawned {
    let script = r#"
import http.server, sys
values = {"Limit": "42.5"}
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name not in values:
            self.send_response(404); self.end_headers(); self.wfile.write(b"no such value"); return
        body = values[name].encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_PUT(self):
        n = int(self.headers.get("Content-Length", "0"))
        values[self.path.rsplit("/", 1)[-1]] = self.rfile.read(n).decode()
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;
    Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Spawned)
        .expect("python3 must be installed")
}

/// curl: (status, body).
/// curl as a device: POSTs to `url`, trusting the node CA `ca` (for `https`).
fn curl(ca: &Path, url: &str, token: Option<&str>, args: &[&str]) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", url]);
    c.arg("--cacert").arg(ca);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = c
        .args(args)
        .output()
        .expect("curl must be installed (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Waits for a reading of `resource` that `pred` accepts; core-data stores asynchronously.
async fn wait_reading(
    node: &Node,
    device: &str,
    resource: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(r) = node
            .readings(device, resource)
            .await
            .into_iter()
            .find(|r| pred(r))
        {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no matching {device}/{resource} reading"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_devices_push_with_tokens_and_take_commands() {
    let node = Node::start(REST).await;
    let md = node.metadata();
    let dev_port = free_port();
    let _device = http_device(dev_port);
    let meter = profile_request("Meter", "M-2", meter_resources());
    node.add_profiles(&meter).await;
    node.wait_device_service("device-rest").await;
    let dev = |name: &str, protocols: Value| {
        json!({"apiVersion": "v3", "device": {"name": name, "profileName": "Meter",
            "serviceName": "device-rest", "adminState": "UNLOCKED", "operatingState": "UP",
            "protocols": protocols}})
    };
    let rest =
        json!({"REST": {"Host": "127.0.0.1", "Port": dev_port.to_string(), "Path": "meter"}});
    let (_, v) = node
        .post(
            &format!("{md}/api/v3/device"),
            &json!([dev("meter-1", rest), dev("meter-2", json!({"other": {}}))]),
        )
        .await;
    assert!(
        v.as_array().unwrap().iter().all(|r| r["statusCode"] == 201),
        "{v}"
    );
    // device-rest validates the REST block.
    let (_, v) = node
        .post(
            &format!("{md}/api/v3/device"),
            &json!([dev("meter-9", json!({"REST": {"Port": "80"}}))]),
        )
        .await;
    assert_eq!(v[0]["statusCode"], 400, "{v}");
    let t1 = "meter-1-token-0000";
    let t2 = "meter-2-token-0000";
    for (d, t) in [("meter-1", t1), ("meter-2", t2)] {
        node.cli_ok(&["device", "secret", d, "--secret", t]);
    }

    let base = format!("{}/api/v3/resource", node.url(node.ports.rest));
    let ca = node.data_dir().join("tls/ca.pem");
    let url = |d: &str, r: &str| format!("{base}/{d}/{r}");
    // The device service loads devices asynchronously.
    eventually("device-rest knows meter-1", WAIT, || async {
        curl(
            &ca,
            &url("meter-1", "Power"),
            Some(t1),
            &["--data", "1234.5"],
        )
        .0 == 200
    })
    .await;
    wait_reading(&node, "meter-1", "Power", |r| r["value"] == "1.2345e+03").await;
    for (r, body, want) in [("Count", "-42", "-42"), ("Label", "line 3", "line 3")] {
        let (s, b) = curl(&ca, &url("meter-1", r), Some(t1), &["--data", body]);
        assert_eq!(s, 200, "{r}: {b}");
        wait_reading(&node, "meter-1", r, |x| x["value"] == want).await;
    }
    let (s, b) = curl(
        &ca,
        &url("meter-1", "Config"),
        Some(t1),
        &[
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"mode":"eco","n":2}"#,
        ],
    );
    assert_eq!(s, 200, "{b}");
    wait_reading(&node, "meter-1", "Config", |r| {
        r["objectValue"]["mode"] == "eco"
    })
    .await;
    let png = node.dir.path().join("snap.png");
    std::fs::write(&png, [0x89, b'P', b'N', b'G', 0, 1, 2, 3]).expect("write");
    let file = format!("@{}", png.display());
    let (s, b) = curl(
        &ca,
        &url("meter-1", "Snapshot"),
        Some(t1),
        &["-H", "Content-Type: image/png", "--data-binary", &file],
    );
    assert_eq!(s, 200, "{b}");
    wait_reading(&node, "meter-1", "Snapshot", |r| {
        r["mediaType"] == "image/png"
    })
    .await;
    // Several resources at once (JSON object with a timestamp).
    let (s, b) = curl(
        &ca,
        &format!("{base}/meter-1"),
        Some(t1),
        &[
            "--data",
            r#"{"Power": 7, "Count": 8, "timestamp": 1795341600}"#,
        ],
    );
    assert_eq!(s, 200, "{b}");
    wait_reading(&node, "meter-1", "Power", |r| {
        r["value"] == "7e+00" && r["origin"] == 1_795_341_600_000_000_000i64
    })
    .await;
    // Let core-data catch up before counting what bad requests might add.
    wait_reading(&node, "meter-1", "Count", |r| r["value"] == "8").await;

    // Bad requests: the right status, and nothing stored.
    let before = node.readings("meter-1", "Count").await.len();
    let big = "9".repeat(5000);
    let refused = |what: &str, url: &str, token: Option<&str>, args: &[&str], want: u16| {
        let (s, b) = curl(&ca, url, token, args);
        assert_eq!(s, want, "{what}: {b}");
        // Every refusal but the one of a body over the limit says why.
        if s != 413 {
            let msg: Value = serde_json::from_str(&b).unwrap_or_default();
            assert!(
                msg["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: no message in {b}"
            );
        }
    };
    // Whose token: a device proves it is itself.
    for (what, device, token) in [
        ("no token", "meter-1", None),
        ("wrong token", "meter-1", Some("not-the-right-token")),
        ("another device's token", "meter-1", Some(t2)),
        ("unknown device", "ghost", Some(t1)),
    ] {
        refused(what, &url(device, "Count"), token, &["--data", "1"], 401);
    }
    // What it sends: each resource takes only what fits it.
    let as_text = ["-H", "Content-Type: text/plain", "--data", "x"];
    for (what, resource, args, want) in [
        ("unknown resource", "Nope", &["--data", "1"][..], 404),
        ("wrong type", "Count", &["--data", "many"], 400),
        (
            "out of the type's range",
            "Count",
            &["--data", "70000"],
            400,
        ),
        ("below minimum", "Power", &["--data", "-5"], 400),
        ("not JSON", "Config", &["--data", "{oops"], 400),
        ("wrong media type", "Snapshot", &as_text, 415),
        ("write-only", "Reset", &["--data", "true"], 405),
        ("too large", "Label", &["--data", big.as_str()], 413),
    ] {
        refused(what, &url("meter-1", resource), Some(t1), args, want);
    }
    let garbage = ["--data", "\u{1}\u{2}garbage"];
    refused(
        "garbage object",
        &format!("{base}/meter-1"),
        Some(t1),
        &garbage,
        400,
    );
    // A good value after the refused ones: once it is stored, none of those was.
    let (s, body) = curl(&ca, &url("meter-1", "Count"), Some(t1), &["--data", "4321"]);
    assert_eq!(s, 200, "{body}");
    eventually("the good value after the refused ones", WAIT, || async {
        node.readings("meter-1", "Count")
            .await
            .iter()
            .any(|r| r["value"] == "4321")
    })
    .await;
    assert_eq!(node.readings("meter-1", "Count").await.len(), before + 1);
    assert!(
        node.readings("meter-1", "Power")
            .await
            .iter()
            .all(|r| r["value"] != "-5e+00")
    );

    // A locked device's readings are refused.
    let (s, _) = node
        .patch(
            &format!("{md}/api/v3/device"),
            &json!([{"apiVersion": "v3", "device": {"name": "meter-2", "adminState": "LOCKED"}}]),
        )
        .await;
    assert_eq!(s, 207);
    eventually("meter-2 locked", WAIT, || async {
        curl(&ca, &url("meter-2", "Count"), Some(t2), &["--data", "1"]).0 == 423
    })
    .await;

    // Commands out to the HTTP device through core-command.
    let cmd = node.device_command("meter-1", "Limit");
    let (s, v) = node.get(&cmd).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event"]["readings"][0]["value"], "4.25e+01");
    let (s, v) = node.put(&cmd, &json!({"Limit": "60"})).await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = node.get(&cmd).await;
    assert_eq!(v["event"]["readings"][0]["value"], "6e+01");
    // A device without a REST block cannot be commanded; its error says why.
    let (s, v) = node.get(&node.device_command("meter-2", "Limit")).await;
    assert!(s >= 400, "{s} {v}");

    // A flooding device gets 429 (with Retry-After).
    let codes: Vec<u16> = (0..60)
        .map(|i| {
            curl(
                &ca,
                &url("meter-1", "Count"),
                Some(t1),
                &["--data", &i.to_string()],
            )
            .0
        })
        .collect();
    assert!(codes.contains(&429), "{codes:?}");
}
