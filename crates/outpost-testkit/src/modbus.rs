//! A real Modbus peer: pymodbus (`tests/peers/modbus_server.py`, its own process), with the
//! register map that script documents. `scripts/setup.sh --test` installs its interpreter.

use std::path::PathBuf;
use std::process::{Child, Command};

use serde_json::{Value, json};

use crate::free_port;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The interpreter with pymodbus.
fn python() -> PathBuf {
    crate::peer("pymodbus/bin/python")
}

fn script() -> PathBuf {
    root().join("tests/peers/modbus_server.py")
}

/// What reading holding registers 0-13 as the script's types yields, in order (the
/// device command `Block` of the tests' PLC profile).
pub const BLOCK: [&str; 6] = [
    "-1234",
    "305419896",
    "2.15e+01",
    "2.35e+01",
    "-5000000000",
    "-5e-01",
];

fn res(name: &str, vt: &str, rw: &str, attrs: Value) -> Value {
    json!({"name": name, "properties": {"valueType": vt, "readWrite": rw}, "attributes": attrs})
}

fn hr(address: Value) -> Value {
    json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": address})
}

/// A PLC profile with EdgeX device-modbus attributes over the server's register map.
pub fn plc_profile() -> Value {
    let mut scaled = res(
        "ScaledTemp",
        "Float32",
        "R",
        json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": "5", "rawType": "Int16"}),
    );
    scaled["properties"]["scale"] = json!("0.1");
    scaled["properties"]["units"] = json!("C");
    let ops = |names: &[&str]| -> Value {
        names
            .iter()
            .map(|n| json!({"deviceResource": n}))
            .collect::<Vec<_>>()
            .into()
    };
    json!({
        "name": "ModbusPLC", "manufacturer": "Outpost", "model": "pymodbus",
        "deviceResources": [
            res("Int16Value", "Int16", "R", hr(json!(0))),
            res("Uint32Swapped", "Uint32", "R", json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": 1, "isWordSwap": true})),
            res("Float32Value", "Float32", "R", hr(json!(3))),
            scaled,
            res("Int64Value", "Int64", "R", hr(json!("6"))),
            res("Float64Value", "Float64", "R", hr(json!(10))),
            res("Name", "String", "R", json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": 20, "stringRegisterSize": 4})),
            res("Setpoint", "Uint16", "RW", hr(json!(30))),
            res("Level", "Float32", "RW", hr(json!(31))),
            res("Alarm", "Bool", "RW", hr(json!("40.3"))),
            res("InputCount", "Uint16", "R", json!({"primaryTable": "INPUT_REGISTERS", "startingAddress": 0})),
            res("Running", "Bool", "RW", json!({"primaryTable": "COILS", "startingAddress": 0})),
            res("DoorOpen", "Bool", "R", json!({"primaryTable": "DISCRETES_INPUT", "startingAddress": 0}))
        ],
        "deviceCommands": [
            {"name": "Block", "readWrite": "R", "resourceOperations":
                ops(&["Int16Value", "Uint32Swapped", "Float32Value", "ScaledTemp", "Int64Value", "Float64Value"])},
            {"name": "Telemetry", "readWrite": "R", "resourceOperations":
                ops(&["Int16Value", "Uint32Swapped", "Float32Value", "ScaledTemp", "Int64Value",
                      "Float64Value", "Name", "Alarm", "InputCount", "Running", "DoorOpen"])},
            {"name": "Settings", "readWrite": "RW", "resourceOperations": ops(&["Setpoint", "Level"])}
        ]
    })
}

/// A profile whose only resource is at an address the server does not have.
pub fn broken_profile() -> Value {
    json!({
        "name": "ModbusBroken",
        "deviceResources": [res("Missing", "Int16", "R", hr(json!(9000)))]
    })
}

/// The values of a command's answer (its event's readings), in order.
pub fn values(answer: &Value) -> Vec<&str> {
    answer["event"]["readings"]
        .as_array()
        .expect("readings")
        .iter()
        .filter_map(|r| r["value"].as_str())
        .collect()
}

/// A pymodbus server with the script's register map, killed on drop.
pub struct Server {
    child: Option<Child>,
    /// Its TCP port (0 for an RTU server).
    pub port: u16,
    /// What a TCP server received, a JSON object per line (see the script).
    log: Option<tempfile::NamedTempFile>,
    /// Connections [`Server::read`] made to it.
    own_reads: std::sync::atomic::AtomicUsize,
}

impl Server {
    /// A TCP server on a free port.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A TCP server on `port`, once it listens.
    pub fn start_on(port: u16) -> Self {
        let log = tempfile::NamedTempFile::new().expect("the server's log file");
        let path = log.path().to_string_lossy().into_owned();
        let (child, _) = spawn(&["serve", "--port", &port.to_string(), "--log", &path]);
        Self {
            child: Some(child),
            port,
            log: Some(log),
            own_reads: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Connections other clients than [`Server::read`] opened to it.
    pub fn connections_from_others(&self) -> usize {
        let opened = self
            .received()
            .iter()
            .filter(|r| r["connect"] == true)
            .count();
        opened.saturating_sub(self.own_reads.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// What the server received so far, in order: `{"connect": bool}` for each connection
    /// opened or closed, `{"fc", "address", "count"}` for each request.
    pub fn received(&self) -> Vec<Value> {
        let Some(log) = &self.log else {
            return Vec::new();
        };
        std::fs::read_to_string(log.path())
            .expect("the server's log")
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// An RTU server on a serial line of two linked pseudo-terminals; returns the path of
    /// the client's end.
    pub fn start_rtu() -> (Self, String) {
        let (child, path) = spawn(&["serve-rtu"]);
        let server = Self {
            child: Some(child),
            port: 0,
            log: None,
            own_reads: std::sync::atomic::AtomicUsize::new(0),
        };
        (server, path)
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Reads the server's own table as an independent Modbus client: `{"values": [...]}`.
    pub fn read(&self, table: &str, address: u16, count: u16) -> Value {
        self.own_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = Command::new(python())
            .arg(script())
            .args(["read", "--port", &self.port.to_string(), "--table", table])
            .args(["--address", &address.to_string()])
            .args(["--count", &count.to_string()])
            .output()
            .expect("the pymodbus client runs");
        assert!(
            out.status.success(),
            "the pymodbus client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("client output")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the script with `args` until it prints "ready ..."; returns what follows.
fn spawn(args: &[&str]) -> (Child, String) {
    crate::spawn_peer(&python(), &script(), args, "the pymodbus server")
}
