//! Packing: which level of detail each competing record gets within what is left of the budget.
//! Pure: items in, a level and a reason per item out.
//!
//! A record can be shown *whole* (its line up to the cap), as a *headline* (one short line), or
//! *folded* into the Earlier summary. Guarantees come first, each when it fits: the newest
//! record whole, the first goal record (what the agent was asked) at least as a headline, then
//! the other goal records and the next newest records as headlines within a quarter of the
//! budget. The rest of the budget goes to the moves that buy the
//! most score per token: showing a record (as a headline, or whole when it has no shorter form)
//! is worth [`HEADLINE_VALUE`] of its score, and upgrading a headline to the whole line is worth
//! the rest. So many records get headlines before a few get their full text, and a long
//! record is shown whole when it matters enough: fresh, severe, or of an important kind.
//!
//! A record whose body is mostly the body of a record shown whole nearby (the same dump under
//! two kinds) is not upgraded: its headline says it happened, and its receipt names the other.

use std::collections::BTreeMap;

use serde::Serialize;

/// A record's body is compared with the bodies of records shown whole at most this many seqs
/// before or after it: a dump is quoted soon after it appears (a failed check, then the report
/// that cites it), and the bound keeps the comparisons few however large the window.
pub const DUPLICATE_REACH: u64 = 32;
/// The goals and the next newest records are placed ahead of ranking while they take at most
/// this fraction (1 / N) of what is available; beyond it they compete like the rest.
pub const AHEAD_SHARE_DIVISOR: u32 = 4;
/// The share of a record's score its headline is worth; the whole line is worth all of it.
pub const HEADLINE_VALUE: f64 = 0.5;

/// How a record is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Its line, whole up to the line cap.
    Whole,
    /// One short line: the first line of its message (and, for output, the last).
    Headline,
    /// Not shown: counted in the Earlier summary.
    Folded,
}

/// Why a record is shown at its level, or not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The newest record, or one of the newest few: kept ahead of ranking.
    Newest,
    /// One of the stream's goal records (its opening task or user events, and the latest one):
    /// kept ahead of ranking.
    Goal,
    /// Placed by its score per token.
    Ranked,
    /// A headline only: its body is the body of a record shown whole (`same_as`).
    Duplicate,
    /// Folded: no room left for it.
    Budget,
    /// The audit record of a note shown in the Notes section: shown there, not repeated.
    Pinned,
    /// The audit record of a note that was deleted or expired: never shown.
    Forgotten,
}

/// What places a record ahead of ranking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The newest record that competes: whole when it fits.
    Newest,
    /// A goal record: at least a headline when it fits.
    Goal,
    /// One of the next newest records: at least a headline when it fits.
    Recent,
    /// Ranked with the rest.
    Plain,
}

/// A record competing for the window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Item {
    /// Its seq (ties in value go to the newer record).
    pub seq: u64,
    /// Its score.
    pub score: f64,
    /// Tokens of its whole line (clipped to the cap).
    pub whole: u32,
    /// Tokens of its headline, when it has one cheaper than the whole line.
    pub headline: Option<u32>,
    /// What places it ahead of ranking.
    pub role: Role,
    /// Whether its body is long enough to be compared with others' (see `same_body` of
    /// [`pack`]).
    pub has_body: bool,
}

impl Item {
    fn cost(&self, level: Level) -> u32 {
        match level {
            Level::Whole => self.whole,
            Level::Headline => self.headline.unwrap_or(self.whole),
            Level::Folded => 0,
        }
    }

    /// The cheapest way to show it.
    fn shown_level(&self) -> Level {
        if self.headline.is_some() {
            Level::Headline
        } else {
            Level::Whole
        }
    }
}

/// The outcome of [`pack`], one entry per item.
#[derive(Clone, Debug, PartialEq)]
pub struct Packing {
    /// How each item is shown.
    pub levels: Vec<Level>,
    /// Why.
    pub reasons: Vec<Reason>,
    /// For a [`Reason::Duplicate`], the item (index) shown whole with the same body.
    pub same_as: Vec<Option<usize>>,
    /// Tokens of everything shown.
    pub tokens: u32,
}

impl Packing {
    /// Whether anything is shown.
    pub fn shows_any(&self) -> bool {
        self.levels.iter().any(|level| *level != Level::Folded)
    }
}

/// A step of the greedy fill.
#[derive(Clone, Copy, Debug)]
pub struct Move {
    index: usize,
    /// The order of moves: score gained per token, highest first, then newest first.
    key: (u64, u64, u8),
    upgrade: bool,
}

/// Chooses a level for every item so that the shown lines cost at most `available`, taking
/// `moves` (from [`moves`], which does not depend on `available`) in order. `same_body(a, b)`
/// says whether items `a` and `b`, both with `has_body`, show mostly the same body.
pub fn pack(
    items: &[Item],
    moves: &[Move],
    available: u32,
    same_body: impl Fn(usize, usize) -> bool,
) -> Packing {
    let mut packer = Packer {
        items,
        remaining: available,
        wholes: BTreeMap::new(),
        packing: Packing {
            levels: vec![Level::Folded; items.len()],
            reasons: vec![Reason::Budget; items.len()],
            same_as: vec![None; items.len()],
            tokens: 0,
        },
    };

    // Ahead of ranking: the newest whole (or at least its headline), then the goals (oldest
    // first) and the next newest as headlines, within a share of the budget so that a small
    // window keeps room for what ranks highest (a critical event, an error).
    for (index, item) in items.iter().enumerate().rev() {
        if item.role == Role::Newest && !packer.place(index, Level::Whole, Reason::Newest) {
            packer.place(index, item.shown_level(), Reason::Newest);
        }
    }
    let share = available / AHEAD_SHARE_DIVISOR;
    let mut ahead = 0u32;
    // The first goal, then the later goals and the next newest, newest first.
    let mut goals = items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.role == Role::Goal);
    let first_goal = goals.next();
    let later_goals = goals.rev();
    let recent = items
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, item)| item.role == Role::Recent);
    let ahead_of_ranking = first_goal.into_iter().chain(later_goals).chain(recent);
    for (rank, (index, item)) in ahead_of_ranking.enumerate() {
        let cost = item.cost(item.shown_level());
        // The first goal (what the agent was asked) is kept whatever the share.
        if rank > 0 && ahead + cost > share {
            continue;
        }
        let reason = if item.role == Role::Goal {
            Reason::Goal
        } else {
            Reason::Newest
        };
        if packer.place(index, item.shown_level(), reason) {
            ahead += cost;
        }
    }

    let mut repeats: Vec<Option<usize>> = vec![None; items.len()];
    for &step in moves {
        if packer.remaining == 0 {
            break;
        }
        let index = step.index;
        let item = &items[index];
        let level = packer.packing.levels[index];
        let reason = match (level, item.role) {
            (Level::Folded, _) | (_, Role::Plain) => Reason::Ranked,
            (_, _) => packer.packing.reasons[index],
        };
        if !step.upgrade {
            if level == Level::Folded {
                packer.place(index, item.shown_level(), reason);
            }
            continue;
        }
        if level == Level::Whole {
            continue;
        }
        // A body already in the window is not paid for again: the headline says it happened.
        if item.has_body {
            let near = item.seq.saturating_sub(DUPLICATE_REACH)..=item.seq + DUPLICATE_REACH;
            let original = packer
                .wholes
                .range(near)
                .map(|(_, &other)| other)
                .find(|&other| same_body(index, other));
            if let Some(original) = original {
                repeats[index] = Some(original);
                continue;
            }
        }
        packer.place(index, Level::Whole, reason);
    }
    let mut packing = packer.packing;
    for (index, repeat) in repeats.into_iter().enumerate() {
        if packing.levels[index] == Level::Headline && repeat.is_some() {
            packing.reasons[index] = Reason::Duplicate;
            packing.same_as[index] = repeat;
        }
    }
    packing
}

/// The state of one packing.
struct Packer<'i> {
    items: &'i [Item],
    remaining: u32,
    /// Items with a body shown whole, by seq: what a duplicate's body is compared with.
    wholes: BTreeMap<u64, usize>,
    packing: Packing,
}

impl Packer<'_> {
    /// Shows item `index` at `level` if the extra tokens fit.
    fn place(&mut self, index: usize, level: Level, reason: Reason) -> bool {
        let item = &self.items[index];
        let extra = item.cost(level) - item.cost(self.packing.levels[index]);
        if extra > self.remaining {
            return false;
        }
        self.remaining -= extra;
        self.packing.tokens += extra;
        self.packing.levels[index] = level;
        self.packing.reasons[index] = reason;
        if level == Level::Whole && item.has_body {
            self.wholes.insert(item.seq, index);
        }
        true
    }
}

/// Every move of the greedy fill, best value per token first (newer first on ties).
pub fn moves(items: &[Item]) -> Vec<Move> {
    let mut moves: Vec<Move> = Vec::with_capacity(items.len() * 2);
    let mut push = |index: usize, value: f64, tokens: u32, upgrade: bool| {
        // Densities are finite and ≥ 0, whose bit patterns order like the numbers: one integer
        // key sorts by density (highest first), then seq (newest first), then show before
        // upgrade.
        let density = value.max(0.0) / f64::from(tokens.max(1));
        let seq = items[index].seq;
        let key = (
            u64::MAX - density.to_bits(),
            u64::MAX - seq,
            u8::from(upgrade),
        );
        moves.push(Move {
            index,
            key,
            upgrade,
        });
    };
    for (index, item) in items.iter().enumerate() {
        match item.headline {
            Some(headline) => {
                push(index, item.score * HEADLINE_VALUE, headline, false);
                let extra = item.whole.saturating_sub(headline);
                push(index, item.score * (1.0 - HEADLINE_VALUE), extra, true);
            }
            None => push(index, item.score, item.whole, false),
        }
    }
    moves.sort_unstable_by_key(|step| step.key);
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(seq: u64, score: f64, whole: u32, headline: Option<u32>, role: Role) -> Item {
        Item {
            seq,
            score,
            whole,
            headline,
            role,
            has_body: true,
        }
    }

    fn pack(items: &[Item], available: u32, same_body: impl Fn(usize, usize) -> bool) -> Packing {
        super::pack(items, &moves(items), available, same_body)
    }

    fn never(_: usize, _: usize) -> bool {
        false
    }

    #[test]
    fn many_headlines_before_a_few_whole_lines() {
        // Ten old dumps of 250 tokens (headline 20) and a newest record of 40.
        let mut items: Vec<Item> = (1..=10)
            .map(|seq| item(seq, 1.0, 250, Some(20), Role::Plain))
            .collect();
        items.push(item(11, 1.0, 40, None, Role::Newest));
        let packing = pack(&items, 300, never);
        assert_eq!(packing.levels[10], Level::Whole);
        assert_eq!(packing.reasons[10], Reason::Newest);
        let headlines = packing
            .levels
            .iter()
            .filter(|l| **l == Level::Headline)
            .count();
        assert_eq!(headlines, 10, "{packing:?}");
        assert!(packing.tokens <= 300);
    }

    #[test]
    fn goals_and_the_newest_come_first() {
        let items = [
            item(1, 0.0, 500, Some(30), Role::Goal),
            item(2, 9.0, 60, None, Role::Plain),
            item(3, 1.0, 100, Some(25), Role::Newest),
        ];
        let packing = pack(&items, 140, never);
        assert_eq!(
            packing.levels,
            [Level::Headline, Level::Folded, Level::Whole]
        );
        assert_eq!(
            packing.reasons,
            [Reason::Goal, Reason::Budget, Reason::Newest]
        );
    }

    #[test]
    fn a_body_already_shown_whole_is_not_paid_twice() {
        let items = [
            item(1, 4.0, 250, Some(20), Role::Plain),
            item(2, 4.0, 260, Some(22), Role::Plain),
        ];
        let packing = pack(&items, 600, |a, b| a != b);
        assert_eq!(
            packing.levels,
            [Level::Whole, Level::Headline],
            "{packing:?}"
        );
        assert_eq!(packing.reasons[1], Reason::Duplicate);
        assert_eq!(packing.same_as[1], Some(0));
        let apart = pack(&items, 600, never);
        assert_eq!(apart.levels, [Level::Whole, Level::Whole]);
    }

    proptest! {
        #[test]
        fn never_over_what_is_available_and_the_newest_is_whole_when_it_fits(
            costs in prop::collection::vec((1u32..300, prop::option::of(1u32..40), 0.0f64..10.0, 0u8..4), 1..120),
            available in 0u32..5_000,
        ) {
            let last = costs.len() - 1;
            let items: Vec<Item> = costs
                .iter()
                .enumerate()
                .map(|(i, &(whole, headline, score, role))| {
                    let role = if i == last {
                        Role::Newest
                    } else {
                        [Role::Plain, Role::Plain, Role::Goal, Role::Recent][role as usize]
                    };
                    let headline = headline.filter(|h| *h < whole);
                    item(i as u64 + 1, score, whole, headline, role)
                })
                .collect();
            let packing = pack(&items, available, |a, b| (a + b) % 7 == 0);
            let used: u32 = items.iter().zip(&packing.levels).map(|(item, level)| item.cost(*level)).sum();
            prop_assert!(used <= available);
            prop_assert_eq!(used, packing.tokens);
            if items[last].whole <= available {
                prop_assert_eq!(packing.levels[last], Level::Whole);
            }
            for (index, reason) in packing.reasons.iter().enumerate() {
                prop_assert_eq!(*reason == Reason::Budget, packing.levels[index] == Level::Folded);
            }
        }
    }
}
