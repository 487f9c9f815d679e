//! Several Sluice nodes as one server, on Redis (`cluster_redis_url`; off by default). Each
//! node keeps an entry (its id, URL, load) with a TTL and refreshes it; requests that must
//! see the whole cluster go out on one Redis channel and every live node answers on the
//! asker's own channel, within `cluster_answer_timeout`, so each node answers for its own
//! streams (plugin filters included). When Redis is down or slow, every node keeps serving
//! its own streams; cluster requests fail with a reason, and the view comes back by itself.
//! The wire format and the gathering of replies are in `protocol.rs`, without I/O.

pub mod holds;
pub mod origin;
pub mod protocol;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use origin::OriginStream;
use protocol::{Gathering, NODES, REQUESTS, Request, node_key, replies_channel};
pub use protocol::{NodeInfo, NodeLoad, Op, Reply};

/// Why a cluster request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the cluster's Redis at {url} is not usable: {why}")]
    Unavailable { url: String, why: String },
    #[error("'{0}' is not a Redis URL: {1}")]
    BadUrl(String, String),
}

/// How a node answers a request for its own part: an HTTP status and a JSON body.
pub type Answerer = Arc<dyn Fn(Op) -> BoxFuture<'static, (u16, serde_json::Value)> + Send + Sync>;

/// This node's membership of the cluster.
pub struct Cluster {
    url: String,
    client: redis::Client,
    node_id: String,
    /// Set once the HTTP listener is bound.
    http_url: std::sync::OnceLock<String>,
    started_at: u64,
    ttl: Duration,
    answer_timeout: Duration,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    pending: Mutex<HashMap<Uuid, mpsc::UnboundedSender<Reply>>>,
    /// This node's streams (for its entry's load) and holds (kept in step with Redis).
    registry: Arc<crate::registry::Registry>,
    cpu: Mutex<crate::procstat::CpuMeter>,
    /// The holds known to be in Redis (see `holds.rs`).
    known_holds: Mutex<HashSet<u64>>,
}

impl Cluster {
    pub fn new(
        url: &str,
        node_id: &str,
        ttl: Duration,
        answer_timeout: Duration,
        registry: Arc<crate::registry::Registry>,
    ) -> Result<Arc<Self>, ClusterError> {
        let client = redis::Client::open(url)
            .map_err(|e| ClusterError::BadUrl(url.to_string(), e.to_string()))?;
        // Every node keeps every node's holds: ids must not collide.
        registry.use_cluster_hold_ids();
        Ok(Arc::new(Cluster {
            url: url.to_string(),
            client,
            node_id: node_id.to_string(),
            http_url: std::sync::OnceLock::new(),
            started_at: crate::registry::now_ms(),
            ttl,
            answer_timeout,
            connection: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            registry,
            cpu: Mutex::default(),
            known_holds: Mutex::default(),
        }))
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Where this node's HTTP listener answers, for its entry.
    pub fn set_http_url(&self, url: String) {
        let _ = self.http_url.set(url);
    }

    fn unavailable(&self, why: impl ToString) -> ClusterError {
        ClusterError::Unavailable {
            url: self.url.clone(),
            why: why.to_string(),
        }
    }

    /// A connection to Redis (one, multiplexed, reconnecting), made on first use.
    async fn connection(&self) -> Result<ConnectionManager, ClusterError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let made = tokio::time::timeout(
            self.answer_timeout,
            ConnectionManager::new(self.client.clone()),
        )
        .await
        .map_err(|_| self.unavailable("no connection within the answer timeout"))?
        .map_err(|e| self.unavailable(e))?;
        *slot = Some(made.clone());
        Ok(made)
    }

    /// Runs one command within the answer timeout.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        let mut connection = self.connection().await?;
        tokio::time::timeout(self.answer_timeout, cmd.query_async::<T>(&mut connection))
            .await
            .map_err(|_| self.unavailable("Redis did not answer within the answer timeout"))?
            .map_err(|e| self.unavailable(e))
    }

    /// Refreshes this node's entry: written with its TTL, and scored in the node list by
    /// when it expires.
    async fn refresh(&self) -> Result<(), ClusterError> {
        let now = crate::registry::now_ms();
        let (mut publishers, mut players) = (0, 0);
        for ((_, published, _), count) in self.registry.census() {
            if published {
                publishers += count as usize;
            } else {
                players += count as usize;
            }
        }
        let streams = publishers + players;
        let cpu_percent = self.cpu.lock().unwrap_or_else(|e| e.into_inner()).percent();
        let info = NodeInfo {
            node_id: self.node_id.clone(),
            http_url: self.http_url.get().cloned(),
            streams,
            started_at: self.started_at,
            refreshed_at: now,
            load: NodeLoad {
                publishers,
                players,
                cpu_percent,
                rss_bytes: crate::procstat::rss_bytes(),
                open_fds: crate::procstat::open_fds(),
            },
        };
        let ttl_ms = self.ttl.as_millis() as u64;
        let json = serde_json::to_string(&info).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(node_key(&self.node_id))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(NODES)
            .arg(now + ttl_ms)
            .arg(&self.node_id)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(NODES)
            .arg("-inf")
            .arg(now)
            .ignore();
        self.run_pipe(&pipe).await
    }

    /// Runs a pipeline within the answer timeout, ignoring its replies.
    async fn run_pipe(&self, pipe: &redis::Pipeline) -> Result<(), ClusterError> {
        let mut connection = self.connection().await?;
        tokio::time::timeout(self.answer_timeout, pipe.query_async::<()>(&mut connection))
            .await
            .map_err(|_| self.unavailable("Redis did not answer within the answer timeout"))?
            .map_err(|e| self.unavailable(e))
    }

    /// The live nodes: those whose entry has not expired.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let now = crate::registry::now_ms();
        let names: Vec<String> = self
            .run(redis::cmd("ZRANGEBYSCORE").arg(NODES).arg(now).arg("+inf"))
            .await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut get = redis::cmd("MGET");
        for name in &names {
            get.arg(node_key(name));
        }
        let entries: Vec<Option<String>> = self.run(&get).await?;
        let mut nodes: Vec<NodeInfo> = entries
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    /// Asks every live node and gathers their replies for at most the answer timeout: the
    /// replies by node, and the nodes that did not answer.
    pub async fn ask(
        &self,
        op: Op,
    ) -> Result<(BTreeMap<String, Reply>, Vec<String>), ClusterError> {
        let nodes = self.nodes().await?;
        let mut gathering = Gathering::new(nodes.into_iter().map(|n| n.node_id));
        let id = Uuid::new_v4();
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.lock_pending().insert(id, tx);
        let request = Request {
            id,
            from: self.node_id.clone(),
            op,
        };
        let sent = self
            .run::<()>(
                redis::cmd("PUBLISH")
                    .arg(REQUESTS)
                    .arg(serde_json::to_string(&request).unwrap_or_default()),
            )
            .await;
        if let Err(e) = sent {
            self.lock_pending().remove(&id);
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + self.answer_timeout;
        while !gathering.complete() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(reply)) => {
                    gathering.add(reply);
                }
                _ => break,
            }
        }
        self.lock_pending().remove(&id);
        Ok(gathering.finish())
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Uuid, mpsc::UnboundedSender<Reply>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps this node's entry fresh and answers requests until `stop`; then leaves the list.
    pub fn spawn(self: &Arc<Self>, answer: Answerer, tasks: &TaskTracker, stop: CancellationToken) {
        let this = self.clone();
        let heartbeat_stop = stop.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(this.ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut down = false;
            loop {
                tokio::select! {
                    _ = heartbeat_stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let refreshed = match this.refresh().await {
                    Ok(()) => this.sync_holds(&this.registry).await,
                    Err(e) => Err(e),
                };
                match refreshed {
                    Ok(()) if down => {
                        down = false;
                        tracing::info!(node = %this.node_id, "cluster: Redis is back; this node is listed again");
                    }
                    Ok(()) => {}
                    Err(e) if !down => {
                        down = true;
                        tracing::warn!(error = %e, "cluster: cannot refresh this node's entry or holds; serving its own streams meanwhile, with the holds it has");
                    }
                    Err(_) => {}
                }
            }
            // A clean stop leaves the list at once rather than at the TTL.
            let mut pipe = redis::pipe();
            pipe.cmd("DEL").arg(node_key(&this.node_id)).ignore();
            pipe.cmd("ZREM").arg(NODES).arg(&this.node_id).ignore();
            if let Ok(mut connection) = this.connection().await {
                let _ = tokio::time::timeout(
                    this.answer_timeout,
                    pipe.query_async::<()>(&mut connection),
                )
                .await;
            }
        });
        let this = self.clone();
        let listener_tasks = tasks.clone();
        tasks.spawn(async move { this.listen(answer, listener_tasks, stop).await });
    }

    /// Subscribes to the requests and this node's replies, reconnecting while Redis is away.
    async fn listen(
        self: Arc<Self>,
        answer: Answerer,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) {
        let mine = replies_channel(&self.node_id);
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(REQUESTS).await?;
                pubsub.subscribe(&mine).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                _ = stop.cancelled() => return,
                made = tokio::time::timeout(self.answer_timeout, subscribed) => made,
            };
            let Ok(Ok(mut pubsub)) = pubsub else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            };
            let mut messages = pubsub.on_message();
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => return,
                    message = messages.next() => message,
                };
                let Some(message) = message else { break };
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                if message.get_channel_name() == REQUESTS {
                    let Ok(request) = serde_json::from_str::<Request>(&payload) else {
                        tracing::debug!("cluster: an unreadable request was ignored");
                        continue;
                    };
                    let this = self.clone();
                    let answer = answer.clone();
                    tasks.spawn(async move {
                        let (status, body) = answer(request.op).await;
                        let reply = Reply {
                            id: request.id,
                            node: this.node_id.clone(),
                            status,
                            body,
                        };
                        let _ = this
                            .run::<()>(
                                redis::cmd("PUBLISH")
                                    .arg(replies_channel(&request.from))
                                    .arg(serde_json::to_string(&reply).unwrap_or_default()),
                            )
                            .await;
                    });
                } else if let Ok(reply) = serde_json::from_str::<Reply>(&payload) {
                    let sender = self.lock_pending().get(&reply.id).cloned();
                    if let Some(sender) = sender {
                        let _ = sender.send(reply);
                    }
                }
            }
            // The subscription ended (Redis went away): subscribe again.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
