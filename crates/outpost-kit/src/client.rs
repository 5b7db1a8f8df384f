//! Calls from one service to another, resolved through the registry.
//!
//! [`ServiceClient`] turns "service X, path segments, body" into an HTTP call at the
//! address the registry's last view gives for X, carrying the correlation ID, and turns the
//! answer into a typed value or a [`CallError`] that keeps the peer's status and EdgeX
//! message. [`Metadata`] is the core-metadata API on top of it, for the services that read
//! devices and profiles (device services, core-command).

use std::time::Duration;

use outpost_contracts::common::{BaseRequest, BaseResponse, BaseWithIdResponse};
use outpost_contracts::metadata::{
    AddDeviceProfileRequest, AddDeviceRequest, AddDeviceServiceRequest, Device, DeviceAuthRequest,
    DeviceProfile, DeviceProfileResponse, DeviceResponse, DeviceSecretRequest,
    DeviceSecretResponse, DeviceService, DeviceServiceResponse, MultiDevicesResponse,
    MultiProvisionWatchersResponse, ProvisionWatcher, UpdateDevice, UpdateDeviceRequest,
    UpdateDeviceService, UpdateDeviceServiceRequest,
};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::registry::Registry;
use crate::{ApiError, http};

/// Why a call to another service failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("{service} has no known address")]
    Unresolved { service: String },
    #[error("{service} is unreachable: {reason}")]
    Unreachable { service: String, reason: String },
    #[error("{service} did not answer in time")]
    Timeout { service: String },
    #[error("{service} answered {status}: {message}")]
    Status {
        service: String,
        status: StatusCode,
        message: String,
    },
    #[error("{service} sent an answer that cannot be read: {reason}")]
    Decode { service: String, reason: String },
}

impl CallError {
    /// The peer's status, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// The peer could not be asked (as opposed to: it answered no).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unresolved { .. } | Self::Unreachable { .. } | Self::Timeout { .. }
        )
    }

    /// The error to pass on to our own client: the peer's 4xx verdicts as they are (its
    /// message is meant for the client), anything else as 503 (peer unavailable) or 502.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            Self::Status {
                status, message, ..
            } if status.is_client_error() => ApiError::new(*status, message.clone()),
            Self::Status {
                status, message, ..
            } if *status == StatusCode::SERVICE_UNAVAILABLE => {
                ApiError::unavailable(message.clone())
            }
            e if e.is_unavailable() => ApiError::unavailable(e.to_string()),
            Self::Timeout { .. } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, self.to_string()),
            e => ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()),
        }
    }
}

/// HTTP calls to other services by registry name; cheap to clone.
#[derive(Clone, Debug)]
pub struct ServiceClient {
    registry: Registry,
    http: reqwest::Client,
}

impl ServiceClient {
    pub fn new(registry: Registry, timeout: Duration) -> Self {
        Self {
            registry,
            http: http::client(timeout),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The URL of `segments` (each percent-encoded) on `service`.
    pub fn url(&self, service: &str, segments: &[&str]) -> Result<reqwest::Url, CallError> {
        let unresolved = || CallError::Unresolved {
            service: service.to_string(),
        };
        let base = self.registry.resolve(service).ok_or_else(unresolved)?;
        let mut url = reqwest::Url::parse(&base).map_err(|_| unresolved())?;
        url.path_segments_mut()
            .map_err(|()| unresolved())?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Calls `service` and decodes a successful answer as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        service: &str,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&(dyn erased::Body + '_)>,
    ) -> Result<T, CallError> {
        let bytes = self
            .call_raw(service, method, segments, query, body)
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Decode {
            service: service.to_string(),
            reason: e.to_string(),
        })
    }

    /// Calls `service` and returns the body of a successful answer.
    pub async fn call_raw(
        &self,
        service: &str,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&(dyn erased::Body + '_)>,
    ) -> Result<bytes::Bytes, CallError> {
        let url = self.url(service, segments)?;
        let mut rb = self.http.request(method, url);
        if !query.is_empty() {
            rb = rb.query(query);
        }
        if let Some(b) = body {
            let json = b.to_json().map_err(|reason| CallError::Decode {
                service: service.to_string(),
                reason,
            })?;
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json);
        }
        let resp = http::correlated(rb).send().await.map_err(|e| {
            if e.is_timeout() {
                CallError::Timeout {
                    service: service.to_string(),
                }
            } else {
                CallError::Unreachable {
                    service: service.to_string(),
                    reason: e.to_string(),
                }
            }
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| CallError::Unreachable {
            service: service.to_string(),
            reason: e.to_string(),
        })?;
        if !status.is_success() {
            return Err(CallError::Status {
                service: service.to_string(),
                status,
                message: error_message(&bytes),
            });
        }
        // A batch endpoint answers 207 with one verdict per item; callers here send one
        // item, so its verdict is the answer.
        if status == StatusCode::MULTI_STATUS
            && let Ok(items) = serde_json::from_slice::<Vec<BaseWithIdResponse>>(&bytes)
            && let Some(first) = items.first()
            && !(200..300).contains(&first.base.status_code)
        {
            return Err(CallError::Status {
                service: service.to_string(),
                status: StatusCode::from_u16(first.base.status_code)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                message: first.base.message.clone(),
            });
        }
        Ok(bytes)
    }
}

/// The message of an EdgeX error body, or the body itself (shortened).
fn error_message(bytes: &[u8]) -> String {
    if let Ok(b) = serde_json::from_slice::<BaseResponse>(bytes)
        && !b.message.is_empty()
    {
        return b.message;
    }
    let text = String::from_utf8_lossy(bytes);
    text.chars().take(300).collect()
}

/// Object-safe request bodies.
pub mod erased {
    pub trait Body: Send + Sync {
        fn to_json(&self) -> Result<Vec<u8>, String>;
    }

    impl<T: serde::Serialize + Send + Sync> Body for T {
        fn to_json(&self) -> Result<Vec<u8>, String> {
            serde_json::to_vec(self).map_err(|e| e.to_string())
        }
    }
}

/// What core-metadata says of a device certificate.
#[derive(Debug)]
pub enum CertAuth {
    Device(Box<Device>),
    /// Unknown, revoked, or not the device's.
    Refused,
    /// A zero-touch device waiting for approval.
    Pending,
}

/// The core-metadata API, as other services use it.
#[derive(Clone, Debug)]
pub struct Metadata {
    client: ServiceClient,
}

/// core-metadata's registry name.
pub const CORE_METADATA: &str = "core-metadata";

fn one<T: Serialize>(item: T) -> [T; 1] {
    [item]
}

impl Metadata {
    pub fn new(client: ServiceClient) -> Self {
        Self { client }
    }

    pub fn client(&self) -> &ServiceClient {
        &self.client
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, CallError> {
        self.client
            .call(CORE_METADATA, Method::GET, segments, query, None)
            .await
    }

    /// Sends a one-item batch request and checks its verdict.
    async fn send(
        &self,
        method: Method,
        collection: &str,
        req: &(dyn erased::Body + '_),
    ) -> Result<(), CallError> {
        self.client
            .call_raw(
                CORE_METADATA,
                method,
                &["api", "v3", collection],
                &[],
                Some(req),
            )
            .await
            .map(drop)
    }

    /// A device by name; `None` when metadata says it does not exist.
    pub async fn device(&self, name: &str) -> Result<Option<Device>, CallError> {
        let r = self
            .get::<DeviceResponse>(&["api", "v3", "device", "name", name], &[])
            .await;
        not_found_as_none(r.map(|r| r.device))
    }

    /// The device `name` if `secret` is its credential; `None` when metadata refuses it.
    pub async fn authenticate_device(
        &self,
        name: &str,
        secret: &str,
    ) -> Result<Option<Device>, CallError> {
        let req = DeviceAuthRequest {
            base: BaseRequest::new(),
            name: name.to_string(),
            secret: secret.to_string(),
            certificate: None,
        };
        let r = self.device_auth(&req).await;
        match r {
            Ok(r) => Ok(Some(r.device)),
            Err(e) if e.status() == Some(StatusCode::UNAUTHORIZED) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn device_auth(&self, req: &DeviceAuthRequest) -> Result<DeviceResponse, CallError> {
        self.client
            .call::<DeviceResponse>(
                CORE_METADATA,
                Method::POST,
                &["api", "v3", "device", "auth"],
                &[],
                Some(req),
            )
            .await
    }

    /// Checks the client certificate (DER, base64) device `name` presented to the gateway.
    pub async fn authenticate_device_cert(
        &self,
        name: &str,
        certificate: &str,
    ) -> Result<CertAuth, CallError> {
        let req = DeviceAuthRequest {
            base: BaseRequest::new(),
            name: name.to_string(),
            secret: String::new(),
            certificate: Some(certificate.to_string()),
        };
        let r = self.device_auth(&req).await;
        match r {
            Ok(r) => Ok(CertAuth::Device(Box::new(r.device))),
            Err(e) if e.status() == Some(StatusCode::UNAUTHORIZED) => Ok(CertAuth::Refused),
            Err(e) if e.status() == Some(StatusCode::FORBIDDEN) => Ok(CertAuth::Pending),
            Err(e) => Err(e),
        }
    }

    /// Sets the secret of device `name` (generated when `secret` is `None`); returns the
    /// generated secret.
    pub async fn set_device_secret(
        &self,
        name: &str,
        secret: Option<String>,
    ) -> Result<Option<String>, CallError> {
        let req = DeviceSecretRequest {
            base: BaseRequest::new(),
            secret,
        };
        let r = self
            .client
            .call::<DeviceSecretResponse>(
                CORE_METADATA,
                Method::PUT,
                &["api", "v3", "device", "name", name, "secret"],
                &[],
                Some(&req),
            )
            .await?;
        Ok(r.secret)
    }

    /// A device profile by name; `None` when it does not exist.
    pub async fn profile(&self, name: &str) -> Result<Option<DeviceProfile>, CallError> {
        let r = self
            .get::<DeviceProfileResponse>(&["api", "v3", "deviceprofile", "name", name], &[])
            .await;
        not_found_as_none(r.map(|r| r.profile))
    }

    /// A device service by name; `None` when it does not exist.
    pub async fn device_service(&self, name: &str) -> Result<Option<DeviceService>, CallError> {
        let r = self
            .get::<DeviceServiceResponse>(&["api", "v3", "deviceservice", "name", name], &[])
            .await;
        not_found_as_none(r.map(|r| r.service))
    }

    /// Every device of a device service (all pages).
    pub async fn devices_of_service(&self, service: &str) -> Result<Vec<Device>, CallError> {
        self.all_pages(
            &["api", "v3", "device", "service", "name", service],
            |r: MultiDevicesResponse| (r.devices, r.page.total_count),
        )
        .await
    }

    /// One page of all devices, with the total count.
    pub async fn devices_page(
        &self,
        offset: u64,
        limit: i64,
    ) -> Result<(Vec<Device>, u64), CallError> {
        let (o, l) = (offset.to_string(), limit.to_string());
        self.get::<MultiDevicesResponse>(
            &["api", "v3", "device", "all"],
            &[("offset", &o), ("limit", &l)],
        )
        .await
        .map(|r| (r.devices, r.page.total_count))
    }

    /// Every provision watcher of a device service (all pages).
    pub async fn provision_watchers_of_service(
        &self,
        service: &str,
    ) -> Result<Vec<ProvisionWatcher>, CallError> {
        self.all_pages(
            &["api", "v3", "provisionwatcher", "service", "name", service],
            |r: MultiProvisionWatchersResponse| (r.provision_watchers, r.page.total_count),
        )
        .await
    }

    /// Every item of a paged list at `segments`: `items` takes a page's items and the
    /// total count out of its answer.
    async fn all_pages<T, R>(
        &self,
        segments: &[&str],
        items: impl Fn(R) -> (Vec<T>, u64),
    ) -> Result<Vec<T>, CallError>
    where
        R: DeserializeOwned,
    {
        const PAGE: usize = 500;
        let limit = PAGE.to_string();
        let mut out = Vec::new();
        loop {
            let offset = out.len().to_string();
            let page = self
                .get::<R>(segments, &[("offset", &offset), ("limit", &limit)])
                .await?;
            let (items, total) = items(page);
            let got = items.len();
            out.extend(items);
            if got == 0 || out.len() as u64 >= total {
                return Ok(out);
            }
        }
    }

    pub async fn add_device_service(&self, service: DeviceService) -> Result<(), CallError> {
        let req = one(AddDeviceServiceRequest {
            base: BaseRequest::new(),
            service,
        });
        self.send(Method::POST, "deviceservice", &req).await
    }

    pub async fn update_device_service(
        &self,
        update: UpdateDeviceService,
    ) -> Result<(), CallError> {
        let req = one(UpdateDeviceServiceRequest {
            base: BaseRequest::new(),
            service: update,
        });
        self.send(Method::PATCH, "deviceservice", &req).await
    }

    pub async fn add_profile(&self, profile: DeviceProfile) -> Result<(), CallError> {
        let req = one(AddDeviceProfileRequest {
            base: BaseRequest::new(),
            profile,
        });
        self.send(Method::POST, "deviceprofile", &req).await
    }

    pub async fn add_device(&self, device: Device) -> Result<(), CallError> {
        let req = one(AddDeviceRequest {
            base: BaseRequest::new(),
            device,
        });
        self.send(Method::POST, "device", &req).await
    }

    pub async fn update_device(&self, update: UpdateDevice) -> Result<(), CallError> {
        let req = one(UpdateDeviceRequest {
            base: BaseRequest::new(),
            device: update,
        });
        self.send(Method::PATCH, "device", &req).await
    }
}

fn not_found_as_none<T>(r: Result<T, CallError>) -> Result<Option<T>, CallError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}
