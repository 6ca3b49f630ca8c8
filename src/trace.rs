//! Reading agent traces: JSONL files of events, one per line, in the format of the shared trace
//! set (`stream`, `ts`, `kind`, `severity`, `message`, `actor`, `step_id`, `source`).
//!
//! `stream` names the trace (the file's stream) and `source` says where the original came from;
//! neither is an event field. `stream` becomes [`Trace::name`]; `source` is kept in the event's
//! payload under `"source"` so nothing in the file is lost.

use std::fs;
use std::path::Path;

use serde_json::{Map, Value};

use crate::event::{Event, EventError, EventInput, EventLimits};

/// The payload key that keeps a trace line's `source`.
pub const SOURCE_PAYLOAD_KEY: &str = "source";

/// One trace: its name and its events, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// The `stream` of its lines (the file stem when lines carry none).
    pub name: String,
    /// The events, each with the `ts` of its line when it had one.
    pub events: Vec<Event>,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a valid event.
    #[error("{path}:{line}: {source}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        source: EventError,
    },
}

/// Parses one line of a trace into its stream name (if any) and event.
pub fn parse_line(line: &str, limits: &EventLimits) -> Result<(Option<String>, Event), EventError> {
    let value: Value = serde_json::from_str(line).map_err(|error| EventError::Json {
        field: None,
        detail: error.to_string(),
    })?;
    let Value::Object(mut fields) = value else {
        return EventInput::from_value(value)
            .and_then(|input| input.validate(limits))
            .map(|event| (None, event));
    };
    let stream = match fields.remove("stream") {
        Some(Value::String(stream)) => Some(stream),
        Some(other) => {
            return Err(EventError::Json {
                field: Some("stream".into()),
                detail: format!("expected a string, found {other}"),
            });
        }
        None => None,
    };
    if let Some(source) = fields.remove(SOURCE_PAYLOAD_KEY) {
        let payload = fields
            .entry("payload")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(payload) = payload {
            payload.entry(SOURCE_PAYLOAD_KEY).or_insert(source);
        }
    }
    let event = EventInput::from_value(Value::Object(fields))?.validate(limits)?;
    Ok((stream, event))
}

/// Reads a whole trace file. Blank lines are skipped; the first bad line fails the read with
/// its line number.
pub fn read_trace(path: &Path) -> Result<Trace, TraceError> {
    let display = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|source| TraceError::Io {
        path: display.clone(),
        source,
    })?;
    let limits = EventLimits {
        // Traces hold whole pages and source files; the replay takes them as they are.
        max_message_bytes: usize::MAX,
    };
    let mut name = None;
    let mut events = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (stream, event) = parse_line(line, &limits).map_err(|source| TraceError::Line {
            path: display.clone(),
            line: index + 1,
            source,
        })?;
        if name.is_none() {
            name = stream;
        }
        events.push(event);
    }
    let name = name.unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    Ok(Trace { name, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_keep_stream_and_source() {
        let line = r#"{"stream": "chatdev/x", "ts": "2023-10-26T17:52:02.000001Z", "kind": "retry", "severity": "warning", "message": "m", "actor": "Programmer", "step_id": "s", "source": "OpenBMB/ChatDev/x.log"}"#;
        let (stream, event) = parse_line(line, &EventLimits::default()).unwrap();
        assert_eq!(stream.as_deref(), Some("chatdev/x"));
        assert_eq!(event.kind.as_str(), "retry");
        assert_eq!(
            event.payload.unwrap().to_object()["source"],
            "OpenBMB/ChatDev/x.log"
        );
        let bad = r#"{"kind": "retry", "severity": "loud", "message": "m"}"#;
        assert_eq!(
            parse_line(bad, &EventLimits::default())
                .unwrap_err()
                .field(),
            Some("severity")
        );
    }
}
