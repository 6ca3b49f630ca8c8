//! The OpenIntent routes (DESIGN section 6; mapping and shapes in docs/openintent.md): what the
//! unmodified `openintent` Python client (0.17.0) calls, served from recap's streams.
//!
//! - `POST /api/v1/intents`: creates an intent, i.e. a new stream whose first record is an
//!   `intent_created` event carrying the title, description, state and constraints.
//! - `GET /api/v1/intents/{id}`: the intent object of a stream.
//! - `POST /api/v1/intents/{id}/events`: one event; answers with the event object.
//! - `GET /api/v1/intents/{id}/events`: a bare JSON array, newest first (as the reference server
//!   answers), honouring `event_type`, `since`, `limit` (and `offset`).
//! - `GET /api/v1/intents/{id}/subscribe` and `/api/v1/subscribe/intents/{id}`: SSE in the
//!   OpenIntent dialect of [`super::sse`].
//!
//! An intent id is a stream name. A stream is created by its first write, so posting to an
//! intent nobody created works (the reference server answers 404 there); ids that are not
//! valid stream names are refused with a message saying so. The pure mapping (event types to
//! kinds and severities, records to event objects) lives in [`crate::openintent`].

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::event::{EventError, Record, StreamName, Timestamp, parse_timestamp};
use crate::openintent::{
    self as mapping, IncomingEvent, NATIVE_EVENT_TYPE, classify, event_type_of,
    is_known_event_type, outgoing_event,
};
use crate::store::{MAX_PAGE_RECORDS, MAX_SCAN_RECORDS, Read, RecordQuery};

use super::App;
use super::auth::ApiKey;
use super::body;
use super::consistency;
use super::query::Query;
use super::wire::{self, ApiError, Body, ErrorCode, REVISION_HEADER};

/// The query parameters of `GET /api/v1/intents/{id}/events`.
pub(crate) const LIST_PARAMS: &[&str] = &[
    "event_type",
    "since",
    "limit",
    "offset",
    consistency::MIN_REVISION_PARAM,
];
/// The query parameters of `GET /api/v1/intents/{id}`.
pub(crate) const GET_PARAMS: &[&str] = &[consistency::MIN_REVISION_PARAM];

/// `limit` when the client gives none: the client's own default.
pub(super) const DEFAULT_EVENTS_LIMIT: usize = 100;
/// Records one `GET .../events` with an `event_type` filter looks through at most (newest
/// first), so a type that matches nothing does not walk a whole long stream.
pub(super) const MAX_FILTER_SCAN: usize = MAX_SCAN_RECORDS;
/// Attempts at a fresh intent id before giving up (a collision of 122 random bits is not
/// expected even once).
const ID_ATTEMPTS: usize = 8;

/// The 400 for an intent id that is not a stream name.
pub(super) fn invalid_intent_id(id: &str) -> ApiError {
    ApiError::new(
            ErrorCode::InvalidIntentId,
            format!(
            "intent id {id:?} cannot be used: recap keeps an intent as a stream, and stream names are 1 to 128 characters from A-Z, a-z, 0-9 and `. _ : -`, starting with a letter or digit; use the id POST /api/v1/intents returned, or such a name"
        ),
    )
    .with_field("intent_id")
}

/// What `POST .../events` takes. Keys the client may add later are ignored, as the reference
/// server ignores them.
#[derive(Deserialize)]
struct EventBody {
    event_type: Option<String>,
    actor: Option<String>,
    payload: Option<Map<String, Value>>,
    trace_id: Option<String>,
    parent_event_id: Option<String>,
}

/// Decodes a JSON object body into `T`, naming the offending field.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = body::utf8(bytes)?;
    match text.bytes().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => {
            return Err(ApiError::new(
                ErrorCode::EmptyBody,
                "the body is empty; send a JSON object",
            ));
        }
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidJson,
                "the body must be a JSON object",
            ));
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        ApiError::from(EventError::Json {
            field: (path != ".").then_some(path),
            detail: error.into_inner().to_string(),
        })
    })?;
    deserializer.end().map_err(|error| {
        ApiError::from(EventError::Json {
            field: None,
            detail: error.to_string(),
        })
    })?;
    Ok(value)
}

/// The `X-Agent-ID` header the client sends with every request.
fn agent_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-agent-id")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

/// `POST /api/v1/intents/{id}/events`: stores one event and answers with its event object (200,
/// as the reference server; the client turns an empty body into a bogus event).
///
/// `actor` falls back to `X-Agent-ID`. An event identical to the stream's latest record within
/// the collapse window collapses into it: the answer is that record, with its `repeat_count`.
pub(super) async fn post_event(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let body = body::read_json(body, headers, &app.options, &app.bodies).await?;
    let input: EventBody = decode(&body.bytes)?;
    let event_type = input
        .event_type
        .filter(|event_type| !event_type.is_empty())
        .ok_or(EventError::MissingField {
            field: "event_type",
        })?;
    let incoming = IncomingEvent {
        event_type,
        actor: input.actor.or_else(|| agent_id(headers)),
        payload: input.payload.unwrap_or_default(),
        trace_id: input.trace_id,
        parent_event_id: input.parent_event_id,
    };
    let event = incoming.into_event(None, &app.options.limits)?;
    let appended = app
        .metrics
        .commit(app.store.append(&stream, vec![event], Utc::now()))
        .await?;
    let landed = appended
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("an append of one event returned nothing"))?;
    app.metrics.count_ingest(1, u64::from(landed.collapsed));
    let mut response = wire::json(StatusCode::OK, &outgoing_event(&stream, &landed.record));
    wire::set_number(&mut response, REVISION_HEADER, landed.record.revision);
    Ok(response)
}

/// `GET /api/v1/intents/{id}/events`: the stream's records as event objects, newest first (the
/// reference server's order: `get_events(limit=1)` is the latest event), as a bare JSON array.
///
/// - `event_type`: only records the client is shown with this type (see
///   [`mapping::event_type_of`]; `comment` also matches records posted natively). A type outside
///   the client's enum is a 400: nothing could ever match it.
/// - `since`: records active at or after this time (`last_seen_at` ≥ since, so a record whose
///   latest repeat is recent is included); naive times are UTC, offsets are honoured.
/// - `limit`: 1 to 1000 (larger values are clamped); `offset`: matches to skip.
///
/// An intent with no events yet is an empty array, as on the reference server.
pub(super) async fn list_events(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(query, LIST_PARAMS)?;
    consistency::reach(app, &stream, Read::Stored, headers, &query).await?;
    let limit = match query.number::<usize>("limit")? {
        None => DEFAULT_EVENTS_LIMIT,
        Some(0) => return Err(ApiError::parameter("limit", "limit must be at least 1")),
        Some(limit) => limit.min(MAX_PAGE_RECORDS),
    };
    let offset = query.number::<usize>("offset")?.unwrap_or(0);
    let event_type = query
        .get("event_type")
        .map(|event_type| {
            if is_known_event_type(event_type) {
                Ok(event_type.to_owned())
            } else {
                Err(ApiError::parameter(
                    "event_type",
                    format!(
                        "event_type={event_type:?} is not an OpenIntent event type (openintent 0.17.0 EventType values such as tool_call_failed or task.completed); nothing could match it"
                    ),
                ))
            }
        })
        .transpose()?;
    let since = since(&query)?;
    // Records that came in with the type all have its kind: let the store skip the others.
    // `comment` also stands for natively posted records of any kind.
    let kinds = match event_type.as_deref() {
        Some(event_type) if event_type != NATIVE_EVENT_TYPE => {
            Some(BTreeSet::from([classify(event_type)
                .map_err(ApiError::from)?
                .0]))
        }
        _ => None,
    };
    let revision = app.store.revision(&stream).await?;
    let events = {
        let wanted = limit + offset;
        let mut matched: Vec<Record> = Vec::new();
        let mut scanned = 0;
        let mut before = u64::MAX;
        loop {
            let page_size = if event_type.is_some() {
                MAX_PAGE_RECORDS
            } else {
                wanted.clamp(1, MAX_PAGE_RECORDS)
            };
            let query = RecordQuery {
                before: Some(before),
                limit: page_size,
                kinds: kinds.clone(),
                since,
                ..RecordQuery::default()
            };
            let page = match app.store.records(&stream, &query).await {
                Ok(page) => page,
                Err(crate::store::StoreError::UnknownStream(_)) => break,
                Err(error) => return Err(ApiError::from(error)),
            };
            scanned += page.records.len();
            matched.extend(page.records.into_iter().rev().filter(|record| {
                event_type
                    .as_deref()
                    .is_none_or(|wanted| event_type_of(record) == wanted)
            }));
            match page.next {
                Some(next) if matched.len() < wanted && scanned < MAX_FILTER_SCAN => before = next,
                _ => break,
            }
        }
        matched
            .iter()
            .skip(offset)
            .take(limit)
            .map(|record| outgoing_event(&stream, record))
            .collect::<Vec<Value>>()
    };
    let mut response = wire::json(StatusCode::OK, &events);
    wire::set_number(&mut response, REVISION_HEADER, revision);
    Ok(response)
}

/// `since`, as the client sends it (`datetime.isoformat()`, naive or with an offset). A `+` of
/// an offset that reached the query unescaped was decoded as a space; it is read back as `+`.
fn since(query: &Query) -> Result<Option<Timestamp>, ApiError> {
    let Some(value) = query.get("since") else {
        return Ok(None);
    };
    parse_timestamp(value)
        .or_else(|error| match value.rfind(' ') {
            Some(at) if at > "YYYY-MM-DDTHH:MM".len() => {
                parse_timestamp(&format!("{}+{}", &value[..at], &value[at + 1..]))
            }
            _ => Err(error),
        })
        .map(Some)
        .map_err(|error| {
            ApiError::parameter("since", error.to_string().replace("field `ts`", "since"))
        })
}

/// The SSE frame of a record for OpenIntent subscribers: `event:` the event type, `data:` the
/// same object `GET .../events` returns, `id:` the revision of the change.
pub(super) fn sse_frame(stream: &StreamName, revision: u64, record: &Record) -> Bytes {
    let event = outgoing_event(stream, record);
    let event_type = event["event_type"].as_str().unwrap_or(NATIVE_EVENT_TYPE);
    Bytes::from(format!(
        "id: {revision}\nevent: {event_type}\ndata: {event}\n\n"
    ))
}

/// The frame that tells an OpenIntent subscriber that changes after `after` up to `next` are no
/// longer in the changelog: a `comment` event (recap's own `gap` event type is not one the
/// client knows) saying which, so it can re-read them with `get_events`.
pub(super) fn gap_frame(stream: &StreamName, after: u64, next: u64, now: Timestamp) -> Bytes {
    let event = json!({
        "id": format!("{stream}:gap:{next}"),
        "intent_id": stream.as_str(),
        "event_type": NATIVE_EVENT_TYPE,
        "actor": "recap",
        "payload": {
            "kind": "status",
            "severity": "warning",
            "message": format!("events after revision {after} and before {next} are no longer in recap's changelog; re-read them with get_events"),
            "after": after,
            "next": next,
        },
        "created_at": mapping::created_at(&now),
    });
    Bytes::from(format!("event: {NATIVE_EVENT_TYPE}\ndata: {event}\n\n"))
}

/// The frame that tells an OpenIntent subscriber that revision `after`, where it stands, is not
/// one of the intent's stream as it is now (`message` says why): a `comment` event saying so,
/// before the events from the start. Its `id: 0` makes a client that reconnects after it
/// resume from the start too.
pub(super) fn reset_frame(stream: &StreamName, after: u64, message: &str, now: Timestamp) -> Bytes {
    let event = json!({
        "id": format!("{stream}:reset:{after}"),
        "intent_id": stream.as_str(),
        "event_type": NATIVE_EVENT_TYPE,
        "actor": "recap",
        "payload": {
            "kind": "status",
            "severity": "warning",
            "message": message,
            "after": after,
            "reset": true,
        },
        "created_at": mapping::created_at(&now),
    });
    Bytes::from(format!(
        "id: 0\nevent: {NATIVE_EVENT_TYPE}\ndata: {event}\n\n"
    ))
}

/// A fresh random intent id in UUID form, after the key's stream prefix (so that a key confined
/// to `team-a.` creates intents it may use).
///
/// The bits come from std's per-process random hasher keys, mixed with a counter and the clock:
/// ids must be unique and hard to guess, not secret.
fn new_intent_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let salt = (
        COUNTER.fetch_add(1, Ordering::Relaxed),
        Utc::now().timestamp_nanos_opt(),
    );
    let state = RandomState::new();
    let high = state.hash_one((salt, 1u8));
    let low = state.hash_one((salt, 2u8));
    // Version 4, variant 10xx, as uuid4() would make.
    let high = (high & !0xF000) | 0x4000;
    let low = (low & !(0b11 << 62)) | (0b10 << 62);
    format!(
        "{prefix}{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xFFFF,
        high & 0xFFFF,
        low >> 48,
        low & 0xFFFF_FFFF_FFFF
    )
}

/// `POST /api/v1/intents`: creates an intent (201) with a fresh id and answers with the intent
/// object `create_intent` parses (`id`, `title`, `status: "active"`, ...).
///
/// The intent is a new stream whose first record is an `intent_created` event; its payload is
/// the request body (title, description, constraints, state, created_by, ...), which is where
/// `GET /api/v1/intents/{id}` reads the intent back from.
pub(super) async fn create_intent(
    app: &App,
    key: Option<&ApiKey>,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let body = body::read_json(body, headers, &app.options, &app.bodies).await?;
    let mut fields: Map<String, Value> = decode(&body.bytes)?;
    match fields.get("title") {
        Some(Value::String(title)) if !title.trim().is_empty() => {}
        Some(_) => {
            return Err(ApiError::from(EventError::Json {
                field: Some("title".into()),
                detail: "the title must be a non-empty string".into(),
            }));
        }
        None => return Err(ApiError::from(EventError::MissingField { field: "title" })),
    }
    // `message` would replace the rendered "intent created: <title>" line.
    fields.remove("message");
    let created_by = match fields.get("created_by") {
        Some(Value::String(by)) if !by.is_empty() => Some(by.clone()),
        None | Some(Value::Null | Value::String(_)) => {
            agent_id(headers).or_else(|| key.map(|key| key.name.clone()))
        }
        Some(_) => {
            return Err(ApiError::from(EventError::Json {
                field: Some("created_by".into()),
                detail: "created_by must be a string (the creating agent's id) or null".into(),
            }));
        }
    };
    if let Some(by) = &created_by {
        fields.insert("created_by".into(), Value::String(by.clone()));
    }
    let prefix = key.map_or("", |key| key.prefix.as_str());
    let mut stream = None;
    for _ in 0..ID_ATTEMPTS {
        let candidate = StreamName::new(&new_intent_id(prefix)).map_err(ApiError::from)?;
        if app.store.head(&candidate).await?.is_none() {
            stream = Some(candidate);
            break;
        }
    }
    let stream = stream.ok_or_else(|| ApiError::internal("no fresh intent id after retries"))?;
    let event = IncomingEvent {
        event_type: "intent_created".into(),
        actor: created_by,
        payload: fields,
        trace_id: None,
        parent_event_id: None,
    }
    .into_event(None, &app.options.limits)?;
    let appended = app.store.append(&stream, vec![event], Utc::now()).await?;
    let record = appended
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("an append of one event returned nothing"))?
        .record;
    let intent = mapping::intent_object(
        &stream,
        Some(&record),
        Some(record.first_ts),
        Some(record.last_ts),
    );
    let mut response = wire::json(StatusCode::CREATED, &intent);
    wire::set_number(&mut response, REVISION_HEADER, record.revision);
    Ok(response)
}

/// `GET /api/v1/intents/{id}`: the intent object of an existing stream (404 otherwise).
pub(super) async fn get_intent(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(query, GET_PARAMS)?;
    consistency::reach(app, &stream, Read::Stored, headers, &query).await?;
    let stats = app.store.stream(&stream).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownIntent,
            format!(
                "intent {:?} does not exist; create one with POST /api/v1/intents, or post an event to it",
                stream.as_str()
            ),
        )
    })?;
    let query = RecordQuery {
        limit: 1,
        ..RecordQuery::default()
    };
    let first = app
        .store
        .records(&stream, &query)
        .await?
        .records
        .into_iter()
        .next();
    let intent = mapping::intent_object(&stream, first.as_ref(), stats.first_ts, stats.last_ts);
    Ok(wire::json(StatusCode::OK, &intent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_ids_are_fresh_uuid_shaped_stream_names() {
        let a = new_intent_id("");
        let b = new_intent_id("");
        assert_ne!(a, b);
        assert_eq!(a.len(), 36, "{a}");
        assert_eq!(&a[14..15], "4", "{a}");
        assert!(StreamName::new(&a).is_ok());
        assert!(new_intent_id("team-a.").starts_with("team-a."));
    }

    #[test]
    fn since_takes_naive_offset_and_unescaped_plus() {
        let parse = |query: &str| since(&Query::parse(Some(query), &["since"]).unwrap());
        let naive = parse("since=2025-01-02T03:04:05").unwrap().unwrap();
        let offset = parse("since=2025-01-02T05:04:05.000001%2B02:00")
            .unwrap()
            .unwrap();
        assert_eq!(
            offset - naive,
            chrono::TimeDelta::microseconds(1),
            "naive is UTC"
        );
        let unescaped = parse("since=2025-01-02T05:04:05+02:00").unwrap().unwrap();
        assert_eq!(unescaped, naive);
        assert_eq!(
            parse("since=yesterday").unwrap_err().field.as_deref(),
            Some("since")
        );
    }

    #[test]
    fn frames_name_the_event_type_and_carry_the_revision() {
        let stream = StreamName::new("i-1").unwrap();
        let ts = parse_timestamp("2025-01-02T03:04:05Z").unwrap();
        let record = Record::from_event(
            crate::event::Event::new("tool", crate::event::Severity::Error, "boom").unwrap(),
            4,
            9,
            ts,
        );
        let frame = String::from_utf8(sse_frame(&stream, 9, &record).to_vec()).unwrap();
        assert!(
            frame.starts_with("id: 9\nevent: comment\ndata: {"),
            "{frame}"
        );
        assert_eq!(frame.matches('\n').count(), 4, "one data line: {frame}");
        let gap = String::from_utf8(gap_frame(&stream, 3, 7, ts).to_vec()).unwrap();
        assert!(gap.starts_with("event: comment\ndata: {"), "{gap}");
        let reset = String::from_utf8(reset_frame(&stream, 6, "why", ts).to_vec()).unwrap();
        assert!(
            reset.starts_with("id: 0\nevent: comment\ndata: {"),
            "{reset}"
        );
        assert_eq!(reset.matches('\n').count(), 4, "one data line: {reset}");
    }
}
