//! What is measured at each moment, and how moments add up to a row of the report.
//!
//! Definitions (the README and the report use these words in exactly this sense):
//!
//! - **severe recall**: over every (moment, trace event of severity `error` or above applied
//!   by then) pair, the fraction where the event is visible as a line: for recap, the record the
//!   event landed in is shown at any level, whole (possibly clipped) or as a headline (possibly
//!   as `xN` when repeats were folded into it), i.e. its receipt item is `included`; for a
//!   baseline, the event's own line is shown (possibly clipped). An event counted only in a
//!   summary (the Earlier or roll-up line) is not visible. Planted critical needles are not
//!   counted here; they are needles. Pooled over moments and traces (micro-average), so a trace
//!   with many errors weighs more than one with few.
//! - **task visible**: over every moment at which the trace has had at least one event of kind
//!   `task` or `user`, the fraction where the FIRST such trace event is visible: for recap, the
//!   record it landed in is shown at any level (whole or headline); for a baseline, its own line
//!   is shown (possibly clipped). That event states what the agent was asked; an agent that
//!   cannot see it works from the latest observations alone. Pooled over moments and traces.
//! - **newest whole**: over every moment at which the newest trace event's full line takes at
//!   most a quarter of the budget (`budget / `[`crate::context::NEWEST_SHARE_DIVISOR`], the line
//!   being [`crate::render::record_line`] counted with the request's encoding), the fraction
//!   where that line is shown whole and not clipped. For recap the line is that of the record
//!   the latest applied trace event landed in (a repeat lands in an older record, and its line
//!   then carries the repeat count), and it is shown whole when its receipt item has level
//!   `whole` and is not clipped; for a baseline it is the event's own raw line, shown unclipped.
//!   Needles planted after the newest trace event do not change which event is the newest. The
//!   newest observation is what an agent reacts to, so a policy should show it as it is whenever
//!   it is short enough; moments where it is longer are not counted (the observations differ per
//!   policy, as recap's line of a repeat carries its count). Pooled over moments and traces.
//! - **needle recall**: over every (moment, needle planted by then) pair, the fraction where the
//!   needle's marker occurs in the context text. Pooled the same way.
//! - **tokens**: the context text counted by the tokenizer over the whole text (not the count a
//!   policy reports about itself); `over_budget_moments` counts moments where it exceeded.
//! - **shown / elided**: records (lines) shown and not shown, and the events they stand for;
//!   for the baselines every event is its own record.
//! - **shown whole / as headlines**: of the records shown, how many are shown whole (clipped or
//!   not) and how many as headlines, averaged over moments. A baseline shows every line it
//!   shows whole (clipped or not), so its headlines are 0.
//! - **collapse ratio**: events / records of the stream at the end of each trace, pooled; 1 for
//!   the baselines, which do not collapse.
//! - **kinds shown**: distinct kinds among the shown lines, averaged over moments.
//! - **build time**: wall time of one window build with per-line token counts already cached
//!   (counting a new record is paid once, on ingest), p50 and p99 by nearest rank.

use std::time::Duration;

use serde::Serialize;

use crate::collapse::CollapseMode;
use crate::tokens::Encoding;

/// A context policy under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Policy {
    /// recap's context window ([`crate::context::build`]).
    #[serde(rename = "recap")]
    Recap,
    /// The newest raw events that fit.
    #[serde(rename = "recency")]
    Recency,
    /// A rule-based roll-up line plus the newest raw events that fit.
    #[serde(rename = "head+tail")]
    HeadTail,
}

impl Policy {
    /// Every policy, in report order.
    pub const ALL: [Policy; 3] = [Policy::Recap, Policy::Recency, Policy::HeadTail];

    /// The policy's name in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Recap => "recap",
            Policy::Recency => "recency",
            Policy::HeadTail => "head+tail",
        }
    }
}

/// What one window showed at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// The text's token count (tokenizer over the whole text).
    pub tokens: u32,
    /// Time to build the window.
    pub build_time: Duration,
    /// Records shown as lines.
    pub shown_records: u64,
    /// Events those records stand for.
    pub shown_events: u64,
    /// Records not shown.
    pub elided_records: u64,
    /// Events not shown.
    pub elided_events: u64,
    /// Distinct kinds among the shown lines.
    pub kinds_shown: u64,
    /// Severe trace events applied so far.
    pub severe_total: u64,
    /// Of those, how many are visible as a line.
    pub severe_visible: u64,
    /// 1 when the trace has had a `task` or `user` event by now, else 0.
    pub task_total: u64,
    /// 1 when the first of those is visible, else 0.
    pub task_visible: u64,
    /// 1 when the newest trace event's full line takes at most a quarter of the budget, else 0.
    pub newest_total: u64,
    /// 1 when, in addition, it is shown whole and unclipped, else 0.
    pub newest_whole: u64,
    /// Records shown whole (clipped or not).
    pub shown_whole: u64,
    /// Records shown as headlines.
    pub shown_headlines: u64,
    /// Needles planted so far.
    pub needles_total: u64,
    /// Of those, how many markers are in the text.
    pub needles_visible: u64,
}

/// Observations of one (policy, encoding, budget) added up, over moments and traces.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    moments: u64,
    traces: u64,
    tokens_sum: u64,
    tokens_max: u32,
    over_budget: u64,
    shown_records: u64,
    shown_events: u64,
    elided_records: u64,
    elided_events: u64,
    kinds_shown: u64,
    severe_total: u64,
    severe_visible: u64,
    task_total: u64,
    task_visible: u64,
    newest_total: u64,
    newest_whole: u64,
    shown_whole: u64,
    shown_headlines: u64,
    needles_total: u64,
    needles_visible: u64,
    stream_events: u64,
    stream_records: u64,
    build_times: Vec<Duration>,
}

impl Tally {
    /// Adds one moment's observation under `budget`.
    pub fn add(&mut self, observation: &Observation, budget: u32) {
        self.moments += 1;
        self.tokens_sum += u64::from(observation.tokens);
        self.tokens_max = self.tokens_max.max(observation.tokens);
        self.over_budget += u64::from(observation.tokens > budget);
        self.shown_records += observation.shown_records;
        self.shown_events += observation.shown_events;
        self.elided_records += observation.elided_records;
        self.elided_events += observation.elided_events;
        self.kinds_shown += observation.kinds_shown;
        self.severe_total += observation.severe_total;
        self.severe_visible += observation.severe_visible;
        self.task_total += observation.task_total;
        self.task_visible += observation.task_visible;
        self.newest_total += observation.newest_total;
        self.newest_whole += observation.newest_whole;
        self.shown_whole += observation.shown_whole;
        self.shown_headlines += observation.shown_headlines;
        self.needles_total += observation.needles_total;
        self.needles_visible += observation.needles_visible;
        self.build_times.push(observation.build_time);
    }

    /// Records the end of one trace: its stream's events and records.
    pub fn end_trace(&mut self, events: u64, records: u64) {
        self.traces += 1;
        self.stream_events += events;
        self.stream_records += records;
    }

    /// Adds another tally (of other traces) to this one.
    pub fn merge(&mut self, other: &Tally) {
        self.moments += other.moments;
        self.traces += other.traces;
        self.tokens_sum += other.tokens_sum;
        self.tokens_max = self.tokens_max.max(other.tokens_max);
        self.over_budget += other.over_budget;
        self.shown_records += other.shown_records;
        self.shown_events += other.shown_events;
        self.elided_records += other.elided_records;
        self.elided_events += other.elided_events;
        self.kinds_shown += other.kinds_shown;
        self.severe_total += other.severe_total;
        self.severe_visible += other.severe_visible;
        self.task_total += other.task_total;
        self.task_visible += other.task_visible;
        self.newest_total += other.newest_total;
        self.newest_whole += other.newest_whole;
        self.shown_whole += other.shown_whole;
        self.shown_headlines += other.shown_headlines;
        self.needles_total += other.needles_total;
        self.needles_visible += other.needles_visible;
        self.stream_events += other.stream_events;
        self.stream_records += other.stream_records;
        self.build_times.extend_from_slice(&other.build_times);
    }

    /// The report row for this tally.
    pub fn row(&self, key: RowKey, collapse: CollapseMode) -> Row {
        let moments = self.moments.max(1) as f64;
        let mean = |sum: u64| sum as f64 / moments;
        let fraction = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
        let mut times = self.build_times.clone();
        times.sort_unstable();
        Row {
            policy: key.policy,
            budget: key.budget,
            encoding: key.encoding,
            collapse,
            traces: self.traces,
            moments: self.moments,
            severe_recall: fraction(self.severe_visible, self.severe_total),
            severe_observations: self.severe_total,
            task_visible: fraction(self.task_visible, self.task_total),
            task_observations: self.task_total,
            newest_whole: fraction(self.newest_whole, self.newest_total),
            newest_observations: self.newest_total,
            needle_recall: fraction(self.needles_visible, self.needles_total),
            needle_observations: self.needles_total,
            mean_tokens: mean(self.tokens_sum),
            max_tokens: self.tokens_max,
            over_budget_moments: self.over_budget,
            mean_shown_records: mean(self.shown_records),
            mean_shown_whole: mean(self.shown_whole),
            mean_shown_headlines: mean(self.shown_headlines),
            mean_shown_events: mean(self.shown_events),
            mean_elided_records: mean(self.elided_records),
            mean_elided_events: mean(self.elided_events),
            collapse_ratio: fraction(self.stream_events, self.stream_records).unwrap_or(1.0),
            mean_kinds_shown: mean(self.kinds_shown),
            build_p50_us: percentile_us(&times, 0.50),
            build_p99_us: percentile_us(&times, 0.99),
        }
    }
}

/// Which row a tally belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey {
    /// Encoding first, so rows sort by encoding, then budget, then policy.
    pub encoding: Encoding,
    /// The budget.
    pub budget: u32,
    /// The policy.
    pub policy: Policy,
}

/// One row of the report: a policy at one budget and encoding, over every trace and moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// `recap`, `recency` or `head+tail`.
    pub policy: Policy,
    /// Token budget.
    pub budget: u32,
    /// Encoding counted with.
    pub encoding: Encoding,
    /// recap's collapse mode in this run (the baselines never collapse).
    pub collapse: CollapseMode,
    /// Traces measured.
    pub traces: u64,
    /// Windows built (moments over all traces).
    pub moments: u64,
    /// Severe recall as a fraction; `null` when no trace had a severe event.
    pub severe_recall: Option<f64>,
    /// (moment, severe event) pairs the recall is over.
    pub severe_observations: u64,
    /// Fraction of moments where the trace's first `task`/`user` event is visible; `null` when
    /// no trace had one.
    pub task_visible: Option<f64>,
    /// Moments the task fraction is over (those after a trace's first `task`/`user` event).
    pub task_observations: u64,
    /// Fraction of moments where the newest trace event's line is shown whole and unclipped,
    /// among those where it takes at most a quarter of the budget; `null` when there were none.
    pub newest_whole: Option<f64>,
    /// Moments the newest-whole fraction is over (they differ per policy and budget).
    pub newest_observations: u64,
    /// Needle recall as a fraction; `null` when no needle was planted.
    pub needle_recall: Option<f64>,
    /// (moment, needle) pairs the recall is over.
    pub needle_observations: u64,
    /// Mean tokens per window.
    pub mean_tokens: f64,
    /// Most tokens of any window; at most the budget.
    pub max_tokens: u32,
    /// Windows over the budget (0 unless a policy is broken).
    pub over_budget_moments: u64,
    /// Mean records shown.
    pub mean_shown_records: f64,
    /// Mean records shown whole (clipped or not); every shown line of a baseline.
    pub mean_shown_whole: f64,
    /// Mean records shown as headlines; 0 for the baselines.
    pub mean_shown_headlines: f64,
    /// Mean events shown (repeats folded into shown records count).
    pub mean_shown_events: f64,
    /// Mean records not shown.
    pub mean_elided_records: f64,
    /// Mean events not shown.
    pub mean_elided_events: f64,
    /// Events per record at the end of the traces.
    pub collapse_ratio: f64,
    /// Mean distinct kinds among shown lines.
    pub mean_kinds_shown: f64,
    /// Median build time, microseconds (timing: varies run to run).
    pub build_p50_us: f64,
    /// 99th percentile build time, microseconds (timing: varies run to run).
    pub build_p99_us: f64,
}

/// Nearest-rank percentile of sorted durations, in microseconds (0 for none).
fn percentile_us(sorted: &[Duration], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_pool_observations_and_merge() {
        let key = RowKey {
            encoding: Encoding::Cl100kBase,
            budget: 100,
            policy: Policy::Recap,
        };
        let mut a = Tally::default();
        a.add(
            &Observation {
                tokens: 90,
                severe_total: 3,
                severe_visible: 3,
                needles_total: 1,
                needles_visible: 0,
                build_time: Duration::from_micros(10),
                ..Observation::default()
            },
            100,
        );
        a.end_trace(10, 5);
        let mut b = Tally::default();
        b.add(
            &Observation {
                tokens: 101,
                severe_total: 1,
                severe_visible: 0,
                build_time: Duration::from_micros(30),
                ..Observation::default()
            },
            100,
        );
        b.end_trace(4, 4);
        a.merge(&b);
        let row = a.row(key, CollapseMode::Exact);
        assert_eq!(row.severe_recall, Some(0.75));
        assert_eq!(row.needle_recall, Some(0.0));
        assert_eq!((row.max_tokens, row.over_budget_moments), (101, 1));
        assert_eq!(row.mean_tokens, 95.5);
        assert_eq!(row.collapse_ratio, 14.0 / 9.0);
        assert_eq!((row.build_p50_us, row.build_p99_us), (10.0, 30.0));
        assert_eq!(
            Tally::default().row(key, CollapseMode::Exact).severe_recall,
            None
        );
    }

    #[test]
    fn task_newest_and_levels_pool_over_moments_and_merge() {
        let key = RowKey {
            encoding: Encoding::Cl100kBase,
            budget: 256,
            policy: Policy::Recap,
        };
        let moment = |task: (u64, u64), newest: (u64, u64), levels: (u64, u64)| Observation {
            task_total: task.0,
            task_visible: task.1,
            newest_total: newest.0,
            newest_whole: newest.1,
            shown_whole: levels.0,
            shown_headlines: levels.1,
            shown_records: levels.0 + levels.1,
            ..Observation::default()
        };
        // Trace a: no task yet, then a task shown twice; the newest line is too long once.
        let mut a = Tally::default();
        a.add(&moment((0, 0), (1, 1), (4, 2)), 256);
        a.add(&moment((1, 1), (0, 0), (6, 0)), 256);
        a.add(&moment((1, 1), (1, 0), (5, 3)), 256);
        a.end_trace(30, 20);
        // Trace b: its task is lost; its newest line is always short and shown whole.
        let mut b = Tally::default();
        b.add(&moment((1, 0), (1, 1), (1, 1)), 256);
        b.end_trace(10, 10);
        a.merge(&b);
        let row = a.row(key, CollapseMode::Exact);
        assert_eq!(
            (row.task_visible, row.task_observations),
            (Some(2.0 / 3.0), 3)
        );
        assert_eq!(
            (row.newest_whole, row.newest_observations),
            (Some(2.0 / 3.0), 3)
        );
        assert_eq!(row.moments, 4);
        assert_eq!(row.mean_shown_whole, 16.0 / 4.0);
        assert_eq!(row.mean_shown_headlines, 6.0 / 4.0);
        assert_eq!(
            row.mean_shown_records,
            row.mean_shown_whole + row.mean_shown_headlines
        );
        // No task and no short newest line anywhere: the fractions are undefined, not 0.
        let mut none = Tally::default();
        none.add(&moment((0, 0), (0, 0), (3, 0)), 256);
        let row = none.row(key, CollapseMode::Exact);
        assert_eq!((row.task_visible, row.task_observations), (None, 0));
        assert_eq!((row.newest_whole, row.newest_observations), (None, 0));
        let json = serde_json::to_value(&row).unwrap();
        for field in [
            "task_visible",
            "task_observations",
            "newest_whole",
            "newest_observations",
            "mean_shown_whole",
            "mean_shown_headlines",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        assert_eq!(json["task_visible"], serde_json::Value::Null);
    }
}
