//! Connections to Modbus devices: one per endpoint (host and port, or serial line), shared
//! by every device (unit) behind it, reused between reads.
//!
//! Invariants, per connection:
//! - Requests go one at a time: a [`Session`] holds the connection for a whole read or
//!   write, so the requests of one command are not interleaved with another device's.
//! - A connection that cannot be opened is not tried again before an exponential backoff
//!   (with jitter) has passed; until then every request to it fails at once as unreachable.
//! - A unit that does not answer in time is not asked again before its own backoff has
//!   passed, so a silent device behind a gateway costs the other units behind it one
//!   timeout per backoff period, not one per poll. The connection is reopened after the
//!   timeout (a late answer must not be taken for the next request's); a broken or confused
//!   connection is reopened too. Any answer (a Modbus exception is an answer) resets both
//!   backoffs.
//! - A request whose caller gave up half-way (the SDK's own timeout) may still be answered
//!   later, and that answer must not be taken for the next request's: a connection with a
//!   request in flight is dropped and opened anew before it is used again.
//! - Connections unused for the device's idle timeout are closed by [`Pool::close_idle`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_kit::backoff::Backoff;
use tokio::sync::OwnedMutexGuard;
use tokio_modbus::client::{Client as _, Context};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

use crate::endpoint::{Endpoint, Serial, Transport};

/// Why a request got no usable answer.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The device answered with a Modbus exception.
    Exception(ExceptionCode),
    /// No answer: cannot connect, timed out, connection broken, or waiting to reconnect.
    Unreachable(String),
    /// The request cannot be made as asked.
    Invalid(String),
}

/// Metric names (the service's prefix applied).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Requests sent, by `kind` (read, write).
    pub requests: String,
    /// Requests without a usable answer, by `reason` (exception, timeout, io, backoff).
    pub errors: String,
    /// Connections opened.
    pub connects: String,
}

/// When something that failed may be tried again.
struct Wait {
    backoff: Backoff,
    retry_at: Option<Instant>,
    why: String,
}

impl Wait {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            backoff: Backoff::new(min, max),
            retry_at: None,
            why: String::new(),
        }
    }

    fn failed(&mut self, why: &str) {
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        why.clone_into(&mut self.why);
    }

    fn ok(&mut self) {
        self.backoff.reset();
        self.retry_at = None;
    }

    /// The error to answer while waiting.
    fn pending(&self) -> Option<String> {
        let at = self.retry_at?;
        let now = Instant::now();
        (at > now).then(|| {
            format!(
                "{}; next attempt in {} ms",
                self.why,
                (at - now).as_millis()
            )
        })
    }
}

struct State {
    ctx: Option<Context>,
    /// The settings of the open serial line.
    serial: Option<Serial>,
    in_flight: bool,
    /// Connecting failed.
    connect: Wait,
    /// Units that did not answer in time.
    units: HashMap<u8, Wait>,
    last_used: Instant,
    idle_timeout: Duration,
    backoff: (Duration, Duration),
}

impl State {
    fn drop_connection(&mut self) {
        self.ctx = None;
        self.serial = None;
        self.in_flight = false;
    }

    fn unit(&mut self, unit: u8) -> &mut Wait {
        let (min, max) = self.backoff;
        self.units
            .entry(unit)
            .or_insert_with(|| Wait::new(min, max))
    }

    fn answered(&mut self, unit: u8) {
        self.connect.ok();
        if let Some(w) = self.units.get_mut(&unit) {
            w.ok();
        }
    }
}

/// Every connection of the driver.
pub struct Pool {
    conns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<State>>>>,
    backoff_min: Duration,
    backoff_max: Duration,
    metrics: Metrics,
}

impl Pool {
    pub fn new(backoff_min: Duration, backoff_max: Duration, metrics: Metrics) -> Self {
        Self {
            conns: Mutex::default(),
            backoff_min,
            backoff_max,
            metrics,
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<State>>>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn error(&self, reason: &'static str) {
        metrics::counter!(self.metrics.errors.clone(), "reason" => reason).increment(1);
    }

    /// The connection of `ep`, connected, held until the session is dropped.
    pub async fn session(&self, ep: &Endpoint) -> Result<Session<'_>, CallError> {
        let key = ep.transport.key();
        let conn = {
            let mut conns = self.conns();
            Arc::clone(conns.entry(key.clone()).or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(State {
                    ctx: None,
                    serial: None,
                    in_flight: false,
                    connect: Wait::new(self.backoff_min, self.backoff_max),
                    units: HashMap::new(),
                    last_used: Instant::now(),
                    idle_timeout: ep.idle_timeout,
                    backoff: (self.backoff_min, self.backoff_max),
                }))
            }))
        };
        let mut st = conn.lock_owned().await;
        if st.in_flight {
            tracing::debug!(connection = %key, "a request was abandoned mid-way; reconnecting");
            st.drop_connection();
        }
        if st.ctx.is_some() && st.last_used.elapsed() > st.idle_timeout {
            st.drop_connection();
        }
        if let Transport::Rtu(s) = &ep.transport
            && let Some(open) = &st.serial
            && open != s
        {
            return Err(CallError::Invalid(format!(
                "serial line {} is open with other settings ({} baud, {} data bits, {} stop bits, {:?} parity) by another device",
                s.path, open.baud_rate, open.data_bits, open.stop_bits, open.parity
            )));
        }
        st.idle_timeout = ep.idle_timeout;
        if let Some(why) = st.units.get(&ep.unit).and_then(Wait::pending) {
            self.error("backoff");
            return Err(CallError::Unreachable(why));
        }
        if st.ctx.is_none() {
            if let Some(why) = st.connect.pending() {
                self.error("backoff");
                return Err(CallError::Unreachable(why));
            }
            match tokio::time::timeout(ep.timeout, connect(&ep.transport, ep.unit)).await {
                Ok(Ok(ctx)) => {
                    metrics::counter!(self.metrics.connects.clone()).increment(1);
                    tracing::debug!(connection = %key, "connected");
                    st.ctx = Some(ctx);
                    st.serial = match &ep.transport {
                        Transport::Rtu(s) => Some(s.clone()),
                        Transport::Tcp { .. } => None,
                    };
                    st.last_used = Instant::now();
                }
                Ok(Err(e)) => {
                    let why = format!("cannot connect to {key}: {e}");
                    st.connect.failed(&why);
                    self.error("io");
                    return Err(CallError::Unreachable(why));
                }
                Err(_) => {
                    let why = format!("cannot connect to {key}: no answer within {:?}", ep.timeout);
                    st.connect.failed(&why);
                    self.error("timeout");
                    return Err(CallError::Unreachable(why));
                }
            }
        }
        Ok(Session {
            pool: self,
            st,
            key,
            unit: ep.unit,
            timeout: ep.timeout,
        })
    }

    /// Closes connections unused for longer than their idle timeout.
    pub fn close_idle(&self) {
        let conns: Vec<_> = self.conns().values().cloned().collect();
        for c in conns {
            if let Ok(mut st) = c.try_lock()
                && st.ctx.is_some()
                && st.last_used.elapsed() > st.idle_timeout
            {
                st.drop_connection();
            }
        }
    }

    /// Closes every connection.
    pub fn close_all(&self) {
        let conns: Vec<_> = self.conns().drain().map(|(_, c)| c).collect();
        for c in conns {
            if let Ok(mut st) = c.try_lock() {
                st.drop_connection();
            }
        }
    }
}

async fn connect(t: &Transport, unit: u8) -> io::Result<Context> {
    match t {
        Transport::Tcp { host, port } => {
            let mut last = None;
            for addr in tokio::net::lookup_host((host.as_str(), *port)).await? {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(s) => {
                        // Requests are small and wait for their answer: send them at once.
                        s.set_nodelay(true)?;
                        return Ok(tokio_modbus::client::tcp::attach_slave(s, Slave(unit)));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
            }))
        }
        Transport::Rtu(s) => {
            let line = crate::serial::open(s)?;
            Ok(tokio_modbus::client::rtu::attach_slave(line, Slave(unit)))
        }
    }
}

/// A connection held for one read or write of one device.
pub struct Session<'a> {
    pool: &'a Pool,
    st: OwnedMutexGuard<State>,
    key: String,
    unit: u8,
    timeout: Duration,
}

impl Session<'_> {
    /// Sends one request and waits for its answer.
    pub async fn call(&mut self, req: Request<'static>) -> Result<Response, CallError> {
        let kind = match &req {
            Request::ReadCoils(..)
            | Request::ReadDiscreteInputs(..)
            | Request::ReadHoldingRegisters(..)
            | Request::ReadInputRegisters(..) => "read",
            _ => "write",
        };
        let unit = self.unit;
        let timeout = self.timeout;
        let st = &mut *self.st;
        let Some(ctx) = st.ctx.as_mut() else {
            return Err(CallError::Unreachable(format!(
                "{}: the connection was closed by an earlier error",
                self.key
            )));
        };
        ctx.set_slave(Slave(unit));
        st.in_flight = true;
        metrics::counter!(self.pool.metrics.requests.clone(), "kind" => kind).increment(1);
        let r = tokio::time::timeout(timeout, ctx.call(req)).await;
        st.in_flight = false;
        st.last_used = Instant::now();
        match r {
            Ok(Ok(Ok(resp))) => {
                st.answered(unit);
                Ok(resp)
            }
            Ok(Ok(Err(code))) => {
                st.answered(unit);
                self.pool.error("exception");
                Err(CallError::Exception(code))
            }
            Ok(Err(e)) => {
                let why = format!("{}: {e}", self.key);
                st.drop_connection();
                self.pool.error("io");
                Err(CallError::Unreachable(why))
            }
            Err(_) => {
                let why = format!(
                    "{}: unit {unit} did not answer within {timeout:?}",
                    self.key
                );
                st.drop_connection();
                st.unit(unit).failed(&why);
                self.pool.error("timeout");
                Err(CallError::Unreachable(why))
            }
        }
    }

    pub async fn read_registers(
        &mut self,
        input: bool,
        start: u16,
        count: u16,
    ) -> Result<Vec<u16>, CallError> {
        let req = if input {
            Request::ReadInputRegisters(start, count)
        } else {
            Request::ReadHoldingRegisters(start, count)
        };
        match self.call(req).await? {
            Response::ReadInputRegisters(w) | Response::ReadHoldingRegisters(w)
                if w.len() >= usize::from(count) =>
            {
                Ok(w)
            }
            other => Err(self.confused(&other)),
        }
    }

    pub async fn read_bits(
        &mut self,
        discrete: bool,
        start: u16,
        count: u16,
    ) -> Result<Vec<bool>, CallError> {
        let req = if discrete {
            Request::ReadDiscreteInputs(start, count)
        } else {
            Request::ReadCoils(start, count)
        };
        match self.call(req).await? {
            Response::ReadDiscreteInputs(mut b) | Response::ReadCoils(mut b)
                if b.len() >= usize::from(count) =>
            {
                b.truncate(usize::from(count));
                Ok(b)
            }
            other => Err(self.confused(&other)),
        }
    }

    pub async fn write_registers(&mut self, start: u16, words: Vec<u16>) -> Result<(), CallError> {
        let req = match words.as_slice() {
            [one] => Request::WriteSingleRegister(start, *one),
            _ => Request::WriteMultipleRegisters(start, Cow::Owned(words)),
        };
        self.call(req).await.map(drop)
    }

    pub async fn write_coils(&mut self, start: u16, bits: Vec<bool>) -> Result<(), CallError> {
        let req = match bits.as_slice() {
            [one] => Request::WriteSingleCoil(start, *one),
            _ => Request::WriteMultipleCoils(start, Cow::Owned(bits)),
        };
        self.call(req).await.map(drop)
    }

    /// An answer that does not fit the request: the connection is not trusted any more.
    fn confused(&mut self, got: &Response) -> CallError {
        let why = format!("{}: unexpected answer {got:?}", self.key);
        self.st.drop_connection();
        self.pool.error("io");
        CallError::Unreachable(why)
    }
}
