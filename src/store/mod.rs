//! Durable history in one redb file (DESIGN section 4).
//!
//! API SKELETON: the signatures below are the contract between the store and the server. The
//! bodies are being written (issue 3); nothing here may ship with `unimplemented!`.
//!
//! - One writer thread commits many callers' batches per durable transaction (group commit) and
//!   answers each caller only after its commit is durable.
//! - Reads never block the writer: contexts come from an in-memory tail per stream
//!   ([`crate::stream::StreamState`]), history pages from redb read transactions.
//! - Every committed change is published on a broadcast channel after it is durable, and kept
//!   in a per-stream changelog so that subscribers can resume from any recent revision.

use std::collections::{BTreeMap, BTreeSet};
use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use chrono::TimeDelta;
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use crate::collapse::CollapsePolicy;
use crate::context::{ContextRequest, ContextWindow};
use crate::event::{Event, Kind, Note, Record, Severity, StreamName, Timestamp};
use crate::stream::{Appended, TailCapacity};

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
    /// No such stream.
    #[error("stream {0:?} does not exist")]
    UnknownStream(String),
    /// The store is shutting down and takes no more writes.
    #[error("the store is shutting down")]
    ShuttingDown,
    /// An I/O or database failure; the write was not acknowledged.
    #[error("storage failure: {0}")]
    Storage(String),
}

/// Retention for one stream: records beyond these limits are removed by the writer in the
/// background; their counts stay in the stream's totals. Notes are never removed by retention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// Keep at most this many records.
    pub max_records: Option<u64>,
    /// Remove records whose `last_ts` is older than this.
    #[serde(serialize_with = "serialize_seconds")]
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            collapse: CollapsePolicy::default(),
            tail: TailCapacity::default(),
            retention: Retention::default(),
            changelog_keep: DEFAULT_CHANGELOG_KEEP,
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
}

/// A committed change, as subscribers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The stream changed.
    pub stream: StreamName,
    /// The stream revision this change took.
    pub revision: u64,
    /// What changed.
    pub body: ChangeBody,
}

/// What a change did.
#[derive(Clone, Debug, PartialEq)]
pub enum ChangeBody {
    /// A new record (as it was when created, `repeat_count` 1 unless imported).
    Record(Record),
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

/// Changes from one durable commit, published after the commit: one entry per change, in
/// revision order per stream.
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
    /// The cursor for the next page (`after=` for forward pages), or `None` at the end.
    pub next: Option<u64>,
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
}

/// The answer to a write, available once the write is durable (or has failed).
#[must_use = "a write is acknowledged only when its Pending resolves"]
pub struct Pending<T> {
    reply: oneshot::Receiver<Result<T, StoreError>>,
}

impl<T> Pending<T> {
    /// Blocks the current thread until the write is durable. Not for async contexts.
    pub fn wait(self) -> Result<T, StoreError> {
        self.reply
            .blocking_recv()
            .unwrap_or(Err(StoreError::ShuttingDown))
    }
}

impl<T: Send + 'static> IntoFuture for Pending<T> {
    type Output = Result<T, StoreError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.reply.await.unwrap_or(Err(StoreError::ShuttingDown)) })
    }
}

/// The store: cheap to clone, shared by every request handler.
#[derive(Clone)]
pub struct Store {
    #[allow(dead_code)]
    inner: Arc<()>,
}

#[allow(unused_variables, missing_docs)]
impl Store {
    /// Opens (creating if needed) the data file `recap.redb` in `data_dir`.
    pub fn open(data_dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        unimplemented!()
    }

    /// Appends events to a stream (created on first write), all or nothing. Each event without a
    /// `ts` happened at `now`. Resolves once durable, with one [`Appended`] per event.
    pub fn append(
        &self,
        stream: &StreamName,
        events: Vec<Event>,
        now: Timestamp,
    ) -> Pending<Vec<Appended>> {
        unimplemented!()
    }

    /// Appends records from an export as they are, all or nothing.
    pub fn import(
        &self,
        stream: &StreamName,
        records: Vec<ImportedRecord>,
    ) -> Pending<Vec<Appended>> {
        unimplemented!()
    }

    /// Adds a note (and logs a `note` event for the audit trail).
    pub fn add_note(
        &self,
        stream: &StreamName,
        text: String,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Pending<Note> {
        unimplemented!()
    }

    /// Deletes a note; `false` if it did not exist.
    pub fn delete_note(&self, stream: &StreamName, id: u64) -> Pending<bool> {
        unimplemented!()
    }

    /// Deletes a stream with its records, notes and changelog; `false` if it did not exist.
    pub fn delete_stream(&self, stream: &StreamName) -> Pending<bool> {
        unimplemented!()
    }

    /// Sets a stream's retention (applied by the writer in the background).
    pub fn set_retention(&self, stream: &StreamName, retention: Retention) -> Pending<()> {
        unimplemented!()
    }

    /// The context window of a stream, from memory; `None` if the stream does not exist.
    pub fn context(
        &self,
        stream: &StreamName,
        request: &ContextRequest,
        now: Timestamp,
    ) -> Option<ContextWindow> {
        unimplemented!()
    }

    /// A page of a stream's history.
    pub fn records(
        &self,
        stream: &StreamName,
        query: &RecordQuery,
    ) -> Result<RecordPage, StoreError> {
        unimplemented!()
    }

    /// A stream's live notes, oldest first.
    pub fn notes(&self, stream: &StreamName, now: Timestamp) -> Result<Vec<Note>, StoreError> {
        unimplemented!()
    }

    /// Every stream's statistics, by name.
    pub fn streams(&self) -> Vec<StreamStats> {
        unimplemented!()
    }

    /// One stream's statistics.
    pub fn stream(&self, stream: &StreamName) -> Option<StreamStats> {
        unimplemented!()
    }

    /// A stream's current revision (0 for a stream that does not exist).
    pub fn revision(&self, stream: &StreamName) -> u64 {
        unimplemented!()
    }

    /// Changes of a stream with revision greater than `after`, oldest first, at most `limit`:
    /// what a subscriber resuming with `Last-Event-ID: after` has missed. `Err` never hides a gap:
    /// if `after` is older than the changelog keeps, the first change returned says so by its
    /// revision being greater than `after + 1`.
    pub fn changes(
        &self,
        stream: &StreamName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        unimplemented!()
    }

    /// Live feed of committed changes (all streams), published after each durable commit.
    pub fn subscribe(&self) -> broadcast::Receiver<CommittedChanges> {
        unimplemented!()
    }

    /// Stops taking writes, commits what is queued, and closes the file.
    pub fn close(self) -> Result<(), StoreError> {
        unimplemented!()
    }
}
