//! Load generator for the HTTP service: a real server in-process on 127.0.0.1:0 with a temporary
//! data directory, driven by hyper clients over loopback, bounded in time.
//!
//! Scenarios: single-event durable POSTs at 1 and 64 connections, batched POSTs of 100 events
//! to one stream and spread over [`SPREAD_STREAMS`] streams, and context GETs on a
//! 100,000-record stream. Prints events/s, p50/p99 latency and, for writes, how many events
//! shared each durable commit and what the stream cache held after the scenario (with a small
//! `RECAP_LOAD_CACHE`, the spread scenario evicts streams and loads them back as it writes).
//!
//! `cargo bench --bench load` (each scenario runs `RECAP_LOAD_SECONDS`, default 5;
//! `RECAP_LOAD_ONLY=post1,post64,batch,spread,context` picks scenarios, for profiling one;
//! `RECAP_LOAD_CACHE=8MiB` sets the cache budget, to run them with the cache under pressure;
//! `RECAP_LOAD_ANOMALIES=off` turns anomaly detection off, which is on as in the server).

#![allow(missing_docs)]

/// The allocator the `recap` binary uses, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use recap::server::{self, ServerOptions};
use recap::store::{CacheMetrics, Store, StoreOptions};
use tokio::net::TcpListener;

#[path = "support/http.rs"]
mod http_client;
use http_client::{connect, send};

const DEFAULT_SECONDS: u64 = 5;
const CONTEXT_RECORDS: usize = 100_000;
/// Streams the `spread` scenario's batches go to, in turn: an agent fleet's sessions, more
/// than a small cache holds.
const SPREAD_STREAMS: usize = 2_000;

struct Outcome {
    requests: usize,
    events: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn main() {
    let seconds = std::env::var("RECAP_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);
    let duration = Duration::from_secs(seconds);
    let dir = tempfile::tempdir().expect("a temp dir");

    // The server gets its own runtime, as `recap serve` would; the load generator another.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("server")
        .build()
        .unwrap();
    let options = StoreOptions {
        cache_bytes: std::env::var("RECAP_LOAD_CACHE")
            .ok()
            .and_then(|size| recap::config::parse_bytes(&size))
            .unwrap_or(recap::store::DEFAULT_CACHE_BYTES),
        anomaly: match std::env::var("RECAP_LOAD_ANOMALIES").as_deref() {
            Ok("off") => recap::anomaly::AnomalySettings::off(),
            _ => recap::anomaly::AnomalySettings::default(),
        },
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), options).expect("the store opens");
    let listener = server_runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let commits = {
        let store = store.clone();
        move || store.metrics().commits
    };
    let cache = {
        let store = store.clone();
        move || store.cache_metrics()
    };
    let server = server_runtime.spawn(server::run(
        listener,
        store,
        ServerOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));

    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("load")
        .build()
        .unwrap();
    println!(
        "recap load benchmark: {seconds} s per scenario, server and load generator on this machine"
    );
    println!(
        "{:<44} {:>10} {:>12} {:>10} {:>10} {:>12}",
        "scenario", "requests", "events/s", "p50", "p99", "events/commit"
    );
    let only = std::env::var("RECAP_LOAD_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|n| n.trim() == name);
    client_runtime.block_on(async {
        if wanted("post1") {
            let before = commits();
            let outcome = run(&addr, 1, duration, single).await;
            report(
                "POST 1 event, 1 connection",
                outcome,
                Some(commits() - before),
            );
        }
        if wanted("post64") {
            let before = commits();
            let outcome = run(&addr, 64, duration, single).await;
            report(
                "POST 1 event, 64 connections",
                outcome,
                Some(commits() - before),
            );
        }
        if wanted("batch") {
            let before = commits();
            let outcome = run(&addr, 16, duration, |w, i| batch(w, i, 100)).await;
            report(
                "POST 100 events, 16 connections",
                outcome,
                Some(commits() - before),
            );
            report_cache(&cache());
        }
        if wanted("spread") {
            let before = commits();
            let outcome = run(&addr, 16, duration, spread).await;
            report(
                &format!("POST 100 events to {SPREAD_STREAMS} streams, 16 conn."),
                outcome,
                Some(commits() - before),
            );
            report_cache(&cache());
        }
        if wanted("context") {
            preload(&addr).await;
            report(
                "GET context (budget 2000), 1 connection",
                run_get(&addr, 1, duration, "/v1/streams/big/context?budget=2000").await,
                None,
            );
            report(
                "GET context (budget 2000), 4 connections",
                run_get(&addr, 4, duration, "/v1/streams/big/context?budget=2000").await,
                None,
            );
        }
    });
    let _ = stop.send(());
    server_runtime
        .block_on(server)
        .unwrap()
        .expect("clean shutdown");
}

/// A request body and how many events it carries.
type Body = (String, String, usize);

fn single(worker: usize, index: usize) -> Body {
    (
        "/v1/streams/single/events".to_owned(),
        format!(
            r#"{{"kind": "tool", "message": "worker {worker} call {index}: search(\"redb\") -> 12 results"}}"#
        ),
        1,
    )
}

fn batch(worker: usize, index: usize, size: usize) -> Body {
    (
        "/v1/streams/batched/events".to_owned(),
        batch_body(worker, index, size),
        size,
    )
}

/// A batch of 100 events to the next of [`SPREAD_STREAMS`] streams: each connection walks
/// them from its own offset.
fn spread(worker: usize, index: usize) -> Body {
    let stream = (worker * SPREAD_STREAMS / 16 + index) % SPREAD_STREAMS;
    (
        format!("/v1/streams/agent-{stream}/events"),
        batch_body(worker, index, 100),
        100,
    )
}

/// A JSON array of `size` events: one tool call repeated with other numbers.
fn batch_body(worker: usize, index: usize, size: usize) -> String {
    let events: Vec<String> = (0..size)
        .map(|k| format!(r#"{{"kind": "tool", "actor": "w{worker}", "message": "batch {index} event {k}: read file src/lib.rs ({k} lines)"}}"#))
        .collect();
    format!("[{}]", events.join(","))
}

async fn run(
    addr: &str,
    connections: usize,
    duration: Duration,
    make: fn(usize, usize) -> Body,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|worker| {
            let (addr, stop) = (addr.to_owned(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut sender = connect(&addr).await;
                let (mut latencies, mut events) = (Vec::new(), 0);
                let mut index = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (path, body, count) = make(worker, index);
                    let sent = Instant::now();
                    let (status, _) =
                        send(&mut sender, Method::POST, &path, Bytes::from(body)).await;
                    assert_eq!(status, StatusCode::OK);
                    latencies.push(sent.elapsed());
                    events += count;
                    index += 1;
                }
                (latencies, events)
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    collect(workers, started).await
}

async fn run_get(
    addr: &str,
    connections: usize,
    duration: Duration,
    path: &'static str,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (addr, stop) = (addr.to_owned(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut sender = connect(&addr).await;
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let (status, _) = send(&mut sender, Method::GET, path, Bytes::new()).await;
                    assert_eq!(status, StatusCode::OK);
                    latencies.push(sent.elapsed());
                }
                let count = latencies.len();
                (latencies, count)
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    collect(workers, started).await
}

async fn collect(
    workers: Vec<tokio::task::JoinHandle<(Vec<Duration>, usize)>>,
    started: Instant,
) -> Outcome {
    let mut outcome = Outcome {
        requests: 0,
        events: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for worker in workers {
        let (latencies, events) = worker.await.unwrap();
        outcome.requests += latencies.len();
        outcome.events += events;
        outcome.latencies.extend(latencies);
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// Fills the `big` stream with 100,000 distinct records (batches of 1,000 over 4 connections).
async fn preload(addr: &str) {
    let started = Instant::now();
    let per_worker = CONTEXT_RECORDS / 4 / 1_000;
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let addr = addr.to_owned();
            tokio::spawn(async move {
                let mut sender = connect(&addr).await;
                for index in 0..per_worker {
                    let events: Vec<String> = (0..1_000)
                        .map(|k| {
                            let severity = if k % 97 == 0 { "error" } else if k % 13 == 0 { "warning" } else { "info" };
                            let kind = ["tool", "llm", "action", "rag", "observation"][k % 5];
                            format!(r#"{{"kind": "{kind}", "severity": "{severity}", "message": "w{worker} b{index} e{k}: step output with some detail about what happened"}}"#)
                        })
                        .collect();
                    let (status, _) = send(&mut sender, Method::POST, "/v1/streams/big/events", Bytes::from(format!("[{}]", events.join(",")))).await;
                    assert_eq!(status, StatusCode::OK);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    println!(
        "(preloaded {CONTEXT_RECORDS} records into `big` in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

/// Prints a scenario's row; `commits` (for writes) gives how many events shared each commit.
fn report(name: &str, mut outcome: Outcome, commits: Option<u64>) {
    outcome.latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((outcome.latencies.len() as f64 - 1.0) * p).round() as usize;
        outcome.latencies.get(index).copied().unwrap_or_default()
    };
    let per_second = outcome.events as f64 / outcome.elapsed.as_secs_f64();
    let per_commit = commits.map_or("-".to_owned(), |commits| {
        format!("{:.1}", outcome.events as f64 / commits.max(1) as f64)
    });
    println!(
        "{name:<44} {:>10} {:>12.0} {:>10} {:>10} {:>12}",
        outcome.requests,
        per_second,
        format_duration(percentile(0.50)),
        format_duration(percentile(0.99)),
        per_commit,
    );
}

/// Prints what the stream cache holds after a write scenario.
fn report_cache(cache: &CacheMetrics) {
    let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "  cache: {:.1} of {:.1} MiB, {} of {} streams resident, {} evictions, {} cold loads, {} writer loads",
        mib(cache.bytes),
        mib(cache.budget),
        cache.resident_streams,
        cache.streams,
        cache.evictions,
        cache.cold_loads,
        cache.shadow_loads,
    );
}

fn format_duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1_000.0 {
        format!("{micros:.0} µs")
    } else {
        format!("{:.2} ms", micros / 1_000.0)
    }
}
