//! The negotiation of a session on the sans-I/O `rtc` engine: its engine (the ICE timeouts of
//! the settings; for an answer — a player or a publisher — ICE-lite with the server as the
//! DTLS server; for an offer — an edge's pull — a full ICE agent), the offer applied, the
//! socket's addresses as host candidates, and the answer with the engine's own ICE ufrag,
//! which routes the client's datagrams to the session's task (`divert`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rtc::interceptor::Registry as Interceptors;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RtpCodecKind};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::MediaError;
use super::sdpfrag;
use crate::config::Settings;

/// Announces `nack` and `nack pli` for video: a player's NACKs are answered from the relay's
/// history, a publisher is sent NACKs for what it lost, and both carry key frame requests.
pub fn register_nack_feedback(media: &mut MediaEngine) {
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
}

/// A UDP datagram from `from` to the mux socket's `local`, as an engine reads it.
pub fn udp_datagram(
    local: SocketAddr,
    from: SocketAddr,
    now: Instant,
    message: bytes::BytesMut,
) -> TaggedBytesMut {
    TaggedBytesMut {
        now,
        transport: TransportContext {
            local_addr: local,
            peer_addr: from,
            transport_protocol: TransportProtocol::UDP,
            ecn: None,
        },
        message,
    }
}

pub fn engine_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::Internal(format!("rtc engine: {e}"))
}

/// A new engine for one session that answers: ICE-lite, answering as the DTLS server (with
/// `certificate`, or one of its own).
pub fn new_engine(
    settings: &Settings,
    media: MediaEngine,
    interceptors: Interceptors,
    certificate: Option<RTCCertificate>,
) -> Result<RTCPeerConnection, MediaError> {
    build(settings, media, interceptors, true, certificate)
}

/// A new engine for one session that offers (an edge's pull): a full ICE agent, which
/// checks the answerer's candidates itself and nominates the pair.
pub fn new_offering_engine(
    settings: &Settings,
    media: MediaEngine,
    interceptors: Interceptors,
) -> Result<RTCPeerConnection, MediaError> {
    build(settings, media, interceptors, false, None)
}

fn build(
    settings: &Settings,
    media: MediaEngine,
    interceptors: Interceptors,
    answering: bool,
    certificate: Option<RTCCertificate>,
) -> Result<RTCPeerConnection, MediaError> {
    let setting = SettingEngineBuilder::new()
        .with_lite(answering)
        // The client's ClientHello starts DTLS as soon as its ICE has a pair; as the DTLS
        // client the server would wait for its own connected state and a retransmit.
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_ice_timeouts(
            Some(settings.ice_disconnected_timeout),
            Some(settings.ice_failed_timeout),
            Some(Duration::from_secs(1)),
        )
        .build();
    let mut builder = RTCPeerConnectionBuilder::new();
    if let Some(certificate) = certificate {
        builder = builder.with_configuration(
            RTCConfigurationBuilder::new()
                .with_certificates(vec![certificate])
                .build(),
        );
    }
    builder
        .with_media_engine(media)
        .with_setting_engine(setting)
        .with_interceptor_registry(interceptors)
        .build(Instant::now())
        .map_err(engine_error)
}

/// Applies the client's `offer` to `pc`.
pub fn apply_offer(pc: &mut RTCPeerConnection, offer: &str) -> Result<(), MediaError> {
    let offer = RTCSessionDescription::offer(offer.to_owned())
        .map_err(|e| MediaError::BadOffer(format!("invalid offer: {e}")))?;
    pc.set_remote_description(Instant::now(), offer)
        .map_err(|e| MediaError::BadOffer(format!("offer not usable: {e}")))
}

/// Answers the offer applied to `pc` with `candidates` (the mux socket's addresses) as its
/// host candidates, all in the answer; returns the answer and its ICE ufrag.
pub fn answer(
    pc: &mut RTCPeerConnection,
    candidates: &[SocketAddr],
) -> Result<(String, String), MediaError> {
    add_candidates(pc, candidates)?;
    let answer = pc.create_answer(None).map_err(engine_error)?;
    pc.set_local_description(Instant::now(), answer)
        .map_err(engine_error)?;
    let answer = pc
        .local_description()
        .ok_or_else(|| engine_error("no local description after the answer"))?
        .sdp;
    // The engine's own credentials (not fixed ones: an ICE restart must change them).
    let (ufrag, _) = sdpfrag::credentials(&answer)
        .ok_or_else(|| engine_error("no ICE credentials in the answer"))?;
    Ok((answer, ufrag))
}

/// The offer of `pc` (its transceivers added) with `candidates` as its host candidates, all
/// in the offer.
pub fn offer(pc: &mut RTCPeerConnection, candidates: &[SocketAddr]) -> Result<String, MediaError> {
    add_candidates(pc, candidates)?;
    let offer = pc.create_offer(None).map_err(engine_error)?;
    pc.set_local_description(Instant::now(), offer)
        .map_err(engine_error)?;
    Ok(pc
        .local_description()
        .ok_or_else(|| engine_error("no local description after the offer"))?
        .sdp)
}

/// Applies the answerer's `answer` to the offer of `pc`.
pub fn apply_answer(pc: &mut RTCPeerConnection, answer: String) -> Result<(), MediaError> {
    let answer = RTCSessionDescription::answer(answer)
        .map_err(|e| MediaError::Origin(format!("invalid answer: {e}")))?;
    pc.set_remote_description(Instant::now(), answer)
        .map_err(|e| MediaError::Origin(format!("answer not usable: {e}")))
}

/// Adds `candidates` as host candidates, then the end of candidates.
fn add_candidates(pc: &mut RTCPeerConnection, candidates: &[SocketAddr]) -> Result<(), MediaError> {
    for addr in candidates {
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
    // The end of candidates: the description is complete.
    pc.add_local_candidate(Default::default())
        .map_err(engine_error)
}
