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
mod rows;

use committer::{Committer, Piped, Placed};
use live::{Notice, notify};
use maintenance::{maintain_stream, needs_maintenance, purge_rows};
use rows::{Rows, Tables};

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use indexmap::IndexSet;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, WriteTransaction};
use tokio::sync::{broadcast, oneshot};

use crate::collapse::MAX_COLLAPSE_LOOKBACK;
use crate::context::CachedRecord;
use crate::event::{Event, Note, Severity, StreamName, Timestamp};
use crate::stream::{Appended, Origin, StreamState, TailCapacity};

use super::schema::{self, ChangeEntry, Created, StreamMeta};
use super::{
    Change, ChangeBody, CommittedChanges, ImportedRecord, MAX_EVENTS_PER_COMMIT, Retention,
    StoreError, StoreOptions,
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
/// Requests that pause this long leave the writer idle: pending maintenance steps then follow
/// one another.
const MAINTENANCE_IDLE_GAP: Duration = Duration::from_millis(2);
/// Commits published but not yet received that a slow subscriber may lag behind before it
/// misses some (it then resumes from the changelog).
pub(super) const BROADCAST_CAPACITY: usize = 1_024;
/// The shadow keeps only what collapse can reach.
const SHADOW_CAPACITY: TailCapacity = TailCapacity {
    records: MAX_COLLAPSE_LOOKBACK,
    severe: 0,
};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What callers ask the writer to do.
pub(super) enum Request {
    Append {
        stream: StreamName,
        events: Vec<Event>,
        now: Timestamp,
        reply: Reply<Vec<Appended>>,
    },
    Import {
        stream: StreamName,
        records: Vec<ImportedRecord>,
        reply: Reply<Vec<Appended>>,
    },
    AddNote {
        stream: StreamName,
        text: String,
        expires_at: Option<Timestamp>,
        now: Timestamp,
        reply: Reply<Note>,
    },
    DeleteNote {
        stream: StreamName,
        id: u64,
        reply: Reply<bool>,
    },
    DeleteStream {
        stream: StreamName,
        reply: Reply<bool>,
    },
    SetRetention {
        stream: StreamName,
        retention: Retention,
        reply: Reply<()>,
    },
    /// Runs all pending maintenance as of `now`, then answers.
    Maintain { now: Timestamp, reply: Reply<()> },
    /// Commits what is queued before it, saves exact restore hints, and stops. Answered on a
    /// std channel: `Store::close` may be called from a thread inside an async runtime, where a
    /// blocking tokio receive would panic.
    Shutdown {
        reply: mpsc::Sender<Result<(), StoreError>>,
    },
}

impl Request {
    fn events(&self) -> usize {
        match self {
            Request::Append { events, .. } => events.len(),
            Request::Import { records, .. } => records.len(),
            _ => 1,
        }
    }

    /// Answers the request with a storage error, without doing anything.
    fn fail(self, detail: &str) {
        let error = || StoreError::Storage(detail.to_owned());
        match self {
            Request::Append { reply, .. } | Request::Import { reply, .. } => {
                drop(reply.send(Err(error())))
            }
            Request::AddNote { reply, .. } => drop(reply.send(Err(error()))),
            Request::DeleteNote { reply, .. } | Request::DeleteStream { reply, .. } => {
                drop(reply.send(Err(error())))
            }
            Request::SetRetention { reply, .. } | Request::Maintain { reply, .. } => {
                drop(reply.send(Err(error())))
            }
            Request::Shutdown { reply } => drop(reply.send(Err(error()))),
        }
    }

    /// Whether the writer decides it from its shadows alone, so that it can be placed while
    /// earlier batches are still being committed. The others read tables or end the writer.
    fn is_pipelined(&self) -> bool {
        !matches!(
            self,
            Request::DeleteStream { .. } | Request::Maintain { .. } | Request::Shutdown { .. }
        )
    }
}

/// What readers and the writer share.
pub(super) struct Shared {
    pub path: std::path::PathBuf,
    pub options: StoreOptions,
    /// `None` once the store is closed.
    pub db: RwLock<Option<Arc<Database>>>,
    /// Committed streams.
    pub streams: RwLock<HashMap<StreamName, Arc<Slot>>>,
    pub changes: broadcast::Sender<CommittedChanges>,
    pub counters: Counters,
    /// Commits still to fail on purpose (tests of the failure path only).
    #[cfg(test)]
    pub failures_to_inject: AtomicU64,
}

impl Shared {
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
            return Err(StoreError::Storage("injected commit failure".into()));
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

/// One committed stream as readers see it.
pub(super) struct Slot {
    pub id: u64,
    pub live: RwLock<Live>,
}

/// A stream's committed in-memory state.
pub(super) struct Live {
    pub state: StreamState,
    pub retention: Option<Retention>,
    pub first_seq: u64,
    pub changelog_floor: u64,
}

impl Live {
    /// Where a restore should start. A row is encoded before its own batch is applied, so the
    /// hints may be several commits old; they stay right because they only ever point at or
    /// before the live tail: an empty tail points at the next seq, so whatever is added after
    /// the hints were taken is restored too.
    pub fn restore_hints(&self, meta: &mut StreamMeta) {
        meta.tail_start = self.state.tail_start_seq().or(Some(self.state.next_seq()));
        meta.severe_start = self.state.severe_start_seq();
        meta.older_last_ts = self.state.older_last_ts();
        meta.goal_seqs = self.state.goal_seqs();
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
    /// Creation facts of the newest records, the ones a repeat can land in.
    created: VecDeque<(u64, Created)>,
}

impl WriterStream {
    fn from_slot(name: StreamName, slot: Arc<Slot>) -> WriterStream {
        let (shadow, retention, first_seq, changelog_floor) = {
            let live = read(&slot.live);
            (
                live.state.fork(SHADOW_CAPACITY),
                live.retention,
                live.first_seq,
                live.changelog_floor,
            )
        };
        WriterStream {
            name,
            slot,
            shadow,
            retention,
            first_seq,
            changelog_floor,
            created: VecDeque::new(),
        }
    }
}

/// One operation to apply to a live state once its commit is durable.
enum Op {
    Created(StreamName, Arc<Slot>),
    Deleted(StreamName),
    /// A record the shadow placed (a new record, a repeat, or an import): the live state adopts
    /// the same cached record instead of deciding the placement again.
    Adopt(Arc<Slot>, Arc<CachedRecord>, Origin),
    AddNote(Arc<Slot>, Note),
    RemoveNote(Arc<Slot>, u64),
    Forget(Arc<Slot>, u64),
    Settings(Arc<Slot>, Option<Retention>, u64, u64),
}

enum Answer {
    Appended(Reply<Vec<Appended>>, Vec<Appended>),
    Note(Reply<Note>, Note),
    Flag(Reply<bool>, bool),
    Done(Reply<()>),
}

impl Answer {
    fn send(self, failure: Option<&str>) {
        let fail = |detail: &str| StoreError::Storage(detail.to_owned());
        // A caller that stopped waiting is not an error.
        match (self, failure) {
            (Answer::Appended(reply, value), None) => drop(reply.send(Ok(value))),
            (Answer::Note(reply, value), None) => drop(reply.send(Ok(value))),
            (Answer::Flag(reply, value), None) => drop(reply.send(Ok(value))),
            (Answer::Done(reply), None) => drop(reply.send(Ok(()))),
            (Answer::Appended(reply, _), Some(detail)) => drop(reply.send(Err(fail(detail)))),
            (Answer::Note(reply, _), Some(detail)) => drop(reply.send(Err(fail(detail)))),
            (Answer::Flag(reply, _), Some(detail)) => drop(reply.send(Err(fail(detail)))),
            (Answer::Done(reply), Some(detail)) => drop(reply.send(Err(fail(detail)))),
        }
    }
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
    db: Arc<Database>,
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
    /// When maintenance last took a step.
    last_maintenance: Instant,
    /// When the last request arrived.
    last_request: Instant,
    /// The next maintenance step's row budget, in `MAINTENANCE_CHUNK_ROWS`.
    maintenance_scale: usize,
    /// No background maintenance before this (set after a failed maintenance commit).
    backoff_until: Option<Instant>,
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
        db: Arc<Database>,
        requests: Receiver<Request>,
        next_stream_id: u64,
        purges: BTreeSet<u64>,
    ) -> Result<Writer, StoreError> {
        let start = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(body)
                .map_err(|error| StoreError::Storage(format!("cannot start {name}: {error}")))
        };
        let (notices, receiver) = mpsc::channel();
        let notifier = {
            let shared = shared.clone();
            start(
                "recap-store-notifier",
                Box::new(move || notify(shared, receiver)),
            )?
        };
        let (pipe, receiver) = mpsc::channel();
        let failed_epoch = Arc::new(AtomicU64::new(0));
        let committer = Committer {
            shared: shared.clone(),
            db: db.clone(),
            pipe: receiver,
            notices: notices.clone(),
            failed_epoch: failed_epoch.clone(),
            gather: Default::default(),
        };
        let committer = start("recap-store-committer", Box::new(move || committer.run()))?;
        let mut writer = Writer {
            shared,
            db,
            requests,
            streams: HashMap::new(),
            next_stream_id,
            written_next_stream_id: next_stream_id,
            purges,
            dirty: BTreeSet::new(),
            // Look at every stream once soon after opening.
            next_sweep: Instant::now(),
            last_maintenance: Instant::now(),
            last_request: Instant::now(),
            maintenance_scale: 1,
            backoff_until: None,
            epoch: 1,
            failed_epoch,
            pipe: Some(pipe),
            committer: Some(committer),
            notices: Some(notices),
            notifier: Some(notifier),
        };
        writer.fork_all();
        Ok(writer)
    }

    /// Forks every shadow again from the committed (live) state.
    fn fork_all(&mut self) {
        self.streams = read(&self.shared.streams)
            .iter()
            .map(|(name, slot)| {
                let stream = WriterStream::from_slot(name.clone(), slot.clone());
                (name.clone(), stream)
            })
            .collect();
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
            if Instant::now() >= self.next_sweep {
                self.sweep();
            }
            self.recover_if_failed();
            let Some(first) = first else {
                // Idle: one bounded maintenance step.
                self.maintenance_step_now();
                continue;
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
                    let result = self.save_restore_hints();
                    self.stop();
                    drop(reply.send(result));
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
        // Every handle is gone: leave exact restore hints behind for the next open.
        if let Err(error) = self.save_restore_hints() {
            tracing::warn!(%error, "could not save restore hints on shutdown");
        }
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

    /// Marks the streams that time alone can give work: age limits and expiring notes.
    fn sweep(&mut self) {
        self.next_sweep = Instant::now() + MAINTENANCE_INTERVAL;
        let default = self.shared.options.retention;
        for stream in self.streams.values() {
            let has_age_limit = stream.retention.unwrap_or(default).max_age.is_some();
            let has_expiry = stream.shadow.notes().any(|n| n.expires_at.is_some());
            if has_age_limit || has_expiry {
                self.dirty.insert(stream.name.clone());
            }
        }
    }

    /// Runs maintenance until nothing is left, one bounded transaction at a time.
    fn maintain_fully(&mut self, now: Timestamp, reply: Reply<()>) {
        let names: Vec<StreamName> = self.streams.keys().cloned().collect();
        self.dirty.extend(names);
        self.backoff_until = None;
        while self.maintenance_pending() {
            if let Err(error) = self.commit_here(None, now) {
                drop(reply.send(Err(error)));
                return;
            }
        }
        // What maintenance did is visible before the caller hears it is done.
        self.settle();
        drop(reply.send(Ok(())));
    }

    /// Writes every stream's metadata with restore hints taken from its live state, which is
    /// exact now that nothing is pending.
    fn save_restore_hints(&mut self) -> Result<(), StoreError> {
        self.settle();
        let txn = self.begin()?;
        {
            let mut tables = Tables::open(&txn)?;
            for stream in self.streams.values() {
                let meta = stream_meta(stream);
                tables
                    .streams
                    .insert(stream.name.as_str(), schema::encode_meta(&meta).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn begin(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|error| StoreError::Storage(error.to_string()))?;
        Ok(txn)
    }

    /// Places a batch on the shadows and hands it to the committer.
    fn place(&mut self, batch: Vec<Request>, events: usize) {
        let mut work = Work::with_capacity(events, batch.len());
        let mut rows = Rows::with_capacity(events);
        let mut requests = batch.into_iter();
        while let Some(request) = requests.next() {
            if let Err(error) = self.apply(request, &mut rows, &mut work) {
                tracing::error!(%error, "a batch could not be placed; nothing of it was written");
                let detail = error.to_string();
                for request in requests {
                    request.fail(&detail);
                }
                self.notify(Notice::Failed {
                    answers: work.answers,
                    detail,
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
                detail: "the store's committer has stopped; restart recap".into(),
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
                rows.stream(name.clone(), &schema::encode_meta(&meta));
                work.ops.push(Op::Settings(
                    stream.slot.clone(),
                    stream.retention,
                    stream.first_seq,
                    stream.changelog_floor,
                ));
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
    fn recover_if_failed(&mut self) {
        if self.failed_epoch.load(Ordering::Acquire) >= self.epoch {
            self.settle();
        }
    }

    /// Rebuilds every shadow from the committed state (the pipe must be empty and the notifier
    /// flushed, as [`Writer::settle`] leaves them). Retention and trimming may have been undone too, so every stream is looked at.
    fn recover(&mut self) {
        self.fork_all();
        self.dirty.extend(self.streams.keys().cloned());
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
                let detail = error.to_string();
                self.notify(Notice::Failed {
                    answers: work.answers,
                    detail,
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

    /// The stream named `name`, created (with a fresh id) if it does not exist.
    /// Why a note of `text` cannot be added to `stream`, if it would pass a [`NoteLimits`].
    fn note_limit(&self, stream: &StreamName, text: &str) -> Option<StoreError> {
        let limits = self.shared.options.notes;
        let (count, bytes) = self.streams.get(stream).map_or((0, 0), |target| {
            target.shadow.notes().fold((0, 0), |(count, bytes), note| {
                (count + 1, bytes + note.text.len())
            })
        });
        if count >= limits.max_notes {
            return Some(StoreError::NoteLimit {
                what: "notes",
                held: count,
                limit: limits.max_notes,
                setting: "max_notes_per_stream",
            });
        }
        if bytes + text.len() > limits.max_bytes {
            return Some(StoreError::NoteLimit {
                what: "bytes of note text (with this note)",
                held: bytes + text.len(),
                limit: limits.max_bytes,
                setting: "max_note_bytes_per_stream",
            });
        }
        None
    }

    fn stream_or_create(&mut self, name: &StreamName, work: &mut Work) -> &mut WriterStream {
        if !self.streams.contains_key(name) {
            let id = self.next_stream_id;
            self.next_stream_id += 1;
            let options = &self.shared.options;
            let slot = Arc::new(Slot {
                id,
                live: RwLock::new(Live {
                    state: StreamState::new(options.collapse, options.tail),
                    retention: None,
                    first_seq: 1,
                    changelog_floor: 0,
                }),
            });
            work.ops.push(Op::Created(name.clone(), slot.clone()));
            let stream = WriterStream::from_slot(name.clone(), slot);
            self.streams.insert(name.clone(), stream);
        }
        work.touched.insert(name.clone());
        self.streams
            .get_mut(name)
            .expect("the stream was just looked up or created")
    }

    /// Decides one request on the shadows and encodes its writes into `rows`. On an error (a
    /// record that could not be read) the request's answer is in `work` and the shadows are
    /// suspect: the caller fails the batch and forks them again.
    fn apply(
        &mut self,
        request: Request,
        rows: &mut Rows,
        work: &mut Work,
    ) -> Result<(), StoreError> {
        let default_retention = self.shared.options.retention;
        let changelog_keep = self.shared.options.changelog_keep;
        let db = self.db.clone();
        match request {
            Request::Append {
                stream,
                events,
                now,
                reply,
            } => {
                if events.is_empty() {
                    work.answers.push(Answer::Appended(reply, Vec::new()));
                    return Ok(());
                }
                let target = self.stream_or_create(&stream, work);
                let mut results = Vec::with_capacity(events.len());
                let mut failure = None;
                for event in events {
                    let ts = at_micros(event.ts.unwrap_or(now));
                    let (appended, cached) = target.shadow.append_shared(event, ts);
                    if let Err(error) = store_appended(target, rows, &db, &appended, work) {
                        failure = Some(error);
                        break;
                    }
                    let origin = Origin::Event {
                        ts,
                        collapsed: appended.collapsed,
                    };
                    work.ops
                        .push(Op::Adopt(target.slot.clone(), cached, origin));
                    results.push(appended);
                }
                let over = needs_maintenance(target, default_retention, changelog_keep);
                work.answers.push(Answer::Appended(reply, results));
                if let Some(error) = failure {
                    return Err(error);
                }
                if over {
                    self.dirty.insert(stream);
                }
            }
            Request::Import {
                stream,
                records,
                reply,
            } => {
                if records.is_empty() {
                    work.answers.push(Answer::Appended(reply, Vec::new()));
                    return Ok(());
                }
                let target = self.stream_or_create(&stream, work);
                let mut results = Vec::with_capacity(records.len());
                let mut failure = None;
                let mut notes_expire = false;
                for imported in records {
                    let mut event = imported.event;
                    if let Some(note) = imported.note {
                        // An exported pinned note comes back as a note (with an id of this
                        // stream) and its audit record, linked as `add_note` links them.
                        let note = place_note(
                            target,
                            rows,
                            work,
                            event.message.clone(),
                            at_micros(note.created_at),
                            note.expires_at.map(at_micros),
                        );
                        notes_expire |= note.expires_at.is_some();
                        event
                            .payload
                            .get_or_insert_with(serde_json::Map::new)
                            .insert(crate::context::NOTE_ID_KEY.into(), note.id.into());
                    }
                    let (appended, cached) = target.shadow.import_shared(
                        event,
                        at_micros(imported.first_ts),
                        at_micros(imported.last_ts),
                        imported.repeat_count,
                    );
                    if let Err(error) = store_appended(target, rows, &db, &appended, work) {
                        failure = Some(error);
                        break;
                    }
                    work.ops
                        .push(Op::Adopt(target.slot.clone(), cached, Origin::Import));
                    results.push(appended);
                }
                let over = needs_maintenance(target, default_retention, changelog_keep);
                work.answers.push(Answer::Appended(reply, results));
                if let Some(error) = failure {
                    return Err(error);
                }
                if over || notes_expire {
                    self.dirty.insert(stream);
                }
            }
            Request::AddNote {
                stream,
                text,
                expires_at,
                now,
                reply,
            } => {
                if let Some(error) = self.note_limit(&stream, &text) {
                    drop(reply.send(Err(error)));
                    return Ok(());
                }
                let now = at_micros(now);
                let expires_at = expires_at.map(at_micros);
                let target = self.stream_or_create(&stream, work);
                let note = place_note(target, rows, work, text.clone(), now, expires_at);
                let note_id = note.id;
                work.answers.push(Answer::Note(reply, note));
                // The audit trail: the note is also an event of the stream (DESIGN section 2).
                let event = note_event(text, note_id);
                let (appended, cached) = target.shadow.append_shared(event, now);
                store_appended(target, rows, &db, &appended, work)?;
                let origin = Origin::Event {
                    ts: now,
                    collapsed: appended.collapsed,
                };
                work.ops
                    .push(Op::Adopt(target.slot.clone(), cached, origin));
                let over = needs_maintenance(target, default_retention, changelog_keep);
                if expires_at.is_some() || over {
                    self.dirty.insert(stream);
                }
            }
            Request::DeleteNote { stream, id, reply } => {
                if !self.streams.contains_key(&stream) {
                    drop(reply.send(Err(StoreError::UnknownStream(stream.to_string()))));
                    return Ok(());
                }
                let target = self.stream_or_create(&stream, work);
                let removed = remove_note(target, rows, id, work);
                work.answers.push(Answer::Flag(reply, removed));
            }
            Request::DeleteStream { stream, reply } => {
                let existed = match self.streams.remove(&stream) {
                    Some(target) => {
                        rows.stream_removed(stream.clone(), target.slot.id);
                        work.deleted_ids.push(target.slot.id);
                        work.ops.push(Op::Deleted(stream.clone()));
                        work.touched.insert(stream.clone());
                        self.dirty.remove(&stream);
                        true
                    }
                    None => false,
                };
                work.answers.push(Answer::Flag(reply, existed));
            }
            Request::SetRetention {
                stream,
                retention,
                reply,
            } => {
                if !self.streams.contains_key(&stream) {
                    drop(reply.send(Err(StoreError::UnknownStream(stream.to_string()))));
                    return Ok(());
                }
                let target = self.stream_or_create(&stream, work);
                target.retention = Some(retention);
                self.dirty.insert(stream);
                work.answers.push(Answer::Done(reply));
            }
            // The run loop handles these itself and never puts them in a batch; answering
            // keeps a caller from hanging if that ever changes.
            request @ (Request::Maintain { .. } | Request::Shutdown { .. }) => {
                request.fail("internal error: a control request reached a batch");
            }
        }
        Ok(())
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
            let Some(target) = self.streams.get_mut(&name) else {
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

/// The metadata row of a stream, with restore hints from its live state.
fn stream_meta(stream: &WriterStream) -> StreamMeta {
    let mut meta = StreamMeta {
        id: stream.slot.id,
        totals: stream.shadow.totals().clone(),
        revision: stream.shadow.revision(),
        next_note_id: stream.shadow.next_note_id(),
        retention: stream.retention,
        first_seq: stream.first_seq,
        changelog_floor: stream.changelog_floor,
        tail_start: None,
        severe_start: None,
        older_last_ts: None,
        goal_seqs: Vec::new(),
    };
    read(&stream.slot.live).restore_hints(&mut meta);
    meta
}

/// Encodes what one append or import did to a record: the record row, its severe index entry,
/// and for a repeat the changelog entry.
fn store_appended(
    target: &mut WriterStream,
    rows: &mut Rows,
    db: &Database,
    appended: &Appended,
    work: &mut Work,
) -> Result<(), StoreError> {
    let record = &appended.record;
    let id = target.slot.id;
    if appended.collapsed {
        let created = match target.created.iter().rev().find(|(s, _)| *s == record.seq) {
            Some((_, created)) => *created,
            // Created before this shadow was forked, so committed: the file has it.
            None => committed_creation(db, id, record.seq)?,
        };
        rows.record(id, record.seq, |out| {
            schema::encode_record(record, &created, out)
        });
        let entry = ChangeEntry::Repeat {
            seq: record.seq,
            repeat_count: record.repeat_count,
            last_ts: record.last_ts,
        };
        log_change(target, rows, work, record.revision, entry);
    } else {
        let created = Created::of(record);
        rows.record(id, record.seq, |out| {
            schema::encode_record(record, &created, out)
        });
        if record.severity >= Severity::Error {
            rows.severe(id, record.seq);
        }
        if target.created.len() == MAX_COLLAPSE_LOOKBACK {
            target.created.pop_front();
        }
        target.created.push_back((record.seq, created));
        work.changes.push(Change {
            stream: target.name.clone(),
            stream_id: id,
            revision: record.revision,
            body: ChangeBody::Record(record.clone()),
        });
    }
    Ok(())
}

/// How a committed record was created, read from the file.
fn committed_creation(db: &Database, stream: u64, seq: u64) -> Result<Created, StoreError> {
    let txn = db.begin_read()?;
    let records = txn.open_table(schema::RECORDS)?;
    let stored = records
        .get((stream, seq))?
        .ok_or_else(|| StoreError::Storage(format!("record {seq} is missing")))?;
    let (_, created) = schema::decode_record(seq, stored.value())
        .map_err(|error| StoreError::Storage(error.to_string()))?;
    Ok(created)
}

/// Adds a note to a stream's shadow and encodes its row and changelog entry; the caller adds
/// its audit record (`add_note` logs a new one, an import brings the exported one).
fn place_note(
    target: &mut WriterStream,
    rows: &mut Rows,
    work: &mut Work,
    text: String,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
) -> Note {
    let note = target.shadow.add_note(text, created_at, expires_at);
    let id = target.slot.id;
    rows.note(id, note.id, |out| schema::encode_note(&note, out));
    let revision = target.shadow.revision();
    log_change(
        target,
        rows,
        work,
        revision,
        ChangeEntry::Note(note.clone()),
    );
    work.ops
        .push(Op::AddNote(target.slot.clone(), note.clone()));
    note
}

/// Writes a change that is not a new record to the stream's changelog and publishes it.
fn log_change(
    target: &WriterStream,
    rows: &mut Rows,
    work: &mut Work,
    revision: u64,
    entry: ChangeEntry,
) {
    let id = target.slot.id;
    rows.change(id, revision, |out| schema::encode_change(&entry, out));
    work.changes.push(Change {
        stream: target.name.clone(),
        stream_id: id,
        revision,
        body: entry.into(),
    });
}

/// Removes a live note (a change with its own revision); `false` when there is none.
fn remove_note(target: &mut WriterStream, rows: &mut Rows, id: u64, work: &mut Work) -> bool {
    if !target.shadow.remove_note(id) {
        return false;
    }
    let revision = target.shadow.revision();
    rows.note_removed(target.slot.id, id);
    log_change(
        target,
        rows,
        work,
        revision,
        ChangeEntry::NoteDeleted { id },
    );
    work.ops.push(Op::RemoveNote(target.slot.clone(), id));
    work.touched.insert(target.name.clone());
    true
}

/// The `note` event that records a note in the event log; `payload.note_id` lets the context
/// leave it out while the note itself is pinned.
fn note_event(text: String, id: u64) -> Event {
    let mut payload = serde_json::Map::new();
    payload.insert(crate::context::NOTE_ID_KEY.into(), id.into());
    Event {
        message: text,
        kind: crate::event::Kind::new("note").expect("`note` is a valid kind"),
        severity: Severity::Info,
        ts: None,
        display_message: None,
        actor: None,
        step_id: None,
        payload: Some(payload),
    }
}

/// Times are kept to the microsecond; normalizing before anything is decided makes what a
/// caller is answered equal to what a later read returns.
fn at_micros(ts: Timestamp) -> Timestamp {
    ts.trunc_subsecs(6)
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
