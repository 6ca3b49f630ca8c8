//! `recap notes add|list|rm`: a stream's pinned notes, the facts always put first in its
//! context.

use std::io::Write;

use clap::{Args, Subcommand};

use crate::client::{ClientError, notes};
use crate::event::{Note, StreamName, Timestamp, format_timestamp};

use super::args::{self, ServerArgs};
use super::output::{Output, more_pages, write_json};

const EXAMPLES: &str = "\
Examples:
  recap notes add demo \"user wants a patch, not a rewrite\"
  recap notes add demo \"deploy freeze until Friday\" --expires-at 2024-05-03T18:00:00Z
  recap notes list demo
  recap notes rm demo 3";

/// `recap notes`.
#[derive(Subcommand, Clone, Debug)]
pub enum NotesCommand {
    /// Pin a note: a fact the stream's context always shows first.
    #[command(after_help = EXAMPLES)]
    Add(AddArgs),
    /// List a stream's live notes, oldest first.
    #[command(after_help = EXAMPLES)]
    List(ListArgs),
    /// Delete a note by its id (the number `recap notes list` shows).
    #[command(after_help = EXAMPLES)]
    Rm(RmArgs),
}

/// `recap notes add`.
#[derive(Args, Clone, Debug)]
pub struct AddArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream.
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
    /// The note, verbatim.
    pub text: String,
    /// When the note stops applying (a time in the future) [default: never].
    #[arg(long, value_parser = args::timestamp, value_name = "TIME")]
    pub expires_at: Option<Timestamp>,
    /// Print the note as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `recap notes list`.
#[derive(Args, Clone, Debug)]
pub struct ListArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream.
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
    /// Notes with an id above this.
    #[arg(long, value_parser = args::cursor, allow_negative_numbers = true, value_name = "ID")]
    pub after: Option<u64>,
    /// Notes per page, at most 1000 [default: 1000].
    #[arg(long, value_parser = args::count, allow_negative_numbers = true, value_name = "N")]
    pub limit: Option<u64>,
    /// Follow the cursors through every page.
    #[arg(long)]
    pub all: bool,
    /// One note per line as the API sends it (JSON Lines).
    #[arg(long)]
    pub json: bool,
}

/// `recap notes rm`.
#[derive(Args, Clone, Debug)]
pub struct RmArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream.
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
    /// The note's id.
    #[arg(value_parser = args::cursor, allow_negative_numbers = true)]
    pub id: u64,
}

/// Runs a notes command.
pub async fn run(command: NotesCommand, out: &mut impl Write) -> Result<(), ClientError> {
    match command {
        NotesCommand::Add(args) => {
            let client = args.server.connect()?;
            let note =
                notes::add(&client, &args.stream, &args.text, args.expires_at.as_ref()).await?;
            if args.json {
                return write_json(out, &note);
            }
            let note = notes::read_note(&note)?;
            out.line(format_args!("pinned note {} to {}", note.id, args.stream))
        }
        NotesCommand::List(args) => {
            let client = args.server.connect()?;
            let mut after = args.after;
            loop {
                let page = notes::page(&client, &args.stream, after, args.limit).await?;
                for raw in &page.notes {
                    if args.json {
                        write_json(out, raw)?;
                    } else {
                        out.write_all(line(&notes::read_note(raw)?).as_bytes())
                            .map_err(ClientError::Output)?;
                    }
                }
                match page
                    .next
                    .filter(|next| after.is_none_or(|after| *next > after))
                {
                    Some(next) if args.all => after = Some(next),
                    Some(next) => {
                        more_pages("--after", &next.to_string());
                        break;
                    }
                    None => break,
                }
            }
            out.flush().map_err(ClientError::Output)
        }
        NotesCommand::Rm(args) => {
            let client = args.server.connect()?;
            notes::delete(&client, &args.stream, args.id).await?;
            out.line(format_args!("deleted note {} of {}", args.id, args.stream))
        }
    }
}

/// A note as `recap notes list` shows it: `#ID CREATED [until EXPIRES]: text`, with the lines
/// of a multi-line note indented under the first.
pub fn line(note: &Note) -> String {
    let expires = note
        .expires_at
        .map(|at| format!(" until {}", format_timestamp(&at)))
        .unwrap_or_default();
    format!(
        "#{} {}{expires}: {}\n",
        note.id,
        format_timestamp(&note.created_at),
        note.text.trim_end().replace('\n', "\n  ")
    )
}
