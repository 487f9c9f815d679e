//! WHIP ingest and WHEP playback: peer connections, negotiation, wiring a player to its
//! publisher's relay, and registering each session with a [`SessionControl`] as the one way to
//! stop it. Following a live session (tracks, state, RTCP, its supervisor) is in `supervise.rs`.

mod batch_udp;
pub mod codecs;
mod direct;
mod divert;
mod edge;
pub mod engine;
mod fanout;
mod gso;
mod ice;
pub mod offer;
mod player_engine;
mod player_track;
mod records;
mod relay;
mod rtc_answer;
mod rtc_drive;
mod rtc_ice;
mod rtc_ingest;
mod rtc_player;
mod rtc_pull;
mod sansio_sessions;
pub mod sdpfrag;
mod sender_rtcp;
mod session;
mod supervise;

pub use edge::Origin;
pub use ice::{IceError, IcePatch, IfMatch};
pub use relay::{RelayLedger, RelayStats, RelayTotals, RelayTrack};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use webrtc::api::API;
use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtcp::goodbye::Goodbye;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::track::track_local::TrackLocal;

use crate::config::ConfigStore;
use crate::registry::{
    Bearer, MediaKind, NewStream, Registry, RegistryError, Status, StopHandle, StopReason,
};

use records::{Publisher, kind_name, kinds, player_stream, publisher_stream};
use session::{Session, SessionControl};

/// Why a WHIP/WHEP request failed. Each maps to one HTTP status in `api`.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{0}")]
    BadOffer(String),
    #[error("the offer has no audio or video to {0}")]
    NoMedia(&'static str),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("stream '{0}' has not started sending media yet")]
    NotReady(String),
    /// The player's offer accepts none of the codecs the publisher sends (for a kind it asks).
    #[error("{0}")]
    CodecMismatch(String),
    /// An edge could not pull the stream from the node that publishes it.
    #[error("{0}")]
    Origin(String),
    #[error("media error: {0}")]
    Internal(String),
}

impl From<webrtc::Error> for MediaError {
    fn from(e: webrtc::Error) -> Self {
        MediaError::Internal(e.to_string())
    }
}

/// A WHIP or WHEP offer with what the HTTP request said about its client.
#[derive(Debug, Clone)]
pub struct OfferRequest {
    /// The id the new session will have (chosen first, so admission hooks can name it).
    pub media_session_id: Uuid,
    pub name: String,
    pub app_key: String,
    pub sdp: String,
    pub custom: BTreeMap<String, String>,
    pub bearer: Bearer,
    pub remote_address: String,
    /// The record's `sessionId`: the signalling connection (WCS), or the session resource
    /// (WHIP/WHEP) when `None`.
    pub session_id: Option<String>,
}

/// The answer to a WHIP/WHEP offer: the new session's id and the SDP answer.
#[derive(Debug, Clone)]
pub struct SessionAnswer {
    pub id: Uuid,
    pub sdp: String,
    /// The entity-tag of the session's ICE session (`ETag`, RFC 9725 §4.3.1).
    pub etag: String,
}

/// The media side of the server.
pub struct Media {
    api: API,
    registry: Arc<Registry>,
    config: Arc<ConfigStore>,
    publishers: Mutex<HashMap<Uuid, Arc<Publisher>>>,
    /// Every registered session's peer connection, for `PATCH` (trickle ICE, ICE restart).
    peers: Mutex<HashMap<Uuid, Arc<ice::LivePeer>>>,
    mux_addr: Option<std::net::SocketAddr>,
    /// The mux socket's side for sessions on the sans-I/O engine.
    sansio_io: Option<rtc_player::SansioIo>,
    /// Players run on the sans-I/O engine (`media_rtc_players`, with `sansio_io`).
    rtc_players: bool,
    /// Publishers run on the sans-I/O engine (`media_rtc_publishers`, with `sansio_io`).
    rtc_publishers: bool,
    /// Sessions live on the sans-I/O engine.
    sansio_sessions: Arc<std::sync::atomic::AtomicUsize>,
    /// Relay counters of every track, for `/metrics`.
    pub relays: Arc<RelayLedger>,
    /// The server's tasks: every session's supervisor runs in it.
    tasks: TaskTracker,
    /// One slot per name whose edge pull is being set up (see `edge.rs`).
    edges: Mutex<HashMap<String, Arc<edge::EdgeSlot>>>,
    /// For the WHEP exchange of edge pulls.
    http: reqwest::Client,
}

/// How long ICE gathering may take before the answer goes out with what was gathered.
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an answer waits for the ICE agent to take the offer's credentials.
const ICE_START_TIMEOUT: Duration = Duration::from_secs(2);
/// A session that has not connected by then is stopped.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// An edge's WHEP request to the origin (which gathers for up to its own 3 s) may take this.
const EDGE_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

impl Media {
    /// Builds the WebRTC engine from the settings in force now (its keys need a restart).
    pub async fn new(
        config: Arc<ConfigStore>,
        registry: Arc<Registry>,
        tasks: TaskTracker,
    ) -> Result<Arc<Self>, MediaError> {
        let settings = config.load().settings.clone();
        let engine = engine::build(&settings).await?;
        Ok(Arc::new(Media {
            api: engine.api,
            registry,
            config,
            publishers: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            relays: Arc::default(),
            mux_addr: engine.mux_addr,
            rtc_players: settings.media_rtc_players && engine.sansio_io.is_some(),
            rtc_publishers: settings.media_rtc_publishers && engine.sansio_io.is_some(),
            sansio_io: engine.sansio_io,
            sansio_sessions: Arc::default(),
            tasks,
            edges: Mutex::new(HashMap::new()),
            // Node to node, like the hooks: never through a proxy from the environment.
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(EDGE_HTTP_TIMEOUT)
                .build()
                .map_err(|e| MediaError::Internal(format!("HTTP client: {e}")))?,
        }))
    }

    /// The media UDP socket's address in mux mode.
    pub fn mux_addr(&self) -> Option<std::net::SocketAddr> {
        self.mux_addr
    }

    /// The checks a request can fail without any media work: the offer, and whether the name
    /// is free (publish) or published (play; here, or on another node when
    /// `published_elsewhere`). Run before admission hooks, so that a request that cannot
    /// succeed costs the web server nothing.
    pub fn precheck(
        &self,
        request: &OfferRequest,
        publish: bool,
        published_elsewhere: bool,
    ) -> Result<(), MediaError> {
        if self.registry.is_draining() {
            return Err(RegistryError::Draining.into());
        }
        let max = self.config.load().settings.max_sessions;
        let live = self.registry.len();
        if max > 0 && live >= max {
            return Err(RegistryError::Full(live).into());
        }
        if self.registry.get(request.media_session_id).is_some() {
            return Err(RegistryError::IdInUse(request.media_session_id).into());
        }
        let summary = offer::inspect(&request.sdp)?;
        if publish {
            if summary.sending.is_empty() {
                return Err(MediaError::NoMedia("publish"));
            }
            if self.registry.publisher_of(&request.name).is_some() {
                return Err(RegistryError::AlreadyPublishing(request.name.clone()).into());
            }
        } else {
            if summary.receiving.is_empty() {
                return Err(MediaError::NoMedia("play"));
            }
            if !published_elsewhere && self.registry.publisher_of(&request.name).is_none() {
                return Err(RegistryError::NotPublishing(request.name.clone()).into());
            }
        }
        Ok(())
    }

    /// WHIP: accepts a publisher's offer. Nothing is registered unless this succeeds.
    pub async fn publish(
        self: &Arc<Self>,
        request: OfferRequest,
    ) -> Result<SessionAnswer, MediaError> {
        let summary = offer::inspect(&request.sdp)?;
        if summary.sending.is_empty() {
            return Err(MediaError::NoMedia("publish"));
        }
        if self.registry.publisher_of(&request.name).is_some() {
            return Err(RegistryError::AlreadyPublishing(request.name).into());
        }
        if let Some(io) = self.sansio_io.as_ref().filter(|_| self.rtc_publishers) {
            return self.publish_sansio(io, request, &summary);
        }
        let id = request.media_session_id;
        let pc = self.new_peer_connection().await?;
        let (control, stop_rx) = SessionControl::new();
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let publisher = Publisher::new(summary.sending.len());
        self.on_publisher_track(
            &pc,
            id,
            &publisher,
            &control,
            &tasks,
            &cancel,
            StopReason::ClientLeft,
        );
        self.on_state_change(&pc, id, false, &control, &tasks, &cancel, Vec::new);

        let answer = match self.negotiate(&pc, &request.sdp).await {
            Ok(answer) => answer,
            Err(e) => {
                abandon(&pc, &tasks, &cancel).await;
                return Err(e);
            }
        };
        let new = publisher_stream(request, &summary, &answer);
        if let Err(e) = self.register(new, &control) {
            abandon(&pc, &tasks, &cancel).await;
            return Err(e.into());
        }
        self.lock_publishers().insert(id, publisher);
        let etag = self.track_peer(id, &pc);
        self.spawn_supervisor(id, session::Peer::Webrtc(pc), tasks, cancel, stop_rx);
        Ok(SessionAnswer {
            id,
            sdp: answer,
            etag,
        })
    }

    /// WHEP: accepts a player's offer for a stream being published.
    pub async fn play(
        self: &Arc<Self>,
        request: OfferRequest,
    ) -> Result<SessionAnswer, MediaError> {
        let summary = offer::inspect(&request.sdp)?;
        if summary.receiving.is_empty() {
            return Err(MediaError::NoMedia("play"));
        }
        let (publisher_id, tracks) = self.publisher_tracks(&request.name).await?;
        tracing::debug!(
            stream = %request.name,
            tracks = ?tracks.iter().map(|t| (t.kind, t.codec.mime_type.as_str())).collect::<Vec<_>>(),
            receiving = ?summary.receiving,
            "player asks for the publisher's tracks"
        );
        let sent: Vec<_> = tracks.iter().map(|t| (t.kind, &t.codec)).collect();
        let chosen = codecs::choose(&request.name, &sent, &codecs::offered(&request.sdp))
            .map_err(MediaError::CodecMismatch)?;
        if let Some(io) = self.sansio_io.as_ref().filter(|_| self.rtc_players) {
            let wanted = tracks
                .iter()
                .zip(chosen)
                .filter_map(|(relay, codec)| {
                    let codec = codec.filter(|_| summary.receiving.contains(&relay.kind))?;
                    Some((relay.clone(), codec))
                })
                .collect::<Vec<_>>();
            return self.play_sansio(io, request, publisher_id, &tracks, &wanted);
        }
        let id = request.media_session_id;
        let pc = self.new_peer_connection().await?;
        let (control, stop_rx) = SessionControl::new();
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();

        let mut senders = Vec::new();
        for (relay, codec) in tracks.iter().zip(chosen) {
            let Some(codec) = codec.filter(|_| summary.receiving.contains(&relay.kind)) else {
                continue;
            };
            let local = Arc::new(player_track::PlayerTrack::new(
                codec,
                kind_name(relay.kind).to_string(),
                format!("sluice-{}", request.name),
            ));
            let sender = match pc
                .add_track(local.clone() as Arc<dyn TrackLocal + Send + Sync>)
                .await
            {
                Ok(sender) => sender,
                Err(e) => {
                    abandon(&pc, &tasks, &cancel).await;
                    return Err(e.into());
                }
            };
            senders.push((relay.clone(), local, sender));
        }
        let relays: Vec<_> = senders.iter().map(|(relay, _, _)| relay.clone()).collect();
        self.on_state_change(&pc, id, true, &control, &tasks, &cancel, move || {
            relays.clone()
        });

        let answer = match self.negotiate(&pc, &request.sdp).await {
            Ok(answer) => answer,
            Err(e) => {
                abandon(&pc, &tasks, &cancel).await;
                return Err(e);
            }
        };
        let name = request.name.clone();
        let relays: Vec<_> = senders.iter().map(|(r, _, _)| r.clone()).collect();
        let new = player_stream(request, publisher_id, &relays);
        // The publisher may have ended while this player negotiated: its relay is dead, and
        // the registry refuses a player of a publisher that is not the one registered.
        let relay_ended = tracks.iter().any(|t| t.has_ended());
        let registered = if relay_ended {
            Err(RegistryError::NotPublishing(name))
        } else {
            self.register(new, &control)
        };
        if let Err(e) = registered {
            abandon(&pc, &tasks, &cancel).await;
            return Err(e.into());
        }
        for (relay, local, sender) in senders {
            tasks.spawn(relay.clone().feed(
                relay.subscribe(),
                local,
                cancel.clone(),
                tasks.clone(),
            ));
            tasks.spawn(supervise::read_player_rtcp(
                sender,
                relay,
                control.clone(),
                cancel.clone(),
            ));
        }
        let etag = self.track_peer(id, &pc);
        self.spawn_supervisor(id, session::Peer::Webrtc(pc), tasks, cancel, stop_rx);
        Ok(SessionAnswer {
            id,
            sdp: answer,
            etag,
        })
    }

    /// Registers a session within the server's `max_sessions`.
    fn register(
        &self,
        new: NewStream,
        control: &Arc<SessionControl>,
    ) -> Result<crate::registry::StreamRecord, RegistryError> {
        let max = self.config.load().settings.max_sessions;
        self.registry.register_within(new, control.clone(), max)
    }

    /// The publisher of `name` and its tracks, waiting a little for a publisher that has
    /// connected but not sent all its tracks yet.
    async fn publisher_tracks(
        &self,
        name: &str,
    ) -> Result<(Uuid, Vec<Arc<RelayTrack>>), MediaError> {
        let not_publishing =
            || MediaError::Registry(RegistryError::NotPublishing(name.to_string()));
        let id = self
            .registry
            .publisher_of(name)
            .ok_or_else(not_publishing)?;
        let publisher = self
            .lock_publishers()
            .get(&id)
            .cloned()
            .ok_or_else(not_publishing)?;
        let mut tracks = publisher.tracks.subscribe();
        let expected = publisher.expected_tracks;
        drop(publisher);
        let waited = {
            let all_arrived = tracks.wait_for(|t| t.len() >= expected);
            match tokio::time::timeout(
                self.config.load().settings.player_wait_for_publisher,
                all_arrived,
            )
            .await
            {
                Ok(Ok(t)) => Some(Ok((id, t.clone()))),
                // The publisher ended while we waited.
                Ok(Err(_)) => Some(Err(not_publishing())),
                Err(_) => None,
            }
        };
        match waited {
            Some(result) => result,
            None => {
                let t = tracks.borrow().clone();
                if t.is_empty() {
                    Err(MediaError::NotReady(name.to_string()))
                } else {
                    Ok((id, t))
                }
            }
        }
    }

    async fn new_peer_connection(&self) -> Result<Arc<RTCPeerConnection>, MediaError> {
        // No ICE servers: the server answers with its own host (and configured public)
        // candidates, and must never reach out to a public STUN server.
        let config = RTCConfiguration::default();
        Ok(Arc::new(self.api.new_peer_connection(config).await?))
    }

    /// Applies the offer and returns the complete answer (non-trickle: all candidates in it).
    async fn negotiate(&self, pc: &RTCPeerConnection, sdp: &str) -> Result<String, MediaError> {
        let offer = RTCSessionDescription::offer(sdp.to_string())
            .map_err(|e| MediaError::BadOffer(format!("invalid offer: {e}")))?;
        pc.set_remote_description(offer)
            .await
            .map_err(|e| MediaError::BadOffer(format!("offer not usable: {e}")))?;
        let answer = pc.create_answer(None).await?;
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(answer).await?;
        let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await;
        // The ICE agent takes the offer's credentials in a task of its own, which can run
        // after gathering ends: an answer sent before then draws checks the agent discards,
        // and a webrtc-rs client (an edge, the load generator) gives a pair up after seven
        // unanswered checks and never checks it again, so under load players stayed
        // `Connecting` for good. The state leaves `New` only after the credentials are set.
        let ice_started = tokio::time::timeout(ICE_START_TIMEOUT, async {
            while pc.ice_connection_state() == RTCIceConnectionState::New {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .is_ok();
        tracing::debug!(ice = %pc.ice_connection_state(), ice_started, "answer ready");
        let local = pc
            .local_description()
            .await
            .ok_or_else(|| MediaError::Internal("no local description after answer".into()))?;
        Ok(local.sdp)
    }

    /// Makes a registered session reachable by `PATCH`; returns its first entity-tag.
    fn track_peer(&self, id: Uuid, pc: &Arc<RTCPeerConnection>) -> String {
        let peer = ice::LivePeer::new(ice::IcePeer::Webrtc(pc.clone()));
        let etag = peer.etag();
        self.lock_peers().insert(id, peer);
        etag
    }

    /// Each live publisher's relay counters, summed over its tracks.
    pub fn publisher_counts(&self) -> HashMap<Uuid, RelayTotals> {
        let publishers: Vec<(Uuid, Arc<Publisher>)> = self
            .lock_publishers()
            .iter()
            .map(|(id, p)| (*id, p.clone()))
            .collect();
        publishers
            .into_iter()
            .map(|(id, publisher)| {
                let mut sum = RelayTotals::default();
                for track in publisher.tracks.borrow().iter() {
                    let counts = track.counts();
                    sum.received_packets += counts.received_packets;
                    sum.received_bytes += counts.received_bytes;
                    sum.forwarded_packets += counts.forwarded_packets;
                    sum.forwarded_bytes += counts.forwarded_bytes;
                    sum.dropped_packets += counts.dropped_packets;
                    sum.lost_packets += counts.lost_packets;
                    sum.live_tracks += 1;
                }
                (id, sum)
            })
            .collect()
    }

    /// Sessions reachable by `PATCH`: one per live WebRTC session.
    pub fn peer_count(&self) -> usize {
        self.lock_peers().values().filter(|p| p.is_webrtc()).count()
            + self
                .sansio_sessions
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<ice::LivePeer>>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_publishers(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Publisher>>> {
        self.publishers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ends what a session that never got registered had started: its tasks (the connect
/// timer too) and its peer connection.
async fn abandon(pc: &RTCPeerConnection, tasks: &TaskTracker, cancel: &CancellationToken) {
    cancel.cancel();
    tasks.close();
    let _ = pc.close().await;
}

/// The path of a session's resource: `Location` of the `201`, target of `DELETE`.
pub fn resource_path(id: Uuid) -> String {
    format!("/session/{id}")
}
