//! What EdgeX clients send: names escaped the way Go's `url.QueryEscape` escapes them.

use crate::support::*;

#[tokio::test]
async fn names_with_spaces_are_found_however_the_client_escapes_them() {
    let node = Node::start("").await;
    provision(&node, &["boiler room 1"]);
    let md = node.metadata();
    for path in ["boiler+room+1", "boiler%20room%201"] {
        let (s, body) = node.get(&format!("{md}/api/v3/device/name/{path}")).await;
        assert_eq!(s, 200, "{path}: {body}");
        assert_eq!(body["device"]["name"], "boiler room 1");
    }
    // A query string keeps its own rules.
    let (s, body) = node
        .get(&format!("{md}/api/v3/device/all?labels=e2e"))
        .await;
    assert_eq!((s, body["totalCount"].as_u64()), (200, Some(1)));
}
