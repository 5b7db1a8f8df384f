//! ota (port 59750): signed firmware artifacts, stored once by SHA-256 and encrypted at rest,
//! served with HTTP ranges so interrupted downloads resume.
//!
//! - `POST /api/v3/artifact`: the payload as the body (streamed, any size up to
//!   `max_artifact_bytes`), the manifest as `X-Outpost-Manifest` (base64 of its JSON bytes)
//!   and its Ed25519 signature as `X-Outpost-Signature` (base64). The signature is checked
//!   against `trusted_keys` before a byte of payload is read (403 when no key verifies it);
//!   the payload must match the manifest's size and SHA-256 (422 otherwise: tampered or
//!   truncated); nothing is kept of a refused upload. 409 when the name and version exist.
//! - `GET /api/v3/artifact/all`, `GET /api/v3/artifact/name/{name}/version/{version}`: the
//!   manifests, their signatures and the signing key ids.
//! - `GET /api/v3/artifact/name/{name}/version/{version}/payload`: the payload; strong
//!   `ETag` (the SHA-256), `Range: bytes=a-b` answered 206, `If-Range` honoured.
//! - `DELETE /api/v3/artifact/name/{name}/version/{version}`.
//!
//! The manifest format and the signature are documented in docs/ota.md.

pub mod blob;
pub mod fleet;
pub mod inventory;
pub use outpost_manifest as manifest;
pub mod rollout;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures_util::StreamExt as _;
use outpost_bus::metadata::{MetadataView, ViewConfig};
use outpost_contracts::now_millis as now_ms;
use outpost_kit::error::Path;
use outpost_kit::{ApiError, Info, Parts, Stage, Start, StartError, Storage};
use outpost_storage::rusqlite::{OptionalExtension as _, params};
use outpost_storage::{Db, Migration, StorageError};
use serde::{Deserialize, Serialize};

use blob::{BlobReader, BlobWriter};
use manifest::{Manifest, ManifestError, PublicKey};

/// The service's registry ID.
pub const SERVICE: &str = "ota";

/// `[ota]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    pub port: u16,
    /// Public keys whose signatures are accepted (`ed25519:<base64>`, as `outpost ota
    /// keygen` prints them); more than one for rotation.
    pub trusted_keys: Vec<String>,
    /// Largest artifact payload.
    pub max_artifact_bytes: u64,
    /// How often devices are told to poll, seconds.
    pub poll_seconds: u64,
    /// A device not seen for this long is overdue, seconds (0: three poll intervals).
    pub overdue_after_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 59750,
            trusted_keys: Vec::new(),
            max_artifact_bytes: 4 * 1024 * 1024 * 1024,
            poll_seconds: 30,
            overdue_after_s: 0,
        }
    }
}

impl outpost_kit::ServiceConfig for Config {
    fn port(&self) -> u16 {
        self.port
    }

    fn enabled(&self) -> bool {
        self.enabled
    }
}

impl outpost_kit::config::Validate for Config {
    fn validate(&self, p: &mut outpost_kit::config::Problems) {
        for k in &self.trusted_keys {
            if let Err(e) = PublicKey::parse(k) {
                p.push("ota.trusted_keys", format!("{k}: {e}"));
            }
        }
        p.check(
            (1..=86_400).contains(&self.poll_seconds),
            "ota",
            "poll_seconds must be 1 to 86400",
        );
        p.check(
            !self.enabled || !self.trusted_keys.is_empty(),
            "ota",
            "trusted_keys must name at least one key (see `outpost ota keygen`)",
        );
    }
}

const MIGRATIONS: &[Migration] = &[ARTIFACTS, fleet::MIGRATION, inventory::MIGRATION];

const ARTIFACTS: Migration = Migration {
    version: 1,
    description: "artifacts",
    sql: "CREATE TABLE artifacts (
              name TEXT NOT NULL,
              version TEXT NOT NULL,
              sha256 TEXT NOT NULL,
              size INTEGER NOT NULL,
              manifest BLOB NOT NULL,
              signature TEXT NOT NULL,
              key_id TEXT NOT NULL,
              uploaded_ms INTEGER NOT NULL,
              PRIMARY KEY (name, version)
          );
          CREATE INDEX artifacts_by_sha ON artifacts (sha256);",
};

pub struct App {
    db: Db,
    /// core-metadata: devices, credentials.
    view: MetadataView,
    fleet: fleet::Fleet,
    inventory: inventory::Inventory,
    /// Where the gateway's key for vouching client certificates lives, and the key once read.
    cert_mac_file: PathBuf,
    cert_mac_key: std::sync::OnceLock<[u8; 32]>,
    /// The node's bus: devices are told to poll over it.
    bus: outpost_bus::Link,
    /// Messages to devices go out as tasks of the service.
    tasks: outpost_kit::Tasks,
    poll_seconds: u64,
    overdue_ms: i64,
    keys: Vec<PublicKey>,
    blobs: PathBuf,
    master: [u8; 32],
    max_bytes: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactView {
    manifest: Manifest,
    /// The signed bytes, base64: what an agent verifies.
    manifest_base64: String,
    signature: String,
    key_id: String,
    uploaded_ms: i64,
}

fn row_view(
    r: &outpost_storage::rusqlite::Row<'_>,
) -> outpost_storage::rusqlite::Result<(Vec<u8>, String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn view(
    (bytes, signature, key_id, uploaded_ms): (Vec<u8>, String, String, i64),
) -> Option<ArtifactView> {
    Some(ArtifactView {
        manifest: Manifest::parse(&bytes).ok()?,
        manifest_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
        signature,
        key_id,
        uploaded_ms,
    })
}

/// The service, as the node runs it.
pub struct Ota;

/// Why ota cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a trusted key is not valid: {0}")]
    TrustedKey(String),
    #[error("cannot prepare {path}")]
    Blobs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl outpost_kit::Service for Ota {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "ota");

    fn storage(_: &Config) -> Option<Storage> {
        Some(Storage::new(MIGRATIONS, 2))
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let keys = cfg
            .trusted_keys
            .iter()
            .map(|k| PublicKey::parse(k).map_err(|e| StartError::other(Error::TrustedKey(e))))
            .collect::<Result<Vec<_>, _>>()?;
        let blobs = ctx.data_dir.join("ota").join("blobs");
        outpost_storage::ensure_private_dir(&blobs).map_err(StartError::other)?;
        // Uploads that never finished (a crash) leave temporary files.
        let entries = std::fs::read_dir(&blobs).map_err(|source| {
            StartError::other(Error::Blobs {
                path: blobs.clone(),
                source,
            })
        })?;
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let master = outpost_storage::load_or_create_secret(&ctx.secrets_dir().join("ota.key"))
            .map_err(StartError::other)?;
        let db = start.db()?;
        tracing::info!(keys = ?keys.iter().map(PublicKey::id).collect::<Vec<_>>(), "trusted signing keys");
        let fleet = fleet::Fleet::default();
        *fleet.rollouts.lock().await = fleet::load(&db).await.map_err(StartError::other)?;
        let inventory = inventory::Inventory::load(&db)
            .await
            .map_err(StartError::other)?;
        let overdue_s = if cfg.overdue_after_s == 0 {
            3 * cfg.poll_seconds
        } else {
            cfg.overdue_after_s
        };
        let link = outpost_bus::Link::start(ctx);
        // Credentials are checked often (every poll): remembered for a minute, and
        // forgotten at once when their device changes.
        let view = MetadataView::start(
            ctx,
            ViewConfig {
                credentials_for: std::time::Duration::from_secs(60),
                ..ViewConfig::default()
            },
        );
        let app = Arc::new(App {
            db,
            view: view.clone(),
            fleet,
            inventory,
            bus: link,
            tasks: ctx.tasks.clone(),
            cert_mac_file: ctx.secrets_dir().join(outpost_pki::vouch::KEY_FILE),
            cert_mac_key: std::sync::OnceLock::new(),
            poll_seconds: cfg.poll_seconds,
            overdue_ms: i64::try_from(overdue_s.saturating_mul(1000)).unwrap_or(i64::MAX),
            keys,
            blobs,
            master,
            max_bytes: cfg.max_artifact_bytes,
        });
        {
            let app = Arc::clone(&app);
            // Check-in times are written once more after the last request.
            ctx.tasks
                .spawn("inventory", Stage::AfterServing, move |stop| {
                    inventory::keep_saving(app, stop)
                });
        }
        Ok(Parts::new(router(app)).health(view.probe()))
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/api/v3/artifact",
            // Payloads are streamed to disk, not held: the node's body limit does not apply.
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v3/artifact/all", get(all))
        .route(
            "/api/v3/artifact/name/{name}/version/{version}",
            get(one).delete(remove),
        )
        .route(
            "/api/v3/artifact/name/{name}/version/{version}/payload",
            get(payload),
        )
        .route("/api/v3/rollout", post(fleet::create))
        .route("/api/v3/rollout/all", get(fleet::all))
        .route("/api/v3/rollout/name/{name}", get(fleet::one))
        .route("/api/v3/rollout/name/{name}/{action}", post(fleet::control))
        .route(
            "/api/v3/rollout/name/{name}/device/{device}",
            get(fleet::device_history),
        )
        .route("/api/v3/ddi/{device}", get(fleet::poll))
        .route(
            "/api/v3/ddi/{device}/attributes",
            axum::routing::put(inventory::put_attributes),
        )
        .route("/api/v3/inventory/all", get(inventory::all))
        .route("/api/v3/inventory/name/{device}", get(inventory::one))
        .route("/api/v3/group", post(inventory::group_create))
        .route("/api/v3/group/all", get(inventory::group_all))
        .route(
            "/api/v3/group/name/{name}",
            get(inventory::group_one).delete(inventory::group_delete),
        )
        .route(
            "/api/v3/ddi/{device}/action/{rollout}/feedback",
            post(fleet::feedback),
        )
        .route(
            "/api/v3/ddi/{device}/action/{rollout}/payload",
            get(fleet::payload),
        )
        .with_state(app)
}

impl App {
    /// A client certificate the gateway vouches for: the certificate header when its MAC is
    /// valid (the key is the gateway's; read once it exists).
    fn vouched<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let cert = header_str(headers, outpost_pki::vouch::HEADER)?.trim();
        let mac = header_str(headers, outpost_pki::vouch::MAC_HEADER)?.trim();
        let key = match self.cert_mac_key.get() {
            Some(k) => k,
            None => {
                let k = outpost_storage::read_secret(&self.cert_mac_file).ok()?;
                self.cert_mac_key.get_or_init(|| k)
            }
        };
        outpost_pki::vouch::verify(key, cert, mac).then_some(cert)
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Everything that refuses an upload before its payload is read: the manifest, its
/// signature, the size, a name and version already taken.
/// The manifest, its bytes, the signature and the signing key's id.
type Checked = (Manifest, Vec<u8>, String, String);

async fn check_upload(app: &App, headers: &HeaderMap) -> Result<Checked, ApiError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let manifest_bytes = header_str(headers, "x-outpost-manifest")
        .ok_or_else(|| ApiError::bad_request("the manifest is missing (X-Outpost-Manifest)"))
        .and_then(|m| {
            b64.decode(m.trim())
                .map_err(|_| ApiError::bad_request("X-Outpost-Manifest is not base64"))
        })?;
    let signature = header_str(headers, "x-outpost-signature")
        .ok_or_else(|| ApiError::bad_request("the signature is missing (X-Outpost-Signature)"))?
        .to_string();
    let manifest =
        Manifest::parse(&manifest_bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let key_id = match manifest::verify(&manifest_bytes, &signature, &app.keys) {
        Ok(id) => id,
        Err(e @ ManifestError::Untrusted) => {
            tracing::warn!(
                name = manifest.name,
                version = manifest.version,
                "refused an artifact: {e}"
            );
            return Err(ApiError::new(StatusCode::FORBIDDEN, e.to_string()));
        }
        Err(e) => return Err(ApiError::bad_request(e.to_string())),
    };
    if manifest.size > app.max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the artifact is larger than {} bytes", app.max_bytes),
        ));
    }
    if let Some(len) = header_str(headers, "content-length").and_then(|v| v.parse::<u64>().ok())
        && len != manifest.size
    {
        return Err(ApiError::bad_request(format!(
            "the body has {len} bytes, the manifest says {}",
            manifest.size
        )));
    }
    let (name, version) = (manifest.name.clone(), manifest.version.clone());
    let exists = app
        .db
        .read(move |c| {
            Ok::<_, StorageError>(
                c.query_row(
                    "SELECT 1 FROM artifacts WHERE name = ?1 AND version = ?2",
                    params![name, version],
                    |_| Ok(()),
                )
                .optional()?
                .is_some(),
            )
        })
        .await
        .map_err(ApiError::internal)?;
    if exists {
        return Err(ApiError::conflict(format!(
            "artifact {} {} exists",
            manifest.name, manifest.version
        )));
    }
    Ok((manifest, manifest_bytes, signature, key_id))
}

async fn upload(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // A refused upload's body is read before the answer by the kit (`refused`).
    let (manifest, manifest_bytes, signature, key_id) = check_upload(&app, &headers).await?;

    // Stream the payload to an encrypted blob, off the runtime.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let (dir, master, size) = (app.blobs.clone(), app.master, manifest.size);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(PathBuf, String)> {
        let mut w = BlobWriter::create(&dir, &master, size)?;
        while let Some(data) = rx.blocking_recv() {
            if let Err(e) = w.write(&data) {
                w.abandon();
                return Err(e);
            }
        }
        w.finish()
    });
    let mut stream = body.into_data_stream();
    let mut cut = None;
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(data) => {
                if tx.send(data).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                cut = Some(e.to_string());
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(ApiError::internal)?;
    let (tmp, sha) = match (cut, written) {
        (Some(why), Ok((tmp, _))) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(ApiError::bad_request(format!(
                "the upload was cut short: {why}"
            )));
        }
        (Some(why), Err(_)) => {
            return Err(ApiError::bad_request(format!(
                "the upload was cut short: {why}"
            )));
        }
        (None, Err(e)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.to_string(),
            ));
        }
        (None, Ok(done)) => done,
    };
    if sha != manifest.sha256 {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(
            name = manifest.name,
            version = manifest.version,
            got = sha,
            "refused an artifact whose payload does not match its signed manifest"
        );
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the payload's SHA-256 is {sha}, the signed manifest says {}: refused (tampered or corrupted)",
                manifest.sha256
            ),
        ));
    }
    // Stored once: a payload uploaded before under another name or version is reused.
    let path = app.blobs.join(&sha);
    if path.exists() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        std::fs::rename(&tmp, &path).map_err(ApiError::internal)?;
    }
    let (m, bytes, sig, kid) = (manifest.clone(), manifest_bytes, signature, key_id.clone());
    app.db
        .write(move |c| {
            c.execute(
                "INSERT INTO artifacts (name, version, sha256, size, manifest, signature, key_id, uploaded_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![m.name, m.version, m.sha256, m.size as i64, bytes, sig, kid, now_ms()],
            )?;
            Ok::<_, StorageError>(())
        })
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(
        name = manifest.name,
        version = manifest.version,
        sha256 = manifest.sha256,
        size = manifest.size,
        key = key_id,
        "artifact stored"
    );
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "apiVersion": "v3", "statusCode": 201, "name": manifest.name, "version": manifest.version,
            "sha256": manifest.sha256, "size": manifest.size, "keyId": key_id
        })),
    )
        .into_response())
}

async fn all(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let rows = app
        .db
        .read(|c| {
            let mut st = c.prepare(
                "SELECT manifest, signature, key_id, uploaded_ms FROM artifacts ORDER BY name, uploaded_ms",
            )?;
            let rows = st.query_map([], row_view)?.collect::<Result<Vec<_>, _>>()?;
            Ok::<_, StorageError>(rows)
        })
        .await
        .map_err(ApiError::internal)?;
    let list: Vec<_> = rows.into_iter().filter_map(view).collect();
    Ok(Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200, "totalCount": list.len(), "artifacts": list})).into_response())
}

async fn find(app: &App, name: String, version: String) -> Result<ArtifactView, ApiError> {
    let (n, v) = (name.clone(), version.clone());
    let row = app
        .db
        .read(move |c| {
            Ok::<_, StorageError>(
                c.query_row(
                    "SELECT manifest, signature, key_id, uploaded_ms FROM artifacts WHERE name = ?1 AND version = ?2",
                    params![n, v],
                    row_view,
                )
                .optional()?,
            )
        })
        .await
        .map_err(ApiError::internal)?;
    row.and_then(view)
        .ok_or_else(|| ApiError::not_found(format!("no artifact {name} {version}")))
}

async fn one(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let a = find(&app, name, version).await?;
    Ok(
        Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200, "artifact": a}))
            .into_response(),
    )
}

async fn remove(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let a = find(&app, name.clone(), version.clone()).await?;
    let sha = a.manifest.sha256.clone();
    let still_used = app
        .db
        .write(move |c| {
            c.execute(
                "DELETE FROM artifacts WHERE name = ?1 AND version = ?2",
                params![name, version],
            )?;
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM artifacts WHERE sha256 = ?1",
                [&sha],
                |r| r.get(0),
            )?;
            Ok::<_, StorageError>(n > 0)
        })
        .await
        .map_err(ApiError::internal)?;
    if !still_used {
        let _ = std::fs::remove_file(app.blobs.join(&a.manifest.sha256));
    }
    Ok(Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200})).into_response())
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` of a payload of `size` bytes: `[start, end)`.
fn parse_range(h: &str, size: u64) -> Option<(u64, u64)> {
    let spec = h.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size)
        }
        (a, "") => (a.parse().ok()?, size),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.saturating_add(1).min(size),
        ),
    };
    (start < end && start < size).then_some((start, end))
}

async fn payload(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve_payload(&app, name, version, &headers).await
}

/// The payload of an artifact, whole or the range asked for.
async fn serve_payload(
    app: &App,
    name: String,
    version: String,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let a = find(app, name, version).await?;
    let size = a.manifest.size;
    let etag = format!("\"{}\"", a.manifest.sha256);
    // A range only applies to the payload it was asked for (If-Range with the ETag).
    let if_range_ok = header_str(headers, "if-range").is_none_or(|v| v.trim() == etag);
    let range = header_str(headers, "range").filter(|_| if_range_ok);
    let (start, end, status) = match range {
        Some(r) => match parse_range(r, size) {
            Some((s, e)) => (s, e, StatusCode::PARTIAL_CONTENT),
            None => {
                let mut resp = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("the range {r} is not within the {size} bytes of the payload"),
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(resp);
            }
        },
        None => (0, size, StatusCode::OK),
    };
    let path = app.blobs.join(&a.manifest.sha256);
    let master = app.master;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let reader = match BlobReader::open(&path, &master) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let r = reader.read_range(start, end, |piece| {
            tx.blocking_send(Ok(Bytes::from(piece))).is_ok()
        });
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot read an artifact payload");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&(end - start).to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 100)));
        assert_eq!(parse_range("bytes=500-", 1000), Some((500, 1000)));
        assert_eq!(parse_range("bytes=-100", 1000), Some((900, 1000)));
        assert_eq!(parse_range("bytes=900-5000", 1000), Some((900, 1000)));
        assert_eq!(parse_range("bytes=1000-", 1000), None);
        assert_eq!(parse_range("bytes=5-1", 1000), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
    }
}
