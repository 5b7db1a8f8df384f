//! Outgoing HTTP: one client configuration, and the correlation ID on every call.

use std::time::Duration;

use crate::request_id;

/// Makes ring the process's TLS provider (idempotent). HTTPS clients (the CLI to the
/// gateway, tests) need one, and every HTTP client built by `reqwest` looks it up, so
/// anything that builds a client calls this first.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for calls to the node's services: a total timeout per request, no proxy
/// lookup, and, once the process established its identity ([`crate::internal`]), its
/// certificate presented and only the node CA trusted.
pub fn client(timeout: Duration) -> reqwest::Client {
    let mut b = builder(timeout);
    if let Some(identity) = crate::internal::process() {
        b = b.tls_backend_preconfigured((*identity.client).clone());
    }
    b.build().unwrap_or_else(|_| {
        builder(timeout)
            .tls_certs_only(Vec::new())
            .build()
            .unwrap_or_default()
    })
}

/// A client for calls outside the node (devices' own HTTP servers, webhooks): the same
/// limits, the system's trust, no certificate of the node presented. Where the system has
/// no trusted certificates (a container image without them) it trusts none: plain HTTP
/// still works, and HTTPS fails with the reason instead of the process.
pub fn external_client(timeout: Duration) -> reqwest::Client {
    builder(timeout).build().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the system's trusted certificates cannot be used; HTTPS to outside the node will fail");
        builder(timeout)
            .tls_certs_only(Vec::new())
            .build()
            .unwrap_or_default()
    })
}

fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(2)))
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4)
        .no_proxy()
}

/// Adds the current correlation ID (or a new one) to an outgoing request.
pub fn correlated(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    rb.header(request_id::HEADER, request_id::current_or_mint().as_ref())
}
