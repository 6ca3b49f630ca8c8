//! Durable ingest through the store API: W writer threads, each appending batches of B events
//! and waiting for each acknowledgement (so every event counted is durable), for a fixed time.
//!
//! Writers are OS threads blocked on each acknowledgement, or tokio tasks awaiting it (how the
//! HTTP server's handlers wait).
//!
//! Run with `cargo bench --bench ingest`. Prints one row per (writers, batch) with events/s,
//! commits/s (group commits: how many requests shared each fsync) and the p50/p99 time from
//! `append` to acknowledgement. `RECAP_BENCH_SECONDS` sets the time per row (default 3),
//! `RECAP_BENCH_STREAMS` the number of streams the writers spread over (default 16),
//! `RECAP_BENCH_ANOMALIES=off` turns anomaly detection off (it is on, as in the server).
//!
//! The `retained` rows are 64 task-writers with every stream limited to its newest 1,000
//! records, so that retention removes as many rows as arrive.
//!
//! A last table measures redb alone, with no recap code: one thread committing durable
//! transactions shaped like the store's (records keyed by stream and seq over the same streams,
//! or one sequential table). It is the ceiling any writer built on redb reaches on this disk.

/// The allocator the `recap` binary uses, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use chrono::Utc;
use recap::anomaly::AnomalySettings;
use recap::event::{Event, Severity, StreamName};
use recap::store::{Retention, Store, StoreOptions};

/// Streams the writers spread over: enough that collapse and per-stream work look like a
/// server with several agents, few enough that each stream's tail stays warm.
const STREAMS: usize = 16;
/// Records each stream keeps in the `retained` rows.
const RETAINED: u64 = 1_000;

/// The streams the writers spread over: [`STREAMS`], or `RECAP_BENCH_STREAMS`.
fn streams() -> usize {
    std::env::var("RECAP_BENCH_STREAMS")
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|&streams| streams > 0)
        .unwrap_or(STREAMS)
}

struct Row {
    writers: usize,
    batch: usize,
    events: u64,
    commits: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// The most records any stream still stored at the end.
    most_stored: u64,
}

/// How the writers wait for their acknowledgements.
#[derive(Clone, Copy, PartialEq)]
enum Writers {
    /// One OS thread per writer, blocked in `Pending::wait`.
    Threads,
    /// One tokio task per writer on a 2-worker runtime, awaiting the `Pending`: what the HTTP
    /// server's request handlers do.
    Tasks,
}

/// One writer's loop state: the batches it makes and what it measured.
struct Tally {
    writer: usize,
    stream: StreamName,
    batch: usize,
    counter: u64,
    events: u64,
    latencies: Vec<Duration>,
}

impl Tally {
    fn new(writer: usize, batch: usize) -> Tally {
        Tally {
            writer,
            stream: StreamName::new(&format!("agent-{}", writer % streams()))
                .expect("a valid stream name"),
            batch,
            counter: 0,
            events: 0,
            latencies: Vec::new(),
        }
    }

    /// The next batch: events of about 100 bytes, distinct, so that every event is a new record.
    fn next_batch(&mut self) -> Vec<Event> {
        (0..self.batch)
            .map(|_| {
                self.counter += 1;
                let message = format!(
                    "writer {} call {}: search(\"durable group commit\") -> {} results",
                    self.writer,
                    self.counter,
                    self.counter % 97
                );
                Event::new("tool", Severity::Info, message).expect("a valid event")
            })
            .collect()
    }

    /// Counts a batch acknowledged after being sent at `sent`.
    fn acknowledged(&mut self, sent: Instant) {
        self.latencies.push(sent.elapsed());
        self.events += self.batch as u64;
    }
}

fn run(mode: Writers, writers: usize, batch: usize, seconds: f64, options: StoreOptions) -> Row {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(dir.path(), options).expect("the store opens");
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let before = store.metrics();
    let tallies: Vec<Tally> = match mode {
        Writers::Threads => {
            let threads: Vec<_> = (0..writers)
                .map(|writer| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        let mut tally = Tally::new(writer, batch);
                        while Instant::now() < deadline {
                            let events = tally.next_batch();
                            let sent = Instant::now();
                            store
                                .append(&tally.stream, events, Utc::now())
                                .wait()
                                .expect("the append is acknowledged");
                            tally.acknowledged(sent);
                        }
                        tally
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|thread| thread.join().expect("a writer thread"))
                .collect()
        }
        Writers::Tasks => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let tasks: Vec<_> = (0..writers)
                    .map(|writer| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            let mut tally = Tally::new(writer, batch);
                            while Instant::now() < deadline {
                                let events = tally.next_batch();
                                let sent = Instant::now();
                                store
                                    .append(&tally.stream, events, Utc::now())
                                    .await
                                    .expect("the append is acknowledged");
                                tally.acknowledged(sent);
                            }
                            tally
                        })
                    })
                    .collect();
                let mut tallies = Vec::with_capacity(tasks.len());
                for task in tasks {
                    tallies.push(task.await.expect("a writer task"));
                }
                tallies
            })
        }
    };
    let elapsed = started.elapsed();
    let commits = store.metrics().commits - before.commits;
    let most_stored = store
        .streams()
        .iter()
        .map(|stream| stream.stored_records)
        .max()
        .unwrap_or(0);
    store.close().expect("the store closes");
    let events = tallies.iter().map(|tally| tally.events).sum();
    let mut latencies: Vec<Duration> = tallies.into_iter().flat_map(|t| t.latencies).collect();
    latencies.sort_unstable();
    Row {
        writers,
        batch,
        events,
        commits,
        elapsed,
        latencies,
        most_stored,
    }
}

/// Durable commits of `per_commit` records of about the size the store writes, for `seconds`,
/// by one thread with nothing else to do; returns records/s and commits/s.
fn redb_alone(per_commit: u64, streams: u64, seconds: f64) -> (f64, f64) {
    const RECORDS: redb::TableDefinition<(u64, u64), &[u8]> = redb::TableDefinition::new("records");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = redb::Database::create(dir.path().join("alone.redb")).expect("the file opens");
    let value = vec![7u8; 150];
    let mut seqs = vec![0u64; streams as usize];
    let (mut records, mut commits) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        let txn = db.begin_write().expect("a write transaction");
        {
            let mut table = txn.open_table(RECORDS).expect("the table");
            for _ in 0..per_commit {
                let stream = records % streams;
                seqs[stream as usize] += 1;
                table
                    .insert((stream, seqs[stream as usize]), value.as_slice())
                    .expect("an insert");
                records += 1;
            }
        }
        txn.commit().expect("a durable commit");
        commits += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    (records as f64 / secs, commits as f64 / secs)
}

fn print_redb_alone(seconds: f64) {
    println!();
    println!("redb alone: one thread, durable commits of 150-byte records keyed (stream, seq)");
    println!();
    println!(
        "{:>8} {:>12} {:>12} {:>10} {:>12}",
        "streams", "per commit", "records/s", "commits/s", "µs/commit"
    );
    for (streams, per_commit) in [
        (STREAMS, 1),
        (STREAMS, 32),
        (STREAMS, 64),
        (1, 64),
        (STREAMS, 3_000),
    ] {
        let (records, commits) = redb_alone(per_commit, streams as u64, seconds);
        println!(
            "{:>8} {:>12} {:>12.0} {:>10.0} {:>12.0}",
            streams,
            per_commit,
            records,
            commits,
            1e6 / commits
        );
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
    // `cargo bench` passes `--bench`; a name filter is accepted as "writers,batch" (or
    // "tasks:writers,batch", "retained:64,batch", or "redb" for the redb-alone table) rows to
    // run.
    let filter: Option<String> = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    println!(
        "durable ingest through Store::append ({seconds} s per row, {} streams)",
        streams()
    );
    println!();
    println!(
        "{:>8} {:>7} {:>6} {:>12} {:>10} {:>12} {:>9} {:>9}",
        "writers", "count", "batch", "events/s", "commits/s", "events/commit", "p50 ms", "p99 ms"
    );
    // Anomaly detection is on, as in the server; every event here is the same tool call with
    // other numbers, so each stream is one long `repeat` episode whose record every event
    // updates (the worst case). `RECAP_BENCH_ANOMALIES=off` measures without detection.
    let anomalies = std::env::var("RECAP_BENCH_ANOMALIES").map_or(true, |value| value != "off");
    if !anomalies {
        println!("(anomaly detection off)");
    }
    // Every stream kept to its newest RETAINED records: the writer removes as many rows as
    // arrive, in maintenance steps between commits.
    let retained = StoreOptions {
        retention: Retention {
            max_records: Some(RETAINED),
            max_age: None,
        },
        ..StoreOptions::default()
    };
    let rows = [
        (Writers::Threads, "threads", ""),
        (Writers::Tasks, "tasks", "tasks:"),
    ]
    .into_iter()
    .flat_map(|(mode, label, prefix)| {
        [1, 8, 64].into_iter().flat_map(move |writers| {
            [1, 100].map(|batch| {
                (
                    mode,
                    label,
                    format!("{prefix}{writers},{batch}"),
                    writers,
                    batch,
                    false,
                )
            })
        })
    })
    .chain([1, 100].map(|batch| {
        let name = format!("retained:64,{batch}");
        (Writers::Tasks, "retained", name, 64, batch, true)
    }));
    for (mode, label, name, writers, batch, retain) in rows {
        if filter.as_deref().is_some_and(|filter| filter != name) {
            continue;
        }
        let mut options = if retain {
            retained.clone()
        } else {
            StoreOptions::default()
        };
        if !anomalies {
            options.anomaly = AnomalySettings::off();
        }
        let row = run(mode, writers, batch, seconds, options);
        let secs = row.elapsed.as_secs_f64();
        println!(
            "{:>8} {:>7} {:>6} {:>12.0} {:>10.0} {:>12.1} {:>9} {:>9}",
            label,
            row.writers,
            row.batch,
            row.events as f64 / secs,
            row.commits as f64 / secs,
            row.events as f64 / row.commits.max(1) as f64,
            millis(percentile(&row.latencies, 0.50)),
            millis(percentile(&row.latencies, 0.99)),
        );
        if retain {
            println!(
                "{:>8} (at most {} records stored per stream at the end)",
                "", row.most_stored
            );
        }
    }
    if filter.as_deref().is_none_or(|filter| filter == "redb") {
        print_redb_alone(seconds);
    }
}
