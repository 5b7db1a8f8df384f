//! Device identity: secrets (salted hashes, never stored in the device document), client
//! certificates signed by the node CA from the device's own signing request, zero-touch
//! enrollment by a manufacturer CA pending approval, rotation and revocation, and the checks
//! the broker, device-rest, OTA and the gateway ask for (`POST /api/v3/device/auth`).
//! These are operations of [`Metadata`], under its write lock like every other change.

use outpost_contracts::metadata::{AdminState, Device};
use outpost_contracts::now_millis;
use outpost_contracts::system_event::ACTION_UPDATE;
use outpost_kit::ApiError;

use crate::enrollment::{CertCheck, Credentials};
use crate::service::Metadata;
use crate::store::{CertIssuer, CertRecord, CertStatus, Kind};

impl Metadata {
    /// Sets the secret of device `name`, generating one when `secret` is `None`; returns
    /// the generated secret.
    pub async fn set_secret(
        &self,
        name: &str,
        secret: Option<String>,
    ) -> Result<Option<String>, ApiError> {
        let (secret, generated) = match secret {
            Some(s) => {
                crate::secrets::check(&s).map_err(ApiError::bad_request)?;
                (s, false)
            }
            None => (
                crate::secrets::generate().map_err(ApiError::internal)?,
                true,
            ),
        };
        let sealed = crate::secrets::seal(&secret).map_err(ApiError::internal)?;
        let _w = self.lock.lock().await;
        let device: Device = self.get(name).await?;
        self.store.set_secret(&device.id, Some(sealed)).await?;
        // Services caching credentials hear of the change.
        self.announce(ACTION_UPDATE, &device);
        tracing::info!(device = name, "device secret set");
        Ok(generated.then_some(secret))
    }

    /// Removes the secret of device `name`: it can no longer connect.
    pub async fn delete_secret(&self, name: &str) -> Result<(), ApiError> {
        let _w = self.lock.lock().await;
        let device: Device = self.get(name).await?;
        self.store.set_secret(&device.id, None).await?;
        self.announce(ACTION_UPDATE, &device);
        tracing::info!(device = name, "device secret removed");
        Ok(())
    }

    /// The device `name` if `secret` is its secret. Unknown devices, devices without a
    /// secret and wrong secrets are all the same `None`.
    pub async fn authenticate(&self, name: &str, secret: &str) -> Result<Option<Device>, ApiError> {
        let Some(device) = self.find::<Device>(name).await? else {
            return Ok(None);
        };
        let stored = self.store.secret(&device.id).await?;
        Ok(stored
            .filter(|s| crate::secrets::matches(s, secret))
            .map(|_| device))
    }

    /// Issues device `name` a client certificate from the node CA for the key in `csr`;
    /// with `replace`, its other certificates are revoked (rotation).
    pub async fn issue_certificate(
        &self,
        name: &str,
        csr: &str,
        replace: bool,
    ) -> Result<outpost_pki::Issued, ApiError> {
        let Some(paths) = &self.enrollment.ca else {
            return Err(ApiError::unavailable(
                "this node issues no device certificates",
            ));
        };
        let issuer = outpost_pki::load_ca(paths)
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::unavailable(
                    "the node CA does not exist yet (the gateway creates it when it first starts)",
                )
            })?;
        let ca_pem = std::fs::read_to_string(&paths.ca_cert).map_err(ApiError::internal)?;
        let _w = self.lock.lock().await;
        let device: Device = self.get(name).await?;
        let days = i64::from(self.enrollment.cfg.cert_days);
        let issued = outpost_pki::sign_client_csr(&issuer, &ca_pem, csr, name, days)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if replace {
            self.store
                .set_cert_status(&device.id, None, CertStatus::Revoked)
                .await?;
        }
        self.store
            .put_cert(
                &device.id,
                CertRecord {
                    fingerprint: issued.fingerprint.clone(),
                    issuer: CertIssuer::Node,
                    status: CertStatus::Active,
                    not_after: issued.not_after,
                    created: now_millis(),
                },
            )
            .await?;
        self.announce(ACTION_UPDATE, &device);
        tracing::info!(device = name, fingerprint = %issued.fingerprint, replace, "device certificate issued");
        Ok(issued)
    }

    /// Device `name`'s credentials.
    pub async fn credentials(&self, name: &str) -> Result<Credentials, ApiError> {
        let device: Device = self.get(name).await?;
        let secret = self.store.secret(&device.id).await?.is_some();
        let certificates = self.store.certs(&device.id).await?;
        let status = if secret || certificates.iter().any(|c| c.status == CertStatus::Active) {
            "active"
        } else if certificates.iter().any(|c| c.status == CertStatus::Pending) {
            "pending"
        } else if device.admin_state == AdminState::Locked {
            "revoked"
        } else {
            "none"
        };
        Ok(Credentials {
            name: device.name,
            status,
            secret,
            certificates,
        })
    }

    /// Decommissions device `name`: its secret is removed, its certificates revoked and it
    /// is locked. It keeps its history (readings, events, OTA history) and can be enrolled
    /// again.
    pub async fn revoke(&self, name: &str) -> Result<(), ApiError> {
        let _w = self.lock.lock().await;
        let device: Device = self.get(name).await?;
        self.store.set_secret(&device.id, None).await?;
        let n = self
            .store
            .set_cert_status(&device.id, None, CertStatus::Revoked)
            .await?;
        let mut locked = device.clone();
        locked.admin_state = AdminState::Locked;
        self.replace(&device, locked).await?;
        tracing::warn!(device = name, certificates = n, "device revoked");
        Ok(())
    }

    /// Lets in a zero-touch device waiting for approval (and unlocks it).
    pub async fn approve(&self, name: &str) -> Result<(), ApiError> {
        let _w = self.lock.lock().await;
        let device: Device = self.get(name).await?;
        let n = self
            .store
            .set_cert_status(&device.id, Some(CertStatus::Pending), CertStatus::Active)
            .await?;
        if n == 0 {
            return Err(ApiError::conflict(format!(
                "device '{name}' has no certificate waiting for approval"
            )));
        }
        let mut open = device.clone();
        open.admin_state = AdminState::Unlocked;
        self.replace(&device, open).await?;
        tracing::info!(device = name, "device approved");
        Ok(())
    }

    /// Checks the client certificate (DER) device `name` presented. A certificate recorded
    /// for the device counts by its status. An unrecorded one issued by a manufacturer CA
    /// for a device of its common name enrolls that device (zero-touch): a new device is
    /// registered with the configured profile, service and labels; it is pending until
    /// approved when approval is on. A locked (revoked) device never enrolls itself again.
    pub async fn authenticate_cert(&self, name: &str, der: &[u8]) -> Result<CertCheck, ApiError> {
        let info = match outpost_pki::inspect(der) {
            Ok(i) => i,
            Err(e) => return Ok(CertCheck::Refused(e.to_string())),
        };
        if info.common_name.as_deref() != Some(name) {
            return Ok(CertCheck::Refused(format!(
                "the certificate is not device {name}'s"
            )));
        }
        // A certificate on record decides by its status, for its own device only (a revoked
        // one stays on record after its device is deleted).
        let fp = info.fingerprint.clone();
        if let Some(v) = self.recorded(name, &fp).await? {
            return Ok(v);
        }
        // Zero-touch.
        let e = &self.enrollment;
        if e.manufacturer_pem.is_empty()
            || outpost_pki::verify_client(der, &e.manufacturer_pem).is_err()
        {
            return Ok(CertCheck::Refused("unknown certificate".into()));
        }
        // Under the write lock, so a concurrent first contact, revocation or approval is
        // either wholly before or wholly after this.
        let _w = self.lock.lock().await;
        if let Some(v) = self.recorded(name, &fp).await? {
            return Ok(v);
        }
        let existing: Option<Device> = self.find(name).await?;
        // A device an operator created is bound to a manufacturer certificate only with an
        // operator's approval, whatever `approval` says.
        let pending = e.cfg.approval || existing.is_some();
        let device = match existing {
            Some(d) if d.admin_state == AdminState::Locked => {
                return Ok(CertCheck::Refused(format!(
                    "device {name} is locked (revoked); enroll it again"
                )));
            }
            Some(d) => d,
            None => {
                let d = Device {
                    name: name.to_string(),
                    description: "enrolled by its manufacturer certificate".into(),
                    profile_name: e.cfg.profile.clone(),
                    service_name: e.cfg.service.clone(),
                    labels: e.cfg.labels.clone(),
                    protocols: [("other".to_string(), serde_json::Map::new())]
                        .into_iter()
                        .collect(),
                    operating_state: outpost_contracts::metadata::OperatingState::Up,
                    admin_state: if pending {
                        AdminState::Locked
                    } else {
                        AdminState::Unlocked
                    },
                    ..Device::default()
                };
                if let Err(err) = self.check_device_refs(&d).await {
                    tracing::error!(device = name, error = %err, "cannot register a zero-touch device: check [enrollment] profile and service");
                    return Ok(CertCheck::Refused(
                        "zero-touch enrollment is misconfigured".into(),
                    ));
                }
                self.insert(d).await?
            }
        };
        let status = if pending {
            CertStatus::Pending
        } else {
            CertStatus::Active
        };
        self.store
            .put_cert(
                &device.id,
                CertRecord {
                    fingerprint: fp.clone(),
                    issuer: CertIssuer::Manufacturer,
                    status,
                    not_after: info.not_after,
                    created: now_millis(),
                },
            )
            .await?;
        self.announce(ACTION_UPDATE, &device);
        tracing::warn!(device = name, fingerprint = %fp, pending, "device enrolled by its manufacturer certificate");
        Ok(if pending {
            CertCheck::Pending
        } else {
            CertCheck::Device(Box::new(device))
        })
    }

    /// What a certificate on record means for device `name`; `None` when it is not on
    /// record at all.
    async fn recorded(&self, name: &str, fingerprint: &str) -> Result<Option<CertCheck>, ApiError> {
        let Some((owner, c)) = self.store.cert_by_fingerprint(fingerprint).await? else {
            return Ok(None);
        };
        if c.status == CertStatus::Revoked {
            return Ok(Some(CertCheck::Refused(
                "the certificate is revoked".into(),
            )));
        }
        let device: Option<Device> = self.find(name).await?;
        let Some(device) = device.filter(|d| d.id == owner) else {
            return Ok(Some(CertCheck::Refused(
                "the certificate is another device's".into(),
            )));
        };
        Ok(Some(match c.status {
            CertStatus::Active if c.not_after > now_millis() / 1000 => {
                CertCheck::Device(Box::new(device))
            }
            CertStatus::Active => CertCheck::Refused("the certificate expired".into()),
            CertStatus::Pending => CertCheck::Pending,
            CertStatus::Revoked => CertCheck::Refused("the certificate is revoked".into()),
        }))
    }

    pub async fn device_exists(&self, name: &str) -> Result<bool, ApiError> {
        Ok(self.store.by_name(Kind::Device, name).await?.is_some())
    }
}
