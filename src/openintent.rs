//! OpenIntent compatibility, the pure part: how OpenIntent `event_type`s map to recap kinds and
//! severities, how a payload becomes a message, and how records go back out as events the
//! unmodified `openintent` Python client (0.17.0) accepts.
//!
//! The client parses every event it receives with `EventType(value)` and has no fallback, so an
//! event type outside its enum makes a whole `get_events` call fail. Records are therefore sent
//! back with their original `event_type` when they came in through OpenIntent, and as `comment`
//! otherwise, with recap's view of them (kind, severity, message, repeat count) in the payload.

use crate::payload::Payload;
use serde_json::{Map, Value, json};

use crate::event::{
    Event, EventError, EventLimits, Kind, MAX_LABEL_BYTES, Record, Severity, StreamName, Timestamp,
};

/// Payload key under which recap keeps the OpenIntent envelope (`event_type`, `trace_id`,
/// `parent_event_id`) of an event that came in through the compatibility routes. It is removed
/// again before the payload goes back to an OpenIntent client.
pub const ENVELOPE_KEY: &str = "_openintent";

/// The `event_type` used for records that did not come in through OpenIntent.
pub const NATIVE_EVENT_TYPE: &str = "comment";

/// Every `EventType` value of the `openintent` 0.17.0 client (`openintent/models.py`), in its
/// order. Only these may be sent to the client.
pub const EVENT_TYPES: [&str; 126] = [
    "intent_created",
    "state_patched",
    "status_changed",
    "agent_assigned",
    "agent_unassigned",
    "constraint_added",
    "constraint_removed",
    "dependency_added",
    "dependency_removed",
    "lease_acquired",
    "lease_released",
    "arbitration_requested",
    "decision_recorded",
    "attachment_added",
    "portfolio_created",
    "added_to_portfolio",
    "removed_from_portfolio",
    "failure_recorded",
    "comment",
    "tool_call_started",
    "tool_call_completed",
    "tool_call_failed",
    "llm_request_started",
    "llm_request_completed",
    "llm_request_failed",
    "stream_started",
    "stream_chunk",
    "stream_completed",
    "stream_cancelled",
    "access_granted",
    "access_revoked",
    "access_expired",
    "access_requested",
    "access_request_approved",
    "access_request_denied",
    "task.created",
    "task.ready",
    "task.claimed",
    "task.started",
    "task.progress",
    "task.completed",
    "task.failed",
    "task.retrying",
    "task.blocked",
    "task.unblocked",
    "task.delegated",
    "task.escalated",
    "task.cancelled",
    "task.skipped",
    "plan.created",
    "plan.activated",
    "plan.paused",
    "plan.resumed",
    "plan.completed",
    "plan.failed",
    "plan.checkpoint_reached",
    "plan.checkpoint_approved",
    "plan.checkpoint_rejected",
    "coordinator.decision",
    "coordinator.heartbeat",
    "coordinator.paused",
    "coordinator.resumed",
    "coordinator.replaced",
    "coordinator.unresponsive",
    "coordinator.failed_over",
    "coordinator.handoff",
    "coordinator.plan_overridden",
    "coordinator.guardrails_updated",
    "coordinator.stalled",
    "coordinator.escalation_resolved",
    "governance.policy_set",
    "governance.policy_removed",
    "governance.approval_granted",
    "governance.approval_denied",
    "governance.violation",
    "tool.invoked",
    "tool.denied",
    "grant.created",
    "grant.delegated",
    "grant.revoked",
    "grant.expired",
    "grant.suspended",
    "grant.resumed",
    "credential.created",
    "credential.rotated",
    "credential.expired",
    "credential.revoked",
    "memory.created",
    "memory.updated",
    "memory.deleted",
    "memory.archived",
    "memory.evicted",
    "memory.expired",
    "agent.lifecycle",
    "agent.registered",
    "agent.status_changed",
    "agent.dead",
    "trigger.fired",
    "trigger.skipped",
    "trigger.cascade_limit",
    "trigger.namespace_blocked",
    "agent.identity.registered",
    "agent.identity.rotated",
    "agent.identity.revoked",
    "agent.identity.challenge_issued",
    "agent.identity.verified",
    "log.checkpoint.created",
    "log.checkpoint.anchored",
    "channel.created",
    "channel.closed",
    "channel.message",
    "governance.approval_enforced",
    "federation.dispatched",
    "federation.received",
    "federation.callback",
    "federation.budget_warning",
    "federation.completed",
    "federation.failed",
    "intent.suspended",
    "intent.resumed",
    "intent.suspension_expired",
    "engagement.decision",
    "intent.suspension_renotified",
    "intent.suspension_escalated",
    "portfolio.member_suspended",
    "portfolio.member_resumed",
];

/// Whether the `openintent` client can parse `event_type`.
pub fn is_known_event_type(event_type: &str) -> bool {
    EVENT_TYPES.contains(&event_type)
}

/// Exact mappings that the family rules below would get wrong or too coarse.
const EXACT: [(&str, &str, Severity); 40] = [
    ("tool_call_failed", "tool", Severity::Error),
    ("llm_request_failed", "llm", Severity::Error),
    ("stream_chunk", "llm", Severity::Debug),
    ("stream_cancelled", "llm", Severity::Warning),
    ("failure_recorded", "error", Severity::Error),
    ("comment", "note", Severity::Info),
    ("intent_created", "state", Severity::Info),
    ("state_patched", "state", Severity::Info),
    ("status_changed", "status", Severity::Info),
    ("arbitration_requested", "agent", Severity::Warning),
    ("lease_acquired", "state", Severity::Debug),
    ("lease_released", "state", Severity::Debug),
    ("access_expired", "security", Severity::Warning),
    ("access_request_denied", "security", Severity::Warning),
    ("task.retrying", "retry", Severity::Warning),
    ("task.progress", "task", Severity::Debug),
    ("task.blocked", "task", Severity::Warning),
    ("task.escalated", "task", Severity::Warning),
    ("task.cancelled", "task", Severity::Warning),
    ("plan.checkpoint_rejected", "plan", Severity::Warning),
    ("coordinator.heartbeat", "agent", Severity::Debug),
    ("coordinator.unresponsive", "agent", Severity::Warning),
    ("coordinator.stalled", "agent", Severity::Warning),
    ("coordinator.failed_over", "agent", Severity::Warning),
    ("governance.violation", "security", Severity::Error),
    ("governance.approval_denied", "policy", Severity::Warning),
    ("tool.invoked", "tool", Severity::Info),
    ("tool.denied", "security", Severity::Warning),
    ("grant.expired", "security", Severity::Warning),
    ("credential.expired", "security", Severity::Warning),
    ("memory.evicted", "state", Severity::Debug),
    ("memory.expired", "state", Severity::Debug),
    ("agent.dead", "agent", Severity::Error),
    ("trigger.cascade_limit", "trigger", Severity::Warning),
    ("trigger.namespace_blocked", "trigger", Severity::Warning),
    ("federation.budget_warning", "metric", Severity::Warning),
    ("intent.suspended", "status", Severity::Warning),
    ("intent.suspension_expired", "status", Severity::Warning),
    ("intent.suspension_escalated", "status", Severity::Warning),
    ("portfolio.member_suspended", "status", Severity::Warning),
];

/// Family prefixes, longest first where they overlap, and the kind each family maps to.
const FAMILIES: [(&str, &str); 28] = [
    ("tool_call_", "tool"),
    ("llm_request_", "llm"),
    ("stream_", "llm"),
    ("access_", "security"),
    ("agent.identity.", "security"),
    ("task.", "task"),
    ("plan.", "plan"),
    ("coordinator.", "agent"),
    ("governance.", "policy"),
    ("tool.", "tool"),
    ("grant.", "security"),
    ("credential.", "security"),
    ("memory.", "state"),
    ("agent.", "agent"),
    ("trigger.", "trigger"),
    ("log.checkpoint.", "state"),
    ("channel.", "agent"),
    ("federation.", "agent"),
    ("intent.", "status"),
    ("engagement.", "agent"),
    ("portfolio.", "state"),
    ("portfolio_", "state"),
    ("added_to_portfolio", "state"),
    ("removed_from_portfolio", "state"),
    ("agent_", "agent"),
    ("constraint_", "plan"),
    ("dependency_", "plan"),
    ("attachment_", "state"),
];

/// The recap kind and severity of an OpenIntent `event_type`.
///
/// Known types follow the table above (exact entries, then families, with severity `error` for
/// types ending in `failed`); `decision_recorded` and the rest of the enum are `agent`/`info`.
/// Types outside the enum keep their own name as the kind when it is a valid kind, with
/// `error` for names ending in `failed`, `failure` or `violation`, and `info` otherwise.
pub fn classify(event_type: &str) -> Result<(Kind, Severity), EventError> {
    let lower = event_type.to_ascii_lowercase();
    if let Some(&(_, kind, severity)) = EXACT.iter().find(|(name, _, _)| *name == lower) {
        return Ok((Kind::new(kind)?, severity));
    }
    let failed = ["failed", "failure", "violation"]
        .iter()
        .any(|end| lower.ends_with(end));
    let severity = if failed {
        Severity::Error
    } else {
        Severity::Info
    };
    if let Some(&(_, kind)) = FAMILIES
        .iter()
        .find(|(prefix, _)| lower.starts_with(prefix))
    {
        return Ok((Kind::new(kind)?, severity));
    }
    if is_known_event_type(&lower) {
        return Ok((Kind::new("agent")?, severity));
    }
    Kind::new(&lower)
        .map(|kind| (kind, severity))
        .map_err(|_| EventError::Json {
            field: Some("event_type".into()),
            detail: format!(
                "{event_type:?} is not an event type recap can store; use an OpenIntent event type (tool_call_failed, task.completed, ...) or 1 to 64 characters from a-z, 0-9 and `_ . : -`"
            ),
        })
}

/// The message of an OpenIntent event: `payload.message` when it is a string; otherwise a
/// one-line summary for the families whose payloads the client's helpers shape (tool calls, LLM
/// requests, streams, intent creation), so that the context window reads
/// `read_file({"path":"/x"}) failed: boom` rather than a dump of keys; otherwise a one-line
/// rendering `event_type key=value ...` with values as compact JSON, keys sorted.
///
/// Summaries keep what tells one event from another in a context window (tool, arguments,
/// error, model) and leave out per-call ids, so identical failures collapse into one record
/// with a repeat count. The whole payload is kept either way.
pub fn message_of(event_type: &str, payload: &Map<String, Value>) -> String {
    if let Some(Value::String(message)) = payload.get("message") {
        return message.clone();
    }
    summary(event_type, payload).unwrap_or_else(|| key_values(event_type, payload))
}

/// `event_type key=value ...`, keys sorted, values on one line.
fn key_values(event_type: &str, payload: &Map<String, Value>) -> String {
    let mut line = event_type.to_owned();
    let mut keys: Vec<&String> = payload
        .keys()
        .filter(|key| key.as_str() != ENVELOPE_KEY)
        .collect();
    keys.sort();
    for key in keys {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        line.push_str(&one_line(&payload[key.as_str()]));
    }
    line
}

/// A value on one line: strings as they are (line breaks as spaces), the rest as compact JSON.
fn one_line(value: &Value) -> String {
    match value {
        Value::String(text) => text.replace('\n', " "),
        other => other.to_string(),
    }
}

/// The summary of a tool-call, LLM-request, stream or intent-created event; `None` when the
/// payload lacks the fields the summary is built from (the generic rendering is used then).
fn summary(event_type: &str, payload: &Map<String, Value>) -> Option<String> {
    let text = |key: &str| payload.get(key).filter(|v| !v.is_null()).map(one_line);
    let duration = || {
        text("duration_ms")
            .map(|ms| format!(" ({ms} ms)"))
            .unwrap_or_default()
    };
    if let Some(outcome) = event_type.strip_prefix("tool_call_") {
        let call = format!(
            "{}({})",
            text("tool_name")?,
            payload
                .get("arguments")
                .map(Value::to_string)
                .unwrap_or_default()
        );
        return Some(match outcome {
            "started" => format!("{call} started"),
            "completed" => format!(
                "{call} -> {}{}",
                text("result").unwrap_or_else(|| "done".into()),
                duration()
            ),
            "failed" => format!(
                "{call} failed: {}{}",
                text("error").unwrap_or_else(|| "no error given".into()),
                duration()
            ),
            _ => return None,
        });
    }
    if let Some(outcome) = event_type.strip_prefix("llm_request_") {
        let model = format!("{}/{}", text("provider")?, text("model")?);
        return Some(match outcome {
            "started" => format!(
                "LLM request to {model} started ({} messages)",
                text("messages_count").unwrap_or_else(|| "?".into())
            ),
            "completed" => {
                let mut line = format!("LLM request to {model} completed");
                if let Some(reason) = text("finish_reason") {
                    line.push_str(&format!(": {reason}"));
                }
                if let Some(tokens) = text("total_tokens") {
                    line.push_str(&format!(", {tokens} tokens"));
                }
                line + &duration()
            }
            "failed" => format!(
                "LLM request to {model} failed: {}{}",
                text("error").unwrap_or_else(|| "no error given".into()),
                duration()
            ),
            _ => return None,
        });
    }
    match event_type {
        "stream_started" | "stream_completed" | "stream_cancelled" => {
            let model = format!("{}/{}", text("provider")?, text("model")?);
            let verb = &event_type["stream_".len()..];
            let mut line = format!("LLM stream from {model} {verb}");
            if let Some(tokens) = text("tokens_streamed").filter(|_| verb != "started") {
                line.push_str(&format!(", {tokens} tokens"));
            }
            if let Some(reason) = text("cancel_reason").or_else(|| text("reason")) {
                line.push_str(&format!(": {reason}"));
            }
            Some(line)
        }
        "intent_created" => Some(format!("intent created: {}", text("title")?)),
        _ => None,
    }
}

/// Cuts `message` to at most `max` bytes on a character boundary, saying how much was cut: a
/// rendered payload may be far longer than a message may be, and the payload keeps it all.
fn clip(mut message: String, max: usize) -> String {
    if message.len() <= max {
        return message;
    }
    let marker = format!(" [... {} bytes cut]", message.len());
    let mut end = max.saturating_sub(marker.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(&marker);
    message
}

/// An event as the OpenIntent client posts it.
#[derive(Clone, Debug, PartialEq)]
pub struct IncomingEvent {
    /// The event type (any string; mapped by [`classify`]).
    pub event_type: String,
    /// The posting agent (`X-Agent-ID` / `actor`).
    pub actor: Option<String>,
    /// The event's payload.
    pub payload: Map<String, Value>,
    /// Optional trace id.
    pub trace_id: Option<String>,
    /// Optional parent event id.
    pub parent_event_id: Option<String>,
}

impl IncomingEvent {
    /// The recap event it becomes: kind and severity from [`classify`] (a string
    /// `payload.severity` overrides the severity), message from [`message_of`], and the
    /// OpenIntent envelope kept in the payload under [`ENVELOPE_KEY`].
    ///
    /// A `payload.message` over the message limit is refused like any other message; a message
    /// rendered from the payload is clipped instead (the client did not choose its length).
    pub fn into_event(
        self,
        ts: Option<Timestamp>,
        limits: &EventLimits,
    ) -> Result<Event, EventError> {
        let (kind, mut severity) = classify(&self.event_type)?;
        if let Some(Value::String(name)) = self.payload.get("severity") {
            severity = name.parse()?;
        }
        for (field, value) in [
            ("actor", &self.actor),
            ("trace_id", &self.trace_id),
            ("parent_event_id", &self.parent_event_id),
        ] {
            if let Some(value) = value
                && value.len() > MAX_LABEL_BYTES
            {
                return Err(EventError::TooLong {
                    field,
                    len: value.len(),
                    max: MAX_LABEL_BYTES,
                });
            }
        }
        let message = match self.payload.get("message") {
            Some(Value::String(message)) if message.len() > limits.max_message_bytes => {
                return Err(EventError::TooLong {
                    field: "payload.message",
                    len: message.len(),
                    max: limits.max_message_bytes,
                });
            }
            _ => clip(
                message_of(&self.event_type, &self.payload),
                limits.max_message_bytes,
            ),
        };
        let mut payload = self.payload;
        let mut envelope = Map::new();
        envelope.insert("event_type".into(), Value::String(self.event_type));
        if let Some(trace_id) = self.trace_id {
            envelope.insert("trace_id".into(), Value::String(trace_id));
        }
        if let Some(parent) = self.parent_event_id {
            envelope.insert("parent_event_id".into(), Value::String(parent));
        }
        payload.insert(ENVELOPE_KEY.into(), Value::Object(envelope));
        Ok(Event {
            message,
            kind,
            severity,
            ts,
            display_message: None,
            actor: self.actor,
            step_id: None,
            payload: Some(Payload::from_object(&payload)),
        })
    }
}

/// `created_at` as the client parses it on every Python it supports: six fractional digits and
/// `+00:00` (Python 3.10's `fromisoformat` rejects `Z`).
pub fn created_at(ts: &Timestamp) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

/// The OpenIntent event id of a record: `{stream}:{seq}`, stable across reads.
pub fn event_id(stream: &StreamName, seq: u64) -> String {
    format!("{stream}:{seq}")
}

/// The OpenIntent envelope a record carries, if it came in through OpenIntent.
fn envelope_of(record: &Record) -> Option<Map<String, Value>> {
    let envelope = record.payload.as_ref()?.top_level(ENVELOPE_KEY)?;
    serde_json::from_str(envelope.get()).ok()
}

/// The `event_type` a record has for an OpenIntent client: its original type when it came in
/// through OpenIntent with a type the client knows, [`NATIVE_EVENT_TYPE`] otherwise. Filters
/// and outgoing events both use this, so a filter matches exactly what the client is shown.
pub fn event_type_of(record: &Record) -> &'static str {
    let envelope = envelope_of(record);
    let event_type = envelope
        .as_ref()
        .and_then(|envelope| envelope.get("event_type"))
        .and_then(Value::as_str);
    EVENT_TYPES
        .iter()
        .find(|known| Some(**known) == event_type)
        .unwrap_or(&NATIVE_EVENT_TYPE)
}

/// A record as an OpenIntent event object. Records that came in through OpenIntent keep their
/// event type and payload (minus the envelope); others go out as `comment` with recap's view of
/// them in the payload.
///
/// Besides the fields the client parses, the object carries `repeat_count` and `last_seen_at`
/// (the client ignores keys it does not know): identical consecutive events collapse into one
/// record, and these say how many there were and when the latest happened.
pub fn outgoing_event(stream: &StreamName, record: &Record) -> Value {
    let envelope = envelope_of(record);
    let envelope = envelope.as_ref();
    let event_type = event_type_of(record);
    let payload = if event_type == NATIVE_EVENT_TYPE && envelope.is_none() {
        let mut payload = json!({
            "kind": record.kind,
            "severity": record.severity,
            "message": record.message,
            "repeat_count": record.repeat_count,
        });
        if let Some(extra) = &record.payload {
            payload["payload"] = Value::Object(extra.to_object());
        }
        payload
    } else if envelope
        .and_then(|e| e.get("event_type"))
        .and_then(Value::as_str)
        == Some(event_type)
    {
        let mut payload = record
            .payload
            .as_ref()
            .map(Payload::to_object)
            .unwrap_or_default();
        payload.remove(ENVELOPE_KEY);
        Value::Object(payload)
    } else {
        // Came in through OpenIntent with a type this client does not know: a comment that
        // says what it was, with its payload.
        let mut original = record
            .payload
            .as_ref()
            .map(Payload::to_object)
            .unwrap_or_default();
        let envelope = original.remove(ENVELOPE_KEY);
        json!({
            "kind": record.kind,
            "severity": record.severity,
            "message": record.message,
            "repeat_count": record.repeat_count,
            "original_event_type": envelope.as_ref().and_then(|e| e.get("event_type")),
            "payload": original,
        })
    };
    let mut event = json!({
        "id": event_id(stream, record.seq),
        "intent_id": stream.as_str(),
        "event_type": event_type,
        "actor": record.actor,
        "payload": payload,
        "created_at": created_at(&record.first_ts),
        "sequence": record.seq,
        "repeat_count": record.repeat_count,
        "last_seen_at": created_at(&record.last_ts),
    });
    for key in ["trace_id", "parent_event_id"] {
        if let Some(value) = envelope.and_then(|envelope| envelope.get(key)) {
            event[key] = value.clone();
        }
    }
    event
}

/// The intent object of a stream, with the fields the client's `Intent.from_dict` reads.
///
/// `created` is the stream's `intent_created` record when it has one (written by
/// `POST /api/v1/intents`; its payload holds the title, description, state and constraints);
/// a stream created by its first event has none, and its name stands in for the title.
pub fn intent_object(
    stream: &StreamName,
    created: Option<&Record>,
    first_ts: Option<Timestamp>,
    last_ts: Option<Timestamp>,
) -> Value {
    let fields = created
        .filter(|record| event_type_of(record) == "intent_created")
        .and_then(|record| record.payload.as_ref())
        .map(Payload::to_object);
    let field = |key: &str, default: Value| {
        fields
            .as_ref()
            .and_then(|fields| fields.get(key))
            .filter(|value| !value.is_null())
            .cloned()
            .unwrap_or(default)
    };
    let created_at_ts = created.map(|record| record.first_ts).or(first_ts);
    json!({
        "id": stream.as_str(),
        "title": field("title", Value::String(stream.to_string())),
        "description": field("description", Value::String(String::new())),
        "created_by": field("created_by", created.and_then(|r| r.actor.clone()).map_or(Value::Null, Value::String)),
        "status": "active",
        "version": 1,
        "state": field("state", json!({})),
        "constraints": field("constraints", json!({})),
        "depends_on": field("depends_on", json!([])),
        "parent_intent_id": field("parent_intent_id", Value::Null),
        "confidence": 0,
        "created_at": created_at_ts.as_ref().map(created_at),
        "updated_at": last_ts.or(created_at_ts).as_ref().map(created_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_timestamp;

    #[test]
    fn the_design_examples_map_as_documented() {
        let cases = [
            ("tool_call_failed", "tool", Severity::Error),
            ("tool_call_started", "tool", Severity::Info),
            ("llm_request_completed", "llm", Severity::Info),
            ("llm_request_failed", "llm", Severity::Error),
            ("task.failed", "task", Severity::Error),
            ("task.completed", "task", Severity::Info),
            ("task.retrying", "retry", Severity::Warning),
            ("governance.violation", "security", Severity::Error),
            ("plan.failed", "plan", Severity::Error),
            ("federation.failed", "agent", Severity::Error),
            ("comment", "note", Severity::Info),
            ("decision_recorded", "agent", Severity::Info),
            ("agent.identity.verified", "security", Severity::Info),
            ("my.custom_failed", "my.custom_failed", Severity::Error),
        ];
        for (event_type, kind, severity) in cases {
            let (got_kind, got_severity) = classify(event_type).unwrap();
            assert_eq!(
                (got_kind.as_str(), got_severity),
                (kind, severity),
                "{event_type}"
            );
        }
        assert_eq!(
            classify("no spaces allowed").unwrap_err().field(),
            Some("event_type")
        );
    }

    #[test]
    fn every_client_event_type_maps_to_a_valid_kind() {
        for event_type in EVENT_TYPES {
            classify(event_type).unwrap_or_else(|error| panic!("{event_type}: {error}"));
        }
    }

    #[test]
    fn messages_come_from_the_payload() {
        let payload = json!({"message": "search failed", "tool_name": "search"});
        assert_eq!(
            message_of("tool_call_failed", payload.as_object().unwrap()),
            "search failed"
        );
        let payload = json!({"tool_name": "search", "tool_id": "c-1", "arguments": {"q": "redb"},
            "error": "timed out\nafter 30s", "duration_ms": 30000});
        assert_eq!(
            message_of("tool_call_failed", payload.as_object().unwrap()),
            r#"search({"q":"redb"}) failed: timed out after 30s (30000 ms)"#
        );
        let payload = json!({"request_id": "r", "provider": "openai", "model": "gpt-4o",
            "messages_count": 3, "stream": false, "finish_reason": "stop", "total_tokens": 42});
        assert_eq!(
            message_of("llm_request_completed", payload.as_object().unwrap()),
            "LLM request to openai/gpt-4o completed: stop, 42 tokens"
        );
        assert_eq!(
            message_of(
                "intent_created",
                json!({"title": "fix CI"}).as_object().unwrap()
            ),
            "intent created: fix CI"
        );
        // Without the fields a summary needs, the generic rendering (sorted keys, one line).
        let payload = json!({"error": "timed out\nafter 30s", "duration_ms": 30000});
        assert_eq!(
            message_of("tool_call_failed", payload.as_object().unwrap()),
            "tool_call_failed duration_ms=30000 error=timed out after 30s"
        );
        assert_eq!(
            message_of("task.progress", json!({"done": 3}).as_object().unwrap()),
            "task.progress done=3"
        );
    }

    #[test]
    fn rendered_messages_are_clipped_but_explicit_ones_are_refused() {
        let limits = EventLimits {
            max_message_bytes: 64,
        };
        let incoming = |payload: Value| IncomingEvent {
            event_type: "task.progress".into(),
            actor: None,
            payload: payload.as_object().unwrap().clone(),
            trace_id: None,
            parent_event_id: None,
        };
        let long = "é".repeat(100);
        let event = incoming(json!({ "note": long }))
            .into_event(None, &limits)
            .unwrap();
        assert!(event.message.len() <= 64, "{}", event.message);
        assert!(event.message.ends_with("bytes cut]"), "{}", event.message);
        let error = incoming(json!({ "message": long }))
            .into_event(None, &limits)
            .unwrap_err();
        assert_eq!(error.field(), Some("payload.message"));
    }

    #[test]
    fn filters_see_the_type_the_client_is_shown() {
        let ts = parse_timestamp("2025-01-02T03:04:05Z").unwrap();
        let posted = |event_type: &str| {
            let event = IncomingEvent {
                event_type: event_type.into(),
                actor: None,
                payload: Map::new(),
                trace_id: None,
                parent_event_id: None,
            }
            .into_event(None, &EventLimits::default())
            .unwrap();
            Record::from_event(event, 1, 1, ts)
        };
        assert_eq!(event_type_of(&posted("task.failed")), "task.failed");
        // Unknown to the client: shown (and filtered) as a comment that names the original.
        let custom = posted("my.custom_failed");
        assert_eq!(event_type_of(&custom), "comment");
        let stream = StreamName::new("s").unwrap();
        let out = outgoing_event(&stream, &custom);
        assert_eq!(out["payload"]["original_event_type"], "my.custom_failed");
        assert_eq!(out["payload"]["severity"], "error");
        let native = Record::from_event(Event::new("tool", Severity::Info, "x").unwrap(), 2, 2, ts);
        assert_eq!(event_type_of(&native), "comment");
    }

    #[test]
    fn intents_come_from_their_created_record_or_the_stream() {
        let ts = parse_timestamp("2025-01-02T03:04:05Z").unwrap();
        let stream = StreamName::new("intent-9").unwrap();
        let event = IncomingEvent {
            event_type: "intent_created".into(),
            actor: Some("planner".into()),
            payload:
                json!({"title": "fix CI", "description": "red since Monday", "state": {"step": 1}})
                    .as_object()
                    .unwrap()
                    .clone(),
            trace_id: None,
            parent_event_id: None,
        }
        .into_event(None, &EventLimits::default())
        .unwrap();
        let record = Record::from_event(event, 1, 1, ts);
        let intent = intent_object(&stream, Some(&record), Some(ts), Some(ts));
        assert_eq!(intent["title"], "fix CI");
        assert_eq!(intent["state"], json!({"step": 1}));
        assert_eq!(intent["created_by"], "planner");
        assert_eq!(intent["status"], "active");
        assert_eq!(intent["created_at"], "2025-01-02T03:04:05.000000+00:00");
        let bare = intent_object(&stream, None, Some(ts), Some(ts));
        assert_eq!(bare["title"], "intent-9");
        assert_eq!(bare["id"], "intent-9");
    }

    #[test]
    fn events_round_trip_to_the_client_shape() {
        let stream = StreamName::new("intent-1").unwrap();
        let incoming = IncomingEvent {
            event_type: "tool_call_failed".into(),
            actor: Some("agent-7".into()),
            payload: json!({"tool_name": "search", "error": "boom"})
                .as_object()
                .unwrap()
                .clone(),
            trace_id: Some("t-1".into()),
            parent_event_id: None,
        };
        let ts = parse_timestamp("2025-01-02T03:04:05.5Z").unwrap();
        let event = incoming
            .into_event(Some(ts), &EventLimits::default())
            .unwrap();
        let record = Record::from_event(event, 3, 5, ts);
        assert_eq!(
            outgoing_event(&stream, &record),
            json!({
                "id": "intent-1:3", "intent_id": "intent-1", "event_type": "tool_call_failed",
                "actor": "agent-7", "payload": {"tool_name": "search", "error": "boom"},
                "created_at": "2025-01-02T03:04:05.500000+00:00", "sequence": 3, "trace_id": "t-1",
                "repeat_count": 1, "last_seen_at": "2025-01-02T03:04:05.500000+00:00",
            })
        );
        let native = Record::from_event(
            Event::new("retry", Severity::Warning, "again").unwrap(),
            4,
            6,
            ts,
        );
        assert_eq!(
            outgoing_event(&stream, &native)["payload"],
            json!({"kind": "retry", "severity": "warning", "message": "again", "repeat_count": 1})
        );
        assert_eq!(outgoing_event(&stream, &native)["event_type"], "comment");
    }

    /// An anomaly recap raised goes out as a `comment` the client parses, saying what it is:
    /// kind, severity, message, count, and the detector's payload.
    #[test]
    fn anomalies_go_out_as_comments_naming_the_detector() {
        let stream = StreamName::new("intent-1").unwrap();
        let ts = parse_timestamp("2025-01-02T03:04:05Z").unwrap();
        let mut event = Event::new(
            "anomaly",
            Severity::Warning,
            "the last 3 actions repeat `click #submit`: likely a loop",
        )
        .unwrap();
        event.actor = Some("recap".into());
        event.payload = Some(Payload::from_json(r#"{"detector":"repeat","seqs":[4,6]}"#).unwrap());
        let record = Record::from_event(event, 7, 9, ts);
        let outgoing = outgoing_event(&stream, &record);
        assert_eq!(outgoing["event_type"], "comment");
        assert_eq!(outgoing["actor"], "recap");
        assert_eq!(
            outgoing["payload"],
            json!({"kind": "anomaly", "severity": "warning",
                   "message": "the last 3 actions repeat `click #submit`: likely a loop",
                   "repeat_count": 1, "payload": {"detector": "repeat", "seqs": [4, 6]}})
        );
    }

    /// The full table in docs/openintent.md is generated from `classify`; this keeps the two
    /// in step (on a mismatch it prints the table to paste between the markers).
    #[test]
    fn the_documented_table_is_the_mapping() {
        let doc = include_str!("../docs/openintent.md");
        let begin = "<!-- table:begin -->\n";
        let end = "<!-- table:end -->";
        let mut expected = String::from("| event_type | kind | severity |\n|---|---|---|\n");
        for event_type in EVENT_TYPES {
            let (kind, severity) = classify(event_type).unwrap();
            expected.push_str(&format!(
                "| `{event_type}` | {kind} | {} |\n",
                severity.as_str()
            ));
        }
        let documented = doc
            .split_once(begin)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(table, _)| table);
        assert_eq!(
            documented,
            Some(expected.as_str()),
            "docs/openintent.md's table is out of date; between the markers it should read:\n{expected}"
        );
    }
}
