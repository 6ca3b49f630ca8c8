//! What goes over the wire: JSON response shapes, the error body, and THE one mapping from
//! library errors to HTTP statuses.
//!
//! Every refusal is an [`ApiError`]; handlers return `Result<Response, ApiError>` and
//! [`ApiError::into_response`] is the only place an error becomes a status and a body. 4xx
//! messages tell the client what to fix; 5xx say "internal error" and the cause goes to the log.
//!
//! Status choices (documented for clients):
//! - 400 for anything wrong in what the client sent: malformed JSON, invalid UTF-8, wrong JSON
//!   types, unknown fields, invalid values (kind, severity, timestamps, sizes), bad stream names
//!   and bad query parameters. 422 is not used: wrong types and wrong values are both mistakes
//!   in the request the client must fix, and one status for them keeps client code simple; the
//!   `code` member tells them apart.
//! - 401 no or unknown key; 403 a key outside its scope or stream prefix.
//! - 404 unknown route, stream or note; 405 wrong method (with `Allow`).
//! - 413 body over the cap (the rest is not read); 415 a content type recap does not take.
//! - 503 the server is shutting down; 500 anything else, logged.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::event::{EventError, serde_named_field};
use crate::rank::WeightError;
use crate::store::StoreError;
use crate::tokens::EncodingError;

use super::body::Body;

/// Response header carrying a stream revision the response reflects (at least).
pub const REVISION_HEADER: &str = "x-recap-revision";
/// Response header carrying the token count of a text context window.
pub const TOKENS_HEADER: &str = "x-recap-tokens";
/// Response header carrying the budget a text context window was built for.
pub const BUDGET_HEADER: &str = "x-recap-budget";
/// Response header carrying the encoding a text context window was counted with.
pub const ENCODING_HEADER: &str = "x-recap-encoding";
/// Response header set when some live notes did not fit the budget.
pub const NOTES_CUT_HEADER: &str = "x-recap-notes-cut";

/// The code of an error response, for the request log.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

/// A refused request: status, machine-readable code, a message that says what to fix, and the
/// offending field (and batch index) when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`invalid_json`, `unknown_severity`, ...).
    pub code: &'static str,
    /// What went wrong and what to do about it.
    pub message: String,
    /// The offending field or query parameter.
    pub field: Option<String>,
    /// For batches: the position (from 0) of the offending event.
    pub index: Option<usize>,
    /// For 405: the methods the route takes.
    pub allow: Option<&'static str>,
    /// For 503: seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            index: None,
            allow: None,
            retry_after: None,
        }
    }

    /// The same error with a `Retry-After` of `seconds`.
    pub fn retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// The same error naming a field.
    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    /// A bad query parameter.
    pub fn parameter(name: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message).with_field(name)
    }

    /// No route at this path.
    pub fn not_found(path: &str) -> ApiError {
        let hint = if path.starts_with("/api/") {
            "recap serves these OpenIntent routes: POST /api/v1/intents, GET /api/v1/intents/{id}, POST and GET /api/v1/intents/{id}/events, GET /api/v1/intents/{id}/subscribe (docs/openintent.md)"
        } else {
            "the API lives under /v1/streams (see the README's API table)"
        };
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {path}; {hint}"),
        )
    }

    /// The route exists but not with this method.
    pub fn method_not_allowed(method: &http::Method, allow: &'static str) -> ApiError {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here; use {allow}"),
            )
        }
    }

    /// An event of a batch was refused: the message and `index` say which one.
    pub fn in_batch(error: EventError, index: usize, line: Option<usize>) -> ApiError {
        let mut api = ApiError::from(error);
        api.message = match line {
            Some(line) => format!("event {index} (line {line}): {}", api.message),
            None => format!("event {index}: {}", api.message),
        };
        api.index = Some(index);
        api
    }

    /// A 500: the cause goes to the log, the client sees "internal error".
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(%cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the cause is in the server log",
        )
    }

    /// The response for this error in the given style.
    pub fn into_response_as(self, style: ErrorStyle) -> Response<Body> {
        let error = self.error_object();
        let body = match style {
            ErrorStyle::Recap => serde_json::json!({ "error": error }),
            // The `openintent` client reads a top-level `message` (and, on 400, `errors`); recap's
            // own `error` object rides along for clients that know it.
            ErrorStyle::OpenIntent => serde_json::json!({
                "message": self.message,
                "errors": self.field.iter()
                    .map(|field| serde_json::json!({"field": field, "message": self.message}))
                    .collect::<Vec<_>>(),
                "error": error,
            }),
        };
        let mut response = json_bytes(self.status, serde_json::to_vec(&body).unwrap_or_default());
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read; the connection cannot be reused.
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110: a 401 says how to authenticate.
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"recap\""),
            );
        }
        // The request log names the error; extensions never leave the server.
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }

    /// The response for this error, in recap's style.
    pub fn into_response(self) -> Response<Body> {
        self.into_response_as(ErrorStyle::Recap)
    }

    /// `{"code", "message", "field", "index"?}`.
    fn error_object(&self) -> serde_json::Value {
        let mut error = serde_json::json!({
            "code": self.code,
            "message": self.message,
            "field": self.field,
        });
        if let Some(index) = self.index {
            error["index"] = index.into();
        }
        error
    }
}

/// How an error body is shaped: recap's `{"error": {...}}`, or, on the OpenIntent routes (paths
/// under `/api/`), the same with a top-level `message` and `errors` the `openintent` client reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorStyle {
    /// `{"error": {"code", "message", "field"}}`.
    Recap,
    /// `{"message", "errors": [{"field", "message"}], "error": {...}}`.
    OpenIntent,
}

impl ErrorStyle {
    /// The style for a request path.
    pub fn for_path(path: &str) -> ErrorStyle {
        if path.starts_with("/api/") {
            ErrorStyle::OpenIntent
        } else {
            ErrorStyle::Recap
        }
    }
}

/// Decodes a small JSON object body (a note, a retention) into `T`, with an error that names
/// what is wrong the way event errors do: `invalid_json` for syntax, `unknown_field`,
/// `duplicate_field`, `missing_field` and `invalid_field` naming the field. `shape` is appended
/// to every message as an example of what to send.
pub fn decode_object<T: serde::de::DeserializeOwned>(
    text: &str,
    shape: &str,
) -> Result<T, ApiError> {
    let bad = |code, message: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("{message}; send {shape}"),
        )
    };
    // serde's derive would also take a positional array; these bodies are always objects.
    match text.trim_start().chars().next() {
        Some('{') => {}
        None => return Err(bad("invalid_json", "the body is empty".into())),
        Some(_) => return Err(bad("invalid_json", "the body must be a JSON object".into())),
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let decoded = serde_path_to_error::deserialize(&mut deserializer)
        .map(|value| (value, deserializer.end()));
    let error = match decoded {
        Ok((value, Ok(()))) => return Ok(value),
        Ok((_, Err(trailing))) => return Err(bad("invalid_json", trailing.to_string())),
        Err(error) => error,
    };
    let path = error.path().to_string();
    let inner = error.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return Err(bad("invalid_json", inner.to_string()));
    }
    let detail = inner.to_string();
    let detail = match detail.rfind(" at line ") {
        Some(at) => &detail[..at],
        None => &detail,
    };
    Err(match named_field_error(detail) {
        Some((code, field)) => bad(code, detail.to_owned()).with_field(field),
        None if path == "." || path.is_empty() => bad("invalid_json", detail.to_owned()),
        None => bad("invalid_field", detail.to_owned()).with_field(path),
    })
}

/// The error code and field of a struct-level serde problem, if `detail` is one.
fn named_field_error(detail: &str) -> Option<(&'static str, &str)> {
    [
        ("unknown field", "unknown_field"),
        ("duplicate field", "duplicate_field"),
        ("missing field", "missing_field"),
    ]
    .into_iter()
    .find_map(|(problem, code)| Some((code, serde_named_field(detail, problem)?)))
}

impl From<EventError> for ApiError {
    fn from(error: EventError) -> ApiError {
        let code = match &error {
            EventError::MissingField { .. } => "missing_field",
            EventError::InvalidKind { .. } => "invalid_kind",
            EventError::UnknownSeverity { .. } => "unknown_severity",
            EventError::InvalidStreamName { .. } => "invalid_stream_name",
            EventError::TooLong { .. } => "field_too_long",
            EventError::InvalidTimestamp { .. } => "invalid_timestamp",
            EventError::Json { field: None, .. } => "invalid_json",
            EventError::Json { field: Some(_), .. } => "invalid_field",
            EventError::UnknownField { .. } => "unknown_field",
            EventError::DuplicateField { .. } => "duplicate_field",
        };
        let field = error.field().map(str::to_owned);
        ApiError {
            field,
            ..ApiError::new(StatusCode::BAD_REQUEST, code, error.to_string())
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::UnknownStream(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_stream",
                format!(
                    "stream {name:?} does not exist; it is created by its first POST .../events"
                ),
            ),
            StoreError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; retry against the next instance",
            ),
            StoreError::DiskFull(_) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                error.to_string(),
            ),
            StoreError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                error.to_string(),
            )
            .retry_after(1),
            StoreError::Failed(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_failed",
                error.to_string(),
            ),
            StoreError::CountLimit { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", error.to_string())
                    .with_field("repeat_count")
            }
            StoreError::NoteLimit { .. } => {
                ApiError::new(StatusCode::CONFLICT, "note_limit", error.to_string())
            }
            StoreError::Damaged { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt",
                error.to_string(),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<EncodingError> for ApiError {
    fn from(error: EncodingError) -> ApiError {
        let field = match error {
            EncodingError::UnknownEncoding(_) => "encoding",
            _ => "model",
        };
        ApiError::parameter(field, error.to_string())
    }
}

impl From<WeightError> for ApiError {
    fn from(error: WeightError) -> ApiError {
        ApiError::parameter("weights", error.to_string())
    }
}

/// A JSON response from a serializable value.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => json_bytes(status, body),
        Err(error) => ApiError::internal(error).into_response(),
    }
}

/// A JSON response from bytes already serialized.
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::full(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An empty response (204 and the like).
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// Sets a numeric header.
pub fn set_number(response: &mut Response<Body>, name: &'static str, value: u64) {
    response
        .headers_mut()
        .insert(name, HeaderValue::from(value));
}

/// The answer to a write of events: one entry per event, in order, plus the revision the write
/// reached (a read that follows sees at least this revision).
#[derive(Debug, Serialize)]
pub struct WriteReply {
    /// One per event.
    pub records: Vec<WrittenRecord>,
    /// The highest revision this write took (the stream revision when the batch was empty).
    pub revision: u64,
}

/// Where one posted event landed.
#[derive(Debug, Serialize)]
pub struct WrittenRecord {
    /// The record it created or collapsed into.
    pub seq: u64,
    /// The record's repeat count after this event.
    pub repeat_count: u64,
    /// Whether the event collapsed into an existing record.
    pub collapsed: bool,
    /// The revision the change took.
    pub revision: u64,
}
