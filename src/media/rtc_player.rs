//! Players on the sans-I/O `rtc` engine (`media_rtc_players`, the default): negotiation of a
//! WHEP player's offer into an engine of its own (an ICE-lite answer on the mux socket's
//! candidates, with one interceptor, the one that passes the player's RTCP up to its task;
//! NACKs and sender reports are `sender_rtcp`'s), then its start: the player's task
//! (`rtc_drive`) and its place in each track's fan-out shards (`fanout`). No async layer, no
//! per-packet task hop: a forwarded packet is a header rewrite, the engine's SRTP and a
//! datagram in its shard's burst (`batch_udp::Output`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::interceptor::{Registry as Interceptors, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;

use super::batch_udp::Output;
use super::direct::{self, DirectParams, DirectSession, DirectShared};
use super::divert::Divert;
use super::fanout::Fanouts;
use super::player_engine::{Direct, PlayerEngine};
use super::relay::RelayTrack;
use super::rtc_answer::{self, engine_error};
use super::rtc_drive::{self, Feed, Player};
use super::rtc_ice::SessionIce;
use super::sdpfrag;
use super::sender_rtcp;
use super::session::SessionControl;
use super::{CONNECT_TIMEOUT, MediaError};
use crate::config::Settings;
use crate::registry::{MediaKind, Registry, StopHandle, StopReason};

/// Datagrams from a player's address queued for its task at most.
const INBOUND_QUEUE: usize = 256;

/// The mux socket's side the sessions on the sans-I/O engine use.
pub struct SansioIo {
    pub output: Output,
    pub divert: Arc<Divert>,
    /// The mux socket's address as the candidates announce it.
    pub local: SocketAddr,
    /// The addresses announced as host candidates (the socket's port on each).
    pub candidates: Vec<SocketAddr>,
    /// The shards that write the publishers' packets into the players.
    pub fanouts: Arc<Fanouts>,
    /// What the players' direct connections share (`media_direct_players`).
    pub direct: Option<Arc<DirectShared>>,
}

/// A negotiated player, not yet running.
pub struct Prepared {
    conn: PlayerEngine,
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

/// `nack` and `nack pli` announced for video, and one interceptor: the one that passes the
/// RTCP the player's task acts on up to it. The engine's defaults (a NACK generator and
/// receiver reports) look at received RTP only, which a player gets none of, and a sending
/// peer's two (the NACK responder and sender reports) are done in `sender_rtcp` from the
/// relay's one history per track — every packet walked through their queues cost a relay
/// about a tenth of its CPU at 200 players.
fn sender_feedback(media: &mut MediaEngine) -> Interceptors {
    rtc_answer::register_nack_feedback(media);
    // Application-most: it sees the RTCP after any interceptor of the engine's own.
    Interceptors::new().with(Slot::Custom(20_000), sender_rtcp::ToSessionTask::default())
}

/// Answers `offer` with a track per `(relay, codec)`: an ICE-lite answer whose candidates
/// are the mux socket's.
pub fn prepare(
    io: &SansioIo,
    settings: &Settings,
    offer: &str,
    tracks: &[(Arc<RelayTrack>, RTCRtpCodecCapability)],
    stream_id: &str,
) -> Result<Prepared, MediaError> {
    let mut media = MediaEngine::default();
    media.register_default_codecs().map_err(engine_error)?;
    let interceptors = sender_feedback(&mut media);
    let direct = io.direct.clone().filter(|_| direct_serves(offer));
    let certificate = direct.as_ref().map(|d| d.certificate.clone());
    let mut pc = rtc_answer::new_engine(settings, media, interceptors, certificate)?;
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
    rtc_answer::apply_offer(&mut pc, offer)?;
    let (answer, ufrag) = rtc_answer::answer(&mut pc, &io.candidates)?;
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
    let conn = match direct {
        // The peer connection negotiated the answer; the direct connection carries it.
        Some(shared) => {
            let (local_ufrag, local_pwd) = sdpfrag::credentials(&answer)
                .ok_or_else(|| engine_error("no ICE credentials in the answer"))?;
            let (remote_ufrag, remote_pwd) = sdpfrag::credentials(offer)
                .ok_or_else(|| MediaError::BadOffer("the offer has no ICE credentials".into()))?;
            let params = DirectParams {
                local_ufrag,
                local_pwd,
                remote_ufrag,
                remote_pwd,
                remote_fingerprints: direct::sha256_fingerprints(offer),
                failed_timeout: settings.ice_failed_timeout,
            };
            let session =
                DirectSession::new(shared, params, Instant::now()).map_err(engine_error)?;
            PlayerEngine::Direct(Box::new(Direct {
                session,
                offer: offer.to_owned(),
                answer: answer.clone(),
            }))
        }
        None => PlayerEngine::Rtc(Box::new(pc)),
    };
    Ok(Prepared {
        conn,
        ufrag,
        feeds,
        answer,
    })
}

/// Whether a direct connection serves `offer`: one with no data channel (which needs the
/// peer connection's SCTP), a `sha-256` certificate fingerprint to check the client by, and
/// the client willing to be the DTLS client (a direct connection is always the server).
fn direct_serves(offer: &str) -> bool {
    !offer
        .lines()
        .any(|l| l.starts_with("m=application") || l.trim_end() == "a=setup:passive")
        && !direct::sha256_fingerprints(offer).is_empty()
}

/// What a running session on the sans-I/O engine (player, publisher or edge pull) needs
/// from its session.
pub struct Running {
    pub id: Uuid,
    pub registry: Arc<Registry>,
    pub control: Arc<SessionControl>,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
    /// The teardown's info for the BYE; the task closes the connection when it comes.
    pub close: oneshot::Receiver<String>,
    /// The count of live sans-I/O sessions, less one when this one's task ends.
    pub live: Arc<std::sync::atomic::AtomicUsize>,
}

impl Running {
    /// Stops the session for never having connected within `CONNECT_TIMEOUT`.
    pub fn stop_unconnected(&self) {
        self.control.stop(StopReason::ConnectionLost(format!(
            "no media within {} s",
            CONNECT_TIMEOUT.as_secs()
        )));
    }
}

/// When a session's task wakes for its engine: at the engine's next deadline, and at the
/// latest `longest` from now (what others write into the engine can bring its deadlines
/// nearer without waking the task).
pub fn wake_at(deadline: Option<Instant>, longest: Duration) -> tokio::time::Instant {
    let wait = deadline
        .map_or(longest, |d| d.saturating_duration_since(Instant::now()))
        .min(longest);
    tokio::time::Instant::now() + wait
}

impl Prepared {
    /// The media kinds the player will receive.
    pub fn kinds(&self) -> Vec<MediaKind> {
        self.feeds.iter().map(|f| f.relay.kind).collect()
    }

    /// Starts the player's task in `run.tasks`; its tracks' shards feed it from then on.
    /// Returns its ICE as `PATCH` reaches it.
    pub fn spawn(self, io: &SansioIo, run: Running) -> Arc<SessionIce<Player>> {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let player = Player::new(self.conn, self.feeds);
        let ice = SessionIce::new(player.clone(), io.divert.clone(), tx, self.ufrag);
        let (output, fanouts, local) = (io.output.clone(), io.fanouts.clone(), io.local);
        let tasks = run.tasks.clone();
        let routes = ice.clone();
        tasks.spawn(async move {
            rtc_drive::drive(player, output, fanouts, local, rx, run).await;
            routes.unregister();
        });
        ice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEDIA: &str =
        "v=0\r\na=fingerprint:sha-256 AB:CD\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n";

    #[test]
    fn a_direct_connection_serves_media_offers_it_can_be_the_dtls_server_of() {
        assert!(direct_serves(MEDIA));
        let with_data = format!("{MEDIA}m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n");
        assert!(!direct_serves(&with_data), "a data channel needs SCTP");
        let sha1_only = MEDIA.replace("sha-256", "sha-1");
        assert!(
            !direct_serves(&sha1_only),
            "no fingerprint to check the client by"
        );
        let dtls_server = format!("{MEDIA}a=setup:passive\r\n");
        assert!(
            !direct_serves(&dtls_server),
            "the client would be the DTLS server"
        );
        assert!(direct_serves(&format!("{MEDIA}a=setup:actpass\r\n")));
    }
}
