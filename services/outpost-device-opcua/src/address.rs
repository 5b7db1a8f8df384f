//! Where a resource is on the server, from its attributes as EdgeX's device-opc-ua profiles
//! write them:
//!
//! - a variable: `nodeId` (`ns=2;s=Plant.Temp`, `ns=2;i=1001`, `nsu=urn:x;s=Temp`), or
//!   `namespace` + `symbol` (EdgeX's older form, `ns=<namespace>;s=<symbol>`; the
//!   namespace may be its index or its URI);
//! - a method: `methodId` (or `method`), `objectId` (or `object`: the object it is called
//!   on), and `inputMap`, the arguments' default values in order; in the older form the
//!   ids are symbols in `namespace`.

use std::str::FromStr;

use opcua::types::{Identifier, NodeId};
use outpost_device_sdk::ResourceRef;

/// A node, by id or by identifier in a namespace named by its URI (resolved per session:
/// indexes may change when a server restarts).
#[derive(Debug, Clone, PartialEq)]
pub enum NodeRef {
    Id(NodeId),
    InNamespace { uri: String, identifier: Identifier },
}

/// What a resource reads, writes or calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Variable(NodeRef),
    Method {
        object: NodeRef,
        method: NodeRef,
        /// The arguments' values when a command gives none (`inputMap`).
        inputs: Vec<String>,
    },
}

/// A node written as `nodeId` writes it; `nsu=<uri>;` names the namespace by URI.
pub fn parse_node(text: &str) -> Result<NodeRef, String> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("nsu=") {
        let (uri, id) = rest
            .split_once(';')
            .ok_or_else(|| format!("node '{text}': 'nsu=<uri>;' needs an identifier after it"))?;
        return Ok(NodeRef::InNamespace {
            uri: uri.to_string(),
            identifier: identifier(id)
                .ok_or_else(|| format!("node '{text}' has no valid identifier"))?,
        });
    }
    NodeId::from_str(text).map(NodeRef::Id).map_err(|_| {
        format!("'{text}' is not an OPC UA node id (e.g. ns=2;s=Plant.Temp or ns=2;i=1001)")
    })
}

/// `s=...`, `i=...`, `g=...` or `b=...` as an identifier.
fn identifier(text: &str) -> Option<Identifier> {
    NodeId::from_str(&format!("ns=0;{text}"))
        .ok()
        .map(|n| n.identifier)
}

/// A symbol in `namespace` (an index or a URI), EdgeX's older form.
fn in_namespace(namespace: &str, symbol: &str) -> Result<NodeRef, String> {
    let namespace = namespace.trim();
    match namespace.parse::<u16>() {
        Ok(ns) => Ok(NodeRef::Id(NodeId::new(ns, symbol.to_string()))),
        Err(_) if !namespace.is_empty() => Ok(NodeRef::InNamespace {
            uri: namespace.to_string(),
            identifier: Identifier::String(symbol.into()),
        }),
        Err(_) => Err(format!("'namespace' is empty for symbol '{symbol}'")),
    }
}

/// The node a resource's attributes name, by `id_key` (`nodeId`, `methodId`, ...), or by
/// `symbol_key` in `namespace`.
fn node(
    r: &ResourceRef,
    id_keys: &[&str],
    symbol_keys: &[&str],
) -> Result<Option<NodeRef>, String> {
    if let Some(id) = id_keys.iter().find_map(|k| r.attribute(k)) {
        return parse_node(&id).map(Some);
    }
    let Some(symbol) = symbol_keys.iter().find_map(|k| r.attribute(k)) else {
        return Ok(None);
    };
    let namespace = r
        .attribute("namespace")
        .ok_or_else(|| format!("'{}' needs a 'namespace' beside it", symbol_keys[0]))?;
    in_namespace(&namespace, &symbol).map(Some)
}

/// Where `r` is, or why its attributes do not say.
pub fn target(r: &ResourceRef) -> Result<Target, String> {
    let name = r.name();
    let method =
        node(r, &["methodId"], &["method"]).map_err(|e| format!("resource '{name}': {e}"))?;
    if let Some(method) = method {
        let object = node(r, &["objectId"], &["object"])
            .map_err(|e| format!("resource '{name}': {e}"))?
            // A method of the Objects folder when no object is named.
            .unwrap_or(NodeRef::Id(NodeId::new(0, 85u32)));
        let inputs = match r
            .resource
            .attributes
            .as_ref()
            .and_then(|a| a.get("inputMap"))
        {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            Some(_) => return Err(format!("resource '{name}': 'inputMap' must be a list")),
        };
        return Ok(Target::Method {
            object,
            method,
            inputs,
        });
    }
    node(r, &["nodeId", "nodeid", "NodeId"], &["symbol"])
        .map_err(|e| format!("resource '{name}': {e}"))?
        .map(Target::Variable)
        .ok_or_else(|| {
            format!("resource '{name}' names no node: give 'nodeId', or 'namespace' and 'symbol'")
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use outpost_contracts::metadata::DeviceResource;
    use serde_json::json;

    use super::*;

    fn resource(attributes: serde_json::Value) -> ResourceRef {
        let r: DeviceResource = serde_json::from_value(json!({
            "name": "r", "properties": {"valueType": "Int32", "readWrite": "RW"},
            "attributes": attributes
        }))
        .expect("a resource");
        ResourceRef {
            resource: Arc::new(r),
        }
    }

    #[test]
    fn variables_by_node_id_or_namespace_and_symbol() {
        assert_eq!(
            target(&resource(json!({"nodeId": "ns=2;s=Plant.Int32"}))),
            Ok(Target::Variable(NodeRef::Id(NodeId::new(2, "Plant.Int32"))))
        );
        assert_eq!(
            target(&resource(json!({"nodeId": "ns=2;i=1001"}))),
            Ok(Target::Variable(NodeRef::Id(NodeId::new(2, 1001u32))))
        );
        assert_eq!(
            target(&resource(
                json!({"namespace": "2", "symbol": "Plant.Int32"})
            )),
            Ok(Target::Variable(NodeRef::Id(NodeId::new(2, "Plant.Int32"))))
        );
        assert_eq!(
            target(&resource(
                json!({"nodeId": "nsu=urn:outpost:test;s=Plant.Int32"})
            )),
            Ok(Target::Variable(NodeRef::InNamespace {
                uri: "urn:outpost:test".into(),
                identifier: Identifier::String("Plant.Int32".into())
            }))
        );
        assert_eq!(
            target(&resource(
                json!({"namespace": "urn:outpost:test", "symbol": "X"})
            )),
            Ok(Target::Variable(NodeRef::InNamespace {
                uri: "urn:outpost:test".into(),
                identifier: Identifier::String("X".into())
            }))
        );
    }

    #[test]
    fn methods_with_their_object_and_inputs() {
        assert_eq!(
            target(&resource(json!({
                "methodId": "ns=2;s=Plant.Add", "objectId": "ns=2;s=Plant", "inputMap": ["2", 3]
            }))),
            Ok(Target::Method {
                object: NodeRef::Id(NodeId::new(2, "Plant")),
                method: NodeRef::Id(NodeId::new(2, "Plant.Add")),
                inputs: vec!["2".into(), "3".into()],
            })
        );
        assert_eq!(
            target(&resource(
                json!({"namespace": "2", "method": "Plant.Add", "object": "Plant"})
            )),
            Ok(Target::Method {
                object: NodeRef::Id(NodeId::new(2, "Plant")),
                method: NodeRef::Id(NodeId::new(2, "Plant.Add")),
                inputs: vec![],
            })
        );
    }

    #[test]
    fn what_names_no_node_says_why() {
        for bad in [
            json!({}),
            json!({"nodeId": "not a node"}),
            json!({"symbol": "X"}),
            json!({"methodId": "ns=2;s=M", "inputMap": "2,3"}),
            json!({"nodeId": "nsu=urn:x"}),
        ] {
            let e = target(&resource(bad.clone())).expect_err("refused");
            assert!(e.contains("resource 'r'"), "{bad}: {e}");
        }
    }
}
