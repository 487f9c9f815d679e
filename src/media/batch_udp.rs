//! The media socket of mux mode (`media_udp_mux_port`) with batched output: every datagram
//! the engine sends to any peer is queued and leaves in `sendmmsg` calls of up to
//! `BATCH` (nix's safe wrapper), so fanning one packet out to many players costs one
//! system call per batch instead of one per player. Receiving is the plain socket's.
//!
//! Queueing is what UDP would do anyway: `send_to` never waits for the wire, and a queue
//! past `MAX_QUEUED` datagrams (a socket that cannot keep up) drops the newest, counted.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use webrtc::util::Conn;

/// Datagrams per `sendmmsg` call.
const BATCH: usize = 64;
/// Datagrams queued at most; beyond it the socket is not keeping up and new ones drop.
const MAX_QUEUED: usize = 16_384;
/// Spare buffers kept for reuse, so a steady stream allocates nothing per datagram.
const MAX_SPARE: usize = 4_096;

#[derive(Default)]
struct Queue {
    /// Datagrams waiting for the flusher, in order.
    pending: Vec<(Vec<u8>, SocketAddr)>,
    /// Emptied buffers, handed back by the flusher.
    spare: Vec<Vec<u8>>,
}

/// What the flusher and the engine's writers share.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    dropped: AtomicU64,
    syscalls: AtomicU64,
    sent: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue holds plain data: a writer that panicked mid-push left it usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A UDP socket whose sends are batched by a task of its own, ended when this is dropped.
pub struct BatchedUdp {
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    flusher: tokio::task::AbortHandle,
}

impl BatchedUdp {
    pub fn new(socket: UdpSocket) -> Self {
        let socket = Arc::new(socket);
        let shared = Arc::new(Shared::default());
        let flusher = tokio::spawn(flush(socket.clone(), shared.clone())).abort_handle();
        BatchedUdp {
            socket,
            shared,
            flusher,
        }
    }

    /// Datagrams sent, the system calls they took, and datagrams dropped on a full queue.
    #[cfg(test)]
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.shared.sent.load(Ordering::Relaxed),
            self.shared.syscalls.load(Ordering::Relaxed),
            self.shared.dropped.load(Ordering::Relaxed),
        )
    }

    fn enqueue(&self, buf: &[u8], target: SocketAddr) {
        let was_empty = {
            let mut queue = self.shared.lock();
            if queue.pending.len() >= MAX_QUEUED {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let mut datagram = queue.spare.pop().unwrap_or_default();
            datagram.clear();
            datagram.extend_from_slice(buf);
            queue.pending.push((datagram, target));
            queue.pending.len() == 1
        };
        if was_empty {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for BatchedUdp {
    fn drop(&mut self) {
        self.flusher.abort();
    }
}

/// Takes whatever is queued and sends it, `BATCH` datagrams a call, until aborted.
async fn flush(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut sending: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    loop {
        {
            let mut queue = shared.lock();
            std::mem::swap(&mut queue.pending, &mut sending);
        }
        if sending.is_empty() {
            shared.wake.notified().await;
            continue;
        }
        let mut start = 0;
        while start < sending.len() {
            let chunk = &sending[start..(start + BATCH).min(sending.len())];
            let result =
                socket.try_io(Interest::WRITABLE, || send_batch(socket.as_raw_fd(), chunk));
            match result {
                Ok(n) => {
                    let sent = shared.sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                    let calls = shared.syscalls.fetch_add(1, Ordering::Relaxed) + 1;
                    if calls.is_multiple_of(1 << 14) {
                        tracing::debug!(
                            calls,
                            sent,
                            dropped = shared.dropped.load(Ordering::Relaxed),
                            "batched media output"
                        );
                    }
                    // n is at least 1: the kernel reports an error rather than sending none.
                    start += n.max(1);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if socket.writable().await.is_err() {
                        return;
                    }
                }
                // The first datagram of the chunk was refused (an unreachable address, a
                // size the kernel will not take): it is lost, as it would be on the wire.
                Err(_) => {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    start += 1;
                }
            }
        }
        let mut queue = shared.lock();
        for (datagram, _) in sending.drain(..) {
            if queue.spare.len() < MAX_SPARE {
                queue.spare.push(datagram);
            }
        }
    }
}

/// One `sendmmsg` of `chunk`; how many datagrams the kernel took. Its headers are made per
/// call (nix's are not `Send`, so they cannot live in the task across an `.await`): a few
/// small allocations per batch, none per datagram.
fn send_batch(fd: std::os::fd::RawFd, chunk: &[(Vec<u8>, SocketAddr)]) -> std::io::Result<usize> {
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
    let slices: Vec<[IoSlice<'_>; 1]> = chunk
        .iter()
        .map(|(datagram, _)| [IoSlice::new(datagram)])
        .collect();
    let addresses: Vec<Option<SockaddrStorage>> = chunk
        .iter()
        .map(|(_, address)| Some(SockaddrStorage::from(*address)))
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
        Ok(self.socket.recv_from(buf).await?)
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
        self.flusher.abort();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many datagrams to several receivers arrive whole and in order per receiver, in far
    /// fewer system calls than datagrams.
    #[tokio::test]
    async fn queued_datagrams_leave_in_batches_and_arrive_in_order() {
        let sender = BatchedUdp::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let mut receivers = Vec::new();
        for _ in 0..4 {
            receivers.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        }
        // Few enough that each receiver's socket buffer holds them all before it reads.
        const EACH: u32 = 50;
        for i in 0..EACH {
            for receiver in &receivers {
                let datagram = [i.to_be_bytes().as_slice(), &[7u8; 996]].concat();
                let target = receiver.local_addr().unwrap();
                assert_eq!(sender.send_to(&datagram, target).await.unwrap(), 1000);
            }
        }
        for receiver in &receivers {
            let mut buf = [0u8; 2048];
            for i in 0..EACH {
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    receiver.recv(&mut buf),
                )
                .await
                .expect("a datagram within 5 s")
                .unwrap();
                assert_eq!(read, 1000);
                assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), i);
            }
        }
        let (sent, syscalls, dropped) = sender.counts();
        assert_eq!((sent, dropped), (4 * EACH as u64, 0));
        assert!(syscalls < sent / 4, "{syscalls} calls for {sent} datagrams");
    }

    /// A datagram the kernel refuses is dropped and counted; the ones after it still go.
    #[tokio::test]
    async fn a_refused_datagram_does_not_stall_the_rest() {
        let sender = BatchedUdp::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = receiver.local_addr().unwrap();
        // An IPv6 destination from an IPv4 socket: refused by the kernel.
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        sender.send_to(b"lost", v6).await.unwrap();
        sender.send_to(b"kept", target).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), receiver.recv(&mut buf))
            .await
            .expect("the second datagram arrives")
            .unwrap();
        assert_eq!(&buf[..read], b"kept");
        assert_eq!(sender.counts().2, 1);
    }
}
