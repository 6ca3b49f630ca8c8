//! recap as an MCP server: the tools an agent calls (get_context, log_event, remember, forget,
//! list_streams, get_events), on the official Rust SDK (`rmcp`).
//!
//! The tools are defined once, here, over a [`Backend`]: what a call reaches. The server's
//! `/mcp` route (`server::mcp`) reaches the store in-process, behind the caller's API key;
//! `recap mcp` (`client::mcp`) speaks MCP on stdin/stdout and forwards each call to a running
//! recap over HTTP. Both backends take the same query strings and JSON bodies as the HTTP API,
//! so a tool's arguments are checked by the HTTP API's own parsers and its errors are the API's
//! messages. This module imports neither `server` nor `client`.
//!
//! Modules: [`backend`] (the trait and what it answers), [`tools`] (arguments, descriptions,
//! replies, the `ServerHandler`), [`subscriptions`] (context resources followed for subscribed
//! clients, and which protocol generation works on which transport).

pub mod backend;
pub mod subscriptions;
pub mod tools;

pub use backend::{Backend, BoxFuture, Changes, ToolError, Window, Written};
pub use tools::Tools;
