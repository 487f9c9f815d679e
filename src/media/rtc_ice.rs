//! The ICE of a session on the sans-I/O engine (player or publisher) as `PATCH` reaches it —
//! trickled candidates and ICE restarts — and the ufrags that route the client's datagrams
//! from the mux socket to the session's task (`divert`): a restart's new ufrag routes them
//! too, and every one is forgotten when the session ends.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use tokio::sync::mpsc;

use super::divert::{Divert, Inbound};
use super::ice::SansioIce;
use super::sdpfrag;

/// A session whose engine lives behind a lock of its own, as `PATCH` reaches it.
pub trait SessionEngine: Send + Sync + 'static {
    /// The client's offer as last applied.
    fn remote_offer(&self) -> Option<String>;
    /// Adds a trickled candidate of the client's; whether it was usable.
    fn add_candidate(&self, candidate: &str, mid: Option<String>, mline_index: u16) -> bool;
    /// Applies an ICE restart's offer; the new local description.
    fn restart(&self, offer: String) -> Result<String, String>;
}

/// `SessionEngine::remote_offer` of a peer connection.
pub fn pc_remote_offer(pc: &RTCPeerConnection) -> Option<String> {
    pc.remote_description().map(|d| d.sdp.clone())
}

/// `SessionEngine::add_candidate` of a peer connection.
pub fn pc_add_candidate(
    pc: &mut RTCPeerConnection,
    candidate: &str,
    mid: Option<String>,
    mline_index: u16,
) -> bool {
    let init = RTCIceCandidateInit {
        candidate: format!("candidate:{candidate}"),
        sdp_mid: mid,
        sdp_mline_index: Some(mline_index),
        ..Default::default()
    };
    pc.add_remote_candidate(init).is_ok()
}

/// `SessionEngine::restart` of a peer connection: its engine's new answer.
pub fn pc_restart(pc: &mut RTCPeerConnection, offer: String) -> Result<String, String> {
    let offer = RTCSessionDescription::offer(offer).map_err(|e| e.to_string())?;
    let now = Instant::now();
    pc.set_remote_description(now, offer)
        .map_err(|e| e.to_string())?;
    let answer = pc.create_answer(None).map_err(|e| e.to_string())?;
    pc.set_local_description(now, answer)
        .map_err(|e| e.to_string())?;
    Ok(pc
        .local_description()
        .ok_or("no answer after the restart")?
        .sdp
        .clone())
}

/// `sdp` with every `a=ice-ufrag`/`a=ice-pwd` replaced by `ufrag`/`pwd`.
pub fn with_credentials(sdp: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + 16);
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

/// A session's ICE as `PATCH` reaches it, and the ufrags that route datagrams to its task.
pub struct SessionIce<E> {
    engine: Arc<E>,
    divert: Arc<Divert>,
    inbound: mpsc::Sender<Inbound>,
    /// Every local ufrag of the session (a restart adds one), routed until it ends.
    ufrags: Mutex<Vec<String>>,
}

impl<E: SessionEngine> SessionIce<E> {
    /// Routes `ufrag`'s datagrams to `inbound`.
    pub fn new(
        engine: Arc<E>,
        divert: Arc<Divert>,
        inbound: mpsc::Sender<Inbound>,
        ufrag: String,
    ) -> Arc<Self> {
        divert.register(&ufrag, inbound.clone());
        Arc::new(SessionIce {
            engine,
            divert,
            inbound,
            ufrags: Mutex::new(vec![ufrag]),
        })
    }

    fn ufrags(&self) -> MutexGuard<'_, Vec<String>> {
        self.ufrags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every route of the session (its end).
    pub fn unregister(&self) {
        for ufrag in self.ufrags().drain(..) {
            self.divert.unregister(&ufrag);
        }
    }
}

impl<E: SessionEngine> SansioIce for SessionIce<E> {
    fn remote_offer(&self) -> Option<String> {
        self.engine.remote_offer()
    }

    fn add_candidate(&self, candidate: &str, mid: Option<String>, mline_index: u16) -> bool {
        self.engine.add_candidate(candidate, mid, mline_index)
    }

    fn restart(&self, offer: String) -> Result<String, String> {
        let local = self.engine.restart(offer)?;
        // The client's checks of the new ICE session name the new ufrag.
        if let Some((ufrag, _)) = sdpfrag::credentials(&local) {
            let mut ufrags = self.ufrags();
            if !ufrags.contains(&ufrag) {
                self.divert.register(&ufrag, self.inbound.clone());
                ufrags.push(ufrag);
            }
        }
        Ok(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_credentials_replace_the_old_at_every_level_and_nothing_else() {
        let sdp = "v=0\r\na=ice-ufrag:old1\r\na=ice-pwd:oldpassword\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:old1\r\na=ice-pwd:oldpassword\r\na=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n";
        let new = with_credentials(sdp, "new1", "newpassword");
        assert_eq!(new.matches("a=ice-ufrag:new1\r\n").count(), 2, "{new}");
        assert_eq!(new.matches("a=ice-pwd:newpassword\r\n").count(), 2, "{new}");
        assert!(!new.contains("old"), "{new}");
        assert!(new.contains("a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n"));
        assert_eq!(new.lines().count(), sdp.lines().count());
    }
}
