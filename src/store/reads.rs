//! Reading the file: opening and checking it, rebuilding each stream's in-memory state, history
//! pages and changelog replay. Everything here runs in redb read transactions, which see the
//! last durable commit and never wait for the writer.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, TableHandle,
};

use crate::event::{Note, Record, StreamName, Timestamp};
use crate::meter::Meter;
use crate::stream::{StreamState, TailCapacity};

use super::cache::Slot;
use super::schema::{self, DecodeError, SCHEMA_VERSION, StreamMeta};
use super::writer::read;
use super::{
    Change, ChangeBody, MAX_PAGE_RECORDS, RecordPage, RecordQuery, StoreError, StoreOptions,
};

/// A history read scans at most this many records for one page: a filter that matches little
/// returns a short page with a `next` cursor rather than walking a whole stream.
pub const MAX_SCAN_RECORDS: usize = 50_000;

/// What opening found in the file.
pub(super) struct Loaded {
    pub streams: HashMap<StreamName, Arc<Slot>>,
    pub next_stream_id: u64,
    pub purges: BTreeSet<u64>,
}

/// Maps redb's open errors to the store's.
pub(super) fn open_error(path: &Path, error: DatabaseError) -> StoreError {
    match error {
        DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
            path: path.to_owned(),
        },
        DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => StoreError::Corrupt {
            path: path.to_owned(),
            detail,
        },
        DatabaseError::UpgradeRequired(version) => StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("unsupported redb file format {version}"),
        },
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            StoreError::Corrupt {
                path: path.to_owned(),
                detail: io.to_string(),
            }
        }
        other => StoreError::Storage(format!("{}: {other}", path.display())),
    }
}

fn corrupt(path: &Path, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// Checks the schema version (writing it into a new file) and creates missing tables.
pub(super) fn prepare(db: &Database, path: &Path) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    let existing: Vec<String> = txn
        .list_tables()?
        .map(|table| table.name().to_owned())
        .collect();
    if !existing.is_empty() && !existing.iter().any(|name| name == "recap_meta") {
        return Err(corrupt(
            path,
            "a redb file without recap's tables (is it another program's file?)",
        ));
    }
    {
        let mut meta = txn.open_table(schema::META)?;
        let found = meta.get(schema::SCHEMA_VERSION_KEY)?.map(|v| v.value());
        match found {
            None if existing.len() > 1 => {
                return Err(corrupt(path, "the schema version row is missing"));
            }
            None => {
                meta.insert(schema::SCHEMA_VERSION_KEY, u64::from(SCHEMA_VERSION))?;
                meta.insert(schema::NEXT_STREAM_ID_KEY, 1)?;
            }
            Some(version) if version > u64::from(SCHEMA_VERSION) => {
                return Err(StoreError::SchemaTooNew {
                    path: path.to_owned(),
                    found: u32::try_from(version).unwrap_or(u32::MAX),
                    supported: SCHEMA_VERSION,
                });
            }
            Some(0) => return Err(corrupt(path, "schema version 0")),
            Some(_) => {}
        }
    }
    txn.open_table(schema::STREAMS)?;
    txn.open_table(schema::RECORDS)?;
    txn.open_table(schema::SEVERE)?;
    txn.open_table(schema::CHANGES)?;
    txn.open_table(schema::NOTES)?;
    txn.open_table(schema::PURGE)?;
    txn.commit()?;
    Ok(())
}

/// Reads the directory of streams: every stream's metadata row, and nothing else. Their states
/// are loaded when first used, so opening takes the same time however long the history is.
pub(super) fn load(db: &Database, path: &Path) -> Result<Loaded, StoreError> {
    let txn = db.begin_read()?;
    let meta_table = txn.open_table(schema::META)?;
    let next_stream_id = meta_table
        .get(schema::NEXT_STREAM_ID_KEY)?
        .map_or(1, |v| v.value());
    let purges = txn
        .open_table(schema::PURGE)?
        .iter()?
        .map(|entry| entry.map(|(key, _)| key.value()))
        .collect::<Result<BTreeSet<u64>, _>>()?;
    let streams_table = txn.open_table(schema::STREAMS)?;
    let mut streams = HashMap::new();
    for entry in streams_table.iter()? {
        let (name, value) = entry?;
        let name = StreamName::new(name.value()).map_err(|error| corrupt(path, error))?;
        let meta = schema::decode_meta(value.value()).map_err(|error| corrupt(path, error))?;
        streams.insert(name, Arc::new(Slot::new(meta)));
    }
    Ok(Loaded {
        streams,
        next_stream_id,
        purges,
    })
}

/// A stream's state read from the file for a reader (a cold load), with the metadata it was
/// read at; `None` when the stream was deleted meanwhile. When the stream has not changed
/// since it was evicted, the hints kept then make the state exactly the one evicted.
pub(super) fn load_state(
    db: &Database,
    path: &Path,
    name: &StreamName,
    slot: &Slot,
    options: &StoreOptions,
    meter: &Meter,
) -> Result<Option<(StreamState, StreamMeta)>, StoreError> {
    let txn = db.begin_read()?;
    let mut meta = match stream_meta(&txn, name, path) {
        Ok(meta) if meta.id == slot.id => meta,
        Ok(_) | Err(StoreError::UnknownStream(_)) => return Ok(None),
        Err(error) => return Err(error),
    };
    {
        let live = read(&slot.live);
        if live.meta.revision == meta.revision && live.meta.first_seq == meta.first_seq {
            meta.tail_start = live.meta.tail_start;
            meta.severe_start = live.meta.severe_start;
            meta.older_last_ts = live.meta.older_last_ts;
            meta.goal_seqs.clone_from(&live.meta.goal_seqs);
        }
    }
    let state = restore_stream(&txn, &meta, options, options.tail, meter, Reach::Hinted)
        .map_err(|error| corrupt(path, error))?;
    Ok(Some((state, meta)))
}

/// The writer's shadow of a stream with nothing in flight, read from the file: the records
/// collapse can reach, the goals and the notes.
pub(super) fn load_shadow(
    db: &Database,
    meta: &StreamMeta,
    options: &StoreOptions,
    meter: &Meter,
) -> Result<StreamState, StoreError> {
    let txn = db.begin_read()?;
    let capacity = TailCapacity {
        records: options.collapse.lookback,
        severe: 0,
    };
    restore_stream(&txn, meta, options, capacity, meter, Reach::Newest)
        .map_err(|error| StoreError::Storage(format!("cannot read stream {}: {error}", meta.id)))
}

/// A stream's notes read from the file, oldest first.
pub(super) fn notes(
    db: &Database,
    path: &Path,
    name: &StreamName,
    now: Timestamp,
) -> Result<Vec<Note>, StoreError> {
    let txn = db.begin_read()?;
    let meta = stream_meta(&txn, name, path)?;
    let mut notes = read_notes(&txn, meta.id).map_err(|error| corrupt(path, error))?;
    notes.retain(|note| note.is_live(now));
    Ok(notes)
}

fn read_notes(txn: &ReadTransaction, id: u64) -> Result<Vec<Note>, RestoreError> {
    let table = txn.open_table(schema::NOTES).map_err(storage)?;
    let mut notes = Vec::new();
    for entry in table.range((id, 0)..=(id, u64::MAX)).map_err(storage)? {
        let (key, value) = entry.map_err(storage)?;
        notes.push(schema::decode_note(key.value().1, value.value())?);
    }
    Ok(notes)
}

/// Which records a restore reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// From the restore hints (the state's tail as it was), within the capacity.
    Hinted,
    /// Only the newest `capacity.records`.
    Newest,
}

/// Errors while restoring one stream; the caller reports them as a damaged file.
#[derive(Debug, thiserror::Error)]
enum RestoreError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Storage(#[from] redb::Error),
}

fn storage<E: Into<redb::Error>>(error: E) -> RestoreError {
    RestoreError::Storage(error.into())
}

/// One stream's state: its tail (from the restore hints, or the newest records), the older
/// severe records (from the severe index), its notes and its totals. Reads O(tail) rows, never
/// the whole stream.
fn restore_stream(
    txn: &ReadTransaction,
    meta: &StreamMeta,
    options: &StoreOptions,
    capacity: TailCapacity,
    meter: &Meter,
    reach: Reach,
) -> Result<StreamState, RestoreError> {
    let id = meta.id;
    let last_seq = meta.totals.records;
    let hinted =
        reach == Reach::Hinted && (meta.tail_start.is_some() || meta.older_last_ts.is_some());
    let newest_first = (last_seq + 1).saturating_sub(capacity.records as u64);
    let mut tail_from = match meta.tail_start {
        Some(start) if hinted => start,
        None if hinted => last_seq + 1,
        _ => newest_first,
    };
    // Restore never takes more than the state keeps between trims (under twice the capacity).
    let most = (2 * capacity.records as u64).saturating_sub(1);
    tail_from = tail_from
        .max(meta.first_seq)
        .max((last_seq + 1).saturating_sub(most));
    let records = txn.open_table(schema::RECORDS).map_err(storage)?;
    let mut tail = Vec::new();
    for entry in records
        .range((id, tail_from)..=(id, last_seq))
        .map_err(storage)?
    {
        let (key, value) = entry.map_err(storage)?;
        tail.push(Arc::new(schema::decode_cached(
            key.value().1,
            value.value(),
            meter,
        )?));
    }
    let severe_index = txn.open_table(schema::SEVERE).map_err(storage)?;
    let severe_from = if hinted {
        meta.severe_start.unwrap_or(tail_from)
    } else {
        0
    };
    let mut severe_seqs = Vec::new();
    if severe_from < tail_from && capacity.severe > 0 {
        for entry in severe_index
            .range((id, severe_from)..(id, tail_from))
            .map_err(storage)?
            .rev()
            .take(2 * capacity.severe)
        {
            severe_seqs.push(entry.map_err(storage)?.0.value().1);
        }
    }
    severe_seqs.reverse();
    let mut severe = Vec::with_capacity(severe_seqs.len());
    for seq in severe_seqs {
        if let Some(value) = records.get((id, seq)).map_err(storage)? {
            severe.push(Arc::new(schema::decode_cached(seq, value.value(), meter)?));
        }
    }
    let mut goals = Vec::new();
    for &seq in &meta.goal_seqs {
        if seq < meta.first_seq || seq >= tail_from {
            continue;
        }
        if let Some(value) = records.get((id, seq)).map_err(storage)? {
            goals.push(Arc::new(schema::decode_cached(seq, value.value(), meter)?));
        }
    }
    let notes = read_notes(txn, id)?;
    Ok(StreamState::restore(
        options.collapse,
        capacity,
        meter,
        tail,
        severe,
        goals,
        meta.older_last_ts,
        meta.totals.clone(),
        notes,
        meta.revision,
        meta.next_note_id,
    ))
}

/// A stream's metadata as of `txn`.
fn stream_meta(
    txn: &ReadTransaction,
    stream: &StreamName,
    path: &Path,
) -> Result<StreamMeta, StoreError> {
    let streams = txn.open_table(schema::STREAMS)?;
    let value = streams
        .get(stream.as_str())?
        .ok_or_else(|| StoreError::UnknownStream(stream.to_string()))?;
    schema::decode_meta(value.value()).map_err(|error| corrupt(path, error))
}

/// A page of history (see [`RecordQuery`]).
pub(super) fn records(
    db: &Database,
    path: &Path,
    stream: &StreamName,
    query: &RecordQuery,
) -> Result<RecordPage, StoreError> {
    let txn = db.begin_read()?;
    let meta = stream_meta(&txn, stream, path)?;
    let limit = query.limit.min(MAX_PAGE_RECORDS);
    let last_seq = meta.totals.records;
    let low = query
        .after
        .map_or(0, |after| after.saturating_add(1))
        .max(meta.first_seq);
    let high = query
        .before
        .unwrap_or(u64::MAX)
        .min(last_seq.saturating_add(1));
    let empty = RecordPage {
        records: Vec::new(),
        next: None,
    };
    if limit == 0 || low >= high {
        return Ok(empty);
    }
    let backward = query.before.is_some() && query.after.is_none();
    let table = txn.open_table(schema::RECORDS)?;
    let range = table.range((meta.id, low)..(meta.id, high))?;
    let entries: Box<dyn Iterator<Item = _>> = if backward {
        Box::new(range.rev())
    } else {
        Box::new(range)
    };
    let mut page = Vec::new();
    let mut next = None;
    for (scanned, entry) in entries.enumerate() {
        let (key, value) = entry?;
        let seq = key.value().1;
        let (record, _) =
            schema::decode_record(seq, value.value()).map_err(|error| corrupt(path, error))?;
        if admits(query, &record) {
            page.push(record);
        }
        let at_end = if backward {
            seq == low
        } else {
            seq + 1 == high
        };
        if (page.len() == limit || scanned + 1 == MAX_SCAN_RECORDS) && !at_end {
            next = Some(seq);
            break;
        }
    }
    if backward {
        page.reverse();
    }
    Ok(RecordPage {
        records: page,
        next,
    })
}

fn admits(query: &RecordQuery, record: &Record) -> bool {
    query
        .kinds
        .as_ref()
        .is_none_or(|kinds| kinds.contains(&record.kind))
        && query.min_severity.is_none_or(|min| record.severity >= min)
        && query.since.is_none_or(|since| record.last_ts >= since)
        && query.until.is_none_or(|until| record.first_ts < until)
}

/// Changes with revision greater than `after` (see [`super::Store::changes`]).
///
/// New records are read from the records table (each keeps the revision that created it, and
/// those revisions grow with seq, so the first one after `after` is found by binary search);
/// every other change from the changelog table; the two are merged by revision.
pub(super) fn changes(
    db: &Database,
    path: &Path,
    stream: &StreamName,
    after: u64,
    limit: usize,
) -> Result<Vec<Change>, StoreError> {
    let txn = db.begin_read()?;
    let meta = stream_meta(&txn, stream, path)?;
    let start = after.max(meta.changelog_floor);
    if limit == 0 || start >= meta.revision {
        return Ok(Vec::new());
    }
    let id = meta.id;
    let records = txn.open_table(schema::RECORDS)?;
    let damaged = |error: DecodeError| corrupt(path, error);
    // First stored seq created after `start`.
    let (mut low, mut high) = (meta.first_seq, meta.totals.records + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        let created = match records.get((id, middle))? {
            Some(value) => schema::created_revision(value.value()).map_err(damaged)?,
            None => return Err(corrupt(path, format!("record {middle} is missing"))),
        };
        if created > start {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    let mut new_records = records.range((id, low)..=(id, meta.totals.records))?;
    let changelog = txn.open_table(schema::CHANGES)?;
    let mut others = changelog.range((id, start + 1)..=(id, u64::MAX))?;
    let mut next_record = new_records.next().transpose()?;
    let mut next_other = others.next().transpose()?;
    let mut out = Vec::new();
    while out.len() < limit {
        let record_revision = match &next_record {
            Some((_, value)) => Some(schema::created_revision(value.value()).map_err(damaged)?),
            None => None,
        };
        let other_revision = next_other.as_ref().map(|(key, _)| key.value().1);
        let take_record = match (record_revision, other_revision) {
            (Some(r), Some(o)) => r < o,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_record {
            let Some((key, value)) = next_record.take() else {
                break;
            };
            let (mut record, created) =
                schema::decode_record(key.value().1, value.value()).map_err(damaged)?;
            // The record as it was created; later repeats are their own changes.
            record.revision = created.revision;
            record.repeat_count = created.repeat_count;
            record.last_ts = created.last_ts;
            out.push(Change {
                stream: stream.clone(),
                stream_id: id,
                revision: created.revision,
                body: ChangeBody::Record(record),
            });
            next_record = new_records.next().transpose()?;
        } else {
            let Some((key, value)) = next_other.take() else {
                break;
            };
            let revision = key.value().1;
            let body = schema::decode_change(value.value())
                .map_err(damaged)?
                .into();
            out.push(Change {
                stream: stream.clone(),
                stream_id: id,
                revision,
                body,
            });
            next_other = others.next().transpose()?;
        }
    }
    Ok(out)
}
