//! A node's cache of stream states, for contexts: each stream's state at a revision, loaded
//! from the database on first read, caught up from the changelog when the stream has moved on,
//! and evicted least recently used beyond the byte budget.
//!
//! A node learns that a stream moved on from its own writer (before the write is acknowledged,
//! so a client reads its own writes on the node it wrote through) and from other nodes'
//! notifications (so within the time a notification takes, well under a second). While the
//! listening connection is down, notifications may be missed: every read then asks the
//! database.
//!
//! A catch-up applies the changes past the cached revision the way the redb store's live state
//! takes its commits (the records as created, then each repeated record as it is now), and
//! takes the totals from the stream's row; a load reads the state as the row says
//! ([`super::load::restore`]). Both give the same state at the same revision, so contexts are
//! byte-identical across nodes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::context::{ContextRequest, ContextWindow, PayloadPolicy};
use crate::event::{Record, Severity, StreamName, Timestamp};
use crate::meter::Meter;
use crate::stream::{Origin, StreamState};

use super::super::writer::{read, write};

/// A stream's cached state.
pub(super) struct Cached {
    /// The stream's id: a stream deleted and created again is another one.
    pub id: u64,
    pub state: RwLock<StreamState>,
    /// The newest revision this node has heard the stream has.
    heard: AtomicU64,
    /// Whether the stream may have moved on unheard (notifications missed, the stream deleted):
    /// the next read asks the database.
    unknown: AtomicBool,
    /// When the stream was last read (µs since the cache was made).
    last_used: AtomicU64,
    /// Held while the state is caught up, so that concurrent readers wait for one catch-up.
    pub catching_up: tokio::sync::Mutex<()>,
}

impl Cached {
    pub(super) fn new(id: u64, state: StreamState) -> Cached {
        Cached {
            id,
            heard: AtomicU64::new(state.revision()),
            unknown: AtomicBool::new(false),
            state: RwLock::new(state),
            last_used: AtomicU64::new(0),
            catching_up: tokio::sync::Mutex::new(()),
        }
    }

    /// The cached state's revision.
    pub(super) fn revision(&self) -> u64 {
        read(&self.state).revision()
    }

    /// Whether the state is at least at `revision` and at what this node has heard of.
    pub(super) fn is_current(&self, revision: u64) -> bool {
        let have = self.revision();
        !self.unknown.load(Ordering::Acquire)
            && have >= revision
            && have >= self.heard.load(Ordering::Acquire)
    }

    /// A catch-up starts: what is heard from now on counts, what was unknown is about to be read.
    pub(super) fn start_catching_up(&self) {
        self.unknown.store(false, Ordering::Release);
    }

    /// The database said the stream is at `revision`.
    pub(super) fn confirmed(&self, revision: u64) {
        self.heard.fetch_max(revision, Ordering::AcqRel);
    }

    fn mark_unknown(&self) {
        self.unknown.store(true, Ordering::Release);
    }

    /// Builds a context from the state if nothing needs counting first (microseconds).
    pub(super) fn warm_context(
        &self,
        request: &ContextRequest,
        now: Timestamp,
    ) -> Option<ContextWindow> {
        crate::context::build_if_ready(&read(&self.state).view(), request, now)
    }

    /// Builds a context from the state: counting what is not counted yet outside its lock.
    pub(super) fn context(&self, request: &ContextRequest, now: Timestamp) -> ContextWindow {
        let unprepared = {
            let state = read(&self.state);
            if let Some(window) = crate::context::build_if_ready(&state.view(), request, now) {
                return window;
            }
            crate::context::unprepared(&state.view(), request)
        };
        crate::context::prepare(&unprepared, request, now);
        crate::context::build(&read(&self.state).view(), request, now)
    }
}

/// The node's cached streams, within a byte budget.
pub(super) struct NodeCache {
    streams: RwLock<HashMap<StreamName, Arc<Cached>>>,
    pub meter: Meter,
    budget: usize,
    opened: Instant,
    /// Whether the node is listening for other nodes' notifications now.
    listening: AtomicBool,
    /// See [`NodeCache::heard_count`].
    heard_count: AtomicU64,
    pub loads: AtomicU64,
    pub catch_ups: AtomicU64,
    pub evictions: AtomicU64,
}

impl NodeCache {
    pub(super) fn new(budget: usize) -> NodeCache {
        NodeCache {
            streams: RwLock::new(HashMap::new()),
            meter: Meter::default(),
            budget,
            opened: Instant::now(),
            listening: AtomicBool::new(false),
            heard_count: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            catch_ups: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// The cached stream `name`, marked used now.
    pub(super) fn get(&self, name: &StreamName) -> Option<Arc<Cached>> {
        let cached = read(&self.streams).get(name).cloned()?;
        self.touch(&cached);
        if !self.listening.load(Ordering::Acquire) {
            cached.mark_unknown();
        }
        Some(cached)
    }

    /// How many times this node heard of a change: a load compares it before and after, since
    /// what was heard while it read is not in the entry it makes.
    pub(super) fn heard_count(&self) -> u64 {
        self.heard_count.load(Ordering::Acquire)
    }

    /// Caches a state just loaded (replacing what was cached of the stream) with what was heard
    /// since `heard_count` was read, then evicts the least recently used streams while over the
    /// budget.
    pub(super) fn insert(&self, name: StreamName, cached: Arc<Cached>, heard_count: u64) {
        self.touch(&cached);
        write(&self.streams).insert(name, cached.clone());
        if self.heard_count() != heard_count {
            cached.mark_unknown();
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.evict_over_budget();
    }

    /// Marks `cached` used now.
    fn touch(&self, cached: &Cached) {
        let now = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX);
        cached.last_used.store(now, Ordering::Relaxed);
    }

    /// Forgets a stream (deleted, or replaced by one of the same name).
    pub(super) fn remove(&self, name: &StreamName) {
        let removed = write(&self.streams).remove(name);
        drop(removed);
    }

    /// The stream is at `revision` now (0: it was deleted), as this node's writer or another
    /// node's notification says.
    pub(super) fn heard(&self, name: &StreamName, revision: u64) {
        self.heard_count.fetch_add(1, Ordering::AcqRel);
        if let Some(cached) = read(&self.streams).get(name) {
            if revision == 0 {
                cached.mark_unknown();
            } else {
                cached.heard.fetch_max(revision, Ordering::AcqRel);
            }
        }
    }

    /// Another node's maintenance removed records of the stream without a new revision: a
    /// cached state asks the database on its next read (see `contexts.rs`).
    pub(super) fn trimmed(&self, name: &StreamName) {
        self.heard_count.fetch_add(1, Ordering::AcqRel);
        if let Some(cached) = read(&self.streams).get(name) {
            cached.mark_unknown();
        }
    }

    /// This node's writer committed a batch that took the stream (of id `id`) from revision
    /// `before` (`None`: it did not exist) to `after`: a cached state at `before` takes the
    /// batch's changes from `catch_up` now, without asking the database; another is caught up
    /// when next read.
    pub(super) fn committed(
        &self,
        name: &StreamName,
        id: u64,
        before: Option<u64>,
        after: u64,
        catch_up: impl FnOnce() -> Option<CatchUp>,
    ) {
        self.heard_count.fetch_add(1, Ordering::AcqRel);
        let Some(cached) = read(&self.streams).get(name).cloned() else {
            return;
        };
        // A reader catching up holds the turn: it will see the revision heard.
        if cached.id == id
            && before == Some(cached.revision())
            && let Ok(_turn) = cached.catching_up.try_lock()
            && cached.revision() == before.unwrap_or_default()
            && let Some(catch_up) = catch_up()
        {
            let mut state = write(&cached.state);
            if catch_up.escalates(&state) {
                // Read again on its next read (see `CatchUp::escalates`).
                drop(state);
                cached.mark_unknown();
            } else {
                catch_up.apply(&mut state, &self.meter);
                self.catch_ups.fetch_add(1, Ordering::Relaxed);
            }
        }
        cached.heard.fetch_max(after, Ordering::AcqRel);
    }

    /// Notifications may have been missed (the listening connection was lost or is back, or
    /// they came faster than they were taken): every cached stream asks the database on its
    /// next read. `listening` says whether notifications arrive from now on.
    pub(super) fn resync(&self, listening: bool) {
        self.listening.store(listening, Ordering::Release);
        self.heard_count.fetch_add(1, Ordering::AcqRel);
        for cached in read(&self.streams).values() {
            cached.mark_unknown();
        }
    }

    /// Streams cached now.
    pub(super) fn len(&self) -> usize {
        read(&self.streams).len()
    }

    fn evict_over_budget(&self) {
        if self.meter.bytes() <= self.budget {
            return;
        }
        let low_water = self.budget - self.budget / 8;
        let mut by_use: Vec<(u64, StreamName)> = read(&self.streams)
            .iter()
            .map(|(name, cached)| (cached.last_used.load(Ordering::Relaxed), name.clone()))
            .collect();
        by_use.sort_unstable();
        for (_, name) in by_use {
            if self.meter.bytes() <= low_water {
                break;
            }
            // Dropped outside the map's lock; a reader still holding it finishes first.
            let evicted = write(&self.streams).remove(&name);
            if evicted.is_some() {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
            drop(evicted);
        }
    }
}

/// Follows the node's wake-ups until the store is gone: other nodes' changes mark the cached
/// streams they touch, and missed notifications every cached stream.
pub(super) async fn follow(
    mut wakeups: tokio::sync::broadcast::Receiver<super::Wakeup>,
    cache: Arc<NodeCache>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match wakeups.recv().await {
            Ok(super::Wakeup::Changed { stream, revision }) => cache.heard(&stream, revision),
            Ok(super::Wakeup::Resync) => cache.resync(true),
            Err(RecvError::Lagged(_)) => cache.resync(true),
            Err(RecvError::Closed) => return,
        }
    }
}

/// What a catch-up read: the changes past the cached revision, the current rows of the records
/// they touched, and the stream's row.
pub(super) struct CatchUp {
    /// `(revision, change)` in revision order, contiguous from the cached revision on.
    pub changes: Vec<(u64, super::super::ChangeBody)>,
    /// The current version of every record the changes touched (absent: removed since).
    pub current: HashMap<u64, Record>,
    /// The stream's totals, revision, first stored seq, after the changes.
    pub totals: crate::context::Totals,
    pub revision: u64,
    pub first_seq: u64,
}

/// Whether a record is an anomaly record (which never collapses: a repeat of one is a
/// detector's next version of it).
fn is_anomaly(record: &Record) -> bool {
    record.kind.as_str() == crate::anomaly::ANOMALY_KIND
}

impl CatchUp {
    /// Whether the changes revise an anomaly record that `state` no longer has in its tail, or
    /// raise one it does not keep among its severe records to `error`: what such a version
    /// does to the state (where it joins the severe records a load would keep, which older
    /// times it moves) depends on records a catch-up does not read, so the state is loaded
    /// afresh instead. Rare: an episode's record leaves the tail only when the episode outlasts
    /// the tail, and is then revised every `anomaly::UPDATE_EVERY` events.
    pub(super) fn escalates(&self, state: &StreamState) -> bool {
        self.changes.iter().any(|(_, change)| match change {
            super::super::ChangeBody::Repeat { seq, .. } => {
                self.current.get(seq).is_some_and(|record| {
                    is_anomaly(record)
                        && (state.tail_record(*seq).is_none()
                            || record.severity >= Severity::Error && !state.holds_severe(*seq))
                })
            }
            _ => false,
        })
    }

    /// Applies the changes to `state`, which then is the state a load at the new revision
    /// gives: records are adopted as created (their size as created places the tail's byte
    /// bound), each repeated record is replaced by its current version at its last change,
    /// notes are added and removed, retention's removals are forgotten, and the totals are the
    /// row's.
    pub(super) fn apply(self, state: &mut StreamState, meter: &Meter) {
        use super::super::ChangeBody;
        let mut last_change: HashMap<u64, usize> = HashMap::new();
        for (index, (_, change)) in self.changes.iter().enumerate() {
            match change {
                ChangeBody::Record(record) => last_change.insert(record.seq, index),
                ChangeBody::Repeat { seq, .. } => last_change.insert(*seq, index),
                _ => None,
            };
        }
        for (index, (revision, change)) in self.changes.into_iter().enumerate() {
            match change {
                ChangeBody::Record(record) => {
                    let cached = super::load::cached_record(&record, PayloadPolicy::Drop, meter);
                    let origin = Origin::Event {
                        ts: record.first_ts,
                        collapsed: false,
                    };
                    state.adopt(Arc::new(cached), origin);
                }
                ChangeBody::Repeat {
                    seq,
                    repeat_count,
                    last_ts,
                } => {
                    if last_change.get(&seq) != Some(&index) {
                        continue;
                    }
                    // Retention may have removed the record since: its last repeat still
                    // counts, for the time of what is no longer shown (in the tail, through
                    // the record; before it, as the writer's book took it: an anomaly record
                    // revised after its episode outlasted the tail, then removed).
                    let record = match self.current.get(&seq) {
                        Some(record) => record.clone(),
                        None => match state.tail_record(seq) {
                            Some(cached) => Record {
                                repeat_count,
                                last_ts,
                                revision,
                                ..cached.record().clone()
                            },
                            None => {
                                state.repeated_before_tail(seq, last_ts);
                                continue;
                            }
                        },
                    };
                    // Anomaly records never collapse: a repeat of one is a detector's next
                    // version of it, which may be before the tail and may just have become
                    // severe, and is adopted as the writer's state took it.
                    // (One that just became severe is not caught up: see `escalates`.)
                    let origin = if is_anomaly(&record) {
                        Origin::Revised {
                            ts: last_ts,
                            escalated: false,
                        }
                    } else {
                        Origin::Event {
                            ts: last_ts,
                            collapsed: true,
                        }
                    };
                    let cached = super::load::cached_record(&record, PayloadPolicy::Drop, meter);
                    state.adopt(Arc::new(cached), origin);
                }
                ChangeBody::Note(note) => {
                    state.add_note(note.text, note.created_at, note.expires_at);
                }
                ChangeBody::NoteDeleted { id } => {
                    state.remove_note(id);
                }
            }
        }
        if self.first_seq > 1 {
            state.forget_through(self.first_seq - 1);
        }
        state.caught_up(self.revision, self.totals);
    }
}
