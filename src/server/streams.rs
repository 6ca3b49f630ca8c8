//! `GET /v1/streams`, `GET/DELETE /v1/streams/{s}` and `PUT /v1/streams/{s}/retention`.

use chrono::TimeDelta;
use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::event::StreamName;
use crate::store::{Read, Retention, StreamStats};

use super::App;
use super::auth::ApiKey;
use super::body;
use super::consistency;
use super::query::Query;
use super::wire::{self, ApiError, Body, ErrorCode, REVISION_HEADER};

/// Most streams a page lists, and the default.
pub(super) const MAX_STREAMS_PER_PAGE: usize = 1_000;

#[derive(Serialize)]
struct StreamList {
    streams: Vec<StreamStats>,
    /// The `after=` of the next page; `None` on the last.
    next: Option<StreamName>,
}

/// The query parameters of `GET /v1/streams/{s}`.
pub(crate) const GET_PARAMS: &[&str] = &[consistency::MIN_REVISION_PARAM];

/// The query parameters of `GET /v1/streams`.
pub(crate) const LIST_PARAMS: &[&str] = &["after", "limit", "prefix"];

/// A retention as clients send it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionInput {
    max_records: Option<u64>,
    max_age_seconds: Option<i64>,
}

/// `GET /v1/streams`: the streams the caller may see, with stats, by name, in pages (`after` a
/// name, `limit` ≤ [`MAX_STREAMS_PER_PAGE`], `prefix`).
pub(super) async fn list(
    app: &App,
    key: Option<&ApiKey>,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(query, LIST_PARAMS)?;
    let limit = match query.number::<usize>("limit")? {
        None => MAX_STREAMS_PER_PAGE,
        Some(0) => return Err(ApiError::parameter("limit", "limit must be at least 1")),
        Some(limit) => limit.min(MAX_STREAMS_PER_PAGE),
    };
    let prefix = query.get("prefix").unwrap_or("");
    let (streams, next) = app
        .store
        .streams_page(query.get("after"), prefix, limit, |name| {
            key.is_none_or(|key| key.covers(name))
        })
        .await?;
    Ok(wire::json(StatusCode::OK, &StreamList { streams, next }))
}

/// The stats of the first [`MAX_STREAMS_PER_PAGE`] streams named from `prefix` that `key` may
/// see (all of them without keys), by name.
pub(super) async fn visible(
    app: &App,
    key: Option<&ApiKey>,
    prefix: &str,
) -> Result<Vec<StreamStats>, ApiError> {
    let admit = |name: &StreamName| key.is_none_or(|key| key.covers(name));
    Ok(app
        .store
        .streams_page(None, prefix, MAX_STREAMS_PER_PAGE, admit)
        .await?
        .0)
}

/// `GET /v1/streams/{s}`.
pub(super) async fn get(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(query, GET_PARAMS)?;
    consistency::reach(app, &stream, Read::Stored, headers, &query).await?;
    let stats = app
        .store
        .stream(&stream)
        .await?
        .ok_or_else(|| crate::store::StoreError::UnknownStream(stream.to_string()))?;
    let mut response = wire::json(StatusCode::OK, &stats);
    wire::set_number(&mut response, REVISION_HEADER, stats.revision);
    Ok(response)
}

/// `DELETE /v1/streams/{s}`: 204, or 404 if it did not exist.
pub(super) async fn delete(app: &App, stream: StreamName) -> Result<Response<Body>, ApiError> {
    let deleted = app.metrics.commit(app.store.delete_stream(&stream)).await?;
    if deleted {
        Ok(wire::empty(StatusCode::NO_CONTENT))
    } else {
        Err(crate::store::StoreError::UnknownStream(stream.to_string()).into())
    }
}

/// `PUT /v1/streams/{s}/retention`: `{"max_records": N, "max_age_seconds": S}` (either may be
/// null or absent for no limit).
pub(super) async fn set_retention(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let body = body::read_json(body, headers, &app.options, &app.bodies).await?;
    let input: RetentionInput = body::decode_object(
        body::utf8(&body.bytes)?,
        r#"{"max_records": 10000, "max_age_seconds": 86400} (either may be null)"#,
    )?;
    if input.max_records == Some(0) {
        return Err(
            ApiError::new(ErrorCode::InvalidField, "max_records must be at least 1")
                .with_field("max_records"),
        );
    }
    let max_age = match input.max_age_seconds {
        Some(seconds) if seconds <= 0 => {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "max_age_seconds must be at least 1",
            )
            .with_field("max_age_seconds"));
        }
        Some(seconds) => Some(TimeDelta::try_seconds(seconds).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidField, "max_age_seconds is too large")
                .with_field("max_age_seconds")
        })?),
        None => None,
    };
    let retention = Retention {
        max_records: input.max_records,
        max_age,
    };
    app.metrics
        .commit(app.store.set_retention(&stream, retention))
        .await?;
    Ok(wire::json(StatusCode::OK, &retention))
}
