//! The tail's bound in bytes: a stream of 64 KB messages must not hold thousands of them in
//! memory just because its tail counts records.
//!
//! Records are laid end to end by the size they had when created, in blocks of
//! [`TailCapacity::block_bytes`](super::TailCapacity::block_bytes) bytes. The tail keeps at
//! most the records that start in the current block or the one before it: between one and two
//! blocks of text.
//! Like the count bound, the start moves at fixed places, so every state of a stream at the
//! same seq holds the same records, whether appended one by one, restored after a restart or
//! loaded again after an eviction; the writer keeps these numbers in the stream's metadata.

use crate::event::{Record, Timestamp};

/// What a record counts besides its texts: its fields, token caches and rendered line's share.
const RECORD_BASE_BYTES: u64 = 256;

/// Where the byte-bounded tail starts, and the times a restore needs of the records it passed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TailBytes {
    /// Bytes of every record created so far, as counted by [`TailBytes::size`].
    pub total: u64,
    /// Index of the block the newest block-opening record started in.
    pub block: u64,
    /// First seq that started in `block` (0 before the first record).
    pub current: u64,
    /// First seq kept of the block before: the one that started in it, or `current` when no
    /// record did.
    pub previous: u64,
}

impl TailBytes {
    /// The size a record counts: its texts and a fixed share, at most `cap` (so that a block
    /// always holds enough records for collapse, see [`super::TailCapacity::record_cap`]).
    pub fn size(record: &Record, cap: u64) -> u64 {
        let texts = [&record.display_message, &record.actor, &record.step_id]
            .into_iter()
            .flatten()
            .map(String::len)
            .sum::<usize>()
            + record.message.len();
        (texts as u64 + RECORD_BASE_BYTES).min(cap)
    }

    /// Counts a new record `seq` of `size` bytes in blocks of `block_bytes`. Returns whether
    /// it opened a block (then [`BlockTimes::advance`] follows).
    pub fn push(&mut self, seq: u64, size: u64, block_bytes: u64) -> bool {
        let block = self.total / block_bytes.max(1);
        self.total += size;
        if self.current == 0 {
            (self.block, self.current, self.previous) = (block, seq, seq);
            return false;
        }
        if block == self.block {
            return false;
        }
        self.previous = if block == self.block + 1 {
            self.current
        } else {
            seq
        };
        (self.block, self.current) = (block, seq);
        true
    }

    /// The first seq the byte bound keeps.
    pub fn start(&self) -> u64 {
        self.previous.max(1)
    }
}

/// The latest `last_ts` of the records the byte bound still keeps, per block, so that the
/// writer knows what joins the stream's `older_last_ts` when the start moves without holding
/// the records (see [`crate::store`]'s metadata).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockTimes {
    /// Of the records from [`TailBytes::current`] on.
    pub current: Option<Timestamp>,
    /// Of the records from [`TailBytes::previous`] to `current`.
    pub previous: Option<Timestamp>,
}

impl BlockTimes {
    /// Record `seq` took `last_ts`: its block's time moves up; a record before the kept blocks
    /// returns its time for `older_last_ts`.
    pub fn note(&mut self, bytes: &TailBytes, seq: u64, last_ts: Timestamp) -> Option<Timestamp> {
        let slot = if seq >= bytes.current {
            &mut self.current
        } else if seq >= bytes.previous {
            &mut self.previous
        } else {
            return Some(last_ts);
        };
        *slot = Some(slot.map_or(last_ts, |known| known.max(last_ts)));
        None
    }

    /// A new record opened a block (see [`TailBytes::push`]; its own time is noted after
    /// this): returns the time of the records the start passed, and keeps the others'.
    pub fn advance(&mut self, bytes: &TailBytes) -> Option<Timestamp> {
        if bytes.previous == bytes.current {
            // No record started in the block before the new one: both old blocks are passed.
            let passed = self.previous.into_iter().chain(self.current).max();
            *self = BlockTimes::default();
            passed
        } else {
            // The old current block is now the previous one.
            let passed = self.previous;
            *self = BlockTimes {
                current: None,
                previous: self.current,
            };
            passed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The start depends only on the sizes: it is the first record that started in the
        /// block before the newest record's (or the newest record's own, when that block had
        /// none), and what it keeps is at most two blocks and the newest record.
        #[test]
        fn the_start_follows_from_the_sizes_alone(
            sizes in prop::collection::vec(1u64..300, 1..200),
            block in 100u64..1_000,
        ) {
            let mut bytes = TailBytes::default();
            let mut starts = Vec::new();
            for (index, &size) in sizes.iter().enumerate() {
                bytes.push(index as u64 + 1, size, block);
                starts.push(bytes.start());
            }
            // Recompute from scratch: record k starts at offset sum(sizes[..k]).
            let offsets: Vec<u64> = sizes.iter().scan(0, |at, size| { let start = *at; *at += size; Some(start) }).collect();
            for (index, &start) in starts.iter().enumerate() {
                let blocks: Vec<u64> = offsets[..=index].iter().map(|offset| offset / block).collect();
                let first = blocks.iter().position(|&b| b + 1 >= blocks[index]).unwrap();
                prop_assert_eq!(start, first as u64 + 1, "record {}", index + 1);
                let kept: u64 = sizes[start as usize - 1..=index].iter().sum();
                prop_assert!(kept <= 2 * block + sizes[index]);
            }
        }
    }

    #[test]
    fn times_follow_the_blocks() {
        let ts = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap();
        let mut bytes = TailBytes::default();
        let mut times = BlockTimes::default();
        let mut older = None;
        for (seq, size) in [(1, 60), (2, 60), (3, 60), (4, 60), (5, 500)] {
            if bytes.push(seq, size, 100) {
                older = times.advance(&bytes).or(older);
            }
            older = times.note(&bytes, seq, ts(seq as i64)).or(older);
        }
        // Offsets 0, 60, 120, 180, 240: blocks 0, 0, 1, 1, 2. Record 5 opens block 2, so the
        // tail starts at 3, and records 1 and 2 are older.
        assert_eq!(bytes.start(), 3);
        assert_eq!(older, Some(ts(2)));
        assert_eq!(times.previous, Some(ts(4)));
        assert_eq!(times.current, Some(ts(5)));
        // Record 6 starts at 740, block 7: nothing started in block 6, so only it is kept.
        assert!(bytes.push(6, 10, 100));
        older = times.advance(&bytes).or(older);
        assert_eq!((bytes.start(), older), (6, Some(ts(5))));
    }
}
