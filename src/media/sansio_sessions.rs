//! Sessions on the sans-I/O engine — WHEP players (`rtc_player`) and WHIP publishers
//! (`rtc_ingest`): negotiation, registration and the supervisor, the same steps as a
//! webrtc-rs session's in `mod.rs`.

use std::sync::atomic::Ordering;

use super::*;
use rtc_player::{Running, SansioIo};
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;

impl Media {
    pub(super) fn play_sansio(
        self: &Arc<Self>,
        io: &SansioIo,
        request: OfferRequest,
        publisher_id: Uuid,
        tracks: &[Arc<RelayTrack>],
        wanted: &[(Arc<RelayTrack>, RTCRtpCodecCapability)],
    ) -> Result<SessionAnswer, MediaError> {
        let id = request.media_session_id;
        let settings = self.config.load().settings.clone();
        let stream_id = format!("sluice-{}", request.name);
        let prepared = rtc_player::prepare(io, &settings, &request.sdp, wanted, &stream_id)?;
        let kinds = prepared.kinds();
        let relays: Vec<_> = wanted
            .iter()
            .filter(|(relay, _)| kinds.contains(&relay.kind))
            .map(|(relay, _)| relay.clone())
            .collect();
        let name = request.name.clone();
        let new = player_stream(request, publisher_id, &relays);
        let (control, stop_rx) = SessionControl::new();
        // The publisher may have ended while this player negotiated (see `play`).
        if tracks.iter().any(|t| t.has_ended()) {
            return Err(RegistryError::NotPublishing(name).into());
        }
        self.register(new, &control)?;
        let sdp = prepared.answer.clone();
        let etag = self.start_sansio(id, control, stop_rx, |run| prepared.spawn(io, run));
        Ok(SessionAnswer { id, sdp, etag })
    }

    /// WHIP on the sans-I/O engine: the publisher's answer, registration, its task.
    pub(super) fn publish_sansio(
        self: &Arc<Self>,
        io: &SansioIo,
        request: OfferRequest,
        summary: &offer::OfferSummary,
    ) -> Result<SessionAnswer, MediaError> {
        let id = request.media_session_id;
        let settings = self.config.load().settings.clone();
        let prepared = rtc_ingest::prepare(io, &settings, &request.sdp)?;
        let new = publisher_stream(request, summary, &prepared.answer);
        let (control, stop_rx) = SessionControl::new();
        self.register(new, &control)?;
        let wiring = self.ingest_wiring(id, summary.sending.len(), StopReason::ClientLeft);
        let sdp = prepared.answer.clone();
        let etag = self.start_sansio(id, control, stop_rx, |run| prepared.spawn(io, run, wiring));
        Ok(SessionAnswer { id, sdp, etag })
    }

    /// A registered publisher (or edge pull) `id` on the sans-I/O engine, offering
    /// `expected_tracks` to players: its tracks' entry for the players, and what its task
    /// feeds them through.
    pub(super) fn ingest_wiring(
        &self,
        id: Uuid,
        expected_tracks: usize,
        on_bye: StopReason,
    ) -> rtc_ingest::Wiring {
        let publisher = Publisher::new(expected_tracks);
        let wiring = rtc_ingest::Wiring {
            publisher: Arc::downgrade(&publisher),
            ledger: self.relays.clone(),
            on_bye,
        };
        self.lock_publishers().insert(id, publisher);
        wiring
    }

    /// Starts a registered session's task (`spawn`, given what it runs with), makes its ICE
    /// reachable by `PATCH` and supervises it; returns the entity-tag of its ICE session.
    fn start_sansio(
        self: &Arc<Self>,
        id: Uuid,
        control: Arc<SessionControl>,
        stop_rx: tokio::sync::oneshot::Receiver<StopReason>,
        spawn: impl FnOnce(Running) -> Arc<dyn ice::SansioIce>,
    ) -> String {
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let (close_tx, close) = tokio::sync::oneshot::channel();
        self.sansio_sessions.fetch_add(1, Ordering::Relaxed);
        let ice = spawn(Running {
            id,
            registry: self.registry.clone(),
            control,
            tasks: tasks.clone(),
            cancel: cancel.clone(),
            close,
            live: self.sansio_sessions.clone(),
        });
        let peer = ice::LivePeer::new(ice::IcePeer::Sansio(ice));
        let etag = peer.etag();
        self.lock_peers().insert(id, peer);
        self.spawn_supervisor(id, session::Peer::Sansio(close_tx), tasks, cancel, stop_rx);
        etag
    }
}
