//! The [`Driver`](outpost_device_sdk::Driver): a device's resources read in planned batches, written by SET commands.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outpost_contracts::metadata::Device;
use outpost_device_sdk::{CommandValue, DeviceChange, DeviceRef, Driver, DriverError, ResourceRef};
use outpost_kit::Context;
use tokio_modbus::ExceptionCode;

use crate::client::{CallError, Pool, Session};
use crate::plan::Span;
use crate::point::{Point, Raw, Table};
use crate::{client, codec, endpoint, plan, point};

pub use crate::config::ModbusConfig;

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "device-modbus";

pub type Config = outpost_device_sdk::Config<ModbusConfig>;

/// The Modbus driver.
pub struct Modbus {
    cfg: ModbusConfig,
    pool: Pool,
    values_read: String,
    /// Devices whose batched reads must not bridge gaps (a gap held an address they lack).
    no_gaps: Mutex<HashSet<String>>,
}

/// What one read request returned.
enum Data {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

fn exception_text(code: ExceptionCode) -> String {
    let n = u8::from(code);
    let what = match code {
        ExceptionCode::IllegalFunction => "illegal function",
        ExceptionCode::IllegalDataAddress => "illegal data address",
        ExceptionCode::IllegalDataValue => "illegal data value",
        ExceptionCode::ServerDeviceFailure => "server device failure",
        ExceptionCode::Acknowledge => "acknowledge",
        ExceptionCode::ServerDeviceBusy => "server device busy",
        ExceptionCode::MemoryParityError => "memory parity error",
        ExceptionCode::GatewayPathUnavailable => "gateway path unavailable",
        ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond",
        ExceptionCode::Custom(_) => "unknown exception",
    };
    format!("Modbus exception {n} ({what})")
}

/// A call error as the SDK sees it, saying which resource it concerns.
fn driver_error(what: &str, e: CallError) -> DriverError {
    match e {
        // The gateway answered, but the device behind it did not.
        CallError::Exception(
            code @ (ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice),
        ) => DriverError::Unreachable(format!("{what}: {}", exception_text(code))),
        CallError::Exception(code) => {
            DriverError::Device(format!("{what}: {}", exception_text(code)))
        }
        CallError::Unreachable(why) => DriverError::Unreachable(why),
        CallError::Invalid(why) => DriverError::Invalid(why),
    }
}

fn span_of(p: &Point) -> Span {
    Span {
        table: p.table,
        start: p.address,
        count: p.count(),
    }
}

async fn read_span(s: &mut Session<'_>, span: &Span) -> Result<Data, CallError> {
    match span.table {
        Table::HoldingRegisters | Table::InputRegisters => s
            .read_registers(span.table == Table::InputRegisters, span.start, span.count)
            .await
            .map(Data::Words),
        Table::Coils | Table::DiscreteInputs => s
            .read_bits(span.table == Table::DiscreteInputs, span.start, span.count)
            .await
            .map(Data::Bits),
    }
}

fn decode(p: &Point, data: &Data, offset: u16) -> Result<CommandValue, String> {
    let at = usize::from(offset);
    match data {
        Data::Words(w) => {
            let words = w
                .get(at..at + usize::from(p.count()))
                .ok_or("the device answered fewer registers than asked")?;
            codec::decode_registers(p, words)
        }
        Data::Bits(b) => b
            .get(at)
            .map(|on| codec::decode_bit(p, *on))
            .ok_or_else(|| "the device answered fewer bits than asked".to_string()),
    }
}

/// One write request: consecutive values of one table merged.
#[derive(Debug)]
enum Write {
    Registers {
        start: u16,
        words: Vec<u16>,
    },
    Coils {
        start: u16,
        bits: Vec<bool>,
    },
    /// A bit of a holding register: read, change, write back.
    Bit {
        point: Point,
        on: bool,
    },
}

/// Most registers and coils one write may carry (function codes 16 and 15).
const MAX_WRITE_REGISTERS: usize = 123;
const MAX_WRITE_COILS: usize = 1968;

/// Merges writes to consecutive addresses into one request each, in address order.
fn merge_writes(mut items: Vec<Write>) -> Vec<Write> {
    let key = |w: &Write| match w {
        Write::Coils { start, .. } => (0, *start),
        Write::Registers { start, .. } => (1, *start),
        Write::Bit { point, .. } => (2, point.address),
    };
    items.sort_by_key(key);
    let mut out: Vec<Write> = Vec::with_capacity(items.len());
    for w in items {
        let merged = match (out.last_mut(), &w) {
            (
                Some(Write::Registers { start, words }),
                Write::Registers {
                    start: s2,
                    words: w2,
                },
            ) if usize::from(*start) + words.len() == usize::from(*s2)
                && words.len() + w2.len() <= MAX_WRITE_REGISTERS =>
            {
                words.extend_from_slice(w2);
                true
            }
            (
                Some(Write::Coils { start, bits }),
                Write::Coils {
                    start: s2,
                    bits: b2,
                },
            ) if usize::from(*start) + bits.len() == usize::from(*s2)
                && bits.len() + b2.len() <= MAX_WRITE_COILS =>
            {
                bits.extend_from_slice(b2);
                true
            }
            _ => false,
        };
        if !merged {
            out.push(w);
        }
    }
    out
}

impl Modbus {
    pub fn new(cfg: ModbusConfig, ctx: &Context) -> Self {
        let pool = Pool::new(
            Duration::from_millis(cfg.reconnect_backoff_min_ms),
            Duration::from_millis(cfg.reconnect_backoff_max_ms),
            client::Metrics {
                requests: ctx.metric("requests_total"),
                errors: ctx.metric("request_errors_total"),
                connects: ctx.metric("connections_opened_total"),
            },
        );
        Self {
            cfg,
            pool,
            values_read: ctx.metric("values_read_total"),
            no_gaps: Mutex::default(),
        }
    }

    fn no_gaps(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.no_gaps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn endpoint(&self, d: &DeviceRef) -> Result<endpoint::Endpoint, DriverError> {
        endpoint::parse(&d.device.protocols, &self.cfg)
            .map_err(|e| DriverError::Invalid(format!("device '{}': {e}", d.name())))
    }

    fn points(resources: &[ResourceRef]) -> Result<Vec<Point>, DriverError> {
        resources
            .iter()
            .map(|r| {
                point::parse(&r.resource)
                    .map_err(|e| DriverError::Invalid(format!("resource '{}': {e}", r.name())))
            })
            .collect()
    }
}

/// `resource 'X' at HOLDING_REGISTERS 9000 (1 register)`, for error messages.
fn about(r: &ResourceRef, p: &Point) -> String {
    format!("resource '{}' at {}", r.name(), p.describe())
}

#[async_trait]
impl Driver for Modbus {
    async fn read(
        &self,
        device: &DeviceRef,
        resources: &[ResourceRef],
    ) -> Result<Vec<CommandValue>, DriverError> {
        let ep = self.endpoint(device)?;
        let points = Self::points(resources)?;
        let spans: Vec<Span> = points.iter().map(span_of).collect();
        let mut limits = self.cfg.limits();
        if self.no_gaps().contains(device.name()) {
            limits.max_gap_registers = 0;
            limits.max_gap_bits = 0;
        }
        let plan = plan::plan(&spans, &limits)
            .map_err(|e| DriverError::Invalid(format!("device '{}': {e}", device.name())))?;
        let mut session = self
            .pool
            .session(&ep)
            .await
            .map_err(|e| driver_error(&format!("device '{}'", device.name()), e))?;
        let mut values: Vec<Option<CommandValue>> = vec![None; points.len()];
        for (i, span) in plan.reads.iter().enumerate() {
            let members = plan.points_of(i);
            let data = match read_span(&mut session, span).await {
                Ok(data) => Some(data),
                Err(CallError::Exception(code))
                    if members.len() > 1
                        && !matches!(
                            code,
                            ExceptionCode::GatewayPathUnavailable
                                | ExceptionCode::GatewayTargetDevice
                        ) =>
                {
                    // The batched range spans something the device refuses: read the
                    // resources one by one, and no longer bridge gaps on this device.
                    tracing::debug!(device = device.name(), table = span.table.name(), start = span.start, count = span.count, error = %exception_text(code), "batched read refused; reading its resources one by one");
                    self.no_gaps().insert(device.name().to_string());
                    None
                }
                Err(e) => {
                    let what = match members.as_slice() {
                        [one] => about(&resources[*one], &points[*one]),
                        _ => format!(
                            "device '{}', {} {} from {}",
                            device.name(),
                            span.count,
                            span.table.unit(span.count),
                            span.start
                        ),
                    };
                    return Err(driver_error(&what, e));
                }
            };
            for m in members {
                let (p, r) = (&points[m], &resources[m]);
                let v = match &data {
                    Some(d) => decode(p, d, plan.slots[m].1),
                    None => {
                        let one = read_span(&mut session, &span_of(p))
                            .await
                            .map_err(|e| driver_error(&about(r, p), e))?;
                        decode(p, &one, 0)
                    }
                }
                .map_err(|e| DriverError::Device(format!("{}: {e}", about(r, p))))?;
                values[m] = Some(v);
            }
        }
        metrics::counter!(self.values_read.clone()).increment(points.len() as u64);
        values
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| DriverError::Device("a value was not read".into()))
    }

    async fn write(
        &self,
        device: &DeviceRef,
        values: &[(ResourceRef, CommandValue)],
    ) -> Result<(), DriverError> {
        let ep = self.endpoint(device)?;
        let mut items = Vec::with_capacity(values.len());
        for (r, v) in values {
            let p = point::parse(&r.resource)
                .map_err(|e| DriverError::Invalid(format!("resource '{}': {e}", r.name())))?;
            if !p.table.writable() {
                return Err(DriverError::Invalid(format!(
                    "resource '{}' is in {}, which cannot be written",
                    r.name(),
                    p.table.name()
                )));
            }
            let bad = |e: String| DriverError::Invalid(format!("resource '{}': {e}", r.name()));
            items.push(match (p.table, p.raw) {
                (Table::Coils, _) => Write::Coils {
                    start: p.address,
                    bits: vec![codec::encode_bit(v).map_err(bad)?],
                },
                (_, Raw::Bit(_)) => Write::Bit {
                    on: codec::encode_bit(v).map_err(bad)?,
                    point: p,
                },
                _ => Write::Registers {
                    start: p.address,
                    words: codec::encode_registers(&p, v).map_err(bad)?,
                },
            });
        }
        let what = format!("device '{}'", device.name());
        let mut session = self
            .pool
            .session(&ep)
            .await
            .map_err(|e| driver_error(&what, e))?;
        for w in merge_writes(items) {
            let r = match w {
                Write::Registers { start, words } => {
                    let n = words.len();
                    session.write_registers(start, words).await.map_err(|e| {
                        driver_error(&format!("{what}, writing {n} registers at {start}"), e)
                    })
                }
                Write::Coils { start, bits } => {
                    let n = bits.len();
                    session.write_coils(start, bits).await.map_err(|e| {
                        driver_error(&format!("{what}, writing {n} coils at {start}"), e)
                    })
                }
                Write::Bit { point, on } => {
                    let at = format!("{what}, writing {}", point.describe());
                    let cur = session
                        .read_registers(false, point.address, 1)
                        .await
                        .map_err(|e| driver_error(&at, e))?;
                    let reg = cur.first().copied().unwrap_or(0);
                    session
                        .write_registers(point.address, vec![codec::set_bit(&point, reg, on)])
                        .await
                        .map_err(|e| driver_error(&at, e))
                }
            };
            r?;
        }
        Ok(())
    }

    fn validate(&self, device: &Device) -> Result<(), String> {
        endpoint::parse(&device.protocols, &self.cfg).map(drop)
    }

    async fn device_changed(&self, change: DeviceChange) {
        let name = match &change {
            DeviceChange::Added(_) => return,
            DeviceChange::Updated(d) => d.name().to_string(),
            DeviceChange::Removed(d) => d.name.clone(),
        };
        self.no_gaps().remove(&name);
    }

    async fn stop(&self) {
        self.pool.close_all();
    }
}

/// The service, as the node runs it.
pub type DeviceModbus = outpost_device_sdk::Adapter<ModbusConfig>;

/// The Modbus driver, with its connections' idle sweep running while the service runs.
pub(crate) fn driver(start: &outpost_kit::Start<Config>) -> Arc<dyn Driver> {
    let driver = Arc::new(Modbus::new(start.cfg.driver.clone(), &start.ctx));
    let weak = Arc::downgrade(&driver);
    let period = start.cfg.driver.idle_timeout().min(Duration::from_secs(1));
    start.ctx.tasks.spawn(
        "idle-connections",
        outpost_kit::Stage::Background,
        move |stop| async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.wait() => return,
                    _ = tick.tick() => {}
                }
                match weak.upgrade() {
                    Some(d) => d.pool.close_idle(),
                    None => return,
                }
            }
        },
    );
    driver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_writes_become_one_request() {
        let w = merge_writes(vec![
            Write::Registers {
                start: 12,
                words: vec![3],
            },
            Write::Registers {
                start: 10,
                words: vec![1, 2],
            },
            Write::Coils {
                start: 5,
                bits: vec![true],
            },
            Write::Coils {
                start: 4,
                bits: vec![false],
            },
            Write::Registers {
                start: 20,
                words: vec![9],
            },
        ]);
        let shown: Vec<String> = w.iter().map(|w| format!("{w:?}")).collect();
        assert_eq!(
            shown,
            [
                "Coils { start: 4, bits: [false, true] }",
                "Registers { start: 10, words: [1, 2, 3] }",
                "Registers { start: 20, words: [9] }",
            ]
        );
    }

    #[test]
    fn exceptions_are_device_errors_except_a_gateway_without_its_device() {
        assert!(matches!(
            driver_error("r", CallError::Exception(ExceptionCode::IllegalDataAddress)),
            DriverError::Device(m) if m == "r: Modbus exception 2 (illegal data address)"
        ));
        assert!(matches!(
            driver_error(
                "r",
                CallError::Exception(ExceptionCode::GatewayTargetDevice)
            ),
            DriverError::Unreachable(_)
        ));
        assert!(matches!(
            driver_error("r", CallError::Unreachable("x".into())),
            DriverError::Unreachable(_)
        ));
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod service_tests;
