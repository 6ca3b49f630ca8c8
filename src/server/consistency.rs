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
use super::wire::{ApiError, MIN_REVISION_HEADER};

/// The query parameter that does the same (for clients that cannot set headers, such as a
/// browser's `EventSource`).
pub(crate) const MIN_REVISION_PARAM: &str = "min_revision";

/// The revision a read asks for (0 when it names none).
pub(super) fn min_revision(headers: &HeaderMap, query: &Query) -> Result<u64, ApiError> {
    let mut values = headers.get_all(MIN_REVISION_HEADER).iter();
    let (first, second) = (values.next(), values.next());
    if second.is_some() {
        return Err(ApiError::parameter(
            "X-Recap-Min-Revision",
            "X-Recap-Min-Revision is given more than once; send it once",
        ));
    }
    let header = first
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|value| value.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::parameter(
                        "X-Recap-Min-Revision",
                        "X-Recap-Min-Revision must be a stream revision (a whole number), as X-Recap-Revision gave it",
                    )
                })
        })
        .transpose()?;
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
