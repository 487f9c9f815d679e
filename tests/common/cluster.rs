//! What the cluster tests share: a Sluice node on a test `redis-server`, REST calls that
//! also return the `Sluice-Unanswered-Nodes` header, the cluster view, and a stream's last
//! status `info`. Included by `#[path]` next to `common` (which it uses as `super::common`).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::common::{self, TestServer};
use super::redis::Redis;
use serde_json::{Value, json};

pub fn node(redis: &Redis, id: &str) -> TestServer {
    TestServer::start(&format!(
        "rest_api_https_port=0\nnode_id={id}\ncluster_redis_url={}\ncluster_node_ttl=1500\ncluster_answer_timeout=500\n",
        redis.url()
    ))
}

/// A node whose `defaultApp` sends keep-alives every `interval_ms` and status events to
/// the web back end at `backend`.
pub fn hooked_node(
    redis: &Redis,
    id: &str,
    backend: &std::net::SocketAddr,
    interval_ms: u64,
) -> TestServer {
    let apps = format!(
        "[apps.defaultApp]\nurl = \"http://{backend}/api\"\n[apps.defaultApp.methods.StreamKeepAliveEvent]\n[apps.defaultApp.methods.StreamStatusEvent]\n"
    );
    TestServer::start_with(
        &format!(
            "{}keep_alive_streaming_sessions_enabled=true\nstreaming_sessions_keep_alive_interval={interval_ms}\nrest_api_https_port=0\nnode_id={id}\ncluster_redis_url={}\ncluster_node_ttl=1500\ncluster_answer_timeout=500\n",
            common::LOOPBACK,
            redis.url()
        ),
        Some(&apps),
    )
}

pub async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Option<String>, Value) {
    let response = server
        .http_client
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let unanswered = response
        .headers()
        .get("sluice-unanswered-nodes")
        .map(|v| v.to_str().unwrap().to_string());
    (
        status,
        unanswered,
        response.json().await.unwrap_or(Value::Null),
    )
}

pub async fn view(server: &TestServer) -> (u16, Value) {
    let response = server
        .http_client
        .get(server.url("/rest-api/cluster"))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

pub fn node_ids(view: &Value) -> Vec<String> {
    view["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| n["nodeId"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub async fn wait_nodes(server: &TestServer, expected: &[&str], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = view(server).await;
        if status == 200 && node_ids(&body) == expected {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the view is {status} {body}, waited for {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Nodes n1, n2 and n3 on `redis`, once each is in n1's view.
pub async fn three_nodes(redis: &Redis) -> [TestServer; 3] {
    let nodes = ["n1", "n2", "n3"].map(|id| node(redis, id));
    wait_nodes(&nodes[0], &["n1", "n2", "n3"], Duration::from_secs(10)).await;
    nodes
}

/// Follows the status streams of `sessions` from now on; resolves to each one's final `info`.
pub fn final_infos(
    sessions: &[&sluice_client::ClientSession],
) -> tokio::task::JoinHandle<Vec<String>> {
    let watch: Vec<String> = sessions
        .iter()
        .map(|s| s.links.events.clone().unwrap())
        .collect();
    tokio::spawn(async move {
        let mut infos = Vec::new();
        for url in watch {
            infos.push(final_info(&url).await);
        }
        infos
    })
}

/// The `info` of the last status event of a stream's status stream (read to its end).
pub async fn final_info(events_url: &str) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let events = common::read_status_events(&client, events_url, Duration::from_secs(10)).await;
    events
        .last()
        .map(|e| e["info"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// A web back end on a loopback port that records every hook call by method.
#[derive(Clone, Default)]
pub struct Backend {
    pub calls: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
}

impl Backend {
    pub async fn serve(&self) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let recorder = self.clone();
        let app = axum::Router::new().route(
            "/api/{method}",
            axum::routing::post(
                move |axum::extract::Path(method): axum::extract::Path<String>,
                      axum::Json(body): axum::Json<Value>| {
                    let recorder = recorder.clone();
                    async move {
                        recorder.calls.lock().unwrap().push((method, body));
                        axum::Json(json!({}))
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (addr, task)
    }

    /// How many calls of `method` each stream got.
    pub fn per_stream(&self, method: &str) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for (m, body) in self.calls.lock().unwrap().iter() {
            if m == method {
                let id = body["mediaSessionId"].as_str().unwrap_or("").to_string();
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        counts
    }

    pub fn finals(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for (m, body) in self.calls.lock().unwrap().iter() {
            if m == "StreamStatusEvent" && body["final"] == true {
                let id = body["mediaSessionId"].as_str().unwrap_or("").to_string();
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        counts
    }
}
