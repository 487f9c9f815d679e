//! An ended stream's status events packed into three allocations, for the minutes they
//! stay readable after the end.
//!
//! Why: a stream's live events are about twenty-five loose allocations (each event's
//! strings and `custom` map), made over the stream's life among its session's much larger
//! ones. Kept after the end, they sat scattered among the freed session memory and pinned
//! whole heap pages that `malloc_trim` cannot give back: 200 ended players kept ~6 MB
//! resident for the five minutes their events are kept. Packed at the end, they are
//! three.

use std::collections::VecDeque;

use uuid::Uuid;

use super::{Hint, Status, StatusEvent};

/// A string's place in [`Packed::text`].
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

/// One event, its strings as spans of the shared text.
struct PackedEvent {
    event_id: u64,
    seq: u64,
    media_session_id: Uuid,
    published: bool,
    status: Status,
    hint: Option<Hint>,
    edge: bool,
    session_id: Span,
    name: Span,
    app_key: Span,
    info: Span,
    reason: Option<Span>,
    /// The event's `custom` pairs: this range of [`Packed::custom`].
    custom: std::ops::Range<usize>,
}

/// Events, oldest first, as [`pack`] made them; [`Packed::unpack`] gives them back.
pub(super) struct Packed {
    text: Box<str>,
    events: Box<[PackedEvent]>,
    custom: Box<[(Span, Span)]>,
}

/// Packs `events`: every string end to end in one exactly-sized text.
pub(super) fn pack(events: &VecDeque<StatusEvent>) -> Packed {
    let text_len: usize = events
        .iter()
        .map(|e| {
            let custom: usize = e.custom.iter().map(|(k, v)| k.len() + v.len()).sum();
            e.session_id.len()
                + e.name.len()
                + e.app_key.len()
                + e.info.len()
                + e.reason.as_ref().map_or(0, String::len)
                + custom
        })
        .sum();
    let custom_len = events.iter().map(|e| e.custom.len()).sum();
    let mut text = String::with_capacity(text_len);
    let mut custom = Vec::with_capacity(custom_len);
    let mut put = |s: &str| {
        let start = text.len();
        text.push_str(s);
        Span {
            start,
            end: text.len(),
        }
    };
    let packed: Vec<PackedEvent> = events
        .iter()
        .map(|e| {
            let first = custom.len();
            custom.extend(e.custom.iter().map(|(k, v)| (put(k), put(v))));
            PackedEvent {
                event_id: e.event_id,
                seq: e.seq,
                media_session_id: e.media_session_id,
                published: e.published,
                status: e.status,
                hint: e.hint,
                edge: e.edge,
                session_id: put(&e.session_id),
                name: put(&e.name),
                app_key: put(&e.app_key),
                info: put(&e.info),
                reason: e.reason.as_deref().map(&mut put),
                custom: first..custom.len(),
            }
        })
        .collect();
    Packed {
        text: text.into_boxed_str(),
        events: packed.into_boxed_slice(),
        custom: custom.into_boxed_slice(),
    }
}

impl Packed {
    /// The events as they were packed.
    pub fn unpack(&self) -> VecDeque<StatusEvent> {
        let text = |span: Span| self.text.get(span.start..span.end).unwrap_or("").to_owned();
        self.events
            .iter()
            .map(|e| StatusEvent {
                event_id: e.event_id,
                seq: e.seq,
                media_session_id: e.media_session_id,
                session_id: text(e.session_id),
                name: text(e.name),
                app_key: text(e.app_key),
                published: e.published,
                status: e.status,
                info: text(e.info),
                custom: self
                    .custom
                    .get(e.custom.clone())
                    .unwrap_or_default()
                    .iter()
                    .map(|&(k, v)| (text(k), text(v)))
                    .collect(),
                hint: e.hint,
                reason: e.reason.map(text),
                edge: e.edge,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_id: u64, status: Status, custom: &[(&str, &str)]) -> StatusEvent {
        StatusEvent {
            event_id,
            seq: event_id,
            media_session_id: Uuid::new_v4(),
            session_id: "ws-7".into(),
            name: "stream-ü".into(),
            app_key: "live".into(),
            published: true,
            status,
            info: format!("info {event_id}"),
            custom: custom
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            hint: (status == Status::Failed).then_some(Hint::Retry {
                retry_after_ms: 1500,
            }),
            reason: (status == Status::Failed).then(|| "Stopped by keep-alive".into()),
            edge: event_id == 2,
        }
    }

    #[test]
    fn packed_events_unpack_as_they_were() {
        let events: VecDeque<_> = [
            event(1, Status::Pending, &[]),
            event(2, Status::Publishing, &[("token", "abc"), ("room", "")]),
            event(3, Status::Failed, &[("token", "abc")]),
        ]
        .into();
        let packed = pack(&events);
        assert_eq!(packed.unpack(), events);
        assert_eq!(packed.custom.len(), 3);
    }

    #[test]
    fn no_events_pack_to_none() {
        assert!(pack(&VecDeque::new()).unpack().is_empty());
    }
}
