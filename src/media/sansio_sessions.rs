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
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let (close_tx, close) = tokio::sync::oneshot::channel();
        let answer = prepared.answer.clone();
        self.sansio_sessions.fetch_add(1, Ordering::Relaxed);
        let ice = prepared.spawn(
            io,
            Running {
                id,
                registry: self.registry.clone(),
                control,
                tasks: tasks.clone(),
                cancel: cancel.clone(),
                close,
                live: self.sansio_sessions.clone(),
            },
        );
        let peer = ice::LivePeer::new(ice::IcePeer::Sansio(ice));
        let etag = peer.etag();
        self.lock_peers().insert(id, peer);
        self.spawn_supervisor(id, session::Peer::Sansio(close_tx), tasks, cancel, stop_rx);
        Ok(SessionAnswer {
            id,
            sdp: answer,
            etag,
        })
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
        let mut new = NewStream::publisher(&request.name, &request.app_key);
        new.media_session_id = Some(id);
        new.session_id = request
            .session_id
            .clone()
            .unwrap_or_else(|| resource_path(id));
        new.remote_address = request.remote_address;
        new.media_kinds = kinds(&summary.sending);
        new.custom = request.custom;
        (new.audio_codec, new.video_codec) = offer::agreed_codecs(&prepared.answer);
        new.bearer = request.bearer;
        let (control, stop_rx) = SessionControl::new();
        self.register(new, &control)?;
        let publisher = Arc::new(Publisher {
            expected_tracks: summary.sending.len(),
            tracks: watch::channel(Vec::new()).0,
        });
        let wiring = rtc_ingest::Wiring {
            publisher: Arc::downgrade(&publisher),
            ledger: self.relays.clone(),
            on_bye: StopReason::ClientLeft,
        };
        self.lock_publishers().insert(id, publisher);
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let (close_tx, close) = tokio::sync::oneshot::channel();
        let answer = prepared.answer.clone();
        self.sansio_sessions.fetch_add(1, Ordering::Relaxed);
        let ice = prepared.spawn(
            io,
            Running {
                id,
                registry: self.registry.clone(),
                control,
                tasks: tasks.clone(),
                cancel: cancel.clone(),
                close,
                live: self.sansio_sessions.clone(),
            },
            wiring,
        );
        let peer = ice::LivePeer::new(ice::IcePeer::Sansio(ice));
        let etag = peer.etag();
        self.lock_peers().insert(id, peer);
        self.spawn_supervisor(id, session::Peer::Sansio(close_tx), tasks, cancel, stop_rx);
        Ok(SessionAnswer {
            id,
            sdp: answer,
            etag,
        })
    }
}
