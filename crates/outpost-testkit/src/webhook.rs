//! An HTTP receiver for what the node sends out (notifications, scheduled calls): it
//! records each request's method, path and body, and answers 503 to the first `failing`
//! requests.

use std::sync::{Arc, Mutex};

use axum::http::{Method, StatusCode, Uri};

/// A running receiver; stopped when dropped.
pub struct Webhook {
    got: Arc<Mutex<Vec<(Method, String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    /// Listens on `port` of loopback.
    pub async fn start(port: u16, failing: u32) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(Mutex::new(failing));
        let app = {
            let got = Arc::clone(&got);
            axum::Router::new().fallback(move |method: Method, uri: Uri, body: String| {
                let (got, fail) = (Arc::clone(&got), Arc::clone(&fail));
                async move {
                    {
                        let mut f = fail
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if *f > 0 {
                            *f -= 1;
                            return (StatusCode::SERVICE_UNAVAILABLE, "not now");
                        }
                    }
                    got.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((method, uri.path().to_string(), body));
                    (StatusCode::OK, "thanks")
                }
            })
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the webhook");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { got, task }
    }

    /// `(path, body)` of each request taken, in order.
    pub fn got(&self) -> Vec<(String, String)> {
        self.requests()
            .into_iter()
            .map(|(_, p, b)| (p, b))
            .collect()
    }

    /// `(method, path, body)` of each request taken, in order.
    pub fn requests(&self) -> Vec<(Method, String, String)> {
        self.got
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}
