//! Which datagrams of the mux socket belong to a player on the sans-I/O engine
//! (`rtc_player`) rather than to webrtc-rs' own mux: a STUN request whose `USERNAME` names
//! a registered local ufrag claims its source address for that player, and every later
//! datagram from the address goes to it. Everything else is left to webrtc-rs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use bytes::BytesMut;
use tokio::sync::mpsc;
use webrtc::stun::attributes::ATTR_USERNAME;
use webrtc::stun::message::{BINDING_REQUEST, Getter, Message};
use webrtc::stun::textattrs::Username;

/// One datagram for a player: its bytes, its source, when it arrived.
pub type Inbound = (BytesMut, SocketAddr, Instant);

/// The routes, by local ufrag and by learned source address.
#[derive(Default)]
pub struct Divert {
    routes: Mutex<Routes>,
    /// Ufrags registered: when 0, a datagram costs one atomic load.
    players: AtomicUsize,
}

#[derive(Default)]
struct Routes {
    by_ufrag: HashMap<String, mpsc::Sender<Inbound>>,
    by_addr: HashMap<SocketAddr, (String, mpsc::Sender<Inbound>)>,
}

impl Divert {
    /// Sends the datagrams of the ICE session whose local ufrag is `ufrag` to `to`.
    pub fn register(&self, ufrag: &str, to: mpsc::Sender<Inbound>) {
        let mut routes = self.lock();
        routes.by_ufrag.insert(ufrag.to_owned(), to);
        self.players.store(routes.by_ufrag.len(), Ordering::Release);
    }

    /// Forgets `ufrag` and every address it claimed.
    pub fn unregister(&self, ufrag: &str) {
        let mut routes = self.lock();
        routes.by_ufrag.remove(ufrag);
        routes.by_addr.retain(|_, (owner, _)| owner != ufrag);
        self.players.store(routes.by_ufrag.len(), Ordering::Release);
    }

    /// Takes `data` from `from` if it is a player's: `true` when it was handed over (or
    /// dropped because that player is not keeping up), `false` to leave it to webrtc-rs.
    pub fn take(&self, data: &[u8], from: SocketAddr) -> bool {
        if self.players.load(Ordering::Acquire) == 0 {
            return false;
        }
        let ufrag = local_ufrag(data);
        let to = {
            let mut routes = self.lock();
            match ufrag {
                Some(ufrag) => match routes.by_ufrag.get(&ufrag).cloned() {
                    Some(to) => {
                        routes.by_addr.insert(from, (ufrag, to.clone()));
                        to
                    }
                    None => return false,
                },
                None => match routes.by_addr.get(&from) {
                    Some((_, to)) => to.clone(),
                    None => return false,
                },
            }
        };
        // A full queue is a player that is not reading: its datagram is lost, as on a wire.
        let _ = to.try_send((BytesMut::from(data), from, Instant::now()));
        true
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.lock().by_addr.len()
    }

    fn lock(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The local (first) half of a STUN binding request's `USERNAME`, `local:remote`. Only a
/// request's: libnice (GStreamer's webrtcbin) puts its request's `USERNAME`, whose first
/// half is its own ufrag, in its success responses too, and a response is routed by its
/// source address like any other datagram of the session.
fn local_ufrag(data: &[u8]) -> Option<String> {
    // STUN's first two bits are zero (RFC 7983): RTP, RTCP and DTLS never parse as it.
    if data.len() < 20 || data[0] > 3 {
        return None;
    }
    let mut message = Message::new();
    message.raw = data.to_vec();
    message.decode().ok()?;
    if message.typ != BINDING_REQUEST {
        return None;
    }
    let mut username = Username::new(ATTR_USERNAME, String::new());
    username.get_from(&message).ok()?;
    let text = username.to_string();
    let (local, _) = text.split_once(':')?;
    Some(local.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc::stun::agent::TransactionId;
    use webrtc::stun::message::{BINDING_SUCCESS, MessageType};

    fn binding(typ: MessageType, username: &str) -> Vec<u8> {
        let mut message = Message::new();
        let username = Username::new(ATTR_USERNAME, username.to_owned());
        message
            .build(&[
                Box::new(typ),
                Box::new(TransactionId::new()),
                Box::new(username),
            ])
            .expect("a binding message builds");
        message.raw
    }

    fn binding_request(username: &str) -> Vec<u8> {
        binding(BINDING_REQUEST, username)
    }

    /// libnice answers the session's own checks with a `USERNAME` whose first half is the
    /// client's ufrag: the response still reaches the session by its address. (It was left
    /// to webrtc-rs as another ufrag's, and a GStreamer client never connected.)
    #[tokio::test]
    async fn a_response_naming_the_clients_ufrag_reaches_the_session_by_its_address() {
        let divert = Divert::default();
        let (tx, mut rx) = mpsc::channel(8);
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        divert.register("server", tx);
        let response = binding(BINDING_SUCCESS, "client:server");
        assert!(!divert.take(&response, from), "no address claimed yet");
        assert!(divert.take(&binding_request("server:client"), from));
        assert!(
            divert.take(&response, from),
            "the claimed address's response"
        );
        let request = rx.recv().await.expect("the request");
        assert_eq!(local_ufrag(&request.0).as_deref(), Some("server"));
        let answered = rx.recv().await.expect("the response");
        assert_eq!(&answered.0[..], &response[..]);
        assert_eq!(local_ufrag(&response), None, "a response names no route");
    }

    #[tokio::test]
    async fn a_check_for_a_registered_ufrag_claims_its_address_until_unregistered() {
        let divert = Divert::default();
        let (tx, mut rx) = mpsc::channel(8);
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert!(
            !divert.take(&binding_request("abcd:xyz"), from),
            "none registered"
        );
        divert.register("abcd", tx);
        assert!(
            !divert.take(&binding_request("zzzz:xyz"), from),
            "another ufrag"
        );
        assert!(
            !divert.take(&[0x80; 40], from),
            "RTP from an unknown address"
        );
        assert!(divert.take(&binding_request("abcd:xyz"), from));
        assert!(
            divert.take(&[0x80; 40], from),
            "RTP from the claimed address"
        );
        assert!(!divert.take(&[0x80; 40], other));
        assert_eq!(rx.recv().await.map(|(_, addr, _)| addr), Some(from));
        assert_eq!(rx.recv().await.map(|(d, _, _)| d.len()), Some(40));
        divert.unregister("abcd");
        assert_eq!(divert.addresses(), 0);
        assert!(!divert.take(&[0x80; 40], from), "forgotten");
        assert!(!divert.take(&binding_request("abcd:xyz"), from));
    }

    #[test]
    fn what_is_not_stun_has_no_ufrag() {
        assert_eq!(
            local_ufrag(&binding_request("ab:cd")).as_deref(),
            Some("ab")
        );
        assert_eq!(local_ufrag(&binding_request("nocolon")), None);
        assert_eq!(local_ufrag(&[0x16; 60]), None, "DTLS");
        assert_eq!(local_ufrag(&[0; 19]), None, "short");
        assert_eq!(local_ufrag(&[0; 64]), None, "zeros are no STUN message");
    }
}
