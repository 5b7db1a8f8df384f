//! HTTP API: pipelines added, listed with what each did, and removed.
//!
//! - `POST /api/v3/pipeline`: a pipeline spec (JSON); 201, 400 for an invalid spec, 409
//!   for a name already running (configured or added).
//! - `GET /api/v3/pipeline/all`, `GET /api/v3/pipeline/name/{name}`: the spec, where it
//!   comes from (`config` or `api`) and its counts (readings in and out, events out,
//!   alerts, late readings, and the reduction in/out).
//! - `DELETE /api/v3/pipeline/name/{name}`: only pipelines added over the API (409 for a
//!   configured one: the file is its home).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use outpost_kit::ApiError;
use outpost_kit::error::{Path, parse_json};
use serde_json::{Value, json};

use crate::engine::{Engine, Pipeline, Source};
use crate::pipeline::PipelineSpec;
use crate::store::PipelineStore;

pub struct App {
    pub engine: Arc<Engine>,
    /// Where pipelines added over the API are kept.
    pub store: Arc<dyn PipelineStore>,
}

type St = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/v3/pipeline", post(add))
        .route("/api/v3/pipeline/all", get(all))
        .route("/api/v3/pipeline/name/{name}", get(one).delete(remove))
        .with_state(app)
}

fn view(p: &Pipeline) -> Value {
    let t = p.totals();
    json!({
        "pipeline": p.spec,
        "source": p.source,
        "readingsIn": t.readings_in,
        "readingsOut": t.readings_out,
        "eventsOut": t.events_out,
        "alerts": t.alerts,
        "late": t.late,
        "outputsWaiting": t.waiting,
        "reduction": (t.readings_out > 0).then(|| t.readings_in as f64 / t.readings_out as f64),
    })
}

fn find(app: &App, name: &str) -> Result<Arc<Pipeline>, ApiError> {
    app.engine
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no pipeline {name}")))
}

async fn all(State(app): St) -> Response {
    let list: Vec<_> = app.engine.pipelines().iter().map(|p| view(p)).collect();
    Json(
        json!({"apiVersion": "v3", "statusCode": 200, "totalCount": list.len(), "pipelines": list}),
    )
    .into_response()
}

async fn one(State(app): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    let p = find(&app, &name)?;
    let mut v = view(&p);
    v["apiVersion"] = "v3".into();
    v["statusCode"] = 200.into();
    Ok(Json(v).into_response())
}

async fn add(State(app): St, body: Bytes) -> Result<Response, ApiError> {
    let spec: PipelineSpec = parse_json(&body)?;
    spec.check().map_err(ApiError::bad_request)?;
    if app.engine.get(&spec.name).is_some() {
        return Err(ApiError::conflict(format!("pipeline {} exists", spec.name)));
    }
    // Stored first: a pipeline runs only once it will run again after a restart.
    app.store.add(&spec).await.map_err(ApiError::internal)?;
    tracing::info!(pipeline = spec.name, "pipeline added");
    let name = spec.name.clone();
    app.engine.insert(spec);
    Ok((
        StatusCode::CREATED,
        Json(json!({"apiVersion": "v3", "statusCode": 201, "name": name})),
    )
        .into_response())
}

async fn remove(State(app): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    let p = find(&app, &name)?;
    if p.source == Source::Config {
        return Err(ApiError::conflict(format!(
            "pipeline {name} comes from the configuration file; remove it there"
        )));
    }
    app.store.remove(&name).await.map_err(ApiError::internal)?;
    app.engine.remove(&name);
    tracing::info!(pipeline = name, "pipeline removed");
    Ok(Json(json!({"apiVersion": "v3", "statusCode": 200})).into_response())
}
