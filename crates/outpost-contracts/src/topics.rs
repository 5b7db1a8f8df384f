//! The EdgeX topic scheme on the message bus, under a configurable base (`edgex`).
//!
//! Every topic a service of the node publishes or subscribes is made here.
//!
//! | topic | publisher |
//! |---|---|
//! | `<base>/events/device/<service>/<profile>/<device>/<source>` | device services, export (REST ingest) |
//! | `<base>/events/core/<service>/<profile>/<device>/<source>` | core-data (events added over REST) |
//! | `<base>/events/rules/<pipeline>/<profile>/<device>` | rules |
//! | `<base>/alerts/<pipeline>/<device>` | rules |
//! | `<base>/system-events/<source>/<type>/<action>/<owner>[/<profile>]` | core-metadata |
//! | `<base>/core/command/request/<device>/<command>/<method>` | clients of core-command |
//! | `<base>/device/command/request/<service>/<device>/<command>/<method>` | core-command |
//! | `<base>/response/<service>/<requestId>` | device services, core-command |
//! | `<base>/_journal/consumer`, `<base>/_journal/ack` | durable consumers, to the embedded broker only (never routed) |

/// Topic of an event from `device` of `profile` via `service`, for `source`.
pub fn event(base: &str, service: &str, profile: &str, device: &str, source: &str) -> String {
    format!("{base}/events/device/{service}/{profile}/{device}/{source}")
}

/// Where a durable consumer tells the embedded broker which filters it consumes, so the
/// broker journals what matches them before acknowledging it (see `outpost-broker`'s
/// journal). The broker handles these messages itself; nobody receives them.
pub fn journal_consumer(base: &str) -> String {
    format!("{base}/_journal/consumer")
}

/// Where a durable consumer tells the embedded broker which messages it has handled, so
/// the broker can release them from its journal.
pub fn journal_ack(base: &str) -> String {
    format!("{base}/_journal/ack")
}

/// Subscription filter for every event (device, core and rules events).
pub fn all_events(base: &str) -> String {
    format!("{base}/events/#")
}

/// Subscription filter for every device event.
pub fn device_events(base: &str) -> String {
    format!("{base}/events/device/#")
}

/// Topic of an event core-data republishes after it was added over REST: under
/// `events/core`, so core-data's own subscription to device events does not store it twice.
pub fn core_event(base: &str, service: &str, profile: &str, device: &str, source: &str) -> String {
    format!("{base}/events/core/{service}/{profile}/{device}/{source}")
}

/// Topic of what a rules pipeline emits for a device.
pub fn rules_event(base: &str, pipeline: &str, profile: &str, device: &str) -> String {
    format!("{base}/events/rules/{pipeline}/{profile}/{device}")
}

/// Topic of an alert a rules pipeline raises for a device.
pub fn alert(base: &str, pipeline: &str, device: &str) -> String {
    format!("{base}/alerts/{pipeline}/{device}")
}

/// What every alert topic starts with.
pub fn alerts_prefix(base: &str) -> String {
    format!("{base}/alerts/")
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

/// Subscription filter for core-metadata's system events.
pub fn metadata_events(base: &str) -> String {
    format!("{base}/system-events/core-metadata/#")
}

/// What the topic of a command request to core-command starts with:
/// `<base>/core/command/request/<device>/<command>/<method>`.
pub fn core_command_requests_prefix(base: &str) -> String {
    format!("{base}/core/command/request/")
}

/// Subscription filter for command requests to core-command.
pub fn core_command_requests(base: &str) -> String {
    format!("{base}/core/command/request/#")
}

/// Subscription filter for command requests to the device service `service`.
pub fn device_command_requests(base: &str, service: &str) -> String {
    format!("{base}/device/command/request/{service}/#")
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

/// What the topics of responses to `service` start with.
pub fn responses_prefix(base: &str, service: &str) -> String {
    format!("{base}/response/{service}/")
}

/// Subscription filter for every response.
pub fn all_responses(base: &str) -> String {
    format!("{base}/response/#")
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

/// Where devices of device-mqtt publish and subscribe, and what each may do.
///
/// The defaults are EdgeX device-mqtt's: telemetry on `incoming/data/<device>/<source>`
/// (or `incoming/data/<device>`), command requests on `<CommandTopic>/<name>/<get|set>/<id>`
/// with `CommandTopic` = `command/<device>`, replies on `command/response/<id>`. A device's
/// `mqtt` protocol block may set `CommandTopic` and an extra `TelemetryTopic`.
pub mod device {
    use crate::metadata::Device;

    /// Prefix of the default telemetry topics.
    pub const TELEMETRY_PREFIX: &str = "incoming/data";
    /// Prefix of command replies; the level after it is the request ID.
    pub const RESPONSE_PREFIX: &str = "command/response";
    /// The device's protocol block.
    pub const PROTOCOL: &str = "mqtt";

    /// The topics one device owns.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DeviceTopics {
        pub name: String,
        /// Requests go to `<command>/<name>/<get|set>/<id>`.
        pub command: String,
        /// An extra topic the device publishes telemetry on.
        pub telemetry: Option<String>,
    }

    impl DeviceTopics {
        pub fn of(d: &Device) -> Self {
            let prop = |k: &str| {
                d.protocols
                    .get(PROTOCOL)
                    .and_then(|p| p.get(k))
                    .and_then(|v| v.as_str())
                    .map(|s| s.trim().trim_end_matches('/').to_string())
                    .filter(|s| !s.is_empty())
            };
            Self {
                name: d.name.clone(),
                command: prop("CommandTopic").unwrap_or_else(|| format!("command/{}", d.name)),
                telemetry: prop("TelemetryTopic"),
            }
        }

        /// Why these topics cannot be granted: a device name or topic with wildcards, a
        /// topic in a tree that is not the device's (the bus under `base`, other devices'
        /// telemetry and replies, `$` topics), or a `CommandTopic` whose last level is not
        /// the device's name (so it cannot reach into another device's commands).
        pub fn check(&self, base: &str) -> Result<(), String> {
            let n = &self.name;
            if n.is_empty() || n.contains(['/', '+', '#', '\0']) || n.starts_with('$') {
                return Err(format!(
                    "device name '{n}' cannot be used in MQTT topics ('/', '+', '#' or a leading '$')"
                ));
            }
            let reserved = |t: &str| {
                t.starts_with('$')
                    || is_device_topic(t)
                    || t.strip_prefix(base)
                        .is_some_and(|r| r.is_empty() || r.starts_with('/'))
            };
            if !is_plain_topic(&self.command) {
                return Err(format!(
                    "CommandTopic '{}' must be a topic without wildcards",
                    self.command
                ));
            }
            if reserved(&self.command) || self.command.rsplit('/').next() != Some(n.as_str()) {
                return Err(format!(
                    "CommandTopic '{}' must end with the device's name and lie outside incoming/data, command/response, {base} and $ topics",
                    self.command
                ));
            }
            if let Some(t) = &self.telemetry
                && (!is_plain_topic(t) || reserved(t))
            {
                return Err(format!(
                    "TelemetryTopic '{t}' must be a topic without wildcards outside incoming/data, command/response, {base} and $ topics"
                ));
            }
            Ok(())
        }

        /// Whether the device may publish on `topic`: its own telemetry topics (one level
        /// below its name at most), and replies (request IDs are random and only the
        /// addressed device sees its requests).
        pub fn may_publish(&self, topic: &str) -> bool {
            let own = topic
                .strip_prefix(TELEMETRY_PREFIX)
                .and_then(|r| r.strip_prefix('/'))
                .and_then(|r| r.strip_prefix(self.name.as_str()));
            own.is_some_and(|rest| {
                rest.is_empty()
                    || rest
                        .strip_prefix('/')
                        .is_some_and(|source| !source.is_empty() && !source.contains('/'))
            }) || self.telemetry.as_deref() == Some(topic)
                || topic
                    .strip_prefix(RESPONSE_PREFIX)
                    .and_then(|r| r.strip_prefix('/'))
                    .is_some_and(|id| !id.is_empty() && !id.contains('/'))
        }

        /// Whether the device may subscribe to `filter`: only below its command topic.
        pub fn may_subscribe(&self, filter: &str) -> bool {
            filter
                .strip_prefix(self.command.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        }
    }

    /// Whether `topic` is one only devices publish on (others must not speak for them).
    pub fn is_device_topic(topic: &str) -> bool {
        [TELEMETRY_PREFIX, RESPONSE_PREFIX].iter().any(|p| {
            topic
                .strip_prefix(p)
                .is_some_and(|r| r.is_empty() || r.starts_with('/'))
        })
    }

    /// Whether a topic names only itself (no wildcards, no empty levels at the ends).
    pub fn is_plain_topic(t: &str) -> bool {
        !t.is_empty() && !t.contains(['+', '#', '\0']) && !t.starts_with('/') && !t.ends_with('/')
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn topics(cmd: Option<&str>, tel: Option<&str>) -> DeviceTopics {
            let mut d = Device {
                name: "press-7".into(),
                ..Device::default()
            };
            let mut p = crate::metadata::Map::new();
            if let Some(c) = cmd {
                p.insert("CommandTopic".into(), c.into());
            }
            if let Some(t) = tel {
                p.insert("TelemetryTopic".into(), t.into());
            }
            d.protocols.insert(PROTOCOL.into(), p);
            DeviceTopics::of(&d)
        }

        #[test]
        fn publish_acl() {
            let t = topics(None, Some("plant/line1/press7"));
            assert_eq!(t.command, "command/press-7");
            for ok in [
                "incoming/data/press-7",
                "incoming/data/press-7/Pressure",
                "incoming/data/press-7/Pressure",
                "plant/line1/press7",
                "command/response/8b1c",
            ] {
                assert!(t.may_publish(ok), "{ok}");
            }
            for no in [
                "incoming/data/press-77",
                "incoming/data/press-7/a/b",
                "incoming/data/press-7/",
                "incoming/data/press-8/Pressure",
                "incoming/data",
                "plant/line1/press8",
                "command/response",
                "command/response/",
                "command/response/a/b",
                "edgex/events/device/x",
                "command/press-8/Pressure/get/1",
            ] {
                assert!(!t.may_publish(no), "{no}");
            }
        }

        #[test]
        fn subscribe_acl() {
            let t = topics(Some("devices/press-7/cmd/"), None);
            assert_eq!(t.command, "devices/press-7/cmd");
            assert!(t.may_subscribe("devices/press-7/cmd/#"));
            assert!(t.may_subscribe("devices/press-7/cmd/+/get/+"));
            for no in [
                "#",
                "devices/#",
                "devices/press-7/cmd",
                "devices/press-7/cmdx/#",
                "command/press-8/#",
            ] {
                assert!(!t.may_subscribe(no), "{no}");
            }
        }

        #[test]
        fn checks() {
            assert!(topics(None, None).check("edgex").is_ok());
            assert!(
                topics(Some("plant/cmd/press-7"), Some("plant/line1/press7"))
                    .check("edgex")
                    .is_ok()
            );
            for (cmd, tel) in [
                (Some("+"), None),
                (Some("command/response/press-7"), None),
                (Some("command/press-8"), None),
                (Some("edgex/press-7"), None),
                (Some("$SYS/press-7"), None),
                (None, Some("incoming/data/press-8")),
                (None, Some("edgex/events/device/x")),
                (None, Some("plant/#")),
            ] {
                assert!(topics(cmd, tel).check("edgex").is_err(), "{cmd:?} {tel:?}");
            }
            let mut bad = topics(None, None);
            for name in ["a/b", "a+", "#", "$x"] {
                bad.name = name.into();
                assert!(bad.check("edgex").is_err(), "{name}");
            }
            // A device named `response` would otherwise get command/response.
            let mut r = topics(None, None);
            r.name = "response".into();
            r.command = "command/response".into();
            assert!(r.check("edgex").is_err());
        }

        #[test]
        fn device_topics() {
            assert!(is_device_topic("incoming/data/x/y"));
            assert!(is_device_topic("command/response/1"));
            assert!(!is_device_topic("incoming/database"));
            assert!(!is_device_topic("edgex/events/x"));
        }
    }
}
