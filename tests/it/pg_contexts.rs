//! Contexts on PostgreSQL nodes against each other: two nodes take random writes to the same
//! streams (appends with repeats, notes that expire, retention by count and by age, deletes,
//! maintenance on one node or both at once, anomaly detection turned off and on), and after
//! every step each node's
//! context, caught up from the changelog, is byte for byte the one a node that loads the stream
//! afresh from the database serves. Where PostgreSQL is not installed this does not run (see
//! `pg_cluster`).

use std::time::Duration;

use chrono::{SubsecRound, TimeDelta};
use proptest::prelude::*;
use recap::collapse::CollapsePolicy;
use recap::context::ContextRequest;
use recap::event::{Event, Severity, StreamName, Timestamp};
use recap::payload::Payload;
use recap::store::{PgStore, Retention, StoreOptions};
use recap::stream::TailCapacity;
use recap::tokens::Encoding;

use crate::pg_cluster;

#[derive(Clone, Debug)]
enum Op {
    /// Appends events (message, kind, severity, with a payload) to a stream.
    Append(usize, Vec<(usize, usize, usize, bool)>),
    /// Adds a note to a stream, expiring after so many steps if any.
    AddNote(usize, usize, Option<i64>),
    DeleteNote(usize, u64),
    /// Keeps at most this many records of a stream (applied by its next write or maintenance).
    Retain(usize, u64),
    /// Keeps a stream's records for so many steps (applied by maintenance).
    RetainFor(usize, i64),
    /// Runs maintenance through a node (both at once when `true`).
    Maintain(bool),
    /// Turns a stream's anomaly detection off (`false`) or back to the server's (`true`).
    Anomalies(usize, bool),
    DeleteStream(usize),
}

const STREAMS: [&str; 2] = ["agent-a", "team.agent-b"];
const KINDS: [&str; 5] = ["tool", "task", "error", "plan", "observation"];
const MESSAGES: [&str; 6] = [
    "search(\"redb\") timed out after 30s",
    "wrote src/main.rs (42 lines)",
    "Traceback (most recent call last):\n  File \"app.py\", line 3\nModuleNotFoundError: flask",
    "fix the failing checkout test",
    "cargo test: 118 passed, 2 failed",
    "the user prefers small diffs",
];
const BUDGETS: [u32; 3] = [120, 600, 4_000];

fn op() -> impl Strategy<Value = Op> {
    let event = (0..MESSAGES.len(), 0..KINDS.len(), 0usize..5, any::<bool>());
    prop_oneof![
        8 => (0..STREAMS.len(), prop::collection::vec(event, 1..60))
            .prop_map(|(stream, events)| Op::Append(stream, events)),
        1 => (0..STREAMS.len(), 0..MESSAGES.len(), prop::option::of(1i64..6))
            .prop_map(|(s, m, steps)| Op::AddNote(s, m, steps)),
        1 => (0..STREAMS.len(), 1u64..6).prop_map(|(s, id)| Op::DeleteNote(s, id)),
        1 => (0..STREAMS.len(), 20u64..150).prop_map(|(s, keep)| Op::Retain(s, keep)),
        1 => (0..STREAMS.len()).prop_map(Op::DeleteStream),
        1 => (0..STREAMS.len(), 1i64..8).prop_map(|(s, steps)| Op::RetainFor(s, steps)),
        2 => any::<bool>().prop_map(Op::Maintain),
        1 => (0..STREAMS.len(), any::<bool>()).prop_map(|(s, on)| Op::Anomalies(s, on)),
    ]
}

/// A small tail, bounded by count and by bytes, so that streams outgrow both within a test.
fn options(cache_bytes: usize) -> StoreOptions {
    StoreOptions {
        tail: TailCapacity {
            records: 64,
            severe: 4,
            block_bytes: 16 * 1024,
        },
        collapse: CollapsePolicy {
            lookback: 16,
            ..CollapsePolicy::default()
        },
        // Detection on, with low thresholds so that episodes open, grow and escalate within a
        // test: their records are revised, which caches take as repeats.
        anomaly: recap::anomaly::AnomalySettings {
            repeat_actions: 2,
            oscillation_cycles: 2,
            error_recurrences: 2,
            stall_seconds: 20,
            ..recap::anomaly::AnomalySettings::default()
        },
        cache_bytes,
        ..StoreOptions::default()
    }
}

fn event(message: usize, kind: usize, severity: usize, payload: bool) -> Event {
    let mut event = Event::new(KINDS[kind], Severity::ALL[severity], MESSAGES[message]).unwrap();
    if payload {
        event.payload = Some(Payload::from_json(r#"{"attempt": 3, "zeros": [0, 0, 0]}"#).unwrap());
    }
    event
}

/// Seconds between two steps of the property.
const STEP_SECONDS: i64 = 7;

async fn apply(node: &PgStore, other: &PgStore, op: &Op, now: Timestamp) {
    let stream = |index: usize| StreamName::new(STREAMS[index]).unwrap();
    match op {
        Op::Append(s, events) => {
            let events = events
                .iter()
                .map(|&(m, k, sev, p)| event(m, k, sev, p))
                .collect();
            node.append(&stream(*s), events, now).await.unwrap();
        }
        Op::AddNote(s, m, steps) => {
            let expires_at = steps.map(|steps| now + TimeDelta::seconds(steps * STEP_SECONDS));
            // A stream at its note limit refuses; that is an answer too.
            let _ = node
                .add_note(&stream(*s), MESSAGES[*m].into(), expires_at, now)
                .await;
        }
        Op::DeleteNote(s, id) => {
            let _ = node.delete_note(&stream(*s), *id).await;
        }
        Op::Retain(s, keep) => {
            let retention = Retention {
                max_records: Some(*keep),
                max_age: None,
            };
            let _ = node.set_retention(&stream(*s), retention).await;
        }
        Op::DeleteStream(s) => {
            node.delete_stream(&stream(*s)).await.unwrap();
        }
        Op::RetainFor(s, steps) => {
            let retention = Retention {
                max_records: None,
                max_age: Some(TimeDelta::seconds(steps * STEP_SECONDS)),
            };
            let _ = node.set_retention(&stream(*s), retention).await;
        }
        Op::Anomalies(s, on) => {
            let overrides = recap::anomaly::AnomalyOverrides {
                enabled: (!on).then_some(false),
                ..Default::default()
            };
            let _ = node.set_anomalies(&stream(*s), overrides).await;
        }
        Op::Maintain(both) => {
            if *both {
                let (here, there) = tokio::join!(node.maintain(now), other.maintain(now));
                here.unwrap();
                there.unwrap();
            } else {
                node.maintain(now).await.unwrap();
            }
        }
    }
}

/// What a node serves of a stream: its position and a context at each budget.
async fn served(node: &PgStore, stream: &StreamName, min_revision: u64, now: Timestamp) -> String {
    let position = node.position(stream, min_revision).await.unwrap();
    let mut out = format!("{position:?}\n");
    for budget in BUDGETS {
        let request = ContextRequest::new(budget, Encoding::Cl100kBase);
        let window = node
            .context(stream, &request, now, min_revision)
            .await
            .unwrap();
        out.push_str(&format!("{window:?}\n"));
    }
    out
}

/// What `node` serves once it has heard of the stream's state on the database (a deletion is
/// heard through a notification, which takes a moment), compared to `fresh`'s.
async fn converged(node: &PgStore, stream: &StreamName, expected: &str, now: Timestamp) -> String {
    let revision = node_revision(expected);
    let mut answer = served(node, stream, revision, now).await;
    for _ in 0..500 {
        if answer == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        answer = served(node, stream, revision, now).await;
    }
    answer
}

/// Where two answers part, with some of each around it.
fn difference(answer: &str, expected: &str) -> String {
    let at = answer
        .char_indices()
        .zip(expected.chars())
        .find(|((_, a), b)| a != b)
        .map_or(answer.len().min(expected.len()), |((index, _), _)| index);
    let from = answer[..at]
        .rfind("ReceiptItem")
        .unwrap_or(at.saturating_sub(300));
    let around = |text: &str| text[from..(at + 300).min(text.len())].to_owned();
    // The receipt items only one of them has say which records the two states disagree on.
    let items = |text: &str| {
        text.split("ReceiptItem { ")
            .skip(1)
            .map(|item| item.split(", score").next().unwrap_or("").to_owned())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (node, fresh) = (items(answer), items(expected));
    format!(
        "node  …{}\nfresh …{}\nitems only the node has: {:?}\nitems only the fresh load has: {:?}",
        around(answer),
        around(expected),
        node.difference(&fresh).collect::<Vec<_>>(),
        fresh.difference(&node).collect::<Vec<_>>()
    )
}

/// The revision in a [`served`] answer's first line (0 for a stream that does not exist).
fn node_revision(served: &str) -> u64 {
    served
        .split("revision: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Two nodes writing in turn serve what a node loading afresh serves: caught up from the
    /// changelog or loaded whole, a stream's state at a revision is one state.
    #[test]
    fn nodes_serve_the_contexts_a_fresh_load_serves(
        ops in prop::collection::vec((op(), any::<bool>()), 1..30),
    ) {
        let Some(url) = pg_cluster::database("pg_contexts") else {
            return Ok(());
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let a = PgStore::open(&url, options(usize::MAX / 2)).await.unwrap();
            let b = PgStore::open(&url, options(usize::MAX / 2)).await.unwrap();
            // Holds nothing: every read loads the stream whole.
            let fresh = PgStore::open(&url, options(1)).await.unwrap();
            let base = chrono::Utc::now().trunc_subsecs(0);
            for (step, (op, through_a)) in ops.iter().enumerate() {
                let now = base + TimeDelta::seconds(step as i64 * STEP_SECONDS);
                let (node, other) = if *through_a { (&a, &b) } else { (&b, &a) };
                apply(node, other, op, now).await;
                for stream in STREAMS {
                    let stream = StreamName::new(stream).unwrap();
                    let expected = served(&fresh, &stream, 0, now).await;
                    for (node, name) in [(&a, "a"), (&b, "b")] {
                        let answer = converged(node, &stream, &expected, now).await;
                        assert!(
                            answer == expected,
                            "node {name} differs from a fresh load at step {step} ({op:?}):\n{}",
                            difference(&answer, &expected)
                        );
                    }
                }
            }
        });
    }
}

/// A node keeps a stream's state across writes: its own writes are applied as they commit,
/// another node's are read from the changelog, and neither loads the stream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_caught_up_not_reloaded() {
    let Some(url) = pg_cluster::database("pg_catch_up") else {
        return;
    };
    let a = PgStore::open(&url, options(usize::MAX / 2)).await.unwrap();
    let b = PgStore::open(&url, options(usize::MAX / 2)).await.unwrap();
    let stream = StreamName::new("agent-a").unwrap();
    let now = chrono::Utc::now().trunc_subsecs(0);
    let request = ContextRequest::new(600, Encoding::Cl100kBase);
    let write = |node: &PgStore, message: usize| {
        let (node, stream) = (node.clone(), stream.clone());
        async move {
            let appended = node
                .append(&stream, vec![event(message, 0, 1, false)], now)
                .await
                .unwrap();
            appended[0].record.revision
        }
    };
    write(&a, 0).await;
    a.context(&stream, &request, now, 0).await.unwrap().unwrap();
    assert_eq!(
        (a.metrics().cache_loads, a.metrics().cache_catch_ups),
        (1, 0)
    );

    // Its own write: applied at the commit, served without asking the database.
    let revision = write(&a, 1).await;
    let window = a.context(&stream, &request, now, 0).await.unwrap().unwrap();
    assert!(window.text.contains(MESSAGES[1]), "{}", window.text);
    assert_eq!(
        a.position(&stream, 0).await.unwrap().unwrap().revision,
        revision
    );
    assert_eq!(
        (a.metrics().cache_loads, a.metrics().cache_catch_ups),
        (1, 1)
    );

    // Another node's write, read at its revision: caught up from the changelog.
    let revision = write(&b, 3).await;
    let window = a
        .context(&stream, &request, now, revision)
        .await
        .unwrap()
        .unwrap();
    assert!(window.text.contains(MESSAGES[3]), "{}", window.text);
    assert_eq!(
        (a.metrics().cache_loads, a.metrics().cache_catch_ups),
        (1, 2)
    );
}

/// Maintenance run by two nodes at once does each thing once: every expired note is deleted by
/// one change, records past the age limit go in several bounded steps (more than one step's
/// worth), and both nodes then serve what a fresh load serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_on_two_nodes_at_once_is_done_once() {
    let Some(url) = pg_cluster::database("pg_maintain_twice") else {
        return;
    };
    // Without detection, so that the records left are counted exactly.
    let options = |cache_bytes| StoreOptions {
        anomaly: recap::anomaly::AnomalySettings::off(),
        ..options(cache_bytes)
    };
    let a = PgStore::open(&url, options(usize::MAX / 2)).await.unwrap();
    let b = PgStore::open(&url, options(usize::MAX / 2)).await.unwrap();
    let fresh = PgStore::open(&url, options(1)).await.unwrap();
    let now = chrono::Utc::now().trunc_subsecs(0);
    let old = now - TimeDelta::hours(2);
    const OLD_RECORDS: usize = 5_000;
    let names: Vec<StreamName> = STREAMS
        .iter()
        .map(|s| StreamName::new(s).unwrap())
        .collect();
    for stream in &names {
        for chunk in 0..OLD_RECORDS / 1_000 {
            let events = (0..1_000)
                .map(|i| {
                    Event::new("tool", Severity::Info, format!("step {chunk}-{i}"))
                        .unwrap()
                        .at(old)
                })
                .collect();
            a.append(stream, events, old).await.unwrap();
        }
        a.append(stream, vec![event(1, 0, 1, false)], now)
            .await
            .unwrap();
        for minutes in [1, 2] {
            let expires_at = Some(now - TimeDelta::minutes(minutes));
            a.add_note(stream, format!("expired {minutes}"), expires_at, old)
                .await
                .unwrap();
        }
        let retention = Retention {
            max_records: None,
            max_age: Some(TimeDelta::hours(1)),
        };
        b.set_retention(stream, retention).await.unwrap();
        // Both nodes hold the stream's state before maintenance.
        for node in [&a, &b] {
            served(node, stream, 0, now).await;
        }
    }
    let before = a.stream(&names[0]).await.unwrap().unwrap();

    let (from_a, from_b) = tokio::join!(a.maintain(now), b.maintain(now));
    from_a.unwrap();
    from_b.unwrap();

    for stream in &names {
        let stats = a.stream(stream).await.unwrap().unwrap();
        // The young record, and the notes' audit records after it.
        assert_eq!(stats.stored_records, 3, "{stats:?}");
        assert_eq!(stats.notes, 0);
        // One revision per expired note, whichever node deleted it.
        assert_eq!(stats.revision, before.revision + 2);
        let changes = a.changes(stream, 0, 100).await.unwrap();
        let deletions = changes
            .iter()
            .filter(|change| matches!(change.body, recap::store::ChangeBody::NoteDeleted { .. }))
            .count();
        assert_eq!(deletions, 2, "{changes:?}");
        let expected = served(&fresh, stream, 0, now).await;
        for (node, name) in [(&a, "a"), (&b, "b")] {
            let answer = converged(node, stream, &expected, now).await;
            assert!(
                answer == expected,
                "node {name} differs from a fresh load after maintenance:\n{}",
                difference(&answer, &expected)
            );
        }
    }
    // Nothing is left: a third run changes nothing.
    a.maintain(now).await.unwrap();
    assert_eq!(
        a.stream(&names[0]).await.unwrap().unwrap().revision,
        before.revision + 2
    );
}
