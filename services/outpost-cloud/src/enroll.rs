//! Enrollment: an edge's identity on this cloud node, and its revocation.
//!
//! Enrolling issues a client certificate from the cloud's CA and records its fingerprint
//! under the edge's name; the bundle answered is all the edge needs to send here. A name is
//! enrolled once: it must be revoked before it is enrolled again (with a new certificate;
//! the old one then belongs to no edge). Revoking stops the certificate at once and keeps
//! the edge's data.

use std::sync::Arc;

use outpost_contracts::cloud::EdgeBundle;
use outpost_contracts::now_millis;

use crate::store::{Store, StoreError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("an edge name is 1 to 128 letters, digits, '-', '_' or '.'")]
    InvalidName,
    #[error("edge {0} is enrolled already; revoke it first to enroll it again")]
    Enrolled(String),
    #[error("cannot issue a client certificate for edge {name}")]
    Issue {
        name: String,
        #[source]
        source: BoxError,
    },
    #[error("cannot read the CA certificate")]
    Ca(#[source] std::io::Error),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// Enrolls and revokes edges.
pub struct Enroller {
    pub store: Arc<dyn Store>,
    pub pki: outpost_pki::Paths,
    /// Lifetime of the client certificates it issues.
    pub client_cert_days: u32,
    /// The URL put in bundles.
    pub public_url: String,
}

/// A valid edge name (after trimming), or why not.
pub fn check_name(name: &str) -> Result<String, EnrollError> {
    let name = name.trim();
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(name.to_string())
    } else {
        Err(EnrollError::InvalidName)
    }
}

impl Enroller {
    /// Enrolls the edge `name` and answers its identity bundle.
    pub async fn enroll(&self, name: &str) -> Result<EdgeBundle, EnrollError> {
        let name = check_name(name)?;
        let (pki, days, n) = (
            self.pki.clone(),
            i64::from(self.client_cert_days),
            name.clone(),
        );
        let identity =
            tokio::task::spawn_blocking(move || outpost_pki::issue_client_cert(&pki, &n, days))
                .await
                .map_err(|e| EnrollError::Issue {
                    name: name.clone(),
                    source: e.into(),
                })?
                .map_err(|e| EnrollError::Issue {
                    name: name.clone(),
                    source: e.into(),
                })?;
        let enrolled = self
            .store
            .enroll(name.clone(), identity.fingerprint.clone(), now_millis())
            .await?;
        if !enrolled {
            return Err(EnrollError::Enrolled(name));
        }
        let ca = tokio::fs::read_to_string(&self.pki.ca_cert)
            .await
            .map_err(EnrollError::Ca)?;
        tracing::info!(
            edge = name,
            fingerprint = identity.fingerprint,
            "enrolled an edge"
        );
        Ok(EdgeBundle {
            edge: name,
            url: self.public_url.clone(),
            ca,
            cert: identity.cert_pem,
            key: identity.key_pem,
            fingerprint: identity.fingerprint,
        })
    }

    /// Revokes the edge `name`; `false` if there is no such edge.
    pub async fn revoke(&self, name: &str) -> Result<bool, StoreError> {
        let revoked = self.store.revoke(name.to_string(), now_millis()).await?;
        if revoked {
            tracing::info!(edge = name, "revoked an edge");
        }
        Ok(revoked)
    }
}
