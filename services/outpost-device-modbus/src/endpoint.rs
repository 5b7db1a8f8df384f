//! Where a device is reached: EdgeX's `modbus-tcp` and `modbus-rtu` protocol properties.
//!
//! | protocol | properties |
//! |---|---|
//! | `modbus-tcp` | `Address` (host), `Port` (502), `UnitID` (1), `Timeout`, `IdleTimeout` |
//! | `modbus-rtu` | `Address` (serial device), `BaudRate` (19200), `DataBits` (8), `StopBits` (1), `Parity` (`N`, `E`, `O`; N), `UnitID` (1), `Timeout`, `IdleTimeout` |
//!
//! Values may be strings or numbers, as EdgeX stores them; timeouts are seconds (fractions
//! allowed) and default to the driver's settings. Keys are matched regardless of case.

use std::time::Duration;

use outpost_contracts::metadata::{Map, Protocols};

use crate::config::ModbusConfig;
use crate::point::parse_uint;

pub const TCP: &str = "modbus-tcp";
pub const RTU: &str = "modbus-rtu";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// A serial line's settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial {
    pub path: String,
    pub baud_rate: u32,
    pub data_bits: u8,
    pub stop_bits: u8,
    pub parity: Parity,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp { host: String, port: u16 },
    Rtu(Serial),
}

impl Transport {
    /// The connection this transport uses: devices with the same key share it.
    pub fn key(&self) -> String {
        match self {
            Self::Tcp { host, port } if host.contains(':') => format!("tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => format!("tcp://{host}:{port}"),
            Self::Rtu(s) => format!("rtu://{}", s.path),
        }
    }
}

/// How to reach one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub transport: Transport,
    pub unit: u8,
    /// Connect and request timeout.
    pub timeout: Duration,
    /// Close the connection after this long unused.
    pub idle_timeout: Duration,
}

fn get<'a>(m: &'a Map, key: &str) -> Option<&'a serde_json::Value> {
    m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn text(m: &Map, key: &str) -> Option<String> {
    match get(m, key)? {
        serde_json::Value::String(s) if s.trim().is_empty() => None,
        serde_json::Value::String(s) => Some(s.trim().to_string()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

struct Reader<'a> {
    proto: &'static str,
    m: &'a Map,
    errs: Vec<String>,
}

impl Reader<'_> {
    fn uint(&mut self, key: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> u64 {
        match text(self.m, key) {
            None => default,
            Some(s) => match parse_uint(&s).filter(|v| range.contains(v)) {
                Some(v) => v,
                None => {
                    self.errs.push(format!(
                        "{key} '{s}' must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ));
                    default
                }
            },
        }
    }

    fn seconds(&mut self, key: &str, default: Duration) -> Duration {
        match text(self.m, key) {
            None => default,
            Some(s) => match s.parse::<f64>() {
                // EdgeX writes 0 for "use the default".
                Ok(0.0) => default,
                Ok(v) if v > 0.0 && v <= 86_400.0 => Duration::from_secs_f64(v),
                _ => {
                    self.errs.push(format!(
                        "{key} '{s}' must be a number of seconds from 0 to 86400"
                    ));
                    default
                }
            },
        }
    }

    fn address(&mut self, what: &str) -> String {
        match text(self.m, "Address") {
            Some(a) => a,
            None => {
                self.errs.push(format!("Address ({what}) is missing"));
                String::new()
            }
        }
    }

    fn finish<T>(self, v: T) -> Result<T, String> {
        if self.errs.is_empty() {
            Ok(v)
        } else {
            Err(format!("{}: {}", self.proto, self.errs.join("; ")))
        }
    }
}

fn unit(r: &mut Reader<'_>) -> u8 {
    u8::try_from(r.uint("UnitID", 1, 0..=255)).unwrap_or(1)
}

/// The endpoint of a device from its protocols, or every reason it has none.
pub fn parse(protocols: &Protocols, cfg: &ModbusConfig) -> Result<Endpoint, String> {
    let find = |name: &str| {
        protocols
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let (tcp, rtu) = (find(TCP), find(RTU));
    match (tcp, rtu) {
        (Some(_), Some(_)) => Err(format!(
            "a device has either a '{TCP}' or a '{RTU}' protocol, not both"
        )),
        (None, None) => Err(format!(
            "a Modbus device needs a '{TCP}' or a '{RTU}' protocol (has: {})",
            if protocols.is_empty() {
                "none".to_string()
            } else {
                protocols.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        )),
        (Some(m), None) => {
            let mut r = Reader {
                proto: TCP,
                m,
                errs: Vec::new(),
            };
            let host = r.address("host name or IP address");
            // One colon is `host:port`; IPv6 addresses have more.
            if host.contains('/')
                || host.contains(char::is_whitespace)
                || host.matches(':').count() == 1
            {
                r.errs.push(format!(
                    "Address '{host}' must be a host name or IP address (the port goes in Port)"
                ));
            }
            let port = u16::try_from(r.uint("Port", 502, 1..=65_535)).unwrap_or(502);
            let unit = unit(&mut r);
            let timeout = r.seconds("Timeout", cfg.timeout());
            let idle_timeout = r.seconds("IdleTimeout", cfg.idle_timeout());
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            r.finish(Endpoint {
                transport: Transport::Tcp { host, port },
                unit,
                timeout,
                idle_timeout,
            })
        }
        (None, Some(m)) => {
            let mut r = Reader {
                proto: RTU,
                m,
                errs: Vec::new(),
            };
            let path = r.address("serial device, e.g. /dev/ttyUSB0");
            if !path.is_empty() && !path.starts_with('/') {
                r.errs.push(format!(
                    "Address '{path}' must be the path of a serial device"
                ));
            }
            let baud_rate =
                u32::try_from(r.uint("BaudRate", 19_200, 50..=4_000_000)).unwrap_or(19_200);
            let data_bits = u8::try_from(r.uint("DataBits", 8, 5..=8)).unwrap_or(8);
            let stop_bits = u8::try_from(r.uint("StopBits", 1, 1..=2)).unwrap_or(1);
            let parity = match text(m, "Parity").map(|s| s.to_ascii_uppercase()) {
                None => Parity::None,
                Some(p) => match p.as_str() {
                    "N" | "NONE" => Parity::None,
                    "E" | "EVEN" => Parity::Even,
                    "O" | "ODD" => Parity::Odd,
                    _ => {
                        r.errs.push(format!(
                            "Parity '{p}' must be N (none), E (even) or O (odd)"
                        ));
                        Parity::None
                    }
                },
            };
            let unit = unit(&mut r);
            let timeout = r.seconds("Timeout", cfg.timeout());
            let idle_timeout = r.seconds("IdleTimeout", cfg.idle_timeout());
            r.finish(Endpoint {
                transport: Transport::Rtu(Serial {
                    path,
                    baud_rate,
                    data_bits,
                    stop_bits,
                    parity,
                }),
                unit,
                timeout,
                idle_timeout,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn protocols(v: serde_json::Value) -> Protocols {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn edgex_protocol_properties_as_strings_or_numbers() {
        let cfg = ModbusConfig::default();
        let e = parse(
            &protocols(json!({"modbus-tcp": {"Address": "10.0.0.5", "Port": "1502", "UnitID": "7", "Timeout": "2", "IdleTimeout": 0}})),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            e.transport,
            Transport::Tcp {
                host: "10.0.0.5".into(),
                port: 1502
            }
        );
        assert_eq!(
            (e.unit, e.timeout, e.idle_timeout),
            (7, Duration::from_secs(2), cfg.idle_timeout())
        );
        assert_eq!(e.transport.key(), "tcp://10.0.0.5:1502");
        let e = parse(&protocols(json!({"modbus-tcp": {"Address": "plc.local", "Port": 502, "unitId": 0, "timeout": 0.5}})), &cfg).unwrap();
        assert_eq!((e.unit, e.timeout), (0, Duration::from_millis(500)));
        let e = parse(&protocols(json!({"modbus-tcp": {"Address": "::1"}})), &cfg).unwrap();
        assert_eq!(e.transport.key(), "tcp://[::1]:502");
        let e = parse(
            &protocols(json!({"modbus-rtu": {"Address": "/dev/ttyUSB0", "BaudRate": 9600, "DataBits": "8", "StopBits": "2", "Parity": "E", "UnitID": 3}})),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            e.transport,
            Transport::Rtu(Serial {
                path: "/dev/ttyUSB0".into(),
                baud_rate: 9600,
                data_bits: 8,
                stop_bits: 2,
                parity: Parity::Even
            })
        );
        assert_eq!(e.unit, 3);
    }

    #[test]
    fn every_problem_is_named() {
        let cfg = ModbusConfig::default();
        let e = parse(
            &protocols(
                json!({"modbus-tcp": {"Port": "99999", "UnitID": "300", "Timeout": "soon"}}),
            ),
            &cfg,
        )
        .unwrap_err();
        assert!(e.starts_with("modbus-tcp: Address"), "{e}");
        assert!(
            e.contains("Port '99999'")
                && e.contains("UnitID '300'")
                && e.contains("Timeout 'soon'"),
            "{e}"
        );
        let e = parse(
            &protocols(json!({"modbus-tcp": {"Address": "10.0.0.5:502"}})),
            &cfg,
        )
        .unwrap_err();
        assert!(e.contains("the port goes in Port"), "{e}");
        let e = parse(
            &protocols(json!({"modbus-tcp": {"Address": "tcp://x/y"}})),
            &cfg,
        )
        .unwrap_err();
        assert!(e.contains("host name or IP address"), "{e}");
        let e = parse(
            &protocols(json!({"modbus-rtu": {"Address": "ttyUSB0", "Parity": "X", "DataBits": 9}})),
            &cfg,
        )
        .unwrap_err();
        assert!(
            e.contains("path of a serial device")
                && e.contains("Parity 'X'")
                && e.contains("DataBits '9'"),
            "{e}"
        );
        let e = parse(&protocols(json!({"other": {"Address": "x"}})), &cfg).unwrap_err();
        assert!(
            e.contains("needs a 'modbus-tcp' or a 'modbus-rtu'") && e.contains("other"),
            "{e}"
        );
        let e = parse(
            &protocols(
                json!({"modbus-tcp": {"Address": "a"}, "modbus-rtu": {"Address": "/dev/x"}}),
            ),
            &cfg,
        )
        .unwrap_err();
        assert!(e.contains("not both"), "{e}");
    }
}
