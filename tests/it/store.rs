//! The store against a real file: durability under SIGKILL, concurrent writers, the schema
//! compatibility fixture, retention, restore after restart, the changelog, notes and history
//! pages.
//!
//! Tests that need a second process re-execute this test binary with `--exact <child test>` and
//! an environment variable naming the data directory; the child tests return at once when the
//! variable is absent, so a normal run treats them as trivially passing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use recap::context::{ContextRequest, Reason};
use recap::event::{Event, Kind, Note, Record, Severity, StreamName, Timestamp, parse_timestamp};
use recap::payload::Payload;
use recap::store::{
    ChangeBody, ImportedRecord, NoteLimits, RecordQuery, Retention, SCHEMA_VERSION, SeqRange,
    Store, StoreError, StoreOptions,
};
use recap::stream::TailCapacity;
use recap::tokens::Encoding;
use serde_json::{Map, Value};

const CRASH_DIR_ENV: &str = "RECAP_TEST_CRASH_DIR";
const HOLD_DIR_ENV: &str = "RECAP_TEST_HOLD_DIR";

/// Store options with anomaly detection off: these tests count records, events and revisions
/// exactly, and detection (tested in `anomalies`) would add its own.
fn quiet() -> StoreOptions {
    StoreOptions {
        anomaly: recap::anomaly::AnomalySettings::off(),
        ..StoreOptions::default()
    }
}

fn ts(seconds: i64) -> Timestamp {
    parse_timestamp("2024-05-01T10:00:00Z").unwrap() + TimeDelta::seconds(seconds)
}

/// Times for tests of age limits and expiry: the writer applies those on its own against the
/// real clock, which never reaches these.
fn later(seconds: i64) -> Timestamp {
    parse_timestamp("2200-01-01T00:00:00Z").unwrap() + TimeDelta::seconds(seconds)
}

fn event_at(kind: &str, severity: Severity, message: &str, at: Timestamp) -> Event {
    Event::new(kind, severity, message).unwrap().at(at)
}

fn name(value: &str) -> StreamName {
    StreamName::new(value).unwrap()
}

fn event(kind: &str, severity: Severity, message: &str, at: i64) -> Event {
    Event::new(kind, severity, message).unwrap().at(ts(at))
}

fn open(dir: &Path) -> Store {
    Store::open(dir, quiet()).unwrap()
}

/// Every stored record of a stream, through forward pages.
fn all_records(store: &Store, stream: &StreamName) -> Vec<Record> {
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
            .unwrap();
        out.extend(page.records);
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

/// Checks what must hold for any stream at rest: dense seqs after the stored prefix, totals
/// equal to the stored records' sums (when nothing was removed), revisions within the stream's.
fn check_stream_consistent(store: &Store, stream: &StreamName) -> Vec<Record> {
    let stats = store.stream(stream).unwrap();
    let records = all_records(store, stream);
    assert_eq!(records.len() as u64, stats.stored_records);
    let first = stats.records + 1 - stats.stored_records;
    for (offset, record) in records.iter().enumerate() {
        assert_eq!(record.seq, first + offset as u64, "seqs are dense");
        assert!(record.revision <= stats.revision);
        assert!(record.repeat_count >= 1);
    }
    if stats.stored_records == stats.records {
        let events: u64 = records.iter().map(|r| r.repeat_count).sum();
        assert_eq!(
            events, stats.events,
            "events total equals the repeat counts"
        );
        let mut kinds: BTreeMap<Kind, u64> = BTreeMap::new();
        for record in &records {
            *kinds.entry(record.kind.clone()).or_default() += record.repeat_count;
        }
        assert_eq!(kinds, stats.kinds);
    }
    records
}

#[test]
fn appends_collapse_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let stream = name("agent-1");
    let appended = store
        .append(
            &stream,
            vec![
                event("tool", Severity::Info, "search(\"redb\") -> 12 results", 0),
                event("tool", Severity::Error, "search timed out", 1),
                event("tool", Severity::Error, "search timed out", 2),
                event("llm", Severity::Info, "thinking", 3),
            ],
            ts(10),
        )
        .wait()
        .unwrap();
    let summary: Vec<(u64, u64, bool, u64)> = appended
        .iter()
        .map(|a| {
            (
                a.record.seq,
                a.record.repeat_count,
                a.collapsed,
                a.record.revision,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, 1, false, 1),
            (2, 1, false, 2),
            (2, 2, true, 3),
            (3, 1, false, 4)
        ]
    );
    // An event without ts happens at `now`, kept to the microsecond.
    let now = parse_timestamp("2024-05-01T11:00:00.123456Z").unwrap() + TimeDelta::nanoseconds(789);
    let late = store
        .append(
            &stream,
            vec![Event::new("plan", Severity::Info, "next").unwrap()],
            now,
        )
        .wait()
        .unwrap();
    assert_eq!(
        late[0].record.first_ts,
        parse_timestamp("2024-05-01T11:00:00.123456Z").unwrap()
    );

    let records = check_stream_consistent(&store, &stream);
    assert_eq!(records[1].repeat_count, 2);
    assert_eq!(records[1].last_ts, ts(2));
    assert_eq!(records[3], *late[0].record);
    assert_eq!(store.revision(&stream), 5);
    let stats = store.stream(&stream).unwrap();
    assert_eq!((stats.records, stats.events), (4, 5));
    assert_eq!(stats.severities.get("error"), Some(&2));
    assert_eq!(store.revision(&name("nobody")), 0);
    assert!(store.stream(&name("nobody")).is_none());
    assert!(matches!(
        store.records(&name("nobody"), &RecordQuery::default()),
        Err(StoreError::UnknownStream(_))
    ));
    // An empty batch changes nothing and creates no stream.
    let empty = store
        .append(&name("empty"), Vec::new(), ts(0))
        .wait()
        .unwrap();
    assert!(empty.is_empty());
    assert!(store.stream(&name("empty")).is_none());
    store.close().unwrap();
}

/// A record written several times in one batch (here a repeat's target, and the anomaly
/// record of the loop it is) keeps one row per batch, its latest version: what was answered is
/// what the file holds after a restart.
#[test]
fn a_record_written_again_in_one_batch_is_stored_at_its_latest_version() {
    let dir = tempfile::tempdir().unwrap();
    // The 40 calls collapse into one record, rewritten 39 times within the batch. Anomaly
    // detection is on, as in the server: they are also a `repeat` episode whose record is
    // raised at the third call and updated once, at the end of the request, with what its
    // latest update point (the 38th call) says.
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let stream = name("agent-1");
    let calls: Vec<Event> = (0..40)
        .map(|at| event("tool", Severity::Info, "click #submit", at))
        .chain([event("llm", Severity::Info, "thinking", 41)])
        .collect();
    store.append(&stream, calls, ts(50)).wait().unwrap();
    let before = check_stream_consistent(&store, &stream);
    let summary: Vec<(&str, u64)> = before
        .iter()
        .map(|record| (record.kind.as_str(), record.repeat_count))
        .collect();
    assert_eq!(summary, [("tool", 40), ("anomaly", 2), ("llm", 1)]);
    assert!(before[1].message.starts_with("the last 38 actions repeat"));
    store.close().unwrap();

    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(check_stream_consistent(&store, &stream), before);
    store.close().unwrap();
}

#[test]
fn pending_resolves_in_async_code() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let appended = runtime
        .block_on(async {
            store
                .append(
                    &name("a"),
                    vec![event("tool", Severity::Info, "x", 0)],
                    ts(0),
                )
                .await
        })
        .unwrap();
    assert_eq!(appended[0].record.seq, 1);
    store.close().unwrap();
}

/// Eight threads to one stream, eight more each to its own stream and a shared one: nothing is
/// lost or duplicated, seqs are dense, totals match what was written.
#[test]
fn concurrent_writers_lose_nothing() {
    const THREADS: usize = 8;
    const BATCHES: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let shared = name("shared");
    let mut handles = Vec::new();
    for thread in 0..THREADS {
        let store = store.clone();
        let shared = shared.clone();
        handles.push(std::thread::spawn(move || {
            let own = name(&format!("own-{thread}"));
            let mut seqs = Vec::new();
            let mut events = 0;
            for batch in 0..BATCHES {
                // 1 to 3 events; the last repeats the one before it, so it collapses (both are
                // in one batch, which the writer applies without interleaving).
                let size = 1 + (thread + batch) % 3;
                let mut batch_events: Vec<Event> = (0..size)
                    .map(|i| {
                        let message = format!("t{thread} b{batch} e{i} {}", "x".repeat(i * 40));
                        event("tool", Severity::ALL[i % 5], &message, batch as i64)
                    })
                    .collect();
                if size > 1 {
                    batch_events[size - 1] = batch_events[size - 2].clone();
                }
                events += size;
                for stream in [&shared, &own] {
                    let appended = store
                        .append(stream, batch_events.clone(), ts(0))
                        .wait()
                        .unwrap();
                    assert_eq!(appended.len(), size);
                    if size > 1 {
                        assert!(appended[size - 1].collapsed);
                    }
                    if stream == &shared {
                        seqs.extend(
                            appended
                                .iter()
                                .filter(|a| !a.collapsed)
                                .map(|a| a.record.seq),
                        );
                    }
                }
            }
            (seqs, events)
        }));
    }
    let mut all_seqs = Vec::new();
    let mut all_events = 0;
    for handle in handles {
        let (seqs, events) = handle.join().unwrap();
        all_seqs.extend(seqs);
        all_events += events;
    }
    all_seqs.sort_unstable();
    let expected: Vec<u64> = (1..=all_seqs.len() as u64).collect();
    assert_eq!(all_seqs, expected, "every new record got its own seq");
    let stats = store.stream(&shared).unwrap();
    assert_eq!(stats.events, all_events as u64);
    assert_eq!(stats.records, all_seqs.len() as u64);
    assert_eq!(stats.revision, all_events as u64, "one revision per event");
    check_stream_consistent(&store, &shared);
    for thread in 0..THREADS {
        let own = name(&format!("own-{thread}"));
        check_stream_consistent(&store, &own);
    }
    assert_eq!(store.streams().len(), THREADS + 1);
    store.close().unwrap();
    // The same after a restart.
    let store = open(dir.path());
    assert_eq!(store.stream(&shared).unwrap().events, all_events as u64);
    check_stream_consistent(&store, &shared);
}

/// The child of [`acknowledged_events_survive_sigkill`]: appends from several threads and
/// prints every acknowledged record as one `ACK <json>` line.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    // A cache far smaller than the streams: they are evicted and loaded back all the time.
    let options = StoreOptions {
        cache_bytes: 64 * 1024,
        tail: TailCapacity {
            records: 256,
            severe: 16,
            block_bytes: 64 * 1024,
        },
        ..quiet()
    };
    let store = Store::open(&dir, options).unwrap();
    let round: u64 = std::env::var("RECAP_TEST_ROUND").unwrap().parse().unwrap();
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || {
            let request = ContextRequest::new(500, Encoding::Cl100kBase);
            for i in 0.. {
                let stream = name(&format!("crash-{}", i % CRASH_STREAMS));
                drop(store.context(&stream, &request, ts(0)).unwrap());
                println!("EVICTIONS {}", store.cache_metrics().evictions);
            }
        })
    };
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut rng = XorShift(round * 1_000 + thread + 1);
                for i in 0.. {
                    let stream = name(&format!("crash-{}", rng.below(CRASH_STREAMS)));
                    let size = 1 + rng.below(8) as usize;
                    let mut events = Vec::with_capacity(size);
                    for e in 0..size {
                        let len = rng.below(2_000) as usize;
                        let message =
                            format!("r{round} t{thread} i{i} e{e} {}", "log ".repeat(len / 4));
                        let mut event = event("tool", Severity::ALL[e % 5], &message, i);
                        if rng.below(3) == 0 {
                            let mut payload = Map::new();
                            payload.insert("i".into(), Value::from(i));
                            event.payload = Some(Payload::from_object(&payload));
                            event.actor = Some(format!("thread-{thread}"));
                        }
                        if e > 0 && rng.below(4) == 0 {
                            // A repeat of the previous event: it collapses.
                            event = events.last().cloned().unwrap();
                        }
                        events.push(event);
                    }
                    let appended = store.append(&stream, events, ts(i)).wait().unwrap();
                    let mut out = String::new();
                    for a in appended {
                        out.push_str(&format!(
                            "ACK {} {}\n",
                            stream,
                            serde_json::to_string(&a.record).unwrap()
                        ));
                    }
                    print!("{out}");
                }
            })
        })
        .collect();
    for thread in threads.into_iter().chain([reader]) {
        thread.join().unwrap();
    }
}

/// Streams the crash children write to.
const CRASH_STREAMS: u64 = 6;

/// A tiny deterministic generator, so tests need no extra crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn child(test: &str, env: &str, dir: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(env, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

/// Reads a child's stdout lines on a thread, so the parent can wait with a deadline.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// DESIGN section 4: a kill -9 at any moment loses no acknowledged event and leaves a file that
/// opens. The child is killed at random moments, 20 times, each round continuing on the file the
/// last one left; its cache is far smaller than its streams, so they are evicted and loaded back
/// throughout.
#[test]
fn acknowledged_events_survive_sigkill() {
    const ROUNDS: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = XorShift(0x5eed);
    // The newest acknowledged state of each record: later acks of a record (repeats) supersede.
    let mut acked: BTreeMap<(String, u64), Record> = BTreeMap::new();
    let mut total_acks = 0;
    let mut evictions = 0;
    for round in 0..ROUNDS {
        let mut process = child("store::crash_child", CRASH_DIR_ENV, dir.path())
            .env("RECAP_TEST_ROUND", round.to_string())
            .spawn()
            .unwrap();
        let lines = lines_of(&mut process);
        // Kill once the child has acknowledged something, after a random extra delay.
        let started = Instant::now();
        let mut first_ack = None;
        // Long enough for the reader to load streams that the writer then evicts; the last
        // round, if none has evicted yet, waits until one eviction has happened.
        let extra = Duration::from_millis(150 + rng.below(400));
        let must_evict = round + 1 == ROUNDS && evictions == 0;
        let mut evicted = false;
        let mut pending_lines = Vec::new();
        while started.elapsed() < Duration::from_secs(20) {
            match lines.recv_timeout(Duration::from_millis(5)) {
                Ok(line) => {
                    if line.starts_with("ACK ") && first_ack.is_none() {
                        first_ack = Some(Instant::now());
                    }
                    evicted |= line.starts_with("EVICTIONS ") && line != "EVICTIONS 0";
                    pending_lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if first_ack.is_some_and(|at| at.elapsed() >= extra) && (evicted || !must_evict) {
                break;
            }
        }
        process.kill().unwrap();
        process.wait().unwrap();
        // Whatever the child printed before it died was acknowledged.
        pending_lines.extend(lines.iter());
        for line in pending_lines {
            if let Some(count) = line.strip_prefix("EVICTIONS ") {
                evictions += count.parse::<u64>().unwrap();
            }
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let (stream, json) = rest.split_once(' ').unwrap();
            let record: Record = serde_json::from_str(json).unwrap();
            total_acks += 1;
            let key = (stream.to_owned(), record.seq);
            let newer = acked
                .get(&key)
                .is_none_or(|known| known.revision < record.revision);
            if newer {
                acked.insert(key, record);
            }
        }

        let store = open(dir.path());
        for stream in 0..CRASH_STREAMS {
            let stream = name(&format!("crash-{stream}"));
            if store.stream(&stream).is_none() {
                assert!(!acked.keys().any(|(s, _)| s == stream.as_str()));
                continue;
            }
            let stored: BTreeMap<u64, Record> = check_stream_consistent(&store, &stream)
                .into_iter()
                .map(|r| (r.seq, r))
                .collect();
            for ((_, seq), expected) in
                acked.range((stream.to_string(), 0)..=(stream.to_string(), u64::MAX))
            {
                let found = stored
                    .get(seq)
                    .unwrap_or_else(|| panic!("acknowledged record {stream}/{seq} is lost"));
                // A commit may have become durable without its acknowledgement reaching us, so
                // a record may have gained repeats since; everything else is byte for byte.
                let mut expected_now = expected.clone();
                expected_now.repeat_count = found.repeat_count;
                expected_now.last_ts = found.last_ts;
                expected_now.revision = found.revision;
                assert_eq!(found, &expected_now, "{stream}/{seq}");
                assert!(found.repeat_count >= expected.repeat_count);
                assert!(found.revision >= expected.revision);
            }
        }
        store.close().unwrap();
    }
    assert!(
        total_acks > ROUNDS,
        "the children acknowledged too little ({total_acks}) to test anything"
    );
    assert!(
        evictions > 0,
        "the children's caches never evicted a stream"
    );
}

/// Holds the store open until its stdin closes (for the in-use test).
#[test]
fn hold_child() {
    let Some(dir) = std::env::var_os(HOLD_DIR_ENV) else {
        return;
    };
    let store = Store::open(&dir, quiet()).unwrap();
    println!("\nHOLDING-OPEN");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(store);
}

#[test]
fn a_file_held_by_another_process_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = child("store::hold_child", HOLD_DIR_ENV, dir.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut process);
    loop {
        let line = lines.recv_timeout(Duration::from_secs(30)).unwrap();
        if line.contains("HOLDING-OPEN") {
            break;
        }
    }
    let error = Store::open(dir.path(), quiet())
        .err()
        .expect("a second process cannot open the file");
    assert!(matches!(error, StoreError::InUse { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("is in use by a running recap server; use --server")
    );
    process.kill().unwrap();
    process.wait().unwrap();
    // Once the holder is gone, the file opens.
    open(dir.path()).close().unwrap();
}

#[test]
fn a_file_open_in_this_process_is_in_use_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let error = Store::open(dir.path(), quiet())
        .err()
        .expect("the file is open");
    assert!(matches!(error, StoreError::InUse { .. }), "{error}");
    store.close().unwrap();
    open(dir.path()).close().unwrap();
}

#[test]
fn newer_schemas_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).close().unwrap();
    let path = dir.path().join(recap::store::DATA_FILE_NAME);
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("recap_meta"))
                .unwrap();
            meta.insert("schema_version", u64::from(SCHEMA_VERSION) + 1)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let error = Store::open(dir.path(), quiet()).err().unwrap();
    assert!(
        matches!(
            error,
            StoreError::SchemaTooNew { found, supported, .. }
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION
        ),
        "{error}"
    );

    let garbage = tempfile::tempdir().unwrap();
    std::fs::write(
        garbage.path().join(recap::store::DATA_FILE_NAME),
        "this is not a database, just some text that is long enough to look like a header"
            .repeat(100),
    )
    .unwrap();
    let error = Store::open(garbage.path(), quiet()).err().unwrap();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");

    let foreign = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(foreign.path().join(recap::store::DATA_FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<u64, u64>::new("someone_else"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        txn.commit().unwrap();
    }
    let error = Store::open(foreign.path(), quiet()).err().unwrap();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
}

/// The committed data file written by schema `version`.
fn fixture_path(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/store/v{version}.redb"))
}

/// What every fixture holds; written by [`write_fixture`] and checked by
/// [`every_fixture_still_opens`].
fn fill_fixture(store: &Store) {
    let agent = name("agent-1");
    let mut payload = Map::new();
    payload.insert("query".into(), Value::from("redb durability"));
    let mut with_payload = event(
        "tool",
        Severity::Info,
        "search(\"redb durability\") -> 12 results",
        1,
    );
    with_payload.payload = Some(Payload::from_object(&payload));
    with_payload.actor = Some("searcher".into());
    with_payload.step_id = Some("step-1".into());
    with_payload.display_message = Some("search ok".into());
    store
        .append(
            &agent,
            vec![
                event("plan", Severity::Info, "find the durability docs", 0),
                with_payload,
                event("tool", Severity::Error, "search timed out after 30s", 2),
                event("tool", Severity::Error, "search timed out after 30s", 3),
                event("tool", Severity::Error, "search timed out after 30s", 4),
                event("llm", Severity::Warning, "rate limited\nretrying", 5),
            ],
            ts(0),
        )
        .wait()
        .unwrap();
    store
        .add_note(&agent, "use the staging database".into(), None, ts(6))
        .wait()
        .unwrap();
    let doomed = store
        .add_note(&agent, "temporary".into(), None, ts(7))
        .wait()
        .unwrap();
    store.delete_note(&agent, doomed.id).wait().unwrap();
    let imported = name("imported");
    store
        .import(
            &imported,
            vec![ImportedRecord {
                event: Event::new("retry", Severity::Warning, "retry 3/5").unwrap(),
                first_ts: ts(100),
                last_ts: ts(160),
                repeat_count: 7,
                note: None,
            }],
        )
        .wait()
        .unwrap();
    store
        .set_retention(
            &imported,
            Retention {
                max_records: Some(1_000),
                // Long: the writer applies age limits against the real clock.
                max_age: Some(TimeDelta::days(365 * 200)),
            },
        )
        .wait()
        .unwrap();
}

/// Writes `fixtures/store/v{SCHEMA_VERSION}.redb`. Run once per schema version, by hand:
/// `cargo test --test it store::write_fixture -- --ignored`.
#[test]
#[ignore = "writes the committed fixture; run by hand when a schema version is introduced"]
fn write_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill_fixture(&store);
    store.close().unwrap();
    // Compacted, so the committed file stays small.
    let mut db = redb::Database::open(dir.path().join(recap::store::DATA_FILE_NAME)).unwrap();
    while db.compact().unwrap() {}
    drop(db);
    let target = fixture_path(SCHEMA_VERSION);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(dir.path().join(recap::store::DATA_FILE_NAME), target).unwrap();
}

/// The compatibility test every later schema must keep passing: a file written by any schema
/// opens (upgraded if it is older), reads the same, and opens again.
#[test]
fn every_fixture_still_opens() {
    for version in 1..=SCHEMA_VERSION {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture_path(version),
            dir.path().join(recap::store::DATA_FILE_NAME),
        )
        .unwrap();
        check_fixture(dir.path());
        // Upgraded in place: it opens as the current schema, with the same content.
        let path = dir.path().join(recap::store::DATA_FILE_NAME);
        assert_eq!(
            schema_version(&path),
            u64::from(SCHEMA_VERSION),
            "v{version}"
        );
        let store = open(dir.path());
        assert_eq!(all_records(&store, &name("agent-1")).len(), 7, "v{version}");
        store.close().unwrap();
    }
}

fn schema_version(path: &Path) -> u64 {
    use redb::ReadableDatabase;
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn
        .open_table(redb::TableDefinition::<&str, u64>::new("recap_meta"))
        .unwrap();
    meta.get("schema_version").unwrap().unwrap().value()
}

/// Opens a copy of a fixture and checks it holds what [`fill_fixture`] wrote.
fn check_fixture(dir: &Path) {
    let store = open(dir);
    let agent = name("agent-1");
    let stats = store.stream(&agent).unwrap();
    assert_eq!((stats.records, stats.events, stats.notes), (6, 8, 1));
    assert_eq!(stats.revision, 11);
    let records = all_records(&store, &agent);
    let lines: Vec<(u64, &str, &str, u64)> = records
        .iter()
        .map(|r| (r.seq, r.kind.as_str(), r.message.as_str(), r.repeat_count))
        .collect();
    assert_eq!(
        lines,
        vec![
            (1, "plan", "find the durability docs", 1),
            (2, "tool", "search(\"redb durability\") -> 12 results", 1),
            (3, "tool", "search timed out after 30s", 3),
            (4, "llm", "rate limited\nretrying", 1),
            (5, "note", "use the staging database", 1),
            (6, "note", "temporary", 1),
        ]
    );
    assert_eq!(records[1].actor.as_deref(), Some("searcher"));
    assert_eq!(records[1].step_id.as_deref(), Some("step-1"));
    assert_eq!(records[1].display_message.as_deref(), Some("search ok"));
    assert_eq!(
        records[1].payload.as_ref().unwrap().to_object()["query"],
        Value::from("redb durability")
    );
    assert_eq!((records[2].first_ts, records[2].last_ts), (ts(2), ts(4)));
    let notes = store.notes(&agent, ts(10)).unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].text, "use the staging database");
    let changes = store.changes(&agent, 0, 100).unwrap();
    let revisions: Vec<u64> = changes.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, (1..=11).collect::<Vec<u64>>());
    let window = store
        .context(
            &agent,
            &ContextRequest::new(500, Encoding::Cl100kBase),
            ts(10),
        )
        .unwrap()
        .unwrap();
    assert!(
        window
            .text
            .starts_with("## Notes\n- use the staging database\n")
    );
    assert!(window.text.contains("search timed out after 30s x3"));

    let imported = store.stream(&name("imported")).unwrap();
    assert_eq!((imported.records, imported.events), (1, 7));
    assert_eq!(imported.retention.max_records, Some(1_000));
    assert_eq!(imported.retention.max_age, Some(TimeDelta::days(365 * 200)));
    let record = &all_records(&store, &name("imported"))[0];
    assert_eq!((record.first_ts, record.last_ts), (ts(100), ts(160)));

    // And it takes new writes.
    let appended = store
        .append(
            &agent,
            vec![event("tool", Severity::Info, "more", 20)],
            ts(20),
        )
        .wait()
        .unwrap();
    assert_eq!(
        (appended[0].record.seq, appended[0].record.revision),
        (7, 12)
    );
    store.close().unwrap();
}

/// A fresh store with the fixture's content has the same layout as the current schema's
/// committed fixture: if this fails, the schema changed and needs a new version and fixture.
#[test]
fn current_schema_matches_its_fixture_contents() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill_fixture(&store);
    let fresh: Vec<Record> = all_records(&store, &name("agent-1"));
    store.close().unwrap();
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_path(SCHEMA_VERSION),
        copy.path().join(recap::store::DATA_FILE_NAME),
    )
    .unwrap();
    let old = open(copy.path());
    assert_eq!(all_records(&old, &name("agent-1")), fresh);
    old.close().unwrap();
    // Byte for byte: an encoding change that reads back the same still needs a new version.
    for table in ["recap_records", "recap_changes", "recap_notes"] {
        assert_eq!(
            raw_rows(&dir.path().join(recap::store::DATA_FILE_NAME), table),
            raw_rows(&copy.path().join(recap::store::DATA_FILE_NAME), table),
            "{table}"
        );
    }
}

/// Every (key, value) of a per-stream table, as stored.
fn raw_rows(path: &Path, table: &str) -> Vec<((u64, u64), Vec<u8>)> {
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn
        .open_table(redb::TableDefinition::<(u64, u64), &[u8]>::new(table))
        .unwrap();
    table
        .iter()
        .unwrap()
        .map(|entry| {
            let (key, value) = entry.unwrap();
            (key.value(), value.value().to_vec())
        })
        .collect()
}

#[test]
fn retention_keeps_totals_and_never_removes_notes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let stream = name("long");
    let events: Vec<Event> = (0..300)
        .map(|i| {
            let kind = ["tool", "llm", "plan"][i % 3];
            event_at(
                kind,
                Severity::ALL[i % 5],
                &format!("event {i}"),
                later(i as i64),
            )
        })
        .collect();
    store.append(&stream, events, later(0)).wait().unwrap();
    let old_note = store
        .add_note(&stream, "remember this".into(), None, later(300))
        .wait()
        .unwrap();
    let before = store.stream(&stream).unwrap();
    store
        .set_retention(
            &stream,
            Retention {
                max_records: Some(50),
                max_age: None,
            },
        )
        .wait()
        .unwrap();
    store.maintain(later(400)).wait().unwrap();
    let after = store.stream(&stream).unwrap();
    assert_eq!(after.stored_records, 50);
    assert_eq!(after.records, before.records);
    assert_eq!(after.events, before.events);
    assert_eq!(after.kinds, before.kinds);
    assert_eq!(after.severities, before.severities);
    let records = check_stream_consistent(&store, &stream);
    assert_eq!(records.first().unwrap().seq, before.records - 49);
    // Paging through the removed seqs says so, and says which.
    let page = |after, before| {
        let query = RecordQuery {
            after,
            before,
            limit: 10,
            ..RecordQuery::default()
        };
        store.records(&stream, &query).unwrap()
    };
    let from_start = page(Some(0), None);
    assert_eq!(from_start.records[0].seq, 252);
    assert_eq!(from_start.removed, Some(SeqRange { from: 1, to: 251 }));
    assert_eq!(
        page(Some(99), Some(120)).removed,
        Some(SeqRange { from: 100, to: 119 })
    );
    assert!(page(Some(99), Some(120)).records.is_empty());
    assert_eq!(page(Some(260), None).removed, None);
    assert_eq!(
        store.notes(&stream, later(400)).unwrap(),
        vec![old_note.clone()]
    );
    // The context still accounts for every record, and shows none that was removed.
    let window = store
        .context(
            &stream,
            &ContextRequest::new(100_000, Encoding::Cl100kBase),
            later(400),
        )
        .unwrap()
        .unwrap();
    assert_eq!(window.totals.records, before.records);
    assert_eq!(window.totals.events, before.events);
    assert!(
        window
            .items
            .iter()
            .all(|item| item.seq > before.records - 50)
    );
    assert!(window.text.contains("## Earlier (251 events"));

    // Age: everything before later(280) goes, the notes stay however old they are.
    store
        .set_retention(
            &stream,
            Retention {
                max_records: None,
                max_age: Some(TimeDelta::seconds(120)),
            },
        )
        .wait()
        .unwrap();
    store.maintain(later(400)).wait().unwrap();
    let records = all_records(&store, &stream);
    assert!(records.iter().all(|r| r.last_ts >= later(280)));
    assert_eq!(records.first().unwrap().last_ts, later(280));
    assert_eq!(store.stream(&stream).unwrap().events, before.events);
    assert_eq!(store.notes(&stream, later(400)).unwrap(), vec![old_note]);
    let revision = store.revision(&stream);
    // Removed records' changes can no longer be replayed: the gap shows.
    let changes = store.changes(&stream, 0, 10).unwrap();
    assert!(changes[0].revision > 1);

    // And a restart sees the same.
    store.close().unwrap();
    let store = open(dir.path());
    assert_eq!(store.revision(&stream), revision);
    assert_eq!(all_records(&store, &stream), records);
    assert_eq!(store.stream(&stream).unwrap().events, before.events);
}

#[test]
fn default_retention_is_applied_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        retention: Retention {
            max_records: Some(100),
            max_age: None,
        },
        ..quiet()
    };
    let store = Store::open(dir.path(), options.clone()).unwrap();
    let stream = name("big");
    // More than one maintenance chunk of records to remove.
    for chunk in 0..3 {
        let events: Vec<Event> = (0..2_000)
            .map(|i| event("tool", Severity::Info, &format!("{chunk}-{i}"), i))
            .collect();
        store.append(&stream, events, ts(0)).wait().unwrap();
    }
    store.maintain(ts(0)).wait().unwrap();
    let stats = store.stream(&stream).unwrap();
    assert_eq!((stats.records, stats.stored_records), (6_000, 100));
    assert_eq!(stats.retention.max_records, Some(100));
    check_stream_consistent(&store, &stream);
}

/// A restart rebuilds each stream's tail exactly: the same context, byte for byte, at several
/// budgets, for a stream much longer than its tail and one shorter.
#[test]
fn reopen_restores_the_same_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        tail: TailCapacity {
            records: 100,
            severe: 5,
            ..TailCapacity::default()
        },
        ..quiet()
    };
    let store = Store::open(dir.path(), options.clone()).unwrap();
    let long = name("long");
    let short = name("short");
    let mut rng = XorShift(7);
    for batch in 0..30 {
        let events: Vec<Event> = (0..25)
            .map(|i| {
                let at = batch * 25 + i;
                let severity = Severity::ALL[rng.below(5) as usize];
                let message = if rng.below(4) == 0 {
                    "again".to_owned()
                } else {
                    format!("step {at} {}", "detail ".repeat(rng.below(30) as usize))
                };
                // A task now and then: the first ones and the latest stay in reach.
                let kind = match (at, rng.below(40)) {
                    (0, _) | (_, 0) => "task",
                    (_, pick) => ["tool", "llm", "rag"][pick as usize % 3],
                };
                event(kind, severity, &message, at)
            })
            .collect();
        store.append(&long, events, ts(0)).wait().unwrap();
    }
    store
        .add_note(&long, "the deploy key is in vault".into(), None, ts(0))
        .wait()
        .unwrap();
    store
        .add_note(&long, "expires".into(), Some(ts(100_000)), ts(0))
        .wait()
        .unwrap();
    store
        .append(
            &short,
            vec![event("tool", Severity::Error, "boom", 1)],
            ts(0),
        )
        .wait()
        .unwrap();
    let requests: Vec<ContextRequest> = [50, 300, 2_000, 30_000]
        .into_iter()
        .map(|budget| ContextRequest::new(budget, Encoding::Cl100kBase))
        .collect();
    let now = ts(2_000);
    let contexts = |store: &Store| {
        let mut out = Vec::new();
        for stream in [&long, &short] {
            for request in &requests {
                out.push(store.context(stream, request, now).unwrap().unwrap());
            }
        }
        out
    };
    let before = contexts(&store);
    let stats_before = store.streams();
    store.close().unwrap();
    let store = Store::open(dir.path(), options).unwrap();
    let after = contexts(&store);
    for (before, after) in before.iter().zip(&after) {
        assert_eq!(before.text, after.text);
        assert_eq!(before, after);
    }
    // The stream's first task (seq 1, far older than the tail) is in every window with room.
    for window in &after[1..4] {
        assert!(
            window
                .items
                .iter()
                .any(|item| item.seq == 1 && item.included),
            "{}",
            window.text
        );
    }
    assert_eq!(store.streams(), stats_before);
    // Collapse continues where it left off: the newest record is still a repeat target.
    let newest = all_records(&store, &long).pop().unwrap();
    let mut repeat = Event::new(
        newest.kind.as_str(),
        newest.severity,
        newest.message.clone(),
    )
    .unwrap()
    .at(newest.last_ts);
    repeat.actor = newest.actor.clone();
    let appended = store.append(&long, vec![repeat], ts(0)).wait().unwrap();
    assert!(appended[0].collapsed);
    assert_eq!(appended[0].record.seq, newest.seq);
}

/// The restore hints in a stream's row are taken before the row's own batch is applied: after a
/// crash they must still lead to every record that batch added, even when retention had emptied
/// the tail just before.
#[test]
fn a_crash_right_after_retention_emptied_the_tail_restores_the_new_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let stream = name("aged");
    let old = vec![
        event("tool", Severity::Info, "old one", 0),
        event("tool", Severity::Info, "old two", 1),
    ];
    store.append(&stream, old, ts(0)).wait().unwrap();
    let age_limit = Retention {
        max_records: None,
        max_age: Some(TimeDelta::seconds(60)),
    };
    store.set_retention(&stream, age_limit).wait().unwrap();
    store.maintain(later(0)).wait().unwrap();
    assert_eq!(store.stream(&stream).unwrap().stored_records, 0);
    // No age limit any more, so no background step writes the row again before the "crash".
    store
        .set_retention(&stream, Retention::default())
        .wait()
        .unwrap();
    store.maintain(later(0)).wait().unwrap();
    let fresh = |at| event_at("tool", Severity::Info, "fresh", later(at));
    let appended = store
        .append(&stream, vec![fresh(10)], ts(0))
        .wait()
        .unwrap();
    assert_eq!(appended[0].record.seq, 3);

    // A crash now: the file as the last acknowledged commit left it.
    let crashed = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), crashed.path().join(entry.file_name())).unwrap();
    }
    drop(store);
    let store = open(crashed.path());
    let context = store
        .context(
            &stream,
            &ContextRequest::new(2_000, Encoding::Cl100kBase),
            later(20),
        )
        .unwrap()
        .unwrap();
    assert!(context.text.contains("fresh"), "{}", context.text);
    let again = store
        .append(&stream, vec![fresh(11)], ts(0))
        .wait()
        .unwrap();
    assert!(again[0].collapsed, "the restored tail still holds seq 3");
    assert_eq!(again[0].record.seq, 3);
}

/// Every revision is replayed exactly once, in order, equal to what subscribers were sent.
#[test]
fn changelog_replays_every_revision_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let stream = name("watched");
    let mut feed = store.subscribe();
    let mut published = Vec::new();
    for round in 0..20i64 {
        let events = vec![
            event("tool", Severity::Info, &format!("call {round}"), round),
            event("tool", Severity::Error, "flaky", round),
            event("tool", Severity::Error, "flaky", round),
        ];
        store.append(&stream, events, ts(0)).wait().unwrap();
        if round % 5 == 0 {
            let note = store
                .add_note(&stream, format!("note {round}"), None, ts(round))
                .wait()
                .unwrap();
            if round % 10 == 0 {
                assert!(store.delete_note(&stream, note.id).wait().unwrap());
            }
        }
        while let Ok(changes) = feed.try_recv() {
            published.extend(changes.iter().cloned());
        }
    }
    assert!(!store.delete_note(&stream, 999).wait().unwrap());
    let revision = store.revision(&stream);
    let published_revisions: Vec<u64> = published.iter().map(|c| c.revision).collect();
    assert_eq!(published_revisions, (1..=revision).collect::<Vec<u64>>());
    let replayed = store.changes(&stream, 0, 10_000).unwrap();
    assert_eq!(replayed, published);
    // Paging through with small limits gives the same, from any starting point.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.changes(&stream, after, 7).unwrap();
        let Some(last) = page.last() else { break };
        after = last.revision;
        paged.extend(page);
    }
    assert_eq!(paged, published);
    assert_eq!(
        store.changes(&stream, 40, 5).unwrap(),
        published[40..45].to_vec()
    );
    assert!(store.changes(&stream, revision, 5).unwrap().is_empty());
    // Each repeat change carries the count the record had at that revision: 2, 3, 4, ...
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    for change in &replayed {
        match &change.body {
            ChangeBody::Record(record) => {
                counts.insert(record.seq, record.repeat_count);
            }
            ChangeBody::Repeat {
                seq, repeat_count, ..
            } => {
                let count = counts.get_mut(seq).unwrap();
                assert_eq!(*repeat_count, *count + 1, "repeat of {seq}");
                *count = *repeat_count;
            }
            _ => {}
        }
    }
    for record in all_records(&store, &stream) {
        assert_eq!(counts[&record.seq], record.repeat_count);
    }
    assert!(counts.values().any(|&count| count > 2));
    store.close().unwrap();
}

#[test]
fn a_short_changelog_shows_its_gap() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        changelog_keep: 10,
        ..quiet()
    };
    let store = Store::open(dir.path(), options).unwrap();
    let stream = name("s");
    for i in 0..50 {
        store
            .append(
                &stream,
                vec![event("tool", Severity::Info, "same", i)],
                ts(0),
            )
            .wait()
            .unwrap();
    }
    store.maintain(ts(100)).wait().unwrap();
    let changes = store.changes(&stream, 0, 100).unwrap();
    assert_eq!(changes.first().unwrap().revision, 41);
    assert_eq!(changes.len(), 10);
    let changes = store.changes(&stream, 45, 100).unwrap();
    assert_eq!(changes.first().unwrap().revision, 46);
}

#[test]
fn notes_add_list_delete_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let stream = name("notes");
    let keep = store
        .add_note(&stream, "keep".into(), None, later(0))
        .wait()
        .unwrap();
    let brief = store
        .add_note(&stream, "brief".into(), Some(later(60)), later(1))
        .wait()
        .unwrap();
    assert_eq!((keep.id, brief.id), (1, 2));
    assert_eq!(
        store.notes(&stream, later(30)).unwrap(),
        vec![keep.clone(), brief.clone()]
    );
    assert_eq!(store.notes(&stream, later(60)).unwrap(), vec![keep.clone()]);
    // The audit trail: each note is also an event.
    let records = all_records(&store, &stream);
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.kind.as_str() == "note"));
    let revision = store.revision(&stream);
    assert_eq!(revision, 4);
    // Expiry deletes the note, as a change of its own.
    store.maintain(later(61)).wait().unwrap();
    assert_eq!(store.revision(&stream), 5);
    let last = store.changes(&stream, revision, 10).unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].body, ChangeBody::NoteDeleted { id: brief.id });
    assert!(store.delete_note(&stream, keep.id).wait().unwrap());
    assert!(!store.delete_note(&stream, keep.id).wait().unwrap());
    assert!(store.notes(&stream, later(0)).unwrap().is_empty());
    assert!(matches!(
        store.delete_note(&name("nobody"), 1).wait(),
        Err(StoreError::UnknownStream(_))
    ));
    assert!(matches!(
        store.notes(&name("nobody"), later(0)),
        Err(StoreError::UnknownStream(_))
    ));
    // Ids are not reused after a restart.
    store.close().unwrap();
    let store = open(dir.path());
    let next: Note = store
        .add_note(&stream, "after restart".into(), None, later(100))
        .wait()
        .unwrap();
    assert_eq!(next.id, 3);
}

#[test]
fn history_pages_filter_and_page_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let stream = name("h");
    let events: Vec<Event> = (0..100)
        .map(|i| {
            let kind = if i % 10 == 0 { "plan" } else { "tool" };
            event(kind, Severity::ALL[(i % 5) as usize], &format!("e{i}"), i)
        })
        .collect();
    store.append(&stream, events, ts(0)).wait().unwrap();
    let query = |query: RecordQuery| store.records(&stream, &query).unwrap();
    let page = query(RecordQuery {
        limit: 30,
        ..RecordQuery::default()
    });
    assert_eq!(page.records.len(), 30);
    assert_eq!(page.next, Some(30));
    let page = query(RecordQuery {
        after: Some(90),
        limit: 30,
        ..RecordQuery::default()
    });
    assert_eq!(
        page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (91..=100).collect::<Vec<_>>()
    );
    assert_eq!(page.next, None);
    let page = query(RecordQuery {
        before: Some(50),
        limit: 5,
        ..RecordQuery::default()
    });
    assert_eq!(
        page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![45, 46, 47, 48, 49]
    );
    assert_eq!(page.next, Some(45));
    let plans = query(RecordQuery {
        kinds: Some(BTreeSet::from([Kind::new("plan").unwrap()])),
        ..RecordQuery::default()
    });
    assert_eq!(plans.records.len(), 10);
    assert!(plans.records.iter().all(|r| r.kind.as_str() == "plan"));
    let severe = query(RecordQuery {
        min_severity: Some(Severity::Error),
        since: Some(ts(50)),
        until: Some(ts(60)),
        ..RecordQuery::default()
    });
    assert_eq!(
        severe.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![54, 55, 59, 60]
    );
    let seqs: HashSet<u64> = query(RecordQuery {
        after: Some(10),
        before: Some(20),
        limit: 100,
        ..RecordQuery::default()
    })
    .records
    .iter()
    .map(|r| r.seq)
    .collect();
    assert_eq!(seqs, (11..20).collect());
}

#[test]
fn deleted_streams_are_gone_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let doomed = name("doomed");
    let events: Vec<Event> = (0..3_000)
        .map(|i| event("tool", Severity::Error, &format!("e{i}"), i))
        .collect();
    store.append(&doomed, events, ts(0)).wait().unwrap();
    store
        .add_note(&doomed, "n".into(), None, ts(0))
        .wait()
        .unwrap();
    assert!(store.delete_stream(&doomed).wait().unwrap());
    assert!(!store.delete_stream(&doomed).wait().unwrap());
    assert!(store.stream(&doomed).is_none());
    assert!(
        store
            .context(
                &doomed,
                &ContextRequest::new(100, Encoding::Cl100kBase),
                ts(0)
            )
            .unwrap()
            .is_none()
    );
    // A new stream of the same name starts afresh.
    let appended = store
        .append(
            &doomed,
            vec![event("tool", Severity::Info, "again", 0)],
            ts(0),
        )
        .wait()
        .unwrap();
    assert_eq!(
        (appended[0].record.seq, appended[0].record.revision),
        (1, 1)
    );
    store.maintain(ts(0)).wait().unwrap();
    store.close().unwrap();
    let store = open(dir.path());
    assert_eq!(all_records(&store, &doomed).len(), 1);
    assert_eq!(store.streams().len(), 1);
}

#[test]
fn imports_keep_times_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let stream = name("imp");
    let appended = store
        .import(
            &stream,
            vec![
                ImportedRecord {
                    event: Event::new("tool", Severity::Info, "same").unwrap(),
                    first_ts: ts(0),
                    last_ts: ts(5),
                    repeat_count: 3,
                    note: None,
                },
                ImportedRecord {
                    event: Event::new("tool", Severity::Info, "same").unwrap(),
                    first_ts: ts(6),
                    last_ts: ts(6),
                    repeat_count: 1,
                    note: None,
                },
            ],
        )
        .wait()
        .unwrap();
    assert!(
        appended.iter().all(|a| !a.collapsed),
        "imports never collapse"
    );
    let stats = store.stream(&stream).unwrap();
    assert_eq!((stats.records, stats.events), (2, 4));
    assert_eq!((stats.first_ts, stats.last_ts), (Some(ts(0)), Some(ts(6))));
    let changes = store.changes(&stream, 0, 10).unwrap();
    match &changes[0].body {
        ChangeBody::Record(record) => assert_eq!(record.repeat_count, 3),
        other => panic!("expected a record, got {other:?}"),
    }
}

#[test]
fn writes_after_close_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let other = store.clone();
    store.close().unwrap();
    let result = other
        .append(
            &name("x"),
            vec![event("tool", Severity::Info, "late", 0)],
            ts(0),
        )
        .wait();
    assert!(matches!(result, Err(StoreError::ShuttingDown)));
    assert!(matches!(
        other.records(&name("x"), &RecordQuery::default()),
        Err(StoreError::ShuttingDown)
    ));
    drop(other);
    open(dir.path()).close().unwrap();
}

/// A note is shown once: in the Notes section while it is pinned, never again as its audit
/// record; once deleted it is forgotten, audit record included (the history keeps it).
#[test]
fn pinned_notes_are_shown_once_and_forgotten_when_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let stream = name("agent");
    store
        .append(
            &stream,
            vec![event("tool", Severity::Error, "boom", 0)],
            ts(0),
        )
        .wait()
        .unwrap();
    let note = store
        .add_note(&stream, "the user wants a patch".into(), None, ts(1))
        .wait()
        .unwrap();
    let request = ContextRequest::new(500, Encoding::Cl100kBase);
    let window = store.context(&stream, &request, ts(2)).unwrap().unwrap();
    assert_eq!(
        window.text.matches("the user wants a patch").count(),
        1,
        "{}",
        window.text
    );
    assert!(
        window
            .text
            .starts_with("## Notes\n- the user wants a patch\n")
    );
    assert!(
        !window.text.contains("## Earlier"),
        "the audit record counts as shown"
    );
    assert_eq!(window.totals.elided_events, 0);
    assert!(store.delete_note(&stream, note.id).wait().unwrap());
    let window = store.context(&stream, &request, ts(3)).unwrap().unwrap();
    assert!(!window.text.contains("## Notes"));
    assert!(
        !window.text.contains("the user wants a patch"),
        "{}",
        window.text
    );
    let reasons: Vec<Reason> = window.items.iter().map(|item| item.reason).collect();
    assert_eq!(reasons, [Reason::Newest, Reason::Forgotten]);
    let history = store.records(&stream, &RecordQuery::default()).unwrap();
    assert!(
        history
            .records
            .iter()
            .any(|record| record.message == "the user wants a patch"),
        "the history keeps the audit record"
    );
}

/// A stream holds at most `max_notes` live notes: the next is refused and writes nothing; an
/// expired or deleted note frees its place.
#[test]
fn notes_past_the_cap_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        notes: NoteLimits {
            max_notes: 2,
            max_bytes: 1_000,
        },
        ..quiet()
    };
    let store = Store::open(dir.path(), options).unwrap();
    let stream = name("agent");
    let add = |text: &str| store.add_note(&stream, text.into(), None, ts(0)).wait();
    let first = add("one").unwrap();
    add("two").unwrap();
    let revision = store.revision(&stream);
    assert!(matches!(
        add("three"),
        Err(StoreError::NoteLimit { limit: 2, .. })
    ));
    assert_eq!(store.revision(&stream), revision, "nothing was written");
    assert!(store.delete_note(&stream, first.id).wait().unwrap());
    add("three").unwrap();
    assert!(matches!(
        add(&"x".repeat(1_000)),
        Err(StoreError::NoteLimit { .. })
    ));
}

/// No count wraps: a record at the largest count takes no more repeats (the next one starts a
/// record), and an import that would take the stream's events past it is refused whole.
#[test]
fn counts_stop_at_the_largest_exact_number_instead_of_wrapping() {
    use recap::event::MAX_EVENT_COUNT;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let stream = name("full");
    let full = |repeat_count| ImportedRecord {
        event: Event::new("tool", Severity::Info, "same").unwrap(),
        first_ts: ts(0),
        last_ts: ts(1),
        repeat_count,
        note: None,
    };
    store
        .import(&stream, vec![full(MAX_EVENT_COUNT - 1)])
        .wait()
        .unwrap();
    let event = || Event::new("tool", Severity::Info, "same").unwrap();
    let appended = store.append(&stream, vec![event(), event(), event()], ts(2));
    let appended = appended.wait().unwrap();
    let placed: Vec<(u64, u64, bool)> = appended
        .iter()
        .map(|a| (a.record.seq, a.record.repeat_count, a.collapsed))
        .collect();
    assert_eq!(
        placed,
        [(1, MAX_EVENT_COUNT, true), (2, 1, false), (2, 2, true)]
    );
    let stats = store.stream(&stream).unwrap();
    assert_eq!((stats.records, stats.events), (2, MAX_EVENT_COUNT + 2));
    let refused = store.import(&stream, vec![full(1)]).wait().unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("past the most a stream counts"),
        "{refused}"
    );
    assert_eq!(store.stream(&stream).unwrap().records, 2, "nothing written");
}

/// A data file that went missing or was emptied is refused, not replaced by an empty store,
/// until the operator deletes the marker that says the directory held one.
#[test]
fn an_emptied_data_file_is_refused_until_the_operator_says_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let stream = name("kept");
    store
        .append(
            &stream,
            vec![Event::new("tool", Severity::Info, "m").unwrap()],
            ts(0),
        )
        .wait()
        .unwrap();
    store.close().unwrap();
    let data = dir.path().join(recap::store::DATA_FILE_NAME);
    std::fs::File::create(&data).unwrap();
    let refused = Store::open(dir.path(), quiet()).err().unwrap();
    assert!(
        matches!(&refused, StoreError::Corrupt { detail, .. } if detail.contains("missing or empty")),
        "{refused}"
    );
    std::fs::remove_file(&data).unwrap();
    assert!(Store::open(dir.path(), quiet()).is_err(), "missing too");
    std::fs::remove_file(dir.path().join(recap::store::MARKER_FILE_NAME)).unwrap();
    let fresh = Store::open(dir.path(), quiet()).unwrap();
    assert!(fresh.streams().is_empty());
}

/// A tmpfs of a fixed size, mounted for one test and unmounted after; `None` where this process
/// may not mount one (not root, or in a container without the right).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        mounted.then_some(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// A full disk: writes fail as `DiskFull` (507 on the wire) and the store says so, nothing
/// acknowledged is lost, and writes succeed again once space is freed, without a restart.
#[test]
fn a_full_disk_fails_writes_until_space_is_freed() {
    let Some(tmpfs) = Tmpfs::mount("12m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root and the right to mount)");
        return;
    };
    let data = tmpfs.dir.path().join("data");
    let ballast = tmpfs.dir.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 4 * 1024 * 1024]).unwrap();
    let options = StoreOptions {
        cache_bytes: 4 * 1024 * 1024,
        ..quiet()
    };
    let store = Store::open(&data, options.clone()).unwrap();
    let stream = name("full");
    let batch = |round: usize| -> Vec<Event> {
        (0..20)
            .map(|i| {
                let text = format!("round {round} event {i} {}", "x".repeat(4_000));
                Event::new("tool", Severity::Info, text).unwrap()
            })
            .collect()
    };
    let mut acknowledged = 0;
    let mut refused = None;
    for round in 0..1_000 {
        match store.append(&stream, batch(round), ts(0)).wait() {
            Ok(appended) => acknowledged += appended.len() as u64,
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let refused = refused.expect("the disk filled up");
    assert!(matches!(refused, StoreError::DiskFull(_)), "{refused:?}");
    assert!(store.degraded().is_some());
    assert!(store.metrics().degraded);
    std::fs::remove_file(&ballast).unwrap();
    // The writer reopens the file once a second while it is degraded: bounded, not timed.
    let mut attempts = 0;
    let appended = loop {
        attempts += 1;
        match store.append(&stream, batch(9_999), ts(1)).wait() {
            Ok(appended) => break appended,
            Err(error) if attempts < 100 => {
                assert!(
                    matches!(error, StoreError::DiskFull(_) | StoreError::Unavailable(_)),
                    "{error:?}"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(error) => panic!("writes did not come back: {error:?}"),
        }
    };
    acknowledged += appended.len() as u64;
    assert_eq!(store.degraded(), None);
    assert!(store.metrics().reopens >= 1);
    let stats = store.stream(&stream).unwrap();
    assert_eq!(
        stats.events, acknowledged,
        "every acknowledged event, and no other"
    );
    store.close().unwrap();
    let reopened = Store::open(&data, options).unwrap();
    assert_eq!(reopened.stream(&stream).unwrap().events, acknowledged);
    drop(reopened);
}
