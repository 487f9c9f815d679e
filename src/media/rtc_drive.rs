//! A running player on the sans-I/O engine: its engine behind a lock that its own task and
//! its tracks' fan-out shards (`fanout`) share. The shards write the publisher's packets into
//! it; the player's task handles everything else — datagrams in from the mux socket
//! (`divert`), the engine's timers, the connection state, the player's RTCP (PLI/FIR asks the
//! publisher for a key frame, a NACK has the relay's copies of the packets sent again, BYE
//! ends the session), the sender reports (`sender_rtcp`) — and closes the connection at the
//! end. `PATCH` reaches its ICE through `rtc_ice::SessionIce`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::rtcp::goodbye::Goodbye;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::shared::time::SystemInstant;
use tokio::sync::mpsc;
use webrtc::rtp::packet::Packet;

use super::CONNECT_TIMEOUT;
use super::batch_udp::Output;
use super::divert::Inbound;
use super::fanout::{Datagrams, Fanouts, Member, Membership};
use super::player_engine::{EngineEvent, PlayerEngine};
use super::relay::RelayTrack;
use super::rtc_ice::SessionEngine;
use super::rtc_player::{Running, wake_at};
use super::sender_rtcp::{self, REPORT_INTERVAL, SentTrack};
use crate::registry::{MediaKind, Status, StopHandle, StopReason};

/// The longest the player's task sleeps without looking at the engine's next deadline: the
/// shards' writes can bring the engine's deadlines nearer without waking the task.
const MAX_TIMER_WAIT: Duration = Duration::from_millis(250);
/// Forwarded packets a feed counts before adding them to its relay's shared counters.
const COUNT_EVERY: u64 = 32;

/// One track a player receives.
pub struct Feed {
    pub relay: Arc<RelayTrack>,
    pub track_id: String,
    pub ssrc: u32,
    pub payload_type: u8,
}

/// What the lock guards: the engine and what the shards' writes change.
struct Engine {
    conn: PlayerEngine,
    connected: bool,
    /// Per feed: packets and payload bytes forwarded, not yet added to the relay's counters.
    counts: Vec<(u64, u64)>,
    /// Per feed: what its sender reports say.
    sent: Vec<SentTrack>,
    /// When the next sender reports go out.
    next_report: Instant,
    /// The wall clock the reports' NTP times are read from.
    clock: SystemInstant,
}

impl Engine {
    /// Writes one of the publisher's packets to `feed`, its datagrams into `out`; whether
    /// the engine took it (it does once its SRTP is keyed).
    fn write_rtp(
        &mut self,
        feed: &Feed,
        packet: &Packet,
        now: Instant,
        out: &mut Datagrams,
    ) -> bool {
        let header = rtc::rtp::header::Header {
            version: 2,
            marker: packet.header.marker,
            payload_type: feed.payload_type,
            sequence_number: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            ssrc: feed.ssrc,
            ..Default::default()
        };
        self.conn.write_rtp(header, &packet.payload, now, out)
    }
}

/// A player's engine and feeds, shared by its task and its shards.
pub struct Player {
    engine: Mutex<Engine>,
    feeds: Vec<Feed>,
}

impl Player {
    pub fn new(conn: PlayerEngine, feeds: Vec<Feed>) -> Arc<Self> {
        Arc::new(Player {
            engine: Mutex::new(Engine {
                conn,
                connected: false,
                counts: vec![(0, 0); feeds.len()],
                sent: vec![SentTrack::default(); feeds.len()],
                next_report: Instant::now() + REPORT_INTERVAL,
                clock: SystemInstant::now(Instant::now()),
            }),
            feeds,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Engine> {
        // The engine's state is its own; a holder that panicked is a bug in the engine, and
        // the connection then fails on its own timers.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds feed `index`'s counts to its relay's once there are `COUNT_EVERY` (any, when `all`).
    fn count(&self, engine: &mut Engine, index: usize, all: bool) {
        let (packets, bytes) = &mut engine.counts[index];
        if *packets >= COUNT_EVERY || (all && *packets > 0) {
            self.feeds[index]
                .relay
                .count_forwarded(std::mem::take(packets), std::mem::take(bytes));
        }
    }
}

/// Feed `index` of a player, as a member of that track's shard.
struct FeedOf {
    player: Arc<Player>,
    index: usize,
}

impl Member for FeedOf {
    fn forward(&self, packets: &[Arc<Packet>], out: &mut Datagrams) {
        let feed = &self.player.feeds[self.index];
        let mut engine = self.player.lock();
        if !engine.connected {
            return;
        }
        let now = Instant::now();
        let (mut forwarded, mut bytes) = (0, 0);
        for packet in packets {
            if engine.write_rtp(feed, packet, now, out) {
                // A packet sent again for a NACK is not counted: it would move the reports'
                // newest frame back.
                engine.sent[self.index].on_sent(now, packet.header.timestamp, packet.payload.len());
                forwarded += 1;
                bytes += packet.payload.len() as u64;
            }
        }
        let count = &mut engine.counts[self.index];
        count.0 += forwarded;
        count.1 += bytes;
        self.player.count(&mut engine, self.index, false);
    }
}

/// Sends what the engine has to send now (the player's own traffic, not the shards').
fn flush(engine: &mut Engine, output: &Output) {
    while let Some((datagram, to)) = engine.conn.poll_transmit() {
        output.send(&datagram, to);
    }
}

impl SessionEngine for Player {
    fn remote_offer(&self) -> Option<String> {
        self.lock().conn.remote_offer()
    }

    fn add_candidate(&self, candidate: &str, mid: Option<String>, mline_index: u16) -> bool {
        self.lock().conn.add_candidate(candidate, mid, mline_index)
    }

    fn restart(&self, offer: String) -> Result<String, String> {
        self.lock().conn.restart(offer)
    }
}

/// What one look at the engine found for the task to act on, outside the lock.
#[derive(Default)]
struct Found {
    connected_now: bool,
    failed: Option<&'static str>,
    keyframe: bool,
    bye: bool,
    deadline: Option<Instant>,
}

/// The player's task: joins its tracks' shards, serves the engine until the session ends,
/// then leaves them and closes the connection (RTCP BYE, DTLS close_notify).
pub async fn drive(
    player: Arc<Player>,
    output: Output,
    fanouts: Arc<Fanouts>,
    local: SocketAddr,
    mut inbound: mpsc::Receiver<Inbound>,
    mut run: Running,
) {
    let memberships: Vec<Membership> = (0..player.feeds.len())
        .map(|index| {
            let member = Arc::new(FeedOf {
                player: player.clone(),
                index,
            });
            fanouts.join(&player.feeds[index].relay, member)
        })
        .collect();
    let connect_by = Instant::now() + CONNECT_TIMEOUT;
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut connected = false;
    let info = loop {
        let found = player.serve(run.id, &output);
        connected |= found.connected_now;
        act(&player, &run, &found);
        if !connected && Instant::now() > connect_by {
            run.stop_unconnected();
        }
        timer
            .as_mut()
            .reset(wake_at(found.deadline, MAX_TIMER_WAIT));
        tokio::select! {
            biased;
            info = &mut run.close => break info.unwrap_or_default(),
            _ = run.cancel.cancelled() => break String::new(),
            datagram = inbound.recv() => match datagram {
                Some((message, from, now)) => player.read(local, message, from, now),
                None => break String::new(),
            },
            () = &mut timer => {
                player.lock().conn.handle_timeout(Instant::now());
            }
        }
    };
    // Out of the shards first, so that nothing is written after the BYE.
    drop(memberships);
    player.close(&info, &output);
    run.live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Acts on what `serve` found: the registry, key frame requests and stops.
fn act(player: &Player, run: &Running, found: &Found) {
    if found.connected_now {
        run.registry.set_status(run.id, Status::Playing, "");
    }
    if found.connected_now || found.keyframe {
        let kinds = if found.connected_now {
            [MediaKind::Audio, MediaKind::Video].as_slice()
        } else {
            [MediaKind::Video].as_slice()
        };
        for feed in player
            .feeds
            .iter()
            .filter(|f| kinds.contains(&f.relay.kind))
        {
            let relay = feed.relay.clone();
            run.tasks
                .spawn(async move { relay.request_keyframe().await });
        }
    }
    if let Some(why) = found.failed {
        run.control.stop(StopReason::ConnectionLost(why.into()));
    }
    if found.bye {
        run.control.stop(StopReason::ClientLeft);
    }
}

impl Player {
    /// Reads the engine's events and received RTCP, answers NACKs, writes the sender
    /// reports when due, sends what the engine has to send and reads its next deadline,
    /// under the lock once.
    fn serve(&self, id: uuid::Uuid, output: &Output) -> Found {
        let mut found = Found::default();
        let mut engine = self.lock();
        let mut nacked = Vec::new();
        while let Some(event) = engine.conn.poll_event() {
            let packets = match event {
                EngineEvent::Connected => {
                    tracing::debug!(stream = %id, "player connected");
                    found.connected_now |= !std::mem::replace(&mut engine.connected, true);
                    continue;
                }
                EngineEvent::Failed(why) => {
                    tracing::debug!(stream = %id, why, "player connection failed");
                    found.failed = Some(why);
                    continue;
                }
                EngineEvent::Rtcp(packets) => packets,
            };
            for packet in packets {
                let any = packet.as_any();
                if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                    found.keyframe = true;
                } else if any.is::<Goodbye>() {
                    found.bye = true;
                } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                    nacked.push((nack.media_ssrc, sender_rtcp::nacked(nack)));
                }
            }
        }
        let now = Instant::now();
        let mut out = Datagrams::new();
        for (ssrc, sequences) in nacked {
            self.resend(&mut engine, ssrc, &sequences, now, &mut out);
        }
        if !out.is_empty() {
            output.send_many(&mut out);
        }
        // The deadline moves on whether or not there was anything to report: one left in the
        // past would wake the task at once, again and again, until the player connects.
        if now >= engine.next_report {
            if engine.connected {
                self.report(&mut engine, now);
            }
            engine.next_report = now + REPORT_INTERVAL;
        }
        flush(&mut engine, output);
        found.deadline = Some(
            engine
                .conn
                .poll_timeout()
                .map_or(engine.next_report, |d| d.min(engine.next_report)),
        );
        found
    }

    /// Sends again what a NACK of track `ssrc` asks for, as far as the relay still has it.
    fn resend(
        &self,
        engine: &mut Engine,
        ssrc: u32,
        sequences: &[u16],
        now: Instant,
        out: &mut Datagrams,
    ) {
        let Some(feed) = self.feeds.iter().find(|f| f.ssrc == ssrc) else {
            return;
        };
        for &sequence in sequences {
            if let Some(packet) = feed.relay.recent(sequence) {
                engine.write_rtp(feed, &packet, now, out);
            }
        }
    }

    /// Writes each track's sender report (those that have sent anything).
    fn report(&self, engine: &mut Engine, now: Instant) {
        for (index, feed) in self.feeds.iter().enumerate() {
            let clock_rate = feed.relay.codec.clock_rate;
            let Some(report) = engine.sent[index].report(feed.ssrc, clock_rate, now, &engine.clock)
            else {
                continue;
            };
            engine
                .conn
                .write_rtcp(&feed.track_id, vec![Box::new(report)], now);
        }
    }

    fn read(&self, local: SocketAddr, message: BytesMut, from: SocketAddr, now: Instant) {
        self.lock().conn.read(local, message, from, now);
    }

    /// RTCP BYE for every track, then DTLS close_notify, all queued before the task ends;
    /// the feeds' last counts go to their relays.
    fn close(&self, info: &str, output: &Output) {
        let mut engine = self.lock();
        // A shard still holding this player (it has not yet seen it leave) writes nothing more.
        let was_connected = std::mem::take(&mut engine.connected);
        if was_connected && let Some(feed) = self.feeds.first() {
            let bye = Goodbye {
                sources: self.feeds.iter().map(|f| f.ssrc).collect(),
                reason: Bytes::copy_from_slice(&info.as_bytes()[..info.len().min(255)]),
            };
            engine
                .conn
                .write_rtcp(&feed.track_id, vec![Box::new(bye)], Instant::now());
        }
        flush(&mut engine, output);
        engine.conn.close(Instant::now());
        flush(&mut engine, output);
        for index in 0..self.feeds.len() {
            self.count(&mut engine, index, true);
        }
    }
}
