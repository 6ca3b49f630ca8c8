//! `recap post` and `recap context`: one request each.

use bytes::Bytes;
use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::{Event, Severity, StreamName, Timestamp, format_timestamp};
use crate::payload::Payload;

use super::{Client, ClientError, query_string, read_body};

/// Where a posted event landed (the server's answer for one event).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Written {
    /// The record's seq.
    pub seq: u64,
    /// Its repeat count now.
    pub repeat_count: u64,
    /// Whether the event collapsed into an existing record.
    pub collapsed: bool,
    /// The revision the change took.
    pub revision: u64,
}

/// The server's answer to a write.
#[derive(Clone, Debug, Deserialize)]
pub struct WriteAnswer {
    /// One per event.
    pub records: Vec<Written>,
    /// The highest revision the write took.
    pub revision: u64,
}

/// A posted event: where it landed, and the server's answer as it sent it.
#[derive(Debug)]
pub struct Posted {
    /// Where the event landed.
    pub written: Written,
    /// The whole answer (`{"records": [...], "revision"}`).
    pub json: Box<RawValue>,
}

/// An event in the shape `POST .../events` takes. The payload goes out as the text it was
/// given (minified), so its keys keep their order.
#[derive(Serialize)]
struct EventBody<'a> {
    message: &'a str,
    kind: &'a str,
    severity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a Payload>,
}

impl<'a> EventBody<'a> {
    fn of(event: &'a Event) -> EventBody<'a> {
        EventBody {
            message: &event.message,
            kind: event.kind.as_str(),
            severity: event.severity.as_str(),
            ts: event.ts.as_ref().map(format_timestamp),
            display_message: event.display_message.as_deref(),
            actor: event.actor.as_deref(),
            step_id: event.step_id.as_deref(),
            payload: event.payload.as_ref(),
        }
    }
}

/// Posts one event with every field it has; returns where it landed once durable.
pub async fn post(
    client: &Client,
    stream: &StreamName,
    event: &Event,
) -> Result<Posted, ClientError> {
    let body = serde_json::to_string(&EventBody::of(event))
        .map_err(|error| ClientError::Protocol(error.to_string()))?;
    let response = client
        .send(
            Method::POST,
            &format!("/v1/streams/{stream}/events"),
            Some(("application/json", Bytes::from(body))),
            &[],
        )
        .await?;
    let json = super::raw_json(response).await?;
    let answer: WriteAnswer = serde_json::from_str(json.get())
        .map_err(|error| ClientError::Protocol(error.to_string()))?;
    let written = answer
        .records
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Protocol("the write answer lists no record".to_owned()))?;
    Ok(Posted { written, json })
}

/// What `recap context` asks for: every query parameter of `GET .../context`.
#[derive(Clone, Debug, Default)]
pub struct ContextArgs {
    /// Token budget (server default, 2,000, when `None`).
    pub budget: Option<u32>,
    /// Encoding name.
    pub encoding: Option<String>,
    /// Model name (mapped to its encoding by the server).
    pub model: Option<String>,
    /// The JSON form with the budget receipt.
    pub json: bool,
    /// Only records of these kinds compete.
    pub kinds: Vec<String>,
    /// Only records at least this severe compete.
    pub min_severity: Option<Severity>,
    /// Only records whose latest event is at or after this time compete.
    pub since: Option<Timestamp>,
    /// Weight overrides (`kind.tool=2.5,severity.warning=3,half_life=32`).
    pub weights: Option<String>,
    /// Most tokens of one record's line shown whole.
    pub line_cap: Option<u32>,
    /// How many of the stream's opening task/user records to keep (0 to 4).
    pub goals: Option<u32>,
}

impl ContextArgs {
    /// The query string.
    pub fn to_query(&self) -> String {
        let mut pairs = Vec::new();
        if let Some(budget) = self.budget {
            pairs.push(("budget", budget.to_string()));
        }
        if let Some(encoding) = &self.encoding {
            pairs.push(("encoding", encoding.clone()));
        }
        if let Some(model) = &self.model {
            pairs.push(("model", model.clone()));
        }
        if self.json {
            pairs.push(("format", "json".to_owned()));
        }
        if !self.kinds.is_empty() {
            pairs.push(("kinds", self.kinds.join(",")));
        }
        if let Some(severity) = self.min_severity {
            pairs.push(("min_severity", severity.as_str().to_owned()));
        }
        if let Some(since) = &self.since {
            pairs.push(("since", format_timestamp(since)));
        }
        if let Some(weights) = &self.weights {
            pairs.push(("weights", weights.clone()));
        }
        if let Some(line_cap) = self.line_cap {
            pairs.push(("line_cap", line_cap.to_string()));
        }
        if let Some(goals) = self.goals {
            pairs.push(("goals", goals.to_string()));
        }
        query_string(pairs)
    }
}

/// A context window as the server sent it.
#[derive(Clone, Debug)]
pub struct ContextAnswer {
    /// The text, or the JSON document with `json`.
    pub body: String,
    /// The token count (`X-Recap-Tokens`).
    pub tokens: Option<u32>,
    /// The stream revision the window reflects (`X-Recap-Revision`); 0 for a stream the server
    /// has no history of.
    pub revision: Option<u64>,
}

/// Fetches a context window.
pub async fn context(
    client: &Client,
    stream: &StreamName,
    args: &ContextArgs,
) -> Result<ContextAnswer, ClientError> {
    let path = format!("/v1/streams/{stream}/context{}", args.to_query());
    let response = client.send(Method::GET, &path, None, &[]).await?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok())
    };
    let tokens = header(crate::server::wire::TOKENS_HEADER).and_then(|t| u32::try_from(t).ok());
    let revision = header(crate::server::wire::REVISION_HEADER);
    let bytes = read_body(response).await?;
    let body = String::from_utf8(bytes.to_vec())
        .map_err(|error| ClientError::Protocol(error.to_string()))?;
    Ok(ContextAnswer {
        body,
        tokens,
        revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_query_names_every_parameter_the_route_takes() {
        assert_eq!(ContextArgs::default().to_query(), "");
        let args = ContextArgs {
            budget: Some(500),
            model: Some("gpt-4o".into()),
            json: true,
            kinds: vec!["tool".into(), "plan".into()],
            min_severity: Some(Severity::Error),
            since: Some(crate::event::parse_timestamp("2024-05-01T10:00:00Z").unwrap()),
            weights: Some("kind.tool=2.5,half_life=32".into()),
            line_cap: Some(40),
            goals: Some(0),
            ..ContextArgs::default()
        };
        assert_eq!(
            args.to_query(),
            "?budget=500&model=gpt-4o&format=json&kinds=tool%2Cplan&min_severity=error\
             &since=2024-05-01T10%3A00%3A00.000000Z&weights=kind.tool%3D2.5%2Chalf_life%3D32\
             &line_cap=40&goals=0"
        );
    }

    #[test]
    fn an_event_body_keeps_its_payload_as_given() {
        let mut event = Event::new("tool", Severity::Error, "search failed").unwrap();
        event.payload = Some(Payload::from_json(r#"{ "z": 1, "a": [1, 2] }"#).unwrap());
        event.actor = Some("searcher".into());
        event.ts = Some(crate::event::parse_timestamp("2024-05-01T10:00:00Z").unwrap());
        assert_eq!(
            serde_json::to_string(&EventBody::of(&event)).unwrap(),
            r#"{"message":"search failed","kind":"tool","severity":"error","ts":"2024-05-01T10:00:00.000000Z","actor":"searcher","payload":{"z":1,"a":[1,2]}}"#
        );
    }
}
