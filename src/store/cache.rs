//! What readers and the writer share in memory, within one byte budget.
//!
//! Every stream has a [`Slot`] from the moment the store opens: its metadata row (totals,
//! revision, settings and restore hints), a few bytes. Its [`StreamState`] (the tail, severe
//! records, goals and notes, with their rendered lines and token counts) is *resident* only
//! while it is used: a read of a cold stream loads it from the file
//! ([`super::reads::load_state`]), and whenever the [`Meter`] shows more than the budget, the
//! writer evicts the streams used least recently ([`super::writer`]).

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::context::Totals;
use crate::meter::Meter;
use crate::stream::StreamState;

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
    pub cold_load_seconds: crate::histogram::Histogram<{ COLD_LOAD_BUCKETS.len() }>,
}

/// Upper bounds (seconds) of the cold-load latency buckets.
pub const COLD_LOAD_BUCKETS: [f64; 10] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

impl Cache {
    pub fn new(budget: usize) -> Cache {
        Cache {
            meter: Meter::default(),
            budget,
            opened: Instant::now(),
            eviction_asked: AtomicBool::new(false),
            evictions: AtomicU64::new(0),
            cold_loads: AtomicU64::new(0),
            cold_load_seconds: crate::histogram::Histogram::new(COLD_LOAD_BUCKETS),
        }
    }

    /// Whether the cache holds more than its budget.
    pub fn is_over(&self) -> bool {
        self.meter.bytes() > self.budget
    }

    /// Where eviction stops: an eighth below the budget, so that rounds are not back to back.
    pub fn low_water(&self) -> usize {
        self.budget - self.budget / 8
    }

    /// Marks `slot` used now.
    pub fn touch(&self, slot: &Slot) {
        let now = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX);
        slot.last_used.store(now, Ordering::Relaxed);
    }

    /// Counts a cold load that took `took`.
    pub fn count_cold_load(&self, took: Duration) {
        self.cold_loads.fetch_add(1, Ordering::Relaxed);
        self.cold_load_seconds.observe(took);
    }
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
    /// The stream's metadata as last committed. While the state is resident its restore hints
    /// may be stale; on eviction they are set from the state, exactly.
    pub meta: StreamMeta,
    /// The stream's state, when resident.
    pub state: Option<StreamState>,
    /// Whether `meta`'s hints changed since its row was last written.
    pub hints_unsaved: bool,
}

impl Slot {
    /// A cold stream.
    pub fn new(meta: StreamMeta) -> Slot {
        Slot {
            id: meta.id,
            live: RwLock::new(Live {
                meta,
                state: None,
                hints_unsaved: false,
            }),
            last_used: AtomicU64::new(0),
            resident: AtomicBool::new(false),
        }
    }

    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    pub fn is_resident(&self) -> bool {
        self.resident.load(Ordering::Relaxed)
    }

    /// Makes a state loaded from the file resident, unless the stream changed since it was read
    /// (or another reader was first): `state` is handed back then, to be dropped outside the
    /// lock.
    pub fn install(&self, state: StreamState, loaded: &StreamMeta) -> Option<StreamState> {
        let mut live = write(&self.live);
        let current = live.state.is_none()
            && live.meta.revision == loaded.revision
            && live.meta.first_seq == loaded.first_seq
            && state.revision() == loaded.revision;
        if !current {
            return Some(state);
        }
        live.state = Some(state);
        self.resident.store(true, Ordering::Relaxed);
        None
    }

    /// Takes the resident state out (the caller drops it outside the lock), keeping exact
    /// restore hints for the next load.
    pub fn evict(&self) -> Option<StreamState> {
        let mut live = write(&self.live);
        let state = live.state.take()?;
        self.resident.store(false, Ordering::Relaxed);
        let mut meta = live.meta.clone();
        state.restore_hints(&mut meta);
        live.meta = meta;
        live.hints_unsaved = true;
        Some(state)
    }

    /// The stream's current revision.
    pub fn revision(&self) -> u64 {
        read(&self.live).revision()
    }
}

impl Live {
    /// The revision readers see: the state's while resident (it moves first within a commit).
    pub fn revision(&self) -> u64 {
        self.state
            .as_ref()
            .map_or(self.meta.revision, StreamState::revision)
    }

    /// Totals over everything the stream accepted.
    pub fn totals(&self) -> &Totals {
        self.state
            .as_ref()
            .map_or(&self.meta.totals, StreamState::totals)
    }

    /// Where a restore should start, from the resident state or, for a cold stream, from the
    /// hints kept when it was evicted.
    pub fn restore_hints(&self, meta: &mut StreamMeta) {
        match &self.state {
            Some(state) => state.restore_hints(meta),
            None => {
                meta.tail_start = self.meta.tail_start;
                meta.severe_start = self.meta.severe_start;
                meta.older_last_ts = self.meta.older_last_ts;
            }
        }
    }
}

impl StreamState {
    /// Sets a metadata row's restore hints from this state. A row is encoded before its own
    /// batch is applied, so the hints may be several commits old; they stay right because they
    /// only ever point at or before the live tail: an empty tail points at the next seq, so
    /// whatever is added after the hints were taken is restored too.
    pub(super) fn restore_hints(&self, meta: &mut StreamMeta) {
        meta.tail_start = self.tail_start_seq().or(Some(self.next_seq()));
        meta.severe_start = self.severe_start_seq();
        meta.older_last_ts = self.older_last_ts();
        meta.goal_seqs = self.goal_seqs();
    }
}
