//! Wake-ups per stream for a node's feeds (SSE, MCP resource subscriptions, reads waiting for a
//! revision). The node hears every stream's wake-ups on one channel; handing that channel to
//! every feed would wake every feed on every commit of any stream, so that a node with
//! thousands of idle subscribers spends its time waking them. Instead one task reads the
//! channel and wakes only the feeds of the stream that changed (every feed on a resync).
//!
//! Each followed stream has a `watch` of its latest announced revision: wake-ups that come
//! faster than a feed reads coalesce into one, which is all a feed needs (it reads the
//! changelog past what it sent).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{broadcast, watch};

use crate::event::StreamName;

use super::Wakeup;

/// The streams followed on this node.
#[derive(Default)]
pub(super) struct Hub {
    streams: Mutex<Followed>,
    /// Bumped on every resync (or lag): every feed reads its changelog again.
    resyncs: watch::Sender<u64>,
}

#[derive(Default)]
struct Followed {
    streams: HashMap<StreamName, watch::Sender<u64>>,
    /// How many streams there were after the last sweep of those nobody follows any more.
    swept_at: usize,
}

impl Hub {
    /// Wake-ups of `stream` from now on.
    pub(super) fn follow(&self, stream: &StreamName) -> StreamWakeups {
        let mut followed = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        // Feeds come and go; a stream nobody follows any more is forgotten at its next
        // wake-up, or here once the map doubled, for streams that never change again.
        if followed.streams.len() >= 2 * followed.swept_at.max(64) {
            followed
                .streams
                .retain(|_, sender| sender.receiver_count() > 0);
            followed.swept_at = followed.streams.len();
        }
        let changed = followed
            .streams
            .entry(stream.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        StreamWakeups {
            changed,
            resyncs: self.resyncs.subscribe(),
        }
    }

    /// Wakes the feeds of a stream that changed.
    fn changed(&self, stream: &StreamName, revision: u64) {
        let mut followed = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = followed.streams.get(stream) {
            if sender.receiver_count() == 0 {
                followed.streams.remove(stream);
            } else {
                sender.send_replace(revision);
            }
        }
    }

    fn resync(&self) {
        self.resyncs.send_modify(|count| *count += 1);
    }

    /// Streams with a watch (followed, or not swept yet).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .streams
            .len()
    }
}

/// Hands the node's wake-ups to the feeds of the streams they concern, until the store is gone.
pub(super) async fn dispatch(mut wakeups: broadcast::Receiver<Wakeup>, hub: Arc<Hub>) {
    use broadcast::error::RecvError;
    loop {
        match wakeups.recv().await {
            Ok(Wakeup::Changed { stream, revision }) => hub.changed(&stream, revision),
            // Missed notifications may concern any stream.
            Ok(Wakeup::Resync) | Err(RecvError::Lagged(_)) => hub.resync(),
            Err(RecvError::Closed) => return,
        }
    }
}

/// One feed's wake-ups: its stream's, and every resync.
pub struct StreamWakeups {
    changed: watch::Receiver<u64>,
    resyncs: watch::Receiver<u64>,
}

impl StreamWakeups {
    /// Resolves when the stream may have changed since the last call; `None` once the store is
    /// gone. Cancel-safe.
    pub async fn next(&mut self) -> Option<()> {
        tokio::select! {
            changed = self.changed.changed() => changed.ok(),
            resynced = self.resyncs.changed() => resynced.ok(),
        }
    }

    /// Whether a wake-up is waiting, taking it: what [`StreamWakeups::next`] would return at
    /// once.
    pub fn take(&mut self) -> bool {
        let changed = self.changed.has_changed().unwrap_or(false);
        let resynced = self.resyncs.has_changed().unwrap_or(false);
        self.changed.mark_unchanged();
        self.resyncs.mark_unchanged();
        changed || resynced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(value: &str) -> StreamName {
        StreamName::new(value).unwrap()
    }

    #[tokio::test]
    async fn only_the_feeds_of_the_changed_stream_wake() {
        let (sender, _) = broadcast::channel(16);
        let hub = Arc::new(Hub::default());
        tokio::spawn(dispatch(sender.subscribe(), hub.clone()));
        let mut a = hub.follow(&name("a"));
        let mut b = hub.follow(&name("b"));
        sender
            .send(Wakeup::Changed {
                stream: name("a"),
                revision: 3,
            })
            .unwrap();
        a.next().await.unwrap();
        tokio::task::yield_now().await;
        assert!(!b.take(), "a feed of another stream woke");
        // Several wake-ups before a read coalesce into one.
        for revision in 4..8 {
            let wakeup = Wakeup::Changed {
                stream: name("a"),
                revision,
            };
            sender.send(wakeup).unwrap();
        }
        a.next().await.unwrap();
        tokio::task::yield_now().await;
        assert!(!a.take());
        // A resync wakes every feed.
        sender.send(Wakeup::Resync).unwrap();
        a.next().await.unwrap();
        b.next().await.unwrap();
    }

    #[test]
    fn streams_nobody_follows_are_forgotten() {
        let hub = Hub::default();
        for index in 0..1_000 {
            drop(hub.follow(&name(&format!("s{index}"))));
        }
        let kept = hub.follow(&name("kept"));
        assert!(hub.len() < 200, "{} watches kept", hub.len());
        hub.changed(&name("s999"), 1);
        hub.changed(&name("kept"), 1);
        assert!(kept.changed.has_changed().unwrap());
    }
}
