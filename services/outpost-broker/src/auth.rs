//! Who may connect to the broker, and what they may do.
//!
//! - The node's own services authenticate as the internal user, with their certificate over
//!   TLS ([`crate::front`]: a certificate of the node's services or administrator from the
//!   node CA) or with the node's bus token, and may do anything.
//! - Devices authenticate with user name = device name and password = the device's secret,
//!   which core-metadata checks (it keeps only a salted hash), or over TLS with their
//!   certificate, which core-metadata checks too (its common name is the device). A device may publish only
//!   its own telemetry and command replies and subscribe only below its own command topic
//!   ([`DeviceTopics`]), so it can never speak for another device. A verified credential
//!   is trusted for `device_auth_cache_s`, then checked again on the device's next
//!   publish: a removed secret or device stops working within that time. The broker also
//!   follows core-metadata's device events, and drops connections made with a secret that is
//!   no longer the device's from routing, with their subscriptions, at once
//!   ([`NodeAuth::revoked`]): commands meant for the device no longer reach them.
//! - Clients on loopback may connect anonymously when `allow_anonymous_loopback` is set
//!   (by default only while `security.internal_tls` is off); they may not publish on
//!   device topics.
//!
//! Failed attempts are counted and logged at a limited rate; the reason given to the
//! client is the MQTT "bad user name or password" / "not authorized" code, nothing more.
//! Guessing is throttled: after `auth_failure_burst` failed logins of one device from one
//! address (ten times as many from one address for any device; an IPv6 address counts by
//! its /64), further attempts are refused with "connection rate exceeded" before any
//! credential is checked, until the bucket refills (one attempt per
//! `auth_failure_refill_s`). A device's attempt is counted before the check, so parallel
//! guesses cannot slip through, and given back when it succeeds; the address's bucket
//! counts failures only, so many devices behind one address may reconnect at once. A device keeps working from other
//! addresses while someone guesses its secret from one; the node's own services are never
//! held back.
//!
//! A client ID a device connected with is that device's while the device exists, also
//! across restarts of the broker ([`Claims`], stored by [`crate::store`]; up to 256 bytes,
//! its 16 most recent): another device or an anonymous client
//! asking for it is refused ("client identifier not valid"). Otherwise the
//! broker would hand the newcomer the session — ending the device's connection and, with a
//! persistent session, passing on its subscriptions and the commands queued for it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt5::broker::auth::{AuthProvider, AuthResult};
use mqtt5::broker::storage::{DynamicStorage, StorageBackend as _};
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::protocol::v5::reason_codes::ReasonCode;
use outpost_bus::metadata::{self, CREDENTIAL_GRACE, Credential, Lookup, MetadataView};
use outpost_contracts::topics::device::{DeviceTopics, is_device_topic};
use outpost_kit::limit::Limiter;
use outpost_kit::ratelog::RateLimitedLog;

/// User IDs of devices carry this prefix, so no device name can pass for the internal user.
pub const DEVICE_USER_PREFIX: &str = "device:";

pub struct NodeAuth {
    internal_user: String,
    internal_password: String,
    allow_anonymous_loopback: bool,
    failures_metric: String,
    log: RateLimitedLog,
    devices: Option<DeviceAuth>,
    /// Failed logins by device and address.
    failed_by_device: Limiter,
    /// Failed logins by address.
    failed_by_addr: Limiter,
    claims: Mutex<Claims>,
    /// Where changes to the claims go to be stored (`None`: kept in memory only).
    claims_log: Option<tokio::sync::mpsc::Sender<ClaimChange>>,
    /// The broker's session storage.
    sessions: std::sync::OnceLock<Arc<DynamicStorage>>,
}

/// Client IDs devices connected with, and whose they are. Each device keeps its
/// `PER_DEVICE` most recently used, so what one device does never evicts another's,
/// and memory is bounded by the devices core-metadata knows (a deleted device's claims go
/// with it).
#[derive(Default)]
pub struct Claims {
    /// Client ID → (device, fingerprint of the secret it connected with, last use).
    owner: HashMap<String, (String, String, u64)>,
    /// Device → its client IDs.
    by_device: HashMap<String, Vec<String>>,
    seq: u64,
}

impl Claims {
    const PER_DEVICE: usize = 16;

    /// The device holding `client_id`, if another than `device` (`None`: an anonymous
    /// client).
    fn holder(&self, client_id: &str, device: Option<&str>) -> Option<&str> {
        self.owner
            .get(client_id)
            .map(|(o, _, _)| o.as_str())
            .filter(|o| Some(*o) != device)
    }

    /// Gives `client_id` to `device`; returns what must reach the disk (nothing when the
    /// device reconnects with an ID it holds already).
    fn claim(&mut self, client_id: &str, device: &str, fingerprint: &str) -> Vec<ClaimChange> {
        self.seq += 1;
        let mut changes = Vec::new();
        let mut held = false;
        if let Some((previous, _, _)) = self.owner.get(client_id) {
            if previous == device {
                held = true;
            } else {
                // Taken over from a device that no longer exists (checked by the caller).
                let previous = previous.clone();
                if let Some(ids) = self.by_device.get_mut(&previous) {
                    ids.retain(|i| i != client_id);
                }
            }
        }
        let ids = self.by_device.entry(device.to_string()).or_default();
        if !ids.iter().any(|i| i == client_id) {
            if ids.len() >= Self::PER_DEVICE {
                // This device's least recently used ID goes.
                let owner = &self.owner;
                if let Some((pos, _)) = ids
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, i)| owner.get(*i).map_or(0, |(_, _, s)| *s))
                {
                    let gone = ids.swap_remove(pos);
                    self.owner.remove(&gone);
                    changes.push(ClaimChange::Released(vec![gone]));
                }
            }
            ids.push(client_id.to_string());
        }
        self.owner.insert(
            client_id.to_string(),
            (device.to_string(), fingerprint.to_string(), self.seq),
        );
        if !held {
            changes.push(ClaimChange::Claimed {
                client_id: client_id.to_string(),
                device: device.to_string(),
                used: self.seq,
            });
        }
        changes
    }

    /// Claims as stored: (client ID, device, last use), any order. Connections made before
    /// are gone, so the secret they were made with is unknown (and not needed).
    pub fn load(rows: impl IntoIterator<Item = (String, String, u64)>) -> Self {
        let mut rows: Vec<_> = rows.into_iter().collect();
        rows.sort_by_key(|(_, _, used)| *used);
        let mut c = Self::default();
        for (client_id, device, used) in rows {
            c.claim(&client_id, &device, "");
            if let Some(o) = c.owner.get_mut(&client_id) {
                o.2 = used;
            }
            c.seq = c.seq.max(used);
        }
        c
    }

    /// The client IDs `device` connected with using the secret with fingerprint
    /// `refused` (any secret when `None`).
    fn made_with(&self, device: &str, refused: Option<&str>) -> Vec<(String, String)> {
        self.by_device
            .get(device)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let (_, fp, _) = self.owner.get(id)?;
                refused
                    .is_none_or(|r| r == fp)
                    .then(|| (id.clone(), fp.clone()))
            })
            .collect()
    }

    /// The fingerprint `client_id` last connected with.
    pub fn fingerprint(&self, client_id: &str) -> Option<&str> {
        self.owner.get(client_id).map(|(_, fp, _)| fp.as_str())
    }

    /// Forgets `device`'s claims (it was deleted); returns them.
    fn release(&mut self, device: &str) -> Vec<String> {
        let ids = self.by_device.remove(device).unwrap_or_default();
        for id in &ids {
            self.owner.remove(id);
        }
        ids
    }
}

/// A change to the claims, for the broker's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimChange {
    Claimed {
        client_id: String,
        device: String,
        used: u64,
    },
    Released(Vec<String>),
}

/// What a CONNECT is, before any credential store is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The node's own services.
    Internal(String),
    /// An anonymous client on loopback.
    Anonymous,
    /// A device whose secret must be checked.
    Device { name: String, secret: String },
    /// A device whose certificate (DER, base64; its chain verified by the TLS front) must
    /// be checked.
    DeviceCert { name: String, cert: String },
}

impl Decision {
    /// The device a device's CONNECT names and the credential to check (empty for the
    /// node's and anonymous clients, which have none to check).
    fn device(&self) -> (&str, Credential<'_>) {
        match self {
            Self::Device { name, secret } => (name, Credential::Secret(secret)),
            Self::DeviceCert { name, cert } => (name, Credential::Certificate(cert)),
            Self::Internal(_) | Self::Anonymous => ("", Credential::Secret("")),
        }
    }
}

impl NodeAuth {
    pub fn new(
        internal_user: String,
        internal_password: String,
        allow_anonymous_loopback: bool,
        failures_metric: String,
    ) -> Self {
        Self {
            internal_user,
            internal_password,
            allow_anonymous_loopback,
            failures_metric,
            log: RateLimitedLog::default(),
            devices: None,
            failed_by_device: Limiter::new(0.1, 5.0),
            failed_by_addr: Limiter::new(1.0, 50.0),
            claims: Mutex::default(),
            claims_log: None,
            sessions: std::sync::OnceLock::new(),
        }
    }

    /// Starts from `claims` (as stored) and sends every change to them to `log`, so they
    /// survive a restart of the broker: otherwise, until a device reconnected, any other
    /// device could take its client ID first.
    pub fn with_claims(
        mut self,
        claims: Claims,
        log: tokio::sync::mpsc::Sender<ClaimChange>,
    ) -> Self {
        self.claims = Mutex::new(claims);
        self.claims_log = Some(log);
        self
    }

    /// Lets the device's connections see the broker's session storage (set once the
    /// broker exists, before it runs).
    pub fn set_sessions(&self, storage: Arc<DynamicStorage>) {
        let _ = self.sessions.set(storage);
    }

    /// A stored session of `client_id` made with another credential (a secret since
    /// rotated, perhaps while the broker was down) is removed before the device resumes:
    /// the broker would refuse to resume it for a different user, locking the device out
    /// until the session expired.
    async fn forget_stale_session(&self, client_id: &str, user: &str) {
        let Some(storage) = self.sessions.get() else {
            return;
        };
        let stale = matches!(
            storage.get_session(client_id).await,
            Ok(Some(s)) if s.user_id.as_deref().is_some_and(|u| u != user)
        );
        if stale && let Err(e) = storage.remove_session(client_id).await {
            tracing::warn!(client_id, error = %e, "cannot drop a session made with an old credential");
        }
    }

    fn record(&self, changes: Vec<ClaimChange>) {
        let Some(log) = &self.claims_log else {
            return;
        };
        for c in changes {
            if log.try_send(c).is_err()
                && let Some(suppressed) = self.log.check("claims")
            {
                tracing::warn!(
                    suppressed,
                    "cannot store a client ID claim (the store is behind or stopped); it holds until the broker restarts"
                );
            }
        }
    }

    /// After `burst` failed logins of one device from one address, one more attempt per
    /// `refill` (from one address, for any device: ten times as many).
    pub fn with_failure_limits(mut self, burst: u32, refill: Duration) -> Self {
        let rate = 1.0 / refill.as_secs_f64().max(0.001);
        self.failed_by_device = Limiter::new(rate, f64::from(burst));
        self.failed_by_addr = Limiter::new(rate * 10.0, f64::from(burst) * 10.0);
        self
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// After core-metadata changed or removed `device`: the client IDs (with the
    /// fingerprint they connected with) whose connections may no longer receive anything,
    /// because the secret they connected with is no longer the device's, or the device is
    /// gone. The secret last seen is checked with core-metadata again; while it cannot be
    /// asked, nothing is cut off (publishing is still checked). The caller cuts a client ID
    /// off only if it still carries that fingerprint ([`NodeAuth::still_made_with`]): the
    /// device may have reconnected with its new secret meanwhile.
    pub async fn revoked(&self, device: &str, deleted: bool) -> Vec<(String, String)> {
        let Some(devices) = &self.devices else {
            return Vec::new();
        };
        if deleted {
            devices.grants().remove(device);
            // Changes are queued under the lock, so they reach the database in the order
            // they were made.
            let mut claims = self.claims();
            let cut = claims.made_with(device, None);
            let released = claims.release(device);
            if !released.is_empty() {
                self.record(vec![ClaimChange::Released(released)]);
            }
            return cut;
        }
        let Some(grant) = devices.grants().get(device).cloned() else {
            // No connection of it since the broker started, or its credential was refused
            // already (connections made with it are cut off then too).
            return Vec::new();
        };
        devices.expire(device);
        match devices.verify(device, grant.credential()).await {
            Verdict::Refused => self.claims().made_with(device, Some(&grant.fingerprint)),
            Verdict::Granted(_) | Verdict::Unknown(_) => Vec::new(),
        }
    }

    /// The devices with a credential granted since the broker started.
    pub fn granted_devices(&self) -> Vec<String> {
        self.devices
            .as_ref()
            .map(|d| d.grants().keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `client_id`'s last connection was made with the secret `fingerprint` names.
    pub fn still_made_with(&self, client_id: &str, fingerprint: &str) -> bool {
        self.claims().fingerprint(client_id) == Some(fingerprint)
    }

    /// Spends an attempt of `device` from `addr` before its credential is checked (so
    /// parallel guesses at one device cannot all pass), or refuses it while that bucket or
    /// the address's is empty; a login that succeeds gets its attempt back
    /// ([`NodeAuth::succeeded`]), one that fails also counts against the address
    /// ([`NodeAuth::failed`]). The address is only looked at here: a thousand devices
    /// behind one address reconnecting at once must not use up its bucket.
    fn attempt(&self, device: &str, addr: SocketAddr) -> bool {
        let (by_device, by_addr) = attempt_keys(device, addr);
        self.failed_by_addr.check(&by_addr).is_ok()
            && self.failed_by_device.take(&by_device).is_ok()
    }

    fn succeeded(&self, device: &str, addr: SocketAddr) {
        let (by_device, _) = attempt_keys(device, addr);
        self.failed_by_device.give_back(&by_device);
    }

    fn failed(&self, addr: SocketAddr) {
        let (_, by_addr) = attempt_keys("", addr);
        let _ = self.failed_by_addr.take(&by_addr);
    }

    /// A device's CONNECT: throttled after failures, its secret checked with
    /// core-metadata, its client ID its own.
    async fn authenticate_device(
        &self,
        name: &str,
        credential: Credential<'_>,
        client_id: &str,
        addr: SocketAddr,
    ) -> Result<AuthResult, ReasonCode> {
        let Some(devices) = &self.devices else {
            return Err(ReasonCode::BadUsernameOrPassword);
        };
        if client_id.len() > MAX_DEVICE_CLIENT_ID {
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
        if !self.attempt(name, addr) {
            return Err(ReasonCode::ConnectionRateExceeded);
        }
        match devices.verify(name, credential).await {
            Verdict::Granted(_) => self.succeeded(name, addr),
            Verdict::Refused => {
                self.failed(addr);
                return Err(ReasonCode::BadUsernameOrPassword);
            }
            Verdict::Unknown(why) => {
                // Not the client's failure.
                self.succeeded(name, addr);
                tracing::warn!(
                    device = name,
                    error = why,
                    "cannot check a device credential"
                );
                return Err(ReasonCode::ServerUnavailable);
            }
        }
        let holder = self
            .claims()
            .holder(client_id, Some(name))
            .map(str::to_string);
        if let Some(holder) = holder {
            // Another device's, unless that device is gone (deleted while the broker was
            // away, or renamed).
            match devices.view.device(&holder).await {
                Lookup::Missing => {}
                Lookup::Found(_) | Lookup::Stale { .. } => {
                    return Err(ReasonCode::ClientIdentifierNotValid);
                }
                Lookup::Unavailable(_) => return Err(ReasonCode::ServerUnavailable),
            }
        }
        let fp = fingerprint(credential);
        {
            let mut claims = self.claims();
            let changes = claims.claim(client_id, name, &fp);
            self.record(changes);
        }
        let user = format!("{DEVICE_USER_PREFIX}{name}:{fp}");
        self.forget_stale_session(client_id, &user).await;
        tracing::debug!(
            device = name,
            peer = %addr,
            certificate = matches!(credential, Credential::Certificate(_)),
            "device connected"
        );
        Ok(AuthResult::success_with_user(user))
    }

    /// Lets devices connect with the credentials core-metadata keeps.
    pub fn with_devices(
        mut self,
        view: MetadataView,
        cache_for: Duration,
        base_topic: &str,
    ) -> Self {
        self.devices = Some(DeviceAuth {
            view,
            cache_for,
            base_topic: base_topic.to_string(),
            grants: Mutex::default(),
        });
        self
    }

    /// Decides what a CONNECT is; pure so it can be tested without sockets.
    pub fn decide(&self, c: &Connect<'_>) -> Result<Decision, ReasonCode> {
        use crate::front::Presented;
        let loopback = c.addr.ip().to_canonical().is_loopback();
        let decision = match (c.presented, c.username, c.password) {
            // A certificate decides who the client is, whatever user name it gives.
            (Some(Presented::Node(_)), _, _) => {
                return Ok(Decision::Internal(self.internal_user.clone()));
            }
            (Some(Presented::Device { name, .. }), Some(u), _) if u != name => {
                return Err(ReasonCode::BadUsernameOrPassword);
            }
            (Some(Presented::Device { name, cert }), _, _) if self.devices.is_some() => {
                Decision::DeviceCert {
                    name: name.clone(),
                    cert: cert.clone(),
                }
            }
            (Some(Presented::Device { .. }), _, _) => return Err(ReasonCode::NotAuthorized),
            (None, u, p) => self.decide_credentials(u, p, loopback)?,
        };
        // The node's own clients' IDs are reserved: another client taking one over would
        // cut a service off the bus and discard its queued messages.
        if !matches!(decision, Decision::Internal(_))
            && c.client_id.starts_with(RESERVED_CLIENT_PREFIX)
        {
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
        // Sessions the broker keeps while a client is away cost memory; only clients with
        // credentials may have them.
        if decision == Decision::Anonymous && c.persistent {
            return Err(ReasonCode::NotAuthorized);
        }
        Ok(decision)
    }

    /// What a CONNECT without a certificate is, by its user name and password.
    fn decide_credentials(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        loopback: bool,
    ) -> Result<Decision, ReasonCode> {
        Ok(match (username, password) {
            (Some(u), Some(p)) if u == self.internal_user => {
                if !constant_time_eq(p, self.internal_password.as_bytes()) {
                    return Err(ReasonCode::BadUsernameOrPassword);
                }
                Decision::Internal(u.to_string())
            }
            (Some(u), Some(p)) if self.devices.is_some() && !u.is_empty() => {
                let secret = std::str::from_utf8(p)
                    .map_err(|_| ReasonCode::BadUsernameOrPassword)?
                    .to_string();
                Decision::Device {
                    name: u.to_string(),
                    secret,
                }
            }
            (None, None) if loopback && self.allow_anonymous_loopback => Decision::Anonymous,
            (None, _) => return Err(ReasonCode::NotAuthorized),
            _ => return Err(ReasonCode::BadUsernameOrPassword),
        })
    }

    /// Decides a CONNECT from `client_addr` (the client's own address) and, for clients
    /// of the TLS front, what their certificate proves.
    pub async fn authenticate_connect(
        &self,
        connect: &ConnectPacket,
        client_addr: SocketAddr,
        presented: Option<&crate::front::Presented>,
    ) -> AuthResult {
        let persistent = if connect.protocol_version == 5 {
            connect
                .properties
                .get_session_expiry_interval()
                .unwrap_or(0)
                > 0
        } else {
            !connect.clean_start
        };
        let user = connect.username.as_deref().unwrap_or("");
        let decision = self.decide(&Connect {
            username: connect.username.as_deref(),
            password: connect.password.as_deref(),
            client_id: &connect.client_id,
            persistent,
            addr: client_addr,
            presented,
        });
        let refuse = |code| self.refuse(code, client_addr, &connect.client_id, user);
        match decision {
            Ok(Decision::Internal(user)) => AuthResult::success_with_user(user),
            Ok(Decision::Anonymous) => {
                if self.claims().holder(&connect.client_id, None).is_none() {
                    AuthResult::success()
                } else {
                    refuse(ReasonCode::ClientIdentifierNotValid)
                }
            }
            Ok(d @ (Decision::Device { .. } | Decision::DeviceCert { .. })) => {
                let (name, credential) = d.device();
                self.authenticate_device(name, credential, &connect.client_id, client_addr)
                    .await
                    .unwrap_or_else(refuse)
            }
            Err(code) => {
                if code == ReasonCode::BadUsernameOrPassword {
                    // Counted by address only: the node's own services, which may
                    // share it, are never held back.
                    self.failed(client_addr);
                }
                refuse(code)
            }
        }
    }

    fn refuse(
        &self,
        code: ReasonCode,
        addr: SocketAddr,
        client_id: &str,
        user: &str,
    ) -> AuthResult {
        metrics::counter!(self.failures_metric.clone()).increment(1);
        if let Some(suppressed) = self.log.check("auth") {
            tracing::warn!(
                peer = %addr,
                client_id,
                user,
                reason = ?code,
                suppressed,
                "refused an MQTT connection"
            );
        }
        AuthResult::fail(code)
    }

    fn denied(&self, what: &'static str, user: Option<&str>, topic: &str) {
        metrics::counter!(self.failures_metric.clone(), "what" => what).increment(1);
        let user = user.unwrap_or("anonymous");
        if let Some(suppressed) = self.log.check(&format!("{what}\u{0}{user}")) {
            tracing::warn!(user, topic, suppressed, "refused an MQTT {what}");
        }
    }
}

/// Device credentials, checked through the metadata view, and what the broker derived
/// from them for each device (its topics, the secret its connections used).
///
/// A connected device's user ID is `device:<name>:<fingerprint of the secret it used>`, so
/// every later check is about the secret of that very connection: once the secret is
/// rotated or removed, connections made with the old one fail their next check.
struct DeviceAuth {
    view: MetadataView,
    cache_for: Duration,
    /// The bus's base topic: devices may not publish or subscribe under it.
    base_topic: String,
    /// Device name → the last secret checked for it.
    grants: Mutex<HashMap<String, Grant>>,
}

/// Where attempts are counted: the device from the address, and the address. An IPv6
/// client is counted by its /64 (one host usually has all of it).
fn attempt_keys(device: &str, addr: SocketAddr) -> (String, String) {
    let by_addr = match addr.ip().to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        v4 => v4.to_string(),
    };
    (format!("{device}\u{0}{by_addr}"), by_addr)
}

/// The longest client ID a device may use (the broker remembers whose each one is).
const MAX_DEVICE_CLIENT_ID: usize = 256;

/// The service whose devices may use the broker.
const MQTT_SERVICE: &str = "device-mqtt";

#[derive(Clone)]
struct Grant {
    fingerprint: String,
    /// The secret, or the certificate (DER, base64) when `cert`.
    secret: String,
    cert: bool,
    topics: DeviceTopics,
    /// When metadata was last asked (or an attempt failed).
    checked: Instant,
}

/// What checking a device's credential gave.
enum Verdict {
    Granted(DeviceTopics),
    Refused,
    /// core-metadata could not be asked.
    Unknown(String),
}

impl Grant {
    fn credential(&self) -> Credential<'_> {
        if self.cert {
            Credential::Certificate(&self.secret)
        } else {
            Credential::Secret(&self.secret)
        }
    }
}

/// The credential's material and whether it is a certificate.
fn material(credential: Credential<'_>) -> (&str, bool) {
    match credential {
        Credential::Secret(s) => (s, false),
        Credential::Certificate(c) => (c, true),
    }
}

/// A short, non-reversible name for a credential (the first 8 bytes of the SHA-256 of the
/// secret, or of `cert:` and the certificate, hex).
fn fingerprint(credential: Credential<'_>) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    match credential {
        Credential::Secret(s) => h.update(s.as_bytes()),
        Credential::Certificate(c) => {
            h.update(b"cert:");
            h.update(c.as_bytes());
        }
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl DeviceAuth {
    fn grants(&self) -> std::sync::MutexGuard<'_, HashMap<String, Grant>> {
        self.grants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks `secret` for device `name`, from the grant while it is fresh, else through
    /// the view. When core-metadata cannot be asked, a credential verified within
    /// [`CREDENTIAL_GRACE`] is still accepted (the view's policy), and the view is asked
    /// again after a second rather than on every message.
    async fn verify(&self, name: &str, credential: Credential<'_>) -> Verdict {
        let (secret, cert) = material(credential);
        let same =
            |g: &Grant| g.cert == cert && constant_time_eq(g.secret.as_bytes(), secret.as_bytes());
        let cached = self.grants().get(name).filter(|g| same(g)).cloned();
        if let Some(g) = &cached
            && g.checked.elapsed() < self.cache_for
        {
            return Verdict::Granted(g.topics.clone());
        }
        let (device, fresh) = match self.view.verify(name, credential).await {
            Lookup::Found(metadata::Verdict::Granted(device)) => (device, true),
            Lookup::Stale {
                value: metadata::Verdict::Granted(device),
                age,
            } if age <= CREDENTIAL_GRACE => (device, false),
            Lookup::Found(metadata::Verdict::Pending) | Lookup::Missing => {
                // Forget a credential that no longer works (rotated or removed), unless a
                // newer one was checked meanwhile.
                let mut grants = self.grants();
                if grants.get(name).is_some_and(same) {
                    grants.remove(name);
                }
                return Verdict::Refused;
            }
            Lookup::Stale { age, .. } => {
                return Verdict::Unknown(format!(
                    "core-metadata has not answered for {} s",
                    age.as_secs()
                ));
            }
            Lookup::Unavailable(e) => return Verdict::Unknown(e.to_string()),
        };
        if device.service_name != MQTT_SERVICE {
            tracing::debug!(device = name, service = %device.service_name, "not an MQTT device");
            return Verdict::Refused;
        }
        let topics = DeviceTopics::of(&device);
        if let Err(why) = topics.check(&self.base_topic) {
            tracing::warn!(
                device = name,
                why,
                "device refused: its topics cannot be granted"
            );
            return Verdict::Refused;
        }
        // From the last view: asked again after a second, not on every message.
        let checked = if fresh {
            Instant::now()
        } else {
            Instant::now()
                .checked_sub(self.cache_for.saturating_sub(Duration::from_secs(1)))
                .unwrap_or_else(Instant::now)
        };
        self.grants().insert(
            name.to_string(),
            Grant {
                fingerprint: fingerprint(credential),
                secret: secret.to_string(),
                cert,
                topics: topics.clone(),
                checked,
            },
        );
        Verdict::Granted(topics)
    }

    /// Makes the next check of `name`'s credential ask core-metadata.
    fn expire(&self, name: &str) {
        if let Some(g) = self.grants().get_mut(name) {
            g.checked = Instant::now()
                .checked_sub(self.cache_for)
                .unwrap_or(g.checked);
        }
    }

    /// The topics of the connection whose user ID is `user`, checked again once the cache
    /// time has passed; `None` when its secret is no longer the device's.
    async fn topics(&self, user: &str) -> Option<DeviceTopics> {
        let (name, fp) = user.strip_prefix(DEVICE_USER_PREFIX)?.rsplit_once(':')?;
        let grant = self.grants().get(name).cloned()?;
        // A newer secret was checked since this connection was made: its own is stale.
        if grant.fingerprint != fp {
            return None;
        }
        if grant.checked.elapsed() < self.cache_for {
            return Some(grant.topics);
        }
        match self.verify(name, grant.credential()).await {
            Verdict::Granted(t) => Some(t),
            Verdict::Refused | Verdict::Unknown(_) => None,
        }
    }

    /// Whether the connection `user` may do what `allowed` says: decided under the lock
    /// while the grant is fresh (every message of a device passes here), checked again
    /// with metadata otherwise.
    async fn allows(&self, user: &str, allowed: impl Fn(&DeviceTopics) -> bool) -> bool {
        let fresh = user
            .strip_prefix(DEVICE_USER_PREFIX)
            .and_then(|u| u.rsplit_once(':'))
            .and_then(|(name, fp)| {
                let grants = self.grants();
                let g = grants.get(name)?;
                (g.fingerprint == fp && g.checked.elapsed() < self.cache_for)
                    .then(|| allowed(&g.topics))
            });
        match fresh {
            Some(ok) => ok,
            None => self.topics(user).await.is_some_and(|t| allowed(&t)),
        }
    }
}

/// Client IDs only the node's own services may use.
pub const RESERVED_CLIENT_PREFIX: &str = "outpost-";

/// What [`NodeAuth::decide`] looks at in a CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub client_id: &'a str,
    /// Whether the client asks the broker to keep its session after it disconnects.
    pub persistent: bool,
    /// The client's address (through the TLS front: its own, not the front's).
    pub addr: SocketAddr,
    /// What the client's certificate proves (clients of the TLS front only).
    pub presented: Option<&'a crate::front::Presented>,
}

/// Compares secrets in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

impl AuthProvider for NodeAuth {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        client_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = mqtt5::Result<AuthResult>> + Send + 'a>> {
        // The plain listener: no certificate, whatever address the client has.
        Box::pin(async move { Ok(self.authenticate_connect(connect, client_addr, None).await) })
    }

    fn authorize_publish<'a>(
        &'a self,
        _client_id: &str,
        user_id: Option<&'a str>,
        topic: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let ok = match user_id {
                Some(u) if u == self.internal_user => true,
                None => !is_device_topic(topic),
                Some(u) => match &self.devices {
                    Some(devices) => devices.allows(u, |t| t.may_publish(topic)).await,
                    None => false,
                },
            };
            if !ok {
                self.denied("publish", user_id, topic);
            }
            ok
        })
    }

    fn authorize_subscribe<'a>(
        &'a self,
        _client_id: &str,
        user_id: Option<&'a str>,
        topic_filter: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let ok = match user_id {
                Some(u) if u == self.internal_user => true,
                None => true,
                Some(u) => match &self.devices {
                    Some(devices) => devices.allows(u, |t| t.may_subscribe(topic_filter)).await,
                    None => false,
                },
            };
            if !ok {
                self.denied("subscribe", user_id, topic_filter);
            }
            ok
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_kit::internal::Identity;

    fn auth() -> NodeAuth {
        NodeAuth::new("outpost".into(), "s3cret".into(), true, "m".into())
    }

    #[test]
    fn client_ids_belong_to_the_device_that_used_them() {
        let mut c = Claims::default();
        assert_eq!(c.holder("p1", None), None);
        c.claim("p1", "press-1", "fp-a");
        assert_eq!(c.holder("p1", Some("press-1")), None);
        assert_eq!(c.holder("p1", Some("press-2")), Some("press-1"));
        assert_eq!(
            c.holder("p1", None),
            Some("press-1"),
            "nor an anonymous client"
        );
        assert_eq!(c.holder("p2", Some("press-2")), None);
        // Connections made with a secret that is no longer the device's.
        c.claim("p1-b", "press-1", "fp-b");
        c.claim("p3", "press-3", "fp-a");
        assert_eq!(
            c.made_with("press-1", Some("fp-a")),
            [("p1".to_string(), "fp-a".to_string())]
        );
        assert_eq!(c.made_with("press-1", None).len(), 2);
        assert_eq!(c.fingerprint("p1-b"), Some("fp-b"));
        // Taken over from a device that is gone; a deleted device's claims go with it.
        c.claim("p3", "press-4", "fp-c");
        assert!(c.made_with("press-3", None).is_empty());
        c.release("press-1");
        assert_eq!(c.holder("p1", Some("press-2")), None);
        // Bounded per device: one device's IDs never push out another's.
        for i in 0..100 {
            c.claim(&format!("id-{i}"), "press-5", "fp");
        }
        assert_eq!(c.made_with("press-5", None).len(), Claims::PER_DEVICE);
        assert_eq!(c.holder("id-99", Some("press-6")), Some("press-5"));
        assert_eq!(c.holder("p3", Some("press-6")), Some("press-4"));
    }

    #[test]
    fn claims_report_what_must_be_stored_and_load_back() {
        let mut c = Claims::default();
        let claimed = |id: &str, dev: &str, used| ClaimChange::Claimed {
            client_id: id.into(),
            device: dev.into(),
            used,
        };
        assert_eq!(c.claim("a", "d1", "fp"), [claimed("a", "d1", 1)]);
        // Reconnecting with an ID it holds stores nothing.
        assert!(c.claim("a", "d1", "fp2").is_empty());
        // A takeover, and the least recently used ID going when the device is at its bound.
        assert_eq!(c.claim("a", "d2", "fp"), [claimed("a", "d2", 3)]);
        for i in 0..Claims::PER_DEVICE {
            c.claim(&format!("x{i}"), "d3", "fp");
        }
        assert_eq!(
            c.claim("y", "d3", "fp"),
            [
                ClaimChange::Released(vec!["x0".into()]),
                claimed("y", "d3", 4 + Claims::PER_DEVICE as u64)
            ]
        );
        assert_eq!(c.release("d2"), ["a".to_string()]);
        // Loaded in any order, the last use decides which ID goes first.
        let mut loaded = Claims::load([
            ("new".to_string(), "d4".to_string(), 9),
            ("old".to_string(), "d4".to_string(), 2),
            ("b".to_string(), "d5".to_string(), 5),
        ]);
        assert_eq!(loaded.holder("b", Some("d4")), Some("d5"));
        assert_eq!(loaded.holder("old", None), Some("d4"));
        for i in 0..Claims::PER_DEVICE - 1 {
            loaded.claim(&format!("z{i}"), "d4", "fp");
        }
        assert_eq!(
            loaded.holder("old", None),
            None,
            "the least recently used went"
        );
        assert_eq!(loaded.holder("new", None), Some("d4"));
        // Nothing loaded was connected with a known secret.
        assert!(loaded.made_with("d5", Some("fp")).is_empty());
    }

    #[test]
    fn guessing_is_throttled_per_device_and_address() {
        let a = auth().with_failure_limits(2, Duration::from_secs(3600));
        let x: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let y: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        // Two failed attempts (nothing given back), then no more from there.
        assert!(a.attempt("press-1", x));
        assert!(a.attempt("press-1", x));
        assert!(!a.attempt("press-1", x));
        assert!(a.attempt("press-1", y), "other addresses");
        // Logins that succeed never run the bucket dry.
        for _ in 0..10 {
            assert!(a.attempt("press-2", x));
            a.succeeded("press-2", x);
        }
        // IPv6 clients count by their /64.
        let v6 = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(a.attempt("press-3", v6("[2001:db8::1]:1")));
        assert!(a.attempt("press-3", v6("[2001:db8::2]:1")));
        assert!(!a.attempt("press-3", v6("[2001:db8::3]:1")));
        assert!(a.attempt("press-3", v6("[2001:db8:0:1::1]:1")));
        // Many devices behind one address logging in at once are not held back...
        let z: SocketAddr = "10.0.0.3:1000".parse().unwrap();
        for i in 0..1000 {
            assert!(a.attempt(&format!("d{i}"), z));
        }
        // ... but failures from one address, for any device, are: ten times the burst.
        for _ in 0..20 {
            a.failed(z);
        }
        assert!(!a.attempt("press-9", z));
    }

    #[test]
    fn decisions() {
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lo6: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let c = |user: Option<&'static str>,
                 pw: Option<&'static [u8]>,
                 id: &'static str,
                 persistent: bool,
                 addr| Connect {
            username: user,
            password: pw,
            client_id: id,
            persistent,
            addr,
            presented: None,
        };
        let a = auth();
        assert_eq!(
            a.decide(&c(None, None, "tool", false, lo)),
            Ok(Decision::Anonymous)
        );
        assert_eq!(
            a.decide(&c(None, None, "tool", false, lo6)),
            Ok(Decision::Anonymous)
        );
        assert_eq!(
            a.decide(&c(None, None, "tool", false, remote)),
            Err(ReasonCode::NotAuthorized)
        );
        assert_eq!(
            a.decide(&c(
                Some("outpost"),
                Some(b"s3cret"),
                "outpost-core-data",
                true,
                remote
            )),
            Ok(Decision::Internal("outpost".into()))
        );
        assert_eq!(
            a.decide(&c(Some("outpost"), Some(b"wrong"), "x", false, lo)),
            Err(ReasonCode::BadUsernameOrPassword)
        );
        assert_eq!(
            a.decide(&c(Some("someone"), Some(b"x"), "x", false, lo)),
            Err(ReasonCode::BadUsernameOrPassword)
        );
        // Anonymous clients can neither take a service's identity nor keep sessions.
        assert_eq!(
            a.decide(&c(None, None, "outpost-core-data", false, lo)),
            Err(ReasonCode::ClientIdentifierNotValid)
        );
        assert_eq!(
            a.decide(&c(None, None, "tool", true, lo)),
            Err(ReasonCode::NotAuthorized)
        );
        // Without device authentication, other users are refused outright.
        assert_eq!(
            a.decide(&c(
                Some("press-7"),
                Some(b"0123456789abcdef"),
                "p7",
                true,
                remote
            )),
            Err(ReasonCode::BadUsernameOrPassword)
        );
        let test = outpost_testkit::context("mqtt-broker", &[]);
        let view = MetadataView::without_events(
            &test.ctx,
            metadata::ViewConfig {
                timeout: Duration::from_millis(100),
                ..metadata::ViewConfig::default()
            },
        );
        let d = auth().with_devices(view, Duration::from_secs(1), "edgex");
        // A device's credential is for metadata to check; devices may keep sessions but
        // not take the node's client IDs.
        assert_eq!(
            d.decide(&c(
                Some("press-7"),
                Some(b"0123456789abcdef"),
                "p7",
                true,
                remote
            )),
            Ok(Decision::Device {
                name: "press-7".into(),
                secret: "0123456789abcdef".into()
            })
        );
        assert_eq!(
            d.decide(&c(
                Some("press-7"),
                Some(b"0123456789abcdef"),
                "outpost-core-data",
                false,
                lo
            )),
            Err(ReasonCode::ClientIdentifierNotValid)
        );
        assert_eq!(
            d.decide(&c(
                Some("outpost"),
                Some(b"0123456789abcdef"),
                "x",
                false,
                lo
            )),
            Err(ReasonCode::BadUsernameOrPassword)
        );
        assert_eq!(
            d.decide(&c(Some("press-7"), Some(&[0xff, 0xfe]), "p7", false, lo)),
            Err(ReasonCode::BadUsernameOrPassword)
        );
        let strict = NodeAuth::new("outpost".into(), "s3cret".into(), false, "m".into());
        assert_eq!(
            strict.decide(&c(None, None, "tool", false, lo)),
            Err(ReasonCode::NotAuthorized)
        );

        // Through the TLS front, the certificate decides: a service's is the internal
        // user without a password; a device's is that device's to check, never another's,
        // and not the node's client IDs.
        use crate::front::Presented;
        let service = Presented::Node(Identity::Service("core-data".into()));
        let device = Presented::Device {
            name: "press-7".into(),
            cert: "MIIB".into(),
        };
        let via = |user, presented| Connect {
            presented: Some(presented),
            ..c(user, None, "outpost-core-data", true, remote)
        };
        assert_eq!(
            strict.decide(&via(None, &service)),
            Ok(Decision::Internal("outpost".into()))
        );
        // With no user name, or its own.
        for user in [None, Some("press-7")] {
            assert_eq!(
                d.decide(&Connect {
                    client_id: "p7",
                    ..via(user, &device)
                }),
                Ok(Decision::DeviceCert {
                    name: "press-7".into(),
                    cert: "MIIB".into()
                })
            );
        }
        assert_eq!(
            d.decide(&Connect {
                client_id: "p7",
                ..via(Some("press-8"), &device)
            }),
            Err(ReasonCode::BadUsernameOrPassword)
        );
        assert_eq!(
            d.decide(&via(None, &device)),
            Err(ReasonCode::ClientIdentifierNotValid)
        );
        assert_eq!(
            strict.decide(&Connect {
                client_id: "p7",
                ..via(None, &device)
            }),
            Err(ReasonCode::NotAuthorized),
            "without device authentication a device certificate gets nothing"
        );
    }
}
