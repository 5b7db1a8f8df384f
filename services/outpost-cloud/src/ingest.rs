//! Ingest: a batch from an edge, from the request as it arrived to what the store did with
//! it.
//!
//! The edge is the one its client certificate was issued to at enrollment (by fingerprint;
//! a revoked or replaced certificate belongs to no edge). The body is JSON, optionally
//! `Content-Encoding: zstd`, bounded compressed and decompressed. Items stay raw JSON until
//! the store parses each on its own, so one bad item is rejected alone. Anything the cloud
//! cannot take right now (its storage) is a 503, so the edge sends the batch again.

use std::io::Read as _;
use std::sync::Arc;

use axum::http::StatusCode;
use outpost_contracts::export::{IngestBatch, IngestResponse};
use outpost_kit::ApiError;
use outpost_kit::tls::Peer;
use serde_json::value::RawValue;

use crate::store::{Incoming, Store, StoreError};

/// Why a batch was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest needs the client certificate this edge got at enrollment")]
    NoCertificate,
    #[error(
        "this certificate belongs to no enrolled edge (never enrolled, re-enrolled since, or revoked)"
    )]
    UnknownEdge,
    #[error("the batch is too large")]
    TooLarge,
    #[error("the batch is larger than {limit} bytes uncompressed")]
    TooLargeUncompressed { limit: usize },
    #[error("content encoding {0} is not supported (zstd or none)")]
    Encoding(String),
    #[error("invalid zstd body")]
    Zstd(#[source] std::io::Error),
    #[error("request body is empty")]
    Empty,
    #[error("invalid JSON body")]
    Json(#[source] serde_json::Error),
    #[error("unknown priority {0} (high or normal)")]
    Priority(String),
    #[error("items must be in increasing sequence order")]
    Order,
    #[error("storage")]
    Storage(#[source] StoreError),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoCertificate => StatusCode::UNAUTHORIZED,
            Self::UnknownEdge => StatusCode::FORBIDDEN,
            Self::TooLarge | Self::TooLargeUncompressed { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Zstd(_) | Self::Empty | Self::Json(_) | Self::Priority(_) | Self::Order => {
                StatusCode::BAD_REQUEST
            }
            Self::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<IngestError> for ApiError {
    /// The edge is told why, cause included: it is the client that must change something
    /// (or retry, for a 503).
    fn from(e: IngestError) -> Self {
        let message = match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        };
        ApiError::new(e.status(), message)
    }
}

outpost_kit::metric_names! {
    /// What ingest counts (`outpost_cloud_*`).
    pub struct Metrics {
        batches = "batches_total",
        accepted = "items_accepted_total",
        duplicates = "items_duplicate_total",
        rejected = "items_rejected_total",
        /// Batches refused whole (not enrolled, too large, unreadable).
        refused = "batches_refused_total",
    }
}

pub struct Ingest {
    pub store: Arc<dyn Store>,
    /// Largest body, as sent.
    pub max_body_bytes: usize,
    /// Largest batch, decompressed.
    pub max_batch_bytes: usize,
    pub metrics: Metrics,
}

impl Ingest {
    /// Stores the batch `body` (encoded as `encoding`, `None` for plain) that `peer` sent.
    pub async fn batch(
        &self,
        peer: &Peer,
        encoding: Option<&str>,
        body: &[u8],
    ) -> Result<IngestResponse, IngestError> {
        let Some(fingerprint) = peer.fingerprint.clone() else {
            metrics::counter!(self.metrics.refused, "reason" => "no-certificate").increment(1);
            return Err(IngestError::NoCertificate);
        };
        let edge = self
            .store
            .edge_by_fingerprint(fingerprint)
            .await
            .map_err(IngestError::Storage)?;
        let Some(edge) = edge else {
            metrics::counter!(self.metrics.refused, "reason" => "unknown-edge").increment(1);
            return Err(IngestError::UnknownEdge);
        };
        if body.len() > self.max_body_bytes {
            return Err(IngestError::TooLarge);
        }
        let plain = match encoding.unwrap_or("identity") {
            "zstd" => decompress(body, self.max_batch_bytes)?,
            "identity" => body.to_vec(),
            other => return Err(IngestError::Encoding(other.to_string())),
        };
        if plain.is_empty() {
            return Err(IngestError::Empty);
        }
        let batch: IngestBatch<Box<RawValue>> =
            serde_json::from_slice(&plain).map_err(IngestError::Json)?;
        let priority = match batch.priority.as_str() {
            "high" => 0,
            "normal" => 1,
            other => return Err(IngestError::Priority(other.to_string())),
        };
        if batch.items.windows(2).any(|w| w[0].seq >= w[1].seq) {
            return Err(IngestError::Order);
        }
        let items = batch.items.len();
        let stored = self
            .store
            .ingest(Incoming {
                edge: edge.clone(),
                address: peer.addr.to_string(),
                incarnation: batch.incarnation,
                priority,
                items: batch.items,
                backlog: batch.backlog,
            })
            .await
            .map_err(IngestError::Storage)?;
        let m = &self.metrics;
        metrics::counter!(m.batches, "edge" => edge.clone()).increment(1);
        metrics::counter!(m.accepted, "edge" => edge.clone()).increment(stored.accepted);
        metrics::counter!(m.duplicates, "edge" => edge.clone()).increment(stored.duplicates);
        metrics::counter!(m.rejected, "edge" => edge.clone())
            .increment(stored.rejected.len() as u64);
        for r in &stored.rejected {
            tracing::warn!(edge, seq = r.seq, reason = %r.reason, "rejected an exported item");
        }
        tracing::debug!(
            edge,
            items,
            accepted = stored.accepted,
            duplicates = stored.duplicates,
            "stored a batch"
        );
        Ok(IngestResponse {
            api_version: "v3".into(),
            status_code: 200,
            accepted: stored.accepted,
            duplicates: stored.duplicates,
            rejected: stored.rejected,
            hwm: stored.hwm,
        })
    }
}

/// Decompresses a zstd body, refusing more than `limit` bytes of output.
fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, IngestError> {
    let decoder = zstd::stream::read::Decoder::new(body).map_err(IngestError::Zstd)?;
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(IngestError::Zstd)?;
    if out.len() > limit {
        return Err(IngestError::TooLargeUncompressed { limit });
    }
    Ok(out)
}
