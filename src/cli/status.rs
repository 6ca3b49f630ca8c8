//! `recap health` and `recap metrics`: whether the server takes writes, and its counters.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;

use crate::client::{ClientError, status};

use super::args::ServerArgs;
use super::output::Output;

const HEALTH_EXAMPLES: &str = "\
Examples:
  recap health                             # ok, exit 0; degraded or failed with the cause, exit 1
  recap health --server http://10.0.0.5:7070 || restart-recap

Needs no key. `degraded`: writes fail (the disk is full, say) while reads are served; `failed`:
the store stopped and the server is exiting for its supervisor to restart it.";

const METRICS_EXAMPLES: &str = "\
Examples:
  recap metrics | grep recap_http_requests_total

Needs a key with the read scope on a server with keys.";

/// `recap health`.
#[derive(Args, Clone, Debug)]
#[command(after_help = HEALTH_EXAMPLES)]
pub struct HealthArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `recap metrics`.
#[derive(Args, Clone, Debug)]
#[command(after_help = METRICS_EXAMPLES)]
pub struct MetricsArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Prints the server's health; exit 1 when it is not ok.
pub async fn health(args: HealthArgs, out: &mut impl Write) -> Result<ExitCode, ClientError> {
    let health = status::health(&args.server.connect()?).await?;
    match &health.cause {
        Some(cause) => out.line(format_args!("{}: {cause}", health.status))?,
        None => out.line(format_args!("{}", health.status))?,
    }
    Ok(if health.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints the Prometheus text.
pub async fn metrics(args: MetricsArgs, out: &mut impl Write) -> Result<(), ClientError> {
    let text = status::metrics(&args.server.connect()?).await?;
    out.write_all(text.as_bytes()).map_err(ClientError::Output)
}
