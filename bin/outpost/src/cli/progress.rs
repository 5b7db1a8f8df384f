//! Progress of long operations (uploads, downloads, retention runs) on standard error.
//!
//! On a terminal: one line redrawn at most ten times a second, with a bar, the share done,
//! the amounts and the rate. Elsewhere (a log, a pipe) either nothing, or, when asked for
//! with [`Progress::lines`], the same line written out at every tenth of the way and at the
//! end, as a log wants it.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// What is counted, for how amounts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes, written in MB.
    Bytes,
    /// Items (readings), written as counts.
    Items(&'static str),
}

/// A progress line of one operation.
#[derive(Debug)]
pub struct Progress {
    label: String,
    unit: Unit,
    total: u64,
    done: u64,
    /// Where the count was when this run of it began (a resumed download): the rate
    /// counts only what this run moved.
    base: u64,
    started: Instant,
    shown: Instant,
    tty: bool,
    lines: bool,
    /// The last tenth written as a line.
    tenth: u64,
    finished: bool,
}

impl Progress {
    /// A bar on a terminal, nothing elsewhere.
    pub fn new(label: impl Into<String>, unit: Unit, total: u64) -> Self {
        let now = Instant::now();
        Self {
            label: label.into(),
            unit,
            total,
            done: 0,
            base: 0,
            started: now,
            shown: now,
            tty: std::io::stderr().is_terminal(),
            lines: false,
            tenth: 0,
            finished: false,
        }
    }

    /// Also a line at every tenth of the way when standard error is not a terminal.
    pub fn lines(mut self) -> Self {
        self.lines = true;
        self
    }

    /// Starts from `done` (a resumed operation: the agent's downloads).
    #[allow(dead_code)]
    pub fn starting_at(mut self, done: u64) -> Self {
        self.done = done;
        self.base = done;
        self.tenth = self.tenths();
        self
    }

    /// `n` more done.
    pub fn add(&mut self, n: u64) {
        self.set(self.done.saturating_add(n), self.total);
    }

    /// Where it is now, and the total as now known.
    pub fn set(&mut self, done: u64, total: u64) {
        self.done = done;
        self.total = total;
        if self.tty {
            if self.shown.elapsed() >= Duration::from_millis(100) {
                self.shown = Instant::now();
                self.draw();
            }
        } else if self.lines && self.tenths() > self.tenth {
            self.tenth = self.tenths();
            self.line();
        }
    }

    /// The end: the bar at its final state and a new line on a terminal, the last line
    /// elsewhere (when lines were asked for).
    pub fn done(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self.tty {
            self.draw();
            let _ = writeln!(std::io::stderr());
        } else if self.lines && self.tenth < 10 {
            self.tenth = 10;
            self.line();
        }
    }

    /// Tenths of the way done (10 when the total is unknown or reached).
    fn tenths(&self) -> u64 {
        if self.total == 0 {
            return 0;
        }
        (self.done.min(self.total) * 10) / self.total
    }

    fn fraction(&self) -> f64 {
        if self.total == 0 {
            if self.finished { 1.0 } else { 0.0 }
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        }
    }

    fn amounts(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let moved = self.done.saturating_sub(self.base) as f64;
        match self.unit {
            Unit::Bytes => format!(
                "{:.1}/{:.1} MB {:.1} MB/s",
                self.done as f64 / 1e6,
                self.total as f64 / 1e6,
                moved / 1e6 / secs
            ),
            Unit::Items(what) => {
                format!("{}/{} {what} {:.0}/s", self.done, self.total, moved / secs)
            }
        }
    }

    /// The progress as one line: label, bar, share done, amounts and rate.
    fn text(&self) -> String {
        let frac = self.fraction();
        let width = 30;
        let full = ((frac * width as f64) as usize).min(width);
        format!(
            "{} [{}{}] {:>5.1}% {}",
            self.label,
            "#".repeat(full),
            " ".repeat(width - full),
            frac * 100.0,
            self.amounts()
        )
    }

    fn draw(&self) {
        let _ = write!(std::io::stderr(), "\r{}\x1b[K", self.text());
    }

    /// What a terminal shows, as a line of its own.
    fn line(&self) {
        let _ = writeln!(std::io::stderr(), "{}", self.text());
    }
}

impl Drop for Progress {
    /// An interrupted bar still ends its line, so what follows starts on a fresh one.
    fn drop(&mut self) {
        if self.tty && !self.finished {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenths_count_what_is_done_and_never_pass_the_end() {
        let mut p = Progress::new("x", Unit::Bytes, 1000).lines();
        p.tty = false;
        assert_eq!(p.tenths(), 0);
        p.add(250);
        assert_eq!((p.tenths(), p.tenth), (2, 2));
        p.set(5000, 1000);
        assert_eq!(p.tenths(), 10);
        assert!((p.fraction() - 1.0).abs() < f64::EPSILON);
        let resumed = Progress::new("x", Unit::Items("readings"), 10).starting_at(7);
        assert_eq!(
            resumed.tenth, 7,
            "a resumed run does not repeat the tenths it had"
        );
        let unknown = Progress::new("x", Unit::Bytes, 0);
        assert_eq!(unknown.tenths(), 0);
    }
}
