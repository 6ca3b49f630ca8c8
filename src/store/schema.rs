//! The data file's layout: the only module that names redb tables and encodes keys and values.
//!
//! `docs/design.md` describes the same layout in prose; change both together, bump
//! [`SCHEMA_VERSION`] for any change an older build could misread, and keep the compatibility
//! test (`tests/it/store.rs`, `fixtures/store/v1.redb`) passing.
//!
//! Keys are redb tuples of `u64` (fixed width, ordered numerically), so that one stream's rows
//! are one contiguous, seq-ordered range. Record, note and change values use a small binary
//! format (LEB128 varints, length-prefixed UTF-8, times as microseconds): records are the bulk of
//! the file and of every history page, and this format is about a third of their JSON size and
//! several times faster to decode. Stream metadata is JSON: one small row per stream, written
//! once per commit, and easy to extend with defaulted fields.
//!
//! Every value ends with a CRC-32C of its table, its key and its bytes ([`RowKey`]), checked on
//! every read: a damaged value, or a sound value found under the wrong key, is a [`DecodeError`]
//! naming the row, never data served as if it were whole.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::anomaly::{AnomalyOverrides, DetectorState};
use crate::collapse;
use crate::context::{CachedRecord, NOTE_ID_KEY, PayloadPolicy, Totals};
use crate::event::{Kind, Note, Record, Severity, Timestamp};
use crate::meter::Meter;
use crate::payload::{self, Payload};
use crate::stream::{BlockTimes, TailBytes};

use super::Retention;

/// The schema this build writes, and the newest it reads.
pub const SCHEMA_VERSION: u32 = 2;

/// The schema whose values carry no checksum; opening such a file upgrades it
/// (`super::upgrade`).
pub(super) const UNSEALED_SCHEMA_VERSION: u32 = 1;

/// Small counters: `schema_version`, `next_stream_id`.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("recap_meta");
/// Stream name → [`StreamMeta`] (JSON).
pub(super) const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("recap_streams");
/// (stream id, seq) → record (see [`encode_record`]).
pub(super) const RECORDS: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("recap_records");
/// (stream id, seq) of every stored record of severity `error` and above: lets a restart find
/// the old severe records the context keeps in reach without scanning the stream.
pub(super) const SEVERE: TableDefinition<(u64, u64), ()> = TableDefinition::new("recap_severe");
/// (stream id, revision) → change that is not a new record (see [`ChangeEntry`]). New records are
/// their own log: a record row keeps the revision that created it.
pub(super) const CHANGES: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("recap_changes");
/// (stream id, note id) → live note (see [`encode_note`]).
pub(super) const NOTES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("recap_notes");
/// Ids of deleted streams whose rows the writer still has to remove, in bounded chunks.
pub(super) const PURGE: TableDefinition<u64, ()> = TableDefinition::new("recap_purge");

/// `META` key of the schema version.
pub(super) const SCHEMA_VERSION_KEY: &str = "schema_version";
/// `META` key of the id the next new stream gets (ids are never reused).
pub(super) const NEXT_STREAM_ID_KEY: &str = "next_stream_id";

/// A stored value that fails its checksum or does not decode: the file is damaged.
#[derive(Debug, thiserror::Error)]
#[error("{row} {problem}")]
pub(super) struct DecodeError {
    /// The row, as a reader names it: `record 17`, `note 3`, `change 40`, `stream row`.
    pub row: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Why a value's bytes do not decode, before the caller names the row.
#[derive(Debug)]
struct Bad(&'static str);

const UNDECODABLE: Bad = Bad("does not decode");

/// A row's table and key: the part of a value's checksum that ties the value to where it is
/// stored.
#[derive(Clone, Copy, Debug)]
pub(super) enum RowKey<'a> {
    /// A row of `STREAMS`.
    Stream(&'a str),
    /// A row of `RECORDS`.
    Record {
        /// The stream's id.
        stream: u64,
        /// The record's seq.
        seq: u64,
    },
    /// A row of `CHANGES`.
    Change {
        /// The stream's id.
        stream: u64,
        /// The change's revision.
        revision: u64,
    },
    /// A row of `NOTES`.
    Note {
        /// The stream's id.
        stream: u64,
        /// The note's id.
        id: u64,
    },
}

/// Bytes of the checksum at the end of every value.
pub(super) const CHECKSUM_BYTES: usize = 4;

impl RowKey<'_> {
    /// The CRC-32C of the table and key, which a value's checksum continues.
    fn checksum(self) -> u32 {
        let pair = |table: u8, a: u64, b: u64| {
            let mut key = [0u8; 17];
            key[0] = table;
            key[1..9].copy_from_slice(&a.to_le_bytes());
            key[9..].copy_from_slice(&b.to_le_bytes());
            crc32c::crc32c(&key)
        };
        match self {
            RowKey::Stream(name) => crc32c::crc32c_append(crc32c::crc32c(&[0]), name.as_bytes()),
            RowKey::Record { stream, seq } => pair(1, stream, seq),
            RowKey::Change { stream, revision } => pair(2, stream, revision),
            RowKey::Note { stream, id } => pair(3, stream, id),
        }
    }

    fn error(self, problem: impl ToString) -> DecodeError {
        DecodeError {
            row: self.to_string(),
            problem: problem.to_string(),
        }
    }
}

impl std::fmt::Display for RowKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowKey::Stream(_) => f.write_str("stream row"),
            RowKey::Record { seq, .. } => write!(f, "record {seq}"),
            RowKey::Change { revision, .. } => write!(f, "change {revision}"),
            RowKey::Note { id, .. } => write!(f, "note {id}"),
        }
    }
}

/// Ends the value that starts at `out[start]` with its checksum under `key`.
pub(super) fn seal(key: RowKey<'_>, out: &mut Vec<u8>, start: usize) {
    let checksum = crc32c::crc32c_append(key.checksum(), &out[start..]);
    out.extend_from_slice(&checksum.to_le_bytes());
}

/// A stored value without its checksum, once the checksum matches `key` and the bytes.
pub(super) fn unseal<'v>(key: RowKey<'_>, stored: &'v [u8]) -> Result<&'v [u8], DecodeError> {
    let Some(split) = stored.len().checked_sub(CHECKSUM_BYTES) else {
        return Err(key.error("is too short to hold its checksum"));
    };
    let (value, checksum) = stored.split_at(split);
    let stored_checksum = u32::from_le_bytes(checksum.try_into().unwrap_or_default());
    let computed = crc32c::crc32c_append(key.checksum(), value);
    if stored_checksum == computed {
        Ok(value)
    } else {
        Err(key.error(format!(
            "fails its checksum (stored {stored_checksum:08x}, computed {computed:08x})"
        )))
    }
}

/// What a stream's row in `STREAMS` holds. The in-memory state is rebuilt from it, the stream's
/// newest records and its notes.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct StreamMeta {
    /// Compact id used in every other table's keys.
    pub id: u64,
    /// Totals over everything the stream accepted (records removed by retention included).
    pub totals: Totals,
    /// The stream revision.
    pub revision: u64,
    /// The id the next note gets.
    pub next_note_id: u64,
    /// Retention set for this stream; `None` follows the store's default.
    pub retention: Option<Retention>,
    /// Seq of the oldest stored record (`totals.records + 1` when none is stored).
    pub first_seq: u64,
    /// Changes with revision up to this one can no longer be replayed (trimmed changelog or
    /// records removed by retention).
    pub changelog_floor: u64,
    /// What a restore needs besides the rows, as of this row's commit (the writer keeps them,
    /// so they are exact whether or not the stream was in memory): the latest `last_ts` among
    /// the records before the tail ([`TailCapacity::tail_start`](crate::stream::TailCapacity::tail_start)).
    pub older_last_ts: Option<Timestamp>,
    /// The latest `last_ts` within each block of `tail_records` seqs the tail still reaches
    /// (block `b` holds seqs `b × tail_records + 1 ..= (b + 1) × tail_records`): when the tail
    /// moves past a block, its latest time joins `older_last_ts`. `None` in rows written before
    /// this field existed (then read from the records).
    pub tail_blocks: Option<Vec<(u64, Timestamp)>>,
    /// Where the byte bound has the tail start ([`TailCapacity::start`](crate::stream::TailCapacity::start)),
    /// and the latest times of the blocks it keeps; rows written before these existed read as
    /// one block holding every stored record.
    pub tail_bytes: TailBytes,
    /// See `tail_bytes`.
    pub block_times: BlockTimes,
    /// Severe records ever created, which fixes how many the state keeps ([`TailCapacity::severe_kept`](crate::stream::TailCapacity::severe_kept));
    /// `None` in rows written before this field existed (then counted from the severe index).
    pub severe_created: Option<u64>,
    /// Seqs of the first goal records the state keeps in reach.
    pub first_goals: Vec<u64>,
    /// Seq of the latest goal record, once the first ones are all taken.
    pub latest_goal: Option<u64>,
    /// When the stream's first expiring note expires, if any note does: lets the writer find
    /// the streams with notes to expire without loading them. Rows written before this field
    /// existed read as the Unix epoch (due at once, so the stream is looked at once).
    pub note_expiry: Option<Timestamp>,
    /// How many notes the stream stores (expired ones not yet removed included): a read that
    /// finds another number found damage. `None` in rows written before this field existed.
    pub notes: Option<u64>,
    /// The anomaly detectors' state as of this row's commit (see [`crate::anomaly`]); `None`
    /// before the stream's first observed event, with detection off, and in older rows.
    pub detectors: Option<Box<DetectorState>>,
    /// Anomaly thresholds this stream sets; `None` follows the server's.
    pub anomalies: Option<AnomalyOverrides>,
}

impl StreamMeta {
    /// A stream that has just been created.
    pub(super) fn new(id: u64) -> StreamMeta {
        StreamMeta {
            id,
            totals: Totals::default(),
            revision: 0,
            next_note_id: 1,
            retention: None,
            first_seq: 1,
            changelog_floor: 0,
            older_last_ts: None,
            tail_blocks: Some(Vec::new()),
            tail_bytes: TailBytes::default(),
            block_times: BlockTimes::default(),
            severe_created: Some(0),
            first_goals: Vec::new(),
            latest_goal: None,
            note_expiry: None,
            notes: Some(0),
            detectors: None,
            anomalies: None,
        }
    }
}

/// The JSON shape of [`StreamMeta`]. New fields must have defaults so older rows still read.
#[derive(Serialize, Deserialize)]
struct StoredMeta {
    id: u64,
    records: u64,
    events: u64,
    kinds: BTreeMap<Kind, u64>,
    severities: [u64; 5],
    first_ts: Option<i64>,
    last_ts: Option<i64>,
    revision: u64,
    next_note_id: u64,
    #[serde(default)]
    retention: Option<StoredRetention>,
    first_seq: u64,
    #[serde(default)]
    changelog_floor: u64,
    #[serde(default)]
    older_last_ts: Option<i64>,
    #[serde(default)]
    tail_blocks: Option<Vec<(u64, i64)>>,
    #[serde(default)]
    tail_bytes: Option<StoredTailBytes>,
    #[serde(default)]
    severe_created: Option<u64>,
    /// Written by builds before `goals`: the first goals, then the latest.
    #[serde(default, skip_serializing)]
    goal_seqs: Vec<u64>,
    #[serde(default)]
    goals: Option<StoredGoals>,
    /// A row from before this field reads as due at the Unix epoch (unknown: look once).
    #[serde(default = "unknown_note_expiry")]
    note_expiry: Option<i64>,
    #[serde(default)]
    notes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detectors: Option<Box<DetectorState>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anomalies: Option<AnomalyOverrides>,
}

fn unknown_note_expiry() -> Option<i64> {
    Some(0)
}

/// [`TailBytes`] and [`BlockTimes`] (µs).
#[derive(Serialize, Deserialize)]
struct StoredTailBytes {
    total: u64,
    block: u64,
    current: u64,
    previous: u64,
    current_last_ts: Option<i64>,
    previous_last_ts: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct StoredGoals {
    first: Vec<u64>,
    latest: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct StoredRetention {
    max_records: Option<u64>,
    max_age_seconds: Option<i64>,
}

/// Encodes the metadata row of stream `name`.
pub(super) fn encode_meta(name: &str, meta: &StreamMeta) -> Vec<u8> {
    let stored = StoredMeta {
        id: meta.id,
        records: meta.totals.records,
        events: meta.totals.events,
        kinds: meta.totals.kinds.clone(),
        severities: meta.totals.severities,
        first_ts: meta.totals.first_ts.map(micros),
        last_ts: meta.totals.last_ts.map(micros),
        revision: meta.revision,
        next_note_id: meta.next_note_id,
        retention: meta.retention.map(|r| StoredRetention {
            max_records: r.max_records,
            max_age_seconds: r.max_age.map(|age| age.num_seconds()),
        }),
        first_seq: meta.first_seq,
        changelog_floor: meta.changelog_floor,
        older_last_ts: meta.older_last_ts.map(micros),
        tail_blocks: meta.tail_blocks.as_ref().map(|blocks| {
            blocks
                .iter()
                .map(|&(block, last_ts)| (block, micros(last_ts)))
                .collect()
        }),
        tail_bytes: Some(StoredTailBytes {
            total: meta.tail_bytes.total,
            block: meta.tail_bytes.block,
            current: meta.tail_bytes.current,
            previous: meta.tail_bytes.previous,
            current_last_ts: meta.block_times.current.map(micros),
            previous_last_ts: meta.block_times.previous.map(micros),
        }),
        severe_created: meta.severe_created,
        goal_seqs: Vec::new(),
        goals: Some(StoredGoals {
            first: meta.first_goals.clone(),
            latest: meta.latest_goal,
        }),
        note_expiry: meta.note_expiry.map(micros),
        notes: meta.notes,
        detectors: meta.detectors.clone(),
        anomalies: meta.anomalies,
    };
    // A struct of numbers, strings and maps with string keys always serializes.
    let mut out = serde_json::to_vec(&stored).unwrap_or_default();
    seal(RowKey::Stream(name), &mut out, 0);
    out
}

/// Decodes the metadata row of stream `name`.
pub(super) fn decode_meta(name: &str, stored: &[u8]) -> Result<StreamMeta, DecodeError> {
    let key = RowKey::Stream(name);
    decode_meta_value(unseal(key, stored)?).map_err(|Bad(problem)| key.error(problem))
}

fn decode_meta_value(bytes: &[u8]) -> Result<StreamMeta, Bad> {
    let stored: StoredMeta =
        serde_json::from_slice(bytes).map_err(|_| Bad("is not a stream row's JSON"))?;
    let time = |value: Option<i64>| value.map(from_micros).transpose();
    let (first_goals, latest_goal) = match stored.goals {
        Some(goals) => (goals.first, goals.latest),
        // The latest goal was kept apart only once the first ones were all taken.
        None => {
            let mut seqs = stored.goal_seqs;
            let latest = (seqs.len() > crate::context::MAX_GOALS)
                .then(|| seqs.pop())
                .flatten();
            (seqs, latest)
        }
    };
    Ok(StreamMeta {
        id: stored.id,
        totals: Totals {
            records: stored.records,
            events: stored.events,
            kinds: stored.kinds,
            severities: stored.severities,
            first_ts: time(stored.first_ts)?,
            last_ts: time(stored.last_ts)?,
        },
        revision: stored.revision,
        next_note_id: stored.next_note_id,
        retention: stored.retention.map(|r| Retention {
            max_records: r.max_records,
            max_age: r.max_age_seconds.and_then(TimeDelta::try_seconds),
        }),
        first_seq: stored.first_seq,
        changelog_floor: stored.changelog_floor,
        older_last_ts: time(stored.older_last_ts)?,
        tail_blocks: stored
            .tail_blocks
            .map(|blocks| {
                blocks
                    .into_iter()
                    .map(|(block, last_ts)| Ok((block, from_micros(last_ts)?)))
                    .collect::<Result<Vec<_>, Bad>>()
            })
            .transpose()?,
        // A row from before the byte bound: every stored record counts as in the first block
        // (whose latest time is the stream's), and blocks start with the next record.
        tail_bytes: stored.tail_bytes.as_ref().map_or(
            TailBytes {
                total: 0,
                block: 0,
                current: stored.first_seq.max(1),
                previous: stored.first_seq.max(1),
            },
            |bytes| TailBytes {
                total: bytes.total,
                block: bytes.block,
                current: bytes.current,
                previous: bytes.previous,
            },
        ),
        block_times: match &stored.tail_bytes {
            Some(bytes) => BlockTimes {
                current: time(bytes.current_last_ts)?,
                previous: time(bytes.previous_last_ts)?,
            },
            None => BlockTimes {
                current: time(stored.last_ts)?,
                previous: None,
            },
        },
        severe_created: stored.severe_created,
        first_goals,
        latest_goal,
        note_expiry: time(stored.note_expiry)?,
        notes: stored.notes,
        detectors: stored.detectors,
        anomalies: stored.anomalies,
    })
}

/// How a record was when it was created, kept so that a replay of the changelog can show the
/// creation as it happened even after repeats changed the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Created {
    /// The revision that created the record.
    pub revision: u64,
    /// Its repeat count then (1, or an imported run's count).
    pub repeat_count: u64,
    /// Its `last_ts` then.
    pub last_ts: Timestamp,
}

impl Created {
    /// The creation facts of a record that has just been created.
    pub(super) fn of(record: &Record) -> Created {
        Created {
            revision: record.revision,
            repeat_count: record.repeat_count,
            last_ts: record.last_ts,
        }
    }
}

const HAS_DISPLAY_MESSAGE: u8 = 1;
const HAS_ACTOR: u8 = 2;
const HAS_STEP_ID: u8 = 4;
const HAS_PAYLOAD: u8 = 8;

/// Encodes a record (its seq is in the key) onto the end of `out`:
///
/// `created.revision, revision, repeat_count, created.repeat_count` (varints),
/// `first_ts` (zigzag varint, µs), `last_ts - first_ts`, `created.last_ts - first_ts` (zigzag
/// varints, µs), severity (1 byte), flags (1 byte), kind, message, then `display_message`,
/// `actor`, `step_id`, `payload` (compact JSON) when their flag is set; strings are a varint
/// length and UTF-8 bytes; then the checksum under (`stream`, the record's seq).
pub(super) fn encode_record(stream: u64, record: &Record, created: &Created, out: &mut Vec<u8>) {
    let start = out.len();
    let first = micros(record.first_ts);
    put_varint(out, created.revision);
    put_varint(out, record.revision);
    put_varint(out, record.repeat_count);
    put_varint(out, created.repeat_count);
    put_signed(out, first);
    // Wrapping, as the decoder adds: any two times the decoder accepts round-trip.
    put_signed(out, micros(record.last_ts).wrapping_sub(first));
    put_signed(out, micros(created.last_ts).wrapping_sub(first));
    out.push(record.severity as u8);
    let flag = |present: bool, flag: u8| if present { flag } else { 0 };
    let flags = flag(record.display_message.is_some(), HAS_DISPLAY_MESSAGE)
        | flag(record.actor.is_some(), HAS_ACTOR)
        | flag(record.step_id.is_some(), HAS_STEP_ID)
        | flag(record.payload.is_some(), HAS_PAYLOAD);
    out.push(flags);
    put_str(out, record.kind.as_str());
    put_str(out, &record.message);
    for text in [&record.display_message, &record.actor, &record.step_id]
        .into_iter()
        .flatten()
    {
        put_str(out, text);
    }
    if let Some(payload) = &record.payload {
        put_bytes(out, payload.as_str().as_bytes());
    }
    let key = RowKey::Record {
        stream,
        seq: record.seq,
    };
    seal(key, out, start);
}

/// Decodes the record stored under (`stream`, `seq`).
pub(super) fn decode_record(
    stream: u64,
    seq: u64,
    stored: &[u8],
) -> Result<(Record, Created), DecodeError> {
    checked(RowKey::Record { stream, seq }, stored, |value| {
        let (mut record, payload, created) = decode_fields(seq, value)?;
        record.payload = payload
            .map(Payload::from_stored)
            .transpose()
            .map_err(|_| NOT_AN_OBJECT)?;
        Ok((record, created))
    })
}

const NOT_AN_OBJECT: Bad = Bad("has a payload that is not a JSON object");

/// Decodes a stored value with `decode` once its checksum matches, naming the row in any error.
fn checked<'v, T>(
    key: RowKey<'_>,
    stored: &'v [u8],
    decode: impl FnOnce(&'v [u8]) -> Result<T, Bad>,
) -> Result<T, DecodeError> {
    decode(unseal(key, stored)?).map_err(|Bad(problem)| key.error(problem))
}

/// Decodes the record stored under (`stream`, `seq`) into the cache, its payload kept (as the
/// stored text) or not as `keep` says.
pub(super) fn decode_cached(
    stream: u64,
    seq: u64,
    stored: &[u8],
    keep: PayloadPolicy,
    meter: &Meter,
) -> Result<CachedRecord, DecodeError> {
    checked(RowKey::Record { stream, seq }, stored, |value| {
        decode_cached_value(seq, value, keep, meter)
    })
}

fn decode_cached_value(
    seq: u64,
    bytes: &[u8],
    keep: PayloadPolicy,
    meter: &Meter,
) -> Result<CachedRecord, Bad> {
    let (record, payload, _) = decode_fields(seq, bytes)?;
    let collapsible = collapse::is_collapse_target(
        record.kind.as_str(),
        record.actor.as_deref(),
        payload.map_or(0, str::len),
    );
    // A payload is read only where it is needed: to keep it, or to find a note's id.
    let kept = match payload {
        Some(text) if keep == PayloadPolicy::Keep && collapsible => {
            Some(Payload::from_stored(text).map_err(|_| NOT_AN_OBJECT)?)
        }
        _ => None,
    };
    let note_id = match (record.kind.as_str(), payload) {
        ("note", Some(text)) => payload::top_level_u64(text, NOTE_ID_KEY),
        _ => None,
    };
    Ok(CachedRecord::from_parts(
        record,
        kept,
        note_id,
        collapsible,
        meter,
    ))
}

/// A record's fields (without its payload), its payload's JSON text and its creation facts.
fn decode_fields(seq: u64, bytes: &[u8]) -> Result<(Record, Option<&str>, Created), Bad> {
    let mut input = Input::new(bytes);
    let created_revision = input.varint()?;
    let revision = input.varint()?;
    let repeat_count = input.varint()?;
    let created_repeat_count = input.varint()?;
    let first = input.signed()?;
    let last = first.wrapping_add(input.signed()?);
    let created_last = first.wrapping_add(input.signed()?);
    let severity = *Severity::ALL
        .get(usize::from(input.byte()?))
        .ok_or(Bad("has an unknown severity"))?;
    let flags = input.byte()?;
    let kind = Kind::new(input.str()?).map_err(|_| Bad("has an invalid kind"))?;
    let message = input.str()?.to_owned();
    let mut optional = |flag: u8| -> Result<Option<String>, Bad> {
        (flags & flag != 0)
            .then(|| input.str().map(str::to_owned))
            .transpose()
    };
    let display_message = optional(HAS_DISPLAY_MESSAGE)?;
    let actor = optional(HAS_ACTOR)?;
    let step_id = optional(HAS_STEP_ID)?;
    let payload = if flags & HAS_PAYLOAD != 0 {
        Some(input.str()?)
    } else {
        None
    };
    input.end()?;
    let first_ts = from_micros(first)?;
    let record = Record {
        seq,
        message,
        kind,
        severity,
        first_ts,
        last_ts: from_micros(last)?,
        repeat_count,
        revision,
        display_message,
        actor,
        step_id,
        payload: None,
    };
    let created = Created {
        revision: created_revision,
        repeat_count: created_repeat_count,
        last_ts: from_micros(created_last)?,
    };
    Ok((record, payload, created))
}

/// The `last_ts` of the record stored under (`stream`, `seq`), read without decoding the rest.
pub(super) fn last_ts(stream: u64, seq: u64, stored: &[u8]) -> Result<Timestamp, DecodeError> {
    checked(RowKey::Record { stream, seq }, stored, |value| {
        let mut input = Input::new(value);
        for _ in 0..4 {
            input.varint()?;
        }
        let first = input.signed()?;
        from_micros(first.wrapping_add(input.signed()?))
    })
}

/// The revision that created the record stored under (`stream`, `seq`), read without decoding
/// the rest.
pub(super) fn created_revision(stream: u64, seq: u64, stored: &[u8]) -> Result<u64, DecodeError> {
    checked(RowKey::Record { stream, seq }, stored, |value| {
        Input::new(value).varint()
    })
}

/// The revision of the last change of the record stored under (`stream`, `seq`) and its
/// `last_ts`, read without decoding the rest, and checked once: retention needs both of every
/// record it removes.
pub(super) fn last_revision_and_ts(
    stream: u64,
    seq: u64,
    stored: &[u8],
) -> Result<(u64, Timestamp), DecodeError> {
    checked(RowKey::Record { stream, seq }, stored, |value| {
        let mut input = Input::new(value);
        input.varint()?;
        let revision = input.varint()?;
        for _ in 0..2 {
            input.varint()?;
        }
        let first = input.signed()?;
        Ok((revision, from_micros(first.wrapping_add(input.signed()?))?))
    })
}

/// Encodes note `note.id` of `stream` onto the end of `out`: `created_at` (zigzag varint, µs),
/// a flag byte and `expires_at` when set, the text, then the checksum.
pub(super) fn encode_note(stream: u64, note: &Note, out: &mut Vec<u8>) {
    let start = out.len();
    put_note(note, out);
    seal(
        RowKey::Note {
            stream,
            id: note.id,
        },
        out,
        start,
    );
}

fn put_note(note: &Note, out: &mut Vec<u8>) {
    put_signed(out, micros(note.created_at));
    match note.expires_at {
        Some(expires_at) => {
            out.push(1);
            put_signed(out, micros(expires_at));
        }
        None => out.push(0),
    }
    put_str(out, &note.text);
}

/// Decodes the note stored under (`stream`, `id`).
pub(super) fn decode_note(stream: u64, id: u64, stored: &[u8]) -> Result<Note, DecodeError> {
    checked(RowKey::Note { stream, id }, stored, |value| {
        let mut input = Input::new(value);
        let note = read_note(id, &mut input)?;
        input.end()?;
        Ok(note)
    })
}

fn read_note(id: u64, input: &mut Input<'_>) -> Result<Note, Bad> {
    let created_at = from_micros(input.signed()?)?;
    let expires_at = match input.byte()? {
        0 => None,
        1 => Some(from_micros(input.signed()?)?),
        _ => return Err(UNDECODABLE),
    };
    let text = input.str()?.to_owned();
    Ok(Note {
        id,
        text,
        created_at,
        expires_at,
    })
}

/// A change other than a new record, as the changelog keeps it.
#[derive(Clone, Debug, PartialEq)]
pub enum ChangeEntry {
    /// A repeat bumped a record: tag 1, seq, repeat count, `last_ts`.
    Repeat {
        /// The record.
        seq: u64,
        /// Its count after the change.
        repeat_count: u64,
        /// Its `last_ts` after the change.
        last_ts: Timestamp,
    },
    /// A note was added: tag 2, note id, then the note as in `NOTES`.
    Note(Note),
    /// A note was deleted: tag 3, note id.
    NoteDeleted {
        /// The note's id.
        id: u64,
    },
}

impl From<ChangeEntry> for super::ChangeBody {
    fn from(entry: ChangeEntry) -> super::ChangeBody {
        match entry {
            ChangeEntry::Repeat {
                seq,
                repeat_count,
                last_ts,
            } => super::ChangeBody::Repeat {
                seq,
                repeat_count,
                last_ts,
            },
            ChangeEntry::Note(note) => super::ChangeBody::Note(note),
            ChangeEntry::NoteDeleted { id } => super::ChangeBody::NoteDeleted { id },
        }
    }
}

const TAG_REPEAT: u8 = 1;
const TAG_NOTE: u8 = 2;
const TAG_NOTE_DELETED: u8 = 3;

/// Encodes the changelog entry of `stream` at `revision` onto the end of `out`, then its
/// checksum.
pub(super) fn encode_change(stream: u64, revision: u64, entry: &ChangeEntry, out: &mut Vec<u8>) {
    let start = out.len();
    match entry {
        ChangeEntry::Repeat {
            seq,
            repeat_count,
            last_ts,
        } => {
            out.push(TAG_REPEAT);
            put_varint(out, *seq);
            put_varint(out, *repeat_count);
            put_signed(out, micros(*last_ts));
        }
        ChangeEntry::Note(note) => {
            out.push(TAG_NOTE);
            put_varint(out, note.id);
            put_note(note, out);
        }
        ChangeEntry::NoteDeleted { id } => {
            out.push(TAG_NOTE_DELETED);
            put_varint(out, *id);
        }
    }
    seal(RowKey::Change { stream, revision }, out, start);
}

/// Decodes the changelog entry of `stream` at `revision`.
pub(super) fn decode_change(
    stream: u64,
    revision: u64,
    stored: &[u8],
) -> Result<ChangeEntry, DecodeError> {
    checked(
        RowKey::Change { stream, revision },
        stored,
        decode_change_value,
    )
}

fn decode_change_value(bytes: &[u8]) -> Result<ChangeEntry, Bad> {
    let mut input = Input::new(bytes);
    let entry = match input.byte()? {
        TAG_REPEAT => ChangeEntry::Repeat {
            seq: input.varint()?,
            repeat_count: input.varint()?,
            last_ts: from_micros(input.signed()?)?,
        },
        TAG_NOTE => {
            let id = input.varint()?;
            ChangeEntry::Note(read_note(id, &mut input)?)
        }
        TAG_NOTE_DELETED => ChangeEntry::NoteDeleted {
            id: input.varint()?,
        },
        _ => return Err(Bad("has an unknown change tag")),
    };
    input.end()?;
    Ok(entry)
}

/// Microseconds since the Unix epoch: the precision recap keeps.
pub(super) fn micros(ts: Timestamp) -> i64 {
    ts.timestamp_micros()
}

fn from_micros(value: i64) -> Result<Timestamp, Bad> {
    DateTime::from_timestamp_micros(value).ok_or(Bad("has a time out of range"))
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_signed(out: &mut Vec<u8>, value: i64) {
    put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_bytes(out, text.as_bytes());
}

/// A cursor over an encoded value; every read checks bounds, so a damaged value is an error,
/// never a panic.
struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(bytes: &'a [u8]) -> Input<'a> {
        Input { bytes }
    }

    fn byte(&mut self) -> Result<u8, Bad> {
        let (&first, rest) = self.bytes.split_first().ok_or(UNDECODABLE)?;
        self.bytes = rest;
        Ok(first)
    }

    fn varint(&mut self) -> Result<u64, Bad> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(UNDECODABLE)
    }

    fn signed(&mut self) -> Result<i64, Bad> {
        let raw = self.varint()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Bad> {
        let len = usize::try_from(self.varint()?).map_err(|_| UNDECODABLE)?;
        if len > self.bytes.len() {
            return Err(UNDECODABLE);
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn str(&mut self) -> Result<&'a str, Bad> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Bad("has text that is not UTF-8"))
    }

    fn end(&self) -> Result<(), Bad> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Bad("has bytes past its end"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, parse_timestamp};

    fn ts(text: &str) -> Timestamp {
        parse_timestamp(text).unwrap()
    }

    #[test]
    fn record_round_trips_with_every_field() {
        let payload = Payload::from_json(r#"{"n": 3, "s": "x y"}"#).unwrap();
        let mut event = Event::new("tool", Severity::Error, "boom\nline two ✓").unwrap();
        event.display_message = Some("boom".into());
        event.actor = Some("agent-1".into());
        event.step_id = Some("s9".into());
        event.payload = Some(payload);
        let mut record = Record::from_event(event, 42, 7, ts("2024-05-01T10:31:41.123456Z"));
        let created = Created::of(&record);
        record.repeat_count = 300;
        record.revision = 900;
        record.last_ts = ts("2024-05-01T11:00:00Z");
        let mut bytes = Vec::new();
        encode_record(5, &record, &created, &mut bytes);
        assert_eq!(decode_record(5, 42, &bytes).unwrap(), (record, created));
        assert_eq!(created_revision(5, 42, &bytes).unwrap(), 7);
        assert_eq!(
            last_revision_and_ts(5, 42, &bytes).unwrap(),
            (900, ts("2024-05-01T11:00:00Z"))
        );
        assert_eq!(last_ts(5, 42, &bytes).unwrap(), ts("2024-05-01T11:00:00Z"));
    }

    /// Every single-bit flip of a value, and the value read under another key, fails its
    /// checksum: nothing damaged decodes as a different record.
    #[test]
    fn damage_and_misplaced_values_fail_their_checksum() {
        let record = Record::from_event(
            Event::new("tool", Severity::Info, "search(q) -> 3 results").unwrap(),
            9,
            12,
            ts("2024-05-01T10:31:41Z"),
        );
        let mut bytes = Vec::new();
        encode_record(2, &record, &Created::of(&record), &mut bytes);
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let error = decode_record(2, 9, &flipped).unwrap_err();
            assert_eq!(error.row, "record 9");
        }
        assert!(decode_record(2, 10, &bytes).is_err(), "another seq");
        assert!(decode_record(3, 9, &bytes).is_err(), "another stream");
        let change = ChangeEntry::NoteDeleted { id: 9 };
        let mut change_bytes = Vec::new();
        encode_change(2, 9, &change, &mut change_bytes);
        assert!(decode_change(2, 9, &change_bytes).is_ok());
        assert!(decode_note(2, 9, &change_bytes).is_err(), "another table");
        let meta = encode_meta("a", &StreamMeta::new(1));
        assert!(decode_meta("a", &meta).is_ok());
        let error = decode_meta("b", &meta).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("stream row fails its checksum"),
            "{error}"
        );
    }

    #[test]
    fn truncated_values_are_errors_not_panics() {
        let record = Record::from_event(
            Event::new("tool", Severity::Info, "hello").unwrap(),
            1,
            1,
            ts("2024-05-01T10:31:41Z"),
        );
        let mut bytes = Vec::new();
        encode_record(1, &record, &Created::of(&record), &mut bytes);
        for len in 0..bytes.len() {
            assert!(
                decode_record(1, 1, &bytes[..len]).is_err(),
                "prefix of {len}"
            );
        }
        assert!(decode_change(1, 1, &[9]).is_err());
        assert!(decode_note(1, 1, &[]).is_err());
    }

    /// The decoders behind the checksum reject what does not decode, without panicking, even
    /// when the checksum is right (a value written by a buggy build, or a collision).
    #[test]
    fn sealed_garbage_is_an_error_not_a_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..200 {
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let mut record = bytes.clone();
            seal(RowKey::Record { stream: 1, seq: 1 }, &mut record, 0);
            let _ = decode_record(1, 1, &record);
            let mut change = bytes.clone();
            seal(
                RowKey::Change {
                    stream: 1,
                    revision: 1,
                },
                &mut change,
                0,
            );
            let _ = decode_change(1, 1, &change);
            seal(RowKey::Note { stream: 1, id: 1 }, &mut bytes, 0);
            let _ = decode_note(1, 1, &bytes);
        }
    }

    #[test]
    fn changes_and_notes_round_trip() {
        let note = Note {
            id: 3,
            text: "use the staging db".into(),
            created_at: ts("2024-05-01T10:00:00Z"),
            expires_at: Some(ts("2024-05-02T10:00:00Z")),
        };
        for entry in [
            ChangeEntry::Repeat {
                seq: 5,
                repeat_count: 9,
                last_ts: ts("2024-05-01T10:00:01Z"),
            },
            ChangeEntry::Note(note.clone()),
            ChangeEntry::NoteDeleted { id: 3 },
        ] {
            let mut bytes = Vec::new();
            encode_change(1, 8, &entry, &mut bytes);
            assert_eq!(decode_change(1, 8, &bytes).unwrap(), entry);
        }
        let mut bytes = Vec::new();
        encode_note(1, &note, &mut bytes);
        assert_eq!(decode_note(1, 3, &bytes).unwrap(), note);
    }

    #[test]
    fn meta_round_trips() {
        let mut meta = StreamMeta::new(4);
        meta.totals.count(
            &Kind::new("tool").unwrap(),
            Severity::Warning,
            ts("2024-05-01T10:00:00Z"),
            true,
        );
        meta.revision = 3;
        meta.retention = Some(Retention {
            max_records: Some(10),
            max_age: Some(TimeDelta::hours(2)),
        });
        meta.tail_blocks = Some(vec![(3, ts("2024-05-01T09:30:00Z"))]);
        meta.severe_created = Some(2);
        meta.older_last_ts = Some(ts("2024-05-01T09:00:00Z"));
        assert_eq!(decode_meta("s", &encode_meta("s", &meta)).unwrap(), meta);
        meta.note_expiry = Some(ts("2024-05-01T11:00:00Z"));
        meta.notes = Some(3);
        assert_eq!(decode_meta("s", &encode_meta("s", &meta)).unwrap(), meta);
    }
}
