//! `GET /metrics`: counters and histograms in the Prometheus text format, written by hand (a
//! dozen series do not need a metrics crate). Everything is an atomic, so recording costs a few
//! nanoseconds and never takes a lock on the request path.
//!
//! Requests are counted by route (its method and path template, from the route table), status,
//! and, for a 405 on a known path, the method that was refused. A request is counted when its
//! [`InFlight`] guard drops, so a client that hangs up mid-request is counted too (status 499,
//! nginx's "client closed request") and leaves the in-flight gauge where it was.

use std::fmt::Write;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;

use super::table::{Label, ROUTES, TABLE};
use crate::histogram::Histogram;
use crate::store::{PgStore, Storage, Store};

/// Statuses counted per route; anything else is counted under `other`. 499 is a request whose
/// client went away before its response was made.
const STATUSES: [u16; 18] = [
    200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 409, 413, 415, 429, 499, 500, 503, 507,
];
/// The status a request is counted with when its client hung up before the response was made.
const CLIENT_CLOSED: u16 = 499;
/// Methods a 405 is counted under by name; any other is counted as `other`.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
];
/// Upper bounds (seconds) of the context latency buckets: the call is expected well under 1 ms.
const CONTEXT_BUCKETS: [f64; 10] = [
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1,
];
/// Upper bounds (seconds) of the durable-commit latency buckets: an fsync is around a millisecond.
const COMMIT_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0];

/// The server's metrics.
#[derive(Debug)]
pub(super) struct Metrics {
    /// Per route (the last row is unmatched paths), per status slot (the last slot is `other`).
    requests: Vec<[AtomicU64; STATUSES.len() + 1]>,
    /// 405s per path template, per refused method (the last slot is `other`).
    wrong_method: Vec<[AtomicU64; METHODS.len() + 1]>,
    in_flight: AtomicI64,
    ingest_events: AtomicU64,
    collapsed_repeats: AtomicU64,
    sse_subscribers: AtomicI64,
    sse_cut_off: AtomicU64,
    mcp_resource_feeds: AtomicI64,
    context: Histogram<{ CONTEXT_BUCKETS.len() }>,
    commit: Histogram<{ COMMIT_BUCKETS.len() }>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: (0..=ROUTES.len()).map(|_| Default::default()).collect(),
            wrong_method: TABLE.paths.iter().map(|_| Default::default()).collect(),
            in_flight: AtomicI64::new(0),
            ingest_events: AtomicU64::new(0),
            collapsed_repeats: AtomicU64::new(0),
            sse_subscribers: AtomicI64::new(0),
            sse_cut_off: AtomicU64::new(0),
            mcp_resource_feeds: AtomicI64::new(0),
            context: Histogram::new(CONTEXT_BUCKETS),
            commit: Histogram::new(COMMIT_BUCKETS),
        }
    }
}

impl Metrics {
    /// Counts a request until the guard drops, then counts it as finished.
    pub(crate) fn start(&self, method: &Method) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            metrics: self,
            method: METHODS
                .iter()
                .position(|m| m == method)
                .unwrap_or(METHODS.len()),
            label: Label::Unmatched,
            status: None,
        }
    }

    /// Counts a finished request.
    fn count_request(&self, label: Label, method: usize, status: u16) {
        let slot = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        let counter = match label {
            Label::Route(endpoint) => &self.requests[endpoint as usize][slot],
            Label::Unmatched => &self.requests[ROUTES.len()][slot],
            Label::WrongMethod(path) => &self.wrong_method[path][method],
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests being handled now (including the one asking).
    pub(super) fn requests_in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts accepted events and how many of them collapsed into an earlier record.
    pub(super) fn count_ingest(&self, events: u64, collapsed: u64) {
        self.ingest_events.fetch_add(events, Ordering::Relaxed);
        self.collapsed_repeats
            .fetch_add(collapsed, Ordering::Relaxed);
    }

    /// An SSE subscriber connected (`+1`) or left (`-1`).
    pub(super) fn sse_subscribers(&self, delta: i64) {
        self.sse_subscribers.fetch_add(delta, Ordering::Relaxed);
    }

    /// A stream's feed opened (`+1`) or closed (`-1`) for an MCP resource subscription.
    pub(super) fn mcp_resource_feeds(&self, delta: i64) {
        self.mcp_resource_feeds.fetch_add(delta, Ordering::Relaxed);
    }

    /// Counts an SSE subscriber cut off for not reading.
    pub(super) fn count_sse_cut_off(&self) {
        self.sse_cut_off.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a context request took.
    pub(super) fn observe_context(&self, took: Duration) {
        self.context.observe(took);
    }

    /// Awaits a write's durable commit, recording how long it waited when it succeeds.
    pub(super) async fn commit<T, E>(
        &self,
        pending: impl IntoFuture<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let committed = pending.await?;
        self.commit.observe(started.elapsed());
        Ok(committed)
    }

    /// The Prometheus text exposition, with the store's counters and cache (and, on
    /// PostgreSQL, whether the database answers now).
    pub(super) async fn render(&self, store: &Storage) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let _ = writeln!(
            out,
            "# HELP recap_build_info The running build (always 1).\n# TYPE recap_build_info gauge\nrecap_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out.push_str("# HELP recap_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE recap_http_requests_total counter\n");
        let labels = ROUTES
            .iter()
            .map(|route| (route.method.as_str(), route.path))
            .chain([("any", "unmatched")]);
        for ((method, route), counts) in labels.zip(&self.requests) {
            for (slot, count) in counts.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(slot)
                    .map_or("other".to_owned(), u16::to_string);
                let _ = writeln!(
                    out,
                    "recap_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}",
                );
            }
        }
        for (path, counts) in TABLE.paths.iter().zip(&self.wrong_method) {
            for (slot, count) in counts.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                let method = METHODS.get(slot).map_or("other", Method::as_str);
                let _ = writeln!(
                    out,
                    "recap_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"405\"}} {count}",
                    path.template
                );
            }
        }
        gauge(
            &mut out,
            "recap_http_requests_in_flight",
            "HTTP requests being handled.",
            self.in_flight.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "recap_ingest_events_total",
            "Events accepted (durable).",
            self.ingest_events.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "recap_collapsed_repeats_total",
            "Accepted events that collapsed into an earlier record.",
            self.collapsed_repeats.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "recap_sse_subscribers",
            "Open SSE subscriptions.",
            self.sse_subscribers.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "recap_mcp_resource_feeds",
            "Stream feeds open for MCP resource subscriptions on /mcp (one per subscribed resource).",
            self.mcp_resource_feeds.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "recap_sse_cut_off_total",
            "SSE subscribers cut off for taking no frame for a keepalive interval while their buffer was full (they resume with Last-Event-ID).",
            self.sse_cut_off.load(Ordering::Relaxed),
        );
        self.context.render(
            &mut out,
            "recap_context_duration_seconds",
            "Time to serve a context window.",
        );
        self.commit.render(
            &mut out,
            "recap_store_commit_seconds",
            "Time a write waited for its durable group commit.",
        );
        match store {
            Storage::Redb(store) => render_store(&mut out, store),
            Storage::Postgres(pg) => {
                let up = store.unhealthy().await.is_none();
                render_database(&mut out, pg, up);
            }
        }
        out
    }
}

/// The PostgreSQL node's counters: its writer's and its cache's.
fn render_database(out: &mut String, store: &PgStore, up: bool) {
    gauge(
        out,
        "recap_database_up",
        "1 when the PostgreSQL database answered a health check just now, 0 otherwise.",
        i64::from(up),
    );
    let metrics = store.metrics();
    counter(
        out,
        "recap_store_commits_total",
        "Committed transactions (one per batch of write requests).",
        metrics.commits,
    );
    counter(
        out,
        "recap_store_failed_commits_total",
        "Batches that failed; their writes were not acknowledged.",
        metrics.failed_commits,
    );
    counter(
        out,
        "recap_database_retries_total",
        "Batches tried again after losing a deadlock or serialization race with another node.",
        metrics.retries,
    );
    counter(
        out,
        "recap_database_shadow_loads_total",
        "Writer shadows read from the database: a stream's first write on this node, or a write after another node wrote to it (hashing streams to nodes keeps this low).",
        metrics.shadow_loads,
    );
    let as_gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
    gauge(
        out,
        "recap_cache_bytes",
        "Bytes of stream state this node holds in memory for contexts.",
        as_gauge(metrics.cache_bytes),
    );
    gauge(
        out,
        "recap_cache_resident_streams",
        "Streams whose state this node holds in memory.",
        as_gauge(metrics.cached_streams),
    );
    counter(
        out,
        "recap_cache_evictions_total",
        "Streams evicted from memory to stay within the budget.",
        metrics.cache_evictions,
    );
    counter(
        out,
        "recap_cache_cold_loads_total",
        "Stream states read whole from the database (first read, or too far behind to catch up).",
        metrics.cache_loads,
    );
    counter(
        out,
        "recap_cache_catch_ups_total",
        "Stream states brought up to date from the changelog (another node wrote).",
        metrics.cache_catch_ups,
    );
}

fn render_store(out: &mut String, store: &Store) {
    if let Some(bytes) = store.file_bytes() {
        gauge(
            out,
            "recap_store_file_bytes",
            "Size of the data file (recap.redb).",
            i64::try_from(bytes).unwrap_or(i64::MAX),
        );
    }
    let writes = store.metrics();
    counter(
        out,
        "recap_store_commits_total",
        "Durable commits (group commits of writes and maintenance steps).",
        writes.commits,
    );
    counter(
        out,
        "recap_store_failed_commits_total",
        "Commits that failed; their writes were not acknowledged.",
        writes.failed_commits,
    );
    counter(
        out,
        "recap_store_reopens_total",
        "Times the data file was reopened after a failed write (a full disk, say).",
        writes.reopens,
    );
    gauge(
        out,
        "recap_store_degraded",
        "1 while writes fail (the data file's disk is full, say), 0 otherwise.",
        i64::from(writes.degraded),
    );
    let cache = store.cache_metrics();
    let as_gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
    gauge(
        out,
        "recap_cache_bytes",
        "Bytes of stream state held in memory (records, notes, rendered lines, token counts).",
        as_gauge(cache.bytes),
    );
    gauge(
        out,
        "recap_cache_budget_bytes",
        "The budget for stream state (three quarters of cache_bytes; redb's page cache has the rest); least recently used streams are evicted beyond it.",
        as_gauge(cache.budget),
    );
    gauge(
        out,
        "recap_streams",
        "Streams in the store.",
        as_gauge(cache.streams),
    );
    gauge(
        out,
        "recap_cache_resident_streams",
        "Streams whose state is in memory.",
        as_gauge(cache.resident_streams),
    );
    counter(
        out,
        "recap_cache_evictions_total",
        "Streams evicted from memory to stay within the budget.",
        cache.evictions,
    );
    counter(
        out,
        "recap_cache_cold_loads_total",
        "Streams loaded from disk for a read.",
        cache.cold_loads,
    );
    counter(
        out,
        "recap_cache_shadow_loads_total",
        "Writer states loaded from disk for a write (a stream not in memory: evicted, or not written since the start).",
        cache.shadow_loads,
    );
    store.cold_load_seconds().render(
        out,
        "recap_cache_cold_load_seconds",
        "Time to load a cold stream's state from disk.",
    );
}

/// A request being handled: in `recap_http_requests_in_flight` while it lives, and counted in
/// `recap_http_requests_total` when it drops, with its response's status, or 499 when the
/// client went away first (hyper drops the handler's future then, and this with it).
#[derive(Debug)]
pub(crate) struct InFlight<'a> {
    metrics: &'a Metrics,
    /// The request's method, as a slot of [`METHODS`].
    method: usize,
    /// What the request counts under, once routed.
    pub(crate) label: Label,
    /// The response's status, once made.
    pub(crate) status: Option<u16>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let status = self.status.unwrap_or(CLIENT_CLOSED);
        self.metrics.count_request(self.label, self.method, status);
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::table::Endpoint;

    #[tokio::test]
    async fn renders_counters_and_cumulative_buckets() {
        let metrics = Metrics::default();
        let post = |status: Option<u16>| {
            let mut request = metrics.start(&Method::POST);
            request.label = Label::Route(Endpoint::PostEvents);
            request.status = status;
        };
        post(Some(200));
        post(Some(200));
        post(Some(418));
        post(None);
        let mut refused = metrics.start(&Method::PUT);
        refused.label = Label::WrongMethod(
            TABLE
                .paths
                .iter()
                .position(|path| path.template == "/v1/streams/{s}/events")
                .unwrap(),
        );
        refused.status = Some(405);
        assert_eq!(metrics.requests_in_flight(), 1);
        drop(refused);
        assert_eq!(metrics.requests_in_flight(), 0);
        metrics.count_ingest(5, 2);
        metrics.count_sse_cut_off();
        metrics.observe_context(Duration::from_micros(150));
        metrics.observe_context(Duration::from_secs(1));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), crate::store::StoreOptions::default()).unwrap();
        let text = metrics.render(&Storage::Redb(store)).await;
        assert!(
            text.contains("recap_cache_budget_bytes 201326592\n"),
            "{text}"
        );
        assert!(
            text.contains("recap_cache_cold_load_seconds_count 0\n"),
            "{text}"
        );
        assert!(text.contains("recap_http_requests_total{method=\"POST\",route=\"/v1/streams/{s}/events\",status=\"200\"} 2\n"), "{text}");
        assert!(text.contains("status=\"other\"} 1\n"), "{text}");
        assert!(text.contains("recap_http_requests_total{method=\"POST\",route=\"/v1/streams/{s}/events\",status=\"499\"} 1\n"), "{text}");
        assert!(text.contains("recap_http_requests_total{method=\"PUT\",route=\"/v1/streams/{s}/events\",status=\"405\"} 1\n"), "{text}");
        assert!(text.contains("recap_http_requests_in_flight 0\n"), "{text}");
        assert!(
            text.contains(&format!(
                "recap_build_info{{version=\"{}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains("recap_store_file_bytes "), "{text}");
        assert!(text.contains("recap_streams 0\n"), "{text}");
        assert!(text.contains("recap_ingest_events_total 5\n"));
        assert!(text.contains("recap_collapsed_repeats_total 2\n"));
        assert!(text.contains("recap_sse_cut_off_total 1\n"), "{text}");
        assert!(
            text.contains("recap_context_duration_seconds_bucket{le=\"0.0001\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("recap_context_duration_seconds_bucket{le=\"0.0002\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("recap_context_duration_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("recap_context_duration_seconds_count 2\n"));
    }
}
