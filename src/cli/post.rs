//! `recap post`: one event, with every field an event has.

use std::io::{Read, Write};

use clap::Args;

use crate::client::{ClientError, commands};
use crate::event::{Event, Kind, Severity, StreamName, Timestamp};
use crate::payload::Payload;

use super::args::{self, ServerArgs};
use super::output::{Output, write_json};

const EXAMPLES: &str = "\
Examples:
  recap post demo --kind tool --severity error \"search timed out after 30s\"
  recap post demo --kind tool --actor searcher --step-id step-7 \\
      --payload '{\"query\": \"redb durability\", \"hits\": 12}' \"search returned 12 results\"
  recap post demo --kind plan --ts 2024-05-01T10:31:41Z --display-message \"new plan\" \"try a smaller query\"
  cargo test 2>&1 | recap post demo --kind tool --payload @meta.json -     # the message from stdin

Prints where the event landed: a new record, or the record it collapsed into as a repeat.";

/// `recap post`.
#[derive(Args, Clone, Debug)]
#[command(after_help = EXAMPLES)]
pub struct PostArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream (created by its first event).
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
    /// The message, kept verbatim; `-` reads it from stdin.
    pub message: String,
    /// What the event is about: tool, llm, action, plan, error, ... (any kind; known kinds
    /// weigh more in the context).
    #[arg(long, value_parser = args::kind)]
    pub kind: Kind,
    /// How much it matters (the aliases warn, err and fatal, and any case, are accepted too).
    #[arg(long, default_value = "info", value_parser = args::SeverityParser)]
    pub severity: Severity,
    /// When it happened (RFC 3339, or a UTC date-time) [default: the server's clock].
    #[arg(long, value_parser = args::timestamp, value_name = "TIME")]
    pub ts: Option<Timestamp>,
    /// Agent or tool name (at most 256 bytes).
    #[arg(long, value_parser = args::label, value_name = "NAME")]
    pub actor: Option<String>,
    /// Correlates the events of one agent step (at most 256 bytes).
    #[arg(long, value_parser = args::label, value_name = "ID")]
    pub step_id: Option<String>,
    /// A short form for dashboards, never shown in the context (at most 4 KiB).
    #[arg(long, value_parser = args::display_message, value_name = "TEXT")]
    pub display_message: Option<String>,
    /// Structured data, stored and returned but not shown in the context: a JSON object, or
    /// @FILE to read it from a file.
    #[arg(long, value_parser = args::payload, value_name = "JSON")]
    pub payload: Option<Payload>,
    /// Print the server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Posts the event; prints where it landed.
pub async fn run(args: PostArgs, out: &mut impl Write) -> Result<(), ClientError> {
    let message = if args.message == "-" {
        let mut message = String::new();
        std::io::stdin()
            .read_to_string(&mut message)
            .map_err(|error| ClientError::Io {
                path: "stdin".into(),
                source: error,
            })?;
        message
    } else {
        args.message
    };
    let event = Event {
        message,
        kind: args.kind,
        severity: args.severity,
        ts: args.ts,
        display_message: args.display_message,
        actor: args.actor,
        step_id: args.step_id,
        payload: args.payload,
    };
    let client = args.server.connect()?;
    let posted = commands::post(&client, &args.stream, &event).await?;
    if args.json {
        return write_json(out, &posted.json);
    }
    let written = posted.written;
    let how = if written.collapsed {
        format!(
            "collapsed into #{} (x{})",
            written.seq, written.repeat_count
        )
    } else {
        format!("new record #{}", written.seq)
    };
    out.line(format_args!("{how}, revision {}", written.revision))
}
