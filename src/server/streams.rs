//! `GET /v1/streams`, `GET/DELETE /v1/streams/{s}` and `PUT /v1/streams/{s}/retention`.

use chrono::TimeDelta;
use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::event::StreamName;
use crate::store::{Retention, StreamStats};

use super::App;
use super::auth::ApiKey;
use super::body::{self, Body};
use super::wire::{self, ApiError, REVISION_HEADER};

#[derive(Serialize)]
struct StreamList {
    streams: Vec<StreamStats>,
}

/// A retention as clients send it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionInput {
    max_records: Option<u64>,
    max_age_seconds: Option<i64>,
}

/// `GET /v1/streams`: every stream the caller may see, with stats.
pub fn list(app: &App, key: Option<&ApiKey>) -> Response<Body> {
    let streams = visible(app, key);
    wire::json(StatusCode::OK, &StreamList { streams })
}

/// The stats of every stream `key` may see (all of them without keys), by name.
pub fn visible(app: &App, key: Option<&ApiKey>) -> Vec<StreamStats> {
    app.store
        .streams()
        .into_iter()
        .filter(|stats| key.is_none_or(|key| key.covers(&stats.name)))
        .collect()
}

/// `GET /v1/streams/{s}`.
pub fn get(app: &App, stream: StreamName) -> Result<Response<Body>, ApiError> {
    let stats = app
        .store
        .stream(&stream)
        .ok_or_else(|| crate::store::StoreError::UnknownStream(stream.to_string()))?;
    let mut response = wire::json(StatusCode::OK, &stats);
    wire::set_number(&mut response, REVISION_HEADER, stats.revision);
    Ok(response)
}

/// `DELETE /v1/streams/{s}`: 204, or 404 if it did not exist.
pub async fn delete(app: &App, stream: StreamName) -> Result<Response<Body>, ApiError> {
    let deleted = app.metrics.commit(app.store.delete_stream(&stream)).await?;
    if deleted {
        Ok(wire::empty(StatusCode::NO_CONTENT))
    } else {
        Err(crate::store::StoreError::UnknownStream(stream.to_string()).into())
    }
}

/// `PUT /v1/streams/{s}/retention`: `{"max_records": N, "max_age_seconds": S}` (either may be
/// null or absent for no limit).
pub async fn set_retention(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let body = body::read_json(body, headers, &app.options, &app.bodies).await?;
    let input: RetentionInput = wire::decode_object(
        body::utf8(&body.bytes)?,
        r#"{"max_records": 10000, "max_age_seconds": 86400} (either may be null)"#,
    )?;
    if input.max_records == Some(0) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "max_records must be at least 1",
        )
        .with_field("max_records"));
    }
    let max_age = match input.max_age_seconds {
        Some(seconds) if seconds <= 0 => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "max_age_seconds must be at least 1",
            )
            .with_field("max_age_seconds"));
        }
        Some(seconds) => Some(TimeDelta::try_seconds(seconds).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "max_age_seconds is too large",
            )
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
