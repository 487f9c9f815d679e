//! Benchmark only (issue 20): what one forwarded packet costs on the sans-I/O `rtc` core,
//! driven directly, with no sockets and no async layer: N sending peer connections, each
//! connected in memory to a receiving one, then every packet written to each sender and
//! its encrypted datagram taken with `poll_write`. This is the part of a player's path the
//! engine owns; the kernel's send and Sluice's feed come on top.
//!
//! `cargo run --release -p relay-021 --example rtc_write_cost -- [players] [packets]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, register_default_interceptors,
};
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_VP8, MediaEngine};
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

#[derive(Clone, Copy, Debug)]
enum Interceptors {
    None,
    Reports,
    Default,
}

fn codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        payload_type: 96,
    }
}

fn peer(addr: SocketAddr, interceptors: Interceptors) -> Result<RTCPeerConnection> {
    let mut media = MediaEngine::default();
    media.register_codec(codec(), RtpCodecKind::Video)?;
    let registry = match interceptors {
        Interceptors::None => Registry::new(),
        Interceptors::Reports => configure_rtcp_reports(Registry::new()),
        Interceptors::Default => register_default_interceptors(Registry::new(), &mut media)?,
    };
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(Instant::now())?;
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
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
    Ok(pc)
}

struct Pair {
    sender: RTCPeerConnection,
    receiver: RTCPeerConnection,
    sender_addr: SocketAddr,
    receiver_addr: SocketAddr,
    sender_id: RTCRtpSenderId,
    ssrc: u32,
    connected: [bool; 2],
}

fn pair(index: u16, interceptors: Interceptors) -> Result<Pair> {
    let sender_addr: SocketAddr = format!("127.0.0.1:{}", 10_000 + index).parse()?;
    let receiver_addr: SocketAddr = format!("127.0.0.2:{}", 10_000 + index).parse()?;
    let mut sender = peer(sender_addr, interceptors)?;
    let mut receiver = peer(receiver_addr, interceptors)?;
    let ssrc = 0x1000 + u32::from(index);
    let track = MediaStreamTrack::new(
        format!("stream-{index}"),
        format!("video-{index}"),
        format!("video-{index}"),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: codec().rtp_codec,
            ..Default::default()
        }],
    );
    let sender_id = sender.add_track(track)?;
    let offer = sender.create_offer(None)?;
    sender.set_local_description(Instant::now(), offer.clone())?;
    receiver.set_remote_description(Instant::now(), offer)?;
    let answer = receiver.create_answer(None)?;
    receiver.set_local_description(Instant::now(), answer.clone())?;
    sender.set_remote_description(Instant::now(), answer)?;
    Ok(Pair {
        sender,
        receiver,
        sender_addr,
        receiver_addr,
        sender_id,
        ssrc,
        connected: [false, false],
    })
}

fn deliver(to: &mut RTCPeerConnection, local: SocketAddr, peer: SocketAddr, data: BytesMut) {
    let _ = to.handle_read(TaggedBytesMut {
        now: Instant::now(),
        transport: TransportContext {
            local_addr: local,
            peer_addr: peer,
            transport_protocol: TransportProtocol::UDP,
            ecn: None,
        },
        message: data,
    });
}

/// Moves every queued datagram both ways and runs due timers; whether anything moved.
fn shuttle(p: &mut Pair) -> bool {
    let mut moved = false;
    while let Some(out) = p.sender.poll_write() {
        deliver(&mut p.receiver, p.receiver_addr, p.sender_addr, out.message);
        moved = true;
    }
    while let Some(out) = p.receiver.poll_write() {
        deliver(&mut p.sender, p.sender_addr, p.receiver_addr, out.message);
        moved = true;
    }
    for (side, pc) in [&mut p.sender, &mut p.receiver].into_iter().enumerate() {
        while let Some(event) = pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                p.connected[side] = state == RTCPeerConnectionState::Connected;
            }
        }
        while pc.poll_read().is_some() {}
        if pc.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            let _ = pc.handle_timeout(Instant::now());
            moved = true;
        }
    }
    moved
}

fn connect(p: &mut Pair) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.connected != [true, true] {
        if Instant::now() > deadline {
            bail!("pair did not connect in 10 s");
        }
        if !shuttle(p) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

fn packet(ssrc: u32, seq: u16, payload: &Bytes) -> rtc::rtp::packet::Packet {
    rtc::rtp::packet::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: u32::from(seq) * 3000,
            ssrc,
            ..Default::default()
        },
        payload: payload.clone(),
    }
}

/// Nanoseconds per packet per player, with `write_rtp` (the checked path) or a direct
/// `handle_write`.
fn run(players: u16, packets: u16, interceptors: Interceptors, direct: bool) -> Result<f64> {
    let mut pairs = (0..players)
        .map(|i| pair(i, interceptors).and_then(|mut p| connect(&mut p).map(|_| p)))
        .collect::<Result<Vec<_>>>()?;
    let payload = Bytes::from(vec![0xAB; 1200]);
    let track_ids: Vec<String> = (0..players).map(|i| format!("video-{i}")).collect();
    let mut bytes = 0usize;
    let started = Instant::now();
    for seq in 0..packets {
        let now = Instant::now();
        for (p, track_id) in pairs.iter_mut().zip(&track_ids) {
            let rtp = packet(p.ssrc, seq, &payload);
            if direct {
                p.sender.handle_write(TaggedRTCMessage {
                    now,
                    message: RTCMessage::RtpPacket(track_id.clone(), rtp),
                })?;
            } else {
                p.sender
                    .rtp_sender(p.sender_id)
                    .context("sender")?
                    .write_rtp(now, rtp)?;
            }
            while let Some(out) = p.sender.poll_write() {
                bytes += out.message.len();
            }
        }
    }
    let elapsed = started.elapsed();
    let sent = f64::from(players) * f64::from(packets);
    if bytes < (sent as usize) * 1200 {
        bail!("only {bytes} bytes came out for {sent} packets");
    }
    // A receiver decrypts what its sender wrote: the figures are for real SRTP.
    let probe = &mut pairs[0];
    let rtp = packet(probe.ssrc, packets, &payload);
    probe
        .sender
        .rtp_sender(probe.sender_id)
        .context("sender")?
        .write_rtp(Instant::now(), rtp)?;
    let mut got = false;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !got && Instant::now() < deadline {
        while let Some(out) = probe.sender.poll_write() {
            deliver(
                &mut probe.receiver,
                probe.receiver_addr,
                probe.sender_addr,
                out.message,
            );
        }
        while let Some(read) = probe.receiver.poll_read() {
            if let RTCMessage::RtpPacket(_, rtp) = read.message {
                got |= rtp.payload.len() == 1200;
            }
        }
    }
    if !got {
        bail!("the receiver decrypted nothing");
    }
    Ok(elapsed.as_nanos() as f64 / sent)
}

fn main() -> Result<()> {
    let args: Vec<u16> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let players = args.first().copied().unwrap_or(200);
    let packets = args.get(1).copied().unwrap_or(500);
    for interceptors in [
        Interceptors::None,
        Interceptors::Reports,
        Interceptors::Default,
    ] {
        for direct in [false, true] {
            let ns = run(players, packets, interceptors, direct)?;
            println!(
                "RTC_WRITE|{players}|{interceptors:?}|{}|{:.2} us/packet",
                if direct { "handle_write" } else { "write_rtp" },
                ns / 1000.0
            );
        }
    }
    Ok(())
}
