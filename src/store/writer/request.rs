//! What callers ask the writer to do, and how they are answered.

use super::*;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What callers ask the writer to do.
pub(in crate::store) enum Request {
    Append {
        stream: StreamName,
        events: Vec<Event>,
        now: Timestamp,
        reply: Reply<Vec<Appended>>,
    },
    Import {
        stream: StreamName,
        records: Vec<ImportedRecord>,
        reply: Reply<Vec<Appended>>,
    },
    AddNote {
        stream: StreamName,
        text: String,
        expires_at: Option<Timestamp>,
        now: Timestamp,
        reply: Reply<Note>,
    },
    DeleteNote {
        stream: StreamName,
        id: u64,
        reply: Reply<bool>,
    },
    DeleteStream {
        stream: StreamName,
        reply: Reply<bool>,
    },
    SetRetention {
        stream: StreamName,
        retention: Retention,
        reply: Reply<()>,
    },
    SetAnomalies {
        stream: StreamName,
        overrides: AnomalyOverrides,
        reply: Reply<()>,
    },
    /// Runs all pending maintenance as of `now`, then answers.
    Maintain { now: Timestamp, reply: Reply<()> },
    /// A reader's cold load took the cache over its budget: evict now rather than after the
    /// next write.
    Evict,
    /// Commits what is queued before it, and stops. Answered on a
    /// std channel: `Store::close` may be called from a thread inside an async runtime, where a
    /// blocking tokio receive would panic.
    Shutdown {
        reply: mpsc::Sender<Result<(), StoreError>>,
    },
}

impl Request {
    pub(super) fn events(&self) -> usize {
        match self {
            Request::Append { events, .. } => events.len(),
            Request::Import { records, .. } => records.len(),
            _ => 1,
        }
    }

    /// The stream the request reads or writes, if one.
    pub(super) fn stream(&self) -> Option<&StreamName> {
        match self {
            Request::Append { stream, .. }
            | Request::Import { stream, .. }
            | Request::AddNote { stream, .. }
            | Request::DeleteNote { stream, .. }
            | Request::DeleteStream { stream, .. }
            | Request::SetRetention { stream, .. }
            | Request::SetAnomalies { stream, .. } => Some(stream),
            Request::Maintain { .. } | Request::Evict | Request::Shutdown { .. } => None,
        }
    }

    /// Answers the request with a storage error, without doing anything.
    pub(super) fn fail(self, failure: &StoreError) {
        let error = || failure.for_caller();
        match self {
            Request::Append { reply, .. } | Request::Import { reply, .. } => {
                drop(reply.send(Err(error())))
            }
            Request::AddNote { reply, .. } => drop(reply.send(Err(error()))),
            Request::DeleteNote { reply, .. } | Request::DeleteStream { reply, .. } => {
                drop(reply.send(Err(error())))
            }
            Request::SetRetention { reply, .. }
            | Request::SetAnomalies { reply, .. }
            | Request::Maintain { reply, .. } => drop(reply.send(Err(error()))),
            Request::Shutdown { reply } => drop(reply.send(Err(error()))),
            Request::Evict => {}
        }
    }

    /// Whether the writer decides it from its shadows alone, so that it can be placed while
    /// earlier batches are still being committed. The others read tables or end the writer.
    pub(super) fn is_pipelined(&self) -> bool {
        !matches!(
            self,
            Request::DeleteStream { .. } | Request::Maintain { .. } | Request::Shutdown { .. }
        )
    }
}

pub(super) enum Answer {
    Appended(Reply<Vec<Appended>>, Vec<Appended>),
    Note(Reply<Note>, Note),
    Flag(Reply<bool>, bool),
    Done(Reply<()>),
}

impl Answer {
    pub(super) fn send(self, failure: Option<&StoreError>) {
        let fail = StoreError::for_caller;
        // A caller that stopped waiting is not an error.
        match (self, failure) {
            (Answer::Appended(reply, value), None) => drop(reply.send(Ok(value))),
            (Answer::Note(reply, value), None) => drop(reply.send(Ok(value))),
            (Answer::Flag(reply, value), None) => drop(reply.send(Ok(value))),
            (Answer::Done(reply), None) => drop(reply.send(Ok(()))),
            (Answer::Appended(reply, _), Some(detail)) => drop(reply.send(Err(fail(detail)))),
            (Answer::Note(reply, _), Some(detail)) => drop(reply.send(Err(fail(detail)))),
            (Answer::Flag(reply, _), Some(detail)) => drop(reply.send(Err(fail(detail)))),
            (Answer::Done(reply), Some(detail)) => drop(reply.send(Err(fail(detail)))),
        }
    }
}
