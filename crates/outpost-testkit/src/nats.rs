//! A real NATS server with JetStream for tests: Debian's `nats-server` (which
//! `scripts/setup.sh --test` installs) on a free loopback port, TLS with a certificate from
//! a CA of its own and a password, its store in its own temporary dir so a restart keeps
//! streams, consumers and messages.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outpost_kit::config::BusConfig;

/// The user every test server knows.
pub const USER: &str = "outpost-test";

/// A running nats-server; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// A file holding the password of [`USER`].
    pub password_file: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream that takes [`USER`] over TLS only.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let paths = outpost_pki::Paths::new(dir.path());
        outpost_pki::ensure_server_cert(&paths, &["127.0.0.1".into(), "localhost".into()])
            .expect("server certificate");
        let mut secret = [0u8; 12];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .expect("randomness");
        let password: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, &password).expect("password file");
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\n\
                 jetstream {{ store_dir: \"{store}\" }}\n\
                 tls {{ cert_file: \"{cert}\", key_file: \"{key}\", timeout: 5 }}\n\
                 authorization {{ users = [ {{ user: \"{USER}\", password: \"{password}\" }} ] }}\n",
                store = dir.path().join("store").display(),
                cert = paths.cert.display(),
                key = paths.key.display(),
            ),
        )
        .expect("nats.conf");
        let mut me = Self {
            child: None,
            port,
            ca: paths.ca_cert,
            password_file,
            conf,
            log: dir.path().join("nats.log"),
            _dir: dir,
        };
        me.run();
        me
    }

    /// `tls://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// A bus configuration for this server: TLS verified against its CA, its password.
    pub fn bus_config(&self) -> BusConfig {
        BusConfig {
            url: self.url(),
            username: USER.into(),
            password_file: Some(self.password_file.clone()),
            ca_file: Some(self.ca.clone()),
            ..BusConfig::default()
        }
    }

    /// The same as a node's `[bus]` section.
    pub fn bus_toml(&self) -> String {
        format!(
            "[bus]\nurl = \"{}\"\nusername = \"{USER}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
            self.url(),
            self.password_file.display(),
            self.ca.display()
        )
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("nats-server must be installed (Debian package nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains("Server is ready") {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server gracefully (SIGTERM).
    pub fn stop(&mut self) {
        crate::terminate(self.child.take());
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        crate::kill(self.child.take());
    }

    /// Starts a stopped or killed server again on the same port, with its store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server still runs");
        // The log is read for readiness: start it afresh.
        let _ = std::fs::remove_file(&self.log);
        self.run();
    }

    /// The server's process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
