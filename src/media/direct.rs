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
use rtc::crypto::{HashAlgorithm, RTCCryptoProvider};
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
use rtc::srtp::protection_profile::ProtectionProfile;
use rtc::stun::attributes::{ATTR_USE_CANDIDATE, ATTR_USERNAME};
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{BINDING_REQUEST, BINDING_SUCCESS, Getter, Message, TransactionId};
use rtc::stun::textattrs::Username;
use rtc::stun::xoraddr::XorMappedAddress;

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
                let hashed = hasher
                    .crypto()
                    .hash(HashAlgorithm::Sha256, first)
                    .map_err(|e| rtc::shared::error::Error::Crypto(e.to_string()))?;
                let value: Vec<String> = hashed.iter().map(|b| format!("{b:02x}")).collect();
                let value = value.join(":");
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
        let mut response = Message::new();
        let built = response.build(&[
            Box::new(request.clone()),
            Box::new(BINDING_SUCCESS),
            Box::new(XorMappedAddress {
                ip: from.ip(),
                port: from.port(),
            }),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                self.local_pwd.clone(),
                self.shared.crypto.crypto(),
            )),
            Box::new(FINGERPRINT),
        ]);
        if built.is_ok() {
            self.transmits
                .push_back((BytesMut::from(&response.raw[..]), from));
        }
        if !self.pinged.contains(&from) && self.pinged.len() < MAX_CHECKED {
            self.pinged.push(from);
            self.check(from);
        }
    }

    /// A check of our own to `to`, as the `rtc` crate's ICE-lite agent sends on a client's
    /// first check: a controlling client that sees its pair work both ways nominates it at
    /// once rather than at its next check (200 ms later for webrtc-rs).
    fn check(&mut self, to: SocketAddr) {
        let mut request = Message::new();
        let built = request.build(&[
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(Username::new(
                ATTR_USERNAME,
                format!("{}:{}", self.remote_ufrag, self.local_ufrag),
            )),
            Box::new(AttrControlled(self.tie_breaker)),
            Box::new(PriorityAttr(HOST_PRIORITY)),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                self.remote_pwd.clone(),
                self.shared.crypto.crypto(),
            )),
            Box::new(FINGERPRINT),
        ]);
        if built.is_ok() {
            self.transmits
                .push_back((BytesMut::from(&request.raw[..]), to));
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

/// Our and the client's SRTP contexts from a finished DTLS handshake (RFC 5764 §4.2).
fn srtp_contexts(
    state: &rtc::dtls::state::State,
    crypto: &dyn RTCCryptoProvider,
) -> Result<Keys, String> {
    let profile = match state.srtp_protection_profile() {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm => ProtectionProfile::AeadAes256Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
            ProtectionProfile::Aes128CmHmacSha1_80
        }
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => {
            ProtectionProfile::Aes128CmHmacSha1_32
        }
        _ => return Err("no SRTP profile agreed".into()),
    };
    let mut config = rtc::srtp::config::Config {
        profile,
        ..Default::default()
    };
    let material = state
        .export_keying_material(
            rtc::srtp::config::LABEL_EXTRACTOR_DTLS_SRTP,
            &[],
            config.keying_material_len(),
        )
        .map_err(error)?;
    config
        .set_session_keys_from_keying_material(material.as_ref(), state.is_client())
        .map_err(error)?;
    let keys = &config.keys;
    let local = Context::new(
        &keys.local_master_key,
        &keys.local_master_salt,
        profile,
        None,
        None,
        crypto.crypto(),
    )
    .map_err(error)?;
    let remote = Context::new(
        &keys.remote_master_key,
        &keys.remote_master_salt,
        profile,
        Some(rtc::srtp::option::srtp_replay_protection(64)),
        Some(rtc::srtp::option::srtcp_replay_protection(64)),
        crypto.crypto(),
    )
    .map_err(error)?;
    Ok(Keys { local, remote })
}

/// The `sha-256` fingerprints of an SDP (session or media level), lower case.
pub fn sha256_fingerprints(sdp: &str) -> Vec<String> {
    let mut found: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("a=fingerprint:"))
        .filter_map(|f| {
            let (algorithm, value) = f.split_once(' ')?;
            algorithm
                .eq_ignore_ascii_case("sha-256")
                .then(|| value.trim().to_lowercase())
        })
        .collect();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    //! A client made of the same parts (a DTLS client endpoint, STUN checks, SRTP) against a
    //! `DirectSession`, datagrams carried by hand: no sockets.
    use super::*;
    use rtc::dtls::config::HandshakeConfig;
    use rtc::ice::attributes::control::AttrControlling;
    use rtc::ice::attributes::use_candidate::UseCandidateAttr;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::shared::marshal::Unmarshal;

    const SERVER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000);
    const CLIENT: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6000);

    struct Client {
        shared: DirectShared,
        dtls: Endpoint,
        keys: Option<Keys>,
        responses: Vec<Message>,
        requests: Vec<Message>,
        closed_by_server: bool,
    }

    fn fingerprint(shared: &DirectShared) -> String {
        let der = &shared.certificate.dtls_certificate.certificate[0];
        let hashed = shared
            .crypto
            .crypto()
            .hash(HashAlgorithm::Sha256, der)
            .unwrap();
        hashed
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn client_config(client: &DirectShared) -> Arc<HandshakeConfig> {
        Arc::new(
            ConfigBuilder::default()
                .with_crypto_provider(client.crypto.clone())
                .with_certificates(vec![client.certificate.dtls_certificate.clone()])
                .with_srtp_protection_profiles(vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm])
                .with_insecure_skip_verify(true)
                .with_extended_master_secret(ExtendedMasterSecretType::Require)
                .build(true, None)
                .unwrap(),
        )
    }

    /// A server session whose offer names `fingerprint` as the client's.
    fn server(fingerprint: String, now: Instant) -> DirectSession {
        let shared = Arc::new(DirectShared::new().unwrap());
        let params = DirectParams {
            local_ufrag: "srvu".into(),
            local_pwd: "serverpasswordserverpw".into(),
            remote_ufrag: "cliu".into(),
            remote_pwd: "clientpasswordclientpw".into(),
            remote_fingerprints: vec![fingerprint],
            failed_timeout: Duration::from_secs(8),
        };
        DirectSession::new(shared, params, now).unwrap()
    }

    fn check(password: &str, nominate: bool) -> BytesMut {
        let crypto = rtc::crypto::default_provider().unwrap();
        let mut m = Message::new();
        let mut setters: Vec<Box<dyn rtc::stun::message::Setter + '_>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(Username::new(ATTR_USERNAME, "srvu:cliu".into())),
            Box::new(AttrControlling(7)),
            Box::new(PriorityAttr(HOST_PRIORITY)),
        ];
        if nominate {
            setters.push(Box::new(UseCandidateAttr::new()));
        }
        setters.push(Box::new(
            MessageIntegrity::new_short_term_integrity_with_provider(
                password.to_owned(),
                crypto.crypto(),
            ),
        ));
        setters.push(Box::new(FINGERPRINT));
        m.build(&setters).unwrap();
        BytesMut::from(&m.raw[..])
    }

    impl Client {
        fn new() -> Self {
            Client {
                shared: DirectShared::new().unwrap(),
                dtls: Endpoint::new(CLIENT, TransportProtocol::UDP, None),
                keys: None,
                responses: Vec::new(),
                requests: Vec::new(),
                closed_by_server: false,
            }
        }

        fn take(&mut self, now: Instant, datagram: BytesMut) {
            if datagram.first().is_some_and(|b| *b < 4) {
                let mut m = Message::new();
                m.unmarshal_binary(&datagram).unwrap();
                if m.typ == BINDING_REQUEST {
                    self.requests.push(m);
                } else {
                    self.responses.push(m);
                }
                return;
            }
            if let Ok(events) = self.dtls.read(now, SERVER, None, datagram) {
                for event in events {
                    match event {
                        EndpointEvent::HandshakeComplete => {
                            let state = self.dtls.get_connection_state(SERVER).unwrap();
                            self.keys =
                                Some(srtp_contexts(state, self.shared.crypto.as_ref()).unwrap());
                        }
                        EndpointEvent::PeerClosed => self.closed_by_server = true,
                        _ => {}
                    }
                }
            }
        }
    }

    /// Carries datagrams both ways until neither side has any (bounded).
    fn pump(server: &mut DirectSession, client: &mut Client, now: Instant) {
        for _ in 0..50 {
            let mut moved = false;
            while let Some((datagram, to)) = server.poll_transmit() {
                assert_eq!(to, CLIENT);
                client.take(now, datagram);
                moved = true;
            }
            while let Some(t) = client.dtls.poll_transmit() {
                server.read(now, CLIENT, t.message);
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the two sides never went quiet");
    }

    /// Checks, DTLS and SRTP keys: the state after which RTP flows.
    fn connected(now: Instant) -> (DirectSession, Client) {
        let mut client = Client::new();
        let mut server = server(fingerprint(&client.shared), now);
        server.read(now, CLIENT, check("serverpasswordserverpw", true));
        pump(&mut server, &mut client, now);
        client
            .dtls
            .connect(now, SERVER, client_config(&client.shared), None)
            .unwrap();
        pump(&mut server, &mut client, now);
        (server, client)
    }

    #[test]
    fn a_checked_client_connects_and_decrypts_the_rtp_sent_to_it() {
        let now = Instant::now();
        let (mut server, mut client) = connected(now);
        assert_eq!(client.responses.len(), 1, "one answer to one check");
        let mut mapped = XorMappedAddress {
            ip: SERVER.ip(),
            port: 0,
        };
        mapped.get_from(&client.responses[0]).unwrap();
        assert_eq!(SocketAddr::new(mapped.ip, mapped.port), CLIENT);
        // Our own check went to the client, with its credentials.
        let mut username = Username::new(ATTR_USERNAME, String::new());
        username.get_from(&client.requests[0]).unwrap();
        assert_eq!(username.to_string(), "cliu:srvu");
        assert!(matches!(server.poll_event(), Some(DirectEvent::Connected)));
        let keys = client.keys.as_mut().expect("the client's SRTP keys");
        let header = Header {
            version: 2,
            payload_type: 96,
            sequence_number: 4242,
            timestamp: 90_000,
            ssrc: 0x1234_5678,
            ..Default::default()
        };
        let mut out = Vec::new();
        assert!(server.write_rtp(&header, &Bytes::from_static(b"frame bytes"), &mut out));
        let (datagram, to) = out.pop().unwrap();
        assert_eq!(to, CLIENT);
        let plain = keys.remote.decrypt_rtp(&datagram).unwrap();
        let packet = rtc::rtp::packet::Packet::unmarshal(&mut &plain[..]).unwrap();
        assert_eq!(packet.header.sequence_number, 4242);
        assert_eq!(packet.header.ssrc, 0x1234_5678);
        assert_eq!(&packet.payload[..], b"frame bytes");
    }

    #[test]
    fn a_check_with_the_wrong_password_is_not_answered_nor_its_dtls_read() {
        let now = Instant::now();
        let mut client = Client::new();
        let mut server = server(fingerprint(&client.shared), now);
        server.read(now, CLIENT, check("not-the-password-at-all", true));
        assert!(
            server.poll_transmit().is_none(),
            "no answer to a forged check"
        );
        client
            .dtls
            .connect(now, SERVER, client_config(&client.shared), None)
            .unwrap();
        pump(&mut server, &mut client, now);
        assert!(client.keys.is_none());
        assert!(server.poll_event().is_none());
        let mut out = Vec::new();
        assert!(!server.write_rtp(&Header::default(), &Bytes::new(), &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn a_client_whose_certificate_the_offer_does_not_name_never_connects() {
        let now = Instant::now();
        let mut client = Client::new();
        let stranger = DirectShared::new().unwrap();
        let mut server = server(fingerprint(&stranger), now);
        server.read(now, CLIENT, check("serverpasswordserverpw", true));
        pump(&mut server, &mut client, now);
        client
            .dtls
            .connect(now, SERVER, client_config(&client.shared), None)
            .unwrap();
        pump(&mut server, &mut client, now);
        assert!(!matches!(server.poll_event(), Some(DirectEvent::Connected)));
        let mut out = Vec::new();
        assert!(!server.write_rtp(&Header::default(), &Bytes::new(), &mut out));
    }

    #[test]
    fn the_clients_rtcp_reaches_the_task_and_its_silence_fails_the_connection() {
        let now = Instant::now();
        let (mut server, mut client) = connected(now);
        assert!(matches!(server.poll_event(), Some(DirectEvent::Connected)));
        let pli: Vec<Box<dyn RtcpPacket>> = vec![Box::new(PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: 0x1234_5678,
        })];
        let plain = rtc::rtcp::packet::marshal(&pli).unwrap();
        let keys = client.keys.as_mut().unwrap();
        let datagram = keys.local.encrypt_rtcp(&plain).unwrap();
        let later = now + Duration::from_secs(5);
        server.read(later, CLIENT, datagram);
        let Some(DirectEvent::Rtcp(packets)) = server.poll_event() else {
            panic!("no RTCP event");
        };
        assert!(packets[0].as_any().is::<PictureLossIndication>());
        // Heard at `later`: silent until its failed timeout after that, not before.
        server.handle_timeout(later + Duration::from_secs(7));
        assert!(server.poll_event().is_none());
        assert!(server.poll_timeout().unwrap() <= later + Duration::from_secs(8));
        server.handle_timeout(later + Duration::from_secs(8));
        assert!(matches!(server.poll_event(), Some(DirectEvent::Failed(_))));
    }

    #[test]
    fn an_unconnected_session_has_no_silence_deadline_to_spin_on() {
        let now = Instant::now();
        let mut server = server("00".into(), now);
        server.read(now, CLIENT, check("serverpasswordserverpw", true));
        while server.poll_transmit().is_some() {}
        // Long past the failed timeout, not connected: nothing to wake for (the task's
        // connect timeout stops it), so no deadline left in the past.
        server.handle_timeout(now + Duration::from_secs(60));
        assert!(server.poll_event().is_none());
        assert_eq!(server.poll_timeout(), None);
    }

    #[test]
    fn close_tells_the_client_and_nothing_is_sent_after_it() {
        let now = Instant::now();
        let (mut server, mut client) = connected(now);
        server.close(now);
        pump(&mut server, &mut client, now);
        assert!(client.closed_by_server, "close_notify reached the client");
        let mut out = Vec::new();
        assert!(!server.write_rtp(&Header::default(), &Bytes::new(), &mut out));
        server.read(now, CLIENT, check("serverpasswordserverpw", true));
        assert!(server.poll_transmit().is_none());
    }

    #[test]
    fn an_offers_sha256_fingerprints_are_read_in_lower_case() {
        let sdp = "v=0\r\na=fingerprint:sha-256 AB:CD\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-1 00:11\r\na=fingerprint:SHA-256 ab:cd\r\n";
        assert_eq!(sha256_fingerprints(sdp), vec!["ab:cd".to_owned()]);
    }
}
