//! A real recap server on 127.0.0.1:0 with a temporary data directory, for the HTTP tests, and
//! a raw HTTP helper that shows statuses, headers and bodies as they are.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use recap::client::Client;
use recap::server::{self, ServerError, ServerOptions};
use recap::store::{Store, StoreOptions};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound on anything a test waits for; reaching it is a failure, not a measurement.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A running server; shut down (and its data removed) on drop.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    http: RawClient,
    /// The store's options, kept across restarts.
    store: StoreOptions,
    _dir: TempDir,
}

/// What test servers' stores run with: anomaly detection off, since most tests count records,
/// events and revisions exactly ([`TestServer::with_anomalies`] turns it on).
fn quiet_store() -> StoreOptions {
    StoreOptions {
        anomaly: recap::anomaly::AnomalySettings::off(),
        ..StoreOptions::default()
    }
}

/// The raw HTTP client the helpers send with.
pub type RawClient = HyperClient<HttpConnector, Full<Bytes>>;

/// A raw client, one per server under test.
pub fn raw_client() -> RawClient {
    HyperClient::builder(TokioExecutor::new()).build_http()
}

/// Sends a request to `url` with optional content type and extra headers, and reads the answer
/// whole, within [`DEADLINE`].
pub async fn send(
    http: &RawClient,
    method: Method,
    url: &str,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        DEADLINE,
        http.request(request.body(Full::new(body.into())).unwrap()),
    )
    .await
    .expect("an answer before the deadline")
    .expect("the server answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// A response as received.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Asserts an error body: status, code, and (if given) field.
    pub fn assert_error(&self, status: u16, code: &str, field: Option<&str>) -> &Self {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        if let Some(field) = field {
            assert_eq!(body["error"]["field"], field, "{body}");
        }
        self
    }
}

impl TestServer {
    /// A server without keys.
    pub async fn start() -> TestServer {
        TestServer::with_options(ServerOptions::default()).await
    }

    /// A server with these options.
    pub async fn with_options(options: ServerOptions) -> TestServer {
        let dir = tempfile::tempdir().expect("a temp dir");
        let data_dir = dir.path().join("data");
        TestServer::serve("127.0.0.1:0", data_dir, dir, options, quiet_store()).await
    }

    /// A server without keys whose store detects anomalies as `recap serve` does by default.
    pub async fn with_anomalies() -> TestServer {
        let dir = tempfile::tempdir().expect("a temp dir");
        let data_dir = dir.path().join("data");
        let store = StoreOptions::default();
        TestServer::serve(
            "127.0.0.1:0",
            data_dir,
            dir,
            ServerOptions::default(),
            store,
        )
        .await
    }

    /// Shuts the server down and starts a new one on the same address and data directory, as
    /// an operator's restart would.
    pub async fn restart(self) -> TestServer {
        let addr = self.addr;
        let store = self.store.clone();
        let (data_dir, dir) = self.shutdown().await;
        TestServer::serve(
            &addr.to_string(),
            data_dir,
            dir,
            ServerOptions::default(),
            store,
        )
        .await
    }

    async fn serve(
        addr: &str,
        data_dir: PathBuf,
        dir: TempDir,
        options: ServerOptions,
        store_options: StoreOptions,
    ) -> TestServer {
        let store = Store::open(&data_dir, store_options.clone()).expect("the store opens");
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, store, options, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            data_dir,
            stop: Some(stop),
            task: Some(task),
            http: raw_client(),
            store: store_options,
            _dir: dir,
        }
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A recap client for this server.
    pub fn client(&self, key: Option<&str>) -> Client {
        Client::new(&self.url(), key).unwrap()
    }

    /// Sends a request with optional content type and extra headers.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = format!("{}{path}", self.url());
        send(&self.http, method, &url, content_type, body, headers).await
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None, Bytes::new(), &[])
            .await
    }

    /// POST with a JSON body and `X-API-Key: key` when a key is given.
    pub async fn post_json_as(&self, path: &str, body: &str, key: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> =
            key.map(|key| vec![("x-api-key", key)]).unwrap_or_default();
        self.request(
            Method::POST,
            path,
            Some("application/json"),
            body.to_owned(),
            &headers,
        )
        .await
    }

    /// POST with a JSON body.
    pub async fn post_json(&self, path: &str, body: &str) -> Reply {
        self.post_json_as(path, body, None).await
    }

    /// Triggers shutdown without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits for the store to close; returns the data directory (kept alive by
    /// the returned guard).
    pub async fn shutdown(mut self) -> (PathBuf, TempDir) {
        self.trigger_shutdown();
        let task = self.task.take().unwrap();
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("shutdown finishes before the deadline")
            .expect("the server task does not panic")
            .expect("the server shuts down cleanly");
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        (self.data_dir.clone(), dir)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}
