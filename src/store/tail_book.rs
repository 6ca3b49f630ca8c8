//! What a restore of a stream's in-memory state needs besides its rows, kept by a writer where
//! every record passes: the latest `last_ts` of the records before the readers' tail, and the
//! tail's blocks (by count and by bytes) with their latest times. Both backends' writers keep
//! one per stream and store it in the stream's row, so that a state loaded at a revision is the
//! state appended to it record by record, on any node.

use serde::{Deserialize, Serialize};

use crate::event::{Record, Timestamp};
use crate::stream::{BlockTimes, TailBytes, TailCapacity};

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TailBook {
    /// The latest `last_ts` among the records before the readers' tail.
    pub(super) older_last_ts: Option<Timestamp>,
    /// The latest `last_ts` within each block of `tail_records` seqs the tail still reaches
    /// (block `b` holds seqs `b × tail_records + 1 ..= (b + 1) × tail_records`): when the tail
    /// moves past a block, its latest time joins `older_last_ts`.
    pub(super) tail_blocks: Vec<(u64, Timestamp)>,
    /// Where the byte bound has the tail start ([`TailCapacity::start`]).
    pub(super) tail_bytes: TailBytes,
    /// The latest times of the byte blocks the tail keeps.
    pub(super) block_times: BlockTimes,
}

impl TailBook {
    /// Counts a new record toward the readers' byte blocks: when it moves the start, the times
    /// of the records passed join `older_last_ts`.
    pub(super) fn created(&mut self, tail: TailCapacity, lookback: usize, record: &Record) {
        let size = TailBytes::size(record, tail.record_cap(lookback));
        if self.tail_bytes.push(record.seq, size, tail.block_bytes) {
            let passed = self.block_times.advance(&self.tail_bytes);
            self.join_older(passed);
        }
    }

    /// Keeps `older_last_ts` and the tail's blocks up to date after record `seq` took
    /// `last_ts`, the stream's newest record being `last_seq`: the blocks the readers' tail has
    /// moved past join `older_last_ts`.
    pub(super) fn took_last_ts(
        &mut self,
        tail: TailCapacity,
        seq: u64,
        last_ts: Timestamp,
        last_seq: u64,
    ) {
        let block_records = tail.records.max(1) as u64;
        let block = (seq - 1) / block_records;
        match self
            .tail_blocks
            .iter_mut()
            .find(|(known, _)| *known == block)
        {
            Some((_, latest)) => *latest = (*latest).max(last_ts),
            None => self.tail_blocks.push((block, last_ts)),
        }
        let before_blocks = self.block_times.note(&self.tail_bytes, seq, last_ts);
        self.join_older(before_blocks);
        let start = tail.tail_start(last_seq);
        let first_block = (start - 1) / block_records;
        let older = &mut self.older_last_ts;
        self.tail_blocks.retain(|&(block, latest)| {
            let passed = block < first_block;
            if passed {
                *older = Some(older.map_or(latest, |known| known.max(latest)));
            }
            !passed
        });
    }

    /// A record retention removed left the tail: its time joins `older_last_ts`.
    pub(super) fn removed(&mut self, last_ts: Timestamp) {
        self.join_older(Some(last_ts));
    }

    fn join_older(&mut self, last_ts: Option<Timestamp>) {
        self.older_last_ts = self.older_last_ts.max(last_ts);
    }
}
