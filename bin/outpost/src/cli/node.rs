//! `outpost services`: the registry's view of the node.

use outpost_contracts::registry::MultiRegistrationsResponse;

use super::client::Client;
use super::table::{ago, show_table};

/// `outpost services`: every registered service, its status and where it answers. A
/// service with sockets of its own (the gateway's HTTPS entry point, the broker's MQTT)
/// lists them, read from this node's configuration; its registered port is then only its
/// status port.
pub async fn services(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.get(outpost_core_keeper::SERVICE, "/registry/all").await?;
    let this_node = c.gateway().map_or(true, |g| g.is_this_nodes());
    let listens = |service: &str| -> Vec<String> {
        crate::services::by_name(service)
            .filter(|_| this_node)
            .map(|s| s.section(&c.cfg).listeners())
            .unwrap_or_default()
            .iter()
            .map(|l| format!("{} :{}", l.scheme, l.addr.port()))
            .collect()
    };
    show_table(
        v,
        json,
        &[
            "SERVICE",
            "STATUS",
            "ADDRESS",
            "LISTENS",
            "CHECK",
            "LAST SEEN",
        ],
        |all: MultiRegistrationsResponse| {
            all.registrations
                .into_iter()
                .map(|r| {
                    let own = listens(&r.service_id);
                    let address = format!("{}:{}", r.host, r.port);
                    vec![
                        r.service_id,
                        r.status.as_str().to_string(),
                        if own.is_empty() {
                            address
                        } else {
                            format!("{address} (status)")
                        },
                        if own.is_empty() {
                            "-".to_string()
                        } else {
                            own.join(", ")
                        },
                        r.health_check.kind,
                        ago(r.last_connected),
                    ]
                })
                .collect()
        },
    )
}

/// `outpost status`: what the start banner said, at any time: whether the node runs on
/// this data dir, its services' state from the registry, the way in and what to try.
pub async fn status(
    cfg: &crate::config::NodeConfig,
    data_dir: &std::path::Path,
    remote: bool,
    c: anyhow::Result<Client>,
) -> anyhow::Result<()> {
    // A node elsewhere (--gateway) is judged by its registry alone.
    if !remote {
        match crate::session::node_running(data_dir) {
            Some(true) => println!("Node: running on {}", data_dir.display()),
            Some(false) => {
                println!(
                    "Node: not running on {} (start it with `outpost up`)",
                    data_dir.display()
                );
                return Err(super::client::NotFound(format!(
                    "no Outpost node is running on {}",
                    data_dir.display()
                ))
                .into());
            }
            None => println!(
                "Node: this user cannot tell whether one runs on {} (run as root or the \
                 node's user)",
                data_dir.display()
            ),
        }
    }
    match c {
        Ok(c) => match c.get(outpost_core_keeper::SERVICE, "/registry/all").await {
            Ok(v) => {
                let all: MultiRegistrationsResponse = super::client::decode(v)?;
                let down: Vec<&str> = all
                    .registrations
                    .iter()
                    .filter(|r| r.status.as_str() != "UP")
                    .map(|r| r.service_id.as_str())
                    .collect();
                let up = all.registrations.len() - down.len();
                if down.is_empty() {
                    println!("Services: all {up} UP (outpost services)");
                } else {
                    println!("Services: {up} UP; not UP: {}", down.join(", "));
                }
            }
            Err(e) => println!("Services: the registry does not answer ({e:#})"),
        },
        Err(e) => println!("Services: unknown ({e:#})"),
    }
    if remote {
        return Ok(());
    }
    let enabled = crate::config::SERVICES
        .iter()
        .filter(|s| s.section(cfg).enabled());
    let found = crate::session::locate_node(crate::config::default_data_dir()) == data_dir;
    for line in crate::supervisor::next_steps(cfg, data_dir, found, None, enabled) {
        println!("{line}");
    }
    Ok(())
}

/// `outpost probe <service>`: whether the service of this node (or container) answers its
/// `ping` on this host, trusting the node CA; for container and Kubernetes health checks,
/// where no other tool is at hand. Needs no credentials: `ping` is open.
pub async fn probe(
    cfg: &crate::config::NodeConfig,
    data_dir: &std::path::Path,
    svc: crate::config::Service,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .no_proxy();
    if cfg.security.internal_tls {
        let ca_file = data_dir.join("tls/ca.pem");
        let ca = std::fs::read_to_string(&ca_file)
            .with_context(|| format!("cannot read the node CA {}", ca_file.display()))?;
        let mut tls = outpost_pki::client_config(&ca, None)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        http = http.tls_backend_preconfigured(tls);
    }
    let url = format!(
        "{}://127.0.0.1:{}/api/v3/ping",
        cfg.scheme(),
        svc.section(cfg).port()
    );
    let r = http
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{} does not answer at {url}", svc.name()))?;
    if !r.status().is_success() {
        anyhow::bail!("{} answers {} at {url}", svc.name(), r.status());
    }
    println!("{} is up", svc.name());
    Ok(())
}
