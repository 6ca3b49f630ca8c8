//! The thresholds of anomaly detection: documented defaults, a server's settings, and what one
//! stream overrides.

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

/// Default: the same action this many times in a row is a loop. On the shared traces 3 raises
/// one anomaly per 82 events at most (ReAct agents re-issuing a `Search[...]` that failed).
pub const DEFAULT_REPEAT_ACTIONS: u64 = 3;
/// Default: actions alternating (A-B-A-B, or A-B-C-A-B-C) for this many full cycles.
pub const DEFAULT_OSCILLATION_CYCLES: u64 = 3;
/// Default: the same error (numbers and ids masked) this many times, each within
/// [`RECURRENCE_SPAN_EVENTS`] events of the last.
pub const DEFAULT_ERROR_RECURRENCES: u64 = 3;
/// Default: this long without an event is a stall. The shared traces' longest gaps are model
/// calls of about two minutes; five minutes raises none on them.
pub const DEFAULT_STALL_SECONDS: u64 = 300;
/// An error counts as recurring only within this many events of its previous occurrence; an
/// error episode ends when this many events pass without a recurring error.
pub const RECURRENCE_SPAN_EVENTS: u64 = 32;
/// Largest threshold accepted: a detector that needs more than this never fires in practice.
pub const MAX_THRESHOLD: u64 = 1_000_000;

/// The thresholds in force for a stream. A threshold of 0 turns its detector off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AnomalySettings {
    /// Whether detection runs at all.
    pub enabled: bool,
    /// The same action this many times in a row.
    pub repeat_actions: u64,
    /// Actions alternating for this many full cycles.
    pub oscillation_cycles: u64,
    /// The same error this many times, each within [`RECURRENCE_SPAN_EVENTS`] of the last.
    pub error_recurrences: u64,
    /// A gap between consecutive events longer than this many seconds.
    pub stall_seconds: u64,
}

impl Default for AnomalySettings {
    fn default() -> Self {
        AnomalySettings {
            enabled: true,
            repeat_actions: DEFAULT_REPEAT_ACTIONS,
            oscillation_cycles: DEFAULT_OSCILLATION_CYCLES,
            error_recurrences: DEFAULT_ERROR_RECURRENCES,
            stall_seconds: DEFAULT_STALL_SECONDS,
        }
    }
}

impl AnomalySettings {
    /// Settings that detect nothing.
    pub fn off() -> AnomalySettings {
        AnomalySettings {
            enabled: false,
            ..AnomalySettings::default()
        }
    }

    /// The stall threshold as a duration, `None` when stalls are not detected.
    pub fn stall(&self) -> Option<TimeDelta> {
        let seconds = i64::try_from(self.stall_seconds).ok()?;
        (seconds > 0).then(|| TimeDelta::seconds(seconds))
    }

    /// These settings with `overrides` applied.
    pub fn with(self, overrides: &AnomalyOverrides) -> AnomalySettings {
        AnomalySettings {
            enabled: overrides.enabled.unwrap_or(self.enabled),
            repeat_actions: overrides.repeat_actions.unwrap_or(self.repeat_actions),
            oscillation_cycles: overrides
                .oscillation_cycles
                .unwrap_or(self.oscillation_cycles),
            error_recurrences: overrides
                .error_recurrences
                .unwrap_or(self.error_recurrences),
            stall_seconds: overrides.stall_seconds.unwrap_or(self.stall_seconds),
        }
    }

    /// Why a threshold is out of range, naming the setting; `None` when all are fine.
    pub fn check(&self) -> Option<(&'static str, String)> {
        let thresholds = [
            ("repeat_actions", self.repeat_actions, 2),
            ("oscillation_cycles", self.oscillation_cycles, 2),
            ("error_recurrences", self.error_recurrences, 2),
            ("stall_seconds", self.stall_seconds, 1),
        ];
        thresholds
            .into_iter()
            .find(|&(_, value, least)| value != 0 && !(least..=MAX_THRESHOLD).contains(&value))
            .map(|(name, _, least)| {
                (
                    name,
                    format!("must be 0 (off) or between {least} and {MAX_THRESHOLD}"),
                )
            })
    }
}

/// What one stream sets (`PUT /v1/streams/{s}/anomalies`); every field left out follows the
/// server's setting. Kept in the stream's metadata row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyOverrides {
    /// Turns detection on or off for the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// See [`AnomalySettings::repeat_actions`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_actions: Option<u64>,
    /// See [`AnomalySettings::oscillation_cycles`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oscillation_cycles: Option<u64>,
    /// See [`AnomalySettings::error_recurrences`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_recurrences: Option<u64>,
    /// See [`AnomalySettings::stall_seconds`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_seconds: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_what_they_name() {
        let overrides = AnomalyOverrides {
            repeat_actions: Some(5),
            stall_seconds: Some(0),
            ..AnomalyOverrides::default()
        };
        let settings = AnomalySettings::default().with(&overrides);
        assert_eq!(settings.repeat_actions, 5);
        assert_eq!(settings.stall(), None);
        assert_eq!(settings.oscillation_cycles, DEFAULT_OSCILLATION_CYCLES);
        assert!(settings.enabled);
        assert!(settings.check().is_none());
        let bad = AnomalySettings {
            repeat_actions: 1,
            ..settings
        };
        assert_eq!(bad.check().unwrap().0, "repeat_actions");
    }
}
