//! The table of live streams: records, their indexes (by id, by name), status changes,
//! the event bus, and the one way to stop a stream.
//!
//! The registry knows nothing of WebRTC. A stream holds a [`StopHandle`]; stopping a stream
//! asks its handle to tear the session down, and the session reports back with
//! [`Registry::finish`], which announces the final status and removes the record. This keeps
//! the control plane testable and benchmarkable with synthetic streams and no sockets.

mod audit;
mod filter;
mod holds;
mod packed;
mod query;
mod record;
mod terminate;
mod timeline;

pub use audit::{TerminatedStream, Termination, TerminationSource};
pub use filter::{PluginFilter, StreamFilter};
pub use holds::{HeldStream, Hold, HoldFilter, HoldSpec, MAX_HOLD_MS, MAX_HOLDS, TooManyHolds};
pub use record::{
    Bearer, Hint, MediaKind, NewStream, Status, StatusEvent, StopReason, StreamRecord,
};
pub use timeline::{Timeline, follow};

pub use crate::clock::now_ms;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock, Weak};

use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

/// Something that can stop a stream: a WebRTC session, or a synthetic stream in tests.
///
/// `stop` must return quickly and never block: it starts the teardown, which ends with
/// [`Registry::finish`]. Calling it twice is harmless; the first reason wins.
pub trait StopHandle: Send + Sync {
    fn stop(&self, reason: StopReason);
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    #[error("stream '{0}' is already being published")]
    AlreadyPublishing(String),
    #[error("no stream '{0}' is being published")]
    NotPublishing(String),
    #[error("held: {}", .0.reason)]
    Held(Box<Hold>),
    #[error("the server is shutting down")]
    Draining,
    #[error("the server is full: {0} streams are live")]
    Full(usize),
    /// A client-chosen id (WCS's `mediaSessionId`) that a live stream already has.
    #[error("MediaSessionId is already in use")]
    IdInUse(Uuid),
}

struct Entry {
    record: StreamRecord,
    handle: Arc<dyn StopHandle>,
    status_tx: watch::Sender<StatusEvent>,
    /// The `seq` of this stream's last event.
    seq: u64,
    timeline: Arc<Timeline>,
    /// The termination that asked this stream to stop, for the log line of its end.
    terminated_by: Option<(u64, &'static str)>,
}

/// Counts of what happened to streams since the start, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct LifecycleCounts {
    /// Streams registered, by (app, published).
    pub started: BTreeMap<(String, bool), u64>,
    /// Streams ended, by (app, published, cause).
    pub ended: BTreeMap<(String, bool, &'static str), u64>,
    /// Terminations, by source kind: (requests, streams they named).
    pub terminations: BTreeMap<&'static str, (u64, u64)>,
}

#[derive(Default)]
struct NameSlot {
    publisher: Option<Uuid>,
    players: HashSet<Uuid>,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<Uuid, Entry>,
    by_name: HashMap<String, NameSlot>,
    /// Every stream by its [`phase`], for periodic work spread over an interval: the streams
    /// due in a slice of the interval are a range here, not a scan of the table.
    by_phase: BTreeSet<(u64, Uuid)>,
    next_event_id: u64,
    ended: timeline::Ended,
}

/// Where a stream falls in any periodic interval, as a fraction of 2^64: uniform over the
/// streams (it mixes the random bits of both halves of a v4 UUID) and fixed for its life.
/// The registry's id for a client's stream id. Ids are opaque strings to clients (WCS's
/// SDK picks UUIDs, taken as they are); any other string gets the same name-based UUID
/// every time, so every protocol and REST find the stream by the client's string.
pub fn stream_id(client_id: &str) -> Uuid {
    Uuid::parse_str(client_id)
        .unwrap_or_else(|_| Uuid::new_v5(&Uuid::NAMESPACE_OID, client_id.as_bytes()))
}

pub fn phase(id: Uuid) -> u64 {
    let bits = id.as_u128();
    (bits as u64) ^ ((bits >> 64) as u64)
}

/// The next event of a stream: a new server-wide id, the stream's next `seq`, appended to
/// its timeline.
fn stamp(
    next_event_id: &mut u64,
    record: &StreamRecord,
    seq: &mut u64,
    timeline: &Timeline,
    ending: Option<(Hint, &StopReason)>,
) -> StatusEvent {
    *next_event_id += 1;
    *seq += 1;
    let mut event = StatusEvent::of(record, *next_event_id, *seq);
    if let Some((hint, reason)) = ending {
        event.hint = Some(hint);
        event.reason = reason.text().map(String::from);
    }
    timeline.push(event.clone());
    event
}

impl Entry {
    fn stamp(
        &mut self,
        next_event_id: &mut u64,
        ending: Option<(Hint, &StopReason)>,
    ) -> StatusEvent {
        stamp(
            next_event_id,
            &self.record,
            &mut self.seq,
            &self.timeline,
            ending,
        )
    }
}

/// The live streams of one server. Cheap to share behind an `Arc`.
pub struct Registry {
    table: RwLock<Table>,
    events: broadcast::Sender<StatusEvent>,
    /// Subscribers that must see every event (the status hook): never lagged, never dropped.
    sinks: Mutex<Vec<mpsc::UnboundedSender<StatusEvent>>>,
    audit: Mutex<audit::AuditTrail>,
    holds: Mutex<holds::HoldTable>,
    counts: Mutex<LifecycleCounts>,
    node_id: String,
    /// Set once a shutdown has begun: nothing more is registered.
    draining: std::sync::atomic::AtomicBool,
}

/// How long a player whose publisher left should wait before trying again.
const PUBLISHER_GONE_RETRY_MS: u64 = 2_000;
/// How long a client whose connection broke should wait before trying again.
const CONNECTION_LOST_RETRY_MS: u64 = 1_000;

const EVENT_BUS_CAPACITY: usize = 4096;
/// Terminations kept for `GET /rest-api/stream/terminations`.
const AUDIT_CAPACITY: usize = 1000;

impl Registry {
    pub fn new(node_id: impl Into<String>) -> Arc<Self> {
        let (events, _) = broadcast::channel(EVENT_BUS_CAPACITY);
        Arc::new(Self {
            table: RwLock::new(Table::default()),
            events,
            sinks: Mutex::default(),
            audit: Mutex::new(audit::AuditTrail::new(AUDIT_CAPACITY)),
            holds: Mutex::default(),
            counts: Mutex::default(),
            node_id: node_id.into(),
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Adds a stream in status `PENDING`, with no limit on how many are live.
    pub fn register(
        &self,
        new: NewStream,
        handle: Arc<dyn StopHandle>,
    ) -> Result<StreamRecord, RegistryError> {
        self.register_within(new, handle, 0)
    }

    /// Adds a stream in status `PENDING`. A publisher needs its name free; a player needs a
    /// publisher of that name (the one it names, if it names one). Refused while a hold
    /// matches it, while the server is draining, or when `max_streams` (`0`: no limit) are
    /// live. All of it is checked under the table's write lock, so a terminate-with-hold or
    /// a shutdown that has returned cannot be slipped past.
    pub fn register_within(
        &self,
        new: NewStream,
        handle: Arc<dyn StopHandle>,
        max_streams: usize,
    ) -> Result<StreamRecord, RegistryError> {
        let mut table = self.write();
        if self.is_draining() {
            return Err(RegistryError::Draining);
        }
        if max_streams > 0 && table.by_id.len() >= max_streams {
            return Err(RegistryError::Full(table.by_id.len()));
        }
        if let Some(hold) = self.held(&new.name, new.published, &new.app_key) {
            return Err(RegistryError::Held(Box::new(hold)));
        }
        let slot = table.by_name.get(&new.name);
        let publisher = slot.and_then(|s| s.publisher);
        if new.published && publisher.is_some() {
            return Err(RegistryError::AlreadyPublishing(new.name));
        }
        if !new.published
            && (publisher.is_none() || new.publisher_id.is_some_and(|p| Some(p) != publisher))
        {
            return Err(RegistryError::NotPublishing(new.name));
        }
        if let Some(id) = new
            .media_session_id
            .filter(|id| table.by_id.contains_key(id))
        {
            return Err(RegistryError::IdInUse(id));
        }
        let record = StreamRecord::new(new, &self.node_id, now_ms());
        let id = record.media_session_id;
        table.by_phase.insert((phase(id), id));
        let slot = table.by_name.entry(record.name.clone()).or_default();
        if record.published {
            slot.publisher = Some(id);
        } else {
            slot.players.insert(id);
        }
        let timeline = Arc::new(Timeline::default());
        let mut seq = 0;
        let event = stamp(&mut table.next_event_id, &record, &mut seq, &timeline, None);
        let (status_tx, _) = watch::channel(event.clone());
        table.by_id.insert(
            id,
            Entry {
                record: record.clone(),
                handle,
                status_tx,
                seq,
                timeline,
                terminated_by: None,
            },
        );
        *self
            .lock_counts()
            .started
            .entry((record.app_key.clone(), record.published))
            .or_default() += 1;
        // Published under the lock, so every subscriber sees each stream's events in order.
        self.publish(event);
        drop(table);
        Ok(record)
    }

    /// Registers a stream with no media behind it: its stop handle finishes it at once.
    /// For tests and benchmarks of the control plane at scale.
    pub fn register_synthetic(
        self: &Arc<Self>,
        new: NewStream,
    ) -> Result<StreamRecord, RegistryError> {
        let handle = Arc::new(SyntheticHandle {
            registry: Arc::downgrade(self),
            id: std::sync::OnceLock::new(),
        });
        let record = self.register(new, handle.clone())?;
        let _ = handle.id.set(record.media_session_id);
        let status = if record.published {
            Status::Publishing
        } else {
            Status::Playing
        };
        self.set_status(record.media_session_id, status, "");
        Ok(self.get(record.media_session_id).unwrap_or(record))
    }

    /// Moves a live stream to a non-final status. Final statuses go through [`finish`](Self::finish).
    pub fn set_status(&self, id: Uuid, status: Status, info: &str) -> bool {
        debug_assert!(!status.is_final());
        let mut table = self.write();
        let Table {
            by_id,
            next_event_id,
            ..
        } = &mut *table;
        let Some(entry) = by_id.get_mut(&id) else {
            return false;
        };
        if entry.record.status == status && entry.record.info == info {
            return true;
        }
        entry.record.status = status;
        entry.record.info = info.to_string();
        let event = entry.stamp(next_event_id, None);
        entry.status_tx.send_replace(event.clone());
        self.publish(event);
        drop(table);
        true
    }

    /// Replaces a live stream's `custom` map (a web server's `OVERWRITE` answer).
    pub fn update_custom(
        &self,
        id: Uuid,
        custom: std::collections::BTreeMap<String, String>,
    ) -> bool {
        match self.write().by_id.get_mut(&id) {
            Some(entry) => {
                entry.record.custom = custom;
                true
            }
            None => false,
        }
    }

    /// Asks a stream to stop. Returns `false` when there is no such stream.
    /// The handle is called with no lock held.
    pub fn stop(&self, id: Uuid, reason: StopReason) -> bool {
        let handle = self.read().by_id.get(&id).map(|e| e.handle.clone());
        match handle {
            Some(handle) => {
                handle.stop(reason);
                true
            }
            None => false,
        }
    }

    /// Called by a stream's session once it is torn down: announces the final status and
    /// removes the record. A publisher's players are asked to stop with
    /// [`StopReason::PublisherStopped`]. Returns the final record, or `None` if already gone.
    pub fn finish(&self, id: Uuid, reason: &StopReason) -> Option<StreamRecord> {
        let mut table = self.write();
        let mut entry = table.by_id.remove(&id)?;
        table.by_phase.remove(&(phase(id), id));
        let (status, info) = reason.final_status(entry.record.published);
        entry.record.status = status;
        entry.record.info = info;
        let now = now_ms();
        let hint = self.hint(&entry.record, reason, now);
        let event = entry.stamp(&mut table.next_event_id, Some((hint, reason)));
        table.ended.insert(id, &entry.timeline, now);
        let record = entry.record;
        let mut orphans = Vec::new();
        if let Some(slot) = table.by_name.get_mut(&record.name) {
            if record.published {
                if slot.publisher == Some(id) {
                    slot.publisher = None;
                }
                orphans.extend(slot.players.iter().copied());
            } else {
                slot.players.remove(&id);
            }
            if slot.publisher.is_none() && slot.players.is_empty() {
                table.by_name.remove(&record.name);
            }
        }
        let handles: Vec<_> = orphans
            .iter()
            .filter_map(|p| table.by_id.get(p).map(|e| e.handle.clone()))
            .collect();
        self.publish(event.clone());
        drop(table);
        // Dropping the sender after the last value ends every status stream of this session.
        entry.status_tx.send_replace(event);
        drop(entry.status_tx);
        let cause = reason.cause();
        *self
            .lock_counts()
            .ended
            .entry((record.app_key.clone(), record.published, cause))
            .or_default() += 1;
        let (termination, source) = match (reason, entry.terminated_by) {
            (StopReason::Server(_), Some((id, source))) => (Some(id), source),
            (StopReason::Server(_), None) => (None, "server"),
            _ => (None, cause),
        };
        // The one log line of every stream's end.
        tracing::info!(
            stream = %record.media_session_id,
            name = %record.name,
            app = %record.app_key,
            published = record.published,
            status = %record.status,
            source,
            termination,
            reason = %record.info,
            "stream stopped"
        );
        for handle in handles {
            handle.stop(StopReason::PublisherStopped);
        }
        Some(record)
    }

    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The status stream of one session: its current status, then every change, ending
    /// after the final status.
    pub fn watch(&self, id: Uuid) -> Option<watch::Receiver<StatusEvent>> {
        self.read().by_id.get(&id).map(|e| e.status_tx.subscribe())
    }

    /// Every status change of every stream. A receiver that falls behind by more than the
    /// bus holds misses events (and is told so); use [`every_event`](Self::every_event)
    /// where none may be missed.
    pub fn events(&self) -> broadcast::Receiver<StatusEvent> {
        self.events.subscribe()
    }

    /// Every status change of every stream, none ever dropped, each stream's in order. The
    /// receiver must keep reading: what it has not read stays in memory.
    pub fn every_event(&self) -> mpsc::UnboundedReceiver<StatusEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    /// A stream's events so far, live or ended within the last minutes, and — while it
    /// lives — a receiver that changes with each new event and ends after the final one.
    pub fn timeline(
        &self,
        id: Uuid,
    ) -> Option<(Arc<Timeline>, Option<watch::Receiver<StatusEvent>>)> {
        let table = self.read();
        if let Some(entry) = table.by_id.get(&id) {
            return Some((entry.timeline.clone(), Some(entry.status_tx.subscribe())));
        }
        table.ended.get(&id, now_ms()).map(|t| (t, None))
    }

    /// Forgets the ended streams' events that have expired; how many. The write lock is
    /// taken only when one has: this runs on a timer, beside every reader.
    pub fn prune_ended(&self) -> usize {
        let now = now_ms();
        if !self.read().ended.has_expired(now) {
            return 0;
        }
        self.write().ended.prune(now)
    }

    /// Ended streams whose events are still kept, and holds in force: for the runtime view.
    pub fn kept(&self) -> (usize, usize) {
        (self.read().ended.len(), self.lock_holds().len(now_ms()))
    }

    /// Sends an event to every subscriber. Called with the table's write lock held, so that
    /// events leave in the order of their ids.
    fn publish(&self, event: StatusEvent) {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        sinks.retain(|sink| sink.send(event.clone()).is_ok());
        drop(sinks);
        let _ = self.events.send(event);
    }

    fn lock_holds(&self) -> std::sync::MutexGuard<'_, holds::HoldTable> {
        self.holds.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-updated in a way that
        // matters more than losing the server, so poisoning is ignored.
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }
}

struct SyntheticHandle {
    registry: Weak<Registry>,
    id: std::sync::OnceLock<Uuid>,
}

impl StopHandle for SyntheticHandle {
    fn stop(&self, reason: StopReason) {
        if let (Some(registry), Some(id)) = (self.registry.upgrade(), self.id.get()) {
            registry.finish(*id, &reason);
        }
    }
}

#[cfg(test)]
mod tests;
