//! Context build latency over a 100,000-record stream, with warm token caches.
//!
//! `cargo bench --bench context` prints one row per budget: the records shown (whole and as
//! headlines), the median and p99 time of `context::build_if_ready` (gathering, packing over
//! cached counts, Earlier line, text assembly), next to what
//! re-tokenizing the resulting window once would cost — the work the cached, additive counts
//! save on every call.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use recap::collapse::CollapsePolicy;
use recap::context::{self, ContextRequest};
use recap::stream::{StreamState, TailCapacity};
use recap::tokens::Encoding;

use common::{human, quantile, shared_traces};

const RECORDS: usize = 100_000;
const BUDGETS: [u32; 4] = [512, 2_000, 8_000, 32_000];
const SAMPLES: usize = 2_000;

fn main() {
    let events: Vec<_> = shared_traces()
        .into_iter()
        .flat_map(|trace| trace.events)
        .collect();
    // No collapse: every event becomes a record, so the stream really holds 100,000 of them.
    let policy = CollapsePolicy {
        lookback: 0,
        ..CollapsePolicy::default()
    };
    let mut state = StreamState::new(policy, TailCapacity::default());
    let start = events[0].ts.unwrap();
    for (index, event) in events.iter().cycle().take(RECORDS).enumerate() {
        state.append(
            event.clone(),
            start + TimeDelta::milliseconds(index as i64 * 250),
        );
    }
    assert_eq!(state.totals().records, RECORDS as u64);
    let now = state.totals().last_ts.unwrap();
    let encoding = Encoding::Cl100kBase;

    println!(
        "context build over {RECORDS} records (cl100k_base, warm caches, {SAMPLES} samples per row)"
    );
    println!(
        "{:>8} {:>8} {:>7} {:>7} {:>9} {:>10} {:>10} {:>14}",
        "budget", "tokens", "shown", "whole", "headline", "p50", "p99", "recount once"
    );
    // `RECAP_BENCH_BUDGETS=2000 RECAP_BENCH_SAMPLES=200` measures one budget, briefly (for a
    // profiler).
    let budgets: Vec<u32> = std::env::var("RECAP_BENCH_BUDGETS").map_or(BUDGETS.to_vec(), |list| {
        list.split(',')
            .filter_map(|b| b.trim().parse().ok())
            .collect()
    });
    for budget in budgets {
        let request = ContextRequest::new(budget, encoding);
        let window = context::build(&state.view(), &request, now); // warms the caches
        let sample_count = std::env::var("RECAP_BENCH_SAMPLES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(SAMPLES);
        let mut samples: Vec<Duration> = (0..sample_count)
            .map(|_| {
                // What `Store::context` runs on a warm stream.
                let started = Instant::now();
                black_box(context::build_if_ready(
                    black_box(&state.view()),
                    &request,
                    now,
                ))
                .expect("the caches are warm");
                started.elapsed()
            })
            .collect();
        let recount = {
            let started = Instant::now();
            for _ in 0..20 {
                black_box(encoding.count(black_box(&window.text)));
            }
            started.elapsed() / 20
        };
        println!(
            "{:>8} {:>8} {:>7} {:>7} {:>9} {:>10} {:>10} {:>14}",
            budget,
            window.tokens,
            window.totals.shown_records,
            window.totals.shown_whole,
            window.totals.shown_headlines,
            human(quantile(&mut samples, 0.5)),
            human(quantile(&mut samples, 0.99)),
            human(recount),
        );
    }
}
