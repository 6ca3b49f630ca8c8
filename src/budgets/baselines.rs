//! The baselines recap is compared with, built over the raw event log of a replay.
//!
//! Both render every event with recap's own line format ([`render::record_line`], clipped to
//! the same per-line cap with [`render::clip_record`]) and count with the same tokenizer, so a
//! difference in what survives comes from selection alone, not from formatting:
//!
//! - `recency`: the newest events whose lines fit, oldest dropped first, no collapse, no ranking:
//!   what trimming a chat history does. It stops at the first event that does not fit (a trimmed
//!   history is a contiguous suffix).
//! - `head+tail`: the event stream of the reference agent whose compact line format recap uses:
//!   older events rolled up by rule into one line (counts per kind and severity over a time
//!   window), then the newest events that fit. The reference rolls the oldest chunk up whenever
//!   its tail passes a size threshold; under a token budget that becomes "one roll-up line for
//!   everything not shown".
//!
//! Notes reach the baselines the way a naive agent records them: as `note` events in the stream.
//!
//! Budgets are honest: lines are chosen with per-line counts from the real tokenizer, and the
//! assembled text is counted again as a whole; should that count ever exceed the budget the
//! oldest shown line is dropped and the text counted again.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::context::CachedRecord;
use crate::event::{Record, Severity};
use crate::meter::Meter;
use crate::render::{self, ClippedLine};
use crate::tokens::Encoding;

/// The raw events of a replay, in arrival order, each with its rendered line and token counts.
#[derive(Debug, Default)]
pub struct RawLog {
    lines: Vec<CachedRecord>,
    /// Events per kind and per severity over the whole log: a roll-up counts these minus the
    /// few events shown, instead of walking the whole history on every build.
    kind_totals: Vec<(String, u64)>,
    severity_totals: [u64; 5],
    /// Clipped lines by (index, encoding, cap); `None` when not even the line's head fits.
    clips: HashMap<(usize, Encoding, u32), Option<Arc<ClippedLine>>>,
}

/// A baseline's window: the text and which events it shows.
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineWindow {
    /// The text.
    pub text: String,
    /// Its token count, from the tokenizer over the whole text.
    pub tokens: u32,
    /// The oldest event shown: events `first_shown..` of the log are shown, as lines.
    pub first_shown: usize,
    /// Whether the text starts with a roll-up line.
    pub rolled_up: bool,
    /// Time spent choosing and rendering the lines, without the whole-text recount that checks
    /// the budget (recap's build is timed the same way: cached per-line counts, no recount).
    pub build_time: Duration,
}

impl RawLog {
    /// An empty log.
    pub fn new() -> RawLog {
        RawLog::default()
    }

    /// Appends an event, as a record of its own (no collapse).
    pub fn push(&mut self, record: Record) {
        let kind = record.kind.as_str();
        match self.kind_totals.iter_mut().find(|(known, _)| known == kind) {
            Some((_, count)) => *count += 1,
            None => self.kind_totals.push((kind.to_owned(), 1)),
        }
        self.severity_totals[record.severity.index()] += 1;
        self.lines
            .push(CachedRecord::new(&record, &Meter::detached()));
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The event at `index`.
    pub fn record(&self, index: usize) -> &Record {
        self.lines[index].record()
    }

    /// The token count of event `index`'s full line under `encoding`.
    pub fn line_tokens(&self, index: usize, encoding: Encoding) -> u32 {
        self.lines[index].tokens(encoding)
    }

    /// Whether a window with per-line `cap` that shows event `index` shows its full line, not a
    /// clip of it.
    pub fn unclipped(&self, index: usize, encoding: Encoding, cap: u32) -> bool {
        self.line_tokens(index, encoding) <= cap
    }

    /// Counts the full lines of events from `from` on under `encoding`, so that later window
    /// builds only add numbers (what a tail cache that counts on ingest would do).
    pub fn warm(&self, from: usize, encoding: Encoding) {
        for line in &self.lines[from.min(self.lines.len())..] {
            line.tokens(encoding);
        }
    }

    /// Clips, untimed, every line a window of `budget` could show, so that a timed build finds
    /// them cached as recap's builds find theirs.
    pub fn prepare(&mut self, budget: u32, encoding: Encoding, cap: u32) {
        self.newest_that_fit(budget, encoding, cap);
    }

    /// What event `index`'s line costs under the per-line `cap`: its full line, or its clipped
    /// line when the full one is longer; `None` when not even a clipped line fits the cap.
    fn cost(&mut self, index: usize, encoding: Encoding, cap: u32) -> Option<u32> {
        let full = self.lines[index].tokens(encoding);
        if full <= cap {
            return Some(full);
        }
        self.clip(index, encoding, cap).map(|clip| clip.tokens)
    }

    fn clip(&mut self, index: usize, encoding: Encoding, cap: u32) -> Option<Arc<ClippedLine>> {
        let lines = &self.lines;
        self.clips
            .entry((index, encoding, cap))
            .or_insert_with(|| {
                render::clip_record(lines[index].record(), encoding, cap).map(Arc::new)
            })
            .clone()
    }

    /// Event `index`'s line as shown under `cap` (call after [`RawLog::cost`] said it fits).
    fn push_line(&mut self, out: &mut String, index: usize, encoding: Encoding, cap: u32) {
        if self.unclipped(index, encoding, cap) {
            out.push_str(self.lines[index].line());
        } else if let Some(clip) = self.clip(index, encoding, cap) {
            out.push_str(&clip.text);
        }
    }

    /// The oldest index of the longest run of newest events whose lines fit in `available`.
    fn newest_that_fit(&mut self, available: u32, encoding: Encoding, cap: u32) -> usize {
        let mut remaining = available;
        let mut first = self.lines.len();
        while first > 0 {
            match self.cost(first - 1, encoding, cap) {
                Some(cost) if cost <= remaining => {
                    remaining -= cost;
                    first -= 1;
                }
                _ => break,
            }
        }
        first
    }

    /// The text of an optional roll-up line followed by the lines of events `first..`.
    fn assemble(&mut self, rollup: bool, first: usize, encoding: Encoding, cap: u32) -> String {
        let mut text = if rollup {
            self.rollup_line(first)
        } else {
            String::new()
        };
        for index in first..self.lines.len() {
            self.push_line(&mut text, index, encoding, cap);
        }
        text
    }

    /// Renders the window and counts the whole text; while it is over the budget (never
    /// expected: per-line counts add up exactly), shows one event fewer. `started` is when the
    /// build began: the build time stops before the first whole-text count.
    fn settle(
        &mut self,
        started: Instant,
        rollup: bool,
        mut first: usize,
        budget: u32,
        encoding: Encoding,
        cap: u32,
    ) -> BaselineWindow {
        let mut build_time = None;
        loop {
            let rolled_up = rollup && first > 0;
            let text = self.assemble(rolled_up, first, encoding, cap);
            let build_time = *build_time.get_or_insert_with(|| started.elapsed());
            let tokens = encoding.count(&text);
            if tokens <= budget {
                return BaselineWindow {
                    text,
                    tokens,
                    first_shown: first,
                    rolled_up,
                    build_time,
                };
            }
            if first == self.lines.len() {
                // Even the roll-up line alone is over: show nothing rather than exceed.
                return BaselineWindow {
                    text: String::new(),
                    tokens: 0,
                    first_shown: first,
                    rolled_up: false,
                    build_time,
                };
            }
            first += 1;
        }
    }

    /// The `recency` baseline: the newest events that fit, nothing else.
    pub fn recency(&mut self, budget: u32, encoding: Encoding, cap: u32) -> BaselineWindow {
        let started = Instant::now();
        let first = self.newest_that_fit(budget, encoding, cap);
        self.settle(started, false, first, budget, encoding, cap)
    }

    /// The `head+tail` baseline: a roll-up line for the events not shown, then the newest
    /// events that fit beside it. With room for everything there is nothing to roll up; with no
    /// room for the roll-up line it degrades to `recency`.
    pub fn head_tail(&mut self, budget: u32, encoding: Encoding, cap: u32) -> BaselineWindow {
        let started = Instant::now();
        let everything = self.newest_that_fit(budget, encoding, cap);
        if everything == 0 {
            return self.settle(started, false, 0, budget, encoding, cap);
        }
        // The roll-up of every event names every kind and severity: reserve for that, then
        // settle() trims further should the real roll-up come out longer.
        let reserve = encoding.count_fragments(&self.rollup_line(self.lines.len()));
        let Some(available) = budget.checked_sub(reserve) else {
            return self.recency(budget, encoding, cap);
        };
        let first = self.newest_that_fit(available, encoding, cap).max(1);
        self.settle(started, true, first, budget, encoding, cap)
    }

    /// The rule-based roll-up of events `..end`, in the reference agent's shape: how many, over
    /// which time window, and counts per kind and per severity (names sorted).
    pub fn rollup_line(&self, end: usize) -> String {
        let end = end.min(self.lines.len());
        let rolled = &self.lines[..end];
        let mut kinds: Vec<(&str, u64)> = self
            .kind_totals
            .iter()
            .map(|(kind, count)| (kind.as_str(), *count))
            .collect();
        let mut severities = self.severity_totals;
        for line in &self.lines[end..] {
            let record = line.record();
            if let Some((_, count)) = kinds.iter_mut().find(|(k, _)| *k == record.kind.as_str()) {
                *count -= 1;
            }
            severities[record.severity.index()] -= 1;
        }
        kinds.retain(|(_, count)| *count > 0);
        kinds.sort_unstable();
        let mut out = String::with_capacity(160);
        let _ = write!(out, "Rolled up {} events", rolled.len());
        if let (Some(first), Some(last)) = (rolled.first(), rolled.last()) {
            let _ = write!(
                out,
                " [{}–{}]",
                render::clock(&first.record().first_ts),
                render::clock(&last.record().last_ts)
            );
        }
        out.push_str(" — kinds: ");
        let kinds: Vec<String> = kinds.iter().map(|(k, c)| format!("{k}={c}")).collect();
        out.push_str(&kinds.join(", "));
        out.push_str("; severities: ");
        let severities: Vec<String> = Severity::ALL
            .iter()
            .filter(|s| severities[s.index()] > 0)
            .map(|s| format!("{s}={}", severities[s.index()]))
            .collect();
        out.push_str(&severities.join(", "));
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, parse_timestamp};
    use chrono::TimeDelta;

    fn log(messages: &[(&str, Severity, String)]) -> RawLog {
        let t0 = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
        let mut log = RawLog::new();
        for (index, (kind, severity, message)) in messages.iter().enumerate() {
            let ts = t0 + TimeDelta::seconds(index as i64);
            let event = Event::new(kind, *severity, message.clone()).unwrap();
            log.push(Record::from_event(
                event,
                index as u64 + 1,
                index as u64 + 1,
                ts,
            ));
        }
        log
    }

    fn mixed(count: usize) -> RawLog {
        let messages: Vec<(&str, Severity, String)> = (0..count)
            .map(|i| match i % 4 {
                0 => (
                    "tool",
                    Severity::Info,
                    format!("search(\"q{i}\") -> {i} results"),
                ),
                1 => ("llm", Severity::Debug, "thinking ".repeat(i % 37 + 1)),
                2 => (
                    "retry",
                    Severity::Warning,
                    format!("rate limited, retry {i}"),
                ),
                _ => (
                    "observation",
                    Severity::Info,
                    "page text ".repeat(i * 7 % 300),
                ),
            })
            .collect();
        log(&messages)
    }

    #[test]
    fn both_baselines_respect_every_budget_exactly() {
        let mut log = mixed(160);
        for encoding in Encoding::ALL {
            for budget in [0, 1, 5, 17, 40, 64, 100, 256, 700, 2_000, 100_000] {
                let cap = (budget / 8).max(32);
                for window in [
                    log.recency(budget, encoding, cap),
                    log.head_tail(budget, encoding, cap),
                ] {
                    assert!(window.tokens <= budget, "{} > {budget}", window.tokens);
                    assert_eq!(window.tokens, encoding.count(&window.text));
                    let lines = window
                        .text
                        .lines()
                        .filter(|l| l.as_bytes().first().is_some_and(u8::is_ascii_digit))
                        .count();
                    assert_eq!(
                        lines,
                        log.len() - window.first_shown,
                        "one line per shown event"
                    );
                }
            }
        }
    }

    #[test]
    fn recency_is_the_newest_contiguous_suffix() {
        // The newest of 39 events is a short retry line, shown in full.
        let mut log = mixed(39);
        let window = log.recency(300, Encoding::Cl100kBase, 64);
        assert!(window.first_shown > 0 && window.first_shown < 39);
        assert!(!window.rolled_up);
        assert!(window.text.ends_with(log.lines[38].line()));
        // One more event would not have fit: the suffix is as long as the budget allows.
        let cost = log
            .cost(window.first_shown - 1, Encoding::Cl100kBase, 64)
            .unwrap();
        assert!(window.tokens + cost > 300);
    }

    #[test]
    fn head_tail_rolls_up_exactly_the_events_not_shown() {
        let mut log = mixed(120);
        let window = log.head_tail(400, Encoding::Cl100kBase, 50);
        assert!(window.rolled_up);
        let first_line = window.text.lines().next().unwrap();
        assert!(
            first_line.starts_with(&format!(
                "Rolled up {} events [10:00:00–",
                window.first_shown
            )),
            "{first_line}"
        );
        assert!(first_line.contains("kinds: llm="), "{first_line}");
        assert!(first_line.contains("severities: debug="), "{first_line}");
        // With room for everything there is nothing to roll up.
        let all = log.head_tail(1_000_000, Encoding::Cl100kBase, 50);
        assert_eq!((all.first_shown, all.rolled_up), (0, false));
        assert_eq!(
            all.text,
            log.recency(1_000_000, Encoding::Cl100kBase, 50).text
        );
    }

    #[test]
    fn long_lines_are_clipped_to_the_cap_like_recap_clips_them() {
        let mut log = log(&[
            ("tool", Severity::Error, "Traceback line\n".repeat(400)),
            ("tool", Severity::Info, "ok".into()),
        ]);
        let window = log.recency(256, Encoding::Cl100kBase, 32);
        assert_eq!(window.first_shown, 0, "{}", window.text);
        assert!(window.text.contains("more chars clipped]"));
        // A cap too small for the line's head leaves the event out rather than overflow.
        let tiny = log.recency(256, Encoding::Cl100kBase, 3);
        assert_eq!(tiny.text, "");
    }

    #[test]
    fn empty_logs_give_empty_windows() {
        let mut log = RawLog::new();
        assert!(log.is_empty());
        for window in [
            log.recency(100, Encoding::Cl100kBase, 32),
            log.head_tail(100, Encoding::Cl100kBase, 32),
        ] {
            assert_eq!(
                (window.text.as_str(), window.tokens, window.first_shown),
                ("", 0, 0)
            );
        }
    }
}
