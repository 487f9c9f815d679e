//! Edge relays: a stream another node of the cluster publishes, pulled once over WHEP (with
//! `sluice-client`'s exchange; on the `rtc` engine from a socket of the pull's own, or on
//! webrtc-rs 0.17 when publishers run there) and registered here as a publisher marked with
//! its origin node, so local players wire to it as to any publisher.
//! The pull ends with its last player (after a short linger), and its players end with
//! `Stopped by publisher stop` when the origin's publisher stops (the origin's RTCP BYE).

use std::time::Instant;

use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;

use super::*;

/// Where to pull a stream from: what the cluster located.
#[derive(Debug, Clone)]
pub struct Origin {
    pub node_id: String,
    pub whep_url: String,
    /// The origin node's address, shown as the edge record's `remoteAddress`.
    pub address: String,
    pub media_kinds: Vec<MediaKind>,
}

/// How often an edge looks whether it still has players.
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// How long an edge that had players stays up with none, for a player that reconnects.
const LINGER: Duration = Duration::from_secs(1);
/// How long the `DELETE` of the pull on the origin may take at teardown.
const HANG_UP_TIMEOUT: Duration = Duration::from_secs(2);

impl Media {
    /// Makes sure `name` has a publisher here: a live one, or an edge relay of `origin`
    /// pulled now.
    pub async fn open_edge(
        self: &Arc<Self>,
        name: &str,
        app_key: &str,
        origin: &Origin,
    ) -> Result<(), MediaError> {
        // One pull per name at a time (concurrent first players share it); other names'
        // pulls do not wait behind a slow origin.
        let slot = self
            .lock_edges()
            .entry(name.to_string())
            .or_default()
            .clone();
        let pulled = {
            let _one_pull_of_this_name = slot.lock().await;
            if self.registry.publisher_of(name).is_some() {
                Ok(())
            } else {
                self.pull(name, app_key, origin).await
            }
        };
        // The slot goes when no other caller holds it (the map keeps one `Arc`).
        let mut edges = self.lock_edges();
        if edges.get(name).is_some_and(|s| Arc::strong_count(s) <= 2) {
            edges.remove(name);
        }
        pulled
    }

    async fn pull(
        self: &Arc<Self>,
        name: &str,
        app_key: &str,
        origin: &Origin,
    ) -> Result<(), MediaError> {
        if origin.media_kinds.is_empty() {
            return Err(MediaError::NoMedia("pull from the origin"));
        }
        if self.rtc_publishers {
            return self.pull_sansio(name, app_key, origin).await;
        }
        let id = Uuid::new_v4();
        let pc = self.new_peer_connection().await?;
        let (control, stop_rx) = SessionControl::new();
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        for kind in &origin.media_kinds {
            let kind = match kind {
                MediaKind::Audio => RTPCodecType::Audio,
                MediaKind::Video => RTPCodecType::Video,
            };
            let init = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                send_encodings: vec![],
            };
            if let Err(e) = pc.add_transceiver_from_kind(kind, Some(init)).await {
                abandon(&pc, &tasks, &cancel).await;
                return Err(e.into());
            }
        }
        let publisher = Publisher::new(origin.media_kinds.len());
        self.on_publisher_track(
            &pc,
            id,
            &publisher,
            &control,
            &tasks,
            &cancel,
            StopReason::PublisherStopped,
        );
        self.on_state_change(&pc, id, false, &control, &tasks, &cancel, Vec::new);
        let links = match sluice_client::whep_offer(&self.http, &pc, &origin.whep_url).await {
            Ok(links) => links,
            Err(e) => {
                abandon(&pc, &tasks, &cancel).await;
                return Err(origin_error(name, origin, &e));
            }
        };
        let new = edge_stream(name, app_key, origin, id, &links.resource);
        if let Err(e) = self.register(new, &control) {
            let _ = tokio::time::timeout(HANG_UP_TIMEOUT, self.http.delete(&links.resource).send())
                .await;
            abandon(&pc, &tasks, &cancel).await;
            return Err(e.into());
        }
        self.lock_publishers().insert(id, publisher);
        tasks.spawn(stop_when_idle(
            self.registry.clone(),
            name.to_string(),
            control.clone(),
            cancel.clone(),
            self.config.load().settings.player_wait_for_publisher + 2 * GATHER_TIMEOUT,
        ));
        tasks.spawn(hang_up_at_teardown(
            self.http.clone(),
            links.resource,
            cancel.clone(),
        ));
        tracing::info!(stream = %id, %name, app = %app_key, origin = %origin.node_id, "edge: pulling from the origin");
        self.spawn_supervisor(id, session::Peer::Webrtc(pc), tasks, cancel, stop_rx);
        Ok(())
    }

    /// `pull` on the sans-I/O engine, from a socket of the pull's own.
    async fn pull_sansio(
        self: &Arc<Self>,
        name: &str,
        app_key: &str,
        origin: &Origin,
    ) -> Result<(), MediaError> {
        let id = Uuid::new_v4();
        let settings = self.config.load().settings.clone();
        let offered = rtc_pull::offer(&settings, &origin.media_kinds).await?;
        let (links, answer) =
            sluice_client::whep_exchange(&self.http, offered.sdp, &origin.whep_url)
                .await
                .map_err(|e| origin_error(name, origin, &e))?;
        let hang_up = || async {
            let _ = tokio::time::timeout(HANG_UP_TIMEOUT, self.http.delete(&links.resource).send())
                .await;
        };
        let mut pc = offered.pc;
        if let Err(e) = rtc_answer::apply_answer(&mut pc, answer) {
            hang_up().await;
            return Err(e);
        }
        let (control, stop_rx) = SessionControl::new();
        let new = edge_stream(name, app_key, origin, id, &links.resource);
        if let Err(e) = self.register(new, &control) {
            hang_up().await;
            return Err(e.into());
        }
        let wiring = self.ingest_wiring(id, origin.media_kinds.len(), StopReason::PublisherStopped);
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        tasks.spawn(stop_when_idle(
            self.registry.clone(),
            name.to_string(),
            control.clone(),
            cancel.clone(),
            settings.player_wait_for_publisher + 2 * GATHER_TIMEOUT,
        ));
        tasks.spawn(hang_up_at_teardown(
            self.http.clone(),
            links.resource.clone(),
            cancel.clone(),
        ));
        let (close_tx, close) = tokio::sync::oneshot::channel();
        let run = rtc_player::Running {
            id,
            registry: self.registry.clone(),
            control: control.clone(),
            tasks: tasks.clone(),
            cancel: cancel.clone(),
            close,
            // A pull is no session of a client's: not among the peers `PATCH` reaches (its
            // own count, which its task's end takes back to zero).
            live: Arc::new(std::sync::atomic::AtomicUsize::new(1)),
        };
        if let Err(e) = rtc_ingest::spawn_on_socket(pc, offered.socket, run, wiring) {
            control.stop(StopReason::ConnectionLost(e.to_string()));
        }
        tracing::info!(stream = %id, %name, app = %app_key, origin = %origin.node_id, "edge: pulling from the origin");
        self.spawn_supervisor(id, session::Peer::Sansio(close_tx), tasks, cancel, stop_rx);
        Ok(())
    }

    fn lock_edges(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<EdgeSlot>>> {
        self.edges.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a pull of `name` from `origin` failed, as a play of it is told.
fn origin_error(name: &str, origin: &Origin, e: &sluice_client::ClientError) -> MediaError {
    match e.status() {
        Some(404) => RegistryError::NotPublishing(name.to_string()).into(),
        _ => MediaError::Origin(format!(
            "pulling '{name}' from node {} failed: {e}",
            origin.node_id
        )),
    }
}

/// The registry's record of an edge relay: a publisher of `name` marked with its origin.
fn edge_stream(name: &str, app_key: &str, origin: &Origin, id: Uuid, resource: &str) -> NewStream {
    let mut new = NewStream::publisher(name, app_key);
    new.media_session_id = Some(id);
    new.session_id = resource.to_string();
    new.remote_address = origin.address.clone();
    new.media_kinds = kinds(&origin.media_kinds);
    new.origin_node = Some(origin.node_id.clone());
    new
}

/// Held while one name's edge pull is set up.
pub(super) type EdgeSlot = tokio::sync::Mutex<()>;

/// Stops the edge once it has had no player for [`LINGER`] (or, before its first player,
/// for `first_player_grace`: the first player's own negotiation).
async fn stop_when_idle(
    registry: Arc<Registry>,
    name: String,
    control: Arc<SessionControl>,
    cancel: CancellationToken,
    first_player_grace: Duration,
) {
    let mut idle_since = Instant::now();
    let mut linger = first_player_grace;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(IDLE_CHECK) => {}
        }
        if registry.viewer_count(&name) > 0 {
            idle_since = Instant::now();
            linger = LINGER;
        } else if idle_since.elapsed() >= linger {
            control.stop(StopReason::ClientLeft);
            return;
        }
    }
}

/// The WHEP way to leave: `DELETE` of the pull's resource on the origin, as the edge ends
/// (the origin has usually seen its RTCP BYE already; a `404` then is fine).
async fn hang_up_at_teardown(http: reqwest::Client, resource: String, cancel: CancellationToken) {
    cancel.cancelled().await;
    match tokio::time::timeout(HANG_UP_TIMEOUT, http.delete(&resource).send()).await {
        Ok(Ok(response)) => {
            tracing::debug!(%resource, status = %response.status(), "edge: pull hung up")
        }
        Ok(Err(e)) => tracing::debug!(%resource, error = %e, "edge: pull hang-up failed"),
        Err(_) => tracing::debug!(%resource, "edge: pull hang-up timed out"),
    }
}
