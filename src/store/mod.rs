//! Durable history in one redb file (DESIGN section 4).
//!
//! The file's layout is in `schema.rs` and `docs/design.md`; the writer in `writer/` (commits,
//! publication to the live states, maintenance); reads (open, history pages, changelog replay)
//! in `reads.rs`.
//!
//! - One writer thread commits many callers' batches per durable transaction (group commit) and
//!   answers each caller only after its commit is durable.
//! - Reads never block the writer: contexts come from an in-memory tail per stream
//!   ([`crate::stream::StreamState`]), history pages from redb read transactions.
//! - Every committed change is handed to its stream's subscribers after it is durable
//!   (`feed.rs`), and kept in a per-stream changelog so that subscribers can resume from any
//!   recent revision.

mod backend;
mod cache;
mod check;
mod feed;
pub(crate) mod fuzz;
pub mod pg;
mod reads;
mod schema;
mod storage;
mod tail_book;
mod upgrade;
mod writer;

#[cfg(test)]
mod failure_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use chrono::TimeDelta;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::anomaly::{AnomalyOverrides, AnomalySettings};
use crate::collapse::CollapsePolicy;
use crate::context::{self, ContextRequest, ContextWindow};
use crate::event::{Event, Kind, Note, Record, Severity, StreamName, Timestamp};
use crate::stream::{Appended, TailCapacity};

use crate::histogram::Histogram;
pub use backend::Backend;
pub use cache::COLD_LOAD_BUCKETS;
use cache::{Cache, Loading, Slot};
pub use check::{CheckReport, Problem, check};
pub use feed::{MAX_LAG_BYTES, Subscription};
pub use pg::{PG_SCHEMA_VERSION, PgMetrics, PgStore, StreamWakeups, Wakeup};
pub use reads::MAX_SCAN_RECORDS;
pub use schema::SCHEMA_VERSION;
pub use storage::{Live, MAINTENANCE_INTERVAL, MIN_REVISION_WAIT, News, Read, Storage, Unhealthy};
use writer::{Request, Shared, Writer};

/// Name of the data file inside the data directory.
pub const DATA_FILE_NAME: &str = "recap.redb";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "recap-data";
/// Most events one commit takes; larger queues are split into several commits.
pub const MAX_EVENTS_PER_COMMIT: usize = 10_000;
/// Changelog entries kept per stream for subscribers resuming with `Last-Event-ID`.
pub const DEFAULT_CHANGELOG_KEEP: u64 = 100_000;
/// Largest page of records one history read returns.
pub const MAX_PAGE_RECORDS: usize = 1_000;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the data file.
    #[error(
        "the data directory {path} is in use by a running recap server; use --server to talk to it, or stop it first"
    )]
    InUse {
        /// The data file.
        path: PathBuf,
    },
    /// The file was written by a schema this build does not know.
    #[error(
        "{path} has schema version {found}, but this recap reads version {supported} and older; upgrade recap"
    )]
    SchemaTooNew {
        /// The data file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The file is not a recap data file or is damaged.
    #[error("{path} is not a recap data file or is damaged: {detail}")]
    Corrupt {
        /// The data file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A row of the data file is damaged: it fails its checksum, does not decode, or is missing
    /// where the stream's other rows say it must be. Nothing of it is served.
    #[error(
        "the data file is damaged: {row} of stream {stream:?} {problem}; nothing damaged is served. `recap check --data DIR` (with the server stopped) lists every damaged row; restore recap.redb from a backup, or export the stream's readable records"
    )]
    Damaged {
        /// The stream the row belongs to.
        stream: String,
        /// The row: `record 17`, `note 3`, `change 40`, `stream row`, `records 10..=20`.
        row: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No such stream.
    #[error("stream {0:?} does not exist")]
    UnknownStream(String),
    /// The store is shutting down and takes no more writes.
    #[error("the store is shutting down")]
    ShuttingDown,
    /// A note would take the stream past one of its [`NoteLimits`]; nothing was written.
    #[error(
        "the stream already holds {held} of its {limit} {what}; delete notes it no longer needs (DELETE .../notes/{{id}}) or raise {setting} in the server's config"
    )]
    NoteLimit {
        /// `notes` or `bytes of note text`.
        what: &'static str,
        /// What the stream holds now (with the new note, for bytes).
        held: usize,
        /// The limit.
        limit: usize,
        /// The config setting that raises it.
        setting: &'static str,
    },
    /// An import would take the stream's event count past [`crate::event::MAX_EVENT_COUNT`];
    /// nothing was written.
    #[error(
        "the stream counts {held} events and the import brings {adding} more, past the most a stream counts ({limit}); import the records into a new stream"
    )]
    CountLimit {
        /// Events the stream counts now.
        held: u64,
        /// Events the import brings (the sum of its repeat counts).
        adding: u64,
        /// [`crate::event::MAX_EVENT_COUNT`].
        limit: u64,
    },
    /// One of the store's threads died (the cause is logged); it takes no more writes until the
    /// process is restarted, which the server does by exiting.
    #[error("{0}; restart recap (it exits by itself so that its supervisor does)")]
    Failed(String),
    /// The data file's disk is full; the write was not acknowledged. Writes resume by themselves
    /// once space is freed.
    #[error(
        "the data file's disk is full ({0}); nothing of this request was written, and writes resume once space is freed"
    )]
    DiskFull(String),
    /// The data file cannot be used for a moment (it is being reopened after a failed write).
    #[error("the store is briefly unavailable: {0}; retry shortly")]
    Unavailable(String),
    /// A read asked for a revision of a stream (`X-Recap-Min-Revision`) that this node did not
    /// reach within the wait.
    #[error(
        "this node has stream {stream:?} at revision {revision}, not yet at {wanted}, after waiting {waited_ms} ms; retry after the Retry-After delay if the revision came from a write's X-Recap-Revision (it may still be on its way to this node); a revision of a stream deleted since, or never written, does not come"
    )]
    Behind {
        /// The stream.
        stream: String,
        /// The revision this node has.
        revision: u64,
        /// The revision asked for.
        wanted: u64,
        /// How long the read waited.
        waited_ms: u64,
    },
    /// An I/O or database failure; the write was not acknowledged.
    #[error("storage failure: {}", joined(.context, .source.as_deref()))]
    Storage {
        /// What was being done (may be empty when the source says it all).
        context: String,
        /// The underlying error, if there is one (shared: each caller of a failed batch gets
        /// the error).
        #[source]
        source: Option<SharedError>,
    },
}

/// An underlying error that several callers may each be handed.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync>;

/// `context: source`, leaving out either when it is empty.
fn joined(context: &str, source: Option<&(dyn std::error::Error + Send + Sync)>) -> String {
    match (context.is_empty(), source) {
        (_, None) => context.to_owned(),
        (true, Some(source)) => source.to_string(),
        (false, Some(source)) => format!("{context}: {source}"),
    }
}

/// Retention for one stream: records beyond these limits are removed by the writer in the
/// background; their counts stay in the stream's totals. Notes are never removed by retention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// Keep at most this many records.
    pub max_records: Option<u64>,
    /// Remove records whose `last_ts` is older than this (in JSON `max_age_seconds`, as
    /// clients set it).
    #[serde(rename = "max_age_seconds", serialize_with = "serialize_seconds")]
    pub max_age: Option<TimeDelta>,
}

fn serialize_seconds<S: serde::Serializer>(
    age: &Option<TimeDelta>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match age {
        Some(age) => serializer.serialize_i64(age.num_seconds()),
        None => serializer.serialize_none(),
    }
}

/// How the store behaves.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Collapse policy for streams (per-stream overrides may come later).
    pub collapse: CollapsePolicy,
    /// How much of each stream is kept in memory.
    pub tail: TailCapacity,
    /// Default retention for every stream.
    pub retention: Retention,
    /// Changelog entries kept per stream.
    pub changelog_keep: u64,
    /// How many notes a stream may hold.
    pub notes: NoteLimits,
    /// Anomaly detection for streams that set nothing else.
    pub anomaly: AnomalySettings,
    /// Bytes of memory for caches: a quarter for redb's page cache, the rest for stream state
    /// (records, notes, rendered lines, token counts), beyond which the streams used least
    /// recently are evicted.
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            collapse: CollapsePolicy::default(),
            tail: TailCapacity::default(),
            retention: Retention::default(),
            changelog_keep: DEFAULT_CHANGELOG_KEEP,
            notes: NoteLimits::default(),
            anomaly: AnomalySettings::default(),
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// Default cache budget: 256 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Default most notes a stream holds: notes are pinned ahead of every event in every window, so
/// a stream with more than this is using notes as a log.
pub const DEFAULT_MAX_NOTES: usize = 1_000;
/// Default most bytes of note text a stream holds: every note is kept in memory and counted into
/// windows, so the sum is bounded like everything else a stream keeps.
pub const DEFAULT_MAX_NOTE_BYTES: usize = 1024 * 1024;

/// Caps on a stream's live notes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoteLimits {
    /// Most live notes per stream.
    pub max_notes: usize,
    /// Most bytes of live note text per stream.
    pub max_bytes: usize,
}

impl Default for NoteLimits {
    fn default() -> Self {
        NoteLimits {
            max_notes: DEFAULT_MAX_NOTES,
            max_bytes: DEFAULT_MAX_NOTE_BYTES,
        }
    }
}

/// A record brought in by `recap import` of an export: kept as it was (no collapse), with its
/// times and repeat count; it gets the next seq of the target stream.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedRecord {
    /// The event fields (its `ts` is ignored in favour of `first_ts`).
    pub event: Event,
    /// When the run started.
    pub first_ts: Timestamp,
    /// When the run's latest event happened.
    pub last_ts: Timestamp,
    /// Events in the run (≥ 1).
    pub repeat_count: u64,
    /// Set when the record is the audit record of a pinned note: the note is made again with
    /// the record's message as its text, and the record's `payload.note_id` names its new id.
    pub note: Option<ImportedNote>,
}

/// A pinned note brought in by `recap import` of an export, with its times.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedNote {
    /// When the note was added.
    pub created_at: Timestamp,
    /// When it stops applying, if ever.
    pub expires_at: Option<Timestamp>,
}

/// A committed change, as subscribers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The stream changed.
    pub stream: StreamName,
    /// The stream's id: a new one each time a stream of that name is created (ids only grow),
    /// so a revision means something only together with it (see [`StreamPosition`]).
    pub stream_id: u64,
    /// The stream revision this change took.
    pub revision: u64,
    /// What changed.
    pub body: ChangeBody,
}

/// What a change did.
#[derive(Clone, Debug, PartialEq)]
pub enum ChangeBody {
    /// A new record (as it was when created, `repeat_count` 1 unless imported); shared with
    /// the write's reply.
    Record(Arc<Record>),
    /// A record's repeat count went up.
    Repeat {
        /// The record.
        seq: u64,
        /// Its count after this change.
        repeat_count: u64,
        /// Its `last_ts` after this change.
        last_ts: Timestamp,
    },
    /// A note was added.
    Note(Note),
    /// A note was deleted (by a client or by expiry).
    NoteDeleted {
        /// The note's id.
        id: u64,
    },
}

/// Where a stream is. Deleting a stream and creating it again restarts its revisions at 1 under
/// a new id, so the id tells whether a revision someone holds is one of this stream's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamPosition {
    /// The stream's id (see [`Change::stream_id`]).
    pub stream_id: u64,
    /// Its revision: the number of changes it took.
    pub revision: u64,
}

/// Changes from one durable commit, published after the commit, in revision order: a stream's
/// (to its subscribers, see [`Store::subscribe_to`]) or all of them (see [`Store::subscribe`]).
pub type CommittedChanges = Arc<Vec<Change>>;

/// Which records a history read returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordQuery {
    /// Only records with seq greater than this.
    pub after: Option<u64>,
    /// Only records with seq less than this (pages go backwards from `before` when set without `after`).
    pub before: Option<u64>,
    /// Most records returned (at most [`MAX_PAGE_RECORDS`]).
    pub limit: usize,
    /// Only these kinds.
    pub kinds: Option<BTreeSet<Kind>>,
    /// Only records at or above this severity.
    pub min_severity: Option<Severity>,
    /// Only records whose `last_ts` is at or after this.
    pub since: Option<Timestamp>,
    /// Only records whose `first_ts` is before this.
    pub until: Option<Timestamp>,
}

impl Default for RecordQuery {
    fn default() -> Self {
        RecordQuery {
            after: None,
            before: None,
            limit: 100,
            kinds: None,
            min_severity: None,
            since: None,
            until: None,
        }
    }
}

/// One page of history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordPage {
    /// Records in seq order.
    pub records: Vec<Record>,
    /// The cursor for the next page, or `None` at the end: `after=` for forward pages, `before=`
    /// for backward pages (asked with `before` and no `after`). A page may be short (or empty)
    /// with a cursor when a selective filter stopped after [`MAX_SCAN_RECORDS`] records.
    pub next: Option<u64>,
    /// Seqs of the asked range that retention removed (absent when none were): a client paging
    /// through a stream learns that records are missing rather than seeing a jump in seqs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<SeqRange>,
}

/// Seqs `from ..= to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SeqRange {
    /// The first.
    pub from: u64,
    /// The last.
    pub to: u64,
}

/// One stream's statistics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamStats {
    /// The stream.
    pub name: StreamName,
    /// Records ever created (including those retention removed).
    pub records: u64,
    /// Records still stored.
    pub stored_records: u64,
    /// Events ever accepted.
    pub events: u64,
    /// The stream revision.
    pub revision: u64,
    /// First event time.
    pub first_ts: Option<Timestamp>,
    /// Latest event time.
    pub last_ts: Option<Timestamp>,
    /// Events per kind.
    pub kinds: BTreeMap<Kind, u64>,
    /// Events per severity name.
    pub severities: BTreeMap<&'static str, u64>,
    /// Live notes.
    pub notes: u64,
    /// Retention in force.
    pub retention: Retention,
    /// Anomaly detection in force.
    pub anomalies: AnomalySettings,
}

/// Counters of the writer's work since the store was opened, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoreMetrics {
    /// Durable commits (group commits of requests and maintenance steps).
    pub commits: u64,
    /// Commits that failed (their callers got an error).
    pub failed_commits: u64,
    /// Times the data file was reopened after a failed write.
    pub reopens: u64,
    /// Whether writes fail now (the disk is full, say): until a commit succeeds again.
    pub degraded: bool,
    /// Events and imported records acknowledged.
    pub events: u64,
    /// Write requests acknowledged.
    pub requests: u64,
}

/// The state of the in-memory cache of streams, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheMetrics {
    /// Bytes held by cached records, notes and states.
    pub bytes: usize,
    /// The budget ([`StoreOptions::cache_bytes`]).
    pub budget: usize,
    /// Streams in the store.
    pub streams: usize,
    /// Streams whose state is in memory.
    pub resident_streams: usize,
    /// Streams evicted since the store opened (their state for reads, the writer's state for
    /// writes, or both).
    pub evictions: u64,
    /// Streams loaded from the file for a read since the store opened.
    pub cold_loads: u64,
    /// Writer states read from the file for a write since the store opened: a write to a
    /// stream whose state is not in memory (evicted, or not written since the start).
    pub shadow_loads: u64,
}

/// The answer to a write, available once the write is durable (or has failed).
#[must_use = "a write is acknowledged only when its Pending resolves"]
pub struct Pending<T> {
    reply: oneshot::Receiver<Result<T, StoreError>>,
    /// The store's failure, if any, is why a reply never came.
    failure: Arc<OnceLock<String>>,
}

impl<T> Pending<T> {
    /// Blocks the current thread until the write is durable. Not for async contexts.
    pub fn wait(self) -> Result<T, StoreError> {
        let failure = self.failure;
        self.reply
            .blocking_recv()
            .unwrap_or_else(|_| Err(unanswered(&failure)))
    }
}

/// Why a request got no answer: the store failed, or it is shutting down.
fn unanswered(failure: &OnceLock<String>) -> StoreError {
    match failure.get() {
        Some(cause) => StoreError::Failed(cause.clone()),
        None => StoreError::ShuttingDown,
    }
}

impl<T: Send + 'static> IntoFuture for Pending<T> {
    type Output = Result<T, StoreError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let failure = self.failure;
            self.reply
                .await
                .unwrap_or_else(|_| Err(unanswered(&failure)))
        })
    }
}

impl StoreError {
    /// The error as each caller of a failed batch gets it: the kinds a client acts on kept,
    /// the rest as their message.
    pub(crate) fn for_caller(&self) -> StoreError {
        match self {
            StoreError::DiskFull(detail) => StoreError::DiskFull(detail.clone()),
            StoreError::Unavailable(detail) => StoreError::Unavailable(detail.clone()),
            StoreError::Failed(cause) => StoreError::Failed(cause.clone()),
            StoreError::Storage { context, source } => StoreError::Storage {
                context: context.clone(),
                source: source.clone(),
            },
            StoreError::Damaged {
                stream,
                row,
                problem,
            } => StoreError::Damaged {
                stream: stream.clone(),
                row: row.clone(),
                problem: problem.clone(),
            },
            other => StoreError::storage_text(other.to_string()),
        }
    }

    /// A storage failure caused by `source`, while doing `context` (may be empty).
    pub(crate) fn storage(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Storage {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A storage failure with no underlying error.
    pub(crate) fn storage_text(context: impl Into<String>) -> StoreError {
        StoreError::Storage {
            context: context.into(),
            source: None,
        }
    }
}

/// A storage failure, told apart by what a client can do about it: a full disk (507, writes
/// resume once space is freed), a file being reopened after a failed write (503, retry), or
/// anything else.
#[derive(Clone, Copy)]
enum Failure {
    DiskFull,
    Reopening,
    Other,
}

impl Failure {
    fn of(storage: Option<&redb::StorageError>) -> Failure {
        match storage {
            Some(redb::StorageError::Io(error)) if is_disk_full(error) => Failure::DiskFull,
            Some(redb::StorageError::PreviousIo) => Failure::Reopening,
            _ => Failure::Other,
        }
    }

    /// The store's error for `error`, which stays its source.
    fn error(self, error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        match self {
            Failure::DiskFull => StoreError::DiskFull(error.to_string()),
            Failure::Reopening => StoreError::Unavailable(
                "a write to the data file failed and the file is being reopened".into(),
            ),
            Failure::Other => StoreError::storage("", error),
        }
    }
}

/// ENOSPC, or EDQUOT (a quota is a full disk to this process).
fn is_disk_full(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::StorageFull
        || error.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(error.raw_os_error(), Some(28 | 122))
}

impl From<redb::StorageError> for StoreError {
    fn from(error: redb::StorageError) -> StoreError {
        Failure::of(Some(&error)).error(error)
    }
}

impl From<redb::Error> for StoreError {
    fn from(error: redb::Error) -> StoreError {
        let failure = match &error {
            redb::Error::Io(io) if is_disk_full(io) => Failure::DiskFull,
            redb::Error::PreviousIo => Failure::Reopening,
            _ => Failure::Other,
        };
        failure.error(error)
    }
}

macro_rules! storage_error_from {
    ($($error:ident),*) => {$(
        impl From<redb::$error> for StoreError {
            fn from(error: redb::$error) -> StoreError {
                let failure = match &error {
                    redb::$error::Storage(storage) => Failure::of(Some(storage)),
                    _ => Failure::Other,
                };
                failure.error(error)
            }
        }
    )*};
}

storage_error_from!(TableError, TransactionError, CommitError);

/// The share of [`StoreOptions::cache_bytes`] that goes to redb's page cache (history pages,
/// cold loads and the writer's B-tree pages read from it); the rest holds stream state.
const PAGE_CACHE_SHARE: usize = 4;
/// The smallest page cache: a few B-tree paths.
const MIN_PAGE_CACHE_BYTES: usize = 1024 * 1024;

/// A context that needs tokenizing before it can be built (see [`Store::warm_context`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cold;

/// The store: cheap to clone, shared by every request handler.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    /// The last handle is gone: let the writer commit what is queued and release the file before
    /// returning, so that the data directory can be opened again at once.
    fn drop(&mut self) {
        lock(&self.requests).take();
        if let Some(writer) = lock(&self.writer).take() {
            drop(writer.join());
        }
        if let Err(error) = release(&self.shared) {
            tracing::error!(%error, "closing the data file");
        }
    }
}

/// Opens (or creates) the redb file with its share of the cache budget.
pub(super) fn open_database(path: &Path, cache_bytes: usize) -> Result<redb::Database, StoreError> {
    let open = || {
        redb::Database::builder()
            .set_cache_size((cache_bytes / PAGE_CACHE_SHARE).max(MIN_PAGE_CACHE_BYTES))
            .create(path)
    };
    // redb panics on some damaged files (a free-space map that does not parse): refused, as
    // any other damaged file is.
    match std::panic::catch_unwind(open) {
        Ok(opened) => opened.map_err(|error| reads::open_error(path, error)),
        Err(panic) => Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!(
                "the file could not be opened ({}); `recap check --data DIR` says more; restore it from a backup",
                panic_message(&*panic)
            ),
        }),
    }
}

/// The message a panic was raised with.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Written beside the data file once it is a recap store: a data file that is later missing or
/// empty is then refused rather than silently replaced by an empty store.
pub const MARKER_FILE_NAME: &str = "recap.marker";

fn write_marker(marker: &Path) -> Result<(), StoreError> {
    let text = format!(
        "This directory holds a recap store (recap.redb), first opened {}.\nrecap refuses to start while recap.redb is missing or empty and this file exists;\ndelete this file to start afresh with an empty store.\n",
        crate::event::format_timestamp(&chrono::Utc::now())
    );
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(marker)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()
    };
    write()
        .map_err(|error| StoreError::storage(format!("cannot write {}", marker.display()), error))
}

/// Runs a read of `stream` from the file; a panic inside it (redb meeting a damaged page) is
/// that stream's damage, answered as an error rather than a dead request.
fn guarded<T>(
    stream: &StreamName,
    read: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        Err(StoreError::Damaged {
            stream: stream.to_string(),
            row: "a page of the data file".into(),
            problem: format!("could not be read ({})", panic_message(&*panic)),
        })
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store {
    /// Opens (creating if needed) the data file `recap.redb` in `data_dir`.
    ///
    /// Fails with [`StoreError::InUse`] when another process holds the file,
    /// [`StoreError::SchemaTooNew`] for a file of a newer schema and [`StoreError::Corrupt`] for
    /// a file that is not a recap data file.
    pub fn open(
        data_dir: impl AsRef<Path>,
        mut options: StoreOptions,
    ) -> Result<Store, StoreError> {
        // The tail always covers the collapse lookback (StreamState enforces it too); restore
        // must size the tail exactly as the live state does.
        options.tail = options.tail.for_policy(&options.collapse);
        let data_dir = data_dir.as_ref();
        std::fs::create_dir_all(data_dir).map_err(|error| {
            StoreError::storage(format!("cannot create {}", data_dir.display()), error)
        })?;
        let path = data_dir.join(DATA_FILE_NAME);
        let marker = data_dir.join(MARKER_FILE_NAME);
        let emptied = std::fs::metadata(&path).map_or(true, |file| file.len() == 0);
        if emptied && marker.exists() {
            return Err(StoreError::Corrupt {
                path,
                detail: format!(
                    "the data file is missing or empty, but this directory held a recap store ({} says so); restore recap.redb from a backup, or delete {} to start with an empty store",
                    marker.display(),
                    marker.display()
                ),
            });
        }
        let db = open_database(&path, options.cache_bytes)?;
        let db = upgrade::to_current(db, &path, options.cache_bytes)?;
        reads::prepare(&db, &path)?;
        if !marker.exists() {
            write_marker(&marker)?;
        }
        let loaded = reads::load(&db, &path)?;
        let shared = Arc::new(Shared {
            path,
            cache: Cache::new(options.cache_bytes - options.cache_bytes / PAGE_CACHE_SHARE),
            options,
            db: RwLock::new(Some(Arc::new(db))),
            streams: RwLock::new(loaded.streams),
            subscribers: Arc::default(),
            counters: writer::Counters::default(),
            failure: Arc::default(),
            degraded: Default::default(),
            reopening: Default::default(),
            reopens: Default::default(),
            #[cfg(test)]
            failures_to_inject: Default::default(),
            #[cfg(test)]
            panic_to_inject: Default::default(),
        });
        let (sender, receiver) = mpsc::channel();
        let writer = Writer::new(
            shared.clone(),
            receiver,
            loaded.next_stream_id,
            loaded.purges,
        )?;
        let handle = std::thread::Builder::new()
            .name("recap-store-writer".into())
            .spawn(writer::watched(
                shared.failure.clone(),
                "writer",
                move || {
                    writer.run();
                },
            ))
            .map_err(|error| StoreError::storage("cannot start the writer", error))?;
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                requests: Mutex::new(Some(sender)),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Makes the writer thread panic at its next request (tests of the failure path only).
    #[cfg(test)]
    pub(crate) fn inject_writer_panic(&self) {
        self.inner
            .shared
            .panic_to_inject
            .store(true, Ordering::Release);
    }

    /// Why the store takes no more writes, if one of its threads died (see
    /// [`StoreError::Failed`]); the server's health check reports it.
    pub fn failure(&self) -> Option<String> {
        self.inner.shared.failure.get().cloned()
    }

    /// Hands a request to the writer; `ShuttingDown` when it no longer takes any (`Failed` when
    /// its thread died).
    fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Pending<T> {
        let (sender, reply) = oneshot::channel();
        let request = make(sender);
        let sent = lock(&self.inner.requests)
            .as_ref()
            .is_some_and(|requests| requests.send(request).is_ok());
        // A request that was not sent is dropped with its reply sender, which resolves the
        // Pending to `ShuttingDown`.
        let _ = sent;
        Pending {
            reply,
            failure: self.inner.shared.failure.clone(),
        }
    }

    /// Appends events to a stream (created on first write), all or nothing. Each event without a
    /// `ts` happened at `now`. Resolves once durable, with one [`Appended`] per event.
    ///
    /// Times are kept to the microsecond (finer parts are dropped before anything is decided).
    pub fn append(
        &self,
        stream: &StreamName,
        events: Vec<Event>,
        now: Timestamp,
    ) -> Pending<Vec<Appended>> {
        self.submit(|reply| Request::Append {
            stream: stream.clone(),
            events,
            now,
            reply,
        })
    }

    /// Appends records from an export as they are, all or nothing.
    pub fn import(
        &self,
        stream: &StreamName,
        records: Vec<ImportedRecord>,
    ) -> Pending<Vec<Appended>> {
        self.submit(|reply| Request::Import {
            stream: stream.clone(),
            records,
            reply,
        })
    }

    /// Adds a note (and logs a `note` event for the audit trail). The note takes one revision
    /// and its event the next.
    pub fn add_note(
        &self,
        stream: &StreamName,
        text: String,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Pending<Note> {
        self.submit(|reply| Request::AddNote {
            stream: stream.clone(),
            text,
            expires_at,
            now,
            reply,
        })
    }

    /// Deletes a note; `false` if it did not exist, [`StoreError::UnknownStream`] if the stream
    /// does not.
    pub fn delete_note(&self, stream: &StreamName, id: u64) -> Pending<bool> {
        self.submit(|reply| Request::DeleteNote {
            stream: stream.clone(),
            id,
            reply,
        })
    }

    /// Deletes a stream with its records, notes and changelog; `false` if it did not exist.
    ///
    /// The stream is gone as soon as this resolves; its rows are removed from the file by the
    /// writer in the background, in bounded chunks.
    pub fn delete_stream(&self, stream: &StreamName) -> Pending<bool> {
        self.submit(|reply| Request::DeleteStream {
            stream: stream.clone(),
            reply,
        })
    }

    /// Sets a stream's retention (applied by the writer in the background);
    /// [`StoreError::UnknownStream`] if the stream does not exist.
    pub fn set_retention(&self, stream: &StreamName, retention: Retention) -> Pending<()> {
        self.submit(|reply| Request::SetRetention {
            stream: stream.clone(),
            retention,
            reply,
        })
    }

    /// Sets what a stream overrides of the server's anomaly detection (replacing what it set
    /// before; nothing overridden follows the server); [`StoreError::UnknownStream`] if the
    /// stream does not exist. Applies to the events placed after it.
    pub fn set_anomalies(&self, stream: &StreamName, overrides: AnomalyOverrides) -> Pending<()> {
        self.submit(|reply| Request::SetAnomalies {
            stream: stream.clone(),
            overrides,
            reply,
        })
    }

    /// Runs every pending piece of background work (retention, note expiry, changelog trimming,
    /// purging deleted streams) as of `now`, in bounded transactions, and resolves when none is
    /// left. The writer does the same on its own as time passes; this is for tests, tools and
    /// operators who want it done now.
    pub fn maintain(&self, now: Timestamp) -> Pending<()> {
        self.submit(|reply| Request::Maintain { now, reply })
    }

    fn slot(&self, stream: &StreamName) -> Option<Arc<Slot>> {
        writer::read(&self.inner.shared.streams)
            .get(stream)
            .cloned()
    }

    fn db(&self) -> Result<Arc<redb::Database>, StoreError> {
        self.inner.shared.database()
    }

    /// Why writes cannot succeed now (the data file's disk is full, say), until a commit
    /// succeeds again; the server's health check reports it.
    pub fn degraded(&self) -> Option<String> {
        self.inner.shared.degraded()
    }

    /// The context window of a stream if it is resident and can be built from counts already
    /// made (a warm build: microseconds); `Err(Cold)` when the stream has to be loaded from the
    /// file or something tokenized first, which [`Store::context`] does (call it off the async
    /// runtime). `Ok(None)` if the stream does not exist.
    pub fn warm_context(
        &self,
        stream: &StreamName,
        request: &ContextRequest,
        now: Timestamp,
    ) -> Result<Option<ContextWindow>, Cold> {
        let Some(slot) = self.slot(stream) else {
            return Ok(None);
        };
        self.inner.shared.cache.touch(&slot);
        let live = writer::read(&slot.live);
        let state = live.state.as_ref().ok_or(Cold)?;
        let ready = context::build_if_ready(&state.view(), request, now);
        ready.map(Some).ok_or(Cold)
    }

    /// The context window of a stream; `None` if the stream does not exist. A cold stream is
    /// loaded from the file and stays resident (within the cache budget).
    pub fn context(
        &self,
        stream: &StreamName,
        request: &ContextRequest,
        now: Timestamp,
    ) -> Result<Option<ContextWindow>, StoreError> {
        let Some(slot) = self.slot(stream) else {
            return Ok(None);
        };
        let shared = &self.inner.shared;
        shared.cache.touch(&slot);
        let unprepared = {
            let live = writer::read(&slot.live);
            match &live.state {
                Some(state) => match context::build_if_ready(&state.view(), request, now) {
                    Some(window) => return Ok(Some(window)),
                    None => Some(context::unprepared(&state.view(), request)),
                },
                None => None,
            }
        };
        if let Some(unprepared) = unprepared {
            // Tokenizing happens outside the stream's lock (see `context::build_if_ready`).
            context::prepare(&unprepared, request, now);
            let live = writer::read(&slot.live);
            if let Some(state) = &live.state {
                return Ok(Some(context::build(&state.view(), request, now)));
            }
        }
        // Cold: load the state from the file, build from it, and keep it resident.
        let loading = slot.start_loading();
        if loading == Loading::Resident {
            return self.context(stream, request, now);
        }
        let started = Instant::now();
        let loaded = guarded(stream, || {
            reads::load_state(
                &*self.db()?,
                stream,
                slot.id,
                &shared.options,
                &shared.cache.meter,
            )
        });
        shared.cache.count_cold_load(started.elapsed());
        let state = match loaded {
            Ok(Some(state)) => state,
            // Deleted meanwhile, or unreadable.
            other => {
                if loading == Loading::Started {
                    slot.abandon_loading();
                }
                return other.map(|_| None);
            }
        };
        let window = context::build(&state.view(), request, now);
        // Another reader already loading the stream keeps it; this state served one window.
        if loading == Loading::Started {
            slot.install(state);
            self.ask_for_eviction();
        }
        Ok(Some(window))
    }

    /// Asks the writer for an eviction round when the cache is over its budget (once until it
    /// has run).
    fn ask_for_eviction(&self) {
        let cache = &self.inner.shared.cache;
        // A writer that has stopped has nothing left to evict for.
        if cache.is_over()
            && !cache.eviction_asked.swap(true, Ordering::Relaxed)
            && let Some(requests) = lock(&self.inner.requests).as_ref()
        {
            drop(requests.send(Request::Evict));
        }
    }

    /// A page of a stream's history, read from the file.
    pub fn records(
        &self,
        stream: &StreamName,
        query: &RecordQuery,
    ) -> Result<RecordPage, StoreError> {
        guarded(stream, || reads::records(&*self.db()?, stream, query))
    }

    /// A stream's live notes, oldest first.
    pub fn notes(&self, stream: &StreamName, now: Timestamp) -> Result<Vec<Note>, StoreError> {
        let slot = self
            .slot(stream)
            .ok_or_else(|| StoreError::UnknownStream(stream.to_string()))?;
        let resident = writer::read(&slot.live).state.as_ref().map(|state| {
            state
                .notes()
                .filter(|note| note.is_live(now))
                .cloned()
                .collect()
        });
        match resident {
            Some(notes) => Ok(notes),
            None => guarded(stream, || reads::notes(&*self.db()?, stream, now)),
        }
    }

    /// A page of streams' statistics, by name: at most `limit` of those after `after` that
    /// `admit` lets through, and the name to continue after when there are more.
    pub fn streams_page(
        &self,
        after: Option<&str>,
        limit: usize,
        admit: impl Fn(&StreamName) -> bool,
    ) -> (Vec<StreamStats>, Option<StreamName>) {
        let mut names: Vec<(StreamName, Arc<Slot>)> = writer::read(&self.inner.shared.streams)
            .iter()
            .filter(|(name, _)| after.is_none_or(|after| name.as_str() > after) && admit(name))
            .map(|(name, slot)| (name.clone(), slot.clone()))
            .collect();
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let more = names.len() > limit;
        names.truncate(limit);
        let next = more
            .then(|| names.last().map(|(name, _)| name.clone()))
            .flatten();
        let stats = names
            .into_iter()
            .map(|(name, slot)| self.stats(name, &slot))
            .collect();
        (stats, next)
    }

    /// Every stream's statistics, by name.
    pub fn streams(&self) -> Vec<StreamStats> {
        let slots: Vec<(StreamName, Arc<Slot>)> = writer::read(&self.inner.shared.streams)
            .iter()
            .map(|(name, slot)| (name.clone(), slot.clone()))
            .collect();
        let mut stats: Vec<StreamStats> = slots
            .into_iter()
            .map(|(name, slot)| self.stats(name, &slot))
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// One stream's statistics.
    pub fn stream(&self, stream: &StreamName) -> Option<StreamStats> {
        let slot = self.slot(stream)?;
        Some(self.stats(stream.clone(), &slot))
    }

    fn stats(&self, name: StreamName, slot: &Slot) -> StreamStats {
        let now = chrono::Utc::now();
        let live = writer::read(&slot.live);
        let notes = match &live.state {
            Some(state) => Some(state.notes().filter(|n| n.is_live(now)).count()),
            // A cold stream's notes are counted from the file (at most `max_notes` rows); if
            // they cannot be read, the stream's row says how many it stores.
            None => match self
                .db()
                .and_then(|db| guarded(&name, || reads::notes(&db, &name, now)))
            {
                Ok(notes) => Some(notes.len()),
                Err(error) => {
                    tracing::error!(%error, "cannot count a stream's notes");
                    live.meta.notes.map(|stored| stored as usize)
                }
            },
        };
        let totals = &live.meta.totals;
        StreamStats {
            records: totals.records,
            stored_records: (totals.records + 1).saturating_sub(live.meta.first_seq),
            events: totals.events,
            revision: live.meta.revision,
            first_ts: totals.first_ts,
            last_ts: totals.last_ts,
            kinds: totals.kinds.clone(),
            severities: totals.severity_counts(),
            notes: notes.unwrap_or_default() as u64,
            retention: live
                .meta
                .retention
                .unwrap_or(self.inner.shared.options.retention),
            anomalies: live
                .meta
                .anomalies
                .map_or(self.inner.shared.options.anomaly, |overrides| {
                    self.inner.shared.options.anomaly.with(&overrides)
                }),
            name,
        }
    }

    /// A stream's current revision (0 for a stream that does not exist).
    pub fn revision(&self, stream: &StreamName) -> u64 {
        self.slot(stream).map_or(0, |slot| slot.revision())
    }

    /// A stream's id and current revision, read together; `None` for a stream that does not
    /// exist.
    pub fn position(&self, stream: &StreamName) -> Option<StreamPosition> {
        self.slot(stream).map(|slot| StreamPosition {
            stream_id: slot.id,
            revision: slot.revision(),
        })
    }

    /// Changes of a stream with revision greater than `after`, oldest first, at most `limit`:
    /// what a subscriber resuming with `Last-Event-ID: after` has missed. `Err` never hides a gap:
    /// if `after` is older than the changelog keeps, the first change returned says so by its
    /// revision being greater than `after + 1`.
    ///
    /// A replayed new record shows the repeat count, `last_ts` and revision it was created with
    /// and its other fields as they are now (in `template` collapse mode a later repeat may have
    /// replaced its message); the repeats that followed are changes of their own.
    pub fn changes(
        &self,
        stream: &StreamName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        guarded(stream, || {
            reads::changes(&*self.db()?, stream, after, limit)
        })
    }

    /// Counters of the writer's work since the store was opened.
    pub fn metrics(&self) -> StoreMetrics {
        let counters = &self.inner.shared.counters;
        StoreMetrics {
            commits: counters.commits.load(Ordering::Relaxed),
            failed_commits: counters.failed_commits.load(Ordering::Relaxed),
            reopens: self.inner.shared.reopens.load(Ordering::Relaxed),
            degraded: self.inner.shared.degraded().is_some(),
            events: counters.events.load(Ordering::Relaxed),
            requests: counters.requests.load(Ordering::Relaxed),
        }
    }

    /// The size of the data file in bytes (for the metrics); `None` if it cannot be read.
    pub fn file_bytes(&self) -> Option<u64> {
        std::fs::metadata(&self.inner.shared.path)
            .ok()
            .map(|meta| meta.len())
    }

    /// The state of the stream cache.
    pub fn cache_metrics(&self) -> CacheMetrics {
        let shared = &self.inner.shared;
        let (streams, resident_streams) = {
            let slots = writer::read(&shared.streams);
            let resident = slots.values().filter(|slot| slot.is_resident()).count();
            (slots.len(), resident)
        };
        CacheMetrics {
            bytes: shared.cache.meter.bytes(),
            budget: shared.cache.budget,
            streams,
            resident_streams,
            evictions: shared.cache.evictions.load(Ordering::Relaxed),
            cold_loads: shared.cache.cold_loads.load(Ordering::Relaxed),
            shadow_loads: shared.cache.shadow_loads.load(Ordering::Relaxed),
        }
    }

    /// How long cold loads took (reading a stream's state from the file).
    pub fn cold_load_seconds(&self) -> &Histogram<{ COLD_LOAD_BUCKETS.len() }> {
        &self.inner.shared.cache.cold_load_seconds
    }

    /// Live feed of one stream's committed changes, published after each durable commit: one
    /// message per commit that changed it, and nothing (not even a wakeup) for commits to other
    /// streams. The subscription is by name, so it goes on to a stream created again after a
    /// deletion (with a new [`Change::stream_id`]). At most [`MAX_LAG_BYTES`] wait for it; a
    /// subscriber further behind is told it lagged and reads the changelog ([`Store::changes`]).
    pub fn subscribe_to(&self, stream: &StreamName) -> Subscription {
        self.inner.shared.subscribers.subscribe(Some(stream))
    }

    /// Live feed of every stream's committed changes, one message per commit, bounded like
    /// [`Store::subscribe_to`]: for tests and tools that watch the whole store.
    pub fn subscribe(&self) -> Subscription {
        self.inner.shared.subscribers.subscribe(None)
    }

    /// Stops taking writes, commits what is queued, and closes the file. Other handles' later
    /// writes and reads fail with [`StoreError::ShuttingDown`].
    pub fn close(self) -> Result<(), StoreError> {
        let (reply, done) = mpsc::channel();
        let sent = lock(&self.inner.requests)
            .take()
            .is_some_and(|requests| requests.send(Request::Shutdown { reply }).is_ok());
        let result = if sent {
            done.recv().unwrap_or(Err(StoreError::ShuttingDown))
        } else {
            Ok(())
        };
        if let Some(writer) = lock(&self.inner.writer).take() {
            writer
                .join()
                .map_err(|_| StoreError::storage_text("the writer thread panicked"))?;
        }
        release(&self.inner.shared)?;
        result
    }
}

/// Drops the store's handle on the file. Closing writes redb's free-space map, which panics on
/// some damaged files: that is an error, not a panic of the caller.
fn release(shared: &Shared) -> Result<(), StoreError> {
    let db = writer::write(&shared.db).take();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(db))).map_err(|panic| {
        StoreError::Corrupt {
            path: shared.path.clone(),
            detail: format!(
                "the file could not be closed cleanly ({})",
                panic_message(&*panic)
            ),
        }
    })
}
