//! Counting the bytes that cached records and notes hold, so that the store can keep its
//! in-memory state within a budget.
//!
//! Every [`crate::context::CachedRecord`] and [`crate::context::CachedNote`] charges its meter
//! when it is made and again whenever it fills one of its lazy caches (a rendered line, token
//! positions, a headline), and gives everything back when it is dropped. A record shared by
//! several holders (the live state, the writer's shadow, a build in progress) is one allocation
//! and is counted once, for exactly as long as any of them keeps it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What the allocator adds to each heap block on top of the bytes asked for (its header and
/// rounding to a size class), on average: measured with `cargo bench --bench scale`, which
/// compares the meter with the process's resident memory.
pub const ALLOCATION_OVERHEAD: usize = 16;

/// A shared count of bytes held. Cheap to clone; clones count into the same total.
#[derive(Clone, Debug, Default)]
pub struct Meter(Arc<AtomicUsize>);

impl Meter {
    /// A meter counting from zero, shared with nothing else (for states outside a store).
    pub fn detached() -> Meter {
        Meter::default()
    }

    /// Counts `bytes` more.
    pub fn charge(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` fewer (bytes charged before).
    pub fn release(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bytes a heap block of `len` bytes costs (nothing for an empty one, which is not allocated).
pub fn heap(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len + ALLOCATION_OVERHEAD
    }
}

/// Bytes a string's heap block costs.
pub fn string(text: &str) -> usize {
    heap(text.len())
}
