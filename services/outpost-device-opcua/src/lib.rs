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
//! - A server that does not answer, refuses the session or drops it is
//!   [`DriverError::Unreachable`] (counts towards DOWN); a Bad status for a node is
//!   [`DriverError::Device`] (the server answered).

pub mod address;
pub mod convert;
pub mod endpoint;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opcua::client::{ClientBuilder, IdentityToken, Session};
use opcua::types::{
    Argument, AttributeId, BrowsePath, CallMethodRequest, DataValue, Identifier, NodeId,
    QualifiedName, ReadValueId, RelativePath, RelativePathElement, StatusCode, TimestampsToReturn,
    Variant, WriteValue,
};
use outpost_contracts::metadata::Device;
use outpost_device_sdk::{CommandValue, DeviceChange, DeviceRef, Driver, DriverError, ResourceRef};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::address::{NodeRef, Target};
use crate::endpoint::Endpoint;

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
}

impl Default for OpcUaConfig {
    fn default() -> Self {
        Self {
            application_uri: String::new(),
            session_timeout_ms: 60_000,
            connect_timeout_ms: 5_000,
        }
    }
}

impl outpost_device_sdk::DriverConfig for OpcUaConfig {
    const SERVICE: &'static str = SERVICE;
    const SECTION: &'static str = "device_opcua";
    const PORT: u16 = 59997;
    const ENABLED: bool = false;

    fn driver(
        start: &outpost_kit::Start<Config>,
    ) -> Result<Arc<dyn Driver>, outpost_kit::StartError> {
        let pki = start.ctx.data_dir.join(PKI_DIR);
        Ok(Arc::new(OpcUa::new(start.cfg.driver.clone(), pki)))
    }

    /// The client's certificate store (`<data>/opcua-pki`: its own certificate, the servers'
    /// it trusts and those it refused), its own.
    fn sandbox(
        &self,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_kit::sandbox::StorageError> {
        files.own_dir(PKI_DIR).map(|_| ())
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
    }
}

pub type Config = outpost_device_sdk::Config<OpcUaConfig>;

/// The OPC UA adapter.
pub type DeviceOpcUa = outpost_device_sdk::Adapter<OpcUaConfig>;

/// The OPC UA driver: one session per endpoint, made when a device there is first used.
pub struct OpcUa {
    cfg: OpcUaConfig,
    /// The client's certificate store.
    pki: std::path::PathBuf,
    sessions: Mutex<HashMap<Endpoint, Open>>,
}

/// A session and the task that keeps it (its event loop: keep-alives, reconnects).
struct Open {
    session: Arc<Session>,
    task: tokio::task::JoinHandle<StatusCode>,
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
            cfg,
            pki,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn application_uri(&self) -> String {
        if self.cfg.application_uri.is_empty() {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
            format!("urn:outpost:{host}:{SERVICE}")
        } else {
            self.cfg.application_uri.clone()
        }
    }

    /// The session to `endpoint`, connected first if there is none yet.
    async fn session(&self, endpoint: &Endpoint) -> Result<Arc<Session>, DriverError> {
        let mut sessions = self.sessions.lock().await;
        if let Some(open) = sessions.get(endpoint)
            && !open.task.is_finished()
        {
            return Ok(Arc::clone(&open.session));
        }
        sessions.remove(endpoint);
        let mut client = ClientBuilder::new()
            .application_name("Outpost device-opcua")
            .application_uri(self.application_uri())
            .product_uri("urn:outpost:device-opcua")
            .pki_dir(&self.pki)
            .session_retry_limit(3)
            .session_timeout(u32::try_from(self.cfg.session_timeout_ms).unwrap_or(u32::MAX))
            .trust_server_certs(true)
            .create_sample_keypair(false)
            .client()
            .map_err(|e| DriverError::Invalid(format!("the OPC UA client: {e:?}")))?;
        let wait = Duration::from_millis(self.cfg.connect_timeout_ms);
        let description = endpoint.description();
        let connect = client.connect_to_matching_endpoint(description, IdentityToken::Anonymous);
        let (session, event_loop) = tokio::time::timeout(wait, connect)
            .await
            .map_err(|_| session_error(endpoint, "no answer"))?
            .map_err(|e| session_error(endpoint, e))?;
        let task = event_loop.spawn();
        let connected = tokio::time::timeout(wait, session.wait_for_connection()).await;
        if !matches!(connected, Ok(true)) {
            task.abort();
            return Err(session_error(endpoint, "the session was not activated"));
        }
        sessions.insert(
            endpoint.clone(),
            Open {
                session: Arc::clone(&session),
                task,
            },
        );
        Ok(session)
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
        let session = self.session(&endpoint).await?;
        let mut out = Vec::with_capacity(resources.len());
        for r in resources {
            match target(r)? {
                Target::Variable(node) => {
                    let node_id = self.node(&session, &node).await?;
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
        let session = self.session(&endpoint).await?;
        for (r, v) in values {
            match target(r)? {
                Target::Variable(node) => {
                    let node_id = self.node(&session, &node).await?;
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

    async fn device_changed(&self, change: DeviceChange) {
        // A device that left (or moved) may leave an endpoint no device uses: its session
        // closes; the next use of the endpoint opens one again.
        if let DeviceChange::Removed(_) | DeviceChange::Updated(_) = change {
            self.sessions.lock().await.clear();
        }
    }

    async fn stop(&self) {
        let sessions: Vec<Open> = self.sessions.lock().await.drain().map(|(_, o)| o).collect();
        for open in sessions {
            let _ = open.session.disconnect().await;
        }
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
        let method_id = self.node(session, method).await?;
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
            object_id: self.node(session, object).await?,
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
