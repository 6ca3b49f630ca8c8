//! Routing: matches a request against the route table ([`super::table`]), checks its key,
//! stream name and scope, and hands it to its handler.
//!
//! Order of checks for every request: route (404/405), key (401), stream name (400), scope and
//! prefix (403), then the handler. Unknown routes and methods are answered before the key is
//! checked: they reveal nothing about the data.
//!
//! Matching is on the critical path of every context fetch: a request is matched against the
//! compiled templates by comparing segments in place, without allocating.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;

use crate::event::StreamName;
use crate::store::Unhealthy;

use super::App;
use super::auth::ApiKey;
use super::body;
use super::sse::{self, Dialect};
use super::table::{Access, Endpoint, Label, Reply, Segment, TABLE, style_of};
use super::wire::{self, ApiError, Body, ErrorCode, ErrorStyle};
use super::{anomalies, context, events, mcp, notes, openapi, openintent, streams, ui};

/// A matched route: the endpoint and its path parameters (not yet validated).
struct Matched<'a> {
    endpoint: Endpoint,
    stream: Option<&'a str>,
    /// The other parameter: a note id, or the web view's asset file.
    id: Option<&'a str>,
}

/// Why a request matched no route.
#[derive(Debug)]
struct Unmatched {
    /// The path's routes when only the method was wrong (the request counts under them).
    path: Option<usize>,
    error: ApiError,
}

/// Most segments a path may have: more than any route's (a deeper path is a 404).
const MAX_SEGMENTS: usize = 8;

/// A path's parameters: the stream name, and the other parameter.
type Parameters<'a> = (Option<&'a str>, Option<&'a str>);

/// Matches a request's segments against one template of the same depth.
fn match_segments<'a>(segments: &[Segment], parts: &[&'a str]) -> Option<Parameters<'a>> {
    let (mut stream, mut id) = (None, None);
    for (segment, part) in segments.iter().zip(parts) {
        match segment {
            Segment::Literal(literal) if part == literal => {}
            Segment::Literal(_) => return None,
            Segment::Stream => stream = Some(*part),
            Segment::Param => id = Some(*part),
        }
    }
    Some((stream, id))
}

/// Matches a path and method. The path is split once, into an array on the stack, and compared
/// with the templates of its depth: about 120 to 140 ns for the stream routes, measured on a
/// standalone copy in a release build, where the hand-written `match` on a collected `Vec` it
/// replaced took 140 to 290 ns.
fn resolve<'a>(method: &Method, path: &'a str) -> Result<Matched<'a>, Unmatched> {
    let not_found = || Unmatched {
        path: None,
        error: not_found(path),
    };
    let mut parts = [""; MAX_SEGMENTS];
    let mut depth = 0;
    for part in path.strip_prefix('/').ok_or_else(not_found)?.split('/') {
        // `/v1/streams/` and `//` name no route (an empty stream name is not a bad stream name).
        if part.is_empty() || depth == MAX_SEGMENTS {
            return Err(not_found());
        }
        parts[depth] = part;
        depth += 1;
    }
    let parts = &parts[..depth];
    let (index, entry, (stream, id)) = TABLE
        .paths
        .iter()
        .enumerate()
        .filter(|(_, entry)| entry.segments.len() == depth)
        .find_map(|(index, entry)| {
            match_segments(&entry.segments, parts).map(|parameters| (index, entry, parameters))
        })
        .ok_or_else(not_found)?;
    // HEAD is GET without the body (hyper leaves the body out), except on feeds that never end.
    let serves = |endpoint: &&Endpoint| {
        let route = endpoint.route();
        route.method == method
            || (method == Method::HEAD && route.method == Method::GET && route.reply == Reply::Once)
    };
    let endpoint = *entry
        .endpoints
        .iter()
        .find(serves)
        .ok_or_else(|| Unmatched {
            path: Some(index),
            error: ApiError::method_not_allowed(method, &entry.allow),
        })?;
    Ok(Matched {
        endpoint,
        stream,
        id,
    })
}

/// The 404 for a path no route has, with a hint at where the routes are.
fn not_found(path: &str) -> ApiError {
    let hint = match style_of(path) {
        ErrorStyle::OpenIntent => format!(
            "recap serves these OpenIntent routes: {} (docs/openintent.md)",
            TABLE.openintent_hint
        ),
        ErrorStyle::Recap => {
            "the API lives under /v1/streams (GET /openapi.json describes every route)".to_owned()
        }
    };
    ApiError::new(ErrorCode::NotFound, format!("no route for {path}; {hint}"))
}

/// Handles one request, setting `label` to what it counts under (for logs and metrics) as soon
/// as it is routed. Errors become responses here, through [`ApiError::into_response_as`].
pub(crate) async fn handle(
    app: &Arc<App>,
    request: Request<Incoming>,
    label: &mut Label,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let style = style_of(path);
    let admitted = match resolve(&parts.method, path) {
        Ok(matched) => {
            *label = Label::Route(matched.endpoint);
            admit(app, &matched, &parts).map(|(key, stream)| (matched, key, stream))
        }
        Err(unmatched) => {
            *label = unmatched.path.map_or(Label::Unmatched, Label::WrongMethod);
            Err(unmatched.error)
        }
    };
    let (matched, key, stream) = match admitted {
        Ok(admitted) => admitted,
        Err(error) => {
            // Refused before its body was read: read it anyway, so that the connection can
            // carry the client's next request.
            body::discard(body, &parts.headers, &app.options).await;
            return error.into_response_as(style);
        }
    };
    dispatch(app, matched, key, stream, &parts, body)
        .await
        .unwrap_or_else(|error| error.into_response_as(style))
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
            // Clients may escape `:` (`%3A`); a malformed escape is left as typed, and refused
            // as a name.
            let decoded = percent_decode_str(raw)
                .decode_utf8()
                .map_or_else(|_| raw.to_owned(), |decoded| decoded.into_owned());
            StreamName::new(&decoded).map_err(|error| match style_of(endpoint.route().path) {
                ErrorStyle::OpenIntent => openintent::invalid_intent_id(&decoded),
                ErrorStyle::Recap => ApiError::from(error),
            })
        })
        .transpose()?;
    if let (Some(key), Access::Scope(scope)) = (key, endpoint.route().access) {
        key.authorize(scope, stream.as_ref())?;
    }
    Ok((key, stream))
}

async fn dispatch(
    app: &Arc<App>,
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
        Endpoint::Healthz => Ok(match app.store.unhealthy().await {
            None => wire::json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            // Degraded: reads are still served; writes fail until the file (or the database)
            // takes them again.
            Some(Unhealthy { status, cause }) => wire::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": status, "cause": cause}),
            ),
        }),
        Endpoint::OpenApi => Ok(openapi::response()),
        Endpoint::Metrics => Ok(wire::text(
            StatusCode::OK,
            app.metrics.render(&app.store).await,
        )),
        Endpoint::ListStreams => streams::list(app, key, query).await,
        Endpoint::GetStream => streams::get(app, stream()?, headers, query).await,
        Endpoint::DeleteStream => streams::delete(app, stream()?).await,
        Endpoint::PutRetention => streams::set_retention(app, stream()?, headers, body).await,
        Endpoint::PutAnomalies => anomalies::put(app, stream()?, headers, body).await,
        Endpoint::PostEvents => events::post(app, stream()?, headers, body).await,
        Endpoint::GetEvents => events::history(app, stream()?, headers, query).await,
        Endpoint::PostRecords => events::import(app, stream()?, headers, body).await,
        Endpoint::GetContext => context::get(app, stream()?, headers, query).await,
        Endpoint::PostNote => notes::post(app, stream()?, headers, body).await,
        Endpoint::GetNotes => notes::list(app, stream()?, headers, query).await,
        Endpoint::DeleteNote => notes::delete(app, stream()?, matched.id.unwrap_or("")).await,
        Endpoint::Subscribe => sse::subscribe(app, stream()?, headers, query, Dialect::Recap).await,
        Endpoint::CreateIntent => openintent::create_intent(app, key, headers, body).await,
        Endpoint::GetIntent => openintent::get_intent(app, stream()?, headers, query).await,
        Endpoint::PostIntentEvent => openintent::post_event(app, stream()?, headers, body).await,
        Endpoint::GetIntentEvents => openintent::list_events(app, stream()?, headers, query).await,
        // A reconnecting OpenIntent client sends `Last-Event-ID` by itself.
        Endpoint::SubscribeIntent | Endpoint::SubscribeIntentAlias => {
            sse::subscribe(app, stream()?, headers, query, Dialect::OpenIntent).await
        }
        Endpoint::Ui => Ok(ui::page(ui::Page::Streams, app.options.keys.is_some())),
        // The name was validated above: a page for a name no stream can have is a 400.
        Endpoint::UiStream => Ok(ui::page(ui::Page::Stream, app.options.keys.is_some())),
        Endpoint::UiAsset => ui::asset(matched.id.unwrap_or("")),
        Endpoint::McpPost | Endpoint::McpGet | Endpoint::McpDelete => {
            mcp::handle(app, key, parts, body).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::table::{OPENINTENT_PREFIX, ROUTES};

    #[test]
    fn every_method_and_template_is_one_route() {
        for (index, route) in ROUTES.iter().enumerate() {
            let twin = ROUTES[..index]
                .iter()
                .find(|other| other.method == route.method && other.path == route.path);
            assert!(twin.is_none(), "{route:?} repeats {twin:?}");
            let path = route
                .path
                .replace("{s}", "a:b")
                .replace("{id}", "7")
                .replace("{file}", "x.js");
            let matched =
                resolve(&route.method, &path).unwrap_or_else(|error| panic!("{path}: {error:?}"));
            assert_eq!(matched.endpoint, route.endpoint, "{path}");
        }
    }

    fn refused(method: Method, path: &str) -> ApiError {
        match resolve(&method, path) {
            Ok(matched) => panic!("{method} {path} matched {:?}", matched.endpoint),
            Err(unmatched) => unmatched.error,
        }
    }

    #[test]
    fn resolves_routes_methods_and_allow() {
        let head = resolve(&Method::HEAD, "/v1/streams/s/context").unwrap();
        assert_eq!(head.endpoint, Endpoint::GetContext);
        for feed in [
            "/v1/streams/s/subscribe",
            "/api/v1/subscribe/intents/i-1",
            "/mcp",
        ] {
            let error = refused(Method::HEAD, feed);
            assert_eq!(error.code, ErrorCode::MethodNotAllowed, "{feed}");
        }
        let matched = resolve(&Method::POST, "/v1/streams/a:b/events").unwrap();
        assert_eq!(
            (matched.endpoint, matched.stream),
            (Endpoint::PostEvents, Some("a:b"))
        );
        let matched = resolve(&Method::DELETE, "/v1/streams/s/notes/3").unwrap();
        assert_eq!(
            (matched.endpoint, matched.stream, matched.id),
            (Endpoint::DeleteNote, Some("s"), Some("3"))
        );
        let matched = resolve(&Method::GET, "/ui/assets/stream.js").unwrap();
        assert_eq!(
            (matched.endpoint, matched.stream, matched.id),
            (Endpoint::UiAsset, None, Some("stream.js"))
        );
        let matched = resolve(&Method::HEAD, "/ui/streams/a:b").unwrap();
        assert_eq!(
            (matched.endpoint, matched.stream),
            (Endpoint::UiStream, Some("a:b"))
        );
        assert_eq!(refused(Method::POST, "/ui").allow, Some("GET"));
        for path in [
            "/v1/streams/",
            "/v1/streams//events",
            "/healthz/",
            "/v1/streams/s/notes/1/2/3/4/5/6",
            "",
            "/",
            "/v1/streams/s/events/",
        ] {
            assert_eq!(
                refused(Method::GET, path).code,
                ErrorCode::NotFound,
                "{path:?}"
            );
        }
        let error = refused(Method::PUT, "/v1/streams/s/events");
        assert_eq!(
            (error.code, error.allow),
            (ErrorCode::MethodNotAllowed, Some("GET, POST"))
        );
        assert_eq!(
            refused(Method::PATCH, "/mcp").allow,
            Some("GET, POST, DELETE")
        );
        for (path, endpoint) in [
            ("/api/v1/intents/i-1/subscribe", Endpoint::SubscribeIntent),
            (
                "/api/v1/subscribe/intents/i-1",
                Endpoint::SubscribeIntentAlias,
            ),
        ] {
            let matched = resolve(&Method::GET, path).unwrap();
            assert_eq!((matched.endpoint, matched.stream), (endpoint, Some("i-1")));
        }
        let matched = resolve(&Method::POST, "/api/v1/intents/i-1/events").unwrap();
        assert_eq!(matched.endpoint, Endpoint::PostIntentEvent);
        assert_eq!(refused(Method::GET, "/api/v1/intents").allow, Some("POST"));
        assert_eq!(refused(Method::GET, "/v2/x").code, ErrorCode::NotFound);
    }

    #[test]
    fn a_404_under_the_openintent_prefix_lists_its_routes() {
        let message = refused(Method::GET, "/api/v2/intents").message;
        for route in ROUTES
            .iter()
            .filter(|route| route.path.starts_with(OPENINTENT_PREFIX))
        {
            assert!(
                message.contains(&format!("{} {}", route.method, route.path)),
                "{message}"
            );
        }
    }
}
