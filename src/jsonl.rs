//! The line formats of `recap import` and `recap export`, shared by the client (which checks a
//! whole file before sending anything) and the server's record-import route.
//!
//! A line is one of:
//! - a **record** as `recap export` writes it (the JSON of [`Record`]: the event fields plus
//!   `seq`, `first_ts`, `last_ts`, `repeat_count`, `revision`). It is imported as it is, without
//!   collapse, keeping its times and repeat count; `seq` and `revision` are assigned afresh by
//!   the target stream, so they are read and ignored.
//! - an **event** as clients post it, optionally in the trace format of the shared fixtures,
//!   whose lines carry two fields that are not event fields: `stream` (the trace id) is dropped,
//!   because the target stream is named on the command line (and trace ids such as
//!   `chatdev/Poker1` are not valid stream names); `source` (where the event came from) is kept
//!   as `payload.source`, so nothing in the file is lost.
//!
//! A record line may carry `note` (`{"created_at", "expires_at"?}`): `recap export` adds it to
//! the audit record of each live pinned note (a `note` record whose `payload.note_id` names the
//! note). Imported, such a line makes the note again, with the record's message as its text, its
//! times, and a new id of the target stream that the record's `payload.note_id` then names; the
//! audit record itself is imported like any other record, so nothing is duplicated.
//!
//! A line is a record if it has `repeat_count` or `first_ts`; anything else is an event.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::event::{
    Event, EventError, EventInput, EventLimits, MAX_EVENT_COUNT, Note, Record, Timestamp,
    format_timestamp, parse_timestamp,
};
use crate::payload::Payload;
use crate::store::{ImportedNote, ImportedRecord};

/// One parsed line.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// An event, to be appended (repeats collapse).
    Event(Event),
    /// An exported record, to be imported as it is.
    Record(ImportedRecord),
}

/// Record fields that the target stream assigns afresh: read, then ignored.
const ASSIGNED_FIELDS: [&str; 2] = ["seq", "revision"];

/// The field of an exported record that makes it a pinned note's audit record.
const NOTE_FIELD: &str = "note";

/// Parses and validates one line.
pub fn parse_line(line: &str, limits: &EventLimits) -> Result<Line, EventError> {
    let value: Value = serde_json::from_str(line).map_err(|error| EventError::Json {
        field: None,
        detail: error.to_string(),
    })?;
    let Value::Object(object) = value else {
        return Err(EventError::Json {
            field: None,
            detail: "a line must be a JSON object (an event or an exported record)".to_owned(),
        });
    };
    if object.contains_key("repeat_count") || object.contains_key("first_ts") {
        parse_record(object, limits).map(Line::Record)
    } else {
        // The trace reader drops `stream` and keeps `source` as `payload.source`.
        crate::trace::parse_line(line, limits).map(|(_, event)| Line::Event(event))
    }
}

/// Parses an exported record from its JSON text; the payload is checked and kept as text,
/// never parsed into a tree (see [`Payload`]).
pub fn parse_record_text(json: &str, limits: &EventLimits) -> Result<ImportedRecord, EventError> {
    let not_a_record = |error: serde_json::Error| EventError::Json {
        field: None,
        detail: format!("a record must be a JSON object as `recap export` writes it: {error}"),
    };
    let mut fields: IndexMap<String, Box<RawValue>> =
        serde_json::from_str(json).map_err(not_a_record)?;
    let payload = fields.shift_remove("payload");
    let object = fields
        .into_iter()
        .map(|(name, raw)| Ok((name, serde_json::from_str(raw.get())?)))
        .collect::<Result<Map<String, Value>, serde_json::Error>>()
        .map_err(not_a_record)?;
    let mut record = parse_record(object, limits)?;
    record.event.payload = match payload {
        None => None,
        Some(raw) => Option::<Payload>::deserialize(&*raw).map_err(|error| EventError::Json {
            field: Some("payload".to_owned()),
            detail: crate::event::strip_position(&error.to_string()),
        })?,
    };
    Ok(record)
}

/// Parses an exported record (as a JSON object) into what [`crate::store::Store::import`] takes.
pub fn parse_record(
    mut object: Map<String, Value>,
    limits: &EventLimits,
) -> Result<ImportedRecord, EventError> {
    for field in ASSIGNED_FIELDS {
        object.remove(field);
    }
    let note = match object.remove(NOTE_FIELD) {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut note)) => {
            let created_at = take_timestamp(&mut note, "created_at", "note.created_at")?;
            let expires_at = match note.get("expires_at") {
                None | Some(Value::Null) => None,
                Some(_) => Some(take_timestamp(&mut note, "expires_at", "note.expires_at")?),
            };
            note.remove("expires_at");
            if let Some(unknown) = note.keys().next() {
                return Err(note_error(format!(
                    "unknown field `{unknown}` in `note`; it holds `created_at` and optionally `expires_at`"
                )));
            }
            Some(ImportedNote {
                created_at,
                expires_at,
            })
        }
        Some(_) => {
            return Err(note_error(
                "`note` must be an object with `created_at` and optionally `expires_at`".into(),
            ));
        }
    };
    let first_ts = take_timestamp(&mut object, "first_ts", "first_ts")?;
    let last_ts = take_timestamp(&mut object, "last_ts", "last_ts")?;
    if last_ts < first_ts {
        return Err(EventError::Json {
            field: Some("last_ts".to_owned()),
            detail: "last_ts is before first_ts".to_owned(),
        });
    }
    let repeat_count = match object.remove("repeat_count") {
        Some(Value::Number(number)) => number
            .as_u64()
            .filter(|count| (1..=MAX_EVENT_COUNT).contains(count)),
        None => {
            return Err(EventError::MissingField {
                field: "repeat_count",
            });
        }
        Some(_) => None,
    }
    .ok_or_else(|| EventError::Json {
        field: Some("repeat_count".to_owned()),
        detail: format!("repeat_count must be a whole number from 1 to {MAX_EVENT_COUNT}"),
    })?;
    let mut event = EventInput::from_value(Value::Object(object))?.validate(limits)?;
    event.ts = Some(first_ts);
    if note.is_some() {
        if event.kind.as_str() != "note" {
            return Err(note_error(format!(
                "only a note's audit record (kind `note`) carries `note`, not a `{}` record",
                event.kind.as_str()
            )));
        }
        if event.message.trim().is_empty() {
            return Err(note_error(
                "a note's audit record needs the note's text as its message".into(),
            ));
        }
    }
    Ok(ImportedRecord {
        event,
        first_ts,
        last_ts,
        repeat_count,
        note,
    })
}

/// An event as a JSON object in the shape `POST .../events` takes.
pub fn event_json(event: &Event) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("message".to_owned(), Value::from(event.message.as_str()));
    object.insert("kind".to_owned(), Value::from(event.kind.as_str()));
    object.insert("severity".to_owned(), Value::from(event.severity.as_str()));
    if let Some(ts) = &event.ts {
        object.insert("ts".to_owned(), Value::from(format_timestamp(ts)));
    }
    let optional = [
        ("display_message", &event.display_message),
        ("actor", &event.actor),
        ("step_id", &event.step_id),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            object.insert(name.to_owned(), Value::from(value.as_str()));
        }
    }
    if let Some(payload) = &event.payload {
        object.insert("payload".to_owned(), Value::Object(payload.to_object()));
    }
    object
}

/// An imported record as a JSON object in the shape `POST .../records` takes (an export line
/// without the fields the target assigns).
pub fn imported_record_json(record: &ImportedRecord) -> Map<String, Value> {
    let mut object = event_json(&record.event);
    object.remove("ts");
    object.insert(
        "first_ts".to_owned(),
        Value::from(format_timestamp(&record.first_ts)),
    );
    object.insert(
        "last_ts".to_owned(),
        Value::from(format_timestamp(&record.last_ts)),
    );
    object.insert("repeat_count".to_owned(), Value::from(record.repeat_count));
    if let Some(note) = &record.note {
        object.insert(
            NOTE_FIELD.to_owned(),
            note_json(note.created_at, note.expires_at),
        );
    }
    object
}

/// The line `recap export` writes for a record.
pub fn record_line(record: &Record) -> String {
    serde_json::to_string(record).expect("a record always serializes")
}

/// The line `recap export` writes for the audit record of a live pinned note: the record with
/// the note's times under `note`, which `recap import` turns back into the note.
pub fn note_record_line(record: &Record, note: &Note) -> String {
    // The record's own line, fields in the same order, with `note` added last.
    let mut line = record_line(record);
    debug_assert!(line.ends_with('}'));
    line.pop();
    line.push_str(&format!(
        ",\"{NOTE_FIELD}\":{}}}",
        note_json(note.created_at, note.expires_at)
    ));
    line
}

fn note_json(created_at: Timestamp, expires_at: Option<Timestamp>) -> Value {
    let mut note = Map::new();
    note.insert(
        "created_at".to_owned(),
        Value::from(format_timestamp(&created_at)),
    );
    if let Some(expires_at) = expires_at {
        note.insert(
            "expires_at".to_owned(),
            Value::from(format_timestamp(&expires_at)),
        );
    }
    Value::Object(note)
}

fn note_error(detail: String) -> EventError {
    EventError::Json {
        field: Some(NOTE_FIELD.to_owned()),
        detail,
    }
}

/// Takes the timestamp under `key`; errors name it as `field`.
fn take_timestamp(
    object: &mut Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Timestamp, EventError> {
    match object.remove(key) {
        Some(Value::String(value)) => {
            parse_timestamp(&value).map_err(|_| EventError::InvalidTimestamp { field, value })
        }
        Some(other) => Err(EventError::InvalidTimestamp {
            field,
            value: other.to_string(),
        }),
        None => Err(EventError::MissingField { field }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Severity;

    fn limits() -> EventLimits {
        EventLimits::default()
    }

    #[test]
    fn trace_lines_drop_stream_and_keep_source_in_payload() {
        let line = r#"{"stream": "chatdev/x", "ts": "2023-10-26T17:52:02.000001Z", "kind": "retry", "severity": "warning", "message": "Rate limit", "actor": "Programmer", "source": "a/b.log"}"#;
        let Line::Event(event) = parse_line(line, &limits()).unwrap() else {
            panic!("an event line")
        };
        assert_eq!(event.kind.as_str(), "retry");
        assert_eq!(event.severity, Severity::Warning);
        assert_eq!(event.payload.unwrap().to_object()["source"], "a/b.log");
    }

    #[test]
    fn exported_records_round_trip() {
        let event = Event::new("tool", Severity::Error, "boom\nline two").unwrap();
        let ts = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
        let mut record = Record::from_event(event, 7, 12, ts);
        record.repeat_count = 3;
        record.last_ts = parse_timestamp("2024-05-01T10:00:05.5Z").unwrap();
        record.actor = Some("shell".to_owned());
        let Line::Record(imported) = parse_line(&record_line(&record), &limits()).unwrap() else {
            panic!("a record line")
        };
        assert_eq!(imported.first_ts, record.first_ts);
        assert_eq!(imported.last_ts, record.last_ts);
        assert_eq!(imported.repeat_count, 3);
        assert_eq!(imported.event.message, record.message);
        assert_eq!(imported.event.actor, record.actor);
        // Re-made into a record with the same seq and revision, it is the same record.
        let mut again = Record::from_event(imported.event, 7, 12, imported.first_ts);
        again.last_ts = imported.last_ts;
        again.repeat_count = imported.repeat_count;
        assert_eq!(again, record);
    }

    #[test]
    fn wire_objects_parse_back_to_the_same_values() {
        let line = r#"{"stream": "t/x", "ts": "2023-10-26T17:52:02.000001Z", "kind": "retry", "severity": "warning", "message": "m", "actor": "a", "step_id": "s", "source": "src"}"#;
        let Line::Event(event) = parse_line(line, &limits()).unwrap() else {
            panic!("an event line")
        };
        let again = parse_line(&Value::Object(event_json(&event)).to_string(), &limits()).unwrap();
        assert_eq!(again, Line::Event(event.clone()));
        let ts = event.ts.unwrap();
        let imported = ImportedRecord {
            event,
            first_ts: ts,
            last_ts: ts,
            repeat_count: 4,
            note: None,
        };
        let again = parse_line(
            &Value::Object(imported_record_json(&imported)).to_string(),
            &limits(),
        )
        .unwrap();
        assert_eq!(again, Line::Record(imported));
    }

    #[test]
    fn repeat_counts_are_refused_past_the_largest_exact_number() {
        let line = |count: &str| {
            format!(
                r#"{{"seq":1,"message":"m","kind":"tool","severity":"info","first_ts":"2024-05-01T10:00:00Z","last_ts":"2024-05-01T10:00:00Z","repeat_count":{count},"revision":1}}"#
            )
        };
        let limits = EventLimits::default();
        assert!(parse_record_text(&line("9007199254740991"), &limits).is_ok());
        for count in ["9007199254740992", "18446744073709551615", "0", "1.5", "-1"] {
            let error = parse_record_text(&line(count), &limits).unwrap_err();
            assert_eq!(error.field(), Some("repeat_count"), "{count}");
            assert!(
                error.to_string().contains("from 1 to 9007199254740991"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_pinned_note_travels_on_its_audit_record() {
        let ts = parse_timestamp("2024-05-01T10:00:00.25Z").unwrap();
        let mut event = Event::new("note", Severity::Info, "the repo uses tabs").unwrap();
        event.payload = Some(Payload::number("note_id", 3));
        let record = Record::from_event(event, 4, 9, ts);
        let note = Note {
            id: 3,
            text: "the repo uses tabs".to_owned(),
            created_at: ts,
            expires_at: Some(parse_timestamp("2999-01-01T00:00:00Z").unwrap()),
        };
        let line = note_record_line(&record, &note);
        // The record's own line with `note` added: what an older recap wrote is a prefix.
        let plain = record_line(&record);
        assert!(line.starts_with(&plain[..plain.len() - 1]), "{line}");
        let Line::Record(imported) = parse_line(&line, &limits()).unwrap() else {
            panic!("a record line")
        };
        let expected = ImportedNote {
            created_at: ts,
            expires_at: note.expires_at,
        };
        assert_eq!(imported.note.as_ref(), Some(&expected));
        assert_eq!(imported.event.message, "the repo uses tabs");
        // The object sent to `POST .../records` keeps it.
        let again = parse_line(
            &Value::Object(imported_record_json(&imported)).to_string(),
            &limits(),
        )
        .unwrap();
        assert_eq!(again, Line::Record(imported));
        // Without it, the same record is a plain record.
        let Line::Record(plain) = parse_line(&plain, &limits()).unwrap() else {
            panic!("a record line")
        };
        assert_eq!(plain.note, None);
    }

    #[test]
    fn bad_note_fields_are_named() {
        let record = |kind: &str, note: &str| {
            format!(
                r#"{{"kind": "{kind}", "message": "m", "first_ts": "2024-05-01T10:00:00Z", "last_ts": "2024-05-01T10:00:00Z", "repeat_count": 1, "note": {note}}}"#
            )
        };
        let cases = [
            (
                record("tool", r#"{"created_at": "2024-05-01T10:00:00Z"}"#),
                "note",
            ),
            (record("note", r#"{}"#), "note.created_at"),
            (
                record("note", r#"{"created_at": "soon"}"#),
                "note.created_at",
            ),
            (
                record(
                    "note",
                    r#"{"created_at": "2024-05-01T10:00:00Z", "expires_at": 5}"#,
                ),
                "note.expires_at",
            ),
            (
                record("note", r#"{"created_at": "2024-05-01T10:00:00Z", "id": 1}"#),
                "note",
            ),
            (record("note", "true"), "note"),
        ];
        for (line, field) in cases {
            let error = parse_line(&line, &limits()).unwrap_err();
            assert_eq!(error.field(), Some(field), "{line}: {error}");
        }
    }

    #[test]
    fn bad_lines_name_their_field() {
        let cases = [
            (
                r#"{"kind": "tool", "message": "m", "severity": "loud"}"#,
                "severity",
            ),
            (
                r#"{"kind": "tool", "message": "m", "first_ts": "2024-05-01T10:00:00Z", "last_ts": "2024-05-01T10:00:00Z", "repeat_count": 0}"#,
                "repeat_count",
            ),
            (
                r#"{"kind": "tool", "message": "m", "first_ts": "2024-05-01T10:00:00Z", "repeat_count": 1}"#,
                "last_ts",
            ),
        ];
        for (line, field) in cases {
            let error = parse_line(line, &limits()).unwrap_err();
            assert_eq!(error.field(), Some(field), "{line}: {error}");
        }
        assert!(parse_line("[1]", &limits()).is_err());
        assert!(parse_line("{", &limits()).is_err());
    }
}
