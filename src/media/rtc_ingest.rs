//! Publishers on the sans-I/O `rtc` engine (`media_rtc_publishers`, the default with the mux
//! socket): the answer to a WHIP (or WCS) publisher's offer, and the publisher's task — its
//! datagrams in from the mux socket (`divert`), or from a socket of its own for an edge's
//! pull of a stream from its origin (`rtc_pull`), the engine's timers (the NACKs it sends for
//! lost packets, its receiver reports and transport-wide feedback), each track as it opens
//! becoming a relay track, each RTP packet counted and relayed (`RelayTrack::receive`), the
//! publisher's BYE or a broken connection stopping the session, key frame requests from the
//! players' side (`KeyframeSource`), and at the end its BYE, the connection's close and the
//! end of its relay tracks (every player's feed of them ends).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::interceptor::{Registry as Interceptors, Slot};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::goodbye::Goodbye;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::sansio::Protocol;
use tokio::sync::mpsc;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;

use super::batch_udp::Output;
use super::divert::Inbound;
use super::relay::{Arrivals, KeyframeSource, RelayLedger, RelayTrack, Upstream};
use super::rtc_answer::{self, engine_error};
use super::rtc_ice::{self, SessionEngine, SessionIce};
use super::rtc_player::{Running, SansioIo, wake_at};
use super::sender_rtcp::ToSessionTask;
use super::{CONNECT_TIMEOUT, MediaError, Publisher};
use crate::config::Settings;
use crate::registry::{MediaKind, Status, StopHandle, StopReason};

/// Datagrams from a publisher queued for its task at most: a key frame's burst and more.
const INBOUND_QUEUE: usize = 1024;
/// Datagrams the task hands its engine before it looks at what came out.
const READ_BURST: usize = 32;
/// The longest the task sleeps without looking at the engine's next deadline: key frame
/// requests from the players' side can bring it nearer without waking the task.
const MAX_TIMER_WAIT: Duration = Duration::from_millis(250);

/// A negotiated publisher, not yet running.
pub struct Prepared {
    pc: RTCPeerConnection,
    ufrag: String,
    pub answer: String,
}

/// The receiving side's interceptors: NACKs for lost packets, receiver reports,
/// transport-wide congestion feedback, the `mid`/`rid` header extensions that place a stream
/// whose SSRC the offer did not name, and ours, which passes the publisher's BYE up to its
/// task (the engine keeps received RTCP for its interceptors otherwise).
pub fn receiver_feedback(media: &mut MediaEngine) -> Result<Interceptors, MediaError> {
    rtc_answer::register_nack_feedback(media);
    configure_simulcast_extension_headers(media).map_err(engine_error)?;
    let interceptors = Interceptors::new()
        .with(
            Slot::NackGenerator,
            rtc::interceptor::NackGeneratorBuilder::new().build(),
        )
        .with(
            Slot::ReceiverReport,
            rtc::interceptor::ReceiverReportBuilder::new().build(),
        );
    let interceptors = configure_twcc_receiver_only(interceptors, media).map_err(engine_error)?;
    Ok(interceptors.with(Slot::Custom(20_000), ToSessionTask::default()))
}

/// Answers a publisher's `offer`: an ICE-lite answer on the mux socket's candidates that
/// receives every track it sends.
pub fn prepare(io: &SansioIo, settings: &Settings, offer: &str) -> Result<Prepared, MediaError> {
    let mut media = MediaEngine::default();
    media.register_default_codecs().map_err(engine_error)?;
    let interceptors = receiver_feedback(&mut media)?;
    let mut pc = rtc_answer::new_engine(settings, media, interceptors, None)?;
    rtc_answer::apply_offer(&mut pc, offer)?;
    let (answer, ufrag) = rtc_answer::answer(&mut pc, &io.candidates)?;
    Ok(Prepared { pc, ufrag, answer })
}

/// One of the publisher's tracks, once its first packet has opened it.
struct Track {
    ssrc: u32,
    receiver: RTCRtpReceiverId,
    relay: Arc<RelayTrack>,
    arrivals: Arrivals,
}

/// Where a publisher's engine sends its datagrams.
#[derive(Clone)]
pub enum Outlet {
    /// The mux socket's batched output.
    Mux(Output),
    /// A socket of the session's own (an edge's pull).
    Own(Arc<tokio::net::UdpSocket>),
}

impl Outlet {
    fn send(&self, datagram: &[u8], to: SocketAddr) {
        match self {
            Outlet::Mux(output) => output.send(datagram, to),
            // A full socket drops the datagram, as a wire would.
            Outlet::Own(socket) => {
                let _ = socket.try_send_to(datagram, to);
            }
        }
    }
}

/// What the lock guards.
struct Engine {
    pc: RTCPeerConnection,
    tracks: Vec<Track>,
    outlet: Outlet,
}

impl Engine {
    /// Sends what the engine has to send now.
    fn flush(&mut self) {
        while let Some(datagram) = self.pc.poll_write() {
            self.outlet
                .send(&datagram.message, datagram.transport.peer_addr);
        }
    }
}

/// A running publisher's engine, shared by its task and its tracks' key frame requests.
pub struct Ingest {
    engine: Mutex<Engine>,
}

impl Ingest {
    fn new(pc: RTCPeerConnection, outlet: Outlet) -> Arc<Self> {
        Arc::new(Ingest {
            engine: Mutex::new(Engine {
                pc,
                tracks: Vec::new(),
                outlet,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Engine> {
        // The engine's state is its own; a holder that panicked is a bug in the engine, and
        // the connection then fails on its own timers.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SessionEngine for Ingest {
    fn remote_offer(&self) -> Option<String> {
        rtc_ice::pc_remote_offer(&self.lock().pc)
    }

    fn add_candidate(&self, candidate: &str, mid: Option<String>, mline_index: u16) -> bool {
        rtc_ice::pc_add_candidate(&mut self.lock().pc, candidate, mid, mline_index)
    }

    fn restart(&self, offer: String) -> Result<String, String> {
        rtc_ice::pc_restart(&mut self.lock().pc, offer)
    }
}

impl KeyframeSource for Ingest {
    fn request_keyframe(&self, ssrc: u32) {
        let mut engine = self.lock();
        let Some(receiver) = engine
            .tracks
            .iter()
            .find(|t| t.ssrc == ssrc)
            .map(|t| t.receiver)
        else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        if let Some(mut receiver) = engine.pc.rtp_receiver(receiver)
            && let Err(e) = receiver.write_rtcp(Instant::now(), vec![Box::new(pli)])
        {
            tracing::debug!(error = %e, "key frame request not sent");
        }
        engine.flush();
    }
}

/// What the running publisher needs beyond a session's own.
pub struct Wiring {
    pub publisher: Weak<Publisher>,
    pub ledger: Arc<RelayLedger>,
    /// What the client's BYE means: a publisher that left, or, for an edge, the origin's.
    pub on_bye: StopReason,
}

/// Starts the task of a publisher whose datagrams come and go through `socket` alone (an
/// edge's pull), and the task that reads the socket; both end with the session.
pub fn spawn_on_socket(
    pc: RTCPeerConnection,
    socket: Arc<tokio::net::UdpSocket>,
    run: Running,
    wiring: Wiring,
) -> Result<(), MediaError> {
    let local = socket.local_addr().map_err(engine_error)?;
    let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
    let ingest = Ingest::new(pc, Outlet::Own(socket.clone()));
    run.tasks.spawn(read_socket(socket, tx, run.cancel.clone()));
    run.tasks
        .clone()
        .spawn(drive(ingest, local, rx, run, wiring));
    Ok(())
}

/// Hands the datagrams `socket` receives to the session's task until `cancel`.
async fn read_socket(
    socket: Arc<tokio::net::UdpSocket>,
    to: mpsc::Sender<Inbound>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let read = tokio::select! {
            _ = cancel.cancelled() => break,
            read = socket.recv_from(&mut buf) => read,
        };
        match read {
            // A full queue is a task that is not keeping up: the datagram is lost.
            Ok((len, from)) => {
                let _ = to.try_send((BytesMut::from(&buf[..len]), from, Instant::now()));
            }
            Err(e) => {
                tracing::debug!(error = %e, "session socket read failed");
                // Not a tight loop on an error that repeats.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

impl Prepared {
    /// Starts the publisher's task in `run.tasks`. Returns its ICE as `PATCH` reaches it.
    pub fn spawn(self, io: &SansioIo, run: Running, wiring: Wiring) -> Arc<SessionIce<Ingest>> {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let ingest = Ingest::new(self.pc, Outlet::Mux(io.output.clone()));
        let ice = SessionIce::new(ingest.clone(), io.divert.clone(), tx, self.ufrag);
        let local = io.local;
        let tasks = run.tasks.clone();
        let routes = ice.clone();
        tasks.spawn(async move {
            drive(ingest, local, rx, run, wiring).await;
            routes.unregister();
        });
        ice
    }
}

/// What one look at the engine found for the task to act on, outside the lock.
#[derive(Default)]
struct Found {
    opened: Vec<Arc<RelayTrack>>,
    failed: bool,
    bye: bool,
    deadline: Option<Instant>,
}

/// The publisher's task: serves the engine until the session ends, then says BYE, closes
/// the connection and ends its relay tracks.
async fn drive(
    ingest: Arc<Ingest>,
    local: SocketAddr,
    mut inbound: mpsc::Receiver<Inbound>,
    mut run: Running,
    wiring: Wiring,
) {
    let connect_by = Instant::now() + CONNECT_TIMEOUT;
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let upstream: Weak<dyn KeyframeSource> = Arc::downgrade(&ingest) as Weak<dyn KeyframeSource>;
    let mut all_arrived = false;
    let info = loop {
        let found = ingest.serve(&run, &wiring.ledger, &upstream);
        for relay in found.opened {
            // `PUBLISHING` once, when the last track the offer announced arrives.
            let last = wiring
                .publisher
                .upgrade()
                .is_some_and(|publisher| publisher.add_track(run.id, relay));
            if last && !all_arrived {
                all_arrived = true;
                run.registry.set_status(run.id, Status::Publishing, "");
            }
        }
        if found.failed {
            run.control
                .stop(StopReason::ConnectionLost("ICE or DTLS failed".into()));
        }
        if found.bye {
            run.control.stop(wiring.on_bye.clone());
        }
        if !all_arrived
            && Instant::now() > connect_by
            && run
                .registry
                .get(run.id)
                .is_some_and(|r| r.status == Status::Pending)
        {
            run.stop_unconnected();
        }
        timer
            .as_mut()
            .reset(wake_at(found.deadline, MAX_TIMER_WAIT));
        tokio::select! {
            biased;
            info = &mut run.close => break info.unwrap_or_default(),
            _ = run.cancel.cancelled() => break String::new(),
            datagram = inbound.recv() => match datagram {
                Some(first) => ingest.read(local, first, &mut inbound),
                None => break String::new(),
            },
            () = &mut timer => {
                let _ = ingest.lock().pc.handle_timeout(Instant::now());
            }
        }
    };
    ingest.close(&info);
    run.live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

impl Ingest {
    /// Hands `first` and whatever else is queued (a burst at most) to the engine.
    fn read(&self, local: SocketAddr, first: Inbound, more: &mut mpsc::Receiver<Inbound>) {
        let mut engine = self.lock();
        let mut next = Some(first);
        let mut handed = 0;
        while let Some((message, from, now)) = next.take() {
            let _ = engine
                .pc
                .handle_read(rtc_answer::udp_datagram(local, from, now, message));
            handed += 1;
            if handed < READ_BURST {
                next = more.try_recv().ok();
            }
        }
    }

    /// Reads the engine's events (tracks opening, the connection's state) and received
    /// messages (media to relay, the publisher's BYE), sends what the engine has to send and
    /// reads its next deadline, under the lock once.
    fn serve(
        &self,
        run: &Running,
        ledger: &Arc<RelayLedger>,
        upstream: &Weak<dyn KeyframeSource>,
    ) -> Found {
        let mut found = Found::default();
        let mut engine = self.lock();
        while let Some(event) = engine.pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                    tracing::debug!(stream = %run.id, %state, "rtc publisher connection state");
                    if matches!(
                        state,
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                    ) {
                        found.failed = true;
                    }
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    if let Some(relay) = open_track(&mut engine, &init, ledger, upstream) {
                        tracing::debug!(
                            stream = %run.id,
                            kind = ?relay.kind,
                            codec = %relay.codec.mime_type,
                            ssrc = relay.ssrc,
                            "publisher track arrived"
                        );
                        found.opened.push(relay);
                    }
                }
                _ => {}
            }
        }
        while let Some(read) = engine.pc.poll_read() {
            match read.message {
                RTCMessage::RtpPacket(_, packet) => {
                    let Engine { tracks, .. } = &mut *engine;
                    if let Some(track) = tracks.iter_mut().find(|t| t.ssrc == packet.header.ssrc) {
                        track.relay.receive(to_relay(packet), &mut track.arrivals);
                    }
                }
                RTCMessage::RtcpPacket(_, packets) => {
                    found.bye |= packets.iter().any(|p| p.as_any().is::<Goodbye>());
                }
                _ => {}
            }
        }
        engine.flush();
        found.deadline = engine.pc.poll_timeout();
        found
    }

    /// RTCP BYE for every track, then DTLS close_notify; then every relay track ends.
    fn close(&self, info: &str) {
        let mut engine = self.lock();
        if let Some(first) = engine.tracks.first().map(|t| t.receiver) {
            let bye = Goodbye {
                sources: engine.tracks.iter().map(|t| t.ssrc).collect(),
                reason: Bytes::copy_from_slice(&info.as_bytes()[..info.len().min(255)]),
            };
            if let Some(mut receiver) = engine.pc.rtp_receiver(first) {
                let _ = receiver.write_rtcp(Instant::now(), vec![Box::new(bye)]);
            }
        }
        engine.flush();
        let _ = engine.pc.close();
        engine.flush();
        for track in &engine.tracks {
            track.relay.end();
        }
    }
}

/// The relay track of a track that opened: its kind and codec as the engine negotiated them.
fn open_track(
    engine: &mut Engine,
    init: &rtc::peer_connection::event::RTCTrackEventInit,
    ledger: &Arc<RelayLedger>,
    upstream: &Weak<dyn KeyframeSource>,
) -> Option<Arc<RelayTrack>> {
    if engine.tracks.iter().any(|t| t.ssrc == init.ssrc) {
        return None;
    }
    let receiver = engine.pc.rtp_receiver(init.receiver_id)?;
    let track = receiver.track();
    let kind = match track.kind() {
        RtpCodecKind::Audio => MediaKind::Audio,
        _ => MediaKind::Video,
    };
    let codec = track.codec(init.ssrc)?;
    let codec = RTCRtpCodecCapability {
        mime_type: codec.mime_type.clone(),
        clock_rate: codec.clock_rate,
        channels: codec.channels,
        sdp_fmtp_line: codec.sdp_fmtp_line.clone(),
        rtcp_feedback: codec
            .rtcp_feedback
            .iter()
            .map(|f| webrtc::rtp_transceiver::RTCPFeedback {
                typ: f.typ.clone(),
                parameter: f.parameter.clone(),
            })
            .collect(),
    };
    let relay = RelayTrack::new(
        kind,
        codec,
        init.ssrc,
        Upstream::Sansio(upstream.clone()),
        ledger,
    );
    engine.tracks.push(Track {
        ssrc: init.ssrc,
        receiver: init.receiver_id,
        relay: relay.clone(),
        arrivals: Arrivals::default(),
    });
    Some(relay)
}

/// The engine's packet as the relay carries it (the players' engines read its header and
/// payload; the payload is shared, not copied).
fn to_relay(packet: rtc::rtp::packet::Packet) -> webrtc::rtp::packet::Packet {
    let header = packet.header;
    webrtc::rtp::packet::Packet {
        header: webrtc::rtp::header::Header {
            version: header.version,
            padding: header.padding,
            extension: header.extension,
            marker: header.marker,
            payload_type: header.payload_type,
            sequence_number: header.sequence_number,
            timestamp: header.timestamp,
            ssrc: header.ssrc,
            csrc: header.csrc,
            extension_profile: header.extension_profile,
            extensions: header
                .extensions
                .into_iter()
                .map(|e| webrtc::rtp::header::Extension {
                    id: e.id,
                    payload: e.payload,
                })
                .collect(),
            extensions_padding: header.extensions_padding,
        },
        payload: packet.payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_reaches_the_relay_with_its_header_and_the_same_payload() {
        let payload = Bytes::from_static(b"frame");
        let packet = rtc::rtp::packet::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: true,
                payload_type: 96,
                sequence_number: 65_535,
                timestamp: 0xdead_beef,
                ssrc: 42,
                csrc: vec![7],
                extension: true,
                extension_profile: 0xBEDE,
                extensions: vec![rtc::rtp::header::Extension {
                    id: 3,
                    payload: Bytes::from_static(b"a"),
                }],
                ..Default::default()
            },
            payload: payload.clone(),
        };
        let relayed = to_relay(packet);
        let h = &relayed.header;
        assert_eq!(
            (h.version, h.marker, h.payload_type, h.sequence_number),
            (2, true, 96, 65_535)
        );
        assert_eq!(
            (h.timestamp, h.ssrc, h.csrc.clone()),
            (0xdead_beef, 42, vec![7])
        );
        assert_eq!((h.extension, h.extension_profile), (true, 0xBEDE));
        assert_eq!(h.extensions.len(), 1);
        assert_eq!(h.extensions[0].id, 3);
        assert_eq!(relayed.payload.as_ptr(), payload.as_ptr(), "not copied");
    }
}
