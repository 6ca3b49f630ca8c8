//! Making durable commits visible: the notifier thread applies each commit's operations to the
//! live states readers use, publishes the changes and answers the callers, in commit order.
//! Callers of failed commits get their error through it too.

use super::*;

/// What the committer (and the writer, for its own commits and failures) hands the notifier.
pub(super) enum Notice {
    /// A durable commit: replay it on the live states, publish its changes, answer its callers.
    Committed {
        ops: Vec<Op>,
        changes: Vec<Change>,
        answers: Vec<Answer>,
    },
    /// A failed commit: nothing of it is visible; its callers get the error.
    Failed {
        answers: Vec<Answer>,
        error: StoreError,
    },
    /// Answers once everything sent before it is done.
    Flush(mpsc::Sender<()>),
}

/// The notifier thread: makes durable commits visible, in commit order. Running it beside the
/// committer lets the next commit's fsync overlap with waking the last commit's callers.
pub(super) fn notify(shared: Arc<Shared>, notices: Receiver<Notice>) {
    for notice in notices {
        match notice {
            Notice::Committed {
                ops,
                changes,
                answers,
            } => {
                apply_to_live(&shared, ops);
                // Published before answering, so a caller that subscribed before writing has
                // the change in its feed by the time its write is acknowledged. Never waits for
                // a subscriber.
                if !changes.is_empty() {
                    shared.subscribers.publish(changes);
                }
                for answer in answers {
                    answer.send(None);
                }
            }
            Notice::Failed { answers, error } => {
                for answer in answers {
                    answer.send(Some(&error));
                }
            }
            Notice::Flush(done) => drop(done.send(())),
        }
    }
}

/// Applies a durable commit's operations. Each stream's updates are applied under one lock, so
/// that a reader never sees a commit half applied.
fn apply_to_live(shared: &Shared, ops: Vec<Op>) {
    let mut groups: Vec<(Arc<Slot>, Vec<Update>)> = Vec::new();
    let mut group_of: HashMap<*const Slot, usize> = HashMap::new();
    for op in ops {
        match op {
            Op::Created(name, slot) => {
                write(&shared.streams).insert(name, slot);
            }
            Op::Deleted(name) => {
                write(&shared.streams).remove(&name);
            }
            Op::Update(slot, update) => {
                let index = *group_of.entry(Arc::as_ptr(&slot)).or_insert_with(|| {
                    groups.push((slot.clone(), Vec::new()));
                    groups.len() - 1
                });
                groups[index].1.push(update);
            }
        }
    }
    for (slot, updates) in groups {
        slot.apply(updates);
    }
}
