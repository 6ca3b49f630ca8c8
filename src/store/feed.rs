//! Who is subscribed to which stream's changes, and handing each durable commit's changes to them.
//!
//! A subscriber registers for one stream, by name, and gets that stream's changes only: a commit
//! that changes other streams costs it nothing (no wakeup, no allocation). The registry is keyed
//! by name, not by stream id, so the subscribers of a deleted stream get the changes of the
//! stream created next under the name (they tell the two apart by [`Change::stream_id`]).
//! Subscribers to every stream (tests and tools that watch the whole store) get each commit
//! whole.
//!
//! Publishing never waits and never keeps what a subscriber is slow to take. Each subscriber's
//! queue is bounded by [`MAX_LAG_BYTES`] (estimated with [`Change::estimated_bytes`]); a commit
//! that would take it past that drops everything queued instead and marks the subscriber
//! lagged. A lagged subscriber reads what it missed from the changelog
//! ([`super::Store::changes`]): every change is durable, and in the changelog, before it is
//! published.

use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::Notify;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::{Change, ChangeBody, CommittedChanges};
use crate::event::{Record, StreamName};
use crate::meter;

/// Most bytes of changes one subscriber holds, queued or being worked on: 1 MiB is thousands of
/// ordinary changes, or 16 events at the largest message size. A subscriber further behind is
/// dropped to the changelog rather than held in memory (catching up from it costs little), and
/// hundreds of stalled subscribers hold hundreds of MiB at most, not GiB.
pub const MAX_LAG_BYTES: usize = 1024 * 1024;

/// What one queued message costs besides its changes: the shared vector's header and the
/// allocator's, and its slot in the queue.
const MESSAGE_OVERHEAD_BYTES: usize =
    size_of::<Vec<Change>>() + 2 * size_of::<usize>() + meter::ALLOCATION_OVERHEAD + 16;

impl Change {
    /// Bytes this change holds in memory, estimated: the change itself, its stream name, and
    /// for a record its strings and parsed payload, for a note its text.
    pub fn estimated_bytes(&self) -> usize {
        let body = match &self.body {
            ChangeBody::Record(record) => record_bytes(record),
            ChangeBody::Note(note) => meter::string(&note.text),
            ChangeBody::Repeat { .. } | ChangeBody::NoteDeleted { .. } => 0,
        };
        size_of::<Change>() + meter::string(self.stream.as_str()) + body
    }
}

/// The heap of a record's strings and payload.
fn record_bytes(record: &Record) -> usize {
    let optional = |text: &Option<String>| text.as_deref().map_or(0, meter::string);
    meter::string(&record.message)
        + meter::string(record.kind.as_str())
        + optional(&record.display_message)
        + optional(&record.actor)
        + optional(&record.step_id)
        + record
            .payload
            .as_ref()
            .map_or(0, |payload| meter::string(payload.as_str()))
}

/// Every subscriber, by the stream it follows.
#[derive(Default)]
pub(super) struct Subscribers {
    registered: Mutex<Registered>,
}

#[derive(Default)]
struct Registered {
    by_stream: HashMap<StreamName, Vec<Arc<Queue>>>,
    /// Subscribers to every stream.
    every: Vec<Arc<Queue>>,
}

/// One subscriber's changes not yet taken: filled by [`Subscribers::publish`], emptied by its
/// [`Subscription`].
#[derive(Default)]
struct Queue {
    pending: Mutex<Pending>,
    /// Woken when the queue stops being empty: a message came, the subscriber lagged, or the
    /// store closed.
    ready: Notify,
}

#[derive(Default)]
struct Pending {
    /// Each message with its estimated bytes.
    messages: VecDeque<(CommittedChanges, usize)>,
    /// Bytes of `messages` and of the message the subscriber is working on (`in_hand`).
    bytes: usize,
    /// Bytes of the message taken last: the subscriber holds it until it asks for the next.
    in_hand: usize,
    /// Messages dropped since the subscriber last heard that it lagged (0: it did not).
    dropped: u64,
    /// The store is gone: nothing more will come.
    closed: bool,
}

impl Pending {
    /// Whether the subscriber may be waiting for something to happen.
    fn is_idle(&self) -> bool {
        self.messages.is_empty() && self.dropped == 0 && !self.closed
    }
}

impl Queue {
    /// Queues one message unless that would take the subscriber past [`MAX_LAG_BYTES`]: then
    /// drops everything queued and marks it lagged. Never waits for the subscriber.
    fn offer(&self, changes: &CommittedChanges, bytes: usize) {
        let mut pending = lock(&self.pending);
        if pending.dropped > 0 {
            // Lagged already, and not told yet: the changelog has this too.
            pending.dropped += 1;
            return;
        }
        let wake = pending.is_idle();
        let mut dropped = VecDeque::new();
        if pending.bytes + bytes > MAX_LAG_BYTES {
            dropped = std::mem::take(&mut pending.messages);
            pending.dropped = dropped.len() as u64 + 1;
            pending.bytes = pending.in_hand;
        } else {
            pending.messages.push_back((Arc::clone(changes), bytes));
            pending.bytes += bytes;
        }
        drop(pending);
        // Whoever holds a dropped message last frees it, outside the lock.
        drop(dropped);
        if wake {
            self.ready.notify_one();
        }
    }

    fn close(&self) {
        let mut pending = lock(&self.pending);
        let wake = pending.is_idle();
        pending.closed = true;
        drop(pending);
        if wake {
            self.ready.notify_one();
        }
    }
}

impl Subscribers {
    /// Registers a subscriber to `stream`'s changes (to every stream's when `None`).
    pub(super) fn subscribe(self: &Arc<Self>, stream: Option<&StreamName>) -> Subscription {
        let queue = Arc::new(Queue::default());
        let mut registered = lock(&self.registered);
        match stream {
            Some(stream) => registered
                .by_stream
                .entry(stream.clone())
                .or_default()
                .push(Arc::clone(&queue)),
            None => registered.every.push(Arc::clone(&queue)),
        }
        Subscription {
            queue,
            stream: stream.cloned(),
            subscribers: Arc::downgrade(self),
        }
    }

    /// Hands one durable commit's changes to their subscribers: to each subscriber of a stream
    /// the commit changed, one message of that stream's changes; to each subscriber of every
    /// stream, one message of all of them. Streams nobody follows cost a lookup per run of
    /// their changes.
    pub(super) fn publish(&self, changes: Vec<Change>) {
        let mut registered = lock(&self.registered);
        let Registered { by_stream, every } = &mut *registered;
        let groups = group_by_stream(&changes, by_stream);
        if groups.is_empty() && every.is_empty() {
            return;
        }
        let mut messages: Vec<Vec<Change>> = Vec::with_capacity(groups.len());
        let all = if every.is_empty() {
            // Nobody needs the whole commit: move each change into its stream's message.
            let mut slots: Vec<Option<Change>> = changes.into_iter().map(Some).collect();
            for indexes in &groups {
                messages.push(indexes.iter().filter_map(|&i| slots[i].take()).collect());
            }
            None
        } else {
            for indexes in &groups {
                messages.push(indexes.iter().map(|&i| changes[i].clone()).collect());
            }
            Some(Arc::new(changes))
        };
        for message in messages {
            let message: CommittedChanges = Arc::new(message);
            let Some(first) = message.first() else {
                continue;
            };
            let Some(queues) = by_stream.get_mut(&first.stream) else {
                continue;
            };
            offer_all(queues, &message);
            if queues.is_empty() {
                by_stream.remove(&first.stream);
            }
        }
        if let Some(all) = all {
            offer_all(every, &all);
        }
    }

    /// Forgets a subscriber whose [`Subscription`] was dropped.
    fn unsubscribe(&self, queue: &Arc<Queue>, stream: Option<&StreamName>) {
        let mut registered = lock(&self.registered);
        let registered = &mut *registered;
        let queues = match stream {
            Some(stream) => match registered.by_stream.get_mut(stream) {
                Some(queues) => queues,
                None => return,
            },
            None => &mut registered.every,
        };
        queues.retain(|other| !Arc::ptr_eq(other, queue));
        if let Some(stream) = stream.filter(|_| queues.is_empty()) {
            registered.by_stream.remove(stream);
        }
    }

    /// Subscribers registered now: to streams, and to every stream.
    #[cfg(test)]
    fn count(&self) -> (usize, usize) {
        let registered = lock(&self.registered);
        let streams = registered.by_stream.values().map(Vec::len).sum();
        (streams, registered.every.len())
    }
}

impl Drop for Subscribers {
    /// The store is gone: every subscriber hears so once it has taken what is queued.
    fn drop(&mut self) {
        let registered = lock(&self.registered);
        for queue in registered
            .by_stream
            .values()
            .flatten()
            .chain(&registered.every)
        {
            queue.close();
        }
    }
}

/// Per stream the commit changed that someone follows, the indexes of its changes in commit
/// order. Allocates nothing when nobody follows any of them.
fn group_by_stream(
    changes: &[Change],
    by_stream: &HashMap<StreamName, Vec<Arc<Queue>>>,
) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    if by_stream.is_empty() {
        return groups;
    }
    let mut group_of: HashMap<&StreamName, usize> = HashMap::new();
    // A commit's changes come in runs of one stream (a request is of one stream): the stream
    // is looked up once per run.
    let mut run: Option<(&StreamName, Option<usize>)> = None;
    for (index, change) in changes.iter().enumerate() {
        let group = match run {
            Some((stream, group)) if *stream == change.stream => group,
            _ => {
                let group = by_stream.contains_key(&change.stream).then(|| {
                    *group_of.entry(&change.stream).or_insert_with(|| {
                        groups.push(Vec::new());
                        groups.len() - 1
                    })
                });
                run = Some((&change.stream, group));
                group
            }
        };
        if let Some(group) = group {
            groups[group].push(index);
        }
    }
    groups
}

/// Offers a message to every queue, forgetting those whose subscriber is gone (only the
/// registry holds them).
fn offer_all(queues: &mut Vec<Arc<Queue>>, message: &CommittedChanges) {
    queues.retain(|queue| Arc::strong_count(queue) > 1);
    if queues.is_empty() {
        return;
    }
    let bytes = MESSAGE_OVERHEAD_BYTES + message.iter().map(Change::estimated_bytes).sum::<usize>();
    for queue in queues.iter() {
        queue.offer(message, bytes);
    }
}

/// A subscriber's end: the changes of its stream (or of every stream), one message per commit,
/// in commit order. Dropping it unsubscribes.
///
/// Its errors are tokio's broadcast errors, with their meaning: `Lagged(n)` says that `n`
/// messages were dropped because the subscriber fell [`MAX_LAG_BYTES`] behind (read them from
/// the changelog); `Closed` that the store is gone.
pub struct Subscription {
    queue: Arc<Queue>,
    stream: Option<StreamName>,
    subscribers: Weak<Subscribers>,
}

impl Subscription {
    /// The next message, waiting for one. Cancel-safe: nothing is lost if the wait is dropped.
    pub async fn recv(&mut self) -> Result<CommittedChanges, RecvError> {
        loop {
            match self.try_recv() {
                Ok(changes) => return Ok(changes),
                Err(TryRecvError::Lagged(dropped)) => return Err(RecvError::Lagged(dropped)),
                Err(TryRecvError::Closed) => return Err(RecvError::Closed),
                // A message queued after the look leaves a permit: this returns at once.
                Err(TryRecvError::Empty) => self.queue.ready.notified().await,
            }
        }
    }

    /// The next message if one is queued. The message returned before counts against
    /// [`MAX_LAG_BYTES`] until this is called again.
    pub fn try_recv(&mut self) -> Result<CommittedChanges, TryRecvError> {
        let mut pending = lock(&self.queue.pending);
        pending.bytes -= std::mem::take(&mut pending.in_hand);
        if pending.dropped > 0 {
            return Err(TryRecvError::Lagged(std::mem::take(&mut pending.dropped)));
        }
        match pending.messages.pop_front() {
            Some((changes, bytes)) => {
                pending.in_hand = bytes;
                Ok(changes)
            }
            None if pending.closed => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(subscribers) = self.subscribers.upgrade() {
            subscribers.unsubscribe(&self.queue, self.stream.as_ref());
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// Locks; a panic elsewhere under the lock leaves the queues consistent (every change to them
/// is one step), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::event::{Event, Severity, parse_timestamp};

    fn name(text: &str) -> StreamName {
        StreamName::new(text).unwrap()
    }

    fn record(stream: &str, revision: u64, message: &str) -> Change {
        let ts = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
        let event = Event::new("tool", Severity::Info, message).unwrap();
        Change {
            stream: name(stream),
            stream_id: 1,
            revision,
            body: ChangeBody::Record(Arc::new(Record::from_event(event, revision, revision, ts))),
        }
    }

    fn revisions(changes: &[Change]) -> Vec<(String, u64)> {
        changes
            .iter()
            .map(|change| (change.stream.to_string(), change.revision))
            .collect()
    }

    /// Whether the subscriber would wake now: a wakeup is pending for it.
    fn is_woken(subscription: &Subscription) -> bool {
        let notified = pin!(subscription.queue.ready.notified());
        let mut context = Context::from_waker(Waker::noop());
        notified.poll(&mut context) == Poll::Ready(())
    }

    #[test]
    fn publishing_to_one_stream_does_not_touch_another_streams_subscriber() {
        let subscribers = Arc::new(Subscribers::default());
        let mut a = subscribers.subscribe(Some(&name("a")));
        let mut b = subscribers.subscribe(Some(&name("b")));
        for revision in 1..=100 {
            subscribers.publish(vec![record("b", revision, "busy")]);
        }
        assert!(!is_woken(&a), "a was woken by commits to b");
        assert_eq!(lock(&a.queue.pending).bytes, 0);
        assert!(matches!(a.try_recv(), Err(TryRecvError::Empty)));
        assert!(is_woken(&b));
        assert_eq!(b.try_recv().unwrap()[0].revision, 1);

        subscribers.publish(vec![record("a", 1, "mine")]);
        assert!(is_woken(&a));
        assert_eq!(revisions(&a.try_recv().unwrap()), [("a".into(), 1)]);
    }

    #[test]
    fn a_store_subscriber_hears_only_of_its_stream_and_lags_to_the_changelog() {
        let dir = tempfile::tempdir().unwrap();
        // Detection off: the test counts the changes it made.
        let options = crate::store::StoreOptions {
            anomaly: crate::anomaly::AnomalySettings::off(),
            ..Default::default()
        };
        let store = crate::store::Store::open(dir.path(), options).unwrap();
        let (a, b) = (name("a"), name("b"));
        let mut of_a = store.subscribe_to(&a);
        let mut of_b = store.subscribe_to(&b);
        let big = "x".repeat(60 * 1024);
        let now = chrono::Utc::now();
        let mut written = 0;
        while written * big.len() < 2 * MAX_LAG_BYTES {
            let events = (0..10)
                .map(|n| {
                    let message = format!("{} {big}", written + n);
                    Event::new("tool", Severity::Info, message).unwrap()
                })
                .collect();
            store.append(&b, events, now).wait().unwrap();
            written += 10;
        }
        // Acknowledged writes are published: `a` was never woken, `b` fell behind.
        assert!(!is_woken(&of_a));
        assert!(matches!(of_a.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(of_b.try_recv(), Err(TryRecvError::Lagged(_))));
        let replayed = store.changes(&b, 0, 10_000).unwrap();
        assert_eq!(replayed.len(), written);

        store
            .append(
                &a,
                vec![Event::new("tool", Severity::Info, "mine").unwrap()],
                now,
            )
            .wait()
            .unwrap();
        assert!(is_woken(&of_a));
        assert_eq!(revisions(&of_a.try_recv().unwrap()), [("a".into(), 1)]);
    }

    #[test]
    fn each_subscriber_gets_one_message_per_commit_of_its_streams_changes_in_order() {
        let subscribers = Arc::new(Subscribers::default());
        let mut a = subscribers.subscribe(Some(&name("a")));
        let mut a_too = subscribers.subscribe(Some(&name("a")));
        let mut c = subscribers.subscribe(Some(&name("c")));
        let mut every = subscribers.subscribe(None);
        let commit = vec![
            record("a", 1, "one"),
            record("b", 1, "other"),
            record("a", 2, "two"),
            record("c", 7, "seven"),
            record("a", 3, "three"),
        ];
        subscribers.publish(commit.clone());
        let expected_a = vec![("a".into(), 1), ("a".into(), 2), ("a".into(), 3)];
        let of_a = a.try_recv().unwrap();
        assert_eq!(revisions(&of_a), expected_a);
        // One allocation shared by the subscribers of a stream.
        assert!(Arc::ptr_eq(&of_a, &a_too.try_recv().unwrap()));
        assert_eq!(revisions(&c.try_recv().unwrap()), [("c".into(), 7)]);
        assert_eq!(*every.try_recv().unwrap(), commit);
        for subscription in [&mut a, &mut a_too, &mut c, &mut every] {
            assert!(matches!(subscription.try_recv(), Err(TryRecvError::Empty)));
        }
    }

    #[test]
    fn a_subscriber_past_its_byte_bound_is_lagged_and_the_publisher_keeps_nothing() {
        let subscribers = Arc::new(Subscribers::default());
        let mut slow = subscribers.subscribe(Some(&name("s")));
        let mut every = subscribers.subscribe(None);
        let big = "x".repeat(60 * 1024);
        let mut revision = 0;
        let mut first_taken = None;
        // Twice the bound, one commit at a time; the slow one takes the first message only.
        while revision * big.len() < 2 * MAX_LAG_BYTES {
            revision += 1;
            subscribers.publish(vec![record("s", revision as u64, &big)]);
            if revision == 1 {
                first_taken = Some(slow.try_recv().unwrap());
            }
            let pending = lock(&slow.queue.pending);
            assert!(pending.bytes <= MAX_LAG_BYTES, "{} bytes", pending.bytes);
            assert!(pending.messages.len() * big.len() <= MAX_LAG_BYTES);
        }
        assert_eq!(first_taken.unwrap()[0].revision, 1);
        let Err(TryRecvError::Lagged(dropped)) = slow.try_recv() else {
            panic!("not lagged");
        };
        assert_eq!(
            dropped,
            revision as u64 - 1,
            "every message after the first"
        );
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(lock(&slow.queue.pending).bytes, 0);

        // After hearing it lagged, it gets the next commits again.
        subscribers.publish(vec![record("s", revision as u64 + 1, "next")]);
        assert_eq!(slow.try_recv().unwrap()[0].revision, revision as u64 + 1);
        assert!(matches!(every.try_recv(), Err(TryRecvError::Lagged(_))));
    }

    #[test]
    fn a_message_larger_than_the_bound_lags_the_subscriber_at_once() {
        let subscribers = Arc::new(Subscribers::default());
        let mut subscription = subscribers.subscribe(Some(&name("s")));
        let big = "x".repeat(60 * 1024);
        let commit: Vec<Change> = (1..=100).map(|r| record("s", r, &big)).collect();
        subscribers.publish(commit);
        assert!(is_woken(&subscription));
        assert!(matches!(
            subscription.try_recv(),
            Err(TryRecvError::Lagged(1))
        ));
    }

    #[test]
    fn dropped_subscribers_are_forgotten() {
        let subscribers = Arc::new(Subscribers::default());
        let kept = subscribers.subscribe(Some(&name("s")));
        let gone = subscribers.subscribe(Some(&name("s")));
        let every = subscribers.subscribe(None);
        assert_eq!(subscribers.count(), (2, 1));
        drop(gone);
        drop(every);
        assert_eq!(subscribers.count(), (1, 0));
        drop(kept);
        assert_eq!(subscribers.count(), (0, 0));
        assert!(lock(&subscribers.registered).by_stream.is_empty());

        // A queue only the registry holds (its subscriber's drop did not reach the registry) is
        // forgotten at the next publish to its stream.
        lock(&subscribers.registered)
            .by_stream
            .entry(name("s"))
            .or_default()
            .push(Arc::new(Queue::default()));
        assert_eq!(subscribers.count(), (1, 0));
        subscribers.publish(vec![record("s", 1, "anyone?")]);
        assert_eq!(subscribers.count(), (0, 0));
        assert!(lock(&subscribers.registered).by_stream.is_empty());
    }

    #[tokio::test]
    async fn recv_waits_for_a_message_and_ends_when_the_store_is_gone() {
        let subscribers = Arc::new(Subscribers::default());
        let mut subscription = subscribers.subscribe(Some(&name("s")));
        let publisher = std::thread::spawn({
            let subscribers = Arc::clone(&subscribers);
            move || subscribers.publish(vec![record("s", 1, "hello")])
        });
        let changes = subscription.recv().await.unwrap();
        assert_eq!(changes[0].revision, 1);
        publisher.join().unwrap();
        subscribers.publish(vec![record("s", 2, "last")]);
        drop(subscribers);
        assert_eq!(subscription.recv().await.unwrap()[0].revision, 2);
        assert!(matches!(subscription.recv().await, Err(RecvError::Closed)));
    }

    #[test]
    fn estimates_grow_with_message_and_payload() {
        let small = record("s", 1, "m");
        let long = record("s", 1, &"m".repeat(1_000));
        assert_eq!(long.estimated_bytes() - small.estimated_bytes(), 999);
        let mut with_payload = small.clone();
        let ChangeBody::Record(record) = &mut with_payload.body else {
            unreachable!()
        };
        let record = Arc::make_mut(record);
        let numbers = vec!["0"; 1_000].join(",");
        record.payload =
            Some(crate::payload::Payload::from_json(&format!(r#"{{"n":[{numbers}]}}"#)).unwrap());
        // The payload is kept as its text.
        assert_eq!(
            with_payload.estimated_bytes() - small.estimated_bytes(),
            meter::heap(r#"{"n":[]}"#.len() + numbers.len())
        );
    }
}
