//! The broker's one event handler: what runs before it routes (and acknowledges) a publish,
//! and after a client subscribed.
//!
//! - A retained publish is committed to the broker's database first ([`store::Retained`]).
//! - A QoS 1/2 publish for a durable consumer is journaled first ([`Journal`]), when the
//!   journal is on.
//! - A subscription has the persistent sessions saved at once rather than at the next
//!   second's save.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mqtt5::broker::events::{
    BrokerEventHandler, ClientPublishEvent, ClientSubscribeEvent, PublishAction,
};
use tokio::sync::Notify;

use crate::journal::Journal;
use crate::store;

pub struct Hooks {
    pub retained: store::Retained,
    pub journal: Option<Arc<Journal>>,
    /// Notified after every subscription; the session saver waits on it.
    pub subscribed: Arc<Notify>,
}

impl BrokerEventHandler for Hooks {
    fn on_client_publish<'a>(
        &'a self,
        ev: ClientPublishEvent,
    ) -> Pin<Box<dyn Future<Output = PublishAction> + Send + 'a>> {
        Box::pin(async move {
            if ev.retain {
                self.retained.keep(&ev).await;
            }
            match &self.journal {
                Some(j) => j.on_client_publish(ev).await,
                None => PublishAction::Continue,
            }
        })
    }

    fn on_client_subscribe<'a>(
        &'a self,
        ev: ClientSubscribeEvent,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        if let Some(j) = &self.journal {
            j.subscribed(&ev.client_id);
        }
        self.subscribed.notify_one();
        Box::pin(async {})
    }
}
