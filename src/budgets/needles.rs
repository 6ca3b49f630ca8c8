//! Needles: facts planted in a replay whose survival the benchmark checks.
//!
//! Each trace gets `count` notes and `count` critical events, each carrying a unique marker
//! (`NEEDLE-` and 8 lower-case letters) at the start of its text, so a clipped line still shows
//! it. Markers have no digits so that `template` collapse, which masks numbers and hex ids,
//! never mistakes two needles for repeats of one another; for the same reason the needles of
//! one type state different facts (as long as there are facts enough). The
//! plan is a pure function of the trace and the seed: the same seed plants the same needles at
//! the same places, which is what makes a run reproducible.
//!
//! Positions are spread: the trace is cut into `count` equal segments per needle type and each
//! needle lands at a seeded position inside its segment, so needles are planted early, in the
//! middle and late, and each measurement moment asks about needles of many ages.

use crate::event::Kind;
use crate::trace::Trace;

/// Seed used when none is given.
pub const DEFAULT_SEED: u64 = 0x5eed;
/// Notes, and critical events, planted per trace by default: a few of each.
pub const DEFAULT_NEEDLES: usize = 3;
/// What every marker starts with.
pub const MARKER_PREFIX: &str = "NEEDLE-";

/// Facts an agent would pin as notes: short, specific, and unlike anything in the traces.
const NOTE_FACTS: [&str; 6] = [
    "the deploy window is 02:00-04:00 UTC; never restart the database outside it",
    "the user wants every answer in metric units",
    "API keys rotate on Friday; do not cache credentials across runs",
    "the staging cluster is shared with the data team; keep load tests under 50 rps",
    "the customer's account id is acct-3318 and their plan is the annual one",
    "tests must pass on Python 3.8 as well as 3.12",
];

/// What a critical event says: the run cannot go on as it was.
const CRITICAL_FACTS: [&str; 6] = [
    "worker pool crashed: out of memory, 3 jobs lost",
    "credentials for the payment API were revoked",
    "disk /data is full; every write is failing",
    "the production database failed over and is read-only",
    "the sandbox was killed by the supervisor after a policy violation",
    "the upstream model endpoint returned 401 for every request",
];

/// A small, fast, seedable generator (SplitMix64): the plan needs reproducible numbers, not
/// cryptographic ones, and a dependency for that would be overkill.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0); the modulo bias is irrelevant at these sizes.
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

/// What a needle is planted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NeedleType {
    /// A pinned note (`add_note`); baselines see it as a `note` event.
    Note,
    /// An event of severity `critical`.
    Critical,
}

/// One planted fact.
#[derive(Clone, Debug, PartialEq)]
pub struct Needle {
    /// Note or critical event.
    pub needle_type: NeedleType,
    /// Planted right after this many trace events (1 ..= the trace's length), so it has a time.
    pub after: usize,
    /// The unique marker the context must show for the needle to count as found.
    pub marker: String,
    /// The full text: the marker, then the fact.
    pub text: String,
    /// For critical events: the kind of the trace event just before it, so the needle looks
    /// like the agent's own traffic rather than a kind chosen to please the ranking.
    pub kind: Kind,
}

/// The needles for `trace`, ordered by position (notes before critical events at the same
/// position). An empty trace gets none: there is no time to plant them at.
pub fn plan(trace: &Trace, count: usize, seed: u64) -> Vec<Needle> {
    let len = trace.events.len();
    if len == 0 || count == 0 {
        return Vec::new();
    }
    // Each trace gets its own stream of numbers, so two traces of one length differ.
    let mut rng = SplitMix64::new(seed ^ fnv1a(trace.name.as_bytes()));
    let mut markers: Vec<String> = Vec::with_capacity(count * 2);
    let mut needles = Vec::with_capacity(count * 2);
    for (needle_type, facts) in [
        (NeedleType::Note, &NOTE_FACTS),
        (NeedleType::Critical, &CRITICAL_FACTS),
    ] {
        // Facts drawn without replacement: two different needles say two different things.
        let mut order: Vec<usize> = (0..facts.len()).collect();
        for index in (1..order.len()).rev() {
            order.swap(index, rng.below(index + 1));
        }
        for segment in 0..count {
            let start = segment * len / count;
            let end = ((segment + 1) * len / count).max(start + 1).min(len);
            let after = start + 1 + rng.below(end - start);
            let marker = fresh_marker(&mut rng, trace, &markers);
            markers.push(marker.clone());
            let fact = facts[order[segment % order.len()]];
            needles.push(Needle {
                needle_type,
                after,
                text: format!("{marker} {fact}"),
                marker,
                kind: trace.events[after - 1].kind.clone(),
            });
        }
    }
    needles.sort_by_key(|n| (n.after, n.needle_type == NeedleType::Critical));
    needles
}

/// A marker not used by another needle and absent from the trace, so finding it in a context
/// can only mean the needle is shown.
fn fresh_marker(rng: &mut SplitMix64, trace: &Trace, taken: &[String]) -> String {
    loop {
        let letters: String = (0..8)
            .map(|_| char::from(b'a' + rng.below(26) as u8))
            .collect();
        let marker = format!("{MARKER_PREFIX}{letters}");
        let clash = taken.contains(&marker)
            || trace
                .events
                .iter()
                .any(|event| event.message.contains(&marker));
        if !clash {
            return marker;
        }
    }
}

/// FNV-1a: a stable hash of the trace name (std's hashers may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Severity};

    fn trace(len: usize) -> Trace {
        Trace {
            name: "t".into(),
            events: (0..len)
                .map(|i| {
                    let kind = if i % 2 == 0 { "tool" } else { "llm" };
                    Event::new(kind, Severity::Info, format!("event {i}")).unwrap()
                })
                .collect(),
        }
    }

    #[test]
    fn plans_are_spread_unique_and_reproducible() {
        let trace = trace(300);
        let needles = plan(&trace, 3, 7);
        assert_eq!(needles.len(), 6);
        assert_eq!(needles, plan(&trace, 3, 7), "same seed, same plan");
        assert_ne!(needles, plan(&trace, 3, 8), "another seed, another plan");
        for needle_type in [NeedleType::Note, NeedleType::Critical] {
            let afters: Vec<usize> = needles
                .iter()
                .filter(|n| n.needle_type == needle_type)
                .map(|n| n.after)
                .collect();
            assert_eq!(afters.len(), 3);
            for (segment, after) in afters.iter().enumerate() {
                assert!((segment * 100 + 1..=(segment + 1) * 100).contains(after));
            }
        }
        let mut markers: Vec<&str> = needles.iter().map(|n| n.marker.as_str()).collect();
        markers.sort_unstable();
        markers.dedup();
        assert_eq!(markers.len(), 6);
        let mut texts: Vec<String> = needles
            .iter()
            .map(|n| crate::collapse::template(&n.text))
            .collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), 6, "template collapse never folds two needles");
        for needle in &needles {
            assert!(needle.text.starts_with(&needle.marker));
            assert_eq!(needle.kind, trace.events[needle.after - 1].kind);
        }
    }

    #[test]
    fn short_traces_still_get_needles_inside_them() {
        let needles = plan(&trace(2), 3, 1);
        assert_eq!(needles.len(), 6);
        assert!(needles.iter().all(|n| (1..=2).contains(&n.after)));
        assert!(plan(&trace(0), 3, 1).is_empty());
    }
}
