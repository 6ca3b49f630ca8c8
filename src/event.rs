//! Events as clients post them, and records as recap keeps them.
//!
//! This module is pure data and validation. Parsing happens in two stages, the way a careful
//! server reads untrusted input: serde turns JSON into an [`EventInput`] (unknown fields and wrong
//! types are rejected with the path of the offending field), then [`EventInput::validate`] checks
//! the values (kind syntax, severity names, sizes, timestamps) and returns an [`Event`]. Every
//! failure is an [`EventError`] that names the field and says what is allowed.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::payload::Payload;

/// Points in time. Kept to the microsecond: that is what clients send, what the store keeps and
/// what the OpenIntent wire format prints.
pub type Timestamp = DateTime<Utc>;

/// Largest `message` accepted by default: 64 KiB, enough for a stack trace or a page of tool
/// output, small enough that one event cannot crowd a stream.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest `display_message`: a dashboard line, not a document.
pub const MAX_DISPLAY_MESSAGE_BYTES: usize = 4 * 1024;
/// Largest `actor` and `step_id`: names and correlation ids, not content.
pub const MAX_LABEL_BYTES: usize = 256;
/// Longest kind, in bytes, after lower-casing (the first character plus 63 more).
pub const MAX_KIND_BYTES: usize = 64;

/// How much an event matters, from `debug` to `critical`. Ordered: `Debug < ... < Critical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Diagnostic detail.
    Debug,
    /// The normal course of work (the default).
    #[default]
    Info,
    /// Something went wrong but the agent carried on (retries, rate limits, misses).
    Warning,
    /// A step failed.
    Error,
    /// The run cannot go on.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 5] = [
        Severity::Debug,
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];

    /// The canonical lower-case name (`"warning"`, never an alias).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Debug => "debug",
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    /// Position in [`Severity::ALL`], for per-severity arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = EventError;

    /// Case-insensitive, with the aliases `warn`, `err` and `fatal`. Anything else is an error:
    /// a misspelt severity is never quietly turned into `info`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let severity = match value.to_ascii_lowercase().as_str() {
            "debug" => Severity::Debug,
            "info" => Severity::Info,
            "warning" | "warn" => Severity::Warning,
            "error" | "err" => Severity::Error,
            "critical" | "fatal" => Severity::Critical,
            _ => {
                return Err(EventError::UnknownSeverity {
                    value: value.to_owned(),
                });
            }
        };
        Ok(severity)
    }
}

impl<'de> Deserialize<'de> for Severity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        value.parse().map_err(serde::de::Error::custom)
    }
}

/// What an event is about: `tool`, `llm`, `retry`, ... An open set, lower-case, matching
/// `[a-z0-9][a-z0-9_.:-]{0,63}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Kind(String);

impl Kind {
    /// Lower-cases `value` and checks the kind syntax.
    pub fn new(value: &str) -> Result<Kind, EventError> {
        let lower = value.to_ascii_lowercase();
        let bytes = lower.as_bytes();
        let allowed_rest =
            |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(b);
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_KIND_BYTES
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes[1..].iter().all(allowed_rest);
        if valid {
            Ok(Kind(lower))
        } else {
            Err(EventError::InvalidKind {
                value: value.to_owned(),
            })
        }
    }

    /// The kind as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        Kind::new(&value).map_err(serde::de::Error::custom)
    }
}

/// An event as a client posts it, after JSON decoding and before validation.
///
/// Unknown fields are rejected so that a typo (`sevrity`) is an error the client sees, not a
/// default it never asked for.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// Required; may be empty.
    pub message: Option<String>,
    /// Required.
    pub kind: Option<String>,
    /// Optional; `info` when absent.
    pub severity: Option<String>,
    /// Optional; server time when absent.
    pub ts: Option<String>,
    /// Optional short form for dashboards.
    pub display_message: Option<String>,
    /// Optional agent or tool name.
    pub actor: Option<String>,
    /// Optional step correlation id.
    pub step_id: Option<String>,
    /// Optional structured data, stored and returned but never rendered into context text.
    pub payload: Option<Payload>,
}

/// Limits applied by [`EventInput::validate`].
#[derive(Clone, Copy, Debug)]
pub struct EventLimits {
    /// Largest `message` in bytes.
    pub max_message_bytes: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

impl EventInput {
    /// Decodes one event from JSON, naming the offending field on failure.
    pub fn from_json(json: &[u8]) -> Result<EventInput, EventError> {
        // serde's derive would also take a positional array; an event is always an object.
        match json.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') | None => {}
            Some(&first) => return Err(EventError::not_an_object(json_type_name(first))),
        }
        // Tracking the path to name the offending field costs about as much as the decoding
        // itself, and most events decode: only one that fails is decoded again, tracked.
        match serde_json::from_slice(json) {
            Ok(input) => Ok(input),
            Err(_) => EventInput::from_json_tracked(json),
        }
    }

    /// [`Self::from_json`] with the path to the offending field tracked throughout.
    fn from_json_tracked(json: &[u8]) -> Result<EventInput, EventError> {
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let input = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(EventError::from_path_error)?;
        deserializer.end().map_err(|error| EventError::Json {
            field: None,
            detail: error.to_string(),
        })?;
        Ok(input)
    }

    /// Decodes one event from an already parsed JSON value.
    pub fn from_value(value: Value) -> Result<EventInput, EventError> {
        let found = match &value {
            Value::Object(_) => None,
            Value::Array(_) => Some("an array"),
            Value::String(_) => Some("a string"),
            Value::Number(_) => Some("a number"),
            Value::Bool(_) => Some("a boolean"),
            Value::Null => Some("null"),
        };
        if let Some(found) = found {
            return Err(EventError::not_an_object(found));
        }
        serde_path_to_error::deserialize(value).map_err(EventError::from_path_error)
    }

    /// Checks every field and returns the event, or the first problem found.
    ///
    /// `ts` is left as given (or `None`); the server fills in its own clock when it accepts the
    /// event, so validation stays a pure function.
    pub fn validate(self, limits: &EventLimits) -> Result<Event, EventError> {
        let message = self
            .message
            .ok_or(EventError::MissingField { field: "message" })?;
        if message.len() > limits.max_message_bytes {
            return Err(EventError::TooLong {
                field: "message",
                len: message.len(),
                max: limits.max_message_bytes,
            });
        }
        let kind = Kind::new(
            &self
                .kind
                .ok_or(EventError::MissingField { field: "kind" })?,
        )?;
        let severity = match self.severity {
            Some(value) => value.parse()?,
            None => Severity::default(),
        };
        let ts = self.ts.as_deref().map(parse_timestamp).transpose()?;
        check_len(
            "display_message",
            self.display_message.as_deref(),
            MAX_DISPLAY_MESSAGE_BYTES,
        )?;
        check_len("actor", self.actor.as_deref(), MAX_LABEL_BYTES)?;
        check_len("step_id", self.step_id.as_deref(), MAX_LABEL_BYTES)?;
        Ok(Event {
            message,
            kind,
            severity,
            ts,
            display_message: self.display_message,
            actor: self.actor,
            step_id: self.step_id,
            payload: self.payload,
        })
    }
}

fn json_type_name(first_byte: u8) -> &'static str {
    match first_byte {
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        b'-' | b'0'..=b'9' => "a number",
        _ => "something that is not JSON",
    }
}

fn check_len(field: &'static str, value: Option<&str>, max: usize) -> Result<(), EventError> {
    match value {
        Some(value) if value.len() > max => Err(EventError::TooLong {
            field,
            len: value.len(),
            max,
        }),
        _ => Ok(()),
    }
}

/// Parses RFC 3339 (`2024-05-01T10:31:41.5Z`, `...+02:00`) or a naive date-time, read as UTC
/// (`2024-05-01T10:31:41`, `2024-05-01 10:31:41.123456`). The result is kept to the microsecond.
pub fn parse_timestamp(value: &str) -> Result<Timestamp, EventError> {
    let trimmed = value.trim();
    let parsed = DateTime::parse_from_rfc3339(trimmed)
        .map(|ts| ts.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S%.f"))
                .map(|naive| naive.and_utc())
        });
    parsed
        .map(|ts| ts.trunc_subsecs(6))
        .map_err(|_| EventError::InvalidTimestamp {
            field: "ts",
            value: value.to_owned(),
        })
}

/// How far ahead of the server's clock an event's time may be: clocks drift, but a time days
/// ahead is a bug, and would hold age retention off its stream until then.
pub const MAX_SECONDS_AHEAD: i64 = 24 * 60 * 60;

/// Refuses a time more than [`MAX_SECONDS_AHEAD`] after `now`, naming `field`.
pub fn check_not_ahead(
    ts: &Timestamp,
    now: &Timestamp,
    field: &'static str,
) -> Result<(), EventError> {
    if (*ts - *now).num_seconds() <= MAX_SECONDS_AHEAD {
        return Ok(());
    }
    Err(EventError::Json {
        field: Some(field.to_owned()),
        detail: format!(
            "{field} {} is more than 24 hours after the server's clock ({}); send the time the event happened, in UTC",
            format_timestamp(ts),
            format_timestamp(now)
        ),
    })
}

/// Formats a timestamp the way recap writes them on the wire: RFC 3339, UTC, six fractional
/// digits, `Z`.
pub fn format_timestamp(ts: &Timestamp) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A validated event, ready to be collapsed and stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The text, verbatim.
    pub message: String,
    /// What it is about.
    pub kind: Kind,
    /// How much it matters.
    pub severity: Severity,
    /// When it happened, if the client said; the server's clock otherwise.
    pub ts: Option<Timestamp>,
    /// A short form for dashboards; never used in place of `message` in the context.
    pub display_message: Option<String>,
    /// Agent or tool name.
    pub actor: Option<String>,
    /// Correlates the events of one agent step.
    pub step_id: Option<String>,
    /// Structured data, stored and returned, not rendered.
    pub payload: Option<Payload>,
}

impl Event {
    /// Refuses an event that passes itself off as a note's audit record: `payload.note_id` on a
    /// `note` event is recap's own (a window would hide such an event, or show it as a note).
    pub fn check_not_audit(self) -> Result<Event, EventError> {
        let audit = self.kind.as_str() == "note"
            && self
                .payload
                .as_ref()
                .is_some_and(|payload| payload.contains_key(NOTE_ID_KEY));
        if audit {
            return Err(EventError::Json {
                field: Some(format!("payload.{NOTE_ID_KEY}")),
                detail: format!(
                    "payload.{NOTE_ID_KEY} on a `note` event is reserved for the audit records recap writes for notes; to pin a note use POST .../notes, or name the key differently"
                ),
            });
        }
        Ok(self)
    }

    /// A minimal event, mostly for tests and examples.
    pub fn new(
        kind: &str,
        severity: Severity,
        message: impl Into<String>,
    ) -> Result<Event, EventError> {
        Ok(Event {
            message: message.into(),
            kind: Kind::new(kind)?,
            severity,
            ts: None,
            display_message: None,
            actor: None,
            step_id: None,
            payload: None,
        })
    }

    /// The same event with a timestamp.
    pub fn at(mut self, ts: Timestamp) -> Event {
        self.ts = Some(ts);
        self
    }
}

/// What recap keeps: an event, or a run of repeats of it, with its place in the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the stream: dense, from 1.
    pub seq: u64,
    /// The latest message of the run (in `template` mode repeats may differ in numbers and ids).
    pub message: String,
    /// What it is about.
    pub kind: Kind,
    /// How much it matters.
    pub severity: Severity,
    /// When the first event of the run happened (the event's `ts`).
    #[serde(with = "micros")]
    pub first_ts: Timestamp,
    /// When the latest event of the run happened.
    #[serde(with = "micros")]
    pub last_ts: Timestamp,
    /// How many events the record stands for (≥ 1).
    pub repeat_count: u64,
    /// The stream revision of the record's last change.
    pub revision: u64,
    /// Short form for dashboards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_message: Option<String>,
    /// Agent or tool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Step correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    /// Structured data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
}

impl Record {
    /// The first record of a run: `event` happened at `ts` and got `seq` and `revision`.
    pub fn from_event(event: Event, seq: u64, revision: u64, ts: Timestamp) -> Record {
        Record {
            seq,
            message: event.message,
            kind: event.kind,
            severity: event.severity,
            first_ts: ts,
            last_ts: ts,
            repeat_count: 1,
            revision,
            display_message: event.display_message,
            actor: event.actor,
            step_id: event.step_id,
            payload: event.payload,
        }
    }

    /// The note this record is the audit record of, if it is one (a `note` record whose
    /// payload names it with [`NOTE_ID_KEY`]).
    pub fn note_id(&self) -> Option<u64> {
        if self.kind.as_str() != "note" {
            return None;
        }
        self.payload.as_ref()?.get_u64(NOTE_ID_KEY)
    }

    /// Folds a repeat into the record: one more event, the latest message and time. A note's
    /// audit record stays one ([`NOTE_ID_KEY`] is kept), so forgetting the note still hides it.
    pub fn absorb(&mut self, event: Event, revision: u64, ts: Timestamp) {
        self.repeat_count += 1;
        self.revision = revision;
        self.last_ts = self.last_ts.max(ts);
        self.message = event.message;
        if event.display_message.is_some() {
            self.display_message = event.display_message;
        }
        if let Some(payload) = event.payload {
            let note_id = self
                .payload
                .as_ref()
                .and_then(|old| old.top_level(NOTE_ID_KEY));
            self.payload = Some(match note_id {
                Some(note_id) => payload.with_key_if_absent(NOTE_ID_KEY, &note_id),
                None => payload,
            });
        }
        if event.step_id.is_some() {
            self.step_id = event.step_id;
        }
    }
}

/// The largest repeat count a record takes: 2^53 - 1, the largest whole number a JSON reader
/// that uses doubles (JavaScript) reads exactly. A record at this count takes no more repeats
/// (the next one starts a record), and an import that would take a stream's events past it is
/// refused. Events posted one at a time keep counting (2^64 is out of their reach): no count
/// ever wraps.
pub const MAX_EVENT_COUNT: u64 = (1 << 53) - 1;

/// Payload key of a note's audit record (the `note` event recap logs for every note) that names
/// the note. Only recap writes it: windows hide the record once its note is forgotten.
pub const NOTE_ID_KEY: &str = "note_id";

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 128;

/// A validated stream name: `[A-Za-z0-9][A-Za-z0-9._:-]{0,127}`. Case is kept and significant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StreamName(String);

impl StreamName {
    /// Checks the stream-name syntax.
    pub fn new(value: &str) -> Result<StreamName, EventError> {
        let bytes = value.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_STREAM_NAME_BYTES
            && bytes[0].is_ascii_alphanumeric()
            && bytes[1..]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b));
        if valid {
            Ok(StreamName(value.to_owned()))
        } else {
            Err(EventError::InvalidStreamName {
                value: value.to_owned(),
            })
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StreamName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        StreamName::new(&value).map_err(serde::de::Error::custom)
    }
}

/// A fact to remember, kept apart from the event log and always put first in the context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Note {
    /// Per-stream id, from 1.
    pub id: u64,
    /// The fact, verbatim.
    pub text: String,
    /// When it was added.
    #[serde(with = "micros")]
    pub created_at: Timestamp,
    /// When it stops applying, if ever.
    #[serde(
        default,
        with = "optional_micros",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<Timestamp>,
}

impl Note {
    /// Whether the note still applies at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|expires_at| expires_at > now)
    }
}

/// Serializes timestamps as RFC 3339 with microseconds, the one wire format recap writes.
mod micros {
    use super::{Timestamp, format_timestamp, parse_timestamp};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        ts: &Timestamp,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_timestamp(ts))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Timestamp, D::Error> {
        let value = String::deserialize(deserializer)?;
        parse_timestamp(&value).map_err(serde::de::Error::custom)
    }
}

mod optional_micros {
    use super::{Timestamp, format_timestamp, parse_timestamp};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        ts: &Option<Timestamp>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match ts {
            Some(ts) => serializer.serialize_str(&format_timestamp(ts)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|value| parse_timestamp(&value).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Why an event was refused. Each variant names the field and says what would be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// A required field is absent.
    #[error("field `{field}` is required")]
    MissingField {
        /// The missing field.
        field: &'static str,
    },
    /// The kind does not match the kind syntax.
    #[error(
        "field `kind`: {value:?} is not a valid kind; use 1 to 64 characters from a-z, 0-9 and `_ . : -`, starting with a letter or digit (upper case is lowered)"
    )]
    InvalidKind {
        /// What the client sent.
        value: String,
    },
    /// The severity is not one recap knows.
    #[error(
        "field `severity`: unknown severity {value:?}; use one of debug, info, warning, error, critical (aliases: warn, err, fatal; any case)"
    )]
    UnknownSeverity {
        /// What the client sent.
        value: String,
    },
    /// A stream name that does not match the stream-name syntax.
    #[error(
        "stream name {value:?} is not valid; use 1 to 128 characters from A-Z, a-z, 0-9 and `. _ : -`, starting with a letter or digit"
    )]
    InvalidStreamName {
        /// What the client sent.
        value: String,
    },
    /// A text field is over its size cap.
    #[error(
        "field `{field}` is {len} bytes, over the limit of {max} bytes; shorten it or move bulk data to `payload`"
    )]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A timestamp that is neither RFC 3339 nor a naive date-time.
    #[error(
        "field `{field}`: {value:?} is not a timestamp; use RFC 3339 (2024-05-01T10:31:41.5Z, 2024-05-01T12:31:41+02:00) or a naive UTC date-time (2024-05-01T10:31:41)"
    )]
    InvalidTimestamp {
        /// The field.
        field: &'static str,
        /// What the client sent.
        value: String,
    },
    /// A field recap does not know (a typo such as `sevrity` is an error, not a default).
    #[error("{detail}")]
    UnknownField {
        /// The field as the client spelled it.
        field: String,
        /// serde's message, with the fields that are allowed.
        detail: String,
    },
    /// A field given twice.
    #[error("field `{field}` is given twice")]
    DuplicateField {
        /// The field.
        field: String,
    },
    /// The JSON is malformed or has a field of the wrong type.
    #[error("{}", match field { Some(field) => format!("field `{field}`: {detail}"), None => detail.clone() })]
    Json {
        /// The path of the offending field, when there is one.
        field: Option<String>,
        /// What serde found wrong.
        detail: String,
    },
}

impl EventError {
    /// The name of the offending field, for the `field` member of an error body.
    pub fn field(&self) -> Option<&str> {
        match self {
            EventError::MissingField { field }
            | EventError::TooLong { field, .. }
            | EventError::InvalidTimestamp { field, .. } => Some(field),
            EventError::InvalidKind { .. } => Some("kind"),
            EventError::UnknownSeverity { .. } => Some("severity"),
            EventError::InvalidStreamName { .. } => Some("stream"),
            EventError::Json { field, .. } => field.as_deref(),
            EventError::UnknownField { field, .. } | EventError::DuplicateField { field } => {
                Some(field)
            }
        }
    }

    fn not_an_object(found: &str) -> EventError {
        EventError::Json {
            field: None,
            detail: format!(
                "an event must be a JSON object like {{\"kind\": \"tool\", \"message\": \"...\"}}, found {found}"
            ),
        }
    }

    fn from_path_error<E: fmt::Display>(error: serde_path_to_error::Error<E>) -> EventError {
        let path = error.path().to_string();
        let detail = error
            .inner()
            .to_string()
            .replace("struct EventInput", "an event object");
        let stripped = strip_position(&detail);
        if let Some(field) = serde_named_field(&stripped, "unknown field") {
            let field = field.to_owned();
            return EventError::UnknownField {
                field,
                detail: stripped,
            };
        }
        if let Some(field) = serde_named_field(&stripped, "duplicate field") {
            let field = field.to_owned();
            return EventError::DuplicateField { field };
        }
        // Syntax errors have no field ("?" or "."); their line and column help find the fault.
        if path == "." || path == "?" || path.is_empty() {
            return EventError::Json {
                field: None,
                detail,
            };
        }
        EventError::Json {
            field: Some(path),
            detail: stripped,
        }
    }
}

/// The field in serde's own wording of a struct-level problem: `problem` is "unknown field",
/// "duplicate field" or "missing field", as in ``unknown field `x`, expected ...``.
pub fn serde_named_field<'a>(detail: &'a str, problem: &str) -> Option<&'a str> {
    let rest = detail.strip_prefix(problem)?.strip_prefix(" `")?;
    Some(&rest[..rest.find('`')?])
}

/// serde_json appends " at line 1 column 17"; the field name says more and the position of a
/// value inside a batch would mislead.
pub(crate) fn strip_position(detail: &str) -> String {
    match detail.rfind(" at line ") {
        Some(at) => detail[..at].to_owned(),
        None => detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A JSON object made of fields an event has (and one it does not), with values of every
    /// JSON type, fields repeated, and sometimes cut short or followed by more text.
    fn event_like_json() -> impl Strategy<Value = String> {
        let field = prop::sample::select(vec![
            "message",
            "kind",
            "severity",
            "ts",
            "actor",
            "step_id",
            "display_message",
            "payload",
            "sevrity",
        ]);
        let value = prop::sample::select(vec![
            r#""tool""#,
            r#""2024-05-01T10:00:00Z""#,
            r#""warn""#,
            "12",
            "null",
            "true",
            "[1, 2]",
            r#"{"n": 1}"#,
            r#""a\u00e9\n""#,
        ]);
        let ending = prop::sample::select(vec!["}", "} ", "", "}}", "} x"]);
        (prop::collection::vec((field, value), 0..8), ending).prop_map(|(fields, ending)| {
            let body: Vec<String> = fields
                .into_iter()
                .map(|(field, value)| format!(r#""{field}": {value}"#))
                .collect();
            format!("{{{}{ending}", body.join(", "))
        })
    }

    proptest! {
        /// Decoding without tracking the path first changes nothing: what decodes is the same
        /// event, and what fails gets the error the tracked decoding gives, field named. (The
        /// inputs all start as objects: the check that a body is one comes before either.)
        #[test]
        fn the_untracked_first_try_decodes_as_the_tracked_decoding(json in event_like_json()) {
            let fast = EventInput::from_json(json.as_bytes());
            let tracked = EventInput::from_json_tracked(json.as_bytes());
            prop_assert_eq!(format!("{fast:?}"), format!("{tracked:?}"));
        }
    }

    fn validate(json: &str) -> Result<Event, String> {
        EventInput::from_json(json.as_bytes())
            .and_then(|input| input.validate(&EventLimits::default()))
            .map_err(|error| error.to_string())
    }

    #[test]
    fn accepts_a_minimal_event_with_defaults() {
        let event = validate(r#"{"message": "", "kind": "Tool"}"#).unwrap();
        assert_eq!(event.kind.as_str(), "tool");
        assert_eq!(event.severity, Severity::Info);
        assert_eq!(event.message, "");
        assert_eq!(event.ts, None);
    }

    #[test]
    fn severity_aliases_in_any_case() {
        for (given, expected) in [
            ("WARN", Severity::Warning),
            ("warning", Severity::Warning),
            ("Err", Severity::Error),
            ("fatal", Severity::Critical),
            ("CRITICAL", Severity::Critical),
            ("debug", Severity::Debug),
            ("Info", Severity::Info),
        ] {
            assert_eq!(given.parse::<Severity>().unwrap(), expected, "{given}");
        }
    }

    #[test]
    fn timestamps_rfc3339_and_naive() {
        let cases = [
            ("2024-05-01T10:31:41Z", "2024-05-01T10:31:41.000000Z"),
            ("2024-05-01T12:31:41.5+02:00", "2024-05-01T10:31:41.500000Z"),
            (
                "2024-05-01T10:31:41.123456789Z",
                "2024-05-01T10:31:41.123456Z",
            ),
            ("2024-05-01T10:31:41", "2024-05-01T10:31:41.000000Z"),
            ("2024-05-01 10:31:41.25", "2024-05-01T10:31:41.250000Z"),
        ];
        for (given, expected) in cases {
            assert_eq!(
                format_timestamp(&parse_timestamp(given).unwrap()),
                expected,
                "{given}"
            );
        }
    }

    /// Every validation error, with the exact text a client sees.
    #[test]
    fn every_error_message() {
        let long = "x".repeat(DEFAULT_MAX_MESSAGE_BYTES + 1);
        let long_actor = "a".repeat(MAX_LABEL_BYTES + 1);
        let cases: Vec<(String, &str)> = vec![
            (r#"{"kind": "tool"}"#.into(), "field `message` is required"),
            (r#"{"message": "m"}"#.into(), "field `kind` is required"),
            (
                r#"{"message": "m", "kind": "bad kind"}"#.into(),
                r#"field `kind`: "bad kind" is not a valid kind; use 1 to 64 characters from a-z, 0-9 and `_ . : -`, starting with a letter or digit (upper case is lowered)"#,
            ),
            (
                r#"{"message": "m", "kind": ""}"#.into(),
                r#"field `kind`: "" is not a valid kind; use 1 to 64 characters from a-z, 0-9 and `_ . : -`, starting with a letter or digit (upper case is lowered)"#,
            ),
            (
                r#"{"message": "m", "kind": "tool", "severity": "loud"}"#.into(),
                r#"field `severity`: unknown severity "loud"; use one of debug, info, warning, error, critical (aliases: warn, err, fatal; any case)"#,
            ),
            (
                format!(r#"{{"message": "{long}", "kind": "tool"}}"#),
                "field `message` is 65537 bytes, over the limit of 65536 bytes; shorten it or move bulk data to `payload`",
            ),
            (
                format!(r#"{{"message": "m", "kind": "tool", "actor": "{long_actor}"}}"#),
                "field `actor` is 257 bytes, over the limit of 256 bytes; shorten it or move bulk data to `payload`",
            ),
            (
                r#"{"message": "m", "kind": "tool", "ts": "yesterday"}"#.into(),
                r#"field `ts`: "yesterday" is not a timestamp; use RFC 3339 (2024-05-01T10:31:41.5Z, 2024-05-01T12:31:41+02:00) or a naive UTC date-time (2024-05-01T10:31:41)"#,
            ),
            (
                r#"{"message": 5, "kind": "tool"}"#.into(),
                "field `message`: invalid type: integer `5`, expected a string",
            ),
            (
                r#"{"message": "m", "kind": "tool", "payload": [1]}"#.into(),
                "field `payload`: invalid type: sequence, expected a map",
            ),
            (
                r#"{"message": "m", "kind": "tool", "sevrity": "info"}"#.into(),
                "unknown field `sevrity`, expected one of `message`, `kind`, `severity`, `ts`, `display_message`, `actor`, `step_id`, `payload`",
            ),
            (
                r#"{"message": "m", "kind": "tool""#.into(),
                "EOF while parsing an object at line 1 column 31",
            ),
            (
                r#"["not", "an", "object"]"#.into(),
                r#"an event must be a JSON object like {"kind": "tool", "message": "..."}, found an array"#,
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(
                validate(&json).unwrap_err(),
                expected,
                "for {}",
                &json[..json.len().min(80)]
            );
        }
    }

    #[test]
    fn errors_name_their_field() {
        let field = |json: &str| {
            EventInput::from_json(json.as_bytes())
                .and_then(|input| input.validate(&EventLimits::default()))
                .unwrap_err()
                .field()
                .map(str::to_owned)
        };
        assert_eq!(
            field(r#"{"message": "m", "kind": "tool", "severity": "x"}"#).as_deref(),
            Some("severity")
        );
        assert_eq!(
            field(r#"{"message": 1, "kind": "tool"}"#).as_deref(),
            Some("message")
        );
        assert_eq!(
            field(r#"{"message": "m", "kind": "a b"}"#).as_deref(),
            Some("kind")
        );
        assert_eq!(field(r#"{"message": "m"}"#).as_deref(), Some("kind"));
    }

    #[test]
    fn record_json_round_trips() {
        let event = Event::new("tool", Severity::Error, "boom").unwrap();
        let ts = parse_timestamp("2024-05-01T10:31:41.5Z").unwrap();
        let record = Record::from_event(event, 7, 9, ts);
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            r#"{"seq":7,"message":"boom","kind":"tool","severity":"error","first_ts":"2024-05-01T10:31:41.500000Z","last_ts":"2024-05-01T10:31:41.500000Z","repeat_count":1,"revision":9}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), record);
    }
}
