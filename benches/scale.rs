//! Scale: a real `recap serve` process (the release binary, on loopback, with a temporary data
//! directory) loaded with many events over many streams under a cache budget. Prints, per row:
//! batched ingest rate and single-event rate, peak RSS during the load, RSS after it, cold and
//! warm context latency at 2,000 tokens, restart time to `/healthz` after a clean stop and after
//! a SIGKILL, and RSS after each restart.
//!
//! `cargo bench --bench scale` runs 1,000,000 events over 5,000 streams with a 64 MiB cache.
//! `RECAP_SCALE_ROWS=1000000x5000,10000000x100000` picks rows (events x streams),
//! `RECAP_SCALE_CACHE=64MiB` the budget. Every server it starts is stopped by its process id.

#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[path = "support/http.rs"]
mod http_client;
use http_client::{connect, send};

/// Most events per batched POST (all to one stream); fewer when streams get fewer events.
const MAX_BATCH: u64 = 500;
/// Connections posting batches (`RECAP_SCALE_WRITERS` overrides).
const WRITERS: usize = 16;
/// Streams read for the cold and warm context figures.
const SAMPLED_STREAMS: usize = 200;
/// How long the single-event phase runs.
const SINGLE_SECONDS: u64 = 3;
/// The longest a server may take to answer `/healthz` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(120);

struct Row {
    events: u64,
    streams: u64,
    batched_rate: f64,
    single_rate: f64,
    peak_load_rss: u64,
    after_load_rss: u64,
    /// What the cache's meter counted after the load (`recap_cache_bytes`).
    accounted: u64,
    cold: (Duration, Duration),
    warm: (Duration, Duration),
    after_reads_rss: u64,
    restart: Duration,
    restart_rss: u64,
    cold_after_restart: (Duration, Duration),
    killed_restart: Duration,
    disk: u64,
}

fn main() {
    let rows: Vec<(u64, u64)> = std::env::var("RECAP_SCALE_ROWS")
        .unwrap_or_else(|_| "1000000x5000".into())
        .split(',')
        .map(|row| {
            let (events, streams) = row.split_once('x').expect("rows look like 1000000x5000");
            (
                events.trim().parse().unwrap(),
                streams.trim().parse().unwrap(),
            )
        })
        .collect();
    let cache = std::env::var("RECAP_SCALE_CACHE").unwrap_or_else(|_| "64MiB".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let writers = std::env::var("RECAP_SCALE_WRITERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(WRITERS);
    println!("recap scale bench: cache_bytes = {cache}, batched POSTs over {writers} connections");
    let mut results = Vec::new();
    for (events, streams) in rows {
        results.push(runtime.block_on(run_row(events, streams, &cache, writers)));
    }
    print_table(&results, &cache);
}

async fn run_row(events: u64, streams: u64, cache: &str, writers: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), cache).await;

    // Batched ingest, sampling RSS all along.
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak, pid) = (sampling.clone(), peak.clone(), server.pid());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    // Every stream gets the same share, in batches of at most MAX_BATCH.
    let batch_size = (events / streams).clamp(1, MAX_BATCH);
    let batches = events.div_ceil(batch_size);
    let writers: Vec<_> = (0..writers)
        .map(|_| {
            let (addr, next) = (server.addr.clone(), next.clone());
            tokio::spawn(async move {
                let mut client = connect(&addr).await;
                loop {
                    let batch = next.fetch_add(1, Ordering::Relaxed);
                    if batch >= batches {
                        break;
                    }
                    let stream = batch % streams;
                    let round = batch / streams;
                    let body = batch_body(round, stream, batch_size);
                    let path = format!("/v1/streams/agent-{stream}/events");
                    let (status, _) = send(&mut client, Method::POST, &path, body).await;
                    assert_eq!(status, StatusCode::OK);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let batched_rate = (batches * batch_size) as f64 / started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak_load_rss = peak.load(Ordering::Relaxed);

    // Single-event POSTs to random streams.
    let single_rate = single_events(&server.addr, streams).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_load_rss = rss(server.pid());
    let accounted = cache_bytes(&server.addr).await;

    // Cold, then warm contexts.
    let sample: Vec<u64> = (0..SAMPLED_STREAMS as u64)
        .map(|i| (i * 7919) % streams)
        .collect();
    let cold = contexts(&server.addr, &sample).await;
    let warm = contexts(&server.addr, &sample).await;
    let after_reads_rss = rss(server.pid());

    // A clean restart, then one after SIGKILL.
    server.stop();
    let restarted = Instant::now();
    let mut server = Server::start(dir.path(), cache).await;
    let restart = restarted.elapsed();
    let restart_rss = rss(server.pid());
    let others: Vec<u64> = (0..SAMPLED_STREAMS as u64)
        .map(|i| (i * 7919 + 1) % streams)
        .collect();
    let cold_after_restart = contexts(&server.addr, &others).await;
    server.kill();
    let restarted = Instant::now();
    let mut server = Server::start(dir.path(), cache).await;
    let killed_restart = restarted.elapsed();
    server.stop();
    let disk = std::fs::metadata(dir.path().join("recap.redb"))
        .map(|meta| meta.len())
        .unwrap_or(0);
    Row {
        events: batches * batch_size,
        streams,
        batched_rate,
        single_rate,
        peak_load_rss,
        after_load_rss,
        accounted,
        cold,
        warm,
        after_reads_rss,
        restart,
        restart_rss,
        cold_after_restart,
        killed_restart,
        disk,
    }
}

/// A batch of agent-like events for one stream: tool calls, observations, some repeats (which
/// collapse), an error now and then.
fn batch_body(round: u64, stream: u64, size: u64) -> Bytes {
    let mut body = String::with_capacity(size as usize * 160);
    body.push('[');
    for k in 0..size {
        if k > 0 {
            body.push(',');
        }
        let step = round * size + k;
        let event = match step % 10 {
            0 if step == 0 => format!(
                r#"{{"kind":"task","message":"agent {stream}: fix the failing checkout test and open a PR"}}"#
            ),
            1 | 2 => format!(
                r#"{{"kind":"tool","message":"read_file(src/module_{}.rs) -> {} lines","payload":{{"step":{step}}}}}"#,
                step % 37,
                step % 400
            ),
            3 => r#"{"kind":"tool","severity":"warning","message":"search(\"checkout total\") timed out after 30s"}"#.to_owned(),
            4 if step % 50 == 4 => format!(
                r#"{{"kind":"error","severity":"error","message":"cargo test failed: 3 passed, 1 failed (checkout::total_{})"}}"#,
                step % 5
            ),
            5 => format!(
                r#"{{"kind":"observation","message":"the diff touches {} files; the total is computed twice in cart.rs line {}"}}"#,
                step % 9,
                step % 300
            ),
            6 => format!(r#"{{"kind":"plan","message":"next: rerun the test for case {}"}}"#, step % 13),
            _ => format!(
                r#"{{"kind":"llm","message":"thinking about step {step}: compare the cart total with the invoice total"}}"#
            ),
        };
        body.push_str(&event);
    }
    body.push(']');
    Bytes::from(body)
}

/// Single-event POSTs from 8 connections to random streams for a few seconds: events/s.
async fn single_events(addr: &str, streams: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..8u64)
        .map(|worker| {
            let (addr, stop, count) = (addr.to_owned(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut client = connect(&addr).await;
                let mut i = worker;
                while !stop.load(Ordering::Relaxed) {
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let stream = (i >> 33) % streams;
                    let path = format!("/v1/streams/agent-{stream}/events");
                    let body = format!(r#"{{"kind":"tool","message":"single event {i}"}}"#);
                    let (status, _) = send(&mut client, Method::POST, &path, body.into()).await;
                    assert_eq!(status, StatusCode::OK);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(SINGLE_SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Reads a 2,000-token context of each stream once, one at a time: (p50, p99) latency.
async fn contexts(addr: &str, streams: &[u64]) -> (Duration, Duration) {
    let mut client = connect(addr).await;
    let mut latencies = Vec::with_capacity(streams.len());
    for stream in streams {
        let path = format!("/v1/streams/agent-{stream}/context?budget=2000");
        let sent = Instant::now();
        let (status, body) = send(&mut client, Method::GET, &path, Bytes::new()).await;
        latencies.push(sent.elapsed());
        assert_eq!(status, StatusCode::OK);
        assert!(!body.is_empty());
    }
    latencies.sort();
    let at = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction).round() as usize];
    (at(0.5), at(0.99))
}

/// The server's `recap_cache_bytes` metric.
async fn cache_bytes(addr: &str) -> u64 {
    let mut client = connect(addr).await;
    let (_, body) = send(&mut client, Method::GET, "/metrics", Bytes::new()).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix("recap_cache_bytes "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// A `recap serve` process.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts the release binary on the data directory and waits until `/healthz` answers.
    async fn start(data: &Path, cache: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_recap"))
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--cache-bytes",
                cache,
                "--data",
            ])
            .arg(data)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the recap binary starts");
        let stderr = child.stderr.take().unwrap();
        let (found, addr) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("addr=").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(found) = found.take() {
                        let _ = found.send(addr);
                    }
                }
            }
        });
        let addr = addr
            .recv_timeout(START_TIMEOUT)
            .expect("the server reports its address");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(tcp) = TcpStream::connect(&addr).await {
                let (mut client, connection) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
                tokio::spawn(connection);
                let (status, _) = send(&mut client, Method::GET, "/healthz", Bytes::new()).await;
                if status == StatusCode::OK {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the server did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Server { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and waits for the process to exit.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// SIGKILL, and waits for the process to exit.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident memory of a process, in bytes (from /proc).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn print_table(rows: &[Row], cache: &str) {
    let mib = |bytes: u64| format!("{} MiB", bytes / (1024 * 1024));
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let pair = |(p50, p99): (Duration, Duration)| format!("{} / {}", ms(p50), ms(p99));
    println!();
    println!("cache_bytes = {cache}");
    println!();
    println!(
        "| events | streams | on disk | batched ingest | single events | peak RSS (load) | RSS after load | stream state counted | cold context p50 / p99 | warm p50 / p99 | RSS after reads | restart | RSS after restart | cold after restart p50 / p99 | restart after SIGKILL |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.0}/s | {:.0}/s | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.events,
            row.streams,
            mib(row.disk),
            row.batched_rate,
            row.single_rate,
            mib(row.peak_load_rss),
            mib(row.after_load_rss),
            mib(row.accounted),
            pair(row.cold),
            pair(row.warm),
            mib(row.after_reads_rss),
            ms(row.restart),
            mib(row.restart_rss),
            pair(row.cold_after_restart),
            ms(row.killed_restart),
        );
    }
}
