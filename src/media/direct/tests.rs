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
    fingerprint_of(shared.crypto.as_ref(), der).unwrap()
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

/// A check, then the DTLS handshake, between a client and a server whose offer names the
/// certificate of fingerprint `named` as the client's.
fn handshake(client: &mut Client, named: String, now: Instant) -> DirectSession {
    let mut server = server(named, now);
    server.read(now, CLIENT, check("serverpasswordserverpw", true));
    pump(&mut server, client, now);
    client
        .dtls
        .connect(now, SERVER, client_config(&client.shared), None)
        .unwrap();
    pump(&mut server, client, now);
    server
}

/// Checks, DTLS and SRTP keys: the state after which RTP flows.
fn connected(now: Instant) -> (DirectSession, Client) {
    let mut client = Client::new();
    let own = fingerprint(&client.shared);
    let server = handshake(&mut client, own, now);
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
    let mut server = handshake(&mut client, fingerprint(&stranger), now);
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
