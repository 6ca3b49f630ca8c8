//! Properties over the whole shared trace set (`../shared/traces`).

use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use recap::collapse::{CollapseMode, CollapsePolicy};
use recap::context::{self, ContextRequest};
use recap::event::Record;
use recap::render;
use recap::stream::{StreamState, TailCapacity};
use recap::tokens::Encoding;
use recap::trace::{Trace, read_trace};

use crate::support::shared_traces;

fn all_traces() -> Vec<(PathBuf, Trace)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(shared_traces())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 10,
        "expected the 10 shared traces, found {}",
        paths.len()
    );
    paths
        .into_iter()
        .map(|path| (path.clone(), read_trace(&path).unwrap()))
        .collect()
}

fn replay(trace: &Trace, mode: CollapseMode) -> StreamState {
    let policy = CollapsePolicy {
        mode,
        ..CollapsePolicy::default()
    };
    let mut state = StreamState::new(policy, TailCapacity::default());
    for event in trace.events.iter().cloned() {
        let ts = event.ts.unwrap();
        state.append(event, ts);
    }
    state
}

/// Collapse accounts for every event of every trace, in both modes.
#[test]
fn collapse_preserves_event_counts_on_every_trace() {
    for (path, trace) in all_traces() {
        for mode in [CollapseMode::Exact, CollapseMode::Template] {
            let state = replay(&trace, mode);
            let repeat_sum: u64 = state.records().map(|r| r.repeat_count).sum();
            assert_eq!(
                state.totals().events,
                trace.events.len() as u64,
                "{}",
                path.display()
            );
            assert_eq!(
                repeat_sum,
                trace.events.len() as u64,
                "{} ({mode})",
                path.display()
            );
        }
    }
}

/// The ChatDev rate-limit storm (1,667 error and retry events) folds into a handful of records.
#[test]
fn template_mode_folds_the_rate_limit_storm() {
    let trace =
        read_trace(&shared_traces().join("chatdev__WaterBreakv2_20231026175200.jsonl")).unwrap();
    let state = replay(&trace, CollapseMode::Template);
    let storm: Vec<&Record> = state
        .records()
        .filter(|r| matches!(r.kind.as_str(), "error" | "retry"))
        .collect();
    let storm_events: u64 = storm.iter().map(|r| r.repeat_count).sum();
    assert_eq!(storm_events, 1_667);
    assert!(storm.len() <= 8, "{} storm records", storm.len());
}

/// The exactness lemma behind cached budgets: a text cut into pieces that each end with a
/// newline, every piece after the first starting with a non-space character, counts as the sum
/// of its pieces. Checked on random runs of real record lines, for both encodings.
#[test]
fn token_counts_add_up_across_rendered_pieces() {
    let mut lines: Vec<String> = Vec::new();
    for (_, trace) in all_traces() {
        let state = replay(&trace, CollapseMode::Exact);
        lines.extend(state.records().map(render::record_line));
        lines.push(render::note_piece("a pinned note\nwith two lines"));
    }
    for encoding in Encoding::ALL {
        let counts: Vec<u32> = lines.iter().map(|line| encoding.count(line)).collect();
        let mut runner = TestRunner::new(Config {
            cases: 256,
            ..Config::default()
        });
        let pick = prop::collection::vec(0..lines.len(), 1..40);
        runner
            .run(&pick, |indices| {
                let text: String = indices.iter().map(|&i| lines[i].as_str()).collect();
                let sum: u32 = indices.iter().map(|&i| counts[i]).sum();
                prop_assert_eq!(encoding.count(&text), sum);
                Ok(())
            })
            .unwrap();
        // Every adjacent pair in trace order, not only random picks.
        for pair in lines.windows(2) {
            let joined = format!("{}{}", pair[0], pair[1]);
            assert_eq!(
                encoding.count(&joined),
                encoding.count(&pair[0]) + encoding.count(&pair[1]),
                "{joined:?}"
            );
        }
    }
}

/// Every trace, at budgets from 0 to 32,000, in both encodings: never over budget, the reported
/// count is the real count, and the same history gives the same bytes.
#[test]
fn contexts_of_every_trace_stay_within_budget() {
    for (path, trace) in all_traces() {
        let state = replay(&trace, CollapseMode::Exact);
        let now = trace.events.last().and_then(|e| e.ts).unwrap();
        for encoding in Encoding::ALL {
            for budget in [
                0, 1, 7, 40, 100, 256, 512, 1_024, 2_048, 4_096, 8_192, 32_000,
            ] {
                let request = ContextRequest::new(budget, encoding);
                let window = context::build(&state.view(), &request, now);
                assert!(
                    window.tokens <= budget,
                    "{} {encoding} {budget}",
                    path.display()
                );
                assert_eq!(
                    window.tokens,
                    encoding.count(&window.text),
                    "{} {encoding} {budget}",
                    path.display()
                );
                assert_eq!(window, context::build(&state.view(), &request, now));
            }
        }
    }
}
