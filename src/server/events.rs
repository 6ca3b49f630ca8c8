//! `POST /v1/streams/{s}/events` (ingest), `GET /v1/streams/{s}/events` (history) and
//! `POST /v1/streams/{s}/records` (import of exported records).
//!
//! Bodies are parsed in full before anything is written, so a batch is all-or-nothing: the first
//! bad event refuses the request, naming its index (and line, for NDJSON) and field. A write is
//! acknowledged only when the store's group commit that carries it is durable.

use chrono::Utc;
use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::value::RawValue;
use tokio::sync::OwnedSemaphorePermit;

use crate::event::{Event, EventError, EventInput, EventLimits, StreamName, check_not_ahead};
use crate::jsonl;
use crate::store::{ImportedRecord, MAX_PAGE_RECORDS, Read, RecordPage, RecordQuery};
use crate::stream::Appended;

use super::App;
use super::body::{self, Framing};
use super::consistency;
use super::query::Query;
use super::wire::{self, ApiError, Body, ErrorCode, REVISION_HEADER, WriteReply, WrittenRecord};

/// Bodies larger than this are parsed on the blocking pool, so that a 1 MiB batch does not
/// hold up other requests on the same runtime thread.
const PARSE_INLINE_MAX_BYTES: usize = 64 * 1024;

/// Query parameters of `GET .../events`.
pub(crate) const HISTORY_PARAMS: &[&str] = &[
    "after",
    "before",
    "limit",
    "kinds",
    "min_severity",
    "since",
    "until",
    consistency::MIN_REVISION_PARAM,
];

/// `POST /v1/streams/{s}/events`: one event, a JSON array, or NDJSON.
pub(super) async fn post(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    // The body's share of the gate is held until the events are committed.
    let (events, _share) = read_batch(app, headers, body, parse_events).await?;
    if events.is_empty() {
        return Ok(write_reply(Vec::new(), app.store.revision(&stream).await?));
    }
    Ok(write_reply(append(app, &stream, events).await?, 0))
}

/// Appends parsed events, counted in the metrics; returns where each landed once durable.
pub(super) async fn append(
    app: &App,
    stream: &StreamName,
    events: Vec<Event>,
) -> Result<Vec<Appended>, ApiError> {
    // A time days ahead of the server's clock is a bug in the client, not an event.
    let now = Utc::now();
    for (index, event) in events.iter().enumerate() {
        if let Some(ts) = &event.ts {
            check_not_ahead(ts, &now, "ts")
                .map_err(|error| ApiError::in_batch(error, index, None))?;
        }
    }
    let count = events.len() as u64;
    let appended = app
        .metrics
        .commit(app.store.append(stream, events, now))
        .await?;
    let collapsed = appended.iter().filter(|a| a.collapsed).count() as u64;
    app.metrics.count_ingest(count, collapsed);
    Ok(appended)
}

/// `POST /v1/streams/{s}/records`: exported records (JSON array or NDJSON), imported as they
/// are, all or nothing.
pub(super) async fn import(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let (records, _share) = read_batch(app, headers, body, parse_records).await?;
    let now = Utc::now();
    for (index, record) in records.iter().enumerate() {
        check_not_ahead(&record.last_ts, &now, "last_ts")
            .map_err(|error| ApiError::in_batch(error, index, None))?;
    }
    if records.is_empty() {
        return Ok(write_reply(Vec::new(), app.store.revision(&stream).await?));
    }
    let events: u64 = records.iter().map(|r| r.repeat_count).sum();
    let appended = app
        .metrics
        .commit(app.store.import(&stream, records))
        .await?;
    app.metrics.count_ingest(events, 0);
    Ok(write_reply(appended, 0))
}

/// `GET /v1/streams/{s}/events`: a page of history with a `next` cursor.
pub(super) async fn history(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(query, HISTORY_PARAMS)?;
    consistency::reach(app, &stream, Read::Stored, headers, &query).await?;
    // Read before the page: the page reflects at least this revision.
    let revision = app.store.revision(&stream).await?;
    let page = page(app, stream, &query).await?;
    let mut response = wire::json(StatusCode::OK, &page);
    wire::set_number(&mut response, REVISION_HEADER, revision);
    Ok(response)
}

/// The page of history the query parameters of `GET .../events` ask for (parsed with
/// [`HISTORY_PARAMS`]).
pub(super) async fn page(
    app: &App,
    stream: StreamName,
    query: &Query,
) -> Result<RecordPage, ApiError> {
    let limit = match query.number::<usize>("limit")? {
        None => RecordQuery::default().limit,
        Some(0) => return Err(ApiError::parameter("limit", "limit must be at least 1")),
        // Larger pages are clamped rather than refused: `next` pages through the rest.
        Some(limit) => limit.min(MAX_PAGE_RECORDS),
    };
    let record_query = RecordQuery {
        after: query.number("after")?,
        before: query.number("before")?,
        limit,
        kinds: query.kinds("kinds")?,
        min_severity: query.severity("min_severity")?,
        since: query.timestamp("since")?,
        until: query.timestamp("until")?,
    };
    Ok(app.store.records(&stream, &record_query).await?)
}

/// Parses a body of events, all or nothing.
pub(super) fn parse_events(
    bytes: &[u8],
    framing: Framing,
    limits: &EventLimits,
) -> Result<Vec<Event>, ApiError> {
    parse_batch(bytes, framing, |json| {
        EventInput::from_json(json.as_bytes())
            .and_then(|input| input.validate(limits))
            .and_then(Event::check_not_audit)
    })
}

/// Parses a body of exported records, all or nothing.
pub(super) fn parse_records(
    bytes: &[u8],
    framing: Framing,
    limits: &EventLimits,
) -> Result<Vec<ImportedRecord>, ApiError> {
    parse_batch(bytes, framing, |json| {
        jsonl::parse_record_text(json, limits)
    })
}

/// Splits a body into items by its framing (NDJSON lines, a JSON array, or one object) and
/// parses each; the first bad item fails the whole body, named by its index (and line). Each
/// item's JSON syntax is checked before `parse` sees it (an array's, once for the whole body).
fn parse_batch<T>(
    bytes: &[u8],
    framing: Framing,
    parse: impl Fn(&str) -> Result<T, EventError>,
) -> Result<Vec<T>, ApiError> {
    let text = body::utf8(bytes)?;
    match framing {
        Framing::Ndjson => ndjson_lines(text)
            .enumerate()
            .map(|(index, (line_number, line))| {
                check_syntax(line)
                    .and_then(|()| parse(line))
                    .map_err(|error| ApiError::in_batch(error, index, Some(line_number)))
            })
            .collect(),
        Framing::Json => match first_byte(text) {
            None => Err(empty_body()),
            Some(b'[') => json_array(text)?
                .iter()
                .enumerate()
                .map(|(index, raw)| {
                    parse(raw.get()).map_err(|error| ApiError::in_batch(error, index, None))
                })
                .collect(),
            Some(_) => Ok(vec![
                check_syntax(text)
                    .and_then(|()| parse(text))
                    .map_err(ApiError::from)?,
            ]),
        },
    }
}

/// Checks JSON syntax alone, so that a truncated or malformed body is reported as such
/// (`invalid_json`) rather than as a problem with the field where the text broke off.
fn check_syntax(json: &str) -> Result<(), EventError> {
    serde_json::from_str::<&RawValue>(json)
        .map(drop)
        .map_err(|error| EventError::Json {
            field: None,
            detail: format!("the body is not valid JSON: {error}"),
        })
}

/// Non-blank lines with their 1-based line numbers.
fn ndjson_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty())
}

fn first_byte(text: &str) -> Option<u8> {
    text.bytes().find(|b| !b.is_ascii_whitespace())
}

/// Splits a JSON array into its raw elements (checking the JSON syntax of the whole body once).
fn json_array(text: &str) -> Result<Vec<&RawValue>, ApiError> {
    serde_json::from_str::<Vec<&RawValue>>(text).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {error}"),
        )
    })
}

fn empty_body() -> ApiError {
    ApiError::new(
        ErrorCode::EmptyBody,
        "the body is empty; send an event object, a JSON array of events, or NDJSON",
    )
}

/// [`parse_events`] or [`parse_records`].
type BatchParser<T> = fn(&[u8], Framing, &EventLimits) -> Result<Vec<T>, ApiError>;

/// Reads a write's body and parses it with `parse`, all or nothing; large bodies are parsed
/// off the async runtime. Returns the body's share of the [`body::BodyGate`] with the items.
async fn read_batch<T: Send + 'static>(
    app: &App,
    headers: &HeaderMap,
    body: Incoming,
    parse: BatchParser<T>,
) -> Result<(Vec<T>, OwnedSemaphorePermit), ApiError> {
    let framing = body::framing(headers, true)?;
    let body = body::read_capped(body, headers, &app.options, &app.bodies).await?;
    let limits = app.options.limits;
    let items = if body.bytes.len() <= PARSE_INLINE_MAX_BYTES {
        parse(&body.bytes, framing, &limits)?
    } else {
        let bytes = body.bytes.clone();
        tokio::task::spawn_blocking(move || parse(&bytes, framing, &limits))
            .await
            .map_err(ApiError::internal)??
    };
    Ok((items, body.into_share()))
}

/// The reply to a write; `revision` is used when nothing was written.
fn write_reply(appended: Vec<Appended>, revision: u64) -> Response<Body> {
    let records: Vec<WrittenRecord> = appended
        .into_iter()
        .map(|a| WrittenRecord {
            seq: a.record.seq,
            repeat_count: a.record.repeat_count,
            collapsed: a.collapsed,
            revision: a.record.revision,
        })
        .collect();
    let revision = records.iter().map(|r| r.revision).max().unwrap_or(revision);
    let mut response = wire::json(StatusCode::OK, &WriteReply { records, revision });
    wire::set_number(&mut response, REVISION_HEADER, revision);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str, framing: Framing) -> Result<Vec<Event>, ApiError> {
        parse_events(body.as_bytes(), framing, &EventLimits::default())
    }

    #[test]
    fn one_event_an_array_or_ndjson() {
        assert_eq!(
            parse(r#"{"kind": "tool", "message": "a"}"#, Framing::Json)
                .unwrap()
                .len(),
            1
        );
        let array = r#"[{"kind": "tool", "message": "a"}, {"kind": "llm", "message": "b"}]"#;
        assert_eq!(parse(array, Framing::Json).unwrap().len(), 2);
        let ndjson =
            "{\"kind\": \"tool\", \"message\": \"a\"}\n\n{\"kind\": \"llm\", \"message\": \"b\"}\n";
        assert_eq!(parse(ndjson, Framing::Ndjson).unwrap().len(), 2);
    }

    #[test]
    fn a_bad_event_names_its_index_line_and_field() {
        let array = r#"[{"kind": "tool", "message": "a"}, {"kind": "tool", "message": "b", "severity": "loud"}]"#;
        let error = parse(array, Framing::Json).unwrap_err();
        assert_eq!(
            (error.code, error.index, error.field.as_deref()),
            (ErrorCode::UnknownSeverity, Some(1), Some("severity"))
        );
        assert!(
            error.message.starts_with("event 1: field `severity`"),
            "{}",
            error.message
        );

        let ndjson =
            "{\"kind\": \"tool\", \"message\": \"a\"}\n\n{\"kind\": \"tool\", \"message\": 3}\n";
        let error = parse(ndjson, Framing::Ndjson).unwrap_err();
        assert_eq!(
            (error.code, error.index, error.field.as_deref()),
            (ErrorCode::InvalidField, Some(1), Some("message"))
        );
        assert!(
            error.message.starts_with("event 1 (line 3):"),
            "{}",
            error.message
        );
    }

    #[test]
    fn syntax_utf8_and_empty_bodies() {
        assert_eq!(
            parse(r#"{"kind": "#, Framing::Json).unwrap_err().code,
            ErrorCode::InvalidJson
        );
        assert_eq!(
            parse(r#"[{"kind": "tool"}"#, Framing::Json)
                .unwrap_err()
                .code,
            ErrorCode::InvalidJson
        );
        assert_eq!(
            parse("  ", Framing::Json).unwrap_err().code,
            ErrorCode::EmptyBody
        );
        let bad_utf8 = parse_events(
            b"{\"kind\": \"tool\", \"message\": \"\xff\"}",
            Framing::Json,
            &EventLimits::default(),
        );
        assert_eq!(bad_utf8.unwrap_err().code, ErrorCode::InvalidUtf8);
    }
}
