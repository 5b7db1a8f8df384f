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
