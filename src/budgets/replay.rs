//! Replaying one trace: the events go through [`StreamState::append`] (the server's own ingest,
//! collapse and tail cache) and, untouched, into a [`RawLog`] for the baselines; needles are
//! planted on the way.
//!
//! Times come from the trace: each event is appended at its `ts`, a needle at the time of the
//! event it follows, and a context is built "now" = the latest time appended.
//!
//! Besides the two logs, the replay locates the trace events the metrics ask about
//! ([`super::metrics`]): every severe one, the first of kind `task` or `user` (the goal), and the
//! newest one. Needles are not among them: they are measured as needles.

use super::anomalies::TraceAnomalies;
use crate::anomaly::{self, AnomalySettings, DetectorState};
use crate::collapse::CollapsePolicy;
use crate::context::GOAL_KINDS;
use crate::event::{Event, Record, Severity, Timestamp};
use crate::stream::{StreamState, TailCapacity};
use crate::trace::Trace;

use super::BudgetsError;
use super::baselines::RawLog;
use super::needles::{Needle, NeedleType};

/// A trace event located in both replays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    /// The recap record it landed in (a repeat lands in an earlier record).
    pub record_seq: u64,
    /// Its index in the raw log.
    pub raw_index: usize,
}

/// One trace being replayed.
#[derive(Debug)]
pub struct Replay<'t> {
    trace: &'t Trace,
    needles: &'t [Needle],
    applied: usize,
    planted: usize,
    state: StreamState,
    log: RawLog,
    severe: Vec<Located>,
    first_goal: Option<Located>,
    newest: Option<Located>,
    now: Option<Timestamp>,
    /// Anomaly detection, as the store's writer runs it on every appended event.
    detectors: DetectorState,
    anomaly: AnomalySettings,
    anomalies: TraceAnomalies,
}

impl<'t> Replay<'t> {
    /// A replay of `trace` under `policy`, planting `needles` (ordered by position). Every event
    /// must carry a `ts`: the replay runs on the trace's clock, never on the machine's.
    pub fn new(
        trace: &'t Trace,
        needles: &'t [Needle],
        policy: CollapsePolicy,
        anomaly: AnomalySettings,
    ) -> Result<Replay<'t>, BudgetsError> {
        if let Some(line) = trace.events.iter().position(|e| e.ts.is_none()) {
            return Err(BudgetsError::MissingTimestamp {
                trace: trace.name.clone(),
                event: line + 1,
            });
        }
        Ok(Replay {
            trace,
            needles,
            applied: 0,
            planted: 0,
            state: StreamState::new(policy, TailCapacity::default()),
            log: RawLog::new(),
            severe: Vec::new(),
            first_goal: None,
            newest: None,
            now: None,
            detectors: DetectorState::default(),
            anomaly,
            anomalies: TraceAnomalies::new(&trace.name),
        })
    }

    /// Appends trace events (and the needles planted after them) until `count` trace events
    /// have been applied.
    pub fn advance_to(&mut self, count: usize) {
        let target = count.min(self.trace.events.len());
        while self.applied < target {
            let event = self.trace.events[self.applied].clone();
            let ts = event.ts.expect("checked in Replay::new");
            let severe = event.severity >= Severity::Error;
            let goal = GOAL_KINDS.contains(&event.kind.as_str());
            let appended = self.state.append(event.clone(), ts);
            let raised = anomaly::detect(
                &mut self.detectors,
                &self.anomaly,
                &mut self.state,
                &appended,
                ts,
                1,
            );
            self.anomalies.count(&raised);
            self.anomalies.events += 1;
            let located = Located {
                record_seq: appended.record.seq,
                raw_index: self.log.len(),
            };
            if severe {
                self.severe.push(located);
            }
            if goal && self.first_goal.is_none() {
                self.first_goal = Some(located);
            }
            self.newest = Some(located);
            self.push_raw(event, ts);
            self.applied += 1;
            self.now = Some(ts);
            while let Some(needle) = self.needles.get(self.planted) {
                if needle.after != self.applied {
                    break;
                }
                self.plant(needle, ts);
                self.planted += 1;
            }
        }
    }

    fn plant(&mut self, needle: &Needle, ts: Timestamp) {
        match needle.needle_type {
            NeedleType::Note => {
                self.state.add_note(needle.text.clone(), ts, None);
                // A naive agent keeps its notes where it keeps everything else: in the stream.
                let event = Event::new("note", Severity::Info, needle.text.clone())
                    .expect("`note` is a valid kind");
                self.push_raw(event, ts);
            }
            NeedleType::Critical => {
                let event = Event {
                    kind: needle.kind.clone(),
                    ..Event::new("note", Severity::Critical, needle.text.clone())
                        .expect("`note` is a valid kind")
                };
                self.state.append(event.clone(), ts);
                self.push_raw(event, ts);
            }
        }
    }

    fn push_raw(&mut self, event: Event, ts: Timestamp) {
        let index = self.log.len() as u64 + 1;
        self.log.push(Record::from_event(event, index, index, ts));
    }

    /// What anomaly detection raised so far.
    pub fn anomalies(&self) -> &TraceAnomalies {
        &self.anomalies
    }

    /// Trace events applied so far.
    pub fn applied(&self) -> usize {
        self.applied
    }

    /// recap's state of the stream.
    pub fn state(&self) -> &StreamState {
        &self.state
    }

    /// The raw events (trace events, note events and critical needles) for the baselines.
    pub fn log(&self) -> &RawLog {
        &self.log
    }

    /// The raw log, for baselines that memoize clipped lines.
    pub fn log_mut(&mut self) -> &mut RawLog {
        &mut self.log
    }

    /// The trace's severe events applied so far (planted critical needles are not among them:
    /// they are measured as needles).
    pub fn severe(&self) -> &[Located] {
        &self.severe
    }

    /// The trace's first event of a goal kind (`task` or `user`, [`GOAL_KINDS`]), once applied.
    pub fn first_goal(&self) -> Option<Located> {
        self.first_goal
    }

    /// The newest trace event applied (needles planted after it do not replace it).
    pub fn newest(&self) -> Option<Located> {
        self.newest
    }

    /// The markers of the needles planted so far.
    pub fn planted_markers(&self) -> impl Iterator<Item = &'t str> + '_ {
        self.needles[..self.planted]
            .iter()
            .map(|n| n.marker.as_str())
    }

    /// The latest time appended: the "now" a context is built at.
    pub fn now(&self) -> Option<Timestamp> {
        self.now
    }
}

/// The moments at which contexts are taken: after every `every` trace events, and at the end.
pub fn moments(events: usize, every: usize) -> Vec<usize> {
    let every = every.max(1);
    let mut moments: Vec<usize> = (1..=events / every).map(|k| k * every).collect();
    if events > 0 && moments.last() != Some(&events) {
        moments.push(events);
    }
    moments
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budgets::needles;
    use crate::event::parse_timestamp;
    use chrono::TimeDelta;

    #[test]
    fn moments_cover_every_n_and_the_end() {
        assert_eq!(moments(120, 50), vec![50, 100, 120]);
        assert_eq!(moments(100, 50), vec![50, 100]);
        assert_eq!(moments(28, 50), vec![28]);
        assert!(moments(0, 50).is_empty());
    }

    #[test]
    fn replay_plants_needles_and_tracks_severe_events_in_both_logs() {
        let t0 = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
        let events = (0..40)
            .map(|i| {
                let severity = if i % 10 == 3 {
                    Severity::Error
                } else {
                    Severity::Info
                };
                // Every error repeats the same text: recap folds them, the raw log does not.
                let message = if severity == Severity::Error {
                    "boom".to_owned()
                } else {
                    format!("step {i}")
                };
                Event::new("tool", severity, message)
                    .unwrap()
                    .at(t0 + TimeDelta::seconds(i))
            })
            .collect();
        let trace = Trace {
            name: "t".into(),
            events,
        };
        let plan = needles::plan(&trace, 2, 3);
        let mut replay = Replay::new(
            &trace,
            &plan,
            CollapsePolicy::default(),
            // The counts below are the trace's and the needles' own.
            AnomalySettings::off(),
        )
        .unwrap();
        replay.advance_to(40);
        assert_eq!(replay.applied(), 40);
        assert_eq!(replay.planted_markers().count(), 4);
        assert_eq!(replay.state().notes().count(), 2);
        // 40 trace events + 2 note events + 2 critical needles.
        assert_eq!(replay.log().len(), 44);
        assert_eq!(replay.state().totals().events, 42);
        let severe = replay.severe();
        assert_eq!(severe.len(), 4);
        assert!(severe.iter().all(|s| s.record_seq == severe[0].record_seq));
        for s in severe {
            assert_eq!(replay.log().record(s.raw_index).message, "boom");
        }
    }

    #[test]
    fn replay_tracks_the_first_goal_and_the_newest_trace_event() {
        let t0 = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
        let events: Vec<Event> = [
            ("status", "starting"),
            ("user", "fix the parser"),
            ("tool", "ls"),
            ("task", "a later task"),
            ("tool", "cat parser.py"),
            // A repeat: it lands in the record of event 2, an older record.
            ("tool", "ls"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (kind, message))| {
            Event::new(kind, Severity::Info, *message)
                .unwrap()
                .at(t0 + TimeDelta::seconds(i as i64))
        })
        .collect();
        let trace = Trace {
            name: "t".into(),
            events,
        };
        // One note and one critical needle: planted, they never become the newest trace event.
        let plan = needles::plan(&trace, 1, 3);
        let mut replay = Replay::new(
            &trace,
            &plan,
            CollapsePolicy::default(),
            AnomalySettings::default(),
        )
        .unwrap();
        assert_eq!((replay.first_goal(), replay.newest()), (None, None));
        replay.advance_to(1);
        assert_eq!(replay.first_goal(), None, "no task or user event yet");
        replay.advance_to(6);
        let goal = replay.first_goal().unwrap();
        assert_eq!(
            replay.log().record(goal.raw_index).message,
            "fix the parser"
        );
        let goal_record = replay.state().records().find(|r| r.seq == goal.record_seq);
        assert_eq!(goal_record.unwrap().message, "fix the parser");

        let newest = replay.newest().unwrap();
        let ls = replay
            .state()
            .records()
            .find(|r| r.message == "ls")
            .unwrap();
        assert_eq!((newest.record_seq, ls.repeat_count), (ls.seq, 2));
        assert!(newest.record_seq < replay.state().totals().records);
        let raw = replay.log().record(newest.raw_index);
        assert_eq!((raw.kind.as_str(), raw.message.as_str()), ("tool", "ls"));
        // Needles planted after the last trace event come later in the raw log.
        let after_last = plan.iter().filter(|n| n.after == 6).count();
        assert_eq!(newest.raw_index + 1 + after_last, replay.log().len());
    }

    #[test]
    fn events_without_time_are_refused() {
        let trace = Trace {
            name: "t".into(),
            events: vec![Event::new("tool", Severity::Info, "x").unwrap()],
        };
        assert!(matches!(
            Replay::new(
                &trace,
                &[],
                CollapsePolicy::default(),
                AnomalySettings::default()
            ),
            Err(BudgetsError::MissingTimestamp { event: 1, .. })
        ));
    }
}
