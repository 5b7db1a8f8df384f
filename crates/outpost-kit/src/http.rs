//! Outgoing HTTP: one client configuration, and the correlation ID on every call.

use std::time::Duration;

use crate::request_id;

/// Makes ring the process's TLS provider (idempotent). HTTPS clients (the CLI to the
/// gateway, tests) need one, and every HTTP client built by `reqwest` looks it up, so
/// anything that builds a client calls this first.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client with a total timeout per request and no proxy lookup.
pub fn client(timeout: Duration) -> reqwest::Client {
    install_tls_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(2)))
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4)
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Adds the current correlation ID (or a new one) to an outgoing request.
pub fn correlated(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    rb.header(request_id::HEADER, request_id::current_or_mint().as_ref())
}
