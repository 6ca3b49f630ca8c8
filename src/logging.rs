//! Logging: the format of log lines (`--log-format`, `RECAP_LOG_FORMAT`, `log_format` in the
//! config file) and the filter, where `RUST_LOG` adds to the default rather than replacing it.

use std::str::FromStr;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// What is logged when `RUST_LOG` says nothing about a target: recap's startup, shutdown,
/// warnings and errors.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// The levels a directive may set for every target (`RUST_LOG=debug`).
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "log format {value:?} is not known; use text or json"
            )),
        }
    }
}

/// The filter directives for a `RUST_LOG` value: its directives after the default, so that
/// `RUST_LOG=recap::request=debug` adds the request log to what is logged anyway. A value that
/// sets a level for every target (`RUST_LOG=warn`, `RUST_LOG=debug,hyper=info`) replaces the
/// default.
pub fn filter_directives(rust_log: Option<&str>) -> String {
    let rust_log = rust_log.map(str::trim).unwrap_or_default();
    let sets_every_target = rust_log
        .split(',')
        .any(|directive| LEVELS.contains(&directive.trim().to_ascii_lowercase().as_str()));
    match (rust_log.is_empty(), sets_every_target) {
        (true, _) => DEFAULT_LOG_FILTER.to_owned(),
        (false, true) => rust_log.to_owned(),
        (false, false) => format!("{DEFAULT_LOG_FILTER},{rust_log}"),
    }
}

/// Installs the global subscriber: stderr, in `format`, filtered by `RUST_LOG` over the
/// default. A `RUST_LOG` that does not parse is reported on stderr and the valid part kept.
pub fn init(format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let directives = filter_directives(rust_log.as_deref());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|error| {
        eprintln!("warning: RUST_LOG={directives:?} is not a valid filter ({error}); ignoring what does not parse");
        EnvFilter::builder().parse_lossy(&directives)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_adds_to_the_default_unless_it_sets_every_level() {
        assert_eq!(filter_directives(None), "info");
        assert_eq!(filter_directives(Some("  ")), "info");
        assert_eq!(
            filter_directives(Some("recap::request=debug")),
            "info,recap::request=debug"
        );
        assert_eq!(filter_directives(Some("WARN")), "WARN");
        assert_eq!(
            filter_directives(Some("debug,hyper=info")),
            "debug,hyper=info"
        );
        // The filter it makes logs the request target at debug and the rest at info.
        let filter = EnvFilter::try_new(filter_directives(Some("recap::request=debug"))).unwrap();
        let text = filter.to_string();
        assert!(
            text.contains("recap::request=debug") && text.contains("info"),
            "{text}"
        );
    }

    #[test]
    fn formats_parse_in_any_case_and_say_what_is_known() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!(
            "yaml"
                .parse::<LogFormat>()
                .unwrap_err()
                .contains("text or json")
        );
    }
}
