//! A stream's changes over its SSE feed (`GET /v1/streams/{s}/subscribe`), for `recap mcp`'s
//! resource subscriptions: one report per change (a client folds reports it has not acted on
//! yet), the feed reopened after a
//! drop (a server restart) from the last revision seen, so no change in between goes unreported.

use crate::event::StreamName;
use crate::mcp::{BoxFuture, Changes};

use super::tail::{self, RECONNECT_MAX, RECONNECT_MIN, SseEvent, Subscription};
use super::{Client, ClientError};

/// The frames that say the stream changed: a new record, a repeat, a note added or deleted,
/// a gap or reset (changes that can no longer be replayed, a stream deleted and created again).
const CHANGE_EVENTS: &[&str] = &["record", "repeat", "note", "note_deleted", "gap"];

/// A stream's SSE feed, followed.
pub struct FeedChanges {
    client: Client,
    stream: StreamName,
    /// The revision of the last frame seen: where a reopened feed resumes.
    last_seen: u64,
    subscription: Subscription,
}

impl FeedChanges {
    /// Opens the feed of `stream` from its current revision: every change committed after this
    /// returns is reported. Fails with the server's refusal (a key without the read scope, or
    /// confined to other streams) or when the server cannot be reached.
    pub async fn open(client: Client, stream: StreamName) -> Result<FeedChanges, ClientError> {
        let last_seen = tail::current_revision(&client, &stream).await?;
        let subscription = tail::subscribe(&client, &stream, Some(last_seen)).await?;
        Ok(FeedChanges {
            client,
            stream,
            last_seen,
            subscription,
        })
    }

    /// The next frame that says the stream changed; `None` when the server refuses the feed
    /// now (a key revoked, say), which ends the subscription.
    async fn next_change(&mut self) -> Option<SseEvent> {
        let mut backoff = RECONNECT_MIN;
        loop {
            match self.subscription.next().await {
                Ok(Some(event)) => {
                    backoff = RECONNECT_MIN;
                    if let Some(revision) = event.id.as_deref().and_then(|id| id.parse().ok()) {
                        self.last_seen = revision;
                    }
                    if CHANGE_EVENTS.contains(&event.event.as_str()) {
                        return Some(event);
                    }
                }
                // The feed ended (a server restart, a cut-off) or broke: reopen it where it was.
                Ok(None) | Err(_) => loop {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    match tail::subscribe(&self.client, &self.stream, Some(self.last_seen)).await {
                        Ok(subscription) => {
                            self.subscription = subscription;
                            break;
                        }
                        Err(ClientError::Api {
                            status, message, ..
                        }) if status.is_client_error() => {
                            tracing::warn!(stream = %self.stream, %status, %message, "the stream's feed was refused; its subscription ends");
                            return None;
                        }
                        Err(error) => {
                            tracing::info!(stream = %self.stream, %error, retry_in = ?backoff, "reopening the stream's feed");
                        }
                    }
                },
            }
        }
    }
}

impl Changes for FeedChanges {
    fn changed(&mut self) -> BoxFuture<'_, Option<()>> {
        Box::pin(async move { self.next_change().await.map(drop) })
    }
}
