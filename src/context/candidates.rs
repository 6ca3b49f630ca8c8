//! Which records compete for a window, what places some of them ahead of ranking, and what
//! each costs at each level of detail.
//!
//! Gathering needs no token counts: it walks back from the newest record, skipping what the
//! request's filters leave out (so a filter reaches as far back as the stream's memory goes),
//! and adds the records that must stay in reach however old they are: severe ones, the goal
//! records, and records of kinds the request's weights raise. Costing then walks the gathered
//! records newest first and stops taking ordinary ones once they could fill the budget several
//! times over (the must-keep ones are always taken). The store gathers under the stream's lock
//! and, when costing finds something not yet counted, costs a copy outside it.

use std::borrow::Borrow;
use std::sync::Arc;

use crate::event::{Record, Severity, Timestamp};
use crate::render::ClippedLine;

use super::cache::{CachedRecord, Piece};
use super::pack::Role;
use super::{
    CANDIDATE_COST_FACTOR, ContextRequest, GOAL_KINDS, HEADLINE_TOKENS, MIN_CANDIDATES,
    NEWEST_SHARE_DIVISOR, NOTE_ID_KEY, StreamView, TOKENS_PER_CANDIDATE,
};

/// How a gathered record takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// It competes for a place, in this role.
    Competes(Role),
    /// The audit record of a note shown in the Notes section.
    Pinned,
    /// The audit record of a note deleted or expired: never shown.
    Forgotten,
}

/// A gathered record.
#[derive(Clone, Debug)]
pub struct Entry<R> {
    /// The record.
    pub record: R,
    /// How it takes part.
    pub standing: Standing,
    /// Its score.
    pub score: f64,
    /// Whether it is kept in the running however far back it is (severe, goal, raised kind).
    pub must: bool,
}

/// A gathered record with its costs.
pub struct Contender<'a> {
    /// The record.
    pub record: &'a Arc<CachedRecord>,
    /// How it takes part.
    pub standing: Standing,
    /// Its score.
    pub score: f64,
    /// Shown whole (clipped to its cap when longer).
    pub whole: Piece,
    /// Its headline, when it has one shorter than `whole`.
    pub headline: Option<Arc<ClippedLine>>,
    /// Whether `whole` is its headline: a line clipped to a cap no longer than the headline
    /// says less than the headline does (the head and, for output, the tail; prose without
    /// line breaks), so the headline takes its place.
    pub headline_only: bool,
}

impl Contender<'_> {
    /// Whether it competes for a line (rather than being pinned or forgotten).
    pub fn competes(&self) -> bool {
        matches!(self.standing, Standing::Competes(_))
    }

    /// Its role, if it competes.
    pub fn role(&self) -> Option<Role> {
        match self.standing {
            Standing::Competes(role) => Some(role),
            _ => None,
        }
    }
}

/// The most records gathered by walking back from the newest (and again at most as many of
/// raised kinds beyond them).
pub fn max_window(request: &ContextRequest) -> usize {
    ((request.budget / TOKENS_PER_CANDIDATE) as usize).max(MIN_CANDIDATES)
}

/// Gathers the records that may compete, newest first. `shown_notes` are the ids of the notes
/// in the Notes section.
pub fn gather<'a>(
    view: &StreamView<'a>,
    request: &ContextRequest,
    now: Timestamp,
    shown_notes: &[u64],
) -> Vec<Entry<&'a Arc<CachedRecord>>> {
    let Some(newest) = view.records.last().map(|r| r.record()) else {
        return Vec::new();
    };
    let live_notes: Vec<u64> = view
        .notes
        .iter()
        .filter(|note| note.note().is_live(now))
        .map(|note| note.note().id)
        .collect();
    let goals: Vec<u64> = if request.goals == 0 {
        Vec::new()
    } else {
        view.goals
            .iter()
            .take(request.goals)
            .chain(view.latest_goal)
            .map(|goal| goal.record().seq)
            .collect()
    };
    let raised = request.weights.raised_kinds();
    let window = max_window(request);
    let mut kind_weights: Vec<(&str, f64)> = Vec::with_capacity(16);
    let mut entry = |cached: &'a Arc<CachedRecord>, must: bool| {
        let record = cached.record();
        let is_goal = goals.contains(&record.seq);
        let standing = match note_id_of(record) {
            Some(id) if shown_notes.contains(&id) => Standing::Pinned,
            Some(id) if !live_notes.contains(&id) => Standing::Forgotten,
            // Roles are given once everything is gathered, in order.
            _ => Standing::Competes(Role::Plain),
        };
        // A record still repeating is as fresh as the newest one, and a goal never goes stale.
        let age = if is_goal || record.last_ts >= newest.first_ts {
            0
        } else {
            newest.seq.saturating_sub(record.seq)
        };
        let kind = record.kind.as_str();
        let kind_weight = match kind_weights.iter().find(|(known, _)| *known == kind) {
            Some(&(_, weight)) => weight,
            None => {
                let weight = request.weights.kind(kind);
                kind_weights.push((kind, weight));
                weight
            }
        };
        Entry {
            record: cached,
            standing,
            score: request.weights.combine(kind_weight, record.severity, age),
            must: must || is_goal || is_severe(record) || raised.contains(&kind),
        }
    };

    let mut gathered = Vec::new();
    let mut competing = 0usize;
    let mut walked = view.records.len();
    for (position, cached) in view.records.iter().enumerate().rev() {
        if competing >= window {
            break;
        }
        walked = position;
        if request.filter.admits(cached.record()) {
            let entry = entry(cached, false);
            competing += usize::from(matches!(entry.standing, Standing::Competes(_)));
            gathered.push(entry);
        }
    }
    let oldest_walked = view
        .records
        .get(walked)
        .map_or(u64::MAX, |cached| cached.record().seq);
    // Older records that stay in reach: newest first, each once.
    let mut older: Vec<&'a Arc<CachedRecord>> = view
        .severe
        .iter()
        .chain(view.goals.iter().take(request.goals))
        .chain(view.latest_goal.filter(|_| request.goals > 0))
        .filter(|cached| cached.record().seq < oldest_walked)
        .collect();
    if !raised.is_empty() {
        older.extend(
            view.records[..walked]
                .iter()
                .rev()
                .filter(|cached| raised.contains(&cached.record().kind.as_str()))
                .take(window),
        );
    }
    older.sort_unstable_by_key(|cached| std::cmp::Reverse(cached.record().seq));
    older.dedup_by_key(|cached| cached.record().seq);
    for cached in older {
        if request.filter.admits(cached.record()) {
            gathered.push(entry(cached, true));
        }
    }
    // Ahead of ranking: the records that hold the newest events (a repeat can make an older
    // record the latest to happen), then the goals.
    let mut newest: Vec<(Timestamp, u64, usize)> = gathered
        .iter()
        .enumerate()
        .filter(|(_, entry)| matches!(entry.standing, Standing::Competes(_)))
        .map(|(index, entry)| {
            let record = entry.record.record();
            (record.last_ts, record.seq, index)
        })
        .collect();
    let kept = request.weights.newest_kept.min(newest.len());
    if kept > 0 {
        newest.select_nth_unstable_by(kept - 1, |a, b| b.cmp(a));
        newest[..kept].sort_unstable_by(|a, b| b.cmp(a));
    }
    for (rank, &(.., index)) in newest[..kept].iter().enumerate() {
        let role = if rank == 0 {
            Role::Newest
        } else {
            Role::Recent
        };
        gathered[index].standing = Standing::Competes(role);
    }
    for entry in &mut gathered {
        if entry.standing == Standing::Competes(Role::Plain)
            && goals.contains(&entry.record.record().seq)
        {
            entry.standing = Standing::Competes(Role::Goal);
        }
    }
    gathered
}

/// Costs gathered records, newest first as gathered, and returns the contenders oldest first:
/// ordinary records until their cheapest lines add up to [`CANDIDATE_COST_FACTOR`] budgets (at
/// least [`MIN_CANDIDATES`] of them), must-keep records all. `None` when `tokenize` is false and
/// a record is not counted yet.
pub fn cost<'a, R: Borrow<Arc<CachedRecord>>>(
    gathered: &'a [Entry<R>],
    request: &ContextRequest,
    tokenize: bool,
) -> Option<Vec<Contender<'a>>> {
    let encoding = request.encoding;
    let cap = request.line_cap();
    let newest_cap = cap.max(request.budget / NEWEST_SHARE_DIVISOR);
    let headline_cap = HEADLINE_TOKENS.min(cap);
    let goal = u64::from(request.budget) * CANDIDATE_COST_FACTOR;
    let mut spent = 0u64;
    let mut ordinary = 0usize;
    let mut contenders = Vec::with_capacity(gathered.len());
    for entry in gathered {
        let full = spent >= goal && ordinary >= MIN_CANDIDATES;
        if full && !entry.must {
            continue;
        }
        let cached: &'a Arc<CachedRecord> = entry.record.borrow();
        let line_cap = match entry.standing {
            Standing::Competes(Role::Newest) => newest_cap,
            _ => cap,
        };
        let mut whole = cached.whole(encoding, line_cap, tokenize)?;
        let long = whole.tokens > headline_cap || whole.cut.is_some();
        let mut headline = if long && entry.standing != Standing::Forgotten {
            cached.headline(encoding, headline_cap, tokenize)?
        } else {
            None
        };
        let mut headline_only = false;
        if let Some(line) = headline.take() {
            if line.tokens < whole.tokens && whole.tokens > headline_cap {
                headline = Some(line);
            } else if whole.cut.is_some() {
                headline_only = true;
                whole = Piece {
                    tokens: line.tokens,
                    cut: Some(line),
                };
            }
        }
        if matches!(entry.standing, Standing::Competes(_)) && !entry.must {
            ordinary += 1;
            spent += u64::from(headline.as_ref().map_or(whole.tokens, |h| h.tokens));
        }
        contenders.push(Contender {
            record: cached,
            standing: entry.standing,
            score: entry.score,
            whole,
            headline,
            headline_only,
        });
    }
    contenders.reverse();
    Some(contenders)
}

/// The note a record is the audit copy of (the store logs every note as a `note` event with
/// `payload.note_id`).
pub fn note_id_of(record: &Record) -> Option<u64> {
    if record.kind.as_str() != "note" {
        return None;
    }
    record.payload.as_ref()?.get(NOTE_ID_KEY)?.as_u64()
}

/// Whether a record is kept in reach as severe.
fn is_severe(record: &Record) -> bool {
    record.severity >= Severity::Error
}

/// Whether a record states what the agent was asked.
pub fn is_goal(record: &Record) -> bool {
    GOAL_KINDS.contains(&record.kind.as_str())
}
