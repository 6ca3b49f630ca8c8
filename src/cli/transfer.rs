//! `recap tail`, `recap import` and `recap export`: a stream's changes as they happen, and its
//! records in and out as JSON Lines.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::client::{ClientError, export, import, tail};
use crate::event::StreamName;

use super::args::{self, ServerArgs};

const TAIL_EXAMPLES: &str = "\
Examples:
  recap tail demo                    # changes from now on, one line each, until Ctrl-C
  recap tail demo --after 0          # the stream's changes from its start, then new ones
  recap tail demo --count 10         # stop after ten changes

If the feed drops (a server restart), tail reconnects and resumes after the last revision it
printed, so nothing is missed or printed twice.";

const IMPORT_EXAMPLES: &str = "\
Examples:
  recap import demo events.jsonl               # events, one JSON object a line
  recap import demo ../shared/traces/swe-agent__ctf-crypto-katy.jsonl   # a trace
  recap export demo > demo.jsonl && recap import copy demo.jsonl       # records, notes kept
  recap import demo events.jsonl --skip-invalid

Every line is checked before anything is sent: a bad line fails the import with its line
number, and nothing is written, unless --skip-invalid.";

const EXPORT_EXAMPLES: &str = "\
Examples:
  recap export demo > demo.jsonl       # every record, oldest first, with its pinned notes
  recap export demo | head -5";

/// `recap tail`.
#[derive(Args, Clone, Debug)]
#[command(after_help = TAIL_EXAMPLES)]
pub struct TailArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream.
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
    /// Replay the changes after this revision first [default: from now].
    #[arg(long, value_parser = args::cursor, allow_negative_numbers = true, value_name = "REVISION")]
    pub after: Option<u64>,
    /// Stop after this many changes [default: never].
    #[arg(long, value_parser = args::count, allow_negative_numbers = true, value_name = "N")]
    pub count: Option<u64>,
}

/// `recap import`.
#[derive(Args, Clone, Debug)]
#[command(after_help = IMPORT_EXAMPLES)]
pub struct ImportArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The target stream.
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
    /// The JSONL file: events, trace lines, or an export's records.
    pub file: PathBuf,
    /// Leave invalid lines out (and list them) instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
}

/// `recap export`.
#[derive(Args, Clone, Debug)]
#[command(after_help = EXPORT_EXAMPLES)]
pub struct ExportArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream.
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
}

/// Follows the stream.
pub async fn tail(args: TailArgs, out: &mut impl Write) -> Result<(), ClientError> {
    let client = args.server.connect()?;
    let count = args
        .count
        .map(|count| usize::try_from(count).unwrap_or(usize::MAX));
    tail::tail(&client, &args.stream, args.after, count, out).await?;
    Ok(())
}

/// Imports the file; the summary goes to stderr.
pub async fn import(args: ImportArgs) -> Result<(), ClientError> {
    let client = args.server.connect()?;
    let options = import::ImportOptions {
        skip_invalid: args.skip_invalid,
        progress: true,
    };
    let summary = import::import(&client, &args.stream, &args.file, options).await?;
    for (line, problem) in &summary.skipped {
        eprintln!("skipped line {line}: {problem}");
    }
    let what = if summary.records_format {
        "records"
    } else {
        "events"
    };
    eprintln!(
        "imported {} {what} into {}: {} new records, {} collapsed repeats, {} lines skipped; revision {}",
        summary.lines,
        args.stream,
        summary.new_records,
        summary.collapsed,
        summary.skipped.len(),
        summary.revision
    );
    Ok(())
}

/// Writes the records to `out`; the summary goes to stderr.
pub async fn export(args: ExportArgs, out: &mut impl Write) -> Result<(), ClientError> {
    let client = args.server.connect()?;
    let summary = export::export(&client, &args.stream, out).await?;
    eprintln!(
        "exported {} records ({} with a pinned note) from {}",
        summary.records, summary.notes, args.stream
    );
    for note in &summary.notes_left_out {
        eprintln!(
            "note {} was not exported: its audit record is no longer stored (retention removed it, or the same note added again right after it took over its record); add it again after importing: {:?}",
            note.id, note.text
        );
    }
    Ok(())
}
