//! `recap mcp`: MCP on stdin/stdout, each tool call forwarded to a running recap over HTTP.
//!
//! Desktop and CLI agents start MCP servers as commands; this one holds no data of its own, so
//! any number of agents can share one recap server (and its keys). The answers on stdout are
//! the protocol's alone: logs go to stderr.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use rmcp::ServiceExt;
use rmcp::model::Extensions;
use serde::Deserialize;
use serde_json::Value;

use crate::event::StreamName;
use crate::mcp::{Backend, BoxFuture, Changes, ToolError, Tools, Window, Written};
use crate::server::wire::{BUDGET_HEADER, ENCODING_HEADER, TOKENS_HEADER};

use super::changes::FeedChanges;
use super::{Client, ClientError, error_chain, read_body};

/// Serves MCP on stdin/stdout until the client closes stdin.
pub async fn serve_stdio(client: Client) -> Result<(), ClientError> {
    let running = Tools::with_sessions(Arc::new(OverHttp { client }))
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|error| ClientError::Protocol(format!("MCP over stdio did not start: {error}")))?;
    running
        .waiting()
        .await
        .map_err(|error| ClientError::Protocol(format!("MCP over stdio stopped: {error}")))?;
    Ok(())
}

/// The tools' backend in `recap mcp`: a recap server's HTTP API.
struct OverHttp {
    client: Client,
}

/// The server's message for a refusal (it says what to fix), or what went wrong on the way.
fn tool_error(error: ClientError) -> ToolError {
    match error {
        ClientError::Api { message, .. } => ToolError(message),
        other => ToolError(error_chain(&other)),
    }
}

/// A stream name as a path segment (the server checks it; this only keeps the path whole).
fn segment(stream: &str) -> String {
    stream
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('?', "%3F")
        .replace('#', "%23")
}

fn json_body(body: String) -> Option<(&'static str, Bytes)> {
    Some(("application/json", Bytes::from(body)))
}

impl Backend for OverHttp {
    fn context<'a>(
        &'a self,
        _caller: &'a Extensions,
        stream: &'a str,
        query: String,
    ) -> BoxFuture<'a, Result<Window, ToolError>> {
        Box::pin(async move {
            let path = format!("/v1/streams/{}/context?{query}", segment(stream));
            let response = self
                .client
                .send(Method::GET, &path, None, &[])
                .await
                .map_err(tool_error)?;
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned)
                    .unwrap_or_default()
            };
            let (tokens, budget, encoding) = (
                header(TOKENS_HEADER).parse().unwrap_or(0),
                header(BUDGET_HEADER).parse().unwrap_or(0),
                header(ENCODING_HEADER),
            );
            let bytes = read_body(response).await.map_err(tool_error)?;
            Ok(Window {
                text: String::from_utf8_lossy(&bytes).into_owned(),
                tokens,
                budget,
                encoding,
            })
        })
    }

    fn post_event<'a>(
        &'a self,
        _caller: &'a Extensions,
        stream: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<Written, ToolError>> {
        #[derive(Deserialize)]
        struct Answer {
            records: Vec<Written>,
        }
        Box::pin(async move {
            let path = format!("/v1/streams/{}/events", segment(stream));
            let answer: Answer = self
                .client
                .json(Method::POST, &path, json_body(body))
                .await
                .map_err(tool_error)?;
            answer.records.into_iter().next().ok_or_else(|| {
                tool_error(ClientError::Protocol(
                    "the write answer lists no record".into(),
                ))
            })
        })
    }

    fn add_note<'a>(
        &'a self,
        _caller: &'a Extensions,
        stream: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<u64, ToolError>> {
        #[derive(Deserialize)]
        struct Answer {
            id: u64,
        }
        Box::pin(async move {
            let path = format!("/v1/streams/{}/notes", segment(stream));
            let answer: Answer = self
                .client
                .json(Method::POST, &path, json_body(body))
                .await
                .map_err(tool_error)?;
            Ok(answer.id)
        })
    }

    fn delete_note<'a>(
        &'a self,
        _caller: &'a Extensions,
        stream: &'a str,
        id: u64,
    ) -> BoxFuture<'a, Result<(), ToolError>> {
        Box::pin(async move {
            let path = format!("/v1/streams/{}/notes/{id}", segment(stream));
            self.client
                .send(Method::DELETE, &path, None, &[])
                .await
                .map_err(tool_error)?;
            Ok(())
        })
    }

    fn streams<'a>(
        &'a self,
        _caller: &'a Extensions,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Value>, ToolError>> {
        #[derive(Deserialize)]
        struct Answer {
            streams: Vec<Value>,
        }
        Box::pin(async move {
            let answer: Answer = self
                .client
                .json(Method::GET, &streams_path(prefix), None)
                .await
                .map_err(tool_error)?;
            Ok(answer.streams)
        })
    }

    fn events<'a>(
        &'a self,
        _caller: &'a Extensions,
        stream: &'a str,
        query: String,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(async move {
            let path = format!("/v1/streams/{}/events?{query}", segment(stream));
            self.client
                .json(Method::GET, &path, None)
                .await
                .map_err(tool_error)
        })
    }

    fn follow<'a>(
        &'a self,
        _caller: &'a Extensions,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Changes>, ToolError>> {
        Box::pin(async move {
            let stream = StreamName::new(stream).map_err(|error| ToolError(error.to_string()))?;
            let changes = FeedChanges::open(self.client.clone(), stream)
                .await
                .map_err(tool_error)?;
            let changes: Box<dyn Changes> = Box::new(changes);
            Ok(changes)
        })
    }
}

/// `/v1/streams` narrowed to names that start with `prefix`.
fn streams_path(prefix: &str) -> String {
    if prefix.is_empty() {
        return "/v1/streams".to_owned();
    }
    let prefix: String = form_urlencoded::byte_serialize(prefix.as_bytes()).collect();
    format!("/v1/streams?prefix={prefix}")
}
