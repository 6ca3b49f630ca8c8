//! Building a context window: notes, the Earlier summary and the records that fit, each at the
//! level of detail the budget allows.
//!
//! Pure: [`build`] takes a [`StreamView`] (what the stream holds), a [`ContextRequest`] and
//! `now`, and returns a [`ContextWindow`]; it never reads the clock, the disk or the network.
//! Token counts come from per-record caches ([`CachedRecord`]), so a warm build adds up numbers
//! instead of re-tokenizing history; only the short Earlier summary is counted afresh.
//!
//! The parts: [`cache`] (what a record costs, rendered and counted once), [`totals`] (what a
//! stream ever accepted), [`candidates`] (which records compete, in which role, at what cost),
//! [`pack`] (the level each gets: whole, headline or folded) and [`earlier`] (the summary of
//! what is left out, and the room it needs).
//!
//! The invariants of the design (section 3) hold for every input:
//! 1. the text counted with the named encoding is at most the budget, and `tokens` is that count;
//! 2. the same view, request and `now` give the same bytes;
//! 3. notes come first and are never crowded out by events (the newest notes that fit are kept);
//! 4. every record not shown is counted in the Earlier line and listed in the receipt (or counted
//!    there as not listed); whenever records are left out and a short Earlier line fits, it is
//!    there;
//! 5. ranking prefers severity and important kinds, decays with age; the newest record is shown
//!    whole when it fits in a quarter of the budget, the goal records and the next newest at
//!    least as headlines;
//! 6. a budget too small for any header gives an empty text and 0 tokens, not an error.
//!
//! Deleted and expired notes are forgotten: neither they nor their audit records are ever shown.

pub mod cache;
pub mod candidates;
pub mod earlier;
pub mod pack;
pub mod totals;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

use crate::event::{Kind, Record, Severity, Timestamp};
use crate::rank::Weights;
use crate::render;
use crate::tokens::Encoding;

pub use cache::{CachedNote, CachedRecord, PayloadPolicy, without_payload};
pub use pack::{Level, Reason};
pub use totals::Totals;

use candidates::{Contender, Standing};
use pack::{Item, Packing};

/// Budget used when a request names none.
pub const DEFAULT_BUDGET_TOKENS: u32 = 2_000;
/// Largest budget accepted: far above any model's context, small enough to bound the work.
pub const MAX_BUDGET_TOKENS: u32 = 1_000_000;
/// The default per-line cap is the budget divided by this: no record but the newest may take
/// more than an eighth of the window.
pub const DEFAULT_LINE_CAP_DIVISOR: u32 = 8;
/// The default per-line cap never goes below this, so tiny budgets still show a useful prefix.
pub const MIN_LINE_CAP_TOKENS: u32 = 32;
/// The newest record may take up to the budget divided by this (whole, if it is no longer): the
/// latest observation is what the agent reacts to.
pub const NEWEST_SHARE_DIVISOR: u32 = 4;
/// A headline takes at most this many tokens (or the line cap, if smaller).
pub const HEADLINE_TOKENS: u32 = 48;
/// Ordinary candidates are the newest records whose cheapest lines add up to this many budgets:
/// enough choice for packing (older severe and goal records compete besides), few enough that a
/// build does not walk a long history.
pub const CANDIDATE_COST_FACTOR: u64 = 2;
/// At most `budget / TOKENS_PER_CANDIDATE` of the newest records compete (a line is rarely
/// under 8 tokens, so at most half of these could fit), which bounds the walk for tiny records.
pub const TOKENS_PER_CANDIDATE: u32 = 4;
/// At least this many of the newest records compete, however small the budget.
pub const MIN_CANDIDATES: usize = 64;
/// Kinds whose records state what the agent was asked: its goal.
pub const GOAL_KINDS: [&str; 2] = ["task", "user"];
/// How many of a stream's opening goal records a window keeps by default (besides the latest).
pub const DEFAULT_GOALS: usize = 1;
/// The most opening goal records a stream keeps in reach, and so the most a request may ask for.
pub const MAX_GOALS: usize = 4;
pub use crate::event::NOTE_ID_KEY;

/// What a context is built from: a consistent snapshot of one stream.
#[derive(Clone, Copy, Debug)]
pub struct StreamView<'a> {
    /// Notes, oldest first (expired ones are skipped at build time).
    pub notes: &'a [Arc<CachedNote>],
    /// The newest records, oldest first, ending with the stream's newest record.
    pub records: &'a [Arc<CachedRecord>],
    /// Records of severity `error` and above, oldest first, that must stay in reach however old
    /// they are; may overlap `records`.
    pub severe: &'a [Arc<CachedRecord>],
    /// The stream's first goal records ([`GOAL_KINDS`]), oldest first, at most [`MAX_GOALS`];
    /// may overlap `records`.
    pub goals: &'a [Arc<CachedRecord>],
    /// The stream's latest goal record (one of `goals` until they are full).
    pub latest_goal: Option<&'a Arc<CachedRecord>>,
    /// The record holding the stream's latest event: the last one created or repeated.
    pub latest: Option<&'a Arc<CachedRecord>>,
    /// Totals over everything the stream accepted.
    pub totals: &'a Totals,
    /// The latest `last_ts` among records older than `records`, if there are any.
    pub older_last_ts: Option<Timestamp>,
}

impl StreamView<'_> {
    /// The view of a stream with no history.
    pub fn empty(totals: &Totals) -> StreamView<'_> {
        StreamView {
            notes: &[],
            records: &[],
            severe: &[],
            goals: &[],
            latest_goal: None,
            latest: None,
            totals,
            older_last_ts: None,
        }
    }
}

/// Which records may be shown at all. Filters apply before anything is cut: they decide which
/// records compete, back through everything the stream holds in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only records at or above this severity.
    pub min_severity: Option<Severity>,
    /// Only records of these kinds.
    pub kinds: Option<BTreeSet<Kind>>,
    /// Only records whose latest event is at or after this time.
    pub since: Option<Timestamp>,
}

impl Filter {
    /// Whether `record` may be shown.
    pub fn admits(&self, record: &Record) -> bool {
        self.min_severity.is_none_or(|min| record.severity >= min)
            && self
                .kinds
                .as_ref()
                .is_none_or(|kinds| kinds.contains(&record.kind))
            && self.since.is_none_or(|since| record.last_ts >= since)
    }
}

/// What a client asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct ContextRequest {
    /// Token budget for the whole text.
    pub budget: u32,
    /// Encoding the budget is counted in.
    pub encoding: Encoding,
    /// Ranking weights.
    pub weights: Weights,
    /// Which records may be shown.
    pub filter: Filter,
    /// Most tokens one record's line may take; `None` for the default fraction of the budget.
    pub line_cap: Option<u32>,
    /// How many of the stream's opening goal records are kept ahead of ranking (with the latest
    /// one); 0 keeps none.
    pub goals: usize,
}

impl ContextRequest {
    /// A request with default weights, no filters, the default line cap and goals.
    pub fn new(budget: u32, encoding: Encoding) -> ContextRequest {
        ContextRequest {
            budget,
            encoding,
            weights: Weights::default(),
            filter: Filter::default(),
            line_cap: None,
            goals: DEFAULT_GOALS,
        }
    }

    /// The per-line cap in force.
    pub fn line_cap(&self) -> u32 {
        self.line_cap
            .unwrap_or((self.budget / DEFAULT_LINE_CAP_DIVISOR).max(MIN_LINE_CAP_TOKENS))
    }
}

/// One candidate's fate: the budget receipt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReceiptItem {
    /// The record's seq.
    pub seq: u64,
    /// What its line costs at its level (whole, clipped if `clipped`, when folded).
    pub tokens: u32,
    /// Its score.
    pub score: f64,
    /// Whether it is shown (as a line, or as a pinned note).
    pub included: bool,
    /// How much of it is shown.
    pub level: Level,
    /// Why it is shown at that level, or not at all.
    pub reason: Reason,
    /// Whether its whole line was clipped to the line cap.
    pub clipped: bool,
    /// For a duplicate: the seq of the record shown whole with the same body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_as: Option<u64>,
}

/// Counts that account for every record and event of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReceiptTotals {
    /// Records the stream ever had.
    pub records: u64,
    /// Events the stream ever accepted.
    pub events: u64,
    /// Records that competed for the window (listed in `items`).
    pub candidates: u64,
    /// Records shown.
    pub shown_records: u64,
    /// Of those, shown whole (clipped or not).
    pub shown_whole: u64,
    /// Of those, shown as headlines.
    pub shown_headlines: u64,
    /// Events shown (shown records' repeat counts).
    pub shown_events: u64,
    /// Records not shown, counted in the Earlier line.
    pub elided_records: u64,
    /// Events not shown, counted in the Earlier line.
    pub elided_events: u64,
    /// Notes shown.
    pub notes_shown: u64,
    /// Live notes left out for lack of budget.
    pub notes_cut: u64,
}

/// A built context window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContextWindow {
    /// The prompt-ready text.
    pub text: String,
    /// Its token count under `encoding` (exact).
    pub tokens: u32,
    /// The budget it was built for.
    pub budget: u32,
    /// The encoding tokens are counted in.
    pub encoding: Encoding,
    /// Whether live notes were left out because they did not fit.
    pub notes_cut: bool,
    /// The per-line cap that was applied.
    pub line_cap: u32,
    /// The receipt: every candidate's fate, oldest first.
    pub items: Vec<ReceiptItem>,
    /// Counts over the whole stream.
    pub totals: ReceiptTotals,
}

/// Tokens of a section header under `encoding` (counted once per process).
fn header_tokens(encoding: Encoding, header: &str) -> u32 {
    encoding.count_fragments(header)
}

/// What a build of `request` may walk, copied out of the stream's view (the records are shared,
/// not cloned), to be counted with [`prepare`] once the stream's lock is released.
pub fn unprepared(view: &StreamView<'_>, request: &ContextRequest) -> Unprepared {
    // A walk takes at most `max_window` records the filters admit, unless raised weights send
    // it further back: copy what it can reach.
    let reach = if request.weights.raised_kinds().is_empty() {
        let window = candidates::max_window(request);
        let mut admitted = 0;
        view.records
            .iter()
            .rposition(|cached| {
                admitted += usize::from(request.filter.admits(cached.record()));
                admitted > window
            })
            .unwrap_or(0)
            .min(view.records.len().saturating_sub(candidates::LATEST_REACH))
    } else {
        0
    };
    Unprepared {
        notes: view.notes.to_vec(),
        records: view.records[reach..].to_vec(),
        severe: view.severe.to_vec(),
        goals: view.goals.to_vec(),
        latest_goal: view.latest_goal.cloned(),
        latest: view.latest.cloned(),
        totals: view.totals.clone(),
    }
}

/// A copy of what a build may walk (see [`unprepared`]).
pub struct Unprepared {
    notes: Vec<Arc<CachedNote>>,
    records: Vec<Arc<CachedRecord>>,
    severe: Vec<Arc<CachedRecord>>,
    goals: Vec<Arc<CachedRecord>>,
    latest_goal: Option<Arc<CachedRecord>>,
    latest: Option<Arc<CachedRecord>>,
    totals: Totals,
}

/// Counts, clips and headlines what a build of `request` at `now` will cost, by building it on
/// the copy: the same walk over the same records.
pub fn prepare(unprepared: &Unprepared, request: &ContextRequest, now: Timestamp) {
    let view = StreamView {
        notes: &unprepared.notes,
        records: &unprepared.records,
        severe: &unprepared.severe,
        goals: &unprepared.goals,
        latest_goal: unprepared.latest_goal.as_ref(),
        latest: unprepared.latest.as_ref(),
        totals: &unprepared.totals,
        older_last_ts: None,
    };
    // Every live note, whether or not it will fit: a build checks them all.
    for note in view.notes.iter().filter(|note| note.note().is_live(now)) {
        note.tokens(request.encoding);
    }
    let mut remaining = request.budget;
    let (notes, _) = select_notes(view.notes, request.encoding, now, &mut remaining);
    let shown_notes: Vec<u64> = notes.iter().map(|note| note.note().id).collect();
    candidates::contenders(&view, request, now, &shown_notes, true);
}

/// Builds the context window for `request` over `view` at `now`, tokenizing what it needs.
pub fn build(view: &StreamView<'_>, request: &ContextRequest, now: Timestamp) -> ContextWindow {
    build_with(view, request, now, true).expect("a tokenizing build always completes")
}

/// [`build`], or `None` as soon as a record it walks is not counted or cut yet.
///
/// A build reads the stream under its lock, and the store's notifier waits for that lock to make
/// a write to the stream visible (and with it every acknowledgement, on every stream). So the
/// store builds with this first, and when it gets `None` it takes the records the build may walk
/// ([`unprepared`]), counts them outside the lock ([`prepare`]), and builds again: tokenizing a
/// cold history (long messages, the first build after a restart, a new encoding or `line_cap`)
/// then holds no lock.
pub fn build_if_ready(
    view: &StreamView<'_>,
    request: &ContextRequest,
    now: Timestamp,
) -> Option<ContextWindow> {
    build_with(view, request, now, false)
}

fn build_with(
    view: &StreamView<'_>,
    request: &ContextRequest,
    now: Timestamp,
    tokenize: bool,
) -> Option<ContextWindow> {
    let encoding = request.encoding;
    let mut remaining = request.budget;
    // A note not counted yet is counted by `prepare`, outside the stream's lock.
    if !tokenize
        && view
            .notes
            .iter()
            .any(|note| note.note().is_live(now) && note.tokens_if_counted(encoding).is_none())
    {
        return None;
    }
    let (notes, notes_cut) = select_notes(view.notes, encoding, now, &mut remaining);
    let shown_notes: Vec<u64> = notes.iter().map(|note| note.note().id).collect();
    let contenders = candidates::contenders(view, request, now, &shown_notes, tokenize)?;
    let items: Vec<Item> = contenders
        .iter()
        .filter_map(|contender| {
            Some(Item {
                seq: contender.record.record().seq,
                score: contender.score,
                whole: contender.whole.tokens,
                headline: contender.headline.as_ref().map(|headline| headline.tokens),
                role: contender.role()?,
                has_body: !contender.record.body().is_empty(),
            })
        })
        .collect();

    let recent_header = header_tokens(encoding, render::RECENT_HEADER);
    let (packing, earlier) =
        earlier::choose(view, request, &contenders, &items, remaining, recent_header);
    Some(assemble(
        view,
        request,
        (&notes, notes_cut),
        &contenders,
        &packing,
        earlier,
        recent_header,
    ))
}

/// The newest live notes that fit, oldest first, and how many live notes were cut.
fn select_notes<'a>(
    notes: &'a [Arc<CachedNote>],
    encoding: Encoding,
    now: Timestamp,
    remaining: &mut u32,
) -> (Vec<&'a Arc<CachedNote>>, u64) {
    let live: Vec<&Arc<CachedNote>> = notes.iter().filter(|n| n.note().is_live(now)).collect();
    if live.is_empty() {
        return (Vec::new(), 0);
    }
    let header = header_tokens(encoding, render::NOTES_HEADER);
    let Some(mut left) = remaining.checked_sub(header) else {
        return (Vec::new(), live.len() as u64);
    };
    let mut chosen: Vec<&Arc<CachedNote>> = Vec::new();
    for note in live.iter().rev() {
        let cost = note.tokens(encoding);
        if cost <= left {
            left -= cost;
            chosen.push(note);
        }
    }
    let cut = (live.len() - chosen.len()) as u64;
    if chosen.is_empty() {
        return (chosen, cut);
    }
    chosen.reverse();
    *remaining = left;
    (chosen, cut)
}

/// The text and the receipt.
fn assemble(
    view: &StreamView<'_>,
    request: &ContextRequest,
    (notes, notes_cut): (&[&Arc<CachedNote>], u64),
    contenders: &[Contender<'_>],
    packing: &Packing,
    earlier: Option<earlier::Earlier>,
    recent_header: u32,
) -> ContextWindow {
    let encoding = request.encoding;
    let mut text = String::new();
    let mut tokens = 0;
    if !notes.is_empty() {
        text.push_str(render::NOTES_HEADER);
        tokens += header_tokens(encoding, render::NOTES_HEADER);
        for note in notes {
            text.push_str(note.piece());
            tokens += note.tokens(encoding);
        }
    }
    if let Some((earlier_text, earlier_tokens)) = &earlier {
        text.push_str(earlier_text);
        tokens += earlier_tokens;
    }
    let mut totals = ReceiptTotals {
        records: view.totals.records,
        events: view.totals.events,
        candidates: contenders.len() as u64,
        notes_shown: notes.len() as u64,
        notes_cut,
        ..ReceiptTotals::default()
    };

    // Each contender's fate; the competing ones take their packed level in order.
    let mut packed = packing
        .levels
        .iter()
        .zip(&packing.reasons)
        .zip(&packing.same_as);
    let mut competing_seqs: Vec<u64> = Vec::new();
    let mut fates: Vec<(Level, Reason, Option<usize>)> = Vec::with_capacity(contenders.len());
    for contender in contenders {
        fates.push(match contender.standing {
            Standing::Pinned => (Level::Whole, Reason::Pinned, None),
            Standing::Forgotten => (Level::Folded, Reason::Forgotten, None),
            Standing::Competes(_) => {
                competing_seqs.push(contender.record.record().seq);
                let ((level, reason), same_as) = packed.next().expect("one level per item");
                match level {
                    Level::Whole if contender.headline_only => (Level::Headline, *reason, *same_as),
                    _ => (*level, *reason, *same_as),
                }
            }
        });
    }

    let mut lines: Vec<(&Contender<'_>, Level)> = contenders
        .iter()
        .zip(&fates)
        .filter(|(contender, (level, ..))| contender.competes() && *level != Level::Folded)
        .map(|(contender, (level, ..))| (contender, *level))
        .collect();
    if !lines.is_empty() {
        text.push_str(render::RECENT_HEADER);
        tokens += recent_header;
    }
    // Lines go in the order things last happened: a record still repeating sits at the bottom.
    lines.sort_by_key(|(c, _)| (c.record.record().last_ts, c.record.record().seq));
    for (contender, level) in lines {
        let (line, cost) = match (level, &contender.headline, &contender.whole.cut) {
            (Level::Headline, Some(headline), _) => (headline.text.as_str(), headline.tokens),
            (_, _, Some(clip)) => (clip.text.as_str(), clip.tokens),
            _ => (contender.record.line(), contender.whole.tokens),
        };
        text.push_str(line);
        tokens += cost;
    }

    let mut items = Vec::with_capacity(contenders.len());
    for (contender, &(level, reason, same_as)) in contenders.iter().zip(&fates) {
        let record = contender.record.record();
        let shown_tokens = match (level, &contender.headline) {
            (Level::Headline, Some(headline)) => headline.tokens,
            // A line whose head alone is over the cap: what the full line would cost.
            _ if contender.whole.tokens == candidates::UNSHOWABLE => {
                contender.record.tokens(encoding)
            }
            _ => contender.whole.tokens,
        };
        if level != Level::Folded {
            totals.shown_records += 1;
            totals.shown_events += record.repeat_count;
            match (level, reason) {
                (_, Reason::Pinned) => {}
                (Level::Headline, _) => totals.shown_headlines += 1,
                _ => totals.shown_whole += 1,
            }
        }
        items.push(ReceiptItem {
            seq: record.seq,
            tokens: shown_tokens,
            score: contender.score,
            included: level != Level::Folded,
            level,
            reason,
            clipped: level == Level::Whole && contender.whole.cut.is_some(),
            same_as: same_as.map(|index| competing_seqs[index]),
        });
    }
    totals.elided_records = totals.records - totals.shown_records;
    totals.elided_events = totals.events - totals.shown_events;
    debug_assert!(tokens <= request.budget, "{tokens} > {}", request.budget);
    ContextWindow {
        text,
        tokens,
        budget: request.budget,
        encoding,
        notes_cut: notes_cut > 0,
        line_cap: request.line_cap(),
        items,
        totals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collapse::CollapsePolicy;
    use crate::event::{Event, parse_timestamp};
    use crate::render::{EarlierForm, EarlierSummary};
    use crate::stream::{StreamState, TailCapacity};
    use chrono::TimeDelta;
    use proptest::prelude::*;

    fn t0() -> Timestamp {
        parse_timestamp("2024-05-01T10:00:00Z").unwrap()
    }

    const MESSAGES: [&str; 10] = [
        "search(\"redb durability\") -> 12 results",
        "search timed out after 30s",
        "",
        "Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\n    import flask\nModuleNotFoundError: No module named 'flask'",
        "Rate limit reached for gpt-3.5-turbo in organization org-x on tokens per min. Limit: 40000 / min. Please try again in 1ms.",
        "naïve café — ünïcödé 🎉 日本語のテキスト",
        "   leading spaces and trailing   ",
        "line one\r\nline two\r\n",
        "<|endoftext|> is just text here",
        "ok",
    ];

    fn arb_stream() -> impl Strategy<Value = (Vec<GeneratedEvent>, Vec<GeneratedNote>)> {
        let event = (0usize..10, 0usize..8, 0usize..5, 0i64..120, 0usize..600);
        let note = (0usize..10, 0usize..4);
        (
            prop::collection::vec(event, 0..300),
            prop::collection::vec(note, 0..5),
        )
    }

    /// (message, kind, severity, seconds since the previous event, long-message repeat).
    type GeneratedEvent = (usize, usize, usize, i64, usize);
    /// (message, fate: 0 and 1 live, 2 deleted, 3 expired).
    type GeneratedNote = (usize, usize);

    const KINDS: [&str; 8] = [
        "tool",
        "llm",
        "error",
        "metric",
        "observation",
        "plan",
        "task",
        "note",
    ];

    /// Replays a generated stream; long messages come from repeating a base message. Notes are
    /// added the way the store adds them (with a `note` audit record), then deleted or left to
    /// expire as generated.
    fn replay(events: &[GeneratedEvent], notes: &[GeneratedNote], tail: usize) -> StreamState {
        let capacity = TailCapacity {
            records: tail,
            severe: 16,
            ..TailCapacity::default()
        };
        let mut state = StreamState::new(CollapsePolicy::default(), capacity);
        let mut at = t0();
        for &(message, kind, severity, gap, repeat) in events {
            at += TimeDelta::seconds(gap);
            let text = if repeat > 500 {
                MESSAGES[message].repeat(repeat - 480)
            } else {
                MESSAGES[message].to_owned()
            };
            let event = Event::new(KINDS[kind], Severity::ALL[severity], text).unwrap();
            state.append(event, at);
        }
        for (index, &(message, fate)) in notes.iter().enumerate() {
            let expires_at = (fate == 3).then(|| at + TimeDelta::minutes(1));
            let text = format!("remember {index}: {}", MESSAGES[message]);
            let note = state.add_note(text.clone(), at, expires_at);
            let mut audit = Event::new("note", Severity::Info, text).unwrap();
            audit.payload = Some(crate::payload::Payload::number(NOTE_ID_KEY, note.id));
            state.append(audit, at);
            if fate == 2 {
                state.remove_note(note.id);
            }
        }
        state
    }

    fn earlier_count(text: &str) -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix("## Earlier ("))
            .and_then(|rest| rest.split(' ').next())
            .map_or(0, |count| count.parse().unwrap())
    }

    fn summary_of_everything(state: &StreamState) -> EarlierSummary {
        let totals = state.totals();
        EarlierSummary {
            events: totals.events,
            first_ts: totals.first_ts,
            last_ts: totals.last_ts,
            kinds: totals
                .kinds
                .iter()
                .map(|(k, c)| (k.to_string(), *c))
                .collect(),
            severities: totals.severities,
            repeats: totals.events - totals.records,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Preparing outside the lock leaves the build nothing to tokenize, and changes nothing
        /// in what it builds.
        #[test]
        fn prepared_builds_are_the_same_and_find_everything_ready(
            (events, notes) in arb_stream(),
            budget in prop_oneof![0u32..600, 0u32..8_000],
            o200k in any::<bool>(),
            line_cap in prop::option::of(8u32..200),
            kinds in prop::option::of(prop::sample::subsequence(KINDS.to_vec(), 1..3)),
        ) {
            let encoding = if o200k { Encoding::O200kBase } else { Encoding::Cl100kBase };
            let mut request = ContextRequest::new(budget, encoding);
            request.line_cap = line_cap;
            request.filter.kinds = kinds.map(|kinds| kinds.iter().map(|k| Kind::new(k).unwrap()).collect());
            let now = t0() + TimeDelta::days(1);
            let prepared = replay(&events, &notes, 4_096);
            prepare(&unprepared(&prepared.view(), &request), &request, now);
            let ready = build_if_ready(&prepared.view(), &request, now);
            let cold = build(&replay(&events, &notes, 4_096).view(), &request, now);
            prop_assert_eq!(ready, Some(cold));
        }

        /// Invariants 1, 2 and 4 over random streams and budgets, with levels of detail.
        #[test]
        fn never_over_budget_deterministic_and_accounted(
            (events, notes) in arb_stream(),
            budget in prop_oneof![0u32..64, 0u32..600, 0u32..32_000],
            o200k in any::<bool>(),
            tail in prop::sample::select(vec![64usize, 4_096]),
        ) {
            let encoding = if o200k { Encoding::O200kBase } else { Encoding::Cl100kBase };
            let state = replay(&events, &notes, tail);
            let request = ContextRequest::new(budget, encoding);
            let now = t0() + TimeDelta::days(1);
            let window = build(&state.view(), &request, now);

            prop_assert!(window.tokens <= budget, "{} > {budget}", window.tokens);
            prop_assert_eq!(window.tokens, encoding.count(&window.text), "the reported count is exact");

            let again = build(&replay(&events, &notes, tail).view(), &request, now);
            prop_assert_eq!(&again.text, &window.text, "same history, same bytes");

            let totals = &window.totals;
            prop_assert_eq!(totals.shown_events + totals.elided_events, totals.events);
            let shown_lines = window.text.lines().filter(|l| l.as_bytes().first().is_some_and(u8::is_ascii_digit)).count() as u64;
            prop_assert_eq!(shown_lines, totals.shown_whole + totals.shown_headlines, "every shown record has one line");
            prop_assert!(!window.text.contains("## Earlier (0 "), "an empty summary:\n{}", window.text);
            if totals.elided_events > 0 && window.text.contains("## Earlier") {
                prop_assert_eq!(earlier_count(&window.text), totals.elided_events, "Earlier counts every event not shown");
            }
            // Invariant 4 at every budget: records left out and a short Earlier line that
            // fits mean the line is there.
            if totals.elided_events > 0 {
                let mut summary = summary_of_everything(&state);
                summary.events = totals.elided_events;
                let short = encoding.count(&render::earlier_piece(&summary, EarlierForm::Short));
                let notes_cost = window.tokens - window.text.split("## Earlier").next().map_or(0, |notes| encoding.count(notes));
                let _ = notes_cost;
                let before = window.text.find("## Earlier").map_or(window.text.as_str(), |at| &window.text[..at]);
                if encoding.count(before) + short + 2 <= budget {
                    prop_assert!(window.text.contains("## Earlier"), "{} events left out silently:\n{}", totals.elided_events, window.text);
                }
            }
        }

        /// Forgetting forgets: a deleted or expired note is in no window, at any budget, and
        /// neither is its audit record.
        #[test]
        fn deleted_and_expired_notes_are_never_shown(
            (events, notes) in arb_stream(),
            budget in 0u32..4_000,
        ) {
            let state = replay(&events, &notes, 4_096);
            let now = t0() + TimeDelta::days(1);
            let window = build(&state.view(), &ContextRequest::new(budget, Encoding::Cl100kBase), now);
            for (index, &(_, fate)) in notes.iter().enumerate() {
                let marker = format!("remember {index}:");
                if fate >= 2 {
                    prop_assert!(!window.text.contains(&marker), "note {index} (fate {fate}) shown:\n{}", window.text);
                }
            }
        }

        /// The newest record is shown whole whenever its line takes at most a quarter of the
        /// budget and fits beside the headers and a summary of everything else.
        #[test]
        fn newest_record_is_whole_when_it_fits_a_quarter(
            (events, _) in arb_stream(),
            budget in 0u32..4_000,
        ) {
            prop_assume!(!events.is_empty());
            let state = replay(&events, &[], 4_096);
            let request = ContextRequest::new(budget, Encoding::Cl100kBase);
            let window = build(&state.view(), &request, t0());
            // The record holding the latest event: the last changed.
            let newest = state.records().max_by_key(|record| record.revision).unwrap();
            let item = window.items.iter().find(|item| item.seq == newest.seq).unwrap();
            let full = Encoding::Cl100kBase.count(&render::record_line(newest));
            let reserve = Encoding::Cl100kBase.count(&render::earlier_piece(&summary_of_everything(&state), EarlierForm::Full)) + 8;
            let header = header_tokens(Encoding::Cl100kBase, render::RECENT_HEADER);
            if full <= budget / 4 && full + header + reserve <= budget {
                prop_assert_eq!(item.level, Level::Whole, "newest ({} tokens) not whole in a {} budget", full, budget);
                prop_assert!(!item.clipped);
            }
        }

        /// The goal (the stream's first task) is in the window, at least as a headline,
        /// whenever its headline fits beside the headers, a summary and the newest record.
        #[test]
        fn the_goal_stays_in_view(
            (events, _) in arb_stream(),
            task in 0usize..10,
            budget in 0u32..4_000,
        ) {
            let mut goal_first = vec![(task, 6usize, 1usize, 0i64, 0usize)];
            goal_first.extend(events.iter().filter(|e| e.1 != 6).copied());
            let state = replay(&goal_first, &[], 64);
            let request = ContextRequest::new(budget, Encoding::Cl100kBase);
            let window = build(&state.view(), &request, t0() + TimeDelta::days(1));
            let item = window.items.iter().find(|item| item.seq == 1);
            let goal = state.view().goals[0].clone();
            let cap = HEADLINE_TOKENS.min(request.line_cap());
            let headline = render::headline(goal.record(), Encoding::Cl100kBase, cap).map_or(u32::MAX, |h| h.tokens).min(goal.tokens(Encoding::Cl100kBase));
            let newest = state.records().max_by_key(|record| record.revision).unwrap();
            let newest_cost = Encoding::Cl100kBase.count(&render::record_line(newest)).min(request.line_cap().max(budget / 4));
            let reserve = Encoding::Cl100kBase.count(&render::earlier_piece(&summary_of_everything(&state), EarlierForm::Full)) + 8;
            let header = header_tokens(Encoding::Cl100kBase, render::RECENT_HEADER);
            if u64::from(headline) + u64::from(newest_cost) + u64::from(header + reserve) <= u64::from(budget) {
                prop_assert!(item.is_some_and(|item| item.included), "goal ({headline} tokens) left out of {budget}:\n{}", window.text);
            }
        }
    }

    #[test]
    fn tiny_budgets_give_an_empty_window_not_an_error() {
        let state = replay(&[(0, 0, 1, 1, 0), (1, 0, 3, 1, 0)], &[(0, 0)], 64);
        for budget in 0..4 {
            let window = build(
                &state.view(),
                &ContextRequest::new(budget, Encoding::Cl100kBase),
                t0(),
            );
            assert_eq!(
                (window.text.as_str(), window.tokens),
                ("", 0),
                "budget {budget}"
            );
        }
    }

    #[test]
    fn notes_come_first_and_the_newest_survive_a_small_budget() {
        let mut state = replay(&[(1, 2, 3, 1, 0)], &[], 64);
        for i in 0..6 {
            state.add_note(format!("fact number {i} to keep in mind"), t0(), None);
        }
        let full = build(
            &state.view(),
            &ContextRequest::new(2_000, Encoding::Cl100kBase),
            t0(),
        );
        assert!(full.text.starts_with("## Notes\n- fact number 0"));
        assert!(!full.notes_cut);
        let small = build(
            &state.view(),
            &ContextRequest::new(30, Encoding::Cl100kBase),
            t0(),
        );
        assert!(small.notes_cut);
        assert!(small.text.starts_with("## Notes\n"));
        assert!(small.text.contains("fact number 5"), "{}", small.text);
        assert!(!small.text.contains("fact number 0"));
        assert!(
            !small.text.contains("## Recent"),
            "events never crowd out notes"
        );
    }

    #[test]
    fn expired_notes_are_not_shown() {
        let mut state = replay(&[], &[], 64);
        state.add_note("old".into(), t0(), Some(t0() + TimeDelta::minutes(1)));
        state.add_note("current".into(), t0(), None);
        let window = build(
            &state.view(),
            &ContextRequest::new(500, Encoding::Cl100kBase),
            t0() + TimeDelta::hours(1),
        );
        assert_eq!(window.text, "## Notes\n- current\n");
    }

    #[test]
    fn a_deleted_notes_audit_record_is_forgotten_too() {
        let state = replay(&[(0, 0, 1, 1, 0)], &[(9, 2), (1, 0)], 64);
        let window = build(
            &state.view(),
            &ContextRequest::new(500, Encoding::Cl100kBase),
            t0(),
        );
        assert!(!window.text.contains("remember 0"), "{}", window.text);
        assert!(window.text.contains("- remember 1"), "{}", window.text);
        let reasons: Vec<Reason> = window.items.iter().map(|item| item.reason).collect();
        assert_eq!(reasons, [Reason::Newest, Reason::Forgotten, Reason::Pinned]);
    }

    #[test]
    fn old_errors_outrank_recent_chatter() {
        let mut events = vec![(3usize, 2usize, 3usize, 1i64, 0usize)];
        events.extend((0..400).map(|i| (i % 2 * 9, 1, 1, 1, 0)));
        let state = replay(&events, &[], 4_096);
        let window = build(
            &state.view(),
            &ContextRequest::new(300, Encoding::Cl100kBase),
            t0(),
        );
        assert!(
            window.text.contains("[error] ERROR: Traceback"),
            "{}",
            window.text
        );
        assert!(
            window
                .items
                .iter()
                .any(|item| item.seq == 1 && item.included)
        );
    }

    #[test]
    fn filters_leave_records_out_and_count_them() {
        let state = replay(
            &[(0, 0, 1, 1, 0), (1, 0, 3, 1, 0), (9, 1, 0, 1, 0)],
            &[],
            64,
        );
        let mut request = ContextRequest::new(1_000, Encoding::Cl100kBase);
        request.filter.min_severity = Some(Severity::Error);
        let window = build(&state.view(), &request, t0());
        assert_eq!(window.totals.shown_records, 1);
        assert!(
            window.text.starts_with("## Earlier (2 events"),
            "{}",
            window.text
        );
        assert_eq!(window.items.len(), 1, "filtered records do not compete");
    }

    /// Filters and raised weights apply before the cut: a task far back in memory is found at
    /// a small budget.
    #[test]
    fn filters_and_raised_weights_reach_back_through_memory() {
        let stream = |steps: i64| {
            let mut state = StreamState::new(CollapsePolicy::default(), TailCapacity::default());
            let plan = Event::new("plan", Severity::Info, "try the smaller query first").unwrap();
            state.append(plan, t0());
            for i in 0..steps {
                let step = Event::new("llm", Severity::Info, format!("step {i}: thinking"));
                state.append(step.unwrap(), t0() + TimeDelta::seconds(i));
            }
            state
        };
        let state = stream(3_000);
        let request = |budget, spec: &str| {
            let mut request = ContextRequest::new(budget, Encoding::Cl100kBase);
            request.weights.apply_overrides(spec).unwrap();
            request
        };
        let plain = build(&state.view(), &request(300, ""), t0());
        assert!(!plain.text.contains("[plan]:"), "{}", plain.text);
        let mut by_kind = request(300, "");
        by_kind.filter.kinds = Some([Kind::new("plan").unwrap()].into());
        let window = build(&state.view(), &by_kind, t0());
        assert!(
            window.text.contains("[plan]: try the smaller"),
            "{}",
            window.text
        );
        // Raised weights cannot undo decay, but they bring a record beyond the usual walk back
        // into the running: 200 records back, a weight of 50 still outranks fresh chatter.
        let state = stream(200);
        let plain = build(&state.view(), &request(300, ""), t0());
        assert!(!plain.text.contains("[plan]:"), "{}", plain.text);
        let window = build(&state.view(), &request(300, "kind.plan=50"), t0());
        assert!(
            window.text.contains("[plan]: try the smaller"),
            "{}",
            window.text
        );
    }

    #[test]
    fn long_records_are_clipped_or_shown_as_headlines() {
        let state = replay(&[(5, 0, 1, 1, 599), (3, 0, 3, 1, 0)], &[], 64);
        let request = ContextRequest::new(400, Encoding::Cl100kBase);
        let window = build(&state.view(), &request, t0());
        let item = &window.items[0];
        assert!(item.included);
        assert!(item.tokens <= request.line_cap());
        if item.level == Level::Whole {
            assert!(window.text.contains("more chars clipped]"));
        }
    }

    #[test]
    fn a_quoted_dump_is_not_paid_twice() {
        let dump: String = (0..40)
            .map(|i| format!("  variable_{i} = {}\n", i * 37))
            .collect();
        let mut state = StreamState::new(CollapsePolicy::default(), TailCapacity::default());
        let failed = Event::new(
            "tool",
            Severity::Error,
            format!("Postcondition failed:\n{dump}"),
        )
        .unwrap();
        let report = Event::new(
            "error",
            Severity::Error,
            format!("Bug report: checkout total is wrong\n{dump}"),
        )
        .unwrap();
        state.append(failed, t0());
        state.append(report, t0() + TimeDelta::seconds(1));
        state.append(
            Event::new("tool", Severity::Info, "ok").unwrap(),
            t0() + TimeDelta::seconds(2),
        );
        let window = build(
            &state.view(),
            &ContextRequest::new(4_000, Encoding::Cl100kBase),
            t0(),
        );
        assert_eq!(
            window.text.matches("variable_17 = 629").count(),
            1,
            "{}",
            window.text
        );
        let duplicate = window
            .items
            .iter()
            .find(|item| item.reason == Reason::Duplicate);
        assert!(
            duplicate.is_some_and(|item| item.level == Level::Headline && item.same_as.is_some()),
            "{:?}",
            window.items
        );
    }

    /// A repeat can land in a record far older than the walk back from the newest: that record
    /// holds the latest event, so it is the one shown whole.
    #[test]
    fn the_record_holding_the_latest_event_is_the_newest() {
        let mut state = StreamState::new(CollapsePolicy::default(), TailCapacity::default());
        let flask = || Event::new("status", Severity::Info, "flask app.py did not start").unwrap();
        state.append(flask(), t0());
        for i in 0..120 {
            let step = Event::new("llm", Severity::Info, format!("step {i}: thinking")).unwrap();
            state.append(step, t0() + TimeDelta::seconds(i));
        }
        state.append(flask(), t0() + TimeDelta::minutes(3));
        let window = build(
            &state.view(),
            &ContextRequest::new(300, Encoding::Cl100kBase),
            t0(),
        );
        let item = window.items.iter().find(|item| item.seq == 1).unwrap();
        assert_eq!((item.level, item.reason), (Level::Whole, Reason::Newest));
        assert!(
            window
                .text
                .ends_with("[status]: flask app.py did not start x2\n"),
            "{}",
            window.text
        );
    }

    /// With fewer goal records than the stream keeps, the latest one is still a goal.
    #[test]
    fn the_latest_goal_is_kept_beside_the_first() {
        let mut state = StreamState::new(CollapsePolicy::default(), TailCapacity::default());
        let at = |i: i64| t0() + TimeDelta::seconds(i);
        state.append(
            Event::new("task", Severity::Info, "TASK-1: build the report").unwrap(),
            at(0),
        );
        for i in 1..200 {
            let step = Event::new("llm", Severity::Info, format!("step {i}: thinking")).unwrap();
            state.append(step, at(i));
        }
        let change = Event::new("user", Severity::Info, "TASK-2: export it as CSV instead");
        state.append(change.unwrap(), at(200));
        for i in 201..1_200 {
            let step = Event::new("llm", Severity::Info, format!("step {i}: thinking")).unwrap();
            state.append(step, at(i));
        }
        for budget in [300, 2_048] {
            let window = build(
                &state.view(),
                &ContextRequest::new(budget, Encoding::Cl100kBase),
                at(1_200),
            );
            assert!(window.text.contains("TASK-1"), "{budget}: {}", window.text);
            assert!(window.text.contains("TASK-2"), "{budget}: {}", window.text);
        }
    }

    /// A cap too small for a line's head does not turn clipping off: the record is folded.
    #[test]
    fn a_cap_below_the_head_folds_long_records() {
        let state = replay(&[(4, 0, 1, 1, 599), (9, 0, 1, 1, 0)], &[], 64);
        let mut request = ContextRequest::new(3_000, Encoding::Cl100kBase);
        request.line_cap = Some(1);
        let window = build(&state.view(), &request, t0());
        assert!(window.tokens <= 3_000);
        assert!(!window.text.contains("Rate limit"), "{}", window.text);
        assert_eq!(window.items[0].level, Level::Folded);
    }

    /// Records posted together share a time; they still age by seq, so an older error is not
    /// crowded out by a batch of routine lines.
    #[test]
    fn a_batch_of_routine_lines_does_not_outrank_an_older_error() {
        let mut state = StreamState::new(CollapsePolicy::default(), TailCapacity::default());
        let error = Event::new("tool", Severity::Error, "deploy failed: permission denied");
        state.append(error.unwrap(), t0());
        for i in 0..300 {
            let line = Event::new("tool", Severity::Info, format!("line {i}: ok")).unwrap();
            state.append(line, t0() + TimeDelta::seconds(1));
        }
        let window = build(
            &state.view(),
            &ContextRequest::new(2_000, Encoding::Cl100kBase),
            t0(),
        );
        assert!(window.text.contains("deploy failed"), "{}", window.text);
    }
}
