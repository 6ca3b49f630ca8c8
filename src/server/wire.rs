//! What goes over the wire: the response body type, JSON response shapes, the error codes
//! ([`ErrorCode`], each with its status), the error body, and THE one mapping from library
//! errors to HTTP statuses.
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
//! - 503 the server is shutting down, busy or its store unavailable; 507 the disk is full; 500
//!   anything else, logged.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, SizeHint};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::event::EventError;
use crate::rank::WeightError;
use crate::store::StoreError;
use crate::tokens::EncodingError;

/// Response header carrying a stream revision the response reflects (at least).
pub const REVISION_HEADER: &str = "x-recap-revision";
/// Request header of reads: the stream revision the answer must reflect (see
/// `X-Recap-Min-Revision` in the README); the node waits for it, briefly, or answers 503.
pub const MIN_REVISION_HEADER: &str = "x-recap-min-revision";
/// Response header carrying the token count of a text context window.
pub const TOKENS_HEADER: &str = "x-recap-tokens";
/// Response header carrying the budget a text context window was built for.
pub const BUDGET_HEADER: &str = "x-recap-budget";
/// Response header carrying the encoding a text context window was counted with.
pub const ENCODING_HEADER: &str = "x-recap-encoding";
/// Response header set when some live notes did not fit the budget.
pub const NOTES_CUT_HEADER: &str = "x-recap-notes-cut";

/// Declares [`ErrorCode`]: each code with its HTTP status and what it means, in one place.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])+ $variant:ident = $code:literal, $status:ident;)+) => {
        /// Every `code` an error response carries, with its HTTP status: the one list of what a
        /// client can be told (`GET /openapi.json` lists them too). Codes are stable: a client
        /// may match on them.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl ErrorCode {
            /// Every code, in declaration order (grouped by status).
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The code as it appears in the body (`invalid_json`, ...).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }

            /// The HTTP status every error with this code is answered with.
            pub fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)+
                }
            }

            /// What the code means, for the API description.
            pub fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => concat!($($doc),+).trim_ascii(),)+
                }
            }
        }
    };
}

error_codes! {
    /// The body or a JSON value in it is not valid JSON (or not the JSON shape expected).
    InvalidJson = "invalid_json", BAD_REQUEST;
    /// The body is not valid UTF-8.
    InvalidUtf8 = "invalid_utf8", BAD_REQUEST;
    /// The body is empty where a write needs one.
    EmptyBody = "empty_body", BAD_REQUEST;
    /// The body could not be read (the connection broke, say).
    BodyReadFailed = "body_read_failed", BAD_REQUEST;
    /// A field this object does not have (`field` names it).
    UnknownField = "unknown_field", BAD_REQUEST;
    /// A field given twice.
    DuplicateField = "duplicate_field", BAD_REQUEST;
    /// A required field is missing or empty.
    MissingField = "missing_field", BAD_REQUEST;
    /// A field's value has the wrong type or is out of range.
    InvalidField = "invalid_field", BAD_REQUEST;
    /// A `kind` outside `[a-z0-9][a-z0-9_.:-]{0,63}`.
    InvalidKind = "invalid_kind", BAD_REQUEST;
    /// A severity other than debug, info, warning, error, critical (or an alias).
    UnknownSeverity = "unknown_severity", BAD_REQUEST;
    /// A stream name outside `[A-Za-z0-9][A-Za-z0-9._:-]{0,127}`.
    InvalidStreamName = "invalid_stream_name", BAD_REQUEST;
    /// A field over its size limit.
    FieldTooLong = "field_too_long", BAD_REQUEST;
    /// A timestamp that is not RFC 3339.
    InvalidTimestamp = "invalid_timestamp", BAD_REQUEST;
    /// A query parameter (or header such as `Last-Event-ID`) is unknown, repeated or invalid.
    InvalidParameter = "invalid_parameter", BAD_REQUEST;
    /// A note's `expires_at` is already past.
    ExpiredNote = "expired_note", BAD_REQUEST;
    /// An OpenIntent intent id that is not a stream name.
    InvalidIntentId = "invalid_intent_id", BAD_REQUEST;
    /// No API key, or not a valid one.
    Unauthorized = "unauthorized", UNAUTHORIZED;
    /// The key lacks the scope the route needs, or the stream is outside its prefix.
    Forbidden = "forbidden", FORBIDDEN;
    /// No route at this path (or no such web view asset).
    NotFound = "not_found", NOT_FOUND;
    /// The stream does not exist.
    UnknownStream = "unknown_stream", NOT_FOUND;
    /// The note does not exist.
    UnknownNote = "unknown_note", NOT_FOUND;
    /// The OpenIntent intent does not exist.
    UnknownIntent = "unknown_intent", NOT_FOUND;
    /// The route does not take this method (`Allow` lists those it takes).
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED;
    /// The body did not arrive in time.
    BodyTimeout = "body_timeout", REQUEST_TIMEOUT;
    /// The stream holds as many notes (or bytes of note text) as it may.
    NoteLimit = "note_limit", CONFLICT;
    /// The body is over the size limit (the rest is not read; the connection closes).
    BodyTooLarge = "body_too_large", PAYLOAD_TOO_LARGE;
    /// A content type the route does not take.
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE;
    /// A server fault; the cause is in the server log.
    Internal = "internal", INTERNAL_SERVER_ERROR;
    /// A row of the data file the read needs is damaged (the message names the stream and
    /// the row); nothing damaged is served. `recap check` lists every damaged row.
    Corrupt = "corrupt", INTERNAL_SERVER_ERROR;
    /// No room to read the body in time (too many large bodies at once); retry shortly.
    Busy = "busy", SERVICE_UNAVAILABLE;
    /// The server is shutting down.
    ShuttingDown = "shutting_down", SERVICE_UNAVAILABLE;
    /// The data file is being reopened after a failed write; retry shortly.
    StoreUnavailable = "store_unavailable", SERVICE_UNAVAILABLE;
    /// A store thread died; the server exits for its supervisor to restart it.
    StoreFailed = "store_failed", SERVICE_UNAVAILABLE;
    /// This node has not reached the revision the read asked for (`X-Recap-Min-Revision`)
    /// within the wait; retry after `Retry-After`.
    Behind = "behind", SERVICE_UNAVAILABLE;
    /// The data file's disk is full; nothing of the request was written.
    DiskFull = "disk_full", INSUFFICIENT_STORAGE;
}

/// A refused request: a code (which fixes the status), a message that says what to fix, and
/// the offending field (and batch index) when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// Stable machine-readable code; it fixes the HTTP status.
    pub code: ErrorCode,
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
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
            index: None,
            allow: None,
            retry_after: None,
        }
    }

    /// The HTTP status (the code's).
    pub fn status(&self) -> StatusCode {
        self.code.status()
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
        ApiError::new(ErrorCode::InvalidParameter, message).with_field(name)
    }

    /// The route exists but not with this method.
    pub fn method_not_allowed(method: &http::Method, allow: &'static str) -> ApiError {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                ErrorCode::MethodNotAllowed,
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
            ErrorCode::Internal,
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
        let mut response = json_bytes(self.status(), serde_json::to_vec(&body).unwrap_or_default());
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
        if self.code == ErrorCode::BodyTooLarge {
            // The rest of the body was not read; the connection cannot be reused.
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.code == ErrorCode::Unauthorized {
            // RFC 9110: a 401 says how to authenticate.
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"recap\""),
            );
        }
        // The request log names the error; extensions never leave the server.
        response.extensions_mut().insert(self.code);
        response
    }

    /// The response for this error, in recap's style.
    pub fn into_response(self) -> Response<Body> {
        self.into_response_as(ErrorStyle::Recap)
    }

    /// `{"code", "message", "field", "index"?}`.
    fn error_object(&self) -> serde_json::Value {
        let mut error = serde_json::json!({
            "code": self.code.as_str(),
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

impl From<EventError> for ApiError {
    fn from(error: EventError) -> ApiError {
        let code = match &error {
            EventError::MissingField { .. } => ErrorCode::MissingField,
            EventError::InvalidKind { .. } => ErrorCode::InvalidKind,
            EventError::UnknownSeverity { .. } => ErrorCode::UnknownSeverity,
            EventError::InvalidStreamName { .. } => ErrorCode::InvalidStreamName,
            EventError::TooLong { .. } => ErrorCode::FieldTooLong,
            EventError::InvalidTimestamp { .. } => ErrorCode::InvalidTimestamp,
            EventError::Json { field: None, .. } => ErrorCode::InvalidJson,
            EventError::Json { field: Some(_), .. } => ErrorCode::InvalidField,
            EventError::UnknownField { .. } => ErrorCode::UnknownField,
            EventError::DuplicateField { .. } => ErrorCode::DuplicateField,
        };
        let field = error.field().map(str::to_owned);
        ApiError {
            field,
            ..ApiError::new(code, error.to_string())
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::UnknownStream(name) => ApiError::new(
                ErrorCode::UnknownStream,
                format!(
                    "stream {name:?} does not exist; it is created by its first POST .../events"
                ),
            ),
            StoreError::ShuttingDown => ApiError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; retry against the next instance",
            ),
            StoreError::DiskFull(_) => ApiError::new(ErrorCode::DiskFull, error.to_string()),
            StoreError::Unavailable(_) => {
                ApiError::new(ErrorCode::StoreUnavailable, error.to_string()).retry_after(1)
            }
            StoreError::Failed(_) => ApiError::new(ErrorCode::StoreFailed, error.to_string()),
            StoreError::Behind { .. } => {
                ApiError::new(ErrorCode::Behind, error.to_string()).retry_after(1)
            }
            StoreError::CountLimit { .. } => {
                ApiError::new(ErrorCode::InvalidField, error.to_string()).with_field("repeat_count")
            }
            StoreError::NoteLimit { .. } => ApiError::new(ErrorCode::NoteLimit, error.to_string()),
            StoreError::Damaged { .. } => ApiError::new(ErrorCode::Corrupt, error.to_string()),
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

/// A response body: a whole buffer, a live feed of chunks (SSE) that ends when its sender is
/// dropped, or the body of a response the MCP SDK made.
#[derive(Debug)]
pub enum Body {
    /// Everything at once (`None` once sent).
    Full(Option<Bytes>),
    /// Chunks as they come.
    Channel(mpsc::Receiver<Bytes>),
    /// The `/mcp` route's answer, as `rmcp` built it.
    Boxed(BoxBody<Bytes, Infallible>),
}

impl Body {
    /// A body of one buffer.
    pub fn full(bytes: Bytes) -> Body {
        Body::Full(Some(bytes))
    }

    /// An empty body.
    pub fn empty() -> Body {
        Body::Full(None)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Body::Channel(receiver) => receiver
                .poll_recv(cx)
                .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes)))),
            Body::Boxed(body) => hyper::body::Body::poll_frame(Pin::new(body), cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Channel(_) => false,
            Body::Boxed(body) => hyper::body::Body::is_end_stream(body),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Channel(_) => SizeHint::default(),
            Body::Boxed(body) => hyper::body::Body::size_hint(body),
        }
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
