//! Read-your-writes across nodes: a read that names a revision it must reflect
//! (`X-Recap-Min-Revision: R`, or `?min_revision=R`) waits, at most
//! [`MIN_REVISION_WAIT`](crate::store::MIN_REVISION_WAIT), until this node has the stream at
//! `R` or later, and answers 503 `behind` with `Retry-After` if it does not. A client takes `R`
//! from the `X-Recap-Revision` of its write's response, on whichever node took the write.

use http::HeaderMap;

use crate::event::StreamName;
use crate::store::{MIN_REVISION_WAIT, Read};

use super::App;
use super::query::Query;
use super::wire::ApiError;

/// The query parameter that does the same (for clients that cannot set headers, such as a
/// browser's `EventSource`).
pub(crate) const MIN_REVISION_PARAM: &str = "min_revision";

/// The revision a read asks for (0 when it names none).
pub(super) fn min_revision(headers: &HeaderMap, query: &Query) -> Result<u64, ApiError> {
    let header = header_revision(
        headers,
        "X-Recap-Min-Revision",
        "a stream revision (a whole number), as X-Recap-Revision gave it",
    )?;
    let param = query.number::<u64>(MIN_REVISION_PARAM)?;
    match (header, param) {
        (Some(header), Some(param)) if header != param => Err(ApiError::parameter(
            MIN_REVISION_PARAM,
            format!(
                "X-Recap-Min-Revision: {header} and min_revision={param} disagree; send one of them"
            ),
        )),
        (header, param) => Ok(header.or(param).unwrap_or(0)),
    }
}

/// Waits until this node has `stream` at the revision the read asks for, as `read` sees it;
/// returns that revision.
pub(super) async fn reach(
    app: &App,
    stream: &StreamName,
    read: Read,
    headers: &HeaderMap,
    query: &Query,
) -> Result<u64, ApiError> {
    let wanted = min_revision(headers, query)?;
    app.store
        .reach(stream, wanted, read, MIN_REVISION_WAIT)
        .await?;
    Ok(wanted)
}

/// The revision a client names in header `name` (`None` when it sends none); `what` says what
/// the value must be, for the error a malformed or repeated header gets.
pub(super) fn header_revision(
    headers: &HeaderMap,
    name: &'static str,
    what: &str,
) -> Result<Option<u64>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return match headers.contains_key(name) {
            true => Err(ApiError::parameter(
                name,
                format!("{name} is given more than once; send it once"),
            )),
            false => Ok(None),
        };
    };
    value
        .to_str()
        .ok()
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::parameter(name, format!("{name} must be {what}")))
}
