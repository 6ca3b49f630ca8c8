//! The node's writer task: group commit in one transaction per batch, with the streams' rows
//! locked so that writers on every node take turns per stream.
//!
//! A batch goes:
//!
//! 1. Take one request, then whatever else is queued, up to [`MAX_EVENTS_PER_COMMIT`] events
//!    (one caller's request is never split: all or nothing).
//! 2. `BEGIN`; create the rows of streams written for the first time (`ON CONFLICT DO
//!    NOTHING`, in name order), then lock every stream row the batch touches (`FOR UPDATE`,
//!    in name order, so two nodes never wait on each other in a cycle).
//! 3. For each locked stream, the node's *shadow* (the newest records collapse can reach, the
//!    notes, the totals) is used if its revision is the row's; otherwise another node wrote
//!    since, and it is read again from the database, under the lock. Placement is the redb
//!    writer's: [`StreamState::append_shared`] decides collapse, seq and revision.
//! 4. Records (final state per seq), changes, notes and stream rows are written with one
//!    statement per table (arrays through `unnest`), `max_records` retention is applied, and
//!    the transaction commits. Only then are callers answered and the shadows kept.
//!
//! A failed transaction leaves no trace: the shadows it touched are dropped (taken out of the
//! cache for the batch, put back only after the commit), and every caller gets the error. A
//! deadlock or serialization failure is retried; an unreachable database answers
//! [`StoreError::Unavailable`] and the next batch connects again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, Transaction};

use crate::anomaly::{self, AnomalyOverrides, DetectorState};
use crate::context::NOTE_ID_KEY;
use crate::context::PayloadPolicy;
use crate::event::{Event, MAX_EVENT_COUNT, Note, Record, StreamName, Timestamp};
use crate::meter::Meter;
use crate::payload::Payload;
use crate::stream::{Appended, StreamState, TailCapacity};

use super::super::tail_book::TailBook;
use super::super::writer::{at_micros, note_event, note_limit};
use super::super::{
    ChangeBody, ImportedRecord, MAX_EVENTS_PER_COMMIT, Retention, StoreError, StoreOptions,
};
use super::cache::{CatchUp, NodeCache};
use super::codec::Restore;
use super::load::{self, OVERRIDES_COLUMN, STREAM_COLUMNS, StreamRow};
use super::tls::Tls;
use super::{BATCH_TIMEOUT, PgError, codec, connect, listen, statements, unreachable_or};

mod maintain;

/// How often a batch that lost a deadlock or serialization race is tried again.
pub(super) const MAX_RETRIES: usize = 5;

/// A write, as the writer applies it (kept apart from its reply, so a retried batch applies it
/// again).
#[derive(Clone)]
pub(super) enum Op {
    Append {
        stream: StreamName,
        events: Vec<Event>,
        now: Timestamp,
    },
    Import {
        stream: StreamName,
        records: Vec<ImportedRecord>,
    },
    AddNote {
        stream: StreamName,
        text: String,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    },
    DeleteNote {
        stream: StreamName,
        id: u64,
    },
    DeleteStream {
        stream: StreamName,
    },
    SetRetention {
        stream: StreamName,
        retention: Retention,
    },
    SetAnomalies {
        stream: StreamName,
        overrides: AnomalyOverrides,
    },
}

impl Op {
    fn stream(&self) -> &StreamName {
        match self {
            Op::Append { stream, .. }
            | Op::Import { stream, .. }
            | Op::AddNote { stream, .. }
            | Op::DeleteNote { stream, .. }
            | Op::DeleteStream { stream }
            | Op::SetRetention { stream, .. }
            | Op::SetAnomalies { stream, .. } => stream,
        }
    }

    /// Whether the op creates its stream when it does not exist.
    fn creates(&self) -> bool {
        matches!(
            self,
            Op::Append { .. } | Op::Import { .. } | Op::AddNote { .. }
        )
    }

    fn events(&self) -> usize {
        match self {
            Op::Append { events, .. } => events.len(),
            Op::Import { records, .. } => records.len(),
            _ => 1,
        }
    }
}

/// Where a request's answer goes.
pub(super) enum Reply {
    Appended(oneshot::Sender<Result<Vec<Appended>, StoreError>>),
    Note(oneshot::Sender<Result<Note, StoreError>>),
    Flag(oneshot::Sender<Result<bool, StoreError>>),
    Done(oneshot::Sender<Result<(), StoreError>>),
}

/// What the writer task takes.
pub(super) enum Request {
    /// A write, batched with others.
    Write(Queued),
    /// Background work as of `now` (see `maintain.rs`), run alone between batches.
    Maintain {
        now: Timestamp,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A write waiting for the writer.
pub(super) struct Queued {
    pub op: Op,
    pub reply: Reply,
}

/// What a request came to.
enum Outcome {
    Appended(Vec<Appended>),
    Note(Note),
    Flag(bool),
    Done,
    /// Refused before anything was placed (a note limit, an unknown stream): not the batch's
    /// failure.
    Refused(StoreError),
}

impl Reply {
    fn answer(self, outcome: Result<Outcome, StoreError>) {
        fn send<T>(sender: oneshot::Sender<Result<T, StoreError>>, value: Result<T, StoreError>) {
            // A caller that stopped waiting does not need its answer.
            drop(sender.send(value));
        }
        match (self, outcome) {
            (reply, Err(error)) | (reply, Ok(Outcome::Refused(error))) => match reply {
                Reply::Appended(sender) => send(sender, Err(error)),
                Reply::Note(sender) => send(sender, Err(error)),
                Reply::Flag(sender) => send(sender, Err(error)),
                Reply::Done(sender) => send(sender, Err(error)),
            },
            (Reply::Appended(sender), Ok(Outcome::Appended(appended))) => {
                send(sender, Ok(appended))
            }
            (Reply::Note(sender), Ok(Outcome::Note(note))) => send(sender, Ok(note)),
            (Reply::Flag(sender), Ok(Outcome::Flag(flag))) => send(sender, Ok(flag)),
            (Reply::Done(sender), Ok(Outcome::Done)) => send(sender, Ok(())),
            (reply, Ok(_)) => reply.answer(Err(StoreError::storage_text(
                "internal error: a request got another request's kind of answer",
            ))),
        }
    }
}

/// The writer's view of one stream: what placement needs, as of the stream row's revision.
pub(super) struct Shadow {
    pub(super) id: u64,
    pub(super) state: StreamState,
    pub(super) first_seq: u64,
    pub(super) retention: Option<Retention>,
    /// Changes with revision up to this one are trimmed from `recap_changes`.
    pub(super) changelog_floor: u64,
    /// What a restore of the readers' state needs besides the rows (see [`TailBook`]).
    pub(super) book: TailBook,
    /// The anomaly detectors' state, as of the shadow's revision (see [`crate::anomaly`]).
    pub(super) detectors: Option<Box<DetectorState>>,
    /// What the stream overrides of the server's anomaly settings.
    pub(super) anomalies: Option<AnomalyOverrides>,
}

impl Shadow {
    /// Keeps the book of the readers' tail after placing a record.
    fn placed(&mut self, tail: TailCapacity, appended: &Appended) {
        let record = &appended.record;
        if !appended.collapsed {
            let lookback = self.state.policy().lookback;
            self.book.created(tail, lookback, record);
        }
        let last_seq = self.state.totals().records;
        self.book
            .took_last_ts(tail, record.seq, record.last_ts, last_seq);
    }

    /// Runs the anomaly detectors on an event just placed (`appended`, at `ts`; see
    /// [`anomaly::Observer`], which the redb writer runs too) and places what they raise now:
    /// new anomaly records, and updates held back before them. In the batch of the event, so in
    /// its commit.
    fn observe(
        &mut self,
        observer: &mut anomaly::Observer,
        tail: TailCapacity,
        server: anomaly::AnomalySettings,
        appended: &Appended,
        ts: Timestamp,
        writes: &mut Writes,
    ) {
        let raised = observer.observe(
            &mut self.detectors,
            self.anomalies.as_ref(),
            server,
            &mut self.state,
            appended,
            ts,
            self.first_seq,
        );
        self.place_anomalies(tail, raised, writes);
    }

    /// Places the next versions of open episodes' records held back until the end of a request.
    fn finish_observing(
        &mut self,
        observer: anomaly::Observer,
        tail: TailCapacity,
        writes: &mut Writes,
    ) {
        let raised = observer.finish(&mut self.detectors, &mut self.state, self.first_seq);
        self.place_anomalies(tail, raised, writes);
    }

    fn place_anomalies(
        &mut self,
        tail: TailCapacity,
        raised: Vec<anomaly::Raised>,
        writes: &mut Writes,
    ) {
        for raised in raised {
            // A new record, or a revised one (`collapsed`): logged as any record or repeat.
            self.placed(tail, &raised.appended);
            writes.appended(self.id, &raised.appended);
        }
    }

    /// What the stream's row keeps for a restore.
    pub(super) fn restore(&self) -> Restore {
        Restore {
            book: self.book.clone(),
            first_goals: self.state.first_goal_seqs(),
            latest_goal: self.state.latest_goal_seq(),
        }
    }
}

/// Most shadows a node keeps between batches; beyond it, only the last batch's are kept (the
/// others are read again when next written). Each holds at most `lookback` records.
const MAX_SHADOWS: usize = 4_096;

/// Why a batch failed.
enum BatchError {
    Database(PgError),
    Store(StoreError),
}

impl From<PgError> for BatchError {
    fn from(error: PgError) -> BatchError {
        BatchError::Database(error)
    }
}

impl From<StoreError> for BatchError {
    fn from(error: StoreError) -> BatchError {
        BatchError::Store(error)
    }
}

impl BatchError {
    /// A lost race with another node's transaction: trying again is correct.
    fn retryable(&self) -> bool {
        matches!(self, BatchError::Database(error)
            if error.as_db_error().is_some_and(|db| matches!(db.code().code(), "40P01" | "40001")))
    }

    fn into_store(self) -> StoreError {
        match self {
            BatchError::Database(error) => unreachable_or(error, "writing"),
            BatchError::Store(error) => error,
        }
    }
}

/// The writes a batch makes, gathered while placing and sent one statement per table.
#[derive(Default)]
pub(super) struct Writes {
    /// Final state of every record created or changed, by (stream id, seq).
    pub(super) records: BTreeMap<(u64, u64), Arc<Record>>,
    pub(super) changes: Vec<(u64, u64, String)>,
    pub(super) notes_added: Vec<(u64, u64, String)>,
    pub(super) notes_removed: Vec<(u64, u64)>,
    /// Stream ids whose rows go (their stream was deleted), and their names.
    pub(super) deleted: Vec<u64>,
    pub(super) deleted_names: Vec<StreamName>,
    /// `(stream id, first seq stored before, first seq kept)` of streams retention trims.
    pub(super) trimmed: Vec<(u64, u64, u64)>,
    /// `(stream id, new changelog floor)` of streams whose changelog is trimmed.
    pub(super) floors: Vec<(u64, u64)>,
}

impl Writes {
    fn change(&mut self, id: u64, revision: u64, body: &ChangeBody) {
        self.changes
            .push((id, revision, codec::encode_change(body)));
    }

    /// Logs what an append or import did to a record.
    fn appended(&mut self, id: u64, appended: &Appended) {
        let record = &appended.record;
        let body = if appended.collapsed {
            ChangeBody::Repeat {
                seq: record.seq,
                repeat_count: record.repeat_count,
                last_ts: record.last_ts,
            }
        } else {
            ChangeBody::Record(Arc::clone(record))
        };
        self.change(id, record.revision, &body);
        self.records.insert((id, record.seq), Arc::clone(record));
    }

    fn note_added(&mut self, id: u64, note: &Note, revision: u64) {
        self.notes_added
            .push((id, note.id, codec::encode_note(note)));
        self.change(id, revision, &ChangeBody::Note(note.clone()));
    }
}

/// The node's writer: one connection, the shadows of the streams it wrote.
pub(super) struct Writer {
    config: tokio_postgres::Config,
    tls: Tls,
    place: String,
    options: StoreOptions,
    client: Option<Client>,
    shadows: HashMap<StreamName, Shadow>,
    meter: Meter,
    counters: Arc<Counters>,
    /// The node's cache of stream states, told of each commit before its callers are answered.
    cache: Arc<NodeCache>,
}

/// What a node's writer has done since it started (see [`super::PgMetrics`]).
#[derive(Default)]
pub(super) struct Counters {
    pub commits: AtomicU64,
    pub failed_commits: AtomicU64,
    pub retries: AtomicU64,
    pub shadow_loads: AtomicU64,
    pub requests: AtomicU64,
    pub events: AtomicU64,
}

impl Writer {
    pub(super) fn new(
        config: tokio_postgres::Config,
        tls: Tls,
        place: String,
        options: StoreOptions,
        counters: Arc<Counters>,
        cache: Arc<NodeCache>,
    ) -> Writer {
        Writer {
            config,
            tls,
            place,
            options,
            client: None,
            shadows: HashMap::new(),
            meter: Meter::detached(),
            counters,
            cache,
        }
    }

    /// Takes batches until every [`super::PgStore`] handle is gone. A maintenance request runs
    /// alone, between batches: a batch is cut short when one is next in line.
    pub(super) async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let mut next = None;
        loop {
            let request = match next.take() {
                Some(request) => request,
                None => match requests.recv().await {
                    Some(request) => request,
                    None => return,
                },
            };
            let first = match request {
                Request::Write(queued) => queued,
                Request::Maintain { now, reply } => {
                    let result = self.maintain(now).await;
                    // A caller that stopped waiting does not need its answer.
                    drop(reply.send(result));
                    continue;
                }
            };
            let mut events = first.op.events();
            let mut batch = vec![first];
            while events < MAX_EVENTS_PER_COMMIT {
                match requests.try_recv() {
                    Ok(Request::Write(queued)) => {
                        events += queued.op.events();
                        batch.push(queued);
                    }
                    Ok(maintain) => {
                        next = Some(maintain);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch).await;
        }
    }

    /// Commits one batch and answers its callers.
    async fn commit(&mut self, batch: Vec<Queued>) {
        let (ops, replies): (Vec<Op>, Vec<Reply>) = batch
            .into_iter()
            .map(|queued| (queued.op, queued.reply))
            .unzip();
        let mut attempt = 0;
        let result = loop {
            let tried = tokio::time::timeout(BATCH_TIMEOUT, self.attempt(&ops)).await;
            match tried {
                Ok(Ok(outcomes)) => break Ok(outcomes),
                Ok(Err(error)) if error.retryable() && attempt < MAX_RETRIES => {
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                }
                Ok(Err(error)) => {
                    if matches!(error, BatchError::Database(_)) {
                        self.drop_connection_if_closed();
                    }
                    break Err(error.into_store());
                }
                Err(_elapsed) => {
                    // The connection is in an unknown state: start afresh.
                    self.client = None;
                    // Not acknowledged; if the database committed it meanwhile, it is there.
                    break Err(StoreError::Unavailable(format!(
                        "the database did not answer within {} s; the request was not acknowledged",
                        BATCH_TIMEOUT.as_secs()
                    )));
                }
            }
        };
        match result {
            Ok(outcomes) => {
                let events: usize = outcomes
                    .iter()
                    .map(|outcome| match outcome {
                        Outcome::Appended(appended) => appended.len(),
                        _ => 0,
                    })
                    .sum();
                let counters = &self.counters;
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters
                    .requests
                    .fetch_add(replies.len() as u64, Ordering::Relaxed);
                counters.events.fetch_add(events as u64, Ordering::Relaxed);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    reply.answer(Ok(outcome));
                }
            }
            Err(error) => {
                self.counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(database = %self.place, %error, "a batch of writes failed");
                for reply in replies {
                    reply.answer(Err(error.for_caller()));
                }
            }
        }
    }

    fn drop_connection_if_closed(&mut self) {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
    }

    /// One try at a batch: its outcomes once committed.
    async fn attempt(&mut self, ops: &[Op]) -> Result<Vec<Outcome>, BatchError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let (client, _driver) = connect(&self.config, &self.tls, &self.place).await?;
            self.client = Some(client);
        }
        let mut client = self.client.take().expect("connected just above");
        let result = self.in_transaction(&mut client, ops).await;
        self.client = Some(client);
        result
    }

    async fn in_transaction(
        &mut self,
        client: &mut Client,
        ops: &[Op],
    ) -> Result<Vec<Outcome>, BatchError> {
        let transaction = client.transaction().await?;
        let created: Vec<String> = ops
            .iter()
            .filter(|op| op.creates())
            .map(|op| op.stream().to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut new_names = BTreeSet::new();
        if !created.is_empty() {
            let rows = transaction
                .query(
                    "INSERT INTO recap_streams (name)
                     SELECT name FROM unnest($1::text[]) AS name ORDER BY name
                     ON CONFLICT (name) DO NOTHING RETURNING name",
                    &[&created],
                )
                .await?;
            new_names.extend(rows.iter().map(|row| row.get::<_, String>(0)));
        }
        let names: BTreeSet<String> = ops.iter().map(|op| op.stream().to_string()).collect();
        let (mut batch, before) = self.lock_shadows(&transaction, names).await?;
        let mut writes = Writes::default();
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            let outcome = self
                .place(&transaction, op.clone(), &mut batch, &mut writes)
                .await?;
            outcomes.push(outcome);
        }
        self.trim(&mut batch, &mut writes);
        note_removed(&transaction, &mut batch, &writes).await?;
        statements::write(&transaction, &batch, &writes).await?;
        // A stream created by this batch whose requests were all refused is not kept.
        let empty: Vec<i64> = batch
            .iter()
            .filter(|(name, shadow)| {
                new_names.contains(name.as_str()) && shadow.state.revision() == 0
            })
            .map(|(_, shadow)| shadow.id as i64)
            .collect();
        if !empty.is_empty() {
            transaction
                .execute("DELETE FROM recap_streams WHERE id = ANY($1)", &[&empty])
                .await?;
        }
        self.finish(transaction, batch, &writes, &before, &[])
            .await?;
        Ok(outcomes)
    }

    /// Locks the rows of the streams `names` (those that exist), in name order, and brings
    /// each one's shadow: the node's own if it is as the row says, otherwise read under the
    /// lock. Returns the shadows (out of the node's keeping until the commit) and each stream's
    /// revision before the batch, by id.
    async fn lock_shadows(
        &mut self,
        transaction: &Transaction<'_>,
        names: BTreeSet<String>,
    ) -> Result<(HashMap<StreamName, Shadow>, HashMap<u64, u64>), BatchError> {
        let names: Vec<String> = names.into_iter().collect();
        let rows = transaction
            .query(
                &format!(
                    "SELECT {STREAM_COLUMNS} FROM recap_streams WHERE name = ANY($1)
                     ORDER BY name FOR UPDATE"
                ),
                &[&names],
            )
            .await?;
        let mut batch: HashMap<StreamName, Shadow> = HashMap::new();
        let mut before: HashMap<u64, u64> = HashMap::new();
        for row in &rows {
            let name: String = row.get(1);
            let name = StreamName::new(&name).map_err(|_| StoreError::Damaged {
                stream: name.clone(),
                row: "stream row".into(),
                problem: "has a name that is not a valid stream name".into(),
            })?;
            let id = row.get::<_, i64>(0) as u64;
            let revision = row.get::<_, i64>(2) as u64;
            before.insert(id, revision);
            // Maintenance on any node moves the first stored seq and the changelog floor
            // without a new revision, and settings change without one too: the shadow is the
            // row's only if all of these agree, and takes the row's settings.
            let first_seq = row.get::<_, i64>(4) as u64;
            let changelog_floor = row.get::<_, i64>(8) as u64;
            let cached = self.shadows.remove(&name).filter(|shadow| {
                shadow.id == id
                    && shadow.state.revision() == revision
                    && shadow.first_seq == first_seq
                    && shadow.changelog_floor == changelog_floor
            });
            let shadow = match cached {
                Some(mut shadow) => {
                    shadow.retention = codec::decode_retention(name.as_str(), row.get(7))?;
                    shadow.anomalies =
                        codec::decode_overrides(name.as_str(), row.get(OVERRIDES_COLUMN))?;
                    shadow
                }
                None => {
                    // A stream this batch creates has nothing to read back.
                    if revision > 0 {
                        self.counters.shadow_loads.fetch_add(1, Ordering::Relaxed);
                    }
                    self.load(transaction, &name, row).await?
                }
            };
            batch.insert(name, shadow);
        }
        Ok((batch, before))
    }

    /// Announces and commits a batch's transaction, then brings the node's cache and shadows
    /// up to it. `trimmed` names streams that lost records without taking a revision
    /// (maintenance): other nodes are told to read their rows again.
    async fn finish(
        &mut self,
        transaction: Transaction<'_>,
        batch: HashMap<StreamName, Shadow>,
        writes: &Writes,
        before: &HashMap<u64, u64>,
        trimmed: &[&StreamName],
    ) -> Result<(), BatchError> {
        // One notification per batch (split only past PostgreSQL's payload limit), delivered to
        // every listening node at the commit, never for a batch that is rolled back.
        let changed: Vec<(&StreamName, u64)> = writes
            .deleted_names
            .iter()
            .map(|name| (name, 0))
            .chain(
                batch
                    .iter()
                    .map(|(name, shadow)| (name, shadow.state.revision()))
                    // A stream made and dropped again by this batch was never there.
                    .filter(|(_, revision)| *revision > 0),
            )
            .collect();
        for payload in listen::payloads(&changed, trimmed) {
            transaction
                .execute("SELECT pg_notify($1, $2)", &[&listen::CHANNEL, &payload])
                .await?;
        }
        transaction.commit().await?;
        // So that a caller reads its write on this node once it is acknowledged: a cached state
        // the batch started from takes the batch's changes at once; others are caught up from
        // the database when next read.
        for name in &writes.deleted_names {
            self.cache.heard(name, 0);
        }
        for (name, shadow) in &batch {
            let after = shadow.state.revision();
            if after == 0 {
                continue;
            }
            let from = before.get(&shadow.id).copied();
            self.cache.committed(name, shadow.id, from, after, || {
                catch_up(name, shadow, writes)
            });
        }
        if self.shadows.len() + batch.len() > MAX_SHADOWS {
            self.shadows.clear();
        }
        self.shadows.extend(batch);
        Ok(())
    }

    /// Reads a stream's shadow from the database, under its row's lock.
    async fn load(
        &self,
        transaction: &Transaction<'_>,
        name: &StreamName,
        row: &tokio_postgres::Row,
    ) -> Result<Shadow, BatchError> {
        let row = StreamRow::decode(name.as_str(), row)?;
        let capacity = TailCapacity::shadow(self.options.collapse.lookback);
        // A repeat keeps the payload it does not replace: placement needs its targets' payloads.
        let state = load::restore(
            transaction,
            name,
            &row,
            &self.options,
            capacity,
            PayloadPolicy::Keep,
            &self.meter,
        )
        .await?;
        Ok(Shadow {
            id: row.id,
            state,
            first_seq: row.first_seq,
            retention: row.retention,
            changelog_floor: row.changelog_floor,
            book: row.restore.book,
            detectors: row.detectors,
            anomalies: row.anomalies,
        })
    }

    /// A stream this batch writes to that is not in `batch` (it was deleted earlier in the
    /// batch): created again, with a new id.
    async fn recreate(
        &self,
        transaction: &Transaction<'_>,
        name: &StreamName,
    ) -> Result<Shadow, BatchError> {
        let row = transaction
            .query_one(
                "INSERT INTO recap_streams (name) VALUES ($1) RETURNING id",
                &[&name.as_str()],
            )
            .await?;
        Ok(Shadow {
            id: row.get::<_, i64>(0) as u64,
            state: self.empty_state(),
            first_seq: 1,
            retention: None,
            changelog_floor: 0,
            book: TailBook::default(),
            detectors: None,
            anomalies: None,
        })
    }

    fn empty_state(&self) -> StreamState {
        StreamState::metered(
            self.options.collapse,
            TailCapacity::shadow(self.options.collapse.lookback),
            &self.meter,
        )
    }

    /// Places one request on the batch's shadows.
    async fn place(
        &self,
        transaction: &Transaction<'_>,
        op: Op,
        batch: &mut HashMap<StreamName, Shadow>,
        writes: &mut Writes,
    ) -> Result<Outcome, BatchError> {
        if op.creates() && !batch.contains_key(op.stream()) {
            let shadow = self.recreate(transaction, op.stream()).await?;
            batch.insert(op.stream().clone(), shadow);
        }
        let tail = self.options.tail;
        match op {
            Op::Append {
                stream,
                events,
                now,
            } => {
                let shadow = batch.get_mut(&stream).expect("created above");
                let mut results = Vec::with_capacity(events.len());
                let mut observer = anomaly::Observer::default();
                for event in events {
                    let ts = at_micros(event.ts.unwrap_or(now));
                    let (appended, _) = shadow.state.append_shared(event, ts);
                    shadow.placed(tail, &appended);
                    writes.appended(shadow.id, &appended);
                    let server = self.options.anomaly;
                    shadow.observe(&mut observer, tail, server, &appended, ts, writes);
                    results.push(appended);
                }
                shadow.finish_observing(observer, tail, writes);
                Ok(Outcome::Appended(results))
            }
            Op::Import { stream, records } => {
                let shadow = batch.get_mut(&stream).expect("created above");
                let adding = records
                    .iter()
                    .fold(0u64, |sum, record| sum.saturating_add(record.repeat_count));
                let held = shadow.state.totals().events;
                if held.saturating_add(adding) > MAX_EVENT_COUNT {
                    return Ok(Outcome::Refused(StoreError::CountLimit {
                        held,
                        adding,
                        limit: MAX_EVENT_COUNT,
                    }));
                }
                let mut results = Vec::with_capacity(records.len());
                for imported in records {
                    let mut event = imported.event;
                    if let Some(note) = imported.note {
                        // As the redb writer does: the note again, and its audit record
                        // naming the note's new id.
                        let note = shadow.state.add_note(
                            event.message.clone(),
                            at_micros(note.created_at),
                            note.expires_at.map(at_micros),
                        );
                        writes.note_added(shadow.id, &note, shadow.state.revision());
                        event.payload = Some(match event.payload {
                            Some(payload) => payload.with_number(NOTE_ID_KEY, note.id),
                            None => Payload::number(NOTE_ID_KEY, note.id),
                        });
                    }
                    let (appended, _) = shadow.state.import_shared(
                        event,
                        at_micros(imported.first_ts),
                        at_micros(imported.last_ts),
                        imported.repeat_count,
                    );
                    shadow.placed(tail, &appended);
                    writes.appended(shadow.id, &appended);
                    results.push(appended);
                }
                Ok(Outcome::Appended(results))
            }
            Op::AddNote {
                stream,
                text,
                expires_at,
                now,
            } => {
                let shadow = batch.get_mut(&stream).expect("created above");
                if let Some(error) = note_limit(self.options.notes, Some(&shadow.state), &text) {
                    return Ok(Outcome::Refused(error));
                }
                let now = at_micros(now);
                let note = shadow
                    .state
                    .add_note(text.clone(), now, expires_at.map(at_micros));
                writes.note_added(shadow.id, &note, shadow.state.revision());
                let (appended, _) = shadow.state.append_shared(note_event(text, note.id), now);
                shadow.placed(tail, &appended);
                writes.appended(shadow.id, &appended);
                let mut observer = anomaly::Observer::default();
                let server = self.options.anomaly;
                shadow.observe(&mut observer, tail, server, &appended, now, writes);
                shadow.finish_observing(observer, tail, writes);
                Ok(Outcome::Note(note))
            }
            Op::DeleteNote { stream, id } => {
                let Some(shadow) = batch.get_mut(&stream) else {
                    return Ok(Outcome::Refused(StoreError::UnknownStream(
                        stream.to_string(),
                    )));
                };
                if !shadow.state.remove_note(id) {
                    return Ok(Outcome::Flag(false));
                }
                writes.notes_removed.push((shadow.id, id));
                writes.change(
                    shadow.id,
                    shadow.state.revision(),
                    &ChangeBody::NoteDeleted { id },
                );
                Ok(Outcome::Flag(true))
            }
            Op::DeleteStream { stream } => match batch.remove(&stream) {
                Some(shadow) => {
                    writes.deleted.push(shadow.id);
                    writes.deleted_names.push(stream);
                    Ok(Outcome::Flag(true))
                }
                None => Ok(Outcome::Flag(false)),
            },
            Op::SetRetention { stream, retention } => {
                let Some(shadow) = batch.get_mut(&stream) else {
                    return Ok(Outcome::Refused(StoreError::UnknownStream(
                        stream.to_string(),
                    )));
                };
                shadow.retention = Some(retention);
                Ok(Outcome::Done)
            }
            Op::SetAnomalies { stream, overrides } => {
                let Some(shadow) = batch.get_mut(&stream) else {
                    return Ok(Outcome::Refused(StoreError::UnknownStream(
                        stream.to_string(),
                    )));
                };
                // As the redb writer keeps them: overriding nothing is having no overrides.
                shadow.anomalies = (overrides != AnomalyOverrides::default()).then_some(overrides);
                Ok(Outcome::Done)
            }
        }
    }

    /// Applies `max_records` retention to the batch's streams that took a record (the oldest
    /// records go, a dense range stays, and the totals keep counting them): only a write that
    /// moves a stream's revision may remove records, since nodes catch up with a stream when
    /// its revision moves (see `cache.rs`). It also trims their changelogs to the newest
    /// `changelog_keep` revisions, with the redb writer's slack of a sixteenth, so that a
    /// stream written without pause trims in steps rather than a row per write.
    fn trim(&self, batch: &mut HashMap<StreamName, Shadow>, writes: &mut Writes) {
        let keep = self.options.changelog_keep;
        for shadow in batch.values_mut() {
            let keep_floor = shadow.state.revision().saturating_sub(keep);
            if keep_floor > shadow.changelog_floor + keep / 16 {
                shadow.changelog_floor = keep_floor;
                writes.floors.push((shadow.id, keep_floor));
            }
            let retention = shadow.retention.unwrap_or(self.options.retention);
            let Some(max_records) = retention.max_records else {
                continue;
            };
            let id = shadow.id;
            if writes
                .records
                .range((id, 0)..=(id, u64::MAX))
                .next()
                .is_none()
            {
                continue;
            }
            let last_seq = shadow.state.totals().records;
            let stored = (last_seq + 1).saturating_sub(shadow.first_seq);
            if stored <= max_records {
                continue;
            }
            let first_kept = last_seq + 1 - max_records;
            shadow.state.forget_through(first_kept - 1);
            writes
                .trimmed
                .push((shadow.id, shadow.first_seq, first_kept));
            shadow.first_seq = first_kept;
        }
    }
}

/// The records retention removes leave the readers' tail: their latest time joins each
/// stream's book, as the redb writer's retention does. They are this batch's own (still in
/// `writes`) or stored before it.
async fn note_removed(
    transaction: &Transaction<'_>,
    batch: &mut HashMap<StreamName, Shadow>,
    writes: &Writes,
) -> Result<(), PgError> {
    if writes.trimmed.is_empty() {
        return Ok(());
    }
    let mut latest: HashMap<u64, Timestamp> = HashMap::new();
    let mut join = |id: u64, last_ts: Timestamp| {
        let known = latest.entry(id).or_insert(last_ts);
        *known = (*known).max(last_ts);
    };
    for &(id, from, to) in &writes.trimmed {
        for (_, record) in writes.records.range((id, from)..(id, to)) {
            join(id, record.last_ts);
        }
    }
    let ids: Vec<i64> = writes.trimmed.iter().map(|t| t.0 as i64).collect();
    let froms: Vec<i64> = writes.trimmed.iter().map(|t| t.1 as i64).collect();
    let tos: Vec<i64> = writes.trimmed.iter().map(|t| t.2 as i64).collect();
    // Times are whole microseconds, which timestamptz keeps exactly.
    let rows = transaction
        .query(
            "SELECT u.stream_id,
                 (extract(epoch FROM max((r.body::jsonb->>'last_ts')::timestamptz)) * 1000000)::int8
             FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS u(stream_id, from_seq, to_seq)
             JOIN recap_records r
                 ON r.stream_id = u.stream_id AND r.seq >= u.from_seq AND r.seq < u.to_seq
             GROUP BY u.stream_id",
            &[&ids, &froms, &tos],
        )
        .await?;
    for row in rows {
        let micros: Option<i64> = row.get(1);
        if let Some(last_ts) = micros.and_then(chrono::DateTime::from_timestamp_micros) {
            join(row.get::<_, i64>(0) as u64, last_ts);
        }
    }
    for shadow in batch.values_mut() {
        if let Some(&last_ts) = latest.get(&shadow.id) {
            shadow.book.removed(last_ts);
        }
    }
    Ok(())
}

/// What a state of `name` at the revision the batch started from needs to take the batch's
/// changes (see [`super::cache::CatchUp`]), from what the batch wrote; `None` if a change does
/// not decode (the state is then caught up from the database).
fn catch_up(name: &StreamName, shadow: &Shadow, writes: &Writes) -> Option<CatchUp> {
    let id = shadow.id;
    let mut changes = Vec::new();
    for (_, revision, body) in writes.changes.iter().filter(|change| change.0 == id) {
        let change = codec::decode_change(name, id, *revision as i64, body).ok()?;
        changes.push((change.revision, change.body));
    }
    let current = writes
        .records
        .range((id, 0)..=(id, u64::MAX))
        .map(|(&(_, seq), record)| (seq, Record::clone(record)))
        .collect();
    Some(CatchUp {
        changes,
        current,
        totals: shadow.state.totals().clone(),
        revision: shadow.state.revision(),
        first_seq: shadow.first_seq,
    })
}
