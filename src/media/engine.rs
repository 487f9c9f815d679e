//! Builds the one webrtc-rs `API` every peer connection of the server is made from: codecs,
//! interceptors, and the ICE settings (loopback candidates, UDP mux or port range, public IP).

use webrtc::api::interceptor_registry::{configure_rtcp_reports, configure_twcc_receiver_only};
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{API, APIBuilder};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::{EphemeralUDP, UDPNetwork};
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::interceptor::nack::generator::Generator;
use webrtc::interceptor::nack::responder::Responder;
use webrtc::interceptor::registry::Registry as InterceptorRegistry;
use webrtc::rtp_transceiver::RTCPFeedback;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

use crate::config::{MediaPorts, Settings};

use super::MediaError;

/// The webrtc-rs API and, in mux mode, the one UDP socket's address.
pub struct Engine {
    pub api: API,
    pub mux_addr: Option<std::net::SocketAddr>,
    /// The mux socket's side for sessions on the sans-I/O engine, when `media_rtc_players` or
    /// `media_rtc_publishers` is on.
    pub sansio_io: Option<super::rtc_player::SansioIo>,
}

/// The addresses a sans-I/O player announces as host candidates for the mux socket at
/// `local`: its own address when bound to one, else each IPv4 interface's (loopback as the
/// settings say), and the public address.
pub(super) fn candidate_addrs(
    settings: &Settings,
    local: std::net::SocketAddr,
) -> Vec<std::net::SocketAddr> {
    let port = local.port();
    let mut addrs = Vec::new();
    if !local.ip().is_unspecified() {
        addrs.push(local);
    } else {
        let interfaces = webrtc::util::ifaces::ifaces().unwrap_or_default();
        for ip in interfaces.iter().filter_map(|i| i.addr.map(|a| a.ip())) {
            let wanted = ip.is_ipv4()
                && (!ip.is_loopback() || settings.ice_include_loopback)
                && !ip.is_unspecified();
            if wanted && !addrs.iter().any(|a: &std::net::SocketAddr| a.ip() == ip) {
                addrs.push(std::net::SocketAddr::new(ip, port));
            }
        }
    }
    if let Some(ip) = settings.media_public_ip {
        addrs.push(std::net::SocketAddr::new(ip, port));
    }
    addrs
}

/// ICE keep-alive interval: consent checks this often keep a live peer from looking silent.
const ICE_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// The NACK responder keeps this many sent packets per video stream (a power of two) to
/// resend: 512 is over 3 s of a 1.5 Mbit/s stream, far beyond any retransmission's use.
/// webrtc-rs' default of 8 192 slots was most of a player's memory (about 0.9 MiB each).
const NACK_HISTORY_LOG2: u8 = 9;

/// webrtc-rs' default interceptors (NACK both ways, RTCP reports, TWCC receiving), with a
/// NACK history sized for a relay of many players.
fn interceptors(media: &mut MediaEngine) -> Result<InterceptorRegistry, MediaError> {
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
    registry.add(Box::new(
        Responder::builder().with_log2_size(NACK_HISTORY_LOG2),
    ));
    registry.add(Box::new(Generator::builder()));
    let registry = configure_rtcp_reports(registry);
    Ok(configure_twcc_receiver_only(registry, media)?)
}

pub async fn build(settings: &Settings) -> Result<Engine, MediaError> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let interceptors = interceptors(&mut media)?;

    let mut s = SettingEngine::default();
    s.set_include_loopback_candidate(settings.ice_include_loopback || settings.ice_loopback_only);
    s.set_network_types(vec![NetworkType::Udp4]);
    // Remote mDNS names are not resolved: that would need a multicast socket, and browsers'
    // checks still reach us as peer-reflexive candidates.
    s.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    s.set_ice_timeouts(
        Some(settings.ice_disconnected_timeout),
        Some(settings.ice_failed_timeout),
        Some(ICE_KEEPALIVE),
    );
    if settings.ice_loopback_only {
        s.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    }
    if let Some(ip) = settings.media_public_ip {
        // A server-reflexive candidate adds the public address without hiding the host ones.
        s.set_nat_1to1_ips(vec![ip.to_string()], RTCIceCandidateType::Srflx);
    }
    let mut mux_addr = None;
    let mut sansio_io = None;
    match settings.media_ports() {
        MediaPorts::Mux(port) => {
            let bind = if settings.ice_loopback_only {
                std::net::SocketAddr::from(([127, 0, 0, 1], port))
            } else {
                std::net::SocketAddr::from(([0, 0, 0, 0], port))
            };
            let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| {
                MediaError::Internal(format!("cannot bind media UDP port {bind}: {e}"))
            })?;
            mux_addr = socket.local_addr().ok();
            let params = if settings.media_udp_batch {
                let batched = super::batch_udp::BatchedUdp::new(socket);
                if (settings.media_rtc_players || settings.media_rtc_publishers)
                    && let Some(local) = mux_addr
                {
                    let (output, divert) = batched.sansio_io();
                    sansio_io = Some(super::rtc_player::SansioIo {
                        fanouts: super::fanout::Fanouts::new(output.clone()),
                        output,
                        divert,
                        local,
                        candidates: candidate_addrs(settings, local),
                        direct: direct_players(settings),
                    });
                }
                UDPMuxParams::new(batched)
            } else {
                UDPMuxParams::new(socket)
            };
            s.set_udp_network(UDPNetwork::Muxed(UDPMuxDefault::new(params)));
        }
        MediaPorts::Range(from, to) => {
            let range = EphemeralUDP::new(from, to).map_err(|e| {
                MediaError::Internal(format!("bad media port range {from}-{to}: {e}"))
            })?;
            s.set_udp_network(UDPNetwork::Ephemeral(range));
        }
    }

    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(interceptors)
        .with_setting_engine(s)
        .build();
    if (settings.media_rtc_players || settings.media_rtc_publishers) && sansio_io.is_none() {
        tracing::info!(
            "sessions run on webrtc-rs 0.17: the rtc engine (media_rtc_players, media_rtc_publishers) needs media_udp_mux_port and media_udp_batch"
        );
    }
    Ok(Engine {
        api,
        mux_addr,
        sansio_io,
    })
}

/// What players' direct connections share, when `media_direct_players` asks for them (a
/// server that cannot make its certificate runs its players on the peer connection).
fn direct_players(settings: &Settings) -> Option<std::sync::Arc<super::direct::DirectShared>> {
    if !settings.media_direct_players {
        return None;
    }
    match super::direct::DirectShared::new() {
        Ok(shared) => Some(std::sync::Arc::new(shared)),
        Err(e) => {
            tracing::warn!(error = %e, "players run on the rtc peer connection: no certificate for direct connections");
            None
        }
    }
}
