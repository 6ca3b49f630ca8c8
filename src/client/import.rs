//! `recap import STREAM FILE.jsonl`: checks the whole file, then sends it in batches.
//!
//! The file is either events (the shared trace format, or events as clients post them) or
//! records as `recap export` writes them; see [`crate::jsonl`]. Every line is checked before
//! anything is sent: a bad line fails the import with its line number and nothing is written,
//! unless `skip_invalid` is set, in which case bad lines are reported and left out. Events go to
//! `POST .../events` (repeats collapse, as if posted live); exported records go to
//! `POST .../records` (kept as they were, so export → import → export gives the same records).
//! Each batch is all-or-nothing; if the server refuses one part way, the error says how much was
//! written.

use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;
use http::Method;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

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

/// Imports `path` into `stream`.
pub async fn import(
    client: &Client,
    stream: &StreamName,
    path: &Path,
    options: ImportOptions,
) -> Result<ImportSummary, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientError::Io {
        path: path.to_owned(),
        source,
    })?;
    let (objects, records_format, skipped) = check_file(path, &text, options.skip_invalid)?;
    let total = objects.len();
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
    let route = if records_format { "records" } else { "events" };
    let mut summary = ImportSummary {
        skipped,
        records_format,
        ..ImportSummary::default()
    };
    for batch in batches(&objects) {
        let answer: WriteAnswer = client
            .json(
                Method::POST,
                &format!("/v1/streams/{stream}/{route}"),
                Some(("application/x-ndjson", Bytes::from(batch.body))),
            )
            .await
            .map_err(|source| ClientError::ImportStopped {
                written: summary.lines,
                total,
                source: Box::new(source),
            })?;
        summary.lines += batch.lines;
        summary.collapsed += answer.records.iter().filter(|r| r.collapsed).count();
        summary.new_records += answer.records.iter().filter(|r| !r.collapsed).count();
        summary.revision = summary.revision.max(answer.revision);
        bar.inc(batch.lines as u64);
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// Parses every line: the wire objects to send, whether they are records, and the skipped lines.
#[allow(clippy::type_complexity)]
fn check_file(
    path: &Path,
    text: &str,
    skip_invalid: bool,
) -> Result<(Vec<Map<String, Value>>, bool, Vec<(usize, String)>), ClientError> {
    let limits = EventLimits::default();
    let mut objects = Vec::new();
    let mut invalid = Vec::new();
    let mut format: Option<(bool, usize)> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
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
        objects.push(match parsed {
            Line::Event(event) => jsonl::event_json(&event),
            Line::Record(record) => jsonl::imported_record_json(&record),
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
    Ok((objects, format.is_some_and(|(records, _)| records), invalid))
}

/// One request's worth of lines.
struct Batch {
    body: String,
    lines: usize,
}

/// Groups objects into NDJSON bodies under the batch limits (an object larger than the byte
/// limit goes alone; the server says if it is over its cap).
fn batches(objects: &[Map<String, Value>]) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut current = Batch {
        body: String::new(),
        lines: 0,
    };
    for object in objects {
        let line = Value::Object(object.clone()).to_string();
        if current.lines > 0
            && (current.lines == BATCH_MAX_LINES
                || current.body.len() + line.len() + 1 > BATCH_MAX_BYTES)
        {
            batches.push(std::mem::replace(
                &mut current,
                Batch {
                    body: String::new(),
                    lines: 0,
                },
            ));
        }
        current.body.push_str(&line);
        current.body.push('\n');
        current.lines += 1;
    }
    if current.lines > 0 {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_line_fails_the_whole_file_with_its_number() {
        let text = "{\"kind\": \"tool\", \"message\": \"a\"}\n\n{\"kind\": \"tool\", \"message\": \"b\", \"severity\": \"loud\"}\n";
        let error = check_file(Path::new("f.jsonl"), text, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 3: field `severity`"), "{error}");
        assert!(error.contains("nothing was imported"), "{error}");
        let (objects, records, skipped) = check_file(Path::new("f.jsonl"), text, true).unwrap();
        assert_eq!((objects.len(), records, skipped.len()), (1, false, 1));
    }

    #[test]
    fn a_file_is_events_or_records_not_both() {
        let text = "{\"kind\": \"tool\", \"message\": \"a\"}\n{\"kind\": \"tool\", \"message\": \"b\", \"first_ts\": \"2024-05-01T10:00:00Z\", \"last_ts\": \"2024-05-01T10:00:00Z\", \"repeat_count\": 1}\n";
        let error = check_file(Path::new("f.jsonl"), text, false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 2: this line is an exported record"),
            "{error}"
        );
    }

    #[test]
    fn batches_respect_both_limits() {
        let small: Map<String, Value> =
            serde_json::from_str("{\"kind\": \"tool\", \"message\": \"a\"}").unwrap();
        assert_eq!(
            batches(&vec![small; 2_500])
                .iter()
                .map(|b| b.lines)
                .collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        let mut big = Map::new();
        big.insert("message".into(), Value::from("x".repeat(300 * 1024)));
        assert_eq!(batches(&vec![big; 3]).len(), 3);
    }
}
