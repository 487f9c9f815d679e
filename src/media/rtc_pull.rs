//! An edge's pull of a stream from its origin on the sans-I/O `rtc` engine: a WHEP offer that
//! receives each kind the origin's stream has, from a UDP socket of the pull's own — the
//! origin answers every pull from its one media port, so pulls are told apart by their
//! sockets, not by the address their datagrams come from. Once answered, the pull runs as a
//! publisher does (`rtc_ingest::spawn_on_socket`).

use std::net::SocketAddr;
use std::sync::Arc;

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::net::UdpSocket;

use super::MediaError;
use super::engine::candidate_addrs;
use super::rtc_answer::{self, engine_error};
use super::rtc_ingest::receiver_feedback;
use crate::config::Settings;
use crate::registry::MediaKind;

/// A pull's engine, its offer, and the socket its media will use.
pub struct Offered {
    pub pc: RTCPeerConnection,
    pub socket: Arc<UdpSocket>,
    pub sdp: String,
}

/// An offer that receives `kinds`, its candidates those of a new socket of its own.
pub async fn offer(settings: &Settings, kinds: &[MediaKind]) -> Result<Offered, MediaError> {
    let bind = if settings.ice_loopback_only {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| MediaError::Internal(format!("cannot bind a UDP socket for a pull: {e}")))?;
    let local = socket.local_addr().map_err(engine_error)?;
    let mut media = MediaEngine::default();
    media.register_default_codecs().map_err(engine_error)?;
    let interceptors = receiver_feedback(&mut media)?;
    let mut pc = rtc_answer::new_offering_engine(settings, media, interceptors)?;
    for kind in kinds {
        let kind = match kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let receive_only = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            streams: Vec::new(),
            send_encodings: Vec::new(),
        };
        pc.add_transceiver_from_kind(kind, Some(receive_only))
            .map_err(engine_error)?;
    }
    let sdp = rtc_answer::offer(&mut pc, &candidate_addrs(settings, local))?;
    Ok(Offered {
        pc,
        socket: Arc::new(socket),
        sdp,
    })
}
