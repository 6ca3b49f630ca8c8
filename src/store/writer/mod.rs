//! The one writer thread: group commit, the shadow state that assigns seqs and revisions, and
//! background maintenance (retention, note expiry, changelog trimming, purging deleted streams).
//!
//! # How a commit goes
//!
//! 1. The writer blocks for one request, then drains whatever else is queued, up to
//!    [`MAX_EVENTS_PER_COMMIT`] events (one caller's batch is never split).
//! 2. Each request is applied to the writer's *shadow* [`StreamState`] of its stream (which
//!    decides collapse, seq and revision) and written into one redb write transaction.
//! 3. The transaction commits with immediate durability (one fsync for the whole group).
//! 4. Only then does every operation reach, in the same order, the *live* [`StreamState`] that
//!    readers see (records are adopted exactly as the shadow placed them), the changes are
//!    published and the callers are answered.
//!
//! Why a shadow: readers must never see a change that is not durable, and a failed commit must
//! leave no trace. The shadow is a small fork of the live state (just the collapse lookback), so
//! keeping it costs little; the live state adopts the shadow's records, so both agree. When a
//! commit fails, every touched shadow is forked again from its live state, which is exactly the
//! committed state, and every caller of that commit gets the error.

mod live;
mod maintenance;

use live::{Notice, notify};
use maintenance::{maintain_stream, needs_maintenance, purge_rows};

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use indexmap::IndexSet;
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
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
}

/// What [`super::StoreMetrics`] reports.
#[derive(Default)]
pub(super) struct Counters {
    pub commits: AtomicU64,
    pub failed_commits: AtomicU64,
    pub events: AtomicU64,
    pub requests: AtomicU64,
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
    pub fn restore_hints(&self, meta: &mut StreamMeta) {
        meta.tail_start = self.state.tail_start_seq();
        meta.severe_start = self.state.severe_start_seq();
        meta.older_last_ts = self.state.older_last_ts();
    }
}

/// The writer's view of one stream: committed state plus what the current commit added.
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

/// What one commit did, applied or undone once the commit's fate is known.
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

/// Every table, open in one write transaction.
struct Tables<'txn> {
    meta: Table<'txn, &'static str, u64>,
    streams: Table<'txn, &'static str, &'static [u8]>,
    records: Table<'txn, (u64, u64), &'static [u8]>,
    severe: Table<'txn, (u64, u64), ()>,
    changes: Table<'txn, (u64, u64), &'static [u8]>,
    notes: Table<'txn, (u64, u64), &'static [u8]>,
    purge: Table<'txn, u64, ()>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            meta: txn.open_table(schema::META)?,
            streams: txn.open_table(schema::STREAMS)?,
            records: txn.open_table(schema::RECORDS)?,
            severe: txn.open_table(schema::SEVERE)?,
            changes: txn.open_table(schema::CHANGES)?,
            notes: txn.open_table(schema::NOTES)?,
            purge: txn.open_table(schema::PURGE)?,
        })
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    shared: Arc<Shared>,
    db: Arc<Database>,
    requests: Receiver<Request>,
    streams: HashMap<StreamName, WriterStream>,
    next_stream_id: u64,
    committed_next_stream_id: u64,
    /// Deleted streams whose rows are still in the file.
    purges: BTreeSet<u64>,
    /// Streams that may have retention, expiry or changelog trimming to do.
    dirty: BTreeSet<StreamName>,
    next_sweep: Instant,
    /// No background maintenance before this (set after a failed maintenance commit).
    backoff_until: Option<Instant>,
    notices: Option<mpsc::Sender<Notice>>,
    notifier: Option<std::thread::JoinHandle<()>>,
    buf: Vec<u8>,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        db: Arc<Database>,
        requests: Receiver<Request>,
        next_stream_id: u64,
        purges: BTreeSet<u64>,
    ) -> Result<Writer, StoreError> {
        let streams = read(&shared.streams)
            .iter()
            .map(|(name, slot)| {
                (
                    name.clone(),
                    WriterStream::from_slot(name.clone(), slot.clone()),
                )
            })
            .collect();
        let (notices, receiver) = mpsc::channel();
        let notifier = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("recap-store-notifier".into())
                .spawn(move || notify(shared, receiver))
                .map_err(|error| {
                    StoreError::Storage(format!("cannot start the notifier: {error}"))
                })?
        };
        Ok(Writer {
            shared,
            db,
            requests,
            streams,
            next_stream_id,
            committed_next_stream_id: next_stream_id,
            purges,
            dirty: BTreeSet::new(),
            // Look at every stream once soon after opening.
            next_sweep: Instant::now(),
            backoff_until: None,
            notices: Some(notices),
            notifier: Some(notifier),
            buf: Vec::with_capacity(1024),
        })
    }

    /// Lets the notifier finish every answer, then stops it.
    fn stop_notifier(&mut self) {
        self.notices.take();
        if let Some(notifier) = self.notifier.take() {
            drop(notifier.join());
        }
    }

    /// Serves requests until shut down or until every `Store` handle is gone.
    pub(super) fn run(mut self) {
        loop {
            let first = if self.maintenance_pending() {
                match self.requests.try_recv() {
                    Ok(request) => Some(request),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                let wait = self.next_sweep.saturating_duration_since(Instant::now());
                match self.requests.recv_timeout(wait) {
                    Ok(request) => Some(request),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            if Instant::now() >= self.next_sweep {
                self.sweep();
            }
            let Some(first) = first else {
                // Idle: one bounded maintenance step in its own transaction. After a failure
                // (already logged) wait a while rather than spin on a failing disk.
                if self.maintenance_pending() && self.commit(Vec::new(), Utc::now(), true).is_err()
                {
                    self.backoff_until = Some(Instant::now() + MAINTENANCE_INTERVAL);
                }
                continue;
            };
            let mut batch = Vec::new();
            let mut events = first.events();
            let mut control = None;
            match first {
                request @ (Request::Maintain { .. } | Request::Shutdown { .. }) => {
                    control = Some(request)
                }
                request => batch.push(request),
            }
            while control.is_none() && events < MAX_EVENTS_PER_COMMIT {
                match self.requests.try_recv() {
                    Ok(request @ (Request::Maintain { .. } | Request::Shutdown { .. })) => {
                        control = Some(request)
                    }
                    Ok(request) => {
                        events += request.events();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                // A failure has been logged and answered to every caller of the batch.
                let _ = self.commit(batch, Utc::now(), true);
            }
            match control {
                Some(Request::Maintain { now, reply }) => self.maintain_fully(now, reply),
                Some(Request::Shutdown { reply }) => {
                    let result = self.save_restore_hints();
                    self.stop_notifier();
                    drop(reply.send(result));
                    return;
                }
                _ => {}
            }
        }
        // Every handle is gone: leave exact restore hints behind for the next open.
        if let Err(error) = self.save_restore_hints() {
            tracing::warn!(%error, "could not save restore hints on shutdown");
        }
        self.stop_notifier();
    }

    fn maintenance_pending(&self) -> bool {
        let backing_off = self
            .backoff_until
            .is_some_and(|until| Instant::now() < until);
        !backing_off && (!self.purges.is_empty() || !self.dirty.is_empty())
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
            if let Err(error) = self.commit(Vec::new(), now, true) {
                drop(reply.send(Err(error)));
                return;
            }
        }
        // What maintenance did is visible before the caller hears it is done.
        self.flush();
        drop(reply.send(Ok(())));
    }

    /// Writes every stream's metadata with restore hints taken from its live state, which is
    /// exact now that nothing is pending.
    fn save_restore_hints(&mut self) -> Result<(), StoreError> {
        self.flush();
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

    /// Applies `batch` (and one maintenance step, if `maintain` and any is due) in one durable
    /// transaction, then publishes or undoes it.
    fn commit(
        &mut self,
        batch: Vec<Request>,
        now: Timestamp,
        maintain: bool,
    ) -> Result<(), StoreError> {
        // Sized up front: a group commit can carry thousands of events, and growing these
        // vectors one push at a time showed up as a tenth of the writer's time.
        let events: usize = batch.iter().map(Request::events).sum();
        let mut work = Work {
            ops: Vec::with_capacity(events),
            answers: Vec::with_capacity(batch.len()),
            changes: Vec::with_capacity(events),
            ..Work::default()
        };
        let result = self.begin().and_then(|txn| {
            self.write(&txn, batch, now, maintain, &mut work)?;
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
                self.undo(work, &error.to_string());
                Err(error)
            }
        }
    }

    fn write(
        &mut self,
        txn: &WriteTransaction,
        batch: Vec<Request>,
        now: Timestamp,
        maintain: bool,
        work: &mut Work,
    ) -> Result<(), StoreError> {
        let mut tables = Tables::open(txn)?;
        for request in batch {
            self.apply(&mut tables, request, work)?;
        }
        if maintain && self.maintenance_pending() {
            self.maintenance_step(&mut tables, now, work)?;
        }
        for name in &work.touched {
            if let Some(stream) = self.streams.get(name) {
                let meta = stream_meta(stream);
                tables
                    .streams
                    .insert(name.as_str(), schema::encode_meta(&meta).as_slice())?;
                work.ops.push(Op::Settings(
                    stream.slot.clone(),
                    stream.retention,
                    stream.first_seq,
                    stream.changelog_floor,
                ));
            }
        }
        if self.next_stream_id != self.committed_next_stream_id {
            tables
                .meta
                .insert(schema::NEXT_STREAM_ID_KEY, self.next_stream_id)?;
        }
        Ok(())
    }

    /// The stream named `name`, created (with a fresh id) if it does not exist.
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

    fn apply(
        &mut self,
        tables: &mut Tables<'_>,
        request: Request,
        work: &mut Work,
    ) -> Result<(), StoreError> {
        let default_retention = self.shared.options.retention;
        let changelog_keep = self.shared.options.changelog_keep;
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
                let mut buf = std::mem::take(&mut self.buf);
                let target = self.stream_or_create(&stream, work);
                let mut results = Vec::with_capacity(events.len());
                for event in events {
                    let ts = at_micros(event.ts.unwrap_or(now));
                    let (appended, cached) = target.shadow.append_shared(event, ts);
                    store_appended(target, tables, &appended, &mut buf, work)?;
                    let origin = Origin::Event {
                        ts,
                        collapsed: appended.collapsed,
                    };
                    work.ops
                        .push(Op::Adopt(target.slot.clone(), cached, origin));
                    results.push(appended);
                }
                let over = needs_maintenance(target, default_retention, changelog_keep);
                self.buf = buf;
                if over {
                    self.dirty.insert(stream);
                }
                work.answers.push(Answer::Appended(reply, results));
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
                let mut buf = std::mem::take(&mut self.buf);
                let target = self.stream_or_create(&stream, work);
                let mut results = Vec::with_capacity(records.len());
                for imported in records {
                    let (appended, cached) = target.shadow.import_shared(
                        imported.event,
                        at_micros(imported.first_ts),
                        at_micros(imported.last_ts),
                        imported.repeat_count,
                    );
                    store_appended(target, tables, &appended, &mut buf, work)?;
                    work.ops
                        .push(Op::Adopt(target.slot.clone(), cached, Origin::Import));
                    results.push(appended);
                }
                let over = needs_maintenance(target, default_retention, changelog_keep);
                self.buf = buf;
                if over {
                    self.dirty.insert(stream);
                }
                work.answers.push(Answer::Appended(reply, results));
            }
            Request::AddNote {
                stream,
                text,
                expires_at,
                now,
                reply,
            } => {
                let now = at_micros(now);
                let expires_at = expires_at.map(at_micros);
                let mut buf = std::mem::take(&mut self.buf);
                let target = self.stream_or_create(&stream, work);
                let note = target.shadow.add_note(text.clone(), now, expires_at);
                schema::encode_note(&note, &mut buf);
                tables
                    .notes
                    .insert((target.slot.id, note.id), buf.as_slice())?;
                let revision = target.shadow.revision();
                schema::encode_change(&ChangeEntry::Note(note.clone()), &mut buf);
                tables
                    .changes
                    .insert((target.slot.id, revision), buf.as_slice())?;
                work.changes.push(Change {
                    stream: stream.clone(),
                    revision,
                    body: ChangeBody::Note(note.clone()),
                });
                work.ops
                    .push(Op::AddNote(target.slot.clone(), note.clone()));
                // The audit trail: the note is also an event of the stream (DESIGN section 2).
                let event = note_event(text, note.id);
                let (appended, cached) = target.shadow.append_shared(event, now);
                store_appended(target, tables, &appended, &mut buf, work)?;
                let origin = Origin::Event {
                    ts: now,
                    collapsed: appended.collapsed,
                };
                let adopt = Op::Adopt(target.slot.clone(), cached, origin);
                work.ops.push(adopt);
                let over = needs_maintenance(target, default_retention, changelog_keep);
                self.buf = buf;
                if expires_at.is_some() || over {
                    self.dirty.insert(stream);
                }
                work.answers.push(Answer::Note(reply, note));
            }
            Request::DeleteNote { stream, id, reply } => {
                if !self.streams.contains_key(&stream) {
                    drop(reply.send(Err(StoreError::UnknownStream(stream.to_string()))));
                    return Ok(());
                }
                let mut buf = std::mem::take(&mut self.buf);
                let target = self.stream_or_create(&stream, work);
                let removed = remove_note(target, tables, id, &mut buf, work)?;
                self.buf = buf;
                work.answers.push(Answer::Flag(reply, removed));
            }
            Request::DeleteStream { stream, reply } => {
                let existed = match self.streams.remove(&stream) {
                    Some(target) => {
                        tables.streams.remove(stream.as_str())?;
                        tables.purge.insert(target.slot.id, ())?;
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
            Request::Maintain { reply, .. } => {
                // The run loop takes these out of batches; answering keeps a caller from hanging.
                work.answers.push(Answer::Done(reply));
            }
            Request::Shutdown { reply } => drop(reply.send(Ok(()))),
        }
        Ok(())
    }

    /// One bounded step of background work: purge deleted streams, expire notes, apply
    /// retention, trim changelogs.
    fn maintenance_step(
        &mut self,
        tables: &mut Tables<'_>,
        now: Timestamp,
        work: &mut Work,
    ) -> Result<(), StoreError> {
        let mut budget = MAINTENANCE_CHUNK_ROWS;
        for id in self.purges.clone() {
            if budget == 0 {
                return Ok(());
            }
            let removed = purge_rows(tables, id, budget)?;
            budget -= removed.min(budget);
            if budget > 0 {
                tables.purge.remove(id)?;
                work.purged.push(id);
            }
        }
        let default_retention = self.shared.options.retention;
        let keep = self.shared.options.changelog_keep;
        let names: Vec<StreamName> = self.dirty.iter().cloned().collect();
        let mut buf = std::mem::take(&mut self.buf);
        for name in names {
            if budget == 0 {
                break;
            }
            let Some(target) = self.streams.get_mut(&name) else {
                self.dirty.remove(&name);
                continue;
            };
            let done = maintain_stream(
                target,
                tables,
                now,
                default_retention,
                keep,
                &mut budget,
                &mut buf,
                work,
            )?;
            if done {
                self.dirty.remove(&name);
            }
        }
        self.buf = buf;
        Ok(())
    }

    /// After a durable commit: replay on the live states, answer, publish.
    fn publish(&mut self, work: Work) {
        let counters = &self.shared.counters;
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters
            .requests
            .fetch_add(work.answers.len() as u64, Ordering::Relaxed);
        let events: usize = work
            .answers
            .iter()
            .map(|answer| match answer {
                Answer::Appended(_, appended) => appended.len(),
                _ => 0,
            })
            .sum();
        counters.events.fetch_add(events as u64, Ordering::Relaxed);
        let Work {
            ops,
            answers,
            changes,
            deleted_ids,
            purged,
            ..
        } = work;
        self.committed_next_stream_id = self.next_stream_id;
        self.purges.extend(deleted_ids);
        for id in purged {
            self.purges.remove(&id);
        }
        self.notify(Notice::Committed {
            ops,
            changes,
            answers,
        });
    }

    fn notify(&self, notice: Notice) {
        if let Some(notices) = &self.notices {
            // The notifier only stops after the writer drops this sender.
            drop(notices.send(notice));
        }
    }

    /// Waits until the notifier has applied every commit to the live states.
    fn flush(&self) {
        let (done, finished) = mpsc::channel();
        self.notify(Notice::Flush(done));
        // An error means the notifier is gone, and with it anything to wait for.
        let _ = finished.recv();
    }

    /// After a failed commit: fail every caller and rebuild every touched stream from its live
    /// (committed) state.
    fn undo(&mut self, work: Work, detail: &str) {
        self.shared
            .counters
            .failed_commits
            .fetch_add(1, Ordering::Relaxed);
        // The live states must be the committed ones before they are forked again.
        self.flush();
        for answer in work.answers {
            answer.send(Some(detail));
        }
        self.next_stream_id = self.committed_next_stream_id;
        let live = read(&self.shared.streams);
        for name in work.touched {
            match live.get(&name) {
                Some(slot) => {
                    let stream = WriterStream::from_slot(name.clone(), slot.clone());
                    self.streams.insert(name.clone(), stream);
                    // Retention or trimming may have been undone too.
                    self.dirty.insert(name);
                }
                None => {
                    self.streams.remove(&name);
                }
            }
        }
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
    };
    read(&stream.slot.live).restore_hints(&mut meta);
    meta
}

/// Writes what one append or import did to a record: the record row, its severe index entry,
/// and for a repeat the changelog entry.
fn store_appended(
    target: &mut WriterStream,
    tables: &mut Tables<'_>,
    appended: &Appended,
    buf: &mut Vec<u8>,
    work: &mut Work,
) -> Result<(), StoreError> {
    let record = &appended.record;
    let id = target.slot.id;
    if appended.collapsed {
        let created = match target.created.iter().rev().find(|(s, _)| *s == record.seq) {
            Some((_, created)) => *created,
            None => {
                let stored = tables.records.get((id, record.seq))?.ok_or_else(|| {
                    StoreError::Storage(format!("record {} is missing", record.seq))
                })?;
                schema::decode_record(record.seq, stored.value())
                    .map_err(|error| StoreError::Storage(error.to_string()))?
                    .1
            }
        };
        schema::encode_record(record, &created, buf);
        tables.records.insert((id, record.seq), buf.as_slice())?;
        let entry = ChangeEntry::Repeat {
            seq: record.seq,
            repeat_count: record.repeat_count,
            last_ts: record.last_ts,
        };
        schema::encode_change(&entry, buf);
        tables
            .changes
            .insert((id, record.revision), buf.as_slice())?;
        work.changes.push(Change {
            stream: target.name.clone(),
            revision: record.revision,
            body: ChangeBody::Repeat {
                seq: record.seq,
                repeat_count: record.repeat_count,
                last_ts: record.last_ts,
            },
        });
    } else {
        let created = Created::of(record);
        schema::encode_record(record, &created, buf);
        tables.records.insert((id, record.seq), buf.as_slice())?;
        if record.severity >= Severity::Error {
            tables.severe.insert((id, record.seq), ())?;
        }
        if target.created.len() == MAX_COLLAPSE_LOOKBACK {
            target.created.pop_front();
        }
        target.created.push_back((record.seq, created));
        work.changes.push(Change {
            stream: target.name.clone(),
            revision: record.revision,
            body: ChangeBody::Record(record.clone()),
        });
    }
    Ok(())
}

fn remove_note(
    target: &mut WriterStream,
    tables: &mut Tables<'_>,
    id: u64,
    buf: &mut Vec<u8>,
    work: &mut Work,
) -> Result<bool, StoreError> {
    if !target.shadow.remove_note(id) {
        return Ok(false);
    }
    let revision = target.shadow.revision();
    tables.notes.remove((target.slot.id, id))?;
    schema::encode_change(&ChangeEntry::NoteDeleted { id }, buf);
    tables
        .changes
        .insert((target.slot.id, revision), buf.as_slice())?;
    work.changes.push(Change {
        stream: target.name.clone(),
        revision,
        body: ChangeBody::NoteDeleted { id },
    });
    work.ops.push(Op::RemoveNote(target.slot.clone(), id));
    work.touched.insert(target.name.clone());
    Ok(true)
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
