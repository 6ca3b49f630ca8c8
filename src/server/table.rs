//! The route table: every route's method, path template, scope and summary in one list
//! ([`ROUTES`], declared with the [`Endpoint`] enum by one macro). The matcher, the `Allow`
//! header of a 405, the error style, the metrics labels, the scope checks, the 404 hint and
//! `GET /openapi.json` all come from it.
//!
//! The table is compiled once ([`TABLE`]) into split templates grouped by path, for matching
//! without allocating and for the `Allow` header of each path.

use std::sync::LazyLock;

use http::Method;

use super::auth::Scope;
use super::wire::ErrorStyle;

/// Who may call a route on a server with keys (without keys, anyone on loopback may).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone, with or without a key: the route holds no data (liveness, the web view's pages
    /// and assets, the API description).
    Open,
    /// Any valid key; the handler checks scopes itself (the tools of `/mcp`).
    AnyKey,
    /// A key with this scope (admin has every scope) whose prefix covers the route's stream.
    Scope(Scope),
}

/// How a route answers: once, or with a feed that does not end (not served for HEAD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// One response.
    Once,
    /// A stream of server-sent events.
    Feed,
}

/// One route: a method on a path template.
#[derive(Debug)]
pub(crate) struct Route {
    /// What handles it.
    pub(crate) endpoint: Endpoint,
    /// The method.
    pub(crate) method: Method,
    /// The path template: `{s}` is a stream name (so is `{id}` on the OpenIntent routes, whose
    /// intent ids are stream names); other `{name}`s are plain parameters.
    pub(crate) path: &'static str,
    /// Who may call it.
    pub(crate) access: Access,
    /// Once or a feed.
    pub(crate) reply: Reply,
    /// One line on what it does (the variant's doc comment).
    pub(crate) summary: &'static str,
}

/// Declares [`Endpoint`] and [`ROUTES`] together, in the same order, from one list.
macro_rules! routes {
    ($($(#[doc = $doc:literal])+ $endpoint:ident => $method:ident $path:literal, $access:expr, $reply:ident;)+) => {
        /// Every route, by what handles it; `ROUTES[endpoint as usize]` is its row.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Endpoint {
            $($(#[doc = $doc])+ $endpoint,)+
        }

        /// The route table, in [`Endpoint`] order.
        pub(crate) static ROUTES: &[Route] = &[$(Route {
            endpoint: Endpoint::$endpoint,
            method: Method::$method,
            path: $path,
            access: $access,
            reply: Reply::$reply,
            summary: concat!($($doc),+),
        },)+];
    };
}

use Access::{AnyKey, Open};
const READ: Access = Access::Scope(Scope::Read);
const WRITE: Access = Access::Scope(Scope::Write);
const ADMIN: Access = Access::Scope(Scope::Admin);

routes! {
    /// Liveness: 200 `{"status": "ok"}`, or 503 naming why writes fail.
    Healthz => GET "/healthz", Open, Once;
    /// This API's description (OpenAPI 3.1).
    OpenApi => GET "/openapi.json", Open, Once;
    /// Prometheus metrics.
    Metrics => GET "/metrics", READ, Once;
    /// The streams the key may see, with stats, by name, in pages.
    ListStreams => GET "/v1/streams", READ, Once;
    /// One stream's stats.
    GetStream => GET "/v1/streams/{s}", READ, Once;
    /// Deletes a stream and everything in it.
    DeleteStream => DELETE "/v1/streams/{s}", ADMIN, Once;
    /// Sets a stream's retention (records past it are removed; their counts stay).
    PutRetention => PUT "/v1/streams/{s}/retention", ADMIN, Once;
    /// Sets what a stream overrides of the server's anomaly detection (thresholds, on or off).
    PutAnomalies => PUT "/v1/streams/{s}/anomalies", ADMIN, Once;
    /// Posts one event, a JSON array of events, or NDJSON; all or nothing; answers once durable.
    PostEvents => POST "/v1/streams/{s}/events", WRITE, Once;
    /// A page of the stream's records, with cursors and filters.
    GetEvents => GET "/v1/streams/{s}/events", READ, Once;
    /// Imports exported records as they were (no collapse).
    PostRecords => POST "/v1/streams/{s}/records", WRITE, Once;
    /// The prompt-ready context window within a token budget.
    GetContext => GET "/v1/streams/{s}/context", READ, Once;
    /// Adds a note (a fact always put first in the context).
    PostNote => POST "/v1/streams/{s}/notes", WRITE, Once;
    /// The stream's live notes, oldest first, in pages.
    GetNotes => GET "/v1/streams/{s}/notes", READ, Once;
    /// Deletes a note.
    DeleteNote => DELETE "/v1/streams/{s}/notes/{id}", WRITE, Once;
    /// The stream's changes as server-sent events, resumable with `Last-Event-ID`.
    Subscribe => GET "/v1/streams/{s}/subscribe", READ, Feed;
    /// OpenIntent: creates an intent (a new stream).
    CreateIntent => POST "/api/v1/intents", WRITE, Once;
    /// OpenIntent: the intent object of a stream.
    GetIntent => GET "/api/v1/intents/{id}", READ, Once;
    /// OpenIntent: logs one event.
    PostIntentEvent => POST "/api/v1/intents/{id}/events", WRITE, Once;
    /// OpenIntent: the intent's events, newest first.
    GetIntentEvents => GET "/api/v1/intents/{id}/events", READ, Once;
    /// OpenIntent: the intent's events as server-sent events.
    SubscribeIntent => GET "/api/v1/intents/{id}/subscribe", READ, Feed;
    /// OpenIntent: the same feed at the path older clients use.
    SubscribeIntentAlias => GET "/api/v1/subscribe/intents/{id}", READ, Feed;
    /// The web view's list of streams (a page without data).
    Ui => GET "/ui", Open, Once;
    /// The web view of one stream (a page without data).
    UiStream => GET "/ui/streams/{s}", Open, Once;
    /// The web view's scripts, style sheet and icon.
    UiAsset => GET "/ui/assets/{file}", Open, Once;
    /// MCP over Streamable HTTP (stateless): JSON-RPC messages; each tool checks its own scope.
    McpPost => POST "/mcp", AnyKey, Once;
    /// MCP's server-initiated feed, which a stateless server does not offer (the SDK answers).
    McpGet => GET "/mcp", AnyKey, Feed;
    /// MCP's end of a session, which a stateless server has none of (the SDK answers).
    McpDelete => DELETE "/mcp", AnyKey, Once;
}

/// Paths under this prefix are the OpenIntent routes: their errors have OpenIntent's shape.
pub(crate) const OPENINTENT_PREFIX: &str = "/api/";

/// The error style of a path, matched or not.
pub(crate) fn style_of(path: &str) -> ErrorStyle {
    if path.starts_with(OPENINTENT_PREFIX) {
        ErrorStyle::OpenIntent
    } else {
        ErrorStyle::Recap
    }
}

impl Endpoint {
    /// This endpoint's row of the table.
    pub(crate) fn route(self) -> &'static Route {
        &ROUTES[self as usize]
    }

    /// Whether a server with keys asks for one.
    pub(crate) fn needs_key(self) -> bool {
        self.route().access != Access::Open
    }
}

/// One segment of a path template.
#[derive(Debug)]
pub(crate) enum Segment {
    /// This text.
    Literal(&'static str),
    /// A stream name (percent-decoded and checked before the handler runs).
    Stream,
    /// Another parameter (a note id, an asset's file name).
    Param,
}

/// The routes of one path template.
#[derive(Debug)]
pub(crate) struct PathRoutes {
    /// The template.
    pub(crate) template: &'static str,
    /// Its segments.
    pub(crate) segments: Vec<Segment>,
    /// The endpoints at this path, in table order.
    pub(crate) endpoints: Vec<Endpoint>,
    /// The methods they take, for `Allow`.
    pub(crate) allow: String,
}

/// The table compiled for matching: one entry per path template, in table order.
pub(crate) struct Compiled {
    /// Every path template with its endpoints.
    pub(crate) paths: Vec<PathRoutes>,
    /// The 404 hint for paths under the OpenIntent prefix: the routes served there.
    pub(crate) openintent_hint: String,
}

/// The compiled table.
pub(crate) static TABLE: LazyLock<Compiled> = LazyLock::new(compile);

fn compile() -> Compiled {
    let mut paths: Vec<PathRoutes> = Vec::new();
    for route in ROUTES {
        if let Some(entry) = paths.iter_mut().find(|entry| entry.template == route.path) {
            entry.endpoints.push(route.endpoint);
            continue;
        }
        let style = style_of(route.path);
        let segments = route.path[1..]
            .split('/')
            .map(|segment| match segment {
                "{s}" => Segment::Stream,
                "{id}" if style == ErrorStyle::OpenIntent => Segment::Stream,
                _ if segment.starts_with('{') => Segment::Param,
                literal => Segment::Literal(literal),
            })
            .collect();
        paths.push(PathRoutes {
            template: route.path,
            segments,
            endpoints: vec![route.endpoint],
            allow: String::new(),
        });
    }
    for entry in &mut paths {
        let mut methods: Vec<&str> = entry
            .endpoints
            .iter()
            .map(|endpoint| endpoint.route().method.as_str())
            .collect();
        // Allow lists the methods in a fixed order: GET first, as clients expect.
        methods.sort_by_key(|method| {
            ["GET", "POST", "PUT", "DELETE"]
                .iter()
                .position(|m| m == method)
        });
        entry.allow = methods.join(", ");
    }
    let openintent_hint = ROUTES
        .iter()
        .filter(|route| route.path.starts_with(OPENINTENT_PREFIX))
        .map(|route| format!("{} {}", route.method, route.path))
        .collect::<Vec<_>>()
        .join(", ");
    Compiled {
        paths,
        openintent_hint,
    }
}

/// What a request is counted under in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Label {
    /// The route that answered it.
    Route(Endpoint),
    /// A path template (an index of [`Compiled::paths`]) that does not take the request's
    /// method: a 405, counted under the template and the method.
    WrongMethod(usize),
    /// No route has the path: a 404.
    Unmatched,
}

impl Label {
    /// The path template it names (`unmatched` for none), for logs.
    pub(crate) fn route(self) -> &'static str {
        match self {
            Label::Route(endpoint) => endpoint.route().path,
            Label::WrongMethod(path) => TABLE.paths[path].template,
            Label::Unmatched => "unmatched",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_index_their_rows() {
        for (index, route) in ROUTES.iter().enumerate() {
            assert_eq!(route.endpoint as usize, index, "{route:?}");
        }
    }

    /// The README's table of routes and the scope each needs, as the route table says it.
    fn scope_table() -> String {
        let mut table = String::from("| method and path | key scope | does |\n|---|---|---|\n");
        for route in ROUTES {
            let scope = match route.access {
                Access::Open => "none",
                Access::AnyKey => "any key",
                Access::Scope(Scope::Read) => "read",
                Access::Scope(Scope::Write) => "write",
                Access::Scope(Scope::Admin) => "admin",
            };
            table.push_str(&format!(
                "| `{} {}` | {scope} | {} |\n",
                route.method,
                route.path,
                route.summary.trim()
            ));
        }
        table
    }

    #[test]
    fn the_readme_lists_every_route_with_its_scope() {
        let readme = include_str!("../../README.md");
        let (start, end) = ("<!-- routes:start -->\n", "<!-- routes:end -->");
        let documented = readme
            .split_once(start)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(table, _)| table)
            .expect("the README has the routes table between its markers");
        let expected = scope_table();
        assert!(
            documented == expected,
            "the README's routes table is out of date; replace it with:\n{expected}"
        );
    }
}
