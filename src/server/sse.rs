//! `GET /v1/streams/{s}/subscribe`: server-sent events of a stream's changes (and the same feed
//! in OpenIntent's dialect for `/api/v1/intents/{id}/subscribe`, see [`Dialect`]).
//!
//! Frames: `id:` is the stream revision of the change; `event:` is `record` (a new record),
//! `repeat` (a record's count went up), `note` (a note was added) or `note_deleted`. A client
//! resumes with `Last-Event-ID: r` (or `?after=r`) and gets every change after `r` exactly once,
//! in revision order. Without either it gets the changes from now on. If the changelog no longer
//! holds what a client missed, an `event: gap` frame says which revisions are gone (re-read them
//! with `GET .../events`) before the feed goes on.
//!
//! A revision means something only for the stream as it is now: deleting a stream and creating it
//! again restarts its revisions at 1 (under a new stream id, see [`StreamPosition`]). So a resume
//! point beyond the stream's revision is not skipped to: the feed sends a *reset*, an `event: gap`
//! frame with `"reset": true` and `id: 0` (a client that reconnects after it resumes from the
//! start), and replays the stream from its first stored change. A feed whose stream is deleted
//! sends the same reset once it notices (at the new stream's first change, or at the next
//! keepalive while the stream stays gone) and follows the new stream from revision 1. A resume
//! point at or below the revision of a stream created again cannot be told from a real one:
//! `id:` is a bare revision.
//!
//! How there are no gaps and no duplicates while writers are busy: the feed subscribes to its
//! stream's live changes *first* ([`Storage::subscribe`]), then replays the changelog after
//! `r`, then follows the live changes, skipping every change with a revision it has already
//! sent. A change committed between the subscription and the replay shows up in both and is sent
//! once. The subscription is to the stream's name, so the first change of a stream created again
//! reaches the feed too.
//!
//! A slow subscriber never slows writers, and what it holds is bounded in bytes:
//! - The store never waits for a subscriber: at most
//!   [`MAX_LAG_BYTES`](crate::store::MAX_LAG_BYTES) of changes wait for a feed. A feed further
//!   behind is dropped from the live changes (`Lagged`) and catches up from the changelog, as it
//!   does when it sees a jump in revisions; catch-up reads pages of about [`REPLAY_PAGE_BYTES`].
//! - Frames wait for the client in a buffer of at most [`MAX_BUFFERED_BYTES`] (a larger frame
//!   only goes into an empty buffer), on top of what hyper and the kernel buffer. While it is
//!   full the feed waits for the client, and the store drops it to the changelog if it must.
//! - A client that takes no frame for a keepalive interval while its buffer is full is *cut
//!   off*: its response ends, after a `: cut off` comment when there is room for it. The
//!   comment moves no resume point: a client that reconnects with its last `id:` resumes exactly
//!   where it was.
//!
//! So a subscriber holds about 2.5 MiB at most (the three bounds), besides hyper's and the kernel's
//! buffers of its connection, however far behind it is and however large the events.
//!
//! `: keepalive` comments go out whenever nothing was written to the client for a keepalive
//! interval. On redb, commits to other streams do not wake the feed at all.
//!
//! On PostgreSQL the live changes are wake-ups ([`Live::Postgres`]: a stream moved on, on any
//! node), after which the feed reads the changelog from the database past what it sent. So a
//! subscriber on any node sees the changes written through every node, in revision order, and
//! resumes with `Last-Event-ID` on any node; a wake-up that is missed (the listening connection
//! was down) is made good by a resync, which every feed answers by reading its changelog.
//!
//! [`Storage::subscribe`]: crate::store::Storage::subscribe
//! [`Live::Postgres`]: crate::store::Live::Postgres

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::event::{Note, StreamName, Timestamp};
use crate::store::{Change, ChangeBody, Live, News, Read, RecordQuery, StoreError, StreamPosition};

use super::App;
use super::consistency;
use super::openintent;
use super::query::Query;
use super::wire::ApiError;
use super::wire::Body;

/// Default interval between `: keepalive` comments on an idle subscription: under the usual
/// 30 to 60 s idle timeouts of proxies and load balancers.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
/// Most frames buffered per subscriber toward its connection: keepalives and small changes are
/// bounded by this, large ones by [`MAX_BUFFERED_BYTES`].
const BUFFER_FRAMES: usize = 256;
/// Most bytes of frames buffered per subscriber toward its connection (a frame larger than this
/// goes into an empty buffer alone): 256 KiB is a second or more of a slow link, and what 4 of
/// the largest records take.
pub(super) const MAX_BUFFERED_BYTES: usize = 256 * 1024;
/// Most changes read from the changelog per catch-up step.
const REPLAY_PAGE: usize = 1_000;
/// About how many bytes of changes one catch-up step reads: each step asks for as many changes
/// as fit at the size of the previous step's.
pub(super) const REPLAY_PAGE_BYTES: usize = 1024 * 1024;
/// Changes the first catch-up step asks for, before their size is known: 16 messages of the
/// largest size (64 KiB) fill [`REPLAY_PAGE_BYTES`].
const FIRST_REPLAY_PAGE: usize = 16;

/// The query parameters of the subscribe routes.
pub(crate) const PARAMS: &[&str] = &["after", consistency::MIN_REVISION_PARAM];

/// Which frames a feed writes: recap's own (`record`, `repeat`, `note`, ...) or OpenIntent's
/// (`event:` the event type, `data:` the event object; see [`super::openintent`]). The
/// machinery (resume, replay, live feed, keepalives, shutdown) is the same for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    /// `GET /v1/streams/{s}/subscribe`.
    Recap,
    /// `GET /api/v1/intents/{id}/subscribe` and `/api/v1/subscribe/intents/{id}`.
    OpenIntent,
}

/// `GET /v1/streams/{s}/subscribe` (recap's frames) and the OpenIntent subscribe routes: the
/// feed resumes after `Last-Event-ID`, or `?after=`, or starts from now.
pub(super) async fn subscribe(
    app: &Arc<App>,
    stream: StreamName,
    headers: &HeaderMap,
    query: Option<&str>,
    dialect: Dialect,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(query, PARAMS)?;
    let resume = match consistency::header_revision(
        headers,
        "Last-Event-ID",
        "a revision (a whole number) this feed sent",
    )? {
        Some(revision) => Some(revision),
        None => query.number::<u64>("after")?,
    };
    consistency::reach(app, &stream, Read::Stored, headers, &query).await?;
    open(app, stream, resume, dialect).await
}

/// The revision a reconnecting client names in `Last-Event-ID`, if it sent one.
/// Starts a feed of `stream`'s changes after revision `resume` (from now on when `None`) and
/// returns the streaming response.
pub(super) async fn open(
    app: &Arc<App>,
    stream: StreamName,
    resume: Option<u64>,
    dialect: Dialect,
) -> Result<Response<Body>, ApiError> {
    // Subscribe before reading where to start: nothing committed from here on can be missed.
    let live = app.store.subscribe(&stream);
    let (incarnation, revision) = match app.store.head(&stream).await? {
        Some(StreamPosition {
            stream_id,
            revision,
        }) => (Incarnation::Of(stream_id), revision),
        None => (Incarnation::Next(0), 0),
    };
    let after = resume.unwrap_or(revision);
    // Beyond the stream's revision: a revision of a deleted stream (or of another one).
    let stale_resume =
        (after > revision).then_some((after, Reset::PastLatest { latest: revision }));
    let (sender, receiver) = mpsc::channel(BUFFER_FRAMES);
    let feed = Feed {
        app: Arc::clone(app),
        stream,
        dialect,
        incarnation,
        last_sent: if stale_resume.is_some() { 0 } else { after },
        stale_resume,
        replay_limit: FIRST_REPLAY_PAGE,
        outbox: Outbox::new(sender),
        last_write: Instant::now(),
        shutdown: app.shutdown.clone(),
    };
    tokio::spawn(feed.run(live));

    let mut response = Response::new(Body::Channel(receiver));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the feed.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Why a feed starts its client over from the stream's first change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reset {
    /// The resume point the client named is past the stream's latest revision: nothing says
    /// the stream was deleted (the point may be from another stream, or a typo).
    PastLatest {
        /// The stream's revision when the feed opened.
        latest: u64,
    },
    /// The stream the feed followed was deleted (and maybe created again: revisions start
    /// over at 1).
    Deleted,
}

impl Reset {
    /// What happened to the resume point `after`, for the reset frame's message; `what` is
    /// "stream" or "intent".
    fn explain(self, after: u64, what: &str) -> String {
        match self {
            Reset::PastLatest { latest } => format!(
                "revision {after} is past this {what}'s latest revision ({latest}): it is not a revision of this {what} as it is now (one of a {what} of this name deleted since, or of another {what})"
            ),
            Reset::Deleted => format!(
                "revision {after} is not one of this {what}'s revisions any more: the {what} was deleted, and maybe created again, since (revisions start over at 1)"
            ),
        }
    }
}

/// Why a feed stopped.
enum Stop {
    /// The client went away.
    Disconnected,
    /// The server is shutting down.
    ShuttingDown,
    /// The store failed.
    Store(StoreError),
    /// The client took no frame for a keepalive interval while its buffer was full.
    CutOff,
}

/// Which stream of the feed's name `last_sent` counts revisions of. Each stream created gets a
/// new id and ids only grow, so a change with a smaller id is of a stream deleted since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Incarnation {
    /// The stream with this id.
    Of(u64),
    /// None (not created yet, or deleted): the next one created, whose id is at least this.
    /// `last_sent` is 0 meanwhile.
    Next(u64),
}

impl Incarnation {
    /// How the stream with id `stream_id` compares with this one: `Less` is a deleted stream,
    /// `Greater` one created since.
    fn compare(self, stream_id: u64) -> Ordering {
        match self {
            Incarnation::Of(own) => stream_id.cmp(&own),
            Incarnation::Next(from) if stream_id >= from => Ordering::Greater,
            Incarnation::Next(_) => Ordering::Less,
        }
    }
}

/// One subscriber's feed.
struct Feed {
    app: Arc<App>,
    stream: StreamName,
    dialect: Dialect,
    incarnation: Incarnation,
    last_sent: u64,
    /// The client's resume point, when it is beyond the stream's revision (a reset is due).
    stale_resume: Option<(u64, Reset)>,
    /// Changes the next catch-up step asks for.
    replay_limit: usize,
    outbox: Outbox,
    /// When a frame or comment was last written to this client.
    last_write: Instant,
    shutdown: watch::Receiver<bool>,
}

impl Feed {
    async fn run(mut self, mut live: Live) {
        self.app.metrics.sse_subscribers(1);
        let result = self.follow(&mut live).await;
        // Nothing more for this subscriber: its queue in the store goes now.
        drop(live);
        match result {
            Err(Stop::Store(error)) => {
                tracing::error!(%error, stream = %self.stream, "subscription ended by a store error");
            }
            Err(Stop::CutOff) => self.cut_off(),
            Ok(()) | Err(Stop::Disconnected | Stop::ShuttingDown) => {}
        }
        // Dropping the sender (with `self`) ends the response body.
        self.app.metrics.sse_subscribers(-1);
    }

    /// Ends the feed of a client that stopped reading. The comment goes after what is
    /// buffered, if there is a slot for it: it may take the buffer a few bytes past its bound.
    fn cut_off(&mut self) {
        self.app.metrics.count_sse_cut_off();
        tracing::info!(
            stream = %self.stream,
            last_sent = self.last_sent,
            "cut off an SSE subscriber that stopped reading"
        );
        self.outbox.forget_taken();
        let comment = format!(
            ": cut off: this client took nothing for {} s while {} bytes waited for it; reconnect with Last-Event-ID to resume\n\n",
            self.app.options.sse_keepalive.as_secs_f64(),
            self.outbox.bytes,
        );
        drop(self.outbox.sender.try_send(Bytes::from(comment)));
    }

    async fn follow(&mut self, live: &mut Live) -> Result<(), Stop> {
        let mut shutdown = self.shutdown.clone();
        if *shutdown.borrow() {
            return Ok(());
        }
        self.send(Bytes::from_static(b": subscribed\n\n")).await?;
        if let Some((resume, why)) = self.stale_resume.take() {
            self.send_reset(resume, why).await?;
        }
        self.catch_up().await?;
        let keepalive = self.app.options.sse_keepalive;
        loop {
            let idle_until = self.last_write + keepalive;
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                () = self.outbox.sender.closed() => return Err(Stop::Disconnected),
                () = tokio::time::sleep_until(idle_until) => self.idle().await?,
                news = live.next() => match news {
                    News::Changes(changes) => self.forward(&changes).await?,
                    News::Moved => self.catch_up().await?,
                    News::Closed => return Ok(()),
                },
            }
        }
    }

    /// Nothing was written for a keepalive interval: notices a deleted stream (no change says
    /// so), then keeps the connection open.
    async fn idle(&mut self) -> Result<(), Stop> {
        let before = self.last_write;
        if let Some(next) = self.replaced().await? {
            self.restart(next).await?;
            self.catch_up().await?;
        }
        if self.last_write == before {
            self.send(Bytes::from_static(b": keepalive\n\n")).await?;
        }
        Ok(())
    }

    /// What the store has under the feed's name now, if that is not the stream the feed
    /// follows: the stream was deleted (and maybe created again).
    async fn replaced(&self) -> Result<Option<Incarnation>, Stop> {
        let head = self
            .app
            .store
            .head(&self.stream)
            .await
            .map_err(Stop::Store)?;
        Ok(match (head, self.incarnation) {
            (Some(now), followed) if followed.compare(now.stream_id) == Ordering::Greater => {
                Some(Incarnation::Of(now.stream_id))
            }
            (None, Incarnation::Of(deleted)) => Some(Incarnation::Next(deleted + 1)),
            _ => None,
        })
    }

    /// Whether a change of the feed's stream name is of the stream it follows; one of a stream
    /// created since restarts the feed on that stream first.
    async fn admit(&mut self, change: &Change) -> Result<bool, Stop> {
        match self.incarnation.compare(change.stream_id) {
            Ordering::Less => Ok(false),
            Ordering::Equal => Ok(true),
            Ordering::Greater => {
                self.restart(Incarnation::Of(change.stream_id)).await?;
                Ok(true)
            }
        }
    }

    /// Follows `next` from its start: the stream followed so far was deleted, and revisions
    /// start over. A client that holds one of the old stream's revisions is told so.
    async fn restart(&mut self, next: Incarnation) -> Result<(), Stop> {
        if self.last_sent > 0 {
            self.send_reset(self.last_sent, Reset::Deleted).await?;
        }
        self.incarnation = next;
        self.last_sent = 0;
        Ok(())
    }

    /// Sends this stream's changes of one commit that were not sent yet.
    async fn forward(&mut self, changes: &[Change]) -> Result<(), Stop> {
        for change in changes {
            debug_assert_eq!(
                change.stream, self.stream,
                "a subscription is to one stream"
            );
            if !self.admit(change).await? || change.revision <= self.last_sent {
                continue;
            }
            if change.revision > self.last_sent + 1 {
                // Something between is missing from the live feed: the changelog has it (and
                // this change too).
                self.catch_up().await?;
                continue;
            }
            self.send_change(change).await?;
        }
        Ok(())
    }

    /// Replays the changelog after the last revision sent.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        loop {
            let (after, limit) = (self.last_sent, self.replay_limit);
            let changes = match self.app.store.changes(&self.stream, after, limit).await {
                Ok(changes) => changes,
                // A stream not created yet has no changes; its first ones will come live.
                Err(StoreError::UnknownStream(_)) => Vec::new(),
                Err(error) => return Err(Stop::Store(error)),
            };
            let Some(first) = changes.first() else {
                // Nothing past `last_sent`: the stream may have been deleted, or replaced by one
                // that has not reached that revision. (A change says which stream it is of, so
                // only an empty read needs to ask; that spares a round trip per wake-up.)
                match self.replaced().await? {
                    Some(next) => {
                        self.restart(next).await?;
                        continue;
                    }
                    None => return Ok(()),
                }
            };
            // One read is of one stream. A stream created since restarts the feed: read it again
            // from its start.
            if !self.admit(first).await? {
                return Ok(());
            }
            if self.last_sent < after {
                continue;
            }
            let full_page = changes.len() == limit;
            self.replay_limit = next_replay_limit(&changes);
            for change in &changes {
                if change.revision <= self.last_sent {
                    continue;
                }
                if change.revision > self.last_sent + 1 {
                    self.send_gap(change.revision).await?;
                }
                self.send_change(change).await?;
            }
            if !full_page {
                return Ok(());
            }
        }
    }

    /// Sends one change (if this dialect shows it) and moves the resume point past it either
    /// way, so that `Last-Event-ID` stays a stream revision in both dialects.
    async fn send_change(&mut self, change: &Change) -> Result<(), Stop> {
        let bytes = match self.dialect {
            Dialect::Recap => Some(frame(change)),
            Dialect::OpenIntent => self.openintent_frame(change).await?,
        };
        if let Some(bytes) = bytes {
            self.send(bytes).await?;
        }
        self.last_sent = change.revision;
        Ok(())
    }

    /// The OpenIntent frame of a change: a new record as its event; a repeat as the record's
    /// event again, with the new count (the record is read back: the change carries only the
    /// count); notes not at all (each note is also logged as a `note` record, which is sent).
    async fn openintent_frame(&self, change: &Change) -> Result<Option<Bytes>, Stop> {
        let record = match &change.body {
            ChangeBody::Record(record) => record.clone(),
            ChangeBody::Repeat {
                seq,
                repeat_count,
                last_ts,
            } => {
                let query = RecordQuery {
                    after: Some(seq - 1),
                    limit: 1,
                    ..RecordQuery::default()
                };
                let page = match self.app.store.records(&self.stream, &query).await {
                    Ok(page) => page,
                    // Deleted meanwhile: nothing to show.
                    Err(StoreError::UnknownStream(_)) => return Ok(None),
                    Err(error) => return Err(Stop::Store(error)),
                };
                // Retention may have removed the record since; then there is nothing to show.
                let Some(mut record) = page.records.into_iter().find(|r| r.seq == *seq) else {
                    return Ok(None);
                };
                record.repeat_count = *repeat_count;
                record.last_ts = *last_ts;
                Arc::new(record)
            }
            ChangeBody::Note(_) | ChangeBody::NoteDeleted { .. } => return Ok(None),
        };
        Ok(Some(openintent::sse_frame(
            &self.stream,
            change.revision,
            &record,
        )))
    }

    async fn send_gap(&mut self, next: u64) -> Result<(), Stop> {
        let bytes = match self.dialect {
            Dialect::Recap => {
                let data = serde_json::json!({
                    "after": self.last_sent,
                    "next": next,
                    "message": "the changes between these revisions are no longer in the changelog; re-read the records with GET .../events",
                });
                Bytes::from(format!("event: gap\ndata: {data}\n\n"))
            }
            Dialect::OpenIntent => {
                openintent::gap_frame(&self.stream, self.last_sent, next, chrono::Utc::now())
            }
        };
        self.send(bytes).await
    }

    /// Tells the client that revision `after`, where it stands, is not one of the stream as it
    /// is now, and `why`. `id: 0` moves the client's resume point to the start, which is where
    /// the feed goes on from.
    async fn send_reset(&mut self, after: u64, why: Reset) -> Result<(), Stop> {
        let bytes = match self.dialect {
            Dialect::Recap => {
                let data = serde_json::json!({
                    "after": after,
                    "next": 1,
                    "reset": true,
                    "message": format!("{}; the feed starts over from the stream's first change", why.explain(after, "stream")),
                });
                Bytes::from(format!("id: 0\nevent: gap\ndata: {data}\n\n"))
            }
            Dialect::OpenIntent => {
                let message = format!(
                    "{}; its events start over from the beginning",
                    why.explain(after, "intent")
                );
                openintent::reset_frame(&self.stream, after, &message, chrono::Utc::now())
            }
        };
        self.send(bytes).await
    }

    /// Sends a frame, waiting while the subscriber's buffer is full (this feed only: writers
    /// and other subscribers go on), unless the server shuts down meanwhile. A client that
    /// takes no frame for a keepalive interval meanwhile is cut off.
    async fn send(&mut self, mut bytes: Bytes) -> Result<(), Stop> {
        let patience = self.app.options.sse_keepalive;
        let mut deadline = Instant::now() + patience;
        loop {
            bytes = match self.outbox.try_send(bytes) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(bytes)) => bytes,
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(Stop::Disconnected),
            };
            tokio::select! {
                taken = self.outbox.taken() => {
                    taken.map_err(|_| Stop::Disconnected)?;
                    deadline = Instant::now() + patience;
                }
                () = tokio::time::sleep_until(deadline) => return Err(Stop::CutOff),
                _ = self.shutdown.wait_for(|stop| *stop) => return Err(Stop::ShuttingDown),
            }
        }
        self.last_write = Instant::now();
        Ok(())
    }
}

/// How many changes the next catch-up step asks for: as many as fit in [`REPLAY_PAGE_BYTES`] at
/// the size of these.
fn next_replay_limit(changes: &[Change]) -> usize {
    let bytes: usize = changes.iter().map(Change::estimated_bytes).sum();
    let per_change = bytes.div_ceil(changes.len().max(1)).max(1);
    (REPLAY_PAGE_BYTES / per_change).clamp(1, REPLAY_PAGE)
}

/// A feed's end of its response body, bounded in bytes as well as frames: the sizes of the
/// frames sent and not yet taken by the body, oldest first.
struct Outbox {
    sender: mpsc::Sender<Bytes>,
    sizes: VecDeque<usize>,
    /// Sum of `sizes`.
    bytes: usize,
}

impl Outbox {
    fn new(sender: mpsc::Sender<Bytes>) -> Outbox {
        Outbox {
            sender,
            sizes: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Sends a frame if it fits under [`MAX_BUFFERED_BYTES`] (or the buffer is empty); `Full`
    /// when the client has to take some first.
    fn try_send(&mut self, bytes: Bytes) -> Result<(), mpsc::error::TrySendError<Bytes>> {
        self.forget_taken();
        if !self.sizes.is_empty() && self.bytes + bytes.len() > MAX_BUFFERED_BYTES {
            return Err(mpsc::error::TrySendError::Full(bytes));
        }
        let size = bytes.len();
        self.sender.try_send(bytes)?;
        self.sizes.push_back(size);
        self.bytes += size;
        Ok(())
    }

    /// Forgets the frames the body has taken: the channel is first in, first out, so they are
    /// the oldest.
    fn forget_taken(&mut self) {
        let buffered = self.sender.max_capacity() - self.sender.capacity();
        while self.sizes.len() > buffered {
            if let Some(size) = self.sizes.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// Waits until the body takes one more frame: holds every free slot, then waits for one
    /// more, which only the body taking a frame frees. Returns at once when nothing is buffered
    /// (the body took it all since the last look): no slot would be freed then. `Err` when the
    /// client is gone.
    async fn taken(&self) -> Result<(), mpsc::error::SendError<()>> {
        // One look decides both: if a frame was buffered at it, the body frees its slot (or
        // did since, leaving one more free than is held).
        let free = self.sender.capacity();
        if free == self.sender.max_capacity() {
            return Ok(());
        }
        let _held = match free {
            0 => None,
            // Only the body frees slots meanwhile, so at least `free` are free.
            free => Some(
                self.sender
                    .try_reserve_many(free)
                    .map_err(|_| mpsc::error::SendError(()))?,
            ),
        };
        let _slot = self.sender.reserve().await?;
        Ok(())
    }
}

/// A repeat as subscribers see it.
#[derive(Serialize)]
struct RepeatData {
    seq: u64,
    repeat_count: u64,
    #[serde(serialize_with = "micros")]
    last_ts: Timestamp,
    revision: u64,
}

/// A note as subscribers see it: the note and the revision it took.
#[derive(Serialize)]
struct NoteData<'a> {
    #[serde(flatten)]
    note: &'a Note,
    revision: u64,
}

fn micros<S: serde::Serializer>(ts: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::event::format_timestamp(ts))
}

/// The SSE frame of one change. JSON is written compactly, so `data:` is one line.
fn frame(change: &Change) -> Bytes {
    let revision = change.revision;
    let (event, data) = match &change.body {
        ChangeBody::Record(record) => ("record", serde_json::to_string(record)),
        ChangeBody::Repeat {
            seq,
            repeat_count,
            last_ts,
        } => (
            "repeat",
            serde_json::to_string(&RepeatData {
                seq: *seq,
                repeat_count: *repeat_count,
                last_ts: *last_ts,
                revision,
            }),
        ),
        ChangeBody::Note(note) => ("note", serde_json::to_string(&NoteData { note, revision })),
        ChangeBody::NoteDeleted { id } => (
            "note_deleted",
            serde_json::to_string(&serde_json::json!({"id": id, "revision": revision})),
        ),
    };
    let data = data.unwrap_or_else(|_| "{}".to_owned());
    Bytes::from(format!("id: {revision}\nevent: {event}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Record, Severity, parse_timestamp};

    #[test]
    fn frames_carry_the_revision_and_one_data_line() {
        let ts = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
        let event = Event::new("tool", Severity::Error, "two\nlines").unwrap();
        let change = Change {
            stream: StreamName::new("s").unwrap(),
            stream_id: 1,
            revision: 7,
            body: ChangeBody::Record(Arc::new(Record::from_event(event, 3, 7, ts))),
        };
        let text = String::from_utf8(frame(&change).to_vec()).unwrap();
        assert!(text.starts_with("id: 7\nevent: record\ndata: {"), "{text}");
        assert_eq!(text.matches('\n').count(), 4, "{text}");
        let repeat = Change {
            body: ChangeBody::Repeat {
                seq: 3,
                repeat_count: 2,
                last_ts: ts,
            },
            revision: 8,
            ..change
        };
        let text = String::from_utf8(frame(&repeat).to_vec()).unwrap();
        assert_eq!(
            text,
            "id: 8\nevent: repeat\ndata: {\"seq\":3,\"repeat_count\":2,\"last_ts\":\"2024-05-01T10:00:00.000000Z\",\"revision\":8}\n\n"
        );
    }

    /// The body taking every buffered frame between a full `try_send` and the wait must not
    /// leave the feed waiting for a slot nobody will free (it waited a keepalive interval, then
    /// cut off a client that was reading).
    #[tokio::test(start_paused = true)]
    async fn a_buffer_emptied_before_the_wait_does_not_stall_the_feed() {
        let (sender, mut receiver) = mpsc::channel(BUFFER_FRAMES);
        let mut outbox = Outbox::new(sender);
        let large = Bytes::from(vec![b'x'; MAX_BUFFERED_BYTES / 2 + 1]);
        outbox.try_send(large.clone()).unwrap();
        assert!(matches!(
            outbox.try_send(large.clone()),
            Err(mpsc::error::TrySendError::Full(_))
        ));
        receiver.recv().await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), outbox.taken())
            .await
            .expect("taken() waited for a slot with nothing buffered")
            .unwrap();
        outbox.try_send(large).unwrap();
    }
}
