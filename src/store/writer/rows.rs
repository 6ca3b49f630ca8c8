//! Table writes decided before their transaction begins.
//!
//! The writer places a batch (collapse, seqs, revisions, encoding) into [`Rows`] while the
//! committer is still making the previous batches durable; the committer then only copies rows
//! into redb. Values share one byte arena per batch, so placing a record allocates nothing of
//! its own. A record written again within a batch (a repeat's target, an anomaly's record while
//! its episode lasts) keeps one row with its latest value: the transaction's intermediate
//! values are never seen, and the committer inserts it once.

use std::collections::hash_map::Entry;
use std::ops::Range;

use rustc_hash::FxHashMap;

use redb::{Table, WriteTransaction};

use crate::event::StreamName;

use super::super::StoreError;
use super::super::schema;

/// Every table, open in one write transaction.
pub(super) struct Tables<'txn> {
    pub meta: Table<'txn, &'static str, u64>,
    pub streams: Table<'txn, &'static str, &'static [u8]>,
    pub records: Table<'txn, (u64, u64), &'static [u8]>,
    pub severe: Table<'txn, (u64, u64), ()>,
    pub changes: Table<'txn, (u64, u64), &'static [u8]>,
    pub notes: Table<'txn, (u64, u64), &'static [u8]>,
    pub purge: Table<'txn, u64, ()>,
}

impl<'txn> Tables<'txn> {
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            meta: txn.open_table(schema::META)?,
            streams: txn.open_table(schema::STREAMS)?,
            records: txn.open_table(schema::RECORDS)?,
            severe: txn.open_table(schema::SEVERE)?,
            changes: txn.open_table(schema::CHANGES)?,
            notes: txn.open_table(schema::NOTES)?,
            purge: txn.open_table(schema::PURGE)?,
        })
    }
}

/// One deferred write; `value` is a range of the batch's arena.
enum Row {
    Record {
        stream: u64,
        seq: u64,
        value: Range<usize>,
    },
    Severe {
        stream: u64,
        seq: u64,
    },
    Change {
        stream: u64,
        revision: u64,
        value: Range<usize>,
    },
    Note {
        stream: u64,
        id: u64,
        value: Range<usize>,
    },
    NoteRemoved {
        stream: u64,
        id: u64,
    },
    Stream {
        name: StreamName,
        value: Range<usize>,
    },
    StreamRemoved {
        name: StreamName,
        id: u64,
    },
    NextStreamId(u64),
}

/// A batch's table writes, in the order they were decided.
#[derive(Default)]
pub(super) struct Rows {
    arena: Vec<u8>,
    rows: Vec<Row>,
    /// Where the row of each record written again in this batch is, by (stream, seq).
    rewritten: FxHashMap<(u64, u64), usize>,
}

/// Encoded bytes of a typical record: enough to size the arena once per batch.
const TYPICAL_VALUE_BYTES: usize = 160;

impl Rows {
    pub(super) fn with_capacity(rows: usize) -> Rows {
        Rows {
            arena: Vec::with_capacity(rows * TYPICAL_VALUE_BYTES),
            rows: Vec::with_capacity(rows),
            rewritten: FxHashMap::default(),
        }
    }

    /// Appends what `encode` writes to the arena and returns its range.
    fn value(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
        let start = self.arena.len();
        encode(&mut self.arena);
        start..self.arena.len()
    }

    pub(super) fn record(&mut self, stream: u64, seq: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        let value = self.value(encode);
        self.rows.push(Row::Record { stream, seq, value });
    }

    /// A new version of a record that exists (a repeat, a revision): the first in this batch
    /// is a row of its own, later ones replace its value. (The arena keeps the bytes they
    /// replace; a batch is short-lived.)
    pub(super) fn record_again(
        &mut self,
        stream: u64,
        seq: u64,
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        let value = self.value(encode);
        match self.rewritten.entry((stream, seq)) {
            Entry::Occupied(row) => match &mut self.rows[*row.get()] {
                Row::Record { value: kept, .. } => *kept = value,
                _ => unreachable!("`rewritten` points at record rows"),
            },
            Entry::Vacant(row) => {
                row.insert(self.rows.len());
                self.rows.push(Row::Record { stream, seq, value });
            }
        }
    }

    pub(super) fn severe(&mut self, stream: u64, seq: u64) {
        self.rows.push(Row::Severe { stream, seq });
    }

    pub(super) fn change(&mut self, stream: u64, revision: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        let value = self.value(encode);
        self.rows.push(Row::Change {
            stream,
            revision,
            value,
        });
    }

    pub(super) fn note(&mut self, stream: u64, id: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        let value = self.value(encode);
        self.rows.push(Row::Note { stream, id, value });
    }

    pub(super) fn note_removed(&mut self, stream: u64, id: u64) {
        self.rows.push(Row::NoteRemoved { stream, id });
    }

    pub(super) fn stream(&mut self, name: StreamName, meta: &[u8]) {
        let value = self.value(|arena| arena.extend_from_slice(meta));
        self.rows.push(Row::Stream { name, value });
    }

    /// The stream's row goes, and its id is queued for the background purge of its other rows.
    pub(super) fn stream_removed(&mut self, name: StreamName, id: u64) {
        self.rows.push(Row::StreamRemoved { name, id });
    }

    pub(super) fn next_stream_id(&mut self, id: u64) {
        self.rows.push(Row::NextStreamId(id));
    }

    /// Performs the writes, in order, in `tables`' transaction.
    pub(super) fn write(&self, tables: &mut Tables<'_>) -> Result<(), StoreError> {
        let bytes = |range: &Range<usize>| &self.arena[range.clone()];
        for row in &self.rows {
            match row {
                Row::Record { stream, seq, value } => {
                    tables.records.insert((*stream, *seq), bytes(value))?;
                }
                Row::Severe { stream, seq } => {
                    tables.severe.insert((*stream, *seq), ())?;
                }
                Row::Change {
                    stream,
                    revision,
                    value,
                } => {
                    tables.changes.insert((*stream, *revision), bytes(value))?;
                }
                Row::Note { stream, id, value } => {
                    tables.notes.insert((*stream, *id), bytes(value))?;
                }
                Row::NoteRemoved { stream, id } => {
                    tables.notes.remove((*stream, *id))?;
                }
                Row::Stream { name, value } => {
                    tables.streams.insert(name.as_str(), bytes(value))?;
                }
                Row::StreamRemoved { name, id } => {
                    tables.streams.remove(name.as_str())?;
                    tables.purge.insert(*id, ())?;
                }
                Row::NextStreamId(id) => {
                    tables.meta.insert(schema::NEXT_STREAM_ID_KEY, *id)?;
                }
            }
        }
        Ok(())
    }
}
