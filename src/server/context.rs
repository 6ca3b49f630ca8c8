//! `GET /v1/streams/{s}/context`: the prompt-ready window (DESIGN section 3).
//!
//! A stream that does not exist yet gets an empty, valid window (200, `tokens` 0) rather than a
//! 404: an agent asks for context before its first turn, when it has posted nothing.

use std::time::Instant;

use chrono::Utc;
use http::header::HeaderValue;
use http::{HeaderMap, Response, StatusCode};
use serde::Serialize;

use crate::context::{
    self, ContextRequest, ContextWindow, DEFAULT_BUDGET_TOKENS, MAX_BUDGET_TOKENS, MAX_GOALS,
    StreamView, Totals,
};
use crate::event::StreamName;
use crate::rank::Weights;
use crate::store::Read;
use crate::tokens::Encoding;

use super::App;
use super::consistency;
use super::query::Query;
use super::wire::Body;
use super::wire::{
    self, ApiError, BUDGET_HEADER, ENCODING_HEADER, NOTES_CUT_HEADER, REVISION_HEADER,
    TOKENS_HEADER,
};

/// The query parameters of `GET .../context`.
pub(crate) const PARAMS: &[&str] = &[
    "budget",
    "encoding",
    "model",
    "format",
    "min_severity",
    "kinds",
    "since",
    "weights",
    "line_cap",
    "goals",
    consistency::MIN_REVISION_PARAM,
];

/// The JSON form: the window with its receipt, and the revision it reflects.
#[derive(Serialize)]
struct JsonWindow<'a> {
    #[serde(flatten)]
    window: &'a ContextWindow,
    revision: u64,
}

/// `GET /v1/streams/{s}/context`.
pub(super) async fn get(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let started = Instant::now();
    let query = Query::parse(query, PARAMS)?;
    let request = request_from(&query)?;
    let json = match query.get("format") {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::parameter(
                "format",
                format!("format={other:?} is not known; use text or json"),
            ));
        }
    };
    let min_revision = consistency::reach(app, &stream, Read::Context, headers, &query).await?;
    // Read before the build: the window reflects at least this revision.
    let revision = app
        .store
        .position(&stream, min_revision)
        .await?
        .map_or(0, |position| position.revision);
    let window = window(app, &stream, &request, min_revision).await?;
    let response = if json {
        let mut response = wire::json(
            StatusCode::OK,
            &JsonWindow {
                window: &window,
                revision,
            },
        );
        wire::set_number(&mut response, TOKENS_HEADER, u64::from(window.tokens));
        response
    } else {
        let mut response = wire::text(StatusCode::OK, window.text);
        wire::set_number(&mut response, TOKENS_HEADER, u64::from(window.tokens));
        wire::set_number(&mut response, BUDGET_HEADER, u64::from(window.budget));
        response.headers_mut().insert(
            ENCODING_HEADER,
            HeaderValue::from_static(window.encoding.name()),
        );
        if window.notes_cut {
            response
                .headers_mut()
                .insert(NOTES_CUT_HEADER, HeaderValue::from_static("true"));
        }
        response
    };
    let mut response = response;
    wire::set_number(&mut response, REVISION_HEADER, revision);
    app.metrics.observe_context(started.elapsed());
    Ok(response)
}

/// The window a context query string asks for (`format` is the caller's business), at its
/// `min_revision` if it names one: the MCP `get_context` tool parses its arguments with the
/// route's parser.
pub(super) async fn window_for_query(
    app: &App,
    stream: &StreamName,
    query: Option<&str>,
) -> Result<ContextWindow, ApiError> {
    let query = Query::parse(query, PARAMS)?;
    let request = request_from(&query)?;
    let min_revision =
        consistency::reach(app, stream, Read::Context, &HeaderMap::new(), &query).await?;
    window(app, stream, &request, min_revision).await
}

/// The window `request` asks for (an empty one for a stream with no history yet), at
/// `min_revision` or later.
pub(super) async fn window(
    app: &App,
    stream: &StreamName,
    request: &ContextRequest,
    min_revision: u64,
) -> Result<ContextWindow, ApiError> {
    let now = Utc::now();
    let window = app
        .store
        .context(stream, request, now, min_revision)
        .await?;
    Ok(window.unwrap_or_else(|| empty_window(request, now)))
}

/// The request's parameters as a [`ContextRequest`].
fn request_from(query: &Query) -> Result<ContextRequest, ApiError> {
    let budget = query
        .number::<u32>("budget")?
        .unwrap_or(DEFAULT_BUDGET_TOKENS);
    if budget > MAX_BUDGET_TOKENS {
        return Err(ApiError::parameter(
            "budget",
            format!("budget={budget} is over the limit of {MAX_BUDGET_TOKENS} tokens"),
        ));
    }
    let encoding = match (query.get("encoding"), query.get("model")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::parameter(
                "model",
                "pass encoding= or model=, not both",
            ));
        }
        (Some(encoding), None) => encoding.parse::<Encoding>()?,
        (None, Some(model)) => Encoding::for_model(model)?,
        (None, None) => Encoding::default(),
    };
    let mut request = ContextRequest::new(budget, encoding);
    if let Some(spec) = query.get("weights") {
        let mut weights = Weights::default();
        weights.apply_overrides(spec)?;
        request.weights = weights;
    }
    request.filter.min_severity = query.severity("min_severity")?;
    request.filter.kinds = query.kinds("kinds")?;
    request.filter.since = query.timestamp("since")?;
    request.line_cap = match query.number::<u32>("line_cap")? {
        Some(0) => {
            return Err(ApiError::parameter(
                "line_cap",
                "line_cap must be at least 1",
            ));
        }
        cap => cap,
    };
    if let Some(goals) = query.number::<usize>("goals")? {
        if goals > MAX_GOALS {
            return Err(ApiError::parameter(
                "goals",
                format!(
                    "goals={goals} is over the limit; use 0 to {MAX_GOALS} (how many of the stream's opening task/user records to keep)"
                ),
            ));
        }
        request.goals = goals;
    }
    Ok(request)
}

/// The window of a stream with no history: built by the same code, so its shape is the same.
fn empty_window(request: &ContextRequest, now: chrono::DateTime<Utc>) -> ContextWindow {
    let totals = Totals::default();
    context::build(&StreamView::empty(&totals), request, now)
}
