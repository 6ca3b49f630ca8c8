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
    /// The stream's metadata row as last committed.
    pub meta: StreamMeta,
    /// The stream's state, when resident: what [`super::reads::load_state`] reads back from the
    /// file at the same revision, byte for byte.
    pub state: Option<StreamState>,
}

impl Slot {
    /// A cold stream.
    pub fn new(meta: StreamMeta) -> Slot {
        Slot {
            id: meta.id,
            live: RwLock::new(Live { meta, state: None }),
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

    /// Takes the resident state out (the caller drops it outside the lock).
    pub fn evict(&self) -> Option<StreamState> {
        let state = write(&self.live).state.take()?;
        self.resident.store(false, Ordering::Relaxed);
        Some(state)
    }

    /// The stream's current revision.
    pub fn revision(&self) -> u64 {
        read(&self.live).meta.revision
    }
}
