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

/// The configured filter with the bus libraries' noise kept down: the MQTT one narrates
/// every connection at INFO and reports even a requested disconnect as an error, the NATS
/// one narrates every connection event at INFO; connection changes are reported by
/// outpost-bus instead, unless the filter names the library.
fn with_quiet_mqtt(level: &str) -> String {
    let mut out = level.to_string();
    if !level.contains("mqtt5") {
        out.push_str(",mqtt5=warn,mqtt5::client::direct::reader=off");
    }
    if !level.contains("async_nats") {
        out.push_str(",async_nats=warn");
    }
    out
}

/// A level as EdgeX writes it (`INFO`, `DEBUG`, `WARN`) or a filter
/// (`info,outpost_core_data=debug`), as a filter.
fn filter_of(level: &str) -> Result<EnvFilter, String> {
    let level = level.trim();
    if level.is_empty() {
        return Err("the log level is empty".into());
    }
    let normal = match level.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "critical" | "fatal" => "error".to_string(),
        l if matches!(l, "trace" | "debug" | "info" | "warn" | "error" | "off") => l.to_string(),
        _ => level.to_string(),
    };
    EnvFilter::try_new(with_quiet_mqtt(&normal)).map_err(|e| format!("'{level}': {e}"))
}

/// Changes the level of a running process's logs.
type SetLevel = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

struct Level {
    current: std::sync::Mutex<String>,
    set: SetLevel,
}

static LEVEL: OnceLock<Level> = OnceLock::new();

/// The log level in force (as it was configured or last set).
pub fn log_level() -> String {
    LEVEL.get().map_or_else(String::new, |l| {
        l.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    })
}

/// Sets the log level of this process while it runs (EdgeX's `Writable/LogLevel`).
/// `Ok(true)` when it changed; an invalid level is refused and the old one kept.
pub fn set_log_level(level: &str) -> Result<bool, String> {
    let filter = filter_of(level)?;
    let Some(l) = LEVEL.get() else {
        return Err("this process has no log subscriber to change".into());
    };
    let mut current = l
        .current
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *current == level {
        return Ok(false);
    }
    (l.set)(filter)?;
    *current = level.to_string();
    Ok(true)
}

/// Installs the global log subscriber (once per process). `RUST_LOG` overrides the
/// configured level at start; a level set later ([`set_log_level`]) overrides both.
pub fn init_logs(cfg: &LogConfig) {
    // The level in force, as it is reported and compared with a new one: RUST_LOG's when
    // set, else the configured one, else `info`.
    let (filter, level) = match std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| EnvFilter::try_new(&l).ok().map(|f| (f, l)))
    {
        Some(found) => found,
        None => match filter_of(&cfg.level) {
            Ok(f) => (f, cfg.level.clone()),
            Err(_) => (EnvFilter::new("info"), "info".to_string()),
        },
    };
    // A write error (a supervisor that died and took the read end of our stderr with it)
    // must not become a panic on whatever task was logging.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    // The filter's handle is typed by the formatter, so it is taken once the format is.
    let (installed, set): (_, SetLevel) = match cfg.format {
        LogFormat::Json => {
            let b = builder
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .flatten_event(true)
                .with_filter_reloading();
            let handle = b.reload_handle();
            (
                b.try_init(),
                Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
            )
        }
        LogFormat::Text => {
            let b = builder
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter_reloading();
            let handle = b.reload_handle();
            (
                b.try_init(),
                Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
            )
        }
    };
    if installed.is_ok() {
        let _ = LEVEL.set(Level {
            current: std::sync::Mutex::new(level),
            set,
        });
    }
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

/// Exports each counter of `names` at 0 from now on, before its first event: a reader
/// then tells "none yet" from a counter that is not there.
pub fn zeroed_counters(names: &[&'static str]) {
    for name in names {
        metrics::counter!(*name).increment(0);
    }
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
