//! Names of devices, profiles, services and resources.
//!
//! Names appear in URL paths and MQTT topics, so they must be non-blank and free of the
//! characters that would break either: `/` (path and topic separator), `#` and `+` (MQTT
//! wildcards) and control characters. They are at most [`MAX_LEN`] bytes.

/// Longest accepted name, in bytes.
pub const MAX_LEN: usize = 255;

/// Checks `value` as a name; `field` names it in the error.
pub fn check(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > MAX_LEN {
        return Err(format!("{field} is longer than {MAX_LEN} bytes"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| matches!(c, '/' | '#' | '+') || c.is_control())
    {
        return Err(format!(
            "{field} '{value}' contains the reserved character {c:?}"
        ));
    }
    Ok(())
}

/// Checks a provision-watcher identifier pattern (a regular expression, as in EdgeX).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("pattern must not be empty".into());
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| format!("invalid regular expression: {e}"))
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn names() {
        assert!(check("name", "Random-Integer-Device").is_ok());
        assert!(check("name", "temp sensor.1").is_ok());
        assert!(check("name", "").is_err());
        assert!(check("name", "  ").is_err());
        assert!(check("name", "a/b").is_err());
        assert!(check("name", "a#").is_err());
        assert!(check("name", "a+b").is_err());
        assert!(check("name", "a\nb").is_err());
        assert!(check("name", &"x".repeat(300)).is_err());
    }
}
