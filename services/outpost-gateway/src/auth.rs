//! Who may call what.
//!
//! Every route needs a token except the public ones: login, refresh, the gateway's own
//! ping and health, the CA certificate, and the web console's files under `/ui/` (which
//! hold no data; the page logs in through the API). A token is either an access token (JWT from
//! login) or an API key, sent as `Authorization: Bearer <token>` or `X-API-Key: <key>`.
//!
//! Roles, per method and route:
//! - viewer: reads (GET, HEAD) of every service and the gateway's overview, except a
//!   command read with `ds-pushevent`, which writes the event into core-data (operator);
//! - operator: also writes to every service (commands, devices, profiles, data), except the
//!   registry's (core-keeper), which changes how the node routes;
//! - admin: everything, including users, API keys and the gateway's configuration.
//!
//! Devices fetching updates (`/ota/api/v3/ddi/...`) carry their own device credential,
//! which the OTA service checks; for the gateway those routes are public.

use http::Method;

use crate::users::Role;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Public,
    Role(Role),
}

/// The requirement of `method` on `path` with `query`.
///
/// A read of a device command with `ds-pushevent=true` makes the device service push the
/// event it reads into core-data: a write, so it needs an operator.
pub fn need(method: &Method, path: &str, query: Option<&str>) -> Need {
    let need = need_of_path(method, path);
    if need == Need::Role(Role::Viewer) && query.is_some_and(pushes_event) {
        return Need::Role(Role::Operator);
    }
    need
}

/// Whether a query asks for `ds-pushevent` (anything but `false`: what the service would
/// refuse is no reason to let a viewer try).
fn pushes_event(query: &str) -> bool {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .trim()
            .to_ascii_lowercase()
    };
    query.split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        decode(k) == "ds-pushevent" && decode(v) != "false"
    })
}

fn need_of_path(method: &Method, path: &str) -> Need {
    let read = matches!(*method, Method::GET | Method::HEAD);
    if let Some(own) = path.strip_prefix("/api/v3/") {
        return match (method, own) {
            (&Method::POST, "auth/login" | "auth/refresh") => Need::Public,
            (&Method::GET, "ping" | "health" | "ca.pem") => Need::Public,
            (_, "auth/logout" | "auth/whoami" | "auth/password") => Need::Role(Role::Viewer),
            (_, p) if p.starts_with("auth/") => Need::Role(Role::Admin),
            (_, "config") => Need::Role(Role::Admin),
            (_, "metrics") => Need::Role(Role::Operator),
            _ if read => Need::Role(Role::Viewer),
            _ => Need::Role(Role::Admin),
        };
    }
    if path == "/metrics" {
        return Need::Role(Role::Operator);
    }
    if path == "/" || path == "/ui" || path.starts_with("/ui/") {
        return if read {
            Need::Public
        } else {
            Need::Role(Role::Admin)
        };
    }
    // The OTA device protocol: devices authenticate with their own credential, which the
    // OTA service checks; the gateway only routes (and rate-limits) them.
    if path.starts_with("/ota/api/v3/ddi/") {
        return Need::Public;
    }
    let (service, rest) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path.trim_start_matches('/'), ""));
    match service {
        _ if read || *method == Method::OPTIONS => Need::Role(Role::Viewer),
        "core-keeper" => Need::Role(Role::Admin),
        // Secrets any service keeps, and where notifications are sent (a subscription
        // makes the node connect out, with stored credentials).
        _ if rest.starts_with("api/v3/secret") => Need::Role(Role::Admin),
        "support-notifications" if rest.starts_with("api/v3/subscription") => {
            Need::Role(Role::Admin)
        }
        // A job calls out (to any address, services of the node included, with the
        // scheduler's identity) and sends device commands, unattended.
        "support-scheduler" if rest.starts_with("api/v3/job") => Need::Role(Role::Admin),
        _ => Need::Role(Role::Operator),
    }
}

/// The credential a request carries, if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_method_and_route() {
        let v = Need::Role(Role::Viewer);
        let o = Need::Role(Role::Operator);
        let a = Need::Role(Role::Admin);
        assert_eq!(
            need(&Method::POST, "/api/v3/auth/login", None),
            Need::Public
        );
        assert_eq!(need(&Method::GET, "/api/v3/ca.pem", None), Need::Public);
        assert_eq!(need(&Method::GET, "/api/v3/health", None), Need::Public);
        assert_eq!(need(&Method::GET, "/ui/index.html", None), Need::Public);
        assert_eq!(need(&Method::GET, "/api/v3/auth/login", None), a);
        assert_eq!(need(&Method::GET, "/api/v3/auth/user", None), a);
        assert_eq!(need(&Method::POST, "/api/v3/auth/apikey", None), a);
        assert_eq!(need(&Method::POST, "/api/v3/auth/logout", None), v);
        assert_eq!(need(&Method::GET, "/api/v3/overview/device/d1", None), v);
        assert_eq!(need(&Method::GET, "/core-data/api/v3/event/all", None), v);
        assert_eq!(
            need(&Method::DELETE, "/core-data/api/v3/event/id/x", None),
            o
        );
        assert_eq!(
            need(&Method::PUT, "/core-command/api/v3/device/name/d/c", None),
            o
        );
        assert_eq!(need(&Method::POST, "/core-keeper/api/v3/registry", None), a);
        // Anyone operating may notify; where notifications go, and secrets, are an
        // administrator's.
        let sn = "/support-notifications/api/v3";
        assert_eq!(need(&Method::POST, &format!("{sn}/notification"), None), o);
        assert_eq!(need(&Method::POST, &format!("{sn}/subscription"), None), a);
        assert_eq!(need(&Method::PATCH, &format!("{sn}/subscription"), None), a);
        assert_eq!(
            need(&Method::GET, &format!("{sn}/subscription/all"), None),
            v
        );
        assert_eq!(need(&Method::POST, &format!("{sn}/secret"), None), a);
        assert_eq!(
            need(&Method::POST, "/device-virtual/api/v3/secret", None),
            a
        );
        assert_eq!(
            need(&Method::GET, "/core-keeper/api/v3/registry/all", None),
            v
        );
        // Devices fetching updates authenticate with the OTA service, not the gateway;
        // rollouts are an operator's business.
        assert_eq!(
            need(&Method::GET, "/ota/api/v3/ddi/dev-1", None),
            Need::Public
        );
        // Reading a device is a viewer's; making it push an event into core-data is not.
        let cmd = "/core-command/api/v3/device/name/d1/Temperature";
        assert_eq!(need(&Method::GET, cmd, Some("ds-returnevent=true")), v);
        assert_eq!(need(&Method::GET, cmd, Some("ds-pushevent=false")), v);
        for q in [
            "ds-pushevent=true",
            "a=1&ds-pushevent=true",
            "ds%2Dpushevent=true",
            "DS-PUSHEVENT=TRUE",
            "ds-pushevent=yes",
            "ds-pushevent",
        ] {
            assert_eq!(
                need(&Method::GET, cmd, Some(q)),
                Need::Role(Role::Operator),
                "{q}"
            );
            assert_eq!(
                need(
                    &Method::GET,
                    "/device-virtual/api/v3/device/name/d1/x",
                    Some(q)
                ),
                Need::Role(Role::Operator),
                "{q}"
            );
        }
        assert_eq!(
            need(
                &Method::POST,
                "/ota/api/v3/ddi/dev-1/action/r/feedback",
                None
            ),
            Need::Public
        );
        assert_eq!(need(&Method::POST, "/ota/api/v3/rollout", None), o);
        assert_eq!(need(&Method::POST, "/ota/api/v3/artifact", None), o);
    }

    #[test]
    fn credentials_from_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("x-api-key", "opk_a_b".parse().unwrap());
        assert_eq!(bearer(&h), Some("opk_a_b"));
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
