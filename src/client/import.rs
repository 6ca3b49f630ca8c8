//! `recap import STREAM FILE.jsonl`: checks the whole file, then sends it in batches.
//!
//! The file is either events (the shared trace format, or events as clients post them) or
//! records as `recap export` writes them; see [`crate::jsonl`]. Every line is checked before
//! anything is sent: a bad line (including one that is not UTF-8) fails the import with its line
//! number and nothing is written, unless `skip_invalid` is set, in which case bad lines are
//! reported and left out. Events go to `POST .../events` (repeats collapse, as if posted live);
//! exported records go to `POST .../records` (kept as they were, so export → import → export
//! gives the same records, and pinned notes come back as notes).
//!
//! The checks use recap's default limits; a server configured with stricter ones can still refuse
//! a line. Each batch is all-or-nothing, but batches before it stay written: the error names the
//! line by its number in the file and says how many lines were written. A batch over the
//! server's body cap (413) is split in halves and sent again, down to a single line, and later
//! batches stay that small.

use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;
use http::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::event::{EventLimits, StreamName};
use crate::jsonl::{self, Line};

use super::commands::WriteAnswer;
use super::{Client, ClientError};

/// Most bytes in one batch: half the server's default body cap, so any default server takes it.
pub const BATCH_MAX_BYTES: usize = 512 * 1024;
/// Most lines in one batch.
pub const BATCH_MAX_LINES: usize = 1_000;
/// Invalid lines listed in an error (the count says how many more).
const LISTED_INVALID_LINES: usize = 10;

/// How to import.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// Leave bad lines out (and report them) instead of failing.
    pub skip_invalid: bool,
    /// Draw a progress bar on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Lines written.
    pub lines: usize,
    /// Invalid lines left out (with `skip_invalid`), with their numbers and problems.
    pub skipped: Vec<(usize, String)>,
    /// Whether the file held exported records (rather than events).
    pub records_format: bool,
    /// Records created in the target stream.
    pub new_records: usize,
    /// Events that collapsed into an existing record.
    pub collapsed: usize,
    /// The stream revision after the import.
    pub revision: u64,
}

/// A checked file: the lines to send and what was left out.
struct Checked {
    /// The lines to send, in file order.
    lines: Vec<WireLine>,
    /// Whether they are exported records (rather than events).
    records_format: bool,
    /// Invalid lines, with their numbers and problems.
    invalid: Vec<(usize, String)>,
}

/// One valid line, as it is sent.
struct WireLine {
    /// Its line number in the file (from 1).
    number: usize,
    /// The JSON object the route takes, on one line.
    json: String,
}

/// Imports `path` into `stream`.
pub async fn import(
    client: &Client,
    stream: &StreamName,
    path: &Path,
    options: ImportOptions,
) -> Result<ImportSummary, ClientError> {
    let bytes = std::fs::read(path).map_err(|source| ClientError::Io {
        path: path.to_owned(),
        source,
    })?;
    let checked = check_file(path, &bytes, options.skip_invalid)?;
    let lines = checked.lines;
    let total = lines.len();
    let bar = if options.progress {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} importing [{bar:40}] {pos}/{len} lines ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let route = if checked.records_format {
        "records"
    } else {
        "events"
    };
    let mut summary = ImportSummary {
        skipped: checked.invalid,
        records_format: checked.records_format,
        ..ImportSummary::default()
    };
    let mut limits = BatchLimits {
        lines: BATCH_MAX_LINES,
        bytes: BATCH_MAX_BYTES,
    };
    let mut start = 0;
    while start < total {
        let batch = next_batch(&lines[start..], limits);
        let sent = &lines[start..start + batch.lines];
        let result: Result<WriteAnswer, ClientError> = client
            .json(
                Method::POST,
                &format!("/v1/streams/{stream}/{route}"),
                Some(("application/x-ndjson", Bytes::from(batch.body))),
            )
            .await;
        let answer = match result {
            Ok(answer) => answer,
            // Over the server's body cap: halve the batch and send again (later batches stay
            // that small); a single line over the cap is an error that names it.
            Err(ClientError::Api { status, .. })
                if status == StatusCode::PAYLOAD_TOO_LARGE && batch.lines > 1 =>
            {
                limits = BatchLimits {
                    lines: batch.lines / 2,
                    bytes: batch.bytes / 2,
                };
                continue;
            }
            Err(error) => {
                bar.finish_and_clear();
                return Err(ClientError::ImportStopped {
                    written: summary.lines,
                    total,
                    source: Box::new(in_file_terms(error, sent)),
                });
            }
        };
        start += batch.lines;
        summary.lines += batch.lines;
        summary.collapsed += answer.records.iter().filter(|r| r.collapsed).count();
        summary.new_records += answer.records.iter().filter(|r| !r.collapsed).count();
        summary.revision = summary.revision.max(answer.revision);
        bar.inc(batch.lines as u64);
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// Restates a refused batch's error in terms of the file: the server names an event by its
/// place in the request (`event 199 (line 200): ...`), which is not where it is in the file.
fn in_file_terms(error: ClientError, sent: &[WireLine]) -> ClientError {
    match error {
        ClientError::Api { status, .. }
            if status == StatusCode::PAYLOAD_TOO_LARGE && sent.len() == 1 =>
        {
            ClientError::LineTooLarge {
                line: sent[0].number,
                bytes: sent[0].json.len() + 1,
                status,
            }
        }
        ClientError::Api {
            status,
            code,
            message,
            field,
            index: Some(index),
        } if index < sent.len() => ClientError::LineRefused {
            line: sent[index].number,
            source: Box::new(ClientError::Api {
                status,
                code,
                message: without_batch_position(&message, index).to_owned(),
                field,
                index: None,
            }),
        },
        other => other,
    }
}

/// The server's message without its `event N (line M): ` or `event N: ` prefix.
fn without_batch_position(message: &str, index: usize) -> &str {
    let Some(rest) = message.strip_prefix(&format!("event {index}")) else {
        return message;
    };
    let rest = match rest.strip_prefix(" (line ") {
        Some(line) => match line.split_once(')') {
            Some((number, rest)) if number.bytes().all(|b| b.is_ascii_digit()) => rest,
            _ => return message,
        },
        None => rest,
    };
    rest.strip_prefix(": ").unwrap_or(message)
}

/// Parses every line: the wire lines to send, whether they are records, and the invalid lines.
fn check_file(path: &Path, bytes: &[u8], skip_invalid: bool) -> Result<Checked, ClientError> {
    let limits = EventLimits::default();
    let mut lines = Vec::new();
    let mut invalid = Vec::new();
    let mut format: Option<(bool, usize)> = None;
    // Split on bytes, so that a line that is not UTF-8 is a bad line like any other.
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = match std::str::from_utf8(raw) {
            Ok(line) => line,
            Err(error) => {
                invalid.push((
                    number,
                    format!(
                        "not valid UTF-8 (at byte {} of the line); lines must be UTF-8 JSON",
                        error.valid_up_to() + 1
                    ),
                ));
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let parsed = match jsonl::parse_line(line, &limits) {
            Ok(parsed) => parsed,
            Err(error) => {
                invalid.push((number, error.to_string()));
                continue;
            }
        };
        let is_record = matches!(parsed, Line::Record(_));
        match format {
            None => format = Some((is_record, number)),
            Some((records, first)) if records != is_record => {
                let (this, that) = if is_record {
                    ("an exported record", "events")
                } else {
                    ("an event", "exported records")
                };
                invalid.push((number, format!("this line is {this}, but the file holds {that} (see line {first}); a file is either an export or events")));
                continue;
            }
            Some(_) => {}
        }
        let object = match parsed {
            Line::Event(event) => jsonl::event_json(&event),
            Line::Record(record) => jsonl::imported_record_json(&record),
        };
        lines.push(WireLine {
            number,
            json: Value::Object(object).to_string(),
        });
    }
    if !invalid.is_empty() && !skip_invalid {
        let mut listing = String::new();
        for (number, problem) in invalid.iter().take(LISTED_INVALID_LINES) {
            let _ = writeln!(listing, "  line {number}: {problem}");
        }
        if invalid.len() > LISTED_INVALID_LINES {
            let _ = writeln!(
                listing,
                "  ... and {} more",
                invalid.len() - LISTED_INVALID_LINES
            );
        }
        return Err(ClientError::InvalidLines {
            path: path.to_owned(),
            count: invalid.len(),
            listing: listing.trim_end().to_owned(),
        });
    }
    Ok(Checked {
        lines,
        records_format: format.is_some_and(|(records, _)| records),
        invalid,
    })
}

/// How large a batch may be.
#[derive(Clone, Copy, Debug)]
struct BatchLimits {
    lines: usize,
    bytes: usize,
}

/// One request's worth of lines.
struct Batch {
    /// The NDJSON body.
    body: String,
    /// How many lines it holds (at least one).
    lines: usize,
    /// Its size, before the body is handed over.
    bytes: usize,
}

/// The next batch from the front of `lines` (not empty) under `limits`: as many lines as fit,
/// and always at least one (a line larger than the byte limit goes alone; the server says if it
/// is over its cap).
fn next_batch(lines: &[WireLine], limits: BatchLimits) -> Batch {
    let mut body = String::new();
    let mut count = 0;
    for line in lines {
        if count > 0 && (count >= limits.lines || body.len() + line.json.len() + 1 > limits.bytes) {
            break;
        }
        body.push_str(&line.json);
        body.push('\n');
        count += 1;
    }
    Batch {
        bytes: body.len(),
        body,
        lines: count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &[u8], skip_invalid: bool) -> Result<Checked, String> {
        check_file(Path::new("f.jsonl"), text, skip_invalid).map_err(|error| error.to_string())
    }

    #[test]
    fn a_bad_line_fails_the_whole_file_with_its_number() {
        let text = b"{\"kind\": \"tool\", \"message\": \"a\"}\n\n{\"kind\": \"tool\", \"message\": \"b\", \"severity\": \"loud\"}\n";
        let error = check(text, false).err().unwrap();
        assert!(error.contains("line 3: field `severity`"), "{error}");
        assert!(error.contains("nothing was imported"), "{error}");
        let checked = check(text, true).unwrap();
        assert_eq!(
            (
                checked.lines.len(),
                checked.records_format,
                checked.invalid.len()
            ),
            (1, false, 1)
        );
        assert_eq!(checked.lines[0].number, 1);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_a_bad_line_with_its_number() {
        let text = b"{\"kind\": \"tool\", \"message\": \"a\"}\r\n{\"kind\": \"tool\", \"message\": \"\xff\xfe\"}\n{\"kind\": \"tool\", \"message\": \"c\"}";
        let error = check(text, false).err().unwrap();
        assert!(error.contains("line 2: not valid UTF-8"), "{error}");
        let checked = check(text, true).unwrap();
        let numbers: Vec<usize> = checked.lines.iter().map(|l| l.number).collect();
        assert_eq!(numbers, [1, 3]);
        assert_eq!(checked.invalid[0].0, 2);
    }

    #[test]
    fn a_file_is_events_or_records_not_both() {
        let text = b"{\"kind\": \"tool\", \"message\": \"a\"}\n{\"kind\": \"tool\", \"message\": \"b\", \"first_ts\": \"2024-05-01T10:00:00Z\", \"last_ts\": \"2024-05-01T10:00:00Z\", \"repeat_count\": 1}\n";
        let error = check(text, false).err().unwrap();
        assert!(
            error.contains("line 2: this line is an exported record"),
            "{error}"
        );
    }

    fn wire(count: usize, message_bytes: usize) -> Vec<WireLine> {
        (0..count)
            .map(|index| WireLine {
                number: index + 1,
                json: format!(
                    "{{\"kind\":\"tool\",\"message\":\"{}\"}}",
                    "x".repeat(message_bytes)
                ),
            })
            .collect()
    }

    fn batch_sizes(lines: &[WireLine], limits: BatchLimits) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut start = 0;
        while start < lines.len() {
            let batch = next_batch(&lines[start..], limits);
            assert_eq!(batch.bytes, batch.body.len());
            assert_eq!(batch.body.lines().count(), batch.lines);
            sizes.push(batch.lines);
            start += batch.lines;
        }
        sizes
    }

    #[test]
    fn batches_respect_both_limits() {
        let defaults = BatchLimits {
            lines: BATCH_MAX_LINES,
            bytes: BATCH_MAX_BYTES,
        };
        assert_eq!(batch_sizes(&wire(2_500, 1), defaults), [1000, 1000, 500]);
        assert_eq!(batch_sizes(&wire(3, 300 * 1024), defaults), [1, 1, 1]);
        let halved = BatchLimits {
            lines: 500,
            bytes: 1_000,
        };
        // Each line is 29 bytes and its newline: 33 lines fill 990 bytes.
        assert_eq!(batch_sizes(&wire(40, 1), halved), [33, 7]);
    }

    #[test]
    fn refusals_name_the_line_in_the_file() {
        let sent: Vec<WireLine> = wire(300, 1)
            .into_iter()
            .map(|mut line| {
                line.number += 1_000;
                line
            })
            .collect();
        let refused = ClientError::Api {
            status: StatusCode::BAD_REQUEST,
            code: "too_long".into(),
            message: "event 199 (line 200): field `message` is 2000 bytes".into(),
            field: Some("message".into()),
            index: Some(199),
        };
        let error = in_file_terms(refused, &sent).to_string();
        assert!(
            error.starts_with("line 1200: the server answered 400")
                && error.contains(": field `message` is 2000 bytes")
                && !error.contains("event 199"),
            "{error}"
        );
        assert_eq!(without_batch_position("event 3: bad", 3), "bad");
        assert_eq!(without_batch_position("event 3 (line 4): bad", 3), "bad");
        assert_eq!(without_batch_position("event 31: bad", 3), "event 31: bad");
        let too_large = ClientError::Api {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large".into(),
            message: "over".into(),
            field: None,
            index: None,
        };
        let error = in_file_terms(too_large, &sent[5..6]).to_string();
        assert!(error.starts_with("line 1006 is 30 bytes"), "{error}");
    }
}
