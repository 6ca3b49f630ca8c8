//! The conformance suite of the storage interface: the same operations through
//! [`recap::store::Backend`] against the redb store and the PostgreSQL store, which must give
//! the same answers (stream ids aside: each backend gives its own, only their order matters).
//!
//! Each scenario returns a transcript of every answer; the redb transcript is the reference.
//! Where PostgreSQL is not installed the PostgreSQL half does not run (see `pg_cluster`).

use std::collections::BTreeSet;
use std::fmt::Debug;

use chrono::{SubsecRound, TimeDelta};
use recap::anomaly::AnomalyOverrides;
use recap::event::{Event, Kind, Severity, StreamName, Timestamp, parse_timestamp};
use recap::payload::Payload;
use recap::store::{
    Backend, Change, ChangeBody, ImportedNote, ImportedRecord, PgStore, RecordQuery, Retention,
    Store, StoreError, StoreOptions,
};

use crate::pg_cluster;

fn ts(seconds: i64) -> Timestamp {
    parse_timestamp("2024-05-01T10:00:00Z").unwrap() + TimeDelta::seconds(seconds)
}

fn name(value: &str) -> StreamName {
    StreamName::new(value).unwrap()
}

fn event(kind: &str, severity: Severity, message: &str, at: i64) -> Event {
    Event::new(kind, severity, message).unwrap().at(ts(at))
}

/// Answers, one line each, with stream ids left out (see the module's doc).
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    fn note(&mut self, step: &str, answer: impl Debug) {
        self.0.push(format!("{step}: {answer:?}"));
    }

    fn changes(&mut self, step: &str, changes: Result<Vec<Change>, StoreError>) {
        let changes = changes.map(|changes| {
            changes
                .into_iter()
                .map(|change| (change.stream, change.revision, change.body))
                .collect::<Vec<_>>()
        });
        self.note(step, changes);
    }
}

/// Writes, reads and deletes one of each kind, with fixed times: everything but stream ids is
/// decided by the data model, so both backends must agree on every answer.
async fn scenario(backend: impl Backend) -> Vec<String> {
    let mut out = Transcript::default();
    let s = name("agent-1");
    let other = name("agent-2");

    // Collapse: repeats within the window fold, one outside it does not, kinds and severities
    // count.
    let first = vec![
        event("tool", Severity::Info, "search(\"redb\") -> 12 results", 0),
        event("tool", Severity::Error, "search timed out after 30s", 1),
        event("tool", Severity::Error, "search timed out after 30s", 2),
        event("plan", Severity::Info, "try another index", 3),
        event("tool", Severity::Error, "search timed out after 30s", 4),
        event("tool", Severity::Error, "search timed out after 30s", 4_000),
    ];
    out.note("append", backend.append(&s, first, ts(0)).await);
    let payload = Payload::from_json(r#"{"b": [1, 2], "a": "x"}"#).unwrap();
    let mut with_payload = event("llm", Severity::Warning, "slow answer", 4_001);
    with_payload.payload = Some(payload);
    with_payload.actor = Some("planner".into());
    with_payload.step_id = Some("step-7".into());
    with_payload.display_message = Some("slow".into());
    out.note(
        "append payload",
        backend.append(&s, vec![with_payload], ts(0)).await,
    );
    out.note("empty append", backend.append(&s, vec![], ts(0)).await);

    // Notes: a note and its audit record, a second one, a delete, a delete of a missing one.
    out.note(
        "note",
        backend
            .add_note(&s, "the index is on disk 2".into(), None, ts(4_002))
            .await,
    );
    out.note(
        "note expiring",
        backend
            .add_note(
                &s,
                "retry after 5 min".into(),
                Some(ts(9_000_000_000)),
                ts(4_003),
            )
            .await,
    );
    out.note("delete note 1", backend.delete_note(&s, 1).await);
    out.note("delete note 1 again", backend.delete_note(&s, 1).await);
    out.note(
        "delete note of missing stream",
        backend.delete_note(&other, 1).await,
    );
    out.note("notes", backend.notes(&s, ts(4_004)).await);

    // Imports: records kept as they were, a pinned note made again.
    let imported = vec![
        ImportedRecord {
            event: Event::new("tool", Severity::Info, "imported run").unwrap(),
            first_ts: ts(10),
            last_ts: ts(20),
            repeat_count: 7,
            note: None,
        },
        ImportedRecord {
            event: Event::new("note", Severity::Info, "imported note").unwrap(),
            first_ts: ts(30),
            last_ts: ts(30),
            repeat_count: 1,
            note: Some(ImportedNote {
                created_at: ts(30),
                expires_at: None,
            }),
        },
    ];
    out.note("import", backend.import(&other, imported).await);
    out.note("notes of import", backend.notes(&other, ts(40)).await);

    // Reads: forward and backward pages, filters, cursors.
    for (step, query) in [
        ("all", RecordQuery::default()),
        (
            "after 1 limit 2",
            RecordQuery {
                after: Some(1),
                limit: 2,
                ..RecordQuery::default()
            },
        ),
        (
            "before 5 limit 2",
            RecordQuery {
                before: Some(5),
                limit: 2,
                ..RecordQuery::default()
            },
        ),
        (
            "errors",
            RecordQuery {
                min_severity: Some(Severity::Error),
                ..RecordQuery::default()
            },
        ),
        (
            "kinds",
            RecordQuery {
                kinds: Some(BTreeSet::from([Kind::new("plan").unwrap()])),
                since: Some(ts(1)),
                ..RecordQuery::default()
            },
        ),
    ] {
        out.note(step, backend.records(&s, &query).await);
    }
    out.note(
        "records of missing",
        backend
            .records(&name("none"), &RecordQuery::default())
            .await,
    );
    out.changes("changes", backend.changes(&s, 0, 100).await);
    out.changes("changes after 3 limit 2", backend.changes(&s, 3, 2).await);
    out.changes("changes of import", backend.changes(&other, 0, 100).await);
    out.note("stats", backend.stream(&s).await);
    out.note("stats of missing", backend.stream(&name("none")).await);

    // Retention by count: the oldest records go, totals keep counting them.
    out.note(
        "retention",
        backend
            .set_retention(
                &s,
                Retention {
                    max_records: Some(3),
                    max_age: None,
                },
            )
            .await,
    );
    out.note(
        "append after retention",
        backend
            .append(&s, vec![event("tool", Severity::Info, "new", 4_010)], ts(0))
            .await,
    );
    backend.maintain(ts(4_011)).await.unwrap();
    out.note(
        "records after retention",
        backend.records(&s, &RecordQuery::default()).await,
    );
    out.note("stats after retention", backend.stream(&s).await);
    out.note(
        "retention of missing",
        backend
            .set_retention(&name("none"), Retention::default())
            .await,
    );

    // Deletes: gone at once; created again, it starts over.
    out.note("delete", backend.delete_stream(&s).await);
    out.note("delete again", backend.delete_stream(&s).await);
    out.note("stats after delete", backend.stream(&s).await);
    out.note(
        "append after delete",
        backend
            .append(
                &s,
                vec![event("tool", Severity::Info, "again", 5_000)],
                ts(0),
            )
            .await,
    );
    out.changes("changes after delete", backend.changes(&s, 0, 100).await);
    out.note("stats again", backend.stream(&s).await);
    out.0
}

fn compare(reference: &[String], other: &[String]) {
    for (line, (expected, actual)) in reference.iter().zip(other).enumerate() {
        assert_eq!(
            expected, actual,
            "the backends differ at step {line} (redb first)"
        );
    }
    assert_eq!(reference.len(), other.len());
}

/// What both backends run with: the defaults, without anomaly detection (its own scenario
/// has it on: an anomaly record is revised, and a replayed record shows its current message
/// in the redb file, its message as created in PostgreSQL; see `docs/design.md`).
fn options() -> StoreOptions {
    StoreOptions {
        anomaly: recap::anomaly::AnomalySettings::off(),
        ..StoreOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_give_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let reference = scenario(store.clone()).await;
    // The redb half always runs; it pins the scenario's own expectations too.
    assert!(
        reference
            .iter()
            .any(|line| line.contains("collapsed: true"))
    );
    drop(store);
    let Some(url) = pg_cluster::database("conformance") else {
        return;
    };
    let pg = PgStore::open(&url, options()).await.unwrap();
    let answers = scenario(pg).await;
    compare(&reference, &answers);
}

/// Maintenance: notes expire (each a deletion with its own revision), records older than a
/// stream's `max_age` go (its own retention, or the server's for a stream without one), a
/// second run finds nothing left, and the changelog no longer replays what touched them.
///
/// Times are from `base`, the time the test started: the redb store also maintains itself as
/// of the clock, which must find nothing to do before the scenario's own runs.
async fn maintenance_scenario(backend: impl Backend, base: Timestamp) -> Vec<String> {
    let mut out = Transcript::default();
    let ts = |seconds: i64| base + TimeDelta::seconds(seconds);
    let event = |kind: &str, severity: Severity, message: &str, at: i64| {
        Event::new(kind, severity, message).unwrap().at(ts(at))
    };
    let own = name("own-age");
    let server = name("server-age");
    let count = name("own-count");
    for stream in [&own, &server, &count] {
        let events = vec![
            event("tool", Severity::Info, "step one", 0),
            event("tool", Severity::Error, "step two failed", 10),
            event("tool", Severity::Error, "step two failed", 20),
            event("plan", Severity::Info, "try again", 30),
            event("tool", Severity::Info, "step two", 7_000),
            event("tool", Severity::Info, "step three", 7_010),
        ];
        out.note("append", backend.append(stream, events, ts(0)).await);
    }
    out.note(
        "note expiring",
        backend
            .add_note(&own, "wait for the build".into(), Some(ts(100)), ts(40))
            .await,
    );
    out.note(
        "note lasting",
        backend
            .add_note(&own, "the cache is cold".into(), None, ts(41))
            .await,
    );
    out.note(
        "own retention",
        backend
            .set_retention(
                &own,
                Retention {
                    max_records: None,
                    max_age: Some(TimeDelta::seconds(3_600)),
                },
            )
            .await,
    );
    // Its own retention replaces the server's whole: by count only, so nothing is too old.
    out.note(
        "count retention",
        backend
            .set_retention(
                &count,
                Retention {
                    max_records: Some(4),
                    max_age: None,
                },
            )
            .await,
    );
    backend.maintain(ts(50)).await.unwrap();
    out.note("notes before expiry", backend.notes(&own, ts(50)).await);
    out.note("stats before expiry", backend.stream(&own).await);
    backend.maintain(ts(200)).await.unwrap();
    out.note("notes after expiry", backend.notes(&own, ts(200)).await);
    out.changes("changes after expiry", backend.changes(&own, 10, 100).await);
    // At 7,100 s: the own limit (an hour) and the server's (two hours, see the test) cut at
    // 3,500 s and at -100 s; the second run finds nothing left.
    backend.maintain(ts(7_100)).await.unwrap();
    backend.maintain(ts(7_100)).await.unwrap();
    for stream in [&own, &server, &count] {
        out.note(
            "records after age",
            backend.records(stream, &RecordQuery::default()).await,
        );
        out.note("stats after age", backend.stream(stream).await);
        out.changes("changes after age", backend.changes(stream, 0, 100).await);
    }
    // Later still, the server's limit catches up with its stream.
    backend.maintain(ts(14_500)).await.unwrap();
    out.note(
        "records much later",
        backend.records(&server, &RecordQuery::default()).await,
    );
    out.note("stats much later", backend.stream(&server).await);
    out.note("notes much later", backend.notes(&own, ts(14_500)).await);
    out.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_agree_on_age_retention_and_note_expiry() {
    let options = StoreOptions {
        retention: Retention {
            max_records: None,
            max_age: Some(TimeDelta::seconds(7_200)),
        },
        ..options()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options.clone()).unwrap();
    let base = chrono::Utc::now().trunc_subsecs(0);
    let reference = maintenance_scenario(store.clone(), base).await;
    // The scenario does what it says on the redb store.
    assert!(reference.iter().any(|line| line.contains("NoteDeleted")));
    let stored = |step: &str| {
        reference
            .iter()
            .filter(|line| line.starts_with(step))
            .map(|line| line.split("stored_records: ").nth(1).unwrap()[..2].to_owned())
            .collect::<Vec<_>>()
    };
    // Age removes a prefix: the notes' audit records, older but after a young record, stay.
    assert_eq!(stored("stats after age"), ["4,", "5,", "4,"]);
    assert_eq!(stored("stats much later"), ["0,"]);
    drop(store);
    let Some(url) = pg_cluster::database("conformance_maintenance") else {
        return;
    };
    let pg = PgStore::open(&url, options).await.unwrap();
    compare(&reference, &maintenance_scenario(pg, base).await);
}

/// Anomaly detection: a loop (the same action again and again, past twice the threshold so its
/// record escalates), an oscillation, a recurring error and a stall raise the same records,
/// updated the same way, on both backends; a stream's overrides (a lower threshold, detection
/// off) apply to the events after them and show in its stats.
async fn anomaly_scenario(backend: impl Backend) -> Vec<String> {
    let mut out = Transcript::default();
    let s = name("agent-loop");
    let tuned = name("agent-tuned");
    let quiet = name("agent-quiet");
    let mut at = 0;
    let mut next = |kind: &str, severity: Severity, message: &str| {
        at += 2;
        event(kind, severity, message, at)
    };
    let mut events = Vec::new();
    // A loop: the same click seven times, a thought between two of them.
    for i in 0..7 {
        events.push(next("action", Severity::Info, "click #submit"));
        if i == 3 {
            events.push(next("llm", Severity::Info, "the form did not change"));
        }
    }
    // An oscillation: two pages in turn, three cycles and more.
    for i in 0..8 {
        let page = if i % 2 == 0 {
            "open /cart"
        } else {
            "open /checkout"
        };
        events.push(next("action", Severity::Info, page));
    }
    // A recurring error, with retries between.
    for attempt in 1..=4 {
        events.push(next(
            "tool",
            Severity::Error,
            "POST /pay failed: 502 bad gateway",
        ));
        events.push(next("retry", Severity::Info, &format!("retry {attempt}/5")));
    }
    out.note("append", backend.append(&s, events, ts(0)).await);
    // A stall: ten minutes of silence, then an event.
    let resumed = event("plan", Severity::Info, "ask the user", at + 600);
    out.note(
        "after a stall",
        backend.append(&s, vec![resumed], ts(0)).await,
    );
    out.note(
        "records",
        backend.records(&s, &RecordQuery::default()).await,
    );
    // The changes' revisions and what each touched (a replayed record's message differs by
    // design, see `options`).
    let changes = backend.changes(&s, 0, 1_000).await.map(|changes| {
        changes
            .into_iter()
            .map(|change| match change.body {
                ChangeBody::Record(record) => (change.revision, "record", record.seq, 1),
                ChangeBody::Repeat {
                    seq, repeat_count, ..
                } => (change.revision, "repeat", seq, repeat_count),
                _ => (change.revision, "note", 0, 0),
            })
            .collect::<Vec<_>>()
    });
    out.note("changes", changes);
    out.note("stats", backend.stream(&s).await);

    // Overrides: a lower threshold on one stream, detection off on another.
    for stream in [&tuned, &quiet] {
        let first = event("action", Severity::Info, "scroll down", 0);
        out.note("create", backend.append(stream, vec![first], ts(0)).await);
    }
    let lower = AnomalyOverrides {
        repeat_actions: Some(2),
        ..AnomalyOverrides::default()
    };
    out.note("tune", backend.set_anomalies(&tuned, lower).await);
    let off = AnomalyOverrides {
        enabled: Some(false),
        ..AnomalyOverrides::default()
    };
    out.note("silence", backend.set_anomalies(&quiet, off).await);
    out.note(
        "set on a missing stream",
        backend
            .set_anomalies(&name("none"), AnomalyOverrides::default())
            .await,
    );
    for stream in [&tuned, &quiet] {
        let again = vec![
            event("action", Severity::Info, "scroll down", 1),
            event("action", Severity::Info, "scroll down", 2),
            event("action", Severity::Info, "scroll down", 3),
        ];
        out.note("repeat", backend.append(stream, again, ts(0)).await);
        out.note(
            "records",
            backend.records(stream, &RecordQuery::default()).await,
        );
        out.note("stats", backend.stream(stream).await);
    }
    // Back to the server's settings.
    out.note(
        "reset",
        backend
            .set_anomalies(&tuned, AnomalyOverrides::default())
            .await,
    );
    out.note("stats after reset", backend.stream(&tuned).await);
    out.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_raise_the_same_anomalies() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions::default();
    let store = Store::open(dir.path(), options.clone()).unwrap();
    let reference = anomaly_scenario(store.clone()).await;
    // Every detector fires on the redb store, and the loop's record escalates.
    for detector in ["repeat", "oscillation", "recurring_error", "stall"] {
        assert!(
            reference
                .iter()
                .any(|line| line.starts_with("records:") && line.contains(detector)),
            "no {detector} anomaly in:\n{}",
            reference.join("\n")
        );
    }
    assert!(
        reference
            .iter()
            .any(|line| line.contains("severity: Error, first_ts"))
    );
    drop(store);
    let Some(url) = pg_cluster::database("conformance_anomalies") else {
        return;
    };
    let pg = PgStore::open(&url, options).await.unwrap();
    compare(&reference, &anomaly_scenario(pg).await);
}

/// Template collapse over a short lookback (three templates in turn, a lookback of three), note limits and a refused note on a new stream:
/// the answers and the stored state agree (changes are left out: in `template` mode a replayed
/// record shows its current message in the redb file and its message as created in PostgreSQL,
/// see `docs/design.md`).
async fn limits_scenario(backend: impl Backend) -> Vec<String> {
    let mut out = Transcript::default();
    let s = name("templated");
    let storm: Vec<Event> = (0..12)
        .map(|i| {
            let message = match i % 3 {
                0 => format!("retry {i}/5 after {}.5s", i + 1),
                1 => format!("request 0x{:x} failed", 4096 + i),
                _ => format!("step {i} done"),
            };
            event("tool", Severity::Warning, &message, i)
        })
        .collect();
    out.note("storm", backend.append(&s, storm, ts(0)).await);
    out.note(
        "note",
        backend.add_note(&s, "keep".into(), None, ts(20)).await,
    );
    out.note(
        "second note over the limit",
        backend.add_note(&s, "too many".into(), None, ts(21)).await,
    );
    out.note(
        "note too long on a new stream",
        backend
            .add_note(&name("fresh"), "x".repeat(100), None, ts(22))
            .await,
    );
    out.note("fresh stream", backend.stream(&name("fresh")).await);
    out.note(
        "records",
        backend.records(&s, &RecordQuery::default()).await,
    );
    out.note("stats", backend.stream(&s).await);
    out.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_agree_on_template_collapse_and_limits() {
    let options = StoreOptions {
        collapse: recap::CollapsePolicy {
            mode: recap::CollapseMode::Template,
            window: TimeDelta::minutes(10),
            lookback: 3,
        },
        notes: recap::store::NoteLimits {
            max_notes: 1,
            max_bytes: 50,
        },
        ..options()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options.clone()).unwrap();
    let reference = limits_scenario(store.clone()).await;
    assert!(reference.iter().any(|line| line.contains("NoteLimit")));
    assert!(
        reference
            .iter()
            .any(|line| line.contains("collapsed: true"))
    );
    assert!(
        reference
            .iter()
            .any(|line| line == "fresh stream: Ok(None)")
    );
    drop(store);
    let Some(url) = pg_cluster::database("conformance_limits") else {
        return;
    };
    let pg = PgStore::open(&url, options).await.unwrap();
    compare(&reference, &limits_scenario(pg).await);
}
