//! The HTTP service (DESIGN section 5), on hyper 1 and tokio.
//!
//! The split follows static-web-server and mini-redis: [`serve`] opens the store and binds;
//! [`run`] takes a bound listener and a shutdown future (so tests drive a real server on port
//! 0) and owns the accept loop; each connection is served by hyper's HTTP/1 with one service
//! function that logs, counts and hands the request to `routes`.
//!
//! Shutdown: when the shutdown future resolves, the listener is dropped (no new connections),
//! SSE feeds are told to end, in-flight requests finish (hyper-util's graceful shutdown, bounded
//! by a drain timeout), and then the store commits what is queued and closes.
//!
//! Modules, one job each: `table` (the route table: every route's method, path, scope and
//! summary, from which matching, `Allow`, metrics labels and the API description come),
//! `routes` (matching, the checks before a handler, dispatch),
//! [`wire`] (the response body, response shapes, the error codes and the one error-to-status
//! mapping), `body` (capped reads of request bodies, content types), `query` (query strings),
//! `consistency` (`X-Recap-Min-Revision`: reads that wait for a revision),
//! `events`, `context`, `notes`, `streams`, `anomalies` (handlers), `sse` (subscriptions), `mcp` (the MCP
//! tools over Streamable HTTP), `openintent` (the OpenIntent-compatible routes), `openapi`
//! (`GET /openapi.json`), [`auth`] (API keys), `metrics` (Prometheus text).

pub mod anomalies;
pub mod auth;
mod body;
mod consistency;
mod context;
mod events;
pub(crate) mod fuzz;
mod mcp;
mod metrics;
mod notes;
mod openapi;
mod openintent;
mod query;
mod routes;
mod sse;
mod streams;
mod table;
mod ui;
pub mod wire;

pub use body::{BODIES_IN_FLIGHT, BODY_READ_TIMEOUT, DEFAULT_MAX_BODY_BYTES};
pub use sse::DEFAULT_KEEPALIVE;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::DatabaseUrl;
use crate::event::EventLimits;
use crate::store::{PgStore, Storage, Store, StoreError, StoreOptions};

use self::auth::Keys;
use self::metrics::Metrics;
use self::wire::Body;

/// How long shutdown waits for in-flight requests before closing the store anyway.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request's headers (slow-loris protection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again, so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How the HTTP layer behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// API keys; `None` for an open, loopback-only server.
    pub keys: Option<Keys>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Event validation limits.
    pub limits: EventLimits,
    /// Interval of SSE keepalive comments.
    pub sse_keepalive: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Longest a request body may take to arrive (408 after).
    pub body_read_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            keys: None,
            max_body_bytes: body::DEFAULT_MAX_BODY_BYTES,
            limits: EventLimits::default(),
            sse_keepalive: sse::DEFAULT_KEEPALIVE,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            body_read_timeout: body::BODY_READ_TIMEOUT,
        }
    }
}

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No keys and a non-loopback listener.
    #[error(
        "refusing to serve on {addr} without API keys: anyone on the network could read and write every stream; configure keys (--keys FILE) or listen on 127.0.0.1"
    )]
    OpenToNetwork {
        /// The listener's address.
        addr: SocketAddr,
    },
    /// The address could not be bound.
    #[error(
        "cannot listen on {addr}: {source}; is another server running there? pick another port with --addr"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A socket error.
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    /// The store failed to open or to close.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// One of the store's threads died while serving; the server stopped so that its
    /// supervisor restarts it.
    #[error("stopped because the store failed: {0}")]
    StoreFailed(String),
}

/// What every handler shares.
pub struct App {
    store: Storage,
    options: ServerOptions,
    metrics: Metrics,
    /// Bounds the request bodies read and decoded at once.
    bodies: body::BodyGate,
    /// Turns `true` when shutdown begins; SSE feeds end on it.
    shutdown: watch::Receiver<bool>,
    /// The MCP SDK's service behind `/mcp`.
    mcp: mcp::McpService,
}

/// What [`serve`] starts from (`recap serve` makes it from its validated config).
#[derive(Clone, Debug)]
pub struct Startup {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The PostgreSQL database to keep streams in instead of the data directory.
    pub database_url: Option<DatabaseUrl>,
    /// How the store behaves.
    pub store: StoreOptions,
    /// How the HTTP layer behaves.
    pub server: ServerOptions,
}

/// Opens the store, binds `startup.addr` and serves until `shutdown` resolves.
pub async fn serve(
    startup: Startup,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let Startup {
        addr,
        data_dir,
        database_url,
        store: store_options,
        server: options,
    } = startup;
    let (store, place) = match &database_url {
        Some(url) => {
            let store = PgStore::open(url.expose(), store_options).await?;
            let place = store.place().to_owned();
            (Storage::Postgres(store), place)
        }
        None => {
            let dir = data_dir.clone();
            let store = tokio::task::spawn_blocking(move || Store::open(dir, store_options))
                .await
                .map_err(|error| {
                    ServerError::StoreFailed(format!("opening the store panicked: {error}"))
                })??;
            (Storage::Redb(store), data_dir.display().to_string())
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(source) => {
            let _ = store.close().await;
            return Err(ServerError::Bind { addr, source });
        }
    };
    for warning in options.keys.iter().flat_map(Keys::warnings) {
        tracing::warn!("{warning}");
    }
    tracing::info!(addr = %listener.local_addr()?, storage = %place, auth = options.keys.is_some(), "recap is serving");
    run(listener, store, options, shutdown).await
}

/// Serves on `listener` until `shutdown` resolves, then drains and closes `store` (a redb
/// [`Store`], a [`PgStore`], or either as a [`Storage`]).
pub async fn run(
    listener: TcpListener,
    store: impl Into<Storage>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let store = store.into();
    let addr = listener.local_addr()?;
    if options.keys.is_none() && !addr.ip().is_loopback() {
        let _ = store.close().await;
        return Err(ServerError::OpenToNetwork { addr });
    }
    // Building the BPE tables takes a while: the default encoding's are built before the first
    // context request. Another encoding's (o200k_base: about 39 MiB) are built when a request
    // first asks for it, on a blocking thread, so that a server nobody asks for it does not
    // hold them.
    tokio::task::spawn_blocking(|| crate::tokens::Encoding::default().warm_up());
    let (stop_feeds, shutdown_seen) = watch::channel(false);
    let drain_timeout = options.drain_timeout;
    let app = Arc::new(App {
        bodies: body::BodyGate::new(options.max_body_bytes),
        mcp: mcp::service(&options),
        store,
        options,
        metrics: Metrics::default(),
        shutdown: shutdown_seen,
    });
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    let failed = store_failure(app.store.clone());
    tokio::pin!(failed);
    let maintenance = tokio::spawn({
        let store = app.store.clone();
        async move { store.maintenance().await }
    });
    let mut failure = None;
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            cause = &mut failed => {
                tracing::error!(%cause, "the store failed; stopping so that the supervisor restarts recap");
                failure = Some(cause);
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Small responses should leave at once, not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let app = Arc::clone(&app);
        let service = service_fn(move |request| {
            let app = Arc::clone(&app);
            async move { Ok::<_, Infallible>(serve_request(&app, request, peer).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }

    tracing::info!("shutting down: draining in-flight requests");
    drop(listener);
    let _ = stop_feeds.send(true);
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain_timeout,
            "some connections did not finish in time; closing anyway"
        );
    }
    maintenance.abort();
    let store = app.store.clone();
    drop(app);
    let closed = store.close().await;
    if let Some(cause) = failure {
        // Closing a failed store fails too; the failure is what to report.
        return Err(ServerError::StoreFailed(cause));
    }
    closed?;
    tracing::info!("store closed; bye");
    Ok(())
}

/// Resolves with the cause once one of the store's threads has died.
async fn store_failure(store: Storage) -> String {
    /// How soon a dead store thread stops the server.
    const CHECK_INTERVAL: Duration = Duration::from_millis(250);
    let mut ticks = tokio::time::interval(CHECK_INTERVAL);
    loop {
        ticks.tick().await;
        if let Some(cause) = store.failure() {
            return cause;
        }
    }
}

/// One request: route it, count it, log it (method, peer, the key's name, route template,
/// status, error code, latency; never keys or bodies). The log is at debug level: its span
/// costs nothing unless `RUST_LOG=recap::request=debug` asks for it.
async fn serve_request(
    app: &Arc<App>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let span = tracing::debug_span!(
        target: "recap::request",
        "request",
        %method,
        %peer,
        key = tracing::field::Empty,
    );
    // Counted when dropped: a client that hangs up mid-request is counted too.
    let mut counted = app.metrics.start(&method);
    let response = routes::handle(app, request, &mut counted.label)
        .instrument(span.clone())
        .await;
    let (label, status) = (counted.label, response.status().as_u16());
    counted.status = Some(status);
    drop(counted);
    let error = response.extensions().get::<wire::ErrorCode>();
    tracing::debug!(
        target: "recap::request",
        parent: &span,
        route = label.route(),
        status,
        error = error.map_or("", |code| code.as_str()),
        micros = started.elapsed().as_micros() as u64,
    );
    response
}

impl App {
    /// Requests being handled now.
    pub fn requests_in_flight(&self) -> i64 {
        self.metrics.requests_in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Severity, StreamName};
    use crate::store::StoreOptions;

    /// A store whose writer thread died stops the server with the cause, so that `recap serve`
    /// exits non-zero and its supervisor restarts it.
    #[tokio::test]
    async fn a_dead_store_stops_the_server_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = ServerOptions::default();
        let served = tokio::spawn(run(
            listener,
            store.clone(),
            options,
            std::future::pending(),
        ));
        store.inject_writer_panic();
        let stream = StreamName::new("agent").unwrap();
        let event = Event::new("tool", Severity::Info, "boom").unwrap();
        let refused = store.append(&stream, vec![event], chrono::Utc::now()).await;
        assert!(matches!(refused, Err(StoreError::Failed(_))), "{refused:?}");
        // Bounded, not timed: the server checks four times a second.
        let stopped = tokio::time::timeout(Duration::from_secs(30), served)
            .await
            .expect("the server stops")
            .unwrap();
        assert!(
            matches!(&stopped, Err(ServerError::StoreFailed(cause)) if cause.contains("writer thread died")),
            "{stopped:?}"
        );
    }
}
