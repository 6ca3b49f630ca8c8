//! Scoring and selection within a budget: pure, no I/O.
//!
//! A record's score is `kind weight × severity weight × decay`, where decay halves every
//! [`Weights::half_life`] records of age (age 0 for the newest record and for records still
//! repeating), and never falls below the floor of the record's severity, so errors and critical
//! events stay in reach long after routine chatter has decayed. Selection keeps the newest few
//! records when they fit, then fills the rest of the budget in score order.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::Serialize;

use crate::event::Severity;

/// Default weight of each well-known kind. Errors, security and anomalies first; what the agent
/// was asked and planned next; routine tool and model traffic in the middle; bookkeeping
/// (status, routing, mode switches, metrics) last. Unknown kinds get [`UNKNOWN_KIND_WEIGHT`].
pub const DEFAULT_KIND_WEIGHTS: [(&str, f64); 20] = [
    ("security", 3.0),
    ("error", 3.0),
    ("anomaly", 2.5),
    ("policy", 2.0),
    ("user", 2.0),
    ("task", 2.0),
    ("plan", 2.0),
    ("note", 2.0),
    ("tool", 1.5),
    ("retry", 1.5),
    ("action", 1.2),
    ("trigger", 1.2),
    ("agent", 1.0),
    ("llm", 1.0),
    ("rag", 1.0),
    ("state", 1.0),
    ("status", 0.8),
    ("router", 0.6),
    ("mode", 0.5),
    ("metric", 0.4),
];
/// Weight of a kind recap has no default for: neutral.
pub const UNKNOWN_KIND_WEIGHT: f64 = 1.0;
/// Default weight per severity, indexed by [`Severity::index`]: each step doubles.
pub const DEFAULT_SEVERITY_WEIGHTS: [f64; 5] = [0.25, 1.0, 2.0, 4.0, 8.0];
/// Lowest decay per severity: errors keep a quarter and critical events half of their weight
/// however old they are; the rest fades out.
pub const SEVERITY_DECAY_FLOORS: [f64; 5] = [0.0, 0.0, 0.0, 0.25, 0.5];
/// Records of severity `error` and above weigh at least this much whatever their kind, so that a
/// critical `metric` event does not rank below fresh routine chatter.
pub const SEVERE_MIN_KIND_WEIGHT: f64 = 1.0;
/// Records of age after which a score has halved.
pub const DEFAULT_HALF_LIFE_RECORDS: f64 = 64.0;
/// How many of the newest records are kept ahead of ranking when they fit.
pub const DEFAULT_NEWEST_KEPT: usize = 3;

/// Ranking weights: the documented defaults, or a request's overrides of them.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    kinds: HashMap<String, f64>,
    /// Weight of kinds not in the table.
    pub unknown_kind: f64,
    /// Weight per severity, indexed by [`Severity::index`].
    pub severities: [f64; 5],
    /// Records of age after which a score halves.
    pub half_life: f64,
    /// How many of the newest records are kept ahead of ranking.
    pub newest_kept: usize,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            kinds: DEFAULT_KIND_WEIGHTS
                .iter()
                .map(|(kind, weight)| ((*kind).to_owned(), *weight))
                .collect(),
            unknown_kind: UNKNOWN_KIND_WEIGHT,
            severities: DEFAULT_SEVERITY_WEIGHTS,
            half_life: DEFAULT_HALF_LIFE_RECORDS,
            newest_kept: DEFAULT_NEWEST_KEPT,
        }
    }
}

/// Why a weight override was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WeightError {
    /// Not `name=value`.
    #[error(
        "weight override {0:?} is not NAME=VALUE; use kind.<kind>=N, severity.<severity>=N, half_life=N or newest_kept=N, comma-separated"
    )]
    Syntax(String),
    /// The name is not one of the overridable weights.
    #[error("unknown weight {0:?}; use kind.<kind>, severity.<severity>, half_life or newest_kept")]
    UnknownName(String),
    /// The value is not a finite number ≥ 0 (or > 0 for half_life, a whole number for newest_kept).
    #[error(
        "weight {name:?} has invalid value {value:?}; use a finite number ≥ 0 (half_life > 0; newest_kept a whole number)"
    )]
    InvalidValue {
        /// The weight.
        name: String,
        /// What was given.
        value: String,
    },
}

impl Weights {
    /// The weight of `kind`.
    pub fn kind(&self, kind: &str) -> f64 {
        self.kinds.get(kind).copied().unwrap_or(self.unknown_kind)
    }

    /// Sets the weight of `kind`.
    pub fn set_kind(&mut self, kind: &str, weight: f64) {
        self.kinds.insert(kind.to_owned(), weight);
    }

    /// Applies comma-separated overrides: `kind.tool=2.5,severity.warning=3,half_life=32`.
    pub fn apply_overrides(&mut self, spec: &str) -> Result<(), WeightError> {
        for item in spec
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| WeightError::Syntax(item.to_owned()))?;
            let (name, value) = (name.trim(), value.trim());
            let invalid = || WeightError::InvalidValue {
                name: name.to_owned(),
                value: value.to_owned(),
            };
            let number: f64 = value.parse().map_err(|_| invalid())?;
            if !number.is_finite() || number < 0.0 {
                return Err(invalid());
            }
            if let Some(kind) = name.strip_prefix("kind.") {
                let kind = crate::event::Kind::new(kind)
                    .map_err(|_| WeightError::UnknownName(name.to_owned()))?;
                self.set_kind(kind.as_str(), number);
            } else if let Some(severity) = name.strip_prefix("severity.") {
                let severity: Severity = severity
                    .parse()
                    .map_err(|_| WeightError::UnknownName(name.to_owned()))?;
                self.severities[severity.index()] = number;
            } else if name == "half_life" {
                if number == 0.0 {
                    return Err(invalid());
                }
                self.half_life = number;
            } else if name == "newest_kept" {
                if number.fract() != 0.0 || number > 1e6 {
                    return Err(invalid());
                }
                self.newest_kept = number as usize;
            } else {
                return Err(WeightError::UnknownName(name.to_owned()));
            }
        }
        Ok(())
    }

    /// The score of a record of `kind` and `severity` that is `age` records old.
    pub fn score(&self, kind: &str, severity: Severity, age: u64) -> f64 {
        self.combine(self.kind(kind), severity, age)
    }

    /// The score given the kind's weight (looked up once per build by the caller).
    pub fn combine(&self, kind_weight: f64, severity: Severity, age: u64) -> f64 {
        let kind_weight = if severity >= Severity::Error {
            kind_weight.max(SEVERE_MIN_KIND_WEIGHT)
        } else {
            kind_weight
        };
        kind_weight * self.severity_score(severity, age)
    }

    /// The score without the kind weight: severity weight × decay.
    pub fn severity_score(&self, severity: Severity, age: u64) -> f64 {
        let decay = (-(age as f64) / self.half_life)
            .exp2()
            .max(SEVERITY_DECAY_FLOORS[severity.index()]);
        self.severities[severity.index()] * decay
    }
}

/// A record competing for a place in the window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Its seq (candidates are given oldest first).
    pub seq: u64,
    /// What its line costs.
    pub tokens: u32,
    /// Its score.
    pub score: f64,
}

/// Why a candidate is in or out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Included as one of the newest records.
    Newest,
    /// Included on its score.
    Ranked,
    /// Left out: it did not fit in what remained of the budget.
    Budget,
    /// Left out by the request's filters (`min_severity`, `kinds`, `since`).
    Filtered,
    /// The audit record of a note shown in the Notes section: shown there, not repeated.
    Pinned,
}

impl Reason {
    /// Whether the candidate is shown (as a line, or as a pinned note).
    pub fn included(self) -> bool {
        matches!(self, Reason::Newest | Reason::Ranked | Reason::Pinned)
    }

    /// Whether the candidate has a line in the Recent section.
    pub fn has_line(self) -> bool {
        matches!(self, Reason::Newest | Reason::Ranked)
    }
}

/// The outcome of [`select`]: a reason per candidate, in the candidates' order, and the tokens
/// used by the included ones.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// One per candidate.
    pub reasons: Vec<Reason>,
    /// Sum of the included candidates' tokens.
    pub tokens: u32,
}

/// Chooses candidates whose tokens sum to at most `available`: the newest `newest_kept` first
/// (each when it fits), then the rest by score, highest first, newer first on ties. A candidate
/// that does not fit is skipped, so a smaller one after it may still get in.
pub fn select(candidates: &[Candidate], available: u32, newest_kept: usize) -> Selection {
    let mut reasons = vec![Reason::Budget; candidates.len()];
    let mut remaining = available;
    let mut take = |index: usize, reason: Reason, remaining: &mut u32| {
        if candidates[index].tokens <= *remaining {
            *remaining -= candidates[index].tokens;
            reasons[index] = reason;
        }
    };
    let newest_start = candidates.len().saturating_sub(newest_kept);
    for index in (newest_start..candidates.len()).rev() {
        take(index, Reason::Newest, &mut remaining);
    }
    let mut order: Vec<usize> = (0..newest_start).collect();
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (&candidates[a], &candidates[b]);
        b.score.total_cmp(&a.score).then_with(|| b.seq.cmp(&a.seq))
    });
    for index in order {
        if remaining == 0 {
            break;
        }
        take(index, Reason::Ranked, &mut remaining);
    }
    Selection {
        reasons,
        tokens: available - remaining,
    }
}

/// Orders scores for display and tests: higher first.
pub fn by_score_desc(a: f64, b: f64) -> Ordering {
    b.total_cmp(&a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn severity_and_kind_raise_the_score_and_age_lowers_it() {
        let weights = Weights::default();
        assert!(
            weights.score("tool", Severity::Error, 0) > weights.score("tool", Severity::Info, 0)
        );
        assert!(
            weights.score("error", Severity::Info, 0) > weights.score("metric", Severity::Info, 0)
        );
        assert!(
            weights.score("tool", Severity::Info, 0) > weights.score("tool", Severity::Info, 10)
        );
        assert_eq!(
            weights.score("tool", Severity::Info, 64),
            weights.score("tool", Severity::Info, 0) / 2.0
        );
        // Floors: an ancient error keeps a quarter of its weight, an ancient info record nothing.
        assert_eq!(
            weights.score("tool", Severity::Error, 1_000_000),
            1.5 * 4.0 * 0.25
        );
        assert!(weights.score("tool", Severity::Info, 1_000_000) < 1e-9);
        assert_eq!(weights.kind("observation"), UNKNOWN_KIND_WEIGHT);
        // A critical event of a low-weight kind still outranks fresh routine work.
        assert!(
            weights.score("metric", Severity::Critical, 1_000)
                > weights.score("task", Severity::Info, 0)
        );
        assert_eq!(weights.score("metric", Severity::Error, 0), 1.0 * 4.0);
    }

    #[test]
    fn overrides_apply_and_errors_say_what_to_write() {
        let mut weights = Weights::default();
        weights
            .apply_overrides("kind.Tool=2.5, severity.warn=3,half_life=32,newest_kept=5")
            .unwrap();
        assert_eq!(weights.kind("tool"), 2.5);
        assert_eq!(weights.severities[Severity::Warning.index()], 3.0);
        assert_eq!(weights.half_life, 32.0);
        assert_eq!(weights.newest_kept, 5);
        let error = |spec: &str| {
            Weights::default()
                .apply_overrides(spec)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("tool"),
            "weight override \"tool\" is not NAME=VALUE; use kind.<kind>=N, severity.<severity>=N, half_life=N or newest_kept=N, comma-separated"
        );
        assert_eq!(
            error("colour=2"),
            "unknown weight \"colour\"; use kind.<kind>, severity.<severity>, half_life or newest_kept"
        );
        assert_eq!(
            error("severity.loud=2"),
            "unknown weight \"severity.loud\"; use kind.<kind>, severity.<severity>, half_life or newest_kept"
        );
        assert_eq!(
            error("kind.tool=-1"),
            "weight \"kind.tool\" has invalid value \"-1\"; use a finite number ≥ 0 (half_life > 0; newest_kept a whole number)"
        );
        assert!(error("half_life=0").starts_with("weight \"half_life\" has invalid value"));
        assert!(error("newest_kept=1.5").starts_with("weight \"newest_kept\" has invalid value"));
        assert!(error("kind.tool=NaN").starts_with("weight \"kind.tool\" has invalid value"));
    }

    #[test]
    fn newest_are_kept_then_best_scores_fill_the_rest() {
        let candidate = |seq, tokens, score| Candidate { seq, tokens, score };
        let candidates = [
            candidate(1, 10, 9.0),
            candidate(2, 10, 1.0),
            candidate(3, 10, 5.0),
            candidate(4, 10, 0.1),
            candidate(5, 10, 0.1),
        ];
        let selection = select(&candidates, 35, 2);
        assert_eq!(
            selection.reasons,
            [
                Reason::Ranked,
                Reason::Budget,
                Reason::Budget,
                Reason::Newest,
                Reason::Newest
            ]
        );
        assert_eq!(selection.tokens, 30);
        // A big record that does not fit lets smaller ones behind it in.
        let candidates = [
            candidate(1, 50, 9.0),
            candidate(2, 5, 1.0),
            candidate(3, 5, 0.5),
        ];
        let selection = select(&candidates, 12, 0);
        assert_eq!(
            selection.reasons,
            [Reason::Budget, Reason::Ranked, Reason::Ranked]
        );
    }

    proptest! {
        #[test]
        fn selection_never_exceeds_what_is_available(
            costs in prop::collection::vec((0u32..300, 0.0f64..10.0), 0..200),
            available in 0u32..5000,
            newest_kept in 0usize..5,
        ) {
            let candidates: Vec<Candidate> = costs
                .iter()
                .enumerate()
                .map(|(i, &(tokens, score))| Candidate { seq: i as u64 + 1, tokens, score })
                .collect();
            let selection = select(&candidates, available, newest_kept);
            let used: u32 = candidates
                .iter()
                .zip(&selection.reasons)
                .filter(|(_, reason)| reason.included())
                .map(|(candidate, _)| candidate.tokens)
                .sum();
            prop_assert!(used <= available);
            prop_assert_eq!(used, selection.tokens);
            // The newest candidate is present whenever it fits on its own.
            if newest_kept > 0 {
                if let Some(last) = candidates.last() {
                    if last.tokens <= available {
                        prop_assert!(selection.reasons.last().unwrap().included());
                    }
                }
            }
        }
    }
}
