//! A real OPC UA peer: asyncua (`tests/peers/opcua_server.py`, its own process), with the
//! address space that script documents. `scripts/setup.sh --test` installs its interpreter.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use base64::Engine as _;
use serde_json::Value;

use crate::free_port;

fn python() -> PathBuf {
    crate::peer("asyncua/bin/python")
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers/opcua_server.py")
}

/// An asyncua server, killed on drop.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Server {
    /// A server on a free port with `security` (`none`, `sign`, `encrypt`, comma-separated),
    /// its certificate kept in `dir` (so a restart on the same `dir` presents the same one).
    pub fn start(dir: &Path, security: &str) -> Self {
        Self::start_on(free_port(), dir, security)
    }

    pub fn start_on(port: u16, dir: &Path, security: &str) -> Self {
        Self::start_with(port, dir, security, &[])
    }

    /// [`Server::start_on`] with more of the script's `serve` options (`--user NAME:PASSWORD`,
    /// `--certificates`, `--no-anonymous`, ...).
    pub fn start_with(port: u16, dir: &Path, security: &str, more: &[&str]) -> Self {
        let kept = dir.to_path_buf();
        let dir = dir.to_string_lossy();
        let port_text = port.to_string();
        let mut args = vec![
            "serve",
            "--port",
            &port_text,
            "--dir",
            &dir,
            "--security",
            security,
        ];
        args.extend_from_slice(more);
        let (child, _) = crate::spawn_peer(&python(), &script(), &args, "the asyncua server");
        Self {
            child: Some(child),
            port,
            dir: kept,
        }
    }

    /// `opc.tcp://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("opc.tcp://127.0.0.1:{}/", self.port)
    }

    /// The server's certificate, PEM (made at its first start with a secure policy).
    pub fn cert_pem(&self) -> String {
        let der = std::fs::read(self.dir.join("server.der")).expect("the server's certificate");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }

    /// Kills the server (kill -9).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A node's value as an independent asyncua client reads it: `{"value", "type"}`.
    pub fn read(&self, node: &str) -> Value {
        let out = self.client(&["read", "--node", node]);
        serde_json::from_slice(&out).expect("client output")
    }

    /// Writes `value` (JSON, or the text of a String) to a node as an independent asyncua
    /// client, as the OPC UA built-in type `variant_type` (`Int16`, `Double`, ...).
    pub fn write(&self, node: &str, variant_type: &str, value: &str) {
        self.client(&[
            "write",
            "--node",
            node,
            "--type",
            variant_type,
            "--value",
            value,
        ]);
    }

    /// Runs a client subcommand of the peer against this server; its stdout.
    fn client(&self, args: &[&str]) -> Vec<u8> {
        let url = self.url();
        let out = Command::new(python())
            .arg(script())
            .arg(args[0])
            .args(["--url", &url])
            .args(&args[1..])
            .output()
            .expect("the asyncua client runs");
        assert!(
            out.status.success(),
            "the asyncua client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
