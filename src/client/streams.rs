//! `GET /v1/streams`, `GET/DELETE /v1/streams/{s}` and `PUT /v1/streams/{s}/retention`.
//! Answers come back as the JSON text the server sent, read as [`StreamInfo`] to be shown.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::anomaly::AnomalyOverrides;
use crate::event::StreamName;

use super::{Client, ClientError, name_unknown_stream, query_string, raw_json};

/// A stream's statistics as `GET /v1/streams/{s}` and the list show them.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct StreamInfo {
    /// The stream.
    pub name: String,
    /// Records ever created (retention's removals included).
    pub records: u64,
    /// Records still stored.
    pub stored_records: u64,
    /// Events ever accepted.
    pub events: u64,
    /// The stream's revision.
    pub revision: u64,
    /// Its first event's time.
    pub first_ts: Option<String>,
    /// Its latest event's time.
    pub last_ts: Option<String>,
    /// Events per kind.
    #[serde(default)]
    pub kinds: BTreeMap<String, u64>,
    /// Events per severity.
    #[serde(default)]
    pub severities: BTreeMap<String, u64>,
    /// Live notes.
    pub notes: u64,
    /// The retention in force.
    pub retention: RetentionInfo,
}

/// A stream's retention: `None` is no limit.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct RetentionInfo {
    /// Most records kept.
    pub max_records: Option<u64>,
    /// Oldest record kept, in seconds since its latest event.
    pub max_age_seconds: Option<i64>,
}

/// Reads a stream's statistics as the server sent them.
pub fn read_info(raw: &RawValue) -> Result<StreamInfo, ClientError> {
    serde_json::from_str(raw.get())
        .map_err(|error| ClientError::Protocol(format!("a stream's stats: {error}")))
}

/// One page of the streams list, by name.
#[derive(Debug, Deserialize)]
pub struct StreamPage {
    /// The streams' statistics, as the server sent them.
    pub streams: Vec<Box<RawValue>>,
    /// The `after=` of the next page; `None` on the last.
    pub next: Option<String>,
}

/// What a page of the streams list asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamQuery {
    /// Streams named after this one.
    pub after: Option<String>,
    /// Streams per page (the server's default and most, 1,000, when `None`).
    pub limit: Option<u64>,
    /// Only streams whose names start with this.
    pub prefix: Option<String>,
}

/// One page of the streams the key may see.
pub async fn page(client: &Client, query: &StreamQuery) -> Result<StreamPage, ClientError> {
    let pairs = [
        ("after", query.after.clone()),
        ("limit", query.limit.map(|limit| limit.to_string())),
        ("prefix", query.prefix.clone()),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)));
    client
        .json(
            Method::GET,
            &format!("/v1/streams{}", query_string(pairs)),
            None,
        )
        .await
}

/// One stream's statistics, as the server sent them.
pub async fn show(client: &Client, stream: &StreamName) -> Result<Box<RawValue>, ClientError> {
    let response = client
        .send(Method::GET, &format!("/v1/streams/{stream}"), None, &[])
        .await
        .map_err(|error| name_unknown_stream(error, stream))?;
    raw_json(response).await
}

/// Deletes a stream with its records and notes.
pub async fn delete(client: &Client, stream: &StreamName) -> Result<(), ClientError> {
    client
        .send(Method::DELETE, &format!("/v1/streams/{stream}"), None, &[])
        .await
        .map_err(|error| name_unknown_stream(error, stream))?;
    Ok(())
}

/// `PUT /v1/streams/{s}/anomalies`: replaces what the stream overrides of the server's anomaly
/// detection; the answer is the settings now in force for it.
pub async fn set_anomalies(
    client: &Client,
    stream: &StreamName,
    overrides: &AnomalyOverrides,
) -> Result<Box<RawValue>, ClientError> {
    let body = serde_json::to_string(overrides)
        .map_err(|error| ClientError::Protocol(format!("anomaly settings: {error}")))?;
    let response = client
        .send(
            Method::PUT,
            &format!("/v1/streams/{stream}/anomalies"),
            Some(("application/json", Bytes::from(body))),
            &[],
        )
        .await
        .map_err(|error| name_unknown_stream(error, stream))?;
    raw_json(response).await
}

/// Sets a stream's retention (both limits: `None` removes one); returns the retention now in
/// force, as the server sent it.
pub async fn set_retention(
    client: &Client,
    stream: &StreamName,
    retention: RetentionInfo,
) -> Result<Box<RawValue>, ClientError> {
    let body = serde_json::json!({
        "max_records": retention.max_records,
        "max_age_seconds": retention.max_age_seconds,
    });
    let response = client
        .send(
            Method::PUT,
            &format!("/v1/streams/{stream}/retention"),
            Some(("application/json", Bytes::from(body.to_string()))),
            &[],
        )
        .await
        .map_err(|error| name_unknown_stream(error, stream))?;
    raw_json(response).await
}
