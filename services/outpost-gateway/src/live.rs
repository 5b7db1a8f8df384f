//! Live data for the console, as server-sent events authorised like every read:
//! `GET /api/v3/stream/device/{name}` streams the device's readings with a simple value
//! (`event: reading`, the reading as JSON); `GET /api/v3/stream/node` the node's alerts
//! (`event: alert`) and system events (`event: system`).
//!
//! One subscription per kind on the bus feeds every stream, taken when the first stream of
//! that kind opens; a stream's first event, `following`, says that its subscriptions are
//! in place, so what the bus carries from then on reaches it. When the bus comes back after
//! a loss, the streams end and the page opens them again: what it carried meanwhile was
//! missed, and the page says so rather than seem live. Streams read from a bounded broadcast channel: a browser that falls behind
//! skips what it missed (it is told how many, `event: lagged`) and never slows the bus or
//! another stream. A stream ends when the service stops, and after an access token's life
//! (the page opens the next one with its current token, so access is checked again).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::StreamExt as _;
use outpost_kit::backoff::Backoff;
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

/// The bus feeds behind the streams.
#[derive(Debug, Clone, Copy)]
enum Feed {
    Readings = 0,
    Alerts = 1,
    System = 2,
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
    /// Each feed's subscription on the bus ([`Feed`] indexes): 0 while there is none, then
    /// a number that changes each time the feed subscribes again.
    following: [watch::Sender<u64>; 3],
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
            following: std::array::from_fn(|_| watch::Sender::new(0)),
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
        let f = |feed: Feed| &self.following[feed as usize];
        let (f_readings, f_alerts, f_system) =
            (f(Feed::Readings), f(Feed::Alerts), f(Feed::System));
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

/// Follows `filter` on the bus until `stop`, from when `wanted` is first set; `following`
/// counts its subscriptions (0: none), and counts again when the bus came back after a
/// loss, since what it carried meanwhile was missed. Each message goes to `handle`.
async fn follow(
    link: &outpost_bus::Link,
    stop: &Shutdown,
    (wanted, following): (&watch::Sender<bool>, &watch::Sender<u64>),
    filter: &str,
    handle: Handle<'_>,
) {
    let mut wanted = wanted.subscribe();
    tokio::select! {
        () = stop.wait() => return,
        _ = wanted.wait_for(|w| *w) => {}
    }
    let bus = tokio::select! {
        () = stop.wait() => return,
        b = link.connected() => b,
    };
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut rx = loop {
        match bus.subscribe(filter).await {
            Ok(rx) => break rx,
            Err(e) => {
                // Refused (an ACL, say) or not connected: said once, then every tenth try.
                if backoff.attempts().is_multiple_of(10) {
                    tracing::warn!(error = %e, filter, "cannot follow the bus for live streams; will retry");
                }
                tokio::select! {
                    () = stop.wait() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    // The subscription stays with the connection: the bus restores it after a loss.
    let mut connections = bus.connections();
    connections.mark_unchanged();
    following.send_modify(|n| *n += 1);
    loop {
        tokio::select! {
            () = stop.wait() => break,
            changed = connections.changed() => {
                if changed.is_err() {
                    break;
                }
                // Back after a loss: streams reading this feed end, and the pages open
                // them again (told `following` anew), instead of missing readings unawares.
                following.send_modify(|n| *n += 1);
            }
            d = rx.recv() => match d {
                Some(d) => handle(&bus, &d),
                // The connection closed: the service is stopping.
                None => break,
            },
        }
    }
    following.send_replace(0);
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
    Sse::new(live(&app.live, &[Feed::Readings], stream)).keep_alive(KeepAlive::default())
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
    Sse::new(live(&app.live, &[Feed::Alerts, Feed::System], stream))
        .keep_alive(KeepAlive::default())
}

/// A stream of `feeds`: first `following`, once each feed is subscribed on the bus (from
/// then on nothing it carries is missed), then `stream`'s events, until the service stops,
/// an access token's life has passed, or a feed subscribed again after a loss of the bus
/// (the page then opens a new stream).
fn live<S>(
    hub: &Hub,
    feeds: &[Feed],
    stream: S,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + use<S>
where
    S: futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut watches: Vec<watch::Receiver<u64>> = feeds
        .iter()
        .map(|&f| hub.following[f as usize].subscribe())
        .collect();
    let (stop, max_age) = (hub.stop.clone(), hub.max_age);
    let begun = async move {
        let mut seen = Vec::with_capacity(watches.len());
        for w in &mut watches {
            // A closed channel (the service is stopping) counts as 0: the stream ends below.
            seen.push(w.wait_for(|n| *n != 0).await.map_or(0, |n| *n));
        }
        let end = async move {
            let again = watches.iter_mut().zip(seen).map(|(w, seen)| {
                Box::pin(async move {
                    let _ = w.wait_for(|n| *n != seen).await;
                })
            });
            tokio::select! {
                () = stop.wait() => {}
                () = tokio::time::sleep(max_age) => {}
                _ = futures_util::future::select_all(again) => {}
            }
        };
        let following = Event::default().event("following").data("1");
        futures_util::stream::once(async move { Ok(following) }).chain(stream.take_until(end))
    };
    futures_util::stream::once(begun).flatten()
}
