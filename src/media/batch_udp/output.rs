//! The sans-I/O players' handle on the mux socket (`Output`): single datagrams queued on
//! the lanes, and a fan-out's bursts sent from the caller's thread when the lanes are empty.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::net::UdpSocket;

use super::{Plan, Progress, Shared};

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
        let shared = &self.shared;
        plan.start(datagrams);
        let mut progress = Progress::default();
        if shared
            .send_planned(
                &self.socket,
                &shared.lanes[0],
                datagrams,
                plan,
                &mut progress,
            )
            .is_ok()
        {
            datagrams.clear();
            return;
        }
        // In the order they came, so that each destination's stay in order on its lane.
        let mut kept = 0;
        for index in plan.unsent(&progress) {
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
