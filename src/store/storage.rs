//! What `recap serve` keeps streams in: the embedded redb file (the default) or a PostgreSQL
//! database that several nodes share. One type for the server's handlers, so that each route
//! is written once; each method says what it does on each backend.
//!
//! Reads on PostgreSQL: contexts come from the node's cache of stream states (caught up from
//! the database when a stream moved on); history, changes, notes and statistics are read from
//! the database, so they are as current as the database. A read that names a revision it must
//! reflect ([`Storage::reach`]) waits, bounded, until the node has it.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::anomaly::AnomalyOverrides;
use crate::context::{ContextRequest, ContextWindow};
use crate::event::{Event, Note, StreamName, Timestamp};
use crate::stream::Appended;

use super::pg::{PgStore, StreamWakeups};
use super::{
    Change, CommittedChanges, ImportedRecord, Pending, RecordPage, RecordQuery, Retention, Store,
    StoreError, StreamPosition, StreamStats, Subscription,
};

/// How long a read that names a revision (`X-Recap-Min-Revision`) waits for this node to reach
/// it before answering 503 with `Retry-After`: long enough for a write through another node to
/// arrive (a notification and a catch-up take milliseconds), short enough that a client asking
/// for a revision that never comes is told so.
pub const MIN_REVISION_WAIT: Duration = Duration::from_secs(2);

/// How often a PostgreSQL node runs background work (age retention, note expiry) as of now.
/// Every node runs it; the stream's row lock makes concurrent runs safe.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

/// How often a wait for a revision on PostgreSQL looks at the database again, besides when a
/// notification wakes it: notifications are not delivered while the listening connection is
/// down.
const RECHECK_INTERVAL: Duration = Duration::from_millis(100);

/// See the module documentation.
#[derive(Clone)]
pub enum Storage {
    /// The embedded redb file.
    Redb(Store),
    /// A PostgreSQL database, shared with other nodes.
    Postgres(PgStore),
}

impl From<Store> for Storage {
    fn from(store: Store) -> Storage {
        Storage::Redb(store)
    }
}

impl From<PgStore> for Storage {
    fn from(store: PgStore) -> Storage {
        Storage::Postgres(store)
    }
}

/// What a read that waits for a revision ([`Storage::reach`]) reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// A context: on PostgreSQL from the node's cache of the stream's state.
    Context,
    /// History, changes, notes or statistics: from the store itself.
    Stored,
}

/// What a storage's health check found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unhealthy {
    /// `failed` (a store thread died: the server exits), `degraded` (writes fail until the
    /// data file takes them again) or `unavailable` (the database does not answer).
    pub status: &'static str,
    /// Why, for the operator.
    pub cause: String,
}

/// Runs a blocking read of the redb store off the async runtime.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(read)
        .await
        .unwrap_or_else(|error| Err(StoreError::storage("a read of the data file failed", error)))
}

impl Storage {
    /// Appends events to a stream (created on first write), all or nothing.
    pub fn append(
        &self,
        stream: &StreamName,
        events: Vec<Event>,
        now: Timestamp,
    ) -> Pending<Vec<Appended>> {
        match self {
            Storage::Redb(store) => store.append(stream, events, now),
            Storage::Postgres(store) => store.append(stream, events, now),
        }
    }

    /// Appends records from an export as they are.
    pub fn import(
        &self,
        stream: &StreamName,
        records: Vec<ImportedRecord>,
    ) -> Pending<Vec<Appended>> {
        match self {
            Storage::Redb(store) => store.import(stream, records),
            Storage::Postgres(store) => store.import(stream, records),
        }
    }

    /// Adds a note and its audit event.
    pub fn add_note(
        &self,
        stream: &StreamName,
        text: String,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Pending<Note> {
        match self {
            Storage::Redb(store) => store.add_note(stream, text, expires_at, now),
            Storage::Postgres(store) => store.add_note(stream, text, expires_at, now),
        }
    }

    /// Deletes a note; `false` if it did not exist.
    pub fn delete_note(&self, stream: &StreamName, id: u64) -> Pending<bool> {
        match self {
            Storage::Redb(store) => store.delete_note(stream, id),
            Storage::Postgres(store) => store.delete_note(stream, id),
        }
    }

    /// Deletes a stream; `false` if it did not exist.
    pub fn delete_stream(&self, stream: &StreamName) -> Pending<bool> {
        match self {
            Storage::Redb(store) => store.delete_stream(stream),
            Storage::Postgres(store) => store.delete_stream(stream),
        }
    }

    /// Sets a stream's retention.
    pub fn set_retention(&self, stream: &StreamName, retention: Retention) -> Pending<()> {
        match self {
            Storage::Redb(store) => store.set_retention(stream, retention),
            Storage::Postgres(store) => store.set_retention(stream, retention),
        }
    }

    /// Sets what a stream overrides of the server's anomaly detection.
    pub fn set_anomalies(&self, stream: &StreamName, overrides: AnomalyOverrides) -> Pending<()> {
        match self {
            Storage::Redb(store) => store.set_anomalies(stream, overrides),
            Storage::Postgres(store) => store.set_anomalies(stream, overrides),
        }
    }

    /// A stream's id and revision as reads of its history, changes and notes see it now;
    /// `None` if it does not exist. On PostgreSQL one indexed row of the database.
    pub async fn head(&self, stream: &StreamName) -> Result<Option<StreamPosition>, StoreError> {
        match self {
            Storage::Redb(store) => Ok(store.position(stream)),
            Storage::Postgres(store) => store.head(stream).await,
        }
    }

    /// A stream's revision as [`Storage::head`] sees it (0 for a stream that does not exist).
    pub async fn revision(&self, stream: &StreamName) -> Result<u64, StoreError> {
        Ok(self.head(stream).await?.map_or(0, |head| head.revision))
    }

    /// A stream's id and revision as this node's contexts see it, caught up to `min_revision`
    /// where the database has it (0: whatever this node has); `None` if it does not exist.
    pub async fn position(
        &self,
        stream: &StreamName,
        min_revision: u64,
    ) -> Result<Option<StreamPosition>, StoreError> {
        match self {
            // One node: what it has is everything there is.
            Storage::Redb(store) => Ok(store.position(stream)),
            Storage::Postgres(store) => store.position(stream, min_revision).await,
        }
    }

    /// Waits until the stream is at revision `wanted` or later for `read`, at most `wait`;
    /// [`StoreError::Behind`] if it is not by then. Resolves at once for 0.
    pub async fn reach(
        &self,
        stream: &StreamName,
        wanted: u64,
        read: Read,
        wait: Duration,
    ) -> Result<(), StoreError> {
        if wanted == 0 || self.revision_for(stream, wanted, read).await? >= wanted {
            return Ok(());
        }
        let started = Instant::now();
        // Subscribe before looking again: a change committed between the look and the wait
        // wakes it.
        let mut live = self.subscribe(stream);
        loop {
            let revision = self.revision_for(stream, wanted, read).await?;
            if revision >= wanted {
                return Ok(());
            }
            let left = wait.saturating_sub(started.elapsed());
            let recheck = match self {
                Storage::Redb(_) => left,
                Storage::Postgres(_) => left.min(RECHECK_INTERVAL),
            };
            let news = tokio::time::timeout(recheck, live.next()).await;
            if left.is_zero() || matches!(news, Ok(News::Closed)) {
                return Err(StoreError::Behind {
                    stream: stream.to_string(),
                    revision,
                    wanted,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
    }

    /// The stream's revision as `read` sees it; for a context on PostgreSQL the node's cached
    /// state, caught up to `wanted` if the database has it (no round trip when the node has
    /// heard of nothing newer).
    async fn revision_for(
        &self,
        stream: &StreamName,
        wanted: u64,
        read: Read,
    ) -> Result<u64, StoreError> {
        match read {
            Read::Context => Ok(self
                .position(stream, wanted)
                .await?
                .map_or(0, |position| position.revision)),
            Read::Stored => self.revision(stream).await,
        }
    }

    /// A stream's context window, `None` if the stream does not exist. On PostgreSQL from the
    /// node's cache, caught up to `min_revision` where the database has it.
    pub async fn context(
        &self,
        stream: &StreamName,
        request: &ContextRequest,
        now: Timestamp,
        min_revision: u64,
    ) -> Result<Option<ContextWindow>, StoreError> {
        match self {
            Storage::Redb(store) => {
                // A warm build takes microseconds and runs here. Loading a cold stream from
                // the file or tokenizing runs on a blocking thread.
                if request.encoding.is_warm()
                    && let Ok(window) = store.warm_context(stream, request, now)
                {
                    return Ok(window);
                }
                let (store, stream, request) = (store.clone(), stream.clone(), request.clone());
                blocking(move || store.context(&stream, &request, now)).await
            }
            Storage::Postgres(store) => store.context(stream, request, now, min_revision).await,
        }
    }

    /// A page of a stream's history.
    pub async fn records(
        &self,
        stream: &StreamName,
        query: &RecordQuery,
    ) -> Result<RecordPage, StoreError> {
        match self {
            Storage::Redb(store) => {
                let (store, stream, query) = (store.clone(), stream.clone(), query.clone());
                blocking(move || store.records(&stream, &query)).await
            }
            Storage::Postgres(store) => store.records(stream, query).await,
        }
    }

    /// Changes with revision greater than `after`, oldest first, at most `limit`.
    pub async fn changes(
        &self,
        stream: &StreamName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        match self {
            Storage::Redb(store) => {
                let (store, stream) = (store.clone(), stream.clone());
                blocking(move || store.changes(&stream, after, limit)).await
            }
            Storage::Postgres(store) => store.changes(stream, after, limit).await,
        }
    }

    /// A stream's live notes, oldest first.
    pub async fn notes(
        &self,
        stream: &StreamName,
        now: Timestamp,
    ) -> Result<Vec<Note>, StoreError> {
        match self {
            Storage::Redb(store) => {
                let (store, stream) = (store.clone(), stream.clone());
                blocking(move || store.notes(&stream, now)).await
            }
            Storage::Postgres(store) => store.notes(stream, now).await,
        }
    }

    /// One stream's statistics; `None` if it does not exist.
    pub async fn stream(&self, stream: &StreamName) -> Result<Option<StreamStats>, StoreError> {
        match self {
            Storage::Redb(store) => {
                let (store, stream) = (store.clone(), stream.clone());
                blocking(move || Ok(store.stream(&stream))).await
            }
            Storage::Postgres(store) => store.stream(stream).await,
        }
    }

    /// A page of streams' statistics, by name: at most `limit` of those after `after` whose
    /// names start with `prefix` and that `admit` lets through, and the name to continue after
    /// when there are more.
    pub async fn streams_page(
        &self,
        after: Option<&str>,
        prefix: &str,
        limit: usize,
        admit: impl Fn(&StreamName) -> bool,
    ) -> Result<(Vec<StreamStats>, Option<StreamName>), StoreError> {
        match self {
            Storage::Redb(store) => Ok(store.streams_page(after, limit, |name| {
                name.as_str().starts_with(prefix) && admit(name)
            })),
            Storage::Postgres(store) => store.streams_page(after, prefix, limit, admit).await,
        }
    }

    /// The stream's live changes, from now on (see [`Live`]).
    pub fn subscribe(&self, stream: &StreamName) -> Live {
        match self {
            Storage::Redb(store) => Live::Redb(store.subscribe_to(stream)),
            Storage::Postgres(store) => Live::Postgres(store.follow(stream)),
        }
    }

    /// Why one of the store's threads died, if one did (the redb store; a PostgreSQL node's
    /// tasks answer every failure instead).
    pub fn failure(&self) -> Option<String> {
        match self {
            Storage::Redb(store) => store.failure(),
            Storage::Postgres(_) => None,
        }
    }

    /// What is wrong, if writes cannot succeed now: the store failed, its disk is full, or the
    /// database does not answer.
    pub async fn unhealthy(&self) -> Option<Unhealthy> {
        match self {
            Storage::Redb(store) => {
                let (status, cause) = match (store.failure(), store.degraded()) {
                    (Some(cause), _) => ("failed", cause),
                    (None, Some(cause)) => ("degraded", cause),
                    (None, None) => return None,
                };
                Some(Unhealthy { status, cause })
            }
            Storage::Postgres(store) => store.health().await.err().map(|error| Unhealthy {
                status: "unavailable",
                cause: error.to_string(),
            }),
        }
    }

    /// Runs background work for as long as the server does: nothing on redb (its writer does
    /// it as time passes); on PostgreSQL age retention and note expiry every
    /// [`MAINTENANCE_INTERVAL`].
    pub async fn maintenance(&self) {
        let Storage::Postgres(store) = self else {
            return std::future::pending().await;
        };
        let mut ticks = tokio::time::interval(MAINTENANCE_INTERVAL);
        loop {
            ticks.tick().await;
            if let Err(error) = store.maintain(chrono::Utc::now()).await {
                tracing::warn!(%error, "background maintenance failed; it runs again later");
            }
        }
    }

    /// Commits what is queued and closes the store (the redb file; a PostgreSQL node's
    /// connections close as its last handle goes).
    pub async fn close(self) -> Result<(), StoreError> {
        match self {
            Storage::Redb(store) => blocking(move || store.close()).await,
            Storage::Postgres(_) => Ok(()),
        }
    }
}

/// A stream's live changes. On redb the changes themselves, as each commit publishes them; on
/// PostgreSQL a wake-up that the stream moved on (from any node), after which the follower
/// reads the changelog. Either way commits to other streams do not wake it.
pub enum Live {
    /// The redb store's feed.
    Redb(Subscription),
    /// The node's wake-ups of one stream.
    Postgres(StreamWakeups),
}

/// What a [`Live`] feed has for its follower.
pub enum News {
    /// The changes of one commit, in revision order.
    Changes(CommittedChanges),
    /// The stream changed (or changes were missed): read the changelog past what was sent.
    Moved,
    /// The feed ended for good (the store is closing).
    Closed,
}

impl Live {
    /// The next news, waiting for it. Cancel-safe.
    pub async fn next(&mut self) -> News {
        match self {
            Live::Redb(subscription) => match subscription.recv().await {
                Ok(changes) => News::Changes(changes),
                Err(broadcast::error::RecvError::Lagged(_)) => News::Moved,
                Err(broadcast::error::RecvError::Closed) => News::Closed,
            },
            Live::Postgres(wakeups) => match wakeups.next().await {
                Some(()) => News::Moved,
                None => News::Closed,
            },
        }
    }

    /// Takes every news already queued without waiting; whether there was any.
    pub fn drain(&mut self) -> bool {
        match self {
            Live::Redb(subscription) => {
                use broadcast::error::TryRecvError;
                let mut any = false;
                while matches!(
                    subscription.try_recv(),
                    Ok(_) | Err(TryRecvError::Lagged(_))
                ) {
                    any = true;
                }
                any
            }
            Live::Postgres(wakeups) => wakeups.take(),
        }
    }
}
