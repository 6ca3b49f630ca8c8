//! The writer: the thread that decides every change, the committer thread that makes changes
//! durable, and background maintenance (retention, note expiry, changelog trimming, purging
//! deleted streams).
//!
//! # How a write goes
//!
//! 1. The writer blocks for one request, then drains whatever else is queued, up to
//!    [`MAX_EVENTS_PER_COMMIT`] events (one caller's batch is never split).
//! 2. Each request is applied to the writer's *shadow* [`StreamState`] of its stream (which
//!    decides collapse, seq and revision) and encoded into [`Rows`]; the batch goes down the
//!    pipe to the [committer](committer).
//! 3. The committer writes every batch that is ready into one redb transaction and commits it
//!    with immediate durability (one fsync for the whole group). Meanwhile the writer is
//!    already placing the next requests, on the other core.
//! 4. Only then does every operation reach, in the same order, the *live* [`StreamState`] that
//!    readers see (records are adopted exactly as the shadow placed them), the changes are
//!    published and the callers are answered, by the [notifier](live).
//!
//! Why a shadow: readers must never see a change that is not durable, and a failed commit must
//! leave no trace. The shadow is a small fork of the live state (just the collapse lookback), so
//! keeping it costs little; the live state adopts the shadow's records, so both agree. When a
//! commit fails, the writer waits until the pipe is empty, forks every shadow again from its
//! live state, which is exactly the committed state, and every caller of the failed commit and
//! of the batches placed after it gets the error.
//!
//! Operations that read tables while deciding (deleting a stream, maintenance) and the final
//! save on shutdown wait for the pipe to empty and commit on the writer thread itself.

mod committer;
mod live;
mod maintenance;
mod place;
mod request;
mod rows;
mod watch;

use committer::{Committer, Piped, Placed};
use live::{Notice, notify};
use maintenance::{maintain_stream, needs_maintenance, purge_rows};
pub(super) use place::{at_micros, note_event, note_limit};
use place::{remove_note, stream_meta};
pub(super) use request::Request;
use request::{Answer, Reply};
use rows::{Rows, Tables};
pub(super) use watch::watched;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use indexmap::IndexSet;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use crate::anomaly::{AnomalyOverrides, DetectorState};
use crate::event::{Event, Note, Severity, StreamName, Timestamp};
use crate::meter::Meter;
use crate::stream::{Appended, Origin, StreamState, TailCapacity};

use super::cache::{Cache, Slot, Update};
use super::reads;
use super::schema::{self, ChangeEntry, Created, StreamMeta};
use super::tail_book::TailBook;
use super::{
    Change, ChangeBody, ImportedRecord, MAX_EVENTS_PER_COMMIT, Retention, StoreError, StoreOptions,
};

/// How often the writer looks for records past their age limit and notes past their expiry.
pub(super) const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Rows one maintenance step removes at most: retention and purges never make a transaction
/// long enough to hold up writers noticeably.
pub(super) const MAINTENANCE_CHUNK_ROWS: usize = 2_048;
/// While writes keep coming, pending maintenance still takes one step this often (each step
/// empties the pipe and commits on its own).
const BUSY_MAINTENANCE_INTERVAL: Duration = Duration::from_millis(10);
/// The most a maintenance step's row budget grows to, in `MAINTENANCE_CHUNK_ROWS`.
const MAX_MAINTENANCE_SCALE: usize = 8;
/// The longest the writer waits before trying again an eviction round that could not get the
/// cache under its low water.
const FUTILE_EVICTION_PAUSE: Duration = Duration::from_millis(100);
/// Requests that pause this long leave the writer idle: pending maintenance steps then follow
/// one another.
const MAINTENANCE_IDLE_GAP: Duration = Duration::from_millis(2);
/// What readers and the writer share.
pub(super) struct Shared {
    pub path: std::path::PathBuf,
    pub options: StoreOptions,
    /// `None` once the store is closed.
    pub db: RwLock<Option<Arc<Database>>>,
    /// Every committed stream, resident or not.
    pub streams: RwLock<HashMap<StreamName, Arc<Slot>>>,
    pub cache: Cache,
    /// Who follows which stream's changes (see [`super::feed`]).
    pub subscribers: Arc<super::feed::Subscribers>,
    pub counters: Counters,
    /// Why one of the store's threads died, once one has: the store then takes no more writes
    /// (see [`watched`]).
    pub failure: Arc<OnceLock<String>>,
    /// Why the data file cannot be written now (its disk is full, say), from a failed commit
    /// until the file is reopened and a commit succeeds again; health checks report it.
    pub degraded: std::sync::Mutex<Option<String>>,
    /// True while the writer reopens the data file (`db` is `None` then).
    pub reopening: std::sync::atomic::AtomicBool,
    /// Times the data file was reopened after a failed write.
    pub reopens: AtomicU64,
    /// Commits still to fail on purpose (tests of the failure path only).
    #[cfg(test)]
    pub failures_to_inject: AtomicU64,
    /// Set to make the writer thread panic at its next request (tests only).
    #[cfg(test)]
    pub panic_to_inject: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// The data file's database for one operation: `Unavailable` while it is being reopened,
    /// `ShuttingDown` once the store is closed.
    pub(super) fn database(&self) -> Result<Arc<Database>, StoreError> {
        read(&self.db).clone().ok_or_else(|| {
            if self.reopening.load(Ordering::Acquire) {
                StoreError::Unavailable(
                    "the data file is being reopened after a failed write".into(),
                )
            } else {
                StoreError::ShuttingDown
            }
        })
    }

    /// Why writes cannot succeed now, if they cannot.
    pub(super) fn degraded(&self) -> Option<String> {
        super::lock(&self.degraded).clone()
    }

    fn set_degraded(&self, cause: Option<String>) {
        *super::lock(&self.degraded) = cause;
    }

    /// An error when a test has asked for a failed commit; nothing otherwise.
    fn injected_failure(&self) -> Result<(), StoreError> {
        #[cfg(test)]
        if self
            .failures_to_inject
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            // A failing disk is slow too; meanwhile later batches pile up in the pipe on top
            // of this one, which is what the failure path must get right.
            std::thread::sleep(Duration::from_millis(5));
            return Err(StoreError::storage_text("injected commit failure"));
        }
        Ok(())
    }
}

/// What [`super::StoreMetrics`] reports.
#[derive(Default)]
pub(super) struct Counters {
    pub commits: AtomicU64,
    pub failed_commits: AtomicU64,
    pub events: AtomicU64,
    pub requests: AtomicU64,
}

impl Counters {
    /// Counts committed requests and the events they appended.
    fn count_requests(&self, answers: &[Answer]) {
        let events: usize = answers
            .iter()
            .map(|answer| match answer {
                Answer::Appended(_, appended) => appended.len(),
                _ => 0,
            })
            .sum();
        self.requests
            .fetch_add(answers.len() as u64, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
    }
}

/// The writer's view of one stream: the committed state plus everything placed since, committed
/// or not yet.
struct WriterStream {
    name: StreamName,
    slot: Arc<Slot>,
    shadow: StreamState,
    retention: Option<Retention>,
    first_seq: u64,
    changelog_floor: u64,
    /// Creation facts of the newest records, the ones a repeat can land in (see [`Created`]).
    created: CreatedFacts,
    /// What a restore of the readers' state needs besides the rows: kept here, where every
    /// record passes, so that a stream's metadata is exact whether or not its state is in memory.
    book: TailBook,
    /// The anomaly detectors' state (`None` until an event is observed, and with detection
    /// off), and what the stream overrides of the server's settings.
    detectors: Option<Box<DetectorState>>,
    anomalies: Option<AnomalyOverrides>,
}

/// How the newest records were created, so that a repeat rewrites its record's row without
/// reading it back: at most `lookback` entries, their room charged to the cache's meter.
struct CreatedFacts {
    facts: VecDeque<(u64, Created)>,
    lookback: usize,
    meter: Meter,
    charged: usize,
}

impl CreatedFacts {
    fn new(lookback: usize, meter: &Meter) -> CreatedFacts {
        let charged = crate::meter::heap(lookback * std::mem::size_of::<(u64, Created)>());
        meter.charge(charged);
        CreatedFacts {
            facts: VecDeque::new(),
            lookback,
            meter: meter.clone(),
            charged,
        }
    }

    /// How record `seq` was created, if it is one of the newest.
    fn get(&self, seq: u64) -> Option<Created> {
        self.facts
            .iter()
            .rev()
            .find(|(known, _)| *known == seq)
            .map(|(_, created)| *created)
    }

    fn push(&mut self, seq: u64, created: Created) {
        if self.facts.len() >= self.lookback {
            self.facts.pop_front();
        }
        self.facts.push_back((seq, created));
    }
}

impl Drop for CreatedFacts {
    fn drop(&mut self) {
        self.meter.release(self.charged);
    }
}

impl WriterStream {
    /// The writer's view of a committed stream with nothing in flight: forked from its live
    /// state when resident, read from the file otherwise (only the records collapse can reach,
    /// and its notes).
    fn load(
        name: StreamName,
        slot: Arc<Slot>,
        db: &Database,
        options: &StoreOptions,
        cache: &Cache,
    ) -> Result<WriterStream, StoreError> {
        let capacity = options.collapse.lookback;
        let (forked, meta) = {
            let live = read(&slot.live);
            let forked = live
                .state
                .as_ref()
                .map(|state| state.fork(TailCapacity::shadow(capacity)));
            (forked, live.meta.clone())
        };
        let shadow = match forked {
            Some(shadow) => shadow,
            None => {
                cache.shadow_loads.fetch_add(1, Ordering::Relaxed);
                reads::load_shadow(db, &name, &meta, options, &cache.meter)?
            }
        };
        let tail_blocks = match meta.tail_blocks {
            Some(blocks) => blocks,
            None => {
                let last_seq = meta.totals.records;
                let from = options.tail.tail_start(last_seq).max(meta.first_seq);
                reads::tail_blocks(db, meta.id, from, last_seq, options.tail.records as u64)?
            }
        };
        Ok(WriterStream {
            name,
            slot,
            shadow,
            retention: meta.retention,
            first_seq: meta.first_seq,
            changelog_floor: meta.changelog_floor,
            created: CreatedFacts::new(options.collapse.lookback, &cache.meter),
            book: TailBook {
                older_last_ts: meta.older_last_ts,
                tail_blocks,
                tail_bytes: meta.tail_bytes,
                block_times: meta.block_times,
            },
            detectors: meta.detectors,
            anomalies: meta.anomalies,
        })
    }

    /// Whether everything placed on this stream is committed and visible: its shadow can go.
    fn is_settled(&self) -> bool {
        read(&self.slot.live).meta.revision == self.shadow.revision()
    }
}

/// How often the writer tries to reopen a data file that failed a write.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a reopen waits for readers to let go of the old file handle.
const REOPEN_READERS_WAIT: Duration = Duration::from_secs(5);

/// Drops the store's handle on the data file and opens it again (redb repairs it on open when
/// the failed write left it unfinished). Until it is open, reads and writes answer
/// `Unavailable`; if it cannot be opened, it stays closed for the next try.
fn reopen(shared: &Shared) -> Result<(), StoreError> {
    shared.reopening.store(true, Ordering::Release);
    if let Some(mut old) = write(&shared.db).take() {
        // Readers hold the handle for one transaction each: wait for them to finish.
        let deadline = Instant::now() + REOPEN_READERS_WAIT;
        loop {
            match Arc::try_unwrap(old) {
                Ok(db) => break drop(db),
                Err(still) if Instant::now() >= deadline => {
                    *write(&shared.db) = Some(still);
                    shared.reopening.store(false, Ordering::Release);
                    return Err(StoreError::Unavailable(
                        "readers still hold the data file".into(),
                    ));
                }
                Err(still) => {
                    old = still;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    let db = super::open_database(&shared.path, shared.options.cache_bytes)?;
    *write(&shared.db) = Some(Arc::new(db));
    shared.reopening.store(false, Ordering::Release);
    Ok(())
}

/// One operation to apply once its commit is durable.
enum Op {
    Created(StreamName, Arc<Slot>),
    Deleted(StreamName),
    Update(Arc<Slot>, Update),
}

/// What one batch did, applied or undone once its commit's fate is known.
#[derive(Default)]
struct Work {
    ops: Vec<Op>,
    answers: Vec<Answer>,
    changes: Vec<Change>,
    /// Streams whose shadow or metadata changed (or that were created or deleted).
    touched: IndexSet<StreamName>,
    /// Deleted streams' ids, to purge in the background.
    deleted_ids: Vec<u64>,
    /// Purged stream ids whose last rows this commit removes.
    purged: Vec<u64>,
}

impl Work {
    /// Sized up front: a batch can carry thousands of events, and growing these vectors one
    /// push at a time showed up as a tenth of the writer's time.
    fn with_capacity(events: usize, requests: usize) -> Work {
        Work {
            ops: Vec::with_capacity(events),
            answers: Vec::with_capacity(requests),
            changes: Vec::with_capacity(events),
            ..Work::default()
        }
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    shared: Arc<Shared>,
    requests: Receiver<Request>,
    streams: HashMap<StreamName, WriterStream>,
    next_stream_id: u64,
    /// The `next_stream_id` the last batch wrote (0: must be written again).
    written_next_stream_id: u64,
    /// Deleted streams whose rows are still in the file.
    purges: BTreeSet<u64>,
    /// Streams that may have retention, expiry or changelog trimming to do.
    dirty: BTreeSet<StreamName>,
    next_sweep: Instant,
    /// No reopen of a failed data file before this (see [`Writer::reopen_if_degraded`]).
    next_reopen: Instant,
    /// When maintenance last took a step.
    last_maintenance: Instant,
    /// When the last request arrived.
    last_request: Instant,
    /// The next maintenance step's row budget, in `MAINTENANCE_CHUNK_ROWS`.
    maintenance_scale: usize,
    /// No background maintenance before this (set after a failed maintenance commit).
    backoff_until: Option<Instant>,
    /// After an eviction round that could not get under the low water (shadows of streams with
    /// writes in flight stay): no new round before the cache grows past these bytes or this
    /// instant. A round walks every stream, so it must not run on every batch.
    next_eviction: Option<(usize, Instant)>,
    /// Batches placed since the last failure carry this; see [`committer`].
    epoch: u64,
    /// The newest epoch the committer failed (0: none).
    failed_epoch: Arc<AtomicU64>,
    pipe: Option<mpsc::Sender<Piped>>,
    committer: Option<std::thread::JoinHandle<()>>,
    notices: Option<mpsc::Sender<Notice>>,
    notifier: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        requests: Receiver<Request>,
        next_stream_id: u64,
        purges: BTreeSet<u64>,
    ) -> Result<Writer, StoreError> {
        let start = |name: &'static str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("recap-store-{name}"))
                .spawn(watched(shared.failure.clone(), name, body))
                .map_err(|error| StoreError::storage(format!("cannot start the {name}"), error))
        };
        let (notices, receiver) = mpsc::channel();
        let notifier = {
            let shared = shared.clone();
            start("notifier", Box::new(move || notify(shared, receiver)))?
        };
        let (pipe, receiver) = mpsc::channel();
        let failed_epoch = Arc::new(AtomicU64::new(0));
        let committer = Committer {
            shared: shared.clone(),
            pipe: receiver,
            notices: notices.clone(),
            failed_epoch: failed_epoch.clone(),
            gather: Default::default(),
        };
        let committer = start("committer", Box::new(move || committer.run()))?;
        let writer = Writer {
            shared,
            requests,
            streams: HashMap::new(),
            next_stream_id,
            written_next_stream_id: next_stream_id,
            purges,
            dirty: BTreeSet::new(),
            // Look at every stream once soon after opening.
            next_sweep: Instant::now(),
            next_reopen: Instant::now(),
            last_maintenance: Instant::now(),
            last_request: Instant::now(),
            maintenance_scale: 1,
            backoff_until: None,
            next_eviction: None,
            epoch: 1,
            failed_epoch,
            pipe: Some(pipe),
            committer: Some(committer),
            notices: Some(notices),
            notifier: Some(notifier),
        };
        Ok(writer)
    }

    /// Lets the committer and then the notifier finish everything sent, then stops both.
    fn stop(&mut self) {
        self.pipe.take();
        if let Some(committer) = self.committer.take() {
            drop(committer.join());
        }
        self.notices.take();
        if let Some(notifier) = self.notifier.take() {
            drop(notifier.join());
        }
    }

    /// Serves requests until shut down or until every `Store` handle is gone.
    pub(super) fn run(mut self) {
        loop {
            // Pending maintenance takes a step once requests pause for MAINTENANCE_IDLE_GAP,
            // and at least every BUSY_MAINTENANCE_INTERVAL while they keep coming (below). A
            // queue that is empty for a moment is not idle: callers waiting for the commit in
            // flight are about to send their next requests.
            let mut due = self.next_sweep;
            if self.shared.degraded().is_some() {
                due = due.min(self.next_reopen);
            }
            if self.maintenance_pending() {
                let busy_due = self.last_maintenance + BUSY_MAINTENANCE_INTERVAL;
                let idle_due = self.last_request + MAINTENANCE_IDLE_GAP;
                due = due.min(busy_due).min(idle_due);
            }
            let first = match self
                .requests
                .recv_timeout(due.saturating_duration_since(Instant::now()))
            {
                Ok(request) => {
                    self.last_request = Instant::now();
                    Some(request)
                }
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            #[cfg(test)]
            if self
                .shared
                .panic_to_inject
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                panic!("injected writer panic");
            }
            if Instant::now() >= self.next_sweep {
                self.sweep();
            }
            self.recover_if_failed();
            self.reopen_if_degraded();
            self.evict_if_over();
            let first = match first {
                // Idle: one bounded maintenance step.
                None => {
                    self.maintenance_step_now();
                    continue;
                }
                // Done above; there is nothing to commit.
                Some(Request::Evict) => continue,
                Some(first) => first,
            };
            let mut batch = Vec::new();
            let mut events = first.events();
            let mut control = None;
            if first.is_pipelined() {
                batch.push(first);
            } else {
                control = Some(first);
            }
            while control.is_none() && events < MAX_EVENTS_PER_COMMIT {
                match self.requests.try_recv() {
                    Ok(Request::Evict) => {}
                    Ok(request) if request.is_pipelined() => {
                        events += request.events();
                        batch.push(request);
                    }
                    Ok(request) => control = Some(request),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.place(batch, events);
            }
            match control {
                Some(Request::DeleteStream { stream, reply }) => self.delete_stream(stream, reply),
                Some(Request::Maintain { now, reply }) => self.maintain_fully(now, reply),
                Some(Request::Shutdown { reply }) => {
                    self.settle();
                    self.stop();
                    drop(reply.send(Ok(())));
                    return;
                }
                _ => {}
            }
            if self.maintenance_pending()
                && self.last_maintenance.elapsed() >= BUSY_MAINTENANCE_INTERVAL
            {
                self.maintenance_step_now();
            }
        }
        // Every handle is gone: finish what is queued.
        self.stop();
    }

    fn maintenance_pending(&self) -> bool {
        let backing_off = self
            .backoff_until
            .is_some_and(|until| Instant::now() < until);
        !backing_off && (!self.purges.is_empty() || !self.dirty.is_empty())
    }

    /// One bounded maintenance step in its own transaction. After a failure (already logged)
    /// wait a while rather than spin on a failing disk.
    fn maintenance_step_now(&mut self) {
        self.last_maintenance = Instant::now();
        if self.maintenance_pending() && self.commit_here(None, Utc::now()).is_err() {
            self.backoff_until = Some(Instant::now() + MAINTENANCE_INTERVAL);
        }
    }

    /// Marks the streams that time alone can give work: age limits and notes due to expire.
    fn sweep(&mut self) {
        self.next_sweep = Instant::now() + MAINTENANCE_INTERVAL;
        let default = self.shared.options.retention;
        let now = Utc::now();
        for (name, slot) in read(&self.shared.streams).iter() {
            let due = match self.streams.get(name) {
                Some(stream) => {
                    stream.retention.unwrap_or(default).max_age.is_some()
                        || stream.shadow.notes().any(|n| n.expires_at.is_some())
                }
                None => {
                    let live = read(&slot.live);
                    live.meta.retention.unwrap_or(default).max_age.is_some()
                        || live.meta.note_expiry.is_some_and(|at| at <= now)
                }
            };
            if due {
                self.dirty.insert(name.clone());
            }
        }
    }

    /// Runs maintenance until nothing is left, one bounded transaction at a time.
    fn maintain_fully(&mut self, now: Timestamp, reply: Reply<()>) {
        let names: Vec<StreamName> = read(&self.shared.streams).keys().cloned().collect();
        self.dirty.extend(names);
        self.backoff_until = None;
        while self.maintenance_pending() {
            if let Err(error) = self.commit_here(None, now) {
                drop(reply.send(Err(error)));
                return;
            }
            self.evict_if_over();
        }
        // What maintenance did is visible before the caller hears it is done.
        self.settle();
        drop(reply.send(Ok(())));
    }

    /// When the cache holds more than its budget: evicts the streams used least recently (their
    /// live states, and the writer's shadows of those with nothing in flight) until it is an
    /// eighth under.
    fn evict_if_over(&mut self) {
        let cache = &self.shared.cache;
        cache.eviction_asked.store(false, Ordering::Relaxed);
        if !cache.is_over() {
            self.next_eviction = None;
            return;
        }
        if self
            .next_eviction
            .is_some_and(|(bytes, at)| cache.meter.bytes() < bytes && Instant::now() < at)
        {
            return;
        }
        let mut candidates: Vec<(u64, StreamName, Arc<Slot>)> = read(&self.shared.streams)
            .iter()
            .filter(|(name, slot)| slot.is_resident() || self.streams.contains_key(*name))
            .map(|(name, slot)| (slot.last_used(), name.clone(), slot.clone()))
            .collect();
        candidates.sort_unstable_by_key(|(used, ..)| *used);
        let low_water = cache.low_water();
        for (_, name, slot) in candidates {
            if cache.meter.bytes() <= low_water {
                break;
            }
            let shadow = self
                .streams
                .get(&name)
                .is_some_and(WriterStream::is_settled)
                && self.streams.remove(&name).is_some();
            let live = slot.evict().is_some();
            if shadow || live {
                cache.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        let left = cache.meter.bytes();
        self.next_eviction = (left > low_water).then(|| {
            (
                left + cache.budget / 16,
                Instant::now() + FUTILE_EVICTION_PAUSE,
            )
        });
    }

    fn begin(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.shared.database()?.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|error| StoreError::storage("", error))?;
        Ok(txn)
    }

    /// Places a batch on the shadows and hands it to the committer.
    fn place(&mut self, batch: Vec<Request>, events: usize) {
        let mut work = Work::with_capacity(events, batch.len());
        let mut rows = Rows::with_capacity(events);
        let mut requests = batch.into_iter();
        while let Some(request) = requests.next() {
            // A stream whose rows are damaged fails its own requests, not its batch's others.
            if let Some(stream) = request.stream()
                && let Err(error @ StoreError::Damaged { .. }) = self.loaded(stream)
            {
                request.fail(&error);
                continue;
            }
            if let Err(error) = self.apply(request, &mut rows, &mut work) {
                tracing::error!(%error, "a batch could not be placed; nothing of it was written");
                for request in requests {
                    request.fail(&error);
                }
                self.notify(Notice::Failed {
                    answers: work.answers,
                    error,
                });
                // Earlier batches do not depend on this one: let them commit, then start over
                // from what they committed.
                self.settle();
                self.recover();
                return;
            }
        }
        self.seal(&mut rows, &mut work);
        let placed = Placed {
            epoch: self.epoch,
            events,
            rows,
            ops: work.ops,
            answers: work.answers,
            changes: work.changes,
        };
        let sent = match &self.pipe {
            Some(pipe) => pipe.send(Piped::Batch(placed)),
            None => Err(mpsc::SendError(Piped::Batch(placed))),
        };
        // The committer only stops after the writer drops the pipe, unless it panicked: then
        // nothing can be committed any more, and the shadows must not keep what never was.
        if let Err(mpsc::SendError(Piped::Batch(placed))) = sent {
            tracing::error!("the committer has stopped; writes fail until recap restarts");
            self.notify(Notice::Failed {
                answers: placed.answers,
                error: StoreError::storage_text("the store's committer has stopped; restart recap"),
            });
            self.failed_epoch.fetch_max(self.epoch, Ordering::AcqRel);
        }
    }

    /// The rows every batch ends with: the metadata of each stream it touched, and the next
    /// stream id when it changed.
    fn seal(&mut self, rows: &mut Rows, work: &mut Work) {
        for name in &work.touched {
            if let Some(stream) = self.streams.get(name) {
                let meta = stream_meta(stream);
                rows.stream(name.clone(), &schema::encode_meta(name.as_str(), &meta));
                let update = Update::Meta(Box::new(meta));
                work.ops.push(Op::Update(stream.slot.clone(), update));
            }
        }
        if self.next_stream_id != self.written_next_stream_id {
            rows.next_stream_id(self.next_stream_id);
            self.written_next_stream_id = self.next_stream_id;
        }
    }

    /// Waits until the committer has finished everything placed so far and the notifier has
    /// made it visible: the live states are then exactly the committed state, and the shadows
    /// are forked again from them if a commit failed meanwhile.
    fn settle(&mut self) {
        if let Some(pipe) = &self.pipe {
            let (done, finished) = mpsc::channel();
            let emptied = pipe.send(Piped::Barrier(done)).is_ok() && finished.recv().is_ok();
            if !emptied {
                // The committer panicked: what it had not committed never will be.
                self.failed_epoch.fetch_max(self.epoch, Ordering::AcqRel);
            }
        }
        let (done, finished) = mpsc::channel();
        self.notify(Notice::Flush(done));
        let _ = finished.recv();
        let failed = self.failed_epoch.load(Ordering::Acquire);
        if failed >= self.epoch {
            self.recover();
            self.epoch = failed + 1;
        }
    }

    /// After the committer failed a commit: start over from the committed state before placing
    /// anything on top of it.
    /// After a failed write (a full disk, say) redb refuses every operation until the file is
    /// opened again: reopen it once nothing is in flight, at most every [`REOPEN_INTERVAL`]
    /// while it keeps failing. Writes that come meanwhile fail as the disk does (507), and
    /// succeed again once it has room, without a restart.
    fn reopen_if_degraded(&mut self) {
        if self.shared.degraded().is_none() || Instant::now() < self.next_reopen {
            return;
        }
        self.settle();
        self.next_reopen = Instant::now() + REOPEN_INTERVAL;
        match reopen(&self.shared) {
            Ok(()) => {
                self.shared.reopens.fetch_add(1, Ordering::Relaxed);
                tracing::info!("the data file was reopened after a failed write");
                // What placed batches left in the shadows was never committed.
                self.recover();
            }
            Err(error) => tracing::warn!(%error, "the data file cannot be reopened yet"),
        }
    }

    fn recover_if_failed(&mut self) {
        if self.failed_epoch.load(Ordering::Acquire) >= self.epoch {
            self.settle();
        }
    }

    /// Drops every shadow, to be loaded again from the committed state (the pipe must be empty
    /// and the notifier flushed, as [`Writer::settle`] leaves them). Retention may have been
    /// undone too, so every stream that had a shadow is looked at.
    fn recover(&mut self) {
        let names: Vec<StreamName> = self.streams.drain().map(|(name, _)| name).collect();
        self.dirty.extend(names);
        // Ids taken by streams that were never committed stay unused; the id must be written
        // again in case the lost commit was the one that wrote it.
        self.written_next_stream_id = 0;
    }

    /// Deletes a stream: its row goes now, its other rows in the background.
    fn delete_stream(&mut self, stream: StreamName, reply: Reply<bool>) {
        let delete = Request::DeleteStream { stream, reply };
        // A failure has been logged and answered.
        let _ = self.commit_here(Some(delete), Utc::now());
    }

    /// Commits on the writer thread, once the pipe is empty: `request` (if any) and one
    /// maintenance step (if any is due), in one durable transaction.
    fn commit_here(&mut self, request: Option<Request>, now: Timestamp) -> Result<(), StoreError> {
        self.settle();
        let mut work = Work::with_capacity(1, 1);
        let result = self.begin().and_then(|txn| {
            {
                let mut tables = Tables::open(&txn)?;
                let mut rows = Rows::default();
                if let Some(request) = request {
                    self.apply(request, &mut rows, &mut work)?;
                }
                rows.write(&mut tables)?;
                if self.maintenance_pending() {
                    self.maintenance_step(&mut tables, now, &mut work)?;
                }
                let mut rows = Rows::default();
                self.seal(&mut rows, &mut work);
                rows.write(&mut tables)?;
            }
            self.shared.injected_failure()?;
            txn.commit()?;
            Ok(())
        });
        match result {
            Ok(()) => {
                self.publish(work);
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "commit failed; its writes were not acknowledged");
                self.shared
                    .counters
                    .failed_commits
                    .fetch_add(1, Ordering::Relaxed);
                self.notify(Notice::Failed {
                    answers: work.answers,
                    error: error.for_caller(),
                });
                self.settle();
                self.recover();
                Err(error)
            }
        }
    }

    /// After a durable commit on the writer thread: book its purges, then let the notifier
    /// make it visible and answer.
    fn publish(&mut self, work: Work) {
        let counters = &self.shared.counters;
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters.count_requests(&work.answers);
        self.purges.extend(work.deleted_ids);
        for id in work.purged {
            self.purges.remove(&id);
        }
        self.notify(Notice::Committed {
            ops: work.ops,
            changes: work.changes,
            answers: work.answers,
        });
    }

    fn notify(&self, notice: Notice) {
        if let Some(notices) = &self.notices {
            // The notifier only stops after the writer drops this sender.
            drop(notices.send(notice));
        }
    }

    /// One bounded step of background work: purge deleted streams, expire notes, apply
    /// retention, trim changelogs.
    ///
    /// A step removes `MAINTENANCE_CHUNK_ROWS` rows, doubled after every step that used its
    /// whole budget (up to [`MAX_MAINTENANCE_SCALE`] times): under a firehose, retention has to
    /// remove as many rows as arrive, and steps only come every `BUSY_MAINTENANCE_INTERVAL`.
    fn maintenance_step(
        &mut self,
        tables: &mut Tables<'_>,
        now: Timestamp,
        work: &mut Work,
    ) -> Result<(), StoreError> {
        let mut budget = MAINTENANCE_CHUNK_ROWS * self.maintenance_scale;
        self.maintain_within(tables, now, &mut budget, work)?;
        self.maintenance_scale = if budget == 0 {
            (self.maintenance_scale * 2).min(MAX_MAINTENANCE_SCALE)
        } else {
            1
        };
        Ok(())
    }

    fn maintain_within(
        &mut self,
        tables: &mut Tables<'_>,
        now: Timestamp,
        budget: &mut usize,
        work: &mut Work,
    ) -> Result<(), StoreError> {
        for id in self.purges.clone() {
            if *budget == 0 {
                return Ok(());
            }
            let removed = purge_rows(tables, id, *budget)?;
            *budget -= removed.min(*budget);
            if *budget > 0 {
                tables.purge.remove(id)?;
                work.purged.push(id);
            }
        }
        let default_retention = self.shared.options.retention;
        let keep = self.shared.options.changelog_keep;
        let names: Vec<StreamName> = self.dirty.iter().cloned().collect();
        for name in names {
            if *budget == 0 {
                break;
            }
            let Some(target) = self.loaded(&name)? else {
                self.dirty.remove(&name);
                continue;
            };
            let done = maintain_stream(target, tables, now, default_retention, keep, budget, work)?;
            if done {
                self.dirty.remove(&name);
            }
        }
        Ok(())
    }
}

/// Locks for reading; a panic elsewhere while holding the lock does not make the data invalid
/// (every mutation applies a committed operation), so poisoning is ignored.
pub(super) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks for writing; see [`read`].
pub(super) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
