//! The PostgreSQL backend (issue #15): the same streams, records, notes and changes as the redb
//! file, kept in a PostgreSQL database that several recap nodes share.
//!
//! - `migrate.rs`: versioned schema migrations, applied by every node on open.
//! - `writer.rs`: one writer task per node takes every write request, and commits each batch of
//!   requests in one transaction (group commit). The transaction first locks the row of every
//!   stream it writes (`SELECT … FOR UPDATE`, in name order), which serializes writers of a
//!   stream across nodes; it then places the requests on the node's shadow of each stream (the
//!   same [`StreamState`](crate::stream::StreamState) placement the redb writer uses), reloaded
//!   from the database when another node wrote since. So seqs stay dense, revisions gap-free,
//!   repeat counts exact and collapse correct with writers on several nodes. A caller is
//!   answered only after the commit.
//! - `reads.rs`: history pages, changelog replay, notes and stream statistics, on a pool of
//!   connections.
//! - `statements.rs`: the statements that write a placed batch.
//! - `listen.rs`: waking other nodes up, once per committed batch.
//! - `tls.rs`: TLS as the URL's `sslmode` and `sslrootcert` ask, for every connection.
//! - `codec.rs`: what the tables hold.
//! - `writer/maintain.rs`: note expiry, retention by age and by count, changelog trimming, in
//!   bounded transactions through the writer task (`recap serve` runs it every 30 s).
//! - `load.rs`: a stream's state read back from the database, exactly as it was appended.
//! - `cache.rs`, `contexts.rs`: the node's cache of stream states for contexts, caught up from
//!   the changelog when a stream moved on.
//! - `hub.rs`: wake-ups per stream for the node's feeds.
//! - `listing.rs`: where a stream stands, and the list of streams.
//! - `health.rs`: the health check's own connection.
//!
//! `recap serve --database-url` serves it through `store::Storage`; what is not built yet is
//! listed in `docs/design.md`.

mod cache;
mod codec;
mod contexts;
mod health;
mod hub;
mod listen;
mod listing;
mod load;
mod migrate;
mod reads;
mod statements;
mod tls;
mod writer;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::anomaly::AnomalyOverrides;
use crate::event::{Event, Note, StreamName, Timestamp};
use crate::stream::Appended;

pub use hub::StreamWakeups;
pub use listen::Wakeup;
pub use migrate::PG_SCHEMA_VERSION;

use super::{
    Change, ImportedRecord, Pending, RecordPage, RecordQuery, Retention, StoreError, StoreOptions,
    StreamStats,
};
use writer::{Op, Queued, Reply, Request};

/// The error type of the client crate.
type PgError = tokio_postgres::Error;

/// How long connecting to the database may take before a write or read says it is unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a batch's transaction may take before its callers are told the database is
/// unavailable (nothing of it is acknowledged): a database that hangs must not hang writers.
pub const BATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections a node keeps for reads (the writer has its own).
pub const READ_POOL_SIZE: usize = 16;

/// A recap store in a PostgreSQL database: cheap to clone, shared by every request handler.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    requests: mpsc::UnboundedSender<Request>,
    options: StoreOptions,
    /// `postgres://host:port/db`, without user or password: for messages.
    place: String,
    /// Never set: the writer task answers every failure; kept for [`Pending`].
    failure: Arc<OnceLock<String>>,
    /// What the listening connection hears (see [`PgStore::listen`]).
    wakeups: broadcast::Sender<Wakeup>,
    /// Held while the store is: the listener stops once it is gone.
    _alive: Arc<()>,
    counters: Arc<writer::Counters>,
    /// The node's stream states, for contexts.
    cache: Arc<cache::NodeCache>,
    /// The wake-ups of the streams feeds follow.
    hub: Arc<hub::Hub>,
    /// The health check's own connection.
    health: health::HealthCheck,
}

/// What a node's writer has done since the store was opened, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PgMetrics {
    /// Transactions committed (one per batch of requests).
    pub commits: u64,
    /// Batches that failed (their callers got an error).
    pub failed_commits: u64,
    /// Batches tried again after losing a deadlock or serialization race with another node.
    pub retries: u64,
    /// Shadows read from the database: a stream's first write on this node (but for a stream
    /// the write creates), or a write after another node wrote to it (what hashing streams to
    /// nodes keeps rare).
    pub shadow_loads: u64,
    /// Write requests acknowledged.
    pub requests: u64,
    /// Events and imported records acknowledged.
    pub events: u64,
    /// Streams whose state this node has in memory for contexts.
    pub cached_streams: usize,
    /// Bytes those states hold.
    pub cache_bytes: usize,
    /// States read whole from the database (first read, or too far behind to catch up).
    pub cache_loads: u64,
    /// States brought up to date from the changelog.
    pub cache_catch_ups: u64,
    /// States dropped to stay within the cache budget.
    pub cache_evictions: u64,
}

/// Whether a URL names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_database_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`), brings its
    /// schema up to date and starts this node's writer task. Needs a tokio runtime. The URL's
    /// `sslmode` (`disable`, `prefer` (the default), `require`, `verify-ca`, `verify-full`) and
    /// `sslrootcert` (a PEM file of CAs, else the system's roots) mean what they mean to libpq.
    ///
    /// Fails with [`StoreError::Unavailable`] when the database cannot be reached,
    /// [`StoreError::SchemaTooNew`] when a newer recap migrated it, a storage failure saying what
    /// to change when the URL, or TLS with the server, is wrong.
    pub async fn open(url: &str, mut options: StoreOptions) -> Result<PgStore, StoreError> {
        options.tail = options.tail.for_policy(&options.collapse);
        let (mut config, tls) = tls::configure(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("recap");
        let place = place_of(&config);
        let (mut client, connection) = connect(&config, &tls, &place).await?;
        let applied = migrate::to_current(&mut client, &place).await;
        drop(client);
        drop(connection);
        let applied = applied?;
        if !applied.is_empty() {
            tracing::info!(database = %place, versions = ?applied, "migrated the database schema");
        }
        let manager = Manager::from_config(
            config.clone(),
            tls.connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(READ_POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|error| StoreError::storage("cannot build the connection pool", error))?;
        let (requests, receiver) = mpsc::unbounded_channel();
        let (wakeups, _) = broadcast::channel(listen::WAKEUP_QUEUE);
        let alive = Arc::new(());
        let cache = Arc::new(cache::NodeCache::new(options.cache_bytes));
        tokio::spawn(cache::follow(wakeups.subscribe(), cache.clone()));
        let hub = Arc::new(hub::Hub::default());
        tokio::spawn(hub::dispatch(wakeups.subscribe(), hub.clone()));
        let (follower, trims) = (cache.clone(), cache.clone());
        tokio::spawn(listen::run(
            config.clone(),
            tls.clone(),
            place.clone(),
            wakeups.clone(),
            Arc::downgrade(&alive),
            move |listening| follower.resync(listening),
            move |stream| trims.trimmed(stream),
        ));
        let health = health::HealthCheck::new(config.clone(), tls.clone(), place.clone());
        let counters = Arc::new(writer::Counters::default());
        tokio::spawn(
            writer::Writer::new(
                config,
                tls.clone(),
                place.clone(),
                options.clone(),
                counters.clone(),
                cache.clone(),
            )
            .run(receiver),
        );
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                requests,
                options,
                place,
                failure: Arc::default(),
                wakeups,
                _alive: alive,
                counters,
                cache,
                hub,
                health,
            }),
        })
    }

    /// Where the database is (`postgres://host:port/db`, without credentials).
    pub fn place(&self) -> &str {
        &self.inner.place
    }

    fn submit<T>(
        &self,
        op: Op,
        reply: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Reply,
    ) -> Pending<T> {
        let (sender, receiver) = oneshot::channel();
        // A request the writer no longer takes is dropped with its sender, which resolves the
        // Pending to `ShuttingDown`.
        drop(self.inner.requests.send(Request::Write(Queued {
            op,
            reply: reply(sender),
        })));
        Pending {
            reply: receiver,
            failure: self.inner.failure.clone(),
        }
    }

    /// Counters of this node's writer.
    pub fn metrics(&self) -> PgMetrics {
        let counters = &self.inner.counters;
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        PgMetrics {
            commits: load(&counters.commits),
            failed_commits: load(&counters.failed_commits),
            retries: load(&counters.retries),
            shadow_loads: load(&counters.shadow_loads),
            requests: load(&counters.requests),
            events: load(&counters.events),
            cached_streams: self.inner.cache.len(),
            cache_bytes: self.inner.cache.meter.bytes(),
            cache_loads: load(&self.inner.cache.loads),
            cache_catch_ups: load(&self.inner.cache.catch_ups),
            cache_evictions: load(&self.inner.cache.evictions),
        }
    }

    /// Whether the database answers now (`SELECT 1` on a pooled connection, within
    /// [`CONNECT_TIMEOUT`]): for a health check. `Unavailable` says why not, or a storage
    /// failure what to change when TLS with the server cannot be agreed on.
    pub async fn health(&self) -> Result<(), StoreError> {
        self.inner.health.check().await
    }

    /// Wake-ups for every change committed by any node sharing the database, this one
    /// included: each committed batch announces each stream it changed with its new revision,
    /// once. What changed is read with [`PgStore::changes`]. A receiver that falls more than
    /// 4,096 wake-ups behind gets `Lagged` from tokio's broadcast channel, which, like
    /// [`Wakeup::Resync`], means: read the changelogs you follow again.
    pub fn listen(&self) -> broadcast::Receiver<Wakeup> {
        self.inner.wakeups.subscribe()
    }

    /// Wake-ups of one stream (and every resync), from now on: what a feed of that stream
    /// follows. Commits to other streams do not wake it.
    pub fn follow(&self, stream: &StreamName) -> StreamWakeups {
        self.inner.hub.follow(stream)
    }

    /// Appends events to a stream (created on first write), all or nothing; resolves once
    /// committed. See [`Store::append`](super::Store::append).
    pub fn append(
        &self,
        stream: &StreamName,
        events: Vec<Event>,
        now: Timestamp,
    ) -> Pending<Vec<Appended>> {
        let op = Op::Append {
            stream: stream.clone(),
            events,
            now,
        };
        self.submit(op, Reply::Appended)
    }

    /// Appends records from an export as they are, all or nothing.
    pub fn import(
        &self,
        stream: &StreamName,
        records: Vec<ImportedRecord>,
    ) -> Pending<Vec<Appended>> {
        let op = Op::Import {
            stream: stream.clone(),
            records,
        };
        self.submit(op, Reply::Appended)
    }

    /// Adds a note and its audit event.
    pub fn add_note(
        &self,
        stream: &StreamName,
        text: String,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Pending<Note> {
        let op = Op::AddNote {
            stream: stream.clone(),
            text,
            expires_at,
            now,
        };
        self.submit(op, Reply::Note)
    }

    /// Deletes a note; `false` if it did not exist.
    pub fn delete_note(&self, stream: &StreamName, id: u64) -> Pending<bool> {
        let op = Op::DeleteNote {
            stream: stream.clone(),
            id,
        };
        self.submit(op, Reply::Flag)
    }

    /// Deletes a stream with its records, notes and changelog, in one transaction; `false` if
    /// it did not exist.
    pub fn delete_stream(&self, stream: &StreamName) -> Pending<bool> {
        let op = Op::DeleteStream {
            stream: stream.clone(),
        };
        self.submit(op, Reply::Flag)
    }

    /// Sets a stream's retention. `max_records` is applied by every later write to the stream
    /// (in its transaction) and by [`PgStore::maintain`]; `max_age` by `maintain`.
    pub fn set_retention(&self, stream: &StreamName, retention: Retention) -> Pending<()> {
        let op = Op::SetRetention {
            stream: stream.clone(),
            retention,
        };
        self.submit(op, Reply::Done)
    }

    /// Sets what a stream overrides of the server's anomaly detection (replacing what it set
    /// before; nothing overridden follows the server); [`StoreError::UnknownStream`] if the
    /// stream does not exist. Applies to the events placed after it, on every node. See
    /// [`Store::set_anomalies`](super::Store::set_anomalies).
    pub fn set_anomalies(&self, stream: &StreamName, overrides: AnomalyOverrides) -> Pending<()> {
        let op = Op::SetAnomalies {
            stream: stream.clone(),
            overrides,
        };
        self.submit(op, Reply::Done)
    }

    /// Runs every pending piece of background work as of `now` (note expiry, retention by age
    /// and by count, changelog trimming), in bounded transactions through this node's writer,
    /// and resolves when none is left; see [`Store::maintain`](super::Store::maintain). Safe to
    /// run on several nodes at once: each stream is maintained under its row's lock, and what
    /// one node did is not done again by another. Nothing runs it on a timer yet: a server on
    /// this backend calls it periodically.
    pub async fn maintain(&self, now: Timestamp) -> Result<(), StoreError> {
        let (reply, receiver) = oneshot::channel();
        drop(self.inner.requests.send(Request::Maintain { now, reply }));
        receiver.await.unwrap_or(Err(StoreError::ShuttingDown))
    }

    /// A page of a stream's history.
    pub async fn records(
        &self,
        stream: &StreamName,
        query: &RecordQuery,
    ) -> Result<RecordPage, StoreError> {
        reads::records(&self.inner.pool, stream, query).await
    }

    /// Changes of a stream with revision greater than `after`, oldest first, at most `limit`.
    pub async fn changes(
        &self,
        stream: &StreamName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        reads::changes(&self.inner.pool, stream, after, limit).await
    }

    /// A stream's live notes, oldest first.
    pub async fn notes(
        &self,
        stream: &StreamName,
        now: Timestamp,
    ) -> Result<Vec<Note>, StoreError> {
        reads::notes(&self.inner.pool, stream, now).await
    }

    /// One stream's statistics; `None` if it does not exist.
    pub async fn stream(&self, stream: &StreamName) -> Result<Option<StreamStats>, StoreError> {
        let options = &self.inner.options;
        reads::stream(&self.inner.pool, stream, options.retention, options.anomaly).await
    }
}

/// Opens a connection with `tls` and drives it on its own task.
async fn connect(
    config: &tokio_postgres::Config,
    tls: &tls::Tls,
    place: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
    let (client, connection) = config
        .connect(tls.connector.clone())
        .await
        .map_err(|error| connect_error(&error, tls, place))?;
    let place = place.to_owned();
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(database = %place, %error, "database connection closed");
        }
    });
    Ok((client, driver))
}

/// `postgres://host:port/db` of a config, without user or password.
fn place_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("postgres://{host}:{port}/{db}")
}

/// SQLSTATE classes and codes that mean the database cannot serve now, rather than that the
/// statement was wrong: connection exceptions (08), shutting down or starting up (57P0x), too
/// many connections (53300).
fn means_unavailable(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P0") || code == "53300"
}

/// SQLSTATE classes and codes that mean the connection's settings are wrong, not that the
/// database is away: invalid authorization (28: wrong password, a role that may not log in, no
/// `pg_hba.conf` entry) and a database that does not exist (3D000).
fn means_misconfigured(code: &str) -> bool {
    code.starts_with("28") || code == "3D000"
}

/// The store's error for a database error: [`StoreError::Unavailable`] (a 503 with
/// `Retry-After`) when the database cannot be reached or is not serving, a storage failure
/// otherwise.
pub(super) fn unreachable_or(error: PgError, doing: &str) -> StoreError {
    let unavailable = match error.as_db_error() {
        Some(db) => means_unavailable(db.code().code()),
        // No answer from the server: the connection failed, closed or timed out.
        None => true,
    };
    let why = describe(&error);
    if unavailable {
        StoreError::Unavailable(format!("the database is unreachable ({doing}: {why})"))
    } else {
        StoreError::storage_text(format!("{doing}: {why}"))
    }
}

/// What went wrong, in the server's words where it said something: the client crate's own
/// message for a server error is only "db error", with PostgreSQL's message (`database "x"
/// does not exist`) and its SQLSTATE code in the error's source.
pub(super) fn describe(error: &PgError) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(&format!(": {cause_text}"));
                }
                source = cause.source();
            }
            text
        }
    }
}

/// The store's error for a connection that could not be opened. TLS that cannot be agreed on
/// (the server offers none but the mode requires it, a certificate that does not verify) is a
/// configuration to fix, not a database that will be back: a storage failure that says what to
/// change. Anything else (not accepting connections, too many, shutting down, no answer) means
/// the database cannot serve this node now.
fn connect_error(error: &PgError, tls: &tls::Tls, place: &str) -> StoreError {
    if let Some(why) = tls::explain(error, tls, place) {
        return StoreError::storage_text(why);
    }
    match error.as_db_error() {
        // The server answered and refused: a database that does not exist, a wrong password,
        // a role that may not log in. Retrying will not help; the URL or the server's
        // settings must change. (A database not accepting connections for now is away.)
        Some(db) if means_misconfigured(db.code().code()) => StoreError::storage_text(format!(
            "the database at {place} refused the connection: {}; check the URL (database name, user, password) and the server's pg_hba.conf",
            describe(error)
        )),
        _ => StoreError::Unavailable(format!(
            "the database is unreachable (connecting to {place}: {})",
            describe(error)
        )),
    }
}

/// The store's error for a failure to get a pooled connection: whatever the cause (refused,
/// timed out, the server not accepting connections), the database cannot serve this read now.
fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::{PoolError, TimeoutType};
    match error {
        // The database may be fine: this node's reads hold every connection.
        PoolError::Timeout(TimeoutType::Wait) => StoreError::Unavailable(format!(
            "all {READ_POOL_SIZE} of this node's read connections to the database stayed busy for {} s (too many reads at once, or a slow database)",
            CONNECT_TIMEOUT.as_secs()
        )),
        PoolError::Backend(error) => StoreError::Unavailable(format!(
            "the database is unreachable (getting a connection: {})",
            describe(&error)
        )),
        other => StoreError::Unavailable(format!(
            "the database is unreachable (getting a connection: {other})"
        )),
    }
}
