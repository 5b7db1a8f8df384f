//! A real MQTT broker for tests: mosquitto (Debian package `mosquitto`, which
//! `scripts/test.sh` installs) on a free loopback port, with persistence in its own
//! temporary dir so a graceful restart keeps sessions and their queued messages.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running mosquitto; killed when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker that accepts anonymous clients on loopback.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let conf = dir.path().join("mosquitto.conf");
        // Started as root, mosquitto would switch to its own user, which cannot write to
        // this dir: stay the user the tests run as.
        use std::os::unix::fs::MetadataExt as _;
        let as_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\n\
                 max_queued_messages 100000\npersistence true\npersistence_location {}/\n{}",
                dir.path().display(),
                if as_root { "user root\n" } else { "" }
            ),
        )
        .expect("mosquitto.conf");
        let mut me = Self {
            child: None,
            port,
            conf,
            _dir: dir,
        };
        me.run();
        me
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (Debian package mosquitto)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker gracefully (SIGTERM): it saves its sessions and queued messages.
    pub fn stop(&mut self) {
        crate::terminate(self.child.take());
    }

    /// Kills the broker (SIGKILL): what it held only in memory is gone.
    pub fn kill(&mut self) {
        crate::kill(self.child.take());
    }

    /// Starts the broker again on the same port, with what it saved.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Starts a stopped broker again on the same port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker still runs");
        self.run();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
