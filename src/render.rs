//! The only place that formats context text.
//!
//! A context is a sequence of pieces: section headers, notes, the Earlier summary and record
//! lines. Every piece ends with `\n` and starts with a non-space character (`#`, `-`, a digit),
//! which is what makes a context's token count the sum of its pieces' counts (see
//! [`crate::tokens`]). A record line is `HH:MM:SS [kind]: message` (the time the record last
//! happened, UTC), with the severity after the
//! kind when it is above `info`, ` xN` when the record stands for N > 1 events, and continuation
//! lines of a multi-line message indented by two spaces.

use std::borrow::Cow;
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

/// Characters other than `\n` that a reader may take for a line break (Python's `splitlines`
/// does): rendered as `\n`, so that every line of a context is one of recap's.
const OTHER_BREAKS: [char; 6] = ['\r', '\u{b}', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}'];

/// `text` with `\r\n` and every other line break as `\n`.
fn normalize_breaks(text: &str) -> Cow<'_, str> {
    if !text.contains(OTHER_BREAKS) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.replace("\r\n", "\n").replace(OTHER_BREAKS, "\n"))
}

/// Appends `text` as the body of a piece: its first line as is, each further line on its own
/// line indented by two spaces. `\r\n` and other line breaks become `\n`; leading blank lines
/// and trailing line breaks are dropped.
fn push_body(out: &mut String, text: &str) {
    let text = normalize_breaks(text);
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
    record_line_with(record, &record.message, Cut::None)
}

/// How a shown message was cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Not at all.
    None,
    /// Its end was cut: `…[N more chars clipped]`.
    Clipped(usize),
    /// A headline: the cuts are marked inside the text with `…`.
    Headline,
}

/// Whether a message renders on more than one line (leading blank lines and trailing line
/// breaks do not count, as [`push_body`] drops them).
fn is_multi_line(message: &str) -> bool {
    let message = normalize_breaks(message);
    let text = message.trim_end_matches(['\n', '\r']);
    text.find(|c: char| !c.is_whitespace())
        .is_some_and(|first| text[first..].contains('\n'))
}

/// The line's head: `HH:MM:SS [kind] SEVERITY`, and ` xN` when the record's message spans
/// several lines, so that the count stays on the first line instead of reading as part of the
/// message's last line of output.
fn push_head(out: &mut String, record: &Record, multi_line: bool) {
    out.push_str(&clock(&record.last_ts));
    out.push_str(" [");
    out.push_str(record.kind.as_str());
    out.push(']');
    if record.severity > Severity::Info {
        out.push(' ');
        out.push_str(&record.severity.as_str().to_ascii_uppercase());
    }
    if multi_line && record.repeat_count > 1 {
        let _ = write!(out, " x{}", record.repeat_count);
    }
    out.push(':');
}

/// A record's line showing `message` (a prefix of the record's message, or its headline) cut as
/// `cut` says. The repeat count goes where the seed format puts it (` xN` at the end) for
/// single-line messages and on the head for multi-line ones.
fn record_line_with(record: &Record, message: &str, cut: Cut) -> String {
    let multi_line = cut != Cut::Headline && is_multi_line(&record.message);
    let mut out = String::with_capacity(message.len() + 48);
    push_head(&mut out, record, multi_line);
    if !message.is_empty() {
        out.push(' ');
        push_body(&mut out, message);
    }
    if let Cut::Clipped(chars) = cut {
        let _ = write!(out, " …[{chars} more chars clipped]");
    }
    if !multi_line && record.repeat_count > 1 {
        let _ = write!(out, " x{}", record.repeat_count);
    }
    out.push('\n');
    out
}

/// A record's line cut to fit a token cap: clipped to a prefix, or a one-line headline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClippedLine {
    /// The line, with its cut marked, ending with a newline.
    pub text: String,
    /// Its token count.
    pub tokens: u32,
    /// How many characters of the message are not shown.
    pub clipped_chars: usize,
}

/// The longest line for `record` whose token count is at most `max_tokens`, with the message
/// cut short and marked; `None` when not even the line's head and marker fit.
pub fn clip_record(record: &Record, encoding: Encoding, max_tokens: u32) -> Option<ClippedLine> {
    let (ends, _) = encoding.token_ends_within(&record.message, max_tokens);
    clip_record_at(record, encoding, max_tokens, &ends)
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
    let overhead = encoding.count(&record_line_with(
        record,
        "",
        Cut::Clipped(total_chars.max(1)),
    ));
    let mut allowance = max_tokens.checked_sub(overhead)?;
    loop {
        let prefix = encoding.prefix_within(&record.message, ends, allowance);
        let clipped_chars = (total_chars - prefix.chars().count()).max(1);
        let text = record_line_with(record, prefix, Cut::Clipped(clipped_chars));
        let tokens = encoding.count(&text);
        if tokens <= max_tokens {
            return Some(ClippedLine {
                text,
                tokens,
                clipped_chars,
            });
        }
        // Continuation-line indents cost tokens the allowance did not see: shrink and retry.
        if allowance == 0 {
            return None;
        }
        allowance = allowance.saturating_sub(tokens - max_tokens);
    }
}

/// Kinds whose messages are prose (what was asked, planned, said or noted): their headline runs
/// on from the first line. Other kinds carry output, whose last line tells how it ended (the
/// exception after a traceback, the summary after a test run), so their headline is the first
/// line and the last.
pub const PROSE_KINDS: [&str; 7] = ["task", "user", "plan", "note", "llm", "agent", "policy"];
/// A headline's last line has at least this many characters (shorter trailing lines are
/// skipped, and counted among the lines left out).
const MIN_LAST_LINE_CHARS: usize = 8;
/// Joins two lines of a headline with nothing left out between them.
const HEADLINE_JOIN: &str = " ⏎ ";
/// Marks where a headline's text was cut.
const HEADLINE_CUT: &str = "…";
/// A headline never reads more than this many bytes of a line per token it may show: enough
/// for any text (tokens average about 4 bytes), and it keeps a 20 KB line from being tokenized
/// to show 30 tokens of it.
const HEADLINE_BYTES_PER_TOKEN: usize = 12;

/// A record as one short line of at most `max_tokens`: the first line of its message and, for
/// output, its last line (`first …[+N lines]… last`); prose runs on over its lines joined by
/// `⏎`. Cuts are marked with `…`, and the count (` xN`) ends the line. `None` when not even the
/// head fits.
pub fn headline(record: &Record, encoding: Encoding, max_tokens: u32) -> Option<ClippedLine> {
    let message = normalize_breaks(&record.message);
    let mut lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    // A last line of a few characters (a shell prompt, a closing fence or brace) says nothing of
    // how the output ended: the headline ends on the last line that does, or at least on the
    // last one with a letter or digit in it.
    let all_lines = lines.len();
    if all_lines > 2 {
        let telling = |line: &&str| line.chars().count() >= MIN_LAST_LINE_CHARS;
        let wordy = |line: &&str| line.chars().any(char::is_alphanumeric);
        let body = &lines[1..];
        if let Some(last) = body
            .iter()
            .rposition(telling)
            .or_else(|| body.iter().rposition(wordy))
        {
            lines.truncate(last + 2);
        }
    }
    let overhead = encoding.count(&record_line_with(record, HEADLINE_CUT, Cut::Headline));
    let mut allowance = max_tokens.checked_sub(overhead)?;
    let total_chars = record.message.chars().count();
    let prose = PROSE_KINDS.contains(&record.kind.as_str());
    let limit = (max_tokens as usize).saturating_mul(HEADLINE_BYTES_PER_TOKEN);
    let (first, joiner, last) = match lines.as_slice() {
        [] => ("", String::new(), None),
        [only] => (*only, String::new(), None),
        [first, .., last] if !prose => {
            let joiner = match all_lines - 2 {
                0 => HEADLINE_JOIN.to_owned(),
                skipped => format!(" …[+{skipped} lines]… "),
            };
            (*first, joiner, Some(*last))
        }
        _ => ("", String::new(), None),
    };
    let prose_text;
    let mut runs_on = false;
    let first = if prose && lines.len() > 1 {
        let (text, complete) = join_within(&lines, limit);
        prose_text = text;
        runs_on = !complete;
        prose_text.as_str()
    } else {
        first
    };
    let joiner_tokens = if joiner.is_empty() {
        0
    } else {
        encoding.count(&joiner)
    };
    loop {
        let body_allowance = allowance.saturating_sub(joiner_tokens);
        let (first_shown, last_shown) = match last {
            None => (clip_text(encoding, first, body_allowance, limit), None),
            Some(last) => {
                // The first line gets up to three fifths, the last line what is left.
                let first_share = body_allowance * 3 / 5;
                let first_shown = clip_text(encoding, first, first_share, limit);
                let used = encoding.count(first_shown);
                let last_shown = clip_text(encoding, last, body_allowance - used, limit);
                (first_shown, Some(last_shown))
            }
        };
        let mut body = String::with_capacity(first_shown.len() + 64);
        body.push_str(first_shown);
        let mut shown_chars = first_shown.chars().count();
        if runs_on || first_shown.len() < first.len() {
            body.push_str(HEADLINE_CUT);
        }
        if let (Some(last), Some(last_shown)) = (last, last_shown) {
            body.push_str(&joiner);
            body.push_str(last_shown);
            shown_chars += last_shown.chars().count();
            if last_shown.len() < last.len() {
                body.push_str(HEADLINE_CUT);
            }
        }
        let text = record_line_with(record, &body, Cut::Headline);
        let tokens = encoding.count(&text);
        if tokens <= max_tokens {
            return Some(ClippedLine {
                text,
                tokens,
                clipped_chars: total_chars.saturating_sub(shown_chars),
            });
        }
        if allowance == 0 {
            return None;
        }
        allowance = allowance.saturating_sub(tokens - max_tokens);
    }
}

/// `lines` joined by [`HEADLINE_JOIN`], stopping once the text is `limit` bytes long; and
/// whether every line is in it.
fn join_within(lines: &[&str], limit: usize) -> (String, bool) {
    let mut out = String::new();
    for (index, line) in lines.iter().enumerate() {
        if out.len() >= limit {
            return (out, index == lines.len());
        }
        if !out.is_empty() {
            out.push_str(HEADLINE_JOIN);
        }
        out.push_str(line);
    }
    (out, true)
}

/// The longest prefix of `text` within `max_tokens`, reading at most `limit` bytes of it.
fn clip_text(encoding: Encoding, text: &str, max_tokens: u32, limit: usize) -> &str {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = &text[..end];
    let prefix = encoding.prefix_within(head, &encoding.token_ends(head), max_tokens);
    if prefix.len() == text.len() {
        return text;
    }
    // Leave the cut on a word's end where one is near: `…` after a whole word reads better.
    match prefix.rfind(' ') {
        Some(space) if space * 4 >= prefix.len() * 3 => prefix[..space].trim_end(),
        _ => prefix,
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

/// How much the Earlier section says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlierForm {
    /// The header and the breakdown by kind, severity and repeats.
    Full,
    /// The header alone: what a small budget can still afford, so nothing goes unmentioned.
    Short,
}

/// The Earlier section: a header naming how many events are not shown and when they happened,
/// and, in the full form, a line breaking them down by kind and severity.
pub fn earlier_piece(summary: &EarlierSummary, form: EarlierForm) -> String {
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
    if form == EarlierForm::Short {
        return out;
    }

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
                "10:31:44 [tool] CRITICAL x2: Traceback:\n    File x\n  ValueError: y\n",
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
                assert!(
                    clipped
                        .text
                        .starts_with("10:31:44 [tool] ERROR x4: word word")
                );
                assert!(clipped.text.ends_with(&format!(
                    " …[{} more chars clipped]\n",
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
            earlier_piece(&summary, EarlierForm::Full),
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
            earlier_piece(&one, EarlierForm::Full),
            "## Earlier (1 event at 09:58:02 not shown)\nkinds: tool=1\n"
        );
    }

    #[test]
    fn headlines_show_how_output_began_and_ended_and_how_prose_runs_on() {
        let traceback = record(
            "tool",
            Severity::Error,
            "Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\n    import flask\nModuleNotFoundError: No module named 'flask'\n$\n",
            3,
        );
        let line = headline(&traceback, Encoding::Cl100kBase, 48).unwrap();
        assert_eq!(
            line.text,
            "10:31:44 [tool] ERROR: Traceback (most recent call last): …[+3 lines]… ModuleNotFoundError: No module named 'flask' x3\n"
        );
        let task = record(
            "task",
            Severity::Info,
            "Fix the issue below.\nISSUE:\nTimeDelta serialization precision\nHi there!",
            1,
        );
        let line = headline(&task, Encoding::Cl100kBase, 48).unwrap();
        assert_eq!(
            line.text,
            "10:31:44 [task]: Fix the issue below. ⏎ ISSUE: ⏎ TimeDelta serialization precision ⏎ Hi there!\n"
        );
        let short = headline(&task, Encoding::Cl100kBase, 14).unwrap();
        assert!(short.text.ends_with("…\n"), "{}", short.text);
        assert!(short.tokens <= 14);
        assert_eq!(headline(&task, Encoding::Cl100kBase, 4), None);
    }

    proptest::proptest! {
        /// A headline is one line, within its cap, counted exactly, and keeps the count last.
        #[test]
        fn headlines_fit_their_cap(
            lines in proptest::collection::vec("[ -~]{0,120}|ünï 🎉 日本語", 0..12),
            kind in proptest::sample::select(vec!["tool", "task", "observation", "llm"]),
            repeat_count in 1u64..5,
            cap in 1u32..80,
        ) {
            let record = record(kind, Severity::Warning, &lines.join("\n"), repeat_count);
            for encoding in Encoding::ALL {
                if let Some(line) = headline(&record, encoding, cap) {
                    proptest::prop_assert!(line.tokens <= cap);
                    proptest::prop_assert_eq!(line.tokens, encoding.count(&line.text));
                    proptest::prop_assert_eq!(line.text.matches('\n').count(), 1);
                    if repeat_count > 1 {
                        let count = format!(" x{repeat_count}\n");
                        proptest::prop_assert!(line.text.ends_with(&count));
                    }
                }
            }
        }
    }

    #[test]
    fn every_kind_of_line_break_starts_an_indented_line() {
        let message = "one\rtwo\u{2028}three\u{85}four\u{b}five\r\nsix";
        let line = record_line(&record("tool", Severity::Info, message, 2));
        assert_eq!(
            line,
            "10:31:44 [tool] x2: one\n  two\n  three\n  four\n  five\n  six\n"
        );
        for encoding in Encoding::ALL {
            let headline = headline(&record("tool", Severity::Info, message, 2), encoding, 48);
            assert_eq!(headline.unwrap().text.matches('\n').count(), 1);
        }
    }
}
