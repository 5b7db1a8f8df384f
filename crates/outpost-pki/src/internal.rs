//! Mutual TLS between the node's services: who is who on the inside.
//!
//! Each service instance holds a short-lived certificate from the node CA
//! ([`ensure_service_cert`]: a day, reissued when less than half of it is left), used both
//! to serve its API and as its client certificate when it calls another service. Its
//! subject says what it is: organisational unit [`SERVICES_OU`] and the instance's registry
//! ID as common name. Local administration (the CLI on the node, local tools) gets a
//! certificate of its own ([`ensure_admin_cert`], unit [`ADMINS_OU`]). Devices hold
//! certificates from the same CA but never with either unit (the CA sets the subject of
//! what it signs), so [`identity`] tells a service or an administrator from a device.
//!
//! Files: `<data>/tls/services/<id>.pem` (certificate and CA, public) and
//! `<data>/secrets/services/<id>.key` (0600); `<data>/tls/clients/admin.pem` and
//! `<data>/secrets/clients/admin.key`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;

use crate::{Files, Paths, PkiError, Resolver, ensure_ca, issue, roots, tls};

/// The organisational unit of a service's certificate.
pub const SERVICES_OU: &str = "Outpost services";
/// The organisational unit of a local administrator's certificate.
pub const ADMINS_OU: &str = "Outpost administrators";
/// How long a service certificate is valid.
pub const SERVICE_CERT_SECS: i64 = 24 * 3600;
/// An administrator's certificate: it lives in the data dir, readable by root only.
pub const ADMIN_CERT_SECS: i64 = 30 * 86_400;

/// Who a verified peer certificate of the node CA names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A service instance, by registry ID (`core-data`, `core-data@2`).
    Service(String),
    /// A local administrator (the CLI on the node).
    Admin(String),
}

impl Identity {
    /// The service name of a service identity (its registry ID without `@instance`).
    pub fn service(&self) -> Option<&str> {
        match self {
            Self::Service(id) => Some(id.split('@').next().unwrap_or(id)),
            Self::Admin(_) => None,
        }
    }
}

/// The identity a certificate (DER) carries, when it is a service's or an administrator's.
/// Only meaningful for a certificate the TLS handshake verified against the node CA.
pub fn identity(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let unit = subject
        .iter_organizational_unit()
        .next()
        .and_then(|u| u.as_str().ok())?;
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())?
        .to_string();
    match unit {
        SERVICES_OU => Some(Identity::Service(name)),
        ADMINS_OU => Some(Identity::Admin(name)),
        _ => None,
    }
}

/// Where one holder's certificate, key and issue record live.
#[derive(Debug, Clone)]
pub struct Holder {
    pub cert: PathBuf,
    pub key: PathBuf,
    meta: PathBuf,
}

impl Holder {
    /// A service instance's files, in directories of its own (`tls/services/<id>/`,
    /// `secrets/services/<id>/`): a service's sandbox opens only its own.
    pub fn service(data_dir: &Path, id: &str) -> Self {
        let (public, private) = Self::service_dirs(data_dir, id);
        let file = safe_name(id);
        Self {
            cert: public.join(format!("{file}.pem")),
            key: private.join(format!("{file}.key")),
            meta: public.join(format!("{file}.json")),
        }
    }

    /// The directories of service instance `id`'s certificate and key.
    pub fn service_dirs(data_dir: &Path, id: &str) -> (PathBuf, PathBuf) {
        let file = safe_name(id);
        (
            data_dir.join("tls/services").join(&file),
            data_dir.join("secrets/services").join(&file),
        )
    }

    /// The local administrator's files.
    pub fn admin(data_dir: &Path) -> Self {
        Self {
            cert: data_dir.join("tls/clients/admin.pem"),
            key: data_dir.join("secrets/clients/admin.key"),
            meta: data_dir.join("tls/clients/admin.json"),
        }
    }
}

/// Holds an exclusive lock on `.issue.lock` beside `key` until dropped.
fn lock_holder(key: &Path) -> Result<std::fs::File, PkiError> {
    let dir = key.parent().unwrap_or(Path::new("."));
    let path = dir.join(".issue.lock");
    let write = |source| PkiError::Write {
        path: path.clone(),
        source,
    };
    outpost_storage::ensure_private_dir(dir).map_err(|e| write(std::io::Error::other(e)))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(write)?;
    file.lock().map_err(write)?;
    Ok(file)
}

/// An instance ID as one path component.
fn safe_name(id: &str) -> String {
    let name = id.replace(['/', '\\'], "_");
    if name.is_empty() || name == "." || name == ".." {
        format!("_{name}")
    } else {
        name
    }
}

/// Issues (or keeps, while more than half of its life is left and its names are the same)
/// the certificate of service instance `id`, for the host `names` it is reached at. Creates
/// the node CA if there is none yet.
pub fn ensure_service_cert(
    data_dir: &Path,
    id: &str,
    names: &[String],
) -> Result<Holder, PkiError> {
    ensure_service_cert_lasting(data_dir, id, names, SERVICE_CERT_SECS)
}

/// [`ensure_service_cert`] with certificates lasting `secs` (`security.service_cert_s`).
pub fn ensure_service_cert_lasting(
    data_dir: &Path,
    id: &str,
    names: &[String],
    secs: i64,
) -> Result<Holder, PkiError> {
    let holder = Holder::service(data_dir, id);
    ensure(
        data_dir,
        &holder,
        SERVICES_OU,
        id,
        names,
        secs,
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    Ok(holder)
}

/// Issues (or keeps) the local administrator's client certificate.
pub fn ensure_admin_cert(data_dir: &Path) -> Result<Holder, PkiError> {
    let holder = Holder::admin(data_dir);
    ensure(
        data_dir,
        &holder,
        ADMINS_OU,
        "admin",
        &[],
        ADMIN_CERT_SECS,
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    Ok(holder)
}

fn ensure(
    data_dir: &Path,
    holder: &Holder,
    unit: &str,
    name: &str,
    names: &[String],
    secs: i64,
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<(), PkiError> {
    let files = Files {
        cert: &holder.cert,
        key: &holder.key,
        meta: &holder.meta,
        sealed: false,
    };
    // One issuer at a time per holder (a service making its first certificate while its
    // supervisor renews them): the second finds the first's fresh and keeps it.
    let _lock = lock_holder(&holder.key)?;
    if files.fresh(names, secs / 2) {
        return Ok(());
    }
    let paths = Paths::new(data_dir);
    let issuer = ensure_ca(&paths)?;
    let mut params =
        CertificateParams::new(names.to_vec()).map_err(issue("invalid certificate name"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Outpost");
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.extended_key_usages = usages.to_vec();
    files.issue(&issuer, &paths.ca_cert, params, secs, names)?;
    tracing::info!(name, unit, "issued an internal certificate");
    Ok(())
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The server side of an internal API: the holder's certificate (from `resolver`, so a
/// renewed one is served at once), client certificates of the node CA (`ca_pem`) verified
/// when presented. A client without one may connect (the routes open to it are the
/// service's business: `ping`, and what devices reach with their own credentials); a
/// certificate of another CA, expired or not for client authentication fails the
/// handshake.
pub fn server_config(
    resolver: Arc<Resolver>,
    ca_pem: &str,
) -> Result<rustls::ServerConfig, PkiError> {
    crate::server_config_with_clients(resolver, ca_pem)
}

/// The client side: trusts only the node CA (`ca_pem`) and presents the holder's current
/// certificate (from `resolver`).
pub fn client_config(
    resolver: Arc<Resolver>,
    ca_pem: &str,
) -> Result<rustls::ClientConfig, PkiError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(tls("TLS versions"))?
    .with_root_certificates(roots(ca_pem)?)
    .with_client_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Reads the node CA's certificate (PEM).
pub fn node_ca_pem(data_dir: &Path) -> Result<String, PkiError> {
    let path = Paths::new(data_dir).ca_cert;
    std::fs::read_to_string(&path).map_err(|source| PkiError::Read { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    fn first_der(path: &Path) -> Vec<u8> {
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn services_admins_and_devices_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let svc =
            ensure_service_cert(dir.path(), "core-data@2", &["localhost".to_string()]).unwrap();
        let admin = ensure_admin_cert(dir.path()).unwrap();
        assert_eq!(
            identity(&first_der(&svc.cert)),
            Some(Identity::Service("core-data@2".into()))
        );
        assert_eq!(
            identity(&first_der(&svc.cert)).unwrap().service(),
            Some("core-data")
        );
        assert_eq!(
            identity(&first_der(&admin.cert)),
            Some(Identity::Admin("admin".into()))
        );
        // A device certificate from the same CA, even one named like a service, is neither.
        let device = crate::issue_client_cert(&Paths::new(dir.path()), "core-command", 30).unwrap();
        let der = CertificateDer::pem_slice_iter(device.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(identity(&der), None);
        // Each verifies as a client of the node CA.
        let ca = node_ca_pem(dir.path()).unwrap();
        crate::verify_client(&first_der(&svc.cert), &ca).unwrap();
        crate::verify_client(&first_der(&admin.cert), &ca).unwrap();
    }

    #[test]
    fn a_certificate_is_kept_while_fresh_and_reissued_when_its_names_change() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["localhost".to_string()];
        let a = ensure_service_cert(dir.path(), "rules", &names).unwrap();
        let first = std::fs::read(&a.cert).unwrap();
        ensure_service_cert(dir.path(), "rules", &names).unwrap();
        assert_eq!(std::fs::read(&a.cert).unwrap(), first, "kept while fresh");
        ensure_service_cert(dir.path(), "rules", &["edge-7".to_string()]).unwrap();
        assert_ne!(
            std::fs::read(&a.cert).unwrap(),
            first,
            "reissued for new names"
        );
        // The pair loads (key and certificate match).
        crate::load_pair(&a.cert, &a.key).unwrap();
    }
}
