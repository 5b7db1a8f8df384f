//! `[rules]`: the service's section of the node configuration, with the pipelines it
//! runs from the start.

use std::collections::HashSet;

use outpost_kit::config::{Problems, Validate};
use serde::{Deserialize, Serialize};

use crate::pipeline::PipelineSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    pub port: u16,
    /// How long after its end (by the clock) a window is closed when no later reading
    /// closes it.
    pub lateness_ms: u64,
    pub pipelines: Vec<PipelineSpec>,
    /// Where instances take turns (`backend = "postgres"`): one instance runs the
    /// pipelines, the others stand by and the first to take the lease runs them when it
    /// dies. Default: no turns, the instance runs at once.
    pub standby: outpost_kit::pg::StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 59720,
            lateness_ms: 2000,
            pipelines: Vec::new(),
            standby: outpost_kit::pg::StorageConfig::default(),
        }
    }
}

outpost_kit::service_config!(Config, enabled);

impl Validate for Config {
    fn validate(&self, p: &mut Problems) {
        for problem in self.standby.problems() {
            p.check(false, "rules.standby", problem);
        }
        let mut names = HashSet::new();
        for spec in &self.pipelines {
            if let Err(e) = spec.check() {
                p.push("rules.pipelines", e);
            }
            p.check(
                names.insert(spec.name.clone()),
                "rules.pipelines",
                format!("pipeline {} is defined twice", spec.name),
            );
        }
    }
}
