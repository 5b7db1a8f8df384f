//! Live data for the console, as server-sent events authorised like every read:
//! `GET /api/v3/stream/device/{name}` streams the device's readings with a simple value
//! (`event: reading`, the reading as JSON); `GET /api/v3/stream/node` the node's alerts
//! (`event: alert`) and system events (`event: system`).
//!
//! One subscription per kind on the bus feeds every stream, taken when the first stream of
//! that kind opens; a stream's first event, `following`, says that its subscriptions are
//! in place, so what the bus carries from then on reaches it. Streams read from a bounded broadcast channel: a browser that falls behind
//! skips what it missed (it is told how many, `event: lagged`) and never slows the bus or
//! another stream. A stream ends when the service stops, and after an access token's life
//! (the page opens the next one with its current token, so access is checked again).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::StreamExt as _;
use outpost_kit::error::Path;
use outpost_kit::{Context, Shutdown};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

/// Readings held for streams that fall behind.
const BACKLOG: usize = 4096;

/// Node events held for streams that fall behind.
const NODE_BACKLOG: usize = 256;

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

/// One node event (an alert, a system event), serialised once for every stream.
#[derive(Debug, Clone)]
pub struct NodeItem {
    /// The SSE event name: `alert` or `system`.
    pub kind: &'static str,
    pub json: Arc<str>,
}

/// What a bus feed does with each message it gets.
type Handle<'a> = &'a (dyn Fn(&outpost_bus::Bus, &outpost_bus::Delivery) + Send + Sync);

/// The readings and node events on their way to streams.
pub struct Hub {
    tx: broadcast::Sender<Item>,
    /// Set once a reading stream has opened.
    wanted: watch::Sender<bool>,
    node_tx: broadcast::Sender<NodeItem>,
    /// Set once a node stream has opened.
    node_wanted: watch::Sender<bool>,
    /// Whether each feed (readings, alerts, system events) is subscribed on the bus now.
    following: [watch::Sender<bool>; 3],
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
            wanted: watch::Sender::new(false),
            node_tx: broadcast::channel(NODE_BACKLOG).0,
            node_wanted: watch::Sender::new(false),
            following: std::array::from_fn(|_| watch::Sender::new(false)),
            stop,
            max_age,
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Item> {
        let rx = self.tx.subscribe();
        self.wanted.send_replace(true);
        rx
    }

    fn subscribe_node(&self) -> broadcast::Receiver<NodeItem> {
        let rx = self.node_tx.subscribe();
        self.node_wanted.send_replace(true);
        rx
    }

    /// Feeds the streams from the bus until `stop`: device events once a reading stream
    /// wants them, alerts and system events once a node stream does.
    pub async fn run(self: Arc<Self>, ctx: Context, stop: Shutdown) {
        // One connection to the bus for every feed, made when the first stream opens.
        let (mut readings_wanted, mut node_wanted) =
            (self.wanted.subscribe(), self.node_wanted.subscribe());
        tokio::select! {
            () = stop.wait() => return,
            _ = readings_wanted.wait_for(|w| *w) => {}
            _ = node_wanted.wait_for(|w| *w) => {}
        }
        let link = outpost_bus::Link::start(&ctx);
        let base = ctx.common.bus.base_topic.clone();
        let readings = |bus: &outpost_bus::Bus, d: &outpost_bus::Delivery| self.reading(bus, d);
        let alerts = |bus: &outpost_bus::Bus, d: &outpost_bus::Delivery| {
            self.node::<outpost_contracts::export::Alert>(bus, d, "alert");
        };
        let system = |bus: &outpost_bus::Bus, d: &outpost_bus::Delivery| {
            self.node::<outpost_contracts::system_event::SystemEvent>(bus, d, "system");
        };
        let devices = outpost_contracts::topics::device_events(&base);
        let alerts_filter = format!("{}#", outpost_contracts::topics::alerts_prefix(&base));
        let system_filter = outpost_contracts::topics::all_system_events(&base);
        let [f_readings, f_alerts, f_system] = &self.following;
        tokio::join!(
            follow(
                &link,
                &stop,
                (&self.wanted, f_readings),
                &devices,
                &readings
            ),
            follow(
                &link,
                &stop,
                (&self.node_wanted, f_alerts),
                &alerts_filter,
                &alerts
            ),
            follow(
                &link,
                &stop,
                (&self.node_wanted, f_system),
                &system_filter,
                &system
            ),
        );
    }

    /// A device event's simple readings, to the reading streams.
    fn reading(&self, bus: &outpost_bus::Bus, d: &outpost_bus::Delivery) {
        let Some(env) = bus.decode_event(d) else {
            return;
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

    /// An alert or a system event, as it is, to the node streams.
    fn node<T: serde::de::DeserializeOwned + Serialize>(
        &self,
        bus: &outpost_bus::Bus,
        d: &outpost_bus::Delivery,
        kind: &'static str,
    ) {
        let Some(env) = bus.decode::<T>(d) else {
            return;
        };
        if let Ok(json) = serde_json::to_string(&env.payload) {
            let _ = self.node_tx.send(NodeItem {
                kind,
                json: json.into(),
            });
        }
    }
}

/// Follows `filter` on the bus until `stop`, from when `wanted` is first set, and again
/// after the bus came back, saying in `following` whether it is subscribed; each message
/// goes to `handle`.
async fn follow(
    link: &outpost_bus::Link,
    stop: &Shutdown,
    (wanted, following): (&watch::Sender<bool>, &watch::Sender<bool>),
    filter: &str,
    handle: Handle<'_>,
) {
    let mut wanted = wanted.subscribe();
    tokio::select! {
        () = stop.wait() => return,
        _ = wanted.wait_for(|w| *w) => {}
    }
    loop {
        let bus = tokio::select! {
            () = stop.wait() => return,
            b = link.connected() => b,
        };
        let mut rx = match bus.subscribe(filter).await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(error = %e, filter, "cannot follow the bus for live streams; will retry");
                tokio::select! {
                    () = stop.wait() => return,
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                }
            }
        };
        following.send_replace(true);
        loop {
            let d = tokio::select! {
                () = stop.wait() => return,
                d = rx.recv() => d,
            };
            let Some(d) = d else {
                following.send_replace(false);
                // The subscription ended (the bus went away): taken again once it is back.
                tokio::select! {
                    () = stop.wait() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                break;
            };
            handle(&bus, &d);
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
    let ready = app.live.ready(&[0]);
    Sse::new(until_end(&app.live, ready.chain(stream))).keep_alive(KeepAlive::default())
}

/// `GET /api/v3/stream/node`: alerts (`event: alert`, as rules raises them) and system
/// events (`event: system`: devices, profiles and services added, changed or removed).
pub async fn node_stream(
    State(app): State<Arc<crate::app::App>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let rx = app.live.subscribe_node();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(item) => Some((Ok(Event::default().event(item.kind).data(&*item.json)), rx)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                Some((Ok(Event::default().event("lagged").data(n.to_string())), rx))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    let ready = app.live.ready(&[1, 2]);
    Sse::new(until_end(&app.live, ready.chain(stream))).keep_alive(KeepAlive::default())
}

impl Hub {
    /// A stream's first event, `following`, once the feeds it reads (indexes into
    /// `following`) are subscribed on the bus: from then on nothing the bus carries is
    /// missed (until the bus goes away, when the feed subscribes again).
    fn ready(
        &self,
        feeds: &[usize],
    ) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + use<> {
        let mut watches: Vec<_> = feeds
            .iter()
            .filter_map(|&i| self.following.get(i))
            .map(|f| f.subscribe())
            .collect();
        futures_util::stream::once(async move {
            for w in &mut watches {
                // A closed channel means the service is stopping; the stream ends anyway.
                let _ = w.wait_for(|f| *f).await;
            }
            Ok(Event::default().event("following").data("1"))
        })
    }
}

/// `stream`, ended when the service stops or after an access token's life.
fn until_end<S: futures_util::Stream>(
    hub: &Hub,
    stream: S,
) -> futures_util::stream::TakeUntil<S, impl std::future::Future<Output = ()> + use<S>> {
    let (stop, max_age) = (hub.stop.clone(), hub.max_age);
    let end = async move {
        tokio::select! {
            () = stop.wait() => {}
            () = tokio::time::sleep(max_age) => {}
        }
    };
    stream.take_until(end)
}
