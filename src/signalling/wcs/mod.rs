//! WCS's WebSocket signalling, so that pages built on the Flashphoner Web SDK work
//! unchanged: the upgrade on any path (no subprotocol), JSON text frames, one task per
//! connection. The protocol itself is in `protocol` (no I/O); one connection's life is in
//! `connection`.

mod connection;
mod connections;
pub mod protocol;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::response::Response;

pub use connection::Context;
pub use connections::{ConnectionView, Connections};

use crate::media::MediaError;
use crate::registry::RegistryError;
use crate::sessions::Refusal;

/// The largest client message taken: an SDP offer with room to spare.
const MAX_MESSAGE: usize = 256 * 1024;

#[derive(Clone)]
struct Listener {
    context: Arc<Context>,
    local: SocketAddr,
}

/// The router of one WebSocket signalling listener bound at `local`.
pub fn router(context: Arc<Context>, local: SocketAddr) -> Router {
    Router::new()
        .fallback(upgrade)
        .with_state(Listener { context, local })
}

async fn upgrade(
    State(listener): State<Listener>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let max = MAX_MESSAGE.max(listener.context.config.load().settings.max_sdp_size * 2);
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let tasks = listener.context.tasks.clone();
            tasks.track_future(connection::serve(
                socket,
                listener.context,
                peer,
                listener.local,
            ))
        })
}

/// The `info` the model gives a refused stream.
pub fn refusal_info(refusal: &Refusal) -> String {
    match refusal {
        Refusal::TooManyOffers { retry_after, .. } => format!(
            "too many offers from this address; retry in {} s",
            retry_after.as_secs().max(1)
        ),
        Refusal::BadName(why) => why.clone(),
        Refusal::UnknownApp(app) => format!("unknown app '{app}'"),
        Refusal::Held(hold) => {
            let left_ms = hold.until.saturating_sub(crate::clock::now_ms());
            format!(
                "{}; retry in {} s",
                hold.reason,
                left_ms.div_ceil(1000).max(1)
            )
        }
        Refusal::Rejected { reason, .. } => reason.clone(),
        Refusal::Media(MediaError::Registry(e)) => match e {
            RegistryError::NotPublishing(_) => "Stream not found".into(),
            RegistryError::AlreadyPublishing(_) => "Stream name is already in use".into(),
            RegistryError::IdInUse(_) => "MediaSessionId is already in use".into(),
            other => other.to_string(),
        },
        Refusal::Media(e) => e.to_string(),
    }
}
