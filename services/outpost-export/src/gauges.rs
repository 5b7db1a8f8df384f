//! Queue gauges and drop counters, every second.

use std::sync::Arc;
use std::time::Duration;

use outpost_kit::Shutdown;

use crate::dest::{Dest, Metrics, now_ms};

/// Sets the queue gauges of `dests` and counts their new drops, every second until
/// `shutdown`.
pub async fn run(dests: Vec<Arc<Dest>>, names: Metrics, shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = now_ms();
        for d in &dests {
            let stats = d.queue().stats();
            let name = d.cfg.name.clone();
            for p in &stats.priorities {
                let prio = p.priority.as_str();
                metrics::gauge!(names.items, "destination" => name.clone(), "priority" => prio)
                    .set(p.items as f64);
                let age = p
                    .oldest_ms
                    .map_or(0.0, |o| now.saturating_sub(o) as f64 / 1000.0);
                metrics::gauge!(names.oldest, "destination" => name.clone(), "priority" => prio)
                    .set(age);
            }
            metrics::gauge!(names.bytes, "destination" => name.clone()).set(stats.bytes as f64);
            let c = stats.counters;
            let reported = d.report_counters(c);
            for (cause, now_v, before) in [
                ("overflow", c.dropped_overflow, reported.dropped_overflow),
                ("expired", c.expired, reported.expired),
                ("corrupt", c.corrupt_records, reported.corrupt_records),
            ] {
                if now_v > before {
                    metrics::counter!(names.dropped, "destination" => name.clone(), "cause" => cause).increment(now_v - before);
                }
            }
        }
    }
}
