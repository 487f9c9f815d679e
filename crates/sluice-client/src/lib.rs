//! A WHIP/WHEP client on webrtc-rs, for the integration tests, the benchmarks and load
//! generation: a publisher that sends synthetic VP8 and Opus RTP at a chosen bitrate, and a
//! player that counts what arrives. Both stay on loopback and notice a server-side stop by
//! the RTCP BYE the server sends before it closes. `wcs` speaks WCS's WebSocket signalling
//! instead of WHIP/WHEP, as the Flashphoner Web SDK does.

mod counting;
mod feedback;
pub mod wcs;

pub use feedback::{Seen, VideoLog};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{API, APIBuilder};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::interceptor::registry::Registry as InterceptorRegistry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtcp::goodbye::Goodbye;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::rtcp::sender_report::SenderReport;
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use webrtc::rtp::header::Header;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTPCodecType};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

/// A failed WHIP/WHEP exchange.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("server answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::Error),
    #[error("{0}")]
    Protocol(String),
    /// WCS signalling: the server failed the stream, with this `info`.
    #[error("stream failed: {0}")]
    StreamFailed(String),
}

impl ClientError {
    /// The HTTP status of a refusal, if that is what this is.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What the client learns of its session from the `201`.
#[derive(Debug, Clone)]
pub struct SessionLinks {
    /// Absolute URL of the session resource (`Location`).
    pub resource: String,
    /// Absolute URL of the status event stream (`Link`), if advertised.
    pub events: Option<String>,
    /// The `ETag` of the session's ICE session, for `PATCH` (RFC 9725 §4.3).
    pub etag: Option<String>,
}

/// Counters of what a client saw.
#[derive(Debug, Default)]
pub struct Counters {
    pub video_packets: AtomicU64,
    /// Video packets with the RTP marker bit: the last packet of each frame.
    pub video_frames: AtomicU64,
    pub audio_packets: AtomicU64,
    pub bytes: AtomicU64,
    pub keyframe_requests: AtomicU64,
    /// A publisher's: the video packets it left unsent (`SyntheticMedia::lose_every`), the
    /// packets NACKs asked for again, and the receiver reports that reached it.
    pub lost_on_purpose: AtomicU64,
    pub nacked: AtomicU64,
    pub receiver_reports: AtomicU64,
    /// Media packets counted from their clear header and dropped unopened (a counting
    /// client's players: `Client::counting`).
    pub counted_unopened: AtomicU64,
    /// A reading player's notes of its video: the newest packet, repeats, sender reports.
    pub video: VideoLog,
}

impl Counters {
    pub fn packets(&self) -> u64 {
        self.video_packets.load(Ordering::Relaxed) + self.audio_packets.load(Ordering::Relaxed)
    }
}

/// One client peer connection and how it ends.
pub struct ClientSession {
    pub pc: Arc<RTCPeerConnection>,
    pub links: SessionLinks,
    pub counters: Arc<Counters>,
    /// Set when an RTCP BYE from the server arrives: the moment the client knows it ended.
    pub ended: watch::Receiver<Option<Instant>>,
    /// When the first media packet arrived (players).
    pub first_packet: watch::Receiver<Option<Instant>>,
    cancel: CancellationToken,
    http: reqwest::Client,
}

impl ClientSession {
    /// Hangs up the WHIP/WHEP way: `DELETE` on the resource, then closes the connection.
    pub async fn hang_up(&self) -> Result<u16, ClientError> {
        let status = self
            .http
            .delete(&self.links.resource)
            .send()
            .await?
            .status()
            .as_u16();
        self.close().await;
        Ok(status)
    }

    /// Closes the peer connection without telling the server over HTTP.
    pub async fn close(&self) {
        self.cancel.cancel();
        let _ = self.pc.close().await;
    }

    /// Waits until the server's BYE arrives, at most `timeout`; returns when it arrived.
    pub async fn wait_ended(&self, timeout: Duration) -> Option<Instant> {
        let mut ended = self.ended.clone();
        let got = tokio::time::timeout(timeout, ended.wait_for(|e| e.is_some())).await;
        match got {
            Ok(Ok(at)) => *at,
            _ => None,
        }
    }

    /// Waits until at least `n` media packets arrived, at most `timeout`.
    pub async fn wait_packets(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.counters.packets() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.counters.packets() >= n
    }
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// How an offer reaches the server and its answer comes back.
enum Exchange<'a> {
    /// WHIP/WHEP: POST to this URL.
    Http(&'a str),
    /// WCS's WebSocket signalling.
    Wcs(&'a wcs::WcsConnection, wcs::WcsStream),
}

/// Builds client peer connections that stay on loopback.
pub struct Client {
    api: API,
    http: reqwest::Client,
    /// A counting client's sockets (`Client::counting`).
    counting: Option<Arc<counting::CountingMux>>,
}

/// The synthetic media a publisher sends.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticMedia {
    pub video_bitrate_bps: u64,
    pub frames_per_second: u32,
    pub audio: bool,
    /// Every `lose_every`-th video packet is lost on the way: its sequence number is used
    /// and it is never sent (0: none is).
    pub lose_every: u64,
}

impl Default for SyntheticMedia {
    fn default() -> Self {
        SyntheticMedia {
            video_bitrate_bps: 1_000_000,
            frames_per_second: 30,
            audio: true,
            lose_every: 0,
        }
    }
}

const RTP_PAYLOAD_MAX: usize = 1100;

/// A counting client's interceptors: its publisher's sending side only (the NACK responder
/// and sender reports). Its players read their media past webrtc-rs, so a NACK generator,
/// receiver reports and transport-wide feedback would only tick for nothing — timers per
/// player that made the load generator dearer than the server it loads.
fn sending_interceptors(media: &mut MediaEngine) -> InterceptorRegistry {
    use webrtc::interceptor::nack::responder::Responder;
    use webrtc::interceptor::report::sender::SenderReport;
    use webrtc::rtp_transceiver::{RTCPFeedback, rtp_codec::RTPCodecType};
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RTPCodecType::Video,
        );
    }
    let mut registry = InterceptorRegistry::new();
    registry.add(Box::new(Responder::builder()));
    registry.add(Box::new(SenderReport::builder()));
    registry
}

impl Client {
    /// A client whose players decrypt and read every packet, as a real player does.
    pub fn new() -> Result<Self, ClientError> {
        Self::build(None)
    }

    /// A client whose players count their media unopened, for load generation: each has a
    /// socket of its own read in batches, and only the first media packet of each kind (and
    /// all STUN, DTLS and RTCP) reaches webrtc-rs. Counts, first packets and the server's
    /// BYE work as with `new`; `Counters::bytes` counts encrypted payloads.
    pub fn counting() -> Result<Self, ClientError> {
        Self::build(Some(Arc::new(counting::CountingMux::default())))
    }

    /// `recvmmsg` calls a counting client's open sockets made (0 for `new`'s).
    pub fn counting_syscalls(&self) -> u64 {
        self.counting.as_ref().map_or(0, |m| m.syscalls())
    }

    fn build(counting: Option<Arc<counting::CountingMux>>) -> Result<Self, ClientError> {
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let interceptors = if counting.is_some() {
            sending_interceptors(&mut media)
        } else {
            register_default_interceptors(InterceptorRegistry::new(), &mut media)?
        };
        let mut s = SettingEngine::default();
        s.set_include_loopback_candidate(true);
        s.set_ip_filter(Box::new(|ip| ip.is_loopback()));
        s.set_network_types(vec![NetworkType::Udp4]);
        s.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        // A packet the server sends again for a NACK names a sequence number the player has
        // had (on loopback nothing is lost): with replay protection it would be dropped
        // unseen, and the tests of the server's NACK answers count it (`VideoLog::repeated`).
        s.disable_srtp_replay_protection(true);
        if let Some(mux) = &counting {
            s.set_udp_network(UDPNetwork::Muxed(mux.clone()));
        }
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(interceptors)
            .with_setting_engine(s)
            .build();
        // No idle connections kept: signalling is rare, and a load generator or a leak check
        // must not see pooled connections pile up on the server.
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Client {
            api,
            http,
            counting,
        })
    }

    /// Publishes to `whip_url` (e.g. `http://127.0.0.1:8081/whip/cam`) and starts sending.
    pub async fn publish(
        &self,
        whip_url: &str,
        media: SyntheticMedia,
    ) -> Result<ClientSession, ClientError> {
        self.publish_via(Exchange::Http(whip_url), media).await
    }

    /// Publishes `name` over a WCS signalling connection, with a new `mediaSessionId`;
    /// returns the session and that id.
    pub async fn publish_wcs(
        &self,
        connection: &wcs::WcsConnection,
        name: &str,
        media: SyntheticMedia,
    ) -> Result<(ClientSession, String), ClientError> {
        let stream = wcs::WcsStream::new(name, true);
        let id = stream.id.clone();
        let session = self
            .publish_via(Exchange::Wcs(connection, stream), media)
            .await?;
        Ok((session, id))
    }

    /// Plays `name` over a WCS signalling connection; returns the session and its id.
    pub async fn play_wcs(
        &self,
        connection: &wcs::WcsConnection,
        name: &str,
    ) -> Result<(ClientSession, String), ClientError> {
        let stream = wcs::WcsStream::new(name, false);
        let id = stream.id.clone();
        let session = self.play_via(Exchange::Wcs(connection, stream)).await?;
        Ok((session, id))
    }

    async fn publish_via(
        &self,
        exchange: Exchange<'_>,
        media: SyntheticMedia,
    ) -> Result<ClientSession, ClientError> {
        let pc = Arc::new(
            self.api
                .new_peer_connection(RTCConfiguration::default())
                .await?,
        );
        let video = Arc::new(TrackLocalStaticRTP::new(
            capability(MIME_TYPE_VP8, 90000, 0),
            "video".into(),
            "sluice-client".into(),
        ));
        let audio = Arc::new(TrackLocalStaticRTP::new(
            capability(MIME_TYPE_OPUS, 48000, 2),
            "audio".into(),
            "sluice-client".into(),
        ));
        let mut tracks: Vec<Arc<TrackLocalStaticRTP>> = vec![video.clone()];
        if media.audio {
            tracks.push(audio.clone());
        }
        let counters = Arc::new(Counters::default());
        let cancel = CancellationToken::new();
        let (ended_tx, ended) = watch::channel(None);
        let ended_tx = Arc::new(ended_tx);
        for track in &tracks {
            let transceiver = pc
                .add_transceiver_from_track(
                    track.clone() as Arc<dyn TrackLocal + Send + Sync>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        send_encodings: vec![],
                    }),
                )
                .await?;
            let sender = transceiver.sender().await;
            let counters = counters.clone();
            let ended_tx = ended_tx.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                loop {
                    let read = tokio::select! {
                        _ = cancel.cancelled() => break,
                        read = sender.read_rtcp() => read,
                    };
                    let Ok((packets, _)) = read else { break };
                    for p in packets {
                        let any = p.as_any();
                        if any.is::<PictureLossIndication>() {
                            counters.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                            let asked: usize =
                                nack.nacks.iter().map(|n| n.packet_list().len()).sum();
                            counters.nacked.fetch_add(asked as u64, Ordering::Relaxed);
                        } else if any.is::<ReceiverReport>() {
                            counters.receiver_reports.fetch_add(1, Ordering::Relaxed);
                        } else if any.is::<Goodbye>() {
                            ended_tx.send_if_modified(|e| {
                                e.is_none() && e.replace(Instant::now()).is_none()
                            });
                        }
                    }
                }
            });
        }
        let links = self.signal(&pc, exchange).await?;
        tokio::spawn(generate(
            video,
            media.audio.then_some(audio),
            media,
            counters.clone(),
            cancel.clone(),
        ));
        let (_, first_packet) = watch::channel(None);
        Ok(ClientSession {
            pc,
            links,
            counters,
            ended,
            first_packet,
            cancel,
            http: self.http.clone(),
        })
    }

    /// Plays from `whep_url` (e.g. `http://127.0.0.1:8081/whep/cam`), counting packets.
    pub async fn play(&self, whep_url: &str) -> Result<ClientSession, ClientError> {
        self.play_via(Exchange::Http(whep_url)).await
    }

    async fn play_via(&self, exchange: Exchange<'_>) -> Result<ClientSession, ClientError> {
        let pc = Arc::new(
            self.api
                .new_peer_connection(RTCConfiguration::default())
                .await?,
        );
        let counters = Arc::new(Counters::default());
        let cancel = CancellationToken::new();
        let (ended_tx, ended) = watch::channel(None);
        let ended_tx = Arc::new(ended_tx);
        let (first_tx, first_packet) = watch::channel(None);
        let first_tx = Arc::new(first_tx);
        for kind in [RTPCodecType::Video, RTPCodecType::Audio] {
            pc.add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    send_encodings: vec![],
                }),
            )
            .await?;
        }
        let on_track_counters = counters.clone();
        let on_track_cancel = cancel.clone();
        let sink_first = first_tx.clone();
        pc.on_track(Box::new(move |track, receiver, _| {
            let counters = on_track_counters.clone();
            let cancel = on_track_cancel.clone();
            let first_tx = first_tx.clone();
            // The receiver has its track now, so its RTCP can be read: the server's BYE comes here.
            let ended_tx = ended_tx.clone();
            let rtcp_cancel = cancel.clone();
            let video = track.kind() == RTPCodecType::Video;
            let rtcp_counters = counters.clone();
            tokio::spawn(async move {
                loop {
                    let read = tokio::select! {
                        _ = rtcp_cancel.cancelled() => break,
                        read = receiver.read_rtcp() => read,
                    };
                    let Ok((packets, _)) = read else { break };
                    if video {
                        packets
                            .iter()
                            .filter_map(|p| p.as_any().downcast_ref::<SenderReport>())
                            .for_each(|report| rtcp_counters.video.on_report(report));
                    }
                    if packets.iter().any(|p| p.as_any().is::<Goodbye>()) {
                        ended_tx.send_if_modified(|e| {
                            e.is_none() && e.replace(Instant::now()).is_none()
                        });
                    }
                }
            });
            tokio::spawn(async move {
                loop {
                    let read = tokio::select! {
                        _ = cancel.cancelled() => break,
                        read = track.read_rtp() => read,
                    };
                    let Ok((packet, _)) = read else { break };
                    first_tx
                        .send_if_modified(|f| f.is_none() && f.replace(Instant::now()).is_none());
                    let counter = if video {
                        &counters.video_packets
                    } else {
                        &counters.audio_packets
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if video {
                        counters.video.on_packet(&packet.header);
                        if packet.header.marker {
                            counters.video_frames.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    counters
                        .bytes
                        .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
                }
            });
            Box::pin(async {})
        }));
        let links = match self.signal(&pc, exchange).await {
            Ok(links) => links,
            Err(e) => {
                cancel.cancel();
                let _ = pc.close().await;
                return Err(e);
            }
        };
        if let Some(mux) = &self.counting {
            mux.attach_player(&pc, counters.clone(), sink_first).await;
        }
        Ok(ClientSession {
            pc,
            links,
            counters,
            ended,
            first_packet,
            cancel,
            http: self.http.clone(),
        })
    }

    /// Sends an SDP body to a WHIP/WHEP URL as is and returns the status and text: for
    /// tests of bad input.
    pub async fn post_raw(
        &self,
        url: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<(u16, String), ClientError> {
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// A valid offer that sends video and audio, from a peer connection that is then closed.
    pub async fn sample_offer(&self) -> Result<String, ClientError> {
        let pc = self
            .api
            .new_peer_connection(RTCConfiguration::default())
            .await?;
        for kind in [RTPCodecType::Video, RTPCodecType::Audio] {
            pc.add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    send_encodings: vec![],
                }),
            )
            .await?;
        }
        let offer = pc.create_offer(None).await?;
        let sdp = offer.sdp.clone();
        pc.close().await?;
        Ok(sdp)
    }

    async fn signal(
        &self,
        pc: &RTCPeerConnection,
        exchange: Exchange<'_>,
    ) -> Result<SessionLinks, ClientError> {
        match exchange {
            Exchange::Http(url) => whep_offer(&self.http, pc, url).await,
            Exchange::Wcs(connection, stream) => {
                let local = gathered_offer(pc).await?;
                let answer = connection.offer(&stream, &local).await?;
                pc.set_remote_description(RTCSessionDescription::answer(answer)?)
                    .await?;
                Ok(SessionLinks {
                    resource: String::new(),
                    events: None,
                    etag: None,
                })
            }
        }
    }
}

/// Makes `pc`'s offer and waits (at most 3 s) for its candidates: a non-trickle offer.
async fn gathered_offer(pc: &RTCPeerConnection) -> Result<String, ClientError> {
    let offer = pc.create_offer(None).await?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await?;
    let _ = tokio::time::timeout(Duration::from_secs(3), gathered.recv()).await;
    let local = pc
        .local_description()
        .await
        .ok_or_else(|| ClientError::Protocol("no local description".into()))?;
    Ok(local.sdp)
}

/// The WHIP/WHEP exchange for any peer connection whose transceivers are set up: its offer
/// `POST`ed to `url`, the `201`'s answer applied, and what the `201` said of the session.
pub async fn whep_offer(
    http: &reqwest::Client,
    pc: &RTCPeerConnection,
    url: &str,
) -> Result<SessionLinks, ClientError> {
    let local = gathered_offer(pc).await?;
    let (links, answer) = whep_exchange(http, local, url).await?;
    pc.set_remote_description(RTCSessionDescription::answer(answer)?)
        .await?;
    Ok(links)
}

/// The WHIP/WHEP exchange of an offer made by any engine: `offer` `POST`ed to `url`; the
/// `201`'s answer and what it said of the session. Sluice's edge nodes pull a stream from
/// its origin with this.
pub async fn whep_exchange(
    http: &reqwest::Client,
    offer: String,
    url: &str,
) -> Result<(SessionLinks, String), ClientError> {
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/sdp")
        .body(offer)
        .send()
        .await?;
    let status = response.status().as_u16();
    let base = response.url().clone();
    let header = |name: reqwest::header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let location = header(reqwest::header::LOCATION);
    let link = header(reqwest::header::LINK);
    let etag = header(reqwest::header::ETAG);
    let body = response.text().await?;
    if status != 201 {
        return Err(ClientError::Refused { status, body });
    }
    let location = location.ok_or_else(|| ClientError::Protocol("201 without Location".into()))?;
    let resource = base
        .join(&location)
        .map_err(|e| ClientError::Protocol(format!("bad Location: {e}")))?
        .to_string();
    let events = link.and_then(|l| {
        let start = l.find('<')? + 1;
        let end = l.find('>')?;
        base.join(&l[start..end]).ok().map(|u| u.to_string())
    });
    let links = SessionLinks {
        resource,
        events,
        etag,
    };
    Ok((links, body))
}

fn capability(mime: &str, clock_rate: u32, channels: u16) -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: mime.to_string(),
        clock_rate,
        channels,
        ..Default::default()
    }
}

/// Sends synthetic VP8 frames (split into RTP packets) and Opus packets in real time.
async fn generate(
    video: Arc<TrackLocalStaticRTP>,
    audio: Option<Arc<TrackLocalStaticRTP>>,
    media: SyntheticMedia,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    let fps = media.frames_per_second.max(1);
    let frame_bytes = (media.video_bitrate_bps / 8 / fps as u64) as usize;
    let payload = Bytes::from(vec![0x5au8; RTP_PAYLOAD_MAX]);
    let audio_payload = Bytes::from(vec![0xa5u8; 80]);
    let mut video_seq: u16 = 0;
    let mut audio_seq: u16 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut frames_sent: u64 = 0;
    let mut audio_ts: u32 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = (start.elapsed().as_secs_f64() * fps as f64) as u64;
        while frames_sent < due {
            let timestamp = (frames_sent * 90_000 / fps as u64) as u32;
            let mut left = frame_bytes.max(1);
            while left > 0 {
                let size = left.min(RTP_PAYLOAD_MAX);
                left -= size;
                let packet = Packet {
                    header: Header {
                        version: 2,
                        marker: left == 0,
                        sequence_number: video_seq,
                        timestamp,
                        ..Default::default()
                    },
                    payload: payload.slice(..size),
                };
                video_seq = video_seq.wrapping_add(1);
                if media.lose_every > 0
                    && u64::from(packet.header.sequence_number) % media.lose_every
                        == media.lose_every - 1
                {
                    counters.lost_on_purpose.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if video.write_rtp(&packet).await.is_ok() {
                    counters.video_packets.fetch_add(1, Ordering::Relaxed);
                    counters.bytes.fetch_add(size as u64, Ordering::Relaxed);
                }
            }
            frames_sent += 1;
        }
        if let Some(audio) = &audio {
            let packet = Packet {
                header: Header {
                    version: 2,
                    sequence_number: audio_seq,
                    timestamp: audio_ts,
                    ..Default::default()
                },
                payload: audio_payload.clone(),
            };
            audio_seq = audio_seq.wrapping_add(1);
            audio_ts = audio_ts.wrapping_add(960);
            if audio.write_rtp(&packet).await.is_ok() {
                counters.audio_packets.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
