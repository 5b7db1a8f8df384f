//! A real TPM 2.0 for tests: swtpm (Debian package `swtpm`, which `scripts/test.sh`
//! installs) serving raw TPM commands on a free loopback port, with its state (the owner
//! hierarchy's seed: what makes it this TPM and no other) in a directory of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running swtpm; killed when dropped, its state kept until then.
pub struct Swtpm {
    child: Option<Child>,
    pub port: u16,
    ctrl: u16,
    state: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Swtpm {
    /// A new TPM (a new seed: nothing sealed by another opens with it).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().to_path_buf();
        Self::with_state(&state, Some(dir))
    }

    /// The TPM whose state is in `state` (created there if empty).
    pub fn at(state: &Path) -> Self {
        Self::with_state(state, None)
    }

    fn with_state(state: &Path, dir: Option<tempfile::TempDir>) -> Self {
        // The TCG tools reach the control port at the command port + 1.
        let (port, ctrl) = (0..100)
            .map(|_| (crate::free_port(), crate::free_port()))
            .find(|(p, c)| *c == p + 1)
            .expect("two consecutive free ports");
        let mut me = Self {
            child: None,
            port,
            ctrl,
            state: state.to_path_buf(),
            _dir: dir,
        };
        me.run();
        me
    }

    /// The TCTI string of this TPM (`security.tpm`, and `-T` of `tpm2-tools`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Where its state lives.
    pub fn state(&self) -> &Path {
        &self.state
    }

    fn run(&mut self) {
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", self.state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.ctrl))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("swtpm must be installed (Debian package swtpm)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        // The control port answers once the TPM is up; the command port is left alone, as
        // swtpm serves one connection at a time.
        while std::net::TcpStream::connect(("127.0.0.1", self.ctrl)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the TPM (its state stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a `tpm2-tools` command (e.g. `tpm2_getcap`) against this TPM; its stdout.
    pub fn tool(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .args(args)
            .arg("-T")
            .arg(self.tcti())
            .output()
            .unwrap_or_else(|e| panic!("{program} (Debian package tpm2-tools): {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}
