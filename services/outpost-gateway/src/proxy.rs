//! `/{service}/{path}` → `{path}` on an instance of `service`, the way EdgeX's gateway
//! routes (`/core-data/api/v3/...`), with the cache, retries and timeouts around it.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use outpost_kit::ApiError;

use crate::app::App;
use crate::cache::{self, Entry};
use crate::observe::LogSlot;
use crate::stats::{class, upstream_metrics};

/// Hop-by-hop headers (RFC 9110 §7.6.1), the caller's credentials and any client certificate
/// the caller claims in a header: never forwarded.
const DROPPED: [&str; 12] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "authorization",
    "x-api-key",
    outpost_pki::vouch::HEADER,
    outpost_pki::vouch::MAC_HEADER,
];

fn strip(headers: &mut HeaderMap) {
    // One pass over the names (a request carries a handful); the map is searched only for
    // names that are there.
    let mut gone: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        if DROPPED.contains(&name.as_str()) {
            gone.push(name.clone());
        }
        if name == header::CONNECTION {
            gone.extend(
                value
                    .to_str()
                    .into_iter()
                    .flat_map(|v| v.split(','))
                    .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
            );
        }
    }
    for h in gone {
        headers.remove(h);
    }
}

/// Splits `/core-data/api/v3/x?y` into (`core-data`, `/api/v3/x?y`), borrowed.
fn split(uri: &http::Uri) -> Option<(&str, Cow<'_, str>)> {
    let whole = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let path = uri.path().strip_prefix('/')?;
    let service = path.split_once('/').map_or(path, |(s, _)| s);
    if service.is_empty() {
        return None;
    }
    // What follows the service: the path's rest and the query. `/core-data` alone and
    // `/core-data?x` leave nothing or the query, which start the backend path at `/`.
    let rest = whole.get(1 + service.len()..).unwrap_or_default();
    let rest_path = rest.split_once('?').map_or(rest, |(p, _)| p);
    if rest_path.split('/').any(|seg| seg == ".." || seg == ".") {
        return None;
    }
    let rest = if rest.starts_with('/') {
        Cow::Borrowed(rest)
    } else {
        Cow::Owned(format!("/{rest}"))
    };
    Some((service, rest))
}

/// Answers up to this size (by `Content-Length`) are buffered; larger ones stream.
const SMALL_BODY: usize = 64 * 1024;

enum Failure {
    /// No instance registered or none left to try.
    NoInstance,
    Connect(String),
    Timeout,
}

fn from_entry(e: &Entry, stale: bool, slot: &LogSlot) -> Response {
    let mut resp = Response::new(Body::from(e.body.clone()));
    *resp.status_mut() = e.status;
    *resp.headers_mut() = e.headers.clone();
    let age = e.stored.elapsed().as_secs();
    if let Ok(v) = HeaderValue::from_str(&age.to_string()) {
        resp.headers_mut().insert(header::AGE, v);
    }
    let mark = if stale { "STALE" } else { "HIT" };
    resp.headers_mut()
        .insert("x-cache", HeaderValue::from_static(mark));
    if stale {
        resp.headers_mut().insert(
            header::WARNING,
            HeaderValue::from_static("110 - \"Response is Stale\""),
        );
    }
    slot.set_cache(mark);
    resp
}

/// Requests whose body streams to the backend instead of being read first: artifact
/// uploads, which may be far larger than `node.max_body_bytes`. They are POSTs, so they are
/// never retried, and the backend applies its own size limit.
fn streams_body(method: &Method, service: &str, rest: &str) -> bool {
    method == Method::POST && service == "ota" && rest.split('?').next() == Some("/api/v3/artifact")
}

/// The proxy as a handler: what the gateway's own router does not serve.
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let slot = req
        .extensions()
        .get::<LogSlot>()
        .cloned()
        .unwrap_or_default();
    let client = req.extensions().get::<Arc<crate::conn::Client>>().cloned();
    forward(&app, req, &slot, client.as_deref()).await
}

/// Every request that is not one of the gateway's own routes, to an instance of its service.
pub async fn forward(
    app: &App,
    req: Request,
    slot: &LogSlot,
    client: Option<&crate::conn::Client>,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let Some((service, rest)) = split(&parts.uri) else {
        return ApiError::not_found(format!("no route for {}", parts.uri.path())).into_response();
    };
    let known = app.upstreams.known(service);
    slot.set_route(known.as_ref());
    if known.is_none() {
        // A service the registry dropped (it stopped answering, or was stopped or turned
        // off): what was cached of it, up to `cache_stale_s` old, is served marked stale,
        // as for one that is down; a service never seen is not found.
        if parts.method == Method::GET
            && app.cache.enabled()
            && cache::cacheable(service, &rest)
            && let Some(e) = app.cache.stale(&format!("{service}{rest}"))
        {
            metrics::counter!(app.m.cache, "result" => "stale").increment(1);
            return from_entry(&e, true, slot);
        }
        return ApiError::not_found(format!("no service '{service}' behind this gateway"))
            .into_response();
    }
    // Bodies are read whole (bounded in size and time), so a request can be retried and a
    // slow sender never holds a backend connection; uploads of any size stream through.
    let rest = &*rest;
    let (body, mut streamed) = if streams_body(&parts.method, service, rest) {
        (Bytes::new(), Some(body))
    } else {
        match read_body(body, app.cfg.body_timeout_ms, app.max_body).await {
            Ok(b) => (b, None),
            Err(e) => return e.into_response(),
        }
    };
    let cache_key =
        (parts.method == Method::GET && app.cache.enabled() && cache::cacheable(service, rest))
            .then(|| format!("{service}{rest}"));
    if let Some(key) = &cache_key
        && let Some(e) = app.cache.fresh(key)
    {
        metrics::counter!(app.m.cache, "result" => "hit").increment(1);
        return from_entry(&e, false, slot);
    }
    let idempotent = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let timeout = app.timeout_for(parts.uri.path());
    let mut headers = std::mem::take(&mut parts.headers);
    strip(&mut headers);
    if !headers.contains_key(outpost_kit::request_id::HEADER)
        && let Some(id) = outpost_kit::request_id::current()
        && let Ok(v) = HeaderValue::from_str(&id)
    {
        headers.insert(outpost_kit::request_id::HEADER, v);
    }
    if let Some(c) = client {
        headers.insert("x-forwarded-for", c.ip.clone());
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    if let Some((v, m)) = client.and_then(|c| c.cert.as_ref()) {
        headers.insert(outpost_pki::vouch::HEADER, v.clone());
        headers.insert(outpost_pki::vouch::MAC_HEADER, m.clone());
    }

    // Upstream requests are in origin form; the Host header is the client's.
    let Ok(uri) = rest.parse::<http::Uri>() else {
        return ApiError::bad_request("invalid request path").into_response();
    };
    app.upstreams.count_request();
    // Another instance may be tried only for a request that may be repeated, and only
    // when there is one.
    let retry = idempotent && app.upstreams.choices(service) > 1;
    let mut tried: Vec<Arc<str>> = Vec::new();
    let result = loop {
        let Some(lease) = app.upstreams.pick(service, &tried) else {
            break Err(Failure::NoInstance);
        };
        slot.set_upstream(&lease.service_id);
        let out_body = match streamed.take() {
            Some(b) => b,
            None if body.is_empty() => Body::empty(),
            None => Body::from(body.clone()),
        };
        let mut out = http::Request::new(out_body);
        *out.method_mut() = parts.method.clone();
        // Only a request that may be retried needs its headers again.
        *out.headers_mut() = if retry {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        *out.uri_mut() = uri.clone();
        let started = Instant::now();
        let attempt = tokio::time::timeout(timeout, crate::pool::send(&lease.authority, out)).await;
        let secs = started.elapsed().as_secs_f64();
        let failure = match attempt {
            Ok(Ok((resp, conn))) => {
                app.upstreams.healthy(&lease);
                upstream_metrics(&app.m, &lease.service_id, secs, class(resp.status()));
                break Ok((resp, lease, conn));
            }
            Ok(Err(e)) => {
                upstream_metrics(&app.m, &lease.service_id, secs, "error");
                Failure::Connect(e)
            }
            Err(_) => {
                upstream_metrics(&app.m, &lease.service_id, secs, "timeout");
                Failure::Timeout
            }
        };
        app.upstreams.eject(&lease);
        // A request that may have reached the backend is retried only when repeating it
        // is harmless, and only within the retry budget.
        if !retry || !app.upstreams.allow_retry() {
            break Err(failure);
        }
        tried.push(Arc::clone(&lease.service_id));
        metrics::counter!(app.m.retries, "service" => service.to_string()).increment(1);
    };

    match result {
        Ok((resp, lease, conn)) => {
            let (rparts, rbody) = resp.into_parts();
            let mut rheaders = rparts.headers;
            strip(&mut rheaders);
            // A change to metadata made through this gateway: nothing it cached is served
            // fresh from now on, so the client that made it reads it back at once (changes
            // made elsewhere come as system events on the bus, a moment later).
            if !idempotent && service == "core-metadata" && rparts.status.is_success() {
                app.cache.invalidate();
            }
            if let Some(key) = cache_key {
                // Buffered (bounded) so it can be stored; on a 5xx a stale copy wins.
                let limited = http_body_util::Limited::new(rbody, cache::MAX_BODY);
                let bytes = match tokio::time::timeout(timeout, limited.collect()).await {
                    Ok(Ok(c)) => c.to_bytes(),
                    _ => {
                        drop(lease);
                        return stale_or(app, &key, slot, Failure::Timeout, service);
                    }
                };
                drop((conn, lease));
                if rparts.status.is_server_error()
                    && let Some(e) = app.cache.stale(&key)
                {
                    metrics::counter!(app.m.cache, "result" => "stale").increment(1);
                    return from_entry(&e, true, slot);
                }
                if rparts.status == StatusCode::OK {
                    app.cache
                        .put(key, rparts.status, rheaders.clone(), bytes.clone());
                }
                metrics::counter!(app.m.cache, "result" => "miss").increment(1);
                slot.set_cache("MISS");
                let mut out = Response::new(Body::from(bytes));
                *out.status_mut() = rparts.status;
                *out.headers_mut() = rheaders;
                out.headers_mut()
                    .insert("x-cache", HeaderValue::from_static("MISS"));
                return out;
            }
            // A small answer of known length is read whole first: the upstream connection
            // goes back to the pool at once and the client gets head and body in one write.
            let small = rheaders
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                .is_some_and(|n| n <= SMALL_BODY);
            if small {
                // Usually the body came with the head: no timer then.
                let collected = {
                    let mut collect = std::pin::pin!(rbody.collect());
                    match futures_util::FutureExt::now_or_never(&mut collect) {
                        Some(r) => Ok(r),
                        None => tokio::time::timeout(timeout, collect).await,
                    }
                };
                let bytes = match collected {
                    Ok(Ok(c)) => c.to_bytes(),
                    Ok(Err(e)) => {
                        return failure_response(Failure::Connect(e.to_string()), service);
                    }
                    Err(_) => return failure_response(Failure::Timeout, service),
                };
                // The connection is free again: back to the pool.
                drop((conn, lease));
                let mut out = Response::new(Body::from(bytes));
                *out.status_mut() = rparts.status;
                *out.headers_mut() = rheaders;
                return out;
            }
            // Streamed through; the lease (outstanding count) and the connection end with
            // the body.
            let body = Body::new(rbody.map_frame(move |f| {
                let _ = (&lease, &conn);
                f
            }));
            let mut out = Response::new(body);
            *out.status_mut() = rparts.status;
            *out.headers_mut() = rheaders;
            out
        }
        Err(f) => match cache_key {
            Some(key) => stale_or(app, &key, slot, f, service),
            None => failure_response(f, service),
        },
    }
}

fn stale_or(app: &App, key: &str, slot: &LogSlot, f: Failure, service: &str) -> Response {
    if let Some(e) = app.cache.stale(key) {
        metrics::counter!(app.m.cache, "result" => "stale").increment(1);
        return from_entry(&e, true, slot);
    }
    failure_response(f, service)
}

fn failure_response(f: Failure, service: &str) -> Response {
    match f {
        Failure::NoInstance => {
            ApiError::unavailable(format!("no instance of {service} is available")).into_response()
        }
        Failure::Connect(e) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("{service} did not answer: {e}"),
        )
        .into_response(),
        Failure::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{service} did not answer in time"),
        )
        .into_response(),
    }
}

/// Reads a request body whole, within `max` bytes and `timeout_ms`.
pub async fn read_body(body: Body, timeout_ms: u64, max: usize) -> Result<Bytes, ApiError> {
    use hyper::body::Body as _;
    // Most requests (GETs) have no body: no timer, no collecting.
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(Duration::from_millis(timeout_ms), limited.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than {max} bytes"),
                ))
            } else {
                Err(ApiError::bad_request(format!(
                    "cannot read the request body: {e}"
                )))
            }
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body was not sent in time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_service_and_path() {
        let u: http::Uri = "/core-data/api/v3/event/all?limit=5".parse().unwrap();
        assert_eq!(
            split(&u),
            Some(("core-data", "/api/v3/event/all?limit=5".into()))
        );
        for (path, rest) in [
            ("/core-data", "/"),
            ("/core-data/", "/"),
            ("/core-data?x=1", "/?x=1"),
            ("/core-data/a?b=../c", "/a?b=../c"),
        ] {
            let u: http::Uri = path.parse().unwrap();
            assert_eq!(split(&u), Some(("core-data", rest.into())), "{path}");
        }
        let u: http::Uri = "/core-data/api/../../etc".parse().unwrap();
        assert_eq!(split(&u), None);
        let u: http::Uri = "/core-data/./x?y".parse().unwrap();
        assert_eq!(split(&u), None);
        let u: http::Uri = "/".parse().unwrap();
        assert_eq!(split(&u), None);
    }

    #[test]
    fn strips_hop_by_hop_and_credentials() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("authorization", "Bearer t".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }
}
