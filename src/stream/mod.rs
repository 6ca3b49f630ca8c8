//! One stream's live state in memory: collapse state, the newest records with their cached
//! token counts, the severe records that must stay in reach, totals, notes and the revision.
//!
//! The store keeps one per stream in use as its tail cache (loaded from the file when first
//! read, evicted beyond the cache budget), and the offline replay of `recap bench budgets`
//! drives one directly: both go through the same [`StreamState::append`], so what a benchmark
//! measures is what the server does.

pub mod bytes;

use std::sync::Arc;

use crate::collapse::{self, CollapsePolicy, Collapser, Placement};
use crate::context::cache::without_payload;
use crate::context::candidates::is_goal;
use crate::context::{CachedNote, CachedRecord, MAX_GOALS, PayloadPolicy, StreamView, Totals};
use crate::event::{Event, MAX_EVENT_COUNT, Note, Record, Severity, Timestamp};
use crate::meter::{self, Meter};
use crate::payload::Payload;

pub use bytes::{BlockTimes, TailBytes};

/// Default number of newest records kept in memory per stream: a 32,000-token window rarely
/// shows more than a few hundred, and [`crate::context`] never looks further back than
/// `budget / 4` records.
pub const DEFAULT_TAIL_RECORDS: usize = 4_096;
/// Default number of severe (error and above) records kept in reach beyond the tail.
pub const DEFAULT_SEVERE_RECORDS: usize = 256;
/// Default size of the tail's byte blocks ([`bytes`]): a tail holds at most two, about 16 MiB
/// of text, however long its messages are (4,096 records of 500 bytes are 2 MiB: ordinary
/// streams never reach it).
pub const DEFAULT_TAIL_BLOCK_BYTES: u64 = 8 * 1024 * 1024;

/// How much of a stream is kept in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailCapacity {
    /// Newest records kept (at least the collapse lookback, so repeats always find their record).
    pub records: usize,
    /// Severe records kept.
    pub severe: usize,
    /// Size of the byte blocks that bound the tail in bytes too ([`bytes`]); `u64::MAX` for no
    /// such bound.
    pub block_bytes: u64,
}

impl TailCapacity {
    /// The capacity a stream under `policy` really keeps: at least the collapse lookback, so a
    /// repeat always finds its record in memory.
    pub fn for_policy(self, policy: &CollapsePolicy) -> TailCapacity {
        TailCapacity {
            records: self.records.max(policy.lookback),
            ..self
        }
    }

    /// What the store's writer keeps of a stream to place events: the records collapse can
    /// reach, nothing else.
    pub fn shadow(lookback: usize) -> TailCapacity {
        TailCapacity {
            records: lookback,
            severe: 0,
            block_bytes: u64::MAX,
        }
    }

    /// The most a record counts toward a byte block: a block then always holds more records
    /// than the collapse lookback, so the bound in bytes never takes a repeat's target away.
    pub fn record_cap(self, lookback: usize) -> u64 {
        self.block_bytes / (lookback as u64 + 2)
    }

    /// The first seq a tail ending at `last_seq` holds under both bounds: the count's
    /// ([`Self::tail_start`]) and the bytes' ([`TailBytes::start`]).
    pub fn start(self, last_seq: u64, bytes: &TailBytes) -> u64 {
        let by_count = self.tail_start(last_seq);
        if self.block_bytes == u64::MAX {
            by_count
        } else {
            by_count.max(bytes.start())
        }
    }

    /// The first seq a tail ending at `last_seq` holds: between `records` and `2 × records - 1`
    /// of the newest records. The start moves `records` seqs at a time, at fixed seqs, so that
    /// every state of a stream at the same seq holds the same records, however it got there
    /// (appended one by one, restored after a restart, or loaded again after an eviction).
    pub fn tail_start(self, last_seq: u64) -> u64 {
        let records = self.records.max(1) as u64;
        if last_seq < 2 * records {
            1
        } else {
            (last_seq / records - 1) * records + 1
        }
    }

    /// How many of the newest severe records a stream that has created `created` of them keeps:
    /// between `severe` and `2 × severe - 1`, moving at fixed counts like the tail.
    pub fn severe_kept(self, created: u64) -> u64 {
        let severe = self.severe as u64;
        match severe {
            0 => 0,
            _ if created < 2 * severe => created,
            _ => severe + created % severe,
        }
    }
}

impl Default for TailCapacity {
    fn default() -> Self {
        TailCapacity {
            records: DEFAULT_TAIL_RECORDS,
            severe: DEFAULT_SEVERE_RECORDS,
            block_bytes: DEFAULT_TAIL_BLOCK_BYTES,
        }
    }
}

/// What the store keeps of a stream, from which [`StreamState::restore`] rebuilds it.
#[derive(Debug)]
pub struct Snapshot {
    /// The records from [`TailCapacity::start`] on, oldest first.
    pub tail: Vec<Arc<CachedRecord>>,
    /// The severe records kept that are older than the tail, oldest first.
    pub older_severe: Vec<Arc<CachedRecord>>,
    /// The first goal records kept in reach, oldest first (those in the tail are the tail's).
    pub goals: Vec<Arc<CachedRecord>>,
    /// The latest goal record, once the first ones are all taken.
    pub latest_goal: Option<Arc<CachedRecord>>,
    /// The latest `last_ts` among the records before the tail.
    pub older_last_ts: Option<Timestamp>,
    /// Totals over everything the stream accepted.
    pub totals: Totals,
    /// The live notes, oldest first.
    pub notes: Vec<Note>,
    /// The stream revision.
    pub revision: u64,
    /// The id the next note gets.
    pub next_note_id: u64,
    /// Severe records ever created.
    pub severe_created: u64,
    /// Where the byte bound has the tail start.
    pub bytes: TailBytes,
}

/// The result of appending one event.
#[derive(Clone, Debug, PartialEq)]
pub struct Appended {
    /// The record the event landed in, as it is now: shared with the change the store logs
    /// for it (a writer hands the same record to the client's reply and to the change feed).
    pub record: Arc<Record>,
    /// Whether the event collapsed into an existing record.
    pub collapsed: bool,
}

/// What made a record another state hands to [`StreamState::adopt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An event at `ts`: a new record, or a repeat of an existing one when `collapsed`.
    Event {
        /// When the event happened.
        ts: Timestamp,
        /// Whether it collapsed into an existing record.
        collapsed: bool,
    },
    /// A whole record of an export, with its own times and repeat count.
    Import,
    /// A new version of a record that a detector keeps up to date (an anomaly's episode, see
    /// [`StreamState::revise`]), written at `ts`; `escalated` when it just became severe.
    Revised {
        /// When the event that updated it happened.
        ts: Timestamp,
        /// Whether its severity rose to `error` with this version.
        escalated: bool,
    },
}

/// One stream, in memory.
#[derive(Debug)]
pub struct StreamState {
    collapser: Collapser,
    /// False once records were adopted without a collapse decision here ([`Self::adopt`]); the
    /// collapser is then rebuilt from the records when it is needed again ([`Self::fork`]).
    collapser_current: bool,
    capacity: TailCapacity,
    /// Newest records, oldest first; trimmed to `capacity.records` in amortized batches.
    records: Vec<Arc<CachedRecord>>,
    severe: Vec<Arc<CachedRecord>>,
    /// The first goal records (what the agent was asked), at most [`MAX_GOALS`], kept in reach
    /// however old they are, and the latest one.
    goals: Vec<Arc<CachedRecord>>,
    latest_goal: Option<Arc<CachedRecord>>,
    /// The record holding the latest event: the last one created or repeated.
    latest: Option<Arc<CachedRecord>>,
    older_last_ts: Option<Timestamp>,
    /// Where the byte bound has the tail start.
    bytes: TailBytes,
    totals: Totals,
    notes: Vec<Arc<CachedNote>>,
    revision: u64,
    next_note_id: u64,
    /// Severe records ever created: what the severe list keeps follows from it.
    severe_created: u64,
    /// Counts what the cached records and notes hold, and this state's own vectors.
    meter: Meter,
    /// Bytes of this state's own vectors charged to `meter`.
    charged: usize,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        self.meter.release(self.charged);
    }
}

impl StreamState {
    /// An empty stream, counting what it holds on a meter of its own.
    pub fn new(policy: CollapsePolicy, capacity: TailCapacity) -> StreamState {
        StreamState::metered(policy, capacity, &Meter::detached())
    }

    /// An empty stream whose records, notes and vectors are counted on `meter`.
    pub fn metered(policy: CollapsePolicy, capacity: TailCapacity, meter: &Meter) -> StreamState {
        let mut state = StreamState {
            collapser: Collapser::new(policy),
            collapser_current: true,
            capacity: capacity.for_policy(&policy),
            records: Vec::new(),
            severe: Vec::new(),
            goals: Vec::new(),
            latest_goal: None,
            latest: None,
            older_last_ts: None,
            bytes: TailBytes::default(),
            totals: Totals::default(),
            notes: Vec::new(),
            revision: 0,
            next_note_id: 1,
            severe_created: 0,
            meter: meter.clone(),
            charged: 0,
        };
        state.recount();
        state
    }

    /// The meter this state counts on.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Charges (or gives back) the change in what this state's own vectors hold.
    fn recount(&mut self) {
        let slot = std::mem::size_of::<Arc<CachedRecord>>();
        let held = std::mem::size_of::<StreamState>()
            + meter::heap(self.collapser.held_bytes())
            + meter::heap(slot * self.records.capacity())
            + meter::heap(slot * self.severe.capacity())
            + meter::heap(slot * self.goals.capacity())
            + meter::heap(slot * self.notes.capacity());
        if held > self.charged {
            self.meter.charge(held - self.charged);
        } else {
            self.meter.release(self.charged - held);
        }
        self.charged = held;
    }

    /// Rebuilds a stream from what the store kept of it (see [`Snapshot`]), charging its
    /// records and notes to `meter`. The result is the state the stream had.
    pub fn restore(
        policy: CollapsePolicy,
        capacity: TailCapacity,
        meter: &Meter,
        snapshot: Snapshot,
    ) -> StreamState {
        let Snapshot {
            tail,
            older_severe,
            goals,
            latest_goal,
            older_last_ts,
            totals,
            notes,
            revision,
            next_note_id,
            severe_created,
            bytes,
        } = snapshot;
        let records = tail;
        let mut all_severe = older_severe;
        all_severe.extend(records.iter().filter(|r| is_severe(r.record())).cloned());
        let mut state = StreamState::metered(policy, capacity, meter);
        state.goals = goals;
        state.latest_goal = latest_goal;
        // Readers never place events: the collapser is built from the records if ever needed.
        state.collapser_current = false;
        state.latest = records
            .iter()
            .filter(|cached| holds_agent_events(cached.record()))
            .max_by_key(|cached| cached.record().revision)
            .cloned();
        state.records = records;
        state.severe = all_severe;
        state.older_last_ts = older_last_ts;
        state.totals = totals;
        state.notes = notes
            .into_iter()
            .map(|n| Arc::new(CachedNote::new(n, meter)))
            .collect();
        state.revision = revision;
        state.next_note_id = next_note_id;
        state.severe_created = severe_created;
        state.bytes = bytes;
        state.trim();
        state.recount();
        state
    }

    /// Appends an event that happened at `ts`: a new record or a repeat of a recent one.
    pub fn append(&mut self, event: Event, ts: Timestamp) -> Appended {
        self.append_shared(event, ts).0
    }

    /// [`Self::append`], also returning the cached record, which another state of the same
    /// stream can [`Self::adopt`] instead of deciding the same placement again.
    pub fn append_shared(&mut self, event: Event, ts: Timestamp) -> (Appended, Arc<CachedRecord>) {
        self.revision += 1;
        self.ensure_collapser();
        let payload = event.payload.clone();
        let placement = if collapse::is_collapse_target(
            event.kind.as_str(),
            event.actor.as_deref(),
            payload.as_ref().map_or(0, Payload::len),
        ) {
            self.collapser.place(&event, ts)
        } else {
            Placement::New {
                seq: self.collapser.place_apart(ts),
            }
        };
        self.totals
            .count(&event.kind, event.severity, ts, !placement.collapsed());
        match placement {
            Placement::New { seq } => {
                let record = Record::from_event(event, seq, self.revision, ts);
                self.push_record(record, payload)
            }
            Placement::Repeat { seq } => {
                let position = self
                    .tail_position(seq)
                    .expect("the collapse lookback stays inside the tail");
                if self.records[position].record().repeat_count >= MAX_EVENT_COUNT {
                    // A full record takes no more repeats: the event starts the next one.
                    self.collapser.forget(seq);
                    let seq = self.collapser.place_new(&event, ts);
                    self.totals.records += 1;
                    let record = Record::from_event(event, seq, self.revision, ts);
                    return self.push_record(record, payload);
                }
                let mut record = self.records[position].full_record();
                record.absorb(event, self.revision, ts);
                let cached = Arc::new(CachedRecord::new(&record, &self.meter));
                self.replace_record(position, cached.clone());
                let appended = Appended {
                    record: Arc::new(record),
                    collapsed: true,
                };
                (appended, cached)
            }
        }
    }

    /// Appends a record brought in whole (an import of an export): a new record with its own
    /// times and repeat count, never collapsed into an existing one.
    pub fn import(
        &mut self,
        event: Event,
        first_ts: Timestamp,
        last_ts: Timestamp,
        repeat_count: u64,
    ) -> Appended {
        self.import_shared(event, first_ts, last_ts, repeat_count).0
    }

    /// [`Self::import`], also returning the cached record for [`Self::adopt`].
    pub fn import_shared(
        &mut self,
        event: Event,
        first_ts: Timestamp,
        last_ts: Timestamp,
        repeat_count: u64,
    ) -> (Appended, Arc<CachedRecord>) {
        let repeat_count = repeat_count.max(1);
        self.revision += 1;
        self.ensure_collapser();
        let payload = event.payload.clone();
        let seq = if collapse::is_collapse_target(
            event.kind.as_str(),
            event.actor.as_deref(),
            payload.as_ref().map_or(0, Payload::len),
        ) {
            self.collapser.place_new(&event, last_ts)
        } else {
            self.collapser.place_apart(last_ts)
        };
        self.totals
            .count_run(&event.kind, event.severity, first_ts, last_ts, repeat_count);
        let mut record = Record::from_event(event, seq, self.revision, first_ts);
        record.last_ts = last_ts;
        record.repeat_count = repeat_count;
        self.push_record(record, payload)
    }

    /// Takes a record placed by another state of this stream (the store's writer decides
    /// placements on a private copy and hands the durable results to the state readers see):
    /// the tail, the severe list, the totals and the revision follow as if the event or import
    /// that made it had happened here.
    pub fn adopt(&mut self, cached: Arc<CachedRecord>, origin: Origin) {
        let record = cached.record();
        self.revision = record.revision;
        self.collapser_current = false;
        match origin {
            Origin::Event { ts, collapsed } => {
                self.totals
                    .count(&record.kind, record.severity, ts, !collapsed);
                if collapsed {
                    let seq = record.seq;
                    if let Some(position) = self.tail_position(seq) {
                        self.replace_record(position, cached);
                    }
                    return;
                }
            }
            Origin::Import => self.totals.count_run(
                &record.kind,
                record.severity,
                record.first_ts,
                record.last_ts,
                record.repeat_count,
            ),
            Origin::Revised { ts, escalated } => {
                self.totals.count(&record.kind, record.severity, ts, false);
                self.put_revised(cached, escalated);
                return;
            }
        }
        self.push_cached(cached);
    }

    /// Takes a new version of an existing record that a detector decided (an anomaly's episode
    /// growing, see [`crate::anomaly`]): the record's next repeat, counted as one event of its
    /// kind and severity at `ts`, with the message, payload and severity the detector gives.
    /// `escalated` when its severity rose to `error` with this version: it joins the severe
    /// records. The record need not be in the tail any more.
    pub fn revise(
        &mut self,
        mut record: Record,
        ts: Timestamp,
        escalated: bool,
    ) -> (Appended, Arc<CachedRecord>) {
        self.revision += 1;
        record.revision = self.revision;
        self.totals.count(&record.kind, record.severity, ts, false);
        let cached = Arc::new(CachedRecord::new(&record, &self.meter));
        self.put_revised(cached.clone(), escalated);
        let appended = Appended {
            record: Arc::new(record),
            collapsed: true,
        };
        (appended, cached)
    }

    fn put_revised(&mut self, cached: Arc<CachedRecord>, escalated: bool) {
        let seq = cached.record().seq;
        if escalated {
            // Severe records stay in seq order, as a restore reads them from the severe index.
            // (An episode older than every severe record kept is an edge this ignores: its
            // record is trimmed at once, where a restore might keep it instead of an older one.)
            self.severe_created += 1;
            // Its earlier events move with it from `warning` to `error`: every count by
            // severity is a sum of records at their current severity, as the Earlier line
            // subtracts them.
            let before = cached.record().repeat_count.saturating_sub(1);
            let severities = &mut self.totals.severities;
            let warning = Severity::Warning.index();
            severities[warning] = severities[warning].saturating_sub(before);
            severities[cached.record().severity.index()] += before;
            let at = self.severe.partition_point(|r| r.record().seq < seq);
            self.severe.insert(at, cached.clone());
        } else if let Some(at) = position_by_seq(&self.severe, seq) {
            self.severe[at] = cached.clone();
        }
        if let Some(position) = self.tail_position(seq) {
            self.replace_record(position, cached);
        } else if self.tail_start_seq().is_none_or(|start| seq < start) {
            // Before the tail: its time joins the older records' latest, as the store's
            // metadata has it for a restore.
            let last_ts = cached.record().last_ts;
            self.older_last_ts = Some(self.older_last_ts.map_or(last_ts, |t| t.max(last_ts)));
        }
        self.trim();
        self.recount();
    }

    /// A repeat of record `seq` at `last_ts` that this state takes without the record (a
    /// catch-up that finds it removed by retention since): when the record is before the tail,
    /// its time joins `older_last_ts`, as [`Self::revise`] had it on the state that placed it
    /// and as the store's metadata has it for a restore; in the tail, the record is there.
    pub fn repeated_before_tail(&mut self, seq: u64, last_ts: Timestamp) {
        if self.tail_start_seq().is_none_or(|start| seq < start) {
            self.older_last_ts = Some(self.older_last_ts.map_or(last_ts, |t| t.max(last_ts)));
        }
    }

    /// Adds a new record to the tail (and the severe list); `payload` is its payload as text.
    fn push_record(
        &mut self,
        record: Record,
        payload: Option<Payload>,
    ) -> (Appended, Arc<CachedRecord>) {
        let cached = Arc::new(CachedRecord::with_payload(
            without_payload(&record),
            payload,
            PayloadPolicy::Keep,
            &self.meter,
        ));
        self.push_cached(cached.clone());
        let appended = Appended {
            record: Arc::new(record),
            collapsed: false,
        };
        (appended, cached)
    }

    fn push_cached(&mut self, cached: Arc<CachedRecord>) {
        let cap = self.capacity.record_cap(self.collapser.policy().lookback);
        let size = TailBytes::size(cached.record(), cap);
        self.bytes
            .push(cached.record().seq, size, self.capacity.block_bytes);
        if is_severe(cached.record()) {
            self.severe_created += 1;
            self.severe.push(cached.clone());
        }
        self.note_goal(&cached);
        if holds_agent_events(cached.record()) {
            self.latest = Some(cached.clone());
        }
        self.records.push(cached);
        self.trim();
        self.recount();
    }

    /// Keeps a new record in reach if it is one of the first goal records, or the latest.
    fn note_goal(&mut self, cached: &Arc<CachedRecord>) {
        if !is_goal(cached.record()) {
            return;
        }
        if self.goals.len() < MAX_GOALS {
            self.goals.push(cached.clone());
            self.latest_goal = None;
        } else {
            self.latest_goal = Some(cached.clone());
        }
    }

    /// Puts a record's new version in place of the old one in the tail (and the severe and goal
    /// lists).
    fn replace_record(&mut self, position: usize, cached: Arc<CachedRecord>) {
        let seq = cached.record().seq;
        if let Some(at) = position_by_seq(&self.severe, seq) {
            self.severe[at] = cached.clone();
        }
        if holds_agent_events(cached.record()) {
            self.latest = Some(cached.clone());
        }
        for goal in self.goals.iter_mut().chain(&mut self.latest_goal) {
            if goal.record().seq == seq {
                *goal = cached.clone();
            }
        }
        self.records[position] = cached;
    }

    /// Forgets every record with seq up to `seq` (retention removed them from the file): they
    /// leave the tail and the severe list, nothing collapses into them any more, and they stay
    /// counted in the totals and in `older_last_ts`.
    pub fn forget_through(&mut self, seq: u64) {
        self.collapser.forget_through(seq);
        let gone = self.records.partition_point(|r| r.record().seq <= seq);
        for dropped in self.records.drain(..gone) {
            let last_ts = dropped.record().last_ts;
            self.older_last_ts = Some(self.older_last_ts.map_or(last_ts, |t| t.max(last_ts)));
        }
        let gone = self.severe.partition_point(|r| r.record().seq <= seq);
        self.severe.drain(..gone);
        self.goals.retain(|r| r.record().seq > seq);
        self.latest_goal = self.latest_goal.take().filter(|r| r.record().seq > seq);
        if self.latest.as_ref().is_some_and(|r| r.record().seq <= seq) {
            // The latest event's record is gone: the latest change among those left stands in,
            // as a restore finds it.
            self.latest = self
                .records
                .iter()
                .filter(|r| holds_agent_events(r.record()))
                .max_by_key(|r| r.record().revision)
                .cloned();
        }
    }

    /// A copy holding only the newest records `capacity` allows, sharing them with `self`: the
    /// store's writer decides placements on such a copy before a commit, so that the state
    /// readers see changes only once the commit is durable.
    pub fn fork(&self, capacity: TailCapacity) -> StreamState {
        let policy = self.collapser.policy();
        let mut fork = StreamState::metered(policy, capacity, &self.meter);
        fork.collapser = if self.collapser_current {
            self.collapser.clone()
        } else {
            self.rebuilt_collapser()
        };
        let start = fork.capacity.tail_start(self.totals.records);
        let skip = self.records.partition_point(|r| r.record().seq < start);
        fork.older_last_ts = self.records[..skip]
            .iter()
            .map(|r| r.record().last_ts)
            .chain(self.older_last_ts)
            .max();
        fork.records = self.records[skip..].to_vec();
        let keep = usize::try_from(fork.capacity.severe_kept(self.severe_created))
            .unwrap_or(usize::MAX)
            .min(self.severe.len());
        fork.severe = self.severe[self.severe.len() - keep..].to_vec();
        fork.severe_created = self.severe_created;
        fork.bytes = self.bytes;
        fork.goals = self.goals.clone();
        fork.latest_goal = self.latest_goal.clone();
        fork.latest = self.latest.clone();
        fork.totals = self.totals.clone();
        fork.notes = self.notes.clone();
        fork.revision = self.revision;
        fork.next_note_id = self.next_note_id;
        fork.recount();
        fork
    }

    /// The collapse state as placing events here would have left it, from the newest records.
    fn rebuilt_collapser(&self) -> Collapser {
        let policy = self.collapser.policy();
        let newest = &self.records[self.records.len().saturating_sub(policy.lookback)..];
        let newest = newest.iter().map(|r| (r.record(), r.is_collapsible()));
        Collapser::resume(policy, self.next_seq(), newest)
    }

    /// Rebuilds the collapser before placing an event if records were adopted or restored.
    fn ensure_collapser(&mut self) {
        if !self.collapser_current {
            self.collapser = self.rebuilt_collapser();
            self.collapser_current = true;
            self.recount();
        }
    }

    /// How events collapse here.
    pub fn policy(&self) -> CollapsePolicy {
        self.collapser.policy()
    }

    /// The latest `last_ts` among records older than the tail (kept when the tail is trimmed).
    pub fn older_last_ts(&self) -> Option<Timestamp> {
        self.older_last_ts
    }

    /// The seq of the oldest record in the tail, if any.
    pub fn tail_start_seq(&self) -> Option<u64> {
        self.records.first().map(|r| r.record().seq)
    }

    /// The seq of the oldest record in the severe list, if any.
    pub fn severe_start_seq(&self) -> Option<u64> {
        self.severe.first().map(|r| r.record().seq)
    }

    /// The seqs of the first goal records kept in reach, oldest first.
    pub fn first_goal_seqs(&self) -> Vec<u64> {
        self.goals.iter().map(|r| r.record().seq).collect()
    }

    /// The seq of the latest goal record, once the first ones are all taken.
    pub fn latest_goal_seq(&self) -> Option<u64> {
        self.latest_goal.as_ref().map(|r| r.record().seq)
    }

    /// The seq the next new record will get.
    pub fn next_seq(&self) -> u64 {
        // Seqs are dense from 1 and every record ever created is counted.
        self.totals.records + 1
    }

    /// The severe records in memory, oldest first (they may overlap [`Self::records`]).
    pub fn severe_records(&self) -> impl Iterator<Item = &Record> {
        self.severe.iter().map(|r| r.record())
    }

    /// Adds a note created at `created_at`, returning it with its id.
    pub fn add_note(
        &mut self,
        text: String,
        created_at: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> Note {
        self.revision += 1;
        let note = Note {
            id: self.next_note_id,
            text,
            created_at,
            expires_at,
        };
        self.next_note_id += 1;
        self.notes
            .push(Arc::new(CachedNote::new(note.clone(), &self.meter)));
        self.recount();
        note
    }

    /// Removes a note; `false` if there is no note with that id.
    pub fn remove_note(&mut self, id: u64) -> bool {
        let before = self.notes.len();
        self.notes.retain(|n| n.note().id != id);
        let removed = self.notes.len() != before;
        if removed {
            self.revision += 1;
        }
        removed
    }

    /// Removes notes that expired before `now`, returning their ids.
    pub fn expire_notes(&mut self, now: Timestamp) -> Vec<u64> {
        let expired: Vec<u64> = self
            .notes
            .iter()
            .filter(|n| !n.note().is_live(now))
            .map(|n| n.note().id)
            .collect();
        if !expired.is_empty() {
            self.notes.retain(|n| n.note().is_live(now));
        }
        expired
    }

    /// A view for [`crate::context::build`].
    pub fn view(&self) -> StreamView<'_> {
        StreamView {
            notes: &self.notes,
            records: &self.records,
            severe: &self.severe,
            goals: &self.goals,
            latest_goal: self.latest_goal.as_ref().or(self.goals.last()),
            latest: self.latest.as_ref(),
            totals: &self.totals,
            older_last_ts: self.older_last_ts,
        }
    }

    /// The stream's revision: the number of changes it has taken.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Totals over everything the stream accepted.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The records in memory, oldest first.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = &Record> + ExactSizeIterator {
        self.records.iter().map(|r| r.record())
    }

    /// The notes, oldest first.
    pub fn notes(&self) -> impl Iterator<Item = &Note> {
        self.notes.iter().map(|n| n.note())
    }

    /// The ids of up to `limit` notes expired at `now`, oldest first: what maintenance removes.
    pub fn expired_note_ids(&self, now: Timestamp, limit: usize) -> Vec<u64> {
        self.notes()
            .filter(|note| !note.is_live(now))
            .map(|note| note.id)
            .take(limit)
            .collect()
    }

    /// The id the next note will get.
    pub fn next_note_id(&self) -> u64 {
        self.next_note_id
    }

    /// Drops the records before [`TailCapacity::start`] and the severe records beyond
    /// [`TailCapacity::severe_kept`]: a block at a time, so that appends stay amortized O(1).
    fn trim(&mut self) {
        let start = self.capacity.start(self.totals.records, &self.bytes);
        if self.records.first().is_some_and(|r| r.record().seq < start) {
            let gone = self.records.partition_point(|r| r.record().seq < start);
            for dropped in self.records.drain(..gone) {
                let last_ts = dropped.record().last_ts;
                self.older_last_ts = Some(self.older_last_ts.map_or(last_ts, |t| t.max(last_ts)));
            }
        }
        let keep =
            usize::try_from(self.capacity.severe_kept(self.severe_created)).unwrap_or(usize::MAX);
        if self.severe.len() > keep {
            let excess = self.severe.len() - keep;
            self.severe.drain(..excess);
        }
    }

    /// The record `seq`, if it is in the tail.
    pub fn tail_record(&self, seq: u64) -> Option<&Arc<CachedRecord>> {
        self.tail_position(seq)
            .map(|position| &self.records[position])
    }

    /// Whether the record `seq` is among the severe records the state keeps: a state taking
    /// another's revision of an anomaly record (see [`Origin::Revised`]) tells from it whether
    /// the record just became severe.
    pub fn holds_severe(&self, seq: u64) -> bool {
        position_by_seq(&self.severe, seq).is_some()
    }

    /// Where the record `seq` is in the tail, if it is there.
    fn tail_position(&self, seq: u64) -> Option<usize> {
        position_by_seq(&self.records, seq)
    }

    /// Severe records ever created.
    pub fn severe_created(&self) -> u64 {
        self.severe_created
    }

    /// Takes the revision and totals a stream reached through changes adopted from elsewhere
    /// (another node's writes, read back from a shared database): the totals are the
    /// database's, not recounted from what was adopted.
    pub fn caught_up(&mut self, revision: u64, totals: Totals) {
        self.revision = revision;
        self.totals = totals;
    }
}

/// Where the record `seq` is in `records` (in seq order, as the tail and the severe list are):
/// a binary search, since an anomaly's record revised on a long episode is far from the end.
fn position_by_seq(records: &[Arc<CachedRecord>], seq: u64) -> Option<usize> {
    // Seqs increase by at least one per position, so `seq` can only be within its distance
    // from the first; and where no record in between is missing (a tail, mostly) it is right
    // there, found with two reads instead of a search that touches a record per step.
    let first = records.first()?.record().seq;
    let distance = usize::try_from(seq.checked_sub(first)?).unwrap_or(usize::MAX);
    if records
        .get(distance)
        .is_some_and(|record| record.record().seq == seq)
    {
        return Some(distance);
    }
    let candidates = &records[..records.len().min(distance)];
    candidates
        .binary_search_by_key(&seq, |r| r.record().seq)
        .ok()
}

/// Whether a record holds events of the stream's agent, rather than being an anomaly recap
/// raised about them ([`crate::anomaly`]): only those can be the record holding the latest
/// event, which the window shows whole, so that an anomaly never pushes the agent's latest
/// observation out of that place.
fn holds_agent_events(record: &Record) -> bool {
    !(record.kind.as_str() == collapse::ANOMALY_KIND
        && record.actor.as_deref() == Some(collapse::ANOMALY_ACTOR))
}

fn is_severe(record: &Record) -> bool {
    record.severity >= Severity::Error
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catch-up that finds a revised record removed since takes the revision's time as
    /// [`StreamState::revise`] did on the state that placed it: into `older_last_ts` when the
    /// record is before the tail, not at all when it is in the tail (the record carries it).
    #[test]
    fn a_repeat_of_a_record_gone_from_before_the_tail_counts_for_older_times() {
        let at = crate::event::parse_timestamp("2024-05-01T10:00:00Z").unwrap();
        let later = at + chrono::TimeDelta::minutes(5);
        let policy = CollapsePolicy {
            lookback: 2,
            ..CollapsePolicy::default()
        };
        let capacity = TailCapacity {
            records: 2,
            severe: 1,
            block_bytes: u64::MAX,
        };
        let stream = || {
            let mut state = StreamState::new(policy, capacity);
            let first = state.append(Event::new("plan", Severity::Warning, "first").unwrap(), at);
            for message in ["b", "c", "d", "e", "f"] {
                state.append(Event::new("tool", Severity::Info, message).unwrap(), at);
            }
            (state, Record::clone(&first.record))
        };
        let (mut placed, first) = stream();
        assert_eq!(placed.tail_start_seq(), Some(5));
        let revised = Record {
            last_ts: later,
            repeat_count: 2,
            ..first
        };
        placed.revise(revised, later, false);
        assert_eq!(placed.older_last_ts(), Some(later));

        let (mut caught_up, _) = stream();
        caught_up.repeated_before_tail(6, later);
        assert_eq!(caught_up.older_last_ts(), Some(at), "in the tail");
        caught_up.repeated_before_tail(1, later);
        assert_eq!(caught_up.older_last_ts(), placed.older_last_ts());
    }

    /// An event with a payload over the collapsible size neither collapses nor is collapsed
    /// into, and its payload is not kept in memory; smaller ones collapse as usual.
    #[test]
    fn large_payloads_are_kept_apart_and_not_held() {
        let at = crate::event::parse_timestamp("2024-05-01T10:00:00Z").unwrap();
        let with_payload = |bytes: usize| {
            let mut event = Event::new("tool", Severity::Info, "fetched the page").unwrap();
            let body = "x".repeat(bytes);
            event.payload = Some(Payload::from_json(&format!(r#"{{"body":"{body}"}}"#)).unwrap());
            event
        };
        let mut state = StreamState::new(CollapsePolicy::default(), TailCapacity::default());
        let big = collapse::MAX_COLLAPSIBLE_PAYLOAD_BYTES;
        let first = state.append(with_payload(big), at);
        let second = state.append(with_payload(big), at);
        assert!(!first.collapsed && !second.collapsed);
        assert_eq!(second.record.seq, 2);
        let small = state.append(with_payload(10), at);
        let repeat = state.append(
            Event::new("tool", Severity::Info, "fetched the page").unwrap(),
            at,
        );
        assert!(!small.collapsed);
        assert!(repeat.collapsed, "{repeat:?}");
        assert_eq!(
            repeat.record.payload, small.record.payload,
            "a repeat keeps the payload"
        );
        let held: Vec<bool> = state
            .records
            .iter()
            .map(|r| r.payload().is_some())
            .collect();
        assert_eq!(held, [false, false, true]);
        // A fork (the writer's shadow rebuilt from the records) decides the same.
        let mut fork = state.fork(TailCapacity::default());
        assert!(!fork.append(with_payload(big), at).collapsed);
        assert!(fork.append(with_payload(10), at).collapsed);
    }
    use crate::collapse::CollapseMode;
    use crate::event::parse_timestamp;
    use chrono::TimeDelta;
    use proptest::prelude::*;

    proptest! {
        /// Finding a record by seq looks where a dense run would put it first, and answers as
        /// a search of the whole list does, gaps or not.
        #[test]
        fn position_by_seq_answers_as_a_search(
            gaps in prop::collection::vec(prop_oneof![6 => Just(1u64), 1 => 2u64..5], 0..40),
            start in 1u64..10,
            probe in 0u64..200,
        ) {
            let at = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
            let meter = Meter::default();
            let mut seq = start;
            let records: Vec<Arc<CachedRecord>> = gaps
                .iter()
                .map(|gap| {
                    seq += gap;
                    let event = Event::new("tool", Severity::Info, "x").unwrap();
                    Arc::new(CachedRecord::new(&Record::from_event(event, seq, seq, at), &meter))
                })
                .collect();
            let searched = records.binary_search_by_key(&probe, |r| r.record().seq).ok();
            prop_assert_eq!(position_by_seq(&records, probe), searched);
            for (position, record) in records.iter().enumerate() {
                prop_assert_eq!(position_by_seq(&records, record.record().seq), Some(position));
            }
        }

        /// A state that adopts another's placements ends up the same as the state that decided
        /// them, and a fork of it (collapser rebuilt from its records) decides the same
        /// placements for what comes next.
        #[test]
        fn adopting_matches_appending(
            events in prop::collection::vec((0usize..4, 0usize..3, 0i64..400), 1..150),
            next in prop::collection::vec((0usize..4, 0usize..3), 1..20),
            template in any::<bool>(),
        ) {
            let policy = CollapsePolicy {
                mode: if template { CollapseMode::Template } else { CollapseMode::Exact },
                lookback: 8,
                ..CollapsePolicy::default()
            };
            let capacity = TailCapacity {
                records: 16,
                severe: 4,
                ..TailCapacity::default()
            };
            let event = |message: usize, kind: usize| {
                let kinds = ["tool", "llm", "retry"];
                let severity = if message == 3 { Severity::Error } else { Severity::Info };
                Event::new(kinds[kind], severity, format!("message {message} try {}", message * 7)).unwrap()
            };
            let mut at = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
            let mut decider = StreamState::new(policy, capacity);
            let mut adopter = StreamState::new(policy, capacity);
            for (index, &(message, kind, gap)) in events.iter().enumerate() {
                at += TimeDelta::seconds(gap);
                if index % 7 == 3 {
                    // An imported run of `gap` events that ended at `at`.
                    let first = at - TimeDelta::seconds(gap);
                    let (_, cached) = decider.import_shared(event(message, kind), first, at, gap as u64);
                    adopter.adopt(cached, Origin::Import);
                } else {
                    let (appended, cached) = decider.append_shared(event(message, kind), at);
                    adopter.adopt(cached, Origin::Event { ts: at, collapsed: appended.collapsed });
                }
            }
            let records = |state: &StreamState| state.records().cloned().collect::<Vec<_>>();
            prop_assert_eq!(records(&decider), records(&adopter));
            prop_assert_eq!(decider.totals(), adopter.totals());
            prop_assert_eq!(decider.revision(), adopter.revision());
            prop_assert_eq!(decider.next_seq(), adopter.next_seq());
            let mut forked = adopter.fork(capacity);
            for &(message, kind) in &next {
                at += TimeDelta::seconds(1);
                let decided = decider.append(event(message, kind), at);
                prop_assert_eq!(forked.append(event(message, kind), at), decided);
            }
        }
    }
}
