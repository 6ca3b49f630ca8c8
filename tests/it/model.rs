//! The store against a model of what it promises, written as plainly as possible: random
//! appends (with repeats that collapse and ones just outside the collapse window), notes added
//! and deleted, retention, stream deletes and reopens of the real file; after every step, every
//! stream's records, totals, revision, notes and changelog read back exactly as the model says.

use std::collections::BTreeMap;

use chrono::{SubsecRound, TimeDelta};
use proptest::prelude::*;
use recap::collapse::{CollapsePolicy, DEFAULT_COLLAPSE_WINDOW};
use recap::event::{Event, Record, Severity, StreamName, Timestamp};
use recap::store::{RecordQuery, Retention, Store, StoreOptions};

const STREAMS: [&str; 3] = ["agent-a", "agent-b", "team.agent-c"];
const KINDS: [&str; 3] = ["tool", "llm", "plan"];
const MESSAGES: [&str; 4] = [
    "search(\"redb\") timed out after 30s",
    "rate limited; retrying",
    "wrote src/main.rs",
    "the user prefers small diffs",
];
/// Seconds between two events: the same moment, close, exactly the collapse window, just past it.
const GAPS: [i64; 5] = [0, 1, 30, 600, 601];

#[derive(Clone, Debug)]
enum Op {
    /// Events: (message, kind, severity, with an actor, gap index).
    Append(usize, Vec<(usize, usize, usize, bool, usize)>),
    AddNote(usize, usize),
    /// Deletes the stream's n-th live note (modulo their number), or an id that never was.
    DeleteNote(usize, usize),
    Retain(usize, u64),
    DeleteStream(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let event = (
        0..MESSAGES.len(),
        0..KINDS.len(),
        0usize..5,
        any::<bool>(),
        0..GAPS.len(),
    );
    prop_oneof![
        8 => (0..STREAMS.len(), prop::collection::vec(event, 1..12))
            .prop_map(|(stream, events)| Op::Append(stream, events)),
        2 => (0..STREAMS.len(), 0..MESSAGES.len()).prop_map(|(s, m)| Op::AddNote(s, m)),
        2 => (0..STREAMS.len(), 0usize..8).prop_map(|(s, n)| Op::DeleteNote(s, n)),
        1 => (0..STREAMS.len(), 1u64..12).prop_map(|(s, keep)| Op::Retain(s, keep)),
        1 => (0..STREAMS.len()).prop_map(Op::DeleteStream),
        1 => Just(Op::Reopen),
    ]
}

/// One record as the model keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    seq: u64,
    kind: String,
    severity: Severity,
    actor: Option<String>,
    message: String,
    repeat_count: u64,
    first_ts: Timestamp,
    last_ts: Timestamp,
}

impl Row {
    fn of(record: &Record) -> Row {
        Row {
            seq: record.seq,
            kind: record.kind.as_str().to_owned(),
            severity: record.severity,
            actor: record.actor.clone(),
            message: record.message.clone(),
            repeat_count: record.repeat_count,
            first_ts: record.first_ts,
            last_ts: record.last_ts,
        }
    }
}

/// One stream as the model keeps it.
#[derive(Clone, Debug)]
struct Model {
    /// Every record ever created; those before `first_seq` were removed by retention.
    rows: Vec<Row>,
    first_seq: u64,
    events: u64,
    revision: u64,
    notes: BTreeMap<u64, String>,
    next_note_id: u64,
    keep: Option<u64>,
}

impl Default for Model {
    /// A stream that has just been created.
    fn default() -> Model {
        Model {
            rows: Vec::new(),
            first_seq: 1,
            events: 0,
            revision: 0,
            notes: BTreeMap::new(),
            next_note_id: 1,
            keep: None,
        }
    }
}

impl Model {
    /// The store's collapse rule with a lookback of one: an event repeats the newest record if
    /// kind, severity, actor and message are the same and it is within the window of the
    /// record's `last_ts`; otherwise it is a new record.
    fn append(
        &mut self,
        kind: &str,
        severity: Severity,
        actor: Option<&str>,
        message: &str,
        ts: Timestamp,
    ) {
        self.events += 1;
        self.revision += 1;
        if let Some(last) = self.rows.last_mut()
            && last.kind == kind
            && last.severity == severity
            && last.actor.as_deref() == actor
            && last.message == message
            && (ts - last.last_ts).abs() <= DEFAULT_COLLAPSE_WINDOW
        {
            last.repeat_count += 1;
            last.last_ts = last.last_ts.max(ts);
            return;
        }
        self.rows.push(Row {
            seq: self.rows.len() as u64 + 1,
            kind: kind.to_owned(),
            severity,
            actor: actor.map(str::to_owned),
            message: message.to_owned(),
            repeat_count: 1,
            first_ts: ts,
            last_ts: ts,
        });
    }

    /// A note is a change of its own, and its audit record an event of the stream.
    fn add_note(&mut self, text: &str, now: Timestamp) -> u64 {
        let id = self.next_note_id;
        self.next_note_id += 1;
        self.notes.insert(id, text.to_owned());
        self.revision += 1;
        self.append("note", Severity::Info, None, text, now);
        id
    }

    /// Retention as of now: the newest `keep` records stay.
    fn retain(&mut self) {
        if let Some(keep) = self.keep {
            let last = self.rows.len() as u64;
            self.first_seq = self.first_seq.max((last + 1).saturating_sub(keep));
        }
    }

    fn stored(&self) -> &[Row] {
        &self.rows[(self.first_seq - 1) as usize..]
    }
}

/// Lookback 1 (the model's collapse rule), and no anomaly records (the model has none).
fn options() -> StoreOptions {
    StoreOptions {
        collapse: CollapsePolicy {
            lookback: 1,
            ..CollapsePolicy::default()
        },
        anomaly: recap::anomaly::AnomalySettings::off(),
        ..StoreOptions::default()
    }
}

fn name(index: usize) -> StreamName {
    StreamName::new(STREAMS[index]).unwrap()
}

/// Every stored record of a stream, paged forward.
fn stored(store: &Store, stream: &StreamName) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let query = RecordQuery {
            after,
            limit: 7,
            ..RecordQuery::default()
        };
        let page = store.records(stream, &query).unwrap();
        rows.extend(page.records.iter().map(Row::of));
        match page.next {
            Some(next) => after = Some(next),
            None => return rows,
        }
    }
}

/// Checks that the store answers every read as the models say.
fn check(
    store: &Store,
    models: &BTreeMap<usize, Model>,
    now: Timestamp,
) -> Result<(), TestCaseError> {
    store.maintain(now).wait().unwrap();
    for index in 0..STREAMS.len() {
        let stream = name(index);
        let Some(model) = models.get(&index) else {
            prop_assert!(store.stream(&stream).is_none(), "{} exists", stream);
            continue;
        };
        let stats = store.stream(&stream).expect("the stream exists");
        prop_assert_eq!(stats.records, model.rows.len() as u64);
        prop_assert_eq!(stats.events, model.events);
        prop_assert_eq!(stats.revision, model.revision);
        prop_assert_eq!(stats.stored_records, model.stored().len() as u64);
        prop_assert_eq!(stats.notes, model.notes.len() as u64);
        prop_assert_eq!(stored(store, &stream), model.stored().to_vec());
        let notes: Vec<(u64, String)> = store
            .notes(&stream, now)
            .unwrap()
            .into_iter()
            .map(|note| (note.id, note.text))
            .collect();
        let expected: Vec<(u64, String)> = model.notes.clone().into_iter().collect();
        prop_assert_eq!(notes, expected);
        // The changelog replays each revision it still has once, in order, up to the last.
        let changes = store.changes(&stream, 0, usize::MAX).unwrap();
        let revisions: Vec<u64> = changes.iter().map(|change| change.revision).collect();
        if let (Some(&first), Some(&last)) = (revisions.first(), revisions.last()) {
            prop_assert_eq!(revisions, (first..=last).collect::<Vec<u64>>());
            prop_assert_eq!(last, model.revision);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_store_answers_as_its_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), options()).unwrap();
        let mut models: BTreeMap<usize, Model> = BTreeMap::new();
        // Event times from a month ago, so that no gap reaches the future the store refuses.
        let mut clock = chrono::Utc::now().trunc_subsecs(0) - TimeDelta::days(30);
        for op in &ops {
            match op {
                Op::Append(index, events) => {
                    let model = models.entry(*index).or_default();
                    let mut batch = Vec::new();
                    for &(message, kind, severity, actor, gap) in events {
                        clock += TimeDelta::seconds(GAPS[gap]);
                        let (kind, severity) = (KINDS[kind], Severity::ALL[severity]);
                        let actor = actor.then_some("searcher");
                        let mut event = Event::new(kind, severity, MESSAGES[message]).unwrap().at(clock);
                        event.actor = actor.map(str::to_owned);
                        batch.push(event);
                        model.append(kind, severity, actor, MESSAGES[message], clock);
                    }
                    store.append(&name(*index), batch, clock).wait().unwrap();
                }
                Op::AddNote(index, message) => {
                    clock += TimeDelta::seconds(1);
                    let model = models.entry(*index).or_default();
                    let id = model.add_note(MESSAGES[*message], clock);
                    let note = store.add_note(&name(*index), MESSAGES[*message].into(), None, clock).wait().unwrap();
                    prop_assert_eq!(note.id, id);
                }
                Op::DeleteNote(index, nth) => {
                    let model = models.get_mut(index);
                    let id = model
                        .as_ref()
                        .and_then(|model| model.notes.keys().nth(nth % model.notes.len().max(1)).copied())
                        .unwrap_or(1_000 + *nth as u64);
                    let deleted = store.delete_note(&name(*index), id).wait();
                    match model {
                        Some(model) => {
                            let existed = model.notes.remove(&id).is_some();
                            if existed {
                                model.revision += 1;
                            }
                            prop_assert_eq!(deleted.unwrap(), existed);
                        }
                        None => prop_assert!(deleted.is_err(), "a note of a stream that does not exist"),
                    }
                }
                Op::Retain(index, keep) => {
                    let retention = Retention { max_records: Some(*keep), max_age: None };
                    let set = store.set_retention(&name(*index), retention).wait();
                    match models.get_mut(index) {
                        Some(model) => {
                            set.unwrap();
                            model.keep = Some(*keep);
                        }
                        None => prop_assert!(set.is_err(), "retention of a stream that does not exist"),
                    }
                }
                Op::DeleteStream(index) => {
                    let deleted = store.delete_stream(&name(*index)).wait().unwrap();
                    prop_assert_eq!(deleted, models.remove(index).is_some());
                }
                Op::Reopen => {
                    store.close().unwrap();
                    store = Store::open(dir.path(), options()).unwrap();
                }
            }
            for model in models.values_mut() {
                model.retain();
            }
            check(&store, &models, clock)?;
        }
        store.close().unwrap();
    }
}

/// The model's own rule, on the store's own example: identical events collapse, the window is
/// inclusive, a different actor is a different record.
#[test]
fn the_model_collapses_as_documented() {
    let at = |seconds| chrono::DateTime::UNIX_EPOCH + TimeDelta::seconds(seconds);
    let mut model = Model::default();
    for (actor, ts) in [(None, 0), (None, 600), (None, 1_201), (Some("a"), 1_201)] {
        model.append("tool", Severity::Error, actor, "timed out", at(ts));
    }
    let counts: Vec<u64> = model.rows.iter().map(|row| row.repeat_count).collect();
    assert_eq!(counts, vec![2, 1, 1]);
    assert_eq!(model.revision, 4);
}
