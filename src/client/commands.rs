//! `recap post` and `recap context`: one request each.

use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::event::{Event, StreamName};
use crate::jsonl;

use super::{Client, ClientError, encode, read_body};

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

/// Posts one event; returns where it landed once durable.
pub async fn post(
    client: &Client,
    stream: &StreamName,
    event: &Event,
) -> Result<Written, ClientError> {
    let body = Value::Object(jsonl::event_json(event)).to_string();
    let answer: WriteAnswer = client
        .json(
            Method::POST,
            &format!("/v1/streams/{stream}/events"),
            Some(("application/json", Bytes::from(body))),
        )
        .await?;
    answer
        .records
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Protocol("the write answer lists no record".to_owned()))
}

/// What `recap context` asks for.
#[derive(Clone, Debug, Default)]
pub struct ContextArgs {
    /// Token budget (server default when `None`).
    pub budget: Option<u32>,
    /// Encoding name.
    pub encoding: Option<String>,
    /// Model name (mapped to its encoding by the server).
    pub model: Option<String>,
    /// The JSON form with the budget receipt.
    pub json: bool,
}

/// A context window as the server sent it.
#[derive(Clone, Debug)]
pub struct ContextAnswer {
    /// The text, or the JSON document with `json`.
    pub body: String,
    /// The token count (`X-Recap-Tokens`).
    pub tokens: Option<u32>,
}

/// Fetches a context window.
pub async fn context(
    client: &Client,
    stream: &StreamName,
    args: &ContextArgs,
) -> Result<ContextAnswer, ClientError> {
    let mut query = Vec::new();
    if let Some(budget) = args.budget {
        query.push(format!("budget={budget}"));
    }
    if let Some(encoding) = &args.encoding {
        query.push(format!("encoding={}", encode(encoding)));
    }
    if let Some(model) = &args.model {
        query.push(format!("model={}", encode(model)));
    }
    if args.json {
        query.push("format=json".to_owned());
    }
    let path = format!("/v1/streams/{stream}/context?{}", query.join("&"));
    let response = client.send(Method::GET, &path, None, &[]).await?;
    let tokens = response
        .headers()
        .get(crate::server::wire::TOKENS_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    let bytes = read_body(response).await?;
    let body = String::from_utf8(bytes.to_vec())
        .map_err(|error| ClientError::Protocol(error.to_string()))?;
    Ok(ContextAnswer { body, tokens })
}
