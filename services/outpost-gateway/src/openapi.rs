//! The API documents the gateway serves: the EdgeX v3 documents of the core services (as
//! published by EdgeX, Apache-2.0, under `docs/openapi/edgex/`), the device services'
//! document and the gateway's own, built into the binary. Each is served with its server
//! URL set to its route on this gateway, so a client generated from it works through the
//! gateway unchanged.

/// One served document.
pub struct Doc {
    /// File name under `/api/v3/openapi/`.
    pub name: &'static str,
    /// The services (gateway routes) it describes.
    pub services: &'static [&'static str],
    text: &'static str,
    /// The server URL in the published document, replaced by the gateway route.
    published_server: Option<&'static str>,
}

macro_rules! edgex {
    ($service:literal, $port:literal) => {
        Doc {
            name: concat!($service, ".yaml"),
            services: &[$service],
            text: include_str!(concat!("../../../docs/openapi/edgex/", $service, ".yaml")),
            published_server: Some(concat!("http://localhost:", $port, "/api/v3")),
        }
    };
}

pub const DOCS: &[Doc] = &[
    Doc {
        name: "gateway.yaml",
        services: &["gateway"],
        text: include_str!("../../../docs/openapi/gateway.yaml"),
        published_server: None,
    },
    edgex!("core-data", "59880"),
    edgex!("core-metadata", "59881"),
    edgex!("core-command", "59882"),
    edgex!("core-keeper", "59890"),
    edgex!("support-notifications", "59860"),
    edgex!("support-scheduler", "59863"),
    Doc {
        name: "device-service.yaml",
        services: &[
            "device-virtual",
            "device-modbus",
            "device-mqtt",
            "device-rest",
        ],
        text: include_str!("../../../docs/openapi/device-service.yaml"),
        published_server: None,
    },
    Doc {
        name: "rules.yaml",
        services: &["rules"],
        text: include_str!("../../../docs/openapi/rules.yaml"),
        published_server: None,
    },
    Doc {
        name: "export.yaml",
        services: &["export"],
        text: include_str!("../../../docs/openapi/export.yaml"),
        published_server: None,
    },
    Doc {
        name: "ota.yaml",
        services: &["ota"],
        text: include_str!("../../../docs/openapi/ota.yaml"),
        published_server: None,
    },
];

impl Doc {
    /// The document as served.
    pub fn served(&self) -> String {
        match self.published_server {
            Some(from) => {
                let to = format!("/{}/api/v3", self.services[0]);
                format!(
                    "# EdgeX Foundry's API document (Apache-2.0), served by the Outpost gateway\n\
                     # with its server set to the gateway route {to}.\n{}",
                    self.text.replacen(from, &to, 1)
                )
            }
            None => self.text.to_string(),
        }
    }
}

pub fn find(name: &str) -> Option<&'static Doc> {
    DOCS.iter().find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_document_points_at_the_gateway() {
        for d in DOCS {
            let s = d.served();
            assert!(s.contains("openapi: 3."), "{}", d.name);
            assert!(
                // The servers section is near the top; examples further down may name ports.
                !s.lines().take(14).any(|l| l.contains("http://localhost:")),
                "{} still names a port",
                d.name
            );
            assert!(s.contains("paths:"), "{}", d.name);
        }
        assert!(
            find("core-data.yaml")
                .unwrap()
                .served()
                .contains("url: /core-data/api/v3")
        );
        assert!(find("../etc/passwd").is_none());
    }
}
