//! Reading the file: opening and checking it, rebuilding each stream's in-memory state, history
//! pages and changelog replay. Everything here runs in redb read transactions, which see the
//! last durable commit and never wait for the writer.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, TableHandle,
};

use crate::context::{CachedRecord, PayloadPolicy};
use crate::event::{Note, Record, StreamName, Timestamp};
use crate::meter::Meter;
use crate::stream::{Snapshot, StreamState, TailCapacity};

use super::cache::Slot;
use super::schema::{self, DecodeError, SCHEMA_VERSION, StreamMeta};
use super::{
    Change, ChangeBody, MAX_PAGE_RECORDS, RecordPage, RecordQuery, SeqRange, StoreError,
    StoreOptions,
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
        other => StoreError::storage(path.display().to_string(), other),
    }
}

fn corrupt(path: &Path, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// A damaged row of `stream`, as the store reports it.
pub(super) fn damaged(stream: &str, error: DecodeError) -> StoreError {
    StoreError::Damaged {
        stream: stream.to_owned(),
        row: error.row,
        problem: error.problem,
    }
}

/// Rows of `stream` that its metadata says are stored but that are not there.
fn missing(stream: &str, row: String) -> StoreError {
    StoreError::Damaged {
        stream: stream.to_owned(),
        row,
        problem: "is missing though the stream's row says it is stored".to_owned(),
    }
}

/// Checks the schema version (writing it into a new file) and creates missing tables. A file
/// that has them all is only read: a write transaction's durable commit on open costs a restart
/// time that grows with the file.
pub(super) fn prepare(db: &Database, path: &Path) -> Result<(), StoreError> {
    if is_prepared(db)? {
        return Ok(());
    }
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

/// Whether the file has this schema's version and every table (nothing to write on open).
fn is_prepared(db: &Database) -> Result<bool, StoreError> {
    let txn = db.begin_read()?;
    let names: Vec<String> = txn
        .list_tables()?
        .map(|table| table.name().to_owned())
        .collect();
    let tables = [
        schema::META.name(),
        schema::STREAMS.name(),
        schema::RECORDS.name(),
        schema::SEVERE.name(),
        schema::CHANGES.name(),
        schema::NOTES.name(),
        schema::PURGE.name(),
    ];
    if !tables
        .iter()
        .all(|table| names.iter().any(|name| name == table))
    {
        return Ok(false);
    }
    let version = txn
        .open_table(schema::META)?
        .get(schema::SCHEMA_VERSION_KEY)?
        .map(|v| v.value());
    Ok(version.is_some_and(|version| (1..=u64::from(SCHEMA_VERSION)).contains(&version)))
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
        // A stream whose row is damaged cannot be served or written without risking its other
        // rows: the file is refused, naming it.
        let meta = schema::decode_meta(name.as_str(), value.value())
            .map_err(|error| corrupt(path, format!("{error} (stream {:?})", name.as_str())))?;
        streams.insert(name, Arc::new(Slot::new(meta)));
    }
    Ok(Loaded {
        streams,
        next_stream_id,
        purges,
    })
}

/// The state of stream `name` (of id `id`) read from the file for a reader (a cold load); `None`
/// when the stream was deleted meanwhile.
pub(super) fn load_state(
    db: &Database,
    name: &StreamName,
    id: u64,
    options: &StoreOptions,
    meter: &Meter,
) -> Result<Option<StreamState>, StoreError> {
    let txn = db.begin_read()?;
    let meta = match stream_meta(&txn, name) {
        Ok(meta) if meta.id == id => meta,
        Ok(_) | Err(StoreError::UnknownStream(_)) => return Ok(None),
        Err(error) => return Err(error),
    };
    // Readers never show payloads.
    let state = restore_stream(
        &txn,
        &meta,
        options,
        options.tail,
        PayloadPolicy::Drop,
        meter,
    )
    .map_err(|error| error.into_store(name.as_str()))?;
    Ok(Some(state))
}

/// The writer's shadow of a stream with nothing in flight, read from the file: its newest
/// records (at least the ones collapse can reach), goals and notes.
pub(super) fn load_shadow(
    db: &Database,
    name: &StreamName,
    meta: &StreamMeta,
    options: &StoreOptions,
    meter: &Meter,
) -> Result<StreamState, StoreError> {
    let txn = db.begin_read()?;
    let capacity = TailCapacity::shadow(options.collapse.lookback);
    // A repeat keeps the payload it does not replace: the writer needs its targets' payloads.
    restore_stream(&txn, meta, options, capacity, PayloadPolicy::Keep, meter)
        .map_err(|error| error.into_store(name.as_str()))
}

/// A stream's notes read from the file, oldest first.
pub(super) fn notes(
    db: &Database,
    name: &StreamName,
    now: Timestamp,
) -> Result<Vec<Note>, StoreError> {
    let txn = db.begin_read()?;
    let meta = stream_meta(&txn, name)?;
    let mut notes = read_notes(&txn, &meta).map_err(|error| error.into_store(name.as_str()))?;
    notes.retain(|note| note.is_live(now));
    Ok(notes)
}

fn read_notes(txn: &ReadTransaction, meta: &StreamMeta) -> Result<Vec<Note>, RestoreError> {
    let id = meta.id;
    let table = txn.open_table(schema::NOTES).map_err(storage)?;
    let mut notes = Vec::new();
    for entry in table.range((id, 0)..=(id, u64::MAX)).map_err(storage)? {
        let (key, value) = entry.map_err(storage)?;
        notes.push(schema::decode_note(id, key.value().1, value.value())?);
    }
    if meta
        .notes
        .is_some_and(|stored| stored != notes.len() as u64)
    {
        return Err(RestoreError::Missing(format!(
            "a note ({} of {} found)",
            notes.len(),
            meta.notes.unwrap_or_default()
        )));
    }
    Ok(notes)
}

/// Errors while restoring one stream.
#[derive(Debug, thiserror::Error)]
enum RestoreError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{0} is missing though the stream's row says it is stored")]
    Missing(String),
    #[error(transparent)]
    Storage(#[from] redb::Error),
}

impl RestoreError {
    fn into_store(self, stream: &str) -> StoreError {
        match self {
            RestoreError::Decode(error) => damaged(stream, error),
            RestoreError::Missing(row) => missing(stream, row),
            RestoreError::Storage(error) => error.into(),
        }
    }
}

fn storage<E: Into<redb::Error>>(error: E) -> RestoreError {
    RestoreError::Storage(error.into())
}

/// One stream's state at `meta`'s commit, exactly as it was in memory then: its tail (from
/// [`TailCapacity::tail_start`]), the severe records it keeps (the newest
/// [`TailCapacity::severe_kept`] of the severe index), its goals, notes and totals. Reads
/// O(tail) rows, never the whole stream.
fn restore_stream(
    txn: &ReadTransaction,
    meta: &StreamMeta,
    options: &StoreOptions,
    capacity: TailCapacity,
    payloads: PayloadPolicy,
    meter: &Meter,
) -> Result<StreamState, RestoreError> {
    let id = meta.id;
    let last_seq = meta.totals.records;
    let tail_from = capacity
        .start(last_seq, &meta.tail_bytes)
        .max(meta.first_seq);
    let records = txn.open_table(schema::RECORDS).map_err(storage)?;
    let decode = |seq: u64, bytes: &[u8]| -> Result<_, RestoreError> {
        Ok(Arc::new(schema::decode_cached(
            id, seq, bytes, payloads, meter,
        )?))
    };
    let mut tail = Vec::new();
    for entry in records
        .range((id, tail_from)..=(id, last_seq))
        .map_err(storage)?
    {
        let (key, value) = entry.map_err(storage)?;
        let seq = key.value().1;
        // Seqs are dense: a gap is a lost row, which a window must not silently skip.
        let expected = tail_from + tail.len() as u64;
        if seq != expected {
            return Err(RestoreError::Missing(format!("record {expected}")));
        }
        tail.push(decode(seq, value.value())?);
    }
    if tail_from <= last_seq && tail.len() as u64 != last_seq - tail_from + 1 {
        let expected = tail_from + tail.len() as u64;
        return Err(RestoreError::Missing(format!("record {expected}")));
    }
    let severe_created = match meta.severe_created {
        Some(created) => created,
        None => severe_stored(txn, id)?,
    };
    let keep = usize::try_from(capacity.severe_kept(severe_created)).unwrap_or(usize::MAX);
    let severe_index = txn.open_table(schema::SEVERE).map_err(storage)?;
    let mut severe_seqs = Vec::new();
    if keep > 0 {
        for entry in severe_index
            .range((id, 0)..(id, tail_from))
            .map_err(storage)?
            .rev()
            .take(keep)
        {
            severe_seqs.push(entry.map_err(storage)?.0.value().1);
        }
    }
    severe_seqs.reverse();
    let mut severe = Vec::with_capacity(severe_seqs.len());
    for seq in severe_seqs {
        if let Some(value) = records.get((id, seq)).map_err(storage)? {
            let record = decode(seq, value.value())?;
            // The index names only severe records; another one means its key was damaged.
            if record.record().severity < crate::event::Severity::Error {
                return Err(RestoreError::Decode(DecodeError {
                    row: format!("severe index entry {seq}"),
                    problem: "names a record that is not severe".to_owned(),
                }));
            }
            severe.push(record);
        }
    }
    // Goal records in the tail are the tail's (seqs are dense from `first_seq`).
    let goal = |seq: u64| -> Result<Option<Arc<CachedRecord>>, RestoreError> {
        if seq < meta.first_seq || seq > last_seq {
            return Ok(None);
        }
        if seq >= tail_from {
            return Ok(tail.get((seq - tail_from) as usize).cloned());
        }
        match records.get((id, seq)).map_err(storage)? {
            Some(value) => Ok(Some(decode(seq, value.value())?)),
            None => Ok(None),
        }
    };
    let mut goals = Vec::with_capacity(meta.first_goals.len());
    for &seq in &meta.first_goals {
        goals.extend(goal(seq)?);
    }
    let latest_goal = meta.latest_goal.map(goal).transpose()?.flatten();
    let notes = read_notes(txn, meta)?;
    Ok(StreamState::restore(
        options.collapse,
        capacity,
        meter,
        Snapshot {
            tail,
            older_severe: severe,
            goals,
            latest_goal,
            older_last_ts: meta.older_last_ts,
            totals: meta.totals.clone(),
            notes,
            revision: meta.revision,
            next_note_id: meta.next_note_id,
            severe_created,
            bytes: meta.tail_bytes,
        },
    ))
}

/// How many severe records a stream stores (for rows written before `severe_created` was).
fn severe_stored(txn: &ReadTransaction, id: u64) -> Result<u64, RestoreError> {
    let severe_index = txn.open_table(schema::SEVERE).map_err(storage)?;
    let mut count = 0;
    for entry in severe_index
        .range((id, 0)..=(id, u64::MAX))
        .map_err(storage)?
    {
        entry.map_err(storage)?;
        count += 1;
    }
    Ok(count)
}

/// The latest `last_ts` of each block of `block_records` seqs from `from` to `last_seq` (for
/// rows written before `tail_blocks` was).
pub(super) fn tail_blocks(
    db: &Database,
    id: u64,
    from: u64,
    last_seq: u64,
    block_records: u64,
) -> Result<Vec<(u64, Timestamp)>, StoreError> {
    let txn = db.begin_read()?;
    let records = txn.open_table(schema::RECORDS)?;
    let mut blocks: Vec<(u64, Timestamp)> = Vec::new();
    for entry in records.range((id, from)..=(id, last_seq))? {
        let (key, value) = entry?;
        let last_ts = schema::last_ts(id, key.value().1, value.value())
            .map_err(|error| StoreError::storage("", error))?;
        let block = (key.value().1 - 1) / block_records;
        match blocks.last_mut() {
            Some((known, latest)) if *known == block => *latest = (*latest).max(last_ts),
            _ => blocks.push((block, last_ts)),
        }
    }
    Ok(blocks)
}

/// A stream's metadata as of `txn`.
fn stream_meta(txn: &ReadTransaction, stream: &StreamName) -> Result<StreamMeta, StoreError> {
    let streams = txn.open_table(schema::STREAMS)?;
    let value = streams
        .get(stream.as_str())?
        .ok_or_else(|| StoreError::UnknownStream(stream.to_string()))?;
    schema::decode_meta(stream.as_str(), value.value())
        .map_err(|error| damaged(stream.as_str(), error))
}

/// A page of history (see [`RecordQuery`]).
pub(super) fn records(
    db: &Database,
    stream: &StreamName,
    query: &RecordQuery,
) -> Result<RecordPage, StoreError> {
    let txn = db.begin_read()?;
    let meta = stream_meta(&txn, stream)?;
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
    // What retention removed of the asked range: seqs before the oldest stored one.
    let asked_low = query.after.map_or(1, |after| after.saturating_add(1));
    let removed = (asked_low < meta.first_seq && asked_low < high).then(|| SeqRange {
        from: asked_low,
        to: (meta.first_seq - 1).min(high - 1),
    });
    let empty = RecordPage {
        records: Vec::new(),
        next: None,
        removed,
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
    // Seqs `low..high` are all stored (they are dense): the scan meets each in turn, and a
    // missing one is damage, never a page that silently ends early.
    let mut expected = if backward { high - 1 } else { low };
    let mut scanned = 0;
    for entry in entries {
        let (key, value) = entry?;
        let seq = key.value().1;
        if seq != expected {
            return Err(missing(stream.as_str(), format!("record {expected}")));
        }
        let (record, _) = schema::decode_record(meta.id, seq, value.value())
            .map_err(|error| damaged(stream.as_str(), error))?;
        scanned += 1;
        if admits(query, &record) {
            page.push(record);
        }
        let at_end = if backward {
            seq == low
        } else {
            seq + 1 == high
        };
        if at_end {
            break;
        }
        if page.len() == limit || scanned == MAX_SCAN_RECORDS {
            next = Some(seq);
            break;
        }
        expected = if backward { seq - 1 } else { seq + 1 };
    }
    if next.is_none() && scanned as u64 != high - low {
        return Err(missing(stream.as_str(), format!("record {expected}")));
    }
    if backward {
        page.reverse();
    }
    Ok(RecordPage {
        records: page,
        next,
        removed,
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
    stream: &StreamName,
    after: u64,
    limit: usize,
) -> Result<Vec<Change>, StoreError> {
    let txn = db.begin_read()?;
    let meta = stream_meta(&txn, stream)?;
    let start = after.max(meta.changelog_floor);
    if limit == 0 || start >= meta.revision {
        return Ok(Vec::new());
    }
    let id = meta.id;
    let records = txn.open_table(schema::RECORDS)?;
    let damaged = |error: DecodeError| damaged(stream.as_str(), error);
    // First stored seq created after `start`.
    let (mut low, mut high) = (meta.first_seq, meta.totals.records + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        let created = match records.get((id, middle))? {
            Some(value) => schema::created_revision(id, middle, value.value()).map_err(damaged)?,
            None => return Err(missing(stream.as_str(), format!("record {middle}"))),
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
            Some((key, value)) => {
                Some(schema::created_revision(id, key.value().1, value.value()).map_err(damaged)?)
            }
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
                schema::decode_record(id, key.value().1, value.value()).map_err(damaged)?;
            // The record as it was created; later repeats are their own changes.
            record.revision = created.revision;
            record.repeat_count = created.repeat_count;
            record.last_ts = created.last_ts;
            out.push(Change {
                stream: stream.clone(),
                stream_id: id,
                revision: created.revision,
                body: ChangeBody::Record(Arc::new(record)),
            });
            next_record = new_records.next().transpose()?;
        } else {
            let Some((key, value)) = next_other.take() else {
                break;
            };
            let revision = key.value().1;
            let body = schema::decode_change(id, revision, value.value())
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
        // Every revision past the floor is one change (invariant 3): a gap is a lost row, and
        // a subscriber must not be told the stream went on without it.
        let revision = out.last().map_or(start, |change| change.revision);
        if revision != start + out.len() as u64 {
            return Err(missing(
                stream.as_str(),
                format!("change {}", start + out.len() as u64),
            ));
        }
    }
    if out.len() < limit && start + (out.len() as u64) < meta.revision {
        return Err(missing(
            stream.as_str(),
            format!("change {}", start + out.len() as u64 + 1),
        ));
    }
    Ok(out)
}
