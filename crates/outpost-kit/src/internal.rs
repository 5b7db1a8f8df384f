//! Mutual TLS between the node's services (`security.internal_tls`).
//!
//! A process establishes its identity once, at start ([`establish`] for a service instance,
//! [`establish_admin`] for the CLI on the node): its certificate from the node CA
//! ([`outpost_pki::internal`]), renewed in the background before it expires and swapped in
//! without a restart. From then on:
//! - its API is served over TLS ([`Credentials::server`]), and every route but `ping` and the
//!   routes a service opens to devices (which authenticate them themselves) answers only
//!   callers holding a service's or an administrator's certificate ([`guard`]);
//! - every client built by [`crate::http::client`] presents the certificate and trusts
//!   only the node CA, and the service registers with scheme `https`, so the others call it
//!   over TLS.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use http::StatusCode;
use outpost_pki::internal::{self as pki, Holder};
use outpost_pki::{PkiError, Reloader};

use crate::ApiError;

pub use outpost_pki::internal::Identity;

/// How often the certificate is checked for renewal at most (it is reissued with half its
/// life left; a short-lived one is checked eight times a life).
const RENEW_CHECK: Duration = Duration::from_secs(60);

/// This process's credentials on the inside of the node.
pub struct Credentials {
    /// Serves the API: the current certificate; client certificates of the node CA.
    pub server: Arc<rustls::ServerConfig>,
    /// Calls other services: trusts the node CA, presents the current certificate.
    pub client: Arc<rustls::ClientConfig>,
    /// The current certificate and key, for servers other than the API (the broker's MQTT
    /// over TLS).
    pub resolver: Arc<outpost_pki::Resolver>,
    /// Where the certificate and key are, for clients that read them as files (the bus).
    pub files: Holder,
}

static PROCESS: OnceLock<Credentials> = OnceLock::new();

/// Whether this process renews its own certificate from the node CA (it runs alone, under
/// compose or Kubernetes) or only picks up the one its supervisor renews (under `outpost
/// up`, where services' sandboxes keep the node CA's key from them).
static RENEWS_ITSELF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Says whether the process renews its own certificate from the node CA (it runs alone,
/// under compose or Kubernetes) or only picks up the one its supervisor renews (under
/// `outpost up`); before [`establish`].
pub fn renew_itself(yes: bool) {
    RENEWS_ITSELF.store(yes, std::sync::atomic::Ordering::Relaxed);
}

/// The process's identity, once established.
pub fn process() -> Option<&'static Credentials> {
    PROCESS.get()
}

/// Establishes the process as service instance `id`, reached at `names`: issues (or keeps)
/// its certificate, lasting `lifetime` (`security.service_cert_s`), and renews it in the
/// background until `shutdown`. Must run inside a Tokio runtime. Establishing twice keeps
/// the first.
pub fn establish(
    data_dir: &Path,
    id: &str,
    names: &[String],
    lifetime: Duration,
    shutdown: crate::Shutdown,
) -> Result<&'static Credentials, PkiError> {
    let secs = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    let holder = pki::ensure_service_cert_lasting(data_dir, id, names, secs)?;
    let (identity, reloader) = load(data_dir, &holder)?;
    let (data_dir, id, names) = (data_dir.to_path_buf(), id.to_string(), names.to_vec());
    let every = RENEW_CHECK.min(lifetime / 8).max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            if RENEWS_ITSELF.load(std::sync::atomic::Ordering::Relaxed)
                && let Err(e) = pki::ensure_service_cert_lasting(&data_dir, &id, &names, secs)
            {
                tracing::warn!(error = %e, "cannot renew the service certificate");
            }
            reloader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .check();
        }
    });
    Ok(identity)
}

/// Establishes the process as the node's local administrator (the CLI on the node), whose
/// certificate lasts a month and is reissued when it runs with less than half of that.
pub fn establish_admin(data_dir: &Path) -> Result<&'static Credentials, PkiError> {
    let holder = pki::ensure_admin_cert(data_dir)?;
    Ok(load(data_dir, &holder)?.0)
}

fn load(
    data_dir: &Path,
    holder: &Holder,
) -> Result<(&'static Credentials, Arc<Mutex<Reloader>>), PkiError> {
    crate::http::install_tls_provider();
    let ca = pki::node_ca_pem(data_dir)?;
    let reloader = Reloader::new(holder.cert.clone(), holder.key.clone())?;
    let resolver = Arc::clone(&reloader.resolver);
    let identity = Credentials {
        server: Arc::new(pki::server_config(Arc::clone(&resolver), &ca)?),
        client: Arc::new(pki::client_config(Arc::clone(&resolver), &ca)?),
        resolver,
        files: holder.clone(),
    };
    Ok((
        PROCESS.get_or_init(|| identity),
        Arc::new(Mutex::new(reloader)),
    ))
}

/// Who called, as the TLS handshake established it (put in a request's extensions by
/// [`crate::tls::serve`]).
#[derive(Debug, Clone)]
pub struct Caller(pub Option<Identity>);

/// For a route only some services may call: passes the node's administrator and the
/// services named in `services` (by service name, any instance), refuses other services
/// with 403, and a caller without a certificate too. Without mutual TLS between services
/// (no [`Caller`] on the request) it passes everyone, as EdgeX's plaintext internal API
/// does.
pub fn only(caller: Option<&Caller>, services: &[&str]) -> Result<(), ApiError> {
    let Some(caller) = caller else {
        return Ok(());
    };
    match &caller.0 {
        Some(Identity::Admin(_)) => Ok(()),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("only {} may call this route", services.join(", ")),
        )),
        Some(id @ Identity::Service(_)) => {
            let name = id.service().unwrap_or_default();
            if services.contains(&name) {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{name} may not call this route (only {})",
                        services.join(", ")
                    ),
                ))
            }
        }
    }
}

/// Middleware of an internal API: `ping` and `open` path prefixes for anyone; everything
/// else only for a service or an administrator of this node (403 otherwise).
pub async fn guard(open: &'static [&'static str], req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let known = req
        .extensions()
        .get::<Caller>()
        .is_some_and(|c| c.0.is_some());
    if known || path == "/api/v3/ping" || open.iter().any(|p| path.starts_with(p)) {
        return next.run(req).await;
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        "this API is internal to the node: call it through the gateway, or with a \
         certificate of one of the node's services or of its administrator",
    )
    .into_response()
}
