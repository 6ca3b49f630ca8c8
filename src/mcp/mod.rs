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
//! replies, the `ServerHandler`).

pub mod backend;
pub mod tools;

pub use backend::{Backend, BoxFuture, ToolError, Window, Written};
pub use tools::Tools;
