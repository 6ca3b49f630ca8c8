//! The command line: every command's clap definition, its help with examples, and what the
//! client commands print. The binary parses [`Cli`], starts logging and the runtime, runs
//! `serve` and `bench` itself and hands the client commands to [`run_client`]. Shell
//! completions and man pages ([`generate`]) come from the same definitions.
//!
//! One module per command family: [`serve`], [`post`], [`context`], [`events`], [`notes`],
//! [`streams`] (with retention), [`anomalies`], [`transfer`] (tail, import, export), [`status`] (health,
//! metrics), [`agents`] (mcp, hook), [`generate`], [`check`] (offline, on a data file); [`args`] holds what they share (the server
//! URL and key, the value parsers) and [`output`] how they write. The HTTP requests themselves
//! are [`crate::client`]'s.

pub mod agents;
pub mod anomalies;
pub mod args;
pub mod check;
pub mod context;
pub mod events;
pub mod generate;
pub mod notes;
pub mod output;
pub mod post;
pub mod serve;
pub mod status;
pub mod streams;
pub mod transfer;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::budgets::BudgetsArgs;
use crate::client::ClientError;

const OVERVIEW: &str = "\
Examples:
  recap serve                                        # the server on 127.0.0.1:7070
  recap post demo --kind tool --severity error \"search timed out\"
  recap context demo --budget 2000                   # the window an agent pastes into its prompt
  recap events demo --all                            # the stream's history
  recap notes add demo \"user wants a patch, not a rewrite\"
  recap streams list

Client commands talk to --server or RECAP_URL (default http://127.0.0.1:7070) and send --key or
RECAP_KEY as X-API-Key. `recap COMMAND --help` shows a command's options and examples.

Exit codes: 0 ok, 1 failure (the server refused, a stream does not exist, it cannot be
reached), 2 usage (a bad argument: nothing was sent).";

/// recap: an event memory for LLM agents.
#[derive(Parser, Debug)]
#[command(name = "recap", version, about, propagate_version = true, after_help = OVERVIEW)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every command.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server.
    Serve(serve::ServeArgs),
    /// The commands that talk to a server.
    #[command(flatten)]
    Client(ClientCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(generate::CompletionsArgs),
    /// Print the man page (roff), or write one per command into a directory.
    Man(generate::ManArgs),
    /// Verify a data file offline (with the server stopped): every row against its checksum
    /// and its stream's row; lists what is damaged and exits 1 if anything is.
    Check(check::CheckArgs),
    /// Offline benchmarks (no server needed).
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// The commands that talk to a server, one HTTP route or a few each.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Post one event to a stream, with any of an event's fields.
    Post(post::PostArgs),
    /// Print a stream's context window (text, or JSON with the budget receipt).
    Context(context::ContextArgs),
    /// Print a stream's history: its records, filtered, a page or every page.
    Events(events::EventsArgs),
    /// Pin, list and delete a stream's notes.
    #[command(subcommand)]
    Notes(notes::NotesCommand),
    /// List, show and delete streams.
    #[command(subcommand)]
    Streams(streams::StreamsCommand),
    /// Set how many records, or how old, a stream keeps.
    Retention(streams::RetentionArgs),
    /// Set a stream's anomaly detection: on or off, and each detector's threshold.
    Anomalies(anomalies::AnomaliesArgs),
    /// Follow a stream's changes (SSE), one line each; reconnects and resumes if the feed drops.
    Tail(transfer::TailArgs),
    /// Import a JSONL file (events, a trace, or an export) into a stream.
    Import(transfer::ImportArgs),
    /// Write a stream's records as JSONL (what `import` reads back).
    Export(transfer::ExportArgs),
    /// Say whether the server is healthy (exit 1 when it is not).
    Health(status::HealthArgs),
    /// Print the server's Prometheus metrics.
    Metrics(status::MetricsArgs),
    /// Speak MCP on stdin/stdout (for agents that start MCP servers as commands), forwarding
    /// each tool call to the recap server; logs go to stderr.
    Mcp(agents::McpArgs),
    /// Post one coding-agent hook event (Claude Code or Codex, JSON on stdin) to a stream;
    /// for session start, prompt submit and pre-compaction, print the context window.
    Hook(agents::HookArgs),
}

/// The offline benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Replay traces over a budget matrix and compare recap with the recency and head+tail
    /// baselines (table, --json, --svg).
    Budgets(BudgetsArgs),
}

/// The whole command line as clap sees it: what completions and man pages are made from.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs a client command, writing its output to stdout; `Ok` carries the exit code.
pub async fn run_client(command: ClientCommand) -> Result<ExitCode, ClientError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        ClientCommand::Post(args) => post::run(args, &mut out).await?,
        ClientCommand::Context(args) => context::run(args, &mut out).await?,
        ClientCommand::Events(args) => {
            events::run(args, &mut out).await?;
        }
        ClientCommand::Notes(command) => notes::run(command, &mut out).await?,
        ClientCommand::Streams(command) => streams::run(command, &mut out).await?,
        ClientCommand::Retention(args) => streams::retention(args, &mut out).await?,
        ClientCommand::Anomalies(args) => anomalies::run(args, &mut out).await?,
        ClientCommand::Tail(args) => transfer::tail(args, &mut out).await?,
        ClientCommand::Import(args) => transfer::import(args).await?,
        ClientCommand::Export(args) => {
            let mut out = std::io::BufWriter::new(out);
            transfer::export(args, &mut out).await?;
        }
        ClientCommand::Health(args) => return status::health(args, &mut out).await,
        ClientCommand::Metrics(args) => status::metrics(args, &mut out).await?,
        ClientCommand::Mcp(args) => {
            // MCP owns stdout.
            drop(out);
            agents::mcp(args).await?;
        }
        ClientCommand::Hook(args) => agents::hook(args, &mut out).await?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn every_command_has_examples_in_its_help() {
        fn visit(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name()).trim().to_owned();
            let leaf = command.get_subcommands().next().is_none();
            let examples = command
                .get_after_help()
                .is_some_and(|help| help.to_string().contains("Examples:"));
            if leaf && !examples && path != "recap help" {
                missing.push(path.clone());
            }
            for sub in command.get_subcommands() {
                visit(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        visit(&command(), "", &mut missing);
        assert!(missing.is_empty(), "no examples in --help: {missing:?}");
    }
}
