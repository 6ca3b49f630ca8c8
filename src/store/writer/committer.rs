//! The committer thread: makes placed batches durable, as many per transaction as are ready.
//!
//! It runs beside the writer, so that placing the next requests (collapse, encoding, token
//! counts) uses the second core while this one waits for redb and the disk. It never decides
//! anything: it copies each batch's [`Rows`] into one write transaction, commits it durably and
//! hands the outcome to the notifier, in the order the batches were placed.
//!
//! When a commit fails, the batches placed after it were placed on top of writes that never
//! happened. Every batch carries the writer's *epoch*; the committer records the failed epoch,
//! fails every later batch of that epoch without writing it, and the writer, once it sees the
//! failure, rebuilds its shadows from the committed state and moves to the next epoch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use redb::Durability;

use super::live::Notice;
use super::rows::{Rows, Tables};
use super::{Answer, MAX_EVENTS_PER_COMMIT, Op, Shared, StoreError};
use crate::store::Change;

/// What the writer sends the committer.
pub(super) enum Piped {
    Batch(Placed),
    /// Answered once everything sent before it has been committed (or failed) and handed to the
    /// notifier: the pipeline is empty and the writer may use the database itself.
    Barrier(mpsc::Sender<()>),
}

/// A placed batch: its table writes and what to do once they are durable.
pub(super) struct Placed {
    pub epoch: u64,
    pub events: usize,
    pub rows: Rows,
    pub ops: Vec<Op>,
    pub answers: Vec<Answer>,
    pub changes: Vec<Change>,
}

/// What the committer needs; `failed_epoch` is shared with the writer (0: no failure yet).
pub(super) struct Committer {
    pub shared: Arc<Shared>,
    pub pipe: Receiver<Piped>,
    pub notices: mpsc::Sender<Notice>,
    pub failed_epoch: Arc<AtomicU64>,
    pub gather: Gather,
}

/// How the committer fills a commit.
///
/// Callers that wait for their acknowledgement come back in cohorts: everyone answered by one
/// commit sends its next request at about the same time. Starting the next commit with only
/// the first few of them leaves the rest for the commit after, and two half-full commits cost
/// nearly twice one full one (the fsync and redb's per-commit pages dominate). So when fewer
/// requests are ready than the last commit carried, the committer waits for more, for at most
/// half as long as the last commit took and never more than [`MAX_LINGER`]: a lone writer never
/// waits, and the wait is bounded by what it saves.
#[derive(Default)]
pub(super) struct Gather {
    last_requests: usize,
    last_commit: Duration,
}

/// The longest a commit waits for late callers, however slow the last commit was.
const MAX_LINGER: Duration = Duration::from_millis(1);

impl Gather {
    fn linger(&self) -> Duration {
        (self.last_commit / 2).min(MAX_LINGER)
    }
}

impl Committer {
    /// Commits batches until the writer drops its end of the pipe.
    pub(super) fn run(mut self) {
        let mut held = None;
        loop {
            let first = match held.take() {
                Some(piped) => piped,
                None => match self.pipe.recv() {
                    Ok(piped) => piped,
                    Err(_) => return,
                },
            };
            let mut group = match first {
                Piped::Barrier(done) => {
                    // A writer that stopped waiting is not an error.
                    let _ = done.send(());
                    continue;
                }
                Piped::Batch(placed) => vec![placed],
            };
            let mut events = group[0].events;
            let mut requests = group[0].answers.len();
            let gather_until = Instant::now() + self.gather.linger();
            while events < MAX_EVENTS_PER_COMMIT {
                let next = match self.pipe.try_recv() {
                    Ok(piped) => Some(piped),
                    // The last commit's callers are still coming back: a short wait lets them
                    // share this commit instead of the next one.
                    Err(TryRecvError::Empty) if requests < self.gather.last_requests => {
                        let left = gather_until.saturating_duration_since(Instant::now());
                        self.pipe.recv_timeout(left).ok()
                    }
                    Err(_) => None,
                };
                match next {
                    Some(Piped::Batch(placed))
                        if events + placed.events <= MAX_EVENTS_PER_COMMIT =>
                    {
                        events += placed.events;
                        requests += placed.answers.len();
                        group.push(placed);
                    }
                    // Too big to share this commit, or a barrier: it waits for the next round.
                    Some(piped) => {
                        held = Some(piped);
                        break;
                    }
                    None => break,
                }
            }
            self.gather.last_requests = requests;
            let started = Instant::now();
            self.commit(group);
            self.gather.last_commit = started.elapsed();
        }
    }

    fn commit(&self, group: Vec<Placed>) {
        let failed = self.failed_epoch.load(Ordering::Acquire);
        let (group, doomed): (Vec<Placed>, Vec<Placed>) =
            group.into_iter().partition(|placed| placed.epoch > failed);
        for placed in doomed {
            self.fail(
                placed,
                &StoreError::Unavailable(
                    "an earlier commit failed, so this request was not written".into(),
                ),
            );
        }
        if group.is_empty() {
            return;
        }
        let counters = &self.shared.counters;
        match self.write(&group) {
            Ok(()) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                self.shared.set_degraded(None);
                for placed in group {
                    counters.count_requests(&placed.answers);
                    self.notify(Notice::Committed {
                        ops: placed.ops,
                        changes: placed.changes,
                        answers: placed.answers,
                    });
                }
            }
            Err(error) => {
                tracing::error!(%error, "commit failed; its writes were not acknowledged");
                if matches!(error, StoreError::DiskFull(_) | StoreError::Unavailable(_)) {
                    // The file needs reopening before it takes writes again (see
                    // `Writer::reopen_if_degraded`).
                    self.shared.set_degraded(Some(error.to_string()));
                }
                counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                let epoch = group.iter().map(|placed| placed.epoch).max().unwrap_or(0);
                self.failed_epoch.fetch_max(epoch, Ordering::Release);
                for placed in group {
                    self.fail(placed, &error);
                }
            }
        }
    }

    fn write(&self, group: &[Placed]) -> Result<(), StoreError> {
        let mut txn = self.shared.database()?.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|error| StoreError::storage("", error))?;
        {
            let mut tables = Tables::open(&txn)?;
            for placed in group {
                placed.rows.write(&mut tables)?;
            }
        }
        self.shared.injected_failure()?;
        txn.commit()?;
        Ok(())
    }

    fn fail(&self, placed: Placed, error: &StoreError) {
        self.notify(Notice::Failed {
            answers: placed.answers,
            error: error.for_caller(),
        });
    }

    fn notify(&self, notice: Notice) {
        // The notifier only stops after every sender is gone.
        drop(self.notices.send(notice));
    }
}
