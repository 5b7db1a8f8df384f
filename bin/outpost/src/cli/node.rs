//! `outpost services`: the registry's view of the node.

use super::client::Client;
use super::table::{ago, print_json, s, table};

pub async fn services(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.get(outpost_core_keeper::SERVICE, "/registry/all").await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["registrations"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            vec![
                s(r, "serviceId"),
                s(r, "status"),
                format!("{}:{}", s(r, "host"), s(r, "port")),
                r["healthCheck"]["type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                ago(r["lastConnected"].as_i64().unwrap_or(0)),
            ]
        })
        .collect();
    table(
        &["SERVICE", "STATUS", "ADDRESS", "CHECK", "LAST SEEN"],
        &rows,
    );
    Ok(())
}
