//! The sans-I/O players' handle on the mux socket (`Output`): single datagrams queued on
//! the lanes, and a fan-out's bursts sent from the caller's thread when the lanes are empty.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::{BATCH, Plan, Shared, gso, send_batch, send_gso};

/// A handle that sends datagrams on a [`BatchedUdp`]'s socket, for the sans-I/O players.
#[derive(Clone)]
pub struct Output {
    pub(super) shared: Arc<Shared>,
    pub(super) socket: Arc<UdpSocket>,
}

impl Output {
    pub fn send(&self, buf: &[u8], target: SocketAddr) {
        self.shared.enqueue(buf, target);
    }

    /// Sends every datagram of `datagrams` (a burst fanned out to many players) from the
    /// caller's thread, as GSO runs and `sendmmsg` batches, when the lanes hold nothing and
    /// the socket takes them without waiting; what it would not take, or everything while
    /// the lanes hold datagrams, is queued on the lanes (copied into their spare buffers,
    /// each lane's lock taken once). `datagrams` is left empty. Sending at once saves the
    /// copy and the flusher's wake-up per burst.
    pub fn send_many(&self, datagrams: &mut Vec<(BytesMut, SocketAddr)>) {
        if self.shared.queued.load(Ordering::Acquire) == 0 {
            PLAN.with_borrow_mut(|plan| self.send_now(datagrams, plan));
        }
        if !datagrams.is_empty() {
            self.shared.enqueue_many(datagrams);
        }
    }

    /// Sends what the socket takes now of `datagrams`; leaves in it what it would not take.
    fn send_now(&self, datagrams: &mut Vec<(BytesMut, SocketAddr)>, plan: &mut Plan) {
        let fd = self.socket.as_raw_fd();
        let shared = &self.shared;
        let lane = &shared.lanes[0];
        let now = |send: &mut dyn FnMut() -> std::io::Result<usize>| {
            self.socket.try_io(Interest::WRITABLE, send)
        };
        let would_block = |e: &std::io::Error| e.kind() == std::io::ErrorKind::WouldBlock;
        gso::plan(datagrams, &mut plan.order, &mut plan.runs);
        plan.singles.clear();
        plan.left.clear();
        for run in &plan.runs {
            let members = &plan.order[run.range.clone()];
            if !plan.left.is_empty() {
                plan.left.extend_from_slice(members);
                continue;
            }
            if run.len() > 1 && shared.gso.load(Ordering::Relaxed) {
                let (segment, target) = (run.segment, run.target);
                match now(&mut || send_gso(fd, datagrams, members, segment, target)) {
                    Ok(_) => {
                        shared.count(lane, members.len(), 1);
                        shared.gso_messages.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) if would_block(&e) => {
                        plan.left.extend_from_slice(members);
                        continue;
                    }
                    Err(e) => shared.gso_refused(&e),
                }
            }
            plan.singles.extend_from_slice(members);
        }
        let mut start = 0;
        while start < plan.singles.len() && plan.left.is_empty() {
            let chunk = &plan.singles[start..(start + BATCH).min(plan.singles.len())];
            match now(&mut || send_batch(fd, datagrams, chunk)) {
                Ok(n) => {
                    shared.count(lane, n, 1);
                    start += n.max(1);
                }
                Err(e) if would_block(&e) => plan.left.extend_from_slice(&plan.singles[start..]),
                Err(_) => {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    start += 1;
                }
            }
        }
        if plan.left.is_empty() {
            datagrams.clear();
            return;
        }
        // In the order they came, so that each destination's stay in order on its lane.
        plan.left.sort_unstable();
        let mut kept = 0;
        for &index in &plan.left {
            datagrams.swap(kept, index);
            kept += 1;
        }
        datagrams.truncate(kept);
    }
}

thread_local! {
    /// A fan-out's planning buffers, reused by every burst its thread sends.
    static PLAN: RefCell<Plan> = RefCell::default();
}
