//! The PostgreSQL backend on a real cluster (see `pg_cluster`): schema migrations, several
//! nodes writing to one stream, and a database that stops answering.
//!
//! A "node" here is a [`PgStore`]: its own writer task, connection, pool and shadows, exactly
//! what each `recap serve` process would hold.

use std::collections::BTreeMap;

use chrono::TimeDelta;
use recap::event::{Event, Record, Severity, StreamName, Timestamp, parse_timestamp};
use recap::store::{ChangeBody, PG_SCHEMA_VERSION, PgStore, RecordQuery, StoreError, StoreOptions};

use crate::pg_cluster;

/// What these nodes run with: the defaults without anomaly detection, since these tests count
/// records and revisions exactly (detection across nodes is pinned by `pg_contexts.rs` and
/// `conformance.rs`).
fn options() -> StoreOptions {
    StoreOptions {
        anomaly: recap::anomaly::AnomalySettings::off(),
        ..StoreOptions::default()
    }
}

fn ts(seconds: i64) -> Timestamp {
    parse_timestamp("2024-05-01T10:00:00Z").unwrap() + TimeDelta::seconds(seconds)
}

fn name(value: &str) -> StreamName {
    StreamName::new(value).unwrap()
}

async fn query(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let rows = client.query(sql, &[]).await.unwrap();
    drop(client);
    let _ = driver.await;
    rows
}

/// Every stored record of a stream, by forward pages.
async fn all_records(store: &PgStore, stream: &StreamName) -> Vec<Record> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .records(
                stream,
                &RecordQuery {
                    after,
                    limit: 1_000,
                    ..RecordQuery::default()
                },
            )
            .await
            .unwrap();
        out.extend(page.records);
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_and_a_newer_schema_is_refused() {
    let Some(url) = pg_cluster::database("migrations") else {
        return;
    };
    // Two nodes starting at once apply each migration once.
    let (a, b) = tokio::join!(
        PgStore::open(&url, options()),
        PgStore::open(&url, options())
    );
    a.unwrap();
    b.unwrap();
    let rows = query(
        &url,
        "SELECT version FROM recap_schema_migrations ORDER BY version",
    )
    .await;
    let versions: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(versions, (1..=PG_SCHEMA_VERSION).collect::<Vec<_>>());

    query(
        &url,
        &format!(
            "INSERT INTO recap_schema_migrations (version, description) VALUES ({}, 'from the future')",
            PG_SCHEMA_VERSION + 1
        ),
    )
    .await;
    match PgStore::open(&url, options()).await {
        Err(StoreError::SchemaTooNew {
            found, supported, ..
        }) => {
            assert_eq!(found, PG_SCHEMA_VERSION as u32 + 1);
            assert_eq!(supported, PG_SCHEMA_VERSION as u32);
        }
        Err(other) => panic!("expected SchemaTooNew, got {other}"),
        Ok(_) => panic!("a database of a newer schema was opened"),
    }
}

/// Writers on two nodes to one stream: every request is answered, seqs are dense, every
/// revision is taken exactly once, no event is lost or counted twice, and repeats collapse as
/// if one writer had taken every event (three distinct messages make exactly three records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_writing_to_one_stream_keep_every_invariant() {
    let Some(url) = pg_cluster::database("two_nodes") else {
        return;
    };
    let nodes = [
        PgStore::open(&url, options()).await.unwrap(),
        PgStore::open(&url, options()).await.unwrap(),
    ];
    let hot = name("hot");
    let unique = name("unique");
    const WRITERS_PER_NODE: usize = 4;
    const REQUESTS: usize = 40;
    const BATCH: usize = 5;
    let messages = [
        "rate limited, retrying",
        "tool call failed",
        "waiting for lock",
    ];
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for w in 0..WRITERS_PER_NODE {
            let node = node.clone();
            let (hot, unique) = (hot.clone(), unique.clone());
            tasks.push(tokio::spawn(async move {
                let mut sent = BTreeMap::<&str, u64>::new();
                for r in 0..REQUESTS {
                    let events: Vec<Event> = (0..BATCH)
                        .map(|i| {
                            let message = messages[(n + w + r + i) % messages.len()];
                            *sent.entry(message).or_default() += 1;
                            Event::new("tool", Severity::Warning, message)
                                .unwrap()
                                .at(ts(r as i64))
                        })
                        .collect();
                    node.append(&hot, events, ts(0)).await.unwrap();
                    let own = Event::new(
                        "step",
                        Severity::Info,
                        format!("node {n} writer {w} request {r}"),
                    )
                    .unwrap()
                    .at(ts(r as i64));
                    node.append(&unique, vec![own], ts(0)).await.unwrap();
                }
                sent
            }));
        }
    }
    let mut sent = BTreeMap::<&str, u64>::new();
    for task in tasks {
        for (message, count) in task.await.unwrap() {
            *sent.entry(message).or_default() += count;
        }
    }
    let total = (2 * WRITERS_PER_NODE * REQUESTS * BATCH) as u64;
    let metrics = nodes.each_ref().map(PgStore::metrics);
    assert_eq!(
        metrics.iter().map(|m| m.events).sum::<u64>(),
        total + (2 * WRITERS_PER_NODE * REQUESTS) as u64
    );
    // Each node found the other had written since its last batch, and read its shadows again.
    assert!(metrics.iter().all(|m| m.shadow_loads > 2), "{metrics:?}");
    assert!(metrics.iter().all(|m| m.failed_commits == 0), "{metrics:?}");

    for node in &nodes {
        let records = all_records(node, &hot).await;
        // Collapse across nodes: one record per distinct message, with the exact count.
        let counts: BTreeMap<&str, u64> = records
            .iter()
            .map(|record| (record.message.as_str(), record.repeat_count))
            .collect();
        assert_eq!(records.len(), messages.len(), "{records:?}");
        assert_eq!(counts, sent);
        let stats = node.stream(&hot).await.unwrap().unwrap();
        assert_eq!(stats.events, total);
        assert_eq!(stats.records, messages.len() as u64);
        assert_changes_gap_free(node, &hot, stats.revision).await;

        let records = all_records(node, &unique).await;
        let requests = (2 * WRITERS_PER_NODE * REQUESTS) as u64;
        assert_eq!(records.len() as u64, requests);
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record.seq, index as u64 + 1, "seqs are dense");
        }
        let stats = node.stream(&unique).await.unwrap().unwrap();
        assert_eq!((stats.events, stats.revision), (requests, requests));
        assert_changes_gap_free(node, &unique, stats.revision).await;
    }
}

/// Waits (at most 10 s) until no other client is connected to the database of `url`. A killed
/// node's last `COMMIT` may still be finishing in the server after the process is gone; checks
/// that read the stream row, its records and its changelog one after another must all see the
/// state it leaves, or they compare two states.
async fn sessions_ended(url: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // `query`'s own session ends before it returns, so it never counts itself.
        let rows = query(
            url,
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND backend_type = 'client backend'",
        )
        .await;
        let others: i64 = rows[0].get(0);
        if others == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{others} sessions of killed nodes still connected after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Revisions `1..=revision` each appear once in the changelog, in order, and replaying it gives
/// the stream's events, record by record.
async fn assert_changes_gap_free(node: &PgStore, stream: &StreamName, revision: u64) {
    let mut after = 0;
    // Per seq: the events the changelog gives it, and the revisions that did.
    let mut replayed: BTreeMap<u64, (u64, Vec<u64>)> = BTreeMap::new();
    loop {
        let changes = node.changes(stream, after, 500).await.unwrap();
        if changes.is_empty() {
            break;
        }
        for change in changes {
            assert_eq!(change.revision, after + 1, "revisions are gap-free");
            after = change.revision;
            let (seq, events) = match change.body {
                ChangeBody::Record(record) => (record.seq, record.repeat_count),
                ChangeBody::Repeat { seq, .. } => (seq, 1),
                _ => continue,
            };
            let entry = replayed.entry(seq).or_default();
            entry.0 += events;
            entry.1.push(change.revision);
        }
    }
    assert_eq!(after, revision);
    let stats = node.stream(stream).await.unwrap().unwrap();
    let events: u64 = replayed.values().map(|(events, _)| events).sum();
    if events != stats.events {
        // Which records the changelog and the rows disagree on, to tell a lost update from a
        // change logged twice.
        let stored: BTreeMap<u64, Record> = all_records(node, stream)
            .await
            .into_iter()
            .map(|record| (record.seq, record))
            .collect();
        let differ: Vec<String> = replayed
            .iter()
            .filter(|(seq, (events, _))| stored.get(seq).map(|r| r.repeat_count) != Some(*events))
            .map(|(seq, (events, revisions))| {
                let row = stored.get(seq);
                format!(
                    "seq {seq}: changelog {events} at revisions {revisions:?}, row {:?} ({:?}, revision {:?})",
                    row.map(|r| r.repeat_count),
                    row.map(|r| r.message.as_str()),
                    row.map(|r| r.revision)
                )
            })
            .collect();
        panic!(
            "{stream}: the changelog gives {events} events, the stream counts {}:\n{}",
            stats.events,
            differ.join("\n")
        );
    }
}

/// A database that cannot be reached: opening says so; a node whose database stops taking
/// connections answers writes with `Unavailable` (the server's 503), acknowledges nothing, and
/// writes again once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_unavailable_and_writes_resume() {
    let Some(url) = pg_cluster::database("unreachable") else {
        return;
    };
    // Nothing listens on port 1.
    match PgStore::open("postgres://postgres@127.0.0.1:1/none", options()).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("unreachable"), "{message}")
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("opened a database that is not there"),
    }

    let node = PgStore::open(&url, options()).await.unwrap();
    let stream = name("s");
    let write = |message: &str| {
        node.append(
            &stream,
            vec![
                Event::new("tool", Severity::Info, message)
                    .unwrap()
                    .at(ts(0)),
            ],
            ts(0),
        )
    };
    write("before").await.unwrap();
    let database = url.rsplit('/').next().unwrap().to_owned();
    let admin = url.replace(&format!("/{database}"), "/postgres");
    query(
        &admin,
        &format!("ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false"),
    )
    .await;
    query(
        &admin,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        ),
    )
    .await;
    match node.health().await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected the health check to fail, got {other:?}"),
    }
    match write("while down").await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("unreachable"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    match node.records(&stream, &RecordQuery::default()).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    query(
        &admin,
        &format!("ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true"),
    )
    .await;
    node.health().await.unwrap();
    write("after").await.unwrap();
    assert_eq!(node.metrics().failed_commits, 1);
    let messages: Vec<String> = all_records(&node, &stream)
        .await
        .into_iter()
        .map(|record| record.message)
        .collect();
    assert_eq!(
        messages,
        ["before", "after"],
        "the refused write left nothing"
    );
}

/// Set in a child process of [`acknowledged_events_survive_sigkill_of_a_node`]: the database
/// URL the child node writes to.
const NODE_URL_ENV: &str = "RECAP_TEST_PG_NODE_URL";
/// Streams the child nodes write to (every node writes to every stream).
const CRASH_STREAMS: u64 = 3;

/// The child of [`acknowledged_events_survive_sigkill_of_a_node`]: a node appending from
/// several tasks, printing every acknowledged record as one `ACK <stream> <json>` line.
#[test]
fn crash_node() {
    let Some(url) = std::env::var_os(NODE_URL_ENV) else {
        return;
    };
    let url = url.into_string().unwrap();
    let node_id: u64 = std::env::var("RECAP_TEST_NODE").unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let node = PgStore::open(&url, options()).await.unwrap();
        let tasks: Vec<_> = (0..3u64)
            .map(|task| {
                let node = node.clone();
                tokio::spawn(async move {
                    for i in 0u64.. {
                        let stream =
                            name(&format!("crash-{}", (node_id + task + i) % CRASH_STREAMS));
                        let events: Vec<Event> = (0..1 + (i % 4))
                            .map(|e| {
                                // Every third event repeats a message any node may send.
                                let message = if (i + e) % 3 == 0 {
                                    "shared repeat".to_owned()
                                } else {
                                    format!("node {node_id} task {task} request {i} event {e}")
                                };
                                Event::new("tool", Severity::Info, message)
                                    .unwrap()
                                    .at(ts(0))
                            })
                            .collect();
                        let appended = node.append(&stream, events, ts(0)).await.unwrap();
                        let mut out = String::new();
                        for a in appended {
                            out.push_str(&format!(
                                "ACK {stream} {}\n",
                                serde_json::to_string(&a.record).unwrap()
                            ));
                        }
                        print!("{out}");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// Issue #15: SIGKILL of a node under load loses no acknowledged event. Two child nodes write
/// to the same streams; each round kills one at a random moment while the other goes on, then
/// the other; after each round every acknowledged record is in the database (with at least its
/// acknowledged count), seqs are dense and the changelog is gap-free.
#[test]
fn acknowledged_events_survive_sigkill_of_a_node() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    const ROUNDS: u64 = 6;
    let Some(url) = pg_cluster::database("sigkill") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let spawn = |node: u64| {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "pg_nodes::crash_node",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(NODE_URL_ENV, &url)
            .env("RECAP_TEST_NODE", node.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        (child, lines)
    };
    let mut acked: BTreeMap<(String, u64), Record> = BTreeMap::new();
    let mut total_acks: u64 = 0;
    let take = |lines: &mpsc::Receiver<String>,
                deadline: Instant,
                acked: &mut BTreeMap<(String, u64), Record>,
                total_acks: &mut u64| {
        while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let (stream, json) = rest.split_once(' ').unwrap();
            let record: Record = serde_json::from_str(json).unwrap();
            *total_acks += 1;
            let key = (stream.to_owned(), record.seq);
            if acked
                .get(&key)
                .is_none_or(|known| known.revision < record.revision)
            {
                acked.insert(key, record);
            }
        }
    };
    for round in 0..ROUNDS {
        let (mut first, first_lines) = spawn(round * 2);
        let (mut second, second_lines) = spawn(round * 2 + 1);
        // Both under load for a while, then one dies at a moment that varies by round, and the
        // other goes on alone before it dies too.
        std::thread::sleep(Duration::from_millis(700 + 97 * round));
        first.kill().unwrap();
        first.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200 + 53 * round));
        second.kill().unwrap();
        second.wait().unwrap();
        // Whatever a node printed before it died was acknowledged.
        let drained = Instant::now() + Duration::from_secs(5);
        take(&first_lines, drained, &mut acked, &mut total_acks);
        take(&second_lines, drained, &mut acked, &mut total_acks);

        runtime.block_on(async {
            sessions_ended(&url).await;
            let node = PgStore::open(&url, options()).await.unwrap();
            for stream in 0..CRASH_STREAMS {
                let stream = name(&format!("crash-{stream}"));
                let Some(stats) = node.stream(&stream).await.unwrap() else {
                    assert!(!acked.keys().any(|(s, _)| s == stream.as_str()));
                    continue;
                };
                let stored: BTreeMap<u64, Record> = all_records(&node, &stream)
                    .await
                    .into_iter()
                    .map(|record| (record.seq, record))
                    .collect();
                assert_eq!(
                    stored.keys().copied().collect::<Vec<_>>(),
                    (1..=stats.records).collect::<Vec<_>>(),
                    "seqs are dense"
                );
                assert_eq!(
                    stored.values().map(|r| r.repeat_count).sum::<u64>(),
                    stats.events
                );
                assert_changes_gap_free(&node, &stream, stats.revision).await;
                for ((_, seq), expected) in
                    acked.range((stream.to_string(), 0)..=(stream.to_string(), u64::MAX))
                {
                    let found = stored
                        .get(seq)
                        .unwrap_or_else(|| panic!("acknowledged record {stream}/{seq} is lost"));
                    // A commit may be durable without its answer having reached the node's
                    // caller, so a record may have gained repeats since.
                    let mut expected_now = expected.clone();
                    expected_now.repeat_count = found.repeat_count;
                    expected_now.last_ts = found.last_ts;
                    expected_now.revision = found.revision;
                    assert_eq!(found, &expected_now, "{stream}/{seq}");
                    assert!(found.repeat_count >= expected.repeat_count);
                }
            }
        });
    }
    eprintln!(
        "{total_acks} acknowledgements over {ROUNDS} rounds, {} records checked",
        acked.len()
    );
    assert!(
        total_acks > ROUNDS * 10,
        "the nodes acknowledged too little ({total_acks}) to test anything"
    );
}

/// Issue #15: a database restart under load. Writes while the database is down are answered
/// `Unavailable` and never acknowledged; the node reconnects by itself once it is back; every
/// acknowledged event is there afterwards, seqs dense and the changelog gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_no_acknowledged_event() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    let Some(cluster) = pg_cluster::private("restart") else {
        return;
    };
    let cluster = Arc::new(cluster);
    let url = cluster.0.create_database("restart");
    let node = PgStore::open(&url, options()).await.unwrap();
    let restarted = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|writer| {
            let (node, restarted, stop) = (node.clone(), restarted.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut acked, mut refused, mut after_restart) = (Vec::new(), 0u64, 0u64);
                for i in 0u64.. {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let stream = name(&format!("restart-{}", i % 2));
                    let message = format!("writer {writer} request {i}");
                    let event = Event::new("tool", Severity::Info, message)
                        .unwrap()
                        .at(ts(0));
                    match node.append(&stream, vec![event], ts(0)).await {
                        Ok(mut appended) => {
                            after_restart += u64::from(restarted.load(Ordering::Acquire));
                            acked.push((stream, appended.remove(0).record));
                        }
                        Err(StoreError::Unavailable(_)) => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(other) => panic!("a write failed otherwise than Unavailable: {other}"),
                    }
                }
                (acked, refused, after_restart)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarting = cluster.clone();
    tokio::task::spawn_blocking(move || restarting.0.restart())
        .await
        .unwrap();
    restarted.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Release);
    let (mut acked, mut refused, mut after_restart) = (Vec::new(), 0, 0);
    for writer in writers {
        let (a, r, after) = writer.await.unwrap();
        acked.extend(a);
        refused += r;
        after_restart += after;
    }
    assert!(
        after_restart > 0,
        "no write was acknowledged after the restart"
    );
    eprintln!(
        "{} writes acknowledged ({after_restart} after the restart), {refused} refused as unavailable",
        acked.len()
    );
    for stream in ["restart-0", "restart-1"].map(name) {
        let stored: BTreeMap<u64, Record> = all_records(&node, &stream)
            .await
            .into_iter()
            .map(|record| (record.seq, record))
            .collect();
        let stats = node.stream(&stream).await.unwrap().unwrap();
        assert_eq!(
            stored.keys().copied().collect::<Vec<_>>(),
            (1..=stats.records).collect::<Vec<_>>()
        );
        assert_changes_gap_free(&node, &stream, stats.revision).await;
        for (_, record) in acked.iter().filter(|(s, _)| *s == stream) {
            assert_eq!(
                stored.get(&record.seq),
                Some(&**record),
                "acknowledged {stream}/{}",
                record.seq
            );
        }
    }
}

/// The changelog keeps the newest `changelog_keep` revisions (trimmed in steps of a sixteenth):
/// a replay from 0 starts past 1, which tells the subscriber what it missed, and runs without a
/// gap to the stream's revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changelog_keeps_the_newest_revisions() {
    let Some(url) = pg_cluster::database("changelog") else {
        return;
    };
    let options = StoreOptions {
        changelog_keep: 32,
        ..options()
    };
    let node = PgStore::open(&url, options).await.unwrap();
    let stream = name("s");
    for i in 0..100 {
        let event = Event::new("tool", Severity::Info, format!("event {i}"))
            .unwrap()
            .at(ts(i));
        node.append(&stream, vec![event], ts(0)).await.unwrap();
    }
    let changes = node.changes(&stream, 0, 1_000).await.unwrap();
    let first = changes[0].revision;
    assert!((2..=100 - 32 + 1).contains(&first), "first kept: {first}");
    assert!(
        100 - first < 32 + 32 / 16 + 1,
        "too many kept: from {first}"
    );
    for (change, revision) in changes.iter().zip(first..) {
        assert_eq!(change.revision, revision);
    }
    assert_eq!(changes.last().unwrap().revision, 100);
}

/// Issue #15, change feeds across nodes: a node hears, once per committed batch, every stream
/// another node changed with its new revision, and reads what changed from the changelog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_hears_the_changes_of_another() {
    use recap::store::Wakeup;
    use std::time::Duration;

    let Some(url) = pg_cluster::database("listen") else {
        return;
    };
    let a = PgStore::open(&url, options()).await.unwrap();
    let b = PgStore::open(&url, options()).await.unwrap();
    let mut heard = b.listen();
    // The listener says when it starts listening: nothing before that can be assumed heard.
    async fn next(heard: &mut tokio::sync::broadcast::Receiver<Wakeup>) -> Wakeup {
        tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .expect("a wake-up within 10 s")
            .unwrap()
    }
    assert_eq!(next(&mut heard).await, Wakeup::Resync);

    let stream = name("feed");
    let events = (0..3)
        .map(|i| {
            Event::new("tool", Severity::Info, format!("event {i}"))
                .unwrap()
                .at(ts(i))
        })
        .collect();
    a.append(&stream, events, ts(0)).await.unwrap();
    assert_eq!(
        next(&mut heard).await,
        Wakeup::Changed {
            stream: stream.clone(),
            revision: 3
        },
        "one wake-up for the batch, with the revision after it"
    );
    let changes = b.changes(&stream, 0, 100).await.unwrap();
    assert_eq!(changes.len(), 3);

    a.delete_stream(&stream).await.unwrap();
    assert_eq!(
        next(&mut heard).await,
        Wakeup::Changed {
            stream,
            revision: 0
        }
    );
}
