//! The stream cache against its model: a store whose cache holds (next to) nothing, so that
//! every stream is evicted after every request and loaded back from the file when next used,
//! answers exactly as a store that keeps everything in memory.

use chrono::{SubsecRound, TimeDelta};
use proptest::prelude::*;
use recap::collapse::CollapsePolicy;
use recap::context::ContextRequest;
use recap::event::{Event, Severity, StreamName, Timestamp};
use recap::payload::Payload;
use recap::store::{Retention, Store, StoreOptions};
use recap::stream::TailCapacity;
use recap::tokens::Encoding;
use serde_json::{Map, Value};

/// What a test does to the two stores.
#[derive(Clone, Debug)]
enum Op {
    /// Appends events (message, kind, severity, with a payload) to a stream.
    Append(usize, Vec<(usize, usize, usize, bool)>),
    AddNote(usize, usize),
    DeleteNote(usize, u64),
    /// Reads a context of a stream at a budget.
    Context(usize, u32),
    /// Keeps at most this many records of a stream, and runs maintenance.
    Retain(usize, u64),
    /// Adds a note that expires a few steps later.
    AddExpiringNote(usize, usize),
    DeleteStream(usize),
    /// Closes both stores and opens them again.
    Reopen,
}

const STREAMS: [&str; 3] = ["agent-a", "agent-b", "agent-c"];
const KINDS: [&str; 5] = ["tool", "task", "error", "plan", "observation"];
const MESSAGES: [&str; 6] = [
    "search(\"redb\") timed out after 30s",
    "wrote src/main.rs (42 lines)",
    "Traceback (most recent call last):\n  File \"app.py\", line 3\nModuleNotFoundError: flask",
    "fix the failing checkout test",
    "cargo test: 118 passed, 2 failed",
    "the user prefers small diffs",
];

fn op() -> impl Strategy<Value = Op> {
    let event = (0..MESSAGES.len(), 0..KINDS.len(), 0usize..5, any::<bool>());
    prop_oneof![
        6 => (0..STREAMS.len(), prop::collection::vec(event, 1..40))
            .prop_map(|(stream, events)| Op::Append(stream, events)),
        1 => (0..STREAMS.len(), 0..MESSAGES.len()).prop_map(|(s, m)| Op::AddNote(s, m)),
        1 => (0..STREAMS.len(), 1u64..6).prop_map(|(s, id)| Op::DeleteNote(s, id)),
        4 => (0..STREAMS.len(), prop_oneof![Just(120u32), Just(600), Just(4_000)])
            .prop_map(|(s, budget)| Op::Context(s, budget)),
        1 => (0..STREAMS.len(), 1u64..100).prop_map(|(s, keep)| Op::Retain(s, keep)),
        1 => (0..STREAMS.len(), 0..MESSAGES.len()).prop_map(|(s, m)| Op::AddExpiringNote(s, m)),
        1 => (0..STREAMS.len()).prop_map(Op::DeleteStream),
        1 => Just(Op::Reopen),
    ]
}

fn options(cache_bytes: usize) -> StoreOptions {
    StoreOptions {
        // A small tail, bounded by count and by bytes (blocks of about fifty records), so that
        // streams outgrow both within a test.
        tail: TailCapacity {
            records: 64,
            severe: 4,
            block_bytes: 16 * 1024,
        },
        collapse: CollapsePolicy {
            lookback: 16,
            ..CollapsePolicy::default()
        },
        cache_bytes,
        ..StoreOptions::default()
    }
}

/// Step `step`'s time: a minute a step from `base`. Tests start from the wall clock, because
/// the writer expires notes on its own as real time passes; a note that expires three steps
/// later is minutes ahead of it.
fn at(base: Timestamp, step: usize) -> Timestamp {
    base + TimeDelta::minutes(step as i64)
}

fn event(message: usize, kind: usize, severity: usize, payload: bool) -> Event {
    let mut event = Event::new(KINDS[kind], Severity::ALL[severity], MESSAGES[message]).unwrap();
    if payload {
        let mut map = Map::new();
        map.insert("attempt".into(), Value::from(message as u64));
        map.insert("zeros".into(), Value::from(vec![0; 64]));
        event.payload = Some(Payload::from_object(&map));
    }
    event
}

/// Applies `op` to `store`, returning what a client would see.
fn apply(store: &Store, op: &Op, now: Timestamp) -> String {
    // Retention runs in the background, whenever the writer gets to it; finish it first, so
    // that both stores answer as of the same state.
    store.maintain(now).wait().unwrap();
    match op {
        Op::Append(stream, events) => {
            let stream = StreamName::new(STREAMS[*stream]).unwrap();
            let events = events
                .iter()
                .map(|&(m, k, s, p)| event(m, k, s, p))
                .collect();
            let appended = store.append(&stream, events, now).wait().unwrap();
            format!("{appended:?}")
        }
        Op::AddNote(stream, message) => {
            let stream = StreamName::new(STREAMS[*stream]).unwrap();
            let note = store.add_note(&stream, MESSAGES[*message].into(), None, now);
            format!("{:?}", note.wait())
        }
        Op::DeleteNote(stream, id) => {
            let stream = StreamName::new(STREAMS[*stream]).unwrap();
            format!("{:?}", store.delete_note(&stream, *id).wait())
        }
        Op::Context(stream, budget) => {
            let stream = StreamName::new(STREAMS[*stream]).unwrap();
            let request = ContextRequest::new(*budget, Encoding::Cl100kBase);
            let window = store.context(&stream, &request, now).unwrap();
            let stats = store.stream(&stream);
            let notes = store.notes(&stream, now).ok();
            format!("{window:?}\n{stats:?}\n{notes:?}")
        }
        Op::Retain(stream, keep) => {
            let stream = StreamName::new(STREAMS[*stream]).unwrap();
            let retention = Retention {
                max_records: Some(*keep),
                max_age: None,
            };
            let set = store.set_retention(&stream, retention).wait();
            store.maintain(now).wait().unwrap();
            format!("{set:?}")
        }
        Op::AddExpiringNote(stream, message) => {
            let stream = StreamName::new(STREAMS[*stream]).unwrap();
            let expires = Some(now + TimeDelta::minutes(3));
            let note = store.add_note(&stream, MESSAGES[*message].into(), expires, now);
            // Expiry is maintenance's job: run it as of now, as time passes.
            store.maintain(now).wait().unwrap();
            format!("{:?}", note.wait())
        }
        Op::DeleteStream(stream) => {
            let stream = StreamName::new(STREAMS[*stream]).unwrap();
            format!("{:?}", store.delete_stream(&stream).wait())
        }
        Op::Reopen => String::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Every answer (appends with their collapse decisions, notes, contexts byte for byte,
    /// statistics) is the same whether streams stay in memory or are evicted and loaded back
    /// between every two requests.
    #[test]
    fn evicting_changes_no_answer(ops in prop::collection::vec(op(), 1..40)) {
        let roomy_dir = tempfile::tempdir().unwrap();
        let tight_dir = tempfile::tempdir().unwrap();
        let mut roomy = Store::open(roomy_dir.path(), options(usize::MAX / 2)).unwrap();
        let mut tight = Store::open(tight_dir.path(), options(1)).unwrap();
        let base = chrono::Utc::now().trunc_subsecs(0);
        for (step, op) in ops.iter().enumerate() {
            if let Op::Reopen = op {
                roomy.close().unwrap();
                tight.close().unwrap();
                roomy = Store::open(roomy_dir.path(), options(usize::MAX / 2)).unwrap();
                tight = Store::open(tight_dir.path(), options(1)).unwrap();
                continue;
            }
            let expected = apply(&roomy, op, at(base, step));
            let answered = apply(&tight, op, at(base, step));
            if answered != expected {
                let at = answered
                    .char_indices()
                    .zip(expected.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(0, |((index, _), _)| index);
                let from = answered[..at].rfind("ReceiptItem").unwrap_or(at.saturating_sub(300));
                eprintln!(
                    "DIFF step {step} op {op:?}\nTIGHT …{}\nROOMY …{}",
                    &answered[from..(at + 300).min(answered.len())],
                    &expected[from..(at + 300).min(expected.len())]
                );
            }
            prop_assert_eq!(&answered, &expected, "step {} ({:?})", step, op);
        }
    }
}

/// A read makes a stream resident; over the budget, the writer evicts it before it places the
/// next write, and the next read loads it back.
#[test]
fn streams_are_evicted_beyond_the_budget_and_loaded_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options(1)).unwrap();
    let (a, b) = (
        StreamName::new("agent-a").unwrap(),
        StreamName::new("agent-b").unwrap(),
    );
    let request = ContextRequest::new(500, Encoding::Cl100kBase);
    let at = |step| at(chrono::Utc::now().trunc_subsecs(0), step);
    store
        .append(&a, vec![event(0, 0, 1, true)], at(0))
        .wait()
        .unwrap();
    let first = store.context(&a, &request, at(1)).unwrap().unwrap();
    assert_eq!(store.cache_metrics().cold_loads, 1);
    store
        .append(&b, vec![event(1, 0, 1, false)], at(2))
        .wait()
        .unwrap();
    let cache = store.cache_metrics();
    assert_eq!((cache.streams, cache.resident_streams), (2, 0), "{cache:?}");
    assert!(cache.evictions >= 1, "{cache:?}");
    let again = store.context(&a, &request, at(1)).unwrap().unwrap();
    assert_eq!(again.text, first.text);
    assert_eq!(store.cache_metrics().cold_loads, 2);
}

/// Over the budget, the writer's own state of a stream goes too, and counts as an eviction; the
/// next write to the stream reads it back from the file (its collapse lookback: the write still
/// collapses into the record before it) and counts a shadow load.
#[test]
fn a_write_to_an_evicted_stream_loads_its_writer_state_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options(1)).unwrap();
    let (a, b) = (
        StreamName::new("agent-a").unwrap(),
        StreamName::new("agent-b").unwrap(),
    );
    let at = |step| at(chrono::Utc::now().trunc_subsecs(0), step);
    let append = |stream: &StreamName, step| {
        store
            .append(stream, vec![event(0, 0, 1, false)], at(step))
            .wait()
            .unwrap()
    };
    append(&a, 0);
    append(&b, 1);
    let cache = store.cache_metrics();
    assert!(cache.evictions >= 1, "{cache:?}");
    assert_eq!(cache.shadow_loads, 0, "new streams start empty: {cache:?}");
    let again = append(&a, 2);
    assert_eq!((again[0].record.seq, again[0].collapsed), (1, true));
    assert_eq!(store.cache_metrics().shadow_loads, 1);
}

/// A stream of long messages keeps about two byte blocks of them in memory, not its whole tail
/// of records, and a context after a restart is the same.
#[test]
fn long_messages_are_bounded_in_bytes_not_just_records() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        tail: TailCapacity {
            records: 4_096,
            severe: 4,
            block_bytes: 256 * 1024,
        },
        collapse: CollapsePolicy {
            lookback: 16,
            ..CollapsePolicy::default()
        },
        ..StoreOptions::default()
    };
    let stream = StreamName::new("long").unwrap();
    let now = chrono::Utc::now().trunc_subsecs(0);
    let mut store = Store::open(dir.path(), options.clone()).unwrap();
    for batch in 0..20 {
        let events = (0..50)
            .map(|i| {
                let text = format!("read chunk {batch}-{i}: {}", "lorem ipsum ".repeat(1_000));
                Event::new("observation", Severity::Info, text).unwrap()
            })
            .collect();
        store.append(&stream, events, now).wait().unwrap();
    }
    let request = ContextRequest::new(2_000, Encoding::Cl100kBase);
    let before = store.context(&stream, &request, now).unwrap().unwrap();
    // 1,000 records of 12 KB: the tail by count alone would hold all of them (12 MB, and as
    // much again in rendered lines). Two blocks of records, the lines a window rendered and the
    // writer's lookback come to about 1.5 MB.
    let held = store.cache_metrics().bytes;
    assert!(held < 2 * 1024 * 1024, "{held} bytes held");
    store.close().unwrap();
    store = Store::open(dir.path(), options).unwrap();
    let after = store.context(&stream, &request, now).unwrap().unwrap();
    assert_eq!(after.text, before.text);
    assert!(before.text.contains("read chunk 19-49"), "{}", before.text);
}
