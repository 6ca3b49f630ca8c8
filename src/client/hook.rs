//! `recap hook`: one coding-agent hook event (Claude Code's or Codex's, JSON on stdin) posted
//! to a stream, and, for the events whose output becomes the agent's context, the stream's
//! context window printed in the shape the hook protocol reads.
//!
//! Both agents send the same shape: `hook_event_name`, `session_id`, `cwd`, and per event
//! `source` (SessionStart), `prompt` (UserPromptSubmit), `tool_name`/`tool_input`/
//! `tool_response` (PreToolUse, PostToolUse), `error` (Claude Code's PostToolUseFailure),
//! `trigger` (PreCompact), `last_assistant_message` (Stop). [`plan`] maps an event to recap
//! events without I/O; [`run`] posts them and fetches the window.
//!
//! What the two agents do with a hook's stdout, as documented (and what decides what recap
//! prints): on SessionStart and UserPromptSubmit, `hookSpecificOutput.additionalContext` is
//! added to the model's context (both agents). PreCompact's stdout is not: Claude Code shows
//! it to the user in verbose mode only and accepts no `hookSpecificOutput` for it, Codex reads
//! only its JSON control fields. So PreCompact prints nothing; the window comes back after a
//! compaction through SessionStart, which both agents fire with `source: "compact"`.
//!
//! Tool results differ: Claude Code sends successes to PostToolUse (an object per tool, e.g.
//! Bash's `{stdout, stderr, interrupted}`) and failures to PostToolUseFailure (`error`); Codex
//! sends every finished Bash command to PostToolUse with `tool_response` the command's output
//! as one string, without its exit status. A Codex command's outcome is therefore not
//! known (see [`Outcome::Unknown`]): its event says what it printed, at `info`.

use bytes::Bytes;
use http::Method;
use serde_json::{Map, Value, json};

use crate::event::StreamName;

use super::commands::{self, ContextArgs, WriteAnswer};
use super::{Client, ClientError};

/// Most bytes of tool output kept in an event: its head and its tail, half each. The head
/// says what ran, the tail how it ended (the error, the test summary); the middle of a long
/// build log is what repeat collapse and budgets cannot use anyway.
pub const MAX_OUTPUT_BYTES: usize = 2_000;
/// Most bytes of a prompt, a tool's input or an assistant message kept in an event.
pub const MAX_TEXT_BYTES: usize = 4_000;
/// Most bytes of a tool's input in an event's one-line message.
const MAX_INPUT_SUMMARY_BYTES: usize = 200;

/// How a tool call ended, as far as its hook event says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It worked: Claude Code's PostToolUse (its failures go to PostToolUseFailure), or a
    /// response that says so.
    Succeeded,
    /// It failed: PostToolUseFailure, an `error`, a non-zero exit code, `success: false`, an
    /// interruption.
    Failed,
    /// The response is bare output (Codex's Bash: the output text without an exit status).
    Unknown,
}

/// What one hook event becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct HookPlan {
    /// The hook's event name (`SessionStart`, ...).
    pub event_name: String,
    /// The events to post, as `POST .../events` takes them.
    pub events: Vec<Map<String, Value>>,
    /// Whether to print the context window (as `hookSpecificOutput.additionalContext`): for
    /// the events whose output becomes the agent's context.
    pub shows_window: bool,
}

/// Why a hook input was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// Not a JSON object with `hook_event_name`.
    #[error(
        "the hook input is not a hook event: {0}; recap hook reads one Claude Code or Codex hook event (a JSON object with hook_event_name) on stdin"
    )]
    NotAnEvent(String),
}

/// Maps one hook event to recap events and the output it asks for.
pub fn plan(input: &Value) -> Result<HookPlan, HookError> {
    let object = input
        .as_object()
        .ok_or_else(|| HookError::NotAnEvent("it is not a JSON object".to_owned()))?;
    let event_name = text(object, "hook_event_name")
        .ok_or_else(|| HookError::NotAnEvent("hook_event_name is missing".to_owned()))?
        .to_owned();
    let mut payload = Map::new();
    for field in ["session_id", "turn_id", "cwd", "model"] {
        if let Some(value) = object.get(field).filter(|value| !value.is_null()) {
            payload.insert(field.to_owned(), value.clone());
        }
    }
    let event = |kind: &str, severity: &str, message: String, payload: Map<String, Value>| {
        let mut event = Map::new();
        event.insert("kind".to_owned(), json!(kind));
        event.insert("severity".to_owned(), json!(severity));
        event.insert("message".to_owned(), json!(message));
        if !payload.is_empty() {
            event.insert("payload".to_owned(), Value::Object(payload));
        }
        event
    };
    let tool = object_tool(object);
    let (events, shows_window) = match event_name.as_str() {
        "SessionStart" => {
            let source = text(object, "source").unwrap_or("startup");
            let message = format!("session started ({source})");
            (vec![event("session", "info", message, payload)], true)
        }
        "UserPromptSubmit" => {
            let prompt = trim_middle(text(object, "prompt").unwrap_or(""), MAX_TEXT_BYTES);
            (vec![event("user", "info", prompt, payload)], true)
        }
        "PreToolUse" => {
            let (name, summary, input) = tool;
            payload.insert("tool_input".to_owned(), input);
            let message = format!("{name} {summary}").trim_end().to_owned();
            (vec![event("tool_call", "debug", message, payload)], false)
        }
        "PostToolUse" | "PostToolUseFailure" => {
            let (name, summary, input) = tool;
            payload.insert("tool_input".to_owned(), input);
            let response = object.get("tool_response").unwrap_or(&Value::Null);
            let error = text(object, "error").map(str::to_owned);
            let outcome = outcome(&event_name, response, error.is_some());
            let output = error.unwrap_or_else(|| response_text(response));
            let output = trim_middle(output.trim(), MAX_OUTPUT_BYTES);
            let head = format!("{name} {summary}");
            let message = match (outcome, output.is_empty()) {
                (Outcome::Failed, true) => format!("{head} → failed"),
                (Outcome::Failed, false) => format!("{head} → failed: {output}"),
                (Outcome::Succeeded, true) => format!("{head} → ok"),
                (Outcome::Succeeded, false) => format!("{head} → ok: {output}"),
                (Outcome::Unknown, true) => format!("{head} → no output"),
                (Outcome::Unknown, false) => format!("{head} → {output}"),
            };
            let severity = if outcome == Outcome::Failed {
                "error"
            } else {
                "info"
            };
            (vec![event("tool", severity, message, payload)], false)
        }
        "PreCompact" => {
            let trigger = text(object, "trigger").unwrap_or("auto");
            let message = format!("context compaction ({trigger})");
            (vec![event("session", "info", message, payload)], false)
        }
        "Stop" | "SubagentStop" => {
            let said = text(object, "last_assistant_message")
                .map(|said| trim_middle(said.trim(), MAX_TEXT_BYTES))
                .filter(|said| !said.is_empty());
            let message = match said {
                Some(said) => format!("turn ended: {said}"),
                None => "turn ended".to_owned(),
            };
            let kind = if event_name == "Stop" {
                "llm"
            } else {
                "subagent"
            };
            (vec![event(kind, "info", message, payload)], false)
        }
        "SessionEnd" => {
            let reason = text(object, "reason").unwrap_or("exit");
            let message = format!("session ended ({reason})");
            (vec![event("session", "info", message, payload)], false)
        }
        "Notification" => {
            let message = text(object, "message").unwrap_or("notification").to_owned();
            (
                vec![event("notification", "warning", message, payload)],
                false,
            )
        }
        other => {
            // An event this build does not know: kept whole (trimmed) for later reading.
            let compact = trim_middle(&input.to_string(), MAX_TEXT_BYTES);
            let message = format!("{other}: {compact}");
            (vec![event("hook", "info", message, payload)], false)
        }
    };
    Ok(HookPlan {
        event_name,
        events,
        shows_window,
    })
}

/// Posts the events of one hook input to `stream`; returns what to print on stdout (empty when
/// the event shows nothing to the agent, or the window is empty).
pub async fn run(
    client: &Client,
    stream: &StreamName,
    input: &str,
    budget: Option<u32>,
) -> Result<String, ClientError> {
    let input: Value = serde_json::from_str(input).map_err(|error| {
        ClientError::Protocol(HookError::NotAnEvent(error.to_string()).to_string())
    })?;
    let plan = plan(&input).map_err(|error| ClientError::Protocol(error.to_string()))?;
    let body = Value::Array(plan.events.into_iter().map(Value::Object).collect()).to_string();
    let _: WriteAnswer = client
        .json(
            Method::POST,
            &format!("/v1/streams/{stream}/events"),
            Some(("application/json", Bytes::from(body))),
        )
        .await?;
    if !plan.shows_window {
        return Ok(String::new());
    }
    let args = ContextArgs {
        budget,
        ..ContextArgs::default()
    };
    let window = commands::context(client, stream, &args).await?;
    if window.body.trim().is_empty() {
        return Ok(String::new());
    }
    Ok(json!({
        "hookSpecificOutput": {
            "hookEventName": plan.event_name,
            "additionalContext": window.body,
        }
    })
    .to_string())
}

fn text<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    object.get(field).and_then(Value::as_str)
}

/// A tool's name, a one-line summary of its input (the command, the file), and its input as
/// kept in the payload (trimmed).
fn object_tool(object: &Map<String, Value>) -> (String, String, Value) {
    let name = text(object, "tool_name").unwrap_or("tool").to_owned();
    let input = object.get("tool_input").cloned().unwrap_or(Value::Null);
    let summary = match &input {
        Value::String(command) => command.clone(),
        Value::Object(fields) => [
            "command",
            "cmd",
            "file_path",
            "path",
            "pattern",
            "url",
            "query",
        ]
        .iter()
        .find_map(|field| fields.get(*field).and_then(Value::as_str))
        .map_or_else(|| input.to_string(), str::to_owned),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let summary = trim_middle(&summary.replace('\n', " ⏎ "), MAX_INPUT_SUMMARY_BYTES);
    let kept = input.to_string();
    let input = if kept.len() > MAX_TEXT_BYTES {
        json!(trim_middle(&kept, MAX_TEXT_BYTES))
    } else {
        input
    };
    (name, summary, input)
}

/// How a tool call ended: failed if the event or its response says so; succeeded if the
/// response is an object (Claude Code's results; its failures are PostToolUseFailure events);
/// unknown for bare output (Codex's Bash sends the output text alone).
fn outcome(event_name: &str, response: &Value, has_error: bool) -> Outcome {
    if event_name == "PostToolUseFailure" || has_error || failed(response) {
        Outcome::Failed
    } else if response.is_object() {
        Outcome::Succeeded
    } else {
        Outcome::Unknown
    }
}

/// Whether a tool's response says it failed: an error flag, a non-zero exit code, a
/// `success: false`, an interruption.
fn failed(response: &Value) -> bool {
    let Some(fields) = response.as_object() else {
        return false;
    };
    let flag = |name: &str| fields.get(name).and_then(Value::as_bool);
    let exit_code = ["exit_code", "exitCode", "returncode"]
        .iter()
        .find_map(|name| fields.get(*name).and_then(Value::as_i64));
    flag("is_error") == Some(true)
        || flag("isError") == Some(true)
        || flag("interrupted") == Some(true)
        || flag("success") == Some(false)
        || exit_code.is_some_and(|code| code != 0)
        || fields
            .get("error")
            .is_some_and(|error| !error.is_null() && error != "")
}

/// A tool's output as text: a string as it is; stdout and stderr (Bash); else the first of
/// `output`, `content`, `result`, `error`, `message`, `file.content` that is text; else the JSON.
fn response_text(response: &Value) -> String {
    match response {
        Value::Null => String::new(),
        Value::String(output) => output.clone(),
        Value::Object(fields) => {
            let stream = |name: &str| fields.get(name).and_then(Value::as_str).unwrap_or("");
            let (stdout, stderr) = (stream("stdout"), stream("stderr"));
            if !stdout.is_empty() || !stderr.is_empty() {
                return [stdout.trim_end(), stderr.trim_end()]
                    .iter()
                    .filter(|part| !part.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            // Claude Code's Read answers `{"file": {"content", ...}}`.
            let file = fields.get("file").and_then(|file| file.get("content"));
            ["output", "content", "result", "error", "message"]
                .iter()
                .find_map(|name| fields.get(*name))
                .or(file)
                .and_then(Value::as_str)
                .map_or_else(|| response.to_string(), str::to_owned)
        }
        other => other.to_string(),
    }
}

/// `text` if it fits in `max` bytes; else its head and tail (half each, cut at char
/// boundaries) around a marker that says how much was left out.
pub fn trim_middle(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let half = max / 2;
    let mut head_end = half;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - half;
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    let left_out = tail_start - head_end;
    format!(
        "{} …[{left_out} bytes trimmed]… {}",
        &text[..head_end],
        &text[tail_start..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: Value) -> (Map<String, Value>, bool) {
        let plan = plan(&input).unwrap();
        assert_eq!(plan.events.len(), 1);
        (plan.events[0].clone(), plan.shows_window)
    }

    #[test]
    fn context_events_ask_for_the_window() {
        let (event, shows) =
            one(json!({"hook_event_name": "SessionStart", "source": "resume", "session_id": "s1"}));
        assert_eq!(event["message"], "session started (resume)");
        assert_eq!(event["payload"]["session_id"], "s1");
        assert!(shows);
        let (event, shows) =
            one(json!({"hook_event_name": "UserPromptSubmit", "prompt": "fix the test"}));
        assert_eq!(
            (event["kind"].as_str(), event["message"].as_str()),
            (Some("user"), Some("fix the test"))
        );
        assert!(shows);
        // PreCompact's stdout reaches neither agent's model: it prints nothing.
        let (event, shows) = one(json!({"hook_event_name": "PreCompact", "trigger": "auto"}));
        assert_eq!(event["message"], "context compaction (auto)");
        assert!(!shows);
        let (_, shows) = one(json!({"hook_event_name": "Stop"}));
        assert!(!shows);
    }

    #[test]
    fn a_failed_tool_call_is_an_error() {
        let (event, _) = one(json!({
            "hook_event_name": "PostToolUse", "tool_name": "Bash",
            "tool_input": {"command": "cargo test"},
            "tool_response": {"stdout": "", "stderr": "error[E0425]: cannot find value", "exit_code": 101}
        }));
        assert_eq!(event["severity"], "error");
        assert_eq!(
            event["message"],
            "Bash cargo test → failed: error[E0425]: cannot find value"
        );
        let (event, _) = one(json!({
            "hook_event_name": "PostToolUseFailure", "tool_name": "Read",
            "tool_input": {"file_path": "/x"}, "error": "File does not exist."
        }));
        assert_eq!(
            (event["severity"].as_str(), event["message"].as_str()),
            (
                Some("error"),
                Some("Read /x → failed: File does not exist.")
            )
        );
        let (event, _) = one(json!({
            "hook_event_name": "PostToolUse", "tool_name": "Bash",
            "tool_input": {"command": "ls"}, "tool_response": {"stdout": "a\nb", "stderr": "", "interrupted": false}
        }));
        assert_eq!(
            (event["severity"].as_str(), event["message"].as_str()),
            (Some("info"), Some("Bash ls → ok: a\nb"))
        );
    }

    #[test]
    fn a_codex_command_s_bare_output_has_no_verdict() {
        let (event, _) = one(json!({
            "hook_event_name": "PostToolUse", "tool_name": "Bash", "turn_id": "t1",
            "tool_input": {"command": "npm test"}, "tool_response": "FAIL src/parser.test.ts\n"
        }));
        assert_eq!(
            (event["severity"].as_str(), event["message"].as_str()),
            (
                Some("info"),
                Some("Bash npm test → FAIL src/parser.test.ts")
            )
        );
        let (event, _) = one(json!({
            "hook_event_name": "PostToolUse", "tool_name": "Bash",
            "tool_input": {"command": "true"}, "tool_response": ""
        }));
        assert_eq!(event["message"], "Bash true → no output");
    }

    #[test]
    fn long_output_keeps_head_and_tail() {
        let output = format!("START{}END", "x".repeat(10_000));
        let (event, _) = one(json!({
            "hook_event_name": "PostToolUse", "tool_name": "Bash",
            "tool_input": {"command": "make"}, "tool_response": output
        }));
        let message = event["message"].as_str().unwrap();
        assert!(
            message.contains("START") && message.ends_with("END"),
            "{message}"
        );
        assert!(message.contains("bytes trimmed"), "{message}");
        assert!(message.len() < MAX_OUTPUT_BYTES + 100);
        // Cuts fall on char boundaries.
        let trimmed = trim_middle(&"é".repeat(1000), 101);
        assert!(trimmed.starts_with('é') && trimmed.ends_with('é'));
    }

    #[test]
    fn refuses_what_is_not_a_hook_event() {
        assert!(plan(&json!([1])).is_err());
        assert!(plan(&json!({"prompt": "x"})).is_err());
    }
}
