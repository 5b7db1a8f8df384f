//! The EdgeX topic scheme on the message bus, under a configurable base (`edgex`).
//!
//! | topic | publisher |
//! |---|---|
//! | `<base>/events/device/<service>/<profile>/<device>/<source>` | device services, core-data (REST ingest) |
//! | `<base>/system-events/<source>/<type>/<action>/<owner>[/<profile>]` | core-metadata |
//! | `<base>/device/command/request/<service>/<device>/<command>/<method>` | core-command |
//! | `<base>/response/<service>/<requestId>` | device services |

/// Topic of an event from `device` of `profile` via `service`, for `source`.
pub fn event(base: &str, service: &str, profile: &str, device: &str, source: &str) -> String {
    format!("{base}/events/device/{service}/{profile}/{device}/{source}")
}

/// Subscription filter for every device event.
pub fn all_events(base: &str) -> String {
    format!("{base}/events/#")
}

/// Topic of a system event.
pub fn system_event(
    base: &str,
    source: &str,
    kind: &str,
    action: &str,
    owner: &str,
    profile: Option<&str>,
) -> String {
    match profile {
        Some(p) if !p.is_empty() => {
            format!("{base}/system-events/{source}/{kind}/{action}/{owner}/{p}")
        }
        _ => format!("{base}/system-events/{source}/{kind}/{action}/{owner}"),
    }
}

/// Subscription filter for every system event.
pub fn all_system_events(base: &str) -> String {
    format!("{base}/system-events/#")
}

/// Topic of a command request to a device service.
pub fn command_request(
    base: &str,
    service: &str,
    device: &str,
    command: &str,
    method: &str,
) -> String {
    format!("{base}/device/command/request/{service}/{device}/{command}/{method}")
}

/// Topic of a response to request `request_id` sent to `service`.
pub fn response(base: &str, service: &str, request_id: &str) -> String {
    format!("{base}/response/{service}/{request_id}")
}

/// The parts of an event topic: `(service, profile, device, source)`.
pub fn parse_event<'a>(base: &str, topic: &'a str) -> Option<(&'a str, &'a str, &'a str, &'a str)> {
    let rest = topic.strip_prefix(base)?.strip_prefix("/events/device/")?;
    let mut it = rest.splitn(4, '/');
    let (s, p, d, src) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if [s, p, d, src].iter().any(|x| x.is_empty()) || src.contains('/') {
        return None;
    }
    Some((s, p, d, src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_topics_round_trip() {
        let t = event(
            "edgex",
            "device-virtual",
            "Random-Integer-Device",
            "d1",
            "Int8",
        );
        assert_eq!(
            t,
            "edgex/events/device/device-virtual/Random-Integer-Device/d1/Int8"
        );
        assert_eq!(
            parse_event("edgex", &t),
            Some(("device-virtual", "Random-Integer-Device", "d1", "Int8"))
        );
        assert_eq!(parse_event("edgex", "edgex/events/device/a/b/c"), None);
        assert_eq!(parse_event("edgex", "edgex/events/device/a/b/c/d/e"), None);
        assert_eq!(
            system_event(
                "edgex",
                "core-metadata",
                "device",
                "add",
                "device-virtual",
                Some("p")
            ),
            "edgex/system-events/core-metadata/device/add/device-virtual/p"
        );
    }
}
