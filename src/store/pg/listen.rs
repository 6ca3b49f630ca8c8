//! Waking nodes up: every committed batch notifies `recap_changes` once (not once per event),
//! naming each stream it changed and the stream's revision after it; each node keeps one
//! connection listening and hands the notifications to its subscribers ([`Wakeup`]).
//!
//! A notification only says where to look: what changed is read from `recap_changes`, which
//! holds every change in revision order. So a node that missed notifications (its listening
//! connection dropped, a subscriber fell behind) loses nothing: it is told to [`Wakeup::Resync`]
//! and reads the changelog past what it has.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use super::tls::Tls;
use crate::event::StreamName;

/// The channel every node notifies and listens on.
pub(super) const CHANNEL: &str = "recap_changes";
/// PostgreSQL refuses payloads of 8,000 bytes or more: a batch's lines are split below that.
const MAX_PAYLOAD_BYTES: usize = 7_900;
/// How long the listener waits before connecting again after losing its connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// Wake-ups a slow subscriber may be behind before it is told to resync.
pub(super) const WAKEUP_QUEUE: usize = 4_096;

/// What a node hears about committed changes, from any node (itself included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// A stream changed; its revision is now `revision` (0: it was deleted).
    Changed {
        /// The stream.
        stream: StreamName,
        /// Its revision after the commit.
        revision: u64,
    },
    /// Notifications may have been missed (the listening connection was (re)established, or
    /// this subscriber fell behind): whoever follows streams reads their changelog again.
    Resync,
}

/// Starts a payload line naming a stream that lost records to maintenance without a new
/// revision (older nodes, expecting a revision there, skip the line).
const TRIMMED: &str = "trimmed";

/// The payloads that announce `changed` (stream, revision after the batch): one line
/// `<revision> <name>` per stream, and `trimmed <name>` per stream in `trimmed`, in as few
/// notifications as fit.
pub(super) fn payloads(changed: &[(&StreamName, u64)], trimmed: &[&StreamName]) -> Vec<String> {
    let mut payloads = vec![String::new()];
    let lines = changed
        .iter()
        .map(|(stream, revision)| format!("{revision} {stream}\n"))
        .chain(trimmed.iter().map(|stream| format!("{TRIMMED} {stream}\n")));
    for line in lines {
        let current = payloads.last_mut().expect("never empty");
        if !current.is_empty() && current.len() + line.len() > MAX_PAYLOAD_BYTES {
            payloads.push(line);
        } else {
            current.push_str(&line);
        }
    }
    payloads.retain(|payload| !payload.is_empty());
    payloads
}

/// What a payload line says.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    Changed(Wakeup),
    /// A stream lost records without a new revision: only the node's cache cares (a feed has
    /// no change to show), so it is not a [`Wakeup`].
    Trimmed(StreamName),
}

fn parse(payload: &str) -> impl Iterator<Item = Heard> + '_ {
    payload.lines().filter_map(|line| {
        let (revision, stream) = line.split_once(' ')?;
        let stream = StreamName::new(stream).ok()?;
        if revision == TRIMMED {
            return Some(Heard::Trimmed(stream));
        }
        Some(Heard::Changed(Wakeup::Changed {
            stream,
            revision: revision.parse().ok()?,
        }))
    })
}

/// Listens until the store is gone (`alive` no longer upgrades), connecting again whenever the
/// connection is lost, and telling subscribers to resync each time it (re)connects.
/// `listening` is told when notifications start arriving (`true`, before the resync) and when
/// they may stop (`false`, as soon as the connection is lost); `trimmed` of each stream another
/// node's maintenance trimmed.
pub(super) async fn run(
    config: tokio_postgres::Config,
    tls: Tls,
    place: String,
    wakeups: broadcast::Sender<Wakeup>,
    alive: Weak<()>,
    listening: impl Fn(bool) + Send + 'static,
    trimmed: impl Fn(&StreamName) + Send + Sync + 'static,
) {
    let trimmed = std::sync::Arc::new(trimmed);
    while alive.upgrade().is_some() {
        match config.connect(tls.connector.clone()).await {
            Ok((client, mut connection)) => {
                let sender = wakeups.clone();
                let trimmed = trimmed.clone();
                let mut pump = tokio::spawn(async move {
                    while let Some(message) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        match message {
                            Ok(AsyncMessage::Notification(notification)) => {
                                for heard in parse(notification.payload()) {
                                    match heard {
                                        // No subscriber yet is nothing to tell.
                                        Heard::Changed(wakeup) => drop(sender.send(wakeup)),
                                        Heard::Trimmed(stream) => trimmed(&stream),
                                    }
                                }
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        listening(true);
                        let _ = wakeups.send(Wakeup::Resync);
                        // Until the connection ends or the store is gone.
                        loop {
                            tokio::select! {
                                _ = &mut pump => {
                                    listening(false);
                                    break;
                                }
                                () = tokio::time::sleep(Duration::from_secs(1)) => {
                                    if alive.upgrade().is_none() {
                                        pump.abort();
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(database = %place, %error, "cannot listen for other nodes' changes");
                        pump.abort();
                    }
                }
                drop(client);
            }
            Err(error) => {
                tracing::warn!(database = %place, %error, "cannot connect to listen for other nodes' changes");
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_below_the_limit_and_parse_back() {
        let names: Vec<StreamName> = (0..200)
            .map(|i| StreamName::new(&format!("{}-{i}", "s".repeat(100))).unwrap())
            .collect();
        let changed: Vec<(&StreamName, u64)> = names.iter().zip(1..).collect();
        let trimmed: Vec<&StreamName> = names.iter().step_by(3).collect();
        let payloads = payloads(&changed, &trimmed);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() < 8_000));
        let parsed: Vec<Heard> = payloads.iter().flat_map(|p| parse(p)).collect();
        let expected: Vec<Heard> = changed
            .iter()
            .map(|(stream, revision)| {
                Heard::Changed(Wakeup::Changed {
                    stream: (*stream).clone(),
                    revision: *revision,
                })
            })
            .chain(
                trimmed
                    .iter()
                    .map(|stream| Heard::Trimmed((*stream).clone())),
            )
            .collect();
        assert_eq!(parsed, expected);
    }
}
