//! The publisher→players relay: one fan-out per published track. The publisher's reader
//! pushes each RTP packet once into a broadcast ring; every player's writer reads it at its
//! own pace. A slow player lags and skips (counted as drops, then asks for a key frame); it
//! never blocks the publisher or the other players. The track's newest packets are also
//! kept by sequence number, for the NACKs of the players on the sans-I/O engine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_remote::TrackRemote;

use super::player_track::{PlayerTrack, WriteState};
use crate::registry::{MediaKind, now_ms};

/// Packets a player may fall behind by before it skips: about two seconds of 2 Mbit/s video.
const RING_CAPACITY: usize = 512;
/// A player's forwarded packets are added to the track's counters this many at a time.
const FLUSH_EVERY: u64 = 32;
/// Key frame requests to a publisher are spaced at least this far apart.
const KEYFRAME_MIN_INTERVAL_MS: u64 = 300;
/// The publisher's newest packets kept by sequence number for players' NACKs (a power of
/// two): the packets the ring holds anyway, so they cost no memory of their own.
const RECENT: usize = RING_CAPACITY;

/// A one-way stop flag whose wait is an atomic load and a waker registration, cheap to
/// poll once per packet.
#[derive(Default)]
struct StopSignal {
    raised: AtomicBool,
    waker: futures::task::AtomicWaker,
}

impl StopSignal {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn raised(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.raised.load(Ordering::Acquire) {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // Raised between the load and the registration: its wake may have been missed.
            if self.raised.load(Ordering::Acquire) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

/// Counters of one relayed track, shared by its reader and writers.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub received_packets: AtomicU64,
    pub received_bytes: AtomicU64,
    pub forwarded_packets: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    pub dropped_packets: AtomicU64,
    /// Packets the publisher's sequence numbers say never arrived.
    pub lost_packets: AtomicU64,
}

/// The relay's counters summed over every track, live and ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayTotals {
    pub received_packets: u64,
    pub received_bytes: u64,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub dropped_packets: u64,
    pub lost_packets: u64,
    pub live_tracks: u64,
}

impl RelayStats {
    fn add_to(&self, totals: &mut RelayTotals) {
        totals.received_packets += self.received_packets.load(Ordering::Relaxed);
        totals.received_bytes += self.received_bytes.load(Ordering::Relaxed);
        totals.forwarded_packets += self.forwarded_packets.load(Ordering::Relaxed);
        totals.forwarded_bytes += self.forwarded_bytes.load(Ordering::Relaxed);
        totals.dropped_packets += self.dropped_packets.load(Ordering::Relaxed);
        totals.lost_packets += self.lost_packets.load(Ordering::Relaxed);
    }
}

/// Server-wide relay counters without a shared counter per packet: each track counts on
/// its own; an ended track adds its counts to `retired` when it is dropped, and a reading
/// sums the live tracks and the retired ones.
#[derive(Default)]
pub struct RelayLedger {
    retired: Mutex<RelayTotals>,
    live: Mutex<Vec<Weak<RelayTrack>>>,
}

impl RelayLedger {
    fn enrol(&self, track: &Arc<RelayTrack>) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|t| t.strong_count() > 0);
        live.push(Arc::downgrade(track));
    }

    pub fn totals(&self) -> RelayTotals {
        // Live tracks first, held while summing, so none can retire between the two reads
        // and be counted twice or not at all.
        let live: Vec<Arc<RelayTrack>> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut totals = *self.retired.lock().unwrap_or_else(|e| e.into_inner());
        for track in &live {
            track.stats.add_to(&mut totals);
        }
        totals.live_tracks = live.len() as u64;
        totals
    }
}

/// A publisher on the sans-I/O engine, as its tracks' key frame requests reach it.
pub trait KeyframeSource: Send + Sync {
    /// Sends the publisher an RTCP PLI for its track `ssrc`.
    fn request_keyframe(&self, ssrc: u32);
}

/// Where a track's key frame requests go: its publisher's peer connection, on either
/// engine. Weak: a track outliving its publisher asks no one.
#[derive(Clone, Default)]
pub enum Upstream {
    Webrtc(Weak<RTCPeerConnection>),
    Sansio(Weak<dyn KeyframeSource>),
    /// Nobody to ask (tests).
    #[default]
    None,
}

/// The sequence numbers of the packets a track has received, for its loss count.
#[derive(Debug, Default)]
pub struct Arrivals {
    last_sequence: Option<u16>,
}

/// One track of a publisher, as players subscribe to it.
pub struct RelayTrack {
    pub kind: MediaKind,
    pub codec: RTCRtpCodecCapability,
    /// The publisher's SSRC of this track, for key frame requests.
    pub ssrc: u32,
    packets: broadcast::Sender<Arc<Packet>>,
    publisher: Upstream,
    last_keyframe_request_ms: AtomicU64,
    pub stats: RelayStats,
    ledger: Weak<RelayLedger>,
    /// Cancelled when the publisher's pump ends: every player's feed of it ends then too.
    ended: CancellationToken,
    /// The newest packets at `sequence % RECENT`: what a sans-I/O player's NACK is answered
    /// from, one history for all the track's players.
    recent: Mutex<Box<[Option<Arc<Packet>>]>>,
}

impl Drop for RelayTrack {
    fn drop(&mut self) {
        if let Some(ledger) = self.ledger.upgrade() {
            let mut retired = ledger.retired.lock().unwrap_or_else(|e| e.into_inner());
            self.stats.add_to(&mut retired);
        }
    }
}

impl RelayTrack {
    pub fn new(
        kind: MediaKind,
        codec: RTCRtpCodecCapability,
        ssrc: u32,
        publisher: Upstream,
        ledger: &Arc<RelayLedger>,
    ) -> Arc<Self> {
        let (packets, _) = broadcast::channel(RING_CAPACITY);
        let track = Arc::new(RelayTrack {
            kind,
            codec,
            ssrc,
            packets,
            publisher,
            last_keyframe_request_ms: AtomicU64::new(0),
            stats: RelayStats::default(),
            ledger: Arc::downgrade(ledger),
            ended: CancellationToken::new(),
            recent: Mutex::new(vec![None; RECENT].into_boxed_slice()),
        });
        ledger.enrol(&track);
        track
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Packet>> {
        self.packets.subscribe()
    }

    /// Whether the publisher's pump of this track has ended.
    pub fn has_ended(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Resolves when the publisher's pump of this track ends.
    pub fn ended(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.ended.clone().cancelled_owned()
    }

    /// Sends `packet` to every subscriber and keeps it for NACKs, as the publisher's pump does.
    pub(super) fn publish(&self, packet: Packet) {
        let packet = Arc::new(packet);
        let slot = usize::from(packet.header.sequence_number) % RECENT;
        self.recent.lock().unwrap_or_else(|e| e.into_inner())[slot] = Some(packet.clone());
        // No receiver is not an error: nobody is playing yet.
        let _ = self.packets.send(packet);
    }

    /// The publisher's packet numbered `sequence`, if it is among the newest `RECENT`.
    pub(super) fn recent(&self, sequence: u16) -> Option<Arc<Packet>> {
        let slot = usize::from(sequence) % RECENT;
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent[slot]
            .as_ref()
            .filter(|p| p.header.sequence_number == sequence)
            .cloned()
    }

    #[cfg(test)]
    pub fn subscribers(&self) -> usize {
        self.packets.receiver_count()
    }

    /// Ends the track as the end of the publisher's pump does: every player's feed of it
    /// ends.
    pub(super) fn end(&self) {
        self.ended.cancel();
    }

    /// Counts the publisher's `packet` (a gap in its sequence numbers as lost) and relays it.
    pub(super) fn receive(&self, packet: Packet, arrivals: &mut Arrivals) {
        let sequence = packet.header.sequence_number;
        let missing = arrivals
            .last_sequence
            .map_or(0, |last| lost_between(last, sequence));
        if missing > 0 {
            self.stats
                .lost_packets
                .fetch_add(missing, Ordering::Relaxed);
        }
        // A late (reordered) packet does not move the mark back.
        if arrivals
            .last_sequence
            .is_none_or(|last| sequence.wrapping_sub(last) < 0x8000)
        {
            arrivals.last_sequence = Some(sequence);
        }
        self.stats.received_packets.fetch_add(1, Ordering::Relaxed);
        self.stats
            .received_bytes
            .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
        self.publish(packet);
    }

    /// Asks the publisher for a key frame (RTCP PLI), at most once per interval.
    pub async fn request_keyframe(&self) {
        if self.kind != MediaKind::Video {
            return;
        }
        let now = now_ms();
        let last = self.last_keyframe_request_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < KEYFRAME_MIN_INTERVAL_MS
            || self
                .last_keyframe_request_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        match &self.publisher {
            Upstream::Webrtc(pc) => {
                let Some(pc) = pc.upgrade() else { return };
                let pli = PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc: self.ssrc,
                };
                if let Err(e) = pc.write_rtcp(&[Box::new(pli)]).await {
                    tracing::debug!(error = %e, "key frame request not sent");
                }
            }
            Upstream::Sansio(publisher) => {
                if let Some(publisher) = publisher.upgrade() {
                    publisher.request_keyframe(self.ssrc);
                }
            }
            Upstream::None => {}
        }
    }

    /// Reads the publisher's track until it ends or `cancel` fires, fanning each packet out.
    pub async fn pump(self: Arc<Self>, remote: Arc<TrackRemote>, cancel: CancellationToken) {
        let _ended = self.ended.clone().drop_guard();
        // One cancellation future for the whole loop, not one per packet.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let mut arrivals = Arrivals::default();
        loop {
            let read = tokio::select! {
                _ = &mut cancelled => break,
                read = remote.read_rtp() => read,
            };
            let Ok((packet, _)) = read else { break };
            self.receive(packet, &mut arrivals);
        }
    }

    /// Writes this track's packets to one player's local track until `cancel` fires or the
    /// publisher's pump ends. `tasks` runs the watcher that turns either into `stop`.
    pub async fn feed(
        self: Arc<Self>,
        mut packets: broadcast::Receiver<Arc<Packet>>,
        local: Arc<PlayerTrack>,
        cancel: CancellationToken,
        tasks: tokio_util::task::TaskTracker,
    ) {
        // The loop waits on a flag, not on the tokens: polling a `CancellationToken` takes
        // its node's lock, and the loop polls its stop once per packet per player (1.4 % of
        // the relay's CPU at 200 players). The tokens are awaited once, by the watcher.
        let stop = Arc::new(StopSignal::default());
        let (ended, raise) = (self.ended.clone(), stop.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = ended.cancelled() => {}
            }
            raise.raise();
        });
        let cancelled = stop.raised();
        tokio::pin!(cancelled);
        // Counted here and added to the track's shared counters every FLUSH_EVERY packets:
        // every player of a track shares them, so a write per packet would bounce the cache
        // line between cores.
        let (mut packets_out, mut bytes_out) = (0u64, 0u64);
        let mut state = WriteState::default();
        loop {
            let next = tokio::select! {
                _ = &mut cancelled => break,
                next = packets.recv() => next,
            };
            match next {
                Ok(packet) => {
                    // A write fails only when the player's transport is gone; its session
                    // notices that on its own and cancels this task. One that wrote nothing
                    // (0 bytes: the player's SRTP is not keyed yet) forwarded nothing.
                    if local
                        .write(&packet, &mut state)
                        .await
                        .is_ok_and(|written| written > 0)
                    {
                        packets_out += 1;
                        bytes_out += packet.payload.len() as u64;
                        if packets_out == FLUSH_EVERY {
                            self.add_forwarded(&mut packets_out, &mut bytes_out);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    self.stats
                        .dropped_packets
                        .fetch_add(skipped, Ordering::Relaxed);
                    self.request_keyframe().await;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        self.add_forwarded(&mut packets_out, &mut bytes_out);
    }

    /// This track's counters now.
    pub fn counts(&self) -> RelayTotals {
        let mut totals = RelayTotals::default();
        self.stats.add_to(&mut totals);
        totals
    }

    /// Adds what a sans-I/O player forwarded.
    pub(super) fn count_forwarded(&self, packets: u64, bytes: u64) {
        self.stats
            .forwarded_packets
            .fetch_add(packets, Ordering::Relaxed);
        self.stats
            .forwarded_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts packets a player skipped because it fell behind.
    pub(super) fn count_dropped(&self, packets: u64) {
        self.stats
            .dropped_packets
            .fetch_add(packets, Ordering::Relaxed);
    }

    fn add_forwarded(&self, packets: &mut u64, bytes: &mut u64) {
        self.stats
            .forwarded_packets
            .fetch_add(std::mem::take(packets), Ordering::Relaxed);
        self.stats
            .forwarded_bytes
            .fetch_add(std::mem::take(bytes), Ordering::Relaxed);
    }
}

/// Packets missing between two sequence numbers that arrived in order (`0` for the next one,
/// a repeat, or a late packet).
fn lost_between(last: u16, now: u16) -> u64 {
    let step = now.wrapping_sub(last);
    if (2..0x8000).contains(&step) {
        u64::from(step - 1)
    } else {
        0
    }
}

#[cfg(test)]
mod loss_tests {
    use super::lost_between;

    #[test]
    fn gaps_in_sequence_numbers_are_losses_and_reordering_is_not() {
        assert_eq!(lost_between(10, 11), 0);
        assert_eq!(lost_between(10, 14), 3);
        assert_eq!(lost_between(65534, 1), 2, "across the wrap");
        assert_eq!(lost_between(10, 9), 0, "late");
        assert_eq!(lost_between(10, 10), 0, "repeat");
    }
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    #[test]
    fn a_nack_finds_the_newest_packets_by_sequence_number_and_no_older_one() {
        let ledger = Arc::default();
        let relay = RelayTrack::new(
            MediaKind::Video,
            Default::default(),
            1,
            Default::default(),
            &ledger,
        );
        // Across the sequence number's wrap, and more than the history holds.
        let first = 65_000u16;
        let count = RECENT as u16 + 100;
        for i in 0..count {
            let mut packet = Packet::default();
            packet.header.sequence_number = first.wrapping_add(i);
            relay.publish(packet);
        }
        let newest = first.wrapping_add(count - 1);
        for back in [0u16, 1, RECENT as u16 - 1] {
            let sequence = newest.wrapping_sub(back);
            let found = relay.recent(sequence).map(|p| p.header.sequence_number);
            assert_eq!(found, Some(sequence), "{back} back from the newest");
        }
        assert!(relay.recent(first).is_none(), "overwritten by a newer one");
        assert!(relay.recent(newest.wrapping_add(1)).is_none(), "never sent");
    }
}
