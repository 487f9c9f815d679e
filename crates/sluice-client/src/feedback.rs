//! What a reading player (`Client::new`) notes of its video for the tests of the server's
//! sender side: the newest packet, the packets that came a second time (sent again for a
//! NACK), and each sender report beside the newest packet when it came; and the RTCP a test
//! sends as a browser would: a NACK, a key frame request, a BYE.

use std::sync::{Mutex, MutexGuard};

use webrtc::rtcp::goodbye::Goodbye;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::sender_report::SenderReport;
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use webrtc::rtp::header::Header;

use crate::{ClientError, ClientSession};

/// Sender reports kept, the newest.
const REPORTS_KEPT: usize = 64;

/// A video packet as the log remembers it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
}

#[derive(Debug, Default)]
struct Log {
    newest: Option<Seen>,
    repeated: u64,
    reports: Vec<(SenderReport, Option<Seen>)>,
}

/// A player's notes of its video track.
#[derive(Debug, Default)]
pub struct VideoLog {
    log: Mutex<Log>,
}

impl VideoLog {
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a video packet: the newest, or one that came before (a repeat, or late).
    pub(crate) fn on_packet(&self, header: &Header) {
        let mut log = self.lock();
        let ahead = log
            .newest
            .is_none_or(|n| (1..0x8000).contains(&header.sequence_number.wrapping_sub(n.sequence)));
        if ahead {
            log.newest = Some(Seen {
                ssrc: header.ssrc,
                sequence: header.sequence_number,
                timestamp: header.timestamp,
            });
        } else {
            log.repeated += 1;
        }
    }

    /// Notes a sender report of the video track.
    pub(crate) fn on_report(&self, report: &SenderReport) {
        let mut log = self.lock();
        let newest = log.newest;
        if log.reports.len() == REPORTS_KEPT {
            log.reports.remove(0);
        }
        log.reports.push((report.clone(), newest));
    }

    /// The newest video packet so far.
    pub fn newest(&self) -> Option<Seen> {
        self.lock().newest
    }

    /// Video packets that came after a newer one: sent again, or late.
    pub fn repeated(&self) -> u64 {
        self.lock().repeated
    }

    /// The sender reports of the video track, each with the newest packet when it came.
    pub fn reports(&self) -> Vec<(SenderReport, Option<Seen>)> {
        self.lock().reports.clone()
    }
}

impl ClientSession {
    /// Asks the server by NACK to send `count` (1 to 17) packets of `ssrc` again, from
    /// `first` on.
    pub async fn request_resend(
        &self,
        ssrc: u32,
        first: u16,
        count: u16,
    ) -> Result<(), ClientError> {
        let count = count.clamp(1, 17);
        let nack = TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc: ssrc,
            nacks: vec![NackPair {
                packet_id: first,
                lost_packets: ((1u32 << (count - 1)) - 1) as u16,
            }],
        };
        self.pc.write_rtcp(&[Box::new(nack)]).await?;
        Ok(())
    }

    /// Asks the server for a key frame of `ssrc` (RTCP PLI).
    pub async fn request_keyframe(&self, ssrc: u32) -> Result<(), ClientError> {
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        self.pc.write_rtcp(&[Box::new(pli)]).await?;
        Ok(())
    }

    /// Says goodbye to `ssrc` by RTCP BYE alone: no `DELETE`, the connection left open.
    pub async fn say_goodbye(&self, ssrc: u32) -> Result<(), ClientError> {
        let bye = Goodbye {
            sources: vec![ssrc],
            reason: Default::default(),
        };
        self.pc.write_rtcp(&[Box::new(bye)]).await?;
        Ok(())
    }
}
