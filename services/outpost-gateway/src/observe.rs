//! The access log line and metrics of every request: what inner layers learn about a
//! request ([`LogSlot`]), what is taken before it is handled ([`Seen`]), and [`record`]
//! once it was answered. The gateway's own routes get this as middleware ([`observe`]); the
//! proxy's hot path calls the same functions directly (`front`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::StatusCode;

use crate::app::App;
use crate::{access, conn, stats};

/// What inner layers tell the access log about a request.
#[derive(Debug, Clone, Default)]
pub struct LogSlot(Arc<Mutex<LogInfo>>);

#[derive(Debug, Default)]
struct LogInfo {
    identity: Option<Arc<str>>,
    route: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    cache: Option<&'static str>,
}

impl LogSlot {
    fn with(&self, f: impl FnOnce(&mut LogInfo)) {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }
    pub fn set_identity(&self, id: &Arc<str>) {
        self.with(|i| i.identity = Some(Arc::clone(id)));
    }
    /// The route label: the service name when it is known, else `unknown` (bounded).
    pub fn set_route(&self, service: Option<&Arc<str>>) {
        let r = service.map_or_else(|| Arc::from("unknown"), Arc::clone);
        self.with(|i| i.route = Some(r));
    }
    pub fn set_upstream(&self, id: &Arc<str>) {
        self.with(|i| i.upstream = Some(Arc::clone(id)));
    }
    pub fn set_cache(&self, c: &'static str) {
        self.with(|i| i.cache = Some(c));
    }
}

/// What the access log and metrics need to know about a request, taken before it is
/// handled.
pub struct Seen {
    method: http::Method,
    /// The request's URI (shares the request's memory): the log shows its path.
    uri: http::Uri,
    peer: Arc<str>,
    version: http::Version,
    start: Instant,
}

impl Seen {
    pub fn of(req: &Request, client: Option<&conn::Client>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            peer: match client {
                Some(c) => Arc::clone(&c.text),
                None => req
                    .extensions()
                    .get::<conn::Peer>()
                    .map(|p| p.0.to_string())
                    .unwrap_or_default()
                    .into(),
            },
            version: req.version(),
            start: Instant::now(),
        }
    }
}

/// The access log line and metrics of a handled request.
pub fn record(app: &App, seen: &Seen, slot: &LogSlot, status: StatusCode) {
    let elapsed = seen.start.elapsed();
    let info = std::mem::take(
        &mut *slot
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let route = info.route.unwrap_or_else(|| "unknown".into());
    stats::count_request(&app.m, &route, &seen.method, status, elapsed.as_secs_f64());
    let id = outpost_kit::request_id::current();
    app.access.record(&access::Line {
        time: access::Line::now(),
        request_id: id.as_deref().unwrap_or("-"),
        peer: &seen.peer,
        method: seen.method.as_str(),
        path: seen.uri.path(),
        version: version_str(seen.version),
        status: status.as_u16(),
        elapsed_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        identity: info.identity.as_deref().unwrap_or("-"),
        route: &route,
        upstream: info.upstream.as_deref().unwrap_or("-"),
        cache: info.cache.unwrap_or("-"),
    });
}

/// Access log line and metrics per request (the gateway's own routes).
pub async fn observe(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let slot = LogSlot::default();
    req.extensions_mut().insert(slot.clone());
    let client = req.extensions().get::<Arc<conn::Client>>().cloned();
    let seen = Seen::of(&req, client.as_deref());
    let path = seen.uri.path();
    if path.starts_with("/api/v3/") || path.starts_with("/ui") || path == "/metrics" {
        slot.set_route(Some(&Arc::from("gateway")));
    }
    let resp = next.run(req).await;
    record(&app, &seen, &slot, resp.status());
    resp
}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "?",
    }
}
