//! What the media layer tells others of a session: a publisher's tracks as its players see
//! them, arriving one by one (`Publisher`), and the registry's record of a new publisher or
//! player (its kinds, codecs, addresses and the request's own fields).

use std::sync::Arc;

use tokio::sync::watch;
use uuid::Uuid;

use super::{OfferRequest, RelayTrack, codecs, offer, resource_path};
use crate::registry::{MediaKind, NewStream};

/// A live publisher as players see it: its tracks once they arrive.
pub(super) struct Publisher {
    /// How many tracks the offer said it would send.
    pub(super) expected_tracks: usize,
    pub(super) tracks: watch::Sender<Vec<Arc<RelayTrack>>>,
}

impl Publisher {
    pub(super) fn new(expected_tracks: usize) -> Arc<Self> {
        Arc::new(Publisher {
            expected_tracks,
            tracks: watch::channel(Vec::new()).0,
        })
    }

    /// Adds a track that arrived from stream `id` for its players; whether it is the last
    /// one the offer announced.
    pub(super) fn add_track(&self, id: Uuid, relay: Arc<RelayTrack>) -> bool {
        let mut all_arrived = false;
        self.tracks.send_modify(|tracks| {
            if let Some(twin) = tracks.iter().find(|t| t.kind == relay.kind) {
                // A second source of one kind (another SSRC on the same m-line).
                tracing::warn!(
                    stream = %id,
                    kind = ?relay.kind,
                    first_codec = %twin.codec.mime_type,
                    first_ssrc = twin.ssrc,
                    second_codec = %relay.codec.mime_type,
                    second_ssrc = relay.ssrc,
                    "a publisher sent a second track of one kind"
                );
            }
            tracks.push(relay);
            all_arrived = tracks.len() == self.expected_tracks;
        });
        all_arrived
    }
}

/// The registry's record of a new publisher whose offer `summary` says what it sends and
/// whose `answer` what was agreed.
pub(super) fn publisher_stream(
    request: OfferRequest,
    summary: &offer::OfferSummary,
    answer: &str,
) -> NewStream {
    let id = request.media_session_id;
    let mut new = NewStream::publisher(&request.name, &request.app_key);
    new.media_session_id = Some(id);
    new.session_id = request.session_id.unwrap_or_else(|| resource_path(id));
    new.remote_address = request.remote_address;
    new.media_kinds = kinds(&summary.sending);
    new.custom = request.custom;
    (new.audio_codec, new.video_codec) = offer::agreed_codecs(answer);
    new.bearer = request.bearer;
    new
}

/// The registry's record of a new player of `publisher_id` receiving `relays`.
pub(super) fn player_stream(
    request: OfferRequest,
    publisher_id: Uuid,
    relays: &[Arc<RelayTrack>],
) -> NewStream {
    let id = request.media_session_id;
    let mut new = NewStream::player(&request.name, &request.app_key);
    new.publisher_id = Some(publisher_id);
    new.media_session_id = Some(id);
    new.session_id = request
        .session_id
        .clone()
        .unwrap_or_else(|| resource_path(id));
    new.remote_address = request.remote_address;
    new.media_kinds = kinds(&relays.iter().map(|r| r.kind).collect::<Vec<_>>());
    new.custom = request.custom;
    // What the player receives is the publisher's codec, whatever else the answer lists.
    for relay in relays {
        let name = relay
            .codec
            .mime_type
            .split_once('/')
            .map(|(_, n)| codecs::canonical_name(n));
        match relay.kind {
            MediaKind::Audio => new.audio_codec = name,
            MediaKind::Video => new.video_codec = name,
        }
    }
    new.bearer = request.bearer;
    new
}

pub(super) fn kinds(list: &[MediaKind]) -> Vec<MediaKind> {
    let mut kinds = list.to_vec();
    kinds.sort();
    kinds.dedup();
    kinds
}

pub(super) fn kind_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}
