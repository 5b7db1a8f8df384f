//! Live readings for the console: `GET /api/v3/stream/device/{name}` streams the device's
//! readings with a simple value as server-sent events (`event: reading`, the reading as
//! JSON), authorised like every read.
//!
//! One subscription to device events on the bus feeds every stream, taken when the first
//! stream opens. Streams read from a bounded broadcast channel: a browser that falls behind
//! skips what it missed (it is told how many, `event: lagged`) and never slows the bus or
//! another stream. A stream ends when the service stops, and after an access token's life
//! (the page opens the next one with its current token, so access is checked again).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use outpost_kit::error::Path;
use outpost_kit::{Context, Shutdown};
use serde::Serialize;
use tokio::sync::{Notify, broadcast};

/// Readings held for streams that fall behind.
const BACKLOG: usize = 4096;

/// A reading as a stream carries it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LiveReading<'a> {
    device_name: &'a str,
    resource_name: &'a str,
    value_type: &'a str,
    value: &'a str,
    origin: i64,
}

/// One device's reading, serialised once for every stream.
#[derive(Debug, Clone)]
pub struct Item {
    pub device: Arc<str>,
    pub json: Arc<str>,
}

/// The readings on their way to streams.
pub struct Hub {
    tx: broadcast::Sender<Item>,
    wanted: Notify,
    /// Ends every stream when the service stops.
    stop: Shutdown,
    /// How long one stream lasts: an access token's life. The page opens the next with the
    /// token it has then, so a user whose access ended (logged out, password changed,
    /// removed) loses the stream within that time.
    max_age: Duration,
}

impl Hub {
    pub fn new(stop: Shutdown, max_age: Duration) -> Arc<Self> {
        Arc::new(Self {
            tx: broadcast::channel(BACKLOG).0,
            wanted: Notify::new(),
            stop,
            max_age,
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Item> {
        let rx = self.tx.subscribe();
        self.wanted.notify_one();
        rx
    }

    /// Feeds the streams from the bus until `stop`: subscribes to device events once a
    /// stream wants them, and again after the bus came back.
    pub async fn run(self: Arc<Self>, ctx: Context, stop: Shutdown) {
        tokio::select! {
            () = stop.wait() => return,
            () = self.wanted.notified() => {}
        }
        let link = outpost_bus::Link::start(&ctx);
        let filter = outpost_contracts::topics::device_events(&ctx.common.bus.base_topic);
        loop {
            let bus = tokio::select! {
                () = stop.wait() => return,
                b = link.connected() => b,
            };
            let mut rx = match bus.subscribe(&filter).await {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow device events for live readings; will retry");
                    tokio::select! {
                        () = stop.wait() => return,
                        () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
            };
            loop {
                let d = tokio::select! {
                    () = stop.wait() => return,
                    d = rx.recv() => d,
                };
                let Some(d) = d else {
                    // The subscription ended (the bus went away): taken again once it is back.
                    tokio::select! {
                        () = stop.wait() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    break;
                };
                let Some(env) = bus.decode_event(&d) else {
                    continue;
                };
                let ev = &env.payload.event;
                let device: Arc<str> = ev.device_name.as_str().into();
                for r in &ev.readings {
                    // Simple values only: what a chart or a list shows.
                    let outpost_contracts::event::ReadingValue::Simple(value) = &r.value else {
                        continue;
                    };
                    let reading = LiveReading {
                        device_name: &ev.device_name,
                        resource_name: &r.resource_name,
                        value_type: r.value_type.as_str(),
                        value,
                        origin: if r.origin != 0 { r.origin } else { ev.origin },
                    };
                    if let Ok(json) = serde_json::to_string(&reading) {
                        // No stream open: nothing to do.
                        let _ = self.tx.send(Item {
                            device: Arc::clone(&device),
                            json: json.into(),
                        });
                    }
                }
            }
        }
    }
}

/// `GET /api/v3/stream/device/{name}`.
pub async fn stream(
    State(app): State<Arc<crate::app::App>>,
    Path(name): Path<String>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let rx = app.live.subscribe();
    let name: Arc<str> = name.into();
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let name = Arc::clone(&name);
        async move {
            loop {
                match rx.recv().await {
                    Ok(item) if *item.device == *name => {
                        return Some((Ok(Event::default().event("reading").data(&*item.json)), rx));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Some((
                            Ok(Event::default().event("lagged").data(n.to_string())),
                            rx,
                        ));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    let (stop, max_age) = (app.live.stop.clone(), app.live.max_age);
    let end = async move {
        tokio::select! {
            () = stop.wait() => {}
            () = tokio::time::sleep(max_age) => {}
        }
    };
    Sse::new(futures_util::StreamExt::take_until(stream, end)).keep_alive(KeepAlive::default())
}
