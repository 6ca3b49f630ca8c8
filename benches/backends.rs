//! Durable ingest through the storage interface (`recap::store::Backend`), the redb default
//! beside PostgreSQL with one and two nodes, on the same machine (issue #15).
//!
//! Each row runs W tokio tasks (how the HTTP server's handlers wait) appending batches of B
//! events to streams picked in turn, each awaiting its acknowledgement, so every event counted
//! is durable; for `RECAP_BENCH_SECONDS` (default 3). A "node" is one `PgStore`: its own writer
//! task, connection and shadows, what one `recap serve` process holds; two nodes split the
//! writers between them and write to the same streams.
//!
//! PostgreSQL: `RECAP_BENCH_DATABASE_URL` (an empty database, or one this bench wrote), else a
//! throwaway cluster started as the tests start theirs (`tests/it/pg_cluster.rs`), with
//! `synchronous_commit` on (every acknowledged batch is fsynced). Without PostgreSQL the
//! PostgreSQL rows are left out, and the bench says so.
//!
//! Two-node rows come in two routings: `h`, each stream's requests to one node (a load balancer
//! hashing on the stream name, the recommended deployment), and `*`, every node writing to
//! every stream (each batch then waits for the other node's row locks and reads its shadows
//! again).
//!
//! A second table measures context latency (a 2,000-token window of a stream of 2,000 events):
//! `warm`, reads with nothing written between them; `after write`, one event appended and
//! acknowledged, then the context read (an agent's turn), through the same node, or for two
//! PostgreSQL nodes written through one and read through the other at the write's revision.
//!
//! Run with `cargo bench --bench backends`, on an otherwise idle machine: the database, the nodes
//! and the load generator share its cores.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/it/pg_cluster.rs"]
#[allow(dead_code)]
mod pg_cluster;

use std::time::{Duration, Instant};

use chrono::Utc;
use recap::context::ContextRequest;
use recap::event::{Event, Severity, StreamName};
use recap::store::{Backend, PgStore, Store, StoreOptions};
use recap::tokens::Encoding;

/// Streams the writers spread over.
const STREAMS: usize = 64;

struct Measured {
    events: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// How requests reach nodes.
#[derive(Clone, Copy)]
enum Routing {
    /// Writer `w` always goes to node `w % nodes`: every node writes to every stream.
    ByWriter,
    /// A stream's requests always go to one node, as a load balancer hashing on the stream name
    /// sends them (the deployment the design recommends).
    ByStream,
}

/// W tasks spread over `nodes`, each appending batches of `batch` for `seconds`.
async fn run<B: Backend>(
    nodes: &[B],
    routing: Routing,
    writers: usize,
    batch: usize,
    seconds: f64,
) -> Measured {
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let nodes = nodes.to_vec();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut events = 0u64;
                let mut i = 0usize;
                while Instant::now() < until {
                    let index = (writer + i) % STREAMS;
                    let node = match routing {
                        Routing::ByWriter => &nodes[writer % nodes.len()],
                        Routing::ByStream => &nodes[index % nodes.len()],
                    };
                    let stream = StreamName::new(&format!("bench-{index}")).unwrap();
                    let batch: Vec<Event> = (0..batch)
                        .map(|e| {
                            // A quarter repeat a message any writer sends: collapse is exercised.
                            let message = if e % 4 == 0 {
                                "rate limited, retrying".to_owned()
                            } else {
                                format!("writer {writer} request {i} event {e}: tool call returned 12 results")
                            };
                            Event::new("tool", Severity::Info, message).unwrap()
                        })
                        .collect();
                    let sent = Instant::now();
                    let appended = node.append(&stream, batch, Utc::now()).await.unwrap();
                    latencies.push(sent.elapsed());
                    events += appended.len() as u64;
                    i += 1;
                }
                (events, latencies)
            })
        })
        .collect();
    let mut measured = Measured {
        events: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (events, latencies) = task.await.unwrap();
        measured.events += events;
        measured.latencies.extend(latencies);
    }
    measured.elapsed = started.elapsed();
    measured.latencies.sort_unstable();
    measured
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index].as_secs_f64() * 1_000.0
}

fn print(backend: &str, writers: usize, batch: usize, measured: &Measured) {
    println!(
        "{backend:<14} {writers:>7} {batch:>6} {:>12.0} {:>9.2} {:>9.2}",
        measured.events as f64 / measured.elapsed.as_secs_f64(),
        percentile(&measured.latencies, 0.5),
        percentile(&measured.latencies, 0.99),
    );
}

fn main() {
    let seconds: f64 = std::env::var("RECAP_BENCH_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = std::env::var("RECAP_BENCH_DATABASE_URL")
        .ok()
        .or_else(|| pg_cluster::database("bench"));
    println!(
        "durable ingest through recap::store::Backend ({seconds} s per row, {STREAMS} streams, tokio tasks)"
    );
    println!();
    println!(
        "{:<14} {:>7} {:>6} {:>12} {:>9} {:>9}",
        "backend", "writers", "batch", "events/s", "p50 ms", "p99 ms"
    );
    let shapes = [(64, 100), (64, 1), (16, 1)];
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        for (writers, batch) in shapes {
            let measured = run(
                std::slice::from_ref(&store),
                Routing::ByWriter,
                writers,
                batch,
                seconds,
            )
            .await;
            print("redb", writers, batch, &measured);
        }
        drop(store);
        let Some(url) = url.clone() else {
            println!("(no PostgreSQL: its rows did not run; see tests/it/pg_cluster.rs)");
            return;
        };
        for (node_count, routing, label) in [
            (1, Routing::ByWriter, "postgres x1"),
            (2, Routing::ByStream, "postgres x2 h"),
            (2, Routing::ByWriter, "postgres x2 *"),
        ] {
            let mut nodes = Vec::new();
            for _ in 0..node_count {
                nodes.push(PgStore::open(&url, StoreOptions::default()).await.unwrap());
            }
            for (writers, batch) in shapes {
                let measured = run(&nodes, routing, writers, batch, seconds).await;
                print(label, writers, batch, &measured);
            }
        }
        println!();
        println!("x2 h: two nodes, each stream's requests to one node (a load balancer hashing on");
        println!("the stream name); x2 *: every node writes to every stream (rows contended,");
        println!("shadows read again).");
    });
    contexts(&runtime, url.as_deref());
}

/// Reads per context row.
const CONTEXT_READS: usize = 500;
/// Events in the stream the contexts are read from.
const CONTEXT_EVENTS: usize = 2_000;

/// The context latency table (see the module's doc).
fn contexts(runtime: &tokio::runtime::Runtime, url: Option<&str>) {
    println!();
    println!(
        "context latency, {CONTEXT_EVENTS}-event stream, 2,000-token window, {CONTEXT_READS} reads a row"
    );
    println!();
    println!(
        "{:<14} {:<12} {:>9} {:>9}",
        "backend", "reads", "p50 µs", "p99 µs"
    );
    let request = ContextRequest::new(2_000, Encoding::Cl100kBase);
    let stream = StreamName::new("context-bench").unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        fill(&store, &stream).await;
        let read = || async {
            let started = Instant::now();
            store
                .context(&stream, &request, Utc::now())
                .unwrap()
                .unwrap();
            started.elapsed()
        };
        print_latencies("redb", "warm", warm(read).await);
        let write = || store.append(&stream, vec![turn_event()], Utc::now());
        let mut latencies = Vec::with_capacity(CONTEXT_READS);
        for _ in 0..CONTEXT_READS {
            write().await.unwrap();
            latencies.push(read().await);
        }
        print_latencies("redb", "after write", latencies);
        drop(store);
        let Some(url) = url else {
            return;
        };
        let a = PgStore::open(url, StoreOptions::default()).await.unwrap();
        let b = PgStore::open(url, StoreOptions::default()).await.unwrap();
        let stream = StreamName::new("context-bench-pg").unwrap();
        fill(&a, &stream).await;
        let read = |node: &PgStore, revision: u64| {
            let (node, stream, request) = (node.clone(), stream.clone(), request.clone());
            async move {
                let started = Instant::now();
                node.context(&stream, &request, Utc::now(), revision)
                    .await
                    .unwrap()
                    .unwrap();
                started.elapsed()
            }
        };
        print_latencies("postgres x1", "warm", warm(|| read(&a, 0)).await);
        for (reader, label) in [(&a, "postgres x1"), (&b, "postgres x2")] {
            let mut latencies = Vec::with_capacity(CONTEXT_READS);
            for _ in 0..CONTEXT_READS {
                let appended = a
                    .append(&stream, vec![turn_event()], Utc::now())
                    .await
                    .unwrap();
                let revision = appended.last().map_or(0, |a| a.record.revision);
                latencies.push(read(reader, revision).await);
            }
            print_latencies(label, "after write", latencies);
        }
    });
    println!();
    println!("after write: one event appended (acknowledged), then the context read; x2 reads");
    println!("through the other node at the write's revision (X-Recap-Min-Revision).");
}

/// Fills a stream with a varied history: tool calls, errors, observations.
async fn fill<B: Backend>(backend: &B, stream: &StreamName) {
    let events: Vec<Event> = (0..CONTEXT_EVENTS)
        .map(|i| {
            let (kind, severity, message) = match i % 5 {
                0 => (
                    "tool",
                    Severity::Info,
                    format!("search(\"query {i}\") -> {} results", i % 17),
                ),
                1 => (
                    "error",
                    Severity::Error,
                    format!("request {i} failed: connection reset"),
                ),
                2 => (
                    "observation",
                    Severity::Info,
                    format!("page {i} says the answer is {}", i * 7),
                ),
                3 => ("plan", Severity::Info, format!("next: check source {i}")),
                _ => (
                    "llm",
                    Severity::Info,
                    format!("thought {i}: the evidence points to item {}", i % 11),
                ),
            };
            Event::new(kind, severity, &message).unwrap()
        })
        .collect();
    for chunk in events.chunks(500) {
        backend
            .append(stream, chunk.to_vec(), Utc::now())
            .await
            .unwrap();
    }
}

/// The event of an agent's turn.
fn turn_event() -> Event {
    Event::new("tool", Severity::Info, "search(\"next\") -> 3 results").unwrap()
}

/// `CONTEXT_READS` reads after one unmeasured read that warms the caches.
async fn warm<F: std::future::Future<Output = Duration>>(read: impl Fn() -> F) -> Vec<Duration> {
    read().await;
    let mut latencies = Vec::with_capacity(CONTEXT_READS);
    for _ in 0..CONTEXT_READS {
        latencies.push(read().await);
    }
    latencies
}

fn print_latencies(backend: &str, reads: &str, mut latencies: Vec<Duration>) {
    latencies.sort_unstable();
    let micros = |p: f64| percentile(&latencies, p) * 1000.0;
    println!(
        "{backend:<14} {reads:<12} {:>9.0} {:>9.0}",
        micros(0.5),
        micros(0.99)
    );
}
