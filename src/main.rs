//! The `recap` binary: parses arguments, installs logging and signal handling, and calls the
//! library. Exit codes: 0 ok, 1 failure, 2 usage.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use recap::budgets::{self, BudgetsArgs};
use recap::client::{self, Client, commands, export, import, tail};
use recap::config::{Config, Overrides};
use recap::event::{Event, Kind, Severity, StreamName};

/// mimalloc instead of the system allocator: ingest allocates and frees small records across
/// many threads, where glibc's malloc spent a third of the writer's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// recap: an event memory for LLM agents.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Post one event to a stream.
    Post(PostArgs),
    /// Print a stream's context window.
    Context(ContextArgs),
    /// Follow a stream's changes (SSE), one line each; reconnects and resumes if the feed drops.
    Tail(TailArgs),
    /// Import a JSONL file (events, a trace, or an export) into a stream.
    Import(ImportArgs),
    /// Write a stream's records as JSONL (what `import` reads back).
    Export(ExportArgs),
    /// Speak MCP on stdin/stdout (for agents that start MCP servers as commands), forwarding
    /// each tool call to the recap server; logs go to stderr.
    Mcp(McpArgs),
    /// Post one coding-agent hook event (Claude Code or Codex, JSON on stdin) to a stream;
    /// for session start, prompt submit and pre-compaction, print the context window.
    Hook(HookArgs),
    /// Offline benchmarks (no server needed).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Replay traces over a budget matrix and compare recap with the recency and head+tail
    /// baselines (table, --json, --svg).
    Budgets(BudgetsArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "RECAP_ADDR", value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Data directory (holds recap.redb).
    #[arg(long, env = "RECAP_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// Config file (TOML).
    #[arg(long, env = "RECAP_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// API keys file (TOML); without it the server listens on loopback only.
    #[arg(long, env = "RECAP_KEYS", value_name = "FILE")]
    keys: Option<PathBuf>,
    /// Memory for cached stream state, e.g. 64MiB (default 256MiB); the streams used least
    /// recently are evicted beyond it and loaded again from disk when next used.
    #[arg(long, env = "RECAP_CACHE_BYTES", value_name = "SIZE")]
    cache_bytes: Option<String>,
    /// Anomaly detection at ingest (loops, oscillation, recurring errors, stalls raised as
    /// `anomaly` records): `on` (the default) or `off`; streams may still set their own.
    #[arg(long, env = "RECAP_ANOMALIES", value_name = "on|off")]
    anomalies: Option<String>,
}

/// How client commands reach the server.
#[derive(Args)]
struct ServerArgs {
    /// Server URL.
    #[arg(long, env = "RECAP_URL", default_value = client::DEFAULT_SERVER_URL, value_name = "URL")]
    server: String,
    /// API key (sent as X-API-Key).
    #[arg(long, env = "RECAP_KEY", value_name = "KEY", hide_env_values = true)]
    key: Option<String>,
}

#[derive(Args)]
struct PostArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The stream.
    #[arg(value_parser = parse_stream)]
    stream: StreamName,
    /// What the event is about (tool, llm, error, ...).
    #[arg(long, value_parser = parse_kind)]
    kind: Kind,
    /// debug, info, warning, error or critical.
    #[arg(long, default_value = "info", value_parser = parse_severity)]
    severity: Severity,
    /// Agent or tool name.
    #[arg(long)]
    actor: Option<String>,
    /// Step correlation id.
    #[arg(long)]
    step_id: Option<String>,
    /// The message.
    message: String,
}

#[derive(Args)]
struct ContextArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The stream.
    #[arg(value_parser = parse_stream)]
    stream: StreamName,
    /// Token budget.
    #[arg(long)]
    budget: Option<u32>,
    /// Encoding: cl100k_base or o200k_base.
    #[arg(long, conflicts_with = "model")]
    encoding: Option<String>,
    /// Model name (mapped to its encoding).
    #[arg(long)]
    model: Option<String>,
    /// Print the JSON form with the budget receipt.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TailArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The stream.
    #[arg(value_parser = parse_stream)]
    stream: StreamName,
    /// Replay the changes after this revision first.
    #[arg(long, value_name = "REVISION")]
    after: Option<u64>,
    /// Stop after this many changes.
    #[arg(long, value_name = "N")]
    count: Option<usize>,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The target stream.
    #[arg(value_parser = parse_stream)]
    stream: StreamName,
    /// The JSONL file.
    file: PathBuf,
    /// Leave invalid lines out (and list them) instead of failing.
    #[arg(long)]
    skip_invalid: bool,
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The stream.
    #[arg(value_parser = parse_stream)]
    stream: StreamName,
}

#[derive(Args)]
struct McpArgs {
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
struct HookArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The stream the agent's events go to.
    #[arg(long, env = "RECAP_STREAM", value_parser = parse_stream)]
    stream: StreamName,
    /// Token budget of the context window printed.
    #[arg(long)]
    budget: Option<u32>,
}

fn parse_stream(value: &str) -> Result<StreamName, String> {
    StreamName::new(value).map_err(|error| error.to_string())
}

fn parse_kind(value: &str) -> Result<Kind, String> {
    Kind::new(value).map_err(|error| error.to_string())
}

fn parse_severity(value: &str) -> Result<Severity, String> {
    value
        .parse()
        .map_err(|error: recap::EventError| error.to_string())
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors (and 0 for --help / --version).
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Blocking work still running (a context build for a client that went away) must not hold
    // up the exit: by now the server has drained and the store is closed.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        // `recap export s | head`: the reader has what it wanted; that is not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // Each cause once: most errors' messages already end with their source.
            eprintln!("error: {}", client::error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn bench_budgets(args: &BudgetsArgs) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match budgets::run(args, &mut stdout, progress) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(if error.is_usage() { 2 } else { 1 })
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG=recap::request=debug adds one line per request.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs a command; `Ok` carries the exit code of a command that reports its own.
async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let config = Config::load(&Overrides {
                addr: args.addr,
                data_dir: args.data,
                config_file: args.config,
                keys_file: args.keys,
                cache_bytes: args.cache_bytes,
                anomalies: args.anomalies,
            })?;
            recap::server::serve(&config, shutdown_signal()).await?;
        }
        Command::Post(args) => {
            let client = connect(&args.server)?;
            let mut event = Event::new(args.kind.as_str(), args.severity, args.message)?;
            event.actor = args.actor;
            event.step_id = args.step_id;
            let written = commands::post(&client, &args.stream, &event).await?;
            let how = if written.collapsed {
                format!(
                    "collapsed into #{} (x{})",
                    written.seq, written.repeat_count
                )
            } else {
                format!("new record #{}", written.seq)
            };
            println!("{how}, revision {}", written.revision);
        }
        Command::Context(args) => {
            let client = connect(&args.server)?;
            let answer = commands::context(
                &client,
                &args.stream,
                &commands::ContextArgs {
                    budget: args.budget,
                    encoding: args.encoding,
                    model: args.model,
                    json: args.json,
                },
            )
            .await?;
            let mut out = std::io::stdout().lock();
            out.write_all(answer.body.as_bytes())?;
            if !answer.body.ends_with('\n') && !answer.body.is_empty() {
                writeln!(out)?;
            }
            if let Some(tokens) = answer.tokens.filter(|_| !args.json) {
                eprintln!("({tokens} tokens)");
            }
        }
        Command::Tail(args) => {
            let client = connect(&args.server)?;
            let mut out = std::io::stdout().lock();
            tail::tail(&client, &args.stream, args.after, args.count, &mut out).await?;
        }
        Command::Import(args) => {
            let client = connect(&args.server)?;
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
        }
        Command::Export(args) => {
            let client = connect(&args.server)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let summary = export::export(&client, &args.stream, &mut out).await?;
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
        }
        Command::Hook(args) => {
            let client = connect(&args.server)?;
            let mut input = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut input)
                .context("cannot read the hook event from stdin")?;
            let output = client::hook::run(&client, &args.stream, &input, args.budget).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(output.as_bytes())?;
            if !output.is_empty() && !output.ends_with('\n') {
                writeln!(out)?;
            }
        }
        Command::Mcp(args) => client::mcp::serve_stdio(connect(&args.server)?).await?,
        // Offline and CPU-bound: its own exit code (2 for usage errors) says how it went.
        Command::Bench(BenchCommand::Budgets(args)) => {
            return Ok(tokio::task::block_in_place(|| bench_budgets(&args)));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn connect(args: &ServerArgs) -> Result<Client> {
    Client::new(&args.server, args.key.as_deref()).context("cannot set up the client")
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    first_signal().await;
    tracing::info!("shutdown requested; press Ctrl-C again to exit at once");
    tokio::spawn(async {
        first_signal().await;
        eprintln!("second signal: exiting without waiting");
        std::process::exit(130);
    });
}

async fn first_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
