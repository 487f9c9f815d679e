//! What a player on the sans-I/O engine (`rtc_drive`) says about the media it is sent, kept
//! apart from I/O: per track its sender report (packets, payload octets, and the RTP time
//! that matches the wall clock now, as RFC 3550 §6.4.1 has it) and which packets a NACK
//! asks for again. The engine's own interceptors did both with a history of 512 packets per
//! player and a walk of every packet through them — about a tenth of a relay's CPU at 200
//! players (BENCHMARKS.md); the relay keeps one history per track for all its players
//! (`RelayTrack::recent`), and a packet sent costs a few stores here.
//!
//! And which of a client's RTCP reaches its session's task at all (`ToSessionTask`, a
//! player's or a publisher's): the engine hands received RTCP to the application only when
//! an interceptor marks it so.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::goodbye::Goodbye;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use rtc::shared::time::SystemInstant;

/// How often each track's sender report goes out (the interceptor's default too).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Packets one NACK can have sent again at most: a NACK names up to 17 per entry and any
/// number of entries, and a player must not make the server send a burst without end.
pub const MAX_RESENDS: usize = 64;

/// What one track of a player has been sent, for its sender reports.
#[derive(Debug, Default, Clone)]
pub struct SentTrack {
    packets: u32,
    octets: u32,
    /// The RTP timestamp of the newest frame sent and when its first packet went.
    last: Option<(u32, Instant)>,
}

impl SentTrack {
    /// Counts a packet sent at `now`: its RTP `timestamp` and `payload` length.
    pub fn on_sent(&mut self, now: Instant, timestamp: u32, payload: usize) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload as u32);
        // A frame's first packet marks when its timestamp was current; its later packets
        // (same timestamp) would only add the time they took to send.
        if self.last.is_none_or(|(last, _)| last != timestamp) {
            self.last = Some((timestamp, now));
        }
    }

    /// The report of `ssrc` at `now` (`None` before anything was sent): the RTP time of
    /// `now` extrapolated from the newest frame at `clock_rate`.
    pub fn report(
        &self,
        ssrc: u32,
        clock_rate: u32,
        now: Instant,
        clock: &SystemInstant,
    ) -> Option<SenderReport> {
        let (timestamp, at) = self.last?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        Some(SenderReport {
            ssrc,
            ntp_time: clock.ntp(now),
            rtp_time: timestamp.wrapping_add((elapsed * f64::from(clock_rate)) as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

/// The sequence numbers `nack` asks for, at most `MAX_RESENDS`, each once.
pub fn nacked(nack: &TransportLayerNack) -> Vec<u16> {
    let mut wanted: Vec<u16> = Vec::new();
    for pair in &nack.nacks {
        for seq in pair.packet_list() {
            if wanted.len() == MAX_RESENDS {
                return wanted;
            }
            if !wanted.contains(&seq) {
                wanted.push(seq);
            }
        }
    }
    wanted
}

/// The one interceptor of a player's engine (and the last of a publisher's): it marks the
/// RTCP its task acts on — key frame requests, NACKs, BYE — for delivery to the application, where the engine would drop it
/// (its chain's last stop keeps received RTCP for the interceptors), and passes everything
/// else through.
#[derive(Default)]
pub struct ToSessionTask {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

/// Whether the player's task acts on `packet`.
pub fn acted_on(packet: &dyn rtc::rtcp::packet::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>()
        || any.is::<FullIntraRequest>()
        || any.is::<TransportLayerNack>()
        || any.is::<Goodbye>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ToSessionTask {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| acted_on(p.as_ref()))
        {
            msg.message.attributes.push(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for ToSessionTask {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

    #[test]
    fn nothing_sent_is_no_report() {
        let clock = SystemInstant::now(Instant::now());
        assert!(
            SentTrack::default()
                .report(1, 90_000, Instant::now(), &clock)
                .is_none()
        );
    }

    #[test]
    fn a_report_counts_packets_and_octets_and_extrapolates_the_rtp_time() {
        let start = Instant::now();
        let clock = SystemInstant::now(start);
        let mut track = SentTrack::default();
        // A frame of three packets at timestamp 1000, the last two sent 5 ms later.
        track.on_sent(start, 1000, 1200);
        track.on_sent(start + Duration::from_millis(5), 1000, 1200);
        track.on_sent(start + Duration::from_millis(5), 1000, 600);
        // The next frame, 33 ms on (3000 ticks at 90 kHz).
        let next = start + Duration::from_millis(33);
        track.on_sent(next, 4000, 900);
        let now = next + Duration::from_millis(100);
        let report = track.report(7, 90_000, now, &clock).unwrap();
        assert_eq!(report.ssrc, 7);
        assert_eq!(report.packet_count, 4);
        assert_eq!(report.octet_count, 3900);
        // 100 ms after the newest frame's first packet: 9000 ticks on.
        assert!(
            (i64::from(report.rtp_time) - 13_000).abs() <= 1,
            "{}",
            report.rtp_time
        );
        assert_eq!(report.ntp_time, clock.ntp(now));
    }

    #[test]
    fn counters_and_rtp_time_wrap() {
        let now = Instant::now();
        let clock = SystemInstant::now(now);
        let mut track = SentTrack {
            packets: u32::MAX,
            octets: u32::MAX - 10,
            last: None,
        };
        track.on_sent(now, u32::MAX - 100, 20);
        let report = track
            .report(1, 48_000, now + Duration::from_millis(10), &clock)
            .unwrap();
        assert_eq!(report.packet_count, 0);
        assert_eq!(report.octet_count, 9);
        assert_eq!(report.rtp_time, 379, "480 ticks on, across the wrap");
    }

    #[test]
    fn a_nack_names_each_packet_once_and_at_most_the_bound() {
        let nack = TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc: 5,
            nacks: vec![
                NackPair {
                    packet_id: 100,
                    lost_packets: 0b101,
                },
                NackPair::new(101),
            ],
        };
        assert_eq!(nacked(&nack), vec![100, 101, 103]);
        let flood = TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc: 5,
            nacks: (0..20u16)
                .map(|i| NackPair {
                    packet_id: i * 17,
                    lost_packets: 0xffff,
                })
                .collect(),
        };
        let wanted = nacked(&flood);
        assert_eq!(wanted.len(), MAX_RESENDS);
        assert_eq!(wanted[..3], [0, 1, 2]);
    }
}
