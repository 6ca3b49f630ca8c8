//! The one integration-test binary: golden contexts, properties over the real traces, and (with
//! the store and server) a real data file and a real server on 127.0.0.1:0.

mod anomalies;
mod budgets;
mod cache;
mod cli;
mod cli_import;
mod conformance;
mod context_golden;
mod damage;
mod live_server;
mod mcp;
mod mcp_subscriptions;
mod model;
mod openintent;
mod pg_cluster;
mod pg_contexts;
mod pg_nodes;
mod pg_serve;
mod pg_tls;
mod server;
mod sse_edges;
mod store;
mod support;
mod traces;
