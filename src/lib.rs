//! recap: an event memory for LLM agents.
//!
//! Agents post what happens to them into named streams; recap folds repeats into compact
//! records, keeps a durable history, and serves prompt-ready context windows that fit an exact
//! token budget. The modules, from the data model outwards:
//!
//! - [`event`]: `Event`, `Severity`, `Kind`, `Record`, `Note`; validation with precise errors.
//! - [`payload`]: an event's structured data, kept as compact JSON text.
//! - [`collapse`]: fingerprints and the repeat-collapse rule (`exact` and `template` modes).
//! - [`tokens`]: the only user of tiktoken-rs; encodings built once, per-record count caches.
//! - [`openintent`]: OpenIntent event types ↔ recap kinds and severities (pure mapping).
//! - [`rank`]: scoring and selection within a budget (pure).
//! - [`render`]: the only place that formats context text.
//! - [`context`]: builds a context window from a stream snapshot (pure, deterministic): record
//!   caches, totals, candidates, packing by level of detail, the Earlier summary.
//! - [`meter`]: counting the bytes cached records and notes hold (the store's cache budget).
//! - [`anomaly`]: detectors on the writer's path (repeats, oscillation, recurring errors,
//!   stalls) whose episodes become `anomaly` records.
//! - [`stream`]: one stream's live state in memory, shared by the store and offline replay.
//! - [`store`]: durable history in one redb file; group-commit writer; tail caches; changelog.
//! - [`trace`]: reading JSONL agent traces (the shared trace format) into events.
//! - [`jsonl`]: the line formats of import and export (events, trace lines, exported records).
//! - [`server`]: the HTTP API on hyper: routes, wire types and error mapping, SSE, auth, metrics.
//! - [`config`]: flags, environment and config file merged into a validated server `Config`.
//! - [`logging`]: the log format and the `RUST_LOG` filter (which adds to the default).
//! - [`client`]: the requests of the CLI's client commands over HTTP, as typed answers.
//! - [`cli`]: the command line: clap definitions with examples, what each command prints,
//!   shell completions and man pages.
//! - [`budgets`]: `recap bench budgets`: replays traces over a budget matrix against baselines.

// Items no one outside the library can reach are `pub(crate)`, not `pub` (the integration
// tests, benches and the binary use the library from outside, so what they use stays `pub`).
#![warn(unreachable_pub)]

pub mod anomaly;
pub mod budgets;
pub mod cli;
pub mod client;
pub mod collapse;
pub mod config;
pub mod context;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod histogram;
pub mod jsonl;
pub mod logging;
pub mod mcp;
pub mod meter;
pub mod openintent;
pub mod payload;
pub mod rank;
pub mod render;
pub mod server;
pub mod store;
pub mod stream;
pub mod tokens;
pub mod trace;

pub use collapse::{CollapseMode, CollapsePolicy};
pub use context::{ContextRequest, ContextWindow};
pub use event::{Event, EventError, EventInput, Kind, Note, Record, Severity, Timestamp};
pub use tokens::Encoding;
