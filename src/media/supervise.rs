//! Following a live session: the publisher's incoming tracks (each becomes a relay), the
//! peer connection's state (`PLAYING` once connected; a broken or never-connected session is
//! stopped), a player's RTCP (key-frame requests go to the publisher, BYE stops it), the
//! supervisor that tears a session down, and stopping every session at shutdown.

use super::*;

/// Reads a player's RTCP until the session ends: PLI/FIR ask the publisher for a key frame,
/// BYE means the player left.
pub(super) async fn read_player_rtcp(
    sender: Arc<webrtc::rtp_transceiver::rtp_sender::RTCRtpSender>,
    relay: Arc<RelayTrack>,
    control: Arc<SessionControl>,
    cancel: CancellationToken,
) {
    loop {
        let read = tokio::select! {
            _ = cancel.cancelled() => break,
            read = sender.read_rtcp() => read,
        };
        let Ok((packets, _)) = read else { break };
        for packet in packets {
            let any = packet.as_any();
            if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                relay.request_keyframe().await;
            } else if any.is::<Goodbye>() {
                control.stop(StopReason::ClientLeft);
            }
        }
    }
}

impl Media {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_publisher_track(
        &self,
        pc: &Arc<RTCPeerConnection>,
        id: Uuid,
        publisher: &Arc<Publisher>,
        control: &Arc<SessionControl>,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
        // What the client's BYE means: a publisher that left, or, for an edge, the origin's.
        on_bye: StopReason,
    ) {
        let weak_pc = Arc::downgrade(pc);
        let publisher = Arc::downgrade(publisher);
        let registry = self.registry.clone();
        let ledger = self.relays.clone();
        let control = control.clone();
        let tasks = tasks.clone();
        let cancel = cancel.clone();
        pc.on_track(Box::new(move |remote, receiver, transceiver| {
            let kind = match remote.kind() {
                RTPCodecType::Audio => MediaKind::Audio,
                _ => MediaKind::Video,
            };
            tracing::debug!(
                stream = %id,
                ?kind,
                codec = %remote.codec().capability.mime_type,
                ssrc = remote.ssrc(),
                mid = ?transceiver.mid(),
                "publisher track arrived"
            );
            let relay = RelayTrack::new(
                kind,
                remote.codec().capability,
                remote.ssrc(),
                relay::Upstream::Webrtc(weak_pc.clone()),
                &ledger,
            );
            tasks.spawn(relay.clone().pump(remote, cancel.clone()));
            let control = control.clone();
            let cancel = cancel.clone();
            let on_bye = on_bye.clone();
            tasks.spawn(async move {
                loop {
                    let read = tokio::select! {
                        _ = cancel.cancelled() => break,
                        read = receiver.read_rtcp() => read,
                    };
                    let Ok((packets, _)) = read else { break };
                    if packets.iter().any(|p| p.as_any().is::<Goodbye>()) {
                        control.stop(on_bye.clone());
                    }
                }
            });
            if let Some(publisher) = publisher.upgrade()
                && publisher.add_track(id, relay)
            {
                registry.set_status(id, Status::Publishing, "");
            }
            Box::pin(async {})
        }));
    }

    /// Follows the peer connection: a player is `PLAYING` once connected (and asks for a key
    /// frame); a broken connection stops the session; one that never connects is stopped.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_state_change<F>(
        &self,
        pc: &Arc<RTCPeerConnection>,
        id: Uuid,
        is_player: bool,
        control: &Arc<SessionControl>,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
        relays: F,
    ) where
        F: Fn() -> Vec<Arc<RelayTrack>> + Send + Sync + 'static,
    {
        pc.on_ice_connection_state_change(Box::new(move |state| {
            tracing::debug!(stream = %id, player = is_player, %state, "ICE state");
            Box::pin(async {})
        }));
        let registry = self.registry.clone();
        let control_for_state = control.clone();
        let tasks_for_state = tasks.clone();
        pc.on_peer_connection_state_change(Box::new(move |state| {
            tracing::debug!(stream = %id, player = is_player, %state, "connection state");
            match state {
                RTCPeerConnectionState::Connected if is_player => {
                    registry.set_status(id, Status::Playing, "");
                    for relay in relays() {
                        tasks_for_state.spawn(async move { relay.request_keyframe().await });
                    }
                }
                RTCPeerConnectionState::Failed => {
                    control_for_state.stop(StopReason::ConnectionLost("ICE or DTLS failed".into()));
                }
                _ => {}
            }
            Box::pin(async {})
        }));
        let registry = self.registry.clone();
        let control = control.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(CONNECT_TIMEOUT) => {
                    if registry.get(id).is_some_and(|r| r.status == Status::Pending) {
                        control.stop(StopReason::ConnectionLost(format!(
                            "no media within {} s", CONNECT_TIMEOUT.as_secs()
                        )));
                    }
                }
            }
        });
    }

    pub(super) fn spawn_supervisor(
        self: &Arc<Self>,
        id: Uuid,
        peer: session::Peer,
        tasks: TaskTracker,
        cancel: CancellationToken,
        stop_rx: tokio::sync::oneshot::Receiver<StopReason>,
    ) {
        let session = Session {
            id,
            peer,
            tasks,
            cancel,
            registry: self.registry.clone(),
        };
        let media = Arc::downgrade(self);
        self.tasks.spawn(session.supervise(stop_rx, move |id| {
            if let Some(media) = media.upgrade() {
                media.lock_publishers().remove(&id);
                media.lock_peers().remove(&id);
            }
        }));
    }

    /// Stops every session (server shutdown) and waits until they are gone or `deadline`.
    /// Returns how many were still live then.
    pub async fn stop_all(&self, reason: &str, deadline: tokio::time::Instant) -> usize {
        for record in self.registry.find(|_| true) {
            self.registry
                .stop(record.media_session_id, StopReason::server(reason));
        }
        while !self.registry.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.registry.len()
    }
}
