//! The EdgeX 4 support-scheduler API (`/api/v3/...` on port 59863).
//!
//! Batch writes (`POST` and `PATCH /job`) take a JSON array and answer 207 with one entry
//! per item, in order; a body that does not parse, or any item that fails validation, is a
//! 400 for the whole request and nothing changes. Lists are paged as every EdgeX list is.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use outpost_contracts::common::BaseResponse;
use outpost_kit::ApiError;
use outpost_kit::edgex;
use outpost_kit::error::{Path, Query};
use serde::Deserialize;
use serde_json::json;

use crate::model::{AddScheduleJobRequest, UNLOCKED, UpdateScheduleJobRequest};
use crate::schedule::{Scheduler, now_ms};
use crate::store::{RecordFilter, SchedulerStore, StoreError, StoredJob};

pub struct App {
    pub store: Arc<dyn SchedulerStore>,
    pub scheduler: Arc<Scheduler>,
    pub max_result_count: u64,
}

type St = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/v3/job", post(add_jobs).patch(patch_jobs))
        .route("/api/v3/job/all", get(all_jobs))
        .route("/api/v3/job/name/{name}", get(job).delete(delete_job))
        .route("/api/v3/job/trigger/name/{name}", post(trigger))
        .route("/api/v3/scheduleactionrecord/all", get(all_records))
        .route(
            "/api/v3/scheduleactionrecord/status/{status}",
            get(records_by_status),
        )
        .route(
            "/api/v3/scheduleactionrecord/job/name/{name}",
            get(records_by_job),
        )
        .route(
            "/api/v3/scheduleactionrecord/job/name/{name}/status/{status}",
            get(records_by_job_and_status),
        )
        .route(
            "/api/v3/scheduleactionrecord/latest/job/name/{name}",
            get(latest_records),
        )
        .route("/api/v3/secret", post(add_secret))
        .with_state(app)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate(what) => ApiError::conflict(format!("{what} already exists")),
            other => ApiError::internal(other),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    offset: Option<String>,
    limit: Option<String>,
    labels: Option<String>,
    start: Option<String>,
    end: Option<String>,
}

impl ListParams {
    fn page(&self, app: &App) -> Result<(u64, u64), ApiError> {
        edgex::page(
            self.offset.as_deref(),
            self.limit.as_deref(),
            app.max_result_count,
        )
    }

    /// `start` (default 0) and `end` (default now), milliseconds.
    fn window(&self) -> Result<(i64, i64), ApiError> {
        let ms = |name: &str, v: &Option<String>, default: i64| match v {
            None => Ok(default),
            Some(s) => s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::bad_request(format!("{name} '{s}' is not a timestamp in milliseconds"))
            }),
        };
        let (start, end) = (
            ms("start", &self.start, 0)?,
            ms("end", &self.end, now_ms())?,
        );
        if end < start {
            return Err(ApiError::bad_request(format!(
                "end {end} is before start {start}"
            )));
        }
        Ok((start, end))
    }
}

/// New internal ids for `n` actions.
fn action_ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
}

async fn add_jobs(State(app): St, body: Bytes) -> Result<Response, ApiError> {
    let reqs: Vec<AddScheduleJobRequest> = edgex::batch(&body)?;
    let items = edgex::checked(
        reqs.into_iter().map(|r| (r.base, r.schedule_job)).collect(),
        "scheduleJob",
        |j| problems(|p| j.validate(p)),
    )?;
    let mut entries = Vec::with_capacity(items.len());
    for (request_id, mut j) in items {
        if j.id.is_empty() {
            j.id = uuid::Uuid::new_v4().to_string();
        }
        if j.admin_state.is_empty() {
            j.admin_state = UNLOCKED.into();
        }
        j.definition = j.definition.normalized();
        let now = now_ms();
        (j.created, j.modified) = (now, now);
        let stored = StoredJob {
            action_ids: action_ids(j.actions.len()),
            job: j,
        };
        let id = stored.job.id.clone();
        let result = match app.store.add_job(stored.clone()).await {
            Ok(()) => {
                tracing::info!(job = stored.job.name, "schedule job added");
                app.scheduler.put(stored);
                Ok((StatusCode::CREATED, id))
            }
            Err(e) => Err(ApiError::from(e)),
        };
        entries.push(edgex::item(&request_id, result));
    }
    Ok(edgex::multi_status(entries))
}

async fn patch_jobs(State(app): St, body: Bytes) -> Result<Response, ApiError> {
    let reqs: Vec<UpdateScheduleJobRequest> = edgex::batch(&body)?;
    let items = edgex::checked(
        reqs.into_iter().map(|r| (r.base, r.schedule_job)).collect(),
        "scheduleJob",
        |u| problems(|p| u.validate(p)),
    )?;
    let mut entries = Vec::with_capacity(items.len());
    for (request_id, u) in items {
        let result = patch_one(&app, &u)
            .await
            .map(|()| (StatusCode::OK, String::new()));
        entries.push(edgex::item(&request_id, result));
    }
    Ok(edgex::multi_status(entries))
}

/// The problems `validate` finds, as one message.
fn problems(validate: impl FnOnce(&mut Vec<String>)) -> Result<(), String> {
    let mut p = Vec::new();
    validate(&mut p);
    if p.is_empty() {
        Ok(())
    } else {
        Err(p.join("; "))
    }
}

async fn patch_one(app: &App, u: &crate::model::UpdateScheduleJob) -> Result<(), ApiError> {
    let stored = match (&u.id, &u.name) {
        (Some(id), _) if !id.is_empty() => app.store.job_by_id(id).await?,
        (_, Some(name)) => app.store.job(name).await?,
        _ => None,
    };
    let what =
        u.id.clone()
            .filter(|i| !i.is_empty())
            .or_else(|| u.name.clone())
            .unwrap_or_default();
    let stored = stored.ok_or_else(|| ApiError::not_found(format!("no schedule job {what}")))?;
    if let Some(name) = &u.name
        && *name != stored.job.name
    {
        return Err(ApiError::bad_request(format!(
            "schedule job name '{name}' does not match the existing '{}'",
            stored.job.name
        )));
    }
    let mut job = u.apply(&stored.job);
    job.modified = now_ms();
    // New actions have new ids: the records of the old ones stay theirs.
    let action_ids = if u.actions.is_some() {
        action_ids(job.actions.len())
    } else {
        stored.action_ids.clone()
    };
    let updated = StoredJob { job, action_ids };
    app.store.update_job(updated.clone()).await?;
    tracing::info!(job = updated.job.name, "schedule job changed");
    app.scheduler.put(updated);
    Ok(())
}

async fn all_jobs(State(app): St, Query(q): Query<ListParams>) -> Result<Response, ApiError> {
    let (offset, limit) = q.page(&app)?;
    let labels = q
        .labels
        .as_deref()
        .map(|l| {
            l.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let (total, jobs) = app.store.jobs(labels, offset, limit).await?;
    edgex::paged("scheduleJobs", offset, total, jobs)
}

async fn job(State(app): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    match app.store.job(&name).await? {
        Some(s) => Ok(axum::Json(
            json!({"apiVersion": "v3", "statusCode": 200, "scheduleJob": s.job}),
        )
        .into_response()),
        None => Err(ApiError::not_found(format!("no schedule job {name}"))),
    }
}

async fn delete_job(State(app): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    if !app.store.delete_job(&name).await? {
        return Err(ApiError::not_found(format!("no schedule job {name}")));
    }
    app.scheduler.remove(&name);
    tracing::info!(job = name, "schedule job removed");
    Ok(axum::Json(BaseResponse::new(200)).into_response())
}

/// Runs a job now. The answer waits (up to a few seconds) for its actions, so their
/// records are there when it comes.
async fn trigger(State(app): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    let runs = app
        .scheduler
        .trigger(&name)
        .ok_or_else(|| ApiError::not_found(format!("no schedule job {name}")))?;
    let _ =
        tokio::time::timeout(Duration::from_secs(5), futures_util::future::join_all(runs)).await;
    Ok((StatusCode::ACCEPTED, axum::Json(BaseResponse::new(202))).into_response())
}

async fn records_where(
    app: &App,
    q: &ListParams,
    job: Option<String>,
    status: Option<String>,
) -> Result<Response, ApiError> {
    let (offset, limit) = q.page(app)?;
    let f = RecordFilter {
        job,
        status,
        created: q.window()?,
    };
    let (total, records) = app.store.records(f, offset, limit).await?;
    edgex::paged("scheduleActionRecords", offset, total, records)
}

async fn all_records(State(app): St, Query(q): Query<ListParams>) -> Result<Response, ApiError> {
    records_where(&app, &q, None, None).await
}

async fn records_by_status(
    State(app): St,
    Path(status): Path<String>,
    Query(q): Query<ListParams>,
) -> Result<Response, ApiError> {
    records_where(&app, &q, None, Some(status)).await
}

async fn records_by_job(
    State(app): St,
    Path(name): Path<String>,
    Query(q): Query<ListParams>,
) -> Result<Response, ApiError> {
    records_where(&app, &q, Some(name), None).await
}

async fn records_by_job_and_status(
    State(app): St,
    Path((name, status)): Path<(String, String)>,
    Query(q): Query<ListParams>,
) -> Result<Response, ApiError> {
    records_where(&app, &q, Some(name), Some(status)).await
}

async fn latest_records(State(app): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    if app.store.job(&name).await?.is_none() {
        return Err(ApiError::not_found(format!("no schedule job {name}")));
    }
    let latest: Vec<_> = app
        .store
        .latest(&name)
        .await?
        .into_iter()
        .map(|r| r.record)
        .collect();
    let total = latest.len() as u64;
    edgex::paged("scheduleActionRecords", 0, total, latest)
}

async fn add_secret(State(app): St, body: Bytes) -> Result<Response, ApiError> {
    let req = edgex::SecretRequest::parse(&body)?;
    app.store
        .put_secret(req.secret_name.clone(), req.pairs())
        .await?;
    Ok(req.created())
}
