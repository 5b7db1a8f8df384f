//! The device side of OTA (`/api/v3/ddi/...`, docs/ota.md): what ota tells a device when it
//! polls, and what a device reports back. Each body is parsed and checked here, once, by
//! ota (what devices send) and by the agent (what the server sends).

use serde::{Deserialize, Serialize};

use crate::ota::{Attributes, DeviceState};

/// Longest poll interval ota may ask for.
pub const MAX_POLL_SECONDS: u64 = 86_400;
/// Longest `details` kept from a report (longer ones are cut, in characters).
pub const MAX_DETAILS_CHARS: usize = 1000;
/// Bounds on the attributes a device reports.
pub const MAX_ATTRIBUTES: usize = 64;
pub const MAX_ATTRIBUTE_KEY: usize = 64;
pub const MAX_ATTRIBUTE_VALUE: usize = 256;

/// The answer to a poll (`GET /api/v3/ddi/{device}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Poll {
    /// When to poll again.
    pub poll_seconds: u64,
    /// What to install, if anything.
    pub action: Option<Action>,
}

/// An offered update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// The rollout.
    pub id: String,
    /// Where this device is in it, as last reported.
    pub state: Option<String>,
    pub artifact: ActionArtifact,
    /// Path (on the same server) of the payload.
    pub download: String,
    /// Path (on the same server) to report progress to.
    pub feedback: String,
}

/// The artifact of an action, with what the device needs to check it before installing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionArtifact {
    pub name: String,
    pub version: String,
    pub size: u64,
    pub sha256: String,
    pub payload_type: String,
    pub manifest_base64: String,
    pub signature: String,
    pub key_id: String,
}

fn is_server_path(p: &str) -> bool {
    p.starts_with("/api/v3/ddi/")
        && !p.contains("//")
        && p.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'@' && b != b'\\')
}

impl Poll {
    /// Parses and checks a poll answer: the interval is bounded, an action's paths stay on
    /// the server that answered (a path cannot name another host), its digest is 64 hex
    /// digits.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let poll: Poll = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if !(1..=MAX_POLL_SECONDS).contains(&poll.poll_seconds) {
            return Err(format!(
                "pollSeconds {} is not 1 to {MAX_POLL_SECONDS}",
                poll.poll_seconds
            ));
        }
        if let Some(a) = &poll.action {
            if a.id.is_empty() {
                return Err("an action has an id".into());
            }
            if !is_server_path(&a.download) || !is_server_path(&a.feedback) {
                return Err("download and feedback are paths under /api/v3/ddi/".into());
            }
            let sha = &a.artifact.sha256;
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("artifact sha256 is 64 hex digits".into());
            }
        }
        Ok(poll)
    }
}

/// A device's progress report (`POST .../action/{rollout}/feedback`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Feedback {
    pub status: DeviceState,
    #[serde(default)]
    pub details: String,
}

impl Feedback {
    /// Parses a report; `details` is cut to [`MAX_DETAILS_CHARS`] characters.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut fb: Feedback = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if fb.details.chars().count() > MAX_DETAILS_CHARS {
            fb.details = fb.details.chars().take(MAX_DETAILS_CHARS).collect();
        }
        Ok(fb)
    }
}

/// The attributes a device reports (`PUT /api/v3/ddi/{device}/attributes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reported {
    pub attributes: Attributes,
}

impl Reported {
    /// Parses and bounds a report: at most [`MAX_ATTRIBUTES`], keys of 1 to
    /// [`MAX_ATTRIBUTE_KEY`] bytes, values up to [`MAX_ATTRIBUTE_VALUE`], no control
    /// characters.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let r: Reported = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let bad = |s: &str| s.chars().any(char::is_control);
        if r.attributes.len() > MAX_ATTRIBUTES
            || r.attributes.iter().any(|(k, v)| {
                k.is_empty()
                    || k.len() > MAX_ATTRIBUTE_KEY
                    || v.len() > MAX_ATTRIBUTE_VALUE
                    || bad(k)
                    || bad(v)
            })
        {
            return Err(format!(
                "attributes: at most {MAX_ATTRIBUTES}, keys of 1 to {MAX_ATTRIBUTE_KEY} bytes, values up to {MAX_ATTRIBUTE_VALUE}, no control characters"
            ));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(download: &str, sha: &str, seconds: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "pollSeconds": seconds,
            "action": {
                "id": "r1", "state": "offered",
                "artifact": {"name": "fw", "version": "1", "size": 3, "sha256": sha,
                    "payloadType": "file", "manifestBase64": "", "signature": "", "keyId": ""},
                "download": download, "feedback": "/api/v3/ddi/d1/action/r1/feedback",
            }
        }))
        .unwrap()
    }

    #[test]
    fn poll_paths_stay_on_the_server() {
        let sha = "ab".repeat(32);
        let ok = Poll::parse(&poll("/api/v3/ddi/d1/action/r1/payload", &sha, 30)).unwrap();
        assert_eq!(ok.action.unwrap().artifact.size, 3);
        // Joined to the server URL, these would send the device's token elsewhere.
        for evil in [
            "@evil.example/x",
            "//evil.example/api/v3/ddi/",
            "https://evil.example/api/v3/ddi/x",
            "/api/v3/ddi/x@evil",
        ] {
            assert!(Poll::parse(&poll(evil, &sha, 30)).is_err(), "{evil}");
        }
        assert!(Poll::parse(&poll("/api/v3/ddi/x", "zz", 30)).is_err());
        assert!(Poll::parse(&poll("/api/v3/ddi/x", &sha, 0)).is_err());
        assert!(Poll::parse(&poll("/api/v3/ddi/x", &sha, MAX_POLL_SECONDS + 1)).is_err());
        let idle = Poll::parse(br#"{"pollSeconds": 30, "action": null}"#).unwrap();
        assert!(idle.action.is_none());
    }

    #[test]
    fn reports_are_bounded() {
        let long = "é".repeat(MAX_DETAILS_CHARS + 5);
        let body = serde_json::json!({"status": "failed", "details": long}).to_string();
        let fb = Feedback::parse(body.as_bytes()).unwrap();
        assert_eq!(
            (fb.status, fb.details.chars().count()),
            (DeviceState::Failed, MAX_DETAILS_CHARS)
        );
        assert!(Feedback::parse(br#"{"status": "nope"}"#).is_err());
        assert!(Feedback::parse(br#"{"status": "failed", "x": 1}"#).is_err());
        assert!(Reported::parse(br#"{"attributes": {"hw": "rev3"}}"#).is_ok());
        for bad in [
            r#"{"attributes": {"": "x"}}"#.to_string(),
            format!(r#"{{"attributes": {{"k": "{}"}}}}"#, "v".repeat(257)),
            r#"{"attributes": {"k": "a\nb"}}"#.to_string(),
        ] {
            assert!(Reported::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
