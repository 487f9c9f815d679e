//! The baseline of the relay benchmark: a minimal WHIP/WHEP server written the way the
//! `webrtc` crate's own `broadcast` example forwards media — the publisher's read loop
//! writes each RTP packet to one `TrackLocalStaticRTP` per track, which every player's peer
//! connection shares, so one `write_rtp` sends to all players. No registry, no policy, no
//! status events, no leak accounting: what is left when Sluice's own layers are taken away.
//! It uses Sluice's WebRTC engine settings (codecs, interceptors, loopback ICE) so that the
//! comparison is of the relay, not of the configuration.
//!
//! ```sh
//! cargo run --release --example baseline_relay -- 127.0.0.1:0   # prints "baseline ready http=ADDR"
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

/// A published stream: its publisher's session id and its shared local tracks.
type Published = (String, Vec<Arc<TrackLocalStaticRTP>>);
/// A session: its peer connection and, for a publisher, its stream name.
type Session = (Arc<RTCPeerConnection>, Option<String>);

#[derive(Clone)]
struct Relay {
    api: Arc<webrtc::api::API>,
    /// Per stream name: its publisher's session id and the shared local tracks, one per
    /// published track.
    streams: Arc<Mutex<HashMap<String, Published>>>,
    /// Per session id: its peer connection and, for a publisher, its stream name.
    sessions: Arc<Mutex<HashMap<String, Session>>>,
}

async fn answer(pc: &RTCPeerConnection, offer: String) -> anyhow::Result<String> {
    pc.set_remote_description(RTCSessionDescription::offer(offer)?)
        .await?;
    let answer = pc.create_answer(None).await?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer).await?;
    let _ = tokio::time::timeout(Duration::from_secs(3), gathered.recv()).await;
    Ok(pc
        .local_description()
        .await
        .ok_or_else(|| anyhow::anyhow!("no local description"))?
        .sdp)
}

fn created(
    relay: &Relay,
    id: String,
    pc: Arc<RTCPeerConnection>,
    published: Option<String>,
    sdp: String,
) -> Response {
    relay
        .sessions
        .lock()
        .unwrap()
        .insert(id.clone(), (pc, published));
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_string()),
            (header::LOCATION, format!("/session/{id}")),
        ],
        sdp,
    )
        .into_response()
}

async fn publish(State(relay): State<Relay>, Path(name): Path<String>, body: Bytes) -> Response {
    let offer = String::from_utf8_lossy(&body).to_string();
    let Ok(pc) = relay
        .api
        .new_peer_connection(Default::default())
        .await
        .map(Arc::new)
    else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let id = uuid::Uuid::new_v4().to_string();
    relay
        .streams
        .lock()
        .unwrap()
        .insert(name.clone(), (id.clone(), Vec::new()));
    let streams = relay.streams.clone();
    let (track_name, publisher) = (name.clone(), id.clone());
    pc.on_track(Box::new(move |remote, _receiver, _transceiver| {
        let local = Arc::new(TrackLocalStaticRTP::new(
            remote.codec().capability,
            remote.kind().to_string(),
            "baseline".to_string(),
        ));
        if let Some((owner, tracks)) = streams.lock().unwrap().get_mut(&track_name)
            && *owner == publisher
        {
            tracks.push(local.clone());
        }
        Box::pin(async move {
            tokio::spawn(async move {
                while let Ok((packet, _)) = remote.read_rtp().await {
                    // One write fans the packet out to every player bound to this track.
                    if local.write_rtp(&packet).await.is_err() {
                        break;
                    }
                }
            });
        })
    }));
    match answer(&pc, offer).await {
        Ok(sdp) => created(&relay, id, pc, Some(name), sdp),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn play(State(relay): State<Relay>, Path(name): Path<String>, body: Bytes) -> Response {
    let offer = String::from_utf8_lossy(&body).to_string();
    // Wait for the publisher's tracks (audio and video), as Sluice does.
    let mut tracks = Vec::new();
    for _ in 0..100 {
        tracks = relay
            .streams
            .lock()
            .unwrap()
            .get(&name)
            .map(|(_, tracks)| tracks.clone())
            .unwrap_or_default();
        if tracks.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if tracks.is_empty() {
        return (StatusCode::NOT_FOUND, "not published").into_response();
    }
    let Ok(pc) = relay
        .api
        .new_peer_connection(Default::default())
        .await
        .map(Arc::new)
    else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    for track in tracks {
        match pc
            .add_track(track as Arc<dyn TrackLocal + Send + Sync>)
            .await
        {
            Ok(sender) => {
                // RTCP must be read for the interceptors (NACK, reports) to work.
                tokio::spawn(async move { while sender.read_rtcp().await.is_ok() {} });
            }
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
    match answer(&pc, offer).await {
        Ok(sdp) => created(&relay, uuid::Uuid::new_v4().to_string(), pc, None, sdp),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn hang_up(State(relay): State<Relay>, Path(id): Path<String>) -> StatusCode {
    let session = relay.sessions.lock().unwrap().remove(&id);
    match session {
        Some((pc, published)) => {
            if let Some(name) = published {
                let mut streams = relay.streams.lock().unwrap();
                if streams.get(&name).is_some_and(|(owner, _)| *owner == id) {
                    streams.remove(&name);
                }
            }
            let _ = pc.close().await;
            StatusCode::OK
        }
        None => StatusCode::NOT_FOUND,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bind: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()?;
    let settings = sluice::config::Settings::parse(
        std::path::Path::new("baseline.properties"),
        "ice_loopback_only=true\nmedia_udp_mux_port=\nmedia_port_from=0\nmedia_port_to=0\n",
    )?;
    let engine = sluice::media::engine::build(&settings).await?;
    let relay = Relay {
        api: Arc::new(engine.api),
        streams: Arc::default(),
        sessions: Arc::default(),
    };
    let app = Router::new()
        .route("/whip/{name}", post(publish))
        .route("/whep/{name}", post(play))
        .route("/session/{id}", delete(hang_up))
        .with_state(relay);
    let listener = tokio::net::TcpListener::bind(bind).await?;
    println!("baseline ready http={}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
