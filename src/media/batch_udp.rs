//! The media socket of mux mode (`media_udp_mux_port`) with batched output: every datagram
//! the engine sends to any peer is queued, and a task of its own sends the queue: the
//! datagrams to one destination that share a size as one UDP GSO message (planned by
//! `gso`), the rest in `sendmmsg` calls of up to `BATCH` (nix's safe wrappers). Fanning one
//! packet out to many players costs one system call per batch instead of one per player,
//! and a frame to one player one call. Receiving is the plain socket's.
//!
//! Output runs in lanes, one per core: a destination always takes the same lane (its
//! datagrams stay in order and group into GSO runs), and each lane has its own queue and
//! flusher, so writers on different cores seldom meet on one lock and sending is not one
//! task's work. A sans-I/O player's fan-out (`Output::send_many`) skips the lanes when they
//! are empty: it sends its burst from its own thread in the same GSO runs and batches, and
//! queues only what the socket would not take at once.
//!
//! Queueing is what UDP would do anyway: `send_to` never waits for the wire, and a lane's
//! queue past `MAX_QUEUED` datagrams (a socket that cannot keep up) drops the newest, counted.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg, sendmsg,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use webrtc::util::Conn;

use super::divert::Divert;
use super::gso;

mod output;
pub use output::Output;

/// Datagrams per `sendmmsg` call.
const BATCH: usize = 64;
/// Datagrams queued at most; beyond it the socket is not keeping up and new ones drop.
const MAX_QUEUED: usize = 16_384;
/// Spare buffers kept for reuse, so a steady stream allocates nothing per datagram.
const MAX_SPARE: usize = 4_096;
/// A lane idle this long gives its spare buffers back: sooner than the heap trim that
/// follows the last stream's end (`memory::SETTLE`), and far longer than a live stream's gaps.
const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_millis(250);
/// Lanes at most, however many cores.
const MAX_LANES: usize = 16;

#[derive(Default)]
struct Queue {
    /// Datagrams waiting for the flusher, in order.
    pending: Vec<(Vec<u8>, SocketAddr)>,
    /// Emptied buffers, handed back by the flusher.
    spare: Vec<Vec<u8>>,
}

impl Queue {
    /// Copies `buf` to the end of the queue in a spare buffer; `false` when the queue is full.
    fn push_copy(&mut self, buf: &[u8], target: SocketAddr) -> bool {
        if self.pending.len() >= MAX_QUEUED {
            return false;
        }
        let mut datagram = self.spare.pop().unwrap_or_default();
        datagram.clear();
        datagram.extend_from_slice(buf);
        self.pending.push((datagram, target));
        true
    }
}

/// One lane: its queue, its flusher's wake-up, and the system calls it made.
#[derive(Default)]
struct Lane {
    queue: Mutex<Queue>,
    wake: Notify,
    syscalls: AtomicU64,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue holds plain data: a writer that panicked mid-push left it usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the flushers and the engine's writers share.
struct Shared {
    lanes: Box<[Lane]>,
    dropped: AtomicU64,
    sent: AtomicU64,
    gso_messages: AtomicU64,
    /// Datagrams in the lanes not yet sent: while there are any, a fan-out queues behind them
    /// rather than sending at once, so that no destination's datagrams overtake its own.
    queued: AtomicUsize,
    /// Off once the kernel or the device has refused segmentation offload.
    gso: AtomicBool,
}

/// The lane of a destination, the same for every datagram to it.
fn lane_of(target: &SocketAddr, lanes: usize) -> usize {
    let ip = match target.ip() {
        std::net::IpAddr::V4(ip) => u64::from(u32::from(ip)),
        std::net::IpAddr::V6(ip) => {
            u64::from_le_bytes(ip.octets()[8..].try_into().unwrap_or_default())
        }
    };
    let key = (ip << 16) ^ u64::from(target.port());
    // Fibonacci hashing: ports one apart land in different lanes.
    ((key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize) % lanes.max(1)
}

/// A UDP socket whose sends are batched by tasks of its own (one per lane), ended when
/// this is dropped.
pub struct BatchedUdp {
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    flushers: Vec<tokio::task::AbortHandle>,
    /// Received datagrams that are a sans-I/O player's, not webrtc-rs' (`divert`).
    divert: Arc<Divert>,
}

impl BatchedUdp {
    /// One lane per core the process may use, at most `MAX_LANES`.
    pub fn new(socket: UdpSocket) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self::with_lanes(socket, cores.min(MAX_LANES))
    }

    pub fn with_lanes(socket: UdpSocket, lanes: usize) -> Self {
        let socket = Arc::new(socket);
        let shared = Arc::new(Shared {
            lanes: (0..lanes.max(1)).map(|_| Lane::default()).collect(),
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            gso_messages: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            gso: AtomicBool::new(true),
        });
        let flushers = (0..shared.lanes.len())
            .map(|lane| tokio::spawn(flush(socket.clone(), shared.clone(), lane)).abort_handle())
            .collect();
        BatchedUdp {
            socket,
            shared,
            flushers,
            divert: Arc::default(),
        }
    }

    /// Where the sans-I/O players send from and receive by.
    pub fn sansio_io(&self) -> (Output, Arc<Divert>) {
        let output = Output {
            shared: self.shared.clone(),
            socket: self.socket.clone(),
        };
        (output, self.divert.clone())
    }

    /// Datagrams sent, the system calls they took, and datagrams dropped on a full queue.
    #[cfg(test)]
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.shared.sent.load(Ordering::Relaxed),
            self.lane_syscalls().iter().sum(),
            self.shared.dropped.load(Ordering::Relaxed),
        )
    }

    /// System calls made by each lane.
    #[cfg(test)]
    fn lane_syscalls(&self) -> Vec<u64> {
        let lanes = self.shared.lanes.iter();
        lanes.map(|l| l.syscalls.load(Ordering::Relaxed)).collect()
    }

    fn enqueue(&self, buf: &[u8], target: SocketAddr) {
        self.shared.enqueue(buf, target);
    }

    fn stop(&self) {
        for flusher in &self.flushers {
            flusher.abort();
        }
    }
}

impl Drop for BatchedUdp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Takes whatever is queued in lane `lane` and sends it until aborted: runs of datagrams to one
/// destination as GSO messages, the rest `BATCH` datagrams a `sendmmsg`. It sends at once:
/// a frame's packets to a player are queued together anyway (waiting 1 ms for more made
/// runs 4 % longer and saved no CPU, BENCHMARKS.md).
async fn flush(socket: Arc<UdpSocket>, shared: Arc<Shared>, lane: usize) {
    let mut sending: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let mut plan = Plan::default();
    let lane = &shared.lanes[lane];
    loop {
        {
            let mut queue = lane.lock();
            std::mem::swap(&mut queue.pending, &mut sending);
        }
        if sending.is_empty() {
            if tokio::time::timeout(IDLE_RELEASE, lane.wake.notified())
                .await
                .is_err()
            {
                // Nothing to send for a while (the players have gone): the buffers kept for
                // them, and both queue vectors' room, go back to the allocator before the
                // heap is trimmed (`memory`).
                {
                    let mut queue = lane.lock();
                    drop(std::mem::take(&mut queue.spare));
                    if queue.pending.is_empty() {
                        queue.pending = Vec::new();
                    }
                }
                sending = Vec::new();
                lane.wake.notified().await;
            }
            continue;
        }
        plan.start(&sending);
        let mut progress = Progress::default();
        // Only a full socket stops `send_planned`: it goes on once the socket has room.
        while shared
            .send_planned(&socket, lane, &sending, &mut plan, &mut progress)
            .is_err()
        {
            if socket.writable().await.is_err() {
                return;
            }
        }
        shared.queued.fetch_sub(sending.len(), Ordering::Release);
        let mut queue = lane.lock();
        for (datagram, _) in sending.drain(..) {
            if queue.spare.len() < MAX_SPARE {
                queue.spare.push(datagram);
            }
        }
    }
}

impl Shared {
    /// A GSO send failed. No segmentation offload here (an old kernel, a device without it):
    /// these and all later datagrams go one by one. Any other error is this destination's
    /// (its datagrams are refused one by one and counted), and the others keep GSO.
    fn gso_refused(&self, error: &std::io::Error) {
        if refuses_gso(error) && self.gso.swap(false, Ordering::Relaxed) {
            tracing::info!(%error, "UDP GSO refused; batching without it");
        }
    }

    fn enqueue(&self, buf: &[u8], target: SocketAddr) {
        let lane = &self.lanes[lane_of(&target, self.lanes.len())];
        let was_empty = {
            let mut queue = lane.lock();
            if !queue.push_copy(buf, target) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.queued.fetch_add(1, Ordering::AcqRel);
            queue.pending.len() == 1
        };
        if was_empty {
            lane.wake.notify_one();
        }
    }

    fn enqueue_many(&self, datagrams: &mut Vec<(BytesMut, SocketAddr)>) {
        let lanes = self.lanes.len();
        let mut left = datagrams.len();
        for (index, lane) in self.lanes.iter().enumerate() {
            if left == 0 {
                break;
            }
            let woken = {
                let mut queue = lane.lock();
                let was_empty = queue.pending.is_empty();
                for (buf, target) in datagrams.iter() {
                    if lanes > 1 && lane_of(target, lanes) != index {
                        continue;
                    }
                    left -= 1;
                    if queue.push_copy(buf, *target) {
                        self.queued.fetch_add(1, Ordering::AcqRel);
                    } else {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                was_empty && !queue.pending.is_empty()
            };
            if woken {
                lane.wake.notify_one();
            }
        }
        datagrams.clear();
    }

    fn count(&self, lane: &Lane, datagrams: usize, calls: u64) {
        let sent = self.sent.fetch_add(datagrams as u64, Ordering::Relaxed) + datagrams as u64;
        let lane_calls = lane.syscalls.fetch_add(calls, Ordering::Relaxed) + calls;
        if lane_calls.is_multiple_of(1 << 14) {
            tracing::debug!(
                lane_calls,
                sent,
                dropped = self.dropped.load(Ordering::Relaxed),
                "batched media output"
            );
        }
    }
}

/// A batch's planning buffers, reused batch after batch.
#[derive(Default)]
struct Plan {
    order: Vec<usize>,
    runs: Vec<gso::Run>,
    /// Indices of the datagrams that leave alone: runs of one, and runs GSO could not send.
    singles: Vec<usize>,
}

/// How far the sending of a planned batch has come: the runs before `run` are done (sent
/// as GSO messages or moved to the singles), and so are the singles before `single`.
#[derive(Default, Debug)]
struct Progress {
    run: usize,
    single: usize,
}

impl Plan {
    /// Plans `batch` (`gso::plan`), its sending not begun.
    fn start<D: AsRef<[u8]>>(&mut self, batch: &[(D, SocketAddr)]) {
        gso::plan(batch, &mut self.order, &mut self.runs);
        self.singles.clear();
    }

    /// The indices of the datagrams not sent by `progress`, in the order they were queued:
    /// the runs not yet reached and every single not sent, those gathered from the runs
    /// before included.
    fn unsent(&self, progress: &Progress) -> Vec<usize> {
        let mut left: Vec<usize> = self.runs[progress.run..]
            .iter()
            .flat_map(|run| self.order[run.range.clone()].iter().copied())
            .chain(self.singles[progress.single..].iter().copied())
            .collect();
        left.sort_unstable();
        left
    }
}

impl Shared {
    /// Sends `batch` as `plan` groups it, from `progress` on: each run of datagrams to one
    /// destination as one GSO message, then the rest `BATCH` a `sendmmsg`, each system call
    /// made only if the socket takes it now. Stops with `WouldBlock` when the socket is full,
    /// `progress` saying where; any other error is the datagrams' own (counted as dropped, or
    /// GSO turned off where it is refused) and is not returned.
    fn send_planned<D: AsRef<[u8]>>(
        &self,
        socket: &UdpSocket,
        lane: &Lane,
        batch: &[(D, SocketAddr)],
        plan: &mut Plan,
        progress: &mut Progress,
    ) -> std::io::Result<()> {
        let fd = socket.as_raw_fd();
        let would_block = |e: &std::io::Error| e.kind() == std::io::ErrorKind::WouldBlock;
        while let Some(run) = plan.runs.get(progress.run) {
            let members = &plan.order[run.range.clone()];
            if run.len() > 1 && self.gso.load(Ordering::Relaxed) {
                let (segment, target) = (run.segment, run.target);
                match socket.try_io(Interest::WRITABLE, || {
                    send_gso(fd, batch, members, segment, target)
                }) {
                    Ok(_) => {
                        self.count(lane, members.len(), 1);
                        self.gso_messages.fetch_add(1, Ordering::Relaxed);
                        progress.run += 1;
                        continue;
                    }
                    Err(e) if would_block(&e) => return Err(e),
                    Err(e) => self.gso_refused(&e),
                }
            }
            plan.singles.extend_from_slice(members);
            progress.run += 1;
        }
        while progress.single < plan.singles.len() {
            let end = (progress.single + BATCH).min(plan.singles.len());
            let chunk = &plan.singles[progress.single..end];
            match socket.try_io(Interest::WRITABLE, || send_batch(fd, batch, chunk)) {
                // n is at least 1: the kernel reports an error rather than sending none.
                Ok(n) => {
                    self.count(lane, n, 1);
                    progress.single += n.max(1);
                }
                Err(e) if would_block(&e) => return Err(e),
                // The first datagram of the chunk was refused (an unreachable address, a
                // size the kernel will not take): it is lost, as it would be on the wire.
                Err(_) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    progress.single += 1;
                }
            }
        }
        Ok(())
    }
}

/// Whether a GSO send failed because the kernel or the device cannot segment (as
/// quinn-udp reads it: `EIO` from a device without checksum offload, `EINVAL` from a kernel
/// without `UDP_SEGMENT`), not because of where it was going.
fn refuses_gso(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(nix::errno::Errno::EIO | nix::errno::Errno::EINVAL | nix::errno::Errno::ENOPROTOOPT)
    )
}

/// One `sendmsg` of the datagrams `members` of `batch` to `target` as one message that the
/// kernel cuts into `segment`-byte datagrams (`UDP_SEGMENT`).
fn send_gso<D: AsRef<[u8]>>(
    fd: std::os::fd::RawFd,
    batch: &[(D, SocketAddr)],
    members: &[usize],
    segment: usize,
    target: SocketAddr,
) -> std::io::Result<usize> {
    let slices: Vec<IoSlice<'_>> = members
        .iter()
        .map(|&i| IoSlice::new(batch[i].0.as_ref()))
        .collect();
    let segment = u16::try_from(segment).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let control = [ControlMessage::UdpGsoSegments(&segment)];
    sendmsg(
        fd,
        &slices,
        &control,
        MsgFlags::empty(),
        Some(&SockaddrStorage::from(target)),
    )
    .map_err(std::io::Error::from)
}

/// One `sendmmsg` of the datagrams `chunk` of `batch`; how many the kernel took. Its
/// headers are made per call (nix's are not `Send`, so they cannot live in the task across
/// an `.await`): a few small allocations per batch, none per datagram.
fn send_batch<D: AsRef<[u8]>>(
    fd: std::os::fd::RawFd,
    batch: &[(D, SocketAddr)],
    chunk: &[usize],
) -> std::io::Result<usize> {
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
    let slices: Vec<[IoSlice<'_>; 1]> = chunk
        .iter()
        .map(|&i| [IoSlice::new(batch[i].0.as_ref())])
        .collect();
    let addresses: Vec<Option<SockaddrStorage>> = chunk
        .iter()
        .map(|&i| Some(SockaddrStorage::from(batch[i].1)))
        .collect();
    let sent = sendmmsg(
        fd,
        &mut headers,
        slices.iter(),
        &addresses,
        [],
        MsgFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    Ok(sent.count())
}

#[async_trait::async_trait]
impl Conn for BatchedUdp {
    async fn connect(&self, addr: SocketAddr) -> webrtc::util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc::util::Result<usize> {
        Ok(self.socket.recv(buf).await?)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc::util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            if !self.divert.take(&buf[..n], from) {
                return Ok((n, from));
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc::util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc::util::Result<usize> {
        self.enqueue(buf, target);
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc::util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_addr().ok()
    }

    async fn close(&self) -> webrtc::util::Result<()> {
        self.stop();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests;
