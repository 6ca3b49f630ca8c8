//! Durable ingest through the store API: W writer threads, each appending batches of B events
//! and waiting for each acknowledgement (so every event counted is durable), for a fixed time.
//!
//! Run with `cargo bench --bench ingest`. Prints one row per (writers, batch) with events/s,
//! commits/s (group commits: how many requests shared each fsync) and the p50/p99 time from
//! `append` to acknowledgement. `RECAP_BENCH_SECONDS` sets the time per row (default 3).

/// The allocator the `recap` binary uses, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use chrono::Utc;
use recap::event::{Event, Severity, StreamName};
use recap::store::{Store, StoreOptions};

/// Streams the writers spread over: enough that collapse and per-stream work look like a
/// server with several agents, few enough that each stream's tail stays warm.
const STREAMS: usize = 16;

struct Row {
    writers: usize,
    batch: usize,
    events: u64,
    commits: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn run(writers: usize, batch: usize, seconds: f64) -> Row {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("the store opens");
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let before = store.metrics();
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let store = store.clone();
            std::thread::spawn(move || {
                let stream = StreamName::new(&format!("agent-{}", writer % STREAMS))
                    .expect("a valid stream name");
                let mut latencies = Vec::new();
                let mut events = 0u64;
                let mut counter = 0u64;
                while Instant::now() < deadline {
                    let batch_events: Vec<Event> = (0..batch)
                        .map(|_| {
                            counter += 1;
                            // About 100 bytes, distinct, so that every event is a new record.
                            let message = format!(
                                "writer {writer} call {counter}: search(\"durable group commit\") -> {} results",
                                counter % 97
                            );
                            Event::new("tool", Severity::Info, message).expect("a valid event")
                        })
                        .collect();
                    let sent = Instant::now();
                    store
                        .append(&stream, batch_events, Utc::now())
                        .wait()
                        .expect("the append is acknowledged");
                    latencies.push(sent.elapsed());
                    events += batch as u64;
                }
                (events, latencies)
            })
        })
        .collect();
    let mut events = 0;
    let mut latencies = Vec::new();
    for thread in threads {
        let (thread_events, thread_latencies) = thread.join().expect("a writer thread");
        events += thread_events;
        latencies.extend(thread_latencies);
    }
    let elapsed = started.elapsed();
    let commits = store.metrics().commits - before.commits;
    store.close().expect("the store closes");
    latencies.sort_unstable();
    Row {
        writers,
        batch,
        events,
        commits,
        elapsed,
        latencies,
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn millis(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1_000.0)
}

fn main() {
    let seconds: f64 = std::env::var("RECAP_BENCH_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3.0);
    // `cargo bench` passes `--bench`; a name filter is accepted as "writers,batch" rows to run.
    let filter: Option<String> = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    println!("durable ingest through Store::append ({seconds} s per row, {STREAMS} streams)");
    println!();
    println!(
        "{:>7} {:>6} {:>12} {:>10} {:>12} {:>9} {:>9}",
        "writers", "batch", "events/s", "commits/s", "events/commit", "p50 ms", "p99 ms"
    );
    for writers in [1, 8, 64] {
        for batch in [1, 100] {
            if filter
                .as_deref()
                .is_some_and(|filter| filter != format!("{writers},{batch}"))
            {
                continue;
            }
            let row = run(writers, batch, seconds);
            let secs = row.elapsed.as_secs_f64();
            println!(
                "{:>7} {:>6} {:>12.0} {:>10.0} {:>12.1} {:>9} {:>9}",
                row.writers,
                row.batch,
                row.events as f64 / secs,
                row.commits as f64 / secs,
                row.events as f64 / row.commits.max(1) as f64,
                millis(percentile(&row.latencies, 0.50)),
                millis(percentile(&row.latencies, 0.99)),
            );
        }
    }
}
