//! Anomalies raised per trace: how often detection fires on a real trace (the goal is at most
//! one anomaly record per 20 events), by detector, with the first one as an example.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::anomaly::{Detector, Raised};
use crate::stream::Origin;

/// What detection raised while one trace was replayed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TraceAnomalies {
    /// The trace.
    pub trace: String,
    /// Trace events replayed.
    pub events: u64,
    /// Anomaly records raised: one per episode.
    pub records: u64,
    /// Updates of those records while their episodes went on.
    pub updates: u64,
    /// Records raised per detector.
    pub by_detector: BTreeMap<&'static str, u64>,
    /// The first record raised, as its context line reads.
    pub example: Option<String>,
}

impl TraceAnomalies {
    /// An empty tally for `trace`.
    pub fn new(trace: &str) -> TraceAnomalies {
        TraceAnomalies {
            trace: trace.to_owned(),
            ..TraceAnomalies::default()
        }
    }

    /// Counts what one event raised.
    pub fn count(&mut self, raised: &[Raised]) {
        for raised in raised {
            if let Origin::Revised { .. } = raised.origin {
                self.updates += 1;
                continue;
            }
            self.records += 1;
            let record = &raised.appended.record;
            let detector = record
                .payload
                .as_ref()
                .and_then(|payload| payload.to_object().get("detector").cloned())
                .and_then(|name| {
                    Detector::ALL
                        .into_iter()
                        .find(|d| name.as_str() == Some(d.as_str()))
                });
            if let Some(detector) = detector {
                *self.by_detector.entry(detector.as_str()).or_default() += 1;
            }
            if self.example.is_none() {
                self.example = Some(crate::render::record_line(record));
            }
        }
    }

    /// Trace events per anomaly record (`None` when none was raised).
    pub fn events_per_record(&self) -> Option<f64> {
        (self.records > 0).then(|| self.events as f64 / self.records as f64)
    }
}

/// The per-trace table: events, records, updates, records per detector, events per record.
pub fn table(traces: &[TraceAnomalies]) -> String {
    let mut out = String::from("\nanomalies raised per trace (goal: at most one per 20 events)\n");
    let _ = writeln!(
        out,
        "{:<48} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>10}",
        "trace", "events", "records", "updates", "repeat", "oscil", "error", "stall", "events/rec"
    );
    for trace in traces {
        let by = |detector: Detector| {
            trace
                .by_detector
                .get(detector.as_str())
                .copied()
                .unwrap_or(0)
        };
        let rate = trace
            .events_per_record()
            .map_or_else(|| "-".to_owned(), |rate| format!("{rate:.0}"));
        let _ = writeln!(
            out,
            "{:<48} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>10}",
            trace.trace,
            trace.events,
            trace.records,
            trace.updates,
            by(Detector::Repeat),
            by(Detector::Oscillation),
            by(Detector::RecurringError),
            by(Detector::Stall),
            rate,
        );
    }
    for trace in traces {
        if let Some(example) = &trace.example {
            let _ = writeln!(out, "first in {}: {}", trace.trace, example.trim_end());
        }
    }
    out
}
