//! `StreamStatusEvent`: every status change of a stream of an app that lists the method is
//! posted to its web server, in order, one app's events after another's never delayed.
//! Each carries the server's `eventId` and the stream's `seq` (1, 2, … with no gaps), and
//! each stream has exactly one final event, so a web server can tell a missed event from a
//! duplicate. Notification only: a failure is counted and logged (rate-limited), nothing else.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::HookClient;
use crate::config::ConfigStore;
use crate::registry::{Registry, StatusEvent};

pub const STATUS_METHOD: &str = "StreamStatusEvent";
/// Events queued per app before new ones are dropped (and counted).
const QUEUE: usize = 4096;

/// How the notifier ends.
#[derive(Clone)]
pub struct Ending {
    /// Deliver what has happened so far, then end (a graceful shutdown).
    pub flush: CancellationToken,
    /// End now, delivered or not.
    pub stop: CancellationToken,
}

/// Follows the registry's event bus until `ending` says; its tasks run in `tasks`.
pub fn spawn(
    registry: Arc<Registry>,
    store: Arc<ConfigStore>,
    client: HookClient,
    tasks: TaskTracker,
    ending: Ending,
) {
    let deliveries = tasks.clone();
    tasks.spawn(async move {
        let stop = ending.stop.clone();
        let mut events = registry.every_event();
        let mut queues: HashMap<String, mpsc::Sender<Value>> = HashMap::new();
        let mut flushing = false;
        loop {
            let event = if flushing {
                // Whatever is already published, then the queues close and drain.
                match events.try_recv() {
                    Ok(event) => Some(event),
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ending.flush.cancelled() => { flushing = true; continue; }
                    event = events.recv() => event,
                }
            };
            let Some(event): Option<StatusEvent> = event else {
                return;
            };
            // An edge relay's events are the cluster's plumbing: the origin reports the stream.
            if event.edge {
                continue;
            }
            let config = store.load();
            let Some(app) = config.apps.get(&event.app_key) else {
                continue;
            };
            let (Some(_), Some(method)) = (app.url.as_ref(), app.methods.get(STATUS_METHOD)) else {
                continue;
            };
            let mut body = json!({
                "nodeId": registry.node_id(),
                "appKey": event.app_key,
                "sessionId": event.session_id,
                "mediaSessionId": event.media_session_id,
                "name": event.name,
                "custom": event.custom,
                "published": event.published,
                "status": event.status,
                "info": event.info,
                "eventId": event.event_id,
                "seq": event.seq,
                "final": event.status.is_final(),
                "mediaProvider": "WebRTC",
            });
            if let Some(hint) = event.hint {
                body["hint"] = serde_json::to_value(hint).unwrap_or_default();
            }
            if let Value::Object(object) = &mut body {
                super::exclude(object, &method.rest_exclude);
            }
            let queue = queues.entry(event.app_key.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                deliveries.spawn(deliver(
                    event.app_key.clone(),
                    rx,
                    store.clone(),
                    client.clone(),
                    stop.clone(),
                ));
                tx
            });
            if queue.try_send(body).is_err() {
                client.stats.skipped(
                    &event.app_key,
                    STATUS_METHOD,
                    &super::HookError::Saturated(QUEUE),
                );
            }
        }
    });
}

/// Posts one app's events in order, to the URL in force when each is sent.
async fn deliver(
    app: String,
    mut queue: mpsc::Receiver<Value>,
    config: Arc<ConfigStore>,
    client: HookClient,
    stop: CancellationToken,
) {
    loop {
        let body = tokio::select! {
            _ = stop.cancelled() => return,
            body = queue.recv() => match body { Some(b) => b, None => return },
        };
        let config = config.load();
        let Some(url) = config.apps.get(&app).and_then(|a| a.url.clone()) else {
            continue;
        };
        let _ = client
            .call(
                &app,
                &url,
                STATUS_METHOD,
                &body,
                super::CallLimits::from(&config.settings),
            )
            .await;
    }
}
