//! Where a stream this node does not have is published in the cluster: a find by name over
//! every node, and the pure choice of the origin among their answers (a node's own
//! publisher, not another node's edge copy of it), with the URL to pull it from.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Cluster, ClusterError, NodeInfo, Op, Reply};
use crate::registry::MediaKind;

/// A stream published on another node, and where to pull it from over WHEP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginStream {
    pub node_id: String,
    /// `http://host:port/whep/{name}?app={app}` on the origin node.
    pub whep_url: String,
    /// The origin node's `host:port`, for the edge record's `remoteAddress`.
    pub address: String,
    /// The tracks the origin's publisher sends.
    pub media_kinds: Vec<MediaKind>,
}

impl Cluster {
    /// The node that publishes `name` in `app`, if another live node does. `this node`
    /// never counts: its own streams are in its own registry.
    pub async fn locate(
        &self,
        name: &str,
        app: &str,
    ) -> Result<Option<OriginStream>, ClusterError> {
        let (replies, _) = self
            .ask(Op::Find {
                body: json!({ "name": name, "published": true, "appKey": app }),
            })
            .await?;
        let nodes = self.nodes().await?;
        Ok(choose_origin(&self.node_id, name, app, &replies, &nodes))
    }
}

/// The origin of `name` among the nodes' find answers: a publisher record that is not an
/// edge copy (`originNodeId`), on a live node other than `this_node` with a known URL.
pub fn choose_origin(
    this_node: &str,
    name: &str,
    app: &str,
    replies: &BTreeMap<String, Reply>,
    nodes: &[NodeInfo],
) -> Option<OriginStream> {
    replies
        .values()
        .filter(|reply| reply.node != this_node && reply.status == 200)
        .flat_map(|reply| {
            let list = reply.body.as_array().map(Vec::as_slice).unwrap_or_default();
            list.iter().map(move |stream| (&reply.node, stream))
        })
        .filter(|(_, stream)| {
            stream["published"] == Value::Bool(true)
                && stream["name"] == name
                && stream["appKey"] == app
                && stream.get("originNodeId").is_none()
        })
        .find_map(|(node, stream)| {
            let http_url = nodes
                .iter()
                .find(|n| &n.node_id == node)?
                .http_url
                .clone()?;
            let media_kinds = serde_json::from_value(stream["mediaKinds"].clone()).ok()?;
            let query = serde_urlencoded::to_string([("app", app)]).ok()?;
            let path =
                percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
            Some(OriginStream {
                whep_url: format!("{http_url}/whep/{path}?{query}"),
                node_id: node.clone(),
                address: http_url
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .to_string(),
                media_kinds,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn node(id: &str, url: Option<&str>) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            http_url: url.map(String::from),
            streams: 1,
            started_at: 0,
            refreshed_at: 0,
            load: Default::default(),
        }
    }

    fn replies(list: &[(&str, u16, Value)]) -> BTreeMap<String, Reply> {
        list.iter()
            .map(|(n, status, body)| {
                (
                    n.to_string(),
                    Reply {
                        id: Uuid::nil(),
                        node: n.to_string(),
                        status: *status,
                        body: body.clone(),
                    },
                )
            })
            .collect()
    }

    fn publisher(name: &str) -> Value {
        json!({"name": name, "appKey": "defaultApp", "published": true, "mediaKinds": ["audio", "video"]})
    }

    #[test]
    fn the_origin_is_the_publishing_node_not_an_edge_copy_nor_this_node() {
        let mut edge = publisher("cam one");
        edge["originNodeId"] = json!("n1");
        let nodes = [
            node("n1", Some("http://127.0.0.1:1")),
            node("n2", Some("http://127.0.0.1:2")),
            node("n3", Some("http://127.0.0.1:3")),
        ];
        let answers = replies(&[
            ("n1", 200, json!([publisher("cam one")])),
            ("n2", 200, json!([edge])),
            ("n3", 404, json!({"error": "no stream matches"})),
        ]);
        let origin = choose_origin("n3", "cam one", "defaultApp", &answers, &nodes).unwrap();
        assert_eq!(origin.node_id, "n1");
        assert_eq!(
            origin.whep_url,
            "http://127.0.0.1:1/whep/cam%20one?app=defaultApp"
        );
        assert_eq!(origin.media_kinds, [MediaKind::Audio, MediaKind::Video]);
        assert_eq!(origin.address, "127.0.0.1:1");
        // Asked on the origin itself, or with only an edge copy elsewhere: none.
        assert_eq!(
            choose_origin("n1", "cam one", "defaultApp", &answers, &nodes),
            None
        );
        let only_edge = replies(&[("n2", 200, json!([answers["n2"].body[0]]))]);
        assert_eq!(
            choose_origin("n3", "cam one", "defaultApp", &only_edge, &nodes),
            None
        );
    }

    #[test]
    fn no_origin_without_a_live_url_or_in_another_app() {
        let answers = replies(&[("n1", 200, json!([publisher("cam")]))]);
        assert_eq!(
            choose_origin("n2", "cam", "defaultApp", &answers, &[node("n1", None)]),
            None
        );
        assert_eq!(
            choose_origin("n2", "cam", "defaultApp", &answers, &[]),
            None
        );
        let nodes = [node("n1", Some("http://127.0.0.1:1"))];
        assert_eq!(
            choose_origin("n2", "cam", "otherApp", &answers, &nodes),
            None
        );
    }
}
