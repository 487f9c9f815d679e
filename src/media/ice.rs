//! A live session's ICE after its answer: candidates the client trickles and ICE restarts,
//! both by `PATCH` of the session resource (RFC 9725 §4.3), and the entity-tag that names
//! the session's current ICE session (`ETag` of the `201` and of every restart, checked
//! against `If-Match`). A failed restart leaves the session on its old ICE session.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use uuid::Uuid;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

use super::sdpfrag;
use super::{GATHER_TIMEOUT, Media};

/// The ICE of a player on the sans-I/O engine (`rtc_drive`), as `PATCH` reaches it: its
/// calls are synchronous, taken under the engine's own lock.
pub(super) trait SansioIce: Send + Sync {
    /// The client's current offer.
    fn remote_offer(&self) -> Option<String>;
    /// Adds a trickled candidate (`candidate` is the attribute's value).
    fn add_candidate(&self, candidate: &str, mid: Option<String>, mline_index: u16) -> bool;
    /// Answers `offer`, which carries new ICE credentials: the new local description.
    fn restart(&self, offer: String) -> Result<String, String>;
}

/// Which engine a session's ICE lives in.
pub(super) enum IcePeer {
    Webrtc(Arc<RTCPeerConnection>),
    Sansio(Arc<dyn SansioIce>),
}

/// A session's peer connection as `PATCH` reaches it.
pub(super) struct LivePeer {
    pc: IcePeer,
    /// The current ICE session's entity-tag, quoted (`"…"`), as sent in `ETag`.
    etag: Mutex<String>,
    /// One ICE change at a time: a restart's several steps must not interleave with
    /// another restart or a trickle of the old session's candidates.
    turn: Semaphore,
}

impl LivePeer {
    pub(super) fn new(pc: IcePeer) -> Arc<Self> {
        Arc::new(LivePeer {
            pc,
            etag: Mutex::new(new_etag()),
            turn: Semaphore::new(1),
        })
    }

    /// Whether the session runs on webrtc-rs (the sans-I/O players are counted apart).
    pub(super) fn is_webrtc(&self) -> bool {
        matches!(self.pc, IcePeer::Webrtc(_))
    }

    pub(super) fn etag(&self) -> String {
        self.etag.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_etag(&self, etag: String) {
        *self.etag.lock().unwrap_or_else(|e| e.into_inner()) = etag;
    }
}

fn new_etag() -> String {
    format!("\"{}\"", Uuid::new_v4().simple())
}

/// What a `PATCH` said in `If-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    Missing,
    /// `*`: any current ICE session (what an ICE restart sends).
    Any,
    /// Entity-tags as sent, quotes included; weak ones (`W/"…"`) never match.
    Tags(Vec<String>),
}

impl IfMatch {
    pub fn parse(header: Option<&str>) -> Self {
        match header.map(str::trim) {
            None => IfMatch::Missing,
            Some("*") => IfMatch::Any,
            Some(list) => IfMatch::Tags(
                list.split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect(),
            ),
        }
    }

    fn matches(&self, current: &str) -> bool {
        match self {
            IfMatch::Missing => false,
            IfMatch::Any => true,
            IfMatch::Tags(tags) => tags.iter().any(|t| t == current),
        }
    }
}

/// What a `PATCH` did.
#[derive(Debug)]
pub enum IcePatch {
    /// Candidates added to the current ICE session (`204`).
    Trickled { added: usize },
    /// A new ICE session: its entity-tag and the server's fragment (`200`).
    Restarted { etag: String, fragment: String },
}

/// Why a `PATCH` changed nothing. Each maps to one HTTP status in `api`.
#[derive(Debug, thiserror::Error)]
pub enum IceError {
    #[error("no session '{0}'")]
    NoSession(Uuid),
    #[error(
        "If-Match is required: the session's ETag for new candidates, \"*\" for an ICE restart"
    )]
    PreconditionRequired,
    #[error("If-Match does not name the session's current ICE session (its ETag is {current})")]
    PreconditionFailed { current: String },
    #[error("{0}")]
    BadFragment(String),
    #[error("ICE is still gathering candidates; try the restart again")]
    Busy,
    #[error("ICE restart failed ({0}); the session keeps its current ICE session")]
    RestartFailed(String),
}

impl From<sdpfrag::FragError> for IceError {
    fn from(e: sdpfrag::FragError) -> Self {
        IceError::BadFragment(e.0)
    }
}

impl Media {
    /// Applies a client's `PATCH` to its session: new candidates, or an ICE restart when
    /// the fragment carries credentials other than the current ones.
    pub async fn patch_ice(
        &self,
        id: Uuid,
        if_match: IfMatch,
        body: &str,
    ) -> Result<IcePatch, IceError> {
        let peer = self
            .lock_peers()
            .get(&id)
            .cloned()
            .ok_or(IceError::NoSession(id))?;
        let frag = sdpfrag::parse(body)?;
        if if_match == IfMatch::Missing {
            return Err(IceError::PreconditionRequired);
        }
        let _turn = peer
            .turn
            .acquire()
            .await
            .map_err(|_| IceError::NoSession(id))?;
        let current = peer.etag();
        if !if_match.matches(&current) {
            return Err(IceError::PreconditionFailed { current });
        }
        let remote = match &peer.pc {
            IcePeer::Webrtc(pc) => pc.remote_description().await.map(|d| d.sdp),
            IcePeer::Sansio(ice) => ice.remote_offer(),
        }
        .ok_or(IceError::NoSession(id))?;
        let restart = match (&frag.ufrag, &frag.pwd, sdpfrag::credentials(&remote)) {
            (Some(ufrag), Some(pwd), Some((old_ufrag, old_pwd))) => {
                *ufrag != old_ufrag || *pwd != old_pwd
            }
            _ => false,
        };
        if restart {
            let offer = sdpfrag::restart_offer(&remote, &frag)?;
            let local = match &peer.pc {
                IcePeer::Webrtc(pc) => self.restart(pc, offer).await?,
                IcePeer::Sansio(ice) => ice.restart(offer).map_err(IceError::RestartFailed)?,
            };
            let (etag, fragment) = (new_etag(), sdpfrag::answer_fragment(&local)?);
            peer.set_etag(etag.clone());
            tracing::info!(stream = %id, "ICE restarted");
            return Ok(IcePatch::Restarted { etag, fragment });
        }
        let mut added = 0;
        let pc = match &peer.pc {
            IcePeer::Webrtc(pc) => pc,
            IcePeer::Sansio(ice) => {
                // An ICE-lite answerer learns the client's addresses from its checks; the
                // candidates are kept all the same, as the engine takes them.
                for candidate in &frag.candidates {
                    let mid = candidate.mid.clone();
                    if ice.add_candidate(&candidate.value, mid, candidate.mline_index) {
                        added += 1;
                    }
                }
                return Ok(IcePatch::Trickled { added });
            }
        };
        for candidate in &frag.candidates {
            let init = RTCIceCandidateInit {
                candidate: format!("candidate:{}", candidate.value),
                sdp_mid: candidate.mid.clone(),
                sdp_mline_index: Some(candidate.mline_index),
                username_fragment: None,
            };
            // RFC 9725: a candidate the server cannot use is dropped, the rest still apply.
            match pc.add_ice_candidate(init).await {
                Ok(()) => added += 1,
                Err(webrtc::Error::ErrConnectionClosed) => return Err(IceError::NoSession(id)),
                Err(e) => tracing::debug!(stream = %id, error = %e, "trickled candidate dropped"),
            }
        }
        Ok(IcePatch::Trickled { added })
    }

    /// The answerer's side of an ICE restart on webrtc-rs: the client's `offer` with new
    /// credentials, a new answer (the engine restarts its agent and gathers again); the new
    /// local description.
    async fn restart(&self, pc: &RTCPeerConnection, offer: String) -> Result<String, IceError> {
        let offer = RTCSessionDescription::offer(offer)
            .map_err(|e| IceError::BadFragment(format!("the restart offer is unusable: {e}")))?;
        pc.set_remote_description(offer)
            .await
            .map_err(|e| match e {
                webrtc::Error::Ice(webrtc::ice::Error::ErrRestartWhenGathering) => IceError::Busy,
                e => IceError::RestartFailed(e.to_string()),
            })?;
        let failed = |e: webrtc::Error| IceError::RestartFailed(e.to_string());
        let answer = pc.create_answer(None).await.map_err(failed)?;
        // The restart began gathering; this resolves at once if it is already complete.
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(answer).await.map_err(failed)?;
        let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await;
        let local = pc
            .local_description()
            .await
            .ok_or_else(|| IceError::RestartFailed("no answer after the restart".into()))?;
        Ok(local.sdp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_is_read_as_rfc_9110_says() {
        assert_eq!(IfMatch::parse(None), IfMatch::Missing);
        assert_eq!(IfMatch::parse(Some(" * ")), IfMatch::Any);
        let tags = IfMatch::parse(Some("\"a\", W/\"b\""));
        assert!(tags.matches("\"a\""));
        assert!(!tags.matches("\"b\""), "a weak tag never matches strongly");
        assert!(!IfMatch::Missing.matches("\"a\""));
        assert!(IfMatch::Any.matches("\"anything\""));
    }
}
