//! Certificates of an Outpost node: its CA, the certificates it issues (servers, edges,
//! devices), TLS configurations, and reloading changed files.
//!
//! On first start a node creates a CA (`<data>/tls/ca.pem`, key in
//! `<data>/secrets/node-ca.key`, mode 0600) and issues the gateway a certificate for localhost,
//! the host name, `node.advertise_host` and `gateway.tls_names`. Clients trust `ca.pem`; the
//! gateway also serves it at `GET /api/v3/ca.pem`. A certificate is reissued when its names
//! change or it is within 30 days of expiry. An operator may configure their own certificate
//! and key instead. Either way the files are watched and a changed pair takes effect for new
//! connections without a restart; a broken pair is logged and the previous one kept.
//!
//! A cloud node has a CA of its own (`<data>/tls/cloud-ca.pem`) that issues its server
//! certificate and the client certificates of the edges it enrolls.
//!
//! Only TLS 1.2 and 1.3 with AEAD cipher suites (what rustls offers), ALPN `h2` and
//! `http/1.1`.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

pub use rustls;

pub mod internal;

/// Why a certificate, key or TLS configuration could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] outpost_storage::StorageError),
    #[error("{what}")]
    Issue {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what}")]
    Tls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{what}")]
    Pem {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what}")]
    Unreadable {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("no randomness from the operating system")]
    Random,
    #[error("cannot record what was issued")]
    Record(#[from] serde_json::Error),
}

fn issue(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Issue { what, source }
}

fn tls(what: impl Into<String>) -> impl FnOnce(rustls::Error) -> PkiError {
    move |source| PkiError::Tls {
        what: what.into(),
        source,
    }
}

fn pem(what: impl Into<String>) -> impl FnOnce(rustls::pki_types::pem::Error) -> PkiError {
    move |source| PkiError::Pem {
        what: what.into(),
        source,
    }
}

fn unreadable<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> PkiError {
    move |e| PkiError::Unreadable {
        what,
        source: Box::new(e),
    }
}

/// Where a CA and one server certificate it issued live.
#[derive(Debug, Clone)]
pub struct Paths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    meta: PathBuf,
    ca_name: &'static str,
    subject: &'static str,
}

impl Paths {
    /// The node CA and the gateway's certificate. The gateway's files are in directories
    /// of their own (`tls/gateway/`, `secrets/gateway/`): the gateway renews its certificate
    /// while it runs, in its sandbox, which lets it replace only those.
    pub fn new(data_dir: &Path) -> Self {
        let tls = data_dir.join("tls");
        let secrets = data_dir.join("secrets");
        Self {
            ca_cert: tls.join("ca.pem"),
            ca_key: secrets.join("node-ca.key"),
            cert: tls.join("gateway").join("gateway.pem"),
            key: secrets.join("gateway").join("tls.key"),
            meta: tls.join("gateway").join("gateway.json"),
            ca_name: "Outpost node CA",
            subject: "Outpost gateway",
        }
    }

    /// A cloud node's CA and its server certificate.
    pub fn cloud(data_dir: &Path) -> Self {
        let tls = data_dir.join("tls");
        let secrets = data_dir.join("secrets");
        Self {
            ca_cert: tls.join("cloud-ca.pem"),
            ca_key: secrets.join("cloud-ca.key"),
            cert: tls.join("cloud.pem"),
            key: secrets.join("cloud-tls.key"),
            meta: tls.join("cloud.json"),
            ca_name: "Outpost cloud CA",
            subject: "Outpost cloud node",
        }
    }
}

/// What the node-issued certificate was issued for.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct IssuedMeta {
    names: Vec<String>,
    /// Seconds since the Unix epoch.
    not_after: i64,
}

const CA_DAYS: i64 = 3650;
const CERT_DAYS: i64 = 397;
const RENEW_DAYS: i64 = 30;

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Outpost");
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn validity(p: &mut CertificateParams, days: i64) -> Result<i64, PkiError> {
    validity_secs(p, days * 86_400)
}

/// Valid from an hour ago (clocks differ) for `secs`; a random serial. Returns not-after.
fn validity_secs(p: &mut CertificateParams, secs: i64) -> Result<i64, PkiError> {
    let now = now_unix();
    let not_after = now + secs;
    p.not_before =
        rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs((now - 3600).max(0) as u64);
    p.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after as u64);
    let mut serial = [0u8; 16];
    getrandom(&mut serial)?;
    serial[0] &= 0x7f;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(not_after)
}

fn getrandom(buf: &mut [u8]) -> Result<(), PkiError> {
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| PkiError::Random)
}

fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(|source| PkiError::Write {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates the CA if there is none; returns its issuer. Processes starting together (the
/// services of a node, each needing its certificate) create it once: creation holds a lock
/// on a file beside the key.
pub fn ensure_ca(paths: &Paths) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let existing = |paths: &Paths| -> Result<Option<Issuer<'static, KeyPair>>, PkiError> {
        if !(paths.ca_key.exists() && paths.ca_cert.exists()) {
            return Ok(None);
        }
        // Sealed by the TPM when one protects the node.
        let pem = outpost_storage::protect::read(&paths.ca_key)?;
        let pem = String::from_utf8_lossy(&pem);
        let key = KeyPair::from_pem(&pem).map_err(issue("the CA key is not a valid key"))?;
        Ok(Some(Issuer::new(ca_params(paths.ca_name), key)))
    };
    if let Some(issuer) = existing(paths)? {
        return Ok(issuer);
    }
    if let Some(dir) = paths.ca_key.parent() {
        outpost_storage::ensure_private_dir(dir)?;
    }
    let lock_path = paths.ca_key.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|source| PkiError::Write {
            path: lock_path.clone(),
            source,
        })?;
    if let Some(issuer) = existing(paths)? {
        return Ok(issuer);
    }
    let key = KeyPair::generate().map_err(issue("cannot create the CA key"))?;
    let mut params = ca_params(paths.ca_name);
    validity(&mut params, CA_DAYS)?;
    let cert = params
        .self_signed(&key)
        .map_err(issue("cannot create the CA"))?;
    outpost_storage::protect::replace(&paths.ca_key, key.serialize_pem().as_bytes())?;
    write_public(&paths.ca_cert, &cert.pem())?;
    tracing::info!(ca = %paths.ca_cert.display(), name = paths.ca_name, "created a CA");
    drop(lock);
    Ok(Issuer::new(ca_params(paths.ca_name), key))
}

/// The CA if it exists. Services other than the one owning it sign with it but leave its
/// creation to that one (the gateway, for the node CA), so two never race to create it.
pub fn load_ca(paths: &Paths) -> Result<Option<Issuer<'static, KeyPair>>, PkiError> {
    if !(paths.ca_key.exists() && paths.ca_cert.exists()) {
        return Ok(None);
    }
    ensure_ca(paths).map(Some)
}

/// Issues (or keeps) the server certificate for `names`.
pub fn ensure_server_cert(paths: &Paths, names: &[String]) -> Result<(), PkiError> {
    // The node's server key is sealed by the TPM when one protects the node (a plain one
    // from before is replaced by a new pair at once).
    let sealed = matches!(
        outpost_storage::protect::in_force_for(&paths.key),
        Ok(outpost_storage::protect::InForce::Tpm(_))
    );
    let files = Files {
        cert: &paths.cert,
        key: &paths.key,
        meta: &paths.meta,
        sealed,
    };
    if files.fresh(names, RENEW_DAYS * 86_400)
        && (!sealed || outpost_storage::protect::is_sealed(&paths.key))
    {
        return Ok(());
    }
    let issuer = ensure_ca(paths)?;
    let mut params =
        CertificateParams::new(names.to_vec()).map_err(issue("invalid certificate name"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Outpost");
    dn.push(DnType::CommonName, paths.subject);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    files.issue(&issuer, &paths.ca_cert, params, CERT_DAYS * 86_400, names)?;
    tracing::info!(names = ?names, subject = paths.subject, "issued a server certificate");
    Ok(())
}

/// The files of one certificate the CA issued: certificate (with the CA's, public), key
/// (0600) and the record of what it was issued for.
struct Files<'a> {
    cert: &'a Path,
    key: &'a Path,
    meta: &'a Path,
    /// Whether the key is written sealed ([`outpost_storage::protect`]): the node's server
    /// keys; not the day-long keys of services, nor the administrator's, which local tools
    /// read.
    sealed: bool,
}

impl Files<'_> {
    /// Whether the certificate is there, for `names`, with more than `min_left` seconds
    /// of validity left.
    fn fresh(&self, names: &[String], min_left: i64) -> bool {
        let meta: Option<IssuedMeta> = std::fs::read(self.meta)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        meta.is_some_and(|m| m.names == names && m.not_after - now_unix() > min_left)
            && self.cert.exists()
            && self.key.exists()
    }

    /// Issues `params` (subject, names and extended usages set) with a new key, valid for
    /// `secs`, and writes the files.
    fn issue(
        &self,
        issuer: &Issuer<'_, KeyPair>,
        ca_cert: &Path,
        mut params: CertificateParams,
        secs: i64,
        names: &[String],
    ) -> Result<(), PkiError> {
        if let Some(dir) = self.key.parent() {
            outpost_storage::ensure_private_dir(dir)?;
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let not_after = validity_secs(&mut params, secs)?;
        let key = KeyPair::generate().map_err(issue("cannot create a key"))?;
        let cert = params
            .signed_by(&key, issuer)
            .map_err(issue("cannot issue the certificate"))?;
        let ca = std::fs::read_to_string(ca_cert).unwrap_or_default();
        // Key first: a reload between the two writes sees a new key with the old
        // certificate, which fails to load and keeps the previous pair until the certificate
        // follows.
        let pem = key.serialize_pem();
        if self.sealed {
            outpost_storage::protect::replace(self.key, pem.as_bytes())?;
        } else {
            outpost_storage::replace_secret_file(self.key, pem.as_bytes())?;
        }
        write_public(self.cert, &format!("{}{ca}", cert.pem()))?;
        let meta = IssuedMeta {
            names: names.to_vec(),
            not_after,
        };
        write_public(self.meta, &serde_json::to_string(&meta)?)
    }
}

/// Loads a certificate chain and key from PEM files.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, PkiError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(pem(format!("cannot read {}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(pem(format!(
            "{} is not a PEM certificate chain",
            cert.display()
        )))?;
    if certs.is_empty() {
        return Err(PkiError::Invalid(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let key_pem = outpost_storage::protect::read_if_sealed(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(pem(format!(
        "cannot read a private key from {}",
        key.display()
    )))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(tls(format!("unsupported key in {}", key.display())))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(tls(format!(
        "{} and {} do not match",
        cert.display(),
        key.display()
    )))?;
    Ok(Arc::new(ck))
}

/// Serves the current certificate; [`Reloader::check`] swaps in changed files.
#[derive(Debug)]
pub struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Resolver {
    /// The pair in use now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }
}

/// Watches the certificate and key files.
pub struct Reloader {
    pub resolver: Arc<Resolver>,
    cert: PathBuf,
    key: PathBuf,
    stamp: Option<(SystemTime, SystemTime)>,
}

fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

impl Reloader {
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, PkiError> {
        let stamp = mtimes(&cert, &key);
        let pair = load_pair(&cert, &key)?;
        Ok(Self {
            resolver: Arc::new(Resolver {
                current: RwLock::new(pair),
            }),
            cert,
            key,
            stamp,
        })
    }

    /// Reloads the pair if either file changed; returns whether a new pair is in use.
    pub fn check(&mut self) -> bool {
        let stamp = mtimes(&self.cert, &self.key);
        if stamp.is_none() || stamp == self.stamp {
            return false;
        }
        match load_pair(&self.cert, &self.key) {
            Ok(pair) => {
                self.stamp = stamp;
                *self
                    .resolver
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = pair;
                tracing::info!(cert = %self.cert.display(), "reloaded the TLS certificate");
                true
            }
            Err(e) => {
                // Keep serving the previous pair; try again when the files change again
                // (a half-written pair usually is complete at the next check).
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot reload the TLS certificate; keeping the previous one"
                );
                false
            }
        }
    }
}

/// The server configuration: TLS 1.2+, ALPN h2 and http/1.1.
pub fn server_config(resolver: Arc<Resolver>) -> Result<rustls::ServerConfig, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(tls("TLS versions"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A client certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The certificate followed by the CA's.
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the certificate (DER), hex: how a server recognises it.
    pub fingerprint: String,
}

/// What a client certificate for `name` (its common name) says: issued to Outpost's `name`,
/// for client authentication only.
fn client_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Outpost");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params
}

/// Issues a client certificate for `name` (its common name), valid for `days`.
pub fn issue_client_cert(paths: &Paths, name: &str, days: i64) -> Result<ClientIdentity, PkiError> {
    let issuer = ensure_ca(paths)?;
    let mut params = client_params(name);
    validity(&mut params, days)?;
    let key = KeyPair::generate().map_err(issue("cannot create the client key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(issue("cannot issue the client certificate"))?;
    let ca = std::fs::read_to_string(&paths.ca_cert).unwrap_or_default();
    Ok(ClientIdentity {
        cert_pem: format!("{}{ca}", cert.pem()),
        key_pem: key.serialize_pem(),
        fingerprint: fingerprint(cert.der()),
    })
}

/// Issues an OPC UA application instance certificate from the CA at `paths` for an RSA key
/// made by the caller (`pkcs8`, DER: OPC UA's security policies sign and encrypt with RSA,
/// which the node's own keys are not). Its subject is `common_name`; its subject
/// alternative names are `uri` first (the application URI, where OPC UA looks for it) and
/// then `names`; it is valid for `days`, for signing, key and data encipherment, as server
/// and client. DER.
pub fn issue_application_cert(
    paths: &Paths,
    pkcs8: &[u8],
    common_name: &str,
    uri: &str,
    names: &[String],
    days: i64,
) -> Result<Vec<u8>, PkiError> {
    let issuer = load_ca(paths)?
        .ok_or_else(|| PkiError::Invalid("the node CA does not exist yet".into()))?;
    let key = KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8),
        &rcgen::PKCS_RSA_SHA256,
    )
    .map_err(issue("not an RSA key in PKCS#8"))?;
    let mut params =
        CertificateParams::new(names.to_vec()).map_err(issue("invalid certificate name"))?;
    let uri = rcgen::string::Ia5String::try_from(uri)
        .map_err(issue("the application URI is not ASCII"))?;
    params.subject_alt_names.insert(0, rcgen::SanType::URI(uri));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DataEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(issue("cannot issue the application certificate"))?;
    Ok(cert.der().to_vec())
}

/// A certificate the CA issued from a signing request.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate followed by the CA's.
    pub cert_pem: String,
    pub fingerprint: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

/// Issues a client certificate for `name` from a PKCS#10 signing request (PEM) whose
/// signature proves the requester holds the key: the key never leaves the device. Only the
/// request's public key is used; the subject is `name`, the usage client authentication.
pub fn sign_client_csr(
    issuer: &Issuer<'_, KeyPair>,
    ca_pem: &str,
    csr_pem: &str,
    name: &str,
    days: i64,
) -> Result<Issued, PkiError> {
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(issue("not a valid certificate signing request"))?;
    let mut params = client_params(name);
    let not_after = validity(&mut params, days)?;
    csr.params = params;
    let cert = csr
        .signed_by(issuer)
        .map_err(issue("cannot issue the client certificate"))?;
    Ok(Issued {
        cert_pem: format!("{}{ca_pem}", cert.pem()),
        fingerprint: fingerprint(cert.der()),
        not_after,
    })
}

/// A new key and a signing request for `name`, both PEM: what a device (or the CLI on its
/// behalf) sends to be enrolled with a certificate.
pub fn new_csr(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(issue("cannot create a key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(issue("cannot create the signing request"))?;
    Ok((
        csr.pem()
            .map_err(issue("cannot encode the signing request"))?,
        key.serialize_pem(),
    ))
}

/// What a presented certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub fingerprint: String,
    pub common_name: Option<String>,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

/// Reads a certificate (DER).
pub fn inspect(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(unreadable("not a readable certificate"))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(CertInfo {
        fingerprint: fingerprint(der),
        common_name,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Checks that `der` is a valid client certificate issued by one of the CAs in `roots_pem`
/// (signature, validity, usage), as a TLS server would.
pub fn verify_client(der: &[u8], roots_pem: &str) -> Result<(), PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(roots_pem)?),
        provider,
    )
    .build()
    .map_err(unreadable("client certificate verifier"))?;
    verifier
        .verify_client_cert(
            &CertificateDer::from(der.to_vec()),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .map_err(tls("the client certificate is not valid"))?;
    Ok(())
}

/// How the gateway vouches for a client certificate it verified in a TLS handshake when it
/// passes it to a service: the certificate (DER, base64) in [`vouch::HEADER`] and an
/// HMAC-SHA256 of it in [`vouch::MAC_HEADER`], keyed with a secret only the node's services
/// can read ([`vouch::KEY_FILE`] in the secrets directory, created by the gateway). A
/// service ignores a certificate header without a valid MAC, so a caller reaching it without
/// the gateway cannot claim a device's (public) certificate.
pub mod vouch {
    pub const HEADER: &str = "x-outpost-client-cert";
    pub const MAC_HEADER: &str = "x-outpost-client-cert-mac";
    pub const KEY_FILE: &str = "client-cert-mac.key";

    /// The MAC of `cert_b64`, hex.
    pub fn mac(key: &[u8; 32], cert_b64: &str) -> String {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        hex::encode(ring::hmac::sign(&k, cert_b64.as_bytes()).as_ref())
    }

    /// Whether `mac_hex` is `cert_b64`'s MAC (compared in constant time).
    pub fn verify(key: &[u8; 32], cert_b64: &str, mac_hex: &str) -> bool {
        let Ok(tag) = hex::decode(mac_hex) else {
            return false;
        };
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        ring::hmac::verify(&k, cert_b64.as_bytes(), &tag).is_ok()
    }
}

/// SHA-256 of a certificate's DER, hex.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(pem("the CA file holds an unreadable certificate"))?)
            .map_err(tls("the CA certificate is not usable"))?;
    }
    if roots.is_empty() {
        return Err(PkiError::Invalid("the CA file holds no certificate".into()));
    }
    Ok(roots)
}

/// A server configuration that asks for a client certificate issued by `client_ca_pem`.
/// Clients without one may still connect (the routes that need an identity check for it);
/// a certificate from another CA fails the handshake.
pub fn server_config_with_clients(
    resolver: Arc<Resolver>,
    client_ca_pem: &str,
) -> Result<rustls::ServerConfig, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(client_ca_pem)?),
        Arc::clone(&provider),
    )
    .allow_unauthenticated()
    .build()
    .map_err(unreadable("client certificate verifier"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(tls("TLS versions"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A client configuration that trusts only `ca_pem` and, if given, presents `identity`
/// (certificate chain and key, PEM).
pub fn client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, PkiError> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(tls("TLS versions"))?
    .with_root_certificates(roots(ca_pem)?);
    let mut cfg = match identity {
        Some((cert_pem, key_pem)) => {
            let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(pem("the client certificate is not PEM"))?;
            if certs.is_empty() {
                return Err(PkiError::Invalid("no client certificate given".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(pem("the client key is not a PEM private key"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(tls("the client certificate and key do not match"))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The names the node-issued certificate covers.
pub fn default_names(advertise_host: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(h.trim().to_string());
    }
    names.push(advertise_host.to_string());
    names.extend(extra.iter().cloned());
    names.retain(|n| !n.is_empty());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(pem: &str) -> Vec<u8> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_vouched_certificate_verifies_and_a_changed_one_does_not() {
        let key = [7u8; 32];
        let m = vouch::mac(&key, "Y2VydA==");
        assert!(vouch::verify(&key, "Y2VydA==", &m));
        assert!(!vouch::verify(&key, "Y2VydB==", &m));
        assert!(!vouch::verify(&[8u8; 32], "Y2VydA==", &m));
        assert!(!vouch::verify(&key, "Y2VydA==", "zz"));
        assert!(!vouch::verify(&key, "Y2VydA==", ""));
    }

    #[test]
    fn a_signing_request_becomes_a_client_certificate_of_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        assert!(load_ca(&paths).unwrap().is_none(), "load_ca never creates");
        let issuer = ensure_ca(&paths).unwrap();
        let ca = std::fs::read_to_string(&paths.ca_cert).unwrap();
        let (csr, key) = new_csr("asked-for-another-name").unwrap();
        let issued = sign_client_csr(&issuer, &ca, &csr, "dev-1", 30).unwrap();
        let der = der_of(&issued.cert_pem);
        let info = inspect(&der).unwrap();
        assert_eq!(
            info.common_name.as_deref(),
            Some("dev-1"),
            "the CA names it"
        );
        assert_eq!(info.fingerprint, issued.fingerprint);
        assert!(info.not_after > now_unix() + 29 * 86_400);
        verify_client(&der, &ca).unwrap();
        // The key made with the request is the certificate's.
        client_config(&ca, Some((&issued.cert_pem, &key))).unwrap();
        // Another CA does not vouch for it; a broken request is refused.
        let other = tempfile::tempdir().unwrap();
        let other = Paths::new(other.path());
        ensure_ca(&other).unwrap();
        let other_ca = std::fs::read_to_string(&other.ca_cert).unwrap();
        assert!(verify_client(&der, &other_ca).is_err());
        // A request whose signed part was changed (another key) does not verify.
        let mut lines: Vec<String> = csr.lines().map(str::to_string).collect();
        let l = &mut lines[2];
        let flipped = if l.as_bytes()[10] == b'A' { "B" } else { "A" };
        l.replace_range(10..11, flipped);
        let broken = lines.join("\n");
        assert!(sign_client_csr(&issuer, &ca, &broken, "dev-1", 30).is_err());
        assert!(sign_client_csr(&issuer, &ca, "garbage", "dev-1", 30).is_err());
        assert!(inspect(b"not a certificate").is_err());
    }

    #[test]
    fn issues_a_chain_that_loads_and_keeps_it_while_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        ensure_server_cert(&paths, &names).unwrap();
        let first = std::fs::read(&paths.cert).unwrap();
        load_pair(&paths.cert, &paths.key).unwrap();
        ensure_server_cert(&paths, &names).unwrap();
        assert_eq!(
            std::fs::read(&paths.cert).unwrap(),
            first,
            "kept while fresh"
        );
        // New names: reissued by the same CA.
        let ca = std::fs::read(&paths.ca_cert).unwrap();
        ensure_server_cert(&paths, &["example.test".to_string()]).unwrap();
        assert_ne!(std::fs::read(&paths.cert).unwrap(), first);
        assert_eq!(std::fs::read(&paths.ca_cert).unwrap(), ca);
    }

    #[test]
    fn a_mismatched_pair_is_refused_and_the_old_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        ensure_server_cert(&paths, &["localhost".to_string()]).unwrap();
        let mut r = Reloader::new(paths.cert.clone(), paths.key.clone()).unwrap();
        let served = |r: &Reloader| {
            r.resolver
                .current
                .read()
                .unwrap()
                .cert
                .first()
                .unwrap()
                .to_vec()
        };
        let before = served(&r);
        let other = KeyPair::generate().unwrap();
        std::fs::write(&paths.key, other.serialize_pem()).unwrap();
        // The mtime may not change within the filesystem's resolution; force a check.
        r.stamp = None;
        assert!(!r.check());
        // The pair in use is still the old one, whole: its certificate, and its key (a
        // reloaded mismatched key would sign with a key the certificate does not name).
        assert_eq!(served(&r), before);
        let pair = Arc::clone(&r.resolver.current.read().unwrap());
        let spki = pair.key.public_key().expect("the key's public part");
        let cert = x509_parser::parse_x509_certificate(&before).unwrap().1;
        assert_eq!(spki.as_ref(), cert.public_key().raw);
    }
}
