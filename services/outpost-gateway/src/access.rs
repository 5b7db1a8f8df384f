//! The access log: one JSON line per request, written to its own file off the request path.
//!
//! Each event loop formats its lines into a buffer of its own and hands it to a shared
//! buffer once it holds `LOCAL_AT` bytes, every second (the loop's housekeeping tick) and
//! when the loop stops; a writer thread moves the shared buffer to the file every
//! `FLUSH_EVERY`, or at once when it passes `FLUSH_AT` bytes, and rotates the file by size.
//! That keeps per-request cost to a formatted line, with no lock or memory shared between
//! the loops per request, and makes the log's write pattern a few large appends instead of
//! one write per request, as nginx's and Envoy's buffered access logs do. Lines are dropped
//! only if the disk cannot keep up and the shared buffer reaches `MAX_BUFFER`; drops are
//! counted (`gateway_access_log_dropped_total`) and reported in the node log, never silent.
//!
//! `gateway.access_log = "-"` sends the lines to the node log instead (as `access` events),
//! `""` turns the access log off.

use std::cell::RefCell;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

const FLUSH_EVERY: Duration = Duration::from_millis(500);
const FLUSH_AT: usize = 64 * 1024;
const MAX_BUFFER: usize = 8 * 1024 * 1024;
/// A loop hands its lines over once it holds this much.
const LOCAL_AT: usize = 16 * 1024;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    /// RFC 3339, milliseconds, UTC.
    pub time: Stamp,
    #[serde(rename = "requestId")]
    pub request_id: &'a str,
    pub peer: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub version: &'a str,
    pub status: u16,
    #[serde(rename = "elapsedUs")]
    pub elapsed_us: u64,
    pub identity: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    pub cache: &'a str,
}

impl Line<'_> {
    /// Appends the line as JSON and a newline: the same document `serde_json` makes of
    /// it, written field by field without the serializer's indirections.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let mut n = itoa::Buffer::new();
        buf.extend_from_slice(b"{\"time\":");
        json_str(buf, self.time.as_str());
        for (key, value) in [
            (&b",\"requestId\":"[..], self.request_id),
            (b",\"peer\":", self.peer),
            (b",\"method\":", self.method),
            (b",\"path\":", self.path),
            (b",\"version\":", self.version),
        ] {
            buf.extend_from_slice(key);
            json_str(buf, value);
        }
        buf.extend_from_slice(b",\"status\":");
        buf.extend_from_slice(n.format(self.status).as_bytes());
        buf.extend_from_slice(b",\"elapsedUs\":");
        buf.extend_from_slice(n.format(self.elapsed_us).as_bytes());
        for (key, value) in [
            (&b",\"identity\":"[..], self.identity),
            (b",\"route\":", self.route),
            (b",\"upstream\":", self.upstream),
            (b",\"cache\":", self.cache),
        ] {
            buf.extend_from_slice(key);
            json_str(buf, value);
        }
        buf.extend_from_slice(b"}\n");
    }
}

/// `s` as a JSON string: copied as is when nothing in it needs escaping (the usual case),
/// else escaped by `serde_json`.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else if serde_json::to_writer(&mut *buf, s).is_err() {
        buf.extend_from_slice(b"\"\"");
    }
}

/// A time as RFC 3339 with milliseconds (`2026-11-22T05:20:20.123Z`), formatted on the
/// stack.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    buf: [u8; 32],
    len: usize,
}

impl Stamp {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("-")
    }
}

impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Line<'_> {
    /// The current time; the part up to the second is formatted once per second and
    /// thread.
    pub fn now() -> Stamp {
        thread_local! {
            static SECOND: RefCell<(u64, Stamp)> = const {
                RefCell::new((u64::MAX, Stamp { buf: [0; 32], len: 0 }))
            };
        }
        let d = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, ms) = (d.as_secs(), d.subsec_millis());
        SECOND.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
                let full = humantime::format_rfc3339_seconds(t).to_string();
                let head = full.trim_end_matches('Z').as_bytes();
                // Room for `.mmmZ` after it.
                let len = head.len().min(32 - 5);
                c.1.buf[..len].copy_from_slice(&head[..len]);
                c.1.len = len;
                c.0 = secs;
            }
            let mut stamp = c.1;
            let tail = [
                b'.',
                b'0' + (ms / 100) as u8,
                b'0' + (ms / 10 % 10) as u8,
                b'0' + (ms % 10) as u8,
                b'Z',
            ];
            stamp.buf[stamp.len..stamp.len + 5].copy_from_slice(&tail);
            stamp.len += 5;
            stamp
        })
    }
}

/// Where access lines go.
pub struct AccessLog {
    sink: Sink,
}

enum Sink {
    Off,
    NodeLog,
    File(Arc<Shared>),
}

struct Shared {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    closed: AtomicBool,
    dropped: AtomicU64,
    dropped_metric: metrics::Counter,
}

/// Rotation: the file is renamed to `.1` (older ones shifted, up to `keep`) once it passes
/// `max_bytes`.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: usize,
}

impl AccessLog {
    pub fn off() -> Self {
        Self { sink: Sink::Off }
    }

    pub fn node_log() -> Self {
        Self {
            sink: Sink::NodeLog,
        }
    }

    /// Opens (creating) `path` and starts the writer thread.
    pub fn file(
        path: PathBuf,
        rotation: Rotation,
        dropped_metric: metrics::Counter,
    ) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            outpost_storage::ensure_private_dir(dir).map_err(std::io::Error::other)?;
        }
        let file = open(&path)?;
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(FLUSH_AT * 2)),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            dropped_metric,
        });
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(&s, &path, file, &rotation))?;
        Ok(Self {
            sink: Sink::File(shared),
        })
    }

    pub fn record(&self, line: &Line<'_>) {
        match &self.sink {
            Sink::Off => {}
            Sink::NodeLog => tracing::info!(
                target: "access",
                peer = line.peer,
                method = line.method,
                path = line.path,
                version = line.version,
                status = line.status,
                elapsed_us = line.elapsed_us,
                identity = line.identity,
                route = line.route,
                upstream = line.upstream,
                cache = line.cache,
                "request"
            ),
            Sink::File(s) => LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                if !l.to.as_ref().is_some_and(|to| Arc::ptr_eq(to, s)) {
                    l.hand_over();
                    l.to = Some(Arc::clone(s));
                }
                line.encode(&mut l.buf);
                if l.buf.len() >= LOCAL_AT {
                    l.hand_over();
                }
            }),
        }
    }

    /// Writes what is buffered and stops the writer (at shutdown, once the event loops,
    /// which hand their lines over as they end, have stopped).
    pub fn close(&self) {
        if let Sink::File(s) = &self.sink {
            flush_thread();
            s.closed.store(true, Ordering::Release);
            s.wake.notify_one();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// An event loop's lines not yet handed over, and where they go.
struct Local {
    to: Option<Arc<Shared>>,
    buf: Vec<u8>,
}

thread_local! {
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local {
            to: None,
            buf: Vec::new(),
        })
    };
}

impl Local {
    fn hand_over(&mut self) {
        let Some(s) = &self.to else {
            self.buf.clear();
            return;
        };
        if self.buf.is_empty() {
            return;
        }
        let mut shared = s
            .buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shared.len() >= MAX_BUFFER {
            drop(shared);
            let lines = self.buf.iter().filter(|&&b| b == b'\n').count() as u64;
            s.dropped.fetch_add(lines, Ordering::Relaxed);
            s.dropped_metric.increment(lines);
        } else {
            shared.extend_from_slice(&self.buf);
            if shared.len() >= FLUSH_AT {
                s.wake.notify_one();
            }
        }
        self.buf.clear();
        // A buffer that once grew large is not kept at that size.
        self.buf.shrink_to(LOCAL_AT * 2);
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.hand_over();
    }
}

/// Hands this thread's lines to the writer.
pub fn flush_thread() {
    let _ = LOCAL.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            l.hand_over();
        }
    });
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path)
}

/// The writer thread: moves the buffer to the file, rotates, reports drops.
fn writer(s: &Shared, path: &Path, mut file: std::fs::File, rot: &Rotation) {
    let mut size = file.metadata().map_or(0, |m| m.len());
    let mut spare: Vec<u8> = Vec::with_capacity(FLUSH_AT * 2);
    let mut reported = 0;
    loop {
        {
            let mut buf = s
                .buf
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if buf.len() < FLUSH_AT && !s.closed.load(Ordering::Acquire) {
                buf = s
                    .wake
                    .wait_timeout(buf, FLUSH_EVERY)
                    .map(|(b, _)| b)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            std::mem::swap(&mut *buf, &mut spare);
        }
        if !spare.is_empty() {
            if size > 0 && size + spare.len() as u64 > rot.max_bytes {
                match rotate(path, rot.keep).and_then(|()| open(path)) {
                    Ok(f) => {
                        file = f;
                        size = 0;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, path = %path.display(), "cannot rotate the access log")
                    }
                }
            }
            match file.write_all(&spare) {
                Ok(()) => size += spare.len() as u64,
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "cannot write the access log");
                }
            }
            spare.clear();
            // A buffer that once grew large is not kept at that size.
            spare.shrink_to(FLUSH_AT * 2);
        }
        let dropped = s.dropped.load(Ordering::Relaxed);
        if dropped != reported {
            tracing::warn!(
                dropped = dropped - reported,
                "access log lines dropped: the disk does not keep up"
            );
            reported = dropped;
        }
        if s.closed.load(Ordering::Acquire)
            && s.buf
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_empty()
        {
            let _ = file.sync_data();
            return;
        }
    }
}

/// `access.log` → `access.log.1` → ... → `access.log.{keep}` (the oldest is removed).
fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    let name = |i: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(name(keep));
    for i in (1..keep).rev() {
        let from = name(i);
        if from.exists() {
            std::fs::rename(&from, name(i + 1))?;
        }
    }
    std::fs::rename(path, name(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: usize) -> String {
        format!("/core-data/api/v3/event/{i}")
    }

    fn record(log: &AccessLog, path: &str) {
        log.record(&Line {
            time: Line::now(),
            request_id: "r-1",
            peer: "127.0.0.1:5000",
            method: "GET",
            path,
            version: "HTTP/1.1",
            status: 200,
            elapsed_us: 12,
            identity: "user:admin",
            route: "core-data",
            upstream: "core-data",
            cache: "-",
        });
    }

    #[test]
    fn lines_are_the_json_serde_makes() {
        for odd in [
            "plain",
            "",
            "quote \" and backslash \\",
            "control \u{1} \n \t",
            "unicode é ✓ \u{7f}",
        ] {
            let line = Line {
                time: Line::now(),
                request_id: odd,
                peer: "[::1]:5000",
                method: "GET",
                path: odd,
                version: "HTTP/2",
                status: 503,
                elapsed_us: u64::MAX,
                identity: odd,
                route: "core-data",
                upstream: "-",
                cache: odd,
            };
            let mut ours = Vec::new();
            line.encode(&mut ours);
            let mut serde = serde_json::to_vec(&line).unwrap();
            serde.push(b'\n');
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        let t = Line::now();
        let t = t.as_str();
        let parsed = humantime::parse_rfc3339(t).expect("RFC 3339");
        let now = SystemTime::now();
        let diff = now.duration_since(parsed).unwrap_or_default();
        assert!(diff < Duration::from_secs(2), "{t}");
        assert_eq!(t.len(), "2026-11-22T05:20:20.123Z".len(), "{t}");
    }

    #[test]
    fn lines_reach_the_file_and_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/access.log");
        let log = AccessLog::file(
            path.clone(),
            Rotation {
                max_bytes: 20_000,
                keep: 2,
            },
            metrics::Counter::noop(),
        )
        .unwrap();
        // In batches, each waited for until it is on disk, so the file has content when
        // the next batch arrives and must rotate.
        let written = |l: &str| {
            ["log/access.log", "log/access.log.1", "log/access.log.2"]
                .iter()
                .any(|f| std::fs::read_to_string(dir.path().join(f)).is_ok_and(|t| t.contains(l)))
        };
        for batch in 0..4 {
            for i in batch * 250..(batch + 1) * 250 {
                record(&log, &line(i));
            }
            // What an event loop's tick does.
            flush_thread();
            let last = line((batch + 1) * 250 - 1);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !written(&last) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        log.close();
        drop(log);
        // The writer finishes on its own; wait for the last line.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let all = loop {
            let mut text = String::new();
            for p in [
                dir.path().join("log/access.log.2"),
                dir.path().join("log/access.log.1"),
                path.clone(),
            ] {
                text.push_str(&std::fs::read_to_string(p).unwrap_or_default());
            }
            if text.contains(&line(999)) || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(all.contains(&line(999)), "the last line is written");
        assert!(!dir.path().join("log/access.log.3").exists(), "keep = 2");
        assert!(dir.path().join("log/access.log.1").exists(), "rotated");
        assert!((std::fs::metadata(&path).unwrap().len() as usize) < all.len());
        for l in all.lines() {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            assert_eq!(v["status"], 200);
            assert_eq!(v["requestId"], "r-1");
        }
    }
}
