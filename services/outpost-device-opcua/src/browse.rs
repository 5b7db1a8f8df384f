//! Discovery: the servers of `[device_opcua.driver] discovery_urls` browsed from their
//! Objects folder, `discovery_depth` levels down the hierarchical references. Every object
//! of the server's own namespaces with variables under it is a device found, with the
//! `opcua` protocol block provision watchers match on: `Endpoint`, `NodeId` (the object's)
//! and `BrowseName`.

use opcua::client::Session;
use opcua::types::{
    BrowseDescription, BrowseDirection, BrowseResultMask, NodeClass, NodeClassMask, NodeId,
    ReferenceTypeId,
};
use outpost_contracts::metadata::Map;
use outpost_device_sdk::{Discovered, DriverError};

/// The Objects folder (namespace 0).
const OBJECTS_FOLDER: u32 = 85;

/// Asks for the children of each of `nodes` (hierarchical references, forward) of the
/// classes in `classes`, with `what` of each.
fn children(
    nodes: &[NodeId],
    classes: NodeClassMask,
    what: BrowseResultMask,
) -> Vec<BrowseDescription> {
    nodes
        .iter()
        .map(|n| BrowseDescription {
            node_id: n.clone(),
            browse_direction: BrowseDirection::Forward,
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            include_subtypes: true,
            node_class_mask: classes.bits(),
            result_mask: what as u32,
        })
        .collect()
}

/// The objects under `start`, `depth` levels down, each with whether it has variables.
async fn walk(
    session: &Session,
    start: NodeId,
    depth: u32,
) -> Result<Vec<(NodeId, String, bool)>, String> {
    let mut found = Vec::new();
    let mut level = vec![start];
    for _ in 0..depth {
        if level.is_empty() {
            break;
        }
        let asks = children(
            &level,
            NodeClassMask::OBJECT | NodeClassMask::VARIABLE,
            BrowseResultMask::All,
        );
        let results = session
            .browse(&asks, 1000, None)
            .await
            .map_err(|e| format!("browse: {e}"))?;
        let mut next = Vec::new();
        for (parent, result) in level.iter().zip(&results) {
            let refs = result.references.as_deref().unwrap_or_default();
            let has_variables = refs.iter().any(|r| r.node_class == NodeClass::Variable);
            if let Some(entry) = found.iter_mut().find(|(n, _, _)| n == parent) {
                entry.2 = has_variables;
            }
            for r in refs {
                // The server's own objects, not the standard ones (namespace 0: Server, ...).
                if r.node_class != NodeClass::Object || r.node_id.node_id.namespace == 0 {
                    continue;
                }
                let id = r.node_id.node_id.clone();
                found.push((id.clone(), r.browse_name.name.to_string(), false));
                next.push(id);
            }
        }
        level = next;
    }
    // The last level's objects were not browsed: whether they have variables is asked now.
    if !level.is_empty() {
        let asks = children(&level, NodeClassMask::VARIABLE, BrowseResultMask::NodeClass);
        let results = session
            .browse(&asks, 1, None)
            .await
            .map_err(|e| format!("browse: {e}"))?;
        for (n, result) in level.iter().zip(&results) {
            let has = result.references.as_ref().is_some_and(|r| !r.is_empty());
            if let Some(entry) = found.iter_mut().find(|(id, _, _)| id == n) {
                entry.2 = has;
            }
        }
    }
    Ok(found)
}

/// The devices found on the server at `url`.
pub async fn devices(
    session: &Session,
    url: &str,
    depth: u32,
) -> Result<Vec<Discovered>, DriverError> {
    let objects = walk(session, NodeId::new(0, OBJECTS_FOLDER), depth)
        .await
        .map_err(|e| DriverError::Device(format!("{url}: {e}")))?;
    let host = url
        .trim_start_matches("opc.tcp://")
        .split(['/', ':'])
        .next()
        .unwrap_or("server");
    Ok(objects
        .into_iter()
        .filter(|(_, _, has_variables)| *has_variables)
        .map(|(id, browse_name, _)| {
            let mut block = Map::new();
            block.insert("Endpoint".into(), url.into());
            block.insert("NodeId".into(), id.to_string().into());
            block.insert("BrowseName".into(), browse_name.clone().into());
            Discovered {
                name: sanitize(&format!("{host}-{browse_name}")),
                description: format!("OPC UA object {browse_name} ({id}) at {url}"),
                protocols: [(crate::endpoint::PROTOCOL.to_string(), block)]
                    .into_iter()
                    .collect(),
                labels: vec!["opcua".into()],
                properties: None,
            }
        })
        .collect())
}

/// A device name from what a server calls an object: letters, digits, `-`, `_`, `.`, `~`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.~".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_what_a_device_name_may_hold() {
        assert_eq!(sanitize("127.0.0.1-Plant"), "127.0.0.1-Plant");
        assert_eq!(sanitize("plc 7/Line #2"), "plc-7-Line--2");
    }
}
