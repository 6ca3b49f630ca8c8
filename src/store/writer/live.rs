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

/// Replays a durable commit's operations on the live states, taking each stream's lock once
/// per run of its operations.
fn apply_to_live(shared: &Shared, ops: Vec<Op>) {
    let mut ops = ops.into_iter().peekable();
    while let Some(op) = ops.next() {
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
            | Op::Settings(ref slot, ..) => slot.clone(),
        };
        let mut live = write(&slot.live);
        replay(&mut live, op);
        while let Some(next) = ops.next_if(|next| next.is_for(&slot)) {
            replay(&mut live, next);
        }
    }
}

impl Op {
    /// Whether the operation changes the state of `slot`'s stream.
    fn is_for(&self, slot: &Arc<Slot>) -> bool {
        match self {
            Op::Created(..) | Op::Deleted(..) => false,
            Op::Adopt(held, ..)
            | Op::AddNote(held, ..)
            | Op::RemoveNote(held, ..)
            | Op::Forget(held, ..)
            | Op::Settings(held, ..) => Arc::ptr_eq(held, slot),
        }
    }
}

fn replay(live: &mut Live, op: Op) {
    match op {
        Op::Adopt(_, cached, origin) => live.state.adopt(cached, origin),
        Op::AddNote(_, note) => {
            live.state
                .add_note(note.text, note.created_at, note.expires_at);
        }
        Op::RemoveNote(_, id) => {
            live.state.remove_note(id);
        }
        Op::Forget(_, through) => live.state.forget_through(through),
        Op::Settings(_, retention, first_seq, floor) => {
            live.retention = retention;
            live.first_seq = first_seq;
            live.changelog_floor = floor;
        }
        Op::Created(..) | Op::Deleted(..) => {}
    }
}
