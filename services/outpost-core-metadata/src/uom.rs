//! Units of measure: the built-in list, or an operator's file in EdgeX's shape.

use std::path::Path;

use outpost_contracts::metadata::UnitsOfMeasure;

const BUILT_IN: &str = include_str!("../res/uom.yaml");

/// Loads the units from `file` (YAML, JSON or TOML by extension) or the built-in list.
pub fn load(file: Option<&Path>) -> anyhow::Result<UnitsOfMeasure> {
    let Some(path) = file else {
        return parse_yaml(BUILT_IN);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read units of measure {}: {e}", path.display()))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        Some("json") => {
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        _ => parse_yaml(&text),
    }
}

fn parse_yaml(text: &str) -> anyhow::Result<UnitsOfMeasure> {
    serde_norway::from_str(text).map_err(|e| anyhow::anyhow!("units of measure: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn built_in_list_parses() {
        let u = super::load(None).unwrap();
        assert!(u.contains("C"));
        assert!(u.contains("kWh"));
        assert!(!u.contains("furlongs per fortnight"));
    }
}
