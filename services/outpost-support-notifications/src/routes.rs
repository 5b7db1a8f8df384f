//! The EdgeX 4 support-notifications API (`/api/v3/...` on port 59860).
//!
//! Batch writes (`POST /notification`, `POST` and `PATCH /subscription`) take a JSON array
//! and answer 207 with one entry per item, in order; a body that does not parse, or any
//! item that fails validation, is a 400 for the whole request and nothing is stored.
//! Lists are paged (`offset`, `limit` up to `max_result_count`, `-1` for that many; an
//! offset beyond the items is a 416) and newest first.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use outpost_contracts::common::BaseResponse;
use outpost_kit::ApiError;
use outpost_kit::edgex;
use outpost_kit::error::{Path, Query, parse_json};
use serde::Deserialize;
use serde_json::json;

use crate::deliver::{Delivery, now_ms};
use crate::model::{
    AddNotificationRequest, AddSubscriptionRequest, NOTIFICATION_STATUSES, Problems,
    QueryNotificationRequest, Subscription, UpdateSubscriptionRequest, status,
};
use crate::store::{
    NotificationFilter, NotificationStore, StoreError, SubscriptionFilter, TransmissionFilter,
};

pub struct App {
    pub store: Arc<dyn NotificationStore>,
    pub delivery: Arc<Delivery>,
    pub max_result_count: u64,
}

type St = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/api/v3/notification",
            post(add_notifications).get(query_notifications),
        )
        .route(
            "/api/v3/notification/id/{id}",
            get(notification).delete(delete_notification),
        )
        .route(
            "/api/v3/notification/ids/{ids}",
            delete(delete_notifications),
        )
        .route(
            "/api/v3/notification/category/{category}",
            by(|category| {
                Ok(NotificationFilter {
                    categories: vec![category],
                    ..NotificationFilter::default()
                })
            }),
        )
        .route(
            "/api/v3/notification/label/{label}",
            by(|label| {
                Ok(NotificationFilter {
                    labels: vec![label],
                    ..NotificationFilter::default()
                })
            }),
        )
        .route(
            "/api/v3/notification/status/{status}",
            by(|status| {
                Ok(NotificationFilter {
                    status: Some(one_of("status", status, NOTIFICATION_STATUSES)?),
                    ..NotificationFilter::default()
                })
            }),
        )
        .route(
            "/api/v3/notification/start/{start}/end/{end}",
            by_time(|created| NotificationFilter {
                created: Some(created),
                ..NotificationFilter::default()
            }),
        )
        .route(
            "/api/v3/notification/subscription/name/{name}",
            get(notifications_by_subscription),
        )
        .route(
            "/api/v3/notification/acknowledge/ids/{ids}",
            put(acknowledge),
        )
        .route(
            "/api/v3/notification/unacknowledge/ids/{ids}",
            put(unacknowledge),
        )
        .route(
            "/api/v3/notification/age/{age}",
            delete(delete_processed_by_age),
        )
        .route("/api/v3/cleanup", delete(cleanup))
        .route("/api/v3/cleanup/age/{age}", delete(cleanup_by_age))
        .route(
            "/api/v3/subscription",
            post(add_subscriptions).patch(patch_subscriptions),
        )
        .route("/api/v3/subscription/all", all::<SubscriptionFilter>())
        .route(
            "/api/v3/subscription/category/{category}",
            by(|category| {
                Ok(SubscriptionFilter {
                    category: Some(category),
                    ..SubscriptionFilter::default()
                })
            }),
        )
        .route(
            "/api/v3/subscription/label/{label}",
            by(|label| {
                Ok(SubscriptionFilter {
                    label: Some(label),
                    ..SubscriptionFilter::default()
                })
            }),
        )
        .route(
            "/api/v3/subscription/receiver/{receiver}",
            by(|receiver| {
                Ok(SubscriptionFilter {
                    receiver: Some(receiver),
                    ..SubscriptionFilter::default()
                })
            }),
        )
        .route(
            "/api/v3/subscription/name/{name}",
            get(subscription).delete(delete_subscription),
        )
        .route("/api/v3/transmission/id/{id}", get(transmission))
        .route(
            "/api/v3/transmission/age/{age}",
            delete(delete_transmissions_by_age),
        )
        .route("/api/v3/transmission/all", all::<TransmissionFilter>())
        .route(
            "/api/v3/transmission/subscription/name/{name}",
            by(|name| {
                Ok(TransmissionFilter {
                    subscription: Some(name),
                    ..TransmissionFilter::default()
                })
            }),
        )
        .route(
            "/api/v3/transmission/start/{start}/end/{end}",
            by_time(|created| TransmissionFilter {
                created: Some(created),
                ..TransmissionFilter::default()
            }),
        )
        .route(
            "/api/v3/transmission/status/{status}",
            by(|s| {
                Ok(TransmissionFilter {
                    status: Some(one_of("status", s, status::ALL)?),
                    ..TransmissionFilter::default()
                })
            }),
        )
        .route(
            "/api/v3/transmission/notification/id/{id}",
            by(|id| {
                Ok(TransmissionFilter {
                    notification_id: Some(id),
                    ..TransmissionFilter::default()
                })
            }),
        )
        .route("/api/v3/secret", post(add_secret))
        .with_state(app)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate(what) => ApiError::conflict(format!("{what} already exists")),
            StoreError::NotFound(what) => ApiError::not_found(what),
            other => ApiError::internal(other),
        }
    }
}

/// The `offset`, `limit` and `ack` query parameters of a list.
#[derive(Debug, Default, Deserialize)]
struct ListParams {
    offset: Option<String>,
    limit: Option<String>,
    ack: Option<String>,
}

impl ListParams {
    fn page(&self, app: &App) -> Result<(u64, u64), ApiError> {
        edgex::page(
            self.offset.as_deref(),
            self.limit.as_deref(),
            app.max_result_count,
        )
    }

    fn ack(&self) -> Result<Option<bool>, ApiError> {
        match self.ack.as_deref() {
            None | Some("") => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid ack value '{other}': use true or false"
            ))),
        }
    }
}

fn ok() -> Response {
    axum::Json(BaseResponse::new(200)).into_response()
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(BaseResponse::new(202))).into_response()
}

fn one(field: &str, item: impl serde::Serialize) -> Response {
    axum::Json(json!({"apiVersion": "v3", "statusCode": 200, field: item})).into_response()
}

/// A list answer, or 416 when the offset lies beyond the items.
fn list<T: serde::Serialize>(
    field: &str,
    offset: u64,
    (total, items): (u64, Vec<T>),
) -> Result<Response, ApiError> {
    edgex::paged(field, offset, total, items)
}

fn parse_ms(name: &str, v: &str) -> Result<i64, ApiError> {
    v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
        ApiError::bad_request(format!("{name} '{v}' is not a timestamp in milliseconds"))
    })
}

fn range(start: &str, end: &str) -> Result<(i64, i64), ApiError> {
    let (s, e) = (parse_ms("start", start)?, parse_ms("end", end)?);
    if e < s {
        return Err(ApiError::bad_request(format!(
            "end {e} is before start {s}"
        )));
    }
    Ok((s, e))
}

fn age_cutoff(age: &str) -> Result<i64, ApiError> {
    let age = age.parse::<i64>().ok().filter(|a| *a >= 0).ok_or_else(|| {
        ApiError::bad_request(format!("age '{age}' is not a number of milliseconds"))
    })?;
    Ok(now_ms().saturating_sub(age))
}

fn ids(list: &str) -> Result<Vec<String>, ApiError> {
    let ids: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return Err(ApiError::bad_request("no ids given"));
    }
    Ok(ids)
}

// ---- listings ----

/// What a listing route filters by, and how it lists.
trait Listing: Default + Send + 'static {
    fn list(
        app: Arc<App>,
        q: ListParams,
        filter: Self,
    ) -> impl std::future::Future<Output = Result<Response, ApiError>> + Send;
}

impl Listing for NotificationFilter {
    async fn list(app: Arc<App>, q: ListParams, filter: Self) -> Result<Response, ApiError> {
        notifications_where(&app, &q, filter).await
    }
}

impl Listing for SubscriptionFilter {
    async fn list(app: Arc<App>, q: ListParams, filter: Self) -> Result<Response, ApiError> {
        let (offset, limit) = q.page(&app)?;
        let found = app.store.subscriptions(filter, offset, limit).await?;
        list("subscriptions", offset, found)
    }
}

impl Listing for TransmissionFilter {
    async fn list(app: Arc<App>, q: ListParams, filter: Self) -> Result<Response, ApiError> {
        let (offset, limit) = q.page(&app)?;
        let found = app.store.transmissions(filter, offset, limit).await?;
        list("transmissions", offset, found)
    }
}

/// `GET` of every item.
fn all<F: Listing>() -> MethodRouter<Arc<App>> {
    get(|State(app): St, Query(q): Query<ListParams>| F::list(app, q, F::default()))
}

/// `GET` of the items matching the route's one path parameter, made a filter by `filter`.
fn by<F: Listing>(filter: fn(String) -> Result<F, ApiError>) -> MethodRouter<Arc<App>> {
    get(
        move |State(app): St, Path(p): Path<String>, Query(q): Query<ListParams>| async move {
            F::list(app, q, filter(p)?).await
        },
    )
}

/// `GET` of the items created between the route's `start` and `end` (ms).
fn by_time<F: Listing>(filter: fn((i64, i64)) -> F) -> MethodRouter<Arc<App>> {
    get(
        move |State(app): St,
              Path((start, end)): Path<(String, String)>,
              Query(q): Query<ListParams>| async move {
            F::list(app, q, filter(range(&start, &end)?)).await
        },
    )
}

/// `value`, if it is one of `allowed` (a 400 naming them otherwise).
fn one_of(name: &str, value: String, allowed: &[&str]) -> Result<String, ApiError> {
    if allowed.contains(&value.as_str()) {
        return Ok(value);
    }
    Err(ApiError::bad_request(format!(
        "{name} '{value}' should be one of {}",
        allowed.join(" ")
    )))
}

// ---- notifications ----

async fn add_notifications(State(app): St, body: Bytes) -> Result<Response, ApiError> {
    let reqs: Vec<AddNotificationRequest> = edgex::batch(&body)?;
    let items = edgex::checked(
        reqs.into_iter().map(|r| (r.base, r.notification)).collect(),
        "notification",
        |n| Problems::of(|p| n.validate(p)),
    )?;
    // One commit for the whole batch; each item its own outcome.
    let (request_ids, batch): (Vec<_>, Vec<_>) = items.into_iter().unzip();
    let outcomes = app.delivery.accept_all(batch).await?;
    let entries = request_ids
        .iter()
        .zip(outcomes)
        .map(|(rid, outcome)| {
            let result = outcome
                .map(|n| (StatusCode::CREATED, n.id))
                .map_err(ApiError::from);
            edgex::item(rid, result)
        })
        .collect();
    Ok(edgex::multi_status(entries))
}

async fn query_notifications(
    State(app): St,
    Query(q): Query<ListParams>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "invalid request body: a queryCondition is required",
        ));
    }
    let req: QueryNotificationRequest = parse_json(&body)?;
    req.base.check().map_err(ApiError::bad_request)?;
    let cond = req
        .query_condition
        .ok_or_else(|| ApiError::bad_request("queryCondition is required"))?;
    let (offset, limit) = q.page(&app)?;
    // EdgeX reads an end before the start (or none) as "no end".
    let end = if cond.end <= cond.start {
        7_289_539_200_000
    } else {
        cond.end
    };
    let f = NotificationFilter {
        categories: cond.category,
        created: Some((cond.start.max(0), end)),
        acknowledged: q.ack()?,
        ..NotificationFilter::default()
    };
    list(
        "notifications",
        offset,
        app.store.notifications(f, offset, limit).await?,
    )
}

async fn notification(State(app): St, Path(id): Path<String>) -> Result<Response, ApiError> {
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::bad_request(format!(
            "ID '{id}' is not a valid UUID"
        )));
    }
    match app.store.notification(&id).await? {
        Some(n) => Ok(one("notification", n)),
        None => Err(ApiError::not_found(format!("no notification with id {id}"))),
    }
}

async fn delete_notification(State(app): St, Path(id): Path<String>) -> Result<Response, ApiError> {
    if app.store.delete_notifications(vec![id.clone()]).await? {
        Ok(ok())
    } else {
        Err(ApiError::not_found(format!("no notification with id {id}")))
    }
}

async fn delete_notifications(
    State(app): St,
    Path(list): Path<String>,
) -> Result<Response, ApiError> {
    app.store.delete_notifications(ids(&list)?).await?;
    Ok(ok())
}

async fn notifications_where(
    app: &App,
    q: &ListParams,
    mut f: NotificationFilter,
) -> Result<Response, ApiError> {
    let (offset, limit) = q.page(app)?;
    f.acknowledged = q.ack()?;
    list(
        "notifications",
        offset,
        app.store.notifications(f, offset, limit).await?,
    )
}

async fn notifications_by_subscription(
    State(app): St,
    Path(name): Path<String>,
    Query(q): Query<ListParams>,
) -> Result<Response, ApiError> {
    q.page(&app)?;
    let sub = app
        .store
        .subscription(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no subscription {name}")))?;
    let f = NotificationFilter {
        categories: sub.categories,
        labels: sub.labels,
        either: true,
        ..NotificationFilter::default()
    };
    notifications_where(&app, &q, f).await
}

async fn acknowledge(State(app): St, Path(list): Path<String>) -> Result<Response, ApiError> {
    app.store.acknowledge(ids(&list)?, true, now_ms()).await?;
    Ok(ok())
}

async fn unacknowledge(State(app): St, Path(list): Path<String>) -> Result<Response, ApiError> {
    app.store.acknowledge(ids(&list)?, false, now_ms()).await?;
    Ok(ok())
}

async fn delete_processed_by_age(
    State(app): St,
    Path(age): Path<String>,
) -> Result<Response, ApiError> {
    let n = app
        .store
        .delete_notifications_before(age_cutoff(&age)?, true)
        .await?;
    tracing::info!(deleted = n, "processed notifications removed by age");
    Ok(accepted())
}

async fn cleanup(State(app): St) -> Result<Response, ApiError> {
    let n = app
        .store
        .delete_notifications_before(i64::MAX, false)
        .await?;
    tracing::info!(deleted = n, "every notification removed");
    Ok(accepted())
}

async fn cleanup_by_age(State(app): St, Path(age): Path<String>) -> Result<Response, ApiError> {
    let n = app
        .store
        .delete_notifications_before(age_cutoff(&age)?, false)
        .await?;
    tracing::info!(deleted = n, "notifications removed by age");
    Ok(accepted())
}

// ---- subscriptions ----

async fn add_subscriptions(State(app): St, body: Bytes) -> Result<Response, ApiError> {
    let reqs: Vec<AddSubscriptionRequest> = edgex::batch(&body)?;
    let items = edgex::checked(
        reqs.into_iter().map(|r| (r.base, r.subscription)).collect(),
        "subscription",
        |s| Problems::of(|p| s.validate(p)),
    )?;
    let mut entries = Vec::with_capacity(items.len());
    for (request_id, mut s) in items {
        if s.id.is_empty() {
            s.id = uuid::Uuid::new_v4().to_string();
        }
        let now = now_ms();
        (s.created, s.modified) = (now, now);
        let id = s.id.clone();
        let result = app
            .store
            .add_subscription(s)
            .await
            .map(|()| (StatusCode::CREATED, id))
            .map_err(ApiError::from);
        entries.push(edgex::item(&request_id, result));
    }
    Ok(edgex::multi_status(entries))
}

async fn patch_subscriptions(State(app): St, body: Bytes) -> Result<Response, ApiError> {
    let reqs: Vec<UpdateSubscriptionRequest> = edgex::batch(&body)?;
    let items = edgex::checked(
        reqs.into_iter().map(|r| (r.base, r.subscription)).collect(),
        "subscription",
        |u| Problems::of(|p| u.validate(p)),
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

async fn patch_one(app: &App, u: &crate::model::UpdateSubscription) -> Result<(), ApiError> {
    let stored = match (&u.id, &u.name) {
        (Some(id), _) if !id.is_empty() => app.store.subscription_by_id(id).await?,
        (_, Some(name)) => app.store.subscription(name).await?,
        _ => None,
    };
    let what =
        u.id.clone()
            .filter(|i| !i.is_empty())
            .or_else(|| u.name.clone())
            .unwrap_or_default();
    let stored = stored.ok_or_else(|| ApiError::not_found(format!("no subscription {what}")))?;
    if let Some(name) = &u.name
        && *name != stored.name
    {
        return Err(ApiError::bad_request(format!(
            "subscription name '{name}' does not match the existing '{}'",
            stored.name
        )));
    }
    let mut s: Subscription = u.apply(&stored);
    if s.categories.is_empty() && s.labels.is_empty() {
        return Err(ApiError::bad_request(
            "categories and labels can not be both empty",
        ));
    }
    s.modified = now_ms();
    app.store.update_subscription(s).await?;
    Ok(())
}

async fn subscription(State(app): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    match app.store.subscription(&name).await? {
        Some(s) => Ok(one("subscription", s)),
        None => Err(ApiError::not_found(format!("no subscription {name}"))),
    }
}

async fn delete_subscription(
    State(app): St,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if app.store.delete_subscription(&name).await? {
        Ok(ok())
    } else {
        Err(ApiError::not_found(format!("no subscription {name}")))
    }
}

// ---- transmissions ----

async fn transmission(State(app): St, Path(id): Path<String>) -> Result<Response, ApiError> {
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::bad_request(format!(
            "ID '{id}' is not a valid UUID"
        )));
    }
    match app.store.transmission(&id).await? {
        Some(t) => Ok(one("transmission", t)),
        None => Err(ApiError::not_found(format!("no transmission with id {id}"))),
    }
}

async fn delete_transmissions_by_age(
    State(app): St,
    Path(age): Path<String>,
) -> Result<Response, ApiError> {
    let n = app
        .store
        .delete_transmissions_before(age_cutoff(&age)?)
        .await?;
    tracing::info!(deleted = n, "finished transmissions removed by age");
    Ok(accepted())
}

// ---- secrets ----

/// Stores a secret the senders use (`smtp`, or an MQTT channel's `secretPath`).
async fn add_secret(State(app): St, body: Bytes) -> Result<Response, ApiError> {
    let req = edgex::SecretRequest::parse(&body)?;
    app.store
        .put_secret(req.secret_name.clone(), req.pairs())
        .await?;
    Ok(req.created())
}
