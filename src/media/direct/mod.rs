//! A player's connection driven directly over the `rtc` crate's parts (`media_direct_players`,
//! the default): an ICE-lite responder (`stun`), a DTLS server (`dtls`) and SRTP (`srtp`),
//! without its peer connection. A relay's player needs nothing else — it sends RTP, and the
//! RTCP it receives is the task's to act on — and the peer connection's write path (a message
//! moved through eight handler queues, each with its own statistics) was half the server's
//! CPU per forwarded packet at 200 players. Protocol state only: datagrams in, datagrams and
//! events out, timers read and driven by the caller, so it is tested without sockets.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::crypto::RTCCryptoProvider;
use rtc::dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType};
use rtc::dtls::endpoint::{Endpoint, EndpointEvent};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::ice::attributes::control::AttrControlled;
use rtc::ice::attributes::priority::PriorityAttr;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::rtcp::packet::Packet as RtcpPacket;
use rtc::rtp::header::Header;
use rtc::shared::TransportProtocol;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::context::Context;
use rtc::stun::attributes::{ATTR_USE_CANDIDATE, ATTR_USERNAME};
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{
    BINDING_REQUEST, BINDING_SUCCESS, Getter, Message, Setter, TransactionId,
};
use rtc::stun::textattrs::Username;
use rtc::stun::xoraddr::XorMappedAddress;

mod keys;
#[cfg(test)]
mod tests;

pub use keys::sha256_fingerprints;
use keys::{fingerprint_of, srtp_contexts};

/// What a connection tells its task.
pub enum DirectEvent {
    /// DTLS is up and SRTP keyed: RTP can go out.
    Connected,
    /// The client went silent for the failed timeout, its DTLS failed, or it closed it.
    Failed(&'static str),
    /// RTCP the client sent (receiver reports, NACKs, key frame requests, BYE).
    Rtcp(Vec<Box<dyn RtcpPacket>>),
}

/// What every direct connection of a server shares: its crypto and its one certificate (the
/// fingerprint in every answer).
pub struct DirectShared {
    pub crypto: Arc<dyn RTCCryptoProvider>,
    pub certificate: RTCCertificate,
}

impl DirectShared {
    pub fn new() -> Result<Self, String> {
        let crypto = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
        let params =
            rtc::peer_connection::certificate::CertificateParams::new(vec!["sluice".to_owned()])
                .map_err(|e| e.to_string())?;
        let certificate = RTCCertificate::generate(
            crypto.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            params,
        )
        .map_err(|e| e.to_string())?;
        Ok(DirectShared {
            crypto,
            certificate,
        })
    }
}

/// The sides of a negotiated connection the answer fixed.
pub struct DirectParams {
    pub local_ufrag: String,
    pub local_pwd: String,
    /// The client's ICE credentials, which our own checks carry.
    pub remote_ufrag: String,
    pub remote_pwd: String,
    /// The offer's `sha-256` certificate fingerprints (`ab:cd:…`, lower case).
    pub remote_fingerprints: Vec<String>,
    pub failed_timeout: Duration,
}

/// SRTP contexts once DTLS is up: ours for sending, the client's for its RTCP.
struct Keys {
    local: Context,
    remote: Context,
}

/// One player's connection.
pub struct DirectSession {
    shared: Arc<DirectShared>,
    local_ufrag: String,
    local_pwd: String,
    remote_ufrag: String,
    remote_pwd: String,
    tie_breaker: u64,
    failed_timeout: Duration,
    dtls: Endpoint,
    /// Addresses that passed an ICE check: only their DTLS is read.
    checked: Vec<SocketAddr>,
    /// Addresses our own check has gone to in this ICE session.
    pinged: Vec<SocketAddr>,
    /// Where DTLS runs and media goes: the nominated address, else the first checked one.
    remote: Option<SocketAddr>,
    nominated: bool,
    keys: Option<Keys>,
    /// When anything authentic last came from the client.
    last_heard: Instant,
    closed: bool,
    failed: bool,
    transmits: VecDeque<(BytesMut, SocketAddr)>,
    events: VecDeque<DirectEvent>,
    /// The plain RTP packet before encryption, reused.
    scratch: Vec<u8>,
}

/// A host candidate's ICE priority (type preference 126, local 65535, component 1).
const HOST_PRIORITY: u32 = (126 << 24) | (65535 << 8) | 255;

/// Most checked addresses kept: a client's host, reflexive and relayed candidates.
const MAX_CHECKED: usize = 8;

fn error(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl DirectSession {
    pub fn new(
        shared: Arc<DirectShared>,
        params: DirectParams,
        now: Instant,
    ) -> Result<Self, String> {
        let fingerprints = params.remote_fingerprints;
        let hasher = shared.crypto.clone();
        // `insecure_skip_verify` only skips the chain (a WebRTC certificate is self-signed); the
        // fingerprint the offer carries is what admits the client's certificate.
        let verify = Arc::new(
            move |certs: &[Vec<u8>], _: &[_]| -> rtc::shared::error::Result<()> {
                let first = certs
                    .first()
                    .ok_or(rtc::shared::error::Error::ErrNonCertificate)?;
                let value = fingerprint_of(hasher.as_ref(), first)
                    .map_err(rtc::shared::error::Error::Crypto)?;
                if fingerprints.contains(&value) {
                    Ok(())
                } else {
                    Err(rtc::shared::error::Error::ErrNoMatchingCertificateFingerprint)
                }
            },
        );
        let config = ConfigBuilder::default()
            .with_crypto_provider(shared.crypto.clone())
            .with_certificates(vec![shared.certificate.dtls_certificate.clone()])
            // The peer connection's profiles, in its order.
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
            ])
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .build(false, None)
            .map_err(error)?;
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Ok(DirectSession {
            shared,
            local_ufrag: params.local_ufrag,
            local_pwd: params.local_pwd,
            remote_ufrag: params.remote_ufrag,
            remote_pwd: params.remote_pwd,
            tie_breaker: uuid::Uuid::new_v4().as_u64_pair().0,
            failed_timeout: params.failed_timeout,
            dtls: Endpoint::new(unspecified, TransportProtocol::UDP, Some(Arc::new(config))),
            checked: Vec::new(),
            pinged: Vec::new(),
            remote: None,
            nominated: false,
            keys: None,
            last_heard: now,
            closed: false,
            failed: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            scratch: Vec::with_capacity(1500),
        })
    }

    /// New ICE credentials, local and the client's (an ICE restart); DTLS and SRTP carry on.
    pub fn restart(&mut self, local: (String, String), remote: (String, String)) {
        (self.local_ufrag, self.local_pwd) = local;
        (self.remote_ufrag, self.remote_pwd) = remote;
        self.pinged.clear();
    }

    /// Takes one datagram from `from`.
    pub fn read(&mut self, now: Instant, from: SocketAddr, datagram: BytesMut) {
        if self.closed {
            return;
        }
        match datagram.first() {
            Some(0..=3) => self.read_stun(now, from, &datagram),
            Some(20..=63) if self.checked.contains(&from) => self.read_dtls(now, from, datagram),
            Some(128..=191) if Some(from) == self.remote => self.read_srtcp(now, &datagram),
            _ => {}
        }
    }

    fn read_stun(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let mut request = Message::new();
        if request.unmarshal_binary(datagram).is_err() || request.typ != BINDING_REQUEST {
            return;
        }
        let mut username = Username::new(ATTR_USERNAME, String::new());
        if username.get_from(&request).is_err()
            || username.to_string().split(':').next() != Some(self.local_ufrag.as_str())
            || FINGERPRINT.check(&request).is_err()
            || MessageIntegrity::check(
                &mut request,
                self.local_pwd.as_bytes(),
                self.shared.crypto.crypto(),
            )
            .is_err()
        {
            return;
        }
        self.last_heard = now;
        if !self.checked.contains(&from) {
            if self.checked.len() == MAX_CHECKED {
                self.checked.remove(0);
            }
            self.checked.push(from);
        }
        if request.contains(ATTR_USE_CANDIDATE) {
            self.nominated = true;
            self.remote = Some(from);
        } else if self.remote.is_none() {
            self.remote = Some(from);
        }
        // The request's transaction id, answered from where it came.
        let response: [Box<dyn Setter>; 3] = [
            Box::new(request.clone()),
            Box::new(BINDING_SUCCESS),
            Box::new(XorMappedAddress {
                ip: from.ip(),
                port: from.port(),
            }),
        ];
        let password = self.local_pwd.clone();
        self.send_stun(response, password, from);
        if !self.pinged.contains(&from) && self.pinged.len() < MAX_CHECKED {
            self.pinged.push(from);
            self.check(from);
        }
    }

    /// A check of our own to `to`, as the `rtc` crate's ICE-lite agent sends on a client's
    /// first check: a controlling client that sees its pair work both ways nominates it at
    /// once rather than at its next check (200 ms later for webrtc-rs).
    fn check(&mut self, to: SocketAddr) {
        let request: [Box<dyn Setter>; 5] = [
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(Username::new(
                ATTR_USERNAME,
                format!("{}:{}", self.remote_ufrag, self.local_ufrag),
            )),
            Box::new(AttrControlled(self.tie_breaker)),
            Box::new(PriorityAttr(HOST_PRIORITY)),
        ];
        let password = self.remote_pwd.clone();
        self.send_stun(request, password, to);
    }

    /// Queues a STUN message of `attributes`, signed with `password` (short-term
    /// credentials) and fingerprinted, for `to`.
    fn send_stun(
        &mut self,
        attributes: impl IntoIterator<Item = Box<dyn Setter>>,
        password: String,
        to: SocketAddr,
    ) {
        let crypto = self.shared.crypto.crypto();
        let mut setters: Vec<Box<dyn Setter + '_>> =
            attributes.into_iter().map(|a| a as _).collect();
        setters.push(Box::new(
            MessageIntegrity::new_short_term_integrity_with_provider(password, crypto),
        ));
        setters.push(Box::new(FINGERPRINT));
        let mut message = Message::new();
        if message.build(&setters).is_ok() {
            self.transmits
                .push_back((BytesMut::from(&message.raw[..]), to));
        }
    }

    fn read_dtls(&mut self, now: Instant, from: SocketAddr, datagram: BytesMut) {
        let events = self.dtls.read(now, from, None, datagram);
        self.take_dtls_transmits();
        match events {
            Ok(events) => {
                self.last_heard = now;
                for event in events {
                    match event {
                        EndpointEvent::HandshakeComplete => self.key(from),
                        EndpointEvent::PeerClosed => self.fail("the client closed DTLS"),
                        _ => {}
                    }
                }
            }
            // A handshake that fails (a certificate the offer does not name) leaves the
            // session to its connect timeout, as the peer connection's does.
            Err(e) => tracing::debug!(error = %e, "direct player: DTLS"),
        }
    }

    fn take_dtls_transmits(&mut self) {
        while let Some(transmit) = self.dtls.poll_transmit() {
            self.transmits
                .push_back((transmit.message, transmit.transport.peer_addr));
        }
    }

    /// SRTP keys from the finished handshake with `from`.
    fn key(&mut self, from: SocketAddr) {
        let keyed = self
            .dtls
            .get_connection_state(from)
            .ok_or_else(|| "no DTLS state".to_owned())
            .and_then(|state| srtp_contexts(state, self.shared.crypto.as_ref()));
        match keyed {
            Ok(keys) => {
                self.keys = Some(keys);
                if !self.nominated {
                    self.remote = Some(from);
                }
                self.events.push_back(DirectEvent::Connected);
            }
            Err(e) => {
                tracing::debug!(error = %e, "direct player: SRTP keys");
                self.fail("SRTP keying failed");
            }
        }
    }

    fn read_srtcp(&mut self, now: Instant, datagram: &[u8]) {
        // RTP from a receive-only player is not expected; RTCP's packet types are 192–223.
        if !matches!(datagram.get(1), Some(192..=223)) {
            return;
        }
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        let Ok(plain) = keys.remote.decrypt_rtcp(datagram) else {
            return;
        };
        self.last_heard = now;
        if let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut plain.freeze())
            && !packets.is_empty()
        {
            self.events.push_back(DirectEvent::Rtcp(packets));
        }
    }

    fn fail(&mut self, why: &'static str) {
        if !self.failed {
            self.failed = true;
            self.events.push_back(DirectEvent::Failed(why));
        }
    }

    /// Encrypts one RTP packet into a datagram in `out`; whether it went (it does once the
    /// connection is up).
    pub fn write_rtp(
        &mut self,
        header: &Header,
        payload: &Bytes,
        out: &mut Vec<(BytesMut, SocketAddr)>,
    ) -> bool {
        let (Some(keys), Some(to), false) = (self.keys.as_mut(), self.remote, self.closed) else {
            return false;
        };
        let size = header.marshal_size();
        self.scratch.clear();
        self.scratch.resize(size, 0);
        if header.marshal_to(&mut self.scratch[..size]).is_err() {
            return false;
        }
        self.scratch.extend_from_slice(payload);
        match keys.local.encrypt_rtp_with_header(&self.scratch, header) {
            Ok(datagram) => {
                out.push((datagram, to));
                true
            }
            Err(_) => false,
        }
    }

    /// Encrypts a compound RTCP packet for the client.
    pub fn write_rtcp(&mut self, packets: &[Box<dyn RtcpPacket>]) {
        let (Some(keys), Some(to), false) = (self.keys.as_mut(), self.remote, self.closed) else {
            return;
        };
        let Ok(plain) = rtc::rtcp::packet::marshal(packets) else {
            return;
        };
        if let Ok(datagram) = keys.local.encrypt_rtcp(&plain) {
            self.transmits.push_back((datagram, to));
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(BytesMut, SocketAddr)> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<DirectEvent> {
        self.events.pop_front()
    }

    /// The next time `handle_timeout` has work: a DTLS retransmission, or the client's
    /// silence reaching the failed timeout.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed || self.failed {
            return None;
        }
        // Silence counts once connected; before that the task's connect timeout rules.
        let silence = self
            .keys
            .as_ref()
            .map(|_| self.last_heard + self.failed_timeout);
        let retransmit = self
            .dtls
            .get_connections_keys()
            .filter_map(|remote| self.dtls.poll_timeout(remote))
            .min();
        match (silence, retransmit) {
            (Some(s), Some(r)) => Some(s.min(r)),
            (s, r) => s.or(r),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if self.keys.is_some() && now >= self.last_heard + self.failed_timeout {
            self.fail("the client went silent");
        }
        let remotes: Vec<SocketAddr> = self.dtls.get_connections_keys().copied().collect();
        for remote in remotes {
            if self.dtls.handle_timeout(remote, now).is_err() && self.keys.is_none() {
                self.fail("the DTLS handshake timed out");
            }
        }
        self.take_dtls_transmits();
    }

    /// DTLS close_notify to the client; nothing is sent after it.
    pub fn close(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        let _ = self.dtls.close(now);
        self.take_dtls_transmits();
        self.closed = true;
    }
}
