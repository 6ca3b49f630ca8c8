//! `recap events`: a stream's history, with the filters and cursors of
//! `GET /v1/streams/{s}/events`: a page, or every page with `--all`.

use std::io::Write;

use clap::Args;

use crate::client::ClientError;
use crate::client::history::{self, HistoryPage, HistoryQuery};
use crate::event::{Kind, Record, Severity, StreamName, Timestamp};
use crate::render;

use super::args::{self, ServerArgs};
use super::output::{more_pages, write_json};

const EXAMPLES: &str = "\
Examples:
  recap events demo                              # the first 100 records, oldest first
  recap events demo --all                        # every record, following the cursors
  recap events demo --after 200 --limit 50       # the 50 records after seq 200
  recap events demo --before 1000 --limit 20     # the 20 records before seq 1000 (pages go back)
  recap events demo --kinds tool,llm --min-severity warning --since 2024-05-01T10:00:00Z
  recap events demo --all --json | jq .message   # one record per line, as the API sends it

A line is `#SEQ DATE TIME [kind] SEVERITY: message xREPEATS` (the time of the record's latest
event, UTC). When there are more records than one page, stderr says how to get the next.";

/// `recap events`.
#[derive(Args, Clone, Debug)]
#[command(after_help = EXAMPLES)]
pub struct EventsArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream.
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
    /// Records with a seq above this.
    #[arg(long, value_parser = args::cursor, allow_negative_numbers = true, value_name = "SEQ")]
    pub after: Option<u64>,
    /// Records with a seq below this (without --after, pages go backwards from it).
    #[arg(long, value_parser = args::cursor, allow_negative_numbers = true, value_name = "SEQ")]
    pub before: Option<u64>,
    /// Records per page, at most 1000 [default: 100].
    #[arg(long, value_parser = args::count, allow_negative_numbers = true, value_name = "N")]
    pub limit: Option<u64>,
    /// Only these kinds (comma-separated, or repeated).
    #[arg(long, value_delimiter = ',', value_parser = args::kind, value_name = "KINDS")]
    pub kinds: Vec<Kind>,
    /// Only records at least this severe.
    #[arg(long, value_parser = args::SeverityParser, value_name = "SEVERITY")]
    pub min_severity: Option<Severity>,
    /// Only records whose latest event is at or after this time.
    #[arg(long, value_parser = args::timestamp, value_name = "TIME")]
    pub since: Option<Timestamp>,
    /// Only records whose first event is before this time.
    #[arg(long, value_parser = args::timestamp, value_name = "TIME")]
    pub until: Option<Timestamp>,
    /// Follow the cursors through every page.
    #[arg(long)]
    pub all: bool,
    /// One record per line as the API sends it (JSON Lines).
    #[arg(long)]
    pub json: bool,
}

/// Prints the page (or every page); returns how many records were printed.
pub async fn run(args: EventsArgs, out: &mut impl Write) -> Result<usize, ClientError> {
    let client = args.server.connect()?;
    let mut query = HistoryQuery {
        after: args.after,
        before: args.before,
        limit: args.limit,
        kinds: args.kinds.iter().map(|kind| kind.to_string()).collect(),
        min_severity: args.min_severity,
        since: args.since,
        until: args.until,
    };
    let mut printed = 0;
    loop {
        let page = history::page(&client, &args.stream, &query).await?;
        printed += print_page(&page, args.json, out)?;
        if let Some(removed) = page.removed {
            eprintln!(
                "(seqs {}-{} of this range were removed by the stream's retention)",
                removed.from, removed.to
            );
        }
        let Some(next) = query.next_page(page.next) else {
            break;
        };
        if !args.all {
            let (flag, cursor) = match query.is_backwards() {
                true => ("--before", next.before),
                false => ("--after", next.after),
            };
            more_pages(flag, &cursor.unwrap_or_default().to_string());
            break;
        }
        query = next;
    }
    out.flush().map_err(ClientError::Output)?;
    Ok(printed)
}

fn print_page(page: &HistoryPage, json: bool, out: &mut impl Write) -> Result<usize, ClientError> {
    if json {
        for record in &page.records {
            write_json(out, record)?;
        }
    } else {
        for record in page.read_records()? {
            out.write_all(line(&record).as_bytes())
                .map_err(ClientError::Output)?;
        }
    }
    Ok(page.records.len())
}

/// A record as `recap events` shows it: its seq and date before the context's line.
pub fn line(record: &Record) -> String {
    format!(
        "#{} {} {}",
        record.seq,
        record.last_ts.format("%Y-%m-%d"),
        render::record_line(record)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, parse_timestamp};

    #[test]
    fn a_line_has_the_seq_the_date_and_the_context_line() {
        let ts = parse_timestamp("2024-05-01T10:31:44Z").unwrap();
        let event = Event::new("tool", Severity::Error, "search timed out").unwrap();
        let mut record = Record::from_event(event, 7, 9, ts);
        record.repeat_count = 3;
        assert_eq!(
            line(&record),
            "#7 2024-05-01 10:31:44 [tool] ERROR: search timed out x3\n"
        );
    }
}
