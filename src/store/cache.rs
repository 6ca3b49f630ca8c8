//! What readers and the writer share in memory, within one byte budget.
//!
//! Every stream has a [`Slot`] from the moment the store opens: its metadata row (totals,
//! revision, settings and what a restore needs besides the rows), about 1.5 KiB. Its [`StreamState`] (the tail, severe
//! records, goals and notes, with their rendered lines and token counts) is *resident* only
//! while it is used: a read of a cold stream loads it from the file
//! ([`super::reads::load_state`]), and whenever the [`Meter`] shows more than the budget, the
//! writer evicts the streams used least recently ([`super::writer`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::context::CachedRecord;
use crate::event::Note;
use crate::meter::Meter;
use crate::stream::{Origin, StreamState};

use super::schema::StreamMeta;
use super::writer::{read, write};

/// The cache's bookkeeping: its meter, its budget and the clock that orders streams by use.
pub(super) struct Cache {
    /// Bytes held by every cached record, note and state of the store.
    pub meter: Meter,
    /// Eviction starts above this many bytes.
    pub budget: usize,
    /// When the store opened: `last_used` times count from here.
    opened: Instant,
    /// Set while a reader's request for an eviction round is on its way to the writer.
    pub eviction_asked: AtomicBool,
    pub evictions: AtomicU64,
    pub cold_loads: AtomicU64,
    /// Writer states read from the file for a write (see [`super::CacheMetrics::shadow_loads`]).
    pub shadow_loads: AtomicU64,
    pub cold_load_seconds: crate::histogram::Histogram<{ COLD_LOAD_BUCKETS.len() }>,
}

/// Upper bounds (seconds) of the cold-load latency buckets.
pub const COLD_LOAD_BUCKETS: [f64; 10] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

impl Cache {
    pub(super) fn new(budget: usize) -> Cache {
        Cache {
            meter: Meter::default(),
            budget,
            opened: Instant::now(),
            eviction_asked: AtomicBool::new(false),
            evictions: AtomicU64::new(0),
            cold_loads: AtomicU64::new(0),
            shadow_loads: AtomicU64::new(0),
            cold_load_seconds: crate::histogram::Histogram::new(COLD_LOAD_BUCKETS),
        }
    }

    /// Whether the cache holds more than its budget.
    pub(super) fn is_over(&self) -> bool {
        self.meter.bytes() > self.budget
    }

    /// Where eviction stops: an eighth below the budget, so that rounds are not back to back.
    pub(super) fn low_water(&self) -> usize {
        self.budget - self.budget / 8
    }

    /// Marks `slot` used now.
    pub(super) fn touch(&self, slot: &Slot) {
        let now = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX);
        slot.last_used.store(now, Ordering::Relaxed);
    }

    /// Counts a cold load that took `took`.
    pub(super) fn count_cold_load(&self, took: Duration) {
        self.cold_loads.fetch_add(1, Ordering::Relaxed);
        self.cold_load_seconds.observe(took);
    }
}

/// What [`Slot::start_loading`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Loading {
    /// The state is in memory.
    Resident,
    /// Another reader is loading it.
    Busy,
    /// The caller is to load it.
    Started,
}

/// One stream as readers see it: always its committed metadata, and its state while resident.
pub(super) struct Slot {
    pub id: u64,
    pub live: RwLock<Live>,
    /// When the stream was last read or written (µs since the store opened).
    last_used: AtomicU64,
    /// Whether `live.state` is present; read without the lock when choosing what to evict.
    resident: AtomicBool,
}

/// A stream's committed in-memory state.
pub(super) struct Live {
    /// The stream's metadata row as last committed.
    pub meta: StreamMeta,
    /// The stream's state, when resident: what [`super::reads::load_state`] reads back from the
    /// file at the same revision, byte for byte.
    pub state: Option<StreamState>,
    /// While a reader loads the state from the file: the updates committed meanwhile, which
    /// the loaded state may or may not have seen (see [`Slot::install`]).
    loading: Option<Vec<Update>>,
}

/// One committed change to a stream's state, applied once its commit is durable.
pub(super) enum Update {
    /// A record the writer's shadow placed (a new record, a repeat, or an import): the live
    /// state adopts the same cached record instead of deciding the placement again.
    Adopt(Arc<CachedRecord>, Origin),
    AddNote(Note),
    RemoveNote(u64),
    /// Retention removed the records up to this seq.
    Forget(u64),
    /// The stream's metadata row as the commit wrote it (the last update of each commit).
    Meta(Box<StreamMeta>),
}

impl Update {
    /// Applies the update to `state`, unless `state` already has it: a state loaded from the
    /// file may be newer than the updates committed while it was read.
    fn apply(self, state: &mut StreamState) {
        match self {
            Update::Adopt(cached, origin) => {
                if cached.record().revision > state.revision() {
                    state.adopt(cached, origin);
                }
            }
            Update::AddNote(note) => {
                if note.id >= state.next_note_id() {
                    state.add_note(note.text, note.created_at, note.expires_at);
                }
            }
            // Removing a note that is gone and forgetting what is forgotten change nothing.
            Update::RemoveNote(id) => {
                state.remove_note(id);
            }
            Update::Forget(through) => state.forget_through(through),
            Update::Meta(_) => {}
        }
    }
}

impl Slot {
    /// A cold stream.
    pub(super) fn new(meta: StreamMeta) -> Slot {
        Slot {
            id: meta.id,
            live: RwLock::new(Live {
                meta,
                state: None,
                loading: None,
            }),
            last_used: AtomicU64::new(0),
            resident: AtomicBool::new(false),
        }
    }

    pub(super) fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    pub(super) fn is_resident(&self) -> bool {
        self.resident.load(Ordering::Relaxed)
    }

    /// Applies one commit's updates: to the state when resident, to a load in progress (see
    /// [`Slot::start_loading`]) otherwise; the metadata always.
    pub(super) fn apply(&self, updates: Vec<Update>) {
        let mut live = write(&self.live);
        for update in updates {
            if let Update::Meta(meta) = update {
                live.meta = *meta;
            } else if let Some(state) = live.state.as_mut() {
                update.apply(state);
            } else if let Some(pending) = live.loading.as_mut() {
                pending.push(update);
            }
        }
    }

    /// Whether `self` is resident; if not and no other reader is loading it, the caller is to
    /// load it and hand the state to [`Slot::install`] (or [`Slot::abandon_loading`]): updates
    /// committed meanwhile are kept for it.
    pub(super) fn start_loading(&self) -> Loading {
        let mut live = write(&self.live);
        if live.state.is_some() {
            Loading::Resident
        } else if live.loading.is_some() {
            Loading::Busy
        } else {
            live.loading = Some(Vec::new());
            Loading::Started
        }
    }

    /// Makes a state the caller loaded (after [`Slot::start_loading`]) resident, with the
    /// updates committed while it was read that it has not seen.
    pub(super) fn install(&self, mut state: StreamState) {
        let mut live = write(&self.live);
        for update in live.loading.take().unwrap_or_default() {
            update.apply(&mut state);
        }
        if live.state.is_none() {
            live.state = Some(state);
            self.resident.store(true, Ordering::Relaxed);
        }
    }

    /// Gives up a load started with [`Slot::start_loading`].
    pub(super) fn abandon_loading(&self) {
        write(&self.live).loading = None;
    }

    /// Takes the resident state out (the caller drops it outside the lock).
    pub(super) fn evict(&self) -> Option<StreamState> {
        let state = write(&self.live).state.take()?;
        self.resident.store(false, Ordering::Relaxed);
        Some(state)
    }

    /// The stream's current revision.
    pub(super) fn revision(&self) -> u64 {
        read(&self.live).meta.revision
    }
}
