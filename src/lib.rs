//! recap: an event memory for LLM agents.
//!
//! Agents post what happens to them into named streams; recap folds repeats into compact
//! records, keeps a durable history, and serves prompt-ready context windows that fit an exact
//! token budget. The modules, from the data model outwards:
//!
//! - [`event`]: `Event`, `Severity`, `Kind`, `Record`, `Note`; validation with precise errors.
//! - [`collapse`]: fingerprints and the repeat-collapse rule (`exact` and `template` modes).
//! - [`tokens`]: the only user of tiktoken-rs; encodings built once, per-record count caches.
//! - [`rank`]: scoring and selection within a budget (pure).
//! - [`render`]: the only place that formats context text.
//! - [`context`]: builds a context window from a stream snapshot (pure, deterministic).
//! - [`stream`]: one stream's live state in memory, shared by the store and offline replay.
//! - [`store`]: durable history in one redb file; group-commit writer; tail caches; changelog.
//! - [`trace`]: reading JSONL agent traces (the shared trace format) into events.
//! - [`budgets`]: `recap bench budgets`: replays traces over a budget matrix against baselines.

pub mod budgets;
pub mod collapse;
pub mod context;
pub mod event;
pub mod rank;
pub mod render;
pub mod store;
pub mod stream;
pub mod tokens;
pub mod trace;

pub use collapse::{CollapseMode, CollapsePolicy};
pub use context::{ContextRequest, ContextWindow};
pub use event::{Event, EventError, EventInput, Kind, Note, Record, Severity, Timestamp};
pub use tokens::Encoding;
