//! `POST/GET /v1/streams/{s}/notes` and `DELETE /v1/streams/{s}/notes/{id}`: a stream's pinned
//! notes. Answers come back as the JSON text the server sent, read as [`Note`]s to be shown.

use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{Note, StreamName, Timestamp, format_timestamp};

use super::{Client, ClientError, name_unknown_stream, query_string, raw_json};

/// One page of notes, oldest first.
#[derive(Debug, Deserialize)]
pub struct NotePage {
    /// The notes, as the server sent them.
    pub notes: Vec<Box<RawValue>>,
    /// The `after=` of the next page; `None` on the last.
    pub next: Option<u64>,
}

/// Reads a note the server sent.
pub fn read_note(raw: &RawValue) -> Result<Note, ClientError> {
    serde_json::from_str(raw.get())
        .map_err(|error| ClientError::Protocol(format!("a note: {error}")))
}

/// Pins a note; returns it as the server sent it, once durable.
pub async fn add(
    client: &Client,
    stream: &StreamName,
    text: &str,
    expires_at: Option<&Timestamp>,
) -> Result<Box<RawValue>, ClientError> {
    let mut body = serde_json::json!({ "text": text });
    if let Some(expires_at) = expires_at {
        body["expires_at"] = format_timestamp(expires_at).into();
    }
    let response = client
        .send(
            Method::POST,
            &format!("/v1/streams/{stream}/notes"),
            Some(("application/json", Bytes::from(body.to_string()))),
            &[],
        )
        .await?;
    raw_json(response).await
}

/// One page of a stream's live notes: `limit` of them (the server's default, 1,000, when
/// `None`) with ids above `after`.
pub async fn page(
    client: &Client,
    stream: &StreamName,
    after: Option<u64>,
    limit: Option<u64>,
) -> Result<NotePage, ClientError> {
    let pairs = [("after", after), ("limit", limit)]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?.to_string())));
    client
        .json(
            Method::GET,
            &format!("/v1/streams/{stream}/notes{}", query_string(pairs)),
            None,
        )
        .await
        .map_err(|error| name_unknown_stream(error, stream))
}

/// Deletes note `id`.
pub async fn delete(client: &Client, stream: &StreamName, id: u64) -> Result<(), ClientError> {
    client
        .send(
            Method::DELETE,
            &format!("/v1/streams/{stream}/notes/{id}"),
            None,
            &[],
        )
        .await
        .map_err(|error| name_unknown_stream(error, stream))?;
    Ok(())
}
