//! Building a context window: notes, the Earlier summary and the recent records that fit.
//!
//! Pure: [`build`] takes a [`StreamView`] (what the stream holds), a [`ContextRequest`] and
//! `now`, and returns a [`ContextWindow`]; it never reads the clock, the disk or the network.
//! Token counts come from per-record caches ([`CachedRecord`]), so a warm build adds up numbers
//! instead of re-tokenizing history; only the short Earlier summary is counted afresh.
//!
//! The invariants of the design (section 3) hold for every input:
//! 1. the text counted with the named encoding is at most the budget, and `tokens` is that count;
//! 2. the same view, request and `now` give the same bytes;
//! 3. notes come first and are never crowded out by events (the newest notes that fit are kept);
//! 4. every record not shown is counted in the Earlier line and listed in the receipt;
//! 5. ranking prefers severity and important kinds, decays with age, keeps the newest few;
//! 6. a budget too small for any header gives an empty text and 0 tokens, not an error.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

use crate::event::{Kind, Note, Record, Severity, Timestamp};
use crate::rank::{self, Candidate, Reason, Weights};
use crate::render::{self, ClippedLine, EarlierSummary};
use crate::tokens::{Encoding, TokenCounts};

/// Budget used when a request names none.
pub const DEFAULT_BUDGET_TOKENS: u32 = 2_000;
/// Largest budget accepted: far above any model's context, small enough to bound the work.
pub const MAX_BUDGET_TOKENS: u32 = 1_000_000;
/// The default per-line cap is the budget divided by this: no record may take more than an
/// eighth of the window.
pub const DEFAULT_LINE_CAP_DIVISOR: u32 = 8;
/// The default per-line cap never goes below this, so tiny budgets still show a useful prefix.
pub const MIN_LINE_CAP_TOKENS: u32 = 32;
/// The newest `budget / TOKENS_PER_CANDIDATE` records compete for the window (a record line is
/// rarely under 8 tokens, so at most half of these can fit): enough to fill any budget, few
/// enough that a build does not walk a long history.
pub const TOKENS_PER_CANDIDATE: u32 = 4;
/// At least this many of the newest records compete, however small the budget.
pub const MIN_CANDIDATES: usize = 64;
/// Clipped lines kept per record: one per (encoding, cap) a client actually uses.
const CLIPS_PER_RECORD: usize = 4;

/// A clipped line cached for one (encoding, cap); `None` when the full line fits the cap.
type Clip = (Encoding, u32, Option<Arc<ClippedLine>>);

/// A record with its rendered line and token counts, computed once and shared by every build.
/// A change to the record (a repeat) makes a new `CachedRecord`.
#[derive(Debug)]
pub struct CachedRecord {
    record: Record,
    line: OnceLock<String>,
    tokens: TokenCounts,
    clips: Mutex<Vec<Clip>>,
}

impl CachedRecord {
    /// Wraps a record; nothing is rendered or counted until asked.
    pub fn new(record: Record) -> CachedRecord {
        CachedRecord {
            record,
            line: OnceLock::new(),
            tokens: TokenCounts::new(),
            clips: Mutex::new(Vec::new()),
        }
    }

    /// The record.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The record's full line.
    pub fn line(&self) -> &str {
        self.line.get_or_init(|| render::record_line(&self.record))
    }

    /// The full line's token count under `encoding`.
    pub fn tokens(&self, encoding: Encoding) -> u32 {
        self.tokens
            .get_or_count(encoding, || self.line().to_owned())
    }

    /// The line cut to at most `cap` tokens (for records whose full line is longer).
    fn clipped(&self, encoding: Encoding, cap: u32) -> Option<Arc<ClippedLine>> {
        let mut clips = self
            .clips
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, _, clip)) = clips.iter().find(|(e, c, _)| *e == encoding && *c == cap) {
            return clip.clone();
        }
        let clip = render::clip_record(&self.record, encoding, cap).map(Arc::new);
        if clips.len() == CLIPS_PER_RECORD {
            clips.remove(0);
        }
        clips.push((encoding, cap, clip.clone()));
        clip
    }
}

/// A note with its rendered piece and token counts.
#[derive(Debug)]
pub struct CachedNote {
    note: Note,
    piece: String,
    tokens: TokenCounts,
}

impl CachedNote {
    /// Wraps a note.
    pub fn new(note: Note) -> CachedNote {
        let piece = render::note_piece(&note.text);
        CachedNote {
            note,
            piece,
            tokens: TokenCounts::new(),
        }
    }

    /// The note.
    pub fn note(&self) -> &Note {
        &self.note
    }

    fn tokens(&self, encoding: Encoding) -> u32 {
        self.tokens.get_or_count(encoding, || self.piece.clone())
    }
}

/// Running totals of everything a stream ever accepted, including records that retention has
/// since removed: what the Earlier line counts from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Records created.
    pub records: u64,
    /// Events accepted (records plus repeats).
    pub events: u64,
    /// Events per kind.
    pub kinds: BTreeMap<Kind, u64>,
    /// Events per severity, indexed by [`Severity::index`].
    pub severities: [u64; 5],
    /// Time of the first event.
    pub first_ts: Option<Timestamp>,
    /// Time of the latest event.
    pub last_ts: Option<Timestamp>,
}

impl Totals {
    /// Counts one accepted event; `new_record` when it started a record.
    pub fn count(&mut self, kind: &Kind, severity: Severity, ts: Timestamp, new_record: bool) {
        self.records += u64::from(new_record);
        self.events += 1;
        match self.kinds.get_mut(kind) {
            Some(count) => *count += 1,
            None => {
                self.kinds.insert(kind.clone(), 1);
            }
        }
        self.severities[severity.index()] += 1;
        self.first_ts = Some(self.first_ts.map_or(ts, |first| first.min(ts)));
        self.last_ts = Some(self.last_ts.map_or(ts, |last| last.max(ts)));
    }

    /// Counts a run of `events` events (≥ 1) of one record brought in whole, as an import does:
    /// one new record spanning `first_ts` to `last_ts`.
    pub fn count_run(
        &mut self,
        kind: &Kind,
        severity: Severity,
        first_ts: Timestamp,
        last_ts: Timestamp,
        events: u64,
    ) {
        self.records += 1;
        self.events += events;
        *self.kinds.entry(kind.clone()).or_insert(0) += events;
        self.severities[severity.index()] += events;
        let (low, high) = (first_ts.min(last_ts), first_ts.max(last_ts));
        self.first_ts = Some(self.first_ts.map_or(low, |first| first.min(low)));
        self.last_ts = Some(self.last_ts.map_or(high, |last| last.max(high)));
    }

    /// Severities as a name → count map, for the wire.
    pub fn severity_counts(&self) -> BTreeMap<&'static str, u64> {
        Severity::ALL
            .iter()
            .filter(|severity| self.severities[severity.index()] > 0)
            .map(|severity| (severity.as_str(), self.severities[severity.index()]))
            .collect()
    }
}

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
    /// Totals over everything the stream accepted.
    pub totals: &'a Totals,
    /// The latest `last_ts` among records older than `records`, if there are any.
    pub older_last_ts: Option<Timestamp>,
}

/// Which records may be shown at all.
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
    fn admits(&self, record: &Record) -> bool {
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
}

impl ContextRequest {
    /// A request with default weights, no filters and the default line cap.
    pub fn new(budget: u32, encoding: Encoding) -> ContextRequest {
        ContextRequest {
            budget,
            encoding,
            weights: Weights::default(),
            filter: Filter::default(),
            line_cap: None,
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
    /// What its line costs (clipped if `clipped`).
    pub tokens: u32,
    /// Its score.
    pub score: f64,
    /// Whether it is shown.
    pub included: bool,
    /// Why it is in or out.
    pub reason: Reason,
    /// Whether its line was clipped to the per-line cap.
    pub clipped: bool,
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

/// A rendered context window with its receipt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContextWindow {
    /// The prompt-ready text.
    pub text: String,
    /// Its token count under `encoding`; never above `budget`.
    pub tokens: u32,
    /// The budget asked for.
    pub budget: u32,
    /// The encoding counted with.
    pub encoding: Encoding,
    /// Whether some live notes did not fit.
    pub notes_cut: bool,
    /// The per-line cap applied.
    pub line_cap: u32,
    /// Per candidate record, oldest first: cost, score, and in or out with the reason.
    pub items: Vec<ReceiptItem>,
    /// Totals that account for every record.
    pub totals: ReceiptTotals,
}

/// Token costs of the fixed headers, per encoding, counted once per process.
fn header_tokens(encoding: Encoding, header: &'static str) -> u32 {
    static COUNTS: OnceLock<[[u32; 2]; 2]> = OnceLock::new();
    let counts = COUNTS.get_or_init(|| {
        Encoding::ALL.map(|encoding| {
            [
                encoding.count(render::NOTES_HEADER),
                encoding.count(render::RECENT_HEADER),
            ]
        })
    });
    let which = usize::from(header == render::RECENT_HEADER);
    counts[encoding.index()][which]
}

struct Contender<'a> {
    record: &'a Arc<CachedRecord>,
    candidate: Candidate,
    clip: Option<Arc<ClippedLine>>,
    admitted: bool,
}

impl Contender<'_> {
    fn line(&self) -> &str {
        match &self.clip {
            Some(clip) => &clip.text,
            None => self.record.line(),
        }
    }
}

/// Builds the context window for `request` over `view` at `now`.
pub fn build(view: &StreamView<'_>, request: &ContextRequest, now: Timestamp) -> ContextWindow {
    let encoding = request.encoding;
    let budget = request.budget;
    let mut remaining = budget;

    let (notes, notes_cut) = select_notes(view.notes, encoding, now, &mut remaining);
    let contenders = contenders(view, request);

    let recent_header = header_tokens(encoding, render::RECENT_HEADER);
    let everything_listed = contenders.len() as u64 == view.totals.records;
    let admitted: Vec<Candidate> = contenders
        .iter()
        .filter(|c| c.admitted)
        .map(|c| c.candidate)
        .collect();
    let admitted_cost: u64 = admitted.iter().map(|c| u64::from(c.tokens)).sum();

    // Everything fits: no ranking, no Earlier section.
    let fits_whole = everything_listed
        && admitted.len() == contenders.len()
        && admitted_cost + u64::from(recent_header) <= u64::from(remaining);
    let (reasons, earlier) = if fits_whole || view.totals.records == 0 {
        (vec![Reason::Ranked; admitted.len()], None)
    } else {
        choose_with_earlier(
            view,
            request,
            &contenders,
            &admitted,
            remaining,
            recent_header,
        )
    };

    // Spread the admitted reasons back over all contenders.
    let mut admitted_reasons = reasons.into_iter();
    let final_reasons: Vec<Reason> = contenders
        .iter()
        .map(|c| {
            if c.admitted {
                admitted_reasons.next().unwrap_or(Reason::Budget)
            } else {
                Reason::Filtered
            }
        })
        .collect();

    assemble(
        view,
        request,
        &notes,
        notes_cut,
        &contenders,
        &final_reasons,
        earlier,
        recent_header,
    )
}

/// The newest live notes that fit, oldest first, and how many live notes were cut.
fn select_notes<'a>(
    notes: &'a [Arc<CachedNote>],
    encoding: Encoding,
    now: Timestamp,
    remaining: &mut u32,
) -> (Vec<&'a Arc<CachedNote>>, u64) {
    let live: Vec<&Arc<CachedNote>> = notes.iter().filter(|n| n.note.is_live(now)).collect();
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

/// The records that compete: the newest `budget / TOKENS_PER_CANDIDATE` (at least
/// [`MIN_CANDIDATES`]) and every severe record older than those, oldest first.
fn contenders<'a>(view: &StreamView<'a>, request: &ContextRequest) -> Vec<Contender<'a>> {
    let records = view.records;
    let Some(newest) = records.last().map(|r| r.record()) else {
        return Vec::new();
    };
    let window = ((request.budget / TOKENS_PER_CANDIDATE) as usize).max(MIN_CANDIDATES);
    let start = records.len().saturating_sub(window);
    let window_first_seq = records.get(start).map_or(u64::MAX, |r| r.record().seq);
    let older_severe = view
        .severe
        .iter()
        .filter(|r| r.record().seq < window_first_seq);
    let cap = request.line_cap();
    let encoding = request.encoding;
    older_severe
        .chain(&records[start..])
        .map(|cached| {
            let record = cached.record();
            let admitted = request.filter.admits(record);
            let mut tokens = cached.tokens(encoding);
            let mut clip = None;
            if admitted && tokens > cap {
                clip = cached.clipped(encoding, cap);
                if let Some(clip) = &clip {
                    tokens = clip.tokens;
                }
            }
            // A record still repeating is as fresh as the newest one.
            let age = if record.last_ts >= newest.first_ts {
                0
            } else {
                newest.seq.saturating_sub(record.seq)
            };
            let score = request
                .weights
                .score(record.kind.as_str(), record.severity, age);
            Contender {
                record: cached,
                candidate: Candidate {
                    seq: record.seq,
                    tokens,
                    score,
                },
                clip,
                admitted,
            }
        })
        .collect()
}

/// Selects admitted candidates leaving room for the Earlier section, whose size depends on what
/// is left out: reserve, select, render, and reserve more if the guess was short.
fn choose_with_earlier(
    view: &StreamView<'_>,
    request: &ContextRequest,
    contenders: &[Contender<'_>],
    admitted: &[Candidate],
    remaining: u32,
    recent_header: u32,
) -> (Vec<Reason>, Option<(String, u32)>) {
    let encoding = request.encoding;
    let newest_kept = request.weights.newest_kept;
    let nothing_shown = vec![Reason::Budget; admitted.len()];
    let earlier_for = |reasons: &[Reason]| {
        let text = render::earlier_piece(&earlier_summary(view, contenders, reasons));
        let tokens = encoding.count(&text);
        (text, tokens)
    };
    // With nothing shown the summary names every kind and severity: a good first reservation.
    let all_elided = earlier_for(&nothing_shown);
    let alone = |all_elided: (String, u32)| {
        let earlier = (all_elided.1 <= remaining).then_some(all_elided);
        (nothing_shown.clone(), earlier)
    };
    let mut reserve = all_elided.1;
    let mut reasons = nothing_shown.clone();
    for _ in 0..4 {
        let Some(available) = remaining.checked_sub(recent_header + reserve) else {
            return alone(all_elided);
        };
        reasons = rank::select(admitted, available, newest_kept).reasons;
        if !reasons.iter().any(|r| r.included()) {
            return alone(all_elided);
        }
        let earlier = earlier_for(&reasons);
        if earlier.1 <= reserve {
            return (reasons, Some(earlier));
        }
        reserve = earlier.1;
    }
    // Rare: the summary outgrew every reservation (another kind entered its top list). Shed the
    // lowest-scored records until everything fits.
    while let Some(worst) = lowest_included(admitted, &reasons) {
        let earlier = earlier_for(&reasons);
        if recent_header + earlier.1 + used(admitted, &reasons) <= remaining {
            return (reasons, Some(earlier));
        }
        reasons[worst] = Reason::Budget;
    }
    alone(all_elided)
}

fn used(candidates: &[Candidate], reasons: &[Reason]) -> u32 {
    candidates
        .iter()
        .zip(reasons)
        .filter(|(_, reason)| reason.included())
        .map(|(candidate, _)| candidate.tokens)
        .sum()
}

fn lowest_included(candidates: &[Candidate], reasons: &[Reason]) -> Option<usize> {
    candidates
        .iter()
        .zip(reasons)
        .enumerate()
        .filter(|(_, (_, reason))| reason.included())
        .min_by(|(_, (a, _)), (_, (b, _))| a.score.total_cmp(&b.score).then(a.seq.cmp(&b.seq)))
        .map(|(index, _)| index)
}

/// What the Earlier line says, given which admitted contenders are shown: the stream's totals
/// minus the shown records.
fn earlier_summary(
    view: &StreamView<'_>,
    contenders: &[Contender<'_>],
    admitted_reasons: &[Reason],
) -> EarlierSummary {
    let totals = view.totals;
    let mut kinds = totals.kinds.clone();
    let mut severities = totals.severities;
    let mut events = totals.events;
    let mut records = totals.records;
    let mut first_elided: Option<Timestamp> = None;
    let mut last_elided: Option<Timestamp> = view.older_last_ts;
    let mut admitted_reasons = admitted_reasons.iter();
    let mut shown_any = false;
    for contender in contenders {
        let shown = contender.admitted && admitted_reasons.next().is_some_and(|r| r.included());
        let record = contender.record.record();
        if shown {
            shown_any = true;
            records -= 1;
            events -= record.repeat_count;
            severities[record.severity.index()] -= record.repeat_count;
            if let Some(count) = kinds.get_mut(&record.kind) {
                *count -= record.repeat_count;
            }
        } else {
            first_elided = Some(first_elided.map_or(record.first_ts, |t| t.min(record.first_ts)));
            last_elided = Some(last_elided.map_or(record.last_ts, |t| t.max(record.last_ts)));
        }
    }
    // Records older than the contenders are not shown; the oldest of them is the stream's first.
    let unlisted = totals.records - contenders.len() as u64;
    if unlisted > 0 || !shown_any {
        first_elided = totals.first_ts.or(first_elided);
    }
    let mut kinds: Vec<(String, u64)> = kinds
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(kind, count)| (kind.as_str().to_owned(), count))
        .collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    EarlierSummary {
        events,
        first_ts: first_elided,
        last_ts: last_elided,
        kinds,
        severities,
        repeats: events - records,
    }
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    view: &StreamView<'_>,
    request: &ContextRequest,
    notes: &[&Arc<CachedNote>],
    notes_cut: u64,
    contenders: &[Contender<'_>],
    reasons: &[Reason],
    earlier: Option<(String, u32)>,
    recent_header: u32,
) -> ContextWindow {
    let encoding = request.encoding;
    let mut text = String::new();
    let mut tokens = 0;
    if !notes.is_empty() {
        text.push_str(render::NOTES_HEADER);
        tokens += header_tokens(encoding, render::NOTES_HEADER);
        for note in notes {
            text.push_str(&note.piece);
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
    if reasons.iter().any(|r| r.included()) {
        text.push_str(render::RECENT_HEADER);
        tokens += recent_header;
    }
    let mut items = Vec::with_capacity(contenders.len());
    for (contender, &reason) in contenders.iter().zip(reasons) {
        let record = contender.record.record();
        if reason.included() {
            text.push_str(contender.line());
            tokens += contender.candidate.tokens;
            totals.shown_records += 1;
            totals.shown_events += record.repeat_count;
        }
        items.push(ReceiptItem {
            seq: record.seq,
            tokens: contender.candidate.tokens,
            score: contender.candidate.score,
            included: reason.included(),
            reason,
            clipped: contender.clip.is_some(),
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
