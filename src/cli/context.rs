//! `recap context`: a stream's context window, with every query parameter of
//! `GET /v1/streams/{s}/context`.
//!
//! The server answers a stream it does not know with an empty window (an agent's first turn has
//! no history, and that is not an error for it); a person who typed the name wants to hear that
//! there is no such stream, so an empty window of revision 0 is checked against the stream's
//! stats.

use std::io::Write;

use clap::{Args, ValueEnum};

use crate::client::{ClientError, commands, streams};
use crate::event::{Kind, Severity, StreamName, Timestamp};

use super::args::{self, ServerArgs};
use super::output::Output;

const EXAMPLES: &str = "\
Examples:
  recap context demo                          # 2000 tokens of cl100k_base, as text
  recap context demo --budget 500 --model gpt-4o
  recap context demo --json                   # the JSON form, with the budget receipt
  recap context demo --kinds tool,error --min-severity warning --since 2024-05-01T10:00:00Z
  recap context demo --weights kind.plan=20,severity.warning=3,half_life=32 --line-cap 60
  recap context demo --goals 0                # no pinned task/user goal records

The text goes to stdout and its token count to stderr. A stream that does not exist is an
error (exit 1).";

/// The two forms of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The text an agent pastes into its prompt.
    Text,
    /// The window with its budget receipt (every candidate record, its level and why).
    Json,
}

/// `recap context`.
#[derive(Args, Clone, Debug)]
#[command(after_help = EXAMPLES)]
pub struct ContextArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream.
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
    /// Token budget: the window never takes more [default: 2000, the server's].
    #[arg(long, value_parser = args::budget, allow_negative_numbers = true, value_name = "TOKENS")]
    pub budget: Option<u32>,
    /// Encoding the budget is counted in: cl100k_base or o200k_base [default: cl100k_base].
    #[arg(long, conflicts_with = "model")]
    pub encoding: Option<String>,
    /// Model name, mapped to its encoding the way tiktoken maps it (gpt-4o: o200k_base).
    #[arg(long)]
    pub model: Option<String>,
    /// Output form.
    #[arg(long, value_enum, default_value_t = Format::Text, conflicts_with = "json")]
    pub format: Format,
    /// The JSON form with the budget receipt (the same as --format json).
    #[arg(long)]
    pub json: bool,
    /// Only records of these kinds compete (comma-separated, or repeated).
    #[arg(long, value_delimiter = ',', value_parser = args::kind, value_name = "KINDS")]
    pub kinds: Vec<Kind>,
    /// Only records at least this severe compete.
    #[arg(long, value_parser = args::SeverityParser, value_name = "SEVERITY")]
    pub min_severity: Option<Severity>,
    /// Only records whose latest event is at or after this time compete.
    #[arg(long, value_parser = args::timestamp, value_name = "TIME")]
    pub since: Option<Timestamp>,
    /// Weight overrides: kind.NAME=W, severity.NAME=W, half_life=RECORDS, newest_kept=N,
    /// comma-separated.
    #[arg(long, value_name = "SPEC")]
    pub weights: Option<String>,
    /// Most tokens one record's line shows whole [default: an eighth of the budget, at least
    /// 32].
    #[arg(long, value_parser = args::count, allow_negative_numbers = true, value_name = "TOKENS")]
    pub line_cap: Option<u64>,
    /// How many of the stream's opening task/user records to keep in view, 0 to 4 [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=4), allow_negative_numbers = true, value_name = "N")]
    pub goals: Option<u32>,
}

/// Prints the window (text or JSON on stdout, the token count on stderr).
pub async fn run(args: ContextArgs, out: &mut impl Write) -> Result<(), ClientError> {
    let client = args.server.connect()?;
    let json = args.json || args.format == Format::Json;
    let request = commands::ContextArgs {
        budget: args.budget,
        encoding: args.encoding,
        model: args.model,
        json,
        kinds: args.kinds.iter().map(|kind| kind.to_string()).collect(),
        min_severity: args.min_severity,
        since: args.since,
        weights: args.weights,
        line_cap: args
            .line_cap
            .map(|cap| u32::try_from(cap).unwrap_or(u32::MAX)),
        goals: args.goals,
    };
    let answer = commands::context(&client, &args.stream, &request).await?;
    if answer.revision == Some(0) {
        // No history: a stream not created yet, or one whose name was mistyped.
        streams::show(&client, &args.stream).await?;
    }
    out.write_all(answer.body.as_bytes())
        .map_err(ClientError::Output)?;
    if !answer.body.is_empty() && !answer.body.ends_with('\n') {
        out.line(format_args!(""))?;
    }
    out.flush().map_err(ClientError::Output)?;
    if let Some(tokens) = answer.tokens.filter(|_| !json) {
        eprintln!("({tokens} tokens)");
    }
    Ok(())
}
