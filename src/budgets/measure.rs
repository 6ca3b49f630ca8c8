//! One measurement: build a policy's window at the current moment of a replay and observe what
//! it shows (see [`super::metrics`] for what each number means).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use crate::context::{
    self, CachedRecord, ContextRequest, ContextWindow, Level, NEWEST_SHARE_DIVISOR, StreamView,
};
use crate::event::Kind;
use crate::tokens::Encoding;

use super::baselines::BaselineWindow;
use super::metrics::{Observation, Policy};
use super::replay::Replay;

/// Counts every line not yet counted under `encoding` (recap's records in memory, the raw log's
/// events from `from_raw` on), so that a timed build measures selection and rendering, not
/// first-time tokenizing, which the server pays once per record, not per call. A repeat
/// replaces its record's cache, so recap's whole tail is walked (a cached count is one load).
pub fn warm(replay: &Replay<'_>, encoding: Encoding, from_raw: usize) {
    let view = replay.state().view();
    for cached in view.records.iter().chain(view.severe) {
        cached.tokens(encoding);
    }
    replay.log().warm(from_raw, encoding);
}

/// Builds `policy`'s window for `request` now and observes it.
pub fn observe(policy: Policy, replay: &mut Replay<'_>, request: &ContextRequest) -> Observation {
    match policy {
        Policy::Recap => observe_recap(replay, request),
        Policy::Recency | Policy::HeadTail => observe_baseline(policy, replay, request),
    }
}

fn observe_recap(replay: &Replay<'_>, request: &ContextRequest) -> Observation {
    let view = replay.state().view();
    let now = replay.now().unwrap_or_default();
    // Untimed first build: it fills the clipped-line caches a server answering this client
    // repeatedly would already have (the bench cycles through more caps than a record keeps).
    context::build(&view, request, now);
    let started = Instant::now();
    let window = context::build(&view, request, now);
    let build_time = started.elapsed();

    // Shown at any level, whole or headline: the record is in view.
    let mut shown: Vec<u64> = window
        .items
        .iter()
        .filter(|item| item.included)
        .map(|item| item.seq)
        .collect();
    shown.sort_unstable();
    let visible = |seq: u64| shown.binary_search(&seq).is_ok();
    let severe_visible = replay
        .severe()
        .iter()
        .filter(|s| visible(s.record_seq))
        .count() as u64;
    let goal = replay.first_goal();
    let (newest_total, newest_whole) = recap_newest(replay, &view, &window, request);
    let kinds: BTreeSet<&Kind> = shown
        .iter()
        .filter_map(|seq| cached_by_seq(&view, *seq))
        .map(|cached| &cached.record().kind)
        .collect();
    let (needles_total, needles_visible) = needles(replay, &window.text);
    let totals = &window.totals;
    Observation {
        tokens: request.encoding.count(&window.text),
        build_time,
        shown_records: totals.shown_records,
        shown_events: totals.shown_events,
        elided_records: totals.elided_records,
        elided_events: totals.elided_events,
        kinds_shown: kinds.len() as u64,
        severe_total: replay.severe().len() as u64,
        severe_visible,
        task_total: u64::from(goal.is_some()),
        task_visible: u64::from(goal.is_some_and(|g| visible(g.record_seq))),
        newest_total,
        newest_whole,
        shown_whole: totals.shown_whole,
        shown_headlines: totals.shown_headlines,
        needles_total,
        needles_visible,
    }
}

/// Whether the record the newest trace event landed in counts for "newest whole" (its full line
/// takes at most a quarter of the budget), and whether recap showed it whole and unclipped.
fn recap_newest(
    replay: &Replay<'_>,
    view: &StreamView<'_>,
    window: &ContextWindow,
    request: &ContextRequest,
) -> (u64, u64) {
    let Some(newest) = replay.newest() else {
        return (0, 0);
    };
    // The newest trace event's record is in the tail: the collapse lookback stays inside it.
    let Some(cached) = cached_by_seq(view, newest.record_seq) else {
        debug_assert!(false, "record {} is not in the view", newest.record_seq);
        return (0, 0);
    };
    if cached.tokens(request.encoding) > request.budget / NEWEST_SHARE_DIVISOR {
        return (0, 0);
    }
    let whole = window
        .items
        .iter()
        .find(|item| item.seq == newest.record_seq)
        .is_some_and(|item| item.level == Level::Whole && !item.clipped);
    (1, u64::from(whole))
}

fn observe_baseline(
    policy: Policy,
    replay: &mut Replay<'_>,
    request: &ContextRequest,
) -> Observation {
    let (budget, encoding, cap) = (request.budget, request.encoding, request.line_cap());
    let log = replay.log_mut();
    // Same as for recap: clip the lines this window may show before timing the build.
    log.prepare(budget, encoding, cap);
    let window: BaselineWindow = match policy {
        Policy::Recency => log.recency(budget, encoding, cap),
        _ => log.head_tail(budget, encoding, cap),
    };

    let log = replay.log();
    let first = window.first_shown;
    let shown = (log.len() - first) as u64;
    let kinds: BTreeSet<&Kind> = (first..log.len()).map(|i| &log.record(i).kind).collect();
    let severe_visible = replay
        .severe()
        .iter()
        .filter(|s| s.raw_index >= first)
        .count() as u64;
    let goal = replay.first_goal();
    let (newest_total, newest_whole) = match replay.newest() {
        Some(newest)
            if log.line_tokens(newest.raw_index, encoding) <= budget / NEWEST_SHARE_DIVISOR =>
        {
            let whole = newest.raw_index >= first && log.unclipped(newest.raw_index, encoding, cap);
            (1, u64::from(whole))
        }
        _ => (0, 0),
    };
    let (needles_total, needles_visible) = needles(replay, &window.text);
    Observation {
        // The baseline already counted its whole text with the tokenizer.
        tokens: window.tokens,
        build_time: window.build_time,
        shown_records: shown,
        shown_events: shown,
        elided_records: first as u64,
        elided_events: first as u64,
        kinds_shown: kinds.len() as u64,
        severe_total: replay.severe().len() as u64,
        severe_visible,
        task_total: u64::from(goal.is_some()),
        task_visible: u64::from(goal.is_some_and(|g| g.raw_index >= first)),
        newest_total,
        newest_whole,
        // Every line a baseline shows is the event's line, whole or clipped: no headlines.
        shown_whole: shown,
        shown_headlines: 0,
        needles_total,
        needles_visible,
    }
}

/// Needles planted so far, and how many of their markers are in `text`.
fn needles(replay: &Replay<'_>, text: &str) -> (u64, u64) {
    replay
        .planted_markers()
        .fold((0, 0), |(total, visible), marker| {
            (total + 1, visible + u64::from(text.contains(marker)))
        })
}

/// The record with `seq` in the view: in the tail (dense seqs), among the older severe ones or
/// among the goals.
fn cached_by_seq<'v>(view: &StreamView<'v>, seq: u64) -> Option<&'v Arc<CachedRecord>> {
    let first = view.records.first()?.record().seq;
    if seq >= first {
        let cached = view.records.get((seq - first) as usize)?;
        return (cached.record().seq == seq).then_some(cached);
    }
    view.severe
        .iter()
        .chain(view.goals)
        .chain(view.latest_goal)
        .find(|cached| cached.record().seq == seq)
}
