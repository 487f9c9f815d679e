//! The batched socket's tests: batches, GSO runs, lanes, refusals and idle release, on real
//! loopback sockets.

use super::*;

/// An IPv6 destination, which the kernel refuses from an IPv4 socket.
const REFUSED: &str = "[::1]:9";

/// A batched sender and a receiver on loopback, with the receiver's address.
async fn sender_and_receiver() -> (BatchedUdp, UdpSocket, SocketAddr) {
    let sender = BatchedUdp::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = receiver.local_addr().unwrap();
    (sender, receiver, target)
}

/// The next datagram `receiver` gets, within 5 s.
async fn recv(receiver: &UdpSocket, buf: &mut [u8]) -> usize {
    tokio::time::timeout(std::time::Duration::from_secs(5), receiver.recv(buf))
        .await
        .expect("a datagram within 5 s")
        .unwrap()
}

/// Many datagrams to several receivers, over two lanes, arrive whole and in order per
/// receiver, in far fewer system calls than datagrams, and both lanes send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_datagrams_leave_in_batches_and_arrive_in_order() {
    let sender = BatchedUdp::with_lanes(UdpSocket::bind("127.0.0.1:0").await.unwrap(), 2);
    // Two receivers in each lane, picked by the lane their address takes.
    let mut receivers = Vec::new();
    let mut per_lane = [0; 2];
    for _ in 0..64 {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let lane = lane_of(&receiver.local_addr().unwrap(), 2);
        if per_lane[lane] < 2 {
            per_lane[lane] += 1;
            receivers.push(receiver);
        }
    }
    assert_eq!(per_lane, [2, 2]);
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
            let read = recv(receiver, &mut buf).await;
            assert_eq!(read, 1000);
            assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), i);
        }
    }
    let (sent, syscalls, dropped) = sender.counts();
    assert_eq!((sent, dropped), (4 * EACH as u64, 0));
    assert!(syscalls < sent / 4, "{syscalls} calls for {sent} datagrams");
    let lanes = sender.lane_syscalls();
    assert!(
        lanes.iter().all(|&calls| calls > 0),
        "lanes' calls: {lanes:?}"
    );
}

/// A destination keeps its lane, and neighbouring ports spread evenly over the lanes.
#[test]
fn each_destination_keeps_one_lane_and_destinations_spread() {
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(lane_of(&at(5000), 4), lane_of(&at(5000), 4));
    let mut per_lane = [0; 4];
    for port in 5000..5064 {
        per_lane[lane_of(&at(port), 4)] += 1;
    }
    assert!(per_lane.iter().all(|&n| n >= 8), "{per_lane:?}");
    assert_eq!(lane_of(&at(5000), 1), 0);
    assert!(
        lane_of(&REFUSED.parse().unwrap(), 3) < 3,
        "an IPv6 destination"
    );
}

/// A frame's packets to one player (equal sizes, a shorter last) leave in one GSO call
/// and arrive as the datagrams they were, in order.
#[tokio::test]
async fn a_frame_to_one_player_leaves_in_one_gso_call() {
    let (sender, receiver, target) = sender_and_receiver().await;
    let sizes = [1200usize, 1200, 1200, 300];
    // Queued before the flusher runs: this test's runtime has one thread.
    for (i, size) in sizes.iter().enumerate() {
        sender.send_to(&vec![i as u8; *size], target).await.unwrap();
    }
    let mut buf = [0u8; 2048];
    for (i, size) in sizes.iter().enumerate() {
        let read = recv(&receiver, &mut buf).await;
        assert_eq!((read, buf[0]), (*size, i as u8));
    }
    assert_eq!(sender.counts(), (4, 1, 0));
}

/// A run the kernel refuses for its destination is dropped and counted, and the next
/// run to a reachable player still leaves as one GSO message.
#[tokio::test]
async fn a_refused_run_does_not_turn_gso_off() {
    let (sender, receiver, target) = sender_and_receiver().await;
    let v6: SocketAddr = REFUSED.parse().unwrap();
    for _ in 0..3 {
        sender.send_to(&[1u8; 1000], v6).await.unwrap();
    }
    // Let the flusher take that batch alone.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(sender.counts().2, 3);
    for _ in 0..3 {
        sender.send_to(&[2u8; 1000], target).await.unwrap();
    }
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        let read = recv(&receiver, &mut buf).await;
        assert_eq!((read, buf[0]), (1000, 2));
    }
    assert_eq!(sender.shared.gso_messages.load(Ordering::Relaxed), 1);
}

/// Buffers kept for reuse go back to the allocator once a lane has been idle a while,
/// so a server whose players left does not hold their peak of datagrams.
#[tokio::test]
async fn an_idle_lane_gives_its_spare_buffers_back() {
    let (sender, receiver, target) = sender_and_receiver().await;
    for _ in 0..100 {
        sender.send_to(&[3u8; 1000], target).await.unwrap();
    }
    let mut buf = [0u8; 2048];
    for _ in 0..100 {
        recv(&receiver, &mut buf).await;
    }
    let spare = || -> usize {
        sender
            .shared
            .lanes
            .iter()
            .map(|l| l.lock().spare.len())
            .sum()
    };
    assert!(spare() > 0, "sent buffers are kept for reuse while busy");
    tokio::time::sleep(IDLE_RELEASE * 3).await;
    assert_eq!(spare(), 0, "an idle lane keeps no spare buffers");
    sender.send_to(b"again", target).await.unwrap();
    let read = recv(&receiver, &mut buf).await;
    assert_eq!(
        &buf[..read],
        b"again",
        "the lane still sends after giving them back"
    );
}

/// A datagram the kernel refuses is dropped and counted; the ones after it still go.
#[tokio::test]
async fn a_refused_datagram_does_not_stall_the_rest() {
    let (sender, receiver, target) = sender_and_receiver().await;
    let v6: SocketAddr = REFUSED.parse().unwrap();
    sender.send_to(b"lost", v6).await.unwrap();
    sender.send_to(b"kept", target).await.unwrap();
    let mut buf = [0u8; 16];
    let read = recv(&receiver, &mut buf).await;
    assert_eq!(&buf[..read], b"kept");
    assert_eq!(sender.counts().2, 1);
}

/// A fan-out's burst (`Output::send_many`) leaves from the caller's thread when the lanes
/// hold nothing — a frame to one player as one GSO message, the others in one `sendmmsg` —
/// and is queued behind what the lanes hold otherwise, each destination's order kept. This
/// test's runtime has one thread: no flusher runs until it awaits.
#[tokio::test]
async fn a_burst_leaves_at_once_unless_the_lanes_hold_datagrams() {
    let sender = BatchedUdp::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    // Plain sockets read without the runtime: they see what has arrived, polled or not.
    let plain = || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        socket
    };
    let (receiver, other) = (plain(), plain());
    let target = receiver.local_addr().unwrap();
    // The runtime learns that a new socket is writable when it first polls it.
    sender.socket.writable().await.unwrap();
    let (output, _) = sender.sansio_io();
    let datagram = |tag: u8, size: usize| (BytesMut::from(&vec![tag; size][..]), target);
    let mut burst = vec![
        datagram(1, 1200),
        (BytesMut::from(&[9u8; 500][..]), other.local_addr().unwrap()),
        datagram(2, 1200),
        datagram(3, 700),
    ];
    output.send_many(&mut burst);
    assert!(burst.is_empty());
    let mut buf = [0u8; 2048];
    // There already, with no await in between: sent by `send_many` itself.
    for (tag, size) in [(1u8, 1200usize), (2, 1200), (3, 700)] {
        let read = receiver.recv(&mut buf).expect("sent at once");
        assert_eq!((read, buf[0]), (size, tag));
    }
    assert_eq!(other.recv(&mut buf).expect("sent at once"), 500);
    assert_eq!(
        sender.counts(),
        (4, 2, 0),
        "one GSO message and one sendmmsg"
    );

    // A datagram waits in a lane: the next burst queues behind it.
    sender.send_to(&[4u8; 100], target).await.unwrap();
    let mut burst = vec![datagram(5, 1200)];
    output.send_many(&mut burst);
    assert!(burst.is_empty());
    assert!(
        receiver.recv(&mut buf).is_err(),
        "not sent ahead of the lane"
    );
    let mut order = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        while let Ok(read) = receiver.recv(&mut buf) {
            order.push((buf[0], read));
        }
        if order.len() >= 2 {
            break;
        }
    }
    assert_eq!(order, [(4, 100), (5, 1200)], "in the order they came");
    // The lane has sent: bursts leave at once again.
    output.send_many(&mut vec![datagram(6, 300)]);
    assert_eq!(receiver.recv(&mut buf).expect("sent at once"), 300);
}

/// What a fan-out leaves for the lanes when the socket fills mid-batch is every datagram not
/// sent, in the order they were queued: the run it stopped at, the runs after it, and the
/// datagrams of the runs before it that were set aside to leave one by one.
#[test]
fn what_a_full_socket_leaves_unsent_is_every_datagram_not_sent_in_queue_order() {
    let address = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let (a, b, c) = (address(1001), address(1002), address(1003));
    let batch = vec![
        (vec![0u8; 100], a),
        (vec![1u8; 1200], b),
        (vec![2u8; 1200], b),
        (vec![3u8; 700], b),
        (vec![4u8; 100], c),
    ];
    let mut plan = Plan::default();
    plan.start(&batch);
    let at = |target| plan.runs.iter().position(|r| r.target == target).unwrap();
    let (run_a, run_b) = (at(a), at(b));
    assert_eq!((run_a, run_b), (0, 1), "runs in destination order");
    // `a`'s run of one set aside, then the socket full at `b`'s GSO message.
    plan.singles.push(0);
    let stopped = Progress { run: 1, single: 0 };
    assert_eq!(plan.unsent(&stopped), [0, 1, 2, 3, 4]);
    // Every run done (`c` set aside too), the first single sent, the socket full again.
    plan.singles.push(4);
    let stopped = Progress { run: 3, single: 1 };
    assert_eq!(plan.unsent(&stopped), [4]);
    assert!(plan.unsent(&Progress { run: 3, single: 2 }).is_empty());
}
