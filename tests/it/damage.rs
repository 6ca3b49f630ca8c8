//! A damaged data file is never served as if it were whole: byte flips in a real file make the
//! store refuse to open, or serve exactly what it served before, or answer the damaged reads
//! with an error; and `recap check` finds every copy whose reads fail.

use std::path::{Path, PathBuf};

use chrono::TimeDelta;
use recap::context::ContextRequest;
use recap::event::{Event, Severity, StreamName, Timestamp, parse_timestamp};
use recap::payload::Payload;
use recap::store::{DATA_FILE_NAME, RecordQuery, Store, StoreError, StoreOptions};
use recap::tokens::Encoding;

const STREAMS: [&str; 3] = ["agent-a", "agent-b", "team.agent-c"];

fn name(value: &str) -> StreamName {
    StreamName::new(value).unwrap()
}

fn ts(seconds: i64) -> Timestamp {
    parse_timestamp("2024-05-01T10:00:00Z").unwrap() + TimeDelta::seconds(seconds)
}

/// A store of 3,000 events over three streams: plans, tool calls (some repeated, so they
/// collapse), errors, payloads and notes, each with a unique needle in its message.
fn write_store(dir: &Path) {
    // Without anomaly records, so that the file's counts are the events'.
    let options = StoreOptions {
        anomaly: recap::anomaly::AnomalySettings::off(),
        ..StoreOptions::default()
    };
    let store = Store::open(dir, options).unwrap();
    for (s, stream) in STREAMS.iter().enumerate() {
        let stream = name(stream);
        let events: Vec<Event> = (0..1_000)
            .map(|i| {
                let (kind, severity, message) = match i % 10 {
                    0 => (
                        "plan",
                        Severity::Info,
                        format!("plan step {i}: needle-{s}-{i}"),
                    ),
                    3 | 4 => (
                        "tool",
                        Severity::Error,
                        "search timed out after 30s".to_owned(),
                    ),
                    7 => (
                        "llm",
                        Severity::Warning,
                        format!("rate limited {i} needle-{s}-{i}"),
                    ),
                    _ => (
                        "tool",
                        Severity::Info,
                        format!("read file src/{i}.rs needle-{s}-{i}"),
                    ),
                };
                let mut event = Event::new(kind, severity, message).unwrap().at(ts(i));
                if i % 25 == 0 {
                    event.payload = Some(
                        Payload::from_json(&format!(r#"{{"step":{i},"args":["a","b"]}}"#)).unwrap(),
                    );
                }
                event
            })
            .collect();
        for chunk in events.chunks(100) {
            store.append(&stream, chunk.to_vec(), ts(0)).wait().unwrap();
        }
        for n in 0..5 {
            store
                .add_note(&stream, format!("note {n} of {stream}"), None, ts(2_000))
                .wait()
                .unwrap();
        }
    }
    store.close().unwrap();
}

/// Everything a client can read of each stream, each read's outcome as text (an error's text
/// included, so that errors can be told apart from data).
fn everything_served(store: &Store) -> Vec<Result<String, StoreError>> {
    let now = ts(3_000);
    let mut served = Vec::new();
    for stream in STREAMS.map(name) {
        served.push(Ok(format!("{:?}", store.stream(&stream))));
        served.push(pages(store, &stream, false));
        served.push(pages(store, &stream, true));
        served.push(
            store
                .changes(&stream, 0, 100_000)
                .map(|changes| format!("{changes:?}")),
        );
        served.push(store.notes(&stream, now).map(|notes| format!("{notes:?}")));
        for budget in [400, 4_000] {
            let request = ContextRequest::new(budget, Encoding::Cl100kBase);
            served.push(
                store
                    .context(&stream, &request, now)
                    .map(|window| format!("{:?}", window.map(|w| w.text))),
            );
        }
    }
    served
}

/// Every record of a stream, paged forward with `after` or backward with `before`.
fn pages(store: &Store, stream: &StreamName, backward: bool) -> Result<String, StoreError> {
    let mut records = Vec::new();
    let mut cursor = None;
    loop {
        let query = RecordQuery {
            after: if backward { None } else { cursor },
            before: if backward {
                cursor.or(Some(u64::MAX))
            } else {
                None
            },
            limit: 97,
            ..RecordQuery::default()
        };
        let page = store.records(stream, &query)?;
        records.extend(page.records);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    records.sort_by_key(|record| record.seq);
    Ok(format!("{records:?}"))
}

/// What happened to one damaged copy.
#[derive(Debug, Default)]
struct Outcomes {
    refused: usize,
    identical: usize,
    errors: usize,
}

/// Flips one byte of a copy of `pristine` at `at` and compares what the copy serves with
/// `expected`; panics if anything is served altered.
fn check_copy(pristine: &[u8], at: usize, xor: u8, expected: &[String], outcomes: &mut Outcomes) {
    let dir = tempfile::tempdir().unwrap();
    let mut damaged = pristine.to_vec();
    damaged[at] ^= xor;
    std::fs::write(dir.path().join(DATA_FILE_NAME), &damaged).unwrap();
    // `recap check` on the copy, before the store opens it.
    let checked_clean = recap::store::check(dir.path()).is_ok_and(|report| report.is_clean());
    let store = match Store::open(dir.path(), StoreOptions::default()) {
        Ok(store) => store,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            outcomes.refused += 1;
            return;
        }
    };
    let served = everything_served(&store);
    let mut any_error = false;
    for (read, (got, want)) in served.iter().zip(expected).enumerate() {
        match got {
            Ok(text) => assert!(
                text == want,
                "a flip at byte {at} (xor {xor:#04x}) served read {read} altered: {}",
                first_difference(text, want)
            ),
            Err(_) => any_error = true,
        }
    }
    if any_error {
        assert!(
            !checked_clean,
            "a flip at byte {at} (xor {xor:#04x}) failed reads that `recap check` passed"
        );
        outcomes.errors += 1;
    } else {
        outcomes.identical += 1;
    }
    let _ = store.close();
}

fn first_difference(got: &str, want: &str) -> String {
    let at = got
        .bytes()
        .zip(want.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let from = at.saturating_sub(200);
    format!(
        "served …{}… where it served …{}… ({} bytes, was {})",
        got.get(from..(at + 100).min(got.len())).unwrap_or(""),
        want.get(from..(at + 100).min(want.len())).unwrap_or(""),
        got.len(),
        want.len()
    )
}

fn pristine_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path());
    let path = dir.path().join(DATA_FILE_NAME);
    (dir, path)
}

fn expected(path: &Path) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(path, dir.path().join(DATA_FILE_NAME)).unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let served = everything_served(&store)
        .into_iter()
        .map(|read| read.expect("the pristine file serves every read"))
        .collect();
    store.close().unwrap();
    served
}

/// Random single-byte flips anywhere in the file (`RECAP_DAMAGE_FLIPS` of them, 32 by default;
/// the seed is printed and can be set with `RECAP_DAMAGE_SEED`): none is served altered.
#[test]
fn random_byte_flips_are_never_served_altered() {
    let (_dir, path) = pristine_file();
    let pristine = std::fs::read(&path).unwrap();
    let expected = expected(&path);
    let flips: usize = std::env::var("RECAP_DAMAGE_FLIPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32);
    let mut seed: u64 = std::env::var("RECAP_DAMAGE_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    eprintln!(
        "damage seed {seed}, {flips} flips of a {} byte file",
        pristine.len()
    );
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut outcomes = Outcomes::default();
    for _ in 0..flips {
        let at = (next() % pristine.len() as u64) as usize;
        let xor = (next() % 255) as u8 + 1;
        check_copy(&pristine, at, xor, &expected, &mut outcomes);
    }
    eprintln!("{outcomes:?}");
}

/// A flip inside a stored record's bytes (found by its unique message) is an error on the reads
/// that reach it, naming the stream and the record, while the other streams serve as before.
#[test]
fn a_damaged_record_is_an_error_naming_its_stream_and_seq() {
    let (_dir, path) = pristine_file();
    let pristine = std::fs::read(&path).unwrap();
    let expected = expected(&path);
    // Record 402 of agent-b holds event 501 (a plan, after 100 collapsed timeouts).
    let needle = b"needle-1-500";
    let at = pristine
        .windows(needle.len())
        .position(|window| window == needle)
        .expect("the record's bytes are in the file");
    let dir = tempfile::tempdir().unwrap();
    let mut damaged = pristine.clone();
    damaged[at + 3] ^= 0x20;
    std::fs::write(dir.path().join(DATA_FILE_NAME), &damaged).unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let stream = name("agent-b");
    let error = pages(&store, &stream, false).unwrap_err();
    let StoreError::Damaged {
        stream: named,
        row,
        problem,
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!(named, "agent-b");
    assert!(row.starts_with("record "), "{row}");
    assert!(problem.contains("checksum"), "{problem}");
    assert!(error.to_string().contains("recap check"), "{error}");
    // Backward paging meets it too; the other streams are whole.
    assert!(pages(&store, &stream, true).is_err());
    let served = everything_served(&store);
    for (read, (got, want)) in served.iter().zip(&expected).enumerate() {
        if let Ok(text) = got {
            assert_eq!(text, want, "read {read}");
        }
    }
    assert!(
        served[..7].iter().all(Result::is_ok),
        "agent-a is untouched"
    );
    store.close().unwrap();

    // `recap check` names the same row, and exits 1; on the pristine file it exits 0.
    let check = |dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_recap"))
            .args(["check", "--data"])
            .arg(dir)
            .env_remove("RECAP_CONFIG")
            .output()
            .unwrap()
    };
    let damaged = check(dir.path());
    let report = String::from_utf8_lossy(&damaged.stdout);
    assert_eq!(damaged.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!("stream \"agent-b\": {row} fails its checksum")),
        "{report}"
    );
    assert!(report.contains("DAMAGED: 1 problems"), "{report}");
    let clean = check(path.parent().unwrap());
    let report = String::from_utf8_lossy(&clean.stdout);
    assert_eq!(clean.status.code(), Some(0), "{report}");
    assert!(
        report.contains("3 streams, 2436 records, 594 changes, 15 notes checked; no damage found"),
        "{report}"
    );
}

/// Retention removes a damaged record like any other, and the file checks clean after it; but
/// since the record's last revision cannot be read, no change from before the removal can be
/// replayed any more (a subscriber resuming from there gets a reset), where from a whole file
/// the changes of the records kept still can.
#[test]
fn retention_removes_a_damaged_record_and_stops_replay_before_it() {
    let (_dir, path) = pristine_file();
    let pristine = std::fs::read(&path).unwrap();
    let needle = b"needle-1-500";
    let at = pristine
        .windows(needle.len())
        .position(|window| window == needle)
        .expect("the record's bytes are in the file");
    let mut damaged = pristine.clone();
    damaged[at + 3] ^= 0x20;
    let stream = name("agent-b");
    let keep_newest = |file: &[u8]| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DATA_FILE_NAME), file).unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let before = store.revision(&stream);
        let retention = recap::store::Retention {
            max_records: Some(10),
            max_age: None,
        };
        store.set_retention(&stream, retention).wait().unwrap();
        store.maintain(ts(10_000)).wait().unwrap();
        let replayable = store
            .changes(&stream, 0, 100_000)
            .unwrap()
            .iter()
            .filter(|change| change.revision <= before)
            .count();
        assert!(pages(&store, &stream, false).is_ok());
        assert_eq!(store.stream(&stream).unwrap().stored_records, 10);
        store.close().unwrap();
        (dir, replayable)
    };
    let (_whole, replayable) = keep_newest(&pristine);
    assert!(replayable > 0, "the kept records' changes replay");
    let (dir, replayable) = keep_newest(&damaged);
    assert_eq!(replayable, 0, "nothing before the removal replays");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_recap"))
        .args(["check", "--data"])
        .arg(dir.path())
        .env_remove("RECAP_CONFIG")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{report}");
}
