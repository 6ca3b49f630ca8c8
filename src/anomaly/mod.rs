//! Anomaly detection at ingest: loops, oscillation, recurring errors and stalls become records
//! the model sees.
//!
//! A looping agent does not know it loops; recap sees every event of a stream, so it can say
//! so. Each event a client appends is observed once, on the writer's path, by a small
//! per-stream [`DetectorState`] (pure, O(1) per event: a few hashes and counters):
//!
//! - **repeat**: the same action (kind `action` or `tool` below severity `error`, same actor,
//!   the message's first [`COMPARED_BYTES`] bytes compared with numbers and ids masked as
//!   template collapse masks them)
//!   [`AnomalySettings::repeat_actions`] times in a row. Events of other kinds in between (observations, thoughts) do not break the
//!   run, and every event counts, so a run that collapsed into one record `×6` is six actions:
//!   the same tool call with different results is the loop an agent cannot see.
//! - **oscillation**: actions alternating A-B-A-B (or A-B-C-A-B-C) for
//!   [`AnomalySettings::oscillation_cycles`] full cycles, compared the same way.
//! - **recurring_error**: the same error (severity `error` and above, or kind `error`; masked)
//!   [`AnomalySettings::error_recurrences`] times, each within [`RECURRENCE_SPAN_EVENTS`] events
//!   of the last: the error that comes back after every retry. Up to four distinct errors are
//!   followed at once, since storms alternate a few variants.
//! - **stall**: a gap over [`AnomalySettings::stall_seconds`] between consecutive events (by
//!   `ts`). Detection never reads the clock, so a stall is reported when the stream resumes,
//!   saying how long it was silent.
//!
//! A detection becomes one record of kind `anomaly` (actor `recap`, severity `warning`, `error`
//! once the episode reaches twice its threshold) with a message a model understands and a
//! payload naming the detector, the count, the threshold and the seqs involved. One record per
//! episode: while the episode lasts, the events that extend it update the record (the next
//! repeat: count, `last_ts`, message and payload; each one until the episode is at twice its
//! threshold, then every [`UPDATE_EVERY`]th, so a storm costs few writes), through the same repeat and change
//! machinery as any repeat, so history, the changelog, SSE and the context window see it.
//! Within one request (a batch of events) only the latest update is placed, at its end
//! ([`Observer`]): the record ends as it would have event by event, revised once. Each
//! anomaly record and update counts as one event of kind `anomaly` in the stream's totals (so
//! `events` stays the sum of the stored repeat counts); the events clients posted are `events`
//! less `kinds.anomaly`. Anomaly records never collapse and nothing collapses into them
//! ([`crate::collapse::is_collapse_target`]).

mod detector;
mod settings;

pub use detector::{
    ACTION_KINDS, COMPARED_BYTES, Detector, DetectorState, EpisodeRecord, Finding, MAX_NAMED_SEQS,
    Observed, UPDATE_EVERY,
};
pub use settings::{
    AnomalyOverrides, AnomalySettings, DEFAULT_ERROR_RECURRENCES, DEFAULT_OSCILLATION_CYCLES,
    DEFAULT_REPEAT_ACTIONS, DEFAULT_STALL_SECONDS, MAX_THRESHOLD, RECURRENCE_SPAN_EVENTS,
};

pub use crate::collapse::{ANOMALY_ACTOR, ANOMALY_KIND};

use std::sync::Arc;

use crate::context::CachedRecord;
use crate::event::{Event, Kind, Record, Severity, Timestamp};
use crate::stream::{Appended, Origin, StreamState};

/// One anomaly record placed on a stream: raised for a new episode, or its next version.
#[derive(Debug)]
pub struct Raised {
    /// The record as it is now.
    pub appended: Appended,
    /// The cached record, for another state of the stream to adopt.
    pub cached: Arc<CachedRecord>,
    /// How another state adopts it.
    pub origin: Origin,
    /// For an update: the record's creation facts (revision, `first_ts`), which a writer needs
    /// to rewrite its row.
    pub episode: EpisodeRecord,
}

/// Anomaly detection over the events of one request, as a writer runs it: a new episode's
/// record is placed at once, where the event that opened it is, while the next versions of an
/// open episode's record wait for the end of the request ([`Observer::finish`]) and only the
/// latest is placed. An update takes no seq, so nothing moves; a batch that extends a loop by
/// a hundred events revises its record once, with the latest count, rather than at every
/// update point (an event at a time, as `detect` does, gives the same records as before).
#[derive(Debug, Default)]
pub struct Observer {
    /// Per detector, the latest update of its episode's record not placed yet.
    held: Vec<Held>,
}

/// An update of an open episode's record, waiting for the end of the request.
#[derive(Debug)]
struct Held {
    detector: Detector,
    /// The record as placed (the update builds on it).
    episode: EpisodeRecord,
    finding: Finding,
    ts: Timestamp,
}

impl Observer {
    /// What a writer does after placing an event on a stream, whichever backend keeps it:
    /// resolves the stream's settings (`overrides` over the server's), forgets the detectors'
    /// state while detection is off (so turning it on again starts afresh), and otherwise
    /// observes the event with the state, made on the stream's first observed event. Returns
    /// the records placed now (new episodes', and any held update they come after). Both
    /// writers keep `detectors` and `overrides` in the stream's row, written in the commit of
    /// the event.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        detectors: &mut Option<Box<DetectorState>>,
        overrides: Option<&AnomalyOverrides>,
        server: AnomalySettings,
        stream: &mut StreamState,
        appended: &Appended,
        ts: Timestamp,
        first_stored: u64,
    ) -> Vec<Raised> {
        let settings = overrides.map_or(server, |overrides| server.with(overrides));
        if !settings.enabled {
            *detectors = None;
            self.held.clear();
            return Vec::new();
        }
        let state = detectors.get_or_insert_with(Box::default);
        self.detect(state, &settings, stream, appended, ts, first_stored)
    }

    /// Places the updates held back: the latest of each open episode's record, at the end of
    /// the request.
    pub fn finish(
        self,
        detectors: &mut Option<Box<DetectorState>>,
        stream: &mut StreamState,
        first_stored: u64,
    ) -> Vec<Raised> {
        match detectors {
            Some(state) => place_held(self.held, state, stream, first_stored),
            None => Vec::new(),
        }
    }

    /// Observes `event` (just placed in `stream` as `appended`): places a new record per new
    /// episode, after the updates held so far (so revisions follow the order the findings were
    /// made in), and holds back the next versions of open episodes' records.
    fn detect(
        &mut self,
        detectors: &mut DetectorState,
        settings: &AnomalySettings,
        stream: &mut StreamState,
        appended: &Appended,
        ts: Timestamp,
        first_stored: u64,
    ) -> Vec<Raised> {
        let record = &appended.record;
        let observed = Observed {
            seq: record.seq,
            ts,
            kind: &record.kind,
            severity: record.severity,
            actor: record.actor.as_deref(),
            message: &record.message,
        };
        let findings = detectors.observe(settings, observed);
        // Most events find nothing, and then nothing is allocated.
        let mut placed = Vec::new();
        for finding in findings {
            let detector = finding.detector;
            match detectors.record(detector) {
                Some(episode) if episode.seq >= first_stored => {
                    if !finding.updates_record() {
                        continue;
                    }
                    self.hold(Held {
                        detector,
                        episode,
                        finding,
                        ts,
                    });
                }
                _ => {
                    let held = std::mem::take(&mut self.held);
                    placed.extend(place_held(held, detectors, stream, first_stored));
                    let raised = raise(stream, finding, ts);
                    detectors.set_record(detector, raised.episode);
                    placed.push(raised);
                }
            }
        }
        placed
    }

    /// Holds an update back in place of the one held for its detector, keeping what the
    /// updates in between would have left on the record: it escalates once any finding is
    /// `error`, and its `last_ts` is the latest of their times (events may come out of order).
    fn hold(&mut self, mut update: Held) {
        if let Some(at) = self.held.iter().position(|h| h.detector == update.detector) {
            let previous = self.held.remove(at);
            update.finding.severity = update.finding.severity.max(previous.finding.severity);
            update.ts = update.ts.max(previous.ts);
        }
        self.held.push(update);
    }
}

/// Places held updates: each open episode's record at its latest version.
fn place_held(
    held: Vec<Held>,
    detectors: &mut DetectorState,
    stream: &mut StreamState,
    first_stored: u64,
) -> Vec<Raised> {
    let mut placed = Vec::with_capacity(held.len());
    for held in held {
        // Retention may have removed the record since: the episode's next finding raises a
        // new one.
        if held.episode.seq < first_stored {
            continue;
        }
        let raised = update(stream, held.episode, held.finding, held.ts);
        // The episode may have ended since (and another begun): only its own record moves on.
        if detectors.record(held.detector).map(|record| record.seq) == Some(held.episode.seq) {
            detectors.set_record(held.detector, raised.episode);
        }
        placed.push(raised);
    }
    placed
}

/// Observes `event` (just placed in `stream` as `appended`) as a request of its own and places
/// what the detectors find on `stream`: a new anomaly record per new episode, the next version
/// of the record of an episode that goes on. `first_stored` is the oldest seq the stream still
/// stores: an episode whose record retention removed starts a new one.
pub fn detect(
    detectors: &mut DetectorState,
    settings: &AnomalySettings,
    stream: &mut StreamState,
    appended: &Appended,
    ts: Timestamp,
    first_stored: u64,
) -> Vec<Raised> {
    let mut observer = Observer::default();
    let mut placed = observer.detect(detectors, settings, stream, appended, ts, first_stored);
    placed.extend(place_held(observer.held, detectors, stream, first_stored));
    placed
}

/// A new anomaly record for a new episode.
fn raise(stream: &mut StreamState, finding: Finding, ts: Timestamp) -> Raised {
    let event = Event {
        message: finding.message(),
        kind: anomaly_kind(),
        severity: finding.severity,
        ts: Some(ts),
        display_message: None,
        actor: Some(ANOMALY_ACTOR.to_owned()),
        step_id: None,
        payload: Some(finding.payload()),
    };
    let (appended, cached) = stream.append_shared(event, ts);
    let record = &appended.record;
    let episode = EpisodeRecord {
        seq: record.seq,
        first_ts: record.first_ts.timestamp_micros(),
        last_ts: record.last_ts.timestamp_micros(),
        repeat_count: record.repeat_count,
        created_revision: record.revision,
        escalated: record.severity >= Severity::Error,
    };
    Raised {
        appended,
        cached,
        origin: Origin::Event {
            ts,
            collapsed: false,
        },
        episode,
    }
}

/// The next version of an open episode's record.
fn update(
    stream: &mut StreamState,
    episode: EpisodeRecord,
    finding: Finding,
    ts: Timestamp,
) -> Raised {
    let escalated = !episode.escalated && finding.severity >= Severity::Error;
    let severity = if episode.escalated || escalated {
        Severity::Error
    } else {
        Severity::Warning
    };
    let time = |micros: i64| Timestamp::from_timestamp_micros(micros).unwrap_or(ts);
    let record = Record {
        seq: episode.seq,
        message: finding.message(),
        kind: anomaly_kind(),
        severity,
        first_ts: time(episode.first_ts),
        last_ts: time(episode.last_ts).max(ts),
        repeat_count: episode.repeat_count.saturating_add(1),
        revision: 0,
        display_message: None,
        actor: Some(ANOMALY_ACTOR.to_owned()),
        step_id: None,
        payload: Some(finding.payload()),
    };
    let (appended, cached) = stream.revise(record, ts, escalated);
    let now = &appended.record;
    let episode = EpisodeRecord {
        last_ts: now.last_ts.timestamp_micros(),
        repeat_count: now.repeat_count,
        escalated: episode.escalated || escalated,
        ..episode
    };
    Raised {
        appended,
        cached,
        origin: Origin::Revised { ts, escalated },
        episode,
    }
}

fn anomaly_kind() -> Kind {
    Kind::new(ANOMALY_KIND).expect("`anomaly` is a valid kind")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collapse::CollapsePolicy;
    use crate::event::parse_timestamp;
    use crate::stream::TailCapacity;
    use chrono::TimeDelta;
    use proptest::prelude::*;

    /// A random event: an action from a small alphabet, an observation, or an error; and the
    /// seconds since the previous event (sometimes over the stall threshold).
    fn events() -> impl Strategy<Value = Vec<(u8, u8, i64)>> {
        prop::collection::vec(
            (0u8..3, 0u8..3, prop_oneof![4 => 0i64..5, 1 => 290i64..900]),
            1..120,
        )
    }

    /// Names, not numbers: numbers are masked, so `click #1` and `click #2` are one action.
    const NAMES: [&str; 3] = ["submit", "cancel", "next"];

    fn event_of(class: u8, which: u8) -> Event {
        let name = NAMES[usize::from(which)];
        match class {
            0 => Event::new("action", Severity::Info, format!("click #{name}")).unwrap(),
            1 => Event::new("observation", Severity::Info, format!("page {name}")).unwrap(),
            _ => Event::new("tool", Severity::Error, format!("{name} failed after 3s")).unwrap(),
        }
    }

    /// What detection placed: per anomaly record, its detector, its latest repeat count, and
    /// whether each placement was a revision.
    struct Placed {
        records: std::collections::BTreeMap<u64, (Detector, u64)>,
        placements: Vec<(u64, bool)>,
    }

    /// Replays `events` through a stream and its detectors, writing the detectors' state out
    /// and reading it back after every event when `persist` (as the store does on every commit).
    fn replay(events: &[(u8, u8, i64)], persist: bool) -> (StreamState, Placed) {
        let settings = AnomalySettings::default();
        let mut stream = StreamState::new(CollapsePolicy::default(), TailCapacity::default());
        let mut detectors = DetectorState::default();
        let mut at = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
        let mut placed = Placed {
            records: Default::default(),
            placements: Vec::new(),
        };
        for &(class, which, gap) in events {
            at += TimeDelta::seconds(gap);
            let appended = stream.append(event_of(class, which), at);
            for raised in detect(&mut detectors, &settings, &mut stream, &appended, at, 1) {
                let record = &raised.appended.record;
                let revised = matches!(raised.origin, Origin::Revised { .. });
                placed.placements.push((record.seq, revised));
                let name = record.payload.as_ref().unwrap().to_object()["detector"].clone();
                let detector = Detector::ALL
                    .into_iter()
                    .find(|d| name == d.as_str())
                    .unwrap();
                placed
                    .records
                    .insert(record.seq, (detector, record.repeat_count));
            }
            if persist {
                let text = serde_json::to_string(&detectors).unwrap();
                detectors = serde_json::from_str(&text).unwrap();
            }
        }
        (stream, placed)
    }

    /// A long loop updates its record at every event up to twice the threshold, then every
    /// `UPDATE_EVERY`th: 40 clicks are raised at 3, updated at 4, 5, 6, 22 and 38.
    #[test]
    fn a_long_episode_updates_its_record_sparingly() {
        let clicks = vec![(0u8, 0u8, 1i64); 40];
        let (stream, placed) = replay(&clicks, false);
        assert_eq!(placed.placements.len(), 6);
        let (_, (detector, count)) = placed.records.iter().next().unwrap();
        assert_eq!((*detector, *count), (Detector::Repeat, 6));
        let record = stream
            .records()
            .find(|r| r.kind.as_str() == ANOMALY_KIND)
            .unwrap();
        assert!(
            record.message.starts_with("the last 38 actions repeat"),
            "{}",
            record.message
        );
    }

    /// Replays `events` as requests of the sizes `requests` gives in turn (the rest in requests
    /// of one), as a writer observes them: one [`Observer`] per request.
    fn replay_requests(events: &[(u8, u8, i64)], requests: &[usize]) -> StreamState {
        let settings = AnomalySettings::default();
        let mut stream = StreamState::new(CollapsePolicy::default(), TailCapacity::default());
        let mut detectors = None;
        let mut at = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
        let mut sizes = requests.iter().copied().chain(std::iter::repeat(1));
        let mut rest = events;
        while !rest.is_empty() {
            let size = sizes.next().unwrap().clamp(1, rest.len());
            let (request, after) = rest.split_at(size);
            rest = after;
            let mut observer = Observer::default();
            for &(class, which, gap) in request {
                at += TimeDelta::seconds(gap);
                let appended = stream.append(event_of(class, which), at);
                observer.observe(
                    &mut detectors,
                    None,
                    settings,
                    &mut stream,
                    &appended,
                    at,
                    1,
                );
            }
            observer.finish(&mut detectors, &mut stream, 1);
        }
        stream
    }

    /// A loop posted in one request is raised where it began and updated once, at the end of
    /// the request, with what its last update point says: 40 clicks are raised at 3 and updated
    /// once, saying 38.
    #[test]
    fn a_request_updates_its_episode_record_once() {
        let clicks = vec![(0u8, 0u8, 1i64); 40];
        let stream = replay_requests(&clicks, &[40]);
        let anomalies: Vec<&Record> = stream
            .records()
            .filter(|r| r.kind.as_str() == ANOMALY_KIND)
            .collect();
        assert_eq!(anomalies.len(), 1);
        let record = anomalies[0];
        assert_eq!((record.seq, record.repeat_count), (2, 2));
        assert_eq!(record.severity, Severity::Error);
        assert!(
            record.message.starts_with("the last 38 actions repeat"),
            "{}",
            record.message
        );
    }

    proptest! {
        /// However events are grouped into requests, detection places the same anomaly records
        /// at the same seqs, and each ends as it would an event at a time (message, payload,
        /// severity, times); only how often it was revised (its repeat count) differs. Every
        /// other record is the same.
        #[test]
        fn requests_place_what_single_events_place(
            events in events(),
            requests in prop::collection::vec(1usize..40, 0..8),
        ) {
            let single = replay_requests(&events, &[]);
            let (kept, _) = replay(&events, false);
            let batched = replay_requests(&events, &requests);
            // Event at a time through the observer is what `detect` does.
            let records = |s: &StreamState| s.records().cloned().collect::<Vec<_>>();
            prop_assert_eq!(records(&single), records(&kept));
            let without_counts = |s: &StreamState| {
                s.records()
                    .map(|r| {
                        let mut r = r.clone();
                        if r.kind.as_str() == ANOMALY_KIND {
                            prop_assert!(r.repeat_count >= 1);
                            r.repeat_count = 0;
                        }
                        r.revision = 0;
                        Ok(r)
                    })
                    .collect::<Result<Vec<_>, TestCaseError>>()
            };
            prop_assert_eq!(without_counts(&batched)?, without_counts(&single)?);
            for (batched, single) in batched.records().zip(single.records()) {
                prop_assert!(batched.repeat_count <= single.repeat_count);
            }
        }

        /// The same events give the same records, whether the detectors' state stayed in
        /// memory or went through the stream's metadata after every event.
        #[test]
        fn detection_is_deterministic_and_survives_persisting(events in events()) {
            let (kept, kept_placed) = replay(&events, false);
            let (persisted, persisted_placed) = replay(&events, true);
            prop_assert_eq!(kept_placed.placements, persisted_placed.placements);
            prop_assert_eq!(kept_placed.records, persisted_placed.records);
            let records = |s: &StreamState| s.records().cloned().collect::<Vec<_>>();
            prop_assert_eq!(records(&kept), records(&persisted));
            prop_assert_eq!(kept.totals(), persisted.totals());
        }

        /// One record per episode: a repeat record for every maximal run of one action of at
        /// least the threshold (other kinds in between do not break a run), a stall record for
        /// every maximal run of gaps over the threshold; each record is raised once and then
        /// only updated, and its repeat count is the number of events that extended it.
        #[test]
        fn one_record_per_episode(events in events()) {
            let (stream, placed) = replay(&events, false);
            let threshold = DEFAULT_REPEAT_ACTIONS as usize;
            // The model: runs of equal actions, and runs of long gaps.
            let mut repeat_runs = Vec::new();
            // Actions: the `action` events (a failed `tool` call is an error, not an action).
            let mut run: Option<(u8, usize)> = None;
            for &(class, which, _) in &events {
                if class != 0 {
                    continue;
                }
                run = match run {
                    Some((action, len)) if action == which => Some((action, len + 1)),
                    finished => {
                        repeat_runs.extend(finished.filter(|&(_, len)| len >= threshold));
                        Some((which, 1))
                    }
                };
            }
            repeat_runs.extend(run.filter(|&(_, len)| len >= threshold));
            let mut stall_runs = 0;
            let mut stalled = false;
            for (index, &(_, _, gap)) in events.iter().enumerate() {
                let over = index > 0 && gap > DEFAULT_STALL_SECONDS as i64;
                if over && !stalled {
                    stall_runs += 1;
                }
                stalled = over;
            }
            let by = |detector: Detector| -> Vec<u64> {
                placed
                    .records
                    .values()
                    .filter(|(d, _)| *d == detector)
                    .map(|(_, count)| *count)
                    .collect()
            };
            let repeats = by(Detector::Repeat);
            prop_assert_eq!(repeats.len(), repeat_runs.len());
            for (count, (_, len)) in repeats.iter().zip(&repeat_runs) {
                // Raised at the threshold, then updated as `Finding::updates_record` says.
                let updates = (threshold + 1..=*len)
                    .filter(|&c| c <= 2 * threshold || (c - 2 * threshold).is_multiple_of(UPDATE_EVERY as usize))
                    .count();
                prop_assert_eq!(*count as usize, 1 + updates);
            }
            prop_assert_eq!(by(Detector::Stall).len(), stall_runs);
            // Raised once, then only revised.
            let mut seen = std::collections::BTreeSet::new();
            for &(seq, revised) in &placed.placements {
                prop_assert_eq!(revised, !seen.insert(seq));
            }
            // The stream holds exactly these records as anomalies, and counts each placement
            // as one `anomaly` event: nothing else collapsed into them.
            let stored: Vec<(u64, u64)> = stream
                .records()
                .filter(|r| r.kind.as_str() == ANOMALY_KIND)
                .map(|r| (r.seq, r.repeat_count))
                .collect();
            let expected: Vec<(u64, u64)> =
                placed.records.iter().map(|(seq, (_, count))| (*seq, *count)).collect();
            prop_assert_eq!(stored, expected);
            let anomaly_events = stream.totals().kinds.get(&anomaly_kind()).copied().unwrap_or(0);
            prop_assert_eq!(anomaly_events, placed.placements.len() as u64);
            // Counts by severity are sums of records at their current severity, escalated
            // anomalies included (the Earlier line subtracts shown records from them).
            let mut by_severity = [0u64; 5];
            for record in stream.records() {
                by_severity[record.severity.index()] += record.repeat_count;
            }
            prop_assert_eq!(by_severity, stream.totals().severities);
        }
    }
}
