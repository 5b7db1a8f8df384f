//! Every route of ota's API, each to the handler of the module it belongs to: artifacts
//! ([`crate::artifacts`]), rollouts and the device protocol ([`crate::fleet`]), inventory and
//! groups ([`crate::inventory`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};

use crate::artifacts::{self, Artifacts};
use crate::fleet::{self, Fleet};
use crate::inventory::{self, Inventory};

/// What the routes are served from.
pub struct App {
    pub artifacts: Arc<Artifacts>,
    pub fleet: Arc<Fleet>,
    pub inventory: Arc<Inventory>,
}

pub fn router(app: &App) -> Router {
    let artifacts = Router::new()
        .route(
            "/api/v3/artifact",
            // Payloads are streamed to disk, not held: the node's body limit does not apply.
            post(artifacts::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v3/artifact/all", get(artifacts::all))
        .route(
            "/api/v3/artifact/name/{name}/version/{version}",
            get(artifacts::one).delete(artifacts::remove),
        )
        .route(
            "/api/v3/artifact/name/{name}/version/{version}/payload",
            get(artifacts::payload),
        )
        .with_state(Arc::clone(&app.artifacts));
    let fleet = Router::new()
        .route("/api/v3/rollout", post(fleet::create))
        .route("/api/v3/rollout/all", get(fleet::all))
        .route("/api/v3/rollout/name/{name}", get(fleet::one))
        .route("/api/v3/rollout/name/{name}/{action}", post(fleet::control))
        .route(
            "/api/v3/rollout/name/{name}/device/{device}",
            get(fleet::device_history),
        )
        .route("/api/v3/ddi/{device}", get(fleet::poll))
        .route(
            "/api/v3/ddi/{device}/action/{rollout}/feedback",
            post(fleet::feedback),
        )
        .route(
            "/api/v3/ddi/{device}/action/{rollout}/payload",
            get(fleet::payload),
        )
        .with_state(Arc::clone(&app.fleet));
    let inventory = Router::new()
        .route(
            "/api/v3/ddi/{device}/attributes",
            put(inventory::put_attributes),
        )
        .route("/api/v3/inventory/all", get(inventory::all))
        .route("/api/v3/inventory/name/{device}", get(inventory::one))
        .route("/api/v3/group", post(inventory::group_create))
        .route("/api/v3/group/all", get(inventory::group_all))
        .route(
            "/api/v3/group/name/{name}",
            get(inventory::group_one).delete(inventory::group_delete),
        )
        .with_state(Arc::clone(&app.inventory));
    artifacts.merge(fleet).merge(inventory)
}
