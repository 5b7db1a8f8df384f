//! The HTTP API: `POST /api/v3/event/{service}/{profile}/{device}/{source}` (EdgeX's
//! AddEvent, queued for every destination that takes the event's topic), the status of
//! every destination (`GET /api/v3/export/status`) and its dead letters
//! (`/api/v3/export/deadletter/{destination}`: list, remove, queue again).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use outpost_contracts::common::{BaseResponse, BaseWithTotalCountResponse, SortedKeys};
use outpost_contracts::event::AddEventRequest;
use outpost_contracts::export::{
    DeadLettersRemoved, DeadLettersRequeued, DeadLettersResponse, DestinationStatus, EventQueued,
    ExportItem, ExportStatus, PriorityStatus, QueueStatus,
};
use outpost_kit::ApiError;
use outpost_kit::error::{Path, Query};
use outpost_queue::QueueError;
use serde::Deserialize;

use crate::dest::{Dest, Metrics, append, now_ms};
use crate::store::DeadLetterStore;

/// What the handlers share.
pub struct App {
    pub dests: Vec<Arc<Dest>>,
    pub dead: Arc<dyn DeadLetterStore>,
    /// The bus's base topic: events added over REST take the topic they would have on the
    /// bus, which decides the destinations that take them.
    pub base_topic: String,
    pub metrics: Metrics,
}

/// The service's API over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/api/v3/event/{service}/{profile}/{device}/{source}",
            post(add_event),
        )
        .route("/api/v3/export/status", get(status))
        .route(
            "/api/v3/export/deadletter/{destination}",
            get(dead_letters).delete(purge_dead_letters),
        )
        .route(
            "/api/v3/export/deadletter/{destination}/requeue",
            post(requeue_dead_letters),
        )
        .with_state(app)
}

/// EdgeX's AddEvent: `201` once every destination that takes the event has it on disk.
async fn add_event(
    State(app): State<Arc<App>>,
    Path((service, profile, device, source)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Result<Response, Refused> {
    let req: AddEventRequest = outpost_kit::error::parse_json(&body)?;
    let ev = &req.event;
    if ev.profile_name != profile || ev.device_name != device || ev.source_name != source {
        return Err(ApiError::bad_request(format!(
            "event is for {}/{}/{}, the path says {profile}/{device}/{source}",
            ev.profile_name, ev.device_name, ev.source_name
        ))
        .into());
    }
    if ev.id.is_empty() || ev.readings.is_empty() {
        return Err(ApiError::bad_request("an event needs an id and at least one reading").into());
    }
    let id = ev.id.clone();
    let topic =
        outpost_contracts::topics::event(&app.base_topic, &service, &profile, &device, &source);
    let bytes =
        serde_json::to_vec(&ExportItem::Event { event: req.event }).map_err(ApiError::internal)?;
    let mut taken = Vec::new();
    for d in app.dests.iter().filter(|d| d.takes(&topic)) {
        match append(d, d.priority_of(&topic), vec![bytes.clone()]).await {
            Ok(_) => {
                metrics::counter!(app.metrics.appended, "destination" => d.cfg.name.clone())
                    .increment(1);
                taken.push(d.cfg.name.clone());
            }
            Err(e) => return Err(queue_error(&d.cfg.name, &e)),
        }
    }
    if taken.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no destination takes events on {topic}"),
        )
        .into());
    }
    let queued = EventQueued {
        base: BaseResponse::new(201),
        id,
        destinations: taken,
    };
    Ok((StatusCode::CREATED, Json(SortedKeys(queued))).into_response())
}

/// A refused request; a full queue (refuse-new) answers with `Retry-After`, as sending
/// frees room.
#[derive(Debug)]
enum Refused {
    Error(ApiError),
    Full(ApiError),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Self::Error(e)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Self::Error(e) => e.into_response(),
            Self::Full(e) => {
                let mut resp = e.into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                resp
            }
        }
    }
}

fn queue_error(dest: &str, e: &QueueError) -> Refused {
    match e {
        QueueError::Full { .. } => {
            let mut err = ApiError::unavailable(format!("destination {dest}: {e}"));
            err.message.push_str("; retry later");
            Refused::Full(err)
        }
        QueueError::TooLarge { .. } => Refused::Error(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("destination {dest}: {e}"),
        )),
        e if e.is_disk_full() => Refused::Error(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("destination {dest}: the disk is full; nothing was queued"),
        )),
        e => Refused::Error(ApiError::unavailable(format!("destination {dest}: {e}"))),
    }
}

/// Every destination: its queue and how its sender is doing.
async fn status(State(app): State<Arc<App>>) -> Response {
    let now = now_ms();
    let dests: Vec<_> = app
        .dests
        .iter()
        .map(|d| {
            let stats = d.queue().stats();
            let c = stats.counters;
            let queue = QueueStatus {
                incarnation: stats.incarnation,
                items: stats.priorities.iter().map(|p| p.items).sum(),
                bytes: stats.bytes,
                max_bytes: stats.max_bytes,
                oldest_age_ms: stats
                    .priorities
                    .iter()
                    .filter_map(|p| p.oldest_ms)
                    .min()
                    .map(|o| now.saturating_sub(o)),
                priorities: stats
                    .priorities
                    .iter()
                    .map(|p| PriorityStatus {
                        priority: p.priority.as_str().to_string(),
                        items: p.items,
                        bytes: p.bytes,
                        next_seq: p.next_seq,
                    })
                    .collect(),
                appended: c.appended,
                dropped_overflow: c.dropped_overflow,
                expired: c.expired,
                refused: c.refused,
                disk_full: c.disk_full,
                corrupt_records: c.corrupt_records,
            };
            DestinationStatus {
                name: d.cfg.name.clone(),
                kind: d.cfg.kind,
                url: d.sink.url(),
                edge: d.sink.edge(),
                queue,
                sender: d.state().clone(),
            }
        })
        .collect();
    Json(SortedKeys(ExportStatus {
        base: BaseResponse::new(200),
        destinations: dests,
    }))
    .into_response()
}

fn dest<'a>(app: &'a App, name: &str) -> Result<&'a Arc<Dest>, ApiError> {
    app.dests
        .iter()
        .find(|d| d.cfg.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no destination {name}")))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Limit {
    limit: Option<u64>,
}

async fn dead_letters(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Result<Response, ApiError> {
    dest(&app, &name)?;
    let (total, items) = app
        .dead
        .list(&name, q.limit.unwrap_or(100).min(10_000))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(SortedKeys(DeadLettersResponse {
        page: BaseWithTotalCountResponse::new(total),
        dead_letters: items,
    }))
    .into_response())
}

async fn purge_dead_letters(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    dest(&app, &name)?;
    let n = app.dead.purge(&name).await.map_err(ApiError::internal)?;
    tracing::info!(destination = name, items = n, "dead letters removed");
    Ok(Json(SortedKeys(DeadLettersRemoved {
        base: BaseResponse::new(200),
        removed: n,
    }))
    .into_response())
}

/// Puts dead letters back in the queue (after the receiver was fixed).
async fn requeue_dead_letters(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, Refused> {
    let d = dest(&app, &name)?;
    let (letters, max_id) = app.dead.take_all(&name).await.map_err(ApiError::internal)?;
    let mut requeued = 0u64;
    for (priority, items) in letters {
        let n = items.len() as u64;
        if let Err(e) = append(d, priority, items).await {
            return Err(queue_error(&name, &e));
        }
        requeued += n;
    }
    app.dead
        .purge_upto(&name, max_id)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(
        destination = name,
        items = requeued,
        "dead letters queued again"
    );
    let mut resp = Json(SortedKeys(DeadLettersRequeued {
        base: BaseResponse::new(200),
        requeued,
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
