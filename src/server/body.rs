//! Request and response bodies: the response body type, reading a request body under a cap, and
//! telling JSON from NDJSON by content type.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::StatusCode;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Frame, Incoming, SizeHint};

use super::ServerOptions;
use tokio::sync::mpsc;

use super::wire::ApiError;

/// Default cap on a request body: 1 MiB holds a batch of hundreds of events, and nothing bigger
/// is buffered in memory per request.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// A response body: a whole buffer, or a live feed of chunks (SSE) that ends when its sender is
/// dropped.
#[derive(Debug)]
pub enum Body {
    /// Everything at once (`None` once sent).
    Full(Option<Bytes>),
    /// Chunks as they come.
    Channel(mpsc::Receiver<Bytes>),
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
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Channel(_) => SizeHint::default(),
        }
    }
}

/// How a request body of events is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One JSON value: an object or an array of objects.
    Json,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

/// Reads the content type. A missing one is taken as JSON (scripts often leave it out); anything
/// but JSON or NDJSON is a 415 that says what to send.
pub fn framing(headers: &HeaderMap, ndjson_allowed: bool) -> Result<Framing, ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(Framing::Json);
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Framing::Json),
        "application/x-ndjson" | "application/jsonl" | "application/jsonlines"
            if ndjson_allowed =>
        {
            Ok(Framing::Ndjson)
        }
        _ => {
            let accepted = if ndjson_allowed {
                "application/json or application/x-ndjson"
            } else {
                "application/json"
            };
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "content type {:?} is not accepted here; send {accepted} (curl: -H 'Content-Type: application/json')",
                    value.to_str().unwrap_or("(not text)")
                ),
            ))
        }
    }
}

/// Default for how long a request body may take to arrive: a client trickling bytes cannot
/// hold a connection and its handler forever.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a whole request body, refusing (413) anything over `cap` without reading past it: a
/// declared `Content-Length` over the cap is refused before a byte is read, and a chunked body
/// is cut off at the cap.
pub async fn read_capped(
    body: Incoming,
    headers: &HeaderMap,
    options: &ServerOptions,
) -> Result<Bytes, ApiError> {
    let cap = options.max_body_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > cap as u64) {
        return Err(too_large(cap));
    }
    let timeout = options.body_read_timeout;
    let read = tokio::time::timeout(timeout, Limited::new(body, cap).collect());
    let Ok(collected) = read.await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s; send it in one go",
                timeout.as_secs_f64()
            ),
        ));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large(cap)),
        Err(error) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_read_failed",
            format!("the request body could not be read: {error}"),
        )),
    }
}

fn too_large(cap: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "the request body is over the limit of {cap} bytes; split the batch into smaller requests"
        ),
    )
}

/// Reads a JSON body (one object, no NDJSON): checks the content type, then reads it within the
/// options' size cap and time limit.
pub async fn read_json(
    body: Incoming,
    headers: &HeaderMap,
    options: &ServerOptions,
) -> Result<Bytes, ApiError> {
    framing(headers, false)?;
    read_capped(body, headers, options).await
}

/// The body as UTF-8 text, or a 400 saying where the bad byte is.
pub fn utf8(bytes: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(bytes).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_utf8",
            format!(
                "the body is not valid UTF-8 (bad byte at offset {}); JSON must be UTF-8",
                error.valid_up_to()
            ),
        )
    })
}
