//! Signed firmware artifacts: uploads checked against the trusted keys, payloads stored
//! once by SHA-256 and encrypted at rest ([`crate::blob`]), downloads with HTTP ranges.
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

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt as _;
use outpost_contracts::common::{BaseResponse, BaseWithTotalCountResponse, SortedKeys};
use outpost_contracts::now_millis as now_ms;
use outpost_contracts::ota::{
    ArtifactResponse, ArtifactUploaded, ArtifactView, MultiArtifactsResponse,
};
use outpost_kit::ApiError;
use outpost_kit::error::Path;

use crate::blob::{BlobReader, BlobWriter};
use crate::store::{NewArtifact, Store, StoredArtifact};
use outpost_manifest::{self as manifest, Manifest, ManifestError, PublicKey};

/// Artifacts: their records in the store and their payloads on disk.
pub struct Artifacts {
    store: Arc<dyn Store>,
    /// Keys whose signatures are accepted.
    keys: Vec<PublicKey>,
    /// Where payloads are kept, one encrypted blob per SHA-256.
    blobs: PathBuf,
    /// The service key blobs' keys are derived from.
    master: [u8; 32],
    max_bytes: u64,
}

fn view(a: StoredArtifact) -> Option<ArtifactView> {
    Some(ArtifactView {
        manifest: Manifest::parse(&a.manifest).ok()?,
        manifest_base64: base64::engine::general_purpose::STANDARD.encode(&a.manifest),
        signature: a.signature,
        key_id: a.key_id,
        uploaded_ms: a.uploaded_ms,
    })
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The manifest, its bytes, the signature and the signing key's id.
type Checked = (Manifest, Vec<u8>, String, String);

/// Why the payload directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot prepare the payload directory")]
    Dir(#[source] outpost_storage::StorageError),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Artifacts {
    /// Artifacts with their payloads in `blobs` (created private if missing).
    pub fn open(
        store: Arc<dyn Store>,
        keys: Vec<PublicKey>,
        blobs: PathBuf,
        master: [u8; 32],
        max_bytes: u64,
    ) -> Result<Self, OpenError> {
        outpost_storage::ensure_private_dir(&blobs).map_err(OpenError::Dir)?;
        // Uploads that never finished (a crash) leave temporary files. Instances may share
        // the directory: only files nobody wrote to for an hour are left behind by a crash.
        let entries = std::fs::read_dir(&blobs).map_err(|source| OpenError::Read {
            path: blobs.clone(),
            source,
        })?;
        let abandoned = |e: &std::fs::DirEntry| {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600))
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") && abandoned(&e) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Self {
            store,
            keys,
            blobs,
            master,
            max_bytes,
        })
    }

    /// Everything that refuses an upload before its payload is read: the manifest, its
    /// signature, the size, a name and version already taken.
    async fn check_upload(&self, headers: &HeaderMap) -> Result<Checked, ApiError> {
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
        let key_id = match manifest::verify(&manifest_bytes, &signature, &self.keys) {
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
        if manifest.size > self.max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the artifact is larger than {} bytes", self.max_bytes),
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
        let exists = self
            .store
            .artifact_exists(manifest.name.clone(), manifest.version.clone())
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

    /// An artifact by name and version (404 when there is none).
    pub async fn find(&self, name: String, version: String) -> Result<ArtifactView, ApiError> {
        let row = self
            .store
            .artifact(name.clone(), version.clone())
            .await
            .map_err(ApiError::internal)?;
        row.and_then(view)
            .ok_or_else(|| ApiError::not_found(format!("no artifact {name} {version}")))
    }

    /// The payload of an artifact, whole or the range asked for.
    pub async fn serve_payload(
        &self,
        name: String,
        version: String,
        headers: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let a = self.find(name, version).await?;
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
        let path = self.blobs.join(&a.manifest.sha256);
        let master = self.master;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        // The reader ends when the body is dropped (its sends fail).
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
}

pub async fn upload(
    State(app): State<Arc<Artifacts>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // A refused upload's body is read before the answer by the kit (`refused`).
    let (manifest, manifest_bytes, signature, key_id) = app.check_upload(&headers).await?;

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
    app.store
        .add_artifact(NewArtifact {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            sha256: manifest.sha256.clone(),
            size: manifest.size,
            stored: StoredArtifact {
                manifest: manifest_bytes,
                signature,
                key_id: key_id.clone(),
                uploaded_ms: now_ms(),
            },
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
    let stored = ArtifactUploaded {
        base: BaseResponse::new(201),
        name: manifest.name,
        version: manifest.version,
        sha256: manifest.sha256,
        size: manifest.size,
        key_id,
    };
    Ok((StatusCode::CREATED, Json(SortedKeys(stored))).into_response())
}

pub async fn all(State(app): State<Arc<Artifacts>>) -> Result<Response, ApiError> {
    let rows = app.store.artifacts().await.map_err(ApiError::internal)?;
    let artifacts: Vec<_> = rows.into_iter().filter_map(view).collect();
    Ok(Json(SortedKeys(MultiArtifactsResponse {
        page: BaseWithTotalCountResponse::new(artifacts.len() as u64),
        artifacts,
    }))
    .into_response())
}

pub async fn one(
    State(app): State<Arc<Artifacts>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let artifact = app.find(name, version).await?;
    Ok(Json(SortedKeys(ArtifactResponse {
        base: BaseResponse::new(200),
        artifact,
    }))
    .into_response())
}

pub async fn remove(
    State(app): State<Arc<Artifacts>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let a = app.find(name.clone(), version.clone()).await?;
    let still_used = app
        .store
        .delete_artifact(name, version, a.manifest.sha256.clone())
        .await
        .map_err(ApiError::internal)?;
    if !still_used {
        let _ = std::fs::remove_file(app.blobs.join(&a.manifest.sha256));
    }
    Ok(Json(BaseResponse::new(200)).into_response())
}

pub async fn payload(
    State(app): State<Arc<Artifacts>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.serve_payload(name, version, &headers).await
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
