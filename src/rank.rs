//! Scoring and selection within a budget: pure, no I/O.
//!
//! A record's score is `kind weight × severity weight × decay`, where decay halves every
//! [`Weights::half_life`] records of age (age 0 for the newest record and for records still
//! repeating), and never falls below the floor of the record's severity, so errors and critical
//! events stay in reach long after routine chatter has decayed. How a score buys a place in the
//! window is [`crate::context::pack`]'s business.

use std::collections::HashMap;

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

/// The documented default weight of `kind`.
fn default_kind_weight(kind: &str) -> f64 {
    DEFAULT_KIND_WEIGHTS
        .iter()
        .find(|(known, _)| *known == kind)
        .map_or(UNKNOWN_KIND_WEIGHT, |(_, weight)| *weight)
}

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

    /// The kinds whose weight is raised above its default: the request wants them, so they
    /// compete from as far back as the stream's memory reaches.
    pub fn raised_kinds(&self) -> Vec<&str> {
        self.kinds
            .iter()
            .filter(|(kind, weight)| **weight > default_kind_weight(kind))
            .map(|(kind, _)| kind.as_str())
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
