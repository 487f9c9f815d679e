//! The engine under a player on the sans-I/O path, one of two: the player's connection
//! driven directly (`direct`, the default) or the `rtc` crate's peer connection
//! (`media_direct_players=false`, and offers the direct connection does not serve). The
//! player's task and its shards (`rtc_drive`) see one set of calls either way; `PATCH`'s ICE
//! reaches either through `rtc_ice::SessionEngine`.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::packet::Packet as RtcpPacket;
use rtc::rtp::header::Header;
use rtc::sansio::Protocol;

use super::direct::DirectSession;
use super::fanout::Datagrams;
use super::rtc_answer;
use super::rtc_ice;
use super::sdpfrag;

/// What the engine tells the player's task: a direct connection's events, which the peer
/// connection's are read as.
pub use super::direct::DirectEvent as EngineEvent;

/// A direct connection, and what `PATCH` reads of its negotiation.
pub struct Direct {
    pub session: DirectSession,
    pub offer: String,
    pub answer: String,
}

pub enum PlayerEngine {
    Direct(Box<Direct>),
    Rtc(Box<RTCPeerConnection>),
}

impl PlayerEngine {
    /// Writes one RTP packet, its datagrams into `out`; whether it went (once connected).
    pub fn write_rtp(
        &mut self,
        header: Header,
        payload: &Bytes,
        now: Instant,
        out: &mut Datagrams,
    ) -> bool {
        match self {
            // By reference: the payload's count is shared by every player of every shard.
            PlayerEngine::Direct(d) => d.session.write_rtp(&header, payload, out),
            PlayerEngine::Rtc(pc) => {
                let payload = payload.clone();
                let written = pc.handle_write(TaggedRTCMessage {
                    now,
                    // The engine routes RTP by SSRC; the track id is not read (and an empty
                    // `String` costs no allocation).
                    message: RTCMessage::RtpPacket(
                        String::new(),
                        rtc::rtp::packet::Packet { header, payload },
                    ),
                });
                while let Some(datagram) = pc.poll_write() {
                    out.push((datagram.message, datagram.transport.peer_addr));
                }
                written.is_ok()
            }
        }
    }

    /// Writes RTCP (sender reports, BYE) of track `track_id`.
    pub fn write_rtcp(&mut self, track_id: &str, packets: Vec<Box<dyn RtcpPacket>>, now: Instant) {
        match self {
            PlayerEngine::Direct(d) => d.session.write_rtcp(&packets),
            PlayerEngine::Rtc(pc) => {
                let _ = pc.handle_write(TaggedRTCMessage {
                    now,
                    message: RTCMessage::RtcpPacket(track_id.to_owned(), packets),
                });
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        match self {
            PlayerEngine::Direct(d) => d.session.poll_event(),
            PlayerEngine::Rtc(pc) => {
                while let Some(event) = pc.poll_event() {
                    let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event else {
                        continue;
                    };
                    match state {
                        RTCPeerConnectionState::Connected => return Some(EngineEvent::Connected),
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                            return Some(EngineEvent::Failed("ICE or DTLS failed"));
                        }
                        _ => {}
                    }
                }
                while let Some(read) = pc.poll_read() {
                    if let RTCMessage::RtcpPacket(_, packets) = read.message {
                        return Some(EngineEvent::Rtcp(packets));
                    }
                }
                None
            }
        }
    }

    /// A datagram the engine has to send (its own traffic, not the shards').
    pub fn poll_transmit(&mut self) -> Option<(BytesMut, SocketAddr)> {
        match self {
            PlayerEngine::Direct(d) => d.session.poll_transmit(),
            PlayerEngine::Rtc(pc) => pc
                .poll_write()
                .map(|datagram| (datagram.message, datagram.transport.peer_addr)),
        }
    }

    pub fn read(&mut self, local: SocketAddr, message: BytesMut, from: SocketAddr, now: Instant) {
        match self {
            PlayerEngine::Direct(d) => d.session.read(now, from, message),
            PlayerEngine::Rtc(pc) => {
                let _ = pc.handle_read(rtc_answer::udp_datagram(local, from, now, message));
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self {
            PlayerEngine::Direct(d) => d.session.handle_timeout(now),
            PlayerEngine::Rtc(pc) => {
                let _ = pc.handle_timeout(now);
            }
        }
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        match self {
            PlayerEngine::Direct(d) => d.session.poll_timeout(),
            PlayerEngine::Rtc(pc) => pc.poll_timeout(),
        }
    }

    /// Closes the connection (DTLS close_notify); its datagrams wait in `poll_transmit`.
    pub fn close(&mut self, now: Instant) {
        match self {
            PlayerEngine::Direct(d) => d.session.close(now),
            PlayerEngine::Rtc(pc) => {
                let _ = pc.close();
            }
        }
    }

    /// The client's offer as last applied.
    pub fn remote_offer(&self) -> Option<String> {
        match self {
            PlayerEngine::Direct(d) => Some(d.offer.clone()),
            PlayerEngine::Rtc(pc) => rtc_ice::pc_remote_offer(pc),
        }
    }

    /// A trickled candidate of the client's. An ICE-lite responder learns the client's
    /// addresses from its checks, so the direct connection only checks the line.
    pub fn add_candidate(&mut self, candidate: &str, mid: Option<String>, index: u16) -> bool {
        match self {
            PlayerEngine::Direct(_) => rtc::ice::candidate::unmarshal_candidate(candidate).is_ok(),
            PlayerEngine::Rtc(pc) => rtc_ice::pc_add_candidate(pc, candidate, mid, index),
        }
    }

    /// An ICE restart: the new offer applied, the new answer (new local credentials).
    pub fn restart(&mut self, offer: String) -> Result<String, String> {
        match self {
            PlayerEngine::Direct(d) => {
                let remote = sdpfrag::credentials(&offer)
                    .ok_or("an ICE restart needs a=ice-ufrag and a=ice-pwd")?;
                let ufrag = rtc::ice::rand::generate_ufrag();
                let pwd = rtc::ice::rand::generate_pwd();
                d.answer = rtc_ice::with_credentials(&d.answer, &ufrag, &pwd);
                d.offer = offer;
                d.session.restart((ufrag, pwd), remote);
                Ok(d.answer.clone())
            }
            PlayerEngine::Rtc(pc) => rtc_ice::pc_restart(pc, offer),
        }
    }
}
