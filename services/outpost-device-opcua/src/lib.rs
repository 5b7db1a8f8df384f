//! device-opcua (port 59997): OPC UA devices, with EdgeX device-opc-ua's device profiles
//! and protocol properties.
//!
//! A [`Driver`] run by the device-service SDK, which does everything that is not OPC UA
//! (metadata, commands, autoEvents, health).
//!
//! - [`endpoint`]: where a device is (`protocols.opcua`: `Endpoint`, `SecurityPolicy`,
//!   `SecurityMode`); devices at the same endpoint share one session.
//! - [`address`]: where a resource is (`nodeId`, or `namespace` + `symbol`; methods by
//!   `methodId`, `objectId`, `inputMap`).
//! - [`convert`]: values to and from OPC UA's Variants.
//! - [`monitor`]: `onChange` autoEvents as monitored items of one subscription per
//!   endpoint, pushed as events when values change (the SDK does not poll them).
//! - A server that does not answer, refuses the session or drops it is
//!   [`DriverError::Unreachable`] (counts towards DOWN); a Bad status for a node is
//!   [`DriverError::Device`] (the server answered).

pub mod address;
pub mod browse;
pub mod convert;
pub mod endpoint;
pub mod monitor;
pub mod pki;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use opcua::client::{ClientBuilder, IdentityToken, Session};
use opcua::types::{
    Argument, AttributeId, BrowsePath, CallMethodRequest, DataValue, Identifier, NodeId,
    QualifiedName, ReadValueId, RelativePath, RelativePathElement, StatusCode, TimestampsToReturn,
    Variant, WriteValue,
};
use outpost_contracts::metadata::{AutoEvent, Device};
use outpost_device_sdk::{
    CommandValue, DeviceChange, DeviceRef, Driver, DriverError, ResourceRef, Sdk,
};
use outpost_kit::Shutdown;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};

use crate::address::{NodeRef, Target};
use crate::endpoint::{Auth, Endpoint};
use crate::monitor::Monitor;

/// The `HasProperty` reference type (namespace 0).
const HAS_PROPERTY: u32 = 46;

/// The client's certificate store, in the data dir.
const PKI_DIR: &str = "opcua-pki";

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "device-opcua";

/// `[device_opcua.driver]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpcUaConfig {
    /// The client's application URI (empty: `urn:outpost:<host name>:device-opcua`).
    pub application_uri: String,
    /// How long a session may stay idle before the server may close it.
    pub session_timeout_ms: u64,
    /// How long to wait for a server to accept a session.
    pub connect_timeout_ms: u64,
    /// How `onChange` autoEvents of variables are served: `subscribe` (monitored items;
    /// the server sends changes) or `poll` (the SDK reads them every interval).
    pub autoevents: AutoEvents,
    /// Values a server keeps per monitored item between publishes.
    pub queue_size: u32,
    /// The longest wait between attempts to reach a server again.
    pub reconnect_max_ms: u64,
    /// How long the application certificate (from the node CA) is valid; it is made again
    /// at a start with under half of this left.
    pub certificate_days: i64,
    /// Trust a server certificate seen for the first time (stored in the trust list) instead
    /// of refusing it. Off: only certificates in the trust list (a device's `RemotePemCert`,
    /// files put in `<data>/opcua-pki/trusted`) are accepted.
    pub trust_unknown_servers: bool,
    /// Servers discovery browses (`opc.tcp://...`), anonymously and without security.
    pub discovery_urls: Vec<String>,
    /// How many levels under the Objects folder discovery looks for objects.
    pub discovery_depth: u32,
}

/// `[device_opcua.driver] autoevents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoEvents {
    Subscribe,
    Poll,
}

impl Default for OpcUaConfig {
    fn default() -> Self {
        Self {
            application_uri: String::new(),
            session_timeout_ms: 60_000,
            connect_timeout_ms: 4_000,
            autoevents: AutoEvents::Subscribe,
            queue_size: 10,
            reconnect_max_ms: 10_000,
            certificate_days: 365,
            trust_unknown_servers: false,
            discovery_urls: Vec::new(),
            discovery_depth: 2,
        }
    }
}

impl outpost_device_sdk::DriverConfig for OpcUaConfig {
    const SERVICE: &'static str = SERVICE;
    const SECTION: &'static str = "device_opcua";
    const PORT: u16 = 59997;
    const ENABLED: bool = false;
    /// Servers' user names and passwords.
    const KEEPS_SECRETS: bool = true;

    fn driver(
        start: &outpost_kit::Start<Config>,
    ) -> Result<Arc<dyn Driver>, outpost_kit::StartError> {
        let pki = start.ctx.data_dir.join(PKI_DIR);
        Ok(Arc::new(OpcUa::new(start.cfg.driver.clone(), pki)))
    }

    /// The client's certificate store (`<data>/opcua-pki`: its own certificate, the servers'
    /// it trusts and those it refused), its own.
    ///
    /// The application certificate is issued here, while the node CA's key can still be
    /// read: the service holds only its own key once its sandbox closes.
    fn sandbox(
        &self,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_kit::sandbox::StorageError> {
        let dir = files.own_dir(PKI_DIR)?;
        pki::ensure(
            &dir,
            files.data_dir(),
            &self.application_uri(),
            self.certificate_days,
        )
        .map_err(|why| outpost_kit::sandbox::StorageError::Key { path: dir, why })
    }

    fn validate(&self, p: &mut outpost_kit::config::Problems) {
        let s = "device_opcua.driver";
        p.check(
            (1_000..=3_600_000).contains(&self.session_timeout_ms),
            s,
            "session_timeout_ms must be between 1000 and 3600000",
        );
        p.check(
            (100..=60_000).contains(&self.connect_timeout_ms),
            s,
            "connect_timeout_ms must be between 100 and 60000",
        );
        p.check(
            (1..=10_000).contains(&self.queue_size),
            s,
            "queue_size must be between 1 and 10000",
        );
        p.check(
            (500..=600_000).contains(&self.reconnect_max_ms),
            s,
            "reconnect_max_ms must be between 500 and 600000",
        );
        p.check(
            self.discovery_urls
                .iter()
                .all(|u| u.starts_with("opc.tcp://")),
            s,
            "discovery_urls must each start with opc.tcp://",
        );
        p.check(
            (1..=10).contains(&self.discovery_depth),
            s,
            "discovery_depth must be between 1 and 10",
        );
        p.check(
            (1..=3650).contains(&self.certificate_days),
            s,
            "certificate_days must be between 1 and 3650",
        );
    }
}

impl OpcUaConfig {
    /// The client's application URI: the setting, else `urn:outpost:<host name>:device-opcua`.
    pub fn application_uri(&self) -> String {
        if self.application_uri.is_empty() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            format!("urn:outpost:{host}:{SERVICE}")
        } else {
            self.application_uri.clone()
        }
    }
}

pub type Config = outpost_device_sdk::Config<OpcUaConfig>;

/// The OPC UA adapter.
pub type DeviceOpcUa = outpost_device_sdk::Adapter<OpcUaConfig>;

/// The OPC UA driver: one session per endpoint, made when a device there is first used,
/// and one subscription per endpoint whose devices have `onChange` autoEvents.
pub struct OpcUa {
    links: Arc<Links>,
    /// Where the subscriptions' notifications go (set by `start`).
    sink: OnceLock<mpsc::Sender<monitor::Batch>>,
    monitors: Mutex<HashMap<Endpoint, Monitor>>,
}

/// The sessions, one per endpoint.
pub(crate) struct Links {
    cfg: OpcUaConfig,
    /// The client's certificate store.
    pki: std::path::PathBuf,
    /// One slot per endpoint: a connect holds only its endpoint's, so a server that is slow
    /// to answer delays only its own devices.
    sessions: std::sync::Mutex<HashMap<Endpoint, Slot>>,
    /// The service (set by `start`): devices, secrets, health.
    sdk: OnceLock<Sdk>,
}

/// An endpoint's session, when there is one.
type Slot = Arc<Mutex<Option<Open>>>;

/// A session and the task that keeps it (its event loop: keep-alives, publishing). The
/// library does not reconnect on its own: a lost connection ends the task and triggers
/// `lost`, and the next use connects again (the monitor subscribing afresh).
struct Open {
    session: Arc<Session>,
    task: tokio::task::JoinHandle<StatusCode>,
    lost: Shutdown,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a call on a session failed, as the SDK counts it.
fn session_error(endpoint: &Endpoint, e: impl std::fmt::Display) -> DriverError {
    DriverError::Unreachable(format!("{}: {e}", endpoint.url))
}

impl OpcUa {
    /// A driver whose certificate store is `pki`.
    pub fn new(cfg: OpcUaConfig, pki: std::path::PathBuf) -> Self {
        Self {
            links: Arc::new(Links {
                cfg,
                pki,
                sessions: std::sync::Mutex::new(HashMap::new()),
                sdk: OnceLock::new(),
            }),
            sink: OnceLock::new(),
            monitors: Mutex::new(HashMap::new()),
        }
    }

    /// The monitored items every device's autoEvents want, by endpoint.
    fn wanted(&self, sdk: &Sdk) -> HashMap<Endpoint, Vec<monitor::Item>> {
        let mut wanted: HashMap<Endpoint, Vec<monitor::Item>> = HashMap::new();
        for d in sdk.devices() {
            let Ok(endpoint) = Endpoint::of(&d.device) else {
                continue;
            };
            for ae in &d.device.auto_events {
                if let Some(items) = self.subscribed(&d, ae) {
                    wanted.entry(endpoint.clone()).or_default().extend(items);
                }
            }
        }
        wanted
    }

    fn subscribed(&self, d: &DeviceRef, ae: &AutoEvent) -> Option<Vec<monitor::Item>> {
        if self.links.cfg.autoevents != AutoEvents::Subscribe {
            return None;
        }
        monitor::items(d, ae)
    }
}

impl Links {
    /// The session to `endpoint`, connected first if there is none yet, and what is
    /// triggered when it is lost.
    async fn session(&self, endpoint: &Endpoint) -> Result<(Arc<Session>, Shutdown), DriverError> {
        let slot = Arc::clone(
            self.sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(endpoint.clone())
                .or_default(),
        );
        let mut current = slot.lock().await;
        if let Some(open) = current.as_ref()
            && !open.lost.is_triggered()
        {
            return Ok((Arc::clone(&open.session), open.lost.clone()));
        }
        *current = None;
        if let Some(pem) = &endpoint.server_cert {
            pki::trust(&self.pki, pem.as_bytes())
                .map_err(|e| DriverError::Invalid(format!("RemotePemCert: {e}")))?;
        }
        let mut client = ClientBuilder::new()
            .application_name("Outpost device-opcua")
            .application_uri(self.cfg.application_uri())
            .product_uri("urn:outpost:device-opcua")
            .pki_dir(&self.pki)
            .session_retry_limit(0)
            .session_timeout(u32::try_from(self.cfg.session_timeout_ms).unwrap_or(u32::MAX))
            .trust_server_certs(self.cfg.trust_unknown_servers)
            .verify_server_certs(true)
            .create_sample_keypair(false)
            .client()
            .map_err(|e| DriverError::Invalid(format!("the OPC UA client: {e:?}")))?;
        // One deadline for finding the endpoint and activating the session.
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.cfg.connect_timeout_ms);
        let description = endpoint.description();
        let identity = self.identity(endpoint).await?;
        let connect = client.connect_to_matching_endpoint(description, identity);
        let (session, event_loop) = tokio::time::timeout_at(deadline, connect)
            .await
            .map_err(|_| session_error(endpoint, "no answer"))?
            .map_err(|e| session_error(endpoint, e))?;
        let lost = Shutdown::new();
        let mut task = tokio::spawn({
            let lost = lost.clone();
            async move {
                let code = event_loop.run().await;
                lost.trigger();
                code
            }
        });
        // The event loop ends at once when the server refuses the channel or the session
        // (an untrusted certificate, a rejected identity): its status is the reason.
        let connected = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                up = session.wait_for_connection() => up,
                () = lost.wait() => false,
            }
        })
        .await;
        if !matches!(connected, Ok(true)) {
            if lost.is_triggered() {
                let code = (&mut task).await.unwrap_or(StatusCode::BadUnexpectedError);
                return Err(session_error(endpoint, code));
            }
            task.abort();
            return Err(session_error(
                endpoint,
                "the session was not activated in time",
            ));
        }
        *current = Some(Open {
            session: Arc::clone(&session),
            task,
            lost: lost.clone(),
        });
        Ok((session, lost))
    }

    /// Who the session to `endpoint` is.
    async fn identity(&self, endpoint: &Endpoint) -> Result<IdentityToken, DriverError> {
        match &endpoint.auth {
            Auth::Anonymous => Ok(IdentityToken::Anonymous),
            Auth::Certificate => IdentityToken::new_x509_path(
                self.pki.join("own/cert.der"),
                self.pki.join("private/private.pem"),
            )
            .map_err(|e| DriverError::Invalid(format!("the application certificate: {e}"))),
            Auth::Username { secret } => {
                let sdk = self
                    .sdk
                    .get()
                    .ok_or_else(|| DriverError::Unreachable("the service is starting".into()))?;
                let pairs = sdk
                    .secret(secret)
                    .await
                    .map_err(|e| DriverError::Invalid(format!("secret '{secret}': {e}")))?
                    .ok_or_else(|| {
                        DriverError::Invalid(format!(
                            "secret '{secret}' is not stored: give it to device-opcua with \
                             POST /api/v3/secret (keys username and password)"
                        ))
                    })?;
                let get = |k: &str| {
                    pairs
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                };
                match (get("username"), get("password")) {
                    (Some(user), Some(password)) => {
                        Ok(IdentityToken::new_user_name(user, password))
                    }
                    _ => Err(DriverError::Invalid(format!(
                        "secret '{secret}' needs the keys username and password"
                    ))),
                }
            }
        }
    }

    /// Closes the sessions of endpoints not in `used`.
    async fn close_unused(&self, used: &HashSet<Endpoint>) {
        self.close_if(|e| !used.contains(e)).await;
    }

    /// Closes the sessions of the endpoints `which` picks.
    async fn close_if(&self, which: impl Fn(&Endpoint) -> bool) {
        let gone: Vec<Slot> = {
            let mut sessions = self
                .sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let picked: Vec<Endpoint> = sessions.keys().filter(|e| which(e)).cloned().collect();
            picked.iter().filter_map(|e| sessions.remove(e)).collect()
        };
        for slot in gone {
            if let Some(open) = slot.lock().await.take() {
                let _ = open.session.disconnect().await;
            }
        }
    }

    /// The node `r` names on this session (a namespace URI becomes its index there).
    async fn node(&self, session: &Session, r: &NodeRef) -> Result<NodeId, DriverError> {
        match r {
            NodeRef::Id(id) => Ok(id.clone()),
            NodeRef::InNamespace { uri, identifier } => {
                let ns = session.get_namespace_index(uri).await.map_err(|e| {
                    DriverError::Device(format!("namespace '{uri}' is not on the server: {e}"))
                })?;
                Ok(NodeId::new(ns, identifier.clone()))
            }
        }
    }
}

/// A node's value as read, or why not.
fn value_of(name: &str, dv: &DataValue) -> Result<CommandValue, DriverError> {
    if let Some(status) = dv.status
        && status.is_bad()
    {
        return Err(DriverError::Device(format!("resource '{name}': {status}")));
    }
    dv.value
        .as_ref()
        .and_then(convert::from_variant)
        .ok_or_else(|| DriverError::Device(format!("resource '{name}': the node has no value")))
}

fn target(r: &ResourceRef) -> Result<Target, DriverError> {
    address::target(r).map_err(DriverError::Invalid)
}

#[async_trait]
impl Driver for OpcUa {
    async fn read(
        &self,
        device: &DeviceRef,
        resources: &[ResourceRef],
    ) -> Result<Vec<CommandValue>, DriverError> {
        let endpoint = Endpoint::of(&device.device).map_err(DriverError::Invalid)?;
        let (session, _) = self.links.session(&endpoint).await?;
        let mut out = Vec::with_capacity(resources.len());
        for r in resources {
            match target(r)? {
                Target::Variable(node) => {
                    let node_id = self.links.node(&session, &node).await?;
                    let read = ReadValueId {
                        node_id,
                        attribute_id: AttributeId::Value as u32,
                        ..Default::default()
                    };
                    let values = session
                        .read(&[read], TimestampsToReturn::Both, 0.0)
                        .await
                        .map_err(|e| session_error(&endpoint, e))?;
                    let dv = values.first().ok_or_else(|| {
                        DriverError::Device(format!("resource '{}': no value returned", r.name()))
                    })?;
                    out.push(value_of(r.name(), dv)?);
                }
                Target::Method {
                    object,
                    method,
                    inputs,
                } => {
                    let args: Vec<CommandValue> = inputs
                        .iter()
                        .map(|i| CommandValue::String(i.clone()))
                        .collect();
                    out.push(
                        self.call(&session, &endpoint, r.name(), &object, &method, &args)
                            .await?,
                    );
                }
            }
        }
        Ok(out)
    }

    async fn write(
        &self,
        device: &DeviceRef,
        values: &[(ResourceRef, CommandValue)],
    ) -> Result<(), DriverError> {
        let endpoint = Endpoint::of(&device.device).map_err(DriverError::Invalid)?;
        let (session, _) = self.links.session(&endpoint).await?;
        for (r, v) in values {
            match target(r)? {
                Target::Variable(node) => {
                    let node_id = self.links.node(&session, &node).await?;
                    let variant = convert::to_variant(r.resource.properties.value_type, v)
                        .map_err(|e| {
                            DriverError::Invalid(format!("resource '{}': {e}", r.name()))
                        })?;
                    let write = WriteValue {
                        node_id,
                        attribute_id: AttributeId::Value as u32,
                        value: DataValue::value_only(variant),
                        ..Default::default()
                    };
                    let results = session
                        .write(&[write])
                        .await
                        .map_err(|e| session_error(&endpoint, e))?;
                    if let Some(status) = results.first()
                        && status.is_bad()
                    {
                        return Err(DriverError::Device(format!(
                            "resource '{}': {status}",
                            r.name()
                        )));
                    }
                }
                Target::Method {
                    object,
                    method,
                    inputs,
                } => {
                    // The written values are the arguments; missing ones come from inputMap.
                    let mut args = match v {
                        CommandValue::Array(items) => items.clone(),
                        one => vec![one.clone()],
                    };
                    args.extend(
                        inputs
                            .iter()
                            .skip(args.len())
                            .map(|i| CommandValue::String(i.clone())),
                    );
                    self.call(&session, &endpoint, r.name(), &object, &method, &args)
                        .await?;
                }
            }
        }
        Ok(())
    }

    fn validate(&self, device: &Device) -> Result<(), String> {
        Endpoint::of(device).map(|_| ())
    }

    async fn start(&self, sdk: Sdk) {
        let (tx, rx) = mpsc::channel(monitor::QUEUE);
        if self.sink.set(tx).is_ok() {
            tokio::spawn(monitor::deliver(sdk.clone(), rx));
        }
        let _ = self.links.sdk.set(sdk);
    }

    fn pushes_autoevent(&self, d: &DeviceRef, ae: &AutoEvent) -> bool {
        self.subscribed(d, ae).is_some()
    }

    async fn device_changed(&self, change: DeviceChange) {
        let _ = change;
        let (Some(sdk), Some(sink)) = (self.links.sdk.get(), self.sink.get()) else {
            return;
        };
        // What every device wants now: monitors follow, and a session no device uses any
        // more closes (the next use of its endpoint opens one again).
        let mut wanted = self.wanted(sdk);
        {
            let mut monitors = self.monitors.lock().await;
            monitors.retain(|e, _| wanted.contains_key(e));
            for (endpoint, items) in wanted.drain() {
                match monitors.get(&endpoint) {
                    Some(m) => m.want(items),
                    None => {
                        let m = Monitor::start(
                            Arc::clone(&self.links),
                            endpoint.clone(),
                            items,
                            sdk.clone(),
                            sink.clone(),
                        );
                        monitors.insert(endpoint, m);
                    }
                }
            }
        }
        let used: HashSet<Endpoint> = sdk
            .devices()
            .iter()
            .filter_map(|d| Endpoint::of(&d.device).ok())
            .collect();
        self.links.close_unused(&used).await;
    }

    async fn discover(&self) -> Result<Vec<outpost_device_sdk::Discovered>, DriverError> {
        let cfg = &self.links.cfg;
        let mut found = Vec::new();
        for url in &cfg.discovery_urls {
            let endpoint = Endpoint::anonymous(url);
            let outcome = match self.links.session(&endpoint).await {
                Ok((session, _)) => browse::devices(&session, url, cfg.discovery_depth).await,
                Err(e) => Err(e),
            };
            // A server that cannot be browsed does not keep the others' devices from being
            // found.
            match outcome {
                Ok(devices) => found.extend(devices),
                Err(e) => tracing::warn!(url, error = %e, "cannot browse the server for discovery"),
            }
        }
        // Discovery's sessions are not kept for devices that do not use them.
        if let Some(sdk) = self.links.sdk.get() {
            let used: HashSet<Endpoint> = sdk
                .devices()
                .iter()
                .filter_map(|d| Endpoint::of(&d.device).ok())
                .collect();
            self.links.close_unused(&used).await;
        }
        Ok(found)
    }

    async fn secret_changed(&self, name: &str) {
        // Sessions made with the old secret are made again with the new one.
        self.links
            .close_if(|e| matches!(&e.auth, Auth::Username { secret } if secret == name))
            .await;
    }

    async fn stop(&self) {
        self.monitors.lock().await.clear();
        self.links.close_unused(&HashSet::new()).await;
    }
}

impl OpcUa {
    /// The data types of `method`'s input arguments (its `InputArguments` property), as
    /// namespace-0 ids.
    async fn input_types(
        &self,
        session: &Session,
        endpoint: &Endpoint,
        method: &NodeId,
    ) -> Result<Vec<u32>, DriverError> {
        let path = BrowsePath {
            starting_node: method.clone(),
            relative_path: RelativePath {
                elements: Some(vec![RelativePathElement {
                    reference_type_id: NodeId::new(0, HAS_PROPERTY),
                    is_inverse: false,
                    include_subtypes: true,
                    target_name: QualifiedName::new(0, "InputArguments"),
                }]),
            },
        };
        let found = session
            .translate_browse_paths_to_node_ids(&[path])
            .await
            .map_err(|e| session_error(endpoint, e))?;
        let Some(target) = found
            .first()
            .and_then(|r| r.targets.as_ref())
            .and_then(|t| t.first())
        else {
            // A method without inputs.
            return Ok(Vec::new());
        };
        let read = ReadValueId {
            node_id: target.target_id.node_id.clone(),
            attribute_id: AttributeId::Value as u32,
            ..Default::default()
        };
        let values = session
            .read(&[read], TimestampsToReturn::Neither, 0.0)
            .await
            .map_err(|e| session_error(endpoint, e))?;
        let Some(Variant::Array(args)) = values.first().and_then(|v| v.value.as_ref()) else {
            return Ok(Vec::new());
        };
        Ok(args
            .values
            .iter()
            .filter_map(|a| match a {
                Variant::ExtensionObject(e) => e.inner_as::<Argument>(),
                _ => None,
            })
            .map(|a| match (&a.data_type.identifier, a.data_type.namespace) {
                (Identifier::Numeric(n), 0) => *n,
                _ => 0,
            })
            .collect())
    }

    /// Calls `method` on `object` with `args` made the types the method declares; its first
    /// output (or "OK" when it has none) is the reading.
    async fn call(
        &self,
        session: &Session,
        endpoint: &Endpoint,
        name: &str,
        object: &NodeRef,
        method: &NodeRef,
        args: &[CommandValue],
    ) -> Result<CommandValue, DriverError> {
        let method_id = self.links.node(session, method).await?;
        let types = self.input_types(session, endpoint, &method_id).await?;
        if types.len() != args.len() {
            return Err(DriverError::Invalid(format!(
                "method '{name}' takes {} arguments, {} given",
                types.len(),
                args.len()
            )));
        }
        let input_arguments = types
            .iter()
            .zip(args)
            .map(|(t, a)| convert::argument(*t, a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DriverError::Invalid(format!("method '{name}': {e}")))?;
        let request = CallMethodRequest {
            object_id: self.links.node(session, object).await?,
            method_id,
            input_arguments: Some(input_arguments),
        };
        let result = session
            .call_one(request)
            .await
            .map_err(|e| session_error(endpoint, e))?;
        if result.status_code.is_bad() {
            return Err(DriverError::Device(format!(
                "method '{name}': {}",
                result.status_code
            )));
        }
        Ok(result
            .output_arguments
            .as_ref()
            .and_then(|o| o.first())
            .and_then(convert::from_variant)
            .unwrap_or_else(|| CommandValue::String("OK".into())))
    }
}
