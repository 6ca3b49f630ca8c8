//! The tools: their arguments (JSON Schema from the structs, descriptions from the doc
//! comments), what each says to the model that calls it, and how its reply reads.
//!
//! Arguments become the HTTP API's query strings and bodies ([`Backend`]); a mistake comes back
//! as a tool result with `isError` and the API's message, which names the argument to fix.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, InitializeRequestParams, InitializeResult,
    ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig, SubscribeRequestParams,
    SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::backend::{Backend, ToolError};
use super::subscriptions::{self, Sessions};

/// What the server tells the model about itself when a client connects.
const INSTRUCTIONS: &str = "recap is your event memory. Log what happens to you (tool calls, \
errors, retries, plans, decisions) with log_event; repeats are folded into one line with a count \
(`x3`). Before each step, call get_context for a prompt-ready summary of the stream within a \
token budget: notes first, then the most important recent events. Use remember for facts that \
must never be forgotten (they stay at the top until you forget them). One stream per task or \
agent, named like `team.agent-1`.";

/// The resource of a stream's context window (RFC 6570 template).
pub const CONTEXT_TEMPLATE: &str = "recap://streams/{name}/context";

/// The context resource's URI of `stream`.
pub fn context_uri(stream: &str) -> String {
    format!("recap://streams/{stream}/context")
}

/// The stream a context resource's URI names, if it is one.
pub fn stream_of(uri: &str) -> Option<&str> {
    uri.strip_prefix("recap://streams/")?
        .strip_suffix("/context")
        .filter(|stream| !stream.is_empty() && !stream.contains('/'))
}

/// `get_context`'s arguments.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct GetContextArgs {
    /// The stream (letters, digits, `.`, `_`, `-`, `:`), e.g. `demo` or `team-a.agent-1`.
    pub stream: String,
    /// Most tokens the window may take (default 2000).
    pub budget: Option<u32>,
    /// Tokenizer to count with: `cl100k_base` or `o200k_base` (default). Give this or `model`.
    pub encoding: Option<String>,
    /// The model the window is for (e.g. `gpt-4o`); picks its tokenizer. Give this or `encoding`.
    pub model: Option<String>,
    /// Only these kinds of events (e.g. `["tool", "error"]`).
    pub kinds: Option<Vec<String>>,
    /// Only events at least this severe: debug, info, warning, error or critical.
    pub min_severity: Option<String>,
}

/// `log_event`'s arguments.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct LogEventArgs {
    /// The stream to log to; created on first use.
    pub stream: String,
    /// What the event is about, a short word: tool, llm, plan, user, task, error, retry, ...
    pub kind: String,
    /// What happened, in one line if you can (e.g. `search timed out after 30s`).
    pub message: String,
    /// debug, info (default), warning, error or critical. Failures should be error.
    pub severity: Option<String>,
    /// Who did it: the agent or tool name.
    pub actor: Option<String>,
    /// Structured details (a JSON object), kept with the event.
    pub payload: Option<Map<String, Value>>,
}

/// `remember`'s arguments.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct RememberArgs {
    /// The stream the note belongs to.
    pub stream: String,
    /// The fact to keep, verbatim (e.g. `the user wants a patch, not a rewrite`).
    pub text: String,
    /// When it stops applying (RFC 3339, in the future), e.g. `2026-05-01T10:00:00Z`; leave out
    /// for a note that stays until forgotten.
    pub expires_at: Option<String>,
}

/// `forget`'s arguments.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct ForgetArgs {
    /// The stream the note belongs to.
    pub stream: String,
    /// The note's id, as `remember` returned it.
    pub note_id: u64,
}

/// `list_streams`'s arguments.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct ListStreamsArgs {
    /// Only streams whose names start with this.
    pub prefix: Option<String>,
}

/// `get_events`'s arguments.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct GetEventsArgs {
    /// The stream.
    pub stream: String,
    /// Only records after this seq (the `next` of the previous page); default from the start.
    pub after: Option<u64>,
    /// Most records to return (default 100, at most 1000).
    pub limit: Option<u32>,
    /// Only these kinds of events.
    pub kinds: Option<Vec<String>>,
    /// Only events at least this severe: debug, info, warning, error or critical.
    pub min_severity: Option<String>,
}

/// recap's MCP server: the tools and the context resources over a [`Backend`].
#[derive(Clone)]
pub struct Tools {
    backend: Arc<dyn Backend>,
    /// Shared by clones: the HTTP transport clones a handler per request.
    tool_router: Arc<ToolRouter<Tools>>,
    /// The older revisions' resource subscriptions of a connection that stays open; `None`
    /// on a stateless transport, which has no channel to send them on.
    sessions: Option<Arc<Sessions>>,
}

#[tool_router]
impl Tools {
    /// The tools over `backend`, for a stateless transport (the HTTP route): resources are
    /// subscribed to with `subscriptions/listen` only.
    pub fn stateless(backend: Arc<dyn Backend>) -> Tools {
        Tools {
            backend,
            tool_router: Arc::new(Self::tool_router()),
            sessions: None,
        }
    }

    /// The tools over `backend`, for one connection that stays open (stdio): the older
    /// `resources/subscribe` works too.
    pub fn with_sessions(backend: Arc<dyn Backend>) -> Tools {
        Tools {
            sessions: Some(Arc::default()),
            ..Tools::stateless(backend)
        }
    }

    #[tool(
        description = "Get the stream's context window: a prompt-ready summary of what happened, within a token budget. Call it before each step (or after a long pause) to recall the task, the notes you must keep in mind, recent errors and what you tried. Returns the text (notes first, then earlier events summarised, then recent events with repeats folded as `x3`) and its token count. A stream with no events yet gives an empty window.",
        annotations(read_only_hint = true)
    )]
    async fn get_context(
        &self,
        Parameters(args): Parameters<GetContextArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let query = query(&[
            ("budget", args.budget.map(|budget| budget.to_string())),
            ("encoding", args.encoding),
            ("model", args.model),
            ("kinds", args.kinds.map(|kinds| kinds.join(","))),
            ("min_severity", args.min_severity),
        ]);
        let window = self
            .backend
            .context(&context.extensions, &args.stream, query)
            .await;
        Ok(reply(window.map(|window| {
            let summary = format!(
                "{} tokens of a {}-token budget ({})",
                window.tokens, window.budget, window.encoding
            );
            let text = if window.text.trim().is_empty() {
                "(no events in this stream yet)".to_owned()
            } else {
                window.text
            };
            vec![ContentBlock::text(text), ContentBlock::text(summary)]
        })))
    }

    #[tool(
        description = "Log an event to a stream: a tool call and its outcome, an error, a retry, a plan, a decision. Call it after anything worth recalling later. An event identical to a recent one is folded into it (its repeat_count grows) instead of adding a line. Returns the record's seq, its repeat_count and whether the event collapsed into an earlier record."
    )]
    async fn log_event(
        &self,
        Parameters(args): Parameters<LogEventArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let mut event = Map::new();
        event.insert("kind".to_owned(), json!(args.kind));
        event.insert("message".to_owned(), json!(args.message));
        for (field, value) in [("severity", args.severity), ("actor", args.actor)] {
            if let Some(value) = value {
                event.insert(field.to_owned(), json!(value));
            }
        }
        if let Some(payload) = args.payload {
            event.insert("payload".to_owned(), Value::Object(payload));
        }
        let written = self
            .backend
            .post_event(
                &context.extensions,
                &args.stream,
                Value::Object(event).to_string(),
            )
            .await;
        Ok(reply(written.map(|written| json_block(&json!(written)))))
    }

    #[tool(
        description = "Remember a fact for the rest of the task: a constraint, a user preference, a decision that must not be lost. Notes are always shown first in get_context, whatever else is dropped. Returns the note's id (keep it to forget the note later)."
    )]
    async fn remember(
        &self,
        Parameters(args): Parameters<RememberArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let mut note = Map::new();
        note.insert("text".to_owned(), json!(args.text));
        if let Some(expires_at) = args.expires_at {
            note.insert("expires_at".to_owned(), json!(expires_at));
        }
        let id = self
            .backend
            .add_note(
                &context.extensions,
                &args.stream,
                Value::Object(note).to_string(),
            )
            .await;
        Ok(reply(id.map(|id| json_block(&json!({"note_id": id})))))
    }

    #[tool(
        description = "Forget a note that no longer applies, by the id remember returned. It stops appearing in get_context.",
        annotations(destructive_hint = true, idempotent_hint = true)
    )]
    async fn forget(
        &self,
        Parameters(args): Parameters<ForgetArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let deleted = self
            .backend
            .delete_note(&context.extensions, &args.stream, args.note_id)
            .await;
        Ok(reply(deleted.map(|()| {
            vec![ContentBlock::text(format!(
                "note {} of stream {} is forgotten",
                args.note_id, args.stream
            ))]
        })))
    }

    #[tool(
        description = "List the streams you may read, with their counts (records, events, notes) and last activity. Call it to find a stream by name or see what exists.",
        annotations(read_only_hint = true)
    )]
    async fn list_streams(
        &self,
        Parameters(args): Parameters<ListStreamsArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let prefix = args.prefix.unwrap_or_default();
        let streams = self.backend.streams(&context.extensions, &prefix).await;
        Ok(reply(streams.map(|streams| {
            let streams: Vec<Value> = streams
                .into_iter()
                .filter(|stats| {
                    stats["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .map(|stats| {
                    json!({
                        "name": stats["name"],
                        "records": stats["records"],
                        "events": stats["events"],
                        "notes": stats["notes"],
                        "last_ts": stats["last_ts"],
                    })
                })
                .collect();
            json_block(&json!({ "streams": streams }))
        })))
    }

    #[tool(
        description = "Read a stream's records in order, oldest first, with exact messages, severities, repeat counts and payloads: for when get_context's summary is not enough. Returns {\"records\": [...], \"next\": seq or null}; pass next as after for the following page.",
        annotations(read_only_hint = true)
    )]
    async fn get_events(
        &self,
        Parameters(args): Parameters<GetEventsArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let query = query(&[
            ("after", args.after.map(|after| after.to_string())),
            ("limit", args.limit.map(|limit| limit.to_string())),
            ("kinds", args.kinds.map(|kinds| kinds.join(","))),
            ("min_severity", args.min_severity),
        ]);
        let page = self
            .backend
            .events(&context.extensions, &args.stream, query)
            .await;
        Ok(reply(page.map(|page| json_block(&page))))
    }
}

// The router built once in `new`, not per call (the default builds it, schemas and all, every time).
#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        // Subscriptions work on every transport with subscriptions/listen; `initialize` takes
        // the flag back where the older resources/subscribe cannot work.
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .enable_resources_subscribe()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("recap", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    /// The older revisions' handshake: as the SDK answers it, but without `resources.subscribe`
    /// on a stateless transport (resources/subscribe has no channel there).
    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        let mut answer = self.negotiate_initialize(&request)?;
        if self.sessions.is_none()
            && let Some(resources) = answer.capabilities.resources.as_mut()
        {
            resources.subscribe = None;
        }
        Ok(answer)
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(subscriptions::accepted(requested))
    }

    async fn listen(&self, subscription: SubscriptionContext) -> Result<(), ErrorData> {
        subscriptions::listen(&self.backend, subscription).await
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let sessions = self
            .sessions
            .as_ref()
            .ok_or_else(|| ErrorData::invalid_request(subscriptions::NO_SESSION, None))?;
        sessions
            .subscribe(&self.backend, request.uri, &context)
            .await
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let sessions = self
            .sessions
            .as_ref()
            .ok_or_else(|| ErrorData::invalid_request(subscriptions::NO_SESSION, None))?;
        sessions.unsubscribe(&request.uri);
        Ok(())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let template = ResourceTemplate::new(CONTEXT_TEMPLATE, "context")
            .with_description("A stream's context window at the default budget (2,000 tokens).")
            .with_mime_type("text/plain");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template]))
    }

    /// The streams the caller may read (the first page, by name), as their context resources.
    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let streams = self
            .backend
            .streams(&context.extensions, "")
            .await
            .map_err(|error| ErrorData::invalid_request(error.0, None))?;
        let resources = streams
            .iter()
            .filter_map(|stats| stats["name"].as_str())
            .map(|stream| {
                Resource::new(context_uri(stream), format!("{stream} context"))
                    .with_mime_type("text/plain")
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let stream = stream_of(&request.uri).ok_or_else(|| {
            ErrorData::resource_not_found(
                format!(
                    "no resource {:?}; recap serves {CONTEXT_TEMPLATE}",
                    request.uri
                ),
                None,
            )
        })?;
        let window = self
            .backend
            .context(&context.extensions, stream, String::new())
            .await
            .map_err(|error| ErrorData::invalid_params(error.0, None))?;
        let contents =
            ResourceContents::text(window.text, request.uri.clone()).with_mime_type("text/plain");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

/// A query string of the parameters that have a value. An empty string counts as none: models
/// often fill an optional argument with `""`, which the HTTP API refuses (`?kinds=`).
fn query(parameters: &[(&str, Option<String>)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in parameters {
        if let Some(value) = value.as_deref().filter(|value| !value.is_empty()) {
            query.append_pair(name, value);
        }
    }
    query.finish()
}

/// A reply's JSON as one text block.
fn json_block(value: &Value) -> Vec<ContentBlock> {
    vec![ContentBlock::text(value.to_string())]
}

/// A tool's outcome: its content, or its error as a result with `isError`.
fn reply(outcome: Result<Vec<ContentBlock>, ToolError>) -> CallToolResult {
    match outcome {
        Ok(content) => CallToolResult::success(content),
        Err(error) => CallToolResult::error(vec![ContentBlock::text(error.0)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_uris_name_their_stream() {
        assert_eq!(stream_of(&context_uri("team-a.x")), Some("team-a.x"));
        assert_eq!(stream_of("recap://streams//context"), None);
        assert_eq!(stream_of("recap://streams/a/b/context"), None);
        assert_eq!(stream_of("file:///etc/passwd"), None);
    }
}
