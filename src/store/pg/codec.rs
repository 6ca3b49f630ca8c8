//! What the PostgreSQL tables hold, as text: records and notes in the JSON the API answers
//! with, changes as a tagged JSON object, a stream's totals and retention as JSON. The only
//! code that encodes or decodes a value of the PostgreSQL backend.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

use crate::anomaly::{AnomalyOverrides, DetectorState};
use crate::context::Totals;
use crate::event::{Kind, Note, Record, StreamName, Timestamp};

use super::super::tail_book::TailBook;
use super::super::{Change, ChangeBody, Retention, StoreError};

/// A value that does not decode: named like the redb store's damaged rows.
fn damaged(stream: &str, row: String, problem: impl std::fmt::Display) -> StoreError {
    StoreError::Damaged {
        stream: stream.to_owned(),
        row,
        problem: format!("does not decode ({problem})"),
    }
}

/// A record's row body.
pub(super) fn encode_record(record: &Record) -> String {
    serde_json::to_string(record).expect("a record always serializes")
}

/// A record from its row body.
pub(super) fn decode_record(stream: &str, seq: i64, body: &str) -> Result<Record, StoreError> {
    serde_json::from_str(body).map_err(|error| damaged(stream, format!("record {seq}"), error))
}

/// A note's row body.
pub(super) fn encode_note(note: &Note) -> String {
    serde_json::to_string(note).expect("a note always serializes")
}

/// A note from its row body.
pub(super) fn decode_note(stream: &str, id: i64, body: &str) -> Result<Note, StoreError> {
    serde_json::from_str(body).map_err(|error| damaged(stream, format!("note {id}"), error))
}

/// A change's row body. A new record is kept whole, as it was created, so that a replay reads
/// one table (the redb file keeps the record row as the log entry instead).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredChange {
    Record(Arc<Record>),
    Repeat {
        seq: u64,
        repeat_count: u64,
        last_ts: i64,
    },
    Note(Note),
    NoteDeleted {
        id: u64,
    },
}

/// The row body of a change.
pub(super) fn encode_change(body: &ChangeBody) -> String {
    let stored = match body {
        ChangeBody::Record(record) => StoredChange::Record(Arc::clone(record)),
        ChangeBody::Repeat {
            seq,
            repeat_count,
            last_ts,
        } => StoredChange::Repeat {
            seq: *seq,
            repeat_count: *repeat_count,
            last_ts: last_ts.timestamp_micros(),
        },
        ChangeBody::Note(note) => StoredChange::Note(note.clone()),
        ChangeBody::NoteDeleted { id } => StoredChange::NoteDeleted { id: *id },
    };
    serde_json::to_string(&stored).expect("a change always serializes")
}

/// A change from its row.
pub(super) fn decode_change(
    stream: &StreamName,
    stream_id: u64,
    revision: i64,
    body: &str,
) -> Result<Change, StoreError> {
    let bad = |problem: String| damaged(stream.as_str(), format!("change {revision}"), problem);
    let stored: StoredChange =
        serde_json::from_str(body).map_err(|error| bad(error.to_string()))?;
    let body = match stored {
        StoredChange::Record(record) => ChangeBody::Record(record),
        StoredChange::Repeat {
            seq,
            repeat_count,
            last_ts,
        } => ChangeBody::Repeat {
            seq,
            repeat_count,
            last_ts: from_micros(last_ts).ok_or_else(|| bad(format!("time {last_ts}")))?,
        },
        StoredChange::Note(note) => ChangeBody::Note(note),
        StoredChange::NoteDeleted { id } => ChangeBody::NoteDeleted { id },
    };
    Ok(Change {
        stream: stream.clone(),
        stream_id,
        revision: revision as u64,
        body,
    })
}

/// A stream's totals, as its row keeps them.
#[derive(Serialize, Deserialize)]
struct StoredTotals {
    records: u64,
    events: u64,
    kinds: BTreeMap<Kind, u64>,
    severities: [u64; 5],
    first_ts: Option<i64>,
    last_ts: Option<i64>,
}

/// The `totals` column of a stream row.
pub(super) fn encode_totals(totals: &Totals) -> String {
    let stored = StoredTotals {
        records: totals.records,
        events: totals.events,
        kinds: totals.kinds.clone(),
        severities: totals.severities,
        first_ts: totals.first_ts.map(|ts| ts.timestamp_micros()),
        last_ts: totals.last_ts.map(|ts| ts.timestamp_micros()),
    };
    serde_json::to_string(&stored).expect("totals always serialize")
}

/// Totals from the `totals` column (`NULL` for a stream that took no change yet).
pub(super) fn decode_totals(stream: &str, text: Option<&str>) -> Result<Totals, StoreError> {
    let Some(text) = text else {
        return Ok(Totals::default());
    };
    let bad = |problem: String| damaged(stream, "stream row".into(), problem);
    let stored: StoredTotals = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let time = |micros: Option<i64>| {
        micros
            .map(|micros| from_micros(micros).ok_or_else(|| bad(format!("time {micros}"))))
            .transpose()
    };
    Ok(Totals {
        records: stored.records,
        events: stored.events,
        kinds: stored.kinds,
        severities: stored.severities,
        first_ts: time(stored.first_ts)?,
        last_ts: time(stored.last_ts)?,
    })
}

#[derive(Serialize, Deserialize)]
struct StoredRetention {
    max_records: Option<u64>,
    max_age_seconds: Option<i64>,
}

/// The `retention` column of a stream row.
pub(super) fn encode_retention(retention: &Retention) -> String {
    let stored = StoredRetention {
        max_records: retention.max_records,
        max_age_seconds: retention.max_age.map(|age| age.num_seconds()),
    };
    serde_json::to_string(&stored).expect("retention always serializes")
}

/// A stream's own retention, if it has one.
pub(super) fn decode_retention(
    stream: &str,
    text: Option<&str>,
) -> Result<Option<Retention>, StoreError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let stored: StoredRetention =
        serde_json::from_str(text).map_err(|error| damaged(stream, "stream row".into(), error))?;
    Ok(Some(Retention {
        max_records: stored.max_records,
        max_age: stored.max_age_seconds.map(TimeDelta::seconds),
    }))
}

/// What a restore of a stream's state needs besides its rows (the redb store keeps the same
/// in its stream rows): where the readers' tail starts and what it passed, and which older
/// goal records a state keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Restore {
    pub book: TailBook,
    pub first_goals: Vec<u64>,
    pub latest_goal: Option<u64>,
}

/// The `restore` column of a stream row.
pub(super) fn encode_restore(restore: &Restore) -> String {
    serde_json::to_string(restore).expect("a restore always serializes")
}

/// What the `restore` column holds (`NULL` for a stream that took no change yet).
pub(super) fn decode_restore(stream: &str, text: Option<&str>) -> Result<Restore, StoreError> {
    let Some(text) = text else {
        return Ok(Restore::default());
    };
    serde_json::from_str(text).map_err(|error| damaged(stream, "stream row".into(), error))
}

fn from_micros(micros: i64) -> Option<Timestamp> {
    chrono::DateTime::from_timestamp_micros(micros)
}

/// The `anomaly_detectors` column of a stream row.
pub(super) fn encode_detectors(detectors: &DetectorState) -> String {
    serde_json::to_string(detectors).expect("detectors always serialize")
}

/// The detectors' state (`NULL`: nothing observed, or detection off).
pub(super) fn decode_detectors(
    stream: &str,
    text: Option<&str>,
) -> Result<Option<Box<DetectorState>>, StoreError> {
    text.map(|text| {
        serde_json::from_str(text).map_err(|error| damaged(stream, "stream row".into(), error))
    })
    .transpose()
}

/// The `anomaly_overrides` column of a stream row.
pub(super) fn encode_overrides(overrides: &AnomalyOverrides) -> String {
    serde_json::to_string(overrides).expect("overrides always serialize")
}

/// What a stream overrides of the server's anomaly settings (`NULL`: nothing).
pub(super) fn decode_overrides(
    stream: &str,
    text: Option<&str>,
) -> Result<Option<AnomalyOverrides>, StoreError> {
    text.map(|text| {
        serde_json::from_str(text).map_err(|error| damaged(stream, "stream row".into(), error))
    })
    .transpose()
}
