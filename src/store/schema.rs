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
pub const SCHEMA_VERSION: u32 = 1;

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

/// A value that does not decode: the file is damaged or was written by a different schema.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn damaged(what: &str) -> DecodeError {
    DecodeError(format!("undecodable {what}"))
}

/// What a stream's row in `STREAMS` holds. The in-memory state is rebuilt from it, the stream's
/// newest records and its notes.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamMeta {
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
    /// The anomaly detectors' state as of this row's commit (see [`crate::anomaly`]); `None`
    /// before the stream's first observed event, with detection off, and in older rows.
    pub detectors: Option<Box<DetectorState>>,
    /// Anomaly thresholds this stream sets; `None` follows the server's.
    pub anomalies: Option<AnomalyOverrides>,
}

impl StreamMeta {
    /// A stream that has just been created.
    pub fn new(id: u64) -> StreamMeta {
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

/// Encodes a stream's metadata row.
pub fn encode_meta(meta: &StreamMeta) -> Vec<u8> {
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
        detectors: meta.detectors.clone(),
        anomalies: meta.anomalies,
    };
    // A struct of numbers, strings and maps with string keys always serializes.
    serde_json::to_vec(&stored).unwrap_or_default()
}

/// Decodes a stream's metadata row.
pub fn decode_meta(bytes: &[u8]) -> Result<StreamMeta, DecodeError> {
    let stored: StoredMeta = serde_json::from_slice(bytes)
        .map_err(|error| DecodeError(format!("undecodable stream row: {error}")))?;
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
                    .collect::<Result<Vec<_>, DecodeError>>()
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
        detectors: stored.detectors,
        anomalies: stored.anomalies,
    })
}

/// How a record was when it was created, kept so that a replay of the changelog can show the
/// creation as it happened even after repeats changed the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Created {
    /// The revision that created the record.
    pub revision: u64,
    /// Its repeat count then (1, or an imported run's count).
    pub repeat_count: u64,
    /// Its `last_ts` then.
    pub last_ts: Timestamp,
}

impl Created {
    /// The creation facts of a record that has just been created.
    pub fn of(record: &Record) -> Created {
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
/// length and UTF-8 bytes.
pub fn encode_record(record: &Record, created: &Created, out: &mut Vec<u8>) {
    let first = micros(record.first_ts);
    put_varint(out, created.revision);
    put_varint(out, record.revision);
    put_varint(out, record.repeat_count);
    put_varint(out, created.repeat_count);
    put_signed(out, first);
    put_signed(out, micros(record.last_ts) - first);
    put_signed(out, micros(created.last_ts) - first);
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
}

/// Decodes a record stored under `seq`.
pub fn decode_record(seq: u64, bytes: &[u8]) -> Result<(Record, Created), DecodeError> {
    let (mut record, payload, created) = decode_fields(seq, bytes)?;
    record.payload = payload
        .map(Payload::from_stored)
        .transpose()
        .map_err(|_| damaged("record"))?;
    Ok((record, created))
}

/// Decodes a record stored under `seq` into the cache, its payload kept (as the stored text)
/// or not as `keep` says.
pub fn decode_cached(
    seq: u64,
    bytes: &[u8],
    keep: PayloadPolicy,
    meter: &Meter,
) -> Result<CachedRecord, DecodeError> {
    let (record, payload, _) = decode_fields(seq, bytes)?;
    let collapsible = collapse::is_collapse_target(
        record.kind.as_str(),
        record.actor.as_deref(),
        payload.map_or(0, str::len),
    );
    // A payload is read only where it is needed: to keep it, or to find a note's id.
    let kept = match payload {
        Some(text) if keep == PayloadPolicy::Keep && collapsible => {
            Some(Payload::from_stored(text).map_err(|_| damaged("record"))?)
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
fn decode_fields(seq: u64, bytes: &[u8]) -> Result<(Record, Option<&str>, Created), DecodeError> {
    let what = "record";
    let mut input = Input::new(bytes, what);
    let created_revision = input.varint()?;
    let revision = input.varint()?;
    let repeat_count = input.varint()?;
    let created_repeat_count = input.varint()?;
    let first = input.signed()?;
    let last = first.wrapping_add(input.signed()?);
    let created_last = first.wrapping_add(input.signed()?);
    let severity = *Severity::ALL
        .get(usize::from(input.byte()?))
        .ok_or_else(|| damaged(what))?;
    let flags = input.byte()?;
    let kind = Kind::new(input.str()?).map_err(|_| damaged(what))?;
    let message = input.str()?.to_owned();
    let mut optional = |flag: u8| -> Result<Option<String>, DecodeError> {
        (flags & flag != 0)
            .then(|| input.str().map(str::to_owned))
            .transpose()
    };
    let display_message = optional(HAS_DISPLAY_MESSAGE)?;
    let actor = optional(HAS_ACTOR)?;
    let step_id = optional(HAS_STEP_ID)?;
    let payload = if flags & HAS_PAYLOAD != 0 {
        Some(std::str::from_utf8(input.bytes()?).map_err(|_| damaged(what))?)
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

/// The `last_ts` of a stored record, read without decoding the rest.
pub fn last_ts(bytes: &[u8]) -> Result<Timestamp, DecodeError> {
    let mut input = Input::new(bytes, "record");
    for _ in 0..4 {
        input.varint()?;
    }
    let first = input.signed()?;
    from_micros(first.wrapping_add(input.signed()?))
}

/// The revision that created a stored record, read without decoding the rest.
pub fn created_revision(bytes: &[u8]) -> Result<u64, DecodeError> {
    Input::new(bytes, "record").varint()
}

/// The revision of a stored record's last change, read without decoding the rest.
pub fn last_revision(bytes: &[u8]) -> Result<u64, DecodeError> {
    let mut input = Input::new(bytes, "record");
    input.varint()?;
    input.varint()
}

/// Encodes a note (its id is in the key) onto the end of `out`: `created_at` (zigzag varint, µs), a flag
/// byte and `expires_at` when set, then the text.
pub fn encode_note(note: &Note, out: &mut Vec<u8>) {
    put_note(note, out);
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

/// Decodes a note stored under `id`.
pub fn decode_note(id: u64, bytes: &[u8]) -> Result<Note, DecodeError> {
    let mut input = Input::new(bytes, "note");
    let note = read_note(id, &mut input)?;
    input.end()?;
    Ok(note)
}

fn read_note(id: u64, input: &mut Input<'_>) -> Result<Note, DecodeError> {
    let created_at = from_micros(input.signed()?)?;
    let expires_at = match input.byte()? {
        0 => None,
        1 => Some(from_micros(input.signed()?)?),
        _ => return Err(damaged("note")),
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

/// Encodes a changelog entry onto the end of `out`.
pub fn encode_change(entry: &ChangeEntry, out: &mut Vec<u8>) {
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
}

/// Decodes a changelog entry.
pub fn decode_change(bytes: &[u8]) -> Result<ChangeEntry, DecodeError> {
    let mut input = Input::new(bytes, "change");
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
        _ => return Err(damaged("change")),
    };
    input.end()?;
    Ok(entry)
}

/// Microseconds since the Unix epoch: the precision recap keeps.
pub fn micros(ts: Timestamp) -> i64 {
    ts.timestamp_micros()
}

fn from_micros(value: i64) -> Result<Timestamp, DecodeError> {
    DateTime::from_timestamp_micros(value).ok_or_else(|| damaged("timestamp"))
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
    what: &'static str,
}

impl<'a> Input<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Input<'a> {
        Input { bytes, what }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.bytes.split_first().ok_or_else(|| damaged(self.what))?;
        self.bytes = rest;
        Ok(first)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(damaged(self.what))
    }

    fn signed(&mut self) -> Result<i64, DecodeError> {
        let raw = self.varint()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| damaged(self.what))?;
        if len > self.bytes.len() {
            return Err(damaged(self.what));
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| damaged(self.what))
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(damaged(self.what))
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
        encode_record(&record, &created, &mut bytes);
        assert_eq!(decode_record(42, &bytes).unwrap(), (record, created));
        assert_eq!(created_revision(&bytes).unwrap(), 7);
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
        encode_record(&record, &Created::of(&record), &mut bytes);
        for len in 0..bytes.len() {
            assert!(decode_record(1, &bytes[..len]).is_err(), "prefix of {len}");
        }
        assert!(decode_change(&[9]).is_err());
        assert!(decode_note(1, &[]).is_err());
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
            encode_change(&entry, &mut bytes);
            assert_eq!(decode_change(&bytes).unwrap(), entry);
        }
        let mut bytes = Vec::new();
        encode_note(&note, &mut bytes);
        assert_eq!(decode_note(3, &bytes).unwrap(), note);
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
        assert_eq!(decode_meta(&encode_meta(&meta)).unwrap(), meta);
        meta.note_expiry = Some(ts("2024-05-01T11:00:00Z"));
        assert_eq!(decode_meta(&encode_meta(&meta)).unwrap(), meta);
    }
}
