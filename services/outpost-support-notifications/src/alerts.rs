//! Rules alerts become notifications: a durable consumer of `<base>/alerts/#` stores each
//! alert as a notification (category `rules-alert`) before acknowledging it, so the
//! subscriptions to that category receive every alert a pipeline raises, across restarts
//! of either service. An alert delivered twice is stored once (its id is the
//! notification's).

use std::sync::Arc;
use std::time::Duration;

use outpost_bus::{Consumer, Options};
use outpost_contracts::export::Alert;
use outpost_contracts::topics;
use outpost_kit::{Context, Shutdown};

use crate::deliver::Delivery;
use crate::model::Notification;
use crate::store::StoreError;

/// The category of notifications raised by rules alerts.
pub const CATEGORY: &str = "rules-alert";
/// The persistent session of the consumer.
pub const SESSION: &str = "support-notifications-alerts";

/// The notification an alert raises.
pub fn notification(a: &Alert) -> Notification {
    let severity = match a.severity.as_str() {
        "critical" => "CRITICAL",
        "warning" => "NORMAL",
        _ => "MINOR",
    };
    let content = if a.message.is_empty() {
        format!(
            "{}/{}: {} (value {})",
            a.device_name, a.resource_name, a.condition, a.value
        )
    } else {
        format!(
            "{} ({}/{}: {}, value {})",
            a.message, a.device_name, a.resource_name, a.condition, a.value
        )
    };
    Notification {
        id: if uuid::Uuid::parse_str(&a.id).is_ok() {
            a.id.clone()
        } else {
            String::new()
        },
        // No labels: a subscription receives a labelled notification only when it holds
        // every label (EdgeX's rule), so a subscription to the category gets them all.
        category: CATEGORY.into(),
        content,
        content_type: "text/plain".into(),
        description: format!("alert of rules pipeline {}", a.pipeline),
        sender: "rules".into(),
        severity: severity.into(),
        ..Notification::default()
    }
}

/// Consumes alerts until `stop`.
pub async fn consume(ctx: Context, delivery: Arc<Delivery>, stop: Shutdown) {
    let filter = format!("{}#", topics::alerts_prefix(&ctx.common.bus.base_topic));
    let Some(mut consumer) =
        Consumer::start(&ctx, Options::durable(SESSION, 256), &[filter], &stop).await
    else {
        return;
    };
    let bus = consumer.bus().clone();
    while let Some(d) = consumer.recv(&stop).await {
        let Some(env) = bus.decode::<Alert>(&d) else {
            // Counted and logged by the bus; nothing to keep.
            d.ack();
            continue;
        };
        match delivery.accept(notification(&env.payload)).await {
            Ok(_) | Err(StoreError::Duplicate(_)) => d.ack(),
            Err(e) => {
                // Left with the broker, delivered again.
                tracing::warn!(error = %e, "cannot store an alert's notification; trying again");
                d.abandon();
                tokio::select! {
                    () = stop.wait() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    consumer.close().await;
}
