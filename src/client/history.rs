//! `GET /v1/streams/{s}/events`: a stream's history, a page at a time, with the route's filters
//! and cursors. Records come back as the JSON text the server sent (for `--json`, unchanged)
//! and are read as [`Record`]s only to be shown.

use http::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{Record, Severity, StreamName, Timestamp, format_timestamp};

use super::{Client, ClientError, name_unknown_stream, query_string};

/// What a page of history asks for: the query parameters of `GET .../events`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryQuery {
    /// Records with a seq above this.
    pub after: Option<u64>,
    /// Records with a seq below this (alone, without `after`: pages go backwards).
    pub before: Option<u64>,
    /// Records per page (the server's default, 100, when `None`; at most 1,000).
    pub limit: Option<u64>,
    /// Only these kinds.
    pub kinds: Vec<String>,
    /// Only records at least this severe.
    pub min_severity: Option<Severity>,
    /// Only records whose latest event is at or after this time.
    pub since: Option<Timestamp>,
    /// Only records whose first event is before this time.
    pub until: Option<Timestamp>,
}

impl HistoryQuery {
    /// The query string.
    pub fn to_query(&self) -> String {
        let mut pairs = Vec::new();
        let numbers = [
            ("after", self.after),
            ("before", self.before),
            ("limit", self.limit),
        ];
        for (name, value) in numbers {
            if let Some(value) = value {
                pairs.push((name, value.to_string()));
            }
        }
        if !self.kinds.is_empty() {
            pairs.push(("kinds", self.kinds.join(",")));
        }
        if let Some(severity) = self.min_severity {
            pairs.push(("min_severity", severity.as_str().to_owned()));
        }
        if let Some(since) = &self.since {
            pairs.push(("since", format_timestamp(since)));
        }
        if let Some(until) = &self.until {
            pairs.push(("until", format_timestamp(until)));
        }
        query_string(pairs)
    }

    /// Whether pages go backwards: `before` without `after`, where `next` is the `before=` of
    /// the next (older) page.
    pub fn is_backwards(&self) -> bool {
        self.before.is_some() && self.after.is_none()
    }

    /// The query of the page after one that answered `next`, or `None` when there is none (or
    /// the cursor would not move: a server bug must not loop forever).
    pub fn next_page(&self, next: Option<u64>) -> Option<HistoryQuery> {
        let next = next?;
        let mut query = self.clone();
        if self.is_backwards() {
            if self.before.is_some_and(|before| next >= before) {
                return None;
            }
            query.before = Some(next);
        } else {
            if self.after.is_some_and(|after| next <= after) {
                return None;
            }
            query.after = Some(next);
        }
        Some(query)
    }
}

/// Seqs `from ..= to` of the asked range that retention removed.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct Removed {
    /// The first.
    pub from: u64,
    /// The last.
    pub to: u64,
}

/// One page of history.
#[derive(Debug, Deserialize)]
pub struct HistoryPage {
    /// The records in seq order, as the server sent them.
    pub records: Vec<Box<RawValue>>,
    /// The cursor of the next page (see [`HistoryQuery::next_page`]), `None` on the last.
    pub next: Option<u64>,
    /// Seqs of the asked range that retention removed, if any.
    #[serde(default)]
    pub removed: Option<Removed>,
}

impl HistoryPage {
    /// The records, read.
    pub fn read_records(&self) -> Result<Vec<Record>, ClientError> {
        self.records
            .iter()
            .map(|raw| {
                serde_json::from_str(raw.get())
                    .map_err(|error| ClientError::Protocol(format!("a record: {error}")))
            })
            .collect()
    }
}

/// Fetches one page; a stream that does not exist is [`ClientError::UnknownStream`].
pub async fn page(
    client: &Client,
    stream: &StreamName,
    query: &HistoryQuery,
) -> Result<HistoryPage, ClientError> {
    client
        .json(
            Method::GET,
            &format!("/v1/streams/{stream}/events{}", query.to_query()),
            None,
        )
        .await
        .map_err(|error| name_unknown_stream(error, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_query_the_route_takes() {
        assert_eq!(HistoryQuery::default().to_query(), "");
        let query = HistoryQuery {
            after: Some(3),
            limit: Some(10),
            kinds: vec!["tool".into(), "llm".into()],
            min_severity: Some(Severity::Warning),
            since: Some(crate::event::parse_timestamp("2024-05-01T10:00:00+02:00").unwrap()),
            ..HistoryQuery::default()
        };
        assert_eq!(
            query.to_query(),
            "?after=3&limit=10&kinds=tool%2Cllm&min_severity=warning&since=2024-05-01T08%3A00%3A00.000000Z"
        );
    }

    #[test]
    fn follows_cursors_forwards_and_backwards_and_stops_when_they_stall() {
        let forwards = HistoryQuery::default();
        let second = forwards.next_page(Some(100)).unwrap();
        assert_eq!(second.after, Some(100));
        assert_eq!(
            second.next_page(Some(100)),
            None,
            "a cursor that does not move"
        );
        assert_eq!(second.next_page(None), None);

        let backwards = HistoryQuery {
            before: Some(500),
            ..HistoryQuery::default()
        };
        assert!(backwards.is_backwards());
        let older = backwards.next_page(Some(400)).unwrap();
        assert_eq!((older.before, older.after), (Some(400), None));
        assert_eq!(older.next_page(Some(450)), None);
    }
}
