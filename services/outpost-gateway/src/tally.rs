//! Request metrics kept per event loop and handed to the shared recorder once a second (and
//! when a loop stops), the way Envoy flushes its per-worker stats: a counter or histogram
//! that both loops update on every request would move its memory between the cores each
//! time. A scrape sees a loop's requests at most a second late.

/// Histogram samples a loop keeps before it hands them over, whatever the time.
const MAX_SAMPLES: usize = 256;

pub struct Counter {
    handle: metrics::Counter,
    pending: u64,
}

impl Counter {
    pub fn new(handle: metrics::Counter) -> Self {
        Self { handle, pending: 0 }
    }

    pub fn increment(&mut self) {
        self.pending += 1;
    }

    pub fn flush(&mut self) {
        if self.pending > 0 {
            self.handle.increment(std::mem::take(&mut self.pending));
        }
    }
}

pub struct Histogram {
    handle: metrics::Histogram,
    samples: Vec<f64>,
}

impl Histogram {
    pub fn new(handle: metrics::Histogram) -> Self {
        Self {
            handle,
            samples: Vec::new(),
        }
    }

    pub fn record(&mut self, v: f64) {
        self.samples.push(v);
        if self.samples.len() >= MAX_SAMPLES {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        for v in self.samples.drain(..) {
            self.handle.record(v);
        }
    }
}
