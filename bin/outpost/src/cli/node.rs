//! `outpost services`: the registry's view of the node.

use outpost_contracts::registry::MultiRegistrationsResponse;

use super::client::Client;
use super::table::{ago, show_table};

pub async fn services(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.get(outpost_core_keeper::SERVICE, "/registry/all").await?;
    show_table(
        v,
        json,
        &["SERVICE", "STATUS", "ADDRESS", "CHECK", "LAST SEEN"],
        |all: MultiRegistrationsResponse| {
            all.registrations
                .into_iter()
                .map(|r| {
                    vec![
                        r.service_id,
                        r.status.as_str().to_string(),
                        format!("{}:{}", r.host, r.port),
                        r.health_check.kind,
                        ago(r.last_connected),
                    ]
                })
                .collect()
        },
    )
}
