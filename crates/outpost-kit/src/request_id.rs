//! Request IDs: accepted from `X-Correlation-ID` (EdgeX) or `X-Request-ID`, minted when
//! absent, returned on the response, carried by a task-local through the handler so every
//! downstream HTTP call and bus message made while serving the request carries it too, and
//! recorded on the request's tracing span so every log line of the request shows it.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

/// EdgeX's correlation header.
pub const HEADER: &str = "x-correlation-id";
/// The common alternative, accepted on input.
pub const ALT_HEADER: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: Arc<str>;
}

/// The correlation ID of the request or message being handled, if any.
pub fn current() -> Option<Arc<str>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// The current correlation ID, or a new one.
pub fn current_or_mint() -> Arc<str> {
    current().unwrap_or_else(|| mint().into())
}

/// Runs `fut` with `id` as the current correlation ID.
pub async fn scope<F: std::future::Future>(id: Arc<str>, fut: F) -> F::Output {
    CURRENT.scope(id, fut).await
}

/// A new correlation ID (a random UUID, as EdgeX uses). IDs need to be unique, not
/// secret: a per-thread generator saves a system call per request.
pub fn mint() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .to_string()
}

/// [`mint`] straight into shared form: one allocation.
pub fn mint_shared() -> Arc<str> {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    Arc::from(&*id.hyphenated().encode_lower(&mut buf))
}

/// Accepts a client-supplied ID if it is reasonable: 1..=128 visible ASCII characters.
pub fn accept(value: &str) -> Option<&str> {
    let ok = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(value)
}

/// The ID a request carries, if acceptable.
pub fn from_headers(headers: &HeaderMap) -> Option<String> {
    carried(headers).map(str::to_string)
}

/// [`from_headers`], borrowed.
pub fn carried(headers: &HeaderMap) -> Option<&str> {
    [HEADER, ALT_HEADER]
        .iter()
        .filter_map(|h| headers.get(*h))
        .filter_map(|v| v.to_str().ok())
        .find_map(accept)
}

/// Middleware: establishes the request's correlation ID, span and response header.
pub async fn layer(req: Request, next: Next) -> Response {
    let id: Arc<str> = from_headers(req.headers()).unwrap_or_else(mint).into();
    let span = tracing::info_span!(
        "request",
        correlation_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let mut resp = scope(Arc::clone(&id), next.run(req)).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_reasonable_ids_only() {
        assert_eq!(
            accept("14a42ea6-c394-41c3-8bcd-a29b9f5e6835"),
            Some("14a42ea6-c394-41c3-8bcd-a29b9f5e6835")
        );
        assert_eq!(accept(""), None);
        assert_eq!(accept("has space"), None);
        assert_eq!(accept(&"x".repeat(129)), None);
    }

    #[test]
    fn minted_ids_are_uuids() {
        let (a, b) = (mint_shared(), mint_shared());
        assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
        assert_eq!(a.len(), 36);
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn scope_sets_current() {
        assert!(current().is_none());
        let seen = scope("abc".into(), async { current() }).await;
        assert_eq!(seen.as_deref(), Some("abc"));
    }
}
