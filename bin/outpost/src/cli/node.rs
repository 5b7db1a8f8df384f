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
    json: bool,
) -> anyhow::Result<()> {
    let mut out = serde_json::Map::new();
    let mut lines = Vec::new();
    // A node elsewhere (--gateway) is judged by its registry alone.
    let running = if remote {
        None
    } else {
        let running = crate::session::node_running(data_dir);
        out.insert("dataDir".into(), data_dir.display().to_string().into());
        out.insert("running".into(), running.into());
        lines.push(match running {
            Some(true) => format!("Node: running on {}", data_dir.display()),
            Some(false) => format!(
                "Node: not running on {} (start it with `outpost up`)",
                data_dir.display()
            ),
            None => format!(
                "Node: this user cannot tell whether one runs on {} (run as root or the \
                 node's user)",
                data_dir.display()
            ),
        });
        running
    };
    if running != Some(false) {
        let registry = match c {
            Ok(c) => c
                .get(outpost_core_keeper::SERVICE, "/registry/all")
                .await
                .map_err(|e| format!("the registry does not answer ({e:#})"))
                .and_then(|v| {
                    super::client::decode::<MultiRegistrationsResponse>(v)
                        .map_err(|e| format!("{e:#}"))
                }),
            Err(e) => Err(format!("unknown ({e:#})")),
        };
        match registry {
            Ok(all) => {
                let (up, down): (Vec<_>, Vec<_>) = all
                    .registrations
                    .iter()
                    .partition(|r| r.status.as_str() == "UP");
                let names = |rs: Vec<&outpost_contracts::registry::Registration>| -> Vec<String> {
                    rs.into_iter().map(|r| r.service_id.clone()).collect()
                };
                let (up, down) = (names(up), names(down));
                lines.push(if down.is_empty() {
                    format!("Services: all {} UP (outpost services)", up.len())
                } else {
                    format!("Services: {} UP; not UP: {}", up.len(), down.join(", "))
                });
                out.insert("servicesUp".into(), up.into());
                out.insert("servicesNotUp".into(), down.into());
            }
            Err(e) => {
                lines.push(format!("Services: {e}"));
                out.insert("servicesError".into(), e.into());
            }
        }
    }
    if !remote && running != Some(false) {
        let enabled = || {
            crate::config::SERVICES
                .iter()
                .filter(|s| s.section(cfg).enabled())
        };
        if let Some(w) = crate::supervisor::way_in(cfg, data_dir, enabled()) {
            out.insert(
                "wayIn".into(),
                serde_json::json!({
                    "url": w.url,
                    "ca": w.ca.display().to_string(),
                    "user": "admin",
                    "passwordFile": w.password_file.display().to_string(),
                }),
            );
        }
        let found = crate::session::locate_node(crate::config::default_data_dir()) == data_dir;
        lines.extend(crate::supervisor::next_steps(
            cfg,
            data_dir,
            found,
            None,
            enabled(),
        ));
    }
    if json {
        super::table::print_json(&serde_json::Value::Object(out));
    } else {
        for l in &lines {
            println!("{l}");
        }
    }
    if running == Some(false) {
        return Err(super::client::NotFound(format!(
            "no Outpost node is running on {}",
            data_dir.display()
        ))
        .into());
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
