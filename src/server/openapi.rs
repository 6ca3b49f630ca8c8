//! `GET /openapi.json`: the API described as OpenAPI 3.1, built from the route table.
//!
//! Every operation comes from a row of [`ROUTES`] (method, path, scope, summary); its query
//! parameters are the lists the handlers parse with; its error responses come from
//! [`ErrorCode`]. What a route takes and answers is in [`operation`], a `match` over every
//! [`Endpoint`], so a new route does not compile until it is described. schemathesis checks the
//! running server against the document in CI (`make schemathesis`).
//!
//! The document needs no key to read (like `/healthz`): it holds no data, and tools read it
//! before they have a key. A key that is sent is not checked.

use std::sync::LazyLock;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Map, Value, json};

use crate::context::{DEFAULT_BUDGET_TOKENS, MAX_BUDGET_TOKENS, MAX_GOALS};
use crate::event::{
    DEFAULT_MAX_MESSAGE_BYTES, MAX_DISPLAY_MESSAGE_BYTES, MAX_EVENT_COUNT, MAX_KIND_BYTES,
    MAX_LABEL_BYTES, MAX_STREAM_NAME_BYTES,
};
use crate::store::MAX_PAGE_RECORDS;

use super::auth::Scope;
use super::query;
use super::table::{Access, Endpoint, ROUTES, Reply, Route};
use super::wire::{
    BUDGET_HEADER, Body, ENCODING_HEADER, ErrorCode, NOTES_CUT_HEADER, REVISION_HEADER,
    TOKENS_HEADER,
};
use super::{context, events, notes, openintent, sse, streams, ui};

/// The document, serialized once.
static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| {
    Bytes::from(serde_json::to_vec(&document()).unwrap_or_else(|_| b"{}".to_vec()))
});

/// `GET /openapi.json`.
pub(crate) fn response() -> Response<Body> {
    let mut response = Response::new(Body::full(DOCUMENT.clone()));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The OpenAPI document.
pub(super) fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths.entry(route.path).or_insert_with(|| json!({}));
        entry[route.method.as_str().to_ascii_lowercase()] = operation_of(route);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "recap",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Event memory for LLM agents: post events into streams, read a prompt-ready context window within an exact token budget. Errors are `{\"error\": {\"code\", \"message\", \"field\"}}` (the OpenIntent routes under /api/ add a top-level `message` and `errors`); `code` is one of the ErrorCode values, each with one status. With a keys file, every operation with a security requirement needs `Authorization: Bearer <key>` or `X-API-Key: <key>`, with the scope named in its description (`x-recap-scope`); without keys the server listens on loopback only and needs none. A `null` optional field is the same as leaving it out.",
            "license": {"name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0"},
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key as a bearer token."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    })
}

/// What an operation takes and answers, besides what the table says.
struct Operation {
    tag: &'static str,
    /// Query parameters, as the handler parses them.
    query: &'static [&'static str],
    /// Header parameters.
    headers: &'static [&'static str],
    /// Request body: media types with their schema, and whether it is required.
    body: Option<Value>,
    /// The answer when it goes well: status and response object.
    ok: (u16, Value),
    /// Error statuses this operation answers with, besides those every operation of its kind
    /// shares (see [`error_statuses`]).
    errors: &'static [u16],
    /// Statuses the MCP SDK answers itself, with a plain-text reason (or none).
    sdk: &'static [u16],
}

/// Every endpoint's parameters, body and answer. A `match` without a wildcard: a route added to
/// the table must be described here.
fn operation(endpoint: Endpoint) -> Operation {
    const NONE: &[&str] = &[];
    const MIN_REVISION: &[&str] = &["X-Recap-Min-Revision"];
    let op = |tag, query, body, ok, errors| Operation {
        tag,
        query,
        headers: NONE,
        body,
        ok,
        errors,
        sdk: &[],
    };
    match endpoint {
        Endpoint::Healthz => op(
            "service",
            NONE,
            None,
            (200, json_response("Healthy.", schema_ref("Health"))),
            &[503],
        ),
        Endpoint::OpenApi => op(
            "service",
            NONE,
            None,
            (
                200,
                json_response("This document.", json!({"type": "object"})),
            ),
            &[],
        ),
        Endpoint::Metrics => op(
            "service",
            NONE,
            None,
            (
                200,
                content_response(
                    "Prometheus text format.",
                    "text/plain",
                    json!({"type": "string"}),
                ),
            ),
            &[],
        ),
        Endpoint::ListStreams => op(
            "streams",
            streams::LIST_PARAMS,
            None,
            (
                200,
                json_response("A page of streams, by name.", schema_ref("StreamList")),
            ),
            &[400],
        ),
        Endpoint::GetStream => Operation {
            headers: MIN_REVISION,
            ..op(
                "streams",
                streams::GET_PARAMS,
                None,
                (
                    200,
                    with_revision(json_response(
                        "The stream's stats.",
                        schema_ref("StreamStats"),
                    )),
                ),
                &[404],
            )
        },
        Endpoint::DeleteStream => op(
            "streams",
            NONE,
            None,
            (204, json!({"description": "Deleted."})),
            &[404, 507],
        ),
        Endpoint::PutRetention => op(
            "streams",
            NONE,
            Some(json_body(schema_ref("Retention"))),
            (
                200,
                json_response("The retention now in force.", schema_ref("Retention")),
            ),
            &[507],
        ),
        Endpoint::PutAnomalies => op(
            "streams",
            NONE,
            Some(json_body(schema_ref("AnomalyOverrides"))),
            (
                200,
                json_response(
                    "The anomaly detection now in force for the stream.",
                    schema_ref("AnomalySettings"),
                ),
            ),
            &[507],
        ),
        Endpoint::PostEvents => op(
            "events",
            NONE,
            Some(events_body(schema_ref("Event"))),
            (
                200,
                with_revision(json_response(
                    "Where each event landed, once durable.",
                    schema_ref("WriteReply"),
                )),
            ),
            &[507],
        ),
        Endpoint::GetEvents => Operation {
            headers: MIN_REVISION,
            ..op(
                "events",
                events::HISTORY_PARAMS,
                None,
                (
                    200,
                    with_revision(json_response(
                        "A page of records in seq order.",
                        schema_ref("RecordPage"),
                    )),
                ),
                &[404],
            )
        },
        Endpoint::PostRecords => op(
            "events",
            NONE,
            Some(events_body(schema_ref("ImportedRecord"))),
            (
                200,
                with_revision(json_response(
                    "Where each record landed, once durable.",
                    schema_ref("WriteReply"),
                )),
            ),
            &[507],
        ),
        Endpoint::GetContext => Operation {
            headers: MIN_REVISION,
            ..op(
                "context",
                context::PARAMS,
                None,
                (200, context_response()),
                &[],
            )
        },
        Endpoint::PostNote => op(
            "notes",
            NONE,
            Some(json_body(schema_ref("NoteInput"))),
            (
                201,
                with_revision(json_response("The note, once durable.", schema_ref("Note"))),
            ),
            &[409, 507],
        ),
        Endpoint::GetNotes => Operation {
            headers: MIN_REVISION,
            ..op(
                "notes",
                notes::LIST_PARAMS,
                None,
                (
                    200,
                    with_revision(json_response(
                        "A page of live notes, oldest first.",
                        schema_ref("NoteList"),
                    )),
                ),
                &[],
            )
        },
        Endpoint::DeleteNote => op(
            "notes",
            NONE,
            None,
            (204, with_revision(json!({"description": "Deleted."}))),
            &[404, 507],
        ),
        Endpoint::Subscribe => Operation {
            headers: &["Last-Event-ID", "X-Recap-Min-Revision"],
            ..op("events", sse::PARAMS, None, (200, feed_response()), &[])
        },
        Endpoint::CreateIntent => op(
            "openintent",
            NONE,
            Some(json_body(schema_ref("IntentInput"))),
            (201, json_response("The intent.", schema_ref("Intent"))),
            &[507],
        ),
        Endpoint::GetIntent => Operation {
            headers: MIN_REVISION,
            ..op(
                "openintent",
                openintent::GET_PARAMS,
                None,
                (200, json_response("The intent.", schema_ref("Intent"))),
                &[404],
            )
        },
        Endpoint::PostIntentEvent => op(
            "openintent",
            NONE,
            Some(json_body(schema_ref("IntentEventInput"))),
            (
                200,
                json_response(
                    "The event as stored (or the record it collapsed into).",
                    schema_ref("IntentEvent"),
                ),
            ),
            &[507],
        ),
        Endpoint::GetIntentEvents => Operation {
            headers: MIN_REVISION,
            ..op(
                "openintent",
                openintent::LIST_PARAMS,
                None,
                (
                    200,
                    json_response(
                        "The intent's events, newest first.",
                        json!({"type": "array", "items": schema_ref("IntentEvent")}),
                    ),
                ),
                &[],
            )
        },
        Endpoint::SubscribeIntent | Endpoint::SubscribeIntentAlias => Operation {
            headers: &["Last-Event-ID", "X-Recap-Min-Revision"],
            ..op("openintent", sse::PARAMS, None, (200, feed_response()), &[])
        },
        Endpoint::Ui | Endpoint::UiStream => op(
            "ui",
            NONE,
            None,
            (
                200,
                content_response("The page.", "text/html", json!({"type": "string"})),
            ),
            &[],
        ),
        Endpoint::UiAsset => op(
            "ui",
            NONE,
            None,
            (
                200,
                json!({
                    "description": "The file.",
                    "content": {
                        "text/javascript": {"schema": {"type": "string"}},
                        "text/css": {"schema": {"type": "string"}},
                        "image/svg+xml": {"schema": {"type": "string"}},
                    },
                }),
            ),
            &[404],
        ),
        Endpoint::McpPost => Operation {
            sdk: &[202, 400, 404, 406, 415, 422],
            ..op(
                "mcp",
                NONE,
                Some(json_body(
                    json!({"type": "object", "description": "A JSON-RPC 2.0 message of the Model Context Protocol."}),
                )),
                (
                    200,
                    json!({
                        "description": "The JSON-RPC answer: plain JSON, or for `subscriptions/listen` an SSE stream of the subscription's notifications that ends with its result.",
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    }),
                ),
                &[],
            )
        },
        Endpoint::McpGet | Endpoint::McpDelete => op(
            "mcp",
            NONE,
            None,
            (
                405,
                json!({"description": "Answered by the MCP SDK: a stateless server has no session feed and no session to end (`Allow: POST`)."}),
            ),
            &[],
        ),
    }
}

/// The operation object of one route.
fn operation_of(route: &Route) -> Value {
    let described = operation(route.endpoint);
    let summary = route.summary.trim();
    let mut operation = json!({
        "operationId": operation_id(route.endpoint),
        "summary": summary,
        "tags": [described.tag],
    });
    let mut description = String::from(summary);
    match route.access {
        Access::Open => {
            operation["security"] = json!([]);
            description.push_str(" Needs no key.");
        }
        Access::AnyKey => {
            operation["security"] = security();
            description.push_str(" Needs any valid key; each tool checks its own scope.");
        }
        Access::Scope(scope) => {
            operation["security"] = security();
            operation["x-recap-scope"] = json!(scope_name(scope));
            description.push_str(&format!(
                " Needs a key with the `{}` scope{}.",
                scope_name(scope),
                if route.path.contains('{') {
                    " whose prefix covers the stream"
                } else {
                    ""
                }
            ));
        }
    }
    if route.reply == Reply::Feed {
        description.push_str(" Not served for HEAD.");
    }
    operation["description"] = json!(description);
    let mut parameters: Vec<Value> = path_parameters(route.path);
    parameters.extend(
        described
            .query
            .iter()
            .map(|name| query_parameter(route.endpoint, name)),
    );
    parameters.extend(described.headers.iter().map(|name| header_parameter(name)));
    if !parameters.is_empty() {
        operation["parameters"] = json!(parameters);
    }
    if let Some(body) = &described.body {
        operation["requestBody"] = body.clone();
    }
    let mut responses = Map::new();
    let errors = error_statuses(route, &described);
    let (status, ok) = described.ok;
    responses.insert(status.to_string(), ok);
    for status in described.sdk {
        let description = match status {
            202 => "Accepted (a notification or a response): no body.",
            _ => "Answered by the MCP SDK, with a short plain-text reason.",
        };
        responses.insert(status.to_string(), json!({"description": description}));
    }
    for status in errors {
        responses
            .entry(status.to_string())
            .or_insert_with(|| error_response(status, route.path));
    }
    operation["responses"] = Value::Object(responses);
    operation
}

/// `getContext` for `GetContext`.
fn operation_id(endpoint: Endpoint) -> String {
    let name = format!("{endpoint:?}");
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Read => "read",
        Scope::Write => "write",
        Scope::Admin => "admin",
    }
}

fn security() -> Value {
    json!([{"bearer": []}, {"apiKey": []}])
}

/// The error statuses of a route: those of its key, stream, query and body, plus its own.
fn error_statuses(route: &Route, described: &Operation) -> Vec<u16> {
    let mut statuses = vec![500];
    if route.access != Access::Open {
        statuses.extend([401, 403, 503]);
    }
    if route.path.contains('{') {
        // A bad stream name; a name that is empty or holds a `/` matches no route.
        statuses.extend([400, 404]);
    }
    if !described.query.is_empty() || !described.headers.is_empty() {
        statuses.push(400);
    }
    if described.headers.contains(&"X-Recap-Min-Revision") {
        // `behind`: the revision asked for did not arrive within the wait.
        statuses.push(503);
    }
    if described.body.is_some() {
        statuses.extend([400, 408, 413, 415, 503]);
    }
    statuses.extend(described.errors);
    statuses.sort_unstable();
    statuses.dedup();
    statuses
}

/// The response object of an error status: the codes it carries, in the route's error style.
fn error_response(status: u16, path: &str) -> Value {
    let codes: Vec<&str> = ErrorCode::ALL
        .iter()
        .filter(|code| code.status().as_u16() == status)
        .map(|code| code.as_str())
        .collect();
    let schema = if path.starts_with("/api/") {
        "OpenIntentError"
    } else {
        "Error"
    };
    let description = if codes.is_empty() {
        format!("Status {status}.")
    } else {
        format!("`code`: {}.", codes.join(", "))
    };
    let mut response = json_response(&description, schema_ref(schema));
    match status {
        405 => response["headers"] = json!({"Allow": {"schema": {"type": "string"}}}),
        503 | 429 => {
            response["headers"] = json!({"Retry-After": {"schema": {"type": "integer"}}});
        }
        _ => {}
    }
    if status == 503 && path == "/healthz" {
        return json_response(
            "Writes fail (`degraded`) or the store failed (`failed`).",
            schema_ref("Health"),
        );
    }
    response
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_response(description: &str, schema: Value) -> Value {
    content_response(description, "application/json", schema)
}

fn content_response(description: &str, media_type: &str, schema: Value) -> Value {
    json!({"description": description, "content": {media_type: {"schema": schema}}})
}

fn with_revision(mut response: Value) -> Value {
    response["headers"] = json!({
        "X-Recap-Revision": {
            "description": "A stream revision this response reflects (at least).",
            "schema": {"type": "integer", "minimum": 0},
        },
    });
    response
}

fn json_body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

/// One item, a JSON array of them, or NDJSON (one per line).
fn events_body(item: Value) -> Value {
    json!({
        "required": true,
        "description": "One object, a JSON array of them, or `application/x-ndjson` (one object per line). All or nothing: the first bad item refuses the request, naming its index (and line).",
        "content": {
            "application/json": {"schema": {"oneOf": [item, {"type": "array", "items": item}]}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    })
}

fn context_response() -> Value {
    let header =
        |description: &str, schema: Value| json!({"description": description, "schema": schema});
    json!({
        "description": "The window: text (`format=text`, the default) or JSON with the budget receipt (`format=json`).",
        "headers": {
            TOKENS_HEADER: header("Tokens of the text, counted with the encoding.", json!({"type": "integer", "minimum": 0})),
            BUDGET_HEADER: header("The budget (text form).", json!({"type": "integer", "minimum": 0})),
            ENCODING_HEADER: header("The encoding (text form).", json!({"type": "string"})),
            NOTES_CUT_HEADER: header("`true` when live notes did not fit (text form).", json!({"type": "string"})),
            REVISION_HEADER: header("A stream revision the window reflects (at least).", json!({"type": "integer", "minimum": 0})),
        },
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": schema_ref("ContextWindow")},
        },
    })
}

fn feed_response() -> Value {
    content_response(
        "Server-sent events: `id:` the stream revision, `event:` `record`, `repeat`, `note`, `note_deleted` or `gap` (the OpenIntent routes: the event type), `data:` one JSON object. `: keepalive` comments while idle.",
        "text/event-stream",
        json!({"type": "string"}),
    )
}

/// The path parameters of a template.
fn path_parameters(path: &str) -> Vec<Value> {
    let openintent = path.starts_with("/api/");
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let (description, schema) = match name {
                "s" => ("The stream's name (`:` may be sent as `%3A`).", schema_ref("StreamName")),
                "id" if openintent => (
                    "The intent id: a stream name.",
                    schema_ref("StreamName"),
                ),
                "id" => (
                    "The note's id, as GET .../notes lists it.",
                    json!({"type": "string", "pattern": "^[0-9]+$"}),
                ),
                _ => (
                    "The file's name.",
                    json!({"type": "string", "enum": ui::asset_names().collect::<Vec<_>>()}),
                ),
            };
            json!({"name": name, "in": "path", "required": true, "description": description, "schema": schema})
        })
        .collect()
}

/// A query parameter of `endpoint`, by the name its handler parses. An empty value is refused
/// (but for `prefix`), so string parameters say `minLength: 1`.
fn query_parameter(endpoint: Endpoint, name: &str) -> Value {
    let whole = |minimum: u64| json!({"type": "integer", "minimum": minimum});
    let (description, schema): (String, Value) = match name {
        "budget" => (
            format!("Token budget (default {DEFAULT_BUDGET_TOKENS})."),
            json!({"type": "integer", "minimum": 0, "maximum": MAX_BUDGET_TOKENS, "default": DEFAULT_BUDGET_TOKENS}),
        ),
        "encoding" => (
            "The tiktoken encoding tokens are counted in (default cl100k_base).".into(),
            json!({"type": "string", "enum": ["cl100k_base", "o200k_base"]}),
        ),
        "model" => (
            "A model name, mapped to its encoding as tiktoken maps it (not with `encoding`)."
                .into(),
            json!({"type": "string"}),
        ),
        "format" => (
            "text (the default) or json (with the budget receipt).".into(),
            json!({"type": "string", "enum": ["text", "json"]}),
        ),
        "min_severity" => (
            "Only records of this severity or higher (any case; aliases warn, err, fatal).".into(),
            json!({"type": "string", "pattern": severity_pattern()}),
        ),
        "kinds" => (
            "Only these kinds, comma-separated (the parameter may repeat).".into(),
            json!({"type": "string"}),
        ),
        "since" | "until" => (
            format!(
                "Only records active {} this time (RFC 3339; naive times are UTC).",
                if name == "since" {
                    "at or after"
                } else {
                    "before"
                }
            ),
            json!({"type": "string"}),
        ),
        "weights" => (
            "Weight overrides, `kind=weight` pairs, comma-separated.".into(),
            json!({"type": "string"}),
        ),
        "line_cap" => (
            "Most tokens one record's line may take (default: a fraction of the budget).".into(),
            whole(1),
        ),
        "goals" => (
            format!(
                "How many of the stream's opening task/user records to keep (0 to {MAX_GOALS})."
            ),
            json!({"type": "integer", "minimum": 0, "maximum": MAX_GOALS}),
        ),
        "after" if endpoint == Endpoint::ListStreams => (
            "The page after this stream name (the previous page's `next`).".into(),
            json!({"type": "string"}),
        ),
        "after" | "before" => (
            format!(
                "A cursor: {} (the previous page's `next`).",
                match endpoint {
                    Endpoint::GetNotes => "the page after this note id",
                    Endpoint::GetEvents if name == "before" =>
                        "records before this seq (a backward page)",
                    Endpoint::GetEvents => "records after this seq",
                    _ => "the changes after this revision",
                }
            ),
            whole(0),
        ),
        "limit" if endpoint == Endpoint::GetNotes => (
            format!(
                "Most notes in the page (default {}).",
                notes::DEFAULT_NOTES_PAGE
            ),
            json!({"type": "integer", "minimum": 1, "maximum": notes::MAX_NOTES_PAGE}),
        ),
        "limit" => (
            format!("Most items in the page (larger values are clamped to {MAX_PAGE_RECORDS})."),
            whole(1),
        ),
        "offset" => ("Matches to skip.".into(), whole(0)),
        "prefix" => (
            "Only streams whose names start with this.".into(),
            json!({"type": "string"}),
        ),
        "min_revision" => (
            "The stream revision the answer must reflect (as `X-Recap-Min-Revision`): the node waits up to 2 s for it, then answers 503 `behind` with `Retry-After`.".into(),
            whole(0),
        ),
        "event_type" => (
            "Only events of this OpenIntent event type.".into(),
            json!({"type": "string"}),
        ),
        other => (format!("`{other}`."), json!({"type": "string"})),
    };
    let mut schema = schema;
    if schema["type"] == "string" && !query::EMPTY_ALLOWED.contains(&name) {
        // An empty value is refused (`?kinds=`), not read as absent.
        schema["minLength"] = json!(1);
    }
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn header_parameter(name: &str) -> Value {
    let description = match name {
        "X-Recap-Min-Revision" => {
            "The stream revision the answer must reflect (a write's `X-Recap-Revision`, from any node): the node waits up to 2 s for it, then answers 503 `behind` with `Retry-After`."
        }
        _ => "Resume after this revision (what the feed's `id:` said).",
    };
    json!({
        "name": name,
        "in": "header",
        "required": false,
        "description": description,
        "schema": {"type": "string", "pattern": "^\\s*[0-9]+\\s*$"},
    })
}

/// The severities as recap reads them: any case, with the aliases.
fn severity_pattern() -> String {
    let words = [
        "debug", "info", "warning", "warn", "error", "err", "critical", "fatal",
    ];
    let alternatives: Vec<String> = words
        .iter()
        .map(|word| {
            word.chars()
                .map(|c| format!("[{}{}]", c, c.to_ascii_uppercase()))
                .collect()
        })
        .collect();
    format!("^({})$", alternatives.join("|"))
}

/// A record as `GET .../events` or `recap export` wrote it: an event's fields with its times and
/// count (`seq` and `revision` are assigned anew and ignored; `note` makes a note's audit
/// record's note again).
fn imported_record() -> Value {
    let mut record = event_schema();
    let properties = &mut record["properties"];
    properties["first_ts"] = json!({"type": "string", "description": "RFC 3339."});
    properties["last_ts"] =
        json!({"type": "string", "description": "RFC 3339, not before first_ts."});
    properties["repeat_count"] =
        json!({"type": "integer", "minimum": 1, "maximum": MAX_EVENT_COUNT});
    properties["seq"] = json!({"description": "Ignored."});
    properties["revision"] = json!({"description": "Ignored."});
    properties["note"] = json!({
        "type": ["object", "null"],
        "additionalProperties": false,
        "required": ["created_at"],
        "properties": {"created_at": {"type": "string"}, "expires_at": {"type": ["string", "null"]}},
        "description": "On a note's audit record (kind `note`): the note is made again.",
    });
    record["required"] = json!(["kind", "message", "first_ts", "last_ts", "repeat_count"]);
    record["description"] = json!("A record as GET .../events or `recap export` wrote it.");
    record
}

/// An event as a client posts it.
fn event_schema() -> Value {
    let string_or_null = |max: usize| json!({"type": ["string", "null"], "maxLength": max});
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["kind", "message"],
        "properties": {
            "message": {"type": "string", "maxLength": DEFAULT_MAX_MESSAGE_BYTES, "description": "Kept verbatim; may be empty. At most 64 KiB (max_message_bytes)."},
            "kind": {"type": "string", "pattern": format!("^[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{}}}$", MAX_KIND_BYTES - 1), "description": "Lower-cased. Well-known kinds weigh more in the context."},
            "severity": {"type": ["string", "null"], "pattern": severity_pattern(), "description": "debug, info (default), warning, error, critical; any case; aliases warn, err, fatal."},
            "ts": {"type": ["string", "null"], "description": "RFC 3339 (naive times are UTC); the server's time when absent; at most 24 hours ahead of the server's clock."},
            "display_message": string_or_null(MAX_DISPLAY_MESSAGE_BYTES),
            "actor": string_or_null(MAX_LABEL_BYTES),
            "step_id": string_or_null(MAX_LABEL_BYTES),
            "payload": {"type": ["object", "null"], "description": "Stored and returned, never rendered into the context."},
        },
    })
}

/// The component schemas: what bodies and answers hold.
fn schemas() -> Value {
    let whole = json!({"type": "integer", "minimum": 0});
    let timestamp = json!({"type": "string", "description": "RFC 3339, UTC, microseconds."});
    let error_object = json!({
        "type": "object",
        "required": ["code", "message", "field"],
        "properties": {
            "code": {"type": "string", "enum": ErrorCode::ALL.iter().map(|code| code.as_str()).collect::<Vec<_>>()},
            "message": {"type": "string", "description": "What is wrong and what to do about it."},
            "field": {"type": ["string", "null"], "description": "The offending field or parameter."},
            "index": {"type": "integer", "minimum": 0, "description": "For batches: the offending item."},
        },
    });
    json!({
        "StreamName": {
            "type": "string",
            "pattern": format!("^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{}}}$", MAX_STREAM_NAME_BYTES - 1),
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": error_object},
        },
        "OpenIntentError": {
            "type": "object",
            "required": ["message", "errors", "error"],
            "properties": {
                "message": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "required": ["field", "message"], "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
                "error": error_object,
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded", "failed"]},
                "cause": {"type": "string"},
            },
        },
        "Event": event_schema(),
        "Record": {
            "type": "object",
            "required": ["seq", "message", "kind", "severity", "first_ts", "last_ts", "repeat_count", "revision"],
            "properties": {
                "seq": whole,
                "message": {"type": "string"},
                "kind": {"type": "string"},
                "severity": {"type": "string", "enum": ["debug", "info", "warning", "error", "critical"]},
                "first_ts": timestamp,
                "last_ts": timestamp,
                "repeat_count": {"type": "integer", "minimum": 1},
                "revision": whole,
                "display_message": {"type": "string"},
                "actor": {"type": "string"},
                "step_id": {"type": "string"},
                "payload": {"type": "object"},
                "note": {"type": "object"},
            },
        },
        "ImportedRecord": imported_record(),
        "WriteReply": {
            "type": "object",
            "required": ["records", "revision"],
            "properties": {
                "records": {"type": "array", "items": {
                    "type": "object",
                    "required": ["seq", "repeat_count", "collapsed", "revision"],
                    "properties": {"seq": whole, "repeat_count": whole, "collapsed": {"type": "boolean"}, "revision": whole},
                }},
                "revision": whole,
            },
        },
        "RecordPage": {
            "type": "object",
            "required": ["records", "next"],
            "properties": {
                "records": {"type": "array", "items": schema_ref("Record")},
                "next": {"type": ["integer", "null"], "minimum": 0},
                "removed": {"type": "object", "required": ["from", "to"], "properties": {"from": whole, "to": whole}},
            },
        },
        "Retention": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "max_records": {"type": ["integer", "null"], "minimum": 1},
                "max_age_seconds": {"type": ["integer", "null"], "minimum": 1},
            },
        },
        "AnomalyOverrides": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "enabled": {"type": ["boolean", "null"]},
                "repeat_actions": {"type": ["integer", "null"], "minimum": 0},
                "oscillation_cycles": {"type": ["integer", "null"], "minimum": 0},
                "error_recurrences": {"type": ["integer", "null"], "minimum": 0},
                "stall_seconds": {"type": ["integer", "null"], "minimum": 0},
            },
        },
        "AnomalySettings": {
            "type": "object",
            "required": ["enabled", "repeat_actions", "oscillation_cycles", "error_recurrences", "stall_seconds"],
            "properties": {
                "enabled": {"type": "boolean"},
                "repeat_actions": whole,
                "oscillation_cycles": whole,
                "error_recurrences": whole,
                "stall_seconds": whole,
            },
        },
        "StreamStats": {
            "type": "object",
            "required": ["name", "records", "stored_records", "events", "revision", "kinds", "severities", "notes", "retention"],
            "properties": {
                "name": schema_ref("StreamName"),
                "records": whole,
                "stored_records": whole,
                "events": whole,
                "revision": whole,
                "first_ts": {"type": ["string", "null"]},
                "last_ts": {"type": ["string", "null"]},
                "kinds": {"type": "object", "additionalProperties": whole},
                "severities": {"type": "object", "additionalProperties": whole},
                "notes": whole,
                "retention": schema_ref("Retention"),
            },
        },
        "StreamList": {
            "type": "object",
            "required": ["streams", "next"],
            "properties": {
                "streams": {"type": "array", "items": schema_ref("StreamStats")},
                "next": {"oneOf": [schema_ref("StreamName"), {"type": "null"}]},
            },
        },
        "NoteInput": {
            "type": "object",
            "additionalProperties": false,
            "required": ["text"],
            "properties": {
                "text": {"type": "string", "minLength": 1, "maxLength": DEFAULT_MAX_MESSAGE_BYTES},
                "expires_at": {"type": ["string", "null"], "description": "RFC 3339, in the future."},
            },
        },
        "Note": {
            "type": "object",
            "required": ["id", "text", "created_at"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "text": {"type": "string"},
                "created_at": timestamp,
                "expires_at": timestamp,
            },
        },
        "NoteList": {
            "type": "object",
            "required": ["notes", "next"],
            "properties": {
                "notes": {"type": "array", "items": schema_ref("Note")},
                "next": {"type": ["integer", "null"]},
            },
        },
        "ContextWindow": {
            "type": "object",
            "required": ["text", "tokens", "budget", "encoding", "notes_cut", "items", "revision"],
            "properties": {
                "text": {"type": "string"},
                "tokens": whole,
                "budget": whole,
                "encoding": {"type": "string", "enum": ["cl100k_base", "o200k_base"]},
                "notes_cut": {"type": "boolean"},
                "line_cap": whole,
                "items": {"type": "array", "items": {"type": "object", "description": "A candidate's seq, token cost, score, and whether it was included or elided (and why)."}},
                "totals": {"type": "object"},
                "revision": whole,
            },
        },
        "IntentInput": {
            "type": "object",
            "required": ["title"],
            "properties": {
                "title": {"type": "string", "minLength": 1},
                "description": {"description": "Kept with the intent, as are any other fields."},
                "created_by": {"type": ["string", "null"], "description": "The creating agent (default: X-Agent-ID, or the key's name)."},
            },
        },
        "Intent": {
            "type": "object",
            "required": ["id", "title", "status"],
            "properties": {
                "id": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "string"},
            },
        },
        "IntentEventInput": {
            "type": "object",
            "required": ["event_type"],
            "properties": {
                "event_type": {"type": "string", "minLength": 1},
                "actor": {"type": ["string", "null"]},
                "payload": {"type": ["object", "null"]},
                "trace_id": {"type": ["string", "null"]},
                "parent_event_id": {"type": ["string", "null"]},
            },
        },
        "IntentEvent": {
            "type": "object",
            "required": ["id", "intent_id", "event_type", "payload", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "intent_id": {"type": "string"},
                "event_type": {"type": "string"},
                "payload": {"type": "object"},
                "created_at": {"type": "string"},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_an_operation_with_its_scope() {
        let document = document();
        for route in ROUTES {
            let operation =
                &document["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
            assert!(operation.is_object(), "{route:?}");
            let scope = operation.get("x-recap-scope").and_then(Value::as_str);
            let expected = match route.access {
                Access::Scope(scope) => Some(scope_name(scope)),
                Access::Open | Access::AnyKey => None,
            };
            assert_eq!(scope, expected, "{route:?}");
            assert_eq!(
                operation["security"] == json!([]),
                route.access == Access::Open,
                "{route:?}"
            );
        }
    }

    #[test]
    fn every_schema_reference_resolves() {
        let document = document();
        let text = document.to_string();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = &reference[..reference.find('"').unwrap()];
            assert!(
                document["components"]["schemas"][name].is_object(),
                "{name}"
            );
        }
    }

    #[test]
    fn every_query_parameter_is_described() {
        for route in ROUTES {
            for name in operation(route.endpoint).query {
                let parameter = query_parameter(route.endpoint, name);
                assert!(
                    !parameter["description"].as_str().unwrap().starts_with('`'),
                    "{name} of {} has no description",
                    route.path
                );
            }
        }
    }

    #[test]
    fn the_severity_pattern_takes_what_the_server_takes() {
        let pattern = severity_pattern();
        for word in [
            "debug", "INFO", "Warn", "warning", "err", "ERROR", "fatal", "Critical",
        ] {
            assert!(word.parse::<crate::event::Severity>().is_ok(), "{word}");
            let lower = word.to_ascii_lowercase();
            assert!(
                pattern.contains(
                    &lower
                        .chars()
                        .map(|c| format!("[{}{}]", c, c.to_ascii_uppercase()))
                        .collect::<String>()
                ),
                "{word}"
            );
        }
    }
}
