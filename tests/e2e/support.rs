//! Test fixtures: a real `outpost up` on free loopback ports with a temporary data dir,
//! reached only through its network interfaces, and real peers (mosquitto clients).

#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost");

pub use outpost_testkit::{Mosquitto, free_port, lines_from, lines_of};

/// Gives a file the operator made as root (an identity bundle) to the node's service user,
/// as an operator does for files the node is configured to read: a node started as root
/// runs as that user.
pub fn give_to_node_user(path: &Path) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let ids = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"outpost")).then(|| {
            (
                f[2].parse::<u32>().expect("uid"),
                f[3].parse::<u32>().expect("gid"),
            )
        })
    });
    // No such user yet: the first node made as root creates it; until then, nothing to do.
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to the node's user");
    }
}

/// A temporary directory the node's service user can pass through (mode 0711): a node
/// started as root runs as that user, and refuses a data dir it could not reach.
pub fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("open the temporary directory to the node's user");
    dir
}

/// Polls `check` until it holds or `timeout` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Ports of one node.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub keeper: u16,
    pub metadata: u16,
    pub data: u16,
    pub broker_http: u16,
    pub mqtt: u16,
    /// MQTT over TLS.
    pub mqtts: u16,
    pub command: u16,
    pub virtual_: u16,
    pub modbus: u16,
    pub device_mqtt: u16,
    pub rest: u16,
    pub opcua: u16,
    /// device-coap's HTTP port, and its CoAP endpoint (UDP).
    pub coap: u16,
    pub coap_udp: u16,
    /// The gateway's TLS listener and its plain HTTP side.
    pub gateway: u16,
    pub gateway_http: u16,
    pub export: u16,
    pub rules: u16,
    pub ota: u16,
    pub notifications: u16,
    pub scheduler: u16,
}

impl Ports {
    pub fn free() -> Self {
        Self {
            keeper: free_port(),
            metadata: free_port(),
            data: free_port(),
            broker_http: free_port(),
            mqtt: free_port(),
            mqtts: free_port(),
            command: free_port(),
            virtual_: free_port(),
            modbus: free_port(),
            opcua: free_port(),
            coap: free_port(),
            coap_udp: free_udp_port(),
            device_mqtt: free_port(),
            rest: free_port(),
            gateway: free_port(),
            gateway_http: free_port(),
            export: free_port(),
            rules: free_port(),
            ota: free_port(),
            notifications: free_port(),
            scheduler: free_port(),
        }
    }
}

/// A UDP port of 127.0.0.1 nothing listens on now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// A running edge node.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub ports: Ports,
    pub config: PathBuf,
    /// URLs of the services that register (the broker only when embedded).
    services: Vec<String>,
    child: Option<Child>,
    /// A client of the services: plain, or with mutual TLS between services, holding the
    /// node administrator's certificate (the node makes it when it starts).
    pub http: reqwest::Client,
    /// `http`, or `https` with mutual TLS between services.
    scheme: &'static str,
    /// Whether the services log in to the bus with the node's own credential (its bus
    /// token), not with a configured user of an external server.
    internal_bus_login: bool,
}

/// Test-friendly settings on top of the defaults (fast heartbeats and expiry), with
/// `extra` TOML merged over them.
pub fn config_text(p: &Ports, extra: &str) -> String {
    let mut base: toml::Table = base_config(p).parse().expect("base config");
    let extra: toml::Table = extra.parse().expect("extra config");
    merge(&mut base, extra);
    toml::to_string(&base).expect("config")
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn base_config(p: &Ports) -> String {
    let Ports {
        keeper,
        metadata,
        data,
        broker_http,
        mqtt,
        mqtts,
        command,
        virtual_,
        modbus,
        device_mqtt,
        rest,
        opcua,
        coap,
        coap_udp,
        gateway,
        gateway_http,
        export,
        rules,
        ota,
        notifications,
        scheduler,
    } = *p;
    // One line a section: every service on its port, with what makes a test node quick.
    format!(
        r#"
registry = {{ heartbeat_interval_ms = 200 }}
core_keeper = {{ port = {keeper}, remove_after_ms = 2000, sweep_interval_ms = 50 }}
core_metadata = {{ port = {metadata} }}
core_data = {{ port = {data} }}
core_command = {{ port = {command} }}
broker = {{ listen = "127.0.0.1:{mqtt}", tls_listen = "127.0.0.1:{mqtts}", port = {broker_http} }}
device_virtual = {{ port = {virtual_}, down_probe_interval_ms = 300 }}
device_modbus = {{ port = {modbus}, down_probe_interval_ms = 300 }}
device_mqtt = {{ port = {device_mqtt} }}
device_rest = {{ port = {rest} }}
device_opcua = {{ port = {opcua}, down_probe_interval_ms = 300 }}
device_coap = {{ port = {coap}, driver = {{ bind = "127.0.0.1", coap_port = {coap_udp} }} }}
export = {{ port = {export} }}
gateway = {{ listen = "127.0.0.1:{gateway}", port = {gateway_http} }}
rules = {{ port = {rules} }}
ota = {{ port = {ota} }}
support_notifications = {{ port = {notifications} }}
support_scheduler = {{ port = {scheduler} }}
supervisor = {{ stop_timeout_ms = 10000, restart_backoff_max_ms = 1000 }}
"#
    )
}

impl Node {
    /// Starts a node with test settings plus `extra` TOML.
    pub async fn start(extra: &str) -> Self {
        let mut node = Self::create(extra);
        node.launch().await;
        node
    }

    /// Prepares a node (config written, nothing started yet).
    pub fn create(extra: &str) -> Self {
        outpost_kit::http::install_tls_provider();
        let dir = tempdir();
        let ports = Ports::free();
        let config = dir.path().join("outpost.toml");
        let text = config_text(&ports, extra);
        let table = text.parse::<toml::Table>().ok();
        let enabled = |section: &str, default: bool| {
            table
                .as_ref()
                .and_then(|t| t.get(section)?.get("enabled")?.as_bool())
                .unwrap_or(default)
        };
        // On by default, as in the node's own defaults.
        let internal_tls = table
            .as_ref()
            .and_then(|t| t.get("security")?.get("internal_tls")?.as_bool())
            .unwrap_or(true);
        let scheme = if internal_tls { "https" } else { "http" };
        let url = |port: u16| format!("{scheme}://127.0.0.1:{port}");
        let mut services = vec![
            url(ports.keeper),
            url(ports.metadata),
            url(ports.data),
            url(ports.command),
        ];
        if enabled("broker", true) {
            services.push(url(ports.broker_http));
        }
        if enabled("gateway", true) {
            services.push(url(ports.gateway_http));
        }
        if enabled("support_notifications", true) {
            services.push(url(ports.notifications));
        }
        if enabled("support_scheduler", true) {
            services.push(url(ports.scheduler));
        }
        for (section, port) in [
            ("device_virtual", ports.virtual_),
            ("device_modbus", ports.modbus),
            ("device_mqtt", ports.device_mqtt),
            ("device_rest", ports.rest),
            ("device_opcua", ports.opcua),
            ("device_coap", ports.coap),
            ("export", ports.export),
            ("rules", ports.rules),
            ("ota", ports.ota),
        ] {
            if enabled(section, false) {
                services.push(url(port));
            }
        }
        let internal_bus_login = table
            .as_ref()
            .and_then(|t| t.get("bus")?.get("username")?.as_str())
            .is_none_or(str::is_empty);
        std::fs::write(&config, text).expect("write config");
        Self {
            dir,
            ports,
            config,
            services,
            internal_bus_login,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()
                .expect("http client"),
            scheme,
        }
    }

    /// How many services of this node register (the ones it runs).
    pub fn registering(&self) -> usize {
        self.services.len()
    }

    /// A client of the services like [`Node::http`], with connections of its own.
    pub fn fresh_client(&self) -> reqwest::Client {
        if self.scheme == "https" {
            self.admin_client()
        } else {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()
                .expect("http client")
        }
    }

    /// A client trusting the node CA that presents `identity` (certificate and key, PEM),
    /// or no certificate.
    pub fn tls_client(&self, identity: Option<(&str, &str)>) -> reqwest::Client {
        let ca = std::fs::read_to_string(self.data_dir().join("tls/ca.pem")).expect("node CA");
        let mut tls = outpost_pki::client_config(&ca, identity).expect("TLS configuration");
        // HTTP/1.1, as the tests' plain clients: a node stopping closes idle HTTP/1.1
        // connections at once, while an HTTP/2 one waits for the client's answer to its
        // GOAWAY, which a test blocked in `Node::stop` cannot give (up to 5 s a service).
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        https_client(tls)
    }

    /// A client holding the node administrator's certificate (mutual TLS between services).
    pub fn admin_client(&self) -> reqwest::Client {
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let data = self.data_dir();
        self.tls_client(Some((
            &read(data.join("tls/clients/admin.pem")),
            &read(data.join("secrets/clients/admin.key")),
        )))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The node's and its CLI's `XDG_RUNTIME_DIR`, where the node records itself for the
    /// CLI (its own, so test nodes never write the machine's `/run/outpost`).
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("xdg-runtime")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    /// Starts `outpost up` and waits until every service answers.
    pub async fn launch(&mut self) {
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(self.runtime_dir())
                .expect("the node's runtime dir");
        }
        let mut up = Command::new(BIN);
        up.arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("up")
            .env("XDG_RUNTIME_DIR", self.runtime_dir());
        self.child = Some(spawn_logged(&mut up, &self.log_path(), "outpost up"));
        if self.scheme == "https" {
            let admin = self.data_dir().join("tls/clients/admin.pem");
            eventually(
                "the administrator's certificate",
                Duration::from_secs(30),
                || {
                    let admin = admin.clone();
                    async move { admin.exists() }
                },
            )
            .await;
            self.http = self.admin_client();
        }
        if self.scheme == "https" && self.internal_bus_login {
            // Loopback takes no anonymous MQTT clients then: the tests' local tools use the
            // bus token, as the node's administrator would.
            let token = self.data_dir().join("secrets/bus.token");
            eventually("the bus token", Duration::from_secs(30), || {
                let token = token.clone();
                async move { token.exists() }
            })
            .await;
            if let Ok(t) = std::fs::read_to_string(&token) {
                bus_logins().insert(self.ports.mqtt, t.trim().to_string());
            }
        }
        let urls = self.services.clone();
        let http = self.http.clone();
        eventually("the node to start", Duration::from_secs(30), || {
            let (http, urls) = (http.clone(), urls.clone());
            async move {
                for u in &urls {
                    match http.get(format!("{u}/api/v3/ping")).send().await {
                        Ok(r) if r.status().is_success() => {}
                        _ => return false,
                    }
                }
                true
            }
        })
        .await;
        // Every service must have registered, too.
        let me = &*self;
        eventually(
            "all services to register",
            Duration::from_secs(10),
            || async {
                me.registrations()
                    .await
                    .iter()
                    .filter(|r| r["status"] == "UP")
                    .count()
                    == me.services.len()
            },
        )
        .await;
    }

    /// `http://127.0.0.1:<port>` (`https` with mutual TLS between services): a service of
    /// this node.
    pub fn url(&self, port: u16) -> String {
        format!("{}://127.0.0.1:{port}", self.scheme)
    }
    pub fn keeper(&self) -> String {
        self.url(self.ports.keeper)
    }
    pub fn metadata(&self) -> String {
        self.url(self.ports.metadata)
    }
    pub fn data(&self) -> String {
        self.url(self.ports.data)
    }
    pub fn command(&self) -> String {
        self.url(self.ports.command)
    }

    /// The pid of a supervised service.
    pub fn pid(&self, service: &str) -> u32 {
        std::fs::read_to_string(self.data_dir().join("run").join(format!("{service}.pid")))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    }

    pub fn supervisor_pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running node")
    }

    /// A device's operating state as core-metadata has it ("" when it cannot be read).
    pub async fn operating_state(&self, device: &str) -> String {
        let (_, v) = self
            .get(&format!("{}/api/v3/device/name/{device}", self.metadata()))
            .await;
        v["device"]["operatingState"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// How many readings of `device` core-data holds (0 when it cannot be read).
    pub async fn reading_count(&self, device: &str) -> u64 {
        let (_, v) = self
            .get(&format!(
                "{}/api/v3/reading/count/device/name/{device}",
                self.data()
            ))
            .await;
        v["count"].as_u64().unwrap_or(0)
    }

    /// GET; a service that cannot be reached answers status 0.
    pub async fn get(&self, url: &str) -> (u16, Value) {
        match self.http.get(url).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// GET with `headers`; the whole response.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("GET")
    }

    pub async fn post(&self, url: &str, body: &Value) -> (u16, Value) {
        let r = self.http.post(url).json(body).send().await.expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, url: &str, body: &Value) -> (u16, Value) {
        let r = self.http.put(url).json(body).send().await.expect("PUT");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn patch(&self, url: &str, body: &Value) -> (u16, Value) {
        let r = self.http.patch(url).json(body).send().await.expect("PATCH");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The URL of `device`'s `command` at core-command.
    pub fn device_command(&self, device: &str, command: &str) -> String {
        format!("{}/api/v3/device/name/{device}/{command}", self.command())
    }

    /// Adds the profiles of `request` in core-metadata; each must be created.
    pub async fn add_profiles(&self, request: &Value) {
        let url = format!("{}/api/v3/deviceprofile", self.metadata());
        let (s, v) = self.post(&url, request).await;
        assert!(
            s == 207
                && v.as_array()
                    .is_some_and(|a| a.iter().all(|p| p["statusCode"] == 201)),
            "{v}"
        );
    }

    /// Up to 10,000 readings of one resource of a device, newest first (in pages of
    /// 1,000: a limit beyond core-data's maximum is refused, as EdgeX refuses it).
    pub async fn readings(&self, device: &str, resource: &str) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < 10_000 {
            let (_, v) = self
                .get(&format!(
                    "{}/api/v3/reading/device/name/{device}/resourceName/{resource}?offset={}&limit=1000",
                    self.data(),
                    out.len()
                ))
                .await;
            let page = v["readings"].as_array().cloned().unwrap_or_default();
            let done = page.len() < 1000;
            out.extend(page);
            if done {
                break;
            }
        }
        out
    }

    /// Waits until device service `name` has registered itself in core-metadata (devices
    /// can refer to it from then on).
    pub async fn wait_device_service(&self, name: &str) {
        let url = format!("{}/api/v3/deviceservice/name/{name}", self.metadata());
        eventually(
            &format!("{name} in metadata"),
            Duration::from_secs(20),
            || async { self.get(&url).await.0 == 200 },
        )
        .await;
    }

    pub async fn registrations(&self) -> Vec<Value> {
        match self
            .http
            .get(format!("{}/api/v3/registry/all", self.keeper()))
            .send()
            .await
        {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["registrations"].as_array().cloned())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    pub async fn status_of(&self, service: &str) -> Option<String> {
        self.registrations()
            .await
            .into_iter()
            .find(|r| r["serviceId"] == service)
            .and_then(|r| r["status"].as_str().map(str::to_string))
    }

    /// Where the CLI keeps its gateway sessions in tests (one home per node).
    pub fn cli_home(&self) -> PathBuf {
        self.dir.path().join("cli-home")
    }

    /// Runs the CLI against this node; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_with(args, &[], None)
    }

    /// Runs the CLI against this node, which must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args);
        assert!(ok, "outpost {}: {out}{err}", args.join(" "));
        out
    }

    /// Runs the CLI against this node; returns (exit status, stdout, stderr).
    pub fn cli_code(&self, args: &[&str]) -> (Option<i32>, String, String) {
        run_cli_code(self.cli_command(args), None)
    }

    /// Runs the CLI with extra environment variables and, optionally, stdin.
    pub fn cli_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> (bool, String, String) {
        let mut cmd = self.cli_command(args);
        cmd.envs(env.iter().copied());
        run_cli(cmd, stdin)
    }

    /// The CLI pointed at this node, with `args`.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .env("XDG_CONFIG_HOME", self.cli_home())
            .env("XDG_RUNTIME_DIR", self.runtime_dir());
        cmd
    }

    /// A metric's value from a service's `/metrics`: the sum of every series of `name`, or
    /// of the series that carry every label of a selector such as `name{reason="bus"}`.
    /// Panics when the service exports no such series: a misspelt or vanished metric
    /// must fail the test, not read as 0.
    pub async fn metric(&self, base_url: &str, name: &str) -> f64 {
        self.metric_if_any(base_url, name)
            .await
            .unwrap_or_else(|| panic!("{base_url}/metrics has no series {name}"))
    }

    /// [`Node::metric`], or `None` while the service has no such series yet (a labelled
    /// counter appears with its first event).
    pub async fn metric_if_any(&self, base_url: &str, name: &str) -> Option<f64> {
        metric_in(&self.metrics_text(base_url).await, name)
    }

    /// A service's `/metrics`, as text.
    pub async fn metrics_text(&self, base_url: &str) -> String {
        let response = self
            .http
            .get(format!("{base_url}/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(response.status().as_u16(), 200, "{base_url}/metrics");
        response.text().await.expect("metrics text")
    }
    /// Kills the supervisor and every service with SIGKILL at once, the way a power cut
    /// or an OOM kill of the whole node would, and waits until they are gone.
    pub fn kill_all(&mut self) {
        let run = self.data_dir().join("run");
        let pids: Vec<u32> = std::fs::read_dir(&run)
            .map(|d| {
                d.filter_map(|e| {
                    let p = e.ok()?.path();
                    if p.extension()? != "pid" {
                        return None;
                    }
                    std::fs::read_to_string(p).ok()?.trim().parse().ok()
                })
                .collect()
            })
            .unwrap_or_default();
        // One kill(1) for all of them, the supervisor too, so none outlives the others.
        let mut child = self.child.take();
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .args(child.as_ref().map(|c| c.id().to_string()))
            .stderr(Stdio::null())
            .status();
        if let Some(c) = child.as_mut() {
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p))
        {
            assert!(
                Instant::now() < deadline,
                "services still alive after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the node with SIGTERM and checks it exits cleanly.
    pub fn stop(&mut self) {
        self.stop_then(|| {});
    }

    /// Sends the node SIGTERM, runs `then` (the stop is under way), and checks the node
    /// exits cleanly.
    pub fn stop_then(&mut self, then: impl FnOnce()) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "TERM");
        then();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait().expect("wait") {
                Some(status) => {
                    assert!(
                        status.success(),
                        "outpost up exited with {status}; log:\n{}",
                        self.log()
                    );
                    return;
                }
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    panic!("outpost up did not stop within 30 s; log:\n{}", self.log());
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until device-mqtt serves `device`: it takes device telemetry (its subscription
    /// acknowledged) and knows the device.
    pub async fn wait_mqtt_device(&self, device: &str) {
        self.wait_log(&["device-mqtt", "taking device telemetry"])
            .await;
        self.wait_log(&["device-mqtt", "device added", &format!("device={device}")])
            .await;
    }

    /// Waits until a line of the node's log holds every one of `parts` (a service saying
    /// it is ready for something, e.g. `["device-mqtt", "device added", "device=p1"]`).
    pub async fn wait_log(&self, parts: &[&str]) {
        eventually(
            &format!("a log line with {parts:?}"),
            outpost_testkit::WAIT,
            || async {
                self.log()
                    .lines()
                    .any(|l| parts.iter().all(|p| l.contains(p)))
            },
        )
        .await;
    }

    /// Every file under the data dir.
    pub fn data_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p, out);
                    } else {
                        out.push(p);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data_dir(), &mut out);
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The children notice the supervisor is gone (their stdin closes) and stop.
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("---- node log ----\n{}", self.log());
            }
        }
    }
}

/// A process paused with SIGSTOP and continued with SIGCONT when dropped: also when a check
/// fails before the test continues it, so no stopped process outlives its test (a stopped
/// service cannot notice that its supervisor is gone).
pub struct Paused(u32);

impl Paused {
    pub fn new(pid: u32) -> Self {
        signal(pid, "STOP");
        Self(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.0.to_string())
            .status();
    }
}

/// The sum of the series of `selector` (a metric name, optionally with `{label="value",..}`
/// that every counted series must carry) in a Prometheus text exposition; `None` when
/// no series matches.
pub fn metric_in(text: &str, selector: &str) -> Option<f64> {
    let (name, wanted) = match selector.split_once('{') {
        Some((n, labels)) => (n, labels.trim_end_matches('}')),
        None => (selector, ""),
    };
    let wanted: Vec<&str> = wanted.split(',').filter(|l| !l.is_empty()).collect();
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let have: Vec<&str> = labels.split(',').collect();
        if wanted.iter().all(|w| have.contains(w)) {
            let v: f64 = value.parse().expect("a metric value");
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// A spawned process killed and reaped when dropped, also when a check fails first, so
/// no peer outlives its test.
pub struct Spawned(pub Child);

impl std::ops::Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a signal with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid} failed");
}

/// The bus token of each running node with mutual TLS, by its plain MQTT port.
fn bus_logins() -> std::sync::MutexGuard<'static, std::collections::HashMap<u16, String>> {
    static LOGINS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<u16, String>>> =
        std::sync::OnceLock::new();
    LOGINS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// mosquitto arguments for the broker at `port` on loopback: the node's bus token when the
/// node takes no anonymous clients there.
pub fn bus_login(port: u16) -> Vec<String> {
    let mut a = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    if let Some(t) = bus_logins().get(&port) {
        a.extend(["-u".into(), "outpost".into(), "-P".into(), t.clone()]);
    }
    a
}

/// `program` (mosquitto_pub or mosquitto_sub) on the broker at `port` with QoS 1.
fn mosquitto_client(program: &str, port: u16) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(bus_login(port)).args(["-q", "1"]);
    cmd
}

/// Starts `cmd` (`what` names it) without stdin, its output appended to the file `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path, what: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"))
}

/// Runs `cmd` (`what` names it), which must succeed; its output.
pub fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A TLS client configuration that trusts only the node's CA (as the CLI does).
pub fn trusting(ca: &Path) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// An HTTP client (10 s timeout, no proxy) over `tls`.
pub fn https_client(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("client")
}

/// A real MQTT publisher: mosquitto_pub, one message per line of `lines`, QoS 1.
pub fn mosquitto_pub_lines(
    port: u16,
    topic: &str,
    lines: &[String],
    extra: &[&str],
) -> std::process::Output {
    let mut child = mosquitto_client("mosquitto_pub", port)
        .args(["-t", topic, "-l"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub must be installed (Debian package mosquitto-clients)");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for l in lines {
            writeln!(stdin, "{l}").expect("write to mosquitto_pub");
        }
    }
    child.wait_with_output().expect("mosquitto_pub")
}

/// A real MQTT subscriber: mosquitto_sub printing `topic payload` lines, stopped on drop.
/// [`MosquittoSub::start`] returns once the broker acknowledged the subscription, so what
/// is published afterwards must arrive.
pub struct MosquittoSub {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl MosquittoSub {
    /// Subscribes to `filter` on the node's broker at `port` on loopback.
    pub fn start(port: u16, filter: &str) -> Self {
        Self::with(&bus_login(port), filter)
    }

    /// Subscribes to `filter` with the connection arguments `connect` (host, port, TLS
    /// files, login) and returns once the broker acknowledged the subscription.
    pub fn with(connect: &[impl AsRef<std::ffi::OsStr>], filter: &str) -> Self {
        // Line-buffered (stdbuf), or the packet lines would wait in a pipe's buffer.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(connect)
            .args(["-q", "1", "-d", "-v", "-t", filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub must be installed (Debian package mosquitto-clients)");
        let raw = lines_of(&mut child);
        // With -d, mosquitto_sub reports each packet on a line of its own (`Client <id>
        // received SUBACK`, ...) and the granted QoS (`Subscribed (mid: 1): 1`) between
        // the messages: the SUBACK says it listens.
        let (tx, lines) = std::sync::mpsc::channel();
        let (subscribed, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in raw {
                if line.starts_with("Client ") || line.starts_with("Subscribed (mid:") {
                    if line.contains("received SUBACK") {
                        let _ = subscribed.send(());
                    }
                } else if tx.send(line).is_err() {
                    return;
                }
            }
        });
        assert!(
            ready.recv_timeout(outpost_testkit::WAIT).is_ok(),
            "mosquitto_sub did not subscribe to {filter}"
        );
        Self { child, lines }
    }

    /// Does `act` once and returns the first message the subscriber then receives as
    /// `(topic, payload)`; fails when none comes within `timeout`.
    pub fn first_after(&self, timeout: Duration, act: impl FnOnce()) -> (String, String) {
        act();
        self.next_line(timeout)
            .expect("mosquitto_sub received nothing")
    }
}

impl MosquittoSub {
    /// The next `(topic, payload)` line, if one comes within `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<(String, String)> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
        Some((topic.to_string(), payload.to_string()))
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message with mosquitto_pub.
pub fn mosquitto_pub(
    port: u16,
    topic: &str,
    message: &str,
    extra: &[&str],
) -> std::process::Output {
    mosquitto_client("mosquitto_pub", port)
        .args(["-t", topic, "-m", message])
        .args(extra)
        .output()
        .expect("mosquitto_pub must be installed (Debian package mosquitto-clients)")
}

pub const PROFILE_YAML: &str = r#"name: "Thermostat"
manufacturer: "Acme"
model: "T-1000"
labels: ["hvac"]
deviceResources:
  - name: "Temperature"
    properties: { valueType: "Float64", readWrite: "R", units: "C", minimum: -40, maximum: 125 }
  - name: "Humidity"
    properties: { valueType: "Uint8", readWrite: "R", units: "%" }
  - name: "Label"
    properties: { valueType: "String", readWrite: "R" }
"#;

/// A node's config with export on and `destinations`, each a `[[export.destinations]]`
/// table: its name, its kind, and the rest of its keys as TOML lines.
pub fn export_config(destinations: &[(&str, &str, String)]) -> String {
    let mut text = String::from("[export]\nenabled = true\n");
    for (name, kind, rest) in destinations {
        text += &format!("[[export.destinations]]\nname = \"{name}\"\nkind = \"{kind}\"\n{rest}\n");
    }
    text
}

/// A node's config that exports to the cloud destination `cloud`, enrolled with `identity`,
/// with the other keys of the destination in `settings` (TOML lines).
pub fn cloud_export(identity: &Path, settings: &str) -> String {
    let keys = format!("identity = \"{}\"\n{settings}", identity.display());
    export_config(&[("cloud", "cloud", keys)])
}

/// A node's config with the rules engine on (no lateness) and one pipeline, its keys in
/// `pipeline` (TOML lines).
pub fn rules_config(pipeline: &str) -> String {
    format!("[rules]\nenabled = true\nlateness_ms = 0\n[[rules.pipelines]]\n{pipeline}\n")
}

/// Whether the error message of the EdgeX answer `v` contains `what`.
pub fn message_has(v: &Value, what: &str) -> bool {
    v["message"].as_str().unwrap_or_default().contains(what)
}

/// A request adding profile `name` (by Acme, model `model`) with `resources`.
pub fn profile_request(name: &str, model: &str, resources: Value) -> Value {
    json!([{"apiVersion": "v3", "profile": {"name": name, "manufacturer": "Acme",
        "model": model, "deviceResources": resources}}])
}

/// Sets up a device service, the Thermostat profile and devices through the CLI.
pub fn provision(node: &Node, devices: &[&str]) {
    let profile = node.dir.path().join("thermostat.yaml");
    std::fs::write(&profile, PROFILE_YAML).expect("profile file");
    node.cli_ok(&[
        "device-service",
        "add",
        "device-mqtt",
        "--base-address",
        "http://127.0.0.1:1",
    ]);
    let (ok, out, err) = node.cli(&["profile", "apply", "-f", profile.to_str().expect("path")]);
    assert!(
        ok && out.contains("created device profile Thermostat"),
        "{out}{err}"
    );
    for d in devices {
        node.cli_ok(&[&["device", "add", "--name", d][..], &A_THERMOSTAT].concat());
    }
}

/// The CLI's arguments that make a device a Thermostat of device-mqtt labeled `e2e`.
pub const A_THERMOSTAT: [&str; 6] = [
    "--profile",
    "Thermostat",
    "--service",
    "device-mqtt",
    "--label",
    "e2e",
];

/// An EdgeX bus message (envelope + AddEventRequest) for `device`.
pub fn event_message(
    device: &str,
    origin: i64,
    readings: &[(&str, &str, &str)],
) -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let rs: Vec<Value> = readings
        .iter()
        .map(|(res, vt, v)| {
            json!({"id": uuid::Uuid::new_v4().to_string(), "deviceName": device, "profileName": "Thermostat",
                   "resourceName": res, "origin": origin, "valueType": vt, "value": v})
        })
        .collect();
    let msg = json!({"apiVersion": "v3", "receivedTopic": "", "correlationID": uuid::Uuid::new_v4().to_string(),
        "requestID": "", "errorCode": 0, "contentType": "application/json",
        "payload": {"apiVersion": "v3", "event": {"apiVersion": "v3", "id": id, "deviceName": device,
            "profileName": "Thermostat", "sourceName": "Temperature", "origin": origin, "readings": rs}}});
    (id, msg.to_string())
}

/// Provisions `device`, publishes `n` events of it ([`publish_readings`]) and waits until
/// core-data holds them; the URL of its event count.
pub async fn stored_readings(node: &Node, device: &str, n: i64, value: &str) -> String {
    provision(node, &[device]);
    publish_readings(node, device, n, value);
    let count = format!("{}/api/v3/event/count/device/name/{device}", node.data());
    eventually(
        &format!("{n} events stored"),
        Duration::from_secs(20),
        || async { node.get(&count).await.1["count"] == n },
    )
    .await;
    count
}

/// Publishes `n` events of one `Float64` reading `value` of `device` over MQTT (QoS 1, the
/// bus token), each acknowledged.
pub fn publish_readings(node: &Node, device: &str, n: i64, value: &str) {
    let base = now_nanos();
    publish_events(node, device, 0..n, |i| base + i, |_| value.to_string());
}

/// Publishes events `run` of `device` over MQTT (QoS 1, the bus token), each acknowledged:
/// event `i` has the origin `origin(i)` and one `Float64` reading `value(i)`.
pub fn publish_events(
    node: &Node,
    device: &str,
    run: std::ops::Range<i64>,
    origin: impl Fn(i64) -> i64,
    value: impl Fn(i64) -> String,
) {
    let lines: Vec<String> = run
        .map(|i| event_message(device, origin(i), &[("Temperature", "Float64", &value(i))]).1)
        .collect();
    let out = mosquitto_pub_lines(node.ports.mqtt, &event_topic(device), &lines, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn event_topic(device: &str) -> String {
    format!("edgex/events/device/device-mqtt/Thermostat/{device}/Temperature")
}

/// Origin timestamps near now, so time-range queries find them.
pub fn now_nanos() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos(),
    )
    .expect("nanos")
}

/// Runs a prepared CLI command without the environment's gateway settings (unless the
/// command sets them), feeding `stdin`;
/// returns (success, stdout, stderr).
pub fn run_cli(cmd: Command, stdin: Option<&str>) -> (bool, String, String) {
    let (code, out, err) = run_cli_code(cmd, stdin);
    (code == Some(0), out, err)
}

/// [`run_cli`] with the exit status (`None` when a signal ended it).
pub fn run_cli_code(mut cmd: Command, stdin: Option<&str>) -> (Option<i32>, String, String) {
    use std::io::Write as _;
    for var in ["OUTPOST_GATEWAY", "OUTPOST_CA", "OUTPOST_TOKEN"] {
        // Unless the test set it on purpose.
        if !cmd.get_envs().any(|(k, _)| k == var) {
            cmd.env_remove(var);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run outpost CLI");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.unwrap_or("").as_bytes());
    }
    let out = child.wait_with_output().expect("run outpost CLI");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Fails the test, loudly, when it does not run as root: it needs `what` (mounting a small
/// filesystem, network namespaces). Such a test is never skipped in silence; it belongs to
/// the nextest group `root` (`.config/nextest.toml`), and CI runs the suite as root.
pub fn needs_root(what: &str) {
    assert!(
        is_root(),
        "this test needs root for {what}: run the suite as root, as CI does (it is in the \
         test group 'root' of .config/nextest.toml)"
    );
}

/// A tmpfs mounted for the life of the value: a small disk that fills up.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`256k`, `2m`) at `dir` (created), private to its owner.
    pub fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs failed");
        Self(dir.to_path_buf())
    }

    /// Makes the filesystem `size` large, keeping what it holds: space comes back.
    pub fn grow(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount");
        assert!(st.success(), "remount tmpfs failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The lines a child prints on `out`, as they come.
pub fn line_channel(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A second instance of `service` of `node` (`outpost run SERVICE` with `node.instance` "b"
/// and `[<section>] port = port`), its stderr to `log` if given.
pub fn instance_b(
    node: &Node,
    service: &str,
    section: &str,
    port: u16,
    log: Option<&Path>,
) -> Spawned {
    instance(node, (service, section), "b", port, log)
}

/// Another instance of `service` (its configuration section `section`) named `name`, on
/// the node's configuration and data dir with its API on `port`; its log appended to `log`.
pub fn instance(
    node: &Node,
    (service, section): (&str, &str),
    name: &str,
    port: u16,
    log: Option<&Path>,
) -> Spawned {
    let stderr = match log {
        Some(l) => std::process::Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(l)
                .expect("log"),
        ),
        None => std::process::Stdio::null(),
    };
    Spawned(
        Command::new(BIN)
            .arg("--config")
            .arg(&node.config)
            .arg("--data-dir")
            .arg(node.data_dir())
            .args([
                "--set",
                &format!("{section}.port={port}"),
                "--set",
                &format!("node.instance=\"{name}\""),
            ])
            .args(["run", service])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{service}@{name}: {e}")),
    )
}
