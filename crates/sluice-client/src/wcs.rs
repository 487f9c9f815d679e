//! A WCS WebSocket signalling connection, as the Flashphoner Web SDK makes one: `connection`
//! then `getUserData`; `publishStream` / `playStream` with a client-chosen `mediaSessionId`,
//! answered by `setRemoteSDP` and `notifyStreamStatusEvent`; `pong` to every `ping` (unless
//! told not to). Every server message is kept, in order, for tests to wait on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::ClientError;

/// How long an answer or a status may take.
const WAIT: Duration = Duration::from_secs(15);

/// One stream's identity on a connection.
#[derive(Debug, Clone)]
pub struct WcsStream {
    pub id: String,
    pub name: String,
    pub published: bool,
}

impl WcsStream {
    /// A new stream with a UUID v1 id, as the SDK makes them.
    pub fn new(name: &str, published: bool) -> Self {
        let id = uuid::Uuid::now_v1(&[0x53, 0x4c, 0x55, 0x49, 0x43, 0x45]).to_string();
        WcsStream {
            id,
            name: name.to_string(),
            published,
        }
    }
}

/// An open signalling connection.
pub struct WcsConnection {
    outgoing: mpsc::UnboundedSender<Message>,
    received: Arc<Mutex<Vec<Value>>>,
    arrived: Arc<Notify>,
    closed: CancellationToken,
    answer_pings: Arc<AtomicBool>,
}

impl WcsConnection {
    /// Opens `url` (e.g. `ws://127.0.0.1:8080`) and sends `connection` with `app_key` and
    /// `custom`; returns once `getUserData` has come, or with the server's `fail`.
    pub async fn connect(url: &str, app_key: &str, custom: Value) -> Result<Self, ClientError> {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| ClientError::Protocol(format!("WebSocket: {e}")))?;
        let (mut sink, mut frames) = socket.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
        let received = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let closed = CancellationToken::new();
        let answer_pings = Arc::new(AtomicBool::new(true));
        {
            let (received, arrived, closed) = (received.clone(), arrived.clone(), closed.clone());
            let (pongs, answer_pings) = (outgoing.clone(), answer_pings.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        message = queue.recv() => match message {
                            Some(m) => if sink.send(m).await.is_err() { break },
                            None => break,
                        },
                        frame = frames.next() => match frame {
                            Some(Ok(Message::Text(text))) => {
                                let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                                if value["message"] == "ping" && answer_pings.load(Ordering::Relaxed) {
                                    let _ = pongs.send(Message::text(json!({"message": "pong", "data": [null]}).to_string()));
                                }
                                received.lock().await.push(value);
                                arrived.notify_waiters();
                            }
                            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                            Some(Ok(_)) => {}
                        },
                    }
                }
                let _ = sink.close().await;
                closed.cancel();
                arrived.notify_waiters();
            });
        }
        let connection = WcsConnection {
            outgoing,
            received,
            arrived,
            closed,
            answer_pings,
        };
        connection.send(
            "connection",
            json!({
                "appKey": app_key, "mediaProviders": ["WebRTC"], "clientVersion": "2.0",
                "clientOSVersion": "sluice-client", "clientBrowserVersion": "sluice-client",
                "custom": custom,
            }),
        )?;
        let reply = connection
            .wait_for(WAIT, |m| {
                m["message"] == "getUserData" || m["message"] == "fail"
            })
            .await
            .ok_or_else(|| ClientError::Protocol("no getUserData".into()))?;
        if reply["message"] == "fail" {
            return Err(ClientError::StreamFailed(
                reply["data"][0]["info"].as_str().unwrap_or("").to_string(),
            ));
        }
        Ok(connection)
    }

    /// Sends `{"message": name, "data": [payload]}`.
    pub fn send(&self, name: &str, payload: Value) -> Result<(), ClientError> {
        self.send_text(json!({"message": name, "data": [payload]}).to_string())
    }

    /// Sends a text frame as it is (for tests of bad input).
    pub fn send_text(&self, text: String) -> Result<(), ClientError> {
        self.outgoing
            .send(Message::text(text))
            .map_err(|_| ClientError::Protocol("the connection is closed".into()))
    }

    /// Stops (or resumes) answering the server's pings.
    pub fn answer_pings(&self, answer: bool) {
        self.answer_pings.store(answer, Ordering::Relaxed);
    }

    /// Every server message so far.
    pub async fn messages(&self) -> Vec<Value> {
        self.received.lock().await.clone()
    }

    /// Waits for the first server message (from the start) that `matches`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if let Some(found) = self.received.lock().await.iter().find(|m| matches(m)) {
                return Some(found.clone());
            }
            if self.closed.is_cancelled() {
                return None;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// Waits for the status event of stream `id` with `status`; returns its object.
    pub async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Option<Value> {
        self.wait_for(timeout, |m| {
            let data = &m["data"][0];
            // A `fail` is about a stream only when it names it by `id`, as the SDK reads it.
            let for_it = match m["message"].as_str() {
                Some("notifyStreamStatusEvent") => data["mediaSessionId"] == id,
                Some("fail") => data["id"] == id,
                _ => false,
            };
            for_it && data["status"] == status
        })
        .await
        .map(|m| m["data"][0].clone())
    }

    /// Whether the server has closed the connection, waiting up to `timeout`.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.closed.cancelled())
            .await
            .is_ok()
    }

    /// Ends stream `stream` as the SDK's `stream.stop()` does.
    pub fn stop(&self, id: &str, published: bool) -> Result<(), ClientError> {
        let message = if published {
            "unPublishStream"
        } else {
            "stopStream"
        };
        self.send(
            message,
            json!({"mediaSessionId": id, "published": published}),
        )
    }

    /// Closes the socket (the SDK's `session.disconnect()`).
    pub fn disconnect(&self) {
        let _ = self.outgoing.send(Message::Close(None));
    }

    /// Sends the offer of `stream` and returns the answer, or the stream's failure.
    pub(crate) async fn offer(&self, stream: &WcsStream, sdp: &str) -> Result<String, ClientError> {
        let message = if stream.published {
            "publishStream"
        } else {
            "playStream"
        };
        self.send(
            message,
            json!({
                "mediaSessionId": stream.id, "name": stream.name, "published": stream.published,
                "hasVideo": true, "hasAudio": true, "status": "PENDING", "record": false,
                "mediaProvider": "WebRTC", "sdp": sdp, "bitrate": 0, "minBitrate": 0, "maxBitrate": 0,
            }),
        )?;
        let id = stream.id.clone();
        let reply = self
            .wait_for(WAIT, |m| {
                (m["message"] == "setRemoteSDP" && m["data"][0] == id.as_str())
                    || (m["message"] == "fail" && m["data"][0]["id"] == id.as_str())
            })
            .await
            .ok_or_else(|| ClientError::Protocol(format!("no answer for {id}")))?;
        if reply["message"] == "fail" {
            return Err(ClientError::StreamFailed(
                reply["data"][0]["info"].as_str().unwrap_or("").to_string(),
            ));
        }
        reply["data"][1]
            .as_str()
            .map(String::from)
            .ok_or_else(|| ClientError::Protocol("setRemoteSDP without an SDP".into()))
    }
}

impl Drop for WcsConnection {
    fn drop(&mut self) {
        self.disconnect();
    }
}
