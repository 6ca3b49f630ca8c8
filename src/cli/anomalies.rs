//! `recap anomalies`: what a stream overrides of the server's anomaly detection.

use std::io::Write;

use clap::{ArgGroup, Args};
use serde::Deserialize;

use crate::anomaly::AnomalyOverrides;
use crate::client::ClientError;
use crate::client::streams;
use crate::event::StreamName;

use super::args::{self, ServerArgs, format_duration};
use super::output::{Output, write_json};

const EXAMPLES: &str = "\
Examples:
  recap anomalies demo --off                       # no anomaly records for this stream
  recap anomalies demo --repeat-actions 5 --stall 15m
  recap anomalies demo --error-recurrences off     # 0 or off turns one detector off
  recap anomalies demo --server-defaults           # follow the server's settings again

Sets every override at once: a setting left out follows the server's (recap.toml, --anomalies).
Prints the settings now in force for the stream. Needs the admin scope.";

/// `recap anomalies`.
#[derive(Args, Clone, Debug)]
#[command(after_help = EXAMPLES)]
#[command(group(ArgGroup::new("settings").required(true).multiple(true).args([
    "on", "off", "repeat_actions", "oscillation_cycles", "error_recurrences", "stall",
    "server_defaults",
])))]
pub struct AnomaliesArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream.
    #[arg(value_parser = args::stream)]
    pub stream: StreamName,
    /// Detect anomalies on this stream even if the server does not.
    #[arg(long, conflicts_with = "off")]
    pub on: bool,
    /// Detect no anomalies on this stream.
    #[arg(long)]
    pub off: bool,
    /// Raise a `repeat` anomaly at this many identical actions in a row (off: never).
    #[arg(long, value_parser = threshold, value_name = "N|off")]
    pub repeat_actions: Option<u64>,
    /// Raise an `oscillation` anomaly at this many A-B cycles (off: never).
    #[arg(long, value_parser = threshold, value_name = "N|off")]
    pub oscillation_cycles: Option<u64>,
    /// Raise a `recurring_error` anomaly when one error comes back this many times (off: never).
    #[arg(long, value_parser = threshold, value_name = "N|off")]
    pub error_recurrences: Option<u64>,
    /// Raise a `stall` anomaly after this long without an event (300, 5m, 1h; off: never).
    #[arg(long, value_parser = stall, value_name = "AGE|off")]
    pub stall: Option<u64>,
    /// Drop every override: the stream follows the server's settings.
    #[arg(long, conflicts_with_all = [
        "on", "off", "repeat_actions", "oscillation_cycles", "error_recurrences", "stall",
    ])]
    pub server_defaults: bool,
    /// Print the settings now in force as JSON.
    #[arg(long)]
    pub json: bool,
}

impl AnomaliesArgs {
    /// What the stream overrides: what the flags name.
    fn overrides(&self) -> AnomalyOverrides {
        AnomalyOverrides {
            enabled: match (self.on, self.off) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            repeat_actions: self.repeat_actions,
            oscillation_cycles: self.oscillation_cycles,
            error_recurrences: self.error_recurrences,
            stall_seconds: self.stall,
        }
    }
}

/// The settings in force, as the server answers them.
#[derive(Deserialize)]
struct InForce {
    enabled: bool,
    repeat_actions: u64,
    oscillation_cycles: u64,
    error_recurrences: u64,
    stall_seconds: u64,
}

/// Sets the stream's overrides; prints the settings now in force.
pub async fn run(args: AnomaliesArgs, out: &mut impl Write) -> Result<(), ClientError> {
    let client = args.server.connect()?;
    let answer = streams::set_anomalies(&client, &args.stream, &args.overrides()).await?;
    if args.json {
        return write_json(out, &answer);
    }
    let settings: InForce = serde_json::from_str(answer.get())
        .map_err(|error| ClientError::Protocol(format!("anomaly settings: {error}")))?;
    out.line(format_args!(
        "anomaly detection of {}: {}",
        args.stream,
        describe(&settings)
    ))
}

/// `on: repeats at 3 actions, oscillation at 3 cycles, ...`, or `off`.
fn describe(settings: &InForce) -> String {
    if !settings.enabled {
        return "off".to_owned();
    }
    let at = |value: u64, unit: &str| match value {
        0 => "off".to_owned(),
        value => format!("at {value} {unit}"),
    };
    let stall = match settings.stall_seconds {
        0 => "off".to_owned(),
        seconds => format!(
            "after {}",
            format_duration(seconds.try_into().unwrap_or(i64::MAX))
        ),
    };
    format!(
        "on; repeats {}, oscillation {}, recurring errors {}, stalls {stall}",
        at(settings.repeat_actions, "actions"),
        at(settings.oscillation_cycles, "cycles"),
        at(settings.error_recurrences, "recurrences"),
    )
}

/// A detector's threshold: a whole number, or `off` (the same as 0).
fn threshold(value: &str) -> Result<u64, String> {
    if value.trim().eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{value:?} is not a whole number ≥ 0 or `off`"))
}

/// The stall threshold: a duration, or `off` (or 0).
fn stall(value: &str) -> Result<u64, String> {
    if matches!(value.trim(), "0") || value.trim().eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    let seconds = args::duration_seconds(value)?;
    u64::try_from(seconds).map_err(|_| "the duration must be positive".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_as_a_sentence() {
        let settings = InForce {
            enabled: true,
            repeat_actions: 3,
            oscillation_cycles: 0,
            error_recurrences: 4,
            stall_seconds: 900,
        };
        assert_eq!(
            describe(&settings),
            "on; repeats at 3 actions, oscillation off, recurring errors at 4 recurrences, stalls after 15m"
        );
        let off = InForce {
            enabled: false,
            ..settings
        };
        assert_eq!(describe(&off), "off");
        assert_eq!(threshold("OFF"), Ok(0));
        assert_eq!(stall("5m"), Ok(300));
        assert!(threshold("-1").unwrap_err().contains("whole number"));
    }
}
