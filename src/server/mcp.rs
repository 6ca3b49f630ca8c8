//! `POST /mcp` (and `GET`/`DELETE`): the MCP tools over Streamable HTTP, in-process.
//!
//! The route table has already checked the key (401 without a valid one); the tools check
//! each call's scope (read, or write for log_event, remember and forget) and stream prefix,
//! and say so in a tool error. The SDK runs stateless (no sessions: any instance behind a load
//! balancer can answer any request) and answers plain JSON; it serves the current protocol
//! revision (no `initialize`) and the older ones' `initialize` handshake.
//!
//! A `subscriptions/listen` request is the exception to plain JSON: its answer is an SSE stream
//! of the subscription's updates, fed by the store's live changes of the stream
//! (`LiveChanges`), held by this instance for as long as the client keeps it open, and ended
//! with the request's result when shutdown begins (see `mcp::subscriptions`).

use std::sync::Arc;

use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;
use rmcp::model::Extensions;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::Value;
use tokio::sync::watch;

use crate::event::StreamName;
use crate::mcp::{Backend, BoxFuture, Changes, ToolError, Tools, Window, Written};
use crate::store::{Live, News};

use super::auth::{ApiKey, Scope};
use super::query::Query;
use super::wire::ApiError;
use super::wire::Body;
use super::{App, ServerOptions, context, events, notes, streams};

/// The SDK's HTTP service with recap's tools.
pub(super) type McpService = StreamableHttpService<Tools, NeverSessionManager>;

/// The service for a server with `options`.
pub(super) fn service(options: &ServerOptions) -> McpService {
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(options.max_body_bytes);
    // The Host check guards an open server on loopback against DNS rebinding; a keyed server
    // may sit behind any name, and its keys are the guard.
    if options.keys.is_some() {
        config = config.disable_allowed_hosts();
    }
    // Stateless: the SDK asks for a handler per request. Building one makes the tools' JSON
    // schemas; a clone of one built here shares them.
    let tools = Tools::stateless(Arc::new(InProcess));
    StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// Who is calling: put in the request's extensions for the tools.
#[derive(Clone)]
struct Caller {
    app: Arc<App>,
    key: Option<ApiKey>,
}

/// Hands a request to the SDK, with the app and the caller's key for the tools.
pub(super) async fn handle(
    app: &Arc<App>,
    key: Option<&ApiKey>,
    parts: &Parts,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    // Read here like every other route's body: within the size cap and the time limit, and
    // counted against the bodies decoded at once (held until the answer is made).
    let body = super::body::read_capped(body, &parts.headers, &app.options, &app.bodies).await?;
    let mut request =
        Request::from_parts(parts.clone(), http_body_util::Full::new(body.bytes.clone()));
    request.extensions_mut().insert(Caller {
        app: Arc::clone(app),
        key: key.cloned(),
    });
    let response = app.mcp.handle(request).await;
    Ok(response.map(Body::Boxed))
}

/// The tools' backend on the `/mcp` route: the store, through the HTTP handlers' own logic.
struct InProcess;

impl InProcess {
    /// The caller, and `stream` if the caller's key may do `scope` on it.
    fn authorize<'a>(
        extensions: &'a Extensions,
        scope: Scope,
        stream: &str,
    ) -> Result<(&'a Caller, StreamName), ToolError> {
        let caller = caller(extensions)?;
        let stream = StreamName::new(stream).map_err(|error| tool_error(error.into()))?;
        if let Some(key) = &caller.key {
            key.authorize(scope, Some(&stream)).map_err(tool_error)?;
        }
        Ok((caller, stream))
    }
}

fn caller(extensions: &Extensions) -> Result<&Caller, ToolError> {
    extensions
        .get::<Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .ok_or_else(|| tool_error(ApiError::internal("an MCP call without its caller")))
}

fn tool_error(error: ApiError) -> ToolError {
    ToolError(error.message)
}

impl Backend for InProcess {
    fn context<'a>(
        &'a self,
        caller: &'a Extensions,
        stream: &'a str,
        query: String,
    ) -> BoxFuture<'a, Result<Window, ToolError>> {
        Box::pin(async move {
            let (caller, stream) = Self::authorize(caller, Scope::Read, stream)?;
            let window = context::window_for_query(&caller.app, &stream, Some(&query))
                .await
                .map_err(tool_error)?;
            Ok(Window {
                text: window.text,
                tokens: window.tokens,
                budget: window.budget,
                encoding: window.encoding.name().to_owned(),
            })
        })
    }

    fn post_event<'a>(
        &'a self,
        caller: &'a Extensions,
        stream: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<Written, ToolError>> {
        Box::pin(async move {
            let (caller, stream) = Self::authorize(caller, Scope::Write, stream)?;
            let app = &caller.app;
            let events = events::parse_events(
                body.as_bytes(),
                super::body::Framing::Json,
                &app.options.limits,
            )
            .map_err(tool_error)?;
            let appended = events::append(app, &stream, events)
                .await
                .map_err(tool_error)?;
            let appended = appended
                .into_iter()
                .next()
                .ok_or_else(|| tool_error(ApiError::internal("an append without a record")))?;
            Ok(Written {
                seq: appended.record.seq,
                repeat_count: appended.record.repeat_count,
                collapsed: appended.collapsed,
            })
        })
    }

    fn add_note<'a>(
        &'a self,
        caller: &'a Extensions,
        stream: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<u64, ToolError>> {
        Box::pin(async move {
            let (caller, stream) = Self::authorize(caller, Scope::Write, stream)?;
            let note = notes::add(&caller.app, &stream, &body)
                .await
                .map_err(tool_error)?;
            Ok(note.id)
        })
    }

    fn delete_note<'a>(
        &'a self,
        caller: &'a Extensions,
        stream: &'a str,
        id: u64,
    ) -> BoxFuture<'a, Result<(), ToolError>> {
        Box::pin(async move {
            let (caller, stream) = Self::authorize(caller, Scope::Write, stream)?;
            notes::remove(&caller.app, &stream, &id.to_string())
                .await
                .map_err(tool_error)
        })
    }

    fn streams<'a>(
        &'a self,
        extensions: &'a Extensions,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Value>, ToolError>> {
        Box::pin(async move {
            let caller = caller(extensions)?;
            if let Some(key) = &caller.key {
                key.authorize(Scope::Read, None).map_err(tool_error)?;
            }
            streams::visible(&caller.app, caller.key.as_ref(), prefix)
                .await
                .map_err(tool_error)?
                .iter()
                .map(|stats| serde_json::to_value(stats).map_err(ApiError::internal))
                .collect::<Result<_, _>>()
                .map_err(tool_error)
        })
    }

    fn events<'a>(
        &'a self,
        caller: &'a Extensions,
        stream: &'a str,
        query: String,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(async move {
            let (caller, stream) = Self::authorize(caller, Scope::Read, stream)?;
            let query = Query::parse(Some(&query), events::HISTORY_PARAMS).map_err(tool_error)?;
            let page = events::page(&caller.app, stream, &query)
                .await
                .map_err(tool_error)?;
            serde_json::to_value(page)
                .map_err(ApiError::internal)
                .map_err(tool_error)
        })
    }

    fn follow<'a>(
        &'a self,
        caller: &'a Extensions,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Changes>, ToolError>> {
        Box::pin(async move {
            let (caller, stream) = Self::authorize(caller, Scope::Read, stream)?;
            let app = &caller.app;
            app.metrics.mcp_resource_feeds(1);
            let changes: Box<dyn Changes> = Box::new(LiveChanges {
                live: app.store.subscribe(&stream),
                shutdown: app.shutdown.clone(),
                app: Arc::clone(app),
            });
            Ok(changes)
        })
    }
}

/// A stream's changes straight from the store's live feed (the one behind the SSE route),
/// counted in `recap_mcp_resource_feeds` while open.
struct LiveChanges {
    live: Live,
    app: Arc<App>,
    /// Turns `true` when the server begins to shut down: the feed ends then, so that a
    /// subscription's response ends and the server can drain.
    shutdown: watch::Receiver<bool>,
}

impl Drop for LiveChanges {
    fn drop(&mut self) {
        self.app.metrics.mcp_resource_feeds(-1);
    }
}

impl Changes for LiveChanges {
    fn changed(&mut self) -> BoxFuture<'_, Option<()>> {
        Box::pin(async move {
            if *self.shutdown.borrow() {
                return None;
            }
            tokio::select! {
                _ = self.shutdown.changed() => None,
                news = self.live.next() => match news {
                    // A lagging subscriber missed changes, which is a change all the same.
                    News::Changes(_) | News::Moved => {
                        // What else is queued already is the same news: one report for it all.
                        self.live.drain();
                        Some(())
                    }
                    News::Closed => None,
                },
            }
        })
    }
}
