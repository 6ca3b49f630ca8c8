//! Ingest-side throughput on the shared traces, one core: JSON decoding and validation, the
//! collapse decision alone, a full in-memory append (collapse + record + totals), and the same
//! with anomaly detection (what the store's writer does per event).
//!
//! `cargo bench --bench collapse` prints events per second for each stage and mode.
//! `RECAP_BENCH_ONLY=detection` runs only the rows with anomaly detection, and
//! `RECAP_BENCH_ROUNDS` sets the rounds per row (default 5): a long run of one row, for a
//! profiler.

mod common;

use std::hint::black_box;
use std::time::Instant;

use recap::anomaly::{self, AnomalySettings, DetectorState};
use recap::collapse::{CollapseMode, CollapsePolicy, Collapser};
use recap::event::{EventInput, EventLimits};
use recap::stream::{StreamState, TailCapacity};
use recap::trace::parse_line;

use common::{shared_trace_lines, shared_traces, thousands};

/// Rounds per row unless `RECAP_BENCH_ROUNDS` says otherwise.
const ROUNDS: usize = 5;

fn rounds() -> usize {
    std::env::var("RECAP_BENCH_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|&rounds| rounds > 0)
        .unwrap_or(ROUNDS)
}

fn rate(events: usize, run: impl FnMut()) -> f64 {
    let mut run = run;
    run(); // warm-up
    let rounds = rounds();
    let started = Instant::now();
    for _ in 0..rounds {
        run();
    }
    (events * rounds) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let lines = shared_trace_lines();
    let traces = shared_traces();
    let events: usize = traces.iter().map(|t| t.events.len()).sum();
    let limits = EventLimits {
        max_message_bytes: usize::MAX,
    };
    // Only the detection rows: what a profiler of detection wants to see.
    let only_detection = std::env::var("RECAP_BENCH_ONLY").is_ok_and(|only| only == "detection");
    println!(
        "{events} events from {} traces, {} rounds per row, one core",
        traces.len(),
        rounds()
    );
    println!("{:<52} {:>14}", "stage", "events/s");

    let decoded: Vec<Vec<u8>> = lines
        .iter()
        .map(|line| {
            let (_, event) = parse_line(line, &limits).unwrap();
            // Re-encode as a plain event body, the way a client posts it.
            serde_json::json!({
                "kind": event.kind, "severity": event.severity, "message": event.message,
                "actor": event.actor, "step_id": event.step_id,
            })
            .to_string()
            .into_bytes()
        })
        .collect();
    let validate = (!only_detection).then(|| {
        rate(events, || {
            for body in &decoded {
                black_box(
                    EventInput::from_json(body)
                        .unwrap()
                        .validate(&limits)
                        .unwrap(),
                );
            }
        })
    });
    if let Some(validate) = validate {
        println!(
            "{:<52} {:>14}",
            "decode + validate (JSON body → Event)",
            thousands(validate)
        );
    }

    for mode in [CollapseMode::Exact, CollapseMode::Template] {
        let policy = CollapsePolicy {
            mode,
            ..CollapsePolicy::default()
        };
        if !only_detection {
            let collapse = rate(events, || {
                for trace in &traces {
                    let mut collapser = Collapser::new(policy);
                    for event in &trace.events {
                        black_box(collapser.place(event, event.ts.unwrap()));
                    }
                }
            });
            println!(
                "{:<52} {:>14}",
                format!("collapse decision ({mode})"),
                thousands(collapse)
            );
            let append = rate(events, || {
                for trace in &traces {
                    let mut state = StreamState::new(policy, TailCapacity::default());
                    for event in &trace.events {
                        black_box(state.append(event.clone(), event.ts.unwrap()));
                    }
                }
            });
            println!(
                "{:<52} {:>14}",
                format!("in-memory append ({mode})"),
                thousands(append)
            );
        }
        // What the store's writer does per event since anomaly detection: append, observe,
        // and place what the detectors raise.
        let settings = AnomalySettings::default();
        let detected = rate(events, || {
            for trace in &traces {
                let mut state = StreamState::new(policy, TailCapacity::default());
                let mut detectors = DetectorState::default();
                for event in &trace.events {
                    let ts = event.ts.unwrap();
                    let appended = state.append(event.clone(), ts);
                    black_box(anomaly::detect(
                        &mut detectors,
                        &settings,
                        &mut state,
                        &appended,
                        ts,
                        1,
                    ));
                }
            }
        });
        println!(
            "{:<52} {:>14}",
            format!("in-memory append + anomaly detection ({mode})"),
            thousands(detected)
        );
    }
}
