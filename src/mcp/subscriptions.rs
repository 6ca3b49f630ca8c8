//! Subscriptions to context resources: a client names `recap://streams/{name}/context` and is
//! sent `notifications/resources/updated` for it each time the stream changes, then reads it.
//!
//! Two protocol generations, and where each works:
//! - `subscriptions/listen` (protocol 2026-07-28): one long-lived request per subscription; the
//!   notifications ride its own response, and ending the request ends the subscription. That
//!   needs no session, so it works on the stateless HTTP route (the POST's response is an SSE
//!   stream, held by whichever instance took it) as well as over stdio. [`listen`] runs one.
//! - `resources/subscribe` and `resources/unsubscribe` (the older revisions): the notifications
//!   go out on the session's channel, later and apart from any request. Only a connection that
//!   stays open has one: `recap mcp` (stdio) keeps [`Sessions`]; the stateless HTTP route has
//!   none, refuses both with a message that says what works instead, and does not advertise
//!   `resources.subscribe` in its `initialize` answer.
//!
//! The SDK acknowledges a `subscriptions/listen` request before it hands it to recap, so a
//! change can land between the acknowledgment and the moment the stream's feed is open. Each
//! subscription therefore starts with one `updated` per resource, sent once its feed is open:
//! a client that reads the resource then has everything, and every later change is reported.
//! The older `resources/subscribe` opens the feed before it answers, so it needs no such report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rmcp::model::{ResourceUpdatedNotificationParam, SubscriptionFilter};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer};
use tokio::task::{JoinHandle, JoinSet};

use super::backend::{Backend, Changes};
use super::tools::{CONTEXT_TEMPLATE, stream_of};

/// The part of a `subscriptions/listen` filter recap honours: updates of the context resources
/// it names with a valid URI. Lists do not change in ways worth a notification (the tools and
/// the template are fixed; streams come and go with every new name), so the `listChanged`
/// categories are left out.
pub fn accepted(requested: &SubscriptionFilter) -> SubscriptionFilter {
    let uris: Vec<String> = requested
        .resource_subscriptions
        .iter()
        .flatten()
        .filter(|uri| stream_of(uri).is_some())
        .cloned()
        .collect();
    SubscriptionFilter::builder()
        .resource_subscriptions(uris)
        .build()
}

/// Runs one `subscriptions/listen` subscription: opens the feed of each accepted resource's
/// stream (refusing the whole request, with the reason, if the caller may not read one), sends
/// one `updated` per resource once its feed is open, then one per change, until the client ends
/// the request or every feed has ended (the server is shutting down).
pub async fn listen(
    backend: &Arc<dyn Backend>,
    subscription: SubscriptionContext,
) -> Result<(), ErrorData> {
    let uris = subscription
        .accepted()
        .resource_subscriptions
        .clone()
        .unwrap_or_default();
    let caller = &subscription.request_context().extensions;
    let mut feeds = Vec::with_capacity(uris.len());
    for uri in uris {
        let changes = open(backend, caller, &uri).await?;
        feeds.push((uri, changes));
    }
    let mut followers = JoinSet::new();
    for (uri, mut changes) in feeds {
        let sink = subscription.sink().clone();
        followers.spawn(async move {
            // The first report covers what changed while the feed was being opened.
            while sink.notify_resource_updated(uri.as_str()).await.is_ok() {
                if changes.changed().await.is_none() {
                    break;
                }
            }
        });
    }
    loop {
        tokio::select! {
            () = subscription.cancelled() => return Ok(()),
            joined = followers.join_next() => if joined.is_none() {
                return Ok(());
            },
        }
    }
}

/// The older revisions' subscriptions of one connection that stays open (`recap mcp`), by URI.
/// Dropping it (the connection ended) stops them all.
#[derive(Debug, Default)]
pub struct Sessions {
    by_uri: Mutex<HashMap<String, Following>>,
}

/// A task that sends a resource's updates; stopped when dropped.
#[derive(Debug)]
struct Following(JoinHandle<()>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Sessions {
    /// `resources/subscribe`: opens the feed of `uri`'s stream before it answers (so every
    /// change after the answer is reported), then sends `updated` on the connection for each
    /// change until unsubscribed. Subscribing again to the same URI replaces the subscription.
    pub async fn subscribe(
        &self,
        backend: &Arc<dyn Backend>,
        uri: String,
        context: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let mut changes = open(backend, &context.extensions, &uri).await?;
        let peer = context.peer.clone();
        let notified = uri.clone();
        let task = tokio::spawn(async move {
            while changes.changed().await.is_some() {
                let update = ResourceUpdatedNotificationParam::new(notified.as_str());
                if peer.notify_resource_updated(update).await.is_err() {
                    break;
                }
            }
        });
        self.lock().insert(uri, Following(task));
        Ok(())
    }

    /// `resources/unsubscribe`: no more updates for `uri` (nothing happens if there was no
    /// subscription to it).
    pub fn unsubscribe(&self, uri: &str) {
        self.lock().remove(uri);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Following>> {
        // The map stays whole whatever a panicking holder did: inserts and removes only.
        self.by_uri.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the stateless HTTP route says to `resources/subscribe` and `resources/unsubscribe`.
pub const NO_SESSION: &str = "resources/subscribe needs a connection that stays open, and recap's /mcp route is stateless (no sessions, so it can sit behind a load balancer); subscribe with subscriptions/listen (protocol 2026-07-28), or run `recap mcp --server URL` (stdio), or follow GET /v1/streams/{s}/subscribe";

/// The feed of `uri`'s stream, opened.
async fn open(
    backend: &Arc<dyn Backend>,
    caller: &rmcp::model::Extensions,
    uri: &str,
) -> Result<Box<dyn Changes>, ErrorData> {
    let stream = stream_of(uri).ok_or_else(|| {
        ErrorData::invalid_params(
            format!("no resource {uri:?} to subscribe to; recap serves {CONTEXT_TEMPLATE}"),
            None,
        )
    })?;
    backend
        .follow(caller, stream)
        .await
        .map_err(|error| ErrorData::invalid_params(format!("cannot follow {uri}: {error}"), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_context_uris_are_honoured() {
        let requested = SubscriptionFilter::builder()
            .tools_list_changed()
            .resource_subscriptions(["recap://streams/a/context", "file:///etc/passwd"])
            .build();
        let accepted = accepted(&requested);
        assert_eq!(
            accepted.resource_subscriptions.as_deref(),
            Some(&["recap://streams/a/context".to_owned()][..])
        );
        assert_eq!(accepted.tools_list_changed, None);
    }
}
