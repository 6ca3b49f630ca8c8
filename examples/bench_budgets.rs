//! `recap bench budgets` without the binary: `cargo run --release --example bench_budgets --
//! ../shared/traces/*.jsonl --svg /tmp/budgets.svg`. Same options, same output.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use recap::budgets::{self, BudgetsArgs};

/// Replay traces over a budget matrix against baselines.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BudgetsArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match budgets::run(&cli.args, &mut stdout, std::io::stderr().is_terminal()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(if error.is_usage() { 2 } else { 1 })
        }
    }
}
