//! Players on the sans-I/O `rtc` engine (`media_rtc_players`): negotiation of a WHEP
//! player's offer, then one task per player that owns its peer connection and drives it —
//! datagrams in from the mux socket (`divert`), the publisher's packets in from the relay
//! rings, encrypted datagrams out through the batched lanes (`batch_udp::Output`), timers,
//! and the player's RTCP (PLI/FIR to the publisher, BYE ends the session). No async layer,
//! no per-packet task hop: a forwarded packet is a header rewrite, the engine's SRTP and a
//! queue push.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::Registry as Interceptors;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_nack, configure_rtcp_reports,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::goodbye::Goodbye;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;

use super::batch_udp::Output;
use super::divert::{Divert, Inbound};
use super::relay::RelayTrack;
use super::session::SessionControl;
use super::{CONNECT_TIMEOUT, MediaError};
use crate::config::Settings;
use crate::registry::{MediaKind, Registry, Status, StopHandle, StopReason};

/// Datagrams from a player's address queued for its task at most.
const INBOUND_QUEUE: usize = 256;

/// The mux socket's side the sans-I/O players use.
pub struct PlayerIo {
    pub output: Output,
    pub divert: Arc<Divert>,
    /// The mux socket's address as the candidates announce it.
    pub local: SocketAddr,
    /// The addresses announced as host candidates (the socket's port on each).
    pub candidates: Vec<SocketAddr>,
}

/// One track a player receives.
struct Feed {
    relay: Arc<RelayTrack>,
    track_id: String,
    ssrc: u32,
    payload_type: u8,
}

/// A negotiated player, not yet running.
pub struct Prepared {
    pc: RTCPeerConnection,
    ufrag: String,
    feeds: Vec<Feed>,
    pub answer: String,
}

fn codec_of(c: &RTCRtpCodecCapability) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: c.mime_type.clone(),
        clock_rate: c.clock_rate,
        channels: c.channels,
        sdp_fmtp_line: c.sdp_fmtp_line.clone(),
        rtcp_feedback: c
            .rtcp_feedback
            .iter()
            .map(|f| RTCPFeedback {
                typ: f.typ.clone(),
                parameter: f.parameter.clone(),
            })
            .collect(),
    }
}

fn engine_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::Internal(format!("rtc engine: {e}"))
}

/// Random ICE credentials: `len` hex digits (at most 32).
fn random_text(len: usize) -> String {
    let mut text = Uuid::new_v4().simple().to_string();
    text.truncate(len);
    text
}

/// Answers `offer` with a track per `(relay, codec)`: an ICE-lite answer whose candidates
/// are the mux socket's.
pub fn prepare(
    io: &PlayerIo,
    settings: &Settings,
    offer: &str,
    tracks: &[(Arc<RelayTrack>, RTCRtpCodecCapability)],
    stream_id: &str,
) -> Result<Prepared, MediaError> {
    let mut media = MediaEngine::default();
    media.register_default_codecs().map_err(engine_error)?;
    let interceptors = configure_rtcp_reports(configure_nack(Interceptors::new(), &mut media));
    let ufrag = random_text(16);
    let setting = SettingEngineBuilder::new()
        .with_lite(true)
        // The client's ClientHello starts DTLS as soon as its ICE has a pair; as the DTLS
        // client the server would wait for its own connected state and a retransmit.
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_ice_credentials(ufrag.clone(), random_text(32))
        .with_ice_timeouts(
            Some(settings.ice_disconnected_timeout),
            Some(settings.ice_failed_timeout),
            Some(Duration::from_secs(1)),
        )
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media)
        .with_setting_engine(setting)
        .with_interceptor_registry(interceptors)
        .build(Instant::now())
        .map_err(engine_error)?;
    let mut pending = Vec::new();
    for (relay, codec) in tracks {
        let (kind, name) = match relay.kind {
            MediaKind::Audio => (RtpCodecKind::Audio, "audio"),
            MediaKind::Video => (RtpCodecKind::Video, "video"),
        };
        let ssrc = Uuid::new_v4().as_u128() as u32;
        let track = MediaStreamTrack::new(
            stream_id.to_owned(),
            name.to_owned(),
            name.to_owned(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec_of(codec),
                ..Default::default()
            }],
        );
        let sender = pc.add_track(track).map_err(engine_error)?;
        pending.push((relay.clone(), name.to_owned(), ssrc, sender, codec.clone()));
    }
    let offer = RTCSessionDescription::offer(offer.to_owned())
        .map_err(|e| MediaError::BadOffer(format!("invalid offer: {e}")))?;
    pc.set_remote_description(Instant::now(), offer)
        .map_err(|e| MediaError::BadOffer(format!("offer not usable: {e}")))?;
    for addr in &io.candidates {
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(engine_error)?;
        let init = RTCIceCandidate::from(&candidate)
            .to_json()
            .map_err(engine_error)?;
        pc.add_local_candidate(init).map_err(engine_error)?;
    }
    pc.add_local_candidate(Default::default())
        .map_err(engine_error)?;
    let answer = pc.create_answer(None).map_err(engine_error)?;
    pc.set_local_description(Instant::now(), answer)
        .map_err(engine_error)?;
    let answer = pc
        .local_description()
        .ok_or_else(|| engine_error("no local description after the answer"))?
        .sdp;
    let mut feeds = Vec::new();
    for (relay, track_id, ssrc, sender, codec) in pending {
        let Some(mut sender) = pc.rtp_sender(sender) else {
            continue;
        };
        let codecs = &sender.get_parameters().rtp_parameters.codecs;
        let same_type = |c: &&_| {
            let c: &rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters = c;
            c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type)
        };
        let chosen = codecs
            .iter()
            .filter(same_type)
            .find(|c| c.rtp_codec.sdp_fmtp_line == codec.sdp_fmtp_line)
            .or_else(|| codecs.iter().find(same_type));
        if let Some(chosen) = chosen {
            feeds.push(Feed {
                relay,
                track_id,
                ssrc,
                payload_type: chosen.payload_type,
            });
        }
    }
    if feeds.is_empty() {
        return Err(MediaError::CodecMismatch(
            "the answer carries none of the publisher's tracks".into(),
        ));
    }
    Ok(Prepared {
        pc,
        ufrag,
        feeds,
        answer,
    })
}

/// What the running player needs from its session.
pub struct Running {
    pub id: Uuid,
    pub registry: Arc<Registry>,
    pub control: Arc<SessionControl>,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
    /// The teardown's info for the BYE; the task closes the connection when it comes.
    pub close: oneshot::Receiver<String>,
    /// The count of live sans-I/O players, less one when this one's task ends.
    pub live: Arc<std::sync::atomic::AtomicUsize>,
}

impl Prepared {
    /// The local ICE ufrag, which routes the player's datagrams.
    pub fn ufrag(&self) -> &str {
        &self.ufrag
    }

    /// The media kinds the player will receive.
    pub fn kinds(&self) -> Vec<MediaKind> {
        self.feeds.iter().map(|f| f.relay.kind).collect()
    }

    /// Starts the player's task in `run.tasks`.
    pub fn spawn(self, io: &PlayerIo, run: Running) {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        io.divert.register(&self.ufrag, tx);
        let driver = Driver {
            pc: self.pc,
            output: io.output.clone(),
            local: io.local,
            connected: false,
            counts: vec![(0, 0); self.feeds.len()],
            feeds: self.feeds,
        };
        let divert = io.divert.clone();
        let tasks = run.tasks.clone();
        tasks.spawn(async move {
            let ufrag = self.ufrag;
            driver.run(rx, run).await;
            divert.unregister(&ufrag);
        });
    }
}

struct Driver {
    pc: RTCPeerConnection,
    output: Output,
    local: SocketAddr,
    connected: bool,
    feeds: Vec<Feed>,
    /// Per feed: packets and payload bytes forwarded, not yet added to the relay's counters.
    counts: Vec<(u64, u64)>,
}

/// A feed's next packet (`None` while the feed is absent).
async fn next(
    rx: Option<&mut broadcast::Receiver<Arc<Packet>>>,
) -> Result<Arc<Packet>, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self, mut inbound: mpsc::Receiver<Inbound>, mut run: Running) {
        let mut rings: Vec<_> = self.feeds.iter().map(|f| f.relay.subscribe()).collect();
        let connect_by = Instant::now() + CONNECT_TIMEOUT;
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let live = run.live.clone();
        // A forwarded packet only adds output: the events, reads and timer are looked at
        // again only after something else (a datagram in, a timer) may have changed them.
        let mut sweep = true;
        let info = loop {
            self.flush();
            if sweep {
                sweep = false;
                self.sweep(&run, connect_by, &mut timer, &mut armed, far);
            }
            let (first, second) = match rings.as_mut_slice() {
                [a] => (Some(a), None),
                [a, b, ..] => (Some(a), Some(b)),
                [] => (None, None),
            };
            tokio::select! {
                biased;
                info = &mut run.close => break info.unwrap_or_default(),
                _ = run.cancel.cancelled() => break String::new(),
                datagram = inbound.recv() => match datagram {
                    Some((message, from, now)) => {
                        self.read(message, from, now);
                        sweep = true;
                    }
                    None => break String::new(),
                },
                _ = &mut timer => {
                    armed = None;
                    let _ = self.pc.handle_timeout(Instant::now());
                    sweep = true;
                }
                packet = next(first) => self.forward(0, packet, &run),
                packet = next(second) => self.forward(1, packet, &run),
            }
        };
        self.close(&info);
        for i in 0..self.feeds.len() {
            self.count(i, true);
        }
        live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Events, reads, the connect deadline and the engine's next timer.
    fn sweep(
        &mut self,
        run: &Running,
        connect_by: Instant,
        timer: &mut std::pin::Pin<&mut tokio::time::Sleep>,
        armed: &mut Option<Instant>,
        far: tokio::time::Instant,
    ) {
        self.events(run);
        self.reads(run);
        if !self.connected && Instant::now() > connect_by {
            run.control.stop(StopReason::ConnectionLost(format!(
                "no media within {} s",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
        let deadline = self.pc.poll_timeout();
        if deadline != *armed {
            *armed = deadline;
            let at = deadline.map_or(far, |d| {
                tokio::time::Instant::now() + d.saturating_duration_since(Instant::now())
            });
            timer.as_mut().reset(at);
        }
    }

    fn read(&mut self, message: bytes::BytesMut, from: SocketAddr, now: Instant) {
        let _ = self.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                transport_protocol: TransportProtocol::UDP,
                ecn: None,
            },
            message,
        });
    }

    fn forward(
        &mut self,
        index: usize,
        packet: Result<Arc<Packet>, broadcast::error::RecvError>,
        run: &Running,
    ) {
        let feed = &self.feeds[index];
        match packet {
            Ok(packet) if self.connected => {
                let header = rtc::rtp::header::Header {
                    version: 2,
                    marker: packet.header.marker,
                    payload_type: feed.payload_type,
                    sequence_number: packet.header.sequence_number,
                    timestamp: packet.header.timestamp,
                    ssrc: feed.ssrc,
                    ..Default::default()
                };
                let payload: Bytes = packet.payload.clone();
                let written = self.pc.handle_write(TaggedRTCMessage {
                    now: Instant::now(),
                    // The engine routes RTP by SSRC; the track id is not read (and an
                    // empty `String` costs no allocation).
                    message: RTCMessage::RtpPacket(
                        String::new(),
                        rtc::rtp::packet::Packet { header, payload },
                    ),
                });
                if written.is_ok() {
                    let count = &mut self.counts[index];
                    count.0 += 1;
                    count.1 += packet.payload.len() as u64;
                    self.count(index, false);
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                feed.relay.count_dropped(skipped);
                let relay = feed.relay.clone();
                run.tasks
                    .spawn(async move { relay.request_keyframe().await });
            }
            // The publisher is gone: its end stops this player through the registry.
            Err(broadcast::error::RecvError::Closed) => {
                run.control.stop(StopReason::PublisherStopped);
            }
        }
    }

    /// Adds feed `index`'s forwarded counts to its relay's, every 32 packets or `now`.
    fn count(&mut self, index: usize, now: bool) {
        let (packets, bytes) = &mut self.counts[index];
        if *packets >= 32 || (now && *packets > 0) {
            self.feeds[index]
                .relay
                .count_forwarded(std::mem::take(packets), std::mem::take(bytes));
        }
    }

    fn flush(&mut self) {
        while let Some(out) = self.pc.poll_write() {
            self.output.send(&out.message, out.transport.peer_addr);
        }
    }

    fn events(&mut self, run: &Running) {
        while let Some(event) = self.pc.poll_event() {
            let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event else {
                continue;
            };
            tracing::debug!(stream = %run.id, %state, "rtc player connection state");
            match state {
                RTCPeerConnectionState::Connected if !self.connected => {
                    self.connected = true;
                    run.registry.set_status(run.id, Status::Playing, "");
                    for feed in &self.feeds {
                        let relay = feed.relay.clone();
                        run.tasks
                            .spawn(async move { relay.request_keyframe().await });
                    }
                }
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    run.control
                        .stop(StopReason::ConnectionLost("ICE or DTLS failed".into()));
                }
                _ => {}
            }
        }
    }

    fn reads(&mut self, run: &Running) {
        while let Some(read) = self.pc.poll_read() {
            let RTCMessage::RtcpPacket(_, packets) = read.message else {
                continue;
            };
            for packet in packets {
                let any = packet.as_any();
                if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                    for feed in self
                        .feeds
                        .iter()
                        .filter(|f| f.relay.kind == MediaKind::Video)
                    {
                        let relay = feed.relay.clone();
                        run.tasks
                            .spawn(async move { relay.request_keyframe().await });
                    }
                } else if any.is::<Goodbye>() {
                    run.control.stop(StopReason::ClientLeft);
                }
            }
        }
    }

    /// RTCP BYE for every track, then DTLS close_notify, all sent before the task ends.
    fn close(&mut self, info: &str) {
        if self.connected
            && let Some(feed) = self.feeds.first()
        {
            let bye = Goodbye {
                sources: self.feeds.iter().map(|f| f.ssrc).collect(),
                reason: Bytes::copy_from_slice(&info.as_bytes()[..info.len().min(255)]),
            };
            let _ = self.pc.handle_write(TaggedRTCMessage {
                now: Instant::now(),
                message: RTCMessage::RtcpPacket(feed.track_id.clone(), vec![Box::new(bye)]),
            });
        }
        self.flush();
        let _ = self.pc.close();
        self.flush();
    }
}
