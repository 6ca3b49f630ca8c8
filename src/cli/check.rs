//! `recap check`: verifies a data file offline and lists what is damaged
//! ([`crate::store::check`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::config::{Config, Overrides};
use crate::store::{DATA_FILE_NAME, DEFAULT_DATA_DIR};

const EXAMPLES: &str = "\
Examples:
  recap check                          # ./recap-data, with the server stopped
  recap check --data /var/lib/recap
  recap check --config recap.toml      # the data_dir the config file names

Reads every row of recap.redb once, checks it against its checksum and against its stream's
row (dense seqs, every revision made once, the severe index, the note count, the totals), and
lists each damaged or missing row. Exit 0: no damage found; 1: damage found, or the file cannot
be checked (a running server holds it, or it is not a recap data file).";

/// `recap check`.
#[derive(Args, Clone, Debug)]
#[command(after_help = EXAMPLES)]
pub struct CheckArgs {
    /// Data directory.
    #[arg(
        long,
        env = "RECAP_DATA",
        value_name = "DIR",
        help = format!("Data directory, holding recap.redb [default: ./{DEFAULT_DATA_DIR}]")
    )]
    pub data: Option<PathBuf>,
    /// Config file (TOML) whose `data_dir` to check.
    #[arg(long, env = "RECAP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Checks the data file and prints what it found; exit 1 when anything is damaged.
pub fn run(args: CheckArgs, out: &mut impl Write) -> Result<ExitCode> {
    let config = Config::load(&Overrides {
        data_dir: args.data,
        config_file: args.config,
        ..Overrides::default()
    })?;
    let dir = config.data_dir;
    let report = crate::store::check(&dir)?;
    for problem in &report.problems {
        writeln!(out, "{problem}")?;
    }
    if report.unlisted > 0 {
        writeln!(out, "... and {} more problems", report.unlisted)?;
    }
    let verdict = if report.is_clean() {
        "no damage found".to_owned()
    } else {
        let problems = report.problems.len() as u64 + report.unlisted;
        format!("DAMAGED: {problems} problems")
    };
    writeln!(
        out,
        "{}: {} streams, {} records, {} changes, {} notes checked; {verdict}",
        dir.join(DATA_FILE_NAME).display(),
        report.streams,
        report.records,
        report.changes,
        report.notes
    )?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
