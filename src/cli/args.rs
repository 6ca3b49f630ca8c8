//! What every client command shares: how to reach the server, and the parsers that turn
//! arguments into checked values, so that a bad value is a usage error (exit 2) that says what
//! to write instead, before anything is sent.

use std::path::Path;

use clap::Args;
use clap::builder::{PossibleValue, TypedValueParser};

use crate::client::{Client, ClientError, DEFAULT_SERVER_URL};
use crate::context::MAX_BUDGET_TOKENS;
use crate::event::{
    Kind, MAX_DISPLAY_MESSAGE_BYTES, MAX_LABEL_BYTES, Severity, StreamName, Timestamp,
};
use crate::payload::Payload;

/// How a client command reaches the server.
#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// The server's URL.
    #[arg(long, env = "RECAP_URL", default_value = DEFAULT_SERVER_URL, value_name = "URL")]
    pub server: String,
    /// API key, sent as X-API-Key (for a server started with --keys; the key needs the scope
    /// of what the command does: read, write or admin).
    #[arg(long, env = "RECAP_KEY", value_name = "KEY", hide_env_values = true)]
    pub key: Option<String>,
}

impl ServerArgs {
    /// A client for the server.
    pub fn connect(&self) -> Result<Client, ClientError> {
        Client::new(&self.server, self.key.as_deref())
    }
}

/// A stream name.
pub fn stream(value: &str) -> Result<StreamName, String> {
    StreamName::new(value).map_err(|error| error.to_string())
}

/// A kind.
pub fn kind(value: &str) -> Result<Kind, String> {
    Kind::new(value).map_err(|error| error.to_string().replace("field `kind`: ", ""))
}

/// Parses a severity as the API does (any case, with the aliases warn, err and fatal), and
/// names the five severities to help and shell completions.
#[derive(Clone, Copy, Debug)]
pub struct SeverityParser;

impl TypedValueParser for SeverityParser {
    type Value = Severity;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Severity, clap::Error> {
        // clap's own wording for a value its parser refused, with recap's reason.
        fn parse(value: &str) -> Result<Severity, String> {
            value.parse().map_err(|error: crate::EventError| {
                error.to_string().replace("field `severity`: ", "")
            })
        }
        parse.parse_ref(command, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            Severity::ALL
                .iter()
                .map(|severity| PossibleValue::new(severity.as_str())),
        ))
    }
}

/// An actor or step id: at most [`MAX_LABEL_BYTES`] bytes.
pub fn label(value: &str) -> Result<String, String> {
    at_most(value, MAX_LABEL_BYTES)
}

/// A display message: at most [`MAX_DISPLAY_MESSAGE_BYTES`] bytes.
pub fn display_message(value: &str) -> Result<String, String> {
    at_most(value, MAX_DISPLAY_MESSAGE_BYTES)
}

fn at_most(value: &str, max: usize) -> Result<String, String> {
    if value.len() > max {
        return Err(format!(
            "it is {} bytes, over the limit of {max} bytes; shorten it, or move bulk data to --payload",
            value.len()
        ));
    }
    Ok(value.to_owned())
}

/// A point in time: RFC 3339, or a naive date-time read as UTC.
pub fn timestamp(value: &str) -> Result<Timestamp, String> {
    crate::event::parse_timestamp(value).map_err(|_| {
        format!(
            "{value:?} is not a time; use RFC 3339 (2024-05-01T10:31:41Z, 2024-05-01T12:31:41+02:00) or a UTC date-time (2024-05-01T10:31:41)"
        )
    })
}

/// A token budget: 1 to [`MAX_BUDGET_TOKENS`].
pub fn budget(value: &str) -> Result<u32, String> {
    match value.trim().parse::<i64>() {
        Ok(budget) if (1..=i64::from(MAX_BUDGET_TOKENS)).contains(&budget) => Ok(budget as u32),
        Ok(budget) if budget < 1 => Err(format!(
            "the budget must be positive: a number of tokens from 1 to {MAX_BUDGET_TOKENS} (the server's default is 2000)"
        )),
        Ok(_) => Err(format!(
            "the budget is over the limit of {MAX_BUDGET_TOKENS} tokens"
        )),
        Err(_) => Err(format!(
            "the budget is a whole number of tokens, from 1 to {MAX_BUDGET_TOKENS}"
        )),
    }
}

/// A count of things (a page size, a line cap, a number of records): 1 or more.
pub fn count(value: &str) -> Result<u64, String> {
    match value.trim().parse::<i128>() {
        Ok(count) if count >= 1 => {
            u64::try_from(count).map_err(|_| "the number is too large".to_owned())
        }
        Ok(_) => Err("must be positive: a whole number, 1 or more".to_owned()),
        Err(_) => Err("not a whole number; give one, 1 or more".to_owned()),
    }
}

/// A seq or note id used as a cursor: 0 or more.
pub fn cursor(value: &str) -> Result<u64, String> {
    match value.trim().parse::<i128>() {
        Ok(cursor) if cursor >= 0 => {
            u64::try_from(cursor).map_err(|_| "the number is too large".to_owned())
        }
        Ok(_) => Err("must not be negative: seqs and note ids count from 1".to_owned()),
        Err(_) => Err("not a whole number; seqs and note ids are whole numbers".to_owned()),
    }
}

/// An event's payload: a JSON object, or `@FILE` to read one from a file.
pub fn payload(value: &str) -> Result<Payload, String> {
    let (text, from) = match value.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(Path::new(path))
                .map_err(|error| format!("cannot read the payload file {path}: {error}"))?,
            format!(" in {path}"),
        ),
        None => (value.to_owned(), String::new()),
    };
    Payload::from_json(&text).map_err(|error| {
        format!(
            "the payload{from} is not a JSON object ({error}); give one such as '{{\"query\": \"redb\", \"hits\": 12}}', or @FILE to read it from a file"
        )
    })
}

/// A duration in seconds: a whole number with an optional unit `s`, `m`, `h`, `d` or `w`.
pub fn duration_seconds(value: &str) -> Result<i64, String> {
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '-')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_seconds = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        "w" => 7 * 24 * 60 * 60,
        _ => {
            return Err(format!(
                "{value:?} is not a duration; write e.g. 3600, 90m, 12h, 7d or 2w"
            ));
        }
    };
    match number.parse::<i64>() {
        Ok(amount) if amount >= 1 => amount
            .checked_mul(unit_seconds)
            .ok_or_else(|| format!("{value:?} is too long a duration")),
        Ok(_) => Err("the duration must be positive (at least 1s)".to_owned()),
        Err(_) => Err(format!(
            "{value:?} is not a duration; write e.g. 3600, 90m, 12h, 7d or 2w"
        )),
    }
}

/// A duration in seconds said the way [`duration_seconds`] reads it (`7d`, `90m`, `45s`).
pub fn format_duration(seconds: i64) -> String {
    const UNITS: [(i64, &str); 4] = [(7 * 86_400, "w"), (86_400, "d"), (3_600, "h"), (60, "m")];
    UNITS
        .iter()
        .find(|(unit, _)| seconds % unit == 0 && seconds >= *unit)
        .map(|(unit, name)| format!("{}{name}", seconds / unit))
        .unwrap_or_else(|| format!("{seconds}s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_or_zero_budget_says_it_must_be_positive() {
        for value in ["-5", "0"] {
            let error = budget(value).unwrap_err();
            assert!(error.contains("must be positive"), "{error}");
        }
        assert_eq!(budget("2000"), Ok(2000));
        assert!(budget("1000001").unwrap_err().contains("over the limit"));
        assert!(budget("lots").unwrap_err().contains("whole number"));
    }

    #[test]
    fn counts_cursors_and_durations() {
        assert_eq!(count("5"), Ok(5));
        assert!(count("-1").unwrap_err().contains("positive"));
        assert_eq!(cursor("0"), Ok(0));
        assert!(cursor("-1").unwrap_err().contains("negative"));
        assert_eq!(duration_seconds("90"), Ok(90));
        assert_eq!(duration_seconds("90m"), Ok(5_400));
        assert_eq!(duration_seconds("7d"), Ok(604_800));
        assert!(duration_seconds("-1h").unwrap_err().contains("positive"));
        assert!(
            duration_seconds("7 days")
                .unwrap_err()
                .contains("not a duration")
        );
        for seconds in [45, 60, 5_400, 3_600, 86_400, 604_800, 90_061] {
            let text = format_duration(seconds);
            assert_eq!(duration_seconds(&text), Ok(seconds), "{text}");
        }
        assert_eq!(format_duration(604_800), "1w");
        assert_eq!(format_duration(5_400), "90m");
    }

    #[test]
    fn a_payload_must_be_a_json_object() {
        assert_eq!(payload(r#"{"a": 1}"#).unwrap().as_str(), r#"{"a":1}"#);
        let error = payload("[1, 2]").unwrap_err();
        assert!(error.contains("not a JSON object"), "{error}");
        let error = payload("{\"a\": ").unwrap_err();
        assert!(error.contains("not a JSON object"), "{error}");
        let error = payload("@/nonexistent/payload.json").unwrap_err();
        assert!(error.contains("cannot read the payload file"), "{error}");
    }
}
