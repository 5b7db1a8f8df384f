//! The client's certificate store, `<data>/opcua-pki`, laid out as the OPC UA library reads
//! it:
//!
//! - `own/cert.der` and `private/private.pem`: the application instance certificate, issued
//!   by the node CA for an RSA key made here (OPC UA's Basic256Sha256 signs and encrypts
//!   with RSA), with the application URI as its first subject alternative name. It is made
//!   before the service's sandbox closes (the node CA's key is out of reach after), and made
//!   again when under half its life is left or the application URI changed.
//! - `trusted/`: the servers' certificates trusted, each as `<common name> [<thumbprint>].der`
//!   (the library trusts exactly these files; a server presenting another certificate is
//!   refused). A device's `RemotePemCert` is added there; an operator may drop files there.
//! - `rejected/`: the certificates of servers refused, for an operator to inspect (and move to
//!   `trusted/`).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use opcua::crypto::{CertificateStore, PrivateKey, X509};

/// The application certificate, in the store.
const OWN_CERT: &str = "own/cert.der";
/// Its key, PKCS#8 PEM, 0600.
const OWN_KEY: &str = "private/private.pem";

/// The common name of the application certificate.
const COMMON_NAME: &str = "Outpost device-opcua";

/// Makes the store's directories and, when missing, expiring or for another URI, the
/// application certificate and key, issued by the node CA in `data_dir`.
pub fn ensure(pki: &Path, data_dir: &Path, uri: &str, days: i64) -> Result<(), String> {
    for sub in ["own", "private", "trusted", "rejected"] {
        let dir = pki.join(sub);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    }
    let cert_path = pki.join(OWN_CERT);
    if let Ok(der) = std::fs::read(&cert_path)
        && still_good(&der, uri, days)
        && pki.join(OWN_KEY).exists()
    {
        return Ok(());
    }
    let key = PrivateKey::new(2048).map_err(|e| format!("cannot make an RSA key: {e}"))?;
    let pkcs8 = key
        .to_der()
        .map_err(|e| format!("cannot encode the RSA key: {e}"))?;
    let names = outpost_pki::default_names("", &[]);
    let cert = outpost_pki::issue_application_cert(
        &outpost_pki::Paths::new(data_dir),
        pkcs8.as_bytes(),
        COMMON_NAME,
        uri,
        &names,
        days,
    )
    .map_err(|e| format!("cannot issue the application certificate: {e}"))?;
    write_private(
        &pki.join(OWN_KEY),
        pem("PRIVATE KEY", pkcs8.as_bytes()).as_bytes(),
    )?;
    write_private(&cert_path, &cert)?;
    Ok(())
}

/// Whether the certificate names `uri` and has more than half of `days` left.
fn still_good(der: &[u8], uri: &str, days: i64) -> bool {
    let Ok(cert) = X509::from_der(der) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let left = cert
        .not_after()
        .map(|t| t.timestamp() - now)
        .unwrap_or_default();
    left > days * 86_400 / 2 && cert.is_application_uri_valid(uri).is_ok()
}

/// Adds a server certificate (PEM or DER) to `trusted/`; its file name.
pub fn trust(pki: &Path, cert: &[u8]) -> Result<String, String> {
    let x509 = if cert.starts_with(b"-----BEGIN") {
        X509::from_pem(cert)
    } else {
        X509::from_der(cert)
    }
    .map_err(|e| format!("not a certificate: {e}"))?;
    let name = CertificateStore::cert_file_name(&x509);
    let path = pki.join("trusted").join(&name);
    if !path.exists() {
        let der = x509
            .to_der()
            .map_err(|e| format!("cannot encode the certificate: {e}"))?;
        std::fs::write(&path, der).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(name)
}

/// `bytes` as PEM with `label`.
fn pem(label: &str, bytes: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes `path` readable by its owner only, replacing it whole.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("new");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_application_certificate_comes_from_the_node_ca_and_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path();
        outpost_pki::ensure_ca(&outpost_pki::Paths::new(data)).expect("node CA");
        let pki = data.join("opcua-pki");
        let uri = "urn:outpost:test:device-opcua";
        ensure(&pki, data, uri, 365).expect("issued");
        let der = std::fs::read(pki.join(OWN_CERT)).expect("cert");
        let cert = X509::from_der(&der).expect("x509");
        assert!(cert.is_application_uri_valid(uri).is_ok());
        assert_eq!(cert.key_length().expect("RSA"), 2048);
        // Verified against the node CA, as a server checking a chain would.
        let ca = std::fs::read_to_string(data.join("tls/ca.pem")).expect("ca");
        outpost_pki::verify_client(&der, &ca).expect("signed by the node CA");
        let key = std::fs::metadata(pki.join(OWN_KEY)).expect("key");
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        // Kept while good; made again for another URI.
        ensure(&pki, data, uri, 365).expect("kept");
        assert_eq!(std::fs::read(pki.join(OWN_CERT)).expect("cert"), der);
        ensure(&pki, data, "urn:other", 365).expect("reissued");
        assert_ne!(std::fs::read(pki.join(OWN_CERT)).expect("cert"), der);
    }

    #[test]
    fn a_trusted_server_certificate_is_filed_by_name_and_thumbprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path();
        outpost_pki::ensure_ca(&outpost_pki::Paths::new(data)).expect("node CA");
        let pki = data.join("opcua-pki");
        ensure(&pki, data, "urn:x", 30).expect("issued");
        let der = std::fs::read(pki.join(OWN_CERT)).expect("cert");
        let name = trust(&pki, pem("CERTIFICATE", &der).as_bytes()).expect("trusted");
        assert!(
            name.ends_with(".der") && name.contains("Outpost device-opcua ["),
            "{name}"
        );
        assert_eq!(
            std::fs::read(pki.join("trusted").join(&name)).expect("file"),
            der
        );
        assert!(trust(&pki, b"-----BEGIN CERTIFICATE-----\nnope\n").is_err());
    }
}
