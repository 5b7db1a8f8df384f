//! Where a device is: its `opcua` protocol block as EdgeX's device-opc-ua writes it
//! (`Endpoint`, and Outpost's `SecurityPolicy` and `SecurityMode`); devices with the same
//! endpoint share a session.

use opcua::types::{EndpointDescription, MessageSecurityMode, UserTokenPolicy};
use outpost_contracts::metadata::Device;

/// The protocol block of OPC UA devices.
pub const PROTOCOL: &str = "opcua";

/// An endpoint and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `opc.tcp://host:port/path`.
    pub url: String,
    /// `None` or `Basic256Sha256`.
    pub policy: String,
    pub mode: Mode,
    /// The server's certificate (PEM) from `RemotePemCert`, trusted for this endpoint.
    pub server_cert: Option<String>,
    /// Who the session is (`AuthType`).
    pub auth: Auth,
}

/// The session's identity: `AuthType` and, for a user name, `SecretName`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Auth {
    Anonymous,
    /// A user name and password, the keys `username` and `password` of this secret (given
    /// to the service with `POST /api/v3/secret`, kept in its encrypted database).
    Username {
        secret: String,
    },
    /// The application certificate and its key.
    Certificate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    None,
    Sign,
    SignAndEncrypt,
}

impl Endpoint {
    /// `device`'s endpoint, or why its protocol block does not give one.
    pub fn of(device: &Device) -> Result<Self, String> {
        let p = device
            .protocols
            .get(PROTOCOL)
            .or_else(|| device.protocols.get("OPCUA"))
            .ok_or_else(|| {
                format!(
                    "device '{}' has no '{PROTOCOL}' protocol block",
                    device.name
                )
            })?;
        let get = |k: &str| {
            let v = match p.get(k)? {
                serde_json::Value::String(s) => s.trim().to_string(),
                other => other.to_string(),
            };
            (!v.is_empty()).then_some(v)
        };
        let url = get("Endpoint").ok_or_else(|| {
            format!(
                "device '{}': '{PROTOCOL}.Endpoint' is required (opc.tcp://host:port/)",
                device.name
            )
        })?;
        if !url.starts_with("opc.tcp://") {
            return Err(format!(
                "device '{}': Endpoint '{url}' must start with opc.tcp://",
                device.name
            ));
        }
        let policy = get("SecurityPolicy").unwrap_or_else(|| "None".into());
        if !matches!(policy.as_str(), "None" | "Basic256Sha256") {
            return Err(format!(
                "device '{}': SecurityPolicy '{policy}' is not one of None, Basic256Sha256",
                device.name
            ));
        }
        let mode = match get("SecurityMode").as_deref() {
            None | Some("None") => Mode::None,
            Some("Sign") => Mode::Sign,
            Some("SignAndEncrypt") => Mode::SignAndEncrypt,
            Some(other) => {
                return Err(format!(
                    "device '{}': SecurityMode '{other}' is not one of None, Sign, SignAndEncrypt",
                    device.name
                ));
            }
        };
        if (policy == "None") != (mode == Mode::None) {
            return Err(format!(
                "device '{}': SecurityPolicy None goes with SecurityMode None, and only with it",
                device.name
            ));
        }
        if get("Password").is_some() {
            return Err(format!(
                "device '{}': a password does not go in the device: give it to device-opcua as \
                 a secret (POST /api/v3/secret, keys username and password) named in SecretName",
                device.name
            ));
        }
        let auth = match get("AuthType").as_deref() {
            None | Some("Anonymous") => Auth::Anonymous,
            Some("Username" | "UserName") => Auth::Username {
                secret: get("SecretName").unwrap_or_else(|| device.name.clone()),
            },
            Some("Certificate") => Auth::Certificate,
            Some(other) => {
                return Err(format!(
                    "device '{}': AuthType '{other}' is not one of Anonymous, Username, Certificate",
                    device.name
                ));
            }
        };
        if matches!(auth, Auth::Username { .. }) && mode == Mode::None {
            return Err(format!(
                "device '{}': a password would cross the network in the clear: AuthType \
                 Username needs SecurityPolicy Basic256Sha256 (SecurityMode Sign or \
                 SignAndEncrypt)",
                device.name
            ));
        }
        let server_cert = get("RemotePemCert");
        if let Some(pem) = &server_cert
            && let Err(e) = opcua::crypto::X509::from_pem(pem.as_bytes())
        {
            return Err(format!(
                "device '{}': RemotePemCert is not a PEM certificate: {e}",
                device.name
            ));
        }
        Ok(Self {
            url,
            policy,
            mode,
            server_cert,
            auth,
        })
    }

    /// `url` without security, as nobody: how discovery browses a server.
    pub fn anonymous(url: &str) -> Self {
        Self {
            url: url.to_string(),
            policy: "None".into(),
            mode: Mode::None,
            server_cert: None,
            auth: Auth::Anonymous,
        }
    }

    /// What the client asks the server for.
    pub fn description(&self) -> EndpointDescription {
        let mode = match self.mode {
            Mode::None => MessageSecurityMode::None,
            Mode::Sign => MessageSecurityMode::Sign,
            Mode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
        };
        (
            self.url.as_str(),
            self.policy.as_str(),
            mode,
            UserTokenPolicy::anonymous(),
        )
            .into()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn device(block: serde_json::Value) -> Device {
        serde_json::from_value(json!({
            "name": "d", "profileName": "p", "serviceName": "device-opcua",
            "adminState": "UNLOCKED", "operatingState": "UP",
            "protocols": {"opcua": block}
        }))
        .expect("a device")
    }

    #[test]
    fn endpoints_as_edgex_writes_them() {
        let e = Endpoint::of(&device(json!({"Endpoint": "opc.tcp://127.0.0.1:4840/"})))
            .expect("an endpoint");
        assert_eq!(
            (e.url.as_str(), e.policy.as_str(), e.mode),
            ("opc.tcp://127.0.0.1:4840/", "None", Mode::None)
        );
        let e = Endpoint::of(&device(json!({
            "Endpoint": "opc.tcp://plc:4840", "SecurityPolicy": "Basic256Sha256",
            "SecurityMode": "SignAndEncrypt"
        })))
        .expect("an endpoint");
        assert_eq!(e.mode, Mode::SignAndEncrypt);
        assert_eq!(e.auth, Auth::Anonymous);
    }

    #[test]
    fn identities_and_where_their_secrets_are() {
        let auth = |block| Endpoint::of(&device(block)).map(|e| e.auth);
        let signed = |mut block: serde_json::Value| {
            block["SecurityPolicy"] = json!("Basic256Sha256");
            block["SecurityMode"] = json!("Sign");
            block
        };
        assert_eq!(
            auth(signed(
                json!({"Endpoint": "opc.tcp://plc", "AuthType": "Username"})
            )),
            Ok(Auth::Username { secret: "d".into() })
        );
        let e = auth(json!({"Endpoint": "opc.tcp://plc", "AuthType": "Username"}))
            .expect_err("a password in the clear");
        assert!(e.contains("in the clear"), "{e}");
        assert_eq!(
            auth(signed(
                json!({"Endpoint": "opc.tcp://plc", "AuthType": "Username", "SecretName": "plc-login"})
            )),
            Ok(Auth::Username {
                secret: "plc-login".into()
            })
        );
        assert_eq!(
            auth(json!({"Endpoint": "opc.tcp://plc", "AuthType": "Certificate"})),
            Ok(Auth::Certificate)
        );
        let e = auth(json!({"Endpoint": "opc.tcp://plc", "AuthType": "Username", "Password": "x"}))
            .expect_err("a password in the device");
        assert!(e.contains("secret"), "{e}");
        assert!(auth(json!({"Endpoint": "opc.tcp://plc", "AuthType": "Kerberos"})).is_err());
        assert!(auth(json!({"Endpoint": "opc.tcp://plc", "RemotePemCert": "nope"})).is_err());
    }

    #[test]
    fn what_is_no_endpoint_says_why() {
        for bad in [
            json!({}),
            json!({"Endpoint": "http://plc"}),
            json!({"Endpoint": "opc.tcp://plc", "SecurityPolicy": "Basic128Rsa15"}),
            json!({"Endpoint": "opc.tcp://plc", "SecurityMode": "Sign"}),
            json!({"Endpoint": "opc.tcp://plc", "SecurityPolicy": "Basic256Sha256"}),
            json!({"Endpoint": "opc.tcp://plc", "SecurityMode": "Loud"}),
        ] {
            let e = Endpoint::of(&device(bad.clone())).expect_err("refused");
            assert!(e.contains("device 'd'"), "{bad}: {e}");
        }
    }
}
