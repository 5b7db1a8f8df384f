//! Names of devices, profiles, services and resources.
//!
//! Names appear in URL paths and MQTT topics, so they must be non-blank and free of the
//! characters that would break either: `/` (path and topic separator), `#` and `+` (MQTT
//! wildcards) and control characters, and not `.` or `..`, which clients and proxies
//! resolve as path segments before a request is sent, so such a name could never be
//! addressed. They are at most [`MAX_LEN`] bytes.

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
    if value == "." || value == ".." {
        return Err(format!(
            "{field} '{value}' cannot be addressed in a URL path"
        ));
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

/// Checks a service ID: RFC 3986 unreserved characters only (letters, digits, `-`, `.`,
/// `_`, `~`), as EdgeX's `edgex-dto-rfc3986-unreserved-chars` demands, optionally followed
/// by `@` and an instance name of the same characters (several instances of one service,
/// which the gateway balances: `core-command@b`).
pub fn check_service_id(field: &str, value: &str) -> Result<(), String> {
    check(field, value)?;
    let unreserved = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
    let (service, instance) = value.split_once('@').unwrap_or((value, "x"));
    for part in [service, instance] {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!("{field} '{value}' is not a service ID"));
        }
        if let Some(c) = part.chars().find(|c| !unreserved(*c)) {
            return Err(format!(
                "{field} '{value}' may only contain letters, digits, '-', '.', '_' and '~' (and one '@' before an instance name), not {c:?}"
            ));
        }
    }
    Ok(())
}

/// Longest host name (RFC 1035).
pub const MAX_HOST_LEN: usize = 253;

/// Checks a host: a DNS name, an IPv4 address or an IPv6 address (bracketed or not).
pub fn check_host(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_HOST_LEN {
        return Err(format!("{field} is longer than {MAX_HOST_LEN} bytes"));
    }
    let bare = value.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if value.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "{field} '{value}' is not a host name or an IP address"
        ))
    }
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
        assert!(check("name", "..").is_err());
        assert!(check("name", ".").is_err());
        assert!(check("name", "...").is_ok());
    }

    #[test]
    fn service_ids_and_hosts() {
        use super::{check_host, check_service_id};
        assert!(check_service_id("serviceId", "core-data").is_ok());
        assert!(check_service_id("serviceId", "core-command@b").is_ok());
        assert!(check_service_id("serviceId", "core-command@").is_err());
        assert!(check_service_id("serviceId", "a@b@c").is_err());
        assert!(check_service_id("serviceId", "'; DROP TABLE x;--").is_err());
        assert!(check_service_id("serviceId", ".").is_err());
        assert!(check_service_id("serviceId", "a b").is_err());
        for ok in [
            "localhost",
            "edgex-core-data",
            "10.0.0.5",
            "::1",
            "[fe80::1]",
            "node_1.lan",
        ] {
            assert!(check_host("host", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", "-x", "x y", "a/b", "h:80", &"h".repeat(70_000)] {
            assert!(check_host("host", bad).is_err(), "{bad}");
        }
    }
}
