//! The front of the gateway: what each request the listener accepted goes to. Its own
//! routes go through its router (request ID, access log, admission as middleware); every
//! other request is proxied by [`proxied`], which runs the same steps in one function on
//! the hot path.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use http::HeaderValue;

use crate::app::App;
use crate::observe::{LogSlot, Seen, record};
use crate::{admission, conn, proxy};

/// The gateway's app and its own routes, for the listener.
#[derive(Clone)]
pub struct Front {
    pub app: Arc<App>,
    pub router: Router,
}

impl conn::Dispatch for Front {
    fn own(&self, path: &str) -> Option<Router> {
        is_own(path).then(|| self.router.clone())
    }

    async fn proxy(&self, req: Request, client: Arc<conn::Client>) -> Response {
        proxied(Arc::clone(&self.app), req, client).await
    }

    fn vouch(&self, certificate_b64: &str) -> String {
        outpost_pki::vouch::mac(&self.app.cert_mac_key, certificate_b64)
    }

    fn housekeeping(&self) {
        crate::stats::flush_thread();
        crate::pool::sweep();
    }
}

/// Whether a path is one of the gateway's own routes (served by its router) rather than
/// proxied to a service.
pub fn is_own(path: &str) -> bool {
    path == "/"
        || path.starts_with("/api/")
        || path == "/ui"
        || path.starts_with("/ui/")
        || path == "/metrics"
}

/// A proxied request, start to end: request ID, admission, proxy, access log and metrics;
/// the same steps as the middleware around the gateway's own routes, in one function on
/// the hot path.
pub async fn proxied(app: Arc<App>, mut req: Request, client: Arc<conn::Client>) -> Response {
    use outpost_kit::request_id;
    let id: Arc<str> = match request_id::carried(req.headers()) {
        Some(id) => id.into(),
        None => request_id::mint_shared(),
    };
    // One copy of the ID for the header upstream and the one on the answer.
    let id_header =
        HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(id.as_bytes())).ok();
    if let Some(v) = &id_header {
        req.headers_mut().insert(request_id::HEADER, v.clone());
    }
    let mut resp = request_id::scope(Arc::clone(&id), async move {
        let slot = LogSlot::default();
        let seen = Seen::of(&req, Some(&client));
        let admitted = admission::admit(
            &app,
            req.method(),
            req.uri(),
            req.headers(),
            Some(client.addr),
            &slot,
        );
        // A refusal may come before the body was read (admission, no route, body limit):
        // the rest is read first, so the client's connection stays usable.
        let resp = outpost_kit::refused::finishing(req, |req| async {
            match admitted {
                Err(refused) => *refused,
                Ok(_) => proxy::forward(&app, req, &slot, Some(&client)).await,
            }
        })
        .await;
        record(&app, &seen, &slot, resp.status());
        resp
    })
    .await;
    if let Some(v) = id_header {
        resp.headers_mut().insert(request_id::HEADER, v);
    }
    resp
}
