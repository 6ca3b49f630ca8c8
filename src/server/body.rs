//! Request bodies: reading one under a cap and a time limit (and a share of the memory for
//! bodies), telling JSON from NDJSON by content type, and decoding small JSON objects with errors
//! that name the field.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::event::serde_named_field;

use super::ServerOptions;
use super::wire::{ApiError, ErrorCode};

/// Default cap on a request body: 1 MiB holds a batch of hundreds of events, and nothing bigger
/// is buffered in memory per request.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// How a request body of events is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// One JSON value: an object or an array of objects.
    Json,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

/// Reads the content type. A missing one is taken as JSON (scripts often leave it out); anything
/// but JSON or NDJSON is a 415 that says what to send.
pub(super) fn framing(headers: &HeaderMap, ndjson_allowed: bool) -> Result<Framing, ApiError> {
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
                ErrorCode::UnsupportedMediaType,
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

/// How many bodies of the largest size may be read and decoded at once. A body costs a few
/// times its size while it is decoded and written; this bounds that memory (8 MiB of bodies
/// with the default cap) however many clients post at once. Others wait their turn.
pub const BODIES_IN_FLIGHT: usize = 8;

/// The bodies being read or decoded now, counted in KiB against a fixed allowance.
#[derive(Debug)]
pub(super) struct BodyGate {
    kib: Arc<Semaphore>,
    /// A body may take at most this many KiB (the whole allowance: a lone body always fits).
    max_share: u32,
}

impl BodyGate {
    /// Room for [`BODIES_IN_FLIGHT`] bodies of `max_body_bytes`.
    pub(super) fn new(max_body_bytes: usize) -> BodyGate {
        let kib = (max_body_bytes.div_ceil(1024).max(1) * BODIES_IN_FLIGHT)
            .min(Semaphore::MAX_PERMITS) as u32;
        BodyGate {
            kib: Arc::new(Semaphore::new(kib as usize)),
            max_share: kib,
        }
    }
}

impl BodyGate {
    /// Waits until `deadline` for room for a body of `length` bytes; a 503 with `Retry-After`
    /// when there is none by then.
    pub(super) async fn admit(
        &self,
        length: usize,
        deadline: tokio::time::Instant,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        let share = (length.div_ceil(1024).max(1) as u64).min(u64::from(self.max_share)) as u32;
        let waited = tokio::time::timeout_at(deadline, self.kib.clone().acquire_many_owned(share));
        match waited.await {
            Ok(Ok(share)) => Ok(share),
            // The semaphore is never closed; a timeout means the server is busy with bodies.
            Ok(Err(_)) | Err(_) => Err(ApiError::new(
                ErrorCode::Busy,
                "the server had no room for this body in time (too many large bodies at once); retry shortly",
            )
            .retry_after(1)),
        }
    }
}

/// A body that was read whole, and its share of the [`BodyGate`], given back when dropped:
/// keep it until what was decoded from the body is done with.
#[derive(Debug)]
pub(super) struct Admitted {
    /// The body.
    pub bytes: Bytes,
    share: OwnedSemaphorePermit,
}

impl Admitted {
    /// The share of the gate, for a caller that keeps it past the bytes.
    pub(super) fn into_share(self) -> OwnedSemaphorePermit {
        self.share
    }
}

/// Reads a whole request body, refusing (413) anything over `cap` without reading past it: a
/// declared `Content-Length` over the cap is refused before a byte is read, and a chunked body
/// is cut off at the cap. The body first waits for its share of `gate` (its declared length, or
/// the cap when it declares none), within the same time limit as the read.
pub(super) async fn read_capped(
    body: Incoming,
    headers: &HeaderMap,
    options: &ServerOptions,
    gate: &BodyGate,
) -> Result<Admitted, ApiError> {
    let cap = options.max_body_bytes;
    let declared = declared_length(headers);
    if declared.is_some_and(|length| length > cap as u64) {
        return Err(too_large(cap));
    }
    let timeout = options.body_read_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let share = gate
        .admit(declared.map_or(cap, |length| length as usize), deadline)
        .await?;
    let read = tokio::time::timeout_at(deadline, Limited::new(body, cap).collect());
    let Ok(collected) = read.await else {
        return Err(ApiError::new(
            ErrorCode::BodyTimeout,
            format!(
                "the request body did not arrive within {} s; send it in one go",
                timeout.as_secs_f64()
            ),
        ));
    };
    match collected {
        Ok(collected) => Ok(Admitted {
            bytes: collected.to_bytes(),
            share,
        }),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large(cap)),
        Err(error) => Err(ApiError::new(
            ErrorCode::BodyReadFailed,
            format!("the request body could not be read: {error}"),
        )),
    }
}

/// Reads and drops a body that was refused before it was read: hyper closes a connection whose
/// request body was left unread, and the client's next request on it would fail. A body over
/// the cap, or one that does not arrive within a second, is left (the connection
/// closes then).
pub(super) async fn discard(body: Incoming, headers: &HeaderMap, options: &ServerOptions) {
    let cap = options.max_body_bytes;
    let declared = declared_length(headers);
    if declared.is_some_and(|length| length > cap as u64) {
        return;
    }
    let _ = tokio::time::timeout(DISCARD_TIMEOUT, Limited::new(body, cap).collect()).await;
}

/// The body's length as its `Content-Length` says, if it says one that parses.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
}

/// How long a refused body may take to arrive before its connection is given up.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(1);

fn too_large(cap: usize) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!(
            "the request body is over the limit of {cap} bytes; split the batch into smaller requests"
        ),
    )
}

/// Reads a JSON body (one object, no NDJSON): checks the content type, then reads it within the
/// options' size cap and time limit.
pub(super) async fn read_json(
    body: Incoming,
    headers: &HeaderMap,
    options: &ServerOptions,
    gate: &BodyGate,
) -> Result<Admitted, ApiError> {
    framing(headers, false)?;
    read_capped(body, headers, options, gate).await
}

/// The body as UTF-8 text, or a 400 saying where the bad byte is.
pub(super) fn utf8(bytes: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(bytes).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidUtf8,
            format!(
                "the body is not valid UTF-8 (bad byte at offset {}); JSON must be UTF-8",
                error.valid_up_to()
            ),
        )
    })
}

/// Decodes a small JSON object body (a note, a retention) into `T`, with an error that names
/// what is wrong the way event errors do: `invalid_json` for syntax, `unknown_field`,
/// `duplicate_field`, `missing_field` and `invalid_field` naming the field. `shape` is appended
/// to every message as an example of what to send.
pub(super) fn decode_object<T: serde::de::DeserializeOwned>(
    text: &str,
    shape: &str,
) -> Result<T, ApiError> {
    let bad = |code, message: String| ApiError::new(code, format!("{message}; send {shape}"));
    // serde's derive would also take a positional array; these bodies are always objects.
    match text.trim_start().chars().next() {
        Some('{') => {}
        None => return Err(bad(ErrorCode::InvalidJson, "the body is empty".into())),
        Some(_) => {
            return Err(bad(
                ErrorCode::InvalidJson,
                "the body must be a JSON object".into(),
            ));
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let decoded = serde_path_to_error::deserialize(&mut deserializer)
        .map(|value| (value, deserializer.end()));
    let error = match decoded {
        Ok((value, Ok(()))) => return Ok(value),
        Ok((_, Err(trailing))) => return Err(bad(ErrorCode::InvalidJson, trailing.to_string())),
        Err(error) => error,
    };
    let path = error.path().to_string();
    let inner = error.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return Err(bad(ErrorCode::InvalidJson, inner.to_string()));
    }
    let detail = inner.to_string();
    let detail = match detail.rfind(" at line ") {
        Some(at) => &detail[..at],
        None => &detail,
    };
    Err(match named_field_error(detail) {
        Some((code, field)) => bad(code, detail.to_owned()).with_field(field),
        None if path == "." || path.is_empty() => bad(ErrorCode::InvalidJson, detail.to_owned()),
        None => bad(ErrorCode::InvalidField, detail.to_owned()).with_field(path),
    })
}

/// The error code and field of a struct-level serde problem, if `detail` is one.
fn named_field_error(detail: &str) -> Option<(ErrorCode, &str)> {
    [
        ("unknown field", ErrorCode::UnknownField),
        ("duplicate field", ErrorCode::DuplicateField),
        ("missing field", ErrorCode::MissingField),
    ]
    .into_iter()
    .find_map(|(problem, code)| Some((code, serde_named_field(detail, problem)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Duration, Instant};

    #[tokio::test(start_paused = true)]
    async fn bodies_wait_for_room_and_give_up_with_a_503_at_the_deadline() {
        let gate = BodyGate::new(4 * 1024);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Room for 8 bodies of the largest size; small bodies take what they declare.
        let mut held = Vec::new();
        for _ in 0..BODIES_IN_FLIGHT {
            held.push(gate.admit(4 * 1024, deadline).await.unwrap());
        }
        let error = gate.admit(1, deadline).await.unwrap_err();
        assert_eq!((error.code, error.retry_after), (ErrorCode::Busy, Some(1)));
        assert_eq!(Instant::now(), deadline, "it waited until the deadline");
        // Shares come back when dropped; a body that declares more than the whole gate still
        // gets in once it is free.
        drop(held);
        let later = Instant::now() + Duration::from_secs(30);
        let huge = gate.admit(usize::MAX / 2, later).await.unwrap();
        assert_eq!(huge.num_permits(), gate.max_share as usize);
    }
}
