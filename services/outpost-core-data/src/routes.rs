//! HTTP API: the EdgeX core-data v3 event and reading endpoints (see `core-data.yaml`).
//!
//! Lists are newest origin first with `offset`/`limit` (`offset=-1` skips the total count);
//! `numeric=true` renders numeric values as JSON numbers; `aggregateFunc` (MIN, MAX, COUNT,
//! SUM, AVG) on reading endpoints returns one aggregate per device and resource.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use outpost_bus::Link;
use outpost_contracts::common::{
    BaseResponse, BaseWithIdResponse, BaseWithTotalCountResponse, CountResponse, Paging,
};
use outpost_contracts::envelope::CONTENT_TYPE_CBOR;
use outpost_contracts::event::{
    AddEventRequest, EventResponse, MultiEventsResponse, MultiReadingsResponse, NumericMode,
    RetentionRunResponse, RetentionStatus,
};
use outpost_kit::error::{ApiError, Body, Path, Query, parse_json};
use serde::Deserialize;

use crate::ingest::Ingest;
use crate::store::{Aggregate, Outcome, Query as StoreQuery, StoreError};

pub struct App {
    pub ingest: Arc<Ingest>,
    /// Retention runs: the periodic pass and those asked for.
    pub retention: Arc<crate::retention::Retention>,
    /// Where REST-added events are republished (when configured and connected).
    pub bus: Link,
    /// Deletions and republishing run as tasks of the service.
    pub tasks: outpost_kit::Tasks,
    pub publish_rest_events: bool,
}

type St = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/api/v3/event/{service}/{profile}/{device}/{source}",
            post(add_event),
        )
        .route("/api/v3/event/all", get(selected_events))
        .route(
            "/api/v3/event/id/{id}",
            get(event_by_id).delete(delete_event),
        )
        .route("/api/v3/event/count", get(count::<false>))
        .route(
            "/api/v3/event/count/device/name/{name}",
            get(count::<false>),
        )
        .route(
            "/api/v3/event/device/name/{name}",
            get(selected_events).delete(delete_device_events),
        )
        .route(
            "/api/v3/event/start/{start}/end/{end}",
            get(selected_events),
        )
        .route("/api/v3/event/age/{age}", delete(delete_old_events))
        .route("/api/v3/retention", get(retention_status))
        .route("/api/v3/device/summary", get(device_summaries))
        .route("/api/v3/retention/run", post(start_retention))
        .route("/api/v3/reading/all", get(selected_readings))
        .route("/api/v3/reading/count", get(count::<true>))
        .route(
            "/api/v3/reading/count/device/name/{name}",
            get(count::<true>),
        )
        .route("/api/v3/reading/device/name/{name}", get(selected_readings))
        .route(
            "/api/v3/reading/resourceName/{resource}",
            get(selected_readings),
        )
        .route(
            "/api/v3/reading/device/name/{device}/resourceName/{resource}",
            get(selected_readings),
        )
        .route(
            "/api/v3/reading/start/{start}/end/{end}",
            get(selected_readings),
        )
        .route(
            "/api/v3/reading/resourceName/{resource}/start/{start}/end/{end}",
            get(selected_readings),
        )
        .route(
            "/api/v3/reading/device/name/{device}/resourceName/{resource}/start/{start}/end/{end}",
            get(selected_readings),
        )
        .route(
            "/api/v3/reading/device/name/{device}/start/{start}/end/{end}",
            get(device_readings_in_range),
        )
        .with_state(app)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "storage unavailable");
                ApiError::unavailable("storage is temporarily unavailable; retry later")
            }
            StoreError::Storage(s) => ApiError::internal(s),
        }
    }
}

// ---- ingest ----

async fn add_event(
    State(app): St,
    Path((service, profile, device, source)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let cbor = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(CONTENT_TYPE_CBOR));
    let req: AddEventRequest = if cbor {
        ciborium::from_reader(body.as_ref())
            .map_err(|e| ApiError::bad_request(format!("invalid CBOR body: {e}")))?
    } else {
        parse_json(&body)?
    };
    req.base.check().map_err(ApiError::bad_request)?;
    let ev = &req.event;
    if ev.profile_name != profile || ev.device_name != device || ev.source_name != source {
        return Err(ApiError::bad_request(format!(
            "event is for {}/{}/{}, the path says {profile}/{device}/{source}",
            ev.profile_name, ev.device_name, ev.source_name
        )));
    }
    let ie = match app.ingest.validator.prepare(req.event).await {
        Ok(ie) => ie,
        Err(rej) => {
            app.ingest.rejected(&rej, "rest");
            return Err(ApiError::new(rej.status, rej.message));
        }
    };
    let id = ie.event.id.clone();
    let events: Arc<[_]> = Arc::from(vec![ie]);
    // Checked, and stored unless PersistData is off (then only published, as EdgeX does).
    let persist = app.ingest.persisting();
    let outcomes = if persist {
        app.ingest.store.append(Arc::clone(&events)).await?
    } else {
        vec![Outcome::Stored]
    };
    if persist {
        app.ingest.record(&events, &outcomes);
    }
    match outcomes.first() {
        Some(Outcome::Stored) => {}
        Some(Outcome::Duplicate) => {
            return Err(ApiError::conflict(format!("event '{id}' already exists")));
        }
        Some(Outcome::Refused(why)) => return Err(ApiError::bad_request(why.clone())),
        None => return Err(ApiError::internal("no outcome for a stored event")),
    }
    if app.publish_rest_events
        && let Some(bus) = app.bus.get()
    {
        let bus = bus.clone();
        let event = events[0].event.clone();
        let correlation = outpost_kit::request_id::current_or_mint();
        app.tasks
            .spawn_child(outpost_kit::request_id::scope(correlation, async move {
                let topic = outpost_contracts::topics::core_event(
                    bus.base_topic(),
                    &service,
                    &event.profile_name,
                    &event.device_name,
                    &event.source_name,
                );
                if let Err(e) = bus
                    .publish_event(&topic, &AddEventRequest::new(event))
                    .await
                {
                    tracing::warn!(error = %e, "cannot publish a REST-added event on the bus");
                }
            }));
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(BaseWithIdResponse {
            base: BaseResponse::new(201).with_request_id(req.base.request_id),
            id,
        }),
    )
        .into_response())
}

// ---- query parameters ----

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ListParams {
    offset: Option<i64>,
    limit: Option<i64>,
    #[serde(
        default,
        deserialize_with = "outpost_contracts::common::query_opt_bool"
    )]
    numeric: Option<bool>,
    aggregate_func: Option<String>,
}

impl ListParams {
    /// `(offset, limit, count_total)`.
    fn page(&self, max: u64) -> Result<(u64, u64, bool), ApiError> {
        let offset = self.offset.unwrap_or(0);
        let limit = self.limit.unwrap_or(20);
        if offset < -1 {
            return Err(ApiError::bad_request(format!(
                "offset must be >= -1, got {offset}"
            )));
        }
        // EdgeX refuses a limit beyond MaxResultCount rather than cutting it.
        if limit < -1 || u64::try_from(limit).is_ok_and(|l| l > max) {
            return Err(ApiError::bad_request(format!(
                "querystring limit's value {limit} is out of min -1 ~ max {max} range."
            )));
        }
        let limit = if limit == -1 {
            max
        } else {
            u64::try_from(limit).unwrap_or(0)
        };
        Ok((
            u64::try_from(offset.max(0)).unwrap_or(0),
            limit,
            offset != -1,
        ))
    }

    fn mode(&self) -> NumericMode {
        if self.numeric == Some(true) {
            NumericMode::Numbers
        } else {
            NumericMode::Strings
        }
    }

    fn aggregate(&self) -> Result<Option<Aggregate>, ApiError> {
        match &self.aggregate_func {
            None => Ok(None),
            Some(s) => Aggregate::parse(s).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "aggregateFunc must be MIN, MAX, COUNT, SUM or AVG, got '{s}'"
                ))
            }),
        }
    }
}

fn range(start: &str, end: &str) -> Result<(i64, i64), ApiError> {
    let s: i64 = start.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "start '{start}' is not a Unix timestamp in nanoseconds"
        ))
    })?;
    let e: i64 = end.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "end '{end}' is not a Unix timestamp in nanoseconds"
        ))
    })?;
    if e < s {
        return Err(ApiError::bad_request("end must not be before start"));
    }
    Ok((s, e))
}

/// A route's path parameters by name.
type Params = HashMap<String, String>;

/// What a route's path selects, as a query: a device (`name` or `device`), a resource, a
/// time range (`start` and `end`), or any of them together. One handler per kind of list
/// serves every route of that kind.
fn selection(params: &Params) -> Result<StoreQuery, ApiError> {
    let mut q = StoreQuery {
        device: params.get("device").or_else(|| params.get("name")).cloned(),
        resource: params.get("resource").cloned(),
        ..StoreQuery::default()
    };
    if let (Some(start), Some(end)) = (params.get("start"), params.get("end")) {
        let (s, e) = range(start, end)?;
        q.start = Some(s);
        q.end = Some(e);
    }
    Ok(q)
}

fn page_base(total: u64) -> BaseWithTotalCountResponse {
    BaseWithTotalCountResponse {
        base: BaseResponse::new(200),
        total_count: total,
    }
}

/// `q` limited to the page `p` asks for.
fn paged(app: &App, p: &ListParams, mut q: StoreQuery) -> Result<StoreQuery, ApiError> {
    let (offset, limit, count_total) = p.page(app.ingest.live.get().max_result_count)?;
    q.offset = offset;
    q.limit = limit;
    q.count_total = count_total;
    Ok(q)
}

/// EdgeX's 416 for a counted page that starts past the end.
fn in_range(count_total: bool, offset: u64, total: u64) -> Result<(), ApiError> {
    if count_total && Paging::out_of_range(offset, total) {
        return Err(ApiError::range_not_satisfiable(offset, total));
    }
    Ok(())
}

// ---- events ----

async fn events(
    app: &App,
    p: &ListParams,
    q: StoreQuery,
) -> Result<axum::Json<MultiEventsResponse>, ApiError> {
    let q = paged(app, p, q)?;
    let (offset, count_total) = (q.offset, q.count_total);
    let (total, events) = app.ingest.store.events(q).await?;
    in_range(count_total, offset, total)?;
    let mode = p.mode();
    Ok(axum::Json(MultiEventsResponse {
        page: page_base(total),
        events: events.iter().map(|e| e.to_json(mode)).collect(),
    }))
}

/// All events, those of a device, or those in a time range.
async fn selected_events(
    State(app): St,
    Path(params): Path<Params>,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiEventsResponse>, ApiError> {
    events(&app, &p, selection(&params)?).await
}

fn parse_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(id).map_err(|_| ApiError::bad_request(format!("id '{id}' is not a UUID")))
}

async fn event_by_id(
    State(app): St,
    Path(id): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<EventResponse>, ApiError> {
    let uuid = parse_id(&id)?;
    let ev = app
        .ingest
        .store
        .event(uuid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("event '{id}' does not exist")))?;
    Ok(axum::Json(EventResponse {
        base: BaseResponse::new(200),
        event: ev.to_json(p.mode()),
    }))
}

async fn delete_event(
    State(app): St,
    Path(id): Path<String>,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    let uuid = parse_id(&id)?;
    if app.ingest.store.delete_event(uuid).await? {
        Ok(axum::Json(BaseResponse::new(200)))
    } else {
        Err(ApiError::not_found(format!("event '{id}' does not exist")))
    }
}

/// `count` and `count/device/name/{name}` of events, or of readings with `READINGS`.
async fn count<const READINGS: bool>(
    State(app): St,
    Path(params): Path<Params>,
) -> Result<axum::Json<CountResponse>, ApiError> {
    let t = app.ingest.store.totals(params.get("name").cloned()).await?;
    Ok(axum::Json(CountResponse {
        base: BaseResponse::new(200),
        count: if READINGS { t.readings } else { t.events },
    }))
}

/// Answers 202 and runs the deletion in the background, as EdgeX does.
fn accepted(
    app: &App,
    what: &'static str,
    job: impl std::future::Future<Output = Result<u64, StoreError>> + Send + 'static,
) -> Response {
    app.tasks.spawn_child(async move {
        match job.await {
            Ok(n) => tracing::info!(readings = n, what, "deleted"),
            Err(e) => tracing::warn!(error = %e, what, "deletion failed"),
        }
    });
    (StatusCode::ACCEPTED, axum::Json(BaseResponse::new(202))).into_response()
}

async fn delete_device_events(State(app): St, Path(name): Path<String>) -> Response {
    let store = Arc::clone(&app.ingest.store);
    accepted(&app, "device events", async move {
        store.delete_device(name).await
    })
}

async fn delete_old_events(State(app): St, Path(age): Path<String>) -> Result<Response, ApiError> {
    let age: i64 = age.parse().ok().filter(|a| *a >= 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "age '{age}' must be a non-negative number of nanoseconds"
        ))
    })?;
    let cutoff = outpost_contracts::now_nanos().saturating_sub(age);
    let store = Arc::clone(&app.ingest.store);
    Ok(accepted(&app, "old events", async move {
        crate::retention::delete_before(store.as_ref(), cutoff, 50_000).await
    }))
}

// ---- devices' summary (an Outpost extension) ----

/// `GET /api/v3/device/summary` (Outpost): each device's stored counts and its newest
/// event's origin, i.e. when it was last heard from.
async fn device_summaries(
    State(app): St,
) -> Result<axum::Json<outpost_contracts::event::DeviceSummariesResponse>, ApiError> {
    let all = app.ingest.store.device_summaries().await?;
    Ok(axum::Json(
        outpost_contracts::event::DeviceSummariesResponse {
            base: BaseResponse::new(200),
            devices: all
                .into_iter()
                .map(|d| outpost_contracts::event::DeviceSummary {
                    device_name: d.device,
                    event_count: d.totals.events,
                    reading_count: d.totals.readings,
                    last_origin: d.last_origin,
                })
                .collect(),
        },
    ))
}

// ---- retention (an Outpost extension) ----

/// `GET /api/v3/retention`: the bounds, what is stored, and the running or last run.
async fn retention_status(State(app): St) -> Result<Response, ApiError> {
    let cfg = app.retention.config();
    let totals = app.ingest.store.totals(None).await?;
    // What the data takes on disk is a detail: not knowing it fails nothing else.
    let stored_bytes = app
        .ingest
        .store
        .stored_bytes()
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "cannot tell the store's size"))
        .unwrap_or(0);
    Ok(axum::Json(RetentionStatus {
        base: BaseResponse::new(200),
        enabled: cfg.enabled,
        interval_ms: cfg.interval_ms,
        max_cap: cfg.max_cap,
        min_cap: cfg.min_cap,
        max_age_seconds: cfg.max_age_s,
        stored_events: totals.events,
        stored_readings: totals.readings,
        stored_bytes,
        run: app.retention.last(),
    })
    .into_response())
}

/// What `POST /api/v3/retention/run` takes (an empty body: the configured bounds).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RunRequest {
    /// Remove events older than this many seconds in this run (instead of the configured
    /// age; 0: no age bound).
    max_age_seconds: Option<u64>,
}

/// `POST /api/v3/retention/run`: a retention run now; 202 with the run to follow, or 409
/// with the run already under way.
async fn start_retention(State(app): St, Body(body): Body) -> Result<Response, ApiError> {
    let req: RunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RunRequest::default()
    } else {
        parse_json(&body)?
    };
    // Instances sharing a store: the one holding the retention lease runs retention.
    if !app.retention.lease().await? {
        return Err(ApiError::conflict(
            "another core-data instance is running retention now; try again later",
        ));
    }
    let (code, run) = match app.retention.start(req.max_age_seconds, &app.tasks) {
        Ok(run) => (StatusCode::ACCEPTED, run),
        Err(running) => (StatusCode::CONFLICT, *running),
    };
    let mut base = BaseResponse::new(code.as_u16());
    if code == StatusCode::CONFLICT {
        base.message =
            "a retention run is already under way: follow it with GET /api/v3/retention".into();
    }
    let answer = RetentionRunResponse { base, run };
    Ok((code, axum::Json(answer)).into_response())
}

// ---- readings ----

async fn readings(
    app: &App,
    p: &ListParams,
    q: StoreQuery,
) -> Result<axum::Json<MultiReadingsResponse>, ApiError> {
    let mode = p.mode();
    if let Some(f) = p.aggregate()? {
        // EdgeX renders aggregates as JSON numbers whatever `numeric` says.
        let list = app.ingest.store.aggregate(q, f).await?;
        return Ok(axum::Json(MultiReadingsResponse {
            page: page_base(list.len() as u64),
            aggregate_func: Some(f.as_str().to_string()),
            readings: list
                .iter()
                .map(|r| r.to_json(NumericMode::Numbers))
                .collect(),
        }));
    }
    let q = paged(app, p, q)?;
    let (offset, count_total) = (q.offset, q.count_total);
    let (total, list) = app.ingest.store.readings(q).await?;
    in_range(count_total, offset, total)?;
    Ok(axum::Json(MultiReadingsResponse {
        page: page_base(total),
        aggregate_func: None,
        readings: list.iter().map(|r| r.to_json(mode)).collect(),
    }))
}

/// All readings, or those of a device, a resource, both, in a time range or not.
async fn selected_readings(
    State(app): St,
    Path(params): Path<Params>,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiReadingsResponse>, ApiError> {
    readings(&app, &p, selection(&params)?).await
}

/// The optional body of `GET /reading/device/name/{d}/start/{s}/end/{e}` (EdgeX's
/// multi-resource query).
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ResourceNames {
    resource_names: Vec<String>,
}

async fn device_readings_in_range(
    State(app): St,
    Path(params): Path<Params>,
    Query(p): Query<ListParams>,
    Body(body): Body,
) -> Result<axum::Json<MultiReadingsResponse>, ApiError> {
    let names: ResourceNames = if body.iter().all(u8::is_ascii_whitespace) {
        ResourceNames::default()
    } else {
        parse_json(&body)?
    };
    let q = StoreQuery {
        resources: names.resource_names,
        ..selection(&params)?
    };
    readings(&app, &p, q).await
}
