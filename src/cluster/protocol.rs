//! What cluster nodes say to each other over Redis, with no I/O: a node's entry in the
//! node list, a request every node answers (on the `sluice:requests` channel) and its reply
//! (on the asker's own `sluice:replies:{node}` channel), and how the asker puts the replies
//! together — which nodes answered, which did not in time.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The channel every node listens on for requests.
pub const REQUESTS: &str = "sluice:requests";
/// The sorted set of nodes, scored by when their entry expires (ms since the epoch).
pub const NODES: &str = "sluice:nodes";

/// The channel a node's replies come back on.
pub fn replies_channel(node: &str) -> String {
    format!("sluice:replies:{node}")
}

/// The key of a node's entry (its [`NodeInfo`] as JSON, with the node's TTL).
pub fn node_key(node: &str) -> String {
    format!("sluice:node:{node}")
}

/// A node as the cluster lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub node_id: String,
    /// Where its WHIP, WHEP and REST API answer (`http://host:port`).
    pub http_url: Option<String>,
    /// Its live streams when it last refreshed its entry.
    pub streams: usize,
    pub started_at: u64,
    pub refreshed_at: u64,
    /// Its publishers, players and process figures at that refresh (absent from the
    /// entries of older nodes, hence the defaults).
    #[serde(default, flatten)]
    pub load: NodeLoad,
}

/// What a node reports of its load with each refresh of its entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeLoad {
    pub publishers: usize,
    pub players: usize,
    /// CPU since its previous refresh, in % of one core.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub open_fds: usize,
}

/// What a request asks every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    /// The node's streams a REST find body selects.
    Find { body: Value },
    /// Stop the node's streams a REST terminate body selects (or list them, for a dry
    /// run); the asker records the termination once. With `hold`, the node puts the hold
    /// (already in Redis) in its table before it stops anything.
    #[serde(rename_all = "camelCase")]
    Terminate {
        body: Value,
        remote_address: String,
        asked_by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hold: Option<Box<crate::registry::Hold>>,
    },
    /// Lift the holds a REST release body picks.
    Release { body: Value },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub id: Uuid,
    /// The asking node: replies go to its channel.
    pub from: String,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    pub id: Uuid,
    pub node: String,
    /// The HTTP status the node's own REST answer would have had.
    pub status: u16,
    pub body: Value,
}

/// The replies to one request, as they come in.
#[derive(Debug, Default)]
pub struct Gathering {
    expected: BTreeSet<String>,
    replies: BTreeMap<String, Reply>,
}

impl Gathering {
    /// Waits for the nodes listed live when the request went out.
    pub fn new(expected: impl IntoIterator<Item = String>) -> Self {
        Gathering {
            expected: expected.into_iter().collect(),
            replies: BTreeMap::new(),
        }
    }

    /// Takes a reply; `true` once every expected node has answered. A node that was not
    /// listed (it came up meanwhile) is welcome too.
    pub fn add(&mut self, reply: Reply) -> bool {
        self.replies.insert(reply.node.clone(), reply);
        self.complete()
    }

    pub fn complete(&self) -> bool {
        self.expected.iter().all(|n| self.replies.contains_key(n))
    }

    /// The replies by node, and the nodes that did not answer.
    pub fn finish(self) -> (BTreeMap<String, Reply>, Vec<String>) {
        let missing = self
            .expected
            .iter()
            .filter(|n| !self.replies.contains_key(*n))
            .cloned()
            .collect();
        (self.replies, missing)
    }
}

/// A cluster find's answer: every node's streams in one list (each has its `nodeId`), with
/// the nodes that did not answer in time. Errors of a node (its `400` for a bad filter) win:
/// the body was the same for all.
pub fn merge_find(
    replies: &BTreeMap<String, Reply>,
    missing: &[String],
) -> Result<(Vec<Value>, Vec<String>), (u16, Value)> {
    let mut streams = Vec::new();
    for reply in replies.values() {
        match reply.status {
            200 => {
                if let Value::Array(list) = &reply.body {
                    streams.extend(list.iter().cloned());
                }
            }
            404 => {}
            status => return Err((status, reply.body.clone())),
        }
    }
    streams.sort_by_key(|s| {
        (
            s.get("createdDate").and_then(Value::as_u64).unwrap_or(0),
            s.get("mediaSessionId")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        )
    });
    Ok((streams, missing.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(node: &str, status: u16, body: Value) -> Reply {
        Reply {
            id: Uuid::nil(),
            node: node.into(),
            status,
            body,
        }
    }

    #[test]
    fn requests_and_replies_travel_as_json() {
        let request = Request {
            id: Uuid::nil(),
            from: "n1".into(),
            op: Op::Find {
                body: json!({"name": "cam"}),
            },
        };
        let text = serde_json::to_string(&request).unwrap();
        assert!(text.contains("\"op\":\"find\""), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
    }

    #[test]
    fn a_gathering_knows_who_did_not_answer() {
        let mut gathering = Gathering::new(["n1".to_string(), "n2".into(), "n3".into()]);
        assert!(!gathering.add(reply("n1", 200, json!([]))));
        assert!(!gathering.add(reply("n3", 404, json!({}))));
        let (replies, missing) = gathering.finish();
        assert_eq!(replies.len(), 2);
        assert_eq!(missing, ["n2"]);
        let mut all = Gathering::new(["n1".to_string()]);
        assert!(all.add(reply("n1", 200, json!([]))));
    }

    #[test]
    fn finds_merge_in_creation_order_and_errors_win() {
        let mut replies = BTreeMap::new();
        replies.insert(
            "n1".into(),
            reply(
                "n1",
                200,
                json!([{"mediaSessionId": "b", "createdDate": 2, "nodeId": "n1"}]),
            ),
        );
        replies.insert(
            "n2".into(),
            reply(
                "n2",
                200,
                json!([{"mediaSessionId": "a", "createdDate": 1, "nodeId": "n2"}]),
            ),
        );
        replies.insert(
            "n3".into(),
            reply("n3", 404, json!({"error": "no stream matches"})),
        );
        let (streams, missing) = merge_find(&replies, &["n4".into()]).unwrap();
        let nodes: Vec<&str> = streams
            .iter()
            .map(|s| s["nodeId"].as_str().unwrap())
            .collect();
        assert_eq!(nodes, ["n2", "n1"]);
        assert_eq!(missing, ["n4"]);
        replies.insert(
            "n3".into(),
            reply("n3", 400, json!({"error": "unknown field"})),
        );
        assert_eq!(merge_find(&replies, &[]).unwrap_err().0, 400);
    }
}
