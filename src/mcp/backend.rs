//! What a tool call reaches: recap's store in-process, or a recap server over HTTP.

use std::future::Future;
use std::pin::Pin;

use rmcp::model::Extensions;
use serde_json::Value;

/// A boxed future: backends are trait objects, chosen at startup.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A refused or failed call: a message for the model that says what to fix (the HTTP API's
/// message for the same mistake). It goes back as a tool result with `isError`, not as a
/// protocol error, so the model sees it and can correct its arguments.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

/// A context window as a tool returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The prompt-ready text.
    pub text: String,
    /// Its exact token count.
    pub tokens: u32,
    /// The budget it was built for.
    pub budget: u32,
    /// The encoding it was counted with.
    pub encoding: String,
}

/// Where a logged event landed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Written {
    /// The record's seq.
    pub seq: u64,
    /// The record's repeat count now.
    pub repeat_count: u64,
    /// Whether the event collapsed into an earlier record.
    pub collapsed: bool,
}

/// A stream's changes as a backend follows them, from when the feed was opened: what a
/// subscription to the stream's context resource waits on.
pub trait Changes: Send {
    /// Resolves when the stream changed (a record, a repeat, a note added or deleted, the
    /// stream deleted) since the previous call; changes that come close together may resolve
    /// it once. `None` when the feed has ended for good (the server is shutting down).
    fn changed(&mut self) -> BoxFuture<'_, Option<()>>;
}

/// The operations behind the tools, in the HTTP API's terms: `query` is the query string of
/// the matching GET route and `body` the JSON body of the matching POST, so both backends
/// check them with the same parsers. `caller` carries what the transport knows about who is
/// calling (the `/mcp` route puts the request's parts there, with the caller's key).
pub trait Backend: Send + Sync + 'static {
    /// `GET /v1/streams/{stream}/context?{query}` (text form).
    fn context<'a>(
        &'a self,
        caller: &'a Extensions,
        stream: &'a str,
        query: String,
    ) -> BoxFuture<'a, Result<Window, ToolError>>;

    /// `POST /v1/streams/{stream}/events` with one event.
    fn post_event<'a>(
        &'a self,
        caller: &'a Extensions,
        stream: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<Written, ToolError>>;

    /// `POST /v1/streams/{stream}/notes`; returns the note's id.
    fn add_note<'a>(
        &'a self,
        caller: &'a Extensions,
        stream: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<u64, ToolError>>;

    /// `DELETE /v1/streams/{stream}/notes/{id}`.
    fn delete_note<'a>(
        &'a self,
        caller: &'a Extensions,
        stream: &'a str,
        id: u64,
    ) -> BoxFuture<'a, Result<(), ToolError>>;

    /// `GET /v1/streams?prefix=`: the stats of the first page of streams named from `prefix`
    /// that the caller may see (JSON objects).
    fn streams<'a>(
        &'a self,
        caller: &'a Extensions,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Value>, ToolError>>;

    /// `GET /v1/streams/{stream}/events?{query}`: a page (`{"records", "next"}`).
    fn events<'a>(
        &'a self,
        caller: &'a Extensions,
        stream: &'a str,
        query: String,
    ) -> BoxFuture<'a, Result<Value, ToolError>>;

    /// `GET /v1/streams/{stream}/subscribe`, as changes: resolves once the feed is open (every
    /// change committed after that is reported), or with the reason the caller may not follow
    /// `stream` (the read scope and the key's prefix apply).
    fn follow<'a>(
        &'a self,
        caller: &'a Extensions,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Changes>, ToolError>>;
}
