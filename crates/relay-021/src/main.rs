//! The webrtc crate's 0.21 line as a relay, for one comparison only (issue 20, BENCHMARKS.md):
//! the same WHIP/WHEP surface as `examples/baseline_relay.rs` (`POST /whip/{name}`,
//! `POST /whep/{name}`, `DELETE /session/{id}`), built the way that line's own `broadcast`
//! example forwards — the publisher's track is polled into a broadcast channel and each
//! player has its own local track fed from it. Default codecs and interceptors, host
//! candidates on 127.0.0.1 only. Not part of the server.
//!
//! ```sh
//! cargo run --release -p relay-021 -- 127.0.0.1:0   # prints "relay-021 ready http=ADDR"
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
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{Notify, broadcast};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
};
use webrtc::runtime::Runtime;

/// One published track: its kind, codec and the channel every player of it reads.
#[derive(Clone)]
struct Published {
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    packets: broadcast::Sender<rtp::Packet>,
}

/// A stream: its publisher's session id and its tracks as they arrive.
type Stream = (String, Vec<Published>);
/// A session: its peer connection and, for a publisher, its stream name.
type Session = (Arc<dyn PeerConnection>, Option<String>);

#[derive(Clone)]
struct Relay {
    runtime: Arc<dyn Runtime>,
    streams: Arc<Mutex<HashMap<String, Stream>>>,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
}

/// Events of one peer connection: gathering done, and for a publisher its tracks.
struct Handler {
    gathered: Arc<Notify>,
    publishes: Option<(Relay, String, String)>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some((relay, name, owner)) = &self.publishes else {
            return;
        };
        let Some(ssrc) = track.ssrcs().await.first().copied() else {
            return;
        };
        let Some(codec) = track.codec(ssrc).await else {
            return;
        };
        let (packets, _) = broadcast::channel(256);
        let published = Published {
            kind: track.kind().await,
            codec,
            packets: packets.clone(),
        };
        if let Some((id, tracks)) = relay.streams.lock().unwrap().get_mut(name)
            && id == owner
        {
            tracks.push(published);
        }
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    let _ = packets.send(packet);
                }
            }
        });
    }
}

impl Relay {
    async fn peer(
        &self,
        publishes: Option<(Relay, String, String)>,
    ) -> anyhow::Result<(Arc<dyn PeerConnection>, Arc<Notify>)> {
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let gathered = Arc::new(Notify::new());
        let handler = Arc::new(Handler {
            gathered: gathered.clone(),
            publishes,
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(handler as Arc<dyn PeerConnectionEventHandler>)
            .with_runtime(self.runtime.clone())
            .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
            .build()
            .await?;
        Ok((Arc::new(pc), gathered))
    }
}

async fn answer(
    pc: &dyn PeerConnection,
    gathered: &Notify,
    offer: String,
) -> anyhow::Result<String> {
    pc.set_remote_description(RTCSessionDescription::offer(offer)?)
        .await?;
    let answer = pc.create_answer(None).await?;
    pc.set_local_description(answer).await?;
    let _ = tokio::time::timeout(Duration::from_secs(3), gathered.notified()).await;
    Ok(pc
        .local_description()
        .await
        .ok_or_else(|| anyhow::anyhow!("no local description"))?
        .sdp)
}

fn created(
    relay: &Relay,
    id: String,
    pc: Arc<dyn PeerConnection>,
    name: Option<String>,
    sdp: String,
) -> Response {
    relay
        .sessions
        .lock()
        .unwrap()
        .insert(id.clone(), (pc, name));
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
    let id = uuid::Uuid::new_v4().to_string();
    relay
        .streams
        .lock()
        .unwrap()
        .insert(name.clone(), (id.clone(), Vec::new()));
    let (pc, gathered) = match relay
        .peer(Some((relay.clone(), name.clone(), id.clone())))
        .await
    {
        Ok(peer) => peer,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    match answer(&*pc, &gathered, offer).await {
        Ok(sdp) => created(&relay, id, pc, Some(name), sdp),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn play(State(relay): State<Relay>, Path(name): Path<String>, body: Bytes) -> Response {
    let offer = String::from_utf8_lossy(&body).to_string();
    // Wait for the publisher's tracks (audio and video), as Sluice and the baseline do.
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
    let (pc, gathered) = match relay.peer(None).await {
        Ok(peer) => peer,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let mut feeds = Vec::new();
    for track in tracks {
        let ssrc = rand_ssrc();
        let local = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("relay-021-{ssrc}"),
            format!("relay-021-track-{ssrc}"),
            format!("relay-021-{ssrc}"),
            track.kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: track.codec.clone(),
                ..Default::default()
            }],
        )));
        if let Err(e) = pc.add_track(local.clone() as Arc<dyn TrackLocal>).await {
            return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
        }
        feeds.push((local, ssrc, track.packets.subscribe()));
    }
    match answer(&*pc, &gathered, offer).await {
        Ok(sdp) => {
            for (local, ssrc, mut packets) in feeds {
                tokio::spawn(async move {
                    loop {
                        match packets.recv().await {
                            Ok(mut packet) => {
                                packet.header.ssrc = ssrc;
                                if local.write_rtp(packet).await.is_err() {
                                    break;
                                }
                            }
                            // A slow player skips what it missed, as Sluice's players do.
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => break,
                        }
                    }
                });
            }
            created(&relay, uuid::Uuid::new_v4().to_string(), pc, None, sdp)
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

fn rand_ssrc() -> u32 {
    (uuid::Uuid::new_v4().as_u128() & 0xffff_ffff) as u32
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
    let runtime = webrtc::runtime::default_runtime()
        .ok_or_else(|| anyhow::anyhow!("webrtc was built without a runtime"))?;
    let relay = Relay {
        runtime,
        streams: Arc::default(),
        sessions: Arc::default(),
    };
    let app = Router::new()
        .route("/whip/{name}", post(publish))
        .route("/whep/{name}", post(play))
        .route("/session/{id}", delete(hang_up))
        .with_state(relay);
    let listener = tokio::net::TcpListener::bind(bind).await?;
    println!("relay-021 ready http={}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
