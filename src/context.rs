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
/// Candidates are the newest records whose lines add up to this many budgets: enough choice for
/// ranking, few enough that a build does not walk a long history.
pub const CANDIDATE_COST_FACTOR: u64 = 4;
/// At most `budget / TOKENS_PER_CANDIDATE` of the newest records compete (a record line is rarely
/// under 8 tokens, so at most half of these could fit), which bounds the walk for tiny records.
pub const TOKENS_PER_CANDIDATE: u32 = 4;
/// At least this many of the newest records compete, however small the budget.
pub const MIN_CANDIDATES: usize = 64;
/// Payload key of a note's audit record that names the note.
pub const NOTE_ID_KEY: &str = "note_id";
/// Clipped lines kept per record: one per (encoding, cap) a client actually uses.
const CLIPS_PER_RECORD: usize = 4;

/// A clipped line memoized for one (encoding, cap); `None` when even the line's head is over.
type Clip = (Encoding, u32, Option<Arc<ClippedLine>>);

/// A record with its rendered line and token counts, computed once and shared by every build.
/// A change to the record (a repeat) makes a new `CachedRecord`.
#[derive(Debug)]
pub struct CachedRecord {
    record: Record,
    line: OnceLock<String>,
    tokens: TokenCounts,
    clips: Mutex<Vec<Clip>>,
    /// Per encoding, where the message's tokens end; kept once a clip needed them, so that a
    /// client asking for a new `line_cap` does not make every long record tokenize again.
    token_ends: [OnceLock<Box<[u32]>>; 2],
}

impl CachedRecord {
    /// Wraps a record; nothing is rendered or counted until asked.
    pub fn new(record: Record) -> CachedRecord {
        CachedRecord {
            record,
            line: OnceLock::new(),
            tokens: TokenCounts::new(),
            clips: Mutex::new(Vec::new()),
            token_ends: [OnceLock::new(), OnceLock::new()],
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

    /// The clip for (`encoding`, `cap`) if it was made already (`Some(None)`: even the line's
    /// head is over the cap).
    fn clip_if_made(&self, encoding: Encoding, cap: u32) -> Option<Option<Arc<ClippedLine>>> {
        let clips = self
            .clips
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (_, _, clip) = clips.iter().find(|(e, c, _)| *e == encoding && *c == cap)?;
        Some(clip.clone())
    }

    /// Its tokens in a build, and its clip when it is admitted and over the cap; with `cold`
    /// [`Cold::Stop`], `None` instead of tokenizing.
    fn cost(
        &self,
        encoding: Encoding,
        cap: u32,
        admitted: bool,
        cold: Cold,
    ) -> Option<(u32, Option<Arc<ClippedLine>>)> {
        let tokens = match cold {
            Cold::Tokenize => self.tokens(encoding),
            Cold::Stop => self.tokens.cached(encoding)?,
        };
        if !admitted || tokens <= cap {
            return Some((tokens, None));
        }
        let clip = match cold {
            Cold::Tokenize => self.clipped(encoding, cap),
            Cold::Stop => self.clip_if_made(encoding, cap)?,
        };
        Some((clip.as_ref().map_or(tokens, |clip| clip.tokens), clip))
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
        let ends = self.token_ends[encoding.index()]
            .get_or_init(|| encoding.token_ends(&self.record.message).into());
        let clip = render::clip_record_at(&self.record, encoding, cap, ends).map(Arc::new);
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
    /// The audit record of a note shown in the Notes section: shown there, not again here.
    pinned: bool,
}

impl Contender<'_> {
    fn line(&self) -> &str {
        match &self.clip {
            Some(clip) => &clip.text,
            None => self.record.line(),
        }
    }
}

/// What a build does with a record that is not counted (or clipped) yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cold {
    /// Tokenize it now.
    Tokenize,
    /// Give up: the caller prepares the records outside its lock (see [`build_if_ready`]).
    Stop,
}

/// The records a build of `request` may walk, cloned out of the stream's view, to be prepared
/// with [`prepare`] once the stream's lock is released.
pub fn unprepared(view: &StreamView<'_>, request: &ContextRequest) -> Unprepared {
    Unprepared {
        newest_first: view
            .records
            .iter()
            .rev()
            .take(max_window(request))
            .cloned()
            .collect(),
        severe: view.severe.to_vec(),
    }
}

/// The records a build may walk, newest first, and the older severe ones.
pub struct Unprepared {
    newest_first: Vec<Arc<CachedRecord>>,
    severe: Vec<Arc<CachedRecord>>,
}

/// Counts and clips what a build of `request` will walk, as it will walk it.
///
/// Every record is costed as if admitted (clipped when over the cap): a superset of what the
/// build needs, whatever its filter.
pub fn prepare(unprepared: &Unprepared, request: &ContextRequest) {
    let (encoding, cap) = (request.encoding, request.line_cap());
    let prepare = |cached: &CachedRecord| {
        cached
            .cost(encoding, cap, true, Cold::Tokenize)
            .map_or(0, |(tokens, _)| tokens)
    };
    let goal = u64::from(request.budget) * CANDIDATE_COST_FACTOR;
    let mut cost = 0u64;
    for (walked, cached) in unprepared.newest_first.iter().enumerate() {
        if walked >= MIN_CANDIDATES && cost >= goal {
            break;
        }
        cost += u64::from(prepare(cached));
    }
    for cached in &unprepared.severe {
        prepare(cached);
    }
}

/// The most records a build walks back from the newest.
fn max_window(request: &ContextRequest) -> usize {
    ((request.budget / TOKENS_PER_CANDIDATE) as usize).max(MIN_CANDIDATES)
}

/// Builds the context window for `request` over `view` at `now`, tokenizing what it needs.
pub fn build(view: &StreamView<'_>, request: &ContextRequest, now: Timestamp) -> ContextWindow {
    build_with(view, request, now, Cold::Tokenize).expect("a tokenizing build always completes")
}

/// [`build`], or `None` as soon as a record it walks is not counted or clipped yet.
///
/// A build reads the stream under its lock, and the store's notifier waits for that lock to make
/// a write to the stream visible (and with it every acknowledgement, on every stream). So the
/// store builds with this first, and when it gets `None` it takes the records the build may walk
/// ([`unprepared`]), counts and clips them outside the lock ([`prepare`]), and builds again:
/// tokenizing a cold history (long messages, the first build after a restart, a new encoding or
/// `line_cap`) then holds no lock.
pub fn build_if_ready(
    view: &StreamView<'_>,
    request: &ContextRequest,
    now: Timestamp,
) -> Option<ContextWindow> {
    build_with(view, request, now, Cold::Stop)
}

fn build_with(
    view: &StreamView<'_>,
    request: &ContextRequest,
    now: Timestamp,
    cold: Cold,
) -> Option<ContextWindow> {
    let encoding = request.encoding;
    let budget = request.budget;
    let mut remaining = budget;

    let (notes, notes_cut) = select_notes(view.notes, encoding, now, &mut remaining);
    let shown_notes: Vec<u64> = notes.iter().map(|note| note.note.id).collect();
    let contenders = contenders(view, request, &shown_notes, cold)?;

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
        && contenders.iter().all(|c| c.admitted || c.pinned)
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
            if c.pinned {
                Reason::Pinned
            } else if c.admitted {
                admitted_reasons.next().unwrap_or(Reason::Budget)
            } else {
                Reason::Filtered
            }
        })
        .collect();

    Some(assemble(
        view,
        request,
        &notes,
        notes_cut,
        &contenders,
        &final_reasons,
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

/// The records that compete, oldest first: the newest ones, back until their lines cost
/// [`CANDIDATE_COST_FACTOR`] budgets (at least [`MIN_CANDIDATES`], at most
/// `budget / TOKENS_PER_CANDIDATE` records), and every severe record older than those.
fn contenders<'a>(
    view: &StreamView<'a>,
    request: &ContextRequest,
    shown_notes: &[u64],
    cold: Cold,
) -> Option<Vec<Contender<'a>>> {
    let records = view.records;
    let Some(newest) = records.last().map(|r| r.record()) else {
        return Some(Vec::new());
    };
    let cap = request.line_cap();
    let encoding = request.encoding;
    // Streams use a handful of kinds: look each weight up once per build, not once per record.
    let mut kind_weights: Vec<(&str, f64)> = Vec::with_capacity(16);
    let mut contend = |cached: &'a Arc<CachedRecord>| {
        let record = cached.record();
        let pinned = note_id_of(record).is_some_and(|id| shown_notes.contains(&id));
        let admitted = !pinned && request.filter.admits(record);
        let (tokens, clip) = cached.cost(encoding, cap, admitted, cold)?;
        // A record still repeating is as fresh as the newest one.
        let age = if record.last_ts >= newest.first_ts {
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
        Some(Contender {
            record: cached,
            candidate: Candidate {
                seq: record.seq,
                tokens,
                score,
            },
            clip,
            admitted,
            pinned,
        })
    };

    // Walk back from the newest record until the candidates could fill the budget several times
    // over: enough choice for ranking, without walking a long history.
    let max_window = max_window(request);
    let cost_goal = u64::from(request.budget) * CANDIDATE_COST_FACTOR;
    let mut recent: Vec<Contender<'a>> = Vec::new();
    let mut cost = 0u64;
    for cached in records.iter().rev() {
        if recent.len() >= max_window || (recent.len() >= MIN_CANDIDATES && cost >= cost_goal) {
            break;
        }
        let contender = contend(cached)?;
        cost += u64::from(contender.candidate.tokens);
        recent.push(contender);
    }
    recent.reverse();
    let window_first_seq = recent.first().map_or(u64::MAX, |c| c.candidate.seq);
    let mut all: Vec<Contender<'a>> = view
        .severe
        .iter()
        .filter(|r| r.record().seq < window_first_seq)
        .map(&mut contend)
        .collect::<Option<_>>()?;
    all.append(&mut recent);
    Some(all)
}

/// The note a record is the audit copy of (the store logs every note as a `note` event with
/// `payload.note_id`).
fn note_id_of(record: &Record) -> Option<u64> {
    if record.kind.as_str() != "note" {
        return None;
    }
    record.payload.as_ref()?.get(NOTE_ID_KEY)?.as_u64()
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
        let tokens = encoding.count_fragments(&text);
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
        let shown = contender.pinned
            || (contender.admitted && admitted_reasons.next().is_some_and(|r| r.included()));
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
    if reasons.iter().any(|r| r.has_line()) {
        text.push_str(render::RECENT_HEADER);
        tokens += recent_header;
    }
    // Lines go in the order things last happened: a record still repeating sits at the bottom.
    let mut shown: Vec<&Contender<'_>> = contenders
        .iter()
        .zip(reasons)
        .filter(|(_, reason)| reason.has_line())
        .map(|(contender, _)| contender)
        .collect();
    shown.sort_by_key(|c| (c.record.record().last_ts, c.candidate.seq));
    for contender in shown {
        text.push_str(contender.line());
        tokens += contender.candidate.tokens;
        totals.shown_records += 1;
        totals.shown_events += contender.record.record().repeat_count;
    }
    for contender in contenders.iter().filter(|c| c.pinned) {
        totals.shown_records += 1;
        totals.shown_events += contender.record.record().repeat_count;
    }
    let mut items = Vec::with_capacity(contenders.len());
    for (contender, &reason) in contenders.iter().zip(reasons) {
        let record = contender.record.record();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collapse::CollapsePolicy;
    use crate::event::{Event, parse_timestamp};
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

    proptest! {
        /// Clipping from the kept token ends gives exactly what clipping from scratch gives,
        /// whatever caps a client cycles through.
        #[test]
        fn clips_from_kept_token_ends_equal_fresh_clips(
            message in 0usize..10,
            repeat in 1usize..60,
            caps in prop::collection::vec(8u32..400, 1..6),
        ) {
            let text = MESSAGES[message].repeat(repeat);
            let event = Event::new("tool", Severity::Info, text).unwrap();
            let record = Record::from_event(event, 1, 1, t0());
            let cached = CachedRecord::new(record.clone());
            for cap in caps {
                for encoding in Encoding::ALL {
                    let fresh = render::clip_record(&record, encoding, cap).map(Arc::new);
                    prop_assert_eq!(cached.clipped(encoding, cap), fresh);
                }
            }
        }
    }

    fn arb_stream() -> impl Strategy<Value = (Vec<GeneratedEvent>, Vec<GeneratedNote>)> {
        let event = (0usize..10, 0usize..6, 0usize..5, 0i64..120, 0usize..600);
        let note = (0usize..10, any::<bool>());
        (
            prop::collection::vec(event, 0..300),
            prop::collection::vec(note, 0..4),
        )
    }

    /// (message, kind, severity, seconds since the previous event, long-message repeat).
    type GeneratedEvent = (usize, usize, usize, i64, usize);
    /// (message, expires).
    type GeneratedNote = (usize, bool);

    const KINDS: [&str; 6] = ["tool", "llm", "error", "metric", "observation", "plan"];

    /// Replays a generated stream; long messages come from repeating a base message.
    fn replay(events: &[GeneratedEvent], notes: &[GeneratedNote], tail: usize) -> StreamState {
        let capacity = TailCapacity {
            records: tail,
            severe: 16,
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
        for &(message, expires) in notes {
            let expires_at = expires.then(|| at + TimeDelta::hours(1));
            state.add_note(format!("remember: {}", MESSAGES[message]), at, expires_at);
        }
        state
    }

    fn earlier_count(text: &str) -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix("## Earlier ("))
            .and_then(|rest| rest.split(' ').next())
            .map_or(0, |count| count.parse().unwrap())
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
        ) {
            let encoding = if o200k { Encoding::O200kBase } else { Encoding::Cl100kBase };
            let mut request = ContextRequest::new(budget, encoding);
            request.line_cap = line_cap;
            let now = t0() + TimeDelta::days(1);
            let prepared = replay(&events, &notes, 4_096);
            prepare(&unprepared(&prepared.view(), &request), &request);
            let ready = build_if_ready(&prepared.view(), &request, now);
            let cold = build(&replay(&events, &notes, 4_096).view(), &request, now);
            prop_assert_eq!(ready, Some(cold));
        }

        /// Invariants 1, 2 and 4 over random streams and budgets.
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
            prop_assert_eq!(totals.events, events.len() as u64);
            prop_assert_eq!(totals.shown_events + totals.elided_events, totals.events);
            let shown_lines = window.text.lines().filter(|l| l.as_bytes().first().is_some_and(u8::is_ascii_digit)).count() as u64;
            prop_assert_eq!(shown_lines, totals.shown_records, "every shown record has one line");
            if totals.elided_events > 0 && window.text.contains("## Earlier") {
                prop_assert_eq!(earlier_count(&window.text), totals.elided_events, "Earlier counts every event not shown");
            }
            if totals.shown_records > 0 && totals.elided_events > 0 {
                prop_assert!(window.text.contains("## Earlier"), "records are shown, so the Earlier line has room too");
            }
        }

        /// Invariant 5: the newest record is shown whenever it fits next to the headers and an
        /// Earlier line that says everything else was left out.
        #[test]
        fn newest_record_is_kept_when_it_fits(
            (events, _) in arb_stream(),
            budget in 0u32..4_000,
        ) {
            prop_assume!(!events.is_empty());
            let state = replay(&events, &[], 4_096);
            let request = ContextRequest::new(budget, Encoding::Cl100kBase);
            let window = build(&state.view(), &request, t0());
            let newest = state.records().last().unwrap().seq;
            let item = window.items.iter().find(|item| item.seq == newest).unwrap();
            let summary_all = EarlierSummary {
                events: state.totals().events,
                first_ts: state.totals().first_ts,
                last_ts: state.totals().last_ts,
                kinds: state.totals().kinds.iter().map(|(k, c)| (k.to_string(), *c)).collect(),
                severities: state.totals().severities,
                repeats: state.totals().events - state.totals().records,
            };
            let reserve = Encoding::Cl100kBase.count(&render::earlier_piece(&summary_all)) + 8;
            let header = header_tokens(Encoding::Cl100kBase, render::RECENT_HEADER);
            if item.tokens + header + reserve <= budget {
                prop_assert!(item.included, "newest ({} tokens) left out of a {budget} budget", item.tokens);
            }
        }
    }

    #[test]
    fn tiny_budgets_give_an_empty_window_not_an_error() {
        let state = replay(&[(0, 0, 1, 1, 0), (1, 0, 3, 1, 0)], &[(0, false)], 64);
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
        let reasons: Vec<Reason> = window.items.iter().map(|item| item.reason).collect();
        assert_eq!(reasons[0], Reason::Filtered);
        assert_eq!(reasons[2], Reason::Filtered);
    }

    #[test]
    fn long_messages_are_clipped_to_the_line_cap() {
        let state = replay(&[(5, 0, 1, 1, 599)], &[], 64);
        let request = ContextRequest::new(400, Encoding::Cl100kBase);
        let window = build(&state.view(), &request, t0());
        let item = &window.items[0];
        assert!(item.clipped && item.included);
        assert!(item.tokens <= request.line_cap());
        assert!(window.text.contains("more chars clipped]"));
    }
}
