//! The kernel's floor for the relay's fan-out on loopback (issue 20, BENCHMARKS.md): the
//! sender thread's CPU per 1 200-byte datagram when one packet goes to each of N players'
//! sockets, sent three ways side by side — one `sendto` per datagram (what webrtc-rs does),
//! `sendmmsg` batches across the players (nix), and, for one player, UDP GSO runs of one
//! destination (quinn-udp). The players are N tokio sockets read on another thread, as the
//! load generator reads them. No WebRTC: this is what any relay pays before its own work.
//!
//! ```sh
//! cargo run --release -p relay-021 --bin udp_floor -- 200   # players (default 200)
//! ```

use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, sendmmsg};
use nix::time::{ClockId, clock_gettime};

const DATAGRAM: usize = 1200;
/// Rounds per mode: one datagram to every player each round.
const ROUNDS: usize = 2_000;
/// `sendmmsg` batch size (Linux caps one call at 1 024 messages).
const BATCH: usize = 64;

fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// Starts `n` receiving sockets on a thread of their own; returns their addresses and the
/// count of datagrams they have read.
fn players(n: usize) -> (Vec<SocketAddr>, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind a player");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    let addresses = sockets
        .iter()
        .map(|s| s.local_addr().expect("addr"))
        .collect();
    let count = received.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut tasks = Vec::new();
            for socket in sockets {
                let socket = tokio::net::UdpSocket::from_std(socket).expect("tokio socket");
                let count = count.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = [0u8; 65_536];
                    while socket.recv(&mut buf).await.is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        });
    });
    (addresses, received)
}

/// Sends `ROUNDS` rounds with `send_round`; the sender's CPU and wall time per datagram.
fn measure(
    label: &str,
    datagrams_per_round: usize,
    received: &AtomicU64,
    mut send_round: impl FnMut(),
) -> f64 {
    let before = received.load(Ordering::Relaxed);
    let (cpu, wall) = (thread_cpu(), Instant::now());
    for _ in 0..ROUNDS {
        send_round();
    }
    let cpu = thread_cpu() - cpu;
    let wall = wall.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let sent = (ROUNDS * datagrams_per_round) as f64;
    let got = (received.load(Ordering::Relaxed) - before) as f64;
    let per = cpu.as_secs_f64() * 1e9 / sent;
    println!(
        "{label:<44} {per:>8.0} ns/datagram CPU  {:>8.0} ns wall  received {:>5.1} %",
        wall.as_secs_f64() * 1e9 / sent,
        100.0 * got / sent
    );
    per
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200);
    let (addresses, received) = players(n);
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    let payload = vec![0x5a_u8; DATAGRAM];
    std::thread::sleep(Duration::from_millis(200));
    println!("udp floor: {n} players, {DATAGRAM}-byte datagrams, {ROUNDS} rounds each");

    let one_by_one = measure("sendto, one per datagram", n, &received, || {
        for address in &addresses {
            let _ = sender.send_to(&payload, address);
        }
    });

    let targets: Vec<Option<SockaddrIn>> = addresses
        .iter()
        .map(|a| match a {
            SocketAddr::V4(v4) => Some(SockaddrIn::from(*v4)),
            SocketAddr::V6(_) => None,
        })
        .collect();
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
    let slices: Vec<[IoSlice<'_>; 1]> = (0..BATCH).map(|_| [IoSlice::new(&payload)]).collect();
    let batched = measure(
        &format!("sendmmsg, batches of {BATCH}"),
        n,
        &received,
        || {
            for chunk in targets.chunks(BATCH) {
                let _ = sendmmsg(
                    sender.as_raw_fd(),
                    &mut headers,
                    slices[..chunk.len()].iter(),
                    chunk,
                    [],
                    MsgFlags::empty(),
                );
            }
        },
    );

    let state = quinn_udp::UdpSocketState::new(quinn_udp::UdpSockRef::from(&sender))?;
    // One GSO send is one UDP datagram's worth of payload at most (64 KiB).
    let segments = state.max_gso_segments().clamp(1, 65_000 / DATAGRAM);
    let run = vec![0x5a_u8; DATAGRAM * segments];
    let gso = measure(
        &format!("GSO to one player, runs of {segments} (quinn-udp)"),
        segments,
        &received,
        || {
            if let Err(e) = state.try_send(
                quinn_udp::UdpSockRef::from(&sender),
                &quinn_udp::Transmit {
                    destination: addresses[0],
                    ecn: None,
                    contents: &run,
                    segment_size: (segments > 1).then_some(DATAGRAM),
                    src_ip: None,
                },
            ) {
                eprintln!("GSO send failed: {e}");
            }
        },
    );
    println!(
        "UDPFLOOR|{n}|{one_by_one:.0}|{batched:.0}|{gso:.0}|{:.2}|{:.2}",
        batched / one_by_one,
        gso / one_by_one
    );
    Ok(())
}
