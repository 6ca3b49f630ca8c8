//! `recap streams list|show|rm`, and `recap retention`, which sets what `show` reports.

use std::io::Write;

use clap::{ArgGroup, Args, Subcommand};

use crate::client::ClientError;
use crate::client::streams::{self, RetentionInfo, StreamInfo, StreamQuery};
use crate::event::StreamName;

use super::args::{self, ServerArgs, format_duration};
use super::output::{Output, more_pages, write_json};

const EXAMPLES: &str = "\
Examples:
  recap streams list                      # name, records, events, notes, revision, latest event
  recap streams list --prefix team-a. --all
  recap streams show demo                 # one stream's totals by kind and severity, its retention
  recap streams show demo --json
  recap streams rm demo                   # deletes its records and notes (needs the admin scope)";

/// `recap streams`.
#[derive(Subcommand, Clone, Debug)]
pub enum StreamsCommand {
    /// List the streams the key may see, by name, with their totals.
    #[command(after_help = EXAMPLES)]
    List(ListArgs),
    /// Show one stream's totals, by kind and severity, and its retention.
    #[command(after_help = EXAMPLES)]
    Show(ShowArgs),
    /// Delete a stream with its records and notes.
    #[command(after_help = EXAMPLES)]
    Rm(RmArgs),
}

/// `recap streams list`.
#[derive(Args, Clone, Debug)]
pub struct ListArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Only streams whose names start with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Streams named after this one (a page's cursor).
    #[arg(long, value_name = "NAME")]
    pub after: Option<String>,
    /// Streams per page, at most 1000 [default: 1000].
    #[arg(long, value_parser = args::count, allow_negative_numbers = true, value_name = "N")]
    pub limit: Option<u64>,
    /// Follow the cursors through every page.
    #[arg(long)]
    pub all: bool,
    /// One stream per line as the API sends it (JSON Lines).
    #[arg(long)]
    pub json: bool,
}

/// `recap streams show`.
#[derive(Args, Clone, Debug)]
pub struct ShowArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream.
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
    /// Print the stats as JSON, as the API sends them.
    #[arg(long)]
    pub json: bool,
}

/// `recap streams rm`.
#[derive(Args, Clone, Debug)]
pub struct RmArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream.
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
}

const RETENTION_EXAMPLES: &str = "\
Examples:
  recap retention demo --max-records 10000
  recap retention demo --max-age 7d                     # s, m, h, d or w; a number is seconds
  recap retention demo --max-records 10000 --max-age 30d
  recap retention demo --clear                          # keep everything

Sets both limits at once: a limit left out is removed. Removed records still count in the
stream's totals and the context's Earlier line. Needs the admin scope.";

/// `recap retention`.
#[derive(Args, Clone, Debug)]
#[command(after_help = RETENTION_EXAMPLES)]
#[command(group(ArgGroup::new("limits").required(true).multiple(true).args(["max_records", "max_age", "clear"])))]
pub struct RetentionArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream.
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
    /// Keep at most this many records.
    #[arg(long, value_parser = args::count, allow_negative_numbers = true, value_name = "N")]
    pub max_records: Option<u64>,
    /// Remove records whose latest event is older than this (3600, 90m, 12h, 7d, 2w).
    #[arg(long, value_parser = args::duration_seconds, allow_negative_numbers = true, value_name = "AGE")]
    pub max_age: Option<i64>,
    /// Remove both limits.
    #[arg(long, conflicts_with_all = ["max_records", "max_age"])]
    pub clear: bool,
    /// Print the retention now in force as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a streams command.
pub async fn run(command: StreamsCommand, out: &mut impl Write) -> Result<(), ClientError> {
    match command {
        StreamsCommand::List(args) => list(args, out).await,
        StreamsCommand::Show(args) => {
            let client = args.server.connect()?;
            let stats = streams::show(&client, &args.stream).await?;
            if args.json {
                return write_json(out, &stats);
            }
            let info = streams::read_info(&stats)?;
            out.write_all(describe(&info).as_bytes())
                .map_err(ClientError::Output)
        }
        StreamsCommand::Rm(args) => {
            let client = args.server.connect()?;
            streams::delete(&client, &args.stream).await?;
            out.line(format_args!("deleted stream {}", args.stream))
        }
    }
}

/// Sets the retention; prints the one now in force.
pub async fn retention(args: RetentionArgs, out: &mut impl Write) -> Result<(), ClientError> {
    let client = args.server.connect()?;
    let retention = RetentionInfo {
        max_records: args.max_records,
        max_age_seconds: args.max_age,
    };
    let answer = streams::set_retention(&client, &args.stream, retention).await?;
    if args.json {
        return write_json(out, &answer);
    }
    let retention: RetentionInfo = serde_json::from_str(answer.get())
        .map_err(|error| ClientError::Protocol(format!("a retention: {error}")))?;
    out.line(format_args!(
        "retention of {}: {}",
        args.stream,
        describe_retention(&retention)
    ))
}

async fn list(args: ListArgs, out: &mut impl Write) -> Result<(), ClientError> {
    let client = args.server.connect()?;
    let mut query = StreamQuery {
        after: args.after,
        limit: args.limit,
        prefix: args.prefix,
    };
    let mut header = !args.json;
    loop {
        let page = streams::page(&client, &query).await?;
        if args.json {
            for raw in &page.streams {
                write_json(out, raw)?;
            }
        } else {
            let infos = page
                .streams
                .iter()
                .map(|raw| streams::read_info(raw))
                .collect::<Result<Vec<_>, _>>()?;
            if !infos.is_empty() {
                out.write_all(table(&infos, header).as_bytes())
                    .map_err(ClientError::Output)?;
                header = false;
            }
        }
        let next = page
            .next
            .filter(|next| query.after.as_ref().is_none_or(|after| next > after));
        match next {
            Some(next) if args.all => query.after = Some(next),
            Some(next) => {
                more_pages("--after", &next);
                break;
            }
            None => break,
        }
    }
    if header && !args.json {
        eprintln!("(no streams)");
    }
    out.flush().map_err(ClientError::Output)
}

/// The list as a table: one stream a line, columns aligned, with a header line when `header`.
pub fn table(streams: &[StreamInfo], header: bool) -> String {
    let rows: Vec<[String; 6]> = streams
        .iter()
        .map(|info| {
            [
                info.name.clone(),
                info.records.to_string(),
                info.events.to_string(),
                info.notes.to_string(),
                info.revision.to_string(),
                info.last_ts.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    let titles = [
        "NAME",
        "RECORDS",
        "EVENTS",
        "NOTES",
        "REVISION",
        "LATEST EVENT",
    ]
    .map(String::from);
    let shown: Vec<&[String; 6]> = header.then_some(&titles).into_iter().chain(&rows).collect();
    let mut widths = [0; 6];
    for row in &shown {
        for (width, cell) in widths.iter_mut().zip(row.iter()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in shown {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(column, (cell, width))| match column {
                // Names and times read from the left, counts from the right.
                0 | 5 => format!("{cell:<width$}"),
                _ => format!("{cell:>width$}"),
            })
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// One stream's stats, a field a line.
pub fn describe(info: &StreamInfo) -> String {
    let counts = |map: &std::collections::BTreeMap<String, u64>| {
        if map.is_empty() {
            return "-".to_owned();
        }
        map.iter()
            .map(|(name, count)| format!("{name}={count}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let removed = info.records.saturating_sub(info.stored_records);
    let fields = [
        ("stream", info.name.clone()),
        (
            "records",
            match removed {
                0 => info.records.to_string(),
                _ => format!(
                    "{} ({} stored, {removed} removed by retention)",
                    info.records, info.stored_records
                ),
            },
        ),
        ("events", info.events.to_string()),
        ("notes", info.notes.to_string()),
        ("revision", info.revision.to_string()),
        (
            "first event",
            info.first_ts.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "latest event",
            info.last_ts.clone().unwrap_or_else(|| "-".into()),
        ),
        ("kinds", counts(&info.kinds)),
        ("severities", counts(&info.severities)),
        ("retention", describe_retention(&info.retention)),
    ];
    fields
        .iter()
        .map(|(name, value)| format!("{name:<13}{value}\n"))
        .collect()
}

/// A retention in words.
pub fn describe_retention(retention: &RetentionInfo) -> String {
    match (retention.max_records, retention.max_age_seconds) {
        (None, None) => "none (every record is kept)".to_owned(),
        (Some(records), None) => format!("at most {records} records"),
        (None, Some(age)) => format!("records older than {} are removed", format_duration(age)),
        (Some(records), Some(age)) => format!(
            "at most {records} records, none older than {}",
            format_duration(age)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, records: u64) -> StreamInfo {
        StreamInfo {
            name: name.to_owned(),
            records,
            stored_records: records,
            events: records * 2,
            revision: records * 2,
            first_ts: None,
            last_ts: Some("2024-05-01T10:31:44.000000Z".into()),
            kinds: [("tool".to_owned(), records * 2)].into(),
            severities: [("info".to_owned(), records * 2)].into(),
            notes: 0,
            retention: RetentionInfo::default(),
        }
    }

    #[test]
    fn a_table_aligns_its_columns() {
        let text = table(&[info("demo", 3), info("a-longer-name", 1200)], true);
        assert_eq!(
            text,
            "\
NAME           RECORDS  EVENTS  NOTES  REVISION  LATEST EVENT
demo                 3       6      0         6  2024-05-01T10:31:44.000000Z
a-longer-name     1200    2400      0      2400  2024-05-01T10:31:44.000000Z
"
        );
    }

    #[test]
    fn show_says_removed_records_and_retention_in_words() {
        let mut stream = info("demo", 10);
        stream.stored_records = 4;
        stream.retention = RetentionInfo {
            max_records: Some(4),
            max_age_seconds: Some(7 * 86_400),
        };
        let text = describe(&stream);
        assert!(
            text.contains("records      10 (4 stored, 6 removed by retention)\n"),
            "{text}"
        );
        assert!(
            text.contains("retention    at most 4 records, none older than 1w\n"),
            "{text}"
        );
        assert!(text.contains("first event  -\n"), "{text}");
    }
}
