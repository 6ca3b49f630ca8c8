//! Making durable commits visible: the notifier thread applies each commit's operations to the
//! live states readers use, publishes the changes and answers the callers, in commit order.
//! Callers of failed commits get their error through it too.

use super::*;
use crate::store::cache::Live;

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
        detail: String,
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
                // the change in its feed by the time its write is acknowledged.
                if !changes.is_empty() {
                    // No subscriber is not an error.
                    drop(shared.changes.send(Arc::new(changes)));
                }
                for answer in answers {
                    answer.send(None);
                }
            }
            Notice::Failed { answers, detail } => {
                for answer in answers {
                    answer.send(Some(&detail));
                }
            }
            Notice::Flush(done) => drop(done.send(())),
        }
    }
}

/// Replays a durable commit's operations on the live states. Each stream's operations are
/// applied under one lock, so that a reader never sees a commit half applied, and a cold load
/// never installs a state that missed part of one.
fn apply_to_live(shared: &Shared, ops: Vec<Op>) {
    let mut groups: Vec<(Arc<Slot>, Vec<Op>)> = Vec::new();
    let mut group_of: HashMap<*const Slot, usize> = HashMap::new();
    for op in ops {
        let slot = match op {
            Op::Created(name, slot) => {
                write(&shared.streams).insert(name, slot);
                continue;
            }
            Op::Deleted(name) => {
                write(&shared.streams).remove(&name);
                continue;
            }
            Op::Adopt(ref slot, ..)
            | Op::AddNote(ref slot, ..)
            | Op::RemoveNote(ref slot, ..)
            | Op::Forget(ref slot, ..)
            | Op::Settings(ref slot, ..) => slot,
        };
        let index = *group_of.entry(Arc::as_ptr(slot)).or_insert_with(|| {
            groups.push((slot.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[index].1.push(op);
    }
    for (slot, ops) in groups {
        let mut live = write(&slot.live);
        for op in ops {
            replay(&mut live, op);
        }
    }
}

/// Applies one operation. A cold stream only takes its metadata: its records and notes are in
/// the file, where the next load finds them.
fn replay(live: &mut Live, op: Op) {
    if let Op::Settings(_, meta) = op {
        live.meta = *meta;
        return;
    }
    let Some(state) = live.state.as_mut() else {
        return;
    };
    match op {
        Op::Adopt(_, cached, origin) => state.adopt(cached, origin),
        Op::AddNote(_, note) => {
            state.add_note(note.text, note.created_at, note.expires_at);
        }
        Op::RemoveNote(_, id) => {
            state.remove_note(id);
        }
        Op::Forget(_, through) => state.forget_through(through),
        Op::Settings(..) | Op::Created(..) | Op::Deleted(..) => {}
    }
}
