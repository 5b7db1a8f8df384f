//! HTTP API: the EdgeX core-metadata v3 endpoints (see `core-metadata.yaml`).
//!
//! Batch endpoints (`POST /device`, `PATCH /deviceservice`, ...) take a JSON array and answer
//! 207 with one status per item, as EdgeX does: a bad item never affects the others, and a
//! body that is not a JSON array of requests is a 400 for the whole call.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use outpost_contracts::common::{
    BaseRequest, BaseResponse, BaseWithIdResponse, BaseWithTotalCountResponse, Paging,
};
use outpost_contracts::metadata::{
    AddDeviceProfileRequest, AddDeviceRequest, AddDeviceServiceRequest, AddProvisionWatcherRequest,
    Device, DeviceAuthRequest, DeviceCertificateRequest, DeviceCertificateResponse,
    DeviceCommandRequest, DeviceProfile, DeviceProfileBasicInfoRequest, DeviceProfileResponse,
    DeviceProfileTagsRequest, DeviceResourceRequest, DeviceResourceResponse, DeviceResponse,
    DeviceSecretRequest, DeviceSecretResponse, DeviceService, DeviceServiceResponse,
    MultiDeviceProfileBasicInfosResponse, MultiDeviceProfilesResponse, MultiDeviceServicesResponse,
    MultiDevicesResponse, MultiProvisionWatchersResponse, ProvisionWatcher,
    ProvisionWatcherResponse, UnitsOfMeasureResponse, UpdateDeviceCommandRequest,
    UpdateDeviceProfileRequest, UpdateDeviceRequest, UpdateDeviceResourceRequest,
    UpdateDeviceServiceRequest, UpdateProvisionWatcherRequest,
};
use outpost_contracts::names;
use outpost_kit::error::{ApiError, Body, Path, Query, parse_json};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::service::Metadata;
use crate::store::Filter;

pub struct App {
    pub md: Metadata,
    pub max_result_count: u64,
}

type St = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        // devices
        .route("/api/v3/device", post(add_devices).patch(update_devices))
        .route("/api/v3/device/all", get(all_devices))
        .route("/api/v3/device/check/name/{name}", get(check_device))
        .route(
            "/api/v3/device/name/{name}",
            get(device_by_name).delete(delete_device),
        )
        .route(
            "/api/v3/device/name/{name}/secret",
            axum::routing::put(set_secret).delete(delete_secret),
        )
        .route("/api/v3/device/auth", post(authenticate))
        .route(
            "/api/v3/device/name/{name}/certificate",
            post(issue_certificate),
        )
        .route("/api/v3/device/name/{name}/credential", get(credentials))
        .route("/api/v3/device/name/{name}/revoke", post(revoke))
        .route("/api/v3/device/name/{name}/approve", post(approve))
        .route("/api/v3/device/id/{id}", get(device_by_id))
        .route(
            "/api/v3/device/profile/name/{name}",
            get(devices_by_profile),
        )
        .route(
            "/api/v3/device/service/name/{name}",
            get(devices_by_service),
        )
        // device profiles
        .route(
            "/api/v3/deviceprofile",
            post(add_profiles).put(update_profiles),
        )
        .route(
            "/api/v3/deviceprofile/uploadfile",
            post(upload_profile).put(upload_profile_update),
        )
        .route("/api/v3/deviceprofile/all", get(all_profiles))
        .route(
            "/api/v3/deviceprofile/name/{name}",
            get(profile_by_name).delete(delete_profile),
        )
        .route(
            "/api/v3/deviceprofile/name/{name}/tags",
            patch(profile_tags),
        )
        .route("/api/v3/deviceprofile/basicinfo", patch(update_basic_infos))
        .route("/api/v3/deviceprofile/basicinfo/all", get(all_basic_infos))
        .route(
            "/api/v3/deviceprofile/deviceCommand",
            post(add_commands).patch(update_commands),
        )
        .route(
            "/api/v3/deviceprofile/name/{name}/deviceCommand/{command}",
            axum::routing::delete(delete_command),
        )
        .route(
            "/api/v3/deviceprofile/resource",
            post(add_resources).patch(update_resources),
        )
        .route(
            "/api/v3/deviceprofile/name/{name}/resource/{resource}",
            axum::routing::delete(delete_resource),
        )
        .route(
            "/api/v3/deviceprofile/manufacturer/{manufacturer}",
            get(profiles_by_manufacturer),
        )
        .route(
            "/api/v3/deviceprofile/manufacturer/{manufacturer}/model/{model}",
            get(profiles_by_manufacturer_model),
        )
        .route(
            "/api/v3/deviceprofile/model/{model}",
            get(profiles_by_model),
        )
        .route(
            "/api/v3/deviceresource/profile/{profile}/resource/{resource}",
            get(resource),
        )
        // device services
        .route(
            "/api/v3/deviceservice",
            post(add_services).patch(update_services),
        )
        .route("/api/v3/deviceservice/all", get(all_services))
        .route(
            "/api/v3/deviceservice/name/{name}",
            get(service_by_name).delete(delete_service),
        )
        // provision watchers
        .route(
            "/api/v3/provisionwatcher",
            post(add_watchers).patch(update_watchers),
        )
        .route("/api/v3/provisionwatcher/all", get(all_watchers))
        .route(
            "/api/v3/provisionwatcher/name/{name}",
            get(watcher_by_name).delete(delete_watcher),
        )
        .route(
            "/api/v3/provisionwatcher/service/name/{name}",
            get(watchers_by_service),
        )
        .route(
            "/api/v3/provisionwatcher/profile/name/{name}",
            get(watchers_by_profile),
        )
        // units of measure
        .route("/api/v3/uom", get(uom))
        .with_state(app)
}

// ---- helpers ----

/// A body that is a single request or an array of them (EdgeX documents PATCH bodies both ways).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

fn batch<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, ApiError> {
    let items = match parse_json::<OneOrMany<T>>(body) {
        Ok(OneOrMany::Many(v)) => v,
        Ok(OneOrMany::One(one)) => vec![one],
        Err(_) => {
            // Re-parse as an array for the precise error message.
            parse_json::<Vec<T>>(body)?
        }
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("request array must not be empty"));
    }
    Ok(items)
}

/// Runs `op` on each request of a batch body whose `apiVersion` is right, and answers 207
/// with one entry per request, in order.
async fn each_request<R, F, Fut, O>(body: &[u8], op: F) -> Result<Response, ApiError>
where
    R: DeserializeOwned + Batched,
    F: Fn(R) -> Fut,
    Fut: std::future::Future<Output = Result<O, ApiError>>,
    O: Into<Outcome>,
{
    let reqs: Vec<R> = batch(body)?;
    // As EdgeX: a body whose items fail their own validation (apiVersion, names, values)
    // is refused whole; what depends on what is stored (duplicates, references) is an
    // outcome per item.
    let problems: Vec<String> = reqs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.base()
                .check()
                .and_then(|()| r.check())
                .err()
                .map(|e| format!("item {i}: {e}"))
        })
        .collect();
    if !problems.is_empty() {
        return Err(ApiError::bad_request(problems.join("; ")));
    }
    let mut out = Vec::with_capacity(reqs.len());
    for r in reqs {
        let base = r.base().clone();
        let result = op(r).await.map(Into::into);
        out.push(entry(&base, result));
    }
    Ok(multi_status(out))
}

/// A request that can arrive in a batch.
trait Batched {
    fn base(&self) -> &BaseRequest;

    /// The item's own validation (EdgeX's DTO validation), before anything is looked up.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

macro_rules! batched {
    ($($t:ty),* $(,)?) => {
        $(impl Batched for $t {
            fn base(&self) -> &BaseRequest {
                &self.base
            }
        })*
    };
    ($($t:ty => |$r:ident| $check:expr),* $(,)?) => {
        $(impl Batched for $t {
            fn base(&self) -> &BaseRequest {
                &self.base
            }

            fn check(&self) -> Result<(), String> {
                let $r = self;
                $check
            }
        })*
    };
}

batched!(
    AddDeviceRequest => |r| r.device.validate(),
    AddDeviceProfileRequest => |r| r.profile.validate(None),
    UpdateDeviceProfileRequest => |r| r.profile.validate(None),
    AddDeviceServiceRequest => |r| r.service.validate(),
    AddProvisionWatcherRequest => |r| r.provisionwatcher.validate(),
    UpdateDeviceRequest => |r| identified(&r.device.id, &r.device.name),
    UpdateDeviceServiceRequest => |r| identified(&r.service.id, &r.service.name),
    UpdateProvisionWatcherRequest => |r| {
        identified(&r.provisionwatcher.id, &r.provisionwatcher.name)
    },
    DeviceProfileBasicInfoRequest => |r| identified(&r.basicinfo.id, &r.basicinfo.name),
    // A resource alone in a profile of that name: its own rules, without the others'.
    DeviceResourceRequest => |r| {
        DeviceProfile {
            name: r.profile_name.clone(),
            device_resources: vec![r.resource.clone()],
            ..DeviceProfile::default()
        }
        .validate(None)
    },
    DeviceCommandRequest => |r| {
        names::check("profileName", &r.profile_name)?;
        names::check("deviceCommand name", &r.device_command.name)?;
        if r.device_command.resource_operations.is_empty() {
            return Err("deviceCommand has no resourceOperations".into());
        }
        Ok(())
    },
    UpdateDeviceResourceRequest => |r| {
        names::check("profileName", &r.profile_name)?;
        names::check("resource name", &r.resource.name)
    },
    UpdateDeviceCommandRequest => |r| {
        names::check("profileName", &r.profile_name)?;
        names::check("deviceCommand name", &r.device_command.name)
    },
);

/// An update names what it updates: an id (a UUID), a name, or both (EdgeX: 400 when
/// neither).
fn identified(id: &Option<String>, name: &Option<String>) -> Result<(), String> {
    let id = id.as_deref().filter(|s| !s.is_empty());
    let name = name.as_deref().filter(|s| !s.is_empty());
    if let Some(id) = id
        && uuid::Uuid::parse_str(id).is_err()
    {
        return Err(format!("id '{id}' is not a UUID"));
    }
    match (id, name) {
        (None, None) => Err("either id or name is required".into()),
        (_, Some(n)) => names::check("name", n),
        _ => Ok(()),
    }
}

/// A created object's 207 entry.
fn created(id: String) -> (StatusCode, String) {
    (StatusCode::CREATED, id)
}

/// A 207 entry for a part added to an object (no id of its own).
fn added((): ()) -> (StatusCode, String) {
    (StatusCode::CREATED, String::new())
}

fn updated((): ()) -> (StatusCode, String) {
    (StatusCode::OK, String::new())
}

/// One 207 entry.
/// What one item of a batch came to: its status, a new id, and what the client should
/// know about it (a device added without its service's validation).
struct Outcome {
    status: StatusCode,
    id: String,
    note: String,
}

impl From<(StatusCode, String)> for Outcome {
    fn from((status, id): (StatusCode, String)) -> Self {
        Self {
            status,
            id,
            note: String::new(),
        }
    }
}

fn entry(base: &BaseRequest, result: Result<Outcome, ApiError>) -> BaseWithIdResponse {
    let (result, note) = match result {
        Ok(o) => (Ok((o.status, o.id)), o.note),
        Err(e) => (Err(e), String::new()),
    };
    let mut entry = outpost_kit::edgex::item(&base.request_id, result);
    if !note.is_empty() {
        entry.base.message = note;
    }
    entry
}

fn multi_status(entries: Vec<BaseWithIdResponse>) -> Response {
    outpost_kit::edgex::multi_status(entries)
}

fn ok() -> axum::Json<BaseResponse> {
    axum::Json(BaseResponse::new(200))
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ListParams {
    offset: Option<i64>,
    limit: Option<i64>,
    labels: Option<String>,
    descendants_of: Option<String>,
    max_levels: Option<u32>,
}

impl ListParams {
    fn page(&self, max: u64) -> Result<(u64, u64), ApiError> {
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return Err(ApiError::bad_request(format!(
                "offset must be >= 0, got {offset}"
            )));
        }
        Paging {
            offset,
            limit: self.limit.unwrap_or(20),
        }
        .resolve(max)
        .map_err(ApiError::bad_request)
    }

    fn filter(&self) -> Filter {
        Filter {
            labels: self
                .labels
                .as_deref()
                .map(|l| {
                    l.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            descendants_of: self
                .descendants_of
                .clone()
                .filter(|s| !s.is_empty())
                .map(|d| (d, self.max_levels.unwrap_or(0))),
            ..Filter::default()
        }
    }
}

fn page_base(total: u64) -> BaseWithTotalCountResponse {
    BaseWithTotalCountResponse {
        base: BaseResponse::new(200),
        total_count: total,
    }
}

// ---- devices ----

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct DeviceWriteParams {
    #[serde(deserialize_with = "outpost_contracts::common::query_bool")]
    bypass_validation: bool,
    #[serde(deserialize_with = "outpost_contracts::common::query_bool")]
    force: bool,
}

async fn add_devices(
    State(app): St,
    Query(p): Query<DeviceWriteParams>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: AddDeviceRequest| async move {
        app.md
            .add_device(r.device, p.force, p.bypass_validation)
            .await
            .map(|(id, unvalidated)| Outcome {
                note: unvalidated.unwrap_or_default(),
                ..created(id).into()
            })
    })
    .await
}

async fn update_devices(
    State(app): St,
    Query(p): Query<DeviceWriteParams>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: UpdateDeviceRequest| async move {
        app.md
            .update_device(r.device, p.bypass_validation)
            .await
            .map(updated)
    })
    .await
}

async fn devices(
    app: &App,
    p: &ListParams,
    filter: Filter,
) -> Result<axum::Json<MultiDevicesResponse>, ApiError> {
    let (offset, limit) = p.page(app.max_result_count)?;
    if let Some((root, _)) = &filter.descendants_of
        && !app.md.device_exists(root).await?
    {
        return Err(ApiError::not_found(format!(
            "device '{root}' does not exist"
        )));
    }
    let (total, devices) = app.md.list::<Device>(filter, offset, limit).await?;
    Ok(axum::Json(MultiDevicesResponse {
        page: page_base(total),
        devices,
    }))
}

async fn all_devices(
    State(app): St,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiDevicesResponse>, ApiError> {
    let filter = p.filter();
    devices(&app, &p, filter).await
}

async fn devices_by_profile(
    State(app): St,
    Path(name): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiDevicesResponse>, ApiError> {
    let filter = Filter {
        profile: Some(name),
        ..Filter::default()
    };
    devices(&app, &p, filter).await
}

async fn devices_by_service(
    State(app): St,
    Path(name): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiDevicesResponse>, ApiError> {
    let filter = Filter {
        service: Some(name),
        ..Filter::default()
    };
    devices(&app, &p, filter).await
}

async fn check_device(
    State(app): St,
    Path(name): Path<String>,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    if app.md.device_exists(&name).await? {
        Ok(ok())
    } else {
        Err(ApiError::not_found(format!(
            "device '{name}' does not exist"
        )))
    }
}

async fn device_by_name(
    State(app): St,
    Path(name): Path<String>,
) -> Result<axum::Json<DeviceResponse>, ApiError> {
    let device = app.md.get::<Device>(&name).await?;
    Ok(axum::Json(DeviceResponse {
        base: BaseResponse::new(200),
        device,
    }))
}

async fn device_by_id(
    State(app): St,
    Path(id): Path<String>,
) -> Result<axum::Json<DeviceResponse>, ApiError> {
    let device = app.md.get_by_id::<Device>(&id).await?;
    Ok(axum::Json(DeviceResponse {
        base: BaseResponse::new(200),
        device,
    }))
}

async fn set_secret(
    State(app): St,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<DeviceSecretResponse>, ApiError> {
    let req: DeviceSecretRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DeviceSecretRequest::default()
    } else {
        parse_json(&body)?
    };
    let secret = app.md.set_secret(&name, req.secret).await?;
    Ok(axum::Json(DeviceSecretResponse {
        base: BaseResponse::new(200),
        secret,
    }))
}

async fn delete_secret(
    State(app): St,
    Path(name): Path<String>,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    app.md.delete_secret(&name).await?;
    Ok(ok())
}

async fn authenticate(
    State(app): St,
    Body(body): Body,
) -> Result<axum::Json<DeviceResponse>, ApiError> {
    let req: DeviceAuthRequest = parse_json(&body)?;
    if let Some(cert) = &req.certificate {
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(cert.trim())
            .map_err(|_| ApiError::bad_request("certificate is not base64 (DER)"))?;
        return match app.md.authenticate_cert(&req.name, &der).await? {
            crate::enrollment::CertCheck::Device(device) => Ok(axum::Json(DeviceResponse {
                base: BaseResponse::new(200),
                device: *device,
            })),
            crate::enrollment::CertCheck::Pending => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("device {} is waiting for an operator's approval", req.name),
            )),
            crate::enrollment::CertCheck::Refused(why) => {
                tracing::warn!(device = %req.name, reason = %why, "a device certificate was refused");
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unknown device or certificate not valid for it",
                ))
            }
        };
    }
    match app.md.authenticate(&req.name, &req.secret).await? {
        Some(device) => Ok(axum::Json(DeviceResponse {
            base: BaseResponse::new(200),
            device,
        })),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown device or wrong secret",
        )),
    }
}

async fn issue_certificate(
    State(app): St,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<DeviceCertificateResponse>, ApiError> {
    let req: DeviceCertificateRequest = parse_json(&body)?;
    if req.csr.trim().is_empty() {
        return Err(ApiError::bad_request(
            "csr (a PKCS#10 signing request, PEM) is required",
        ));
    }
    let issued = app
        .md
        .issue_certificate(&name, &req.csr, req.replace)
        .await?;
    Ok(axum::Json(DeviceCertificateResponse {
        base: BaseResponse::new(200),
        certificate: issued.cert_pem,
        fingerprint: issued.fingerprint,
        not_after: issued.not_after,
    }))
}

async fn credentials(State(app): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    let c = app.md.credentials(&name).await?;
    let mut v = serde_json::to_value(&c).map_err(ApiError::internal)?;
    v["apiVersion"] = "v3".into();
    v["statusCode"] = 200.into();
    Ok(axum::Json(v).into_response())
}

async fn revoke(
    State(app): St,
    Path(name): Path<String>,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    app.md.revoke(&name).await?;
    Ok(ok())
}

async fn approve(
    State(app): St,
    Path(name): Path<String>,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    app.md.approve(&name).await?;
    Ok(ok())
}

async fn delete_device(
    State(app): St,
    Path(name): Path<String>,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    app.md.delete_device(&name).await?;
    Ok(ok())
}

// ---- device profiles ----

async fn add_profiles(State(app): St, Body(body): Body) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: AddDeviceProfileRequest| async move {
        app.md.add_profile(r.profile).await.map(created)
    })
    .await
}

async fn update_profiles(State(app): St, Body(body): Body) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: UpdateDeviceProfileRequest| async move {
        app.md.update_profile(r.profile).await.map(updated)
    })
    .await
}

/// The profile document from a multipart upload's `file` field (YAML or JSON).
async fn uploaded_profile(mut form: Multipart) -> Result<DeviceProfile, ApiError> {
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?
    {
        if field.name() == Some("file") {
            let bytes = field.bytes().await.map_err(|e| {
                ApiError::bad_request(format!("cannot read the uploaded file: {e}"))
            })?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ApiError::bad_request("the uploaded file is not UTF-8 text"))?;
            return DeviceProfile::from_yaml(text).map_err(ApiError::bad_request);
        }
    }
    Err(ApiError::bad_request("multipart body has no 'file' field"))
}

async fn upload_profile(State(app): St, form: Multipart) -> Result<Response, ApiError> {
    let profile = uploaded_profile(form).await?;
    let id = app.md.add_profile(profile).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(BaseWithIdResponse {
            base: BaseResponse::new(201),
            id,
        }),
    )
        .into_response())
}

async fn upload_profile_update(
    State(app): St,
    form: Multipart,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    let profile = uploaded_profile(form).await?;
    app.md.update_profile(profile).await?;
    Ok(ok())
}

async fn profiles(
    app: &App,
    p: &ListParams,
    filter: Filter,
) -> Result<axum::Json<MultiDeviceProfilesResponse>, ApiError> {
    let (offset, limit) = p.page(app.max_result_count)?;
    let (total, profiles) = app.md.profiles(filter, offset, limit).await?;
    Ok(axum::Json(MultiDeviceProfilesResponse {
        page: page_base(total),
        profiles,
    }))
}

async fn all_profiles(
    State(app): St,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiDeviceProfilesResponse>, ApiError> {
    let filter = p.filter();
    profiles(&app, &p, filter).await
}

async fn profiles_by_manufacturer(
    State(app): St,
    Path(manufacturer): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiDeviceProfilesResponse>, ApiError> {
    let filter = Filter {
        manufacturer: Some(manufacturer),
        ..Filter::default()
    };
    profiles(&app, &p, filter).await
}

async fn profiles_by_manufacturer_model(
    State(app): St,
    Path((manufacturer, model)): Path<(String, String)>,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiDeviceProfilesResponse>, ApiError> {
    let filter = Filter {
        manufacturer: Some(manufacturer),
        model: Some(model),
        ..Filter::default()
    };
    profiles(&app, &p, filter).await
}

async fn profiles_by_model(
    State(app): St,
    Path(model): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiDeviceProfilesResponse>, ApiError> {
    let filter = Filter {
        model: Some(model),
        ..Filter::default()
    };
    profiles(&app, &p, filter).await
}

async fn profile_by_name(
    State(app): St,
    Path(name): Path<String>,
) -> Result<axum::Json<DeviceProfileResponse>, ApiError> {
    let profile = app.md.profile(&name).await?;
    Ok(axum::Json(DeviceProfileResponse {
        base: BaseResponse::new(200),
        profile,
    }))
}

async fn delete_profile(
    State(app): St,
    Path(name): Path<String>,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    app.md.delete_profile(&name).await?;
    Ok(ok())
}

async fn profile_tags(
    State(app): St,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    let req: DeviceProfileTagsRequest = parse_json(&body)?;
    req.base.check().map_err(ApiError::bad_request)?;
    app.md
        .update_tags(&name, req.device_resources, req.device_commands)
        .await?;
    Ok(ok())
}

async fn update_basic_infos(State(app): St, Body(body): Body) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: DeviceProfileBasicInfoRequest| async move {
        app.md.update_basic_info(r.basicinfo).await.map(updated)
    })
    .await
}

async fn all_basic_infos(
    State(app): St,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiDeviceProfileBasicInfosResponse>, ApiError> {
    let (offset, limit) = p.page(app.max_result_count)?;
    let (total, list) = app.md.profiles(p.filter(), offset, limit).await?;
    Ok(axum::Json(MultiDeviceProfileBasicInfosResponse {
        page: page_base(total),
        profiles: list.iter().map(DeviceProfile::basic_info).collect(),
    }))
}

async fn add_resources(State(app): St, Body(body): Body) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: DeviceResourceRequest| async move {
        app.md
            .add_resource(&r.profile_name, r.resource)
            .await
            .map(added)
    })
    .await
}

async fn update_resources(State(app): St, Body(body): Body) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: UpdateDeviceResourceRequest| async move {
        app.md
            .update_resource(&r.profile_name, r.resource)
            .await
            .map(updated)
    })
    .await
}

async fn delete_resource(
    State(app): St,
    Path((name, resource)): Path<(String, String)>,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    app.md.delete_resource(&name, &resource).await?;
    Ok(ok())
}

async fn add_commands(State(app): St, Body(body): Body) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: DeviceCommandRequest| async move {
        app.md
            .add_command(&r.profile_name, r.device_command)
            .await
            .map(added)
    })
    .await
}

async fn update_commands(State(app): St, Body(body): Body) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: UpdateDeviceCommandRequest| async move {
        app.md
            .update_command(&r.profile_name, r.device_command)
            .await
            .map(updated)
    })
    .await
}

async fn delete_command(
    State(app): St,
    Path((name, command)): Path<(String, String)>,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    app.md.delete_command(&name, &command).await?;
    Ok(ok())
}

async fn resource(
    State(app): St,
    Path((profile, resource)): Path<(String, String)>,
) -> Result<axum::Json<DeviceResourceResponse>, ApiError> {
    let resource = app.md.resource(&profile, &resource).await?;
    Ok(axum::Json(DeviceResourceResponse {
        base: BaseResponse::new(200),
        resource,
    }))
}

// ---- device services ----

async fn add_services(State(app): St, Body(body): Body) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: AddDeviceServiceRequest| async move {
        app.md.add_service(r.service).await.map(created)
    })
    .await
}

async fn update_services(State(app): St, Body(body): Body) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: UpdateDeviceServiceRequest| async move {
        app.md.update_service(r.service).await.map(updated)
    })
    .await
}

async fn all_services(
    State(app): St,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiDeviceServicesResponse>, ApiError> {
    let (offset, limit) = p.page(app.max_result_count)?;
    let (total, services) = app
        .md
        .list::<DeviceService>(p.filter(), offset, limit)
        .await?;
    Ok(axum::Json(MultiDeviceServicesResponse {
        page: page_base(total),
        services,
    }))
}

async fn service_by_name(
    State(app): St,
    Path(name): Path<String>,
) -> Result<axum::Json<DeviceServiceResponse>, ApiError> {
    let service = app.md.get::<DeviceService>(&name).await?;
    Ok(axum::Json(DeviceServiceResponse {
        base: BaseResponse::new(200),
        service,
    }))
}

async fn delete_service(
    State(app): St,
    Path(name): Path<String>,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    app.md.delete_service(&name).await?;
    Ok(ok())
}

// ---- provision watchers ----

async fn add_watchers(State(app): St, Body(body): Body) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: AddProvisionWatcherRequest| async move {
        app.md.add_watcher(r.provisionwatcher).await.map(created)
    })
    .await
}

async fn update_watchers(State(app): St, Body(body): Body) -> Result<Response, ApiError> {
    let app = &app;
    each_request(&body, |r: UpdateProvisionWatcherRequest| async move {
        app.md.update_watcher(r.provisionwatcher).await.map(updated)
    })
    .await
}

async fn watchers(
    app: &App,
    p: &ListParams,
    filter: Filter,
) -> Result<axum::Json<MultiProvisionWatchersResponse>, ApiError> {
    let (offset, limit) = p.page(app.max_result_count)?;
    let (total, provision_watchers) = app
        .md
        .list::<ProvisionWatcher>(filter, offset, limit)
        .await?;
    Ok(axum::Json(MultiProvisionWatchersResponse {
        page: page_base(total),
        provision_watchers,
    }))
}

async fn all_watchers(
    State(app): St,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiProvisionWatchersResponse>, ApiError> {
    let filter = p.filter();
    watchers(&app, &p, filter).await
}

async fn watchers_by_service(
    State(app): St,
    Path(name): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiProvisionWatchersResponse>, ApiError> {
    let filter = Filter {
        service: Some(name),
        ..Filter::default()
    };
    watchers(&app, &p, filter).await
}

async fn watchers_by_profile(
    State(app): St,
    Path(name): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<MultiProvisionWatchersResponse>, ApiError> {
    let filter = Filter {
        profile: Some(name),
        ..Filter::default()
    };
    watchers(&app, &p, filter).await
}

async fn watcher_by_name(
    State(app): St,
    Path(name): Path<String>,
) -> Result<axum::Json<ProvisionWatcherResponse>, ApiError> {
    let provision_watcher = app.md.get::<ProvisionWatcher>(&name).await?;
    Ok(axum::Json(ProvisionWatcherResponse {
        base: BaseResponse::new(200),
        provision_watcher,
    }))
}

async fn delete_watcher(
    State(app): St,
    Path(name): Path<String>,
) -> Result<axum::Json<BaseResponse>, ApiError> {
    app.md.delete_watcher(&name).await?;
    Ok(ok())
}

// ---- units of measure ----

async fn uom(State(app): St, headers: HeaderMap) -> Result<Response, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let uom = app.md.uom().clone();
    if accept.contains("toml") {
        let text = toml::to_string(&uom).map_err(ApiError::internal)?;
        return Ok(([(header::CONTENT_TYPE, "application/toml")], text).into_response());
    }
    if accept.contains("yaml") {
        let text = serde_norway::to_string(&uom).map_err(ApiError::internal)?;
        return Ok(([(header::CONTENT_TYPE, "application/yaml")], text).into_response());
    }
    Ok(axum::Json(UnitsOfMeasureResponse {
        base: BaseResponse::new(200),
        uom,
    })
    .into_response())
}
