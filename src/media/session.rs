//! One WebRTC session's life: its stop handle, its tasks, and the teardown that leaves
//! nothing behind (RTCP BYE and DTLS close_notify out, tasks ended, sockets released,
//! final status announced, record removed).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::goodbye::Goodbye;

use crate::registry::{Registry, StopHandle, StopReason};

/// How long a teardown waits for a session's own tasks to end before it reports them.
const TASK_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The registry's handle on a WebRTC session: the first stop reason starts the teardown.
pub struct SessionControl {
    stop_tx: Mutex<Option<oneshot::Sender<StopReason>>>,
}

impl SessionControl {
    pub fn new() -> (Arc<Self>, oneshot::Receiver<StopReason>) {
        let (tx, rx) = oneshot::channel();
        (
            Arc::new(SessionControl {
                stop_tx: Mutex::new(Some(tx)),
            }),
            rx,
        )
    }
}

impl StopHandle for SessionControl {
    fn stop(&self, reason: StopReason) {
        let tx = self
            .stop_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(reason);
        }
    }
}

/// The connection a teardown closes.
pub enum Peer {
    Webrtc(Arc<RTCPeerConnection>),
    /// A sans-I/O player's task: it sends the BYE (with this info) and closes on its own.
    Sansio(oneshot::Sender<String>),
}

/// What a session's teardown needs.
pub struct Session {
    pub id: Uuid,
    pub peer: Peer,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
    pub registry: Arc<Registry>,
}

impl Session {
    /// Waits for the stop reason, then tears the session down completely. `forget` removes
    /// whatever the media layer keeps about the session (e.g. a publisher's relay).
    pub async fn supervise(self, stop: oneshot::Receiver<StopReason>, forget: impl FnOnce(Uuid)) {
        let reason = stop
            .await
            .unwrap_or_else(|_| StopReason::ConnectionLost("session dropped".into()));
        let (_, info) = reason.final_status(true);
        match self.peer {
            Peer::Webrtc(pc) => {
                self.cancel.cancel();
                send_bye(&pc, &info).await;
                // Closing sends DTLS close_notify, stops ICE and releases the session's UDP
                // sockets.
                if let Err(e) = pc.close().await {
                    tracing::warn!(stream = %self.id, error = %e, "peer connection close reported an error");
                }
            }
            Peer::Sansio(close) => {
                let _ = close.send(info);
                self.cancel.cancel();
            }
        }
        self.tasks.close();
        if tokio::time::timeout(TASK_DRAIN_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!(stream = %self.id, left = self.tasks.len(), "session tasks did not end after stop");
        }
        forget(self.id);
        // The registry logs the end, once, with its cause and source.
        self.registry.finish(self.id, &reason);
    }
}

/// RTCP BYE for every SSRC the session sends or receives, so that the client learns of the
/// end at once, whichever direction its media flows.
async fn send_bye(pc: &RTCPeerConnection, reason: &str) {
    let mut sources = Vec::new();
    for transceiver in pc.get_transceivers().await {
        let sender = transceiver.sender().await;
        if sender.track().await.is_some() {
            sources.extend(
                sender
                    .get_parameters()
                    .await
                    .encodings
                    .iter()
                    .map(|e| e.ssrc),
            );
        }
        for track in transceiver.receiver().await.tracks().await {
            sources.push(track.ssrc());
        }
    }
    sources.retain(|ssrc| *ssrc != 0);
    if sources.is_empty() {
        return;
    }
    let bye = Goodbye {
        sources,
        reason: Bytes::copy_from_slice(&reason.as_bytes()[..reason.len().min(255)]),
    };
    if let Err(e) = pc.write_rtcp(&[Box::new(bye)]).await {
        tracing::debug!(error = %e, "RTCP BYE not sent");
    }
}
