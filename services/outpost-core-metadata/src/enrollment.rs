//! What device identity works with: the enrollment policy and the node CA, a device's
//! credentials as an operator sees them, and what a presented certificate is worth. The
//! operations are in [`crate::identity`].

use outpost_contracts::metadata::Device;
use serde::Serialize;

use crate::store::CertRecord;

/// What enrolling devices needs: the node CA (to issue certificates) and the zero-touch
/// policy.
#[derive(Debug, Default)]
pub struct Enrollment {
    pub cfg: outpost_kit::config::EnrollmentConfig,
    /// Where the node CA lives; `None`: no certificates are issued.
    pub ca: Option<outpost_pki::Paths>,
    /// The manufacturer CAs, PEM, concatenated; empty: no zero-touch enrollment.
    pub manufacturer_pem: String,
}

/// A device's credentials, as an operator sees them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub name: String,
    /// `active` (some credential lets it in), `pending` (a zero-touch device awaiting
    /// approval), `revoked` (decommissioned: locked, no credential) or `none`.
    pub status: &'static str,
    pub secret: bool,
    pub certificates: Vec<CertRecord>,
}

/// What a presented certificate is worth.
#[derive(Debug)]
pub enum CertCheck {
    Device(Box<Device>),
    Refused(String),
    Pending,
}
