//! The `recap` binary: parses arguments ([`recap::cli`] defines them), installs logging and
//! signal handling, and calls the library. Exit codes: 0 ok, 1 failure, 2 usage.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;
use recap::budgets::{self, BudgetsArgs};
use recap::cli::{self, BenchCommand, Cli, Command};
use recap::client;
use recap::config::Config;
use recap::logging::LogFormat;

/// mimalloc instead of the system allocator: ingest allocates and frees small records across
/// many threads, where glibc's malloc spent a third of the writer's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // clap exits with 2 on usage errors (and 0 for --help / --version).
    let cli = Cli::parse();
    // `serve` installs logging once its config (which may choose the format) is read.
    if !matches!(cli.command, Command::Serve(_)) {
        recap::logging::init(LogFormat::default());
    }
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

/// Runs a command; `Ok` carries the exit code of a command that reports its own.
async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let config = Config::load(&args.overrides())?;
            recap::logging::init(config.log_format);
            recap::server::serve(config.startup(), shutdown_signal()).await?;
        }
        Command::Client(command) => return Ok(cli::run_client(command).await?),
        Command::Completions(args) => {
            cli::generate::completions(args.shell, &mut cli::command(), &mut std::io::stdout())
                .context("cannot write the completion script")?;
        }
        Command::Man(args) => {
            cli::generate::man(&args, cli::command(), &mut std::io::stdout().lock())
                .context("cannot write the man page")?;
        }
        Command::Check(args) => {
            let mut out = std::io::stdout().lock();
            return tokio::task::block_in_place(|| cli::check::run(args, &mut out));
        }
        // Offline and CPU-bound: its own exit code (2 for usage errors) says how it went.
        Command::Bench(BenchCommand::Budgets(args)) => {
            return Ok(tokio::task::block_in_place(|| bench_budgets(&args)));
        }
    }
    Ok(ExitCode::SUCCESS)
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
