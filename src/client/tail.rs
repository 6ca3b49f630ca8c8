//! `recap tail`: follows a stream's SSE feed and prints each change as a line.

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::event::{Note, Record, StreamName};
use crate::render;

use super::{Client, ClientError};

/// One server-sent event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` (the stream revision), if any.
    pub id: Option<String>,
    /// The `event:` type (`message` when absent).
    pub event: String,
    /// The `data:` lines, joined with newlines.
    pub data: String,
}

/// An incremental parser of the `text/event-stream` format: feed it chunks as they arrive, take
/// complete events out. Comments (`: keepalive`) are skipped.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: String,
}

impl SseParser {
    /// Adds a chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &str) -> Vec<SseEvent> {
        self.buffer.push_str(&chunk.replace("\r\n", "\n"));
        let mut events = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut event = SseEvent::default();
            let mut data = Vec::new();
            for line in block.lines() {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match name {
                    "id" => event.id = Some(value.to_owned()),
                    "event" => event.event = value.to_owned(),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            if data.is_empty() && event.id.is_none() {
                continue;
            }
            if event.event.is_empty() {
                event.event = "message".to_owned();
            }
            event.data = data.join("\n");
            events.push(event);
        }
        events
    }
}

/// An open subscription.
#[derive(Debug)]
pub struct Subscription {
    body: Incoming,
    parser: SseParser,
    ready: VecDeque<SseEvent>,
    undecoded: Vec<u8>,
}

impl Subscription {
    /// The next event; `None` when the server ended the feed.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, ClientError> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame =
                frame.map_err(|error| ClientError::Protocol(format!("the feed broke: {error}")))?;
            if let Ok(data) = frame.into_data() {
                self.undecoded.extend_from_slice(&data);
                // A chunk may end inside a multi-byte character: decode what is complete.
                let valid = match std::str::from_utf8(&self.undecoded) {
                    Ok(text) => text.len(),
                    Err(error) => error.valid_up_to(),
                };
                let text = String::from_utf8_lossy(&self.undecoded[..valid]).into_owned();
                self.undecoded.drain(..valid);
                self.ready.extend(self.parser.push(&text));
            }
        }
    }
}

/// Opens a subscription, resuming after revision `after` when given.
pub async fn subscribe(
    client: &Client,
    stream: &StreamName,
    after: Option<u64>,
) -> Result<Subscription, ClientError> {
    let headers: Vec<(&'static str, String)> = after
        .map(|after| vec![("last-event-id", after.to_string())])
        .unwrap_or_default();
    let response = client
        .send(
            Method::GET,
            &format!("/v1/streams/{stream}/subscribe"),
            None,
            &headers,
        )
        .await?;
    Ok(Subscription {
        body: response.into_body(),
        parser: SseParser::default(),
        ready: VecDeque::new(),
        undecoded: Vec::new(),
    })
}

#[derive(Deserialize)]
struct RepeatData {
    seq: u64,
    repeat_count: u64,
}

/// The line `recap tail` prints for an event, if it prints one.
pub fn describe(event: &SseEvent) -> Option<String> {
    match event.event.as_str() {
        "record" => serde_json::from_str::<Record>(&event.data)
            .ok()
            .map(|record| {
                format!(
                    "#{} {}",
                    record.seq,
                    render::record_line(&record).trim_end()
                )
            }),
        "repeat" => serde_json::from_str::<RepeatData>(&event.data)
            .ok()
            .map(|repeat| format!("#{} repeated x{}", repeat.seq, repeat.repeat_count)),
        "note" => serde_json::from_str::<Note>(&event.data)
            .ok()
            .map(|note| format!("note {}: {}", note.id, note.text)),
        "note_deleted" => Some(format!("note deleted: {}", event.data)),
        "gap" => Some(format!(
            "(gap: {}; use `recap export` for the full history)",
            event.data
        )),
        _ => None,
    }
}

/// First wait before reconnecting a dropped feed; it doubles up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Follows a stream, printing a line per change, until `count` changes were printed (or forever).
/// When the feed ends or the connection drops (a server restart), it reconnects with backoff and
/// resumes after the last revision it saw, so nothing is missed or printed twice. Only the first
/// connection's failure is an error. Returns how many changes were printed.
pub async fn tail(
    client: &Client,
    stream: &StreamName,
    after: Option<u64>,
    count: Option<usize>,
    out: &mut impl Write,
) -> Result<usize, ClientError> {
    // Without --after, start from the stream's current revision: a reconnect then knows exactly
    // where to resume.
    let mut last_seen = match after {
        Some(after) => after,
        None => current_revision(client, stream).await?,
    };
    let mut printed = 0;
    let mut subscription = subscribe(client, stream, Some(last_seen)).await?;
    let mut backoff = RECONNECT_MIN;
    while count.is_none_or(|count| printed < count) {
        let event = match subscription.next().await {
            Ok(Some(event)) => event,
            // The feed ended or broke: resume after what was printed.
            Ok(None) | Err(ClientError::Protocol(_)) => {
                subscription = reconnect(client, stream, last_seen, &mut backoff).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        backoff = RECONNECT_MIN;
        if let Some(revision) = event.id.as_deref().and_then(|id| id.parse().ok()) {
            last_seen = revision;
        }
        if let Some(line) = describe(&event) {
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(ClientError::Output)?;
            printed += 1;
        }
    }
    Ok(printed)
}

/// The stream's revision now (0 for a stream that does not exist yet).
pub(crate) async fn current_revision(
    client: &Client,
    stream: &StreamName,
) -> Result<u64, ClientError> {
    #[derive(Deserialize)]
    struct Stats {
        revision: u64,
    }
    match client
        .json::<Stats>(Method::GET, &format!("/v1/streams/{stream}"), None)
        .await
    {
        Ok(stats) => Ok(stats.revision),
        Err(ClientError::Api { status, .. }) if status == http::StatusCode::NOT_FOUND => Ok(0),
        Err(error) => Err(error),
    }
}

/// Subscribes again after `last_seen`, waiting with doubling backoff between attempts.
async fn reconnect(
    client: &Client,
    stream: &StreamName,
    last_seen: u64,
    backoff: &mut Duration,
) -> Subscription {
    loop {
        eprintln!(
            "(feed ended; reconnecting in {:.1} s, resuming after revision {last_seen})",
            backoff.as_secs_f64(),
        );
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(RECONNECT_MAX);
        match subscribe(client, stream, Some(last_seen)).await {
            Ok(subscription) => return subscription,
            Err(error) => eprintln!("({error})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_across_chunks_and_skips_comments() {
        let mut parser = SseParser::default();
        assert!(parser.push(": subscribed\n\nid: 3\nevent: rec").is_empty());
        let events = parser.push("ord\ndata: {\"a\":1}\n\n: keepalive\n\nid: 4\ndata: x\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    id: Some("3".into()),
                    event: "record".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    id: Some("4".into()),
                    event: "message".into(),
                    data: "x".into()
                },
            ]
        );
    }
}
