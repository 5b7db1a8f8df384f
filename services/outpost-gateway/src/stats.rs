//! The gateway's request metrics: names made once at start, counts and latencies kept per
//! event loop ([`tally`]) and handed to the recorder by [`flush_thread`] once a second.

use http::StatusCode;

use crate::tally;

outpost_kit::metric_names! {
    /// Metric names, made once at start and kept for the life of the process (a metric
    /// macro given a `&'static str` name does not allocate per request).
    pub struct Metrics {
        /// Requests by route, method and status class.
        requests = "requests_total",
        duration = "request_duration_seconds",
        /// Requests to upstream instances, by instance and status class.
        upstream_requests = "upstream_requests_total",
        upstream_duration = "upstream_duration_seconds",
        /// Cache lookups, by result (hit, miss, stale).
        cache = "cache_total",
        rate_limited = "rate_limited_total",
        retries = "retries_total",
        auth_failures = "auth_failures_total",
        access_log_dropped = "access_log_dropped_total",
    }
}

/// A status class label.
pub fn class(s: StatusCode) -> &'static str {
    match s.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Request count and latency by route, kept per thread (routes are service names, a
/// bounded set) and handed over by [`flush_thread`].
struct RouteHandles {
    duration: tally::Histogram,
    requests: Vec<(http::Method, &'static str, tally::Counter)>,
}

thread_local! {
    static ROUTES: std::cell::RefCell<std::collections::HashMap<String, RouteHandles>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

pub fn count_request(
    m: &Metrics,
    route: &str,
    method: &http::Method,
    status: StatusCode,
    secs: f64,
) {
    let class = class(status);
    ROUTES.with(|h| {
        let mut h = h.borrow_mut();
        if !h.contains_key(route) {
            h.insert(
                route.to_string(),
                RouteHandles {
                    duration: tally::Histogram::new(
                        metrics::histogram!(m.duration, "route" => route.to_string()),
                    ),
                    requests: Vec::new(),
                },
            );
        }
        let Some(r) = h.get_mut(route) else {
            return;
        };
        r.duration.record(secs);
        if let Some((_, _, c)) = r
            .requests
            .iter_mut()
            .find(|(m, k, _)| m == method && *k == class)
        {
            c.increment();
            return;
        }
        let c = metrics::counter!(m.requests, "route" => route.to_string(), "method" => method.to_string(), "status" => class);
        // Methods are client input: only a few combinations are kept.
        if r.requests.len() < 32 {
            let mut c = tally::Counter::new(c);
            c.increment();
            r.requests.push((method.clone(), class, c));
        } else {
            c.increment(1);
        }
    });
}

/// Hands this thread's request counts and latencies to the recorder.
fn flush_request_metrics() {
    ROUTES.with(|h| {
        for r in h.borrow_mut().values_mut() {
            r.duration.flush();
            for (_, _, c) in &mut r.requests {
                c.flush();
            }
        }
    });
}

/// Upstream request count and latency by instance, kept per thread (instances are the
/// registry's, a bounded set) and handed over by [`flush_thread`].
type UpstreamHandles = (tally::Histogram, Vec<(&'static str, tally::Counter)>);

thread_local! {
    static UPSTREAMS: std::cell::RefCell<std::collections::HashMap<String, UpstreamHandles>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

pub fn upstream_metrics(m: &Metrics, upstream: &str, secs: f64, status: &'static str) {
    use tally::{Counter, Histogram};
    UPSTREAMS.with(|h| {
        let mut h = h.borrow_mut();
        if !h.contains_key(upstream) {
            let hist = metrics::histogram!(m.upstream_duration, "upstream" => upstream.to_string());
            h.insert(upstream.to_string(), (Histogram::new(hist), Vec::new()));
        }
        let Some((hist, counters)) = h.get_mut(upstream) else {
            return;
        };
        hist.record(secs);
        if let Some((_, c)) = counters.iter_mut().find(|(k, _)| *k == status) {
            c.increment();
            return;
        }
        let mut c = Counter::new(metrics::counter!(m.upstream_requests, "upstream" => upstream.to_string(), "status" => status));
        c.increment();
        counters.push((status, c));
    });
}

/// Hands this thread's upstream counts and latencies to the recorder.
pub fn flush_upstream_metrics() {
    UPSTREAMS.with(|h| {
        for (hist, counters) in h.borrow_mut().values_mut() {
            hist.flush();
            for (_, c) in counters {
                c.flush();
            }
        }
    });
}

thread_local! {
    /// This thread's handovers, by thread name: a reader of the metrics knows every count
    /// made before a handover is in them once each event loop's count has moved on.
    static HANDOVERS: metrics::Counter = metrics::counter!(
        "outpost_gateway_metric_handovers_total",
        "thread" => std::thread::current().name().unwrap_or("unnamed").to_string()
    );
}

/// Hands this thread's metrics and access log lines over.
pub fn flush_thread() {
    flush_request_metrics();
    flush_upstream_metrics();
    crate::access::flush_thread();
    HANDOVERS.with(|c| c.increment(1));
}
