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
//! Run with `cargo bench --bench backends`, on an otherwise idle machine: the database, the nodes
//! and the load generator share its cores.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/it/pg_cluster.rs"]
#[allow(dead_code)]
mod pg_cluster;

use std::time::{Duration, Instant};

use chrono::Utc;
use recap::event::{Event, Severity, StreamName};
use recap::store::{Backend, PgStore, Store, StoreOptions};

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
        let Some(url) = url else {
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
}
