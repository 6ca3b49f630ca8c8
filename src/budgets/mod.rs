//! `recap bench budgets`: replay real traces over a matrix of budgets and show what survives,
//! against baselines.
//!
//! Each trace is replayed through [`crate::stream::StreamState`], the server's own ingest,
//! collapse and tail cache, with times from the trace; needles (notes and critical events with
//! unique markers) are planted on the way. After every `--every` events, and at the end, the
//! context window is built for every budget and encoding, and so are the windows of two
//! baselines over the raw events: `recency` and `head+tail` ([`baselines`]). What each window
//! shows is tallied into one row per policy × budget × encoding ([`metrics`] defines every
//! number), printed as a table or JSON, and optionally plotted as SVG. Anomaly detection runs
//! on every trace event as the store's writer runs it, and the anomalies raised are reported per
//! trace ([`anomalies`]).
//!
//! Modules: [`needles`] plans the needles; [`replay`] drives one trace; [`baselines`] builds the
//! baseline windows; [`measure`] observes one window; [`metrics`] adds observations up;
//! [`report`] prints; [`plot`] draws; [`anomalies`] counts what detection raised.

pub mod anomalies;
pub mod baselines;
pub mod measure;
pub mod metrics;
pub mod needles;
pub mod plot;
pub mod replay;
pub mod report;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::anomaly::AnomalySettings;
use crate::collapse::{CollapseMode, CollapsePolicy};
use crate::context::{ContextRequest, MAX_BUDGET_TOKENS};
use crate::rank::{WeightError, Weights};
use crate::tokens::Encoding;
use crate::trace::{Trace, TraceError, read_trace};

use anomalies::TraceAnomalies;
use metrics::{Policy, RowKey, Tally};
use replay::{Replay, moments};
use report::{Report, RunSummary, TraceRows};

/// Budgets measured by default: 256 to 8,192 tokens, doubling.
pub const DEFAULT_BUDGETS: [u32; 6] = [256, 512, 1_024, 2_048, 4_096, 8_192];
/// By default a context is taken after every 50 events: each budget is judged at many moments
/// of a trace, not only at its end.
pub const DEFAULT_EVERY: usize = 50;

/// `recap bench budgets --help`'s examples.
const EXAMPLES: &str = "\
Examples:
  recap bench budgets ../shared/traces/*.jsonl               # the table, every default budget
  recap bench budgets trace.jsonl --budgets 512,2048 --encodings cl100k_base,o200k_base
  recap bench budgets ../shared/traces/*.jsonl --svg budgets.svg --json > budgets.json

No server is needed: the traces are replayed in memory.";

/// The options of `recap bench budgets`, as parsed from the command line.
#[derive(Clone, Debug, PartialEq, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct BudgetsArgs {
    /// Trace files (JSONL, one event per line, one stream per file).
    #[arg(required = true, value_name = "FILE.jsonl")]
    pub files: Vec<PathBuf>,
    /// Token budgets to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_BUDGETS)]
    pub budgets: Vec<u32>,
    /// Encodings to count with, comma-separated (cl100k_base, o200k_base).
    #[arg(long, value_delimiter = ',', default_value = "cl100k_base")]
    pub encodings: Vec<Encoding>,
    /// recap's repeat-collapse mode: exact or template.
    #[arg(long, default_value = "exact")]
    pub collapse: CollapseMode,
    /// Ranking weight overrides for recap, e.g. `kind.tool=2,severity.error=6,half_life=32`.
    #[arg(long)]
    pub weights: Option<String>,
    /// Take a context after every N trace events (and at the end).
    #[arg(long, default_value_t = DEFAULT_EVERY, value_name = "N")]
    pub every: usize,
    /// Seed for planting needles.
    #[arg(long, default_value_t = needles::DEFAULT_SEED)]
    pub seed: u64,
    /// Notes, and critical events, planted per trace.
    #[arg(long, default_value_t = needles::DEFAULT_NEEDLES, value_name = "N")]
    pub needles: usize,
    /// Print JSON (`{"rows": [...]}`, recalls and other shares as fractions) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also report every trace on its own.
    #[arg(long)]
    pub per_trace: bool,
    /// Replay without anomaly detection (the server's default has it on).
    #[arg(long)]
    pub no_anomalies: bool,
    /// Write a plot against budget (severe recall, task visible, newest whole, needle recall),
    /// one line per policy, to this SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// Why a benchmark run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetsError {
    /// A trace file could not be read.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// A weight override is not valid.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// An option has a value the benchmark cannot use.
    #[error("{0}")]
    InvalidOption(String),
    /// A trace event has no time; the replay runs on the trace's clock.
    #[error(
        "trace {trace}: event {event} has no `ts`; the replay needs every event's time (add ts to each line)"
    )]
    MissingTimestamp {
        /// The trace.
        trace: String,
        /// 1-based index of the event.
        event: usize,
    },
    /// The report could not be written.
    #[error("cannot write the report: {0}")]
    Output(#[from] io::Error),
    /// The plot could not be written.
    #[error("cannot write the plot to {path}: {detail}")]
    Svg {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// A window exceeded its budget: a bug in the policy, reported after the results.
    #[error(
        "{policy} exceeded its budget: {max_tokens} tokens in a {budget}-token window ({encoding}, {moments} windows over)"
    )]
    BudgetExceeded {
        /// The policy.
        policy: &'static str,
        /// The budget.
        budget: u32,
        /// The encoding.
        encoding: Encoding,
        /// The largest window.
        max_tokens: u32,
        /// How many windows were over.
        moments: u64,
    },
}

impl BudgetsError {
    /// Whether the error is a usage error (exit code 2) rather than a failure (exit code 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            BudgetsError::InvalidOption(_) | BudgetsError::Weights(_)
        )
    }
}

/// Validated options of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Budgets, ascending, without duplicates.
    pub budgets: Vec<u32>,
    /// Encodings, without duplicates.
    pub encodings: Vec<Encoding>,
    /// recap's collapse mode.
    pub collapse: CollapseMode,
    /// recap's ranking weights.
    pub weights: Weights,
    /// The overrides the weights came from, for the report.
    pub weight_overrides: Option<String>,
    /// A context after every this many trace events.
    pub every: usize,
    /// Needle seed.
    pub seed: u64,
    /// Notes, and critical events, per trace.
    pub needles: usize,
    /// Whether to keep per-trace rows.
    pub per_trace: bool,
    /// Anomaly detection during the replay.
    pub anomaly: AnomalySettings,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            budgets: DEFAULT_BUDGETS.to_vec(),
            encodings: vec![Encoding::Cl100kBase],
            collapse: CollapseMode::Exact,
            weights: Weights::default(),
            weight_overrides: None,
            every: DEFAULT_EVERY,
            seed: needles::DEFAULT_SEED,
            needles: needles::DEFAULT_NEEDLES,
            per_trace: false,
            anomaly: AnomalySettings::default(),
        }
    }
}

impl BudgetsArgs {
    /// Checks the options and turns them into [`Options`].
    pub fn validate(&self) -> Result<Options, BudgetsError> {
        let mut budgets = self.budgets.clone();
        budgets.sort_unstable();
        budgets.dedup();
        if budgets.is_empty() {
            return Err(BudgetsError::InvalidOption(
                "--budgets needs at least one budget".into(),
            ));
        }
        if let Some(bad) = budgets.iter().find(|b| **b == 0 || **b > MAX_BUDGET_TOKENS) {
            return Err(BudgetsError::InvalidOption(format!(
                "budget {bad} is out of range; use 1 to {MAX_BUDGET_TOKENS} tokens"
            )));
        }
        let mut encodings = Vec::new();
        for encoding in &self.encodings {
            if !encodings.contains(encoding) {
                encodings.push(*encoding);
            }
        }
        if encodings.is_empty() {
            return Err(BudgetsError::InvalidOption(
                "--encodings needs at least one encoding".into(),
            ));
        }
        if self.every == 0 {
            return Err(BudgetsError::InvalidOption(
                "--every must be at least 1 (a context after every N events)".into(),
            ));
        }
        let mut weights = Weights::default();
        if let Some(overrides) = &self.weights {
            weights.apply_overrides(overrides)?;
        }
        Ok(Options {
            budgets,
            encodings,
            collapse: self.collapse,
            weights,
            weight_overrides: self.weights.clone(),
            every: self.every,
            seed: self.seed,
            needles: self.needles,
            per_trace: self.per_trace,
            anomaly: if self.no_anomalies {
                AnomalySettings::off()
            } else {
                AnomalySettings::default()
            },
        })
    }
}

/// Runs `recap bench budgets`: reads the traces, measures, writes the table (or JSON) to
/// `stdout` and the plot if asked; a progress bar goes to stderr when `progress`. A window over
/// its budget fails the run, after the results are written.
pub fn run(args: &BudgetsArgs, stdout: &mut dyn Write, progress: bool) -> Result<(), BudgetsError> {
    let options = args.validate()?;
    let traces = args
        .files
        .iter()
        .map(|path| read_trace(path))
        .collect::<Result<Vec<Trace>, TraceError>>()?;
    let bar = if progress {
        progress_bar(&traces)
    } else {
        ProgressBar::hidden()
    };
    let report = bench(&traces, &options, &bar)?;
    bar.finish_and_clear();
    if args.json {
        report.write_json(stdout)?;
    } else {
        report.write_table(stdout)?;
    }
    stdout.flush()?;
    if let Some(path) = &args.svg {
        plot::write_svg(path, &report.rows)?;
    }
    check_budgets(&report)
}

fn progress_bar(traces: &[Trace]) -> ProgressBar {
    let total: usize = traces.iter().map(|t| t.events.len()).sum();
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} events ({eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The first row whose largest window was over its budget, as an error.
fn check_budgets(report: &Report) -> Result<(), BudgetsError> {
    match report.rows.iter().find(|row| row.over_budget_moments > 0) {
        Some(row) => Err(BudgetsError::BudgetExceeded {
            policy: row.policy.as_str(),
            budget: row.budget,
            encoding: row.encoding,
            max_tokens: row.max_tokens,
            moments: row.over_budget_moments,
        }),
        None => Ok(()),
    }
}

/// One trace's tallies.
type TraceTallies = BTreeMap<RowKey, Tally>;

/// Measures `traces` under `options`, spreading traces over the machine's cores; `progress`
/// advances by one per trace event replayed.
pub fn bench(
    traces: &[Trace],
    options: &Options,
    progress: &ProgressBar,
) -> Result<Report, BudgetsError> {
    for encoding in &options.encodings {
        encoding.warm_up();
    }
    // Longest traces first, so the last worker to finish is not handed the longest one late.
    let mut order: Vec<usize> = (0..traces.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(traces[i].events.len()));
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(traces.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<TraceResult>>> =
        Mutex::new((0..traces.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(&index) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let result = bench_trace(&traces[index], options, progress);
                    let mut results = results.lock().unwrap_or_else(|p| p.into_inner());
                    results[index] = Some(result);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());

    // Merge in the order the traces were given, so sums (and so the report) are deterministic.
    let mut pooled = TraceTallies::new();
    let mut per_trace = Vec::new();
    let mut anomalies = Vec::new();
    for (trace, result) in traces.iter().zip(results) {
        let (tallies, raised) = result.expect("every trace was measured")?;
        anomalies.push(raised);
        for (key, tally) in &tallies {
            pooled.entry(*key).or_default().merge(tally);
        }
        if options.per_trace {
            per_trace.push(TraceRows {
                trace: trace.name.clone(),
                rows: rows(&tallies, options.collapse),
            });
        }
    }
    Ok(Report {
        rows: rows(&pooled, options.collapse),
        run: RunSummary {
            traces: traces.iter().map(|t| t.name.clone()).collect(),
            events: traces.iter().map(|t| t.events.len() as u64).sum(),
            collapse: options.collapse,
            every: options.every,
            seed: options.seed,
            needles_per_trace: options.needles,
            weights: options.weight_overrides.clone(),
        },
        per_trace,
        anomalies,
    })
}

/// One trace's measurements and the anomalies raised on it.
type TraceResult = Result<(TraceTallies, TraceAnomalies), BudgetsError>;

fn rows(tallies: &TraceTallies, collapse: CollapseMode) -> Vec<metrics::Row> {
    tallies
        .iter()
        .map(|(key, tally)| tally.row(*key, collapse))
        .collect()
}

/// Replays one trace and measures every policy × budget × encoding at each moment.
fn bench_trace(trace: &Trace, options: &Options, progress: &ProgressBar) -> TraceResult {
    let plan = needles::plan(trace, options.needles, options.seed);
    let policy = CollapsePolicy {
        mode: options.collapse,
        ..CollapsePolicy::default()
    };
    let mut replay = Replay::new(trace, &plan, policy, options.anomaly)?;
    let requests: Vec<ContextRequest> = options
        .encodings
        .iter()
        .flat_map(|&encoding| {
            options.budgets.iter().map(move |&budget| {
                let mut request = ContextRequest::new(budget, encoding);
                request.weights = options.weights.clone();
                request
            })
        })
        .collect();
    let mut tallies = TraceTallies::new();
    let mut warmed_raw = 0;
    for moment in moments(trace.events.len(), options.every) {
        let before = replay.applied();
        replay.advance_to(moment);
        progress.inc((moment - before) as u64);
        for &encoding in &options.encodings {
            measure::warm(&replay, encoding, warmed_raw);
        }
        warmed_raw = replay.log().len();
        for request in &requests {
            for policy in Policy::ALL {
                let observation = measure::observe(policy, &mut replay, request);
                let key = RowKey {
                    encoding: request.encoding,
                    budget: request.budget,
                    policy,
                };
                tallies
                    .entry(key)
                    .or_default()
                    .add(&observation, request.budget);
            }
        }
    }
    let totals = replay.state().totals();
    let raw = replay.log().len() as u64;
    for (key, tally) in &mut tallies {
        match key.policy {
            Policy::Recap => tally.end_trace(totals.events, totals.records),
            Policy::Recency | Policy::HeadTail => tally.end_trace(raw, raw),
        }
    }
    Ok((tallies, replay.anomalies().clone()))
}
