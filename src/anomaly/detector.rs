//! The detectors: a small per-stream state that sees every event once and says which episodes
//! are open. Pure: no clock, no I/O; the same events give the same findings, whether the state
//! stayed in memory or was written to the stream's metadata and read back.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

use crate::collapse::{self, ANOMALY_KIND};
use crate::event::{Kind, Severity, Timestamp};
use crate::payload::Payload;

use super::settings::{AnomalySettings, RECURRENCE_SPAN_EVENTS};

/// Kinds whose events are the agent's actions: what repeats and oscillation look at.
pub const ACTION_KINDS: [&str; 2] = ["action", "tool"];
/// Actions remembered: enough to see a cycle of three twice.
const ACTION_HISTORY: usize = 6;
/// Periods oscillation looks for: A-B-A-B and A-B-C-A-B-C.
const PERIODS: [usize; 2] = [2, 3];
/// Distinct errors remembered at once (a storm often alternates a few variants).
const ERRORS_REMEMBERED: usize = 4;
/// Seqs an anomaly's payload names at most (the newest); `first_seq` names where it began.
pub const MAX_NAMED_SEQS: usize = 8;
/// Characters of an action or error quoted in a message.
const QUOTE_CHARS: usize = 60;
/// Bytes of a message that identify an action or an error: its head. Keeps observing an event
/// O(1) however long its message is (an agent's thought can be kilobytes); two actions alike in
/// their first 256 bytes, numbers masked, are the same action.
pub const COMPARED_BYTES: usize = 256;

/// Which detector found an episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// The same action back to back.
    Repeat,
    /// Actions alternating in a short cycle.
    Oscillation,
    /// The same error coming back after whatever happened in between.
    RecurringError,
    /// A long gap between consecutive events.
    Stall,
}

impl Detector {
    /// Every detector, in the order findings are made.
    pub const ALL: [Detector; 4] = [
        Detector::Repeat,
        Detector::Oscillation,
        Detector::RecurringError,
        Detector::Stall,
    ];

    /// The detector's name in payloads and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Repeat => "repeat",
            Detector::Oscillation => "oscillation",
            Detector::RecurringError => "recurring_error",
            Detector::Stall => "stall",
        }
    }
}

/// One event as the detectors see it: the record it landed in and when it happened.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The seq of the record the event landed in.
    pub seq: u64,
    /// When it happened.
    pub ts: Timestamp,
    /// Its kind.
    pub kind: &'a Kind,
    /// Its severity.
    pub severity: Severity,
    /// Its actor.
    pub actor: Option<&'a str>,
    /// Its message.
    pub message: &'a str,
}

/// What a detector says about the event just observed: its episode is open, and this is what
/// the anomaly record should now say. The record's text is written from it only when the record
/// is placed ([`Finding::message`], [`Finding::payload`]): a request places only the last
/// update of an episode it extends, so most findings of a long loop are never written out.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// Which detector.
    pub detector: Detector,
    /// `warning`, or `error` once the episode reached twice its threshold.
    pub severity: Severity,
    /// How far the episode has come (actions, cycles, recurrences, silences).
    pub count: u64,
    /// The threshold it passed.
    pub threshold: u64,
    /// Where the episode began.
    first_seq: u64,
    /// The newest seqs involved, as the episode named them at this finding.
    seqs: Vec<u64>,
    /// What the message quotes.
    said: Said,
}

/// What a finding's message quotes, kept as it was when the finding was made.
#[derive(Clone, Debug, PartialEq)]
enum Said {
    /// The action repeated.
    Repeat(Arc<str>),
    /// The cycle's actions, oldest first, and how many of the newest actions cycle.
    Oscillation { cycle: Vec<Arc<str>>, actions: u64 },
    /// The error that recurs.
    RecurringError(Arc<str>),
    /// The silence, and the seq of the event that ended it.
    Stall { gap: TimeDelta, seq: u64 },
}

/// Once an episode is at twice its threshold, its record is updated every this many counts
/// rather than at every event: a loop of thousands of events then costs the writes of a few
/// hundred, and the record's count is never more than this far behind.
pub const UPDATE_EVERY: u64 = 16;

impl Finding {
    /// The record's message, for a model to read.
    pub fn message(&self) -> String {
        let count = self.count;
        match &self.said {
            Said::Repeat(text) => {
                format!("the last {count} actions repeat `{text}`: likely a loop")
            }
            Said::Oscillation { cycle, actions } => match cycle.as_slice() {
                [a, b] => format!(
                    "the last {actions} actions alternate between `{a}` and `{b}`: likely going back and forth without progress"
                ),
                [a, b, c] => format!(
                    "the last {actions} actions cycle through `{a}`, `{b}` and `{c}`: likely a loop"
                ),
                _ => unreachable!("periods are 2 and 3"),
            },
            Said::RecurringError(text) => format!(
                "the error `{text}` came back {count} times, each within {RECURRENCE_SPAN_EVENTS} events of the last: retrying the same way is not helping"
            ),
            Said::Stall { gap, seq } => {
                let said = duration_text(*gap);
                if count == 1 {
                    format!(
                        "no events for {said} before seq {seq}: the agent may have stalled (waiting on something that never answered?)"
                    )
                } else {
                    format!(
                        "{count} long silences in a row, the latest {said} before seq {seq}: the agent keeps stalling"
                    )
                }
            }
        }
    }

    /// The record's payload: `{"detector", "count", "threshold", "first_seq", "seqs", ...}`.
    pub fn payload(&self) -> Payload {
        let extra = match &self.said {
            Said::Oscillation { cycle, .. } => Extra::Period(cycle.len()),
            Said::Stall { gap, .. } => Extra::GapSeconds(gap.num_seconds()),
            Said::Repeat(_) | Said::RecurringError(_) => Extra::Nothing,
        };
        Payload::from_fields(&FindingPayload::new(
            self.detector,
            self.count,
            self.threshold,
            self.first_seq,
            &self.seqs,
            extra,
        ))
    }

    /// Whether the record of an episode already raised takes this finding: every one until the
    /// episode is at twice its threshold, then every [`UPDATE_EVERY`]th.
    pub fn updates_record(&self) -> bool {
        let escalation = self.threshold.saturating_mul(2);
        self.count <= escalation || (self.count - escalation).is_multiple_of(UPDATE_EVERY)
    }
}

/// The anomaly record of an open episode, as the stream holds it: enough to write its next
/// version without reading it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeRecord {
    /// Its seq.
    pub seq: u64,
    /// When it was raised (µs since the epoch).
    pub first_ts: i64,
    /// Its latest update (µs).
    pub last_ts: i64,
    /// Its repeat count: 1 when raised, one more per update.
    pub repeat_count: u64,
    /// The revision that created it.
    pub created_revision: u64,
    /// Whether it has been raised to `error`.
    pub escalated: bool,
}

/// An open episode of one detector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Episode {
    detector: Detector,
    /// Where it began: the first seq involved.
    first_seq: u64,
    /// The newest seqs involved, at most [`MAX_NAMED_SEQS`], ascending.
    seqs: Vec<u64>,
    /// The event index (see [`DetectorState::events`]) of its latest finding.
    last_event: u64,
    /// Its record, once placed.
    #[serde(default)]
    record: Option<EpisodeRecord>,
}

impl Episode {
    /// Names `seq` among the seqs involved: distinct, ascending, the newest
    /// [`MAX_NAMED_SEQS`] (repeats land in older records, so seqs may come back).
    fn involve(&mut self, seq: u64) {
        match self.seqs.last() {
            Some(&last) if last == seq => return,
            // The common case, an episode going on: the newest seq yet, named last without a
            // search, and the oldest dropped by shifting in place.
            Some(&last) if last < seq && self.seqs.len() >= MAX_NAMED_SEQS => {
                self.seqs.copy_within(1.., 0);
                let newest = self.seqs.len() - 1;
                self.seqs[newest] = seq;
                return;
            }
            _ => {}
        }
        if let Err(at) = self.seqs.binary_search(&seq) {
            self.seqs.insert(at, seq);
            if self.seqs.len() > MAX_NAMED_SEQS {
                self.seqs.remove(0);
            }
        }
    }
}

/// An action remembered: its masked identity, the record it landed in, how it reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Action {
    key: u64,
    seq: u64,
    /// Shared by the actions of a run: one action repeated is quoted once.
    text: Arc<str>,
}

/// An error remembered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SeenError {
    key: u64,
    /// Occurrences, each within the recurrence span of the previous.
    count: u64,
    /// Event index of the latest occurrence.
    last_event: u64,
    /// Seq of the record of its first occurrence in this run.
    first_seq: u64,
    text: Arc<str>,
}

/// A stream's detector state: a few hundred bytes, kept in the stream's metadata row (so it
/// survives eviction and restarts exactly) and updated once per event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectorState {
    /// Events observed.
    #[serde(default)]
    events: u64,
    /// The newest actions, oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    actions: VecDeque<Action>,
    /// How many of the newest actions are the same action.
    #[serde(default)]
    run: u64,
    /// Per period of [`PERIODS`]: how many of the newest actions equal the one a period before.
    #[serde(default)]
    alternation: [u64; 2],
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    errors: Vec<SeenError>,
    /// The latest event's record seq and time (µs).
    #[serde(default)]
    previous: Option<(u64, i64)>,
    /// Gaps over the stall threshold in a row.
    #[serde(default)]
    silences: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    open: Vec<Episode>,
    /// The keys of the latest action and the latest error, and what they were computed from
    /// (not kept in the metadata: a restored state computes its first keys again).
    #[serde(skip)]
    keys: RecentKeys,
}

impl DetectorState {
    /// Observes one event under `settings`; returns what each detector with an open episode
    /// says now (at most one finding per detector). With detection off, the state is cleared,
    /// so that turning it on again starts afresh.
    pub fn observe(&mut self, settings: &AnomalySettings, event: Observed<'_>) -> Vec<Finding> {
        if !settings.enabled {
            if *self != DetectorState::default() {
                *self = DetectorState::default();
            }
            return Vec::new();
        }
        self.events += 1;
        let mut findings = Vec::new();
        if event.kind.as_str() == ANOMALY_KIND {
            // Anomalies (a client's own, or recap's) are not the agent's doing; only time passes.
            self.note_time(settings, event, &mut findings);
            return findings;
        }
        let error = event.severity >= Severity::Error || event.kind.as_str() == "error";
        if error {
            // A failed action is an error: the recurring-error detector speaks for it, rather
            // than two detectors raising the same loop.
            self.note_error(settings, event, &mut findings);
        } else if ACTION_KINDS.contains(&event.kind.as_str()) {
            self.note_action(settings, event, &mut findings);
        }
        self.note_time(settings, event, &mut findings);
        findings
    }

    /// The record of `detector`'s open episode, if it has one that was placed.
    pub fn record(&self, detector: Detector) -> Option<EpisodeRecord> {
        self.episode(detector).and_then(|episode| episode.record)
    }

    /// Remembers the record placed for `detector`'s open episode.
    pub fn set_record(&mut self, detector: Detector, record: EpisodeRecord) {
        if let Some(episode) = self.open.iter_mut().find(|e| e.detector == detector) {
            episode.record = Some(record);
        }
    }

    /// Whether an episode of `detector` is open.
    pub fn is_open(&self, detector: Detector) -> bool {
        self.episode(detector).is_some()
    }

    fn episode(&self, detector: Detector) -> Option<&Episode> {
        self.open.iter().find(|e| e.detector == detector)
    }

    fn close(&mut self, detector: Detector) {
        // Most events close nothing (there is at most one episode per detector): look first.
        if let Some(at) = self.open.iter().position(|e| e.detector == detector) {
            self.open.remove(at);
        }
    }

    /// The open episode of `detector`, opened at `first_seq` if there was none.
    fn open(&mut self, detector: Detector, first_seq: u64) -> &mut Episode {
        let position = match self.open.iter().position(|e| e.detector == detector) {
            Some(position) => position,
            None => {
                self.open.push(Episode {
                    detector,
                    first_seq,
                    seqs: Vec::new(),
                    last_event: self.events,
                    record: None,
                });
                self.open.len() - 1
            }
        };
        let episode = &mut self.open[position];
        episode.last_event = self.events;
        episode
    }

    fn note_action(
        &mut self,
        settings: &AnomalySettings,
        event: Observed<'_>,
        findings: &mut Vec<Finding>,
    ) {
        let key = self.keys.action.key(event.kind, event.actor, event.message);
        let same = self.actions.back().filter(|last| last.key == key);
        self.run = if same.is_some() { self.run + 1 } else { 1 };
        // The run's action as it was first quoted: a loop of thousands of events quotes once.
        let text = same.map_or_else(|| quote(event.message), |last| Arc::clone(&last.text));
        if self.actions.len() == ACTION_HISTORY {
            self.actions.pop_front();
        }
        self.actions.push_back(Action {
            key,
            seq: event.seq,
            text,
        });
        for (index, &period) in PERIODS.iter().enumerate() {
            let len = self.actions.len();
            let matches = len > period && self.actions[len - 1 - period].key == key;
            self.alternation[index] = if matches {
                self.alternation[index] + 1
            } else {
                0
            };
        }

        // Repeats: the newest `run` actions are one action.
        let threshold = settings.repeat_actions;
        if threshold > 0 && self.run >= threshold {
            let first_seq = self.first_action_seq(self.run);
            let episode = self.open(Detector::Repeat, first_seq.unwrap_or(event.seq));
            episode.involve(event.seq);
            if !self.holds_back(Detector::Repeat, self.run, threshold) {
                let text = Arc::clone(&self.actions[self.actions.len() - 1].text);
                findings.push(self.finding(
                    Detector::Repeat,
                    self.run,
                    threshold,
                    Said::Repeat(text),
                ));
            }
        } else {
            self.close(Detector::Repeat);
        }

        // Oscillation: the newest actions cycle with period 2 (or 3), through distinct actions.
        let threshold = settings.oscillation_cycles;
        let cycling = PERIODS.iter().enumerate().find_map(|(index, &period)| {
            let actions = self.alternation[index] + period as u64;
            let cycles = actions / period as u64;
            let len = self.actions.len();
            if threshold == 0 || cycles < threshold || len < period {
                return None;
            }
            // Distinct: one of the cycle's other actions (the newest is `key`) is another.
            // Checked last, by index: in a repeat, the counts pass and this fails.
            let distinct = (len - period..len - 1).any(|at| self.actions[at].key != key);
            distinct.then_some((period, actions, cycles))
        });
        match cycling {
            Some((period, actions, cycles)) => {
                let first_seq = self.first_action_seq(actions);
                let episode = self.open(Detector::Oscillation, first_seq.unwrap_or(event.seq));
                episode.involve(event.seq);
                if self.holds_back(Detector::Oscillation, cycles, threshold) {
                    return;
                }
                let len = self.actions.len();
                let cycle = self
                    .actions
                    .range(len - period..)
                    .map(|action| Arc::clone(&action.text))
                    .collect();
                let said = Said::Oscillation { cycle, actions };
                findings.push(self.finding(Detector::Oscillation, cycles, threshold, said));
            }
            None => self.close(Detector::Oscillation),
        }
    }

    /// The seq of the oldest of the newest `count` actions that is remembered.
    fn first_action_seq(&self, count: u64) -> Option<u64> {
        let len = self.actions.len();
        let take = usize::try_from(count).unwrap_or(usize::MAX).min(len);
        self.actions.get(len - take).map(|action| action.seq)
    }

    fn note_error(
        &mut self,
        settings: &AnomalySettings,
        event: Observed<'_>,
        findings: &mut Vec<Finding>,
    ) {
        let key = self.keys.error.key(event.kind, event.actor, event.message);
        let now = self.events;
        let recurring = |seen: &SeenError| now - seen.last_event <= RECURRENCE_SPAN_EVENTS;
        let (count, first_seq, text) = match self.errors.iter().position(|seen| seen.key == key) {
            Some(position) => {
                let mut seen = self.errors.remove(position);
                if recurring(&seen) {
                    seen.count += 1;
                } else {
                    seen.count = 1;
                    seen.first_seq = event.seq;
                }
                seen.last_event = now;
                seen.text = quote(event.message);
                let found = (seen.count, seen.first_seq, Arc::clone(&seen.text));
                self.errors.push(seen);
                found
            }
            None => {
                if self.errors.len() == ERRORS_REMEMBERED {
                    self.errors.remove(0);
                }
                let text = quote(event.message);
                self.errors.push(SeenError {
                    key,
                    count: 1,
                    last_event: now,
                    first_seq: event.seq,
                    text: Arc::clone(&text),
                });
                (1, event.seq, text)
            }
        };
        let threshold = settings.error_recurrences;
        // An episode lasts while recurring errors keep coming within the span.
        let stale = self
            .episode(Detector::RecurringError)
            .is_some_and(|episode| now - episode.last_event > RECURRENCE_SPAN_EVENTS);
        if stale {
            self.close(Detector::RecurringError);
        }
        if threshold == 0 {
            self.close(Detector::RecurringError);
            return;
        }
        if count < threshold {
            return;
        }
        let episode = self.open(Detector::RecurringError, first_seq);
        episode.involve(event.seq);
        if self.holds_back(Detector::RecurringError, count, threshold) {
            return;
        }
        let said = Said::RecurringError(text);
        findings.push(self.finding(Detector::RecurringError, count, threshold, said));
    }

    fn note_time(
        &mut self,
        settings: &AnomalySettings,
        event: Observed<'_>,
        findings: &mut Vec<Finding>,
    ) {
        let at = event.ts.timestamp_micros();
        let previous = self.previous;
        // Times may arrive out of order: a gap is measured from the latest time seen.
        self.previous = Some((event.seq, previous.map_or(at, |(_, before)| before.max(at))));
        let Some(threshold) = settings.stall() else {
            self.close(Detector::Stall);
            return;
        };
        let gap = previous.map(|(_, before)| at.saturating_sub(before));
        let over = gap.filter(|&gap| gap > threshold.num_microseconds().unwrap_or(i64::MAX));
        let (Some(gap), Some((before_seq, _))) = (over, previous) else {
            self.silences = 0;
            self.close(Detector::Stall);
            return;
        };
        self.silences += 1;
        let episode = self.open(Detector::Stall, before_seq);
        episode.involve(before_seq);
        episode.involve(event.seq);
        let gap = TimeDelta::microseconds(gap);
        let escalate = gap >= threshold * 2 || self.silences >= 2;
        let said = Said::Stall {
            gap,
            seq: event.seq,
        };
        let mut finding =
            self.finding(Detector::Stall, self.silences, settings.stall_seconds, said);
        if escalate {
            finding.severity = Severity::Error;
        }
        findings.push(finding);
    }

    /// Whether `detector`'s open episode, at `count` against `threshold`, says nothing this
    /// time: its record is placed and the update is one [`Finding::updates_record`] skips. Then
    /// no finding is made, so a long episode costs little per event.
    fn holds_back(&self, detector: Detector, count: u64, threshold: u64) -> bool {
        let placed = self.record(detector).is_some();
        let escalation = threshold.saturating_mul(2);
        placed && count > escalation && !(count - escalation).is_multiple_of(UPDATE_EVERY)
    }

    /// A finding for `detector`'s open episode, which has reached `count` against `threshold`.
    fn finding(&self, detector: Detector, count: u64, threshold: u64, said: Said) -> Finding {
        let episode = self
            .episode(detector)
            .expect("a finding is made for an open episode");
        let severity = if count >= threshold.saturating_mul(2) {
            Severity::Error
        } else {
            Severity::Warning
        };
        Finding {
            detector,
            severity,
            count,
            threshold,
            first_seq: episode.first_seq,
            seqs: episode.seqs.clone(),
            said,
        }
    }
}

/// What a detector adds to its findings' payload.
#[derive(Clone, Copy, Debug)]
enum Extra {
    Nothing,
    /// Oscillation: the cycle's length.
    Period(usize),
    /// Stall: the silence, in whole seconds.
    GapSeconds(i64),
}

/// A finding's payload. Its fields are in the order of their names, the order a
/// `serde_json::Map` writes its keys in, so the text is the one the records raised before
/// this struct carry (it is written once per update, and building a map for it cost more).
#[derive(Serialize)]
struct FindingPayload<'a> {
    count: u64,
    detector: &'static str,
    first_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    gap_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    period: Option<usize>,
    seqs: &'a [u64],
    threshold: u64,
}

impl FindingPayload<'_> {
    fn new(
        detector: Detector,
        count: u64,
        threshold: u64,
        first_seq: u64,
        seqs: &[u64],
        extra: Extra,
    ) -> FindingPayload<'_> {
        FindingPayload {
            count,
            detector: detector.as_str(),
            first_seq,
            gap_seconds: match extra {
                Extra::GapSeconds(seconds) => Some(seconds),
                _ => None,
            },
            period: match extra {
                Extra::Period(period) => Some(period),
                _ => None,
            },
            seqs,
            threshold,
        }
    }
}

/// [`masked_key`]s computed lately, one for actions and one for errors: a loop repeats the same
/// call with other numbers, and telling that it is the same call needs no masking
/// ([`collapse::same_template`]). A cache of a pure function, so it is not part of what a
/// state is: any two caches compare equal, and a state read back from the metadata starts
/// with an empty one and computes the same keys.
#[derive(Clone, Debug, Default)]
struct RecentKeys {
    action: KeyMemo,
    error: KeyMemo,
}

impl PartialEq for RecentKeys {
    fn eq(&self, _: &RecentKeys) -> bool {
        true
    }
}

impl Eq for RecentKeys {}

/// One [`masked_key`] and what it was computed from (the message's head, as compared).
#[derive(Clone, Debug, Default)]
struct KeyMemo {
    /// `None` until a key is computed.
    key: Option<u64>,
    kind: String,
    actor: Option<String>,
    head: String,
}

impl KeyMemo {
    /// [`masked_key`] of the event: the remembered key when the event is the remembered one's
    /// kind and actor and its head is [`collapse::same_template`] as the remembered head;
    /// otherwise computed, and remembered.
    fn key(&mut self, kind: &Kind, actor: Option<&str>, message: &str) -> u64 {
        let head = head(message, COMPARED_BYTES);
        if let Some(key) = self.key
            && self.kind == kind.as_str()
            && self.actor.as_deref() == actor
            && collapse::same_template(&self.head, head)
        {
            return key;
        }
        let key = masked_key(kind, actor, message);
        // Reuses the strings' room: a stream's actions are mostly alike in size.
        self.key = Some(key);
        self.kind.clear();
        self.kind.push_str(kind.as_str());
        match (actor, &mut self.actor) {
            (Some(actor), Some(kept)) => {
                kept.clear();
                kept.push_str(actor);
            }
            (actor, kept) => *kept = actor.map(str::to_owned),
        }
        self.head.clear();
        self.head.push_str(head);
        key
    }
}

/// The identity of an action or error for comparing: kind, actor and the message with numbers,
/// ids, durations and paths masked as template collapse masks them. A fixed hash (not the
/// collapser's keyed one), since it is kept in the stream's metadata across restarts.
fn masked_key(kind: &Kind, actor: Option<&str>, message: &str) -> u64 {
    thread_local! {
        /// The masked head of the message: one buffer per writer thread, not one per event.
        static MASKED: RefCell<String> = const { RefCell::new(String::new()) };
    }
    let mut hasher = rustc_hash::FxHasher::default();
    kind.as_str().hash(&mut hasher);
    actor.hash(&mut hasher);
    MASKED.with_borrow_mut(|masked| {
        masked.clear();
        collapse::template_into(head(message, COMPARED_BYTES), masked);
        masked.as_str().hash(&mut hasher);
    });
    hasher.finish()
}

/// How a message is quoted in an anomaly: its first line, at most [`QUOTE_CHARS`] characters,
/// without backticks (the quote's own delimiters).
fn quote(message: &str) -> Arc<str> {
    // Trimmed whole, and the first line found whole (a search for one byte), so that whether
    // anything follows the quote is known even when a run of spaces reaches past it; the
    // characters are walked only as far as the quote goes.
    let message = message.trim();
    let (line, more_lines) = match message.split_once('\n') {
        Some((first, _)) => (first.trim_end(), true),
        None => (message, false),
    };
    // This runs for every new action on the writer's path: one copy, no per-char pushes, and
    // a line quoted whole and as it is goes straight into its `Arc`.
    let cut = quote_cut(line);
    let kept = &line[..cut.unwrap_or(line.len())];
    let clipped = cut.is_some() || more_lines;
    let backticks = kept.contains('`');
    if !clipped && !backticks {
        return Arc::from(kept);
    }
    let mut text = String::with_capacity(kept.len() + '…'.len_utf8());
    if backticks {
        text.extend(kept.chars().map(|c| if c == '`' { '\'' } else { c }));
    } else {
        text.push_str(kept);
    }
    if clipped {
        text.push('…');
    }
    text.into()
}

/// The byte where character [`QUOTE_CHARS`] + 1 of `line` starts, if it has that many. A line
/// no longer in bytes has no more characters, and one that starts in ASCII is cut at a byte
/// offset: only other text is walked a character at a time.
fn quote_cut(line: &str) -> Option<usize> {
    if line.len() <= QUOTE_CHARS {
        None
    } else if line.as_bytes()[..QUOTE_CHARS].is_ascii() {
        Some(QUOTE_CHARS)
    } else {
        line.char_indices().nth(QUOTE_CHARS).map(|(at, _)| at)
    }
}

/// The first `bytes` bytes of `text`, or fewer to end on a character boundary.
fn head(text: &str, bytes: usize) -> &str {
    if text.len() <= bytes {
        return text;
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `45s`, `7m12s`, `2h03m`.
fn duration_text(gap: TimeDelta) -> String {
    let seconds = gap.num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3_600, seconds % 3_600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_timestamp;
    use proptest::prelude::*;
    use serde_json::json;

    fn observe(
        state: &mut DetectorState,
        settings: &AnomalySettings,
        seq: u64,
        seconds: i64,
        kind: &str,
        message: &str,
    ) -> Vec<Finding> {
        let kind = Kind::new(kind).unwrap();
        let ts = parse_timestamp("2024-05-01T10:00:00Z").unwrap() + TimeDelta::seconds(seconds);
        let severity = if kind.as_str() == "error" {
            Severity::Error
        } else {
            Severity::Info
        };
        state.observe(
            settings,
            Observed {
                seq,
                ts,
                kind: &kind,
                severity,
                actor: None,
                message,
            },
        )
    }

    #[test]
    fn a_repeated_action_opens_one_episode_that_escalates() {
        let settings = AnomalySettings::default();
        let mut state = DetectorState::default();
        let mut found = Vec::new();
        for i in 0..6 {
            found.push(observe(
                &mut state,
                &settings,
                i + 1,
                i as i64,
                "action",
                "click #submit",
            ));
        }
        assert!(found[0].is_empty() && found[1].is_empty());
        assert_eq!(
            found[2][0].message(),
            "the last 3 actions repeat `click #submit`: likely a loop"
        );
        assert_eq!(found[2][0].severity, Severity::Warning);
        assert_eq!(found[5][0].severity, Severity::Error);
        assert!(state.is_open(Detector::Repeat));
        // Observations between actions do not break the run; another action does.
        assert!(observe(&mut state, &settings, 7, 7, "observation", "page").is_empty());
        assert!(observe(&mut state, &settings, 8, 8, "action", "click #back").is_empty());
        assert!(!state.is_open(Detector::Repeat));
    }

    #[test]
    fn alternation_is_compared_with_numbers_masked() {
        let settings = AnomalySettings::default();
        let mut state = DetectorState::default();
        let mut last = Vec::new();
        for i in 0..6u64 {
            let message = if i % 2 == 0 {
                format!("open page {i}")
            } else {
                "go back".to_owned()
            };
            last = observe(&mut state, &settings, i + 1, i as i64, "action", &message);
        }
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].detector, Detector::Oscillation);
        assert!(
            last[0]
                .message()
                .contains("alternate between `open page 4` and `go back`"),
            "{}",
            last[0].message()
        );
    }

    #[test]
    fn a_stall_is_one_finding_at_the_event_after_the_silence() {
        let settings = AnomalySettings::default();
        let mut state = DetectorState::default();
        assert!(observe(&mut state, &settings, 1, 0, "llm", "thinking").is_empty());
        let found = observe(&mut state, &settings, 2, 432, "llm", "answer");
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .message()
                .starts_with("no events for 7m12s before seq 2"),
            "{}",
            found[0].message()
        );
        assert!(observe(&mut state, &settings, 3, 433, "llm", "next").is_empty());
        assert!(!state.is_open(Detector::Stall));
    }

    #[test]
    fn detection_off_clears_the_state() {
        let mut state = DetectorState::default();
        observe(&mut state, &AnomalySettings::default(), 1, 0, "action", "a");
        assert!(observe(&mut state, &AnomalySettings::off(), 2, 1000, "action", "a").is_empty());
        assert_eq!(state, DetectorState::default());
    }

    proptest! {
        /// The payload written from fields reads exactly as the one built as a map did (the
        /// text of the records raised before).
        #[test]
        fn finding_payloads_are_the_text_a_map_wrote(
            count in any::<u64>(),
            first_seq in any::<u64>(),
            seqs in prop::collection::vec(any::<u64>(), 0..=MAX_NAMED_SEQS),
            threshold in any::<u64>(),
            extra in prop_oneof![
                Just(Extra::Nothing),
                (2usize..=3).prop_map(Extra::Period),
                any::<i64>().prop_map(Extra::GapSeconds),
            ],
            detector in prop::sample::select(Detector::ALL.to_vec()),
        ) {
            let mut map = serde_json::Map::new();
            map.insert("detector".into(), json!(detector.as_str()));
            map.insert("count".into(), json!(count));
            map.insert("threshold".into(), json!(threshold));
            map.insert("first_seq".into(), json!(first_seq));
            map.insert("seqs".into(), json!(seqs));
            match extra {
                Extra::Nothing => {}
                Extra::Period(period) => {
                    map.insert("period".into(), json!(period));
                }
                Extra::GapSeconds(seconds) => {
                    map.insert("gap_seconds".into(), json!(seconds));
                }
            }
            let fields = FindingPayload::new(detector, count, threshold, first_seq, &seqs, extra);
            prop_assert_eq!(Payload::from_fields(&fields), Payload::from_object(&map));
        }
    }

    proptest! {
        /// The remembered keys are the keys: a run of messages alike but for their numbers
        /// (or not alike at all), from a few kinds and actors, gets from the memo exactly what
        /// masking each message gives.
        #[test]
        fn remembered_keys_are_the_masked_keys(
            events in prop::collection::vec(
                (
                    prop::sample::select(vec!["action", "tool", "error"]),
                    prop::sample::select(vec![None, Some("agent"), Some("helper")]),
                    prop::sample::select(vec![
                        "call 12 after 3s", "call 97 after 5s", "call 9 after 5s", "call 10",
                        "call 0x1f", "call 1x1f", "open 'src/a1.rs'", "open 'src/b2.rs'",
                        "id 12345678-1234-1234-1234-123456789abc", "é 1.5µs", "",
                    ]),
                    0usize..300,
                ),
                1..60,
            ),
        ) {
            let mut memo = KeyMemo::default();
            for (kind, actor, message, padding) in events {
                let kind = Kind::new(kind).unwrap();
                // Long enough, at times, that the head is cut (inside a wide character too).
                let message = format!("{}{message}", "€".repeat(padding / 3));
                prop_assert_eq!(
                    memo.key(&kind, actor, &message),
                    masked_key(&kind, actor, &message)
                );
            }
        }
    }

    #[test]
    fn a_loop_with_other_numbers_is_told_without_masking() {
        let kind = Kind::new("tool").unwrap();
        let mut memo = KeyMemo::default();
        let first = memo.key(&kind, None, "search 12 -> 3 results");
        assert_eq!(memo.head, "search 12 -> 3 results");
        // Alike: the remembered head stays, and so does the key.
        assert_eq!(memo.key(&kind, None, "search 13 -> 7 results"), first);
        assert_eq!(memo.head, "search 12 -> 3 results");
        // Another length: masked again, and remembered.
        assert_eq!(memo.key(&kind, None, "search 130 -> 7 results"), first);
        assert_eq!(memo.head, "search 130 -> 7 results");
        assert_ne!(
            memo.key(&kind, Some("other"), "search 130 -> 7 results"),
            first
        );
    }

    #[test]
    fn quotes_are_one_clipped_line() {
        assert_eq!(&*quote("run `ls`\nmore"), "run 'ls'…");
        assert_eq!(quote(&"x".repeat(80)).chars().count(), QUOTE_CHARS + 1);
        assert_eq!(&*quote(&"x".repeat(QUOTE_CHARS)), "x".repeat(QUOTE_CHARS));
        assert_eq!(&*quote("  \r\n call tool \r\nsecond"), "call tool…");
        assert_eq!(&*quote("one line \n\n "), "one line");
        // Wide characters are cut by character, and a longer line still says it was cut.
        let wide = quote(&"🦀".repeat(QUOTE_CHARS + 5));
        assert_eq!(&*wide, format!("{}…", "🦀".repeat(QUOTE_CHARS)));
        let spaced = quote(&format!("{}{}", " ".repeat(300), "é".repeat(70)));
        assert_eq!(&*spaced, format!("{}…", "é".repeat(QUOTE_CHARS)));
        assert_eq!(duration_text(TimeDelta::seconds(7_380)), "2h03m");
    }

    /// The quote's rule read a character at a time: the first line of the trimmed message,
    /// its first [`QUOTE_CHARS`] characters with backticks made quotes, and `…` when anything
    /// was left out.
    fn quote_by_chars(message: &str) -> String {
        let trimmed = message.trim();
        let line = trimmed.split('\n').next().unwrap_or("").trim_end();
        let mut text: String = line
            .chars()
            .take(QUOTE_CHARS)
            .map(|c| if c == '`' { '\'' } else { c })
            .collect();
        if line.chars().count() > QUOTE_CHARS || line.len() < trimmed.len() {
            text.push('…');
        }
        text
    }

    proptest! {
        /// The quote's shortcuts (a byte cut for ASCII, no copy for a line quoted whole) give
        /// what the rule gives, for any mix of ASCII, wide characters, backticks and lines.
        #[test]
        fn quote_is_its_rule_char_by_char(
            parts in prop::collection::vec(
                prop_oneof![
                    "[a-z ]{0,70}",
                    Just("`".to_owned()),
                    Just("\n".to_owned()),
                    Just(" \r\n".to_owned()),
                    Just(" ".repeat(250)),
                    "[é🦀日]{1,30}",
                ],
                0..8,
            ),
        ) {
            let message = parts.concat();
            prop_assert_eq!(&*quote(&message), quote_by_chars(&message));
        }
    }
}
