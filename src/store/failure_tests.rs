//! The writer's failure path: a failed commit fails its callers (and the batches placed on top
//! of it), loses nothing that was acknowledged, and the store goes on from the committed state.
//! Failures are injected through `Shared::failures_to_inject`: a real disk error cannot be
//! produced on demand.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chrono::Utc;

use super::{RecordQuery, Retention, Store, StoreError, StoreOptions};
use crate::event::{Event, Severity, StreamName};

/// Options with anomaly detection off: these tests count acknowledged events, records and
/// revisions exactly, and detection would add records of its own.
fn quiet() -> StoreOptions {
    StoreOptions {
        anomaly: crate::anomaly::AnomalySettings::off(),
        ..StoreOptions::default()
    }
}

fn name(value: &str) -> StreamName {
    StreamName::new(value).unwrap()
}

fn event(message: &str) -> Event {
    Event::new("tool", Severity::Info, message).unwrap()
}

fn inject(store: &Store, failures: u64) {
    store
        .inner
        .shared
        .failures_to_inject
        .store(failures, Ordering::Release);
}

/// Every stored record of `stream`, by seq: (message, repeat count).
fn stored(store: &Store, stream: &StreamName) -> BTreeMap<u64, (String, u64)> {
    let mut all = BTreeMap::new();
    let mut after = 0;
    loop {
        let query = RecordQuery {
            after: Some(after),
            limit: 500,
            ..RecordQuery::default()
        };
        let page = store.records(stream, &query).unwrap();
        for record in page.records {
            all.insert(record.seq, (record.message, record.repeat_count));
        }
        match page.next {
            Some(next) => after = next,
            None => return all,
        }
    }
}

#[test]
fn a_failed_commit_loses_nothing_acknowledged_and_the_store_goes_on() {
    const THREADS: usize = 8;
    const EVENTS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), quiet()).unwrap();
    let stream = name("agent");
    store
        .append(&stream, vec![event("warm up")], Utc::now())
        .wait()
        .unwrap();
    inject(&store, 2);

    // Unique events, and a heartbeat that collapses: repeats of a record made before the
    // failure must survive it with the right count.
    let outcomes: Vec<(String, Result<u64, StoreError>)> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (store, stream) = (&store, &stream);
                scope.spawn(move || {
                    (0..EVENTS)
                        .map(|i| {
                            let message = if i % 3 == 0 {
                                "heartbeat".to_owned()
                            } else {
                                format!("writer {thread} event {i}")
                            };
                            let result = store
                                .append(stream, vec![event(&message)], Utc::now())
                                .wait()
                                .map(|appended| appended[0].record.seq);
                            (message, result)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        writers
            .into_iter()
            .flat_map(|writer| writer.join().unwrap())
            .collect()
    });

    let failed = outcomes.iter().filter(|(_, r)| r.is_err()).count();
    assert!(failed >= 1, "the injected failures reached some callers");
    for (_, result) in &outcomes {
        if let Err(error) = result {
            // The failed commit's own callers get its error; those placed on top of it are
            // told to retry.
            assert!(
                matches!(
                    error,
                    StoreError::Storage { .. } | StoreError::Unavailable(_)
                ),
                "{error}"
            );
        }
    }
    let acknowledged: Vec<(&String, u64)> = outcomes
        .iter()
        .filter_map(|(message, result)| result.as_ref().ok().map(|seq| (message, *seq)))
        .collect();
    let heartbeats = acknowledged
        .iter()
        .filter(|(message, _)| *message == "heartbeat")
        .count() as u64;

    let check = |store: &Store| {
        let records = stored(store, &stream);
        // Dense seqs: failed placements left no hole.
        let seqs: Vec<u64> = records.keys().copied().collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        // Every acknowledged event is where its caller was told, and nothing else is stored.
        for (message, seq) in &acknowledged {
            assert_eq!(&&records[seq].0, message, "seq {seq}");
        }
        let events: u64 = records.values().map(|(_, repeats)| repeats).sum();
        assert_eq!(events, acknowledged.len() as u64 + 1);
        let stored_heartbeats: u64 = records
            .values()
            .filter(|(message, _)| message == "heartbeat")
            .map(|(_, repeats)| repeats)
            .sum();
        assert_eq!(stored_heartbeats, heartbeats);
        let stats = store.stream(&stream).unwrap();
        assert_eq!(stats.events, acknowledged.len() as u64 + 1);
        assert_eq!(stats.records, seqs.len() as u64);
    };
    check(&store);

    // It goes on: the next write is acknowledged, and everything reads back after a reopen.
    store
        .append(&stream, vec![event("after the failure")], Utc::now())
        .wait()
        .unwrap();
    store.close().unwrap();
    let store = Store::open(dir.path(), quiet()).unwrap();
    let records = stored(&store, &stream);
    assert_eq!(
        records.values().last().unwrap().0,
        "after the failure",
        "the write after the failure is the newest record"
    );
}

#[test]
fn a_failed_commit_creates_no_stream_and_a_failed_delete_keeps_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), quiet()).unwrap();
    let kept = name("kept");
    store
        .append(&kept, vec![event("one")], Utc::now())
        .wait()
        .unwrap();

    inject(&store, 1);
    let lost = name("never-committed");
    let error = store
        .append(&lost, vec![event("lost")], Utc::now())
        .wait()
        .unwrap_err();
    assert!(matches!(error, StoreError::Storage { .. }), "{error}");
    assert!(store.stream(&lost).is_none());

    // Deleting commits on the writer thread itself: the same guarantee holds there.
    inject(&store, 1);
    assert!(store.delete_stream(&kept).wait().is_err());
    assert_eq!(store.stream(&kept).unwrap().events, 1);
    store
        .append(&kept, vec![event("two")], Utc::now())
        .wait()
        .unwrap();
    assert!(store.delete_stream(&kept).wait().unwrap());
    assert!(store.stream(&kept).is_none());

    // The stream that never committed is absent from the file too, and its name is free.
    store.close().unwrap();
    let store = Store::open(dir.path(), quiet()).unwrap();
    assert!(store.streams().is_empty());
    store
        .append(&lost, vec![event("now")], Utc::now())
        .wait()
        .unwrap();
    assert_eq!(stored(&store, &lost).len(), 1);
}

#[test]
fn maintenance_right_after_a_failed_commit_works_from_the_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), quiet()).unwrap();
    let stream = name("kept-short");
    let events = (1..=10).map(|i| event(&format!("event {i}"))).collect();
    store.append(&stream, events, Utc::now()).wait().unwrap();
    let retention = Retention {
        max_records: Some(5),
        max_age: None,
    };
    store.set_retention(&stream, retention).wait().unwrap();
    store.maintain(Utc::now()).wait().unwrap();

    // The failing append is placed on the shadow before the committer fails it; maintenance,
    // queued right behind it, must not see the record that never was.
    inject(&store, 1);
    let lost = store.append(&stream, vec![event("lost")], Utc::now());
    let maintained = store.maintain(Utc::now());
    assert!(lost.wait().is_err());
    maintained.wait().unwrap();

    let check = |store: &Store| {
        let stats = store.stream(&stream).unwrap();
        assert_eq!(
            (stats.records, stats.events, stats.stored_records),
            (10, 10, 5)
        );
        let seqs: Vec<u64> = stored(store, &stream).into_keys().collect();
        assert_eq!(seqs, (6..=10).collect::<Vec<_>>());
    };
    check(&store);
    store.close().unwrap();
    let store = Store::open(dir.path(), quiet()).unwrap();
    check(&store);
    let appended = store
        .append(&stream, vec![event("next")], Utc::now())
        .wait()
        .unwrap();
    assert_eq!(appended[0].record.seq, 11);
}

/// Failures injected every few milliseconds while four threads append (with repeats), add and
/// delete notes, delete and recreate a stream, and run maintenance on a stream with a record
/// limit. Whatever was acknowledged is in the file where its caller was told, totals and
/// revisions match what subscribers saw, and a reopen restores the same streams.
#[test]
fn random_failures_under_mixed_load_keep_every_invariant() {
    use std::sync::atomic::AtomicBool;

    use crate::store::ChangeBody;

    const OPS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), quiet()).unwrap();
    let (a, b, short, churn) = (name("a"), name("b"), name("short"), name("churn"));
    store
        .append(&short, vec![event("first")], Utc::now())
        .wait()
        .unwrap();
    let limit = Retention {
        max_records: Some(5),
        max_age: None,
    };
    store.set_retention(&short, limit).wait().unwrap();
    let mut feed = store.subscribe();
    let done = AtomicBool::new(false);

    // Per stream a and b: every acknowledged event's (message, seq).
    let acknowledged: Vec<(StreamName, String, u64)> = std::thread::scope(|scope| {
        let store = &store;
        let done = &done;
        scope.spawn(move || {
            while !done.load(Ordering::Acquire) {
                inject(store, 1);
                std::thread::sleep(std::time::Duration::from_millis(15));
            }
            inject(store, 0);
        });
        let writers: Vec<_> = (0..4)
            .map(|thread| {
                let (a, b, short, churn) = (&a, &b, &short, &churn);
                scope.spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0..OPS {
                        let target = if (thread + i) % 2 == 0 { a } else { b };
                        match (thread * 7 + i) % 20 {
                            0 => {
                                let note = format!("remember {thread}-{i}");
                                if let Ok(note) = store.add_note(a, note, None, Utc::now()).wait() {
                                    let _ = store.delete_note(a, note.id).wait();
                                }
                            }
                            1 => {
                                let _ = store.delete_stream(churn).wait();
                            }
                            2 => {
                                let _ = store.maintain(Utc::now()).wait();
                            }
                            3 | 4 => {
                                let message = format!("short {thread}-{i}");
                                let _ = store.append(short, vec![event(&message)], Utc::now());
                                let _ =
                                    store.append(churn, vec![event("churn")], Utc::now()).wait();
                            }
                            step => {
                                // Three requests in flight at once, so that batches queue up
                                // behind a commit that is failing.
                                let pending: Vec<_> = (0..3)
                                    .map(|k| {
                                        let message = if (step + k) % 3 == 0 {
                                            "heartbeat".to_owned()
                                        } else {
                                            format!("writer {thread} op {i}.{k}")
                                        };
                                        let now = Utc::now();
                                        let pending =
                                            store.append(target, vec![event(&message)], now);
                                        (message, pending)
                                    })
                                    .collect();
                                for (message, pending) in pending {
                                    if let Ok(appended) = pending.wait() {
                                        let seq = appended[0].record.seq;
                                        acked.push((target.clone(), message, seq));
                                    }
                                }
                            }
                        }
                    }
                    acked
                })
            })
            .collect();
        // One writer that does not wait: its requests keep arriving while a commit fails, so
        // batches are placed on top of the failing one.
        let streamer = {
            let b = &b;
            scope.spawn(move || {
                let pending: Vec<_> = (0..OPS * 2)
                    .map(|i| {
                        std::thread::sleep(std::time::Duration::from_micros(100));
                        let message = format!("streamed {i}");
                        let pending = store.append(b, vec![event(&message)], Utc::now());
                        (message, pending)
                    })
                    .collect();
                pending
                    .into_iter()
                    .filter_map(|(message, pending)| {
                        let seq = pending.wait().ok()?[0].record.seq;
                        Some((b.clone(), message, seq))
                    })
                    .collect::<Vec<_>>()
            })
        };
        let acked = writers
            .into_iter()
            .chain([streamer])
            .flat_map(|writer| writer.join().unwrap())
            .collect();
        done.store(true, Ordering::Release);
        acked
    });
    assert!(store.metrics().failed_commits > 0, "failures were injected");
    store.maintain(Utc::now()).wait().unwrap();

    // What subscribers saw: per stream, revisions one after another with no gap or repeat.
    let mut last_revision: BTreeMap<StreamName, u64> = BTreeMap::new();
    let mut creations: BTreeMap<StreamName, Vec<(u64, String)>> = BTreeMap::new();
    loop {
        match feed.try_recv() {
            Ok(changes) => {
                for change in changes.iter().filter(|c| c.stream == a || c.stream == b) {
                    let last = last_revision.entry(change.stream.clone()).or_default();
                    assert_eq!(change.revision, *last + 1, "{}", change.stream);
                    *last = change.revision;
                    if let ChangeBody::Record(record) = &change.body {
                        let created = creations.entry(change.stream.clone()).or_default();
                        created.push((record.seq, record.message.clone()));
                    }
                }
            }
            Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
            // A lagging feed is not what this test is about: start counting again.
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                last_revision.clear();
                creations.clear();
            }
            Err(error) => panic!("{error}"),
        }
    }

    let check = |store: &Store| {
        for stream in [&a, &b] {
            let records = stored(store, stream);
            let seqs: Vec<u64> = records.keys().copied().collect();
            assert_eq!(
                seqs,
                (1..=seqs.len() as u64).collect::<Vec<_>>(),
                "{stream}"
            );
            let mine: Vec<_> = acknowledged.iter().filter(|(s, ..)| s == stream).collect();
            for (_, message, seq) in &mine {
                assert_eq!(&records[seq].0, message, "{stream} seq {seq}");
            }
            // Note audit events are records too; the acknowledged events are the rest.
            let events: u64 = records
                .iter()
                .filter(|(_, (message, _))| !message.starts_with("remember"))
                .map(|(_, (_, repeats))| repeats)
                .sum();
            assert_eq!(events, mine.len() as u64, "{stream}");
            let stats = store.stream(stream).unwrap();
            assert_eq!(stats.records, seqs.len() as u64, "{stream}");
            if let Some(last) = last_revision.get(stream) {
                assert_eq!(stats.revision, *last, "{stream}");
            }
            if let Some(created) = creations.get(stream) {
                for (seq, message) in created {
                    assert_eq!(&records[seq].0, message, "{stream} created seq {seq}");
                }
            }
        }
        let short_stats = store.stream(&short).unwrap();
        assert!(short_stats.stored_records <= 5, "{short_stats:?}");
        let short_seqs: Vec<u64> = stored(store, &short).into_keys().collect();
        let first = short_stats.records + 1 - short_stats.stored_records;
        assert_eq!(
            short_seqs,
            (first..=short_stats.records).collect::<Vec<_>>()
        );
    };
    check(&store);
    let before = store.streams();
    store.close().unwrap();
    let store = Store::open(dir.path(), quiet()).unwrap();
    assert_eq!(store.streams(), before);
    check(&store);
}

/// A writer thread that dies is recorded as the store's failure: writes answer `Failed` with
/// the cause (not "shutting down" forever), and what was committed still reads.
#[test]
fn a_dead_writer_is_reported_not_mistaken_for_a_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), quiet()).unwrap();
    let stream = name("agent");
    store
        .append(&stream, vec![event("kept")], Utc::now())
        .wait()
        .unwrap();
    assert_eq!(store.failure(), None);
    store.inject_writer_panic();
    let error = store
        .append(&stream, vec![event("lost")], Utc::now())
        .wait()
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Failed(cause) if cause.contains("writer thread died: injected writer panic")),
        "{error:?}"
    );
    assert!(store.failure().is_some());
    let later = store.append(&stream, vec![event("later")], Utc::now());
    assert!(matches!(later.wait(), Err(StoreError::Failed(_))));
    assert_eq!(
        stored(&store, &stream).len(),
        1,
        "committed records still read"
    );
}
