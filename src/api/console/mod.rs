//! The operator console's feed: `GET /rest-api/console/feed`, one server-sent-events stream
//! of the whole server's live state, a `snapshot` event a second — every stream with its
//! players, bitrates, loss, last keep-alive verdict and hold; every app's hook health and
//! plugin; the process's CPU, memory and descriptors; with a cluster, every live node's
//! load as its entry in Redis says; holds and recent terminations. One
//! task builds each snapshot once, whatever the number of consoles open, and only while one
//! is: consoles share it through a `watch` channel. Behind the REST API's auth.

mod snapshot;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::AppState;
pub use snapshot::Sampler;

/// How often a snapshot is built.
pub const PERIOD: Duration = Duration::from_secs(1);

/// The shared feed: the latest snapshot's JSON, and whether its builder runs.
pub struct ConsoleFeed {
    latest: watch::Sender<Arc<str>>,
    running: Mutex<bool>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl ConsoleFeed {
    /// A feed whose builder runs in `tasks` and ends by `stop` (the server's shutdown).
    pub fn new(tasks: TaskTracker, stop: CancellationToken) -> Arc<Self> {
        Arc::new(ConsoleFeed {
            latest: watch::channel(Arc::from("")).0,
            running: Mutex::new(false),
            tasks,
            stop,
        })
    }

    /// A receiver of snapshots, starting the builder if no console had one open.
    fn subscribe(self: &Arc<Self>, state: &AppState) -> watch::Receiver<Arc<str>> {
        let receiver = self.latest.subscribe();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if !*running {
            *running = true;
            let feed = self.clone();
            let state = state.clone();
            self.tasks.spawn(async move { feed.build(state).await });
        }
        receiver
    }

    /// Builds a snapshot every [`PERIOD`] while a console reads, then stops.
    async fn build(self: Arc<Self>, state: AppState) {
        let mut sampler = Sampler::default();
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            {
                // Checked and cleared under the same lock a new console takes to see
                // whether to start the builder, so none is left without one.
                let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                if self.latest.receiver_count() == 0 {
                    *running = false;
                    return;
                }
            }
            let cluster = match &state.cluster {
                // Bounded, so a slow Redis delays this node's own figures by little.
                Some(cluster) => Some(
                    match tokio::time::timeout(PERIOD / 2, cluster.nodes()).await {
                        Ok(Ok(nodes)) => serde_json::json!({ "nodes": nodes }),
                        Ok(Err(e)) => serde_json::json!({ "nodes": [], "error": e.to_string() }),
                        Err(_) => serde_json::json!({
                            "nodes": [],
                            "error": format!("the cluster's Redis did not answer within {:?}", PERIOD / 2),
                        }),
                    },
                ),
                None => None,
            };
            let json = sampler.snapshot(&state, cluster).to_string();
            self.latest.send_replace(Arc::from(json));
        }
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}

/// `GET /rest-api/console/feed`.
pub(super) async fn feed(State(state): State<AppState>) -> Response {
    let receiver = state.console.subscribe(&state);
    let events = WatchStream::from_changes(receiver)
        .filter(|json| futures::future::ready(!json.is_empty()))
        .map(|json| {
            Ok::<_, std::convert::Infallible>(Event::default().event("snapshot").data(&*json))
        });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
