//! Which records compete for a window, what places some of them ahead of ranking, and what
//! each costs at each level of detail.
//!
//! The walk goes back from the newest record, skipping what the request's filters leave out (so
//! a filter reaches as far back as the stream's memory goes), until the records could fill the
//! budget several times over; then come the records that must stay in reach however old they
//! are: severe ones, the goal records, and records of kinds the request's weights raise.

use std::sync::Arc;

use crate::event::{Record, Timestamp};
use crate::render::ClippedLine;

use super::cache::{CachedRecord, Piece};
use super::pack::Role;
use super::{
    CANDIDATE_COST_FACTOR, ContextRequest, GOAL_KINDS, HEADLINE_TOKENS, MIN_CANDIDATES,
    NEWEST_SHARE_DIVISOR, StreamView, TOKENS_PER_CANDIDATE,
};

/// How a record takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// It competes for a place, in this role.
    Competes(Role),
    /// The audit record of a note shown in the Notes section.
    Pinned,
    /// The audit record of a note deleted or expired: never shown.
    Forgotten,
}

/// A record that takes part in a window, with its costs.
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

/// How far back the record holding the latest event is looked for: the largest collapse
/// lookback, since a repeat lands in one of that many newest records.
pub const LATEST_REACH: usize = crate::collapse::MAX_COLLAPSE_LOOKBACK;

/// The cost of a line that cannot be shown (its head alone is over the cap): more than any
/// budget, so packing never places it.
pub const UNSHOWABLE: u32 = u32::MAX / 4;

/// At least this many older severe records compete, however small the budget.
pub const MIN_SEVERE_REACH: u32 = 8;

/// The most records a walk back from the newest takes (and again at most as many of raised
/// kinds beyond them).
pub fn max_window(request: &ContextRequest) -> usize {
    ((request.budget / TOKENS_PER_CANDIDATE) as usize).max(MIN_CANDIDATES)
}

/// The records of `view` that take part in a window for `request` at `now`, oldest first, with
/// their costs; `shown_notes` are the ids of the notes in the Notes section. `None` when
/// `tokenize` is false and a record is not counted yet.
///
/// The walk goes back from the newest record, skipping what the filters leave out, and takes
/// records until their cheapest lines add up to [`CANDIDATE_COST_FACTOR`] budgets (at least
/// [`MIN_CANDIDATES`] of them) or [`max_window`] of them compete. Older records that must stay
/// in reach follow: severe ones, the goal records, and records of kinds the weights raise.
pub fn contenders<'a>(
    view: &StreamView<'a>,
    request: &ContextRequest,
    now: Timestamp,
    shown_notes: &[u64],
    tokenize: bool,
) -> Option<Vec<Contender<'a>>> {
    let Some(newest) = view.records.last().map(|r| r.record()) else {
        return Some(Vec::new());
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
    let costs = Costs::new(request);
    let mut kind_weights: Vec<(&str, f64)> = Vec::with_capacity(16);
    let mut contender = |cached: &'a Arc<CachedRecord>| {
        let record = cached.record();
        let is_goal = goals.contains(&record.seq);
        let standing = match cached.note_id() {
            Some(id) if shown_notes.contains(&id) => Standing::Pinned,
            Some(id) if !live_notes.contains(&id) => Standing::Forgotten,
            // Roles are given once the walk is done.
            _ => Standing::Competes(Role::Plain),
        };
        // A record still repeating is as fresh as the newest one, and a goal never goes stale.
        // (Records posted together share a time, so one that never repeated ages by seq.)
        let repeating = record.repeat_count > 1 && record.last_ts >= newest.first_ts;
        let age = if is_goal || repeating {
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
        let score = request.weights.combine(kind_weight, record.severity, age);
        Some(
            costs
                .of(cached, standing, costs.cap, tokenize)?
                .with_score(score),
        )
    };

    let window = max_window(request);
    let goal = u64::from(request.budget) * CANDIDATE_COST_FACTOR;
    let mut contenders: Vec<Contender<'a>> = Vec::new();
    let (mut competing, mut spent) = (0usize, 0u64);
    let mut walked = view.records.len();
    for (position, cached) in view.records.iter().enumerate().rev() {
        if contenders.len() >= window || (competing >= MIN_CANDIDATES && spent >= goal) {
            break;
        }
        walked = position;
        if !request.filter.admits(cached.record()) {
            continue;
        }
        let contender = contender(cached)?;
        if contender.competes() {
            competing += 1;
            spent += u64::from(contender.cheapest().min(costs.cap));
        }
        contenders.push(contender);
    }
    let oldest_walked = view
        .records
        .get(walked)
        .map_or(u64::MAX, |cached| cached.record().seq);
    // The record holding the latest event can be older than the walk (a repeat lands in any of
    // the newest `lookback` records); when the filters leave it out, the latest they admit.
    let latest = view
        .latest
        .filter(|cached| request.filter.admits(cached.record()))
        .or_else(|| {
            view.records[view.records.len().saturating_sub(LATEST_REACH)..]
                .iter()
                .filter(|cached| request.filter.admits(cached.record()))
                .max_by_key(|cached| cached.record().revision)
        });
    // Older records that stay in reach: newest first, each once.
    // No more older severe records than could be shown as headlines: they tie on their decay
    // floor, so the newest win anyway.
    let severe_reach = (request.budget / HEADLINE_TOKENS).max(MIN_SEVERE_REACH) as usize;
    let older_severe = view
        .severe
        .iter()
        .rev()
        .filter(|cached| cached.record().seq < oldest_walked)
        .take(severe_reach);
    let mut older: Vec<&'a Arc<CachedRecord>> = older_severe
        .chain(view.goals.iter().take(request.goals))
        .chain(view.latest_goal.filter(|_| request.goals > 0))
        .chain(latest)
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
            contenders.push(contender(cached)?);
        }
    }
    assign_roles(&mut contenders, &goals, request.weights.newest_kept);
    // The newest record may take a larger share than the line cap.
    if let Some(newest) = contenders
        .iter_mut()
        .find(|c| c.standing == Standing::Competes(Role::Newest))
    {
        *newest = costs
            .of(newest.record, newest.standing, costs.newest_cap, tokenize)?
            .with_score(newest.score);
    }
    contenders.reverse();
    Some(contenders)
}

/// Ahead of ranking: the records that hold the newest events (the latest changed, by revision:
/// a repeat can make an older record the latest to happen), then the goals.
fn assign_roles(contenders: &mut [Contender<'_>], goals: &[u64], newest_kept: usize) {
    let mut newest: Vec<(u64, u64, usize)> = contenders
        .iter()
        .enumerate()
        .filter(|(_, contender)| contender.competes())
        .map(|(index, contender)| {
            let record = contender.record.record();
            (record.revision, record.seq, index)
        })
        .collect();
    let kept = newest_kept.min(newest.len());
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
        contenders[index].standing = Standing::Competes(role);
    }
    for contender in contenders.iter_mut() {
        if contender.standing == Standing::Competes(Role::Plain)
            && goals.contains(&contender.record.record().seq)
        {
            contender.standing = Standing::Competes(Role::Goal);
        }
    }
}

/// How records are costed for one request.
struct Costs {
    encoding: crate::tokens::Encoding,
    cap: u32,
    newest_cap: u32,
    headline_cap: u32,
}

impl Costs {
    fn new(request: &ContextRequest) -> Costs {
        let cap = request.line_cap();
        Costs {
            encoding: request.encoding,
            cap,
            newest_cap: cap.max(request.budget / NEWEST_SHARE_DIVISOR),
            headline_cap: HEADLINE_TOKENS.min(cap),
        }
    }

    /// A record's costs with its line capped at `cap` (the score is filled in by the caller).
    fn of<'a>(
        &self,
        cached: &'a Arc<CachedRecord>,
        standing: Standing,
        cap: u32,
        tokenize: bool,
    ) -> Option<Contender<'a>> {
        let mut whole = cached.whole(self.encoding, cap, tokenize)?;
        if whole.tokens > cap && whole.cut.is_none() {
            // Not even the line's head fits the cap: the record cannot be shown whole.
            whole.tokens = UNSHOWABLE;
        }
        let long = whole.tokens > self.headline_cap || whole.cut.is_some();
        let mut headline = if long && standing != Standing::Forgotten {
            cached.headline(self.encoding, self.headline_cap, tokenize)?
        } else {
            None
        };
        let mut headline_only = false;
        if let Some(line) = headline.take() {
            if line.tokens < whole.tokens && whole.tokens > self.headline_cap {
                headline = Some(line);
            } else if whole.cut.is_some() {
                headline_only = true;
                whole = Piece {
                    tokens: line.tokens,
                    cut: Some(line),
                };
            }
        }
        Some(Contender {
            record: cached,
            standing,
            score: 0.0,
            whole,
            headline,
            headline_only,
        })
    }
}

impl<'a> Contender<'a> {
    fn with_score(self, score: f64) -> Contender<'a> {
        Contender { score, ..self }
    }

    /// Tokens of its cheapest line.
    fn cheapest(&self) -> u32 {
        self.headline
            .as_ref()
            .map_or(self.whole.tokens, |headline| headline.tokens)
    }
}

/// Whether a record states what the agent was asked.
pub fn is_goal(record: &Record) -> bool {
    GOAL_KINDS.contains(&record.kind.as_str())
}
