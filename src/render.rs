//! The only place that formats context text.
//!
//! A context is a sequence of pieces: section headers, notes, the Earlier summary and record
//! lines. Every piece ends with `\n` and starts with a non-space character (`#`, `-`, a digit),
//! which is what makes a context's token count the sum of its pieces' counts (see
//! [`crate::tokens`]). A record line is `HH:MM:SS [kind]: message` (the time the record last
//! happened, UTC), with the severity after the
//! kind when it is above `info`, ` xN` when the record stands for N > 1 events, and continuation
//! lines of a multi-line message indented by two spaces.

use std::fmt::Write as _;

use chrono::Timelike;

use crate::event::{Record, Severity, Timestamp};
use crate::tokens::Encoding;

/// Header of the pinned notes section.
pub const NOTES_HEADER: &str = "## Notes\n";
/// Header of the recent records section.
pub const RECENT_HEADER: &str = "## Recent\n";
/// How many kinds the Earlier line names before it sums up the rest as `other`.
pub const EARLIER_MAX_KINDS: usize = 8;

/// `HH:MM:SS` in UTC.
pub fn clock(ts: &Timestamp) -> String {
    format!("{:02}:{:02}:{:02}", ts.hour(), ts.minute(), ts.second())
}

/// Appends `text` as the body of a piece: its first line as is, each further line on its own
/// line indented by two spaces. `\r\n` line ends become `\n`; leading blank lines and trailing
/// line breaks are dropped.
fn push_body(out: &mut String, text: &str) {
    let text = text.trim_end_matches(['\n', '\r']);
    // Leading blank lines carry nothing but tokens.
    let text = match text.find(|c: char| !c.is_whitespace()) {
        Some(first) => &text[text[..first].rfind('\n').map_or(0, |newline| newline + 1)..],
        None => "",
    };
    for (index, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if index > 0 {
            // Blank lines stay blank: indenting them would only spend tokens on spaces.
            out.push_str(if line.is_empty() { "\n" } else { "\n  " });
        }
        out.push_str(line);
    }
}

/// One pinned note: `- text`.
pub fn note_piece(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    out.push_str("- ");
    push_body(&mut out, text);
    out.push('\n');
    out
}

/// A record's line, in full.
pub fn record_line(record: &Record) -> String {
    record_line_with(record, &record.message, 0)
}

/// A record's line showing `message` (a prefix of the record's message) and, when
/// `clipped_chars` > 0, a marker saying how many characters were cut.
fn record_line_with(record: &Record, message: &str, clipped_chars: usize) -> String {
    let mut out = String::with_capacity(message.len() + 48);
    out.push_str(&clock(&record.last_ts));
    out.push_str(" [");
    out.push_str(record.kind.as_str());
    out.push(']');
    if record.severity > Severity::Info {
        out.push(' ');
        out.push_str(&record.severity.as_str().to_ascii_uppercase());
    }
    out.push(':');
    if !message.is_empty() {
        out.push(' ');
        push_body(&mut out, message);
    }
    if clipped_chars > 0 {
        let _ = write!(out, " …[{clipped_chars} more chars clipped]");
    }
    if record.repeat_count > 1 {
        let _ = write!(out, " x{}", record.repeat_count);
    }
    out.push('\n');
    out
}

/// A record's line cut to fit a per-line token cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClippedLine {
    /// The line, ending with the clip marker (and ` xN`) and a newline.
    pub text: String,
    /// Its token count.
    pub tokens: u32,
    /// How many characters of the message were cut.
    pub clipped_chars: usize,
}

/// The longest line for `record` whose token count is at most `max_tokens`, with the message
/// cut short and marked; `None` when not even the line's head and marker fit.
pub fn clip_record(record: &Record, encoding: Encoding, max_tokens: u32) -> Option<ClippedLine> {
    clip_record_at(
        record,
        encoding,
        max_tokens,
        &encoding.token_ends(&record.message),
    )
}

/// [`clip_record`] with the message's [`Encoding::token_ends`] already known: a caller that
/// keeps them clips to any other cap without tokenizing the whole message again.
pub fn clip_record_at(
    record: &Record,
    encoding: Encoding,
    max_tokens: u32,
    ends: &[u32],
) -> Option<ClippedLine> {
    let total_chars = record.message.chars().count();
    // The head with an empty message and the widest marker bounds what the message may use.
    let overhead = encoding.count(&record_line_with(record, "", total_chars.max(1)));
    let mut allowance = max_tokens.checked_sub(overhead)?;
    loop {
        let prefix = encoding.prefix_within(&record.message, ends, allowance);
        let clipped_chars = total_chars - prefix.chars().count();
        let text = record_line_with(record, prefix, clipped_chars.max(1));
        let tokens = encoding.count(&text);
        if tokens <= max_tokens {
            return Some(ClippedLine {
                text,
                tokens,
                clipped_chars: clipped_chars.max(1),
            });
        }
        // Continuation-line indents cost tokens the allowance did not see: shrink and retry.
        if allowance == 0 {
            return None;
        }
        allowance = allowance.saturating_sub(tokens - max_tokens);
    }
}

/// What the Earlier line says about the events not shown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EarlierSummary {
    /// Events not shown (a record of N repeats counts N).
    pub events: u64,
    /// Time of the oldest event not shown.
    pub first_ts: Option<Timestamp>,
    /// Time of the newest event not shown.
    pub last_ts: Option<Timestamp>,
    /// Events not shown per kind, most frequent first (ties by name).
    pub kinds: Vec<(String, u64)>,
    /// Events not shown per severity, indexed by [`Severity::index`].
    pub severities: [u64; 5],
    /// Repeats folded into the records not shown (`repeat_count - 1`, summed).
    pub repeats: u64,
}

/// The Earlier section: a header naming how many events are not shown and when they happened,
/// and a line breaking them down by kind and severity.
pub fn earlier_piece(summary: &EarlierSummary) -> String {
    let mut out = String::with_capacity(160);
    let noun = if summary.events == 1 {
        "event"
    } else {
        "events"
    };
    let _ = write!(out, "## Earlier ({} {noun}", summary.events);
    match (summary.first_ts, summary.last_ts) {
        (Some(first), Some(last)) if clock(&first) != clock(&last) => {
            let _ = write!(out, " {}–{}", clock(&first), clock(&last));
        }
        (Some(at), _) | (None, Some(at)) => {
            let _ = write!(out, " at {}", clock(&at));
        }
        (None, None) => {}
    }
    out.push_str(" not shown)\n");

    let mut parts: Vec<String> = Vec::with_capacity(3);
    if !summary.kinds.is_empty() {
        let mut kinds = String::from("kinds:");
        for (kind, count) in summary.kinds.iter().take(EARLIER_MAX_KINDS) {
            let _ = write!(kinds, " {kind}={count}");
        }
        let other: u64 = summary
            .kinds
            .iter()
            .skip(EARLIER_MAX_KINDS)
            .map(|(_, count)| count)
            .sum();
        if other > 0 {
            let _ = write!(kinds, " other={other}");
        }
        parts.push(kinds);
    }
    let notable: Vec<String> = Severity::ALL
        .iter()
        .rev()
        .filter(|severity| {
            **severity >= Severity::Warning && summary.severities[severity.index()] > 0
        })
        .map(|severity| format!("{severity}={}", summary.severities[severity.index()]))
        .collect();
    if !notable.is_empty() {
        parts.push(format!("severities: {}", notable.join(" ")));
    }
    if summary.repeats > 0 {
        parts.push(format!("repeats collapsed: {}", summary.repeats));
    }
    if !parts.is_empty() {
        out.push_str(&parts.join(" · "));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, parse_timestamp};

    fn record(kind: &str, severity: Severity, message: &str, repeat_count: u64) -> Record {
        let ts = parse_timestamp("2024-05-01T10:31:44Z").unwrap();
        let mut record = Record::from_event(Event::new(kind, severity, message).unwrap(), 1, 1, ts);
        record.repeat_count = repeat_count;
        record
    }

    #[test]
    fn record_lines_follow_the_seed_format() {
        let cases = [
            (
                record("tool", Severity::Info, "search(\"redb\") -> 12 results", 1),
                "10:31:44 [tool]: search(\"redb\") -> 12 results\n",
            ),
            (
                record("tool", Severity::Error, "search timed out after 30s", 3),
                "10:31:44 [tool] ERROR: search timed out after 30s x3\n",
            ),
            (
                record("retry", Severity::Warning, "again", 1),
                "10:31:44 [retry] WARNING: again\n",
            ),
            (
                record("llm", Severity::Debug, "quiet", 1),
                "10:31:44 [llm]: quiet\n",
            ),
            (record("obs", Severity::Info, "", 1), "10:31:44 [obs]:\n"),
            (
                record(
                    "tool",
                    Severity::Critical,
                    "Traceback:\r\n  File x\nValueError: y\n",
                    2,
                ),
                "10:31:44 [tool] CRITICAL: Traceback:\n    File x\n  ValueError: y x2\n",
            ),
        ];
        for (record, expected) in cases {
            assert_eq!(record_line(&record), expected);
        }
    }

    #[test]
    fn notes_indent_continuations() {
        assert_eq!(note_piece("budget is 2k"), "- budget is 2k\n");
        assert_eq!(note_piece("a\nb"), "- a\n  b\n");
        assert_eq!(note_piece("a\n\nb"), "- a\n\n  b\n");
        assert_eq!(
            note_piece("\n  \n  indented\nnext"),
            "-   indented\n  next\n"
        );
        assert_eq!(note_piece(" \n\n"), "- \n");
    }

    #[test]
    fn clipping_fits_the_cap_and_says_how_much_was_cut() {
        let long = "word ".repeat(400) + "\nsecond line " + &"x".repeat(300);
        let record = record("tool", Severity::Error, &long, 4);
        for encoding in Encoding::ALL {
            for cap in [40, 64, 200] {
                let clipped = clip_record(&record, encoding, cap).unwrap();
                assert!(clipped.tokens <= cap);
                assert_eq!(clipped.tokens, encoding.count(&clipped.text));
                assert!(clipped.text.starts_with("10:31:44 [tool] ERROR: word word"));
                assert!(clipped.text.ends_with(&format!(
                    " …[{} more chars clipped] x4\n",
                    clipped.clipped_chars
                )));
            }
            assert_eq!(clip_record(&record, encoding, 5), None);
        }
    }

    #[test]
    fn earlier_line_matches_the_design_example() {
        let at = |clock: &str| parse_timestamp(&format!("2024-05-01T{clock}Z")).ok();
        let summary = EarlierSummary {
            events: 412,
            first_ts: at("09:58:02"),
            last_ts: at("10:31:40"),
            kinds: vec![
                ("tool".into(), 210),
                ("action".into(), 120),
                ("llm".into(), 70),
                ("rag".into(), 12),
            ],
            severities: [0, 392, 17, 3, 0],
            repeats: 96,
        };
        assert_eq!(
            earlier_piece(&summary),
            "## Earlier (412 events 09:58:02–10:31:40 not shown)\nkinds: tool=210 action=120 llm=70 rag=12 · severities: error=3 warning=17 · repeats collapsed: 96\n"
        );
        let one = EarlierSummary {
            events: 1,
            first_ts: at("09:58:02"),
            last_ts: at("09:58:02"),
            kinds: vec![("tool".into(), 1)],
            severities: [0, 1, 0, 0, 0],
            repeats: 0,
        };
        assert_eq!(
            earlier_piece(&one),
            "## Earlier (1 event at 09:58:02 not shown)\nkinds: tool=1\n"
        );
    }
}
