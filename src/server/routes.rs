//! The route table: one `match` from (method, path) to a handler, with the scope each needs.
//!
//! Order of checks for every request: route (404/405), key (401), stream name (400), scope and
//! prefix (403), then the handler. Unknown routes and methods are answered before the key is
//! checked: they reveal nothing about the data.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::event::StreamName;

use super::App;
use super::auth::{ApiKey, Scope};
use super::body::{self, Body};
use super::sse::{self, Dialect};
use super::wire::{self, ApiError, ErrorStyle};
use super::{anomalies, context, events, mcp, notes, openintent, streams, ui};

/// Every endpoint, for metrics labels and scope checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Endpoint {
    Healthz,
    Metrics,
    ListStreams,
    GetStream,
    DeleteStream,
    PutRetention,
    /// `PUT /v1/streams/{s}/anomalies`: the stream's anomaly detection settings.
    PutAnomalies,
    PostEvents,
    GetEvents,
    PostRecords,
    GetContext,
    PostNote,
    GetNotes,
    DeleteNote,
    Subscribe,
    /// `POST /api/v1/intents` (OpenIntent).
    CreateIntent,
    /// `GET /api/v1/intents/{id}` (OpenIntent).
    GetIntent,
    /// `POST /api/v1/intents/{id}/events` (OpenIntent).
    PostIntentEvent,
    /// `GET /api/v1/intents/{id}/events` (OpenIntent).
    GetIntentEvents,
    /// `GET /api/v1/intents/{id}/subscribe` or `/api/v1/subscribe/intents/{id}` (OpenIntent).
    SubscribeIntent,
    /// `GET /ui`: the web view's list of streams (a page without data).
    Ui,
    /// `GET /ui/streams/{s}`: the web view of one stream (a page without data).
    UiStream,
    /// `GET /ui/assets/{file}`: the web view's scripts, style sheet and icon.
    UiAsset,
    /// `POST /mcp` (and `GET`, `DELETE`): MCP over Streamable HTTP. Any valid key may call;
    /// each tool checks its own scope and the stream's prefix.
    Mcp,
    /// No route matched (404) or the method did not (405).
    Unmatched,
}

impl Endpoint {
    /// Every endpoint, in declaration order (`ALL[e as usize] == e`).
    pub const ALL: [Endpoint; 25] = [
        Endpoint::Healthz,
        Endpoint::Metrics,
        Endpoint::ListStreams,
        Endpoint::GetStream,
        Endpoint::DeleteStream,
        Endpoint::PutRetention,
        Endpoint::PutAnomalies,
        Endpoint::PostEvents,
        Endpoint::GetEvents,
        Endpoint::PostRecords,
        Endpoint::GetContext,
        Endpoint::PostNote,
        Endpoint::GetNotes,
        Endpoint::DeleteNote,
        Endpoint::Subscribe,
        Endpoint::CreateIntent,
        Endpoint::GetIntent,
        Endpoint::PostIntentEvent,
        Endpoint::GetIntentEvents,
        Endpoint::SubscribeIntent,
        Endpoint::Ui,
        Endpoint::UiStream,
        Endpoint::UiAsset,
        Endpoint::Mcp,
        Endpoint::Unmatched,
    ];

    /// The method, for metrics labels.
    pub fn method(self) -> &'static str {
        match self {
            Endpoint::DeleteStream | Endpoint::DeleteNote => "DELETE",
            Endpoint::PutRetention | Endpoint::PutAnomalies => "PUT",
            Endpoint::PostEvents
            | Endpoint::PostRecords
            | Endpoint::PostNote
            | Endpoint::CreateIntent
            | Endpoint::PostIntentEvent => "POST",
            Endpoint::Mcp | Endpoint::Unmatched => "any",
            _ => "GET",
        }
    }

    /// The path template, for metrics labels and logs (never a stream name).
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::Healthz => "/healthz",
            Endpoint::Metrics => "/metrics",
            Endpoint::ListStreams => "/v1/streams",
            Endpoint::GetStream | Endpoint::DeleteStream => "/v1/streams/{s}",
            Endpoint::PutRetention => "/v1/streams/{s}/retention",
            Endpoint::PutAnomalies => "/v1/streams/{s}/anomalies",
            Endpoint::PostEvents | Endpoint::GetEvents => "/v1/streams/{s}/events",
            Endpoint::PostRecords => "/v1/streams/{s}/records",
            Endpoint::GetContext => "/v1/streams/{s}/context",
            Endpoint::PostNote | Endpoint::GetNotes => "/v1/streams/{s}/notes",
            Endpoint::DeleteNote => "/v1/streams/{s}/notes/{id}",
            Endpoint::Subscribe => "/v1/streams/{s}/subscribe",
            Endpoint::CreateIntent => "/api/v1/intents",
            Endpoint::GetIntent => "/api/v1/intents/{id}",
            Endpoint::PostIntentEvent | Endpoint::GetIntentEvents => "/api/v1/intents/{id}/events",
            Endpoint::SubscribeIntent => "/api/v1/intents/{id}/subscribe",
            Endpoint::Ui => "/ui",
            Endpoint::UiStream => "/ui/streams/{s}",
            Endpoint::UiAsset => "/ui/assets/{file}",
            Endpoint::Mcp => "/mcp",
            Endpoint::Unmatched => "unmatched",
        }
    }

    /// Whether a server with keys asks for one: every endpoint with a scope, and `/mcp`, whose
    /// tools check their own scopes.
    fn needs_key(self) -> bool {
        self.scope().is_some() || self == Endpoint::Mcp
    }

    /// The scope a key needs; `None` for endpoints open to any caller (or, for `/mcp`, that
    /// check their own). The web view's pages and
    /// assets hold no data (the page asks for a key and sends it with its own API requests).
    fn scope(self) -> Option<Scope> {
        match self {
            Endpoint::Healthz
            | Endpoint::Ui
            | Endpoint::UiStream
            | Endpoint::UiAsset
            | Endpoint::Mcp
            | Endpoint::Unmatched => None,
            Endpoint::Metrics
            | Endpoint::ListStreams
            | Endpoint::GetStream
            | Endpoint::GetEvents
            | Endpoint::GetContext
            | Endpoint::GetNotes
            | Endpoint::Subscribe
            | Endpoint::GetIntent
            | Endpoint::GetIntentEvents
            | Endpoint::SubscribeIntent => Some(Scope::Read),
            Endpoint::PostEvents
            | Endpoint::PostRecords
            | Endpoint::PostNote
            | Endpoint::DeleteNote
            | Endpoint::CreateIntent
            | Endpoint::PostIntentEvent => Some(Scope::Write),
            Endpoint::DeleteStream | Endpoint::PutRetention | Endpoint::PutAnomalies => {
                Some(Scope::Admin)
            }
        }
    }
}

/// A matched route: the endpoint and its path parameters (not yet validated).
struct Matched<'a> {
    endpoint: Endpoint,
    stream: Option<&'a str>,
    /// The second parameter: a note id, or the web view's asset file.
    id: Option<&'a str>,
}

/// Matches a path and method.
fn resolve<'a>(method: &Method, path: &'a str) -> Result<Matched<'a>, ApiError> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    // `/v1/streams/` and `//` name no route (an empty stream name is not a bad stream name).
    if segments.iter().any(|segment| segment.is_empty()) {
        return Err(ApiError::not_found(path));
    }
    let (choices, allow, stream, id_or_file): (&[(Method, Endpoint)], &'static str, _, _) =
        match segments.as_slice() {
            ["healthz"] => (&[(Method::GET, Endpoint::Healthz)], "GET", None, None),
            ["metrics"] => (&[(Method::GET, Endpoint::Metrics)], "GET", None, None),
            ["v1", "streams"] => (&[(Method::GET, Endpoint::ListStreams)], "GET", None, None),
            ["v1", "streams", s] => (
                &[
                    (Method::GET, Endpoint::GetStream),
                    (Method::DELETE, Endpoint::DeleteStream),
                ],
                "GET, DELETE",
                Some(*s),
                None,
            ),
            ["v1", "streams", s, "events"] => (
                &[
                    (Method::POST, Endpoint::PostEvents),
                    (Method::GET, Endpoint::GetEvents),
                ],
                "GET, POST",
                Some(*s),
                None,
            ),
            ["v1", "streams", s, "records"] => (
                &[(Method::POST, Endpoint::PostRecords)],
                "POST",
                Some(*s),
                None,
            ),
            ["v1", "streams", s, "context"] => (
                &[(Method::GET, Endpoint::GetContext)],
                "GET",
                Some(*s),
                None,
            ),
            ["v1", "streams", s, "notes"] => (
                &[
                    (Method::POST, Endpoint::PostNote),
                    (Method::GET, Endpoint::GetNotes),
                ],
                "GET, POST",
                Some(*s),
                None,
            ),
            ["v1", "streams", s, "notes", id] => (
                &[(Method::DELETE, Endpoint::DeleteNote)],
                "DELETE",
                Some(*s),
                Some(*id),
            ),
            ["v1", "streams", s, "subscribe"] => {
                (&[(Method::GET, Endpoint::Subscribe)], "GET", Some(*s), None)
            }
            ["v1", "streams", s, "retention"] => (
                &[(Method::PUT, Endpoint::PutRetention)],
                "PUT",
                Some(*s),
                None,
            ),
            ["v1", "streams", s, "anomalies"] => (
                &[(Method::PUT, Endpoint::PutAnomalies)],
                "PUT",
                Some(*s),
                None,
            ),
            // MCP's Streamable HTTP: POST carries the messages; GET (a server-initiated feed)
            // and DELETE (end a session) are answered by the SDK, which has no sessions here.
            ["mcp"] => (
                &[
                    (Method::POST, Endpoint::Mcp),
                    (Method::GET, Endpoint::Mcp),
                    (Method::DELETE, Endpoint::Mcp),
                ],
                "GET, POST, DELETE",
                None,
                None,
            ),
            ["ui"] => (&[(Method::GET, Endpoint::Ui)], "GET", None, None),
            ["ui", "streams", s] => (&[(Method::GET, Endpoint::UiStream)], "GET", Some(*s), None),
            ["ui", "assets", file] => (
                &[(Method::GET, Endpoint::UiAsset)],
                "GET",
                None,
                Some(*file),
            ),
            // OpenIntent (docs/openintent.md): an intent id is a stream name.
            ["api", "v1", "intents"] => (
                &[(Method::POST, Endpoint::CreateIntent)],
                "POST",
                None,
                None,
            ),
            ["api", "v1", "intents", id] => (
                &[(Method::GET, Endpoint::GetIntent)],
                "GET",
                Some(*id),
                None,
            ),
            ["api", "v1", "intents", id, "events"] => (
                &[
                    (Method::POST, Endpoint::PostIntentEvent),
                    (Method::GET, Endpoint::GetIntentEvents),
                ],
                "GET, POST",
                Some(*id),
                None,
            ),
            ["api", "v1", "intents", id, "subscribe"]
            | ["api", "v1", "subscribe", "intents", id] => (
                &[(Method::GET, Endpoint::SubscribeIntent)],
                "GET",
                Some(*id),
                None,
            ),
            _ => return Err(ApiError::not_found(path)),
        };
    // HEAD is GET without the body (hyper leaves the body out), except on feeds that never end.
    let serves = |(m, endpoint): &&(Method, Endpoint)| {
        m == method
            || (method == Method::HEAD
                && m == Method::GET
                && !matches!(
                    endpoint,
                    Endpoint::Subscribe | Endpoint::SubscribeIntent | Endpoint::Mcp
                ))
    };
    choices
        .iter()
        .find(serves)
        .map(|(_, endpoint)| Matched {
            endpoint: *endpoint,
            stream,
            id: id_or_file,
        })
        .ok_or_else(|| ApiError::method_not_allowed(method, allow))
}

/// Handles one request; returns the endpoint (for logs and metrics) and the response. Errors
/// become responses here, through [`ApiError::into_response`].
pub async fn handle(
    app: &std::sync::Arc<App>,
    request: Request<Incoming>,
) -> (Endpoint, Response<Body>) {
    let (parts, body) = request.into_parts();
    let style = ErrorStyle::for_path(parts.uri.path());
    let admitted = resolve(&parts.method, parts.uri.path())
        .map_err(|error| (Endpoint::Unmatched, error))
        .and_then(|matched| {
            let endpoint = matched.endpoint;
            let (key, stream) = admit(app, &matched, &parts).map_err(|error| (endpoint, error))?;
            Ok((matched, key, stream))
        });
    let (matched, key, stream) = match admitted {
        Ok(admitted) => admitted,
        Err((endpoint, error)) => {
            // Refused before its body was read: read it anyway, so that the connection can
            // carry the client's next request.
            body::discard(body, &parts.headers, &app.options).await;
            return (endpoint, error.into_response_as(style));
        }
    };
    let endpoint = matched.endpoint;
    let response = dispatch(app, matched, key, stream, &parts, body)
        .await
        .unwrap_or_else(|error| error.into_response_as(style));
    (endpoint, response)
}

/// The checks before a handler: the key (401), the stream name (400), scope and prefix (403).
fn admit<'a>(
    app: &'a App,
    matched: &Matched<'_>,
    parts: &http::request::Parts,
) -> Result<(Option<&'a ApiKey>, Option<StreamName>), ApiError> {
    let endpoint = matched.endpoint;
    let key = match &app.options.keys {
        Some(keys) if endpoint.needs_key() => Some(keys.authenticate(&parts.headers)?),
        _ => None,
    };
    if let Some(key) = key {
        // The request log names the key (its label, never the key itself).
        tracing::Span::current().record("key", key.name.as_str());
    }
    let stream = matched
        .stream
        .map(|raw| {
            let decoded = percent_decode(raw).unwrap_or_else(|| raw.to_owned());
            StreamName::new(&decoded).map_err(|error| match endpoint.route().starts_with("/api/") {
                true => openintent::invalid_intent_id(&decoded),
                false => ApiError::from(error),
            })
        })
        .transpose()?;
    if let (Some(key), Some(scope)) = (key, endpoint.scope()) {
        key.authorize(scope, stream.as_ref())?;
    }
    Ok((key, stream))
}

async fn dispatch(
    app: &std::sync::Arc<App>,
    matched: Matched<'_>,
    key: Option<&ApiKey>,
    stream: Option<StreamName>,
    parts: &http::request::Parts,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let endpoint = matched.endpoint;
    let query = parts.uri.query();
    let headers = &parts.headers;
    // Every route with a `{s}` has a stream; the others have none.
    let stream = || {
        stream
            .clone()
            .ok_or_else(|| ApiError::internal("route without a stream"))
    };
    match endpoint {
        Endpoint::Healthz => Ok(match (app.store.failure(), app.store.degraded()) {
            (None, None) => wire::json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            (Some(cause), _) => wire::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "failed", "cause": cause}),
            ),
            // Reads are still served; writes fail until the file takes them again.
            (None, Some(cause)) => wire::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "degraded", "cause": cause}),
            ),
        }),
        Endpoint::Metrics => Ok(wire::text(StatusCode::OK, app.metrics.render(&app.store))),
        Endpoint::ListStreams => streams::list(app, key, query),
        Endpoint::GetStream => streams::get(app, stream()?),
        Endpoint::DeleteStream => streams::delete(app, stream()?).await,
        Endpoint::PutRetention => streams::set_retention(app, stream()?, headers, body).await,
        Endpoint::PutAnomalies => anomalies::put(app, stream()?, headers, body).await,
        Endpoint::PostEvents => events::post(app, stream()?, headers, body).await,
        Endpoint::GetEvents => events::history(app, stream()?, query).await,
        Endpoint::PostRecords => events::import(app, stream()?, headers, body).await,
        Endpoint::GetContext => context::get(app, stream()?, query).await,
        Endpoint::PostNote => notes::post(app, stream()?, headers, body).await,
        Endpoint::GetNotes => notes::list(app, stream()?, query),
        Endpoint::DeleteNote => notes::delete(app, stream()?, matched.id.unwrap_or("")).await,
        Endpoint::Subscribe => sse::subscribe(app, stream()?, headers, query, Dialect::Recap),
        Endpoint::CreateIntent => openintent::create_intent(app, key, headers, body).await,
        Endpoint::GetIntent => openintent::get_intent(app, stream()?, query).await,
        Endpoint::PostIntentEvent => openintent::post_event(app, stream()?, headers, body).await,
        Endpoint::GetIntentEvents => openintent::list_events(app, stream()?, query).await,
        // A reconnecting OpenIntent client sends `Last-Event-ID` by itself.
        Endpoint::SubscribeIntent => {
            sse::subscribe(app, stream()?, headers, query, Dialect::OpenIntent)
        }
        Endpoint::Ui => Ok(ui::page(ui::Page::Streams, app.options.keys.is_some())),
        // The name was validated above: a page for a name no stream can have is a 400.
        Endpoint::UiStream => Ok(ui::page(ui::Page::Stream, app.options.keys.is_some())),
        Endpoint::UiAsset => ui::asset(matched.id.unwrap_or("")),
        Endpoint::Mcp => mcp::handle(app, key, parts, body).await,
        Endpoint::Unmatched => Err(ApiError::not_found(parts.uri.path())),
    }
}

/// Decodes `%XX` escapes in a path segment (clients may escape `:`); `None` if malformed.
fn percent_decode(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_owned());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_index_their_table() {
        for (index, endpoint) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(*endpoint as usize, index);
        }
    }

    #[test]
    fn resolves_routes_methods_and_allow() {
        let head = resolve(&Method::HEAD, "/v1/streams/s/context").unwrap();
        assert_eq!(head.endpoint, Endpoint::GetContext);
        for feed in ["/v1/streams/s/subscribe", "/api/v1/subscribe/intents/i-1"] {
            let error = resolve(&Method::HEAD, feed).err().unwrap();
            assert_eq!(error.status, StatusCode::METHOD_NOT_ALLOWED, "{feed}");
        }
        let matched = resolve(&Method::POST, "/v1/streams/a:b/events").unwrap();
        assert_eq!(
            (matched.endpoint, matched.stream),
            (Endpoint::PostEvents, Some("a:b"))
        );
        let matched = resolve(&Method::DELETE, "/v1/streams/s/notes/3").unwrap();
        assert_eq!(
            (matched.endpoint, matched.id),
            (Endpoint::DeleteNote, Some("3"))
        );
        let matched = resolve(&Method::GET, "/ui/assets/stream.js").unwrap();
        assert_eq!(
            (matched.endpoint, matched.id),
            (Endpoint::UiAsset, Some("stream.js"))
        );
        let matched = resolve(&Method::HEAD, "/ui/streams/a:b").unwrap();
        assert_eq!(
            (matched.endpoint, matched.stream),
            (Endpoint::UiStream, Some("a:b"))
        );
        assert_eq!(
            resolve(&Method::POST, "/ui").err().unwrap().allow,
            Some("GET")
        );
        for path in ["/v1/streams/", "/v1/streams//events", "/healthz/"] {
            let error = resolve(&Method::GET, path).err().unwrap();
            assert_eq!(error.status, StatusCode::NOT_FOUND, "{path}");
        }
        let error = resolve(&Method::PUT, "/v1/streams/s/events").err().unwrap();
        assert_eq!(
            (error.status, error.allow),
            (StatusCode::METHOD_NOT_ALLOWED, Some("GET, POST"))
        );
        for path in [
            "/api/v1/intents/i-1/subscribe",
            "/api/v1/subscribe/intents/i-1",
        ] {
            let matched = resolve(&Method::GET, path).unwrap();
            assert_eq!(
                (matched.endpoint, matched.stream),
                (Endpoint::SubscribeIntent, Some("i-1"))
            );
        }
        let matched = resolve(&Method::POST, "/api/v1/intents/i-1/events").unwrap();
        assert_eq!(matched.endpoint, Endpoint::PostIntentEvent);
        assert_eq!(
            resolve(&Method::GET, "/api/v1/intents")
                .err()
                .unwrap()
                .allow,
            Some("POST")
        );
        assert_eq!(
            resolve(&Method::GET, "/v2/x").err().unwrap().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            resolve(&Method::GET, "/v1/streams/s/events/")
                .err()
                .unwrap()
                .status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn decodes_escaped_segments() {
        assert_eq!(percent_decode("a%3Ab").as_deref(), Some("a:b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%zz"), None);
    }
}
