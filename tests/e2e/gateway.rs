//! The API gateway over real TLS: the node's CA, login, tokens, roles, API keys, refresh,
//! request IDs, limits, load balancing over two instances, stale cache, composition, and
//! slow clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{
    Node, Paused, eventually, free_port, https_client, instance_b, run_ok, trusting,
};

/// An event of core-data (one that does not exist).
const AN_EVENT: &str = "/core-data/api/v3/event/id/5a1e9c2b-0c1d-4b8a-9f43-0d5c9e6a3f11";

/// An HTTPS client that trusts only the node's CA, offering HTTP/2.
fn tls_client(ca: &Path) -> reqwest::Client {
    let mut cfg = trusting(ca);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    https_client(cfg)
}

struct Gw {
    base: String,
    http: reqwest::Client,
}

impl Gw {
    fn new(node: &Node) -> Self {
        Self::at(node, node.ports.gateway)
    }

    /// A gateway of `node` listening on `port`.
    fn at(node: &Node, port: u16) -> Self {
        Self {
            base: format!("https://localhost:{port}"),
            http: tls_client(&node.data_dir().join("tls/ca.pem")),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        rb.send().await.expect("request through the gateway")
    }

    /// A GET with `token`, if any: its status.
    async fn get(&self, path: &str, token: Option<&str>) -> StatusCode {
        self.call(Method::GET, path, token, None).await.status()
    }

    async fn login(&self, user: &str, password: &str) -> Value {
        let r = self
            .call(
                Method::POST,
                "/api/v3/auth/login",
                None,
                Some(&json!({"username": user, "password": password})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "login of {user}");
        r.json().await.expect("token JSON")
    }
}

fn admin_password(node: &Node) -> String {
    let p = node.data_dir().join("secrets/admin-password");
    let meta = std::fs::metadata(&p).expect("admin credential");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "credential is private"
    );
    std::fs::read_to_string(p).expect("read").trim().to_string()
}

#[tokio::test]
async fn tls_login_tokens_roles_keys_and_request_ids() {
    let mut node = Node::start("[log]\nlevel = \"info,outpost_kit=debug\"\n").await;
    let gw = Gw::new(&node);

    // Public: ping, health, the CA (which is the file clients trust).
    assert_eq!(gw.get("/api/v3/ping", None).await, 200);
    let ca = gw.call(Method::GET, "/api/v3/ca.pem", None, None).await;
    assert_eq!(ca.status(), 200);
    assert_eq!(
        ca.text().await.unwrap(),
        std::fs::read_to_string(node.data_dir().join("tls/ca.pem")).unwrap()
    );
    // HTTP/2 by ALPN.
    let r = gw.call(Method::GET, "/api/v3/ping", None, None).await;
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // Plain HTTP on the TLS port is not answered as HTTP.
    let plain = node
        .http
        .get(format!(
            "http://127.0.0.1:{}/api/v3/ping",
            node.ports.gateway
        ))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP answered on the TLS port: {plain:?}"
    );

    // Anonymous: refused on every non-public route, with a Bearer challenge; nothing is
    // proxied.
    for (m, p) in [
        (Method::GET, "/core-metadata/api/v3/deviceprofile/all"),
        (Method::GET, "/core-data/api/v3/event/all"),
        (Method::DELETE, AN_EVENT),
        (Method::GET, "/api/v3/auth/user"),
        (Method::GET, "/no-such-service/api/v3/ping"),
        (Method::GET, "/metrics"),
    ] {
        let r = gw.call(m.clone(), p, None, None).await;
        assert_eq!(r.status(), 401, "{m} {p}");
        assert!(r.headers().contains_key("www-authenticate"));
    }

    // Login: wrong password 401, the generated admin credential works.
    assert_eq!(
        gw.call(
            Method::POST,
            "/api/v3/auth/login",
            None,
            Some(&json!({"username": "admin", "password": "not the password"}))
        )
        .await
        .status(),
        401
    );
    let admin = gw.login("admin", &admin_password(&node)).await;
    let at = admin["accessToken"].as_str().unwrap().to_string();
    assert_eq!(admin["role"], "admin");

    // A proxied read with the token, and the request ID end to end.
    let id = "gw-e2e-7d0c1f5a";
    let r = gw
        .http
        .get(format!(
            "{}/core-metadata/api/v3/deviceprofile/all",
            gw.base
        ))
        .bearer_auth(&at)
        .header("X-Correlation-ID", id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-correlation-id"], id);
    let minted = gw
        .call(Method::GET, "/core-data/api/v3/ping", Some(&at), None)
        .await;
    assert_eq!(minted.status(), 200);
    assert!(!minted.headers()["x-correlation-id"].is_empty());
    // The gateway's access log (JSON lines, written off the request path) and the
    // backend's log line show the same ID.
    let access = node.data_dir().join("log/access.log");
    eventually(
        "the request ID in the gateway's access log and the backend's log",
        Duration::from_secs(5),
        || async {
            let log = node.log();
            std::fs::read_to_string(&access)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|l| {
                    l["requestId"] == id
                        && l["status"] == 200
                        && l["identity"] == "user:admin"
                        && l["upstream"] == "core-metadata"
                })
                && log
                    .lines()
                    .any(|l| l.contains("core-metadata |") && l.contains(id))
        },
    )
    .await;

    // Users and roles.
    let vic = json!({"username": "vic", "password": "viewer password 1", "role": "viewer"});
    let s = gw
        .call(Method::POST, "/api/v3/auth/user", Some(&at), Some(&vic))
        .await
        .status();
    assert_eq!(s, 201);
    let viewer = gw.login("vic", "viewer password 1").await;
    let vt = viewer["accessToken"].as_str().unwrap().to_string();
    assert_eq!(
        gw.get("/core-data/api/v3/event/count", Some(&vt)).await,
        200
    );
    for (m, p) in [
        (Method::PUT, "/core-command/api/v3/device/name/x/y"),
        (Method::DELETE, AN_EVENT),
        (Method::POST, "/core-metadata/api/v3/device"),
        (Method::GET, "/api/v3/auth/user"),
        (Method::POST, "/core-keeper/api/v3/registry"),
    ] {
        assert_eq!(
            gw.call(m.clone(), p, Some(&vt), Some(&json!({})))
                .await
                .status(),
            403,
            "viewer {m} {p}"
        );
    }
    // Forged and garbage tokens.
    let mut parts: Vec<String> = vt.split('.').map(str::to_string).collect();
    parts[1] = parts[1].chars().rev().collect();
    assert_eq!(
        gw.call(
            Method::GET,
            "/core-data/api/v3/event/count",
            Some(&parts.join(".")),
            None
        )
        .await
        .status(),
        401
    );
    assert_eq!(
        gw.call(
            Method::GET,
            "/core-data/api/v3/event/count",
            Some("nonsense"),
            None
        )
        .await
        .status(),
        401
    );

    // API keys: an operator key writes; revoked, it is refused.
    let r = gw
        .call(
            Method::POST,
            "/api/v3/auth/apikey",
            Some(&at),
            Some(&json!({"name": "script", "role": "operator"})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let k: Value = r.json().await.unwrap();
    let key = k["key"].as_str().unwrap().to_string();
    let del = AN_EVENT;
    let by_key = gw
        .http
        .delete(format!("{}{del}", gw.base))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_key.status(),
        404,
        "passed the gateway, unknown to core-data"
    );
    let kid = k["id"].as_str().unwrap();
    assert_eq!(
        gw.call(
            Method::DELETE,
            &format!("/api/v3/auth/apikey/{kid}"),
            Some(&at),
            None
        )
        .await
        .status(),
        204
    );
    assert_eq!(
        gw.call(Method::DELETE, del, Some(&key), None)
            .await
            .status(),
        401
    );

    // Refresh: a new pair; the used refresh token is refused afterwards.
    let rt = viewer["refreshToken"].as_str().unwrap();
    let body = json!({"refreshToken": rt});
    for expected in [200, 401] {
        let s = gw
            .call(Method::POST, "/api/v3/auth/refresh", None, Some(&body))
            .await
            .status();
        assert_eq!(s, expected);
    }

    // Bad input at the door.
    assert_eq!(gw.get("/no-such-service/api/v3/ping", Some(&at)).await, 404);
    let big = vec![b'x'; 5 * 1024 * 1024];
    let r = gw
        .http
        .post(format!("{}/core-metadata/api/v3/device", gw.base))
        .bearer_auth(&at)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = gw
        .http
        .get(format!("{}/core-data/api/v3/ping", gw.base))
        .bearer_auth(&at)
        .header("x-filler", "y".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);

    // Tokens survive a restart of the node; removing a user ends their token at once.
    node.stop();
    node.launch().await;
    assert_eq!(
        gw.get("/core-data/api/v3/event/count", Some(&at)).await,
        200
    );
    assert_eq!(
        gw.call(Method::DELETE, "/api/v3/auth/user/vic", Some(&at), None)
            .await
            .status(),
        204
    );
    assert_eq!(
        gw.get("/core-data/api/v3/event/count", Some(&vt)).await,
        401
    );
}

#[tokio::test]
async fn balancing_failover_stale_cache_limits_and_overview() {
    let node = Node::start(
        r#"
[device_virtual]
enabled = true
[gateway]
upstream_timeout_ms = 1500
cache_ttl_s = 1
eject_ms = 30000
route_limits = [{ prefix = "/core-keeper", rate_per_s = 1.0, burst = 3.0 }]
"#,
    )
    .await;
    let gw = Gw::new(&node);
    let admin = gw.login("admin", &admin_password(&node)).await;
    let at = admin["accessToken"].as_str().unwrap().to_string();

    // A second instance of core-command, registered as core-command@b.
    let port_b = free_port();
    let b = instance_b(&node, "core-command", "core_command", port_b, None);
    eventually(
        "core-command@b registered",
        Duration::from_secs(15),
        || async { node.status_of("core-command@b").await.as_deref() == Some("UP") },
    )
    .await;
    let gw_metrics = node.url(node.ports.gateway_http);
    eventually(
        "requests spread over both instances",
        Duration::from_secs(15),
        || async {
            for _ in 0..20 {
                assert_eq!(
                    gw.get("/core-command/api/v3/device/all", Some(&at)).await,
                    200
                );
            }
            let text = node
                .http
                .get(format!("{gw_metrics}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.contains("upstream=\"core-command@b\"")
                && text.contains("upstream=\"core-command\"")
        },
    )
    .await;
    // Instance b dies: idempotent GETs keep succeeding (retried on the other instance).
    drop(b);
    for i in 0..30 {
        assert_eq!(
            gw.get("/core-command/api/v3/device/all", Some(&at)).await,
            200,
            "request {i} after the instance died"
        );
    }

    // Cache: MISS, then HIT; metadata hangs → the cached profile is served, marked stale.
    let p = "/core-metadata/api/v3/deviceprofile/name/Random-Integer-Device";
    let r = gw.call(Method::GET, p, Some(&at), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "MISS");
    let fresh: Value = r.json().await.unwrap();
    let r = gw.call(Method::GET, p, Some(&at), None).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let metadata = node.pid("core-metadata");
    let paused_metadata = Paused::new(metadata);
    let r = gw.call(Method::GET, p, Some(&at), None).await;
    let (status, headers) = (r.status(), r.headers().clone());
    let stale: Value = r.json().await.unwrap_or_default();
    // Overview with metadata hanging is an error (the device itself is unknown); with
    // core-data hanging it is partial. Checked after metadata is back.
    drop(paused_metadata);
    assert_eq!(status, 200);
    assert_eq!(headers["x-cache"], "STALE");
    assert!(headers["warning"].to_str().unwrap().starts_with("110"));
    assert!(headers.contains_key("age"));
    assert_eq!(stale["profile"]["name"], fresh["profile"]["name"]);

    // A change made through the gateway is read back at once, never from the cache (the
    // system event that empties it comes over the bus a moment later).
    let all = "/core-metadata/api/v3/deviceprofile/all?limit=1000";
    eventually(
        "core-metadata answers again",
        Duration::from_secs(15),
        || async { gw.get(all, Some(&at)).await == 200 },
    )
    .await;
    let r = gw.call(Method::GET, all, Some(&at), None).await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    let added = json!([{"apiVersion": "v3", "profile": {"name": "read-your-write", "deviceResources": [
        {"name": "x", "properties": {"valueType": "Int32", "readWrite": "R"}}]}}]);
    let r = gw
        .call(
            Method::POST,
            "/core-metadata/api/v3/deviceprofile",
            Some(&at),
            Some(&added),
        )
        .await;
    assert_eq!(r.status(), 207);
    let r = gw.call(Method::GET, all, Some(&at), None).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    let listed: Value = r.json().await.unwrap_or_default();
    assert!(
        listed["profiles"]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["name"] == "read-your-write")),
        "{listed}"
    );

    // Composition: one round trip, then partial when core-data hangs.
    let dev = "Random-Integer-Device";
    let ov: Value = gw
        .call(
            Method::GET,
            &format!("/api/v3/overview/device/{dev}"),
            Some(&at),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ov["device"]["name"], dev);
    assert_eq!(ov["profile"]["name"], ov["device"]["profileName"]);
    assert!(ov["commands"].is_array(), "{ov}");
    assert_eq!(ov["partial"], false, "{ov}");
    let data = node.pid("core-data");
    let paused_data = Paused::new(data);
    let r = gw
        .call(
            Method::GET,
            &format!("/api/v3/overview/device/{dev}"),
            Some(&at),
            None,
        )
        .await;
    drop(paused_data);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-outpost-partial"], "true");
    let ov: Value = r.json().await.unwrap();
    assert!(
        ov["readings"].is_null() && ov["errors"]["readings"].is_string(),
        "{ov}"
    );
    assert_eq!(ov["device"]["name"], dev);

    // Rate limit on a route: burst of 3, then 429 with Retry-After, then recovery.
    let reg = "/core-keeper/api/v3/ping";
    for _ in 0..3 {
        assert_eq!(gw.get(reg, Some(&at)).await, 200);
    }
    let r = gw.call(Method::GET, reg, Some(&at), None).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait));
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(gw.get(reg, Some(&at)).await, 200);
    // Other routes were not limited meanwhile.
    assert_eq!(gw.get("/core-data/api/v3/ping", Some(&at)).await, 200);
}

#[tokio::test]
async fn slow_clients_and_failed_logins() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let node = Node::start("[gateway]\nheader_timeout_ms = 500\nlogin_burst = 2\n").await;
    // A client that sends half a request head and stalls gets 408 and is disconnected.
    let cfg = trusting(&node.data_dir().join("tls/ca.pem"));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", node.ports.gateway))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /api/v3/ping HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was closed by the gateway");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // A request refused before its body was read (no valid token), whose body arrives
    // after the refusal is ready: the gateway reads the rest before it answers, so the
    // connection stays open for the client's next request (were it closed after the
    // answer, a keep-alive client would send its next request into a closing connection).
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", node.ports.gateway))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let body = vec![b' '; 256 * 1024];
    let head = format!(
        "PATCH /core-metadata/api/v3/deviceprofile/resource HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer not-a-token\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        wr.flush().await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        wr.write_all(&body).await?;
        wr.write_all(b"GET /api/v3/ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("\"serviceName\":\"gateway\"") {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    // Header names in canonical case, as EdgeX's servers send them.
    assert!(
        text.contains("\r\nContent-Type: application/json\r\n"),
        "{text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(
        text.contains("HTTP/1.1 200") && text.contains("\"serviceName\":\"gateway\""),
        "the next request on the connection was answered: {text}"
    );
    writer
        .await
        .unwrap()
        .expect("the gateway read the whole body");

    // Failed logins: after the burst, 429 with Retry-After, even with the right password.
    let gw = Gw::new(&node);
    let bad = json!({"username": "admin", "password": "wrong wrong wrong"});
    for _ in 0..2 {
        assert_eq!(
            gw.call(Method::POST, "/api/v3/auth/login", None, Some(&bad))
                .await
                .status(),
            401
        );
    }
    let r = gw
        .call(Method::POST, "/api/v3/auth/login", None, Some(&bad))
        .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let good = json!({"username": "admin", "password": admin_password(&node)});
    assert_eq!(
        gw.call(Method::POST, "/api/v3/auth/login", None, Some(&good))
            .await
            .status(),
        429
    );
}

/// The role a route of a proxied service needs (auth.rs; the README's table): reads for
/// viewers, writes for operators; registry writes, secrets, where notifications go and
/// scheduled jobs for admins.
/// `path` is the document's, below the service's `/api/v3`.
fn proxied_role(service: &str, method: &Method, path: &str) -> &'static str {
    let rest = path.trim_start_matches('/');
    match (service, method) {
        (_, &Method::GET | &Method::HEAD) => "viewer",
        ("core-keeper", _) => "admin",
        _ if rest.starts_with("secret") => "admin",
        ("support-notifications", _) if rest.starts_with("subscription") => "admin",
        ("support-scheduler", _) if rest.starts_with("job") => "admin",
        _ => "operator",
    }
}

fn rank(role: &str) -> u8 {
    match role {
        "viewer" => 1,
        "operator" => 2,
        _ => 3,
    }
}

/// A concrete path for a templated one: every `{param}` becomes a harmless value.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "x0-not-there"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The gateway's count of requests sent to backends, with every request made before the
/// call in it: each event loop keeps its counts and hands them over once a second, so this
/// waits until every loop has handed over twice since.
async fn upstream_requests(node: &Node) -> f64 {
    let before = handovers(node).await;
    assert!(!before.is_empty(), "no event loop hands its metrics over");
    eventually(
        "every event loop to hand its counts over",
        Duration::from_secs(10),
        || async {
            let now = handovers(node).await;
            before
                .iter()
                .all(|(thread, n)| now.get(thread).is_some_and(|m| *m >= n + 2.0))
        },
    )
    .await;
    upstream_requests_now(node).await
}

/// How often each of the gateway's threads handed its metrics over, by thread.
async fn handovers(node: &Node) -> std::collections::HashMap<String, f64> {
    let text = node.metrics_text(&node.url(node.ports.gateway_http)).await;
    text.lines()
        .filter_map(|l| l.strip_prefix("outpost_gateway_metric_handovers_total{thread=\""))
        .filter_map(|l| {
            let (thread, rest) = l.split_once('"')?;
            Some((thread.to_string(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// Requests the gateway sent to backends so far (none before the first one).
async fn upstream_requests_now(node: &Node) -> f64 {
    node.metric_if_any(
        &node.url(node.ports.gateway_http),
        "outpost_gateway_upstream_requests_total",
    )
    .await
    .unwrap_or(0.0)
}

#[tokio::test]
async fn every_documented_route_is_guarded_and_tokens_expire() {
    let (key, _) = outpost_ota::manifest::SigningKey::generate().expect("key");
    let node = Node::start(&format!(
        "[gateway]\naccess_token_ttl_s = 10\n[ota]\nenabled = true\ntrusted_keys = [\"{}\"]\n",
        key.public().encoded()
    ))
    .await;
    let gw = Gw::new(&node);
    let admin = gw.login("admin", &admin_password(&node)).await;
    let at = admin["accessToken"].as_str().unwrap().to_string();
    let logged_in = std::time::Instant::now();
    for (user, role) in [("vera", "viewer"), ("otto", "operator")] {
        let body =
            json!({"username": user, "password": format!("{user} password 1"), "role": role});
        assert_eq!(
            gw.call(Method::POST, "/api/v3/auth/user", Some(&at), Some(&body))
                .await
                .status(),
            201
        );
    }
    let vt = gw.login("vera", "vera password 1").await["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    let ot = gw.login("otto", "otto password 1").await["accessToken"]
        .as_str()
        .unwrap()
        .to_string();

    // The documents the gateway serves: every core service's, the device services' and
    // its own, each pointing at its gateway route.
    let index: Value = gw
        .call(Method::GET, "/api/v3/openapi", Some(&at), None)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = index["documents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    for expected in [
        "gateway.yaml",
        "core-data.yaml",
        "core-metadata.yaml",
        "core-command.yaml",
        "core-keeper.yaml",
        "support-notifications.yaml",
        "support-scheduler.yaml",
        "device-service.yaml",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    assert_eq!(gw.get("/api/v3/openapi/core-data.yaml", None).await, 401);
    assert_eq!(gw.get("/api/v3/openapi/nope.yaml", Some(&at)).await, 404);

    // Every operation of every document: (method, path, service, public, role).
    let mut routes = Vec::new();
    let mut device_routes = Vec::new();
    for name in &names {
        let r = gw
            .call(
                Method::GET,
                &format!("/api/v3/openapi/{name}"),
                Some(&at),
                None,
            )
            .await;
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(r.headers()["content-type"], "application/yaml");
        let doc: Value = serde_norway::from_str(&r.text().await.unwrap()).expect("YAML");
        let servers: Vec<String> = doc["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["url"].as_str().unwrap().to_string())
            .collect();
        assert!(
            servers.iter().all(|s| s.ends_with("/api/v3")),
            "{servers:?}"
        );
        for server in &servers {
            let service = server.trim_start_matches('/').split('/').next().unwrap();
            let own = server == "/api/v3";
            for (path, ops) in doc["paths"].as_object().unwrap() {
                for (m, op) in ops.as_object().unwrap() {
                    let Ok(method) = m.to_uppercase().parse::<Method>() else {
                        continue;
                    };
                    if !["GET", "PUT", "POST", "DELETE", "PATCH"].contains(&method.as_str()) {
                        continue;
                    }
                    // The device protocol: devices carry their own credential, which the
                    // service checks; checked below.
                    if op.get("x-outpost-auth").is_some_and(|a| a == "device") {
                        device_routes.push((method, format!("{server}{}", concrete(path))));
                        continue;
                    }
                    let public = op.get("security").is_some_and(|s| s == &json!([]));
                    let role = if public {
                        "none".to_string()
                    } else if own {
                        op.get("x-outpost-role")
                            .and_then(Value::as_str)
                            .unwrap_or_else(|| panic!("{m} {path}: x-outpost-role"))
                            .to_string()
                    } else {
                        proxied_role(service, &method, path).to_string()
                    };
                    routes.push((method, format!("{server}{}", concrete(path)), public, role));
                }
            }
        }
    }
    assert!(routes.len() > 150, "{} routes", routes.len());
    assert!(routes.iter().any(|r| r.2), "public routes are documented");

    // Anonymous: every non-public route is refused with a Bearer challenge, and none of
    // those requests reaches a backend.
    let before = upstream_requests(&node).await;
    for (method, path, public, _) in &routes {
        let r = gw.call(method.clone(), path, None, Some(&json!({}))).await;
        if *public {
            assert_ne!(r.status(), 401, "public {method} {path}");
        } else {
            assert_eq!(r.status(), 401, "anonymous {method} {path}");
            assert!(
                r.headers().contains_key("www-authenticate"),
                "{method} {path}"
            );
        }
    }
    // Viewer and operator: refused (403) exactly where their role is not enough.
    for (token, who) in [(&vt, "viewer"), (&ot, "operator")] {
        for (method, path, public, role) in &routes {
            if *public || rank(who) >= rank(role) {
                continue;
            }
            let s = gw
                .call(method.clone(), path, Some(token), Some(&json!({})))
                .await
                .status();
            assert_eq!(s, 403, "{who} {method} {path} needs {role}");
        }
    }
    assert_eq!(
        upstream_requests(&node).await,
        before,
        "refused requests never reach a backend"
    );
    // ... while one that is let through is counted.
    assert_eq!(gw.get("/core-data/api/v3/ping", Some(&at)).await, 200);
    eventually(
        "the admitted request in the upstream count",
        Duration::from_secs(5),
        || async { upstream_requests_now(&node).await > before },
    )
    .await;
    // Device routes: without the device's own credential the service refuses them, also
    // for a user's token (which is no device credential and is not passed on).
    assert!(device_routes.len() >= 4, "{device_routes:?}");
    for (method, path) in &device_routes {
        for token in [None, Some(at.as_str())] {
            let s = gw
                .call(method.clone(), path, token, Some(&json!({})))
                .await
                .status();
            assert_eq!(s, 401, "{method} {path} with {token:?}");
        }
    }
    // Where the role is enough, the request passes the gateway (whatever the service
    // makes of the placeholder values).
    for (token, who) in [(&vt, "viewer"), (&ot, "operator")] {
        for (method, path, public, role) in &routes {
            if *public || rank(who) < rank(role) || path.contains("/auth/") {
                continue;
            }
            let s = gw
                .call(method.clone(), path, Some(token), Some(&json!({})))
                .await
                .status();
            assert!(
                s != 401 && s != 403 && s != 429,
                "{who} {method} {path}: {s}"
            );
        }
    }

    // curl, as the README shows it: log in, then a first request with the token.
    let ca = node.data_dir().join("tls/ca.pem");
    let base = format!("https://localhost:{}", node.ports.gateway);
    let curl = |args: &[&str]| {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sS", "--fail-with-body", "--cacert"])
            .arg(&ca)
            .args(args);
        let out = run_ok(&mut curl, "curl");
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON answer")
    };
    let login = json!({"username": "vera", "password": "vera password 1"}).to_string();
    let t = curl(&["-d", &login, &format!("{base}/api/v3/auth/login")]);
    let bearer = format!(
        "Authorization: Bearer {}",
        t["accessToken"].as_str().unwrap()
    );
    let v = curl(&[
        "-H",
        &bearer,
        &format!("{base}/core-metadata/api/v3/deviceprofile/all"),
    ]);
    assert_eq!(v["statusCode"], 200);
    // curl without the CA refuses the node's certificate.
    let untrusted = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null"])
        .arg(format!("{base}/api/v3/ping"))
        .output()
        .expect("curl");
    assert!(!untrusted.status.success());

    // Expiry: an access token stops working after access_token_ttl_s; the refresh token
    // still yields a new one.
    let wait = Duration::from_secs(11).saturating_sub(logged_in.elapsed());
    tokio::time::sleep(wait).await;
    assert_eq!(gw.get("/api/v3/auth/whoami", Some(&at)).await, 401);
    let fresh: Value = gw
        .call(
            Method::POST,
            "/api/v3/auth/refresh",
            None,
            Some(&json!({"refreshToken": admin["refreshToken"]})),
        )
        .await
        .json()
        .await
        .unwrap();
    let nt = fresh["accessToken"].as_str().unwrap();
    assert_eq!(gw.get("/api/v3/auth/whoami", Some(nt)).await, 200);
}

/// The CLI as on another machine: no node data dir, its own session store.
fn remote_cli(home: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(crate::support::BIN);
    cmd.arg("--data-dir")
        .arg(home.join("no-node-here"))
        .args(args)
        .env("XDG_CONFIG_HOME", home);
    crate::support::run_cli(cmd, Some(stdin))
}

#[tokio::test]
async fn cli_logs_in_manages_users_and_keys_and_works_remotely() {
    use std::os::unix::fs::PermissionsExt as _;
    let node = Node::start("").await;
    // On the node, the CLI goes through the gateway with the generated admin credential,
    // and keeps the session private.
    let out = node.cli_ok(&["whoami"]);
    assert!(out.contains("admin (admin)"), "{out}");
    let sessions: Vec<_> = std::fs::read_dir(node.cli_home().join("outpost/sessions"))
        .expect("session dir")
        .filter_map(Result::ok)
        .collect();
    assert_eq!(sessions.len(), 1);
    let mode = sessions[0].metadata().unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = node.cli_ok(&["services"]);
    assert!(out.contains("core-data"), "{out}");

    // Users and API keys.
    let (ok, _, err) = node.cli_with(
        &["user", "add", "vic", "--role", "viewer", "--password-stdin"],
        &[],
        Some("viewer password 1\n"),
    );
    assert!(ok, "{err}");
    let (ok, _, err) = node.cli_with(
        &[
            "user",
            "add",
            "short",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        &[],
        Some("short\n"),
    );
    assert!(
        !ok && err.contains("12"),
        "a too short password is refused: {err}"
    );
    let (ok, out, _) = node.cli(&["user", "list"]);
    assert!(ok);
    assert!(
        out.lines()
            .any(|l| l.starts_with("vic") && l.contains("viewer")),
        "{out}"
    );
    let out = node.cli_ok(&["apikey", "create", "ci", "--role", "operator"]);
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("opk_"))
        .expect("the key is printed")
        .to_string();
    let key_id = out
        .split_whitespace()
        .nth(2)
        .expect("the key's id")
        .to_string();
    let (ok, out, _) = node.cli(&["apikey", "list"]);
    assert!(ok);
    assert!(out.contains(&key_id) && out.contains("active"), "{out}");
    assert!(!out.contains(&key), "keys are never listed");

    // Another machine: the CA must be given once; the session keeps it.
    let home = crate::support::tempdir();
    let gw = format!("https://127.0.0.1:{}", node.ports.gateway);
    let ca = node.data_dir().join("tls/ca.pem");
    let ca = ca.to_str().unwrap();
    // The CLI on that machine, pointed at this node's gateway.
    let remote = |args: &[&str], stdin: &str| {
        let mut all = vec!["--gateway", gw.as_str()];
        all.extend_from_slice(args);
        remote_cli(home.path(), &all, stdin)
    };
    let (ok, _, err) = remote(&["profile", "list"], "");
    assert!(!ok && err.contains("--ca"), "{err}");
    let (ok, _, err) = remote(
        &["--ca", ca, "login", "--user", "vic", "--password-stdin"],
        "wrong password 12\n",
    );
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, err) = remote(
        &["--ca", ca, "login", "-u", "vic", "--password-stdin"],
        "viewer password 1\n",
    );
    assert!(ok, "{err}");
    assert!(out.contains("as vic (viewer)"), "{out}");
    let (ok, _, err) = remote(&["profile", "list"], "");
    assert!(ok, "reads work with the stored session and CA: {err}");
    let (ok, _, err) = remote(&["device", "rm", "nothing"], "");
    assert!(!ok && err.contains("403"), "a viewer cannot write: {err}");
    // An API key instead of a session.
    let (ok, _, err) = remote(&["--token", &key, "device", "list"], "");
    assert!(ok, "{err}");
    node.cli_ok(&["apikey", "revoke", &key_id]);
    let (ok, _, err) = remote(&["--token", &key, "device", "list"], "");
    assert!(!ok && err.contains("refused"), "{err}");

    // Removing the user ends the remote session.
    node.cli_ok(&["user", "rm", "vic"]);
    let (ok, _, err) = remote(&["profile", "list"], "");
    assert!(!ok && err.contains("outpost login"), "{err}");

    // Logout on the node: the session file goes; the next command logs in again.
    let (ok, out, _) = node.cli(&["logout"]);
    assert!(ok && out.contains("logged out"), "{out}");
    assert_eq!(
        std::fs::read_dir(node.cli_home().join("outpost/sessions"))
            .unwrap()
            .count(),
        0
    );
    let (ok, out, _) = node.cli(&["whoami"]);
    assert!(ok && out.contains("admin"), "{out}");
}

/// A certificate for localhost and 127.0.0.1 from a CA of its own, as an operator's tools
/// would make one: (CA, certificate chain, key) in `dir`.
fn operator_pair(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let paths = outpost_pki::Paths::new(dir);
    outpost_pki::ensure_server_cert(&paths, &["localhost".into(), "127.0.0.1".into()])
        .expect("a server certificate");
    (paths.ca_cert, paths.cert, paths.key)
}

/// Whether a client trusting only `ca` gets a ping answered by the gateway.
async fn trusted_by(node: &Node, ca: &Path) -> bool {
    tls_client(ca)
        .get(format!(
            "https://127.0.0.1:{}/api/v3/ping",
            node.ports.gateway
        ))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_certificate_replaced_on_disk_is_served_without_a_restart() {
    // The operator's files, replaced the way certificate tools replace them: new files
    // renamed over the old, key and chain one after the other.
    let op = crate::support::tempdir();
    let (first, second) = (op.path().join("first"), op.path().join("second"));
    let (ca1, cert1, key1) = operator_pair(&first);
    let (ca2, cert2, key2) = operator_pair(&second);
    let live = op.path().join("live");
    std::fs::create_dir(&live).expect("mkdir");
    std::fs::set_permissions(&live, std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .expect("chmod");
    let (cert, key) = (live.join("gateway.pem"), live.join("gateway.key"));
    let put = |from: &Path, to: &Path| {
        let staged = to.with_extension("new");
        std::fs::copy(from, &staged).expect("copy");
        crate::support::give_to_node_user(&staged);
        std::fs::rename(&staged, to).expect("rename over");
    };
    put(&cert1, &cert);
    put(&key1, &key);
    let node = Node::start(&format!(
        "[gateway]\ncert_file = \"{}\"\nkey_file = \"{}\"\ncert_reload_s = 1\n",
        cert.display(),
        key.display()
    ))
    .await;
    assert!(
        trusted_by(&node, &ca1).await,
        "the operator's first certificate"
    );
    assert!(!trusted_by(&node, &ca2).await);
    put(&key2, &key);
    put(&cert2, &cert);
    eventually(
        "the replaced certificate served",
        Duration::from_secs(20),
        || async { trusted_by(&node, &ca2).await },
    )
    .await;
    assert!(
        !trusted_by(&node, &ca1).await,
        "the old certificate is still served"
    );
    let log = node.log();
    assert!(!log.contains("cannot reload"), "{log}");
}

/// Two gateway instances on one PostgreSQL store of users (the node's, and `gateway@b` on
/// ports of its own): a user added through one logs in through the other, a token issued
/// by one is taken by the other, and a logout through one ends the token on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_instances_sharing_postgresql_share_users_and_end_tokens_on_both() {
    let db = outpost_testkit::postgres::server().database();
    let node = Node::start(&db.storage_toml("gateway")).await;
    let (listen_b, status_b) = (free_port(), free_port());
    let _b = crate::support::Spawned(
        std::process::Command::new(crate::support::BIN)
            .arg("--config")
            .arg(&node.config)
            .arg("--data-dir")
            .arg(node.data_dir())
            .args(["--set", &format!("gateway.port={status_b}")])
            .args(["--set", &format!("gateway.listen=\"127.0.0.1:{listen_b}\"")])
            .args(["--set", "node.instance=\"b\""])
            .args(["run", "gateway"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("gateway@b"),
    );
    let (a, b) = (Gw::new(&node), Gw::at(&node, listen_b));
    eventually("gateway@b answers", Duration::from_secs(20), || async {
        b.http
            .get(format!("{}/api/v3/ping", b.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let admin = a.login("admin", &admin_password(&node)).await;
    let at = admin["accessToken"].as_str().expect("token").to_string();
    let olga = json!({"username": "olga", "password": "operator password 1", "role": "operator"});
    let s = a
        .call(Method::POST, "/api/v3/auth/user", Some(&at), Some(&olga))
        .await
        .status();
    assert_eq!(s, 201);
    // Known to b within its follow interval.
    let token = outpost_testkit::until(
        "olga logs in through b",
        outpost_testkit::WAIT,
        async || {
            let r = b
                .call(
                    Method::POST,
                    "/api/v3/auth/login",
                    None,
                    Some(&json!({"username": "olga", "password": "operator password 1"})),
                )
                .await;
            if r.status() != 200 {
                return None;
            }
            let v: Value = r.json().await.ok()?;
            Some((
                v["accessToken"].as_str()?.to_string(),
                v["refreshToken"].clone(),
            ))
        },
    )
    .await;
    let (token, refresh) = token;
    assert_eq!(a.get("/api/v3/auth/whoami", Some(&token)).await, 200);
    assert_eq!(b.get("/api/v3/auth/whoami", Some(&token)).await, 200);
    // Logged out through a: refused by a at once, and by b once it followed.
    let out = a
        .call(
            Method::POST,
            "/api/v3/auth/logout",
            Some(&token),
            Some(&json!({"refreshToken": refresh})),
        )
        .await
        .status();
    assert!(out.is_success(), "{out}");
    assert_eq!(a.get("/api/v3/auth/whoami", Some(&token)).await, 401);
    eventually(
        "b refuses the ended token",
        Duration::from_secs(10),
        || async { b.get("/api/v3/auth/whoami", Some(&token)).await == 401 },
    )
    .await;
}
