//! Counting receive, for load generation: each player's ICE candidate gets a UDP socket of
//! its own (`CountingMux`, a webrtc-rs `UDPMux` keyed by the player's ufrag) whose reads
//! are batched (`recvmmsg`) and whose SRTP media is counted from its clear header and
//! dropped there, never decrypted nor handed to webrtc-rs. STUN, DTLS and RTCP go through
//! as usual, and so does the first media packet of each kind, so the player's track starts
//! and its RTCP (the server's BYE) is read as with a full receive.
//!
//! What it counts is what a full receive would count on loopback, where no other sender
//! can reach the socket; it does not check the packets' authentication tags.

use std::collections::{HashMap, VecDeque};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use webrtc::ice::udp_mux::UDPMux;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::util::Conn;

use crate::Counters;

/// Datagrams taken per `recvmmsg` call: a frame's packets arrive together.
const BATCH: usize = 16;
/// Large enough for any datagram on loopback WebRTC (the MTU is far below).
const DATAGRAM_MAX: usize = 2048;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data only: a holder that panicked left it usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where one player's counted media goes.
struct MediaSink {
    counters: Arc<Counters>,
    first_packet: Arc<watch::Sender<Option<Instant>>>,
    /// RTP payload types of the answer's video section; any other media is audio.
    video_payload_types: Vec<u8>,
    passed_video: AtomicBool,
    passed_audio: AtomicBool,
    first_counted: AtomicBool,
}

impl MediaSink {
    fn new(
        counters: Arc<Counters>,
        first_packet: Arc<watch::Sender<Option<Instant>>>,
        video_payload_types: Vec<u8>,
    ) -> Self {
        MediaSink {
            counters,
            first_packet,
            video_payload_types,
            passed_video: AtomicBool::new(false),
            passed_audio: AtomicBool::new(false),
            first_counted: AtomicBool::new(false),
        }
    }
}

/// What a datagram is, by its first two bytes (RFC 7983, RFC 5761).
#[derive(Debug, PartialEq, Eq)]
enum Datagram {
    /// RTP with this payload type and marker bit.
    Rtp { payload_type: u8, marker: bool },
    /// STUN, DTLS, RTCP or anything else: webrtc-rs' to handle.
    Other,
}

fn classify(datagram: &[u8]) -> Datagram {
    let (Some(&first), Some(&second)) = (datagram.first(), datagram.get(1)) else {
        return Datagram::Other;
    };
    let payload_type = second & 0x7f;
    // 128..=191 is RTP or RTCP; RTCP's packet types 192..=223 read as payload types 64..=95.
    if !(128..=191).contains(&first) || (64..=95).contains(&payload_type) || datagram.len() < 12 {
        return Datagram::Other;
    }
    Datagram::Rtp {
        payload_type,
        marker: second & 0x80 != 0,
    }
}

/// Counts one RTP datagram for `sink`, or says it must go through (the first of its kind).
fn count(sink: &MediaSink, datagram: &[u8], payload_type: u8, marker: bool) -> bool {
    let video = sink.video_payload_types.contains(&payload_type);
    let passed = if video {
        &sink.passed_video
    } else {
        &sink.passed_audio
    };
    if !passed.swap(true, Ordering::Relaxed) {
        return false;
    }
    let counters = &sink.counters;
    if video {
        counters.video_packets.fetch_add(1, Ordering::Relaxed);
        if marker {
            counters.video_frames.fetch_add(1, Ordering::Relaxed);
        }
    } else {
        counters.audio_packets.fetch_add(1, Ordering::Relaxed);
    }
    // The encrypted payload with its tag: close to, not exactly, the plain payload's size.
    counters
        .bytes
        .fetch_add(datagram.len().saturating_sub(12) as u64, Ordering::Relaxed);
    counters.counted_unopened.fetch_add(1, Ordering::Relaxed);
    // Once: the watch's lock is not taken for every packet.
    if !sink.first_counted.swap(true, Ordering::Relaxed) {
        sink.first_packet
            .send_if_modified(|f| f.is_none() && f.replace(Instant::now()).is_none());
    }
    true
}

/// The reading side of one socket: batch buffers and what a batch left for webrtc-rs.
struct Reader {
    buffers: Vec<Vec<u8>>,
    passing: VecDeque<(Vec<u8>, SocketAddr)>,
}

/// One player's socket.
pub(crate) struct CountingConn {
    socket: UdpSocket,
    sink: OnceLock<MediaSink>,
    reader: Mutex<Reader>,
    syscalls: AtomicU64,
}

impl CountingConn {
    fn bind() -> std::io::Result<Self> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.set_nonblocking(true)?;
        Ok(CountingConn {
            socket: UdpSocket::from_std(socket)?,
            sink: OnceLock::new(),
            reader: Mutex::new(Reader {
                buffers: (0..BATCH).map(|_| vec![0; DATAGRAM_MAX]).collect(),
                passing: VecDeque::new(),
            }),
            syscalls: AtomicU64::new(0),
        })
    }

    /// Reads one batch: counts its media and queues the rest for webrtc-rs.
    fn read_batch(&self) -> std::io::Result<()> {
        let mut reader = lock(&self.reader);
        let Reader { buffers, passing } = &mut *reader;
        // Fixed arrays, not vectors: a batch read allocates only the kernel's headers.
        let mut received = [(0usize, None::<SocketAddr>); BATCH];
        let mut count_read = 0;
        {
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
            let mut buffers_left = buffers.iter_mut();
            let mut slices: [[IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
                let buffer = buffers_left.next().expect("BATCH buffers");
                [IoSliceMut::new(buffer.as_mut_slice())]
            });
            let messages = recvmmsg(
                self.socket.as_raw_fd(),
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(std::io::Error::from)?;
            for (slot, m) in received.iter_mut().zip(messages) {
                *slot = (m.bytes, m.address.and_then(socket_addr));
                count_read += 1;
            }
        }
        self.syscalls.fetch_add(1, Ordering::Relaxed);
        for (i, &(len, from)) in received[..count_read].iter().enumerate() {
            let datagram = &buffers[i][..len];
            let counted = match (classify(datagram), self.sink.get()) {
                (
                    Datagram::Rtp {
                        payload_type,
                        marker,
                    },
                    Some(sink),
                ) => count(sink, datagram, payload_type, marker),
                _ => false,
            };
            if !counted && let Some(from) = from {
                passing.push_back((datagram.to_vec(), from));
            }
        }
        Ok(())
    }
}

fn socket_addr(address: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        Some(SocketAddr::V4((*v4).into()))
    } else {
        address
            .as_sockaddr_in6()
            .map(|v6| SocketAddr::V6((*v6).into()))
    }
}

#[async_trait::async_trait]
impl Conn for CountingConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc::util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc::util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc::util::Result<(usize, SocketAddr)> {
        loop {
            if let Some((datagram, from)) = lock(&self.reader).passing.pop_front() {
                let len = datagram.len().min(buf.len());
                buf[..len].copy_from_slice(&datagram[..len]);
                return Ok((len, from));
            }
            match self
                .socket
                .async_io(Interest::READABLE, || self.read_batch())
                .await
            {
                Ok(()) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc::util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc::util::Result<usize> {
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc::util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_addr().ok()
    }

    async fn close(&self) -> webrtc::util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// The sockets of every player of one `Client`, by the ICE ufrag of their connection.
#[derive(Default)]
pub(crate) struct CountingMux {
    conns: Mutex<HashMap<String, Arc<CountingConn>>>,
}

impl CountingMux {
    /// Hands the media of player `pc` (its answer applied) to `counters` from now on; media
    /// that arrived before went through webrtc-rs and was counted there. False when the
    /// connection has no socket here (it then counts everything through webrtc-rs).
    pub async fn attach_player(
        &self,
        pc: &RTCPeerConnection,
        counters: Arc<Counters>,
        first_packet: Arc<watch::Sender<Option<Instant>>>,
    ) -> bool {
        let (Some(local), Some(remote)) =
            (pc.local_description().await, pc.remote_description().await)
        else {
            return false;
        };
        let video = video_payload_types(&remote.sdp);
        ice_ufrag(&local.sdp)
            .is_some_and(|ufrag| self.attach(ufrag, MediaSink::new(counters, first_packet, video)))
    }

    /// Sends the media arriving for the connection of `ufrag` to `sink` from now on;
    /// false when no such connection is open (or it already has a sink).
    fn attach(&self, ufrag: &str, sink: MediaSink) -> bool {
        let conn = lock(&self.conns).get(ufrag).cloned();
        conn.is_some_and(|c| c.sink.set(sink).is_ok())
    }

    /// `recvmmsg` calls made by every open socket (for the counting test).
    pub fn syscalls(&self) -> u64 {
        lock(&self.conns)
            .values()
            .map(|c| c.syscalls.load(Ordering::Relaxed))
            .sum()
    }
}

#[async_trait::async_trait]
impl UDPMux for CountingMux {
    async fn close(&self) -> Result<(), webrtc::util::Error> {
        lock(&self.conns).clear();
        Ok(())
    }

    async fn get_conn(
        self: Arc<Self>,
        ufrag: &str,
    ) -> Result<Arc<dyn Conn + Send + Sync>, webrtc::util::Error> {
        let mut conns = lock(&self.conns);
        if let Some(conn) = conns.get(ufrag) {
            return Ok(conn.clone());
        }
        let conn = Arc::new(CountingConn::bind()?);
        conns.insert(ufrag.to_owned(), conn.clone());
        Ok(conn)
    }

    async fn remove_conn_by_ufrag(&self, ufrag: &str) {
        lock(&self.conns).remove(ufrag);
    }
}

/// The payload types of an SDP's video sections.
fn video_payload_types(sdp: &str) -> Vec<u8> {
    sdp.lines()
        .filter_map(|line| line.strip_prefix("m=video "))
        .flat_map(|rest| rest.split_whitespace().skip(2))
        .filter_map(|pt| pt.parse().ok())
        .collect()
}

/// The first `a=ice-ufrag` of an SDP.
fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|line| line.trim_end().strip_prefix("a=ice-ufrag:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> MediaSink {
        MediaSink::new(
            Arc::new(Counters::default()),
            Arc::new(watch::channel(None).0),
            vec![96, 97],
        )
    }

    fn rtp(payload_type: u8, marker: bool) -> Vec<u8> {
        let mut d = vec![0x80, payload_type | if marker { 0x80 } else { 0 }];
        d.resize(112, 0);
        d
    }

    #[test]
    fn rtp_is_told_from_rtcp_stun_and_dtls() {
        assert_eq!(
            classify(&rtp(96, true)),
            Datagram::Rtp {
                payload_type: 96,
                marker: true
            }
        );
        let mut sender_report = rtp(0, false);
        sender_report[1] = 200;
        assert_eq!(classify(&sender_report), Datagram::Other, "RTCP SR");
        assert_eq!(classify(&[0x00, 0x01, 0, 0]), Datagram::Other, "STUN");
        assert_eq!(classify(&[22, 0xfe, 0xfd]), Datagram::Other, "DTLS");
        assert_eq!(classify(&[0x80]), Datagram::Other, "too short");
    }

    #[test]
    fn the_first_packet_of_each_kind_goes_through_and_the_rest_are_counted() {
        let sink = sink();
        assert!(!count(&sink, &rtp(96, false), 96, false), "first video");
        assert!(!count(&sink, &rtp(111, false), 111, false), "first audio");
        assert!(count(&sink, &rtp(96, false), 96, false));
        assert!(count(&sink, &rtp(97, true), 97, true));
        assert!(count(&sink, &rtp(111, false), 111, false));
        let c = &sink.counters;
        assert_eq!(c.video_packets.load(Ordering::Relaxed), 2);
        assert_eq!(c.video_frames.load(Ordering::Relaxed), 1);
        assert_eq!(c.audio_packets.load(Ordering::Relaxed), 1);
        assert_eq!(c.counted_unopened.load(Ordering::Relaxed), 3);
        assert!(sink.first_packet.borrow().is_some());
    }

    #[test]
    fn sdp_lines_give_the_video_payload_types_and_the_ufrag() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:abc\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\na=ice-ufrag:abc\r\n";
        assert_eq!(video_payload_types(sdp), vec![96, 97, 102]);
        assert_eq!(ice_ufrag(sdp), Some("abc"));
    }
}
