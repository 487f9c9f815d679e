//! The fan-out of a publisher's tracks to the players on the sans-I/O engine (`rtc_player`).
//! Per relay track, one task per shard (one shard per core) takes each packet from the
//! relay's ring once, writes it into every player of its shard in turn, and queues all their
//! datagrams on the output lanes with one lock per lane. A packet costs one wake-up per shard
//! instead of one per player; the shards spread a large audience over the cores with nothing
//! hot shared between them (each player's engine has its own lock, taken by its shard and, for
//! the rare datagram in or timer, by the player's own task). A shard's task ends when its last
//! player leaves or the publisher's track ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use tokio::sync::{Notify, broadcast};
use tokio_util::task::TaskTracker;
use webrtc::rtp::packet::Packet;

use super::batch_udp::Output;
use super::relay::RelayTrack;

/// Datagrams bound for the lanes: the bytes and where they go.
pub type Datagrams = Vec<(BytesMut, SocketAddr)>;

/// Shards per relay track for each core. One measured no dearer than four (0.93x and 0.98x
/// the CPU per packet at 200 players in two sets of rounds, less loss at 1 000): a longer
/// turn amortises the wake-up and the lanes' locks over more players.
const SHARDS_PER_CORE: usize = 1;
/// Shards per relay track at most, however many cores.
const MAX_SHARDS: usize = 64;
/// Packets a shard takes from the ring for one turn at most.
const BURST: usize = 32;

/// One player's feed of one relay track, as its shard drives it.
pub trait Member: Send + Sync + 'static {
    /// Writes `packets` into the player's engine, in order, and appends what the engine
    /// sends to `out`.
    fn forward(&self, packets: &[Arc<Packet>], out: &mut Datagrams);
}

/// Where a batch of a shard's datagrams goes (the lanes; a plain collector in tests).
pub trait Sink: Send + Sync + 'static {
    /// Takes every datagram of `datagrams`, leaving it empty.
    fn send_many(&self, datagrams: &mut Datagrams);
}

impl Sink for Output {
    fn send_many(&self, datagrams: &mut Datagrams) {
        Output::send_many(self, datagrams);
    }
}

/// The players one task feeds.
#[derive(Default)]
struct Shard {
    members: Mutex<Vec<Arc<dyn Member>>>,
    /// Moves whenever `members` changes, so the task copies the list only then.
    generation: AtomicU64,
    changed: Notify,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<dyn Member>>> {
        // A plain list: a holder that panicked left it usable.
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        self.generation.fetch_add(1, Ordering::Release);
        self.changed.notify_one();
    }
}

/// A player's place in a shard; leaving is dropping it.
pub struct Membership {
    shard: Arc<Shard>,
    member: Arc<dyn Member>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.shard
            .lock()
            .retain(|m| !std::ptr::addr_eq(Arc::as_ptr(m), Arc::as_ptr(&self.member)));
        self.shard.touch();
    }
}

/// The shards of every relay track that sans-I/O players receive.
pub struct Fanouts<S: Sink = Output> {
    sink: S,
    shards_per_track: usize,
    tasks: TaskTracker,
    /// Per relay track (by its address): a slot per shard, empty while no task runs there.
    tracks: Mutex<HashMap<usize, Vec<Option<Arc<Shard>>>>>,
}

impl<S: Sink> Fanouts<S> {
    /// Shards per track: `SHARDS_PER_CORE` for each core the process may use, at most
    /// `MAX_SHARDS`.
    pub fn new(sink: S) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self::with_shards(sink, (cores * SHARDS_PER_CORE).min(MAX_SHARDS))
    }

    pub fn with_shards(sink: S, shards: usize) -> Arc<Self> {
        Arc::new(Fanouts {
            sink,
            shards_per_track: shards.max(1),
            tasks: TaskTracker::new(),
            tracks: Mutex::default(),
        })
    }

    fn tracks(&self) -> MutexGuard<'_, HashMap<usize, Vec<Option<Arc<Shard>>>>> {
        self.tracks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds `member` every packet of `relay` from now on, in the track's least-filled shard
    /// (started if it has no task), until the returned membership is dropped.
    pub fn join(self: &Arc<Self>, relay: &Arc<RelayTrack>, member: Arc<dyn Member>) -> Membership {
        let key = Arc::as_ptr(relay) as usize;
        let mut tracks = self.tracks();
        let slots = tracks
            .entry(key)
            .or_insert_with(|| vec![None; self.shards_per_track]);
        let index = slots
            .iter()
            .enumerate()
            .min_by_key(|(_, slot)| slot.as_ref().map_or(0, |s| s.lock().len()))
            .map_or(0, |(index, _)| index);
        let shard = match &slots[index] {
            Some(shard) => shard.clone(),
            None => {
                let shard = Arc::new(Shard::default());
                slots[index] = Some(shard.clone());
                let task = self.clone().run(key, relay.clone(), shard.clone());
                self.tasks.spawn(task);
                shard
            }
        };
        shard.lock().push(member.clone());
        shard.touch();
        Membership { shard, member }
    }

    /// Tasks running now: the shards, and any key frame request a lagging shard started.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Takes `shard` out of its track's slots if it has no member left (or `always`): `true`
    /// when its task is to end. Under the tracks' lock, so no player joins it meanwhile.
    fn retire(&self, key: usize, shard: &Arc<Shard>, always: bool) -> bool {
        let mut tracks = self.tracks();
        if !always && !shard.lock().is_empty() {
            return false;
        }
        if let Some(slots) = tracks.get_mut(&key) {
            for slot in slots.iter_mut() {
                if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, shard)) {
                    *slot = None;
                }
            }
            if slots.iter().all(Option::is_none) {
                tracks.remove(&key);
            }
        }
        true
    }

    /// A shard's task. A turn takes what the ring holds (a frame's packets come together, and
    /// more pile up while the cores are busy) and writes it all into one member after another:
    /// each engine is visited once per turn, not once per packet, so its state is warm for
    /// the whole burst.
    async fn run(self: Arc<Self>, key: usize, relay: Arc<RelayTrack>, shard: Arc<Shard>) {
        let mut ring = relay.subscribe();
        let mut members: Vec<Arc<dyn Member>> = Vec::new();
        let mut seen = u64::MAX;
        let mut burst: Vec<Arc<Packet>> = Vec::with_capacity(BURST);
        let mut out = Datagrams::new();
        let ended = relay.ended();
        tokio::pin!(ended);
        'turns: loop {
            let generation = shard.generation.load(Ordering::Acquire);
            if generation != seen {
                seen = generation;
                members.clone_from(&shard.lock());
                if members.is_empty() && self.retire(key, &shard, false) {
                    return;
                }
            }
            let first = tokio::select! {
                biased;
                () = &mut ended => break,
                () = shard.changed.notified() => continue,
                packet = ring.recv() => packet,
            };
            let mut next = first.map_err(|e| match e {
                broadcast::error::RecvError::Lagged(n) => broadcast::error::TryRecvError::Lagged(n),
                broadcast::error::RecvError::Closed => broadcast::error::TryRecvError::Closed,
            });
            loop {
                match next {
                    Ok(packet) => burst.push(packet),
                    // The shard fell behind the ring: every member of it lost those packets.
                    Err(broadcast::error::TryRecvError::Lagged(skipped)) => {
                        relay.count_dropped(skipped * members.len() as u64);
                        let relay = relay.clone();
                        self.tasks
                            .spawn(async move { relay.request_keyframe().await });
                    }
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Closed) => break 'turns,
                }
                if burst.len() == BURST {
                    break;
                }
                next = ring.try_recv();
            }
            if !burst.is_empty() {
                for member in &members {
                    member.forward(&burst, &mut out);
                }
                self.sink.send_many(&mut out);
                burst.clear();
            }
        }
        // The publisher's track ended (or its ring closed): its players are stopped through
        // the registry.
        self.retire(key, &shard, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MediaKind;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Collects what the shards send, counting the batches.
    #[derive(Default)]
    struct Collect {
        datagrams: AtomicUsize,
        batches: AtomicUsize,
    }

    impl Sink for Arc<Collect> {
        fn send_many(&self, datagrams: &mut Datagrams) {
            self.datagrams.fetch_add(datagrams.len(), Ordering::Relaxed);
            self.batches.fetch_add(1, Ordering::Relaxed);
            datagrams.clear();
        }
    }

    /// A player that sends one datagram per packet and counts them.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Member for Counter {
        fn forward(&self, packets: &[Arc<Packet>], out: &mut Datagrams) {
            for packet in packets {
                self.0.fetch_add(1, Ordering::Relaxed);
                let bytes = BytesMut::from(&packet.payload[..]);
                out.push((bytes, SocketAddr::from(([127, 0, 0, 1], 9))));
            }
        }
    }

    fn new_relay() -> (Arc<RelayTrack>, Arc<super::super::relay::RelayLedger>) {
        let ledger = Arc::default();
        let codec = Default::default();
        let relay = RelayTrack::new(MediaKind::Video, codec, 1, Default::default(), &ledger);
        (relay, ledger)
    }

    async fn settle(check: impl Fn() -> bool) -> bool {
        for _ in 0..200 {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    fn packet(seq: u16) -> Packet {
        let mut packet = Packet::default();
        packet.header.sequence_number = seq;
        packet.payload = bytes::Bytes::from_static(b"media");
        packet
    }

    #[tokio::test]
    async fn a_packet_reaches_every_member_in_one_batch_per_shard_and_tasks_end_with_them() {
        let collect = Arc::new(Collect::default());
        let fanouts = Fanouts::with_shards(collect.clone(), 2);
        let (relay, _ledger) = new_relay();
        let members: Vec<Arc<Counter>> = (0..6).map(|_| Arc::default()).collect();
        let mut joined: Vec<Membership> = members
            .iter()
            .map(|m| fanouts.join(&relay, m.clone()))
            .collect();
        assert_eq!(fanouts.running(), 2, "one task per shard, not per member");
        // The shard tasks subscribe when they first run.
        assert!(settle(|| relay.subscribers() == 2).await);
        relay.publish(packet(1));
        assert!(settle(|| collect.datagrams.load(Ordering::Relaxed) == 6).await);
        assert_eq!(
            collect.batches.load(Ordering::Relaxed),
            2,
            "one batch per shard"
        );
        for m in &members {
            assert_eq!(m.0.load(Ordering::Relaxed), 1);
        }
        // A member that left gets nothing more; the others still do.
        let last = joined.pop();
        drop(joined);
        assert!(
            settle(|| fanouts.running() == 1).await,
            "the emptied shard's task ended"
        );
        relay.publish(packet(2));
        assert!(settle(|| collect.datagrams.load(Ordering::Relaxed) == 7).await);
        assert_eq!(members[5].0.load(Ordering::Relaxed), 2);
        assert_eq!(members[0].0.load(Ordering::Relaxed), 1);
        drop(last);
        assert!(
            settle(|| fanouts.running() == 0).await,
            "no task outlives its last member"
        );
        assert!(fanouts.tracks().is_empty());
    }

    #[tokio::test]
    async fn the_tracks_end_ends_its_shards_and_a_new_member_starts_one_again() {
        let collect = Arc::new(Collect::default());
        let fanouts = Fanouts::with_shards(collect.clone(), 4);
        let (relay, _ledger) = new_relay();
        let member: Arc<Counter> = Arc::default();
        let first = fanouts.join(&relay, member.clone());
        let second = fanouts.join(&relay, member.clone());
        assert_eq!(fanouts.running(), 2);
        relay.end();
        assert!(settle(|| fanouts.running() == 0).await);
        assert!(fanouts.tracks().is_empty());
        drop((first, second));
        // Leaving a shard whose task has ended is harmless; joining again starts a task.
        let (relay, _ledger) = new_relay();
        let _third = fanouts.join(&relay, member);
        assert_eq!(fanouts.running(), 1);
    }
}
