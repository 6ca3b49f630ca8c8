//! A stream's running totals: what the Earlier line counts from.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::event::{Kind, Severity, Timestamp};

/// Running totals of everything a stream ever accepted, including records that retention has
/// since removed: what the Earlier line counts from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Records created.
    pub records: u64,
    /// Events accepted (records plus repeats).
    pub events: u64,
    /// Events per kind.
    pub kinds: BTreeMap<Kind, u64>,
    /// Events per severity, indexed by [`Severity::index`].
    pub severities: [u64; 5],
    /// Time of the first event.
    pub first_ts: Option<Timestamp>,
    /// Time of the latest event.
    pub last_ts: Option<Timestamp>,
}

impl Totals {
    /// Counts one accepted event; `new_record` when it started a record.
    pub fn count(&mut self, kind: &Kind, severity: Severity, ts: Timestamp, new_record: bool) {
        self.records += u64::from(new_record);
        self.events += 1;
        match self.kinds.get_mut(kind) {
            Some(count) => *count += 1,
            None => {
                self.kinds.insert(kind.clone(), 1);
            }
        }
        self.severities[severity.index()] += 1;
        self.first_ts = Some(self.first_ts.map_or(ts, |first| first.min(ts)));
        self.last_ts = Some(self.last_ts.map_or(ts, |last| last.max(ts)));
    }

    /// Counts a run of `events` events (≥ 1) of one record brought in whole, as an import does:
    /// one new record spanning `first_ts` to `last_ts`.
    pub fn count_run(
        &mut self,
        kind: &Kind,
        severity: Severity,
        first_ts: Timestamp,
        last_ts: Timestamp,
        events: u64,
    ) {
        self.records += 1;
        self.events += events;
        *self.kinds.entry(kind.clone()).or_insert(0) += events;
        self.severities[severity.index()] += events;
        let (low, high) = (first_ts.min(last_ts), first_ts.max(last_ts));
        self.first_ts = Some(self.first_ts.map_or(low, |first| first.min(low)));
        self.last_ts = Some(self.last_ts.map_or(high, |last| last.max(high)));
    }

    /// Severities as a name → count map, for the wire.
    pub fn severity_counts(&self) -> BTreeMap<&'static str, u64> {
        Severity::ALL
            .iter()
            .filter(|severity| self.severities[severity.index()] > 0)
            .map(|severity| (severity.as_str(), self.severities[severity.index()]))
            .collect()
    }
}
