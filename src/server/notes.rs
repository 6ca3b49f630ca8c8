//! `POST/GET /v1/streams/{s}/notes` and `DELETE /v1/streams/{s}/notes/{id}`: facts an agent must
//! not forget, always put first in the context.

use chrono::Utc;
use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::event::{EventError, Note, StreamName, format_timestamp, parse_timestamp};
use crate::store::Read;

use super::App;
use super::body;
use super::consistency;
use super::query::Query;
use super::wire::{self, ApiError, Body, ErrorCode, REVISION_HEADER};

/// A note as a client posts it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteInput {
    /// The fact, verbatim.
    text: String,
    /// When it stops applying (RFC 3339), if ever.
    expires_at: Option<String>,
}

/// `GET .../notes` answers `{"notes": [...], "next": <id or null>}`.
#[derive(Serialize)]
struct NoteList {
    notes: Vec<Note>,
    /// `after=` for the next page, or `null` when this page ends the list.
    next: Option<u64>,
}

/// The query parameters of `GET .../notes`.
pub(crate) const LIST_PARAMS: &[&str] = &["after", "limit", consistency::MIN_REVISION_PARAM];

/// Notes per page when a request names no `limit`: the default `max_notes_per_stream`, so a
/// stream under the default cap lists in one page.
pub(super) const DEFAULT_NOTES_PAGE: usize = crate::store::DEFAULT_MAX_NOTES;
/// Most notes per page.
pub(super) const MAX_NOTES_PAGE: usize = 1_000;

/// `POST /v1/streams/{s}/notes`: 201 with the note once durable.
pub(super) async fn post(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let body = body::read_json(body, headers, &app.options, &app.bodies).await?;
    let note = add(app, &stream, body::utf8(&body.bytes)?).await?;
    // Read after the durable write: at least the revision the note took.
    let revision = app.store.revision(&stream).await?;
    let mut response = wire::json(StatusCode::CREATED, &note);
    wire::set_number(&mut response, REVISION_HEADER, revision);
    Ok(response)
}

/// Adds the note a JSON body (`{"text", "expires_at"}`) describes; returns it once durable.
pub(super) async fn add(app: &App, stream: &StreamName, body: &str) -> Result<Note, ApiError> {
    let input = parse(body, app.options.limits.max_message_bytes)?;
    let now = Utc::now();
    let expires_at = input
        .expires_at
        .as_deref()
        .map(|value| {
            parse_timestamp(value).map_err(|_| EventError::InvalidTimestamp {
                field: "expires_at",
                value: value.to_owned(),
            })
        })
        .transpose()?;
    if let Some(expires_at) = expires_at.filter(|at| *at <= now) {
        return Err(ApiError::new(
            ErrorCode::ExpiredNote,
            format!(
                "expires_at {} is already past (now {}): the note would never be shown; give a time in the future, or leave expires_at out for a note that never expires",
                format_timestamp(&expires_at),
                format_timestamp(&now)
            ),
        )
        .with_field("expires_at"));
    }
    app.metrics
        .commit(app.store.add_note(stream, input.text, expires_at, now))
        .await
        .map_err(ApiError::from)
}

/// `GET /v1/streams/{s}/notes`: the live notes, oldest first, `limit` (default 1,000) after the
/// note id `after`.
pub(super) async fn list(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(query, LIST_PARAMS)?;
    consistency::reach(app, &stream, Read::Stored, headers, &query).await?;
    let after = query.number::<u64>("after")?.unwrap_or(0);
    let limit = match query.number::<usize>("limit")? {
        None => DEFAULT_NOTES_PAGE,
        Some(limit @ 1..=MAX_NOTES_PAGE) => limit,
        Some(limit) => {
            return Err(ApiError::parameter(
                "limit",
                format!("limit={limit} is out of range; use 1 to {MAX_NOTES_PAGE}"),
            ));
        }
    };
    let revision = app.store.revision(&stream).await?;
    let mut notes: Vec<Note> = app
        .store
        .notes(&stream, Utc::now())
        .await?
        .into_iter()
        .filter(|note| note.id > after)
        .take(limit + 1)
        .collect();
    let next = if notes.len() > limit {
        notes.truncate(limit);
        notes.last().map(|note| note.id)
    } else {
        None
    };
    let mut response = wire::json(StatusCode::OK, &NoteList { notes, next });
    wire::set_number(&mut response, REVISION_HEADER, revision);
    Ok(response)
}

/// `DELETE /v1/streams/{s}/notes/{id}`: 204, or 404 if there is no such note.
pub(super) async fn delete(
    app: &App,
    stream: StreamName,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    remove(app, &stream, id).await?;
    let mut response = wire::empty(StatusCode::NO_CONTENT);
    wire::set_number(
        &mut response,
        REVISION_HEADER,
        app.store.revision(&stream).await?,
    );
    Ok(response)
}

/// Deletes note `id` (as given in the path), or says it does not exist.
pub(super) async fn remove(app: &App, stream: &StreamName, id: &str) -> Result<(), ApiError> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::UnknownNote,
            format!("note {id:?} does not exist; note ids are the numbers GET .../notes lists"),
        )
    })?;
    let deleted = app
        .metrics
        .commit(app.store.delete_note(stream, id))
        .await?;
    if deleted {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UnknownNote,
            format!("stream {stream} has no note {id}; GET .../notes lists the live ones"),
        ))
    }
}

fn parse(text: &str, max_bytes: usize) -> Result<NoteInput, ApiError> {
    let input: NoteInput = body::decode_object(
        text,
        r#"{"text": "...", "expires_at": "2024-05-01T10:00:00Z"} (expires_at optional)"#,
    )?;
    if input.text.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::MissingField,
            "field `text` is empty; a note needs text",
        )
        .with_field("text"));
    }
    if input.text.len() > max_bytes {
        return Err(EventError::TooLong {
            field: "text",
            len: input.text.len(),
            max: max_bytes,
        }
        .into());
    }
    Ok(input)
}
