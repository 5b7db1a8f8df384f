//! Logs and metrics setup.
//!
//! Logs go to standard error through `tracing`, as text or JSON lines; `RUST_LOG` overrides
//! the configured level. Metrics are recorded with the `metrics` facade and rendered in the
//! Prometheus text format by each service's `/metrics` route.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global log subscriber (once per process).
pub fn init_logs(cfg: &LogConfig) {
    // The MQTT library narrates every connection at INFO and reports even a requested
    // disconnect as an error; keep it to warnings and report connection changes ourselves
    // (outpost-bus), unless asked otherwise.
    let configured = if cfg.level.contains("mqtt5") {
        cfg.level.clone()
    } else {
        format!("{},mqtt5=warn,mqtt5::client::direct::reader=off", cfg.level)
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&configured))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // A write error (a supervisor that died and took the read end of our stderr with it)
    // must not become a panic on whatever task was logging.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init(),
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets, seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let h = handle.clone();
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tick.tick().await;
                        h.run_upkeep();
                    }
                });
            }
            handle
        })
        .clone()
}

/// `outpost_<service>_<name>`, with dashes turned into underscores.
pub fn metric_name(service: &str, name: &str) -> String {
    format!("outpost_{}_{name}", service.replace('-', "_"))
}

/// Keeps `name` for the life of the process, once per distinct name: metric names are
/// few and fixed, so this is bounded, and a name recorded on a hot path costs no
/// allocation.
pub fn intern(name: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.get(name.as_str()) {
        return known;
    }
    let kept: &'static str = Box::leak(name.into_boxed_str());
    names.insert(kept);
    kept
}

/// Declares a service's metric names, each once with its name and documentation: a struct
/// of `&'static str` fields and `new(&ctx)`, which makes every name in the service's
/// namespace (`outpost_<service>_<name>`, kept for the process, so recording one costs no
/// allocation).
///
/// ```ignore
/// outpost_kit::metric_names! {
///     /// What the sender counts.
///     pub struct Metrics {
///         /// Items sent, by destination.
///         sent = "items_sent_total",
///     }
/// }
/// let m = Metrics::new(&ctx);
/// metrics::counter!(m.sent, "destination" => name).increment(1);
/// ```
#[macro_export]
macro_rules! metric_names {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $field:ident = $metric:literal),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        $vis struct $name {
            $($(#[$fmeta])* pub $field: &'static str,)*
        }

        impl $name {
            /// The names in the namespace of `ctx`'s service.
            pub fn new(ctx: &$crate::Context) -> Self {
                Self {
                    $($field: ctx.metric_static($metric),)*
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_name_is_kept_once() {
        let a = super::intern("outpost_x_total".to_string());
        let b = super::intern("outpost_x_total".to_string());
        assert!(std::ptr::eq(a, b));
    }
}
