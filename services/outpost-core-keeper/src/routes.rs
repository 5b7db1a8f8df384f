//! HTTP API: EdgeX core-keeper v3 (`/registry`, `/kvs`) plus heartbeats and watches.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/api/v3/registry` | 201; 400 invalid; 409 already registered |
//! | PUT | `/api/v3/registry` | 204; 400; 404 |
//! | GET | `/api/v3/registry/all?deregistered=&waitIndex=&waitMs=` | 200, long-polls when `waitIndex` is given |
//! | GET/DELETE | `/api/v3/registry/serviceId/{id}` | 200 / 204; 404 |
//! | PUT | `/api/v3/registry/serviceId/{id}/heartbeat` | 200; 404 (register again) |
//! | GET | `/api/v3/registry/watch` | server-sent events, one per change |
//! | GET/PUT/DELETE | `/api/v3/kvs/key/{key}` | EdgeX key/value API |
//! | GET | `/api/v3/kvs/key/{prefix}?waitIndex=&waitMs=` | long-polls until a key changes |
//!
//! Every key/value answer carries `X-Outpost-Kv-Index`, which grows with each change to the
//! store (it starts from the clock, so it keeps growing across restarts): a watcher passes
//! the last one it saw as `waitIndex` and is answered once something changed, or after
//! `waitMs`. Services watch their `edgex/v4/<service>/Writable` keys this way
//! (`outpost_kit::writable`). With mutual TLS between services a service may write and
//! delete only keys under its own `edgex/v4/<service>/`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine as _;
use outpost_contracts::common::{BaseResponse, BaseWithTotalCountResponse};
use outpost_contracts::now_millis;
use outpost_contracts::registry::{
    AddRegistrationRequest, KeyValue, KvRequest, KvResponse, MultiRegistrationsResponse,
    RegistrationResponse,
};
use outpost_kit::error::{ApiError, Json, Path, Query};
use serde::Deserialize;

use crate::registry::{Registry, RegistryError};
use crate::store::{Deleted, Store};

pub struct AppState {
    pub registry: Arc<Registry>,
    pub store: Arc<dyn Store>,
    pub max_wait_ms: u64,
    /// Requests waiting in a long-poll on the registry now.
    pub registry_polls: metrics::Gauge,
    /// Requests waiting in a long-poll on the key/value store now.
    pub kv_polls: metrics::Gauge,
    /// Grows with every key/value change (see the module documentation).
    pub kv_index: tokio::sync::watch::Sender<u64>,
}

/// The header carrying the key/value store's change index.
pub const KV_INDEX_HEADER: &str = "x-outpost-kv-index";

impl AppState {
    fn kv_changed(&self) {
        let now = u64::try_from(now_millis()).unwrap_or_default();
        self.kv_index.send_modify(|i| *i = (*i + 1).max(now));
    }

    fn kv_index_header(&self) -> [(&'static str, String); 1] {
        [(KV_INDEX_HEADER, self.kv_index.borrow().to_string())]
    }

    /// Waits up to `wait_ms` (capped) until `index` passes `seen`, counted among the
    /// waiting long-polls meanwhile (also when the client goes away first).
    async fn long_poll(
        &self,
        mut rx: tokio::sync::watch::Receiver<u64>,
        waiting: &metrics::Gauge,
        seen: u64,
        wait_ms: Option<u64>,
    ) {
        struct Waiting<'a>(&'a metrics::Gauge);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.decrement(1.0);
            }
        }
        let wait = Duration::from_millis(wait_ms.unwrap_or(30_000).min(self.max_wait_ms));
        waiting.increment(1.0);
        let _waiting = Waiting(waiting);
        let _ = tokio::time::timeout(wait, rx.wait_for(|i| *i > seen)).await;
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/api/v3/registry",
            axum::routing::post(register).put(update),
        )
        .route("/api/v3/registry/all", get(all))
        .route("/api/v3/registry/watch", get(watch))
        .route(
            "/api/v3/registry/serviceId/{id}",
            get(get_one).delete(deregister),
        )
        .route("/api/v3/registry/serviceId/{id}/heartbeat", put(heartbeat))
        .route(
            "/api/v3/kvs/key/{*key}",
            get(kv_get).put(kv_put).delete(kv_delete),
        )
        .with_state(state)
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(m) => ApiError::bad_request(m),
            RegistryError::Conflict(_) => ApiError::conflict(e.to_string()),
            RegistryError::NotFound(_) => ApiError::not_found(e.to_string()),
            RegistryError::Storage(s) => ApiError::internal(s),
        }
    }
}

fn check_request(req: &AddRegistrationRequest) -> Result<(), ApiError> {
    req.base.check().map_err(ApiError::bad_request)
}

/// Who called, with mutual TLS between services (see `outpost_kit::internal`).
type Caller = Option<axum::Extension<outpost_kit::internal::Caller>>;

/// With mutual TLS between services, an instance registers, updates, heartbeats and
/// deregisters only itself (a compromised service cannot take another's place); the
/// node's administrator may act for any. Without it, EdgeX's open registry.
fn may_act_for(caller: &Caller, service_id: &str) -> Result<(), ApiError> {
    match caller.as_ref().and_then(|c| c.0.0.as_ref()) {
        Some(outpost_kit::internal::Identity::Service(id)) if id != service_id => {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("{id} may register only itself, not '{service_id}'"),
            ))
        }
        _ => Ok(()),
    }
}

async fn register(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Json(req): Json<AddRegistrationRequest>,
) -> Result<Response, ApiError> {
    check_request(&req)?;
    may_act_for(&caller, &req.registration.service_id)?;
    st.registry.register(req.registration).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(BaseResponse::new(201).with_request_id(req.base.request_id)),
    )
        .into_response())
}

async fn update(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Json(req): Json<AddRegistrationRequest>,
) -> Result<StatusCode, ApiError> {
    check_request(&req)?;
    may_act_for(&caller, &req.registration.service_id)?;
    st.registry.update(req.registration).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct AllParams {
    #[serde(deserialize_with = "outpost_contracts::common::query_bool")]
    deregistered: bool,
    wait_index: Option<u64>,
    wait_ms: Option<u64>,
}

async fn all(
    State(st): State<Arc<AppState>>,
    Query(p): Query<AllParams>,
) -> axum::Json<MultiRegistrationsResponse> {
    if let Some(seen) = p.wait_index {
        st.long_poll(
            st.registry.index_changes(),
            &st.registry_polls,
            seen,
            p.wait_ms,
        )
        .await;
    }
    let (index, regs) = st.registry.list(p.deregistered);
    axum::Json(MultiRegistrationsResponse {
        page: BaseWithTotalCountResponse {
            base: BaseResponse::new(200),
            total_count: regs.len() as u64,
        },
        registrations: regs,
        index: Some(index),
    })
}

async fn watch(
    State(st): State<Arc<AppState>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let rx = st.registry.subscribe_changes();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(change) => Event::default()
                .event("change")
                .id(change.index.to_string())
                .json_data(&change)
                .unwrap_or_else(|_| Event::default().comment("unencodable change")),
            // The watcher fell behind: tell it to resync with a full listing.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                Event::default().event("resync").data(n.to_string())
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn get_one(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<axum::Json<RegistrationResponse>, ApiError> {
    let reg = st
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("service '{id}' is not registered")))?;
    Ok(axum::Json(RegistrationResponse {
        base: BaseResponse::new(200),
        registration: reg,
    }))
}

async fn deregister(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    may_act_for(&caller, &id)?;
    st.registry.deregister(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn heartbeat(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    may_act_for(&caller, &id)?;
    st.registry.heartbeat(&id).await?;
    Ok(axum::Json(BaseResponse::new(200)))
}

// ---- key/value ----

const MAX_KEY_LEN: usize = 512;

fn check_key(key: &str) -> Result<&str, ApiError> {
    let key = key.trim_end_matches('/');
    let bad = key.is_empty()
        || key.len() > MAX_KEY_LEN
        || key.starts_with('/')
        || key.split('/').any(str::is_empty)
        || key.chars().any(char::is_control);
    if bad {
        return Err(ApiError::bad_request(format!(
            "key '{key}' must be 1..={MAX_KEY_LEN} characters of non-empty '/'-separated segments"
        )));
    }
    Ok(key)
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct GetParams {
    #[serde(deserialize_with = "outpost_contracts::common::query_bool")]
    plaintext: bool,
    #[serde(deserialize_with = "outpost_contracts::common::query_bool")]
    key_only: bool,
    wait_index: Option<u64>,
    wait_ms: Option<u64>,
}

/// A value in the text form the store keeps: strings as they are, everything else as JSON
/// (`25000`, `true`, `[1,2]`), the way EdgeX's configuration clients read them back.
fn kv_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// EdgeX returns stored values base64-encoded unless `plaintext=true`.
fn render_value(v: &serde_json::Value, plaintext: bool) -> serde_json::Value {
    let text = kv_text(v);
    if plaintext {
        return serde_json::Value::String(text);
    }
    serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(text))
}

async fn kv_get(
    State(st): State<Arc<AppState>>,
    Path(key): Path<String>,
    Query(p): Query<GetParams>,
) -> Result<Response, ApiError> {
    let key = check_key(&key)?;
    if let Some(seen) = p.wait_index {
        st.long_poll(st.kv_index.subscribe(), &st.kv_polls, seen, p.wait_ms)
            .await;
    }
    // Read before the listing: a change racing the read is seen again by the next wait.
    let index = st.kv_index_header();
    let found = st.store.kv_get(key.to_string()).await?;
    if found.is_empty() {
        let e = ApiError::not_found(format!("key '{key}' does not exist"));
        return Ok((index, e).into_response());
    }
    if p.key_only {
        return Ok((
            index,
            axum::Json(KvResponse {
                base: BaseResponse::new(200),
                response: found.into_iter().map(|kv| kv.key).collect::<Vec<_>>(),
            }),
        )
            .into_response());
    }
    let list = found
        .into_iter()
        .map(|kv| KeyValue {
            created: kv.created,
            modified: kv.modified,
            value: render_value(&kv.value, p.plaintext),
            key: kv.key,
        })
        .collect::<Vec<_>>();
    Ok((
        index,
        axum::Json(KvResponse {
            base: BaseResponse::new(200),
            response: list,
        }),
    )
        .into_response())
}

/// With mutual TLS between services, a service writes only its own keys
/// (`edgex/v4/<service>/...`); the node's administrator writes any.
fn may_write(caller: &Caller, key: &str) -> Result<(), ApiError> {
    match caller.as_ref().and_then(|c| c.0.0.as_ref()) {
        Some(id @ outpost_kit::internal::Identity::Service(_)) => {
            let service = id.service().unwrap_or_default();
            let own = format!("edgex/v4/{service}/");
            if key.starts_with(&own) {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("{service} may write only keys under '{own}', not '{key}'"),
                ))
            }
        }
        _ => Ok(()),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PutParams {
    #[serde(deserialize_with = "outpost_contracts::common::query_bool")]
    flatten: bool,
}

/// Flattens nested objects into `key/sub/leaf` pairs; nulls and empty objects hold no
/// setting and are left out.
pub fn flatten(key: &str, value: serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{key}/{k}"), v, out);
            }
        }
        serde_json::Value::Null => {}
        leaf => out.push((key.to_string(), leaf)),
    }
}

async fn kv_put(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(key): Path<String>,
    Query(p): Query<PutParams>,
    Json(req): Json<KvRequest>,
) -> Result<axum::Json<KvResponse<String>>, ApiError> {
    let key = check_key(&key)?;
    let mut pairs = Vec::new();
    if p.flatten {
        flatten(key, req.value, &mut pairs);
    } else {
        pairs.push((key.to_string(), req.value));
    }
    if pairs.is_empty() {
        return Err(ApiError::bad_request(
            "the value holds no settings to store",
        ));
    }
    // Each key written, flattened or not, is checked (a service may upload its own
    // configuration whole with `flatten=true`).
    for (k, _) in &pairs {
        check_key(k)?;
        may_write(&caller, k)?;
    }
    let pairs = pairs
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(kv_text(&v))))
        .collect();
    let keys = st.store.kv_put(pairs, now_millis()).await?;
    st.kv_changed();
    Ok(axum::Json(KvResponse {
        base: BaseResponse::new(200),
        response: keys,
    }))
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct DeleteParams {
    #[serde(deserialize_with = "outpost_contracts::common::query_bool")]
    prefix_match: bool,
}

async fn kv_delete(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(key): Path<String>,
    Query(p): Query<DeleteParams>,
) -> Result<axum::Json<KvResponse<String>>, ApiError> {
    let key = check_key(&key)?;
    may_write(&caller, key)?;
    let deleted = match st.store.kv_delete(key.to_string(), p.prefix_match).await? {
        Deleted::Keys(keys) => keys,
        Deleted::HasChildren => {
            return Err(ApiError::conflict(format!(
                "key '{key}' has keys below it; delete them with prefixMatch=true"
            )));
        }
    };
    if deleted.is_empty() {
        return Err(ApiError::not_found(format!("key '{key}' does not exist")));
    }
    st.kv_changed();
    Ok(axum::Json(KvResponse {
        base: BaseResponse::new(200),
        response: deleted,
    }))
}
