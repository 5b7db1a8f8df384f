//! Units of measure: the built-in list, or an operator's file in EdgeX's shape.

use std::path::{Path, PathBuf};

use outpost_contracts::metadata::UnitsOfMeasure;

const BUILT_IN: &str = include_str!("../res/uom.yaml");

/// Why the units of measure cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum UomError {
    #[error("cannot read units of measure {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("units of measure {path} are not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Loads the units from `file` (YAML, JSON or TOML by extension) or the built-in list.
pub fn load(file: Option<&Path>) -> Result<UnitsOfMeasure, UomError> {
    let Some(path) = file else {
        return parse(Path::new("(built in)"), BUILT_IN, None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| UomError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, path.extension().and_then(|e| e.to_str()))
}

fn parse(path: &Path, text: &str, ext: Option<&str>) -> Result<UnitsOfMeasure, UomError> {
    let parsed: Result<UnitsOfMeasure, Box<dyn std::error::Error + Send + Sync>> = match ext {
        Some("toml") => toml::from_str(text).map_err(Into::into),
        Some("json") => serde_json::from_str(text).map_err(Into::into),
        _ => serde_norway::from_str(text).map_err(Into::into),
    };
    parsed.map_err(|source| UomError::Parse {
        path: path.to_path_buf(),
        source,
    })
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
