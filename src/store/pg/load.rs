//! Reading a stream's in-memory state back from the database: the writer's shadow (the records
//! collapse can reach) and a node's cached state for contexts (the whole tail). Both follow the
//! redb store's restore (`reads::restore_stream` there): the stream's row says where the tail
//! starts and which older records a state keeps, so a state loaded at a revision is the one
//! appended to record by record, on any node.

use std::sync::Arc;

use tokio_postgres::{GenericClient, Row, Transaction};

use crate::anomaly::{AnomalyOverrides, DetectorState};
use crate::context::{CachedRecord, PayloadPolicy, without_payload};
use crate::event::{Record, StreamName};
use crate::meter::Meter;
use crate::stream::{Snapshot, StreamState, TailCapacity};

use super::super::{ChangeBody, Retention, StoreError, StoreOptions};
use super::cache::CatchUp;
use super::codec::{self, Restore};
use super::{PgError, unreachable_or};

/// The columns of `recap_streams` that [`StreamRow::decode`] reads, in its order.
pub(super) const STREAM_COLUMNS: &str = "id, name, revision, next_note_id, first_seq, \
     severe_created, totals, retention, changelog_floor, restore, anomaly_detectors, \
     anomaly_overrides";

/// Where [`STREAM_COLUMNS`] has `anomaly_overrides`.
pub(super) const OVERRIDES_COLUMN: usize = 11;

/// A stream's row.
pub(super) struct StreamRow {
    pub id: u64,
    pub revision: u64,
    pub next_note_id: u64,
    pub first_seq: u64,
    pub severe_created: u64,
    pub totals: crate::context::Totals,
    pub retention: Option<Retention>,
    pub changelog_floor: u64,
    pub restore: Restore,
    pub detectors: Option<Box<DetectorState>>,
    pub anomalies: Option<AnomalyOverrides>,
}

impl StreamRow {
    /// Decodes a row selected with [`STREAM_COLUMNS`].
    pub(super) fn decode(stream: &str, row: &Row) -> Result<StreamRow, StoreError> {
        let count = |index: usize| row.get::<_, i64>(index) as u64;
        Ok(StreamRow {
            id: count(0),
            revision: count(2),
            next_note_id: count(3),
            first_seq: count(4),
            severe_created: count(5),
            totals: codec::decode_totals(stream, row.get(6))?,
            retention: codec::decode_retention(stream, row.get(7))?,
            changelog_floor: count(8),
            restore: codec::decode_restore(stream, row.get(9))?,
            detectors: codec::decode_detectors(stream, row.get(10))?,
            anomalies: codec::decode_overrides(stream, row.get(OVERRIDES_COLUMN))?,
        })
    }
}

/// Reads a stream's row, `None` if there is no stream of that name.
pub(super) async fn stream_row(
    client: &(impl GenericClient + Sync),
    stream: &StreamName,
) -> Result<Option<StreamRow>, StoreError> {
    let row = client
        .query_opt(
            &format!("SELECT {STREAM_COLUMNS} FROM recap_streams WHERE name = $1"),
            &[&stream.as_str()],
        )
        .await
        .map_err(|error| unreachable_or(error, "reading a stream"))?;
    row.map(|row| StreamRow::decode(stream.as_str(), &row))
        .transpose()
}

/// A record row as a state holds it: its payload kept only if `payloads` says so (and it is a
/// collapse target); a note's audit record remembers its note either way.
pub(super) fn cached(
    stream: &str,
    seq: i64,
    body: &str,
    payloads: PayloadPolicy,
    meter: &Meter,
) -> Result<Arc<CachedRecord>, StoreError> {
    let record = codec::decode_record(stream, seq, body)?;
    Ok(Arc::new(cached_record(&record, payloads, meter)))
}

/// See [`cached`].
pub(super) fn cached_record(
    record: &Record,
    payloads: PayloadPolicy,
    meter: &Meter,
) -> CachedRecord {
    CachedRecord::with_payload(
        without_payload(record),
        record.payload.clone(),
        payloads,
        meter,
    )
}

/// The state of `stream` as its row says, with the records `capacity` keeps, read in
/// `transaction` (so from one snapshot).
pub(super) async fn restore(
    transaction: &Transaction<'_>,
    stream: &StreamName,
    row: &StreamRow,
    options: &StoreOptions,
    capacity: TailCapacity,
    payloads: PayloadPolicy,
    meter: &Meter,
) -> Result<StreamState, StoreError> {
    let name = stream.as_str();
    let id = row.id as i64;
    let last_seq = row.totals.records;
    let tail_from = capacity
        .start(last_seq, &row.restore.book.tail_bytes)
        .max(row.first_seq);
    let keep = i64::try_from(capacity.severe_kept(row.severe_created)).unwrap_or(i64::MAX);
    // Goal records in the tail are the tail's.
    let older_goals: Vec<i64> = row
        .restore
        .first_goals
        .iter()
        .chain(&row.restore.latest_goal)
        .filter(|&&seq| seq >= row.first_seq && seq < tail_from)
        .map(|&seq| seq as i64)
        .collect();
    let (from, to) = (tail_from as i64, last_seq as i64);
    let tail_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&id, &from, &to];
    let tail = transaction.query(
        "SELECT seq, body FROM recap_records WHERE stream_id = $1 AND seq >= $2 AND seq <= $3
         ORDER BY seq",
        &tail_params,
    );
    let severe = async {
        if keep == 0 {
            return Ok(Vec::new());
        }
        transaction
            .query(
                "SELECT seq, body FROM recap_records WHERE stream_id = $1 AND severe AND seq < $2
                 ORDER BY seq DESC LIMIT $3",
                &[&id, &from, &keep],
            )
            .await
    };
    let goals = async {
        if older_goals.is_empty() {
            return Ok(Vec::new());
        }
        transaction
            .query(
                "SELECT seq, body FROM recap_records WHERE stream_id = $1 AND seq = ANY($2)",
                &[&id, &older_goals],
            )
            .await
    };
    let notes_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
    let notes = transaction.query(
        "SELECT id, body FROM recap_notes WHERE stream_id = $1 ORDER BY id",
        &notes_params,
    );
    let (tail, severe, goals, notes) = tokio::try_join!(tail, severe, goals, notes)
        .map_err(|error: PgError| unreachable_or(error, "loading a stream"))?;

    let decode = |row: &Row| cached(name, row.get(0), row.get(1), payloads, meter);
    let mut records = Vec::with_capacity(tail.len());
    for row in &tail {
        // Seqs are dense: a gap is a lost row, which a window must not silently skip.
        let expected = tail_from + records.len() as u64;
        let seq = row.get::<_, i64>(0) as u64;
        if seq != expected {
            return Err(missing(name, expected));
        }
        records.push(decode(row)?);
    }
    if tail_from <= last_seq && records.len() as u64 != last_seq - tail_from + 1 {
        return Err(missing(name, tail_from + records.len() as u64));
    }
    let older_severe = severe
        .iter()
        .rev()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?;
    let goal_of = |seq: u64| -> Result<Option<Arc<CachedRecord>>, StoreError> {
        if seq < row.first_seq || seq > last_seq {
            return Ok(None);
        }
        if seq >= tail_from {
            return Ok(records.get((seq - tail_from) as usize).cloned());
        }
        goals
            .iter()
            .find(|goal| goal.get::<_, i64>(0) as u64 == seq)
            .map(decode)
            .transpose()
    };
    let mut first_goals = Vec::with_capacity(row.restore.first_goals.len());
    for &seq in &row.restore.first_goals {
        first_goals.extend(goal_of(seq)?);
    }
    let latest_goal = row.restore.latest_goal.map(goal_of).transpose()?.flatten();
    let notes = notes
        .iter()
        .map(|note| codec::decode_note(name, note.get(0), note.get(1)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StreamState::restore(
        options.collapse,
        capacity,
        meter,
        Snapshot {
            tail: records,
            older_severe,
            goals: first_goals,
            latest_goal,
            older_last_ts: row.restore.book.older_last_ts,
            totals: row.totals.clone(),
            notes,
            revision: row.revision,
            next_note_id: row.next_note_id,
            severe_created: row.severe_created,
            bytes: row.restore.book.tail_bytes,
        },
    ))
}

/// A record of `stream` that its row says is stored but that is not there.
fn missing(stream: &str, seq: u64) -> StoreError {
    StoreError::Damaged {
        stream: stream.to_owned(),
        row: format!("record {seq}"),
        problem: "is missing though the stream's row says it is stored".to_owned(),
    }
}

/// Changes a catch-up applies at most; a stream further ahead is loaded again instead.
pub(super) const MAX_CATCH_UP_CHANGES: u64 = 4_096;

/// What a state at revision `have` of the stream `row` describes needs to reach the row's
/// revision (see [`CatchUp`]), read in `transaction` after the row; `None` when loading the
/// stream again is the way (too far behind, or the changes needed are trimmed).
pub(super) async fn catch_up(
    transaction: &Transaction<'_>,
    stream: &StreamName,
    row: &StreamRow,
    have: u64,
) -> Result<Option<CatchUp>, StoreError> {
    let behind = row.revision.saturating_sub(have);
    if row.revision < have || behind > MAX_CATCH_UP_CHANGES || row.changelog_floor > have {
        return Ok(None);
    }
    let fail = |error: PgError| unreachable_or(error, "catching up with a stream");
    let (id, after, until) = (row.id as i64, have as i64, row.revision as i64);
    let rows = transaction
        .query(
            "SELECT revision, body FROM recap_changes
             WHERE stream_id = $1 AND revision > $2 AND revision <= $3 ORDER BY revision",
            &[&id, &after, &until],
        )
        .await
        .map_err(fail)?;
    if rows.len() as u64 != behind {
        // Trimmed meanwhile: the changes needed are gone.
        return Ok(None);
    }
    let mut changes = Vec::with_capacity(rows.len());
    let mut touched = Vec::new();
    for change in &rows {
        let change = codec::decode_change(stream, row.id, change.get(0), change.get(1))?;
        match &change.body {
            ChangeBody::Record(record) => touched.push(record.seq as i64),
            ChangeBody::Repeat { seq, .. } => touched.push(*seq as i64),
            ChangeBody::Note(_) | ChangeBody::NoteDeleted { .. } => {}
        }
        changes.push((change.revision, change.body));
    }
    let mut current = std::collections::HashMap::new();
    if !touched.is_empty() {
        let records = transaction
            .query(
                "SELECT seq, body FROM recap_records WHERE stream_id = $1 AND seq = ANY($2)",
                &[&id, &touched],
            )
            .await
            .map_err(fail)?;
        for record in &records {
            let seq: i64 = record.get(0);
            current.insert(
                seq as u64,
                codec::decode_record(stream.as_str(), seq, record.get(1))?,
            );
        }
    }
    Ok(Some(CatchUp {
        changes,
        current,
        totals: row.totals.clone(),
        revision: row.revision,
        first_seq: row.first_seq,
    }))
}
